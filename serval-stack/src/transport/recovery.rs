//! Loss detection: the SACK scoreboard of segments in flight and RACK-TLP (RFC 8985).
//!
//! Offsets here are *sequence offsets* from our ISS (the SYN is 0, data byte `i` is
//! `i + 1`, our FIN is one past the last byte), so they never wrap.

use core::time::Duration;
use std::collections::VecDeque;

use crate::time::Timestamp;

/// Where a sent segment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegState {
    /// Sent (or retransmitted) and counted in the pipe.
    InFlight,
    /// Selectively acknowledged: delivered, not in the pipe.
    Sacked,
    /// Deemed lost and waiting for retransmission: not in the pipe.
    Lost,
}

/// One transmitted segment. Retransmissions reuse the original boundaries, so SACK blocks
/// (which the receiver reports on byte boundaries we chose) map onto whole segments.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SentSegment {
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// Whether the range ends with our FIN.
    pub(crate) fin: bool,
    /// Time of the latest (re)transmission.
    pub(crate) xmit_time: Timestamp,
    /// Transmissions so far (1 = never retransmitted).
    pub(crate) xmit_count: u16,
    /// Path epoch of the latest transmission (see `Stream::on_path_change`).
    pub(crate) epoch: u32,
    pub(crate) state: SegState,
}

impl SentSegment {
    pub(crate) fn len(&self) -> u64 {
        self.end - self.start
    }
}

/// The segments between SND.UNA and SND.NXT, in sequence order.
///
/// Bounded by the send buffer: at most `send_buffer / smallest segment` entries, stored in
/// one `VecDeque` that grows by doubling. Lookups by offset are binary searches.
#[derive(Debug, Default)]
pub(crate) struct Scoreboard {
    segs: VecDeque<SentSegment>,
    /// Bytes `InFlight` (RFC 6675's "pipe").
    in_flight: u64,
    /// Segments `Sacked`.
    sacked_segments: usize,
    /// Segments `Lost`.
    lost_segments: usize,
}

