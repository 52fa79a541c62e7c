//! The access log: one line per request on standard output, JSON or text, written by a thread
//! of its own so that a slow reader of the log never slows a request. When its queue is full
//! a line is dropped and counted.

use std::io::Write as _;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::telemetry::{self, LogFormat};

/// Lines waiting for the writer; beyond, new ones are dropped.
const QUEUE: usize = 8192;

/// One request, as its line says it. Absent values are `null` in JSON and `-` in text.
#[derive(Debug, Serialize)]
pub struct Entry {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub direction: Option<String>,
    pub method: Option<String>,
    pub authority: Option<String>,
    pub path: Option<String>,
    pub protocol: Option<String>,
    pub status: Option<u16>,
    /// To the response body's end.
    #[serde(rename = "duration_ms", serialize_with = "millis")]
    pub duration: Duration,
    /// The response body's data bytes sent.
    pub bytes: u64,
    /// The endpoint of the last attempt.
    pub upstream: Option<String>,
    pub route: Option<String>,
    pub rule: Option<String>,
    pub backend: Option<String>,
    pub attempts: i64,
    pub retry_reasons: Vec<&'static str>,
    /// The peer's SPIFFE ID: the caller's on the inbound side, the server's on the outbound.
    pub peer: Option<String>,
    pub mtls: Option<bool>,
    /// The `x-weft-error` of an answer the proxy generated.
    pub error: Option<String>,
    pub trace_id: Option<String>,
    /// The proxy's span, when the request was sampled.
    pub span_id: Option<String>,
    pub request_id: Option<String>,
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&telemetry::rfc3339(*time))
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3)
}

/// Where the lines go.
pub struct AccessLog {
    format: LogFormat,
    lines: mpsc::SyncSender<String>,
}

impl AccessLog {
    /// Starts the writer thread, on standard output.
    pub fn stdout(format: LogFormat) -> std::io::Result<AccessLog> {
        let (lines, rx) = mpsc::sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("weft-access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(line.as_bytes());
                    // Flush when nothing else waits, so that a quiet proxy's lines appear.
                    let mut more = rx.try_iter();
                    for line in more.by_ref() {
                        let _ = out.write_all(line.as_bytes());
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(AccessLog { format, lines })
    }

    /// Queues the entry's line; `false` when the queue was full and it was dropped.
    pub fn write(&self, entry: &Entry) -> bool {
        let mut line = match self.format {
            LogFormat::Json => serde_json::to_string(entry).unwrap_or_default(),
            LogFormat::Text => text(entry),
        };
        line.push('\n');
        self.lines.try_send(line).is_ok()
    }
}

/// `time direction method authority+path protocol status duration key=value...`.
fn text(e: &Entry) -> String {
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    format!(
        "{} {} {} {}{} HTTP/{} {} {}B {:.3}ms upstream={} route={} backend={} attempts={} peer={} error={} trace={} request={}",
        telemetry::rfc3339(e.time),
        or(&e.direction),
        or(&e.method),
        e.authority.as_deref().unwrap_or(""),
        or(&e.path),
        or(&e.protocol),
        e.status.map_or_else(|| "-".into(), |s| s.to_string()),
        e.bytes,
        e.duration.as_secs_f64() * 1e3,
        or(&e.upstream),
        or(&e.route),
        or(&e.backend),
        e.attempts,
        or(&e.peer),
        or(&e.error),
        or(&e.trace_id),
        or(&e.request_id),
    )
}
