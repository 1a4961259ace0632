//! An off-path attacker: forges SAL datagrams with the stack's own wire types and sprays
//! them over UDP at a deployment, bounded in rate, count and duration.
//!
//! What it models (`docs/PROTOCOL.md` §2.9, §2.10): an attacker who can send UDP from
//! addresses of its own but sees none of the victims' traffic. It never has a flow's keys
//! or nonces; depending on [`FlowIds`] it guesses FlowIDs at random, sweeps a range, or is
//! told real ones ("leaked", e.g. read from an admin API), which shows that the MAC and
//! sequence checks hold even when FlowID entropy is gone.
//!
//! Packet kinds ([`Kind`]): forged RST, FIN, RSYN (migration), PATH_CHALLENGE (each with a
//! random MAC tag, or none: the attacker has no key), connected data (a TCP segment with
//! random sequence, acknowledgement and timestamps), and SYN (a well-formed handshake
//! opener with a random key share, for floods). [`forge_registration`] builds REGISTER /
//! UNREGISTER control messages for spoofing tests.
//!
//! [`spray`] is blocking (one thread, plain sockets) so it runs the same under the
//! `serval-attack` binary and inside a tokio test (`spawn_blocking`).

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serval_stack::sal::{HOST_CONTROL_SERVICE, ROUTER_CONTROL_SERVICE};
use serval_stack::wire::control_msg::{
    MsgBody, Packet as MsgPacket, REGISTER_MAC_LEN, REGISTER_MSG_LEN, RegisterRepr, RetVal,
};
use serval_stack::wire::sal::{ControlFlags, ControlRepr, Packet, Protocol, ServiceRepr};
use serval_stack::wire::tcp::{Flags, SeqNumber, TcpRepr, Timestamps};
use serval_stack::wire::{ControlMsg, FlowId, Nonce, SalRepr, ServiceId, ServicePrefix};
use sha2::Sha256;

/// What a forged datagram pretends to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Kind {
    /// CONTROL(RST) on a connected flow: would end it.
    Rst,
    /// CONTROL(FIN|ACK): would close the peer's direction.
    Fin,
    /// CONTROL(RSYN): would announce a migration to the attacker's address.
    Rsyn,
    /// CONTROL(ACK) with a PATH_CHALLENGE: would make the victim answer (a reflection).
    PathChallenge,
    /// A connected data packet (bare base header, TCP segment with payload).
    Data,
    /// A SYN for a service, with a random key share and a TCP SYN segment (floods).
    Syn,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Self; 6] = [
        Self::Rst,
        Self::Fin,
        Self::Rsyn,
        Self::PathChallenge,
        Self::Data,
        Self::Syn,
    ];

    /// The kinds aimed at existing flows (everything but SYN).
    pub const FORGED: [Self; 5] = [
        Self::Rst,
        Self::Fin,
        Self::Rsyn,
        Self::PathChallenge,
        Self::Data,
    ];

    /// Short name, as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rst => "rst",
            Self::Fin => "fin",
            Self::Rsyn => "rsyn",
            Self::PathChallenge => "path-challenge",
            Self::Data => "data",
            Self::Syn => "syn",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Rst => 0,
            Self::Fin => 1,
            Self::Rsyn => 2,
            Self::PathChallenge => 3,
            Self::Data => 4,
            Self::Syn => 5,
        }
    }
}

/// How the attacker picks the FlowIDs it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowIds {
    /// Destination and source FlowIDs drawn at random (non-zero) for every packet.
    Random,
    /// Destination FlowIDs `start, start+1, …, end`, then again from `start` (brute
    /// force); source FlowIDs random.
    Sweep {
        /// First destination FlowID of the range (0 is skipped).
        start: u32,
        /// Last destination FlowID of the range (inclusive).
        end: u32,
    },
    /// Real FlowIDs the attacker learned (an admin listing), but not the keys or nonces:
    /// `dst` is the victim's local FlowID, `src` its peer's (random when unknown).
    Leaked {
        /// The victim's FlowID.
        dst: FlowId,
        /// The victim's peer's FlowID, if leaked too.
        src: Option<FlowId>,
    },
}

