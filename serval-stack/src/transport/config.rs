//! [`StreamConfig`]: every tunable of a stream, with documented defaults and bounds.

use core::time::Duration;

/// Which congestion controller a stream uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CongestionAlgorithm {
    /// CUBIC (RFC 9438), the default: scales to large bandwidth-delay products.
    #[default]
    Cubic,
    /// NewReno (RFC 5681 / RFC 6582): the conservative fallback.
    NewReno,
}

/// Keepalive probing of an otherwise idle stream (RFC 9293 §3.8.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepaliveConfig {
    /// Quiet time (nothing received) before the first probe.
    pub idle: Duration,
    /// Time between unanswered probes.
    pub interval: Duration,
    /// Unanswered probes after which the stream times out.
    pub probes: u32,
}

impl Default for KeepaliveConfig {
    /// RFC 9293 §3.8.4 / RFC 1122: "MUST default to no less than two hours"; 9 probes 75 s
    /// apart as in BSD and Linux.
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(7200),
            interval: Duration::from_secs(75),
            probes: 9,
        }
    }
}

/// A value given to a [`StreamConfig`] setter is outside the documented bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error("{field} must be in {min}..={max}, got {value}")]
pub struct ConfigError {
    /// The setting.
    pub field: &'static str,
    /// The value refused.
    pub value: u64,
    /// Smallest accepted value.
    pub min: u64,
    /// Largest accepted value.
    pub max: u64,
}

/// Tunables of one reliable stream, shared by all streams of an endpoint (`Arc`).
///
/// Defaults are tuned for a 1 Gbit/s path with a 30 ms round trip (BDP ≈ 3.75 MB, hence
/// 4 MiB buffers). Memory per established stream is bounded by `send_buffer +
/// recv_buffer` plus a few hundred bytes per segment in flight; buffers grow on demand up
/// to those bounds and are released when the stream reaches TIME-WAIT or CLOSED.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub(crate) send_buffer: usize,
    pub(crate) recv_buffer: usize,
    pub(crate) mss: u16,
    pub(crate) window_scaling: bool,
    pub(crate) sack: bool,
    pub(crate) timestamps: bool,
    pub(crate) congestion: CongestionAlgorithm,
    pub(crate) initial_window: u32,
    pub(crate) pacing: bool,
    pub(crate) nagle: bool,
    pub(crate) tail_loss_probe: bool,
    pub(crate) ack_delay: Duration,
    pub(crate) initial_rto: Duration,
    pub(crate) min_rto: Duration,
    pub(crate) max_rto: Duration,
    pub(crate) user_timeout: Duration,
    pub(crate) keepalive: Option<KeepaliveConfig>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) time_wait: Duration,
}

/// Smallest buffer either direction may be given.
pub const MIN_BUFFER: usize = 4 * 1024;
/// Largest buffer: a 14-bit window scale reaches 2^30 (RFC 7323 §2.3).
pub const MAX_BUFFER: usize = 1 << 30;
/// Smallest MSS: the 40 option bytes plus room for data.
pub const MIN_MSS: u16 = 128;
/// Largest MSS: 65535 − 20 (IPv4) − 20 (TCP).
pub const MAX_MSS: u16 = 65_495;

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            send_buffer: 4 << 20,
            recv_buffer: 4 << 20,
            mss: 1400,
            window_scaling: true,
            sack: true,
            timestamps: true,
            congestion: CongestionAlgorithm::Cubic,
            initial_window: 10,
            pacing: true,
            nagle: false,
            tail_loss_probe: true,
            ack_delay: Duration::from_millis(25),
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(60),
            user_timeout: Duration::from_secs(120),
            keepalive: None,
            idle_timeout: None,
            time_wait: Duration::from_secs(5),
        }
    }
}

