//! Placement of a new volume: each slice's copies on distinct `up` storage nodes that are not
//! draining and have room for it, the nodes with the smallest share of their capacity assigned
//! first (so nodes of equal size fill evenly, and a bigger node takes more), and each slice's
//! primary on the chosen node with the fewest primaries.
//!
//! The free space nodes report is a limit, not the order: nodes that share a filesystem all
//! report its free space, which moves with every write, and ordering by it piled units on
//! whichever node reported last.

use vbs_wire::api::MAX_SLICES_PER_VOLUME;
use vbs_wire::api::{CreateVolumeRequest, DEFAULT_REPLICAS, DEFAULT_SLICE_BYTES};
use vbs_wire::types::{check_name, NodeId, BLOCK_BYTES};

use crate::state::{slice_count, Command, Node, Refusal, State, MAX_COPIES_PER_SLICE};

/// Most copies of one slice a volume may ask for.
pub const MAX_REPLICAS: u32 = 5;

// Re-replication and drains add copies before removing those they replace.
const _: () = assert!(MAX_COPIES_PER_SLICE >= 2 * MAX_REPLICAS as usize);

/// The room `node` has for new units: what it last reported free (or registered with), but no
/// more than its capacity minus the units already assigned to it (some may not be written yet).
pub fn free_bytes(state: &State, node: &Node, reported: Option<u64>) -> u64 {
    let unassigned = node
        .capacity_bytes
        .saturating_sub(state.assigned_bytes(node));
    reported.unwrap_or(node.free_bytes).min(unassigned)
}

/// A create request after validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSpec {
    pub name: String,
    pub size_bytes: u64,
    pub slice_bytes: u64,
    pub replicas: u32,
}

/// Checks a create request on its own, before looking at the cluster.
pub fn validate(request: &CreateVolumeRequest) -> Result<VolumeSpec, Refusal> {
    check_name("volume name", &request.name).map_err(|e| Refusal::BadRequest(e.to_string()))?;
    let slice_bytes = request.slice_bytes.unwrap_or(DEFAULT_SLICE_BYTES);
    let replicas = request.replicas.unwrap_or(DEFAULT_REPLICAS);
    for (what, value) in [
        ("size_bytes", request.size_bytes),
        ("slice_bytes", slice_bytes),
    ] {
        if value == 0 || value % BLOCK_BYTES != 0 {
            return Err(Refusal::BadRequest(format!(
                "{what} must be a positive multiple of {BLOCK_BYTES}, got {value}"
            )));
        }
    }
    if slice_count(request.size_bytes, slice_bytes) > MAX_SLICES_PER_VOLUME {
        return Err(Refusal::BadRequest(format!(
            "a volume of {} bytes in slices of {slice_bytes} bytes has more than \
             {MAX_SLICES_PER_VOLUME} slices; use larger slices",
            request.size_bytes
        )));
    }
    if !(1..=MAX_REPLICAS).contains(&replicas) {
        return Err(Refusal::BadRequest(format!(
            "replicas must be between 1 and {MAX_REPLICAS}, got {replicas}"
        )));
    }
    Ok(VolumeSpec {
        name: request.name.clone(),
        size_bytes: request.size_bytes,
        slice_bytes,
        replicas,
    })
}

/// A node that may take new copies, as placement counts it.
struct Candidate {
    free_bytes: u64,
    capacity_bytes: u64,
    assigned_bytes: u64,
    units: usize,
    primaries: usize,
    id: NodeId,
}

/// Every `up` node that is not draining, with its room and load. `reported_free(node)` is the
/// free space the node last reported, when the leader has heard one.
fn candidates(state: &State, reported_free: impl Fn(&NodeId) -> Option<u64>) -> Vec<Candidate> {
    state
        .nodes
        .values()
        .filter(|n| state.node_takes_copies(&n.id))
        .map(|n| Candidate {
            free_bytes: free_bytes(state, n, reported_free(&n.id)),
            capacity_bytes: n.capacity_bytes,
            assigned_bytes: state.assigned_bytes(n),
            units: n.units.len(),
            primaries: state.primaries_on(n),
            id: n.id.clone(),
        })
        .collect()
}

