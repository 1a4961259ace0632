//! Stream tests: scripted per-state transitions (smoltcp style: build a segment, feed it,
//! assert the reply) and a deterministic two-stream harness with virtual time, latency,
//! a bottleneck and seeded loss / reordering / duplication.

use core::time::Duration;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::time::Timestamp;
use crate::wire::tcp::{Flags, SackBlock, SackBlocks, SeqNumber, TcpRepr, Timestamps};

// -------------------------------------------------------------------------------------
// Scripted tests.

const CLIENT_ISN: SeqNumber = SeqNumber(1_000);
/// Close to 2^32: the server's data in the close tests crosses the sequence wrap.
const SERVER_ISN: SeqNumber = SeqNumber(u32::MAX - 3);
const MSS: u16 = 1000;
/// Payload of a full segment: MSS minus the 12-byte timestamps option.
const SMSS: usize = 988;

fn t(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn cfg() -> StreamConfig {
    let mut c = StreamConfig::default();
    c.mss(MSS).unwrap().pacing(false);
    c
}

/// One emitted segment, owned.
#[derive(Debug, Clone)]
struct Seg(Vec<u8>);

impl Seg {
    fn repr(&self) -> TcpRepr<'_> {
        TcpRepr::parse_bytes(&self.0).expect("stream emits valid segments")
    }
}

fn drain(s: &mut Stream, now: Timestamp) -> Vec<Seg> {
    let mut out = Vec::new();
    loop {
        let mut buf = Vec::new();
        match s.poll_transmit(now, &mut buf) {
            Some(tx) => {
                assert_eq!(tx.size, buf.len());
                out.push(Seg(buf));
            }
            None => return out,
        }
    }
}

fn events(s: &mut Stream) -> Vec<StreamEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn deliver(to: &mut Stream, now: Timestamp, segs: &[Seg]) {
    for seg in segs {
        to.handle_bytes(now, &seg.0).unwrap();
    }
}

/// Client and server after a handshake at t=0 (RTT sample 10 ms), events drained.
fn established(config: StreamConfig) -> (Stream, Stream) {
    established_with(config.clone(), config)
}

fn established_with(client_cfg: StreamConfig, server_cfg: StreamConfig) -> (Stream, Stream) {
    let mut buf = Vec::new();
    let (mut c, _) = Stream::client(Arc::new(client_cfg), CLIENT_ISN, t(0), &mut buf);
    let syn = Seg(buf);
    let mut buf = Vec::new();
    let (mut s, _) = Stream::server(
        Arc::new(server_cfg),
        SERVER_ISN,
        t(5),
        &syn.repr(),
        &mut buf,
    )
    .unwrap();
    c.handle_bytes(t(10), &buf).unwrap();
    let ack = drain(&mut c, t(10));
    assert_eq!(ack.len(), 1);
    deliver(&mut s, t(15), &ack);
    assert_eq!(events(&mut c), [StreamEvent::Established]);
    assert_eq!(events(&mut s), [StreamEvent::Established]);
    (c, s)
}

/// A segment from "the peer" of `s`, built by hand.
/// `ts_ms` is the peer's timestamp clock in ms (its SYN-ACK carried 5 ms).
fn peer_seg<'a>(seq: SeqNumber, ack: SeqNumber, payload: &'a [u8], ts_ms: u32) -> TcpRepr<'a> {
    TcpRepr {
        seq_number: seq,
        ack_number: Some(ack),
        window_len: 1000,
        timestamps: Some(Timestamps {
            tsval: ts_ms * 1000,
            tsecr: 0,
        }),
        payload,
        ..TcpRepr::default()
    }
}

#[test]
fn handshake_negotiates_options() {
    let mut buf = Vec::new();
    let (mut c, tx) = Stream::client(Arc::new(cfg()), CLIENT_ISN, t(0), &mut buf);
    assert_eq!(c.state(), State::SynSent);
    assert_eq!(tx.flags, Flags::SYN);
    let syn = Seg(buf);
    let r = syn.repr();
    assert_eq!(r.seq_number, CLIENT_ISN);
    assert_eq!(r.max_seg_size, Some(MSS));
    assert_eq!(r.window_scale, Some(7), "4 MiB needs a shift of 7");
    assert!(r.sack_permitted);
    assert_eq!(r.timestamps.map(|t| t.tsecr), Some(0));
    assert_eq!(r.window_len, 0xffff, "SYN windows are never scaled");

    let mut small = cfg();
    small.mss(1200).unwrap().recv_buffer(64 * 1024).unwrap();
    let mut buf = Vec::new();
    let (mut s, tx) = Stream::server(Arc::new(small), SERVER_ISN, t(5), &r, &mut buf).unwrap();
    assert_eq!(tx.flags, Flags::SYN | Flags::ACK);
    assert_eq!(s.state(), State::SynReceived);
    let synack = Seg(buf);
    let r = synack.repr();
    assert_eq!(r.ack_number, Some(CLIENT_ISN + 1));
    assert_eq!(r.window_scale, Some(1), "65536 bytes need a shift of 1");
    assert_eq!(
        r.timestamps.map(|t| t.tsecr),
        syn.repr().timestamps.map(|t| t.tsval)
    );
    assert_eq!(s.send_mss(), 1000, "min of both MSS");

    c.handle_segment(t(10), &r);
    assert_eq!(c.state(), State::Established);
    assert_eq!(c.send_mss(), 1000);
    assert_eq!(
        c.stats().srtt,
        Duration::from_millis(10),
        "handshake RTT sample"
    );
    let ack = drain(&mut c, t(10));
    assert_eq!(ack.len(), 1);
    let a = ack[0].repr();
    assert_eq!(
        (a.seq_number, a.ack_number),
        (CLIENT_ISN + 1, Some(SERVER_ISN + 1))
    );
    assert!(a.payload.is_empty());
    deliver(&mut s, t(20), &ack);
    assert_eq!(s.state(), State::Established);
    assert_eq!(events(&mut s), [StreamEvent::Established]);
}

