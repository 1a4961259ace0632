//! The socket-address record shared by the SOURCE extension and the control messages.
//!
//! Both forms start with the same four bytes: family (0, 4 or 6), reserved, port
//! (big-endian). The *compact* form (SOURCE) is followed by exactly the address (4 or 16
//! bytes, so 8 or 20 bytes in all); the *fixed* form (control messages) always reserves 16
//! address bytes (20 bytes in all), an IPv4 address sitting in the first four. Both sizes
//! are multiples of four, which keeps the headers that carry them 4-byte aligned.
//!
//! IPv6 flow labels and scope ids are not carried; addresses are normalised (see
//! [`normalize`]) so that what is emitted is exactly what is parsed back.

use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use super::{Error, Result};

/// Family byte: no address (fixed form only; "use the observed UDP source").
pub(crate) const FAMILY_NONE: u8 = 0;
/// Family byte: IPv4.
pub(crate) const FAMILY_V4: u8 = 4;
/// Family byte: IPv6.
pub(crate) const FAMILY_V6: u8 = 6;

/// Length of a record in the fixed form.
pub(crate) const FIXED_LEN: usize = 20;
/// Length of a compact IPv4 record.
pub(crate) const COMPACT_V4_LEN: usize = 8;
/// Length of a compact IPv6 record.
pub(crate) const COMPACT_V6_LEN: usize = 20;

/// `addr` without what the wire does not carry (IPv6 flow label and scope id).
pub(crate) fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => addr,
        SocketAddr::V6(a) => SocketAddr::V6(SocketAddrV6::new(*a.ip(), a.port(), 0, 0)),
    }
}

/// Length of `addr` in the compact form.
pub(crate) fn compact_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => COMPACT_V4_LEN,
        SocketAddr::V6(_) => COMPACT_V6_LEN,
    }
}

/// Writes `addr` in the compact form at the start of `buf`; returns the bytes written.
///
/// # Panics
/// If `buf` is shorter than [`compact_len`] (a local sizing bug, never input-driven).
pub(crate) fn write_compact(buf: &mut [u8], addr: &SocketAddr) -> usize {
    let len = compact_len(addr);
    write_prefix(buf, Some(addr));
    match addr {
        SocketAddr::V4(a) => buf[4..8].copy_from_slice(&a.ip().octets()),
        SocketAddr::V6(a) => buf[4..20].copy_from_slice(&a.ip().octets()),
    }
    len
}

/// Reads one compact record from the start of `buf`: the address and its length.
pub(crate) fn read_compact(buf: &[u8]) -> Result<(SocketAddr, usize)> {
    let (family, port) = read_prefix(buf)?;
    match family {
        FAMILY_V4 => Ok((v4(buf, port)?, COMPACT_V4_LEN)),
        FAMILY_V6 => Ok((v6(buf, port)?, COMPACT_V6_LEN)),
        FAMILY_NONE => Err(Error::Malformed),
        _ => Err(Error::Unsupported),
    }
}

/// Writes `addr` (`None` = family 0, all zero) in the fixed form at the start of `buf`.
///
/// # Panics
/// If `buf` is shorter than [`FIXED_LEN`].
pub(crate) fn write_fixed(buf: &mut [u8], addr: Option<&SocketAddr>) {
    let rec = &mut buf[..FIXED_LEN];
    rec.fill(0);
    write_prefix(rec, addr);
    match addr {
        Some(SocketAddr::V4(a)) => rec[4..8].copy_from_slice(&a.ip().octets()),
        Some(SocketAddr::V6(a)) => rec[4..20].copy_from_slice(&a.ip().octets()),
        None => {}
    }
}

/// Reads a fixed record from the start of `buf`. Bytes that the family does not use are
/// ignored (they are zero when we emit).
pub(crate) fn read_fixed(buf: &[u8]) -> Result<Option<SocketAddr>> {
    let rec = buf.get(..FIXED_LEN).ok_or(Error::Truncated)?;
    let (family, port) = read_prefix(rec)?;
    match family {
        FAMILY_NONE => Ok(None),
        FAMILY_V4 => v4(rec, port).map(Some),
        FAMILY_V6 => v6(rec, port).map(Some),
        _ => Err(Error::Unsupported),
    }
}

fn write_prefix(buf: &mut [u8], addr: Option<&SocketAddr>) {
    let (family, port) = match addr {
        None => (FAMILY_NONE, 0),
        Some(SocketAddr::V4(a)) => (FAMILY_V4, a.port()),
        Some(SocketAddr::V6(a)) => (FAMILY_V6, a.port()),
    };
    buf[0] = family;
    buf[1] = 0;
    buf[2..4].copy_from_slice(&port.to_be_bytes());
}

fn read_prefix(buf: &[u8]) -> Result<(u8, u16)> {
    match *buf {
        [family, _reserved, p0, p1, ..] => Ok((family, u16::from_be_bytes([p0, p1]))),
        _ => Err(Error::Truncated),
    }
}

fn v4(rec: &[u8], port: u16) -> Result<SocketAddr> {
    let o: [u8; 4] = rec
        .get(4..8)
        .and_then(|s| s.try_into().ok())
        .ok_or(Error::Truncated)?;
    Ok(SocketAddr::new(Ipv4Addr::from(o).into(), port))
}

fn v6(rec: &[u8], port: u16) -> Result<SocketAddr> {
    let o: [u8; 16] = rec
        .get(4..20)
        .and_then(|s| s.try_into().ok())
        .ok_or(Error::Truncated)?;
    Ok(SocketAddr::new(Ipv6Addr::from(o).into(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compact_and_fixed_layouts() {
        let a: SocketAddr = "192.0.2.1:54325".parse().unwrap();
        let mut buf = [0xaa; 20];
        assert_eq!(write_compact(&mut buf, &a), 8);
        assert_eq!(buf[..8], [4, 0, 0xd4, 0x35, 192, 0, 2, 1]);
        assert_eq!(read_compact(&buf).unwrap(), (a, 8));
        write_fixed(&mut buf, Some(&a));
        assert_eq!(buf[..8], [4, 0, 0xd4, 0x35, 192, 0, 2, 1]);
        assert!(buf[8..].iter().all(|&b| b == 0));
        assert_eq!(read_fixed(&buf).unwrap(), Some(a));
        write_fixed(&mut buf, None);
        assert_eq!(buf, [0; 20]);
        assert_eq!(read_fixed(&buf).unwrap(), None);
    }

    #[test]
    fn bad_records() {
        assert_eq!(read_compact(&[4, 0, 0]), Err(Error::Truncated));
        assert_eq!(read_compact(&[4, 0, 0, 1, 1, 2, 3]), Err(Error::Truncated));
        assert_eq!(
            read_compact(&[0, 0, 0, 1, 1, 2, 3, 4]),
            Err(Error::Malformed)
        );
        assert_eq!(
            read_compact(&[5, 0, 0, 1, 1, 2, 3, 4]),
            Err(Error::Unsupported)
        );
        assert_eq!(read_fixed(&[6; 19]), Err(Error::Truncated));
    }

    proptest! {
        #[test]
        fn roundtrip(a in any::<SocketAddr>()) {
            let a = normalize(a);
            let mut buf = [0u8; 20];
            let n = write_compact(&mut buf, &a);
            prop_assert_eq!(read_compact(&buf).unwrap(), (a, n));
            write_fixed(&mut buf, Some(&a));
            prop_assert_eq!(read_fixed(&buf).unwrap(), Some(a));
        }

        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..24)) {
            let _ = read_compact(&b);
            let _ = read_fixed(&b);
        }
    }
}
