//! The primary's window of replicated records: every record not yet held by every current
//! secondary stays here, so that a secondary that lost a frame (a broken connection) can have the
//! gap resent exactly, dead or not, without the primary reading its log. What every current copy
//! holds is the *committed* VBA: secondaries may compact under it and never truncate below it.

use std::collections::BTreeMap;

use vbs_wire::proto::WireRecord;

use crate::engine::record::log_bytes;
use vbs_wire::types::{NodeId, Vba};

/// The most record bytes a window holds; past it, new writes wait (refused as unavailable) until
/// slow secondaries acknowledge or are marked stale.
pub const MAX_WINDOW_BYTES: usize = 256 << 20;

#[derive(Default)]
pub struct Window {
    records: BTreeMap<Vba, WireRecord>,
    bytes: usize,
    /// Current secondaries and the highest VBA each has acknowledged. A secondary applies VBAs in
    /// order, so its acknowledgement of a VBA covers every VBA before it.
    acked: BTreeMap<NodeId, Vba>,
    /// Highest VBA durable on the primary itself.
    local: Vba,
}

fn record_bytes(record: &WireRecord) -> usize {
    log_bytes(&record.body)
}

/// Records answering a resend: every VBA in `(after, through]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resend {
    pub records: Vec<WireRecord>,
    pub through: Vba,
}

impl Window {
    pub fn new(local: Vba) -> Window {
        Window {
            local,
            ..Window::default()
        }
    }

    pub fn is_full(&self) -> bool {
        self.bytes >= MAX_WINDOW_BYTES
    }

    /// Records just numbered and sent.
    pub fn push(&mut self, records: &[WireRecord]) {
        for record in records {
            self.bytes += record_bytes(record);
            self.records.insert(record.vba, record.clone());
        }
        self.prune();
    }

    pub fn local_durable(&mut self, vba: Vba) {
        self.local = self.local.max(vba);
        self.prune();
    }

    pub fn acked(&mut self, node: &NodeId, vba: Vba) {
        if let Some(acked) = self.acked.get_mut(node) {
            *acked = (*acked).max(vba);
        }
        self.prune();
    }

    /// The current secondaries. One that was not current before starts from nothing acknowledged;
    /// one that is no longer current stops holding records back.
    pub fn set_current(&mut self, nodes: &[NodeId]) {
        self.acked.retain(|node, _| nodes.contains(node));
        for node in nodes {
            self.acked.entry(node.clone()).or_insert(Vba::ZERO);
        }
        self.prune();
    }

    /// Every VBA up to this one is durable on the primary and on every current secondary.
    pub fn committed(&self) -> Vba {
        self.acked
            .values()
            .copied()
            .min()
            .map_or(self.local, |acked| acked.min(self.local))
    }

    fn prune(&mut self) {
        let committed = self.committed();
        while let Some(entry) = self.records.first_entry() {
            if *entry.key() > committed {
                break;
            }
            self.bytes -= record_bytes(entry.get());
            entry.remove();
        }
    }

    /// The records of `(after, until]` the window holds, from `after + 1` on without a gap.
    /// `through` is the last VBA covered: less than `until` when some were never sent, or when
    /// `after + 1` is already committed (the asker claims to miss what it acknowledged).
    pub fn resend(&self, after: Vba, until: Vba) -> Resend {
        let mut records = Vec::new();
        let mut through = after;
        if until <= after {
            // An empty or reversed range (a peer's request says so): nothing to resend.
            return Resend { records, through };
        }
        for (vba, record) in self.records.range(after.next()..=until) {
            if *vba != through.next() {
                break;
            }
            records.push(record.clone());
            through = *vba;
        }
        Resend { records, through }
    }

