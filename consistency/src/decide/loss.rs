//! Accepting a loss: which copy of a slice that has no current copy serves again, as it is.
//!
//! A slice is left with no current copy when its only current copy lost records the database had
//! recorded for it (a primary whose disk lost a torn tail: it reports itself not current instead
//! of serving). Only an operator can decide that what no copy holds any more is gone; this says
//! which copy takes over and with which VBA, or why none can.

use vbs_wire::types::{NodeId, SliceIndex, UnitId, Vba};

use crate::state::{Command, Refusal, State};

/// The command that makes `node`'s copy (or, without one, the copy on an up node with the
/// highest VBA its node reported) of slice `index` of `volume` serve again, ending at the VBA its
/// node reported (`heard`).
pub fn accept_loss(
    state: &State,
    volume: &str,
    index: u32,
    node: Option<&NodeId>,
    heard: impl Fn(&NodeId, UnitId) -> Option<Vba>,
) -> Result<Command, Refusal> {
    let found = state
        .volume_by_name(volume)
        .ok_or_else(|| Refusal::NotFound(format!("volume {volume:?} does not exist")))?;
    let slice = found.slice(SliceIndex(index)).ok_or_else(|| {
        Refusal::NotFound(format!(
            "volume {volume:?} has {} slices; there is no slice {index}",
            found.slices.len()
        ))
    })?;
    let unit = UnitId {
        volume: found.id,
        slice: SliceIndex(index),
    };
    slice.check_no_current_copy(unit, volume)?;
    let (node, last_vba) = match node {
        Some(node) => {
            if slice.copy(node).is_none() {
                return Err(Refusal::NotFound(format!(
                    "node {node} holds no copy of slice {unit} of {volume}"
                )));
            }
            if !state.node_is_up(node) {
                return Err(Refusal::Conflict(format!(
                    "node {node} is not up: a copy serves again only on a node that is"
                )));
            }
            let vba = heard(node, unit).ok_or_else(|| {
                Refusal::Conflict(format!(
                    "node {node} has not reported its copy of slice {unit} to this leader yet; \
                     try again after its next heartbeat"
                ))
            })?;
            (node.clone(), vba)
        }
        None => slice
            .copies
            .iter()
            .filter(|c| state.node_is_up(&c.node))
            .filter_map(|c| heard(&c.node, unit).map(|vba| (c.node.clone(), vba)))
            .max_by_key(|(_, vba)| *vba)
            .ok_or_else(|| {
                Refusal::Conflict(format!(
                    "no copy of slice {unit} of {volume} is on an up node that reported it: start \
                     a node that holds one"
                ))
            })?,
    };
    Ok(Command::AcceptLoss {
        unit,
        expected_generation: slice.generation,
        node,
        last_vba,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use vbs_wire::api::NodeState;

    use super::*;
    use crate::state::apply::Touched;
    use crate::state::fixtures::{cluster, node, volume_on};
    use crate::state::Outcome;
    use vbs_wire::api::CopyStatus;

    fn apply(state: &mut State, command: Command) -> Outcome {
        let outcome = state.apply(&command, &mut Touched::default());
        state.check_invariants().expect("invariants hold");
        outcome
    }

    fn unit() -> UnitId {
        UnitId::new(1, 0)
    }

    /// A slice on n1 (primary) and n2, with no current copy: n1 reported itself not current, n2
    /// is stale.
    fn without_a_current_copy() -> State {
        let mut state = cluster(&["n1", "n2", "n3"]);
        volume_on(&mut state, "vol", &[&["n1", "n2"]]);
        let slice = state.slice_mut(unit()).expect("slice");
        for copy in &mut slice.copies {
            copy.status = CopyStatus::Stale;
            copy.last_vba = Vba(100);
        }
        state
    }

    #[test]
    fn the_copy_with_the_highest_reported_vba_on_an_up_node_takes_over_as_it_is() {
        let state = without_a_current_copy();
        let heard: BTreeMap<&str, Vba> = [("n1", Vba(90)), ("n2", Vba(95))].into();
        let command = accept_loss(&state, "vol", 0, None, |n, _| {
            heard.get(n.0.as_str()).copied()
        })
        .expect("a copy takes over");
        assert_eq!(
            command,
            Command::AcceptLoss {
                unit: unit(),
                expected_generation: state.slice(unit()).unwrap().generation,
                node: node("n2"),
                last_vba: Vba(95),
            }
        );
        let mut state = state;
        let generation = state.slice(unit()).unwrap().generation;
        assert_eq!(apply(&mut state, command.clone()), Outcome::Done);
        let slice = state.slice(unit()).unwrap();
        assert_eq!(slice.primary, node("n2"));
        assert_eq!(slice.generation.0, generation.0 + 1);
        let copy = slice.copy(&node("n2")).unwrap();
        assert_eq!((copy.status, copy.last_vba), (CopyStatus::Current, Vba(95)));
        assert_eq!(copy.accepted, Some((slice.generation, Vba(95))));
        assert_eq!(slice.copy(&node("n1")).unwrap().status, CopyStatus::Stale);
        // Applied again (a replay, or a second operator), it is refused: the generation moved.
        assert!(matches!(
            apply(&mut state, command),
            Outcome::Refused(Refusal::StaleGeneration { .. })
        ));
    }

    #[test]
    fn a_loss_is_refused_while_a_copy_is_current_or_when_the_named_copy_cannot_serve() {
        let mut state = cluster(&["n1", "n2", "n3"]);
        volume_on(&mut state, "vol", &[&["n1", "n2"]]);
        let heard = |_: &NodeId, _| Some(Vba(5));
        let current = accept_loss(&state, "vol", 0, None, heard).unwrap_err();
        assert!(
            current
                .to_string()
                .contains("has a current copy on node n1"),
            "{current}"
        );

        let mut state = without_a_current_copy();
        for (volume, index, named, expected) in [
            ("nope", 0, None, "does not exist"),
            ("vol", 3, None, "there is no slice 3"),
            ("vol", 0, Some("n3"), "node n3 holds no copy"),
        ] {
            let named = named.map(node);
            let refused = accept_loss(&state, volume, index, named.as_ref(), heard).unwrap_err();
            assert!(refused.to_string().contains(expected), "{refused}");
        }
        let unheard = accept_loss(&state, "vol", 0, Some(&node("n1")), |_, _| None).unwrap_err();
        assert!(
            unheard.to_string().contains("has not reported"),
            "{unheard}"
        );
        apply(
            &mut state,
            Command::SetNodeState {
                node: node("n1"),
                state: NodeState::Down,
                last_vbas: vec![],
            },
        );
        let down = accept_loss(&state, "vol", 0, Some(&node("n1")), heard).unwrap_err();
        assert!(down.to_string().contains("not up"), "{down}");
    }
}
