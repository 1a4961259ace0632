//! The DNS responder on loopback: synthetic answers mapped back through the pool and the
//! client policy, forwarding to a fake upstream, TCP, reload and drain. Every wait is
//! bounded; nothing sleeps to synchronise.

use core::net::{IpAddr, SocketAddr};
use core::sync::atomic::AtomicUsize;
use std::collections::HashMap;
use std::sync::Mutex;

use hickory_server::proto::op::{Message, MessageType, Query};
use hickory_server::proto::rr::Name;
use hickory_server::proto::rr::rdata::SOA;
use serval_stack::wire::{ServiceId, name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::*;
use crate::config::parse;
use crate::policy::{ClientPolicy, Via};

const LIMIT: Duration = Duration::from_secs(30);

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

/// Name → (records, TTL).
type Table = Arc<Mutex<HashMap<String, (Vec<RData>, u32)>>>;

/// A tiny authoritative DNS server over UDP answering from a table the test fills;
/// unknown names get NXDOMAIN with an SOA.
pub(crate) struct FakeUpstream {
    pub(crate) addr: SocketAddr,
    records: Table,
    pub(crate) queries: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    pub(crate) async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let records: Table = Arc::default();
        let queries = Arc::new(AtomicUsize::new(0));
        let (table, count) = (records.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                count.fetch_add(1, Ordering::Relaxed);
                let mut r = Message::response(q.metadata.id, OpCode::Query);
                r.metadata.recursion_desired = q.metadata.recursion_desired;
                r.metadata.recursion_available = true;
                r.metadata.authoritative = true;
                for query in &q.queries {
                    r.add_query(query.clone());
                    let key = query
                        .name()
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase();
                    let found = table.lock().unwrap().get(&key).cloned();
                    match found {
                        Some((data, ttl)) => {
                            for d in data
                                .into_iter()
                                .filter(|d| d.record_type() == query.query_type())
                            {
                                r.add_answer(Record::from_rdata(query.name().clone(), ttl, d));
                            }
                        }
                        None => {
                            r.metadata.response_code = ResponseCode::NXDomain;
                            let zone = Name::from_ascii("test.").unwrap();
                            let soa = SOA::new(
                                Name::from_ascii("ns.test.").unwrap(),
                                Name::from_ascii("admin.test.").unwrap(),
                                1,
                                3600,
                                600,
                                86400,
                                60,
                            );
                            r.add_authority(Record::from_rdata(zone, 60, RData::SOA(soa)));
                        }
                    }
                }
                if let Ok(bytes) = r.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        Self {
            addr,
            records,
            queries,
            task,
        }
    }

    pub(crate) fn set_a(&self, name: &str, addrs: &[&str], ttl: u32) {
        let data = addrs
            .iter()
            .map(|a| match a.parse::<IpAddr>().unwrap() {
                IpAddr::V4(v4) => RData::A(A(v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
            })
            .collect();
        self.records
            .lock()
            .unwrap()
            .insert(name.to_owned(), (data, ttl));
    }
}

fn query_message(name: &str, rtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m.to_vec().unwrap()
}

/// One query over UDP.
async fn ask(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(&query_message(name, rtype), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = within("answer", s.recv_from(&mut buf)).await.unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, 0x4242);
    m
}

/// One query over TCP (two-byte length framing).
async fn ask_tcp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let mut s = within("connect", TcpStream::connect(server)).await.unwrap();
    let q = query_message(name, rtype);
    let mut framed = u16::try_from(q.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    within("answer", s.read_exact(&mut len)).await.unwrap();
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    within("answer", s.read_exact(&mut body)).await.unwrap();
    Message::from_vec(&body).unwrap()
}

/// A port free for both UDP and TCP on loopback.
async fn free_port() -> SocketAddr {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = u.local_addr().unwrap();
        if TcpListener::bind(a).await.is_ok() {
            return a;
        }
    }
}

fn policy(listen: SocketAddr, upstream: Option<SocketAddr>, extra: &str) -> Arc<Config> {
    let upstream = upstream.map_or(String::new(), |u| format!("    upstream: [\"{u}\"]\n"));
    let text = format!(
        r#"
serval: {{routers: ["192.0.2.1:54325"]}}
client:
  listeners:
    - {{name: names, listen: "127.0.0.1:1", mode: redirect}}
  dns:
    listen: "{listen}"
    names:
      - match: "pinned.example.com"
        service: "16385"
      - match: "*.example.com"
    pool_v4: 198.18.0.0/15
    pool_v6: "fd53:7276:616c::/64"
    ttl: 20s
{upstream}{extra}"#
    );
    match parse(&text, "test.yaml", &HashMap::<String, String>::new()) {
        Ok(l) => Arc::new(l.config),
        Err(e) => panic!("{}", e.render()),
    }
}

struct Running {
    pool: Arc<Pool>,
    config: watch::Sender<Arc<Config>>,
    drain: watch::Sender<bool>,
    counters: Arc<DnsCounters>,
    task: JoinHandle<io::Result<()>>,
}

/// Starts the responder and waits until it answers.
async fn run(config: Arc<Config>) -> Running {
    let dns = config.client.as_ref().unwrap().dns.as_ref().unwrap();
    let listen = dns.listen;
    let pool = Arc::new(Pool::new(dns));
    let (config_tx, config_rx) = watch::channel(config);
    let (drain_tx, drain_rx) = watch::channel(false);
    let counters = Arc::new(DnsCounters::default());
    let task = tokio::spawn(serve_with(
        pool.clone(),
        config_rx,
        drain_rx,
        DnsOptions::new().counters(counters.clone()),
    ));
    // The sockets are bound before `serve_with` first yields to its loop; a TCP connect
    // proves they are.
    within("responder up", async {
        while TcpStream::connect(listen).await.is_err() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    Running {
        pool,
        config: config_tx,
        drain: drain_tx,
        counters,
        task,
    }
}

fn first_ip(m: &Message) -> IpAddr {
    match &m.answers[0].data {
        RData::A(a) => IpAddr::V4(a.0),
        RData::AAAA(a) => IpAddr::V6(a.0),
        other => panic!("not an address: {other:?}"),
    }
}

#[tokio::test]
async fn policy_names_get_pool_addresses_that_map_back_to_their_service() {
    let listen = free_port().await;
    let config = policy(listen, None, "");
    let r = run(config.clone()).await;

    let a = ask(listen, "API.example.com.", RecordType::A).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.metadata.authoritative);
    assert_eq!(a.answers.len(), 1);
    assert_eq!(a.answers[0].ttl, 20);
    let ip = first_ip(&a);
    let dns = config.client.as_ref().unwrap().dns.as_ref().unwrap();
    assert!(dns.pool_v4.unwrap().contains(ip), "{ip}");

    let aaaa = ask(listen, "api.example.com.", RecordType::AAAA).await;
    let ip6 = first_ip(&aaaa);
    assert!(dns.pool_v6.unwrap().contains(ip6), "{ip6}");

    // The client role maps a connection to the address back to the name's service.
    let client = ClientPolicy::new(config.client.as_ref().unwrap());
    let l = client.listener("names").unwrap();
    let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let want = name::service_id_for_name("api.example.com").unwrap();
    for dst in [ip, ip6] {
        let d = client
            .decide(l, local, Some(SocketAddr::new(dst, 443)), &*r.pool)
            .unwrap();
        assert_eq!(d.service, want);
        assert_eq!(
            d.via,
            Via::Name {
                name: "api.example.com".into(),
                entry: 1
            }
        );
    }
    let pinned = first_ip(&ask(listen, "pinned.example.com.", RecordType::A).await);
    assert_eq!(r.pool.service_of(pinned), Some(ServiceId::from_u32(16385)));

    // Other types of a mapped name: NODATA. Other names without upstream: REFUSED.
    let mx = ask(listen, "api.example.com.", RecordType::MX).await;
    assert_eq!(mx.metadata.response_code, ResponseCode::NoError);
    assert!(mx.answers.is_empty());
    let other = ask(listen, "www.example.org.", RecordType::A).await;
    assert_eq!(other.metadata.response_code, ResponseCode::Refused);

    // TCP answers the same.
    let t = ask_tcp(listen, "api.example.com.", RecordType::A).await;
    assert_eq!(first_ip(&t), ip);

    let s = r.counters.snapshot();
    assert_eq!((s.synthetic, s.nodata, s.refused), (4, 1, 1));
    r.drain.send_replace(true);
    within("serve returns", r.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn other_names_are_forwarded_upstream() {
    let upstream = FakeUpstream::start().await;
    upstream.set_a("legacy.test", &["192.0.2.7"], 60);
    let listen = free_port().await;
    let r = run(policy(listen, Some(upstream.addr), "")).await;

    let a = ask(listen, "legacy.test.", RecordType::A).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(!a.metadata.authoritative);
    assert!(a.metadata.recursion_available);
    assert_eq!(first_ip(&a), "192.0.2.7".parse::<IpAddr>().unwrap());

    let nx = ask(listen, "missing.test.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        nx.authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA),
        "the SOA comes along for negative caching"
    );

    // Mapped names are still answered locally.
    let mapped = ask(listen, "www.example.com.", RecordType::A).await;
    assert!(mapped.metadata.authoritative);

    let s = r.counters.snapshot();
    assert_eq!((s.forwarded, s.forwarded_negative, s.synthetic), (2, 1, 1));
    assert!(upstream.queries.load(Ordering::Relaxed) >= 2);
    r.drain.send_replace(true);
    within("serve returns", r.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn reload_moves_the_responder_and_takes_new_names() {
    let first = free_port().await;
    let r = run(policy(first, None, "")).await;
    let second = free_port().await;
    let mut next = (*policy(second, None, "")).clone();
    if let Some(d) = next.client.as_mut().and_then(|c| c.dns.as_mut()) {
        d.names
            .retain(|n| n.pattern.to_string() == "pinned.example.com");
    }
    r.config.send_replace(Arc::new(next));
    within("moved", async {
        while TcpStream::connect(second).await.is_err() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let gone = ask(second, "www.example.com.", RecordType::A).await;
    assert_eq!(
        gone.metadata.response_code,
        ResponseCode::Refused,
        "no longer mapped"
    );
    let kept = ask(second, "pinned.example.com.", RecordType::A).await;
    assert_eq!(kept.answers.len(), 1);
    r.drain.send_replace(true);
    within("serve returns", r.task).await.unwrap().unwrap();
    // Both addresses are closed after the drain.
    assert!(TcpStream::connect(second).await.is_err());
    assert!(TcpStream::connect(first).await.is_err());
}

/// The socket-free entry point (the `dns_query` fuzz target's) answers as the server does
/// with no upstream: synthetic addresses from the pool, REFUSED for other names, nothing for
/// bytes that are not a request.
#[tokio::test]
async fn answer_bytes_answers_without_sockets() {
    // Never bound: answer_bytes uses no socket.
    let config = policy("127.0.0.1:2".parse().unwrap(), None, "");
    let pool = Arc::new(Pool::new(settings(&config).unwrap()));
    let counters = Arc::new(DnsCounters::default());
    let ask = |name: &str, t: RecordType| {
        let (pool, counters, q) = (pool.clone(), counters.clone(), query_message(name, t));
        async move {
            let bytes = answer_bytes(pool, counters, &q).await.unwrap();
            assert!(bytes.len() <= 512);
            Message::from_vec(&bytes).unwrap()
        }
    };
    let m = ask("www.example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        pool.name_at(first_ip(&m), tokio::time::Instant::now())
            .as_deref(),
        Some("www.example.com")
    );
    let m = ask("other.org.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(
        answer_bytes(pool.clone(), counters.clone(), b"short")
            .await
            .is_none()
    );
    assert_eq!(counters.snapshot().synthetic, 1);
}