#[test]
fn handshake_answers_only_offered_options() {
    let syn = TcpRepr {
        seq_number: CLIENT_ISN,
        flags: Flags::SYN,
        window_len: 5000,
        ..TcpRepr::default()
    };
    let mut buf = Vec::new();
    let (mut s, _) = Stream::server(Arc::new(cfg()), SERVER_ISN, t(0), &syn, &mut buf).unwrap();
    let synack = Seg(buf);
    let r = synack.repr();
    assert_eq!(
        (r.window_scale, r.sack_permitted, r.timestamps),
        (None, false, None)
    );
    assert_eq!(
        s.send_mss(),
        536,
        "RFC 9293 default MSS when none is offered"
    );
    // Establish with a bare ACK and check windows stay unscaled.
    s.handle_segment(
        t(1),
        &TcpRepr {
            timestamps: None,
            ..peer_seg(CLIENT_ISN + 1, SERVER_ISN + 1, b"hi", 0)
        },
    );
    assert_eq!(s.state(), State::Established);
    let out = drain(&mut s, t(30));
    assert!(out.is_empty(), "delayed ACK for a single segment");
    s.handle_timeout(t(26));
    let out = drain(&mut s, t(26));
    assert_eq!(
        out[0].repr().window_len,
        0xffff,
        "4 MiB buffer, no scaling: capped"
    );
    assert_eq!(out[0].repr().sack_blocks, SackBlocks::EMPTY);

    let not_syn = TcpRepr {
        ack_number: Some(SeqNumber(1)),
        ..syn
    };
    assert_eq!(
        Stream::server(Arc::new(cfg()), SERVER_ISN, t(0), &not_syn, &mut Vec::new()).unwrap_err(),
        HandshakeError::NotSyn
    );
}

#[test]
fn syn_sent_accepts_only_its_syn_ack() {
    let mut buf = Vec::new();
    let (mut c, _) = Stream::client(Arc::new(cfg()), CLIENT_ISN, t(0), &mut buf);
    let bad_ack = TcpRepr {
        flags: Flags::SYN,
        ..peer_seg(SERVER_ISN, CLIENT_ISN + 5, b"", 1)
    };
    c.handle_segment(t(1), &bad_ack);
    let rst_bad = TcpRepr {
        flags: Flags::RST,
        ..peer_seg(SeqNumber(0), CLIENT_ISN, b"", 1)
    };
    c.handle_segment(t(1), &rst_bad);
    assert_eq!(c.state(), State::SynSent);
    assert_eq!(c.stats().dropped_segments, 2);
    assert!(
        drain(&mut c, t(1)).is_empty(),
        "the SAL retransmits the SYN, not us"
    );
    let rst = TcpRepr {
        flags: Flags::RST,
        ..peer_seg(SeqNumber(0), CLIENT_ISN + 1, b"", 1)
    };
    c.handle_segment(t(2), &rst);
    assert_eq!(c.state(), State::Closed);
    assert_eq!(events(&mut c), [StreamEvent::Reset, StreamEvent::Closed]);
    assert_eq!(c.read(&mut [0; 4]), Err(ReadError::Closed));
}

#[test]
fn data_is_acked_every_second_segment_or_after_the_delay() {
    let (mut c, mut s) = established(cfg());
    assert_eq!(c.write(&[7; 3 * SMSS]), Ok(3 * SMSS));
    let segs = drain(&mut c, t(20));
    assert_eq!(segs.len(), 3);
    assert!(segs.iter().all(|s| s.repr().payload.len() == SMSS));
    assert!(
        segs[2].repr().flags.contains(Flags::PSH),
        "PSH on the segment that empties the buffer"
    );
    deliver(&mut s, t(30), &segs[..1]);
    assert!(drain(&mut s, t(30)).is_empty(), "first segment: delayed");
    deliver(&mut s, t(31), &segs[1..2]);
    let acks = drain(&mut s, t(31));
    assert_eq!(acks.len(), 1, "second full segment: immediate");
    assert_eq!(
        acks[0].repr().ack_number,
        Some(CLIENT_ISN + 1 + 2 * SMSS as u32)
    );
    deliver(&mut s, t(32), &segs[2..]);
    assert!(drain(&mut s, t(32)).is_empty());
    assert_eq!(s.poll_timeout(), Some(t(57)), "25 ms delayed ACK");
    s.handle_timeout(t(57));
    let acks = drain(&mut s, t(57));
    assert_eq!(
        acks[0].repr().ack_number,
        Some(CLIENT_ISN + 1 + 3 * SMSS as u32)
    );
    assert_eq!(events(&mut s), [StreamEvent::Readable]);
    let mut buf = vec![0; 4 * SMSS];
    assert_eq!(s.read(&mut buf), Ok(3 * SMSS));
    assert_eq!(s.read(&mut buf), Ok(0), "nothing more yet");

    deliver(&mut c, t(60), &acks);
    assert_eq!(c.send_queue(), 0);
    assert_eq!(c.stats().bytes_acked, 3 * SMSS as u64);
    assert_eq!(c.poll_timeout(), None, "nothing outstanding: no timer");
}

#[test]
fn out_of_order_data_is_sacked_at_once_and_reassembled() {
    let (mut c, mut s) = established(cfg());
    c.write(&[1; 3 * SMSS]).unwrap();
    let segs = drain(&mut c, t(20));
    deliver(&mut s, t(30), &segs[1..2]);
    let ack = drain(&mut s, t(30));
    assert_eq!(ack.len(), 1, "out-of-order: immediate duplicate ACK");
    let r = ack[0].repr();
    assert_eq!(r.ack_number, Some(CLIENT_ISN + 1));
    let left = CLIENT_ISN + 1 + SMSS as u32;
    assert_eq!(
        r.sack_blocks.as_slice(),
        [SackBlock {
            left,
            right: left + SMSS as u32
        }]
    );
    deliver(&mut s, t(31), &segs[2..3]);
    let r2 = drain(&mut s, t(31));
    assert_eq!(r2[0].repr().sack_blocks.len(), 1, "adjacent ranges merge");
    deliver(&mut s, t(32), &segs[..1]);
    let ack = drain(&mut s, t(32));
    assert_eq!(ack.len(), 1, "gap filled: immediate ACK");
    assert_eq!(
        ack[0].repr().ack_number,
        Some(CLIENT_ISN + 1 + 3 * SMSS as u32)
    );
    assert!(ack[0].repr().sack_blocks.is_empty());
    assert_eq!(s.readable(), 3 * SMSS);
    assert_eq!(s.stats().out_of_order_segments, 2);
}

