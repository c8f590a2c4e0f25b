//! PROXY protocol version 2 (HAProxy's binary header), so that behind a TCP load balancer
//! lockout, audit and login limits see the vendor's real address.
//!
//! Only connections from the configured proxies (`[ssh] proxy_from`, `[rdp] proxy_from`) are read for a header, and
//! from them it is required: a proxy's connection without one is refused, so nobody can pass as
//! the balancer's address. A `LOCAL` header (the balancer's own health check) keeps the TCP
//! peer. Connections from anywhere else are taken as direct. Knows nothing of SSH.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The header's first 12 bytes.
pub const SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
/// Longest address block read (TLVs included); anything longer is refused.
const MAX_BLOCK: usize = 512;

/// Whether `peer` is one of the proxies (exact addresses or `ADDR/BITS` networks).
pub fn is_proxy(peer: IpAddr, proxies: &[String]) -> bool {
    proxies.iter().any(|p| matches_net(peer, p))
}

fn matches_net(ip: IpAddr, spec: &str) -> bool {
    let (addr, bits) = match spec.split_once('/') {
        Some((a, b)) => (a, b.parse::<u32>().ok()),
        None => (spec, None),
    };
    let Ok(net) = addr.trim().parse::<IpAddr>() else { return false };
    let ip = match (ip, net) {
        (IpAddr::V6(v6), IpAddr::V4(_)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        _ => ip,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let bits = bits.unwrap_or(32).min(32);
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let bits = bits.unwrap_or(128).min(128);
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Checks `[SECTION] proxy_from` entries; one line naming the bad one.
pub fn check_config(section: &str, proxies: &[String]) -> anyhow::Result<()> {
    for p in proxies {
        let (addr, bits) = match p.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (p.as_str(), None),
        };
        let ip: IpAddr =
            addr.trim().parse().with_context(|| format!("[{section}] proxy_from: {p:?} is not an address"))?;
        if let Some(b) = bits {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            match b.parse::<u32>() {
                Ok(n) if n <= max => {}
                _ => bail!("[{section}] proxy_from: {p:?} has a bad prefix length"),
            }
        }
    }
    Ok(())
}

/// Reads a v2 header from a proxy's connection (within `timeout`) and returns the client's
/// address it names (`peer` itself for `LOCAL`). Reads exactly the header's bytes.
pub async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    peer: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<SocketAddr> {
    tokio::time::timeout(timeout, read_inner(r, peer)).await.context("no PROXY header in time")?
}

async fn read_inner<R: AsyncRead + Unpin>(r: &mut R, peer: SocketAddr) -> anyhow::Result<SocketAddr> {
    let mut head = [0u8; 16];
    r.read_exact(&mut head).await.context("connection closed before its PROXY header")?;
    if head[..12] != SIGNATURE {
        bail!("not a PROXY protocol v2 header");
    }
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    if len > MAX_BLOCK {
        bail!("PROXY header too long ({len} bytes)");
    }
    let mut block = vec![0u8; len];
    r.read_exact(&mut block).await.context("connection closed inside its PROXY header")?;
    parse(&head, &block, peer)
}

/// Parses a header: `head` is its fixed 16 bytes, `block` the address block.
pub fn parse(head: &[u8; 16], block: &[u8], peer: SocketAddr) -> anyhow::Result<SocketAddr> {
    if head[..12] != SIGNATURE {
        bail!("not a PROXY protocol v2 header");
    }
    let (version, command) = (head[12] >> 4, head[12] & 0x0F);
    if version != 2 {
        bail!("PROXY protocol version {version} is not supported");
    }
    match command {
        0 => return Ok(peer), // LOCAL: the proxy's own connection
        1 => {}
        c => bail!("unknown PROXY command {c}"),
    }
    let (family, transport) = (head[13] >> 4, head[13] & 0x0F);
    if transport != 1 {
        bail!("PROXY header for a transport other than TCP");
    }
    match family {
        1 if block.len() >= 12 => {
            let ip = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            let port = u16::from_be_bytes([block[8], block[9]]);
            Ok(SocketAddr::new(IpAddr::V4(ip), port))
        }
        2 if block.len() >= 36 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&block[..16]);
            let port = u16::from_be_bytes([block[32], block[33]]);
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port))
        }
        0 => Ok(peer), // UNSPEC
        f => bail!("PROXY header with address family {f} and {} address bytes", block.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_v4(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.extend([0x21, 0x11, 0, 12]);
        h.extend(src);
        h.extend([10, 0, 0, 1]);
        h.extend(sport.to_be_bytes());
        h.extend(22u16.to_be_bytes());
        h
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:40000".parse().expect("addr")
    }

    #[tokio::test]
    async fn reads_exactly_the_header() {
        let mut bytes = header_v4([203, 0, 113, 7], 5555);
        bytes.extend(b"SSH-2.0-OpenSSH_9.2\r\n");
        let mut r = &bytes[..];
        let src = read_header(&mut r, peer(), Duration::from_secs(1)).await.expect("header");
        assert_eq!(src, "203.0.113.7:5555".parse::<SocketAddr>().expect("addr"));
        assert_eq!(r, b"SSH-2.0-OpenSSH_9.2\r\n", "the client's bytes stay unread");
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_header() {
        let bytes = b"SSH-2.0-OpenSSH_9.2\r\n and more bytes".to_vec();
        let mut r = &bytes[..];
        let e = read_header(&mut r, peer(), Duration::from_secs(1)).await.expect_err("no header");
        assert!(e.to_string().contains("not a PROXY protocol v2 header"), "{e}");
        let mut long = SIGNATURE.to_vec();
        long.extend([0x21, 0x11, 0xFF, 0xFF]);
        let mut r = &long[..];
        let e = read_header(&mut r, peer(), Duration::from_secs(1)).await.expect_err("too long");
        assert!(e.to_string().contains("too long"), "{e}");
        let short = header_v4([1, 2, 3, 4], 1);
        let mut r = &short[..10];
        assert!(read_header(&mut r, peer(), Duration::from_secs(1)).await.is_err());
    }

    #[test]
    fn local_and_v6() {
        let mut head = [0u8; 16];
        head[..12].copy_from_slice(&SIGNATURE);
        head[12] = 0x20;
        assert_eq!(parse(&head, &[], peer()).expect("local"), peer());
        head[12] = 0x21;
        head[13] = 0x21;
        let mut block = vec![0u8; 36];
        block[15] = 1;
        block[32..34].copy_from_slice(&2222u16.to_be_bytes());
        assert_eq!(parse(&head, &block, peer()).expect("v6"), "[::1]:2222".parse::<SocketAddr>().expect("a"));
    }

    #[test]
    fn proxies_match_addresses_and_networks() {
        let list = vec!["10.1.0.0/16".to_string(), "127.0.0.1".to_string(), "fd00::/8".to_string()];
        assert!(is_proxy("10.1.200.3".parse().expect("ip"), &list));
        assert!(!is_proxy("10.2.0.1".parse().expect("ip"), &list));
        assert!(is_proxy("127.0.0.1".parse().expect("ip"), &list));
        assert!(is_proxy("::ffff:127.0.0.1".parse().expect("ip"), &list));
        assert!(is_proxy("fd12::1".parse().expect("ip"), &list));
        assert!(check_config("ssh", &list).is_ok());
        assert!(check_config("ssh", &["10.0.0.0/33".to_string()]).is_err());
        let e = check_config("rdp", &["gateway".to_string()]).expect_err("not an address");
        assert_eq!(e.to_string(), "[rdp] proxy_from: \"gateway\" is not an address");
    }
}
