//! The client-side translator: legacy TCP in, Serval flows out.
//!
//! Each configured listener ([`socket`]: explicit, REDIRECT or TPROXY) has an accept loop.
//! Every accepted connection goes through, in order:
//!
//! 1. **admission**: `client.max_connections_per_source` (per client address, [`Sources`]),
//!    then ([`Limiter::try_admit`]) the listener's `max_connections` and the global
//!    `relay.max_connections`; refused at once, never queued;
//! 2. **mapping** ([`ClientPolicy::decide`]): the listener's service, the original
//!    destination's rule, or the DNS responder's name for a synthetic address;
//! 3. **first byte** (listeners with `first_byte_timeout`): wait for the client's first
//!    byte (a peek, nothing consumed) before any flow is opened; a client silent for the
//!    timeout is reset. With the per-source limit, this is the slowloris defence: a
//!    silent client holds only a socket, for a bounded time, and one address holds only
//!    so many; a client trickling bytes keeps its connection (it is not idle) but counts
//!    against the per-source limit;
//! 4. **connect**: a Serval flow to the ServiceID, resolved through the endpoint's service
//!    table (a default FORWARD rule to the routers, or a local listener), bounded by
//!    `client.connect_timeout`;
//! 5. **preamble**: a PROXY protocol v2 header on the flow carrying the legacy client's
//!    address and the original destination ([`crate::client_address`]), always written, so
//!    the server translator can hand the real client to its backends;
//! 6. **relay** ([`relay_until`]) until both directions finish, a timeout fires, a side
//!    fails, or the drain's grace period ends;
//! 7. **close**: a clean end (both FINs relayed) drops both sides; anything else resets
//!    both (an RST on TCP, an authenticated RST on the flow), so neither peer can mistake a
//!    truncated stream for a complete one. One access-log line.
//!
//! A connection refused at step 1-4 gets a TCP reset (not a FIN: the client must not read
//! an empty answer as a complete one) and is counted by reason ([`ClientStats`]).
//!
//! **Reload** ([`ClientRole::prepare`], then [`ClientRole::commit`]): the new listeners are bound *before* anything
//! changes, so a reload that cannot bind (address in use, no permission) is refused as a
//! whole and the running policy stays. Then the new policy is published: connections in
//! progress keep their flow and relay settings, new ones use the new mapping. A listener
//! is identified by its address and whether it is transparent, not by its name: renaming
//! it, or switching explicit/redirect, keeps the socket (no connection refused during the
//! reload); a listener no longer configured stops accepting (its connections continue).
//! Switching one address to or from `tproxy` needs a different socket while the old one
//! still listens, so it is refused as "address in use": remove the listener in one reload
//! and add it back in the next.
//! Limits: the process-wide limiter (`relay.max_connections`, shared with the server
//! role) is fixed at start; a listener keeps its count unless its `max_connections`
//! changed, and a changed limit starts a new count, so during the transition old and new
//! connections together may exceed it once.
//!
//! **Drain** ([`ClientRole::stop_accepting`], then [`ClientRole::wait_idle`]): listeners
//! close (new connections are refused by the kernel), admission closes, connections in
//! progress run to their end; at the end of the grace period the `stop` signal given at
//! start ends their relays (reset both sides, access log `stopped`).

pub mod socket;
pub mod stats;

use core::net::{IpAddr, Ipv6Addr, SocketAddr};
use core::time::Duration;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serval_stack::driver::{Endpoint, ServalStream};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::Config;
use crate::config::model::ListenMode;
use crate::policy::{ClientPolicy, ListenerIdx, NoNames, SyntheticNames};
use crate::relay::{
    ACCESS_LOG_TARGET, AccessLog, Gate, Limiter, RelayConfig, abort_tcp, relay_until,
};
use crate::tls::{ClientConnector, Leg};

pub use stats::ClientStats;
use stats::Counters;

/// The DNS responder's bindings, as the client role reads them.
pub type Names = Arc<dyn SyntheticNames + Send + Sync>;

/// Longest pause of an accept loop after `accept()` fails for lack of resources (file
/// descriptors, memory): retrying at once would spin a core while nothing can succeed.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);

/// What identifies a listening socket across reloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct SocketKey {
    addr: SocketAddr,
    transparent: bool,
}

impl SocketKey {
    fn new(addr: SocketAddr, mode: ListenMode) -> Self {
        Self {
            addr,
            transparent: mode == ListenMode::Tproxy,
        }
    }
}

