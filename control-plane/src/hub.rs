//! The hub between the manifest store and the subscribed proxies.
//!
//! Every rebuild of the store publishes a [`Generation`]: the accepted manifests, the errors,
//! and, compiled on first demand and then shared, the config of each proxy namespace. Proxy
//! streams watch the current generation and send a snapshot only when their namespace's
//! config version differs from what their proxy runs. The hub also records every proxy: what
//! it was sent, what it acknowledged or refused.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;
use weft_api::resources::{Manifest, ManifestError};
use weft_api::sync::lock;

use crate::compile::{Index, MeshSettings, Target};
use crate::metrics::ControlMetrics;

/// One namespace's compiled config, serialised once for every proxy that receives it.
#[derive(Debug)]
pub struct Compiled {
    pub version: String,
    pub json: Bytes,
    pub config: Arc<weft_api::config::ProxyConfig>,
}

/// The accepted manifests at one moment, and what they compile to.
pub struct Generation {
    pub number: u64,
    pub accepted: Arc<Vec<Manifest>>,
    pub errors: Arc<Vec<ManifestError>>,
    /// The references of accepted routes that name nothing.
    pub unresolved: Arc<Vec<ManifestError>>,
    /// When the change that produced it was noticed.
    pub since: Instant,
    /// The same, as a wall-clock time (for the route conditions `/status` shows).
    pub published: SystemTime,
    mesh: MeshSettings,
    /// By namespace and the JSON of the inbound policies.
    compiled: Mutex<HashMap<(String, String), Arc<Compiled>>>,
    /// What each proxy gets, so that finding its policies happens once per generation.
    by_target: Mutex<HashMap<Target, Arc<Compiled>>>,
}

impl Generation {
    pub fn new(
        number: u64,
        accepted: Arc<Vec<Manifest>>,
        errors: Arc<Vec<ManifestError>>,
        unresolved: Arc<Vec<ManifestError>>,
        mesh: MeshSettings,
    ) -> Generation {
        Generation {
            number,
            accepted,
            errors,
            unresolved,
            since: Instant::now(),
            published: SystemTime::now(),
            mesh,
            compiled: Mutex::new(HashMap::new()),
            by_target: Mutex::new(HashMap::new()),
        }
    }

    /// The config of the proxy `target` describes. The part every proxy in a namespace shares
    /// is compiled once per generation; proxies whose pods have the same ServerPolicies share
    /// the whole result.
    pub fn for_target(&self, target: &Target) -> Arc<Compiled> {
        if let Some(c) = lock(&self.by_target).get(target) {
            return c.clone();
        }
        let compiled = self.compile_for(target);
        lock(&self.by_target)
            .entry(target.clone())
            .or_insert(compiled)
            .clone()
    }

    fn compile_for(&self, target: &Target) -> Arc<Compiled> {
        let index = Index::new(&self.accepted);
        let policies = index.inbound_policies(target);
        let key = (
            target.namespace.clone(),
            serde_json::to_string(&policies).unwrap_or_default(),
        );
        if let Some(c) = lock(&self.compiled).get(&key) {
            return c.clone();
        }
        let mut config = if policies.is_empty() {
            index.compile_namespace(&target.namespace, &self.mesh)
        } else {
            // The shared part, from the cache (a target without a pod has no policies).
            let shared = self.for_target(&Target::namespace(target.namespace.as_str()));
            (*shared.config).clone()
        };
        if !policies.is_empty() {
            config.inbound.policies = policies;
            config.version = crate::compile::digest(&config);
        }
        let json = Bytes::from(serde_json::to_vec(&config).unwrap_or_default());
        let compiled = Arc::new(Compiled {
            version: config.version.clone(),
            json,
            config: Arc::new(config),
        });
        lock(&self.compiled).entry(key).or_insert(compiled).clone()
    }
}

