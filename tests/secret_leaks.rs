//! Secrets never leak. One daemon (import and catalog controllers, debug logging) goes
//! through every way a secret reaches it — credentials and a signed query in an HTTP URL, a
//! registry pull secret, Git HTTPS credentials, a forge token, a webhook secret — each once
//! wrong and once right, and then its log, the Events, the images' and the catalog's status,
//! the metrics and the commit checks it sent are searched for every one of those values.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::cvi::{self, SUITE_LABEL};
use common::file_server::{Behavior, FileServer};
use common::forge::{FakeForge, Flavor};
use common::git_server::{HttpGitServer, TestRepo};
use common::source_registry::SourceRegistry;
use common::{TestEnv, testenv, wait_for};
use serde_json::Value;

const SUITE: &str = "leaks";
const URL_USER: &str = "leak-url-user";
const URL_PASSWORD: &str = "LEAK-url-password-41";
const URL_SIGNATURE: &str = "LEAK-query-signature-42";
const WRONG_REGISTRY_PASSWORD: &str = "LEAK-wrong-registry-43";
const WRONG_GIT_PASSWORD: &str = "LEAK-wrong-git-44";
const FORGE_TOKEN: &str = "LEAK-forge-token-45";
const WRONG_FORGE_TOKEN: &str = "LEAK-wrong-forge-46";
const WEBHOOK_SECRET: &str = "LEAK-webhook-secret-47";

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn apply(env: &TestEnv, yaml: &str) {
    env.kubectl_input_ok(&["apply", "-f", "-"], yaml);
}

fn catalog_secret(name: &str, data: Value) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": "image-catalog",
            "labels": {"imagecatalog.dev/catalog-secret": "true"},
        },
        "stringData": data,
    })
    .to_string()
}

fn pull_secret(name: &str, registry: &str, user: &str, password: &str) -> String {
    let auths = serde_json::json!({"auths": {registry: {"username": user, "password": password}}});
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "image-catalog"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": auths.to_string()},
    })
    .to_string()
}

fn kubectl_json(env: &TestEnv, args: &[&str]) -> Value {
    serde_json::from_str(&env.kubectl_ok(args)).unwrap()
}

fn settled(env: &TestEnv, name: &str) -> Value {
    wait_for(
        &format!("{name} to settle"),
        Duration::from_secs(120),
        || cvi::get(env, name).filter(|cvi| matches!(cvi::phase(cvi), "Ready" | "Failed")),
    )
}

