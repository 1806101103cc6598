//! The checked-in corpora of bad input, each case with the answer it must get from the real
//! binary: catalogs (`image-catalog validate`) and disk images (`image-catalog inspect`).

mod common;

use std::process::Command;

/// The lines of the `expect` file in `dir`.
fn expect_lines(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("expect"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn every_bad_catalog_gets_the_problems_it_must_get() {
    let corpus = common::repo_root().join("tests/corpus/catalog");
    let mut cases: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "the corpus is there: {cases:?}");
    let mut wrong = Vec::new();
    for case in &cases {
        let file = case.join("images.yaml");
        let output = Command::new(env!("CARGO_BIN_EXE_image-catalog"))
            .arg("validate")
            .arg(case)
            .output()
            .unwrap();
        let shown = format!("{}:", file.display());
        let problems: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&output.stderr).lines())
            .filter(|line| !line.ends_with(" problem") && !line.ends_with(" problems"))
            .map(|line| {
                line.strip_prefix(&shown)
                    .unwrap_or(line)
                    .replace(&file.display().to_string(), "images.yaml")
            })
            .collect();
        let expected = expect_lines(case);
        if output.status.code() != Some(1) || problems != expected {
            wrong.push(format!(
                "{}: exit {:?}\n    got:      {problems:?}\n    expected: {expected:?}",
                case.display(),
                output.status.code()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_image_of_the_corpus_gets_the_verdict_it_must_get() {
    let corpus = common::repo_root().join("tests/corpus/images");
    let mut files: Vec<String> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| !matches!(name.as_str(), "make" | "expect" | "README.md"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the corpus is there: {files:?}");
    let output = Command::new(env!("CARGO_BIN_EXE_image-catalog"))
        .args(["inspect", "--max-unpacked-size", "67108864"])
        .args(&files)
        .current_dir(&corpus)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "refusals make the exit status 1: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let expected = expect_lines(&corpus);
    let wrong: Vec<String> = files
        .iter()
        .map(|file| {
            let prefix = format!("{file}: ");
            let find =
                |lines: &[String]| lines.iter().find(|line| line.starts_with(&prefix)).cloned();
            (find(&got), find(&expected))
        })
        .filter(|(got, expected)| got != expected || expected.is_none())
        .map(|(got, expected)| format!("    got:      {got:?}\n    expected: {expected:?}"))
        .collect();
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    assert_eq!(got.len(), files.len(), "one line per file: {got:?}");
}
