//! Server side: where a Serval flow for a ServiceID goes.
//!
//! [`ServerPolicy::decide`] matches the flow's ServiceID (the full id the client asked for)
//! against the configured service prefixes and the cross-translation families by **longest
//! prefix**, with `serval_stack`'s own service table, the same match the endpoint does when
//! it demultiplexes the flow to a listener. Then:
//!
//! - a service prefix → that service's backend pool (choosing a backend within it is the
//!   load balancer's job, with health state this pure function does not have);
//! - a cross-translation family (`server.cross_translate.tag`, IPv4 or IPv6 layout) → the
//!   legacy address inside the id, if it is a unicast address the allow-list admits;
//! - nothing → refused.

use core::net::{IpAddr, SocketAddr};

use serval_stack::service_table::{Action, ListenerId, Rule, ServiceTable};
use serval_stack::wire::{LegacyAddr, ServiceId, ServicePrefix};

use crate::config::model::{AllowRule, ServerRole};

/// Where a flow goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerDecision {
    /// To a backend of `server.services[service]`.
    Pool {
        /// Index in `server.services`.
        service: usize,
    },
    /// To the legacy address embedded in the id.
    CrossTranslate {
        /// The destination.
        addr: SocketAddr,
    },
}

/// Why a flow was refused. Each variant is a counter (see [`ServerRefusal::label`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerRefusal {
    /// No service or cross-translation family covers the id.
    #[error("no service answers {0}")]
    NoService(ServiceId),
    /// The id is under a cross-translation family prefix but not a valid legacy address
    /// (reserved bytes set).
    #[error("{0} is not a legacy-address ServiceID")]
    NotLegacyAddress(ServiceId),
    /// The embedded address can never be a TCP destination (unspecified, multicast,
    /// broadcast, port 0).
    #[error("embedded destination {0} is not a unicast address and port")]
    BadDestination(SocketAddr),
    /// The allow-list does not admit the destination.
    #[error("cross-translation to {0} is not allowed")]
    NotAllowed(SocketAddr),
}

impl ServerRefusal {
    /// A short, fixed label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoService(_) => "no_service",
            Self::NotLegacyAddress(_) => "not_legacy_address",
            Self::BadDestination(_) => "bad_destination",
            Self::NotAllowed(_) => "not_allowed",
        }
    }
}

#[derive(Clone, Debug)]
struct Cross {
    tag: u32,
    allow: Vec<AllowRule>,
}

/// The server role's decisions, compiled from a valid [`ServerRole`].
#[derive(Debug)]
pub struct ServerPolicy {
    /// DEMUX rules keyed by prefix: listener id `i < services` is service `i`; the ids
    /// after it are the cross-translation families.
    table: ServiceTable,
    services: usize,
    prefixes: Vec<ServicePrefix>,
    cross: Option<Cross>,
}

impl ServerPolicy {
    /// Compiles `role`. Duplicate prefixes (refused by validation) keep the first service.
    pub fn new(role: &ServerRole) -> Self {
        let mut table = ServiceTable::new();
        let mut prefixes = Vec::new();
        let services = role.services.len();
        for (i, svc) in role.services.iter().enumerate() {
            let p = svc.prefix.prefix();
            if table.get(&p).is_none() {
                let _ = table.insert(p, Rule::demux(listener_id(i)));
            }
            prefixes.push(p);
        }
        let cross = role.cross_translate.as_ref().map(|x| {
            for (k, v6) in [false, true].into_iter().enumerate() {
                let p = LegacyAddr::family_prefix(x.tag, v6);
                if table.get(&p).is_none() {
                    let _ = table.insert(p, Rule::demux(listener_id(services + k)));
                }
                prefixes.push(p);
            }
            Cross {
                tag: x.tag,
                allow: x.allow.clone(),
            }
        });
        Self {
            table,
            services,
            prefixes,
            cross,
        }
    }

    /// The prefixes the server role listens on (and registers with routers): each
    /// service's, then the cross-translation families (IPv4, IPv6).
    pub fn listen_prefixes(&self) -> &[ServicePrefix] {
        &self.prefixes
    }

    /// Where a flow for `id` goes.
    pub fn decide(&self, id: &ServiceId) -> Result<ServerDecision, ServerRefusal> {
        let entry = self.table.lookup(id).ok_or(ServerRefusal::NoService(*id))?;
        let Some(Action::Demux(ListenerId(n))) = entry.targets().first().map(|t| *t.action())
        else {
            return Err(ServerRefusal::NoService(*id));
        };
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if n < self.services {
            return Ok(ServerDecision::Pool { service: n });
        }
        let cross = self.cross.as_ref().ok_or(ServerRefusal::NoService(*id))?;
        let legacy = LegacyAddr::from_service_id(id)
            .filter(|l| l.tag == cross.tag)
            .ok_or(ServerRefusal::NotLegacyAddress(*id))?;
        let addr = legacy.addr;
        if !is_unicast(addr.ip()) || addr.port() == 0 {
            return Err(ServerRefusal::BadDestination(addr));
        }
        let allowed = cross
            .allow
            .iter()
            .any(|a| a.destination.matches(addr.ip()) && a.ports.contains(addr.port()));
        if allowed {
            Ok(ServerDecision::CrossTranslate { addr })
        } else {
            Err(ServerRefusal::NotAllowed(addr))
        }
    }
}

