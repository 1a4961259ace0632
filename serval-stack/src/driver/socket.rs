//! The endpoint's UDP socket: opening it with explicitly sized kernel buffers, and the
//! batched datagram path on top of `quinn-udp`.
//!
//! A userspace stack cannot move multi-Gbit/s one datagram per syscall (`shared/DESIGN.md`
//! §5: 1.55 Gbit/s that way, 28.5 with GSO and GRO on this kind of machine), so:
//!
//! - **Send**: consecutive outbox datagrams to the same destination from the same source,
//!   all of one size but the last (which may be shorter), leave in one `sendmsg` with
//!   `UDP_SEGMENT` (GSO): the kernel cuts them apart as late as possible. A stream's burst is
//!   exactly that shape. Without GSO (old kernel, a device that refuses it) `quinn-udp`
//!   reports one segment and every datagram goes alone.
//! - **Receive**: one `recvmmsg` fills up to [`quinn_udp::BATCH_SIZE`] buffers, and with
//!   `UDP_GRO` each buffer may hold many same-sized datagrams from one sender, cut apart here
//!   by the reported stride. The datagrams are handed to the core straight from these
//!   buffers; the only copy left is the flow's own, into its receive buffer.
//! - The socket forbids IP fragmentation (`quinn-udp` sets `IP_PMTUDISC_PROBE` /
//!   `IPV6_DONTFRAG`): a datagram larger than the path MTU fails with `EMSGSIZE`, counted in
//!   [`DriverStats::mtu_errors`](super::DriverStats::mtu_errors) and logged once, instead of
//!   being fragmented and lost more often.
//! - A datagram the core sends from a migrated local address (`Transmit::src`) leaves from
//!   that IP (`IP_PKTINFO` / `IPV6_PKTINFO`) when its port is the socket's; one socket has
//!   one port, so a source with another port is sent from the socket's own address.
//! - ECN bits are neither set nor read: the core does not use them yet.

use core::net::{IpAddr, SocketAddr};
use std::io::{self, IoSliceMut};

use quinn_udp::{BATCH_SIZE, RecvMeta, Transmit, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;

use super::DriverStats;

/// Socket buffer sizes asked of the kernel (SO_RCVBUF / SO_SNDBUF). The kernel may grant
/// less (Linux caps at `net.core.rmem_max` / `wmem_max` unless raised); the sizes granted
/// are reported in [`DriverStats`](super::DriverStats).
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Size of one receive buffer: the largest UDP payload, and also the largest GRO
/// coalescence (the kernel stops merging at 64 KiB), so nothing is ever truncated.
const RECV_BUF: usize = 64 * 1024;

/// Most bytes one GSO send carries: below the 65 507-byte UDP payload limit of IPv4.
const MAX_GSO_BYTES: usize = 65_000;

/// Binds a non-blocking UDP socket at `addr` with `buffer`-byte kernel buffers; returns it
/// and the (receive, send) buffer sizes the kernel granted.
pub(super) fn bind_udp(
    addr: SocketAddr,
    buffer: usize,
) -> io::Result<(tokio::net::UdpSocket, usize, usize)> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack where the OS allows it, so an IPv6 wildcard also serves IPv4 peers.
        let _ = socket.set_only_v6(false);
    }
    // Too-large requests are clamped by the kernel, not refused; a failure here is not
    // fatal either (the default buffers still work, only with more drops under load).
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let rcv = socket.recv_buffer_size().unwrap_or(0);
    let snd = socket.send_buffer_size().unwrap_or(0);
    let socket = tokio::net::UdpSocket::from_std(socket.into())?;
    Ok((socket, rcv, snd))
}

/// Datagrams waiting for the socket: one byte arena and (destination, range) entries.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    pub(super) bytes: Vec<u8>,
    /// (source address the core asked for, destination, byte range).
    pub(super) items: Vec<(Option<SocketAddr>, SocketAddr, usize, usize)>,
}

impl Outbox {
    pub(super) fn push(&mut self, src: Option<SocketAddr>, to: SocketAddr, data: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(data);
        self.items.push((src, to, start, self.bytes.len()));
    }

    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
    }

    /// Splits the datagrams into GSO batches: maximal runs of at most `max_segments`
    /// datagrams (and [`MAX_GSO_BYTES`]) with one source and destination, contiguous in the
    /// arena, all of the first one's size except a shorter last one. Returns each batch as
    /// (source, destination, item range, byte range, segment size).
    fn batches(&self, max_segments: usize) -> Batches<'_> {
        Batches {
            items: &self.items,
            next: 0,
            max_segments: max_segments.max(1),
        }
    }
}