#[test]
fn duplicate_data_gets_a_dsack() {
    let (mut c, mut s) = established(cfg());
    c.write(&[1; SMSS]).unwrap();
    let segs = drain(&mut c, t(20));
    deliver(&mut s, t(30), &segs);
    s.handle_timeout(t(55));
    let _ = drain(&mut s, t(55));
    deliver(&mut s, t(60), &segs);
    let ack = drain(&mut s, t(60));
    let r = ack[0].repr();
    let left = CLIENT_ISN + 1;
    assert_eq!(
        r.sack_blocks.as_slice(),
        [SackBlock {
            left,
            right: left + SMSS as u32
        }]
    );
    assert_eq!(s.stats().duplicate_segments, 1);
    deliver(&mut c, t(70), &ack);
    assert_eq!(
        c.stats().spurious_retransmits,
        1,
        "a D-SACK below the cumulative ACK"
    );
}

#[test]
fn peer_fin_then_ours_passive_close() {
    let (mut c, mut s) = established(cfg());
    c.write(b"request").unwrap();
    c.shutdown_write().unwrap();
    assert_eq!(c.state(), State::FinWait1);
    assert_eq!(c.write(b"x"), Err(WriteError::Finished));
    let segs = drain(&mut c, t(20));
    assert_eq!(segs.len(), 1, "FIN piggybacks on the data");
    assert!(segs[0].repr().flags.contains(Flags::FIN));
    deliver(&mut s, t(30), &segs);
    assert_eq!(s.state(), State::CloseWait);
    assert_eq!(
        events(&mut s),
        [StreamEvent::Readable, StreamEvent::PeerFinished]
    );
    let mut buf = [0; 32];
    assert_eq!(s.read(&mut buf), Ok(7));
    assert_eq!(s.read(&mut buf), Err(ReadError::Finished));
    let ack = drain(&mut s, t(30));
    assert_eq!(
        ack[0].repr().ack_number,
        Some(CLIENT_ISN + 1 + 7 + 1),
        "FIN acked at once"
    );
    deliver(&mut c, t(40), &ack);
    assert_eq!(c.state(), State::FinWait2);
    assert_eq!(events(&mut c), [StreamEvent::SendFinished]);

    // Half-close: the server keeps sending.
    s.write(b"response").unwrap();
    let data = drain(&mut s, t(41));
    deliver(&mut c, t(50), &data);
    assert_eq!(c.read(&mut buf), Ok(8));
    s.shutdown_write().unwrap();
    assert_eq!(s.state(), State::LastAck);
    let fin = drain(&mut s, t(51));
    assert!(fin[0].repr().flags.contains(Flags::FIN));
    deliver(&mut c, t(60), &fin);
    assert_eq!(c.state(), State::TimeWait);
    assert_eq!(c.poll_timeout(), Some(t(60) + Duration::from_secs(5)));
    let last = drain(&mut c, t(60));
    deliver(&mut s, t(70), &last);
    assert_eq!(s.state(), State::Closed);
    assert_eq!(
        events(&mut s),
        [StreamEvent::SendFinished, StreamEvent::Closed]
    );

    // A retransmitted FIN in TIME-WAIT is re-acked and restarts the timer.
    deliver(&mut c, t(1000), &fin);
    assert_eq!(drain(&mut c, t(1000)).len(), 1);
    assert_eq!(c.poll_timeout(), Some(t(1000) + Duration::from_secs(5)));
    c.handle_timeout(t(6000));
    assert_eq!(c.state(), State::Closed);
    assert_eq!(
        events(&mut c),
        [
            StreamEvent::Readable,
            StreamEvent::PeerFinished,
            StreamEvent::Closed
        ]
    );
    assert_eq!(c.read(&mut buf), Err(ReadError::Finished));
}

#[test]
fn short_write_then_writable_when_acked() {
    let mut small = cfg();
    small.send_buffer(4096).unwrap();
    let (mut c, mut s) = established_with(small, cfg());
    assert_eq!(
        c.write(&[5; 10_000]),
        Ok(4096),
        "bounded by the send buffer"
    );
    assert_eq!(c.write(b"more"), Ok(0));
    assert_eq!(c.writable(), 0);
    let segs = drain(&mut c, t(20));
    deliver(&mut s, t(30), &segs);
    s.handle_timeout(t(55));
    deliver(&mut c, t(60), &drain(&mut s, t(55)));
    assert_eq!(events(&mut c), [StreamEvent::Writable]);
    assert_eq!(c.writable(), 4096);
}

#[test]
fn simultaneous_close_goes_through_closing() {
    let (mut c, mut s) = established(cfg());
    c.shutdown_write().unwrap();
    s.shutdown_write().unwrap();
    let cf = drain(&mut c, t(20));
    let sf = drain(&mut s, t(20));
    assert!(cf[0].repr().flags.contains(Flags::FIN) && sf[0].repr().flags.contains(Flags::FIN));
    deliver(&mut c, t(30), &sf);
    deliver(&mut s, t(30), &cf);
    assert_eq!((c.state(), s.state()), (State::Closing, State::Closing));
    let ca = drain(&mut c, t(30));
    let sa = drain(&mut s, t(30));
    deliver(&mut c, t(40), &sa);
    deliver(&mut s, t(40), &ca);
    assert_eq!((c.state(), s.state()), (State::TimeWait, State::TimeWait));
    assert_eq!(c.send_queue(), 0);
}

#[test]
fn rst_must_match_rcv_nxt_exactly() {
    let (mut c, _s) = established(cfg());
    let nxt = SERVER_ISN + 1;
    let rst = |seq| TcpRepr {
        flags: Flags::RST,
        ack_number: None,
        ..peer_seg(seq, SeqNumber(0), b"", 0)
    };
    c.handle_segment(t(20), &rst(nxt + 100_000_000));
    assert!(
        drain(&mut c, t(20)).is_empty(),
        "outside the window: ignored"
    );
    c.handle_segment(t(21), &rst(nxt + 10));
    let challenge = drain(&mut c, t(21));
    assert_eq!(challenge.len(), 1, "in window but not exact: challenge ACK");
    assert_eq!(challenge[0].repr().ack_number, Some(nxt));
    assert_eq!(c.state(), State::Established);
    assert_eq!(c.stats().challenge_acks, 1);
    c.handle_segment(t(22), &rst(nxt));
    assert_eq!(c.state(), State::Closed);
    assert_eq!(events(&mut c), [StreamEvent::Reset, StreamEvent::Closed]);
    assert_eq!(c.write(b"x"), Err(WriteError::Closed));
}

