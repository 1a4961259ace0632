//! Every file in `policies/` parses and validates (so none can rot), its effective policy
//! parses back to itself, the reference `default.yaml` still equals the built-in defaults,
//! and the `check-config` / `run` commands behave as documented on them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use translator::config::{self, Config};

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn policy_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(policies_dir())
        .expect("policies/ is readable")
        .map(|e| e.expect("policies/ is readable").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// The variables the examples take their keys from.
fn example_env() -> HashMap<String, String> {
    let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".to_owned();
    ["SERVAL_SHARED_KEY", "SERVAL_SHARED_KEY_NEXT"]
        .into_iter()
        .map(|k| (k.to_owned(), key.clone()))
        .collect()
}

#[test]
fn every_example_is_valid_and_round_trips() {
    let files = policy_files();
    assert!(files.len() >= 9, "{files:?}");
    let env = example_env();
    for path in files.iter().filter(|p| !p.ends_with("default.yaml")) {
        let (loaded, _secrets) = config::load_file(path, &env)
            .unwrap_or_else(|e| panic!("{}:\n{}", path.display(), e.render()));
        assert!(!loaded.config.roles().is_empty(), "{}", path.display());
        let yaml = translator::report::effective_yaml(&loaded.config).unwrap();
        let again = config::parse(&yaml, "effective", &HashMap::<String, String>::new())
            .unwrap_or_else(|e| {
                panic!(
                    "{}: effective policy:\n{}\n{yaml}",
                    path.display(),
                    e.render()
                )
            });
        assert_eq!(again.config, loaded.config, "{}", path.display());
        let summary = translator::report::summary(&loaded);
        assert!(summary.contains("roles"), "{summary}");
    }
}

#[test]
fn each_role_and_mode_has_an_example() {
    let env = example_env();
    let mut seen = Vec::new();
    for path in policy_files()
        .iter()
        .filter(|p| !p.ends_with("default.yaml"))
    {
        let c = config::load_file(path, &env).unwrap().0.config;
        if let Some(client) = &c.client {
            for l in &client.listeners {
                seen.push(format!("client-{:?}", l.mode).to_lowercase());
            }
            if client.dns.is_some() {
                seen.push("client-dns".into());
            }
        }
        if let Some(server) = &c.server {
            for s in &server.services {
                for b in &s.backends {
                    seen.push(
                        if b.dns.is_some() {
                            "server-dns"
                        } else {
                            "server-static"
                        }
                        .into(),
                    );
                }
                if s.proxy_protocol != config::model::ProxyProtocol::Off {
                    seen.push("server-proxy-protocol".into());
                }
            }
            if server.cross_translate.is_some() {
                seen.push("server-cross-translate".into());
            }
        }
        if c.router.is_some() {
            seen.push("router".into());
        }
        if c.roles().len() == 3 {
            seen.push("all-in-one".into());
        }
    }
    for want in [
        "client-explicit",
        "client-redirect",
        "client-tproxy",
        "client-dns",
        "server-static",
        "server-dns",
        "server-proxy-protocol",
        "server-cross-translate",
        "router",
        "all-in-one",
    ] {
        assert!(
            seen.iter().any(|s| s == want),
            "no example for {want}: {seen:?}"
        );
    }
}

#[test]
fn the_reference_policy_is_the_built_in_default() {
    let path = policies_dir().join("default.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let parsed: Config = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(
        parsed,
        Config::default(),
        "policies/default.yaml drifted from the code"
    );
    // It enables no role, and that is its only problem.
    let err = config::parse(&text, "default.yaml", &HashMap::<String, String>::new()).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{}", err.render());
    assert!(err.problems[0].message.contains("no role"));
}

fn cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_serval-translator"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SERVAL_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn check_config_prints_the_effective_policy() {
    let out = cli()
        .arg("check-config")
        .arg(policies_dir().join("client-redirect.yaml"))
        .env("SERVAL_ADMIN_LISTEN", "127.0.0.1:9999")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("listen: 127.0.0.1:9999"), "{stdout}");
    assert!(
        stdout.contains("idle_timeout: 1h"),
        "defaults are filled in: {stdout}"
    );
    assert!(
        stdout.contains("env      SERVAL_ADMIN_LISTEN overrides admin.listen"),
        "{stdout}"
    );
    assert!(stdout.contains("policy is valid"), "{stdout}");
}

#[test]
fn check_config_fails_with_file_line_and_field() {
    let dir = std::env::temp_dir().join(format!("serval-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "serval: {routers: [\"192.0.2.1:1\"]}\nclient:\n  listeners:\n    - name: web\n      listen: 127.0.0.1:8080\n      service: 0x5\n",
    )
    .unwrap();
    let out = cli().arg("check-config").arg(&bad).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}:6:16: client.listeners[0].service: invalid ServiceID \"0x5\"",
        bad.display()
    );
    assert!(stderr.starts_with(&want), "{stderr}");
    assert!(stderr.contains("odd number of hex digits"), "{stderr}");
}

#[test]
fn check_config_skip_files_lints_without_secrets() {
    let path = policies_dir().join("router.yaml");
    let out = cli().arg("check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "the key variables are not set");
    assert!(String::from_utf8_lossy(&out.stderr).contains("SERVAL_SHARED_KEY is not set"));
    let out = cli()
        .args(["check-config", "--skip-files", "--summary"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("router role"));
}

#[test]
fn run_refuses_an_invalid_policy_and_reports_a_role_that_cannot_start() {
    let dir = std::env::temp_dir().join(format!("serval-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Invalid: exit 1 with file:line:field, through SERVAL_CONFIG.
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "router: {keys: []}\nrelay: {idle_timeout: 5}\n").unwrap();
    let out = cli()
        .arg("run")
        .env("SERVAL_CONFIG", &bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml:2:"), "{stderr}");
    assert!(stderr.contains("relay.idle_timeout"), "{stderr}");

    // Valid, but its listener's address is taken: exit 2 naming the listener.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let busy = dir.join("busy.yaml");
    std::fs::write(
        &busy,
        format!(
            "serval: {{bind: 127.0.0.1:0, routers: [\"127.0.0.1:9\"]}}\nadmin: {{listen: ~}}\nclient:\n  listeners:\n    - {{name: web, listen: \"{addr}\", service: \"name:www.example.com\"}}\n"
        ),
    )
    .unwrap();
    let out = cli().args(["run", "--config"]).arg(&busy).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("client listener \"web\" on {addr}")),
        "{stderr}"
    );
}
