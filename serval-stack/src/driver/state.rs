//! The endpoint task's state: the core [`Endpoint`](crate::sal::Endpoint), every
//! [`Flow`], the listeners' accept queues and the wakers of the async handles. Everything
//! here is synchronous; [`task`](super::task) does the awaiting and the socket calls.

use core::net::SocketAddr;
use core::task::Waker;
use core::time::Duration;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::DriverStats;
use super::runtime::Clock;
use super::socket::Outbox;
use super::task::Timers;
use crate::control::{ControlPlane, DelayedPacket};
use crate::sal::{
    CloseReason, DatagramEvent, Endpoint, EndpointEvent, Event, Flow, FlowHandle, Transmit,
};
use crate::service_table::ListenerId;
use crate::time::Timestamp;
use crate::wire::ServiceId;

/// Most datagrams one flow sends per pump before the others get a turn (fairness, and a
/// bound on how long the lock is held).
const FLOW_BURST: usize = 256;
/// Most unconnected datagrams waiting in one datagram listener; more are dropped and
/// counted (a UDP socket's receive buffer, in datagrams).
const DATAGRAM_QUEUE: usize = 1024;
/// Most datagrams looped back to the endpoint itself in one pump (a guard against a local
/// forwarding loop).
const LOOPBACK_BUDGET: usize = 1024;
/// How long the task keeps running after the last public handle is gone, so closing flows
/// can send and retransmit their FINs.
pub(super) const ORPHAN_LINGER: Duration = Duration::from_secs(5);

/// What the task and every handle share.
#[derive(Debug)]
pub(super) struct Shared {
    state: Mutex<State>,
    /// Wakes the task: a handle changed a flow (data to send, window to open) or a handle
    /// went away.
    pub(super) notify: Notify,
}

impl Shared {
    pub(super) fn new(state: State) -> Self {
        Self {
            state: Mutex::new(state),
            notify: Notify::new(),
        }
    }

    /// The state. A panic while it was held cannot leave it half-updated in a way that
    /// matters more than stopping would, so poisoning is ignored.
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One flow and the handle side of it.
#[derive(Debug)]
pub(super) struct Slot {
    /// Boxed: a `Flow` is ~1.8 KiB, and the flow map keeps up to twice its entries in
    /// spare capacity, which would cost ~2-3 KiB per flow held inline; boxed, a spare
    /// entry is ~80 bytes.
    pub(super) flow: Box<Flow>,
    /// A datagram flow: its writer waits for room in the datagram queue, which the pump
    /// makes by sending.
    datagram: bool,
    /// The reader waiting for data or the end of the stream.
    pub(super) read: Option<Waker>,
    /// The writer waiting for buffer space, or `connect` waiting for the handshake.
    pub(super) write: Option<Waker>,
    /// The handshake completed.
    pub(super) connected: bool,
    /// The flow ended, and why.
    pub(super) closed: Option<CloseReason>,
    /// The core forgot the flow ([`EndpointEvent::Drained`]).
    drained: bool,
    /// No stream handle owns it any more: received data is discarded, and the slot goes
    /// once the flow has drained.
    pub(super) detached: bool,
}

impl Slot {
    fn new(flow: Flow, connected: bool) -> Self {
        Self {
            datagram: flow.is_datagram(),
            flow: Box::new(flow),
            read: None,
            write: None,
            connected,
            closed: None,
            drained: false,
            detached: false,
        }
    }

