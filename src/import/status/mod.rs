//! The status an image should have, computed from what its import is doing. Pure: the
//! controller reads the image, asks this module for the next status and writes it only when it
//! differs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::status::condition::{DATASOURCE_READY, READY};
use crate::api::{DownloadSpeed, ImagePhase, ImageSize, ImageStatus, ImageTarget, ImageUploadUrls};

use super::progress::{self, Speed};

/// Bytes moved so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub received: u64,
    /// The size of the file when the source announced it.
    pub total: Option<u64>,
    pub speed: Speed,
    /// Whether the daemon that ran this transfer stopped (restart, takeover), and where
    /// this one took it up: the message says so.
    pub after_restart: AfterRestart,
}

/// How a transfer relates to a daemon's restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterRestart {
    /// No restart interrupted it.
    #[default]
    No,
    /// It started again from byte 0.
    FromZero,
    /// It went on from its checkpoint, at this byte.
    ResumedAt(u64),
}

/// The first words of the message of a transfer that started over after a restart.
pub const RESTARTED_MESSAGE: &str =
    "Restarted after the daemon restarted; fetching again from byte 0.";

/// The first words of the message of a transfer that went on from its checkpoint.
pub const RESUMED_MESSAGE: &str = "Resumed from its checkpoint after the daemon restarted";

/// The message of an Upload image whose upload was cut by the daemon's death.
pub const UPLOAD_INTERRUPTED_MESSAGE: &str = "The last upload was interrupted: the daemon restarted while it ran. Upload the image again to the same URL (status.imageUploadURLs): `curl <url> -T image.img`.";

/// Whether a previous daemon (or leader) was moving bytes of this spec when it stopped: the
/// status describes this generation and says Provisioning, or Pending with upload URLs (an
/// upload that arrived and waited for an import slot). A new import task of this process that
/// finds such a status is the continuation of that import, which starts over.
pub fn interrupted_by_restart(previous: &ImageStatus, generation: i64) -> bool {
    previous.observed_generation == Some(generation)
        && match previous.phase {
            Some(ImagePhase::Provisioning) => true,
            Some(ImagePhase::Pending) => previous.image_upload_urls.is_some(),
            _ => false,
        }
}

/// The status a new import task starts from, given the one it finds. Progress, sizes and
/// speed describe the transfer that wrote them, and progress never moves backwards from what
/// `previous` says: an import of a new spec, or a transfer that starts again from byte 0 after
/// a restart, must not be held at the old value (the progress would freeze there while the
/// message counts again from zero). A new spec also gets new upload URLs.
pub fn starting_point(previous: &ImageStatus, generation: i64) -> ImageStatus {
    let mut status = previous.clone();
    let new_spec = previous.observed_generation != Some(generation);
    if new_spec || interrupted_by_restart(previous, generation) {
        status.progress = None;
        status.size = None;
        status.download_speed = None;
    }
    if new_spec {
        status.image_upload_urls = None;
    }
    status
}

/// What is known about an image once it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    pub registry_url: String,
    pub format: String,
    pub cdrom: bool,
    pub stored_size: u64,
    pub virtual_size: u64,
    /// The image or disk this one was made from.
    pub source_uid: Option<String>,
}

/// Why an import went wrong, as the conditions will say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase condition reason.
    pub reason: String,
    /// What was wrong and what to do.
    pub message: String,
    /// Whether the source is at fault (unreachable, refused, not found), rather than the bytes
    /// it served or DVCR.
    pub source_fault: bool,
}

/// Where an image's import stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportState {
    /// Waiting for something before the import can start: a free import slot, or the source
    /// itself (`source_blocked`: a source image that is missing or not Ready yet).
    Waiting {
        reason: String,
        message: String,
        source_blocked: bool,
    },
    /// Waiting for the user to upload the image to one of `urls`.
    AwaitingUpload {
        urls: ImageUploadUrls,
        message: String,
    },
    /// Bytes are flowing from the source into DVCR.
    Transferring(Transfer),
    /// A transient failure; the import tries again by itself.
    Retrying {
        transfer: Transfer,
        problem: Problem,
    },
    /// The image is stored and tagged in DVCR.
    Stored(StoredImage),
    /// The import failed for good; only a spec change starts it again.
    Failed(Problem),
    /// The image is being deleted.
    Terminating,
}

