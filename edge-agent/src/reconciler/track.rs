//! Per-container bookkeeping kept in memory between passes: restarts and
//! their back-off, image pulls, and the state of an update (when the new
//! version started, whether it failed). Keyed by spec name; starts afresh
//! with a new spec.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// Longest restart delay.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A container that ran this long is healthy again: back-off starts over.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// A started container counts as running once it has run this long, so a
/// command that dies at once is reported as exited, never as running. When
/// the engine took longer than this to start it, the wait is as long as the
/// start took: on a loaded node "at once" takes longer too, and a 150 ms
/// wait after a 1 s start reported `sh -c 'exit 3'` as running.
pub const SETTLE: Duration = Duration::from_millis(150);
/// After an update the previous version is kept (stopped, or running when
/// both fit side by side) this long, and brought back if the new one dies.
pub const ROLLBACK_WINDOW: Duration = Duration::from_secs(10);
/// Consecutive quick exits after which a container is in a crash loop.
pub const CRASH_LOOP_EXITS: u32 = 3;
/// A version that could not start is tried again after this, doubling.
const FAILED_RETRY_FIRST: Duration = Duration::from_secs(5);
const FAILED_RETRY_MAX: Duration = Duration::from_secs(300);

/// State of the image pull for the current spec.
pub enum Pull {
    /// Yields the reason on failure.
    Running(JoinHandle<Result<(), String>>),
    Failed { at: Instant, error: String },
}

/// The desired version could not run; the previous one (if any) serves.
pub struct Failed {
    pub reason: String,
    pub retry_at: Instant,
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
    /// How long this run must last to count as running (see [`SETTLE`]).
    settle: Duration,
    pub pull: Option<Pull>,
    /// Last reported error, to log only changes.
    pub last_error: Option<String>,
    /// When this version was started while an older one still existed.
    pub replaced_at: Option<Instant>,
    pub failure: Option<Failed>,
    failures: u32,
}

/// Delay before the restart after `attempt` earlier ones: at once, then
/// 1 s, 2 s, 4 s … 60 s. The first restart is immediate so a killed
/// container is back in well under a second.
pub fn backoff(attempt: u32) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs(1).saturating_mul(1u32 << (attempt - 1).min(16)).min(BACKOFF_MAX)
}

impl Track {
    pub fn new(spec_hash: String) -> Self {
        Track {
            spec_hash,
            restarts: 0,
            attempt: 0,
            retry_at: None,
            running_since: None,
            settle: SETTLE,
            pull: None,
            last_error: None,
            replaced_at: None,
            failure: None,
            failures: 0,
        }
    }

    /// The container is running now. Returns whether it has run long
    /// enough (its settle time, see [`SETTLE`]) to be reported as running.
    pub fn running(&mut self, now: Instant) -> bool {
        self.retry_at = None;
        let since = *self.running_since.get_or_insert(now);
        let ran = now.saturating_duration_since(since);
        if ran >= HEALTHY_AFTER {
            self.attempt = 0;
        }
        ran >= self.settle
    }

