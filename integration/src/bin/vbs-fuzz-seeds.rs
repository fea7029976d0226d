//! `vbs-fuzz-seeds DIR`: writes the seed inputs of every fuzz target (`integration::fuzzing`)
//! into `DIR/TARGET/seed-N`, the corpus directories `cargo fuzz` starts from (`.ci/fuzz`).

use std::path::PathBuf;
use std::process::ExitCode;

use integration::fuzzing::TARGETS;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: vbs-fuzz-seeds DIR");
        return ExitCode::from(2);
    };
    for target in TARGETS {
        let target_dir = dir.join(target.name);
        let written = std::fs::create_dir_all(&target_dir).and_then(|()| {
            for (i, seed) in (target.seeds)().iter().enumerate() {
                std::fs::write(target_dir.join(format!("seed-{i}")), seed)?;
            }
            Ok(())
        });
        if let Err(e) = written {
            eprintln!("vbs-fuzz-seeds: writing {}: {e}", target_dir.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
