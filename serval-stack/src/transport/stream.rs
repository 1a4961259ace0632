//! [`Stream`]: the sans-IO state machine of one reliable byte stream (RFC 9293 over SAL).

use core::time::Duration;
use std::collections::VecDeque;
use std::sync::Arc;

use super::cc::{self, Controller, HyStart};
use super::config::StreamConfig;
use super::pacing::Pacer;
use super::recovery::{Prr, Rack, Scoreboard, SegState, SentSegment, TlpEpisode};
use super::recv_buf::RecvBuf;
use super::rtt::RttEstimator;
use super::send_buf::SendBuf;
use super::stats::StreamStats;
use super::timer::{Timer, TimerTable};
use crate::time::Timestamp;
use crate::wire::tcp::{
    Flags, MAX_WINDOW_SCALE, Packet, SackBlock, SackBlocks, SeqNumber, TcpRepr, Timestamps,
};

/// RFC 9293 §3.3.2 connection states (LISTEN and SYN-SENT's simultaneous open are the
/// SAL's business: a stream is created by [`Stream::client`] or [`Stream::server`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Our SYN is out (inside the SAL SYN); waiting for the SYN-ACK.
    SynSent,
    /// Our SYN-ACK is out; waiting for the ACK of it.
    SynReceived,
    /// Both directions open.
    Established,
    /// We sent FIN; the peer has not acknowledged it; the peer may still send.
    FinWait1,
    /// Our FIN is acknowledged; the peer may still send.
    FinWait2,
    /// The peer sent FIN; we may still send.
    CloseWait,
    /// Both sent FIN; ours is not acknowledged yet.
    Closing,
    /// The peer's FIN came first, then ours; waiting for its acknowledgment.
    LastAck,
    /// Both FINs exchanged and acknowledged; lingering to re-ACK a retransmitted FIN.
    TimeWait,
    /// Finished, reset, timed out or aborted. Terminal.
    Closed,
}

impl State {
    /// States in which a segment from the peer is processed normally (RFC 9293 §3.10.7.4).
    fn is_synchronized(self) -> bool {
        !matches!(self, Self::SynSent | Self::Closed)
    }

    /// States in which peer data is accepted: the peer has not finished.
    fn receives_data(self) -> bool {
        matches!(self, Self::Established | Self::FinWait1 | Self::FinWait2)
    }

    /// States in which we (re)transmit data or our FIN.
    fn sends_data(self) -> bool {
        matches!(
            self,
            Self::Established | Self::FinWait1 | Self::CloseWait | Self::Closing | Self::LastAck
        )
    }
}

/// Something the application should know. Fetch with [`Stream::poll_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamEvent {
    /// The handshake completed.
    Established,
    /// New bytes can be read.
    Readable,
    /// Send-buffer space was freed after a short write.
    Writable,
    /// The peer finished sending (its FIN arrived in order): reads end after the buffered
    /// bytes.
    PeerFinished,
    /// Our FIN was acknowledged: everything we wrote was delivered.
    SendFinished,
    /// The peer reset the stream.
    Reset,
    /// Retransmissions, keepalives or the idle timeout gave up.
    TimedOut,
    /// The stream reached [`State::Closed`]; always the last event.
    Closed,
}

/// A segment [`Stream::poll_transmit`] (or a constructor) appended to the caller's buffer.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Bytes appended: TCP header, options and payload.
    pub size: usize,
    /// The segment's flags, ACK included: the SAL carries SYN / FIN / RST segments in its
    /// own SYN / FIN / RST control packets.
    pub flags: Flags,
    /// Payload bytes in the segment.
    pub payload_len: usize,
}

/// [`Stream::server`] was handed something that is not a connection request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The segment lacks SYN or carries ACK, RST or FIN.
    #[error("not a SYN segment")]
    NotSyn,
}

/// Why [`Stream::write`] or [`Stream::shutdown_write`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// `shutdown_write` was called: the write side is finished.
    #[error("write side finished")]
    Finished,
    /// The stream is closed (reset, timed out, aborted or done).
    #[error("stream closed")]
    Closed,
}

/// Why [`Stream::read`] returned no data for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The peer finished and every byte has been read (end of stream).
    #[error("end of stream")]
    Finished,
    /// The stream was reset, timed out or aborted; no more data will come.
    #[error("stream closed")]
    Closed,
}

/// A segment sent outside the normal window/cwnd rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// Tail loss probe.
    Tlp,
    /// Zero-window (persist) probe.
    Window,
    /// Keepalive probe.
    KeepAlive,
}

/// Receiver-side ACK obligations.
#[derive(Debug, Clone, Copy, Default)]
struct AckState {
    /// Send an ACK with the next `poll_transmit`.
    immediate: bool,
    /// In-order payload bytes received since our last ACK.
    pending_bytes: u64,
    /// Largest payload seen: "full-sized" for the every-second-segment rule.
    largest_payload: u64,
    /// A duplicate range to report first in the next SACK option (RFC 2883), as receive
    /// sequence offsets.
    dsack: Option<(u64, u64)>,
}

/// Bytes newly delivered by one ACK.
#[derive(Debug, Clone, Copy, Default)]
struct Delivery {
    /// All newly acknowledged or SACKed bytes (PRR's DeliveredData).
    total: u64,
    /// Those sent after the current recovery began (they may grow the window).
    for_cc: u64,
}

/// How the stream ended, for `read`/`write` after the fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Graceful,
    Reset,
    TimedOut,
    Aborted,
}

/// Timestamp clock (RFC 7323 §5.4): microseconds, truncated. It wraps every 71 minutes, so
/// PAWS treats a TS.Recent older than [`TS_RECENT_LIFETIME`] as invalid (RFC 7323 §5.5).
fn ts_clock(now: Timestamp) -> u32 {
    now.as_micros() as u32
}

/// Half the wrap period of the µs timestamp clock, minus a margin.
const TS_RECENT_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// Default peer MSS when the SYN carries none (RFC 9293 §3.7.1).
const DEFAULT_PEER_MSS: u16 = 536;
/// Floor on the peer's MSS so options always leave room for payload (Linux: 48).
const MIN_PEER_MSS: u16 = 64;
/// Length of the timestamps option as we emit it (NOP NOP TS).
const TS_OPTION_LEN: u64 = 12;
/// Challenge ACKs allowed per second (RFC 5961 §7).
const CHALLENGE_ACK_LIMIT: u32 = 10;
/// Duplicate ACKs that trigger fast retransmit without SACK (RFC 5681 §3.2).
const DUP_THRESH: u32 = 3;

/// One reliable byte stream: both directions of a SAL flow's transport.
///
/// The segment format is TCP's (`wire::tcp`) and the behaviour is a modern TCP: window
/// scaling, SACK, timestamps, RFC 6298 RTO, RACK-TLP, CUBIC or NewReno, pacing, delayed
/// ACKs, half-close, zero-window probes. It is sans-IO: nothing here reads a clock or
/// touches a socket.
///
/// # Calling contract (quinn-proto's shape)
///
/// * Create with [`Stream::client`] (its SYN goes in the SAL SYN) or [`Stream::server`]
///   (from the peer's SYN; its SYN-ACK goes in the SAL SYN-ACK). The SAL retransmits
///   those two with identical bytes; the stream never does.
/// * Feed every TCP segment of the flow to [`Stream::handle_segment`] (or
///   [`Stream::handle_bytes`]), including the one inside each SAL control packet and its
///   retransmissions: a duplicate SYN-ACK is how a client whose ACK was lost re-ACKs.
/// * Call [`Stream::handle_timeout`] when [`Stream::poll_timeout`] passes.
/// * After any input (segment, timeout, `write`, `read`, `shutdown_write`, `abort`, path
///   change), drain in this order: [`Stream::poll_transmit`] until `None`, then
///   [`Stream::poll_timeout`], then [`Stream::poll_event`] until `None`.
/// * `now` must never decrease between calls.
///
/// On the client, the first segment `poll_transmit` yields after the SYN-ACK is the ACK
/// that belongs in the SAL's ACK (it may carry data already written). A segment whose
/// [`Transmit::flags`] hold RST is the one to carry in the SAL's RST. When both
/// [`StreamEvent::SendFinished`] and [`StreamEvent::PeerFinished`] have been seen (or
/// [`StreamEvent::Closed`]), the SAL may close the flow.
///
/// Migration: call [`Stream::freeze`] when the SAL starts moving the flow (RSYN) and
/// [`Stream::on_path_change`] when the move completes.
#[derive(Debug)]
pub struct Stream {
    config: Arc<StreamConfig>,
    state: State,
    ending: Option<Ending>,

    // Negotiated in the handshake.
    /// Payload plus options we may put in one segment (peer MSS ∧ ours).
    snd_mss: u64,
    /// Shift the peer applies to its window field (0 without window scaling).
    snd_wscale: u8,
    /// Shift we apply to ours.
    rcv_wscale: u8,
    sack_ok: bool,
    ts_ok: bool,

