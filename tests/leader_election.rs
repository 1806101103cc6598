//! End to end: two daemon processes on one Lease against the real apiserver and DVCR, under the
//! shipped ServiceAccount. One leads and imports; the other stands by, Ready, writing nothing;
//! when the leader is killed the standby takes over, and when it is stopped with SIGTERM it
//! hands the lease over at once. Takeover times are printed, not asserted.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::file_server::FileServer;
use common::{TestEnv, testenv, unique_lease, wait_for};
use serde_json::Value;

const NAMESPACE: &str = "image-catalog";
const SUITE_LABEL: &str = "image-catalog.test/suite";
const LEADER_LABEL: &str = "imagecatalog.dev/leader";
/// Generous: a takeover after a kill takes about the lease duration (15 s).
const TIMEOUT: Duration = Duration::from_secs(90);

/// One daemon process. Dropped (or when the test process ends, however it ends: a watchdog
/// shell waits on a pipe only this process holds) it is killed.
struct Daemon {
    identity: String,
    metrics_port: u16,
    log: PathBuf,
    child: Child,
    _watchdog: (Child, ChildStdin),
}

impl Daemon {
    /// Starts `image-catalog controller` as pod `identity` (POD_NAME), campaigning for `lease`
    /// and importing the images labelled with `suite`.
    fn start(world: &World, lease: &str, identity: &str) -> Daemon {
        let metrics_port = common::free_port();
        let log = world.dir.path().join(format!("{identity}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        eprintln!("daemon {identity} log: {}", log.display());
        let child = Command::new(env!("CARGO_BIN_EXE_image-catalog"))
            .arg("controller")
            .args(["--selector", &format!("{SUITE_LABEL}={}", world.suite)])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args([
                "--upload-addr",
                &format!("127.0.0.1:{}", common::free_port()),
            ])
            .args(["--catalog-controller=false", "--max-import-attempts", "2"])
            .args(["--leader-election-lease", lease])
            .envs(&world.env.vars)
            .env("KUBECONFIG", &world.kubeconfig)
            .env("POD_NAME", identity)
            .env("POD_NAMESPACE", NAMESPACE)
            .env("RUST_LOG", "info,image_catalog=debug")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("the daemon starts");
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!("read _; kill -9 {} 2>/dev/null", child.id()))
            .stdin(Stdio::piped())
            .spawn()
            .expect("the watchdog starts");
        let pipe = watchdog.stdin.take().unwrap();
        Daemon {
            identity: identity.to_string(),
            metrics_port,
            log,
            child,
            _watchdog: (watchdog, pipe),
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.identity);
    }

    fn wait_exit(&mut self) -> ExitStatus {
        wait_for(&format!("{} to exit", self.identity), TIMEOUT, || {
            self.child.try_wait().unwrap()
        })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, line: &str) {
        wait_for(
            &format!("{:?} in the log of {}", line, self.identity),
            TIMEOUT,
            || self.log_text().contains(line).then_some(()),
        );
    }

    fn get(&self, path: &str) -> Option<String> {
        let output = Command::new("curl")
            .args(["-sf", "--noproxy", "*", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{}{path}", self.metrics_port))
            .output()
            .unwrap();
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn is_ready(&self) -> bool {
        self.get("/readyz").is_some()
    }

    fn metric(&self, name: &str) -> Option<f64> {
        self.get("/metrics")?
            .lines()
            .find(|line| line.split(' ').next() == Some(name))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
    }

    fn wait_ready(&self) {
        wait_for(&format!("{} to be Ready", self.identity), TIMEOUT, || {
            self.is_ready().then_some(())
        });
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!("--- the end of the log of {}:\n{tail}", self.identity);
        }
    }
}

/// What one test needs: a file server with an image, the daemon's kubeconfig, and the label
/// its daemons select (each test its own: the tests of this file run at once).
struct World {
    env: &'static TestEnv,
    http: FileServer,
    kubeconfig: PathBuf,
    suite: String,
    dir: tempfile::TempDir,
}

impl World {
    fn new(test: &str) -> World {
        let env = testenv();
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        write_random(&images.join("disk.raw"), 1 << 20, 1 << 20);
        let http = FileServer::start(&images);
        let kubeconfig = env.daemon_kubeconfig(dir.path());
        World {
            env,
            http,
            kubeconfig,
            suite: format!("leader-{test}-{}", std::process::id()),
            dir,
        }
    }

    fn cvi_name(&self, name: &str) -> String {
        format!("{}-{name}", self.suite)
    }

    /// Creates an HTTP image of the served disk, labelled for this test's daemons.
    fn create_image(&self, name: &str) {
        let manifest = serde_json::json!({
            "apiVersion": "virtualization.deckhouse.io/v1alpha2",
            "kind": "ClusterVirtualImage",
            "metadata": {"name": name, "labels": {SUITE_LABEL: self.suite}},
            "spec": {"dataSource": {"type": "HTTP", "http": {"url": self.http.url("disk.raw")}}},
        });
        self.env
            .kubectl_input_ok(&["create", "-f", "-"], &manifest.to_string());
    }

    fn image(&self, name: &str) -> Value {
        serde_json::from_str(&self.env.kubectl_ok(&["get", "cvi", name, "-o", "json"])).unwrap()
    }

    fn wait_image_ready(&self, name: &str) {
        wait_for(&format!("{name} to be Ready"), TIMEOUT, || {
            let image = self.image(name);
            let phase = image["status"]["phase"].as_str().unwrap_or("").to_string();
            assert_ne!(phase, "Failed", "{image}");
            (phase == "Ready").then_some(())
        });
    }

    fn lease(&self, name: &str) -> Option<Value> {
        self.env.get_json(&["lease", name, "-n", NAMESPACE])
    }

    fn holder(&self, lease: &str) -> Option<String> {
        self.lease(lease)?["spec"]["holderIdentity"]
            .as_str()
            .filter(|holder| !holder.is_empty())
            .map(str::to_string)
    }

    fn wait_holder(&self, lease: &str, identity: &str) {
        wait_for(
            &format!("{identity} to hold lease {lease}"),
            TIMEOUT,
            || (self.holder(lease).as_deref() == Some(identity)).then_some(()),
        );
    }

    /// A Pod object named like a daemon's identity that no node runs (it selects no node, so
    /// even with the test world's node up it is never scheduled or pulled): the daemon then
    /// labels it as a daemon in a pod would. Valid under the namespace's Pod Security
    /// `restricted`.
    fn create_pod(&self, name: &str) {
        let manifest = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "serviceAccountName": "image-catalog",
                "automountServiceAccountToken": false,
                "nodeSelector": {"image-catalog.test/never-scheduled": "true"},
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": 65532,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [{
                    "name": "daemon",
                    "image": "image-catalog:test",
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }],
            },
        });
        self.env
            .kubectl_input_ok(&["create", "-f", "-"], &manifest.to_string());
    }

    fn pod_is_labelled_leader(&self, name: &str) -> bool {
        let pod: Value = serde_json::from_str(
            &self
                .env
                .kubectl_ok(&["get", "pod", name, "-n", NAMESPACE, "-o", "json"]),
        )
        .unwrap();
        pod["metadata"]["labels"][LEADER_LABEL] == "true"
    }

    fn cleanup(&self, images: &[&str], pods: &[&str]) {
        for image in images {
            let _ = self
                .env
                .kubectl()
                .args(["delete", "cvi", image, "--wait=false", "--ignore-not-found"])
                .output();
        }
        for pod in pods {
            let _ = self
                .env
                .kubectl()
                .args(["delete", "pod", pod, "-n", NAMESPACE, "--ignore-not-found"])
                .args(["--grace-period=0", "--force"])
                .output();
        }
    }
}

