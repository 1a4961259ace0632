//! Loader tests: defaults, errors located at file:line:column:field, environment overrides,
//! secrets. The policy files in `policies/` are tested in `translator/tests/policies.rs`.

use std::collections::HashMap;
use std::path::PathBuf;

use super::load::{Origin, Problem};
use super::model::{LogFormat, Role};
use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn no_env() -> HashMap<String, String> {
    HashMap::new()
}

fn problems(text: &str, e: &HashMap<String, String>) -> Vec<Problem> {
    parse(text, "p.yaml", e).unwrap_err().problems
}

fn at(line: u64, column: u64) -> Origin {
    Origin::File { line, column }
}

const MINIMAL: &str = "serval:\n  routers: [\"192.0.2.1:54325\"]\nclient:\n  listeners:\n    - name: web\n      listen: 127.0.0.1:8080\n      service: \"name:www.example.com\"\n";

#[test]
fn a_minimal_policy_gets_every_default() {
    let loaded = parse(MINIMAL, "p.yaml", &no_env()).unwrap();
    let c = &loaded.config;
    assert_eq!(c.roles(), vec![Role::Client]);
    assert_eq!(c.relay, model::RelaySettings::default());
    assert_eq!(c.serval.bind.to_string(), "0.0.0.0:54325");
    assert_eq!(c.admin.listen.unwrap().to_string(), "127.0.0.1:9901");
    let client = c.client.as_ref().unwrap();
    assert_eq!(client.connect_timeout, types::HumanDuration::secs(10));
    assert_eq!(client.listeners[0].mode, model::ListenMode::Explicit);
    assert!(loaded.overrides.is_empty());
}

#[test]
fn a_bad_value_names_file_line_column_and_field() {
    let text = "client:\n  listeners:\n    - name: a\n      listen: 127.0.0.1:1\n      service: \"1\"\n    - name: b\n      listen: 127.0.0.1:2\n      service: zz\n";
    let e = parse(text, "p.yaml", &no_env()).unwrap_err();
    assert_eq!(e.problems.len(), 1);
    let p = &e.problems[0];
    assert_eq!(p.origin, at(8, 16));
    assert_eq!(p.field, "client.listeners[1].service");
    assert!(
        p.message.contains("invalid ServiceID \"zz\""),
        "{}",
        p.message
    );
    let line = e.to_string();
    assert!(
        line.starts_with("p.yaml:8:16: client.listeners[1].service: invalid ServiceID"),
        "{line}"
    );
    // The rendering shows the line with a caret under column 16.
    let rendered = e.render();
    assert!(rendered.contains("8 |       service: zz\n"), "{rendered}");
    assert!(
        rendered.contains(&format!("  | {}^", " ".repeat(15))),
        "{rendered}"
    );
}

#[test]
fn unknown_and_missing_fields_are_located() {
    let p = problems("relay:\n  idle_timout: 5m\n", &no_env());
    assert_eq!(p[0].origin, at(2, 3));
    assert_eq!(p[0].field, "relay.idle_timout");
    assert!(
        p[0].message.contains("unknown field `idle_timout`"),
        "{}",
        p[0].message
    );

    let p = problems("client:\n  listeners:\n    - name: a\n", &no_env());
    assert_eq!(p[0].origin, at(3, 7));
    assert_eq!(p[0].field, "client.listeners[0]");
    assert!(
        p[0].message.contains("missing field `listen`"),
        "{}",
        p[0].message
    );
}

#[test]
fn type_and_unit_errors() {
    let p = problems("relay:\n  idle_timeout: 30\n", &no_env());
    assert_eq!(
        (p[0].origin.clone(), p[0].field.as_str()),
        (at(2, 17), "relay.idle_timeout")
    );
    assert!(p[0].message.contains("has no unit"), "{}", p[0].message);

    let p = problems("relay:\n  max_connections: many\n", &no_env());
    assert_eq!(p[0].field, "relay.max_connections");
    assert_eq!(p[0].origin, at(2, 20));

    let p = problems(
        "client:\n  rules:\n    - destination: 10.0.0.1/8\n",
        &no_env(),
    );
    assert_eq!(p[0].field, "client.rules[0].destination");
    assert!(
        p[0].message.contains("did you mean 10.0.0.0/8"),
        "{}",
        p[0].message
    );
}

