//! The client translator's DNS responder (`dns::answer_bytes`: hickory-server's request
//! decoding, the responder's handler, the answer's encoding) on arbitrary UDP payloads.
//!
//! One small pool (a /28 and a /124) lives across runs, so bindings accumulate as the
//! fuzzer invents names. Invariants: no panic; an answer fits the largest UDP payload the
//! responder advertises, decodes, and carries the query's id; the pool never holds more
//! bindings than its blocks have addresses.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use translator::dns::{DnsCounters, Pool, answer_bytes};

/// Usable addresses: 14 in the /28 (no network, no broadcast), 15 in the /124.
const CAPACITY: u64 = 14 + 15;

const POLICY: &str = r#"
serval: {routers: ["192.0.2.1:54325"]}
client:
  listeners:
    - {name: names, listen: "127.0.0.1:1", mode: redirect}
  dns:
    listen: "127.0.0.1:5353"
    names:
      - match: "pinned.example.com"
        service: "16385"
      - match: "*.example.com"
    pool_v4: 198.18.0.0/28
    pool_v6: "fd53:7276:616c::/124"
    ttl: 20s
"#;

struct State {
    runtime: tokio::runtime::Runtime,
    pool: Arc<Pool>,
    counters: Arc<DnsCounters>,
}

static STATE: LazyLock<State> = LazyLock::new(|| {
    let loaded = translator::config::parse(POLICY, "fuzz.yaml", &HashMap::<String, String>::new())
        .unwrap_or_else(|e| panic!("{}", e.render()));
    let dns = loaded
        .config
        .client
        .as_ref()
        .and_then(|c| c.dns.as_ref())
        .expect("policy has client.dns");
    State {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime"),
        pool: Arc::new(Pool::new(dns)),
        counters: Arc::default(),
    }
});

fuzz_target!(|data: &[u8]| {
    let s = &*STATE;
    let answer = s
        .runtime
        .block_on(answer_bytes(s.pool.clone(), s.counters.clone(), data));
    if let Some(bytes) = answer {
        assert!(bytes.len() <= 1232, "answer of {} bytes", bytes.len());
        let m = hickory_server::proto::op::Message::from_vec(&bytes).expect("the answer decodes");
        assert_eq!(m.metadata.id, u16::from_be_bytes([data[0], data[1]]));
    }
    assert!(s.pool.stats().bindings <= CAPACITY);
});
