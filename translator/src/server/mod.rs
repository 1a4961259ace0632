//! The server-side translator: Serval flows in, legacy TCP out.
//!
//! [`serve`] listens on every prefix of the server role (`ServerPolicy::listen_prefixes`:
//! each service's, then the cross-translation families; with the registrant role on, the
//! stack registers each with the routers and withdraws it when its listener goes) and serves
//! each accepted flow (`flow.rs`):
//!
//! 1. **decide**: the flow's ServiceID → a service's backend pool, or (cross-translation,
//!    when the allow-list admits it) the legacy address inside the id; anything else is
//!    reset and counted by reason;
//! 2. **admit**: the per-service `max_connections` and the process-wide
//!    `relay.max_connections` (refused flows are reset, never queued);
//! 3. **connect**: the pool's choice (`pool.rs`, `balance.rs`: round robin, smooth weighted,
//!    least connections, weighted rendezvous hash of the client translator's address), with
//!    `connect_timeout` per attempt and up to `retries` more attempts, each on a backend this
//!    flow has not tried; failures feed passive outlier ejection (`health.rs`), active
//!    health checks run in the background, and when no backend is healthy all are used
//!    (panic mode);
//! 4. **PROXY header** (v1 or v2) when the service asks for it (`proxy_header.rs`: it
//!    carries the Serval peer's address, not yet the legacy client's);
//! 5. **relay** (`crate::relay`) with half-close, idle and half-close timeouts; an unclean
//!    end resets both sides; one access-log line per flow.
//!
//! # Reload
//!
//! A new policy on the `config` channel applies to flows accepted after it; flows in
//! progress keep their backend and settings. Listeners follow the new prefixes (kept,
//! opened or dropped: a dropped listener withdraws its registration). A service whose
//! backends, balancing, TTL bounds, health checks and outlier settings are unchanged keeps
//! its pool (health, ejections, connection counts, DNS answers); its connection limit is
//! kept when `max_connections` is unchanged. `relay.max_connections` is fixed at start.
//!
//! # Drain
//!
//! When `drain` turns true (or its sender goes away): admission stops, every listener is
//! dropped (registrations withdrawn, queued handshakes reset), flows in progress get
//! `drain.grace_period` to finish, then the rest are stopped (both sides reset, logged
//! `stopped`) and [`serve`] returns.
//!
//! # Counters
//!
//! [`ServerCounters`] (pass your own through [`ServeOptions`] to read them while serving).

mod balance;
mod flow;
mod health;
mod pool;
pub(crate) mod proxy_header;
pub(crate) mod resolve;
mod stats;

use core::pin::Pin;
use core::task::{Context, Poll};
use core::time::Duration;
use std::io;
use std::sync::Arc;

use serval_stack::driver::{Endpoint, ServalListener, ServalStream};
use serval_stack::wire::ServicePrefix;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use pool::BackendView;
pub use proxy_header::PP2_TYPE_SERVAL_SERVICE_ID;
pub use resolve::{
    DnsResolver, MAX_ADDRESSES_PER_NAME, Resolve, ResolveError, ResolveFuture, Resolved,
};
pub use stats::{ServerCounters, ServerStats};

pub(crate) use self::balance::hash64;
use self::flow::{FlowContext, serve_flow};
use self::pool::{Pool, same_pool_config};
use crate::config::Config;
use crate::config::model::{ProxyProtocol, ServerRole, Service};
use crate::policy::{ServerPolicy, ServerRefusal};
use crate::relay::{Gate, LimitRefusal, Limiter, RelayConfig};

/// After the grace period, how long stopped flows get to reset their sides and log.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Why a flow was refused before any backend was tried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RefusalReason {
    #[error(transparent)]
    Policy(ServerRefusal),
    #[error(transparent)]
    Limit(LimitRefusal),
}

impl RefusalReason {
    fn label(&self) -> &'static str {
        match self {
            Self::Policy(p) => p.label(),
            Self::Limit(l) => l.label(),
        }
    }
}