#[test]
fn syn_or_bad_ack_in_established_is_challenged() {
    let (mut c, _s) = established(cfg());
    let nxt = SERVER_ISN + 1;
    let syn = TcpRepr {
        flags: Flags::SYN,
        ..peer_seg(nxt, CLIENT_ISN + 1, b"", 20)
    };
    c.handle_segment(t(20), &syn);
    assert_eq!(drain(&mut c, t(20)).len(), 1);
    assert_eq!(c.state(), State::Established);
    // ACK of data never sent: ACK back, drop (the payload is not taken).
    c.handle_segment(t(21), &peer_seg(nxt, CLIENT_ISN + 500, b"zz", 21));
    assert_eq!(drain(&mut c, t(21)).len(), 1);
    assert_eq!(c.readable(), 0);
    // Far below SND.UNA - MAX.SND.WND (RFC 5961 §5.2).
    c.handle_segment(
        t(22),
        &peer_seg(
            nxt,
            SeqNumber((CLIENT_ISN.0 + 1).wrapping_sub(100_000_000)),
            b"zz",
            22,
        ),
    );
    assert_eq!(c.readable(), 0);
    assert_eq!(c.stats().dropped_segments, 3);
}

#[test]
fn abort_sends_rst_and_peer_resets() {
    let (mut c, mut s) = established(cfg());
    c.write(b"unsent?").unwrap();
    c.abort();
    let out = drain(&mut c, t(20));
    assert_eq!(out.len(), 1);
    let r = out[0].repr();
    assert!(r.flags.contains(Flags::RST));
    assert_eq!(c.state(), State::Closed);
    assert_eq!(events(&mut c), [StreamEvent::Closed]);
    deliver(&mut s, t(30), &out);
    assert_eq!(events(&mut s), [StreamEvent::Reset, StreamEvent::Closed]);
}

#[test]
fn paws_drops_old_timestamps() {
    let (mut c, _s) = established(cfg());
    let nxt = SERVER_ISN + 1;
    c.handle_segment(t(20), &peer_seg(nxt, CLIENT_ISN + 1, b"new", 1000));
    assert_eq!(c.readable(), 3);
    c.handle_segment(t(21), &peer_seg(nxt + 3, CLIENT_ISN + 1, b"old", 4));
    assert_eq!(c.readable(), 3, "TSval went backwards: old duplicate");
    let no_ts = TcpRepr {
        timestamps: None,
        ..peer_seg(nxt + 3, CLIENT_ISN + 1, b"x", 0)
    };
    c.handle_segment(t(22), &no_ts);
    assert_eq!(
        c.readable(),
        3,
        "timestamps negotiated: segments without are dropped"
    );
}

#[test]
fn zero_window_is_probed_and_reopens() {
    let mut small = cfg();
    small.recv_buffer(4096).unwrap();
    let (mut c, mut s) = established_with(cfg(), small);
    c.write(&[9; 10_000]).unwrap();
    let mut now = t(20);
    // Ping-pong until the receiver's buffer is full. The last 144 bytes wait for the
    // sender's silly-window override (the persist timer), as RFC 9293 §3.8.6.2.1 says.
    while c.stats().send_window > 0 {
        assert!(now < t(10_000));
        if c.poll_timeout().is_some_and(|at| at <= now) {
            c.handle_timeout(now);
        }
        let segs = drain(&mut c, now);
        now += Duration::from_millis(5);
        deliver(&mut s, now, &segs);
        s.handle_timeout(now + Duration::from_millis(25));
        let acks = drain(&mut s, now + Duration::from_millis(25));
        now += Duration::from_millis(30);
        deliver(&mut c, now, &acks);
    }
    assert_eq!(s.readable(), 4096);
    assert_eq!(c.stats().send_window, 0);
    assert!(drain(&mut c, now).is_empty());
    let persist = c.poll_timeout().expect("persist timer");
    c.handle_timeout(persist);
    let probe = drain(&mut c, persist);
    assert_eq!(probe.len(), 1);
    let p = probe[0].repr();
    assert!(p.payload.is_empty());
    assert_eq!(p.seq_number, CLIENT_ISN + 4096, "SND.UNA - 1");
    assert_eq!(c.stats().window_probes, 1);
    deliver(&mut s, persist, &probe);
    let reply = drain(&mut s, persist);
    assert_eq!(reply[0].repr().window_len, 0);
    deliver(&mut c, persist, &reply);
    let next = c.poll_timeout().unwrap();
    assert!(
        next - persist >= Duration::from_millis(400),
        "probes back off"
    );

    // The reader drains: a window update goes out, and the sender resumes.
    let mut buf = vec![0; 8192];
    assert_eq!(s.read(&mut buf), Ok(4096));
    let update = drain(&mut s, next);
    assert_eq!(update.len(), 1, "window update after the read");
    assert!(update[0].repr().window_len > 0);
    deliver(&mut c, next, &update);
    let more = drain(&mut c, next);
    assert!(!more.is_empty());
    assert_eq!(more[0].repr().seq_number, CLIENT_ISN + 1 + 4096);
}

#[test]
fn window_scale_applies_to_every_later_window() {
    let (mut c, mut s) = established(cfg());
    c.write(&[1; 100]).unwrap();
    let segs = drain(&mut c, t(20));
    assert_eq!(u32::from(segs[0].repr().window_len), (4 << 20) >> 7);
    deliver(&mut s, t(30), &segs);
    assert_eq!(s.stats().send_window, 4 << 20, "field 32768 << 7");
}

#[test]
fn rto_retransmits_with_backoff_and_times_out() {
    let mut config = cfg();
    config.user_timeout(Duration::from_secs(10)).unwrap();
    let (mut c, _s) = established(config);
    c.write(&[1; 100]).unwrap();
    let first = drain(&mut c, t(20));
    // srtt 10 ms, rttvar 5 ms: RTO = max(200 ms, 10 + 20) = 200 ms; then no TLP since the
    // PTO (2·srtt + ack delay = 45 ms) comes first.
    let pto = c.poll_timeout().unwrap();
    assert_eq!(pto, t(20) + Duration::from_millis(45));
    c.handle_timeout(pto);
    let probe = drain(&mut c, pto);
    assert_eq!(
        probe[0].repr().seq_number,
        first[0].repr().seq_number,
        "TLP re-sends the tail"
    );
    assert_eq!(c.stats().tlp_probes, 1);
    let mut at = c.poll_timeout().unwrap();
    let mut gaps = Vec::new();
    while c.state() != State::Closed {
        c.handle_timeout(at);
        let out = drain(&mut c, at);
        if let Some(next) = c.poll_timeout() {
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].repr().payload.len(), 100);
            gaps.push((next - at).as_millis());
            at = next;
        }
    }
    assert_eq!(gaps[..4], [400, 800, 1600, 3200], "RTO doubles");
    assert_eq!(events(&mut c), [StreamEvent::TimedOut, StreamEvent::Closed]);
    assert!(c.stats().rto_timeouts >= 5);
}

