//! NewReno congestion control (RFC 5681 §3.1, RFC 6582): the conservative fallback.

use super::{Controller, INITIAL_SSTHRESH, slow_start_increase};
use crate::time::Timestamp;
use crate::transport::rtt::RttEstimator;

/// Additive increase of one segment per window, halving on loss.
#[derive(Debug, Clone)]
pub struct NewReno {
    mss: u64,
    cwnd: u64,
    ssthresh: u64,
    /// Bytes acknowledged in congestion avoidance since the last one-segment increase.
    acked: u64,
}

impl NewReno {
    /// A controller with `initial_window` segments of `mss` bytes.
    pub fn new(mss: u64, initial_window: u64) -> Self {
        Self {
            mss,
            cwnd: mss * initial_window,
            ssthresh: INITIAL_SSTHRESH,
            acked: 0,
        }
    }

    fn reduce(&mut self) {
        //= RFC 5681 §3.1
        //# ssthresh = max (FlightSize / 2, 2*SMSS)
        // (on the window rather than FlightSize, as RFC 9002 does: the stream keeps
        // FlightSize near cwnd when not application-limited)
        self.ssthresh = (self.cwnd / 2).max(2 * self.mss);
        self.acked = 0;
    }
}

impl Controller for NewReno {
    fn on_ack(&mut self, _now: Timestamp, bytes: u64, _rtt: &RttEstimator, app_limited: bool) {
        if app_limited {
            return;
        }
        if self.cwnd < self.ssthresh {
            self.cwnd += slow_start_increase(bytes, self.mss);
            return;
        }
        //= RFC 5681 §3.1
        //# cwnd += SMSS*SMSS/cwnd ... (appropriate byte counting: one SMSS per cwnd acked)
        self.acked += bytes;
        if self.acked >= self.cwnd {
            self.acked -= self.cwnd;
            self.cwnd += self.mss;
        }
    }

    fn on_congestion_event(&mut self, _now: Timestamp) {
        self.reduce();
        self.cwnd = self.ssthresh;
    }

    fn on_retransmission_timeout(&mut self, _now: Timestamp, first: bool) {
        if first {
            self.reduce();
        }
        //= RFC 5681 §3.1
        //# Furthermore, upon a timeout (as specified in [RFC2988]) cwnd MUST be set to no
        //# more than the loss window, LW, which equals 1 full-sized segment
        self.cwnd = self.mss;
    }

    fn window(&self) -> u64 {
        self.cwnd
    }

    fn ssthresh(&self) -> u64 {
        self.ssthresh
    }

    fn exit_slow_start(&mut self) {
        self.ssthresh = self.cwnd;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;

    #[test]
    fn slow_start_then_linear_then_halve() {
        let rtt = RttEstimator::new(Duration::from_secs(1), Duration::ZERO, Duration::MAX);
        let t = Timestamp::ZERO;
        let mut c = NewReno::new(1000, 10);
        c.on_ack(t, 2000, &rtt, false);
        assert_eq!(c.window(), 12_000);
        c.on_ack(t, 5000, &rtt, false);
        assert_eq!(c.window(), 14_000, "capped at 2 MSS per ACK");
        c.on_ack(t, 5000, &rtt, true);
        assert_eq!(c.window(), 14_000, "no growth when application-limited");
        c.on_congestion_event(t);
        assert_eq!((c.window(), c.ssthresh()), (7000, 7000));
        c.on_ack(t, 7000, &rtt, false);
        assert_eq!(c.window(), 8000);
        c.on_retransmission_timeout(t, true);
        assert_eq!((c.window(), c.ssthresh()), (1000, 4000));
        c.on_retransmission_timeout(t, false);
        assert_eq!(c.ssthresh(), 4000, "repeated timeouts keep ssthresh");
    }
}
