//! [`SalNode`]: a host running the real SAL core (an [`Endpoint`] and its flows) on the
//! simulated network, with the driver's job done synchronously.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serval_stack::sal::{
    DatagramEvent, Endpoint, EndpointConfig, Event, Flow, FlowHandle, Transmit,
};
use serval_stack::time::Timestamp;
use serval_stack::transport::ReadError;
use sha2::{Digest, Sha256};

use crate::sim::{Datagram, Node};

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
    addr: SocketAddr,
    out: VecDeque<Datagram>,
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
            addr,
            out: VecDeque::new(),
            buf: Vec::new(),
        }
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
        self.out.push_back(Datagram {
            src: t.src.unwrap_or(self.addr),
            dst: t.destination,
            payload,
        });
    }

    /// Moves everything the endpoint and flows want to send into the outbox and collects
    /// their events.
    fn pump(&mut self, now: Timestamp) {
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
                self.out.push_back(Datagram {
                    src: t.src.unwrap_or(self.addr),
                    dst: t.destination,
                    payload,
                });
            }
        }
    }
}

impl Node for SalNode {
    fn handle(&mut self, now: Timestamp, d: Datagram) {
        match self.endpoint.handle(now, d.src, &d.payload, &mut self.buf) {
            Some(DatagramEvent::Flow(h, input)) => {
                if let Some(flow) = self.flows.get_mut(&h) {
                    flow.handle(now, d.src, input, &d.payload);
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
            Some(DatagramEvent::Unconnected { payload_offset, .. }) => {
                self.unconnected
                    .push((d.src, d.payload[payload_offset..].to_vec()));
            }
            None => {}
        }
        self.pump(now);
    }

    fn poll_transmit(&mut self, now: Timestamp) -> Option<Datagram> {
        self.pump(now);
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        let flows = self.flows.values().filter_map(Flow::poll_timeout).min();
        [self.endpoint.poll_timeout(), flows]
            .into_iter()
            .flatten()
            .min()
    }

    fn handle_timeout(&mut self, now: Timestamp) {
        if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            self.endpoint.handle_timeout(now);
        }
        for flow in self.flows.values_mut() {
            if flow.poll_timeout().is_some_and(|t| t <= now) {
                flow.handle_timeout(now);
            }
        }
        self.pump(now);
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
