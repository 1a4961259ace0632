//! Pacing: spread a window of segments over a round trip instead of sending it in one burst.

use core::time::Duration;

use crate::time::Timestamp;

/// Burst the pacer allows, as time at the pacing rate (quinn uses the same 2 ms).
const BURST_INTERVAL: Duration = Duration::from_millis(2);
/// Burst bounds in segments: small enough for shallow queues, large enough that a fast
/// path is not throttled by timer granularity.
const MIN_BURST: u64 = 10;
const MAX_BURST: u64 = 64;

/// A token bucket refilled at `gain × cwnd / srtt`.
///
/// Linux's gains are used: 2 in slow start (the window doubles each round trip, so
/// pacing at the current window would hold growth back) and 1.2 in congestion avoidance.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pacer {
    /// Bytes that may go now (fractional: refills are continuous).
    tokens: f64,
    last: Option<Timestamp>,
}

impl Pacer {
    /// Pacing gain in slow start.
    pub(crate) const SLOW_START_GAIN: f64 = 2.0;
    /// Pacing gain in congestion avoidance.
    pub(crate) const AVOIDANCE_GAIN: f64 = 1.2;

    /// `None` when `bytes` may be sent now (and takes them from the bucket), else the time
    /// when they may. No pacing before the first RTT sample (`srtt` `None`): the initial
    /// window goes out at once, as RFC 6928 intends.
    pub(crate) fn delay(
        &mut self,
        now: Timestamp,
        bytes: u64,
        mss: u64,
        window: u64,
        srtt: Option<Duration>,
        gain: f64,
    ) -> Option<Timestamp> {
        let srtt_us = micros(srtt?).max(1) as f64;
        // bytes per µs
        let rate = window as f64 * gain / srtt_us;
        let burst = (rate * BURST_INTERVAL.as_micros() as f64)
            .clamp((MIN_BURST * mss) as f64, (MAX_BURST * mss) as f64);
        let elapsed = self.last.map_or(f64::INFINITY, |l| micros(now - l) as f64);
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = Some(now);
        let bytes = bytes as f64;
        if self.tokens >= bytes {
            self.tokens -= bytes;
            return None;
        }
        let wait_us = ((bytes - self.tokens) / rate).ceil().max(1.0);
        Some(now + Duration::from_micros(wait_us as u64))
    }

    /// Forgets the history: the next call starts with a full burst (path change).
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}

/// Whole microseconds of `d` as a `u64` (what `as_micros` gives for any duration the
/// stack measures: those come from `u64` µs timestamps), so the conversion to `f64` is one
/// instruction rather than a `u128` library call on the per-segment path.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_paced() {
        let mut p = Pacer::default();
        let srtt = Some(Duration::from_millis(10));
        let t0 = Timestamp::from_millis(1);
        // cwnd 100 kB over 10 ms at gain 1: 10 bytes/µs; burst clamps to 10 segments.
        let mut sent = 0;
        while p.delay(t0, 1000, 1000, 100_000, srtt, 1.0).is_none() {
            sent += 1;
        }
        assert_eq!(sent, 20, "burst of 2 ms at the pacing rate");
        let next = p.delay(t0, 1000, 1000, 100_000, srtt, 1.0).unwrap();
        assert_eq!(next, t0 + Duration::from_micros(100));
        assert_eq!(p.delay(next, 1000, 1000, 100_000, srtt, 1.0), None);
        assert_eq!(
            Pacer::default().delay(t0, 1000, 1000, 100_000, None, 1.0),
            None
        );
    }
}