impl FlowIds {
    /// Short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::Sweep { .. } => "sweep",
            Self::Leaked { .. } => "leaked",
        }
    }

    /// The (destination, source) pair of the `i`-th packet.
    fn pick(&self, i: u64, rng: &mut impl RngCore) -> (FlowId, FlowId) {
        let random = |rng: &mut dyn RngCore| loop {
            if let Some(id) = FlowId::new(rng.next_u32()) {
                return id;
            }
        };
        match *self {
            Self::Random => (random(rng), random(rng)),
            Self::Sweep { start, end } => {
                let (lo, hi) = (start.min(end).max(1), start.max(end).max(1));
                let span = u64::from(hi - lo) + 1;
                let raw = u64::from(lo) + i % span;
                let dst = FlowId::new(raw as u32).unwrap_or_else(|| random(rng));
                (dst, random(rng))
            }
            Self::Leaked { dst, src } => (dst, src.unwrap_or_else(|| random(rng))),
        }
    }
}

/// Builds one forged datagram of `kind` from `dst_flow`'s peer `src_flow`, with random
/// versions, nonces, tags and segment fields from `rng`. SYNs ask for `service` (their
/// FlowIDs: `src_flow` as the client's, destination 0).
///
/// Every datagram parses ([`SalRepr::parse_datagram`]) with a correct checksum: the
/// victims must reject it on its merits (FlowID, MAC, sequence), not on framing.
pub fn forge(
    kind: Kind,
    dst_flow: FlowId,
    src_flow: FlowId,
    service: ServiceId,
    rng: &mut impl RngCore,
) -> Vec<u8> {
    let control = |flags, rng: &mut dyn RngCore| ControlRepr {
        flags,
        verno: rng.next_u32(),
        ackno: rng.next_u32(),
        nonce: Nonce(rng.random()),
    };
    let mut repr = SalRepr::new(Some(src_flow), Some(dst_flow), Protocol::TCP);
    let mut segment = Vec::new();
    match kind {
        Kind::Rst => repr.control = Some(control(ControlFlags::RST, rng)),
        Kind::Fin => repr.control = Some(control(ControlFlags::FIN | ControlFlags::ACK, rng)),
        Kind::Rsyn => repr.control = Some(control(ControlFlags::RSYN, rng)),
        Kind::PathChallenge => {
            repr.control = Some(control(ControlFlags::ACK, rng));
            repr.path_challenge = Some(rng.random());
        }
        Kind::Data => {
            let mut payload = [0u8; 64];
            rng.fill_bytes(&mut payload);
            segment = tcp_segment(&TcpRepr {
                seq_number: SeqNumber(rng.next_u32()),
                ack_number: Some(SeqNumber(rng.next_u32())),
                flags: Flags::PSH,
                window_len: 0xffff,
                timestamps: Some(Timestamps {
                    tsval: rng.next_u32(),
                    tsecr: rng.next_u32(),
                }),
                payload: &payload,
                ..TcpRepr::default()
            });
        }
        Kind::Syn => {
            repr.dst_flow = None;
            let mut c = control(ControlFlags::SYN, rng);
            c.ackno = 0;
            repr.control = Some(c);
            repr.service = Some(ServiceRepr {
                dst: service,
                src: None,
            });
            repr.key_share = Some(rng.random());
            segment = tcp_segment(&TcpRepr {
                seq_number: SeqNumber(rng.next_u32()),
                flags: Flags::SYN,
                window_len: 0xffff,
                max_seg_size: Some(1400),
                window_scale: Some(7),
                sack_permitted: true,
                timestamps: Some(Timestamps {
                    tsval: rng.next_u32(),
                    tsecr: 0,
                }),
                ..TcpRepr::default()
            });
        }
    }
    // The attacker has no key: a random tag, or none at all (every other packet).
    if repr.control.is_some() && kind != Kind::Syn && rng.random::<bool>() {
        repr.mac = Some(rng.random());
    }
    let header = repr.buffer_len();
    let mut out = vec![0u8; header + segment.len()];
    out[header..].copy_from_slice(&segment);
    repr.emit(&mut Packet::new_unchecked(&mut out[..]));
    out
}

fn tcp_segment(tcp: &TcpRepr<'_>) -> Vec<u8> {
    let mut out = vec![0u8; tcp.buffer_len()];
    tcp.emit(&mut serval_stack::wire::tcp::Packet::new_unchecked(
        &mut out[..],
    ));
    out
}

