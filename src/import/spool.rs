//! The spool: downloads of unknown size wait here until their size is known. Two things keep
//! it from harming the pod: a budget shared by every import (an endless stream would
//! otherwise fill the emptyDir, and the kubelet evicts a pod over its `sizeLimit`), and a
//! sweep at start-up of files a killed daemon left (they are named after the process that
//! wrote them, so a daemon sharing the folder is never swept).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const PREFIX: &str = "image-catalog-spool-";

/// The bytes all spooled downloads may hold together.
#[derive(Debug)]
pub struct SpoolBudget {
    limit: u64,
    used: AtomicU64,
}

/// Why a chunk did not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolFull {
    /// This download alone is larger than the whole spool: it never fits.
    TooLarge { limit: u64 },
    /// Other downloads hold the rest now: try again later.
    Busy { limit: u64 },
}

impl SpoolBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// A reservation that grows with one download and gives its bytes back when dropped.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            held: 0,
        }
    }
}

pub struct Reservation {
    budget: Arc<SpoolBudget>,
    held: u64,
}

impl Reservation {
    /// Takes `bytes` more from the budget, or says why not.
    pub fn grow(&mut self, bytes: u64) -> Result<(), SpoolFull> {
        let limit = self.budget.limit;
        if self.held.saturating_add(bytes) > limit {
            return Err(SpoolFull::TooLarge { limit });
        }
        self.budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= limit)
            })
            .map_err(|_| SpoolFull::Busy { limit })?;
        self.held += bytes;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

/// This process, as spool file names carry it: its pid and its start time (clock ticks since
/// boot), so a pid reused after a restart (pid 1 in every container) is not taken for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub start: u64,
}

impl Owner {
    /// The live process `pid`; None when there is none. A zombie (killed, not yet reaped by
    /// its parent) writes nothing more: it counts as gone.
    fn of_pid(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        if is_zombie(&stat) {
            return None;
        }
        Some(Self {
            pid,
            start: start_time(&stat)?,
        })
    }

    pub fn current() -> Self {
        let pid = std::process::id();
        Self::of_pid(pid).unwrap_or(Self { pid, start: 0 })
    }
}

/// Field 3 of /proc/<pid>/stat, the state: Z (zombie) or X (dead).
fn is_zombie(stat: &str) -> bool {
    stat.rsplit_once(')')
        .and_then(|(_, after_name)| after_name.split_whitespace().next())
        .is_some_and(|state| matches!(state, "Z" | "X"))
}

/// Field 22 of /proc/<pid>/stat, after the command name (which may hold spaces and parens).
fn start_time(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// The prefix of the spool files this process writes.
pub fn file_prefix(owner: Owner) -> String {
    format!("{PREFIX}{}-{}-", owner.pid, owner.start)
}

/// The process a spool file name names; None for names that are not ours.
fn owner_of(file_name: &str) -> Option<Owner> {
    let mut parts = file_name.strip_prefix(PREFIX)?.splitn(3, '-');
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(Owner { pid, start })
}

/// Whether a file of `owner` was left behind: its process is gone, or the pid is now
/// another process.
fn is_left_behind(owner: Owner, running: impl Fn(u32) -> Option<Owner>) -> bool {
    running(owner.pid) != Some(owner)
}

/// Removes the spool files in `dir` whose process is gone; returns what it removed and its
/// size. Files not named by this daemon are left alone.
pub fn sweep(dir: &Path) -> std::io::Result<Vec<(PathBuf, u64)>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(owner) = name.to_str().and_then(owner_of) else {
            continue;
        };
        if !is_left_behind(owner, Owner::of_pid) {
            continue;
        }
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed.push((entry.path(), size)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    Ok(removed)
}

/// A Kubernetes quantity of bytes as an emptyDir's `sizeLimit` is written: `16Gi`, `500M`,
/// `1073741824`.
pub fn parse_quantity(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// What the downloads may hold of a spool of `size`: a sixteenth stays free for what else
/// the file system keeps there.
pub fn budget_of(size: u64) -> u64 {
    size - size / 16
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantities_read_as_kubernetes_writes_them() {
        assert_eq!(parse_quantity("16Gi"), Some(16 << 30));
        assert_eq!(parse_quantity("500M"), Some(500_000_000));
        assert_eq!(parse_quantity("1073741824"), Some(1 << 30));
        assert_eq!(parse_quantity("2k"), Some(2000));
        assert_eq!(parse_quantity("1.5Gi"), None);
        assert_eq!(parse_quantity("Gi"), None);
        assert_eq!(parse_quantity("99999999999Pi"), None);
        assert_eq!(budget_of(16 << 30), 15 << 30);
    }

    use super::*;

    #[test]
    fn downloads_share_one_budget_and_give_it_back_when_done() {
        let budget = SpoolBudget::new(100);
        let mut first = budget.reservation();
        let mut second = budget.reservation();
        assert_eq!(first.grow(60), Ok(()));
        assert_eq!(second.grow(50), Err(SpoolFull::Busy { limit: 100 }));
        assert_eq!(second.grow(40), Ok(()));
        assert_eq!(first.grow(41), Err(SpoolFull::TooLarge { limit: 100 }));
        drop(first);
        let mut third = budget.reservation();
        assert_eq!(
            third.grow(60),
            Ok(()),
            "the first download's bytes came back"
        );
        assert_eq!(
            second.grow(61),
            Err(SpoolFull::TooLarge { limit: 100 }),
            "more than the whole spool never fits"
        );
    }

    #[test]
    fn the_start_time_is_read_past_a_command_name_with_spaces_and_parens() {
        let stat = "4242 (image (catalog) x) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        assert_eq!(start_time(stat), Some(987654));
        assert_eq!(start_time("garbage"), None);
        assert!(!is_zombie(stat));
        // Killed and not yet reaped: its files are left behind.
        assert!(is_zombie(&stat.replacen(") S ", ") Z ", 1)));
        assert!(!is_zombie("garbage"));
    }

    #[test]
    fn only_files_of_processes_that_are_gone_are_left_behind() {
        let me = Owner { pid: 7, start: 100 };
        let name = format!("{}abc123", file_prefix(me));
        assert_eq!(owner_of(&name), Some(me));
        assert_eq!(
            owner_of("image-catalog-spool-abc123"),
            None,
            "an older name"
        );
        assert_eq!(owner_of("other-file"), None);
        assert!(!is_left_behind(me, |_| Some(me)));
        assert!(is_left_behind(me, |_| None), "the process is gone");
        assert!(
            is_left_behind(me, |pid| Some(Owner { pid, start: 999 })),
            "the pid is another process now"
        );
    }

    #[test]
    fn the_sweep_removes_a_dead_processs_file_and_keeps_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir
            .path()
            .join(format!("{}live", file_prefix(Owner::current())));
        let dead = dir.path().join(format!(
            "{}dead",
            file_prefix(Owner {
                pid: u32::MAX - 1,
                start: 1
            })
        ));
        let foreign = dir.path().join("notes.txt");
        for path in [&live, &dead, &foreign] {
            std::fs::write(path, b"bytes").unwrap();
        }
        let removed = sweep(dir.path()).unwrap();
        assert_eq!(removed, vec![(dead.clone(), 5)]);
        assert!(live.exists() && foreign.exists() && !dead.exists());
    }

    proptest::proptest! {
        #[test]
        fn any_size_or_file_name_is_read_without_panic(text in ".{0,30}") {
            let _ = parse_quantity(&text);
            let _ = owner_of(&text);
            let _ = start_time(&text);
        }
    }
}
