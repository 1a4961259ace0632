//! [`SalNode`]: a host running the real SAL core (an [`Endpoint`] and its flows) on the
//! simulated network, with the driver's job done synchronously.
//!
//! A node can take optional roles on top of plain flows, through the same
//! [`ControlPlane`] the tokio driver uses:
//!
//! * **router** ([`SalNode::make_router`]): registrations in, leases into the endpoint's
//!   service table, replies to the sender's ServiceID;
//! * **DELAY queue** ([`SalNode::enable_delay_queue`], part of the router role): SYNs the
//!   endpoint reports as [`DatagramEvent::Delayed`] wait until released
//!   ([`SalNode::release_delayed`]) and are then resolved again;
//! * **registrant** ([`SalNode::make_registrant`]): the node's listener prefixes
//!   ([`SalNode::listen_registered`]) announced to routers.
//!
//! Datagrams a node addresses to itself (a connect to a local listener, a SYN held by a
//! DELAY rule) are looped back inside the node, as a kernel would, never through the
//! simulated network or a NAT.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serval_stack::control::{
    ControlEvent, ControlPlane, DelayConfig, DelayDropReason, DelayEvent, DelayQueue,
    DelayedPacket, LeaseEvent, RegistrantConfig, RegistrantEvent, RegistryConfig, RegistryError,
    RoleError,
};
use serval_stack::sal::{
    ConnectError, ControlServices, DatagramEvent, Endpoint, EndpointConfig, Event, Flow,
    FlowHandle, ListenError, Transmit,
};
use serval_stack::service_table::ListenerId;
use serval_stack::time::Timestamp;
use serval_stack::transport::ReadError;
use serval_stack::wire::control_msg::Verdict as DelayVerdict;
use serval_stack::wire::sal::Protocol;
use serval_stack::wire::{ServiceId, ServicePrefix};
use sha2::{Digest, Sha256};

use crate::sim::{Datagram, Node};

/// Most datagrams looped back to the node itself in one call (a guard against a local
/// forwarding loop; the endpoint refuses the loops it can see).
const LOOPBACK_BUDGET: usize = 10_000;

/// A Serval host: one endpoint on one UDP socket address, and every flow it has.
#[derive(Debug)]
pub struct SalNode {
    /// The endpoint (service table, listeners, half-open flows).
    pub endpoint: Endpoint,
    /// Established and connecting flows, by handle.
    pub flows: BTreeMap<FlowHandle, Flow>,
    /// Application events seen so far, in order.
    pub events: Vec<(FlowHandle, Event)>,
    /// Flows accepted from listeners, in order.
    pub accepted: Vec<FlowHandle>,
    /// Unconnected datagrams received: (sender, payload).
    pub unconnected: Vec<(SocketAddr, Vec<u8>)>,
    /// Stream applications, by flow: what they send and what they received.
    pub apps: BTreeMap<FlowHandle, StreamApp>,
    /// The app every accepted flow gets (its send side); `None` = a sink only.
    pub accept_app: Option<(u64, u64, bool)>,
    /// The control roles (router, registrant, DELAY queue).
    pub control: ControlPlane,
    /// Every lease event (router role), in order.
    pub lease_events: Vec<LeaseEvent>,
    /// Every refused registration datagram (router role), in order.
    pub refusals: Vec<RegistryError>,
    /// Every registrant event, in order.
    pub registrant_events: Vec<RegistrantEvent>,
    /// Every event of the delay queue, in order.
    pub delay_events: Vec<DelayEvent>,
    /// Delayed SYNs the queue refused (full, loop guard, too old), in order.
    pub delay_refusals: Vec<DelayDropReason>,
    addr: SocketAddr,
    out: VecDeque<Datagram>,
    loopback: VecDeque<Datagram>,
    alarm: Option<Timestamp>,
    buf: Vec<u8>,
}

impl SalNode {
    /// A node whose socket is `addr`; `config.local_addr` is set to it.
    pub fn new(mut config: EndpointConfig, addr: SocketAddr, now: Timestamp) -> Self {
        config.local_addr = addr;
        Self {
            endpoint: Endpoint::new(config, now),
            flows: BTreeMap::new(),
            events: Vec::new(),
            accepted: Vec::new(),
            unconnected: Vec::new(),
            apps: BTreeMap::new(),
            accept_app: None,
            control: ControlPlane::new(),
            lease_events: Vec::new(),
            refusals: Vec::new(),
            registrant_events: Vec::new(),
            delay_events: Vec::new(),
            delay_refusals: Vec::new(),
            addr,
            out: VecDeque::new(),
            loopback: VecDeque::new(),
            alarm: None,
            buf: Vec::new(),
        }
    }

