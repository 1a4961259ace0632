//! Client side: which ServiceID a legacy TCP connection goes to.
//!
//! [`ClientPolicy::decide`] is a pure function of the policy, the listener that accepted the
//! connection, its addresses, and the DNS responder's current address → name bindings
//! (passed in through [`SyntheticNames`], so the decision itself holds no state). In order:
//!
//! 1. an **explicit** listener maps every connection to its fixed service;
//! 2. a **redirect** listener needs the original destination (`SO_ORIGINAL_DST`); a
//!    connection without one, or whose "original" destination is the listener itself, was
//!    not redirected and is refused (relaying it would loop or reach the wrong service);
//!    for **tproxy** the original destination is the accepted socket's local address;
//! 3. a destination inside the DNS responder's **synthetic pool** maps through the name the
//!    responder bound to that address: the first `client.dns.names` entry matching the
//!    name decides (its `service`, or the name's own ServiceID);
//! 4. otherwise the first **rule** matching (listener, destination address, port) decides:
//!    a fixed service, the destination's legacy-address ServiceID, or a refusal;
//! 5. nothing matched: refused.

use core::net::{IpAddr, SocketAddr};
use std::collections::HashMap;

use serval_stack::wire::{LegacyAddr, ServiceId, name};

use crate::config::model::{ClientRole, ListenMode, NameRule};
use crate::config::types::{IpNet, NetList, PortSet};

/// Index of a listener in `client.listeners`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerIdx(pub usize);

/// The DNS responder's live bindings of synthetic addresses to names.
pub trait SyntheticNames {
    /// The (normalised) name currently bound to `ip`, if any.
    ///
    /// Owned, not borrowed: a live table sits behind a lock (the DNS responder's pool) and
    /// cannot lend out a reference past it; the copy is one short string per connection to
    /// a synthetic address.
    fn name_of(&self, ip: IpAddr) -> Option<String>;
}

/// No DNS responder, or no bindings.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNames;

impl SyntheticNames for NoNames {
    fn name_of(&self, _: IpAddr) -> Option<String> {
        None
    }
}

impl SyntheticNames for HashMap<IpAddr, String> {
    fn name_of(&self, ip: IpAddr) -> Option<String> {
        self.get(&ip).cloned()
    }
}

/// How a service was chosen (for the access log and per-rule counters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// The explicit listener's fixed service.
    Listener,
    /// Rule `n` (index in `client.rules`) with a fixed service.
    Rule(usize),
    /// Rule `n` embedding the destination under a legacy-address tag.
    Legacy {
        /// Rule index.
        rule: usize,
        /// Tag used.
        tag: u32,
    },
    /// The DNS responder's name for a synthetic address, matched by `client.dns.names[entry]`.
    Name {
        /// The name.
        name: String,
        /// Index in `client.dns.names`.
        entry: usize,
    },
}

/// A connection's service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientDecision {
    /// The ServiceID to open the flow to.
    pub service: ServiceId,
    /// Why.
    pub via: Via,
}

/// Why a connection was refused. Each variant is a counter (see [`Refusal::label`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The listener index is not in the policy (a reload removed it).
    #[error("unknown listener")]
    UnknownListener,
    /// A redirect listener got a connection that was not redirected to it.
    #[error(
        "connection was not redirected (no original destination, or it is the listener itself)"
    )]
    NotRedirected,
    /// The destination is in the synthetic pool but no name is bound to it (expired, or
    /// the client cached an answer across a restart).
    #[error("synthetic address {0} is not bound to a name")]
    UnboundSyntheticAddress(IpAddr),
    /// The name bound to the synthetic address no longer matches the policy (reloaded).
    #[error("name {0:?} no longer matches client.dns.names")]
    NameNotMapped(String),
    /// No rule matches the destination.
    #[error("no rule matches destination {0}")]
    NoRule(SocketAddr),
    /// A rule refuses the destination.
    #[error("refused by rule {rule}: {reason}")]
    RuleRefused {
        /// Rule index.
        rule: usize,
        /// The rule's reason.
        reason: String,
    },
    /// A scoped (link-local) IPv6 destination cannot be named by a legacy-address id.
    #[error("scoped IPv6 destination {0} cannot be embedded in a ServiceID")]
    ScopedDestination(SocketAddr),
}

