//! A primary's lease, counted from the moment it *sent* the heartbeat that the database answered,
//! on the monotonic clock. The database counts its own view of the same lease from the moment it
//! *received* that heartbeat, plus a margin, so the primary's lease always ends first.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    until: Option<Instant>,
}

impl Lease {
    /// A reply to the heartbeat sent at `sent_at` granted `lease`.
    pub fn renew(&mut self, sent_at: Instant, lease: Duration) {
        let until = sent_at + lease;
        self.until = Some(self.until.map_or(until, |old| old.max(until)));
    }

    pub fn holds(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// How long the lease still holds.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_runs_from_the_send_time() {
        let sent = Instant::now();
        let mut lease = Lease::default();
        assert!(!lease.holds(sent), "no lease before any reply");
        lease.renew(sent, Duration::from_secs(5));
        assert!(lease.holds(sent + Duration::from_millis(4999)));
        assert!(!lease.holds(sent + Duration::from_secs(5)));
        assert_eq!(
            lease.remaining(sent + Duration::from_secs(3)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn a_late_reply_to_an_old_heartbeat_never_shortens_the_lease() {
        let t0 = Instant::now();
        let mut lease = Lease::default();
        lease.renew(t0 + Duration::from_secs(1), Duration::from_secs(5));
        lease.renew(t0, Duration::from_secs(5));
        assert!(lease.holds(t0 + Duration::from_millis(5500)));
    }
}
