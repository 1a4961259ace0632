//! [`Endpoint`]: demultiplexes datagrams to flows, answers SYNs for local listeners, forwards
//! SYNs by the service table (router role), hands SYNs that hit DELAY back to the caller for
//! the delay queue, carries unconnected datagrams (the control plane), and owns the key
//! epochs.
//!
//! # Calling contract
//!
//! For every received datagram call [`Endpoint::handle`]; act on the returned
//! [`DatagramEvent`]: hand `Flow` inputs to the named flow's [`Flow::handle`] with the same
//! bytes, [`accept`](Endpoint::accept) or [`refuse`](Endpoint::refuse) an `Incoming`, send a
//! `Transmit` written into `buf`, park a `Delayed` datagram in a
//! [`DelayQueue`](crate::control::DelayQueue) (and give it to `handle` again, with the same
//! `from`, when it is released), read an `Unconnected` payload. Then drain
//! [`Endpoint::poll_transmit`] (SYN-ACKs of half-open flows), and keep
//! [`Endpoint::handle_timeout`] called at [`Endpoint::poll_timeout`]. Pass every
//! [`EndpointEvent`] a flow emits to [`Endpoint::handle_event`].
//!
//! A datagram whose `Transmit::destination` is this endpoint's own
//! [`local_addr`](Endpoint::local_addr) (a connect to a local listener, or a SYN held by a
//! DELAY rule, see [`Endpoint::connect`]) must come back to `handle` with `from` =
//! `local_addr`: send it to the socket's own address, or, better, loop it back in the driver
//! without a syscall.

use core::net::{IpAddr, SocketAddr};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::EndpointConfig;
use super::crypto::{KEY_SHARE_LEN, KeyPair, SharedSecret};
use super::flow::{EndpointEvent, Flow, FlowInput, FlowParams, Transmit};
use super::stats::{DropReason, EndpointStats};
use crate::service_table::{Action, ListenerId, Rule, ServiceTable, TableError};
use crate::time::Timestamp;
use crate::transport::StreamConfig;
use crate::wire::sal::{
    ControlFlags, ControlRepr, Packet, Protocol, SalRepr, ServiceRepr, SourceRepr, forward,
};
use crate::wire::{FlowId, ServiceId, ServicePrefix};

/// Names a flow of this endpoint (its local FlowID).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowHandle(pub FlowId);

/// What [`Endpoint::handle`] found a datagram to be.
#[derive(Debug)]
#[must_use]
pub enum DatagramEvent {
    /// For an existing flow: call its [`Flow::handle`] with this input and the same bytes.
    Flow(FlowHandle, FlowInput),
    /// A handshake completed for a local listener: accept or refuse it.
    NewFlow(Incoming),
    /// A SYN or SYN-ACK forwarded by the service table, or a locally originated SYN sent
    /// on to its next hop (see [`Endpoint::connect`]), written into `buf`.
    Forward(Transmit),
    /// A reply the endpoint wrote into `buf` (a refusal).
    Response(Transmit),
    /// A SYN hit a DELAY rule; the endpoint kept nothing. Park the datagram (its bytes and
    /// `from`) in a [`DelayQueue`](crate::control::DelayQueue) under `service`; when the
    /// queue releases it, pass it to [`Endpoint::handle`] again with the same `from`, so it
    /// is resolved afresh (FORWARD or DEMUX now, or DELAY again: then park the released
    /// [`DelayedPacket`](crate::control::DelayedPacket) itself, which carries the loop
    /// guard's count).
    Delayed {
        /// The ServiceID the SYN asked for.
        service: ServiceId,
    },
    /// An unconnected datagram for a local listener of the same protocol; the payload is
    /// `datagram[payload_offset..]`.
    Unconnected {
        /// The listener whose prefix matched.
        listener: ListenerId,
        /// The sender's ServiceID (second SERVICE extension), if any.
        source_service: Option<ServiceId>,
        /// Where the payload starts in the datagram.
        payload_offset: usize,
    },
}

/// A flow whose handshake completed at a listener, waiting for the application.
#[derive(Debug)]
#[must_use = "accept or refuse every incoming flow"]
pub struct Incoming {
    // Boxed: a flow is large and the other events are small.
    flow: Box<Flow>,
    listener: ListenerId,
}

impl Incoming {
    /// The listener it arrived at.
    pub fn listener(&self) -> ListenerId {
        self.listener
    }

    /// The ServiceID the client asked for.
    pub fn service(&self) -> ServiceId {
        self.flow.service()
    }

    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.flow.peer_addr()
    }
}

/// Why [`Endpoint::connect`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No service-table rule matches the ServiceID.
    #[error("no route to the service")]
    NoRoute,
    /// The matching rule is DROP.
    #[error("the service table drops this service")]
    Prohibited,
    /// The matching rule is DELAY and the SYN cannot be held: this endpoint's `local_addr`
    /// is unspecified (IP or port), so the SYN could not come back to it (see
    /// [`Endpoint::connect`]).
    #[error("the service is delayed by the service table")]
    Delayed,
    /// The flow table is full.
    #[error("too many flows")]
    TooManyFlows,
}

/// Why [`Endpoint::listen`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// The service table refused the DEMUX rule (e.g. another listener on that prefix).
    #[error("service table: {0}")]
    Table(#[from] TableError),
}

/// Why [`Endpoint::send_unconnected`] wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Zero-length datagrams are not sent (the original refused them too).
    #[error("empty datagram")]
    Empty,
    /// The payload does not fit `max_udp_payload` after the SAL header.
    #[error("datagram too large: at most {max} payload bytes")]
    TooLarge {
        /// The largest payload that fits.
        max: usize,
    },
}

/// The control plane's well-known ServiceIDs: registrations and their replies travel as
/// unconnected SAL datagrams between them (`docs/SAL.md` §6).
///
/// The defaults are the original servd's endpoint ids, as [`ServiceId::from_u32`]
/// (`SERVAL-ORIGINAL.md` §5.3): hosts 55555 (`0000d903 00…`), routers 88888
/// (`00015b38 00…`). A deployment may pick others; a router answers a registrant at the
/// source ServiceID the registration carried, so only the router's id must be agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlServices {
    /// Where registrants (server hosts) receive the routers' replies.
    pub host: ServiceId,
    /// Where service routers receive REGISTER / UNREGISTER.
    pub router: ServiceId,
}

impl ControlServices {
    /// The original's ids: host 55555, router 88888.
    pub const DEFAULT: Self = Self {
        host: HOST_CONTROL_SERVICE,
        router: ROUTER_CONTROL_SERVICE,
    };
}