#[test]
fn rack_retransmits_a_hole_without_waiting_for_the_rto() {
    let (mut c, mut s) = established(cfg());
    c.write(&[1; 6 * SMSS]).unwrap();
    let segs = drain(&mut c, t(20));
    assert_eq!(segs.len(), 6);
    // Segment 1 is lost.
    let mut kept = segs.clone();
    kept.remove(1);
    deliver(&mut s, t(30), &kept);
    let acks = drain(&mut s, t(30));
    deliver(&mut c, t(40), &acks);
    // RACK: the SACKed segments were sent after the hole; after the reordering window
    // (0 here: 3+ segments SACKed and no reordering seen) it is lost.
    let rtx = drain(&mut c, t(40));
    assert_eq!(rtx.len(), 1);
    assert_eq!(rtx[0].repr().seq_number, segs[1].repr().seq_number);
    let st = c.stats();
    assert_eq!(
        (st.retransmits, st.rto_timeouts, st.congestion_events),
        (1, 0, 1)
    );
    assert!(st.cwnd < 10 * SMSS as u64, "CUBIC reduced: {}", st.cwnd);
    deliver(&mut s, t(50), &rtx);
    let ack = drain(&mut s, t(50));
    assert_eq!(
        ack[0].repr().ack_number,
        Some(CLIENT_ISN + 1 + 6 * SMSS as u32)
    );
    deliver(&mut c, t(60), &ack);
    assert_eq!(c.send_queue(), 0);
}

#[test]
fn a_reneged_sack_is_repaired_by_the_rto() {
    let (mut c, mut s) = established(cfg());
    c.write(&[1; 2 * SMSS]).unwrap();
    let segs = drain(&mut c, t(20));
    // A lying receiver SACKs the first segment but never acknowledges it.
    let lie = TcpRepr {
        sack_blocks: [SackBlock {
            left: CLIENT_ISN + 1,
            right: CLIENT_ISN + 1 + SMSS as u32,
        }]
        .into_iter()
        .collect(),
        ..peer_seg(SERVER_ISN + 1, CLIENT_ISN + 1, b"", 30)
    };
    c.handle_segment(t(30), &lie);
    let mut at = t(30);
    let mut first_again = false;
    for _ in 0..10 {
        at = c.poll_timeout().unwrap();
        c.handle_timeout(at);
        let out = drain(&mut c, at);
        first_again |= out.iter().any(|o| o.repr().seq_number == CLIENT_ISN + 1);
        if first_again {
            break;
        }
    }
    assert!(first_again, "the left edge is re-sent despite its SACK");
    deliver(&mut s, at, &segs);
    deliver(&mut c, at, &drain(&mut s, at));
    assert_eq!(c.send_queue(), 0);
}

#[test]
fn reordering_within_the_window_is_not_loss() {
    let (mut c, mut s) = established(cfg());
    c.write(&[1; 2 * SMSS]).unwrap();
    let segs = drain(&mut c, t(20));
    // The second arrives first: one SACKed segment, reo_wnd = min_rtt / 4 = 2.5 ms.
    deliver(&mut s, t(30), &segs[1..]);
    deliver(&mut c, t(40), &drain(&mut s, t(30)));
    assert!(drain(&mut c, t(40)).is_empty());
    let reorder = c.poll_timeout().unwrap();
    assert!(
        reorder < t(45),
        "reordering timer, not the RTO: {reorder:?}"
    );
    deliver(&mut s, t(41), &segs[..1]);
    deliver(&mut c, t(41), &drain(&mut s, t(41)));
    assert_eq!(c.stats().retransmits, 0);
    assert_eq!(c.send_queue(), 0);
}

#[test]
fn path_change_retransmits_without_cutting_cwnd() {
    let (mut c, mut s) = established(cfg());
    c.write(&[3; 8 * SMSS]).unwrap();
    let segs = drain(&mut c, t(20));
    assert_eq!(segs.len(), 8);
    let cwnd = c.stats().cwnd;
    // The old path dies with everything in flight; the SAL migrates.
    c.freeze();
    assert_eq!(c.poll_timeout(), None, "loss timers suspended while frozen");
    c.on_path_change(t(300));
    let rtx = drain(&mut c, t(300));
    assert_eq!(rtx.len(), 8, "all outstanding data at once");
    // Some pre-move packets still arrive late, and the receiver SACKs: RACK would call
    // the early ones lost, but they predate the move.
    deliver(&mut s, t(310), &segs[4..]);
    deliver(&mut c, t(320), &drain(&mut s, t(310)));
    deliver(&mut s, t(321), &rtx);
    deliver(&mut c, t(330), &drain(&mut s, t(321)));
    assert_eq!(c.send_queue(), 0);
    let st = c.stats();
    assert_eq!(st.congestion_events, 0);
    assert!(st.cwnd >= cwnd, "cwnd kept: {} < {cwnd}", st.cwnd);
    assert_eq!(st.path_changes, 1);
}

#[test]
fn keepalive_probes_then_times_out() {
    let mut config = cfg();
    config.keepalive(Some(KeepaliveConfig {
        idle: Duration::from_secs(10),
        interval: Duration::from_secs(1),
        probes: 2,
    }));
    let (mut c, mut s) = established(config);
    let at = c.poll_timeout().unwrap();
    assert_eq!(at, t(10) + Duration::from_secs(10));
    c.handle_timeout(at);
    let probe = drain(&mut c, at);
    assert_eq!(probe[0].repr().seq_number, CLIENT_ISN, "SND.UNA - 1");
    // The peer answers: the stream stays up.
    deliver(&mut s, at, &probe);
    deliver(&mut c, at, &drain(&mut s, at));
    assert_eq!(c.poll_timeout(), Some(at + Duration::from_secs(10)));
    // Now the peer is gone: 2 probes, then time out.
    let mut at = c.poll_timeout().unwrap();
    while c.state() != State::Closed {
        c.handle_timeout(at);
        let _ = drain(&mut c, at);
        at = c.poll_timeout().unwrap_or(at);
    }
    assert_eq!(c.stats().keepalive_probes, 3);
    assert_eq!(events(&mut c), [StreamEvent::TimedOut, StreamEvent::Closed]);
}

