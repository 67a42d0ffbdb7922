//! Per-container bookkeeping kept in memory between passes: restart count,
//! back-off, and image pulls. Keyed by spec name; resets with a new spec.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// First restart delay; doubles per restart.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest restart delay.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A container that ran this long is healthy again: back-off starts over.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// State of the image pull for the current spec.
pub enum Pull {
    /// Yields the reason on failure.
    Running(JoinHandle<Result<(), String>>),
    Failed { at: Instant, error: String },
}

pub struct Track {
    /// Spec hash this bookkeeping belongs to.
    pub spec_hash: String,
    /// Restarts after an exit, reported in the status.
    pub restarts: u32,
    /// Restart attempts since the container was last healthy (back-off exponent).
    attempt: u32,
    /// When set, the container is down and may be (re)started from then on.
    retry_at: Option<Instant>,
    /// When the agent last saw or made the container run.
    running_since: Option<Instant>,
    pub pull: Option<Pull>,
    /// Last reported error, to log only changes.
    pub last_error: Option<String>,
}

/// Delay before the restart after `attempt` earlier ones: 1 s, 2 s, 4 s … 60 s.
pub fn backoff(attempt: u32) -> Duration {
    BACKOFF_START.saturating_mul(1u32 << attempt.min(16)).min(BACKOFF_MAX)
}

impl Track {
    pub fn new(spec_hash: String) -> Self {
        Track {
            spec_hash,
            restarts: 0,
            attempt: 0,
            retry_at: None,
            running_since: None,
            pull: None,
            last_error: None,
        }
    }

    /// The container is running now.
    pub fn running(&mut self, now: Instant) {
        self.retry_at = None;
        let since = *self.running_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= HEALTHY_AFTER {
            self.attempt = 0;
        }
    }

    /// The container is down; returns whether it may be started now.
    pub fn down(&mut self, now: Instant) -> bool {
        if let Some(since) = self.running_since.take() {
            if now.saturating_duration_since(since) >= HEALTHY_AFTER {
                self.attempt = 0;
            }
        }
        let at = *self.retry_at.get_or_insert_with(|| now + backoff(self.attempt));
        now >= at
    }

    /// Seconds until the next start is allowed, for messages.
    pub fn wait_left(&self, now: Instant) -> Duration {
        self.retry_at.map(|at| at.saturating_duration_since(now)).unwrap_or_default()
    }

    /// A start was attempted; `counted` when it is a restart after an exit.
    pub fn started(&mut self, now: Instant, ok: bool, counted: bool) {
        self.attempt = self.attempt.saturating_add(1);
        if ok {
            if counted {
                self.restarts = self.restarts.saturating_add(1);
            }
            self.retry_at = None;
            self.running_since = Some(now);
        } else {
            self.retry_at = Some(now + backoff(self.attempt));
        }
    }

    /// A fresh container was started for the first time (not a restart).
    pub fn created(&mut self, now: Instant, ok: bool) {
        if ok {
            self.retry_at = None;
            self.running_since = Some(now);
        } else {
            self.retry_at = Some(now + backoff(self.attempt));
            self.attempt = self.attempt.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let secs: Vec<u64> = (0..9).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn restarts_back_off_and_reset_after_a_healthy_run() {
        let t0 = Instant::now();
        let mut t = Track::new("h".into());
        t.created(t0, true);
        // Dies at once: first restart after 1 s.
        assert!(!t.down(t0));
        assert!(!t.down(t0 + Duration::from_millis(500)));
        assert!(t.down(t0 + Duration::from_secs(1)));
        t.started(t0 + Duration::from_secs(1), true, true);
        assert_eq!(t.restarts, 1);
        // Dies again: 2 s.
        let t1 = t0 + Duration::from_secs(2);
        assert!(!t.down(t1));
        assert_eq!(t.wait_left(t1), Duration::from_secs(2));
        assert!(t.down(t1 + Duration::from_secs(2)));
        t.started(t1 + Duration::from_secs(2), true, true);
        // Runs for a minute, then dies: back to 1 s.
        let t2 = t1 + Duration::from_secs(70);
        t.running(t2);
        assert!(!t.down(t2));
        assert_eq!(t.wait_left(t2), Duration::from_secs(1));
        assert_eq!(t.restarts, 2);
    }
}
