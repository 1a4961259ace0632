//! Control-plane messages: registrations, service-table edits, DELAY verdicts, statistics.
//!
//! Every message is an 8-byte header and a body of a fixed layout per type, all integers
//! big-endian (the original mixed host and network order, `SERVAL-ORIGINAL.md` §5.1).
//!
//! ```text
//! 0 type (u8) | 1 retval (u8) | 2 len (u16, whole message) | 4 xid (u32) | 8 body ...
//! ```
//!
//! Type numbers are the original's where the message is kept; RESOLVE (2), MOD_SERVICE (5),
//! CAPABILITIES (8), MIGRATE (9) and DUMMY (14) are not part of our profile and parse as
//! [`Error::Unsupported`]. Lists (service records, flow ids, flow statistics) are read in
//! place through [`Records`], validated once and never copied into a heap buffer.
//! REGISTER/UNREGISTER carry a MAC field; [`ControlMsg::with_mac_input`] hands the caller the
//! bytes to authenticate. Layouts and test vectors: `docs/PROTOCOL.md` §3.

use core::fmt;
use core::net::SocketAddr;

use super::sal::Protocol;
use super::{Error, FlowId, Result, SERVICE_ID_LEN, ServiceId, ServicePrefix, sockaddr};

/// Length of the common header.
pub const HEADER_LEN: usize = 8;
/// Longest message (the `len` field is a `u16`).
pub const MAX_MSG_LEN: usize = u16::MAX as usize;
/// Length of a whole REGISTER / UNREGISTER message.
pub const REGISTER_MSG_LEN: usize = HEADER_LEN + 88;
/// Length of the MAC field of a registration.
pub const REGISTER_MAC_LEN: usize = 16;
/// Length of a whole DELAY_NOTIFY / DELAY_VERDICT message.
pub const DELAY_MSG_LEN: usize = HEADER_LEN + 44;
/// Length of the SERVICE_STAT reply body.
pub const TABLE_STATS_LEN: usize = 64;
/// Bytes of the STATS_RESP body before its records.
const STATS_RESP_PREFIX: usize = 8;
/// Most body bytes before a list (STATS_RESP), used to bound every list the same way.
const MAX_LIST_PREFIX: usize = HEADER_LEN + STATS_RESP_PREFIX;

/// Message type (header byte 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    /// An instance announces a service (to a router).
    Register = 0,
    /// An instance withdraws a service.
    Unregister = 1,
    /// Add service-table rules.
    AddService = 3,
    /// Delete service-table rules.
    DelService = 4,
    /// Look up rules (request: one record; reply: the matching targets).
    GetService = 6,
    /// Service-table statistics (request: empty body; reply: [`TableStats`]).
    ServiceStat = 7,
    /// Ask for per-flow statistics (a list of flow ids; empty = all flows).
    StatsQuery = 10,
    /// Per-flow statistics.
    StatsResp = 11,
    /// A packet hit a DELAY rule and waits for a verdict.
    DelayNotify = 12,
    /// Release or drop a delayed packet.
    DelayVerdict = 13,
}

impl MsgType {
    /// The type for a header byte; the original's other types are [`Error::Unsupported`].
    pub fn from_u8(b: u8) -> Result<Self> {
        Ok(match b {
            0 => Self::Register,
            1 => Self::Unregister,
            3 => Self::AddService,
            4 => Self::DelService,
            6 => Self::GetService,
            7 => Self::ServiceStat,
            10 => Self::StatsQuery,
            11 => Self::StatsResp,
            12 => Self::DelayNotify,
            13 => Self::DelayVerdict,
            _ => return Err(Error::Unsupported),
        })
    }
}

/// Result code (header byte 1): requests carry [`RetVal::Ok`], replies say how it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum RetVal {
    /// Success (and every request).
    #[default]
    Ok = 0,
    /// Failed for another reason.
    Error = 1,
    /// No such service or rule.
    NoEntry = 2,
    /// The request did not parse or made no sense.
    Malformed = 3,
    /// Ours: the registration's MAC did not verify (or its key id is unknown).
    Unauthenticated = 4,
    /// Ours: the registration's sequence number is not newer than the last one seen.
    Stale = 5,
}

impl RetVal {
    /// The code for a header byte; unknown codes are [`Error::Malformed`].
    pub fn from_u8(b: u8) -> Result<Self> {
        Ok(match b {
            0 => Self::Ok,
            1 => Self::Error,
            2 => Self::NoEntry,
            3 => Self::Malformed,
            4 => Self::Unauthenticated,
            5 => Self::Stale,
            _ => return Err(Error::Malformed),
        })
    }
}

