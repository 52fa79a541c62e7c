//! Logs: structured, to stderr, as text or JSON, with a filter that `PUT /log-level` changes at
//! run time.

use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Reads and changes the log filter of the running process.
pub struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

impl LogHandle {
    pub fn get(&self) -> String {
        weft_api::sync::lock(&self.current).clone()
    }

    /// Replaces the filter (`info`, `weft_proxy=debug,info`, ...).
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let parsed = EnvFilter::try_new(filter)
            .map_err(|e| format!("invalid log filter {filter:?}: {e}"))?;
        self.reload.reload(parsed).map_err(|e| e.to_string())?;
        *weft_api::sync::lock(&self.current) = filter.to_owned();
        Ok(())
    }
}

/// A time as RFC 3339, UTC (fractions of a second only when it has them): the admin API's
/// and the access log's.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(time)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Installs the global subscriber.
pub fn init(filter: &str, format: LogFormat) -> anyhow::Result<LogHandle> {
    let parsed = EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid --log-level {filter:?}: {e}"))?;
    let (filter_layer, reload) = reload::Layer::new(parsed);
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(false)
    });
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    });
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(json)
        .with(text)
        .try_init()?;
    Ok(LogHandle {
        reload,
        current: Mutex::new(filter.to_owned()),
    })
}
