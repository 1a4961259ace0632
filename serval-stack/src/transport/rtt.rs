//! Round-trip time estimation and the retransmission timeout (RFC 6298).

use core::time::Duration;

/// Clock granularity G of RFC 6298 §2: our clock is µs, but 1 ms keeps RTO sane when the
/// variance collapses on a quiet LAN.
const GRANULARITY: Duration = Duration::from_millis(1);

/// Smoothed RTT, variation and minimum, plus the RTO derived from them.
#[derive(Debug, Clone, Copy)]
pub struct RttEstimator {
    latest: Duration,
    srtt: Option<Duration>,
    rttvar: Duration,
    min: Option<Duration>,
    initial_rto: Duration,
    min_rto: Duration,
    max_rto: Duration,
}

impl RttEstimator {
    /// An estimator with no sample yet.
    pub fn new(initial_rto: Duration, min_rto: Duration, max_rto: Duration) -> Self {
        Self {
            latest: Duration::ZERO,
            srtt: None,
            rttvar: Duration::ZERO,
            min: None,
            initial_rto,
            min_rto,
            max_rto,
        }
    }

    /// Feeds one measurement.
    pub fn on_sample(&mut self, rtt: Duration) {
        self.latest = rtt;
        self.min = Some(self.min.map_or(rtt, |m| m.min(rtt)));
        match self.srtt {
            //= RFC 6298 §2.2
            //# When the first RTT measurement R is made, the host MUST set
            //# SRTT <- R, RTTVAR <- R/2
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            //= RFC 6298 §2.3
            //# RTTVAR <- (1 - beta) * RTTVAR + beta * |SRTT - R'|
            //# SRTT <- (1 - alpha) * SRTT + alpha * R'
            //# The above SHOULD be computed using alpha=1/8 and beta=1/4
            Some(srtt) => {
                let delta = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// Smoothed RTT, `None` before the first sample.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Smoothed RTT, or the initial RTO before any sample (a safe upper guess).
    pub fn srtt_or_initial(&self) -> Duration {
        self.srtt.unwrap_or(self.initial_rto)
    }

    /// RTT variation.
    pub fn rttvar(&self) -> Duration {
        self.rttvar
    }

    /// Smallest sample seen (RACK's `min_RTT`).
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min
    }

    /// Latest sample.
    pub fn latest(&self) -> Duration {
        self.latest
    }

    /// The base RTO, before backoff.
    pub fn rto(&self) -> Duration {
        let Some(srtt) = self.srtt else {
            //= RFC 6298 §2.1
            //# Until a round-trip time (RTT) measurement has been made ... the sender
            //# SHOULD set RTO <- 1 second
            return self.initial_rto;
        };
        //= RFC 6298 §2.3
        //# RTO <- SRTT + max (G, K*RTTVAR) where K = 4.
        let rto = srtt + GRANULARITY.max(self.rttvar * 4);
        //= RFC 6298 §2.4
        //# Whenever RTO is computed, if it is less than 1 second, then the RTO SHOULD be
        //# rounded up to 1 second.
        // (we round up to `min_rto`, 200 ms by default, as Linux does)
        //= RFC 6298 §2.5
        //# A maximum value MAY be placed on RTO provided it is at least 60 seconds.
        rto.clamp(self.min_rto, self.max_rto)
    }

    /// RTO after `backoff` consecutive expiries (RFC 6298 §5.5: doubled each time), capped.
    pub fn rto_backed_off(&self, backoff: u32) -> Duration {
        let factor = 1u32.checked_shl(backoff.min(16)).unwrap_or(u32::MAX);
        self.rto().saturating_mul(factor).min(self.max_rto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est() -> RttEstimator {
        RttEstimator::new(
            Duration::from_secs(1),
            Duration::from_millis(200),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn first_and_later_samples() {
        let mut e = est();
        assert_eq!(e.rto(), Duration::from_secs(1));
        e.on_sample(Duration::from_millis(100));
        assert_eq!(e.srtt(), Some(Duration::from_millis(100)));
        assert_eq!(e.rttvar(), Duration::from_millis(50));
        assert_eq!(e.rto(), Duration::from_millis(300));
        e.on_sample(Duration::from_millis(180));
        assert_eq!(e.srtt(), Some(Duration::from_millis(110)));
        assert_eq!(e.rttvar(), Duration::from_micros(57_500));
        assert_eq!(e.min_rtt(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn clamps_and_backoff() {
        let mut e = est();
        e.on_sample(Duration::from_micros(100));
        assert_eq!(e.rto(), Duration::from_millis(200));
        assert_eq!(e.rto_backed_off(3), Duration::from_millis(1600));
        assert_eq!(e.rto_backed_off(40), Duration::from_secs(60));
    }
}
