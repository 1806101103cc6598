//! `scripts/testenv` in a separate state directory, so the shared environment of the other
//! tests is not disturbed: up and down leave nothing running; a crashed environment recovers.

mod common;

use std::path::Path;
use std::process::Command;

use common::{read_env_file, repo_root};

fn testenv(dir: &Path, command: &str) -> std::process::Output {
    Command::new(repo_root().join("scripts/testenv"))
        .arg(command)
        .env("TESTENV_DIR", dir)
        .output()
        .expect("scripts/testenv runs")
}

fn must(dir: &Path, command: &str) {
    let output = testenv(dir, command);
    assert!(
        output.status.success(),
        "testenv {command} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// PIDs of every process whose command line names the state directory.
fn processes_of(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

fn kubectl_works(dir: &Path) -> bool {
    let env = read_env_file(&dir.join("env"));
    Command::new("kubectl")
        .args([
            "get",
            "crd",
            "clustervirtualimages.virtualization.deckhouse.io",
        ])
        .env("KUBECONFIG", &env["KUBECONFIG"])
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false)
}

#[test]
fn up_then_down_leaves_nothing_running_and_a_killed_environment_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("testenv");

    must(&state, "up");
    let started = processes_of(&state);
    assert!(
        started.len() >= 3,
        "etcd, kube-apiserver and DVCR run: {started:?}"
    );
    assert!(
        kubectl_works(&state),
        "the CRDs are installed and the apiserver answers"
    );
    must(&state, "up"); // harmless a second time
    assert_eq!(
        processes_of(&state),
        started,
        "a second up starts nothing new"
    );

    must(&state, "down");
    assert_eq!(
        processes_of(&state),
        Vec::<u32>::new(),
        "down leaves no process behind"
    );

    must(&state, "up");
    for pid in processes_of(&state) {
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
    }
    must(&state, "up");
    assert!(
        kubectl_works(&state),
        "up after kill -9 brings a working environment back"
    );
    must(&state, "down");
    assert_eq!(processes_of(&state), Vec::<u32>::new());
}
