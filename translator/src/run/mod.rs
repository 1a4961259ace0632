//! `serval-translator run`: the roles a policy turns on, on one Serval endpoint, with
//! reload and drain.
//!
//! # Start ([`Translator::start`])
//!
//! 1. One Serval [`Endpoint`] on `serval.bind` (UDP), configured from `serval:`
//!    ([`endpoint::endpoint_config`]); forwarding is on when the router role is.
//! 2. **router** ([`crate::router`]): registrations, static routes, DELAY rules.
//! 3. **server**, registering with `serval.routers` (authenticated with `serval.key`):
//!    the registrant is enabled *before* the server role listens, because the stack only
//!    registers prefixes listened on after it.
//! 4. **client**: a default FORWARD rule (priority 0) to each of `serval.routers`, so new
//!    flows resolve through them; services listened on in this process are found first
//!    (a local DEMUX rule is a longer, higher-priority match). Then the DNS responder
//!    (when `client.dns` is set) and the TCP listeners.
//!
//! Everything is logged once at INFO: roles, the Serval address, every listener (each
//! role logs its own).
//!
//! # Reload ([`Translator::reload`], SIGHUP)
//!
//! The policy is read and validated again; any problem is logged (file:line:column: field)
//! and the running policy stays. A valid policy is published on a `watch` channel of
//! `Arc<Config>`: connections and flows in progress keep the settings they started with,
//! new ones use the new policy. Client listeners are opened and closed as the policy says
//! (bound first, so a reload that cannot bind changes nothing), the router's static rules
//! and the client's default routes are replaced. A reload may not add or remove a role or
//! the DNS responder (refused: restart instead); settings that configure the stack once
//! (`serval.bind`, keys, lease bounds, ...) are reported as needing a restart and keep
//! their running value.
//!
//! # Drain ([`Translator::drain`], SIGTERM / SIGINT)
//!
//! Listeners close and admission stops, the server role withdraws its registrations (the
//! routers stop sending new flows at once, not at lease expiry), connections in progress
//! run on for up to `drain.grace_period`; then the rest are reset (both sides, logged as
//! `stopped`) and the process exits 0. A second signal during the drain ends it at once.

pub mod endpoint;
mod follow;

use core::net::SocketAddr;
use core::time::Duration;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serval_stack::control::ControlEvent;
use serval_stack::driver::Endpoint;
use serval_stack::service_table::{Action, Rule};
use serval_stack::wire::ServicePrefix;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminContext, AdminServer};
use crate::client::{ClientRole, ClientStats, Names, ReloadSummary};
use crate::config::{self, Config, ConfigError, Env, Loaded, Secrets};
use crate::dns::{DnsCounters, DnsOptions, DnsStats};
use crate::policy::ServerPolicy;
use crate::relay::Limiter;
use crate::router::{self, Router, RouterError, Saver};
use crate::server::{ServeOptions, ServerCounters, ServerStats};
use crate::{dns, server};

/// How often the control plane's events are collected for the log. The stack keeps up to
/// `serval_stack::control::plane::MAX_EVENTS` between collections (older ones are counted
/// and dropped), far more than a second's worth.
const EVENT_POLL: Duration = Duration::from_secs(1);

/// After the grace period, how long relays stopped by the drain get to reset their sides
/// and write their access-log lines.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// How long the endpoint gets, at the very end, to send what closing flows still owe
/// (FINs, RSTs, UNREGISTERs, the last ACKs) before the process exits. A cleanly closed
/// flow lingers 3 RTOs to re-acknowledge a repeated FIN; a second covers that on any
/// ordinary path without holding up a shutdown.
const LINGER: Duration = Duration::from_secs(1);

/// Priority of the default routes to `serval.routers`: below anything else on the
/// default prefix.
const DEFAULT_ROUTE_PRIORITY: u32 = 0;

