//! Holds a session to the master to the agent's own `--master-timeout`.
//!
//! QUIC gives a connection up after its idle timeout or three probe
//! timeouts, whichever is longer, and the probe timeout grows with the
//! round-trip estimate. An agent that measured seconds of round trip while
//! the master was busy (a fan-out to 10,000 nodes) kept a dead session for
//! 40-56 s instead of 30. The connector checks the datagrams it received
//! and ends a session that heard nothing for the timeout itself.

use std::time::{Duration, Instant};

use fogmesh_common::tls::QuicTiming;

pub struct SilenceWatch {
    datagrams: u64,
    last_heard: Instant,
    limit: Duration,
}

impl SilenceWatch {
    pub fn new(timing: &QuicTiming, datagrams: u64, now: Instant) -> SilenceWatch {
        SilenceWatch { datagrams, last_heard: now, limit: timing.idle_timeout }
    }

    /// How often to look: a sixteenth of the limit, so a session ends at
    /// most 6.25 % past it.
    pub fn period(&self) -> Duration {
        (self.limit / 16).max(Duration::from_millis(100))
    }

    /// Given the connection's count of datagrams received so far: how long
    /// the master has been silent, once that reaches the limit.
    pub fn silent_for(&mut self, datagrams: u64, now: Instant) -> Option<Duration> {
        if datagrams != self.datagrams {
            self.datagrams = datagrams;
            self.last_heard = now;
            return None;
        }
        let silent = now.saturating_duration_since(self.last_heard);
        (silent >= self.limit).then_some(silent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_only_after_the_timeout_without_a_datagram() {
        let timing = QuicTiming::with_idle_timeout(Duration::from_secs(24));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut watch = SilenceWatch::new(&timing, 5, t0);
        assert_eq!(watch.period(), Duration::from_millis(1500));
        assert_eq!(watch.silent_for(5, at(23)), None, "under 24 s");
        assert_eq!(watch.silent_for(5, at(24)), Some(Duration::from_secs(24)));
        // Anything heard starts the count over.
        assert_eq!(watch.silent_for(6, at(25)), None);
        assert_eq!(watch.silent_for(6, at(48)), None);
        assert_eq!(watch.silent_for(6, at(49)), Some(Duration::from_secs(24)));
    }
}