#[test]
fn idle_timeout_closes() {
    let mut config = cfg();
    config.idle_timeout(Some(Duration::from_secs(30)));
    let (mut c, _s) = established(config);
    let at = c.poll_timeout().unwrap();
    assert_eq!(at, t(10) + Duration::from_secs(30));
    c.handle_timeout(at);
    assert_eq!(events(&mut c), [StreamEvent::TimedOut, StreamEvent::Closed]);
}

#[test]
fn nagle_holds_small_segments_while_data_is_unacked() {
    let mut config = cfg();
    config.nagle(true);
    let (mut c, mut s) = established(config);
    c.write(b"a").unwrap();
    let a = drain(&mut c, t(20));
    assert_eq!(a.len(), 1);
    c.write(b"b").unwrap();
    c.write(b"c").unwrap();
    assert!(
        drain(&mut c, t(21)).is_empty(),
        "held: 'a' is unacknowledged"
    );
    deliver(&mut s, t(30), &a);
    s.handle_timeout(t(55));
    deliver(&mut c, t(60), &drain(&mut s, t(55)));
    let bc = drain(&mut c, t(60));
    assert_eq!(bc.len(), 1);
    assert_eq!(
        bc[0].repr().payload,
        b"bc",
        "coalesced once 'a' is acknowledged"
    );
    let (mut c2, _) = established(cfg());
    c2.write(b"a").unwrap();
    let _ = drain(&mut c2, t(20));
    c2.write(b"b").unwrap();
    assert_eq!(drain(&mut c2, t(21)).len(), 1, "Nagle is off by default");
}

#[test]
fn challenge_acks_are_rate_limited() {
    let (mut c, _s) = established(cfg());
    let syn = TcpRepr {
        flags: Flags::SYN,
        ..peer_seg(SERVER_ISN + 1, CLIENT_ISN + 1, b"", 20)
    };
    for _ in 0..50 {
        c.handle_segment(t(20), &syn);
    }
    assert_eq!(c.stats().challenge_acks, 10);
}

#[test]
fn garbage_never_panics() {
    let (mut c, _s) = established(cfg());
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for i in 0..2000 {
        let len = rng.random_range(0..80);
        let mut bytes = vec![0u8; len];
        rng.fill_bytes(&mut bytes);
        if len >= 20 {
            bytes[12] = 5 << 4; // mostly parseable headers
        }
        let _ = c.handle_bytes(t(20 + i), &bytes);
        let _ = drain(&mut c, t(20 + i));
        if let Some(at) = c.poll_timeout() {
            c.handle_timeout(at);
        }
    }
}

#[test]
fn adversarial_segments_near_the_window_never_panic() {
    // Random seq/ack/SACK/flags close to the live window reach the deep paths (SACK
    // scoreboard, RACK, reassembly, FIN and RST handling) that pure garbage does not.
    for seed in 0..8 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut c, _s) = established(cfg());
        let mut now = t(20);
        let mut ts = 10_000u32;
        let mut buf = vec![0u8; 4096];
        for _ in 0..3000 {
            if rng.random_bool(0.2) {
                let _ = c.write(&buf[..rng.random_range(0..4096)]);
            }
            if rng.random_bool(0.01) {
                let _ = c.shutdown_write();
            }
            let around = |rng: &mut ChaCha8Rng, base: SeqNumber, spread: i32| {
                base.wrapping_add(rng.random_range(-spread..spread * 8) as u32)
            };
            let ack_base = CLIENT_ISN + 1 + (c.stats().bytes_acked as u32);
            let mut blocks = SackBlocks::EMPTY;
            for _ in 0..rng.random_range(0..4) {
                let left = around(&mut rng, ack_base, 3000);
                let right = left.wrapping_add(rng.random_range(0..5000));
                blocks.push(SackBlock { left, right });
            }
            let payload_len = rng.random_range(0..2000);
            ts = ts.wrapping_add(rng.random_range(0..2000)).wrapping_sub(100);
            let seg = TcpRepr {
                seq_number: around(&mut rng, SERVER_ISN + 1, 2000),
                ack_number: rng
                    .random_bool(0.95)
                    .then(|| around(&mut rng, ack_base, 2000)),
                flags: Flags(
                    rng.random::<u8>() & 0xcf & if rng.random_bool(0.9) { 0xf8 } else { 0xff },
                ),
                window_len: rng.random(),
                sack_blocks: blocks,
                timestamps: rng.random_bool(0.97).then_some(Timestamps {
                    tsval: ts,
                    tsecr: rng.random(),
                }),
                payload: &buf[..payload_len],
                ..TcpRepr::default()
            };
            c.handle_segment(now, &seg);
            let _ = drain(&mut c, now);
            while c.read(&mut buf).is_ok_and(|n| n > 0) {}
            now += Duration::from_millis(rng.random_range(0..30));
            if let Some(at) = c.poll_timeout().filter(|&at| at <= now) {
                c.handle_timeout(at);
            }
            let st = c.stats();
            assert!(st.bytes_in_flight <= st.bytes_sent + 1, "pipe accounting");
            assert!(
                st.srtt <= now - t(0),
                "bogus TSecr values never become RTT samples"
            );
            if c.state() == State::Closed {
                break;
            }
        }
        let _ = events(&mut c);
        buf.fill(0);
    }
}

// -------------------------------------------------------------------------------------
// The two-stream harness.

/// One direction of the simulated path.
#[derive(Debug, Clone)]
struct Link {
    latency: Duration,
    /// Bottleneck, bytes per second; `None` = unlimited.
    rate: Option<u64>,
    /// Bytes the bottleneck queue holds before tail drop.
    queue: u64,
    loss: f64,
    duplicate: f64,
    /// Probability of an extra delay of up to `jitter` (reorders packets).
    reorder: f64,
    jitter: Duration,
    busy_until: Timestamp,
}

impl Link {
    fn new(latency_ms: u64) -> Self {
        Self {
            latency: Duration::from_millis(latency_ms),
            rate: None,
            queue: 1 << 20,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            jitter: Duration::ZERO,
            busy_until: Timestamp::ZERO,
        }
    }
}

type InFlight = BinaryHeap<Reverse<(Timestamp, u64, bool, Vec<u8>)>>;

