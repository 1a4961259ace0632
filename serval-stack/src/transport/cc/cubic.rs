//! CUBIC congestion control (RFC 9438).

use core::time::Duration;

use super::{Controller, INITIAL_SSTHRESH, slow_start_increase};
use crate::time::Timestamp;
use crate::transport::rtt::RttEstimator;

//= RFC 9438 §5.1
//# C SHOULD be set to 0.4.
const C: f64 = 0.4;
//= RFC 9438 §4.6
//# beta_cubic SHOULD be set to 0.7
const BETA: f64 = 0.7;
//= RFC 9438 §4.3
//# alpha_cubic = 3 * (1 - beta_cubic) / (1 + beta_cubic)
const ALPHA: f64 = 3.0 * (1.0 - BETA) / (1.0 + BETA);

/// CUBIC window growth: concave towards the window before the last loss (`W_max`), then
/// convex beyond it, with a Reno-friendly floor. All window arithmetic is in segments
/// (as in the RFC) and converted to bytes at the edge.
#[derive(Debug, Clone)]
pub struct Cubic {
    mss: u64,
    /// Window in segments (fractional: increases arrive per ACK).
    cwnd: f64,
    ssthresh: u64,
    /// Window just before the last reduction, segments.
    w_max: f64,
    /// Start of the current congestion-avoidance epoch and its K (seconds).
    epoch: Option<(Timestamp, f64)>,
    /// Reno-friendly estimate, segments.
    w_est: f64,
}

impl Cubic {
    /// A controller with `initial_window` segments of `mss` bytes.
    pub fn new(mss: u64, initial_window: u64) -> Self {
        Self {
            mss,
            cwnd: initial_window as f64,
            ssthresh: INITIAL_SSTHRESH,
            w_max: 0.0,
            epoch: None,
            w_est: 0.0,
        }
    }

    /// W_cubic(t) = C·(t − K)³ + W_max, segments.
    fn w_cubic(&self, t: f64, k: f64) -> f64 {
        //= RFC 9438 §4.2
        //# W_cubic(t) = C * (t - K)^3 + W_max
        C * (t - k).powi(3) + self.w_max
    }

    fn start_epoch(&mut self, now: Timestamp) -> (Timestamp, f64) {
        //= RFC 9438 §4.2
        //# K = cubic_root((W_max - cwnd_epoch) / C)
        let k = if self.w_max > self.cwnd {
            ((self.w_max - self.cwnd) / C).cbrt()
        } else {
            0.0
        };
        if self.w_max < self.cwnd {
            self.w_max = self.cwnd;
        }
        //= RFC 9438 §4.3
        //# W_est is set equal to cwnd_epoch at the start of the congestion avoidance stage.
        self.w_est = self.cwnd;
        let epoch = (now, k);
        self.epoch = Some(epoch);
        epoch
    }

    fn reduce(&mut self) {
        //= RFC 9438 §4.7
        //# if cwnd < W_max and fast convergence enabled: W_max = cwnd * (1 + beta_cubic) / 2
        //# else: W_max = cwnd
        self.w_max = if self.cwnd < self.w_max {
            self.cwnd * (1.0 + BETA) / 2.0
        } else {
            self.cwnd
        };
        //= RFC 9438 §4.6
        //# ssthresh = cwnd * beta_cubic; ssthresh = max(ssthresh, 2)
        let ssthresh = (self.cwnd * BETA).max(2.0);
        self.ssthresh = (ssthresh * self.mss as f64) as u64;
        self.cwnd = ssthresh;
        self.epoch = None;
    }
}

