//! The real test world: `scripts/testenv` starts (or reuses) etcd, kube-apiserver and DVCR on
//! loopback; tests talk only to those servers.

#![allow(dead_code)] // each test binary uses a different part of this module

/// The condition of `type_` in an object's status, if it has one.
pub fn condition(object: &serde_json::Value, type_: &str) -> Option<serde_json::Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

fn succeeded(args: &[&str], output: Output) -> String {
    assert!(
        output.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

pub mod cut_proxy;
pub mod cvi;
pub mod daemon;
pub mod file_server;
pub mod forge;
pub mod git_server;
pub mod raw_http;
pub mod source_registry;
pub mod stored;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `command`, feeding `stdin`, and returns its output.
pub fn run_with_input(command: &mut Command, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Prometheus' promtool at the pinned version (`scripts/promtool`), fed `stdin`: whether it
/// succeeded, and all it printed.
pub fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    let output = run_with_input(
        Command::new(repo_root().join("scripts/promtool")).args(args),
        stdin,
    );
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

/// What `.testenv/env` exports.
#[derive(Debug, Clone)]
pub struct TestEnv {
    pub vars: HashMap<String, String>,
}

impl TestEnv {
    pub fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from .testenv/env"))
    }
    pub fn kubeconfig(&self) -> &str {
        self.var("KUBECONFIG")
    }
    pub fn dvcr_registry(&self) -> &str {
        self.var("DVCR_REGISTRY")
    }

    /// A `kubectl` against the test apiserver.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new("kubectl");
        command.env("KUBECONFIG", self.kubeconfig());
        if let Some(path) = self.vars.get("PATH") {
            command.env("PATH", path);
        }
        command
    }

    /// Runs kubectl with `args`, feeding `stdin`, and returns its output.
    pub fn kubectl_with_input(&self, args: &[&str], stdin: &str) -> Output {
        run_with_input(self.kubectl().args(args), stdin)
    }

    /// Runs kubectl with `args`, feeding `stdin`; fails the test unless it succeeds.
    pub fn kubectl_input_ok(&self, args: &[&str], stdin: &str) -> String {
        succeeded(args, self.kubectl_with_input(args, stdin))
    }

    /// Runs kubectl and returns stdout, failing the test with stderr when kubectl fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        succeeded(
            args,
            self.kubectl().args(args).output().expect("kubectl runs"),
        )
    }

    /// `kubectl get <args> -o json`: the object, or None when there is none (or kubectl
    /// cannot say).
    pub fn get_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let output = self
            .kubectl()
            .arg("get")
            .args(args)
            .args(["-o", "json"])
            .output()
            .expect("kubectl runs");
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).expect("kubectl prints JSON"))
    }

    pub async fn kube_client(&self) -> kube::Client {
        image_catalog::tls::install_crypto_provider();
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }
}

/// Starts the shared environment once per test binary (or reuses a running one: `up` is
/// idempotent and serialised by a lock, so parallel test binaries share one environment).
pub fn testenv() -> &'static TestEnv {
    static ENV: OnceLock<TestEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let root = repo_root();
        let status = Command::new(root.join("scripts/testenv"))
            .arg("up")
            .current_dir(&root)
            .stdin(Stdio::null())
            .status()
            .expect("scripts/testenv runs");
        assert!(status.success(), "scripts/testenv up failed");
        TestEnv {
            vars: read_env_file(&root.join(".testenv/env")),
        }
    })
}

/// The shared environment with its node (`scripts/testenv up --node`): for what runs in the
/// cluster. Fails the test with the script's reason when the node cannot start; never skips.
/// Not cached: a test may have taken the node down (`down --node`) since.
pub fn node_testenv() -> TestEnv {
    let root = repo_root();
    let output = Command::new(root.join("scripts/testenv"))
        .args(["up", "--node"])
        .current_dir(&root)
        .stdin(Stdio::null())
        .output()
        .expect("scripts/testenv runs");
    assert!(
        output.status.success(),
        "scripts/testenv up --node failed, so the tests that need a node cannot run:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    TestEnv {
        vars: read_env_file(&root.join(".testenv/env")),
    }
}