impl Refusal {
    /// A short, fixed label for metrics (no addresses: bounded cardinality).
    pub fn label(&self) -> &'static str {
        match self {
            Self::UnknownListener => "unknown_listener",
            Self::NotRedirected => "not_redirected",
            Self::UnboundSyntheticAddress(_) => "unbound_synthetic_address",
            Self::NameNotMapped(_) => "name_not_mapped",
            Self::NoRule(_) => "no_rule",
            Self::RuleRefused { .. } => "rule_refused",
            Self::ScopedDestination(_) => "scoped_destination",
        }
    }
}

#[derive(Clone, Debug)]
struct ListenerPolicy {
    name: String,
    mode: ListenMode,
    listen: SocketAddr,
    service: Option<ServiceId>,
}

#[derive(Clone, Debug)]
enum Action {
    Service(ServiceId),
    Legacy(u32),
    Refuse(String),
}

#[derive(Clone, Debug)]
struct RulePolicy {
    /// Listener indexes; empty = every interception listener.
    listeners: Vec<ListenerIdx>,
    destination: NetList,
    ports: PortSet,
    action: Action,
}

#[derive(Clone, Debug)]
struct DnsPolicy {
    pools: Vec<IpNet>,
    names: Vec<NameRule>,
}

/// The client role's decisions, compiled from a valid [`ClientRole`].
#[derive(Clone, Debug)]
pub struct ClientPolicy {
    listeners: Vec<ListenerPolicy>,
    rules: Vec<RulePolicy>,
    dns: Option<DnsPolicy>,
}

impl ClientPolicy {
    /// Compiles `role`. It must have passed validation: a rule naming an unknown listener,
    /// or without an action, is skipped here rather than trusted.
    pub fn new(role: &ClientRole) -> Self {
        let listeners: Vec<ListenerPolicy> = role
            .listeners
            .iter()
            .map(|l| ListenerPolicy {
                name: l.name.clone(),
                mode: l.mode,
                listen: l.listen,
                service: l.service.as_ref().map(|s| s.id()),
            })
            .collect();
        let rules = role
            .rules
            .iter()
            .filter_map(|r| {
                let action = match (&r.service, r.legacy_tag, &r.refuse) {
                    (Some(s), None, None) => Action::Service(s.id()),
                    (None, Some(tag), None) => Action::Legacy(tag),
                    (None, None, Some(reason)) => Action::Refuse(reason.clone()),
                    _ => Action::Refuse("invalid rule".to_owned()),
                };
                let ids: Option<Vec<ListenerIdx>> = r
                    .listeners
                    .iter()
                    .map(|n| listeners.iter().position(|l| &l.name == n).map(ListenerIdx))
                    .collect();
                Some(RulePolicy {
                    listeners: ids?,
                    destination: r.destination.clone(),
                    ports: r.ports.clone(),
                    action,
                })
            })
            .collect();
        let dns = role.dns.as_ref().map(|d| DnsPolicy {
            pools: [d.pool_v4, d.pool_v6].into_iter().flatten().collect(),
            names: d.names.clone(),
        });
        Self {
            listeners,
            rules,
            dns,
        }
    }

    /// The index of the listener named `name`.
    pub fn listener(&self, name: &str) -> Option<ListenerIdx> {
        self.listeners
            .iter()
            .position(|l| l.name == name)
            .map(ListenerIdx)
    }

    /// The service of a connection accepted by `listener` on local address `local`, whose
    /// original destination (REDIRECT: `SO_ORIGINAL_DST`) is `original_dst`. `names` is the
    /// DNS responder's current table. See the module docs for the order of evaluation.
    pub fn decide(
        &self,
        listener: ListenerIdx,
        local: SocketAddr,
        original_dst: Option<SocketAddr>,
        names: &dyn SyntheticNames,
    ) -> Result<ClientDecision, Refusal> {
        let l = self
            .listeners
            .get(listener.0)
            .ok_or(Refusal::UnknownListener)?;
        let dst = match l.mode {
            ListenMode::Explicit => {
                return l
                    .service
                    .map(|service| ClientDecision {
                        service,
                        via: Via::Listener,
                    })
                    .ok_or(Refusal::UnknownListener);
            }
            ListenMode::Redirect => match original_dst.map(canonical) {
                Some(d) if d != canonical(local) => d,
                _ => return Err(Refusal::NotRedirected),
            },
            // The accepted socket's local address is the original destination; one equal
            // to the configured listen address was a direct connection to the listener.
            ListenMode::Tproxy => {
                let d = canonical(original_dst.unwrap_or(local));
                if d == canonical(l.listen) {
                    return Err(Refusal::NotRedirected);
                }
                d
            }
        };

        if let Some(dns) = &self.dns
            && dns.pools.iter().any(|p| p.contains(dst.ip()))
        {
            return Self::by_name(dns, dst.ip(), names);
        }

        for (i, r) in self.rules.iter().enumerate() {
            let listener_ok = r.listeners.is_empty() || r.listeners.contains(&listener);
            if !(listener_ok && r.destination.matches(dst.ip()) && r.ports.contains(dst.port())) {
                continue;
            }
            return match &r.action {
                Action::Service(service) => Ok(ClientDecision {
                    service: *service,
                    via: Via::Rule(i),
                }),
                Action::Legacy(tag) => {
                    if let SocketAddr::V6(v6) = dst
                        && v6.scope_id() != 0
                    {
                        return Err(Refusal::ScopedDestination(dst));
                    }
                    Ok(ClientDecision {
                        service: LegacyAddr::new(*tag, dst).to_service_id(),
                        via: Via::Legacy { rule: i, tag: *tag },
                    })
                }
                Action::Refuse(reason) => Err(Refusal::RuleRefused {
                    rule: i,
                    reason: reason.clone(),
                }),
            };
        }
        Err(Refusal::NoRule(dst))
    }

