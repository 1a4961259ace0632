//! Datagram mode on the driver: [`ServalDatagram`] (a connected datagram flow) and
//! [`ServalDatagramSocket`] (a datagram listener: unconnected datagrams and accepted
//! datagram flows), the original's `SOCK_DGRAM` sockets.
//!
//! Delivery is best effort in both, as over UDP: a datagram travels in one packet (at most
//! [`ServalDatagram::max_datagram`] bytes), is not retransmitted, and is dropped (counted)
//! when the receiver's queue is full. A connected flow is authenticated and migrates like a
//! stream; an unconnected datagram carries only the two ServiceIDs and is what the control
//! plane uses.

use core::net::SocketAddr;
use core::task::{Context, Poll};
use std::io;

use super::stream::{FlowRef, ServalListener, close_error, task_error};
use crate::sal::{CloseReason, SendError};
use crate::wire::ServiceId;

/// A connected datagram flow. Dropping it closes the flow.
#[derive(Debug)]
pub struct ServalDatagram {
    flow: FlowRef,
}

impl ServalDatagram {
    pub(super) fn new(flow: FlowRef) -> Self {
        Self { flow }
    }

    /// The ServiceID the flow was opened for.
    pub fn peer_service(&self) -> ServiceId {
        self.flow.peer_service()
    }

    /// The peer's UDP address (the new one after it moved and the path was validated).
    pub fn peer_addr(&self) -> SocketAddr {
        self.flow.peer_addr()
    }

    /// Largest datagram [`send`](Self::send) accepts (fits one packet under
    /// `max_udp_payload`).
    pub fn max_datagram(&self) -> usize {
        let st = self.flow.handle.shared.lock();
        st.flows
            .get(&self.flow.id)
            .map_or(0, |s| s.flow.max_datagram())
    }

    /// The flow's counters.
    pub fn stats(&self) -> Option<crate::sal::FlowStats> {
        self.flow.stats()
    }

    /// Sends one datagram, waiting while the flow's send queue is full.
    ///
    /// Errors: `InvalidInput` for an empty datagram or one larger than
    /// [`max_datagram`](Self::max_datagram); the flow's end as for streams.
    pub async fn send(&self, data: &[u8]) -> io::Result<()> {
        core::future::poll_fn(|cx| self.poll_send(cx, data)).await
    }

    /// Polls to send one datagram (see [`send`](Self::send)).
    pub fn poll_send(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<()>> {
        let mut st = self.flow.handle.shared.lock();
        let failed = st.failed;
        let Some(slot) = st.flows.get_mut(&self.flow.id) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if let Some(reason) = slot.closed {
            return Poll::Ready(Err(close_error(reason)));
        }
        if let Some(kind) = failed {
            return Poll::Ready(Err(task_error(kind)));
        }
        let max = slot.flow.max_datagram();
        if data.is_empty() || data.len() > max {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a datagram must be 1 to {max} bytes, not {}", data.len()),
            )));
        }
        if slot.flow.send_datagram(data) {
            st.dirty.push(self.flow.id);
            drop(st);
            self.flow.handle.shared.notify.notify_one();
            return Poll::Ready(Ok(()));
        }
        // The queue is full: the pump wakes us once it has sent some.
        slot.write = Some(cx.waker().clone());
        st.dirty.push(self.flow.id);
        drop(st);
        self.flow.handle.shared.notify.notify_one();
        Poll::Pending
    }

    /// Receives one datagram into `buf`; a longer one is truncated to `buf`'s length, as a
    /// UDP socket does. `Ok(0)` once the peer has closed the flow.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        core::future::poll_fn(|cx| self.poll_recv(cx, buf)).await
    }

    /// Polls to receive one datagram (see [`recv`](Self::recv)).
    pub fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut st = self.flow.handle.shared.lock();
        let failed = st.failed;
        let Some(slot) = st.flows.get_mut(&self.flow.id) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if let Some(d) = slot.flow.recv_datagram() {
            let n = d.len().min(buf.len());
            buf[..n].copy_from_slice(&d[..n]);
            return Poll::Ready(Ok(n));
        }
        match slot.closed {
            Some(CloseReason::Finished) => return Poll::Ready(Ok(0)),
            Some(reason) => return Poll::Ready(Err(close_error(reason))),
            None => {}
        }
        if let Some(kind) = failed {
            return Poll::Ready(Err(task_error(kind)));
        }
        slot.read = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A datagram listener on a ServiceID prefix: receives unconnected datagrams, sends them
/// from its ServiceID, and accepts connected datagram flows. Dropping it removes the DEMUX
/// rule (and withdraws a registration).
#[derive(Debug)]
pub struct ServalDatagramSocket {
    listener: ServalListener,
    service: ServiceId,
}

impl ServalDatagramSocket {
    pub(super) fn new(listener: ServalListener, service: ServiceId) -> Self {
        Self { listener, service }
    }

    /// The ServiceID datagrams are sent from (the prefix's id).
    pub fn local_service(&self) -> ServiceId {
        self.service
    }

    /// The next connected datagram flow opened to this prefix.
    pub async fn accept(&self) -> io::Result<ServalDatagram> {
        core::future::poll_fn(|cx| self.listener.poll_accept_flow(cx))
            .await
            .map(ServalDatagram::new)
    }

    /// Receives one unconnected datagram into `buf` (truncated to its length): returns the
    /// length, the sender's ServiceID (when it named one) and its UDP address.
    pub async fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> io::Result<(usize, Option<ServiceId>, SocketAddr)> {
        core::future::poll_fn(|cx| self.poll_recv_from(cx, buf)).await
    }

    /// Polls to receive one unconnected datagram (see [`recv_from`](Self::recv_from)).
    pub fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, Option<ServiceId>, SocketAddr)>> {
        let mut st = self.listener.handle().shared.lock();
        let failed = st.failed;
        let Some(b) = st.listeners.get_mut(&self.listener.id()) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if let Some(d) = b.datagrams.pop_front() {
            let n = d.payload.len().min(buf.len());
            buf[..n].copy_from_slice(&d.payload[..n]);
            return Poll::Ready(Ok((n, d.source_service, d.from)));
        }
        if let Some(kind) = failed {
            return Poll::Ready(Err(task_error(kind)));
        }
        b.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Sends one unconnected datagram to `service` at `addr` (not resolved through the
    /// table: the original's "advisory IP"), from this socket's ServiceID.
    ///
    /// Errors: `InvalidInput` for an empty payload or one beyond `max_udp_payload` after
    /// the header.
    pub fn send_to(&self, data: &[u8], service: ServiceId, addr: SocketAddr) -> io::Result<()> {
        let handle = self.listener.handle();
        let mut st = handle.shared.lock();
        if let Some(kind) = st.failed {
            return Err(task_error(kind));
        }
        st.send_unconnected(service, self.service, addr, data)
            .map_err(|e: SendError| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        drop(st);
        handle.shared.notify.notify_one();
        Ok(())
    }
}
