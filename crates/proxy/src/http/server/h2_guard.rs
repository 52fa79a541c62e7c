//! A watch on the control frames a client sends on an HTTP/2 connection.
//!
//! h2 bounds most abuse itself: rapid reset, CONTINUATION floods, HPACK bombs, streams
//! beyond the maximum, and the resets a client provokes (MadeYouReset) end the connection
//! or refuse the stream. It answers every SETTINGS and PING frame, though, and bounds how
//! many a client may send in no way: a flood of either costs the proxy a frame written back
//! for each. [`FrameGuard`] reads the frame headers of what the client sends (it never
//! looks inside a frame) and fails the connection's reads once the client has sent more of
//! them than a token bucket allows: [`BURST`] at once, then [`PER_SECOND`].

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// SETTINGS and PING frames (not acknowledgements) a client may send at once...
pub const BURST: f64 = 1_000.0;
/// ...and each second after that. A client sends SETTINGS when it starts and seldom after,
/// and PINGs to keep a connection alive or estimate its bandwidth (gRPC's BDP probes: one
/// per burst of data).
pub const PER_SECOND: f64 = 100.0;

const PREFACE: usize = 24;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const ACK: u8 = 0x1;

/// Where the scan of the client's bytes is.
#[derive(Debug, Clone, Copy)]
enum Scan {
    /// Inside the connection preface: this many bytes of it left.
    Preface(usize),
    /// Reading a frame header: the bytes of it so far.
    Header([u8; 9], usize),
    /// Inside a frame's payload: this many bytes of it left.
    Payload(usize),
}

/// The client's side of an HTTP/2 connection, watched for control-frame floods.
pub struct FrameGuard<I> {
    io: I,
    scan: Scan,
    tokens: f64,
    since: Option<Instant>,
    /// Set when the client went over its allowance and the connection was failed.
    flooded: Arc<AtomicBool>,
}

impl<I> FrameGuard<I> {
    /// Watches `io`, whose reads start with the client's preface; `flooded` is set if the
    /// connection is failed for a flood.
    pub fn new(io: I, flooded: Arc<AtomicBool>) -> FrameGuard<I> {
        FrameGuard {
            io,
            scan: Scan::Preface(PREFACE),
            tokens: BURST,
            since: None,
            flooded,
        }
    }

    /// Scans bytes the client sent; false once it has flooded.
    fn scan(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match &mut self.scan {
                Scan::Preface(left) | Scan::Payload(left) => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.scan = Scan::Header([0; 9], 0);
                    }
                }
                Scan::Header(head, have) => {
                    let n = (9 - *have).min(bytes.len());
                    head[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have < 9 {
                        continue;
                    }
                    let head = *head;
                    let len = (usize::from(head[0]) << 16)
                        | (usize::from(head[1]) << 8)
                        | usize::from(head[2]);
                    let (kind, flags) = (head[3], head[4]);
                    self.scan = if len == 0 {
                        Scan::Header([0; 9], 0)
                    } else {
                        Scan::Payload(len)
                    };
                    if (kind == SETTINGS || kind == PING) && flags & ACK == 0 && !self.spend() {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Takes a token for a control frame; false when there is none.
    fn spend(&mut self) -> bool {
        let now = Instant::now();
        if let Some(since) = self.since {
            let refill = now.duration_since(since).as_secs_f64() * PER_SECOND;
            self.tokens = (self.tokens + refill).min(BURST);
        }
        self.since = Some(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FrameGuard<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll
            && !this.scan(&buf.filled()[before..])
        {
            this.flooded.store(true, Ordering::Release);
            return Poll::Ready(Err(std::io::Error::other(
                "the client flooded the connection with SETTINGS or PING frames",
            )));
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FrameGuard<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            0,
        ];
        f.extend_from_slice(payload);
        f
    }

    fn guard() -> FrameGuard<()> {
        FrameGuard::new((), Arc::default())
    }

    #[tokio::test(start_paused = true)]
    async fn control_frames_beyond_the_allowance_fail_the_connection() {
        let mut g = guard();
        let mut bytes = vec![0u8; PREFACE];
        bytes.extend(frame(SETTINGS, 0, &[0, 4, 0, 0, 0, 1]));
        // Data, headers and acknowledgements cost nothing, however many.
        for _ in 0..5_000 {
            bytes.extend(frame(0, 0, b"data"));
            bytes.extend(frame(PING, ACK, &[0; 8]));
            bytes.extend(frame(SETTINGS, ACK, &[]));
        }
        assert!(g.scan(&bytes));
        let ping = frame(PING, 0, &[0; 8]);
        for _ in 0..(BURST as usize - 1) {
            assert!(g.scan(&ping));
        }
        assert!(!g.scan(&ping), "one over the burst");
        // A second later, a hundred more are allowed (the paused clock advances by at least
        // the second asked, to its millisecond timer: a hundred and a tenth at most).
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let allowed = (0..2 * PER_SECOND as usize)
            .take_while(|_| g.scan(&ping))
            .count();
        assert!(
            (PER_SECOND as usize..=PER_SECOND as usize + 1).contains(&allowed),
            "{allowed} allowed a second after the burst"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn frames_split_across_reads_are_counted_once() {
        let mut g = guard();
        let mut bytes = vec![0u8; PREFACE];
        for _ in 0..BURST as usize {
            bytes.extend(frame(PING, 0, &[7; 8]));
        }
        // A byte at a time: the header and payload of each frame straddle reads.
        for b in &bytes {
            assert!(g.scan(std::slice::from_ref(b)));
        }
        assert!(!g.scan(&frame(PING, 0, &[7; 8])));
    }
}
