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
//! [`ServalStream`] (tokio `AsyncRead` + `AsyncWrite`), and for datagram mode
//! [`ServalDatagram`] (a connected datagram flow) and [`ServalDatagramSocket`] (a datagram
//! listener: unconnected datagrams and accepted datagram flows). Handles and the task share the state
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
//! # Roles and moves
//!
//! The control roles run inside the endpoint task through the core's
//! [`ControlPlane`](crate::control::ControlPlane), the same glue the deterministic simulator
//! drives: [`Endpoint::enable_router`] (registrations become FORWARD rules; SYNs meeting
//! DELAY wait for [`Endpoint::delay_verdict`]), [`Endpoint::enable_registrant`] (every
//! [`listen`](Endpoint::listen) prefix is registered with the routers, refreshed, and
//! withdrawn when its listener goes or the endpoint is dropped). [`Endpoint::rebind`]
//! moves the endpoint to a new socket and [`Endpoint::migrate`] announces a new address of
//! a wildcard-bound socket; both migrate every established flow (RSYN, then the peer
//! validates the new path) and renew registrations. A peer's address change (NAT
//! rebinding, roaming) needs nothing from the driver: the core validates the new path when
//! authenticated packets arrive from it.
//!
//! Interfaces appearing or disappearing are not watched here (no netlink): the application
//! (the translator) calls `rebind`/`migrate`; a socket bound to a wildcard address keeps
//! working across address changes by itself, since the kernel picks the new source.

mod datagram;
mod runtime;
mod socket;
mod state;
mod stream;
mod task;

use core::net::SocketAddr;
use std::io;
use std::sync::Arc;

pub use datagram::{ServalDatagram, ServalDatagramSocket};
pub use socket::SOCKET_BUFFER;
use stream::FlowRef;
pub use stream::{ServalListener, ServalStream};

use self::state::{Backlog, Shared, State};
use crate::control::{
    ControlEvent, ControlPlane, DelayConfig, RegistrantConfig, RegistryConfig, RegistrySnapshot,
    RestoreReport, RoleError,
};
use crate::sal::{ConnectError, ControlServices, EndpointConfig, EndpointStats, FlowHandle};
use crate::service_table::ServiceTable;
use crate::wire::control_msg::Verdict;
use crate::wire::sal::Protocol;
use crate::wire::{FlowId, ServiceId, ServicePrefix};

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
    /// Unconnected datagrams for a datagram listener that is not the control plane's
    /// (the driver has no datagram sockets yet), dropped.
    pub unconnected_dropped: u64,
    /// Moves to a new local address ([`Endpoint::rebind`], [`Endpoint::migrate`]).
    pub migrations: u64,
    /// `sendmsg` calls made. One call carries a whole GSO batch, so
    /// `datagrams_sent / send_calls` is the average batch.
    pub send_calls: u64,
    /// Receive calls (`recvmmsg`) that returned data; each fills up to
    /// `quinn_udp::BATCH_SIZE` buffers, each of which may hold several GRO-coalesced
    /// datagrams.
    pub recv_calls: u64,
    /// Datagrams that arrived coalesced with others by UDP GRO (counted in
    /// `datagrams_received` too).
    pub gro_datagrams: u64,
    /// Datagrams the kernel refused as larger than the path MTU (`EMSGSIZE`; the socket
    /// forbids fragmentation): `EndpointConfig::max_udp_payload` is too large for the path.
    /// Logged once per socket; not counted in `send_errors`.
    pub mtu_errors: u64,
    /// Most datagrams one send may carry on the current socket (UDP GSO segments; 1 when
    /// the kernel or the device lacks GSO, or after the kernel refused a GSO send).
    pub gso_segments: usize,
    /// Most datagrams the kernel may coalesce into one receive (UDP GRO; 1 without GRO).
    pub gro_segments: usize,
    /// SO_RCVBUF the kernel granted (bytes).
    pub recv_buffer: usize,
    /// SO_SNDBUF the kernel granted (bytes).
    pub send_buffer: usize,
}

/// What the public handles share; when the last one goes, the task is told to finish.
struct Handle {
    shared: Arc<Shared>,
}

impl core::fmt::Debug for Handle {
    // Not the whole endpoint state: a stream's `Debug` would print every flow and buffer.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Endpoint").finish_non_exhaustive()
    }
}

impl Handle {
    /// Gives flow `id` up (see `State::detach`) and wakes the task to send what its close
    /// owes: what every application-side owner of a flow does when it goes away.
    fn detach(&self, id: FlowHandle) {
        self.shared.lock().detach(id);
        self.shared.notify.notify_one();
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let now = st.clock.now();
        st.orphaned = Some(now);
        // Withdraw registrations and leases while the task lingers to send them.
        st.control.shutdown(&mut st.endpoint);
        drop(guard);
        self.shared.notify.notify_one();
    }
}

