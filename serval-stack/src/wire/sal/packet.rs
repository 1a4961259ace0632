//! The 12-byte SAL base header, read and written in place.

use core::fmt;

use super::ext::Extensions;
use crate::wire::{Error, FlowId, Result, checksum};

/// Byte ranges of the base header fields.
mod field {
    use core::ops::Range;

    pub(super) const SRC_FLOW: Range<usize> = 0..4;
    pub(super) const DST_FLOW: Range<usize> = 4..8;
    pub(super) const SHL: usize = 8;
    pub(super) const PROTOCOL: usize = 9;
    pub(super) const CHECKSUM: Range<usize> = 10..12;
}

/// Length of the SAL base header in bytes.
pub const HEADER_LEN: usize = 12;
/// Longest SAL header (base + extensions): the `shl` byte counts 32-bit words, at most 255.
pub const MAX_HEADER_LEN: usize = 255 * 4;
/// Offset of the checksum field in the SAL header (the MAC input zeroes it).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// The transport protocol that follows the SAL header (the `protocol` byte).
///
/// A newtype over the raw byte so that every value round-trips; the SAL itself does not
/// interpret it, the endpoint routes on it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Protocol(pub u8);

impl Protocol {
    /// The reliable byte stream (TCP segment format), IP protocol number 6 as in the original.
    pub const TCP: Self = Self(6);
    /// Datagrams (UDP header), IP protocol number 17 as in the original.
    pub const UDP: Self = Self(17);
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TCP => f.write_str("tcp"),
            Self::UDP => f.write_str("udp"),
            Self(n) => write!(f, "proto-{n}"),
        }
    }
}

impl fmt::Debug for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Protocol({self})")
    }
}

