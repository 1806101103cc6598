//! The status of a catalog and the check of its commit, computed from what a sync found.
//! Pure: the controller writes the result only when it differs from what is there.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::fetch_error::FetchError;
use crate::api::ImagePhase;
use crate::api::catalog::{ImageCatalogStatus, ImageCounts, InventoryEntry, condition};
use crate::catalog::Problem;
use crate::report::{CheckState, CommitCheck, ImageRow};

/// At most this many problems are listed in `status.problems` (all of them go to the logs).
pub const MAX_LISTED_PROBLEMS: usize = 50;

/// What one sync attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Suspended,
    /// The repository could not be read; there is no commit to report on.
    FetchFailed(FetchError),
    /// The commit is invalid; nothing was applied.
    Invalid {
        commit: String,
        problems: Vec<Problem>,
    },
    /// Writing to the cluster failed part way (a transient API error, usually).
    ApplyFailed {
        commit: String,
        message: String,
    },
    /// The commit is valid but waits for a person to confirm it (a force-push, a mass
    /// prune); nothing was applied.
    Held {
        commit: String,
        reason: String,
        message: String,
    },
    /// The commit is applied; `waiting_for_deletion` images are being recreated.
    Applied {
        commit: String,
        waiting_for_deletion: usize,
    },
}

impl Outcome {
    pub fn commit(&self) -> Option<&str> {
        match self {
            Self::Invalid { commit, .. }
            | Self::ApplyFailed { commit, .. }
            | Self::Held { commit, .. }
            | Self::Applied { commit, .. } => Some(commit),
            Self::Suspended | Self::FetchFailed(_) => None,
        }
    }
}

/// One image of the catalog as the cluster shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageState {
    pub name: String,
    pub uid: String,
    pub phase: Option<ImagePhase>,
    pub progress: Option<String>,
    /// The Ready condition's message, for images that failed.
    pub message: Option<String>,
}

pub fn counts(images: &[ImageState]) -> ImageCounts {
    let mut counts = ImageCounts {
        total: images.len() as u32,
        ..Default::default()
    };
    for image in images {
        match image.phase {
            Some(ImagePhase::Ready) => counts.ready += 1,
            Some(ImagePhase::Failed) => counts.failed += 1,
            Some(ImagePhase::ImageLost) => counts.image_lost += 1,
            Some(ImagePhase::Terminating) => counts.terminating += 1,
            Some(
                ImagePhase::Pending | ImagePhase::WaitForUserUpload | ImagePhase::Provisioning,
            )
            | None => counts.in_progress += 1,
        }
    }
    counts
}

pub use crate::report::short;

