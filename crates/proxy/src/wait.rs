//! `weft-proxy wait`: returns once the proxy beside it is ready.
//!
//! Where native sidecars are not available, the injector makes the proxy the first regular
//! container with this as its `postStart` hook. The kubelet starts the next container only
//! once the hook returns, so the app starts with its proxy certified and configured, as
//! Istio's `holdApplicationUntilProxyStarts` does.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use clap::Args;
use weft_api::duration::Dur;

#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// The proxy's admin listener.
    #[arg(long, env = "WEFT_WAIT_ADMIN_ADDR", default_value = "127.0.0.1:15191")]
    pub admin_addr: SocketAddr,
    /// How long to wait before giving up (the hook then fails, and the kubelet restarts the
    /// container).
    #[arg(long, default_value = "120s")]
    pub timeout: Dur,
}

/// Polls `GET /ready` until it answers 200, or fails at the deadline.
pub fn run(args: &WaitArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + args.timeout.0;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match ready(args.admin_addr) {
            Ok(true) => return Ok(()),
            Ok(false) => last = "not ready".into(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!(
        "the proxy at {} was not ready within {} ({last})",
        args.admin_addr,
        args.timeout
    )
}

fn ready(addr: SocketAddr) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    Ok(head.starts_with(b"HTTP/1.1 200"))
}
