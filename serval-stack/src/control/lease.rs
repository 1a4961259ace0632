//! Router side of registration: authenticated REGISTER / UNREGISTER become leases, and
//! leases become FORWARD rules in the service table.
//!
//! A [`Registry`] keeps one lease per (prefix, instance address). For every datagram handed
//! to [`Registry::handle`] it checks, in this order, and refuses with a counted
//! [`RegistryError`] at the first failure:
//!
//! 1. it parses as a REGISTER or UNREGISTER *request* (retval `Ok`);
//! 2. its key id names a configured [`SharedKey`] and its MAC verifies (constant time);
//! 3. its sequence number is fresh for its registrant (64-wide anti-replay window per
//!    (key id, advertised address); see the [module docs](super));
//! 4. the instance address (the advertised one, or the observed UDP source when the message
//!    says "use what you see", for instances behind a NAT) is a usable unicast address;
//! 5. REGISTER: a new lease fits the limits (total, per source address) and its rule goes
//!    into the table; an existing one is refreshed. UNREGISTER: the lease and its rule go.
//!
//! Failures 1–2 are answered with silence; from 3 on the message is authentic and gets a
//! signed reply (see [`poll_transmit`](Registry::poll_transmit)). The lease lasts what the
//! message asks (0: [`RegistryConfig::with_default_lease`]), clamped to the configured
//! bounds; [`handle_timeout`](Registry::handle_timeout) withdraws expired leases and
//! [`poll_timeout`](Registry::poll_timeout) is the earliest expiry.
//!
//! Rules are installed at the configured priority (default [`DEFAULT_PRIORITY`], 1) and
//! weight (default 1). The original servd used priority 0; one higher lets an operator keep a
//! DELAY rule at priority 0 on the same prefix as a standby that becomes active exactly when
//! the last instance's lease is gone, which is scale-from-zero without a controller having
//! to add or remove rules (see [`super::delay`]).
//!
//! REGISTER and RE-REGISTER (the `re_register` flag) are handled alike, as an idempotent
//! insert-or-refresh: a router that restarted rebuilds its state from the next refreshes.
//!
//! The registry assumes it owns the FORWARD rules it installed: a registration whose rule
//! already exists (an operator added the same FORWARD target) is refused with
//! [`RegistryError::Table`] rather than adopted, so expiry never removes an operator's rule.

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet};

use super::{BoundedQueue, ConfigError, Direction, SharedKey, bump, canonical, registration, seal};
use crate::service_table::{Action, DEFAULT_PRIORITY, Rule, ServiceTable, TableError};
use crate::time::Timestamp;
use crate::wire::control_msg::{REGISTER_MSG_LEN, RegisterRepr, RetVal};
use crate::wire::{self, ControlMsg, ServicePrefix};

/// Most keys a router accepts at once (rotation needs two; groups of registrants a few).
pub const MAX_KEYS: usize = 16;
/// Replies waiting for [`Registry::poll_transmit`]; the oldest is dropped beyond this.
const MAX_REPLIES: usize = 256;
/// Events waiting for [`Registry::poll_event`]; the oldest is dropped beyond this.
const MAX_EVENTS: usize = 1024;
/// Width of the anti-replay window (bits of the bitmap).
const REPLAY_WINDOW: u64 = 64;

/// Configuration of a [`Registry`]. Every limit bounds memory that strangers holding a key
/// can make the router spend; nothing unauthenticated allocates.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    keys: Vec<(u32, SharedKey)>,
    min_lease: Duration,
    max_lease: Duration,
    default_lease: Duration,
    priority: u32,
    weight: u32,
    max_leases: usize,
    max_leases_per_source: usize,
    max_registrants: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            min_lease: Duration::from_millis(100),
            max_lease: Duration::from_secs(300),
            default_lease: Duration::from_secs(50),
            priority: DEFAULT_PRIORITY,
            weight: 1,
            max_leases: 4096,
            max_leases_per_source: 256,
            max_registrants: 4096,
        }
    }
}

impl RegistryConfig {
    /// The defaults, with no key (every registration is refused until one is added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts registrations carrying `key_id` and authenticated with `key`. At most
    /// [`MAX_KEYS`] keys; a key id can be given once.
    pub fn with_key(mut self, key_id: u32, key: SharedKey) -> Result<Self, ConfigError> {
        if self.keys.iter().any(|(id, _)| *id == key_id) {
            return Err(ConfigError::DuplicateKeyId(key_id));
        }
        if self.keys.len() >= MAX_KEYS {
            return Err(ConfigError::TooManyKeys);
        }
        self.keys.push((key_id, key));
        Ok(self)
    }

    /// Bounds on the lease a registration can ask for (default 100 ms to 300 s). `min` at
    /// least 1 ms, `max` at least `min` and at most `u32::MAX` ms. A short `max` makes dead
    /// instances leave sooner but costs more refresh traffic.
    pub fn with_lease_bounds(mut self, min: Duration, max: Duration) -> Result<Self, ConfigError> {
        let max_ms = Duration::from_millis(u64::from(u32::MAX));
        if min < Duration::from_millis(1) || max < min || max > max_ms {
            return Err(ConfigError::OutOfRange("lease bounds"));
        }
        self.min_lease = min;
        self.max_lease = max;
        Ok(self)
    }

    /// The lease given when a registration asks for 0 ms (default 50 s, the original
    /// router's expiry); clamped to the bounds when used. Must be non-zero.
    pub fn with_default_lease(mut self, lease: Duration) -> Result<Self, ConfigError> {
        if lease.is_zero() {
            return Err(ConfigError::OutOfRange("default lease"));
        }
        self.default_lease = lease;
        Ok(self)
    }

    /// Priority and weight of the FORWARD rules leases install (default
    /// [`DEFAULT_PRIORITY`] and 1; a weight of 0 is stored as 1 by the table).
    pub fn with_rule(mut self, priority: u32, weight: u32) -> Self {
        self.priority = priority;
        self.weight = weight;
        self
    }

    /// Most leases in total (default 4096); at least 1. Each costs a lease record and a
    /// service-table target.
    pub fn with_max_leases(mut self, n: usize) -> Result<Self, ConfigError> {
        self.max_leases = nonzero(n, "max leases")?;
        Ok(self)
    }

    /// Most leases created from one source IP address (default 256); at least 1. Keeps one
    /// host (or a key leaked to it) from filling the table.
    pub fn with_max_leases_per_source(mut self, n: usize) -> Result<Self, ConfigError> {
        self.max_leases_per_source = nonzero(n, "max leases per source")?;
        Ok(self)
    }