/// One GSO batch of an [`Outbox`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Batch {
    src: Option<SocketAddr>,
    to: SocketAddr,
    /// Datagrams in it.
    count: usize,
    start: usize,
    end: usize,
    /// Size of every datagram but the last.
    segment: usize,
}

/// Iterator of [`Outbox::batches`].
#[derive(Debug)]
struct Batches<'a> {
    items: &'a [(Option<SocketAddr>, SocketAddr, usize, usize)],
    next: usize,
    max_segments: usize,
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let &(src, to, start, end) = self.items.get(self.next)?;
        self.next += 1;
        let segment = end.saturating_sub(start);
        let mut batch = Batch {
            src,
            to,
            count: 1,
            start,
            end,
            segment,
        };
        if segment == 0 {
            return Some(batch);
        }
        while batch.count < self.max_segments
            && batch.end - batch.start + segment <= MAX_GSO_BYTES
            && let Some(&(s, t, a, b)) = self.items.get(self.next)
        {
            let len = b.saturating_sub(a);
            if s != src || t != to || a != batch.end || len == 0 || len > segment {
                break;
            }
            batch.count += 1;
            batch.end = b;
            self.next += 1;
            if len < segment {
                // Only the last segment may be short.
                break;
            }
        }
        Some(batch)
    }
}

/// Counters of socket calls made outside the state lock, added to [`DriverStats`] at the
/// task's next turn.
#[derive(Debug, Default)]
pub(super) struct Tally {
    send_calls: u64,
    send_errors: u64,
    mtu_errors: u64,
    recv_calls: u64,
    recv_errors: u64,
    gro_datagrams: u64,
}

impl Tally {
    /// Adds the counts to `stats` and starts again from zero.
    pub(super) fn flush(&mut self, stats: &mut DriverStats) {
        let t = core::mem::take(self);
        stats.send_calls += t.send_calls;
        stats.send_errors += t.send_errors;
        stats.mtu_errors += t.mtu_errors;
        stats.recv_calls += t.recv_calls;
        stats.recv_errors += t.recv_errors;
        stats.gro_datagrams += t.gro_datagrams;
    }

    /// A receive error that concerns one datagram or peer, not the socket.
    pub(super) fn recv_error(&mut self) {
        self.recv_errors += 1;
    }
}

/// The endpoint's socket with its `quinn-udp` state and receive buffers.
pub(super) struct UdpIo {
    socket: tokio::net::UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
    /// `BATCH_SIZE` buffers of [`RECV_BUF`] bytes, one per `recvmmsg` slot.
    recv_buf: Box<[u8]>,
    meta: [RecvMeta; BATCH_SIZE],
    /// The EMSGSIZE warning was logged for this socket.
    mtu_logged: bool,
}

