//! Byte-stream plumbing shared by both directions: [`tune`] for every proxied socket,
//! [`Conn`], the one connection type above TCP and TLS, [`Rewind`], a stream that first
//! replays the bytes detection consumed, [`poll_fill`], how every reader grows its buffer,
//! and [`splice`], opaque forwarding with half-close.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connection that has carried nothing for this long is probed by the kernel.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(20);
/// Between unanswered probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes before the kernel gives the connection up: a peer that vanished (its
/// node died, the network split) is found within idle + interval x probes, 40 seconds.
pub const KEEPALIVE_PROBES: u32 = 4;

/// Settings for every connection the proxy accepts or opens: no Nagle delay (latency matters
/// more than packet count for request/response traffic), and TCP keep-alive, so that a peer
/// that disappeared without a FIN or RST, idle pooled connections included, is noticed by
/// the kernel and not by the next request. The kernel's probes cost nothing per request,
/// unlike HTTP/2 PINGs, whose bookkeeping in hyper reads the clock on every frame.
pub fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "TCP keep-alive not set");
    }
}

/// How much room the first read asks for: enough for most heads and small bodies whole, in a
/// quarter of a page. Each read that fills its room doubles the next, up to
/// [`MAX_READ_SIZE`], so that a large body is read in large pieces while a thousand small
/// exchanges in flight hold little. All are jemalloc small size classes, served from its
/// thread cache.
pub const READ_SIZE: usize = 1024;
pub const MAX_READ_SIZE: usize = 64 * 1024;

/// Reads more of `io` into `read`. A connection that waits for its peer holds no buffer
/// until there is something to read (over plain TCP, where readiness says so without a
/// read); `read_size` grows with reads that fill their room.
pub fn poll_fill(
    io: &mut Conn,
    read: &mut BytesMut,
    read_size: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if read.capacity() == 0
        && let Some(ready) = io.plain_read_ready(cx)
    {
        ready!(ready)?;
    }
    if read.capacity() - read.len() < *read_size / 4 {
        read.reserve(*read_size);
    }
    let n = ready!(tokio_util::io::poll_read_buf(Pin::new(io), cx, read))?;
    if n >= *read_size && *read_size < MAX_READ_SIZE {
        *read_size *= 2;
    }
    Poll::Ready(Ok(n))
}

/// A stream whose reads first return `prefix`, then the inner stream's bytes.
#[derive(Debug)]
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Rewind { prefix, inner }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // An empty slice still holds the whole detection buffer: let it go.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    /// No: hyper then gathers a message's head and body into one buffer and writes it with
    /// `send(2)`, where a vectored write is `writev(2)`, whose trip through the file layer
    /// costs the kernel more per call than the copy of a small body costs us.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Bytes moved by [`splice`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spliced {
    /// From the accepting side to the connecting side.
    pub sent: u64,
    /// Back.
    pub received: u64,
}

/// Copies both ways until both sides have closed. When one side finishes sending, the other
/// side's write half is shut down (half-close), and the opposite direction keeps flowing.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<Spliced>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (sent, received) =
        tokio::io::copy_bidirectional_with_sizes(a, b, 16 * 1024, 16 * 1024).await?;
    Ok(Spliced { sent, received })
}

/// A connection as the proxy holds it: plain TCP, or mesh TLS as client or as server.
pub enum Conn {
    Tcp(tokio::net::TcpStream),
    TlsClient(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
    /// Accepted TLS; the bytes read to detect it are replayed to the handshake.
    TlsServer(Box<tokio_rustls::server::TlsStream<Rewind<tokio::net::TcpStream>>>),
}

macro_rules! each_conn {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Conn::Tcp($s) => $e,
            Conn::TlsClient($s) => $e,
            Conn::TlsServer($s) => $e,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each_conn!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each_conn!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each_conn!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::TlsClient(s) => s.is_write_vectored(),
            Conn::TlsServer(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_conn!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_conn!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

impl Conn {
    /// The socket's read readiness as tokio keeps it, on a plain connection: cleared by a
    /// read that stopped short of its buffer, set again when epoll reports data or the peer's
    /// FIN, so `Pending` means nothing has arrived since. `None` over TLS, whose stream may
    /// hold a record it has already read: there only a read tells.
    pub fn plain_read_ready(&self, cx: &mut Context<'_>) -> Option<Poll<io::Result<()>>> {
        match self {
            Conn::Tcp(tcp) => Some(tcp.poll_read_ready(cx)),
            Conn::TlsClient(_) | Conn::TlsServer(_) => None,
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Tcp(_) => "Conn::Tcp",
            Conn::TlsClient(_) => "Conn::TlsClient",
            Conn::TlsServer(_) => "Conn::TlsServer",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn rewind_replays_the_prefix_before_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut io = Rewind::new(Bytes::from_static(b"hello"), server);
        let mut out = String::new();
        io.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn splice_propagates_half_close() {
        // a_far <-> a_near ==splice== b_near <-> b_far
        let (mut a_far, mut a_near) = tokio::io::duplex(64);
        let (mut b_near, mut b_far) = tokio::io::duplex(64);
        let task = tokio::spawn(async move { splice(&mut a_near, &mut b_near).await });
        a_far.write_all(b"ping").await.unwrap();
        a_far.shutdown().await.unwrap();
        let mut got = Vec::new();
        b_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping", "EOF reaches the far side after the data");
        b_far.write_all(b"pong").await.unwrap();
        b_far.shutdown().await.unwrap();
        let mut back = Vec::new();
        a_far.read_to_end(&mut back).await.unwrap();
        assert_eq!(
            back, b"pong",
            "the other direction still flows after the half-close"
        );
        assert_eq!(
            task.await.unwrap().unwrap(),
            Spliced {
                sent: 4,
                received: 4
            }
        );
    }
}
