//! The service-router role: the endpoint forwards the first packet of every new flow by
//! longest-prefix match in its service table, whose rules come from three places:
//!
//! - **registrations**: server-side translators (and any Serval host holding a key) send
//!   authenticated REGISTER messages; the registry in the stack's control plane turns each
//!   into a lease and a FORWARD rule (priority 1), and removes it on UNREGISTER or expiry;
//! - **static routes** (`router.routes`): FORWARD rules with the configured priority and
//!   weight, installed at start and reconciled on every reload;
//! - **DELAY prefixes** (`router.delay`): DELAY rules at priority 0, below every registered
//!   instance, so a SYN for such a prefix waits in the bounded DELAY queue exactly while no
//!   instance is registered (scale from zero), until [`Router::verdict`] releases or drops
//!   it, or it ages out (`router.delay_queue.max_age`).
//!
//! The stack does the forwarding; this module turns the policy into the stack's
//! [`RegistryConfig`] / [`DelayConfig`] and table rules, keeps the rules it installed so a
//! reload can replace exactly those, reports the control plane's events in the log, and
//! exposes the DELAY verdict for the admin API.
//!
//! What a reload cannot change: the registration keys, lease bounds and limits and the
//! DELAY queue bounds live in the stack's registry, which is configured once when the role
//! is enabled. [`restart_needed`] names those fields so the reload can say so.

use core::net::SocketAddr;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serval_stack::control::{
    ControlEvent, DelayConfig, DelayEvent, LeaseEvent, RegistrantEvent, RegistryConfig,
    RegistryStats, SharedKey,
};
use serval_stack::driver::Endpoint;
use serval_stack::service_table::Rule;
use serval_stack::wire::ServicePrefix;

use crate::config::Config;
use crate::config::model::RouterRole;

pub mod state;

pub use state::{Saver, StateFile};

/// Priority of the DELAY rules: below registered instances (priority 1), so a prefix's
/// SYNs only wait while nothing is registered for it.
pub const DELAY_PRIORITY: u32 = 0;

/// Why the router role could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// A registry or DELAY-queue setting the stack refuses (validation should have caught
    /// it; named by its policy field).
    #[error("{field}: {message}")]
    Setting {
        /// The policy field.
        field: &'static str,
        /// The stack's complaint.
        message: String,
    },
    /// The endpoint refused the role (already on, control ServiceID taken).
    #[error("cannot enable the router role: {0}")]
    Enable(io::Error),
}

/// A rule this role installed in the endpoint's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Installed {
    prefix: ServicePrefix,
    rule: Rule,
}

/// Counters of the router role (the registry's own are in [`RouterStats::registry`]).
#[non_exhaustive]
#[derive(Default, Clone, Copy, Debug)]
pub struct RouterStats {
    /// The registry's counters: leases, registrations, refusals by reason.
    pub registry: Option<RegistryStats>,
    /// SYNs waiting in the DELAY queue now.
    pub delayed: u64,
    /// Static routes and DELAY rules installed from the policy.
    pub static_rules: u64,
    /// Static rules the table refused (a registration already holds the same target, or
    /// the table is full); logged when it happens.
    pub static_rules_refused: u64,
}

/// The router role on an endpoint. Cheap to clone; clones share the installed rules.
#[derive(Clone, Debug)]
pub struct Router {
    endpoint: Endpoint,
    installed: Arc<std::sync::Mutex<Vec<Installed>>>,
    refused: Arc<AtomicU64>,
    state: Option<StateFile>,
}

/// The stack's registry configuration for `role`, with the keys read by preflight.
pub fn registry_config(
    role: &RouterRole,
    keys: &[(u32, SharedKey)],
) -> Result<RegistryConfig, RouterError> {
    let setting = |field: &'static str| {
        move |e: serval_stack::control::ConfigError| RouterError::Setting {
            field,
            message: e.to_string(),
        }
    };
    let mut config = RegistryConfig::new();
    for (id, key) in keys {
        config = config
            .with_key(*id, key.clone())
            .map_err(setting("router.keys"))?;
    }
    config
        .with_lease_bounds(role.lease.min.0, role.lease.max.0)
        .and_then(|c| c.with_default_lease(role.lease.default.0))
        .map_err(setting("router.lease"))?
        .with_max_leases(to_usize(role.max_leases))
        .map_err(setting("router.max_leases"))?
        .with_max_leases_per_source(to_usize(role.max_leases_per_source))
        .map_err(setting("router.max_leases_per_source"))
}