impl core::fmt::Debug for UdpIo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Not the 2 MiB of receive buffers.
        f.debug_struct("UdpIo")
            .field("socket", &self.socket)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl UdpIo {
    /// Takes over a bound, non-blocking socket registered with the current runtime, and
    /// turns on what the kernel offers (GRO, packet info, no fragmentation).
    pub(super) fn new(socket: tokio::net::UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new((&socket).into())?;
        let local = socket.local_addr()?;
        Ok(Self {
            socket,
            state,
            local,
            recv_buf: vec![0; BATCH_SIZE * RECV_BUF].into_boxed_slice(),
            meta: [RecvMeta::default(); BATCH_SIZE],
            mtu_logged: false,
        })
    }

    /// [`new`](Self::new) for a socket opened elsewhere ([`Endpoint::rebind`](super::Endpoint::rebind));
    /// must run inside the runtime.
    pub(super) fn from_std(socket: std::net::UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Self::new(tokio::net::UdpSocket::from_std(socket)?)
    }

    /// Most datagrams one send carries now (1 without GSO).
    pub(super) fn gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Most datagrams one receive buffer may hold (1 without GRO).
    pub(super) fn gro_segments(&self) -> usize {
        self.state.gro_segments()
    }

    /// Waits until the socket may have datagrams to read.
    pub(super) async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// One `recvmmsg` without waiting: returns how many buffers were filled (read them
    /// with [`datagrams`](Self::datagrams)) and whether the socket's queue was emptied;
    /// `WouldBlock` when nothing was queued.
    ///
    /// A batch shorter than the buffers means the queue ran dry, so, as tokio's own
    /// `TcpStream` does after a short read, the socket's readiness is cleared right away
    /// instead of by one more `recvmmsg` that would only say `EAGAIN` (a syscall per
    /// receive saved; on a 1-byte ping-pong that is one in five). A datagram arriving after
    /// the call raises a new readiness event, so nothing is missed.
    pub(super) fn try_recv(&mut self, tally: &mut Tally) -> io::Result<(usize, bool)> {
        let mut chunks = self.recv_buf.chunks_mut(RECV_BUF);
        let mut iovs: [IoSliceMut<'_>; BATCH_SIZE] =
            core::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or(&mut [])));
        let (socket, state, meta) = (&self.socket, &self.state, &mut self.meta);
        let mut short = None;
        let r = socket.try_io(Interest::READABLE, || {
            let n = state.recv(socket.into(), &mut iovs, meta)?;
            if n < BATCH_SIZE {
                // Reported as `WouldBlock` so tokio clears the readiness; the count is
                // kept here.
                short = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let (n, drained) = match (r, short) {
            (_, Some(n)) => (n, true),
            (Ok(n), None) => (n, false),
            (Err(e), None) => return Err(e),
        };
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = n.min(BATCH_SIZE);
        tally.recv_calls += 1;
        for m in self.meta.iter().take(n) {
            if m.stride > 0 && m.len > m.stride {
                tally.gro_datagrams += m.len.div_ceil(m.stride) as u64;
            }
        }
        Ok((n, drained))
    }

    /// The datagrams of the last `n` buffers filled, each with its sender; GRO buffers are
    /// cut at their stride (the last datagram of one may be shorter).
    pub(super) fn datagrams(&self, n: usize) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.meta
            .iter()
            .take(n)
            .zip(self.recv_buf.chunks(RECV_BUF))
            .flat_map(|(m, buf)| {
                let data = buf.get(..m.len).unwrap_or(buf);
                // A zero stride would be a kernel bug; read the buffer as one datagram.
                let stride = if m.stride == 0 { RECV_BUF } else { m.stride };
                data.chunks(stride).map(move |d| (m.addr, d))
            })
    }

    /// Sends every datagram of `out`, GSO batches where the kernel allows, waiting while
    /// the socket's send buffer is full. Errors about one datagram or one peer are counted,
    /// not returned; an error is returned only when the socket's readiness cannot be
    /// awaited (the runtime is shutting down).
    pub(super) async fn send(&mut self, out: &Outbox, tally: &mut Tally) -> io::Result<()> {
        let max_segments = self.state.max_gso_segments();
        for batch in out.batches(max_segments) {
            let contents = out.bytes.get(batch.start..batch.end).unwrap_or_default();
            let src_ip = self.source_ip(batch.src);
            let t = Transmit {
                destination: batch.to,
                ecn: None,
                contents,
                segment_size: (batch.count > 1).then_some(batch.segment),
                src_ip,
            };
            let r = self.send_one(&t).await?;
            if batch.count > 1 && r.as_ref().is_err_and(is_gso_refusal) {
                self.resend_singly(&t, tally).await?;
            } else {
                self.account(r, &t, batch.count, tally);
            }
        }
        Ok(())
    }

    /// The kernel refused a GSO send (EINVAL / EIO), and `quinn-udp` has turned GSO off for
    /// the socket. Sends the segments one by one; if none of them gets through either, the
    /// datagrams were at fault (too large for the path, a source address that is not
    /// ours), not GSO, so GSO is turned back on by rebuilding the socket state.
    async fn resend_singly(&mut self, t: &Transmit<'_>, tally: &mut Tally) -> io::Result<()> {
        let segment = t.segment_size.unwrap_or(t.contents.len()).max(1);
        let mut delivered = false;
        for part in t.contents.chunks(segment) {
            let single = Transmit {
                contents: part,
                segment_size: None,
                ..t.clone()
            };
            let r = self.send_one(&single).await?;
            delivered |= r.is_ok();
            self.account(r, &single, 1, tally);
        }
        if delivered {
            tracing::info!(
                "UDP GSO send refused by the kernel; sending one datagram per call on {}",
                self.local
            );
        } else if let Ok(state) = UdpSocketState::new((&self.socket).into()) {
            self.state = state;
        }
        Ok(())
    }

    /// One `sendmsg`, waiting for room in the socket buffer. The outer error is the
    /// runtime's; the inner one the kernel's answer about this send.
    async fn send_one(&self, t: &Transmit<'_>) -> io::Result<io::Result<()>> {
        let r = self
            .socket
            .async_io(Interest::WRITABLE, || {
                match self.state.try_send((&self.socket).into(), t) {
                    // Inner errors are wrapped so that only `WouldBlock` makes tokio wait.
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => Ok(Err(e)),
                    r => r.map(Ok),
                }
            })
            .await?;
        Ok(r)
    }

    /// Counts the outcome of sending `count` datagrams in `t`.
    fn account(&mut self, r: io::Result<()>, t: &Transmit<'_>, count: usize, tally: &mut Tally) {
        match r {
            Ok(()) => tally.send_calls += 1,
            Err(e) if is_emsgsize(&e) => {
                tally.mtu_errors += count as u64;
                if !self.mtu_logged {
                    self.mtu_logged = true;
                    tracing::warn!(
                        "UDP datagram of {} bytes to {} exceeds the path MTU (EMSGSIZE, \
                         fragmentation is off): lower EndpointConfig::max_udp_payload to fit \
                         the path; such datagrams are counted in DriverStats::mtu_errors",
                        t.segment_size.unwrap_or(t.contents.len()),
                        t.destination
                    );
                }
            }
            // Unreachable peers, ICMP errors, a source address that is gone: the
            // transport's loss recovery covers them.
            Err(_) => tally.send_errors += count as u64,
        }
    }

    /// The source IP to ask of the kernel for a datagram the core wants sent from `src`:
    /// its IP when its port is the socket's, else the socket's default.
    fn source_ip(&self, src: Option<SocketAddr>) -> Option<IpAddr> {
        src.filter(|s| s.port() == self.local.port() && !s.ip().is_unspecified())
            .map(|s| s.ip())
    }
}

/// `EMSGSIZE`: the datagram is larger than the path (or interface) MTU.
fn is_emsgsize(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EMSGSIZE)
}

