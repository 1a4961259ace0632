//! The control plane as sans-IO state machines: service registration (both ends) and the
//! DELAY queue.
//!
//! | module | side | what it does |
//! |---|---|---|
//! | [`registrant`] | server (instance) | sends authenticated REGISTER / UNREGISTER to routers, refreshes them, retries unacknowledged ones |
//! | [`lease`] | service router | verifies registrations, keeps one lease per (prefix, instance), turns leases into FORWARD rules, expires them |
//! | [`delay`] | router or host | parks SYNs that hit a DELAY rule until a controller releases or drops them |
//!
//! Like the rest of the core, nothing here reads a clock, draws randomness or touches a
//! socket: every input carries `now` ([`Timestamp`](crate::time::Timestamp)), datagrams come
//! out of `poll_transmit` into the caller's buffer, deadlines out of `poll_timeout`, and
//! events out of `poll_event`. Every queue is bounded; bytes from the network never panic and
//! are refused with a counted reason.
//!
//! # Registration protocol
//!
//! A server-side [`Registrant`] sends, per (router, prefix), a REGISTER
//! ([`RegisterRepr`]) at once, then every refresh
//! interval (default 20 s, the original servd's); the lease it asks for defaults to 2.5 × the
//! refresh interval (50 s, the original router's expiry). A router's [`Registry`] turns each
//! accepted REGISTER into a lease on (prefix, instance address) and a FORWARD rule in the
//! [`ServiceTable`](crate::service_table::ServiceTable); the lease expires unless refreshed,
//! and UNREGISTER withdraws it at once.
//!
//! **Acknowledged, with soft state underneath.** The router answers every *authenticated*
//! registration with the same message type, the request's `xid`, and a [`RetVal`]: `Ok`
//! (with the instance address it used and the lease it granted), `Stale` (with its newest
//! sequence number, so a restarted registrant can resynchronise), `NoEntry` (UNREGISTER of
//! nothing) or `Error` / `Malformed` (refused: limits, table conflict, bad address). The
//! registrant retries an unanswered REGISTER with exponential backoff starting at 1 s and
//! capped at the refresh interval, so a router that never answers still gets one message per
//! refresh interval: plain soft state. Unauthenticated messages get no answer at all (no
//! reflection for strangers, and a reply is never larger than the request).
//!
//! **Authentication** ([`SharedKey`]): the 16-byte MAC field of a request holds
//! HMAC-SHA256(key, message with the MAC field zeroed) truncated to 16 bytes, the input
//! being exactly what [`ControlMsg::with_mac_input`](crate::wire::ControlMsg::with_mac_input)
//! yields (header included, so type, retval and xid are covered). A reply's MAC is
//! HMAC-SHA256(key, [`REPLY_LABEL`] ‖ message with the MAC zeroed): a different domain, so a
//! request reflected back at its sender cannot pass for an acknowledgement. Tags are compared
//! in constant time.
//!
//! **Replay protection**: each registrant has a sequence counter that grows with every message
//! it sends (to any router, for any prefix). A router keeps, per *authenticated* identity
//! (key id, advertised address or "observed source"), the newest sequence number and a 64-wide
//! window behind it (IPsec's anti-replay window, RFC 4303 §3.4.3), so messages reordered
//! within a burst are still accepted while any message seen before, or older than the window,
//! is refused as `Stale`. The observed UDP source is deliberately *not* part of the identity:
//! it is not covered by the MAC, and keying on it would let anyone replay a captured
//! "use my source address" registration from a spoofed source and point the service at a
//! victim. Registrants that rely on the observed source should therefore each have their own
//! key id (several of them sharing one key id and one window would keep resynchronising).
//!
//! # Deviations from the original (`SERVAL-ORIGINAL.md` §4.7, §5, §10) and why
//!
//! * **Authenticated registrations** (above). The original accepted any REGISTER and any
//!   UNREGISTER for the sender's own address, so anyone could hijack or withdraw a service.
//! * **The instance address is carried**, with "use the UDP source you see" as an explicit
//!   option for instances behind a NAT. The original always believed the IP source of the
//!   datagram, which is spoofable and, behind a NAT, not even the right port.
//! * **Network byte order everywhere** (the wire module's job) and explicit lease durations,
//!   clamped by the router to its configured bounds; sub-second intervals work.
//! * **Bounded state**: leases in total and per source address, registrant identities,
//!   queued replies and events; excess is refused and counted. The original had no limits.
//! * **Acknowledgements and retries** where the original sent once and hoped (it retried only
//!   local send errors).
//! * **Expiry inside the registry**, driven by `handle_timeout`, instead of servd timers
//!   outside the table; `poll_timeout` is the earliest expiry.
//! * **A DELAY queue that works on routers** ([`delay`]): the original queued a null packet
//!   for received SYNs, could re-delay a released packet forever, and never timed anything
//!   out. Ours stores the bytes, bounds the queue by count, bytes, age and per service, and
//!   drops a packet that keeps coming back to DELAY.

