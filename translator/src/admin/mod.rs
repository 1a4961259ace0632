//! The admin HTTP API (`admin.listen`, default `127.0.0.1:9901`; `~` turns it off).
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/metrics` | Prometheus text ([`crate::metrics`]) |
//! | GET | `/healthz` | 200 `ok` while the process serves |
//! | GET | `/readyz` | 200 `{"ready":true}`; 503 with a JSON `reason` while draining or while the server role is not registered with every router |
//! | GET | `/services` | JSON: each role's services, listeners, backends, routes, registrations and counters |
//! | GET | `/flows?limit=&after=` | JSON: the endpoint's live Serval flows ([`flows`]: FlowID, service, addresses, state, bytes, RTT, cwnd), by FlowID, `limit` ≤ 1000 (default 100), `after` the last FlowID of the previous page; `active` counts the roles' connections in progress |
//! | GET | `/config` | the effective policy as YAML (`?format=json` for JSON); policies only name key and token sources, so no secret can appear |
//! | POST | `/reload` | re-read the policy file like SIGHUP: 200 with what changed, 400 with every problem (file, line, column, field) and the running policy kept |
//! | POST | `/drain` | start the drain like SIGTERM (idempotent; 202) |
//! | POST | `/delay/{prefix}` | DELAY verdict for SYNs parked under the prefix: `?verdict=release\|drop` or JSON `{"verdict":"release"}` (router role) |
//! | POST | `/flows/{id}/move` | JSON `{"local":"ip"}` (or `"ip:port"`; the port defaults to the endpoint's): move one established flow to a new local address of this host ([`Endpoint::migrate_flow`]) |
//!
//! POSTs are authorized by [`auth`] (loopback, or the bearer token). Hostile input is
//! bounded: headers (size, count, [`HEADER_TIMEOUT`]), bodies ([`MAX_BODY`], 413 past
//! it), each request ([`REQUEST_TIMEOUT`]), each connection ([`CONNECTION_LIFETIME`]) and
//! the connections at once ([`MAX_CONNECTIONS`]; more are closed at accept). Unknown paths
//! are 404, known paths with another method 405 with `Allow`.
//!
//! The server runs as one task on the translator's runtime, started by
//! [`crate::run::Translator::start`] and aborted (with every connection) when the
//! translator is dropped. Reload and drain need the translator itself: they are sent to its
//! owner as [`Request`]s ([`crate::run::Translator::serve`]).

pub mod auth;
pub mod client;
pub mod flows;

use core::convert::Infallible;
use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use serval_stack::driver::Endpoint;
use serval_stack::service_table::Action;
use serval_stack::wire::{FlowId, ServicePrefix};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

pub use auth::{AdminToken, Refusal, authorize};

use crate::client::stats::StatsHandle;
use crate::config::Config;
use crate::dns::DnsCounters;
use crate::metrics::{RouterSample, Sample, StackSample};
use crate::router::Router;
use crate::server::ServerCounters;

/// Largest request body read (a reload or verdict body is tiny).
pub const MAX_BODY: usize = 64 << 10;
/// Read buffer per connection, which bounds the request head.
pub const MAX_HEAD: usize = 16 << 10;
/// Most request headers.
pub const MAX_HEADERS: usize = 64;
/// Time to receive a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to read a body and answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// A connection (keep-alive included) is closed after this long.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Most admin connections at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Default page size of `GET /flows`.
pub const DEFAULT_PAGE: usize = 100;

type Response = hyper::Response<Full<Bytes>>;

/// What only the translator's owner can do, asked by the API.
#[derive(Debug)]
#[non_exhaustive]
pub enum Request {
    /// Re-read the policy file and apply it; answer on the channel.
    Reload(oneshot::Sender<ReloadAnswer>),
    /// Start draining (sent once).
    Drain,
}

/// The answer to [`Request::Reload`].
#[derive(Debug, Clone)]
pub struct ReloadAnswer {
    /// Applied.
    pub ok: bool,
    /// The JSON body: what changed, or every problem.
    pub body: Value,
}

/// Everything the API reads, handed over by the translator at start.
#[derive(Debug)]
#[non_exhaustive]
pub struct AdminContext {
    /// The policy in force.
    pub config: watch::Receiver<Arc<Config>>,
    /// The drain switch (true once the drain started).
    pub draining: watch::Receiver<bool>,
    /// Where reload and drain requests go.
    pub requests: mpsc::Sender<Request>,
    /// The Serval endpoint.
    pub endpoint: Endpoint,
    /// The client role's counters.
    pub client: Option<StatsHandle>,
    /// The server role's counters.
    pub server: Option<Arc<ServerCounters>>,
    /// The DNS responder's counters.
    pub dns: Option<Arc<DnsCounters>>,
    /// The router role.
    pub router: Option<Router>,
    /// The bearer token for non-loopback POSTs.
    pub token: Option<AdminToken>,
}

#[derive(Debug)]
struct Shared {
    cx: AdminContext,
    drain_requested: AtomicBool,
    accounts: flows::FlowAccounts,
}

/// The running admin API; dropping it stops the server and its connections.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` and serves the API with `cx` on the current runtime.
    pub fn start(addr: SocketAddr, cx: AdminContext) -> io::Result<Self> {
        let std = std::net::TcpListener::bind(addr)?;
        std.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std)?;
        let addr = listener.local_addr()?;
        crate::metrics::install();
        let shared = Arc::new(Shared {
            cx,
            drain_requested: AtomicBool::new(false),
            accounts: flows::FlowAccounts::new(),
        });
        let task = tokio::spawn(accept_loop(listener, shared));
        Ok(Self { addr, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Owned here: aborting this task aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::debug!(peer = %peer, "admin: too many connections; closed");
                        continue;
                    };
                    let shared = shared.clone();
                    connections.spawn(async move {
                        serve_connection(tcp, peer, shared).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    // Out of descriptors and the like: retrying at once would spin.
                    tracing::warn!(error = %e, "admin: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(tcp: tokio::net::TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, peer, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(tcp), service);
    match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
        Ok(Ok(())) | Err(_) => {}
        Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "admin: connection error"),
    }
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// GET /metrics.
    Metrics,
    /// GET /healthz.
    Healthz,
    /// GET /readyz.
    Readyz,
    /// GET /services.
    Services,
    /// GET /flows.
    Flows,
    /// GET /config.
    Config,
    /// POST /reload.
    Reload,
    /// POST /drain.
    Drain,
    /// POST /delay/{prefix}.
    Delay(String),
    /// POST /flows/{id}/move.
    Move(String),
    /// A known path with another method; the methods it takes.
    WrongMethod(&'static str),
    /// Anything else.
    NotFound,
}

impl Route {
    /// The fixed label of the route (the `path` label of `serval_admin_requests_total`).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Metrics => "/metrics",
            Self::Healthz => "/healthz",
            Self::Readyz => "/readyz",
            Self::Services => "/services",
            Self::Flows => "/flows",
            Self::Config => "/config",
            Self::Reload => "/reload",
            Self::Drain => "/drain",
            Self::Delay(_) => "/delay",
            Self::Move(_) => "/flows/move",
            Self::WrongMethod(_) => "wrong_method",
            Self::NotFound => "other",
        }
    }
}

