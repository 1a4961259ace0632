//! [`ServiceId`] (256 bits) and [`ServicePrefix`] (an id plus a length, for longest-prefix
//! match), with their text forms.
//!
//! Text forms accepted by [`FromStr`] (see `docs/PROTOCOL.md` §1):
//!
//! | form | meaning |
//! |---|---|
//! | 64 hex digits | the 32 bytes, byte 0 first (what [`Display`](fmt::Display) prints) |
//! | `0x<hex>` | hex digits packed from byte 0; remaining bytes zero; even count, ≤ 64 digits |
//! | `<decimal>` | a `u32` stored big-endian in bytes 0–3 (the original tools' convention) |
//! | `default` | the all-zero id (as a prefix: length 0, the catch-all rule) |
//!
//! A prefix appends `:<bits>` (0..=256); without it the prefix is the full 256 bits.
//!
//! Deliberate differences from the original tools (`SERVAL-ORIGINAL.md` §1.1): an odd
//! number of hex digits is rejected (the original silently put the last digit in the high
//! nibble, turning `0x0000005` into `00 00 00 50`), invalid digits are an error instead of a
//! half-parsed id, and a bit count above 256 is an error instead of "256".

use core::fmt;
use core::str::FromStr;

/// Length of a ServiceID in bytes.
pub const SERVICE_ID_LEN: usize = 32;
/// Length of a ServiceID in bits; the longest prefix.
pub const SERVICE_ID_BITS: u16 = 256;

/// A 256-bit Serval service identifier.
///
/// The stack treats it as an opaque bit string matched by longest prefix, most significant
/// bit of byte 0 first. Profiles that give bytes a meaning (legacy addresses, DNS names) live
/// in [`super::legacy`] and [`super::name`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ServiceId([u8; SERVICE_ID_LEN]);

impl ServiceId {
    /// The all-zero id: the "default service" that the catch-all rule is keyed on.
    pub const DEFAULT: Self = Self([0; SERVICE_ID_LEN]);

    /// Wraps 32 bytes.
    pub const fn from_bytes(bytes: [u8; SERVICE_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// The original tools' numeric form: `n` big-endian in bytes 0–3, the rest zero
    /// (16385 → `00004001 00…`).
    pub const fn from_u32(n: u32) -> Self {
        let b = n.to_be_bytes();
        let mut bytes = [0; SERVICE_ID_LEN];
        bytes[0] = b[0];
        bytes[1] = b[1];
        bytes[2] = b[2];
        bytes[3] = b[3];
        Self(bytes)
    }

    /// Parses the id from the first 32 bytes of `buf`, or `None` when it is shorter.
    pub fn from_slice(buf: &[u8]) -> Option<Self> {
        let bytes: [u8; SERVICE_ID_LEN] = buf.get(..SERVICE_ID_LEN)?.try_into().ok()?;
        Some(Self(bytes))
    }

    /// The 32 bytes, byte 0 first.
    pub const fn as_bytes(&self) -> &[u8; SERVICE_ID_LEN] {
        &self.0
    }

    /// Whether this is the all-zero default id.
    pub fn is_default(&self) -> bool {
        self.0 == [0; SERVICE_ID_LEN]
    }

    /// Bit `i` (0 = most significant bit of byte 0). `i` must be below 256.
    pub fn bit(&self, i: u16) -> bool {
        debug_assert!(i < SERVICE_ID_BITS);
        let byte = self.0[usize::from(i / 8) % SERVICE_ID_LEN];
        byte & (0x80 >> (i % 8)) != 0
    }

    /// The id as four big-endian 64-bit words, word 0 holding bytes 0–7. Prefix arithmetic
    /// (masking, comparing, finding the first differing bit) runs on these words.
    pub fn to_words(&self) -> [u64; 4] {
        let mut w = [0u64; 4];
        for (i, chunk) in self.0.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            w[i] = u64::from_be_bytes(b);
        }
        w
    }

    /// Inverse of [`to_words`](Self::to_words).
    pub fn from_words(w: [u64; 4]) -> Self {
        let mut bytes = [0u8; SERVICE_ID_LEN];
        for (i, word) in w.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&word.to_be_bytes());
        }
        Self(bytes)
    }

    /// This id with every bit at position `len` and beyond cleared.
    pub fn masked(&self, len: u16) -> Self {
        let len = len.min(SERVICE_ID_BITS);
        let mut out = self.0;
        let full = usize::from(len / 8);
        let rem = len % 8;
        if full < SERVICE_ID_LEN {
            if rem != 0 {
                out[full] &= 0xffu8 << (8 - rem);
                out[full + 1..].fill(0);
            } else {
                out[full..].fill(0);
            }
        }
        Self(out)
    }

    /// Number of leading bits this id shares with `other` (256 when equal).
    pub fn common_prefix_len(&self, other: &Self) -> u16 {
        for (i, (a, b)) in self.0.iter().zip(other.0.iter()).enumerate() {
            let x = a ^ b;
            if x != 0 {
                // i < 32 and leading_zeros < 8: fits u16.
                return (i as u16) * 8 + x.leading_zeros() as u16;
            }
        }
        SERVICE_ID_BITS
    }
}

