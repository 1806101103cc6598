//! State that survives the daemon's death: the real controller binary is killed with SIGKILL
//! in the middle of the work and a new one is started in its place, against the real
//! apiserver and DVCR. Upload URLs keep working (the token's sha256 is on the image), an upload
//! cut by the death can be sent again to the same URL, and an HTTP import cut in the middle
//! starts over with honest progress. What is stored is read back with skopeo and compared byte
//! for byte.
//!
//! Each test runs its own pair of daemons on its own label selector, so killing one test's
//! daemon never touches another test's images. The daemons elect a leader on the Lease the
//! shipped RBAC allows (`image-catalog`), with short timings: the second daemon is a new
//! identity that takes the Lease over from the dead one once it expires, as a standby takes
//! over from a dead leader. One Lease, so the tests run one at a time.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::cvi::{SUITE_LABEL, get, manifest, phase, recreate};
use common::file_server::{Behavior, FileServer, write_random_file};
use common::stored::read_back;
use common::{TestEnv, curl_upload, testenv, wait_for};
use serde_json::Value;
use sha2::{Digest, Sha256};

const UPLOAD_TOKEN_SHA256: &str = "imagecatalog.dev/upload-token-sha256";
const RESTARTED: &str = "Restarted after the daemon restarted; fetching again from byte 0.";

/// The tests' daemons share one Lease: one test at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where a daemon listens; a restarted daemon uses the same addresses, as a restarted pod
/// behind the same Service does.
#[derive(Clone, Copy)]
struct Ports {
    metrics: u16,
    upload: u16,
}

/// The controller binary under a shell that prints its pid and kills it when the pipe this
/// process holds closes (the test ending, however it ends).
struct Daemon {
    shell: Child,
    pid: String,
}

impl Daemon {
    /// Runs the daemon as the ServiceAccount of deploy/rbac.yaml, for the images of `suite`.
    fn start(env: &TestEnv, dir: &Path, suite: &str, ports: Ports, run: u32) -> Self {
        let log = dir.join(format!("controller-{run}.log"));
        let kubeconfig = env.daemon_kubeconfig(dir);
        let Ports {
            metrics: metrics_port,
            upload,
        } = ports;
        let command = format!(
            "'{bin}' controller --selector {SUITE_LABEL}={suite} --metrics-addr 127.0.0.1:{metrics_port} \
             --max-concurrent-imports 4 --catalog-controller=false --verification=false \
             --leader-election-lease-duration-seconds 8 --leader-election-renew-deadline-seconds 6 \
             --leader-election-retry-period-seconds 2 \
             --upload-addr 127.0.0.1:{upload} --upload-external-url http://127.0.0.1:{upload} \
             --upload-in-cluster-url http://image-catalog-upload.image-catalog.svc \
             >'{log}' 2>&1 & pid=$!; echo $pid; read _; kill $pid 2>/dev/null",
            bin = env!("CARGO_BIN_EXE_image-catalog"),
            log = log.display(),
        );
        eprintln!("controller log: {}", log.display());
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(command)
            .envs(&env.vars)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,image_catalog=debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the controller starts");
        let mut pid = String::new();
        BufReader::new(shell.stdout.take().unwrap())
            .read_line(&mut pid)
            .unwrap();
        let pid = pid.trim().to_string();
        assert!(
            pid.parse::<u32>().is_ok(),
            "the shell printed a pid: {pid:?}"
        );
        let daemon = Self { shell, pid };
        wait_for(
            "the daemon to serve metrics",
            Duration::from_secs(60),
            || metrics(ports.metrics).map(|_| ()),
        );
        daemon
    }

    /// SIGKILL: no shutdown, no clean-up, as when a node or a container dies.
    fn kill(mut self) {
        let status = Command::new("kill")
            .args(["-KILL", &self.pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -KILL {}", self.pid);
        // Dead (a zombie until the shell reaps it) means its sockets are closed.
        let stat = format!("/proc/{}/stat", self.pid);
        wait_for("the daemon to die", Duration::from_secs(30), || {
            let dead = match std::fs::read_to_string(&stat) {
                Err(_) => true,
                Ok(stat) => stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with(['Z', 'X'])),
            };
            dead.then_some(())
        });
        drop(self.shell.stdin.take());
        let _ = self.shell.wait();
    }
}

/// A scratch directory for one test, kept (and named) when the test fails, for its logs.
struct Scratch(Option<tempfile::TempDir>);

impl Scratch {
    fn new() -> Self {
        Self(Some(tempfile::tempdir().unwrap()))
    }
    fn path(&self) -> &Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.0.take()
        {
            eprintln!("kept {} for its logs", dir.keep().display());
        }
    }
}

