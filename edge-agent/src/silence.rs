//! Notices a session the master has stopped answering, before the QUIC idle
//! timeout does.
//!
//! The agent pings every `keep_alive` and the master acks every ping, so two
//! periods without a single datagram from it mean the path is down or the
//! master no longer knows the session: it restarted and its stateless reset
//! never arrived (lost in a storm, or signed with a key it has lost). quinn
//! then asks again only on its probe back-off, which can run past the idle
//! timeout; the connector asks at once with a fresh handshake, which also
//! tells the two cases apart (a partition answers neither).

use std::time::{Duration, Instant};

use fogmesh_common::tls::QuicTiming;

pub struct SilenceWatch {
    datagrams: u64,
    last_heard: Instant,
    limit: Duration,
}

impl SilenceWatch {
    pub fn new(timing: &QuicTiming, datagrams: u64, now: Instant) -> SilenceWatch {
        SilenceWatch { datagrams, last_heard: now, limit: timing.keep_alive * 2 }
    }

    /// How often to look: a quarter of the limit.
    pub fn period(&self) -> Duration {
        self.limit / 4
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
    fn silent_only_after_two_keep_alives_without_a_datagram() {
        let timing = QuicTiming::with_idle_timeout(Duration::from_secs(24));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut watch = SilenceWatch::new(&timing, 5, t0);
        assert_eq!(watch.period(), Duration::from_secs(3));
        assert_eq!(watch.silent_for(5, at(11)), None, "under 2 x 6 s");
        assert_eq!(watch.silent_for(5, at(12)), Some(Duration::from_secs(12)));
        // Anything heard starts the count over.
        assert_eq!(watch.silent_for(6, at(13)), None);
        assert_eq!(watch.silent_for(6, at(24)), None);
        assert_eq!(watch.silent_for(6, at(25)), Some(Duration::from_secs(12)));
    }
}
