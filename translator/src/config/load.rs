//! Reading a policy: YAML → [`Config`], environment overrides, validation, and errors that
//! name the file, line, column and field.
//!
//! Two steps, so the pure part can be tested without files or secrets:
//!
//! 1. [`parse`] (pure but for the environment it is handed): YAML syntax and types (via
//!    serde-saphyr, which reports line and column; `serde_path_to_error` adds the field
//!    path), then the [`ENV_OVERRIDES`], then every cross-field check of
//!    [`validate`](super::validate). Errors of the last step are located afterwards by
//!    walking the field path through a located copy of the document, so the checks
//!    themselves stay plain functions over the typed model.
//! 2. [`preflight`]: the files and variables the policy points at — shared keys are read
//!    and checked (16 to 64 bytes of hex), TLS files must be readable.
//!
//! [`load_file`] does both. Every problem found in a step is reported, not just the first.

use core::fmt;
use core::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};
use serval_stack::control::SharedKey;

use super::model::{Config, KeySource, LogFormat};
use super::types::HumanDuration;
use super::validate;

/// Largest policy file read (1 MiB): far above any real policy, far below a mistake such as
/// pointing `--config` at a log file.
pub const MAX_POLICY_BYTES: usize = 1 << 20;

/// Where environment variables come from: the process, or a map in tests.
pub trait Env {
    /// The variable's value; `None` when unset. A value that is not UTF-8 is reported as
    /// `Some(Err(()))`.
    fn var(&self, name: &str) -> Option<Result<String, ()>>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<Result<String, ()>> {
        std::env::var_os(name).map(|v| v.into_string().map_err(|_| ()))
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<Result<String, ()>> {
        self.get(name).cloned().map(Ok)
    }
}

/// An environment variable that overrides one setting. These are the settings that differ
/// between containers running the same policy (addresses, log verbosity, drain time);
/// everything else belongs in the file.
#[derive(Debug, Clone, Copy)]
pub struct EnvOverride {
    /// Variable name.
    pub var: &'static str,
    /// Field it sets (its path in the policy).
    pub field: &'static str,
    /// What the value looks like.
    pub syntax: &'static str,
    apply: fn(&mut Config, &str) -> Result<(), String>,
}

/// The environment overrides, applied after the file is read. `SERVAL_CONFIG` (the policy
/// path when none is given on the command line) is read by the command line, not here.
pub const ENV_OVERRIDES: &[EnvOverride] = &[
    EnvOverride {
        var: "SERVAL_LOG",
        field: "log.level",
        syntax: "a tracing filter, e.g. info or info,translator::relay=debug",
        apply: |c, v| {
            c.log.level = v.to_owned();
            Ok(())
        },
    },
    EnvOverride {
        var: "SERVAL_LOG_FORMAT",
        field: "log.format",
        syntax: "text or json",
        apply: |c, v| {
            c.log.format = match v {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => return Err("expected text or json".to_owned()),
            };
            Ok(())
        },
    },
    EnvOverride {
        var: "SERVAL_ADMIN_LISTEN",
        field: "admin.listen",
        syntax: "IP:port, or off",
        apply: |c, v| {
            c.admin.listen = match v {
                "off" => None,
                _ => Some(socket_addr(v)?),
            };
            Ok(())
        },
    },
    EnvOverride {
        var: "SERVAL_BIND",
        field: "serval.bind",
        syntax: "IP:port",
        apply: |c, v| {
            c.serval.bind = socket_addr(v)?;
            Ok(())
        },
    },
    EnvOverride {
        var: "SERVAL_ADVERTISE",
        field: "serval.advertise",
        syntax: "IP:port",
        apply: |c, v| {
            c.serval.advertise = Some(socket_addr(v)?);
            Ok(())
        },
    },
    EnvOverride {
        var: "SERVAL_ROUTERS",
        field: "serval.routers",
        syntax: "comma-separated IP:port list (empty for none)",
        apply: |c, v| {
            c.serval.routers = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(socket_addr)
                .collect::<Result<_, _>>()?;
            Ok(())
        },
    },
    EnvOverride {
        var: "SERVAL_DRAIN_GRACE",
        field: "drain.grace_period",
        syntax: "a duration, e.g. 30s",
        apply: |c, v| {
            c.drain.grace_period = v.parse::<HumanDuration>().map_err(|e| e.to_string())?;
            Ok(())
        },
    },
];

fn socket_addr(v: &str) -> Result<SocketAddr, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("{v:?} is not an IP:port address (IPv6 as [addr]:port)"))
}

