//! What a sync must do, decided without I/O: render the desired ClusterVirtualImages of a
//! commit, compare them with what the cluster holds, and say which to create, update,
//! recreate, prune, leave alone, or refuse.

use std::collections::{BTreeMap, HashMap};

use kube::ResourceExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::catalog::{ImageCatalogSpec, ReadyImagePolicy, keys};
use crate::api::{ClusterVirtualImage, ClusterVirtualImageSpec, ImagePhase};
use crate::catalog::{CatalogImage, Location, Problem};

/// The field manager of everything a catalog applies.
pub const FIELD_MANAGER: &str = "image-catalog-sync";

/// One image as the catalog wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredImage {
    pub name: String,
    pub location: Location,
    pub labels: BTreeMap<String, String>,
    /// Without the commit annotation: that one is added when the image is written.
    pub annotations: BTreeMap<String, String>,
    pub spec: ClusterVirtualImageSpec,
    /// Digest of labels, annotations and spec: equal digests mean nothing to apply.
    pub digest: String,
}

impl DesiredImage {
    /// The server-side apply body, stamped with the commit that changes it.
    pub fn manifest(&self, commit: &str) -> Value {
        let mut annotations = self.annotations.clone();
        annotations.insert(keys::COMMIT.into(), commit.into());
        json!({
            "apiVersion": "virtualization.deckhouse.io/v1alpha2",
            "kind": "ClusterVirtualImage",
            "metadata": {
                "name": self.name,
                "labels": self.labels,
                "annotations": annotations,
            },
            "spec": self.spec,
        })
    }
}

/// The desired images of a commit: the catalog's labels and annotations, then the entry's
/// own (the entry wins), then the keys the daemon owns.
pub fn render(
    catalog: &str,
    spec: &ImageCatalogSpec,
    images: &[CatalogImage],
) -> Vec<DesiredImage> {
    images
        .iter()
        .map(|image| {
            let mut labels = spec.labels.clone();
            labels.extend(image.labels.clone());
            labels.insert(keys::CATALOG.into(), catalog.into());
            let mut annotations = spec.annotations.clone();
            annotations.extend(image.annotations.clone());
            annotations.insert(keys::SOURCE.into(), image.location.file.clone());
            let verification = image.verification.clone().unwrap_or_default();
            let defaults = spec.verification.clone().unwrap_or_default();
            if let Some(schedule) = verification.schedule.or(defaults.schedule) {
                annotations.insert(keys::VERIFY_SCHEDULE.into(), schedule);
            }
            if let Some(upstream) = verification.check_upstream.or(defaults.check_upstream) {
                annotations.insert(keys::VERIFY_UPSTREAM.into(), upstream.to_string());
            }
            let spec = ClusterVirtualImageSpec {
                data_source: image.data_source.clone(),
            };
            let digest = digest(&labels, &annotations, &spec);
            annotations.insert(keys::APPLIED.into(), digest.clone());
            DesiredImage {
                name: image.name.clone(),
                location: image.location.clone(),
                labels,
                annotations,
                spec,
                digest,
            }
        })
        .collect()
}

fn digest(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    spec: &ClusterVirtualImageSpec,
) -> String {
    // BTreeMaps and struct fields serialise in a fixed order, so equal inputs give equal text.
    let text = json!({"labels": labels, "annotations": annotations, "spec": spec}).to_string();
    hex::encode(&Sha256::digest(text.as_bytes())[..12])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    Create,
    Update,
    /// Delete first (the image is Ready and its source changed, under `Recreate`); a later
    /// sync creates it again once the old one is gone.
    Recreate,
    Unchanged,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Recreate => "recreate",
            Self::Unchanged => "unchanged",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedImage {
    pub change: Change,
    pub desired: DesiredImage,
    /// The UID of the image in the cluster, if there is one.
    pub uid: Option<String>,
    /// The commit that last changed the image, kept when the image does not change.
    pub commit: Option<String>,
}

/// An image of this catalog to delete because its entry is gone from Git.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prune {
    pub name: String,
    pub uid: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub images: Vec<PlannedImage>,
    pub prune: Vec<Prune>,
    /// Why the commit cannot be applied; when not empty, nothing may be written.
    pub problems: Vec<Problem>,
}

impl Plan {
    /// Whether applying the plan writes anything.
    pub fn writes(&self) -> bool {
        !self.prune.is_empty()
            || self
                .images
                .iter()
                .any(|image| image.change != Change::Unchanged)
    }

    pub fn count(&self, change: Change) -> usize {
        self.images.iter().filter(|i| i.change == change).count()
    }
}

