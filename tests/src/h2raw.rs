//! HTTP/2 written frame by frame, as an attacker writes it: no library between the test and
//! the wire, so that a test can send what no well-behaved client would (floods, resets,
//! endless header blocks).

use std::time::Duration;

use tokio::io::AsyncReadExt;

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// An HTTP/2 frame: a 9-byte header, then the payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The client preface and an empty SETTINGS frame.
pub fn preface() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

/// An HPACK string literal, without Huffman coding (lengths up to 126).
fn string(out: &mut Vec<u8>, s: &[u8]) {
    assert!(s.len() < 127, "a short string");
    out.push(s.len() as u8);
    out.extend_from_slice(s);
}

/// The header block of `GET http://<authority><path>`: `:method GET` and `:scheme http`
/// indexed, `:path` and `:authority` literal with indexed names, never Huffman coded.
pub fn get_block(authority: &str, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04];
    string(&mut block, path.as_bytes());
    block.push(0x01);
    string(&mut block, authority.as_bytes());
    block
}

/// How an HTTP/2 connection a test opened ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The peer sent GOAWAY with this error code, then closed.
    GoAway(u32),
    /// The peer closed (or reset) the connection without a GOAWAY.
    Closed,
    /// Still open after the wait.
    Open,
}

/// Reads frames from `tcp` until the peer ends the connection or `wait` passes with nothing
/// more to read; what the peer said last.
pub async fn ending(tcp: &mut (impl tokio::io::AsyncRead + Unpin), wait: Duration) -> Ended {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut goaway = None;
    loop {
        let n = match tokio::time::timeout(wait, tcp.read(&mut chunk)).await {
            Err(_) => return goaway.map_or(Ended::Open, Ended::GoAway),
            Ok(Err(_)) | Ok(Ok(0)) => return goaway.map_or(Ended::Closed, Ended::GoAway),
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == GOAWAY && len >= 8 {
                goaway = Some(u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]));
            }
            buf.drain(..9 + len);
        }
    }
}