/// One listener as the connections see it under the current policy.
#[derive(Debug)]
struct ListenerView {
    name: String,
    idx: ListenerIdx,
    mode: ListenMode,
    gate: Gate,
    max_connections: Option<u32>,
    relay: RelayConfig,
    /// `first_byte_timeout`, when on.
    first_byte: Option<Duration>,
}

/// The policy in force, replaced as a whole on reload.
#[derive(Debug)]
struct Snapshot {
    policy: ClientPolicy,
    listeners: HashMap<SocketKey, ListenerView>,
    connect_timeout: Duration,
    /// `client.max_connections_per_source`.
    per_source: Option<u32>,
}

impl Snapshot {
    /// The snapshot for `config`, reusing `old`'s gates whose limits did not change (so
    /// their counts carry over).
    fn new(config: &Config, limiter: &Limiter, old: Option<&Self>) -> Option<Self> {
        let role = config.client.as_ref()?;
        let policy = ClientPolicy::new(role);
        let mut listeners = HashMap::new();
        for l in &role.listeners {
            let Some(idx) = policy.listener(&l.name) else {
                continue;
            };
            let key = SocketKey::new(l.listen, l.mode);
            let gate = old
                .and_then(|o| o.listeners.get(&key))
                .filter(|v| v.name == l.name && v.max_connections == l.max_connections)
                .map_or_else(
                    || limiter.gate(&l.name, l.max_connections),
                    |v| v.gate.clone(),
                );
            let idle = l.idle_timeout.unwrap_or(config.relay.idle_timeout);
            let relay = RelayConfig {
                idle_timeout: idle.non_zero(),
                half_close_timeout: config.relay.half_close_timeout.non_zero(),
                buffer_size: usize::try_from(config.relay.buffer_size.0).unwrap_or(usize::MAX),
            };
            listeners.insert(
                key,
                ListenerView {
                    name: l.name.clone(),
                    idx,
                    mode: l.mode,
                    gate,
                    max_connections: l.max_connections,
                    relay,
                    first_byte: l.first_byte_timeout.non_zero(),
                },
            );
        }
        Some(Self {
            policy,
            listeners,
            connect_timeout: role.connect_timeout.0,
            per_source: role.max_connections_per_source,
        })
    }
}

/// Connections in progress per client address (`client.max_connections_per_source`).
/// Holds an entry only while its address has a connection, so it is bounded by the
/// connections admitted.
#[derive(Debug, Default)]
struct Sources(Mutex<HashMap<IpAddr, u32>>);

impl Sources {
    /// What a client address counts as: an IPv4 address (also when IPv4-mapped), or an
    /// IPv6 /64.
    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
            },
        }
    }

    /// A place for `ip` if it holds fewer than `max` connections.
    fn try_admit(&self, ip: IpAddr, max: u32) -> Option<SourceSlot<'_>> {
        let key = Self::key(ip);
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(key).or_insert(0);
        if *n >= max {
            if *n == 0 {
                map.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(SourceSlot { sources: self, key })
    }

    /// Addresses holding connections now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// A connection's place in its address's count, given back on drop.
#[derive(Debug)]
struct SourceSlot<'a> {
    sources: &'a Sources,
    key: IpAddr,
}