    fn by_name(
        dns: &DnsPolicy,
        ip: IpAddr,
        names: &dyn SyntheticNames,
    ) -> Result<ClientDecision, Refusal> {
        let bound = names
            .name_of(ip)
            .ok_or(Refusal::UnboundSyntheticAddress(ip))?;
        let normalized =
            name::normalize(&bound).map_err(|_| Refusal::NameNotMapped(bound.clone()))?;
        let (entry, rule) = dns
            .names
            .iter()
            .enumerate()
            .find(|(_, r)| r.pattern.matches(&normalized))
            .ok_or_else(|| Refusal::NameNotMapped(normalized.clone()))?;
        let service = match &rule.service {
            Some(s) => s.id(),
            None => name::service_id_for_name(&normalized)
                .map_err(|_| Refusal::NameNotMapped(normalized.clone()))?,
        };
        Ok(ClientDecision {
            service,
            via: Via::Name {
                name: normalized,
                entry,
            },
        })
    }

    /// Whether `name` (as queried) is one the DNS responder answers with a synthetic
    /// address, i.e. matches an entry of `client.dns.names`.
    pub fn answers_name(&self, queried: &str) -> bool {
        let Some(dns) = &self.dns else { return false };
        name::normalize(queried).is_ok_and(|n| dns.names.iter().any(|r| r.pattern.matches(&n)))
    }
}

/// IPv4-mapped IPv6 socket addresses (from dual-stack sockets) as plain IPv4, so rules and
/// legacy embedding see the address the client meant.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const POLICY: &str = r#"
serval:
  routers: ["192.0.2.1:54325"]
client:
  listeners:
    - name: web
      listen: 127.0.0.1:8080
      service: "name:www.example.com"
    - name: intercept
      listen: 0.0.0.0:15001
      mode: redirect
    - name: tp
      listen: 0.0.0.0:15002
      mode: tproxy
  rules:
    - name: blocked
      destination: 10.9.0.0/16
      refuse: "policy: no access to the 10.9 lab"
    - destination: [10.0.0.0/8, "2001:db8::/32"]
      ports: [80, 443]
      legacy_tag: 8080
    - listeners: [tp]
      destination: 172.16.0.0/12
      service: "0x00004001"
    - destination: 0.0.0.0/0
      ports: "5432"
      service: "name:db.example.com"
  dns:
    listen: 127.0.0.1:5353
    names:
      - match: "pinned.example.com"
        service: "16385"
      - match: "*.example.com"
