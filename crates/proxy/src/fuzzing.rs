//! Fuzz targets: each takes any bytes, runs one of the proxy's parsers on them as a
//! connection would, and panics when something that must hold for every input does not.
//! `fuzz/` runs them under AFL++ (`make fuzz`); the tests below replay the committed corpus
//! and every crash found (`fuzz/regressions/`), in `make test`.
//!
//! What must hold, besides not panicking:
//! - [`request_head`], [`response_head`]: a head weft accepts, httparse (given room for any
//!   number of fields) accepts too, with the same method or status, target, version and
//!   fields, and the same length; while weft waits for more, so does httparse.
//! - [`chunked`]: a body weft's decoder reads to its end decodes to the same data when
//!   encoded again; data encoded in chunks of any sizes decodes back, however the reads
//!   split it.
//! - [`detection`]: once a prefix decides the protocol, every longer input decides the same.
//! - [`transport_header`]: a header decoded, encoded and decoded again is the same header.
//! - [`config`]: a config that passes validation builds a snapshot.

use std::collections::BTreeMap;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};

use crate::http::h1::{Fill, Framing, poll_decode};

/// The largest request head the target lets through (the proxy's default limit).
const MAX_HEAD: usize = 64 * 1024;

/// Fields as `(name, values in order)`, names lowercased.
type Fields = BTreeMap<String, Vec<Vec<u8>>>;

fn fields_of(map: &http::HeaderMap) -> Fields {
    let mut out = Fields::new();
    for (name, value) in map {
        out.entry(name.as_str().to_owned())
            .or_default()
            .push(value.as_bytes().to_vec());
    }
    out
}

