//! The Serval translator (library half of the `serval-translator` binary).
//!
//! | module | what |
//! |---|---|
//! | [`config`] | policy files: YAML → typed, validated model; env overrides; located errors |
//! | [`policy`] | pure mapping decisions over a valid policy (client: connection → ServiceID; server: ServiceID → backend pool or cross-translated address) |
//! | [`relay`] | bidirectional copy with half-close, idle timeouts, bounded buffers, accounting; connection limits |
//! | [`admin`], [`metrics`] | the admin HTTP API (metrics, health, readiness, services, flows, reload, drain); Prometheus metrics |
//! | [`run`] | `serval-translator run`: every role of a policy on one Serval endpoint; reload (SIGHUP) and drain (SIGTERM) |
//! | [`client`] | client role: TCP listeners (explicit, REDIRECT, TPROXY) → Serval flows |
//! | [`client_address`] | the legacy client's address, carried client → server translator in a PROXY v2 preamble |
//! | [`router`] | service-router role: registrations, static routes, DELAY rules and verdicts |
//! | [`report`], [`logging`] | what `check-config` and `run` print; log setup |
//! | [`ids`], [`demo`] | the `service-id` tool; the demo (a whole topology on loopback, self-checking) |

#![cfg_attr(not(test), warn(missing_docs))]

pub mod admin;
pub mod client;
pub mod client_address;
pub mod clock;
pub mod config;
pub mod demo;
pub mod dns;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod relay;
pub mod report;
pub mod router;
pub mod run;
pub mod server;
pub mod tls;
