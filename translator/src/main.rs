//! `serval-translator`: the command-line entry point. Kept thin; the work is in the library.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use translator::ids::{IdInput, describe};

#[derive(Parser, Debug)]
#[command(
    name = "serval-translator",
    version,
    about = "Serval translator and service router"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Walk through naming, the service table and flow resolution on an embedded default.
    Demo,
    /// Show every form of a ServiceID: from text, a legacy address or a DNS name.
    ServiceId {
        /// An id or prefix: 64 hex digits, 0x<hex>[:bits], <decimal>[:bits] or `default`.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo => translator::demo::run()
            .map(print)
            .map_err(|e| e.to_string()),
        Command::ServiceId {
            id,
            legacy,
            tag,
            name,
        } => {
            let input = match (id, legacy, name) {
                (Some(text), _, _) => IdInput::Text(text),
                (_, Some(addr), _) => IdInput::Legacy { tag, addr },
                (_, _, Some(n)) => IdInput::Name(n),
                (None, None, None) => unreachable!("clap requires one input"),
            };
            describe(&input).map(print).map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

#[allow(clippy::print_stdout)] // a CLI prints its answer
fn print(text: String) {
    print!("{text}");
}