fn write_random(path: &Path, random: usize, zeros: usize) {
    let mut bytes = vec![0u8; random + zeros];
    let mut state = 0x5851f42d4c957f2du64 ^ u64::from(std::process::id());
    for byte in &mut bytes[..random] {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn one_of_two_daemons_leads_and_the_standby_takes_over_when_the_leader_is_killed() {
    let world = World::new("kill");
    let lease = unique_lease("kill");
    let (a, b) = (format!("{lease}-a"), format!("{lease}-b"));
    world.create_pod(&a);
    world.create_pod(&b);
    let mut daemons = vec![
        Daemon::start(&world, &lease, &a),
        Daemon::start(&world, &lease, &b),
    ];

    let holder = wait_for("one daemon to hold the lease", TIMEOUT, || {
        world.holder(&lease)
    });
    let leader_index = daemons
        .iter()
        .position(|daemon| daemon.identity == holder)
        .unwrap_or_else(|| panic!("the lease is held by {holder}, neither {a} nor {b}"));
    let mut leader = daemons.remove(leader_index);
    let standby = daemons.remove(0);
    standby.wait_log(&format!("standby: lease {lease} held by {holder}"));
    leader.wait_log(&format!("acquired leadership of lease {lease}"));
    // Both are Ready: a standby is Ready by its own health, or rolling updates would stall.
    leader.wait_ready();
    standby.wait_ready();
    assert_eq!(leader.metric("image_catalog_leader"), Some(1.0));
    assert_eq!(standby.metric("image_catalog_leader"), Some(0.0));
    assert_eq!(
        standby.metric("image_catalog_leader_transitions_total"),
        Some(0.0)
    );
    // Leader-only traffic goes to the leader's pod: the Services select this label.
    wait_for("the leader's pod to be labelled", TIMEOUT, || {
        world.pod_is_labelled_leader(&leader.identity).then_some(())
    });
    assert!(!world.pod_is_labelled_leader(&standby.identity));

    let before = world.cvi_name("before-kill");
    world.create_image(&before);
    world.wait_image_ready(&before);
    assert_eq!(
        standby.metric(
            r#"image_catalog_imports_total{source="HTTP",outcome="succeeded",reason="Ready"}"#
        ),
        Some(0.0),
        "the standby imported nothing"
    );

    let transitions_before = world.lease(&lease).unwrap()["spec"]["leaseTransitions"]
        .as_i64()
        .unwrap_or(0);
    leader.signal("KILL");
    let killed = Instant::now();
    leader.wait_exit();
    let after = world.cvi_name("after-kill");
    world.create_image(&after);
    world.wait_holder(&lease, &standby.identity);
    let takeover = killed.elapsed();
    world.wait_image_ready(&after);
    let imported = killed.elapsed();
    eprintln!(
        "takeover after SIGKILL of the leader: lease acquired by the standby after {:.1} s, \
         an image created after the kill Ready after {:.1} s",
        takeover.as_secs_f64(),
        imported.as_secs_f64()
    );
    standby.wait_log(&format!("acquired leadership of lease {lease}"));
    assert_eq!(standby.metric("image_catalog_leader"), Some(1.0));
    assert_eq!(
        standby.metric("image_catalog_leader_transitions_total"),
        Some(1.0)
    );
    let spec = &world.lease(&lease).unwrap()["spec"];
    assert_eq!(
        spec["leaseTransitions"].as_i64(),
        Some(transitions_before + 1),
        "{spec}"
    );
    // The new leader took the label from the dead leader's pod.
    wait_for("the new leader's pod to be labelled", TIMEOUT, || {
        (world.pod_is_labelled_leader(&standby.identity)
            && !world.pod_is_labelled_leader(&leader.identity))
        .then_some(())
    });
    world.cleanup(&[&before, &after], &[&a, &b]);
}

#[test]
fn sigterm_releases_the_lease_and_the_standby_takes_over_at_its_next_look() {
    let world = World::new("term");
    let lease = unique_lease("term");
    let mut first = Daemon::start(&world, &lease, &format!("{lease}-a"));
    world.wait_holder(&lease, &first.identity);
    let second = Daemon::start(&world, &lease, &format!("{lease}-b"));
    second.wait_log(&format!(
        "standby: lease {lease} held by {}",
        first.identity
    ));
    second.wait_ready();

    first.signal("TERM");
    let stopped = Instant::now();
    let status = first.wait_exit();
    let exited = stopped.elapsed();
    assert!(status.success(), "SIGTERM ends the daemon with 0: {status}");
    assert!(
        first
            .log_text()
            .contains(&format!("released lease {lease}")),
        "{}",
        first.log_text()
    );
    let spec = world.lease(&lease).unwrap()["spec"].clone();
    let holder = spec["holderIdentity"].as_str().unwrap_or("");
    assert!(
        holder.is_empty() && spec["leaseDurationSeconds"] == 1 || holder == second.identity,
        "released: no holder and a short duration, or the standby's already: {spec}"
    );
    world.wait_holder(&lease, &second.identity);
    let takeover = stopped.elapsed();
    eprintln!(
        "takeover after SIGTERM of the leader: the leader exited after {:.1} s, the standby \
         holds the lease after {:.1} s",
        exited.as_secs_f64(),
        takeover.as_secs_f64()
    );
    wait_for("the new leader's metrics", TIMEOUT, || {
        (second.metric("image_catalog_leader") == Some(1.0)).then_some(())
    });

    let image = world.cvi_name("after-term");
    world.create_image(&image);
    world.wait_image_ready(&image);
    world.cleanup(&[&image], &[]);
}

#[test]
fn a_standby_writes_nothing_until_it_leads() {
    let world = World::new("standby");
    let lease = unique_lease("standby");
    // A lease held by a leader that is alive as far as anyone can tell: it lasts an hour.
    let held = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": lease, "namespace": NAMESPACE},
        "spec": {
            "holderIdentity": "another-replica",
            "leaseDurationSeconds": 3600,
            "renewTime": "2030-01-01T00:00:00.000000Z",
            "leaseTransitions": 0,
        },
    });
    world
        .env
        .kubectl_input_ok(&["create", "-f", "-"], &held.to_string());

    let standby = Daemon::start(&world, &lease, &format!("{lease}-a"));
    standby.wait_log(&format!("standby: lease {lease} held by another-replica"));
    standby.wait_ready();
    let image = world.cvi_name("while-standing-by");
    world.create_image(&image);
    // A few of the standby's looks at the lease (every 2 s); a leader would have written the
    // image's status and finalizer by now.
    std::thread::sleep(Duration::from_secs(6));
    let untouched = world.image(&image);
    assert!(
        untouched
            .get("status")
            .is_none_or(|status| status.is_null() || status == &serde_json::json!({})),
        "a standby writes no status: {untouched}"
    );
    assert!(
        untouched["metadata"]["finalizers"].is_null(),
        "a standby adds no finalizer: {untouched}"
    );
    assert_eq!(standby.metric("image_catalog_leader"), Some(0.0));

    // The other replica lets go: the standby leads at its next look and imports the image.
    world.env.kubectl_ok(&[
        "patch",
        "lease",
        &lease,
        "-n",
        NAMESPACE,
        "--type=merge",
        "-p",
        r#"{"spec":{"holderIdentity":null}}"#,
    ]);
    let released = Instant::now();
    world.wait_holder(&lease, &standby.identity);
    eprintln!(
        "a standby acquired a released lease after {:.1} s",
        released.elapsed().as_secs_f64()
    );
    world.wait_image_ready(&image);
    world.cleanup(&[&image], &[]);
}