/// What the control plane knows about one connected proxy.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyRecord {
    pub id: u64,
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_ip: String,
    pub proxy_version: String,
    #[serde(serialize_with = "unix_seconds")]
    pub connected_at: SystemTime,
    /// The version last sent (or that the proxy already ran when it connected).
    pub sent: Option<String>,
    pub acked: Option<String>,
    /// The last refused version, and why.
    pub nacked: Option<(String, String)>,
}

impl ProxyRecord {
    /// Whom its config is compiled for.
    pub fn target(&self) -> Target {
        Target::of_proxy(&self.namespace, &self.pod_name, &self.pod_ip)
    }
}

fn unix_seconds<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// The last certificate issued to a pod's proxy.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRecord {
    pub identity: String,
    pub serial: String,
    #[serde(serialize_with = "unix_seconds")]
    pub not_after: SystemTime,
    #[serde(serialize_with = "unix_seconds")]
    pub issued_at: SystemTime,
}

pub struct Hub {
    current: watch::Sender<Arc<Generation>>,
    proxies: Mutex<BTreeMap<u64, ProxyRecord>>,
    /// By the pod's namespace and IP, as the proxy named itself when it asked.
    certificates: Mutex<HashMap<(String, String), CertificateRecord>>,
    next_id: AtomicU64,
    pub metrics: Arc<ControlMetrics>,
    pub mesh: MeshSettings,
}

impl Hub {
    pub fn new(mesh: MeshSettings, metrics: Arc<ControlMetrics>) -> Arc<Hub> {
        let empty = Generation::new(
            0,
            Arc::default(),
            Arc::default(),
            Arc::default(),
            mesh.clone(),
        );
        Arc::new(Hub {
            current: watch::Sender::new(Arc::new(empty)),
            proxies: Mutex::new(BTreeMap::new()),
            certificates: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            metrics,
            mesh,
        })
    }

    /// Publishes a new generation to every proxy stream.
    pub fn publish(
        &self,
        number: u64,
        accepted: Arc<Vec<Manifest>>,
        errors: Arc<Vec<ManifestError>>,
        unresolved: Arc<Vec<ManifestError>>,
    ) {
        self.metrics.generation(number, errors.len());
        self.current.send_replace(Arc::new(Generation::new(
            number,
            accepted,
            errors,
            unresolved,
            self.mesh.clone(),
        )));
    }

    pub fn current(&self) -> Arc<Generation> {
        self.current.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Generation>> {
        self.current.subscribe()
    }

    pub fn register(&self, record: ProxyRecord) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.proxies).insert(id, ProxyRecord { id, ..record });
        self.metrics.proxies(lock(&self.proxies).len());
        id
    }

    pub fn unregister(&self, id: u64) {
        let mut proxies = lock(&self.proxies);
        proxies.remove(&id);
        self.metrics.proxies(proxies.len());
    }

    pub fn update(&self, id: u64, f: impl FnOnce(&mut ProxyRecord)) {
        if let Some(r) = lock(&self.proxies).get_mut(&id) {
            f(r);
        }
    }

    pub fn proxies(&self) -> Vec<ProxyRecord> {
        lock(&self.proxies).values().cloned().collect()
    }

    /// Records a certificate issued to the proxy of the pod at `pod_ip` in `namespace`.
    pub fn certified(&self, namespace: &str, pod_ip: &str, record: CertificateRecord) {
        if pod_ip.is_empty() {
            return;
        }
        let mut certificates = lock(&self.certificates);
        // Bounded by the pods that ask: a pod that is gone is forgotten once its certificate
        // has expired.
        let now = SystemTime::now();
        certificates.retain(|_, c| c.not_after > now);
        certificates.insert((namespace.to_owned(), pod_ip.to_owned()), record);
    }

    /// The last certificate issued to a proxy, if it named its pod when it asked.
    pub fn certificate_of(&self, proxy: &ProxyRecord) -> Option<CertificateRecord> {
        lock(&self.certificates)
            .get(&(proxy.namespace.clone(), proxy.pod_ip.clone()))
            .cloned()
    }
}
