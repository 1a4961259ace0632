//! [`SalNode`]: a host running the real SAL core (an [`Endpoint`] and its flows) on the
//! simulated network, with the driver's job done synchronously.
//!
//! A node can take optional roles on top of plain flows:
//!
//! * **router** ([`SalNode::make_router`]): a [`Registry`] fed by unconnected SAL datagrams
//!   sent to the router's control ServiceID, applying leases to the endpoint's service
//!   table and answering each authentic registration to the sender's ServiceID;
//! * **DELAY queue** ([`SalNode::enable_delay_queue`], part of the router role): SYNs the
//!   endpoint reports as [`DatagramEvent::Delayed`] are parked in a [`DelayQueue`] and
//!   re-injected through [`Endpoint::handle`] when released ([`SalNode::release_delayed`]);
//! * **registrant** ([`SalNode::make_registrant`]): a [`Registrant`] announcing the node's
//!   listener prefixes ([`SalNode::listen_registered`]) to routers, its messages sent as
//!   unconnected SAL datagrams from the host control ServiceID.
//!
//! Datagrams a node addresses to itself (a connect to a local listener, a SYN held by a
//! DELAY rule) are looped back inside the node, as a kernel would, never through the
//! simulated network or a NAT.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serval_stack::control::{
    DelayConfig, DelayEvent, DelayQueue, DelayedPacket, LeaseEvent, Registrant, RegistrantConfig,
    RegistrantEvent, Registry, RegistryConfig, RegistryError,
};
use serval_stack::sal::{
    ConnectError, ControlServices, DatagramEvent, Endpoint, EndpointConfig, Event, Flow,
    FlowHandle, ListenError, Transmit,
};
use serval_stack::service_table::ListenerId;
use serval_stack::time::Timestamp;
use serval_stack::transport::ReadError;
use serval_stack::wire::control_msg::{REGISTER_MSG_LEN, Verdict as DelayVerdict};
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
    /// Router role: registrations in, leases into the service table.
    pub router: Option<RouterRole>,
    /// Registrant role: this node's listener prefixes announced to routers.
    pub registrant: Option<RegistrantRole>,
    /// Where SYNs that hit DELAY wait (router role, or any node given one); without it a
    /// delayed SYN is dropped and counted in `delayed_unqueued`.
    pub delay: Option<DelayQueue>,
    /// Every event of the delay queue, in order.
    pub delay_events: Vec<DelayEvent>,
    /// Delayed SYNs dropped because the node has no delay queue.
    pub delayed_unqueued: u64,
    /// Delayed SYNs the queue refused (full, loop guard, too old), in order.
    pub delay_refusals: Vec<serval_stack::control::DelayDropReason>,
    addr: SocketAddr,
    out: VecDeque<Datagram>,
    loopback: VecDeque<Datagram>,
    alarm: Option<Timestamp>,
    buf: Vec<u8>,
}

/// The router role of a [`SalNode`].
#[derive(Debug)]
pub struct RouterRole {
    /// Verifies registrations and keeps the leases.
    pub registry: Registry,
    /// The control ServiceIDs (the router listens on `services.router`).
    pub services: ControlServices,
    /// The DEMUX listener of the control ServiceID.
    pub listener: ListenerId,
    /// Release every SYN waiting for a prefix as soon as a new lease for it is added (a
    /// scale-from-zero controller in one line).
    pub release_on_register: bool,
    /// Every lease event, in order.
    pub lease_events: Vec<LeaseEvent>,
    /// Every refused registration datagram, in order.
    pub refusals: Vec<RegistryError>,
}