    /// Asks to be woken at `at` (replacing an earlier request), so the network's virtual
    /// time stops there: a test's way to advance exactly to a moment.
    pub fn wake_at(&mut self, at: Timestamp) {
        self.alarm = Some(at);
    }

    /// Makes this node a service router: it listens (datagrams) on `services.router` and
    /// turns authentic registrations into FORWARD rules; SYNs that hit DELAY wait in a queue
    /// configured by `delay`. The endpoint should have been built with `forwarding` on.
    pub fn make_router(
        &mut self,
        registry: RegistryConfig,
        services: ControlServices,
        delay: DelayConfig,
    ) -> Result<ListenerId, RoleError> {
        self.control
            .enable_router(&mut self.endpoint, registry, services, delay)
    }

    /// Gives the node a DELAY queue (replacing any previous one and what it held).
    pub fn enable_delay_queue(&mut self, config: DelayConfig) {
        self.control.enable_delay(config);
    }

    /// Makes this node a registrant of `routers`: it listens (datagrams) on `services.host`
    /// for their replies. Announce prefixes with [`listen_registered`](Self::listen_registered).
    pub fn make_registrant(
        &mut self,
        config: RegistrantConfig,
        services: ControlServices,
        routers: &[SocketAddr],
    ) -> Result<ListenerId, RoleError> {
        self.control
            .enable_registrant(&mut self.endpoint, config, services, routers)
    }

    /// Listens on `prefix` and, with the registrant role, registers it with every router.
    pub fn listen_registered(
        &mut self,
        prefix: ServicePrefix,
        protocol: Protocol,
    ) -> Result<ListenerId, ListenError> {
        let id = self.endpoint.listen(prefix, protocol)?;
        self.control
            .add_prefix(prefix)
            .expect("within the configured number of prefixes");
        Ok(id)
    }

    /// Withdraws `prefix` from every router (UNREGISTER); the listener stays, so flows in
    /// progress and a direct connect still work. `false` if it was not registered.
    pub fn unregister(&mut self, prefix: &ServicePrefix) -> bool {
        self.control.remove_prefix(prefix)
    }

    /// The registrant stops for good without a word (its daemon crashed): no refresh, no
    /// UNREGISTER; the routers' leases run out.
    pub fn stop_registrant(&mut self) {
        self.control.stop_registrant();
    }

    /// Whether the registrant role has `prefix` acknowledged by `router`.
    pub fn is_registered(&self, router: SocketAddr, prefix: &ServicePrefix) -> bool {
        self.control.is_registered(router, prefix)
    }

    /// Releases every SYN waiting for a ServiceID under `prefix`: each is resolved again
    /// at once (and parked again if it still meets DELAY). Returns how many.
    pub fn release_delayed(&mut self, now: Timestamp, prefix: &ServicePrefix) -> usize {
        let n = self.control.verdict(prefix, DelayVerdict::Release);
        self.pump(now);
        self.drain_loopback(now);
        n
    }

    /// Drops every SYN waiting for a ServiceID under `prefix` (DROP verdict). Returns how
    /// many.
    pub fn drop_delayed(&mut self, prefix: &ServicePrefix) -> usize {
        let n = self.control.verdict(prefix, DelayVerdict::Drop);
        self.collect_control_events();
        n
    }

    /// SYNs parked now.
    pub fn delayed_len(&self) -> usize {
        self.control.delay().map_or(0, DelayQueue::len)
    }

    /// Opens a flow to `service` resolved through this node's table and adds it.
    pub fn connect(
        &mut self,
        now: Timestamp,
        service: ServiceId,
        protocol: Protocol,
    ) -> Result<FlowHandle, ConnectError> {
        let (h, flow) = self.endpoint.connect(now, service, protocol)?;
        self.flows.insert(h, flow);
        Ok(h)
    }

    /// Sends an arbitrary datagram as is (any source address: an attacker's spoofing).
    pub fn send_raw(&mut self, d: Datagram) {
        self.out.push_back(d);
    }

    /// The node's socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds a flow the test opened with `endpoint.connect*`.
    pub fn add_flow(&mut self, handle: FlowHandle, flow: Flow) {
        self.flows.insert(handle, flow);
    }

    /// The flow behind `handle`.
    pub fn flow(&mut self, handle: FlowHandle) -> &mut Flow {
        self.flows.get_mut(&handle).expect("a flow this node owns")
    }

    /// The socket moved to `addr` (roaming): every flow announces it with an RSYN.
    pub fn move_to(&mut self, addr: SocketAddr) {
        self.addr = addr;
        for flow in self.flows.values_mut() {
            flow.migrate(addr);
        }
    }

