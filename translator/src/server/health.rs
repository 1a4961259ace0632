//! One backend's health: the active-check state (HAProxy's `rise`/`fall`) and passive
//! outlier ejection (Envoy's consecutive connect failures). Pure: time is an argument.
//!
//! - **Active checks** move a backend down after `unhealthy_threshold` consecutive failed
//!   checks and back up after `healthy_threshold` consecutive successes. A new backend starts
//!   up, so a fresh pool serves at once (the first checks correct it within
//!   `interval × unhealthy_threshold`).
//! - **Ejection**: `consecutive_failures` failed connects in a row (real traffic) eject the
//!   backend for `ejection_time × n`, where `n` counts its ejections in a row: a backend that
//!   fails again right after coming back stays out longer, up to [`MAX_EJECTION`] (Envoy's
//!   `max_ejection_time` default) or the base time if that is longer. A successful connect
//!   after a clean period of one base time resets `n`; a passing active check ends an
//!   ejection at once (the check is the same TCP connect that failed).
//! - The pool decides whether an ejection is allowed (`max_ejected_percent`) and falls back
//!   to every backend when none is available (panic mode); see `pool.rs`.

use core::time::Duration;

use tokio::time::Instant;

use crate::config::model::{HealthCheck, Outlier};

/// Longest ejection, whatever the multiplier (unless `ejection_time` itself is longer).
pub(crate) const MAX_EJECTION: Duration = Duration::from_secs(300);

/// A change of the active-check state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Healthy → unhealthy.
    Down,
    /// Unhealthy → healthy.
    Up,
}

/// One backend's health.
#[derive(Clone, Debug)]
pub(crate) struct Health {
    /// What the active checks say (true without checks).
    up: bool,
    check_successes: u32,
    check_failures: u32,
    connect_failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections in a row (the multiplier of the next one).
    ejections: u32,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            up: true,
            check_successes: 0,
            check_failures: 0,
            connect_failures: 0,
            ejected_until: None,
            ejections: 0,
        }
    }
}

impl Health {
    /// Whether the active checks consider it up.
    #[cfg(test)]
    pub(crate) fn is_up(&self) -> bool {
        self.up
    }

