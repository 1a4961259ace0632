//! [`FlowId`] (the SAL demultiplexing key) and [`Nonce`].

use core::fmt;
use core::num::NonZeroU32;

/// A host-local 32-bit flow identifier; each end picks its own and a packet carries
/// (sender's, receiver's).
///
/// Zero is reserved: on the wire it means "not known yet" (a SYN's destination) or
/// "unconnected datagram", so a `FlowId` is never zero and wire fields that may be zero are
/// `Option<FlowId>`. Unlike the original (a global counter starting at 2), endpoints draw
/// FlowIDs at random so an off-path attacker cannot guess them (`DESIGN.md` §2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(NonZeroU32);

impl FlowId {
    /// `None` for the reserved value 0.
    pub const fn new(raw: u32) -> Option<Self> {
        match NonZeroU32::new(raw) {
            Some(n) => Some(Self(n)),
            None => None,
        }
    }

    /// The id as carried on the wire (host order here; big-endian on the wire).
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// Reads an optional id from a wire field (0 → `None`).
    pub const fn from_wire(raw: u32) -> Option<Self> {
        Self::new(raw)
    }

    /// The wire value of an optional id (`None` → 0).
    pub const fn to_wire(id: Option<Self>) -> u32 {
        match id {
            Some(id) => id.get(),
            None => 0,
        }
    }
}

impl fmt::Display for FlowId {
    /// Unsigned decimal, as the original's `migrate flow` tool printed and read it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlowId({})", self.0)
    }
}

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for FlowId {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self(NonZeroU32::arbitrary(u)?))
    }
}

/// Length of a nonce in bytes.
pub const NONCE_LEN: usize = 8;

/// The 8-byte per-endpoint nonce of the original CONTROL extension.
///
/// The original authenticated migration with this clear-text value alone; we keep the field
/// for layout compatibility and as a cheap first filter, but control packets are
/// authenticated by a MAC with the per-flow key (`docs/PROTOCOL.md`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Nonce(pub [u8; NONCE_LEN]);

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Nonce(")?;
        super::write_hex(f, &self.0)?;
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_reserved() {
        assert_eq!(FlowId::new(0), None);
        assert_eq!(FlowId::to_wire(None), 0);
        let id = FlowId::new(7).unwrap();
        assert_eq!(FlowId::from_wire(FlowId::to_wire(Some(id))), Some(id));
        assert_eq!(id.to_string(), "7");
    }
}
