//! How an import's progress reads to a person: binary sizes, percentages and speeds. Pure.

use std::time::Duration;

/// A byte count with a binary suffix and one decimal, as the platform shows sizes:
/// `512B`, `1Ki`, `199.5Mi`, `2.2Gi`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    // Rounding can carry into the next unit (1023.96Ki reads as 1024.0Ki): move up then.
    if (value * 10.0).round() >= 10240.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text}{}", UNITS[unit])
}

/// A speed in bytes per second, as `12.3Mi/s`.
pub fn human_speed(bytes_per_second: u64) -> String {
    format!("{}/s", human_size(bytes_per_second))
}

/// Progress while in flight: one decimal, and never `100` before the image is Ready (the
/// last steps, checksums and tagging, still have to pass).
pub fn in_flight_percent(done: u64, total: u64) -> String {
    if total == 0 {
        return "0.0%".to_string();
    }
    let permille = (done.min(total) as u128 * 1000 / total as u128) as u64;
    let permille = permille.min(999);
    format!("{}.{}%", permille / 10, permille % 10)
}

/// The progress of a Ready image.
pub const DONE_PERCENT: &str = "100%";

/// Keeps a reported percentage from moving backwards within one import (a resumed or retried
/// download must not make `kubectl get cvi -w` jump back). Compares the numbers, not the
/// strings. A transfer that starts over after the daemon restarted is not held at the old
/// value: its import starts from `status::starting_point`, which drops it.
pub fn never_backwards(previous: Option<&str>, next: String) -> String {
    let parse = |text: &str| text.trim_end_matches('%').parse::<f64>().ok();
    match (previous.and_then(parse), parse(&next)) {
        (Some(before), Some(now)) if now < before => previous.unwrap_or_default().to_string(),
        _ => next,
    }
}

/// Average and current download speed from two samples of the received byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Speed {
    pub average: u64,
    pub current: u64,
}

/// Speeds from the bytes received since the start and since the previous sample.
pub fn speed(
    total_bytes: u64,
    since_start: Duration,
    window_bytes: u64,
    window: Duration,
) -> Speed {
    let per_second = |bytes: u64, elapsed: Duration| {
        let seconds = elapsed.as_secs_f64();
        if seconds <= 0.0 {
            0
        } else {
            (bytes as f64 / seconds) as u64
        }
    };
    Speed {
        average: per_second(total_bytes, since_start),
        current: per_second(window_bytes, window),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_the_platform_shows_them() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(1023), "1023B");
        assert_eq!(human_size(1024), "1Ki");
        assert_eq!(human_size(1536), "1.5Ki");
        assert_eq!(human_size(209_190_912), "199.5Mi");
        assert_eq!(human_size(2_361_393_152), "2.2Gi");
        assert_eq!(human_size(1024 * 1024 - 1), "1Mi");
        assert_eq!(human_speed(10 * 1024 * 1024), "10Mi/s");
    }

    #[test]
    fn progress_has_one_decimal_and_stays_below_100_until_ready() {
        assert_eq!(in_flight_percent(0, 100), "0.0%");
        assert_eq!(in_flight_percent(282, 1000), "28.2%");
        assert_eq!(in_flight_percent(999_999, 1_000_000), "99.9%");
        assert_eq!(in_flight_percent(1000, 1000), "99.9%");
        assert_eq!(in_flight_percent(5000, 1000), "99.9%");
        assert_eq!(in_flight_percent(0, 0), "0.0%");
    }

    #[test]
    fn progress_never_moves_backwards() {
        assert_eq!(never_backwards(Some("28.2%"), "3.0%".into()), "28.2%");
        assert_eq!(never_backwards(Some("28.2%"), "30.0%".into()), "30.0%");
        assert_eq!(never_backwards(Some("9.5%"), "10.0%".into()), "10.0%");
        assert_eq!(never_backwards(None, "0.0%".into()), "0.0%");
    }

    #[test]
    fn speeds_come_from_totals_and_windows() {
        let s = speed(
            100 * 1024 * 1024,
            Duration::from_secs(10),
            30 * 1024 * 1024,
            Duration::from_secs(2),
        );
        assert_eq!(human_speed(s.average), "10Mi/s");
        assert_eq!(human_speed(s.current), "15Mi/s");
        assert_eq!(
            speed(5, Duration::ZERO, 5, Duration::ZERO),
            Speed {
                average: 0,
                current: 0
            }
        );
    }
}
