//! The verdict on a run's history: lost writes, stale reads, split brain.
//!
//! Each block is a register. A write is acknowledged (`Ok`) or not; one that is not may have
//! taken effect at any moment after it started, even after the client gave up, so it can never be
//! proven lost or overtaken. Write `W'` is *strictly after* write `W` when `W` was acknowledged
//! before `W'` started. Then:
//!
//! - a read that began after `W'` was acknowledged must not return `W` (nor zeroes): that is a
//!   *stale read*. So must it not return `W` if an earlier read, finished before it began, had
//!   already returned `W'` (reads do not go back in time);
//! - the final read of every block, after the faults are healed, must not return `W` (nor
//!   zeroes) when some acknowledged `W'` is strictly after it: the block *lost* `W'`;
//! - a read must return zeroes or a block some write produced for that very block, begun before
//!   the read ended; anything else is a *corrupt* read (counted with the stale reads, or as
//!   lost in a final read);
//! - per slice, every generation had at most one primary acknowledging writes, and no VBA was
//!   acknowledged for two different blocks or writes: otherwise *split brain*.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use vbs_wire::types::{Generation, NodeId, UnitId, Vba};

use super::history::{BlockValue, Outcome, ReadEvent, WriteEvent, WriteId};

/// At most this many problems of each kind are described (all are counted).
const MAX_DESCRIBED: usize = 20;

#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub ops: u64,
    pub acked: u64,
    pub write_errors: u64,
    pub reads: u64,
    pub read_errors: u64,
    /// Blocks whose final content lost an acknowledged write.
    pub lost: u64,
    pub stale_reads: u64,
    pub split_brain: u64,
    /// What went wrong, described.
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn safe(&self) -> bool {
        self.lost == 0 && self.stale_reads == 0 && self.split_brain == 0
    }

    fn describe(&mut self, count: u64, problem: String) {
        if count <= MAX_DESCRIBED as u64 {
            self.problems.push(problem);
        }
    }
}

/// When a write started and, if it was acknowledged, when.
#[derive(Clone, Copy, Debug)]
struct Span {
    start_us: u64,
    /// `None`: not acknowledged, it may take effect at any time after `start_us`.
    acked_us: Option<u64>,
}

/// Per block: the events that rule out older values, as (when it was known, start of the write
/// it proves): acknowledged writes (known when acknowledged) and returned values (known when the
/// read finished). Sorted by the first field, with the running maximum of the second.
#[derive(Default)]
struct Witnesses {
    entries: Vec<(u64, u64)>,
    running_max: Vec<u64>,
}

impl Witnesses {
    fn seal(&mut self) {
        self.entries.sort_unstable();
        let mut max = 0;
        self.running_max = self
            .entries
            .iter()
            .map(|(_, start)| {
                max = max.max(*start);
                max
            })
            .collect();
    }

    /// The latest start of a write proven before `before_us`, if any.
    fn newest_start_before(&self, before_us: u64) -> Option<u64> {
        let n = self
            .entries
            .partition_point(|(known, _)| *known < before_us);
        n.checked_sub(1).map(|i| self.running_max[i])
    }
}

/// What a read returned for one block: a write (`None` for zeroes), or why it is corrupt.
type Returned = Result<Option<WriteId>, String>;