fn listener_id(i: usize) -> ListenerId {
    ListenerId(u32::try_from(i).unwrap_or(u32::MAX))
}

fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serval_stack::wire::name;

    use super::*;
    use crate::config::parse;

    const POLICY: &str = r#"
server:
  services:
    - name: example
      prefix: "provider:example.com"
      backends: [{address: "10.0.0.5:80"}]
    - name: api
      prefix: "name:api.example.com"
      backends: [{dns: "api.internal:8080"}]
    - name: numbered
      prefix: "0x0000d9:24"
      backends: [{address: "10.0.0.6:80"}]
  cross_translate:
    tag: 8080
    allow:
      - destination: 10.0.0.0/8
        ports: "80,443"
      - destination: "2001:db8::/32"
"#;

    fn policy() -> ServerPolicy {
        let loaded = parse(POLICY, "test.yaml", &HashMap::<String, String>::new()).unwrap();
        ServerPolicy::new(loaded.config.server.as_ref().unwrap())
    }

    #[test]
    fn decision_table() {
        let p = policy();
        let legacy = |tag, a: &str| LegacyAddr::new(tag, a.parse().unwrap()).to_service_id();
        let sa = |a: &str| a.parse::<SocketAddr>().unwrap();
        let mut odd = *legacy(8080, "10.0.0.5:80").as_bytes();
        odd[20] = 1; // a reserved byte: under the /128 family prefix, not a legacy address
        let odd = ServiceId::from_bytes(odd);
        let rows: Vec<(&str, ServiceId, Result<ServerDecision, ServerRefusal>)> = vec![
            (
                "provider prefix",
                name::service_id_for_name("www.example.com").unwrap(),
                Ok(ServerDecision::Pool { service: 0 }),
            ),
            (
                "exact name wins over its provider (longest prefix)",
                name::service_id_for_name("api.example.com").unwrap(),
                Ok(ServerDecision::Pool { service: 1 }),
            ),
            (
                "24-bit numeric prefix",
                ServiceId::from_u32(0x0000_d903),
                Ok(ServerDecision::Pool { service: 2 }),
            ),
            (
                "cross-translation, allowed",
                legacy(8080, "10.0.0.5:443"),
                Ok(ServerDecision::CrossTranslate {
                    addr: sa("10.0.0.5:443"),
                }),
            ),
            (
                "cross-translation, IPv6, any port",
                legacy(8080, "[2001:db8::9]:22"),
                Ok(ServerDecision::CrossTranslate {
                    addr: sa("[2001:db8::9]:22"),
                }),
            ),
            (
                "cross-translation, port not allowed",
                legacy(8080, "10.0.0.5:22"),
                Err(ServerRefusal::NotAllowed(sa("10.0.0.5:22"))),
            ),
            (
                "cross-translation, address not allowed",
                legacy(8080, "192.168.1.1:80"),
                Err(ServerRefusal::NotAllowed(sa("192.168.1.1:80"))),
            ),
            (
                "cross-translation, unspecified address",
                legacy(8080, "0.0.0.0:80"),
                Err(ServerRefusal::BadDestination(sa("0.0.0.0:80"))),
            ),
            (
                "cross-translation, port 0",
                legacy(8080, "10.0.0.5:0"),
                Err(ServerRefusal::BadDestination(sa("10.0.0.5:0"))),
            ),
            (
                "under the family prefix but reserved bytes set",
                odd,
                Err(ServerRefusal::NotLegacyAddress(odd)),
            ),
            (
                "another tag",
                legacy(7, "10.0.0.5:80"),
                Err(ServerRefusal::NoService(legacy(7, "10.0.0.5:80"))),
            ),
            (
                "unrelated id",
                ServiceId::from_u32(1),
                Err(ServerRefusal::NoService(ServiceId::from_u32(1))),
            ),
        ];
        for (what, id, want) in rows {
            assert_eq!(p.decide(&id), want, "{what}");
        }
    }

    #[test]
    fn listen_prefixes_cover_services_and_families() {
        let p = policy();
        let prefixes = p.listen_prefixes();
        assert_eq!(prefixes.len(), 5);
        assert_eq!(prefixes[3], LegacyAddr::family_prefix(8080, false));
        assert_eq!(prefixes[4], LegacyAddr::family_prefix(8080, true));
    }

    #[test]
    fn labels() {
        assert_eq!(
            ServerRefusal::NoService(ServiceId::DEFAULT).label(),
            "no_service"
        );
    }
}