    fn wake_all(&mut self) {
        if let Some(w) = self.read.take() {
            w.wake();
        }
        if let Some(w) = self.write.take() {
            w.wake();
        }
    }
}

/// A listener's accept queue.
#[derive(Debug)]
pub(super) struct Backlog {
    /// Most flows waiting to be accepted; more are refused.
    pub(super) limit: usize,
    /// The prefix listened on (withdrawn from the routers when the listener goes).
    pub(super) prefix: Option<crate::wire::ServicePrefix>,
    pub(super) queue: VecDeque<FlowHandle>,
    pub(super) waker: Option<Waker>,
    /// Unconnected datagrams received (datagram listeners), oldest first.
    pub(super) datagrams: VecDeque<Unconnected>,
    /// The task waiting in `recv_from`.
    pub(super) recv_waker: Option<Waker>,
}

/// An unconnected datagram waiting for `recv_from`.
#[derive(Debug)]
pub(super) struct Unconnected {
    pub(super) from: SocketAddr,
    pub(super) source_service: Option<ServiceId>,
    pub(super) payload: Vec<u8>,
}

impl Backlog {
    pub(super) fn new(limit: usize, prefix: Option<crate::wire::ServicePrefix>) -> Self {
        Self {
            limit,
            prefix,
            queue: VecDeque::new(),
            waker: None,
            datagrams: VecDeque::new(),
            recv_waker: None,
        }
    }
}

/// Everything the endpoint task owns.
#[derive(Debug)]
pub(super) struct State {
    pub(super) endpoint: Endpoint,
    /// The control roles (router, registrant, DELAY queue), off until enabled.
    pub(super) control: ControlPlane,
    pub(super) clock: Clock,
    pub(super) flows: HashMap<FlowHandle, Slot>,
    pub(super) listeners: HashMap<ListenerId, Backlog>,
    /// Flows the application or the network touched since their last pump.
    pub(super) dirty: Vec<FlowHandle>,
    /// Datagrams for the socket.
    pub(super) out: Outbox,
    /// Datagrams the endpoint addressed to itself, handled without a syscall.
    loopback: VecDeque<Vec<u8>>,
    scratch: Vec<u8>,
    sink: Vec<u8>,
    pub(super) stats: DriverStats,
    /// When the last public handle went away.
    pub(super) orphaned: Option<Timestamp>,
    /// The socket failed and the task stopped: every handle call fails with this.
    pub(super) failed: Option<std::io::ErrorKind>,
    /// A socket the application rebound the endpoint to ([`Endpoint::rebind`](super::Endpoint::rebind)):
    /// the task takes it on its next turn and drops the old one.
    pub(super) new_socket: Option<std::net::UdpSocket>,
}

impl State {
    pub(super) fn new(endpoint: Endpoint, clock: Clock) -> Self {
        Self {
            endpoint,
            control: ControlPlane::new(),
            clock,
            flows: HashMap::new(),
            listeners: HashMap::new(),
            dirty: Vec::new(),
            out: Outbox::default(),
            loopback: VecDeque::new(),
            scratch: Vec::new(),
            sink: vec![0; 16 * 1024],
            stats: DriverStats::default(),
            orphaned: None,
            failed: None,
            new_socket: None,
        }
    }

    /// Queues a datagram the core wrote into `scratch`, to the socket or back to us.
    fn emit(
        out: &mut Outbox,
        loopback: &mut VecDeque<Vec<u8>>,
        own: SocketAddr,
        t: Transmit,
        scratch: &[u8],
    ) {
        let data = scratch.get(..t.size).unwrap_or_default();
        if t.destination == own {
            loopback.push_back(data.to_vec());
        } else {
            out.push(t.src, t.destination, data);
        }
    }

    /// One received datagram through the endpoint, and what it asks for.
    pub(super) fn handle_datagram(&mut self, now: Timestamp, from: SocketAddr, data: &[u8]) {
        let event = self.endpoint.handle(now, from, data, &mut self.scratch);
        if let Some(service) = self.dispatch(now, from, data, event) {
            self.control
                .park(now, DelayedPacket::new(now, service, from, data.to_vec()));
        }
    }

    /// Acts on the endpoint's verdict on `data` from `from`; returns the ServiceID of a SYN
    /// that met DELAY, for the caller to park.
    fn dispatch(
        &mut self,
        now: Timestamp,
        from: SocketAddr,
        data: &[u8],
        event: Option<DatagramEvent>,
    ) -> Option<ServiceId> {
        let own = self.endpoint.local_addr();
        match event {
            Some(DatagramEvent::Flow(h, input)) => {
                if let Some(slot) = self.flows.get_mut(&h) {
                    slot.flow.handle(now, from, input, data);
                    self.dirty.push(h);
                }
            }
            Some(DatagramEvent::NewFlow(incoming)) => {
                let room = self
                    .listeners
                    .get(&incoming.listener())
                    .is_some_and(|b| b.queue.len() < b.limit);
                if room {
                    let listener = incoming.listener();
                    let (h, flow) = self.endpoint.accept(incoming);
                    self.flows.insert(h, Slot::new(flow, true));
                    self.dirty.push(h);
                    if let Some(b) = self.listeners.get_mut(&listener) {
                        b.queue.push_back(h);
                        if let Some(w) = b.waker.take() {
                            w.wake();
                        }
                    }
                } else {
                    self.stats.refused_backlog += 1;
                    if let Some(t) = self.endpoint.refuse(now, incoming, &mut self.scratch) {
                        Self::emit(&mut self.out, &mut self.loopback, own, t, &self.scratch);
                    }
                }
            }
            Some(DatagramEvent::Forward(t) | DatagramEvent::Response(t)) => {
                Self::emit(&mut self.out, &mut self.loopback, own, t, &self.scratch);
            }
            Some(DatagramEvent::Delayed { service }) => return Some(service),
            Some(DatagramEvent::Unconnected {
                listener,
                source_service,
                payload_offset,
            }) => {
                let body = data.get(payload_offset..).unwrap_or_default();
                let ours = self.control.handle_unconnected(
                    now,
                    &mut self.endpoint,
                    from,
                    listener,
                    source_service,
                    body,
                );
                if !ours {
                    self.deliver_unconnected(listener, from, source_service, body);
                }
            }
            None => {}
        }
        None
    }

