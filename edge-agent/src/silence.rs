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
    received: u64,
    /// Datagrams sent when the last one was received.
    sent_then: u64,
    last_heard: Instant,
    limit: Duration,
}

/// A session the master has not answered for the limit.
#[derive(Debug, PartialEq, Eq)]
pub struct Silent {
    pub for_: Duration,
    /// Datagrams the agent sent meanwhile, all unanswered (none: it had
    /// nothing to send, or could not).
    pub unanswered: u64,
}

impl SilenceWatch {
    /// `received` and `sent`: the connection's datagram counts so far.
    pub fn new(timing: &QuicTiming, received: u64, sent: u64, now: Instant) -> SilenceWatch {
        SilenceWatch { received, sent_then: sent, last_heard: now, limit: timing.idle_timeout }
    }

    /// How often to look: a sixteenth of the limit, so a session ends at
    /// most 6.25 % past it.
    pub fn period(&self) -> Duration {
        (self.limit / 16).max(Duration::from_millis(100))
    }

    /// Given the connection's datagram counts so far: the silence, once it
    /// reaches the limit.
    pub fn silent(&mut self, received: u64, sent: u64, now: Instant) -> Option<Silent> {
        if received != self.received {
            self.received = received;
            self.sent_then = sent;
            self.last_heard = now;
            return None;
        }
        let silent = now.saturating_duration_since(self.last_heard);
        (silent >= self.limit).then(|| Silent { for_: silent, unanswered: sent.saturating_sub(self.sent_then) })
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
        let mut watch = SilenceWatch::new(&timing, 5, 10, t0);
        assert_eq!(watch.period(), Duration::from_millis(1500));
        assert_eq!(watch.silent(5, 12, at(23)), None, "under 24 s");
        assert_eq!(watch.silent(5, 13, at(24)), Some(Silent { for_: Duration::from_secs(24), unanswered: 3 }));
        // Anything heard starts the count over.
        assert_eq!(watch.silent(6, 14, at(25)), None);
        assert_eq!(watch.silent(6, 20, at(48)), None);
        assert_eq!(watch.silent(6, 20, at(49)), Some(Silent { for_: Duration::from_secs(24), unanswered: 6 }));
    }
}
