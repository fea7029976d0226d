//! Figures as people read them: sizes, latencies, ages.

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

#[cfg(test)]
mod tests {
    use super::*;

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
