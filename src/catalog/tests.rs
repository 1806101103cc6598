use super::*;

fn file(path: &str, text: &str) -> SourceFile {
    SourceFile {
        path: path.into(),
        content: text.as_bytes().to_vec(),
    }
}

fn problems(files: &[SourceFile]) -> Vec<String> {
    match load(files) {
        Ok(images) => panic!("expected problems, got {} images", images.len()),
        Err(problems) => problems.iter().map(ToString::to_string).collect(),
    }
}

const GOOD: &str = "\
images:
  - name: alpine-3-20
    labels: {os: alpine}
    verification: {schedule: '17 3 * * *'}
    dataSource:
      type: HTTP
      http:
        url: https://mirror.example/alpine.qcow2
        checksum: {sha256: 78be890d71dde316c412da2ce8332ba47b9ce7a29d573801d2777e01aa20b9b5}
  - name: debian-12
    dataSource:
      type: ContainerImage
      containerImage: {image: registry.example/images/debian:12}
";

const MANIFEST: &str = "\
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: ClusterVirtualImage
metadata:
  name: ubuntu-24-04
  annotations:
    imagecatalog.dev/verify-schedule: '0 4 * * 0'
spec:
  dataSource:
    type: HTTP
    http: {url: 'https://cloud-images.example/noble.img'}
";

#[test]
fn image_lists_and_plain_manifests_both_become_images() {
    let images = load(&[
        file("images/base.yaml", GOOD),
        file("images/ubuntu.yml", MANIFEST),
    ])
    .unwrap();
    let names: Vec<_> = images.iter().map(|image| image.name.as_str()).collect();
    assert_eq!(names, ["alpine-3-20", "debian-12", "ubuntu-24-04"]);
    assert_eq!(images[0].location.to_string(), "images/base.yaml:2:11");
    assert_eq!(images[0].labels["os"], "alpine");
    assert_eq!(
        images[2].verification.as_ref().unwrap().schedule.as_deref(),
        Some("0 4 * * 0")
    );
    assert!(
        images[2].annotations.is_empty(),
        "the schedule is not copied as a plain annotation"
    );
}

#[test]
fn several_documents_in_one_file_and_empty_documents_are_fine() {
    let text = format!("---\n{GOOD}---\n{MANIFEST}---\n");
    assert_eq!(load(&[file("all.yaml", &text)]).unwrap().len(), 3);
}

#[test]
fn a_wrong_pattern_is_reported_at_the_field_with_its_path() {
    let text = GOOD.replace(
        "78be890d71dde316c412da2ce8332ba47b9ce7a29d573801d2777e01aa20b9b5",
        "abc",
    );
    let found = problems(&[file("c.yaml", &text)]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("c.yaml:9:28: images[0].dataSource.http.checksum.sha256:"),
        "{found:?}"
    );
}

#[test]
fn unknown_fields_are_reported_at_their_key() {
    let text = GOOD.replace("checksum:", "checksums:");
    let found = problems(&[file("c.yaml", &text)]);
    assert_eq!(
        found,
        [
            "c.yaml:9:9: unknown field images[0].dataSource.http.checksums; check its spelling against catalog-schema/README.md"
        ]
    );
}

#[test]
fn the_cel_rules_of_the_crd_apply_to_catalog_entries() {
    let text = "images:\n  - name: x\n    dataSource:\n      type: HTTP\n      containerImage: {image: r.example/x:1}\n";
    let found = problems(&[file("c.yaml", text)]);
    assert!(
        found
            .iter()
            .any(|p| p.contains("http is required when type is HTTP")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("c.yaml:5:23") && p.contains("containerImage must not be set")),
        "{found:?}"
    );
}

#[test]
fn names_that_are_not_dns_subdomains_are_refused() {
    for name in ["Ubuntu", "-x", "x-", "a..b", ".a", "a.", "a.-b", "a_b"] {
        let text = GOOD.replace("alpine-3-20", name);
        let found = problems(&[file("c.yaml", &text)]);
        assert!(
            found.len() == 1 && found[0].starts_with("c.yaml:2:11: images[0].name:"),
            "{name}: {found:?}"
        );
    }
}

