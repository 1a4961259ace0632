//! One accepted Serval flow, from decision to access-log line.
//!
//! decide (`ServerPolicy`) → admit (`Limiter`, per-service gate) → read the start of the
//! flow (a client translator's PROXY v2 preamble carrying the legacy client, stripped; or a
//! native client's first bytes, kept: [`crate::client_address`]; bounded by the connect
//! timeout) → connect (backend choice, connect timeout, retries on *other* backends, passive
//! outlier reports) → PROXY header (source: the legacy client when carried and
//! `server.trust_client_address`, else the Serval peer) → a native client's first bytes →
//! relay until both sides finish, a timeout, an error or the drain's hard stop → reset the
//! sides on an unclean end → access log.
//!
//! Admission comes after the decision because the per-service limit needs to know the
//! service; the decision is a pure table lookup, so deciding first costs nothing.

use core::net::SocketAddr;
use core::sync::atomic::AtomicU64;
use core::time::Duration;
use std::io;
use std::sync::Arc;

use serval_stack::driver::ServalStream;
use serval_stack::wire::ServiceId;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::balance::hash_addr;
use super::pool::{Lease, PoolInner};
use super::proxy_header;
use super::stats::{ActiveGuard, ServerCounters};
use super::{Generation, RefusalReason};
use crate::client_address::{self, PreambleError, Start};
use crate::config::model::ProxyProtocol;
use crate::policy::ServerDecision;
use crate::relay::{ACCESS_LOG_TARGET, AccessLog, Gate, LimitRefusal, Limiter, relay_until};
use crate::tls::{Leg, ServerAcceptor};

/// What every flow task shares.
#[derive(Debug)]
pub(crate) struct FlowContext {
    pub(crate) limiter: Limiter,
    pub(crate) counters: Arc<ServerCounters>,
    /// Turns true at the end of a drain's grace period: relays stop, connects give up.
    pub(crate) stop: watch::Receiver<bool>,
    /// The policy's `tls:`: every flow must open with a TLS handshake.
    pub(crate) tls: Option<ServerAcceptor>,
}

/// Where a flow's backend connection goes.
enum Upstream {
    Pool { pool: Arc<PoolInner>, retries: u32 },
    Address(SocketAddr),
}

struct Plan<'g> {
    via: &'g str,
    gate: &'g Gate,
    upstream: Upstream,
    connect_timeout: Duration,
    proxy_protocol: ProxyProtocol,
}

/// A backend connection.
struct Connected {
    tcp: TcpStream,
    addr: SocketAddr,
    /// Holds the member's active-connection count for the flow's lifetime.
    _lease: Option<Lease>,
}