/// A spray: what to send, where, from where, and its bounds. The spray stops at the first
/// bound reached (`count` packets or `duration`); `rate` caps packets per second.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Victims' UDP addresses, used in turn.
    pub targets: Vec<SocketAddr>,
    /// Kinds to forge, used in turn.
    pub kinds: Vec<Kind>,
    /// FlowID strategy.
    pub flow_ids: FlowIds,
    /// ServiceID SYNs ask for.
    pub service: ServiceId,
    /// Most packets in all.
    pub count: u64,
    /// Most packets per second (0: as fast as the sockets take them).
    pub rate: u64,
    /// Longest the spray runs.
    pub duration: Duration,
    /// Source IPs (e.g. `127.0.0.2`, `127.0.0.3`); one socket per (IP, port slot).
    pub sources: Vec<IpAddr>,
    /// Sockets (distinct source ports) per source IP.
    pub sockets_per_source: usize,
    /// RNG seed: the same plan sends the same bytes.
    pub seed: u64,
}

impl Plan {
    /// A plan spraying every forged kind at `targets` with random FlowIDs from one loopback
    /// socket, at most 1000 packets in 10 s at 10 000 packets/s; adjust the fields.
    pub fn new(targets: Vec<SocketAddr>) -> Self {
        Self {
            targets,
            kinds: Kind::FORGED.to_vec(),
            flow_ids: FlowIds::Random,
            service: ServiceId::from_u32(0),
            count: 1000,
            rate: 10_000,
            duration: Duration::from_secs(10),
            sources: vec![IpAddr::from([127, 0, 0, 1])],
            sockets_per_source: 1,
            seed: 1,
        }
    }
}

/// What a spray did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Packets sent, by [`Kind`] (index: [`Kind::ALL`] order).
    pub sent: [u64; 6],
    /// Sends the kernel refused (buffer full, unreachable).
    pub send_errors: u64,
    /// Datagrams that came back to the attacker's sockets (SYN-ACKs, refusals,
    /// challenges), read after the spray.
    pub replies: u64,
    /// How long the spray ran.
    pub elapsed: Duration,
}

impl Report {
    /// Packets sent of `kind`.
    pub fn sent(&self, kind: Kind) -> u64 {
        self.sent[kind.index()]
    }

    /// Packets sent in all.
    pub fn total(&self) -> u64 {
        self.sent.iter().sum()
    }

