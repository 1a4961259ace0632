//! The stack on real sockets: the only module that touches tokio, sockets, the OS clock and
//! OS randomness (feature `rt-tokio`, on by default).
//!
//! [`Endpoint::bind`] opens one UDP socket (IPv4 or IPv6, kernel buffers sized to
//! [`SOCKET_BUFFER`]) and spawns the **endpoint task**, which owns the core
//! [`sal::Endpoint`](crate::sal::Endpoint) and every [`Flow`](crate::sal::Flow) and drives
//! them by the calling contract of `sal`: every received datagram goes through
//! `Endpoint::handle`, every flow touched by input, a timer or the application is pumped
//! (`poll_transmit` until empty, events, endpoint events), and one timer sleeps until the
//! earliest deadline of the endpoint and its flows. Datagrams the endpoint addresses to
//! itself (a connect to a local listener) are looped back without a syscall.
//!
//! The application holds cheap handles: [`Endpoint`] (clonable), [`ServalListener`] and
//! [`ServalStream`] (tokio `AsyncRead` + `AsyncWrite`). Handles and the task share the state
//! behind one mutex, quinn's shape: a stream's `poll_write` copies straight into the flow's
//! send buffer and `poll_read` straight out of its receive buffer (no second buffer, no
//! byte channel), then notifies the task; the task wakes a handle's stored waker when its
//! flow reports `Readable`, `Writable`, `Connected` or `Closed`. The flow's own bounded
//! buffers are the backpressure: a write is `Pending` while the send buffer is full, a read
//! while nothing is buffered.
//!
//! Time: the task maps tokio's monotonic clock to [`Timestamp`](crate::time::Timestamp)
//! (µs since bind), in `runtime.rs`, the one place with a clock read; the endpoint's RNG is
//! seeded from the OS there too, unless the config carries a non-zero seed.
//!
//! # Sharding later
//!
//! One task and one socket serve every flow today. To scale over cores, bind N sockets to
//! the same address with `SO_REUSEPORT`, each with its own task and its own core endpoint
//! (its own flow table, sharing a cloned service table and key material), and steer
//! datagrams to the socket that owns the flow: FlowIDs are chosen by the endpoint, so a few
//! bits of the local FlowID can name the shard, and a reuseport BPF program (or the first
//! packet's shard forwarding it over a channel) delivers each datagram to it. Nothing in the
//! state below is global to the process for that reason.
//!
//! # Not yet here
//!
//! UDP GSO/GRO (quinn-udp), the DELAY queue and the control plane (unconnected datagrams
//! are counted and dropped), sending from a migrated local address (`Transmit::src` is
//! ignored: one socket), and counting kernel receive-queue drops (`SO_RXQ_OVFL`).

mod runtime;
mod socket;
mod state;
mod stream;
mod task;

use core::net::SocketAddr;
use std::io;
use std::sync::Arc;

pub use socket::SOCKET_BUFFER;
pub use stream::{ServalListener, ServalStream};

use self::state::{Backlog, Shared, State};
use crate::sal::{ConnectError, EndpointConfig, EndpointStats, FlowHandle};
use crate::service_table::ServiceTable;
use crate::wire::sal::Protocol;
use crate::wire::{ServiceId, ServicePrefix};

/// Default bound of one listener's accept queue; more completed handshakes are refused.
pub const DEFAULT_BACKLOG: usize = 1024;

