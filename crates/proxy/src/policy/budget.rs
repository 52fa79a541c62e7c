//! The retry budget: retries may add at most `percent` of the requests of the last `window`,
//! plus `min_per_second` for every second of it, so that a failing backend never sees a retry
//! storm. Counts are kept in ten buckets that slide with time.

use std::time::Duration;

use tokio::time::Instant;
use weft_api::config::policy::RetryBudget;

const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slice of time (since `origin`) the counts belong to.
    epoch: u64,
    requests: u64,
    retries: u64,
}

#[derive(Debug)]
pub struct Budget {
    percent: u64,
    min_per_second: u64,
    window: Duration,
    origin: Instant,
    buckets: [Bucket; BUCKETS],
}

impl Budget {
    pub fn new(config: &RetryBudget, now: Instant) -> Budget {
        Budget {
            percent: u64::from(config.percent),
            min_per_second: u64::from(config.min_retries_per_second),
            window: config.window.0.max(Duration::from_secs(1)),
            origin: now,
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    /// Whether the budget was made for this configuration.
    pub fn is_for(&self, config: &RetryBudget) -> bool {
        self.percent == u64::from(config.percent)
            && self.min_per_second == u64::from(config.min_retries_per_second)
            && self.window == config.window.0.max(Duration::from_secs(1))
    }

    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        let width = self.window.as_nanos() / BUCKETS as u128;
        let epoch = (now.saturating_duration_since(self.origin).as_nanos() / width.max(1)) as u64;
        let slot = &mut self.buckets[(epoch % BUCKETS as u64) as usize];
        if slot.epoch != epoch {
            *slot = Bucket {
                epoch,
                requests: 0,
                retries: 0,
            };
        }
        slot
    }

    fn totals(&self, now: Instant) -> (u64, u64) {
        let width = self.window.as_nanos() / BUCKETS as u128;
        let epoch = (now.saturating_duration_since(self.origin).as_nanos() / width.max(1)) as u64;
        self.buckets
            .iter()
            .filter(|b| b.epoch + BUCKETS as u64 > epoch && b.epoch <= epoch)
            .fold((0, 0), |(r, t), b| (r + b.requests, t + b.retries))
    }

    /// Counts a request (its first attempt).
    pub fn deposit(&mut self, now: Instant) {
        self.bucket(now).requests += 1;
    }

    /// Over the window: requests, retries taken, and retries allowed.
    pub fn state(&self, now: Instant) -> (u64, u64, u64) {
        let (requests, retries) = self.totals(now);
        // The floor is a rate: it accrues over the time the budget has covered, up to one
        // window, so a fresh budget does not hand out a window's worth of retries at once.
        let width = self.window / BUCKETS as u32;
        let covered = now
            .saturating_duration_since(self.origin)
            .min(self.window)
            .max(width);
        let floor = (self.min_per_second as f64 * covered.as_secs_f64()) as u64;
        (requests, retries, requests * self.percent / 100 + floor)
    }

    /// Takes one retry from the budget, if it allows one.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let (_, retries, allowed) = self.state(now);
        if retries < allowed {
            self.bucket(now).retries += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::duration::Dur;

    fn budget(percent: u32, min: u32, window_s: u64) -> Budget {
        Budget::new(
            &RetryBudget {
                percent,
                min_retries_per_second: min,
                window: Dur::from_secs(window_s),
            },
            Instant::now(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_share_of_requests_plus_a_floor() {
        let mut b = budget(20, 1, 10);
        tokio::time::advance(Duration::from_secs(30)).await;
        let now = Instant::now();
        // The floor: 1 per second over a 10 s window, with no traffic at all.
        let floor = (0..100).filter(|_| b.try_withdraw(now)).count();
        assert_eq!(floor, 10);
        for _ in 0..100 {
            b.deposit(now);
        }
        // 20% of 100 requests, minus the 10 the floor already used (it is one pool).
        let more = (0..100).filter(|_| b.try_withdraw(now)).count();
        assert_eq!(more, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let mut b = budget(50, 0, 10);
        for _ in 0..10 {
            b.deposit(Instant::now());
        }
        assert_eq!(
            (0..10).filter(|_| b.try_withdraw(Instant::now())).count(),
            5
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!b.try_withdraw(Instant::now()), "still inside the window");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(
            !b.try_withdraw(Instant::now()),
            "the requests aged out with the retries"
        );
        for _ in 0..4 {
            b.deposit(Instant::now());
        }
        assert_eq!(
            (0..10).filter(|_| b.try_withdraw(Instant::now())).count(),
            2
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_budget_accrues_its_floor_over_time() {
        let mut b = budget(0, 10, 10);
        assert_eq!(
            (0..100).filter(|_| b.try_withdraw(Instant::now())).count(),
            10,
            "one bucket's worth at first"
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            (0..100).filter(|_| b.try_withdraw(Instant::now())).count(),
            20,
            "30 after three seconds"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_failing_load_stays_within_budget() {
        // 100 requests per second for 60 s, every one wanting a retry.
        let mut b = budget(20, 10, 10);
        let mut retries = 0;
        for _ in 0..60 {
            for _ in 0..100 {
                b.deposit(Instant::now());
                if b.try_withdraw(Instant::now()) {
                    retries += 1;
                }
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert!(
            retries <= 6000 / 5 + 10 * 60 + 100,
            "{retries} retries for 6000 requests"
        );
        assert!(
            retries >= 6000 / 5,
            "{retries}: the budget allows at least its share"
        );
    }
}
