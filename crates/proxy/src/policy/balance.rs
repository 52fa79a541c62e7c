//! Picking an endpoint among those that may take a request.
//!
//! - P2C over peak-EWMA (the default): two random candidates, the one with the lower
//!   `latency estimate × (outstanding + 1)` wins. The estimate jumps up to a slower sample at
//!   once and decays toward faster ones, so a degrading endpoint loses traffic quickly.
//! - Least request: two random candidates, fewer outstanding requests wins.
//! - Round robin.
//! - Consistent hash: a ring of virtual nodes over the endpoints' addresses; a request header's
//!   value picks a point, and the first eligible endpoint from there serves it. The same value
//!   keeps its endpoint as long as that endpoint stays, whatever else joins or leaves.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// How long a latency sample takes to lose most of its weight.
const DECAY: Duration = Duration::from_secs(10);

/// A peak-sensitive moving average of response latency.
#[derive(Debug, Clone, Copy)]
pub struct PeakEwma {
    nanos: f64,
    stamp: Instant,
}

impl PeakEwma {
    /// `initial` is the estimate before any sample: an optimistic guess, so that a new
    /// endpoint gets traffic and a real sample soon.
    pub fn new(initial: Duration, now: Instant) -> PeakEwma {
        PeakEwma {
            nanos: initial.as_nanos() as f64,
            stamp: now,
        }
    }

    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
        self.nanos = if rtt > self.nanos {
            rtt
        } else {
            let w = (-elapsed / DECAY.as_nanos() as f64).exp();
            self.nanos * w + rtt * (1.0 - w)
        };
        self.stamp = now;
    }

    /// The estimate now: without new samples it decays, so an idle endpoint is tried again.
    pub fn estimate(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
        self.nanos * (-elapsed / DECAY.as_nanos() as f64).exp()
    }
}

/// An endpoint that may take the request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub index: usize,
    pub outstanding: usize,
    /// Peak-EWMA latency estimate, nanoseconds.
    pub latency: f64,
}

/// Power of two choices by `cost`.
fn p2c(
    candidates: &[Candidate],
    rng: &mut fastrand::Rng,
    cost: impl Fn(&Candidate) -> f64,
) -> Option<usize> {
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0].index),
        n => {
            let a = rng.usize(..n);
            let mut b = rng.usize(..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (&candidates[a], &candidates[b]);
            Some(if cost(b) < cost(a) { b.index } else { a.index })
        }
    }
}

pub fn peak_ewma(candidates: &[Candidate], rng: &mut fastrand::Rng) -> Option<usize> {
    p2c(candidates, rng, |c| {
        c.latency.max(1.0) * (c.outstanding as f64 + 1.0)
    })
}

pub fn least_request(candidates: &[Candidate], rng: &mut fastrand::Rng) -> Option<usize> {
    p2c(candidates, rng, |c| c.outstanding as f64)
}

pub fn round_robin(candidates: &[Candidate], counter: usize) -> Option<usize> {
    (!candidates.is_empty()).then(|| candidates[counter % candidates.len()].index)
}

const VIRTUAL_NODES: u64 = 100;

/// A consistent-hash ring over endpoint addresses.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    pub fn new(addresses: &[SocketAddr]) -> Ring {
        let mut points = Vec::with_capacity(addresses.len() * VIRTUAL_NODES as usize);
        for (index, addr) in addresses.iter().enumerate() {
            let name = addr.to_string();
            for v in 0..VIRTUAL_NODES {
                points.push((fnv1a(&[name.as_bytes(), &v.to_be_bytes()]), index));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The endpoint for `key`: the first eligible one at or after the key's point.
    pub fn pick(&self, key: &[u8], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = fnv1a(&[key]);
        let start = self.points.partition_point(|(p, _)| *p < h);
        let n = self.points.len();
        (0..n)
            .map(|i| self.points[(start + i) % n].1)
            .find(|i| eligible(*i))
    }
}

/// FNV-1a: stable across processes and versions, unlike the standard hasher.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    // A final mix spreads nearby inputs (`...:1`, `...:2`) over the ring.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(index: usize, outstanding: usize, latency_ms: f64) -> Candidate {
        Candidate {
            index,
            outstanding,
            latency: latency_ms * 1e6,
        }
    }

    #[test]
    fn p2c_prefers_the_cheaper_of_two() {
        let mut rng = fastrand::Rng::with_seed(7);
        let cands = [cand(0, 0, 1.0), cand(1, 0, 50.0)];
        let picks: Vec<usize> = (0..100)
            .filter_map(|_| peak_ewma(&cands, &mut rng))
            .collect();
        assert!(
            picks.iter().all(|i| *i == 0),
            "with two candidates, the faster always wins"
        );
        let cands = [cand(0, 9, 1.0), cand(1, 0, 5.0)];
        assert_eq!(
            peak_ewma(&cands, &mut rng),
            Some(1),
            "10 × 1 ms costs more than 1 × 5 ms"
        );
        assert_eq!(least_request(&cands, &mut rng), Some(1));
        assert_eq!(peak_ewma(&[], &mut rng), None);
    }

    #[test]
    fn p2c_spreads_load_over_many_equal_endpoints() {
        let mut rng = fastrand::Rng::with_seed(1);
        let cands: Vec<Candidate> = (0..4).map(|i| cand(i, 0, 1.0)).collect();
        let mut counts = [0; 4];
        for _ in 0..4000 {
            counts[peak_ewma(&cands, &mut rng).unwrap()] += 1;
        }
        assert!(counts.iter().all(|c| *c > 500), "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_jumps_up_and_decays_down() {
        let mut e = PeakEwma::new(Duration::from_millis(10), Instant::now());
        e.observe(Duration::from_millis(100), Instant::now());
        assert_eq!(
            e.estimate(Instant::now()),
            100e6,
            "a slower sample is taken at once"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        e.observe(Duration::from_millis(1), Instant::now());
        let after = e.estimate(Instant::now());
        assert!(
            after < 100e6 && after > 50e6,
            "a faster sample only pulls it down: {after}"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(
            e.estimate(Instant::now()) < 1e6,
            "idle: it decays so the endpoint is tried again"
        );
    }

    #[test]
    fn round_robin_cycles() {
        let cands = [cand(3, 0, 1.0), cand(5, 0, 1.0)];
        let picks: Vec<usize> = (0..4).filter_map(|n| round_robin(&cands, n)).collect();
        assert_eq!(picks, [3, 5, 3, 5]);
    }

    #[test]
    fn the_ring_keeps_keys_on_their_endpoint() {
        let addrs: Vec<SocketAddr> = (1..=4)
            .map(|i| format!("10.0.0.{i}:80").parse().unwrap())
            .collect();
        let ring = Ring::new(&addrs);
        let keys: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| ring.pick(k.as_bytes(), |_| true).unwrap())
            .collect();
        let mut counts = [0; 4];
        for i in &before {
            counts[*i] += 1;
        }
        assert!(
            counts.iter().all(|c| *c > 150),
            "keys spread over the endpoints: {counts:?}"
        );
        // Endpoint 2 is ejected: only its keys move.
        let after: Vec<usize> = keys
            .iter()
            .map(|k| ring.pick(k.as_bytes(), |i| i != 2).unwrap())
            .collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != 2 {
                assert_eq!(a, b);
            } else {
                assert_ne!(*a, 2);
            }
        }
        // Same addresses, same ring, in another process or version.
        assert_eq!(
            Ring::new(&addrs).pick(b"user-1", |_| true),
            ring.pick(b"user-1", |_| true)
        );
        assert_eq!(ring.pick(b"x", |_| false), None);
    }
}
