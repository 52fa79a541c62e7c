//! The transport header: what a proxy tells a peer proxy before the application's bytes.
//!
//! A proxy reaches a meshed endpoint by connecting to the peer proxy's inbound port (15143),
//! not to the application's port, so it states which application port it wants and what
//! protocol follows. This is the "connection metadata" of SPEC "Local mode"; it works the
//! same with and without iptables, and (with the identity issue) inside mutual TLS.
//!
//! Wire format, all integers big-endian:
//!
//! ```text
//! magic "\0weft" (5) | version 1 (1) | payload length (2) | payload
//! payload v1: target port (2) | protocol (1) | ignored extension bytes
//! ```
//!
//! The length prefix lets later versions append fields that older proxies skip.

use bytes::{BufMut, BytesMut};

pub const MAGIC: &[u8] = b"\0weft";
const VERSION: u8 = 1;
const FIXED: usize = MAGIC.len() + 1 + 2;
const MAX_PAYLOAD: usize = 1024;

/// What follows the header on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Opaque,
    Http1,
    Http2,
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a weft transport header")]
    BadMagic,
    #[error("unsupported transport header version {0}")]
    Version(u8),
    #[error("transport header payload of {0} bytes is invalid")]
    Length(usize),
    #[error("unknown protocol {0} in transport header")]
    Protocol(u8),
    #[error("target port 0 in transport header")]
    Port,
}

impl Header {
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(FIXED + 3);
        out.put_slice(MAGIC);
        out.put_u8(VERSION);
        out.put_u16(3);
        out.put_u16(self.port);
        out.put_u8(match self.protocol {
            Protocol::Opaque => 0,
            Protocol::Http1 => 1,
            Protocol::Http2 => 2,
        });
    }

    /// Decodes a header from the start of `buf`: `Ok(None)` when more bytes are needed,
    /// otherwise the header and the number of bytes it took.
    pub fn decode(buf: &[u8]) -> Result<Option<(Header, usize)>, DecodeError> {
        let n = buf.len().min(MAGIC.len());
        if buf[..n] != MAGIC[..n] {
            return Err(DecodeError::BadMagic);
        }
        if buf.len() < FIXED {
            return Ok(None);
        }
        if buf[5] != VERSION {
            return Err(DecodeError::Version(buf[5]));
        }
        let len = usize::from(u16::from_be_bytes([buf[6], buf[7]]));
        if !(3..=MAX_PAYLOAD).contains(&len) {
            return Err(DecodeError::Length(len));
        }
        let Some(payload) = buf.get(FIXED..FIXED + len) else {
            return Ok(None);
        };
        let port = u16::from_be_bytes([payload[0], payload[1]]);
        if port == 0 {
            return Err(DecodeError::Port);
        }
        let protocol = match payload[2] {
            0 => Protocol::Opaque,
            1 => Protocol::Http1,
            2 => Protocol::Http2,
            other => return Err(DecodeError::Protocol(other)),
        };
        Ok(Some((Header { port, protocol }, FIXED + len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_its_length() {
        for protocol in [Protocol::Opaque, Protocol::Http1, Protocol::Http2] {
            let header = Header {
                port: 9080,
                protocol,
            };
            let mut buf = BytesMut::new();
            header.encode(&mut buf);
            buf.put_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(Header::decode(&buf), Ok(Some((header, 11))));
            for cut in 0..11 {
                assert_eq!(Header::decode(&buf[..cut]), Ok(None), "cut at {cut}");
            }
        }
    }

    #[test]
    fn skips_extension_bytes_of_later_versions() {
        let buf = b"\0weft\x01\x00\x05\x23\x82\x02\xaa\xbbrest";
        let (header, used) = Header::decode(buf).unwrap().unwrap();
        assert_eq!(
            header,
            Header {
                port: 9090,
                protocol: Protocol::Http2
            }
        );
        assert_eq!(&buf[used..], b"rest");
    }

    #[test]
    fn refuses_malformed_headers() {
        let cases: &[(&[u8], DecodeError)] = &[
            (b"GET /", DecodeError::BadMagic),
            (b"\0weft\x02\x00\x03\x00\x50\x00", DecodeError::Version(2)),
            (b"\0weft\x01\x00\x02\x00\x50", DecodeError::Length(2)),
            (b"\0weft\x01\xff\xff", DecodeError::Length(65535)),
            (b"\0weft\x01\x00\x03\x00\x00\x00", DecodeError::Port),
            (b"\0weft\x01\x00\x03\x00\x50\x09", DecodeError::Protocol(9)),
        ];
        for (input, want) in cases {
            assert_eq!(Header::decode(input), Err(want.clone()));
        }
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = Header::decode(&bytes);
        }
    }
}
