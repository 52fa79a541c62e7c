//! The original destination of a connection that iptables redirected to us.

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Where the client was connecting when iptables redirected it here (`SO_ORIGINAL_DST`), or
/// `None` when the connection was not redirected: then the kernel reports our own address,
/// or nothing when conntrack is not loaded.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let sock = socket2::SockRef::from(stream);
    let v4 = match local {
        SocketAddr::V4(_) => true,
        // A v4 client on a dual-stack socket is tracked by IPv4 conntrack.
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
    };
    let found = if v4 {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    let addr = found.ok()?.as_socket()?;
    let local = canonical(local);
    let addr = canonical(addr);
    (addr != local).then_some(addr)
}

/// An IPv4 peer of a dual-stack socket shows as `::ffff:a.b.c.d`; this gives `a.b.c.d`.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::new(ip.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}