/// The errors Linux gives for a GSO send it will not segment (`EINVAL`: segment larger
/// than the MTU, too many segments, a bad source; `EIO`: the device cannot checksum).
fn is_gso_refusal(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn shape(out: &Outbox, max: usize) -> Vec<(usize, usize)> {
        out.batches(max).map(|b| (b.count, b.segment)).collect()
    }

    #[test]
    fn equal_datagrams_to_one_peer_form_one_batch_with_a_short_tail() {
        let mut out = Outbox::default();
        for _ in 0..5 {
            out.push(None, addr(1), &[7; 100]);
        }
        out.push(None, addr(1), &[7; 40]);
        out.push(None, addr(1), &[7; 100]);
        assert_eq!(shape(&out, 64), vec![(6, 100), (1, 100)]);
        let first = out.batches(64).next().expect("a batch");
        assert_eq!((first.start, first.end), (0, 540));
    }

    #[test]
    fn batches_split_on_peer_source_size_and_limits() {
        let mut out = Outbox::default();
        out.push(None, addr(1), &[0; 100]);
        out.push(None, addr(2), &[0; 100]);
        out.push(Some(addr(9)), addr(2), &[0; 100]);
        out.push(Some(addr(9)), addr(2), &[0; 200]);
        assert_eq!(
            shape(&out, 64),
            vec![(1, 100), (1, 100), (1, 100), (1, 200)]
        );

        let mut out = Outbox::default();
        for _ in 0..10 {
            out.push(None, addr(1), &[0; 1000]);
        }
        assert_eq!(shape(&out, 4), vec![(4, 1000), (4, 1000), (2, 1000)]);
        assert_eq!(shape(&out, 1), vec![(1, 1000); 10]);

        let mut out = Outbox::default();
        for _ in 0..70 {
            out.push(None, addr(1), &[0; 1400]);
        }
        // 46 * 1400 = 64 400 <= MAX_GSO_BYTES < 47 * 1400.
        assert_eq!(shape(&out, 64), vec![(46, 1400), (24, 1400)]);
    }

    #[test]
    fn empty_datagrams_go_alone() {
        let mut out = Outbox::default();
        out.push(None, addr(1), &[]);
        out.push(None, addr(1), &[]);
        out.push(None, addr(1), &[1]);
        assert_eq!(shape(&out, 64), vec![(1, 0), (1, 0), (1, 1)]);
    }
}