/// A control message over a buffer: the header read in place.
///
/// After [`check_len`](Self::check_len) (done by [`new_checked`](Self::new_checked)) no
/// accessor panics. Bytes past `len` are not part of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checks (for emitting).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` and checks that the header and `len` fit.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// At least 8 bytes and `8 <= len <= buffer length` ([`Error::Truncated`] /
    /// [`Error::Malformed`] for a `len` below the header).
    pub fn check_len(&self) -> Result<()> {
        let buf_len = self.buffer.as_ref().len();
        if buf_len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let len = usize::from(self.msg_len());
        if len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len > buf_len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The raw type byte (see [`MsgType::from_u8`]).
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    /// The raw retval byte (see [`RetVal::from_u8`]).
    pub fn retval(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    /// The `len` field: the whole message, header included.
    pub fn msg_len(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }

    /// The transaction id, echoed in replies.
    pub fn xid(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([b[4], b[5], b[6], b[7]])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The body: bytes 8 to `len`.
    pub fn body(&self) -> &'a [u8] {
        let len = usize::from(self.msg_len());
        &self.buffer.as_ref()[HEADER_LEN..len]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the type byte.
    pub fn set_msg_type(&mut self, t: MsgType) {
        self.buffer.as_mut()[0] = t as u8;
    }

    /// Sets the retval byte.
    pub fn set_retval(&mut self, r: RetVal) {
        self.buffer.as_mut()[1] = r as u8;
    }

    /// Sets the `len` field.
    pub fn set_msg_len(&mut self, len: u16) {
        self.buffer.as_mut()[2..4].copy_from_slice(&len.to_be_bytes());
    }

    /// Sets the transaction id.
    pub fn set_xid(&mut self, xid: u32) {
        self.buffer.as_mut()[4..8].copy_from_slice(&xid.to_be_bytes());
    }

    /// The body, mutable (bytes 8 to `len`).
    pub fn body_mut(&mut self) -> &mut [u8] {
        let len = usize::from(self.msg_len());
        &mut self.buffer.as_mut()[HEADER_LEN..len]
    }
}

/// Sequential big-endian reads over a body; running out is [`Error::Truncated`].
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(Error::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.take(N)?.try_into().map_err(|_| Error::Truncated)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64> {
        self.array().map(u64::from_be_bytes)
    }

    fn service_id(&mut self) -> Result<ServiceId> {
        self.array::<SERVICE_ID_LEN>().map(ServiceId::from_bytes)
    }

    fn sockaddr(&mut self) -> Result<Option<SocketAddr>> {
        sockaddr::read_fixed(self.take(sockaddr::FIXED_LEN)?)
    }

    /// A prefix length (u16, 0..=256) and, later in the layout, its id: bits set past the
    /// length are [`Error::Malformed`] (one meaning, one encoding).
    fn prefix(len: u16, id: ServiceId) -> Result<ServicePrefix> {
        let prefix = ServicePrefix::new(id, len).map_err(|_| Error::Malformed)?;
        if *prefix.id() != id {
            return Err(Error::Malformed);
        }
        Ok(prefix)
    }
}

/// Sequential big-endian writes.
///
/// Panics when the buffer is too short: buffers are sized by `buffer_len`, so that is a
/// local bug, never input-driven.
struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
        self
    }

    fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes(&[v])
    }

    fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    fn zeros(&mut self, n: usize) -> &mut Self {
        self.buf[self.pos..self.pos + n].fill(0);
        self.pos += n;
        self
    }

    fn sockaddr(&mut self, addr: Option<&SocketAddr>) -> &mut Self {
        sockaddr::write_fixed(&mut self.buf[self.pos..], addr);
        self.pos += sockaddr::FIXED_LEN;
        self
    }
}

/// REGISTER / UNREGISTER body (88 bytes): a service instance announcing itself to a router.
///
/// ```text
///  8 flags (0x01 RE_REGISTER) | 9 srvid_flags | 10 prefix_len (u16, 0..=256)
/// 12 ServiceID (32)
/// 44 advertised socket address (20; family 0 = "the UDP source you see")
/// 64 lease_ms (u32) | 68 key_id (u32)
/// 72 sequence (u64)
/// 80 MAC (16)
/// ```
///
/// Differences from the original (48 bytes, no address, no authentication): the instance's
/// socket address is carried (or family 0 to let a router behind a NAT use the observed
/// source), the lease is explicit, and the message is authenticated with a shared key
/// (`key_id` names it) and protected from replay by a sequence number that must grow per
/// key id. Prefix lengths are literal: 0 is the catch-all and 256 an exact id (the original
/// read 0 as 256).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegisterRepr {
    /// A refresh of an earlier registration (the original's RE-REGISTER flag).
    pub re_register: bool,
    /// The original's srvid flags (scope bits, 0x20 multicast); carried, not interpreted.
    pub srvid_flags: u8,
    /// The prefix being (un)registered.
    pub prefix: ServicePrefix,
    /// Where the instance is reached; `None`: the UDP source the router observes.
    pub addr: Option<SocketAddr>,
    /// How long the registration lasts without a refresh, in milliseconds.
    pub lease_ms: u32,
    /// Which shared key authenticates the message; replay state is kept per key id.
    pub key_id: u32,
    /// Strictly increasing per key id; a router drops anything not newer ([`RetVal::Stale`]).
    pub sequence: u64,
    /// Truncated HMAC-SHA256 under the shared key ([`ControlMsg::with_mac_input`]).
    pub mac: [u8; REGISTER_MAC_LEN],
}

const RE_REGISTER: u8 = 0x01;

impl RegisterRepr {
    fn parse(body: &[u8]) -> Result<Self> {
        if body.len() != REGISTER_MSG_LEN - HEADER_LEN {
            return Err(Error::Malformed);
        }
        let mut r = Reader { buf: body };
        let flags = r.u8()?;
        let srvid_flags = r.u8()?;
        let prefix_len = r.u16()?;
        let id = r.service_id()?;
        Ok(Self {
            re_register: flags & RE_REGISTER != 0,
            srvid_flags,
            prefix: Reader::prefix(prefix_len, id)?,
            addr: r.sockaddr()?,
            lease_ms: r.u32()?,
            key_id: r.u32()?,
            sequence: r.u64()?,
            mac: r.array()?,
        })
    }

    fn emit(&self, w: &mut Writer<'_>) {
        let flags = if self.re_register { RE_REGISTER } else { 0 };
        w.u8(flags)
            .u8(self.srvid_flags)
            .u16(self.prefix.len())
            .bytes(self.prefix.id().as_bytes())
            .sockaddr(self.addr.as_ref())
            .u32(self.lease_ms)
            .u32(self.key_id)
            .u64(self.sequence)
            .bytes(&self.mac);
    }
}