/// Two streams joined by a pair of links; `a` is the client.
struct Pair {
    a: Stream,
    b: Stream,
    now: Timestamp,
    links: [Link; 2],
    in_flight: InFlight,
    counter: u64,
    rng: ChaCha8Rng,
    dropped: u64,
}

impl Pair {
    fn new(config: StreamConfig, links: [Link; 2], seed: u64) -> Self {
        let config = Arc::new(config);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut syn = Vec::new();
        let now = Timestamp::ZERO;
        let (mut a, _) = Stream::client(config.clone(), SeqNumber(rng.random()), now, &mut syn);
        let syn = TcpRepr::parse_bytes(&syn).unwrap();
        // The SAL delivers the handshake reliably; model one RTT for it.
        let rtt = links[0].latency + links[1].latency;
        let mut synack = Vec::new();
        let (b, _) =
            Stream::server(config, SeqNumber(rng.random()), now, &syn, &mut synack).unwrap();
        a.handle_bytes(now + rtt, &synack).unwrap();
        let mut pair = Self {
            a,
            b,
            now: now + rtt,
            links,
            in_flight: BinaryHeap::new(),
            counter: 0,
            rng,
            dropped: 0,
        };
        pair.transmit();
        pair
    }

    /// Moves every segment both streams want to send onto the links.
    fn transmit(&mut self) {
        for to_b in [true, false] {
            loop {
                let mut buf = Vec::new();
                let stream = if to_b { &mut self.a } else { &mut self.b };
                if stream.poll_transmit(self.now, &mut buf).is_none() {
                    break;
                }
                self.send(to_b, buf);
            }
        }
    }

    fn send(&mut self, to_b: bool, bytes: Vec<u8>) {
        let link = &mut self.links[usize::from(!to_b)];
        if self.rng.random_bool(link.loss) {
            self.dropped += 1;
            return;
        }
        let mut depart = self.now;
        if let Some(rate) = link.rate {
            let start = link.busy_until.max(self.now);
            let backlog = (start - self.now).as_micros() as u64 * rate / 1_000_000;
            if backlog > link.queue {
                self.dropped += 1;
                return;
            }
            depart = start + Duration::from_micros(bytes.len() as u64 * 1_000_000 / rate);
            link.busy_until = depart;
        }
        let mut arrive = depart + link.latency;
        if link.reorder > 0.0 && self.rng.random_bool(link.reorder) {
            arrive += link.jitter.mul_f64(self.rng.random::<f64>());
        }
        let dup = link.duplicate > 0.0 && self.rng.random_bool(link.duplicate);
        self.counter += 1;
        if dup {
            self.in_flight.push(Reverse((
                arrive + Duration::from_micros(50),
                self.counter,
                to_b,
                bytes.clone(),
            )));
            self.counter += 1;
        }
        self.in_flight
            .push(Reverse((arrive, self.counter, to_b, bytes)));
    }

    /// Advances virtual time to the next event and processes it; `false` when idle.
    fn step(&mut self) -> bool {
        let next_arrival = self.in_flight.peek().map(|Reverse((at, ..))| *at);
        let next = [next_arrival, self.a.poll_timeout(), self.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next else { return false };
        self.now = self.now.max(next);
        while let Some(Reverse((at, ..))) = self.in_flight.peek() {
            if *at > self.now {
                break;
            }
            let Some(Reverse((_, _, to_b, bytes))) = self.in_flight.pop() else {
                break;
            };
            let stream = if to_b { &mut self.b } else { &mut self.a };
            stream.handle_bytes(self.now, &bytes).unwrap();
        }
        for stream in [&mut self.a, &mut self.b] {
            if stream.poll_timeout().is_some_and(|t| t <= self.now) {
                stream.handle_timeout(self.now);
            }
        }
        true
    }
}

/// Order-sensitive 64-bit hash (FNV-1a over 8-byte words, cheap in debug builds).
#[derive(Debug, Clone, Copy)]
struct Hash(u64, usize);

impl Hash {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325, 0)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 =
                (self.0 ^ u64::from(b) ^ ((self.1 as u64) << 8)).wrapping_mul(0x0100_0000_01b3);
            self.1 = self.1.wrapping_add(1);
        }
    }
}

/// Result of one transfer.
#[derive(Debug)]
struct Transfer {
    bytes: usize,
    elapsed: Duration,
    a: StreamStats,
    b: StreamStats,
    dropped: u64,
}

impl Transfer {
    fn goodput_mbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// Sends `len` seeded-random bytes a → b (and, if `both`, b → a at the same time), closes
/// both directions, and checks hashes and clean closes.
fn transfer(
    pair: &mut Pair,
    len: usize,
    both: bool,
    mut each_step: impl FnMut(&mut Pair),
) -> Transfer {
    let mut data = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(len as u64).fill_bytes(&mut data);
    let mut want = Hash::new();
    want.update(&data);
    let start = pair.now;
    let (mut sent, mut got) = ([0usize; 2], [Hash::new(); 2]);
    let mut done = [false; 2];
    let mut buf = vec![0u8; 64 * 1024];
    let mut steps = 0u64;
    loop {
        for (i, stream) in [&mut pair.a, &mut pair.b].into_iter().enumerate() {
            let sending = i == 0 || both;
            if sending && sent[i] < len {
                sent[i] += stream.write(&data[sent[i]..]).unwrap();
                if sent[i] == len {
                    stream.shutdown_write().unwrap();
                }
            } else if !sending && sent[i] == 0 {
                stream.shutdown_write().unwrap();
                sent[i] = usize::MAX;
            }
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got[1 - i].update(&buf[..n]),
                    Err(ReadError::Finished) => {
                        done[1 - i] = true;
                        break;
                    }
                    Err(e) => panic!("read failed: {e}"),
                }
            }
        }
        pair.transmit();
        each_step(pair);
        let closed = [&pair.a, &pair.b]
            .iter()
            .all(|s| matches!(s.state(), State::TimeWait | State::Closed));
        if done[0] && (done[1] || !both) && closed {
            break;
        }
        assert!(
            pair.step(),
            "deadlock: a={:?} b={:?}",
            pair.a.state(),
            pair.b.state()
        );
        steps += 1;
        assert!(steps < 20_000_000, "no progress");
        assert!(
            pair.now - start < Duration::from_secs(3600),
            "transfer took over an hour"
        );
    }
    assert_eq!((got[0].0, got[0].1), (want.0, len), "a → b bytes differ");
    if both {
        assert_eq!((got[1].0, got[1].1), (want.0, len), "b → a bytes differ");
    }
    Transfer {
        bytes: len,
        elapsed: pair.now - start,
        a: pair.a.stats(),
        b: pair.b.stats(),
        dropped: pair.dropped,
    }
}