fn post_webhook(port: u16, catalog: &str, secret: &str) -> u16 {
    common::post_github_push(port, catalog, secret, br#"{"ref":"refs/heads/main"}"#).0
}

fn start_daemon(env: &TestEnv, dir: &Path, metrics: u16, webhooks: u16) -> Daemon {
    let log = dir.join("daemon.log");
    let command = format!(
        "exec '{bin}' controller --selector {SUITE_LABEL}={SUITE} --metrics-addr 127.0.0.1:{metrics} \
         --upload-addr 127.0.0.1:{upload} --webhook-addr 127.0.0.1:{webhooks} \
         --git-cache-dir '{cache}' --max-import-attempts 1 --leader-election-lease {lease} \
         >'{log}' 2>&1",
        bin = env!("CARGO_BIN_EXE_image-catalog"),
        upload = common::free_port(),
        cache = dir.join("git-cache").display(),
        lease = common::unique_lease(SUITE),
        log = log.display(),
    );
    let child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(&env.vars)
        .env("KUBECONFIG", env.daemon_kubeconfig(dir))
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .spawn()
        .expect("the daemon starts");
    Daemon(child)
}

#[test]
fn no_secret_reaches_logs_events_status_metrics_or_commit_checks() {
    let env = testenv();
    let dir = tempfile::tempdir().unwrap();
    let (metrics_port, webhook_port) = (common::free_port(), common::free_port());
    let _daemon = start_daemon(env, dir.path(), metrics_port, webhook_port);

    // An HTTP source behind basic auth, with a signed query: one found, one missing.
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    std::fs::write(served.join("disk.raw"), vec![0x5au8; 1 << 20]).unwrap();
    let http = FileServer::start(&served);
    http.set_behavior("/", Behavior::default().basic_auth(URL_USER, URL_PASSWORD));
    let url = |file: &str| {
        http.url(&format!("{file}?sig={URL_SIGNATURE}")).replacen(
            "http://",
            &format!("http://{URL_USER}:{URL_PASSWORD}@"),
            1,
        )
    };
    for (name, file) in [("leak-http", "disk.raw"), ("leak-http-missing", "gone.raw")] {
        cvi::recreate(
            env,
            &cvi::manifest(
                SUITE,
                name,
                serde_json::json!({"type": "HTTP", "http": {"url": url(file)}}),
            ),
        );
    }

    // A private registry: a pull secret with a wrong password, and one with the right one.
    let registry = SourceRegistry::start_private();
    let image = registry.push_container_disk(
        "leak/disk:1",
        &[("disk/disk.raw", &served.join("disk.raw"))],
        true,
    );
    let (user, password) = registry.credentials().unwrap();
    apply(
        env,
        &pull_secret(
            "leak-pull-wrong",
            &registry.host(),
            &user,
            WRONG_REGISTRY_PASSWORD,
        ),
    );
    apply(
        env,
        &pull_secret("leak-pull", &registry.host(), &user, &password),
    );
    for (name, secret) in [
        ("leak-registry-wrong", "leak-pull-wrong"),
        ("leak-registry", "leak-pull"),
    ] {
        cvi::recreate(
            env,
            &cvi::manifest(
                SUITE,
                name,
                serde_json::json!({"type": "ContainerImage", "containerImage": {
                    "image": image,
                    "caBundle": registry.ca_bundle_base64(),
                    "imagePullSecret": {"name": secret, "namespace": "image-catalog"},
                }}),
            ),
        );
    }

    // A catalog over Git HTTPS with a wrong, then the right password; commit checks to a
    // GitLab with a wrong, then the right token; a webhook with its secret.
    let repo = TestRepo::new();
    let commit = repo.commit(
        &[(
            "images/a.yaml",
            &format!(
                "images:\n  - name: leak-from-git\n    dataSource:\n      type: HTTP\n      http: {{url: '{}'}}\n",
                url("disk.raw")
            ),
        )],
        "one image",
    );
    let git = HttpGitServer::start_https(&repo.root);
    let forge = FakeForge::start(Flavor::GitLab {
        token: FORGE_TOKEN.into(),
        project: "platform/leaks".into(),
    });
    let git_secret = |password: &str| {
        catalog_secret(
            "leak-git",
            serde_json::json!({"username": git.username, "password": password, "ca.crt": git.ca_pem}),
        )
    };
    apply(env, &git_secret(WRONG_GIT_PASSWORD));
    apply(
        env,
        &catalog_secret(
            "leak-forge",
            serde_json::json!({"token": WRONG_FORGE_TOKEN}),
        ),
    );
    apply(
        env,
        &catalog_secret("leak-webhook", serde_json::json!({"token": WEBHOOK_SECRET})),
    );
    let _ = env
        .kubectl()
        .args(["delete", "imagecatalog", "leaks", "--ignore-not-found"])
        .output();
    apply(
        env,
        &format!(
            "apiVersion: imagecatalog.dev/v1alpha1\nkind: ImageCatalog\nmetadata: {{name: leaks}}\n\
             spec:\n  git: {{url: '{}', ref: {{branch: main}}, path: images, secretRef: {{name: leak-git}}}}\n\
             \x20 interval: 2s\n  labels: {{{SUITE_LABEL}: {SUITE}}}\n\
             \x20 commitStatus: {{provider: GitLab, apiURL: '{}', repository: platform/leaks, secretRef: {{name: leak-forge}}}}\n\
             \x20 webhook: {{secretRef: {{name: leak-webhook}}}}\n",
            git.url(TestRepo::NAME),
            forge.api_url()
        ),
    );
    wait_for(
        "the wrong Git password to be refused",
        Duration::from_secs(60),
        || {
            let catalog = kubectl_json(env, &["get", "imagecatalog", "leaks", "-o", "json"]);
            (catalog["status"]
                .to_string()
                .contains("GitAuthenticationFailed"))
            .then_some(())
        },
    );
    apply(env, &git_secret(&git.password));
    assert_eq!(post_webhook(webhook_port, "leaks", "not-the-secret"), 403);
    assert_eq!(post_webhook(webhook_port, "leaks", WEBHOOK_SECRET), 202);
    wait_for("a refused commit check", Duration::from_secs(60), || {
        forge
            .calls()
            .iter()
            .any(|call| call.status == 401)
            .then_some(())
    });
    apply(
        env,
        &catalog_secret("leak-forge", serde_json::json!({"token": FORGE_TOKEN})),
    );

    for (name, phase) in [
        ("leak-http", "Ready"),
        ("leak-http-missing", "Failed"),
        ("leak-registry-wrong", "Failed"),
        ("leak-registry", "Ready"),
        ("leak-from-git", "Ready"),
    ] {
        let image = settled(env, name);
        assert_eq!(cvi::phase(&image), phase, "{name}: {}", image["status"]);
    }
    wait_for(
        "the commit's success status",
        Duration::from_secs(60),
        || {
            forge
                .gitlab_status(&commit, "image-catalog/leaks")
                .filter(|(state, _)| state == "success")
        },
    );

    // Everything the daemon said, wherever it said it.
    let mut said: Vec<(String, String)> = Vec::new();
    said.push((
        "the daemon's log".into(),
        std::fs::read_to_string(dir.path().join("daemon.log")).unwrap(),
    ));
    said.push((
        "Events".into(),
        env.kubectl_ok(&["get", "events", "-A", "-o", "json"]),
    ));
    let images = kubectl_json(
        env,
        &[
            "get",
            "cvi",
            "-l",
            &format!("{SUITE_LABEL}={SUITE}"),
            "-o",
            "json",
        ],
    );
    for image in images["items"].as_array().unwrap() {
        said.push((
            format!("the status of {}", image["metadata"]["name"]),
            image["status"].to_string(),
        ));
    }
    let catalog = kubectl_json(env, &["get", "imagecatalog", "leaks", "-o", "json"]);
    said.push(("the catalog's status".into(), catalog["status"].to_string()));
    let metrics = Command::new("curl")
        .args(["-sS", "--noproxy", "*"])
        .arg(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .output()
        .unwrap();
    said.push((
        "the metrics".into(),
        String::from_utf8_lossy(&metrics.stdout).into(),
    ));
    for call in forge.calls() {
        said.push((
            format!("the commit check {} {}", call.method, call.path),
            call.body.to_string(),
        ));
    }
    assert!(
        said[0].1.contains("leak-registry-wrong"),
        "the log is the daemon's"
    );

    let secrets = [
        URL_PASSWORD,
        URL_SIGNATURE,
        WRONG_REGISTRY_PASSWORD,
        password.as_str(),
        WRONG_GIT_PASSWORD,
        git.password.as_str(),
        FORGE_TOKEN,
        WRONG_FORGE_TOKEN,
        WEBHOOK_SECRET,
    ];
    let leaks: Vec<String> = said
        .iter()
        .flat_map(|(place, text)| {
            secrets
                .iter()
                .filter(|secret| text.contains(*secret))
                .map(move |secret| format!("{secret:?} in {place}"))
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "secrets leaked:\n  {}",
        leaks.join("\n  ")
    );

    for name in [
        "leak-http",
        "leak-http-missing",
        "leak-registry-wrong",
        "leak-registry",
    ] {
        let _ = env
            .kubectl()
            .args(["delete", "cvi", name, "--wait=false"])
            .output();
    }
    let _ = env
        .kubectl()
        .args(["delete", "imagecatalog", "leaks", "--wait=false"])
        .output();
}
