//! How slow a source may be. Every source goes through the pipeline, so one watch covers them
//! all: a window in which at least some bytes must arrive (a server that sends one byte every
//! 29 s, an uploader that stops sending, holds an import slot no longer than a window), and an
//! overall deadline for one attempt.

use std::time::Duration;

use tokio::time::Instant;

/// The pace every source must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// In every window of this length…
    pub window: Duration,
    /// …at least this many bytes must arrive.
    pub min_bytes_per_window: u64,
    /// One attempt of an import ends after this, however it goes.
    pub deadline: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            min_bytes_per_window: 64 << 10,
            deadline: Duration::from_secs(24 * 3600),
        }
    }
}

/// Why a source was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TooSlow {
    /// Fewer than the minimum bytes arrived in the last window.
    Stalled { received: u64, pace: Pace },
    /// The attempt ran past the deadline.
    Deadline { pace: Pace },
}

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stalled { received, pace } => write!(
                f,
                "the source sent {received} bytes in the last {} s, less than the {} KiB it must send in every {} s; the import is tried again (check the source's server or network, or open --source-min-kib-per-window)",
                pace.window.as_secs(),
                pace.min_bytes_per_window >> 10,
                pace.window.as_secs()
            ),
            Self::Deadline { pace } => write!(
                f,
                "the import ran longer than {} min; the import is tried again (for images that take longer, raise --import-deadline-minutes)",
                pace.deadline.as_secs() / 60
            ),
        }
    }
}

/// Follows one attempt. Pure: the caller says what time it is.
#[derive(Debug)]
pub struct PaceWatch {
    pace: Pace,
    deadline: Instant,
    window_started: Instant,
    in_window: u64,
}

impl PaceWatch {
    pub fn start(pace: Pace, now: Instant) -> Self {
        Self {
            pace,
            deadline: now + pace.deadline,
            window_started: now,
            in_window: 0,
        }
    }

    /// Counts bytes that arrived.
    pub fn received(&mut self, bytes: u64) {
        self.in_window = self.in_window.saturating_add(bytes);
    }

    /// When `check` has something to decide next.
    pub fn next_check(&self) -> Instant {
        (self.window_started + self.pace.window).min(self.deadline)
    }

    /// Ends the window if it is over: an error when too little arrived in it, or the deadline
    /// passed.
    pub fn check(&mut self, now: Instant) -> Result<(), TooSlow> {
        if now >= self.deadline {
            return Err(TooSlow::Deadline { pace: self.pace });
        }
        if now >= self.window_started + self.pace.window {
            if self.in_window < self.pace.min_bytes_per_window {
                return Err(TooSlow::Stalled {
                    received: self.in_window,
                    pace: self.pace,
                });
            }
            self.window_started = now;
            self.in_window = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACE: Pace = Pace {
        window: Duration::from_secs(60),
        min_bytes_per_window: 1000,
        deadline: Duration::from_secs(3600),
    };

    #[test]
    fn a_source_that_keeps_the_pace_passes_every_window() {
        let start = Instant::now();
        let mut watch = PaceWatch::start(PACE, start);
        for minute in 1..=10 {
            watch.received(1000);
            let now = start + Duration::from_secs(60 * minute);
            assert_eq!(watch.next_check(), now);
            assert_eq!(watch.check(now), Ok(()));
        }
    }

    #[test]
    fn a_drip_of_one_byte_every_29_seconds_is_dropped_at_the_end_of_its_window() {
        let start = Instant::now();
        let mut watch = PaceWatch::start(PACE, start);
        watch.received(1);
        assert_eq!(watch.check(start + Duration::from_secs(29)), Ok(()));
        watch.received(1);
        assert_eq!(watch.check(start + Duration::from_secs(58)), Ok(()));
        let error = watch.check(start + Duration::from_secs(60)).unwrap_err();
        assert_eq!(
            error,
            TooSlow::Stalled {
                received: 2,
                pace: PACE
            }
        );
        assert!(
            error.to_string().contains("sent 2 bytes in the last 60 s"),
            "{error}"
        );
    }

    #[test]
    fn the_deadline_ends_even_a_fast_attempt() {
        let start = Instant::now();
        let mut watch = PaceWatch::start(
            Pace {
                deadline: Duration::from_secs(90),
                ..PACE
            },
            start,
        );
        watch.received(1 << 30);
        assert_eq!(watch.check(start + Duration::from_secs(60)), Ok(()));
        assert_eq!(watch.next_check(), start + Duration::from_secs(90));
        watch.received(1 << 30);
        assert!(matches!(
            watch.check(start + Duration::from_secs(90)),
            Err(TooSlow::Deadline { .. })
        ));
    }
}
