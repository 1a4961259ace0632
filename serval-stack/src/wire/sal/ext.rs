//! Extension framing and the bounded extension walker.
//!
//! Every extension but PAD starts with a type byte (type in the high nibble, low nibble
//! reserved) and a length byte counting the whole extension, these two bytes included.
//! PAD (type 0) is a single byte. Bodies of all our extensions start with two reserved bytes
//! so that the variable part is 4-byte aligned and every extension we emit is a multiple of
//! four bytes long (the header length is counted in 32-bit words; we never emit PAD).

use core::fmt;

use super::packet::HEADER_LEN;
use crate::wire::{Error, Result};

/// At most this many extensions (PAD included) are walked (`SERVAL-ORIGINAL.md` §2.8).
pub const MAX_EXTENSIONS: usize = 10;

/// Length of a CONTROL extension.
pub const CONTROL_EXT_LEN: usize = 20;
/// Length of a SERVICE extension.
pub const SERVICE_EXT_LEN: usize = 36;
/// Length of the (ignored) ADDRESS extension.
pub const ADDRESS_EXT_LEN: usize = 12;
/// Length of a KEY_SHARE extension: framing (2), reserved (2), X25519 public key (32).
pub const KEY_SHARE_EXT_LEN: usize = 36;
/// Length of a MAC extension: framing (2), reserved (2), tag (16).
pub const MAC_EXT_LEN: usize = 20;
/// Length of a PATH_CHALLENGE or PATH_RESPONSE extension: framing (2), reserved (2), data (8).
pub const PATH_EXT_LEN: usize = 12;

/// Length of an X25519 public key in KEY_SHARE.
pub const KEY_SHARE_LEN: usize = 32;
/// Length of the truncated HMAC-SHA256 tag in MAC.
pub const MAC_TAG_LEN: usize = 16;
/// Length of the PATH_CHALLENGE / PATH_RESPONSE data.
pub const PATH_DATA_LEN: usize = 8;

/// Offset of the variable part in every non-PAD extension (after type, length, reserved).
pub(crate) const BODY_OFFSET: usize = 4;

/// The extension types (high nibble of the first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ExtType {
    /// One byte of padding.
    Pad = 0,
    /// Connection control: flags, version numbers, nonce.
    Control = 1,
    /// A ServiceID (the first one in a packet is the destination, the second the source).
    Service = 2,
    /// Defined by the original but never used; accepted (12 bytes) and ignored.
    Address = 3,
    /// The path a forwarded SYN took, as socket addresses.
    Source = 4,
    /// Ours: an X25519 public key (SYN, SYN-ACK).
    KeyShare = 5,
    /// Ours: the per-flow MAC over the SAL header; always the last extension.
    Mac = 6,
    /// Ours: 8 random bytes a peer must echo from a new address before it is used.
    PathChallenge = 7,
    /// Ours: the echo of a PATH_CHALLENGE.
    PathResponse = 8,
}

impl ExtType {
    /// The type of an extension from its first byte; types 9–15 are [`Error::Unsupported`].
    pub fn from_type_byte(byte: u8) -> Result<Self> {
        Ok(match byte >> 4 {
            0 => Self::Pad,
            1 => Self::Control,
            2 => Self::Service,
            3 => Self::Address,
            4 => Self::Source,
            5 => Self::KeyShare,
            6 => Self::Mac,
            7 => Self::PathChallenge,
            8 => Self::PathResponse,
            _ => return Err(Error::Unsupported),
        })
    }

    /// The first byte of an extension of this type (reserved nibble zero).
    pub const fn type_byte(self) -> u8 {
        (self as u8) << 4
    }

    /// The only length an extension of this type may have; `None` for SOURCE (variable).
    pub const fn fixed_len(self) -> Option<usize> {
        match self {
            Self::Pad => Some(1),
            Self::Control => Some(CONTROL_EXT_LEN),
            Self::Service => Some(SERVICE_EXT_LEN),
            Self::Address => Some(ADDRESS_EXT_LEN),
            Self::Source => None,
            Self::KeyShare => Some(KEY_SHARE_EXT_LEN),
            Self::Mac => Some(MAC_EXT_LEN),
            Self::PathChallenge | Self::PathResponse => Some(PATH_EXT_LEN),
        }
    }
}

impl fmt::Display for ExtType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pad => "PAD",
            Self::Control => "CONTROL",
            Self::Service => "SERVICE",
            Self::Address => "ADDRESS",
            Self::Source => "SOURCE",
            Self::KeyShare => "KEY_SHARE",
            Self::Mac => "MAC",
            Self::PathChallenge => "PATH_CHALLENGE",
            Self::PathResponse => "PATH_RESPONSE",
        })
    }
}

/// One extension found by the walker; its framing is valid and a fixed-size type has
/// exactly its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension<'a> {
    kind: ExtType,
    offset: usize,
    bytes: &'a [u8],
}

impl<'a> Extension<'a> {
    /// The extension type.
    pub fn kind(&self) -> ExtType {
        self.kind
    }

