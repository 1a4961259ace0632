//! Cross-field checks of a parsed [`Config`]: everything the types alone cannot say. Each
//! check is a plain function over the model returning [`Issue`]s (field path + message);
//! the loader turns paths into file positions. All issues are collected, not just the first.
//!
//! Range checks on values the protocol core also validates (lease bounds, DELAY queue
//! bounds) call the core's own builders, so the policy cannot accept what the stack would
//! refuse at start.

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::{HashMap, HashSet};

use serval_stack::control::{DelayConfig, RegistryConfig};

use super::model::{
    Balance, ClientRole, Config, KeySource, ListenMode, MapRule, RouterRole, SCHEMA_VERSION,
    ServerRole, TokenSource,
};

/// One problem: the field's path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Path of the field (`client.listeners[1].service`).
    pub field: String,
    /// What is wrong and what would be right.
    pub message: String,
}

#[derive(Default)]
struct Issues(Vec<Issue>);

impl Issues {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Most buffer per direction: 16 MiB. More buys nothing on one connection and makes
/// `max_connections` meaningless as a memory bound.
pub const MAX_BUFFER: u64 = 16 << 20;
/// Least buffer per direction: 4 KiB (below it, per-syscall overhead dominates).
pub const MIN_BUFFER: u64 = 4 << 10;

/// Every issue of `config`; empty when it is valid.
pub fn check(config: &Config) -> Vec<Issue> {
    let mut out = Issues::default();
    if config.version != SCHEMA_VERSION {
        out.add(
            "version",
            format!(
                "schema version {} is not supported by this build (it reads version {SCHEMA_VERSION})",
                config.version
            ),
        );
    }
    if config.roles().is_empty() {
        out.add(
            "",
            "no role: add a `client:`, `server:` or `router:` section (see policies/README.md)",
        );
    }
    check_serval(config, &mut out);
    check_relay(config, &mut out);
    if let Some(client) = &config.client {
        check_client(client, &mut out);
    }
    if let Some(server) = &config.server {
        check_server(server, &mut out);
    }
    if let Some(router) = &config.router {
        check_router(router, &mut out);
    }
    check_addresses(config, &mut out);
    if let Some(t) = &config.admin.token {
        check_token_source(t, &mut out);
    }
    if let Err(e) = config.log.level.parse::<tracing_subscriber::EnvFilter>() {
        out.add("log.level", format!("invalid log filter: {e}"));
    }
    if let Some(tls) = &config.tls
        && tls
            .server_name
            .as_deref()
            .is_some_and(|n| serval_stack::wire::name::normalize(n).is_err())
    {
        out.add("tls.server_name", "not a valid DNS name");
    }
    out.0
}

fn check_key(field: &str, k: &KeySource, out: &mut Issues) {
    match (&k.file, &k.env) {
        (Some(_), Some(_)) => out.add(field, "give either `file` or `env`, not both"),
        (None, None) => out.add(
            field,
            "give `file` (a file holding the hex key) or `env` (a variable holding it)",
        ),
        (None, Some(var)) if var.is_empty() || var.contains('=') || var.contains('\0') => {
            out.add(
                format!("{field}.env"),
                "not a valid environment variable name",
            );
        }
        _ => {}
    }
}

fn check_token_source(t: &TokenSource, out: &mut Issues) {
    match (&t.file, &t.env) {
        (Some(_), Some(_)) => out.add("admin.token", "give either `file` or `env`, not both"),
        (None, None) => out.add(
            "admin.token",
            "give `file` (a file holding the token) or `env` (a variable holding it)",
        ),
        (None, Some(var)) if var.is_empty() || var.contains('=') || var.contains('\0') => {
            out.add("admin.token.env", "not a valid environment variable name");
        }
        _ => {}
    }
}

fn check_serval(config: &Config, out: &mut Issues) {
    let s = &config.serval;
    if !(1200..=65_507).contains(&s.max_udp_payload) {
        out.add(
            "serval.max_udp_payload",
            "must be 1200 to 65507 bytes (1452 fits a 1500-byte path)",
        );
    }
    if s.max_flows == 0 {
        out.add("serval.max_flows", "must be at least 1");
    }
    if let Some(a) = s.advertise
        && (a.ip().is_unspecified() || a.port() == 0)
    {
        out.add(
            "serval.advertise",
            "must be a concrete address peers can reach (not 0.0.0.0, not port 0)",
        );
    }
    if s.follow_address
        && !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&s.address_poll.0)
    {
        out.add("serval.address_poll", "must be 100ms to 1h");
    }
    let mut seen = HashSet::new();
    for (i, r) in s.routers.iter().enumerate() {
        if r.ip().is_unspecified() || r.port() == 0 {
            out.add(format!("serval.routers[{i}]"), "not a reachable address");
        }
        if !seen.insert(*r) {
            out.add(format!("serval.routers[{i}]"), "listed twice");
        }
    }
    if let Some(k) = &s.key {
        check_key("serval.key", k, out);
    }
    if !s.keepalive.is_zero()
        && !s.peer_timeout.is_zero()
        && s.keepalive.0.saturating_mul(2) > s.peer_timeout.0
    {
        out.add(
            "serval.peer_timeout",
            "must be at least twice `keepalive`, or an idle but live peer is taken for dead",
        );
    }
    let registers = config.server.is_some() && !s.routers.is_empty();
    if registers && s.key.is_none() {
        out.add(
            "serval.key",
            "the server role registers its services with `serval.routers` and needs the shared key",
        );
    }
    if config.client.is_some()
        && s.routers.is_empty()
        && config.router.is_none()
        && config.server.is_none()
    {
        out.add(
            "serval.routers",
            "the client role resolves services through routers: list at least one (or run the router role in this process)",
        );
    }
}