/// Fails when a token shows in any daemon log under `dir`.
fn assert_not_logged(dir: &Path, tokens: &[&str]) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap();
            for token in tokens {
                assert!(
                    !text.contains(token),
                    "a token leaked into {}",
                    path.display()
                );
            }
        }
    }
}

fn metrics(port: u16) -> Option<String> {
    let output = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .unwrap();
    output
        .status
        .success()
        .then(|| String::from_utf8(output.stdout).unwrap())
}

fn metric(port: u16, name: &str) -> Option<f64> {
    metrics(port)?
        .lines()
        .find(|line| line.split(' ').next() == Some(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

fn create(env: &TestEnv, suite: &str, name: &str, data_source: Value) {
    recreate(env, &manifest(suite, name, data_source));
}

fn ready_message(cvi: &Value) -> String {
    cvi["status"]["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or("")
        .to_string()
}

fn progress(cvi: &Value) -> Option<f64> {
    cvi["status"]["progress"]
        .as_str()?
        .trim_end_matches('%')
        .parse()
        .ok()
}

fn settled(env: &TestEnv, name: &str) -> Value {
    wait_for(
        &format!("{name} to be Ready or Failed"),
        Duration::from_secs(180),
        || get(env, name).filter(|cvi| matches!(phase(cvi), "Ready" | "Failed")),
    )
}

fn external_url(cvi: &Value) -> String {
    cvi["status"]["imageUploadURLs"]["external"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn waiting_for_upload(env: &TestEnv, name: &str) -> Value {
    wait_for(
        &format!("{name} to wait for its upload"),
        Duration::from_secs(60),
        || {
            get(env, name)
                .filter(|cvi| phase(cvi) == "WaitForUserUpload" && !external_url(cvi).is_empty())
        },
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn assert_ready_with(env: &TestEnv, name: &str, file: &Path) {
    let cvi = settled(env, name);
    assert_eq!(phase(&cvi), "Ready", "{name}: {}", ready_message(&cvi));
    let reference = cvi["status"]["target"]["registryURL"].as_str().unwrap();
    let (_, stored_sha256, _) = read_back(env, reference);
    assert_eq!(
        stored_sha256,
        sha256_hex(&std::fs::read(file).unwrap()),
        "{name} holds exactly the bytes of {}",
        file.display()
    );
}

#[test]
fn upload_urls_survive_a_killed_daemon_and_a_cut_upload_can_be_sent_again() {
    let _serial = one_at_a_time();
    let env = testenv();
    let suite = "restart-upload";
    let dir = Scratch::new();
    let small = dir.path().join("small.raw");
    write_random_file(&small, 3 << 20, 11);
    let big = dir.path().join("big.raw");
    write_random_file(&big, 24 << 20, 12);
    let ports = Ports {
        metrics: common::free_port(),
        upload: common::free_port(),
    };
    let first = Daemon::start(env, dir.path(), suite, ports, 1);

    // One image waits with URL U; another receives a slow upload when the daemon dies.
    create(
        env,
        suite,
        "restart-waiting",
        serde_json::json!({"type": "Upload"}),
    );
    create(
        env,
        suite,
        "restart-cut-upload",
        serde_json::json!({"type": "Upload"}),
    );
    let waiting = waiting_for_upload(env, "restart-waiting");
    let cut = waiting_for_upload(env, "restart-cut-upload");
    for cvi in [&waiting, &cut] {
        let url = external_url(cvi);
        let token = url.rsplit('/').next().unwrap();
        let stored = cvi["metadata"]["annotations"][UPLOAD_TOKEN_SHA256]
            .as_str()
            .expect("the token's hash is on the image");
        assert_eq!(
            stored,
            sha256_hex(token.as_bytes()),
            "the hash, not the token"
        );
        assert!(
            !serde_json::to_string(&cvi["metadata"])
                .unwrap()
                .contains(token)
        );
    }
    let (waiting_url, cut_url) = (external_url(&waiting), external_url(&cut));
    let mut slow = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--limit-rate", "1M", "-T"])
        .arg(&big)
        .arg(&cut_url)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the slow upload to be in progress",
        Duration::from_secs(60),
        || get(env, "restart-cut-upload").filter(|cvi| phase(cvi) == "Provisioning"),
    );

    first.kill();
    let _ = slow.kill();
    let _ = slow.wait();
    let second = Daemon::start(env, dir.path(), suite, ports, 2);
    wait_for(
        "the new daemon to open both upload URLs",
        Duration::from_secs(60),
        || (metric(ports.metrics, "image_catalog_uploads_open") == Some(2.0)).then_some(()),
    );

    let waiting = get(env, "restart-waiting").unwrap();
    assert_eq!(phase(&waiting), "WaitForUserUpload");
    assert_eq!(external_url(&waiting), waiting_url, "the URL is unchanged");
    let cut = wait_for(
        "the cut upload to be waited for again",
        Duration::from_secs(60),
        || {
            get(env, "restart-cut-upload").filter(|cvi| {
                phase(cvi) == "WaitForUserUpload" && ready_message(cvi).contains("interrupted")
            })
        },
    );
    assert_eq!(external_url(&cut), cut_url, "the URL is unchanged");
    assert!(
        ready_message(&cut).contains("same URL"),
        "{}",
        ready_message(&cut)
    );

    // A wrong token learns nothing, before or after.
    let base = waiting_url.rsplit_once('/').unwrap().0;
    let (code, body) = curl_upload(&format!("{base}/{}", "0".repeat(64)), &small, &[]);
    assert_eq!(
        (code, body.trim()),
        (404, ""),
        "a wrong token gets a bare 404"
    );

    let (code, body) = curl_upload(&waiting_url, &small, &[]);
    assert_eq!(code, 201, "{body}");
    assert_ready_with(env, "restart-waiting", &small);
    let (code, body) = curl_upload(&cut_url, &big, &[]);
    assert_eq!(code, 201, "{body}");
    assert_ready_with(env, "restart-cut-upload", &big);
    drop(second);
    let token = |url: &str| url.rsplit('/').next().unwrap().to_string();
    assert_not_logged(dir.path(), &[&token(&waiting_url), &token(&cut_url)]);
}

#[test]
fn an_http_import_cut_by_a_killed_daemon_starts_over_with_progress_from_zero() {
    let _serial = one_at_a_time();
    let env = testenv();
    let suite = "restart-http";
    let dir = Scratch::new();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let file = files.join("restart.raw");
    write_random_file(&file, 8 << 20, 21);
    let server = FileServer::start(&files);
    // The first daemon's download pauses at 75%, until the test lets it go on.
    server.set_behavior(
        "/restart.raw",
        Behavior::default().hold_after(6 << 20, u64::MAX),
    );
    let ports = Ports {
        metrics: common::free_port(),
        upload: common::free_port(),
    };
    let first = Daemon::start(env, dir.path(), suite, ports, 1);
    create(
        env,
        suite,
        "restart-http",
        serde_json::json!({"type": "HTTP", "http": {"url": server.url("restart.raw")}}),
    );
    let before = wait_for("the download to reach 75%", Duration::from_secs(60), || {
        get(env, "restart-http").filter(|cvi| progress(cvi).is_some_and(|p| p >= 75.0))
    });
    let before = progress(&before).unwrap();

    first.kill();
    // The new daemon's download pauses at 25%: the status must say so, not stay at 75%.
    server.set_behavior(
        "/restart.raw",
        Behavior::default().hold_after(2 << 20, u64::MAX),
    );
    let second = Daemon::start(env, dir.path(), suite, ports, 2);
    let restarted = wait_for(
        "the progress to go back with the restart",
        Duration::from_secs(60),
        || {
            get(env, "restart-http").filter(|cvi| {
                phase(cvi) == "Provisioning"
                    && ready_message(cvi).starts_with(RESTARTED)
                    && progress(cvi).is_some_and(|p| p < before)
            })
        },
    );
    let message = ready_message(&restarted);
    assert!(
        progress(&restarted).is_some_and(|p| p <= 25.0),
        "{:?}: {message}",
        restarted["status"]["progress"]
    );

    server.set_behavior("/restart.raw", Behavior::default());
    server.release_held();
    assert_ready_with(env, "restart-http", &file);
    let cvi = get(env, "restart-http").unwrap();
    assert_eq!(cvi["status"]["progress"], "100%");
    assert_eq!(
        cvi["status"]["observedGeneration"],
        cvi["metadata"]["generation"]
    );
    drop(second);
}