impl Scoreboard {
    pub(crate) fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight
    }

    pub(crate) fn sacked_segments(&self) -> usize {
        self.sacked_segments
    }

    pub(crate) fn len(&self) -> usize {
        self.segs.len()
    }

    pub(crate) fn front(&self) -> Option<&SentSegment> {
        self.segs.front()
    }

    pub(crate) fn get(&self, idx: usize) -> Option<&SentSegment> {
        self.segs.get(idx)
    }

    /// Records a first transmission (appended: offsets only grow).
    pub(crate) fn on_sent(&mut self, seg: SentSegment) {
        self.in_flight += seg.len();
        self.segs.push_back(seg);
    }

    /// Records a retransmission of segment `idx`.
    pub(crate) fn on_retransmit(&mut self, idx: usize, now: Timestamp, epoch: u32) {
        let Some(seg) = self.segs.get_mut(idx) else {
            return;
        };
        match seg.state {
            SegState::Lost => {
                self.lost_segments -= 1;
                self.in_flight += seg.len();
            }
            // A probe re-sends a segment still in the pipe: it is not counted twice.
            SegState::InFlight => {}
            SegState::Sacked => return,
        }
        seg.state = SegState::InFlight;
        seg.xmit_time = now;
        seg.xmit_count = seg.xmit_count.saturating_add(1);
        seg.epoch = epoch;
    }

    /// Marks segment `idx` lost if it is in flight (duplicate-ACK and partial-ACK recovery
    /// without SACK).
    pub(crate) fn mark_lost(&mut self, idx: usize) {
        if self
            .segs
            .get(idx)
            .is_some_and(|s| s.state == SegState::InFlight)
        {
            self.set_state(idx, SegState::Lost);
        }
    }

    /// Index of the first segment waiting for retransmission.
    pub(crate) fn first_lost(&self) -> Option<usize> {
        if self.lost_segments == 0 {
            return None;
        }
        self.segs.iter().position(|s| s.state == SegState::Lost)
    }

    /// Index of the highest segment not yet SACKed (the TLP retransmission candidate).
    pub(crate) fn last_unsacked(&self) -> Option<usize> {
        self.segs.iter().rposition(|s| s.state != SegState::Sacked)
    }

    fn set_state(&mut self, idx: usize, state: SegState) {
        let Some(seg) = self.segs.get_mut(idx) else {
            return;
        };
        let len = seg.len();
        match seg.state {
            SegState::InFlight => self.in_flight -= len,
            SegState::Sacked => self.sacked_segments -= 1,
            SegState::Lost => self.lost_segments -= 1,
        }
        match state {
            SegState::InFlight => self.in_flight += len,
            SegState::Sacked => self.sacked_segments += 1,
            SegState::Lost => self.lost_segments += 1,
        }
        seg.state = state;
    }

    /// Removes segments below `ack` (trimming a partially acknowledged one) and reports
    /// each newly delivered one.
    pub(crate) fn ack_cumulative(&mut self, ack: u64, mut f: impl FnMut(&SentSegment)) {
        while let Some(front) = self.segs.front().copied() {
            if front.start >= ack {
                break;
            }
            if front.end > ack {
                // Partial: the receiver took a prefix (it trimmed to its window).
                if let Some(seg) = self.segs.front_mut() {
                    if seg.state == SegState::InFlight {
                        self.in_flight -= ack - seg.start;
                    }
                    seg.start = ack;
                }
                break;
            }
            match front.state {
                SegState::InFlight => self.in_flight -= front.len(),
                SegState::Sacked => self.sacked_segments -= 1,
                SegState::Lost => self.lost_segments -= 1,
            }
            self.segs.pop_front();
            if front.state != SegState::Sacked {
                f(&front);
            }
        }
    }

    /// Marks whole segments inside `[left, right)` SACKed and reports the newly SACKed.
    pub(crate) fn sack(&mut self, left: u64, right: u64, mut f: impl FnMut(&SentSegment)) {
        let mut idx = self.segs.partition_point(|s| s.start < left);
        while let Some(seg) = self.segs.get(idx).copied() {
            if seg.end > right {
                break;
            }
            if seg.state != SegState::Sacked {
                self.set_state(idx, SegState::Sacked);
                f(&seg);
            }
            idx += 1;
        }
    }

    /// Whether `[left, right)` covers only segments sent more than once: the signature of a
    /// D-SACK for a retransmission (RFC 2883 §4).
    pub(crate) fn covers_retransmission(&self, left: u64, right: u64) -> bool {
        let idx = self.segs.partition_point(|s| s.end <= left);
        self.segs
            .get(idx)
            .is_some_and(|s| s.start < right && s.xmit_count > 1)
    }

    /// RACK loss detection (RFC 8985 §6.2 step 5). Marks lost every in-flight segment sent
    /// before the RACK segment whose reordering window has elapsed; returns the longest
    /// remaining wait among those not yet expired (the reordering timer).
    pub(crate) fn detect_losses(
        &mut self,
        rack: &Rack,
        reo_wnd: Duration,
        now: Timestamp,
        mut on_lost: impl FnMut(&SentSegment),
    ) -> Option<Duration> {
        let rack_time = rack.xmit_time?;
        let mut timeout: Option<Duration> = None;
        for idx in 0..self.segs.len() {
            let seg = self.segs[idx];
            let before_rack = sent_after(rack_time, rack.end, seg.xmit_time, seg.end);
            if !before_rack && seg.xmit_count == 1 {
                // Segments are first sent in sequence order and `now` never decreases, so
                // every later segment went out (first, or again) after this one: none of
                // them is before the RACK segment either. Keeps the common ACK O(1)
                // instead of a walk over the whole flight.
                break;
            }
            if seg.state != SegState::InFlight || !before_rack {
                continue;
            }
            //= RFC 8985 §6.2
            //# remaining = Segment.xmit_ts + RACK.rtt + RACK.reo_wnd - Now()
            let deadline = seg.xmit_time + rack.rtt + reo_wnd;
            if deadline <= now {
                self.set_state(idx, SegState::Lost);
                on_lost(&seg);
            } else {
                let remaining = deadline - now;
                timeout = Some(timeout.map_or(remaining, |t| t.max(remaining)));
            }
        }
        timeout
    }

    /// Marks every un-SACKed segment lost (retransmission timeout, path change).
    pub(crate) fn mark_all_lost(&mut self, mut on_lost: impl FnMut(&SentSegment)) {
        for idx in 0..self.segs.len() {
            if self.segs[idx].state == SegState::InFlight {
                self.set_state(idx, SegState::Lost);
                on_lost(&self.segs[idx]);
            }
        }
    }

    /// Heap bytes held.
    #[cfg(test)]
    pub(crate) fn allocated(&self) -> usize {
        self.segs.capacity() * size_of::<SentSegment>()
    }

    /// Marks the first segment lost even if SACKed (RFC 2018 §8, after a timeout).
    pub(crate) fn unsack_front(&mut self) {
        if self
            .segs
            .front()
            .is_some_and(|s| s.state == SegState::Sacked)
        {
            self.set_state(0, SegState::Lost);
        }
    }

    /// Frees the memory (TIME-WAIT / CLOSED).
    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }
}

