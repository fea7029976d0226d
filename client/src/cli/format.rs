//! Figures as people read them: sizes, latencies, ages.

use client::api::ResyncProgress;
use client::size::format_size;

/// `4k`, `1G`, or plain bytes below 1 KiB.
pub fn size(bytes: u64) -> String {
    format_size(bytes)
}

/// A latency in microseconds: `850us`, `1.25ms`, `2.50s`.
pub fn latency_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// How long ago, from milliseconds: `350ms`, `4.2s`, `3m10s`.
pub fn age_ms(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1e3)
    } else {
        format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1_000)
    }
}

/// How long ago, coarsely, from milliseconds: `40s ago`, `12m ago`, `5h ago`, `3d ago`.
pub fn ago(ms: u64) -> String {
    let secs = ms / 1_000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3_600 => format!("{}m ago", secs / 60),
        3_600..86_400 => format!("{}h ago", secs / 3_600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// How far a resync has got, by bytes (by records when it reports no bytes): `45%`. Rounded
/// down, so `100%` means done.
pub fn percent(progress: &ResyncProgress) -> String {
    let (done, total) = if progress.bytes_total > 0 {
        (progress.bytes_done, progress.bytes_total)
    } else {
        (progress.records_done, progress.records_total)
    };
    let percent = if total == 0 {
        if progress.finished {
            100
        } else {
            0
        }
    } else {
        (u128::from(done) * 100 / u128::from(total)).min(100)
    };
    format!("{percent}%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_progress_reads_as_a_percentage_rounded_down() {
        let progress =
            |bytes_done, bytes_total, records_done, records_total, finished| ResyncProgress {
                records_done,
                records_total,
                bytes_done,
                bytes_total,
                full: false,
                finished,
            };
        assert_eq!(percent(&progress(999, 1000, 0, 0, false)), "99%");
        assert_eq!(percent(&progress(0, 0, 3, 4, false)), "75%");
        assert_eq!(percent(&progress(0, 0, 0, 0, false)), "0%");
        assert_eq!(percent(&progress(0, 0, 0, 0, true)), "100%");
        assert_eq!(percent(&progress(u64::MAX, 10, 0, 0, false)), "100%");
    }

    #[test]
    fn latencies_pick_a_readable_unit() {
        assert_eq!(latency_us(850), "850us");
        assert_eq!(latency_us(1250), "1.25ms");
        assert_eq!(latency_us(2_500_000), "2.50s");
    }

    #[test]
    fn ages_pick_a_readable_unit() {
        assert_eq!(age_ms(350), "350ms");
        assert_eq!(age_ms(4_200), "4.2s");
        assert_eq!(age_ms(190_000), "3m10s");
    }
}
