//! End to end: ImageCatalogs synced from real Git remotes (`git daemon`, smart HTTP behind
//! nginx with basic auth) by the real daemon binary under the shipped ServiceAccount, into
//! ClusterVirtualImages imported into the real DVCR from a real HTTP server.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::file_server::{Behavior, FileServer};
use common::git_server::{GitDaemon, HttpGitServer, SshGitServer, TestRepo, git};
use common::{TestEnv, condition, raw_http, testenv, wait_for};
use serde_json::Value;

const SUITE_LABEL: &str = "image-catalog.test/suite";
const SUITE: &str = "catalog";
const WEBHOOK_SECRET: &str = "hook-s3cret";
const TIMEOUT: Duration = Duration::from_secs(90);

struct World {
    env: &'static TestEnv,
    http: FileServer,
    webhook_port: u16,
    metrics_port: u16,
    _daemon: Daemon,
    _dir: tempfile::TempDir,
}

/// The daemon, stopped when the test process ends (see tests/import.rs).
struct Daemon(#[allow(dead_code)] Child);

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let env = testenv();
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir_all(images.join("stall")).unwrap();
        make_images(&images);
        let http = FileServer::start(&images);
        // Images under /stall/ never finish downloading: they stay Provisioning.
        http.set_behavior("/stall/", Behavior::default().stall_after(4096, u64::MAX));
        // scripts/testenv applied the CRDs and the admission policy from deploy/.
        let kubeconfig = env.daemon_kubeconfig(dir.path());
        let webhook_secret = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: test-webhook, namespace: image-catalog, labels: {{imagecatalog.dev/catalog-secret: \"true\"}}}}\nstringData: {{token: {WEBHOOK_SECRET}}}\n"
        );
        let out = env.kubectl_with_input(&["apply", "-f", "-"], &webhook_secret);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let (webhook_port, metrics_port) = (common::free_port(), common::free_port());
        let daemon = start_daemon(env, dir.path(), &kubeconfig, webhook_port, metrics_port);
        World {
            env,
            http,
            webhook_port,
            metrics_port,
            _daemon: daemon,
            _dir: dir,
        }
    })
}

fn start_daemon(
    env: &TestEnv,
    dir: &Path,
    kubeconfig: &Path,
    webhook_port: u16,
    metrics_port: u16,
) -> Daemon {
    let log = dir.join("daemon.log");
    let command = format!(
        "'{bin}' controller --selector {SUITE_LABEL}={SUITE} --metrics-addr 127.0.0.1:{metrics_port} \
         --upload-addr 127.0.0.1:{upload} --webhook-addr 127.0.0.1:{webhook_port} \
         --git-cache-dir '{cache}' --max-import-attempts 1 \
         --presence-interval-seconds 1 --verify-schedule '0 0 1 1 *' --verify-jitter-seconds 0 \
         --leader-election-lease {lease} \
         >'{log}' 2>&1 & pid=$!; read _; kill $pid",
        bin = env!("CARGO_BIN_EXE_image-catalog"),
        lease = common::unique_lease(SUITE),
        upload = common::free_port(),
        cache = dir.join("git-cache").display(),
        log = log.display(),
    );
    eprintln!("daemon log: {}", log.display());
    let child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(&env.vars)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info,image_catalog=debug")
        .stdin(Stdio::piped())
        .spawn()
        .expect("the daemon starts");
    Daemon(child)
}