    /// Whether `handle` has seen `event`.
    pub fn saw(&self, handle: FlowHandle, event: Event) -> bool {
        self.events.iter().any(|&(h, e)| h == handle && e == event)
    }

    fn push(&mut self, t: Transmit) {
        let payload = self.buf[..t.size].to_vec();
        self.send(t, payload);
    }

    /// Queues a datagram for the network, or for the node itself.
    fn send(&mut self, t: Transmit, payload: Vec<u8>) {
        let own = self.endpoint.local_addr();
        if t.destination == own || t.destination == self.addr {
            self.loopback.push_back(Datagram {
                src: t.destination,
                dst: t.destination,
                payload,
            });
        } else {
            self.out.push_back(Datagram {
                src: t.src.unwrap_or(self.addr),
                dst: t.destination,
                payload,
            });
        }
    }

    /// Delivers what the node sent itself, and what that causes, until nothing is left.
    fn drain_loopback(&mut self, now: Timestamp) {
        let mut budget = LOOPBACK_BUDGET;
        while let Some(d) = self.loopback.pop_front() {
            if budget == 0 {
                self.loopback.clear();
                return;
            }
            budget -= 1;
            self.receive(now, d);
            self.pump(now);
        }
    }

    /// One datagram through the endpoint, and what it asks for.
    fn receive(&mut self, now: Timestamp, d: Datagram) {
        let event = self.endpoint.handle(now, d.src, &d.payload, &mut self.buf);
        if let Some(service) = self.dispatch(now, d.src, &d.payload, event) {
            self.control
                .park(now, DelayedPacket::new(now, service, d.src, d.payload));
        }
    }

    /// Acts on an endpoint event for `payload` from `src`; returns the ServiceID of a SYN
    /// that hit DELAY, for the caller to park.
    fn dispatch(
        &mut self,
        now: Timestamp,
        src: SocketAddr,
        payload: &[u8],
        event: Option<DatagramEvent>,
    ) -> Option<ServiceId> {
        match event {
            Some(DatagramEvent::Flow(h, input)) => {
                if let Some(flow) = self.flows.get_mut(&h) {
                    flow.handle(now, src, input, payload);
                }
            }
            Some(DatagramEvent::NewFlow(incoming)) => {
                let (h, flow) = self.endpoint.accept(incoming);
                self.flows.insert(h, flow);
                self.accepted.push(h);
                if let Some((seed, len, close)) = self.accept_app {
                    self.apps.insert(h, StreamApp::new(seed, len, close));
                }
            }
            Some(DatagramEvent::Forward(t) | DatagramEvent::Response(t)) => self.push(t),
            Some(DatagramEvent::Delayed { service }) => return Some(service),
            Some(DatagramEvent::Unconnected {
                listener,
                source_service,
                payload_offset,
            }) => {
                let body = payload.get(payload_offset..).unwrap_or_default();
                let ours = self.control.handle_unconnected(
                    now,
                    &mut self.endpoint,
                    src,
                    listener,
                    source_service,
                    body,
                );
                if !ours {
                    self.unconnected.push((src, body.to_vec()));
                }
            }
            None => {}
        }
        None
    }

    /// The control plane's datagrams, and the SYNs it released resolved again.
    fn pump_control(&mut self, now: Timestamp) {
        while let Some(t) = self
            .control
            .poll_transmit(now, &mut self.endpoint, &mut self.buf)
        {
            self.push(t);
        }
        while let Some(packet) = self.control.poll_released() {
            let event = self
                .endpoint
                .handle(now, packet.from, &packet.bytes, &mut self.buf);
            if self
                .dispatch(now, packet.from, &packet.bytes, event)
                .is_some()
            {
                // DELAY again: park the released packet itself, so the loop guard counts.
                self.control.park(now, packet);
            }
        }
        self.collect_control_events();
    }

    /// Sorts the control plane's events into the node's logs.
    fn collect_control_events(&mut self) {
        while let Some(e) = self.control.poll_event() {
            match e {
                ControlEvent::Lease(e) => self.lease_events.push(e),
                ControlEvent::Refused(e) => self.refusals.push(e),
                ControlEvent::Registrant(e) => self.registrant_events.push(e),
                ControlEvent::Delay(e) => self.delay_events.push(e),
                ControlEvent::DelayRefused(r) => self.delay_refusals.push(r),
                _ => {}
            }
        }
    }

