//! The endpoint task: the one future that owns the UDP socket and drives the core.
//!
//! Each turn: run due timers, pump the touched flows into the outbox (under the state
//! lock), send the outbox (without the lock), then wait for the first of a datagram, a
//! handle's notification or the earliest deadline. Received datagrams are taken in batches
//! (one awaited, then up to [`RECV_BATCH`] more without waiting) before the flows are pumped,
//! so acknowledgements and window updates coalesce under load.

use std::io;
use std::sync::Arc;

use tokio::net::UdpSocket;

use super::socket::Outbox;
use super::state::Shared;

/// Datagrams taken from the socket per turn without waiting.
const RECV_BATCH: usize = 64;
/// Largest datagram received (anything longer is truncated by the kernel and then fails the
/// core's checks).
const RECV_BUF: usize = 64 * 1024;

/// Runs until every public handle is gone (and the flows drained or lingered out), or the
/// socket fails.
pub(super) async fn run(shared: Arc<Shared>, socket: UdpSocket) {
    let mut rbuf = vec![0u8; RECV_BUF];
    let mut out = Outbox::default();
    let result = drive(&shared, &socket, &mut rbuf, &mut out).await;
    let kind = match result {
        Ok(()) => io::ErrorKind::NotConnected,
        Err(e) => e.kind(),
    };
    shared.lock().fail(kind);
}

async fn drive(
    shared: &Shared,
    socket: &UdpSocket,
    rbuf: &mut [u8],
    out: &mut Outbox,
) -> io::Result<()> {
    let mut send_errors = 0u64;
    loop {
        let (deadline, busy) = {
            let mut st = shared.lock();
            st.stats.send_errors += core::mem::take(&mut send_errors);
            let now = st.clock.now();
            st.handle_timeouts(now);
            st.pump(now);
            if st.finished(now) {
                return Ok(());
            }
            core::mem::swap(&mut st.out, out);
            st.stats.datagrams_sent += out.items.len() as u64;
            let deadline = st.next_deadline().map(|t| st.clock.instant(t));
            (deadline, !st.dirty.is_empty())
        };
        for &(_src, to, start, end) in &out.items {
            let data = out.bytes.get(start..end).unwrap_or_default();
            if socket.send_to(data, to).await.is_err() {
                // Unreachable peers, full queues: the transport's loss recovery covers it.
                send_errors += 1;
            }
        }
        out.clear();
        if busy {
            // A flow has more to send: let other tasks run, take what arrived, go again.
            tokio::task::yield_now().await;
            receive_ready(shared, socket, rbuf, None)?;
            continue;
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => core::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            r = socket.recv_from(rbuf) => {
                let first = match r {
                    Ok((n, from)) => Some((n, from)),
                    Err(e) if transient(&e) => {
                        shared.lock().stats.recv_errors += 1;
                        None
                    }
                    Err(e) => return Err(e),
                };
                receive_ready(shared, socket, rbuf, first)?;
            }
            () = shared.notify.notified() => {}
            () = sleep => {}
        }
    }
}

/// Hands `first` (already in `rbuf`) and whatever else is queued on the socket, up to a
/// batch, to the endpoint.
fn receive_ready(
    shared: &Shared,
    socket: &UdpSocket,
    rbuf: &mut [u8],
    first: Option<(usize, core::net::SocketAddr)>,
) -> io::Result<()> {
    let mut st = shared.lock();
    let now = st.clock.now();
    let mut next = first;
    let mut taken = 0;
    loop {
        if let Some((n, from)) = next.take() {
            st.stats.datagrams_received += 1;
            let data = rbuf.get(..n).unwrap_or_default();
            st.handle_datagram(now, from, data);
        }
        if taken == RECV_BATCH {
            return Ok(());
        }
        taken += 1;
        match socket.try_recv_from(rbuf) {
            Ok(got) => next = Some(got),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if transient(&e) => st.stats.recv_errors += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Errors a UDP socket reports that concern one datagram or one peer, not the socket
/// (ICMP port unreachable surfacing as `ConnectionRefused`, a reset, an interrupted call).
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}