/// Counters of the driver (the core's are in [`Endpoint::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverStats {
    /// Datagrams read from the socket.
    pub datagrams_received: u64,
    /// Datagrams handed to the socket.
    pub datagrams_sent: u64,
    /// Sends the socket refused (the transport's loss recovery covers them).
    pub send_errors: u64,
    /// Per-datagram receive errors (ICMP errors surfacing on the socket).
    pub recv_errors: u64,
    /// Datagrams the endpoint sent itself, handled without a syscall.
    pub loopback: u64,
    /// Looped-back datagrams dropped by the per-pump budget (a local forwarding loop).
    pub loopback_dropped: u64,
    /// Completed handshakes refused because the listener's queue was full or gone.
    pub refused_backlog: u64,
    /// SYNs that hit a DELAY rule, dropped: the driver has no delay queue yet.
    pub delayed_dropped: u64,
    /// Unconnected datagrams dropped: the driver has no control plane yet.
    pub unconnected_dropped: u64,
    /// SO_RCVBUF the kernel granted (bytes).
    pub recv_buffer: usize,
    /// SO_SNDBUF the kernel granted (bytes).
    pub send_buffer: usize,
}

/// What the public handles share; when the last one goes, the task is told to finish.
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        let now = st.clock.now();
        st.orphaned = Some(now);
        drop(st);
        self.shared.notify.notify_one();
    }
}

/// A Serval endpoint on a UDP socket: open flows ([`connect`](Self::connect)), accept them
/// ([`listen`](Self::listen)), and manage the service table. Clones share the endpoint; the
/// endpoint task stops once every clone, listener and stream is dropped (after up to 5 s for
/// closing flows to finish).
#[derive(Clone, Debug)]
pub struct Endpoint {
    handle: Arc<Handle>,
}

impl Endpoint {
    /// Binds a UDP socket at `addr` and starts the endpoint task on the current tokio
    /// runtime.
    ///
    /// `config.local_addr` becomes the socket's address (peers and routers must reach the
    /// endpoint there): bind a specific IP, or set `config.local_addr`'s IP and bind the
    /// wildcard, in which case only the port is taken from the socket. An all-zero
    /// `config.rng_seed` (the default) is replaced by one from the OS.
    ///
    /// Errors: the socket's, and `Other` outside a tokio runtime.
    pub fn bind(addr: SocketAddr, mut config: EndpointConfig) -> io::Result<Self> {
        let rt = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let _guard = rt.enter();
        let (socket, rcv, snd) = socket::bind_udp(addr, SOCKET_BUFFER)?;
        let bound = socket.local_addr()?;
        config.local_addr = if bound.ip().is_unspecified() {
            SocketAddr::new(config.local_addr.ip(), bound.port())
        } else {
            bound
        };
        if config.rng_seed == [0; 32] {
            config.rng_seed = runtime::os_seed()?;
        }
        let clock = runtime::Clock::start();
        let endpoint = crate::sal::Endpoint::new(config, clock.now());
        let mut state = State::new(endpoint, clock, DEFAULT_BACKLOG);
        state.stats.recv_buffer = rcv;
        state.stats.send_buffer = snd;
        let shared = Arc::new(Shared::new(state));
        rt.spawn(task::run(shared.clone(), socket));
        Ok(Self {
            handle: Arc::new(Handle { shared }),
        })
    }