/// What a service-table rule does with a matching packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RuleType {
    /// Send to the target address.
    Forward = 1,
    /// Deliver to a local listener.
    Demux = 2,
    /// Hold until a controller's verdict.
    Delay = 3,
    /// Drop.
    Drop = 4,
}

impl RuleType {
    /// The rule type for a byte; anything else is [`Error::Malformed`].
    pub fn from_u8(b: u8) -> Result<Self> {
        Ok(match b {
            1 => Self::Forward,
            2 => Self::Demux,
            3 => Self::Delay,
            4 => Self::Drop,
            _ => return Err(Error::Malformed),
        })
    }
}

/// A fixed-size record of a list body.
pub trait WireRecord: Copy {
    /// Encoded length in bytes.
    const LEN: usize;
    /// Decodes exactly [`LEN`](Self::LEN) bytes.
    fn parse(bytes: &[u8]) -> Result<Self>;
    /// Encodes into exactly [`LEN`](Self::LEN) bytes.
    fn emit(&self, bytes: &mut [u8]);
}

/// A service-table rule as carried by ADD_SERVICE, DEL_SERVICE and GET_SERVICE (64 bytes).
///
/// ```text
///  0 rule type | 1 srvid_flags | 2 prefix_len (u16)
///  4 priority (u32) | 8 weight (u32)
/// 12 target socket address (20; family 0 for DEMUX, DELAY, DROP)
/// 32 ServiceID (32)
/// ```
///
/// Compared with the original's 60-byte `service_info`: the target is a socket address (IPv6,
/// ports), the unused interface index and idle/hard timeouts are gone, and the prefix length
/// is a literal `u16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceRecord {
    /// FORWARD, DEMUX, DELAY or DROP.
    pub rule: RuleType,
    /// The original's srvid flags; 0xFF in a GET_SERVICE reply means "no match".
    pub srvid_flags: u8,
    /// The rule's prefix.
    pub prefix: ServicePrefix,
    /// Higher wins; only the highest-priority set of a prefix is used.
    pub priority: u32,
    /// Share of flows within a priority set (0 is taken as 1).
    pub weight: u32,
    /// FORWARD target.
    pub target: Option<SocketAddr>,
}

impl WireRecord for ServiceRecord {
    const LEN: usize = 64;

    fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader { buf: bytes };
        let rule = RuleType::from_u8(r.u8()?)?;
        let srvid_flags = r.u8()?;
        let prefix_len = r.u16()?;
        let priority = r.u32()?;
        let weight = r.u32()?;
        let target = r.sockaddr()?;
        let id = r.service_id()?;
        Ok(Self {
            rule,
            srvid_flags,
            prefix: Reader::prefix(prefix_len, id)?,
            priority,
            weight,
            target,
        })
    }

    fn emit(&self, bytes: &mut [u8]) {
        Writer::new(bytes)
            .u8(self.rule as u8)
            .u8(self.srvid_flags)
            .u16(self.prefix.len())
            .u32(self.priority)
            .u32(self.weight)
            .sockaddr(self.target.as_ref())
            .bytes(self.prefix.id().as_bytes());
    }
}

impl WireRecord for FlowId {
    const LEN: usize = 4;

    /// A flow id; 0 is [`Error::Malformed`].
    fn parse(bytes: &[u8]) -> Result<Self> {
        let raw = Reader { buf: bytes }.u32()?;
        Self::new(raw).ok_or(Error::Malformed)
    }

    fn emit(&self, bytes: &mut [u8]) {
        Writer::new(bytes).u32(self.get());
    }
}

/// Per-flow statistics in STATS_RESP (88 bytes, fixed layout; the original sent native C
/// structs whose layout depended on the machine).
///
/// ```text
///  0 flow_id | 4 peer_flow_id (0 = unknown) | 8 protocol | 9 state | 10 reserved (2)
/// 12 mss (u32)
/// 16 packets_sent | 24 packets_received | 32 bytes_sent | 40 bytes_received (u64 each)
/// 48 retransmits | 56 lost (u64 each)
/// 64 srtt_us | 68 rttvar_us | 72 cwnd | 76 ssthresh | 80 snd_wnd | 84 rcv_wnd (u32 each)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowStats {
    /// Our FlowID (`None` only if the sender wrote 0).
    pub flow_id: Option<FlowId>,
    /// The peer's FlowID (`None`: not known yet).
    pub peer_flow_id: Option<FlowId>,
    /// Transport protocol of the flow.
    pub protocol: Protocol,
    /// The SAL state number (`docs/SAL.md`).
    pub state: u8,
    /// Maximum segment size in bytes.
    pub mss: u32,
    /// Packets sent.
    pub packets_sent: u64,
    /// Packets received.
    pub packets_received: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Segments retransmitted.
    pub retransmits: u64,
    /// Segments declared lost.
    pub lost: u64,
    /// Smoothed RTT in microseconds.
    pub srtt_us: u32,
    /// RTT variance in microseconds.
    pub rttvar_us: u32,
    /// Congestion window in bytes.
    pub cwnd: u32,
    /// Slow-start threshold in bytes (`u32::MAX`: infinite).
    pub ssthresh: u32,
    /// The peer's receive window in bytes.
    pub snd_wnd: u32,
    /// Our receive window in bytes.
    pub rcv_wnd: u32,
}

impl WireRecord for FlowStats {
    const LEN: usize = 88;

    fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader { buf: bytes };
        let flow_id = FlowId::new(r.u32()?);
        let peer_flow_id = FlowId::new(r.u32()?);
        let protocol = Protocol(r.u8()?);
        let state = r.u8()?;
        r.take(2)?;
        Ok(Self {
            flow_id,
            peer_flow_id,
            protocol,
            state,
            mss: r.u32()?,
            packets_sent: r.u64()?,
            packets_received: r.u64()?,
            bytes_sent: r.u64()?,
            bytes_received: r.u64()?,
            retransmits: r.u64()?,
            lost: r.u64()?,
            srtt_us: r.u32()?,
            rttvar_us: r.u32()?,
            cwnd: r.u32()?,
            ssthresh: r.u32()?,
            snd_wnd: r.u32()?,
            rcv_wnd: r.u32()?,
        })
    }

    fn emit(&self, bytes: &mut [u8]) {
        Writer::new(bytes)
            .u32(FlowId::to_wire(self.flow_id))
            .u32(FlowId::to_wire(self.peer_flow_id))
            .u8(self.protocol.0)
            .u8(self.state)
            .zeros(2)
            .u32(self.mss)
            .u64(self.packets_sent)
            .u64(self.packets_received)
            .u64(self.bytes_sent)
            .u64(self.bytes_received)
            .u64(self.retransmits)
            .u64(self.lost)
            .u32(self.srtt_us)
            .u32(self.rttvar_us)
            .u32(self.cwnd)
            .u32(self.ssthresh)
            .u32(self.snd_wnd)
            .u32(self.rcv_wnd);
    }
}

/// Service-table statistics in a SERVICE_STAT reply (64 bytes).
///
/// ```text
///  0 capabilities (u32; bit 0 TRANSIT = SAL forwarding on) | 4 reserved (4)
///  8 entries | 16 targets | 24 packets_resolved | 32 bytes_resolved
/// 40 packets_dropped | 48 bytes_dropped | 56 packets_delayed (u64 each)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TableStats {
    /// Bit 0 ([`TableStats::TRANSIT`]): this node forwards (router mode).
    pub capabilities: u32,
    /// Prefixes in the table.
    pub entries: u64,
    /// Targets over all prefixes.
    pub targets: u64,
    /// Packets resolved by the table.
    pub packets_resolved: u64,
    /// Bytes resolved by the table.
    pub bytes_resolved: u64,
    /// Packets dropped (DROP rule or no match).
    pub packets_dropped: u64,
    /// Bytes dropped.
    pub bytes_dropped: u64,
    /// Packets put in the DELAY queue.
    pub packets_delayed: u64,
}

impl TableStats {
    /// Capability bit: SAL forwarding is on.
    pub const TRANSIT: u32 = 0x1;

    fn parse(body: &[u8]) -> Result<Self> {
        let mut r = Reader { buf: body };
        let capabilities = r.u32()?;
        r.take(4)?;
        Ok(Self {
            capabilities,
            entries: r.u64()?,
            targets: r.u64()?,
            packets_resolved: r.u64()?,
            bytes_resolved: r.u64()?,
            packets_dropped: r.u64()?,
            bytes_dropped: r.u64()?,
            packets_delayed: r.u64()?,
        })
    }

    fn emit(&self, w: &mut Writer<'_>) {
        w.u32(self.capabilities)
            .zeros(4)
            .u64(self.entries)
            .u64(self.targets)
            .u64(self.packets_resolved)
            .u64(self.bytes_resolved)
            .u64(self.packets_dropped)
            .u64(self.bytes_dropped)
            .u64(self.packets_delayed);
    }
}

/// A controller's decision on a delayed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Verdict {
    /// Resolve the packet again and send it on.
    Release = 0,
    /// Drop it.
    Drop = 1,
}

/// A list of fixed-size records: either validated bytes of a received message (read in
/// place, never copied) or a caller's slice to emit. Equal when the records are equal.
///
/// Holds at most [`max_len`](Self::max_len) records, so every message fits the `u16` length.
#[derive(Clone, Copy)]
pub struct Records<'a, R> {
    inner: Inner<'a, R>,
}

#[derive(Clone, Copy)]
enum Inner<'a, R> {
    Wire(&'a [u8]),
    Slice(&'a [R]),
}

impl<'a, R: WireRecord> Records<'a, R> {
    /// The most records a message can carry.
    pub const fn max_len() -> usize {
        (MAX_MSG_LEN - MAX_LIST_PREFIX) / R::LEN
    }

    /// Records to emit; `None` when there are more than [`max_len`](Self::max_len).
    pub fn from_slice(records: &'a [R]) -> Option<Self> {
        (records.len() <= Self::max_len()).then_some(Self {
            inner: Inner::Slice(records),
        })
    }

    /// Validates a list body: a whole number of records, each valid.
    fn parse(body: &'a [u8]) -> Result<Self> {
        if body.len() % R::LEN != 0 {
            return Err(Error::Malformed);
        }
        for chunk in body.chunks_exact(R::LEN) {
            R::parse(chunk)?;
        }
        Ok(Self {
            inner: Inner::Wire(body),
        })
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        match self.inner {
            Inner::Wire(b) => b.len() / R::LEN,
            Inner::Slice(s) => s.len(),
        }
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The records in order.
    pub fn iter(&self) -> RecordIter<'a, R> {
        RecordIter {
            inner: match self.inner {
                Inner::Wire(b) => IterInner::Wire(b.chunks_exact(R::LEN)),
                Inner::Slice(s) => IterInner::Slice(s.iter()),
            },
        }
    }

    fn buffer_len(&self) -> usize {
        self.len() * R::LEN
    }

    fn emit(&self, w: &mut Writer<'_>) {
        for record in self.iter() {
            let start = w.pos;
            w.zeros(R::LEN);
            record.emit(&mut w.buf[start..start + R::LEN]);
        }
    }
}

impl<R: WireRecord + PartialEq> PartialEq for Records<'_, R> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<R: WireRecord + Eq> Eq for Records<'_, R> {}

impl<R: WireRecord + fmt::Debug> fmt::Debug for Records<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Iterator over [`Records`].
#[derive(Debug, Clone)]
pub struct RecordIter<'a, R> {
    inner: IterInner<'a, R>,
}