/// Resolves once the drain's hard stop is given (or `serve` is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves one accepted flow to its end.
pub(crate) async fn serve_flow(
    mut serval: ServalStream,
    generation: Arc<Generation>,
    ctx: Arc<FlowContext>,
) {
    let _active = ActiveGuard::new(&ctx.counters);
    let service = serval.peer_service();
    let peer = serval.peer_addr();

    let plan = match plan(&generation, &service) {
        Ok(p) => p,
        Err(why) => {
            ctx.counters.refused(&why);
            refused(&serval, peer, &service, "-", why.label(), &why.to_string());
            return;
        }
    };
    let _permit = match ctx.limiter.try_admit(plan.gate) {
        Ok(p) => p,
        Err(why) => {
            let reason = RefusalReason::Limit(why);
            ctx.counters.refused(&reason);
            refused(
                &serval,
                peer,
                &service,
                plan.via,
                reason.label(),
                &why.to_string(),
            );
            return;
        }
    };

    // TLS first when the policy asks (bounded like the preamble), then the start of the flow.
    let handshake = Instant::now();
    let accepted = tokio::select! {
        r = tokio::time::timeout(plan.connect_timeout, Leg::server(ctx.tls.as_ref(), &mut serval)) => {
            r.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
        }
        () = stopped(ctx.stop.clone()) => Err(io::Error::new(io::ErrorKind::Interrupted, "draining: stopped")),
    };
    let mut leg = match accepted {
        Ok(l) => l,
        Err(e) => {
            ServerCounters::bump(&ctx.counters.tls_failures);
            refused(
                &serval,
                peer,
                &service,
                plan.via,
                "tls_failed",
                &e.to_string(),
            );
            return;
        }
    };
    let tls_time = ctx.tls.as_ref().map(|_| handshake.elapsed());
    // The start of the flow: a client translator's preamble, or a native client's bytes.
    let start = tokio::select! {
        s = client_address::read(&mut leg, plan.connect_timeout) => s,
        () = stopped(ctx.stop.clone()) => Err(PreambleError::Io(io::Error::new(io::ErrorKind::Interrupted, "draining: stopped"))),
    };
    let (carried, first_bytes) = match start {
        Ok(Start::Carried { addresses }) => {
            ServerCounters::bump(&ctx.counters.preambles);
            (
                addresses.filter(|_| generation.trust_client_address),
                Vec::new(),
            )
        }
        Ok(Start::Native(bytes)) => (None, bytes),
        Err(e) => {
            let c = match e {
                PreambleError::TooLong(_) => &ctx.counters.preamble_too_long,
                PreambleError::Garbled(_) => &ctx.counters.preamble_garbled,
                PreambleError::TimedOut(_) | PreambleError::Io(_) => {
                    &ctx.counters.preamble_incomplete
                }
            };
            ServerCounters::bump(c);
            refused(
                leg.stream(),
                peer,
                &service,
                plan.via,
                e.label(),
                &e.to_string(),
            );
            return;
        }
    };
    let client = carried.map(|(c, _)| c);

    let started = Instant::now();
    let connected = tokio::select! {
        c = connect(&plan, peer, &ctx.counters) => c,
        () = stopped(ctx.stop.clone()) => Err(io::Error::new(io::ErrorKind::Interrupted, "draining: stopped")),
    };
    let Connected {
        mut tcp,
        addr,
        _lease,
    } = match connected {
        Ok(c) => c,
        Err(e) => {
            ServerCounters::bump(&ctx.counters.no_backend);
            refused(
                leg.stream(),
                peer,
                &service,
                plan.via,
                "no_backend",
                &e.to_string(),
            );
            return;
        }
    };

    let connect_time = started.elapsed();
    let addresses = carried.unwrap_or((peer, addr));
    let opening = write_opening(&mut tcp, &plan, addresses, &service, &first_bytes).await;
    if let Err(failed) = opening {
        let (outcome, counter) = failed.outcome(&ctx.counters);
        ServerCounters::bump(counter);
        let _ = crate::relay::abort_tcp(&tcp);
        refused(
            leg.stream(),
            peer,
            &service,
            plan.via,
            outcome,
            &failed.to_string(),
        );
        return;
    }
    ServerCounters::add(&ctx.counters.bytes_to_backends, first_bytes.len() as u64);

    ServerCounters::bump(&ctx.counters.relayed);
    let report = relay_until(
        &mut leg,
        &mut tcp,
        &generation.relay,
        stopped(ctx.stop.clone()),
    )
    .await;
    if !report.outcome.is_clean() {
        // Reset both sides: the one still open must not take a truncated stream for a
        // complete one (a FIN would say "done").
        let _ = crate::relay::abort_tcp(&tcp);
        leg.stream().abort();
    }
    ctx.counters.outcome(&report.outcome);
    ServerCounters::add(&ctx.counters.bytes_to_backends, report.inbound_to_outbound);
    ServerCounters::add(
        &ctx.counters.bytes_from_backends,
        report.outbound_to_inbound,
    );
    AccessLog {
        role: "server",
        via: plan.via,
        peer: Some(peer),
        client,
        service: Some(service),
        upstream: Some(addr),
        connect: Some(connect_time),
        tls_handshake: tls_time,
        report: &report,
    }
    .emit();
}

/// The decision and what it implies.
fn plan<'g>(generation: &'g Generation, id: &ServiceId) -> Result<Plan<'g>, RefusalReason> {
    match generation
        .policy
        .decide(id)
        .map_err(RefusalReason::Policy)?
    {
        ServerDecision::Pool { service } => {
            let rt = generation
                .services
                .get(service)
                .ok_or(RefusalReason::Policy(
                    crate::policy::ServerRefusal::NoService(*id),
                ))?;
            Ok(Plan {
                via: &rt.config.name,
                gate: &rt.gate,
                upstream: Upstream::Pool {
                    pool: rt.pool.inner().clone(),
                    retries: rt.config.retries,
                },
                connect_timeout: rt.config.connect_timeout.0,
                proxy_protocol: rt.config.proxy_protocol,
            })
        }
        ServerDecision::CrossTranslate { addr } => {
            let cross = generation.cross.as_ref().ok_or(RefusalReason::Policy(
                crate::policy::ServerRefusal::NoService(*id),
            ))?;
            Ok(Plan {
                via: "cross_translate",
                gate: &cross.gate,
                upstream: Upstream::Address(addr),
                connect_timeout: cross.connect_timeout,
                proxy_protocol: cross.proxy_protocol,
            })
        }
    }
}

/// Why the backend could not be given what comes before the relay (the access log's
/// error).
#[derive(Debug, thiserror::Error)]
enum OpeningFailed {
    /// The PROXY header could not be built or written.
    #[error("{0}")]
    ProxyHeader(String),
    /// A native client's first bytes could not be written.
    #[error("cannot write the flow's first bytes to the backend")]
    FirstBytes,
}

impl OpeningFailed {
    /// The access log's outcome, and the counter bumped.
    fn outcome<'c>(&self, counters: &'c ServerCounters) -> (&'static str, &'c AtomicU64) {
        match self {
            Self::ProxyHeader(_) => ("proxy_header_failed", &counters.proxy_header_failures),
            Self::FirstBytes => ("backend_write_failed", &counters.outcome_error_outbound),
        }
    }
}