    /// Moves everything the endpoint and flows want to send into the outbox and collects
    /// their events.
    fn pump(&mut self, now: Timestamp) {
        self.pump_control(now);
        while let Some(t) = self.endpoint.poll_transmit(now, &mut self.buf) {
            self.push(t);
        }
        let handles: Vec<FlowHandle> = self.flows.keys().copied().collect();
        for h in handles {
            let flow = self.flows.get_mut(&h).expect("listed");
            if let Some(app) = self.apps.get_mut(&h) {
                app.pump(now, flow);
            }
            let mut sent = Vec::new();
            while let Some(t) = flow.poll_transmit(now, &mut self.buf) {
                sent.push((t, self.buf[..t.size].to_vec()));
            }
            while let Some(e) = flow.poll() {
                self.events.push((h, e));
            }
            let mut drained = false;
            while let Some(e) = flow.poll_endpoint_event() {
                drained |= e == serval_stack::sal::EndpointEvent::Drained;
                self.endpoint.handle_event(h, e);
            }
            if drained {
                self.flows.remove(&h);
            }
            for (t, payload) in sent {
                self.send(t, payload);
            }
        }
    }
}

impl Node for SalNode {
    fn handle(&mut self, now: Timestamp, d: Datagram) {
        self.receive(now, d);
        self.pump(now);
        self.drain_loopback(now);
    }

    fn poll_transmit(&mut self, now: Timestamp) -> Option<Datagram> {
        self.pump(now);
        self.drain_loopback(now);
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        let flows = self.flows.values().filter_map(Flow::poll_timeout).min();
        [
            self.endpoint.poll_timeout(),
            self.control.poll_timeout(),
            flows,
            self.alarm,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn handle_timeout(&mut self, now: Timestamp) {
        if self.alarm.is_some_and(|t| t <= now) {
            self.alarm = None;
        }
        if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            self.endpoint.handle_timeout(now);
        }
        for flow in self.flows.values_mut() {
            if flow.poll_timeout().is_some_and(|t| t <= now) {
                flow.handle_timeout(now);
            }
        }
        if self.control.poll_timeout().is_some_and(|t| t <= now) {
            self.control.handle_timeout(now, &mut self.endpoint);
        }
        self.pump(now);
        self.drain_loopback(now);
    }
}

/// A stream application: writes `len` pseudo-random bytes (then half-closes if asked) and
/// reads everything the peer sends, hashing both sides so a test can compare them.
#[derive(Debug)]
pub struct StreamApp {
    source: ChaCha8Rng,
    pending: Vec<u8>,
    remaining: u64,
    close_when_sent: bool,
    closed: bool,
    sent_hash: Sha256,
    received_hash: Sha256,
    /// Bytes read so far.
    pub received: u64,
    /// Bytes written so far.
    pub sent: u64,
    /// The peer finished and every byte was read.
    pub eof: bool,
    /// When `eof` happened.
    pub eof_at: Option<Timestamp>,
}

impl StreamApp {
    /// Sends `len` bytes from a generator seeded with `seed`; half-closes after them when
    /// `close_when_sent`.
    pub fn new(seed: u64, len: u64, close_when_sent: bool) -> Self {
        Self {
            source: ChaCha8Rng::seed_from_u64(seed),
            pending: Vec::new(),
            remaining: len,
            close_when_sent,
            closed: false,
            sent_hash: Sha256::new(),
            received_hash: Sha256::new(),
            received: 0,
            sent: 0,
            eof: false,
            eof_at: None,
        }
    }

    /// SHA-256 of the bytes written so far.
    pub fn sent_digest(&self) -> [u8; 32] {
        self.sent_hash.clone().finalize().into()
    }

    /// SHA-256 of the bytes read so far.
    pub fn received_digest(&self) -> [u8; 32] {
        self.received_hash.clone().finalize().into()
    }

    /// Whether everything was written (and the write side closed, if asked).
    pub fn done_sending(&self) -> bool {
        self.remaining == 0 && self.pending.is_empty() && (self.closed || !self.close_when_sent)
    }

    fn pump(&mut self, now: Timestamp, flow: &mut Flow) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match flow.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.received += n as u64;
                    self.received_hash.update(&buf[..n]);
                }
                Err(ReadError::Finished) => {
                    if !self.eof {
                        self.eof = true;
                        self.eof_at = Some(now);
                    }
                    break;
                }
                Err(_) => break,
            }
        }
        while self.remaining > 0 || !self.pending.is_empty() {
            if self.pending.is_empty() {
                let n = self.remaining.min(64 * 1024) as usize;
                self.pending.resize(n, 0);
                self.source.fill_bytes(&mut self.pending);
                self.remaining -= n as u64;
            }
            match flow.write(&self.pending) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    self.sent_hash.update(&self.pending[..n]);
                    self.sent += n as u64;
                    self.pending.drain(..n);
                }
            }
        }
        if self.close_when_sent && !self.closed && flow.is_established() {
            self.closed = true;
            flow.close(now);
        }
    }
}