/// RFC 8985 §6.2 `RACK_sent_after`: whether (t1, seq1) was sent after (t2, seq2).
fn sent_after(t1: Timestamp, seq1: u64, t2: Timestamp, seq2: u64) -> bool {
    t1 > t2 || (t1 == t2 && seq1 > seq2)
}

/// RACK state (RFC 8985 §5.2).
#[derive(Debug, Clone)]
pub(crate) struct Rack {
    /// Transmission time of the most recently sent segment known delivered.
    pub(crate) xmit_time: Option<Timestamp>,
    /// Its end offset.
    pub(crate) end: u64,
    /// RTT measured on it.
    pub(crate) rtt: Duration,
    /// Highest end offset delivered (RACK.fack).
    fack: u64,
    /// Reordering has been observed on this connection.
    pub(crate) reordering_seen: bool,
    reo_wnd_mult: u32,
    reo_wnd_persist: u32,
    dsack_round: Option<u64>,
}

impl Default for Rack {
    fn default() -> Self {
        Self {
            xmit_time: None,
            end: 0,
            rtt: Duration::ZERO,
            fack: 0,
            reordering_seen: false,
            reo_wnd_mult: 1,
            reo_wnd_persist: 0,
            dsack_round: None,
        }
    }
}

impl Rack {
    /// RFC 8985 §6.2 steps 2 and 3 for one delivered segment. `tsecr_before_xmit`: the
    /// ACK echoes a timestamp older than this segment's latest transmission (so it
    /// acknowledges an earlier copy); `min_rtt` is the connection's minimum RTT.
    pub(crate) fn on_delivered(
        &mut self,
        seg: &SentSegment,
        now: Timestamp,
        tsecr_before_xmit: bool,
        min_rtt: Option<Duration>,
    ) {
        let rtt = now - seg.xmit_time;
        if seg.xmit_count > 1 {
            //= RFC 8985 §6.2
            //# If Segment.retransmitted is TRUE: If ACK.ts_option.echo_reply <
            //# Segment.xmit_ts: Return ... If rtt < RACK.min_RTT: Return
            if tsecr_before_xmit || min_rtt.is_some_and(|m| rtt < m) {
                return;
            }
        }
        if self
            .xmit_time
            .is_none_or(|t| sent_after(seg.xmit_time, seg.end, t, self.end))
        {
            self.rtt = rtt;
            self.xmit_time = Some(seg.xmit_time);
            self.end = seg.end;
        }
        //= RFC 8985 §6.2
        //# If Segment.end_seq < RACK.fack and Segment.retransmitted is FALSE:
        //# RACK.reord = TRUE
        if seg.end < self.fack && seg.xmit_count == 1 {
            self.reordering_seen = true;
        }
        self.fack = self.fack.max(seg.end);
    }

