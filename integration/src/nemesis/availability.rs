//! Availability: the longest time a slice that could serve completed no operation its clients
//! were waiting for.
//!
//! A slice *could serve* while the managers' view holds one of its copies `current` on an `up`
//! storage node; a [`Monitor`] samples that view a few times a second. A slice is *waited on*
//! while some client has an operation on it in flight. The clock of a slice runs while both
//! hold, and starts again at every operation on it that succeeds, whenever it becomes servable
//! and whenever a first operation starts after none was in flight. An operation that fails (a
//! client that gave up) does not stop the clock, nor does the next one started after it. So the
//! figure is what a client sees: how long it waited on a slice that a correct cluster should
//! have been serving.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use vbs_wire::api::{ClusterStatus, CopyStatus, NodeState};
use vbs_wire::managers::Managers;

use super::faults::slices;
use super::history::{History, Outcome, ReadEvent, WriteEvent};

/// Whether each slice of the volume could serve, as the managers saw it at `at_us`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub at_us: u64,
    pub servable: Vec<bool>,
}

/// How often the monitor reads the managers' view.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// Samples the managers' view of a volume until stopped. While the managers cannot answer
/// (no leader), nothing is sampled: the last view stands.
pub struct Monitor {
    stop: watch::Sender<bool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    pub fn start(managers: Managers, volume: &'static str, history: Arc<History>) -> Monitor {
        let (stop, mut stopped) = watch::channel(false);
        let samples = Arc::new(Mutex::new(Vec::new()));
        let kept = samples.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(status) = managers.status().await {
                    if let Some(servable) = servable(&status, volume) {
                        let sample = Sample {
                            at_us: history.now_us(),
                            servable,
                        };
                        kept.lock().unwrap_or_else(|p| p.into_inner()).push(sample);
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                    _ = stopped.changed() => return,
                }
            }
        });
        Monitor {
            stop,
            samples,
            task,
        }
    }

    /// Stops sampling; returns the samples.
    pub async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(true);
        // A task that panicked sampled what it could; the samples are kept either way.
        let _ = self.task.await;
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Each slice of `volume`: whether a copy is `current` on an `up` node.
fn servable(status: &ClusterStatus, volume: &str) -> Option<Vec<bool>> {
    let up = |node: &vbs_wire::types::NodeId| {
        status
            .nodes
            .iter()
            .any(|n| &n.id == node && n.state == NodeState::Up)
    };
    let slices = slices(status, volume).ok()?;
    Some(
        slices
            .iter()
            .map(|s| {
                s.copies
                    .iter()
                    .any(|c| c.status == CopyStatus::Current && up(&c.node))
            })
            .collect(),
    )
}

/// The samples as lines of tab-separated fields: time in microseconds, then 1 or 0 per slice.
pub fn samples_tsv(samples: &[Sample]) -> String {
    let mut text = String::new();
    for sample in samples {
        text.push_str(&sample.at_us.to_string());
        for servable in &sample.servable {
            text.push_str(if *servable { "\t1" } else { "\t0" });
        }
        text.push('\n');
    }
    text
}

/// The longest wait found: how long, on which slice, ending when.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unavailable {
    pub longest_us: u64,
    pub slice: usize,
    pub until_us: u64,
}

/// What happened to one slice at one moment.
#[derive(Clone, Copy, Debug)]
enum Event {
    Servable(bool),
    Start,
    End { ok: bool },
}

