//! Loopback addresses for pods. Each test process takes its own `127.N.0.0/16` (from its
//! process id) and hands out addresses in it, so concurrent tests and test processes never
//! bind the same address and port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(1);

/// A fresh loopback address for a pod.
pub fn pod_ip() -> IpAddr {
    let second = 20 + (std::process::id() % 220) as u8;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Skip .0 and .255 in the last octet.
    let third = (n / 254) as u8;
    let fourth = (n % 254) as u8 + 1;
    IpAddr::V4(Ipv4Addr::new(127, second, third, fourth))
}

static SUBNETS: AtomicU32 = AtomicU32::new(0);

/// A fresh loopback /24 of this process's own, for a program that places pods in a subnet
/// (`weft demo --subnet`): taken from the top of the /16, where [`pod_ip`] never gets to.
pub fn subnet() -> Ipv4Addr {
    let second = 20 + (std::process::id() % 220) as u8;
    let n = SUBNETS.fetch_add(1, Ordering::Relaxed);
    assert!(n < 50, "at most 50 subnets a process");
    Ipv4Addr::new(127, second, 254 - n as u8, 0)
}

/// `ip:port`.
pub fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_are_unique_loopback() {
        let a = super::pod_ip();
        let b = super::pod_ip();
        assert_ne!(a, b);
        assert!(a.is_loopback() && b.is_loopback());
    }
}
