//! `vbs scrub NAME`: one scrub pass over a volume, slice by slice, on demand.

use std::sync::Arc;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use client::managers::Managers;
use client::proto::ScrubReport;
use client::size::format_size;
use client::types::SliceIndex;
use client::volume::{Volume, VolumeOptions};

use super::{exit, Exit};

#[derive(Debug, clap::Args)]
pub struct ScrubArgs {
    /// Volume name
    #[arg(value_parser = super::volume_name)]
    name: String,
}

pub async fn run(managers: Arc<Managers>, args: ScrubArgs) -> anyhow::Result<()> {
    let volume = Volume::open(managers, &args.name, VolumeOptions::default()).await?;
    let slices = volume.geometry().slice_count();
    let progress = ProgressBar::new(slices).with_style(
        ProgressStyle::with_template(
            "scrubbing {prefix}: slice {pos}/{len} {wide_msg} [{elapsed}]",
        )
        .context("progress style")?,
    );
    progress.set_prefix(format!("{:?}", args.name));
    let mut total = ScrubReport::default();
    for slice in 0..slices {
        let slice = SliceIndex(slice as u32);
        let report = volume
            .scrub(slice)
            .await
            .with_context(|| format!("scrubbing slice {} of {:?}", slice.0, args.name))?;
        add(&mut total, &report);
        progress.set_message(format!(
            "{} checked, {} damaged",
            format_size(total.bytes),
            total.damaged
        ));
        progress.inc(1);
    }
    progress.finish_and_clear();
    println!("{}", summary(&args.name, slices, &total));
    let unrepaired = total.damaged.saturating_sub(total.repaired);
    if unrepaired > 0 || total.mismatched > 0 {
        return Err(Exit {
            code: exit::FAILURE,
            message: format!(
                "scrub of {:?}: {unrepaired} damaged records could not be repaired and {} \
                 ranges differ between copies; see the storage nodes' logs",
                args.name, total.mismatched
            ),
        }
        .into());
    }
    Ok(())
}

fn add(total: &mut ScrubReport, report: &ScrubReport) {
    total.records += report.records;
    total.bytes += report.bytes;
    total.damaged += report.damaged;
    total.repaired += report.repaired;
    total.mismatched += report.mismatched;
    total.copies = total.copies.max(report.copies);
}

/// What a pass found, in two lines.
fn summary(name: &str, slices: u64, total: &ScrubReport) -> String {
    let checked = format!(
        "scrubbed {name:?}: {slices} slices, {} records ({}) read back over every copy",
        total.records,
        format_size(total.bytes)
    );
    let found = if total.damaged == 0 && total.mismatched == 0 {
        "found nothing wrong: every record passed its checksum and the copies agree".to_string()
    } else {
        format!(
            "found {} damaged records, repaired {}; {} ranges where copies disagree",
            total.damaged, total.repaired, total.mismatched
        )
    };
    format!("{checked}\n{found}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_what_was_read_and_what_was_found() {
        let clean = ScrubReport {
            records: 10,
            bytes: 41_600,
            copies: 1,
            ..ScrubReport::default()
        };
        assert_eq!(
            summary("db", 2, &clean),
            "scrubbed \"db\": 2 slices, 10 records (40.6k) read back over every copy\n\
             found nothing wrong: every record passed its checksum and the copies agree"
        );
        let damaged = ScrubReport {
            damaged: 2,
            repaired: 1,
            mismatched: 1,
            ..clean
        };
        assert!(summary("db", 2, &damaged)
            .ends_with("found 2 damaged records, repaired 1; 1 ranges where copies disagree"));
    }
}
