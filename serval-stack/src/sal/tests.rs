//! Scripted tests, one per SAL transition (smoltcp's style): build or capture a packet,
//! feed it, assert the state, the reply and the counters. Scenario tests on a simulated
//! network are in `tests/tests/sal.rs`, `router.rs` and `scenarios.rs`.

use core::net::SocketAddr;
use core::time::Duration;

use super::*;
use crate::time::Timestamp;
use crate::wire::sal::{ControlFlags, ControlRepr, Packet, Protocol, SalRepr};
use crate::wire::{Nonce, ServiceId, ServicePrefix};

const CLIENT: &str = "10.0.0.1:54325";
const SERVER: &str = "192.0.2.10:54325";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn service() -> ServiceId {
    ServiceId::from_u32(16385)
}

fn endpoint(seed: u8, local: &str) -> Endpoint {
    let c = EndpointConfig {
        rng_seed: [seed; 32],
        local_addr: addr(local),
        ..EndpointConfig::default()
    };
    Endpoint::new(c, Timestamp::ZERO)
}

fn repr(d: &[u8]) -> SalRepr {
    SalRepr::parse_datagram(d).unwrap().repr
}

fn flags(d: &[u8]) -> ControlFlags {
    repr(d).flags()
}

/// Every datagram `flow` wants to send now.
fn drain(flow: &mut Flow, now: Timestamp) -> Vec<(Transmit, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while let Some(t) = flow.poll_transmit(now, &mut buf) {
        out.push((t, buf[..t.size].to_vec()));
    }
    out
}

fn events(flow: &mut Flow) -> Vec<Event> {
    core::iter::from_fn(|| flow.poll()).collect()
}

/// A client and a server endpoint with a datagram-mode flow between them, driven by hand.
struct Pair {
    now: Timestamp,
    client_ep: Endpoint,
    server_ep: Endpoint,
    client: Flow,
    server: Option<Flow>,
}

impl Pair {
    fn new() -> Self {
        Self::with_protocol(Protocol::UDP)
    }

    /// A pair whose flow is of `protocol` (UDP: datagrams, TCP: a stream).
    fn with_protocol(protocol: Protocol) -> Self {
        let mut server_ep = endpoint(2, SERVER);
        server_ep
            .listen(ServicePrefix::exact(service()), protocol)
            .unwrap();
        let mut client_ep = endpoint(1, CLIENT);
        let (_, client) = client_ep
            .connect_to(Timestamp::ZERO, service(), addr(SERVER), protocol)
            .unwrap();
        Self {
            now: Timestamp::ZERO,
            client_ep,
            server_ep,
            client,
            server: None,
        }
    }

    /// Delivers `d` to the server endpoint (and its flow), as from `from`.
    fn deliver_to_server(&mut self, from: SocketAddr, d: &[u8]) {
        let mut buf = Vec::new();
        match self.server_ep.handle(self.now, from, d, &mut buf) {
            Some(DatagramEvent::Flow(_, input)) => self
                .server
                .as_mut()
                .unwrap()
                .handle(self.now, from, input, d),
            Some(DatagramEvent::NewFlow(incoming)) => {
                self.server = Some(self.server_ep.accept(incoming).1)
            }
            _ => {}
        }
    }

    fn deliver_to_client(&mut self, from: SocketAddr, d: &[u8]) {
        let mut buf = Vec::new();
        if let Some(DatagramEvent::Flow(_, input)) =
            self.client_ep.handle(self.now, from, d, &mut buf)
        {
            self.client.handle(self.now, from, input, d);
        }
    }

    /// SYN-ACKs the server endpoint has to send.
    fn server_endpoint_out(&mut self) -> Vec<Vec<u8>> {
        let mut buf = Vec::new();
        core::iter::from_fn(|| {
            self.server_ep
                .poll_transmit(self.now, &mut buf)
                .map(|t| buf[..t.size].to_vec())
        })
        .collect()
    }

    /// Runs the handshake; returns it established on both sides.
    fn established() -> Self {
        Self::establish(Self::new())
    }