pub mod delay;
pub mod lease;
pub mod plane;
pub mod registrant;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wire::ControlMsg;
use crate::wire::control_msg::{
    MsgBody, Packet, REGISTER_MAC_LEN, REGISTER_MSG_LEN, RegisterRepr, RetVal,
};

pub use delay::{
    DelayConfig, DelayDropReason, DelayEvent, DelayQueue, DelayStats, DelayedPacket, PacketId,
    Refused, Released, VerdictError, emit_notify,
};
pub use lease::{
    LeaseEvent, LeaseInfo, Registry, RegistryConfig, RegistryError, RegistrySnapshot,
    RegistryStats, RestoreReport, SavedLease, SavedRegistrant,
};
pub use plane::{ControlEvent, ControlPlane, ControlPlaneStats, RoleError};
pub use registrant::{
    Registrant, RegistrantConfig, RegistrantError, RegistrantEvent, RegistrantStats, ReplyError,
};

/// Prefix of a registration reply's MAC input: separates replies from requests.
pub const REPLY_LABEL: &[u8] = b"serval-register-reply-v1";

/// Why a configuration value was refused. Raised when the config is built, never later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The named value is outside its documented range.
    #[error("{0} is out of range")]
    OutOfRange(&'static str),
    /// A shared key is shorter than [`SharedKey::MIN_LEN`] or longer than
    /// [`SharedKey::MAX_LEN`] bytes.
    #[error("a shared key must be 16 to 64 bytes long")]
    KeyLength,
    /// More than [`lease::MAX_KEYS`] keys were configured.
    #[error("too many keys")]
    TooManyKeys,
    /// Two keys were configured under one key id.
    #[error("key id {0} is configured twice")]
    DuplicateKeyId(u32),
}

type HmacSha256 = Hmac<Sha256>;

/// A secret shared by registrants and routers, authenticating registrations.
///
/// Holds the keyed HMAC-SHA256 state, not the key bytes; `Debug` prints nothing secret.
#[derive(Clone)]
pub struct SharedKey {
    mac: HmacSha256,
}

impl core::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SharedKey(..)")
    }
}

impl SharedKey {
    /// Shortest accepted key (128 bits).
    pub const MIN_LEN: usize = 16;
    /// Longest accepted key (one SHA-256 block; longer keys would be hashed anyway).
    pub const MAX_LEN: usize = 64;

    /// A key from its bytes (16 to 64 of them; use random bytes, not a password).
    pub fn new(bytes: &[u8]) -> Result<Self, ConfigError> {
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&bytes.len()) {
            return Err(ConfigError::KeyLength);
        }
        let mac = HmacSha256::new_from_slice(bytes).map_err(|_| ConfigError::KeyLength)?;
        Ok(Self { mac })
    }

    /// The truncated tag over a registration message in direction `dir`; `None` for a
    /// message that carries no MAC.
    pub(crate) fn sign(
        &self,
        dir: Direction,
        msg: &ControlMsg<'_>,
    ) -> Option<[u8; REGISTER_MAC_LEN]> {
        let tag = self.keyed(dir, msg)?.finalize().into_bytes();
        let mut out = [0u8; REGISTER_MAC_LEN];
        out.copy_from_slice(tag.get(..REGISTER_MAC_LEN)?);
        Some(out)
    }

    /// Whether `tag` is the tag of `msg` in direction `dir`, compared in constant time.
    pub(crate) fn verify(&self, dir: Direction, msg: &ControlMsg<'_>, tag: &[u8]) -> bool {
        self.keyed(dir, msg)
            .is_some_and(|m| m.verify_truncated_left(tag).is_ok())
    }

    fn keyed(&self, dir: Direction, msg: &ControlMsg<'_>) -> Option<HmacSha256> {
        let mut m = self.mac.clone();
        if dir == Direction::Reply {
            m.update(REPLY_LABEL);
        }
        msg.with_mac_input(|input| m.update(input))?;
        Some(m)
    }
}

