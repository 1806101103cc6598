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
fn applied(desired: &DesiredImage, commit: &str, phase: Option<ImagePhase>) -> ClusterVirtualImage {
    let mut cvi: ClusterVirtualImage = serde_json::from_value(desired.manifest(commit)).unwrap();
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
