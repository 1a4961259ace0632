//! [`ServalStream`] and [`ServalListener`]: the application's side of flows.

use core::net::SocketAddr;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Handle;
use crate::sal::{CloseReason, Flow, FlowHandle};
use crate::service_table::ListenerId;
use crate::time::Timestamp;
use crate::transport::{ReadError, WriteError};
use crate::wire::ServiceId;

/// The I/O error a flow's end maps to.
pub(super) fn close_error(reason: CloseReason) -> io::Error {
    let kind = match reason {
        CloseReason::Refused => io::ErrorKind::ConnectionRefused,
        CloseReason::Reset => io::ErrorKind::ConnectionReset,
        CloseReason::TimedOut | CloseReason::IdleTimeout => io::ErrorKind::TimedOut,
        CloseReason::Aborted => io::ErrorKind::ConnectionAborted,
        // A write after both sides finished.
        _ => io::ErrorKind::BrokenPipe,
    };
    io::Error::new(kind, format!("serval flow closed: {reason:?}"))
}

/// The error for a handle whose endpoint task has stopped.
pub(super) fn task_error(kind: io::ErrorKind) -> io::Error {
    io::Error::new(kind, "the serval endpoint task has stopped")
}

/// One flow as the application holds it, a stream or a connected datagram flow alike:
/// both report the same peer and counters, and both let the flow go when dropped.
#[derive(Debug)]
pub(super) struct FlowRef {
    pub(super) handle: Arc<Handle>,
    pub(super) id: FlowHandle,
    service: ServiceId,
    /// The peer when the handshake completed; reported once the flow is gone.
    peer: SocketAddr,
}

impl FlowRef {
    pub(super) fn new(
        handle: Arc<Handle>,
        id: FlowHandle,
        service: ServiceId,
        peer: SocketAddr,
    ) -> Self {
        Self {
            handle,
            id,
            service,
            peer,
        }
    }

    pub(super) fn peer_service(&self) -> ServiceId {
        self.service
    }

    pub(super) fn peer_addr(&self) -> SocketAddr {
        let st = self.handle.shared.lock();
        st.flows
            .get(&self.id)
            .map_or(self.peer, |s| s.flow.peer_addr())
    }

    pub(super) fn stats(&self) -> Option<crate::sal::FlowStats> {
        let st = self.handle.shared.lock();
        st.flows.get(&self.id).map(|s| s.flow.stats())
    }

    /// Applies `op` (close or abort) to the flow at the driver's time, if it is still
    /// there, and wakes the task to send what that owes.
    fn end(&self, op: impl FnOnce(&mut Flow, Timestamp)) {
        let mut st = self.handle.shared.lock();
        let now = st.clock.now();
        if let Some(slot) = st.flows.get_mut(&self.id) {
            op(&mut slot.flow, now);
            st.dirty.push(self.id);
        }
        drop(st);
        self.handle.shared.notify.notify_one();
    }
}

impl Drop for FlowRef {
    fn drop(&mut self) {
        self.handle.detach(self.id);
    }
}

/// A reliable byte stream over one Serval flow: tokio [`AsyncRead`] + [`AsyncWrite`].
///
/// Writes go into the flow's send buffer (bounded by the stream config's `send_buffer`); a
/// write returns `Pending` while it is full. Reads return `Pending` while nothing is
/// buffered, and `Ok(0)` at the end of the stream. [`poll_shutdown`](AsyncWrite::poll_shutdown)
/// half-closes (our FIN after the buffered bytes; the other direction keeps flowing).
/// Dropping the stream closes our side cleanly too; data still arriving is discarded.
#[derive(Debug)]
pub struct ServalStream {
    flow: FlowRef,
}

impl ServalStream {
    pub(super) fn new(flow: FlowRef) -> Self {
        Self { flow }
    }

    /// The local FlowID (as [`Endpoint::flows`](super::Endpoint::flows) lists it).
    pub fn flow_id(&self) -> crate::wire::FlowId {
        self.flow.id.0
    }

    /// The ServiceID the flow was opened for (the one the client asked for).
    pub fn peer_service(&self) -> ServiceId {
        self.flow.peer_service()
    }

    /// The endpoint's UDP address as peers reach it (after a rebind, the new one).
    pub fn local_addr(&self) -> SocketAddr {
        self.flow.handle.shared.lock().endpoint.local_addr()
    }

    /// The peer's UDP address (through a router: the server that answered, not the
    /// router); after the peer moved and the new path was validated, the new address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.flow.peer_addr()
    }

    /// The flow's counters (SAL: control packets, migrations, path validations, drops).
    pub fn stats(&self) -> Option<crate::sal::FlowStats> {
        self.flow.stats()
    }

    /// The reliable stream's counters (segments, retransmissions, RTO and TLP firings,
    /// RTT, congestion window), while the flow exists.
    pub fn stream_stats(&self) -> Option<crate::transport::StreamStats> {
        let st = self.flow.handle.shared.lock();
        st.flows
            .get(&self.flow.id)
            .and_then(|s| s.flow.stream_stats())
    }

    /// Resets the flow at once (an authenticated RST); buffered data is lost.
    pub fn abort(&self) {
        self.flow.end(Flow::abort);
    }
}