/// A REGISTER (or, with `withdraw`, UNREGISTER) message signed for direction `dir`, as
/// bytes. `repr.mac` is ignored and replaced by the tag.
pub(crate) fn seal(
    key: &SharedKey,
    dir: Direction,
    header: (u32, RetVal),
    mut repr: RegisterRepr,
    withdraw: bool,
) -> Option<[u8; REGISTER_MSG_LEN]> {
    let (xid, retval) = header;
    let body = |r| {
        if withdraw {
            MsgBody::Unregister(r)
        } else {
            MsgBody::Register(r)
        }
    };
    repr.mac = key.sign(
        dir,
        &ControlMsg {
            xid,
            retval,
            body: body(repr),
        },
    )?;
    let msg = ControlMsg {
        xid,
        retval,
        body: body(repr),
    };
    let mut out = [0u8; REGISTER_MSG_LEN];
    // A registration is exactly REGISTER_MSG_LEN bytes, so `emit` fits.
    msg.emit(&mut Packet::new_unchecked(&mut out[..]));
    Some(out)
}

/// The registration in a parsed message: its body and whether it is an UNREGISTER.
pub(crate) fn registration(msg: &ControlMsg<'_>) -> Option<(RegisterRepr, bool)> {
    match msg.body {
        MsgBody::Register(r) => Some((r, false)),
        MsgBody::Unregister(r) => Some((r, true)),
        _ => None,
    }
}

/// Which way a registration message travels; selects the MAC domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Registrant to router.
    Request,
    /// Router to registrant.
    Reply,
}

/// `addr` in one canonical form, so one endpoint has one key: IPv4-mapped IPv6 addresses
/// become IPv4 (dual-stack sockets report them), and IPv6 flow labels and scope ids, which
/// the wire does not carry, are cleared.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => addr,
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => SocketAddr::V6(SocketAddrV6::new(*a.ip(), a.port(), 0, 0)),
        },
    }
}

/// A FIFO that keeps at most `cap` items, dropping the oldest to make room.
#[derive(Debug, Clone)]
pub(crate) struct BoundedQueue<T> {
    items: VecDeque<T>,
    cap: usize,
}

impl<T> BoundedQueue<T> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            items: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Appends `item`; returns `true` when the oldest item was dropped to make room.
    pub(crate) fn push(&mut self, item: T) -> bool {
        let dropped = self.items.len() >= self.cap && self.items.pop_front().is_some();
        self.items.push_back(item);
        dropped
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    pub(crate) fn push_front(&mut self, item: T) {
        self.items.push_front(item);
    }
}