/// A policy after [`parse`]: the effective configuration and what the environment changed.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The effective configuration (defaults filled, overrides applied, validated).
    pub config: Config,
    /// The overrides that were set, in [`ENV_OVERRIDES`] order.
    pub overrides: Vec<&'static EnvOverride>,
    /// The name the policy was read under (its path).
    pub source: String,
}

/// Secrets a policy points at, read by [`preflight`].
#[derive(Clone, Default)]
pub struct Secrets {
    /// `serval.key`, with its id.
    pub serval_key: Option<(u32, SharedKey)>,
    /// `router.keys`, with their ids.
    pub router_keys: Vec<(u32, SharedKey)>,
    /// `tls:`, its files read and checked.
    pub tls: Option<crate::tls::TlsPair>,
    /// The admin API's bearer token: [`ADMIN_TOKEN_ENV`], else `admin.token`.
    pub admin_token: Option<crate::admin::AdminToken>,
    /// `router.state_file`, resolved against the policy's folder (whose folder exists).
    pub router_state: Option<PathBuf>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("serval_key", &self.serval_key.as_ref().map(|(id, _)| id))
            .field(
                "router_keys",
                &self
                    .router_keys
                    .iter()
                    .map(|(id, _)| id)
                    .collect::<Vec<_>>(),
            )
            .field("tls", &self.tls.is_some())
            .field("admin_token", &self.admin_token.is_some())
            .finish()
    }
}

// ------------------------------------------------------------------------------------------
// Errors

/// Where a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// In the policy file, 1-based line and column (0 when unknown).
    File {
        /// Line.
        line: u64,
        /// Column.
        column: u64,
    },
    /// In an environment override.
    Env(&'static str),
    /// Not tied to a position (the file could not be read at all).
    Whole,
}

/// One problem in a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where.
    pub origin: Origin,
    /// The field's path (`client.listeners[1].service`); empty for the whole document.
    pub field: String,
    /// What is wrong, and what was expected.
    pub message: String,
}

/// Why a policy was refused: every problem found, each naming its file, line and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The policy's name (its path).
    pub source: String,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
    /// The text, to show the offending lines (`render`).
    text: Option<String>,
}

impl ConfigError {
    fn whole(source: &str, message: String) -> Self {
        Self {
            source: source.to_owned(),
            problems: vec![Problem {
                origin: Origin::Whole,
                field: String::new(),
                message,
            }],
            text: None,
        }
    }