#[test]
fn yaml_syntax_errors_have_a_line() {
    let p = problems("client:\n  listeners: [\n", &no_env());
    assert!(
        matches!(p[0].origin, Origin::File { line, .. } if line >= 2),
        "{p:?}"
    );
}

#[test]
fn cross_field_problems_are_all_reported_at_their_lines() {
    let text = "\
serval: {routers: [\"192.0.2.1:1\"]}
client:
  listeners:
    - name: web
      listen: 127.0.0.1:8080
    - name: web
      listen: 127.0.0.1:8080
      service: \"1\"
  rules:
    - destination: 10.0.0.0/8
      service: \"2\"
";
    let p = problems(text, &no_env());
    let got: Vec<(Origin, &str)> = p
        .iter()
        .map(|p| (p.origin.clone(), p.field.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            // No `service`: located at the listener entry.
            (at(4, 7), "client.listeners[0].service"),
            (at(6, 13), "client.listeners[1].name"),
            (at(7, 15), "client.listeners[1].listen"),
            (at(10, 5), "client.rules"), // the sequence under the key
        ],
        "{p:#?}"
    );
}

#[test]
fn an_empty_policy_runs_nothing_and_says_so() {
    let p = problems("", &no_env());
    assert_eq!(p.len(), 1);
    assert!(p[0].message.contains("no role"), "{}", p[0].message);
    let p = problems(
        "version: 2\nrouter:\n  routes: [{prefix: default, forward: \"192.0.2.1:1\"}]\n",
        &no_env(),
    );
    assert_eq!(p[0].field, "version");
    assert_eq!(p[0].origin, at(1, 10));
}

