//! HTTP/2 attack classes against both of a sidecar's listeners: rapid reset
//! (CVE-2023-44487), MadeYouReset (CVE-2025-8671: frames that make the server reset its own
//! streams), CONTINUATION floods (the CVE-2024-27316 class), HPACK bombs, SETTINGS and PING
//! floods, and streams beyond the advertised maximum. Each flood ends its connection (a
//! GOAWAY, or a close for SETTINGS and PING floods) and is counted by how; memory stays
//! bounded; the application receives nothing of it; and a legitimate request right after is
//! served. Two stay open, as they should: streams beyond the maximum are refused one by one
//! (those within it are requests like any other), and a peer proxy's connection takes
//! cancellations far beyond a client's, none of which reaches the application.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use weft_tests::h2raw::{
    self, CONTINUATION, DATA, END_HEADERS, END_STREAM, Ended, HEADERS, PING, RST_STREAM, SETTINGS,
    WINDOW_UPDATE, frame, get_block,
};
use weft_tests::mesh::Mesh;
use weft_tests::proxy::Proxy;

use crate::ServerPod;

const AUTHORITY: &str = "reviews.shop:8080";
/// What the legitimate clients ask for meanwhile (the attacks ask for `/`).
const LEGIT_URL: &str = "http://reviews.shop:8080/legit";
/// HTTP/2 error codes.
const PROTOCOL_ERROR: u32 = 0x1;
const COMPRESSION_ERROR: u32 = 0x9;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// An attack: the frames it writes after the preface, in writes of at most 64 KiB.
struct Attack {
    name: &'static str,
    frames: Vec<u8>,
    /// How the sidecar may end the connection.
    ends: &'static [Ended],
    /// How it may end it on a connection from a peer proxy, when that differs.
    from_peer: Option<&'static [Ended]>,
    /// Requests of it the application may receive.
    reach_app: usize,
}

