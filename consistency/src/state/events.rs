//! The event log inside the replicated state: what each applied command changed, with the time
//! and the cause its proposer noted ([`Note`]). Written by [`State::apply`](super::State::apply)
//! alone, so every replica holds the same entries under the same numbers; bounded at
//! [`MAX_EVENTS`], the oldest dropped first.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use vbs_wire::api::{Event, EventKind, EventPage, MAX_EVENTS};

/// What the proposer of a command says about it, for the event log: when (its wall clock) and
/// why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

impl Note {
    /// A note stamped with this machine's clock now.
    pub fn now(cause: impl Into<String>) -> Note {
        Note {
            at_ms: crate::io_history::unix_ms(),
            cause: Some(cause.into()),
        }
    }
}

/// The retained entries, oldest first, numbered without gaps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLog {
    entries: VecDeque<Event>,
}

impl EventLog {
    /// Rebuilds the log from stored entries (in any order).
    pub fn from_entries(mut entries: Vec<Event>) -> EventLog {
        entries.sort_by_key(|e| e.seq);
        EventLog {
            entries: entries.into(),
        }
    }

    /// Number of the last entry; 0 when none was ever written.
    pub fn last_seq(&self) -> u64 {
        self.entries.back().map_or(0, |e| e.seq)
    }

    pub fn oldest_seq(&self) -> u64 {
        self.entries.front().map_or(0, |e| e.seq)
    }

    pub fn entries(&self) -> impl DoubleEndedIterator<Item = &Event> + ExactSizeIterator {
        self.entries.iter()
    }

    pub fn get(&self, seq: u64) -> Option<&Event> {
        let index = seq.checked_sub(self.oldest_seq())?;
        self.entries.get(usize::try_from(index).ok()?)
    }

    /// Appends one entry per change under `note`, dropping the oldest past [`MAX_EVENTS`].
    /// Returns the numbers written and the numbers dropped, for the store to persist.
    pub fn record(&mut self, changes: Vec<EventKind>, note: Option<&Note>) -> (Vec<u64>, Vec<u64>) {
        let mut written = Vec::with_capacity(changes.len());
        for what in changes {
            let seq = self.last_seq() + 1;
            self.entries.push_back(Event {
                seq,
                at_ms: note.map_or(0, |n| n.at_ms),
                what,
                cause: note.and_then(|n| n.cause.clone()),
            });
            written.push(seq);
        }
        let mut dropped = Vec::new();
        while self.entries.len() > MAX_EVENTS {
            if let Some(old) = self.entries.pop_front() {
                dropped.push(old.seq);
            }
        }
        (written, dropped)
    }

    /// The entries after `after`, at most `limit` of them.
    pub fn page(&self, after: u64, limit: usize) -> EventPage {
        let oldest = self.oldest_seq();
        let skip = after.saturating_sub(oldest.saturating_sub(1));
        let events: Vec<Event> = self
            .entries
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .take(limit)
            .cloned()
            .collect();
        let next = events.last().map_or(after, |e| e.seq);
        // Entries after the cursor that were dropped before this read.
        let missed = if oldest > 0 && after + 1 < oldest {
            oldest - after - 1
        } else {
            0
        };
        EventPage {
            events,
            next,
            oldest,
            newest: self.last_seq(),
            missed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vbs_wire::types::NodeId;

    fn drain(n: u32) -> EventKind {
        EventKind::DrainStarted {
            node: NodeId(format!("n{n}")),
        }
    }

    #[test]
    fn entries_are_numbered_from_one_and_paged_after_a_cursor() {
        let mut log = EventLog::default();
        assert_eq!(log.page(0, 10).next, 0);
        let note = Note {
            at_ms: 5,
            cause: Some("test".into()),
        };
        let (written, dropped) = log.record((1..=5).map(drain).collect(), Some(&note));
        assert_eq!(written, vec![1, 2, 3, 4, 5]);
        assert!(dropped.is_empty());
        let page = log.page(0, 2);
        assert_eq!(
            page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!((page.next, page.oldest, page.missed), (2, 1, 0));
        let page = log.page(page.next, 10);
        assert_eq!(
            page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!(page.events[0].cause.as_deref(), Some("test"));
        let page = log.page(5, 10);
        assert!(page.events.is_empty());
        assert_eq!(page.next, 5, "an empty page keeps the cursor");
    }

    #[test]
    fn the_oldest_entries_are_dropped_and_a_late_cursor_learns_how_many_it_missed() {
        let mut log = EventLog::default();
        let (_, dropped) = log.record((0..MAX_EVENTS as u32 + 3).map(drain).collect(), None);
        assert_eq!(dropped, vec![1, 2, 3]);
        assert_eq!(log.oldest_seq(), 4);
        assert_eq!(log.get(4).map(|e| e.seq), Some(4));
        assert!(log.get(3).is_none());
        let page = log.page(1, 1);
        assert_eq!(page.events[0].seq, 4);
        assert_eq!(page.missed, 2, "entries 2 and 3 were dropped");
        let rebuilt = EventLog::from_entries(log.entries().rev().cloned().collect());
        assert_eq!(rebuilt, log);
    }
}