/// Why the translator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The policy's Serval endpoint could not be bound or configured.
    #[error("serval endpoint on {addr}: {source}")]
    Endpoint {
        /// `serval.bind`.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The router role could not start.
    #[error("router role: {0}")]
    Router(#[from] RouterError),
    /// The server role could not register with the routers.
    #[error("server role: {0}")]
    Registrant(io::Error),
    /// A default route to a router could not be installed.
    #[error("client role: default route to {router}: {message}")]
    Route {
        /// The router.
        router: SocketAddr,
        /// Why.
        message: String,
    },
    /// A client listener could not be bound.
    #[error("{0}")]
    Client(io::Error),
    /// The admin API could not listen on `admin.listen`.
    #[error("admin API on {addr}: {source}")]
    Admin {
        /// `admin.listen`.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

/// Why a reload was refused (the running policy stays).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The policy is invalid.
    #[error("{0}")]
    Config(ConfigError),
    /// The reload adds or removes a role or the DNS responder.
    #[error("the policy turns on {new} instead of {old}; roles can only change with a restart")]
    Roles {
        /// The running roles.
        old: String,
        /// The policy's roles.
        new: String,
    },
    /// A new client listener could not be bound.
    #[error("{0}")]
    Bind(io::Error),
}

impl ReloadError {
    /// The error for an operator: with a policy error, every problem with its offending
    /// line.
    pub fn render(&self) -> String {
        match self {
            Self::Config(e) => e.render(),
            other => other.to_string(),
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadReport {
    /// Client listeners opened and closed.
    pub client: ReloadSummary,
    /// Changed settings that keep their running value until a restart.
    pub restart_needed: Vec<&'static str>,
}

/// What a drain did.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct DrainReport {
    /// Every connection finished within the grace period.
    pub clean: bool,
    /// The client role's counters at the end.
    pub client: Option<ClientStats>,
}

/// A role task that ended: which, and how.
#[derive(Debug)]
struct RoleExit {
    role: &'static str,
    result: io::Result<()>,
}

impl RoleExit {
    fn describe(&self) -> String {
        let role = self.role;
        match &self.result {
            Ok(()) => format!("{role} role stopped unexpectedly"),
            Err(e) => format!("{role} role failed: {e}"),
        }
    }
}

/// Aborts a background task when dropped (spawned tasks otherwise outlive their owner).
#[derive(Debug)]
struct Task(Option<JoinHandle<()>>);

impl Task {
    fn spawn(f: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(Some(tokio::spawn(f)))
    }

    /// Waits for the task to end by itself.
    async fn join(&mut self) {
        if let Some(h) = self.0.as_mut() {
            let _ = h.await;
            self.0 = None;
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// The running translator: every role of one policy on one Serval endpoint.
#[derive(Debug)]
pub struct Translator {
    endpoint: Endpoint,
    config: watch::Sender<Arc<Config>>,
    drain: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    client: Option<ClientRole>,
    router: Option<Router>,
    server: Option<Task>,
    dns: Option<Task>,
    events: Task,
    /// `serval.follow_address`, when it applies (aborted when the translator is dropped).
    _follow: Option<Task>,
    /// Drains the metrics recorder's histogram samples (aborted when dropped).
    _metrics_upkeep: Option<Task>,
    exits: mpsc::UnboundedReceiver<RoleExit>,
    default_routes: Vec<SocketAddr>,
    server_counters: Arc<ServerCounters>,
    dns_counters: Arc<DnsCounters>,
    source: String,
    admin: Option<AdminServer>,
    admin_requests: mpsc::Receiver<admin::Request>,
}

impl Translator {
    /// Starts every role `loaded` turns on (see the module docs for the order). `secrets`
    /// are the keys [`config::preflight`] read. Must be called inside a tokio runtime.
    pub fn start(loaded: Loaded, secrets: Secrets) -> Result<Self, StartError> {
        let config = Arc::new(loaded.config);
        let bind = config.serval.bind;
        let endpoint = endpoint::endpoint_config(&config)
            .and_then(|c| Endpoint::bind(bind, c))
            .map_err(|source| StartError::Endpoint { addr: bind, source })?;

        let (config_tx, _) = watch::channel(config.clone());
        let (drain_tx, _) = watch::channel(false);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (exit_tx, exits) = mpsc::unbounded_channel();

        // One process-wide connection limit and drain switch for both translator roles.
        let limiter = Limiter::new(config.relay.max_connections);
        let server_counters = Arc::new(ServerCounters::default());
        let dns_counters = Arc::new(DnsCounters::default());

        let router = match &config.router {
            Some(role) => Some(Router::enable(
                &endpoint,
                role,
                &secrets.router_keys,
                secrets.router_state.clone(),
            )?),
            None => None,
        };

        let mut server = None;
        if config.server.is_some() {
            if !config.serval.routers.is_empty() {
                // Validation requires the key whenever the server role has routers.
                let key = secrets.serval_key.clone().ok_or_else(|| {
                    StartError::Registrant(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "serval.key is needed to register with serval.routers",
                    ))
                })?;
                endpoint
                    .enable_registrant(
                        endpoint::registrant_config(
                            &config,
                            key,
                            crate::clock::unix_micros(crate::clock::wall()),
                        ),
                        &config.serval.routers,
                    )
                    .map_err(StartError::Registrant)?;
            }
            let mut options = ServeOptions::new()
                .limiter(limiter.clone())
                .counters(server_counters.clone());
            if let Some(tls) = &secrets.tls {
                options = options.tls(tls.server.clone());
            }
            let serve = server::serve_with(
                endpoint.clone(),
                config_tx.subscribe(),
                drain_tx.subscribe(),
                options,
            );
            server = Some(supervised("server", exit_tx.clone(), serve));
        }

        let mut default_routes = Vec::new();
        let mut dns = None;
        let mut client = None;
        if let Some(role) = &config.client {
            set_default_routes(&endpoint, &[], &config.serval.routers)
                .map_err(|(router, message)| StartError::Route { router, message })?;
            default_routes.clone_from(&config.serval.routers);
            let mut names: Option<Names> = None;
            if let Some(responder) = &role.dns {
                let pool = Arc::new(dns::Pool::new(responder));
                names = Some(pool.clone());
                let options = DnsOptions::new().counters(dns_counters.clone());
                let serve =
                    dns::serve_with(pool, config_tx.subscribe(), drain_tx.subscribe(), options);
                dns = Some(supervised("dns", exit_tx.clone(), serve));
            }
            client = Some(
                ClientRole::start(
                    endpoint.clone(),
                    &config,
                    limiter,
                    names,
                    secrets.tls.as_ref().map(|t| t.client.clone()),
                    stop_rx,
                )
                .map_err(StartError::Client)?,
            );
        }

        // The admin API: started last, so it only ever sees a started translator.
        let (requests, admin_requests) = mpsc::channel(4);
        let admin = match config.admin.listen {
            Some(addr) => {
                let mut cx = AdminContext {
                    config: config_tx.subscribe(),
                    draining: drain_tx.subscribe(),
                    requests,
                    endpoint: endpoint.clone(),
                    client: client.as_ref().map(ClientRole::stats_handle),
                    server: Some(server_counters.clone()),
                    dns: Some(dns_counters.clone()),
                    router: router.clone(),
                    token: secrets.admin_token.clone(),
                };
                cx.server = cx.server.filter(|_| config.server.is_some());
                Some(
                    AdminServer::start(addr, cx)
                        .map_err(|source| StartError::Admin { addr, source })?,
                )
            }
            None => {
                crate::metrics::install();
                None
            }
        };

        let saver = router
            .as_ref()
            .and_then(Router::state_file)
            .map(|f| Saver::new(f.clone()));
        let events = Task::spawn(log_events(endpoint.clone(), saver));
        let s = &config.serval;
        let follow = (s.follow_address && s.bind.ip().is_unspecified() && s.advertise.is_none())
            .then(|| {
                Task::spawn(follow::follow(
                    endpoint.clone(),
                    follow::targets(&s.routers, s.bind),
                    s.address_poll.0,
                ))
            });
        let t = Self {
            endpoint,
            config: config_tx,
            drain: drain_tx,
            stop: stop_tx,
            client,
            router,
            server,
            dns,
            events,
            _follow: follow,
            _metrics_upkeep: crate::metrics::install()
                .map(|h| Task::spawn(crate::metrics::upkeep(h))),
            exits,
            default_routes,
            server_counters,
            dns_counters,
            source: loaded.source,
            admin,
            admin_requests,
        };
        t.log_started();
        Ok(t)
    }

    fn log_started(&self) {
        let config = self.config();
        let roles: Vec<String> = config.roles().iter().map(ToString::to_string).collect();
        tracing::info!(
            policy = %self.source,
            roles = %roles.join(","),
            serval = %self.endpoint.local_addr(),
            routers = ?config.serval.routers,
            "translator started"
        );
        if let Some(a) = &self.admin {
            tracing::info!(listen = %a.local_addr(), "admin API listening");
        }
    }

    /// The admin API's bound address, when `admin.listen` is on (with port 0, the port the
    /// kernel chose).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// The policy in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// The Serval endpoint every role shares.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The endpoint's UDP address as peers reach it.
    pub fn serval_addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    /// The client role, when on.
    pub fn client(&self) -> Option<&ClientRole> {
        self.client.as_ref()
    }

    /// The server role's counters (zero when the role is off).
    pub fn server_stats(&self) -> ServerStats {
        self.server_counters.snapshot()
    }

    /// The DNS responder's counters (zero when it is off).
    pub fn dns_stats(&self) -> DnsStats {
        self.dns_counters.snapshot()
    }

    /// The router role, when on (its DELAY verdict is [`Router::verdict`]).
    pub fn router(&self) -> Option<&Router> {
        self.router.as_ref()
    }

    /// Subscribes to the policy in force (the server role and the DNS responder watch it).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.config.subscribe()
    }

    /// Whether every prefix of the server role is registered with every router in
    /// `serval.routers` (true when there is nothing to register).
    pub fn registered(&self) -> bool {
        registered_with(&self.endpoint, &self.config()).is_ok()
    }

    /// Waits until [`registered`](Self::registered), at most `limit`.
    pub async fn wait_registered(&self, limit: Duration) -> io::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tokio::time::timeout(limit, async {
            while !self.registered() {
                tick.tick().await;
            }
        })
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("not registered with every router within {limit:?}"),
            )
        })
    }

    /// Reads and validates the policy file at `path` again and applies it
    /// ([`reload`](Self::reload)).
    pub fn reload_file(&mut self, path: &Path, env: &dyn Env) -> Result<ReloadReport, ReloadError> {
        let r = config::load_file(path, env)
            .map_err(ReloadError::Config)
            .and_then(|(loaded, secrets)| self.reload(loaded, secrets));
        crate::metrics::record_reload(r.is_ok());
        r
    }

    /// Serves what needs the translator itself while it runs: reloads asked through the
    /// admin API (from the policy file at `path`, like SIGHUP). Returns `Ok` when a drain
    /// is asked for (POST /drain; the caller then calls [`drain`](Self::drain)), `Err`
    /// when a role failed (as [`failed`](Self::failed)). Cancel-safe: `run` selects on it
    /// with the signals.
    pub async fn serve(&mut self, path: &Path, env: &dyn Env) -> Result<(), String> {
        loop {
            tokio::select! {
                exit = exit_or_pending(&mut self.exits) => return Err(exit.describe()),
                request = recv_or_pending(&mut self.admin_requests) => match request {
                    admin::Request::Reload(reply) => {
                        tracing::info!(policy = %path.display(), "admin: reloading the policy");
                        let answer = reload_answer(self.reload_file(path, env));
                        if !answer.ok {
                            tracing::error!(
                                "reload refused, the running policy stays: {}",
                                answer.body["error"].as_str().unwrap_or("").trim_end()
                            );
                        }
                        let _ = reply.send(answer);
                    }
                    admin::Request::Drain => return Ok(()),
                },
            }
        }
    }

    /// Applies a new, valid policy (see the module docs). On error nothing changed.
    pub fn reload(
        &mut self,
        loaded: Loaded,
        _secrets: Secrets,
    ) -> Result<ReloadReport, ReloadError> {
        let old = self.config();
        let new = loaded.config;
        let shape = |c: &Config| {
            let mut roles: Vec<String> = c.roles().iter().map(ToString::to_string).collect();
            if c.client.as_ref().is_some_and(|c| c.dns.is_some()) {
                roles.push("dns".to_owned());
            }
            roles.join(",")
        };
        if shape(&old) != shape(&new) {
            return Err(ReloadError::Roles {
                old: shape(&old),
                new: shape(&new),
            });
        }
        let prepared = match &self.client {
            Some(c) => Some(c.prepare(&new).map_err(ReloadError::Bind)?),
            None => None,
        };
        let restart_needed = restart_needed(&old, &new);
        let new = Arc::new(new);
        self.config.send_replace(new.clone());

        let mut report = ReloadReport {
            restart_needed,
            ..ReloadReport::default()
        };
        if let (Some(c), Some(p)) = (&mut self.client, prepared) {
            report.client = c.commit(p);
        }
        if let (Some(r), Some(role)) = (&self.router, &new.router) {
            r.apply(role);
        }
        if self.client.is_some() && self.default_routes != new.serval.routers {
            match set_default_routes(&self.endpoint, &self.default_routes, &new.serval.routers) {
                Ok(()) => self.default_routes.clone_from(&new.serval.routers),
                Err((router, message)) => tracing::warn!(
                    router = %router,
                    error = %message,
                    "reload: default route to router not installed"
                ),
            }
        }
        self.source = loaded.source;
        tracing::info!(
            policy = %self.source,
            opened = report.client.opened.len(),
            closed = report.client.closed.len(),
            "policy reloaded: new connections use it, connections in progress keep theirs"
        );
        if !report.restart_needed.is_empty() {
            tracing::warn!(
                fields = %report.restart_needed.join(", "),
                "reload: these settings changed but keep their running value until a restart"
            );
        }
        Ok(report)
    }

    /// Resolves when a role task (server, DNS responder) ends on its own, which only
    /// happens when it failed: its role and error. Pending for ever while all is well.
    pub async fn failed(&mut self) -> String {
        match self.exits.recv().await {
            Some(exit) => exit.describe(),
            // Every sender is held by a task that reports before ending.
            None => core::future::pending().await,
        }
    }

    /// Drains and stops the translator: stop accepting and withdraw registrations, let
    /// connections finish for up to `drain.grace_period`, then reset what is left.
    pub async fn drain(mut self) -> DrainReport {
        let grace = self.config().drain.grace_period.0;
        let active = self.client.as_ref().map_or(0, |c| c.stats().active);
        tracing::info!(
            grace_period = ?grace,
            client_connections = active,
            "draining: no new connections; waiting for those in progress"
        );
        self.drain.send_replace(true);
        if let Some(c) = &mut self.client {
            c.stop_accepting();
        }
        if let Some(d) = &mut self.dns {
            d.join().await;
        }
        let clean = tokio::time::timeout(grace, self.settle()).await.is_ok();
        if !clean {
            let left = self.client.as_ref().map_or(0, |c| c.stats().active);
            tracing::warn!(
                client_connections = left,
                "grace period over: resetting the connections still open"
            );
            self.stop.send_replace(true);
            if tokio::time::timeout(STOP_WAIT, self.settle())
                .await
                .is_err()
            {
                tracing::warn!("connections did not stop in time; closing regardless");
            }
        }
        let report = DrainReport {
            clean,
            client: self.client.as_ref().map(ClientRole::stats),
        };
        // Nothing may hold the endpoint but `self` now; give closing flows a moment.
        self.events = Task(None);
        if let Some(file) = self.router.as_ref().and_then(Router::state_file) {
            // The last word before the endpoint (and its registry) goes.
            let _ = file.save(&self.endpoint);
        }
        self.client = None;
        self.server = None;
        self.dns = None;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let _ = tokio::time::timeout(LINGER, async {
            while self.endpoint.flow_count() > 0 {
                tick.tick().await;
            }
        })
        .await;
        tracing::info!(clean, "drained");
        report
    }

    /// Waits for the client's connections and the server role to finish.
    async fn settle(&mut self) {
        if let Some(c) = &self.client {
            c.wait_idle().await;
        }
        if let Some(s) = &mut self.server {
            s.join().await;
        }
    }
}

/// The next message on `rx`; pending for ever once every sender is gone (no role task
/// left to fail, no admin API to ask), so a `select!` keeps waiting on its other branches.
async fn recv_or_pending<T>(rx: &mut mpsc::Receiver<T>) -> T {
    match rx.recv().await {
        Some(v) => v,
        None => core::future::pending().await,
    }
}

/// The next role exit; pending for ever once no role task is left to report one.
async fn exit_or_pending(rx: &mut mpsc::UnboundedReceiver<RoleExit>) -> RoleExit {
    match rx.recv().await {
        Some(v) => v,
        None => core::future::pending().await,
    }
}

/// Runs a role's future as a task; when it ends, says so on `exits`.
fn supervised(
    role: &'static str,
    exits: mpsc::UnboundedSender<RoleExit>,
    f: impl Future<Output = io::Result<()>> + Send + 'static,
) -> Task {
    Task::spawn(async move {
        let result = f.await;
        let _ = exits.send(RoleExit { role, result });
    })
}

/// Whether every prefix of `config`'s server role is registered with every router in
/// `serval.routers` (`Ok` when there is nothing to register); else the first pair missing.
pub fn registered_with(
    endpoint: &Endpoint,
    config: &Config,
) -> Result<(), (SocketAddr, ServicePrefix)> {
    let Some(server) = &config.server else {
        return Ok(());
    };
    let policy = ServerPolicy::new(server);
    for r in &config.serval.routers {
        for p in policy.listen_prefixes() {
            if !endpoint.is_registered(*r, p) {
                return Err((*r, *p));
            }
        }
    }
    Ok(())
}

/// The admin API's answer to a reload: what changed, or every problem with its place.
fn reload_answer(r: Result<ReloadReport, ReloadError>) -> admin::ReloadAnswer {
    use serde_json::json;
    match r {
        Ok(report) => admin::ReloadAnswer {
            ok: true,
            body: json!({
                "reloaded": true,
                "listeners_opened": report.client.opened.iter().map(|(n, a)| json!({"name": n, "addr": a})).collect::<Vec<_>>(),
                "listeners_closed": report.client.closed.iter().map(|(n, a)| json!({"name": n, "addr": a})).collect::<Vec<_>>(),
                "restart_needed": report.restart_needed,
            }),
        },
        Err(e) => {
            let problems: Vec<serde_json::Value> = match &e {
                ReloadError::Config(c) => c
                    .problems
                    .iter()
                    .map(|p| {
                        let (line, column, origin) = match &p.origin {
                            config::Origin::File { line, column } => {
                                (Some(*line), Some(*column), c.source.clone())
                            }
                            config::Origin::Env(var) => (None, None, format!("${var}")),
                            _ => (None, None, c.source.clone()),
                        };
                        json!({
                            "file": origin,
                            "line": line,
                            "column": column,
                            "field": p.field,
                            "message": p.message,
                        })
                    })
                    .collect(),
                other => vec![json!({ "message": other.to_string() })],
            };
            admin::ReloadAnswer {
                ok: false,
                body: json!({
                    "reloaded": false,
                    "error": e.render(),
                    "problems": problems,
                }),
            }
        }
    }
}

/// Replaces the default FORWARD rules to the routers `old` by those to `new`.
fn set_default_routes(
    endpoint: &Endpoint,
    old: &[SocketAddr],
    new: &[SocketAddr],
) -> Result<(), (SocketAddr, String)> {
    endpoint.with_table(|t| {
        for r in old.iter().filter(|r| !new.contains(r)) {
            let _ = t.remove(&ServicePrefix::DEFAULT, &Action::Forward(*r));
        }
        for r in new.iter().filter(|r| !old.contains(r)) {
            t.insert(
                ServicePrefix::DEFAULT,
                Rule::forward(*r).with_priority(DEFAULT_ROUTE_PRIORITY),
            )
            .map_err(|e| (*r, e.to_string()))?;
        }
        Ok(())
    })
}

/// The changed settings that configure the stack once and so keep their running value.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.serval, &new.serval);
    let mut fields = Vec::new();
    let mut check = |changed: bool, field: &'static str| {
        if changed {
            fields.push(field);
        }
    };
    check(a.bind != b.bind, "serval.bind");
    check(a.advertise != b.advertise, "serval.advertise");
    check(a.key != b.key, "serval.key");
    check(a.keepalive != b.keepalive, "serval.keepalive");
    check(a.peer_timeout != b.peer_timeout, "serval.peer_timeout");
    check(
        a.max_udp_payload != b.max_udp_payload,
        "serval.max_udp_payload",
    );
    check(a.max_flows != b.max_flows, "serval.max_flows");
    check(
        a.follow_address != b.follow_address || a.address_poll != b.address_poll,
        "serval.follow_address",
    );
    check(
        old.relay.max_connections != new.relay.max_connections,
        "relay.max_connections",
    );
    // The client's default routes follow `routers`; the registrant's list is fixed.
    check(
        a.routers != b.routers && new.server.is_some(),
        "serval.routers (registrations)",
    );
    check(old.tls != new.tls, "tls");
    check(old.admin != new.admin, "admin");
    check(old.log != new.log, "log");
    fields.extend(router::restart_needed(old, new));
    fields
}

