//! [`ControlPlane`]: the control roles of one host (service router, registrant, DELAY
//! queue) composed over its [`sal::Endpoint`](Endpoint), sans-IO.
//!
//! The [`Registry`], [`Registrant`] and [`DelayQueue`] each know their own protocol; this
//! type is the glue every driver would otherwise repeat: which unconnected datagrams belong
//! to which role (by the DEMUX listener of the control ServiceIDs), wrapping their messages
//! in unconnected SAL datagrams with the right ServiceIDs, applying leases to the endpoint's
//! service table, and collecting their events and deadlines into one stream each. The tokio
//! driver and the deterministic simulator both drive a host through it, so the two cannot
//! drift apart.
//!
//! # Calling contract
//!
//! Beside the endpoint's own contract (`sal` module docs), a driver:
//!
//! * hands every [`DatagramEvent::Unconnected`](crate::sal::DatagramEvent::Unconnected) to
//!   [`handle_unconnected`](ControlPlane::handle_unconnected) (`false` = not a control
//!   listener's, the application's);
//! * hands every [`DatagramEvent::Delayed`](crate::sal::DatagramEvent::Delayed) SYN to
//!   [`park`](ControlPlane::park);
//! * after a verdict, a timeout or received control datagrams, re-injects each packet of
//!   [`poll_released`](ControlPlane::poll_released) through `Endpoint::handle` and, if it
//!   meets DELAY again, parks *that* packet again (it carries the loop guard's count);
//! * sends what [`poll_transmit`](ControlPlane::poll_transmit) yields, runs
//!   [`handle_timeout`](ControlPlane::handle_timeout) at
//!   [`poll_timeout`](ControlPlane::poll_timeout), and drains
//!   [`poll_event`](ControlPlane::poll_event) (bounded: the oldest events are dropped and
//!   counted when nobody reads them).

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::{
    DelayConfig, DelayDropReason, DelayEvent, DelayQueue, DelayedPacket, LeaseEvent, Registrant,
    RegistrantConfig, RegistrantError, RegistrantEvent, Registry, RegistryConfig, RegistryError,
    RegistrySnapshot, RestoreReport,
};
use crate::sal::{ControlServices, Endpoint, ListenError, Transmit};
use crate::service_table::ListenerId;
use crate::time::Timestamp;
use crate::wire::control_msg::{REGISTER_MSG_LEN, Verdict};
use crate::wire::sal::Protocol;
use crate::wire::{ServiceId, ServicePrefix};

/// Most events kept for [`ControlPlane::poll_event`]; older ones are dropped and counted.
pub const MAX_EVENTS: usize = 4096;
/// Most router replies waiting for [`ControlPlane::poll_transmit`]; more are dropped and
/// counted (the registrant retries).
pub const MAX_REPLIES: usize = 1024;

/// Something the control roles report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlEvent {
    /// Router role: a lease was added, refreshed, withdrawn or expired.
    Lease(LeaseEvent),
    /// Router role: a registration datagram was refused (already counted by the registry).
    Refused(RegistryError),
    /// Registrant role: a registration was acknowledged, refused, or lost.
    Registrant(RegistrantEvent),
    /// DELAY queue: a SYN was parked or expired.
    Delay(DelayEvent),
    /// DELAY queue: a SYN was not parked, and why (already counted by the queue).
    DelayRefused(DelayDropReason),
}

/// Counters of the glue itself (each role counts its own protocol).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ControlPlaneStats {
    /// Delayed SYNs dropped because this host has no DELAY queue.
    pub delayed_unqueued: u64,
    /// Events dropped because nobody drained them.
    pub events_dropped: u64,
    /// Router replies dropped because nobody sent them.
    pub replies_dropped: u64,
    /// Messages that could not be wrapped in a datagram (larger than `max_udp_payload`).
    pub send_errors: u64,
}

