//! The Internet checksum (RFC 1071): the one implementation in the crate.
//!
//! The SAL header checksum (`docs/PROTOCOL.md` §2.2) and any transport checksum use it.
//! The sum is computed eight bytes at a time into a `u64` (each step adds the word's two
//! 32-bit halves, so no carry is lost and the loop vectorises) and folded to 16 bits once at
//! the end. Because the ones'-complement sum is independent of byte order
//! (RFC 1071 §2(B)), words are read in *native* order and the result is byte-swapped once on
//! little-endian machines, instead of swapping every word.
//!
//! Terms: the *sum* is the folded ones'-complement sum, not complemented; the *checksum* is
//! its complement, the value written into a header. A buffer whose checksum field is correct
//! sums to `0xffff` (its checksum is 0).

/// Bytes summed between two end-around-carry folds: each 8-byte step adds less than
/// 2^33 to a `u64`, so 2^30 steps can never overflow it.
const CHUNK: usize = 1 << 30;

/// The folded ones'-complement sum of `data` read as big-endian 16-bit words, an odd last
/// byte padded with a zero on the right (RFC 1071). Not complemented.
pub fn sum(data: &[u8]) -> u16 {
    let mut acc = 0u64;
    for chunk in data.chunks(CHUNK) {
        acc = add_carry(acc, sum_chunk(chunk));
    }
    native_to_be(fold(acc))
}

/// Sums 8 bytes per step as two 32-bit halves into a `u64` (no carry chain, so the loop
/// vectorises), then the tail by 4, 2 and 1 bytes. Every piece starts at an even offset, so
/// each byte stays in its 16-bit lane; an odd last byte is the high byte of its big-endian
/// word, which in native order is `[b, 0]`.
fn sum_chunk(data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(8);
    let mut acc = 0u64;
    for w in &mut words {
        let w = u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        acc += (w & 0xffff_ffff) + (w >> 32);
    }
    let mut tail = words.remainder();
    if let [a, b, c, d, rest @ ..] = tail {
        acc += u64::from(u32::from_ne_bytes([*a, *b, *c, *d]));
        tail = rest;
    }
    if let [a, b, rest @ ..] = tail {
        acc += u64::from(u16::from_ne_bytes([*a, *b]));
        tail = rest;
    }
    if let [a] = tail {
        acc += u64::from(u16::from_ne_bytes([*a, 0]));
    }
    acc
}

/// The Internet checksum of `data`: the complement of [`sum`], ready to be written into a
/// checksum field that was zero while summing.
pub fn checksum(data: &[u8]) -> u16 {
    !sum(data)
}

/// Whether `data`, checksum field included, verifies (sums to `0xffff`).
pub fn verify(data: &[u8]) -> bool {
    sum(data) == 0xffff
}

/// Adds folded sums of separately summed, even-length pieces (ones'-complement addition).
pub fn combine(sums: &[u16]) -> u16 {
    let acc = sums.iter().fold(0u64, |acc, &s| acc + u64::from(s));
    fold(acc)
}

/// An incremental sum over pieces of any length, for checksums that span a pseudo-header,
/// a header and a payload held in different buffers.
///
/// A piece that starts at an odd offset of the whole has its bytes in swapped lanes; its sum
/// is byte-swapped before being added (RFC 1071 §2(B)), so pieces need not be even-sized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accumulator {
    acc: u64,
    odd: bool,
}

impl Accumulator {
    /// An empty sum.
    pub const fn new() -> Self {
        Self { acc: 0, odd: false }
    }

    /// Adds the next `data` bytes of the summed stream.
    pub fn add(&mut self, data: &[u8]) -> &mut Self {
        let s = sum(data);
        let s = if self.odd { s.swap_bytes() } else { s };
        self.acc += u64::from(s);
        self.odd ^= data.len() % 2 == 1;
        self
    }

