//! Human sizes on the command line: `4096`, `4k`, `64M`, `1G`, `2T` (binary multiples, so `1k` is
//! 1024 bytes), and durations such as `10s`, `500ms`, `2m`.

use std::time::Duration;

/// A size that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("size {0:?} does not start with a number (try 4k, 64M, 1G)")]
    NoNumber(String),
    #[error("size {0:?} is too large")]
    TooLarge(String),
    #[error("size {text:?} has an unknown suffix {suffix:?} (use k, M, G or T, e.g. 64M)")]
    UnknownSuffix { text: String, suffix: String },
}

/// A duration that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration {0:?} does not start with a number (try 10s, 500ms)")]
    NoNumber(String),
    #[error("duration {0:?} is too long")]
    TooLong(String),
    #[error("duration {text:?} has an unknown unit {suffix:?} (use ms, s, m, h or d)")]
    UnknownUnit { text: String, suffix: String },
}

/// Parses a size such as `4k`, `64M`, `1G` or a plain byte count. Suffixes are binary multiples
/// and may be written in either case, with an optional trailing `B` or `iB` (`64MiB`).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let s = text.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::NoNumber(text.to_string()));
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| SizeError::TooLarge(text.to_string()))?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(SizeError::UnknownSuffix {
                text: text.to_string(),
                suffix: suffix.to_string(),
            })
        }
    };
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| SizeError::TooLarge(text.to_string()))
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
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(digits_end);
    let value: u64 = digits
        .parse()
        .map_err(|_| DurationError::NoNumber(text.to_string()))?;
    let seconds = |unit: u64| {
        value
            .checked_mul(unit)
            .map(Duration::from_secs)
            .ok_or_else(|| DurationError::TooLong(text.to_string()))
    };
    match suffix {
        "" | "s" => seconds(1),
        "ms" => Ok(Duration::from_millis(value)),
        "m" | "min" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(24 * 3600),
        _ => Err(DurationError::UnknownUnit {
            text: text.to_string(),
            suffix: suffix.to_string(),
        }),
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
        let error = parse_size("1Gx").unwrap_err();
        assert!(
            matches!(error, SizeError::UnknownSuffix { .. }),
            "{error:?}"
        );
        assert!(
            error.to_string().contains("unknown suffix \"Gx\""),
            "{error}"
        );
        let error = parse_size("G").unwrap_err();
        assert_eq!(error, SizeError::NoNumber("G".into()));
        assert!(error.to_string().contains("does not start with a number"));
        let error = parse_size("99999999999999T").unwrap_err();
        assert_eq!(error, SizeError::TooLarge("99999999999999T".into()));
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
        assert!(matches!(
            parse_duration("2 days"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert_eq!(
            parse_duration("99999999999999999d"),
            Err(DurationError::TooLong("99999999999999999d".into()))
        );
    }
}
