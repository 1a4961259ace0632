//! The endpoint task: the one future that owns the UDP socket and drives the core.
//!
//! Each turn: adopt a socket the application rebound to, run due timers, pump the touched
//! flows into the outbox (under the state lock), send the outbox in GSO batches (without
//! the lock), then wait for the first of a readable socket, a handle's notification or the
//! earliest deadline. Received datagrams are taken in `recvmmsg` batches (up to
//! [`RECV_ROUNDS`] calls of [`quinn_udp::BATCH_SIZE`] buffers, each possibly holding many
//! GRO-coalesced datagrams) before the flows are pumped, so acknowledgements and window
//! updates coalesce under load and the lock is taken once per batch, not per datagram.

use core::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::sync::Arc;

use tokio::net::UdpSocket;

use super::socket::{Outbox, Tally, UdpIo};
use super::state::Shared;
use crate::sal::FlowHandle;
use crate::time::Timestamp;

/// `recvmmsg` calls per turn at most before the flows are pumped again. Each call returns
/// up to `BATCH_SIZE` (32) buffers, so with GRO a turn can take thousands of datagrams;
/// bounding it keeps acknowledgements flowing back while a peer floods us.
const RECV_ROUNDS: usize = 4;

/// Where the task's timer rests while nothing is due (it is disabled then anyway).
const IDLE: core::time::Duration = core::time::Duration::from_secs(3600);

/// Runs until every public handle is gone (and the flows drained or lingered out), or the
/// socket fails.
pub(super) async fn run(shared: Arc<Shared>, socket: UdpSocket) {
    let result = match UdpIo::new(socket) {
        Ok(mut io) => drive(&shared, &mut io).await,
        Err(e) => Err(e),
    };
    let kind = match result {
        Ok(()) => io::ErrorKind::NotConnected,
        Err(e) => e.kind(),
    };
    shared.lock().fail(kind);
}

async fn drive(shared: &Shared, io: &mut UdpIo) -> io::Result<()> {
    let mut out = Outbox::default();
    let mut tally = Tally::default();
    let mut timers = Timers::default();
    let mut wake = Vec::new();
    // One timer for the task's life, moved only when the deadline changes: a fresh
    // `sleep_until` per turn would register and cancel a timer-wheel entry every turn.
    let sleep = tokio::time::sleep(IDLE);
    tokio::pin!(sleep);
    let mut armed = None;
    loop {
        let (deadline, busy, rebound) = {
            let mut st = shared.lock();
            tally.flush(&mut st.stats);
            st.stats.gso_segments = io.gso_segments();
            st.stats.gro_segments = io.gro_segments();
            let rebound = st.new_socket.take();
            let now = st.clock.now();
            st.handle_timeouts(now, &mut timers);
            st.pump(now, &mut timers, &mut wake);
            if st.finished(now) {
                wake.drain(..).for_each(core::task::Waker::wake);
                return Ok(());
            }
            core::mem::swap(&mut st.out, &mut out);
            st.stats.datagrams_sent += out.items.len() as u64;
            let deadline = st.next_deadline(&mut timers).map(|t| st.clock.instant(t));
            (deadline, !st.dirty.is_empty(), rebound)
        };
        // Outside the lock: a handle woken on the other core runs at once instead of
        // blocking on the lock (a futex wait and wake on every ping-pong otherwise).
        wake.drain(..).for_each(core::task::Waker::wake);
        if let Some(socket) = rebound {
            // Before this turn's datagrams: after a rebind they name the new address.
            // A socket that cannot be set up stops the task like a failed socket would:
            // the endpoint already told its peers it moved there.
            let mut old = core::mem::replace(io, UdpIo::from_std(socket)?);
            // What already reached the old socket is still worth handing to the flows
            // (best effort: what tokio has seen readiness for; the rest is loss the
            // transport recovers).
            receive(shared, &mut old, &mut tally)?;
        }
        io.send(&out, &mut tally).await?;
        out.clear();
        if busy {
            // A flow has more to send: let other tasks run, take what arrived, go again.
            tokio::task::yield_now().await;
            receive(shared, io, &mut tally)?;
            continue;
        }
        if let Some(d) = deadline
            && armed != Some(d)
        {
            sleep.as_mut().reset(d);
            armed = Some(d);
        }
        tokio::select! {
            biased;
            r = io.readable() => {
                r?;
                receive(shared, io, &mut tally)?;
            }
            () = shared.notify.notified() => {}
            () = &mut sleep, if deadline.is_some() => armed = None,
        }
    }
}

