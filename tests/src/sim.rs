//! A deterministic datagram network in virtual time.
//!
//! Nodes are sans-IO state machines (the real stack core, wrapped in [`Node`]). The network
//! carries UDP datagrams between socket addresses over links with seeded latency, jitter
//! (reordering), loss, duplication, corruption, an MTU and a rate limit, through optional NATs
//! that rewrite source addresses and ports and forget idle mappings. Everything random comes
//! from one seed, so a failing run replays exactly.
//!
//! A test can also act on single packets: [`Network::intercept`] installs a hook that sees
//! every datagram before it enters a link and may drop, keep or delay it ("lose the
//! SYN-ACK", "hold the RSYN").
//!
//! Time only moves in [`Network::step`]: to the earliest of the next delivery and the
//! nodes' own deadlines. Nothing sleeps; nothing reads a clock.

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serval_stack::time::Timestamp;

/// One UDP datagram in flight: outer addresses and the UDP payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Source socket address as the receiver will see it (after any NAT).
    pub src: SocketAddr,
    /// Destination socket address.
    pub dst: SocketAddr,
    /// UDP payload.
    pub payload: Vec<u8>,
}

/// A host on the simulated network: a sans-IO state machine plus its addresses.
pub trait Node {
    /// A datagram arrived for one of this node's addresses.
    fn handle(&mut self, now: Timestamp, datagram: Datagram);
    /// The next datagram the node wants to send, if any.
    fn poll_transmit(&mut self, now: Timestamp) -> Option<Datagram>;
    /// When the node next needs [`Node::handle_timeout`].
    fn poll_timeout(&self) -> Option<Timestamp>;
    /// Timers at or before `now` fire.
    fn handle_timeout(&mut self, now: Timestamp);
}

/// Impairments of the path a datagram takes from a sender's IP address. Probabilities are
/// in [0, 1].
#[derive(Clone, Debug)]
pub struct LinkProfile {
    /// One-way delay.
    pub latency: Duration,
    /// Extra uniform random delay in [0, jitter): reorders packets when above the spacing.
    pub jitter: Duration,
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability one random byte of the payload is flipped.
    pub corrupt: f64,
    /// Largest UDP payload carried; bigger datagrams are dropped (counted as `mtu_drops`).
    pub mtu: usize,
    /// Bottleneck rate in bytes per second (`None` = unlimited); excess queues FIFO.
    pub rate: Option<u64>,
    /// Queue limit in bytes in front of the rate limiter; tail drop beyond it.
    pub queue_bytes: usize,
}

impl Default for LinkProfile {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(5),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            corrupt: 0.0,
            mtu: 1472,
            rate: None,
            queue_bytes: 1 << 20,
        }
    }
}

/// What an interception hook decides for one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it on normally.
    Pass,
    /// Lose it.
    Drop,
    /// Send it on after an extra delay.
    Delay(Duration),
}

/// A hook installed with [`Network::intercept`]; returns what to do with each datagram.
pub type Interceptor = Box<dyn FnMut(Timestamp, &Datagram) -> Verdict>;

/// Handle of a node in a [`Network`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

/// A network address translator between a private side and one public IP.
///
/// Mapping is endpoint-independent (one public port per private socket address, whatever the
/// destination), filtering is address-dependent (inbound datagrams are accepted only from
/// remote IPs the private socket has sent to), and mappings expire after `idle_timeout`
/// without outbound traffic, as home routers and carrier NATs do.
#[derive(Debug)]
pub struct Nat {
    public_ip: IpAddr,
    idle_timeout: Duration,
    next_port: u16,
    out: HashMap<SocketAddr, Mapping>,
    inbound: HashMap<u16, SocketAddr>,
}

#[derive(Debug)]
struct Mapping {
    port: u16,
    last_out: Timestamp,
    peers: Vec<IpAddr>,
}

impl Nat {
    /// A NAT whose public side is `public_ip`.
    pub fn new(public_ip: IpAddr, idle_timeout: Duration) -> Self {
        Self {
            public_ip,
            idle_timeout,
            next_port: 40000,
            out: HashMap::new(),
            inbound: HashMap::new(),
        }
    }

    /// Forgets every mapping: the next outbound datagram of each private socket gets a new
    /// public port (a NAT reboot or a conntrack flush).
    pub fn flush(&mut self) {
        self.out.clear();
        self.inbound.clear();
    }