/// Adds one to a counter, saturating.
pub(crate) fn bump(counter: &mut u64) {
    *counter = counter.saturating_add(1);
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::SharedKey;
    use crate::time::Timestamp;
    use crate::wire::ServicePrefix;

    /// The key id both ends of the registration tests use for [`key`].
    pub(crate) const KEY_ID: u32 = 7;

    /// Virtual time in milliseconds, as the control tests count it.
    pub(crate) fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    /// The prefix the registrant registers and the registry leases.
    pub(crate) fn prefix() -> ServicePrefix {
        "0x0000d9:24".parse().unwrap()
    }

    pub(crate) fn key() -> SharedKey {
        SharedKey::new(&[0x5a; 32]).unwrap()
    }

    pub(crate) fn other_key() -> SharedKey {
        SharedKey::new(&[0xa5; 32]).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lengths_are_checked() {
        assert_eq!(
            SharedKey::new(&[1; 15]).unwrap_err(),
            ConfigError::KeyLength
        );
        assert_eq!(
            SharedKey::new(&[1; 65]).unwrap_err(),
            ConfigError::KeyLength
        );
        assert!(SharedKey::new(&[1; 16]).is_ok());
        assert_eq!(format!("{:?}", test_util::key()), "SharedKey(..)");
    }

    #[test]
    fn canonical_addresses() {
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:5".parse().unwrap();
        assert_eq!(canonical(mapped), "192.0.2.1:5".parse().unwrap());
        let scoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 7, 3, 2));
        assert_eq!(canonical(scoped), "[fe80::1]:7".parse().unwrap());
    }

    /// Registrant → bytes → Registry → service table, then expiry and withdrawal, all in
    /// virtual time.
    #[test]
    fn end_to_end_registration_expiry_and_withdrawal() {
        use crate::service_table::{Action, ServiceTable};
        use crate::time::Timestamp;
        use crate::wire::{ServiceId, ServicePrefix};
        use core::time::Duration;

        let t = Timestamp::from_millis;
        let router: SocketAddr = "198.51.100.1:54325".parse().unwrap();
        let server_public: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let prefix: ServicePrefix = "0x0000d9:24".parse().unwrap();
        let service = ServiceId::from_u32(0x0000_d955);
        let forwards_to = |table: &ServiceTable| -> Option<SocketAddr> {
            let pick = table.lookup(&service)?.pick_by_hash(1)?;
            match pick.action() {
                Action::Forward(a) => Some(*a),
                _ => None,
            }
        };

        let mut registry =
            Registry::new(RegistryConfig::new().with_key(3, test_util::key()).unwrap());
        let mut table = ServiceTable::new();
        let config = RegistrantConfig::new(3, test_util::key())
            .with_refresh(Duration::from_millis(400))
            .unwrap();
        let mut registrant = Registrant::new(config);
        registrant.add_router(router).unwrap();
        registrant.add_prefix(prefix).unwrap();

        // Registration: the server sits behind a NAT, so the router uses the observed source.
        let mut buf = [0u8; 256];
        let mut exchange = |registrant: &mut Registrant,
                            registry: &mut Registry,
                            table: &mut ServiceTable,
                            now| {
            let mut n_sent = 0;
            while let Some((to, n)) = registrant.poll_transmit(now, &mut buf) {
                assert_eq!(to, router);
                let _ = registry.handle(now, server_public, &buf[..n], table);
                n_sent += 1;
                while let Some((back, m)) = registry.poll_transmit(&mut buf) {
                    assert_eq!(back, server_public);
                    registrant.handle(now, router, &buf[..m]).unwrap();
                }
            }
            n_sent
        };
        assert_eq!(
            exchange(&mut registrant, &mut registry, &mut table, t(0)),
            1
        );
        assert_eq!(forwards_to(&table), Some(server_public));
        assert!(registrant.is_registered(router, &prefix));
        assert!(matches!(
            registrant.poll_event(),
            Some(RegistrantEvent::Registered { instance: Some(a), .. }) if a == server_public
        ));

        // Refreshes every 400 ms keep the 1 s lease alive.
        let mut now = t(0);
        for _ in 0..5 {
            now = registrant.poll_timeout().unwrap();
            registry.handle_timeout(now, &mut table);
            assert_eq!(exchange(&mut registrant, &mut registry, &mut table, now), 1);
        }
        assert_eq!(now, t(2_000));
        assert_eq!(forwards_to(&table), Some(server_public));
        assert_eq!(registry.poll_timeout(), Some(t(3_000)));

        // The server dies: no more refreshes. The lease runs out exactly 1 s after the last.
        registry.handle_timeout(t(2_999), &mut table);
        assert_eq!(forwards_to(&table), Some(server_public));
        registry.handle_timeout(t(3_000), &mut table);
        assert_eq!(forwards_to(&table), None);
        assert!(table.is_empty());

        // It comes back, then closes its listener: UNREGISTER withdraws the rule at once.
        let mut registrant = Registrant::new(
            RegistrantConfig::new(3, test_util::key())
                .with_refresh(Duration::from_millis(400))
                .unwrap(),
        );
        registrant.add_router(router).unwrap();
        registrant.add_prefix(prefix).unwrap();
        // A restarted process begins below the router's newest sequence number: the Stale
        // reply resynchronises it within the same exchange.
        assert_eq!(
            exchange(&mut registrant, &mut registry, &mut table, t(5_000)),
            2
        );
        assert_eq!(registrant.stats().stale_resyncs, 1);
        assert_eq!(forwards_to(&table), Some(server_public));
        assert!(registrant.remove_prefix(&prefix));
        assert_eq!(
            exchange(&mut registrant, &mut registry, &mut table, t(5_100)),
            1
        );
        assert!(table.is_empty());
        assert_eq!(registry.poll_timeout(), None);
        assert_eq!(registrant.poll_timeout(), None);
        let s = registry.stats();
        assert_eq!(
            (
                s.leases_added,
                s.leases_expired,
                s.leases_withdrawn,
                s.dropped_replay
            ),
            (2, 1, 1, 1)
        );
    }

    #[test]
    fn bounded_queue_drops_oldest() {
        let mut q = BoundedQueue::new(2);
        assert!(!q.push(1));
        assert!(!q.push(2));
        assert!(q.push(3));
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some(2), Some(3), None));
    }
}
