//! The daemon as a user installs it: the project's own image, pushed to DVCR, installed with
//! the Helm chart as two replicas on the test world's node (`scripts/testenv up --node`), in a
//! namespace that enforces Pod Security `restricted`. The product documentation's images
//! become Ready; the leader is killed in the middle of an import (a forced pod delete, and
//! SIGKILL of its process) and the standby takes over and finishes with the exact bytes; a
//! graceful stop hands over at once; an upload goes through the upload Service after a
//! takeover; `helm upgrade` to a new image keeps everything Ready; and the audit log shows the
//! chart's RBAC allowed every request the daemon made.
//!
//! Everything happens in one test, in order: the steps share one installation, and each
//! depends on the state the previous one left.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::cvi::{SUITE_LABEL, phase, recreate};
use common::file_server::{Behavior, FileServer};
use common::git_server::{GitDaemon, TestRepo};
use common::stored::read_back;
use common::{TestEnv, node_testenv, repo_root, wait_for};
use serde_json::Value;
use sha2::{Digest, Sha256};

const NAMESPACE: &str = "image-catalog";
const RELEASE: &str = "e2e";
/// The chart's full name for this release: the Deployment, ServiceAccount and Lease.
const FULLNAME: &str = "e2e-image-catalog";
const SUITE: &str = "in-cluster";
const PULL_SECRET: &str = "e2e-dvcr-pull";
const CATALOG: &str = "e2e-catalog";
/// The images the test makes before the upgrade, all Ready after it.
const IMAGES: [&str; 8] = [
    "e2e-ubuntu-22.04",
    "e2e-slackware-15",
    "e2e-ubuntu-copy",
    "e2e-catalog-image",
    "e2e-takeover-a",
    "e2e-takeover-b",
    "e2e-takeover-c",
    "e2e-some-image",
];

