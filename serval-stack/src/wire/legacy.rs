//! The legacy-address profile: an IP address and TCP port embedded in a ServiceID.
//!
//! This is how a translator names "the legacy server at 10.0.0.5:80" as a service, so a
//! far-side translator can re-originate the flow without any lookup (the original's
//! cross-translate mode, `SERVAL-ORIGINAL.md` §1.1, §7.2).
//!
//! IPv4 (the original layout, byte for byte):
//!
//! ```text
//! bytes  0..4   tag (u32 big-endian; the original used its listen port, default 8080 = 00001f90)
//! bytes  4..26  zero
//! bytes 26..28  TCP port (big-endian)
//! bytes 28..32  IPv4 address
//! ```
//!
//! IPv6 (ours; the original had none):
//!
//! ```text
//! bytes  0..4   tag
//! byte   4      0x06 (family marker; 0 in the IPv4 layout)
//! bytes  5..14  zero
//! bytes 14..16  TCP port (big-endian)
//! bytes 16..32  IPv6 address
//! ```
//!
//! So one tag's IPv4 ids share a 128-bit prefix (the original far translator listened on
//! exactly that), its IPv6 ids a 112-bit prefix, and both a 32-bit prefix. IPv6 flow labels
//! and scope ids are not carried: a scoped (link-local) destination cannot be named this way.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{SERVICE_ID_LEN, ServiceId, ServicePrefix};

/// The tag the original used for its AF_INET hijack and as the translator default (8080).
pub const DEFAULT_LEGACY_TAG: u32 = 8080;

const V6_MARKER: u8 = 0x06;
/// Prefix length shared by every IPv4 id of one tag.
pub const V4_PREFIX_BITS: u16 = 128;
/// Prefix length shared by every IPv6 id of one tag.
pub const V6_PREFIX_BITS: u16 = 112;
/// Prefix length shared by every id of one tag, either family.
pub const TAG_PREFIX_BITS: u16 = 32;

/// A legacy transport address named by a ServiceID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LegacyAddr {
    /// Free 32-bit namespace tag (bytes 0–3).
    pub tag: u32,
    /// The embedded address and port.
    pub addr: SocketAddr,
}

impl LegacyAddr {
    /// Embeds `addr` under `tag`.
    pub fn new(tag: u32, addr: SocketAddr) -> Self {
        Self { tag, addr }
    }

    /// The ServiceID carrying this address (layouts in the module doc).
    pub fn to_service_id(&self) -> ServiceId {
        let mut b = [0u8; SERVICE_ID_LEN];
        b[..4].copy_from_slice(&self.tag.to_be_bytes());
        let port = self.addr.port().to_be_bytes();
        match self.addr.ip() {
            IpAddr::V4(ip) => {
                b[26..28].copy_from_slice(&port);
                b[28..32].copy_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                b[4] = V6_MARKER;
                b[14..16].copy_from_slice(&port);
                b[16..32].copy_from_slice(&ip.octets());
            }
        }
        ServiceId::from_bytes(b)
    }

    /// Reads the address back, or `None` when `id` does not follow either layout (any
    /// reserved byte non-zero). Never panics.
    pub fn from_service_id(id: &ServiceId) -> Option<Self> {
        let b = id.as_bytes();
        let tag = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let port_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        if b[4..26].iter().all(|&x| x == 0) {
            let ip = Ipv4Addr::new(b[28], b[29], b[30], b[31]);
            return Some(Self::new(tag, SocketAddr::new(ip.into(), port_at(26))));
        }
        if b[4] == V6_MARKER && b[5..14].iter().all(|&x| x == 0) {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[16..32]);
            return Some(Self::new(
                tag,
                SocketAddr::new(Ipv6Addr::from(o).into(), port_at(14)),
            ));
        }
        None
    }

    /// The prefix covering every IPv4 (`v6 == false`) or IPv6 id of `tag`.
    pub fn family_prefix(tag: u32, v6: bool) -> ServicePrefix {
        let mut b = [0u8; SERVICE_ID_LEN];
        b[..4].copy_from_slice(&tag.to_be_bytes());
        let len = if v6 {
            b[4] = V6_MARKER;
            V6_PREFIX_BITS
        } else {
            V4_PREFIX_BITS
        };
        ServicePrefix::new(ServiceId::from_bytes(b), len).expect("constant lengths are <= 256")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ipv4_matches_the_original_layout() {
        let l = LegacyAddr::new(DEFAULT_LEGACY_TAG, "10.0.0.5:80".parse().unwrap());
        let id = l.to_service_id();
        assert_eq!(
            id.to_string(),
            "00001f90000000000000000000000000000000000000000000000050 0a000005".replace(' ', "")
        );
        assert_eq!(LegacyAddr::from_service_id(&id), Some(l));
        assert!(LegacyAddr::family_prefix(DEFAULT_LEGACY_TAG, false).contains(&id));
        assert!(!LegacyAddr::family_prefix(DEFAULT_LEGACY_TAG, true).contains(&id));
    }

    #[test]
    fn ipv6_layout() {
        let l = LegacyAddr::new(7, "[2001:db8::1]:443".parse().unwrap());
        let id = l.to_service_id();
        assert_eq!(
            id.to_string(),
            "0000000706000000000000000000 01bb 20010db8000000000000000000000001".replace(' ', "")
        );
        assert_eq!(LegacyAddr::from_service_id(&id), Some(l));
        assert!(LegacyAddr::family_prefix(7, true).contains(&id));
        assert!(!LegacyAddr::family_prefix(7, false).contains(&id));
    }

    #[test]
    fn other_ids_are_not_legacy() {
        assert_eq!(
            LegacyAddr::from_service_id(&ServiceId::from_bytes([0xff; 32])),
            None
        );
    }

    proptest! {
        #[test]
        fn roundtrip(tag in any::<u32>(), v4 in any::<[u8; 4]>(), v6 in any::<[u8; 16]>(), port in any::<u16>(), six in any::<bool>()) {
            let ip: IpAddr = if six { Ipv6Addr::from(v6).into() } else { Ipv4Addr::from(v4).into() };
            let l = LegacyAddr::new(tag, SocketAddr::new(ip, port));
            prop_assert_eq!(LegacyAddr::from_service_id(&l.to_service_id()), Some(l));
        }

        #[test]
        fn decode_never_panics(b in any::<[u8; 32]>()) {
            let _ = LegacyAddr::from_service_id(&ServiceId::from_bytes(b));
        }
    }
}