/// The new status of a catalog. `previous` keeps the revisions of earlier syncs and the
/// transition times of conditions that did not change.
pub fn next_status(
    previous: &ImageCatalogStatus,
    generation: Option<i64>,
    outcome: &Outcome,
    images: &[ImageState],
    now: &Time,
) -> ImageCatalogStatus {
    let counts = counts(images);
    let mut status = ImageCatalogStatus {
        observed_generation: generation,
        last_attempted_revision: outcome
            .commit()
            .map(str::to_string)
            .or_else(|| previous.last_attempted_revision.clone()),
        last_applied_revision: previous.last_applied_revision.clone(),
        inventory: {
            let mut inventory: Vec<InventoryEntry> = images
                .iter()
                .map(|image| InventoryEntry {
                    name: image.name.clone(),
                    uid: image.uid.clone(),
                })
                .collect();
            inventory.sort();
            inventory
        },
        images: Some(counts.clone()),
        ..Default::default()
    };
    let fetch_reason = match outcome {
        Outcome::FetchFailed(error) => error.reason(),
        _ => String::new(),
    };
    // (Ready, Reconciling, Stalled): (status, reason, message) each.
    let (ready, reconciling, stalled) = match outcome {
        Outcome::Suspended => (
            (
                "Unknown",
                "Suspended",
                "Syncing is suspended (spec.suspend); the images stay as they are.".to_string(),
            ),
            ("False", "Suspended", String::new()),
            ("False", "Suspended", String::new()),
        ),
        Outcome::FetchFailed(error) => (
            ("False", fetch_reason.as_str(), error.to_string()),
            ("False", fetch_reason.as_str(), String::new()),
            ("True", fetch_reason.as_str(), error.to_string()),
        ),
        Outcome::Invalid { commit, problems } => {
            status.problems = problems
                .iter()
                .take(MAX_LISTED_PROBLEMS)
                .map(ToString::to_string)
                .collect();
            let message = problems_message(commit, problems);
            (
                ("False", "ValidationFailed", message.clone()),
                ("False", "ValidationFailed", String::new()),
                ("True", "ValidationFailed", message),
            )
        }
        Outcome::Held {
            reason, message, ..
        } => (
            ("False", reason.as_str(), message.clone()),
            ("False", reason.as_str(), String::new()),
            ("True", reason.as_str(), message.clone()),
        ),
        Outcome::ApplyFailed { commit, message } => {
            let message = format!(
                "Applying commit {} failed: {message}; retrying.",
                short(commit)
            );
            (
                ("False", "ApplyFailed", message.clone()),
                ("True", "Retrying", message),
                ("False", "ApplyFailed", String::new()),
            )
        }
        Outcome::Applied {
            commit,
            waiting_for_deletion,
        } => {
            status.last_applied_revision = Some(commit.clone());
            let summary = summary(&counts);
            if *waiting_for_deletion > 0 {
                let message = format!(
                    "Commit {}: recreating {waiting_for_deletion} images whose source changed; {summary}.",
                    short(commit)
                );
                (
                    ("False", "Recreating", message.clone()),
                    ("True", "Recreating", message),
                    ("False", "Recreating", String::new()),
                )
            } else if counts.failed + counts.image_lost > 0 {
                let message = format!(
                    "Commit {} is applied, but {}; see `kubectl get cvi -l imagecatalog.dev/catalog` and each image's Ready condition.",
                    short(commit),
                    failed_text(images)
                );
                (
                    ("False", "ImagesFailed", message.clone()),
                    (
                        if counts.in_progress > 0 {
                            "True"
                        } else {
                            "False"
                        },
                        "ImagesImporting",
                        String::new(),
                    ),
                    ("True", "ImagesFailed", message),
                )
            } else if counts.ready == counts.total {
                let message = format!("Commit {} is applied; {summary}.", short(commit));
                (
                    ("True", "Succeeded", message),
                    ("False", "Succeeded", String::new()),
                    ("False", "Succeeded", String::new()),
                )
            } else {
                let message = format!("Commit {} is applied; {summary}.", short(commit));
                (
                    ("False", "ImagesImporting", message.clone()),
                    ("True", "ImagesImporting", message),
                    ("False", "ImagesImporting", String::new()),
                )
            }
        }
    };
    for (kind, (state, reason, message)) in [
        (condition::READY, ready),
        (condition::RECONCILING, reconciling),
        (condition::STALLED, stalled),
    ] {
        status.conditions.push(make_condition(
            previous, kind, state, reason, message, generation, now,
        ));
    }
    status
}

fn make_condition(
    previous: &ImageCatalogStatus,
    kind: &str,
    state: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let before = previous.conditions.iter().find(|c| c.type_ == kind);
    let last_transition_time = match before {
        Some(before) if before.status == state => before.last_transition_time.clone(),
        _ => now.clone(),
    };
    Condition {
        type_: kind.to_string(),
        status: state.to_string(),
        reason: reason.to_string(),
        message: truncate(&message, 4000),
        observed_generation: generation,
        last_transition_time,
    }
}

/// An Event note fits in 1 KiB.
fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut cut = limit.saturating_sub(3);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &text[..cut])
}

