//! When each image is verified: its schedule (the `imagecatalog.dev/verify-schedule`
//! annotation, which the catalog sync writes from the entry or the catalog's default, or a
//! person sets by hand; else the daemon's default), plus a jitter fixed per image so that a
//! thousand images on one schedule do not start in the same second.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::api::catalog::keys;

/// The schedule expression that applies to an image, and where it came from.
pub fn schedule_of<'a>(annotations: &'a BTreeMap<String, String>, default: &'a str) -> &'a str {
    annotations
        .get(keys::VERIFY_SCHEDULE)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .unwrap_or(default)
}

/// The image's offset inside the jitter window: stable across restarts (a hash of its UID),
/// spread evenly over images.
pub fn jitter(uid: &str, window: Duration) -> Duration {
    let window_ms = window.as_millis() as u64;
    if window_ms == 0 {
        return Duration::ZERO;
    }
    let hash = Sha256::digest(uid.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    Duration::from_millis(u64::from_be_bytes(first) % window_ms)
}

/// The next run strictly after `after`: the schedule's next time, plus the jitter.
pub fn next_run(
    schedule: &crate::schedule::Schedule,
    after: DateTime<Utc>,
    jitter: Duration,
) -> Option<DateTime<Utc>> {
    // The fire time whose jittered run is still ahead: a run jittered past `after` from an
    // earlier fire time must not be skipped.
    let jitter = chrono::Duration::from_std(jitter).ok()?;
    schedule
        .after(&(after - jitter))
        .next()
        .map(|fire| fire + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_annotation_wins_over_the_default() {
        let mut annotations = BTreeMap::new();
        assert_eq!(schedule_of(&annotations, "0 3 * * *"), "0 3 * * *");
        annotations.insert(
            keys::VERIFY_SCHEDULE.to_string(),
            " 15 1 * * 0 ".to_string(),
        );
        assert_eq!(schedule_of(&annotations, "0 3 * * *"), "15 1 * * 0");
    }

    #[test]
    fn two_hundred_images_on_one_schedule_spread_over_the_window() {
        let window = Duration::from_secs(600);
        let mut offsets: Vec<u64> = (0..200)
            .map(|i| jitter(&format!("uid-{i}"), window).as_secs())
            .collect();
        assert!(offsets.iter().all(|o| *o < 600));
        // Every minute of the window gets some, none gets a crowd: ~20 per minute expected.
        let mut per_minute = [0u32; 10];
        for offset in &offsets {
            per_minute[(*offset / 60) as usize] += 1;
        }
        assert!(
            per_minute.iter().all(|n| (5..=40).contains(n)),
            "{per_minute:?}"
        );
        offsets.sort_unstable();
        offsets.dedup();
        assert!(offsets.len() > 150, "{} distinct seconds", offsets.len());
        // Stable: the same image gets the same offset after a restart.
        assert_eq!(jitter("uid-7", window), jitter("uid-7", window));
    }

    #[test]
    fn the_next_run_is_the_next_fire_time_plus_the_jitter() {
        let daily = crate::schedule::parse("0 3 * * *").unwrap();
        let at = |h, m| Utc.with_ymd_and_hms(2026, 12, 2, h, m, 0).unwrap();
        let five_minutes = Duration::from_secs(300);
        assert_eq!(next_run(&daily, at(1, 0), five_minutes), Some(at(3, 5)));
        // At 03:02 today's jittered run (03:05) is still ahead.
        assert_eq!(next_run(&daily, at(3, 2), five_minutes), Some(at(3, 5)));
        // After it, tomorrow's.
        assert_eq!(
            next_run(&daily, at(3, 5), five_minutes),
            Some(Utc.with_ymd_and_hms(2026, 12, 3, 3, 5, 0).unwrap())
        );
    }
}
