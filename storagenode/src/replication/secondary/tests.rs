//! Each transition of the secondary's decisions, then random runs of a copy fed frames of
//! several primaries' generations, reordered, duplicated, dropped and delayed, with heartbeats,
//! restarts that lose unacknowledged records, and resyncs, against a model of the engine. The
//! invariants checked are DESIGN.md's: VBAs applied in order, nothing acknowledged dropped, an
//! acknowledgement only for a history the copy holds, and every copy caught up in the end.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::engine::meta::run_start;

fn g(n: u64) -> Generation {
    Generation(n)
}

fn v(n: u64) -> Vba {
    Vba(n)
}

fn secondary(assigned: u64, next: u64) -> View {
    View {
        assigned: Some((Role::Secondary, g(assigned))),
        announced: g(0),
        next_vba: v(next),
        resyncing: false,
    }
}

fn frame(first: u64, last: u64, generation: u64) -> Vec<(Vba, Generation)> {
    (first..=last).map(|n| (v(n), g(generation))).collect()
}

fn starts(runs: &[(u64, u64)]) -> Vec<GenerationStart> {
    runs.iter()
        .map(|&(generation, first)| GenerationStart {
            generation: g(generation),
            first_vba: v(first),
        })
        .collect()
}

#[test]
fn a_frame_must_be_consecutive_and_of_one_generation() {
    let view = secondary(3, 10);
    let gapped = [(v(10), g(3)), (v(12), g(3))];
    assert_eq!(
        on_frame(&view, g(3), v(0), gapped),
        FrameStep::Refuse(Refusal::NotConsecutive)
    );
    let repeated = [(v(10), g(3)), (v(10), g(3))];
    assert_eq!(
        on_frame(&view, g(3), v(0), repeated),
        FrameStep::Refuse(Refusal::NotConsecutive)
    );
    let mixed = [(v(10), g(3)), (v(11), g(2))];
    assert_eq!(
        on_frame(&view, g(3), v(0), mixed),
        FrameStep::Refuse(Refusal::MixedGenerations)
    );
}

#[test]
fn a_frame_before_any_heartbeat_named_the_unit_is_refused() {
    let view = View {
        assigned: None,
        announced: g(0),
        next_vba: v(1),
        resyncing: false,
    };
    assert_eq!(
        on_frame(&view, g(1), v(0), frame(1, 1, 1)),
        FrameStep::Refuse(Refusal::NotAssigned)
    );
}

#[test]
fn a_primary_refuses_frames_of_its_generation_or_older_and_takes_a_newer_ones() {
    let view = View {
        assigned: Some((Role::Primary, g(4))),
        ..secondary(4, 10)
    };
    for generation in [3, 4] {
        assert_eq!(
            on_frame(&view, g(generation), v(0), frame(10, 10, generation)),
            FrameStep::Refuse(Refusal::Primary { generation: g(4) })
        );
    }
    // Deposed without knowing it yet: the new primary's frame is taken.
    assert_eq!(
        on_frame(&view, g(5), v(0), frame(10, 10, 5)),
        FrameStep::Apply
    );
}

#[test]
fn frames_are_placed_by_their_first_vba_and_an_old_generations_are_refused() {
    let view = secondary(3, 10);
    assert_eq!(
        on_frame(&view, g(3), v(8), frame(10, 12, 3)),
        FrameStep::Apply
    );
    assert_eq!(
        on_frame(&view, g(3), v(8), frame(7, 9, 3)),
        FrameStep::Apply,
        "a retransmission"
    );
    assert_eq!(
        on_frame(&view, g(3), v(8), frame(13, 14, 3)),
        FrameStep::WaitForGap {
            after: v(9),
            until: v(12),
            wait: GapWait::Reorder
        }
    );
    assert_eq!(
        on_frame(&view, g(2), v(8), frame(10, 10, 2)),
        FrameStep::Refuse(Refusal::Stale { current: g(3) })
    );
    assert_eq!(
        on_frame(&view, g(4), v(8), frame(10, 10, 4)),
        FrameStep::Apply,
        "the copy learns a new generation from its primary before the database"
    );
}