/// A SAL packet (base header, extensions, transport bytes) over a buffer, read in place.
///
/// Once [`check_len`](Self::check_len) has returned `Ok` (which [`new_checked`](Self::new_checked)
/// does), no accessor panics, whatever the bytes. Setters keep that guarantee except
/// [`set_header_words`](Self::set_header_words), which can declare a header longer than the
/// buffer; the slice accessors then panic until it is corrected. When *emitting*, wrap the
/// buffer with [`new_unchecked`](Self::new_unchecked): the header length is not written yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking anything (for emitting, or after `check_len`).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` and checks that the base header and the declared header length fit.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the lengths every accessor relies on (`SERVAL-ORIGINAL.md` §2.8 rule 1):
    /// at least 12 bytes ([`Error::Truncated`]), `shl * 4 >= 12` ([`Error::Malformed`]),
    /// and `shl * 4` no longer than the buffer ([`Error::Truncated`]).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if header_len > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The sender's flow id (`None` for the reserved 0).
    pub fn src_flow_id(&self) -> Option<FlowId> {
        FlowId::from_wire(self.read_u32(field::SRC_FLOW.start))
    }

    /// The receiver's flow id (`None`: not known yet, or an unconnected datagram).
    pub fn dst_flow_id(&self) -> Option<FlowId> {
        FlowId::from_wire(self.read_u32(field::DST_FLOW.start))
    }

    /// The header length in 32-bit words (the `shl` byte), base header included.
    pub fn header_words(&self) -> u8 {
        self.buffer.as_ref()[field::SHL]
    }

    /// The header length in bytes: base header plus every extension.
    pub fn header_len(&self) -> usize {
        usize::from(self.header_words()) * 4
    }

    /// The transport protocol that follows the header.
    pub fn protocol(&self) -> Protocol {
        Protocol(self.buffer.as_ref()[field::PROTOCOL])
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::CHECKSUM.start], b[field::CHECKSUM.start + 1]])
    }

    /// Whether the Internet checksum over the `header_len()` header bytes verifies.
    /// The transport bytes are not covered (the UDP checksum and the MAC cover more).
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(self.header())
    }

    /// The whole SAL header: base header and extensions.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// The extension bytes, between the base header and the transport bytes.
    pub fn extension_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// Walks the extensions, enforcing the framing limits (see [`Extensions`]).
    pub fn extensions(&self) -> Extensions<'_> {
        Extensions::new(self.extension_bytes())
    }

    /// The transport bytes after the SAL header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    fn read_u32(&self, at: usize) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the sender's flow id (`None` writes 0).
    pub fn set_src_flow_id(&mut self, id: Option<FlowId>) {
        self.write_u32(field::SRC_FLOW.start, FlowId::to_wire(id));
    }

    /// Sets the receiver's flow id (`None` writes 0).
    pub fn set_dst_flow_id(&mut self, id: Option<FlowId>) {
        self.write_u32(field::DST_FLOW.start, FlowId::to_wire(id));
    }

    /// Sets the header length in 32-bit words. The caller keeps it within the buffer.
    pub fn set_header_words(&mut self, words: u8) {
        self.buffer.as_mut()[field::SHL] = words;
    }

    /// Sets the transport protocol byte.
    pub fn set_protocol(&mut self, protocol: Protocol) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol.0;
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_be_bytes());
    }

    /// Computes the header checksum and writes it; call after every other header change.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let value = checksum::checksum(self.header());
        self.set_checksum(value);
    }

    /// The whole SAL header, mutable.
    pub fn header_mut(&mut self) -> &mut [u8] {
        let len = self.header_len();
        &mut self.buffer.as_mut()[..len]
    }

    /// The transport bytes after the SAL header, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = self.header_len();
        &mut self.buffer.as_mut()[len..]
    }

    fn write_u32(&mut self, at: usize, value: u32) {
        self.buffer.as_mut()[at..at + 4].copy_from_slice(&value.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Base header of the original's SYN vector (`SERVAL-ORIGINAL.md` §2.10).
    const SYN_BASE: [u8; 12] = [0, 0, 0, 2, 0, 0, 0, 0, 0x11, 0x06, 0xaa, 0x43];

    #[test]
    fn fields() {
        let mut buf = [0u8; 68];
        buf[..12].copy_from_slice(&SYN_BASE);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.src_flow_id(), FlowId::new(2));
        assert_eq!(p.dst_flow_id(), None);
        assert_eq!(p.header_words(), 17);
        assert_eq!(p.header_len(), 68);
        assert_eq!(p.protocol(), Protocol::TCP);
        assert_eq!(p.checksum(), 0xaa43);
        assert_eq!(p.extension_bytes().len(), 56);
        assert!(p.payload().is_empty());
    }

    #[test]
    fn setters_and_checksum() {
        let mut buf = [0u8; 16];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_src_flow_id(FlowId::new(0x0102_0304));
        p.set_dst_flow_id(FlowId::new(7));
        p.set_header_words(3);
        p.set_protocol(Protocol::UDP);
        p.fill_checksum();
        assert!(p.verify_checksum());
        p.payload_mut().copy_from_slice(b"data");
        assert!(p.verify_checksum(), "payload is not covered");
        assert_eq!(p.payload(), b"data");
        assert_eq!(&buf[..10], &[1, 2, 3, 4, 0, 0, 0, 7, 3, 17]);
    }

    #[test]
    fn length_checks() {
        assert_eq!(Packet::new_checked(&[0u8; 11][..]), Err(Error::Truncated));
        let mut buf = SYN_BASE;
        buf[8] = 2;
        assert_eq!(Packet::new_checked(&buf[..]), Err(Error::Malformed));
        buf[8] = 4;
        assert_eq!(Packet::new_checked(&buf[..]), Err(Error::Truncated));
        buf[8] = 3;
        assert!(Packet::new_checked(&buf[..]).is_ok());
    }

    proptest! {
        #[test]
        fn accessors_never_panic_after_check(b in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = Packet::new_checked(&b[..]) {
                let _ = (p.src_flow_id(), p.dst_flow_id(), p.protocol(), p.checksum());
                let _ = (p.verify_checksum(), p.payload(), p.extension_bytes());
                for ext in p.extensions() {
                    let _ = ext;
                }
            }
        }
    }
}