fn check(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError {
            field,
            value,
            min,
            max,
        })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl StreamConfig {
    /// Bytes the application may queue before `write` returns short: unsent plus
    /// unacknowledged data. Default 4 MiB; bounds [`MIN_BUFFER`]..=[`MAX_BUFFER`].
    ///
    /// Caps the bytes in flight, so it must cover the bandwidth-delay product.
    pub fn send_buffer(&mut self, bytes: usize) -> Result<&mut Self, ConfigError> {
        check(
            "send_buffer",
            bytes as u64,
            MIN_BUFFER as u64,
            MAX_BUFFER as u64,
        )?;
        self.send_buffer = bytes;
        Ok(self)
    }

    /// Receive buffer: the largest window advertised. Default 4 MiB; bounds
    /// [`MIN_BUFFER`]..=[`MAX_BUFFER`]. Out-of-order data is held inside it.
    pub fn recv_buffer(&mut self, bytes: usize) -> Result<&mut Self, ConfigError> {
        check(
            "recv_buffer",
            bytes as u64,
            MIN_BUFFER as u64,
            MAX_BUFFER as u64,
        )?;
        self.recv_buffer = bytes;
        Ok(self)
    }

    /// Largest TCP payload plus options we accept per segment, advertised in the SYN.
    /// The SAL derives it from the path MTU: MTU − IP − UDP(8) − SAL(12) − TCP(20).
    /// Default 1400 (an IPv6 path with a 1500-byte MTU leaves 1420; 20 bytes spare for SAL
    /// extensions). Bounds [`MIN_MSS`]..=[`MAX_MSS`].
    pub fn mss(&mut self, mss: u16) -> Result<&mut Self, ConfigError> {
        check(
            "mss",
            u64::from(mss),
            u64::from(MIN_MSS),
            u64::from(MAX_MSS),
        )?;
        self.mss = mss;
        Ok(self)
    }

    /// Offer window scaling (RFC 7323). Default on; without it windows stop at 64 KiB.
    pub fn window_scaling(&mut self, on: bool) -> &mut Self {
        self.window_scaling = on;
        self
    }

    /// Offer SACK (RFC 2018). Default on; without it RACK has only cumulative ACKs and
    /// tail-loss probes are disabled (RFC 8985 §7 needs SACK).
    pub fn sack(&mut self, on: bool) -> &mut Self {
        self.sack = on;
        self
    }

    /// Offer timestamps (RFC 7323: RTTM and PAWS). Default on.
    pub fn timestamps(&mut self, on: bool) -> &mut Self {
        self.timestamps = on;
        self
    }

    /// Congestion controller. Default [`CongestionAlgorithm::Cubic`].
    pub fn congestion(&mut self, algorithm: CongestionAlgorithm) -> &mut Self {
        self.congestion = algorithm;
        self
    }

    /// Initial congestion window in segments. Default 10 (RFC 6928); bounds 1..=100.
    pub fn initial_window(&mut self, segments: u32) -> Result<&mut Self, ConfigError> {
        check("initial_window", u64::from(segments), 1, 100)?;
        self.initial_window = segments;
        Ok(self)
    }

    /// Pace transmissions at cwnd/srtt × gain with small bursts. Default on; off sends
    /// whole windows back to back, which overflows shallow queues.
    pub fn pacing(&mut self, on: bool) -> &mut Self {
        self.pacing = on;
        self
    }

    /// Nagle's algorithm (RFC 9293 §3.7.4): hold back small segments while data is
    /// unacknowledged. Default off: the translator relays whatever it reads at once.
    pub fn nagle(&mut self, on: bool) -> &mut Self {
        self.nagle = on;
        self
    }

    /// Tail loss probes (RFC 8985 §7). Default on (effective only with SACK).
    pub fn tail_loss_probe(&mut self, on: bool) -> &mut Self {
        self.tail_loss_probe = on;
        self
    }

    /// Longest we hold an ACK for a single segment. Default 25 ms; bounds 0..=500 ms
    /// (RFC 9293 §3.8.6.3: "MUST be less than 0.5 seconds").
    pub fn ack_delay(&mut self, delay: Duration) -> Result<&mut Self, ConfigError> {
        check("ack_delay_ms", millis(delay), 0, 500)?;
        self.ack_delay = delay;
        Ok(self)
    }

    /// Retransmission timeout bounds: initial (before any RTT sample), minimum and maximum.
    /// Defaults 1 s / 200 ms / 60 s (RFC 6298 §2.1, §2.5; the 200 ms floor is Linux's, below
    /// RFC 6298's conservative 1 s). Needs 1 ms ≤ min ≤ initial ≤ max ≤ 600 s.
    pub fn rto(
        &mut self,
        initial: Duration,
        min: Duration,
        max: Duration,
    ) -> Result<&mut Self, ConfigError> {
        check("max_rto_ms", millis(max), 1, 600_000)?;
        check("initial_rto_ms", millis(initial), 1, millis(max))?;
        check("min_rto_ms", millis(min), 1, millis(initial))?;
        self.initial_rto = initial;
        self.min_rto = min;
        self.max_rto = max;
        Ok(self)
    }

    /// Give up when retransmissions make no progress for this long (RFC 9293 §3.8.3 R2,
    /// RFC 5482). Default 120 s; bounds 1 s..=1 h ("R2 ... SHOULD be at least 100 s").
    pub fn user_timeout(&mut self, timeout: Duration) -> Result<&mut Self, ConfigError> {
        check("user_timeout_s", timeout.as_secs(), 1, 3600)?;
        self.user_timeout = timeout;
        Ok(self)
    }

    /// Keepalive probing. Default off (`None`): the SAL sends its own NAT keepalives.
    pub fn keepalive(&mut self, keepalive: Option<KeepaliveConfig>) -> &mut Self {
        self.keepalive = keepalive;
        self
    }

    /// Time out when nothing is received for this long. Default `None` (a quiet stream
    /// lives forever, as TCP does). **Warning**: with neither this nor keepalives a stream
    /// whose peer vanished while nothing was outstanding is never freed.
    pub fn idle_timeout(&mut self, timeout: Option<Duration>) -> &mut Self {
        self.idle_timeout = timeout;
        self
    }

    /// TIME-WAIT duration. Default 5 s; bounds 0..=240 s (2 × the RFC 9293 MSL).
    ///
    /// TIME-WAIT guards a new incarnation against old duplicates and re-ACKs a
    /// retransmitted FIN. Over SAL the first job is done by the random 32-bit FlowID each
    /// flow is demultiplexed by, so only the second remains; a few RTOs cover it. Buffers
    /// are freed on entering TIME-WAIT, so a waiting stream costs only its struct.
    pub fn time_wait(&mut self, duration: Duration) -> Result<&mut Self, ConfigError> {
        check("time_wait_s", duration.as_secs(), 0, 240)?;
        self.time_wait = duration;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setters_validate() {
        let mut c = StreamConfig::default();
        assert!(c.mss(64).is_err());
        assert!(c.recv_buffer(1 << 31).is_err());
        assert!(c.ack_delay(Duration::from_millis(600)).is_err());
        let e = c
            .rto(
                Duration::from_millis(100),
                Duration::from_millis(200),
                Duration::from_secs(1),
            )
            .unwrap_err();
        assert_eq!(e.field, "min_rto_ms");
        c.mss(1200)
            .unwrap()
            .send_buffer(1 << 16)
            .unwrap()
            .nagle(true);
        assert_eq!((c.mss, c.send_buffer, c.nagle), (1200, 1 << 16, true));
    }
}
