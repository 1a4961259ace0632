//! [`Flow`]: one SAL flow's state machine (handshake, authenticated control, close,
//! migration and path validation, keepalive), and the transport riding on it.
//!
//! # Calling contract
//!
//! A flow is driven by its owner, independently of other flows (quinn's shape):
//!
//! 1. feed every datagram the endpoint routed to it with [`Flow::handle`];
//! 2. call [`Flow::handle_timeout`] when [`Flow::poll_timeout`] has passed;
//! 3. drain [`Flow::poll_transmit`] until `None` and send each datagram;
//! 4. drain [`Flow::poll`] (application events) and [`Flow::poll_endpoint_event`] (pass
//!    each to [`Endpoint::handle_event`](super::Endpoint::handle_event));
//! 5. repeat after every input, application call or timeout.
//!
//! `now` must never decrease across calls.
//!
//! # Control reliability
//!
//! As the original (`SERVAL-ORIGINAL.md` §3.2, §3.4): SYN, SYN-ACK, FIN and RSYN each
//! consume one version number and are retransmitted until acknowledged (one outstanding at a
//! time, the rest queued — not OR-merged as the original did); ACKs carry `ackno` = the next
//! version expected. Unlike the original every control packet after the SYN is MACed with the
//! flow key (`docs/SAL.md` §2), the server retransmits its SYN-ACK (the original relied on
//! the client, and a lost conn-ACK stranded the server), and path changes are validated by
//! challenge/response before traffic moves (`docs/SAL.md` §4).

use core::net::SocketAddr;
use std::collections::VecDeque;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::FlowConfig;
use super::crypto::{FlowKeys, KEY_SHARE_LEN, SharedSecret, Side, Transcript};
use super::stats::{DropReason, FlowStats};
use crate::time::Timestamp;
use crate::transport::{ReadError, RttEstimator, Stream, StreamConfig, StreamEvent, WriteError};
use crate::wire::sal::{ControlFlags, ControlRepr, Packet, Protocol, SalRepr, ServiceRepr};
use crate::wire::tcp::{Flags as TcpFlags, SeqNumber, TcpRepr};
use crate::wire::{FlowId, Nonce, ServiceId};

/// A datagram a flow or endpoint wants sent: the bytes are in the caller's buffer.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// Bytes written at the start of the buffer.
    pub size: usize,
    /// Local address to send from, when the flow moved to a new one (`None` = the
    /// socket's default).
    pub src: Option<SocketAddr>,
}

/// Application-visible events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The handshake completed.
    Connected,
    /// Data or datagrams can be read.
    Readable,
    /// Send-buffer space was freed after a short write (stream mode).
    Writable,
    /// The peer closed its sending side (SAL FIN): after the buffered data, end of stream.
    PeerFinished,
    /// Traffic now goes to a new, validated peer address.
    PathMigrated {
        /// The peer's new address.
        peer: SocketAddr,
    },
    /// The flow ended; nothing more will happen.
    Closed(CloseReason),
}

/// Why a flow ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// Both sides finished cleanly.
    Finished,
    /// The peer reset the flow (authenticated RST).
    Reset,
    /// The service refused the connection (RST during the handshake).
    Refused,
    /// A control packet went unanswered after every retransmission.
    TimedOut,
    /// Nothing was received for the idle timeout.
    IdleTimeout,
    /// This side aborted.
    Aborted,
}

/// Something the endpoint must learn from a flow (pass to
/// [`Endpoint::handle_event`](super::Endpoint::handle_event)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointEvent {
    /// The flow is finished: its FlowID can be forgotten.
    Drained,
    /// The handshake completed (half-open bookkeeping can go).
    Established,
}

/// What the endpoint learnt while routing a datagram to a flow (opaque to the caller).
#[derive(Clone, Debug)]
pub struct FlowInput {
    pub(super) shared: Option<SharedSecret>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Client: SYN sent.
    Request,
    /// Server: SYN-ACK sent, waiting for the conn-ACK.
    Respond,
    /// Established, possibly half-closed.
    Connected,
    /// Both FINs done; lingering to re-acknowledge a retransmitted FIN.
    Linger { until: Timestamp },
    /// Over.
    Closed,
}

/// A reliable control packet: consumes a version number, retransmitted until acked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reliable {
    Syn,
    SynAck,
    Fin,
    Rsyn,
}

#[derive(Clone, Copy, Debug)]
struct Queued {
    kind: Reliable,
    verno: u32,
}

/// Retransmission state of the head of the reliable queue.
#[derive(Clone, Copy, Debug, Default)]
struct Rtx {
    /// When the head was first sent (for an RTT sample, Karn: only if never retransmitted).
    first_sent: Option<Timestamp>,
    deadline: Option<Timestamp>,
    retransmits: u32,
    /// Must be (re)sent now.
    due: bool,
}

/// A path being validated: a challenge sent to `addr`, waiting for its response.
#[derive(Clone, Copy, Debug)]
struct Validation {
    addr: SocketAddr,
    challenge: [u8; 8],
    /// Answering the peer's RSYN: the challenge rides on an RSYN-ACK.
    rsyn: bool,
    sent: u32,
    deadline: Option<Timestamp>,
    due: bool,
}

/// Handshake material kept by the client until the SYN-ACK.
#[derive(Clone, Debug)]
struct ClientHello {
    share: [u8; KEY_SHARE_LEN],
    iss: u32,
    /// The transport's SYN segment, carried (and retransmitted) in the SAL SYN.
    segment: Vec<u8>,
}

/// Server handshake material: what the SYN-ACK repeats.
#[derive(Clone, Debug)]
struct ServerHello {
    /// The transport's SYN-ACK segment.
    segment: Vec<u8>,
    share: [u8; KEY_SHARE_LEN],
    /// The SYN's SOURCE path, echoed so the router can send the SYN-ACK back (`docs/SAL.md` §3).
    source: Option<crate::wire::sal::SourceRepr>,
}

/// Bounded queues of connected datagram mode.
#[derive(Debug, Default)]
struct Datagrams {
    recv: VecDeque<Vec<u8>>,
    send: VecDeque<Vec<u8>>,
}

