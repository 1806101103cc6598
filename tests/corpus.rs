//! Every bad catalog of `tests/corpus/catalog` gets exactly the problems its `expect` file
//! lists, from the real `image-catalog validate`, and exit status 1.

mod common;

use std::process::Command;

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
        let expected: Vec<String> = std::fs::read_to_string(case.join("expect"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
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