    /// One line per problem followed by the offending line of the file with a caret, for a
    /// terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for p in &self.problems {
            out.push_str(&self.line(p));
            out.push('\n');
            if let (Origin::File { line, column }, Some(text)) = (&p.origin, &self.text) {
                out.push_str(&snippet(text, *line, *column));
            }
        }
        out
    }

    fn line(&self, p: &Problem) -> String {
        let field = if p.field.is_empty() {
            String::new()
        } else {
            format!("{}: ", p.field)
        };
        let message = sanitize(&p.message);
        match &p.origin {
            Origin::File { line, column } if *line > 0 => {
                format!("{}:{line}:{column}: {field}{message}", self.source)
            }
            Origin::File { .. } | Origin::Whole => format!("{}: {field}{message}", self.source),
            Origin::Env(var) => format!("environment {var} ({}): {message}", p.field),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&self.line(p))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Control characters from the file or the environment are shown escaped, so an error
/// message cannot rewrite the operator's terminal.
fn sanitize(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_debug().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

fn snippet(text: &str, line: u64, column: u64) -> String {
    let Some(src) = usize::try_from(line)
        .ok()
        .and_then(|l| l.checked_sub(1))
        .and_then(|i| text.lines().nth(i))
    else {
        return String::new();
    };
    let src: String = sanitize(src).chars().take(160).collect();
    let gutter = line.to_string();
    let pad = " ".repeat(gutter.len());
    let caret_at = usize::try_from(column.saturating_sub(1))
        .unwrap_or(0)
        .min(src.chars().count());
    format!(
        "{pad} |\n{gutter} | {src}\n{pad} | {}^\n",
        " ".repeat(caret_at)
    )
}

// ------------------------------------------------------------------------------------------
// Parsing

/// Reads the policy file at `path` (through [`parse`] and [`preflight`]).
pub fn load_file(path: &Path, env: &dyn Env) -> Result<(Loaded, Secrets), ConfigError> {
    let loaded = parse_file(path, env)?;
    let secrets = preflight(&loaded, base_dir(path), env)?;
    Ok((loaded, secrets))
}

/// Reads and [`parse`]s the policy file at `path`, without [`preflight`].
pub fn parse_file(path: &Path, env: &dyn Env) -> Result<Loaded, ConfigError> {
    let source = path.display().to_string();
    let text = read_bounded(path).map_err(|m| ConfigError::whole(&source, m))?;
    parse(&text, &source, env)
}

/// The folder relative paths in the policy at `path` are taken from.
pub fn base_dir(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut bytes = Vec::new();
    let limit = u64::try_from(MAX_POLICY_BYTES).unwrap_or(u64::MAX) + 1;
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() > MAX_POLICY_BYTES {
        return Err(format!(
            "larger than {} KiB; is this a policy file?",
            MAX_POLICY_BYTES >> 10
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 (first bad byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Most alias (`*name`) references a policy may make, and most times one anchor may be
/// expanded: YAML aliases let a small file expand into a huge document (the "billion
/// laughs"); a real policy shares a few blocks a few times.
pub const MAX_YAML_ALIASES: usize = 1_000;

/// The parser's limits for a policy: serde-saphyr's defaults are sized for any YAML up to
/// hundreds of MiB; a policy is at most [`MAX_POLICY_BYTES`], so everything (events, nodes,
/// depth, anchors, alias replays, bytes kept for anchors) is bounded far lower, and one
/// document only. Every limit is far above what a real policy uses.
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = 200_000;
    budget.max_nodes = 100_000;
    budget.max_depth = 32;
    budget.max_documents = 1;
    budget.max_anchors = MAX_YAML_ALIASES;
    budget.max_aliases = MAX_YAML_ALIASES;
    budget.max_merge_keys = MAX_YAML_ALIASES;
    budget.max_total_scalar_bytes = MAX_POLICY_BYTES;
    budget.max_recorded_anchor_events = 100_000;
    budget.max_recorded_anchor_bytes = MAX_POLICY_BYTES;
    budget.max_inclusion_depth = 0;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    let mut aliases = serde_saphyr::options::AliasLimits::default();
    // Replayed events bound what aliases can add: 20k events of at most a scalar each.
    aliases.max_total_replayed_events = 20_000;
    aliases.max_replay_stack_depth = 16;
    aliases.max_alias_expansions_per_anchor = 100;
    options.alias_limits = aliases;
    options
}

/// Parses policy `text` read from `source`, applies the environment overrides found in
/// `env` and validates the result.
pub fn parse(text: &str, source: &str, env: &dyn Env) -> Result<Loaded, ConfigError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(ConfigError::whole(
            source,
            format!("larger than {} KiB", MAX_POLICY_BYTES >> 10),
        ));
    }
    let mut path = String::new();
    let parsed: Result<Config, serde_saphyr::Error> =
        serde_saphyr::with_deserializer_from_str_with_options(text, yaml_options(), |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                path = e.path().to_string();
                e.into_inner()
            })
        });
    let mut config = match parsed {
        Ok(c) => c,
        Err(e) => {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            let message = {
                use serde_saphyr::MessageFormatter as _;
                serde_saphyr::DefaultMessageFormatter
                    .format_message(e.without_snippet())
                    .into_owned()
            };
            return Err(ConfigError {
                source: source.to_owned(),
                problems: vec![Problem {
                    origin: Origin::File { line, column },
                    field: if path == "." { String::new() } else { path },
                    message,
                }],
                text: Some(text.to_owned()),
            });
        }
    };

    let mut problems = Vec::new();
    let mut overrides = Vec::new();
    for o in ENV_OVERRIDES {
        let value = match env.var(o.var) {
            None => continue,
            Some(Err(())) => Err("value is not valid UTF-8".to_owned()),
            Some(Ok(v)) => (o.apply)(&mut config, &v),
        };
        match value {
            Ok(()) => overrides.push(o),
            Err(message) => problems.push(Problem {
                origin: Origin::Env(o.var),
                field: o.field.to_owned(),
                message: format!("{message} (expected {})", o.syntax),
            }),
        }
    }

    let issues = validate::check(&config);
    if !issues.is_empty() {
        let tree = locate_tree(text);
        for issue in issues {
            let from_env = overrides.iter().find(|o| {
                issue.field == o.field || issue.field.starts_with(&format!("{}[", o.field))
            });
            let origin = match from_env {
                Some(o) => Origin::Env(o.var),
                None => {
                    let loc = tree
                        .as_ref()
                        .map_or(Location::UNKNOWN, |t| locate(t, &issue.field));
                    Origin::File {
                        line: loc.line(),
                        column: loc.column(),
                    }
                }
            };
            problems.push(Problem {
                origin,
                field: issue.field,
                message: issue.message,
            });
        }
    }
    if !problems.is_empty() {
        problems.sort_by_key(|p| match p.origin {
            Origin::Env(_) | Origin::Whole => (0, 0),
            Origin::File { line, column } => (line, column),
        });
        return Err(ConfigError {
            source: source.to_owned(),
            problems,
            text: Some(text.to_owned()),
        });
    }
    Ok(Loaded {
        config,
        overrides,
        source: source.to_owned(),
    })
}

// ------------------------------------------------------------------------------------------
// Locating a field path in the document

/// The document's shape with a location per node; built only to place validation errors.
#[derive(Debug)]
enum Node {
    Map(Vec<(String, Spanned<Self>)>),
    Seq(Vec<Spanned<Self>>),
    Scalar,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element::<Spanned<Node>>()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some((k, v)) = a.next_entry::<KeyText, Spanned<Node>>()? {
                    items.push((k.0, v));
                }
                Ok(Node::Map(items))
            }
        }
        d.deserialize_any(V)
    }
}

