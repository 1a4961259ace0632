//! One service's backends: the members (fixed addresses, and every address of every DNS
//! name), their health, the balancer, and the background tasks that keep them current.
//!
//! **Members.** A fixed `address` is one member. A `dns` name is re-resolved in the
//! background: at start, then when the answer's TTL runs out, clamped to the service's
//! `dns_ttl` (a TTL of 0 must not become a lookup per connection, and a name must not go
//! unrefreshed for hours). Every address of the answer is a member with the name's weight;
//! members whose address stays keep their health and connection counts. A failed or empty
//! answer keeps the last good set (a DNS outage must not empty the pool) and is retried
//! sooner: after `dns_ttl.min`, doubling up to `dns_ttl.max`.
//!
//! **Choosing.** Members that pass their active checks and are not ejected are eligible;
//! the balancer picks among them (`balance.rs`). When **none** is eligible the pool is in
//! *panic mode* and picks among all of them, as Envoy does: better to try a backend that may
//! have recovered than to refuse every flow because the checks are failing (a check port
//! blocked by a firewall, a network blip that failed every check at once). A retry excludes
//! the members this flow already tried.
//!
//! **Ejection budget.** At most `max_ejected_percent` of the members are ejected at once
//! (at least one when the percentage is not 0), so a blip that fails connects everywhere
//! cannot eject the whole pool.
//!
//! The background tasks hold the pool's state but not the [`Pool`] handle: dropping the
//! handle (a reload that replaced the service, the end of `serve`) stops them at once.

use core::net::{IpAddr, SocketAddr};
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::balance::{Balancer, Candidate, hash_addr};
use super::health::{Health, Transition};
use super::resolve::{MAX_ADDRESSES_PER_NAME, Resolve};
use super::stats::ServerCounters;
use crate::config::model::{Balance, HealthCheck, Outlier, Service, TtlBounds};

/// A resolution taking longer than this is abandoned (and counted as failed).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a configured backend is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Fixed(SocketAddr),
    Dns { host: String, port: u16 },
}

#[derive(Clone, Debug)]
struct TargetSpec {
    target: Target,
    weight: u32,
}

/// One address of the pool.
#[derive(Debug)]
struct Member {
    id: u64,
    /// Index in `targets`.
    target: usize,
    addr: SocketAddr,
    weight: u32,
    hash: u64,
    active: Arc<AtomicU64>,
    health: Health,
}

#[derive(Debug, Default)]
struct State {
    members: Vec<Member>,
    balancer: Balancer,
    next_id: u64,
}

impl State {
    fn add(&mut self, target: usize, addr: SocketAddr, weight: u32) {
        self.next_id += 1;
        self.members.push(Member {
            id: self.next_id,
            target,
            addr,
            weight: weight.max(1),
            hash: hash_addr(addr),
            active: Arc::new(AtomicU64::new(0)),
            health: Health::default(),
        });
    }

    fn member(&mut self, id: u64) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.id == id)
    }
}

/// The part of a pool flows and background tasks share.
#[derive(Debug)]
pub(crate) struct PoolInner {
    service: String,
    balance: Balance,
    outlier: Outlier,
    health_check: Option<HealthCheck>,
    dns_ttl: TtlBounds,
    targets: Vec<TargetSpec>,
    state: Mutex<State>,
    /// Bumped whenever the member set changes.
    version: watch::Sender<u64>,
    counters: Arc<ServerCounters>,
}

/// A service's backend pool. Dropping it stops its health checks and DNS refreshes.
#[derive(Debug)]
pub(crate) struct Pool {
    inner: Arc<PoolInner>,
    /// Never sent on; its drop is the background tasks' stop signal.
    _stop: watch::Sender<()>,
}

/// A member chosen for one connection attempt; counts as an active connection of the member
/// until dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    pool: Arc<PoolInner>,
    id: u64,
    addr: SocketAddr,
    active: Arc<AtomicU64>,
}

