//! [`Endpoint`]: demultiplexes datagrams to flows, answers SYNs for local listeners, forwards
//! SYNs by the service table (router role), and owns the key epochs.
//!
//! # Calling contract
//!
//! For every received datagram call [`Endpoint::handle`]; act on the returned
//! [`DatagramEvent`]: hand `Flow` inputs to the named flow's [`Flow::handle`] with the same
//! bytes, [`accept`](Endpoint::accept) or [`refuse`](Endpoint::refuse) an `Incoming`, send a
//! `Transmit` written into `buf`. Then drain [`Endpoint::poll_transmit`] (SYN-ACKs of
//! half-open flows), and keep [`Endpoint::handle_timeout`] called at
//! [`Endpoint::poll_timeout`]. Pass every [`EndpointEvent`] a flow emits to
//! [`Endpoint::handle_event`].

use core::net::SocketAddr;
use std::collections::{BTreeSet, HashMap, VecDeque};
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
use crate::wire::sal::{ControlFlags, ControlRepr, Packet, Protocol, SalRepr, forward};
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
    /// A SYN or SYN-ACK forwarded by the service table, written into `buf`.
    Forward(Transmit),
    /// A reply the endpoint wrote into `buf` (a refusal).
    Response(Transmit),
    /// An unconnected datagram for a local listener; the payload is
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
    /// The matching rule is DELAY: the connect must wait for a controller verdict.
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
    /// (deadline, flow) of every half-open flow that has one.
    half_open_timers: BTreeSet<(Timestamp, FlowId)>,
    /// Half-open flows with something to send.
    half_open_ready: VecDeque<FlowId>,
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
}

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
            half_open_timers: BTreeSet::new(),
            half_open_ready: VecDeque::new(),
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

    /// Counters.
    pub fn stats(&self) -> EndpointStats {
        self.stats
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
            Action::Delay => return Err(ConnectError::Delayed),
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
        if flags == ControlFlags::SYN | ControlFlags::ACK {
            return self.relay_syn_ack(from, &repr, datagram, buf);
        }
        if repr.control.is_none() && repr.dst_flow.is_none() {
            return self.handle_unconnected(&repr, parsed.header_len);
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
            // The delay queue (control::delay) is driven by the router role above this layer.
            Action::Delay => self.drop(DropReason::NoService),
        }
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
            self.evict_oldest_half_open();
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
            },
        );
        self.half_open_order.push_back(id);
        self.half_open_ready.push_back(id);
        self.retime_half_open(id);
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

    /// A SYN-ACK on its way back through this router: send it to the client (SOURCE
    /// record 0), appending the server's address as seen here (`docs/SAL.md` §3).
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

    fn handle_unconnected(&mut self, repr: &SalRepr, header_len: usize) -> Option<DatagramEvent> {
        let Some(service) = repr.service else {
            return self.drop(DropReason::Malformed);
        };
        match self.table.lookup(&service.dst).map(|e| e.active()) {
            Some(set) => {
                let listener = set.targets().iter().find_map(|t| match t.action() {
                    Action::Demux(l) => Some(*l),
                    _ => None,
                });
                match listener {
                    Some(listener) => Some(DatagramEvent::Unconnected {
                        listener,
                        source_service: service.src,
                        payload_offset: header_len,
                    }),
                    None => self.drop(DropReason::NoService),
                }
            }
            None => self.drop(DropReason::NoService),
        }
    }

    /// SYN-ACKs (and their retransmissions) of half-open flows.
    pub fn poll_transmit(&mut self, now: Timestamp, buf: &mut Vec<u8>) -> Option<Transmit> {
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

    fn evict_oldest_half_open(&mut self) {
        while let Some(id) = self.half_open_order.pop_front() {
            if self.remove_half_open(id).is_some() {
                self.stats.half_open_evicted += 1;
                return;
            }
        }
    }

    fn remove_half_open(&mut self, id: FlowId) -> Option<HalfOpen> {
        let h = self.half_open.remove(&id)?;
        self.syn_index.remove(&h.key);
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