/// Checks a history. `final_reads` are judged for lost writes, the others for stale reads.
pub fn check(writes: &[WriteEvent], reads: &[ReadEvent]) -> Verdict {
    let mut verdict = Verdict::default();
    let mut spans: HashMap<WriteId, Span> = HashMap::with_capacity(writes.len());
    let mut blocks_of: HashMap<WriteId, (u64, u64)> = HashMap::with_capacity(writes.len());
    let mut witnesses: BTreeMap<u64, Witnesses> = BTreeMap::new();
    for write in writes {
        let acked_us = match &write.outcome {
            Outcome::Ok(_) => {
                verdict.acked += 1;
                Some(write.end_us)
            }
            Outcome::Failed(_) | Outcome::Unknown(_) => {
                verdict.write_errors += 1;
                None
            }
        };
        spans.insert(
            write.id,
            Span {
                start_us: write.start_us,
                acked_us,
            },
        );
        blocks_of.insert(write.id, (write.first_block, write.blocks));
        if let Some(acked) = acked_us {
            for block in write.first_block..write.first_block + write.blocks {
                witnesses
                    .entry(block)
                    .or_default()
                    .entries
                    .push((acked, write.start_us));
            }
        }
    }
    // What each read returned, checked for corruption first; sound values become witnesses.
    let mut returned: Vec<(&ReadEvent, u64, Returned)> = Vec::new();
    for read in reads {
        if !read.is_final {
            verdict.reads += 1;
        }
        let values = match &read.outcome {
            Outcome::Ok(values) => values,
            Outcome::Failed(_) | Outcome::Unknown(_) => {
                verdict.read_errors += 1;
                continue;
            }
        };
        for (i, value) in values.iter().enumerate() {
            let block = read.first_block + i as u64;
            let value = match value {
                BlockValue::Zero => Ok(None),
                BlockValue::Corrupt(what) => Err(what.clone()),
                BlockValue::Written(id) => match (spans.get(id), blocks_of.get(id)) {
                    (Some(span), Some((first, count)))
                        if (*first..first + count).contains(&block) =>
                    {
                        if span.start_us > read.end_us {
                            Err(format!("write {id} began after the read ended"))
                        } else {
                            Ok(Some(*id))
                        }
                    }
                    _ => Err(format!("write {id} never wrote this block")),
                },
            };
            if let (Ok(Some(id)), false) = (&value, read.is_final) {
                witnesses
                    .entry(block)
                    .or_default()
                    .entries
                    .push((read.end_us, spans[id].start_us));
            }
            returned.push((read, block, value));
        }
    }
    for w in witnesses.values_mut() {
        w.seal();
    }
    for (read, block, value) in returned {
        let kind = if read.is_final { "final read" } else { "read" };
        let problem = match value {
            Err(what) => Some(format!(
                "{kind} by c{} at {}us of block {block} returned corrupt data: {what}",
                read.client, read.start_us
            )),
            Ok(value) => {
                // An unacknowledged write may take effect at any time: nothing overtakes it.
                let known_until = value.map(|id| spans[&id].acked_us.unwrap_or(u64::MAX));
                let newest = witnesses
                    .get(&block)
                    .and_then(|w| w.newest_start_before(read.start_us));
                let overtaken = match (newest, known_until) {
                    (Some(_), None) => true,
                    (Some(newest), Some(acked)) => newest > acked,
                    (None, _) => false,
                };
                overtaken.then(|| {
                    let what = value.map_or("zeroes".to_string(), |id| format!("write {id}"));
                    format!(
                        "{kind} by c{} at {}us of block {block} returned {what}, but a write \
                         begun at {}us was acknowledged (or read) before the read began",
                        read.client,
                        read.start_us,
                        newest.unwrap_or_default()
                    )
                })
            }
        };
        if let Some(problem) = problem {
            if read.is_final {
                verdict.lost += 1;
                let count = verdict.lost;
                verdict.describe(count, format!("lost: {problem}"));
            } else {
                verdict.stale_reads += 1;
                let count = verdict.stale_reads;
                verdict.describe(count, format!("stale: {problem}"));
            }
        }
    }
    check_primaries(writes, &mut verdict);
    verdict.ops = writes.len() as u64 + verdict.reads;
    verdict
}