/// What rides on the flow: the reliable stream (protocol 6) or datagrams (17).
#[derive(Debug)]
enum Transport {
    Datagrams(Datagrams),
    Stream(Box<Stream>),
    /// Released: the flow ended.
    None,
}

/// One SAL flow. See the module doc for the calling contract.
#[derive(Debug)]
pub struct Flow {
    config: FlowConfig,
    max_udp_payload: usize,
    side: Side,
    state: State,
    protocol: Protocol,
    local_flow: FlowId,
    peer_flow: Option<FlowId>,
    service: ServiceId,
    local_nonce: Nonce,
    peer_nonce: Nonce,
    keys: Option<FlowKeys>,
    client_hello: Option<ClientHello>,
    server_hello: Option<ServerHello>,
    peer_addr: SocketAddr,
    local_addr: Option<SocketAddr>,
    snd_nxt: u32,
    rcv_nxt: u32,
    queue: VecDeque<Queued>,
    rtx: Rtx,
    rtt: RttEstimator,
    /// A pure ACK is owed (to a FIN, a duplicate, a keepalive need).
    ack_owed: bool,
    /// A path response is owed to this address.
    response_owed: Option<(SocketAddr, [u8; 8])>,
    validation: Option<Validation>,
    rst_owed: bool,
    local_fin: bool,
    peer_fin: bool,
    /// The conn-ACK (carrying the transport's ACK) must be (re)sent.
    conn_ack_owed: bool,
    transport: Transport,
    /// When the peer last proved it is there: an authenticated control packet or a segment
    /// the stream accepted (the idle timer; forged data does not count).
    last_recv: Timestamp,
    /// When we last sent an authenticated control packet. Keepalives go out when this is
    /// `keepalive` old even while data flows, so the peer's idle timer always has
    /// authenticated evidence (data is not MACed, and a zero-window receiver refuses every
    /// probe it gets).
    last_control_send: Timestamp,
    half_open_deadline: Option<Timestamp>,
    events: VecDeque<Event>,
    endpoint_events: VecDeque<EndpointEvent>,
    stats: FlowStats,
    rng: ChaCha8Rng,
}

/// Parameters of a new flow, filled by the endpoint.
pub(super) struct FlowParams {
    pub(super) config: FlowConfig,
    pub(super) max_udp_payload: usize,
    pub(super) protocol: Protocol,
    pub(super) local_flow: FlowId,
    pub(super) service: ServiceId,
    pub(super) peer_addr: SocketAddr,
    pub(super) rng_seed: [u8; 32],
    pub(super) now: Timestamp,
    pub(super) stream: Arc<StreamConfig>,
}

impl Flow {
    fn new(p: FlowParams, side: Side) -> Self {
        let mut rng = ChaCha8Rng::from_seed(p.rng_seed);
        let local_nonce = Nonce(rng.random());
        let rtt = RttEstimator::new(p.config.initial_rto, p.config.min_rto, p.config.max_rto);
        Self {
            max_udp_payload: p.max_udp_payload,
            side,
            state: State::Request,
            protocol: p.protocol,
            local_flow: p.local_flow,
            peer_flow: None,
            service: p.service,
            local_nonce,
            peer_nonce: Nonce::default(),
            keys: None,
            client_hello: None,
            server_hello: None,
            peer_addr: p.peer_addr,
            local_addr: None,
            snd_nxt: 0,
            rcv_nxt: 0,
            queue: VecDeque::new(),
            rtx: Rtx::default(),
            rtt,
            ack_owed: false,
            response_owed: None,
            validation: None,
            rst_owed: false,
            local_fin: false,
            peer_fin: false,
            conn_ack_owed: false,
            transport: Transport::None,
            last_recv: p.now,
            last_control_send: p.now,
            half_open_deadline: None,
            events: VecDeque::new(),
            endpoint_events: VecDeque::new(),
            stats: FlowStats::default(),
            config: p.config,
            rng,
        }
    }

    /// A client flow that sends a SYN for `p.service` to `p.peer_addr`.
    pub(super) fn client(p: FlowParams, share: [u8; KEY_SHARE_LEN]) -> Self {
        let (now, stream_config) = (p.now, p.stream.clone());
        let mut flow = Self::new(p, Side::Client);
        let iss = flow.rng.random();
        flow.snd_nxt = iss;
        let mut segment = Vec::new();
        flow.transport = if flow.protocol == Protocol::TCP {
            let isn = SeqNumber(flow.rng.random());
            let (stream, _) = Stream::client(stream_config, isn, now, &mut segment);
            Transport::Stream(Box::new(stream))
        } else {
            Transport::Datagrams(Datagrams::default())
        };
        flow.client_hello = Some(ClientHello {
            share,
            iss,
            segment,
        });
        flow.enqueue(Reliable::Syn);
        flow
    }

    /// A server flow answering `syn` (already validated by the endpoint), with keys derived
    /// from `shared`. It sends its SYN-ACK and waits for the conn-ACK until `half_open_until`.
    pub(super) fn server(
        p: FlowParams,
        syn: &SalRepr,
        syn_payload: &[u8],
        share: [u8; KEY_SHARE_LEN],
        shared: &SharedSecret,
        peer_share: &[u8; KEY_SHARE_LEN],
        half_open_until: Timestamp,
    ) -> Option<Self> {
        let control = syn.control?;
        let peer_flow = syn.src_flow?;
        let (now, stream_config) = (p.now, p.stream.clone());
        let mut flow = Self::new(p, Side::Server);
        let mut segment = Vec::new();
        flow.transport = if flow.protocol == Protocol::TCP {
            let tcp = TcpRepr::parse_bytes(syn_payload).ok()?;
            let isn = SeqNumber(flow.rng.random());
            let (stream, _) = Stream::server(stream_config, isn, now, &tcp, &mut segment).ok()?;
            Transport::Stream(Box::new(stream))
        } else {
            Transport::Datagrams(Datagrams::default())
        };
        flow.state = State::Respond;
        flow.peer_flow = Some(peer_flow);
        flow.peer_nonce = control.nonce;
        flow.rcv_nxt = control.verno.wrapping_add(1);
        let iss = flow.rng.random();
        flow.snd_nxt = iss;
        flow.server_hello = Some(ServerHello {
            segment,
            share,
            source: syn.source,
        });
        let transcript = Transcript {
            client_flow: peer_flow,
            server_flow: flow.local_flow,
            client_nonce: control.nonce,
            server_nonce: flow.local_nonce,
            service: flow.service,
            client_share: *peer_share,
            server_share: share,
        };
        flow.keys = Some(FlowKeys::derive(shared, &transcript));
        flow.half_open_deadline = Some(half_open_until);
        flow.enqueue(Reliable::SynAck);
        Some(flow)
    }