/// The stack's DELAY-queue configuration for `role`.
pub fn delay_config(role: &RouterRole) -> Result<DelayConfig, RouterError> {
    let q = &role.delay_queue;
    DelayConfig::new()
        .with_max_packets(to_usize(q.max_packets))
        .and_then(|c| c.with_max_per_service(to_usize(q.max_per_service)))
        .and_then(|c| c.with_max_age(q.max_age.0))
        .map_err(|e| RouterError::Setting {
            field: "router.delay_queue",
            message: e.to_string(),
        })
}

fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The rules `role` asks for: static routes, then DELAY prefixes.
fn wanted(role: &RouterRole) -> Vec<Installed> {
    let routes = role.routes.iter().map(|r| Installed {
        prefix: r.prefix.prefix(),
        rule: Rule::forward(r.forward)
            .with_priority(r.priority)
            .with_weight(r.weight),
    });
    let delays = role.delay.iter().map(|d| Installed {
        prefix: d.prefix.prefix(),
        rule: Rule::delay().with_priority(DELAY_PRIORITY),
    });
    routes.chain(delays).collect()
}

/// The router fields that differ between `old` and `new` and only take effect at a restart
/// (they configure the stack's registry and DELAY queue once).
pub fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let (Some(a), Some(b)) = (&old.router, &new.router) else {
        return Vec::new();
    };
    [
        (a.keys != b.keys, "router.keys"),
        (a.lease != b.lease, "router.lease"),
        (a.max_leases != b.max_leases, "router.max_leases"),
        (
            a.max_leases_per_source != b.max_leases_per_source,
            "router.max_leases_per_source",
        ),
        (a.delay_queue != b.delay_queue, "router.delay_queue"),
        (a.state_file != b.state_file, "router.state_file"),
    ]
    .into_iter()
    .filter_map(|(changed, field)| changed.then_some(field))
    .collect()
}

impl Router {
    /// Turns the router role on for `endpoint` (which must have been bound with
    /// `forwarding` on) and installs the static rules of `role`. `keys` are the
    /// registration keys preflight read from `router.keys`; `state` the resolved
    /// `router.state_file`, whose registrations are taken over before anything is answered.
    pub fn enable(
        endpoint: &Endpoint,
        role: &RouterRole,
        keys: &[(u32, SharedKey)],
        state: Option<PathBuf>,
    ) -> Result<Self, RouterError> {
        let registry = registry_config(role, keys)?;
        let delay = delay_config(role)?;
        endpoint
            .enable_router(registry, delay)
            .map_err(RouterError::Enable)?;
        let state = state.map(StateFile::new);
        if let Some(file) = &state {
            file.restore(endpoint);
        }
        let router = Self {
            endpoint: endpoint.clone(),
            installed: Arc::default(),
            refused: Arc::default(),
            state,
        };
        router.apply(role);
        Ok(router)
    }

    /// The state file, when `router.state_file` is set.
    pub fn state_file(&self) -> Option<&StateFile> {
        self.state.as_ref()
    }

