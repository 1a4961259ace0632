//! The TCP segment that carries the reliable byte stream after the SAL header.
//!
//! The layout is RFC 9293 §3.1 byte for byte, so captures decode in any TCP dissector:
//!
//! ```text
//! bytes  0..2   source port       always 0 on send, ignored on receive (SAL demultiplexes)
//! bytes  2..4   destination port  always 0 on send, ignored on receive
//! bytes  4..8   sequence number
//! bytes  8..12  acknowledgment number
//! byte   12     data offset (high 4 bits, in 32-bit words) | reserved
//! byte   13     flags: CWR ECE URG ACK PSH RST SYN FIN (bit 7 .. bit 0)
//! bytes 14..16  window
//! bytes 16..18  checksum          0 on send, ignored on receive (see below)
//! bytes 18..20  urgent pointer    0 on send, ignored on receive
//! bytes 20..    options (data offset × 4 − 20 bytes), then payload
//! ```
//!
//! **Checksum.** The original computed the standard TCP checksum over an IPv4 pseudo-header
//! of the *current* addresses, which every forwarder and every migration had to recompute
//! (`SERVAL-ORIGINAL.md` §8.1). We carry the SAL in UDP only: the outer UDP checksum already
//! covers the whole datagram (SAL header, TCP header and payload), and the SAL header has its
//! own integrity protection, so a second sum over the same bytes adds nothing. The field is
//! therefore written as 0 and never checked, and addresses can change under a flow without
//! touching its segments.
//!
//! **Urgent data** is not supported (RFC 6093 discourages it): URG and the urgent pointer are
//! ignored on receive, so urgent bytes are delivered in line like any other.
//!
//! **Options** understood: EOL, NOP, MSS (RFC 9293), window scale and timestamps
//! (RFC 7323), SACK-permitted and SACK (RFC 2018). Unknown kinds are skipped by their length
//! byte. A known kind with the wrong length, or any length byte that is < 2 or runs past the
//! header, makes the segment [`Error::Malformed`] (RFC 9293 §3.1: "a TCP implementation MUST
//! be prepared to handle an illegal option length (e.g., zero); a suggested procedure is to
//! reset the connection" — we drop the segment, which the SAL counts).

use core::fmt;
use core::ops::{Add, BitOr, BitOrAssign, Sub};

use super::{Error, Result};

/// A 32-bit TCP sequence number with wrapping (serial-number) comparison.
///
/// `a < b` means "`b` is ahead of `a` by less than 2^31" (RFC 1982 style). This is not a
/// total order over all values, which is why only [`PartialOrd`] is implemented; it is the
/// order RFC 9293 §3.4 uses for every window test, and it is total inside any window of
/// less than 2^31 bytes (windows are at most 2^30 with scaling).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SeqNumber(pub u32);

impl SeqNumber {
    /// Signed distance from `other` to `self` (positive when `self` is ahead).
    pub const fn diff(self, other: Self) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }

    /// `self + n`, wrapping.
    pub const fn wrapping_add(self, n: u32) -> Self {
        Self(self.0.wrapping_add(n))
    }
}

impl PartialOrd for SeqNumber {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.diff(*other).cmp(&0))
    }
}

impl Add<u32> for SeqNumber {
    type Output = Self;
    fn add(self, n: u32) -> Self {
        self.wrapping_add(n)
    }
}

impl Sub for SeqNumber {
    type Output = i32;
    /// Signed wrapping distance, see [`SeqNumber::diff`].
    fn sub(self, other: Self) -> i32 {
        self.diff(other)
    }
}

impl fmt::Debug for SeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for SeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The eight TCP header flag bits (byte 13).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Flags(pub u8);

