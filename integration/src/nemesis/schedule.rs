//! The faults of a run, drawn from its seed: which kinds, in which order, held how long, with
//! which pause after. Targets are roles (the primary of a slice, the manager leader), resolved
//! to processes when the fault is injected, since which process holds a role depends on what
//! happened before.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL the primary of a slice, restart it after the hold.
    KillPrimary,
    /// SIGKILL a secondary of a slice, restart it after the hold.
    KillSecondary,
    /// SIGKILL the manager leader, restart it after the hold.
    KillLeader,
    /// SIGKILL a manager follower, restart it after the hold.
    KillFollower,
    /// SIGSTOP the primary of a slice for longer than the lease, then SIGCONT.
    HangPrimary,
    /// SIGSTOP a secondary of a slice for longer than the lease, then SIGCONT.
    HangSecondary,
    /// SIGSTOP the manager leader for longer than the lease, then SIGCONT.
    HangLeader,
    /// Cut a storage node (a slice's primary or a secondary) off from every other storage
    /// node and every manager. The clients still reach it: a compute node on its side.
    IsolateNode,
    /// Cut the primary of a slice off from its secondaries only.
    SplitPrimary,
    /// Cut a storage node (a slice's primary or a secondary) off from the managers only.
    CutManagers,
    /// SIGKILL a storage node, zero the tail of the last write batch of one of its units' newest
    /// log segment (a torn write), restart it after the hold.
    TornTail,
    /// Stop a storage node cleanly, flip one bit of a live record of one of its copies (bit rot),
    /// restart it after the hold. Reads must still return the data written. Not in
    /// [`FaultKind::ALL`]: see [`FaultKind::OPT_IN`].
    BitRot,
}

impl FaultKind {
    /// Kinds a run injects only when asked (`--faults`): `bit-rot` leaves damaged records that a
    /// later full read of a node's log at start refuses (`docs/reliability.md`, "Data
    /// integrity", "Open").
    pub const OPT_IN: [FaultKind; 1] = [FaultKind::BitRot];

    pub const ALL: [FaultKind; 11] = [
        FaultKind::KillPrimary,
        FaultKind::KillSecondary,
        FaultKind::KillLeader,
        FaultKind::KillFollower,
        FaultKind::HangPrimary,
        FaultKind::HangSecondary,
        FaultKind::HangLeader,
        FaultKind::IsolateNode,
        FaultKind::SplitPrimary,
        FaultKind::CutManagers,
        FaultKind::TornTail,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillPrimary => "kill-primary",
            FaultKind::KillSecondary => "kill-secondary",
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillFollower => "kill-follower",
            FaultKind::HangPrimary => "hang-primary",
            FaultKind::HangSecondary => "hang-secondary",
            FaultKind::HangLeader => "hang-leader",
            FaultKind::IsolateNode => "isolate-node",
            FaultKind::SplitPrimary => "split-primary",
            FaultKind::CutManagers => "cut-managers",
            FaultKind::TornTail => "torn-tail",
            FaultKind::BitRot => "bit-rot",
        }
    }

    pub fn parse(name: &str) -> Result<FaultKind, String> {
        FaultKind::ALL
            .into_iter()
            .chain(FaultKind::OPT_IN)
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = FaultKind::ALL
                    .iter()
                    .chain(&FaultKind::OPT_IN)
                    .map(|k| k.name())
                    .collect();
                format!("unknown fault {name:?}; known: {}", names.join(", "))
            })
    }

    /// Whether the fault strikes a storage node (or its network), rather than a manager alone.
    /// Only such faults may fail a slice over: a manager fault leaves every primary healthy.
    pub fn strikes_storage(self) -> bool {
        !matches!(
            self,
            FaultKind::KillLeader | FaultKind::KillFollower | FaultKind::HangLeader
        )
    }

    /// A comma-separated list of names.
    pub fn parse_list(list: &str) -> Result<Vec<FaultKind>, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(FaultKind::parse)
            .collect()
    }

    /// How long the fault is held, in milliseconds: hangs outlast the lease (plus the database's
    /// clock margin), kills and partitions are drawn on both sides of it.
    fn hold_ms(self, lease: Duration) -> (u64, u64) {
        let lease = lease.as_millis() as u64;
        match self {
            FaultKind::HangPrimary | FaultKind::HangSecondary | FaultKind::HangLeader => {
                (lease + 700, lease * 3)
            }
            FaultKind::TornTail | FaultKind::BitRot => (200, lease * 2),
            FaultKind::IsolateNode | FaultKind::SplitPrimary | FaultKind::CutManagers => {
                (1000, lease * 4)
            }
            _ => (500, lease * 3),
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One fault of the schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub kind: FaultKind,
    /// Chooses the target among the candidates at injection time (the slice, the role, the
    /// unit, where a torn tail is cut): `pick % candidates`.
    pub pick: u64,
    pub hold: Duration,
    /// Quiet time after the fault is healed and the cluster is whole again.
    pub pause: Duration,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} pick={} hold={}ms pause={}ms",
            self.kind,
            self.pick % 1000,
            self.hold.as_millis(),
            self.pause.as_millis()
        )
    }
}

/// The faults of a run, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub steps: Vec<Step>,
}

impl Schedule {
    /// Steps whose holds and pauses add up to at least `duration`. Kinds come in rounds: each
    /// round is every kind of `kinds` once, in an order drawn from the seed, so that a run long
    /// enough for one round injects every kind.
    pub fn generate(
        seed: u64,
        duration: Duration,
        kinds: &[FaultKind],
        lease: Duration,
    ) -> Schedule {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut steps = Vec::new();
        let mut planned = Duration::ZERO;
        let mut round = Vec::new();
        while planned < duration && !kinds.is_empty() {
            if round.is_empty() {
                round = kinds.to_vec();
                round.shuffle(&mut rng);
            }
            let kind = round.pop().expect("refilled above");
            let (low, high) = kind.hold_ms(lease);
            let step = Step {
                kind,
                pick: rng.random(),
                hold: Duration::from_millis(rng.random_range(low..=high)),
                pause: Duration::from_millis(rng.random_range(500..=2500)),
            };
            planned += step.hold + step.pause;
            steps.push(step);
        }
        Schedule { steps }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule_and_rounds_cover_every_kind() {
        let lease = Duration::from_secs(2);
        let a = Schedule::generate(7, Duration::from_secs(300), &FaultKind::ALL, lease);
        let b = Schedule::generate(7, Duration::from_secs(300), &FaultKind::ALL, lease);
        assert_eq!(a, b);
        assert_ne!(
            a,
            Schedule::generate(8, Duration::from_secs(300), &FaultKind::ALL, lease)
        );
        let first_round: std::collections::BTreeSet<FaultKind> = a.steps[..FaultKind::ALL.len()]
            .iter()
            .map(|s| s.kind)
            .collect();
        assert_eq!(first_round.len(), FaultKind::ALL.len());
        for step in &a.steps {
            if matches!(step.kind, FaultKind::HangPrimary | FaultKind::HangSecondary) {
                assert!(step.hold > lease, "a hang outlasts the lease: {step}");
            }
        }
    }

    #[test]
    fn fault_names_round_trip() {
        for kind in FaultKind::ALL {
            assert_eq!(FaultKind::parse(kind.name()), Ok(kind));
        }
        assert!(FaultKind::parse("kill-everything").is_err());
        assert_eq!(
            FaultKind::parse_list("torn-tail, kill-leader"),
            Ok(vec![FaultKind::TornTail, FaultKind::KillLeader])
        );
    }
}