    /// Queues an unconnected datagram for the application's datagram listener, or drops it
    /// (counted) when the listener is gone or its queue is full.
    fn deliver_unconnected(
        &mut self,
        listener: ListenerId,
        from: SocketAddr,
        source_service: Option<ServiceId>,
        body: &[u8],
    ) {
        match self.listeners.get_mut(&listener) {
            Some(b) if b.datagrams.len() < DATAGRAM_QUEUE => {
                b.datagrams.push_back(Unconnected {
                    from,
                    source_service,
                    payload: body.to_vec(),
                });
                if let Some(w) = b.recv_waker.take() {
                    w.wake();
                }
            }
            _ => self.stats.unconnected_dropped += 1,
        }
    }

    /// Writes an unconnected datagram from `src` to `dst` at `to` into the outbox.
    pub(super) fn send_unconnected(
        &mut self,
        dst: ServiceId,
        src: ServiceId,
        to: SocketAddr,
        payload: &[u8],
    ) -> Result<(), crate::sal::SendError> {
        let own = self.endpoint.local_addr();
        let t = self
            .endpoint
            .send_unconnected(dst, src, to, payload, &mut self.scratch)?;
        Self::emit(&mut self.out, &mut self.loopback, own, t, &self.scratch);
        Ok(())
    }

    /// The control plane's datagrams into the outbox, and the SYNs it released through
    /// the endpoint again.
    fn pump_control(&mut self, now: Timestamp) {
        let own = self.endpoint.local_addr();
        while let Some(t) = self
            .control
            .poll_transmit(now, &mut self.endpoint, &mut self.scratch)
        {
            Self::emit(&mut self.out, &mut self.loopback, own, t, &self.scratch);
        }
        while let Some(packet) = self.control.poll_released() {
            let event = self
                .endpoint
                .handle(now, packet.from, &packet.bytes, &mut self.scratch);
            if self
                .dispatch(now, packet.from, &packet.bytes, event)
                .is_some()
            {
                // DELAY again: park the released packet itself, so the loop guard counts.
                self.control.park(now, packet);
            }
        }
    }

    /// Runs the endpoint's and every due flow's timers. Due flows come from the task's
    /// timer heap, not a scan of every flow; each is marked dirty, so the pump that follows
    /// re-arms it.
    pub(super) fn handle_timeouts(&mut self, now: Timestamp, timers: &mut Timers) {
        if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            self.endpoint.handle_timeout(now);
        }
        if self.control.poll_timeout().is_some_and(|t| t <= now) {
            self.control.handle_timeout(now, &mut self.endpoint);
        }
        while let Some(h) = timers.pop_due(now) {
            if let Some(slot) = self.flows.get_mut(&h) {
                if slot.flow.poll_timeout().is_some_and(|t| t <= now) {
                    slot.flow.handle_timeout(now);
                }
                self.dirty.push(h);
            }
        }
    }

