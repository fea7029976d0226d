//! Mutation fuzzing of every decoder that reads bytes from outside: data-plane frames, log records,
//! recovery of a unit from damaged segment files, and NBD requests (the targets and their checks
//! are `integration::fuzzing`). Each target starts from its seed inputs, mutates them (bit flips,
//! random bytes, cuts, extensions, splices, interesting integers) and runs the target's check,
//! which fails when the decoder panics or accepts something inconsistent.
//!
//! Each target runs for `VBS_FUZZ_SECONDS` (default 2) from seed `VBS_FUZZ_SEED` (default random,
//! printed). For hours of coverage-guided fuzzing of the same targets, see `.ci/fuzz`.

use std::time::{Duration, Instant};

use integration::fuzzing::{Target, TARGETS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn budget() -> Duration {
    let seconds = std::env::var("VBS_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(seconds)
}

/// A seeded generator, its seed printed so a failure can be replayed.
fn rng(target: &str) -> StdRng {
    let seed = std::env::var("VBS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("fuzz {target}: seed {seed} (replay: VBS_FUZZ_SEED={seed} cargo test -p integration --test fuzz {target})");
    StdRng::seed_from_u64(seed)
}

/// One random mutation of `input`.
fn mutate(rng: &mut StdRng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    let rounds = rng.random_range(1..=4);
    for _ in 0..rounds {
        match rng.random_range(0..7) {
            0 if !out.is_empty() => {
                let i = rng.random_range(0..out.len());
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !out.is_empty() => {
                let i = rng.random_range(0..out.len());
                out[i] = rng.random();
            }
            2 if !out.is_empty() => {
                let cut = rng.random_range(0..out.len());
                out.truncate(cut);
            }
            3 => {
                let extra = rng.random_range(1..64);
                out.extend((0..extra).map(|_| rng.random::<u8>()));
            }
            4 => {
                let other = &corpus[rng.random_range(0..corpus.len())];
                let at = rng.random_range(0..=out.len());
                let from = rng.random_range(0..=other.len());
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            5 if out.len() >= 8 => {
                // An interesting integer somewhere: lengths and counts are where decoders break.
                let i = rng.random_range(0..out.len() - 4);
                let value: u32 = [0, 1, 0xff, 0xffff, 0x7fff_ffff, u32::MAX, 4096, 1 << 20]
                    [rng.random_range(0..8)];
                out[i..i + 4].copy_from_slice(&value.to_le_bytes());
            }
            _ => {
                let i = rng.random_range(0..=out.len());
                out.insert(i, rng.random());
            }
        }
    }
    out
}

/// Runs the target named `name` for the time budget: mutations of its seeds, and of inputs
/// derived from them, each through the target's check.
fn fuzz(name: &str) {
    let target: &Target = TARGETS
        .iter()
        .find(|t| t.name == name)
        .expect("a known target");
    let mut rng = rng(name);
    let corpus = (target.seeds)();
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < budget() {
        let pick = rng.random_range(0..corpus.len());
        let input = mutate(&mut rng, &corpus[pick], &corpus);
        (target.check)(&input);
        runs += 1;
    }
    println!("fuzz {name}: {runs} inputs");
}

#[test]
fn data_plane_frames() {
    fuzz("data_plane_frames");
}

#[test]
fn log_records() {
    fuzz("log_records");
}

#[test]
fn recovery_of_damaged_segments() {
    fuzz("recovery_of_damaged_segments");
}

#[test]
fn nbd_requests() {
    fuzz("nbd_requests");
}
