//! Relaying bytes between the accepted connection and the one the translator opened.
//!
//! - [`relay`] / [`relay_until`] ([`copy`]): bidirectional copy between any two tokio
//!   `AsyncRead + AsyncWrite` values — a `TcpStream` and a `serval_stack::driver::ServalStream`
//!   in production, `tokio::io::duplex` pairs in tests — with half-close per direction,
//!   idle and half-close timeouts, bounded buffers and a [`RelayReport`];
//! - [`Limiter`] ([`limit`]): global and per-listener connection limits;
//! - [`AccessLog`]: the one structured line per closed connection;
//! - [`abort_tcp`]: close a TCP connection with a reset.
//!
//! A role's accept loop is: admit ([`Limiter::try_admit`]) → decide (`crate::policy`) →
//! connect → [`relay_until`] (stopped by the drain deadline) → if the outcome is not clean,
//! reset the side still open → [`AccessLog::emit`] → drop the permit.

pub mod copy;
pub mod limit;

use core::net::SocketAddr;
use core::time::Duration;

use serval_stack::wire::ServiceId;

pub use copy::{Outcome, RelayConfig, RelayReport, Side, relay, relay_until};
pub use limit::{Gate, LimitRefusal, LimitStats, Limiter, Permit};

/// Target of the access log lines (`log.access_log: false` filters it out).
pub const ACCESS_LOG_TARGET: &str = "access";

/// The access-log record of one relayed connection.
#[derive(Clone, Debug)]
pub struct AccessLog<'a> {
    /// `client` or `server`.
    pub role: &'a str,
    /// Listener (client role) or service (server role) name.
    pub via: &'a str,
    /// The peer of the accepted connection (legacy client, or the Serval peer's address).
    pub peer: Option<SocketAddr>,
    /// The legacy client a client translator's preamble carried (server role), when used.
    pub client: Option<SocketAddr>,
    /// The ServiceID of the flow.
    pub service: Option<ServiceId>,
    /// Where the translator connected (backend address, or the Serval peer that answered).
    pub upstream: Option<SocketAddr>,
    /// Time to open the upstream: the Serval connect (client role) or the backend's TCP
    /// connect, retries included (server role).
    pub connect: Option<Duration>,
    /// Time of the TLS handshake on the Serval leg, when `tls` is on.
    pub tls_handshake: Option<Duration>,
    /// What the relay did.
    pub report: &'a RelayReport,
}

impl AccessLog<'_> {
    /// Emits the line at INFO on target [`ACCESS_LOG_TARGET`]; with the JSON log format
    /// every field is a JSON field. Records the connect, TLS-handshake and relay durations
    /// in their histograms too (`crate::metrics`; recorded even when the access log is
    /// filtered out).
    pub fn emit(&self) {
        crate::metrics::record_access(self);
        let r = self.report;
        let error_kind = match r.outcome {
            Outcome::Error(_, kind) => Some(kind.to_string()),
            _ => None,
        };
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            role = self.role,
            via = self.via,
            peer = self.peer.map(tracing::field::display),
            client = self.client.map(tracing::field::display),
            service = self.service.map(tracing::field::display),
            upstream = self.upstream.map(tracing::field::display),
            bytes_in = r.inbound_to_outbound,
            bytes_out = r.outbound_to_inbound,
            duration_ms = millis(r.duration),
            connect_ms = self.connect.map(millis),
            tls_ms = self.tls_handshake.map(millis),
            outcome = r.outcome.label(),
            error = error_kind,
            "connection closed"
        );
    }
}

/// Whole milliseconds, saturating (a log field).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Makes the kernel answer with a reset when `stream` is dropped (`SO_LINGER` 0), instead
/// of a FIN that would tell the peer the stream ended normally. Use it on the side still
/// open when the other side was reset or the relay timed out.
pub fn abort_tcp(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO))
}

#[cfg(test)]
mod tests;