    /// A start call ran from `began` to `done`: the run starts at `done`
    /// and must last [`SETTLE`] or as long as the call took, whichever is longer.
    fn begin_run(&mut self, began: Instant, done: Instant) {
        self.retry_at = None;
        self.running_since = Some(done);
        self.settle = SETTLE.max(done.saturating_duration_since(began));
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

    /// Exits in a row without a healthy run in between.
    pub fn crash_looping(&self) -> bool {
        self.attempt >= CRASH_LOOP_EXITS
    }

    /// Time until the next start is allowed, for messages.
    pub fn wait_left(&self, now: Instant) -> Duration {
        self.retry_at.map(|at| at.saturating_duration_since(now)).unwrap_or_default()
    }

    /// A start was attempted from `began` to `done`; `counted` when it is
    /// a restart after an exit.
    pub fn started(&mut self, began: Instant, done: Instant, ok: bool, counted: bool) {
        self.attempt = self.attempt.saturating_add(1);
        if ok {
            if counted {
                self.restarts = self.restarts.saturating_add(1);
            }
            self.begin_run(began, done);
        } else {
            self.retry_at = Some(done + backoff(self.attempt));
        }
    }

    /// A fresh container was created and started, from `began` to `done`,
    /// for the first time (not a restart).
    pub fn created(&mut self, began: Instant, done: Instant) {
        self.begin_run(began, done);
    }

    /// This version cannot run; try again later (with back-off).
    pub fn fail(&mut self, now: Instant, reason: String) {
        let wait = FAILED_RETRY_FIRST.saturating_mul(1u32 << self.failures.min(10)).min(FAILED_RETRY_MAX);
        self.failures = self.failures.saturating_add(1);
        self.failure = Some(Failed { reason, retry_at: now + wait });
        self.replaced_at = None;
        self.running_since = None;
    }

    /// Why this version does not run, while it is not yet time to retry.
    pub fn failure_active(&self, now: Instant) -> Option<&str> {
        self.failure.as_ref().filter(|f| now < f.retry_at).map(|f| f.reason.as_str())
    }

    pub fn in_rollback_window(&self, now: Instant, window: Duration) -> bool {
        self.replaced_at.is_some_and(|at| now.saturating_duration_since(at) < window)
    }

    /// When the next pass has something to do for this container.
    pub fn wake_at(&self, now: Instant, window: Duration) -> Option<Instant> {
        // Only what is still ahead: a moment already past was handled by
        // the pass that just ran, and waking for it again would spin.
        [
            self.retry_at,
            self.failure.as_ref().map(|f| f.retry_at),
            self.replaced_at.map(|at| at + window),
            self.running_since.map(|at| at + self.settle),
        ]
        .into_iter()
        .flatten()
        .filter(|at| *at > now)
        .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_at_zero_doubles_and_caps() {
        let secs: Vec<u64> = (0..9).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [0, 1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn restarts_back_off_and_reset_after_a_healthy_run() {
        let t0 = Instant::now();
        let mut t = Track::new("h".into());
        t.created(t0, t0);
        assert!(!t.running(t0), "not settled yet");
        assert!(t.running(t0 + SETTLE));
        // Killed: restarted at once.
        assert!(t.down(t0 + SETTLE));
        t.started(t0 + SETTLE, t0 + SETTLE, true, true);
        assert_eq!(t.restarts, 1);
        // Dies again: 1 s.
        let t1 = t0 + Duration::from_secs(2);
        assert!(!t.down(t1));
        assert_eq!(t.wait_left(t1), Duration::from_secs(1));
        assert!(t.down(t1 + Duration::from_secs(1)));
        t.started(t1 + Duration::from_secs(1), t1 + Duration::from_secs(1), true, true);
        assert!(!t.crash_looping());
        // Runs for a minute, then dies: at once again.
        let t2 = t1 + Duration::from_secs(70);
        t.running(t2);
        assert!(t.down(t2));
        assert_eq!(t.restarts, 2);
    }

    #[test]
    fn a_settled_container_asks_for_no_wake_up() {
        let t0 = Instant::now();
        let mut t = Track::new("h".into());
        t.created(t0, t0);
        assert_eq!(t.wake_at(t0, ROLLBACK_WINDOW), Some(t0 + SETTLE), "wake when it has settled");
        let later = t0 + Duration::from_secs(30);
        assert!(t.running(later));
        assert_eq!(t.wake_at(later, ROLLBACK_WINDOW), None, "nothing is due: the periodic pass is enough");
        t.replaced_at = Some(later);
        assert_eq!(t.wake_at(later, ROLLBACK_WINDOW), Some(later + ROLLBACK_WINDOW));
    }

    #[test]
    fn a_slow_start_waits_as_long_as_it_took_before_counting_as_running() {
        let began = Instant::now();
        let done = began + Duration::from_secs(1);
        let mut t = Track::new("h".into());
        t.created(began, done);
        assert!(!t.running(done + SETTLE), "a 1 s start is not settled after 150 ms");
        assert_eq!(t.wake_at(done, ROLLBACK_WINDOW), Some(done + Duration::from_secs(1)));
        assert!(t.running(done + Duration::from_secs(1)));
        // A quick restart settles in the usual time again.
        assert!(t.down(done + Duration::from_secs(2)));
        let again = done + Duration::from_secs(2);
        t.started(again, again + Duration::from_millis(20), true, true);
        assert!(t.running(again + Duration::from_millis(20) + SETTLE));
    }

    #[test]
    fn quick_exits_make_a_crash_loop() {
        let mut now = Instant::now();
        let mut t = Track::new("h".into());
        t.created(now, now);
        for _ in 0..CRASH_LOOP_EXITS {
            assert!(!t.crash_looping());
            now += Duration::from_secs(1);
            while !t.down(now) {
                now += Duration::from_secs(1);
            }
            t.started(now, now, true, true);
        }
        assert!(t.crash_looping());
    }

    #[test]
    fn failures_retry_with_back_off_and_end_the_rollback_window() {
        let t0 = Instant::now();
        let mut t = Track::new("h".into());
        t.replaced_at = Some(t0);
        assert!(t.in_rollback_window(t0 + Duration::from_secs(1), ROLLBACK_WINDOW));
        assert!(!t.in_rollback_window(t0 + ROLLBACK_WINDOW, ROLLBACK_WINDOW));
        t.fail(t0, "image x is missing".into());
        assert!(!t.in_rollback_window(t0, ROLLBACK_WINDOW));
        assert_eq!(t.failure_active(t0 + Duration::from_secs(4)), Some("image x is missing"));
        assert_eq!(t.failure_active(t0 + Duration::from_secs(5)), None);
        t.fail(t0, "again".into());
        assert!(t.failure_active(t0 + Duration::from_secs(9)).is_some(), "second wait is longer");
    }
}
