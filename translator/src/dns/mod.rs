//! The client role's DNS responder: names the policy maps get synthetic addresses, every
//! other name is forwarded.
//!
//! Point the legacy hosts' resolver at `client.dns.listen` (UDP and TCP) and redirect the
//! synthetic pool to a redirect/tproxy listener; a connection to a synthetic address is
//! mapped back to its name's service by the client role through [`Pool`] (a
//! [`SyntheticNames`](crate::policy::SyntheticNames)).
//!
//! | query | answer |
//! |---|---|
//! | A / AAAA for a name of `client.dns.names` | the name's address from `pool_v4` / `pool_v6` ([`Pool`]), TTL `client.dns.ttl`, authoritative |
//! | A / AAAA for such a name without a pool of that family | NOERROR, no answer (NODATA): the name exists, it has no address of that family |
//! | any other type for such a name | NODATA: the name exists only as addresses |
//! | a mapped name while the pool is full of names in use | SERVFAIL (the client retries; counted) |
//! | anything else | forwarded to `client.dns.upstream` with `hickory-resolver` (cached, CNAME chains kept, NXDOMAIN and its SOA passed on); REFUSED when no upstream is configured |
//! | zone transfers, non-IN classes, opcodes other than QUERY | REFUSED / NOTIMP |
//!
//! **Bounds.** Forwarded queries in flight are limited to [`MAX_FORWARDS`]; past that the
//! responder answers SERVFAIL at once instead of queueing (counted as `busy`). Synthetic
//! answers take a short lock and no I/O. Each UDP query is one short task in
//! `hickory-server`; a TCP connection is served one query at a time and closed after
//! [`TCP_TIMEOUT`] without a query.
//!
//! **Reload.** Names, TTL and pools are taken from every new policy ([`Pool::reconfigure`]).
//! A new `listen` address is bound before the old sockets close (if it cannot be bound the
//! old ones stay and the error is logged); new `upstream` servers replace the forwarder.
//!
//! **Drain.** When `drain` turns true the sockets close, queries in progress get
//! [`SHUTDOWN_WAIT`] to be answered, and [`serve`] returns.
//!
//! hickory-server logs one INFO line per query on target `hickory_server`; a policy with
//! `log.level: info` may want `info,hickory_server=warn`.

mod pool;

use core::net::SocketAddr;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use std::io;
use std::sync::{Arc, PoisonError, RwLock};

use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError, NetError};
use hickory_server::Server;
use hickory_server::net::runtime::{Time, TokioTime};
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA};
use hickory_server::proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Semaphore, watch};

pub use pool::{AssignError, MAX_BINDINGS, Pool, PoolStats};

use crate::config::Config;
use crate::config::model::DnsResponder;

/// Most forwarded queries in flight at once.
pub const MAX_FORWARDS: usize = 256;

/// A TCP connection with no query for this long is closed.
pub const TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long queries in progress get to be answered when the responder stops or moves.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Largest UDP answer advertised (EDNS): the DNS flag day 2020 value, which avoids IP
/// fragmentation on every common path.
const MAX_UDP_PAYLOAD: u16 = 1232;