impl Default for ControlServices {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Default ServiceID of a host's control endpoint (the original host servd's 55555).
pub const HOST_CONTROL_SERVICE: ServiceId = ServiceId::from_u32(55_555);
/// Default ServiceID of a service router's control endpoint (the original router servd's
/// 88888).
pub const ROUTER_CONTROL_SERVICE: ServiceId = ServiceId::from_u32(88_888);

#[derive(Debug, Clone, Copy)]
struct Listener {
    prefix: ServicePrefix,
    protocol: Protocol,
}

#[derive(Debug, Clone, Copy, Default)]
struct FlowEntry {
    /// Key epoch of a client flow still in its handshake.
    client_epoch: Option<u64>,
}

struct Epoch {
    id: u64,
    pair: KeyPair,
}

/// The endpoint. See the module doc for the calling contract.
pub struct Endpoint {
    config: EndpointConfig,
    table: ServiceTable,
    rng: ChaCha8Rng,
    flows: HashMap<FlowId, FlowEntry>,
    half_open: HashMap<FlowId, HalfOpen>,
    /// (client's outer address, client FlowID) → our half-open FlowID, for duplicate SYNs.
    syn_index: HashMap<(SocketAddr, FlowId), FlowId>,
    /// Half-open flows by creation, oldest first (eviction order).
    half_open_order: VecDeque<FlowId>,
    /// Half-open flows per client IP (ordered, so eviction is deterministic).
    half_open_per_ip: BTreeMap<IpAddr, usize>,
    /// (deadline, flow) of every half-open flow that has one.
    half_open_timers: BTreeSet<(Timestamp, FlowId)>,
    /// Half-open flows with something to send.
    half_open_ready: VecDeque<FlowId>,
    /// Authenticated RSTs of evicted half-open flows, waiting for `poll_transmit`
    /// (bounded: the oldest is dropped).
    evicted_rsts: VecDeque<(Transmit, Vec<u8>)>,
    listeners: HashMap<ListenerId, Listener>,
    next_listener: u32,
    epochs: [Option<Epoch>; 2],
    epoch_deadline: Timestamp,
    secrets: HashMap<(u64, [u8; KEY_SHARE_LEN]), SharedSecret>,
    secrets_order: VecDeque<(u64, [u8; KEY_SHARE_LEN])>,
    stats: EndpointStats,
    /// Shared by every stream of this endpoint.
    stream: Arc<StreamConfig>,
}

struct HalfOpen {
    flow: Flow,
    listener: ListenerId,
    key: (SocketAddr, FlowId),
    timer: Option<Timestamp>,
    /// The SYN's SOURCE path, so an eviction RST can retrace it through the routers.
    source: Option<Box<SourceRepr>>,
}

/// Most eviction RSTs waiting for `poll_transmit`.
const MAX_EVICTED_RSTS: usize = 256;

