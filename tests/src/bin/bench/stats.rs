//! The figures a measurement yields ([`Figures`], with latency tails in [`Tails`]) and the
//! statistics over samples and rounds: percentiles and medians.

/// One target's figures: from one round, or the medians over the rounds.
#[derive(Debug, Default, Clone)]
pub(crate) struct Figures {
    /// Closed loop, wrk -t1 -c32.
    pub(crate) max_rps: f64,
    /// Proxy CPU milliseconds per 1,000 requests at saturation.
    pub(crate) cpu_sat: f64,
    /// The user-space part of `cpu_sat`.
    pub(crate) cpu_sat_user: f64,
    /// Latency at the fixed rate.
    pub(crate) lat: Tails,
    /// Proxy CPU milliseconds per 1,000 requests at the fixed rate.
    pub(crate) cpu_fixed: f64,
    pub(crate) peak_rss_kib: f64,
}

/// Latency percentiles of one target in one fixed-rate run, in microseconds, and what they add
/// to direct's in the same run.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tails {
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) added_p50_us: f64,
    pub(crate) added_p99_us: f64,
}

impl Tails {
    /// `lat` sorted.
    pub(crate) fn of(lat: &[f64]) -> Tails {
        Tails {
            p50_us: percentile(lat, 0.50),
            p99_us: percentile(lat, 0.99),
            p999_us: percentile(lat, 0.999),
            added_p50_us: 0.0,
            added_p99_us: 0.0,
        }
    }

    /// What `self` adds to `direct`.
    pub(crate) fn over(self, direct: Tails) -> Tails {
        Tails {
            added_p50_us: self.p50_us - direct.p50_us,
            added_p99_us: self.p99_us - direct.p99_us,
            ..self
        }
    }
    fn median(v: &[Tails]) -> Tails {
        let m = |f: fn(&Tails) -> f64| median(v.iter().map(f).collect());
        Tails {
            p50_us: m(|t| t.p50_us),
            p99_us: m(|t| t.p99_us),
            p999_us: m(|t| t.p999_us),
            added_p50_us: m(|t| t.added_p50_us),
            added_p99_us: m(|t| t.added_p99_us),
        }
    }
}

pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub(crate) fn median_figures(v: &[Figures]) -> Figures {
    let m = |f: fn(&Figures) -> f64| median(v.iter().map(f).collect());
    Figures {
        max_rps: m(|f| f.max_rps),
        cpu_sat: m(|f| f.cpu_sat),
        cpu_sat_user: m(|f| f.cpu_sat_user),
        lat: Tails::median(&v.iter().map(|f| f.lat).collect::<Vec<_>>()),
        cpu_fixed: m(|f| f.cpu_fixed),
        peak_rss_kib: m(|f| f.peak_rss_kib),
    }
}
