//! The driver's only contact with the OS clock and OS randomness.
//!
//! The protocol core takes `now` and a seed as arguments (`clippy.toml` denies the clock and
//! the thread RNG everywhere); this file is the one place that reads them, each behind a
//! narrow `#[allow]`.

use core::time::Duration;
use std::io;

use rand_core::{OsRng, TryRngCore};

use crate::time::Timestamp;

/// Maps the monotonic OS clock onto the core's [`Timestamp`]: microseconds since the moment
/// the endpoint was bound.
#[derive(Clone, Copy, Debug)]
pub(super) struct Clock {
    epoch: tokio::time::Instant,
}

impl Clock {
    /// A clock whose epoch is now.
    pub(super) fn start() -> Self {
        Self {
            epoch: instant_now(),
        }
    }

    /// The current time on the core's scale (monotonic, never decreasing).
    pub(super) fn now(&self) -> Timestamp {
        let us = instant_now()
            .saturating_duration_since(self.epoch)
            .as_micros();
        Timestamp::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
    }

    /// The tokio instant of a core timestamp (for `sleep_until`).
    pub(super) fn instant(&self, t: Timestamp) -> tokio::time::Instant {
        // Far-future deadlines saturate at about 30 years rather than overflow `Instant`.
        let cap = Duration::from_secs(1 << 30);
        let d = Duration::from_micros(t.as_micros()).min(cap);
        self.epoch + d
    }
}

/// The single clock read of the crate.
#[allow(clippy::disallowed_methods)] // driver/runtime.rs is the one place allowed to read the clock
fn instant_now() -> tokio::time::Instant {
    // tokio's clock is `std::time::Instant::now` underneath (and pausable in tests).
    tokio::time::Instant::now()
}

/// A 32-byte seed for the endpoint RNG from the OS (getrandom).
pub(super) fn os_seed() -> io::Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| io::Error::other(format!("OS randomness unavailable: {e}")))?;
    Ok(seed)
}
