//! Following the host's address (`serval.follow_address`).
//!
//! With a wildcard `serval.bind` the socket survives any change of the host's addresses,
//! and the kernel simply starts sending from another source when the route changes (Wi-Fi
//! down, cellular up; DHCP renumbering; a VM moved to another subnet). Peers would notice
//! on their own at the next packet from the new address and validate it, but only for
//! flows that send, and registrations would still name the old address. So every
//! `serval.address_poll` the translator asks the kernel which source address it would use
//! towards its routers (a connected UDP socket's `getsockname`; no packet is sent) and,
//! when that changes, calls [`Endpoint::migrate`]: every flow announces the new address
//! at once (RSYN, loss timers held until the path is validated) and registrations are
//! renewed from it.
//!
//! The decision is [`Follower::observe`], a pure function of what the kernel answered, so
//! it is table-tested; only [`follow`] touches sockets and timers.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::time::Duration;
use std::io;

use serval_stack::driver::Endpoint;

/// Probe targets when the policy names no router: documentation addresses, routed by the
/// default route like any Internet destination (nothing is sent to them).
const DEFAULT_ROUTE_V4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 9);
const DEFAULT_ROUTE_V6: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    9,
);

/// What the follower knows: the address the endpoint announces now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Follower {
    current: Option<IpAddr>,
}

impl Follower {
    /// Starts from `current`: the address flows use now (`None`: not known yet, the first
    /// answer is taken as the start, not as a move).
    pub(crate) fn new(current: Option<IpAddr>) -> Self {
        Self { current }
    }

    /// The kernel's answer of one poll (`None`: no route now, e.g. between one interface
    /// going down and the next coming up). Returns the address to move to, if the host
    /// moved.
    pub(crate) fn observe(&mut self, source: Option<IpAddr>) -> Option<IpAddr> {
        // No route: stay. Flows keep retrying on the old path; moving "nowhere" would only
        // make them announce an address that cannot send.
        let source = source.filter(|ip| !ip.is_unspecified())?;
        match self.current.replace(source) {
            Some(old) if old != source => Some(source),
            _ => None,
        }
    }
}

/// The targets to probe: the routers of the socket's family, else the default route.
pub(crate) fn targets(routers: &[SocketAddr], bind: SocketAddr) -> Vec<SocketAddr> {
    let same: Vec<SocketAddr> = routers
        .iter()
        .copied()
        .filter(|r| r.is_ipv4() == bind.is_ipv4())
        .collect();
    if !same.is_empty() {
        return same;
    }
    vec![if bind.is_ipv4() {
        DEFAULT_ROUTE_V4
    } else {
        DEFAULT_ROUTE_V6
    }]
}

/// The source address the kernel would pick towards `target` (no packet is sent).
fn source_towards(target: SocketAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = std::net::UdpSocket::bind(any)?;
    probe.connect(target)?;
    Ok(probe.local_addr()?.ip())
}

/// The first target the host has a route to, and its source address.
fn probe(targets: &[SocketAddr]) -> Option<IpAddr> {
    targets.iter().find_map(|t| source_towards(*t).ok())
}

/// Polls for ever (the caller aborts the task). `endpoint` must be bound to a wildcard
/// address; `targets` from [`targets`].
pub(crate) async fn follow(endpoint: Endpoint, targets: Vec<SocketAddr>, poll: Duration) {
    let known = endpoint.local_addr().ip();
    let mut follower = Follower::new((!known.is_unspecified()).then_some(known));
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let before = follower.current;
        if let Some(ip) = follower.observe(probe(&targets)) {
            let new = SocketAddr::new(ip, endpoint.local_addr().port());
            tracing::info!(
                from = before.map(tracing::field::display),
                to = %new,
                "host address changed; moving flows and registrations"
            );
            endpoint.migrate(new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn moves_only_on_a_real_change() {
        /// Start, the kernel's answers, the move expected after each answer.
        type Case<'a> = (Option<IpAddr>, &'a [Option<IpAddr>], &'a [Option<IpAddr>]);
        let cases: &[Case<'_>] = &[
            // The first answer is the start, not a move.
            (None, &[ip("10.0.0.2"), ip("10.0.0.2")], &[None, None]),
            // Wi-Fi down (no route for a while), cellular up: one move, to the new address.
            (
                ip("10.0.0.2"),
                &[None, None, ip("100.64.0.9"), ip("100.64.0.9")],
                &[None, None, ip("100.64.0.9"), None],
            ),
            // Back and forth: a move each time.
            (
                ip("10.0.0.2"),
                &[ip("10.1.0.2"), ip("10.0.0.2")],
                &[ip("10.1.0.2"), ip("10.0.0.2")],
            ),
            // An unspecified answer is no answer.
            (ip("10.0.0.2"), &[ip("0.0.0.0")], &[None]),
            (
                ip("2001:db8::2"),
                &[ip("2001:db8:1::2")],
                &[ip("2001:db8:1::2")],
            ),
        ];
        for (start, answers, moves) in cases {
            let mut f = Follower::new(*start);
            let got: Vec<_> = answers.iter().map(|a| f.observe(*a)).collect();
            assert_eq!(&got, moves, "start {start:?}, answers {answers:?}");
        }
    }

    #[test]
    fn probes_routers_of_the_socket_family_else_the_default_route() {
        let v4: SocketAddr = "0.0.0.0:54325".parse().unwrap();
        let v6: SocketAddr = "[::]:54325".parse().unwrap();
        let routers: Vec<SocketAddr> = vec![
            "[2001:db8::7]:54325".parse().unwrap(),
            "192.0.2.7:54325".parse().unwrap(),
        ];
        assert_eq!(targets(&routers, v4), vec![routers[1]]);
        assert_eq!(targets(&routers, v6), vec![routers[0]]);
        assert_eq!(targets(&[], v4), vec![DEFAULT_ROUTE_V4]);
        assert_eq!(targets(&routers[..1], v4), vec![DEFAULT_ROUTE_V4]);
    }

    #[test]
    fn loopback_routes_from_loopback() {
        assert_eq!(
            probe(&["127.0.0.1:9".parse().unwrap()]),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
    }
}