/// Routes `method` `path` (pure).
pub fn route(method: &Method, path: &str) -> Route {
    let get = |r: Route| {
        if method == Method::GET || method == Method::HEAD {
            r
        } else {
            Route::WrongMethod("GET, HEAD")
        }
    };
    let post = |r: Route| {
        if method == Method::POST {
            r
        } else {
            Route::WrongMethod("POST")
        }
    };
    match path {
        "/metrics" => get(Route::Metrics),
        "/healthz" => get(Route::Healthz),
        "/readyz" => get(Route::Readyz),
        "/services" => get(Route::Services),
        "/flows" => get(Route::Flows),
        "/config" => get(Route::Config),
        "/reload" => post(Route::Reload),
        "/drain" => post(Route::Drain),
        _ => {
            if let Some(p) = path.strip_prefix("/delay/").filter(|p| !p.is_empty()) {
                return post(Route::Delay(p.to_owned()));
            }
            if let Some(id) = path
                .strip_prefix("/flows/")
                .and_then(|r| r.strip_suffix("/move"))
                .filter(|id| !id.is_empty() && !id.contains('/'))
            {
                return post(Route::Move(id.to_owned()));
            }
            Route::NotFound
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response {
    let mut r = hyper::Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut text = serde_json::to_string_pretty(v).unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    respond(status, "application/json", text)
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

async fn handle(shared: &Shared, peer: SocketAddr, req: hyper::Request<Incoming>) -> Response {
    let route = route(req.method(), req.uri().path());
    let label = route.label();
    let head = req.method() == Method::HEAD;
    let mut resp =
        match tokio::time::timeout(REQUEST_TIMEOUT, dispatch(shared, peer, route, req)).await {
            Ok(r) => r,
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "request timed out"),
        };
    crate::metrics::record_admin_request(label, resp.status().as_u16());
    if head {
        *resp.body_mut() = Full::new(Bytes::new());
    }
    resp
}

async fn dispatch(
    shared: &Shared,
    peer: SocketAddr,
    route: Route,
    req: hyper::Request<Incoming>,
) -> Response {
    let query = parse_query(req.uri().query().unwrap_or(""));
    match route {
        Route::NotFound => error(StatusCode::NOT_FOUND, "no such path"),
        Route::WrongMethod(allow) => {
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            r
        }
        Route::Metrics => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(&sample(shared)),
        ),
        Route::Healthz => respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        Route::Readyz => match readiness(shared) {
            Ok(()) => json_response(StatusCode::OK, &json!({ "ready": true })),
            Err(reason) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "ready": false, "reason": reason }),
            ),
        },
        Route::Services => json_response(StatusCode::OK, &services(shared)),
        Route::Flows => {
            let (after, limit) = match page_params(&query) {
                Ok(p) => p,
                Err(message) => return error(StatusCode::BAD_REQUEST, message),
            };
            let page = flows::page(&shared.cx.endpoint, after, limit);
            let mut v = serde_json::to_value(&page).unwrap_or(Value::Null);
            // Connections in progress by the roles' own counts: `serval-translator drain
            // --wait` waits for 0 (flows lingering after their close are not connections).
            v["active"] = json!(active_connections(shared));
            json_response(StatusCode::OK, &v)
        }
        Route::Config => {
            let config = shared.cx.config.borrow().clone();
            if query.get("format").map(String::as_str) == Some("json") {
                json_response(
                    StatusCode::OK,
                    &serde_json::to_value(&*config).unwrap_or(Value::Null),
                )
            } else {
                match crate::report::effective_yaml(&config) {
                    Ok(y) => respond(StatusCode::OK, "application/yaml; charset=utf-8", y),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
                }
            }
        }
        Route::Reload | Route::Drain | Route::Delay(_) | Route::Move(_) => {
            let auth = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes);
            if let Err(refusal) = authorize(peer.ip(), auth, shared.cx.token.as_ref()) {
                let status =
                    StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::FORBIDDEN);
                let mut r = error(status, refusal.message());
                if status == StatusCode::UNAUTHORIZED {
                    r.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                return r;
            }
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match route {
                Route::Reload => reload(shared).await,
                Route::Drain => drain(shared, peer),
                Route::Delay(prefix) => delay(shared, &prefix, &query, &body),
                Route::Move(id) => move_flow(shared, &id, &body),
                _ => error(StatusCode::NOT_FOUND, "no such path"),
            }
        }
    }
}