impl Drop for SourceSlot<'_> {
    fn drop(&mut self) {
        let mut map = self
            .sources
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// State shared by the role, its accept loops and its connections.
struct Shared {
    endpoint: Endpoint,
    limiter: Limiter,
    snapshot: RwLock<Arc<Snapshot>>,
    names: Option<Names>,
    /// `tls:` of the policy: every flow runs TLS over the Serval stream.
    tls: Option<ClientConnector>,
    counters: Counters,
    active: watch::Sender<u64>,
    stop: watch::Receiver<bool>,
    /// Connections per client address (counted only while a limit is configured).
    sources: Sources,
}

impl core::fmt::Debug for Shared {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("client::Shared")
            .field("active", &*self.active.borrow())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A connection counted as active until dropped (what drain waits for).
struct Active(Arc<Shared>);

impl Active {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.active.send_modify(|n| *n += 1);
        Self(shared.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[derive(Debug)]
struct AcceptLoop {
    name: String,
    bound: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        // The listening socket is owned by the task: aborting it closes the socket.
        self.task.abort();
    }
}

/// Sockets bound for a reload that has not been committed yet.
#[derive(Debug)]
pub struct Prepared {
    snapshot: Option<Snapshot>,
    new: Vec<(SocketKey, String, TcpListener)>,
}

/// The client role: its listeners, policy and counters.
#[derive(Debug)]
pub struct ClientRole {
    shared: Arc<Shared>,
    loops: HashMap<SocketKey, AcceptLoop>,
    accepting: bool,
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Listeners opened (name, address).
    pub opened: Vec<(String, SocketAddr)>,
    /// Listeners closed (name, address).
    pub closed: Vec<(String, SocketAddr)>,
}

impl ClientRole {
    /// Binds every listener of `config.client` and starts accepting. `limiter` is the
    /// process-wide connection limit (shared with the server role); `names` is the DNS
    /// responder's table, when it runs; `tls` wraps every flow in mutual TLS (the policy's
    /// `tls:`); `stop` ends every relay in progress when it turns true (the end of a drain's
    /// grace period).
    ///
    /// Errors: a listener that cannot be bound, named with its address.
    pub fn start(
        endpoint: Endpoint,
        config: &Config,
        limiter: Limiter,
        names: Option<Names>,
        tls: Option<ClientConnector>,
        stop: watch::Receiver<bool>,
    ) -> io::Result<Self> {
        let Some(snapshot) = Snapshot::new(config, &limiter, None) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the policy has no client role",
            ));
        };
        let shared = Arc::new(Shared {
            endpoint,
            limiter,
            snapshot: RwLock::new(Arc::new(snapshot)),
            names,
            tls,
            counters: Counters::default(),
            active: watch::Sender::new(0),
            stop,
            sources: Sources::default(),
        });
        let mut role = Self {
            shared,
            loops: HashMap::new(),
            accepting: true,
        };
        let prepared = role.prepare(config)?;
        role.commit(prepared);
        Ok(role)
    }

    /// Binds the listeners `config` adds; nothing changes until [`commit`](Self::commit).
    /// Dropping the result closes those sockets again.
    pub fn prepare(&self, config: &Config) -> io::Result<Prepared> {
        let current = self.shared.snapshot();
        let snapshot = Snapshot::new(config, &self.shared.limiter, Some(&current));
        let mut new = Vec::new();
        if self.accepting
            && let Some(role) = &config.client
        {
            for l in &role.listeners {
                let key = SocketKey::new(l.listen, l.mode);
                if self.loops.contains_key(&key) {
                    continue;
                }
                let listener = socket::bind(l.listen, l.mode).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("client listener {:?} on {}: {e}", l.name, l.listen),
                    )
                })?;
                new.push((key, l.name.clone(), listener));
            }
        }
        Ok(Prepared { snapshot, new })
    }

    /// Publishes the policy of a [`prepare`](Self::prepare)d reload, starts the new
    /// listeners and closes the ones no longer configured.
    pub fn commit(&mut self, prepared: Prepared) -> ReloadSummary {
        let mut summary = ReloadSummary::default();
        let Prepared { snapshot, new } = prepared;
        let wanted: HashMap<SocketKey, String> = snapshot
            .as_ref()
            .map(|s| {
                s.listeners
                    .iter()
                    .map(|(k, v)| (*k, v.name.clone()))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(s) = snapshot {
            *self
                .shared
                .snapshot
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Arc::new(s);
        }
        self.loops.retain(|key, l| {
            let keep = wanted.contains_key(key);
            if !keep {
                tracing::info!(listener = %l.name, addr = %l.bound, "client listener closed");
                summary.closed.push((l.name.clone(), l.bound));
            }
            keep
        });
        for (key, name, listener) in new {
            let bound = listener.local_addr().unwrap_or(key.addr);
            let task = tokio::spawn(accept_loop(self.shared.clone(), key, listener));
            tracing::info!(listener = %name, addr = %bound, "client listener open");
            summary.opened.push((name.clone(), bound));
            self.loops.insert(key, AcceptLoop { name, bound, task });
        }
        // Names follow the policy (a rename keeps the socket).
        for (key, l) in &mut self.loops {
            if let Some(name) = wanted.get(key) {
                l.name.clone_from(name);
            }
        }
        summary
    }

    /// Closes every listener and refuses new connections (drain). Connections in progress
    /// continue.
    pub fn stop_accepting(&mut self) {
        self.accepting = false;
        self.loops.clear();
        self.shared.limiter.drain();
    }

    /// Waits until no connection is in progress.
    pub async fn wait_idle(&self) {
        let mut rx = self.shared.active.subscribe();
        // The sender lives in `self.shared`, so this cannot fail while `self` exists.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// The listeners accepting now: name and bound address.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        let mut v: Vec<_> = self
            .loops
            .values()
            .map(|l| (l.name.clone(), l.bound))
            .collect();
        v.sort();
        v
    }

    /// The bound address of the listener named `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.loops
            .values()
            .find(|l| l.name == name)
            .map(|l| l.bound)
    }

    /// The role's counters.
    pub fn stats(&self) -> ClientStats {
        self.shared.counters.snapshot(*self.shared.active.borrow())
    }
}