/// At most one primary per slice and generation, and one write per VBA.
fn check_primaries(writes: &[WriteEvent], verdict: &mut Verdict) {
    let mut primaries: BTreeMap<(UnitId, Generation), BTreeSet<NodeId>> = BTreeMap::new();
    let mut vbas: HashMap<(UnitId, Vba), (WriteId, u64, &NodeId, Generation)> = HashMap::new();
    for write in writes {
        let Outcome::Ok(acks) = &write.outcome else {
            continue;
        };
        let mut block = write.first_block;
        for ack in acks {
            primaries
                .entry((ack.unit, ack.generation))
                .or_default()
                .insert(ack.primary.clone());
            for i in 0..ack.blocks {
                let vba = Vba(ack.first_vba.0 + i);
                let this = (write.id, block + i, &ack.primary, ack.generation);
                if let Some(other) = vbas.insert((ack.unit, vba), this) {
                    if (other.0, other.1) != (this.0, this.1) {
                        verdict.split_brain += 1;
                        let count = verdict.split_brain;
                        verdict.describe(
                            count,
                            format!(
                                "split brain: VBA {vba} of unit {} was acknowledged for write {} \
                                 (block {}, by {} at generation {}) and write {} (block {}, by {} \
                                 at generation {})",
                                ack.unit,
                                other.0,
                                other.1,
                                other.2,
                                other.3,
                                this.0,
                                this.1,
                                this.2,
                                this.3
                            ),
                        );
                    }
                }
            }
            block += ack.blocks;
        }
    }
    for ((unit, generation), nodes) in primaries {
        if nodes.len() > 1 {
            verdict.split_brain += 1;
            let count = verdict.split_brain;
            let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
            verdict.describe(
                count,
                format!(
                    "split brain: unit {unit} at generation {generation} had writes acknowledged \
                     by {}",
                    nodes.join(" and ")
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use client::volume::WriteAck;
    use vbs_wire::types::Lba;

    fn id(client: u32, seq: u64) -> WriteId {
        WriteId { client, seq }
    }

    fn ack(primary: &str, generation: u64, vba: u64) -> Vec<WriteAck> {
        vec![WriteAck {
            unit: UnitId::new(1, 0),
            lba: Lba(0),
            blocks: 1,
            primary: NodeId(primary.into()),
            generation: Generation(generation),
            first_vba: Vba(vba),
        }]
    }

    fn write(w: WriteId, start: u64, end: u64, outcome: Outcome<Vec<WriteAck>>) -> WriteEvent {
        WriteEvent {
            id: w,
            first_block: 0,
            blocks: 1,
            start_us: start,
            end_us: end,
            outcome,
        }
    }

    fn read(start: u64, end: u64, value: BlockValue, is_final: bool) -> ReadEvent {
        ReadEvent {
            client: 9,
            first_block: 0,
            start_us: start,
            end_us: end,
            outcome: Outcome::Ok(vec![value]),
            is_final,
        }
    }

    #[test]
    fn a_read_after_an_acknowledged_write_must_see_it_or_a_later_one() {
        let writes = vec![
            write(id(1, 1), 0, 10, Outcome::Ok(ack("n1", 1, 1))),
            write(id(1, 2), 20, 30, Outcome::Ok(ack("n1", 1, 2))),
        ];
        let ok = check(
            &writes,
            &[
                read(25, 35, BlockValue::Written(id(1, 1)), false),
                read(40, 50, BlockValue::Written(id(1, 2)), true),
            ],
        );
        assert!(ok.safe(), "{:?}", ok.problems);
        let stale = check(
            &writes,
            &[read(31, 35, BlockValue::Written(id(1, 1)), false)],
        );
        assert_eq!(stale.stale_reads, 1);
        let lost = check(&writes, &[read(40, 50, BlockValue::Zero, true)]);
        assert_eq!(lost.lost, 1);
    }

    #[test]
    fn unacknowledged_writes_may_land_any_time_but_reads_do_not_go_back() {
        let writes = vec![
            write(id(1, 1), 0, 10, Outcome::Ok(ack("n1", 1, 1))),
            write(id(2, 1), 5, 50, Outcome::Unknown("gave up".into())),
        ];
        let late = check(
            &writes,
            &[read(60, 70, BlockValue::Written(id(2, 1)), true)],
        );
        assert!(late.safe(), "{:?}", late.problems);
        let back = check(
            &writes,
            &[
                read(60, 70, BlockValue::Written(id(1, 1)), false),
                read(80, 90, BlockValue::Written(id(2, 1)), false),
                read(100, 110, BlockValue::Written(id(1, 1)), false),
            ],
        );
        // c2#1 began before c1#1 was acknowledged, so either may be the later one: the mirror
        // does not order concurrent writes by what reads saw (a full linearizability check
        // would flag the third read).
        assert!(back.safe(), "{:?}", back.problems);
    }

    #[test]
    fn two_primaries_in_one_generation_or_one_vba_twice_is_split_brain() {
        let writes = vec![
            write(id(1, 1), 0, 10, Outcome::Ok(ack("n1", 3, 7))),
            write(id(2, 1), 0, 10, Outcome::Ok(ack("n2", 3, 8))),
        ];
        assert_eq!(check(&writes, &[]).split_brain, 1);
        let writes = vec![
            write(id(1, 1), 0, 10, Outcome::Ok(ack("n1", 3, 7))),
            write(id(2, 1), 20, 30, Outcome::Ok(ack("n2", 4, 7))),
        ];
        assert_eq!(check(&writes, &[]).split_brain, 1);
    }

    #[test]
    fn corrupt_or_future_data_is_caught() {
        let writes = vec![write(id(1, 1), 50, 60, Outcome::Ok(ack("n1", 1, 1)))];
        let future = check(
            &writes,
            &[read(0, 10, BlockValue::Written(id(1, 1)), false)],
        );
        assert_eq!(future.stale_reads, 1);
        let corrupt = check(
            &writes,
            &[read(70, 80, BlockValue::Corrupt("x".into()), true)],
        );
        assert_eq!(corrupt.lost, 1);
    }
}
