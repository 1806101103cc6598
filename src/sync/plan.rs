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
mod tests {
    use super::*;
    use crate::api::catalog::GitSource;
    use crate::api::{DataSource, DataSourceType, HttpSource, ImageStatus};

    fn spec() -> ImageCatalogSpec {
        serde_json::from_value(json!({
            "git": {"url": "https://git.example/c.git", "ref": {"branch": "main"}},
            "labels": {"tier": "base", "os": "default"},
            "verification": {"schedule": "0 1 * * *"},
        }))
        .unwrap()
    }

    fn image(name: &str, url: &str) -> CatalogImage {
        CatalogImage {
            name: name.into(),
            location: Location {
                file: "images.yaml".into(),
                line: 2,
                column: 11,
            },
            data_source: DataSource {
                type_: DataSourceType::Http,
                http: Some(HttpSource {
                    url: url.into(),
                    ca_bundle: None,
                    checksum: None,
                }),
                container_image: None,
                object_ref: None,
            },
            labels: [("os".to_string(), "debian".to_string())].into(),
            annotations: BTreeMap::new(),
            verification: None,
        }
    }

    /// The cluster's copy of an applied image, as the API server would return it.
    fn applied(
        desired: &DesiredImage,
        commit: &str,
        phase: Option<ImagePhase>,
    ) -> ClusterVirtualImage {
        let mut cvi: ClusterVirtualImage =
            serde_json::from_value(desired.manifest(commit)).unwrap();
        cvi.metadata.uid = Some(format!("uid-{}", desired.name));
        cvi.status = Some(ImageStatus {
            phase,
            ..Default::default()
        });
        cvi
    }

    #[test]
    fn rendering_merges_catalog_and_entry_metadata_and_the_keys_the_daemon_owns() {
        let desired = render("base", &spec(), &[image("a", "https://x/a.img")]);
        let a = &desired[0];
        assert_eq!(a.labels["os"], "debian", "the entry wins");
        assert_eq!(a.labels["tier"], "base");
        assert_eq!(a.labels[keys::CATALOG], "base");
        assert_eq!(a.annotations[keys::SOURCE], "images.yaml");
        assert_eq!(a.annotations[keys::VERIFY_SCHEDULE], "0 1 * * *");
        assert_eq!(a.annotations[keys::APPLIED], a.digest);
        let manifest = a.manifest("c0ffee");
        assert_eq!(manifest["metadata"]["annotations"][keys::COMMIT], "c0ffee");
        let _: GitSource = spec().git;
    }

    #[test]
    fn a_second_sync_of_the_same_commit_writes_nothing() {
        let desired = render("base", &spec(), &[image("a", "https://x/a.img")]);
        let cluster = applied(&desired[0], "c1", Some(ImagePhase::Provisioning));
        let plan = plan("base", desired, &[&cluster], true, ReadyImagePolicy::Fail);
        assert!(!plan.writes(), "{plan:?}");
        assert_eq!(plan.images[0].commit.as_deref(), Some("c1"));
    }

    #[test]
    fn new_changed_and_removed_entries_are_created_updated_and_pruned() {
        let old = render(
            "base",
            &spec(),
            &[
                image("a", "https://x/a.img"),
                image("gone", "https://x/g.img"),
            ],
        );
        let a = applied(&old[0], "c1", Some(ImagePhase::Provisioning));
        let gone = applied(&old[1], "c1", Some(ImagePhase::Ready));
        let other = {
            let mut cvi = gone.clone();
            cvi.metadata.name = Some("theirs".into());
            cvi.metadata.labels = Some([(keys::CATALOG.to_string(), "other".to_string())].into());
            cvi
        };
        let new = render(
            "base",
            &spec(),
            &[
                image("a", "https://x/a2.img"),
                image("b", "https://x/b.img"),
            ],
        );
        let plan = plan(
            "base",
            new,
            &[&a, &gone, &other],
            true,
            ReadyImagePolicy::Fail,
        );
        let changes: Vec<_> = plan
            .images
            .iter()
            .map(|i| (i.desired.name.as_str(), i.change))
            .collect();
        assert_eq!(changes, [("a", Change::Update), ("b", Change::Create)]);
        assert_eq!(
            plan.prune,
            [Prune {
                name: "gone".into(),
                uid: "uid-gone".into()
            }]
        );
        assert!(plan.problems.is_empty());
    }

    #[test]
    fn without_prune_nothing_is_deleted() {
        let old = render("base", &spec(), &[image("gone", "https://x/g.img")]);
        let gone = applied(&old[0], "c1", Some(ImagePhase::Ready));
        let plan = plan("base", vec![], &[&gone], false, ReadyImagePolicy::Fail);
        assert!(plan.prune.is_empty());
    }

    #[test]
    fn a_label_removed_from_the_entry_is_an_update() {
        let mut with_label = image("a", "https://x/a.img");
        with_label.labels.insert("extra".into(), "1".into());
        let old = render("base", &spec(), &[with_label]);
        let cluster = applied(&old[0], "c1", None);
        let new = render("base", &spec(), &[image("a", "https://x/a.img")]);
        let plan = plan("base", new, &[&cluster], true, ReadyImagePolicy::Fail);
        assert_eq!(plan.images[0].change, Change::Update);
    }

    #[test]
    fn a_hand_edit_of_a_field_the_catalog_sets_is_undone() {
        let desired = render("base", &spec(), &[image("a", "https://x/a.img")]);
        let mut cluster = applied(&desired[0], "c1", None);
        cluster.labels_mut().insert("os".into(), "edited".into());
        let plan = plan("base", desired, &[&cluster], true, ReadyImagePolicy::Fail);
        assert_eq!(plan.images[0].change, Change::Update);
    }