/// Deletes the test's catalog (its images are deleted with it: the catalog prunes them).
fn delete_catalog(env: &TestEnv) {
    let _ = env
        .kubectl()
        .args([
            "delete",
            "imagecatalog",
            CATALOG,
            "--ignore-not-found",
            "--wait",
            "--timeout=60s",
        ])
        .output();
    let _ = env
        .kubectl()
        .args([
            "patch",
            "imagecatalog",
            CATALOG,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ])
        .output();
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn helm(env: &TestEnv) -> Command {
    let mut command = Command::new(repo_root().join("scripts/helm"));
    command.env("KUBECONFIG", env.kubeconfig());
    command
}

/// The project's image built from this test's binary and pushed to DVCR: (repository as the
/// node pulls it, digest). `epoch` changes the files' times, so a second build is a new digest.
fn push_image(env: &TestEnv, dir: &Path, epoch: u64) -> (String, String) {
    // The test build without its DWARF: a tenth of the size, the same code.
    let binary = dir.join("image-catalog");
    if !binary.exists() {
        run(Command::new("objcopy")
            .arg("--strip-debug")
            .arg(env!("CARGO_BIN_EXE_image-catalog"))
            .arg(&binary));
    }
    let output = run(Command::new(repo_root().join("scripts/image"))
        .arg("--binary")
        .arg(&binary)
        .arg("--output")
        .arg(dir.join(format!("oci-{epoch}")))
        .arg("--push")
        .env("SOURCE_DATE_EPOCH", epoch.to_string()));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let reference = stdout.lines().last().unwrap().trim().to_string();
    let (repository, digest) = reference.split_once('@').expect("repository@digest");
    let path = repository.split_once('/').unwrap().1;
    (
        format!("{}/{path}", env.var("TESTENV_NODE_DVCR_REGISTRY")),
        digest.to_string(),
    )
}

fn cvi(env: &TestEnv, name: &str) -> Option<Value> {
    common::cvi::get(env, name)
}

fn ready(env: &TestEnv, name: &str) -> Value {
    let image = wait_for(
        &format!("{name} to be Ready or Failed"),
        Duration::from_secs(240),
        || cvi(env, name).filter(|cvi| matches!(phase(cvi), "Ready" | "Failed")),
    );
    assert_eq!(phase(&image), "Ready", "{name}: {:#}", image["status"]);
    image
}

fn create(env: &TestEnv, manifest: &Value) {
    let name = manifest["metadata"]["name"].as_str().unwrap();
    delete_image(env, name);
    recreate(env, manifest);
}

/// Deletes an image; a leftover of an earlier run whose daemon is gone keeps a finalizer
/// nobody will honour, so it is dropped.
fn delete_image(env: &TestEnv, name: &str) {
    let _ = env
        .kubectl()
        .args([
            "patch",
            "cvi",
            name,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ])
        .output();
    let _ = env
        .kubectl()
        .args([
            "delete",
            "cvi",
            name,
            "--ignore-not-found",
            "--wait",
            "--timeout=60s",
        ])
        .output();
}

/// A documented example with its name, label and source made local to the test world.
fn example(file: &str, name: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let text = std::fs::read_to_string(repo_root().join("examples/cvi").join(file)).unwrap();
    let mut manifest: Value = serde_yaml::from_str(&text).unwrap();
    manifest["metadata"]["name"] = name.into();
    manifest["metadata"]["labels"] = serde_json::json!({ SUITE_LABEL: SUITE });
    edit(&mut manifest);
    manifest
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn stored_sha256(env: &TestEnv, image: &Value) -> String {
    let url = image["status"]["target"]["registryURL"].as_str().unwrap();
    read_back(env, url).1
}

fn write_random(path: &Path, len: usize, seed: u64) {
    let mut state = seed | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(path, bytes).unwrap();
}

/// The pods of the release: (name, ready, leader label).
fn pods(env: &TestEnv) -> Vec<(String, bool, bool)> {
    let list = env
        .get_json(&[
            "-n",
            NAMESPACE,
            "pods",
            "-l",
            &format!("app.kubernetes.io/instance={RELEASE}"),
        ])
        .unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pod| pod["metadata"]["deletionTimestamp"].is_null())
        .map(|pod| {
            let ready = pod["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            let leader = pod["metadata"]["labels"]["imagecatalog.dev/leader"] == "true";
            (
                pod["metadata"]["name"].as_str().unwrap().to_string(),
                ready,
                leader,
            )
        })
        .collect()
}

/// How often the pod's container was restarted.
fn restarts(env: &TestEnv, pod: &str) -> u64 {
    env.get_json(&["-n", NAMESPACE, "pod", pod])
        .and_then(|pod| pod["status"]["containerStatuses"][0]["restartCount"].as_u64())
        .unwrap_or(0)
}

fn lease_holder(env: &TestEnv) -> Option<String> {
    let lease = env.get_json(&["-n", NAMESPACE, "lease", FULLNAME])?;
    lease["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_string)
}

/// Waits for two Ready replicas, one of them holding the Lease and labelled as the leader.
fn leader(env: &TestEnv) -> String {
    wait_for(
        "two Ready replicas and a labelled leader",
        Duration::from_secs(180),
        || {
            let pods = pods(env);
            let holder = lease_holder(env)?;
            let ready = pods.iter().filter(|(_, ready, _)| *ready).count();
            let labelled: Vec<_> = pods.iter().filter(|(_, _, leader)| *leader).collect();
            (ready == 2 && labelled.len() == 1 && labelled[0].0 == holder).then_some(holder)
        },
    )
}

/// Waits until someone other than `old` holds the Lease; returns the new holder and the time.
fn takeover(env: &TestEnv, old: &str, since: Instant) -> (String, Duration) {
    let holder = wait_for(
        "another replica to take the Lease",
        Duration::from_secs(90),
        || lease_holder(env).filter(|holder| holder != old),
    );
    (holder, since.elapsed())
}

/// Starts an HTTP import that stalls after its first megabyte (the source keeps the
/// connection open), and waits until the leader is in the middle of it.
fn start_stalled_import(env: &TestEnv, http: &FileServer, name: &str, file: &str) -> Value {
    http.set_behavior(
        &format!("/{file}"),
        Behavior {
            stall_after: Some((1 << 20, 1)),
            ..Behavior::default()
        },
    );
    let manifest = example("ubuntu-22.04.yaml", name, |m| {
        m["spec"]["dataSource"]["http"]["url"] = http.url(file).into();
    });
    create(env, &manifest);
    wait_for(
        &format!("{name} to be mid-import"),
        Duration::from_secs(120),
        || (http.bytes_sent(&format!("/{file}")) >= 1 << 20).then_some(()),
    );
    manifest
}

/// The host PID of the replica `pod`'s daemon process (found by its POD_NAME).
fn daemon_pid(pod: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .find(|pid: &u32| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains("controller")
                && environ
                    .split(|b| *b == 0)
                    .any(|var| var == format!("POD_NAME={pod}").as_bytes())
        })
}

fn install(env: &TestEnv, repository: &str, digest: &str, upload_node_port: u16) {
    run(helm(env)
        .args(["upgrade", "--install", RELEASE])
        .arg(repo_root().join("deploy/chart"))
        .args(["-n", NAMESPACE, "-f", env.var("TESTENV_CHART_VALUES")])
        .args(["--set", &format!("image.repository={repository}")])
        .args(["--set", &format!("image.digest={digest}")])
        .args(["--set", "replicaCount=2"])
        .args(["--set", &format!("imagePullSecrets[0].name={PULL_SECRET}")])
        // The test world's control plane already has the CRDs and the policy of deploy/.
        .args([
            "--set",
            "crds.install=false",
            "--set",
            "admissionPolicy.enabled=false",
        ])
        .args(["--set", "upload.service.type=NodePort"])
        .args([
            "--set",
            &format!("upload.service.nodePort={upload_node_port}"),
        ])
        .args([
            "--set",
            &format!(
                "upload.externalURL=http://{}:{upload_node_port}",
                env.var("TESTENV_NODE_IP")
            ),
        ])
        // Only this test's images; other suites run daemons of their own at the same time.
        .args([
            "--set",
            &format!("extraArgs={{--selector={SUITE_LABEL}={SUITE}}}"),
        ])
        .args(["--wait", "--timeout", "300s"]));
}

/// What the daemon's ServiceAccount did since `since` (RFC 3339, UTC), from the apiserver's
/// audit log: (verb, resource) pairs, and those that were refused. Earlier entries belong to
/// earlier runs, whose uninstall removes the RBAC while their pods still stop.
fn audited_requests(env: &TestEnv, since: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let user = format!("system:serviceaccount:{NAMESPACE}:{FULLNAME}");
    let log = std::fs::read_to_string(env.var("TESTENV_AUDIT_LOG")).unwrap();
    let (mut used, mut refused) = (BTreeSet::new(), BTreeSet::new());
    for line in log.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if event["user"]["username"] != user.as_str()
            || event["requestReceivedTimestamp"]
                .as_str()
                .is_none_or(|t| t < since)
        {
            continue;
        }
        let object = &event["objectRef"];
        let Some(resource) = object["resource"].as_str() else {
            continue;
        };
        let group = object["apiGroup"].as_str().unwrap_or("");
        let sub = object["subresource"]
            .as_str()
            .map(|s| format!("/{s}"))
            .unwrap_or_default();
        let key = format!(
            "{} {group}/{resource}{sub}",
            event["verb"].as_str().unwrap_or("")
        );
        if event["responseStatus"]["code"] == 403 {
            refused.insert(key.clone());
        }
        used.insert(key);
    }
    (used, refused)
}

/// Every (verb, group/resource) the chart's ClusterRole and Role grant.
fn granted(env: &TestEnv) -> BTreeSet<String> {
    let mut granted = BTreeSet::new();
    for (kind, name) in [
        ("clusterrole", FULLNAME.to_string()),
        ("role", FULLNAME.to_string()),
    ] {
        let mut args = vec![kind, &name];
        if kind == "role" {
            args.extend(["-n", NAMESPACE]);
        }
        let role = env
            .get_json(&args)
            .unwrap_or_else(|| panic!("{kind} {name} exists"));
        for rule in role["rules"].as_array().unwrap() {
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        granted.insert(format!(
                            "{} {}/{}",
                            verb.as_str().unwrap(),
                            group.as_str().unwrap(),
                            resource.as_str().unwrap()
                        ));
                    }
                }
            }
        }
    }
    granted
}

