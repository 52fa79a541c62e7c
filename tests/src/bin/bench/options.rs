//! The run's settings from the command line, read by the orchestration and by the report.

use std::path::PathBuf;
use std::time::Duration;

pub(crate) struct Options {
    pub(crate) rounds: usize,
    pub(crate) duration: Duration,
    pub(crate) out: PathBuf,
    /// Only the callgrind step, keeping its output files: for profiling the request path.
    pub(crate) instructions_only: bool,
    /// Only the cost of tracing.
    pub(crate) tracing_only: bool,
}
