//! `serval-attack`: an off-path attacker to point at a deployment you operate
//! ([`serval_tests::attack`]). Every run is bounded by `--count`, `--duration` and `--rate`.
//!
//! * `spray --target ADDR [--target ADDR…] --kinds rst,fin,rsyn,path-challenge,data
//!   --flow-ids random|sweep:START-END|leaked:DST[:SRC]`: forged packets at connected
//!   flows (guessed, brute-forced, or known FlowIDs without keys).
//! * `syn-flood --target ADDR --service ID`: well-formed SYNs with random FlowIDs, key
//!   shares and source ports.
//! * `register --router ADDR --prefix P [--unregister] [--key-id N] [--key HEX]
//!   [--sequence N] [--addr ADDR]`: one REGISTER / UNREGISTER, signed with `--key` or a
//!   random tag.
//!
//! Sources: `--source IP` (repeatable, e.g. `127.0.0.2`), `--sockets N` ports per IP.
//! Prints one line: packets sent per kind, the rate achieved, send errors, replies.
//! What the victims did with them is in their drop counters (admin API `/metrics`).

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serval_stack::wire::{FlowId, ServiceId, ServicePrefix};
use serval_tests::attack::{self, FlowIds, Kind, Plan, Signer};

#[derive(Debug, Parser)]
#[command(
    name = "serval-attack",
    version,
    about = "Off-path attacker for Serval deployments (bounded)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Forged control and data packets at existing flows.
    Spray {
        #[command(flatten)]
        common: Common,
        /// Kinds to forge, in turn.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "rst,fin,rsyn,path-challenge,data"
        )]
        kinds: Vec<Kind>,
        /// `random`, `sweep:START-END` or `leaked:DST[:SRC]`.
        #[arg(long, default_value = "random", value_parser = parse_flow_ids)]
        flow_ids: FlowIds,
    },
    /// A SYN flood for one service.
    SynFlood {
        #[command(flatten)]
        common: Common,
        /// The ServiceID the SYNs ask for: any `ServiceId` text form, or `name:<dns name>`.
        #[arg(long, value_parser = parse_service)]
        service: ServiceId,
    },
    /// One REGISTER or UNREGISTER to a router.
    Register {
        /// The router's Serval UDP address.
        #[arg(long)]
        router: SocketAddr,
        /// The prefix (`ServicePrefix` text form).
        #[arg(long)]
        prefix: ServicePrefix,
        /// Send UNREGISTER instead of REGISTER.
        #[arg(long)]
        unregister: bool,
        /// Key id written in the message.
        #[arg(long, default_value_t = 1)]
        key_id: u32,
        /// Key to sign with (hex); without it, a random tag.
        #[arg(long)]
        key: Option<String>,
        /// Sequence number.
        #[arg(long, default_value_t = 1)]
        sequence: u64,
        /// Advertised instance address (default: "the source you see").
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// Source IP to send from.
        #[arg(long, default_value = "127.0.0.1")]
        source: IpAddr,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// Victim UDP address (repeatable).
    #[arg(long = "target", required = true)]
    targets: Vec<SocketAddr>,
    /// Most packets in all.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Most packets per second (0: unpaced).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Longest run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Source IP (repeatable).
    #[arg(long = "source", default_value = "127.0.0.1")]
    sources: Vec<IpAddr>,
    /// Sockets (source ports) per source IP.
    #[arg(long, default_value_t = 1)]
    sockets: usize,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl Common {
    fn plan(&self, kinds: Vec<Kind>, flow_ids: FlowIds, service: ServiceId) -> Plan {
        let mut plan = Plan::new(self.targets.clone());
        plan.kinds = kinds;
        plan.flow_ids = flow_ids;
        plan.service = service;
        plan.count = self.count;
        plan.rate = self.rate;
        plan.duration = Duration::from_secs_f64(self.duration.clamp(0.0, 86_400.0));
        plan.sources = self.sources.clone();
        plan.sockets_per_source = self.sockets;
        plan.seed = self.seed;
        plan
    }
}

fn parse_flow_ids(s: &str) -> Result<FlowIds, String> {
    let id = |t: &str| {
        t.parse::<u32>()
            .ok()
            .and_then(FlowId::new)
            .ok_or_else(|| format!("`{t}` is not a non-zero FlowID"))
    };
    match s.split_once(':') {
        None if s == "random" => Ok(FlowIds::Random),
        Some(("sweep", range)) => {
            let (a, b) = range
                .split_once('-')
                .ok_or("sweep:START-END, e.g. sweep:1-65536")?;
            Ok(FlowIds::Sweep {
                start: id(a)?.get(),
                end: id(b)?.get(),
            })
        }
        Some(("leaked", ids)) => {
            let (dst, src) = match ids.split_once(':') {
                Some((d, s)) => (id(d)?, Some(id(s)?)),
                None => (id(ids)?, None),
            };
            Ok(FlowIds::Leaked { dst, src })
        }
        _ => Err("random, sweep:START-END or leaked:DST[:SRC]".to_owned()),
    }
}

fn parse_service(s: &str) -> Result<ServiceId, String> {
    match s.strip_prefix("name:") {
        Some(n) => serval_stack::wire::name::service_id_for_name(n).map_err(|e| e.to_string()),
        None => s
            .parse()
            .map_err(|e: serval_stack::wire::ParseIdError| e.to_string()),
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Spray {
            common,
            kinds,
            flow_ids,
        } => attack::spray(&common.plan(kinds, flow_ids, ServiceId::from_u32(0)))
            .map(|r| r.to_string()),
        Command::SynFlood { common, service } => {
            attack::spray(&common.plan(vec![Kind::Syn], FlowIds::Random, service))
                .map(|r| r.to_string())
        }
        Command::Register {
            router,
            prefix,
            unregister,
            key_id,
            key,
            sequence,
            addr,
            source,
        } => {
            let key = match key.as_deref().map(unhex) {
                Some(None) => {
                    let _ = writeln!(io::stderr().lock(), "serval-attack: --key is not hex");
                    return ExitCode::FAILURE;
                }
                Some(Some(k)) => Some(k),
                None => None,
            };
            let signer = key.as_deref().map_or(Signer::Forged, Signer::Key);
            let bytes = attack::forge_registration(
                unregister, prefix, addr, key_id, sequence, signer, sequence,
            );
            UdpSocket::bind(SocketAddr::new(source, 0))
                .and_then(|s| s.send_to(&bytes, router))
                .map(|n| {
                    format!(
                        "sent {} ({n} bytes) to {router}",
                        if unregister { "unregister" } else { "register" }
                    )
                })
        }
    };
    match result {
        Ok(line) => {
            let _ = writeln!(io::stdout().lock(), "{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(io::stderr().lock(), "serval-attack: {e}");
            ExitCode::FAILURE
        }
    }
}
