//! The policy's `serval:` section as the stack's configuration.

use std::io;

use serval_stack::control::{RegistrantConfig, SharedKey};
use serval_stack::sal::EndpointConfig;

use crate::config::Config;

/// The endpoint configuration `config` asks for: address, forwarding (router role), flow
/// limit, UDP payload size, NAT keepalive and peer timeout. Checked with
/// [`EndpointConfig::validate`]; a value out of range is reported under its policy field.
pub fn endpoint_config(config: &Config) -> io::Result<EndpointConfig> {
    let s = &config.serval;
    let mut c = EndpointConfig::default();
    // With a wildcard bind, the driver keeps this IP and takes the port from the socket; a
    // concrete bind address wins over it.
    c.local_addr = s.advertise.unwrap_or(s.bind);
    c.forwarding = config.router.is_some();
    c.max_flows = usize::try_from(s.max_flows).unwrap_or(usize::MAX);
    c.max_udp_payload = usize::try_from(s.max_udp_payload).unwrap_or(usize::MAX);
    c.flow.keepalive = s.keepalive.non_zero();
    c.flow.idle_timeout = s.peer_timeout.non_zero();
    c.validate().map_err(|e| {
        let field = match e.field {
            "max_udp_payload" => "serval.max_udp_payload",
            "max_flows" => "serval.max_flows",
            other => other,
        };
        io::Error::new(io::ErrorKind::InvalidInput, format!("{field}: {e}"))
    })?;
    Ok(c)
}

/// The registrant configuration of a server role registering with `serval.routers`:
/// authenticated with `serval.key`, advertising `serval.advertise` (or, without it, asking
/// routers to use the source address they observe, right behind a NAT).
/// The registrant of `config`'s server role. Its sequence numbers start at `first_sequence`
/// (the wall clock in microseconds, [`crate::clock::unix_micros`]), so a restarted
/// translator starts above what routers remember of its previous run.
pub fn registrant_config(
    config: &Config,
    key: (u32, SharedKey),
    first_sequence: u64,
) -> RegistrantConfig {
    RegistrantConfig::new(key.0, key.1)
        .with_advertised_addr(config.serval.advertise)
        .with_initial_sequence(first_sequence.max(1))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse(text, "t.yaml", &HashMap::<String, String>::new())
            .unwrap()
            .config
    }

    #[test]
    fn policy_values_reach_the_endpoint() {
        let c = config(
            "serval: {bind: 127.0.0.1:0, keepalive: 0, peer_timeout: 1m, max_udp_payload: 1300, max_flows: 10}\nrouter: {routes: [{prefix: default, forward: 192.0.2.1:1}]}\n",
        );
        let e = endpoint_config(&c).unwrap();
        assert!(e.forwarding);
        assert_eq!(e.flow.keepalive, None);
        assert_eq!(
            e.flow.idle_timeout,
            Some(core::time::Duration::from_secs(60))
        );
        assert_eq!((e.max_udp_payload, e.max_flows), (1300, 10));
        assert_eq!(e.local_addr, "127.0.0.1:0".parse().unwrap());
    }
}