macro_rules! counters {
    ($($(#[doc = $doc:literal])+ $name:ident,)*) => {
        /// The responder's live counters; read them with [`DnsCounters::snapshot`].
        #[derive(Debug, Default)]
        pub struct DnsCounters {
            $($name: AtomicU64,)*
        }

        /// A snapshot of the responder's counters.
        #[non_exhaustive]
        #[derive(Default, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
        pub struct DnsStats {
            $($(#[doc = $doc])+ pub $name: u64,)*
        }

        impl DnsCounters {
            /// The current values.
            pub fn snapshot(&self) -> DnsStats {
                DnsStats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Queries received.
    queries,
    /// A/AAAA answered with a synthetic address.
    synthetic,
    /// Mapped names answered with no data (other types, or no pool of the family).
    nodata,
    /// Mapped names answered SERVFAIL because the pool was full.
    pool_full,
    /// Queries forwarded upstream.
    forwarded,
    /// Forwarded queries answered NXDOMAIN or NODATA by upstream.
    forwarded_negative,
    /// Forwarded queries that failed (timeouts, upstream errors): SERVFAIL.
    forward_failures,
    /// Queries refused: not mapped and no upstream, zone transfers, other classes.
    refused,
    /// Malformed or unsupported requests (FORMERR, NOTIMP).
    malformed,
    /// Forwards refused because [`MAX_FORWARDS`] were in flight: SERVFAIL.
    busy,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The forwarder for `servers`: a caching stub resolver asking them (UDP, TCP when an
/// answer is truncated), no search domains, no hosts file.
fn forwarder(servers: &[SocketAddr]) -> io::Result<TokioResolver> {
    let mut builder = crate::server::resolve::stub_builder(servers);
    let o = builder.options_mut();
    o.preserve_intermediates = true;
    o.recursion_desired = true;
    o.ndots = 0;
    builder
        .build()
        .map_err(|e| io::Error::other(format!("dns responder: cannot build the forwarder: {e}")))
}

#[derive(Clone)]
struct Upstream {
    servers: Vec<SocketAddr>,
    resolver: Option<TokioResolver>,
}

/// What the request handler shares with [`serve`].
struct Responder {
    pool: Arc<Pool>,
    upstream: RwLock<Upstream>,
    forwards: Semaphore,
    counters: Arc<DnsCounters>,
}

impl Responder {
    fn upstream(&self) -> Option<TokioResolver> {
        self.upstream
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .resolver
            .clone()
    }

    fn set_upstream(&self, servers: &[SocketAddr]) -> io::Result<()> {
        let current = self
            .upstream
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .servers
            .clone();
        if current == servers {
            return Ok(());
        }
        let resolver = if servers.is_empty() {
            None
        } else {
            Some(forwarder(servers)?)
        };
        *self
            .upstream
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Upstream {
            servers: servers.to_vec(),
            resolver,
        };
        Ok(())
    }
}

/// What one query gets back.
struct Answer {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Answer {
    fn code(code: ResponseCode) -> Self {
        Self {
            code,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

/// The request handler given to hickory-server.
struct Handler(Arc<Responder>);

impl Handler {
    async fn answer(&self, request: &Request) -> Answer {
        let r = &*self.0;
        bump(&r.counters.queries);
        if request.metadata.op_code != OpCode::Query {
            bump(&r.counters.malformed);
            return Answer::code(ResponseCode::NotImp);
        }
        let [query] = request.queries.queries() else {
            bump(&r.counters.malformed);
            return Answer::code(ResponseCode::FormErr);
        };
        let qtype = query.query_type();
        let original = query.original();
        if original.query_class() != DNSClass::IN
            || matches!(qtype, RecordType::AXFR | RecordType::IXFR)
        {
            bump(&r.counters.refused);
            return Answer::code(ResponseCode::Refused);
        }
        let qname = original.name();
        let text = qname.to_ascii();
        if r.pool.maps(&text) {
            return self.synthetic(&text, qname, qtype);
        }
        let Some(resolver) = r.upstream() else {
            bump(&r.counters.refused);
            return Answer::code(ResponseCode::Refused);
        };
        let Ok(_permit) = r.forwards.try_acquire() else {
            bump(&r.counters.busy);
            return Answer::code(ResponseCode::ServFail);
        };
        bump(&r.counters.forwarded);
        let mut name = qname.clone();
        name.set_fqdn(true);
        match resolver.lookup(name, qtype).await {
            Ok(lookup) => Answer {
                code: ResponseCode::NoError,
                authoritative: false,
                answers: lookup.answers().to_vec(),
                authorities: lookup.authorities().to_vec(),
                additionals: lookup.additionals().to_vec(),
            },
            Err(NetError::Dns(DnsError::NoRecordsFound(no))) => {
                bump(&r.counters.forwarded_negative);
                let mut a = Answer::code(no.response_code);
                if let Some(soa) = no.soa {
                    a.authorities.push(soa.into_record_of_rdata());
                }
                a
            }
            Err(NetError::Dns(DnsError::ResponseCode(code))) => {
                bump(&r.counters.forward_failures);
                Answer::code(code)
            }
            Err(e) => {
                bump(&r.counters.forward_failures);
                tracing::debug!(name = %text, error = %e, "dns responder: forwarding failed");
                Answer::code(ResponseCode::ServFail)
            }
        }
    }

    fn synthetic(
        &self,
        text: &str,
        qname: &hickory_server::proto::rr::Name,
        qtype: RecordType,
    ) -> Answer {
        let r = &*self.0;
        let v6 = match qtype {
            RecordType::A => false,
            RecordType::AAAA => true,
            _ => {
                bump(&r.counters.nodata);
                let mut a = Answer::code(ResponseCode::NoError);
                a.authoritative = true;
                return a;
            }
        };
        let mut a = Answer::code(ResponseCode::NoError);
        a.authoritative = true;
        match r.pool.assign(text, v6) {
            Ok(ip) => {
                bump(&r.counters.synthetic);
                let ttl = u32::try_from(r.pool.ttl().as_secs()).unwrap_or(u32::MAX);
                let data = match ip {
                    core::net::IpAddr::V4(v4) => RData::A(A(v4)),
                    core::net::IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                };
                a.answers.push(Record::from_rdata(qname.clone(), ttl, data));
            }
            Err(AssignError::NoPool) => bump(&r.counters.nodata),
            Err(AssignError::Full) => {
                bump(&r.counters.pool_full);
                tracing::warn!(name = %text, "dns responder: synthetic pool full of names in use");
                a.code = ResponseCode::ServFail;
                a.authoritative = false;
            }
            Err(AssignError::NotMapped(_)) => {
                // The policy changed between `maps` and `assign`.
                a.code = ResponseCode::Refused;
                a.authoritative = false;
                bump(&r.counters.refused);
            }
        }
        a
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let answer = self.answer(request).await;
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = answer.code;
        metadata.authoritative = answer.authoritative;
        metadata.recursion_available = self.0.upstream().is_some();
        let edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            e.set_version(0);
            e
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let response = builder.build(
            metadata,
            answer.answers.iter(),
            answer.authorities.iter(),
            core::iter::empty(),
            answer.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "dns responder: cannot send the answer");
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// Options of [`serve_with`].
#[derive(Debug, Clone, Default)]
pub struct DnsOptions {
    counters: Option<Arc<DnsCounters>>,
}

impl DnsOptions {
    /// The defaults (fresh counters).
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts into `counters`.
    #[must_use]
    pub fn counters(mut self, counters: Arc<DnsCounters>) -> Self {
        self.counters = Some(counters);
        self
    }
}

/// Runs the DNS responder of the policies on `config` until `drain` turns true (or its
/// sender goes away); see the module docs. Errors: the first policy's `listen` address
/// cannot be bound (UDP or TCP), or its forwarder cannot be built.
pub async fn serve(
    pool: Arc<Pool>,
    config: watch::Receiver<Arc<Config>>,
    drain: watch::Receiver<bool>,
) -> io::Result<()> {
    serve_with(pool, config, drain, DnsOptions::default()).await
}

/// [`serve`] with shared counters.
pub async fn serve_with(
    pool: Arc<Pool>,
    mut config: watch::Receiver<Arc<Config>>,
    mut drain: watch::Receiver<bool>,
    options: DnsOptions,
) -> io::Result<()> {
    let responder = Arc::new(Responder {
        pool,
        upstream: RwLock::new(Upstream {
            servers: Vec::new(),
            resolver: None,
        }),
        forwards: Semaphore::new(MAX_FORWARDS),
        counters: options.counters.unwrap_or_default(),
    });
    let first = config.borrow_and_update().clone();
    let mut running: Option<(SocketAddr, Server<Handler>)> = None;
    if let Some(dns) = settings(&first) {
        responder.pool.reconfigure(dns);
        responder.set_upstream(&dns.upstream)?;
        running = Some((dns.listen, start(dns.listen, &responder).await?));
        tracing::info!(listen = %dns.listen, upstream = ?dns.upstream, "dns responder listening");
    } else {
        tracing::warn!("the policy has no client.dns section: the DNS responder is idle");
    }
    let mut config_open = true;
    loop {
        tokio::select! {
            biased;
            () = drained(&mut drain) => break,
            changed = config.changed(), if config_open => {
                if changed.is_err() {
                    config_open = false;
                    continue;
                }
                let next = config.borrow_and_update().clone();
                let Some(dns) = settings(&next) else {
                    tracing::warn!("reloaded policy has no client.dns section: the DNS responder keeps its settings");
                    continue;
                };
                responder.pool.reconfigure(dns);
                if let Err(e) = responder.set_upstream(&dns.upstream) {
                    tracing::error!(error = %e, "dns responder: keeping the previous upstream");
                }
                if running.as_ref().map(|(a, _)| *a) != Some(dns.listen) {
                    match start(dns.listen, &responder).await {
                        Ok(server) => {
                            if let Some((old, mut server)) = running.replace((dns.listen, server)) {
                                stop(&mut server).await;
                                tracing::info!(from = %old, to = %dns.listen, "dns responder moved");
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "dns responder: keeping the previous address"),
                    }
                }
            },
            done = wait(&mut running) => {
                // The server's sockets failed: nothing more will be answered.
                let e = done.err().map_or_else(|| "stopped".to_owned(), |e| e.to_string());
                return Err(io::Error::other(format!("dns responder stopped: {e}")));
            },
        }
    }
    if let Some((_, mut server)) = running.take() {
        stop(&mut server).await;
    }
    tracing::info!("dns responder stopped");
    Ok(())
}

/// Answers one raw UDP query without sockets, exactly as the running responder would with
/// no upstream configured (so every name the policy does not map is REFUSED): the bytes are
/// decoded as hickory-server decodes them, [`RequestHandler::handle_request`] runs on them,
/// and the answer is encoded with the UDP size limit hickory-server applies. `None` when the
/// bytes are not a decodable request (hickory-server answers those FORMERR or drops them
/// before the handler sees them). The entry point of the `dns_query` fuzz target.
pub async fn answer_bytes(
    pool: Arc<Pool>,
    counters: Arc<DnsCounters>,
    query: &[u8],
) -> Option<Vec<u8>> {
    let src = SocketAddr::from(([127, 0, 0, 1], 53_000));
    let request = Request::from_bytes(query.to_vec(), src, Protocol::Udp).ok()?;
    let handler = Handler(Arc::new(Responder {
        pool,
        upstream: RwLock::new(Upstream {
            servers: Vec::new(),
            resolver: None,
        }),
        forwards: Semaphore::new(MAX_FORWARDS),
        counters,
    }));
    let capture = Capture::default();
    handler
        .handle_request::<_, TokioTime>(&request, capture.clone())
        .await;
    capture
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
}

/// A [`ResponseHandler`] keeping the encoded answer (for [`answer_bytes`]).
#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Option<Vec<u8>>>>);

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // hickory-server's UDP limit: the EDNS payload size, else RFC 1035's 512 bytes.
        let max = response.edns().map_or(512, |e| e.max_payload());
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = response.destructive_emit(&mut encoder)?;
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(bytes);
        Ok(info)
    }
}

/// Resolves when `drain` turns true or its sender is gone (nobody can stop us otherwise).
/// Returns nothing: the receiver's guard must not live across the caller's awaits.
async fn drained(drain: &mut watch::Receiver<bool>) {
    let _ = drain.wait_for(|d| *d).await;
}

fn settings(config: &Config) -> Option<&DnsResponder> {
    config.client.as_ref()?.dns.as_ref()
}

/// Binds UDP and TCP at `listen` and starts answering.
async fn start(listen: SocketAddr, responder: &Arc<Responder>) -> io::Result<Server<Handler>> {
    let context = |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("dns responder: cannot bind {what} {listen}: {e}"),
        )
    };
    let udp = UdpSocket::bind(listen)
        .await
        .map_err(|e| context("UDP", e))?;
    let tcp = TcpListener::bind(listen)
        .await
        .map_err(|e| context("TCP", e))?;
    let mut server = Server::new(Handler(responder.clone()));
    server.register_socket(udp);
    server.register_listener(tcp, TCP_TIMEOUT, 32);
    Ok(server)
}

/// Closes the sockets and waits (bounded) for queries in progress.
async fn stop(server: &mut Server<Handler>) {
    if tokio::time::timeout(SHUTDOWN_WAIT, server.shutdown_gracefully())
        .await
        .is_err()
    {
        tracing::warn!("dns responder: queries still in progress after {SHUTDOWN_WAIT:?}; dropped");
    }
}

/// Resolves when the running server ends by itself; never without one.
async fn wait(running: &mut Option<(SocketAddr, Server<Handler>)>) -> Result<(), NetError> {
    match running {
        Some((_, server)) => server.block_until_done().await,
        None => core::future::pending().await,
    }
}

#[cfg(test)]
pub(crate) mod tests;