impl core::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_addr", &self.config.local_addr)
            .field("flows", &self.flows.len())
            .field("half_open", &self.half_open.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint with an empty service table.
    pub fn new(config: EndpointConfig, now: Timestamp) -> Self {
        let mut rng = ChaCha8Rng::from_seed(config.rng_seed);
        let first = Epoch {
            id: 0,
            pair: KeyPair::from_random(rng.random()),
        };
        let stream = Arc::new(config.stream_config());
        Self {
            stream,
            epoch_deadline: now + config.key_epoch,
            config,
            table: ServiceTable::new(),
            rng,
            flows: HashMap::new(),
            half_open: HashMap::new(),
            syn_index: HashMap::new(),
            half_open_order: VecDeque::new(),
            half_open_per_ip: BTreeMap::new(),
            half_open_timers: BTreeSet::new(),
            half_open_ready: VecDeque::new(),
            evicted_rsts: VecDeque::new(),
            listeners: HashMap::new(),
            next_listener: 1,
            epochs: [Some(first), None],
            secrets: HashMap::new(),
            secrets_order: VecDeque::new(),
            stats: EndpointStats::default(),
        }
    }

    /// The service table (read).
    pub fn table(&self) -> &ServiceTable {
        &self.table
    }

    /// The service table (FORWARD, DELAY and DROP rules are the caller's; DEMUX rules are
    /// managed by [`listen`](Self::listen)).
    pub fn table_mut(&mut self) -> &mut ServiceTable {
        &mut self.table
    }

    /// The endpoint's own address (`config.local_addr`).
    pub fn local_addr(&self) -> SocketAddr {
        self.config.local_addr
    }

    /// The endpoint moved to `addr` (rebinding, a new interface). New flows and SOURCE
    /// records use it; established flows learn it through [`Flow::migrate`], which the
    /// caller runs for each of them.
    pub fn set_local_addr(&mut self, addr: SocketAddr) {
        self.config.local_addr = addr;
    }

    /// Counters.
    pub fn stats(&self) -> EndpointStats {
        EndpointStats {
            half_open: self.half_open.len() as u64,
            ..self.stats
        }
    }

    /// Number of flows (established and in handshake) and half-open server flows.
    pub fn flow_count(&self) -> usize {
        self.flows.len() + self.half_open.len()
    }

    /// Number of half-open server flows.
    pub fn half_open_count(&self) -> usize {
        self.half_open.len()
    }

    /// Accepts flows for every ServiceID under `prefix` (installs a DEMUX rule).
    pub fn listen(
        &mut self,
        prefix: ServicePrefix,
        protocol: Protocol,
    ) -> Result<ListenerId, ListenError> {
        let id = ListenerId(self.next_listener);
        self.table.insert(prefix, Rule::demux(id))?;
        self.next_listener = self.next_listener.wrapping_add(1).max(1);
        self.listeners.insert(id, Listener { prefix, protocol });
        Ok(id)
    }

    /// Stops a listener (removes its DEMUX rule). Established flows are unaffected.
    pub fn unlisten(&mut self, id: ListenerId) {
        if let Some(l) = self.listeners.remove(&id) {
            let _ = self.table.remove(&l.prefix, &Action::Demux(id));
        }
    }

    /// Opens a flow to `service`, resolved through the service table (late binding).
    ///
    /// FORWARD: the SYN goes to the rule's next hop. DEMUX (a local listener) and **DELAY**:
    /// the SYN goes to this endpoint itself ([`local_addr`](Self::local_addr)), and every
    /// transmission of it (first and retransmissions) is resolved again when it comes back
    /// to [`handle`](Self::handle), as the original passed locally generated packets back to
    /// SAL output: a DELAY rule turns it into [`DatagramEvent::Delayed`] (the caller parks
    /// it like a received SYN), and once released it is sent unchanged to the FORWARD next
    /// hop then in force, or to a local listener; a DROP or missing rule by then refuses
    /// the flow (an RST to itself, [`CloseReason::Refused`](super::CloseReason::Refused)).
    /// The flow is created at once, so its handshake retransmission and timeout apply while
    /// it is held.
    ///
    /// Errors: [`ConnectError::NoRoute`] / [`ConnectError::Prohibited`] for no rule / DROP;
    /// [`ConnectError::Delayed`] only when DELAY applies and `local_addr` is unspecified (IP
    /// or port), since the SYN could not come back.
    pub fn connect(
        &mut self,
        now: Timestamp,
        service: ServiceId,
        protocol: Protocol,
    ) -> Result<(FlowHandle, Flow), ConnectError> {
        let hash = self.rng.random();
        let pick = self
            .table
            .resolve_by_hash(&service, hash, 0)
            .ok_or(ConnectError::NoRoute)?;
        let peer = match *pick.action() {
            Action::Forward(addr) => addr,
            Action::Demux(_) => self.config.local_addr,
            Action::Delay => {
                let own = self.config.local_addr;
                if own.ip().is_unspecified() || own.port() == 0 {
                    return Err(ConnectError::Delayed);
                }
                own
            }
            Action::Drop => return Err(ConnectError::Prohibited),
        };
        self.connect_to(now, service, peer, protocol)
    }

    /// Opens a flow to `service` at a known address (no resolution: the original's
    /// "advisory IP").
    pub fn connect_to(
        &mut self,
        now: Timestamp,
        service: ServiceId,
        peer: SocketAddr,
        protocol: Protocol,
    ) -> Result<(FlowHandle, Flow), ConnectError> {
        if self.flow_count() >= self.config.max_flows {
            return Err(ConnectError::TooManyFlows);
        }
        let id = self.new_flow_id();
        let epoch = self.current_epoch();
        let share = epoch.pair.public();
        let epoch_id = epoch.id;
        let params = self.params(now, id, service, peer, protocol);
        self.flows.insert(
            id,
            FlowEntry {
                client_epoch: Some(epoch_id),
            },
        );
        Ok((FlowHandle(id), Flow::client(params, share)))
    }

    /// Hands a completed handshake to the application.
    pub fn accept(&mut self, incoming: Incoming) -> (FlowHandle, Flow) {
        let id = incoming.flow.local_flow();
        self.flows.insert(id, FlowEntry::default());
        self.stats.accepted += 1;
        (FlowHandle(id), *incoming.flow)
    }

    /// Refuses a completed handshake: the flow is reset and forgotten.
    pub fn refuse(
        &mut self,
        now: Timestamp,
        incoming: Incoming,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        let mut flow = incoming.flow;
        flow.abort(now);
        flow.poll_transmit(now, buf)
    }

    /// An event a flow emitted.
    pub fn handle_event(&mut self, handle: FlowHandle, event: EndpointEvent) {
        match event {
            EndpointEvent::Drained => {
                self.flows.remove(&handle.0);
            }
            EndpointEvent::Established => {
                if let Some(e) = self.flows.get_mut(&handle.0) {
                    e.client_epoch = None;
                }
            }
        }
    }

    /// Classifies one received datagram (see [`DatagramEvent`]). `buf` receives any datagram
    /// the endpoint answers or forwards with.
    pub fn handle(
        &mut self,
        now: Timestamp,
        from: SocketAddr,
        datagram: &[u8],
        buf: &mut Vec<u8>,
    ) -> Option<DatagramEvent> {
        self.stats.datagrams_received += 1;
        let Ok(packet) = Packet::new_checked(datagram) else {
            return self.drop(DropReason::Malformed);
        };
        if let Some(dst) = packet.dst_flow_id() {
            if let Some(entry) = self.flows.get(&dst).copied() {
                let shared = match entry.client_epoch {
                    Some(epoch) => self.secret_for_syn_ack(epoch, datagram),
                    None => None,
                };
                return Some(DatagramEvent::Flow(FlowHandle(dst), FlowInput { shared }));
            }
            if self.half_open.contains_key(&dst) {
                return self.handle_half_open(now, from, dst, datagram);
            }
        }
        let Ok(parsed) = SalRepr::parse_datagram(datagram) else {
            return self.drop(DropReason::Malformed);
        };
        let repr = parsed.repr;
        let flags = repr.flags();
        if flags == ControlFlags::SYN {
            return self.handle_syn(now, from, &repr, datagram, buf);
        }
        if flags == ControlFlags::SYN | ControlFlags::ACK
            || (flags.contains(ControlFlags::RST) && repr.source.is_some())
        {
            return self.relay_syn_ack(from, &repr, datagram, buf);
        }
        if repr.control.is_none() && repr.dst_flow.is_none() {
            return self.handle_unconnected(&repr, parsed.header_len, datagram.len());
        }
        // Data or control for an unknown flow: silent (a RST would be a FlowID oracle).
        self.drop(DropReason::UnknownFlow)
    }

    fn handle_syn(
        &mut self,
        now: Timestamp,
        from: SocketAddr,
        syn: &SalRepr,
        datagram: &[u8],
        buf: &mut Vec<u8>,
    ) -> Option<DatagramEvent> {
        let (Some(service), Some(client_flow)) = (syn.dst_service(), syn.src_flow) else {
            return self.drop(DropReason::Malformed);
        };
        // Whoever sent the SYN first: with SOURCE, the client as the first router saw it.
        let client = syn.source.map_or(from, |s| s.sender());
        if let Some(&ours) = self.syn_index.get(&(client, client_flow)) {
            self.stats.duplicate_syns += 1;
            if let Some(h) = self.half_open.get_mut(&ours) {
                h.flow.handle_duplicate_syn();
                self.half_open_ready.push_back(ours);
            }
            return None;
        }
        if self.is_own_syn(from, syn, client_flow) {
            return self.resolve_own_syn(now, from, service, client_flow, syn, datagram, buf);
        }
        let hash = flow_hash(client, client_flow);
        let Some(pick) = self
            .table
            .resolve_by_hash(&service, hash, datagram.len() as u64)
        else {
            return self.refuse_syn(from, syn, buf);
        };
        match *pick.action() {
            Action::Demux(listener) => self.open_half(now, from, listener, syn, datagram),
            Action::Forward(next) if self.config.forwarding => {
                self.forward_syn(from, next, datagram, buf)
            }
            Action::Forward(_) | Action::Drop => self.refuse_syn(from, syn, buf),
            Action::Delay => self.delayed(service),
        }
    }

    /// A SYN of one of our own client flows still in its handshake, come back from our own
    /// address (see [`connect`](Self::connect)): locally originated, not received.
    fn is_own_syn(&self, from: SocketAddr, syn: &SalRepr, client_flow: FlowId) -> bool {
        from == self.config.local_addr
            && syn.source.is_none()
            && self
                .flows
                .get(&client_flow)
                .is_some_and(|e| e.client_epoch.is_some())
    }

    /// Resolves a locally originated SYN again (late binding on every transmission): sent
    /// unchanged to a FORWARD next hop (we are its origin, so no SOURCE and no `forwarding`
    /// needed), opened at a local listener, handed back as `Delayed`, or refused.
    #[allow(clippy::too_many_arguments)]
    fn resolve_own_syn(
        &mut self,
        now: Timestamp,
        from: SocketAddr,
        service: ServiceId,
        client_flow: FlowId,
        syn: &SalRepr,
        datagram: &[u8],
        buf: &mut Vec<u8>,
    ) -> Option<DatagramEvent> {
        let hash = flow_hash(from, client_flow);
        let Some(pick) = self
            .table
            .resolve_by_hash(&service, hash, datagram.len() as u64)
        else {
            return self.refuse_syn(from, syn, buf);
        };
        match *pick.action() {
            Action::Demux(listener) => self.open_half(now, from, listener, syn, datagram),
            // A FORWARD rule pointing at ourselves would loop the SYN for ever.
            Action::Forward(next) if next == self.config.local_addr => {
                self.drop(DropReason::NotForwardable)
            }
            Action::Forward(next) => {
                buf.clear();
                buf.extend_from_slice(datagram);
                self.stats.held_syns_sent += 1;
                Some(DatagramEvent::Forward(Transmit {
                    destination: next,
                    size: datagram.len(),
                    src: None,
                }))
            }
            Action::Delay => self.delayed(service),
            Action::Drop => self.refuse_syn(from, syn, buf),
        }
    }

    fn delayed(&mut self, service: ServiceId) -> Option<DatagramEvent> {
        self.stats.syns_delayed += 1;
        Some(DatagramEvent::Delayed { service })
    }

    fn open_half(
        &mut self,
        now: Timestamp,
        from: SocketAddr,
        listener: ListenerId,
        syn: &SalRepr,
        datagram: &[u8],
    ) -> Option<DatagramEvent> {
        self.stats.syns_received += 1;
        let payload = datagram.get(SalRepr::parse_datagram(datagram).ok()?.header_len..)?;
        let Some(l) = self.listeners.get(&listener).copied() else {
            return self.drop(DropReason::NoService);
        };
        let (Some(peer_share), Some(client_flow), Some(service)) =
            (syn.key_share, syn.src_flow, syn.dst_service())
        else {
            return self.drop(DropReason::Malformed);
        };
        if l.protocol != syn.protocol {
            return self.drop(DropReason::NoService);
        }
        if self.flow_count() >= self.config.max_flows {
            return self.drop(DropReason::Overload);
        }
        if self.half_open.len() >= self.config.max_half_open {
            self.evict_oldest_half_open(now);
        }
        let epoch = self.current_epoch().id;
        let Some(shared) = self.shared_secret(epoch, &peer_share) else {
            return self.drop(DropReason::BadMac);
        };
        let share = self.current_epoch().pair.public();
        let client = syn.source.map_or(from, |s| s.sender());
        let id = self.new_flow_id();
        // The SYN-ACK retraces the SYN's last hop (`docs/SAL.md` §3): to the router that
        // forwarded it, or to the client itself.
        let params = self.params(now, id, service, from, syn.protocol);
        let deadline = now + self.config.half_open_timeout;
        let flow = Flow::server(params, syn, payload, share, &shared, &peer_share, deadline)?;
        let key = (client, client_flow);
        self.syn_index.insert(key, id);
        self.half_open.insert(
            id,
            HalfOpen {
                flow,
                listener,
                key,
                timer: None,
                source: syn.source.map(Box::new),
            },
        );
        self.half_open_order.push_back(id);
        *self.half_open_per_ip.entry(client.ip()).or_default() += 1;
        self.half_open_ready.push_back(id);
        self.retime_half_open(id);
        self.stats.half_open_peak = self.stats.half_open_peak.max(self.half_open.len() as u64);
        None
    }

    fn handle_half_open(
        &mut self,
        now: Timestamp,
        from: SocketAddr,
        id: FlowId,
        datagram: &[u8],
    ) -> Option<DatagramEvent> {
        let h = self.half_open.get_mut(&id)?;
        h.flow
            .handle(now, from, FlowInput { shared: None }, datagram);
        if h.flow.is_established() {
            let h = self.remove_half_open(id)?;
            let mut flow = h.flow;
            while flow.poll_endpoint_event().is_some() {}
            return Some(DatagramEvent::NewFlow(Incoming {
                flow: Box::new(flow),
                listener: h.listener,
            }));
        }
        self.half_open_ready.push_back(id);
        self.retime_half_open(id);
        None
    }

    fn forward_syn(
        &mut self,
        from: SocketAddr,
        next: SocketAddr,
        datagram: &[u8],
        buf: &mut Vec<u8>,
    ) -> Option<DatagramEvent> {
        match self.forward_into(datagram, from, self.config.local_addr, buf) {
            Some(size) => {
                self.stats.forwarded_syns += 1;
                Some(DatagramEvent::Forward(Transmit {
                    destination: next,
                    size,
                    src: None,
                }))
            }
            None => self.drop(DropReason::NotForwardable),
        }
    }

    /// A SYN-ACK (or the RST of a half-open flow the server evicted) on its way back
    /// through this router: send it to the client (SOURCE record 0), appending the server's
    /// address as seen here (`docs/SAL.md` §3, §6.3).
    fn relay_syn_ack(
        &mut self,
        from: SocketAddr,
        repr: &SalRepr,
        datagram: &[u8],
        buf: &mut Vec<u8>,
    ) -> Option<DatagramEvent> {
        let source = repr.source.filter(|s| {
            self.config.forwarding
                && s.as_slice()
                    .get(1..)
                    .is_some_and(|hops| hops.contains(&self.config.local_addr))
        });
        let Some(source) = source else {
            return self.drop(DropReason::UnknownFlow);
        };
        // `forward` appends its `local` argument: here the server's observed address.
        match self.forward_into(datagram, from, from, buf) {
            Some(size) => {
                self.stats.forwarded_syn_acks += 1;
                Some(DatagramEvent::Forward(Transmit {
                    destination: source.sender(),
                    size,
                    src: None,
                }))
            }
            None => self.drop(DropReason::NotForwardable),
        }
    }

    fn forward_into(
        &mut self,
        datagram: &[u8],
        observed: SocketAddr,
        hop: SocketAddr,
        buf: &mut Vec<u8>,
    ) -> Option<usize> {
        buf.clear();
        buf.resize(datagram.len() + crate::wire::sal::MAX_HEADER_LEN, 0);
        let size = forward(datagram, observed, hop, buf).ok()?;
        buf.truncate(size);
        Some(size)
    }

    /// Refuses a SYN no rule accepts: an unauthenticated RST echoing the SYN's nonce, which
    /// the client accepts only in its handshake (`Flow` checks the nonce).
    fn refuse_syn(
        &mut self,
        from: SocketAddr,
        syn: &SalRepr,
        buf: &mut Vec<u8>,
    ) -> Option<DatagramEvent> {
        self.stats.drops.count(DropReason::NoService);
        let control = syn.control?;
        let mut rst = SalRepr::new(None, syn.src_flow, syn.protocol);
        rst.control = Some(ControlRepr {
            flags: ControlFlags::RST | ControlFlags::ACK,
            verno: 0,
            ackno: control.verno.wrapping_add(1),
            nonce: control.nonce,
        });
        let client = syn.source.map_or(from, |s| s.sender());
        buf.clear();
        buf.resize(rst.buffer_len(), 0);
        rst.emit(&mut Packet::new_unchecked(&mut buf[..]));
        self.stats.refusals_sent += 1;
        Some(DatagramEvent::Response(Transmit {
            destination: client,
            size: buf.len(),
            src: None,
        }))
    }

    fn handle_unconnected(
        &mut self,
        repr: &SalRepr,
        header_len: usize,
        len: usize,
    ) -> Option<DatagramEvent> {
        let Some(service) = repr.service else {
            return self.drop(DropReason::Malformed);
        };
        if len <= header_len {
            // Zero-length datagrams are dropped, as the original's UDP did.
            return self.drop(DropReason::Malformed);
        }
        let listener = self.table.lookup(&service.dst).and_then(|e| {
            e.active().targets().iter().find_map(|t| match t.action() {
                Action::Demux(l) => Some(*l),
                _ => None,
            })
        });
        let protocol = listener
            .and_then(|l| self.listeners.get(&l))
            .map(|l| l.protocol);
        match listener {
            Some(listener) if protocol == Some(repr.protocol) => {
                self.stats.unconnected_received += 1;
                Some(DatagramEvent::Unconnected {
                    listener,
                    source_service: service.src,
                    payload_offset: header_len,
                })
            }
            _ => self.drop(DropReason::NoService),
        }
    }

    /// Writes an unconnected datagram (protocol 17, no flow: SERVICE `dst_service` then
    /// SERVICE `src_service`, then `payload`) into `buf` for `to`, as the original's
    /// unconnected datagram sockets sent. The control plane uses it between
    /// [`ControlServices`]; `to` is given, not resolved (the original's "advisory IP").
    /// The receiving endpoint hands it to a datagram listener on `dst_service` as
    /// [`DatagramEvent::Unconnected`].
    pub fn send_unconnected(
        &mut self,
        dst_service: ServiceId,
        src_service: ServiceId,
        to: SocketAddr,
        payload: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<Transmit, SendError> {
        let mut repr = SalRepr::new(None, None, Protocol::UDP);
        repr.service = Some(ServiceRepr {
            dst: dst_service,
            src: Some(src_service),
        });
        let header = repr.buffer_len();
        let max = self.config.max_udp_payload.saturating_sub(header);
        if payload.is_empty() {
            return Err(SendError::Empty);
        }
        if payload.len() > max {
            return Err(SendError::TooLarge { max });
        }
        buf.clear();
        buf.resize(header, 0);
        buf.extend_from_slice(payload);
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
        self.stats.unconnected_sent += 1;
        Ok(Transmit {
            destination: to,
            size: buf.len(),
            src: None,
        })
    }

    /// SYN-ACKs (and their retransmissions) of half-open flows, and the RSTs of half-open
    /// flows evicted at the limit.
    pub fn poll_transmit(&mut self, now: Timestamp, buf: &mut Vec<u8>) -> Option<Transmit> {
        if let Some((t, bytes)) = self.evicted_rsts.pop_front() {
            buf.clear();
            buf.extend_from_slice(&bytes);
            return Some(t);
        }
        while let Some(&id) = self.half_open_ready.front() {
            let Some(h) = self.half_open.get_mut(&id) else {
                self.half_open_ready.pop_front();
                continue;
            };
            match h.flow.poll_transmit(now, buf) {
                Some(t) => {
                    self.retime_half_open(id);
                    return Some(t);
                }
                None => {
                    self.half_open_ready.pop_front();
                }
            }
        }
        None
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next needed.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let half_open = self.half_open_timers.first().map(|(t, _)| *t);
        Some(half_open.map_or(self.epoch_deadline, |t| t.min(self.epoch_deadline)))
    }

    /// Key-epoch rotation and half-open timers.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if now >= self.epoch_deadline {
            let id = self.current_epoch().id + 1;
            let pair = KeyPair::from_random(self.rng.random());
            self.epochs.swap(0, 1);
            self.epochs[0] = Some(Epoch { id, pair });
            self.epoch_deadline = now + self.config.key_epoch;
        }
        while let Some(&(t, id)) = self.half_open_timers.first() {
            if t > now {
                break;
            }
            self.half_open_timers.pop_first();
            let Some(h) = self.half_open.get_mut(&id) else {
                continue;
            };
            h.timer = None;
            h.flow.handle_timeout(now);
            if h.flow.is_closed() {
                self.remove_half_open(id);
            } else {
                self.half_open_ready.push_back(id);
                self.retime_half_open(id);
            }
        }
    }

    // ---------------------------------------------------------------- helpers

    fn drop(&mut self, reason: DropReason) -> Option<DatagramEvent> {
        self.stats.drops.count(reason);
        None
    }

    fn params(
        &mut self,
        now: Timestamp,
        id: FlowId,
        service: ServiceId,
        peer: SocketAddr,
        protocol: Protocol,
    ) -> FlowParams {
        FlowParams {
            config: self.config.flow.clone(),
            max_udp_payload: self.config.max_udp_payload,
            protocol,
            local_flow: id,
            service,
            peer_addr: peer,
            rng_seed: self.rng.random(),
            now,
            stream: self.stream.clone(),
        }
    }

    /// A random FlowID not in use (0 is reserved; never sequential, `DESIGN.md` §2).
    fn new_flow_id(&mut self) -> FlowId {
        loop {
            if let Some(id) = FlowId::new(self.rng.random())
                && !self.flows.contains_key(&id)
                && !self.half_open.contains_key(&id)
            {
                return id;
            }
        }
    }

    fn current_epoch(&self) -> &Epoch {
        self.epochs[0]
            .as_ref()
            .expect("the current epoch always exists")
    }

    fn shared_secret(&mut self, epoch: u64, peer: &[u8; KEY_SHARE_LEN]) -> Option<SharedSecret> {
        if let Some(s) = self.secrets.get(&(epoch, *peer)) {
            self.stats.key_cache_hits += 1;
            return Some(s.clone());
        }
        let pair = &self.epochs.iter().flatten().find(|e| e.id == epoch)?.pair;
        let secret = pair.shared_secret(peer)?;
        self.stats.key_agreements += 1;
        if self.secrets.len() >= self.config.secret_cache
            && let Some(old) = self.secrets_order.pop_front()
        {
            self.secrets.remove(&old);
        }
        self.secrets.insert((epoch, *peer), secret.clone());
        self.secrets_order.push_back((epoch, *peer));
        Some(secret)
    }

    /// The shared secret for a SYN-ACK to one of our client flows (none if it is not one).
    fn secret_for_syn_ack(&mut self, epoch: u64, datagram: &[u8]) -> Option<SharedSecret> {
        let repr = SalRepr::parse_datagram(datagram).ok()?.repr;
        if repr.flags() != ControlFlags::SYN | ControlFlags::ACK {
            return None;
        }
        self.shared_secret(epoch, &repr.key_share?)
    }

    /// Makes room for a new SYN: evicts the oldest half-open flow of the client IP holding
    /// more than an eighth of the half-open limit (the most, if several), else the oldest
    /// of all. A flood from a few addresses thus evicts its own SYNs and leaves other
    /// clients' handshakes alone, however long they wait in a socket queue behind the
    /// flood; a flood from spoofed, scattered addresses gets plain oldest-first. The share
    /// is large enough that a busy legitimate client (a client translator fronting many
    /// users) holds far less: its half-open flows last one round trip.
    ///
    /// The evicted flow's client may already hold our SYN-ACK and believe it is connected:
    /// it gets an authenticated RST, along the SYN's path (with its SOURCE, which routers
    /// relay like a SYN-ACK), so it fails at once instead of sending into a flow that no
    /// longer exists until its stream gives up.
    fn evict_oldest_half_open(&mut self, now: Timestamp) {
        if let Some(id) = self.heavy_hitter_victim() {
            self.evict_half_open(now, id);
            return;
        }
        while let Some(id) = self.half_open_order.pop_front() {
            if self.evict_half_open(now, id) {
                return;
            }
        }
    }

    /// The oldest half-open flow of the client IP holding the most half-open flows, if it
    /// holds more than `max_half_open / 8` (at least 2). Linear in the half-open flows,
    /// which is small next to the key agreement every admitted SYN costs.
    fn heavy_hitter_victim(&self) -> Option<FlowId> {
        let share = (self.config.max_half_open / 8).max(1);
        let (&ip, _) = self
            .half_open_per_ip
            .iter()
            .filter(|(_, n)| **n > share)
            .max_by_key(|(_, n)| **n)?;
        self.half_open_order
            .iter()
            .copied()
            .find(|id| self.half_open.get(id).is_some_and(|h| h.key.0.ip() == ip))
    }

    /// Evicts one half-open flow (see [`evict_oldest_half_open`](Self::evict_oldest_half_open));
    /// false if it no longer exists.
    fn evict_half_open(&mut self, now: Timestamp, id: FlowId) -> bool {
        let Some(mut h) = self.remove_half_open(id) else {
            return false;
        };
        self.stats.half_open_evicted += 1;
        h.flow.abort(now);
        let mut bytes = Vec::new();
        if let Some(t) = h.flow.poll_transmit(now, &mut bytes)
            && let Some(rst) = with_source(&bytes[..t.size], h.source.as_deref())
        {
            if self.evicted_rsts.len() >= MAX_EVICTED_RSTS {
                self.evicted_rsts.pop_front();
            }
            let size = rst.len();
            self.evicted_rsts.push_back((Transmit { size, ..t }, rst));
        }
        true
    }

    fn remove_half_open(&mut self, id: FlowId) -> Option<HalfOpen> {
        let h = self.half_open.remove(&id)?;
        self.syn_index.remove(&h.key);
        let ip = h.key.0.ip();
        if let Some(n) = self.half_open_per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.half_open_per_ip.remove(&ip);
            }
        }
        if let Some(t) = h.timer {
            self.half_open_timers.remove(&(t, id));
        }
        // `half_open_order` and `half_open_ready` are cleaned lazily.
        if self.half_open_order.len() > 2 * self.half_open.len() + 16 {
            let live = &self.half_open;
            self.half_open_order.retain(|id| live.contains_key(id));
        }
        Some(h)
    }

    fn retime_half_open(&mut self, id: FlowId) {
        let Some(h) = self.half_open.get_mut(&id) else {
            return;
        };
        if let Some(t) = h.timer.take() {
            self.half_open_timers.remove(&(t, id));
        }
        if let Some(t) = h.flow.poll_timeout() {
            h.timer = Some(t);
            self.half_open_timers.insert((t, id));
        }
    }
}