    fn expire(&mut self, now: Timestamp) {
        let idle = self.idle_timeout;
        let inbound = &mut self.inbound;
        self.out.retain(|_, m| {
            let keep = now - m.last_out < idle;
            if !keep {
                inbound.remove(&m.port);
            }
            keep
        });
    }

    fn outbound(&mut self, now: Timestamp, d: &mut Datagram) {
        self.expire(now);
        let m = match self.out.get_mut(&d.src) {
            Some(m) => m,
            None => {
                let port = self.allocate_port();
                self.inbound.insert(port, d.src);
                self.out.entry(d.src).or_insert(Mapping {
                    port,
                    last_out: now,
                    peers: Vec::new(),
                })
            }
        };
        m.last_out = now;
        if !m.peers.contains(&d.dst.ip()) {
            m.peers.push(d.dst.ip());
        }
        d.src = SocketAddr::new(self.public_ip, m.port);
    }

    fn inbound(&mut self, now: Timestamp, d: &mut Datagram) -> bool {
        self.expire(now);
        let Some(&private) = self.inbound.get(&d.dst.port()) else {
            return false;
        };
        let allowed = self
            .out
            .get(&private)
            .is_some_and(|m| m.peers.contains(&d.src.ip()));
        if allowed {
            d.dst = private;
        }
        allowed
    }

    fn allocate_port(&mut self) -> u16 {
        loop {
            let p = self.next_port;
            self.next_port = if p == u16::MAX { 40000 } else { p + 1 };
            if !self.inbound.contains_key(&p) {
                return p;
            }
        }
    }
}

/// Counters of what the network did to datagrams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams handed to the network by nodes.
    pub sent: u64,
    /// Datagrams delivered to a node.
    pub delivered: u64,
    /// Lost by the link's loss probability.
    pub lost: u64,
    /// Dropped by an interception hook.
    pub intercepted: u64,
    /// Dropped for exceeding the link MTU.
    pub mtu_drops: u64,
    /// Dropped at a full rate-limiter queue.
    pub queue_drops: u64,
    /// Dropped because no node owns the destination (or a NAT filtered it).
    pub unroutable: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Datagrams with a flipped byte.
    pub corrupted: u64,
}

#[derive(Debug, PartialEq, Eq)]
struct InFlight {
    at: Timestamp,
    seq: u64,
    datagram: Datagram,
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Min-heap on (time, sequence): equal times deliver in send order.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<N: Node + ?Sized> Node for Box<N> {
    fn handle(&mut self, now: Timestamp, datagram: Datagram) {
        (**self).handle(now, datagram);
    }
    fn poll_transmit(&mut self, now: Timestamp) -> Option<Datagram> {
        (**self).poll_transmit(now)
    }
    fn poll_timeout(&self) -> Option<Timestamp> {
        (**self).poll_timeout()
    }
    fn handle_timeout(&mut self, now: Timestamp) {
        (**self).handle_timeout(now);
    }
}

/// The simulated network: nodes, their addresses, links, NATs and the packets in flight.
///
/// All nodes have one type `N` so tests can reach their concrete API through
/// [`Network::node_mut`]; use `Box<dyn Node>` to mix kinds.
pub struct Network<N: Node = Box<dyn Node>> {
    now: Timestamp,
    rng: ChaCha8Rng,
    nodes: Vec<N>,
    /// IP address → owning node. A node may own several (multi-homed) and may move.
    owners: BTreeMap<IpAddr, NodeId>,
    /// Link profile of datagrams sent from an IP (`default_link` otherwise).
    links: HashMap<IpAddr, LinkProfile>,
    default_link: LinkProfile,
    /// Private IP → index into `nats` for nodes behind a NAT.
    behind_nat: HashMap<IpAddr, usize>,
    nats: Vec<Nat>,
    /// When each sender IP's rate limiter is next free.
    link_busy_until: HashMap<IpAddr, Timestamp>,
    in_flight: BinaryHeap<InFlight>,
    seq: u64,
    interceptor: Option<Interceptor>,
    stats: NetStats,
}

impl<N: Node> std::fmt::Debug for Network<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("now", &self.now)
            .field("nodes", &self.nodes.len())
            .field("in_flight", &self.in_flight.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<N: Node> Network<N> {
    /// An empty network whose randomness all comes from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            now: Timestamp::ZERO,
            rng: ChaCha8Rng::seed_from_u64(seed),
            nodes: Vec::new(),
            owners: BTreeMap::new(),
            links: HashMap::new(),
            default_link: LinkProfile::default(),
            behind_nat: HashMap::new(),
            nats: Vec::new(),
            link_busy_until: HashMap::new(),
            in_flight: BinaryHeap::new(),
            seq: 0,
            interceptor: None,
            stats: NetStats::default(),
        }
    }

