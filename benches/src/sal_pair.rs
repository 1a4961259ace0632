//! Two SAL endpoints wired back to back in memory, for the `sal` benchmark: no sockets, no
//! syscalls, no copies beyond what the stack itself does.
//!
//! The driver's job is done synchronously, in batches (as a `recvmmsg`/`sendmmsg` driver
//! would): each round drains up to a batch of datagrams ([`BATCH`] by default) from one flow
//! and hands them to the other endpoint and its flow, then the other way. Datagram buffers
//! are reused, so the harness allocates nothing per packet. Time is an input: the caller passes a clock
//! (the benchmark maps the OS monotonic clock onto [`Timestamp`], like the driver will).

use std::net::SocketAddr;

use serval_stack::sal::{DatagramEvent, Endpoint, EndpointConfig, EndpointEvent, Flow, FlowHandle};
use serval_stack::time::Timestamp;
use serval_stack::transport::{ReadError, StreamStats};
use serval_stack::wire::sal::Protocol;
use serval_stack::wire::{ServiceId, ServicePrefix};

/// Datagrams moved per direction per round by default (a `sendmmsg`/`recvmmsg` batch).
pub const BATCH: usize = 64;

/// The client's address.
pub const CLIENT: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
    54325,
);
/// The server's address.
pub const SERVER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 10)),
    54325,
);

/// The service the server listens on.
pub fn service() -> ServiceId {
    ServiceId::from_u32(80)
}

/// A default endpoint configuration (MTU 1500: `max_udp_payload` 1452) at `addr`.
pub fn config(seed: u8, addr: SocketAddr) -> EndpointConfig {
    let mut c = EndpointConfig::default();
    c.rng_seed = [seed; 32];
    c.local_addr = addr;
    c
}

/// A client endpoint and a server endpoint listening on [`service`] for streams.
pub fn endpoints(now: Timestamp) -> (Endpoint, Endpoint) {
    let client = Endpoint::new(config(1, CLIENT), now);
    let mut server = Endpoint::new(config(2, SERVER), now);
    server
        .listen(ServicePrefix::exact(service()), Protocol::TCP)
        .expect("a fresh endpoint accepts its first listener");
    (client, server)
}

/// One established flow, seen from both ends.
#[derive(Debug)]
pub struct Connected {
    /// The client's handle.
    pub client_handle: FlowHandle,
    /// The client's flow.
    pub client: Flow,
    /// The server's handle.
    pub server_handle: FlowHandle,
    /// The server's flow.
    pub server: Flow,
}

/// Reusable buffers for [`handshake`].
#[derive(Debug, Default)]
pub struct Scratch {
    a: Vec<u8>,
    b: Vec<u8>,
}

/// Runs one handshake in memory: connect, SYN, SYN-ACK, conn-ACK, accept; then, if
/// `first_byte`, the client writes one byte and the server reads it.
///
/// # Panics
/// If the handshake does not complete exactly so (a bug the benchmark must not hide).
pub fn handshake(
    now: Timestamp,
    client: &mut Endpoint,
    server: &mut Endpoint,
    s: &mut Scratch,
    first_byte: bool,
) -> Connected {
    let (client_handle, mut cflow) = client
        .connect_to(now, service(), SERVER, Protocol::TCP)
        .expect("connect");
    // SYN
    let t = cflow.poll_transmit(now, &mut s.a).expect("SYN");
    let none = server.handle(now, CLIENT, &s.a[..t.size], &mut s.b);
    assert!(none.is_none(), "a SYN opens a half-open flow");
    // SYN-ACK
    let t = server.poll_transmit(now, &mut s.a).expect("SYN-ACK");
    let Some(DatagramEvent::Flow(_, input)) = client.handle(now, SERVER, &s.a[..t.size], &mut s.b)
    else {
        panic!("the SYN-ACK goes to the client flow")
    };
    cflow.handle(now, SERVER, input, &s.a[..t.size]);
    // conn-ACK
    let t = cflow.poll_transmit(now, &mut s.a).expect("conn-ACK");
    let Some(DatagramEvent::NewFlow(incoming)) =
        server.handle(now, CLIENT, &s.a[..t.size], &mut s.b)
    else {
        panic!("the conn-ACK completes the handshake")
    };
    let (server_handle, mut sflow) = server.accept(incoming);
    while let Some(e) = cflow.poll_endpoint_event() {
        client.handle_event(client_handle, e);
    }
    assert!(cflow.is_established() && sflow.is_established());
    if first_byte {
        assert_eq!(cflow.write(b"x"), Ok(1));
        let t = cflow
            .poll_transmit(now, &mut s.a)
            .expect("first data packet");
        let Some(DatagramEvent::Flow(_, input)) =
            server.handle(now, CLIENT, &s.a[..t.size], &mut s.b)
        else {
            panic!("data goes to the server flow")
        };
        sflow.handle(now, CLIENT, input, &s.a[..t.size]);
        let mut byte = [0u8; 1];
        assert_eq!(sflow.read(&mut byte), Ok(1));
    }
    Connected {
        client_handle,
        client: cflow,
        server_handle,
        server: sflow,
    }
}

