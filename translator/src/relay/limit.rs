//! Connection limits: one global bound for the process and an optional bound per listener
//! (or per server service), each a semaphore. A connection is admitted only when it gets a
//! permit from both; the [`Permit`] travels with the connection and gives both back when
//! dropped, whatever way the connection ends. A refused connection is counted by reason.
//!
//! Admission never waits: a full translator refuses at once (the caller closes the legacy
//! connection, or refuses the Serval flow) rather than queueing work it cannot serve.
//! Draining closes admission for good while admitted connections finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitRefusal {
    /// The listener's (or service's) own limit is reached.
    #[error("listener connection limit reached")]
    ListenerFull,
    /// The process-wide limit is reached.
    #[error("global connection limit reached")]
    GlobalFull,
    /// The translator is draining and admits nothing new.
    #[error("draining: not accepting new connections")]
    Draining,
}

impl LimitRefusal {
    /// A fixed label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::ListenerFull => "listener_full",
            Self::GlobalFull => "global_full",
            Self::Draining => "draining",
        }
    }
}

/// Counters of a [`Limiter`] or a [`Gate`].
#[non_exhaustive]
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitStats {
    /// Connections admitted since start.
    pub admitted: u64,
    /// Connections open now.
    pub active: u64,
    /// Refused: the listener's limit.
    pub refused_listener_full: u64,
    /// Refused: the global limit.
    pub refused_global_full: u64,
    /// Refused: draining.
    pub refused_draining: u64,
}

#[derive(Debug, Default)]
struct Counters {
    admitted: AtomicU64,
    refused_listener_full: AtomicU64,
    refused_global_full: AtomicU64,
    refused_draining: AtomicU64,
}

impl Counters {
    fn refuse(&self, why: LimitRefusal) {
        let c = match why {
            LimitRefusal::ListenerFull => &self.refused_listener_full,
            LimitRefusal::GlobalFull => &self.refused_global_full,
            LimitRefusal::Draining => &self.refused_draining,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self, active: u64) -> LimitStats {
        LimitStats {
            admitted: self.admitted.load(Ordering::Relaxed),
            active,
            refused_listener_full: self.refused_listener_full.load(Ordering::Relaxed),
            refused_global_full: self.refused_global_full.load(Ordering::Relaxed),
            refused_draining: self.refused_draining.load(Ordering::Relaxed),
        }
    }
}

fn active(sem: &Semaphore, max: u32) -> u64 {
    u64::from(max).saturating_sub(sem.available_permits() as u64)
}

/// The process-wide limit and the drain switch.
#[derive(Debug, Clone)]
pub struct Limiter {
    inner: Arc<LimiterInner>,
}

#[derive(Debug)]
struct LimiterInner {
    sem: Arc<Semaphore>,
    max: u32,
    draining: AtomicBool,
    counters: Counters,
}

/// One listener's (or service's) limit, created by [`Limiter::gate`].
#[derive(Debug, Clone)]
pub struct Gate {
    inner: Arc<GateInner>,
}

#[derive(Debug)]
struct GateInner {
    name: String,
    sem: Option<(Arc<Semaphore>, u32)>,
    counters: Counters,
}

/// Admission of one connection; dropping it frees its places.
#[derive(Debug)]
#[must_use = "the connection is only admitted while the permit is held"]
pub struct Permit {
    _global: OwnedSemaphorePermit,
    _local: Option<OwnedSemaphorePermit>,
}

impl Limiter {
    /// A limiter admitting at most `max_connections` at once (at least 1).
    pub fn new(max_connections: u32) -> Self {
        let max = max_connections.max(1);
        Self {
            inner: Arc::new(LimiterInner {
                sem: Arc::new(Semaphore::new(max as usize)),
                max,
                draining: AtomicBool::new(false),
                counters: Counters::default(),
            }),
        }
    }

    /// A gate named `name` with its own limit (`None`: only the global one).
    pub fn gate(&self, name: &str, max_connections: Option<u32>) -> Gate {
        Gate {
            inner: Arc::new(GateInner {
                name: name.to_owned(),
                sem: max_connections.map(|m| {
                    let m = m.max(1);
                    (Arc::new(Semaphore::new(m as usize)), m)
                }),
                counters: Counters::default(),
            }),
        }
    }