/// Compares the desired images with the cluster's (`existing`: every CVI, any owner).
pub fn plan(
    catalog: &str,
    desired: Vec<DesiredImage>,
    existing: &[&ClusterVirtualImage],
    prune: bool,
    policy: ReadyImagePolicy,
) -> Plan {
    let by_name: HashMap<String, &ClusterVirtualImage> =
        existing.iter().map(|cvi| (cvi.name_any(), *cvi)).collect();
    let mut result = Plan::default();
    let wanted: std::collections::HashSet<String> =
        desired.iter().map(|d| d.name.clone()).collect();
    for image in desired {
        let Some(current) = by_name.get(&image.name) else {
            result.images.push(PlannedImage {
                change: Change::Create,
                desired: image,
                uid: None,
                commit: None,
            });
            continue;
        };
        let owner = current.labels().get(keys::CATALOG).cloned();
        if owner.as_deref() != Some(catalog) {
            let message = match owner {
                Some(other) => format!(
                    "image {} belongs to the catalog {other}; remove it there first or choose another name",
                    image.name
                ),
                None => format!(
                    "image {} already exists and no catalog manages it; delete it, or label it {}={catalog} to let this catalog adopt it",
                    image.name,
                    keys::CATALOG
                ),
            };
            result.problems.push(Problem {
                location: image.location.clone(),
                message,
            });
            continue;
        }
        let uid = current.uid();
        let commit = current.annotations().get(keys::COMMIT).cloned();
        let terminating = current.metadata.deletion_timestamp.is_some();
        let source_changed = current.spec != image.spec;
        let change = if terminating {
            // Wait for it to go (a recreate in progress, or someone deleted it by hand), then
            // create it again.
            Change::Recreate
        } else if source_changed && is_frozen(current) {
            match policy {
                ReadyImagePolicy::Recreate => Change::Recreate,
                ReadyImagePolicy::Fail => {
                    result.problems.push(Problem {
                        location: image.location.clone(),
                        message: format!(
                            "image {} is Ready and its dataSource changed; a Ready image cannot change: give the new image a new name, or set readyImagePolicy: Recreate on the ImageCatalog to delete and import it again",
                            image.name
                        ),
                    });
                    continue;
                }
            }
        } else if !in_sync(current, &image) {
            Change::Update
        } else {
            Change::Unchanged
        };
        result.images.push(PlannedImage {
            change,
            desired: image,
            uid,
            commit,
        });
    }
    if prune {
        let mut gone: Vec<Prune> = existing
            .iter()
            .filter(|cvi| cvi.labels().get(keys::CATALOG).map(String::as_str) == Some(catalog))
            .filter(|cvi| !wanted.contains(&cvi.name_any()))
            .filter(|cvi| cvi.metadata.deletion_timestamp.is_none())
            .map(|cvi| Prune {
                name: cvi.name_any(),
                uid: cvi.uid().unwrap_or_default(),
            })
            .collect();
        gone.sort_by(|a, b| a.name.cmp(&b.name));
        result.prune = gone;
    }
    result.problems.sort();
    result
}

/// Why a valid commit waits for a person before it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// The branch or tag moved to a commit that does not descend from the applied one.
    ForcePush { applied: String, pruning: usize },
    /// The commit would prune more than the catalog's `maxPrunePercent` of its images.
    MassPrune {
        pruning: usize,
        owned: usize,
        max_percent: u8,
    },
}

impl Hold {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ForcePush { .. } => "ForcePushHeld",
            Self::MassPrune { .. } => "MassPruneHeld",
        }
    }

    /// What happened and the one command that lets it through.
    pub fn message(&self, catalog: &str, commit: &str) -> String {
        let what = match self {
            Self::ForcePush { applied, pruning } => format!(
                "Commit {} does not descend from the applied commit {} (a force-push, or a moved tag){}",
                short(commit),
                short(applied),
                match pruning {
                    0 => String::new(),
                    n => format!(" and would prune {n} images"),
                }
            ),
            Self::MassPrune {
                pruning,
                owned,
                max_percent,
            } => format!(
                "Commit {} would prune {pruning} of the catalog's {owned} images, more than maxPrunePercent ({max_percent}%)",
                short(commit)
            ),
        };
        format!(
            "{what}; it is held and nothing changed. If that is meant: kubectl annotate imagecatalog {catalog} {}={commit} --overwrite",
            keys::CONFIRM_COMMIT
        )
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// Whether a valid plan waits for confirmation: a commit that does not descend from the
/// applied one (`diverged_from`), or a prune of more than `max_prune_percent` of the images
/// the catalog owns. `confirmed`: a person confirmed this very commit.
pub fn hold(
    plan: &Plan,
    diverged_from: Option<&str>,
    max_prune_percent: u8,
    confirmed: bool,
) -> Option<Hold> {
    if confirmed {
        return None;
    }
    let pruning = plan.prune.len();
    if let Some(applied) = diverged_from {
        return Some(Hold::ForcePush {
            applied: applied.to_string(),
            pruning,
        });
    }
    let owned = pruning + plan.images.iter().filter(|i| i.uid.is_some()).count();
    let over = pruning as u64 * 100 > owned as u64 * u64::from(max_prune_percent.min(100));
    (pruning > 0 && over).then_some(Hold::MassPrune {
        pruning,
        owned,
        max_percent: max_prune_percent,
    })
}

/// Whether the confirm annotation names `commit` (its full id; a shorter prefix would let
/// one confirmation through for any later commit that shares it).
pub fn confirms(annotation: Option<&str>, commit: &str) -> bool {
    annotation.is_some_and(|value| value.trim().eq_ignore_ascii_case(commit))
}

/// A Ready (or lost) image's spec is frozen by the admission policy.
fn is_frozen(cvi: &ClusterVirtualImage) -> bool {
    matches!(
        cvi.status.as_ref().and_then(|s| s.phase),
        Some(ImagePhase::Ready | ImagePhase::ImageLost)
    )
}

/// Whether the cluster's image already shows everything the catalog wants: the same digest
/// (nothing removed since) and no drift by hand in the fields the catalog sets.
fn in_sync(current: &ClusterVirtualImage, desired: &DesiredImage) -> bool {
    let labels = current.labels();
    let annotations = current.annotations();
    current.spec == desired.spec
        && desired
            .labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
        && desired
            .annotations
            .iter()
            .all(|(key, value)| annotations.get(key) == Some(value))
}

#[cfg(test)]
mod tests;