/// The registrant role of a [`SalNode`].
#[derive(Debug)]
pub struct RegistrantRole {
    /// Sends REGISTER / refresh / UNREGISTER.
    pub registrant: Registrant,
    /// The control ServiceIDs (the node listens on `services.host` for replies).
    pub services: ControlServices,
    /// The DEMUX listener of the host control ServiceID.
    pub listener: ListenerId,
    /// While `false` nothing is sent and no timer runs (the control daemon died; the
    /// listeners and flows live on).
    pub running: bool,
    /// Every registrant event, in order.
    pub events: Vec<RegistrantEvent>,
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
            router: None,
            registrant: None,
            delay: None,
            delay_events: Vec::new(),
            delayed_unqueued: 0,
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
    ) -> Result<ListenerId, ListenError> {
        let listener = self
            .endpoint
            .listen(ServicePrefix::exact(services.router), Protocol::UDP)?;
        self.router = Some(RouterRole {
            registry: Registry::new(registry),
            services,
            listener,
            release_on_register: false,
            lease_events: Vec::new(),
            refusals: Vec::new(),
        });
        self.enable_delay_queue(delay);
        Ok(listener)
    }

    /// Gives the node a DELAY queue (replacing any previous one and what it held).
    pub fn enable_delay_queue(&mut self, config: DelayConfig) {
        self.delay = Some(DelayQueue::new(config));
    }

    /// Makes this node a registrant of `routers`: it listens (datagrams) on `services.host`
    /// for their replies. Announce prefixes with [`listen_registered`](Self::listen_registered).
    pub fn make_registrant(
        &mut self,
        config: RegistrantConfig,
        services: ControlServices,
        routers: &[SocketAddr],
    ) -> Result<ListenerId, ListenError> {
        let listener = self
            .endpoint
            .listen(ServicePrefix::exact(services.host), Protocol::UDP)?;
        let mut registrant = Registrant::new(config);
        for router in routers {
            registrant
                .add_router(*router)
                .expect("within the configured number of routers");
        }
        self.registrant = Some(RegistrantRole {
            registrant,
            services,
            listener,
            running: true,
            events: Vec::new(),
        });
        Ok(listener)
    }

    /// Listens on `prefix` and, with the registrant role, registers it with every router.
    pub fn listen_registered(
        &mut self,
        prefix: ServicePrefix,
        protocol: Protocol,
    ) -> Result<ListenerId, ListenError> {
        let id = self.endpoint.listen(prefix, protocol)?;
        if let Some(r) = self.registrant.as_mut() {
            r.registrant
                .add_prefix(prefix)
                .expect("within the configured number of prefixes");
        }
        Ok(id)
    }

    /// Withdraws `prefix` from every router (UNREGISTER); the listener stays, so flows in
    /// progress and a direct connect still work. `false` if it was not registered.
    pub fn unregister(&mut self, prefix: &ServicePrefix) -> bool {
        self.registrant
            .as_mut()
            .is_some_and(|r| r.registrant.remove_prefix(prefix))
    }

    /// The registrant stops for good without a word (its daemon crashed): no refresh, no
    /// UNREGISTER; the routers' leases run out.
    pub fn stop_registrant(&mut self) {
        if let Some(r) = self.registrant.as_mut() {
            r.running = false;
        }
    }

    /// Whether the registrant role has `prefix` acknowledged by `router`.
    pub fn is_registered(&self, router: SocketAddr, prefix: &ServicePrefix) -> bool {
        self.registrant
            .as_ref()
            .is_some_and(|r| r.registrant.is_registered(router, prefix))
    }

    /// Releases every SYN waiting for a ServiceID under `prefix`: each is resolved again
    /// at once (and parked again if it still meets DELAY). Returns how many.
    pub fn release_delayed(&mut self, now: Timestamp, prefix: &ServicePrefix) -> usize {
        let n = self.verdict(prefix, DelayVerdict::Release);
        self.process_released(now);
        self.pump(now);
        self.drain_loopback(now);
        n
    }

    /// Drops every SYN waiting for a ServiceID under `prefix` (DROP verdict). Returns how
    /// many.
    pub fn drop_delayed(&mut self, prefix: &ServicePrefix) -> usize {
        self.verdict(prefix, DelayVerdict::Drop)
    }

    fn verdict(&mut self, prefix: &ServicePrefix, verdict: DelayVerdict) -> usize {
        let n = self
            .delay
            .as_mut()
            .map_or(0, |q| q.handle_service_verdict(prefix, verdict));
        self.collect_delay_events();
        n
    }

    /// SYNs parked now.
    pub fn delayed_len(&self) -> usize {
        self.delay.as_ref().map_or(0, DelayQueue::len)
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
            self.park(now, DelayedPacket::new(now, service, d.src, d.payload));
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
                self.control(now, src, listener, source_service, body);
            }
            None => {}
        }
        None
    }

    /// An unconnected datagram: a registration for the router role, a reply for the
    /// registrant role, otherwise kept in `unconnected`.
    fn control(
        &mut self,
        now: Timestamp,
        src: SocketAddr,
        listener: ListenerId,
        source_service: Option<ServiceId>,
        body: &[u8],
    ) {
        if let Some(r) = self.router.as_mut().filter(|r| r.listener == listener) {
            if let Err(e) = r.registry.handle(now, src, body, self.endpoint.table_mut()) {
                r.refusals.push(e);
            }
            let (router_service, host_service) = (r.services.router, r.services.host);
            let mut reply = [0u8; REGISTER_MSG_LEN];
            let mut sends = Vec::new();
            while let Some((to, n)) = r.registry.poll_transmit(&mut reply) {
                sends.push((to, reply[..n].to_vec()));
            }
            for (to, bytes) in sends {
                let dst = source_service.unwrap_or(host_service);
                if let Ok(t) =
                    self.endpoint
                        .send_unconnected(dst, router_service, to, &bytes, &mut self.buf)
                {
                    self.push(t);
                }
            }
            self.collect_lease_events(now);
            return;
        }
        if let Some(r) = self.registrant.as_mut().filter(|r| r.listener == listener) {
            if r.running {
                // Refusals are counted by the registrant.
                let _ = r.registrant.handle(now, src, body);
            }
            return;
        }
        self.unconnected.push((src, body.to_vec()));
    }

    fn park(&mut self, now: Timestamp, packet: DelayedPacket<Vec<u8>>) {
        match self.delay.as_mut() {
            Some(q) => {
                if let Err(refused) = q.handle_delayed(now, packet) {
                    self.delay_refusals.push(refused.reason);
                }
            }
            None => self.delayed_unqueued += 1,
        }
        self.collect_delay_events();
    }

    /// Re-injects every released SYN through the endpoint.
    fn process_released(&mut self, now: Timestamp) {
        while let Some(released) = self.delay.as_mut().and_then(DelayQueue::poll_released) {
            let packet = released.packet;
            let event = self
                .endpoint
                .handle(now, packet.from, &packet.bytes, &mut self.buf);
            if self
                .dispatch(now, packet.from, &packet.bytes, event)
                .is_some()
            {
                // DELAY again: park the released packet itself, so the loop guard counts.
                self.park(now, packet);
            }
        }
    }

    fn collect_delay_events(&mut self) {
        if let Some(q) = self.delay.as_mut() {
            while let Some(e) = q.poll_event() {
                self.delay_events.push(e);
            }
        }
    }

    fn collect_lease_events(&mut self, now: Timestamp) {
        let Some(r) = self.router.as_mut() else {
            return;
        };
        let mut release = Vec::new();
        while let Some(e) = r.registry.poll_event() {
            if let (true, LeaseEvent::Added(info)) = (r.release_on_register, e) {
                release.push(info.prefix);
            }
            r.lease_events.push(e);
        }
        for prefix in release {
            self.verdict(&prefix, DelayVerdict::Release);
            self.process_released(now);
        }
    }

    /// The registrant's messages, as unconnected datagrams to each router's control
    /// ServiceID.
    fn pump_registrant(&mut self, now: Timestamp) {
        let Some(r) = self.registrant.as_mut().filter(|r| r.running) else {
            return;
        };
        let mut msg = [0u8; REGISTER_MSG_LEN];
        let mut sends = Vec::new();
        while let Some((router, n)) = r.registrant.poll_transmit(now, &mut msg) {
            sends.push((router, msg[..n].to_vec()));
        }
        while let Some(e) = r.registrant.poll_event() {
            r.events.push(e);
        }
        let services = r.services;
        for (router, bytes) in sends {
            if let Ok(t) = self.endpoint.send_unconnected(
                services.router,
                services.host,
                router,
                &bytes,
                &mut self.buf,
            ) {
                self.push(t);
            }
        }
    }

    /// Moves everything the endpoint and flows want to send into the outbox and collects
    /// their events.
    fn pump(&mut self, now: Timestamp) {
        self.pump_registrant(now);
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
        let registry = self.router.as_ref().and_then(|r| r.registry.poll_timeout());
        let registrant = self
            .registrant
            .as_ref()
            .filter(|r| r.running)
            .and_then(|r| r.registrant.poll_timeout());
        let delay = self.delay.as_ref().and_then(DelayQueue::poll_timeout);
        [
            self.endpoint.poll_timeout(),
            flows,
            registry,
            registrant,
            delay,
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
        if let Some(r) = self.router.as_mut()
            && r.registry.poll_timeout().is_some_and(|t| t <= now)
        {
            r.registry.handle_timeout(now, self.endpoint.table_mut());
            self.collect_lease_events(now);
        }
        if let Some(r) = self.registrant.as_mut().filter(|r| r.running) {
            r.registrant.handle_timeout(now);
        }
        if let Some(q) = self.delay.as_mut()
            && q.poll_timeout().is_some_and(|t| t <= now)
        {
            q.handle_timeout(now);
            self.collect_delay_events();
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