    /// The copies waited for that have not acknowledged `vba` and that no record in flight can
    /// bring there: the VBA after the last one they acknowledged is not in the window (this
    /// primary numbered it before the window began: before it restarted, or took the role, or
    /// before the copy joined). Only asking them tells how far they are.
    pub fn unconfirmed(&self, vba: Vba) -> Vec<NodeId> {
        let first_in_flight = self.records.keys().next().copied();
        self.acked
            .iter()
            .filter(|(_, acked)| **acked < vba)
            .filter(|(_, acked)| first_in_flight.is_none_or(|first| acked.next() < first))
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// Each copy waited for, with the highest VBA it acknowledged.
    pub fn acknowledged(&self) -> Vec<(NodeId, Vba)> {
        self.acked
            .iter()
            .map(|(node, vba)| (node.clone(), *vba))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use vbs_wire::proto::RecordBody;
    use vbs_wire::types::{Generation, Lba};

    fn record(vba: u64) -> WireRecord {
        WireRecord {
            vba: Vba(vba),
            generation: Generation(1),
            body: RecordBody::Write {
                lba: Lba(vba),
                data: Bytes::from(vec![vba as u8; 4096]),
            },
        }
    }

    fn node(name: &str) -> NodeId {
        NodeId(name.into())
    }

    #[test]
    fn records_stay_until_every_current_copy_holds_them() {
        let mut window = Window::new(Vba(0));
        window.set_current(&[node("b"), node("c")]);
        window.push(&(1..=4).map(record).collect::<Vec<_>>());
        window.local_durable(Vba(4));
        assert_eq!(window.committed(), Vba(0));
        window.acked(&node("b"), Vba(4));
        window.acked(&node("c"), Vba(2));
        assert_eq!(window.committed(), Vba(2));
        assert_eq!(window.len(), 2);
        // c is marked stale: it no longer holds records back.
        window.set_current(&[node("b")]);
        assert_eq!(window.committed(), Vba(4));
        assert!(window.is_empty());
    }

    #[test]
    fn committed_never_passes_the_primary_itself() {
        let mut window = Window::new(Vba(0));
        window.set_current(&[node("b")]);
        window.push(&[record(1), record(2)]);
        window.acked(&node("b"), Vba(2));
        assert_eq!(window.committed(), Vba(0));
        window.local_durable(Vba(2));
        assert_eq!(window.committed(), Vba(2));
        // With no secondary at all, the primary's own log is the whole story.
        let mut alone = Window::new(Vba(7));
        alone.set_current(&[]);
        assert_eq!(alone.committed(), Vba(7));
    }

    #[test]
    fn copies_that_nothing_in_flight_can_advance_are_unconfirmed() {
        // A primary that restarted with VBAs 1..=10 in its log knows nothing of its copies.
        let mut window = Window::new(Vba(10));
        window.set_current(&[node("b"), node("c")]);
        assert_eq!(window.committed(), Vba(0));
        assert_eq!(window.unconfirmed(Vba(10)), vec![node("b"), node("c")]);
        assert!(
            window.unconfirmed(Vba(0)).is_empty(),
            "VBA 0 is held by all"
        );
        // Asked, b says it holds VBA 10: it counts; c holds 8 only.
        window.acked(&node("b"), Vba(10));
        window.acked(&node("c"), Vba(8));
        assert_eq!(window.committed(), Vba(8));
        assert_eq!(window.unconfirmed(Vba(10)), vec![node("c")]);
        assert!(window.unconfirmed(Vba(8)).is_empty());
        // Records 11.. are in flight: a copy at 10 gets them, one at 8 cannot get 9 and 10.
        window.push(&(11..=12).map(record).collect::<Vec<_>>());
        assert_eq!(window.unconfirmed(Vba(12)), vec![node("c")]);
        window.acked(&node("c"), Vba(10));
        assert!(
            window.unconfirmed(Vba(12)).is_empty(),
            "VBAs 11 and 12 are on their way to both"
        );
    }

    #[test]
    fn a_resend_covers_the_gap_without_holes() {
        let mut window = Window::new(Vba(0));
        window.set_current(&[node("b")]);
        window.push(&(1..=6).map(record).collect::<Vec<_>>());
        let resend = window.resend(Vba(2), Vba(5));
        assert_eq!(resend.through, Vba(5));
        let vbas: Vec<u64> = resend.records.iter().map(|r| r.vba.0).collect();
        assert_eq!(vbas, vec![3, 4, 5]);
        // Asking past what was sent covers what there is.
        assert_eq!(window.resend(Vba(5), Vba(9)).through, Vba(6));
        // Asking for committed VBAs covers nothing: the asker acknowledged them already.
        window.local_durable(Vba(6));
        window.acked(&node("b"), Vba(3));
        let stale = window.resend(Vba(1), Vba(5));
        assert_eq!((stale.through, stale.records.len()), (Vba(1), 0));
    }

    #[test]
    fn a_resend_of_an_empty_or_reversed_range_is_empty() {
        let mut window = Window::new(Vba(0));
        window.set_current(&[node("b")]);
        window.push(&(1..=6).map(record).collect::<Vec<_>>());
        for (after, until) in [(3, 3), (5, 2), (0, 0)] {
            let resend = window.resend(Vba(after), Vba(until));
            assert_eq!((resend.through, resend.records.len()), (Vba(after), 0));
        }
    }

    /// What the window must answer, kept the simple way: every record pushed, what each copy
    /// acknowledged, the primary's durable VBA.
    struct Model {
        pushed: Vec<u64>,
        local: u64,
        acked: BTreeMap<NodeId, u64>,
        /// The highest committed VBA so far: records at or below it may be gone.
        pruned_through: u64,
    }

    impl Model {
        fn committed(&self) -> u64 {
            self.acked
                .values()
                .copied()
                .min()
                .map_or(self.local, |a| a.min(self.local))
        }
    }

    #[derive(Clone, Debug)]
    enum Step {
        Push(u64),
        Local(u64),
        Ack(usize, u64),
        Current(Vec<bool>),
    }

    fn steps() -> impl proptest::strategy::Strategy<Value = Vec<Step>> {
        use proptest::prelude::*;
        let step = prop_oneof![
            (1..4u64).prop_map(Step::Push),
            (0..40u64).prop_map(Step::Local),
            ((0..3usize), (0..40u64)).prop_map(|(n, v)| Step::Ack(n, v)),
            proptest::collection::vec(any::<bool>(), 3).prop_map(Step::Current),
        ];
        proptest::collection::vec(step, 1..60)
    }

    proptest::proptest! {
        /// Random pushes, durable marks, acknowledgements (stale ones too) and changes of the
        /// current copies: the window's committed VBA is the model's, it holds every record above
        /// what was ever committed and resends it exactly, its byte count matches what it holds,
        /// and the copies it calls unconfirmed are those nothing in flight can advance.
        #[test]
        fn the_window_answers_as_its_model(start in 0..5u64, steps in steps()) {
            let nodes = [node("a"), node("b"), node("c")];
            let mut window = Window::new(Vba(start));
            let mut model = Model {
                pushed: Vec::new(),
                local: start,
                acked: BTreeMap::new(),
                pruned_through: 0,
            };
            let mut next = start + 1;
            for step in steps {
                match step {
                    Step::Push(count) => {
                        let records: Vec<WireRecord> = (next..next + count).map(record).collect();
                        window.push(&records);
                        model.pushed.extend(next..next + count);
                        next += count;
                    }
                    Step::Local(vba) => {
                        let vba = vba.min(next - 1);
                        window.local_durable(Vba(vba));
                        model.local = model.local.max(vba);
                    }
                    Step::Ack(n, vba) => {
                        let vba = vba.min(next - 1);
                        window.acked(&nodes[n], Vba(vba));
                        if let Some(acked) = model.acked.get_mut(&nodes[n]) {
                            *acked = (*acked).max(vba);
                        }
                    }
                    Step::Current(which) => {
                        let current: Vec<NodeId> = nodes
                            .iter()
                            .zip(which)
                            .filter(|(_, on)| *on)
                            .map(|(n, _)| n.clone())
                            .collect();
                        window.set_current(&current);
                        model.acked.retain(|n, _| current.contains(n));
                        for n in current {
                            model.acked.entry(n).or_insert(0);
                        }
                    }
                }
                let committed = model.committed();
                model.pruned_through = model.pruned_through.max(committed);
                proptest::prop_assert_eq!(window.committed(), Vba(committed));
                // Every record above what was ever committed is held, and resent exactly.
                let held: Vec<u64> = model
                    .pushed
                    .iter()
                    .copied()
                    .filter(|v| *v > model.pruned_through)
                    .collect();
                proptest::prop_assert_eq!(window.len(), held.len());
                let bytes: usize = held.iter().map(|v| record_bytes(&record(*v))).sum();
                proptest::prop_assert_eq!(window.bytes, bytes);
                if let (Some(&first), Some(&last)) = (held.first(), held.last()) {
                    let resend = window.resend(Vba(first - 1), Vba(last));
                    proptest::prop_assert_eq!(resend.through, Vba(last));
                    let resent: Vec<WireRecord> = held.iter().map(|v| record(*v)).collect();
                    proptest::prop_assert_eq!(resend.records, resent);
                }
                // Nothing at or below what was pruned is resent.
                let below = window.resend(Vba(0), Vba(model.pruned_through));
                proptest::prop_assert!(below.records.is_empty());
                // Unconfirmed: short of the newest VBA, and the VBA after their last
                // acknowledgement is not on its way.
                let newest = Vba(next - 1);
                let expected: Vec<NodeId> = model
                    .acked
                    .iter()
                    .filter(|(_, a)| Vba(**a) < newest)
                    .filter(|(_, a)| held.first().is_none_or(|f| **a + 1 < *f))
                    .map(|(n, _)| n.clone())
                    .collect();
                proptest::prop_assert_eq!(window.unconfirmed(newest), expected);
            }
        }
    }
}