fn httparse_fields(headers: &[httparse::Header<'_>]) -> Fields {
    let mut out = Fields::new();
    for h in headers {
        out.entry(h.name.to_ascii_lowercase())
            .or_default()
            .push(h.value.to_vec());
    }
    out
}

/// Room for more fields than either parser allows.
const HTTPARSE_FIELDS: usize = 512;

/// A request head, as the HTTP/1 server reads it.
pub fn request_head(data: &[u8]) {
    let weft = crate::http::server::h1::parse_request_head(data, MAX_HEAD);
    let mut headers = vec![httparse::EMPTY_HEADER; HTTPARSE_FIELDS];
    let mut theirs = httparse::Request::new(&mut headers);
    let status = theirs.parse(data);
    match weft {
        Ok(Some((req, took))) => {
            let Ok(httparse::Status::Complete(len)) = status else {
                panic!("weft took a request head httparse does not: {status:?}");
            };
            assert_eq!(took, len, "the head's length");
            assert_eq!(Some(req.method().as_str()), theirs.method, "the method");
            let target = theirs.path.unwrap_or_default();
            let uri: http::Uri = target.parse().expect("httparse's target is a URI");
            assert_eq!(req.uri(), &uri, "the target");
            let version = if theirs.version == Some(0) {
                http::Version::HTTP_10
            } else {
                http::Version::HTTP_11
            };
            assert_eq!(req.version(), version, "the version");
            assert_eq!(
                fields_of(req.headers()),
                httparse_fields(theirs.headers),
                "the fields"
            );
        }
        Ok(None) => assert!(
            matches!(status, Ok(httparse::Status::Partial)),
            "weft waits for more of a head httparse calls {status:?}"
        ),
        // Refused: weft is stricter than httparse (framing, hosts, limits).
        Err(_) => {}
    }
}

/// A response head, as the HTTP/1 client reads it.
pub fn response_head(data: &[u8]) {
    let (head_request, data) = match data.split_first() {
        Some((first, rest)) => (first & 1 == 1, rest),
        None => return,
    };
    let weft = crate::http::client::h1::parse_response_head(data, head_request);
    let mut headers = vec![httparse::EMPTY_HEADER; HTTPARSE_FIELDS];
    let mut theirs = httparse::Response::new(&mut headers);
    let status = theirs.parse(data);
    match weft {
        Ok(Some((parts, took))) => {
            let Ok(httparse::Status::Complete(len)) = status else {
                panic!("weft took a response head httparse does not: {status:?}");
            };
            assert_eq!(took, len, "the head's length");
            let Some(parts) = parts else {
                assert!(
                    (100..200).contains(&theirs.code.unwrap_or_default()),
                    "an informational head"
                );
                return;
            };
            assert_eq!(Some(parts.status.as_u16()), theirs.code, "the status");
            let mut expected = httparse_fields(theirs.headers);
            // Both lengths: weft drops Content-Length, as its framing follows the chunks.
            if expected.contains_key("transfer-encoding") {
                expected.remove("content-length");
            }
            assert_eq!(fields_of(&parts.headers), expected, "the fields");
        }
        Ok(None) => assert!(
            matches!(status, Ok(httparse::Status::Partial)),
            "weft waits for more of a head httparse calls {status:?}"
        ),
        Err(_) => {}
    }
}

/// Bytes handed to the decoder in reads of the sizes given, as a connection would.
struct Reads {
    buf: BytesMut,
    rest: Bytes,
    sizes: Vec<usize>,
    next: usize,
}

impl Reads {
    fn new(data: Bytes, sizes: Vec<usize>) -> Reads {
        Reads {
            buf: BytesMut::new(),
            rest: data,
            sizes,
            next: 0,
        }
    }
}

impl Fill for Reads {
    fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    fn poll_fill(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let size = self
            .sizes
            .get(self.next % self.sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        self.next += 1;
        let n = size.min(self.rest.len());
        self.buf.extend_from_slice(&self.rest.split_to(n));
        Poll::Ready(Ok(n))
    }
}

/// Decodes a whole chunked body from `reads`: its data, or `None` when the decoder refused
/// it or it ended early.
fn decode_chunked(reads: &mut Reads) -> Option<Vec<u8>> {
    let mut framing = Framing::CHUNKED;
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut out = Vec::new();
    loop {
        match poll_decode(&mut framing, reads, &mut cx) {
            Poll::Ready(None) => return Some(out),
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            Poll::Ready(Some(Err(_))) => return None,
            Poll::Pending => unreachable!("the reads never wait"),
        }
    }
}

/// `data` in chunks of the sizes given (cycled), with an extension on some, and the last.
fn encode_chunked(data: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        out.extend_from_slice(format!("{n:x}").as_bytes());
        if i % 3 == 1 {
            out.extend_from_slice(b";ext=\"v\"");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
        rest = tail;
        i += 1;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A chunked body: the first bytes say how reads and chunks are sized, the rest is both a
/// body to decode as it is and data to encode.
pub fn chunked(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let (sizes, body) = data.split_at(4);
    let reads: Vec<usize> = sizes[..2]
        .iter()
        .map(|b| usize::from(*b % 16) + 1)
        .collect();
    let chunks: Vec<usize> = sizes[2..].iter().map(|b| usize::from(*b) + 1).collect();
    // As a body: whatever the decoder reads to the end, encoded again, reads the same.
    if let Some(decoded) =
        decode_chunked(&mut Reads::new(Bytes::copy_from_slice(body), reads.clone()))
    {
        let again = encode_chunked(&decoded, &[decoded.len().max(1)]);
        let redecoded = decode_chunked(&mut Reads::new(Bytes::from(again), vec![7]));
        assert_eq!(redecoded.as_deref(), Some(&decoded[..]), "decoded again");
    }
    // As data: encoded in chunks, it decodes back whatever the reads.
    let encoded = encode_chunked(body, &chunks);
    let decoded = decode_chunked(&mut Reads::new(Bytes::from(encoded), reads));
    assert_eq!(decoded.as_deref(), Some(body), "encoded then decoded");
}

/// Protocol detection of a connection's first bytes.
pub fn detection(data: &[u8]) {
    detection_holds(crate::detect::classify, data);
}

/// Whether `classify` keeps its verdict on every prefix of `data` after it first gives one.
fn detection_holds(classify: impl Fn(&[u8]) -> crate::detect::Verdict, data: &[u8]) {
    use crate::detect::Verdict;
    let mut decided = None;
    for end in 0..=data.len() {
        match (classify(&data[..end]), decided) {
            (Verdict::Is(p), None) => decided = Some(p),
            (Verdict::Is(p), Some(q)) => assert_eq!(p, q, "{end} bytes changed the verdict"),
            (Verdict::NeedMore, Some(q)) => {
                panic!("{end} bytes need more after a verdict of {q:?}")
            }
            (Verdict::NeedMore, None) => {}
        }
    }
}

/// The transport header a peer proxy sends first.
pub fn transport_header(data: &[u8]) {
    use crate::transport_header::Header;
    let Ok(Some((header, took))) = Header::decode(data) else {
        return;
    };
    assert!(took <= data.len(), "took {took} of {} bytes", data.len());
    let mut encoded = BytesMut::new();
    header.encode(&mut encoded);
    let again = Header::decode(&encoded);
    assert_eq!(
        again,
        Ok(Some((header, encoded.len()))),
        "encoded then decoded"
    );
}

/// A config, as `--config` or the control plane's snapshot gives it.
pub fn config(data: &[u8]) {
    let Ok(config) = serde_json::from_slice::<weft_api::config::ProxyConfig>(data) else {
        return;
    };
    if config.validate().is_err() {
        return;
    }
    let _ = crate::state::Snapshot::build(
        config,
        "default",
        &crate::backends::Registry::default(),
        &crate::authz::RateBuckets::default(),
    );
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    type Target = fn(&[u8]);

    /// The targets, by the name of their corpus directory.
    const TARGETS: &[(&str, Target)] = &[
        ("request_head", super::request_head),
        ("response_head", super::response_head),
        ("chunked", super::chunked),
        ("detection", super::detection),
        ("transport_header", super::transport_header),
        ("config", super::config),
    ];

    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
    }

    #[test]
    fn every_corpus_input_and_regression_passes_its_target() {
        for (name, target) in TARGETS {
            let n = weft_api::fuzzing::replay(&fuzz_dir(), name, *target);
            assert!(n > 0, "no corpus for {name} in {}", fuzz_dir().display());
        }
    }

    /// The oracles can fail: a head httparse refuses but weft took would be caught.
    #[test]
    fn the_targets_catch_what_they_check() {
        super::request_head(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nx: 2\r\n\r\n");
        super::response_head(b"\x00HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        super::chunked(b"\x01\x02\x03\x04hello world");
        super::detection(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let refused = std::panic::catch_unwind(|| {
            // A classifier that changes its mind at the fifth byte.
            let fickle = |buf: &[u8]| {
                use crate::detect::{Protocol, Verdict};
                match buf.len() {
                    0..3 => Verdict::NeedMore,
                    3..5 => Verdict::Is(Protocol::Http1),
                    _ => Verdict::Is(Protocol::Opaque),
                }
            };
            super::detection_holds(fickle, b"GET / HTTP/1.1\r\n")
        });
        assert!(refused.is_err(), "a verdict that changes is caught");
    }
}