    /// The earliest deadline of the endpoint, a flow (from the timer heap), or the orphan
    /// linger.
    pub(super) fn next_deadline(&self, timers: &mut Timers) -> Option<Timestamp> {
        let flows = timers.next();
        let linger = self.orphaned.map(|t| t + ORPHAN_LINGER);
        [
            self.endpoint.poll_timeout(),
            self.control.poll_timeout(),
            flows,
            linger,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether the task should stop: every handle is gone and the flows have drained (or
    /// the linger ran out).
    pub(super) fn finished(&self, now: Timestamp) -> bool {
        self.orphaned
            .is_some_and(|t| self.flows.is_empty() || now >= t + ORPHAN_LINGER)
    }

    /// Moves everything the endpoint and the touched flows want to send into the outbox,
    /// collects the wakers of the handles their events concern into `wake` (the task wakes
    /// them once the lock is released, so a woken reader on the other core does not block
    /// on the lock the task still holds), and handles looped-back datagrams.
    pub(super) fn pump(&mut self, now: Timestamp, timers: &mut Timers, wake: &mut Vec<Waker>) {
        let own = self.endpoint.local_addr();
        let mut budget = LOOPBACK_BUDGET;
        loop {
            self.pump_control(now);
            while let Some(t) = self.endpoint.poll_transmit(now, &mut self.scratch) {
                Self::emit(&mut self.out, &mut self.loopback, own, t, &self.scratch);
            }
            let mut dirty = core::mem::take(&mut self.dirty);
            dirty.sort_unstable();
            dirty.dedup();
            for h in dirty {
                self.pump_flow(now, h, own, timers, wake);
            }
            if self.loopback.is_empty() {
                break;
            }
            while let Some(d) = self.loopback.pop_front() {
                if budget == 0 {
                    self.stats.loopback_dropped += 1 + self.loopback.len() as u64;
                    self.loopback.clear();
                    return;
                }
                budget -= 1;
                self.stats.loopback += 1;
                self.handle_datagram(now, own, &d);
            }
        }
    }

    /// Sends, delivers the events of and re-arms the timer of one flow (the one place a
    /// flow's deadline is recorded: see [`Timers`]).
    fn pump_flow(
        &mut self,
        now: Timestamp,
        h: FlowHandle,
        own: SocketAddr,
        timers: &mut Timers,
        wake: &mut Vec<Waker>,
    ) {
        let Some(slot) = self.flows.get_mut(&h) else {
            timers.arm(h, None);
            return;
        };
        if slot.detached {
            // Nobody will read: consume it so the window stays open and the peer can finish.
            while let Ok(n) = slot.flow.read(&mut self.sink) {
                if n == 0 {
                    break;
                }
            }
            while slot.flow.recv_datagram().is_some() {}
        }
        let mut sent = 0;
        while sent < FLOW_BURST {
            match slot.flow.poll_transmit(now, &mut self.scratch) {
                Some(t) => Self::emit(&mut self.out, &mut self.loopback, own, t, &self.scratch),
                None => break,
            }
            sent += 1;
        }
        if sent == FLOW_BURST {
            // More may be ready: the task comes back before sleeping.
            self.dirty.push(h);
        }
        if sent > 0 && slot.datagram {
            // The datagram queue has room again.
            wake.extend(slot.write.take());
        }
        while let Some(e) = slot.flow.poll() {
            match e {
                Event::Connected => {
                    slot.connected = true;
                    wake.extend(slot.write.take());
                }
                Event::Readable | Event::PeerFinished => wake.extend(slot.read.take()),
                Event::Writable => wake.extend(slot.write.take()),
                Event::Closed(reason) => {
                    slot.closed = Some(reason);
                    wake.extend(slot.read.take());
                    wake.extend(slot.write.take());
                }
                _ => {}
            }
        }
        while let Some(e) = slot.flow.poll_endpoint_event() {
            slot.drained |= e == EndpointEvent::Drained;
            self.endpoint.handle_event(h, e);
        }
        if slot.drained && slot.closed.is_none() {
            slot.closed = Some(CloseReason::Finished);
            wake.extend(slot.read.take());
            wake.extend(slot.write.take());
        }
        if slot.drained && slot.detached {
            self.flows.remove(&h);
            timers.arm(h, None);
        } else {
            timers.arm(h, slot.flow.poll_timeout());
        }
    }

    /// A handle gave up `h`: finish our side cleanly, discard what still arrives, and
    /// forget the flow once it drained.
    pub(super) fn detach(&mut self, h: FlowHandle) {
        let now = self.clock.now();
        if let Some(slot) = self.flows.get_mut(&h) {
            slot.detached = true;
            slot.read = None;
            slot.write = None;
            slot.flow.close(now);
            // The next pump sends what the close owes and forgets a drained flow.
            self.dirty.push(h);
        }
    }

    /// The task stopped: every waiting handle learns it.
    pub(super) fn fail(&mut self, kind: std::io::ErrorKind) {
        self.failed = Some(kind);
        for slot in self.flows.values_mut() {
            slot.wake_all();
        }
        for b in self.listeners.values_mut() {
            if let Some(w) = b.waker.take() {
                w.wake();
            }
        }
    }
}

impl State {
    /// The endpoint is reached at `local` now: new flows use it, established ones announce
    /// it to their peers, registrations are renewed from it.
    pub(super) fn move_to(&mut self, local: SocketAddr) {
        let old = self.endpoint.local_addr();
        self.endpoint.set_local_addr(local);
        for (h, slot) in &mut self.flows {
            slot.flow.migrate(local);
            self.dirty.push(*h);
        }
        self.control.host_moved(old, local);
        self.stats.migrations += 1;
    }

    /// Adds a flow the application opened; the next pump sends its SYN.
    pub(super) fn add_flow(&mut self, h: FlowHandle, flow: Flow) {
        self.flows.insert(h, Slot::new(flow, false));
        self.dirty.push(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one flow costs the driver, in place (the transport's stream is boxed): these
    /// sizes times the flows (and the map's spare capacity) are most of an idle flow's
    /// memory, so a change that grows them should be deliberate.
    #[test]
    fn per_flow_structures_stay_small() {
        let slot = size_of::<Slot>();
        let stream = size_of::<crate::transport::Stream>();
        println!(
            "Slot {slot} B, Flow {} B, Stream {stream} B",
            size_of::<Flow>()
        );
        assert!(slot <= 128, "Slot is {slot} bytes");
        assert!(stream <= 2048, "Stream is {stream} bytes");
    }
}
