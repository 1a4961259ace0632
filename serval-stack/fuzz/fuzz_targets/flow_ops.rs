//! Operation sequences on an established client/server flow pair carrying a stream:
//! writes, reads, closes, aborts, a client move, time passing, and packets dropped,
//! duplicated or reordered in flight. Invariants: nothing panics, and each side only ever
//! reads a prefix of what the other wrote (no byte invented, lost in the middle or
//! reordered).
#![no_main]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serval_stack::sal::{DatagramEvent, Endpoint, EndpointConfig, Flow};
use serval_stack::time::Timestamp;
use serval_stack::wire::sal::Protocol;
use serval_stack::wire::{ServiceId, ServicePrefix};

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Side {
    Client,
    Server,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Write(Side, u16),
    Read(Side, u16),
    Close(Side),
    Abort(Side),
    Advance(u16),
    DropNext(Side),
    DuplicateNext(Side),
    SwapNext(Side),
    ClientMoves(u8),
    Deliver,
}

struct End {
    endpoint: Endpoint,
    flow: Option<Flow>,
    addr: SocketAddr,
    /// Datagrams this end sent, not yet delivered: (from, bytes).
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    written: Vec<u8>,
    read: Vec<u8>,
}

struct Pair {
    now: Timestamp,
    ends: [End; 2],
    buf: Vec<u8>,
}

fn config(seed: u8, addr: SocketAddr) -> EndpointConfig {
    let mut c = EndpointConfig::default();
    c.rng_seed = [seed; 32];
    c.local_addr = addr;
    c
}

impl Pair {
    fn new() -> Option<Self> {
        let now = Timestamp::ZERO;
        let (ca, sa): (SocketAddr, SocketAddr) = ("10.0.0.1:1".parse().ok()?, "10.0.0.2:2".parse().ok()?);
        let service = ServiceId::from_u32(1);
        let mut server = Endpoint::new(config(2, sa), now);
        server.listen(ServicePrefix::exact(service), Protocol::TCP).ok()?;
        let mut client = Endpoint::new(config(1, ca), now);
        let (_, flow) = client.connect_to(now, service, sa, Protocol::TCP).ok()?;
        let end = |endpoint, flow, addr| End { endpoint, flow, addr, outbox: VecDeque::new(), written: Vec::new(), read: Vec::new() };
        let mut p = Self { now, ends: [end(client, Some(flow), ca), end(server, None, sa)], buf: Vec::new() };
        // SYN, SYN-ACK, conn-ACK.
        for _ in 0..4 {
            p.deliver_one(0);
            p.deliver_one(1);
        }
        p.ends[1].flow.as_ref()?;
        Some(p)
    }

    fn pump(&mut self, i: usize) {
        let now = self.now;
        let e = &mut self.ends[i];
        while let Some(t) = e.endpoint.poll_transmit(now, &mut self.buf) {
            e.outbox.push_back((e.addr, self.buf[..t.size].to_vec()));
        }
        if let Some(flow) = e.flow.as_mut() {
            while let Some(t) = flow.poll_transmit(now, &mut self.buf) {
                e.outbox.push_back((t.src.unwrap_or(e.addr), self.buf[..t.size].to_vec()));
            }
            while flow.poll().is_some() {}
            while let Some(ev) = flow.poll_endpoint_event() {
                e.endpoint.handle_event(serval_stack::sal::FlowHandle(flow.local_flow()), ev);
            }
        }
    }

    /// Delivers one datagram from end `i` to the other end.
    fn deliver_one(&mut self, i: usize) {
        self.pump(i);
        let Some((from, bytes)) = self.ends[i].outbox.pop_front() else { return };
        let now = self.now;
        let to = &mut self.ends[1 - i];
        match to.endpoint.handle(now, from, &bytes, &mut self.buf) {
            Some(DatagramEvent::Flow(_, input)) => {
                if let Some(f) = to.flow.as_mut() {
                    f.handle(now, from, input, &bytes);
                }
            }
            Some(DatagramEvent::NewFlow(incoming)) => {
                let (_, f) = to.endpoint.accept(incoming);
                to.flow = Some(f);
            }
            _ => {}
        }
        self.pump(1 - i);
    }

    fn deliver_all(&mut self) {
        for _ in 0..64 {
            self.deliver_one(0);
            self.deliver_one(1);
        }
    }

    fn advance(&mut self, ms: u16) {
        self.now = self.now + Duration::from_millis(u64::from(ms));
        for e in &mut self.ends {
            if e.endpoint.poll_timeout().is_some_and(|t| t <= self.now) {
                e.endpoint.handle_timeout(self.now);
            }
            if let Some(f) = e.flow.as_mut()
                && f.poll_timeout().is_some_and(|t| t <= self.now)
            {
                f.handle_timeout(self.now);
            }
        }
    }

    fn apply(&mut self, op: Op) {
        let now = self.now;
        match op {
            Op::Write(s, n) => {
                let e = &mut self.ends[s as usize];
                let start = e.written.len();
                let data: Vec<u8> = (start..start + usize::from(n)).map(|i| (i * 31 % 251) as u8).collect();
                if let Some(Ok(k)) = e.flow.as_mut().map(|f| f.write(&data)) {
                    e.written.extend_from_slice(&data[..k]);
                }
            }
            Op::Read(s, n) => {
                let e = &mut self.ends[s as usize];
                let mut buf = vec![0; usize::from(n)];
                if let Some(Ok(k)) = e.flow.as_mut().map(|f| f.read(&mut buf)) {
                    e.read.extend_from_slice(&buf[..k]);
                }
            }
            Op::Close(s) => {
                if let Some(f) = self.ends[s as usize].flow.as_mut() {
                    f.close(now);
                }
            }
            Op::Abort(s) => {
                if let Some(f) = self.ends[s as usize].flow.as_mut() {
                    f.abort(now);
                }
            }
            Op::Advance(ms) => self.advance(ms % 5000),
            Op::DropNext(s) => {
                self.pump(s as usize);
                self.ends[s as usize].outbox.pop_front();
            }
            Op::DuplicateNext(s) => {
                self.pump(s as usize);
                let o = &mut self.ends[s as usize].outbox;
                if let Some(d) = o.front().cloned() {
                    o.push_back(d);
                }
            }
            Op::SwapNext(s) => {
                self.pump(s as usize);
                let o = &mut self.ends[s as usize].outbox;
                if o.len() >= 2 {
                    o.swap(0, 1);
                }
            }
            Op::ClientMoves(b) => {
                let new: SocketAddr = SocketAddr::from(([10, 0, 1, b], 1));
                self.ends[0].addr = new;
                if let Some(f) = self.ends[0].flow.as_mut() {
                    f.migrate(new);
                }
            }
            Op::Deliver => self.deliver_all(),
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let Some(mut p) = Pair::new() else { return };
    for op in ops.into_iter().take(256) {
        p.apply(op);
        p.deliver_one(0);
        p.deliver_one(1);
        for i in 0..2 {
            let (reader, writer) = (&p.ends[i], &p.ends[1 - i]);
            assert!(writer.written.starts_with(&reader.read), "side {i} read bytes the peer never wrote in that order");
        }
    }
});