#[test]
fn a_leader_that_finds_the_lease_taken_exits_non_zero_at_once() {
    let world = World::new("lost");
    let lease = unique_lease("lost");
    let mut leader = Daemon::start(&world, &lease, &format!("{lease}-a"));
    world.wait_holder(&lease, &leader.identity);
    leader.wait_log("import controller started");
    // Another replica wrote the lease (a leader that was cut off from the API server for
    // longer than the lease lasts finds this when it comes back).
    world.env.kubectl_ok(&[
        "patch",
        "lease",
        &lease,
        "-n",
        NAMESPACE,
        "--type=merge",
        "-p",
        r#"{"spec":{"holderIdentity":"another-replica","leaseDurationSeconds":3600}}"#,
    ]);
    let taken = Instant::now();
    let status = leader.wait_exit();
    eprintln!(
        "a leader whose lease was taken exited after {:.1} s",
        taken.elapsed().as_secs_f64()
    );
    assert!(
        !status.success(),
        "losing the lease is an error exit: {status}"
    );
    assert!(
        leader.log_text().contains("lost leadership; exiting"),
        "{}",
        leader.log_text()
    );
    assert_eq!(
        world.holder(&lease).as_deref(),
        Some("another-replica"),
        "the leader does not release a lease it no longer holds"
    );
}