/// The longest time a servable slice waited on completed nothing, over `[0, until_us]`, from
/// the operations of `writes` and `reads` (the final read-back excluded) and the `samples` of
/// the managers' view. Slices are `blocks_per_slice` blocks each.
pub fn longest_wait(
    writes: &[WriteEvent],
    reads: &[ReadEvent],
    samples: &[Sample],
    blocks_per_slice: u64,
    until_us: u64,
) -> Unavailable {
    let slice_count = samples.iter().map(|s| s.servable.len()).max().unwrap_or(0);
    let mut events: Vec<Vec<(u64, Event)>> = vec![Vec::new(); slice_count];
    let mut op = |first: u64, blocks: u64, start: u64, end: u64, ok: bool| {
        let (first_slice, last_slice) = (
            first / blocks_per_slice,
            (first + blocks - 1) / blocks_per_slice,
        );
        for slice in first_slice..=last_slice {
            if let Some(events) = events.get_mut(slice as usize) {
                events.push((start, Event::Start));
                events.push((end, Event::End { ok }));
            }
        }
    };
    for write in writes {
        let ok = matches!(write.outcome, Outcome::Ok(_));
        op(
            write.first_block,
            write.blocks,
            write.start_us,
            write.end_us,
            ok,
        );
    }
    for read in reads.iter().filter(|r| !r.is_final) {
        let (ok, blocks) = match &read.outcome {
            Outcome::Ok(values) => (true, values.len() as u64),
            // A failed read's length is not recorded: its first block stands for it.
            _ => (false, 1),
        };
        op(
            read.first_block,
            blocks.max(1),
            read.start_us,
            read.end_us,
            ok,
        );
    }
    for sample in samples {
        for (slice, servable) in sample.servable.iter().enumerate() {
            events[slice].push((sample.at_us, Event::Servable(*servable)));
        }
    }
    let mut worst = Unavailable::default();
    for (slice, mut events) in events.into_iter().enumerate() {
        // Ends before starts at the same instant: an operation that ends as another starts
        // leaves one in flight, not two.
        events.sort_by_key(|(at, event)| (*at, !matches!(event, Event::End { .. })));
        let (mut servable, mut in_flight, mut since) = (false, 0u64, 0u64);
        // An operation on the slice failed, and none succeeded since: the wait goes on.
        let mut failing = false;
        let mut note = |at: u64, servable: bool, in_flight: u64, since: u64| {
            if servable && in_flight > 0 && at.saturating_sub(since) > worst.longest_us {
                worst = Unavailable {
                    longest_us: at - since,
                    slice,
                    until_us: at,
                };
            }
        };
        for (at, event) in events.into_iter().filter(|(at, _)| *at <= until_us) {
            note(at, servable, in_flight, since);
            match event {
                Event::Servable(now) => {
                    if now && !servable {
                        since = at;
                    }
                    servable = now;
                }
                Event::Start => {
                    if in_flight == 0 && !failing {
                        since = at;
                    }
                    in_flight += 1;
                }
                Event::End { ok } => {
                    in_flight = in_flight.saturating_sub(1);
                    if ok {
                        since = at;
                    }
                    failing = !ok;
                }
            }
        }
        note(until_us, servable, in_flight, since);
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::super::history::WriteId;
    use super::*;

    fn write(first_block: u64, start_us: u64, end_us: u64, ok: bool) -> WriteEvent {
        WriteEvent {
            id: WriteId {
                client: 1,
                seq: start_us,
            },
            first_block,
            blocks: 1,
            start_us,
            end_us,
            outcome: if ok {
                Outcome::Ok(Vec::new())
            } else {
                Outcome::Unknown("gave up".into())
            },
        }
    }

    fn sample(at_us: u64, servable: &[bool]) -> Sample {
        Sample {
            at_us,
            servable: servable.to_vec(),
        }
    }

    #[test]
    fn a_wait_on_a_servable_slice_counts_until_an_operation_succeeds() {
        // Two slices of 10 blocks; slice 1 is served throughout, one write on it waits 5 s.
        let samples = [sample(0, &[true, true])];
        let writes = [
            write(0, 100, 200, true),
            write(10, 1_000, 6_000_000, true),
            write(0, 300, 400, true),
        ];
        let found = longest_wait(&writes, &[], &samples, 10, 7_000_000);
        assert_eq!(
            found,
            Unavailable {
                longest_us: 5_999_000,
                slice: 1,
                until_us: 6_000_000
            }
        );
    }

    #[test]
    fn time_without_a_servable_copy_or_without_a_client_waiting_does_not_count() {
        // Slice 0 has no current copy on an up node from 1 s to 9 s: a write that waits through
        // it counts from when the slice could serve again.
        let samples = [
            sample(0, &[true]),
            sample(1_000_000, &[false]),
            sample(9_000_000, &[true]),
        ];
        let writes = [write(0, 500_000, 9_500_000, true)];
        let found = longest_wait(&writes, &[], &samples, 10, 20_000_000);
        assert_eq!(found.longest_us, 500_000, "{found:?}");
        // No operation in flight: an idle slice is not unavailable.
        let idle = longest_wait(&[write(0, 0, 10, true)], &[], &samples, 10, 20_000_000);
        assert_eq!(idle.longest_us, 10);
    }

    #[test]
    fn a_failed_operation_does_not_stop_the_clock() {
        let samples = [sample(0, &[true])];
        let writes = [
            write(0, 0, 3_000_000, false),
            write(0, 3_000_000, 4_000_000, true),
        ];
        let found = longest_wait(&writes, &[], &samples, 10, 5_000_000);
        assert_eq!(found.longest_us, 4_000_000);
    }
}
