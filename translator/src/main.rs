//! `serval-translator`: the command-line entry point. Kept thin; the work is in the library.
//!
//! Exit codes: 0 success (for `run`: drained after SIGTERM/SIGINT); 1 the policy is
//! invalid (every problem printed as `file:line:column: field: message`), or a demo check
//! failed; 2 usage errors, a role that could not start or failed while running.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use translator::config::model::LogSettings;
use translator::config::types::{ByteSize, HumanDuration};
use translator::config::{self, ENV_OVERRIDES, ProcessEnv};
use translator::ids::{IdInput, describe};

#[derive(Parser, Debug)]
#[command(
    name = "serval-translator",
    version,
    about = "Serval translator and service router",
    after_help = env_help()
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the roles the policy turns on (client, server, router).
    ///
    /// SIGHUP reloads the policy (an invalid one is logged and the running one stays);
    /// SIGTERM or SIGINT drains (stop accepting, withdraw registrations, let connections
    /// finish for `drain.grace_period`) and exits 0; a second one exits at once.
    Run {
        /// Policy file (YAML). Default: $SERVAL_CONFIG.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate a policy and print the effective policy (defaults filled in, environment
    /// overrides applied) and what each role would do; exit 1 with every problem if invalid.
    CheckConfig {
        /// Policy file (YAML). Default: $SERVAL_CONFIG.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        /// Do not read the key and TLS files or key variables the policy names (for linting
        /// policies where the secrets are not present).
        #[arg(long)]
        skip_files: bool,
        /// Print only the summary, not the effective policy.
        #[arg(long, short)]
        summary: bool,
    },
    /// Run a whole topology on loopback and check it with real HTTP requests.
    ///
    /// In this process, with no configuration: two legacy HTTP servers, a server-side
    /// translator in front of each (both register one service with a router), a service
    /// router, and a client-side translator; then requests through the client translator's
    /// listener, large transfers with their throughput, and one replica draining. Exit 0
    /// when every check passes.
    Demo {
        /// Stay up after the checks (until Ctrl-C), for trying the listener with curl.
        #[arg(long)]
        keep: bool,
        /// Address of the client translator's TCP listener (default: a free loopback port).
        #[arg(long, value_name = "IP:PORT")]
        listen: Option<SocketAddr>,
        /// Size of the large download, e.g. 64MiB.
        #[arg(long, default_value = "64MiB", value_name = "SIZE")]
        download: ByteSize,
        /// Size of the large upload, e.g. 16MiB.
        #[arg(long, default_value = "16MiB", value_name = "SIZE")]
        upload: ByteSize,
    },
    /// Ask a running translator to drain (POST /drain on its admin API), like SIGTERM.
    ///
    /// For Kubernetes' preStop hook: with --wait, returns once the translator has no
    /// connection left (GET /flows reports 0 active) or is gone, at most --timeout. Exit 0
    /// on success, 2 when the API refused or could not be reached, or the wait timed out.
    Drain {
        /// The admin API (default: $SERVAL_ADMIN_LISTEN, else 127.0.0.1:9901; a wildcard
        /// address is reached on loopback).
        #[arg(long, value_name = "IP:PORT")]
        admin: Option<SocketAddr>,
        /// Environment variable holding the admin token, sent as a bearer token when set
        /// (loopback needs none).
        #[arg(long, value_name = "VAR", default_value = "SERVAL_ADMIN_TOKEN")]
        token_env: String,
        /// Wait until the connections are gone or the process exited.
        #[arg(long)]
        wait: bool,
        /// Longest wait (with --wait), e.g. 30s, 2m.
        #[arg(long, value_name = "DURATION", default_value = "60s")]
        timeout: HumanDuration,
    },
    /// Show every form of a ServiceID: from text, a legacy address or a DNS name.
    ServiceId {
        /// An id or prefix: 64 hex digits, `0x<hex>` or `<decimal>` (each optionally with
        /// `:<bits>`), or `default`.
        #[arg(conflicts_with_all = ["legacy", "name"], required_unless_present_any = ["legacy", "name"])]
        id: Option<String>,
        /// Embed a legacy IP:port (legacy-address profile).
        #[arg(long, value_name = "IP:PORT")]
        legacy: Option<SocketAddr>,
        /// Tag for --legacy (bytes 0-3).
        #[arg(long, default_value_t = serval_stack::wire::legacy::DEFAULT_LEGACY_TAG)]
        tag: u32,
        /// Map a DNS name (provider-prefix profile).
        #[arg(long, value_name = "DNS-NAME", conflicts_with = "legacy")]
        name: Option<String>,
    },
}