"#;

    fn policy() -> ClientPolicy {
        let loaded = parse(POLICY, "test.yaml", &HashMap::<String, String>::new()).unwrap();
        ClientPolicy::new(loaded.config.client.as_ref().unwrap())
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn id_of(name: &str) -> ServiceId {
        name::service_id_for_name(name).unwrap()
    }

    #[test]
    fn decision_table() {
        let p = policy();
        let web = p.listener("web").unwrap();
        let intercept = p.listener("intercept").unwrap();
        let tp = p.listener("tp").unwrap();
        let mut names = HashMap::new();
        names.insert("198.18.0.7".parse().unwrap(), "API.example.com".to_owned());
        names.insert(
            "198.18.0.8".parse().unwrap(),
            "pinned.example.com".to_owned(),
        );
        names.insert("198.18.0.9".parse().unwrap(), "other.org".to_owned());

        let legacy = |dst: &str| LegacyAddr::new(8080, a(dst)).to_service_id();
        let local = a("10.1.1.1:15001");
        type Row<'a> = (
            &'a str,
            ListenerIdx,
            Option<&'a str>,
            Result<(ServiceId, Via), Refusal>,
        );
        let rows: Vec<Row<'_>> = vec![
            (
                "explicit listener ignores destinations",
                web,
                Some("10.0.0.5:80"),
                Ok((id_of("www.example.com"), Via::Listener)),
            ),
            (
                "redirected to 10/8 port 80: legacy embedding",
                intercept,
                Some("10.0.0.5:80"),
                Ok((legacy("10.0.0.5:80"), Via::Legacy { rule: 1, tag: 8080 })),
            ),
            (
                "v4-mapped destination is embedded as IPv4",
                intercept,
                Some("[::ffff:10.0.0.5]:443"),
                Ok((legacy("10.0.0.5:443"), Via::Legacy { rule: 1, tag: 8080 })),
            ),
            (
                "IPv6 destination in the rule's second block",
                intercept,
                Some("[2001:db8::7]:80"),
                Ok((
                    legacy("[2001:db8::7]:80"),
                    Via::Legacy { rule: 1, tag: 8080 },
                )),
            ),
            (
                "refusing rule comes first",
                intercept,
                Some("10.9.1.1:80"),
                Err(Refusal::RuleRefused {
                    rule: 0,
                    reason: "policy: no access to the 10.9 lab".into(),
                }),
            ),
            (
                "port not in the rule",
                intercept,
                Some("10.0.0.5:22"),
                Err(Refusal::NoRule(a("10.0.0.5:22"))),
            ),
            (
                "rule limited to another listener",
                intercept,
                Some("172.16.0.1:80"),
                Err(Refusal::NoRule(a("172.16.0.1:80"))),
            ),
            (
                "tproxy uses the local address",
                tp,
                None,
                Ok((ServiceId::from_u32(16385), Via::Rule(2))),
            ),
            (
                "catch-all port rule",
                intercept,
                Some("203.0.113.5:5432"),
                Ok((id_of("db.example.com"), Via::Rule(3))),
            ),
            (
                "not redirected: no original destination",
                intercept,
                None,
                Err(Refusal::NotRedirected),
            ),
            (
                "not redirected: original destination is the listener",
                intercept,
                Some("10.1.1.1:15001"),
                Err(Refusal::NotRedirected),
            ),
            (
                "synthetic address: the name's own id",
                intercept,
                Some("198.18.0.7:443"),
                Ok((
                    id_of("api.example.com"),
                    Via::Name {
                        name: "api.example.com".into(),
                        entry: 1,
                    },
                )),
            ),
            (
                "synthetic address: pinned service",
                intercept,
                Some("198.18.0.8:80"),
                Ok((
                    ServiceId::from_u32(16385),
                    Via::Name {
                        name: "pinned.example.com".into(),
                        entry: 0,
                    },
                )),
            ),
            (
                "synthetic address bound to a name the policy no longer maps",
                intercept,
                Some("198.18.0.9:80"),
                Err(Refusal::NameNotMapped("other.org".into())),
            ),
            (
                "synthetic address without a binding",
                intercept,
                Some("198.19.255.1:80"),
                Err(Refusal::UnboundSyntheticAddress(
                    "198.19.255.1".parse().unwrap(),
                )),
            ),
            (
                "unknown listener",
                ListenerIdx(99),
                None,
                Err(Refusal::UnknownListener),
            ),
        ];
        for (what, listener, dst, want) in rows {
            let local = if listener == tp {
                a("172.16.0.1:80")
            } else {
                local
            };
            let got = p
                .decide(listener, local, dst.map(a), &names)
                .map(|d| (d.service, d.via));
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn scoped_ipv6_cannot_be_embedded() {
        let p = policy();
        let intercept = p.listener("intercept").unwrap();
        let dst: SocketAddr = "[2001:db8::1%3]:80".parse().unwrap();
        assert_eq!(
            p.decide(intercept, a("[2001:db8::2]:15001"), Some(dst), &NoNames),
            Err(Refusal::ScopedDestination(dst))
        );
    }

    #[test]
    fn names_answered() {
        let p = policy();
        assert!(p.answers_name("WWW.Example.com."));
        assert!(p.answers_name("pinned.example.com"));
        assert!(!p.answers_name("example.org"));
        assert!(!p.answers_name("bad..name"));
    }

    #[test]
    fn labels_are_fixed_strings() {
        let r = Refusal::NoRule(a("10.0.0.1:1"));
        assert_eq!(r.label(), "no_rule");
    }
}
