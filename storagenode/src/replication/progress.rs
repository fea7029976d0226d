//! What a primary waits for before it acknowledges a write: its own durable append, and every
//! current secondary either acknowledging the records or being marked stale by a committed
//! notification. A secondary that cannot be reached is reported; if the report cannot be
//! committed, the write fails rather than being acknowledged with fewer copies.

use std::collections::BTreeSet;

use vbs_wire::types::{Generation, NodeId};

/// How one secondary answered the replicated records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// It holds them, durably.
    Acked,
    /// No answer, a broken connection, or a refusal that says the copy cannot take them: it must
    /// be marked stale before the write can be acknowledged.
    Failed(String),
    /// It knows a newer generation of the slice: this primary was deposed.
    Deposed(Generation),
    /// A current copy holds other records at these VBAs in this generation. Only this primary
    /// numbers the slice's records in its generation, so its own log lost records it had
    /// numbered (a torn or vanished tail) that the copy holds: the copy has more than the
    /// primary, and the primary must step down rather than mark it stale.
    Diverged(String),
}

/// The outcome of asking the database to mark a copy stale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Marked {
    /// Committed: the copy is stale and no longer counts.
    Stale,
    /// The database refused: this primary's generation is old.
    Deposed(Generation),
    /// The database could not be reached or did not commit.
    Failed(String),
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Wait,
    /// Report this secondary unresponsive and feed the outcome back with [`WriteProgress::marked`].
    MarkStale(NodeId),
    /// Everything needed is durable: acknowledge the write.
    Acknowledge,
    /// The write is not acknowledged.
    Fail(Failure),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The slice has a newer generation: the client must refresh its map.
    Deposed(Generation),
    /// The write may be on some copies but cannot be acknowledged; the client retries.
    Unavailable(String),
    /// The local append failed (a disk error).
    Local(String),
    /// A current copy holds records this primary lost ([`Reply::Diverged`]): the primary steps
    /// down, reporting its own copy not current, so that the slice fails over to a copy that has
    /// them.
    Diverged(String),
}

#[derive(Debug)]
pub struct WriteProgress {
    local: Option<Result<(), String>>,
    /// Current secondaries whose answer is still awaited (or whose marking is under way).
    waiting: BTreeSet<NodeId>,
    failure: Option<Failure>,
}

impl WriteProgress {
    /// A write replicated to the current secondaries `required`.
    pub fn new(required: impl IntoIterator<Item = NodeId>) -> WriteProgress {
        WriteProgress {
            local: None,
            waiting: required.into_iter().collect(),
            failure: None,
        }
    }

    pub fn local_done(&mut self, result: Result<(), String>) -> Step {
        if let Err(e) = &result {
            self.failure.get_or_insert(Failure::Local(e.clone()));
        }
        self.local = Some(result);
        self.next()
    }

    pub fn replied(&mut self, node: &NodeId, reply: Reply) -> Step {
        if !self.waiting.contains(node) {
            return self.next();
        }
        match reply {
            Reply::Acked => {
                self.waiting.remove(node);
                self.next()
            }
            Reply::Deposed(generation) => {
                self.waiting.remove(node);
                self.deposed(generation);
                self.next()
            }
            Reply::Diverged(reason) => {
                self.waiting.remove(node);
                // Stepping down matters more than any other failure, but a deposed primary has
                // stepped down already.
                if !matches!(self.failure, Some(Failure::Deposed(_))) {
                    self.failure = Some(Failure::Diverged(format!("copy {node}: {reason}")));
                }
                self.next()
            }
            Reply::Failed(_) if self.failure.is_some() => {
                self.waiting.remove(node);
                self.next()
            }
            Reply::Failed(_) => Step::MarkStale(node.clone()),
        }
    }

    pub fn marked(&mut self, node: &NodeId, marked: Marked) -> Step {
        self.waiting.remove(node);
        match marked {
            Marked::Stale => {}
            Marked::Deposed(generation) => self.deposed(generation),
            Marked::Failed(reason) => {
                self.failure.get_or_insert(Failure::Unavailable(format!(
                    "secondary {node} did not answer and could not be marked stale: {reason}"
                )));
            }
        }
        self.next()
    }

    /// This primary was deposed: that is what the write fails with, whatever else failed
    /// before, so that the client refreshes its map at once and the primary steps down.
    fn deposed(&mut self, generation: Generation) {
        if !matches!(self.failure, Some(Failure::Deposed(_))) {
            self.failure = Some(Failure::Deposed(generation));
        }
    }