fn prepare(env: &TestEnv) {
    let _ = helm(env)
        .args(["uninstall", RELEASE, "-n", NAMESPACE, "--wait"])
        .output();
    let images = env
        .get_json(&["cvi", "-l", &format!("{SUITE_LABEL}={SUITE}")])
        .unwrap();
    for image in images["items"].as_array().unwrap() {
        delete_image(env, image["metadata"]["name"].as_str().unwrap());
    }
    // The namespace as a security-minded user runs it.
    env.restricted_namespace(NAMESPACE);
    let _ = env
        .kubectl()
        .args([
            "-n",
            NAMESPACE,
            "delete",
            "secret",
            PULL_SECRET,
            "--ignore-not-found",
        ])
        .output();
    env.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "create",
        "secret",
        "docker-registry",
        PULL_SECRET,
        &format!("--docker-server={}", env.var("TESTENV_NODE_DVCR_REGISTRY")),
        &format!("--docker-username={}", env.var("DVCR_USERNAME")),
        &format!("--docker-password={}", env.var("DVCR_PASSWORD")),
    ]);
}

fn free_node_port() -> u16 {
    // The default NodePort range is 30000-32767; spread the pick so reruns rarely collide.
    30000 + (std::process::id() % 2700) as u16
}

#[test]
fn installed_with_the_chart_two_replicas_import_take_over_upload_and_upgrade() {
    let env = node_testenv();
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    prepare(&env);
    let since = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();

    // Real images, served where pods reach them: the node address.
    let raw = images.join("disk.raw");
    write_random(&raw, 6 << 20, 1);
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(images.join("ubuntu.qcow2")));
    for (i, name) in [
        "takeover-a.img",
        "takeover-b.img",
        "takeover-c.img",
        "upload.img",
    ]
    .iter()
    .enumerate()
    {
        write_random(&images.join(name), 8 << 20, 100 + i as u64);
    }
    let http = FileServer::start_on(&images, env.var("TESTENV_NODE_IP"));

    let t0 = Instant::now();
    let (repository, digest) = push_image(&env, dir.path(), 1_700_000_000);
    let upload_port = free_node_port();
    install(&env, &repository, &digest, upload_port);
    let first_leader = leader(&env);
    eprintln!(
        "installed and a leader elected in {:?}: {first_leader}",
        t0.elapsed()
    );

    // The documentation's HTTP example, and its example with both checksums.
    let ubuntu = example("ubuntu-22.04.yaml", "e2e-ubuntu-22.04", |m| {
        m["spec"]["dataSource"]["http"]["url"] = http.url("ubuntu.qcow2").into();
    });
    let qcow2 = images.join("ubuntu.qcow2");
    let bytes = std::fs::read(&qcow2).unwrap();
    let checksums = example("slackware-15-checksums.yaml", "e2e-slackware-15", |m| {
        let source = &mut m["spec"]["dataSource"]["http"];
        source["url"] = http.url("ubuntu.qcow2").into();
        source.as_object_mut().unwrap().remove("caBundle");
        source["checksum"]["md5"] = hex::encode(md5::Md5::digest(&bytes)).into();
        source["checksum"]["sha256"] = sha256_file(&qcow2).into();
    });
    create(&env, &ubuntu);
    create(&env, &checksums);
    for name in ["e2e-ubuntu-22.04", "e2e-slackware-15"] {
        let image = ready(&env, name);
        assert_eq!(image["status"]["format"], "qcow2");
        assert_eq!(
            stored_sha256(&env, &image),
            sha256_file(&qcow2),
            "{name}: stored bytes differ"
        );
    }

    // The documentation's ObjectRef example, made from a ClusterVirtualImage here (nothing
    // in the test world makes a Ready VirtualImage).
    let copy = example("ubuntu-from-virtualimage.yaml", "e2e-ubuntu-copy", |m| {
        m["spec"]["dataSource"]["objectRef"] =
            serde_json::json!({"kind": "ClusterVirtualImage", "name": "e2e-ubuntu-22.04"});
    });
    create(&env, &copy);
    let image = ready(&env, "e2e-ubuntu-copy");
    assert_eq!(stored_sha256(&env, &image), sha256_file(&qcow2));

    // A catalog in Git, served where pods reach it, synced by the leader: its image becomes
    // Ready and the commit gets the daemon's note.
    let repo = TestRepo::new();
    let catalog_file = format!(
        "images:\n  - name: e2e-catalog-image\n    dataSource:\n      type: HTTP\n      http: {{url: '{}'}}\n",
        http.url("ubuntu.qcow2")
    );
    let commit = repo.commit(
        &[("images/e2e.yaml", &catalog_file)],
        "An image for the in-cluster test",
    );
    let git_daemon = GitDaemon::start_on(&repo.root, env.var("TESTENV_NODE_IP"));
    delete_catalog(&env);
    let catalog = format!(
        "apiVersion: imagecatalog.dev/v1alpha1\nkind: ImageCatalog\nmetadata: {{name: {CATALOG}}}\n\
         spec:\n  git: {{url: '{}', ref: {{branch: main}}, path: images}}\n  interval: 1h\n\
         \x20 labels: {{{SUITE_LABEL}: {SUITE}}}\n  commitStatus: {{provider: GitNotes}}\n",
        git_daemon.url(TestRepo::NAME)
    );
    env.kubectl_input_ok(&["apply", "-f", "-"], &catalog);
    let image = ready(&env, "e2e-catalog-image");
    assert_eq!(stored_sha256(&env, &image), sha256_file(&qcow2));
    let bare = repo.bare();
    let note = wait_for(
        "the success note on the commit",
        Duration::from_secs(120),
        || {
            let out = Command::new("git")
                .current_dir(&bare)
                .args(["notes", "--ref", "image-catalog", "show", &commit])
                .output()
                .ok()?;
            let note = String::from_utf8_lossy(&out.stdout).into_owned();
            note.contains(&format!("image-catalog/{CATALOG}: success"))
                .then_some(note)
        },
    );
    eprintln!("the catalog's note on {}: {}", &commit[..12], note.trim());

    // The leader's pod is force-deleted in the middle of an import.
    start_stalled_import(&env, &http, "e2e-takeover-a", "takeover-a.img");
    let killed = Instant::now();
    env.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "delete",
        "pod",
        &first_leader,
        "--force",
        "--grace-period=0",
    ]);
    let (second_leader, took) = takeover(&env, &first_leader, killed);
    let image = ready(&env, "e2e-takeover-a");
    eprintln!(
        "forced pod delete: {second_leader} took over after {took:?}, the image was Ready {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(
        stored_sha256(&env, &image),
        sha256_file(&images.join("takeover-a.img"))
    );

    // The new leader's process gets SIGKILL in the middle of an import. The kubelet restarts
    // the container; the new process has the pod's identity, so it may resume leading at once
    // (the Lease is its own) or the standby takes over: either way the import ends Ready.
    let leader_now = leader(&env);
    let restarts_before = restarts(&env, &leader_now);
    start_stalled_import(&env, &http, "e2e-takeover-b", "takeover-b.img");
    let pid = daemon_pid(&leader_now).expect("the leader's daemon process on the node");
    let killed = Instant::now();
    run(Command::new("kill").args(["-KILL", &pid.to_string()]));
    let image = ready(&env, "e2e-takeover-b");
    let holder = leader(&env);
    assert!(
        restarts(&env, &leader_now) > restarts_before,
        "the killed container was restarted"
    );
    eprintln!(
        "SIGKILL: the image was Ready {:?} after the kill; {}",
        killed.elapsed(),
        if holder == leader_now {
            format!("the restarted container of {holder} resumed leading")
        } else {
            format!("the standby {holder} took over")
        }
    );
    assert_eq!(
        stored_sha256(&env, &image),
        sha256_file(&images.join("takeover-b.img"))
    );

    // A graceful stop (SIGTERM) releases the Lease: the standby takes over at once.
    let leader_now = leader(&env);
    start_stalled_import(&env, &http, "e2e-takeover-c", "takeover-c.img");
    let stopped = Instant::now();
    env.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "delete",
        "pod",
        &leader_now,
        "--wait=false",
    ]);
    let (next, took) = takeover(&env, &leader_now, stopped);
    eprintln!("SIGTERM: {next} took over after {took:?}");
    let image = ready(&env, "e2e-takeover-c");
    assert_eq!(
        stored_sha256(&env, &image),
        sha256_file(&images.join("takeover-c.img"))
    );

    // An upload through the upload Service (its NodePort), to the replica that now leads.
    leader(&env);
    create(
        &env,
        &example("some-image-upload.yaml", "e2e-some-image", |_| {}),
    );
    let url = wait_for("the upload URL", Duration::from_secs(120), || {
        cvi(&env, "e2e-some-image")?["status"]["imageUploadURLs"]["external"]
            .as_str()
            .map(str::to_string)
    });
    assert!(
        url.starts_with(&format!(
            "http://{}:{upload_port}/",
            env.var("TESTENV_NODE_IP")
        )),
        "{url}"
    );
    let upload = images.join("upload.img");
    // Right after a handover the Service may not route to the new leader yet (its
    // EndpointSlice, then kube-proxy's rules, follow the leader label): the connection is
    // refused then, before a byte is sent, and a client tries again.
    let routed = Instant::now();
    let out = wait_for(
        "the upload Service to route to the leader",
        Duration::from_secs(60),
        || {
            let out = Command::new("curl")
                .args(["-sS", "--noproxy", "*", "--fail-with-body", "-T"])
                .arg(&upload)
                .arg(&url)
                .output()
                .expect("curl runs");
            // curl's exit code 7: could not connect.
            (out.status.code() != Some(7)).then_some(out)
        },
    );
    assert!(
        out.status.success(),
        "the upload failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "upload (the Service routed to the leader {:?} after it was asked to): {}",
        routed.elapsed(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    let image = ready(&env, "e2e-some-image");
    assert_eq!(stored_sha256(&env, &image), sha256_file(&upload));

    // helm upgrade to a new image: a rolling update of both replicas; everything stays Ready
    // and the new replicas import.
    let (repository, new_digest) = push_image(&env, dir.path(), 1_700_000_100);
    assert_ne!(
        new_digest, digest,
        "a second build with other file times is a new image"
    );
    let upgrade = Instant::now();
    install(&env, &repository, &new_digest, upload_port);
    leader(&env);
    eprintln!(
        "helm upgrade rolled both replicas in {:?}",
        upgrade.elapsed()
    );
    let deployment = env
        .get_json(&["-n", NAMESPACE, "deployment", FULLNAME])
        .unwrap();
    let image_ref = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    assert!(image_ref.ends_with(&new_digest), "{image_ref}");
    for name in IMAGES {
        assert_eq!(
            phase(&cvi(&env, name).unwrap()),
            "Ready",
            "{name} after the upgrade"
        );
    }
    let after = example("ubuntu-22.04.yaml", "e2e-after-upgrade", |m| {
        m["spec"]["dataSource"]["http"]["url"] = http.url("ubuntu.qcow2").into();
    });
    create(&env, &after);
    ready(&env, "e2e-after-upgrade");

    // Every request of the daemon was allowed by the chart's RBAC; list what it used and what
    // it was granted without using in this run.
    let (used, refused) = audited_requests(&env, &since);
    let granted = granted(&env);
    eprintln!(
        "requests the daemon made:\n  {}",
        used.iter().cloned().collect::<Vec<_>>().join("\n  ")
    );
    let unused: Vec<_> = granted
        .iter()
        .filter(|grant| {
            !used
                .iter()
                .any(|u| u == *grant || u.starts_with(&format!("{grant}/")))
        })
        .cloned()
        .collect();
    eprintln!(
        "granted but not used in this run:\n  {}",
        unused.join("\n  ")
    );
    assert!(refused.is_empty(), "the chart's RBAC refused: {refused:?}");

    for name in IMAGES.iter().chain(&["e2e-after-upgrade"]) {
        delete_image(&env, name);
    }
    delete_catalog(&env);
    run(helm(&env).args(["uninstall", RELEASE, "-n", NAMESPACE, "--wait"]));
}