/// The status for `state`, carrying over what must persist from `previous` (condition
/// transition times, progress that must not move backwards, facts already discovered, the
/// upload URLs until the image is stored or failed). `previous` is what this import wrote
/// last, or its [`starting_point`].
pub fn next_status(
    previous: &ImageStatus,
    generation: i64,
    state: &ImportState,
    now: &Time,
) -> ImageStatus {
    let mut status = ImageStatus {
        conditions: previous.conditions.clone(),
        observed_generation: Some(generation),
        ..Default::default()
    };
    let mut condition = |type_: &str, ok: Option<bool>, reason: &str, message: &str| {
        set_condition(
            &mut status.conditions,
            type_,
            ok,
            reason,
            message,
            generation,
            now,
        )
    };
    match state {
        ImportState::Waiting {
            reason,
            message,
            source_blocked,
        } => {
            let datasource_ready = if *source_blocked { Some(false) } else { None };
            condition(DATASOURCE_READY, datasource_ready, reason, message);
            condition(READY, Some(false), reason, message);
            status.phase = Some(ImagePhase::Pending);
            status.image_upload_urls = previous.image_upload_urls.clone();
        }
        ImportState::AwaitingUpload { urls, message } => {
            condition(DATASOURCE_READY, None, "WaitingForUserUpload", message);
            condition(READY, Some(false), "WaitingForUserUpload", message);
            status.phase = Some(ImagePhase::WaitForUserUpload);
            status.image_upload_urls = Some(urls.clone());
        }
        ImportState::Transferring(transfer) => {
            condition(
                DATASOURCE_READY,
                Some(true),
                "SourceReachable",
                "The source answers and the download runs.",
            );
            condition(
                READY,
                Some(false),
                "Provisioning",
                &transfer_message(transfer),
            );
            status.phase = Some(ImagePhase::Provisioning);
            status.image_upload_urls = previous.image_upload_urls.clone();
            apply_transfer(&mut status, previous, transfer);
        }
        ImportState::Retrying { transfer, problem } => {
            condition(
                DATASOURCE_READY,
                if problem.source_fault {
                    Some(false)
                } else {
                    Some(true)
                },
                &problem.reason,
                &problem.message,
            );
            condition(
                READY,
                Some(false),
                "Retrying",
                &format!("{} Retrying with back-off.", problem.message),
            );
            status.phase = Some(ImagePhase::Provisioning);
            status.image_upload_urls = previous.image_upload_urls.clone();
            apply_transfer(&mut status, previous, transfer);
        }
        ImportState::Stored(image) => {
            condition(
                DATASOURCE_READY,
                Some(true),
                "SourceReachable",
                "The image was read from its source.",
            );
            condition(
                READY,
                Some(true),
                "Ready",
                &format!("The image is stored in DVCR as {}.", image.registry_url),
            );
            status.phase = Some(ImagePhase::Ready);
            status.progress = Some(progress::DONE_PERCENT.to_string());
            status.format = Some(image.format.clone());
            status.cdrom = image.cdrom;
            status.size = Some(ImageSize {
                stored: Some(progress::human_size(image.stored_size)),
                stored_bytes: Some(image.stored_size.to_string()),
                unpacked: Some(progress::human_size(image.virtual_size)),
                unpacked_bytes: Some(image.virtual_size.to_string()),
            });
            status.target = Some(ImageTarget {
                registry_url: Some(image.registry_url.clone()),
            });
            status.source_uid = image.source_uid.clone();
        }
        ImportState::Failed(problem) => {
            if problem.source_fault {
                condition(
                    DATASOURCE_READY,
                    Some(false),
                    &problem.reason,
                    &problem.message,
                );
            }
            condition(READY, Some(false), &problem.reason, &problem.message);
            // Nothing is stored after a failure: no progress, sizes or format to show.
            status.phase = Some(ImagePhase::Failed);
        }
        ImportState::Terminating => {
            status = ImageStatus {
                phase: Some(ImagePhase::Terminating),
                ..previous.clone()
            };
            status.download_speed = None;
        }
    }
    status
}

