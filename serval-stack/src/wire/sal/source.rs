//! The SOURCE extension (type 4): the path a forwarded SYN took, as socket addresses.
//!
//! ```text
//! 0  type 0x40 | 1 length (4 + records) | 2..4 reserved
//! 4  records, each: family (4|6) | reserved | port (u16) | address (4 or 16 bytes)
//! ```
//!
//! Differences from the original (`SERVAL-ORIGINAL.md` §2.6), which carried bare IPv4
//! addresses: records are socket addresses so that IPv6 and NAT-mapped UDP ports fit (we run
//! over UDP only), and the count is bounded by [`MAX_SOURCE_RECORDS`] (the original's bound,
//! 20, does not fit a length byte with IPv6 records). Kept: record 0 is the original sender,
//! record 1 the address it sent to, then one record per further forwarder, the server's own
//! address last in a SYN-ACK; fewer than two records is an error.

use core::fmt;
use core::net::SocketAddr;

use super::ext::{BODY_OFFSET, ExtType};
use crate::wire::{Error, Result, sockaddr};

/// Most records a SOURCE extension holds. Twelve IPv6 records (4 + 12 × 20 = 244 bytes) still
/// fit the extension's length byte, so any mix of families up to this count can be emitted.
pub const MAX_SOURCE_RECORDS: usize = 12;
/// Fewest records a SOURCE extension holds (sender and first forwarder).
pub const MIN_SOURCE_RECORDS: usize = 2;

const UNSPECIFIED: SocketAddr = SocketAddr::V4(core::net::SocketAddrV4::new(
    core::net::Ipv4Addr::UNSPECIFIED,
    0,
));

/// A SOURCE extension: 2 to [`MAX_SOURCE_RECORDS`] socket addresses, stored inline.
///
/// The bounds hold by construction, so every value can be emitted and parses back equal.
/// IPv6 flow labels and scope ids are dropped on insertion (the wire does not carry them).
#[derive(Clone, Copy)]
pub struct SourceRepr {
    len: u8,
    addrs: [SocketAddr; MAX_SOURCE_RECORDS],
}

/// The SOURCE extension already holds [`MAX_SOURCE_RECORDS`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("SOURCE extension full ({MAX_SOURCE_RECORDS} records)")]
pub struct SourceFull;

impl SourceRepr {
    /// A path of two records: the original sender and the address it sent to.
    pub fn new(sender: SocketAddr, first_hop: SocketAddr) -> Self {
        let mut addrs = [UNSPECIFIED; MAX_SOURCE_RECORDS];
        addrs[0] = sockaddr::normalize(sender);
        addrs[1] = sockaddr::normalize(first_hop);
        Self { len: 2, addrs }
    }

    /// A path from a slice; `None` unless it holds 2 to [`MAX_SOURCE_RECORDS`] addresses.
    pub fn from_slice(addrs: &[SocketAddr]) -> Option<Self> {
        let (&a, &b) = (addrs.first()?, addrs.get(1)?);
        let mut repr = Self::new(a, b);
        for &addr in addrs.get(2..).unwrap_or(&[]) {
            repr.push(addr).ok()?;
        }
        Some(repr)
    }

    /// Appends a record (a forwarder's address, or the server's own in a SYN-ACK).
    pub fn push(&mut self, addr: SocketAddr) -> core::result::Result<(), SourceFull> {
        let slot = self
            .addrs
            .get_mut(usize::from(self.len))
            .ok_or(SourceFull)?;
        *slot = sockaddr::normalize(addr);
        self.len += 1;
        Ok(())
    }

    /// The records in path order.
    pub fn as_slice(&self) -> &[SocketAddr] {
        &self.addrs[..usize::from(self.len)]
    }

    /// Number of records (at least 2).
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Always `false`: a SOURCE extension has at least two records.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Record 0: the original sender.
    pub fn sender(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The last record (the server, in a SYN-ACK).
    pub fn last(&self) -> SocketAddr {
        self.as_slice().last().copied().unwrap_or(self.addrs[0])
    }

    /// Whether `addr` (normalised) is already on the path; a forwarder that finds itself
    /// there has a loop.
    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.as_slice().contains(&sockaddr::normalize(*addr))
    }

    /// Length of the extension on the wire.
    pub fn buffer_len(&self) -> usize {
        BODY_OFFSET
            + self
                .as_slice()
                .iter()
                .map(sockaddr::compact_len)
                .sum::<usize>()
    }

    /// Reads a SOURCE extension (framing included). Fewer than two or more than
    /// [`MAX_SOURCE_RECORDS`] records, or a record crossing the end, is [`Error::Malformed`];
    /// an unknown family is [`Error::Unsupported`].
    pub(crate) fn parse(ext: &[u8]) -> Result<Self> {
        let mut rest = ext.get(BODY_OFFSET..).ok_or(Error::Malformed)?;
        let mut addrs = [UNSPECIFIED; MAX_SOURCE_RECORDS];
        let mut len = 0;
        while !rest.is_empty() {
            let slot = addrs.get_mut(len).ok_or(Error::Malformed)?;
            let (addr, used) = sockaddr::read_compact(rest).map_err(|e| match e {
                Error::Truncated => Error::Malformed,
                e => e,
            })?;
            *slot = addr;
            len += 1;
            rest = rest.get(used..).unwrap_or(&[]);
        }
        if len < MIN_SOURCE_RECORDS {
            return Err(Error::Malformed);
        }
        Ok(Self {
            len: len as u8,
            addrs,
        })
    }