    /// RFC 8985 §6.2 step 4, the state part: grow the window on D-SACKs, decay it after 16
    /// recoveries without one.
    pub(crate) fn on_ack(
        &mut self,
        dsack: bool,
        snd_una: u64,
        snd_nxt: u64,
        exiting_recovery: bool,
    ) {
        if self.dsack_round.is_some_and(|r| snd_una >= r) {
            self.dsack_round = None;
        }
        if dsack && self.dsack_round.is_none() {
            self.dsack_round = Some(snd_nxt);
            self.reo_wnd_mult = self.reo_wnd_mult.saturating_add(1);
            self.reo_wnd_persist = 16;
        } else if exiting_recovery && self.reo_wnd_persist > 0 {
            self.reo_wnd_persist -= 1;
            if self.reo_wnd_persist == 0 {
                self.reo_wnd_mult = 1;
            }
        }
    }

    /// RFC 8985 §6.2 step 4: the reordering window.
    pub(crate) fn reo_wnd(
        &self,
        in_recovery: bool,
        sacked_segments: usize,
        min_rtt: Option<Duration>,
        srtt: Duration,
    ) -> Duration {
        //= RFC 8985 §6.2
        //# If RACK.reord is FALSE: If in loss recovery: Return 0 ... Else if
        //# RACK.segs_sacked >= DupThresh: Return 0
        if !self.reordering_seen && (in_recovery || sacked_segments >= 3) {
            return Duration::ZERO;
        }
        //# Return min(RACK.reo_wnd_mult * RACK.min_RTT / 4, SRTT)
        let min_rtt = min_rtt.unwrap_or(srtt);
        (min_rtt / 4).saturating_mul(self.reo_wnd_mult).min(srtt)
    }
}

/// Proportional Rate Reduction for one recovery episode (RFC 6937): in recovery the
/// sender transmits in proportion to what the receiver reports delivered, so the window
/// comes down to ssthresh smoothly instead of in a burst that refills the queue which just
/// overflowed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prr {
    /// Flight size when recovery began (RecoverFS).
    recover_fs: u64,
    /// Bytes delivered since (prr_delivered).
    delivered: u64,
    /// Bytes sent since (prr_out).
    out: u64,
    /// Bytes that may still be sent on the latest ACK (sndcnt).
    allowance: u64,
}

impl Prr {
    pub(crate) fn new(recover_fs: u64) -> Self {
        Self {
            recover_fs: recover_fs.max(1),
            delivered: 0,
            out: 0,
            allowance: 0,
        }
    }

    /// RFC 6937 §3, on every ACK in recovery, with the slow-start reduction bound.
    pub(crate) fn on_ack(&mut self, delivered: u64, pipe: u64, ssthresh: u64, mss: u64) {
        self.delivered += delivered;
        let sndcnt = if pipe > ssthresh {
            //# sndcnt = CEIL(prr_delivered * ssthresh / RecoverFS) - prr_out
            let target = (u128::from(self.delivered) * u128::from(ssthresh))
                .div_ceil(u128::from(self.recover_fs));
            u64::try_from(target)
                .unwrap_or(u64::MAX)
                .saturating_sub(self.out)
        } else {
            //# limit = MAX(prr_delivered - prr_out, DeliveredData) + MSS
            //# sndcnt = MIN(ssthresh - pipe, limit)
            let limit = self.delivered.saturating_sub(self.out).max(delivered) + mss;
            (ssthresh - pipe).min(limit)
        };
        // RFC 6937bis: the first ACK of recovery always releases the fast retransmit.
        self.allowance = if self.out == 0 {
            sndcnt.max(mss)
        } else {
            sndcnt
        };
    }

    pub(crate) fn allows(&self, bytes: u64) -> bool {
        self.allowance >= bytes
    }

    pub(crate) fn on_sent(&mut self, bytes: u64) {
        self.out += bytes;
        self.allowance = self.allowance.saturating_sub(bytes);
    }
}