impl Flags {
    /// No more data from sender.
    pub const FIN: Self = Self(0x01);
    /// Synchronize sequence numbers.
    pub const SYN: Self = Self(0x02);
    /// Reset the connection.
    pub const RST: Self = Self(0x04);
    /// Push function.
    pub const PSH: Self = Self(0x08);
    /// The acknowledgment field is significant.
    pub const ACK: Self = Self(0x10);
    /// The urgent pointer is significant (ignored by this stack).
    pub const URG: Self = Self(0x20);
    /// ECN-Echo (RFC 3168).
    pub const ECE: Self = Self(0x40);
    /// Congestion Window Reduced (RFC 3168).
    pub const CWR: Self = Self(0x80);
    /// No flag.
    pub const EMPTY: Self = Self(0);

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` with the bits of `other` cleared.
    pub const fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// Whether no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl BitOr for Flags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(Flags, &str); 8] = [
            (Flags::SYN, "SYN"),
            (Flags::FIN, "FIN"),
            (Flags::RST, "RST"),
            (Flags::PSH, "PSH"),
            (Flags::ACK, "ACK"),
            (Flags::URG, "URG"),
            (Flags::ECE, "ECE"),
            (Flags::CWR, "CWR"),
        ];
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// Length of the fixed TCP header.
pub const HEADER_LEN: usize = 20;
/// Largest header: the data offset is 4 bits of 32-bit words.
pub const MAX_HEADER_LEN: usize = 60;
/// Room for options in the largest header.
pub const MAX_OPTIONS_LEN: usize = MAX_HEADER_LEN - HEADER_LEN;
/// Most SACK blocks one option can carry (RFC 2018 §3: 4 without timestamps).
pub const MAX_SACK_BLOCKS: usize = 4;
/// Largest window-scale shift (RFC 7323 §2.3).
pub const MAX_WINDOW_SCALE: u8 = 14;

mod field {
    pub(super) type Field = core::ops::Range<usize>;
    pub(super) const SRC_PORT: Field = 0..2;
    pub(super) const DST_PORT: Field = 2..4;
    pub(super) const SEQ: Field = 4..8;
    pub(super) const ACK: Field = 8..12;
    pub(super) const DATA_OFFSET: usize = 12;
    pub(super) const FLAGS: usize = 13;
    pub(super) const WINDOW: Field = 14..16;
    pub(super) const CHECKSUM: Field = 16..18;
    pub(super) const URGENT: Field = 18..20;
}

mod opt {
    pub(super) const EOL: u8 = 0;
    pub(super) const NOP: u8 = 1;
    pub(super) const MSS: u8 = 2;
    pub(super) const WINDOW_SCALE: u8 = 3;
    pub(super) const SACK_PERMITTED: u8 = 4;
    pub(super) const SACK: u8 = 5;
    pub(super) const TIMESTAMP: u8 = 8;
}

/// A read/write wrapper around a TCP segment buffer.
///
/// Once [`Packet::new_checked`] (or [`Packet::check_len`]) has succeeded, no accessor or
/// setter panics.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it (use for emitting into a buffer of the right size).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer and checks that the fixed header and the declared options fit.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// [`Error::Truncated`] if the buffer is shorter than the header (fixed part or declared
    /// data offset), [`Error::Malformed`] if the data offset is below 5 words.
    pub fn check_len(&self) -> Result<()> {
        let buf = self.buffer.as_ref();
        if buf.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if buf.len() < header_len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn u16_at(&self, f: field::Field) -> u16 {
        let b = &self.buffer.as_ref()[f];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn u32_at(&self, f: field::Field) -> u32 {
        let b = &self.buffer.as_ref()[f];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Source port (always 0 in this profile).
    pub fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT)
    }

    /// Destination port (always 0 in this profile).
    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT)
    }

    /// Sequence number.
    pub fn seq_number(&self) -> SeqNumber {
        SeqNumber(self.u32_at(field::SEQ))
    }

    /// Acknowledgment number (meaningful only with [`Flags::ACK`]).
    pub fn ack_number(&self) -> SeqNumber {
        SeqNumber(self.u32_at(field::ACK))
    }

    /// Header length in bytes (data offset × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    /// The flag byte.
    pub fn flags(&self) -> Flags {
        Flags(self.buffer.as_ref()[field::FLAGS])
    }

    /// Raw (unscaled) window field.
    pub fn window_len(&self) -> u16 {
        self.u16_at(field::WINDOW)
    }

    /// Checksum field (0 in this profile, never verified).
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    /// Urgent pointer field (ignored).
    pub fn urgent_at(&self) -> u16 {
        self.u16_at(field::URGENT)
    }

    /// The option bytes.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The payload after the options.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_u16(&mut self, f: field::Field, v: u16) {
        self.buffer.as_mut()[f].copy_from_slice(&v.to_be_bytes());
    }

    fn set_u32(&mut self, f: field::Field, v: u32) {
        self.buffer.as_mut()[f].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the source port.
    pub fn set_src_port(&mut self, v: u16) {
        self.set_u16(field::SRC_PORT, v);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, v: u16) {
        self.set_u16(field::DST_PORT, v);
    }

    /// Sets the sequence number.
    pub fn set_seq_number(&mut self, v: SeqNumber) {
        self.set_u32(field::SEQ, v.0);
    }

    /// Sets the acknowledgment number.
    pub fn set_ack_number(&mut self, v: SeqNumber) {
        self.set_u32(field::ACK, v.0);
    }

    /// Sets the header length in bytes (rounded down to 32-bit words; reserved bits cleared).
    pub fn set_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::DATA_OFFSET] = (((len / 4) & 0xf) as u8) << 4;
    }

    /// Sets the flag byte.
    pub fn set_flags(&mut self, flags: Flags) {
        self.buffer.as_mut()[field::FLAGS] = flags.0;
    }

    /// Sets the raw window field.
    pub fn set_window_len(&mut self, v: u16) {
        self.set_u16(field::WINDOW, v);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.set_u16(field::CHECKSUM, v);
    }

    /// Sets the urgent pointer.
    pub fn set_urgent_at(&mut self, v: u16) {
        self.set_u16(field::URGENT, v);
    }

    /// The option bytes, mutably.
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    /// The payload, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }
}

/// One SACK block: bytes `[left, right)` received (RFC 2018 §3).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SackBlock {
    /// First sequence number of the block.
    pub left: SeqNumber,
    /// Sequence number just past the block.
    pub right: SeqNumber,
}

/// Up to [`MAX_SACK_BLOCKS`] SACK blocks, most important first (RFC 2018 §4: the first
/// block reports the most recently received segment; RFC 2883: or a duplicate).
#[derive(Clone, Copy, Default)]
pub struct SackBlocks {
    blocks: [SackBlock; MAX_SACK_BLOCKS],
    len: u8,
}

impl SackBlocks {
    /// No block.
    pub const EMPTY: Self = Self {
        blocks: [SackBlock {
            left: SeqNumber(0),
            right: SeqNumber(0),
        }; 4],
        len: 0,
    };

    /// Appends a block; `false` (and nothing stored) when all four slots are used.
    pub fn push(&mut self, block: SackBlock) -> bool {
        let Some(slot) = self.blocks.get_mut(usize::from(self.len)) else {
            return false;
        };
        *slot = block;
        self.len += 1;
        true
    }

    /// The blocks, in order.
    pub fn as_slice(&self) -> &[SackBlock] {
        &self.blocks[..usize::from(self.len).min(MAX_SACK_BLOCKS)]
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether there is no block.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the first `n` blocks.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(u8::try_from(n).unwrap_or(u8::MAX));
    }
}

impl PartialEq for SackBlocks {
    /// Compares the blocks in use only.
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for SackBlocks {}

impl fmt::Debug for SackBlocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl FromIterator<SackBlock> for SackBlocks {
    /// Collects up to four blocks; later ones are dropped.
    fn from_iter<I: IntoIterator<Item = SackBlock>>(iter: I) -> Self {
        let mut blocks = Self::EMPTY;
        for b in iter {
            if !blocks.push(b) {
                break;
            }
        }
        blocks
    }
}

/// The timestamps option (RFC 7323 §3).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Timestamps {
    /// The sender's timestamp clock.
    pub tsval: u32,
    /// The most recent TSval received from the peer (0 when none, e.g. in a SYN).
    pub tsecr: u32,
}

/// The validated meaning of a TCP segment.
///
/// Invariants kept by [`TcpRepr::parse`] and assumed by [`TcpRepr::emit`]: `flags` never
/// holds [`Flags::ACK`] (it is derived from `ack_number`) nor [`Flags::URG`] (unsupported);
/// `window_scale` is at most [`MAX_WINDOW_SCALE`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TcpRepr<'a> {
    /// Sequence number of the first octet (or of the SYN/FIN).
    pub seq_number: SeqNumber,
    /// `Some` iff the ACK flag is set.
    pub ack_number: Option<SeqNumber>,
    /// SYN, FIN, RST, PSH, ECE, CWR (ACK and URG are stripped, see the type doc).
    pub flags: Flags,
    /// Raw window field (scaled by the peer's shift outside SYNs).
    pub window_len: u16,
    /// MSS option (SYN only by convention).
    pub max_seg_size: Option<u16>,
    /// Window-scale shift (SYN only), clamped to 14 on receive (RFC 7323 §2.3).
    pub window_scale: Option<u8>,
    /// SACK-permitted option (SYN only).
    pub sack_permitted: bool,
    /// SACK blocks. [`TcpRepr::emit`] writes only as many as fit in the 40 option bytes
    /// next to the other options; later blocks are the ones dropped.
    pub sack_blocks: SackBlocks,
    /// Timestamps option.
    pub timestamps: Option<Timestamps>,
    /// Segment data.
    pub payload: &'a [u8],
}

impl Default for TcpRepr<'_> {
    fn default() -> Self {
        Self {
            seq_number: SeqNumber(0),
            ack_number: None,
            flags: Flags::EMPTY,
            window_len: 0,
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            sack_blocks: SackBlocks::EMPTY,
            timestamps: None,
            payload: &[],
        }
    }
}

impl<'a> TcpRepr<'a> {
    /// Parses a checked or unchecked packet; never panics (the length check is repeated).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Self> {
        packet.check_len()?;
        let bytes: &'a [u8] = packet.buffer.as_ref();
        let header_len = packet.header_len();
        let flags = packet.flags();
        let mut repr = Self {
            seq_number: packet.seq_number(),
            ack_number: flags.contains(Flags::ACK).then(|| packet.ack_number()),
            flags: flags.without(Flags::ACK).without(Flags::URG),
            window_len: packet.window_len(),
            payload: &bytes[header_len..],
            ..Self::default()
        };
        repr.parse_options(&bytes[HEADER_LEN..header_len])?;
        Ok(repr)
    }

    /// Parses `bytes` as one whole segment (header, options, payload).
    pub fn parse_bytes(bytes: &'a [u8]) -> Result<Self> {
        Self::parse(&Packet::new_unchecked(bytes))
    }

    fn parse_options(&mut self, mut options: &[u8]) -> Result<()> {
        while let Some((&kind, rest)) = options.split_first() {
            match kind {
                opt::EOL => break,
                opt::NOP => {
                    options = rest;
                    continue;
                }
                _ => {}
            }
            let &len = rest.first().ok_or(Error::Malformed)?;
            let len = usize::from(len);
            if len < 2 || len > options.len() {
                return Err(Error::Malformed);
            }
            self.parse_option(kind, &options[2..len])?;
            options = &options[len..];
        }
        Ok(())
    }

    fn parse_option(&mut self, kind: u8, body: &[u8]) -> Result<()> {
        match (kind, body) {
            (opt::MSS, &[a, b]) => self.max_seg_size = Some(u16::from_be_bytes([a, b])),
            //= RFC 7323 §2.3
            //# If a Window Scale option is received with a shift.cnt value larger than 14,
            //# the TCP SHOULD log the error but MUST use 14 instead of the specified value.
            (opt::WINDOW_SCALE, &[shift]) => {
                self.window_scale = Some(shift.min(MAX_WINDOW_SCALE));
            }
            (opt::SACK_PERMITTED, &[]) => self.sack_permitted = true,
            (opt::SACK, body) if !body.is_empty() && body.len() % 8 == 0 => {
                let mut blocks = SackBlocks::EMPTY;
                for chunk in body.chunks_exact(8) {
                    let left = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                    let right = u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
                    blocks.push(SackBlock {
                        left: SeqNumber(left),
                        right: SeqNumber(right),
                    });
                }
                self.sack_blocks = blocks;
            }
            (opt::TIMESTAMP, &[a, b, c, d, e, f, g, h]) => {
                self.timestamps = Some(Timestamps {
                    tsval: u32::from_be_bytes([a, b, c, d]),
                    tsecr: u32::from_be_bytes([e, f, g, h]),
                });
            }
            (
                opt::MSS | opt::WINDOW_SCALE | opt::SACK_PERMITTED | opt::SACK | opt::TIMESTAMP,
                _,
            ) => {
                return Err(Error::Malformed);
            }
            // Unknown kinds are skipped by length (RFC 9293 §3.1).
            _ => {}
        }
        Ok(())
    }

    /// Sequence space the segment occupies: payload plus one for SYN and one for FIN.
    pub fn segment_len(&self) -> usize {
        self.payload.len()
            + usize::from(self.flags.contains(Flags::SYN))
            + usize::from(self.flags.contains(Flags::FIN))
    }

    /// Option bytes before SACK blocks (each option group padded with NOPs to 4 bytes).
    fn base_options_len(&self) -> usize {
        let mut len = 0;
        if self.max_seg_size.is_some() {
            len += 4;
        }
        if self.window_scale.is_some() {
            len += 4;
        }
        len += match (self.sack_permitted, self.timestamps.is_some()) {
            // SACK-permitted (2) + timestamps (10) pack into 12 bytes with no padding.
            (true, true) | (false, true) => 12,
            (true, false) => 4,
            (false, false) => 0,
        };
        len
    }

    /// How many SACK blocks [`TcpRepr::emit`] writes (those that fit in 40 option bytes).
    pub fn emitted_sack_blocks(&self) -> usize {
        let room = MAX_OPTIONS_LEN.saturating_sub(self.base_options_len());
        // NOP NOP kind len + 8 per block
        let fit = room.saturating_sub(4) / 8;
        self.sack_blocks.len().min(fit)
    }

    /// Bytes of options, a multiple of 4.
    pub fn options_len(&self) -> usize {
        let sack = self.emitted_sack_blocks();
        self.base_options_len() + if sack > 0 { 4 + 8 * sack } else { 0 }
    }

    /// Header length including options.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len()
    }

    /// Total length of the emitted segment.
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Writes the segment into `packet`: ports, checksum and urgent pointer are 0.
    ///
    /// # Panics
    ///
    /// If the buffer is shorter than [`TcpRepr::buffer_len`]. Emitting is done into buffers
    /// the stack sizes itself, never into peer-controlled ones.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_src_port(0);
        packet.set_dst_port(0);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number.unwrap_or_default());
        packet.set_header_len(self.header_len());
        let mut flags = self.flags.without(Flags::ACK).without(Flags::URG);
        if self.ack_number.is_some() {
            flags |= Flags::ACK;
        }
        packet.set_flags(flags);
        packet.set_window_len(self.window_len);
        packet.set_checksum(0);
        packet.set_urgent_at(0);
        self.emit_options(packet.options_mut());
        packet.payload_mut()[..self.payload.len()].copy_from_slice(self.payload);
    }

    fn emit_options(&self, out: &mut [u8]) {
        let mut w = Writer { out, pos: 0 };
        if let Some(mss) = self.max_seg_size {
            w.put(&[opt::MSS, 4]);
            w.put(&mss.to_be_bytes());
        }
        if let Some(shift) = self.window_scale {
            w.put(&[opt::NOP, opt::WINDOW_SCALE, 3, shift]);
        }
        match (self.sack_permitted, self.timestamps) {
            (true, Some(ts)) => {
                w.put(&[opt::SACK_PERMITTED, 2]);
                w.put_timestamps(ts);
            }
            (false, Some(ts)) => {
                w.put(&[opt::NOP, opt::NOP]);
                w.put_timestamps(ts);
            }
            (true, None) => w.put(&[opt::NOP, opt::NOP, opt::SACK_PERMITTED, 2]),
            (false, None) => {}
        }
        let blocks = &self.sack_blocks.as_slice()[..self.emitted_sack_blocks()];
        if !blocks.is_empty() {
            // At most 4 blocks: 2 + 32 < 256.
            w.put(&[opt::NOP, opt::NOP, opt::SACK, (2 + 8 * blocks.len()) as u8]);
            for b in blocks {
                w.put(&b.left.0.to_be_bytes());
                w.put(&b.right.0.to_be_bytes());
            }
        }
    }
}

struct Writer<'b> {
    out: &'b mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.out[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }

    fn put_timestamps(&mut self, ts: Timestamps) {
        self.put(&[opt::TIMESTAMP, 10]);
        self.put(&ts.tsval.to_be_bytes());
        self.put(&ts.tsecr.to_be_bytes());
    }
}

impl fmt::Display for TcpRepr<'_> {
    /// tcpdump-like one-liner for traces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TCP [{:?}] seq={}", self.flags, self.seq_number)?;
        if let Some(ack) = self.ack_number {
            write!(f, " ack={ack}")?;
        }
        write!(f, " win={} len={}", self.window_len, self.payload.len())?;
        if let Some(mss) = self.max_seg_size {
            write!(f, " mss={mss}")?;
        }
        if let Some(ws) = self.window_scale {
            write!(f, " wscale={ws}")?;
        }
        if self.sack_permitted {
            f.write_str(" sackOK")?;
        }
        if let Some(ts) = self.timestamps {
            write!(f, " TS val {} ecr {}", ts.tsval, ts.tsecr)?;
        }
        for b in self.sack_blocks.as_slice() {
            write!(f, " sack {}-{}", b.left, b.right)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn emit_vec(repr: &TcpRepr<'_>) -> Vec<u8> {
        let mut buf = vec![0xAA; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
        buf
    }

    #[test]
    fn syn_layout_is_rfc_9293() {
        let repr = TcpRepr {
            seq_number: SeqNumber(0x0102_0304),
            flags: Flags::SYN,
            window_len: 65535,
            max_seg_size: Some(1400),
            window_scale: Some(7),
            sack_permitted: true,
            timestamps: Some(Timestamps {
                tsval: 0x1122_3344,
                tsecr: 0,
            }),
            ..TcpRepr::default()
        };
        let bytes = emit_vec(&repr);
        assert_eq!(bytes.len(), 40);
        assert_eq!(&bytes[..4], &[0, 0, 0, 0], "ports are 0");
        assert_eq!(&bytes[4..8], &[1, 2, 3, 4]);
        assert_eq!(bytes[12], 10 << 4, "data offset 10 words");
        assert_eq!(bytes[13], 0x02, "SYN only");
        assert_eq!(&bytes[16..20], &[0, 0, 0, 0], "checksum and urgent 0");
        assert_eq!(&bytes[20..24], &[2, 4, 0x05, 0x78], "MSS 1400");
        assert_eq!(&bytes[24..28], &[1, 3, 3, 7], "NOP wscale 7");
        assert_eq!(&bytes[28..32], &[4, 2, 8, 10], "sackOK then TS");
        assert_eq!(TcpRepr::parse_bytes(&bytes), Ok(repr));
    }

    #[test]
    fn ack_flag_follows_ack_number() {
        let repr = TcpRepr {
            ack_number: Some(SeqNumber(9)),
            flags: Flags::FIN | Flags::PSH,
            payload: b"hi",
            ..TcpRepr::default()
        };
        let bytes = emit_vec(&repr);
        assert_eq!(bytes[13], 0x19);
        let back = TcpRepr::parse_bytes(&bytes).unwrap();
        assert_eq!(back, repr);
        assert_eq!(back.payload, b"hi");
        assert_eq!(back.segment_len(), 3);
    }

    #[test]
    fn checksum_and_ports_ignored_on_receive() {
        let mut bytes = emit_vec(&TcpRepr {
            payload: b"x",
            ..TcpRepr::default()
        });
        bytes[0] = 0x12;
        bytes[3] = 0x34;
        bytes[16] = 0xde;
        bytes[17] = 0xad;
        assert_eq!(TcpRepr::parse_bytes(&bytes).unwrap().payload, b"x");
    }

    #[test]
    fn sack_blocks_beyond_option_space_are_dropped() {
        let mut blocks = SackBlocks::EMPTY;
        for i in 0..4 {
            blocks.push(SackBlock {
                left: SeqNumber(i * 10),
                right: SeqNumber(i * 10 + 5),
            });
        }
        let repr = TcpRepr {
            ack_number: Some(SeqNumber(0)),
            timestamps: Some(Timestamps::default()),
            sack_blocks: blocks,
            ..TcpRepr::default()
        };
        assert_eq!(
            repr.emitted_sack_blocks(),
            3,
            "RFC 2018: 3 blocks with timestamps"
        );
        assert_eq!(repr.header_len(), 60);
        let bytes = emit_vec(&repr);
        let back = TcpRepr::parse_bytes(&bytes).unwrap();
        assert_eq!(back.sack_blocks.as_slice(), &blocks.as_slice()[..3]);
        let no_ts = TcpRepr {
            timestamps: None,
            ..repr
        };
        assert_eq!(no_ts.emitted_sack_blocks(), 4);
    }

    #[test]
    fn options_edge_cases() {
        let mut bytes = emit_vec(&TcpRepr::default());
        // Header with 8 option bytes: unknown kind 30 (len 4), NOP, window scale 20 -> 14.
        bytes[12] = 7 << 4;
        bytes.extend_from_slice(&[30, 4, 9, 9, 1, 3, 3, 20]);
        let repr = TcpRepr::parse_bytes(&bytes).unwrap();
        assert_eq!(repr.window_scale, Some(14));

        // Zero length option byte.
        let n = bytes.len();
        bytes[n - 8..].copy_from_slice(&[30, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(TcpRepr::parse_bytes(&bytes), Err(Error::Malformed));
        // Known kind with the wrong length.
        bytes[n - 8..].copy_from_slice(&[2, 3, 0, 0, 0, 0, 0, 0]);
        assert_eq!(TcpRepr::parse_bytes(&bytes), Err(Error::Malformed));
        // Length running past the header.
        bytes[n - 8..].copy_from_slice(&[1, 1, 1, 1, 1, 1, 30, 4]);
        assert_eq!(TcpRepr::parse_bytes(&bytes), Err(Error::Malformed));
        // EOL stops parsing; garbage after it is ignored.
        bytes[n - 8..].copy_from_slice(&[0, 0xff, 0xff, 0, 0, 0, 0, 0]);
        assert!(TcpRepr::parse_bytes(&bytes).is_ok());
    }

    #[test]
    fn length_checks() {
        assert_eq!(TcpRepr::parse_bytes(&[0; 19]), Err(Error::Truncated));
        let mut bytes = [0u8; 20];
        bytes[12] = 4 << 4;
        assert_eq!(TcpRepr::parse_bytes(&bytes), Err(Error::Malformed));
        bytes[12] = 6 << 4;
        assert_eq!(TcpRepr::parse_bytes(&bytes), Err(Error::Truncated));
    }

    #[test]
    fn seq_numbers_compare_serially() {
        let a = SeqNumber(u32::MAX - 1);
        let b = a + 5;
        assert_eq!(b, SeqNumber(3));
        assert!(a < b);
        assert!(b > a, "serial order holds across the wrap");
        assert_eq!(b - a, 5);
        assert_eq!(a - b, -5);
    }

    fn any_repr() -> impl Strategy<Value = (TcpRepr<'static>, Vec<u8>)> {
        let blocks = proptest::collection::vec((any::<u32>(), any::<u32>()), 0..=4);
        (
            (
                any::<u32>(),
                proptest::option::of(any::<u32>()),
                any::<u8>(),
                any::<u16>(),
            ),
            (
                proptest::option::of(any::<u16>()),
                proptest::option::of(0u8..=14),
                any::<bool>(),
                proptest::option::of((any::<u32>(), any::<u32>())),
            ),
            blocks,
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(
                |((seq, ack, flags, win), (mss, ws, sack_ok, ts), blocks, payload)| {
                    let repr = TcpRepr {
                        seq_number: SeqNumber(seq),
                        ack_number: ack.map(SeqNumber),
                        flags: Flags(flags).without(Flags::ACK).without(Flags::URG),
                        window_len: win,
                        max_seg_size: mss,
                        window_scale: ws,
                        sack_permitted: sack_ok,
                        sack_blocks: blocks
                            .into_iter()
                            .map(|(l, r)| SackBlock {
                                left: SeqNumber(l),
                                right: SeqNumber(r),
                            })
                            .collect(),
                        timestamps: ts.map(|(tsval, tsecr)| Timestamps { tsval, tsecr }),
                        payload: &[],
                    };
                    (repr, payload)
                },
            )
    }

    proptest! {
        #[test]
        fn roundtrip((repr, payload) in any_repr()) {
            let repr = TcpRepr { payload: &payload, ..repr };
            let bytes = emit_vec(&repr);
            prop_assert_eq!(bytes.len(), repr.buffer_len());
            let mut expected = repr;
            expected.sack_blocks.truncate(repr.emitted_sack_blocks());
            prop_assert_eq!(TcpRepr::parse_bytes(&bytes), Ok(expected));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = (packet.options(), packet.payload(), packet.flags());
            }
            if let Ok(repr) = TcpRepr::parse_bytes(&bytes) {
                // Whatever parses re-emits and re-parses to itself (minus dropped SACK blocks).
                let again = emit_vec(&repr);
                let mut expected = repr;
                expected.sack_blocks.truncate(repr.emitted_sack_blocks());
                prop_assert_eq!(TcpRepr::parse_bytes(&again), Ok(expected));
            }
        }

        #[test]
        fn options_soup_never_panics(opts in proptest::collection::vec(any::<u8>(), 0..=40)) {
            let mut bytes = vec![0u8; 20];
            let words = opts.len().div_ceil(4);
            bytes[12] = ((5 + words) as u8) << 4;
            bytes.extend_from_slice(&opts);
            bytes.resize(20 + 4 * words, 0);
            let _ = TcpRepr::parse_bytes(&bytes);
        }
    }
}