/// Places one list of `replicas` nodes, primary first, for each slice of `unit_bytes`
/// (`(index, bytes)`). Candidates are updated as slices are placed so that the copies of one
/// volume spread instead of piling on the emptiest node, and its primaries spread over the
/// nodes chosen.
fn place_slices(
    candidates: &mut [Candidate],
    replicas: u32,
    unit_bytes: impl Iterator<Item = (u64, u64)>,
) -> Result<Vec<Vec<NodeId>>, Refusal> {
    if candidates.len() < replicas as usize {
        return Err(Refusal::InsufficientNodes(format!(
            "{replicas} replicas need {replicas} storage nodes up and not draining, but {} are \
             up and not draining",
            candidates.len()
        )));
    }
    let mut placement = Vec::new();
    for (index, unit_bytes) in unit_bytes {
        candidates.sort_by(|a, b| {
            // a.assigned / a.capacity < b.assigned / b.capacity, without division.
            let share = |c: &Candidate, other: &Candidate| {
                u128::from(c.assigned_bytes) * u128::from(other.capacity_bytes.max(1))
            };
            share(a, b)
                .cmp(&share(b, a))
                .then(a.units.cmp(&b.units))
                .then(b.free_bytes.cmp(&a.free_bytes))
                .then(a.id.cmp(&b.id))
        });
        // Nodes without room for the slice are passed over (a stable sort keeps the order).
        candidates.sort_by_key(|c| c.free_bytes < unit_bytes);
        let chosen = &mut candidates[..replicas as usize];
        if let Some(short) = chosen.iter().find(|c| c.free_bytes < unit_bytes) {
            return Err(Refusal::InsufficientNodes(format!(
                "not enough free capacity: slice {index} needs {unit_bytes} bytes on {replicas} \
                 distinct nodes, and node {} (among the roomiest up nodes) has {}{}",
                short.id,
                short.free_bytes,
                if short.free_bytes == 0 {
                    " (a node whose devices are past the managers' --full-percent takes no new \
                     copies)"
                } else {
                    ""
                }
            )));
        }
        chosen.sort_by(|a, b| {
            a.primaries
                .cmp(&b.primaries)
                .then(b.free_bytes.cmp(&a.free_bytes))
                .then(a.id.cmp(&b.id))
        });
        chosen[0].primaries += 1;
        for c in chosen.iter_mut() {
            c.free_bytes -= unit_bytes;
            c.assigned_bytes += unit_bytes;
            c.units += 1;
        }
        placement.push(chosen.iter().map(|c| c.id.clone()).collect());
    }
    Ok(placement)
}

/// The bytes of slice `index` of a volume of `size_bytes` in slices of `slice_bytes`.
fn unit_bytes(size_bytes: u64, slice_bytes: u64, index: u64) -> u64 {
    (size_bytes - index * slice_bytes).min(slice_bytes)
}

/// Decides where every slice of `spec` goes. `reported_free(node)` is the free space the node
/// last reported, when the leader has heard one.
pub fn place(
    state: &State,
    spec: &VolumeSpec,
    reported_free: impl Fn(&NodeId) -> Option<u64>,
) -> Result<Command, Refusal> {
    if state.volume_by_name(&spec.name).is_some() {
        return Err(Refusal::AlreadyExists(format!(
            "volume {:?} already exists",
            spec.name
        )));
    }
    let count = slice_count(spec.size_bytes, spec.slice_bytes);
    let sizes = (0..count).map(|i| (i, unit_bytes(spec.size_bytes, spec.slice_bytes, i)));
    let placement = place_slices(&mut candidates(state, reported_free), spec.replicas, sizes)?;
    Ok(Command::CreateVolume {
        name: spec.name.clone(),
        size_bytes: spec.size_bytes,
        slice_bytes: spec.slice_bytes,
        replicas: spec.replicas,
        placement,
    })
}

