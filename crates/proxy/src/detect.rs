//! Protocol detection: what a connection speaks, judged from its first bytes.
//!
//! [`classify`] is a pure function over the bytes read so far; [`read_and_classify`] reads
//! from a stream until the bytes decide or a deadline passes. The bytes read are kept and
//! replayed to whatever handles the connection next ([`crate::io::Rewind`]).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::transport_header;

/// The HTTP/2 prior-knowledge connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest request line we wait for before calling a connection opaque.
const MAX_REQUEST_LINE: usize = 16 * 1024;
/// The longest method token we accept.
const MAX_METHOD: usize = 32;

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// A TLS ClientHello.
    Tls,
    /// A weft transport header from a peer proxy ([`crate::transport_header`]).
    TransportHeader,
    /// Anything else: forwarded byte for byte.
    Opaque,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Tls => "tls",
            Protocol::TransportHeader => "weft",
            Protocol::Opaque => "opaque",
        }
    }
}

/// The verdict on the bytes seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Is(Protocol),
    NeedMore,
}

/// Classifies a connection by its first bytes.
pub fn classify(buf: &[u8]) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    if let Some(v) = match_prefix(buf, H2_PREFACE, Protocol::Http2) {
        return v;
    }
    if let Some(v) = match_prefix(buf, transport_header::MAGIC, Protocol::TransportHeader) {
        return v;
    }
    // TLS record header: handshake (0x16), legacy version 3.x.
    if buf[0] == 0x16 {
        return match buf.get(1) {
            None => Verdict::NeedMore,
            Some(0x03) => Verdict::Is(Protocol::Tls),
            Some(_) => Verdict::Is(Protocol::Opaque),
        };
    }
    classify_http1(buf)
}

/// `Some` when `buf` is a prefix of `magic` (need more) or starts with it (decided).
fn match_prefix(buf: &[u8], magic: &[u8], protocol: Protocol) -> Option<Verdict> {
    let n = buf.len().min(magic.len());
    if buf[..n] != magic[..n] {
        return None;
    }
    Some(if buf.len() >= magic.len() {
        Verdict::Is(protocol)
    } else {
        Verdict::NeedMore
    })
}

/// An HTTP/1 request starts with a method token and a space. A standard method is enough;
/// an extension method must also complete a request line ending in ` HTTP/1.x`.
fn classify_http1(buf: &[u8]) -> Verdict {
    let token_len = buf.iter().take_while(|b| is_tchar(**b)).count();
    if token_len == buf.len() {
        // Only token characters so far.
        return if token_len == 0 || token_len > MAX_METHOD {
            Verdict::Is(Protocol::Opaque)
        } else {
            Verdict::NeedMore
        };
    }
    if token_len == 0 || token_len > MAX_METHOD || buf[token_len] != b' ' {
        return Verdict::Is(Protocol::Opaque);
    }
    if is_standard_method(&buf[..token_len]) {
        return Verdict::Is(Protocol::Http1);
    }
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            let line = &buf[..end];
            // Printable ASCII and spaces only, as while it was arriving (below): the verdict
            // never depends on where the reads split the line.
            let printable = line.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
            if printable && (line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0")) {
                Verdict::Is(Protocol::Http1)
            } else {
                Verdict::Is(Protocol::Opaque)
            }
        }
        // Still inside the request line (its CR may have come without the LF).
        None if buf.len() < MAX_REQUEST_LINE
            && buf
                .strip_suffix(b"\r")
                .unwrap_or(buf)
                .iter()
                .all(|b| b.is_ascii_graphic() || *b == b' ') =>
        {
            Verdict::NeedMore
        }
        None => Verdict::Is(Protocol::Opaque),
    }
}