/// Hands whatever is queued on the socket, up to [`RECV_ROUNDS`] `recvmmsg` batches, to
/// the endpoint: the syscalls without the lock, each batch's datagrams under one lock.
/// Stops early once a short batch shows the queue empty (its readiness is cleared then,
/// see [`UdpIo::try_recv`]).
fn receive(shared: &Shared, io: &mut UdpIo, tally: &mut Tally) -> io::Result<()> {
    for _ in 0..RECV_ROUNDS {
        let (n, drained) = match io.try_recv(tally) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if transient(&e) => {
                tally.recv_error();
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut st = shared.lock();
        let now = st.clock.now();
        let mut count = 0;
        for (from, data) in io.datagrams(n) {
            count += 1;
            st.handle_datagram(now, from, data);
        }
        st.stats.datagrams_received += count;
        if drained {
            return Ok(());
        }
    }
    Ok(())
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

/// When each flow next needs `handle_timeout`: a min-heap of (deadline, flow) with lazy
/// deletion, so a turn costs O(log flows) for timers instead of two scans of every flow
/// (which took a fifth of the CPU with 1000 flows).
///
/// The invariant, kept by `State::pump_flow`: after every pump of a flow, `armed` holds its
/// `poll_timeout` and the heap holds that entry. A flow's deadline changes only when the
/// flow is called, and every caller marks it dirty (the stream handles, accept, rebind), so
/// it is pumped, and re-armed, before the task sleeps again. Entries whose deadline is no
/// longer the flow's armed one are stale and skipped when they surface; the heap is rebuilt
/// from `armed` when stale entries outnumber live ones, so it stays O(flows).
#[derive(Debug, Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Timestamp, FlowHandle)>>,
    armed: HashMap<FlowHandle, Timestamp>,
}

impl Timers {
    /// Records `h`'s next deadline (`None`: none, or the flow is gone).
    pub(super) fn arm(&mut self, h: FlowHandle, at: Option<Timestamp>) {
        match at {
            Some(t) => {
                if self.armed.insert(h, t) != Some(t) {
                    self.heap.push(Reverse((t, h)));
                    if self.heap.len() > 2 * self.armed.len() + 64 {
                        self.heap = self.armed.iter().map(|(&h, &t)| Reverse((t, h))).collect();
                    }
                }
            }
            None => {
                self.armed.remove(&h);
            }
        }
    }

    /// A flow whose deadline is at or before `now`, disarmed (its pump arms it again).
    pub(super) fn pop_due(&mut self, now: Timestamp) -> Option<FlowHandle> {
        while let Some(&Reverse((t, h))) = self.heap.peek() {
            if t > now {
                return None;
            }
            self.heap.pop();
            if self.armed.get(&h) == Some(&t) {
                self.armed.remove(&h);
                return Some(h);
            }
        }
        None
    }

    /// The earliest armed deadline.
    pub(super) fn next(&mut self) -> Option<Timestamp> {
        while let Some(&Reverse((t, h))) = self.heap.peek() {
            if self.armed.get(&h) == Some(&t) {
                return Some(t);
            }
            self.heap.pop();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FlowId;

    fn h(n: u32) -> FlowHandle {
        FlowHandle(FlowId::new(n).expect("a non-zero FlowID"))
    }

    fn at(us: u64) -> Option<Timestamp> {
        Some(Timestamp::from_micros(us))
    }

    #[test]
    fn timers_fire_in_order_and_skip_superseded_deadlines() {
        let mut t = Timers::default();
        t.arm(h(1), at(30));
        t.arm(h(2), at(10));
        t.arm(h(3), at(20));
        // Flow 2 was pumped again and now waits longer; flow 3 lost its timer.
        t.arm(h(2), at(40));
        t.arm(h(3), None);
        assert_eq!(t.next(), at(30));
        assert_eq!(t.pop_due(Timestamp::from_micros(35)), Some(h(1)));
        assert_eq!(t.pop_due(Timestamp::from_micros(35)), None);
        assert_eq!(t.next(), at(40));
        assert_eq!(t.pop_due(Timestamp::from_micros(40)), Some(h(2)));
        assert_eq!(t.next(), None);
    }

    #[test]
    fn rearming_back_and_forth_fires_once_and_the_heap_stays_bounded() {
        let mut t = Timers::default();
        for i in 0..10_000u64 {
            t.arm(h(1), at(100 + i % 2));
            t.arm(h(2), at(1_000_000 + i));
        }
        assert!(t.heap.len() <= 2 * 2 + 64 + 1, "{}", t.heap.len());
        assert_eq!(t.pop_due(Timestamp::from_micros(2_000_000)), Some(h(1)));
        assert_eq!(t.pop_due(Timestamp::from_micros(2_000_000)), Some(h(2)));
        assert_eq!(t.pop_due(Timestamp::from_micros(2_000_000)), None);
    }
}