fn problems_message(commit: &str, problems: &[Problem]) -> String {
    let mut message = format!(
        "Commit {} was not applied: {} {}:",
        short(commit),
        problems.len(),
        if problems.len() == 1 {
            "problem"
        } else {
            "problems"
        }
    );
    for problem in problems.iter().take(MAX_LISTED_PROBLEMS) {
        message.push('\n');
        message.push_str(&problem.to_string());
    }
    if problems.len() > MAX_LISTED_PROBLEMS {
        message.push_str(&format!(
            "\n(and {} more)",
            problems.len() - MAX_LISTED_PROBLEMS
        ));
    }
    message
}

/// `12/14 Ready, 2 importing`.
pub fn summary(counts: &ImageCounts) -> String {
    let mut text = format!("{}/{} Ready", counts.ready, counts.total);
    for (count, what) in [
        (counts.in_progress, "importing"),
        (counts.failed, "failed"),
        (counts.image_lost, "lost"),
        (counts.terminating, "deleting"),
    ] {
        if count > 0 {
            text.push_str(&format!(", {count} {what}"));
        }
    }
    text
}

fn failed_text(images: &[ImageState]) -> String {
    let failed: Vec<&str> = images
        .iter()
        .filter(|i| matches!(i.phase, Some(ImagePhase::Failed | ImagePhase::ImageLost)))
        .map(|i| i.name.as_str())
        .collect();
    let shown = failed
        .iter()
        .take(10)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    let more = failed.len().saturating_sub(10);
    let noun = if failed.len() == 1 { "image" } else { "images" };
    if more > 0 {
        format!("{} {noun} failed: {shown} and {more} more", failed.len())
    } else {
        format!("{} {noun} failed: {shown}", failed.len())
    }
}