/// Ends a flow from [`handshake`] on both endpoints (aborted; the RSTs are not delivered).
pub fn teardown(now: Timestamp, c: Connected, client: &mut Endpoint, server: &mut Endpoint) {
    for (mut flow, handle, endpoint) in [
        (c.client, c.client_handle, client),
        (c.server, c.server_handle, server),
    ] {
        flow.abort(now);
        while let Some(e) = flow.poll_endpoint_event() {
            endpoint.handle_event(handle, e);
        }
    }
}

/// A client streaming bytes to a server over one established flow.
#[derive(Debug)]
pub struct StreamPair {
    /// The client endpoint (the sender).
    pub client: Endpoint,
    /// The server endpoint (the receiver).
    pub server: Endpoint,
    /// The flow, both ends.
    pub flow: Connected,
    batch: Vec<Vec<u8>>,
    scratch: Vec<u8>,
    source: Vec<u8>,
    sink: Vec<u8>,
    /// Payload bytes the server application has read so far.
    pub received: u64,
    /// Rounds in which nothing moved in either direction (pacing or a timer held the
    /// sender; the clock had to advance).
    pub idle_rounds: u64,
    /// Rounds run.
    pub rounds: u64,
    /// Datagrams carried client → server and server → client.
    pub datagrams: (u64, u64),
}

impl StreamPair {
    /// Two endpoints with one established stream flow between them; each round moves up
    /// to `batch` datagrams per direction (1: every datagram is handed over, and the peer
    /// polled, on its own).
    pub fn new(now: Timestamp, batch: usize) -> Self {
        let (mut client, mut server) = endpoints(now);
        let flow = handshake(
            now,
            &mut client,
            &mut server,
            &mut Scratch::default(),
            false,
        );
        Self {
            client,
            server,
            flow,
            batch: vec![Vec::with_capacity(2048); batch.max(1)],
            scratch: Vec::with_capacity(2048),
            // A pattern whose period does not divide the segment size.
            source: (0..64 * 1024u32).map(|i| (i % 251) as u8).collect(),
            sink: vec![0; 64 * 1024],
            received: 0,
            idle_rounds: 0,
            rounds: 0,
            datagrams: (0, 0),
        }
    }

    /// Moves `bytes` of payload from the client application to the server application,
    /// reading as it goes; `clock` is read once per round.
    ///
    /// # Panics
    /// If the flow breaks, or nothing is delivered for `stall_limit` consecutive rounds.
    pub fn transfer(&mut self, bytes: u64, mut clock: impl FnMut() -> Timestamp) {
        let target = self.received + bytes;
        let mut to_write = bytes;
        let mut stalled = 0u64;
        while self.received < target {
            let now = clock();
            self.rounds += 1;
            let f = &mut self.flow;
            // The sending application keeps the send buffer full.
            while to_write > 0 {
                let chunk = to_write.min(self.source.len() as u64) as usize;
                match f.client.write(&self.source[..chunk]) {
                    Ok(0) => break,
                    Ok(n) => to_write -= n as u64,
                    Err(e) => panic!("write failed: {e}"),
                }
            }
            for flow in [&mut f.client, &mut f.server] {
                if flow.poll_timeout().is_some_and(|t| t <= now) {
                    flow.handle_timeout(now);
                }
            }
            let up = pump(
                now,
                &mut f.client,
                CLIENT,
                &mut self.server,
                &mut f.server,
                &mut self.batch,
                &mut self.scratch,
            );
            // The receiving application reads everything there is.
            loop {
                match f.server.read(&mut self.sink) {
                    Ok(0) => break,
                    Ok(n) => self.received += n as u64,
                    Err(ReadError::Finished | ReadError::Closed) => panic!("stream ended"),
                    Err(_) => panic!("read failed"),
                }
            }
            let down = pump(
                now,
                &mut f.server,
                SERVER,
                &mut self.client,
                &mut f.client,
                &mut self.batch,
                &mut self.scratch,
            );
            self.datagrams.0 += up as u64;
            self.datagrams.1 += down as u64;
            for (flow, handle, endpoint) in [
                (&mut f.client, f.client_handle, &mut self.client),
                (&mut f.server, f.server_handle, &mut self.server),
            ] {
                while flow.poll().is_some() {}
                while let Some(e) = flow.poll_endpoint_event() {
                    assert_ne!(e, EndpointEvent::Drained, "the flow ended");
                    endpoint.handle_event(handle, e);
                }
            }
            if up + down == 0 {
                self.idle_rounds += 1;
                stalled += 1;
                assert!(stalled < 10_000_000, "transfer stalled");
            } else {
                stalled = 0;
            }
        }
    }