/// Options of [`serve_with`]; [`serve`] uses the defaults.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    limiter: Option<Limiter>,
    resolver: Option<Arc<dyn Resolve>>,
    counters: Option<Arc<ServerCounters>>,
    tls: Option<crate::tls::ServerAcceptor>,
}

impl ServeOptions {
    /// The defaults: an own limiter of `relay.max_connections`, the system's DNS resolver
    /// (built only when a service has DNS backends), fresh counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Shares `limiter` (the process-wide connection limit and drain switch) with other
    /// roles. The server role's drain closes it for all of them.
    #[must_use]
    pub fn limiter(mut self, limiter: Limiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Resolves DNS backends with `resolver` instead of the system's.
    #[must_use]
    pub fn resolver(mut self, resolver: Arc<dyn Resolve>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Counts into `counters` (read them with [`ServerCounters::snapshot`] meanwhile).
    #[must_use]
    pub fn counters(mut self, counters: Arc<ServerCounters>) -> Self {
        self.counters = Some(counters);
        self
    }

    /// Runs mutual TLS on every accepted flow (the policy's `tls:`): a client translator
    /// without TLS, or with a certificate not under the CA, is refused.
    #[must_use]
    pub fn tls(mut self, acceptor: crate::tls::ServerAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }
}

/// Serves the server role of the policies on `config` on `endpoint` until `drain` turns
/// true; see the module docs. Errors: a prefix of the first policy cannot be listened on,
/// the DNS resolver a DNS backend needs cannot be built, or the endpoint stopped.
pub async fn serve(
    endpoint: Endpoint,
    config: watch::Receiver<Arc<Config>>,
    drain: watch::Receiver<bool>,
) -> io::Result<()> {
    serve_with(endpoint, config, drain, ServeOptions::default()).await
}

/// [`serve`] with a shared limiter, an injected resolver or shared counters.
pub async fn serve_with(
    endpoint: Endpoint,
    mut config: watch::Receiver<Arc<Config>>,
    mut drain: watch::Receiver<bool>,
    options: ServeOptions,
) -> io::Result<()> {
    let first = config.borrow_and_update().clone();
    let counters = options.counters.unwrap_or_default();
    let limiter = options
        .limiter
        .unwrap_or_else(|| Limiter::new(first.relay.max_connections));
    let mut server = Server {
        endpoint,
        resolver: options.resolver,
        counters: counters.clone(),
        limiter: limiter.clone(),
        generation: None,
        listeners: Vec::new(),
        cursor: 0,
        max_connections: first.relay.max_connections,
    };
    server.apply(&first, true)?;

    // The drain's hard stop. Should `serve` itself be cancelled, dropping `flows` aborts the
    // flow tasks, and any still running see the stop when this sender goes.
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Arc::new(FlowContext {
        limiter: limiter.clone(),
        counters: counters.clone(),
        stop: stop_rx,
        tls: options.tls,
    });
    let mut flows: JoinSet<()> = JoinSet::new();
    let mut config_open = true;

    loop {
        tokio::select! {
            biased;
            () = drained(&mut drain) => break,
            changed = config.changed(), if config_open => match changed {
                Ok(()) => {
                    let next = config.borrow_and_update().clone();
                    if let Err(e) = server.apply(&next, false) {
                        tracing::error!(error = %e, "server role: reloaded policy not fully applied");
                    }
                }
                // Nobody can send a new policy: keep serving this one.
                Err(_) => config_open = false,
            },
            accepted = Accept { server: &mut server } => match accepted {
                Ok(stream) => {
                    ServerCounters::bump(&counters.accepted);
                    if let Some(generation) = server.generation.clone() {
                        flows.spawn(serve_flow(stream, generation, ctx.clone()));
                    }
                    // Reap here too: under a steady stream of accepts the branch below
                    // may rarely be chosen, and finished tasks would pile up.
                    while let Some(joined) = flows.try_join_next() {
                        reap(joined);
                    }
                }
                Err(e) => {
                    // The endpoint task is gone: nothing more will arrive.
                    tracing::error!(error = %e, "server role: accepting Serval flows failed; stopping");
                    flows.shutdown().await;
                    return Err(e);
                }
            },
            Some(joined) = flows.join_next(), if !flows.is_empty() => reap(joined),
        }
    }

    // Drain: admit nothing, withdraw every prefix, let flows finish within the grace period.
    limiter.drain();
    let grace = server
        .generation
        .as_ref()
        .map_or(Duration::ZERO, |g| g.grace);
    let n = server.listeners.len();
    server.listeners.clear();
    tracing::info!(
        listeners = n,
        flows = flows.len(),
        grace = ?grace,
        "server role draining: registrations withdrawn, waiting for flows"
    );
    // `sleep` saturates a grace period past the clock's range instead of panicking.
    let grace_over = tokio::time::sleep(grace);
    tokio::pin!(grace_over);
    while !flows.is_empty() {
        tokio::select! {
            Some(joined) = flows.join_next() => reap(joined),
            () = &mut grace_over => break,
        }
    }
    if !flows.is_empty() {
        tracing::info!(
            flows = flows.len(),
            "server role: grace period over, stopping the remaining flows"
        );
        stop_tx.send_replace(true);
        let stop_over = tokio::time::sleep(STOP_WAIT);
        tokio::pin!(stop_over);
        while !flows.is_empty() {
            tokio::select! {
                Some(joined) = flows.join_next() => reap(joined),
                () = &mut stop_over => {
                    flows.shutdown().await;
                    break;
                }
            }
        }
    }
    tracing::info!("server role drained");
    Ok(())
}

/// Resolves when `drain` turns true or its sender is gone (nobody can stop us otherwise).
/// Returns nothing: the receiver's guard must not live across the caller's awaits.
async fn drained(drain: &mut watch::Receiver<bool>) {
    let _ = drain.wait_for(|d| *d).await;
}

fn reap(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        tracing::error!(error = %e, "server role: a flow task panicked");
    }
}

/// The settings flows accepted now are served with.
#[derive(Debug)]
pub(crate) struct Generation {
    policy: ServerPolicy,
    /// Index = the policy's service index.
    services: Vec<ServiceRuntime>,
    cross: Option<CrossRuntime>,
    relay: RelayConfig,
    grace: Duration,
    /// `server.trust_client_address`.
    trust_client_address: bool,
}

#[derive(Debug)]
struct ServiceRuntime {
    config: Service,
    pool: Arc<Pool>,
    gate: Gate,
}

#[derive(Debug)]
struct CrossRuntime {
    connect_timeout: Duration,
    proxy_protocol: ProxyProtocol,
    gate: Gate,
}

struct Server {
    endpoint: Endpoint,
    resolver: Option<Arc<dyn Resolve>>,
    counters: Arc<ServerCounters>,
    limiter: Limiter,
    generation: Option<Arc<Generation>>,
    listeners: Vec<(ServicePrefix, ServalListener)>,
    /// Where the next accept poll starts (fairness between listeners).
    cursor: usize,
    max_connections: u32,
}

impl Server {
    /// Makes `config` the current policy: new generation, listeners opened and closed.
    /// On the first policy (`initial`) any failure is an error; on a reload what can be
    /// applied is, and the failures are reported.
    fn apply(&mut self, config: &Config, initial: bool) -> io::Result<()> {
        let empty = ServerRole {
            services: Vec::new(),
            cross_translate: None,
            trust_client_address: true,
        };
        let role = config.server.as_ref().unwrap_or(&empty);
        if config.server.is_none() {
            tracing::warn!("the policy has no server role: not accepting Serval flows");
        }
        if config.relay.max_connections != self.max_connections && !initial {
            tracing::warn!(
                running = self.max_connections,
                configured = config.relay.max_connections,
                "relay.max_connections changes take effect at restart"
            );
        }

        let mut problems: Vec<String> = Vec::new();
        if self.resolver.is_none()
            && role
                .services
                .iter()
                .any(|s| s.backends.iter().any(|b| b.dns.is_some()))
        {
            match DnsResolver::from_system() {
                Ok(r) => self.resolver = Some(Arc::new(r)),
                Err(e) => {
                    if initial {
                        return Err(e);
                    }
                    problems.push(e.to_string());
                }
            }
        }

        let previous = self.generation.as_deref();
        let services = role
            .services
            .iter()
            .map(|svc| {
                let old =
                    previous.and_then(|g| g.services.iter().find(|o| o.config.name == svc.name));
                let pool = match old {
                    Some(o) if same_pool_config(&o.config, svc) => o.pool.clone(),
                    _ => Arc::new(Pool::new(
                        svc,
                        self.resolver.as_ref(),
                        self.counters.clone(),
                    )),
                };
                let gate = match old {
                    Some(o) if o.config.max_connections == svc.max_connections => o.gate.clone(),
                    _ => self.limiter.gate(&svc.name, svc.max_connections),
                };
                ServiceRuntime {
                    config: svc.clone(),
                    pool,
                    gate,
                }
            })
            .collect();
        let cross = role.cross_translate.as_ref().map(|x| CrossRuntime {
            connect_timeout: x.connect_timeout.0,
            proxy_protocol: x.proxy_protocol,
            gate: previous.and_then(|g| g.cross.as_ref()).map_or_else(
                || self.limiter.gate("cross_translate", None),
                |c| c.gate.clone(),
            ),
        });
        let policy = ServerPolicy::new(role);
        let mut wanted: Vec<ServicePrefix> = Vec::new();
        for p in policy.listen_prefixes() {
            if !wanted.contains(p) {
                wanted.push(*p);
            }
        }
        let generation = Arc::new(Generation {
            policy,
            services,
            cross,
            relay: relay_config(config),
            grace: config.drain.grace_period.0,
            trust_client_address: role.trust_client_address,
        });

        // Listeners: drop the unwanted (withdrawing them), keep the rest, open the new.
        let before = self.listeners.len();
        self.listeners.retain(|(p, _)| wanted.contains(p));
        let closed = before - self.listeners.len();
        let mut opened = 0;
        for p in &wanted {
            if self.listeners.iter().any(|(q, _)| q == p) {
                continue;
            }
            match self.endpoint.listen(*p) {
                Ok(l) => {
                    self.listeners.push((*p, l));
                    opened += 1;
                }
                Err(e) => {
                    let msg = format!("cannot listen on {p}: {e}");
                    if initial {
                        return Err(io::Error::new(e.kind(), msg));
                    }
                    problems.push(msg);
                }
            }
        }
        for (name, svc) in role.services.iter().map(|s| (&s.name, s)) {
            tracing::info!(service = %name, prefix = %svc.prefix, backends = svc.backends.len(), balance = ?svc.balance, "server role: service");
        }
        tracing::info!(
            listening = self.listeners.len(),
            opened,
            closed,
            "server role: policy applied"
        );
        self.generation = Some(generation);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(io::Error::other(problems.join("; ")))
        }
    }
}

/// The relay settings of `config`.
fn relay_config(config: &Config) -> RelayConfig {
    RelayConfig {
        idle_timeout: config.relay.idle_timeout.non_zero(),
        half_close_timeout: config.relay.half_close_timeout.non_zero(),
        buffer_size: usize::try_from(config.relay.buffer_size.0)
            .unwrap_or(usize::MAX)
            .max(1),
    }
}

/// Accepts the next flow from any listener, starting after the last one served.
struct Accept<'a> {
    server: &'a mut Server,
}

impl Future for Accept<'_> {
    type Output = io::Result<ServalStream>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let server = &mut *self.get_mut().server;
        let n = server.listeners.len();
        for k in 0..n {
            let i = (server.cursor + k) % n;
            if let Poll::Ready(r) = server.listeners[i].1.poll_accept(cx) {
                server.cursor = i + 1;
                return Poll::Ready(r);
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests;