fn check_relay(config: &Config, out: &mut Issues) {
    let r = &config.relay;
    if !(MIN_BUFFER..=MAX_BUFFER).contains(&r.buffer_size.0) {
        out.add("relay.buffer_size", "must be 4KiB to 16MiB");
    }
    if r.max_connections == 0 {
        out.add("relay.max_connections", "must be at least 1");
    }
    if !r.half_close_timeout.is_zero()
        && !r.idle_timeout.is_zero()
        && r.half_close_timeout > r.idle_timeout
    {
        out.add(
            "relay.half_close_timeout",
            "longer than `idle_timeout`, so it would never fire; lower it or set it to 0",
        );
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn check_client(c: &ClientRole, out: &mut Issues) {
    if c.listeners.is_empty() {
        out.add(
            "client.listeners",
            "the client role needs at least one listener",
        );
    }
    if c.connect_timeout.is_zero() {
        out.add("client.connect_timeout", "must be more than 0");
    }
    if c.max_connections_per_source == Some(0) {
        out.add(
            "client.max_connections_per_source",
            "must be at least 1 (leave it out for no limit)",
        );
    }
    let mut names: HashMap<&str, ListenMode> = HashMap::new();
    for (i, l) in c.listeners.iter().enumerate() {
        let at = format!("client.listeners[{i}]");
        if !valid_name(&l.name) {
            out.add(format!("{at}.name"), "1 to 63 letters, digits, `-` or `_`");
        }
        if names.insert(l.name.as_str(), l.mode).is_some() {
            out.add(
                format!("{at}.name"),
                format!("listener {:?} is defined twice", l.name),
            );
        }
        match (l.mode, &l.service) {
            (ListenMode::Explicit, None) => out.add(
                format!("{at}.service"),
                "an explicit listener needs the `service` its connections go to",
            ),
            (ListenMode::Redirect | ListenMode::Tproxy, Some(_)) => out.add(
                format!("{at}.service"),
                "redirect/tproxy listeners map connections with `client.rules`, not a fixed service",
            ),
            _ => {}
        }
        if l.max_connections == Some(0) {
            out.add(format!("{at}.max_connections"), "must be at least 1");
        }
        if l.listen.port() == 0 {
            out.add(format!("{at}.listen"), "needs a port");
        }
    }
    let intercepting = c.listeners.iter().any(|l| l.mode != ListenMode::Explicit);
    if !c.rules.is_empty() && !intercepting {
        out.add(
            "client.rules",
            "rules only apply to redirect/tproxy listeners, and there is none",
        );
    }
    for (i, r) in c.rules.iter().enumerate() {
        check_rule(i, r, &names, out);
    }
    // A rule that an earlier rule always catches first is a mistake: it can never match.
    for (i, r) in c.rules.iter().enumerate() {
        if let Some(j) = (0..i).find(|&j| rule_covers(&c.rules[j], r)) {
            out.add(
                format!("client.rules[{i}]"),
                format!("can never match: rule {j} above matches everything it does (rules are tried in order)"),
            );
        }
    }
    if let Some(dns) = &c.dns {
        if dns.names.is_empty() {
            out.add("client.dns.names", "list the names the responder answers");
        }
        if dns.pool_v4.is_none() && dns.pool_v6.is_none() {
            out.add(
                "client.dns.pool_v4",
                "the responder needs a pool (v4, v6 or both)",
            );
        }
        if let Some(p) = dns.pool_v4
            && (!p.addr().is_ipv4() || !(8..=30).contains(&p.len()))
        {
            out.add("client.dns.pool_v4", "must be an IPv4 block from /8 to /30");
        }
        if let Some(p) = dns.pool_v6
            && (p.addr().is_ipv4() || !(8..=126).contains(&p.len()))
        {
            out.add(
                "client.dns.pool_v6",
                "must be an IPv6 block from /8 to /126",
            );
        }
        if dns.ttl.is_zero() {
            out.add("client.dns.ttl", "must be more than 0");
        }
        for (i, n) in dns.names.iter().enumerate() {
            if let Some(j) = (0..i).find(|&j| dns.names[j].pattern.covers(&n.pattern)) {
                out.add(
                    format!("client.dns.names[{i}].match"),
                    format!("can never match: names[{j}] above matches every name it does"),
                );
            }
        }
        // Rules whose destinations lie wholly inside the pool never see a connection: pool
        // destinations are mapped by name first.
        let pools: Vec<_> = [dns.pool_v4, dns.pool_v6].into_iter().flatten().collect();
        for (i, r) in c.rules.iter().enumerate() {
            if !r.destination.0.is_empty()
                && r.destination
                    .0
                    .iter()
                    .all(|d| pools.iter().any(|p| p.covers(d)))
            {
                out.add(
                    format!("client.rules[{i}].destination"),
                    "inside the DNS responder's pool, whose addresses are mapped by name: this rule can never match",
                );
            }
        }
        if !intercepting {
            out.add(
                "client.dns",
                "synthetic addresses reach the translator through a redirect/tproxy listener, and there is none",
            );
        }
    }
}

fn check_rule(i: usize, r: &MapRule, names: &HashMap<&str, ListenMode>, out: &mut Issues) {
    let at = format!("client.rules[{i}]");
    let actions = [
        r.service.is_some(),
        r.legacy_tag.is_some(),
        r.refuse.is_some(),
    ]
    .iter()
    .filter(|&&b| b)
    .count();
    if actions != 1 {
        out.add(
            at.clone(),
            "give exactly one action: `service`, `legacy_tag` or `refuse`",
        );
    }
    if r.refuse.as_deref().is_some_and(str::is_empty) {
        out.add(format!("{at}.refuse"), "give a reason (it is logged)");
    }
    for (k, name) in r.listeners.iter().enumerate() {
        match names.get(name.as_str()) {
            None => out.add(
                format!("{at}.listeners[{k}]"),
                format!("no listener is named {name:?}"),
            ),
            Some(ListenMode::Explicit) => out.add(
                format!("{at}.listeners[{k}]"),
                format!(
                    "listener {name:?} is explicit; rules only apply to redirect/tproxy listeners"
                ),
            ),
            Some(_) => {}
        }
    }
    if let Some(n) = &r.name
        && !valid_name(n)
    {
        out.add(format!("{at}.name"), "1 to 63 letters, digits, `-` or `_`");
    }
}

/// Whether `earlier` matches every connection `later` matches.
fn rule_covers(earlier: &MapRule, later: &MapRule) -> bool {
    let listeners = earlier.listeners.is_empty()
        || (!later.listeners.is_empty()
            && later
                .listeners
                .iter()
                .all(|l| earlier.listeners.contains(l)));
    listeners
        && earlier.destination.covers(&later.destination)
        && earlier.ports.covers(&later.ports)
}

fn check_server(s: &ServerRole, out: &mut Issues) {
    if s.services.is_empty() && s.cross_translate.is_none() {
        out.add(
            "server.services",
            "the server role needs at least one service (or `cross_translate`)",
        );
    }
    let mut names = HashSet::new();
    let mut prefixes = HashMap::new();
    for (i, svc) in s.services.iter().enumerate() {
        let at = format!("server.services[{i}]");
        if !valid_name(&svc.name) {
            out.add(format!("{at}.name"), "1 to 63 letters, digits, `-` or `_`");
        }
        if !names.insert(svc.name.as_str()) {
            out.add(
                format!("{at}.name"),
                format!("service {:?} is defined twice", svc.name),
            );
        }
        if let Some(j) = prefixes.insert(svc.prefix.prefix(), i) {
            out.add(
                format!("{at}.prefix"),
                format!("services[{j}] already answers the same prefix"),
            );
        }
        if svc.backends.is_empty() {
            out.add(format!("{at}.backends"), "list at least one backend");
        }
        for (k, b) in svc.backends.iter().enumerate() {
            let bat = format!("{at}.backends[{k}]");
            match (&b.address, &b.dns) {
                (Some(_), Some(_)) | (None, None) => {
                    out.add(bat.clone(), "give exactly one of `address` and `dns`");
                }
                (Some(a), None) if a.ip().is_unspecified() || a.port() == 0 => {
                    out.add(format!("{bat}.address"), "not a connectable address");
                }
                _ => {}
            }
            if b.weight == 0 {
                out.add(
                    format!("{bat}.weight"),
                    "must be at least 1 (remove the backend to stop using it)",
                );
            }
            if b.weight != 1 && svc.balance == Balance::RoundRobin {
                out.add(
                    format!("{bat}.weight"),
                    "weights need `balance: weighted`, `least_connections` or `consistent_hash`; round_robin ignores them",
                );
            }
        }
        if svc.dns_ttl.min > svc.dns_ttl.max {
            out.add(format!("{at}.dns_ttl"), "`min` is above `max`");
        }
        if svc.dns_ttl.min.is_zero() {
            out.add(
                format!("{at}.dns_ttl.min"),
                "must be more than 0 (a TTL of 0 would mean a lookup per connection)",
            );
        }
        if let Some(h) = &svc.health_check {
            if h.interval.is_zero() || h.timeout.is_zero() {
                out.add(
                    format!("{at}.health_check"),
                    "`interval` and `timeout` must be more than 0",
                );
            } else if h.timeout >= h.interval {
                out.add(
                    format!("{at}.health_check.timeout"),
                    "must be shorter than `interval`",
                );
            }
            if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
                out.add(
                    format!("{at}.health_check"),
                    "thresholds must be at least 1",
                );
            }
        }
        if svc.outlier.max_ejected_percent > 100 {
            out.add(
                format!("{at}.outlier.max_ejected_percent"),
                "a percentage: 0 to 100",
            );
        }
        if svc.outlier.consecutive_failures > 0 && svc.outlier.ejection_time.is_zero() {
            out.add(format!("{at}.outlier.ejection_time"), "must be more than 0");
        }
        if svc.connect_timeout.is_zero() {
            out.add(format!("{at}.connect_timeout"), "must be more than 0");
        }
        if svc.max_connections == Some(0) {
            out.add(format!("{at}.max_connections"), "must be at least 1");
        }
    }
    if let Some(x) = &s.cross_translate {
        if x.allow.is_empty() {
            out.add(
                "server.cross_translate.allow",
                "list the destinations cross-translation may reach; without it any client could reach any address of this network",
            );
        }
        for (i, a) in x.allow.iter().enumerate() {
            if a.destination.0.is_empty() {
                out.add(
                    format!("server.cross_translate.allow[{i}].destination"),
                    "list at least one CIDR block (0.0.0.0/0 if you really mean anywhere)",
                );
            }
        }
        if x.connect_timeout.is_zero() {
            out.add(
                "server.cross_translate.connect_timeout",
                "must be more than 0",
            );
        }
        let family = |v6| serval_stack::wire::LegacyAddr::family_prefix(x.tag, v6);
        for (i, svc) in s.services.iter().enumerate() {
            let p = svc.prefix.prefix();
            if p.covers(&family(false)) || p.covers(&family(true)) {
                out.add(
                    format!("server.services[{i}].prefix"),
                    format!(
                        "covers every legacy-address id of cross_translate tag {}, so cross-translation could never apply: use a narrower prefix",
                        x.tag
                    ),
                );
            }
        }
    }
}

fn check_router(r: &RouterRole, out: &mut Issues) {
    if r.keys.is_empty() && r.routes.is_empty() && r.delay.is_empty() {
        out.add(
            "router.keys",
            "a router with no keys accepts no registrations; give `keys` (or static `routes`)",
        );
    }
    let mut ids = HashSet::new();
    for (i, k) in r.keys.iter().enumerate() {
        check_key(&format!("router.keys[{i}]"), k, out);
        if !ids.insert(k.id) {
            out.add(
                format!("router.keys[{i}].id"),
                format!("key id {} is used twice", k.id),
            );
        }
    }
    if r.keys.len() > serval_stack::control::lease::MAX_KEYS {
        out.add(
            "router.keys",
            format!("at most {} keys", serval_stack::control::lease::MAX_KEYS),
        );
    }
    let lease = RegistryConfig::new()
        .with_lease_bounds(r.lease.min.0, r.lease.max.0)
        .and_then(|c| c.with_default_lease(r.lease.default.0))
        .and_then(|c| c.with_max_leases(to_usize(r.max_leases)))
        .and_then(|c| c.with_max_leases_per_source(to_usize(r.max_leases_per_source)));
    if let Err(e) = lease {
        out.add(
            "router.lease",
            format!("{e} (min at least 1ms, min <= max <= 49 days, default more than 0; limits at least 1)"),
        );
    }
    if r.lease.default < r.lease.min || r.lease.default > r.lease.max {
        out.add("router.lease.default", "must lie between `min` and `max`");
    }
    let delay = DelayConfig::new()
        .with_max_packets(to_usize(r.delay_queue.max_packets))
        .and_then(|c| c.with_max_per_service(to_usize(r.delay_queue.max_per_service)))
        .and_then(|c| c.with_max_age(r.delay_queue.max_age.0));
    if let Err(e) = delay {
        out.add("router.delay_queue", e.to_string());
    }
    for (i, route) in r.routes.iter().enumerate() {
        if route.forward.ip().is_unspecified() || route.forward.port() == 0 {
            out.add(
                format!("router.routes[{i}].forward"),
                "not a reachable address",
            );
        }
    }
    let mut delayed = HashSet::new();
    for (i, d) in r.delay.iter().enumerate() {
        if !delayed.insert(d.prefix.prefix()) {
            out.add(format!("router.delay[{i}].prefix"), "listed twice");
        }
    }
}

fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// TCP addresses of this process may not collide (two listeners on one port fail at start,
/// far from the line that caused it).
fn check_addresses(config: &Config, out: &mut Issues) {
    let mut tcp: Vec<(SocketAddr, String)> = Vec::new();
    if let Some(c) = &config.client {
        for (i, l) in c.listeners.iter().enumerate() {
            tcp.push((l.listen, format!("client.listeners[{i}].listen")));
        }
        if let Some(d) = &c.dns {
            tcp.push((d.listen, "client.dns.listen".to_owned()));
        }
    }
    // Last, so a collision is reported on the admin address, the one most often moved by
    // an environment override.
    if let Some(a) = config.admin.listen {
        tcp.push((a, "admin.listen".to_owned()));
    }
    for (i, (a, field)) in tcp.iter().enumerate() {
        if let Some((_, other)) = tcp[..i].iter().find(|(b, _)| collide(*a, *b)) {
            out.add(field.clone(), format!("the same TCP address as {other}"));
        }
    }
    if let Some(d) = config.client.as_ref().and_then(|c| c.dns.as_ref())
        && collide(d.listen, config.serval.bind)
    {
        out.add("client.dns.listen", "the same UDP address as serval.bind");
    }
}

/// Whether binding both would fail: same port, and the same IP or either a wildcard of the
/// same family.
fn collide(a: SocketAddr, b: SocketAddr) -> bool {
    // Port 0 asks the kernel for a free port: two of them never collide.
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::{IpNet, NetList, PortSet};

    #[test]
    fn collisions() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(collide(a("0.0.0.0:80"), a("10.0.0.1:80")));
        assert!(collide(a("10.0.0.1:80"), a("10.0.0.1:80")));
        assert!(!collide(a("10.0.0.1:80"), a("10.0.0.2:80")));
        assert!(!collide(a("0.0.0.0:80"), a("0.0.0.0:81")));
        assert!(!collide(a("[::1]:80"), a("127.0.0.1:80")));
    }

    #[test]
    fn rule_cover() {
        let rule = |dst: &[&str], ports: &str, listeners: &[&str]| MapRule {
            name: None,
            listeners: listeners.iter().map(|s| (*s).to_owned()).collect(),
            destination: NetList(dst.iter().map(|s| s.parse::<IpNet>().unwrap()).collect()),
            ports: if ports.is_empty() {
                PortSet::ANY
            } else {
                ports.parse().unwrap()
            },
            service: None,
            legacy_tag: Some(1),
            refuse: None,
        };
        let wide = rule(&["10.0.0.0/8"], "", &[]);
        let narrow = rule(&["10.1.0.0/16"], "80", &["a"]);
        assert!(rule_covers(&wide, &narrow));
        assert!(!rule_covers(&narrow, &wide));
        assert!(!rule_covers(&rule(&["10.0.0.0/8"], "", &["b"]), &narrow));
        assert!(!rule_covers(&rule(&["10.0.0.0/8"], "443", &[]), &narrow));
    }

    #[test]
    fn slowloris_limits_are_read_and_checked() {
        let policy = |per_source: &str| {
            format!(
                "serval:\n  routers: [\"192.0.2.1:54325\"]\nclient:\n  max_connections_per_source: {per_source}\n  listeners:\n    - name: web\n      listen: 127.0.0.1:8080\n      service: \"name:www.example.com\"\n      first_byte_timeout: 5s\n"
            )
        };
        let env: HashMap<String, String> = HashMap::new();
        let ok = crate::config::parse(&policy("16"), "p.yaml", &env).unwrap();
        let client = ok.config.client.as_ref().unwrap();
        assert_eq!(client.max_connections_per_source, Some(16));
        assert_eq!(
            client.listeners[0].first_byte_timeout.non_zero(),
            Some(Duration::from_secs(5))
        );
        let bad = crate::config::parse(&policy("0"), "p.yaml", &env).unwrap_err();
        assert!(
            bad.problems
                .iter()
                .any(|p| p.field == "client.max_connections_per_source"),
            "{:?}",
            bad.problems
        );
    }
}