impl fmt::Display for ServiceId {
    /// 64 lowercase hex digits, byte 0 first (the original's `service_id_to_str`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceId({self})")
    }
}

impl From<[u8; SERVICE_ID_LEN]> for ServiceId {
    fn from(bytes: [u8; SERVICE_ID_LEN]) -> Self {
        Self(bytes)
    }
}

impl FromStr for ServiceId {
    type Err = ParseIdError;

    /// Any form in the module table; a `:<bits>` suffix is refused (that is a prefix).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            return Err(ParseIdError::UnexpectedPrefixLen);
        }
        parse_id(s)
    }
}

/// A ServiceID prefix: the first `len` bits of `id`; every bit past `len` is zero.
///
/// Length 0 is the catch-all (default) rule; 256 is an exact match.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePrefix {
    id: ServiceId,
    len: u16,
}

impl ServicePrefix {
    /// The catch-all prefix (length 0).
    pub const DEFAULT: Self = Self {
        id: ServiceId::DEFAULT,
        len: 0,
    };

    /// The prefix of length `len` of `id`. Bits of `id` past `len` are cleared, so two
    /// prefixes that cover the same set of ids compare equal.
    pub fn new(id: ServiceId, len: u16) -> Result<Self, PrefixLenError> {
        if len > SERVICE_ID_BITS {
            return Err(PrefixLenError(len));
        }
        Ok(Self {
            id: id.masked(len),
            len,
        })
    }

    /// The exact (256-bit) prefix of `id`.
    pub const fn exact(id: ServiceId) -> Self {
        Self {
            id,
            len: SERVICE_ID_BITS,
        }
    }

    /// The id with bits past the length cleared.
    pub const fn id(&self) -> &ServiceId {
        &self.id
    }

    /// Prefix length in bits, 0..=256.
    pub const fn len(&self) -> u16 {
        self.len
    }

    /// Whether the prefix is the zero-length catch-all.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `id` starts with this prefix.
    pub fn contains(&self, id: &ServiceId) -> bool {
        id.common_prefix_len(&self.id) >= self.len
    }

    /// Whether every id under `other` is also under `self`.
    pub fn covers(&self, other: &Self) -> bool {
        other.len >= self.len && self.contains(&other.id)
    }
}

impl fmt::Display for ServicePrefix {
    /// `default` for length 0; otherwise `0x` + the bytes that cover the prefix + `:len`, a
    /// form [`FromStr`] reads back to the same prefix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len == 0 {
            return f.write_str("default");
        }
        let nbytes = usize::from(self.len.div_ceil(8));
        f.write_str("0x")?;
        write_hex(f, &self.id.0[..nbytes])?;
        write!(f, ":{}", self.len)
    }
}

impl fmt::Debug for ServicePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServicePrefix({self})")
    }
}

impl FromStr for ServicePrefix {
    type Err = ParseIdError;

    /// `<id form>[:<bits>]`; `default` alone is the length-0 prefix.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id_text, len) = match s.split_once(':') {
            Some((id_text, bits)) => {
                let len: u16 = parse_decimal(bits)
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|&n| n <= SERVICE_ID_BITS)
                    .ok_or(ParseIdError::BadPrefixLen)?;
                (id_text, len)
            }
            None if s == "default" => (s, 0),
            None => (s, SERVICE_ID_BITS),
        };
        let id = parse_id(id_text)?;
        if id.masked(len) != id {
            return Err(ParseIdError::BitsPastPrefix);
        }
        Ok(Self { id, len })
    }
}

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for ServicePrefix {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let id = ServiceId::arbitrary(u)?;
        let len = u.int_in_range(0..=SERVICE_ID_BITS)?;
        Ok(Self {
            id: id.masked(len),
            len,
        })
    }
}