    fn establish(mut p: Self) -> Self {
        let syn = drain(&mut p.client, p.now).remove(0).1;
        p.deliver_to_server(addr(CLIENT), &syn);
        let syn_ack = p.server_endpoint_out().remove(0);
        p.deliver_to_client(addr(SERVER), &syn_ack);
        let conn_ack = drain(&mut p.client, p.now).remove(0).1;
        p.deliver_to_server(addr(CLIENT), &conn_ack);
        assert!(p.client.is_established() && p.server.as_ref().unwrap().is_established());
        p
    }

    fn server_out(&mut self) -> Vec<(Transmit, Vec<u8>)> {
        let now = self.now;
        drain(self.server(), now)
    }

    fn server(&mut self) -> &mut Flow {
        self.server.as_mut().unwrap()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        for f in [Some(&mut self.client), self.server.as_mut()]
            .into_iter()
            .flatten()
        {
            if f.poll_timeout().is_some_and(|t| t <= self.now) {
                f.handle_timeout(self.now);
            }
        }
        if self.server_ep.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server_ep.handle_timeout(self.now);
        }
    }
}

/// Re-emits `d` after `edit` changed its header (checksum refreshed; MAC left as it was).
fn tamper(d: &[u8], edit: impl FnOnce(&mut SalRepr)) -> Vec<u8> {
    let parsed = SalRepr::parse_datagram(d).unwrap();
    let mut r = parsed.repr;
    edit(&mut r);
    let mut out = vec![0; r.buffer_len() + parsed.payload.len()];
    out[r.buffer_len()..].copy_from_slice(parsed.payload);
    r.emit(&mut Packet::new_unchecked(&mut out[..]));
    out
}

// ------------------------------------------------------------------- REQUEST (client)

#[test]
fn request_sends_a_syn_with_service_and_key_share_and_no_mac() {
    let mut p = Pair::new();
    let out = drain(&mut p.client, p.now);
    assert_eq!(out.len(), 1);
    let (t, syn) = &out[0];
    assert_eq!(t.destination, addr(SERVER));
    let r = repr(syn);
    assert_eq!(r.flags(), ControlFlags::SYN);
    assert_eq!(r.dst_service(), Some(service()));
    assert_eq!(r.dst_flow, None);
    assert!(r.key_share.is_some() && r.mac.is_none());
}

#[test]
fn request_retransmits_the_syn_with_backoff_then_times_out() {
    let mut p = Pair::new();
    let _ = drain(&mut p.client, p.now);
    let mut sent_at = Vec::new();
    // 1 + 2 + 4 + ... + 32 s, then the last wait (64 s, capped at max_rto 60 s): ~123 s.
    for _ in 0..300 {
        p.advance(Duration::from_millis(500));
        if !drain(&mut p.client, p.now).is_empty() {
            sent_at.push(p.now.as_micros() / 1000);
        }
        if p.client.is_closed() {
            break;
        }
    }
    // 1 s initial RTO, doubling (on a 500 ms tick grid).
    assert_eq!(&sent_at[..3], &[1000, 3000, 7000]);
    assert_eq!(sent_at.len(), 6, "max_retransmits = 6");
    assert!(events(&mut p.client).contains(&Event::Closed(CloseReason::TimedOut)));
}

#[test]
fn request_refused_only_by_a_rst_echoing_our_nonce() {
    let mut p = Pair::new();
    let syn = drain(&mut p.client, p.now).remove(0).1;
    let nonce = repr(&syn).control.unwrap().nonce;
    let rst = |nonce| {
        let mut r = SalRepr::new(None, repr(&syn).src_flow, Protocol::UDP);
        r.control = Some(ControlRepr {
            flags: ControlFlags::RST | ControlFlags::ACK,
            verno: 0,
            ackno: 1,
            nonce,
        });
        let mut b = vec![0; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut b[..]));
        b
    };
    p.deliver_to_client(addr("203.0.113.1:1"), &rst(Nonce([0xee; 8])));
    assert!(!p.client.is_closed(), "a guessed nonce does nothing");
    assert_eq!(p.client.stats().drops.bad_mac, 1);
    p.deliver_to_client(addr(SERVER), &rst(nonce));
    assert!(events(&mut p.client).contains(&Event::Closed(CloseReason::Refused)));
}