    /// Most registrant identities (key id, advertised address) whose replay state is kept
    /// (default 4096); at least 1. When full, the identity seen least recently is forgotten
    /// if nothing it registered can still be live (idle for longer than the maximum lease);
    /// otherwise the newcomer is refused.
    pub fn with_max_registrants(mut self, n: usize) -> Result<Self, ConfigError> {
        self.max_registrants = nonzero(n, "max registrants")?;
        Ok(self)
    }

    fn key(&self, key_id: u32) -> Option<&SharedKey> {
        self.keys
            .iter()
            .find(|(id, _)| *id == key_id)
            .map(|(_, k)| k)
    }

    fn lease(&self, requested_ms: u32) -> Duration {
        let asked = match requested_ms {
            0 => self.default_lease,
            ms => Duration::from_millis(u64::from(ms)),
        };
        asked.clamp(self.min_lease, self.max_lease)
    }
}

fn nonzero(n: usize, what: &'static str) -> Result<usize, ConfigError> {
    if n == 0 {
        Err(ConfigError::OutOfRange(what))
    } else {
        Ok(n)
    }
}

/// Why a datagram did not change the registry. Each variant has its own counter in
/// [`RegistryStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The bytes are not a control message.
    #[error("malformed control message: {0}")]
    Malformed(wire::Error),
    /// A valid control message, but not a REGISTER / UNREGISTER request.
    #[error("not a registration request")]
    NotARequest,
    /// The key id names no configured key.
    #[error("unknown key id {0}")]
    UnknownKey(u32),
    /// The MAC does not verify.
    #[error("bad MAC")]
    BadMac,
    /// The sequence number was seen before or is older than the replay window.
    #[error("replayed or stale sequence number (newest seen {newest})")]
    Replay {
        /// The newest sequence number accepted from this registrant.
        newest: u64,
    },
    /// Too many registrant identities, none idle enough to forget.
    #[error("too many registrants")]
    RegistrantLimit,
    /// The instance address is not a usable unicast socket address.
    #[error("unusable instance address {0}")]
    BadAddress(SocketAddr),
    /// The registry holds its maximum number of leases.
    #[error("lease limit reached")]
    LeaseLimit,
    /// This source address holds its maximum number of leases.
    #[error("lease limit reached for {0}")]
    SourceLimit(IpAddr),
    /// The service table refused the rule (duplicate operator rule, table full).
    #[error("service table: {0}")]
    Table(TableError),
}

/// Counters of a [`Registry`]. Plain numbers; metric names are given at the edge.
#[non_exhaustive]
#[derive(Default, Clone, Copy, Debug)]
pub struct RegistryStats {
    /// Leases held now.
    pub leases: u64,
    /// REGISTER messages accepted (new leases and refreshes).
    pub registrations: u64,
    /// UNREGISTER messages accepted (whether or not a lease existed).
    pub unregistrations: u64,
    /// Leases created.
    pub leases_added: u64,
    /// Leases refreshed.
    pub leases_refreshed: u64,
    /// Leases that ran out.
    pub leases_expired: u64,
    /// Leases withdrawn by UNREGISTER or [`Registry::clear`].
    pub leases_withdrawn: u64,
    /// UNREGISTER for a lease that did not exist.
    pub unregister_unknown: u64,
    /// A lease's rule was already gone from the table when the lease ended (someone else
    /// removed it).
    pub rules_missing: u64,
    /// Refused: not a control message ([`RegistryError::Malformed`]).
    pub dropped_malformed: u64,
    /// Refused: not a registration request.
    pub dropped_not_request: u64,
    /// Refused: unknown key id.
    pub dropped_unknown_key: u64,
    /// Refused: bad MAC.
    pub dropped_bad_mac: u64,
    /// Refused: replayed or stale sequence number.
    pub dropped_replay: u64,
    /// Refused: unusable instance address.
    pub dropped_bad_address: u64,
    /// Refused: registrant identity limit.
    pub refused_registrant_limit: u64,
    /// Refused: total lease limit.
    pub refused_lease_limit: u64,
    /// Refused: per-source lease limit.
    pub refused_source_limit: u64,
    /// Refused by the service table.
    pub refused_table: u64,
    /// Replies dropped because too many were waiting for `poll_transmit`.
    pub replies_dropped: u64,
    /// Events dropped because too many were waiting for `poll_event`.
    pub events_dropped: u64,
}

impl RegistryStats {
    fn count_refusal(&mut self, e: &RegistryError) {
        bump(match e {
            RegistryError::Malformed(_) => &mut self.dropped_malformed,
            RegistryError::NotARequest => &mut self.dropped_not_request,
            RegistryError::UnknownKey(_) => &mut self.dropped_unknown_key,
            RegistryError::BadMac => &mut self.dropped_bad_mac,
            RegistryError::Replay { .. } => &mut self.dropped_replay,
            RegistryError::RegistrantLimit => &mut self.refused_registrant_limit,
            RegistryError::BadAddress(_) => &mut self.dropped_bad_address,
            RegistryError::LeaseLimit => &mut self.refused_lease_limit,
            RegistryError::SourceLimit(_) => &mut self.refused_source_limit,
            RegistryError::Table(_) => &mut self.refused_table,
        });
    }
}

/// One lease, as reported by events and [`Registry::leases`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The registered prefix.
    pub prefix: ServicePrefix,
    /// Where the FORWARD rule points.
    pub instance: SocketAddr,
    /// When the lease runs out unless refreshed.
    pub expires: Timestamp,
    /// The key id of the last registration that set it.
    pub key_id: u32,
}

/// A router's registrations as [`Registry::snapshot`] saves them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrySnapshot {
    /// Live leases.
    pub leases: Vec<SavedLease>,
    /// Registrants' replay state.
    pub registrants: Vec<SavedRegistrant>,
}

/// One lease of a [`RegistrySnapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedLease {
    /// The registered prefix.
    pub prefix: ServicePrefix,
    /// Where its FORWARD rule points.
    pub instance: SocketAddr,
    /// What was left of the lease when the snapshot was taken.
    pub remaining: Duration,
    /// The key id of the registration that set it.
    pub key_id: u32,
    /// The source address charged for it (per-source limit).
    pub source: IpAddr,
}

/// One registrant of a [`RegistrySnapshot`]: its identity and newest sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedRegistrant {
    /// The key id it signs with.
    pub key_id: u32,
    /// The address it advertises (`None`: "use the source address you see").
    pub addr: Option<SocketAddr>,
    /// The newest sequence number accepted from it.
    pub newest: u64,
}