#[test]
fn a_frame_of_a_primary_older_than_one_that_announced_itself_is_refused() {
    // The database still names generation 3; generation 4's primary announced itself.
    let view = View {
        announced: g(4),
        ..secondary(3, 10)
    };
    assert_eq!(
        on_frame(&view, g(3), v(8), frame(10, 10, 3)),
        FrameStep::Refuse(Refusal::Stale { current: g(4) })
    );
    assert_eq!(
        on_frame(&view, g(4), v(8), frame(10, 10, 4)),
        FrameStep::Apply
    );
}

#[test]
fn a_gap_waits_for_the_join_records_while_the_copy_resyncs() {
    let view = View {
        resyncing: true,
        ..secondary(3, 10)
    };
    assert_eq!(
        on_frame(&view, g(3), v(0), frame(20, 20, 3)),
        FrameStep::WaitForGap {
            after: v(9),
            until: v(19),
            wait: GapWait::Join
        }
    );
}

#[test]
fn an_empty_frame_starts_a_generation_after_what_its_primary_committed() {
    let view = secondary(3, 10);
    assert_eq!(
        on_frame(&view, g(4), v(7), []),
        FrameStep::StartGeneration {
            generation: g(4),
            start: v(7)
        }
    );
    assert_eq!(
        on_frame(&view, g(2), v(7), []),
        FrameStep::Refuse(Refusal::Stale { current: g(3) })
    );
}

#[test]
fn a_generation_start_drops_only_an_older_generations_tail_past_it() {
    assert_eq!(
        on_generation_start(g(3), v(9), g(4), v(7)),
        Some(Truncate {
            after: v(7),
            generation: g(4)
        })
    );
    assert_eq!(
        on_generation_start(g(3), v(7), g(4), v(7)),
        None,
        "nothing past the start"
    );
    assert_eq!(
        on_generation_start(g(4), v(9), g(4), v(7)),
        None,
        "the copy already holds the new generation's records: they are its primary's"
    );
}

#[test]
fn a_resend_asks_only_for_what_is_still_missing() {
    assert_eq!(resend_range(v(10), v(13)), Some((v(9), v(12))));
    assert_eq!(resend_range(v(12), v(13)), Some((v(11), v(12))));
    assert_eq!(
        resend_range(v(13), v(13)),
        None,
        "the earlier frame came meanwhile"
    );
}

#[test]
fn a_newer_generations_record_drops_an_old_tail_and_an_older_ones_is_refused() {
    assert_eq!(
        on_conflict(v(8), g(2), g(3)),
        Some(Truncate {
            after: v(7),
            generation: g(3)
        })
    );
    assert_eq!(on_conflict(v(8), g(3), g(2)), None);
}

#[test]
fn a_probe_steps_back_to_where_the_histories_agree_or_before_the_copys_run() {
    // The primary holds the copy's generation up to VBA 6.
    assert_eq!(
        on_histories_differ(v(9), v(6), v(4), v(2)),
        Probe::At { after: v(6) }
    );
    // It holds none of the copy's run from VBA 7: probe before the run.
    assert_eq!(
        on_histories_differ(v(9), v(0), v(7), v(2)),
        Probe::At { after: v(6) }
    );
    assert_eq!(
        on_histories_differ(v(9), v(3), v(7), v(2)),
        Probe::At { after: v(6) }
    );
    // Never past where the copy asked.
    assert_eq!(
        on_histories_differ(v(5), v(8), v(4), v(2)),
        Probe::At { after: v(5) }
    );
}