    /// Packets per second achieved.
    pub fn rate(&self) -> f64 {
        self.total() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Adds the counts and time of a spray run after this one (several sprays, one
    /// figure).
    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.sent.iter_mut().zip(other.sent) {
            *a += b;
        }
        self.send_errors += other.send_errors;
        self.replies += other.replies;
        self.elapsed += other.elapsed;
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sent")?;
        for k in Kind::ALL {
            if self.sent(k) > 0 {
                write!(f, " {}={}", k.name(), self.sent(k))?;
            }
        }
        write!(
            f,
            " total={} in {:.2?} ({:.0}/s), send errors {}, replies {}",
            self.total(),
            self.elapsed,
            self.rate(),
            self.send_errors,
            self.replies
        )
    }
}

/// Most sockets a plan may open (file descriptors are a bound too).
pub const MAX_SOCKETS: usize = 1024;

/// Runs `plan`, blocking the calling thread until a bound is reached.
///
/// Errors: a plan with no target, no kind or no source, more than [`MAX_SOCKETS`]
/// sockets, or a socket that cannot be bound. Send errors are counted, not returned (a
/// full buffer under a flood is expected).
pub fn spray(plan: &Plan) -> io::Result<Report> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
    if plan.targets.is_empty() || plan.kinds.is_empty() || plan.sources.is_empty() {
        return Err(invalid("a plan needs targets, kinds and sources"));
    }
    let n = plan.sources.len() * plan.sockets_per_source.max(1);
    if n > MAX_SOCKETS {
        return Err(invalid("too many sockets"));
    }
    let mut sockets = Vec::with_capacity(n);
    for ip in &plan.sources {
        for _ in 0..plan.sockets_per_source.max(1) {
            let s = UdpSocket::bind(SocketAddr::new(*ip, 0))?;
            s.set_nonblocking(true)?;
            sockets.push(s);
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    let mut report = Report::default();
    let start = now();
    let mut i = 0u64;
    while i < plan.count {
        let elapsed = now().duration_since(start);
        if elapsed >= plan.duration {
            break;
        }
        // Pacing: packet i is due at i / rate seconds.
        if plan.rate > 0 {
            let due = Duration::from_secs_f64(i as f64 / plan.rate as f64);
            if due > elapsed {
                std::thread::sleep((due - elapsed).min(Duration::from_millis(5)));
                continue;
            }
        }
        let kind = plan.kinds[(i % plan.kinds.len() as u64) as usize];
        let target =
            plan.targets[((i / plan.kinds.len() as u64) % plan.targets.len() as u64) as usize];
        let (dst, src) = plan.flow_ids.pick(i / plan.kinds.len() as u64, &mut rng);
        let bytes = forge(kind, dst, src, plan.service, &mut rng);
        let socket = &sockets[(i % sockets.len() as u64) as usize];
        match socket.send_to(&bytes, target) {
            Ok(_) => report.sent[kind.index()] += 1,
            Err(_) => report.send_errors += 1,
        }
        i += 1;
    }
    report.elapsed = now().duration_since(start);
    let mut buf = [0u8; 2048];
    for s in &sockets {
        // Bounded: a socket's receive buffer holds a finite number of datagrams.
        while s.recv_from(&mut buf).is_ok() {
            report.replies += 1;
        }
    }
    Ok(report)
}

#[allow(clippy::disallowed_methods)] // the attacker's pacing clock, not the protocol core's
fn now() -> Instant {
    Instant::now()
}

/// How [`forge_registration`] authenticates the message it builds.
#[derive(Clone, Copy, Debug)]
pub enum Signer<'a> {
    /// A random tag (the attacker has no key).
    Forged,
    /// HMAC-SHA256 under `key` (a wrong key, or the real one to stand for a captured
    /// genuine message).
    Key(&'a [u8]),
}

/// A REGISTER (or, with `unregister`, UNREGISTER) request for `prefix` at `addr` (`None`:
/// "the UDP source you see"), under `key_id` with `sequence`, signed by `signer`, wrapped
/// in the unconnected SAL datagram a registrant sends to a router's control service. The
/// xid and a forged tag come from `seed`.
pub fn forge_registration(
    unregister: bool,
    prefix: ServicePrefix,
    addr: Option<SocketAddr>,
    key_id: u32,
    sequence: u64,
    signer: Signer<'_>,
    seed: u64,
) -> Vec<u8> {
    let rng = &mut ChaCha8Rng::seed_from_u64(seed);
    let mut repr = RegisterRepr {
        re_register: false,
        srvid_flags: 0,
        prefix,
        addr,
        lease_ms: 30_000,
        key_id,
        sequence,
        mac: [0; REGISTER_MAC_LEN],
    };
    let xid = rng.next_u32();
    let body = |r| {
        if unregister {
            MsgBody::Unregister(r)
        } else {
            MsgBody::Register(r)
        }
    };
    repr.mac = match signer {
        Signer::Forged => rng.random(),
        Signer::Key(key) => {
            let msg = ControlMsg {
                xid,
                retval: RetVal::Ok,
                body: body(repr),
            };
            msg.with_mac_input(|input| {
                let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key)
                    .expect("HMAC takes keys of any length");
                m.update(input);
                let tag = m.finalize().into_bytes();
                let mut out = [0u8; REGISTER_MAC_LEN];
                out.copy_from_slice(&tag[..REGISTER_MAC_LEN]);
                out
            })
            .unwrap_or_default()
        }
    };
    let msg = ControlMsg {
        xid,
        retval: RetVal::Ok,
        body: body(repr),
    };
    let mut payload = [0u8; REGISTER_MSG_LEN];
    msg.emit(&mut MsgPacket::new_unchecked(&mut payload[..]));
    let mut sal = SalRepr::new(None, None, Protocol::UDP);
    sal.service = Some(ServiceRepr {
        dst: ROUTER_CONTROL_SERVICE,
        src: Some(HOST_CONTROL_SERVICE),
    });
    let header = sal.buffer_len();
    let mut out = vec![0u8; header + payload.len()];
    out[header..].copy_from_slice(&payload);
    sal.emit(&mut Packet::new_unchecked(&mut out[..]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> FlowId {
        FlowId::new(n).unwrap()
    }

    #[test]
    fn every_kind_parses_with_the_flags_it_claims() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..50 {
            for kind in Kind::ALL {
                let bytes = forge(kind, id(5), id(6), ServiceId::from_u32(9), &mut rng);
                let p = SalRepr::parse_datagram(&bytes).expect("parses");
                let f = p.repr.flags();
                let expect = match kind {
                    Kind::Rst => ControlFlags::RST,
                    Kind::Fin => ControlFlags::FIN | ControlFlags::ACK,
                    Kind::Rsyn => ControlFlags::RSYN,
                    Kind::PathChallenge => ControlFlags::ACK,
                    Kind::Data => ControlFlags::NONE,
                    Kind::Syn => ControlFlags::SYN,
                };
                assert_eq!(f, expect, "{kind:?}");
                assert_eq!(p.repr.src_flow, Some(id(6)));
                if kind == Kind::Syn {
                    assert_eq!(p.repr.dst_flow, None);
                    assert!(p.repr.key_share.is_some());
                    assert_eq!(p.repr.dst_service(), Some(ServiceId::from_u32(9)));
                    assert!(TcpRepr::parse_bytes(p.payload).is_ok());
                } else {
                    assert_eq!(p.repr.dst_flow, Some(id(5)));
                }
                if kind == Kind::PathChallenge {
                    assert!(p.repr.path_challenge.is_some());
                }
                if kind == Kind::Data {
                    assert_eq!(p.header_len, 12);
                    assert!(TcpRepr::parse_bytes(p.payload).is_ok());
                }
            }
        }
    }

    #[test]
    fn flow_id_strategies() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let sweep = FlowIds::Sweep { start: 0, end: 3 };
        let dsts: Vec<u32> = (0..6).map(|i| sweep.pick(i, &mut rng).0.get()).collect();
        assert_eq!(dsts, [1, 2, 3, 1, 2, 3]);
        let leaked = FlowIds::Leaked {
            dst: id(42),
            src: Some(id(43)),
        };
        assert_eq!(leaked.pick(9, &mut rng), (id(42), id(43)));
        let (a, _) = FlowIds::Random.pick(0, &mut rng);
        let (b, _) = FlowIds::Random.pick(0, &mut rng);
        assert_ne!(a, b);
    }

    #[test]
    fn a_spray_is_bounded_and_counted_per_kind() {
        let victim = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut plan = Plan::new(vec![victim.local_addr().unwrap()]);
        plan.kinds = Kind::ALL.to_vec();
        plan.count = 60;
        plan.rate = 0;
        plan.sockets_per_source = 3;
        let r = spray(&plan).unwrap();
        assert_eq!(r.total(), 60, "{r}");
        for k in Kind::ALL {
            assert_eq!(r.sent(k), 10, "{k:?}");
        }
        let mut buf = [0u8; 2048];
        let (n, _) = victim.recv_from(&mut buf).unwrap();
        assert!(SalRepr::parse_datagram(&buf[..n]).is_ok());
    }

    #[test]
    fn a_registration_signed_with_the_key_verifies_and_a_forged_one_does_not() {
        let key = [7u8; 32];
        let prefix = ServicePrefix::exact(ServiceId::from_u32(1));
        for signer in [Signer::Key(&key), Signer::Forged] {
            let bytes = forge_registration(true, prefix, None, 1, 5, signer, 3);
            let p = SalRepr::parse_datagram(&bytes).unwrap();
            let msg = ControlMsg::parse(p.payload).unwrap();
            let MsgBody::Unregister(r) = msg.body else {
                panic!("not an UNREGISTER")
            };
            let expected = msg
                .with_mac_input(|input| {
                    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
                    m.update(input);
                    m.finalize().into_bytes()[..REGISTER_MAC_LEN].to_vec()
                })
                .unwrap();
            assert_eq!(r.mac.to_vec() == expected, matches!(signer, Signer::Key(_)));
        }
    }
}