/// What [`Registry::restore`] took over and what it skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Leases restored (each with its FORWARD rule).
    pub leases: usize,
    /// Leases skipped: expired, unknown key, unusable address, limit, already held.
    pub leases_skipped: usize,
    /// Registrants whose replay window was restored.
    pub registrants: usize,
    /// Registrants skipped: unknown key or registrant limit.
    pub registrants_skipped: usize,
}

/// Something that happened to a lease, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A new lease and its rule were installed.
    Added(LeaseInfo),
    /// A lease was extended.
    Refreshed(LeaseInfo),
    /// A lease ran out; its rule is gone.
    Expired(LeaseInfo),
    /// A lease was withdrawn (UNREGISTER or [`Registry::clear`]); its rule is gone.
    Withdrawn(LeaseInfo),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct LeaseKey {
    prefix: ServicePrefix,
    instance: SocketAddr,
}

#[derive(Debug, Clone, Copy)]
struct LeaseState {
    expires: Timestamp,
    key_id: u32,
    /// The source IP charged for this lease (per-source limit).
    source: IpAddr,
}

/// A registrant as far as replay protection can tell them apart: only authenticated fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PeerKey {
    key_id: u32,
    addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    window: ReplayWindow,
    last_seen: Timestamp,
}

/// RFC 4303-style anti-replay window: the newest sequence number and which of the 64 below
/// it (itself included, bit 0) were seen.
#[derive(Debug, Clone, Copy, Default)]
struct ReplayWindow {
    top: u64,
    seen: u64,
}

impl ReplayWindow {
    fn is_fresh(&self, seq: u64) -> bool {
        if seq > self.top {
            return true;
        }
        let behind = self.top - seq;
        behind < REPLAY_WINDOW && self.seen & (1 << behind) == 0
    }

    /// Marks `seq` seen; call only after [`is_fresh`](Self::is_fresh).
    fn accept(&mut self, seq: u64) {
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.top = seq;
            self.seen |= 1;
        } else {
            self.seen |= 1 << (self.top - seq);
        }
    }
}

/// What an accepted request did, for the reply.
#[derive(Debug, Clone, Copy)]
struct Granted {
    instance: SocketAddr,
    lease: Duration,
    retval: RetVal,
}

#[derive(Debug, Clone, Copy)]
struct Reply {
    to: SocketAddr,
    bytes: [u8; REGISTER_MSG_LEN],
}

/// The router's registration state machine. See the [module docs](self).
///
/// Calling contract: feed every registration datagram to [`handle`](Self::handle), call
/// [`handle_timeout`](Self::handle_timeout) at [`poll_timeout`](Self::poll_timeout), and
/// after either drain [`poll_transmit`](Self::poll_transmit) (replies) and
/// [`poll_event`](Self::poll_event). `now` must not decrease between calls. Pass the same
/// [`ServiceTable`] every time.
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    leases: BTreeMap<LeaseKey, LeaseState>,
    expiries: BTreeSet<(Timestamp, LeaseKey)>,
    per_source: BTreeMap<IpAddr, usize>,
    peers: BTreeMap<PeerKey, Peer>,
    replies: BoundedQueue<Reply>,
    events: BoundedQueue<LeaseEvent>,
    stats: RegistryStats,
}

impl Registry {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> Self {
        Self {
            config,
            leases: BTreeMap::new(),
            expiries: BTreeSet::new(),
            per_source: BTreeMap::new(),
            peers: BTreeMap::new(),
            replies: BoundedQueue::new(MAX_REPLIES),
            events: BoundedQueue::new(MAX_EVENTS),
            stats: RegistryStats::default(),
        }
    }

    /// Handles one datagram from `from` (its UDP source). On `Err` the datagram changed
    /// nothing but, for authentic messages, the replay state and a queued reply; the reason
    /// has been counted.
    pub fn handle(
        &mut self,
        now: Timestamp,
        from: SocketAddr,
        bytes: &[u8],
        table: &mut ServiceTable,
    ) -> Result<(), RegistryError> {
        let result = self.handle_request(now, canonical(from), bytes, table);
        if let Err(e) = &result {
            self.stats.count_refusal(e);
        }
        result
    }