#[test]
fn histories_that_differ_below_the_stable_vba_diverged() {
    assert_eq!(
        on_histories_differ(v(9), v(0), v(7), v(8)),
        Probe::Diverged { stable: v(8) }
    );
    assert_eq!(
        on_histories_differ(v(9), v(0), v(7), v(6)),
        Probe::At { after: v(6) },
        "the stable VBA itself may be agreed on"
    );
}

#[test]
fn the_first_agreeing_pull_drops_a_tail_of_another_generation_or_probes_further() {
    let history = starts(&[(1, 1), (2, 5), (3, 8)]);
    assert_eq!(on_agreeing_pull(v(9), v(9), g(3), &history), Agreed::Keep);
    assert_eq!(
        on_agreeing_pull(v(6), v(9), g(4), &history),
        Agreed::Truncate(Truncate {
            after: v(6),
            generation: g(4)
        })
    );
    // The records right past VBA 4 are of generation 2 on both sides, the same primary's:
    // the histories may still part where the copy's generation 3 starts.
    assert_eq!(
        on_agreeing_pull(v(4), v(9), g(2), &history),
        Agreed::ProbeAt { after: v(7) }
    );
    assert_eq!(on_agreeing_pull(v(8), v(9), g(3), &history), Agreed::Keep);
}

/// The engine of one copy, as far as the decisions see it: each record's generation by VBA, the
/// generation history, and the stable VBA. Refuses what the engine refuses.
#[derive(Clone, Debug, Default)]
struct Model {
    records: Vec<Generation>,
    history: Vec<GenerationStart>,
    stable: Vba,
    /// The kinds of step the run took, to check the runs reach every one.
    reached: BTreeSet<&'static str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {
    Hole,
    Stale,
    Conflict { held: Generation },
    TruncateStable,
    Resurrects,
    Decided(Refusal),
    NotResent,
}

impl Model {
    fn last(&self) -> Vba {
        Vba(self.records.len() as u64)
    }

    fn next(&self) -> Vba {
        self.last().next()
    }

    fn generation(&self) -> Generation {
        self.history.last().map_or(g(0), |s| s.generation)
    }

    fn generation_at(&self, vba: Vba) -> Generation {
        generation_at(&self.history, vba).unwrap_or(g(0))
    }

    fn enter(&mut self, generation: Generation, vba: Vba) -> Result<(), Refused> {
        let current = self.generation();
        if generation < current {
            return Err(Refused::Stale);
        }
        if generation > current || self.history.is_empty() {
            self.history.push(GenerationStart {
                generation,
                first_vba: vba,
            });
        }
        Ok(())
    }

    /// `Unit::apply`.
    fn apply(&mut self, vba: Vba, generation: Generation) -> Result<(), Refused> {
        if vba > self.next() {
            return Err(Refused::Hole);
        }
        if vba == self.next() {
            self.enter(generation, vba)?;
            self.records.push(generation);
            return Ok(());
        }
        let held = self.generation_at(vba);
        if held != generation {
            return Err(Refused::Conflict { held });
        }
        Ok(())
    }

    /// `Unit::begin_ingest` (this model's primaries keep every record, so none skip).
    fn ingest(&mut self, vba: Vba, generation: Generation) -> Result<(), Refused> {
        assert_eq!(vba, self.next(), "catch-up records follow the copy's end");
        self.enter(generation, vba)?;
        self.records.push(generation);
        Ok(())
    }

    /// `Unit::truncate_after`.
    fn truncate(&mut self, t: Truncate) -> Result<(), Refused> {
        assert!(
            t.after < self.last(),
            "a truncation after VBA {} of a copy ending at {}",
            t.after,
            self.last()
        );
        if t.after < self.stable {
            return Err(Refused::TruncateStable);
        }
        if t.generation < self.generation_at(t.after) {
            return Err(Refused::Stale);
        }
        let in_force_after = generation_at(&self.history, t.after.next());
        let resurrected = in_force_after == Some(t.generation)
            || self
                .history
                .iter()
                .any(|s| s.generation == t.generation && s.first_vba > t.after);
        if resurrected {
            return Err(Refused::Resurrects);
        }
        self.history.retain(|s| s.first_vba <= t.after);
        self.history.push(GenerationStart {
            generation: t.generation,
            first_vba: t.after.next(),
        });
        self.records.truncate(t.after.0 as usize);
        Ok(())
    }