    /// Replaces the static routes and DELAY rules installed from the previous policy by
    /// those of `role`: rules in both stay (with their counters; priority and weight are
    /// updated in place), the others are removed or added. Registered leases are not
    /// touched. A rule the table refuses is logged, counted and skipped.
    pub fn apply(&self, role: &RouterRole) {
        let want = wanted(role);
        let mut installed = self
            .installed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (kept, refused) = self.endpoint.with_table(|table| {
            let mut kept = Vec::with_capacity(want.len());
            let mut refused = Vec::new();
            for old in installed.iter() {
                if !want
                    .iter()
                    .any(|w| w.prefix == old.prefix && w.rule.action == old.rule.action)
                {
                    // Already gone only if something else removed it; nothing to undo.
                    let _ = table.remove(&old.prefix, &old.rule.action);
                }
            }
            for w in &want {
                let had = installed
                    .iter()
                    .find(|o| o.prefix == w.prefix && o.rule.action == w.rule.action);
                let r = match had {
                    Some(o) if o.rule == w.rule => Ok(()),
                    Some(_) => table
                        .modify(&w.prefix, &w.rule.action, w.rule)
                        .or_else(|_| table.insert(w.prefix, w.rule)),
                    None => table.insert(w.prefix, w.rule),
                };
                match r {
                    Ok(()) => kept.push(*w),
                    Err(e) => refused.push((*w, e)),
                }
            }
            (kept, refused)
        });
        for (w, e) in &refused {
            tracing::warn!(
                prefix = %w.prefix,
                action = ?w.rule.action,
                error = %e,
                "router: static rule not installed"
            );
        }
        self.refused
            .fetch_add(refused.len() as u64, Ordering::Relaxed);
        *installed = kept;
    }

    /// Releases (`release`) or drops every SYN parked by a DELAY rule for a ServiceID
    /// under `prefix`; a released SYN is resolved again at once (to an instance registered
    /// meanwhile, or back into DELAY). Returns how many were waiting. The admin API's
    /// scale-from-zero hook.
    pub fn verdict(&self, prefix: &ServicePrefix, release: bool) -> usize {
        let n = self.endpoint.delay_verdict(prefix, release);
        tracing::info!(
            prefix = %prefix,
            verdict = if release { "release" } else { "drop" },
            syns = n,
            "router: DELAY verdict"
        );
        n
    }

    /// The instances registered for exactly `prefix` now.
    pub fn instances(&self, prefix: &ServicePrefix) -> Vec<SocketAddr> {
        self.endpoint.with_control(|c| {
            c.registry().map_or_else(Vec::new, |r| {
                r.leases()
                    .filter(|l| l.prefix == *prefix)
                    .map(|l| l.instance)
                    .collect()
            })
        })
    }