/// The check of the commit an outcome is about, or None when there is no commit (or the
/// catalog is suspended).
pub fn commit_check(
    context: &str,
    outcome: &Outcome,
    images: &[ImageState],
    target_url: Option<String>,
) -> Option<CommitCheck> {
    let commit = outcome.commit()?.to_string();
    let counts = counts(images);
    let (state, description) = match outcome {
        Outcome::Suspended | Outcome::FetchFailed(_) => return None,
        Outcome::Invalid { problems, .. } => {
            let first: Vec<String> = problems.iter().take(3).map(ToString::to_string).collect();
            (
                CheckState::Failure,
                format!(
                    "{} {} in the catalog: {}",
                    problems.len(),
                    if problems.len() == 1 {
                        "problem"
                    } else {
                        "problems"
                    },
                    first.join("; ")
                ),
            )
        }
        Outcome::ApplyFailed { message, .. } => (
            CheckState::Pending,
            format!("Applying failed, retrying: {message}"),
        ),
        // Waiting for a person: neither failed nor on its way by itself.
        Outcome::Held { message, .. } => (CheckState::Pending, message.clone()),
        Outcome::Applied { .. } if counts.failed + counts.image_lost > 0 => (
            CheckState::Failure,
            format!("{}; {}", summary(&counts), failed_text(images)),
        ),
        Outcome::Applied {
            waiting_for_deletion,
            ..
        } if *waiting_for_deletion == 0 && counts.ready == counts.total => {
            (CheckState::Success, summary(&counts))
        }
        Outcome::Applied { .. } => (CheckState::Pending, summary(&counts)),
    };
    let details = images
        .iter()
        .map(|image| ImageRow {
            name: image.name.clone(),
            phase: image
                .phase
                .map_or_else(|| "Pending".to_string(), |p| p.to_string()),
            progress: image.progress.clone(),
            message: image.message.clone(),
        })
        .collect();
    Some(CommitCheck {
        commit,
        context: context.to_string(),
        state,
        description,
        details,
        target_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Location;

    fn image(name: &str, phase: Option<ImagePhase>) -> ImageState {
        ImageState {
            name: name.into(),
            uid: format!("uid-{name}"),
            phase,
            progress: None,
            message: None,
        }
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::now())
    }

    fn applied() -> Outcome {
        Outcome::Applied {
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            waiting_for_deletion: 0,
        }
    }

    fn condition<'a>(status: &'a ImageCatalogStatus, kind: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == kind).unwrap()
    }

    #[test]
    fn importing_images_show_as_pending_with_counts() {
        let images = [
            image("a", Some(ImagePhase::Ready)),
            image("b", Some(ImagePhase::Provisioning)),
            image("c", None),
        ];
        let status = next_status(&Default::default(), Some(1), &applied(), &images, &now());
        assert_eq!(condition(&status, "Ready").status, "False");
        assert_eq!(condition(&status, "Reconciling").status, "True");
        assert_eq!(condition(&status, "Ready").reason, "ImagesImporting");
        assert_eq!(status.images.as_ref().unwrap().in_progress, 2);
        let check = commit_check("image-catalog/base", &applied(), &images, None).unwrap();
        assert_eq!(check.state, CheckState::Pending);
        assert_eq!(check.description, "1/3 Ready, 2 importing");
    }

    #[test]
    fn all_ready_is_success_and_failed_images_are_named() {
        let ready = [
            image("a", Some(ImagePhase::Ready)),
            image("b", Some(ImagePhase::Ready)),
        ];
        let status = next_status(&Default::default(), Some(1), &applied(), &ready, &now());
        assert_eq!(condition(&status, "Ready").status, "True");
        assert_eq!(
            status.last_applied_revision.as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        assert_eq!(
            commit_check("c", &applied(), &ready, None).unwrap().state,
            CheckState::Success
        );

        let failed = [
            image("a", Some(ImagePhase::Ready)),
            image("b", Some(ImagePhase::Failed)),
        ];
        let status = next_status(&Default::default(), Some(1), &applied(), &failed, &now());
        assert_eq!(condition(&status, "Stalled").status, "True");
        let check = commit_check("c", &applied(), &failed, None).unwrap();
        assert_eq!(check.state, CheckState::Failure);
        assert_eq!(check.description, "1/2 Ready, 1 failed; 1 image failed: b");
    }

    #[test]
    fn an_invalid_commit_lists_every_problem_and_keeps_the_applied_revision() {
        let previous = ImageCatalogStatus {
            last_applied_revision: Some("old".into()),
            ..Default::default()
        };
        let problems = vec![Problem {
            location: Location {
                file: "a.yaml".into(),
                line: 3,
                column: 9,
            },
            message: "unknown field x".into(),
        }];
        let outcome = Outcome::Invalid {
            commit: "new".into(),
            problems,
        };
        let status = next_status(&previous, Some(2), &outcome, &[], &now());
        assert_eq!(status.last_applied_revision.as_deref(), Some("old"));
        assert_eq!(status.last_attempted_revision.as_deref(), Some("new"));
        assert_eq!(status.problems, ["a.yaml:3:9: unknown field x"]);
        let ready = condition(&status, "Ready");
        assert!(
            ready
                .message
                .ends_with("1 problem:\na.yaml:3:9: unknown field x"),
            "{}",
            ready.message
        );
        let check = commit_check("c", &outcome, &[], None).unwrap();
        assert_eq!(check.state, CheckState::Failure);
        assert!(check.description.contains("a.yaml:3:9: unknown field x"));
    }

    #[test]
    fn an_unchanged_condition_keeps_its_transition_time() {
        let images = [image("a", Some(ImagePhase::Provisioning))];
        let first = next_status(
            &Default::default(),
            Some(1),
            &applied(),
            &images,
            &Time(
                k8s_openapi::jiff::Timestamp::now()
                    - k8s_openapi::jiff::SignedDuration::from_hours(1),
            ),
        );
        let second = next_status(&first, Some(1), &applied(), &images, &now());
        assert_eq!(first, second, "a sync that changed nothing writes nothing");
    }
}
