//! Generated artefacts are produced by the binary and checked in; these fail when the checked-in
//! copies drift from the code.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use image_catalog::api::crds;
use serde::Deserialize;

/// Where the generated CRDs live: in the chart, which renders them into deploy/crds.
const CRD_DIR: &str = "deploy/chart/files/crds";
const REGENERATE: &str =
    "run: cargo run -- crds --write deploy/chart/files/crds && scripts/render-deploy";

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

/// Every file under `dir`, as paths relative to it, skipping the folder `skip`.
fn files_under(dir: &Path, skip: Option<&Path>) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if Some(path.as_path()) == skip {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else {
                found.insert(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    found
}

/// The raw manifests of deploy/ are `helm template` of the chart (scripts/render-deploy):
/// `kubectl apply` users get the objects Helm users get.
#[test]
fn rendered_deploy_manifests_equal_the_chart() {
    let deploy = repo_root().join("deploy");
    let rendered = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(repo_root().join("scripts/render-deploy"))
        .arg(rendered.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "scripts/render-deploy failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected = files_under(rendered.path(), None);
    let present = files_under(&deploy, Some(&deploy.join("chart")));
    assert_eq!(
        present, expected,
        "deploy/ holds other files than the chart renders; run: scripts/render-deploy"
    );
    for file in &expected {
        let want = std::fs::read_to_string(rendered.path().join(file)).unwrap();
        let have = std::fs::read_to_string(deploy.join(file)).unwrap();
        assert!(
            have == want,
            "deploy/{} differs from the chart's rendering; run: scripts/render-deploy",
            file.display()
        );
    }
}

/// The same JSON with every number as a float: Helm prints `minimum: 0.0` as `0`, which is
/// the same number to the API server.
fn numbers_as_floats(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Number(n), Value::Number),
        Value::Array(items) => Value::Array(items.into_iter().map(numbers_as_floats).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| (key, numbers_as_floats(value)))
                .collect(),
        ),
        other => other,
    }
}

/// Helm re-serialises the CRDs it templates: what reaches the cluster must still be the
/// generated CRD, only with the chart's labels added.
#[test]
fn rendered_crds_are_the_generated_ones_with_labels() {
    for crd in crds::all() {
        let name = crds::file_name(&crd);
        let text = std::fs::read_to_string(repo_root().join("deploy/crds").join(&name))
            .unwrap_or_else(|e| panic!("deploy/crds/{name} is missing ({e}); {REGENERATE}"));
        let mut documents = serde_yaml::Deserializer::from_str(&text)
            .map(|document| serde_json::Value::deserialize(document).unwrap())
            .filter(|document| !document.is_null());
        let mut rendered = documents.next().unwrap();
        assert!(
            documents.next().is_none(),
            "deploy/crds/{name}: one CRD per file"
        );
        let metadata = rendered["metadata"].as_object_mut().unwrap();
        let labels = metadata.remove("labels").unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "image-catalog");
        metadata.remove("annotations");
        assert_eq!(
            numbers_as_floats(rendered),
            numbers_as_floats(serde_json::to_value(&crd).unwrap()),
            "deploy/crds/{name} is not the generated CRD"
        );
    }
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