#[test]
fn request_drops_a_syn_ack_whose_mac_fails() {
    let mut p = Pair::new();
    let syn = drain(&mut p.client, p.now).remove(0).1;
    p.deliver_to_server(addr(CLIENT), &syn);
    let syn_ack = p.server_endpoint_out().remove(0);
    let forged = tamper(&syn_ack, |r| r.mac.as_mut().unwrap()[0] ^= 1);
    p.deliver_to_client(addr(SERVER), &forged);
    assert!(!p.client.is_established());
    assert_eq!(p.client.stats().drops.bad_mac, 1);
    p.deliver_to_client(addr(SERVER), &syn_ack);
    assert!(p.client.is_established());
    assert_eq!(events(&mut p.client), vec![Event::Connected]);
}

// ------------------------------------------------------------------- RESPOND (server)

#[test]
fn respond_answers_a_duplicate_syn_from_the_same_half_open_flow() {
    let mut p = Pair::new();
    let syn = drain(&mut p.client, p.now).remove(0).1;
    p.deliver_to_server(addr(CLIENT), &syn);
    let first = p.server_endpoint_out();
    p.deliver_to_server(addr(CLIENT), &syn);
    let second = p.server_endpoint_out();
    assert_eq!(first.len(), 1);
    assert_eq!(second.len(), 1);
    assert_eq!(
        repr(&first[0]).src_flow,
        repr(&second[0]).src_flow,
        "same half-open flow"
    );
    assert_eq!(p.server_ep.half_open_count(), 1);
    assert_eq!(p.server_ep.stats().duplicate_syns, 1);
}

#[test]
fn respond_retransmits_its_syn_ack_then_forgets_the_half_open_flow() {
    let mut p = Pair::new();
    let syn = drain(&mut p.client, p.now).remove(0).1;
    p.deliver_to_server(addr(CLIENT), &syn);
    assert_eq!(p.server_endpoint_out().len(), 1);
    p.advance(Duration::from_millis(1000));
    let again = p.server_endpoint_out();
    assert_eq!(
        again.len(),
        1,
        "the server repeats its SYN-ACK (the original did not)"
    );
    assert_eq!(flags(&again[0]), ControlFlags::SYN | ControlFlags::ACK);
    // Repeated at 3 s and 7 s, then the half-open flow expires at 10 s.
    let mut repeats = 0;
    for _ in 0..10 {
        p.advance(Duration::from_millis(1000));
        repeats += p.server_endpoint_out().len();
    }
    assert_eq!(repeats, 2);
    assert_eq!(p.server_ep.half_open_count(), 0, "10 s half-open timeout");
}

#[test]
fn respond_repeats_its_syn_ack_when_data_shows_the_conn_ack_was_lost() {
    let mut p = Pair::new();
    let syn = drain(&mut p.client, p.now).remove(0).1;
    p.deliver_to_server(addr(CLIENT), &syn);
    let syn_ack = p.server_endpoint_out().remove(0);
    p.deliver_to_client(addr(SERVER), &syn_ack);
    let _lost_conn_ack = drain(&mut p.client, p.now);
    assert!(p.client.send_datagram(b"early"));
    let data = drain(&mut p.client, p.now).remove(0).1;
    p.advance(Duration::from_millis(300));
    p.deliver_to_server(addr(CLIENT), &data);
    let repeated = p.server_endpoint_out();
    assert_eq!(repeated.len(), 1, "repeated at once, not at the 1 s timer");
    // A burst of data does not turn into a burst of SYN-ACKs.
    p.deliver_to_server(addr(CLIENT), &data);
    assert!(p.server_endpoint_out().is_empty());
    p.deliver_to_client(addr(SERVER), &repeated[0]);
    let conn_ack = drain(&mut p.client, p.now).remove(0).1;
    p.deliver_to_server(addr(CLIENT), &conn_ack);
    assert!(p.server.as_ref().is_some_and(Flow::is_established));
}