/// Reads a POST body, at most [`MAX_BODY`]; the error is the answer to give.
async fn read_body(req: hyper::Request<Incoming>) -> Result<Bytes, Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body may be at most {MAX_BODY} bytes"),
        )
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > MAX_BODY as u64
    {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(error(StatusCode::BAD_REQUEST, "cannot read the body")),
    }
}

/// The query string's `key=value` pairs (pure; at most 16, no percent-decoding: every
/// value the API takes is plain ASCII). A key given twice keeps its last value.
pub fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .take(16)
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The `after` and `limit` of `GET /flows` (pure); the error is the answer's message.
pub fn page_params(
    query: &HashMap<String, String>,
) -> Result<(Option<FlowId>, usize), &'static str> {
    let limit = match query.get("limit").map(|v| v.parse::<usize>()) {
        None => DEFAULT_PAGE,
        Some(Ok(n)) if (1..=flows::MAX_PAGE).contains(&n) => n,
        Some(_) => return Err("limit must be a number from 1 to 1000"),
    };
    let after = match query
        .get("after")
        .map(|v| v.parse::<u32>().ok().map(FlowId::new))
    {
        None => None,
        Some(Some(id)) => id,
        Some(None) => return Err("after must be a FlowID"),
    };
    Ok((after, limit))
}