/// A prefix length above 256 was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("prefix length {0} is longer than a ServiceID (256 bits)")]
pub struct PrefixLenError(pub u16);

/// Why a ServiceID or prefix text did not parse. Each message says what was expected, so
/// the config loader can put it next to the file, line and field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseIdError {
    /// Empty string (or `0x` with no digits).
    #[error("empty ServiceID")]
    Empty,
    /// A character that is not a digit of the form in use.
    #[error(
        "invalid digit in ServiceID (expected 64 hex digits, 0x<hex>, a decimal u32 or `default`)"
    )]
    InvalidDigit,
    /// `0x` form with an odd number of digits: which nibble the last digit fills is ambiguous.
    #[error("odd number of hex digits after 0x: pad to whole bytes (e.g. 0x05, not 0x5)")]
    OddHexDigits,
    /// More than 64 hex digits.
    #[error("more than 64 hex digits (a ServiceID is 32 bytes)")]
    TooLong,
    /// The decimal form does not fit 32 bits.
    #[error("decimal ServiceID does not fit 32 bits (use the 0x<hex> form)")]
    DecimalOverflow,
    /// `:<bits>` is not a number in 0..=256.
    #[error("prefix length must be a number from 0 to 256")]
    BadPrefixLen,
    /// A prefix whose id has bits set past its length (probably a typo in the length).
    #[error("the id has bits set beyond the prefix length")]
    BitsPastPrefix,
    /// A `:<bits>` suffix where a single id is expected.
    #[error("a ServiceID was expected, not a prefix (remove the :<bits> suffix)")]
    UnexpectedPrefixLen,
}

fn parse_id(s: &str) -> Result<ServiceId, ParseIdError> {
    if s == "default" {
        return Ok(ServiceId::DEFAULT);
    }
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return parse_packed_hex(hex);
    }
    if s.is_empty() {
        return Err(ParseIdError::Empty);
    }
    if s.len() == 2 * SERVICE_ID_LEN {
        return parse_packed_hex(s);
    }
    match parse_decimal(s) {
        Some(n) => u32::try_from(n)
            .map(ServiceId::from_u32)
            .map_err(|_| ParseIdError::DecimalOverflow),
        None if s.bytes().all(|b| b.is_ascii_digit()) => Err(ParseIdError::DecimalOverflow),
        None => Err(ParseIdError::InvalidDigit),
    }
}

/// Hex digits packed from byte 0 onward, the rest zero.
fn parse_packed_hex(hex: &str) -> Result<ServiceId, ParseIdError> {
    if hex.is_empty() {
        return Err(ParseIdError::Empty);
    }
    if hex.len() > 2 * SERVICE_ID_LEN {
        return Err(ParseIdError::TooLong);
    }
    if hex.len() % 2 != 0 {
        return Err(ParseIdError::OddHexDigits);
    }
    let mut bytes = [0u8; SERVICE_ID_LEN];
    for (out, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let hi = hex_val(pair[0]).ok_or(ParseIdError::InvalidDigit)?;
        let lo = hex_val(pair[1]).ok_or(ParseIdError::InvalidDigit)?;
        *out = hi << 4 | lo;
    }
    Ok(ServiceId(bytes))
}

