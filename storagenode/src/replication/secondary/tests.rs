//! Each transition of the secondary's decisions.

use super::*;

fn g(n: u64) -> Generation {
    Generation(n)
}

fn v(n: u64) -> Vba {
    Vba(n)
}

fn secondary(assigned: u64, next: u64) -> View {
    View {
        assigned: Some((Role::Secondary, g(assigned))),
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