    #[test]
    fn a_ready_image_whose_source_changed_is_refused_or_recreated_by_policy() {
        let old = render("base", &spec(), &[image("a", "https://x/a.img")]);
        let ready = applied(&old[0], "c1", Some(ImagePhase::Ready));
        let new = render("base", &spec(), &[image("a", "https://x/other.img")]);
        let refused = plan("base", new.clone(), &[&ready], true, ReadyImagePolicy::Fail);
        assert!(refused.images.is_empty());
        assert_eq!(refused.problems.len(), 1);
        assert!(
            refused.problems[0]
                .to_string()
                .starts_with("images.yaml:2:11: image a is Ready and its dataSource changed")
        );
        let recreated = plan("base", new, &[&ready], true, ReadyImagePolicy::Recreate);
        assert_eq!(recreated.images[0].change, Change::Recreate);
        assert!(recreated.problems.is_empty());
    }

    #[test]
    fn a_ready_image_may_still_change_its_labels() {
        let old = render("base", &spec(), &[image("a", "https://x/a.img")]);
        let ready = applied(&old[0], "c1", Some(ImagePhase::Ready));
        let mut relabelled = image("a", "https://x/a.img");
        relabelled.labels.insert("new".into(), "yes".into());
        let new = render("base", &spec(), &[relabelled]);
        let plan = plan("base", new, &[&ready], true, ReadyImagePolicy::Fail);
        assert_eq!(plan.images[0].change, Change::Update);
    }

    #[test]
    fn names_owned_by_another_catalog_or_by_nobody_are_refused() {
        let desired = render(
            "base",
            &spec(),
            &[image("a", "https://x/a.img"), image("b", "https://x/b.img")],
        );
        let mut theirs = applied(&desired[0], "c1", None);
        theirs
            .labels_mut()
            .insert(keys::CATALOG.into(), "other".into());
        let mut by_hand = applied(&desired[1], "c1", None);
        by_hand.labels_mut().remove(keys::CATALOG);
        let plan = plan(
            "base",
            desired,
            &[&theirs, &by_hand],
            true,
            ReadyImagePolicy::Fail,
        );
        let problems: Vec<String> = plan.problems.iter().map(ToString::to_string).collect();
        assert!(
            problems[0].contains("image a belongs to the catalog other"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("image b already exists and no catalog manages it"),
            "{problems:?}"
        );
        assert!(
            plan.prune.is_empty(),
            "an image of another catalog is never pruned"
        );
    }

    /// A plan against `owned` applied images of which the commit keeps `kept`.
    fn pruning_plan(owned: usize, kept: usize) -> Plan {
        let names: Vec<String> = (0..owned).map(|i| format!("img-{i}")).collect();
        let old: Vec<CatalogImage> = names
            .iter()
            .map(|n| image(n, &format!("https://x/{n}.img")))
            .collect();
        let old = render("base", &spec(), &old);
        let cluster: Vec<ClusterVirtualImage> = old
            .iter()
            .map(|d| applied(d, "c1", Some(ImagePhase::Ready)))
            .collect();
        let new: Vec<CatalogImage> = names[..kept]
            .iter()
            .map(|n| image(n, &format!("https://x/{n}.img")))
            .collect();
        let new = render("base", &spec(), &new);
        plan(
            "base",
            new,
            &cluster.iter().collect::<Vec<_>>(),
            true,
            ReadyImagePolicy::Fail,
        )
    }

    #[test]
    fn a_commit_pruning_more_than_the_allowed_share_is_held_until_confirmed() {
        // 10 images, the default 50%: pruning 5 goes through, 6 is held.
        assert_eq!(hold(&pruning_plan(10, 5), None, 50, false), None);
        let held = hold(&pruning_plan(10, 4), None, 50, false).unwrap();
        assert_eq!(
            held,
            Hold::MassPrune {
                pruning: 6,
                owned: 10,
                max_percent: 50
            }
        );
        let message = held.message("base", "0123456789abcdef0123456789abcdef01234567");
        assert!(
            message.contains("would prune 6 of the catalog's 10 images"),
            "{message}"
        );
        assert!(
            message.contains(
                "kubectl annotate imagecatalog base imagecatalog.dev/confirm-commit=0123456789abcdef0123456789abcdef01234567"
            ),
            "{message}"
        );
        assert_eq!(hold(&pruning_plan(10, 4), None, 50, true), None);
        // Emptying the catalog is held; 100% never holds; nothing to prune never holds.
        assert!(hold(&pruning_plan(3, 0), None, 50, false).is_some());
        assert_eq!(hold(&pruning_plan(3, 0), None, 100, false), None);
        assert_eq!(hold(&pruning_plan(3, 3), None, 0, false), None);
        assert!(hold(&pruning_plan(3, 2), None, 0, false).is_some());
    }

    #[test]
    fn a_commit_that_does_not_descend_from_the_applied_one_is_held_until_confirmed() {
        let held = hold(&pruning_plan(4, 3), Some("c0ffee"), 50, false).unwrap();
        assert_eq!(
            held,
            Hold::ForcePush {
                applied: "c0ffee".into(),
                pruning: 1
            }
        );
        assert_eq!(held.reason(), "ForcePushHeld");
        assert!(
            held.message("base", "beef")
                .contains("would prune 1 images")
        );
        assert_eq!(hold(&pruning_plan(4, 3), Some("c0ffee"), 50, true), None);
    }

    #[test]
    fn only_the_full_commit_id_confirms() {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        assert!(confirms(Some(commit), commit));
        assert!(confirms(
            Some(&format!(" {} ", commit.to_uppercase())),
            commit
        ));
        assert!(!confirms(Some("0123456789ab"), commit));
        assert!(!confirms(None, commit));
    }
}