    /// Current virtual time.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// What the network did so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Adds a node owning `ips`.
    pub fn add_node(&mut self, node: N, ips: &[IpAddr]) -> NodeId {
        let id = NodeId(self.nodes.len());
        self.nodes.push(node);
        for ip in ips {
            self.owners.insert(*ip, id);
        }
        id
    }

    /// The node behind `id`, for driving its API and reading its state.
    pub fn node_mut(&mut self, id: NodeId) -> &mut N {
        &mut self.nodes[id.0]
    }

    /// The node behind `id` (read).
    pub fn node(&self, id: NodeId) -> &N {
        &self.nodes[id.0]
    }

    /// The profile used for datagrams sent from IPs without their own.
    pub fn set_default_link(&mut self, profile: LinkProfile) {
        self.default_link = profile;
    }

    /// The profile for datagrams sent from `ip` (its uplink).
    pub fn set_link(&mut self, ip: IpAddr, profile: LinkProfile) {
        self.links.insert(ip, profile);
    }

    /// Adds a NAT with public address `public_ip`; returns its index for [`Self::nat_mut`].
    pub fn add_nat(&mut self, public_ip: IpAddr, idle_timeout: Duration) -> usize {
        self.nats.push(Nat::new(public_ip, idle_timeout));
        self.nats.len() - 1
    }

    /// Puts the private address `ip` behind NAT `nat`.
    pub fn place_behind_nat(&mut self, ip: IpAddr, nat: usize) {
        self.behind_nat.insert(ip, nat);
    }

    /// The NAT at index `nat` (to flush it).
    pub fn nat_mut(&mut self, nat: usize) -> &mut Nat {
        &mut self.nats[nat]
    }

    /// Moves ownership of `ip` to `node` (or removes it with `None`): the address is now
    /// elsewhere, packets in flight to it land at the new owner or nowhere.
    pub fn set_owner(&mut self, ip: IpAddr, node: Option<NodeId>) {
        match node {
            Some(n) => self.owners.insert(ip, n),
            None => self.owners.remove(&ip),
        };
    }

    /// Installs (or with `None` removes) a hook that sees every datagram before its link.
    pub fn intercept(&mut self, hook: Option<Interceptor>) {
        self.interceptor = hook;
    }

    /// Advances to the next event, processes everything due then, and returns `false` when
    /// nothing at all is pending (no packets in flight and no node deadline).
    pub fn step(&mut self) -> bool {
        self.collect_transmits();
        let next_packet = self.in_flight.peek().map(|p| p.at);
        let next_timer = self.nodes.iter().filter_map(|n| n.poll_timeout()).min();
        let Some(next) = [next_packet, next_timer].into_iter().flatten().min() else {
            return false;
        };
        self.now = self.now.max(next);
        while self.in_flight.peek().is_some_and(|p| p.at <= self.now) {
            let p = self.in_flight.pop().expect("peeked");
            self.deliver(p.datagram);
        }
        let now = self.now;
        for node in &mut self.nodes {
            if node.poll_timeout().is_some_and(|t| t <= now) {
                node.handle_timeout(now);
            }
        }
        self.collect_transmits();
        true
    }