/// Decides how volume `name` grows to `size_bytes`: its last slice grows to its full size if it
/// was shorter (on the nodes that hold it), and new slices are placed as a new volume's are.
/// `Ok(None)`: the volume already has that size. A volume never shrinks: its blocks past the
/// new end would be lost, and a filesystem on it broken.
pub fn grow(
    state: &State,
    name: &str,
    size_bytes: u64,
    reported_free: impl Fn(&NodeId) -> Option<u64>,
) -> Result<Option<Command>, Refusal> {
    let volume = state
        .volume_by_name(name)
        .ok_or_else(|| Refusal::NotFound(format!("volume {name:?} does not exist")))?;
    if size_bytes == 0 || size_bytes % BLOCK_BYTES != 0 {
        return Err(Refusal::BadRequest(format!(
            "size_bytes must be a positive multiple of {BLOCK_BYTES}, got {size_bytes}"
        )));
    }
    if size_bytes < volume.size_bytes {
        return Err(Refusal::BadRequest(format!(
            "volume {name:?} is {} bytes; it cannot shrink to {size_bytes} (volumes only grow: \
             the blocks past the new end would be lost)",
            volume.size_bytes
        )));
    }
    if size_bytes == volume.size_bytes {
        return Ok(None);
    }
    let (old_count, new_count) = (
        slice_count(volume.size_bytes, volume.slice_bytes),
        slice_count(size_bytes, volume.slice_bytes),
    );
    if new_count > MAX_SLICES_PER_VOLUME {
        return Err(Refusal::BadRequest(format!(
            "a volume of {size_bytes} bytes in slices of {} bytes has more than \
             {MAX_SLICES_PER_VOLUME} slices",
            volume.slice_bytes
        )));
    }
    let mut candidates = candidates(state, reported_free);
    // The last slice grows where it is: its nodes need the room for its new bytes.
    let last = old_count - 1;
    let grown_by = unit_bytes(size_bytes, volume.slice_bytes, last)
        - unit_bytes(volume.size_bytes, volume.slice_bytes, last);
    if grown_by > 0 {
        let slice = &volume.slices[last as usize];
        for copy in &slice.copies {
            if let Some(c) = candidates.iter_mut().find(|c| c.id == copy.node) {
                if c.free_bytes < grown_by {
                    return Err(Refusal::InsufficientNodes(format!(
                        "not enough free capacity: slice {last} grows by {grown_by} bytes on \
                         node {}, which has {}",
                        c.id, c.free_bytes
                    )));
                }
                c.free_bytes -= grown_by;
            }
        }
    }
    let sizes = (old_count..new_count).map(|i| (i, unit_bytes(size_bytes, volume.slice_bytes, i)));
    let placement = if new_count > old_count {
        place_slices(&mut candidates, volume.replicas, sizes)?
    } else {
        Vec::new()
    };
    Ok(Some(Command::ResizeVolume {
        name: name.to_string(),
        size_bytes,
        placement,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::apply::Touched;
    use crate::state::fixtures::{cluster, node};
    use crate::state::Outcome;
    use vbs_wire::api::NodeState;
    use vbs_wire::types::SliceIndex;

    fn request(size_bytes: u64, replicas: u32, slice_bytes: u64) -> CreateVolumeRequest {
        CreateVolumeRequest {
            name: "vol".into(),
            size_bytes,
            replicas: Some(replicas),
            slice_bytes: Some(slice_bytes),
        }
    }

    fn placement_of(command: Command) -> Vec<Vec<NodeId>> {
        match command {
            Command::CreateVolume { placement, .. } => placement,
            other => panic!("not a create: {other:?}"),
        }
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let cases = [
            (request(0, 2, 4096), "size_bytes"),
            (request(4097, 2, 4096), "size_bytes"),
            (request(8192, 2, 100), "slice_bytes"),
            (request(8192, 0, 4096), "replicas"),
            (request(8192, 9, 4096), "replicas"),
            (
                request(4096 * (MAX_SLICES_PER_VOLUME + 1), 1, 4096),
                "slices",
            ),
            (
                CreateVolumeRequest {
                    name: "a/b".into(),
                    ..request(4096, 1, 4096)
                },
                "volume name",
            ),
        ];
        for (req, word) in cases {
            let err = validate(&req).expect_err("must be refused");
            assert!(matches!(err, Refusal::BadRequest(_)), "{err:?}");
            assert!(
                err.to_string().contains(word),
                "{err} should mention {word}"
            );
        }
    }

    #[test]
    fn copies_land_on_distinct_up_nodes_with_room() {
        let mut state = cluster(&["n1", "n2", "n3", "n4", "n5"]);
        state.nodes.get_mut(&node("n4")).expect("n4").state = NodeState::Down;
        state.nodes.get_mut(&node("n5")).expect("n5").draining = true;
        let spec = validate(&request(6 * 4096, 2, 4096)).expect("valid");
        let free = |id: &NodeId| (id == &node("n3")).then_some(4095);
        let placement = placement_of(place(&state, &spec, free).expect("placed"));
        assert_eq!(placement.len(), 6);
        for nodes in &placement {
            assert_eq!(nodes.len(), 2);
            assert_ne!(nodes[0], nodes[1], "copies of a slice on distinct nodes");
            assert!(!nodes.contains(&node("n4")), "never on a down node");
            assert!(!nodes.contains(&node("n5")), "never on a draining node");
        }
        // n3 reported less free space than a slice takes, so the two roomy nodes take every
        // slice.
        assert!(
            placement.iter().all(|s| !s.contains(&node("n3"))),
            "{placement:?}"
        );
        let primaries_on_n1 = placement.iter().filter(|s| s[0] == node("n1")).count();
        assert_eq!(
            primaries_on_n1, 3,
            "primaries spread over the chosen nodes: {placement:?}"
        );
    }

    /// Creates `count` volumes of one slice, one after another as the API does, with every
    /// node reporting `free` (nodes sharing one filesystem report the same).
    fn create_many(state: &mut State, count: usize, replicas: u32, free: u64) {
        for i in 0..count {
            let mut spec = validate(&request(4096, replicas, 4096)).expect("valid");
            spec.name = format!("v{i}");
            let command = place(state, &spec, |_| Some(free)).expect("placed");
            assert!(matches!(
                state.apply(&command, &mut Touched::default()),
                Outcome::VolumeCreated(_)
            ));
        }
    }

    fn units_and_primaries(state: &State) -> Vec<(usize, usize)> {
        state
            .nodes
            .values()
            .map(|n| (n.units.len(), state.primaries_on(n)))
            .collect()
    }

    #[test]
    fn nodes_of_equal_size_get_equal_units_and_primaries() {
        for (nodes, replicas) in [(4, 2), (5, 3), (3, 2)] {
            let names: Vec<String> = (1..=nodes).map(|i| format!("n{i}")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let mut state = cluster(&names);
            create_many(&mut state, 60 * nodes, replicas, 1 << 30);
            let spread = units_and_primaries(&state);
            let units = 60 * replicas as usize;
            for (held, primaries) in &spread {
                assert_eq!(*held, units, "{nodes} nodes, {replicas} copies: {spread:?}");
                assert_eq!(
                    *primaries, 60,
                    "{nodes} nodes, {replicas} copies: {spread:?}"
                );
            }
        }
    }

    #[test]
    fn a_node_added_later_takes_new_units_until_it_holds_its_share() {
        let mut state = cluster(&["n1", "n2", "n3"]);
        create_many(&mut state, 30, 2, 1 << 30);
        let command = Command::RegisterNode {
            id: node("n4"),
            addr: "n4:7000".into(),
            capacity_bytes: 1 << 30,
            free_bytes: 1 << 30,
            devices: None,
        };
        state.apply(&command, &mut Touched::default());
        let mut spec = validate(&request(4096, 2, 4096)).expect("valid");
        spec.name = "new".into();
        let placement = placement_of(place(&state, &spec, |_| Some(1 << 30)).expect("placed"));
        assert!(placement[0].contains(&node("n4")), "{placement:?}");
    }

    #[test]
    fn a_bigger_node_takes_units_in_proportion_to_its_size() {
        let mut state = cluster(&["n1", "n2", "n3"]);
        state.nodes.get_mut(&node("n3")).expect("n3").capacity_bytes = 2 << 30;
        create_many(&mut state, 120, 1, 1 << 30);
        let held: Vec<usize> = units_and_primaries(&state).iter().map(|u| u.0).collect();
        assert_eq!(held, [30, 30, 60]);
    }

    #[test]
    fn too_few_up_nodes_or_too_little_space_is_refused_clearly() {
        let mut state = cluster(&["n1", "n2", "n3"]);
        state.nodes.get_mut(&node("n3")).expect("n3").state = NodeState::Down;
        let spec = validate(&request(4096, 3, 4096)).expect("valid");
        let err = place(&state, &spec, |_| None).expect_err("only two up");
        assert!(err.to_string().contains("2 are up"), "{err}");

        let spec = validate(&request(2 << 30, 2, 1 << 30)).expect("valid");
        let err = place(&state, &spec, |_| None).expect_err("nodes hold 1 GiB each");
        assert!(matches!(err, Refusal::InsufficientNodes(_)), "{err:?}");
        assert!(err.to_string().contains("free capacity"), "{err}");
    }

    #[test]
    fn a_volume_grows_with_its_last_slice_filled_and_new_slices_placed() {
        let mut state = cluster(&["n1", "n2", "n3"]);
        // 6 blocks in slices of 4: the last slice holds 2.
        let spec = validate(&request(6 * 4096, 2, 4 * 4096)).expect("valid");
        let command = place(&state, &spec, |_| None).expect("placed");
        state.apply(&command, &mut Touched::default());
        assert!(grow(&state, "vol", 6 * 4096, |_| None)
            .expect("same size")
            .is_none());
        let shrink = grow(&state, "vol", 4096, |_| None).expect_err("never shrinks");
        assert!(shrink.to_string().contains("cannot shrink"), "{shrink}");
        let odd = grow(&state, "vol", 4097 * 8, |_| None).expect_err("not whole blocks");
        assert!(odd.to_string().contains("multiple of 4096"), "{odd}");
        let missing = grow(&state, "nope", 8192, |_| None).expect_err("no such volume");
        assert!(matches!(missing, Refusal::NotFound(_)), "{missing:?}");

        let command = grow(&state, "vol", 13 * 4096, |_| None)
            .expect("grows")
            .expect("a change");
        match &command {
            Command::ResizeVolume { placement, .. } => {
                assert_eq!(placement.len(), 2, "slices 2 and 3 are new: {placement:?}");
                assert!(placement.iter().all(|nodes| nodes.len() == 2));
            }
            other => panic!("not a resize: {other:?}"),
        }
        let before = state.volume_by_name("vol").expect("volume").clone();
        let mut touched = Touched::default();
        state.apply(&command, &mut touched);
        state.check_invariants().expect("consistent");
        let after = state.volume_by_name("vol").expect("volume");
        assert_eq!(after.size_bytes, 13 * 4096);
        assert_eq!(after.slices.len(), 4);
        assert_eq!(after.slices[..2], before.slices[..], "old slices unchanged");
        assert_eq!(
            after.unit_bytes(SliceIndex(1)),
            4 * 4096,
            "the last slice is whole"
        );
        assert_eq!(after.unit_bytes(SliceIndex(3)), 4096);
        assert!(touched.volumes.contains(&after.id));
        // Applying the same decision again (a stale proposal) changes nothing.
        let again = state.apply(&command, &mut Touched::default());
        assert!(matches!(again, Outcome::Refused(_)), "{again:?}");
    }

    #[test]
    fn placement_applies_and_counts_assigned_space() {
        let mut state = cluster(&["n1", "n2"]);
        let spec = validate(&request(1 << 29, 2, 1 << 29)).expect("valid");
        let command = place(&state, &spec, |_| None).expect("placed");
        state.apply(&command, &mut Touched::default());
        state.check_invariants().expect("consistent");
        let second = VolumeSpec {
            name: "two".into(),
            size_bytes: 1 << 30,
            ..spec
        };
        let err = place(&state, &second, |_| None).expect_err("half of each node is taken");
        assert!(matches!(err, Refusal::InsufficientNodes(_)), "{err:?}");
        let taken = place(
            &state,
            &VolumeSpec {
                name: "vol".into(),
                ..second
            },
            |_| None,
        );
        assert!(matches!(taken, Err(Refusal::AlreadyExists(_))), "{taken:?}");
    }
}
