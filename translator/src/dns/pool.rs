//! The synthetic address pool: policy names ↔ addresses of `client.dns.pool_v4` /
//! `pool_v6`.
//!
//! - **Placement.** A name's address is chosen by hashing the name into the pool, probing
//!   onwards past addresses held by other names. The same name therefore gets the same
//!   address again after a restart (when it is free): legacy clients that still hold an
//!   old answer keep reaching the right service.
//! - **Stable while in use.** A binding lives while it is used: every answer and every
//!   connection to the address (the client role's lookup) renews it for `ttl`. An expired
//!   binding is kept until its address is needed by another name, so in a large pool a
//!   name keeps its address long after its TTL.
//! - **Bounded.** At most [`MAX_BINDINGS`] per family (and never more than the pool has
//!   usable addresses: not the network address, nor the IPv4 broadcast address). When the
//!   table is full, the expired bindings are swept; if none expired, the name gets no
//!   address (the responder answers SERVFAIL) rather than taking one still in use.
//! - Only names the policy maps (`client.dns.names`) get addresses, so unrelated queries
//!   cannot fill the pool.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::time::Duration;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serval_stack::wire::{ServiceId, name};
use tokio::time::Instant;

use crate::config::model::{DnsResponder, NameRule};
use crate::config::types::IpNet;
use crate::policy::SyntheticNames;

/// Most names bound at once per address family.
pub const MAX_BINDINGS: usize = 65_536;

/// Longest probe sequence in a pool larger than [`MAX_BINDINGS`] (such a pool is at most
/// half full, so a free address is found long before).
const MAX_PROBES: u128 = 4096;

/// Why a name got no address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AssignError {
    /// The name is not one the policy maps.
    #[error("{0:?} is not a name the policy maps")]
    NotMapped(String),
    /// No pool of that family is configured.
    #[error("no synthetic pool for this address family")]
    NoPool,
    /// Every address is bound to a name still in use.
    #[error("the synthetic pool is full")]
    Full,
}

/// Counters of the pool.
#[non_exhaustive]
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// Bindings made (a name got an address).
    pub bound: u64,
    /// Bindings that took over an expired binding's address.
    pub reused: u64,
    /// Names refused because the pool was full.
    pub full: u64,
    /// Expired bindings removed by sweeps.
    pub swept: u64,
    /// Names bound now (both families).
    pub bindings: u64,
}

#[derive(Debug)]
struct Binding {
    name: Arc<str>,
    last_used: Instant,
}

/// One family's table.
#[derive(Debug)]
struct Table {
    net: IpNet,
    /// The first usable address, as a number.
    first: u128,
    /// Usable addresses.
    usable: u128,
    probes: u128,
    capacity: usize,
    by_name: HashMap<Arc<str>, IpAddr>,
    by_addr: HashMap<IpAddr, Binding>,
}

impl Table {
    fn new(net: IpNet) -> Option<Self> {
        let (base, v4) = match net.addr() {
            IpAddr::V4(a) => (u128::from(u32::from(a)), true),
            IpAddr::V6(a) => (u128::from(a), false),
        };
        // IPv4: not the network nor the broadcast address; IPv6: not the subnet-router
        // anycast address (host part 0).
        let size = net.size();
        let usable = if v4 {
            size.saturating_sub(2)
        } else {
            size.saturating_sub(1)
        };
        if usable == 0 {
            return None;
        }
        let max = MAX_BINDINGS as u128;
        let (probes, capacity) = if usable <= max {
            (usable, usable as usize)
        } else {
            (MAX_PROBES, MAX_BINDINGS)
        };
        Some(Self {
            net,
            first: base + 1,
            usable,
            probes,
            capacity,
            by_name: HashMap::new(),
            by_addr: HashMap::new(),
        })
    }

    fn addr_at(&self, slot: u128) -> IpAddr {
        let n = self.first.wrapping_add(slot);
        match self.net.addr() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(0))),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
        }
    }

    fn expired(b: &Binding, now: Instant, ttl: Duration) -> bool {
        b.last_used.checked_add(ttl).is_none_or(|t| now >= t)
    }

    fn sweep(&mut self, now: Instant, ttl: Duration) -> u64 {
        let before = self.by_addr.len();
        let by_name = &mut self.by_name;
        self.by_addr.retain(|_, b| {
            let keep = !Self::expired(b, now, ttl);
            if !keep {
                by_name.remove(&b.name);
            }
            keep
        });
        (before - self.by_addr.len()) as u64
    }

    fn assign(
        &mut self,
        normalized: &str,
        now: Instant,
        ttl: Duration,
        stats: &mut PoolStats,
    ) -> Result<IpAddr, AssignError> {
        if let Some(addr) = self.by_name.get(normalized).copied() {
            if let Some(b) = self.by_addr.get_mut(&addr) {
                b.last_used = now;
            }
            return Ok(addr);
        }
        if self.by_addr.len() >= self.capacity {
            stats.swept += self.sweep(now, ttl);
            if self.by_addr.len() >= self.capacity {
                stats.full += 1;
                return Err(AssignError::Full);
            }
        }
        // The same stable hash as consistent-hash balancing: fixed across builds, so a name
        // lands on the same address after a restart.
        let start = u128::from(crate::server::hash64(normalized.as_bytes())) % self.usable;
        for k in 0..self.probes {
            let addr = self.addr_at((start + k) % self.usable);
            match self.by_addr.get(&addr) {
                None => {}
                Some(b) if Self::expired(b, now, ttl) => {
                    let old = b.name.clone();
                    self.by_name.remove(&old);
                    stats.reused += 1;
                }
                Some(_) => continue,
            }
            let name: Arc<str> = Arc::from(normalized);
            self.by_name.insert(name.clone(), addr);
            self.by_addr.insert(
                addr,
                Binding {
                    name,
                    last_used: now,
                },
            );
            stats.bound += 1;
            return Ok(addr);
        }
        stats.full += 1;
        Err(AssignError::Full)
    }
}