    /// The endpoint's address as peers reach it (`config.local_addr`).
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.shared.lock().endpoint.local_addr()
    }

    /// Opens a stream to `service`, resolved through the service table (late binding: a
    /// FORWARD rule's next hop, or a local listener).
    ///
    /// Errors: `NotFound` when no rule matches, `PermissionDenied` for a DROP rule,
    /// `ConnectionRefused` when nothing listens there, `TimedOut` when the handshake is not
    /// answered, `ConnectionReset` / `ConnectionAborted` for the rest.
    pub async fn connect(&self, service: ServiceId) -> io::Result<ServalStream> {
        self.open(service, None).await
    }

    /// Opens a stream to `service` at `addr` without consulting the service table.
    pub async fn connect_to(
        &self,
        service: ServiceId,
        addr: SocketAddr,
    ) -> io::Result<ServalStream> {
        self.open(service, Some(addr)).await
    }

    async fn open(&self, service: ServiceId, addr: Option<SocketAddr>) -> io::Result<ServalStream> {
        let id = {
            let mut st = self.handle.shared.lock();
            if let Some(kind) = st.failed {
                return Err(stream::task_error(kind));
            }
            let now = st.clock.now();
            let (id, flow) = match addr {
                Some(a) => st.endpoint.connect_to(now, service, a, Protocol::TCP),
                None => st.endpoint.connect(now, service, Protocol::TCP),
            }
            .map_err(connect_error)?;
            st.add_flow(id, flow);
            id
        };
        self.handle.shared.notify.notify_one();
        // Dropping this future before the handshake ends abandons the flow.
        let pending = Pending {
            handle: &self.handle,
            id: Some(id),
        };
        pending.wait().await
    }

    /// Accepts stream flows for every ServiceID under `prefix`.
    ///
    /// Errors: `AddrInUse` when the table refuses the DEMUX rule (see
    /// [`ListenError`](crate::sal::ListenError)).
    pub fn listen(&self, prefix: ServicePrefix) -> io::Result<ServalListener> {
        let mut st = self.handle.shared.lock();
        let id = st
            .endpoint
            .listen(prefix, Protocol::TCP)
            .map_err(|e| io::Error::new(io::ErrorKind::AddrInUse, e))?;
        st.listeners.insert(id, Backlog::default());
        Ok(ServalListener::new(self.handle.clone(), id))
    }

    /// Runs `f` on the service table (add FORWARD, DELAY or DROP rules; DEMUX rules belong
    /// to listeners). Keep it short: the endpoint task waits meanwhile.
    pub fn with_table<R>(&self, f: impl FnOnce(&mut ServiceTable) -> R) -> R {
        f(self.handle.shared.lock().endpoint.table_mut())
    }

    /// The core endpoint's counters.
    pub fn stats(&self) -> EndpointStats {
        self.handle.shared.lock().endpoint.stats()
    }

    /// The driver's counters.
    pub fn driver_stats(&self) -> DriverStats {
        self.handle.shared.lock().stats
    }

    /// Flows alive (including closing ones not yet drained).
    pub fn flow_count(&self) -> usize {
        self.handle.shared.lock().flows.len()
    }
}

/// The I/O error of a failed [`crate::sal::Endpoint::connect`].
fn connect_error(e: ConnectError) -> io::Error {
    let kind = match e {
        ConnectError::NoRoute => io::ErrorKind::NotFound,
        ConnectError::Prohibited => io::ErrorKind::PermissionDenied,
        ConnectError::Delayed => io::ErrorKind::Unsupported,
        _ => io::ErrorKind::OutOfMemory,
    };
    io::Error::new(kind, e)
}

/// A connect waiting for its handshake; dropped early, it abandons the flow.
struct Pending<'a> {
    handle: &'a Arc<Handle>,
    id: Option<FlowHandle>,
}

impl Pending<'_> {
    async fn wait(mut self) -> io::Result<ServalStream> {
        let Some(id) = self.id else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let handle = self.handle;
        let r = core::future::poll_fn(|cx| {
            let mut st = handle.shared.lock();
            let failed = st.failed;
            let local = st.endpoint.local_addr();
            let Some(slot) = st.flows.get_mut(&id) else {
                return core::task::Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            if slot.connected {
                let (service, peer) = (slot.flow.service(), slot.flow.peer_addr());
                return core::task::Poll::Ready(Ok(ServalStream::new(
                    handle.clone(),
                    id,
                    service,
                    local,
                    peer,
                )));
            }
            if let Some(reason) = slot.closed {
                return core::task::Poll::Ready(Err(stream::close_error(reason)));
            }
            if let Some(kind) = failed {
                return core::task::Poll::Ready(Err(stream::task_error(kind)));
            }
            slot.write = Some(cx.waker().clone());
            core::task::Poll::Pending
        })
        .await;
        if r.is_ok() {
            // The stream owns the flow now.
            self.id = None;
        }
        r
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.handle.shared.lock().detach(id);
            self.handle.shared.notify.notify_one();
        }
    }
}