#[derive(Debug, Clone)]
enum IterInner<'a, R> {
    Wire(core::slice::ChunksExact<'a, u8>),
    Slice(core::slice::Iter<'a, R>),
}

impl<R: WireRecord> Iterator for RecordIter<'_, R> {
    type Item = R;

    fn next(&mut self) -> Option<R> {
        match &mut self.inner {
            // Validated when parsed, so decoding does not fail; `find_map` keeps it total.
            IterInner::Wire(chunks) => chunks.find_map(|c| R::parse(c).ok()),
            IterInner::Slice(it) => it.next().copied(),
        }
    }
}

/// The body of a control message, by type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgBody<'a> {
    /// REGISTER.
    Register(RegisterRepr),
    /// UNREGISTER (same body; the lease is ignored).
    Unregister(RegisterRepr),
    /// ADD_SERVICE: rules to add (reply: the rules added).
    AddService(Records<'a, ServiceRecord>),
    /// DEL_SERVICE: rules to delete (reply: the rules deleted).
    DelService(Records<'a, ServiceRecord>),
    /// GET_SERVICE: request one record (id, prefix); reply the matching targets.
    GetService(Records<'a, ServiceRecord>),
    /// SERVICE_STAT: `None` in the request, the statistics in the reply.
    ServiceStat(Option<TableStats>),
    /// STATS_QUERY: the flows asked about (empty: all).
    StatsQuery(Records<'a, FlowId>),
    /// STATS_RESP: per-flow statistics; `more` says another message follows.
    StatsResp {
        /// More records follow in another message.
        more: bool,
        /// The records.
        flows: Records<'a, FlowStats>,
    },
    /// DELAY_NOTIFY: packet `packet_id`, for `service`, waits for a verdict.
    DelayNotify {
        /// The delay queue's id for the packet.
        packet_id: u64,
        /// The ServiceID the packet asked for.
        service: ServiceId,
    },
    /// DELAY_VERDICT: what to do with packet `packet_id`.
    DelayVerdict {
        /// The id from the DELAY_NOTIFY.
        packet_id: u64,
        /// Release or drop.
        verdict: Verdict,
        /// The ServiceID (a cross-check against the queued packet).
        service: ServiceId,
    },
}

/// A whole control message: header fields and typed body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlMsg<'a> {
    /// Transaction id, chosen by the requester and echoed in the reply.
    pub xid: u32,
    /// [`RetVal::Ok`] in requests; the outcome in replies.
    pub retval: RetVal,
    /// The typed body.
    pub body: MsgBody<'a>,
}

const MORE: u8 = 0x01;

impl<'a> ControlMsg<'a> {
    /// Parses a message. Lists are validated here and then read in place from `buf`.
    /// Errors: lengths ([`Packet::check_len`]), unknown type ([`Error::Unsupported`]),
    /// unknown retval, a body length wrong for the type, or an invalid field
    /// ([`Error::Malformed`]).
    pub fn parse(buf: &'a [u8]) -> Result<Self> {
        let packet = Packet::new_checked(buf)?;
        let kind = MsgType::from_u8(packet.msg_type())?;
        let retval = RetVal::from_u8(packet.retval())?;
        let body = parse_body(kind, packet.body())?;
        Ok(Self {
            xid: packet.xid(),
            retval,
            body,
        })
    }

    /// The message type of the body.
    pub fn msg_type(&self) -> MsgType {
        match self.body {
            MsgBody::Register(_) => MsgType::Register,
            MsgBody::Unregister(_) => MsgType::Unregister,
            MsgBody::AddService(_) => MsgType::AddService,
            MsgBody::DelService(_) => MsgType::DelService,
            MsgBody::GetService(_) => MsgType::GetService,
            MsgBody::ServiceStat(_) => MsgType::ServiceStat,
            MsgBody::StatsQuery(_) => MsgType::StatsQuery,
            MsgBody::StatsResp { .. } => MsgType::StatsResp,
            MsgBody::DelayNotify { .. } => MsgType::DelayNotify,
            MsgBody::DelayVerdict { .. } => MsgType::DelayVerdict,
        }
    }

    /// Length of the whole message (at most [`MAX_MSG_LEN`] by construction).
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match &self.body {
                MsgBody::Register(_) | MsgBody::Unregister(_) => REGISTER_MSG_LEN - HEADER_LEN,
                MsgBody::AddService(r) | MsgBody::DelService(r) | MsgBody::GetService(r) => {
                    r.buffer_len()
                }
                MsgBody::ServiceStat(s) => s.map_or(0, |_| TABLE_STATS_LEN),
                MsgBody::StatsQuery(r) => r.buffer_len(),
                MsgBody::StatsResp { flows, .. } => STATS_RESP_PREFIX + flows.buffer_len(),
                MsgBody::DelayNotify { .. } | MsgBody::DelayVerdict { .. } => {
                    DELAY_MSG_LEN - HEADER_LEN
                }
            }
    }

    /// Writes the message at the start of `packet`'s buffer.
    ///
    /// # Panics
    /// If the buffer is shorter than [`buffer_len`](Self::buffer_len).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let len = self.buffer_len();
        packet.set_msg_type(self.msg_type());
        packet.set_retval(self.retval);
        // At most MAX_MSG_LEN: lists are bounded by `Records::max_len`.
        packet.set_msg_len(len as u16);
        packet.set_xid(self.xid);
        let mut w = Writer::new(packet.body_mut());
        match &self.body {
            MsgBody::Register(r) | MsgBody::Unregister(r) => r.emit(&mut w),
            MsgBody::AddService(r) | MsgBody::DelService(r) | MsgBody::GetService(r) => {
                r.emit(&mut w)
            }
            MsgBody::ServiceStat(s) => {
                if let Some(s) = s {
                    s.emit(&mut w);
                }
            }
            MsgBody::StatsQuery(r) => r.emit(&mut w),
            MsgBody::StatsResp { more, flows } => {
                w.u8(if *more { MORE } else { 0 }).zeros(7);
                flows.emit(&mut w);
            }
            MsgBody::DelayNotify { packet_id, service } => {
                w.u64(*packet_id).zeros(4).bytes(service.as_bytes());
            }
            MsgBody::DelayVerdict {
                packet_id,
                verdict,
                service,
            } => {
                w.u64(*packet_id)
                    .u8(*verdict as u8)
                    .zeros(3)
                    .bytes(service.as_bytes());
            }
        }
    }

    /// For REGISTER / UNREGISTER: calls `f` with the bytes the MAC covers, the whole message
    /// as [`emit`](Self::emit) writes it with the 16 MAC bytes zeroed (header included, so
    /// type, retval and xid are authenticated). `None` for other types, which carry no MAC.
    ///
    /// Sender: compute the tag in `f`, store it in [`RegisterRepr::mac`], emit. Receiver:
    /// after [`parse`](Self::parse), compare the received `mac` with the tag computed in `f`,
    /// in constant time.
    pub fn with_mac_input<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let mut unsigned = *self;
        match &mut unsigned.body {
            MsgBody::Register(r) | MsgBody::Unregister(r) => r.mac = [0; REGISTER_MAC_LEN],
            _ => return None,
        }
        let mut buf = [0u8; REGISTER_MSG_LEN];
        unsigned.emit(&mut Packet::new_unchecked(&mut buf[..]));
        Some(f(&buf))
    }
}