impl Controller for Cubic {
    fn on_ack(&mut self, now: Timestamp, bytes: u64, rtt: &RttEstimator, app_limited: bool) {
        if app_limited {
            return;
        }
        let mss = self.mss as f64;
        if self.window() < self.ssthresh {
            self.cwnd += slow_start_increase(bytes, self.mss) as f64 / mss;
            return;
        }
        let (start, k) = match self.epoch {
            Some(e) => e,
            None => self.start_epoch(now),
        };
        let acked = bytes as f64 / mss;
        let t = (now - start).as_secs_f64();
        let rtt = rtt
            .srtt()
            .unwrap_or(Duration::from_millis(100))
            .as_secs_f64();
        //= RFC 9438 §4.3
        //# W_est = W_est + alpha_cubic * segments_acked / cwnd
        //# Once W_est has grown to reach the cwnd at the time of most recently setting
        //# ssthresh -- that is, W_est >= W_max -- TCP friendliness SHOULD use alpha_cubic = 1
        let alpha = if self.w_est >= self.w_max { 1.0 } else { ALPHA };
        self.w_est += alpha * acked / self.cwnd;
        if self.w_cubic(t, k) < self.w_est {
            //# If W_cubic(t) is less than W_est, then the protocol is in the Reno-friendly
            //# region and cwnd SHOULD be set to W_est at each reception of an ACK.
            self.cwnd = self.cwnd.max(self.w_est);
            return;
        }
        //= RFC 9438 §4.4
        //# target = cwnd if W_cubic(t + RTT) < cwnd; 1.5 * cwnd if > 1.5 * cwnd
        //# cwnd should be increased by (target - cwnd) / cwnd for each received ACK
        let target = self.w_cubic(t + rtt, k).clamp(self.cwnd, 1.5 * self.cwnd);
        self.cwnd += (target - self.cwnd) / self.cwnd * acked;
    }

    fn on_congestion_event(&mut self, _now: Timestamp) {
        self.reduce();
    }

    fn on_retransmission_timeout(&mut self, _now: Timestamp, first: bool) {
        //= RFC 9438 §4.8
        //# In the case of a timeout, CUBIC follows Reno to reduce cwnd [RFC5681] but sets
        //# ssthresh using beta_cubic (same as in Section 4.6)
        if first {
            self.reduce();
        }
        self.cwnd = 1.0;
        self.epoch = None;
    }

    fn window(&self) -> u64 {
        (self.cwnd * self.mss as f64) as u64
    }

    fn ssthresh(&self) -> u64 {
        self.ssthresh
    }

    fn exit_slow_start(&mut self) {
        // The next ACK starts an epoch with W_max = cwnd, so K = 0: CUBIC probes convexly
        // from here, as Linux does after HyStart.
        self.ssthresh = self.window();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtt(ms: u64) -> RttEstimator {
        let mut r = RttEstimator::new(Duration::from_secs(1), Duration::ZERO, Duration::MAX);
        r.on_sample(Duration::from_millis(ms));
        r
    }

    #[test]
    fn reduction_uses_beta_and_fast_convergence() {
        let mut c = Cubic::new(1000, 100);
        c.on_congestion_event(Timestamp::ZERO);
        assert_eq!((c.window(), c.ssthresh()), (70_000, 70_000));
        assert_eq!(c.w_max, 100.0);
        c.on_congestion_event(Timestamp::ZERO);
        assert_eq!(c.window(), 49_000);
        assert!(
            (c.w_max - 70.0 * 1.7 / 2.0).abs() < 1e-9,
            "fast convergence"
        );
    }

    #[test]
    fn concave_then_convex_growth_reaches_w_max_near_k() {
        let r = rtt(50);
        // A large window, so the cubic curve (not the Reno-friendly estimate) governs.
        let mut c = Cubic::new(1000, 1000);
        c.on_congestion_event(Timestamp::ZERO);
        // K = cbrt((1000 - 700) / 0.4) ≈ 9.09 s.
        let mut now = Timestamp::ZERO;
        let mut windows = Vec::new();
        for _ in 0..400 {
            now += Duration::from_millis(50);
            // One window of ACKs per RTT.
            let w = c.window();
            c.on_ack(now, w, &r, false);
            windows.push(c.window());
        }
        let at = |secs: f64| windows[(secs / 0.05) as usize - 1];
        assert!(at(1.0) > 700_000 && at(1.0) < 1_000_000, "{}", at(1.0));
        assert!(
            at(9.1).abs_diff(1_000_000) < 30_000,
            "plateau at W_max: {}",
            at(9.1)
        );
        assert!(
            at(19.0) > 1_200_000,
            "convex probing beyond W_max: {}",
            at(19.0)
        );
        assert!(
            windows.windows(2).all(|w| w[1] >= w[0]),
            "monotone between losses"
        );
    }

    #[test]
    fn timeout_collapses_to_one_segment_and_app_limited_freezes() {
        let r = rtt(10);
        let mut c = Cubic::new(1000, 10);
        c.on_retransmission_timeout(Timestamp::ZERO, true);
        assert_eq!((c.window(), c.ssthresh()), (1000, 7000));
        c.on_ack(Timestamp::ZERO, 1000, &r, true);
        assert_eq!(c.window(), 1000);
        c.on_ack(Timestamp::ZERO, 1000, &r, false);
        assert_eq!(c.window(), 2000, "slow start again");
    }
}