fn attacks() -> Vec<Attack> {
    let block = get_block(AUTHORITY, "/");
    let mut rapid = Vec::new();
    for i in 0..5_000u32 {
        let id = 2 * i + 1;
        rapid.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
        rapid.extend(frame(RST_STREAM, 0, id, &0x8u32.to_be_bytes()));
    }
    // MadeYouReset: valid streams, each then given a WINDOW_UPDATE of 0 (a stream error the
    // server must answer with RST_STREAM): the server resets its own streams, over and over.
    let mut made_you_reset = Vec::new();
    for i in 0..5_000u32 {
        let id = 2 * i + 1;
        made_you_reset.extend(frame(HEADERS, END_HEADERS, id, &block));
        made_you_reset.extend(frame(WINDOW_UPDATE, 0, id, &0u32.to_be_bytes()));
    }
    // A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames
    // of 16 KiB, 64 MiB in all.
    let mut continuation = frame(HEADERS, 0, 1, &block);
    let filler: Vec<u8> = std::iter::repeat_n([0x40u8, 1, b'x', 100], 1)
        .flatten()
        .chain(std::iter::repeat_n(b'y', 100))
        .collect();
    let mut piece = Vec::new();
    while piece.len() + filler.len() <= 16 * 1024 {
        piece.extend_from_slice(&filler);
    }
    for _ in 0..4_096 {
        continuation.extend(frame(CONTINUATION, 0, 1, &piece));
    }
    // An HPACK bomb: one 4 KiB header put in the dynamic table, then referred to 16,000
    // times in a later block (64 MiB decoded from 16 KiB on the wire).
    let mut bomb = block.clone();
    bomb.extend_from_slice(&[0x40, 1, b'b', 0x7f]);
    let value_len = 4_000usize;
    // A 7-bit prefixed integer: 127, then the rest in 7-bit groups.
    let mut rest = value_len - 127;
    while rest >= 128 {
        bomb.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    bomb.push(rest as u8);
    bomb.extend(std::iter::repeat_n(b'z', value_len));
    let mut hpack = frame(HEADERS, END_STREAM | END_HEADERS, 1, &bomb);
    let mut refs = get_block(AUTHORITY, "/");
    // Dynamic table index 62 is the header just added.
    refs.extend(std::iter::repeat_n(0xbeu8, 16_000));
    hpack.extend(frame(HEADERS, 0, 3, &refs[..16_000.min(refs.len())]));
    hpack.extend(frame(
        CONTINUATION,
        END_HEADERS,
        3,
        &refs[16_000.min(refs.len())..],
    ));
    let settings: Vec<u8> = (0..100_000)
        .flat_map(|_| frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]))
        .collect();
    let pings: Vec<u8> = (0..100_000u64)
        .flat_map(|i| frame(PING, 0, 0, &i.to_be_bytes()))
        .collect();
    // 1,000 streams at once, whose bodies never come: beyond the 200 advertised.
    let mut beyond = Vec::new();
    for i in 0..1_000u32 {
        beyond.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &block));
    }
    beyond.extend(frame(DATA, 0, 1, b"x"));
    vec![
        Attack {
            name: "rapid reset",
            frames: rapid,
            ends: &[Ended::GoAway(ENHANCE_YOUR_CALM)],
            // A peer's connection carries many clients' cancellations at once: resets are
            // allowed on it far beyond a client's (the peer cuts its own attackers), and
            // none reaches the application.
            from_peer: Some(&[Ended::GoAway(ENHANCE_YOUR_CALM), Ended::Open]),
            reach_app: 0,
        },
        Attack {
            name: "MadeYouReset",
            frames: made_you_reset,
            ends: &[
                Ended::GoAway(ENHANCE_YOUR_CALM),
                Ended::GoAway(PROTOCOL_ERROR),
            ],
            from_peer: None,
            reach_app: 0,
        },
        Attack {
            name: "CONTINUATION flood",
            frames: continuation,
            ends: &[
                Ended::GoAway(ENHANCE_YOUR_CALM),
                Ended::GoAway(PROTOCOL_ERROR),
                Ended::GoAway(COMPRESSION_ERROR),
                Ended::Closed,
            ],
            from_peer: None,
            reach_app: 0,
        },
        Attack {
            name: "HPACK bomb",
            frames: hpack,
            ends: &[
                Ended::GoAway(ENHANCE_YOUR_CALM),
                Ended::GoAway(PROTOCOL_ERROR),
                Ended::GoAway(COMPRESSION_ERROR),
                Ended::Closed,
            ],
            from_peer: None,
            reach_app: 0,
        },
        Attack {
            name: "SETTINGS flood",
            frames: settings,
            ends: &[Ended::GoAway(ENHANCE_YOUR_CALM), Ended::Closed],
            from_peer: None,
            reach_app: 0,
        },
        Attack {
            name: "PING flood",
            frames: pings,
            ends: &[Ended::GoAway(ENHANCE_YOUR_CALM), Ended::Closed],
            from_peer: None,
            reach_app: 0,
        },
        Attack {
            name: "streams beyond the maximum",
            frames: beyond,
            ends: &[Ended::Open, Ended::GoAway(ENHANCE_YOUR_CALM)],
            from_peer: None,
            // Those within the advertised maximum are requests like any other; the rest are
            // refused.
            reach_app: 200,
        },
    ]
}