#[test]
fn names_with_dots_are_accepted_as_the_product_documentation_uses_them() {
    for name in ["ubuntu-22.04", "a.b.c", "1.2-x"] {
        let text = GOOD.replace("alpine-3-20", name);
        let images = load(&[file("c.yaml", &text)]).unwrap_or_else(|p| panic!("{name}: {p:?}"));
        assert!(images.iter().any(|image| image.name == name), "{name}");
    }
}

#[test]
fn a_name_defined_twice_names_both_places() {
    let found = problems(&[file("a.yaml", GOOD), file("b.yaml", GOOD)]);
    assert_eq!(
        found,
        [
            "b.yaml:2:11: image alpine-3-20 is already defined at a.yaml:2:11; each name may appear once in a catalog",
            "b.yaml:10:11: image debian-12 is already defined at a.yaml:10:11; each name may appear once in a catalog",
        ]
    );
}

#[test]
fn syntax_errors_point_at_the_line_and_the_other_files_are_still_checked() {
    let found = problems(&[
        file("broken.yaml", "images:\n  - name: [unclosed\n"),
        file("other.yaml", "images:\n  - name: x\n"),
    ]);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with("broken.yaml:3:1: YAML syntax:"),
        "{found:?}"
    );
    assert_eq!(found[1], "other.yaml:2:5: images[0].dataSource is required");
}

#[test]
fn a_wrong_schedule_is_reported_where_it_is_written() {
    let text = GOOD.replace("17 3 * * *", "17 3 * *");
    let found = problems(&[file("c.yaml", &text)]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("c.yaml:4:30: \"17 3 * *\" has 4 fields"),
        "{found:?}"
    );
    let manifest = MANIFEST.replace("0 4 * * 0", "61 4 * * 0");
    let found = problems(&[file("m.yaml", &manifest)]);
    assert!(found[0].starts_with("m.yaml:6:39:"), "{found:?}");
}

#[test]
fn keys_the_daemon_owns_and_bad_label_values_are_refused() {
    let text = GOOD.replace(
        "labels: {os: alpine}",
        "labels: {imagecatalog.dev/catalog: x, os: 'not ok'}",
    );
    let found = problems(&[file("c.yaml", &text)]);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found
            .iter()
            .any(|p| p.contains("set by image-catalog itself"))
    );
    assert!(
        found
            .iter()
            .any(|p| p.contains("label os: the value \"not ok\""))
    );
}

#[test]
fn other_kubernetes_kinds_and_stray_yaml_are_refused() {
    let found = problems(&[
        file(
            "cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        ),
        file("list.yaml", "- a\n- b\n"),
    ]);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with("cm.yaml:2:7: a document of kind ConfigMap"),
        "{found:?}"
    );
    assert!(
        found[1].starts_with("list.yaml:1:1: not a catalog document"),
        "{found:?}"
    );
}

#[test]
fn duplicate_keys_are_problems_not_silent_overwrites() {
    let text = GOOD.replace(
        "    labels: {os: alpine}\n",
        "    labels: {os: alpine}\n    labels: {}\n",
    );
    let found = problems(&[file("c.yaml", &text)]);
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("c.yaml:4:5: images[0].labels appears twice")),
        "{found:?}"
    );
}

#[test]
fn the_examples_catalog_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/catalog");
    let files = read_dir(&root, "images").unwrap();
    assert!(!files.is_empty());
    if let Err(problems) = load(&files) {
        panic!("{problems:#?}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

    #[test]
    fn any_catalog_text_gets_images_or_problems_not_a_panic(text in "[ -~\n]{0,400}") {
        let _ = load(&[file("images/a.yaml", &text)]);
    }

    #[test]
    fn yaml_shaped_text_gets_images_or_problems_not_a_panic(
        lines in proptest::collection::vec("( {0,6})(- )?([a-zA-Z]{1,8}: )?([a-z0-9&*!|>\\[\\]{}'\"-]{0,12})", 0..30)
    ) {
        let _ = load(&[file("images/a.yaml", &lines.join("\n"))]);
    }
}