    // Send side, in sequence offsets from `iss` (SYN = 0, data byte i = i + 1).
    iss: SeqNumber,
    send: SendBuf,
    snd_una: u64,
    snd_nxt: u64,
    snd_wnd: u64,
    max_snd_wnd: u64,
    snd_wl1: SeqNumber,
    snd_wl2: u64,
    /// `shutdown_write` was called.
    fin_queued: bool,
    /// Offset of our FIN once sent.
    fin_offset: Option<u64>,
    scoreboard: Scoreboard,
    rack: Rack,
    tlp: TlpEpisode,
    rtt: RttEstimator,
    cc: Box<dyn Controller>,
    pacer: Pacer,
    /// Loss events for segments sent at or before this time belong to the current
    /// recovery episode (no further reduction).
    recovery_start: Option<Timestamp>,
    /// SND.NXT when recovery began; recovery ends when SND.UNA reaches it.
    recovery_point: Option<u64>,
    /// Proportional rate reduction while in loss recovery.
    prr: Option<Prr>,
    hystart: HyStart,
    /// Bumped by `on_path_change`: losses of segments sent in an earlier epoch do not
    /// reduce the window (the original's `snd_mig_last`).
    path_epoch: u32,
    /// Consecutive RTO expiries (RFC 6298 §5.5 doubling); reset by a new RTT sample.
    rto_backoff: u32,
    /// Consecutive zero-window probes (RFC 9293 §3.8.6.1 exponential backoff).
    persist_backoff: u32,
    /// Last time SND.UNA advanced (or data was sent with nothing outstanding): R2.
    last_progress: Timestamp,
    /// Duplicate ACKs in a row (only used without SACK).
    dupacks: u32,
    /// A send was held back by the congestion window since the last ACK.
    cwnd_blocked: bool,
    /// A probe to send with the next `poll_transmit`, ahead of everything else.
    probe: Option<Probe>,
    /// `abort` was called: the next `poll_transmit` yields the RST.
    rst_pending: bool,
    /// A `write` came up short: signal [`StreamEvent::Writable`] when space frees up.
    write_blocked: bool,
    /// Loss timers are suspended while the SAL moves the flow.
    frozen: bool,
    /// When our SYN or SYN-ACK was built: the handshake RTT sample.
    handshake_sent: Timestamp,

    // Receive side, in sequence offsets from `irs` (SYN = 0, data byte i = i + 1).
    irs: SeqNumber,
    recv: RecvBuf,
    rcv_nxt: u64,
    /// Right edge of the window we advertised (never moves left).
    rcv_adv: u64,
    /// Offset of the peer's FIN once seen.
    peer_fin: Option<u64>,
    /// The peer's FIN took effect (every byte before it arrived).
    peer_finished: bool,
    ack: AckState,
    /// RCV.NXT in the last segment we sent (RFC 7323 `Last.ACK.sent`).
    last_ack_sent: u64,
    /// RFC 7323 TS.Recent and when it was set (it expires after [`TS_RECENT_LIFETIME`]).
    ts_recent: Option<(u32, Timestamp)>,
    keepalives_unanswered: u32,
    /// Start and count of the current one-second challenge-ACK window (RFC 5961 §7).
    challenge_window: (Timestamp, u32),

    timers: TimerTable,
    events: VecDeque<StreamEvent>,
    /// A [`StreamEvent::Readable`] is pending and unanswered by a `read`: do not repeat it.
    readable_signalled: bool,
    stats: StreamStats,
}

impl Stream {
    /// Opens a stream actively: appends the SYN to `buf` (to be carried, and retransmitted,
    /// by the SAL SYN). `isn` comes from the SAL's injected RNG.
    pub fn client(
        config: Arc<StreamConfig>,
        isn: SeqNumber,
        now: Timestamp,
        buf: &mut Vec<u8>,
    ) -> (Self, Transmit) {
        let mut stream = Self::new(config, isn, State::SynSent, now);
        stream.snd_nxt = 1;
        let transmit = stream.emit_syn(now, buf, None);
        (stream, transmit)
    }

    /// Accepts the peer's SYN: appends our SYN-ACK to `buf` (carried, and retransmitted,
    /// by the SAL SYN-ACK). Options are answered only if the SYN offered them; data in the
    /// SYN is ignored (no TCP Fast Open). `isn` comes from the SAL's injected RNG.
    pub fn server(
        config: Arc<StreamConfig>,
        isn: SeqNumber,
        now: Timestamp,
        syn: &TcpRepr<'_>,
        buf: &mut Vec<u8>,
    ) -> Result<(Self, Transmit), HandshakeError> {
        if !syn.flags.contains(Flags::SYN)
            || syn.ack_number.is_some()
            || syn.flags.contains(Flags::RST)
            || syn.flags.contains(Flags::FIN)
        {
            return Err(HandshakeError::NotSyn);
        }
        let mut stream = Self::new(config, isn, State::SynReceived, now);
        stream.snd_nxt = 1;
        stream.negotiate(syn);
        stream.irs = syn.seq_number;
        stream.rcv_nxt = 1;
        stream.last_ack_sent = 1;
        stream.snd_wl1 = syn.seq_number;
        stream.ts_recent = syn.timestamps.map(|ts| (ts.tsval, now));
        let transmit = stream.emit_syn(now, buf, Some(syn));
        Ok((stream, transmit))
    }

    fn new(config: Arc<StreamConfig>, iss: SeqNumber, state: State, now: Timestamp) -> Self {
        let mss = u64::from(config.mss);
        let cc = cc::new_controller(config.congestion, mss, u64::from(config.initial_window));
        let rtt = RttEstimator::new(config.initial_rto, config.min_rto, config.max_rto);
        Self {
            send: SendBuf::new(config.send_buffer),
            recv: RecvBuf::new(config.recv_buffer),
            snd_mss: mss,
            snd_wscale: 0,
            rcv_wscale: 0,
            sack_ok: false,
            ts_ok: false,
            state,
            ending: None,
            iss,
            snd_una: 0,
            snd_nxt: 0,
            snd_wnd: 0,
            max_snd_wnd: 0,
            snd_wl1: SeqNumber(0),
            snd_wl2: 0,
            fin_queued: false,
            fin_offset: None,
            scoreboard: Scoreboard::default(),
            rack: Rack::default(),
            tlp: TlpEpisode::default(),
            rtt,
            cc,
            pacer: Pacer::default(),
            recovery_start: None,
            recovery_point: None,
            prr: None,
            hystart: HyStart::default(),
            path_epoch: 0,
            rto_backoff: 0,
            persist_backoff: 0,
            last_progress: now,
            dupacks: 0,
            cwnd_blocked: false,
            probe: None,
            rst_pending: false,
            write_blocked: false,
            frozen: false,
            handshake_sent: now,
            irs: SeqNumber(0),
            rcv_nxt: 0,
            rcv_adv: 0,
            peer_fin: None,
            peer_finished: false,
            ack: AckState {
                largest_payload: 536,
                ..AckState::default()
            },
            last_ack_sent: 0,
            ts_recent: None,
            keepalives_unanswered: 0,
            challenge_window: (now, 0),
            timers: TimerTable::default(),
            events: VecDeque::new(),
            readable_signalled: false,
            stats: StreamStats::default(),
            config,
        }
    }

    // ---------------------------------------------------------------------------------
    // Input: segments and timers.

    /// Processes one TCP segment of this flow (the SAL has already demultiplexed it).
    /// Invalid or unacceptable segments are dropped and counted, never fatal unless they
    /// are an in-window RST.
    pub fn handle_segment(&mut self, now: Timestamp, seg: &TcpRepr<'_>) {
        self.stats.segments_received += 1;
        match self.state {
            State::Closed => self.stats.dropped_segments += 1,
            State::SynSent => self.on_syn_sent(now, seg),
            _ => self.on_synchronized(now, seg),
        }
    }

    /// Parses `bytes` as a TCP segment and processes it; a malformed segment is counted
    /// (`malformed_segments`) and its error returned.
    pub fn handle_bytes(&mut self, now: Timestamp, bytes: &[u8]) -> crate::wire::Result<()> {
        match TcpRepr::parse_bytes(bytes) {
            Ok(repr) => {
                self.handle_segment(now, &repr);
                Ok(())
            }
            Err(e) => {
                self.stats.malformed_segments += 1;
                Err(e)
            }
        }
    }

