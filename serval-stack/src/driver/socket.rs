//! Opening the endpoint's UDP socket with explicitly sized kernel buffers.

use core::net::SocketAddr;
use std::io;

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer sizes asked of the kernel (SO_RCVBUF / SO_SNDBUF). The kernel may grant
/// less (Linux caps at `net.core.rmem_max` / `wmem_max` unless raised); the sizes granted
/// are reported in [`DriverStats`](super::DriverStats).
pub const SOCKET_BUFFER: usize = 4 << 20;

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
}