    /// Writes the extension, framing included, into `ext` (exactly [`buffer_len`](Self::buffer_len) long).
    pub(crate) fn emit(&self, ext: &mut [u8]) {
        let len = self.buffer_len();
        ext[0] = ExtType::Source.type_byte();
        // At most 4 + 12 × 20 = 244 (see MAX_SOURCE_RECORDS).
        ext[1] = len as u8;
        ext[2] = 0;
        ext[3] = 0;
        let mut at = BODY_OFFSET;
        for addr in self.as_slice() {
            at += sockaddr::write_compact(&mut ext[at..], addr);
        }
    }
}

impl PartialEq for SourceRepr {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for SourceRepr {}

impl core::hash::Hash for SourceRepr {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl fmt::Debug for SourceRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SourceRepr").field(&self.as_slice()).finish()
    }
}

impl fmt::Display for SourceRepr {
    /// `[192.0.2.1:54325 > [2001:db8::1]:54325]`, in path order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, addr) in self.as_slice().iter().enumerate() {
            let sep = if i == 0 { "" } else { " > " };
            write!(f, "{sep}{addr}")?;
        }
        f.write_str("]")
    }
}

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for SourceRepr {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut repr = Self::new(u.arbitrary()?, u.arbitrary()?);
        let extra = u.int_in_range(0..=MAX_SOURCE_RECORDS - MIN_SOURCE_RECORDS)?;
        for _ in 0..extra {
            // Cannot fail: at most MAX_SOURCE_RECORDS records in all.
            let _ = repr.push(u.arbitrary()?);
        }
        Ok(repr)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Any SOURCE extension.
    pub(crate) fn any_source() -> impl Strategy<Value = SourceRepr> {
        proptest::collection::vec(any::<SocketAddr>(), MIN_SOURCE_RECORDS..=MAX_SOURCE_RECORDS)
            .prop_map(|v| SourceRepr::from_slice(&v).unwrap())
    }

    #[test]
    fn layout() {
        let s = SourceRepr::from_slice(&[
            "192.0.2.1:54325".parse().unwrap(),
            "[2001:db8::1]:80".parse().unwrap(),
        ])
        .unwrap();
        assert_eq!(s.buffer_len(), 4 + 8 + 20);
        let mut out = [0u8; 32];
        s.emit(&mut out);
        assert_eq!(
            &out[..12],
            &[0x40, 32, 0, 0, 4, 0, 0xd4, 0x35, 192, 0, 2, 1]
        );
        assert_eq!(&out[12..16], &[6, 0, 0, 80]);
        assert_eq!(SourceRepr::parse(&out).unwrap(), s);
        assert_eq!(s.to_string(), "[192.0.2.1:54325 > [2001:db8::1]:80]");
    }

    #[test]
    fn bounds() {
        let a: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        assert!(SourceRepr::from_slice(&[a]).is_none());
        let mut s = SourceRepr::new(a, a);
        for _ in 2..MAX_SOURCE_RECORDS {
            s.push(a).unwrap();
        }
        assert_eq!(s.push(a), Err(SourceFull));
        assert!(s.buffer_len() <= 255);
        let mut out = [0u8; 244];
        s.emit(&mut out);
        assert_eq!(SourceRepr::parse(&out).unwrap(), s);
    }

    #[test]
    fn bad_extensions() {
        let one = [0x40, 12, 0, 0, 4, 0, 0, 1, 10, 0, 0, 1];
        assert_eq!(SourceRepr::parse(&one), Err(Error::Malformed), "one record");
        let cut = [0x40, 16, 0, 0, 4, 0, 0, 1, 10, 0, 0, 1, 4, 0, 0, 1];
        assert_eq!(SourceRepr::parse(&cut), Err(Error::Malformed), "cut record");
        let fam = [0x40, 12, 0, 0, 9, 0, 0, 1, 10, 0, 0, 1];
        assert_eq!(SourceRepr::parse(&fam), Err(Error::Unsupported));
        let mut many = vec![0x40, 0, 0, 0];
        for _ in 0..13 {
            many.extend_from_slice(&[4, 0, 0, 1, 10, 0, 0, 1]);
        }
        many[1] = many.len() as u8;
        assert_eq!(
            SourceRepr::parse(&many),
            Err(Error::Malformed),
            "13 records"
        );
    }

    #[test]
    fn scope_ids_are_dropped() {
        let scoped: SocketAddr = "[fe80::1%3]:9".parse().unwrap();
        let s = SourceRepr::new(scoped, scoped);
        assert!(s.contains(&scoped));
        assert_eq!(s.sender(), "[fe80::1]:9".parse::<SocketAddr>().unwrap());
    }

    proptest! {
        #[test]
        fn roundtrip(s in any_source()) {
            let mut out = vec![0u8; s.buffer_len()];
            s.emit(&mut out);
            prop_assert_eq!(SourceRepr::parse(&out).unwrap(), s);
        }

        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..260)) {
            let _ = SourceRepr::parse(&b);
        }
    }
}
