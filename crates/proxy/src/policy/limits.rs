//! The client-side rate limit: a token bucket.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Starts full.
    pub fn new(per_second: u32, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            per_second: f64::from(per_second),
            burst,
            tokens: burst,
            last: now,
        }
    }

    pub fn is_for(&self, per_second: u32, burst: u32) -> bool {
        self.per_second == f64::from(per_second) && self.burst == f64::from(burst.max(1))
    }

    /// Takes a token if one is there.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is there (for `Retry-After`).
    pub fn wait(&self) -> Duration {
        if self.tokens >= 1.0 || self.per_second <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let mut b = TokenBucket::new(10, 5, Instant::now());
        assert_eq!(
            (0..20).filter(|_| b.try_take(Instant::now())).count(),
            5,
            "the burst"
        );
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(
            (0..20).filter(|_| b.try_take(Instant::now())).count(),
            3,
            "10 per second for 0.3 s"
        );
        assert!(b.wait() > Duration::ZERO);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            (0..20).filter(|_| b.try_take(Instant::now())).count(),
            5,
            "never more than the burst"
        );
    }
}