fn parse_body(kind: MsgType, body: &[u8]) -> Result<MsgBody<'_>> {
    Ok(match kind {
        MsgType::Register => MsgBody::Register(RegisterRepr::parse(body)?),
        MsgType::Unregister => MsgBody::Unregister(RegisterRepr::parse(body)?),
        MsgType::AddService => MsgBody::AddService(Records::parse(body)?),
        MsgType::DelService => MsgBody::DelService(Records::parse(body)?),
        MsgType::GetService => MsgBody::GetService(Records::parse(body)?),
        MsgType::ServiceStat => MsgBody::ServiceStat(match body.len() {
            0 => None,
            TABLE_STATS_LEN => Some(TableStats::parse(body)?),
            _ => return Err(Error::Malformed),
        }),
        MsgType::StatsQuery => MsgBody::StatsQuery(Records::parse(body)?),
        MsgType::StatsResp => {
            let (prefix, records) = body
                .split_at_checked(STATS_RESP_PREFIX)
                .ok_or(Error::Malformed)?;
            MsgBody::StatsResp {
                more: prefix.first().is_some_and(|f| f & MORE != 0),
                flows: Records::parse(records)?,
            }
        }
        MsgType::DelayNotify | MsgType::DelayVerdict => parse_delay(kind, body)?,
    })
}