/// Parses the `export NAME=value` lines of an env file written by `scripts/testenv`.
pub fn read_env_file(path: &Path) -> HashMap<String, String> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|assignment| assignment.split_once('='))
        .map(|(name, value)| {
            // The PATH line extends the caller's PATH: `export PATH=/dir:"$PATH"`.
            let inherited = std::env::var("PATH").unwrap_or_default();
            let value = value
                .trim()
                .replace("\"$PATH\"", &inherited)
                .replace("$PATH", &inherited);
            let value = value.as_str();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            (name.to_string(), value.to_string())
        })
        .collect()
}

/// A leader-election Lease of its own for each daemon a test starts (`--leader-election-lease`):
/// the test binaries share one environment and start their daemons at once, each for its own
/// `--selector`; on one shared Lease all but one of them would stand by and import nothing.
/// Each daemon still campaigns and leads, so every test runs the leader's path.
/// POSTs `body` to the daemon's webhook endpoint on `port`, signed with `secret` as a GitHub
/// push; the status code and the answer.
pub fn post_github_push(port: u16, catalog: &str, secret: &str, body: &[u8]) -> (u16, String) {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let signature = hex::encode(aws_lc_rs::hmac::sign(&key, body).as_ref());
    let dir = tempfile::tempdir().unwrap();
    let body_file = dir.path().join("body");
    std::fs::write(&body_file, body).unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
        ])
        .args(["-H", "X-GitHub-Event: push"])
        .args(["-H", &format!("X-Hub-Signature-256: sha256={signature}")])
        .arg("--data-binary")
        .arg(format!("@{}", body_file.display()))
        .arg(format!("http://127.0.0.1:{port}/hooks/{catalog}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (answer, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), answer.to_string())
}

/// A port free on 127.0.0.1 when asked.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

pub fn unique_lease(suite: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "test-{suite}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl TestEnv {
    /// Creates (or updates) a namespace that enforces Pod Security `restricted`, as the
    /// chart's namespace is run.
    pub fn restricted_namespace(&self, name: &str) {
        let manifest = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n"
        );
        self.kubectl_input_ok(&["apply", "-f", "-"], &manifest);
    }
}

/// `curl -T file url` as the documentation tells users to upload: (status code, body).
pub fn curl_upload(url: &str, file: &Path, extra: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-T"])
        .arg(file)
        .args(extra)
        .arg(url)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Polls `probe` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl TestEnv {
    /// A kubeconfig that authenticates as the ServiceAccount of `deploy/rbac.yaml`, so that a
    /// daemon started with it has exactly the permissions the project ships.
    /// Makes `namespace` and lets the daemon's account read Secrets there, as the chart's
    /// pullSecretNamespaces does (a RoleBinding to the pull-secrets ClusterRole).
    pub fn bind_pull_secrets(&self, namespace: &str) {
        let _ = self
            .kubectl()
            .args(["create", "namespace", namespace])
            .output();
        let _ = self
            .kubectl()
            .args([
                "create",
                "rolebinding",
                "image-catalog-pull-secrets",
                "-n",
                namespace,
                "--clusterrole=image-catalog-pull-secrets",
                "--serviceaccount=image-catalog:image-catalog",
            ])
            .output();
    }

    pub fn daemon_kubeconfig(&self, dir: &Path) -> PathBuf {
        self.kubectl_ok(&[
            "apply",
            "--server-side",
            "-f",
            repo_root().join("deploy/rbac.yaml").to_str().unwrap(),
        ]);
        let token = self.kubectl_ok(&[
            "create",
            "token",
            "image-catalog",
            "-n",
            "image-catalog",
            "--duration=2h",
        ]);
        let server = self.kubectl_ok(&[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ]);
        let ca = self.kubectl_ok(&[
            "config",
            "view",
            "--minify",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ]);
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
             users:\n- name: image-catalog\n  user:\n    token: {token}\ncontexts:\n- name: daemon\n  context: {{cluster: testenv, user: image-catalog}}\n\
             current-context: daemon\n",
            token = token.trim(),
        );
        let path = dir.join("daemon.kubeconfig");
        std::fs::write(&path, kubeconfig).unwrap();
        path
    }
}

/// Fails when any of `secrets` shows in the error's message, Display or Debug.
pub fn assert_no_secret(error: &image_catalog::import::source::SourceError, secrets: &[&str]) {
    let texts = [
        error.message.clone(),
        error.to_string(),
        format!("{error:?}"),
    ];
    for secret in secrets {
        for text in &texts {
            assert!(!text.contains(secret), "{secret:?} leaked in {text:?}");
        }
    }
}
