//! Faults of the systems around the daemon in the middle of an import, on the real ones: DVCR,
//! the kube-apiserver and etcd killed with SIGKILL and started again on the same address with
//! the same data (`scripts/testenv kill|restart`). After each, the image ends Ready with
//! exactly the bytes of its file, nothing of the import is left behind, and the bytes
//! fetched again are reported.
//!
//! These tests stop components every test of the environment shares: they run one at a time,
//! and each brings its component back before it ends, whatever happens.

mod common;

use std::process::Command;
use std::time::Duration;

use common::cut_proxy::CutProxy;
use common::cvi::{checkpoint, get, manifest, phase, recreate};
use common::daemon::{Daemon, Ports, Scratch};
use common::file_server::{Behavior, FileServer, write_random_file};
use common::stored::read_back;
use common::{TestEnv, repo_root, testenv, wait_for};
use serde_json::Value;
use sha2::{Digest, Sha256};

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn testenv_command(args: &[&str]) {
    let status = Command::new(repo_root().join("scripts/testenv"))
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "scripts/testenv {}", args.join(" "));
}

/// A component killed for the length of a test: started again when dropped, also when the
/// test fails half-way.
struct Killed(&'static str);

impl Killed {
    fn now(component: &'static str) -> Self {
        testenv_command(&["kill", component]);
        Self(component)
    }

    fn restart(self) {
        testenv_command(&["restart", self.0]);
        std::mem::forget(self);
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/testenv"))
            .args(["restart", self.0])
            .status();
    }
}

fn ready_condition(cvi: &Value) -> Value {
    common::condition(cvi, "Ready").unwrap_or(Value::Null)
}

fn checkpoint_offset(env: &TestEnv, uid: &str) -> Option<u64> {
    checkpoint(env, uid)?["offset"].as_u64()
}

/// A 64 MiB file served at 8 MiB/s, and a daemon importing it; returns once a checkpoint
/// beyond a quarter of the file is saved.
struct Import {
    _dir: Scratch,
    file: std::path::PathBuf,
    server: FileServer,
    daemon: Option<Daemon>,
    name: &'static str,
    size: u64,
}

impl Import {
    fn start(env: &TestEnv, name: &'static str) -> Self {
        Self::start_with(env, name, "")
    }

    /// As `start`, with more daemon flags.
    fn start_with(env: &TestEnv, name: &'static str, extra: &str) -> Self {
        let dir = Scratch::new();
        let files = dir.path().join("files");
        std::fs::create_dir_all(&files).unwrap();
        let size: u64 = 64 << 20;
        let file = files.join(format!("{name}.raw"));
        write_random_file(&file, size, 47);
        let server = FileServer::start(&files);
        server.set_behavior("/", Behavior::default().rate(8 << 20));
        let ports = Ports {
            metrics: common::free_port(),
            upload: common::free_port(),
        };
        // Without leader election: a daemon that cannot renew a Lease while the apiserver
        // is down stops, which is right in a cluster (it restarts) but not what is tested.
        let daemon = Daemon::start_with(
            env,
            dir.path(),
            "faults",
            ports,
            1,
            &format!("--leader-election=false {extra}"),
        );
        recreate(
            env,
            &manifest(
                "faults",
                name,
                serde_json::json!({"type": "HTTP", "http": {"url": server.url(&format!("{name}.raw"))}}),
            ),
        );
        let uid = wait_for("the image to exist", Duration::from_secs(30), || {
            get(env, name).and_then(|cvi| cvi["metadata"]["uid"].as_str().map(str::to_string))
        });
        wait_for(
            "a checkpoint a quarter into the file",
            Duration::from_secs(60),
            || checkpoint_offset(env, &uid).filter(|offset| *offset >= size / 4),
        );
        Self {
            _dir: dir,
            file,
            server,
            daemon: Some(daemon),
            name,
            size,
        }
    }

    fn uid(&self, env: &TestEnv) -> String {
        get(env, self.name).unwrap()["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn fetched(&self) -> u64 {
        self.server.bytes_sent(&format!("/{}.raw", self.name))
    }

    /// The image ends Ready with exactly the file's bytes; returns how many times its size
    /// was fetched.
    fn assert_ready(mut self, env: &TestEnv) -> f64 {
        let cvi = wait_for(
            &format!("{} to be Ready or Failed", self.name),
            Duration::from_secs(300),
            || get(env, self.name).filter(|cvi| matches!(phase(cvi), "Ready" | "Failed")),
        );
        assert_eq!(
            phase(&cvi),
            "Ready",
            "{}: {}",
            self.name,
            ready_condition(&cvi)["message"]
        );
        let reference = cvi["status"]["target"]["registryURL"].as_str().unwrap();
        let (_, stored_sha256, _) = read_back(env, reference);
        assert_eq!(
            stored_sha256,
            hex::encode(Sha256::digest(std::fs::read(&self.file).unwrap())),
            "{} holds exactly the bytes of its file",
            self.name
        );
        let uid = cvi["metadata"]["uid"].as_str().unwrap();
        wait_for(
            "the checkpoint to be deleted",
            Duration::from_secs(30),
            || checkpoint_offset(env, uid).is_none().then_some(()),
        );
        drop(self.daemon.take());
        self.fetched() as f64 / self.size as f64
    }
}

#[test]
fn dvcr_killed_mid_import_the_import_goes_on_from_its_checkpoint_once_dvcr_is_back() {
    let _serial = one_at_a_time();
    let env = testenv();
    let import = Import::start(env, "fault-dvcr");
    let killed = Killed::now("dvcr");
    // The upload breaks: the image says it retries.
    wait_for("the image to retry", Duration::from_secs(60), || {
        get(env, import.name).filter(|cvi| ready_condition(cvi)["reason"] == "Retrying")
    });
    killed.restart();
    let ratio = import.assert_ready(env);
    eprintln!("DVCR killed and restarted: fetched {ratio:.3}x the image");
    // From byte 0 the retry would fetch the whole file again on top of what came before.
    assert!(ratio < 1.5, "fetched {ratio:.3}x the image");
}

/// `component` away for a while in the middle of an import, which goes on meanwhile (it
/// needs the apiserver only to report) and costs no byte more.
fn away_mid_import(component: &'static str, name: &'static str) {
    let _serial = one_at_a_time();
    let env = testenv();
    let import = Import::start(env, name);
    let before = import.fetched();
    let killed = Killed::now(component);
    wait_for(
        &format!("the download to go on without {component}"),
        Duration::from_secs(60),
        || (import.fetched() >= before + (8 << 20)).then_some(()),
    );
    killed.restart();
    let ratio = import.assert_ready(env);
    eprintln!("{component} killed and restarted: fetched {ratio:.3}x the image");
    assert!(ratio < 1.1, "fetched {ratio:.3}x the image");
}

#[test]
fn the_apiserver_killed_mid_import_the_import_goes_on_and_reports_once_it_is_back() {
    away_mid_import("kube-apiserver", "fault-apiserver");
}

#[test]
fn etcd_killed_mid_import_the_import_goes_on_and_reports_once_it_is_back() {
    away_mid_import("etcd", "fault-etcd");
}

#[test]
fn connections_to_dvcr_cut_twice_mid_import_the_import_goes_on_from_its_checkpoints() {
    let _serial = one_at_a_time();
    let env = testenv();
    let proxy = CutProxy::start(env.dvcr_registry().parse().unwrap());
    let import = Import::start_with(
        env,
        "fault-cut",
        &format!("--dvcr-registry {}", proxy.addr()),
    );
    for cut in 1..=2 {
        let offset = checkpoint_offset(env, &import.uid(env)).unwrap_or(0);
        assert!(
            proxy.cut_all() > 0,
            "cut {cut}: the upload runs through the proxy"
        );
        wait_for(
            &format!("the image to retry after cut {cut}"),
            Duration::from_secs(60),
            || get(env, import.name).filter(|cvi| ready_condition(cvi)["reason"] == "Retrying"),
        );
        if cut == 1 {
            // Going on: a later checkpoint than the one before the cut.
            wait_for(
                "a checkpoint past the first cut",
                Duration::from_secs(120),
                || checkpoint_offset(env, &import.uid(env)).filter(|now| *now > offset + (4 << 20)),
            );
        }
    }
    let ratio = import.assert_ready(env);
    eprintln!("two cuts of the connections to DVCR: fetched {ratio:.3}x the image");
    assert!(ratio < 1.5, "fetched {ratio:.3}x the image");
}