/// DELAY_NOTIFY / DELAY_VERDICT body (44 bytes): packet id (u64), verdict (u8, 0 in a
/// NOTIFY and ignored there), 3 reserved, ServiceID (32).
fn parse_delay(kind: MsgType, body: &[u8]) -> Result<MsgBody<'_>> {
    if body.len() != DELAY_MSG_LEN - HEADER_LEN {
        return Err(Error::Malformed);
    }
    let mut r = Reader { buf: body };
    let packet_id = r.u64()?;
    let verdict = r.u8()?;
    r.take(3)?;
    let service = r.service_id()?;
    if kind == MsgType::DelayNotify {
        return Ok(MsgBody::DelayNotify { packet_id, service });
    }
    let verdict = match verdict {
        0 => Verdict::Release,
        1 => Verdict::Drop,
        _ => return Err(Error::Malformed),
    };
    Ok(MsgBody::DelayVerdict {
        packet_id,
        verdict,
        service,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::sal::tests_support::unhex;
    use proptest::prelude::*;

    fn emit_vec(msg: &ControlMsg<'_>) -> Vec<u8> {
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut Packet::new_unchecked(&mut buf[..]));
        buf
    }

    fn register() -> RegisterRepr {
        RegisterRepr {
            re_register: true,
            srvid_flags: 0,
            prefix: "0x00004001:32".parse().unwrap(),
            addr: Some("192.0.2.10:54325".parse().unwrap()),
            lease_ms: 30_000,
            key_id: 7,
            sequence: 0x0102_0304_0506_0708,
            mac: [0xee; 16],
        }
    }

    /// REGISTER vector (`docs/PROTOCOL.md` §3.2).
    const REGISTER_HEX: &str = "00000060 00000001 \
        01000020 00004001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 \
        0400d435 c000020a 00000000 00000000 00000000 \
        00007530 00000007 01020304 05060708 \
        eeeeeeee eeeeeeee eeeeeeee eeeeeeee";

    #[test]
    fn register_vector() {
        let msg = ControlMsg {
            xid: 1,
            retval: RetVal::Ok,
            body: MsgBody::Register(register()),
        };
        let bytes = emit_vec(&msg);
        assert_eq!(bytes, unhex(REGISTER_HEX));
        assert_eq!(ControlMsg::parse(&bytes).unwrap(), msg);
        let input = msg.with_mac_input(<[u8]>::to_vec).unwrap();
        assert_eq!(&input[..80], &bytes[..80]);
        assert_eq!(&input[80..], &[0; 16]);
    }

    /// ADD_SERVICE vector with one FORWARD rule (`docs/PROTOCOL.md` §3.3).
    const ADD_SERVICE_HEX: &str = "03000048 0000002a \
        01000018 00000001 00000001 \
        06000050 20010db8 00000000 00000000 00000001 \
        00004000 00000000 00000000 00000000 00000000 00000000 00000000 00000000";

    #[test]
    fn add_service_vector() {
        let rules = [ServiceRecord {
            rule: RuleType::Forward,
            srvid_flags: 0,
            prefix: "0x000040:24".parse().unwrap(),
            priority: 1,
            weight: 1,
            target: Some("[2001:db8::1]:80".parse().unwrap()),
        }];
        let msg = ControlMsg {
            xid: 42,
            retval: RetVal::Ok,
            body: MsgBody::AddService(Records::from_slice(&rules).unwrap()),
        };
        let bytes = emit_vec(&msg);
        assert_eq!(bytes, unhex(ADD_SERVICE_HEX));
        let parsed = ControlMsg::parse(&bytes).unwrap();
        assert_eq!(parsed, msg);
        let MsgBody::AddService(list) = parsed.body else {
            panic!("type")
        };
        assert_eq!(list.iter().collect::<Vec<_>>(), rules);
        assert_eq!(msg.with_mac_input(|_| ()), None);
    }

    /// DELAY_VERDICT vector (`docs/PROTOCOL.md` §3.4).
    const DELAY_VERDICT_HEX: &str = "0d000034 00000009 \
        00000000 0000002a 01000000 \
        00004001 00000000 00000000 00000000 00000000 00000000 00000000 00000000";

    #[test]
    fn delay_verdict_vector() {
        let msg = ControlMsg {
            xid: 9,
            retval: RetVal::Ok,
            body: MsgBody::DelayVerdict {
                packet_id: 42,
                verdict: Verdict::Drop,
                service: ServiceId::from_u32(16385),
            },
        };
        let bytes = emit_vec(&msg);
        assert_eq!(bytes, unhex(DELAY_VERDICT_HEX));
        assert_eq!(ControlMsg::parse(&bytes).unwrap(), msg);
    }

    #[test]
    fn header_and_body_errors() {
        assert_eq!(ControlMsg::parse(&[0; 7]), Err(Error::Truncated));
        assert_eq!(
            ControlMsg::parse(&[7, 0, 0, 4, 0, 0, 0, 0]),
            Err(Error::Malformed)
        );
        assert_eq!(
            ControlMsg::parse(&[7, 0, 0, 9, 0, 0, 0, 0]),
            Err(Error::Truncated)
        );
        assert_eq!(
            ControlMsg::parse(&[2, 0, 0, 8, 0, 0, 0, 0]),
            Err(Error::Unsupported)
        );
        assert_eq!(
            ControlMsg::parse(&[7, 6, 0, 8, 0, 0, 0, 0]),
            Err(Error::Malformed)
        );
        let stat = ControlMsg::parse(&[7, 0, 0, 8, 0, 0, 0, 5]).unwrap();
        assert_eq!(stat.body, MsgBody::ServiceStat(None));
        assert_eq!(stat.xid, 5);
        // Bytes past `len` are not part of the message.
        assert_eq!(
            ControlMsg::parse(&[7, 0, 0, 8, 0, 0, 0, 5, 0xff]).unwrap(),
            stat
        );
        let mut reg = unhex(REGISTER_HEX);
        reg[11] = 1; // prefix length 257
        assert_eq!(ControlMsg::parse(&reg), Err(Error::Malformed));
        reg[10..12].copy_from_slice(&[0, 8]); // bits of the id past /8
        assert_eq!(ControlMsg::parse(&reg), Err(Error::Malformed));
        let mut add = unhex(ADD_SERVICE_HEX);
        add[8] = 5; // rule type
        assert_eq!(ControlMsg::parse(&add), Err(Error::Malformed));
        let query = [10, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            ControlMsg::parse(&query),
            Err(Error::Malformed),
            "flow id 0"
        );
        let odd = [10, 0, 0, 10, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            ControlMsg::parse(&odd),
            Err(Error::Malformed),
            "half a record"
        );
    }

    #[test]
    fn list_bounds() {
        assert_eq!(Records::<ServiceRecord>::max_len(), 1023);
        assert_eq!(Records::<FlowStats>::max_len(), 744);
        assert_eq!(Records::<FlowId>::max_len(), 16379);
        let many = vec![FlowId::new(1).unwrap(); Records::<FlowId>::max_len() + 1];
        assert!(Records::from_slice(&many).is_none());
        let max = &many[1..];
        let msg = ControlMsg {
            xid: 0,
            retval: RetVal::Ok,
            body: MsgBody::StatsQuery(Records::from_slice(max).unwrap()),
        };
        assert!(msg.buffer_len() <= MAX_MSG_LEN);
        assert_eq!(ControlMsg::parse(&emit_vec(&msg)).unwrap(), msg);
    }

    fn any_prefix() -> impl Strategy<Value = ServicePrefix> {
        (any::<[u8; 32]>(), 0u16..=256)
            .prop_map(|(b, l)| ServicePrefix::new(ServiceId::from_bytes(b), l).unwrap())
    }

    fn any_addr() -> impl Strategy<Value = Option<SocketAddr>> {
        proptest::option::of(any::<SocketAddr>().prop_map(sockaddr::normalize))
    }

    fn any_register() -> impl Strategy<Value = RegisterRepr> {
        (
            (any::<bool>(), any::<u8>(), any_prefix(), any_addr()),
            (any::<u32>(), any::<u32>(), any::<u64>(), any::<[u8; 16]>()),
        )
            .prop_map(
                |((re_register, srvid_flags, prefix, addr), (lease_ms, key_id, sequence, mac))| {
                    RegisterRepr {
                        re_register,
                        srvid_flags,
                        prefix,
                        addr,
                        lease_ms,
                        key_id,
                        sequence,
                        mac,
                    }
                },
            )
    }

    fn any_rule() -> impl Strategy<Value = ServiceRecord> {
        (
            1u8..=4,
            any::<u8>(),
            any_prefix(),
            any::<u32>(),
            any::<u32>(),
            any_addr(),
        )
            .prop_map(|(rule, srvid_flags, prefix, priority, weight, target)| {
                ServiceRecord {
                    rule: RuleType::from_u8(rule).unwrap(),
                    srvid_flags,
                    prefix,
                    priority,
                    weight,
                    target,
                }
            })
    }

    fn any_flow_stats() -> impl Strategy<Value = FlowStats> {
        (
            (
                any::<u32>(),
                any::<u32>(),
                any::<u8>(),
                any::<u8>(),
                any::<u32>(),
            ),
            any::<[u64; 6]>(),
            any::<[u32; 6]>(),
        )
            .prop_map(|((f, p, proto, state, mss), c, r)| FlowStats {
                flow_id: FlowId::new(f),
                peer_flow_id: FlowId::new(p),
                protocol: Protocol(proto),
                state,
                mss,
                packets_sent: c[0],
                packets_received: c[1],
                bytes_sent: c[2],
                bytes_received: c[3],
                retransmits: c[4],
                lost: c[5],
                srtt_us: r[0],
                rttvar_us: r[1],
                cwnd: r[2],
                ssthresh: r[3],
                snd_wnd: r[4],
                rcv_wnd: r[5],
            })
    }

    fn any_table_stats() -> impl Strategy<Value = TableStats> {
        (any::<u32>(), any::<[u64; 7]>()).prop_map(|(capabilities, s)| TableStats {
            capabilities,
            entries: s[0],
            targets: s[1],
            packets_resolved: s[2],
            bytes_resolved: s[3],
            packets_dropped: s[4],
            bytes_dropped: s[5],
            packets_delayed: s[6],
        })
    }

    fn any_retval() -> impl Strategy<Value = RetVal> {
        (0u8..=5).prop_map(|r| RetVal::from_u8(r).unwrap())
    }

    fn roundtrip(msg: &ControlMsg<'_>) -> core::result::Result<(), TestCaseError> {
        let bytes = emit_vec(msg);
        prop_assert_eq!(bytes.len(), msg.buffer_len());
        prop_assert_eq!(&ControlMsg::parse(&bytes).unwrap(), msg);
        Ok(())
    }

    proptest! {
        #[test]
        fn register_roundtrips(r in any_register(), xid in any::<u32>(), rv in any_retval(), un in any::<bool>()) {
            let body = if un { MsgBody::Unregister(r) } else { MsgBody::Register(r) };
            roundtrip(&ControlMsg { xid, retval: rv, body })?;
        }

        #[test]
        fn service_lists_roundtrip(rules in proptest::collection::vec(any_rule(), 0..6), t in 0..3, xid in any::<u32>()) {
            let list = Records::from_slice(&rules).unwrap();
            let body = match t {
                0 => MsgBody::AddService(list),
                1 => MsgBody::DelService(list),
                _ => MsgBody::GetService(list),
            };
            roundtrip(&ControlMsg { xid, retval: RetVal::Ok, body })?;
        }

        #[test]
        fn stats_roundtrip(flows in proptest::collection::vec(any_flow_stats(), 0..5), more in any::<bool>(),
                           ids in proptest::collection::vec(1u32.., 0..8), table in proptest::option::of(any_table_stats())) {
            let ids: Vec<FlowId> = ids.into_iter().filter_map(FlowId::new).collect();
            roundtrip(&ControlMsg { xid: 1, retval: RetVal::Ok, body: MsgBody::StatsResp { more, flows: Records::from_slice(&flows).unwrap() } })?;
            roundtrip(&ControlMsg { xid: 2, retval: RetVal::Ok, body: MsgBody::StatsQuery(Records::from_slice(&ids).unwrap()) })?;
            roundtrip(&ControlMsg { xid: 3, retval: RetVal::Ok, body: MsgBody::ServiceStat(table) })?;
        }

        #[test]
        fn delay_roundtrips(packet_id in any::<u64>(), id in any::<[u8; 32]>(), drop in any::<bool>()) {
            let service = ServiceId::from_bytes(id);
            let verdict = if drop { Verdict::Drop } else { Verdict::Release };
            roundtrip(&ControlMsg { xid: 0, retval: RetVal::Ok, body: MsgBody::DelayNotify { packet_id, service } })?;
            roundtrip(&ControlMsg { xid: 0, retval: RetVal::Ok, body: MsgBody::DelayVerdict { packet_id, verdict, service } })?;
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(msg) = ControlMsg::parse(&b) {
                let again = emit_vec(&msg);
                prop_assert_eq!(ControlMsg::parse(&again).unwrap(), msg);
            }
        }

        /// Arbitrary bodies behind a valid header of every type, so body parsers are reached.
        #[test]
        fn arbitrary_bodies_never_panic(t in 0u8..15, body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut b = vec![t, 0, 0, 0, 0, 0, 0, 0];
            b.extend_from_slice(&body);
            let len = b.len() as u16;
            b[2..4].copy_from_slice(&len.to_be_bytes());
            if let Ok(msg) = ControlMsg::parse(&b) {
                let again = emit_vec(&msg);
                prop_assert_eq!(ControlMsg::parse(&again).unwrap(), msg);
            }
        }
    }
}
