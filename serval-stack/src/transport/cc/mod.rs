//! Congestion control behind one trait: CUBIC (default) and NewReno.
//!
//! The stream owns loss detection and recovery episodes; a controller only turns "bytes
//! delivered", "congestion event" and "retransmission timeout" into a window. Windows are
//! in bytes; `mss` is the payload size the stream sends per full segment.

mod cubic;
mod newreno;

use core::fmt;
use core::time::Duration;

pub use cubic::Cubic;
pub use newreno::NewReno;

use super::config::CongestionAlgorithm;
use super::rtt::RttEstimator;
use crate::time::Timestamp;

/// A congestion controller.
pub trait Controller: fmt::Debug + Send + Sync {
    /// `bytes` were newly delivered (cumulatively or selectively acknowledged), all sent
    /// after the last congestion event. `app_limited`: the sender was not filling the
    /// window, so the window must not grow (RFC 9438 §5.8, RFC 7661).
    fn on_ack(&mut self, now: Timestamp, bytes: u64, rtt: &RttEstimator, app_limited: bool);

    /// A loss was detected: reduce once for this recovery episode (the stream calls it at
    /// most once per round trip of losses).
    fn on_congestion_event(&mut self, now: Timestamp);

    /// The retransmission timer expired. `first`: the first expiry of this loss episode
    /// (RFC 5681 §3.1: ssthresh is not lowered again on repeated timeouts).
    fn on_retransmission_timeout(&mut self, now: Timestamp, first: bool);

    /// Congestion window, bytes.
    fn window(&self) -> u64;

    /// Slow-start threshold, bytes.
    fn ssthresh(&self) -> u64;

    /// Whether the window is below ssthresh.
    fn in_slow_start(&self) -> bool {
        self.window() < self.ssthresh()
    }

    /// Leave slow start now (HyStart++ saw the queue building): ssthresh = cwnd.
    fn exit_slow_start(&mut self);
}

/// HyStart++ (RFC 9406) delay-based slow-start exit.
///
/// Slow start doubles the window every round trip until a loss; on a path with a deep
/// tail-drop queue that loss is a burst of hundreds of segments. HyStart++ instead watches
/// the minimum RTT of each round and leaves slow start when it rises by a fraction of the
/// previous round's, i.e. when a queue starts to build. This implementation exits straight
/// to congestion avoidance; RFC 9406's Conservative Slow Start phase (which guards against
/// exiting on RTT noise) is not implemented.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HyStart {
    /// Sequence offset that ends the current round (SND.NXT when it began).
    window_end: u64,
    last_round_min: Option<Duration>,
    current_round_min: Option<Duration>,
    samples: u32,
    /// Slow start was left (by HyStart++ or a loss): nothing more to do.
    done: bool,
}

//= RFC 9406 §4.3
//# MIN_RTT_THRESH = 4 msec, MAX_RTT_THRESH = 16 msec, MIN_RTT_DIVISOR = 8,
//# N_RTT_SAMPLE = 8
const MIN_RTT_THRESH: Duration = Duration::from_millis(4);
const MAX_RTT_THRESH: Duration = Duration::from_millis(16);
const MIN_RTT_DIVISOR: u32 = 8;
const N_RTT_SAMPLE: u32 = 8;

impl HyStart {
    /// Feeds an ACK up to `ack` carrying RTT sample `rtt`; `snd_nxt` starts the next round.
    /// Returns `true` once, when slow start should end.
    pub(crate) fn on_ack(&mut self, ack: u64, snd_nxt: u64, rtt: Option<Duration>) -> bool {
        if self.done {
            return false;
        }
        //# When a round ends ... lastRoundMinRTT = currentRoundMinRTT;
        //# currentRoundMinRTT = infinity; rttSampleCount = 0
        if ack >= self.window_end {
            self.window_end = snd_nxt;
            self.last_round_min = self.current_round_min.take().or(self.last_round_min);
            self.samples = 0;
        }
        let Some(rtt) = rtt else { return false };
        self.current_round_min = Some(self.current_round_min.map_or(rtt, |m| m.min(rtt)));
        self.samples += 1;
        let (Some(last), Some(current)) = (self.last_round_min, self.current_round_min) else {
            return false;
        };
        //# if (rttSampleCount >= N_RTT_SAMPLE AND currentRoundMinRTT != infinity AND
        //#     lastRoundMinRTT != infinity)
        //#   RttThresh = max(MIN_RTT_THRESH, min(lastRoundMinRTT / MIN_RTT_DIVISOR,
        //#                   MAX_RTT_THRESH))
        //#   if (currentRoundMinRTT >= (lastRoundMinRTT + RttThresh)) exit slow start
        if self.samples >= N_RTT_SAMPLE {
            let thresh = (last / MIN_RTT_DIVISOR).clamp(MIN_RTT_THRESH, MAX_RTT_THRESH);
            if current >= last + thresh {
                self.done = true;
                return true;
            }
        }
        false
    }

    /// Slow start ended some other way (loss, timeout).
    pub(crate) fn stop(&mut self) {
        self.done = true;
    }
}

/// Builds the controller `algorithm` names, starting at `initial_window` segments.
pub fn new_controller(
    algorithm: CongestionAlgorithm,
    mss: u64,
    initial_window: u64,
) -> Box<dyn Controller> {
    match algorithm {
        CongestionAlgorithm::Cubic => Box::new(Cubic::new(mss, initial_window)),
        CongestionAlgorithm::NewReno => Box::new(NewReno::new(mss, initial_window)),
    }
}

/// Initial ssthresh: "arbitrarily high" (RFC 5681 §3.1).
const INITIAL_SSTHRESH: u64 = u64::MAX / 2;

/// Slow-start growth for one ACK: byte counting capped at 2 segments per ACK
//= RFC 3465 §2.2
//# cwnd += min(N, L*SMSS) ... L = 2
fn slow_start_increase(bytes: u64, mss: u64) -> u64 {
    bytes.min(2 * mss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hystart_exits_when_the_round_min_rtt_rises() {
        let mut h = HyStart::default();
        let ms = Duration::from_millis;
        // Round 1 (ends at 10): min 20 ms.
        for i in 0..10 {
            assert!(!h.on_ack(i, 10, Some(ms(20 + i))));
        }
        // Round 2 (ends at 20): min 22 ms < 20 + 4: keep going.
        for i in 10..20 {
            assert!(!h.on_ack(i, 20, Some(ms(22))));
        }
        // Round 3: min 27 ms ≥ 22 + 4 after 8 samples: exit, once.
        let exits: Vec<bool> = (20..30).map(|i| h.on_ack(i, 30, Some(ms(27)))).collect();
        assert_eq!(exits.iter().filter(|&&e| e).count(), 1);
        assert_eq!(exits.iter().position(|&e| e), Some(7));
    }
}