/// Logs the control plane's events (leases, registrations, DELAY) for ever, and keeps the
/// router's state file (`saver`) up to date with the leases.
async fn log_events(endpoint: Endpoint, mut saver: Option<Saver>) {
    let mut tick = tokio::time::interval(EVENT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut leases_changed = false;
        for e in endpoint.control_events() {
            leases_changed |= matches!(e, ControlEvent::Lease(_));
            router::log_event(&e);
        }
        if let Some(s) = &mut saver {
            s.tick(&endpoint, leases_changed, tokio::time::Instant::now());
        }
    }
}

/// Why `run` ended with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The policy is invalid.
    #[error("{}", .0.render())]
    Config(ConfigError),
    /// A role could not start.
    #[error("cannot start: {0}")]
    Start(#[from] StartError),
    /// The signal handlers could not be installed.
    #[error("signals: {0}")]
    Signals(io::Error),
    /// A role failed while running (the others were drained).
    #[error("{0}")]
    Failed(String),
}

/// `serval-translator run`: starts the policy at `path` (already loaded as `loaded` /
/// `secrets`, so the caller could set up logging from it), reloads on SIGHUP, drains on
/// SIGTERM or SIGINT and returns when drained. A second SIGTERM/SIGINT during the drain
/// stops at once.
pub async fn run(
    path: PathBuf,
    env: &dyn Env,
    loaded: Loaded,
    secrets: Secrets,
) -> Result<(), RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let mut t = Translator::start(loaded, secrets)?;

    let failure = loop {
        tokio::select! {
            r = t.serve(&path, env) => match r {
                Ok(()) => {
                    tracing::info!("admin: drain requested");
                    break None;
                }
                Err(why) => {
                    tracing::error!(error = %why, "a role failed; draining the others");
                    break Some(why);
                }
            },
            _ = hup.recv() => {
                tracing::info!(policy = %path.display(), "SIGHUP: reloading the policy");
                if let Err(e) = t.reload_file(&path, env) {
                    tracing::error!(
                        "reload refused, the running policy stays:\n{}",
                        e.render().trim_end()
                    );
                }
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM");
                break None;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT");
                break None;
            }
        }
    };
    tokio::select! {
        _ = t.drain() => {}
        _ = term.recv() => tracing::warn!("second signal: stopping without waiting"),
        _ = int.recv() => tracing::warn!("second signal: stopping without waiting"),
    }
    match failure {
        None => Ok(()),
        Some(why) => Err(RunError::Failed(why)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(yaml: &str) -> Config {
        config::parse(yaml, "t.yaml", &HashMap::<String, String>::new())
            .unwrap()
            .config
    }

    #[test]
    fn a_reload_names_what_only_a_restart_applies() {
        let base = "client:\n  listeners: [{name: a, listen: 127.0.0.1:1000, service: \"1\"}]\n";
        let a = parse(&format!("serval: {{routers: [\"192.0.2.1:1\"]}}\n{base}"));
        let b = parse(&format!(
            "serval: {{routers: [\"192.0.2.2:1\"], keepalive: 10s, max_udp_payload: 1300}}\nrelay: {{max_connections: 10, idle_timeout: 5m}}\n{base}"
        ));
        // The client's routes follow `routers` live; connection settings apply to new
        // connections; the endpoint's settings and the shared limit need a restart.
        assert_eq!(
            restart_needed(&a, &b),
            vec![
                "serval.keepalive",
                "serval.max_udp_payload",
                "relay.max_connections"
            ]
        );
        assert!(restart_needed(&a, &a).is_empty());
    }
}