    /// `Unit::set_stable_vba`.
    fn set_stable(&mut self, committed: Vba) {
        self.stable = self.stable.max(committed.min(self.last()));
    }

    /// `replica::apply_in_order`, with the conflict decided by [`on_conflict`].
    fn apply_in_order(&mut self, records: &[(Vba, Generation)]) -> Result<(), Refused> {
        for &(vba, generation) in records {
            match self.apply(vba, generation) {
                Err(Refused::Conflict { held }) => {
                    let truncate =
                        on_conflict(vba, held, generation).ok_or(Refused::Conflict { held })?;
                    self.truncate(truncate)?;
                    self.reached.insert("a newer record drops a tail");
                    self.apply(vba, generation)?;
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// `resync::resync` pulling from a primary whose log is `primary`, with the decisions
    /// [`on_histories_differ`] and [`on_agreeing_pull`]. `Err` with the stable VBA when the
    /// histories diverged below it.
    fn resync(&mut self, primary: &[Generation], slice: Generation) -> Result<(), Vba> {
        let mut after = self.last();
        let mut after_generation = self.generation_at(after);
        let mut probing = false;
        for _ in 0..64 {
            let records = match pull(primary, after, after_generation) {
                Err(agreed) => {
                    let run = run_start(&self.history, after);
                    match on_histories_differ(after, agreed, run, self.stable) {
                        Probe::At { after: probe } => {
                            self.reached.insert("a resync probes");
                            after = probe;
                            after_generation = self.generation_at(probe);
                            probing = true;
                            continue;
                        }
                        Probe::Diverged { stable } => return Err(stable),
                    }
                }
                Ok(records) => records,
            };
            if std::mem::take(&mut probing) && after < self.last() {
                let replacing = records.first().map_or(slice, |r| r.1);
                match on_agreeing_pull(after, self.last(), replacing, &self.history) {
                    Agreed::Keep => {}
                    Agreed::Truncate(truncate) => {
                        self.truncate(truncate)
                            .unwrap_or_else(|e| panic!("the resync's {truncate:?}: {e:?}"));
                        self.reached.insert("a resync drops a tail");
                    }
                    Agreed::ProbeAt { after: probe } => {
                        self.reached.insert("a resync probes further on");
                        after = probe;
                        after_generation = self.generation_at(probe);
                        probing = true;
                        continue;
                    }
                }
            }
            for (vba, generation) in records {
                if vba >= self.next() {
                    self.ingest(vba, generation)
                        .unwrap_or_else(|e| panic!("ingesting VBA {vba}: {e:?}"));
                }
            }
            return Ok(());
        }
        panic!("a resync probed 64 times without agreeing");
    }
}

/// A primary's answer to a pull after `after` (`catchup::serve`): the records after it, or where
/// the histories agree at most when they differ at `after`.
fn pull(
    primary: &[Generation],
    after: Vba,
    after_generation: Generation,
) -> Result<Vec<(Vba, Generation)>, Vba> {
    let at = |vba: Vba| match vba.0 {
        0 => g(0),
        n => primary[n as usize - 1],
    };
    let checked = after_generation != g(0);
    if after.0 > primary.len() as u64 || (checked && at(after) != after_generation) {
        let last_of_generation = primary
            .iter()
            .rposition(|&r| r == after_generation)
            .map_or(Vba::ZERO, |i| Vba(i as u64 + 1));
        return Err(last_of_generation.min(after));
    }
    Ok(primary
        .iter()
        .enumerate()
        .skip(after.0 as usize)
        .map(|(i, &r)| (Vba(i as u64 + 1), r))
        .collect())
}

/// The primaries of a slice: generation `k + 1`'s history is `histories[k]`, of which it had
/// `acked[k]` VBAs acknowledged; it started after `starts[k]`, the part of the previous
/// primary's history it held.
struct Primaries {
    histories: Vec<Vec<Generation>>,
    acked: Vec<u64>,
    starts: Vec<u64>,
}

impl Primaries {
    fn random(rng: &mut StdRng) -> Self {
        let count = rng.random_range(1..=4u64);
        let (mut histories, mut acked, mut starts) = (Vec::new(), Vec::new(), Vec::new());
        let mut previous: Vec<Generation> = Vec::new();
        let mut previous_acked = 0;
        for generation in 1..=count {
            // The new primary holds at least what was acknowledged, and maybe some of the old
            // primary's unacknowledged tail.
            let start = rng.random_range(previous_acked..=previous.len() as u64);
            let mut history = previous[..start as usize].to_vec();
            history.extend(std::iter::repeat_n(g(generation), rng.random_range(0..=8)));
            let ack = rng.random_range(previous_acked.max(start)..=history.len() as u64);
            starts.push(start);
            acked.push(ack);
            previous = history.clone();
            previous_acked = ack;
            histories.push(history);
        }
        Primaries {
            histories,
            acked,
            starts,
        }
    }

    fn history(&self, generation: Generation) -> &[Generation] {
        &self.histories[generation.0 as usize - 1]
    }

    fn last(&self) -> &[Generation] {
        self.histories.last().expect("one primary at least")
    }
}

#[derive(Clone, Debug)]
enum Event {
    /// A primary's frame. A `late` one was sent at its `Sent` event, and held up in the network
    /// past its primary's later frames, or past the primary itself.
    Frame {
        generation: Generation,
        committed: Vba,
        records: Vec<(Vba, Generation)>,
        late: Option<usize>,
    },
    /// A primary sends the frame `late` comes with, if the copy is one it sends to.
    Sent {
        late: usize,
        generation: Generation,
        announce: bool,
    },
    /// The primary gave up on a frame the copy did not answer in time, and reported the copy:
    /// the database marks it stale, and no primary sends it frames until it resyncs.
    Unanswered,
    /// A heartbeat reply names the slice's generation.
    Heartbeat(Generation),
    /// The node restarts: it forgets its assignment, and its log may lose records it never
    /// acknowledged.
    Restart { torn: bool },
    /// A stale copy resyncs from the primary of this generation, and is current again.
    Resync(Generation),
}

/// What each primary sends this copy, in the order the copy gets it.
fn events(primaries: &Primaries, rng: &mut StdRng) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    let next_id = &mut 0;
    // Held-up frames not arrived yet, each with the first position it may arrive at.
    let mut pending: Vec<(Event, usize)> = Vec::new();
    for (k, history) in primaries.histories.iter().enumerate() {
        let generation = g(k as u64 + 1);
        let start = primaries.starts[k];
        // Held-up frames, each with the position right after its `Sent`.
        let mut delayed: Vec<(Event, usize)> = Vec::new();
        if rng.random_bool(0.3) {
            events.push(Event::Heartbeat(generation));
        }
        let frame =
            |committed: Vba, records: Vec<(Vba, Generation)>, late: Option<usize>| Event::Frame {
                generation,
                committed,
                records,
                late,
            };
        // The announcement, then the records in frames of one to three, each with what was
        // acknowledged when it left.
        let mut frames = vec![(Vba(start), Vec::new())];
        let mut first = start + 1;
        while first <= history.len() as u64 {
            let last = (first + rng.random_range(0..3)).min(history.len() as u64);
            let committed = rng.random_range(0..=primaries.acked[k].min(first - 1));
            let records = (first..=last).map(|n| (Vba(n), generation)).collect();
            frames.push((Vba(committed), records));
            first = last + 1;
        }
        // Pipelined frames overtake each other; the announcement is answered before any goes.
        for i in 2..frames.len() {
            if rng.random_bool(0.3) {
                frames.swap(i - 1, i);
            }
        }
        for (committed, records) in frames {
            let announce = records.is_empty();
            if announce {
                events.push(frame(committed, records.clone(), None));
                // Sent again, and held up.
                if rng.random_bool(0.2) {
                    let id = *next_id;
                    *next_id += 1;
                    events.push(Event::Sent {
                        late: id,
                        generation,
                        announce,
                    });
                    delayed.push((frame(committed, records, Some(id)), events.len()));
                }
                continue;
            }
            let id = *next_id;
            let sent = Event::Sent {
                late: id,
                generation,
                announce,
            };
            let late = frame(committed, records.clone(), Some(id));
            let on_time = frame(committed, records, None);
            match rng.random_range(0..20) {
                // Lost, and the primary reports the copy.
                0 => events.push(Event::Unanswered),
                // Held up: the primary reports the copy, or is deposed before it can.
                1 | 2 => {
                    *next_id += 1;
                    events.push(sent);
                    delayed.push((late, events.len()));
                    if rng.random_bool(0.5) {
                        events.push(Event::Unanswered);
                    }
                }
                // Sent twice.
                3 | 4 => {
                    *next_id += 1;
                    events.push(sent);
                    delayed.push((late, events.len()));
                    events.push(on_time);
                }
                _ => events.push(on_time),
            }
            if rng.random_bool(0.05) {
                events.push(Event::Restart {
                    torn: rng.random_bool(0.5),
                });
            }
            if rng.random_bool(0.1) {
                events.push(Event::Resync(generation));
            }
            if rng.random_bool(0.1) {
                events.push(Event::Heartbeat(generation));
            }
        }
        // Frames held up in the network arrive later than sent: among this primary's frames, or
        // its successors'.
        pending.extend(delayed);
        pending = land(&mut events, pending, rng, 0.5);
    }
    land(&mut events, pending, rng, 1.0);
    events
}

/// Lets each of `pending` arrive with probability `p`, somewhere from its first position on;
/// returns the others.
fn land(
    events: &mut Vec<Event>,
    pending: Vec<(Event, usize)>,
    rng: &mut StdRng,
    p: f64,
) -> Vec<(Event, usize)> {
    let mut left: Vec<(Event, usize)> = Vec::new();
    let mut pending = VecDeque::from(pending);
    while let Some((late, from)) = pending.pop_front() {
        if !rng.random_bool(p) {
            left.push((late, from));
            continue;
        }
        let at = rng.random_range(from..=events.len());
        events.insert(at, late);
        // What was at `at` or after moved one on.
        for (_, later) in pending.iter_mut().chain(left.iter_mut()) {
            if *later > at {
                *later += 1;
            }
        }
    }
    left
}

/// One run: the copy takes `events` through the decisions; every invariant is checked after each.
/// Returns the kinds of step it took.
fn run(seed: u64) -> BTreeSet<&'static str> {
    let mut rng = StdRng::seed_from_u64(seed);
    let primaries = Primaries::random(&mut rng);
    let mut queue: VecDeque<(Event, bool)> = events(&primaries, &mut rng)
        .into_iter()
        .map(|e| (e, false))
        .collect();
    let mut copy = Model::default();
    let mut assigned: Option<Generation> = None;
    // What the runtime remembers until the node restarts: the newest announced generation.
    let mut announced = g(0);
    // The database's view: primaries send frames to current copies only.
    let mut current = true;
    // The highest VBA this copy acknowledged: a restart loses only records past it.
    let mut acked = Vba::ZERO;
    // Whether each primary's announcement, its first frame, was taken: a primary sends records
    // only to copies that took it (the others it reports stale, and they resync).
    let mut took_announce: BTreeMap<Generation, bool> = BTreeMap::new();
    // The held-up frames that were sent.
    let mut sent_late: BTreeSet<usize> = BTreeSet::new();
    while let Some((event, waited)) = queue.pop_front() {
        match event.clone() {
            Event::Heartbeat(generation) => {
                assigned = Some(assigned.map_or(generation, |a| a.max(generation)));
            }
            Event::Unanswered => current = false,
            Event::Sent {
                late,
                generation,
                announce,
            } => {
                if current && (announce || took_announce.get(&generation) == Some(&true)) {
                    sent_late.insert(late);
                }
            }
            Event::Restart { torn } => {
                copy.reached.insert("a node restarts");
                assigned = None;
                announced = g(0);
                let keep = acked
                    .max(copy.stable)
                    .max(Vba(copy.last().0.saturating_sub(2)));
                if torn && keep < copy.last() {
                    // Recovery reports the unit torn: not current until it resyncs.
                    copy.reached.insert("a restart loses a tail");
                    copy.records.truncate(keep.0 as usize);
                    current = false;
                }
            }
            Event::Resync(generation) => {
                if current {
                    continue;
                }
                let history = primaries.history(generation);
                if let Err(stable) = copy.resync(history, generation) {
                    panic!("seed {seed}: the copy diverged below its stable VBA {stable}");
                }
                acked = acked.max(copy.last());
                current = true;
                took_announce.insert(generation, true);
            }
            Event::Frame {
                generation,
                committed,
                records,
                late,
            } => {
                let sent = match late {
                    Some(id) => sent_late.contains(&id),
                    None => {
                        current
                            && (records.is_empty() || took_announce.get(&generation) == Some(&true))
                    }
                };
                if !sent {
                    continue;
                }
                let view = View {
                    assigned: assigned.map(|a| (Role::Secondary, a)),
                    announced,
                    next_vba: copy.next(),
                    resyncing: false,
                };
                let step = on_frame(&view, generation, committed, records.iter().copied());
                let taken = match step {
                    FrameStep::Refuse(refusal) => {
                        copy.reached.insert(match refusal {
                            Refusal::Stale { .. } => "an old generation's frame is refused",
                            Refusal::NotAssigned => "a frame before a heartbeat is refused",
                            _ => "a malformed frame is refused",
                        });
                        Err(Refused::Decided(refusal))
                    }
                    FrameStep::StartGeneration { generation, start } => {
                        announced = announced.max(generation);
                        match on_generation_start(copy.generation(), copy.last(), generation, start)
                        {
                            Some(truncate) => {
                                copy.reached.insert("a generation's start drops a tail");
                                copy.truncate(truncate)
                            }
                            None => Ok(()),
                        }
                    }
                    FrameStep::WaitForGap { .. } if !waited && rng.random_bool(0.5) => {
                        // The frames before it may come meanwhile.
                        let at = rng.random_range(0..=queue.len().min(3));
                        queue.insert(at, (event, true));
                        continue;
                    }
                    FrameStep::WaitForGap { .. } => {
                        let filled =
                            fill_gap(&mut copy, &primaries, assigned, generation, records[0].0);
                        copy.reached.insert(match filled {
                            Ok(()) => "a gap is filled",
                            Err(_) => "a gap stays a hole",
                        });
                        filled.and_then(|()| copy.apply_in_order(&records))
                    }
                    FrameStep::Apply => copy.apply_in_order(&records),
                };
                if records.is_empty() && late.is_none() {
                    took_announce.insert(generation, taken.is_ok());
                }
                match (taken, records.last()) {
                    (Ok(()), Some(&(last, _))) => {
                        // Acknowledged: the copy must hold this generation's history up to
                        // `last`.
                        let history = primaries.history(generation);
                        assert_eq!(
                            copy.records[..last.0 as usize],
                            history[..last.0 as usize],
                            "seed {seed}: acknowledged VBA {last} of generation {generation} \
                             without holding its history"
                        );
                        acked = acked.max(last);
                        copy.set_stable(committed);
                    }
                    (Ok(()), None) => {}
                    // The primary reports a copy that refused its frame.
                    (Err(_), _) => current = current && late.is_some(),
                }
            }
        }
        check(&copy, &primaries, seed);
    }
    // In the end the copy resyncs from the last primary, and holds exactly its log.
    let last = g(primaries.histories.len() as u64);
    if let Err(stable) = copy.resync(primaries.last(), last) {
        panic!("seed {seed}: the copy diverged below its stable VBA {stable}");
    }
    assert_eq!(
        copy.records,
        primaries.last(),
        "seed {seed}: the copy did not catch up"
    );
    check(&copy, &primaries, seed);
    copy.reached
}

/// `fill_gap`: the primary the copy knows resends from its window the records it numbered.
fn fill_gap(
    copy: &mut Model,
    primaries: &Primaries,
    assigned: Option<Generation>,
    generation: Generation,
    first: Vba,
) -> Result<(), Refused> {
    let Some((after, until)) = resend_range(copy.next(), first) else {
        return Ok(());
    };
    let start = primaries.starts[generation.0 as usize - 1];
    if assigned != Some(generation) || after.0 < start {
        return Err(Refused::NotResent);
    }
    let history = primaries.history(generation);
    let resent: Vec<(Vba, Generation)> = (after.0 + 1..=until.0)
        .map(|n| (Vba(n), history[n as usize - 1]))
        .collect();
    copy.apply_in_order(&resent)?;
    if copy.next() < first {
        return Err(Refused::Hole);
    }
    Ok(())
}

/// What must hold of the copy at every step.
fn check(copy: &Model, primaries: &Primaries, seed: u64) {
    // Applied in order: each record's generation is the history's at its VBA.
    for (i, &record) in copy.records.iter().enumerate() {
        let vba = Vba(i as u64 + 1);
        assert_eq!(
            copy.generation_at(vba),
            record,
            "seed {seed}: VBA {vba}'s record is not of the generation the history says"
        );
    }
    // Nothing every copy holds is ever dropped or different: the last primary's history keeps it.
    let stable = copy.stable.0 as usize;
    assert!(copy.records.len() >= stable, "seed {seed}: below stable");
    assert_eq!(
        copy.records[..stable],
        primaries.last()[..stable],
        "seed {seed}: the copy's records up to its stable VBA {stable} differ from the slice's"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn a_copy_fed_any_interleaving_of_its_primaries_frames_keeps_the_invariants(seed in any::<u64>()) {
        run(seed);
    }
}

#[test]
fn a_deposed_primarys_held_up_frame_is_not_stacked_under_the_next_ones_records() {
    // Found by the property above before copies kept the newest announced generation: a frame
    // of generation 1 held up in the network landed right after the copy's end, after
    // generation 2 announced itself with nothing to drop, and generation 2's next frame was
    // stacked onto it and acknowledged.
    run(3878);
}

#[test]
fn the_random_runs_reach_every_kind_of_step() {
    // The property above means something only if its runs take every path; over fixed seeds,
    // they must. (Two paths stay with their unit tests: a newer record meeting an old tail, which
    // the announcement leaves only to a copy that missed it and is stale; and a probe further on,
    // which needs a copy holding runs of one generation on both sides of another's.)
    let reached = (0..512u64).fold(BTreeSet::new(), |mut all, seed| {
        all.extend(run(seed));
        all
    });
    let every = [
        "an old generation's frame is refused",
        "a frame before a heartbeat is refused",
        "a generation's start drops a tail",
        "a gap is filled",
        "a gap stays a hole",
        "a resync probes",
        "a resync drops a tail",
        "a node restarts",
    ];
    let missed: Vec<&str> = every.into_iter().filter(|k| !reached.contains(k)).collect();
    assert!(missed.is_empty(), "never reached: {missed:?}");
}