#[test]
fn shadowed_rules_and_names_are_refused() {
    let text = "\
serval: {routers: [\"192.0.2.1:1\"]}
client:
  listeners: [{name: i, listen: \"0.0.0.0:1\", mode: redirect}]
  rules:
    - {destination: 10.0.0.0/8, legacy_tag: 1}
    - {destination: 10.1.0.0/16, ports: 80, service: \"2\"}
  dns:
    listen: 127.0.0.1:53
    names: [{match: \"*.example.com\"}, {match: www.example.com}]
";
    let p = problems(text, &no_env());
    let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        vec!["client.rules[1]", "client.dns.names[1].match"],
        "{p:#?}"
    );
    assert!(p[0].message.contains("rule 0 above"), "{}", p[0].message);
}

#[test]
fn environment_overrides_apply_and_are_recorded() {
    let e = env(&[
        ("SERVAL_ADMIN_LISTEN", "off"),
        ("SERVAL_ROUTERS", "192.0.2.7:54325, 192.0.2.8:54325"),
        ("SERVAL_LOG", "debug"),
        ("SERVAL_LOG_FORMAT", "json"),
        ("SERVAL_BIND", "[::]:6000"),
        ("SERVAL_ADVERTISE", "203.0.113.1:6000"),
        ("SERVAL_DRAIN_GRACE", "2m"),
    ]);
    let loaded = parse(MINIMAL, "p.yaml", &e).unwrap();
    let c = &loaded.config;
    assert_eq!(c.admin.listen, None);
    assert_eq!(c.serval.routers.len(), 2);
    assert_eq!(c.log.level, "debug");
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.serval.bind.to_string(), "[::]:6000");
    assert_eq!(c.drain.grace_period, types::HumanDuration::secs(120));
    assert_eq!(loaded.overrides.len(), ENV_OVERRIDES.len());
}

#[test]
fn bad_environment_values_name_the_variable() {
    let e = env(&[("SERVAL_BIND", "nope"), ("SERVAL_DRAIN_GRACE", "30")]);
    let err = parse(MINIMAL, "p.yaml", &e).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("environment SERVAL_BIND (serval.bind): \"nope\" is not an IP:port"),
        "{text}"
    );
    assert!(
        text.contains("environment SERVAL_DRAIN_GRACE (drain.grace_period)"),
        "{text}"
    );
}

#[test]
fn a_problem_an_override_causes_is_blamed_on_the_variable() {
    // The admin endpoint moved onto the listener's address by the environment.
    let e = env(&[("SERVAL_ADMIN_LISTEN", "127.0.0.1:8080")]);
    let p = problems(MINIMAL, &e);
    assert!(
        p.iter()
            .any(|p| p.origin == Origin::Env("SERVAL_ADMIN_LISTEN") && p.field == "admin.listen"),
        "{p:#?}"
    );
}

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("serval-cfg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

#[test]
fn secrets_are_read_from_files_and_variables_and_checked() {
    let dir = TempDir::new("secrets");
    std::fs::write(dir.0.join("router.key"), format!("{KEY}\n")).unwrap();
    let policy = dir.0.join("p.yaml");
    std::fs::write(
        &policy,
        "router:\n  keys:\n    - {id: 1, file: router.key}\n    - {id: 2, env: K2}\n",
    )
    .unwrap();
    let (_, secrets) = load_file(&policy, &env(&[("K2", &KEY[..32])])).unwrap();
    assert_eq!(
        secrets.router_keys.iter().map(|k| k.0).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(
        !format!("{secrets:?}").contains("0001"),
        "Debug shows no key material"
    );

    // Unset, too short, not hex: each named at its line.
    let err = load_file(&policy, &no_env()).unwrap_err();
    assert_eq!(err.problems[0].field, "router.keys[1]");
    assert_eq!(err.problems[0].origin, at(4, 7));
    assert!(err.problems[0].message.contains("K2 is not set"));
    let err = load_file(&policy, &env(&[("K2", "abcd")])).unwrap_err();
    assert!(
        err.problems[0]
            .message
            .contains("2 bytes; it must be 16 to 64"),
        "{err}"
    );
    let err = load_file(&policy, &env(&[("K2", "zz")])).unwrap_err();
    assert!(err.problems[0].message.contains("hex digits only"), "{err}");
}

#[test]
fn missing_tls_files_are_reported() {
    let dir = TempDir::new("tls");
    let policy = dir.0.join("p.yaml");
    std::fs::write(
        &policy,
        "router: {routes: [{prefix: default, forward: \"192.0.2.1:1\"}]}\ntls: {cert: c.pem, key: k.pem, ca: ca.pem}\n",
    )
    .unwrap();
    // The files are read and parsed at load: the first one that cannot be used is named.
    let err = load_file(&policy, &no_env()).unwrap_err();
    let fields: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, vec!["tls.cert"], "{err}");
    assert!(err.problems[0].message.contains("cannot read"), "{err}");
    std::fs::write(dir.0.join("c.pem"), "x").unwrap();
    let err = load_file(&policy, &no_env()).unwrap_err();
    assert_eq!(err.problems[0].field, "tls.cert", "{err}");
    assert!(err.problems[0].message.contains("no certificate"), "{err}");
    // Parsing alone (check-config --skip-files) accepts it.
    assert!(parse_file(&policy, &no_env()).is_ok());
}

#[test]
fn unreadable_and_oversized_files() {
    let err = parse_file(std::path::Path::new("/nonexistent/p.yaml"), &no_env()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/p.yaml: cannot open"),
        "{err}"
    );
    let big = "#".repeat(load::MAX_POLICY_BYTES + 1);
    let err = parse(&big, "big.yaml", &no_env()).unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
}

#[test]
fn the_effective_policy_parses_back_to_itself() {
    let loaded = parse(MINIMAL, "p.yaml", &no_env()).unwrap();
    let yaml = crate::report::effective_yaml(&loaded.config).unwrap();
    let again = parse(&yaml, "effective.yaml", &no_env()).unwrap();
    assert_eq!(again.config, loaded.config, "{yaml}");
}
