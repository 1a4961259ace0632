//! `Endpoint::handle` and `Flow::handle` on hostile bytes: never panic, and never let an
//! unauthenticated packet end or move an established flow.
//!
//! The target first builds an established client/server pair (deterministic seeds), then
//! feeds the input three ways: as a raw datagram, and XORed onto a captured control packet
//! and a captured data packet of the real flow (so the fuzzer reaches the flow's checks
//! with valid FlowIDs, lengths and checksums).
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use serval_stack::sal::{DatagramEvent, Endpoint, EndpointConfig, Flow};
use serval_stack::time::Timestamp;
use serval_stack::wire::sal::{Packet, Protocol};
use serval_stack::wire::{ServiceId, ServicePrefix};

const CLIENT: &str = "10.0.0.1:54325";
const SERVER: &str = "192.0.2.10:54325";

struct Pair {
    server: Endpoint,
    server_flow: Flow,
    control: Vec<u8>,
    data: Vec<u8>,
}

fn config(seed: u8, addr: &str) -> EndpointConfig {
    let mut c = EndpointConfig::default();
    c.rng_seed = [seed; 32];
    c.local_addr = addr.parse().unwrap();
    c.forwarding = true;
    c
}

/// Runs the handshake in memory and captures the client's conn-ACK and one data packet.
fn pair() -> Pair {
    let now = Timestamp::ZERO;
    let (client_addr, server_addr): (SocketAddr, SocketAddr) = (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
    let service = ServiceId::from_u32(16385);
    let mut server = Endpoint::new(config(2, SERVER), now);
    server.listen(ServicePrefix::exact(service), Protocol::UDP).unwrap();
    let mut client = Endpoint::new(config(1, CLIENT), now);
    let (_, mut cflow) = client.connect_to(now, service, server_addr, Protocol::UDP).unwrap();
    let mut buf = Vec::new();
    let t = cflow.poll_transmit(now, &mut buf).unwrap();
    let syn = buf[..t.size].to_vec();
    assert!(server.handle(now, client_addr, &syn, &mut buf).is_none());
    let t = server.poll_transmit(now, &mut buf).unwrap();
    let syn_ack = buf[..t.size].to_vec();
    let Some(DatagramEvent::Flow(_, input)) = client.handle(now, server_addr, &syn_ack, &mut buf) else { panic!("SYN-ACK routed to the flow") };
    cflow.handle(now, server_addr, input, &syn_ack);
    let t = cflow.poll_transmit(now, &mut buf).unwrap();
    let control = buf[..t.size].to_vec();
    let Some(DatagramEvent::NewFlow(incoming)) = server.handle(now, client_addr, &control, &mut buf) else { panic!("conn-ACK completes the handshake") };
    let (_, server_flow) = server.accept(incoming);
    assert!(cflow.send_datagram(b"hello"));
    let t = cflow.poll_transmit(now, &mut buf).unwrap();
    let data = buf[..t.size].to_vec();
    Pair { server, server_flow, control, data }
}

fn feed(p: &mut Pair, bytes: &[u8]) {
    let now = Timestamp::from_millis(1);
    let from: SocketAddr = "203.0.113.9:4444".parse().unwrap();
    let mut buf = Vec::new();
    if let Some(DatagramEvent::Flow(_, input)) = p.server.handle(now, from, bytes, &mut buf) {
        p.server_flow.handle(now, from, input, bytes);
    }
    while p.server.poll_transmit(now, &mut buf).is_some() {}
    while p.server_flow.poll_transmit(now, &mut buf).is_some() {}
}

fn xor_onto(base: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for (i, b) in data.iter().enumerate() {
        if let Some(o) = out.get_mut(i % base.len().max(1)) {
            *o ^= b;
        }
    }
    // Keep the checksum valid so the mutation reaches the flow's own checks.
    if let Ok(mut packet) = Packet::new_checked(&mut out[..]) {
        packet.fill_checksum();
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut p = pair();
    let peer = p.server_flow.peer_addr();
    feed(&mut p, data);
    let control = xor_onto(&p.control, data);
    feed(&mut p, &control);
    let mutated = xor_onto(&p.data, data);
    feed(&mut p, &mutated);
    // Only the MAC could end or move the flow, and the fuzzer does not have the key.
    assert!(p.server_flow.is_established() || data.iter().all(|&b| b == 0));
    assert_eq!(p.server_flow.peer_addr(), peer);
});