/// A non-empty run of ASCII digits as a number, `None` on anything else or on overflow.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Lowercase hex of `bytes`; the one hex printer of the crate.
pub(crate) fn write_hex(f: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        f.write_char(char::from(DIGITS[usize::from(b >> 4)]))?;
        f.write_char(char::from(DIGITS[usize::from(b & 0xf)]))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decimal_form_is_big_endian_in_bytes_0_to_3() {
        let id: ServiceId = "16385".parse().unwrap();
        assert_eq!(id.to_string(), format!("00004001{}", "0".repeat(56)));
        assert_eq!(id, ServiceId::from_u32(16385));
    }

    #[test]
    fn hex_packs_from_byte_zero() {
        let id: ServiceId = "0x00001f90".parse().unwrap();
        assert_eq!(&id.as_bytes()[..4], &[0, 0, 0x1f, 0x90]);
        assert!(id.as_bytes()[4..].iter().all(|&b| b == 0));
    }

    #[test]
    fn original_quirk_inputs_are_rejected() {
        // The original turned 0x0000005 into 00 00 00 50.
        assert_eq!(
            "0x0000005".parse::<ServiceId>(),
            Err(ParseIdError::OddHexDigits)
        );
        assert_eq!("0xzz".parse::<ServiceId>(), Err(ParseIdError::InvalidDigit));
        assert_eq!(
            "4294967296".parse::<ServiceId>(),
            Err(ParseIdError::DecimalOverflow)
        );
        assert_eq!(
            "0x00:257".parse::<ServicePrefix>(),
            Err(ParseIdError::BadPrefixLen)
        );
        assert_eq!(
            format!("0x{}", "00".repeat(33)).parse::<ServiceId>(),
            Err(ParseIdError::TooLong)
        );
        assert_eq!("".parse::<ServiceId>(), Err(ParseIdError::Empty));
        assert_eq!("0x".parse::<ServiceId>(), Err(ParseIdError::Empty));
        assert_eq!(
            "5:8".parse::<ServiceId>(),
            Err(ParseIdError::UnexpectedPrefixLen)
        );
        assert_eq!(
            "0xff:4".parse::<ServicePrefix>(),
            Err(ParseIdError::BitsPastPrefix)
        );
        assert_eq!(
            "0x12:".parse::<ServicePrefix>(),
            Err(ParseIdError::BadPrefixLen)
        );
        assert_eq!("-1".parse::<ServiceId>(), Err(ParseIdError::InvalidDigit));
    }

    #[test]
    fn prefix_forms() {
        let p: ServicePrefix = "default".parse().unwrap();
        assert_eq!(p, ServicePrefix::DEFAULT);
        let p: ServicePrefix = "0x0000d9:24".parse().unwrap();
        assert_eq!(p.len(), 24);
        assert!(p.contains(&ServiceId::from_u32(55555)));
        assert!(!p.contains(&ServiceId::from_u32(88888)));
        let full: ServicePrefix = "16385".parse().unwrap();
        assert_eq!(full, ServicePrefix::exact(ServiceId::from_u32(16385)));
        assert_eq!(p.to_string(), "0x0000d9:24");
        let odd: ServicePrefix = "0x0000f0:20".parse().unwrap();
        assert_eq!(odd.to_string(), "0x0000f0:20");
    }

    #[test]
    fn masking_and_common_prefix() {
        let id = ServiceId::from_bytes([0xff; 32]);
        assert_eq!(id.masked(0), ServiceId::DEFAULT);
        assert_eq!(id.masked(256), id);
        assert_eq!(id.masked(12).as_bytes()[..2], [0xff, 0xf0]);
        assert_eq!(id.masked(12).as_bytes()[2], 0);
        assert_eq!(id.common_prefix_len(&id), 256);
        assert_eq!(id.common_prefix_len(&id.masked(13)), 13);
        assert_eq!(ServiceId::from_words(id.to_words()), id);
    }

    fn any_id() -> impl Strategy<Value = ServiceId> {
        any::<[u8; 32]>().prop_map(ServiceId::from_bytes)
    }

    proptest! {
        #[test]
        fn id_display_roundtrips(id in any_id()) {
            prop_assert_eq!(id.to_string().parse::<ServiceId>().unwrap(), id);
        }

        #[test]
        fn prefix_display_roundtrips(id in any_id(), len in 0u16..=256) {
            let p = ServicePrefix::new(id, len).unwrap();
            prop_assert_eq!(p.to_string().parse::<ServicePrefix>().unwrap(), p);
            prop_assert!(p.contains(&id));
        }

        #[test]
        fn decimal_roundtrips(n in any::<u32>()) {
            prop_assert_eq!(n.to_string().parse::<ServiceId>().unwrap(), ServiceId::from_u32(n));
        }

        #[test]
        fn bit_agrees_with_masking(id in any_id(), i in 0u16..256) {
            let with = id.masked(i + 1);
            let without = id.masked(i);
            prop_assert_eq!(with != without, id.bit(i));
        }

        #[test]
        fn text_parsers_never_panic(s in "\\PC{0,80}") {
            let _ = s.parse::<ServiceId>();
            let _ = s.parse::<ServicePrefix>();
        }
    }
}