fn env_help() -> String {
    let mut s = String::from("Environment overrides (applied after the policy file):\n");
    s.push_str("  SERVAL_CONFIG         policy file when none is given\n");
    s.push_str("  SERVAL_ADMIN_TOKEN    admin API bearer token (wins over admin.token)\n");
    for o in ENV_OVERRIDES {
        s.push_str(&format!("  {:<21} {} ({})\n", o.var, o.field, o.syntax));
    }
    s
}

/// How a command failed.
enum Failure {
    /// The policy is invalid (exit 1).
    Config(String),
    /// A demo check failed (exit 1).
    Check(String),
    /// Anything else (exit 2).
    Other(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo {
            keep,
            listen,
            download,
            upload,
        } => demo(keep, listen, download, upload),
        Command::ServiceId {
            id,
            legacy,
            tag,
            name,
        } => {
            let input = match (id, legacy, name) {
                (Some(text), _, _) => Some(IdInput::Text(text)),
                (_, Some(addr), _) => Some(IdInput::Legacy { tag, addr }),
                (_, _, Some(n)) => Some(IdInput::Name(n)),
                (None, None, None) => None,
            };
            match input {
                Some(input) => describe(&input)
                    .map(print)
                    .map_err(|e| Failure::Other(e.to_string())),
                None => Err(Failure::Other("give an id, --legacy or --name".into())),
            }
        }
        Command::CheckConfig {
            file,
            skip_files,
            summary,
        } => check_config(file, skip_files, summary),
        Command::Run { config } => run(config),
        Command::Drain {
            admin,
            token_env,
            wait,
            timeout,
        } => drain(admin, &token_env, wait, timeout.0),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(text)) => {
            eprint!("{text}");
            ExitCode::from(1)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Check(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn policy_path(given: Option<PathBuf>) -> Result<PathBuf, Failure> {
    given
        .or_else(|| std::env::var_os("SERVAL_CONFIG").map(PathBuf::from))
        .ok_or_else(|| Failure::Other("no policy file: give one, or set SERVAL_CONFIG".into()))
}

fn check_config(
    file: Option<PathBuf>,
    skip_files: bool,
    summary_only: bool,
) -> Result<(), Failure> {
    let path = policy_path(file)?;
    let loaded = if skip_files {
        config::parse_file(&path, &ProcessEnv)
    } else {
        config::load_file(&path, &ProcessEnv).map(|(loaded, _secrets)| loaded)
    }
    .map_err(|e| Failure::Config(e.render()))?;
    let mut out = String::new();
    if !summary_only {
        out.push_str("# Effective policy: defaults filled in, environment overrides applied.\n");
        out.push_str(&translator::report::effective_yaml(&loaded.config).map_err(Failure::Other)?);
        out.push('\n');
    }
    out.push_str(&translator::report::summary(&loaded));
    out.push_str(if skip_files {
        "\npolicy is valid (key and TLS files not checked: --skip-files)\n"
    } else {
        "\npolicy is valid\n"
    });
    print(out);
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("serval-worker")
        .build()
        .map_err(|e| Failure::Other(format!("cannot start the runtime: {e}")))
}

fn run(file: Option<PathBuf>) -> Result<(), Failure> {
    let path = policy_path(file)?;
    let (loaded, secrets) =
        config::load_file(&path, &ProcessEnv).map_err(|e| Failure::Config(e.render()))?;
    translator::logging::init(&loaded.config.log).map_err(Failure::Other)?;
    let rt = runtime()?;
    let result = rt.block_on(translator::run::run(path, &ProcessEnv, loaded, secrets));
    // Tasks still running (a flow lingering past the drain) must not hold up the exit.
    rt.shutdown_timeout(core::time::Duration::from_secs(1));
    result.map_err(|e| match e {
        translator::run::RunError::Config(e) => Failure::Config(e.render()),
        other => Failure::Other(other.to_string()),
    })
}

/// Default admin address of `drain` (the policy's default).
const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

fn drain(
    admin: Option<SocketAddr>,
    token_env: &str,
    wait: bool,
    timeout: core::time::Duration,
) -> Result<(), Failure> {
    use core::time::Duration;
    use translator::admin::client::request;
    let mut addr = match admin {
        Some(a) => a,
        None => std::env::var("SERVAL_ADMIN_LISTEN")
            .ok()
            .filter(|v| !v.is_empty() && v != "off")
            .unwrap_or_else(|| DEFAULT_ADMIN.to_owned())
            .parse()
            .map_err(|e| Failure::Other(format!("SERVAL_ADMIN_LISTEN: {e}")))?,
    };
    if addr.ip().is_unspecified() {
        let lo: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        addr.set_ip(lo);
    }
    let token = std::env::var(token_env)
        .ok()
        .filter(|t| !t.trim().is_empty());
    let rt = runtime()?;
    rt.block_on(async {
        let step = Duration::from_secs(10).min(timeout.max(Duration::from_secs(1)));
        let answer = request(
            addr,
            hyper::Method::POST,
            "/drain",
            token.as_deref(),
            b"",
            step,
        )
        .await
        .map_err(|e| Failure::Other(format!("admin API at {addr}: {e}")))?;
        if answer.status != 202 && answer.status != 200 {
            return Err(Failure::Other(format!(
                "admin API at {addr} refused the drain: {} {}",
                answer.status,
                answer.body.trim()
            )));
        }
        if !wait {
            print(format!("draining ({addr})\n"));
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            if tokio::time::Instant::now() >= deadline {
                return Err(Failure::Other(format!("still draining after {timeout:?}")));
            }
            match request(addr, hyper::Method::GET, "/flows?limit=1", None, b"", step).await {
                // Gone: the drain finished and the process exited.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                Err(_) => {}
                Ok(a) => {
                    let active = serde_json::from_str::<serde_json::Value>(&a.body)
                        .ok()
                        .and_then(|v| Some(v.get("active")?.as_u64()? + v.get("total")?.as_u64()?));
                    if active == Some(0) {
                        break;
                    }
                }
            }
        }
        print(format!("drained ({addr})\n"));
        Ok(())
    })
}

fn demo(
    keep: bool,
    listen: Option<SocketAddr>,
    download: ByteSize,
    upload: ByteSize,
) -> Result<(), Failure> {
    use translator::demo::{Demo, DemoOptions};
    // The report is the demo's output; the log only says what went wrong.
    let mut log = LogSettings::default();
    log.level = std::env::var("SERVAL_LOG").unwrap_or_else(|_| "warn".to_owned());
    translator::logging::init(&log).map_err(Failure::Other)?;
    let options = DemoOptions {
        listen,
        download: download.0,
        upload: upload.0,
        ..DemoOptions::default()
    };
    let rt = runtime()?;
    let result = rt.block_on(async {
        let mut demo = Demo::start(&options).await?;
        let report = demo.check(&options).await;
        if let Ok(text) = &report {
            print(text.clone());
            if keep {
                print(format!(
                    "\nStill running (Ctrl-C stops it). Try:\n  curl -si http://{0}/hello\n  curl -s http://{0}/bytes/100000000 | sha256sum\n",
                    demo.listen
                ));
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        demo.stop().await;
        report.map(|_| ())
    });
    rt.shutdown_timeout(core::time::Duration::from_secs(1));
    result.map_err(|e| Failure::Check(e.to_string()))
}

#[allow(clippy::print_stdout)] // a CLI prints its answer
fn print(text: String) {
    print!("{text}");
}