#[test]
fn respond_ignores_a_conn_ack_with_a_bad_mac() {
    let mut p = Pair::new();
    let syn = drain(&mut p.client, p.now).remove(0).1;
    p.deliver_to_server(addr(CLIENT), &syn);
    let syn_ack = p.server_endpoint_out().remove(0);
    p.deliver_to_client(addr(SERVER), &syn_ack);
    let conn_ack = drain(&mut p.client, p.now).remove(0).1;
    p.deliver_to_server(
        addr(CLIENT),
        &tamper(&conn_ack, |r| r.mac.as_mut().unwrap()[3] ^= 0x40),
    );
    assert!(p.server.is_none(), "no flow handed to the application");
    p.deliver_to_server(addr(CLIENT), &conn_ack);
    assert!(p.server.is_some());
}

#[test]
fn a_lost_conn_ack_is_repaired_by_the_repeated_syn_ack() {
    let mut p = Pair::new();
    let syn = drain(&mut p.client, p.now).remove(0).1;
    p.deliver_to_server(addr(CLIENT), &syn);
    let syn_ack = p.server_endpoint_out().remove(0);
    p.deliver_to_client(addr(SERVER), &syn_ack);
    let _lost = drain(&mut p.client, p.now);
    p.advance(Duration::from_millis(1000));
    let repeated = p.server_endpoint_out().remove(0);
    p.deliver_to_client(addr(SERVER), &repeated);
    let answer = drain(&mut p.client, p.now);
    assert_eq!(answer.len(), 1);
    assert_eq!(flags(&answer[0].1), ControlFlags::ACK);
    p.deliver_to_server(addr(CLIENT), &answer[0].1);
    assert!(p.server.as_ref().is_some_and(Flow::is_established));
}

// ------------------------------------------------------------------- CONNECTED

#[test]
fn fin_each_way_then_linger_then_closed() {
    let mut p = Pair::established();
    p.client.close(p.now);
    let fin = drain(&mut p.client, p.now).remove(0).1;
    assert_eq!(flags(&fin), ControlFlags::FIN | ControlFlags::ACK);
    p.deliver_to_server(addr(CLIENT), &fin);
    assert!(events(p.server()).contains(&Event::PeerFinished));
    let ack = p.server_out().remove(0).1;
    p.deliver_to_client(addr(SERVER), &ack);
    // The server may still send on its half; then it finishes too.
    let now = p.now;
    p.server().close(now);
    let server_fin = p.server_out().remove(0).1;
    p.deliver_to_client(addr(SERVER), &server_fin);
    let last_ack = drain(&mut p.client, p.now).remove(0).1;
    // A repeated FIN in linger is acknowledged again.
    p.deliver_to_client(addr(SERVER), &server_fin);
    assert_eq!(drain(&mut p.client, p.now).len(), 1);
    assert_eq!(p.client.stats().duplicate_control, 1);
    p.deliver_to_server(addr(CLIENT), &last_ack);
    p.advance(Duration::from_secs(5));
    assert!(p.client.is_closed() && p.server().is_closed());
    assert!(events(&mut p.client).contains(&Event::Closed(CloseReason::Finished)));
}

#[test]
fn an_authenticated_rst_resets_the_peer_and_a_replayed_fin_is_stale() {
    let mut p = Pair::established();
    p.client.close(p.now);
    let fin = drain(&mut p.client, p.now).remove(0).1;
    p.deliver_to_server(addr(CLIENT), &fin);
    p.deliver_to_server(addr(CLIENT), &fin);
    assert_eq!(
        p.server().stats().duplicate_control,
        1,
        "a repeat is re-acknowledged"
    );
    // An old FIN two versions back is stale: dropped.
    let stale = tamper(&fin, |r| {
        r.control.as_mut().unwrap().verno = r.control.unwrap().verno.wrapping_sub(5)
    });
    p.deliver_to_server(addr(CLIENT), &stale);
    assert_eq!(
        p.server().stats().drops.bad_mac + p.server().stats().drops.stale_version,
        1
    );
    let now = p.now;
    p.server().abort(now);
    let rst = p.server_out().remove(0).1;
    assert!(flags(&rst).contains(ControlFlags::RST) && repr(&rst).mac.is_some());
    p.deliver_to_client(addr(SERVER), &rst);
    assert!(events(&mut p.client).contains(&Event::Closed(CloseReason::Reset)));
}

