//! The client role's TCP sockets: listeners for each mode, and where an intercepted
//! connection was going.
//!
//! - **explicit**: a plain listener; clients connect to it.
//! - **redirect**: a plain listener that iptables/nftables `REDIRECT` (NAT) sends
//!   connections to; the kernel keeps the original destination in the conntrack entry and
//!   `SO_ORIGINAL_DST` (IPv4) / `IP6T_SO_ORIGINAL_DST` (IPv6) return it. Both families are
//!   asked with the option of the socket's own family: asking an IPv6 socket with the IPv4
//!   option is the regression linkerd2-proxy and mirrord each shipped once.
//! - **tproxy**: a listener with `IP_TRANSPARENT` / `IPV6_TRANSPARENT` (CAP_NET_ADMIN), to
//!   which a `TPROXY` rule delivers connections for any address; the accepted socket's
//!   *local* address is the original destination, no NAT involved.

use core::net::SocketAddr;
use std::io;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use crate::config::model::ListenMode;

/// Listen backlog of every client listener: the kernel queues this many completed
/// handshakes while the accept loop is busy (the original's 10 dropped SYNs under load).
/// The kernel caps it at `net.core.somaxconn`.
pub const BACKLOG: i32 = 1024;

/// Binds a listener for `mode` at `addr`.
///
/// `SO_REUSEADDR` is set (a restart must not wait for `TIME_WAIT`), and IPv6 listeners are
/// IPv6-only (`IPV6_V6ONLY`), so `0.0.0.0:P` and `[::]:P` can be configured side by side
/// whatever the host's `bindv6only` default, and a listener never sees IPv4-mapped peers
/// it was not configured for.
pub fn bind(addr: SocketAddr, mode: ListenMode) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if mode == ListenMode::Tproxy {
        let r = if addr.is_ipv4() {
            socket.set_ip_transparent_v4(true)
        } else {
            socket.set_ip_transparent_v6(true)
        };
        r.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("tproxy needs IP_TRANSPARENT, which needs CAP_NET_ADMIN: {e}"),
            )
        })?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// The destination a REDIRECTed connection was sent to before NAT rewrote it. For a
/// connection that was not redirected this is the listener's own address when connection
/// tracking knows the connection, and `None` when it does not (no conntrack entry, or the
/// option is unavailable); the policy refuses both as "not redirected".
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let r = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    r.ok().and_then(|a| a.as_socket())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn explicit_listeners_bind_both_families_side_by_side() {
        let v4 = bind("127.0.0.1:0".parse().unwrap(), ListenMode::Explicit).unwrap();
        let port = v4.local_addr().unwrap().port();
        // Only when the host has IPv6 on loopback.
        if let Ok(v6) = bind(
            SocketAddr::from((core::net::Ipv6Addr::LOCALHOST, port)),
            ListenMode::Redirect,
        ) {
            assert_eq!(v6.local_addr().unwrap().port(), port);
        }
        let c = TcpStream::connect(v4.local_addr().unwrap()).await.unwrap();
        let (s, _) = v4.accept().await.unwrap();
        // A direct connection was not redirected: no answer, or the listener itself.
        let local = s.local_addr().unwrap();
        let got = original_dst(&s);
        assert!(got.is_none() || got == Some(local), "{got:?}");
        drop(c);
    }
}