/// A mapping key as text, whatever its scalar type.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

fn locate_tree(text: &str) -> Option<Spanned<Node>> {
    serde_saphyr::from_str_with_options::<Spanned<Node>>(text, yaml_options()).ok()
}

/// The location of the deepest node on `path` (`a.b[2].c`) that exists in the document:
/// the field itself, or the nearest enclosing entry when the field was left out.
fn locate(root: &Spanned<Node>, path: &str) -> Location {
    let mut node = root;
    let mut best = root.referenced;
    for seg in segments(path) {
        let next = match (&node.value, seg) {
            (Node::Map(items), Seg::Key(k)) => {
                items.iter().find(|(key, _)| key == k).map(|(_, v)| v)
            }
            (Node::Seq(items), Seg::Index(i)) => items.get(i),
            _ => None,
        };
        match next {
            Some(n) => {
                node = n;
                if n.referenced.line() > 0 {
                    best = n.referenced;
                }
            }
            None => break,
        }
    }
    best
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => part.split_at(i),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(open) = rest.strip_prefix('[') {
            let Some(close) = open.find(']') else { break };
            if let Ok(i) = open[..close].parse() {
                out.push(Seg::Index(i));
            }
            rest = &open[close + 1..];
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// Preflight: files and secrets

/// Reads the secrets and checks the files the policy points at. Relative paths are taken
/// from `base` (the policy file's folder).
pub fn preflight(loaded: &Loaded, base: &Path, env: &dyn Env) -> Result<Secrets, ConfigError> {
    let config = &loaded.config;
    let mut problems = Vec::new();
    let mut secrets = Secrets::default();
    let mut fail = |field: String, message: String| {
        problems.push(Problem {
            origin: Origin::File { line: 0, column: 0 },
            field,
            message,
        });
    };
    if let Some(k) = &config.serval.key {
        match read_key(k, base, env) {
            Ok(key) => secrets.serval_key = Some((k.id, key)),
            Err(m) => fail("serval.key".to_owned(), m),
        }
    }
    if let Some(router) = &config.router {
        for (i, k) in router.keys.iter().enumerate() {
            match read_key(k, base, env) {
                Ok(key) => secrets.router_keys.push((k.id, key)),
                Err(m) => fail(format!("router.keys[{i}]"), m),
            }
        }
        if let Some(file) = &router.state_file {
            let path = resolve(base, file);
            match path.parent().map(Path::is_dir) {
                Some(true) => secrets.router_state = Some(path),
                _ => fail(
                    "router.state_file".to_owned(),
                    format!("{}: its folder does not exist", path.display()),
                ),
            }
        }
    }
    if let Some(tls) = &config.tls {
        match crate::tls::TlsPair::load(tls, base) {
            Ok(pair) => secrets.tls = Some(pair),
            Err(e) => {
                // The error names its field; the problem line names it already.
                let field = e.field();
                let message = e.to_string();
                let message = message
                    .strip_prefix(&field)
                    .unwrap_or(&message)
                    .trim_start();
                fail(field, message.to_owned());
            }
        }
    }
    match admin_token(config, base, env) {
        Ok(t) => secrets.admin_token = t,
        Err(m) => fail("admin.token".to_owned(), m),
    }
    if problems.is_empty() {
        return Ok(secrets);
    }
    // Place the problems like validation errors.
    let text = read_bounded(Path::new(&loaded.source)).ok();
    let tree = text.as_deref().and_then(locate_tree);
    for p in &mut problems {
        if let Some(t) = &tree {
            let loc = locate(t, &p.field);
            p.origin = Origin::File {
                line: loc.line(),
                column: loc.column(),
            };
        }
    }
    Err(ConfigError {
        source: loaded.source.clone(),
        problems,
        text,
    })
}

/// `p`, relative to `base` unless absolute (policy paths are taken from the policy's folder).
pub(crate) fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// Environment variable holding the admin API's bearer token; it wins over `admin.token`.
pub const ADMIN_TOKEN_ENV: &str = "SERVAL_ADMIN_TOKEN";

/// The admin token: [`ADMIN_TOKEN_ENV`] when set and not empty, else `admin.token`'s source.
fn admin_token(
    config: &Config,
    base: &Path,
    env: &dyn Env,
) -> Result<Option<crate::admin::AdminToken>, String> {
    let text = match env.var(ADMIN_TOKEN_ENV) {
        Some(Ok(v)) if !v.trim().is_empty() => v,
        Some(Err(())) => {
            return Err(format!(
                "environment variable {ADMIN_TOKEN_ENV} is not UTF-8"
            ));
        }
        _ => match config.admin.token.as_ref() {
            None => return Ok(None),
            Some(t) => match (&t.file, &t.env) {
                (Some(file), None) => {
                    use std::io::Read as _;
                    let full = resolve(base, file);
                    let mut s = String::new();
                    std::fs::File::open(&full)
                        .and_then(|f| f.take(MAX_KEY_FILE).read_to_string(&mut s))
                        .map_err(|e| format!("cannot read token file {}: {e}", full.display()))?;
                    s
                }
                (None, Some(var)) => match env.var(var) {
                    Some(Ok(v)) => v,
                    Some(Err(())) => {
                        return Err(format!("environment variable {var} is not UTF-8"));
                    }
                    None => return Err(format!("environment variable {var} is not set")),
                },
                _ => return Err("give exactly one of `file` and `env`".to_owned()),
            },
        },
    };
    crate::admin::AdminToken::new(text.trim()).map(Some)
}

/// Longest key file read: 64 bytes of key as hex plus generous whitespace.
const MAX_KEY_FILE: u64 = 4096;

fn read_key(k: &KeySource, base: &Path, env: &dyn Env) -> Result<SharedKey, String> {
    let text = match (&k.file, &k.env) {
        (Some(file), None) => {
            use std::io::Read as _;
            let full = resolve(base, file);
            let mut s = String::new();
            std::fs::File::open(&full)
                .and_then(|f| f.take(MAX_KEY_FILE).read_to_string(&mut s))
                .map_err(|e| format!("cannot read key file {}: {e}", full.display()))?;
            s
        }
        (None, Some(var)) => match env.var(var) {
            Some(Ok(v)) => v,
            Some(Err(())) => return Err(format!("environment variable {var} is not UTF-8")),
            None => return Err(format!("environment variable {var} is not set")),
        },
        // validate::check refuses both and neither before preflight runs.
        _ => return Err("give exactly one of `file` and `env`".to_owned()),
    };
    let bytes = decode_hex(text.trim()).ok_or_else(|| {
        "the key must be hex digits only (e.g. the output of `openssl rand -hex 32`)".to_owned()
    })?;
    SharedKey::new(&bytes).map_err(|_| {
        format!(
            "the key is {} bytes; it must be {} to {} (hex: {} to {} digits)",
            bytes.len(),
            SharedKey::MIN_LEN,
            SharedKey::MAX_LEN,
            2 * SharedKey::MIN_LEN,
            2 * SharedKey::MAX_LEN
        )
    })
}

/// Decodes key material written as hex (the only place the translator reads hex that is
/// not a ServiceID; ids go through `ServiceId::from_str`).
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks_exact(2)
        .map(|pair| {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            u8::try_from(hi << 4 | lo).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_parse() {
        assert_eq!(
            segments("client.listeners[2].service"),
            vec![
                Seg::Key("client"),
                Seg::Key("listeners"),
                Seg::Index(2),
                Seg::Key("service")
            ]
        );
        assert!(segments(".").is_empty());
    }

    #[test]
    fn hex_keys() {
        assert_eq!(decode_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(decode_hex("0g"), None);
        assert_eq!(decode_hex("abc"), None);
    }

    #[test]
    fn snippet_points_at_the_column() {
        let s = snippet("a: 1\nbb: zz\n", 2, 5);
        assert_eq!(s, "  |\n2 | bb: zz\n  |     ^\n");
        assert_eq!(snippet("a", 9, 1), "");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(sanitize("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
    }

    /// Alias bombs and deep nesting stop at the parser's budget with a located error,
    /// before anything large is built (serde-saphyr's defaults allow a million replayed
    /// events and 50,000 aliases).
    #[test]
    fn yaml_bombs_are_refused_with_a_line() {
        let env = std::collections::HashMap::<String, String>::new();
        // Billion laughs: nine levels of ten aliases each.
        let mut bomb = String::from("a0: &a0 [\"lol\"]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        // A big scalar expanded many times.
        let big = format!(
            "x: &x \"{}\"\ny: [{}]\n",
            "b".repeat(100_000),
            vec!["*x"; 5_000].join(", ")
        );
        let deep = format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000));
        let nested = (0..200).fold(String::from("v"), |acc, i| format!("k{i}: {{{acc}}}"));
        for text in [bomb, big, deep, nested] {
            let e = parse(&text, "bomb.yaml", &env).unwrap_err();
            let rendered = e.render();
            assert!(
                e.problems
                    .iter()
                    .any(|p| matches!(p.origin, Origin::File { line, .. } if line > 0)),
                "{rendered}"
            );
            assert!(locate_tree(&text).is_none());
        }
    }
}