    /// The sender's stream counters.
    pub fn sender_stats(&self) -> Option<StreamStats> {
        self.flow.client.stream_stats()
    }

    /// The receiver's stream counters.
    pub fn receiver_stats(&self) -> Option<StreamStats> {
        self.flow.server.stream_stats()
    }
}

/// Drains up to `batch.len()` datagrams from `from` (at `from_addr`) and hands each to the
/// peer endpoint and its flow; returns how many moved.
fn pump(
    now: Timestamp,
    from: &mut Flow,
    from_addr: SocketAddr,
    endpoint: &mut Endpoint,
    to: &mut Flow,
    batch: &mut [Vec<u8>],
    scratch: &mut Vec<u8>,
) -> usize {
    let mut n = 0;
    for buf in batch.iter_mut() {
        match from.poll_transmit(now, buf) {
            Some(t) => buf.truncate(t.size),
            None => break,
        }
        n += 1;
    }
    for datagram in &batch[..n] {
        match endpoint.handle(now, from_addr, datagram, scratch) {
            Some(DatagramEvent::Flow(_, input)) => to.handle(now, from_addr, input, datagram),
            other => panic!("a datagram of the flow was classified as {other:?}"),
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use serval_stack::wire::sal::{Packet, SalRepr};

    /// A clock that moves 1 µs per reading.
    fn ticking() -> impl FnMut() -> Timestamp {
        let mut t = 0;
        move || {
            t += 1;
            Timestamp::from_micros(t)
        }
    }

    #[test]
    fn transfers_in_both_batch_modes() {
        for batch in [BATCH, 1] {
            let mut p = StreamPair::new(Timestamp::ZERO, batch);
            let mut clock = ticking();
            p.transfer(3 << 20, &mut clock);
            assert!(p.received >= 3 << 20);
            let tx = p.sender_stats().expect("a stream flow");
            assert_eq!(tx.retransmits, 0, "nothing is lost in memory");
        }
    }

    #[test]
    fn data_packets_are_the_bare_base_header_and_bad_ones_are_dropped() {
        let mut p = StreamPair::new(Timestamp::ZERO, 1);
        let mut clock = ticking();
        p.transfer(10_000, &mut clock);
        let now = clock();
        let f = &mut p.flow;
        assert_eq!(f.client.write(&[7; 100]), Ok(100));
        let mut buf = Vec::new();
        let t = f
            .client
            .poll_transmit(now, &mut buf)
            .expect("a data packet");
        let datagram = buf[..t.size].to_vec();
        // Exactly what `SalRepr` writes for a connected data header.
        let parsed = SalRepr::parse_datagram(&datagram).expect("valid");
        let header = SalRepr::new(
            Some(f.client_handle.0),
            Some(f.server_handle.0),
            Protocol::TCP,
        );
        assert_eq!(parsed.repr, header);
        let mut expected = vec![0u8; header.buffer_len()];
        header.emit(&mut Packet::new_unchecked(&mut expected[..]));
        assert_eq!(datagram[..expected.len()], expected[..]);

        let before = f.server.stats();
        let deliver = |server: &mut Endpoint, flow: &mut Flow, bytes: &[u8]| {
            let mut scratch = Vec::new();
            if let Some(DatagramEvent::Flow(_, input)) =
                server.handle(now, CLIENT, bytes, &mut scratch)
            {
                flow.handle(now, CLIENT, input, bytes);
            }
        };
        // A bad checksum: malformed.
        let mut bad = datagram.clone();
        bad[10] ^= 1;
        deliver(&mut p.server, &mut f.server, &bad);
        // Another source FlowID (checksum fixed): unexpected data.
        let mut foreign = datagram.clone();
        foreign[0] ^= 1;
        Packet::new_unchecked(&mut foreign[..]).fill_checksum();
        deliver(&mut p.server, &mut f.server, &foreign);
        let after = f.server.stats();
        assert_eq!(after.drops.malformed, before.drops.malformed + 1);
        assert_eq!(
            after.drops.unexpected_data,
            before.drops.unexpected_data + 1
        );
        assert_eq!(after.data_packets_received, before.data_packets_received);
        // The genuine packet still goes through.
        deliver(&mut p.server, &mut f.server, &datagram);
        let mut sink = [0u8; 200];
        assert_eq!(f.server.read(&mut sink), Ok(100));
        assert_eq!(sink[..100], [7; 100]);
    }
}
