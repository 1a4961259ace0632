//! What `check-config` and `run` print about a policy: the effective policy as YAML (every
//! default filled in, environment overrides applied, secrets never shown) and a summary of
//! what each role would do, with every service reference resolved to its ServiceID.

use core::fmt::Write as _;

use serval_stack::wire::LegacyAddr;

use crate::config::model::{ListenMode, ProxyProtocol};
use crate::config::{Config, Loaded};
use crate::policy::Policy;

/// The effective policy as YAML. It parses back to the same [`Config`] (tested), so an
/// operator can start from it.
pub fn effective_yaml(config: &Config) -> Result<String, String> {
    serde_saphyr::to_string(config).map_err(|e| format!("cannot print the policy: {e}"))
}

/// A human-readable account of the policy: roles, overrides, and each listener, rule,
/// name, service and route with the ServiceID it resolves to.
pub fn summary(loaded: &Loaded) -> String {
    let c = &loaded.config;
    let policy = Policy::new(c);
    let mut out = String::new();
    let roles: Vec<String> = c.roles().iter().map(ToString::to_string).collect();
    let _ = writeln!(out, "policy   {}", loaded.source);
    let _ = writeln!(out, "roles    {}", roles.join(", "));
    for o in &loaded.overrides {
        let _ = writeln!(out, "env      {} overrides {}", o.var, o.field);
    }
    let _ = writeln!(
        out,
        "serval   bind {}{}, {} router(s), key {}",
        c.serval.bind,
        c.serval
            .advertise
            .map(|a| format!(" (advertised as {a})"))
            .unwrap_or_default(),
        c.serval.routers.len(),
        c.serval
            .key
            .as_ref()
            .map_or("none".to_owned(), |k| format!("id {}", k.id)),
    );
    let r = &c.relay;
    let _ = writeln!(
        out,
        "relay    idle {}, half-close {}, {} per direction, at most {} connections (buffers up to {} MiB)",
        off_or(r.idle_timeout),
        off_or(r.half_close_timeout),
        r.buffer_size,
        r.max_connections,
        (2 * r.buffer_size.0 * u64::from(r.max_connections)) >> 20,
    );

    if let Some(client) = &c.client {
        let _ = writeln!(out, "\nclient role");
        for l in &client.listeners {
            let target = match (l.mode, &l.service) {
                (ListenMode::Explicit, Some(s)) => format!("-> {} = {}", s.text(), s.id()),
                (mode, _) => format!("{mode:?} (mapped by rules)").to_lowercase(),
            };
            let _ = writeln!(out, "  listener {:<12} {} {target}", l.name, l.listen);
        }
        for (i, rule) in client.rules.iter().enumerate() {
            let dst = if rule.destination.0.is_empty() {
                "any".to_owned()
            } else {
                rule.destination
                    .0
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let action = match (&rule.service, rule.legacy_tag, &rule.refuse) {
                (Some(s), _, _) => format!("-> {} = {}", s.text(), s.id()),
                (_, Some(tag), _) => format!(
                    "-> legacy address under tag {tag} (IPv4 ids under {})",
                    LegacyAddr::family_prefix(tag, false)
                ),
                (_, _, Some(reason)) => format!("refuse ({reason})"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  rule {i:<3} {} to {dst} port {} {action}",
                rule.name.as_deref().unwrap_or("-"),
                rule.ports
            );
        }
        if let Some(d) = &client.dns {
            let pools: Vec<String> = [d.pool_v4, d.pool_v6]
                .into_iter()
                .flatten()
                .map(|p| p.to_string())
                .collect();
            let _ = writeln!(
                out,
                "  dns      {} pool {} ttl {}, {} upstream(s)",
                d.listen,
                pools.join(" "),
                d.ttl,
                d.upstream.len()
            );
            for n in &d.names {
                let target = n.service.as_ref().map_or_else(
                    || "-> the name's own ServiceID".to_owned(),
                    |s| format!("-> {} = {}", s.text(), s.id()),
                );
                let _ = writeln!(out, "    name {} {target}", n.pattern);
            }
        }
    }

    if let Some(server) = &c.server {
        let _ = writeln!(out, "\nserver role");
        for s in &server.services {
            let backends: Vec<String> = s
                .backends
                .iter()
                .map(|b| {
                    let at = b
                        .address
                        .map(|a| a.to_string())
                        .or_else(|| b.dns.as_ref().map(|d| format!("dns {d}")))
                        .unwrap_or_default();
                    if b.weight == 1 {
                        at
                    } else {
                        format!("{at} w{}", b.weight)
                    }
                })
                .collect();
            let _ = writeln!(
                out,
                "  service {:<12} {} = {} -> {:?} [{}]{}",
                s.name,
                s.prefix.text(),
                s.prefix.prefix(),
                s.balance,
                backends.join(", "),
                proxy(s.proxy_protocol),
            );
        }
        if let Some(x) = &server.cross_translate {
            let _ = writeln!(
                out,
                "  cross-translate tag {} ({} and {}), {} allow rule(s){}",
                x.tag,
                LegacyAddr::family_prefix(x.tag, false),
                LegacyAddr::family_prefix(x.tag, true),
                x.allow.len(),
                proxy(x.proxy_protocol),
            );
        }
        if let Some(p) = &policy.server {
            let _ = writeln!(out, "  listens on {} prefix(es)", p.listen_prefixes().len());
        }
    }

    if let Some(router) = &c.router {
        let _ = writeln!(out, "\nrouter role");
        let ids: Vec<String> = router.keys.iter().map(|k| k.id.to_string()).collect();
        let _ = writeln!(
            out,
            "  keys [{}], leases {} to {} (default {}), at most {} ({} per source)",
            ids.join(", "),
            router.lease.min,
            router.lease.max,
            router.lease.default,
            router.max_leases,
            router.max_leases_per_source
        );
        for route in &router.routes {
            let _ = writeln!(
                out,
                "  route {} = {} -> {} prio {} weight {}",
                route.prefix.text(),
                route.prefix.prefix(),
                route.forward,
                route.priority,
                route.weight
            );
        }
        for d in &router.delay {
            let _ = writeln!(out, "  delay {} = {}", d.prefix.text(), d.prefix.prefix());
        }
    }
    let _ = writeln!(
        out,
        "\nadmin    {}",
        c.admin.listen.map_or("off".to_owned(), |a| a.to_string())
    );
    let _ = writeln!(out, "drain    grace {}", c.drain.grace_period);
    out
}

fn off_or(d: crate::config::types::HumanDuration) -> String {
    if d.is_zero() {
        "off".to_owned()
    } else {
        d.to_string()
    }
}

fn proxy(p: ProxyProtocol) -> &'static str {
    match p {
        ProxyProtocol::Off => "",
        ProxyProtocol::V1 => " +PROXY v1",
        ProxyProtocol::V2 => " +PROXY v2",
    }
}