    /// Whether it is ejected at `now`.
    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|u| now < u)
    }

    /// Whether new connections may go to it at `now`.
    pub(crate) fn is_available(&self, now: Instant) -> bool {
        self.up && !self.is_ejected(now)
    }

    /// Records an active check's result.
    pub(crate) fn on_check(&mut self, ok: bool, hc: &HealthCheck) -> Option<Transition> {
        if ok {
            self.check_failures = 0;
            self.check_successes = self.check_successes.saturating_add(1);
            // The check proved the backend accepts connections: end an ejection.
            self.ejected_until = None;
            self.connect_failures = 0;
            if !self.up && self.check_successes >= hc.healthy_threshold.max(1) {
                self.up = true;
                return Some(Transition::Up);
            }
        } else {
            self.check_successes = 0;
            self.check_failures = self.check_failures.saturating_add(1);
            if self.up && self.check_failures >= hc.unhealthy_threshold.max(1) {
                self.up = false;
                return Some(Transition::Down);
            }
        }
        None
    }

    /// Records a successful connect at `now`.
    pub(crate) fn on_connect_success(&mut self, now: Instant, outlier: &Outlier) {
        self.connect_failures = 0;
        let clean_since = self
            .ejected_until
            .and_then(|u| u.checked_add(outlier.ejection_time.0));
        if clean_since.is_none_or(|t| now >= t) {
            self.ejections = 0;
        }
    }

    /// Records a failed connect at `now`; ejects when the threshold is reached and the pool
    /// allows it (`may_eject`). Returns whether it was ejected.
    pub(crate) fn on_connect_failure(
        &mut self,
        now: Instant,
        outlier: &Outlier,
        may_eject: bool,
    ) -> bool {
        self.connect_failures = self.connect_failures.saturating_add(1);
        if outlier.consecutive_failures == 0
            || self.connect_failures < outlier.consecutive_failures
            || self.is_ejected(now)
            || !may_eject
        {
            return false;
        }
        self.ejections = self.ejections.saturating_add(1);
        self.connect_failures = 0;
        let base = outlier.ejection_time.0;
        let time = base
            .saturating_mul(self.ejections)
            .min(MAX_EJECTION.max(base));
        self.ejected_until = now.checked_add(time);
        true
    }

    /// Whether another failure would eject it (used by the pool before it checks its
    /// ejection budget).
    pub(crate) fn would_eject(&self, now: Instant, outlier: &Outlier) -> bool {
        outlier.consecutive_failures != 0
            && self.connect_failures.saturating_add(1) >= outlier.consecutive_failures
            && !self.is_ejected(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::HumanDuration;

    fn outlier(n: u32, secs: u64) -> Outlier {
        Outlier {
            consecutive_failures: n,
            ejection_time: HumanDuration::secs(secs),
            ..Outlier::default()
        }
    }

    #[test]
    fn rise_and_fall() {
        let hc = HealthCheck {
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            ..HealthCheck::default()
        };
        let mut h = Health::default();
        assert!(h.is_up());
        assert_eq!(h.on_check(false, &hc), None);
        assert_eq!(h.on_check(false, &hc), None);
        assert_eq!(
            h.on_check(true, &hc),
            None,
            "a success resets the fall count"
        );
        assert_eq!(h.on_check(false, &hc), None);
        assert_eq!(h.on_check(false, &hc), None);
        assert_eq!(h.on_check(false, &hc), Some(Transition::Down));
        assert!(!h.is_up());
        assert_eq!(h.on_check(false, &hc), None, "already down");
        assert_eq!(h.on_check(true, &hc), None);
        assert_eq!(h.on_check(true, &hc), Some(Transition::Up));
        assert!(h.is_up());
    }

    #[test]
    fn ejection_grows_then_resets() {
        let o = outlier(2, 10);
        let t0 = Instant::now();
        let mut h = Health::default();
        assert!(!h.on_connect_failure(t0, &o, true));
        assert!(h.would_eject(t0, &o));
        assert!(h.on_connect_failure(t0, &o, true));
        assert!(h.is_ejected(t0 + Duration::from_secs(9)));
        assert!(!h.is_ejected(t0 + Duration::from_secs(10)));
        // Fails again right after coming back: twice as long.
        let t1 = t0 + Duration::from_secs(10);
        h.on_connect_failure(t1, &o, true);
        assert!(h.on_connect_failure(t1, &o, true));
        assert!(h.is_ejected(t1 + Duration::from_secs(19)));
        assert!(!h.is_ejected(t1 + Duration::from_secs(20)));
        // A success soon after the ejection keeps the multiplier ...
        let t2 = t1 + Duration::from_secs(21);
        h.on_connect_success(t2, &o);
        h.on_connect_failure(t2, &o, true);
        assert!(h.on_connect_failure(t2, &o, true));
        assert!(
            h.is_ejected(t2 + Duration::from_secs(29)),
            "third ejection: 30 s"
        );
        // ... a success after a clean base period resets it.
        let t3 = t2 + Duration::from_secs(30 + 10);
        h.on_connect_success(t3, &o);
        h.on_connect_failure(t3, &o, true);
        assert!(h.on_connect_failure(t3, &o, true));
        assert!(!h.is_ejected(t3 + Duration::from_secs(10)), "back to 10 s");
    }

    #[test]
    fn ejection_is_capped_and_can_be_refused_or_off() {
        let o = outlier(1, 100);
        let mut t = Instant::now();
        let mut h = Health::default();
        for _ in 0..10 {
            assert!(h.on_connect_failure(t, &o, true));
            t += Duration::from_secs(1000);
        }
        let last = t - Duration::from_secs(1000);
        assert!(!h.is_ejected(last + MAX_EJECTION), "capped at 300 s");

        let mut h = Health::default();
        assert!(!h.on_connect_failure(t, &o, false), "the pool said no");
        assert!(h.is_available(t));
        let off = outlier(0, 10);
        for _ in 0..100 {
            assert!(!h.on_connect_failure(t, &off, true));
        }
    }

    #[test]
    fn passing_check_ends_an_ejection() {
        let o = outlier(1, 30);
        let t = Instant::now();
        let mut h = Health::default();
        assert!(h.on_connect_failure(t, &o, true));
        assert!(!h.is_available(t));
        h.on_check(true, &HealthCheck::default());
        assert!(h.is_available(t));
    }
}
