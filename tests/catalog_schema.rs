//! The catalog JSON Schema as editors and CI validators load it: ajv (strict, the ECMA-262
//! regular expressions editors compile) and check-jsonschema accept the example catalog, and
//! refuse every bad catalog of the corpus whose problem is the schema's to catch.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;

const SCHEMA: &str = "catalog-schema/catalog.schema.json";

fn schema_check(validator: &str, files: &[PathBuf]) -> Output {
    let root = common::repo_root();
    Command::new(root.join("scripts/schema-check"))
        .arg(validator)
        .arg(root.join(SCHEMA))
        .args(files)
        .output()
        .expect("scripts/schema-check runs")
}

/// ajv's problems with each file (every YAML document of it).
fn ajv_problems(files: &[PathBuf]) -> Vec<(String, Vec<String>)> {
    let output = schema_check("ajv", files);
    assert!(
        output.status.success(),
        "ajv could not run: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let result: serde_json::Value = serde_json::from_str(line).unwrap();
            let problems = result["problems"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string())
                .collect();
            (result["file"].as_str().unwrap().to_string(), problems)
        })
        .collect()
}

/// Each YAML document of `file` as a JSON file of its own: check-jsonschema reads one
/// document per file.
fn documents(file: &Path, dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(file).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .enumerate()
        .map(|(i, document)| {
            let value = serde_json::Value::deserialize(document).unwrap();
            let stem = file
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy();
            let name = file.file_stem().unwrap().to_string_lossy();
            let path = dir.join(format!("{stem}-{name}-{i}.json"));
            std::fs::write(&path, value.to_string()).unwrap();
            path
        })
        .collect()
}

fn example_files() -> Vec<PathBuf> {
    let dir = common::repo_root().join("examples/catalog/images");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_example_catalog_passes_the_validators_editors_use() {
    let files = example_files();
    assert!(files.len() >= 3, "{files:?}");
    for (file, problems) in ajv_problems(&files) {
        assert!(problems.is_empty(), "ajv refuses {file}: {problems:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let documents: Vec<PathBuf> = files
        .iter()
        .flat_map(|file| documents(file, dir.path()))
        .collect();
    let output = schema_check("check-jsonschema", &documents);
    assert!(
        output.status.success(),
        "check-jsonschema refuses the examples: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_catalog_the_schema_must_refuse_is_refused_by_both_validators() {
    let corpus = common::repo_root().join("tests/corpus/catalog");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|case| case.join("schema-refuses").exists())
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "the marked cases are there: {cases:?}");
    let files: Vec<PathBuf> = cases.iter().map(|case| case.join("images.yaml")).collect();
    let accepted_by_ajv: Vec<String> = ajv_problems(&files)
        .into_iter()
        .filter(|(_, problems)| problems.is_empty())
        .map(|(file, _)| file)
        .collect();
    assert!(
        accepted_by_ajv.is_empty(),
        "ajv accepts {accepted_by_ajv:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let accepted_by_check_jsonschema: Vec<&PathBuf> = files
        .iter()
        .filter(|file| {
            schema_check("check-jsonschema", &documents(file, dir.path()))
                .status
                .success()
        })
        .collect();
    assert!(
        accepted_by_check_jsonschema.is_empty(),
        "check-jsonschema accepts {accepted_by_check_jsonschema:?}"
    );
}