/// `datagram` with `source` as its SOURCE extension (unchanged without one). The MAC stays
/// valid: its input leaves SOURCE out.
fn with_source(datagram: &[u8], source: Option<&SourceRepr>) -> Option<Vec<u8>> {
    let Some(source) = source else {
        return Some(datagram.to_vec());
    };
    let parsed = SalRepr::parse_datagram(datagram).ok()?;
    let mut repr = parsed.repr;
    repr.source = Some(*source);
    let hlen = repr.buffer_len();
    let mut out = vec![0; hlen + parsed.payload.len()];
    out.get_mut(hlen..)?.copy_from_slice(parsed.payload);
    repr.emit(&mut Packet::new_unchecked(&mut out[..]));
    Some(out)
}

/// Keeps one client's retransmitted SYNs on one replica: the same (address, FlowID) always
/// hashes the same way.
fn flow_hash(client: SocketAddr, flow: FlowId) -> u64 {
    use core::hash::{Hash, Hasher};
    // FNV-1a over a fixed encoding: stable across runs and platforms, unlike SipHash keys.
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    client.hash(&mut h);
    flow.get().hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(seed: u8, addr: &str, forwarding: bool) -> Endpoint {
        let c = EndpointConfig {
            rng_seed: [seed; 32],
            local_addr: addr.parse().unwrap(),
            forwarding,
            ..EndpointConfig::default()
        };
        Endpoint::new(c, Timestamp::ZERO)
    }

    fn prefix() -> ServicePrefix {
        ServicePrefix::exact(ServiceId::from_u32(16385))
    }

    fn flags(bytes: &[u8]) -> ControlFlags {
        SalRepr::parse_datagram(bytes).unwrap().repr.flags()
    }

    /// A server listening on the service that keeps at most `max_half_open` handshakes:
    /// the subject of the SYN-flood tests.
    fn half_open_server(max_half_open: usize) -> Endpoint {
        let c = EndpointConfig {
            local_addr: "192.0.2.10:54325".parse().unwrap(),
            max_half_open,
            ..EndpointConfig::default()
        };
        let mut s = Endpoint::new(c, Timestamp::ZERO);
        s.listen(prefix(), Protocol::UDP).unwrap();
        s
    }

    /// A client SYN for the service, from a client at `client`.
    fn syn(client: &str) -> Vec<u8> {
        let mut c = endpoint(9, client, false);
        let (_, mut flow) = c
            .connect_to(
                Timestamp::ZERO,
                ServiceId::from_u32(16385),
                "192.0.2.1:54325".parse().unwrap(),
                Protocol::UDP,
            )
            .unwrap();
        let mut buf = Vec::new();
        let t = flow.poll_transmit(Timestamp::ZERO, &mut buf).unwrap();
        buf.truncate(t.size);
        buf
    }

    #[test]
    fn unconnected_datagrams_reach_a_datagram_listener_only() {
        let now = Timestamp::ZERO;
        let mut a = endpoint(1, "192.0.2.10:54325", false);
        let mut b = endpoint(2, "192.0.2.1:54325", false);
        let control = b
            .listen(ServicePrefix::exact(ROUTER_CONTROL_SERVICE), Protocol::UDP)
            .unwrap();
        b.listen(prefix(), Protocol::TCP).unwrap();
        let mut buf = Vec::new();
        let t = a
            .send_unconnected(
                ROUTER_CONTROL_SERVICE,
                HOST_CONTROL_SERVICE,
                b.local_addr(),
                b"register",
                &mut buf,
            )
            .unwrap();
        assert_eq!(t.destination, b.local_addr());
        let bytes = buf[..t.size].to_vec();
        let mut out = Vec::new();
        match b.handle(now, a.local_addr(), &bytes, &mut out) {
            Some(DatagramEvent::Unconnected {
                listener,
                source_service,
                payload_offset,
            }) => {
                assert_eq!(listener, control);
                assert_eq!(source_service, Some(HOST_CONTROL_SERVICE));
                assert_eq!(&bytes[payload_offset..], b"register");
            }
            other => panic!("{other:?}"),
        }
        // To a stream listener, or to nobody: dropped.
        for service in [prefix().id().to_owned(), ServiceId::from_u32(7)] {
            let t = a
                .send_unconnected(
                    service,
                    HOST_CONTROL_SERVICE,
                    b.local_addr(),
                    b"x",
                    &mut buf,
                )
                .unwrap();
            let bytes = buf[..t.size].to_vec();
            assert!(b.handle(now, a.local_addr(), &bytes, &mut out).is_none());
        }
        assert_eq!(b.stats().drops.no_service, 2);
        assert_eq!(
            (a.stats().unconnected_sent, b.stats().unconnected_received),
            (3, 1)
        );
        // Empty and oversized payloads are refused.
        assert_eq!(
            a.send_unconnected(
                ROUTER_CONTROL_SERVICE,
                HOST_CONTROL_SERVICE,
                b.local_addr(),
                b"",
                &mut buf
            ),
            Err(SendError::Empty)
        );
        let max = 1452 - 84;
        assert!(
            a.send_unconnected(
                ROUTER_CONTROL_SERVICE,
                HOST_CONTROL_SERVICE,
                b.local_addr(),
                &[1; 1368],
                &mut buf
            )
            .is_ok()
        );
        assert_eq!(
            a.send_unconnected(
                ROUTER_CONTROL_SERVICE,
                HOST_CONTROL_SERVICE,
                b.local_addr(),
                &[1; 1369],
                &mut buf
            ),
            Err(SendError::TooLarge { max })
        );
    }

    #[test]
    fn a_syn_meeting_delay_is_handed_back_then_resolved_again() {
        let now = Timestamp::ZERO;
        let mut r = endpoint(3, "192.0.2.1:54325", true);
        r.table_mut().insert(prefix(), Rule::delay()).unwrap();
        let bytes = syn("10.0.0.1:5000");
        let client: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let mut buf = Vec::new();
        assert!(matches!(
            r.handle(now, client, &bytes, &mut buf),
            Some(DatagramEvent::Delayed { service }) if service == ServiceId::from_u32(16385)
        ));
        assert_eq!(r.flow_count(), 0, "nothing kept");
        // Released once a replica is registered above the DELAY rule: forwarded.
        let server: SocketAddr = "192.0.2.10:54325".parse().unwrap();
        r.table_mut()
            .insert(prefix(), Rule::forward(server).with_priority(2))
            .unwrap();
        match r.handle(now, client, &bytes, &mut buf) {
            Some(DatagramEvent::Forward(t)) => {
                assert_eq!(t.destination, server);
                let fwd = SalRepr::parse_datagram(&buf[..t.size]).unwrap().repr;
                assert_eq!(fwd.source.unwrap().sender(), client);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.stats().syns_delayed, 1);
    }

    #[test]
    fn a_local_connect_meeting_delay_is_held_and_sent_on_when_released() {
        let now = Timestamp::ZERO;
        let mut unspecified = endpoint(4, "0.0.0.0:54325", false);
        unspecified
            .table_mut()
            .insert(prefix(), Rule::delay())
            .unwrap();
        assert_eq!(
            unspecified
                .connect(now, ServiceId::from_u32(16385), Protocol::UDP)
                .unwrap_err(),
            ConnectError::Delayed
        );

        let mut c = endpoint(5, "10.0.0.1:5000", false);
        let me = c.local_addr();
        c.table_mut().insert(prefix(), Rule::delay()).unwrap();
        let (_, mut flow) = c
            .connect(now, ServiceId::from_u32(16385), Protocol::UDP)
            .unwrap();
        let mut buf = Vec::new();
        let t = flow.poll_transmit(now, &mut buf).unwrap();
        assert_eq!(t.destination, me, "the SYN comes back to its own endpoint");
        let held = buf[..t.size].to_vec();
        let mut out = Vec::new();
        assert!(matches!(
            c.handle(now, me, &held, &mut out),
            Some(DatagramEvent::Delayed { .. })
        ));
        // The same bytes from anyone else are a received SYN: a host does not forward.
        let next: SocketAddr = "192.0.2.1:54325".parse().unwrap();
        c.table_mut().remove(&prefix(), &Action::Delay).unwrap();
        c.table_mut()
            .insert(ServicePrefix::DEFAULT, Rule::forward(next))
            .unwrap();
        assert!(matches!(
            c.handle(now, "203.0.113.1:1".parse().unwrap(), &held, &mut out),
            Some(DatagramEvent::Response(_))
        ));
        // Released: sent unchanged to the next hop now in force.
        match c.handle(now, me, &held, &mut out) {
            Some(DatagramEvent::Forward(t)) => {
                assert_eq!(t.destination, next);
                assert_eq!(&out[..t.size], &held[..]);
            }
            other => panic!("{other:?}"),
        }
        // A FORWARD rule pointing at ourselves would loop: dropped.
        c.table_mut().insert(prefix(), Rule::forward(me)).unwrap();
        assert!(c.handle(now, me, &held, &mut out).is_none());
        assert_eq!(c.stats().held_syns_sent, 1);
    }

    #[test]
    fn an_evicted_half_open_flow_is_reset_along_the_syn_path() {
        let now = Timestamp::ZERO;
        let mut s = half_open_server(1);
        let router: SocketAddr = "192.0.2.1:54325".parse().unwrap();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        // Two SYNs forwarded by a router (with SOURCE): the second evicts the first.
        for client in ["198.51.100.1:40000", "198.51.100.2:40000"] {
            let client: SocketAddr = client.parse().unwrap();
            let len = forward_syn_bytes(&syn(&client.to_string()), client, router, &mut buf);
            assert!(s.handle(now, router, &buf[..len], &mut out).is_none());
        }
        assert_eq!(s.half_open_count(), 1);
        assert_eq!(s.stats().half_open_evicted, 1);
        let mut sent = Vec::new();
        while let Some(t) = s.poll_transmit(now, &mut out) {
            sent.push((t, out[..t.size].to_vec()));
        }
        let (t, rst) = &sent[0];
        assert_eq!(t.destination, router);
        assert!(flags(rst).contains(ControlFlags::RST));
        let repr = SalRepr::parse_datagram(rst).unwrap().repr;
        assert!(repr.mac.is_some(), "authenticated");
        assert_eq!(
            repr.source.unwrap().sender(),
            "198.51.100.1:40000".parse().unwrap()
        );
        // The router relays it to the client like a SYN-ACK.
        let mut r = endpoint(6, "192.0.2.1:54325", true);
        match r.handle(now, s.local_addr(), rst, &mut buf) {
            Some(DatagramEvent::Forward(t)) => {
                assert_eq!(t.destination, "198.51.100.1:40000".parse().unwrap());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn half_open_gauge_and_peak_never_pass_the_limit_under_a_syn_flood() {
        let now = Timestamp::ZERO;
        let mut s = half_open_server(8);
        let mut out = Vec::new();
        for port in 0..50u16 {
            let client = format!("198.51.100.1:{}", 40_000 + port);
            let bytes = syn(&client);
            assert!(
                s.handle(now, client.parse().unwrap(), &bytes, &mut out)
                    .is_none()
            );
            while s.poll_transmit(now, &mut out).is_some() {}
            let st = s.stats();
            assert_eq!(st.half_open, s.half_open_count() as u64);
            assert!(st.half_open <= 8 && st.half_open_peak <= 8, "{st:?}");
        }
        let st = s.stats();
        assert_eq!((st.half_open, st.half_open_peak), (8, 8));
        assert_eq!(st.half_open_evicted, 42);
        assert_eq!(st.syns_received, 50);
    }

    #[test]
    fn a_flood_from_few_addresses_evicts_its_own_half_open_flows_not_others() {
        let now = Timestamp::ZERO;
        let mut s = half_open_server(16);
        let mut out = Vec::new();
        let legit = "203.0.113.5:40000";
        let legit_syn = syn(legit);
        assert!(
            s.handle(now, legit.parse().unwrap(), &legit_syn, &mut out)
                .is_none()
        );
        // A flood from one address, many ports: 50 SYNs through a 16-entry table.
        for port in 0..50u16 {
            let client = format!("198.51.100.1:{}", 1000 + port);
            assert!(
                s.handle(now, client.parse().unwrap(), &syn(&client), &mut out)
                    .is_none()
            );
            while s.poll_transmit(now, &mut out).is_some() {}
        }
        assert_eq!(s.half_open_count(), 16);
        assert_eq!(s.stats().half_open_evicted, 35, "only the flood's own");
        // The legitimate handshake is still half-open: its repeated SYN is a duplicate.
        assert!(
            s.handle(now, legit.parse().unwrap(), &legit_syn, &mut out)
                .is_none()
        );
        assert_eq!(s.stats().duplicate_syns, 1);
        // Scattered sources (no address above the share): oldest first, as before.
        for i in 0..16u8 {
            let client = format!("198.18.0.{i}:7");
            assert!(
                s.handle(now, client.parse().unwrap(), &syn(&client), &mut out)
                    .is_none()
            );
        }
        assert_eq!(s.half_open_count(), 16);
        assert!(
            s.handle(now, legit.parse().unwrap(), &legit_syn, &mut out)
                .is_none()
        );
        assert_eq!(s.stats().duplicate_syns, 1, "now evicted");
    }

    fn forward_syn_bytes(
        syn: &[u8],
        client: SocketAddr,
        router: SocketAddr,
        out: &mut Vec<u8>,
    ) -> usize {
        out.clear();
        out.resize(syn.len() + crate::wire::sal::MAX_HEADER_LEN, 0);
        forward(syn, client, router, out).unwrap()
    }
}
