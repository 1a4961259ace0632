//! The one table of everything a stream may have to do later.

use crate::time::Timestamp;

/// A stream timer. `handle_timeout` walks [`Timer::VALUES`] in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Retransmission timeout (RFC 6298).
    Rto,
    /// Tail loss probe timeout (RFC 8985 §7).
    Tlp,
    /// RACK reordering window expiry (RFC 8985 §6.2 step 5).
    Reorder,
    /// Delayed ACK (RFC 9293 §3.8.6.3).
    DelayedAck,
    /// Zero-window probe (persist) timer (RFC 9293 §3.8.6.1).
    Persist,
    /// Keepalive probe (RFC 9293 §3.8.4).
    KeepAlive,
    /// Idle timeout: nothing received for too long.
    Idle,
    /// The pacer allows the next segment.
    Pacing,
    /// End of TIME-WAIT.
    TimeWait,
}

impl Timer {
    pub(crate) const VALUES: [Self; 9] = [
        Self::Rto,
        Self::Tlp,
        Self::Reorder,
        Self::DelayedAck,
        Self::Persist,
        Self::KeepAlive,
        Self::Idle,
        Self::Pacing,
        Self::TimeWait,
    ];

    /// Timers that drive retransmission; suspended while the path is frozen.
    pub(crate) fn is_loss_timer(self) -> bool {
        matches!(self, Self::Rto | Self::Tlp | Self::Reorder | Self::Persist)
    }
}

/// One deadline per [`Timer`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TimerTable {
    data: [Option<Timestamp>; 9],
}

impl TimerTable {
    pub(crate) fn set(&mut self, timer: Timer, at: Timestamp) {
        self.data[timer as usize] = Some(at);
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Timestamp> {
        self.data[timer as usize]
    }

    pub(crate) fn is_set(&self, timer: Timer) -> bool {
        self.get(timer).is_some()
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.data[timer as usize] = None;
    }

    pub(crate) fn stop_all(&mut self) {
        *self = Self::default();
    }

    pub(crate) fn is_expired(&self, timer: Timer, now: Timestamp) -> bool {
        self.get(timer).is_some_and(|t| t <= now)
    }

    /// The earliest deadline among the timers `include` accepts.
    pub(crate) fn next(&self, include: impl Fn(Timer) -> bool) -> Option<Timestamp> {
        Timer::VALUES
            .iter()
            .filter(|&&t| include(t))
            .filter_map(|&t| self.get(t))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_the_minimum_of_included() {
        let mut t = TimerTable::default();
        assert_eq!(t.next(|_| true), None);
        t.set(Timer::Rto, Timestamp::from_millis(5));
        t.set(Timer::Idle, Timestamp::from_millis(9));
        assert_eq!(t.next(|_| true), Some(Timestamp::from_millis(5)));
        assert_eq!(
            t.next(|x| !x.is_loss_timer()),
            Some(Timestamp::from_millis(9))
        );
        assert!(t.is_expired(Timer::Rto, Timestamp::from_millis(5)));
        t.stop(Timer::Rto);
        assert!(!t.is_set(Timer::Rto));
    }
}