    /// This flow's local FlowID.
    pub fn local_flow(&self) -> FlowId {
        self.local_flow
    }

    /// The peer's FlowID, once known.
    pub fn peer_flow(&self) -> Option<FlowId> {
        self.peer_flow
    }

    /// The peer's current (validated) address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The ServiceID this flow was opened for.
    pub fn service(&self) -> ServiceId {
        self.service
    }

    /// The local address this flow moved to with [`migrate`](Self::migrate); `None` while
    /// it uses the endpoint's.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The handshake/teardown state as a short name (`request`, `respond`, `connected`,
    /// `linger`, `closed`), for operators' listings.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Request => "request",
            State::Respond => "respond",
            State::Connected => "connected",
            State::Linger { .. } => "linger",
            State::Closed => "closed",
        }
    }

    /// Whether the handshake has completed and the flow is not closed.
    pub fn is_established(&self) -> bool {
        self.state == State::Connected
    }

    /// Whether the flow has ended.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether this is a datagram flow (protocol 17) rather than a stream.
    pub fn is_datagram(&self) -> bool {
        matches!(self.transport, Transport::Datagrams(_))
    }

    /// Largest datagram [`send_datagram`](Self::send_datagram) accepts: what fits one packet
    /// after the SAL header.
    pub fn max_datagram(&self) -> usize {
        self.max_udp_payload
            .saturating_sub(crate::wire::sal::HEADER_LEN)
    }

    /// Counters.
    pub fn stats(&self) -> FlowStats {
        let mut s = self.stats;
        s.srtt = self.rtt.srtt();
        s
    }

    /// The next application event.
    pub fn poll(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next event for the endpoint.
    pub fn poll_endpoint_event(&mut self) -> Option<EndpointEvent> {
        self.endpoint_events.pop_front()
    }

    // ---------------------------------------------------------------- application side

    /// Queues one datagram (datagram mode). Returns `false` (and sends nothing) when the
    /// flow cannot send: not a datagram flow, not established, finished, the datagram is
    /// empty or too large for one packet, or the send queue is full.
    pub fn send_datagram(&mut self, data: &[u8]) -> bool {
        let room = self.max_datagram();
        let open = self.state == State::Connected && !self.local_fin;
        let limit = self.config.datagram_queue;
        let Transport::Datagrams(d) = &mut self.transport else {
            return false;
        };
        let ok = open && !data.is_empty() && data.len() <= room && d.send.len() < limit;
        if ok {
            d.send.push_back(data.to_vec());
        }
        ok
    }

    /// The next received datagram (datagram mode).
    pub fn recv_datagram(&mut self) -> Option<Vec<u8>> {
        match &mut self.transport {
            Transport::Datagrams(d) => d.recv.pop_front(),
            _ => None,
        }
    }

    /// Writes stream bytes (stream mode); returns how many fit the send buffer. A datagram
    /// flow, or one not yet established, accepts nothing (`Ok(0)` while connecting, so the
    /// caller waits for [`Event::Connected`]).
    pub fn write(&mut self, data: &[u8]) -> Result<usize, WriteError> {
        match (&mut self.transport, self.state) {
            (Transport::Stream(_), State::Request | State::Respond) => Ok(0),
            (Transport::Stream(s), _) => s.write(data),
            _ => Err(WriteError::Closed),
        }
    }

    /// Reads stream bytes (stream mode): `Ok(0)` when nothing is buffered yet,
    /// `Err(ReadError::Finished)` at the end of the stream.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        let r = match &mut self.transport {
            Transport::Stream(s) => s.read(buf),
            _ => Err(ReadError::Closed),
        };
        // Reading opens the window: the stream may owe a window update.
        self.drain_stream_events();
        r
    }

    /// Bytes that can be read now (stream mode).
    pub fn readable(&self) -> usize {
        match &self.transport {
            Transport::Stream(s) => s.readable(),
            _ => 0,
        }
    }

    /// Statistics of the stream (stream mode).
    pub fn stream_stats(&self) -> Option<crate::transport::StreamStats> {
        match &self.transport {
            Transport::Stream(s) => Some(s.stats()),
            _ => None,
        }
    }

    /// Finishes our sending side (half-close): in stream mode the transport's FIN follows
    /// the buffered bytes and the other direction keeps flowing; in datagram mode a SAL FIN
    /// tells the peer (its reads see the end). The flow ends when both sides have finished.
    pub fn close(&mut self, now: Timestamp) {
        if self.local_fin || matches!(self.state, State::Closed | State::Linger { .. }) {
            return;
        }
        if self.state != State::Connected {
            // Nothing was established: just go.
            return self.finish(now, CloseReason::Aborted);
        }
        self.local_fin = true;
        match &mut self.transport {
            Transport::Stream(s) => {
                let _ = s.shutdown_write();
            }
            _ => self.enqueue(Reliable::Fin),
        }
    }

    /// Resets the flow: one authenticated RST, then closed.
    pub fn abort(&mut self, now: Timestamp) {
        if self.state == State::Closed {
            return;
        }
        self.rst_owed = self.keys.is_some() && self.peer_flow.is_some();
        self.finish(now, CloseReason::Aborted);
    }

    /// The client retransmitted its SYN (our SYN-ACK was lost): answer again now.
    pub(super) fn handle_duplicate_syn(&mut self) {
        if self.state == State::Respond
            && self
                .queue
                .front()
                .is_some_and(|q| q.kind == Reliable::SynAck)
        {
            self.rtx.due = true;
        }
    }

    /// The local address changed (roaming, new interface, rebinding): tell the peer with an
    /// RSYN sent from `new_local`. The peer validates the new path before using it.
    pub fn migrate(&mut self, new_local: SocketAddr) {
        if self.state != State::Connected {
            return;
        }
        self.local_addr = Some(new_local);
        if let Transport::Stream(stream) = &mut self.transport {
            // Losses on the way out are the move's, not congestion: hold the loss timers
            // until the RSYN is answered (`on_path_change` then resends at once).
            stream.freeze();
        }
        if !self.queue.iter().any(|q| q.kind == Reliable::Rsyn) {
            self.enqueue(Reliable::Rsyn);
        }
        self.stats.migrations_started += 1;
    }

    // ---------------------------------------------------------------- timers

    /// The earliest time [`handle_timeout`](Self::handle_timeout) is needed.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.state == State::Closed {
            return None;
        }
        let keepalive = self
            .config
            .keepalive
            .filter(|_| self.state == State::Connected)
            .map(|k| self.last_control_send + k);
        let idle = self
            .config
            .idle_timeout
            .filter(|_| self.state == State::Connected)
            .map(|i| self.last_recv + i);
        let linger = match self.state {
            State::Linger { until } => Some(until),
            _ => None,
        };
        [
            self.rtx.deadline,
            self.validation.and_then(|v| v.deadline),
            keepalive,
            idle,
            linger,
            self.half_open_deadline,
            self.stream_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if let State::Linger { until } = self.state
            && now >= until
        {
            self.finish(now, CloseReason::Finished);
            return;
        }
        if self.half_open_deadline.is_some_and(|d| now >= d) {
            self.stats.handshake_timeouts += 1;
            self.finish(now, CloseReason::TimedOut);
            return;
        }
        if self.rtx.deadline.is_some_and(|d| now >= d) {
            if self.rtx.retransmits >= self.config.max_retransmits {
                self.finish(now, CloseReason::TimedOut);
                return;
            }
            self.rtx.retransmits += 1;
            self.rtx.due = true;
            self.rtx.deadline = None;
            self.stats.control_retransmits += 1;
        }
        self.validation_timeout(now);
        if self.stream_timeout().is_some_and(|t| now >= t)
            && let Transport::Stream(stream) = &mut self.transport
        {
            stream.handle_timeout(now);
            self.drain_stream_events();
        }
        if self.state == State::Connected {
            if self
                .config
                .idle_timeout
                .is_some_and(|i| now - self.last_recv >= i)
            {
                self.finish(now, CloseReason::IdleTimeout);
                return;
            }
            if self
                .config
                .keepalive
                .is_some_and(|k| now - self.last_control_send >= k)
            {
                self.ack_owed = true;
                self.stats.keepalives_sent += 1;
            }
        }
    }

    /// The stream's own deadline, once established (the SAL retransmits the handshake).
    fn stream_timeout(&self) -> Option<Timestamp> {
        match (&self.transport, self.state) {
            (Transport::Stream(s), State::Connected | State::Linger { .. }) => s.poll_timeout(),
            _ => None,
        }
    }

    fn validation_timeout(&mut self, now: Timestamp) {
        let Some(v) = self.validation.as_mut() else {
            return;
        };
        if v.deadline.is_none_or(|d| now < d) {
            return;
        }
        if v.sent >= self.config.path_challenges {
            self.validation = None;
            self.stats.path_validations_failed += 1;
        } else {
            v.due = true;
            v.deadline = None;
        }
    }

    // ---------------------------------------------------------------- receive

    /// A datagram the endpoint routed to this flow (by destination FlowID).
    pub fn handle(&mut self, now: Timestamp, from: SocketAddr, input: FlowInput, datagram: &[u8]) {
        // Fast path: a data packet is the bare 12-byte base header, read in place (the
        // checks and their order are `SalRepr::parse`'s and the ones below).
        if let Ok(packet) = Packet::new_checked(datagram)
            && usize::from(packet.header_words()) * 4 == crate::wire::sal::HEADER_LEN
        {
            if !packet.verify_checksum() {
                return self.drop(DropReason::Malformed);
            }
            if self.state == State::Closed {
                return self.drop(DropReason::Closed);
            }
            if packet.dst_flow_id() != Some(self.local_flow) {
                return self.drop(DropReason::UnknownFlow);
            }
            let payload = datagram.get(crate::wire::sal::HEADER_LEN..).unwrap_or(&[]);
            return self.handle_data(now, from, packet.src_flow_id(), payload);
        }
        let parsed = match SalRepr::parse_datagram(datagram) {
            Ok(p) => p,
            Err(_) => return self.drop(DropReason::Malformed),
        };
        let repr = parsed.repr;
        if self.state == State::Closed {
            return self.drop(DropReason::Closed);
        }
        if repr.dst_flow != Some(self.local_flow) {
            return self.drop(DropReason::UnknownFlow);
        }
        match repr.control {
            None => self.handle_data(now, from, repr.src_flow, parsed.payload),
            Some(control) => self.handle_control(now, from, &repr, control, parsed.payload, input),
        }
    }

    fn handle_data(
        &mut self,
        now: Timestamp,
        from: SocketAddr,
        src_flow: Option<FlowId>,
        payload: &[u8],
    ) {
        if self.state == State::Respond && src_flow == self.peer_flow {
            // The client has our SYN-ACK and already sends data: its conn-ACK was lost.
            // Repeat the SYN-ACK now (at most once per minimum RTO) so it answers again,
            // instead of waiting for our retransmission timer.
            if now - self.last_control_send >= self.config.min_rto {
                self.rtx.due = true;
            }
            return self.drop(DropReason::UnexpectedData);
        }
        // Data may arrive in Linger too (the stream's last ACKs): only the handshake states
        // and a foreign source FlowID are wrong.
        let open = matches!(self.state, State::Connected | State::Linger { .. });
        if !open || src_flow != self.peer_flow {
            return self.drop(DropReason::UnexpectedData);
        }
        self.stats.data_packets_received += 1;
        self.stats.bytes_received += payload.len() as u64;
        let limit = self.config.datagram_queue;
        match &mut self.transport {
            Transport::Stream(stream) => {
                // A reset only counts inside an authenticated SAL RST: an unauthenticated
                // transport RST is exactly what an off-path attacker would send.
                if is_tcp_rst(payload) {
                    return self.drop(DropReason::BadMac);
                }
                // Data is not MACed: only a segment the stream accepts (timestamps,
                // sequence and ACK in window, which a blind forger with leaked FlowIDs
                // cannot produce) is evidence that the peer is alive (the idle timer) or
                // moved (NAT rebinding). A refused one must not start a path validation, or
                // anyone knowing the two FlowIDs could make the flow send challenges to an
                // address of their choice, nor keep a silent peer's flow open.
                let refused_before = stream.dropped_segments();
                if stream.handle_bytes(now, payload).is_err() {
                    return self.drop(DropReason::Malformed);
                }
                let accepted = stream.dropped_segments() == refused_before;
                if accepted {
                    self.last_recv = now;
                }
                self.drain_stream_events();
                if accepted && self.state != State::Closed {
                    self.observe_address(from, false);
                }
            }
            Transport::Datagrams(d) => {
                if self.peer_fin {
                    return self.drop(DropReason::AfterFin);
                }
                if payload.is_empty() {
                    return self.drop(DropReason::Malformed);
                }
                if d.recv.len() >= limit {
                    return self.drop(DropReason::QueueFull);
                }
                d.recv.push_back(payload.to_vec());
                self.last_recv = now;
                self.events.push_back(Event::Readable);
                // Datagrams carry no sequence to check: any of them may show a rebinding.
                self.observe_address(from, false);
            }
            Transport::None => self.drop(DropReason::Closed),
        }
    }

    /// Turns the stream's events into flow events (and ends the flow when it is done).
    fn drain_stream_events(&mut self) {
        let Transport::Stream(stream) = &mut self.transport else {
            return;
        };
        let mut end = None;
        while let Some(e) = stream.poll_event() {
            match e {
                StreamEvent::Readable => self.events.push_back(Event::Readable),
                StreamEvent::Writable => self.events.push_back(Event::Writable),
                StreamEvent::PeerFinished => self.events.push_back(Event::PeerFinished),
                StreamEvent::Reset => end = Some(CloseReason::Reset),
                StreamEvent::TimedOut => end = Some(CloseReason::TimedOut),
                StreamEvent::Closed => end = end.or(Some(CloseReason::Finished)),
                _ => {}
            }
        }
        if let Some(reason) = end {
            // The stream is done (after its TIME-WAIT on the active closer): so is the flow.
            self.finish(Timestamp::ZERO, reason);
        }
    }

    fn handle_control(
        &mut self,
        now: Timestamp,
        from: SocketAddr,
        repr: &SalRepr,
        control: ControlRepr,
        payload: &[u8],
        input: FlowInput,
    ) {
        let flags = control.flags;
        if self.state == State::Request {
            return self.handle_in_request(now, from, repr, control, payload, input);
        }
        if repr.src_flow != self.peer_flow {
            return self.drop(DropReason::UnknownFlow);
        }
        if !self.verify(repr, payload) {
            return self.drop(DropReason::BadMac);
        }
        self.last_recv = now;
        if flags.contains(ControlFlags::RST) {
            let reason = if self.state == State::Respond {
                CloseReason::Refused
            } else {
                CloseReason::Reset
            };
            self.stats.resets_received += 1;
            return self.finish(now, reason);
        }
        if flags.contains(ControlFlags::ACK) {
            self.handle_ackno(now, control.ackno);
        }
        if self.state == State::Respond {
            return self.handle_in_respond(now, from, control, payload);
        }
        if let Some(challenge) = repr.path_challenge {
            self.response_owed = Some((from, challenge));
        }
        if let Some(response) = repr.path_response {
            self.handle_path_response(now, from, response);
        }
        // SYN(-ACK), FIN and an RSYN request consume a version; an RSYN-ACK does not.
        let rsyn_request = flags.contains(ControlFlags::RSYN) && !flags.contains(ControlFlags::ACK);
        let consuming = flags.intersects(ControlFlags::SYN | ControlFlags::FIN) || rsyn_request;
        if !consuming {
            // A keepalive or pure ACK: also tells us where the peer is now.
            return self.observe_address(from, true);
        }
        match self.sequence(control.verno) {
            Seq::New => {
                self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
                self.ack_owed = true;
                if flags.contains(ControlFlags::SYN) {
                    // A SYN-ACK in Connected can only be a duplicate; never new.
                    return;
                }
                if rsyn_request {
                    self.handle_rsyn(from);
                } else {
                    self.observe_address(from, true);
                }
                if flags.contains(ControlFlags::FIN) {
                    self.handle_fin(now);
                }
            }
            Seq::Duplicate => {
                self.stats.duplicate_control += 1;
                if rsyn_request {
                    // Our RSYN-ACK was lost (the original's bug, §3.8): it is matched to the
                    // RSYN's version, so the retransmitted RSYN is answered again.
                    self.handle_rsyn(from);
                } else if flags.contains(ControlFlags::SYN) {
                    // Our conn-ACK was lost and the server repeated its SYN-ACK: the stream
                    // sees its SYN-ACK again and we repeat the conn-ACK with its answer.
                    self.feed_stream(now, payload);
                    self.conn_ack_owed = true;
                } else {
                    // A lost ACK of a FIN: acknowledge again.
                    self.ack_owed = true;
                }
            }
            Seq::Invalid => self.drop(DropReason::StaleVersion),
        }
    }

    /// Client waiting for the SYN-ACK (or a refusal).
    fn handle_in_request(
        &mut self,
        now: Timestamp,
        from: SocketAddr,
        repr: &SalRepr,
        control: ControlRepr,
        payload: &[u8],
        input: FlowInput,
    ) {
        let flags = control.flags;
        let Some((hello_iss, hello_share)) = self.client_hello.as_ref().map(|h| (h.iss, h.share))
        else {
            return self.drop(DropReason::Unexpected);
        };
        if flags.contains(ControlFlags::RST) {
            // Unauthenticated refusal from a router: it must echo our nonce, which only the
            // path the SYN took has seen.
            if control.nonce == self.local_nonce && repr.mac.is_none() {
                return self.finish(now, CloseReason::Refused);
            }
            return self.drop(DropReason::BadMac);
        }
        if flags != ControlFlags::SYN | ControlFlags::ACK
            || control.ackno != hello_iss.wrapping_add(1)
        {
            return self.drop(DropReason::Unexpected);
        }
        let (Some(peer_flow), Some(peer_share), Some(shared)) =
            (repr.src_flow, repr.key_share, input.shared)
        else {
            return self.drop(DropReason::Unexpected);
        };
        let transcript = Transcript {
            client_flow: self.local_flow,
            server_flow: peer_flow,
            client_nonce: self.local_nonce,
            server_nonce: control.nonce,
            service: self.service,
            client_share: hello_share,
            server_share: peer_share,
        };
        let keys = FlowKeys::derive(&shared, &transcript);
        if !verify_with(&keys, Side::Server, repr, payload) {
            return self.drop(DropReason::BadMac);
        }
        self.keys = Some(keys);
        self.client_hello = None;
        self.peer_flow = Some(peer_flow);
        self.peer_nonce = control.nonce;
        self.rcv_nxt = control.verno.wrapping_add(1);
        // Through a router, the last SOURCE record is the server as the router saw it.
        self.peer_addr = repr.source.map_or(from, |s| s.last());
        self.last_recv = now;
        self.handle_ackno(now, control.ackno);
        self.state = State::Connected;
        self.feed_stream(now, payload);
        self.conn_ack_owed = true;
        self.events.push_back(Event::Connected);
        self.endpoint_events.push_back(EndpointEvent::Established);
    }

    /// Server waiting for the conn-ACK (MAC already verified).
    fn handle_in_respond(
        &mut self,
        now: Timestamp,
        from: SocketAddr,
        control: ControlRepr,
        payload: &[u8],
    ) {
        let acked = self.queue.is_empty();
        if !acked || control.verno != self.rcv_nxt || control.nonce != self.peer_nonce {
            return self.drop(DropReason::Unexpected);
        }
        self.server_hello = None;
        self.half_open_deadline = None;
        // The conn-ACK is authenticated and came straight from the client: its source is
        // the client's address towards us (a symmetric NAT may have picked a new port).
        self.peer_addr = from;
        self.last_recv = now;
        self.state = State::Connected;
        self.feed_stream(now, payload);
        self.events.push_back(Event::Connected);
        self.endpoint_events.push_back(EndpointEvent::Established);
    }

    /// Transport bytes that rode in an authenticated control packet (handshake segments).
    fn feed_stream(&mut self, now: Timestamp, payload: &[u8]) {
        if let Transport::Stream(stream) = &mut self.transport
            && !payload.is_empty()
            && stream.handle_bytes(now, payload).is_err()
        {
            self.stats.drops.count(DropReason::Malformed);
        }
        self.drain_stream_events();
    }

    fn handle_ackno(&mut self, now: Timestamp, ackno: u32) {
        let Some(head) = self.queue.front() else {
            return;
        };
        // ackno is the next version the peer expects: it covers the head when it is past it.
        if serial_lt(head.verno, ackno) && !serial_lt(self.snd_nxt, ackno) {
            if self.rtx.retransmits == 0
                && let Some(sent) = self.rtx.first_sent
            {
                self.rtt.on_sample(now - sent);
            }
            let done = self.queue.pop_front();
            if done.is_some_and(|q| q.kind == Reliable::Rsyn) {
                self.path_changed(now);
            }
            self.rtx = Rtx {
                due: !self.queue.is_empty(),
                ..Rtx::default()
            };
            self.after_acked(now);
        }
    }

    /// Bookkeeping after our FIN is acknowledged.
    fn after_acked(&mut self, now: Timestamp) {
        if self.local_fin && self.peer_fin && self.queue.is_empty() {
            self.linger(now);
        }
    }

    fn handle_fin(&mut self, now: Timestamp) {
        self.peer_fin = true;
        self.events.push_back(Event::PeerFinished);
        if self.local_fin && self.queue.is_empty() {
            self.linger(now);
        }
    }

    fn linger(&mut self, now: Timestamp) {
        // Long enough to re-acknowledge a retransmitted FIN; FlowIDs are random so there is
        // no reuse hazard needing the original's 60 s TIME_WAIT. Buffers are freed now.
        let until = now + self.rtt.rto() * 3;
        if let Transport::Datagrams(d) = &mut self.transport {
            *d = Datagrams::default();
        }
        self.state = State::Linger { until };
    }

    fn handle_rsyn(&mut self, from: SocketAddr) {
        match self.validation {
            Some(v) if v.addr == from => {
                // Retransmitted RSYN: repeat the same challenge now.
                if let Some(v) = self.validation.as_mut() {
                    v.rsyn = true;
                    v.due = true;
                }
            }
            _ if from == self.peer_addr => self.ack_owed = true,
            _ => self.start_validation(from, true),
        }
    }

    /// A packet of this flow arrived from `from`: if that is not the peer's address, validate
    /// it before moving there (NAT rebinding, or the peer moved).
    fn observe_address(&mut self, from: SocketAddr, authenticated: bool) {
        if from == self.peer_addr {
            return;
        }
        match self.validation {
            Some(v) if v.addr == from => {}
            // Unauthenticated packets do not displace a validation in progress, so spoofed
            // data cannot starve the real one.
            Some(_) if !authenticated => {}
            _ => self.start_validation(from, false),
        }
    }

    fn start_validation(&mut self, addr: SocketAddr, rsyn: bool) {
        self.stats.path_validations_started += 1;
        self.validation = Some(Validation {
            addr,
            challenge: self.rng.random(),
            rsyn,
            sent: 0,
            deadline: None,
            due: true,
        });
    }

    /// Our path to the peer changed (we moved, or it did and the new address is validated):
    /// the stream resends what is in flight at once, without cutting its window.
    fn path_changed(&mut self, now: Timestamp) {
        if let Transport::Stream(stream) = &mut self.transport {
            stream.on_path_change(now);
        }
    }

    fn handle_path_response(&mut self, now: Timestamp, from: SocketAddr, response: [u8; 8]) {
        match self.validation {
            Some(v) if v.addr == from && v.challenge == response => {
                self.validation = None;
                self.peer_addr = from;
                self.stats.path_validations_succeeded += 1;
                self.path_changed(now);
                self.events.push_back(Event::PathMigrated { peer: from });
            }
            _ => self.drop(DropReason::UnexpectedPathResponse),
        }
    }

    fn sequence(&self, verno: u32) -> Seq {
        if verno == self.rcv_nxt {
            Seq::New
        } else if verno == self.rcv_nxt.wrapping_sub(1) {
            Seq::Duplicate
        } else {
            Seq::Invalid
        }
    }

    fn verify(&self, repr: &SalRepr, payload: &[u8]) -> bool {
        let Some(keys) = &self.keys else { return false };
        let peer = match self.side {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        };
        verify_with(keys, peer, repr, payload)
    }

    fn drop(&mut self, reason: DropReason) {
        self.stats.drops.count(reason);
    }

    fn finish(&mut self, _now: Timestamp, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.queue.clear();
        self.rtx = Rtx::default();
        self.validation = None;
        self.half_open_deadline = None;
        self.transport = Transport::None;
        self.events.push_back(Event::Closed(reason));
        self.endpoint_events.push_back(EndpointEvent::Drained);
    }

    fn enqueue(&mut self, kind: Reliable) {
        let verno = self.snd_nxt;
        self.snd_nxt = self.snd_nxt.wrapping_add(1);
        self.queue.push_back(Queued { kind, verno });
        if self.queue.len() == 1 {
            self.rtx = Rtx {
                due: true,
                ..Rtx::default()
            };
        }
    }

    // ---------------------------------------------------------------- transmit

    /// The next datagram to send, written into `buf` (cleared first).
    pub fn poll_transmit(&mut self, now: Timestamp, buf: &mut Vec<u8>) -> Option<Transmit> {
        buf.clear();
        if self.rst_owed {
            self.rst_owed = false;
            return Some(self.send_control(
                now,
                buf,
                ControlFlags::RST | ControlFlags::ACK,
                self.snd_nxt,
                Extras::default(),
            ));
        }
        if self.state == State::Closed {
            return None;
        }
        if self.rtx.due
            && let Some(head) = self.queue.front().copied()
        {
            return Some(self.send_reliable(now, buf, head));
        }
        if let Some(t) = self.poll_validation(now, buf) {
            return Some(t);
        }
        if let Some((addr, data)) = self.response_owed.take() {
            let extras = Extras {
                path_response: Some(data),
                to: Some(addr),
                ..Extras::default()
            };
            return Some(self.send_control(now, buf, ControlFlags::ACK, self.snd_nxt, extras));
        }
        if self.conn_ack_owed {
            return Some(self.send_conn_ack(now, buf));
        }
        if self.ack_owed {
            self.ack_owed = false;
            return Some(self.send_control(
                now,
                buf,
                ControlFlags::ACK,
                self.snd_nxt,
                Extras::default(),
            ));
        }
        self.poll_data(now, buf)
    }

    fn poll_validation(&mut self, now: Timestamp, buf: &mut Vec<u8>) -> Option<Transmit> {
        let v = self.validation.as_mut().filter(|v| v.due)?;
        v.due = false;
        v.sent += 1;
        let (addr, challenge, rsyn) = (v.addr, v.challenge, v.rsyn);
        v.deadline = Some(now + self.rtt.rto_backed_off(v.sent.saturating_sub(1)));
        let flags = if rsyn {
            ControlFlags::RSYN | ControlFlags::ACK
        } else {
            ControlFlags::ACK
        };
        // The challenge carries our ackno too.
        self.ack_owed = false;
        let extras = Extras {
            path_challenge: Some(challenge),
            to: Some(addr),
            ..Extras::default()
        };
        Some(self.send_control(now, buf, flags, self.snd_nxt, extras))
    }

    fn poll_data(&mut self, now: Timestamp, buf: &mut Vec<u8>) -> Option<Transmit> {
        if !matches!(self.state, State::Connected | State::Linger { .. }) {
            return None;
        }
        // A data packet is the bare base header: written in place, no `SalRepr` needed.
        let hlen = crate::wire::sal::HEADER_LEN;
        let payload_len = match &mut self.transport {
            Transport::Stream(stream) => {
                buf.clear();
                buf.resize(hlen, 0);
                let t = stream.poll_transmit(now, buf);
                self.drain_stream_events();
                t?.size
            }
            Transport::Datagrams(d) => {
                let data = d.send.pop_front()?;
                buf.clear();
                buf.resize(hlen, 0);
                buf.extend_from_slice(&data);
                data.len()
            }
            Transport::None => return None,
        };
        buf.truncate(hlen + payload_len);
        // What `SalRepr::new(local, peer, protocol).emit(..)` writes, byte for byte.
        let mut packet = Packet::new_unchecked(&mut buf[..]);
        packet.set_header_words((hlen / 4) as u8);
        packet.set_src_flow_id(Some(self.local_flow));
        packet.set_dst_flow_id(self.peer_flow);
        packet.set_protocol(self.protocol);
        packet.fill_checksum();
        self.stats.data_packets_sent += 1;
        self.stats.bytes_sent += payload_len as u64;
        Some(Transmit {
            destination: self.peer_addr,
            size: buf.len(),
            src: self.local_addr,
        })
    }

    fn send_reliable(&mut self, now: Timestamp, buf: &mut Vec<u8>, head: Queued) -> Transmit {
        self.rtx.due = false;
        if self.rtx.first_sent.is_none() {
            self.rtx.first_sent = Some(now);
        }
        self.rtx.deadline = Some(now + self.rtt.rto_backed_off(self.rtx.retransmits));
        let t = match head.kind {
            Reliable::Syn => self.send_syn(now, buf, head.verno),
            Reliable::SynAck => self.send_syn_ack(now, buf, head.verno),
            Reliable::Fin => self.send_control(
                now,
                buf,
                ControlFlags::FIN | ControlFlags::ACK,
                head.verno,
                Extras::default(),
            ),
            // An RSYN request carries no ACK flag: RSYN+ACK is the answer (and consumes nothing).
            Reliable::Rsyn => {
                self.send_control(now, buf, ControlFlags::RSYN, head.verno, Extras::default())
            }
        };
        // Every reliable packet carries our ackno: no separate ACK needed.
        self.ack_owed = false;
        t
    }

    fn send_syn(&mut self, now: Timestamp, buf: &mut Vec<u8>, verno: u32) -> Transmit {
        let (share, segment) = match &self.client_hello {
            Some(h) => (Some(h.share), h.segment.clone()),
            None => (None, Vec::new()),
        };
        let mut repr = SalRepr::new(Some(self.local_flow), None, self.protocol);
        repr.control = Some(ControlRepr {
            flags: ControlFlags::SYN,
            verno,
            ackno: 0,
            nonce: self.local_nonce,
        });
        repr.service = Some(ServiceRepr {
            dst: self.service,
            src: None,
        });
        repr.key_share = share;
        self.stats.control_sent += 1;
        self.emit(now, buf, repr, &segment, None)
    }

    fn send_syn_ack(&mut self, now: Timestamp, buf: &mut Vec<u8>, verno: u32) -> Transmit {
        let hello = self.server_hello.clone();
        let mut repr = SalRepr::new(Some(self.local_flow), self.peer_flow, self.protocol);
        repr.control = Some(ControlRepr {
            flags: ControlFlags::SYN | ControlFlags::ACK,
            verno,
            ackno: self.rcv_nxt,
            nonce: self.local_nonce,
        });
        repr.key_share = hello.as_ref().map(|h| h.share);
        repr.source = hello.as_ref().and_then(|h| h.source);
        let segment = hello.map(|h| h.segment).unwrap_or_default();
        self.stats.control_sent += 1;
        let keys = self.keys.clone();
        self.emit(now, buf, repr, &segment, keys.as_ref())
    }

    /// The ACK completing the handshake, carrying the transport's ACK of its SYN-ACK (and
    /// MACed with it), so the server's transport establishes too.
    fn send_conn_ack(&mut self, now: Timestamp, buf: &mut Vec<u8>) -> Transmit {
        self.conn_ack_owed = false;
        self.ack_owed = false;
        let mut payload = Vec::new();
        if let Transport::Stream(stream) = &mut self.transport {
            // The stream owes an ACK for the SYN-ACK it just processed.
            let _ = stream.poll_transmit(now, &mut payload);
        }
        let extras = Extras {
            payload,
            ..Extras::default()
        };
        self.send_control(now, buf, ControlFlags::ACK, self.snd_nxt, extras)
    }

    fn send_control(
        &mut self,
        now: Timestamp,
        buf: &mut Vec<u8>,
        flags: ControlFlags,
        verno: u32,
        extras: Extras,
    ) -> Transmit {
        let mut repr = SalRepr::new(Some(self.local_flow), self.peer_flow, self.protocol);
        repr.control = Some(ControlRepr {
            flags,
            verno,
            ackno: self.rcv_nxt,
            nonce: self.local_nonce,
        });
        repr.path_challenge = extras.path_challenge;
        repr.path_response = extras.path_response;
        self.stats.control_sent += 1;
        let keys = self.keys.clone();
        let mut t = self.emit(now, buf, repr, &extras.payload, keys.as_ref());
        if let Some(to) = extras.to {
            t.destination = to;
        }
        t
    }

    /// Writes `repr` + `payload` into `buf`, MACed when `keys` is given.
    fn emit(
        &mut self,
        now: Timestamp,
        buf: &mut Vec<u8>,
        mut repr: SalRepr,
        payload: &[u8],
        keys: Option<&FlowKeys>,
    ) -> Transmit {
        if let Some(keys) = keys {
            let side = self.side;
            repr.mac = Some(repr.with_mac_input(|h| keys.sign(side, &[h, payload])));
        }
        let hlen = repr.buffer_len();
        buf.clear();
        buf.resize(hlen + payload.len(), 0);
        buf[hlen..].copy_from_slice(payload);
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
        self.last_control_send = now;
        Transmit {
            destination: self.peer_addr,
            size: buf.len(),
            src: self.local_addr,
        }
    }
}

/// Optional parts of a control packet.
#[derive(Clone, Debug, Default)]
struct Extras {
    path_challenge: Option<[u8; 8]>,
    path_response: Option<[u8; 8]>,
    /// Send to this address instead of the peer's current one.
    to: Option<SocketAddr>,
    /// Transport bytes carried (and MACed) with the control packet: the conn-ACK's
    /// transport ACK.
    payload: Vec<u8>,
}

enum Seq {
    New,
    Duplicate,
    Invalid,
}

/// Verifies `repr`'s MAC as sent by `sender`, over the header input and the transport bytes.
fn verify_with(keys: &FlowKeys, sender: Side, repr: &SalRepr, payload: &[u8]) -> bool {
    let Some(tag) = repr.mac else { return false };
    repr.with_mac_input(|h| keys.verify(sender, &[h, payload], &tag))
}

/// Whether a transport segment carries the TCP RST flag (byte 13, bit 0x04).
fn is_tcp_rst(segment: &[u8]) -> bool {
    segment.get(13).is_some_and(|f| f & TcpFlags::RST.0 != 0)
}

/// `a < b` in 32-bit serial-number arithmetic (RFC 1982).
fn serial_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 1 << 31
}