    /// Adds a big-endian 16-bit word (for example a length field of a pseudo-header).
    pub fn add_u16(&mut self, word: u16) -> &mut Self {
        self.add(&word.to_be_bytes())
    }

    /// The folded sum so far (not complemented).
    pub fn sum(&self) -> u16 {
        fold(self.acc)
    }

    /// The checksum of everything added: the complement of [`sum`](Self::sum).
    pub fn checksum(&self) -> u16 {
        !self.sum()
    }
}

/// `a + b` with the carry out of bit 63 added back in (end-around carry).
#[inline(always)]
fn add_carry(a: u64, b: u64) -> u64 {
    let (s, carry) = a.overflowing_add(b);
    // When `carry` is set, `s <= 2^64 - 2`, so adding 1 cannot overflow.
    s + u64::from(carry)
}

/// Folds a 64-bit ones'-complement accumulator to 16 bits (2^16 ≡ 1 mod 0xffff), keeping
/// a non-zero sum non-zero.
fn fold(acc: u64) -> u16 {
    let (lo, carry) = (acc as u32).overflowing_add((acc >> 32) as u32);
    let acc = lo + u32::from(carry); // cannot overflow when carry is set
    let (lo, carry) = (acc as u16).overflowing_add((acc >> 16) as u16);
    lo + u16::from(carry)
}

/// Turns a sum of native-order words into the sum of big-endian words.
fn native_to_be(s: u16) -> u16 {
    if cfg!(target_endian = "little") {
        s.swap_bytes()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 1071 written the obvious way: big-endian 16-bit words, one at a time.
    fn reference_sum(data: &[u8]) -> u16 {
        let mut acc = 0u32;
        for pair in data.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |&b| u32::from(b));
            acc += hi | lo;
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_lengths_pad_on_the_right() {
        assert_eq!(sum(&[]), 0);
        assert_eq!(sum(&[0xab]), 0xab00);
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
        for len in 0..100 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(sum(&data), reference_sum(&data), "len {len}");
        }
    }

    #[test]
    fn carries_fold() {
        let data = [0xff; 1501];
        assert_eq!(sum(&data), reference_sum(&data));
        assert_eq!(sum(&[0xff, 0xff, 0x00, 0x01]), 0x0001);
    }

    #[test]
    fn filled_checksum_verifies() {
        let mut data = *b"\x00\x00\x00\x02\x00\x00\x00\x00\x03\x06\x00\x00";
        let c = checksum(&data);
        data[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(verify(&data));
        data[0] ^= 1;
        assert!(!verify(&data));
    }

    proptest! {
        #[test]
        fn matches_reference(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            prop_assert_eq!(sum(&data), reference_sum(&data));
        }

        #[test]
        fn accumulator_matches_one_pass(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(any::<usize>(), 0..5),
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
            cuts.sort_unstable();
            let mut acc = Accumulator::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([data.len()]) {
                acc.add(&data[start..cut]);
                start = cut;
            }
            // Folded sums may differ only between the two zeros 0x0000 and 0xffff.
            let (a, b) = (acc.sum(), reference_sum(&data));
            prop_assert!(a == b || (a % 0xffff == 0 && b % 0xffff == 0), "{a:#x} {b:#x}");
        }

        #[test]
        fn combine_of_even_pieces(a in proptest::collection::vec(any::<u16>(), 0..50),
                                  b in proptest::collection::vec(any::<u16>(), 0..50)) {
            let a: Vec<u8> = a.iter().flat_map(|w| w.to_be_bytes()).collect();
            let b: Vec<u8> = b.iter().flat_map(|w| w.to_be_bytes()).collect();
            let whole: Vec<u8> = a.iter().chain(&b).copied().collect();
            let (c, r) = (combine(&[sum(&a), sum(&b)]), reference_sum(&whole));
            prop_assert!(c == r || (c % 0xffff == 0 && r % 0xffff == 0));
        }
    }
}