#[test]
fn forged_stream_data_does_not_keep_a_silent_peers_flow_alive() {
    let mut p = Pair::establish(Pair::with_protocol(Protocol::TCP));
    let _ = drain(&mut p.client, p.now);
    let _ = p.server_out();
    let forged = forged_stream_data(p.client.local_flow(), p.server().local_flow());
    // The client falls silent; a forger with both FlowIDs sends a segment every 30 s, even
    // from the client's own address. The stream refuses each, so none of them counts as
    // hearing from the peer: the idle timeout (5 min) still ends the flow.
    for _ in 0..12 {
        p.advance(Duration::from_secs(30));
        p.deliver_to_server(addr(CLIENT), &forged);
        let _ = p.server_out();
    }
    // The forged segments reached the flow while it was open (and the stream refused them).
    assert!(p.server().stats().data_packets_received >= 5);
    assert!(events(p.server()).contains(&Event::Closed(CloseReason::IdleTimeout)));
}

#[test]
fn a_flow_sending_data_still_sends_keepalives() {
    let mut p = Pair::establish(Pair::with_protocol(Protocol::TCP));
    // A data segment every 10 s for a minute: the peer must still get an authenticated
    // packet every 25 s, since its idle timer does not trust data.
    for _ in 0..6 {
        p.advance(Duration::from_secs(10));
        p.client.write(b"tick").unwrap();
        for (_, d) in drain(&mut p.client, p.now) {
            p.deliver_to_server(addr(CLIENT), &d);
        }
        for (_, d) in p.server_out() {
            p.deliver_to_client(addr(SERVER), &d);
        }
    }
    assert_eq!(p.client.stats().keepalives_sent, 2);
    assert!(p.client.stats().data_packets_sent >= 6);
}

#[test]
fn an_idle_flow_sends_keepalives_and_a_silent_peer_times_out() {
    let mut p = Pair::established();
    let _ = drain(&mut p.client, p.now);
    p.advance(Duration::from_secs(25));
    let ka = drain(&mut p.client, p.now);
    assert_eq!(ka.len(), 1);
    assert_eq!(flags(&ka[0].1), ControlFlags::ACK);
    assert!(repr(&ka[0].1).mac.is_some());
    assert_eq!(p.client.stats().keepalives_sent, 1);
    // The server hears nothing more: its idle timeout (5 min) closes it.
    for _ in 0..12 {
        p.advance(Duration::from_secs(30));
        let _ = p.server_out();
    }
    assert!(events(p.server()).contains(&Event::Closed(CloseReason::IdleTimeout)));
}

#[test]
fn a_path_challenge_is_answered_to_where_it_came_from() {
    let mut p = Pair::established();
    let _ = drain(&mut p.client, p.now);
    // The client moves; the server challenges the new address.
    p.client.migrate(addr("10.0.9.9:54325"));
    let rsyn = drain(&mut p.client, p.now).remove(0);
    assert_eq!(rsyn.0.src, Some(addr("10.0.9.9:54325")));
    assert_eq!(flags(&rsyn.1), ControlFlags::RSYN);
    p.deliver_to_server(addr("10.0.9.9:54325"), &rsyn.1);
    let out = p.server_out();
    let challenge = out
        .iter()
        .find(|(_, d)| repr(d).path_challenge.is_some())
        .unwrap();
    assert_eq!(challenge.0.destination, addr("10.0.9.9:54325"));
    assert_eq!(flags(&challenge.1), ControlFlags::RSYN | ControlFlags::ACK);
    assert_eq!(
        p.server().peer_addr(),
        addr(CLIENT),
        "not moved before the response"
    );
    p.deliver_to_client(addr(SERVER), &challenge.1);
    let response = drain(&mut p.client, p.now);
    let response = response
        .iter()
        .find(|(_, d)| repr(d).path_response.is_some())
        .unwrap();
    assert_eq!(
        repr(&response.1).path_response,
        repr(&challenge.1).path_challenge
    );
    p.deliver_to_server(addr("10.0.9.9:54325"), &response.1);
    assert_eq!(p.server().peer_addr(), addr("10.0.9.9:54325"));
}