/// Why a role could not be enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoleError {
    /// The control ServiceID is already taken in the service table.
    #[error("control service listener: {0}")]
    Listen(#[from] ListenError),
    /// The registrant refused a router (too many).
    #[error("registrant: {0}")]
    Registrant(#[from] RegistrantError),
    /// The role is already on.
    #[error("role already enabled")]
    AlreadyEnabled,
}

#[derive(Debug)]
struct RouterRole {
    registry: Registry,
    services: ControlServices,
    listener: ListenerId,
    release_on_register: bool,
}

#[derive(Debug)]
struct RegistrantRole {
    registrant: Registrant,
    services: ControlServices,
    listener: ListenerId,
    running: bool,
}

/// A router reply waiting to be wrapped: destination, the requester's ServiceID, bytes.
#[derive(Debug)]
struct Reply {
    to: SocketAddr,
    service: ServiceId,
    bytes: [u8; REGISTER_MSG_LEN],
}

/// The control roles of one host. Every role is optional; a plain host has none and the
/// plane then only counts delayed SYNs it cannot hold.
#[derive(Debug, Default)]
pub struct ControlPlane {
    router: Option<RouterRole>,
    registrant: Option<RegistrantRole>,
    delay: Option<DelayQueue>,
    replies: VecDeque<Reply>,
    events: VecDeque<ControlEvent>,
    stats: ControlPlaneStats,
    msg: Vec<u8>,
}

impl ControlPlane {
    /// A plane with no role.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the host a service router: it listens (datagrams) on `services.router` and turns
    /// authentic registrations into FORWARD rules of `endpoint`'s table. The endpoint should
    /// forward (`EndpointConfig::forwarding`). Gives the host a DELAY queue too, with
    /// `delay`, unless it has one.
    pub fn enable_router(
        &mut self,
        endpoint: &mut Endpoint,
        registry: RegistryConfig,
        services: ControlServices,
        delay: DelayConfig,
    ) -> Result<ListenerId, RoleError> {
        if self.router.is_some() {
            return Err(RoleError::AlreadyEnabled);
        }
        let listener = endpoint.listen(ServicePrefix::exact(services.router), Protocol::UDP)?;
        self.router = Some(RouterRole {
            registry: Registry::new(registry),
            services,
            listener,
            release_on_register: false,
        });
        if self.delay.is_none() {
            self.enable_delay(delay);
        }
        Ok(listener)
    }

    /// Gives the host a DELAY queue (replacing any previous one and what it held).
    pub fn enable_delay(&mut self, config: DelayConfig) {
        self.delay = Some(DelayQueue::new(config));
    }

    /// Router role: release every SYN waiting for a prefix as soon as a lease for it is
    /// added (a scale-from-zero controller in one line). Off by default.
    pub fn set_release_on_register(&mut self, on: bool) {
        if let Some(r) = self.router.as_mut() {
            r.release_on_register = on;
        }
    }

    /// Router role: hands a previous process's registrations to the registry (see
    /// [`Registry::restore`]), before any REGISTER arrives. `None` without the router role.
    pub fn restore_registry(
        &mut self,
        now: Timestamp,
        snapshot: &RegistrySnapshot,
        endpoint: &mut Endpoint,
    ) -> Option<RestoreReport> {
        let r = self.router.as_mut()?;
        let report = r.registry.restore(now, snapshot, endpoint.table_mut());
        self.collect_lease_events();
        Some(report)
    }

    /// Makes the host a registrant of `routers`: it listens (datagrams) on `services.host`
    /// for their replies. Announce prefixes with [`add_prefix`](Self::add_prefix).
    pub fn enable_registrant(
        &mut self,
        endpoint: &mut Endpoint,
        config: RegistrantConfig,
        services: ControlServices,
        routers: &[SocketAddr],
    ) -> Result<ListenerId, RoleError> {
        if self.registrant.is_some() {
            return Err(RoleError::AlreadyEnabled);
        }
        let mut registrant = Registrant::new(config);
        for router in routers {
            registrant.add_router(*router)?;
        }
        let listener = endpoint.listen(ServicePrefix::exact(services.host), Protocol::UDP)?;
        self.registrant = Some(RegistrantRole {
            registrant,
            services,
            listener,
            running: true,
        });
        Ok(listener)
    }

    /// Registrant role: announces `prefix` to every router. `Ok(false)` without the role.
    pub fn add_prefix(&mut self, prefix: ServicePrefix) -> Result<bool, RegistrantError> {
        match self.registrant.as_mut() {
            Some(r) => r.registrant.add_prefix(prefix).map(|()| true),
            None => Ok(false),
        }
    }

    /// Registrant role: withdraws `prefix` from every router (UNREGISTER). `false` if it
    /// was not announced.
    pub fn remove_prefix(&mut self, prefix: &ServicePrefix) -> bool {
        self.registrant
            .as_mut()
            .is_some_and(|r| r.registrant.remove_prefix(prefix))
    }

    /// Registrant role: the host moved from `old` to `new`. An advertised address equal to
    /// `old` becomes `new`; any other setting is kept (an operator's explicit address, or
    /// the observed source, which routers see change by themselves). Either way every
    /// registration is renewed at once, and leases on the old address are withdrawn.
    pub fn host_moved(&mut self, old: SocketAddr, new: SocketAddr) {
        let Some(r) = self.registrant.as_mut() else {
            return;
        };
        if r.registrant.advertised_addr() == Some(old) {
            r.registrant.set_advertised_addr(Some(new));
        } else {
            r.registrant.renew();
        }
    }

    /// The registrant stops for good without a word (its daemon died): no refresh, no
    /// UNREGISTER; the routers' leases run out.
    pub fn stop_registrant(&mut self) {
        if let Some(r) = self.registrant.as_mut() {
            r.running = false;
        }
    }

    /// Whether `router` has acknowledged `prefix`.
    pub fn is_registered(&self, router: SocketAddr, prefix: &ServicePrefix) -> bool {
        self.registrant
            .as_ref()
            .is_some_and(|r| r.registrant.is_registered(router, prefix))
    }

    /// The router role's registry.
    pub fn registry(&self) -> Option<&Registry> {
        self.router.as_ref().map(|r| &r.registry)
    }

    /// The registrant role's state.
    pub fn registrant(&self) -> Option<&Registrant> {
        self.registrant.as_ref().map(|r| &r.registrant)
    }

    /// The DELAY queue.
    pub fn delay(&self) -> Option<&DelayQueue> {
        self.delay.as_ref()
    }

    /// The glue's counters.
    pub fn stats(&self) -> ControlPlaneStats {
        self.stats
    }

    /// An unconnected datagram from `from` for `listener`: a registration for the router
    /// role, a reply for the registrant role. Returns `false` when `listener` is neither
    /// (the datagram is the application's).
    pub fn handle_unconnected(
        &mut self,
        now: Timestamp,
        endpoint: &mut Endpoint,
        from: SocketAddr,
        listener: ListenerId,
        source_service: Option<ServiceId>,
        body: &[u8],
    ) -> bool {
        if let Some(r) = self.router.as_mut().filter(|r| r.listener == listener) {
            if let Err(e) = r.registry.handle(now, from, body, endpoint.table_mut()) {
                push_event(&mut self.events, &mut self.stats, ControlEvent::Refused(e));
            }
            let service = source_service.unwrap_or(r.services.host);
            let mut bytes = [0u8; REGISTER_MSG_LEN];
            while let Some((to, _)) = r.registry.poll_transmit(&mut bytes) {
                if self.replies.len() >= MAX_REPLIES {
                    self.stats.replies_dropped += 1;
                    continue;
                }
                self.replies.push_back(Reply { to, service, bytes });
            }
            self.collect_lease_events();
            return true;
        }
        if let Some(r) = self.registrant.as_mut().filter(|r| r.listener == listener) {
            if r.running {
                // Refusals are counted by the registrant.
                let _ = r.registrant.handle(now, from, body);
                self.collect_registrant_events();
            }
            return true;
        }
        false
    }

    /// A SYN that met DELAY: parks it. Without a queue it is dropped and counted. A packet
    /// from [`poll_released`](Self::poll_released) that meets DELAY again must be passed
    /// back as it came (the loop guard counts its rounds).
    pub fn park(&mut self, now: Timestamp, packet: DelayedPacket<Vec<u8>>) {
        let Some(q) = self.delay.as_mut() else {
            self.stats.delayed_unqueued += 1;
            return;
        };
        if let Err(refused) = q.handle_delayed(now, packet) {
            push_event(
                &mut self.events,
                &mut self.stats,
                ControlEvent::DelayRefused(refused.reason),
            );
        }
        self.collect_delay_events();
    }

    /// Applies `verdict` to every SYN waiting for a ServiceID under `prefix`; returns how
    /// many. Released ones come out of [`poll_released`](Self::poll_released).
    pub fn verdict(&mut self, prefix: &ServicePrefix, verdict: Verdict) -> usize {
        let n = self
            .delay
            .as_mut()
            .map_or(0, |q| q.handle_service_verdict(prefix, verdict));
        self.collect_delay_events();
        n
    }

    /// The next released SYN, to resolve again through `Endpoint::handle`.
    pub fn poll_released(&mut self) -> Option<DelayedPacket<Vec<u8>>> {
        self.delay
            .as_mut()
            .and_then(DelayQueue::poll_released)
            .map(|r| r.packet)
    }

    /// The next control datagram (a router reply or a registrant message), written into
    /// `buf` by `endpoint` as an unconnected SAL datagram.
    pub fn poll_transmit(
        &mut self,
        now: Timestamp,
        endpoint: &mut Endpoint,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        while let Some(reply) = self.replies.pop_front() {
            let Some(r) = self.router.as_ref() else {
                break;
            };
            match endpoint.send_unconnected(
                reply.service,
                r.services.router,
                reply.to,
                &reply.bytes,
                buf,
            ) {
                Ok(t) => return Some(t),
                Err(_) => self.stats.send_errors += 1,
            }
        }
        let r = self.registrant.as_mut().filter(|r| r.running)?;
        self.msg.resize(REGISTER_MSG_LEN, 0);
        loop {
            let Some((router, n)) = r.registrant.poll_transmit(now, &mut self.msg) else {
                self.collect_registrant_events();
                return None;
            };
            let msg = self.msg.get(..n).unwrap_or_default();
            match endpoint.send_unconnected(r.services.router, r.services.host, router, msg, buf) {
                Ok(t) => {
                    self.collect_registrant_events();
                    return Some(t);
                }
                Err(_) => self.stats.send_errors += 1,
            }
        }
    }

    /// The earliest deadline of any role.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let registry = self.router.as_ref().and_then(|r| r.registry.poll_timeout());
        let registrant = self
            .registrant
            .as_ref()
            .filter(|r| r.running)
            .and_then(|r| r.registrant.poll_timeout());
        let delay = self.delay.as_ref().and_then(DelayQueue::poll_timeout);
        [registry, registrant, delay].into_iter().flatten().min()
    }

    /// Runs every role's due timers: lease expiry (rules leave `endpoint`'s table),
    /// registration refreshes and retries, DELAY ageing.
    pub fn handle_timeout(&mut self, now: Timestamp, endpoint: &mut Endpoint) {
        if let Some(r) = self.router.as_mut()
            && r.registry.poll_timeout().is_some_and(|t| t <= now)
        {
            r.registry.handle_timeout(now, endpoint.table_mut());
            self.collect_lease_events();
        }
        if let Some(r) = self.registrant.as_mut().filter(|r| r.running) {
            r.registrant.handle_timeout(now);
            self.collect_registrant_events();
        }
        if let Some(q) = self.delay.as_mut()
            && q.poll_timeout().is_some_and(|t| t <= now)
        {
            q.handle_timeout(now);
            self.collect_delay_events();
        }
    }

    /// Shutdown: withdraws every registration (UNREGISTER, sent by the following
    /// `poll_transmit` calls), every lease (their rules leave `endpoint`'s table) and drops
    /// every parked SYN.
    pub fn shutdown(&mut self, endpoint: &mut Endpoint) {
        if let Some(r) = self.registrant.as_mut() {
            let prefixes: Vec<_> = r.registrant.prefixes().collect();
            for p in prefixes {
                r.registrant.remove_prefix(&p);
            }
        }
        if let Some(r) = self.router.as_mut() {
            r.registry.clear(endpoint.table_mut());
            self.collect_lease_events();
        }
        if let Some(q) = self.delay.as_mut() {
            q.drop_all();
        }
    }

    /// The next event of any role, oldest first.
    pub fn poll_event(&mut self) -> Option<ControlEvent> {
        self.events.pop_front()
    }

    fn collect_lease_events(&mut self) {
        let Some(r) = self.router.as_mut() else {
            return;
        };
        while let Some(e) = r.registry.poll_event() {
            if let (true, LeaseEvent::Added(info)) = (r.release_on_register, e)
                && let Some(q) = self.delay.as_mut()
            {
                q.handle_service_verdict(&info.prefix, Verdict::Release);
            }
            push_event(&mut self.events, &mut self.stats, ControlEvent::Lease(e));
        }
        self.collect_delay_events();
    }

    fn collect_registrant_events(&mut self) {
        if let Some(r) = self.registrant.as_mut() {
            while let Some(e) = r.registrant.poll_event() {
                push_event(
                    &mut self.events,
                    &mut self.stats,
                    ControlEvent::Registrant(e),
                );
            }
        }
    }

    fn collect_delay_events(&mut self) {
        if let Some(q) = self.delay.as_mut() {
            while let Some(e) = q.poll_event() {
                push_event(&mut self.events, &mut self.stats, ControlEvent::Delay(e));
            }
        }
    }
}

