//! The client translator and the router role, through `run::Translator` (the production
//! path), against native Serval servers: every test is in-process on loopback with real
//! TCP and UDP sockets; transfers are checked by SHA-256; waits are bounded and poll
//! conditions, never sleep for synchronisation.

#![allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING.md)

mod common;

use core::net::SocketAddr;

use common::*;
use serval_stack::wire::{ServicePrefix, name};
use translator::run::{ReloadError, Translator};

fn prefix(n: &str) -> ServicePrefix {
    ServicePrefix::exact(name::service_id_for_name(n).unwrap())
}

fn client_policy(router: SocketAddr, listen: SocketAddr, svc: &str) -> String {
    format!(
        "serval: {{bind: 127.0.0.1:0, routers: [\"{router}\"]}}\nclient:\n  connect_timeout: 5s\n  listeners:\n    - name: web\n      listen: \"{listen}\"\n      service: \"name:{svc}\"\n"
    )
}

fn listener(t: &Translator, name: &str) -> SocketAddr {
    t.client().unwrap().listener_addr(name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_translator_reaches_a_native_serval_server_through_the_router() {
    let router = router();
    let _a = NativeServer::start(router.serval_addr(), prefix("svc.test"), "A")
        .await
        .serve();
    let port = reserve();
    let client = start(&client_policy(
        router.serval_addr(),
        port.addr(),
        "svc.test",
    ));
    let listen = listener(&client, "web");
    assert_eq!(listen, port.addr());

    let x = tokio::time::timeout(WAIT, exchange(listen, 3 << 20, 2 << 20))
        .await
        .unwrap()
        .unwrap();
    x.assert_exact(2 << 20);
    assert_eq!(x.tag, "A");

    until("the relay finished", || {
        client.client().unwrap().stats().outcomes.finished == 1
    })
    .await;
    let stats = client.client().unwrap().stats();
    assert_eq!(stats.relayed, 1);
    assert_eq!(stats.bytes_to_service, 8 + (3 << 20));
    assert!(stats.bytes_to_client > 2 << 20);
    let report = client.drain().await;
    assert!(report.clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_nobody_registered_is_refused_with_a_reset() {
    let router = router();
    let port = reserve();
    let client = start(&client_policy(
        router.serval_addr(),
        port.addr(),
        "nobody.test",
    ));
    assert!(refused(listener(&client, "web")).await);
    let s = client.client().unwrap().stats();
    assert_eq!(s.connect_failed.refused, 1, "{s:?}");
    assert_eq!(s.relayed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interception_listeners_refuse_connections_that_were_not_intercepted() {
    let router = router();
    let (p1, p2) = (reserve(), reserve());
    let mut yaml = format!(
        "serval: {{bind: 127.0.0.1:0, routers: [\"{}\"]}}\nclient:\n  listeners:\n    - name: nat\n      listen: \"{}\"\n      mode: redirect\n",
        router.serval_addr(),
        p1.addr()
    );
    // TPROXY needs CAP_NET_ADMIN; test it where the process has it.
    let tproxy = translator::client::socket::bind(
        "127.0.0.1:0".parse().unwrap(),
        translator::config::model::ListenMode::Tproxy,
    )
    .is_ok();
    if tproxy {
        yaml.push_str(&format!(
            "    - name: tp\n      listen: \"{}\"\n      mode: tproxy\n",
            p2.addr()
        ));
    }
    yaml.push_str("  rules:\n    - destination: 10.0.0.0/8\n      legacy_tag: 8080\n");
    let client = start(&yaml);
    assert!(refused(listener(&client, "nat")).await);
    let mut want = 1;
    if tproxy {
        assert!(refused(listener(&client, "tp")).await);
        want += 1;
    }
    let s = client.client().unwrap().stats();
    assert_eq!(s.refused_policy.not_redirected, want, "{s:?}");
    assert_eq!(s.relayed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_at_its_connection_limit_resets_new_connections() {
    let router = router();
    let _a = NativeServer::start(router.serval_addr(), prefix("svc.test"), "A")
        .await
        .serve();
    let port = reserve();
    let yaml =
        client_policy(router.serval_addr(), port.addr(), "svc.test") + "      max_connections: 1\n";
    let client = start(&yaml);
    let listen = listener(&client, "web");
    let stats = || client.client().unwrap().stats();

    let held = Held::open(listen, 1 << 20, 1 << 20).await.unwrap();
    until("the first connection is relayed", || stats().relayed == 1).await;
    assert!(refused(listen).await, "over the limit");
    assert_eq!(stats().refused_listener_full, 1);

    let x = tokio::time::timeout(WAIT, held.finish())
        .await
        .unwrap()
        .unwrap();
    x.assert_exact(1 << 20);
    until("the first connection is closed", || stats().active == 0).await;
    let x = tokio::time::timeout(WAIT, exchange(listen, 1000, 1000))
        .await
        .unwrap()
        .unwrap();
    x.assert_exact(1000);
    assert_eq!(stats().relayed, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_flows_in_progress_and_maps_new_ones_by_the_new_policy() {
    let router = router();
    let r = router.serval_addr();
    let _a = NativeServer::start(r, prefix("a.test"), "A").await.serve();
    let _b = NativeServer::start(r, prefix("b.test"), "B").await.serve();
    let (web, api) = (reserve(), reserve());
    let (l, s) = loaded(&client_policy(r, web.addr(), "a.test"));
    let mut client = Translator::start(l, s).unwrap();
    let listen = listener(&client, "web");
    let stats = |c: &Translator| c.client().unwrap().stats();

    let held = Held::open(listen, 2 << 20, 2 << 20).await.unwrap();
    until("the held flow is relayed", || stats(&client).relayed == 1).await;

    // web now goes to b.test, and a second listener appears.
    let yaml = client_policy(r, web.addr(), "b.test")
        + &format!(
            "    - name: api\n      listen: \"{}\"\n      service: \"name:a.test\"\n",
            api.addr()
        );
    let (l, s) = loaded(&yaml);
    let report = client.reload(l, s).unwrap();
    assert_eq!(report.client.opened, vec![("api".to_owned(), api.addr())]);
    assert!(report.client.closed.is_empty());
    assert!(report.restart_needed.is_empty(), "{report:?}");

    let x = exchange(listen, 5000, 5000).await.unwrap();
    x.assert_exact(5000);
    assert_eq!(x.tag, "B", "a new flow uses the new mapping");
    let x = exchange(listener(&client, "api"), 10, 10).await.unwrap();
    assert_eq!(x.tag, "A");

    // The flow from before the reload finishes, byte-exact, at its old service.
    let x = tokio::time::timeout(WAIT, held.finish())
        .await
        .unwrap()
        .unwrap();
    x.assert_exact(2 << 20);
    assert_eq!(x.tag, "A");

    // An invalid policy file is refused with file:line:field, and the policy stays.
    let dir = std::env::temp_dir().join(format!("serval-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, format!("{yaml}relay: {{idle_timeout: 5}}\n")).unwrap();
    let err = client.reload_file(&bad, &env()).unwrap_err();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(matches!(err, ReloadError::Config(_)), "{err}");
    let text = err.render();
    assert!(
        text.contains("bad.yaml:") && text.contains("relay.idle_timeout"),
        "{text}"
    );
    assert_eq!(exchange(listen, 1, 1).await.unwrap().tag, "B");

    // A reload that would change the roles is refused.
    let (l, s) = loaded(&format!(
        "{yaml}router: {{keys: [{{id: 1, env: TEST_KEY}}]}}\n"
    ));
    assert!(matches!(
        client.reload(l, s).unwrap_err(),
        ReloadError::Roles { .. }
    ));

    // Removing the second listener closes it.
    let (l, s) = loaded(&client_policy(r, web.addr(), "b.test"));
    let report = client.reload(l, s).unwrap();
    assert_eq!(report.client.closed, vec![("api".to_owned(), api.addr())]);
    assert!(client.client().unwrap().listener_addr("api").is_none());
    drop(api);
    // The socket closes when its accept task is cancelled, promptly but not synchronously.
    wait_closed(report.client.closed[0].1).await;
    assert_eq!(exchange(listen, 1, 1).await.unwrap().tag, "B");
}

/// A router, a native server and a client translator with `drain.grace_period: grace`, and
/// one connection through them paused in the middle of its upload.
struct HeldFlow {
    _router: Translator,
    _server: tokio::task::JoinHandle<()>,
    client: Translator,
    listen: SocketAddr,
    held: Held,
}

async fn held_flow(grace: &str, down: u64) -> HeldFlow {
    let router = router();
    let server = NativeServer::start(router.serval_addr(), prefix("svc.test"), "A")
        .await
        .serve();
    let port = reserve();
    let client = start(
        &(client_policy(router.serval_addr(), port.addr(), "svc.test")
            + &format!("drain: {{grace_period: {grace}}}\n")),
    );
    let listen = listener(&client, "web");
    let held = Held::open(listen, 1 << 20, down).await.unwrap();
    until("the held flow is relayed", || {
        client.client().unwrap().stats().relayed == 1
    })
    .await;
    HeldFlow {
        _router: router,
        _server: server,
        client,
        listen,
        held,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_a_flow_in_progress_finish_and_refuses_new_ones() {
    let HeldFlow {
        client,
        listen,
        held,
        ..
    } = held_flow("1m", 3 << 20).await;
    let drained = tokio::spawn(client.drain());
    // The listener closes when the drain starts.
    wait_closed(listen).await;
    assert!(!drained.is_finished(), "the drain waits for the flow");

    let x = tokio::time::timeout(WAIT, held.finish())
        .await
        .unwrap()
        .unwrap();
    x.assert_exact(3 << 20);
    let report = tokio::time::timeout(WAIT, drained).await.unwrap().unwrap();
    assert!(report.clean);
    let s = report.client.unwrap();
    // The probes above may have been accepted before the listener closed; each of them
    // was relayed and finished too.
    assert_eq!((s.outcomes.finished, s.active), (s.relayed, 0), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_end_of_the_grace_period_a_flow_is_reset_not_closed() {
    let HeldFlow { client, held, .. } = held_flow("200ms", 1 << 20).await;
    let report = tokio::time::timeout(WAIT, client.drain()).await.unwrap();
    assert!(!report.clean);
    assert_eq!(report.client.unwrap().outcomes.stopped, 1);
    let end = tokio::time::timeout(WAIT, held.wait_end()).await.unwrap();
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "a truncated stream must not look complete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_syn_waits_at_the_router_until_an_instance_registers_and_it_is_released() {
    let router = start(
        "serval: {bind: 127.0.0.1:0}\nrouter:\n  keys: [{id: 1, env: TEST_KEY}]\n  delay: [{prefix: \"name:lazy.test\"}]\n  delay_queue: {max_age: 1m}\n",
    );
    let rt = router.router().unwrap().clone();
    let port = reserve();
    let client = start(
        &(client_policy(router.serval_addr(), port.addr(), "lazy.test")
            .replace("connect_timeout: 5s", "connect_timeout: 1m")),
    );
    let listen = listener(&client, "web");
    // Scaled to zero: the SYN is parked, the legacy client just waits.
    let pending = tokio::spawn(exchange(listen, 100_000, 100_000));
    until("the SYN is parked", || rt.stats().delayed >= 1).await;

    // An instance comes up and registers; the controller releases the parked SYNs.
    let _a = NativeServer::start(router.serval_addr(), prefix("lazy.test"), "A")
        .await
        .serve();
    assert!(rt.verdict(&prefix("lazy.test"), true) >= 1);
    let x = tokio::time::timeout(WAIT, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    x.assert_exact(100_000);
    assert_eq!(x.tag, "A");
}

/// `router.state_file`: a router that restarts takes its registrations over from the file,
/// so a service is reachable through the new process before any registrant refreshes
/// (every 20 s), and a registration captured before the restart is not replayed after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_router_forwards_at_once_from_its_state_file() {
    let dir = std::env::temp_dir().join(format!("serval-router-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("router.json");
    let policy = |bind: &str| {
        format!(
            "serval: {{bind: \"{bind}\"}}\nrouter: {{keys: [{{id: 1, env: TEST_KEY}}], state_file: \"{}\"}}\n",
            state.display()
        )
    };
    let first = start(&policy("127.0.0.1:0"));
    let addr = first.serval_addr();
    let _a = NativeServer::start(addr, prefix("svc.test"), "A")
        .await
        .serve();
    let report = first.drain().await;
    assert!(report.clean);
    assert!(state.exists(), "the drained router saved its state");

    // A new process. In-process the old socket may linger a moment after the drain, so the
    // new router takes another port (the soak restarts a real process on the same one);
    // the client asks the new router, and the lease it finds is the restored one.
    let second = start(&policy("127.0.0.1:0"));
    let addr = second.serval_addr();
    let stats = second.router().unwrap().stats().registry.unwrap();
    assert_eq!(stats.leases, 1, "{stats:?}");
    assert_eq!(
        stats.registrations, 0,
        "restored, not re-registered: {stats:?}"
    );

    let port = reserve();
    let client = start(&client_policy(addr, port.addr(), "svc.test"));
    let x = tokio::time::timeout(WAIT, exchange(listener(&client, "web"), 1 << 20, 1 << 20))
        .await
        .unwrap()
        .unwrap();
    x.assert_exact(1 << 20);
    assert_eq!(x.tag, "A");
    let stats = second.router().unwrap().stats().registry.unwrap();
    assert_eq!(
        stats.registrations, 0,
        "served from the restored lease: {stats:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