    /// Admits a connection through `gate`, or says why not (and counts it, on the gate and
    /// globally).
    pub fn try_admit(&self, gate: &Gate) -> Result<Permit, LimitRefusal> {
        let result = self.admit(gate);
        match result {
            Ok(_) => {
                self.inner.counters.admitted.fetch_add(1, Ordering::Relaxed);
                gate.inner.counters.admitted.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => {
                self.inner.counters.refuse(why);
                gate.inner.counters.refuse(why);
            }
        }
        result
    }

    fn admit(&self, gate: &Gate) -> Result<Permit, LimitRefusal> {
        if self.inner.draining.load(Ordering::Acquire) {
            return Err(LimitRefusal::Draining);
        }
        let local = match &gate.inner.sem {
            Some((sem, _)) => Some(sem.clone().try_acquire_owned().map_err(|e| match e {
                TryAcquireError::Closed => LimitRefusal::Draining,
                TryAcquireError::NoPermits => LimitRefusal::ListenerFull,
            })?),
            None => None,
        };
        // On failure the local permit is dropped here, freeing the listener's place.
        let global = self
            .inner
            .sem
            .clone()
            .try_acquire_owned()
            .map_err(|e| match e {
                TryAcquireError::Closed => LimitRefusal::Draining,
                TryAcquireError::NoPermits => LimitRefusal::GlobalFull,
            })?;
        Ok(Permit {
            _global: global,
            _local: local,
        })
    }

    /// Stops admitting connections for good (drain). Admitted ones are not affected.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::Release);
        self.inner.sem.close();
    }

    /// Whether [`drain`](Self::drain) was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Process-wide counters.
    pub fn stats(&self) -> LimitStats {
        self.inner
            .counters
            .snapshot(active(&self.inner.sem, self.inner.max))
    }
}

impl Gate {
    /// The gate's name (the listener or service).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// This gate's counters. `active` is only known for gates with their own limit (0
    /// otherwise).
    pub fn stats(&self) -> LimitStats {
        let active = self
            .inner
            .sem
            .as_ref()
            .map_or(0, |(sem, max)| active(sem, *max));
        self.inner.counters.snapshot(active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_limit_then_global_limit_then_release() {
        let limiter = Limiter::new(3);
        let web = limiter.gate("web", Some(2));
        let other = limiter.gate("other", None);

        let a = limiter.try_admit(&web).unwrap();
        let b = limiter.try_admit(&web).unwrap();
        assert_eq!(
            limiter.try_admit(&web).unwrap_err(),
            LimitRefusal::ListenerFull
        );
        let c = limiter.try_admit(&other).unwrap();
        assert_eq!(
            limiter.try_admit(&other).unwrap_err(),
            LimitRefusal::GlobalFull
        );
        assert_eq!(limiter.stats().active, 3);
        assert_eq!(web.stats().active, 2);

        drop(a);
        // The listener has room again, and so has the process.
        let d = limiter.try_admit(&web).unwrap();
        drop((b, c, d));
        assert_eq!(limiter.stats().active, 0);

        let s = limiter.stats();
        assert_eq!(s.admitted, 4);
        assert_eq!(s.refused_listener_full, 1);
        assert_eq!(s.refused_global_full, 1);
        assert_eq!(web.stats().refused_listener_full, 1);
        assert_eq!(other.stats().refused_global_full, 1);
        assert_eq!(web.name(), "web");
    }

    #[test]
    fn a_global_refusal_gives_the_listener_place_back() {
        let limiter = Limiter::new(1);
        let web = limiter.gate("web", Some(1));
        let other = limiter.gate("other", None);
        let held = limiter.try_admit(&other).unwrap();
        assert_eq!(
            limiter.try_admit(&web).unwrap_err(),
            LimitRefusal::GlobalFull
        );
        assert_eq!(web.stats().active, 0, "listener permit released");
        drop(held);
        let _p = limiter.try_admit(&web).unwrap();
    }

    #[test]
    fn draining_refuses_new_and_keeps_admitted() {
        let limiter = Limiter::new(10);
        let web = limiter.gate("web", Some(5));
        let p = limiter.try_admit(&web).unwrap();
        limiter.drain();
        assert!(limiter.is_draining());
        assert_eq!(limiter.try_admit(&web).unwrap_err(), LimitRefusal::Draining);
        assert_eq!(limiter.stats().active, 1);
        drop(p);
        assert_eq!(limiter.stats().refused_draining, 1);
        assert_eq!(LimitRefusal::Draining.label(), "draining");
    }
}