/// One live flow as [`Endpoint::flows`] lists it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FlowInfo {
    /// The local FlowID (what [`Endpoint::migrate_flow`] takes).
    pub id: FlowId,
    /// The ServiceID the flow was opened for.
    pub service: ServiceId,
    /// The local address the flow uses (the endpoint's, unless the flow was moved).
    pub local: SocketAddr,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Handshake/teardown state (`request`, `respond`, `connected`, `linger`, `closed`).
    pub state: &'static str,
    /// A datagram flow rather than a stream.
    pub datagram: bool,
    /// SAL counters.
    pub stats: crate::sal::FlowStats,
    /// The reliable stream's counters (bytes, RTT, cwnd); `None` for datagram flows.
    pub stream: Option<crate::transport::StreamStats>,
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
    /// Errors: `InvalidInput` for a config value out of range (naming the field, e.g. a
    /// `max_udp_payload` too small for the path MTU), the socket's, and `Other` outside a
    /// tokio runtime.
    pub fn bind(addr: SocketAddr, mut config: EndpointConfig) -> io::Result<Self> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
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
        let mut state = State::new(endpoint, clock);
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
        self.open(service, None, Protocol::TCP)
            .await
            .map(ServalStream::new)
    }

    /// Opens a stream to `service` at `addr` without consulting the service table.
    pub async fn connect_to(
        &self,
        service: ServiceId,
        addr: SocketAddr,
    ) -> io::Result<ServalStream> {
        self.open(service, Some(addr), Protocol::TCP)
            .await
            .map(ServalStream::new)
    }

    /// Opens a connected datagram flow to `service` (resolved like
    /// [`connect`](Self::connect), or sent to `addr` when given): the handshake authenticates
    /// both ends and the flow migrates like a stream, but delivery is best effort, each
    /// datagram in one packet. Errors as for `connect`.
    pub async fn connect_datagram(
        &self,
        service: ServiceId,
        addr: Option<SocketAddr>,
    ) -> io::Result<ServalDatagram> {
        self.open(service, addr, Protocol::UDP)
            .await
            .map(ServalDatagram::new)
    }

    /// Starts a flow of `protocol` and waits for its handshake.
    async fn open(
        &self,
        service: ServiceId,
        addr: Option<SocketAddr>,
        protocol: Protocol,
    ) -> io::Result<FlowRef> {
        let id = {
            let mut st = self.handle.shared.lock();
            if let Some(kind) = st.failed {
                return Err(stream::task_error(kind));
            }
            let now = st.clock.now();
            let (id, flow) = match addr {
                Some(a) => st.endpoint.connect_to(now, service, a, protocol),
                None => st.endpoint.connect(now, service, protocol),
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
        let (id, service, peer) = pending.wait().await?;
        Ok(FlowRef::new(self.handle.clone(), id, service, peer))
    }

    /// Accepts stream flows for every ServiceID under `prefix`.
    ///
    /// Errors: `AddrInUse` when the table refuses the DEMUX rule (see
    /// [`ListenError`](crate::sal::ListenError)).
    ///
    /// With the registrant role on ([`enable_registrant`](Self::enable_registrant)), the
    /// prefix is also registered with every router, and withdrawn (UNREGISTER) when the
    /// listener is dropped.
    pub fn listen(&self, prefix: ServicePrefix) -> io::Result<ServalListener> {
        self.listen_with_backlog(prefix, DEFAULT_BACKLOG)
    }

    /// [`listen`](Self::listen) with an accept queue of at most `backlog` flows: further
    /// completed handshakes are refused (the client sees `ConnectionRefused`) until the
    /// application accepts. A zero backlog is taken as one.
    pub fn listen_with_backlog(
        &self,
        prefix: ServicePrefix,
        backlog: usize,
    ) -> io::Result<ServalListener> {
        self.listen_protocol(prefix, backlog, Protocol::TCP)
    }

    /// Receives on every ServiceID under `prefix` in datagram mode: unconnected datagrams
    /// ([`ServalDatagramSocket::recv_from`]) and connected datagram flows
    /// ([`ServalDatagramSocket::accept`]). Registered with routers like
    /// [`listen`](Self::listen).
    pub fn listen_datagram(&self, prefix: ServicePrefix) -> io::Result<ServalDatagramSocket> {
        let listener = self.listen_protocol(prefix, DEFAULT_BACKLOG, Protocol::UDP)?;
        Ok(ServalDatagramSocket::new(listener, *prefix.id()))
    }

    fn listen_protocol(
        &self,
        prefix: ServicePrefix,
        backlog: usize,
        protocol: Protocol,
    ) -> io::Result<ServalListener> {
        let mut st = self.handle.shared.lock();
        let id = st
            .endpoint
            .listen(prefix, protocol)
            .map_err(|e| io::Error::new(io::ErrorKind::AddrInUse, e))?;
        match st.control.add_prefix(prefix) {
            Ok(registered) => {
                let queue = Backlog::new(backlog.max(1), registered.then_some(prefix));
                st.listeners.insert(id, queue);
            }
            Err(e) => {
                st.endpoint.unlisten(id);
                return Err(io::Error::new(io::ErrorKind::OutOfMemory, e));
            }
        }
        drop(st);
        self.handle.shared.notify.notify_one();
        Ok(ServalListener::new(self.handle.clone(), id))
    }

    /// Makes this endpoint a service router: it accepts registrations (REGISTER /
    /// UNREGISTER to the router control ServiceID, authenticated by the keys in `registry`)
    /// and turns them into FORWARD rules, and parks SYNs that meet a DELAY rule in a queue
    /// bounded by `delay` until [`delay_verdict`](Self::delay_verdict). Bind the endpoint
    /// with `config.forwarding` on, or it terminates flows instead of forwarding them.
    ///
    /// Errors: `AddrInUse` when the control ServiceID is taken or the role is already on.
    pub fn enable_router(&self, registry: RegistryConfig, delay: DelayConfig) -> io::Result<()> {
        let mut st = self.handle.shared.lock();
        let st = &mut *st;
        st.control
            .enable_router(&mut st.endpoint, registry, ControlServices::DEFAULT, delay)
            .map_err(|e| io::Error::new(io::ErrorKind::AddrInUse, e))?;
        Ok(())
    }

    /// Makes this endpoint register its listeners' prefixes with `routers` (refreshed
    /// before the leases expire, withdrawn when a listener goes). Listeners opened before
    /// this call are not registered.
    ///
    /// Errors: `AddrInUse` when the host control ServiceID is taken or the role is already
    /// on; `InvalidInput` for more routers than `config` allows.
    pub fn enable_registrant(
        &self,
        config: RegistrantConfig,
        routers: &[SocketAddr],
    ) -> io::Result<()> {
        {
            let mut guard = self.handle.shared.lock();
            let st = &mut *guard;
            st.control
                .enable_registrant(&mut st.endpoint, config, ControlServices::DEFAULT, routers)
                .map_err(|e| match e {
                    RoleError::Registrant(_) => io::Error::new(io::ErrorKind::InvalidInput, e),
                    _ => io::Error::new(io::ErrorKind::AddrInUse, e),
                })?;
        }
        self.handle.shared.notify.notify_one();
        Ok(())
    }

    /// Whether `router` has acknowledged the registration of `prefix`.
    pub fn is_registered(&self, router: SocketAddr, prefix: &ServicePrefix) -> bool {
        self.handle
            .shared
            .lock()
            .control
            .is_registered(router, prefix)
    }

    /// Releases (`release`) or drops every SYN parked for a ServiceID under `prefix`; a
    /// released SYN is resolved again at once. Returns how many were waiting.
    pub fn delay_verdict(&self, prefix: &ServicePrefix, release: bool) -> usize {
        let verdict = if release {
            Verdict::Release
        } else {
            Verdict::Drop
        };
        let n = self.handle.shared.lock().control.verdict(prefix, verdict);
        self.handle.shared.notify.notify_one();
        n
    }

    /// Takes the control plane's events (leases, registrations, DELAY), oldest first. Up
    /// to [`control::plane::MAX_EVENTS`](crate::control::plane::MAX_EVENTS) are kept
    /// between calls; older ones are dropped and counted.
    pub fn control_events(&self) -> Vec<ControlEvent> {
        let mut st = self.handle.shared.lock();
        core::iter::from_fn(|| st.control.poll_event()).collect()
    }

    /// Router role: the registry's leases (with the time they have left) and replay state,
    /// for the next process to [`restore_registry`](Self::restore_registry), so a router
    /// restart loses no registration. `None` without the router role.
    pub fn registry_snapshot(&self) -> Option<RegistrySnapshot> {
        let st = self.handle.shared.lock();
        let now = st.clock.now();
        st.control.registry().map(|r| r.snapshot(now))
    }

    /// Router role: takes over a previous process's [`registry_snapshot`](Self::registry_snapshot)
    /// (leases and their FORWARD rules, replay windows); call it right after
    /// [`enable_router`](Self::enable_router). `None` without the router role.
    pub fn restore_registry(&self, snapshot: &RegistrySnapshot) -> Option<RestoreReport> {
        let mut guard = self.handle.shared.lock();
        let st = &mut *guard;
        let now = st.clock.now();
        let report = st.control.restore_registry(now, snapshot, &mut st.endpoint);
        drop(guard);
        self.handle.shared.notify.notify_one();
        report
    }

    /// Runs `f` on the control plane (its roles' counters, leases, parked SYNs).
    pub fn with_control<R>(&self, f: impl FnOnce(&ControlPlane) -> R) -> R {
        f(&self.handle.shared.lock().control)
    }

    /// Moves the endpoint to a new socket bound at `addr` (a new address or interface):
    /// the old socket is closed, every established flow announces the new address to its
    /// peer (RSYN; the peer validates the path before using it), and registrations are
    /// renewed from it. Returns the address bound. As with [`bind`](Self::bind), a
    /// wildcard IP keeps the IP of `config.local_addr`; pass the new IP to change it.
    pub fn rebind(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let (socket, _, _) = socket::bind_udp(addr, SOCKET_BUFFER)?;
        let socket = socket.into_std()?;
        let bound = socket.local_addr()?;
        let mut st = self.handle.shared.lock();
        let local = if bound.ip().is_unspecified() {
            SocketAddr::new(st.endpoint.local_addr().ip(), bound.port())
        } else {
            bound
        };
        st.new_socket = Some(socket);
        st.move_to(local);
        drop(st);
        self.handle.shared.notify.notify_one();
        Ok(local)
    }

    /// Announces that the endpoint is now reached at `new_local` without changing its
    /// socket (the socket is bound to a wildcard address and the host's address changed):
    /// every established flow tells its peer (RSYN) and registrations are renewed.
    pub fn migrate(&self, new_local: SocketAddr) {
        self.handle.shared.lock().move_to(new_local);
        self.handle.shared.notify.notify_one();
    }

    /// Moves one established flow to `new_local` (an address of this host, e.g. a second
    /// interface): it announces the address to its peer (RSYN) and, once the path is
    /// validated, sends from it. The other flows stay where they are.
    ///
    /// Errors: `NotFound` when no flow has local FlowID `id`, `InvalidInput` when the flow
    /// is not established (nothing to move yet, or already closing) or `new_local` is of
    /// another address family than the endpoint's socket.
    pub fn migrate_flow(&self, id: FlowId, new_local: SocketAddr) -> io::Result<()> {
        let mut st = self.handle.shared.lock();
        if new_local.is_ipv4() != st.endpoint.local_addr().is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the new address is of another family than the endpoint's socket",
            ));
        }
        let h = FlowHandle(id);
        let Some(slot) = st.flows.get_mut(&h) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such flow"));
        };
        if !slot.flow.is_established() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the flow is not established",
            ));
        }
        slot.flow.migrate(new_local);
        st.dirty.push(h);
        drop(st);
        self.handle.shared.notify.notify_one();
        Ok(())
    }

    /// Up to `limit` live flows in FlowID order, starting after `after` (pagination for
    /// operators' listings; a snapshot, taken under the endpoint's lock).
    pub fn flows(&self, after: Option<FlowId>, limit: usize) -> Vec<FlowInfo> {
        let st = self.handle.shared.lock();
        let endpoint_local = st.endpoint.local_addr();
        let mut ids: Vec<FlowId> = st
            .flows
            .keys()
            .map(|h| h.0)
            .filter(|id| after.is_none_or(|a| id.get() > a.get()))
            .collect();
        ids.sort_unstable_by_key(|id| id.get());
        ids.truncate(limit);
        ids.into_iter()
            .filter_map(|id| {
                let f = &st.flows.get(&FlowHandle(id))?.flow;
                Some(FlowInfo {
                    id,
                    service: f.service(),
                    local: f.local_addr().unwrap_or(endpoint_local),
                    peer: f.peer_addr(),
                    state: f.state_name(),
                    datagram: f.is_datagram(),
                    stats: f.stats(),
                    stream: f.stream_stats(),
                })
            })
            .collect()
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
    /// The flow's handle, ServiceID and peer once connected.
    async fn wait(mut self) -> io::Result<(FlowHandle, ServiceId, SocketAddr)> {
        let Some(id) = self.id else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let handle = self.handle;
        let r = core::future::poll_fn(|cx| {
            let mut st = handle.shared.lock();
            let failed = st.failed;
            let Some(slot) = st.flows.get_mut(&id) else {
                return core::task::Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            if slot.connected {
                let (service, peer) = (slot.flow.service(), slot.flow.peer_addr());
                return core::task::Poll::Ready(Ok((id, service, peer)));
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
            // The caller's handle owns the flow now.
            self.id = None;
        }
        r
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.handle.detach(id);
        }
    }
}