/// Runs `attack` on `addr` (`prefix`, a transport header, first), and returns how the
/// sidecar ended the connection.
async fn run(addr: SocketAddr, prefix: &[u8], attack: &Attack) -> Ended {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rx, mut tx) = tcp.into_split();
    let mut start = prefix.to_vec();
    start.extend(h2raw::preface());
    let frames = attack.frames.clone();
    let writer = tokio::spawn(async move {
        if tx.write_all(&start).await.is_err() {
            return;
        }
        for chunk in frames.chunks(64 * 1024) {
            if tx.write_all(chunk).await.is_err() {
                return;
            }
        }
        // Held open: the sidecar must end it.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let ended = h2raw::ending(&mut rx, Duration::from_secs(5)).await;
    writer.abort();
    ended
}

/// The transport header a peer proxy sends first: application port 8080, HTTP/2.
fn transport_header() -> Vec<u8> {
    let mut h = b"\0weft\x01\x00\x03".to_vec();
    h.extend_from_slice(&8080u16.to_be_bytes());
    h.push(2);
    h
}

/// The most memory a sidecar may hold while attacked (debug build; it idles near 15 MB).
/// A decoded HPACK bomb or a buffered CONTINUATION flood would take 64 MiB.
const MAX_PEAK_KIB: u64 = 48 * 1024;

#[tokio::test]
async fn http2_attacks_end_only_the_attacking_connection_on_both_listeners() {
    let server = ServerPod::start("reviews").await;
    let config = Mesh::new("client")
        .service("shop", "reviews", None, 8080, &[server.endpoint()])
        .build();
    let client = Proxy::start(weft_tests::pods::pod_ip(), &config, &[]).await;
    let inbound = SocketAddr::new(server.proxy.pod_ip, 15143);
    // Connections ended for abuse on each listener, by how: floods, then protocol errors.
    let mut expected = [(0.0, 0.0), (0.0, 0.0)];
    for attack in attacks() {
        for (side, listener, addr, prefix, proxy) in [
            (0, "outbound", client.outbound, Vec::new(), &client),
            (1, "inbound", inbound, transport_header(), &server.proxy),
        ] {
            // Two legitimate clients through the client's sidecar all along.
            let legit = weft_tests::legit::start(client.outbound, LEGIT_URL, 2);
            let before = server.app.requests();
            let started = tokio::time::Instant::now();
            let ended = run(addr, &prefix, &attack).await;
            // A second of legitimate traffic at least, however soon the attack was ended.
            tokio::time::sleep_until(started + Duration::from_secs(1)).await;
            let mut served = legit.stop().await;
            let reached = server.app.requests() - before - served.ok;
            let (rss, peak) = proxy.memory_kib();
            eprintln!(
                "{:<28} {listener:<8} ended {ended:?}; the app got {reached} of its requests; RSS {rss} KiB, peak {peak} KiB; legitimate: {}",
                attack.name,
                served.summary(),
            );
            assert!(
                served.failed.is_empty() && served.ok > 0,
                "{} on {listener}: legitimate clients got {}",
                attack.name,
                served.summary()
            );
            let allowed = match (side, attack.from_peer) {
                (1, Some(ends)) => ends,
                _ => attack.ends,
            };
            assert!(
                allowed.contains(&ended),
                "{} on {listener}: ended {ended:?}, not one of {allowed:?}",
                attack.name
            );
            assert!(
                reached <= attack.reach_app,
                "{} on {listener}: the application got {reached} of its requests",
                attack.name
            );
            assert!(
                peak < MAX_PEAK_KIB,
                "{} on {listener}: peak RSS {peak} KiB",
                attack.name
            );
            match ended {
                Ended::GoAway(ENHANCE_YOUR_CALM) | Ended::Closed => expected[side].0 += 1.0,
                Ended::GoAway(_) => expected[side].1 += 1.0,
                Ended::Open => {}
            }
            // The sidecar is up and serves a legitimate request at once.
            let resp = weft_tests::client::get(client.outbound, &format!("http://{AUTHORITY}/"))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{} on {listener}", attack.name);
        }
    }
    for (side, direction, proxy) in [(0, "outbound", &client), (1, "inbound", &server.proxy)] {
        let floods = proxy
            .metric(&format!(
                r#"weft_proxy_errors_total{{direction="{direction}",reason="http2-flood"}}"#
            ))
            .await;
        let violations = proxy
            .metric(&format!(
                r#"weft_proxy_errors_total{{direction="{direction}",reason="http2-protocol-error"}}"#
            ))
            .await;
        assert_eq!(
            (floods, violations),
            expected[side],
            "{direction}: connections counted as floods and as protocol errors"
        );
    }
}