fn make_images(dir: &Path) {
    let raw = dir.join("disk.raw");
    let mut bytes = vec![0u8; 2 << 20];
    let mut state = 0x2545f4914f6cdd1du64;
    for byte in &mut bytes[..1 << 20] {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    std::fs::write(&raw, &bytes).unwrap();
    for (source, target) in [("disk.raw", "disk.qcow2"), ("disk.raw", "stall/disk.qcow2")] {
        let status = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(dir.join(source))
            .arg(dir.join(target))
            .status()
            .unwrap();
        assert!(status.success());
    }
    std::fs::copy(&raw, dir.join("other.raw")).unwrap();
}

// ---- helpers ------------------------------------------------------------------------------

/// A catalog file with one HTTP image per (name, path on the file server).
fn catalog_file(entries: &[(&str, &str)]) -> String {
    let http = &world().http;
    let mut text = String::from("images:\n");
    for (name, path) in entries {
        text.push_str(&format!(
            "  - name: {name}\n    labels: {{example.com/os: linux}}\n    dataSource:\n      type: HTTP\n      http: {{url: '{}'}}\n",
            http.url(path)
        ));
    }
    text
}

fn apply(yaml: &str) {
    let out = world()
        .env
        .kubectl_with_input(&["apply", "--server-side", "-f", "-"], yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An ImageCatalog following `main` of `url`, that labels its images for this suite's daemon.
fn apply_catalog(name: &str, url: &str, extra: &str) {
    apply(&format!(
        "apiVersion: imagecatalog.dev/v1alpha1\nkind: ImageCatalog\nmetadata: {{name: {name}}}\n\
         spec:\n  git: {{url: '{url}', ref: {{branch: main}}, path: images}}\n  interval: 1h\n\
         \x20 labels: {{{SUITE_LABEL}: {SUITE}}}\n  webhook: {{secretRef: {{name: test-webhook}}}}\n{extra}"
    ));
}

fn get(kind: &str, name: &str) -> Option<Value> {
    world().env.get_json(&[kind, name])
}

fn catalog(name: &str) -> Value {
    get("imagecatalog", name).unwrap_or_else(|| panic!("ImageCatalog {name} exists"))
}

fn wait_for_catalog(name: &str, what: &str, mut probe: impl FnMut(&Value) -> bool) -> Value {
    wait_for(what, TIMEOUT, || {
        let catalog = catalog(name);
        probe(&catalog).then_some(catalog)
    })
}

fn phase(name: &str) -> Option<String> {
    get("cvi", name).and_then(|cvi| cvi["status"]["phase"].as_str().map(str::to_string))
}

fn wait_for_phase(name: &str, wanted: &str) {
    wait_for(&format!("{name} to be {wanted}"), TIMEOUT, || {
        (phase(name).as_deref() == Some(wanted)).then_some(())
    });
}

/// A push webhook as GitHub sends it, signed with `secret`.
fn push_webhook(catalog: &str, secret: &str) -> u16 {
    post_webhook(catalog, secret, br#"{"ref":"refs/heads/main"}"#).0
}

/// POSTs `body` signed with `secret` as a GitHub push; the status code and the answer.
fn post_webhook(catalog: &str, secret: &str, body: &[u8]) -> (u16, String) {
    common::post_github_push(world().webhook_port, catalog, secret, body)
}

fn metric(name: &str, catalog: &str) -> f64 {
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*"])
        .arg(format!("http://127.0.0.1:{}/metrics", world().metrics_port))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(&format!("catalog=\"{catalog}\"")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A catalog on a repository of its own served by `git daemon`, whose first commit holds one
/// catalog file, applied with `extra` spec lines. Deleted (with its images) when dropped.
struct Served {
    catalog: &'static str,
    /// Serves the repository while the test runs.
    _remote: GitDaemon,
    repo: TestRepo,
    url: String,
    /// The first commit.
    first: String,
    _cleanup: Cleanup,
}

impl Served {
    fn start(catalog: &'static str, (file, images): (&str, &[(&str, &str)]), extra: &str) -> Self {
        let cleanup = Cleanup::fresh(catalog);
        let repo = TestRepo::new();
        let first = repo.commit(&[(file, &catalog_file(images))], "the first commit");
        let remote = GitDaemon::start(&repo.root);
        let url = remote.url(TestRepo::NAME);
        apply_catalog(catalog, &url, extra);
        Self {
            catalog,
            _remote: remote,
            repo,
            url,
            first,
            _cleanup: cleanup,
        }
    }

    /// Commits `files` and tells the daemon with a signed webhook; returns the commit.
    fn push(&self, files: &[(&str, &str)], message: &str) -> String {
        let commit = self.repo.commit(files, message);
        assert_eq!(push_webhook(self.catalog, WEBHOOK_SECRET), 202);
        commit
    }

    /// [`Served::push`] of `images/a.yaml` holding `images`.
    fn push_images(&self, images: &[(&str, &str)], message: &str) -> String {
        self.push(&[("images/a.yaml", &catalog_file(images))], message)
    }
}

/// Deletes the catalog (and, as it prunes, its images) when a test ends.
struct Cleanup(&'static str);

impl Cleanup {
    /// Removes what an earlier run left under this name (a catalog still terminating would
    /// swallow this run's apply), and deletes the catalog again when the test ends.
    fn fresh(name: &'static str) -> Self {
        let out = world()
            .env
            .kubectl()
            .args([
                "delete",
                "imagecatalog",
                name,
                "--ignore-not-found",
                "--timeout=120s",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(name)
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = world()
            .env
            .kubectl()
            .args([
                "delete",
                "imagecatalog",
                self.0,
                "--wait=false",
                "--ignore-not-found",
            ])
            .output();
    }
}

/// The note of `commit` under refs/notes/image-catalog, read with the git CLI from a fresh
/// clone of `url`.
fn note(url: &str, commit: &str) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q"]);
    let fetched = Command::new("git")
        .current_dir(dir.path())
        .args([
            "fetch",
            "-q",
            url,
            "refs/notes/image-catalog:refs/notes/image-catalog",
        ])
        .output()
        .unwrap();
    if !fetched.status.success() {
        return None;
    }
    let shown = Command::new("git")
        .current_dir(dir.path())
        .args(["notes", "--ref", "image-catalog", "show", commit])
        .output()
        .unwrap();
    shown
        .status
        .success()
        .then(|| String::from_utf8_lossy(&shown.stdout).into_owned())
}

// ---- tests --------------------------------------------------------------------------------

#[test]
fn a_commit_becomes_ready_images_and_a_success_note_on_the_commit() {
    let served = Served::start(
        "cat-basic",
        (
            "images/base.yaml",
            &[("cat-basic-a", "disk.qcow2"), ("cat-basic-b", "other.raw")],
        ),
        "  commitStatus: {provider: GitNotes}\n",
    );

    wait_for_phase("cat-basic-a", "Ready");
    wait_for_phase("cat-basic-b", "Ready");
    let cvi = get("cvi", "cat-basic-a").unwrap();
    let annotations = &cvi["metadata"]["annotations"];
    assert_eq!(
        cvi["metadata"]["labels"]["imagecatalog.dev/catalog"],
        "cat-basic"
    );
    assert_eq!(cvi["metadata"]["labels"]["example.com/os"], "linux");
    assert_eq!(annotations["imagecatalog.dev/source"], "images/base.yaml");
    assert_eq!(
        annotations["imagecatalog.dev/commit"],
        served.first.as_str()
    );

    let status = wait_for_catalog("cat-basic", "the catalog to be Ready", |c| {
        condition(c, "Ready").is_some_and(|r| r["status"] == "True")
    });
    assert_eq!(
        status["status"]["lastAppliedRevision"],
        served.first.as_str()
    );
    assert_eq!(status["status"]["images"]["ready"], 2);
    assert_eq!(status["status"]["inventory"].as_array().unwrap().len(), 2);
    let printed = world()
        .env
        .kubectl_ok(&["get", "imagecatalog", "cat-basic"]);
    assert!(
        printed.contains("True") && printed.contains(&served.first[..12]),
        "{printed}"
    );

    let text = wait_for("the success note on the commit", TIMEOUT, || {
        note(&served.url, &served.first)
            .filter(|text| text.contains("image-catalog/cat-basic: success"))
    });
    assert!(text.contains("2/2 Ready"), "{text}");
}

#[test]
fn an_edit_before_ready_updates_the_image_and_a_removed_entry_is_pruned() {
    let served = Served::start(
        "cat-edit",
        (
            "images/a.yaml",
            &[
                ("cat-edit-slow", "stall/disk.qcow2"),
                ("cat-edit-gone", "other.raw"),
            ],
        ),
        "",
    );
    wait_for_phase("cat-edit-slow", "Provisioning");
    wait_for_phase("cat-edit-gone", "Ready");
    let uid = get("cvi", "cat-edit-gone").unwrap()["metadata"]["uid"].clone();

    let fixed = served.push_images(
        &[("cat-edit-slow", "disk.qcow2")],
        "a faster mirror, and one image less",
    );
    wait_for_phase("cat-edit-slow", "Ready");
    let cvi = get("cvi", "cat-edit-slow").unwrap();
    assert!(
        cvi["spec"]["dataSource"]["http"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/disk.qcow2")
    );
    assert_eq!(
        cvi["metadata"]["annotations"]["imagecatalog.dev/commit"],
        fixed.as_str()
    );
    wait_for("the removed entry to be pruned", TIMEOUT, || {
        match get("cvi", "cat-edit-gone") {
            None => Some(()),
            Some(cvi) if cvi["metadata"]["uid"] != uid => panic!("pruned image came back"),
            Some(_) => None,
        }
    });
}

#[test]
fn a_mass_prune_and_a_force_push_are_held_until_a_person_confirms_the_commit() {
    let names = ["cat-hold-a", "cat-hold-b", "cat-hold-c", "cat-hold-d"];
    let served = Served::start(
        "cat-hold",
        ("images/a.yaml", &names.map(|name| (name, "other.raw"))),
        "",
    );
    for name in names {
        wait_for_phase(name, "Ready");
    }
    let held_reason = |reason: &'static str, commit: String| {
        move |c: &Value| {
            c["status"]["lastAttemptedRevision"] == commit.as_str()
                && condition(c, "Ready").is_some_and(|r| r["reason"] == reason)
        }
    };
    let confirm = |commit: &str| {
        world().env.kubectl_ok(&[
            "annotate",
            "imagecatalog",
            "cat-hold",
            &format!("imagecatalog.dev/confirm-commit={commit}"),
            "--overwrite",
        ]);
    };

    // Three of four images gone is more than the default 50%: held, nothing deleted.
    let pruning = served.push_images(&[("cat-hold-a", "other.raw")], "one image left");
    let held = wait_for_catalog(
        "cat-hold",
        "the mass prune held",
        held_reason("MassPruneHeld", pruning.clone()),
    );
    let message = condition(&held, "Ready").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("would prune 3 of the catalog's 4 images"),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "kubectl annotate imagecatalog cat-hold imagecatalog.dev/confirm-commit={pruning}"
        )),
        "{message}"
    );
    assert_eq!(condition(&held, "Stalled").unwrap()["status"], "True");
    assert_ne!(held["status"]["lastAppliedRevision"], pruning.as_str());
    for name in names {
        assert!(get("cvi", name).is_some(), "{name} is still there");
    }
    // Confirmed: applied, and pruned.
    confirm(&pruning);
    wait_for("the confirmed prune", TIMEOUT, || {
        names[1..]
            .iter()
            .all(|name| get("cvi", name).is_none())
            .then_some(())
    });
    wait_for_catalog("cat-hold", "the confirmed commit applied", |c| {
        c["status"]["lastAppliedRevision"] == pruning.as_str()
    });

    // A force-push: the new commit does not descend from the applied one. Held, even
    // though it deletes nothing, until that very commit is confirmed.
    let rewritten = served.repo.amend(
        &[(
            "images/a.yaml",
            &catalog_file(&[("cat-hold-a", "other.raw"), ("cat-hold-e", "other.raw")]),
        )],
        "history rewritten",
    );
    assert_eq!(push_webhook("cat-hold", WEBHOOK_SECRET), 202);
    let held = wait_for_catalog(
        "cat-hold",
        "the force-push held",
        held_reason("ForcePushHeld", rewritten.clone()),
    );
    let message = condition(&held, "Ready").unwrap()["message"].to_string();
    assert!(message.contains("does not descend from"), "{message}");
    assert!(get("cvi", "cat-hold-e").is_none());
    confirm(&rewritten);
    wait_for_phase("cat-hold-e", "Ready");
}

#[test]
fn an_invalid_commit_applies_nothing_and_names_each_problem() {
    let served = Served::start(
        "cat-invalid",
        ("images/a.yaml", &[("cat-invalid-a", "disk.qcow2")]),
        "  commitStatus: {provider: GitNotes}\n",
    );
    wait_for_catalog("cat-invalid", "the first commit applied", |c| {
        c["status"]["lastAppliedRevision"] == served.first.as_str()
    });

    let grown = catalog_file(&[
        ("cat-invalid-a", "disk.qcow2"),
        ("cat-invalid-new", "other.raw"),
    ]);
    let bad = served.push(
        &[
            ("images/a.yaml", grown.as_str()),
            (
                "images/b.yaml",
                "images:\n  - name: Bad.Name\n    dataSource: {type: HTTP}\n",
            ),
        ],
        "a new image and a broken file",
    );
    let status = wait_for_catalog("cat-invalid", "the commit to be refused", |c| {
        c["status"]["lastAttemptedRevision"] == bad.as_str()
    });
    let ready = condition(&status, "Ready").unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "ValidationFailed");
    let problems: Vec<&str> = status["status"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("images/b.yaml:2:11: images[0].name")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("images/b.yaml:3:17") && p.contains("http is required")),
        "{problems:?}"
    );
    assert_eq!(
        status["status"]["lastAppliedRevision"],
        served.first.as_str()
    );
    assert_eq!(condition(&status, "Stalled").unwrap()["status"], "True");
    assert!(
        get("cvi", "cat-invalid-new").is_none(),
        "nothing of an invalid commit is applied"
    );
    let text = wait_for("the failure note", TIMEOUT, || {
        note(&served.url, &bad).filter(|t| t.contains("image-catalog/cat-invalid: failure"))
    });
    assert!(text.contains("images/b.yaml:2:11"), "{text}");
}

/// An alias bomb of 10^9 nodes in under a kilobyte.
fn alias_bomb() -> String {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..9 {
        let refs = vec![format!("*a{}", level - 1); 10].join(", ");
        text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
    }
    text
}

#[test]
fn a_hostile_commit_is_refused_on_the_commit_and_the_daemon_keeps_the_last_good_one() {
    let served = Served::start(
        "cat-hostile",
        ("images/a.yaml", &[("cat-hostile-a", "disk.qcow2")]),
        "  commitStatus: {provider: GitNotes}\n",
    );
    wait_for_phase("cat-hostile-a", "Ready");

    // Each of these took the daemon's memory (and so its life, at every restart) before.
    let deep = "- ".repeat(12_000) + "x\n";
    let bomb = alias_bomb();
    let hostile = served.push(
        &[("images/bomb.yaml", &bomb), ("images/deep.yaml", &deep)],
        "an alias bomb and a deep nest",
    );
    let status = wait_for_catalog("cat-hostile", "the hostile commit to be refused", |c| {
        c["status"]["lastAttemptedRevision"] == hostile.as_str()
    });
    assert_eq!(
        condition(&status, "Ready").unwrap()["reason"],
        "ValidationFailed"
    );
    let problems = status["status"]["problems"].to_string();
    assert!(
        problems.contains("images/bomb.yaml:") && problems.contains("more than 1000000 YAML nodes"),
        "{problems}"
    );
    assert!(
        problems.contains("images/deep.yaml:1:129: mappings and sequences nest deeper than 64"),
        "{problems}"
    );
    assert_eq!(
        status["status"]["lastAppliedRevision"],
        served.first.as_str()
    );
    let text = wait_for("the failure note", TIMEOUT, || {
        note(&served.url, &hostile).filter(|t| t.contains("image-catalog/cat-hostile: failure"))
    });
    assert!(text.contains("images/deep.yaml:1:129"), "{text}");

    let huge = "# padding\n".repeat(500_000);
    let too_large = served.push(
        &[
            ("images/bomb.yaml", ""),
            ("images/deep.yaml", ""),
            ("images/huge.yaml", &huge),
        ],
        "a 5 MB file",
    );
    let status = wait_for_catalog("cat-hostile", "the too large commit to be refused", |c| {
        c["status"]["lastAttemptedRevision"] == too_large.as_str()
    });
    let problems = status["status"]["problems"].to_string();
    assert!(
        problems.contains("images/huge.yaml:1:1: the file has 5000000 bytes, more than the 4 MiB"),
        "{problems}"
    );
    assert_eq!(
        status["status"]["lastAppliedRevision"],
        served.first.as_str()
    );
    assert_eq!(phase("cat-hostile-a").as_deref(), Some("Ready"));

    // The same daemon applies the next good commit.
    let fixed = served.push(
        &[
            ("images/huge.yaml", ""),
            (
                "images/a.yaml",
                &catalog_file(&[
                    ("cat-hostile-a", "disk.qcow2"),
                    ("cat-hostile-b", "other.raw"),
                ]),
            ),
        ],
        "back to a catalog",
    );
    wait_for_phase("cat-hostile-b", "Ready");
    wait_for_catalog("cat-hostile", "the good commit applied and Ready", |c| {
        c["status"]["lastAppliedRevision"] == fixed.as_str()
            && condition(c, "Ready").is_some_and(|r| r["status"] == "True")
    });
}

#[test]
fn a_ready_images_changed_source_is_refused_under_fail_and_replaced_under_recreate() {
    let served = Served::start(
        "cat-ready",
        ("images/a.yaml", &[("cat-ready-a", "disk.qcow2")]),
        "",
    );
    wait_for_phase("cat-ready-a", "Ready");
    let old_uid = get("cvi", "cat-ready-a").unwrap()["metadata"]["uid"].clone();

    let changed = served.push_images(&[("cat-ready-a", "other.raw")], "another file");
    let status = wait_for_catalog("cat-ready", "the change to be refused", |c| {
        c["status"]["lastAttemptedRevision"] == changed.as_str()
    });
    let ready = condition(&status, "Ready").unwrap();
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("images/a.yaml:2:11: image cat-ready-a is Ready and its dataSource changed"),
        "{ready}"
    );
    assert_eq!(
        get("cvi", "cat-ready-a").unwrap()["metadata"]["uid"],
        old_uid
    );

    apply_catalog("cat-ready", &served.url, "  readyImagePolicy: Recreate\n");
    wait_for(
        "the image to be recreated from the new source",
        TIMEOUT,
        || {
            let cvi = get("cvi", "cat-ready-a")?;
            (cvi["metadata"]["uid"] != old_uid && cvi["status"]["phase"] == "Ready").then_some(())
        },
    );
    let cvi = get("cvi", "cat-ready-a").unwrap();
    assert!(
        cvi["spec"]["dataSource"]["http"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/other.raw")
    );
}

#[test]
fn two_catalogs_claiming_one_name_the_second_is_refused() {
    let _first = Cleanup::fresh("cat-claim-1");
    let _second = Cleanup::fresh("cat-claim-2");
    let repo = TestRepo::new();
    repo.commit(
        &[(
            "images/a.yaml",
            &catalog_file(&[("cat-claim-shared", "disk.qcow2")]),
        )],
        "one image",
    );
    let remote = GitDaemon::start(&repo.root);
    let url = remote.url(TestRepo::NAME);
    apply_catalog("cat-claim-1", &url, "");
    wait_for_catalog("cat-claim-1", "the first catalog to apply", |c| {
        c["status"]["lastAppliedRevision"].is_string()
    });
    apply_catalog("cat-claim-2", &url, "");
    let second = wait_for_catalog("cat-claim-2", "the second catalog to be refused", |c| {
        condition(c, "Ready").is_some_and(|r| r["reason"] == "ValidationFailed")
    });
    let message = condition(&second, "Ready").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("image cat-claim-shared belongs to the catalog cat-claim-1"),
        "{message}"
    );
    let cvi = get("cvi", "cat-claim-shared").unwrap();
    assert_eq!(
        cvi["metadata"]["labels"]["imagecatalog.dev/catalog"],
        "cat-claim-1"
    );
}

#[test]
fn only_a_correctly_signed_webhook_triggers_a_sync_and_an_unchanged_resync_writes_nothing() {
    let served = Served::start(
        "cat-hook",
        ("images/a.yaml", &[("cat-hook-a", "disk.qcow2")]),
        "",
    );
    wait_for_phase("cat-hook-a", "Ready");
    wait_for_catalog("cat-hook", "the catalog to be Ready", |c| {
        condition(c, "Ready").is_some_and(|r| r["status"] == "True")
    });

    // A sync of the same commit: zero write calls.
    let syncs = metric("image_catalog_catalog_syncs_total", "cat-hook");
    let writes = metric("image_catalog_catalog_writes_total", "cat-hook");
    assert_eq!(push_webhook("cat-hook", WEBHOOK_SECRET), 202);
    wait_for("the resync", TIMEOUT, || {
        (metric("image_catalog_catalog_syncs_total", "cat-hook") > syncs).then_some(())
    });
    assert_eq!(
        metric("image_catalog_catalog_writes_total", "cat-hook"),
        writes
    );

    let second = served.repo.commit(
        &[(
            "images/a.yaml",
            &catalog_file(&[("cat-hook-a", "disk.qcow2"), ("cat-hook-b", "other.raw")]),
        )],
        "one more",
    );
    let syncs = metric("image_catalog_catalog_syncs_total", "cat-hook");
    // One answer for every refusal: a caller cannot tell which catalogs exist.
    let body = br#"{"ref":"refs/heads/main"}"#;
    let wrong_secret = post_webhook("cat-hook", "wrong-secret", body);
    assert_eq!(wrong_secret.0, 403);
    for refused in [
        post_webhook("no-such-catalog", WEBHOOK_SECRET, body),
        post_webhook("Bad_Name", WEBHOOK_SECRET, body),
        post_webhook("..%2F..%2Fapi", WEBHOOK_SECRET, body),
        post_webhook("cat-hook", WEBHOOK_SECRET, &vec![b' '; (1 << 20) + 1]),
    ] {
        assert_eq!(refused, wrong_secret);
    }
    // The refusal is decided before any sync is queued; the interval is an hour, so
    // nothing else looks at Git either.
    assert_eq!(
        metric("image_catalog_catalog_syncs_total", "cat-hook"),
        syncs
    );
    assert_eq!(
        catalog("cat-hook")["status"]["lastAttemptedRevision"],
        served.first.as_str()
    );
    assert!(get("cvi", "cat-hook-b").is_none());

    assert_eq!(push_webhook("cat-hook", WEBHOOK_SECRET), 202);
    wait_for_catalog("cat-hook", "the pushed commit applied", |c| {
        c["status"]["lastAppliedRevision"] == second.as_str()
    });
    assert!(get("cvi", "cat-hook-b").is_some());
}

/// Writes `request` to the webhook port and reads until the daemon closes the connection;
/// what it answered.
fn hold_webhook_connection(request: &[u8]) -> String {
    raw_http::exchange(&format!("127.0.0.1:{}", world().webhook_port), request)
}

#[test]
fn the_webhook_endpoint_closes_on_clients_that_never_finish_their_headers_or_body() {
    let _ = world();
    let headers = std::thread::spawn(|| {
        hold_webhook_connection(b"POST /hooks/x HTTP/1.1\r\nHost: x\r\nX-GitHub-Ev")
    });
    let body = std::thread::spawn(|| {
        hold_webhook_connection(
            format!(
                "POST /hooks/cat-slow HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n\
                 X-Hub-Signature-256: sha256={}\r\nContent-Length: 1000\r\n\r\n{{\"ref\"",
                "00".repeat(32)
            )
            .as_bytes(),
        )
    });
    let _cleanup = Cleanup::fresh("cat-slow");
    apply_catalog(
        "cat-slow",
        "git://127.0.0.1:9/none.git",
        "  suspend: true\n",
    );
    let headers = headers.join().unwrap();
    assert!(
        headers.is_empty() || headers.starts_with("HTTP/1.1 408"),
        "{headers:?}"
    );
    let body = body.join().unwrap();
    // Refused like any call: the catalog exists only while this test runs.
    assert!(body.starts_with("HTTP/1.1 403"), "{body:?}");
}

#[test]
fn every_call_of_the_webhook_corpus_gets_its_answer_and_every_refusal_is_the_same() {
    let (catalog, catalog_off) = ("cat-corpus", "cat-corpus-off");
    let _cleanup = Cleanup::fresh(catalog);
    let _cleanup_off = Cleanup::fresh(catalog_off);
    // Suspended: the accepted calls need no Git behind them.
    apply_catalog(catalog, "git://127.0.0.1:9/none.git", "  suspend: true\n");
    apply(&format!(
        "apiVersion: imagecatalog.dev/v1alpha1\nkind: ImageCatalog\nmetadata: {{name: {catalog_off}}}\n\
         spec:\n  git: {{url: 'git://127.0.0.1:9/none.git', ref: {{branch: main}}}}\n  suspend: true\n"
    ));
    let (cases, expected) = raw_http::corpus(&common::repo_root().join("tests/corpus/webhooks"));
    let words = [
        ("catalog", catalog),
        ("catalog-off", catalog_off),
        ("token", WEBHOOK_SECRET),
    ];
    let address = format!("127.0.0.1:{}", world().webhook_port);
    // Eight at a time: the cut-off body waits out the daemon's 10 s body timeout, and the
    // daemon answers 503 beyond 16 calls at once, this binary's other tests included.
    let mut answers: Vec<(String, String)> = Vec::new();
    for batch in cases.chunks(8) {
        let calls: Vec<_> = batch
            .iter()
            .map(|case| {
                let request = raw_http::request(case, &words, Some(WEBHOOK_SECRET.as_bytes()));
                let (name, address) = (raw_http::case_name(case), address.clone());
                std::thread::spawn(move || (name, raw_http::exchange(&address, &request)))
            })
            .collect();
        answers.extend(calls.into_iter().map(|call| call.join().unwrap()));
    }
    let mut wrong = Vec::new();
    let mut refusals = std::collections::BTreeSet::new();
    for (name, answer) in &answers {
        let status = raw_http::status(answer);
        let want = expected
            .iter()
            .find(|(case, _)| case == name)
            .map(|(_, status)| status.as_str());
        if want != Some(status) {
            wrong.push(format!(
                "{name}: got {status}, expected {want:?}: {answer:?}"
            ));
        }
        if status == "403" {
            refusals.insert(raw_http::body(answer).to_string());
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    assert_eq!(
        refusals.len(),
        1,
        "every refusal reads the same: {refusals:?}"
    );
}

#[test]
fn smart_https_with_basic_auth_syncs_and_a_wrong_password_says_so_without_leaking_it() {
    let _cleanup = Cleanup::fresh("cat-http");
    let repo = TestRepo::new();
    repo.commit(
        &[(
            "images/a.yaml",
            &catalog_file(&[("cat-http-a", "disk.qcow2")]),
        )],
        "one image",
    );
    // Credentials only over https: the server's CA goes into the Secret.
    let server = HttpGitServer::start_https(&repo.root);
    let ca = server.ca_pem.clone().unwrap_or_default();
    let secret_labelled = |password: &str, label: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: cat-http-git, namespace: image-catalog, labels: {{imagecatalog.dev/catalog-secret: \"{label}\"}}}}\n\
             stringData: {{username: {}, password: '{password}', ca.crt: {}}}\n",
            server.username,
            serde_json::to_string(&ca).unwrap()
        )
    };
    let secret = |password: &str| secret_labelled(password, "true");
    // A Secret not labelled for catalogs is not used, even with the right password: a
    // catalog could otherwise send any Secret of the namespace to a host of its choosing.
    apply(&secret_labelled(&server.password, "false"));
    apply(&format!(
        "apiVersion: imagecatalog.dev/v1alpha1\nkind: ImageCatalog\nmetadata: {{name: cat-http}}\n\
         spec:\n  git: {{url: '{}', ref: {{branch: main}}, path: images, secretRef: {{name: cat-http-git}}}}\n  interval: 2s\n\
         \x20 labels: {{{SUITE_LABEL}: {SUITE}}}\n",
        server.url(TestRepo::NAME)
    ));
    let unlabelled = wait_for_catalog("cat-http", "the unlabelled Secret refused", |c| {
        condition(c, "Ready").is_some_and(|r| r["reason"] == "GitCredentialsNotLabelled")
    });
    let message = condition(&unlabelled, "Ready").unwrap()["message"].to_string();
    assert!(
        message.contains("imagecatalog.dev/catalog-secret=true"),
        "{message}"
    );
    assert!(!unlabelled.to_string().contains(&server.password));
    apply(&secret("not-the-password"));
    let failing = wait_for_catalog("cat-http", "the authentication failure", |c| {
        condition(c, "Ready").is_some_and(|r| r["reason"] == "GitAuthenticationFailed")
    });
    let text = failing.to_string();
    assert!(!text.contains("not-the-password"), "{text}");

    apply(&secret(&server.password));
    wait_for_phase("cat-http-a", "Ready");

    // The same Secret with an http:// URL is refused by the API: credentials never travel
    // unencrypted.
    let plain = format!(
        "apiVersion: imagecatalog.dev/v1alpha1\nkind: ImageCatalog\nmetadata: {{name: cat-http}}\n\
         spec:\n  git: {{url: '{}', ref: {{branch: main}}, path: images, secretRef: {{name: cat-http-git}}}}\n",
        server
            .url(TestRepo::NAME)
            .replacen("https://", "http://", 1)
    );
    let out = world()
        .env
        .kubectl_with_input(&["apply", "--server-side", "-f", "-"], &plain);
    assert!(
        !out.status.success(),
        "an http:// URL with a secretRef must be refused"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("never sent over http://"), "{stderr}");
}

#[test]
fn a_gitlab_project_gets_a_pending_then_a_success_status_on_the_commit() {
    let forge = common::forge::FakeForge::start(common::forge::Flavor::GitLab {
        token: "glpat-forge-s3cret".into(),
        project: "platform/images/catalog".into(),
    });
    apply(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: cat-forge-gitlab, namespace: image-catalog, labels: {imagecatalog.dev/catalog-secret: \"true\"}}\n\
         stringData: {token: glpat-forge-s3cret}\n",
    );
    let served = Served::start(
        "cat-forge",
        (
            "images/a.yaml",
            &[("cat-forge-a", "disk.qcow2"), ("cat-forge-b", "other.raw")],
        ),
        &format!(
            "  commitStatus: {{provider: GitLab, apiURL: '{}', repository: platform/images/catalog, secretRef: {{name: cat-forge-gitlab}}}}\n",
            forge.api_url()
        ),
    );
    let context = "image-catalog/cat-forge";
    let deadline = std::time::Instant::now() + TIMEOUT;
    let (state, description) = loop {
        if let Some(status) = forge
            .gitlab_status(&served.first, context)
            .filter(|(state, _)| state == "success")
        {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no success status on the commit; the forge got {:#?}, the catalog is {:#}",
            forge.calls(),
            catalog("cat-forge")["status"]
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        (state.as_str(), description.as_str()),
        ("success", "2/2 Ready")
    );
    let calls = forge.accepted();
    let states: Vec<&str> = calls
        .iter()
        .filter_map(|call| call.body["state"].as_str())
        .collect();
    assert_eq!(states.first(), Some(&"pending"), "{calls:#?}");
    assert_eq!(states.last(), Some(&"success"), "{calls:#?}");
    assert!(
        calls.iter().all(|call| call.path
            == format!(
                "/api/v4/projects/platform%2Fimages%2Fcatalog/statuses/{}",
                served.first
            )),
        "{calls:#?}"
    );
    // Nothing more once the state is final: the next sync of the same commit posts nothing.
    let before = forge.calls().len();
    let syncs = metric("image_catalog_catalog_syncs_total", "cat-forge");
    assert_eq!(push_webhook("cat-forge", WEBHOOK_SECRET), 202);
    wait_for("the webhook's sync", TIMEOUT, || {
        (metric("image_catalog_catalog_syncs_total", "cat-forge") > syncs).then_some(())
    });
    assert_eq!(forge.calls().len(), before, "{:#?}", forge.calls());
}

#[test]
fn ssh_with_a_key_syncs_and_an_unknown_host_key_stops_the_fetch() {
    let _cleanup = Cleanup::fresh("cat-ssh");
    let repo = TestRepo::new();
    repo.commit(
        &[(
            "images/a.yaml",
            &catalog_file(&[("cat-ssh-a", "disk.qcow2")]),
        )],
        "one image",
    );
    let server = SshGitServer::start();
    let secret = |known_hosts: &str| {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "cat-ssh-git",
                "namespace": "image-catalog",
                "labels": {"imagecatalog.dev/catalog-secret": "true"},
            },
            "stringData": {"identity": server.identity, "known_hosts": known_hosts},
        })
        .to_string()
    };
    // A known_hosts that lists the server with another key: possibly an attack.
    let other_key = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    let host = server.known_hosts.split_whitespace().next().unwrap();
    apply(&secret(&format!("{host} ssh-ed25519 {other_key}\n")));
    apply(&format!(
        "apiVersion: imagecatalog.dev/v1alpha1\nkind: ImageCatalog\nmetadata: {{name: cat-ssh}}\n\
         spec:\n  git: {{url: '{}', ref: {{branch: main}}, path: images, secretRef: {{name: cat-ssh-git}}}}\n  interval: 2s\n\
         \x20 labels: {{{SUITE_LABEL}: {SUITE}}}\n",
        server.url(&repo.bare())
    ));
    let refused = wait_for_catalog("cat-ssh", "the host key refusal", |c| {
        condition(c, "Ready").is_some_and(|r| r["reason"] == "GitHostKeyNotTrusted")
    });
    let message = condition(&refused, "Ready").unwrap()["message"].to_string();
    assert!(message.contains("does not match known_hosts"), "{message}");
    assert!(get("cvi", "cat-ssh-a").is_none());
    let text = refused.to_string();
    assert!(!text.contains("PRIVATE KEY"), "{text}");

    apply(&secret(&server.known_hosts));
    wait_for_phase("cat-ssh-a", "Ready");
}

/// `image-catalog verify <name>`: (exit status, stdout).
fn run_verify(name: &str) -> (i32, String) {
    run_verify_with(&[], name)
}

fn run_verify_with(flags: &[&str], name: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_image-catalog"))
        .arg("verify")
        .args(flags)
        .arg(name)
        .envs(&world().env.vars)
        .output()
        .unwrap();
    assert!(
        out.stderr.is_empty() || out.status.code() == Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A file of the registry's storage: `docker/registry/v2/<relative>`.
fn registry_file(relative: &str) -> std::path::PathBuf {
    let data = world()
        .env
        .vars
        .get("TESTENV_DVCR_DATA")
        .expect("TESTENV_DVCR_DATA in .testenv/env: restart the environment (scripts/testenv down; scripts/testenv up)");
    Path::new(data).join("docker/registry/v2").join(relative)
}

fn blob_file(digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    registry_file(&format!("blobs/sha256/{}/{hex}/data", &hex[..2]))
}

#[test]
fn verify_confirms_intact_bytes_and_reports_corruption_and_loss_with_what_to_do() {
    // Bytes no other test stores: the registry shares equal blobs between images.
    let unique: Vec<u8> = format!("verify {:?} ", std::time::SystemTime::now())
        .bytes()
        .cycle()
        .take(300_000)
        .collect();
    std::fs::write(
        world()._dir.path().join("images/verify-unique.raw"),
        &unique,
    )
    .unwrap();
    let served = Served::start(
        "cat-verify",
        ("images/a.yaml", &[("cat-verify-a", "verify-unique.raw")]),
        "  commitStatus: {provider: GitNotes}\n",
    );
    wait_for_phase("cat-verify-a", "Ready");
    let verified = |reason: &str| {
        let cvi = get("cvi", "cat-verify-a").unwrap();
        let condition = condition(&cvi, "Verified").expect("a Verified condition");
        assert_eq!(condition["reason"], reason, "{condition}");
        condition
    };

    let (code, out) = run_verify("cat-verify-a");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("cat-verify-a: Verified: layer sha256:"),
        "{out}"
    );
    let first = verified("Verified");
    assert_eq!(first["status"], "True");
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .starts_with("Last verified 20"),
        "{first}"
    );
    // The import controller's conditions are still there beside it.
    let cvi = get("cvi", "cat-verify-a").unwrap();
    assert_eq!(condition(&cvi, "Ready").unwrap()["status"], "True");

    // One flipped byte inside the disk file, on the registry's disk.
    let uid = cvi["metadata"]["uid"].as_str().unwrap().to_string();
    let tag_dir = registry_file(&format!(
        "repositories/cvi/cat-verify-a/_manifests/tags/{uid}"
    ));
    let manifest_digest = std::fs::read_to_string(tag_dir.join("current/link")).unwrap();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(blob_file(manifest_digest.trim())).unwrap()).unwrap();
    let layer = blob_file(manifest["layers"][0]["digest"].as_str().unwrap());
    let original = std::fs::read(&layer).unwrap();
    let mut corrupt = original.clone();
    corrupt[5000] ^= 0x20;
    std::fs::write(&layer, &corrupt).unwrap();
    let (code, out) = run_verify("cat-verify-a");
    std::fs::write(&layer, &original).unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ChecksumMismatch"), "{out}");
    let events = world().env.kubectl_ok(&[
        "get",
        "events",
        "-n",
        "default",
        "--field-selector",
        "involvedObject.name=cat-verify-a,reason=ChecksumMismatch",
        "-o",
        "name",
    ]);
    assert!(!events.trim().is_empty(), "no ChecksumMismatch event");
    let mismatch = verified("ChecksumMismatch");
    assert_eq!(mismatch["status"], "False");
    assert!(
        mismatch["message"]
            .as_str()
            .unwrap()
            .contains("delete the ClusterVirtualImage and create it again"),
        "{mismatch}"
    );

    // The manifest gone from the registry: the presence check finds the image lost, says so
    // in its phase, its Ready condition and an Event, and so does a verification.
    let moved = tag_dir.with_extension("moved");
    std::fs::rename(&tag_dir, &moved).unwrap();
    wait_for_phase("cat-verify-a", "ImageLost");
    let cvi = get("cvi", "cat-verify-a").unwrap();
    let ready = condition(&cvi, "Ready").unwrap();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("ImageLost")),
        "{ready}"
    );
    let (code, out) = run_verify("cat-verify-a");
    assert_eq!(code, 1, "{out}");
    verified("ImageLost");
    let events = world().env.kubectl_ok(&[
        "get",
        "events",
        "-n",
        "default",
        "--field-selector",
        "involvedObject.name=cat-verify-a,reason=ImageLost",
        "-o",
        "name",
    ]);
    assert!(!events.trim().is_empty(), "no ImageLost event");
    // The catalog's commit says so too, beside the sync's own section.
    let text = wait_for("the verification failure on the commit", TIMEOUT, || {
        note(&served.url, &served.first)
            .filter(|text| text.contains("image-catalog/cat-verify/verify: failure"))
    });
    assert!(text.contains("cat-verify-a (ImageLost)"), "{text}");
    assert!(text.contains("image-catalog/cat-verify: "), "{text}");

    // Back as it was: Ready again, and verified again.
    std::fs::rename(&moved, &tag_dir).unwrap();
    wait_for_phase("cat-verify-a", "Ready");
    assert_eq!(run_verify("cat-verify-a").0, 0);
    assert_eq!(verified("Verified")["status"], "True");

    // The upstream check: the same bytes behind the URL pass; a changed file is named.
    let (code, out) = run_verify_with(&["--upstream"], "cat-verify-a");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("still has the same bytes"), "{out}");
    let mut changed = unique.clone();
    changed[10] ^= 1;
    std::fs::write(
        world()._dir.path().join("images/verify-unique.raw"),
        &changed,
    )
    .unwrap();
    let (code, out) = run_verify_with(&["--upstream"], "cat-verify-a");
    assert_eq!(code, 1, "{out}");
    let source_changed = verified("SourceChanged");
    assert!(
        source_changed["message"]
            .as_str()
            .unwrap()
            .contains("the stored image is intact"),
        "{source_changed}"
    );
}
