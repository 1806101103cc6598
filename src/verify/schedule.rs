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

/// How often the two checks of one image come.
#[derive(Clone, Copy, Debug)]
pub struct Cadence {
    /// Runs of one schedule spread over this window.
    pub jitter_window: Duration,
    /// How often the manifest is looked for.
    pub presence_interval: Duration,
}

/// What the scheduler knows of one image between its ticks.
#[derive(Debug)]
pub struct Entry {
    /// The image's name, which its metrics carry.
    pub image: String,
    uid: String,
    schedule: String,
    parsed: Option<crate::schedule::Schedule>,
    next: Option<DateTime<Utc>>,
    running: bool,
    presence_next: DateTime<Utc>,
}

/// What one tick does for one image.
#[derive(Debug, Default, PartialEq)]
pub struct Tick {
    /// The schedule just changed to one that does not parse: say so on the image, once.
    pub invalid_schedule: Option<String>,
    /// Look for the image's manifest in DVCR.
    pub check_presence: bool,
    /// Verify the image's bytes; the entry counts as running until [`Entry::verified`].
    pub verify: bool,
}

impl Entry {
    /// A new image's entry: its presence checks spread over their interval like
    /// verifications over theirs.
    pub fn new(image: &str, uid: &str, now: DateTime<Utc>, cadence: Cadence) -> Self {
        Self {
            image: image.to_string(),
            uid: uid.to_string(),
            schedule: String::new(),
            parsed: None,
            next: None,
            running: false,
            presence_next: now + to_chrono(jitter(uid, cadence.presence_interval)),
        }
    }

    /// One tick for an image that is Ready (`ready`) or ImageLost, with the schedule that
    /// applies to it now.
    pub fn tick(
        &mut self,
        schedule: &str,
        ready: bool,
        now: DateTime<Utc>,
        cadence: Cadence,
    ) -> Tick {
        let mut tick = Tick::default();
        if self.schedule != schedule {
            self.schedule = schedule.to_string();
            match crate::schedule::parse(schedule) {
                Ok(parsed) => {
                    self.next = next_run(&parsed, now, jitter(&self.uid, cadence.jitter_window));
                    self.parsed = Some(parsed);
                }
                Err(error) => {
                    self.parsed = None;
                    self.next = None;
                    tick.invalid_schedule = Some(error.to_string());
                }
            }
        }
        if now >= self.presence_next {
            self.presence_next = now + to_chrono(cadence.presence_interval);
            tick.check_presence = true;
        }
        // A lost image has no bytes to verify; its presence checks say when it is back.
        let due = self.next.is_some_and(|next| now >= next);
        if due && !self.running && ready {
            self.running = true;
            tick.verify = true;
        }
        tick
    }

    /// A verification ended: the next one is at the schedule's next time after `now`.
    pub fn verified(&mut self, now: DateTime<Utc>, cadence: Cadence) {
        self.running = false;
        self.next = self
            .parsed
            .as_ref()
            .and_then(|schedule| next_run(schedule, now, jitter(&self.uid, cadence.jitter_window)));
    }
}

fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const CADENCE: Cadence = Cadence {
        jitter_window: Duration::ZERO,
        presence_interval: Duration::from_secs(300),
    };

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, h, m, 0).unwrap()
    }

    /// Ticks every minute from `from` to `to`, verifications taking no time; the times of the
    /// verifications and presence checks.
    fn run(
        entry: &mut Entry,
        schedule: &str,
        ready: bool,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> (Vec<DateTime<Utc>>, Vec<DateTime<Utc>>) {
        let (mut verified, mut present) = (Vec::new(), Vec::new());
        let mut now = from;
        while now <= to {
            let tick = entry.tick(schedule, ready, now, CADENCE);
            if tick.verify {
                verified.push(now);
                entry.verified(now, CADENCE);
            }
            if tick.check_presence {
                present.push(now);
            }
            now += chrono::Duration::minutes(1);
        }
        (verified, present)
    }

    #[test]
    fn a_ready_image_is_verified_once_per_fire_time_and_looked_for_every_interval() {
        let mut entry = Entry::new("debian", "uid-1", at(2, 0), CADENCE);
        let (verified, present) = run(&mut entry, "0 3 * * *", true, at(2, 0), at(4, 0));
        assert_eq!(verified, vec![at(3, 0)]);
        assert_eq!(present.len(), 24, "{present:?}");
        assert!(
            present
                .windows(2)
                .all(|w| w[1] - w[0] == chrono::Duration::minutes(5))
        );
    }

    #[test]
    fn a_running_verification_is_not_started_again_and_a_lost_image_is_not_verified() {
        let mut entry = Entry::new("debian", "uid-1", at(2, 0), CADENCE);
        assert!(
            !entry.tick("*/5 * * * *", true, at(2, 0), CADENCE).verify,
            "the first run is the schedule's next time, not at once"
        );
        assert!(entry.tick("*/5 * * * *", true, at(2, 5), CADENCE).verify);
        assert!(
            !entry.tick("*/5 * * * *", true, at(2, 10), CADENCE).verify,
            "still running"
        );
        entry.verified(at(2, 11), CADENCE);
        assert!(entry.tick("*/5 * * * *", true, at(2, 15), CADENCE).verify);
        entry.verified(at(2, 16), CADENCE);

        let (verified, present) = run(&mut entry, "*/5 * * * *", false, at(2, 20), at(3, 0));
        assert!(verified.is_empty(), "{verified:?}");
        assert!(!present.is_empty(), "a lost image is still looked for");
    }

    #[test]
    fn an_invalid_schedule_is_reported_once_and_a_fixed_one_takes_over() {
        let mut entry = Entry::new("debian", "uid-1", at(2, 0), CADENCE);
        let first = entry.tick("every day", true, at(2, 0), CADENCE);
        assert!(first.invalid_schedule.is_some());
        assert!(!first.verify);
        let (verified, _) = run(&mut entry, "every day", true, at(2, 1), at(4, 0));
        assert!(verified.is_empty());
        assert_eq!(
            entry
                .tick("every day", true, at(4, 1), CADENCE)
                .invalid_schedule,
            None,
            "said once, not at every tick"
        );
        let (verified, _) = run(&mut entry, "30 4 * * *", true, at(4, 2), at(5, 0));
        assert_eq!(verified, vec![at(4, 30)]);
    }

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
