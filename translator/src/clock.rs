//! The translator's one reader of the wall clock.
//!
//! Everything else runs on tokio's monotonic clock. Two things need time that survives a
//! process restart: the router's state file (lease ages across the restart) and the first
//! registration sequence number (a restarted server translator must start above the numbers
//! routers remember from its previous run, or its registrations are refused as replays
//! until it resynchronises).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, by the wall clock.
#[allow(clippy::disallowed_methods)] // the one wall-clock read (see the module docs)
pub fn wall() -> SystemTime {
    SystemTime::now()
}

/// Microseconds since the Unix epoch (0 for a clock set before 1970): the first
/// registration sequence number, increasing across restarts unless the clock goes back.
pub fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
