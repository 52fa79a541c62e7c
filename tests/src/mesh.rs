//! Building the compiled config that a test proxy runs on.

use std::net::{IpAddr, SocketAddr};

use weft_api::config::{Backend, Endpoint, MeshPeer, Protocol, ProxyConfig, Service, ServicePort};

/// An endpoint of a Service in a test config.
#[derive(Debug, Clone)]
pub struct Ep {
    pub addr: SocketAddr,
    /// Meshed endpoints are reached through the proxy at `<ip>:<inbound_port>`.
    pub meshed: Option<u16>,
}

impl Ep {
    /// Reached directly.
    pub fn direct(addr: SocketAddr) -> Ep {
        Ep { addr, meshed: None }
    }

    /// Reached through the weft proxy on the same IP, at its default inbound port.
    pub fn meshed(addr: SocketAddr) -> Ep {
        Ep {
            addr,
            meshed: Some(weft_api::config::DEFAULT_INBOUND_PORT),
        }
    }
}

/// A config under construction.
#[derive(Debug, Clone)]
pub struct Mesh {
    pub config: ProxyConfig,
}

impl Mesh {
    pub fn new(version: &str) -> Mesh {
        Mesh {
            config: ProxyConfig {
                version: version.into(),
                ..ProxyConfig::default()
            },
        }
    }

    /// Adds Service `<namespace>/<name>` on `port`, with an optional cluster IP, whose backend
    /// `<namespace>/<name>:<port>` has `endpoints`.
    pub fn service(
        mut self,
        namespace: &str,
        name: &str,
        vip: Option<IpAddr>,
        port: u16,
        endpoints: &[Ep],
    ) -> Mesh {
        self.add(namespace, name, vip, port, Protocol::Detect, endpoints);
        self
    }

    /// Like [`Mesh::service`], for a port forwarded as opaque TCP.
    pub fn opaque_service(
        mut self,
        namespace: &str,
        name: &str,
        vip: Option<IpAddr>,
        port: u16,
        endpoints: &[Ep],
    ) -> Mesh {
        self.add(namespace, name, vip, port, Protocol::Opaque, endpoints);
        self
    }

    fn add(
        &mut self,
        namespace: &str,
        name: &str,
        vip: Option<IpAddr>,
        port: u16,
        protocol: Protocol,
        endpoints: &[Ep],
    ) {
        let backend = format!("{namespace}/{name}:{port}");
        let svc_port = ServicePort {
            port,
            name: None,
            protocol,
            backend: backend.clone(),
            routes: vec![],
        };
        match self
            .config
            .services
            .iter_mut()
            .find(|s| s.name == name && s.namespace == namespace)
        {
            Some(svc) => svc.ports.push(svc_port),
            None => self.config.services.push(Service {
                name: name.into(),
                namespace: namespace.into(),
                cluster_ips: vip.into_iter().collect(),
                ports: vec![svc_port],
            }),
        }
        self.config.backends.push(Backend {
            name: backend,
            policy: Default::default(),
            endpoints: endpoints
                .iter()
                .map(|ep| Endpoint {
                    address: ep.addr,
                    mesh: ep.meshed.map(|inbound_port| MeshPeer {
                        identity: format!("spiffe://cluster.local/ns/{namespace}/sa/{name}"),
                        inbound_port,
                        tls: true,
                    }),
                    pod: None,
                })
                .collect(),
        });
    }

    /// Marks application ports as opaque on the inbound side.
    pub fn inbound_opaque(mut self, ports: &[u16]) -> Mesh {
        self.config.inbound.opaque_ports.extend(ports);
        self
    }

    pub fn build(self) -> ProxyConfig {
        self.config
            .validate()
            .unwrap_or_else(|e| panic!("test config is invalid: {e:?}"));
        self.config
    }
}
