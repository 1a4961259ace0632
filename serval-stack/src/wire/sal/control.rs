//! The CONTROL extension (type 1, exactly 20 bytes), byte for byte the original's.
//!
//! ```text
//! 0  type 0x10 | 1 length 20 | 2 flags | 3 reserved
//! 4  verno (u32)
//! 8  ackno (u32)
//! 12 nonce (8 bytes)
//! ```

use core::fmt;
use core::ops::{BitAnd, BitOr, BitOrAssign};

use super::ext::{CONTROL_EXT_LEN, ExtType};
use crate::wire::{NONCE_LEN, Nonce};

/// The CONTROL flags byte. Bits 1–0 are reserved: never emitted, dropped when parsed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ControlFlags(u8);

impl ControlFlags {
    /// No flag: a CONTROL extension carrying only version numbers (never sent by us).
    pub const NONE: Self = Self(0);
    /// Opens a flow; consumes one version number.
    pub const SYN: Self = Self(0x80);
    /// Announces a migration to a new address; consumes one version number.
    pub const RSYN: Self = Self(0x40);
    /// `ackno` is valid.
    pub const ACK: Self = Self(0x20);
    /// Negative acknowledgement: parsed, never sent or acted on (as in the original).
    pub const NACK: Self = Self(0x10);
    /// Resets the flow.
    pub const RST: Self = Self(0x08);
    /// Closes our direction; consumes one version number.
    pub const FIN: Self = Self(0x04);

    const ALL: u8 = 0xfc;

    /// The flags set in `bits`; the reserved bits 1–0 are dropped.
    pub const fn from_bits_truncate(bits: u8) -> Self {
        Self(bits & Self::ALL)
    }

    /// The flags byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any flag of `other` is set.
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl BitOr for ControlFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for ControlFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for ControlFlags {
    type Output = Self;
    fn bitand(self, rhs: Self) -> Self {
        Self(self.0 & rhs.0)
    }
}

impl fmt::Display for ControlFlags {
    /// `SYN|ACK`, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(ControlFlags, &str); 6] = [
            (ControlFlags::SYN, "SYN"),
            (ControlFlags::RSYN, "RSYN"),
            (ControlFlags::ACK, "ACK"),
            (ControlFlags::NACK, "NACK"),
            (ControlFlags::RST, "RST"),
            (ControlFlags::FIN, "FIN"),
        ];
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut sep = "";
        for (flag, name) in NAMES {
            if self.contains(flag) {
                write!(f, "{sep}{name}")?;
                sep = "|";
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ControlFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ControlFlags({self})")
    }
}

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for ControlFlags {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self::from_bits_truncate(u8::arbitrary(u)?))
    }
}

/// The contents of a CONTROL extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ControlRepr {
    /// SYN, RSYN, ACK, NACK, RST, FIN.
    pub flags: ControlFlags,
    /// The sender's control sequence number.
    pub verno: u32,
    /// The next verno expected from the peer (meaningful with ACK).
    pub ackno: u32,
    /// The sender's nonce (an RST echoes the offending packet's).
    pub nonce: Nonce,
}

impl ControlRepr {
    /// Reads a CONTROL extension; the walker has checked it is exactly 20 bytes.
    pub(crate) fn parse(ext: &[u8; CONTROL_EXT_LEN]) -> Self {
        let u32_at = |i: usize| u32::from_be_bytes([ext[i], ext[i + 1], ext[i + 2], ext[i + 3]]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&ext[12..20]);
        Self {
            flags: ControlFlags::from_bits_truncate(ext[2]),
            verno: u32_at(4),
            ackno: u32_at(8),
            nonce: Nonce(nonce),
        }
    }

    /// Writes the extension, framing included, into the first 20 bytes of `ext`.
    pub(crate) fn emit(&self, ext: &mut [u8]) {
        ext[0] = ExtType::Control.type_byte();
        ext[1] = CONTROL_EXT_LEN as u8;
        ext[2] = self.flags.bits();
        ext[3] = 0;
        ext[4..8].copy_from_slice(&self.verno.to_be_bytes());
        ext[8..12].copy_from_slice(&self.ackno.to_be_bytes());
        ext[12..20].copy_from_slice(&self.nonce.0);
    }
}

impl fmt::Display for ControlRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] ver {:#010x}", self.flags, self.verno)?;
        if self.flags.contains(ControlFlags::ACK) {
            write!(f, " ack {:#010x}", self.ackno)?;
        }
        f.write_str(" nonce ")?;
        crate::wire::write_hex(f, &self.nonce.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn original_vector() {
        // SERVAL-ORIGINAL.md §2.10: SYN, verno 0x11223344, ackno 0, nonce 01..08.
        let bytes: [u8; 20] = [
            0x10, 0x14, 0x80, 0x00, 0x11, 0x22, 0x33, 0x44, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        let c = ControlRepr::parse(&bytes);
        assert_eq!(c.flags, ControlFlags::SYN);
        assert_eq!(c.verno, 0x1122_3344);
        assert_eq!(c.nonce, Nonce([1, 2, 3, 4, 5, 6, 7, 8]));
        let mut out = [0u8; 20];
        c.emit(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn flags() {
        let f = ControlFlags::SYN | ControlFlags::ACK;
        assert!(f.contains(ControlFlags::ACK) && !f.contains(ControlFlags::FIN));
        assert!(f.intersects(ControlFlags::SYN | ControlFlags::FIN));
        assert_eq!(f.to_string(), "SYN|ACK");
        assert_eq!(ControlFlags::NONE.to_string(), "none");
        assert_eq!(ControlFlags::from_bits_truncate(0xff).bits(), 0xfc);
    }

    proptest! {
        #[test]
        fn roundtrip(flags in any::<u8>(), verno in any::<u32>(), ackno in any::<u32>(), nonce in any::<[u8; 8]>()) {
            let c = ControlRepr { flags: ControlFlags::from_bits_truncate(flags), verno, ackno, nonce: Nonce(nonce) };
            let mut out = [0u8; 20];
            c.emit(&mut out);
            prop_assert_eq!(ControlRepr::parse(&out), c);
        }
    }
}