    /// Runs every timer that expired at or before `now`.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        for timer in Timer::VALUES {
            if !self.timers.is_expired(timer, now) || (self.frozen && timer.is_loss_timer()) {
                continue;
            }
            self.timers.stop(timer);
            match timer {
                Timer::Rto => self.on_rto(now),
                Timer::Tlp => {
                    if !self.scoreboard.is_empty() {
                        self.probe = Some(Probe::Tlp);
                    }
                }
                Timer::Reorder => self.detect_losses(now),
                Timer::DelayedAck => self.ack.immediate = true,
                Timer::Persist => self.on_persist(now),
                Timer::KeepAlive => self.on_keepalive(now),
                Timer::Idle => self.terminate(Ending::TimedOut),
                Timer::Pacing => {}
                Timer::TimeWait => self.terminate(Ending::Graceful),
            }
            if self.state == State::Closed {
                return;
            }
        }
    }

    /// The SAL finished a migration (RSYN exchange): the path changed under the flow.
    ///
    /// Mirrors the original's reaction (`SERVAL-ORIGINAL.md` §3.8): everything outstanding
    /// is retransmitted at once on the new path, the retransmission backoff is reset, and
    /// losses of segments sent before the move never reduce the congestion window (they
    /// say nothing about the new path). cwnd, ssthresh and the RTT estimate are kept.
    pub fn on_path_change(&mut self, now: Timestamp) {
        self.stats.path_changes += 1;
        self.path_epoch = self.path_epoch.wrapping_add(1);
        self.frozen = false;
        if !self.state.is_synchronized() || self.state == State::TimeWait {
            return;
        }
        self.scoreboard.mark_all_lost(|_| {});
        // Retransmit at the (kept) window, not at PRR's pace: no ACKs come from the old path.
        self.prr = None;
        self.tlp = TlpEpisode::default();
        self.timers.stop(Timer::Tlp);
        self.timers.stop(Timer::Reorder);
        self.rto_backoff = 0;
        self.pacer.reset();
        if !self.scoreboard.is_empty() {
            self.arm_rto(now);
        }
        if self.snd_wnd == 0 && self.unsent() > 0 {
            self.probe = Some(Probe::Window);
        }
        self.ack.immediate = true;
    }

    /// The SAL is moving the flow (RSYN in progress): suspend retransmission timers until
    /// [`Stream::on_path_change`], so the old path's silence does not back the RTO off.
    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    // ---------------------------------------------------------------------------------
    // Application commands.

    /// Queues bytes for sending; returns how many fit in the send buffer (0 when full:
    /// wait for [`StreamEvent::Writable`]).
    pub fn write(&mut self, data: &[u8]) -> Result<usize, WriteError> {
        if self.state == State::Closed {
            return Err(WriteError::Closed);
        }
        if self.fin_queued {
            return Err(WriteError::Finished);
        }
        let n = self.send.write(data);
        if n < data.len() {
            self.write_blocked = true;
        }
        Ok(n)
    }

    /// Reads in-order bytes. `Ok(0)` for a non-empty `buf` means "nothing yet" (wait for
    /// [`StreamEvent::Readable`]); the end of the stream is `Err(ReadError::Finished)`.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        if matches!(
            self.ending,
            Some(Ending::Reset | Ending::TimedOut | Ending::Aborted)
        ) {
            return Err(ReadError::Closed);
        }
        let n = self.recv.read(buf);
        if n == 0 && !buf.is_empty() {
            return if self.peer_finished {
                Err(ReadError::Finished)
            } else {
                Ok(0)
            };
        }
        if n > 0 {
            self.readable_signalled = false;
            self.maybe_window_update();
        }
        if self.peer_finished && self.recv.readable() == 0 {
            // Nothing more can arrive: give the memory back now.
            self.recv.shrink();
        }
        Ok(n)
    }

    /// Half-closes: our FIN follows the queued data. The peer may keep sending.
    pub fn shutdown_write(&mut self) -> Result<(), WriteError> {
        if self.state == State::Closed {
            return Err(WriteError::Closed);
        }
        if self.fin_queued {
            return Ok(());
        }
        self.fin_queued = true;
        //= RFC 9293 §3.10.4
        //# ESTABLISHED STATE: Queue this until all preceding SENDs have been segmentized,
        //# then form a FIN segment and send it. In any case, enter FIN-WAIT-1 state.
        //# CLOSE-WAIT STATE: Queue this request until all preceding SENDs have been
        //# segmentized; then send a FIN segment, enter LAST-ACK state.
        match self.state {
            State::Established => self.state = State::FinWait1,
            State::CloseWait => self.state = State::LastAck,
            // SYN-SENT / SYN-RECEIVED: the FIN waits for the handshake.
            _ => {}
        }
        Ok(())
    }

    /// Aborts: the next `poll_transmit` yields a RST (for the SAL's RST) and the stream
    /// closes; buffered data in both directions is discarded.
    pub fn abort(&mut self) {
        let send_rst = self.state.is_synchronized() && self.state != State::TimeWait;
        if self.state == State::Closed {
            return;
        }
        self.terminate(Ending::Aborted);
        self.rst_pending = send_rst;
    }

    // ---------------------------------------------------------------------------------
    // Output.

    /// Appends the next segment to send to `buf`, if any: a RST, a probe, a
    /// retransmission, new data (within the peer window, cwnd and pacing), or an ACK.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Timestamp, buf: &mut Vec<u8>) -> Option<Transmit> {
        if self.rst_pending {
            self.rst_pending = false;
            return Some(self.emit_rst(buf));
        }
        match self.state {
            State::Closed | State::SynSent | State::SynReceived => return None,
            State::TimeWait => return self.ack.immediate.then(|| self.emit_ack(now, buf)),
            _ => {}
        }
        if let Some(probe) = self.probe.take() {
            if let Some(t) = self.transmit_probe(now, probe, buf) {
                return Some(t);
            }
        }
        if self.state.sends_data() {
            if let Some(t) = self.transmit_data(now, buf) {
                return Some(t);
            }
        }
        self.ack.immediate.then(|| self.emit_ack(now, buf))
    }

    /// The earliest time [`Stream::handle_timeout`] must run, if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.next(|t| !(self.frozen && t.is_loss_timer()))
    }

    /// The next application event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    // ---------------------------------------------------------------------------------
    // Getters.

    /// The RFC 9293 state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Bytes ready for [`Stream::read`].
    pub fn readable(&self) -> usize {
        self.recv.readable()
    }

    /// Room in the send buffer.
    pub fn writable(&self) -> usize {
        if self.fin_queued || self.state == State::Closed {
            0
        } else {
            self.send.free()
        }
    }

    /// Bytes written and not yet acknowledged.
    pub fn send_queue(&self) -> usize {
        self.send.len()
    }

    /// The MSS in effect for sending (payload plus options per segment).
    pub fn send_mss(&self) -> usize {
        self.snd_mss as usize
    }

    /// Segments refused so far (what [`stats`](Self::stats) reports, without building the
    /// rest): the SAL compares it around each data packet to learn whether the stream
    /// accepted it.
    pub(crate) fn dropped_segments(&self) -> u64 {
        self.stats.dropped_segments
    }

    /// Counters and a snapshot of RTT and window state.
    pub fn stats(&self) -> StreamStats {
        let mut s = self.stats;
        s.srtt = self.rtt.srtt().unwrap_or_default();
        s.rttvar = self.rtt.rttvar();
        s.min_rtt = self.rtt.min_rtt().unwrap_or_default();
        s.rto = self.rtt.rto_backed_off(self.rto_backoff);
        s.cwnd = self.cc.window();
        s.ssthresh = self.cc.ssthresh();
        s.bytes_in_flight = self.scoreboard.in_flight();
        s.send_window = self.snd_wnd;
        s
    }

    /// Heap bytes held by buffers and the scoreboard (tests check TIME-WAIT frees them).
    #[cfg(test)]
    pub(crate) fn allocated(&self) -> usize {
        self.send.allocated() + self.recv.allocated() + self.scoreboard.allocated()
    }

    // ---------------------------------------------------------------------------------
    // Handshake.

    /// Applies the options of the peer's SYN or SYN-ACK (RFC 7323 §2.2, §3.2; RFC 2018 §2).
    fn negotiate(&mut self, syn: &TcpRepr<'_>) {
        let peer_mss = syn
            .max_seg_size
            .unwrap_or(DEFAULT_PEER_MSS)
            .max(MIN_PEER_MSS);
        self.snd_mss = u64::from(peer_mss.min(self.config.mss));
        match (self.config.window_scaling, syn.window_scale) {
            (true, Some(shift)) => {
                self.snd_wscale = shift.min(MAX_WINDOW_SCALE);
                self.rcv_wscale = self.our_window_scale();
            }
            //= RFC 7323 §2.2
            //# If a Window Scale option is not received in a <SYN>, then both sides
            //# MUST set their shift counts to zero
            _ => (self.snd_wscale, self.rcv_wscale) = (0, 0),
        }
        self.sack_ok = self.config.sack && syn.sack_permitted;
        self.ts_ok = self.config.timestamps && syn.timestamps.is_some();
        //= RFC 7323 §2.2
        //# The window field in a segment where the SYN bit is set (i.e., a <SYN> or
        //# <SYN,ACK>) MUST NOT be scaled.
        self.snd_wnd = u64::from(syn.window_len);
        self.max_snd_wnd = self.snd_wnd;
        self.cc = cc::new_controller(
            self.config.congestion,
            self.smss(),
            u64::from(self.config.initial_window),
        );
    }

    /// Smallest shift that lets the whole receive buffer be advertised.
    fn our_window_scale(&self) -> u8 {
        let mut shift = 0;
        while shift < MAX_WINDOW_SCALE && (self.config.recv_buffer >> shift) > 0xffff {
            shift += 1;
        }
        shift
    }

    /// A full segment's payload when only the timestamps option is present: the unit of
    /// the congestion window.
    fn smss(&self) -> u64 {
        self.snd_mss - if self.ts_ok { TS_OPTION_LEN } else { 0 }
    }

    fn emit_syn(
        &mut self,
        now: Timestamp,
        buf: &mut Vec<u8>,
        peer: Option<&TcpRepr<'_>>,
    ) -> Transmit {
        let cfg = &self.config;
        let offer_ws = cfg.window_scaling && peer.is_none_or(|p| p.window_scale.is_some());
        let offer_sack = cfg.sack && peer.is_none_or(|p| p.sack_permitted);
        let offer_ts = cfg.timestamps && peer.is_none_or(|p| p.timestamps.is_some());
        let window = cfg.recv_buffer.min(0xffff) as u16;
        let repr = TcpRepr {
            seq_number: self.iss,
            ack_number: peer.map(|p| p.seq_number + 1),
            flags: Flags::SYN,
            window_len: window,
            max_seg_size: Some(cfg.mss),
            window_scale: offer_ws.then(|| self.our_window_scale()),
            sack_permitted: offer_sack,
            timestamps: offer_ts.then(|| Timestamps {
                tsval: ts_clock(now),
                tsecr: peer.and_then(|p| p.timestamps).map_or(0, |ts| ts.tsval),
            }),
            ..TcpRepr::default()
        };
        if peer.is_some() {
            self.rcv_adv = self.rcv_nxt + u64::from(window);
        }
        self.handshake_sent = now;
        self.stats.segments_sent += 1;
        self.write_repr(&repr, buf, None)
    }

    /// SYN-SENT: only a SYN-ACK for our SYN (or a RST for it) matters (RFC 9293 §3.10.7.3).
    fn on_syn_sent(&mut self, now: Timestamp, seg: &TcpRepr<'_>) {
        let ack_ok = seg.ack_number == Some(self.iss + 1);
        if seg.flags.contains(Flags::RST) {
            //# If the ACK was acceptable, then signal to the user "error: connection
            //# reset", drop the segment, enter CLOSED state ... Otherwise ... drop
            if ack_ok {
                self.terminate(Ending::Reset);
            } else {
                self.stats.dropped_segments += 1;
            }
            return;
        }
        // A wrong ACK would get a RST from a classic TCP; the SAL owns resets, so drop.
        // A SYN without ACK is a simultaneous open, which SAL never produces.
        if !ack_ok || !seg.flags.contains(Flags::SYN) {
            self.stats.dropped_segments += 1;
            return;
        }
        self.negotiate(seg);
        self.irs = seg.seq_number;
        self.rcv_nxt = 1;
        self.rcv_adv = 1 + self.config.recv_buffer.min(0xffff) as u64;
        self.snd_una = 1;
        self.snd_wl1 = seg.seq_number;
        self.snd_wl2 = 1;
        self.last_ack_sent = 1;
        self.ts_recent = seg.timestamps.map(|ts| (ts.tsval, now));
        self.handshake_rtt_sample(now);
        self.establish(now);
        // The ACK of the SYN-ACK goes out at once (inside the SAL's ACK).
        self.ack.immediate = true;
    }

    /// A handshake RTT sample (SYN → SYN-ACK, SYN-ACK → ACK). The SAL retransmits the
    /// handshake with identical bytes, so neither timestamps nor Karn can tell which copy
    /// was answered; a sample shorter than the initial RTO cannot include a retransmission
    /// gap (the SAL waits at least that long before retransmitting), so only those count.
    fn handshake_rtt_sample(&mut self, now: Timestamp) {
        let sample = now - self.handshake_sent;
        if sample < self.config.initial_rto {
            self.rtt.on_sample(sample);
        }
    }

    fn establish(&mut self, now: Timestamp) {
        self.state = if self.fin_queued {
            State::FinWait1
        } else {
            State::Established
        };
        self.events.push_back(StreamEvent::Established);
        self.last_progress = now;
        self.arm_keepalive(now);
        self.arm_idle(now);
    }

    // ---------------------------------------------------------------------------------
    // Segment arrival in synchronized states (RFC 9293 §3.10.7.4).

    fn on_synchronized(&mut self, now: Timestamp, seg: &TcpRepr<'_>) {
        let seq = self.rcv_offset(seg.seq_number);
        let rst = seg.flags.contains(Flags::RST);
        if !rst && self.ts_ok {
            match seg.timestamps {
                //= RFC 7323 §3.2
                //# If a non-<RST> segment is received without a TSopt, a TCP SHOULD
                //# silently drop the segment.
                None => {
                    self.stats.dropped_segments += 1;
                    return;
                }
                //= RFC 7323 §5.3
                //# R1) If there is a Timestamps option in the arriving segment, SEG.TSval
                //# < TS.Recent, TS.Recent is valid ... then treat the arriving segment as
                //# not acceptable: Send an acknowledgment in reply as specified in
                //# [RFC793] ... and drop the segment.
                Some(ts) if self.paws_rejects(now, ts.tsval) => {
                    self.stats.dropped_segments += 1;
                    self.ack.immediate = true;
                    return;
                }
                Some(_) => {}
            }
        }
        // First: sequence number.
        if !self.acceptable(seq, seg) {
            self.on_unacceptable(now, seq, seg);
            return;
        }
        // Second: RST (RFC 5961 §3.2).
        if rst {
            self.on_rst(now, seq);
            return;
        }
        // Fourth: SYN (RFC 5961 §4.2) — a retransmitted SYN in SYN-RECEIVED is the
        // SAL's to answer (it resends our SYN-ACK).
        if seg.flags.contains(Flags::SYN) {
            if self.state != State::SynReceived || seg.seq_number != self.irs {
                self.challenge_ack(now);
            }
            self.stats.dropped_segments += 1;
            return;
        }
        // Fifth: ACK.
        let Some(ack) = seg.ack_number else {
            //# if the ACK bit is off, drop the segment and return
            self.stats.dropped_segments += 1;
            return;
        };
        if !self.on_ack_field(now, seg, ack) {
            return;
        }
        if self.state == State::Closed {
            return;
        }
        self.update_ts_recent(now, seq, seg);
        self.note_activity(now);
        // Seventh and eighth: text and FIN.
        if !seg.payload.is_empty() {
            self.on_payload(now, seq, seg.payload);
        }
        if seg.flags.contains(Flags::FIN) {
            self.on_fin_segment(now, seq + seg.payload.len() as i64);
        }
    }

    /// PAWS (RFC 7323 §5): `tsval` is older than a still-valid TS.Recent.
    fn paws_rejects(&self, now: Timestamp, tsval: u32) -> bool {
        self.ts_recent.is_some_and(|(recent, at)| {
            now - at < TS_RECENT_LIFETIME && (tsval.wrapping_sub(recent) as i32) < 0
        })
    }

    /// RFC 7323 §4.3: "If SEG.TSval >= TS.Recent and SEG.SEQ <= Last.ACK.sent then
    /// SEG.TSval is copied to TS.Recent".
    fn update_ts_recent(&mut self, now: Timestamp, seq: i64, seg: &TcpRepr<'_>) {
        let Some(ts) = seg.timestamps.filter(|_| self.ts_ok) else {
            return;
        };
        let newer = self.ts_recent.is_none_or(|(r, at)| {
            (ts.tsval.wrapping_sub(r) as i32) >= 0 || now - at >= TS_RECENT_LIFETIME
        });
        if newer && seq <= self.last_ack_sent as i64 {
            self.ts_recent = Some((ts.tsval, now));
        }
    }

    /// The four-case acceptability test of RFC 9293 §3.10.7.4.
    fn acceptable(&self, seq: i64, seg: &TcpRepr<'_>) -> bool {
        let nxt = self.rcv_nxt as i64;
        let wnd = self.rcv_adv.saturating_sub(self.rcv_nxt) as i64;
        let len = seg.segment_len() as i64;
        let in_window = |s: i64| nxt <= s && s < nxt + wnd;
        match (len, wnd) {
            (0, 0) => seq == nxt,
            (0, _) => in_window(seq),
            // A bare FIN needs no buffer: accept it at RCV.NXT even into a zero window
            // (RFC 9293 would drop it and wait for the window to reopen).
            (_, 0) => seg.payload.is_empty() && seq == nxt,
            _ => in_window(seq) || in_window(seq + len - 1),
        }
    }

    /// RFC 9293 §3.10.7.4: "If an incoming segment is not acceptable, an acknowledgment
    /// should be sent in reply (unless the RST bit is set ...)".
    fn on_unacceptable(&mut self, now: Timestamp, seq: i64, seg: &TcpRepr<'_>) {
        self.stats.dropped_segments += 1;
        if seg.flags.contains(Flags::RST) {
            return;
        }
        let end = seq + seg.payload.len() as i64;
        if !seg.payload.is_empty() && end <= self.rcv_nxt as i64 && seq > 0 {
            self.stats.duplicate_segments += 1;
            self.ack.dsack = Some((seq as u64, end as u64));
        }
        if self.state == State::TimeWait && seg.flags.contains(Flags::FIN) {
            //# TIME-WAIT STATE: ... Acknowledge it, and restart the 2 MSL timeout.
            self.timers
                .set(Timer::TimeWait, now + self.config.time_wait);
        }
        self.ack.immediate = true;
    }

    /// RFC 5961 §3.2: reset only on an exact match; challenge anything else in the window.
    fn on_rst(&mut self, now: Timestamp, seq: i64) {
        let nxt = self.rcv_nxt as i64;
        let wnd = self.rcv_adv.saturating_sub(self.rcv_nxt).max(1) as i64;
        if seq == nxt {
            self.terminate(if self.state == State::TimeWait {
                Ending::Graceful
            } else {
                Ending::Reset
            });
        } else if nxt < seq && seq < nxt + wnd {
            //= RFC 5961 §3.2
            //# If the RST bit is set and the sequence number does not exactly match the
            //# next expected sequence value, yet is within the current receive window
            //# (RCV.NXT < SEG.SEQ < RCV.NXT+RCV.WND), TCP MUST send an acknowledgment
            //# (challenge ACK)
            self.challenge_ack(now);
        } else {
            self.stats.dropped_segments += 1;
        }
    }

    /// Queues a rate-limited challenge ACK (RFC 5961 §7).
    fn challenge_ack(&mut self, now: Timestamp) {
        let (start, count) = &mut self.challenge_window;
        if now - *start >= Duration::from_secs(1) {
            *start = now;
            *count = 0;
        }
        if *count < CHALLENGE_ACK_LIMIT {
            *count += 1;
            self.stats.challenge_acks += 1;
            self.ack.immediate = true;
        }
    }

    /// The ACK field checks (RFC 9293 §3.10.7.4 fifth, RFC 5961 §5.2); `false` drops the
    /// segment.
    fn on_ack_field(&mut self, now: Timestamp, seg: &TcpRepr<'_>, ack_seq: SeqNumber) -> bool {
        let ack = self.snd_offset(ack_seq);
        if ack > self.snd_nxt as i64 {
            //# If the ACK acks something not yet sent (SEG.ACK > SND.NXT), then send an
            //# ACK, drop the segment, and return.
            self.stats.dropped_segments += 1;
            self.ack.immediate = true;
            return false;
        }
        //= RFC 5961 §5.2
        //# ... (SND.UNA - MAX.SND.WND) =< SEG.ACK =< SND.NXT ... All incoming segments
        //# whose ACK value doesn't satisfy the above condition MUST be discarded and an
        //# ACK sent back.
        if ack < self.snd_una as i64 - self.max_snd_wnd as i64 {
            self.stats.dropped_segments += 1;
            self.challenge_ack(now);
            return false;
        }
        if self.state == State::SynReceived {
            //# SYN-RECEIVED STATE: If SND.UNA < SEG.ACK =< SND.NXT, then enter ESTABLISHED
            if ack < 1 {
                self.stats.dropped_segments += 1;
                return false;
            }
            self.snd_wl1 = seg.seq_number;
            self.snd_wl2 = 0;
            self.handshake_rtt_sample(now);
            self.establish(now);
        }
        if ack >= self.snd_una as i64 {
            self.on_ack(now, seg, ack as u64);
        }
        true
    }

    /// Processes an acceptable ACK: window, SACK, cumulative ACK, RTT, loss detection,
    /// congestion control, timers and close-state transitions.
    fn on_ack(&mut self, now: Timestamp, seg: &TcpRepr<'_>, ack: u64) {
        let prior_in_flight = self.scoreboard.in_flight();
        let prior_una = self.snd_una;
        let prior_wnd = self.snd_wnd;
        self.update_window(seg, ack);

        // Cumulative first: RACK's reordering test compares each delivered segment with
        // the highest one delivered *before* it (RFC 8985 §6.2 step 3).
        let mut delivered = Delivery::default();
        if ack > self.snd_una {
            self.on_cumulative_ack(now, seg, ack, &mut delivered);
        }
        let dsack = self.on_sack_blocks(now, seg, ack, &mut delivered);
        if ack == prior_una && !self.sack_ok {
            let dup = seg.payload.is_empty()
                && !seg.flags.contains(Flags::FIN)
                && self.snd_wnd == prior_wnd
                && !self.scoreboard.is_empty();
            if dup {
                self.on_duplicate_ack(now);
            }
        }
        if dsack {
            self.stats.spurious_retransmits += 1;
        }
        let exiting = self.maybe_exit_recovery();
        self.rack.on_ack(dsack, self.snd_una, self.snd_nxt, exiting);
        self.detect_losses(now);
        self.on_tlp_ack(now, seg, dsack);
        let (pipe, ssthresh, smss) = (self.scoreboard.in_flight(), self.cc.ssthresh(), self.smss());
        if let Some(prr) = &mut self.prr {
            prr.on_ack(delivered.total, pipe, ssthresh, smss);
        }
        // An episode that began on this ACK may already be over (everything acknowledged).
        self.maybe_exit_recovery();

        if delivered.for_cc > 0 {
            let app_limited = !self.cwnd_blocked && prior_in_flight * 2 < self.cc.window();
            self.cc
                .on_ack(now, delivered.for_cc, &self.rtt, app_limited);
        }
        self.cwnd_blocked = false;

        if self.snd_una > prior_una {
            self.on_progress(now);
        }
        if self.snd_wnd > 0 && self.timers.is_set(Timer::Persist) && self.snd_wnd > prior_wnd {
            self.timers.stop(Timer::Persist);
            self.persist_backoff = 0;
        }
    }

    /// Leaves loss recovery once SND.UNA passes the recovery point (RFC 6675 §5).
    fn maybe_exit_recovery(&mut self) -> bool {
        let exiting = self.recovery_point.is_some_and(|p| self.snd_una >= p);
        if exiting {
            self.recovery_point = None;
            self.prr = None;
        }
        exiting
    }

    /// RFC 9293 §3.10.7.4: "If SND.UNA =< SEG.ACK =< SND.NXT, the send window should be
    /// updated. If (SND.WL1 < SEG.SEQ or (SND.WL1 = SEG.SEQ and SND.WL2 =< SEG.ACK))".
    fn update_window(&mut self, seg: &TcpRepr<'_>, ack: u64) {
        let newer = self.snd_wl1 < seg.seq_number
            || (self.snd_wl1 == seg.seq_number && self.snd_wl2 <= ack);
        if newer {
            self.snd_wnd = u64::from(seg.window_len) << self.snd_wscale;
            self.max_snd_wnd = self.max_snd_wnd.max(self.snd_wnd);
            self.snd_wl1 = seg.seq_number;
            self.snd_wl2 = ack;
        }
    }

    /// Applies SACK blocks; returns whether the first one is a D-SACK (RFC 2883 §4: below
    /// the cumulative ACK, or inside the second block).
    fn on_sack_blocks(
        &mut self,
        now: Timestamp,
        seg: &TcpRepr<'_>,
        ack: u64,
        delivered: &mut Delivery,
    ) -> bool {
        if !self.sack_ok {
            return false;
        }
        let mut dsack = false;
        let blocks = seg.sack_blocks.as_slice();
        for (i, block) in blocks.iter().enumerate() {
            let left = self.snd_offset(block.left);
            let right = self.snd_offset(block.right);
            if left >= right || left < 0 || right > self.snd_nxt as i64 {
                continue;
            }
            let (left, right) = (left as u64, right as u64);
            if i == 0 {
                let inside_second = blocks.get(1).is_some_and(|b| {
                    self.snd_offset(b.left) <= left as i64
                        && right as i64 <= self.snd_offset(b.right)
                });
                if right <= ack || inside_second {
                    dsack = right <= ack || self.scoreboard.covers_retransmission(left, right);
                    continue;
                }
            }
            let tsecr = self.tsecr(seg);
            let min_rtt = self.rtt.min_rtt();
            let recovery_start = self.recovery_start;
            let rack = &mut self.rack;
            self.scoreboard.sack(left, right, |d| {
                let before = tsecr.is_some_and(|t| ts_before(t, d.xmit_time));
                rack.on_delivered(d, now, before, min_rtt);
                delivered.total += d.len();
                if recovery_start.is_none_or(|r| d.xmit_time > r) {
                    delivered.for_cc += d.len();
                }
            });
        }
        dsack
    }

    fn tsecr(&self, seg: &TcpRepr<'_>) -> Option<u32> {
        seg.timestamps.filter(|_| self.ts_ok).map(|ts| ts.tsecr)
    }

    /// SND.UNA advances to `ack`.
    fn on_cumulative_ack(
        &mut self,
        now: Timestamp,
        seg: &TcpRepr<'_>,
        ack: u64,
        delivered: &mut Delivery,
    ) {
        let tsecr = self.tsecr(seg);
        let min_rtt = self.rtt.min_rtt();
        let recovery_start = self.recovery_start;
        let mut karn_sample: Option<Timestamp> = None;
        let mut oldest: Option<Timestamp> = None;
        let rack = &mut self.rack;
        self.scoreboard.ack_cumulative(ack, |d| {
            oldest = Some(oldest.map_or(d.xmit_time, |t| t.min(d.xmit_time)));
            let before = tsecr.is_some_and(|t| ts_before(t, d.xmit_time));
            rack.on_delivered(d, now, before, min_rtt);
            delivered.total += d.len();
            if recovery_start.is_none_or(|r| d.xmit_time > r) {
                delivered.for_cc += d.len();
            }
            if d.xmit_count == 1 {
                karn_sample = Some(karn_sample.map_or(d.xmit_time, |t| t.max(d.xmit_time)));
            }
        });
        let syn_only = self.snd_una == 0;
        let acked_data_end = ack.saturating_sub(1).min(self.send.end());
        let before = self.send.len();
        self.send.ack(acked_data_end);
        let freed = before - self.send.len();
        self.stats.bytes_acked += freed as u64;
        self.snd_una = ack;
        self.dupacks = 0;

        // RTT: the timestamp echo when we have it (RFC 7323 §4.1), else Karn's rule
        // (RFC 6298 §3: never time a retransmitted segment). A genuine echo is the TSval of
        // a segment this ACK covers, so it cannot be older than the oldest of them: a
        // larger "RTT" is a bogus TSecr and is not taken.
        let sample = match tsecr {
            Some(t) if t != 0 => {
                let rtt = Duration::from_micros(u64::from(ts_clock(now).wrapping_sub(t)));
                oldest.filter(|&o| rtt <= now - o).map(|_| rtt)
            }
            _ => karn_sample.map(|t| now - t),
        };
        let sample = sample.filter(|_| !syn_only);
        if self.cc.in_slow_start() && self.hystart.on_ack(ack, self.snd_nxt, sample) {
            self.cc.exit_slow_start();
        }
        if let Some(rtt) = sample {
            self.rtt.on_sample(rtt);
            //= RFC 6298 §5.7
            //# ... a new RTT sample ... the RTO is recomputed (the backoff is dropped)
            self.rto_backoff = 0;
        }
        if !self.sack_ok {
            self.on_partial_ack();
        }
        if freed > 0 && self.write_blocked {
            self.write_blocked = false;
            self.events.push_back(StreamEvent::Writable);
        }
        if self.fin_offset.is_some_and(|f| ack > f) {
            self.on_fin_acked(now);
        }
    }

    /// RFC 6582 §3.2 step 3 (no SACK): a partial ACK in recovery means the next segment
    /// was lost too.
    fn on_partial_ack(&mut self) {
        if self.recovery_point.is_some_and(|p| self.snd_una < p) {
            if let Some(front) = self.scoreboard.front().copied() {
                if front.state == SegState::InFlight && front.xmit_count == 1 {
                    self.mark_front_lost();
                }
            }
        }
    }

    /// RFC 5681 §3.2 (no SACK): the third duplicate ACK retransmits the first segment.
    fn on_duplicate_ack(&mut self, now: Timestamp) {
        self.dupacks += 1;
        if self.dupacks == DUP_THRESH {
            if let Some(seg) = self.mark_front_lost() {
                self.congestion_event(now, seg.xmit_time, seg.epoch);
            }
        }
    }

    fn mark_front_lost(&mut self) -> Option<SentSegment> {
        let seg = self.scoreboard.front().copied()?;
        if seg.state != SegState::InFlight {
            return None;
        }
        self.scoreboard.mark_lost(0);
        self.stats.lost_segments += 1;
        Some(seg)
    }

    /// Runs RACK loss detection and the congestion response.
    fn detect_losses(&mut self, now: Timestamp) {
        if self.scoreboard.is_empty() {
            // Nothing in flight (a receive-only side, every ACK it gets): nothing to lose.
            self.timers.stop(Timer::Reorder);
            return;
        }
        let in_recovery = self.recovery_point.is_some();
        let srtt = self.rtt.srtt_or_initial();
        let reo_wnd = self.rack.reo_wnd(
            in_recovery,
            self.scoreboard.sacked_segments(),
            self.rtt.min_rtt(),
            srtt,
        );
        let epoch = self.path_epoch;
        let mut newest_lost: Option<SentSegment> = None;
        let stats = &mut self.stats;
        let timeout = self
            .scoreboard
            .detect_losses(&self.rack, reo_wnd, now, |seg| {
                stats.lost_segments += 1;
                if seg.epoch != epoch {
                    stats.lost_before_path_change += 1;
                } else if newest_lost.is_none_or(|n| seg.xmit_time > n.xmit_time) {
                    newest_lost = Some(*seg);
                }
            });
        if let Some(seg) = newest_lost {
            self.congestion_event(now, seg.xmit_time, seg.epoch);
        }
        match timeout {
            Some(d) => self.timers.set(Timer::Reorder, now + d),
            None => self.timers.stop(Timer::Reorder),
        }
    }

    /// A loss of a segment sent at `xmit_time` in path epoch `epoch`: reduce the window
    /// unless this episode already did (RFC 6675 §5: one reduction per window of data) or
    /// the segment was sent before the path changed.
    fn congestion_event(&mut self, now: Timestamp, xmit_time: Timestamp, epoch: u32) {
        if epoch != self.path_epoch {
            return;
        }
        if self.recovery_start.is_some_and(|r| xmit_time <= r) {
            return;
        }
        self.recovery_start = Some(now);
        self.recovery_point = Some(self.snd_nxt);
        self.stats.congestion_events += 1;
        self.cc.on_congestion_event(now);
        self.hystart.stop();
        self.prr = Some(Prr::new(self.snd_nxt - self.snd_una));
        // A probe in flight cannot tell us more than the recovery will.
        self.timers.stop(Timer::Tlp);
    }

    /// RFC 8985 §7.4: did the tail loss probe repair a loss?
    fn on_tlp_ack(&mut self, now: Timestamp, seg: &TcpRepr<'_>, dsack: bool) {
        let Some(end) = self.tlp.end else { return };
        if dsack {
            //# the TLP retransmission was spurious: no loss
            self.tlp = TlpEpisode::default();
            return;
        }
        if self.snd_una < end {
            return;
        }
        // The ACK of the probe itself echoes its TSval; if that ACK covers the probe and
        // is no D-SACK, the original was lost and the probe repaired it.
        let probe_acked = self.tsecr(seg) == Some(self.tlp.tsval);
        if self.tlp.is_retrans && probe_acked {
            self.congestion_event(now, self.tlp.sent, self.tlp.epoch);
        }
        self.tlp = TlpEpisode::default();
    }

    /// SND.UNA moved: restart the RTO (RFC 6298 §5.2, §5.3), re-arm the probe timer.
    fn on_progress(&mut self, now: Timestamp) {
        self.last_progress = now;
        self.persist_backoff = 0;
        if self.scoreboard.is_empty() {
            //# (5.2) When all outstanding data has been acknowledged, turn off the
            //# retransmission timer.
            self.timers.stop(Timer::Rto);
            self.timers.stop(Timer::Tlp);
            self.timers.stop(Timer::Reorder);
        } else {
            //# (5.3) When an ACK is received that acknowledges new data, restart the
            //# retransmission timer
            self.arm_rto(now);
            self.arm_tlp(now);
        }
    }

    fn on_fin_acked(&mut self, now: Timestamp) {
        self.events.push_back(StreamEvent::SendFinished);
        match self.state {
            State::FinWait1 => self.state = State::FinWait2,
            State::Closing => self.enter_time_wait(now),
            State::LastAck => self.terminate(Ending::Graceful),
            _ => {}
        }
    }

    /// Payload of an acceptable segment starting at receive offset `seq`.
    fn on_payload(&mut self, now: Timestamp, seq: i64, payload: &[u8]) {
        if !self.state.receives_data() {
            // After the peer's FIN: nothing new can be valid; re-ACK.
            self.ack.immediate = true;
            return;
        }
        // Data byte offset = sequence offset − 1 (the SYN). `acceptable` guarantees the
        // segment overlaps the window, so `seq + len > rcv_nxt - ...` and `seq >= 1 - len`.
        let (start, payload) = if seq < 1 {
            let skip = (1 - seq).min(payload.len() as i64) as usize;
            (0u64, &payload[skip..])
        } else {
            ((seq - 1) as u64, payload)
        };
        // Cut at the advertised right edge.
        let edge = self.rcv_adv.saturating_sub(1);
        let keep = edge.saturating_sub(start).min(payload.len() as u64) as usize;
        let payload = &payload[..keep];
        if payload.is_empty() {
            self.ack.immediate = true;
            return;
        }
        self.ack.largest_payload = self.ack.largest_payload.max(payload.len() as u64);
        let r = self.recv.insert(start, payload);
        if r.in_order > 0 {
            self.rcv_nxt += r.in_order as u64;
            self.stats.bytes_received += r.in_order as u64;
            if !self.readable_signalled {
                self.readable_signalled = true;
                self.events.push_back(StreamEvent::Readable);
            }
        }
        if let Some((s, e)) = r.duplicate {
            self.stats.duplicate_segments += 1;
            self.ack.dsack = Some((s + 1, e + 1));
        }
        if r.out_of_order {
            self.stats.out_of_order_segments += 1;
        }
        if r.dropped {
            self.stats.out_of_order_dropped += 1;
        }
        //= RFC 5681 §4.2
        //# an immediate ACK SHOULD be generated when a segment arrives that fills in all
        //# or part of a gap in the sequence space.
        //# A TCP receiver SHOULD send an immediate duplicate ACK when an out-of-order
        //# segment arrives.
        if r.filled_gap || r.out_of_order || r.duplicate.is_some() || r.dropped {
            self.ack.immediate = true;
        } else if r.in_order > 0 {
            self.schedule_ack(now, r.in_order as u64);
        }
        self.consume_fin_if_due(now);
    }

    /// RFC 9293 §3.8.6.3 / RFC 5681 §4.2: ACK at least every second full-sized segment,
    /// and within `ack_delay` of the first unacknowledged one.
    fn schedule_ack(&mut self, now: Timestamp, bytes: u64) {
        self.ack.pending_bytes += bytes;
        if self.ack.pending_bytes >= 2 * self.ack.largest_payload || self.config.ack_delay.is_zero()
        {
            self.ack.immediate = true;
        } else if !self.timers.is_set(Timer::DelayedAck) {
            self.timers
                .set(Timer::DelayedAck, now + self.config.ack_delay);
        }
    }

    /// A FIN at receive offset `fin`.
    fn on_fin_segment(&mut self, now: Timestamp, fin: i64) {
        if fin < 1 || fin as u64 > self.rcv_adv || self.peer_finished {
            self.ack.immediate = true;
            return;
        }
        let fin = fin as u64;
        if self.peer_fin.is_none_or(|f| f == fin) {
            self.peer_fin = Some(fin);
        }
        self.ack.immediate = true;
        self.consume_fin_if_due(now);
    }

    /// Once every byte before the peer's FIN is in, the FIN takes effect.
    fn consume_fin_if_due(&mut self, now: Timestamp) {
        if self.peer_finished || self.peer_fin != Some(self.rcv_nxt) {
            return;
        }
        self.rcv_nxt += 1;
        self.peer_finished = true;
        self.ack.immediate = true;
        self.events.push_back(StreamEvent::PeerFinished);
        self.recv.shrink();
        //= RFC 9293 §3.10.7.4
        //# SYN-RECEIVED STATE, ESTABLISHED STATE: Enter the CLOSE-WAIT state.
        //# FIN-WAIT-1 STATE: If our FIN has been ACKed (perhaps in this segment), then
        //# enter TIME-WAIT, start the time-wait timer, turn off the other timers;
        //# otherwise, enter the CLOSING state.
        //# FIN-WAIT-2 STATE: Enter the TIME-WAIT state.
        match self.state {
            State::Established => self.state = State::CloseWait,
            State::FinWait1 => self.state = State::Closing,
            State::FinWait2 => self.enter_time_wait(now),
            _ => {}
        }
    }

    fn note_activity(&mut self, now: Timestamp) {
        self.keepalives_unanswered = 0;
        self.arm_keepalive(now);
        self.arm_idle(now);
    }

    // ---------------------------------------------------------------------------------
    // Timers.

    fn arm_rto(&mut self, now: Timestamp) {
        self.timers
            .set(Timer::Rto, now + self.rtt.rto_backed_off(self.rto_backoff));
    }

    /// RFC 8985 §7.2: schedule a probe timeout after new data or progress, when not in
    /// recovery and SACK is on.
    fn arm_tlp(&mut self, now: Timestamp) {
        let allowed = self.config.tail_loss_probe
            && self.sack_ok
            && self.tlp.end.is_none()
            && self.recovery_point.is_none()
            && self.rto_backoff == 0
            && !self.scoreboard.is_empty();
        if !allowed {
            self.timers.stop(Timer::Tlp);
            return;
        }
        //= RFC 8985 §7.2
        //# If SRTT is available: PTO = 2 * SRTT; If FlightSize is equal to one segment:
        //# PTO += WCDelAckT ... Else PTO = 1 sec
        let mut pto = match self.rtt.srtt() {
            Some(srtt) => srtt * 2,
            None => Duration::from_secs(1),
        };
        if self.scoreboard.len() == 1 {
            // Our peer runs this stack: its worst-case delayed ACK is its `ack_delay`,
            // assumed equal to ours.
            pto += self.config.ack_delay;
        }
        let mut at = now + pto;
        //# If the RTO timer would expire before PTO, the sender SHOULD NOT arm PTO
        if let Some(rto) = self.timers.get(Timer::Rto) {
            at = at.min(rto);
        }
        self.timers.set(Timer::Tlp, at);
    }

    fn arm_keepalive(&mut self, now: Timestamp) {
        if let Some(ka) = self.config.keepalive {
            self.timers.set(Timer::KeepAlive, now + ka.idle);
        }
    }

    fn arm_idle(&mut self, now: Timestamp) {
        if let Some(idle) = self.config.idle_timeout {
            self.timers.set(Timer::Idle, now + idle);
        }
    }

    /// RFC 6298 §5.4–5.6 with RACK (RFC 8985 §6.3): everything outstanding is lost,
    /// back off, collapse the window, retransmit from the front.
    fn on_rto(&mut self, now: Timestamp) {
        if self.scoreboard.is_empty() {
            return;
        }
        if now - self.last_progress >= self.config.user_timeout {
            self.terminate(Ending::TimedOut);
            return;
        }
        self.stats.rto_timeouts += 1;
        let current_path = self
            .scoreboard
            .front()
            .is_some_and(|s| s.epoch == self.path_epoch);
        if current_path {
            self.cc
                .on_retransmission_timeout(now, self.rto_backoff == 0);
            self.hystart.stop();
            self.stats.congestion_events += 1;
            self.recovery_start = Some(now);
            self.recovery_point = Some(self.snd_nxt);
        }
        // After a timeout the window is one segment: slow start, not PRR, rebuilds it.
        self.prr = None;
        let stats = &mut self.stats;
        self.scoreboard.mark_all_lost(|_| stats.lost_segments += 1);
        //= RFC 2018 §8
        //# the data sender MUST retransmit the segment at the left edge of the window after
        //# a retransmit timeout, whether or not the SACK bit has been set for that segment.
        // (A receiver that reneged, or lied, would otherwise stall the stream for good.)
        self.scoreboard.unsack_front();
        self.tlp = TlpEpisode::default();
        self.timers.stop(Timer::Tlp);
        self.timers.stop(Timer::Reorder);
        //= RFC 6298 §5.5
        //# The host MUST set RTO <- RTO * 2 ("back off the timer").
        self.rto_backoff += 1;
        self.arm_rto(now);
    }

    /// RFC 9293 §3.8.6.1: probe a zero window, backing off exponentially.
    fn on_persist(&mut self, now: Timestamp) {
        if !self.state.sends_data() || (self.unsent() == 0 && !self.fin_due()) {
            return;
        }
        self.probe = Some(Probe::Window);
        self.persist_backoff = self.persist_backoff.saturating_add(1);
        self.timers.set(
            Timer::Persist,
            now + self.rtt.rto_backed_off(self.persist_backoff),
        );
    }

    /// RFC 9293 §3.8.4: probe a quiet peer; give up after `probes` unanswered ones.
    fn on_keepalive(&mut self, now: Timestamp) {
        let Some(ka) = self.config.keepalive else {
            return;
        };
        if !self.scoreboard.is_empty() || self.unsent() > 0 {
            // Data is outstanding: the RTO, not keepalives, detects a dead peer.
            self.timers.set(Timer::KeepAlive, now + ka.idle);
            return;
        }
        if self.keepalives_unanswered >= ka.probes {
            self.terminate(Ending::TimedOut);
            return;
        }
        self.keepalives_unanswered += 1;
        self.probe = Some(Probe::KeepAlive);
        self.timers.set(Timer::KeepAlive, now + ka.interval);
    }

    fn enter_time_wait(&mut self, now: Timestamp) {
        self.state = State::TimeWait;
        self.timers.stop_all();
        self.timers
            .set(Timer::TimeWait, now + self.config.time_wait);
        self.release_buffers();
    }

    /// TIME-WAIT and CLOSED keep no send-side memory; unread received bytes stay readable
    /// (shrunk to fit).
    fn release_buffers(&mut self) {
        self.send.release();
        self.scoreboard.clear();
        self.recv.shrink();
        self.events.shrink_to_fit();
    }

    /// Enters CLOSED with the events that explain why.
    fn terminate(&mut self, ending: Ending) {
        if self.state == State::Closed {
            return;
        }
        match ending {
            Ending::Reset => self.events.push_back(StreamEvent::Reset),
            Ending::TimedOut => self.events.push_back(StreamEvent::TimedOut),
            Ending::Graceful | Ending::Aborted => {}
        }
        self.events.push_back(StreamEvent::Closed);
        self.state = State::Closed;
        self.ending = Some(ending);
        self.timers.stop_all();
        self.probe = None;
        self.release_buffers();
    }

    // ---------------------------------------------------------------------------------
    // Transmission.

    fn unsent(&self) -> u64 {
        (1 + self.send.end()).saturating_sub(self.snd_nxt.max(1))
    }

    fn fin_due(&self) -> bool {
        self.fin_queued && self.fin_offset.is_none()
    }

    /// Our SACK blocks: a pending D-SACK first, then held ranges freshest first.
    fn sack_blocks(&self) -> SackBlocks {
        let mut blocks = SackBlocks::EMPTY;
        if !self.sack_ok {
            return blocks;
        }
        if let Some((s, e)) = self.ack.dsack {
            blocks.push(SackBlock {
                left: self.rcv_seq(s),
                right: self.rcv_seq(e),
            });
        }
        self.recv.sack_ranges(|s, e| {
            blocks.push(SackBlock {
                left: self.rcv_seq(s + 1),
                right: self.rcv_seq(e + 1),
            })
        });
        blocks
    }

    /// Option bytes on a data segment carrying `sack` blocks (as emitted).
    fn option_len(&self, sack: usize) -> u64 {
        let ts = if self.ts_ok { TS_OPTION_LEN } else { 0 };
        ts + if sack > 0 { 4 + 8 * sack as u64 } else { 0 }
    }

    /// Payload of a full new-data segment given the SACK information pending now.
    fn max_payload(&self) -> u64 {
        let sack = self.sack_blocks().len().min(if self.ts_ok { 3 } else { 4 });
        self.snd_mss.saturating_sub(self.option_len(sack)).max(1)
    }

    /// Size of the next new-data segment and whether it carries our FIN, honouring the
    /// peer window, sender silly-window avoidance and Nagle. Arms the persist timer when
    /// the window stops us with nothing in flight.
    fn next_segment(&mut self, now: Timestamp) -> Option<(u64, bool)> {
        let unsent = self.unsent();
        let fin_due = self.fin_due();
        if unsent == 0 {
            // A bare FIN needs no window.
            return fin_due.then_some((0, true));
        }
        let max_payload = self.max_payload();
        let usable = (self.snd_una + self.snd_wnd).saturating_sub(self.snd_nxt);
        let len = unsent.min(usable).min(max_payload);
        //= RFC 9293 §3.8.6.2.1
        //# Send data: (1) if a maximum-sized segment can be sent, i.e., if:
        //# min(D,U) >= Eff.snd.MSS; (2) or if the data is pushed and all queued data can
        //# be sent now ... (3) or if at least a fraction Fs of the maximum window can be
        //# sent ... Fs = 1/2
        let sws_ok = len == max_payload || len == unsent || len * 2 >= self.max_snd_wnd;
        if len == 0 || !sws_ok {
            if self.scoreboard.is_empty() && !self.timers.is_set(Timer::Persist) {
                self.timers.set(
                    Timer::Persist,
                    now + self.rtt.rto_backed_off(self.persist_backoff),
                );
            }
            return None;
        }
        //= RFC 9293 §3.7.4
        //# if there is unacknowledged data, then the sending TCP buffers all user data
        //# (regardless of the PSH bit) until the outstanding data has been acknowledged or
        //# until the TCP can send a full-sized segment
        if self.config.nagle && len < max_payload && !self.scoreboard.is_empty() {
            return None;
        }
        Some((len, fin_due && len == unsent))
    }

    /// Pacing gate: `true` (and the pacing timer armed) when the segment must wait.
    fn paced(&mut self, now: Timestamp, bytes: u64) -> bool {
        if !self.config.pacing {
            return false;
        }
        let gain = if self.cc.in_slow_start() {
            Pacer::SLOW_START_GAIN
        } else {
            Pacer::AVOIDANCE_GAIN
        };
        let delay = self.pacer.delay(
            now,
            bytes,
            self.smss(),
            self.cc.window(),
            self.rtt.srtt(),
            gain,
        );
        match delay {
            Some(at) => {
                self.timers.set(Timer::Pacing, at);
                true
            }
            None => {
                self.timers.stop(Timer::Pacing);
                false
            }
        }
    }

    /// Whether the congestion window (or, in recovery, PRR) lets `len` more bytes go.
    fn window_allows(&mut self, len: u64) -> bool {
        let allowed = match &self.prr {
            Some(prr) => prr.allows(len),
            None => {
                let in_flight = self.scoreboard.in_flight();
                in_flight == 0 || in_flight + len <= self.cc.window()
            }
        };
        if !allowed {
            self.cwnd_blocked = true;
        }
        allowed
    }

    /// A retransmission of the first lost segment, or new data.
    fn transmit_data(&mut self, now: Timestamp, buf: &mut Vec<u8>) -> Option<Transmit> {
        if let Some(idx) = self.scoreboard.first_lost() {
            let len = self.scoreboard.get(idx)?.len();
            if !self.window_allows(len) || self.paced(now, len) {
                return None;
            }
            return self.retransmit(now, idx, buf);
        }
        let (len, fin) = self.next_segment(now)?;
        if !self.window_allows(len) || (len > 0 && self.paced(now, len)) {
            return None;
        }
        Some(self.send_new(now, len, fin, buf))
    }

    /// Re-sends scoreboard segment `idx` (callers pass an index they just looked up).
    fn retransmit(&mut self, now: Timestamp, idx: usize, buf: &mut Vec<u8>) -> Option<Transmit> {
        let seg = *self.scoreboard.get(idx)?;
        self.scoreboard.on_retransmit(idx, now, self.path_epoch);
        let payload = seg.len() - u64::from(seg.fin);
        if let Some(prr) = &mut self.prr {
            prr.on_sent(seg.len());
        }
        self.stats.retransmits += 1;
        self.stats.bytes_retransmitted += payload;
        if !self.timers.is_set(Timer::Rto) {
            self.arm_rto(now);
        }
        Some(self.emit_data(now, seg.start, payload, seg.fin, buf))
    }

    fn send_new(&mut self, now: Timestamp, len: u64, fin: bool, buf: &mut Vec<u8>) -> Transmit {
        let start = self.snd_nxt;
        let end = start + len + u64::from(fin);
        if self.scoreboard.is_empty() {
            self.last_progress = now;
        }
        self.scoreboard.on_sent(SentSegment {
            start,
            end,
            fin,
            xmit_time: now,
            xmit_count: 1,
            epoch: self.path_epoch,
            state: SegState::InFlight,
        });
        self.snd_nxt = end;
        if fin {
            self.fin_offset = Some(end - 1);
        }
        if let Some(prr) = &mut self.prr {
            prr.on_sent(end - start);
        }
        //= RFC 6298 §5.1
        //# Every time a packet containing data is sent (including a retransmission), if
        //# the timer is not running, start it running
        if !self.timers.is_set(Timer::Rto) {
            self.arm_rto(now);
        }
        self.arm_tlp(now);
        self.timers.stop(Timer::Persist);
        self.emit_data(now, start, len, fin, buf)
    }

    /// Probes bypass cwnd and pacing: one segment each.
    fn transmit_probe(
        &mut self,
        now: Timestamp,
        probe: Probe,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        match probe {
            Probe::Tlp => {
                //= RFC 8985 §7.3
                //# If such a segment is not available [new data], then the sender SHOULD
                //# retransmit the highest-sequence segment sent so far
                self.stats.tlp_probes += 1;
                let tsval = ts_clock(now);
                if let Some((len, fin)) = self.next_segment(now) {
                    let t = self.send_new(now, len, fin, buf);
                    self.tlp = TlpEpisode {
                        end: Some(self.snd_nxt),
                        is_retrans: false,
                        tsval,
                        sent: now,
                        epoch: self.path_epoch,
                    };
                    return Some(t);
                }
                let idx = self.scoreboard.last_unsacked()?;
                let t = self.retransmit(now, idx, buf)?;
                self.tlp = TlpEpisode {
                    end: Some(self.snd_nxt),
                    is_retrans: true,
                    tsval,
                    sent: now,
                    epoch: self.path_epoch,
                };
                self.arm_rto(now);
                Some(t)
            }
            Probe::Window => {
                let usable = (self.snd_una + self.snd_wnd).saturating_sub(self.snd_nxt);
                let len = self.unsent().min(usable).min(self.max_payload());
                if len > 0 {
                    // RFC 9293 §3.8.6.2.1's override timeout: send what the window allows.
                    let fin = self.fin_due() && len == self.unsent();
                    return Some(self.send_new(now, len, fin, buf));
                }
                self.stats.window_probes += 1;
                Some(self.emit_probe(now, buf))
            }
            Probe::KeepAlive => {
                self.stats.keepalive_probes += 1;
                Some(self.emit_probe(now, buf))
            }
        }
    }

    /// An empty segment one below SND.UNA: outside the peer's window, so it must answer
    /// with an ACK carrying its current window (what BSD and Linux send).
    fn emit_probe(&mut self, now: Timestamp, buf: &mut Vec<u8>) -> Transmit {
        let seq = self.snd_seq(self.snd_una.saturating_sub(1));
        self.emit(now, seq, Flags::EMPTY, None, buf)
    }

    fn emit_ack(&mut self, now: Timestamp, buf: &mut Vec<u8>) -> Transmit {
        self.emit(now, self.snd_seq(self.snd_nxt), Flags::EMPTY, None, buf)
    }

    fn emit_data(
        &mut self,
        now: Timestamp,
        start: u64,
        len: u64,
        fin: bool,
        buf: &mut Vec<u8>,
    ) -> Transmit {
        let mut flags = if fin { Flags::FIN } else { Flags::EMPTY };
        // Data byte offset = sequence offset − 1.
        let data_start = start - 1;
        if len > 0 && data_start + len == self.send.end() {
            flags |= Flags::PSH;
        }
        self.stats.bytes_sent += len;
        self.emit(
            now,
            self.snd_seq(start),
            flags,
            Some((data_start, len as usize)),
            buf,
        )
    }

    /// Builds and appends one segment with ACK, window, timestamps and as many SACK blocks
    /// as fit in the MSS next to the payload; clears the ACK obligations it satisfies.
    fn emit(
        &mut self,
        now: Timestamp,
        seq: SeqNumber,
        flags: Flags,
        payload: Option<(u64, usize)>,
        buf: &mut Vec<u8>,
    ) -> Transmit {
        let payload_len = payload.map_or(0, |(_, len)| len);
        let mut sack_blocks = self.sack_blocks();
        let room = self
            .snd_mss
            .saturating_sub(payload_len as u64 + self.option_len(0));
        let fit = if room >= 12 {
            ((room - 4) / 8) as usize
        } else {
            0
        };
        sack_blocks.truncate(fit);
        let repr = TcpRepr {
            seq_number: seq,
            ack_number: Some(self.rcv_seq(self.rcv_nxt)),
            flags,
            window_len: self.advertise_window(),
            sack_blocks,
            timestamps: self.ts_ok.then(|| Timestamps {
                tsval: ts_clock(now),
                tsecr: self.ts_recent.map_or(0, |(ts, _)| ts),
            }),
            ..TcpRepr::default()
        };
        self.ack = AckState {
            largest_payload: self.ack.largest_payload,
            ..AckState::default()
        };
        self.timers.stop(Timer::DelayedAck);
        self.last_ack_sent = self.rcv_nxt;
        self.stats.segments_sent += 1;
        self.write_repr(&repr, buf, payload)
    }

    fn emit_rst(&mut self, buf: &mut Vec<u8>) -> Transmit {
        let repr = TcpRepr {
            seq_number: self.snd_seq(self.snd_nxt),
            ack_number: Some(self.rcv_seq(self.rcv_nxt)),
            flags: Flags::RST,
            ..TcpRepr::default()
        };
        self.stats.segments_sent += 1;
        self.write_repr(&repr, buf, None)
    }

    fn write_repr(
        &self,
        repr: &TcpRepr<'_>,
        buf: &mut Vec<u8>,
        payload: Option<(u64, usize)>,
    ) -> Transmit {
        let start = buf.len();
        buf.resize(start + repr.header_len(), 0);
        repr.emit(&mut Packet::new_unchecked(&mut buf[start..]));
        if let Some((offset, len)) = payload {
            self.send.copy_out(offset, len, buf);
        }
        let mut flags = repr.flags;
        if repr.ack_number.is_some() {
            flags |= Flags::ACK;
        }
        Transmit {
            size: buf.len() - start,
            flags,
            payload_len: buf.len() - start - repr.header_len(),
        }
    }

    /// The window field for the next segment (RFC 7323 §2.3 scaled), with receiver-side
    /// silly-window avoidance and without ever moving the right edge left.
    fn advertise_window(&mut self) -> u16 {
        let limit = 1 + self.recv.limit();
        //= RFC 9293 §3.8.6.2.2
        //# The suggested SWS avoidance algorithm for the receiver is to keep RCV.NXT+RCV.WND
        //# fixed until the reduction satisfies: RCV.BUFF - RCV.USER - RCV.WND >=
        //# min( Fr * RCV.BUFF, Eff.snd.MSS ) ... Fr = 1/2
        let threshold = (self.config.recv_buffer as u64 / 2).min(self.ack.largest_payload);
        let edge = if limit >= self.rcv_adv + threshold {
            limit
        } else {
            self.rcv_adv
        };
        let window = edge.saturating_sub(self.rcv_nxt);
        let raw = (window >> self.rcv_wscale).min(0xffff);
        //= RFC 9293 §3.8.6.2.2
        //# the receiver SHOULD NOT shrink the window
        self.rcv_adv = self.rcv_adv.max(self.rcv_nxt + (raw << self.rcv_wscale));
        raw as u16
    }

    /// After a read freed space: send a window update if the window grew enough to matter
    /// (it reopens a small window, or grew by two segments / a quarter of the buffer).
    fn maybe_window_update(&mut self) {
        if self.peer_finished || !self.state.is_synchronized() {
            return;
        }
        let limit = 1 + self.recv.limit();
        let increase = limit.saturating_sub(self.rcv_adv);
        let current = self.rcv_adv.saturating_sub(self.rcv_nxt);
        let mss = self.ack.largest_payload;
        let reopen = current < mss && increase >= mss.min(self.config.recv_buffer as u64 / 2);
        let grew = increase >= (2 * mss).max(self.config.recv_buffer as u64 / 4);
        if reopen || grew {
            self.ack.immediate = true;
        }
    }

    // ---------------------------------------------------------------------------------
    // Sequence-space conversions.

    fn snd_seq(&self, offset: u64) -> SeqNumber {
        self.iss + offset as u32
    }

    /// Send offset of `seq`, relative to SND.UNA (negative below the ISS).
    fn snd_offset(&self, seq: SeqNumber) -> i64 {
        self.snd_una as i64 + i64::from(seq - self.snd_seq(self.snd_una))
    }

    fn rcv_seq(&self, offset: u64) -> SeqNumber {
        self.irs + offset as u32
    }

    /// Receive offset of `seq`, relative to RCV.NXT.
    fn rcv_offset(&self, seq: SeqNumber) -> i64 {
        self.rcv_nxt as i64 + i64::from(seq - self.rcv_seq(self.rcv_nxt))
    }
}

/// Whether echoed timestamp `tsecr` predates a transmission at `xmit`.
fn ts_before(tsecr: u32, xmit: Timestamp) -> bool {
    (tsecr.wrapping_sub(ts_clock(xmit)) as i32) < 0
}
