//! Legitimate clients that keep sending while a test attacks or breaks something, and what
//! they got: how many answers, which failures, and how fast (p99).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// At most this many requests a client, whatever the test's length.
const MAX_REQUESTS: usize = 200_000;

/// What the legitimate clients got.
#[derive(Debug, Default)]
pub struct Outcome {
    pub ok: usize,
    /// Failures by status and `x-weft-error`, or the client's error.
    pub failed: BTreeMap<String, usize>,
    latencies: Vec<Duration>,
}

impl Outcome {
    pub fn p99(&mut self) -> Duration {
        self.latencies.sort();
        self.latencies
            .get(self.latencies.len() * 99 / 100)
            .copied()
            .unwrap_or_default()
    }

    /// `N ok, M failed {…}, p99 …`.
    pub fn summary(&mut self) -> String {
        let p99 = self.p99();
        format!(
            "{} ok, {} failed {:?}, p99 {p99:?}",
            self.ok,
            self.failed.values().sum::<usize>(),
            self.failed
        )
    }
}

/// Clients sending `GET url` through `proxy`, each one request after another on a keep-alive
/// connection of its own, until stopped.
pub struct Legit {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Outcome>>,
}

pub fn start(proxy: SocketAddr, url: &str, clients: usize) -> Legit {
    let stop = Arc::new(AtomicBool::new(false));
    let clients = (0..clients)
        .map(|_| {
            let (stop, url) = (stop.clone(), url.to_owned());
            tokio::spawn(async move {
                let mut outcome = Outcome::default();
                let mut conn = None;
                for _ in 0..MAX_REQUESTS {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let started = Instant::now();
                    let sent = tokio::time::timeout(Duration::from_secs(10), async {
                        if conn.is_none() {
                            conn = Some(crate::client::http1(proxy).await?);
                        }
                        let sender = conn.as_mut().expect("connected");
                        sender.ready().await?;
                        let req = http::Request::get(url.as_str()).body(crate::client::empty())?;
                        let resp = sender.send_request(req).await?;
                        let error = crate::client::error_header(&resp);
                        let (status, _) = crate::client::text(resp).await?;
                        anyhow::Ok((status, error))
                    })
                    .await;
                    outcome.latencies.push(started.elapsed());
                    let failure = match sent {
                        Ok(Ok((200, _))) => None,
                        Ok(Ok((status, error))) => Some(format!("{status} {error}")),
                        Ok(Err(e)) => Some(format!("client error: {e}")),
                        Err(_) => Some("no answer within 10 s".to_owned()),
                    };
                    match failure {
                        None => outcome.ok += 1,
                        Some(f) => {
                            *outcome.failed.entry(f).or_default() += 1;
                            conn = None;
                        }
                    }
                }
                outcome
            })
        })
        .collect();
    Legit { stop, clients }
}

impl Legit {
    /// Stops the clients and adds up what they got.
    pub async fn stop(self) -> Outcome {
        self.stop.store(true, Ordering::Release);
        let mut all = Outcome::default();
        for c in self.clients {
            let o = c.await.expect("a legitimate client");
            all.ok += o.ok;
            all.latencies.extend(o.latencies);
            for (k, v) in o.failed {
                *all.failed.entry(k).or_default() += v;
            }
        }
        all
    }
}