/// Accepts connections on `listener` for ever (the role aborts the task to close it).
async fn accept_loop(shared: Arc<Shared>, key: SocketKey, listener: TcpListener) {
    let mut backoff = MIN_ACCEPT_BACKOFF;
    let mut failing = false;
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                if failing {
                    tracing::info!(addr = %key.addr, "client listener accepting again");
                    failing = false;
                }
                backoff = MIN_ACCEPT_BACKOFF;
                shared.counters.accepted();
                let active = Active::new(&shared);
                tokio::spawn(connection(shared.clone(), key, tcp, peer, active));
            }
            // The peer gave up between the handshake and accept(): nothing to do.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: wait for resources instead of spinning.
                shared.counters.accept_error();
                if !failing {
                    tracing::warn!(
                        addr = %key.addr,
                        error = %e,
                        "client listener cannot accept; backing off (raise the file limit or lower max_connections)"
                    );
                    failing = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
}

/// Resolves when `stop` turns true (or its sender is gone: the role is being torn down).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn drain_ended() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "drain ended")
}

/// The access-log line of a connection refused once its service was known.
fn refused_after_decision(
    via: &str,
    peer: SocketAddr,
    decision: &crate::policy::ClientDecision,
    reason: &str,
    error: &io::Error,
) {
    tracing::info!(
        target: ACCESS_LOG_TARGET,
        role = "client",
        via = %via,
        peer = %peer,
        service = %decision.service,
        outcome = "connect_failed",
        reason,
        error = %error,
        "connection refused"
    );
}

/// Closes `tcp` with a reset.
/// A connection refused before it was relayed: one access-log line, then a reset.
fn refuse(via: &str, peer: SocketAddr, reason: &str, tcp: TcpStream) {
    tracing::debug!(
        target: ACCESS_LOG_TARGET,
        role = "client",
        via = %via,
        peer = %peer,
        outcome = "refused",
        reason,
        "connection refused"
    );
    reset(tcp);
}

fn reset(tcp: TcpStream) {
    // If SO_LINGER cannot be set the socket still closes, with a FIN.
    let _ = abort_tcp(&tcp);
    drop(tcp);
}