fn is_standard_method(token: &[u8]) -> bool {
    matches!(
        token,
        b"GET"
            | b"HEAD"
            | b"POST"
            | b"PUT"
            | b"DELETE"
            | b"CONNECT"
            | b"OPTIONS"
            | b"TRACE"
            | b"PATCH"
    )
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Why detection ended without a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undecided {
    /// The deadline passed; `buf` holds what arrived (possibly nothing).
    Timeout,
    /// The peer closed before the bytes decided.
    Eof,
}

/// Reads from `io` into `buf` until [`classify`] decides, the peer closes, or `timeout`
/// passes. The bytes stay in `buf` to be replayed.
pub async fn read_and_classify<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    timeout: Duration,
) -> std::io::Result<Result<Protocol, Undecided>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Verdict::Is(p) = classify(buf) {
            return Ok(Ok(p));
        }
        // A quarter page to start (most first reads are a request head, which then stays
        // in this buffer while the request is in flight), doubling for what needs more.
        if buf.capacity() - buf.len() < 256 {
            buf.reserve(crate::io::READ_SIZE.max(buf.len()));
        }
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Err(_) => return Ok(Err(Undecided::Timeout)),
            Ok(Ok(0)) => return Ok(Err(Undecided::Eof)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        use Protocol::*;
        let cases: &[(&[u8], Verdict)] = &[
            (b"", Verdict::NeedMore),
            (b"GET / HTTP/1.1\r\n", Verdict::Is(Http1)),
            (b"GET ", Verdict::Is(Http1)),
            (b"GE", Verdict::NeedMore),
            (b"POST /x HTTP/1.0\r\nHost: a\r\n\r\n", Verdict::Is(Http1)),
            (b"CONNECT reviews:9080 HTTP/1.1\r\n", Verdict::Is(Http1)),
            (b"PROPFIND /d HTTP/1.1\r\n", Verdict::Is(Http1)),
            (b"PROPFIND /d", Verdict::NeedMore),
            // The request line's CR, its LF still to come (found by the fuzz target).
            (b"PROPFIND /d HTTP/1.1\r", Verdict::NeedMore),
            // A control byte in the line is opaque, whether or not its end has come.
            (b"PURGE \x01 HTTP/1.1\r\n", Verdict::Is(Opaque)),
            (b"PURGE \x01", Verdict::Is(Opaque)),
            (b"PROPFIND /d HTTP/2\r\n", Verdict::Is(Opaque)),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Verdict::Is(Http2)),
            (b"PRI * HTTP/2.0\r\n", Verdict::NeedMore),
            (b"PRI * HTTP/1.1\r\n", Verdict::Is(Http1)),
            (b"PRI * HTTP/2.1\r\n", Verdict::Is(Opaque)),
            (b"\x16\x03\x01\x02\x00\x01", Verdict::Is(Tls)),
            (b"\x16", Verdict::NeedMore),
            (b"\x16\x00", Verdict::Is(Opaque)),
            (b"\x00weft\x01", Verdict::Is(TransportHeader)),
            (b"\x00we", Verdict::NeedMore),
            (b"\x00\x00\x00\x01", Verdict::Is(Opaque)),
            (b"PING\r\n", Verdict::Is(Opaque)),
            (b"*1\r\n$4\r\nPING\r\n", Verdict::Is(Opaque)),
            (b"SSH-2.0-OpenSSH_9.2\r\n", Verdict::Is(Opaque)),
            (b" GET /", Verdict::Is(Opaque)),
        ];
        for (input, want) in cases {
            assert_eq!(
                classify(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn a_long_token_is_opaque() {
        assert_eq!(classify(&[b'A'; 40]), Verdict::Is(Protocol::Opaque));
    }

    #[test]
    fn an_endless_extension_request_line_is_opaque() {
        let mut line = b"FOO /".to_vec();
        line.resize(MAX_REQUEST_LINE + 1, b'a');
        assert_eq!(classify(&line), Verdict::Is(Protocol::Opaque));
    }

    #[tokio::test(start_paused = true)]
    async fn reading_stops_at_the_deadline_and_keeps_the_bytes() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GE")
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        let got = read_and_classify(&mut server, &mut buf, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(got, Err(Undecided::Timeout));
        assert_eq!(&buf[..], b"GE");
    }

    #[tokio::test]
    async fn reading_continues_until_decided() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for chunk in [&b"PO"[..], b"ST", b" /"] {
                tokio::io::AsyncWriteExt::write_all(&mut client, chunk)
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let mut buf = BytesMut::new();
        let got = read_and_classify(&mut server, &mut buf, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(got, Ok(Protocol::Http1));
        drop(writer.await.unwrap());
    }

    proptest::proptest! {
        #[test]
        fn classify_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = classify(&bytes);
        }
    }
}