    /// The role's counters.
    pub fn stats(&self) -> RouterStats {
        let (registry, delayed) = self.endpoint.with_control(|c| {
            (
                c.registry().map(serval_stack::control::Registry::stats),
                c.delay().map_or(0, |d| d.len() as u64),
            )
        });
        RouterStats {
            registry,
            delayed,
            static_rules: self.installed.lock().map_or(0, |i| i.len() as u64),
            static_rules_refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// One control-plane event (of any role on the endpoint) in the log. Lease and
/// registration changes are INFO (they change where flows go); refusals and DELAY parking
/// are DEBUG (counted by the stack; a flood must not flood the log).
pub fn log_event(e: &ControlEvent) {
    match e {
        ControlEvent::Lease(LeaseEvent::Added(l)) => tracing::info!(
            prefix = %l.prefix, instance = %l.instance, key_id = l.key_id,
            "router: instance registered"
        ),
        ControlEvent::Lease(LeaseEvent::Withdrawn(l)) => tracing::info!(
            prefix = %l.prefix, instance = %l.instance,
            "router: instance withdrew"
        ),
        ControlEvent::Lease(LeaseEvent::Expired(l)) => tracing::warn!(
            prefix = %l.prefix, instance = %l.instance,
            "router: lease expired (instance stopped refreshing)"
        ),
        ControlEvent::Lease(other) => tracing::debug!(event = ?other, "router: lease"),
        ControlEvent::Refused(why) => {
            tracing::debug!(reason = %why, "router: registration refused");
        }
        ControlEvent::Registrant(RegistrantEvent::Registered { router, prefix, .. }) => {
            tracing::info!(router = %router, prefix = %prefix, "registered with router");
        }
        ControlEvent::Registrant(other) => tracing::debug!(event = ?other, "registrant"),
        ControlEvent::Delay(DelayEvent::Expired { service, .. }) => {
            tracing::info!(service = %service, "router: delayed SYN aged out");
        }
        ControlEvent::Delay(other) => tracing::debug!(event = ?other, "router: DELAY"),
        ControlEvent::DelayRefused(why) => {
            tracing::debug!(reason = ?why, "router: SYN not delayed");
        }
        other => tracing::debug!(event = ?other, "control plane"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serval_stack::sal::EndpointConfig;
    use serval_stack::service_table::Action;

    use super::*;

    fn role(yaml: &str) -> RouterRole {
        crate::config::parse(yaml, "t.yaml", &HashMap::<String, String>::new())
            .unwrap()
            .config
            .router
            .unwrap()
    }

    fn rules(endpoint: &Endpoint) -> Vec<(String, Action, u32, u32)> {
        let mut v = endpoint.with_table(|t| {
            t.iter()
                .flat_map(|e| {
                    e.targets()
                        .iter()
                        .map(|t| {
                            (
                                e.prefix().to_string(),
                                *t.action(),
                                t.priority(),
                                t.weight(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        });
        v.retain(|(_, a, _, _)| matches!(a, Action::Forward(_) | Action::Delay));
        v.sort_by_key(|r| format!("{r:?}"));
        v
    }

    #[tokio::test]
    async fn static_rules_follow_the_policy_across_reloads() {
        let mut config = EndpointConfig::default();
        config.forwarding = true;
        config.local_addr = "127.0.0.1:0".parse().unwrap();
        let endpoint = Endpoint::bind("127.0.0.1:0".parse().unwrap(), config).unwrap();
        let first = role(
            "router:\n  routes:\n    - {prefix: \"0x01:8\", forward: 192.0.2.1:1, weight: 3}\n    - {prefix: \"0x02:8\", forward: 192.0.2.2:1}\n  delay: [{prefix: \"0x03:8\"}]\n",
        );
        let router = Router::enable(&endpoint, &first, &[], None).unwrap();
        let a1: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let a2: SocketAddr = "192.0.2.2:1".parse().unwrap();
        let a3: SocketAddr = "192.0.2.3:1".parse().unwrap();
        assert_eq!(
            rules(&endpoint),
            vec![
                ("0x01:8".into(), Action::Forward(a1), 1, 3),
                ("0x02:8".into(), Action::Forward(a2), 1, 1),
                ("0x03:8".into(), Action::Delay, DELAY_PRIORITY, 1),
            ]
        );
        assert_eq!(router.stats().static_rules, 3);

        // Weight changed in place, one route gone, one added, DELAY gone.
        router.apply(&role(
            "router:\n  routes:\n    - {prefix: \"0x01:8\", forward: 192.0.2.1:1, weight: 5, priority: 2}\n    - {prefix: \"0x04:8\", forward: 192.0.2.3:1}\n",
        ));
        assert_eq!(
            rules(&endpoint),
            vec![
                ("0x01:8".into(), Action::Forward(a1), 2, 5),
                ("0x04:8".into(), Action::Forward(a3), 1, 1),
            ]
        );
        assert_eq!(router.verdict(&"0x03:8".parse().unwrap(), true), 0);
        assert_eq!(router.stats().static_rules_refused, 0);
    }

    #[test]
    fn settings_only_a_restart_applies_are_named() {
        let parse = |y: &str| {
            crate::config::parse(y, "t.yaml", &HashMap::<String, String>::new())
                .unwrap()
                .config
        };
        let a = parse("router:\n  routes: [{prefix: default, forward: 192.0.2.1:1}]\n");
        let b = parse(
            "router:\n  routes: [{prefix: default, forward: 192.0.2.9:1}]\n  lease: {min: 1s, max: 1m, default: 30s}\n  delay_queue: {max_packets: 8}\n",
        );
        assert_eq!(
            restart_needed(&a, &b),
            vec!["router.lease", "router.delay_queue"]
        );
        assert!(restart_needed(&a, &a).is_empty());
    }

    #[test]
    fn registry_and_delay_settings_come_from_the_policy() {
        let mut r = role("router:\n  routes: [{prefix: default, forward: 192.0.2.1:1}]\n");
        // Validation refuses this; the conversion names the field anyway.
        r.delay_queue.max_packets = 0;
        let e = delay_config(&r).unwrap_err();
        assert!(e.to_string().starts_with("router.delay_queue"), "{e}");
        assert!(registry_config(&r, &[]).is_ok());
    }
}