    /// Offset of the extension from the start of the SAL header.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The whole extension, framing bytes included.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The bytes after type, length and the two reserved bytes (empty for PAD).
    pub fn body(&self) -> &'a [u8] {
        self.bytes.get(BODY_OFFSET..).unwrap_or(&[])
    }
}

/// Iterator over the extensions of a SAL header.
///
/// Enforces the framing rules of `SERVAL-ORIGINAL.md` §2.8: at most [`MAX_EXTENSIONS`]
/// (PAD counts), known types only ([`Error::Unsupported`] otherwise), a length byte of at
/// least 2 that stays inside the header and, for fixed-size types, equals the type's size
/// ([`Error::Malformed`] otherwise). Because the header length is counted in words, the walk
/// ends exactly at the end of the header or fails, so no leftover is possible. After the first
/// error it yields nothing more. Duplicates and the per-packet rules are checked by
/// [`SalRepr::parse`](super::SalRepr::parse).
#[derive(Debug, Clone)]
pub struct Extensions<'a> {
    buf: &'a [u8],
    pos: usize,
    count: usize,
    failed: bool,
}

impl<'a> Extensions<'a> {
    /// Walks `buf`, the bytes between the base header and the transport bytes.
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            count: 0,
            failed: false,
        }
    }

    fn next_ext(&mut self) -> Result<Extension<'a>> {
        if self.count == MAX_EXTENSIONS {
            return Err(Error::Malformed);
        }
        self.count += 1;
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        let first = *rest.first().ok_or(Error::Malformed)?;
        let kind = ExtType::from_type_byte(first)?;
        let len = match kind {
            ExtType::Pad => 1,
            _ => usize::from(*rest.get(1).ok_or(Error::Malformed)?),
        };
        if len < 2 && kind != ExtType::Pad {
            return Err(Error::Malformed);
        }
        if kind.fixed_len().is_some_and(|fixed| fixed != len) {
            return Err(Error::Malformed);
        }
        let bytes = rest.get(..len).ok_or(Error::Malformed)?;
        let ext = Extension {
            kind,
            offset: HEADER_LEN + self.pos,
            bytes,
        };
        self.pos += len;
        Ok(ext)
    }
}

impl<'a> Iterator for Extensions<'a> {
    type Item = Result<Extension<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let item = self.next_ext();
        self.failed = item.is_err();
        Some(item)
    }
}

impl core::iter::FusedIterator for Extensions<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn walk(buf: &[u8]) -> Result<Vec<(ExtType, usize)>> {
        Extensions::new(buf)
            .map(|e| e.map(|e| (e.kind(), e.offset())))
            .collect()
    }

    #[test]
    fn pad_is_one_byte_and_counts() {
        assert_eq!(
            walk(&[0, 0, 0, 0]).unwrap(),
            vec![
                (ExtType::Pad, 12),
                (ExtType::Pad, 13),
                (ExtType::Pad, 14),
                (ExtType::Pad, 15)
            ]
        );
        assert_eq!(walk(&[0; 10]).unwrap().len(), 10);
        assert_eq!(walk(&[0; 11]), Err(Error::Malformed), "11 extensions");
    }

    #[test]
    fn framing_errors() {
        assert_eq!(walk(&[0x90, 12, 0, 0]), Err(Error::Unsupported));
        assert_eq!(walk(&[0xf0, 12, 0, 0]), Err(Error::Unsupported));
        assert_eq!(walk(&[0x40]), Err(Error::Malformed), "no length byte");
        assert_eq!(walk(&[0x40, 1, 0, 0]), Err(Error::Malformed), "length < 2");
        assert_eq!(
            walk(&[0x40, 8, 0, 0]),
            Err(Error::Malformed),
            "past the end"
        );
        assert_eq!(walk(&[0x30, 8, 0, 0, 0, 0, 0, 0]), Err(Error::Malformed));
        let mut control = [0u8; 24];
        control[0] = 0x10;
        control[1] = 24;
        assert_eq!(walk(&control), Err(Error::Malformed), "CONTROL must be 20");
        control[1] = 20;
        control[20] = 0x10;
        assert_eq!(
            walk(&control),
            Err(Error::Malformed),
            "4 bytes left as a CONTROL"
        );
        control[20] = 0;
        assert_eq!(
            walk(&control).unwrap(),
            vec![
                (ExtType::Control, 12),
                (ExtType::Pad, 32),
                (ExtType::Pad, 33),
                (ExtType::Pad, 34),
                (ExtType::Pad, 35)
            ]
        );
    }

    #[test]
    fn reserved_nibble_is_ignored() {
        assert_eq!(
            walk(&[0x3f, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap(),
            vec![(ExtType::Address, 12)]
        );
    }

    #[test]
    fn stops_after_error() {
        let mut it = Extensions::new(&[0xa0, 0, 0, 0]);
        assert_eq!(it.next(), Some(Err(Error::Unsupported)));
        assert_eq!(it.next(), None);
    }

    proptest! {
        #[test]
        fn never_panics_and_is_bounded(b in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let n = Extensions::new(&b).count();
            prop_assert!(n <= MAX_EXTENSIONS + 1);
        }
    }
}