/// Tail loss probe episode (RFC 8985 §7.4).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TlpEpisode {
    /// SND.NXT when the probe was sent; `None` when no probe is outstanding.
    pub(crate) end: Option<u64>,
    /// The probe retransmitted old data (rather than sending new data).
    pub(crate) is_retrans: bool,
    /// TSval of the probe, to recognise the ACK it triggered.
    pub(crate) tsval: u32,
    /// When the probe was sent.
    pub(crate) sent: Timestamp,
    /// Path epoch of the probe.
    pub(crate) epoch: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: u64, len: u64, t_ms: u64) -> SentSegment {
        SentSegment {
            start,
            end: start + len,
            fin: false,
            xmit_time: Timestamp::from_millis(t_ms),
            xmit_count: 1,
            epoch: 0,
            state: SegState::InFlight,
        }
    }

    fn board(n: u64) -> Scoreboard {
        let mut b = Scoreboard::default();
        for i in 0..n {
            b.on_sent(seg(1 + 100 * i, 100, i));
        }
        b
    }

    #[test]
    fn cumulative_and_selective_acks_keep_the_pipe() {
        let mut b = board(5);
        assert_eq!(b.in_flight(), 500);
        let mut got = Vec::new();
        b.sack(201, 401, |d| got.push(d.start));
        assert_eq!(got, vec![201, 301]);
        assert_eq!((b.in_flight(), b.sacked_segments()), (300, 2));
        got.clear();
        b.ack_cumulative(151, |d| got.push(d.start));
        assert_eq!(got, vec![1]);
        assert_eq!(b.front().map(|s| s.start), Some(151), "partial ack trims");
        assert_eq!(b.in_flight(), 150);
        got.clear();
        b.ack_cumulative(401, |d| got.push(d.start));
        assert_eq!(got, vec![151], "SACKed ones are not reported twice");
        assert_eq!((b.len(), b.in_flight(), b.sacked_segments()), (1, 100, 0));
    }

    #[test]
    fn rack_marks_older_segments_lost_after_reordering_window() {
        let mut b = board(4);
        let mut rack = Rack::default();
        let now = Timestamp::from_millis(50);
        let mut delivered = Vec::new();
        b.sack(301, 401, |d| delivered.push(*d));
        for d in &delivered {
            rack.on_delivered(d, now, false, None);
        }
        assert_eq!(rack.rtt, Duration::from_millis(47));
        // reo_wnd 10 ms: segments sent at 0..=2 ms expire at 57..=59 ms.
        let reo = Duration::from_millis(10);
        let mut lost = Vec::new();
        assert_eq!(
            b.detect_losses(&rack, reo, now, |s| lost.push(s.start)),
            Some(Duration::from_millis(9))
        );
        assert!(lost.is_empty());
        b.detect_losses(&rack, reo, Timestamp::from_millis(58), |s| {
            lost.push(s.start)
        });
        assert_eq!(lost, vec![1, 101]);
        assert_eq!(b.first_lost(), Some(0));
        assert_eq!(b.in_flight(), 100);
        b.on_retransmit(0, Timestamp::from_millis(58), 0);
        assert_eq!((b.in_flight(), b.first_lost()), (200, Some(1)));
        assert!(b.covers_retransmission(1, 101));
    }

    #[test]
    fn reordering_detection_and_window() {
        let mut rack = Rack::default();
        let srtt = Duration::from_millis(100);
        let min = Some(Duration::from_millis(40));
        assert_eq!(rack.reo_wnd(false, 0, min, srtt), Duration::from_millis(10));
        assert_eq!(rack.reo_wnd(true, 0, min, srtt), Duration::ZERO);
        let now = Timestamp::from_millis(100);
        rack.on_delivered(&seg(101, 100, 1), now, false, min);
        rack.on_delivered(&seg(1, 100, 0), now, false, min);
        assert!(rack.reordering_seen);
        assert_eq!(rack.reo_wnd(true, 5, min, srtt), Duration::from_millis(10));
        rack.on_ack(true, 1, 500, false);
        assert_eq!(rack.reo_wnd(true, 5, min, srtt), Duration::from_millis(20));
    }

    #[test]
    fn prr_sends_in_proportion_then_catches_up() {
        // 10 segments in flight, ssthresh 7: 0.7 segment per segment delivered.
        let mut prr = Prr::new(10_000);
        prr.on_ack(0, 9_000, 7_000, 1000);
        assert!(prr.allows(1000), "the fast retransmit always goes");
        prr.on_sent(1000);
        prr.on_ack(2000, 8_000, 7_000, 1000);
        assert!(!prr.allows(1000), "1.4 segments earned, 1 sent: 400 bytes");
        prr.on_ack(1000, 7_500, 7_000, 1000);
        assert!(prr.allows(1000), "2.1 earned");
        prr.on_sent(1000);
        // Below ssthresh: slow-start reduction bound, one extra segment per ACK.
        prr.on_ack(1000, 3_000, 7_000, 1000);
        // limit = max(4000 - 2000, 1000) + 1000 = 3000 < ssthresh - pipe = 4000.
        assert!(prr.allows(3000) && !prr.allows(3001));
    }

    #[test]
    fn mark_all_lost_and_last_unsacked() {
        let mut b = board(3);
        b.sack(201, 301, |_| {});
        assert_eq!(b.last_unsacked(), Some(1));
        let mut n = 0;
        b.mark_all_lost(|_| n += 1);
        assert_eq!((n, b.in_flight()), (2, 0));
    }

    /// The full walk `detect_losses` did before it learnt to stop early.
    fn detect_losses_full_walk(
        b: &mut Scoreboard,
        rack: &Rack,
        reo_wnd: Duration,
        now: Timestamp,
        lost: &mut Vec<u64>,
    ) -> Option<Duration> {
        let rack_time = rack.xmit_time?;
        let mut timeout: Option<Duration> = None;
        for idx in 0..b.segs.len() {
            let seg = b.segs[idx];
            if seg.state != SegState::InFlight
                || !sent_after(rack_time, rack.end, seg.xmit_time, seg.end)
            {
                continue;
            }
            let deadline = seg.xmit_time + rack.rtt + reo_wnd;
            if deadline <= now {
                b.set_state(idx, SegState::Lost);
                lost.push(seg.start);
            } else {
                let remaining = deadline - now;
                timeout = Some(timeout.map_or(remaining, |t| t.max(remaining)));
            }
        }
        timeout
    }

    #[test]
    fn early_stop_finds_what_the_full_walk_finds() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..500 {
            // Random history: sends in sequence order, retransmissions, SACKs, time
            // advancing by 0..3 ms per step (ties included).
            let mut b = Scoreboard::default();
            let mut rack = Rack::default();
            let mut now = Timestamp::from_millis(1);
            let mut next = 1;
            for _ in 0..rng.random_range(1..40) {
                now += Duration::from_millis(rng.random_range(0..3));
                match rng.random_range(0..4) {
                    0 | 1 => {
                        let len = rng.random_range(1..200);
                        b.on_sent(SentSegment {
                            xmit_time: now,
                            ..seg(next, len, 0)
                        });
                        next += len;
                    }
                    2 if !b.is_empty() => {
                        let idx = rng.random_range(0..b.len());
                        b.mark_lost(idx);
                        b.on_retransmit(idx, now, 0);
                    }
                    _ if !b.is_empty() => {
                        let idx = rng.random_range(0..b.len());
                        let s = b.segs[idx];
                        let mut delivered = Vec::new();
                        b.sack(s.start, s.end, |d| delivered.push(*d));
                        for d in &delivered {
                            rack.on_delivered(d, now, false, None);
                        }
                    }
                    _ => {}
                }
            }
            now += Duration::from_millis(rng.random_range(0..5));
            let reo = Duration::from_millis(rng.random_range(0..4));
            let mut reference = Scoreboard {
                segs: b.segs.clone(),
                ..b
            };
            let mut want = Vec::new();
            let want_timeout = detect_losses_full_walk(&mut reference, &rack, reo, now, &mut want);
            let mut got = Vec::new();
            let got_timeout = b.detect_losses(&rack, reo, now, |s| got.push(s.start));
            assert_eq!((got, got_timeout), (want, want_timeout));
            assert_eq!(b.in_flight(), reference.in_flight());
        }
    }
}