/// The prefix and verdict of `POST /delay/{prefix}` (pure): `verdict` from the query,
/// else from a JSON body `{"verdict": ...}`; `true` is release. The error is the answer's
/// message (400).
pub fn delay_params(
    prefix: &str,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Result<(ServicePrefix, bool), &'static str> {
    let Ok(prefix) = prefix.parse::<ServicePrefix>() else {
        return Err("not a ServiceID prefix (hex, 0x<hex>[:bits], <decimal>[:bits] or default)");
    };
    let from_body = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => v.get("verdict").and_then(Value::as_str).map(str::to_owned),
            Err(_) => return Err("the body is not JSON"),
        }
    };
    let verdict = query.get("verdict").cloned().or(from_body);
    match verdict.as_deref() {
        Some("release") => Ok((prefix, true)),
        Some("drop") => Ok((prefix, false)),
        _ => Err("give verdict=release or verdict=drop (query or JSON body)"),
    }
}

/// The flow and new local address of `POST /flows/{id}/move` (pure): the body is
/// `{"local": "<ip>"}` (the port is then `port`, the endpoint's own) or
/// `{"local": "<ip>:<port>"}`. The error is the answer's message (400).
pub fn move_params(id: &str, body: &[u8], port: u16) -> Result<(FlowId, SocketAddr), &'static str> {
    let Some(id) = id.parse::<u32>().ok().and_then(FlowId::new) else {
        return Err("not a FlowID");
    };
    let local = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("local").and_then(Value::as_str).map(str::to_owned))
        .and_then(|s| {
            s.parse::<SocketAddr>()
                .ok()
                .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, port)))
        });
    let Some(local) = local else {
        return Err("give {\"local\": \"<ip>\"} or {\"local\": \"<ip>:<port>\"}");
    };
    if local.ip().is_unspecified() || local.ip().is_multicast() || local.port() == 0 {
        return Err("not a usable local address");
    }
    Ok((id, local))
}

fn draining(shared: &Shared) -> bool {
    *shared.cx.draining.borrow() || shared.drain_requested.load(Ordering::Relaxed)
}

/// Why the translator is not ready, if it is not.
fn readiness(shared: &Shared) -> Result<(), String> {
    if draining(shared) {
        return Err("draining".to_owned());
    }
    let config = shared.cx.config.borrow().clone();
    crate::run::registered_with(&shared.cx.endpoint, &config)
        .map_err(|(router, prefix)| format!("{prefix} not registered with router {router}"))
}

fn active_connections(shared: &Shared) -> u64 {
    let client = shared
        .cx
        .client
        .as_ref()
        .and_then(StatsHandle::snapshot)
        .map_or(0, |c| c.active);
    let server = shared.cx.server.as_ref().map_or(0, |s| s.snapshot().active);
    client + server
}

fn role_names(config: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    if config.client.is_some() {
        v.push("client");
    }
    if config.server.is_some() {
        v.push("server");
    }
    if config.router.is_some() {
        v.push("router");
    }
    v
}