    fn next(&self) -> Step {
        if !self.waiting.is_empty() || self.local.is_none() {
            return Step::Wait;
        }
        match &self.failure {
            Some(failure) => Step::Fail(failure.clone()),
            None => Step::Acknowledge,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str) -> NodeId {
        NodeId(name.into())
    }

    #[test]
    fn acknowledged_once_local_and_every_current_secondary_hold_it() {
        let mut p = WriteProgress::new([n("b"), n("c")]);
        assert_eq!(p.replied(&n("b"), Reply::Acked), Step::Wait);
        assert_eq!(p.local_done(Ok(())), Step::Wait);
        assert_eq!(p.replied(&n("c"), Reply::Acked), Step::Acknowledge);
    }

    #[test]
    fn an_unresponsive_secondary_is_marked_stale_before_the_ack() {
        let mut p = WriteProgress::new([n("b")]);
        assert_eq!(p.local_done(Ok(())), Step::Wait);
        assert_eq!(
            p.replied(&n("b"), Reply::Failed("timeout".into())),
            Step::MarkStale(n("b"))
        );
        assert_eq!(p.marked(&n("b"), Marked::Stale), Step::Acknowledge);
    }

    #[test]
    fn without_the_database_the_write_fails() {
        let mut p = WriteProgress::new([n("b")]);
        p.local_done(Ok(()));
        p.replied(&n("b"), Reply::Failed("timeout".into()));
        let step = p.marked(&n("b"), Marked::Failed("no manager answered".into()));
        assert!(
            matches!(step, Step::Fail(Failure::Unavailable(_))),
            "{step:?}"
        );
    }

    #[test]
    fn a_deposed_primary_never_acknowledges() {
        let mut p = WriteProgress::new([n("b"), n("c")]);
        p.local_done(Ok(()));
        p.replied(&n("b"), Reply::Deposed(Generation(5)));
        assert_eq!(
            p.replied(&n("c"), Reply::Acked),
            Step::Fail(Failure::Deposed(Generation(5)))
        );

        let mut p = WriteProgress::new([n("b")]);
        p.local_done(Ok(()));
        p.replied(&n("b"), Reply::Failed("timeout".into()));
        assert_eq!(
            p.marked(&n("b"), Marked::Deposed(Generation(4))),
            Step::Fail(Failure::Deposed(Generation(4)))
        );
    }

    #[test]
    fn a_local_failure_fails_the_write_even_if_copies_hold_it() {
        let mut p = WriteProgress::new([n("b")]);
        p.replied(&n("b"), Reply::Acked);
        assert_eq!(
            p.local_done(Err("EIO".into())),
            Step::Fail(Failure::Local("EIO".into()))
        );
    }

    #[test]
    fn with_no_current_secondary_the_local_append_is_enough() {
        let mut p = WriteProgress::new([]);
        assert_eq!(p.local_done(Ok(())), Step::Acknowledge);
    }

    #[test]
    fn a_current_copy_holding_more_makes_the_primary_step_down_instead_of_marking_it() {
        let mut p = WriteProgress::new([n("b"), n("c")]);
        assert_eq!(p.local_done(Ok(())), Step::Wait);
        assert_eq!(
            p.replied(&n("b"), Reply::Failed("timeout".into())),
            Step::MarkStale(n("b"))
        );
        assert_eq!(
            p.replied(
                &n("c"),
                Reply::Diverged("VBA 7 held with other content".into())
            ),
            Step::Wait,
            "b's marking is still under way"
        );
        assert_eq!(
            p.marked(&n("b"), Marked::Stale),
            Step::Fail(Failure::Diverged(
                "copy c: VBA 7 held with other content".into()
            ))
        );
    }

    #[test]
    fn deposed_wins_over_a_failure_seen_before_it() {
        let mut p = WriteProgress::new([n("b"), n("c")]);
        assert_eq!(p.local_done(Ok(())), Step::Wait);
        assert_eq!(
            p.replied(&n("b"), Reply::Failed("timeout".into())),
            Step::MarkStale(n("b"))
        );
        assert_eq!(
            p.marked(&n("b"), Marked::Failed("no quorum".into())),
            Step::Wait
        );
        assert_eq!(
            p.replied(&n("c"), Reply::Deposed(Generation(5))),
            Step::Fail(Failure::Deposed(Generation(5)))
        );
    }

    /// How one secondary's part of a write goes, in the property below.
    #[derive(Clone, Debug)]
    enum Fate {
        Acked,
        /// No answer, then the marking's outcome.
        Failed(MarkFate),
        Deposed,
        Diverged,
    }

    #[derive(Clone, Debug)]
    enum MarkFate {
        Stale,
        Deposed,
        Failed,
    }

    fn fate() -> impl proptest::strategy::Strategy<Value = Fate> {
        use proptest::prelude::*;
        prop_oneof![
            4 => Just(Fate::Acked),
            2 => Just(Fate::Failed(MarkFate::Stale)),
            1 => Just(Fate::Failed(MarkFate::Deposed)),
            1 => Just(Fate::Failed(MarkFate::Failed)),
            1 => Just(Fate::Deposed),
            1 => Just(Fate::Diverged),
        ]
    }

    proptest::proptest! {
        /// Any number of secondaries, each with any fate, their answers and the local append in
        /// any order: the write is acknowledged only once everything is settled and only if
        /// the local append held and every secondary acknowledged or was marked stale; it never
        /// waits once everything is settled; a deposed primary fails it as deposed, whatever
        /// else failed, and a diverged copy as diverged unless the primary was deposed.
        #[test]
        fn a_write_is_acknowledged_only_when_every_copy_is_settled(
            fates in proptest::collection::vec(fate(), 0..5),
            local_ok in proptest::prelude::any::<bool>(),
            order in proptest::collection::vec(proptest::prelude::any::<u16>(), 12),
        ) {
            let nodes: Vec<NodeId> = (0..fates.len()).map(|i| n(&format!("s{i}"))).collect();
            let mut progress = WriteProgress::new(nodes.clone());
            // The events: each secondary's reply (and its marking, right after a failure), and
            // the local append, interleaved by `order`.
            let mut pending: Vec<usize> = (0..=fates.len()).collect();
            let mut last = Step::Wait;
            let mut turn = 0;
            // A marking happens only while the write has not failed otherwise already.
            let mut marked_deposed = false;
            while !pending.is_empty() {
                let pick = order[turn % order.len()] as usize % pending.len();
                turn += 1;
                let event = pending.remove(pick);
                let step = if event == fates.len() {
                    progress.local_done(if local_ok { Ok(()) } else { Err("disk".into()) })
                } else {
                    let node = &nodes[event];
                    match &fates[event] {
                        Fate::Acked => progress.replied(node, Reply::Acked),
                        Fate::Deposed => progress.replied(node, Reply::Deposed(Generation(9))),
                        Fate::Diverged => progress.replied(node, Reply::Diverged("other".into())),
                        Fate::Failed(mark) => {
                            let step = progress.replied(node, Reply::Failed("timeout".into()));
                            if step == Step::MarkStale(node.clone()) {
                                marked_deposed |= matches!(mark, MarkFate::Deposed);
                                progress.marked(node, match mark {
                                    MarkFate::Stale => Marked::Stale,
                                    MarkFate::Deposed => Marked::Deposed(Generation(9)),
                                    MarkFate::Failed => Marked::Failed("no quorum".into()),
                                })
                            } else {
                                step
                            }
                        }
                    }
                };
                if !pending.is_empty() {
                    proptest::prop_assert!(
                        step == Step::Wait || matches!(step, Step::MarkStale(_)),
                        "{step:?} before every event came"
                    );
                }
                last = step;
            }
            let all_good = local_ok
                && fates.iter().all(|f| matches!(f, Fate::Acked | Fate::Failed(MarkFate::Stale)));
            let deposed = marked_deposed || fates.iter().any(|f| matches!(f, Fate::Deposed));
            let diverged = fates.iter().any(|f| matches!(f, Fate::Diverged));
            match last {
                Step::Acknowledge => proptest::prop_assert!(all_good),
                Step::Fail(failure) => {
                    proptest::prop_assert!(!all_good);
                    if diverged && !deposed {
                        proptest::prop_assert!(matches!(failure, Failure::Diverged(_)));
                    }
                    if deposed {
                        proptest::prop_assert!(matches!(failure, Failure::Deposed(_)));
                    }
                }
                step => proptest::prop_assert!(false, "{step:?} after every event"),
            }
        }
    }
}