fn transfer_message(transfer: &Transfer) -> String {
    let received = progress::human_size(transfer.received);
    let downloading = match transfer.total {
        Some(total) => format!(
            "Downloading: {received} of {} at {}.",
            progress::human_size(total),
            progress::human_speed(transfer.speed.current)
        ),
        None => format!(
            "Downloading: {received} at {}.",
            progress::human_speed(transfer.speed.current)
        ),
    };
    match transfer.after_restart {
        AfterRestart::No => downloading,
        AfterRestart::FromZero => format!("{RESTARTED_MESSAGE} {downloading}"),
        AfterRestart::ResumedAt(offset) => format!(
            "{RESUMED_MESSAGE}, at {}. {downloading}",
            progress::human_size(offset)
        ),
    }
}

fn apply_transfer(status: &mut ImageStatus, previous: &ImageStatus, transfer: &Transfer) {
    status.progress = match transfer.total {
        Some(total) => Some(progress::never_backwards(
            previous.progress.as_deref(),
            progress::in_flight_percent(transfer.received, total),
        )),
        None => previous.progress.clone(),
    };
    status.download_speed = Some(DownloadSpeed {
        avg: Some(progress::human_speed(transfer.speed.average)),
        avg_bytes: Some(transfer.speed.average.to_string()),
        current: Some(progress::human_speed(transfer.speed.current)),
        current_bytes: Some(transfer.speed.current.to_string()),
    });
    status.size = Some(ImageSize {
        stored: Some(progress::human_size(transfer.received)),
        stored_bytes: Some(transfer.received.to_string()),
        ..Default::default()
    });
}

/// A change of phase that the presence of the stored image calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    pub phase: ImagePhase,
    /// The `Ready` condition's status.
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What finding the stored image at `url` present or not means for an image in `phase`:
/// a Ready image whose manifest is gone is ImageLost, and a lost one found again is Ready.
/// Pure; None when nothing changes.
pub fn presence_change(
    phase: Option<ImagePhase>,
    present: bool,
    url: &str,
    reimport: &str,
) -> Option<PresenceChange> {
    match (phase, present) {
        (Some(ImagePhase::Ready), false) => Some(PresenceChange {
            phase: ImagePhase::ImageLost,
            ready: false,
            reason: "ImageLost",
            message: format!("The stored image {url} is gone from DVCR; {reimport}."),
        }),
        (Some(ImagePhase::ImageLost), true) => Some(PresenceChange {
            phase: ImagePhase::Ready,
            ready: true,
            reason: "Ready",
            message: format!("The image is stored in DVCR as {url}."),
        }),
        _ => None,
    }
}

/// `status` with the presence change applied. Pure.
pub fn with_presence_change(
    status: &ImageStatus,
    change: &PresenceChange,
    generation: i64,
    now: &Time,
) -> ImageStatus {
    let mut status = status.clone();
    status.phase = Some(change.phase);
    set_condition(
        &mut status.conditions,
        READY,
        Some(change.ready),
        change.reason,
        &change.message,
        generation,
        now,
    );
    status
}

/// Sets one condition, keeping its transition time when its status did not change.
/// `ok: None` means Unknown.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: Option<bool>,
    reason: &str,
    message: &str,
    generation: i64,
    now: &Time,
) {
    let status = match ok {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    };
    let last_transition_time = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    let condition = Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: Some(generation),
        last_transition_time,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

/// The condition of `type_`, if set.
pub fn condition<'a>(status: &'a ImageStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests;