/// Everything `/metrics` samples from this translator.
fn sample(shared: &Shared) -> Sample {
    let cx = &shared.cx;
    let config = cx.config.borrow().clone();
    let e = &cx.endpoint;
    let dns_on = config.client.as_ref().is_some_and(|c| c.dns.is_some());
    let router = cx.router.as_ref().map(|r| {
        let stats = r.stats();
        RouterSample {
            registry: stats.registry,
            static_rules: stats.static_rules,
            delay: e.with_control(|c| c.delay().map(serval_stack::control::DelayQueue::stats)),
            forwarded: forwarded_per_prefix(e),
        }
    });
    let stack = StackSample {
        endpoint: e.stats(),
        driver: e.driver_stats(),
        control: e.with_control(serval_stack::control::ControlPlane::stats),
        flows: e.flow_count() as u64,
    };
    Sample {
        roles: role_names(&config),
        draining: draining(shared),
        ready: readiness(shared).is_ok(),
        client: cx.client.as_ref().and_then(StatsHandle::snapshot),
        server: config
            .server
            .as_ref()
            .and(cx.server.as_ref())
            .map(|c| c.snapshot()),
        dns: cx.dns.as_ref().filter(|_| dns_on).map(|d| d.snapshot()),
        router,
        stack,
        flows: shared.accounts.totals(&e.flows(None, usize::MAX)),
    }
}

/// Packets the table resolved to FORWARD targets, per prefix that has one.
fn forwarded_per_prefix(e: &Endpoint) -> Vec<(String, u64)> {
    e.with_table(|t| {
        t.iter()
            .filter_map(|entry| {
                let mut any = false;
                let n: u64 = entry
                    .targets()
                    .iter()
                    .filter(|t| matches!(t.action(), Action::Forward(_)))
                    .inspect(|_| any = true)
                    .map(|t| t.stats().packets_resolved)
                    .sum();
                any.then(|| (entry.prefix().to_string(), n))
            })
            .collect()
    })
}

