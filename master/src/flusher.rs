//! Group commit for the master store: one thread does every flush, and
//! callers that need durability wait for the first flush that *started*
//! after their request. Many concurrent writers (say, a hundred agents
//! acking one change) cost one or two flushes, not a hundred. The store's
//! writes commit without syncing; a flush is the backend's sync (for redb:
//! one empty commit with `Durability::Immediate`, see `store::redb`), which
//! makes every commit before it durable.
//!
//! Writes that need no waiter (heartbeat times, observed status) call
//! [`GroupFlusher::request`]; the flusher picks them up with the next flush,
//! at the latest after [`IDLE_FLUSH`]. While only such requests are
//! pending it gathers them for up to [`UNWAITED_DELAY`] (a waiter ends the
//! wait): redb's sync holds the store's one write slot while it fsyncs, so
//! back-to-back syncs during a burst of agent reports held every writer up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::sync::watch;

/// Requests without a waiter are flushed at most this late.
const IDLE_FLUSH: Duration = Duration::from_millis(500);
/// How long requests without a waiter are gathered before a flush.
const UNWAITED_DELAY: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Wake {
    /// A request since the flusher last looked.
    pending: bool,
    /// A caller waits (`flush`).
    waited: bool,
}

#[derive(Clone, Debug, Default)]
struct Progress {
    /// Every request numbered up to this is durable.
    done: u64,
    /// The newest failed flush: the highest request number it covered, and why.
    failed: Option<(u64, String)>,
}

struct Shared {
    /// Numbers handed to requests so far.
    requested: AtomicU64,
    wake: (Mutex<Wake>, Condvar),
    progress: watch::Sender<Progress>,
}

#[derive(Clone)]
pub struct GroupFlusher {
    shared: Arc<Shared>,
}

impl GroupFlusher {
    /// Starts the flusher thread; `flush` makes every write so far durable.
    /// The thread ends when the last `GroupFlusher` is dropped.
    pub fn start(name: &str, flush: impl Fn() -> Result<()> + Send + 'static) -> Result<GroupFlusher> {
        let shared = Arc::new(Shared {
            requested: AtomicU64::new(0),
            wake: (Mutex::new(Wake::default()), Condvar::new()),
            progress: watch::channel(Progress::default()).0,
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new().name(format!("{name}-flusher")).spawn(move || flush_loop(weak, flush))?;
        Ok(GroupFlusher { shared })
    }

    fn ticket(&self, waited: bool) -> u64 {
        let ticket = self.shared.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let (wake, cvar) = &self.shared.wake;
        let mut wake = wake.lock().unwrap_or_else(|e| e.into_inner());
        wake.pending = true;
        wake.waited |= waited;
        cvar.notify_one();
        ticket
    }

    /// Asks for a flush without waiting for it.
    pub fn request(&self) {
        self.ticket(false);
    }

    /// Returns once every write made before this call is durable.
    pub async fn flush(&self) -> Result<()> {
        let mut progress = self.shared.progress.subscribe();
        let ticket = self.ticket(true);
        loop {
            {
                let p = progress.borrow_and_update();
                if p.done >= ticket {
                    return Ok(());
                }
                if let Some((covered, why)) = &p.failed {
                    if *covered >= ticket {
                        return Err(anyhow!("flush the master store: {why}"));
                    }
                }
            }
            progress.changed().await.map_err(|_| anyhow!("the store flusher stopped"))?;
        }
    }
}

fn flush_loop(shared: Weak<Shared>, flush: impl Fn() -> Result<()>) {
    let mut flushed = 0u64;
    loop {
        let Some(s) = shared.upgrade() else { return };
        {
            let (wake, cvar) = &s.wake;
            let mut w = wake.lock().unwrap_or_else(|e| e.into_inner());
            if !w.pending {
                w = cvar.wait_timeout(w, IDLE_FLUSH).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
            }
            // Only requests nobody waits for: gather more, unless a waiter comes.
            let until = std::time::Instant::now() + UNWAITED_DELAY;
            while w.pending && !w.waited {
                let now = std::time::Instant::now();
                if now >= until {
                    break;
                }
                w = cvar.wait_timeout(w, until - now).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
            }
            w.pending = false;
            w.waited = false;
        }
        // Everything requested before this point is covered by this flush.
        let target = s.requested.load(Ordering::SeqCst);
        if target == flushed {
            continue;
        }
        match flush() {
            Ok(()) => {
                flushed = target;
                s.progress.send_modify(|p| p.done = target);
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "flushing the master store failed; writes are not durable yet");
                s.progress.send_modify(|p| p.failed = Some((target, format!("{e:#}"))));
                // Do not spin on a failing disk.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_share_flushes() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let counter = flushes.clone();
        let flusher = GroupFlusher::start("test", move || {
            std::thread::sleep(Duration::from_millis(20));
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        let waiters: Vec<_> = (0..100).map(|_| {
            let f = flusher.clone();
            tokio::spawn(async move { f.flush().await })
        }).collect();
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        let n = flushes.load(Ordering::SeqCst);
        assert!((1..=10).contains(&n), "100 callers took {n} flushes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_nobody_waits_for_are_gathered_and_a_waiter_is_not_held_up() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let counter = flushes.clone();
        let flusher = GroupFlusher::start("test", move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        // 50 requests over about 50 ms: gathered into one or two flushes.
        for _ in 0..50 {
            flusher.request();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(UNWAITED_DELAY * 3).await;
        let n = flushes.load(Ordering::SeqCst);
        assert!((1..=2).contains(&n), "50 requests took {n} flushes");
        // A request, then a waiter: the waiter does not wait out the delay.
        flusher.request();
        let started = std::time::Instant::now();
        flusher.flush().await.unwrap();
        assert!(started.elapsed() < UNWAITED_DELAY / 2, "a waiter waited {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_failed_flush_fails_its_waiters_and_a_later_one_succeeds() {
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let f2 = fail.clone();
        let flusher = GroupFlusher::start("test", move || {
            if f2.load(Ordering::SeqCst) {
                Err(anyhow!("No space left on device"))
            } else {
                Ok(())
            }
        })
        .unwrap();
        let err = flusher.flush().await.unwrap_err();
        assert!(err.to_string().contains("No space left"), "{err}");
        fail.store(false, Ordering::SeqCst);
        flusher.flush().await.unwrap();
    }
}
