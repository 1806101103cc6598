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

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cut_proxy::CutProxy;
use common::cvi::{checkpoint, get, manifest, phase, recreate};
use common::daemon::{Daemon, Ports, Scratch, metric};
use common::file_server::{Behavior, FileServer, write_random_file};
use common::source_registry::SourceRegistry;
use common::stored::read_back;
use common::{TestEnv, curl_upload, testenv, wait_for};
use serde_json::Value;
use sha2::{Digest, Sha256};

const UPLOAD_TOKEN_SHA256: &str = "imagecatalog.dev/upload-token-sha256";
const RESTARTED: &str = "Restarted after the daemon restarted; fetching again from byte 0.";
const RESUMED: &str = "Resumed from its checkpoint after the daemon restarted";

/// The tests' daemons share one Lease: one test at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    let sessions_before = open_sessions(env, "cvi/restart-cut-upload");
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
    // Its checkpoint names the DVCR session, which the next daemon must cancel.
    wait_for("the upload's checkpoint", Duration::from_secs(30), || {
        checkpoint(env, &uid(&cut))
    });

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
    assert_nothing_left(env, "restart-cut-upload", &sessions_before);
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

fn uid(cvi: &Value) -> String {
    cvi["metadata"]["uid"].as_str().unwrap().to_string()
}