impl AsyncRead for ServalStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let this = self.get_mut();
        let mut st = this.flow.handle.shared.lock();
        let failed = st.failed;
        let Some(slot) = st.flows.get_mut(&this.flow.id) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let dst = buf.initialize_unfilled();
        let r = slot.flow.read(dst);
        let closed = slot.closed;
        match r {
            Ok(0) => {
                if let Some(reason) = closed {
                    return Poll::Ready(match reason {
                        CloseReason::Finished => Ok(()),
                        r => Err(close_error(r)),
                    });
                }
                if let Some(kind) = failed {
                    return Poll::Ready(Err(task_error(kind)));
                }
                slot.read = Some(cx.waker().clone());
                Poll::Pending
            }
            Ok(n) => {
                buf.advance(n);
                // Reading opens the receive window: the flow may owe an update.
                st.dirty.push(this.flow.id);
                drop(st);
                this.flow.handle.shared.notify.notify_one();
                Poll::Ready(Ok(()))
            }
            Err(ReadError::Finished) => Poll::Ready(Ok(())),
            Err(_) => Poll::Ready(match closed {
                None | Some(CloseReason::Finished) => Ok(()),
                Some(r) => Err(close_error(r)),
            }),
        }
    }
}

impl AsyncWrite for ServalStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        let mut st = this.flow.handle.shared.lock();
        if let Some(kind) = st.failed {
            return Poll::Ready(Err(task_error(kind)));
        }
        let Some(slot) = st.flows.get_mut(&this.flow.id) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        match slot.flow.write(data) {
            Ok(0) => {
                if let Some(reason) = slot.closed {
                    return Poll::Ready(Err(close_error(reason)));
                }
                slot.write = Some(cx.waker().clone());
                Poll::Pending
            }
            Ok(n) => {
                st.dirty.push(this.flow.id);
                drop(st);
                this.flow.handle.shared.notify.notify_one();
                Poll::Ready(Ok(n))
            }
            Err(WriteError::Finished) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            ))),
            Err(_) => Poll::Ready(Err(close_error(
                slot.closed.unwrap_or(CloseReason::Aborted),
            ))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are in the flow's send buffer; the endpoint task sends them.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flow.end(Flow::close);
        Poll::Ready(Ok(()))
    }
}

/// Accepts flows for the ServiceIDs under one prefix (a DEMUX rule in the endpoint's
/// table). Dropping it removes the rule and resets the flows still waiting in its queue.
#[derive(Debug)]
pub struct ServalListener {
    handle: Arc<Handle>,
    id: ListenerId,
}

impl ServalListener {
    pub(super) fn new(handle: Arc<Handle>, id: ListenerId) -> Self {
        Self { handle, id }
    }

    /// The next flow whose handshake completed. One task should accept at a time (only the
    /// latest waiter is woken).
    pub async fn accept(&self) -> io::Result<ServalStream> {
        core::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for the next completed flow.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<ServalStream>> {
        self.poll_accept_flow(cx).map_ok(ServalStream::new)
    }

    /// The endpoint handle, for wrappers (datagram sockets) built on a listener.
    pub(super) fn handle(&self) -> &Arc<Handle> {
        &self.handle
    }

    /// The listener's id in the endpoint.
    pub(super) fn id(&self) -> ListenerId {
        self.id
    }

    /// Polls for the next completed flow, of either kind.
    pub(super) fn poll_accept_flow(&self, cx: &mut Context<'_>) -> Poll<io::Result<FlowRef>> {
        let mut guard = self.handle.shared.lock();
        let st = &mut *guard;
        let failed = st.failed;
        let Some(b) = st.listeners.get_mut(&self.id) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        while let Some(h) = b.queue.pop_front() {
            let Some(slot) = st.flows.get(&h) else {
                continue;
            };
            let (service, peer) = (slot.flow.service(), slot.flow.peer_addr());
            return Poll::Ready(Ok(FlowRef::new(self.handle.clone(), h, service, peer)));
        }
        if let Some(kind) = failed {
            return Poll::Ready(Err(task_error(kind)));
        }
        b.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for ServalListener {
    fn drop(&mut self) {
        let mut st = self.handle.shared.lock();
        st.endpoint.unlisten(self.id);
        if let Some(b) = st.listeners.remove(&self.id) {
            if let Some(prefix) = b.prefix {
                st.control.remove_prefix(&prefix);
            }
            let now = st.clock.now();
            for h in b.queue {
                if let Some(slot) = st.flows.get_mut(&h) {
                    slot.detached = true;
                    slot.flow.abort(now);
                    st.dirty.push(h);
                }
            }
        }
        drop(st);
        self.handle.shared.notify.notify_one();
    }
}
