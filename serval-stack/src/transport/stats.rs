//! [`StreamStats`]: counters and gauges of one stream.

use core::time::Duration;

/// What a stream has done, for metrics and tests. Counters only grow; the RTT and window
/// fields are a snapshot taken by `Stream::stats`.
#[non_exhaustive]
#[derive(Default, Clone, Copy, Debug)]
pub struct StreamStats {
    /// Segments emitted (data, ACKs, probes, RST).
    pub segments_sent: u64,
    /// Segments handed to `handle_segment`.
    pub segments_received: u64,
    /// Byte strings `handle_bytes` could not parse as a segment.
    pub malformed_segments: u64,
    /// Payload bytes emitted, retransmissions included.
    pub bytes_sent: u64,
    /// Payload bytes emitted again.
    pub bytes_retransmitted: u64,
    /// Our payload bytes the peer acknowledged.
    pub bytes_acked: u64,
    /// Peer payload bytes accepted in order.
    pub bytes_received: u64,
    /// Segments retransmitted, any cause.
    pub retransmits: u64,
    /// Segments declared lost (RACK, duplicate ACKs, RTO).
    pub lost_segments: u64,
    /// Segments sent before a path change and then declared lost (no cwnd reduction).
    pub lost_before_path_change: u64,
    /// Retransmission timeouts.
    pub rto_timeouts: u64,
    /// Tail loss probes sent.
    pub tlp_probes: u64,
    /// D-SACKs received (RFC 2883): a retransmission that proved unnecessary — or a
    /// duplicate the network made, which a D-SACK cannot tell apart.
    pub spurious_retransmits: u64,
    /// Window reductions for loss (one per recovery episode) and timeouts.
    pub congestion_events: u64,
    /// Received segments whose data we already had.
    pub duplicate_segments: u64,
    /// Received segments held beyond a gap.
    pub out_of_order_segments: u64,
    /// Out-of-order segments dropped because the reassembly interval list was full.
    pub out_of_order_dropped: u64,
    /// Zero-window probes sent.
    pub window_probes: u64,
    /// Keepalive probes sent.
    pub keepalive_probes: u64,
    /// Challenge ACKs sent (RFC 5961).
    pub challenge_acks: u64,
    /// Received segments dropped: outside the window, failing PAWS, bad ACK, wrong state.
    pub dropped_segments: u64,
    /// `on_path_change` calls.
    pub path_changes: u64,
    /// Smoothed RTT (zero before the first sample).
    pub srtt: Duration,
    /// RTT variation.
    pub rttvar: Duration,
    /// Smallest RTT seen.
    pub min_rtt: Duration,
    /// Current retransmission timeout, backoff included.
    pub rto: Duration,
    /// Congestion window, bytes.
    pub cwnd: u64,
    /// Slow-start threshold, bytes.
    pub ssthresh: u64,
    /// Bytes in flight (sent, not acknowledged, not SACKed, not deemed lost).
    pub bytes_in_flight: u64,
    /// The peer's advertised window, bytes.
    pub send_window: u64,
}