#[derive(Debug)]
struct Inner {
    rules: Vec<NameRule>,
    ttl: Duration,
    v4: Option<Table>,
    v6: Option<Table>,
    stats: PoolStats,
}

/// Names ↔ synthetic addresses; see the module docs. Shared by the DNS responder (which
/// binds names) and the client role (which maps connections back through
/// [`SyntheticNames`]).
#[derive(Debug)]
pub struct Pool {
    inner: Mutex<Inner>,
}

impl Pool {
    /// An empty pool for `config`'s names, address blocks and TTL.
    pub fn new(config: &DnsResponder) -> Self {
        Self {
            inner: Mutex::new(Inner {
                rules: config.names.clone(),
                ttl: config.ttl.0,
                v4: config.pool_v4.and_then(Table::new),
                v6: config.pool_v6.and_then(Table::new),
                stats: PoolStats::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is a single step on the maps; a panic cannot leave them half-done.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a reloaded policy's names and TTL. A changed address block starts that
    /// family's table afresh (its bindings are dropped: their addresses may be outside the
    /// new block); bindings of names the policy no longer maps stay until reused, and the
    /// client role refuses connections to them (`name_not_mapped`).
    pub fn reconfigure(&self, config: &DnsResponder) {
        let mut inner = self.lock();
        inner.rules = config.names.clone();
        inner.ttl = config.ttl.0;
        if inner.v4.as_ref().map(|t| t.net) != config.pool_v4 {
            inner.v4 = config.pool_v4.and_then(Table::new);
        }
        if inner.v6.as_ref().map(|t| t.net) != config.pool_v6 {
            inner.v6 = config.pool_v6.and_then(Table::new);
        }
    }

    /// Whether `queried` is a name the policy answers with a synthetic address.
    pub fn maps(&self, queried: &str) -> bool {
        let Ok(n) = name::normalize(queried) else {
            return false;
        };
        self.lock().rules.iter().any(|r| r.pattern.matches(&n))
    }

    /// The answers' TTL.
    pub fn ttl(&self) -> Duration {
        self.lock().ttl
    }

    /// The address of `queried` in the IPv4 (`v6` false) or IPv6 pool, binding one if
    /// needed; renews the binding.
    pub fn assign(&self, queried: &str, v6: bool) -> Result<IpAddr, AssignError> {
        self.assign_at(queried, v6, Instant::now())
    }

    pub(crate) fn assign_at(
        &self,
        queried: &str,
        v6: bool,
        now: Instant,
    ) -> Result<IpAddr, AssignError> {
        let normalized =
            name::normalize(queried).map_err(|_| AssignError::NotMapped(queried.to_owned()))?;
        let mut guard = self.lock();
        let inner = &mut *guard;
        if !inner.rules.iter().any(|r| r.pattern.matches(&normalized)) {
            return Err(AssignError::NotMapped(normalized));
        }
        let ttl = inner.ttl;
        let table = if v6 { &mut inner.v6 } else { &mut inner.v4 };
        let table = table.as_mut().ok_or(AssignError::NoPool)?;
        table.assign(&normalized, now, ttl, &mut inner.stats)
    }

    /// The name bound to `ip`, renewing the binding (a connection is using it).
    pub fn name_at(&self, ip: IpAddr, now: Instant) -> Option<String> {
        let ip = ip.to_canonical();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let table = if ip.is_ipv4() {
            &mut inner.v4
        } else {
            &mut inner.v6
        };
        let b = table.as_mut()?.by_addr.get_mut(&ip)?;
        b.last_used = now;
        Some(b.name.to_string())
    }

    /// The ServiceID connections to `ip` go to: the first `names` rule matching the name
    /// bound there decides (its `service`, or the name's own id). The client role gets the
    /// same answer through `ClientPolicy::decide`; this is for tools and logs.
    pub fn service_of(&self, ip: IpAddr) -> Option<ServiceId> {
        let bound = self.name_at(ip, Instant::now())?;
        let inner = self.lock();
        let rule = inner.rules.iter().find(|r| r.pattern.matches(&bound))?;
        match &rule.service {
            Some(s) => Some(s.id()),
            None => name::service_id_for_name(&bound).ok(),
        }
    }

    /// The pool's counters.
    pub fn stats(&self) -> PoolStats {
        let inner = self.lock();
        let bindings = [&inner.v4, &inner.v6]
            .into_iter()
            .flatten()
            .map(|t| t.by_addr.len() as u64)
            .sum();
        PoolStats {
            bindings,
            ..inner.stats
        }
    }
}

impl SyntheticNames for Pool {
    fn name_of(&self, ip: IpAddr) -> Option<String> {
        self.name_at(ip, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::parse;

    fn responder(extra: &str) -> DnsResponder {
        let text = format!(
            r#"
serval: {{routers: ["192.0.2.1:54325"]}}
client:
  listeners: [{{name: n, listen: "127.0.0.1:15001", mode: redirect}}]
  dns:
    listen: 127.0.0.1:5353
    names:
      - match: "pinned.example.com"
        service: "16385"
      - match: "*.example.com"
{extra}"#
        );
        let loaded = parse(&text, "t.yaml", &HashMap::<String, String>::new()).unwrap();
        loaded.config.client.unwrap().dns.unwrap()
    }

    #[test]
    fn names_get_stable_addresses_in_the_pool_and_map_back() {
        let cfg = responder("    pool_v4: 198.18.0.0/15\n    pool_v6: \"fd00::/64\"\n");
        let pool = Pool::new(&cfg);
        let a = pool.assign("WWW.example.com.", false).unwrap();
        assert!(cfg.pool_v4.unwrap().contains(a));
        assert_eq!(pool.assign("www.example.com", false).unwrap(), a, "stable");
        let a6 = pool.assign("www.example.com", true).unwrap();
        assert!(cfg.pool_v6.unwrap().contains(a6));
        assert_eq!(pool.name_of(a).as_deref(), Some("www.example.com"));
        assert_eq!(pool.name_of(a6).as_deref(), Some("www.example.com"));
        assert_eq!(
            pool.service_of(a),
            Some(name::service_id_for_name("www.example.com").unwrap())
        );
        let p = pool.assign("pinned.example.com", false).unwrap();
        assert_eq!(pool.service_of(p), Some(ServiceId::from_u32(16385)));
        assert_ne!(p, a);
        // Same placement in a fresh pool (a restart).
        let again = Pool::new(&cfg);
        assert_eq!(again.assign("www.example.com", false).unwrap(), a);
        assert_eq!(
            pool.assign("other.org", false),
            Err(AssignError::NotMapped("other.org".into()))
        );
        assert_eq!(pool.stats().bindings, 3);
    }

    #[test]
    fn a_full_pool_reuses_only_expired_bindings() {
        // /30: two usable addresses.
        let cfg = responder("    pool_v4: 198.18.0.0/30\n    ttl: 30s\n");
        let pool = Pool::new(&cfg);
        let t0 = Instant::now();
        let a = pool.assign_at("a.example.com", false, t0).unwrap();
        let b = pool.assign_at("b.example.com", false, t0).unwrap();
        assert_ne!(a, b);
        for ip in [a, b] {
            let n = u32::from(match ip {
                IpAddr::V4(v) => v,
                IpAddr::V6(_) => unreachable!(),
            });
            assert!(
                n == 0xC612_0001 || n == 0xC612_0002,
                "{ip}: no network/broadcast"
            );
        }
        assert_eq!(
            pool.assign_at("c.example.com", false, t0 + Duration::from_secs(29)),
            Err(AssignError::Full)
        );
        // `a` is used by a connection at 20 s; `b` is not: at 40 s only `b` is free.
        pool.name_at(a, t0 + Duration::from_secs(20)).unwrap();
        let c = pool
            .assign_at("c.example.com", false, t0 + Duration::from_secs(40))
            .unwrap();
        assert_eq!(c, b);
        assert_eq!(
            pool.name_at(b, t0 + Duration::from_secs(40)).as_deref(),
            Some("c.example.com")
        );
        assert_eq!(
            pool.name_at(a, t0 + Duration::from_secs(40)).as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            pool.assign_at("b.example.com", false, t0 + Duration::from_secs(41)),
            Err(AssignError::Full)
        );
        assert_eq!(
            pool.assign_at("x.example.com", true, t0),
            Err(AssignError::NoPool)
        );
        let s = pool.stats();
        assert_eq!((s.bound, s.full, s.bindings), (3, 2, 2));
    }

    #[test]
    fn reconfigure_keeps_or_restarts_tables() {
        let cfg = responder("    pool_v4: 198.18.0.0/24\n");
        let pool = Pool::new(&cfg);
        let a = pool.assign("a.example.com", false).unwrap();
        pool.reconfigure(&responder("    pool_v4: 198.18.0.0/24\n    ttl: 5s\n"));
        assert_eq!(pool.ttl(), Duration::from_secs(5));
        assert_eq!(
            pool.name_of(a).as_deref(),
            Some("a.example.com"),
            "same block: kept"
        );
        pool.reconfigure(&responder("    pool_v4: 198.19.0.0/24\n"));
        assert_eq!(pool.name_of(a), None, "new block: dropped");
        assert!(pool.maps("x.example.com"));
        assert!(!pool.maps("example.org"));
    }
}