/// One accepted connection, from admission to the access-log line.
async fn connection(
    shared: Arc<Shared>,
    key: SocketKey,
    mut tcp: TcpStream,
    peer: SocketAddr,
    _active: Active,
) {
    let snap = shared.snapshot();
    let Some(view) = snap.listeners.get(&key) else {
        // A reload removed the listener between accept() and here.
        shared
            .counters
            .policy(&crate::policy::Refusal::UnknownListener);
        return reset(tcp);
    };
    let _source = match snap.per_source {
        Some(max) => match shared.sources.try_admit(peer.ip(), max) {
            Some(slot) => Some(slot),
            None => {
                shared.counters.source_full();
                return refuse(&view.name, peer, "source_full", tcp);
            }
        },
        None => None,
    };
    let _permit = match shared.limiter.try_admit(&view.gate) {
        Ok(p) => p,
        Err(why) => {
            shared.counters.limit(why);
            return refuse(&view.name, peer, why.label(), tcp);
        }
    };
    let local = tcp.local_addr().unwrap_or(key.addr);
    let original = match view.mode {
        ListenMode::Redirect => socket::original_dst(&tcp),
        ListenMode::Explicit | ListenMode::Tproxy => None,
    };
    let names: &dyn SyntheticNames = match &shared.names {
        Some(n) => n.as_ref(),
        None => &NoNames,
    };
    let decision = match snap.policy.decide(view.idx, local, original, names) {
        Ok(d) => d,
        Err(why) => {
            shared.counters.policy(&why);
            tracing::info!(
                target: ACCESS_LOG_TARGET,
                role = "client",
                via = %view.name,
                peer = %peer,
                destination = original.map(tracing::field::display),
                outcome = "refused",
                reason = why.label(),
                detail = %why,
                "connection refused"
            );
            return reset(tcp);
        }
    };
    // A proxy must not add Nagle delays to what the client already chose to send.
    let _ = tcp.set_nodelay(true);

    if let Some(limit) = view.first_byte {
        let mut byte = [0u8; 1];
        let first = tokio::select! {
            r = tokio::time::timeout(limit, tcp.peek(&mut byte)) => r,
            () = stopped(shared.stop.clone()) => return reset(tcp),
        };
        match first {
            Ok(Ok(n)) if n > 0 => {}
            // The client left (or failed) before sending anything: nothing to relay.
            Ok(_) => {
                shared.counters.closed_before_data();
                return reset(tcp);
            }
            Err(_) => {
                shared.counters.first_byte_timeout();
                return refuse(&view.name, peer, "first_byte_timeout", tcp);
            }
        }
    }

    let started = Instant::now();
    let connect = tokio::time::timeout(
        snap.connect_timeout,
        shared.endpoint.connect(decision.service),
    );
    let opened: io::Result<ServalStream> = tokio::select! {
        r = connect => r.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
        () = stopped(shared.stop.clone()) => Err(drain_ended()),
    };
    let mut flow = match opened {
        Ok(f) => f,
        Err(e) => {
            let label = shared.counters.connect_failed(e.kind());
            refused_after_decision(&view.name, peer, &decision, label, &e);
            return reset(tcp);
        }
    };
    let connect_time = started.elapsed();
    let upstream = flow.peer_addr();
    let (report, tls_time) = {
        // The Serval leg (TLS when the policy asks), then the preamble, both bounded by the
        // connect timeout (module docs, steps 3-4).
        let handshake = Instant::now();
        let setup = async {
            let mut leg = Leg::client(shared.tls.as_ref(), &mut flow)
                .await
                .map_err(|e| (e, "tls_failed"))?;
            let tls_time = shared.tls.as_ref().map(|_| handshake.elapsed());
            // The legacy client's address for the server translator (module docs, step 4).
            let p = crate::client_address::preamble(peer, original.unwrap_or(local))
                .map_err(|e| (e, "preamble_failed"))?;
            leg.write_all(&p)
                .await
                .map_err(|e| (e, "preamble_failed"))?;
            Ok::<_, (io::Error, &'static str)>((leg, tls_time))
        };
        let setup = tokio::select! {
            r = tokio::time::timeout(snap.connect_timeout, setup) => {
                r.unwrap_or_else(|_| Err((io::ErrorKind::TimedOut.into(), "setup_timeout")))
            }
            () = stopped(shared.stop.clone()) => Err((drain_ended(), "stopped")),
        };
        let (mut leg, tls_time) = match setup {
            Ok(l) => l,
            Err((e, label)) => {
                shared.counters.setup_failed(label);
                refused_after_decision(&view.name, peer, &decision, label, &e);
                flow.abort();
                return reset(tcp);
            }
        };
        shared.counters.relayed();
        let report = relay_until(
            &mut tcp,
            &mut leg,
            &view.relay,
            stopped(shared.stop.clone()),
        )
        .await;
        (report, tls_time)
    };
    if !report.outcome.is_clean() {
        flow.abort();
        let _ = abort_tcp(&tcp);
    }
    shared.counters.finished(&report);
    AccessLog {
        role: "client",
        via: &view.name,
        peer: Some(peer),
        client: None,
        service: Some(decision.service),
        upstream: Some(upstream),
        connect: Some(connect_time),
        tls_handshake: tls_time,
        report: &report,
    }
    .emit();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_slots_count_addresses_and_ipv6_blocks_and_are_given_back() {
        let sources = Sources::default();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let a = sources.try_admit(v4, 2).unwrap();
        let b = sources.try_admit(v4, 2).unwrap();
        assert!(sources.try_admit(v4, 2).is_none(), "the third is refused");
        // The same address IPv4-mapped is the same client.
        assert!(
            sources
                .try_admit("::ffff:192.0.2.7".parse().unwrap(), 2)
                .is_none()
        );
        // Two addresses of one IPv6 /64 are one client; another /64 is another.
        let x = sources
            .try_admit("2001:db8:0:1::1".parse().unwrap(), 1)
            .unwrap();
        assert!(
            sources
                .try_admit("2001:db8:0:1:ffff::2".parse().unwrap(), 1)
                .is_none()
        );
        let y = sources
            .try_admit("2001:db8:0:2::1".parse().unwrap(), 1)
            .unwrap();
        assert_eq!(sources.tracked(), 3);
        drop(a);
        let c = sources.try_admit(v4, 2).unwrap();
        drop((b, c, x, y));
        assert_eq!(sources.tracked(), 0, "no entry outlives its connections");
    }
}