impl Lease {
    /// The member's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The member's id (to exclude it from a retry).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Reports a successful connect.
    pub(crate) fn succeeded(&self) {
        self.pool.connect_succeeded(self.id, Instant::now());
    }

    /// Reports a failed connect (passive outlier detection).
    pub(crate) fn failed(&self) {
        self.pool.connect_failed(self.id, Instant::now());
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The configuration a pool is built from; a reload keeps a pool (its health, its
/// connection counts) when this part of its service is unchanged.
pub(crate) fn same_pool_config(a: &Service, b: &Service) -> bool {
    a.backends == b.backends
        && a.balance == b.balance
        && a.dns_ttl == b.dns_ttl
        && a.health_check == b.health_check
        && a.outlier == b.outlier
}

impl Pool {
    /// Builds the pool of `service` and starts its background tasks (on the current tokio
    /// runtime). DNS backends need `resolver`; without one they stay empty (logged).
    pub(crate) fn new(
        service: &Service,
        resolver: Option<&Arc<dyn Resolve>>,
        counters: Arc<ServerCounters>,
    ) -> Self {
        let targets: Vec<TargetSpec> = service
            .backends
            .iter()
            .filter_map(|b| {
                let target = match (&b.address, &b.dns) {
                    (Some(a), _) => Target::Fixed(*a),
                    (None, Some(hp)) => Target::Dns {
                        host: hp.host.clone(),
                        port: hp.port,
                    },
                    (None, None) => return None,
                };
                Some(TargetSpec {
                    target,
                    weight: b.weight.max(1),
                })
            })
            .collect();
        let mut state = State::default();
        for (i, t) in targets.iter().enumerate() {
            if let Target::Fixed(a) = t.target {
                state.add(i, a, t.weight);
            }
        }
        let inner = Arc::new(PoolInner {
            service: service.name.clone(),
            balance: service.balance,
            outlier: service.outlier,
            health_check: service.health_check,
            dns_ttl: service.dns_ttl,
            targets,
            state: Mutex::new(state),
            version: watch::Sender::new(0),
            counters,
        });
        let (stop, _) = watch::channel(());
        for (i, t) in inner.targets.iter().enumerate() {
            if let Target::Dns { host, .. } = &t.target {
                match resolver {
                    Some(r) => {
                        tokio::spawn(dns_task(inner.clone(), i, r.clone(), stop.subscribe()));
                    }
                    None => tracing::error!(
                        service = %inner.service,
                        backend = %host,
                        "no DNS resolver available: this backend stays empty"
                    ),
                }
            }
        }
        if let Some(hc) = inner.health_check {
            tokio::spawn(health_task(inner.clone(), hc, stop.subscribe()));
        }
        Self { inner, _stop: stop }
    }

    /// The shared part (what flows hold).
    pub(crate) fn inner(&self) -> &Arc<PoolInner> {
        &self.inner
    }
}

impl PoolInner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere (no multi-step invariants are
        // left half-done), so a poisoned lock is taken as it is.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The service's name.
    pub(crate) fn service(&self) -> &str {
        &self.service
    }

    /// Whether the pool has no member (DNS not answered yet, or no backend at all).
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().members.is_empty()
    }

    /// Waits, at most `limit`, until the pool has a member (the first DNS answer).
    pub(crate) async fn wait_ready(&self, limit: Duration) {
        let mut rx = self.version.subscribe();
        let _ = tokio::time::timeout(limit, async {
            while self.is_empty() {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Chooses a member for a flow whose balancing key is `key`, among those it has not
    /// tried yet (`tried`: member ids). See the module docs for eligibility and panic mode.
    pub(crate) fn pick(self: &Arc<Self>, key: u64, tried: &[u64], now: Instant) -> Option<Lease> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut cands: Vec<Candidate> = st
            .members
            .iter()
            .map(|m| Candidate {
                weight: m.weight,
                active: m.active.load(Ordering::Relaxed),
                hash: m.hash,
                eligible: !tried.contains(&m.id) && m.health.is_available(now),
            })
            .collect();
        if !cands.iter().any(|c| c.eligible) {
            let mut any = false;
            for (c, m) in cands.iter_mut().zip(&st.members) {
                c.eligible = !tried.contains(&m.id);
                any |= c.eligible;
            }
            if any {
                ServerCounters::bump(&self.counters.panic_selections);
            }
        }
        let i = st.balancer.pick(self.balance, &cands, key)?;
        let m = st.members.get(i)?;
        m.active.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            pool: self.clone(),
            id: m.id,
            addr: m.addr,
            active: m.active.clone(),
        })
    }

    fn connect_succeeded(&self, id: u64, now: Instant) {
        let outlier = self.outlier;
        if let Some(m) = self.lock().member(id) {
            m.health.on_connect_success(now, &outlier);
        }
    }

    fn connect_failed(&self, id: u64, now: Instant) {
        let outlier = self.outlier;
        let mut st = self.lock();
        let n = st.members.len();
        let ejected = st
            .members
            .iter()
            .filter(|m| m.health.is_ejected(now))
            .count();
        let pct = usize::from(outlier.max_ejected_percent.min(100));
        let budget = if pct == 0 { 0 } else { (n * pct / 100).max(1) };
        let may_eject = ejected < budget;
        let Some(m) = st.member(id) else { return };
        if m.health.would_eject(now, &outlier) && !may_eject {
            tracing::debug!(
                service = %self.service,
                backend = %m.addr,
                "would eject, but max_ejected_percent is reached"
            );
        }
        if m.health.on_connect_failure(now, &outlier, may_eject) {
            ServerCounters::bump(&self.counters.ejections);
            tracing::warn!(
                service = %self.service,
                backend = %m.addr,
                failures = outlier.consecutive_failures,
                "backend ejected after consecutive connect failures"
            );
        }
    }

    fn check_result(&self, id: u64, ok: bool, hc: &HealthCheck) {
        ServerCounters::bump(&self.counters.health_checks);
        if !ok {
            ServerCounters::bump(&self.counters.health_check_failures);
        }
        let mut st = self.lock();
        let Some(m) = st.member(id) else { return };
        match m.health.on_check(ok, hc) {
            Some(Transition::Down) => {
                ServerCounters::bump(&self.counters.backends_marked_down);
                tracing::warn!(service = %self.service, backend = %m.addr, "backend down (health checks failing)");
            }
            Some(Transition::Up) => {
                ServerCounters::bump(&self.counters.backends_marked_up);
                tracing::info!(service = %self.service, backend = %m.addr, "backend up (health checks passing)");
            }
            None => {}
        }
        drop(st);
        // Health changes are member-set changes for whoever waits on the pool's state.
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Replaces the addresses of DNS target `target`.
    fn set_resolved(&self, target: usize, addrs: &[IpAddr]) {
        let Some(spec) = self.targets.get(target) else {
            return;
        };
        let Target::Dns { host, port } = &spec.target else {
            return;
        };
        let wanted: Vec<SocketAddr> = addrs
            .iter()
            .take(MAX_ADDRESSES_PER_NAME)
            .map(|ip| SocketAddr::new(*ip, *port))
            .collect();
        let mut st = self.lock();
        let before = st.members.len();
        st.members
            .retain(|m| m.target != target || wanted.contains(&m.addr));
        let mut changed = st.members.len() != before;
        for a in &wanted {
            if !st
                .members
                .iter()
                .any(|m| m.target == target && m.addr == *a)
            {
                st.add(target, *a, spec.weight);
                changed = true;
            }
        }
        if changed {
            st.balancer.reset();
            let now: Vec<String> = st
                .members
                .iter()
                .filter(|m| m.target == target)
                .map(|m| m.addr.to_string())
                .collect();
            drop(st);
            tracing::info!(service = %self.service, name = %host, addresses = ?now, "backend addresses changed");
            self.version.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Every member's id and address (for the health checks).
    fn members(&self) -> Vec<(u64, SocketAddr)> {
        self.lock().members.iter().map(|m| (m.id, m.addr)).collect()
    }

    /// A view of the members (tests; the admin endpoint later).
    #[cfg(test)]
    pub(crate) fn view(&self, now: Instant) -> Vec<BackendView> {
        self.lock()
            .members
            .iter()
            .map(|m| BackendView {
                addr: m.addr,
                weight: m.weight,
                active: m.active.load(Ordering::Relaxed),
                up: m.health.is_up(),
                ejected: m.health.is_ejected(now),
            })
            .collect()
    }

    /// A receiver notified whenever members or their health change.
    #[cfg(test)]
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// One backend's state, as shown to operators.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendView {
    /// Its address.
    pub addr: SocketAddr,
    /// Its weight.
    pub weight: u32,
    /// Connections in progress (connecting or relaying).
    pub active: u64,
    /// Whether the active health checks say up (always, without checks).
    pub up: bool,
    /// Whether passive outlier detection has ejected it now.
    pub ejected: bool,
}

/// Re-resolves DNS target `target` until the pool is dropped.
async fn dns_task(
    pool: Arc<PoolInner>,
    target: usize,
    resolver: Arc<dyn Resolve>,
    mut stop: watch::Receiver<()>,
) {
    let Some(TargetSpec {
        target: Target::Dns { host, .. },
        ..
    }) = pool.targets.get(target).cloned()
    else {
        return;
    };
    let (min, max) = (
        pool.dns_ttl.min.0,
        pool.dns_ttl.max.0.max(pool.dns_ttl.min.0),
    );
    let min = min.max(Duration::from_millis(100));
    let mut failures: u32 = 0;
    loop {
        let result = tokio::select! {
            _ = stop.changed() => return,
            r = tokio::time::timeout(RESOLVE_TIMEOUT, resolver.resolve(&host)) => r,
        };
        let wait = match result {
            Ok(Ok(r)) if !r.addrs.is_empty() => {
                failures = 0;
                ServerCounters::bump(&pool.counters.dns_resolutions);
                pool.set_resolved(target, &r.addrs);
                r.ttl.unwrap_or(max).clamp(min, max)
            }
            other => {
                failures = failures.saturating_add(1);
                ServerCounters::bump(&pool.counters.dns_failures);
                let why = match other {
                    Ok(Ok(_)) => "no addresses".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".to_owned(),
                };
                tracing::warn!(service = %pool.service, name = %host, error = %why, "backend name resolution failed; keeping the last answer");
                min.saturating_mul(1u32 << failures.saturating_sub(1).min(16))
                    .min(max)
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Runs the active health checks until the pool is dropped: every `interval`, a TCP connect
/// to every member, each bounded by `timeout`.
async fn health_task(pool: Arc<PoolInner>, hc: HealthCheck, mut stop: watch::Receiver<()>) {
    let interval = hc.interval.0.max(Duration::from_millis(10));
    let timeout = hc.timeout.0.max(Duration::from_millis(1));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let mut probes = JoinSet::new();
        for (id, addr) in pool.members() {
            probes.spawn(async move {
                let ok = matches!(
                    tokio::time::timeout(timeout, TcpStream::connect(addr)).await,
                    Ok(Ok(_))
                );
                (id, ok)
            });
        }
        loop {
            let next = tokio::select! {
                _ = stop.changed() => return,
                n = probes.join_next() => n,
            };
            match next {
                None => break,
                Some(Ok((id, ok))) => pool.check_result(id, ok, &hc),
                Some(Err(e)) => {
                    tracing::error!(service = %pool.service, error = %e, "health check task failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::parse;

    fn service(yaml: &str) -> Service {
        let text = format!("server:\n  services:\n{yaml}");
        let loaded = parse(&text, "t.yaml", &HashMap::<String, String>::new()).unwrap();
        loaded.config.server.unwrap().services.remove(0)
    }

    #[tokio::test]
    async fn panic_mode_and_ejection_budget() {
        let svc = service(
            r#"    - name: s
      prefix: "0x01"
      backends: [{address: "127.0.0.1:1"}, {address: "127.0.0.1:2"}, {address: "127.0.0.1:3"}, {address: "127.0.0.1:4"}]
      outlier: {consecutive_failures: 1, ejection_time: 30s, max_ejected_percent: 50}
"#,
        );
        let counters = Arc::new(ServerCounters::default());
        let pool = Pool::new(&svc, None, counters.clone());
        let p = pool.inner();
        let now = Instant::now();
        // Fail every backend once: only two (50 % of 4) may be ejected.
        for _ in 0..4 {
            let lease = p.pick(0, &[], now).unwrap();
            p.connect_failed(lease.id(), now);
        }
        let ejected = p.view(now).iter().filter(|b| b.ejected).count();
        assert_eq!(ejected, 2);
        assert_eq!(counters.snapshot().ejections, 2);
        // Retrying excludes tried members; with all tried, nothing.
        let ids: Vec<u64> = (1..=4).collect();
        assert!(p.pick(0, &ids, now).is_none());
        // Only untried + eligible members are used; the ejected ones only in panic mode.
        let avail: Vec<u64> = {
            let st = p.lock();
            st.members
                .iter()
                .filter(|m| m.health.is_available(now))
                .map(|m| m.id)
                .collect()
        };
        assert_eq!(avail.len(), 2);
        let l = p.pick(0, &[], now).unwrap();
        assert!(avail.contains(&l.id()));
        assert_eq!(counters.snapshot().panic_selections, 0);
        let l2 = p.pick(0, &avail, now).unwrap();
        assert!(
            !avail.contains(&l2.id()),
            "panic mode uses the ejected ones"
        );
        assert_eq!(counters.snapshot().panic_selections, 1);
        // Leases count as active connections while held.
        assert_eq!(p.view(now).iter().map(|b| b.active).sum::<u64>(), 2);
        drop((l, l2));
        assert_eq!(p.view(now).iter().map(|b| b.active).sum::<u64>(), 0);
    }

    #[tokio::test]
    async fn resolved_sets_keep_surviving_members() {
        let svc = service(
            r#"    - name: s
      prefix: "0x01"
      backends: [{dns: "web.test:80", weight: 2}, {address: "127.0.0.9:80", weight: 1}]
      balance: weighted
"#,
        );
        let pool = Pool::new(&svc, None, Arc::new(ServerCounters::default()));
        let p = pool.inner();
        let now = Instant::now();
        assert_eq!(
            p.view(now).len(),
            1,
            "only the fixed address before DNS answers"
        );
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        p.set_resolved(0, &[a, b]);
        let lease = p.pick(0, &[], now).unwrap();
        let kept = lease.addr();
        let view = p.view(now);
        assert_eq!(view.len(), 3);
        assert!(view.iter().all(|v| v.weight
            == if v.addr.port() == 80 && v.addr.ip() == "127.0.0.9".parse::<IpAddr>().unwrap() {
                1
            } else {
                2
            }));
        // `a` goes, `c` comes: the held lease's member keeps its count if it stays.
        let c: IpAddr = "127.0.0.3".parse().unwrap();
        let keep = if kept.ip() == a { a } else { b };
        p.set_resolved(0, &[keep, c]);
        let view = p.view(now);
        assert_eq!(view.len(), 3);
        let held = view.iter().find(|v| v.addr == kept).unwrap();
        assert_eq!(held.active, 1);
        assert!(view.iter().any(|v| v.addr.ip() == c));
    }
}
