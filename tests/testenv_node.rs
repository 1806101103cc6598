//! `scripts/testenv up --node`: a node that runs pods as a cluster does — scheduled by the
//! scheduler, started by kubelet and containerd, on the pod network, pulling their images from
//! DVCR with an imagePullSecret — and `down --node` takes all of it away again.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{node_testenv, repo_root, wait_for};

const NAMESPACE: &str = "testenv-node";

/// What a command prints on stdout.
fn stdout(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn a_pod_pulls_its_image_from_dvcr_and_runs_on_the_pod_network_and_down_removes_the_node() {
    let env = node_testenv();
    env.restricted_namespace(NAMESPACE);

    // The pause image, pushed to DVCR under the node address the way a user's image is.
    let node_registry = env.var("TESTENV_NODE_DVCR_REGISTRY").to_string();
    let image = format!("{node_registry}/testenv/pause:node-test");
    let archive = env.var("TESTENV_PAUSE_ARCHIVE");
    let ca_dir = std::path::Path::new(env.var("DVCR_CA_FILE"))
        .parent()
        .unwrap();
    let status = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-cert-dir"])
        .arg(ca_dir)
        .arg("--dest-creds")
        .arg(format!(
            "{}:{}",
            env.var("DVCR_USERNAME"),
            env.var("DVCR_PASSWORD")
        ))
        .arg(format!("docker-archive:{archive}"))
        .arg(format!("docker://{image}"))
        .status()
        .unwrap();
    assert!(status.success(), "pushing the pause image to DVCR failed");

    env.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "delete",
        "secret",
        "dvcr-pull",
        "--ignore-not-found",
    ]);
    env.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "create",
        "secret",
        "docker-registry",
        "dvcr-pull",
        &format!("--docker-server={node_registry}"),
        &format!("--docker-username={}", env.var("DVCR_USERNAME")),
        &format!("--docker-password={}", env.var("DVCR_PASSWORD")),
    ]);
    env.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "delete",
        "pod",
        "pause",
        "--ignore-not-found",
        "--wait",
    ]);
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: pause, namespace: {NAMESPACE}}}
spec:
  imagePullSecrets: [{{name: dvcr-pull}}]
  securityContext:
    runAsNonRoot: true
    runAsUser: 65535
    seccompProfile: {{type: RuntimeDefault}}
  containers:
  - name: pause
    image: {image}
    imagePullPolicy: Always
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {{drop: [ALL]}}
"#
    );
    env.kubectl_input_ok(&["apply", "-f", "-"], &pod);
    let pod_ip = wait_for("the pod to run", Duration::from_secs(120), || {
        let phase = env.kubectl_ok(&[
            "-n",
            NAMESPACE,
            "get",
            "pod",
            "pause",
            "-o",
            "jsonpath={.status.phase} {.status.podIP}",
        ]);
        let (phase, ip) = phase.split_once(' ')?;
        (phase == "Running" && !ip.is_empty()).then(|| ip.to_string())
    });
    assert!(
        pod_ip.starts_with(&env.var("TESTENV_POD_CIDR").replace(".0/24", ".")),
        "pod IP {pod_ip} is outside the pod range {}",
        env.var("TESTENV_POD_CIDR")
    );
    // The kubelet serves the apiserver's requests for the pod (kubectl logs goes through it).
    env.kubectl_ok(&["-n", NAMESPACE, "logs", "pause"]);
    env.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "delete",
        "pod",
        "pause",
        "--wait",
        "--timeout=60s",
    ]);

    // down --node: nothing of the node is left on the machine, the control plane stays, and
    // the sysctls it changed have their old values.
    let saved = std::fs::read_to_string(repo_root().join(".testenv/node/sysctl.saved")).unwrap();
    let out = Command::new(repo_root().join("scripts/testenv"))
        .args(["down", "--node"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = repo_root().join(".testenv/node");
    assert!(!state.exists(), "{} is left", state.display());
    let links = stdout("ip", &["-br", "link"]);
    assert!(!links.contains("ictest"), "a bridge is left: {links}");
    let routes = stdout("ip", &["route"]);
    assert!(
        !routes.contains("10.96.0.0/16") && !routes.contains("10.244."),
        "routes are left: {routes}"
    );
    for table in ["filter", "nat", "mangle"] {
        let rules = stdout("iptables", &["-t", table, "-S"]);
        assert!(
            !rules.contains("KUBE-"),
            "iptables {table} keeps KUBE- chains:\n{rules}"
        );
    }
    let cgroups = std::fs::read_dir("/sys/fs/cgroup/memory")
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name() == "kubepods");
    assert!(!cgroups, "the kubepods cgroup is left");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(&state.to_string_lossy().into_owned()),
        "mounts are left"
    );
    let netns = stdout("ip", &["netns", "list"]);
    assert!(
        !netns.contains("cni-"),
        "pod network namespaces are left: {netns}"
    );
    for line in saved.lines() {
        let (name, value) = line.split_once('=').unwrap();
        let now = stdout("sysctl", &["-n", name]);
        assert_eq!(now.trim(), value, "{name} was not put back");
    }
    assert!(
        env.kubectl()
            .args(["get", "--raw", "/readyz"])
            .output()
            .unwrap()
            .status
            .success()
    );
}