#[test]
fn a_replayed_packet_from_elsewhere_cannot_move_the_flow() {
    let mut p = Pair::established();
    let _ = drain(&mut p.client, p.now);
    p.advance(Duration::from_secs(25));
    let keepalive = drain(&mut p.client, p.now).remove(0).1;
    // An attacker replays the client's genuine keepalive from its own address.
    p.deliver_to_server(addr("203.0.113.66:999"), &keepalive);
    let challenges: Vec<_> = p
        .server_out()
        .into_iter()
        .filter(|(_, d)| repr(d).path_challenge.is_some())
        .collect();
    assert_eq!(challenges.len(), 1);
    assert_eq!(
        challenges[0].0.destination,
        addr("203.0.113.66:999"),
        "one challenge to the new address"
    );
    // Nobody there can answer with the key: after the retries the flow stays put.
    for _ in 0..40 {
        p.advance(Duration::from_secs(1));
        let _ = p.server_out();
    }
    assert_eq!(p.server().peer_addr(), addr(CLIENT));
    assert_eq!(p.server().stats().path_validations_failed, 1);
    assert!(p.server().is_established());
}

/// What an off-path attacker who read both FlowIDs (an admin listing) but not the stream's
/// sequence numbers can send: a data packet with a made-up segment.
fn forged_stream_data(
    client_flow: crate::wire::FlowId,
    server_flow: crate::wire::FlowId,
) -> Vec<u8> {
    let segment = {
        let tcp = crate::wire::tcp::TcpRepr {
            seq_number: crate::wire::tcp::SeqNumber(0x1234_5678),
            ack_number: Some(crate::wire::tcp::SeqNumber(0x9abc_def0)),
            timestamps: Some(crate::wire::tcp::Timestamps {
                tsval: 0x4000_0000,
                tsecr: 1,
            }),
            window_len: 1000,
            payload: b"forged",
            ..Default::default()
        };
        let mut b = vec![0; tcp.buffer_len()];
        tcp.emit(&mut crate::wire::tcp::Packet::new_unchecked(&mut b[..]));
        b
    };
    let header = SalRepr::new(Some(client_flow), Some(server_flow), Protocol::TCP);
    let mut forged = vec![0; header.buffer_len() + segment.len()];
    forged[header.buffer_len()..].copy_from_slice(&segment);
    header.emit(&mut Packet::new_unchecked(&mut forged[..]));
    forged
}

#[test]
fn forged_stream_data_with_leaked_flow_ids_starts_no_path_validation() {
    let mut p = Pair::establish(Pair::with_protocol(Protocol::TCP));
    let _ = drain(&mut p.client, p.now);
    let _ = p.server_out();
    let (client_flow, server_flow) = (p.client.local_flow(), p.server().local_flow());
    let forged = forged_stream_data(client_flow, server_flow);
    p.deliver_to_server(addr("203.0.113.66:999"), &forged);
    let out = p.server_out();
    assert!(
        out.iter().all(|(t, _)| t.destination == addr(CLIENT)),
        "nothing sent to the forger: {out:?}"
    );
    assert!(out.iter().all(|(_, d)| repr(d).path_challenge.is_none()));
    assert_eq!(p.server().stats().path_validations_started, 0);
    assert!(p.server().stream_stats().unwrap().dropped_segments >= 1);

    // The genuine client's next segment from a new address (a NAT rebinding) is accepted
    // by the stream, and that does start a validation.
    p.client.write(b"hello").unwrap();
    let data = drain(&mut p.client, p.now);
    let (_, d) = data
        .iter()
        .find(|(_, d)| repr(d).control.is_none())
        .unwrap();
    p.deliver_to_server(addr("10.0.0.1:40000"), d);
    assert_eq!(p.server().stats().path_validations_started, 1);
    let out = p.server_out();
    assert!(
        out.iter()
            .any(|(t, d)| t.destination == addr("10.0.0.1:40000")
                && repr(d).path_challenge.is_some())
    );
}