/// 4 MB in debug builds, 16 MB in release (`cargo test --release`, what CI runs).
fn transfer_len() -> usize {
    if cfg!(debug_assertions) {
        4 << 20
    } else {
        16 << 20
    }
}

/// 100 Mbit/s bottleneck with a one-BDP queue, 20 ms RTT.
fn bottleneck_links(loss: f64) -> [Link; 2] {
    let mut l = Link::new(10);
    l.rate = Some(12_500_000);
    l.queue = 250_000;
    l.loss = loss;
    [l.clone(), l]
}

fn run(algorithm: CongestionAlgorithm, loss: f64, seed: u64) -> Transfer {
    let mut config = StreamConfig::default();
    config.congestion(algorithm);
    let mut pair = Pair::new(config, bottleneck_links(loss), seed);
    transfer(&mut pair, transfer_len(), false, |_| {})
}

fn report(name: &str, r: &Transfer) {
    println!(
        "{name}: {:.1} Mbit/s ({} bytes in {:.3} s) retx={} rto={} tlp={} spurious={} \
         cong={} dropped={} lost={} dup_rx={} srtt={:?}",
        r.goodput_mbps(),
        r.bytes,
        r.elapsed.as_secs_f64(),
        r.a.retransmits,
        r.a.rto_timeouts,
        r.a.tlp_probes,
        r.a.spurious_retransmits,
        r.a.congestion_events,
        r.dropped,
        r.a.lost_segments,
        r.b.duplicate_segments,
        r.a.srtt,
    );
}

#[test]
fn transfer_without_loss() {
    let r = run(CongestionAlgorithm::Cubic, 0.0, 1);
    report("cubic 0%", &r);
    assert_eq!(r.b.bytes_received, r.bytes as u64);
}

#[test]
fn hystart_leaves_slow_start_before_a_deep_queue_overflows() {
    // A 4-BDP queue: plain slow start would double into it until it overflows; HyStart++
    // sees the round's minimum RTT rise and hands over to CUBIC first.
    let mut links = bottleneck_links(0.0);
    for l in &mut links {
        l.queue = 1_000_000;
    }
    let mut pair = Pair::new(StreamConfig::default(), links, 11);
    let r = transfer(&mut pair, transfer_len(), false, |_| {});
    report("cubic 0%, deep queue", &r);
    assert_eq!(r.dropped, 0, "no queue overflow");
    assert_eq!(r.a.congestion_events, 0);
    assert!(
        r.a.ssthresh < u64::MAX / 4,
        "slow start ended without a loss"
    );
}

#[test]
fn transfer_at_1_percent_loss() {
    let r = run(CongestionAlgorithm::Cubic, 0.01, 2);
    report("cubic 1%", &r);
    assert!(r.a.retransmits > 0);
}

#[test]
fn transfer_at_5_percent_loss() {
    report("cubic 5%", &run(CongestionAlgorithm::Cubic, 0.05, 3));
}

#[test]
fn transfer_at_10_percent_loss() {
    report("cubic 10%", &run(CongestionAlgorithm::Cubic, 0.10, 4));
}

#[test]
fn cubic_and_newreno_under_loss() {
    for loss in [0.01, 0.05] {
        let cubic = run(CongestionAlgorithm::Cubic, loss, 10);
        let reno = run(CongestionAlgorithm::NewReno, loss, 10);
        report(&format!("cubic {}%", loss * 100.0), &cubic);
        report(&format!("newreno {}%", loss * 100.0), &reno);
    }
}

#[test]
fn transfer_with_reordering_and_duplication() {
    let mut links = bottleneck_links(0.01);
    for l in &mut links {
        l.reorder = 0.05;
        l.jitter = Duration::from_millis(5);
        l.duplicate = 0.02;
    }
    let mut pair = Pair::new(StreamConfig::default(), links, 5);
    let r = transfer(&mut pair, transfer_len() / 2, false, |_| {});
    report("reorder+dup 1%", &r);
    assert!(r.b.duplicate_segments > 0);
}

#[test]
fn bidirectional_transfer_with_loss() {
    let mut pair = Pair::new(StreamConfig::default(), bottleneck_links(0.02), 6);
    let r = transfer(&mut pair, transfer_len() / 4, true, |_| {});
    report("both ways 2%", &r);
    // One side ends in TIME-WAIT, the other CLOSED: neither pins buffers.
    assert!(pair.a.state() == State::TimeWait || pair.b.state() == State::TimeWait);
    assert_eq!(pair.a.allocated() + pair.b.allocated(), 0);
}

#[test]
fn small_buffers_and_no_sack_still_deliver() {
    let mut config = StreamConfig::default();
    config
        .send_buffer(16 * 1024)
        .unwrap()
        .recv_buffer(8 * 1024)
        .unwrap()
        .sack(false)
        .timestamps(false);
    let mut pair = Pair::new(config, bottleneck_links(0.02), 7);
    let r = transfer(&mut pair, 512 * 1024, false, |_| {});
    report("no SACK, 8 KiB window, 2%", &r);
}

#[test]
fn migration_mid_transfer_keeps_cwnd() {
    let mut pair = Pair::new(StreamConfig::default(), bottleneck_links(0.005), 8);
    let mut moved = false;
    let mut cwnd_before = 0;
    let mut events_before = 0;
    let r = transfer(&mut pair, transfer_len() / 2, false, |p| {
        if !moved && p.a.stats().bytes_acked > (transfer_len() / 8) as u64 {
            moved = true;
            // The old path black-holes what is in flight; the SAL migrates.
            p.in_flight.clear();
            cwnd_before = p.a.stats().cwnd;
            events_before = p.a.stats().congestion_events;
            p.a.freeze();
            p.now += Duration::from_millis(50);
            p.a.on_path_change(p.now);
            p.b.on_path_change(p.now);
            let after = p.a.stats();
            assert_eq!(after.cwnd, cwnd_before);
            p.transmit();
            // Losses of pre-move segments, detected now, do not count.
            for _ in 0..50 {
                p.step();
                p.transmit();
            }
            assert_eq!(
                p.a.stats().congestion_events,
                events_before,
                "no cut for the old path"
            );
        }
    });
    assert!(moved);
    report("migration", &r);
    assert_eq!((r.a.path_changes, r.b.path_changes), (1, 1));
}