    /// Withdraws every lease whose expiry is at or before `now`.
    pub fn handle_timeout(&mut self, now: Timestamp, table: &mut ServiceTable) {
        while let Some(&(at, key)) = self.expiries.first() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            if let Some(info) = self.remove_lease(key, table) {
                bump(&mut self.stats.leases_expired);
                self.push_event(LeaseEvent::Expired(info));
            }
        }
    }

    /// Withdraws every lease (router shutdown: the original deleted all remote rules on exit).
    pub fn clear(&mut self, table: &mut ServiceTable) {
        while let Some(&key) = self.leases.keys().next() {
            self.withdraw_lease(key, table);
        }
    }

    /// The earliest lease expiry.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.expiries.first().map(|(at, _)| *at)
    }

    /// The next reply: written to the start of `buf`, returns its destination and length.
    /// `None` when no reply waits, or when `buf` is shorter than [`REGISTER_MSG_LEN`] (the
    /// reply stays queued).
    #[must_use]
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        let reply = self.replies.pop()?;
        let Some(out) = buf.get_mut(..REGISTER_MSG_LEN) else {
            self.replies.push_front(reply);
            return None;
        };
        out.copy_from_slice(&reply.bytes);
        Some((reply.to, REGISTER_MSG_LEN))
    }

    /// The next lease event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<LeaseEvent> {
        self.events.pop()
    }

    /// Every lease, ordered by prefix then instance.
    pub fn leases(&self) -> impl Iterator<Item = LeaseInfo> + '_ {
        self.leases.iter().map(|(k, s)| info(*k, s))
    }

    /// The counters, with the current number of leases.
    pub fn stats(&self) -> RegistryStats {
        RegistryStats {
            leases: self.leases.len() as u64,
            ..self.stats
        }
    }

    /// What a restarted router needs to carry on where this one stopped: every lease with
    /// the time it has left, and each registrant's newest sequence number (so registrations
    /// captured before the restart cannot be replayed to the new process). The caller
    /// stores it; see [`restore`](Self::restore).
    #[must_use]
    pub fn snapshot(&self, now: Timestamp) -> RegistrySnapshot {
        RegistrySnapshot {
            leases: self
                .leases
                .iter()
                .filter(|(_, s)| s.expires > now)
                .map(|(k, s)| SavedLease {
                    prefix: k.prefix,
                    instance: k.instance,
                    remaining: s.expires.saturating_duration_since(now),
                    key_id: s.key_id,
                    source: s.source,
                })
                .collect(),
            registrants: self
                .peers
                .iter()
                .map(|(k, p)| SavedRegistrant {
                    key_id: k.key_id,
                    addr: k.addr,
                    newest: p.window.top,
                })
                .collect(),
        }
    }

    /// Takes over a [`snapshot`](Self::snapshot) of a previous process: its leases become
    /// leases and FORWARD rules here, as if just registered, with the time they had left
    /// (clamped to this registry's maximum lease), and each registrant's replay window
    /// starts at its saved newest sequence number. Entries this registry would not accept
    /// from the network are skipped and counted in the report: a key id no longer
    /// configured (a rotated-out key must not keep routes alive), nothing left of the
    /// lease, an unusable instance address, or a limit reached. Leases already held are
    /// left as they are. Call it on a fresh registry, before registrations arrive.
    pub fn restore(
        &mut self,
        now: Timestamp,
        snapshot: &RegistrySnapshot,
        table: &mut ServiceTable,
    ) -> RestoreReport {
        let mut report = RestoreReport::default();
        for saved in &snapshot.registrants {
            if self.config.key(saved.key_id).is_none()
                || self.peers.len() >= self.config.max_registrants
            {
                report.registrants_skipped += 1;
                continue;
            }
            let key = PeerKey {
                key_id: saved.key_id,
                addr: saved.addr.map(canonical),
            };
            let peer = self.peers.entry(key).or_insert(Peer {
                window: ReplayWindow::default(),
                last_seen: now,
            });
            if saved.newest > peer.window.top {
                peer.window = ReplayWindow {
                    top: saved.newest,
                    // Everything at or below the saved newest counts as seen.
                    seen: u64::MAX,
                };
            }
            report.registrants += 1;
        }
        for saved in &snapshot.leases {
            let key = LeaseKey {
                prefix: saved.prefix,
                instance: canonical(saved.instance),
            };
            let usable = instance_addr(Some(key.instance), key.instance).is_ok();
            let remaining = saved.remaining.min(self.config.max_lease);
            if !usable
                || remaining.is_zero()
                || self.config.key(saved.key_id).is_none()
                || self.leases.contains_key(&key)
                || self
                    .add(key, now + remaining, saved.key_id, saved.source, table)
                    .is_err()
            {
                report.leases_skipped += 1;
                continue;
            }
            report.leases += 1;
        }
        report
    }

    fn handle_request(
        &mut self,
        now: Timestamp,
        from: SocketAddr,
        bytes: &[u8],
        table: &mut ServiceTable,
    ) -> Result<(), RegistryError> {
        let msg = ControlMsg::parse(bytes).map_err(RegistryError::Malformed)?;
        let (repr, withdraw) = registration(&msg)
            .filter(|_| msg.retval == RetVal::Ok)
            .ok_or(RegistryError::NotARequest)?;
        self.authenticate(&msg, &repr)?;
        let outcome = self.admit(now, &repr).and_then(|()| {
            let instance = instance_addr(repr.addr, from)?;
            if withdraw {
                Ok(self.withdraw(instance, &repr, table))
            } else {
                self.register(now, instance, from.ip(), &repr, table)
            }
        });
        self.queue_reply(from, &msg, repr, withdraw, &outcome);
        outcome.map(|_| ())
    }

    fn authenticate(&self, msg: &ControlMsg<'_>, repr: &RegisterRepr) -> Result<(), RegistryError> {
        let key = self
            .config
            .key(repr.key_id)
            .ok_or(RegistryError::UnknownKey(repr.key_id))?;
        if key.verify(Direction::Request, msg, &repr.mac) {
            Ok(())
        } else {
            Err(RegistryError::BadMac)
        }
    }

    /// Replay check: a fresh sequence number is recorded even if a later step refuses the
    /// request, so the same message cannot succeed when it is replayed later.
    fn admit(&mut self, now: Timestamp, repr: &RegisterRepr) -> Result<(), RegistryError> {
        let key = PeerKey {
            key_id: repr.key_id,
            addr: repr.addr.map(canonical),
        };
        if !self.peers.contains_key(&key) {
            self.make_room_for_peer(now)?;
        }
        let peer = self.peers.entry(key).or_insert(Peer {
            window: ReplayWindow::default(),
            last_seen: now,
        });
        if !peer.window.is_fresh(repr.sequence) {
            return Err(RegistryError::Replay {
                newest: peer.window.top,
            });
        }
        peer.window.accept(repr.sequence);
        peer.last_seen = now;
        Ok(())
    }

    fn make_room_for_peer(&mut self, now: Timestamp) -> Result<(), RegistryError> {
        if self.peers.len() < self.config.max_registrants {
            return Ok(());
        }
        let oldest = self
            .peers
            .iter()
            .min_by_key(|(_, p)| p.last_seen)
            .map(|(k, p)| (*k, p.last_seen));
        match oldest {
            Some((key, seen)) if seen + self.config.max_lease <= now => {
                self.peers.remove(&key);
                Ok(())
            }
            _ => Err(RegistryError::RegistrantLimit),
        }
    }

    fn register(
        &mut self,
        now: Timestamp,
        instance: SocketAddr,
        source: IpAddr,
        repr: &RegisterRepr,
        table: &mut ServiceTable,
    ) -> Result<Granted, RegistryError> {
        let key = LeaseKey {
            prefix: repr.prefix,
            instance,
        };
        let lease = self.config.lease(repr.lease_ms);
        let expires = now + lease;
        if self.leases.contains_key(&key) {
            self.refresh(key, expires, repr.key_id);
        } else {
            self.add(key, expires, repr.key_id, source, table)?;
        }
        bump(&mut self.stats.registrations);
        Ok(Granted {
            instance,
            lease,
            retval: RetVal::Ok,
        })
    }

    fn add(
        &mut self,
        key: LeaseKey,
        expires: Timestamp,
        key_id: u32,
        source: IpAddr,
        table: &mut ServiceTable,
    ) -> Result<(), RegistryError> {
        if self.leases.len() >= self.config.max_leases {
            return Err(RegistryError::LeaseLimit);
        }
        let from_source = self.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.config.max_leases_per_source {
            return Err(RegistryError::SourceLimit(source));
        }
        let rule = Rule::new(
            Action::Forward(key.instance),
            self.config.priority,
            self.config.weight,
        );
        table
            .insert(key.prefix, rule)
            .map_err(RegistryError::Table)?;
        let state = LeaseState {
            expires,
            key_id,
            source,
        };
        self.leases.insert(key, state);
        self.expiries.insert((expires, key));
        self.per_source.insert(source, from_source + 1);
        bump(&mut self.stats.leases_added);
        self.push_event(LeaseEvent::Added(info(key, &state)));
        Ok(())
    }

    fn refresh(&mut self, key: LeaseKey, expires: Timestamp, key_id: u32) {
        let Some(state) = self.leases.get_mut(&key) else {
            return;
        };
        self.expiries.remove(&(state.expires, key));
        state.expires = expires;
        state.key_id = key_id;
        let event = LeaseEvent::Refreshed(info(key, state));
        self.expiries.insert((expires, key));
        bump(&mut self.stats.leases_refreshed);
        self.push_event(event);
    }

    fn withdraw(
        &mut self,
        instance: SocketAddr,
        repr: &RegisterRepr,
        table: &mut ServiceTable,
    ) -> Granted {
        bump(&mut self.stats.unregistrations);
        let key = LeaseKey {
            prefix: repr.prefix,
            instance,
        };
        let retval = if self.withdraw_lease(key, table) {
            RetVal::Ok
        } else {
            bump(&mut self.stats.unregister_unknown);
            RetVal::NoEntry
        };
        Granted {
            instance,
            lease: Duration::ZERO,
            retval,
        }
    }

    fn withdraw_lease(&mut self, key: LeaseKey, table: &mut ServiceTable) -> bool {
        let Some(info) = self.remove_lease(key, table) else {
            return false;
        };
        bump(&mut self.stats.leases_withdrawn);
        self.push_event(LeaseEvent::Withdrawn(info));
        true
    }

    /// Forgets a lease and removes its rule.
    fn remove_lease(&mut self, key: LeaseKey, table: &mut ServiceTable) -> Option<LeaseInfo> {
        let state = self.leases.remove(&key)?;
        self.expiries.remove(&(state.expires, key));
        self.uncharge(state.source);
        if table
            .remove(&key.prefix, &Action::Forward(key.instance))
            .is_err()
        {
            bump(&mut self.stats.rules_missing);
        }
        Some(info(key, &state))
    }

    fn uncharge(&mut self, source: IpAddr) {
        if let Some(n) = self.per_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    /// Signs and queues the answer to an authentic request.
    fn queue_reply(
        &mut self,
        to: SocketAddr,
        msg: &ControlMsg<'_>,
        mut repr: RegisterRepr,
        withdraw: bool,
        outcome: &Result<Granted, RegistryError>,
    ) {
        let retval = match outcome {
            Ok(g) => {
                repr.addr = Some(g.instance);
                repr.lease_ms = u32::try_from(g.lease.as_millis()).unwrap_or(u32::MAX);
                g.retval
            }
            Err(RegistryError::Replay { newest }) => {
                repr.sequence = *newest;
                RetVal::Stale
            }
            Err(RegistryError::BadAddress(_)) => RetVal::Malformed,
            Err(_) => RetVal::Error,
        };
        let Some(key) = self.config.key(repr.key_id) else {
            return;
        };
        let Some(bytes) = seal(key, Direction::Reply, (msg.xid, retval), repr, withdraw) else {
            return;
        };
        if self.replies.push(Reply { to, bytes }) {
            bump(&mut self.stats.replies_dropped);
        }
    }

    fn push_event(&mut self, event: LeaseEvent) {
        if self.events.push(event) {
            bump(&mut self.stats.events_dropped);
        }
    }
}