fn services(shared: &Shared) -> Value {
    let cx = &shared.cx;
    let config = cx.config.borrow().clone();
    let mut out = serde_json::Map::new();
    if let Some(client) = &config.client {
        out.insert(
            "client".to_owned(),
            json!({
                "listeners": client.listeners,
                "rules": client.rules,
                "dns": client.dns,
                "counters": cx.client.as_ref().and_then(StatsHandle::snapshot),
                "dns_counters": cx.dns.as_ref().filter(|_| client.dns.is_some()).map(|d| d.snapshot()),
            }),
        );
    }
    if let Some(server) = &config.server {
        let policy = crate::policy::ServerPolicy::new(server);
        let registrations: Vec<Value> = config
            .serval
            .routers
            .iter()
            .flat_map(|r| {
                policy.listen_prefixes().iter().map(move |p| {
                    json!({
                        "router": r,
                        "prefix": p.to_string(),
                        "registered": cx.endpoint.is_registered(*r, p),
                    })
                })
            })
            .collect();
        out.insert(
            "server".to_owned(),
            json!({
                "services": server.services,
                "cross_translate": server.cross_translate,
                "registrations": registrations,
                "counters": cx.server.as_ref().map(|s| s.snapshot()),
            }),
        );
    }
    if let (Some(role), Some(router)) = (&config.router, &cx.router) {
        let leases: Vec<Value> = cx.endpoint.with_control(|c| {
            c.registry().map_or_else(Vec::new, |r| {
                r.leases()
                    .map(|l| {
                        json!({
                            "prefix": l.prefix.to_string(),
                            "instance": l.instance,
                            "key_id": l.key_id,
                        })
                    })
                    .collect()
            })
        });
        let table: Vec<Value> = cx.endpoint.with_table(|t| {
            t.iter()
                .map(|e| {
                    json!({
                        "prefix": e.prefix().to_string(),
                        "targets": e.targets().iter().map(|t| json!({
                            "action": format!("{:?}", t.action()),
                            "priority": t.priority(),
                            "weight": t.weight(),
                            "packets_resolved": t.stats().packets_resolved,
                            "packets_dropped": t.stats().packets_dropped,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect()
        });
        let stats = router.stats();
        let registry = stats.registry.unwrap_or_default();
        out.insert(
            "router".to_owned(),
            json!({
                "routes": role.routes,
                "delay": role.delay,
                "registrations": leases,
                "table": table,
                "delayed": stats.delayed,
                "counters": {
                    "leases": registry.leases,
                    "registrations": registry.registrations,
                    "unregistrations": registry.unregistrations,
                    "leases_expired": registry.leases_expired,
                    "static_rules": stats.static_rules,
                    "static_rules_refused": stats.static_rules_refused,
                },
            }),
        );
    }
    Value::Object(out)
}

async fn reload(shared: &Shared) -> Response {
    let (tx, rx) = oneshot::channel();
    if shared.cx.requests.try_send(Request::Reload(tx)).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy: a reload or drain is already being handled",
        );
    }
    match rx.await {
        Ok(answer) if answer.ok => json_response(StatusCode::OK, &answer.body),
        Ok(answer) => json_response(StatusCode::BAD_REQUEST, &answer.body),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the translator is not taking reloads (draining or stopping)",
        ),
    }
}

fn drain(shared: &Shared, peer: SocketAddr) -> Response {
    let first = !shared.drain_requested.swap(true, Ordering::SeqCst);
    if first && !*shared.cx.draining.borrow() {
        tracing::info!(peer = %peer, "admin: POST /drain");
        // The channel is bounded; the owner takes one drain, later ones are no-ops.
        if shared.cx.requests.try_send(Request::Drain).is_err() {
            tracing::warn!("admin: drain request not delivered (the owner is busy or gone)");
        }
    }
    json_response(
        StatusCode::ACCEPTED,
        &json!({ "draining": true, "already": !first }),
    )
}

fn delay(shared: &Shared, prefix: &str, query: &HashMap<String, String>, body: &[u8]) -> Response {
    let Some(router) = &shared.cx.router else {
        return error(StatusCode::NOT_FOUND, "the router role is off");
    };
    let (prefix, release) = match delay_params(prefix, query, body) {
        Ok(p) => p,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let n = router.verdict(&prefix, release);
    json_response(
        StatusCode::OK,
        &json!({
            "prefix": prefix.to_string(),
            "verdict": if release { "release" } else { "drop" },
            "syns": n,
        }),
    )
}

fn move_flow(shared: &Shared, id: &str, body: &[u8]) -> Response {
    let endpoint = &shared.cx.endpoint;
    let (id, local) = match move_params(id, body, endpoint.local_addr().port()) {
        Ok(p) => p,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match endpoint.migrate_flow(id, local) {
        Ok(()) => {
            tracing::info!(flow = id.get(), local = %local, "admin: flow moved");
            json_response(
                StatusCode::ACCEPTED,
                &json!({ "flow": id.get(), "local": local.to_string(), "moving": true }),
            )
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            error(StatusCode::NOT_FOUND, "no such flow")
        }
        Err(e) => error(StatusCode::CONFLICT, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;

    fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Option<AdminToken>, String> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let loaded = crate::config::parse(yaml, "t.yaml", &env).map_err(|e| e.render())?;
        crate::config::preflight(&loaded, Path::new("."), &env)
            .map(|s| s.admin_token)
            .map_err(|e| e.render())
    }

    const ROLE: &str = "router: {routes: [{prefix: default, forward: \"192.0.2.1:1\"}]}\n";

    #[test]
    fn the_token_comes_from_its_source_and_the_environment_wins() {
        let t = |y: &str, env: &[(&str, &str)]| load(&format!("{ROLE}{y}"), env);
        assert!(t("", &[]).unwrap().is_none());
        let v = "abcdefghijklmnop-1";
        let from_var = t("admin: {token: {env: TOK}}\n", &[("TOK", v)])
            .unwrap()
            .unwrap();
        assert!(from_var.matches(v.as_bytes()));
        let w = "qrstuvwxyzabcdef-2";
        let env_wins = t(
            "admin: {token: {env: TOK}}\n",
            &[("TOK", v), ("SERVAL_ADMIN_TOKEN", w)],
        )
        .unwrap()
        .unwrap();
        assert!(env_wins.matches(w.as_bytes()));
        let only_env = t("", &[("SERVAL_ADMIN_TOKEN", w)]).unwrap().unwrap();
        assert!(only_env.matches(w.as_bytes()));
        // Problems name the field.
        let e = t("admin: {token: {env: NOPE}}\n", &[]).unwrap_err();
        assert!(e.contains("admin.token") && e.contains("NOPE"), "{e}");
        let e = t("admin: {token: {env: TOK}}\n", &[("TOK", "short")]).unwrap_err();
        assert!(e.contains("admin.token") && e.contains("16"), "{e}");
        let e = t("admin: {token: {env: A, file: b}}\n", &[]).unwrap_err();
        assert!(e.contains("admin.token"), "{e}");
        let e = t("admin: {token: {}}\n", &[]).unwrap_err();
        assert!(e.contains("admin.token"), "{e}");
    }

    #[test]
    fn routes_methods_and_labels() {
        assert_eq!(route(&Method::GET, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::HEAD, "/healthz"), Route::Healthz);
        assert_eq!(
            route(&Method::POST, "/readyz"),
            Route::WrongMethod("GET, HEAD")
        );
        assert_eq!(route(&Method::GET, "/drain"), Route::WrongMethod("POST"));
        assert_eq!(
            route(&Method::POST, "/delay/0x01:8"),
            Route::Delay("0x01:8".to_owned())
        );
        assert_eq!(route(&Method::POST, "/delay/"), Route::NotFound);
        assert_eq!(
            route(&Method::POST, "/flows/12/move"),
            Route::Move("12".to_owned())
        );
        assert_eq!(route(&Method::POST, "/flows/1/2/move"), Route::NotFound);
        assert_eq!(route(&Method::GET, "/flows/"), Route::NotFound);
        assert_eq!(route(&Method::DELETE, "/x"), Route::NotFound);
        // Labels are a fixed set whatever the path.
        assert_eq!(route(&Method::POST, "/delay/anything").label(), "/delay");
        assert_eq!(route(&Method::GET, "/a/b/c").label(), "other");
    }

    #[test]
    fn queries_are_bounded() {
        let q = parse_query("a=1&b&&c=x=y");
        assert_eq!(q.get("a").map(String::as_str), Some("1"));
        assert_eq!(q.get("b").map(String::as_str), Some(""));
        assert_eq!(q.get("c").map(String::as_str), Some("x=y"));
        let many: String = (0..100).map(|i| format!("k{i}=v&")).collect();
        assert_eq!(parse_query(&many).len(), 16);
    }

    /// The path parameters and bodies of the POST routes (what the `admin_request` fuzz
    /// target drives), each refusal a 400 message.
    #[test]
    fn delay_and_move_parameters() {
        let none = HashMap::new();
        let release = parse_query("verdict=release");
        let (p, r) = delay_params("0x4000:2", &release, b"").unwrap();
        assert_eq!(
            (p.to_string(), r),
            (
                "0x4000:2".parse::<ServicePrefix>().unwrap().to_string(),
                true
            )
        );
        assert!(
            !delay_params("default", &none, br#"{"verdict": "drop"}"#)
                .unwrap()
                .1
        );
        // The query wins over the body.
        assert!(
            delay_params("default", &release, br#"{"verdict": "drop"}"#)
                .unwrap()
                .1
        );
        assert!(delay_params("zz", &release, b"").is_err());
        assert!(delay_params("default", &none, b"{").is_err());
        assert!(delay_params("default", &none, br#"{"verdict": 1}"#).is_err());
        let (id, local) = move_params("7", br#"{"local": "192.0.2.9"}"#, 4000).unwrap();
        assert_eq!((id.get(), local), (7, "192.0.2.9:4000".parse().unwrap()));
        let (_, local) = move_params("7", br#"{"local": "[2001:db8::2]:5"}"#, 4000).unwrap();
        assert_eq!(local, "[2001:db8::2]:5".parse().unwrap());
        for (id, body) in [
            ("0", &br#"{"local": "192.0.2.9"}"#[..]),
            ("x", br#"{"local": "192.0.2.9"}"#),
            ("7", br#"{"local": "0.0.0.0"}"#),
            ("7", br#"{"local": "224.0.0.1:5"}"#),
            ("7", b"{}"),
        ] {
            assert!(move_params(id, body, 4000).is_err(), "{id} {body:?}");
        }
        let (after, limit) = page_params(&parse_query("after=17&limit=1000")).unwrap();
        assert_eq!((after.map(FlowId::get), limit), (Some(17), 1000));
        assert!(page_params(&parse_query("limit=1001")).is_err());
        assert!(page_params(&parse_query("after=-1")).is_err());
    }
}
