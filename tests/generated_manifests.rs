//! Generated artefacts are produced by the binary and checked in; these fail when the checked-in
//! copies drift from the code.

use std::collections::BTreeSet;
use std::path::Path;

use image_catalog::api::crds;

/// Where the generated CRDs live: in the chart, which templates them.
const CRD_DIR: &str = "deploy/chart/files/crds";
const REGENERATE: &str = "run: cargo run -- crds --write deploy/chart/files/crds";

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn checked_in_crds_equal_the_generated_ones() {
    let dir = repo_root().join(CRD_DIR);
    let mut expected_files = BTreeSet::new();
    for crd in crds::all() {
        let name = crds::file_name(&crd);
        let generated = crds::to_yaml(&crd).unwrap();
        let checked_in = std::fs::read_to_string(dir.join(&name))
            .unwrap_or_else(|e| panic!("{CRD_DIR}/{name} is missing ({e}); {REGENERATE}"));
        assert!(
            checked_in == generated,
            "{CRD_DIR}/{name} differs from the code; {REGENERATE}"
        );
        expected_files.insert(name);
    }
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        present, expected_files,
        "{CRD_DIR} holds files the code no longer generates"
    );
}

#[test]
fn crds_subcommand_prints_every_crd() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_image-catalog"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(printed, crds::all_yaml().unwrap());
    assert!(printed.contains("name: clustervirtualimages.virtualization.deckhouse.io"));
    assert!(printed.contains("name: virtualimages.virtualization.deckhouse.io"));
}

#[test]
fn checked_in_catalog_schema_equals_the_generated_one() {
    let path = repo_root().join("catalog-schema/catalog.schema.json");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == image_catalog::catalog::document::json_schema_text(),
        "catalog-schema/catalog.schema.json differs from the code; run: cargo run -- schema --write catalog-schema/catalog.schema.json"
    );
}

#[test]
fn validate_accepts_the_example_catalog_and_points_at_each_problem() {
    let binary = env!("CARGO_BIN_EXE_image-catalog");
    let root = repo_root();
    let good = std::process::Command::new(binary)
        .args(["validate", "examples/catalog/images"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stdout)
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "images:\n  - name: Bad.Name\n    dataSource:\n      type: HTTP\n      http: {url: 'ftp://x/y'}\n",
    )
    .unwrap();
    let bad = std::process::Command::new(binary)
        .args(["validate", "."])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let stdout = String::from_utf8(bad.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("bad.yaml:2:11: images[0].name:"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("bad.yaml:5:19: images[0].dataSource.http.url:"),
        "{stdout}"
    );

    // An absolute path works from anywhere and names files by their full path.
    let absolute = std::process::Command::new(binary)
        .arg("validate")
        .arg(dir.path())
        .current_dir(root)
        .output()
        .unwrap();
    assert_eq!(absolute.status.code(), Some(1));
    let stdout = String::from_utf8(absolute.stdout).unwrap();
    let expected = format!("{}:2:11: ", dir.path().join("bad.yaml").display());
    assert!(stdout.starts_with(&expected), "{stdout}");
}