/// Queues `e`, dropping the oldest event at the bound.
fn push_event(events: &mut VecDeque<ControlEvent>, stats: &mut ControlPlaneStats, e: ControlEvent) {
    if events.len() >= MAX_EVENTS {
        events.pop_front();
        stats.events_dropped += 1;
    }
    events.push_back(e);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::SharedKey;
    use crate::sal::{DatagramEvent, EndpointConfig};
    use crate::service_table::Action;

    const ROUTER: &str = "192.0.2.1:54325";
    const SERVER: &str = "192.0.2.10:54325";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn endpoint(seed: u8, local: &str, forwarding: bool) -> Endpoint {
        let c = EndpointConfig {
            rng_seed: [seed; 32],
            local_addr: addr(local),
            forwarding,
            ..EndpointConfig::default()
        };
        Endpoint::new(c, Timestamp::ZERO)
    }

    fn key() -> SharedKey {
        SharedKey::new(&[9; 32]).unwrap()
    }

    fn prefix() -> ServicePrefix {
        ServicePrefix::new(ServiceId::from_u32(0x0a00_0000), 8).unwrap()
    }

    /// Delivers `t` (in `buf`) to `endpoint` from `from` and gives the plane what is its.
    fn deliver(
        plane: &mut ControlPlane,
        endpoint: &mut Endpoint,
        from: SocketAddr,
        bytes: &[u8],
    ) -> bool {
        let mut scratch = Vec::new();
        match endpoint.handle(Timestamp::ZERO, from, bytes, &mut scratch) {
            Some(DatagramEvent::Unconnected {
                listener,
                source_service,
                payload_offset,
            }) => plane.handle_unconnected(
                Timestamp::ZERO,
                endpoint,
                from,
                listener,
                source_service,
                &bytes[payload_offset..],
            ),
            other => panic!("expected an unconnected datagram, got {other:?}"),
        }
    }

    #[test]
    fn a_registration_round_trip_installs_a_forward_rule_and_is_acknowledged() {
        let now = Timestamp::ZERO;
        let (mut router_ep, mut server_ep) =
            (endpoint(1, ROUTER, true), endpoint(2, SERVER, false));
        let (mut router, mut server) = (ControlPlane::new(), ControlPlane::new());
        let registry = RegistryConfig::new().with_key(7, key()).unwrap();
        router
            .enable_router(
                &mut router_ep,
                registry,
                ControlServices::DEFAULT,
                DelayConfig::default(),
            )
            .unwrap();
        server
            .enable_registrant(
                &mut server_ep,
                RegistrantConfig::new(7, key()),
                ControlServices::DEFAULT,
                &[addr(ROUTER)],
            )
            .unwrap();
        assert_eq!(server.add_prefix(prefix()), Ok(true));

        let mut buf = Vec::new();
        let t = server.poll_transmit(now, &mut server_ep, &mut buf).unwrap();
        assert_eq!(t.destination, addr(ROUTER));
        assert!(
            server
                .poll_transmit(now, &mut server_ep, &mut buf.clone())
                .is_none()
        );
        assert!(deliver(
            &mut router,
            &mut router_ep,
            addr(SERVER),
            &buf[..t.size]
        ));
        assert!(matches!(
            router.poll_event(),
            Some(ControlEvent::Lease(LeaseEvent::Added(_)))
        ));
        let entry = router_ep.table().get(&prefix()).unwrap();
        assert!(matches!(entry.targets()[0].action(), Action::Forward(a) if *a == addr(SERVER)));

        let t = router.poll_transmit(now, &mut router_ep, &mut buf).unwrap();
        assert_eq!(t.destination, addr(SERVER));
        assert!(deliver(
            &mut server,
            &mut server_ep,
            addr(ROUTER),
            &buf[..t.size]
        ));
        assert!(server.is_registered(addr(ROUTER), &prefix()));

        // Withdrawal: the rule leaves the router's table at once.
        assert!(server.remove_prefix(&prefix()));
        let t = server.poll_transmit(now, &mut server_ep, &mut buf).unwrap();
        assert!(deliver(
            &mut router,
            &mut router_ep,
            addr(SERVER),
            &buf[..t.size]
        ));
        assert!(router_ep.table().get(&prefix()).is_none());
    }

    #[test]
    fn a_plain_host_hands_back_foreign_datagrams_and_counts_delayed_syns() {
        let mut plane = ControlPlane::new();
        let mut ep = endpoint(3, SERVER, false);
        let listener = ep
            .listen(ServicePrefix::exact(ServiceId::from_u32(5)), Protocol::UDP)
            .unwrap();
        let from = addr(ROUTER);
        assert!(!plane.handle_unconnected(Timestamp::ZERO, &mut ep, from, listener, None, b"x"));
        let packet = DelayedPacket::new(Timestamp::ZERO, ServiceId::from_u32(5), from, vec![1]);
        plane.park(Timestamp::ZERO, packet);
        assert_eq!(plane.stats().delayed_unqueued, 1);
        assert!(plane.poll_released().is_none());
        assert!(plane.poll_timeout().is_none());
    }

    #[test]
    fn unread_events_are_bounded() {
        let mut events = VecDeque::new();
        let mut stats = ControlPlaneStats::default();
        for _ in 0..MAX_EVENTS + 10 {
            push_event(
                &mut events,
                &mut stats,
                ControlEvent::DelayRefused(DelayDropReason::QueueFull),
            );
        }
        assert_eq!(events.len(), MAX_EVENTS);
        assert_eq!(stats.events_dropped, 10);
    }
}
