//! Human sizes on the command line: `4096`, `4k`, `64M`, `1G`, `2T` (binary multiples, so `1k` is
//! 1024 bytes), and durations such as `10s`, `500ms`, `2m`.

use std::time::Duration;

/// Parses a size such as `4k`, `64M`, `1G` or a plain byte count. Suffixes are binary multiples
/// and may be written in either case, with an optional trailing `B` or `iB` (`64MiB`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!(
            "size {text:?} does not start with a number (try 4k, 64M, 1G)"
        ));
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("size {text:?} is too large"))?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "size {text:?} has an unknown suffix {suffix:?} (use k, M, G or T, e.g. 64M)"
            ))
        }
    };
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Formats a byte count with the largest binary suffix that keeps it readable: `1.5G`, `64M`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("T", 1 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("k", 1 << 10),
    ];
    for (suffix, unit) in UNITS {
        if bytes >= unit {
            let value = bytes as f64 / unit as f64;
            return if bytes % unit == 0 {
                format!("{}{suffix}", bytes / unit)
            } else {
                format!("{value:.1}{suffix}")
            };
        }
    }
    format!("{bytes}")
}

/// Parses a duration such as `10s`, `500ms`, `2m`, `1h`, `7d`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(digits_end);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("duration {text:?} does not start with a number (try 10s, 500ms)"))?;
    match suffix {
        "" | "s" => Ok(Duration::from_secs(value)),
        "ms" => Ok(Duration::from_millis(value)),
        "m" | "min" => Ok(Duration::from_secs(value * 60)),
        "h" => Ok(Duration::from_secs(value * 3600)),
        "d" => Ok(Duration::from_secs(value * 24 * 3600)),
        _ => Err(format!(
            "duration {text:?} has an unknown unit {suffix:?} (use ms, s, m, h or d)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
    }

    #[test]
    fn bad_sizes_say_what_is_wrong() {
        assert!(parse_size("1Gx").unwrap_err().contains("unknown suffix"));
        assert!(parse_size("G")
            .unwrap_err()
            .contains("does not start with a number"));
        assert!(parse_size("99999999999999T")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn sizes_format_readably() {
        assert_eq!(format_size(512), "512");
        assert_eq!(format_size(4096), "4k");
        assert_eq!(format_size(1 << 30), "1G");
        assert_eq!(format_size(3 << 29), "1.5G");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2 days").is_err());
    }
}