    /// Steps until `done` holds or virtual time passes `deadline`; returns whether `done`
    /// held. A bound on virtual time keeps a broken protocol from looping forever.
    pub fn run_until(
        &mut self,
        deadline: Timestamp,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> bool {
        loop {
            if done(self) {
                return true;
            }
            if self.now > deadline || !self.step() {
                return done(self);
            }
        }
    }

    /// [`run_until`](Self::run_until) a deadline `limit` from now: the usual bound of a
    /// test's wait.
    pub fn run_for(&mut self, limit: Duration, done: impl FnMut(&mut Self) -> bool) -> bool {
        let deadline = self.now + limit;
        self.run_until(deadline, done)
    }

    fn collect_transmits(&mut self) {
        let now = self.now;
        for i in 0..self.nodes.len() {
            while let Some(d) = self.nodes[i].poll_transmit(now) {
                self.send(d);
            }
        }
    }

    fn send(&mut self, mut d: Datagram) {
        self.stats.sent += 1;
        let from_ip = d.src.ip();
        let link = self
            .links
            .get(&from_ip)
            .unwrap_or(&self.default_link)
            .clone();
        let mut extra = Duration::ZERO;
        if let Some(hook) = self.interceptor.as_mut() {
            match hook(self.now, &d) {
                Verdict::Pass => {}
                Verdict::Drop => {
                    self.stats.intercepted += 1;
                    return;
                }
                Verdict::Delay(by) => extra = by,
            }
        }
        if d.payload.len() > link.mtu {
            self.stats.mtu_drops += 1;
            return;
        }
        let Some(depart) = self.rate_limit(from_ip, &link, d.payload.len()) else {
            self.stats.queue_drops += 1;
            return;
        };
        if self.rng.random_bool(link.loss) {
            self.stats.lost += 1;
            return;
        }
        if let Some(&nat) = self.behind_nat.get(&from_ip) {
            self.nats[nat].outbound(self.now, &mut d);
        }
        if self.rng.random_bool(link.corrupt) && !d.payload.is_empty() {
            let i = self.rng.random_range(0..d.payload.len());
            d.payload[i] ^= 1 << self.rng.random_range(0..8);
            self.stats.corrupted += 1;
        }
        let copies = if self.rng.random_bool(link.duplicate) {
            2
        } else {
            1
        };
        self.stats.duplicated += copies - 1;
        for _ in 0..copies {
            let jitter = if link.jitter.is_zero() {
                Duration::ZERO
            } else {
                link.jitter.mul_f64(self.rng.random::<f64>())
            };
            let at = depart + link.latency + jitter + extra;
            self.seq += 1;
            self.in_flight.push(InFlight {
                at,
                seq: self.seq,
                datagram: d.clone(),
            });
        }
    }

    /// When a datagram of `len` bytes leaves the sender's rate limiter, or `None` when the
    /// queue in front of it is full.
    fn rate_limit(&mut self, ip: IpAddr, link: &LinkProfile, len: usize) -> Option<Timestamp> {
        let Some(rate) = link.rate else {
            return Some(self.now);
        };
        let busy = self
            .link_busy_until
            .get(&ip)
            .copied()
            .unwrap_or(self.now)
            .max(self.now);
        let queued_bytes = u128::from(rate) * (busy - self.now).as_micros() / 1_000_000;
        if queued_bytes > link.queue_bytes as u128 {
            return None;
        }
        let tx = Duration::from_micros((len as u64 * 1_000_000).div_ceil(rate.max(1)));
        let done = busy + tx;
        self.link_busy_until.insert(ip, done);
        Some(done)
    }

    fn deliver(&mut self, mut d: Datagram) {
        // A datagram to a NAT's public address is translated to the private side first.
        if let Some(nat) = self.nats.iter_mut().find(|n| n.public_ip == d.dst.ip()) {
            if !nat.inbound(self.now, &mut d) {
                self.stats.unroutable += 1;
                return;
            }
        }
        match self.owners.get(&d.dst.ip()) {
            Some(&id) => {
                self.stats.delivered += 1;
                self.nodes[id.0].handle(self.now, d);
            }
            None => self.stats.unroutable += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    /// Echoes every datagram back to its sender; records what it saw.
    struct Echo {
        addr: SocketAddr,
        queue: VecDeque<Datagram>,
        seen: Rc<RefCell<Vec<Datagram>>>,
    }

    impl Node for Echo {
        fn handle(&mut self, _now: Timestamp, d: Datagram) {
            self.seen.borrow_mut().push(d.clone());
            self.queue.push_back(Datagram {
                src: self.addr,
                dst: d.src,
                payload: d.payload,
            });
        }
        fn poll_transmit(&mut self, _now: Timestamp) -> Option<Datagram> {
            self.queue.pop_front()
        }
        fn poll_timeout(&self) -> Option<Timestamp> {
            None
        }
        fn handle_timeout(&mut self, _now: Timestamp) {}
    }

    fn echo(addr: &str) -> (Box<Echo>, Rc<RefCell<Vec<Datagram>>>) {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let node = Echo {
            addr: addr.parse().unwrap(),
            queue: VecDeque::new(),
            seen: seen.clone(),
        };
        (Box::new(node), seen)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nat_rewrites_source_and_filters_unknown_peers() {
        let mut net = Network::new(1);
        let (client, client_seen) = echo("10.0.0.1:5000");
        let (server, server_seen) = echo("192.0.2.10:54325");
        let c = net.add_node(client, &[ip("10.0.0.1")]);
        net.add_node(server, &[ip("192.0.2.10")]);
        let nat = net.add_nat(ip("198.51.100.1"), Duration::from_secs(30));
        net.place_behind_nat(ip("10.0.0.1"), nat);
        let _ = c;
        // The client "sends" by having the server echo a datagram addressed to it: seed one.
        net.send(Datagram {
            src: "10.0.0.1:5000".parse().unwrap(),
            dst: "192.0.2.10:54325".parse().unwrap(),
            payload: vec![1],
        });
        net.run_until(Timestamp::from_millis(100), |n| n.stats().delivered >= 2);
        let first_src = server_seen.borrow()[0].src;
        assert_eq!(
            first_src,
            "198.51.100.1:40000".parse().unwrap(),
            "source translated"
        );
        assert_eq!(
            client_seen.borrow()[0].dst,
            "10.0.0.1:5000".parse().unwrap(),
            "reply translated back"
        );
        // A stranger cannot reach the private node through the mapping.
        let before = net.stats().unroutable;
        net.send(Datagram {
            src: "203.0.113.9:1".parse().unwrap(),
            dst: "198.51.100.1:40000".parse().unwrap(),
            payload: vec![2],
        });
        net.run_until(Timestamp::from_millis(200), |_| false);
        assert_eq!(net.stats().unroutable, before + 1);
    }

    #[test]
    fn loss_is_seeded_and_close_to_the_profile() {
        let run = |seed| {
            let mut net = Network::new(seed);
            let (sink, seen) = echo("192.0.2.1:1");
            net.add_node(sink, &[ip("192.0.2.1")]);
            net.set_link(
                ip("192.0.2.2"),
                LinkProfile {
                    loss: 0.1,
                    ..LinkProfile::default()
                },
            );
            for i in 0..10_000u32 {
                net.send(Datagram {
                    src: "192.0.2.2:1".parse().unwrap(),
                    dst: "192.0.2.1:1".parse().unwrap(),
                    payload: i.to_be_bytes().to_vec(),
                });
            }
            net.run_until(Timestamp::from_millis(1000), |_| false);
            seen.borrow().len()
        };
        let a = run(7);
        assert_eq!(a, run(7), "same seed, same result");
        assert!((8_800..=9_200).contains(&a), "about 10 % lost: {a}");
    }

    #[test]
    fn rate_limit_serialises_and_jitter_reorders() {
        let mut net = Network::new(3);
        let (sink, seen) = echo("192.0.2.1:1");
        net.add_node(sink, &[ip("192.0.2.1")]);
        net.set_link(
            ip("192.0.2.2"),
            LinkProfile {
                rate: Some(1_000_000),
                jitter: Duration::from_millis(20),
                ..LinkProfile::default()
            },
        );
        for i in 0..100u32 {
            net.send(Datagram {
                src: "192.0.2.2:1".parse().unwrap(),
                dst: "192.0.2.1:1".parse().unwrap(),
                payload: [i.to_be_bytes().to_vec(), vec![0; 996]].concat(),
            });
        }
        net.run_until(Timestamp::from_millis(1000), |_| false);
        let seen = seen.borrow();
        assert_eq!(seen.len(), 100);
        let order: Vec<u32> = seen
            .iter()
            .map(|d| u32::from_be_bytes(d.payload[..4].try_into().unwrap()))
            .collect();
        assert!(
            order.windows(2).any(|w| w[0] > w[1]),
            "jitter reordered something"
        );
        // 100 kB at 1 MB/s takes 100 ms of serialisation plus 5 ms latency.
        assert!(net.now() >= Timestamp::from_millis(100));
    }
}