/// Writes what the backend reads before the relay, each write bounded by the connect
/// timeout: the PROXY header (`addresses`: source, destination), then a native client's
/// first bytes. Either failing refuses the flow the same way.
async fn write_opening(
    tcp: &mut TcpStream,
    plan: &Plan<'_>,
    (source, destination): (SocketAddr, SocketAddr),
    service: &ServiceId,
    first_bytes: &[u8],
) -> Result<(), OpeningFailed> {
    let header = proxy_header::header(plan.proxy_protocol, source, destination, service)
        .map_err(|e| OpeningFailed::ProxyHeader(e.to_string()))?;
    if let Some(h) = header {
        let written = tokio::time::timeout(plan.connect_timeout, tcp.write_all(&h)).await;
        if !matches!(written, Ok(Ok(()))) {
            let detail = "cannot write the PROXY header".to_owned();
            return Err(OpeningFailed::ProxyHeader(detail));
        }
    }
    if !first_bytes.is_empty() {
        let written = tokio::time::timeout(plan.connect_timeout, tcp.write_all(first_bytes)).await;
        if !matches!(written, Ok(Ok(()))) {
            return Err(OpeningFailed::FirstBytes);
        }
    }
    Ok(())
}

/// Connects to the plan's backend: one address, or the pool's choice with up to `retries`
/// further attempts, each on a backend this flow has not tried.
async fn connect(
    plan: &Plan<'_>,
    peer: SocketAddr,
    counters: &ServerCounters,
) -> io::Result<Connected> {
    let timeout = plan.connect_timeout;
    match &plan.upstream {
        Upstream::Address(addr) => {
            ServerCounters::bump(&counters.connect_attempts);
            let tcp = connect_once(*addr, timeout, counters).await?;
            Ok(Connected {
                tcp,
                addr: *addr,
                _lease: None,
            })
        }
        Upstream::Pool { pool, retries } => {
            if pool.is_empty() {
                // The first DNS answer may still be on its way.
                pool.wait_ready(timeout).await;
            }
            let key = hash_addr(peer);
            let mut tried: Vec<u64> = Vec::new();
            let mut last: Option<io::Error> = None;
            for attempt in 0..=*retries {
                let Some(lease) = pool.pick(key, &tried, Instant::now()) else {
                    break;
                };
                if attempt > 0 {
                    ServerCounters::bump(&counters.retries);
                }
                ServerCounters::bump(&counters.connect_attempts);
                match connect_once(lease.addr(), timeout, counters).await {
                    Ok(tcp) => {
                        lease.succeeded();
                        return Ok(Connected {
                            tcp,
                            addr: lease.addr(),
                            _lease: Some(lease),
                        });
                    }
                    Err(e) => {
                        lease.failed();
                        tracing::debug!(service = %pool.service(), backend = %lease.addr(), error = %e, attempt, "backend connect failed");
                        tried.push(lease.id());
                        last = Some(io::Error::new(e.kind(), format!("{}: {e}", lease.addr())));
                    }
                }
            }
            Err(last
                .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no backend available")))
        }
    }
}

async fn connect_once(
    addr: SocketAddr,
    timeout: Duration,
    counters: &ServerCounters,
) -> io::Result<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => {
            // The relay writes what it reads as it reads it: Nagle would only add latency.
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        Ok(Err(e)) => {
            ServerCounters::bump(&counters.connect_failures);
            Err(e)
        }
        Err(_) => {
            ServerCounters::bump(&counters.connect_timeouts);
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {timeout:?}"),
            ))
        }
    }
}

/// Resets a flow that is not relayed and logs why (access-log target: one line per flow).
fn refused(
    serval: &ServalStream,
    peer: SocketAddr,
    service: &ServiceId,
    via: &str,
    outcome: &str,
    error: &str,
) {
    serval.abort();
    tracing::info!(
        target: ACCESS_LOG_TARGET,
        role = "server",
        via,
        peer = %peer,
        service = %service,
        outcome,
        error,
        "flow refused"
    );
}

impl ServerCounters {
    pub(crate) fn refused(&self, why: &RefusalReason) {
        use crate::policy::ServerRefusal as R;
        let c = match why {
            RefusalReason::Policy(R::NoService(_)) => &self.refused_no_service,
            RefusalReason::Policy(R::NotLegacyAddress(_)) => &self.refused_not_legacy_address,
            RefusalReason::Policy(R::BadDestination(_)) => &self.refused_bad_destination,
            RefusalReason::Policy(R::NotAllowed(_)) => &self.refused_not_allowed,
            RefusalReason::Limit(LimitRefusal::ListenerFull) => &self.refused_service_full,
            RefusalReason::Limit(LimitRefusal::GlobalFull) => &self.refused_global_full,
            RefusalReason::Limit(LimitRefusal::Draining) => &self.refused_draining,
        };
        Self::bump(c);
    }
}