/// DVCR upload sessions open in `repository`, read from the registry's storage (the API has
/// no list of them): the directories with a start time. (distribution leaves a stray hash
/// state behind in the directory of every session it cancels; that is not a session.)
fn open_sessions(env: &TestEnv, repository: &str) -> std::collections::BTreeSet<String> {
    let dir = Path::new(env.var("TESTENV_DVCR_DATA"))
        .join("docker/registry/v2/repositories")
        .join(repository)
        .join("_uploads");
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .filter(|entry| entry.path().join("startedat").exists())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Sessions of `name` opened since `before` that hold no byte: a daemon killed in the few
/// milliseconds between opening a session and recording it leaves one to the registry's
/// purge (DVCR lets a client neither name nor list sessions, so nothing can find it).
fn empty_sessions_left(
    env: &TestEnv,
    name: &str,
    before: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    let uploads = Path::new(env.var("TESTENV_DVCR_DATA"))
        .join("docker/registry/v2/repositories/cvi")
        .join(name)
        .join("_uploads");
    open_sessions(env, &format!("cvi/{name}"))
        .difference(before)
        .filter(|session| {
            std::fs::metadata(uploads.join(session).join("data")).map_or(true, |m| m.len() == 0)
        })
        .cloned()
        .collect()
}

/// After an import: nothing of it is left behind, neither its checkpoint nor a session
/// beyond those open before the test (`before`, left by an earlier run of the suite).
fn assert_nothing_left(env: &TestEnv, name: &str, before: &std::collections::BTreeSet<String>) {
    let cvi = get(env, name).unwrap();
    assert_eq!(
        checkpoint(env, &uid(&cvi)),
        None,
        "the checkpoint is deleted"
    );
    let left: Vec<_> = open_sessions(env, &format!("cvi/{name}"))
        .difference(before)
        .cloned()
        .collect();
    assert_eq!(
        left,
        Vec::<String>::new(),
        "no DVCR upload session is left open"
    );
}

/// An 8 MiB file whose download pauses at 6 MiB, and a first daemon importing it as `name`
/// that has saved its checkpoint there.
struct HeldAtCheckpoint {
    dir: Scratch,
    files: std::path::PathBuf,
    file: std::path::PathBuf,
    path: String,
    server: FileServer,
    ports: Ports,
    first: Daemon,
    saved: Value,
    sessions_before: std::collections::BTreeSet<String>,
}

fn held_at_checkpoint(env: &TestEnv, name: &str, seed: u64) -> HeldAtCheckpoint {
    let dir = Scratch::new();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let file = files.join(format!("{name}.raw"));
    write_random_file(&file, 8 << 20, seed);
    let server = FileServer::start(&files);
    let path = format!("/{name}.raw");
    // The first daemon's download pauses at 75%, until the test lets it go on.
    server.set_behavior(&path, Behavior::default().hold_after(6 << 20, u64::MAX));
    let ports = Ports {
        metrics: common::free_port(),
        upload: common::free_port(),
    };
    let first = Daemon::start(env, dir.path(), "restart-http", ports, 1);
    let sessions_before = open_sessions(env, &format!("cvi/{name}"));
    create(
        env,
        "restart-http",
        name,
        serde_json::json!({"type": "HTTP", "http": {"url": server.url(&path[1..])}}),
    );
    let cvi = wait_for("the download to reach 75%", Duration::from_secs(60), || {
        get(env, name).filter(|cvi| progress(cvi).is_some_and(|p| p >= 75.0))
    });
    let saved = wait_for("a checkpoint at the pause", Duration::from_secs(30), || {
        checkpoint(env, &uid(&cvi)).filter(|c| c["offset"].as_u64() == Some(6 << 20))
    });
    HeldAtCheckpoint {
        dir,
        files,
        file,
        path,
        server,
        ports,
        first,
        saved,
        sessions_before,
    }
}

#[test]
fn an_http_import_cut_by_a_killed_daemon_goes_on_from_its_checkpoint() {
    let _serial = one_at_a_time();
    let env = testenv();
    let HeldAtCheckpoint {
        dir,
        file,
        path,
        server,
        ports,
        first,
        saved,
        sessions_before,
        ..
    } = held_at_checkpoint(env, "resume-http", 21);
    assert_eq!(saved["fileSize"], 8 << 20);
    assert!(saved["source"]["etag"].is_string(), "{saved}");

    first.kill();
    let fetched_before = server.bytes_sent(&path);
    // The new daemon's download pauses again, 1 MiB further: the status must say that it
    // went on, and the progress must not go back.
    server.set_behavior(&path, Behavior::default().hold_after(1 << 20, u64::MAX));
    let second = Daemon::start(env, dir.path(), "restart-http", ports, 2);
    let resumed = wait_for(
        "the import to go on from its checkpoint",
        Duration::from_secs(60),
        || {
            get(env, "resume-http").filter(|cvi| {
                phase(cvi) == "Provisioning" && ready_message(cvi).starts_with(RESUMED)
            })
        },
    );
    assert!(
        progress(&resumed).is_some_and(|p| p >= 75.0),
        "{:?}: {}",
        resumed["status"]["progress"],
        ready_message(&resumed)
    );
    assert!(
        ready_message(&resumed).contains("at 6Mi"),
        "{}",
        ready_message(&resumed)
    );
    let resume_request = server
        .request_log()
        .into_iter()
        .rev()
        .find(|r| r.path == path)
        .unwrap();
    assert_eq!(resume_request.range.as_deref(), Some("bytes=6291456-"));
    assert!(
        resume_request.if_range.is_some(),
        "the resume asks If-Range"
    );

    server.set_behavior(&path, Behavior::default());
    server.release_held();
    assert_ready_with(env, "resume-http", &file);
    let fetched_again = server.bytes_sent(&path) - fetched_before;
    assert_eq!(
        fetched_again,
        2 << 20,
        "only the 2 MiB after the checkpoint are fetched again"
    );
    assert_nothing_left(env, "resume-http", &sessions_before);
    drop(second);
}

#[test]
fn an_http_import_without_a_validator_starts_over_after_a_kill_with_progress_from_zero() {
    let _serial = one_at_a_time();
    let env = testenv();
    let suite = "restart-http";
    let dir = Scratch::new();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let file = files.join("restart.raw");
    write_random_file(&file, 8 << 20, 21);
    let server = FileServer::start(&files);
    // No ETag, no Last-Modified: nothing proves that a later range is the same file.
    let unvalidated = || Behavior::default().no_validators();
    // The first daemon's download pauses at 75%, until the test lets it go on.
    server.set_behavior("/restart.raw", unvalidated().hold_after(6 << 20, u64::MAX));
    let ports = Ports {
        metrics: common::free_port(),
        upload: common::free_port(),
    };
    let first = Daemon::start(env, dir.path(), suite, ports, 1);
    let sessions_before = open_sessions(env, "cvi/restart-http");
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
    server.set_behavior("/restart.raw", unvalidated().hold_after(2 << 20, u64::MAX));
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

    server.set_behavior("/restart.raw", unvalidated());
    server.release_held();
    assert_ready_with(env, "restart-http", &file);
    let cvi = get(env, "restart-http").unwrap();
    assert_eq!(cvi["status"]["progress"], "100%");
    assert_eq!(
        cvi["status"]["observedGeneration"],
        cvi["metadata"]["generation"]
    );
    // The session the first daemon left is cancelled by the second.
    assert_nothing_left(env, "restart-http", &sessions_before);
    drop(second);
}

/// A small deterministic generator, so that a failing run can be repeated with its seed.
struct Seeded(u64);

impl Seeded {
    fn next_fraction(&mut self) -> f64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn three_kills_during_an_http_import_fetch_its_bytes_little_more_than_once() {
    let _serial = one_at_a_time();
    let env = testenv();
    let suite = "restart-http";
    let dir = Scratch::new();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let file = files.join("killed.raw");
    let size: u64 = 96 << 20;
    write_random_file(&file, size, 33);
    let server = FileServer::start(&files);
    // A server far away: 8 MiB/s, so that the kills land in the middle of the transfer.
    server.set_behavior("/killed.raw", Behavior::default().rate(8 << 20));
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x1dea_5eed_u64);
    let mut random = Seeded(seed);
    let mut kill_at: Vec<u64> = (0..3)
        .map(|_| (size as f64 * (0.1 + 0.8 * random.next_fraction())) as u64)
        .collect();
    kill_at.sort_unstable();
    eprintln!("seed {seed:#x}: kills after {kill_at:?} bytes fetched in all");
    let ports = Ports {
        metrics: common::free_port(),
        upload: common::free_port(),
    };
    let mut daemon = Daemon::start(env, dir.path(), suite, ports, 1);
    let sessions_before = open_sessions(env, "cvi/killed-http");
    create(
        env,
        suite,
        "killed-http",
        serde_json::json!({"type": "HTTP", "http": {"url": server.url("killed.raw")}}),
    );
    for (run, at) in kill_at.iter().enumerate() {
        wait_for(
            &format!("{at} bytes fetched"),
            Duration::from_secs(120),
            || (server.bytes_sent("/killed.raw") >= *at).then_some(()),
        );
        daemon.kill();
        daemon = Daemon::start(env, dir.path(), suite, ports, run as u32 + 2);
    }
    assert_ready_with(env, "killed-http", &file);
    let fetched = server.bytes_sent("/killed.raw");
    let ratio = fetched as f64 / size as f64;
    eprintln!("three kills: fetched {fetched} bytes for a {size}-byte image, {ratio:.3}x its size");
    // From byte 0 after each kill, three kills cost on average 1.5 times the image more;
    // from the checkpoints, a second's worth of bytes each.
    assert!(ratio < 1.5, "fetched {ratio:.3}x the image");
    assert_nothing_left(env, "killed-http", &sessions_before);
    drop(daemon);
}

#[test]
fn a_file_changed_while_the_daemon_was_dead_is_imported_again_from_byte_0_never_spliced() {
    let _serial = one_at_a_time();
    let env = testenv();
    let HeldAtCheckpoint {
        dir,
        files,
        file,
        path,
        server,
        ports,
        first,
        saved,
        sessions_before,
    } = held_at_checkpoint(env, "changed-http", 51);
    assert!(saved["source"]["etag"].is_string(), "{saved}");
    first.kill();
    // Another file of the same size under the same URL: a new inode, a new ETag.
    let next = files.join("changed-http.next");
    write_random_file(&next, 8 << 20, 52);
    std::fs::rename(&next, &file).unwrap();
    server.set_behavior(&path, Behavior::default());
    let second = Daemon::start(env, dir.path(), "restart-http", ports, 2);
    // Ready with the new file's bytes, every one of them: the 6 MiB of the old file that
    // DVCR held are not kept.
    assert_ready_with(env, "changed-http", &file);
    let log = std::fs::read_to_string(dir.path().join("controller-2.log")).unwrap();
    assert!(
        log.contains("SourceChanged"),
        "the second daemon saw the change"
    );
    assert_nothing_left(env, "changed-http", &sessions_before);
    drop(second);
}

#[test]
fn a_container_image_import_cut_by_a_killed_daemon_starts_over_and_its_session_is_cancelled() {
    let _serial = one_at_a_time();
    let env = testenv();
    let dir = Scratch::new();
    let disk = dir.path().join("disk.raw");
    write_random_file(&disk, 48 << 20, 61);
    let registry = SourceRegistry::start_public();
    let image = registry.push_container_disk("vm/killed:1", &[("disk/disk.raw", &disk)], false);
    // The registry behind a slow link (8 MiB/s), so that the kill lands mid-layer.
    let proxy = CutProxy::start(registry.host().parse().unwrap());
    proxy.set_rate(8 << 20);
    let image = image.replacen(&registry.host(), &proxy.addr().to_string(), 1);
    let ports = Ports {
        metrics: common::free_port(),
        upload: common::free_port(),
    };
    let first = Daemon::start(env, dir.path(), "restart-http", ports, 1);
    let sessions_before = open_sessions(env, "cvi/killed-disk");
    create(
        env,
        "restart-http",
        "killed-disk",
        serde_json::json!({"type": "ContainerImage", "containerImage": {
            "image": image, "caBundle": registry.ca_bundle_base64()}}),
    );
    let cvi = wait_for(
        "the layer to be a quarter in",
        Duration::from_secs(60),
        || get(env, "killed-disk").filter(|cvi| progress(cvi).is_some_and(|p| p >= 25.0)),
    );
    // Its checkpoint names the DVCR session; a container image cannot go on from it.
    let saved = wait_for("the import's checkpoint", Duration::from_secs(30), || {
        checkpoint(env, &uid(&cvi))
    });
    assert!(saved.get("source").is_none(), "{saved}");
    first.kill();
    proxy.set_rate(0);
    let second = Daemon::start(env, dir.path(), "restart-http", ports, 2);
    let restarted = wait_for("the import to start over", Duration::from_secs(60), || {
        get(env, "killed-disk")
            .filter(|cvi| ready_message(cvi).starts_with(RESTARTED) || phase(cvi) == "Ready")
    });
    assert_ready_with(env, "killed-disk", &disk);
    assert!(
        phase(&restarted) == "Ready" || ready_message(&restarted).starts_with(RESTARTED),
        "{}",
        ready_message(&restarted)
    );
    assert_nothing_left(env, "killed-disk", &sessions_before);
    drop(second);
}

/// An uploader as a user's script would be: sends the file to the image's URL and, whenever
/// the transfer breaks (the daemon died under it) or the daemon is not ready for it yet,
/// sends it again, until the upload is stored. Returns the bytes it sent in all.
fn upload_until_stored(env: &TestEnv, name: &str, file: &Path, rate: &str) -> u64 {
    let mut sent = 0;
    loop {
        let cvi = wait_for(
            &format!("{name} to take an upload"),
            Duration::from_secs(120),
            || {
                get(env, name).filter(|cvi| {
                    matches!(phase(cvi), "WaitForUserUpload" | "Provisioning" | "Ready")
                })
            },
        );
        if phase(&cvi) == "Ready" {
            return sent;
        }
        let url = external_url(&cvi);
        if url.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let output = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_upload}",
            ])
            .args(["--limit-rate", rate, "-T"])
            .arg(file)
            .arg(&url)
            .output()
            .unwrap();
        let written = String::from_utf8_lossy(&output.stdout).into_owned();
        let (code, bytes) = written.split_once(' ').unwrap_or(("000", "0"));
        sent += bytes.trim().parse::<u64>().unwrap_or(0);
        if code == "201" {
            return sent;
        }
        // Refused (a daemon not serving yet, 404 before it registered the token, 409 while
        // it still sees the cut upload): a moment, then again.
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn twenty_kills_at_seeded_moments_across_every_source_end_with_exact_bytes_and_nothing_left() {
    // Its daemons elect no leader, but started beside another test's they would come slowly.
    let _serial = one_at_a_time();
    let env = testenv();
    let suite = "restart-matrix";
    let dir = Scratch::new();
    let files = dir.path().join("files");
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::create_dir_all(&spool).unwrap();
    let rate: u64 = 8 << 20;
    let sizes = [
        ("resumable.raw", 64u64 << 20),
        ("spooled.raw", 24 << 20),
        ("uploaded.raw", 32 << 20),
    ];
    for (index, (file, size)) in sizes.iter().enumerate() {
        write_random_file(&files.join(file), *size, 70 + index as u64);
    }
    let server = FileServer::start(&files);
    // Far away: 8 MiB/s. One file with validators (resumed from checkpoints), one sent
    // chunked, without a length (spooled, so every kill starts it over and leaves a file).
    server.set_behavior("/resumable.raw", Behavior::default().rate(rate));
    server.set_behavior("/spooled.raw", Behavior::default().rate(rate).chunked());
    let disk = dir.path().join("disk.raw");
    write_random_file(&disk, 32 << 20, 74);
    let registry = SourceRegistry::start_public();
    let image = registry.push_container_disk("vm/matrix:1", &[("disk/disk.raw", &disk)], false);
    let proxy = CutProxy::start(registry.host().parse().unwrap());
    proxy.set_rate(rate);
    let image = image.replacen(&registry.host(), &proxy.addr().to_string(), 1);

    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x1dea_5eed_u64);
    let mut random = Seeded(seed);
    // Each daemon lives 0.2 to 2 s once it serves: kills in the first checkpoint's 200 ms,
    // between checkpoints, mid-upload, while a copy waits for its source.
    let lives: Vec<Duration> = (0..20)
        .map(|_| Duration::from_secs_f64(0.2 + 1.8 * random.next_fraction()))
        .collect();
    eprintln!("seed {seed:#x}: the daemons live {lives:?}");
    let names = [
        "matrix-http",
        "matrix-spooled",
        "matrix-disk",
        "matrix-upload",
        "matrix-copy",
    ];
    let sessions_before: Vec<_> = names
        .iter()
        .map(|name| open_sessions(env, &format!("cvi/{name}")))
        .collect();
    let ports = Ports {
        metrics: common::free_port(),
        upload: common::free_port(),
    };
    // No leader election: a killed daemon's place is taken at once, as a restarted container
    // takes it; takeovers by a standby are the three-kill test's.
    let flags = format!("--leader-election=false --spool-dir '{}'", spool.display());
    let start = |run: u32| Daemon::start_with(env, dir.path(), suite, ports, run, &flags);
    let mut daemon = start(1);
    create(
        env,
        suite,
        "matrix-http",
        serde_json::json!({"type": "HTTP", "http": {"url": server.url("resumable.raw")}}),
    );
    create(
        env,
        suite,
        "matrix-spooled",
        serde_json::json!({"type": "HTTP", "http": {"url": server.url("spooled.raw")}}),
    );
    create(
        env,
        suite,
        "matrix-disk",
        serde_json::json!({"type": "ContainerImage", "containerImage": {
        "image": image, "caBundle": registry.ca_bundle_base64()}}),
    );
    create(
        env,
        suite,
        "matrix-upload",
        serde_json::json!({"type": "Upload"}),
    );
    create(
        env,
        suite,
        "matrix-copy",
        serde_json::json!({"type": "ObjectRef", "objectRef": {
        "kind": "ClusterVirtualImage", "name": "matrix-http"}}),
    );
    let uploader = {
        let file = files.join("uploaded.raw");
        let rate = rate.to_string();
        std::thread::spawn(move || upload_until_stored(testenv(), "matrix-upload", &file, &rate))
    };
    for (run, life) in lives.iter().enumerate() {
        std::thread::sleep(*life);
        daemon.kill();
        daemon = start(run as u32 + 2);
    }
    let uploaded = uploader.join().unwrap();

    assert_ready_with(env, "matrix-http", &files.join("resumable.raw"));
    assert_ready_with(env, "matrix-copy", &files.join("resumable.raw"));
    assert_ready_with(env, "matrix-spooled", &files.join("spooled.raw"));
    assert_ready_with(env, "matrix-disk", &disk);
    assert_ready_with(env, "matrix-upload", &files.join("uploaded.raw"));
    let mut empty = 0;
    for (name, before) in names.iter().zip(&sessions_before) {
        let mut before = before.clone();
        let left_empty = empty_sessions_left(env, name, &before);
        empty += left_empty.len();
        before.extend(left_empty);
        // No session holding bytes, no checkpoint.
        assert_nothing_left(env, name, &before);
    }
    let spooled: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(spooled.is_empty(), "the spool is empty: {spooled:?}");
    let ratio = |fetched: u64, size: u64| fetched as f64 / size as f64;
    eprintln!(
        "20 kills: fetched {:.2}x of the resumable HTTP file, {:.2}x of the spooled one, \
         {:.2}x of the container disk layer, uploaded {:.2}x of the upload; {empty} empty \
         DVCR sessions left to the registry's purge",
        ratio(server.bytes_sent("/resumable.raw"), 64 << 20),
        ratio(server.bytes_sent("/spooled.raw"), 24 << 20),
        ratio(proxy.bytes_down(), 32 << 20),
        ratio(uploaded, 32 << 20),
    );
    drop(daemon);
}