fn info(key: LeaseKey, state: &LeaseState) -> LeaseInfo {
    LeaseInfo {
        prefix: key.prefix,
        instance: key.instance,
        expires: state.expires,
        key_id: state.key_id,
    }
}

/// The address the rule will point at: the advertised one, else the observed source.
fn instance_addr(
    advertised: Option<SocketAddr>,
    from: SocketAddr,
) -> Result<SocketAddr, RegistryError> {
    let addr = canonical(advertised.unwrap_or(from));
    let ip = addr.ip();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if addr.port() == 0 || ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err(RegistryError::BadAddress(addr));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::test_util::{KEY_ID, key, other_key, prefix, t};
    use crate::wire::ServiceId;

    fn server() -> SocketAddr {
        "192.0.2.10:54325".parse().unwrap()
    }

    /// The registry's config with the test key: what each test's registry starts from.
    fn base_config() -> RegistryConfig {
        RegistryConfig::new().with_key(KEY_ID, key()).unwrap()
    }

    fn registry() -> Registry {
        Registry::new(base_config())
    }

    fn repr(seq: u64, addr: Option<SocketAddr>, lease_ms: u32) -> RegisterRepr {
        RegisterRepr {
            re_register: false,
            srvid_flags: 0,
            prefix: prefix(),
            addr,
            lease_ms,
            key_id: KEY_ID,
            sequence: seq,
            mac: [0; 16],
        }
    }

    fn msg(repr: RegisterRepr, withdraw: bool) -> [u8; REGISTER_MSG_LEN] {
        seal(
            &key(),
            Direction::Request,
            (repr.sequence as u32, RetVal::Ok),
            repr,
            withdraw,
        )
        .unwrap()
    }

    /// The server's registration `seq` sealed as `key`, `direction` and `retval` (transaction
    /// 1) say: a message the registry must refuse.
    fn forge(
        key: &SharedKey,
        direction: Direction,
        retval: RetVal,
        seq: u64,
    ) -> [u8; REGISTER_MSG_LEN] {
        seal(
            key,
            direction,
            (1, retval),
            repr(seq, Some(server()), 0),
            false,
        )
        .unwrap()
    }

    fn register(seq: u64, lease_ms: u32) -> [u8; REGISTER_MSG_LEN] {
        msg(repr(seq, Some(server()), lease_ms), false)
    }

    fn resolves(table: &ServiceTable) -> Vec<SocketAddr> {
        table
            .lookup(&ServiceId::from_u32(0x0000_d955))
            .map(|e| {
                e.targets()
                    .iter()
                    .filter_map(|t| t.action().forward_addr())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn reply(r: &mut Registry) -> (SocketAddr, RetVal, RegisterRepr) {
        let mut buf = [0u8; 200];
        let (to, n) = r.poll_transmit(&mut buf).expect("a reply");
        let msg = ControlMsg::parse(&buf[..n]).unwrap();
        let (repr, _) = registration(&msg).unwrap();
        assert!(
            key().verify(Direction::Reply, &msg, &repr.mac),
            "reply is signed"
        );
        assert!(
            !key().verify(Direction::Request, &msg, &repr.mac),
            "not as a request"
        );
        (to, msg.retval, repr)
    }

    fn events(r: &mut Registry) -> Vec<LeaseEvent> {
        core::iter::from_fn(|| r.poll_event()).collect()
    }

    #[test]
    fn add_refresh_expire() {
        let (mut r, mut table) = (registry(), ServiceTable::new());
        r.handle(t(0), server(), &register(1, 2_000), &mut table)
            .unwrap();
        assert_eq!(resolves(&table), [server()]);
        assert_eq!(r.poll_timeout(), Some(t(2_000)));
        let (to, rv, rep) = reply(&mut r);
        assert_eq!(
            (to, rv, rep.addr, rep.lease_ms),
            (server(), RetVal::Ok, Some(server()), 2_000)
        );

        r.handle(t(1_500), server(), &register(2, 2_000), &mut table)
            .unwrap();
        assert_eq!(r.poll_timeout(), Some(t(3_500)));
        r.handle_timeout(t(3_499), &mut table);
        assert_eq!(resolves(&table), [server()]);
        r.handle_timeout(t(3_500), &mut table);
        assert!(resolves(&table).is_empty());
        assert!(table.is_empty());
        assert_eq!(r.poll_timeout(), None);
        let info = LeaseInfo {
            prefix: prefix(),
            instance: server(),
            expires: t(2_000),
            key_id: KEY_ID,
        };
        let later = LeaseInfo {
            expires: t(3_500),
            ..info
        };
        assert_eq!(
            events(&mut r),
            [
                LeaseEvent::Added(info),
                LeaseEvent::Refreshed(later),
                LeaseEvent::Expired(later)
            ]
        );
        let s = r.stats();
        assert_eq!(
            (
                s.leases,
                s.leases_added,
                s.leases_refreshed,
                s.leases_expired
            ),
            (0, 1, 1, 1)
        );
        assert_eq!(s.registrations, 2);
    }

    #[test]
    fn a_restarted_router_keeps_leases_and_refuses_replays() {
        let (mut old, mut old_table) = (registry(), ServiceTable::new());
        old.handle(t(0), server(), &register(5, 10_000), &mut old_table)
            .unwrap();
        let saved = old.snapshot(t(4_000));
        assert_eq!(saved.leases.len(), 1);
        assert_eq!(saved.leases[0].remaining, Duration::from_secs(6));
        assert_eq!(saved.registrants[0].newest, 5);

        // The new process has its own clock; the lease keeps what it had left.
        let (mut new, mut table) = (registry(), ServiceTable::new());
        let report = new.restore(t(100), &saved, &mut table);
        assert_eq!(
            report,
            RestoreReport {
                leases: 1,
                leases_skipped: 0,
                registrants: 1,
                registrants_skipped: 0
            }
        );
        assert_eq!(resolves(&table), [server()]);
        assert_eq!(new.poll_timeout(), Some(t(6_100)));
        // A captured registration (sequence 5 or older) is still a replay.
        assert!(matches!(
            new.handle(t(200), server(), &register(5, 10_000), &mut table),
            Err(RegistryError::Replay { newest: 5 })
        ));
        assert!(matches!(
            new.handle(t(200), server(), &register(4, 10_000), &mut table),
            Err(RegistryError::Replay { newest: 5 })
        ));
        // The registrant's next refresh carries on.
        new.handle(t(300), server(), &register(6, 10_000), &mut table)
            .unwrap();
        assert_eq!(new.poll_timeout(), Some(t(10_300)));

        // A registry without the key takes nothing over; an expired lease is not saved.
        let other = RegistryConfig::new().with_key(KEY_ID + 1, key()).unwrap();
        let (mut stranger, mut empty) = (Registry::new(other), ServiceTable::new());
        let report = stranger.restore(t(0), &saved, &mut empty);
        assert_eq!((report.leases, report.leases_skipped), (0, 1));
        assert_eq!(report.registrants_skipped, 1);
        assert!(empty.is_empty());
        assert!(old.snapshot(t(10_000)).leases.is_empty());
    }

    #[test]
    fn sub_second_leases_and_clamping() {
        let config = base_config()
            .with_lease_bounds(Duration::from_millis(50), Duration::from_secs(10))
            .unwrap();
        let (mut r, mut table) = (Registry::new(config), ServiceTable::new());
        r.handle(t(0), server(), &register(1, 250), &mut table)
            .unwrap();
        assert_eq!(r.poll_timeout(), Some(t(250)));
        r.handle(t(100), server(), &register(2, 10), &mut table)
            .unwrap();
        assert_eq!(
            r.poll_timeout(),
            Some(t(150)),
            "clamped up to the 50 ms minimum"
        );
        r.handle(t(120), server(), &register(3, u32::MAX), &mut table)
            .unwrap();
        assert_eq!(
            r.poll_timeout(),
            Some(t(10_120)),
            "clamped down to the maximum"
        );
        r.handle(t(130), server(), &register(4, 0), &mut table)
            .unwrap();
        assert_eq!(
            r.poll_timeout(),
            Some(t(10_130)),
            "0 asks for the default (50 s), clamped"
        );
    }

    #[test]
    fn withdraw_removes_rule_and_unknown_withdraw_is_noentry() {
        let (mut r, mut table) = (registry(), ServiceTable::new());
        r.handle(t(0), server(), &register(1, 5_000), &mut table)
            .unwrap();
        let _ = reply(&mut r);
        r.handle(
            t(10),
            server(),
            &msg(repr(2, Some(server()), 0), true),
            &mut table,
        )
        .unwrap();
        assert!(table.is_empty());
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(reply(&mut r).1, RetVal::Ok);
        r.handle(
            t(20),
            server(),
            &msg(repr(3, Some(server()), 0), true),
            &mut table,
        )
        .unwrap();
        assert_eq!(reply(&mut r).1, RetVal::NoEntry);
        let s = r.stats();
        assert_eq!(
            (s.leases_withdrawn, s.unregister_unknown, s.unregistrations),
            (1, 1, 2)
        );
        assert!(matches!(
            events(&mut r).last(),
            Some(LeaseEvent::Withdrawn(_))
        ));
    }

    #[test]
    fn observed_source_for_natted_instances() {
        let (mut r, mut table) = (registry(), ServiceTable::new());
        let public: SocketAddr = "[::ffff:203.0.113.5]:40001".parse().unwrap();
        let canonical_public: SocketAddr = "203.0.113.5:40001".parse().unwrap();
        r.handle(t(0), public, &msg(repr(1, None, 1_000), false), &mut table)
            .unwrap();
        assert_eq!(resolves(&table), [canonical_public]);
        let (to, rv, rep) = reply(&mut r);
        assert_eq!(
            (to, rv, rep.addr),
            (canonical_public, RetVal::Ok, Some(canonical_public))
        );
        // The same registrant after a NAT rebinding: a second lease for the new mapping; the
        // old one is withdrawn by name (advertised address) or expires.
        let rebound: SocketAddr = "203.0.113.5:40002".parse().unwrap();
        r.handle(
            t(10),
            rebound,
            &msg(repr(2, None, 1_000), false),
            &mut table,
        )
        .unwrap();
        assert_eq!(resolves(&table).len(), 2);
        r.handle(
            t(20),
            rebound,
            &msg(repr(3, Some(canonical_public), 0), true),
            &mut table,
        )
        .unwrap();
        assert_eq!(resolves(&table), [rebound]);
    }

    #[test]
    fn replays_are_refused_within_and_behind_the_window() {
        let (mut r, mut table) = (registry(), ServiceTable::new());
        let first = register(10, 1_000);
        r.handle(t(0), server(), &first, &mut table).unwrap();
        let _ = reply(&mut r);
        // Reordered but new: accepted.
        r.handle(t(1), server(), &register(12, 1_000), &mut table)
            .unwrap();
        r.handle(t(2), server(), &register(11, 1_000), &mut table)
            .unwrap();
        // Replayed: refused, answered Stale with the newest sequence number.
        let _ = (reply(&mut r), reply(&mut r));
        assert_eq!(
            r.handle(t(3), server(), &first, &mut table),
            Err(RegistryError::Replay { newest: 12 })
        );
        let (_, rv, rep) = reply(&mut r);
        assert_eq!((rv, rep.sequence), (RetVal::Stale, 12));
        // Far behind the window, never seen: refused too.
        r.handle(t(4), server(), &register(200, 1_000), &mut table)
            .unwrap();
        assert!(
            r.handle(t(5), server(), &register(100, 1_000), &mut table)
                .is_err()
        );
        assert!(
            r.handle(t(6), server(), &register(137, 1_000), &mut table)
                .is_ok()
        );
        // A replayed withdrawal from anywhere: refused, the lease stays.
        let bye = msg(repr(201, Some(server()), 0), true);
        r.handle(t(7), server(), &bye, &mut table).unwrap();
        r.handle(t(8), server(), &register(202, 1_000), &mut table)
            .unwrap();
        let elsewhere: SocketAddr = "198.51.100.1:9".parse().unwrap();
        assert!(r.handle(t(9), elsewhere, &bye, &mut table).is_err());
        assert_eq!(resolves(&table), [server()]);
        assert_eq!(r.stats().dropped_replay, 3);
    }

    #[test]
    fn natted_replay_from_another_source_is_refused() {
        let (mut r, mut table) = (registry(), ServiceTable::new());
        let captured = msg(repr(1, None, 1_000), false);
        r.handle(t(0), server(), &captured, &mut table).unwrap();
        let victim: SocketAddr = "198.51.100.7:80".parse().unwrap();
        assert!(matches!(
            r.handle(t(1), victim, &captured, &mut table),
            Err(RegistryError::Replay { .. })
        ));
        assert_eq!(resolves(&table), [server()]);
    }

    #[test]
    fn bad_mac_unknown_key_and_garbage_are_dropped_silently() {
        let (mut r, mut table) = (registry(), ServiceTable::new());
        let mut from_server = |m: &[u8]| r.handle(t(0), server(), m, &mut table);
        let mut forged = register(1, 1_000);
        forged[REGISTER_MSG_LEN - 1] ^= 1;
        assert_eq!(from_server(&forged), Err(RegistryError::BadMac));
        let mut tampered = register(2, 1_000);
        tampered[66] ^= 0x10; // the lease field (offset 64), covered by the MAC
        assert_eq!(from_server(&tampered), Err(RegistryError::BadMac));
        let wrong_key = forge(&other_key(), Direction::Request, RetVal::Ok, 3);
        assert_eq!(from_server(&wrong_key), Err(RegistryError::BadMac));
        let mut unknown = repr(4, Some(server()), 0);
        unknown.key_id = 99;
        let unknown = seal(&key(), Direction::Request, (1, RetVal::Ok), unknown, false).unwrap();
        assert_eq!(from_server(&unknown), Err(RegistryError::UnknownKey(99)));
        assert!(matches!(
            from_server(&[1, 2, 3]),
            Err(RegistryError::Malformed(_))
        ));
        // A reply (or a request reflected as one) is not a request.
        let as_reply = forge(&key(), Direction::Reply, RetVal::Stale, 5);
        assert_eq!(from_server(&as_reply), Err(RegistryError::NotARequest));
        // Nothing changed, nothing to answer, and the forged messages burned no sequence
        // number: the genuine message 1 still goes through.
        assert!(table.is_empty());
        assert!(r.poll_transmit(&mut [0; 200]).is_none());
        r.handle(t(1), server(), &register(1, 1_000), &mut table)
            .unwrap();
        let s = r.stats();
        assert_eq!(
            (
                s.dropped_bad_mac,
                s.dropped_unknown_key,
                s.dropped_malformed,
                s.dropped_not_request
            ),
            (3, 1, 1, 1)
        );
    }

    #[test]
    fn bad_addresses_are_refused_with_a_reply() {
        let (mut r, mut table) = (registry(), ServiceTable::new());
        for (seq, bad) in [
            "0.0.0.0:5",
            "192.0.2.1:0",
            "224.0.0.1:5",
            "255.255.255.255:5",
            "[::]:5",
        ]
        .into_iter()
        .enumerate()
        {
            let bad: SocketAddr = bad.parse().unwrap();
            let m = msg(repr(seq as u64, Some(bad), 0), false);
            assert!(matches!(
                r.handle(t(0), server(), &m, &mut table),
                Err(RegistryError::BadAddress(_))
            ));
            assert_eq!(reply(&mut r).1, RetVal::Malformed);
        }
        assert!(table.is_empty());
    }

    #[test]
    fn limits_total_and_per_source() {
        let config = base_config()
            .with_max_leases(3)
            .unwrap()
            .with_max_leases_per_source(2)
            .unwrap();
        let (mut r, mut table) = (Registry::new(config), ServiceTable::new());
        let addr = |i: u16| SocketAddr::new(server().ip(), 1000 + i);
        let other = |i: u16| SocketAddr::new("192.0.2.99".parse().unwrap(), 1000 + i);
        let m = |seq, instance, withdraw| msg(repr(seq, Some(instance), 0), withdraw);
        r.handle(t(0), server(), &m(1, addr(1), false), &mut table)
            .unwrap();
        r.handle(t(0), server(), &m(2, addr(2), false), &mut table)
            .unwrap();
        assert_eq!(
            r.handle(t(0), server(), &m(3, addr(3), false), &mut table),
            Err(RegistryError::SourceLimit(server().ip()))
        );
        // Refreshing an existing lease is not limited.
        r.handle(t(0), server(), &m(4, addr(1), false), &mut table)
            .unwrap();
        let o = other(0);
        r.handle(t(0), o, &m(1, other(1), false), &mut table)
            .unwrap();
        assert_eq!(
            r.handle(t(0), o, &m(2, other(2), false), &mut table),
            Err(RegistryError::LeaseLimit)
        );
        assert_eq!(table.target_count(), 3);
        // Withdrawing frees the source's quota.
        r.handle(t(0), server(), &m(5, addr(1), true), &mut table)
            .unwrap();
        r.handle(t(0), server(), &m(6, addr(3), false), &mut table)
            .unwrap();
        let s = r.stats();
        assert_eq!(
            (s.refused_source_limit, s.refused_lease_limit, s.leases),
            (1, 1, 3)
        );
    }

    #[test]
    fn registrant_identities_are_bounded() {
        let config = base_config()
            .with_max_registrants(1)
            .unwrap()
            .with_lease_bounds(Duration::from_millis(1), Duration::from_secs(1))
            .unwrap();
        let (mut r, mut table) = (Registry::new(config), ServiceTable::new());
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:1".parse().unwrap();
        r.handle(t(0), a, &msg(repr(1, Some(a), 100), false), &mut table)
            .unwrap();
        assert_eq!(
            r.handle(t(500), b, &msg(repr(1, Some(b), 100), false), &mut table),
            Err(RegistryError::RegistrantLimit)
        );
        // Once `a` has been silent for longer than any lease, its replay state can go.
        r.handle(t(1_000), b, &msg(repr(1, Some(b), 100), false), &mut table)
            .unwrap();
    }

    #[test]
    fn operator_rules_are_not_adopted_or_removed() {
        let (mut r, mut table) = (registry(), ServiceTable::new());
        table.insert(prefix(), Rule::forward(server())).unwrap();
        assert!(matches!(
            r.handle(t(0), server(), &register(1, 100), &mut table),
            Err(RegistryError::Table(TableError::DuplicateTarget { .. }))
        ));
        assert_eq!(reply(&mut r).1, RetVal::Error);
        r.handle_timeout(t(1_000), &mut table);
        assert_eq!(resolves(&table), [server()]);
    }

    #[test]
    fn clear_withdraws_everything() {
        let (mut r, mut table) = (registry(), ServiceTable::new());
        r.handle(t(0), server(), &register(1, 1_000), &mut table)
            .unwrap();
        r.handle(t(0), server(), &msg(repr(2, None, 0), false), &mut table)
            .unwrap();
        assert_eq!(r.leases().count(), 1, "same instance: one lease");
        let other: SocketAddr = "192.0.2.11:1".parse().unwrap();
        r.handle(t(0), other, &msg(repr(3, None, 0), false), &mut table)
            .unwrap();
        assert_eq!(r.leases().count(), 2);
        r.clear(&mut table);
        assert!(table.is_empty());
        assert_eq!((r.leases().count(), r.poll_timeout()), (0, None));
    }

    #[test]
    fn small_reply_buffer_keeps_the_reply() {
        let (mut r, mut table) = (registry(), ServiceTable::new());
        r.handle(t(0), server(), &register(1, 1_000), &mut table)
            .unwrap();
        assert!(r.poll_transmit(&mut [0; 10]).is_none());
        assert!(r.poll_transmit(&mut [0; REGISTER_MSG_LEN]).is_some());
    }

    #[test]
    fn replay_window_unit() {
        let mut w = ReplayWindow::default();
        for seq in [5, 3, 69, 6] {
            assert!(w.is_fresh(seq), "{seq}");
            w.accept(seq);
            assert!(!w.is_fresh(seq), "{seq} again");
        }
        assert!(!w.is_fresh(5), "falls out of the window at 69");
        assert!(w.is_fresh(68));
        w.accept(u64::MAX);
        assert!(!w.is_fresh(u64::MAX) && w.is_fresh(u64::MAX - 1));
    }

    proptest::proptest! {
        /// Any bytes, and any corruption of a valid message, from any source: no panic, and
        /// nothing changes unless the corrupted message still means what was signed.
        #[test]
        fn untrusted_bytes_never_panic(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            flip in 0..REGISTER_MSG_LEN,
            bit in 0u8..8,
            port in 1u16..,
        ) {
            let (mut r, mut table) = (registry(), ServiceTable::new());
            let from = SocketAddr::new(server().ip(), port);
            let _ = r.handle(t(0), from, &junk, &mut table);
            let original = register(1, 1_000);
            let mut m = original;
            m[flip] ^= 1 << bit;
            let _ = r.handle(t(0), from, &m, &mut table);
            // The MAC covers the message's meaning (`with_mac_input` re-encodes it), so only
            // a flip in a bit the parser ignores (reserved or unused address bytes) can
            // still install the rule, and then the message means exactly what was signed.
            if !table.is_empty() {
                proptest::prop_assert_eq!(ControlMsg::parse(&m), ControlMsg::parse(&original));
            }
            r.handle_timeout(t(10_000), &mut table);
        }
    }

    #[test]
    fn config_validation() {
        assert_eq!(
            RegistryConfig::new()
                .with_key(1, key())
                .unwrap()
                .with_key(1, key())
                .unwrap_err(),
            ConfigError::DuplicateKeyId(1)
        );
        let mut c = RegistryConfig::new();
        for id in 0..MAX_KEYS as u32 {
            c = c.with_key(id, key()).unwrap();
        }
        assert_eq!(c.with_key(99, key()).unwrap_err(), ConfigError::TooManyKeys);
        let c = RegistryConfig::new();
        assert!(
            c.clone()
                .with_lease_bounds(Duration::ZERO, Duration::from_secs(1))
                .is_err()
        );
        assert!(
            c.clone()
                .with_lease_bounds(Duration::from_secs(2), Duration::from_secs(1))
                .is_err()
        );
        assert!(
            c.clone()
                .with_lease_bounds(Duration::from_secs(1), Duration::from_secs(1 << 40))
                .is_err()
        );
        assert!(c.clone().with_max_leases(0).is_err());
        assert!(c.clone().with_default_lease(Duration::ZERO).is_err());
    }
}
