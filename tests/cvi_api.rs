//! The ClusterVirtualImage API as the real apiserver enforces it with the generated CRDs:
//! the documented examples are accepted, the invalid corpus is refused with a message naming
//! the offending field, and `kubectl get cvi` prints the documented columns.

mod common;

use std::path::PathBuf;

use common::{repo_root, testenv};

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

fn manifest_name(path: &PathBuf) -> String {
    let value: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    value["metadata"]["name"].as_str().unwrap().to_string()
}

fn header(output: &str) -> Vec<String> {
    // Column names can hold one space ("Registry URL"), so split on runs of two or more.
    let first = output.lines().next().unwrap_or_default();
    first
        .split("  ")
        .map(str::trim)
        .filter(|column| !column.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn documented_examples_are_accepted_and_listed_with_the_documented_columns() {
    let env = testenv();
    let examples = yaml_files("examples/cvi");
    assert!(examples.len() >= 3);
    let label = "image-catalog.test/suite=cvi-api-examples";
    for example in &examples {
        let name = manifest_name(example);
        // No daemon runs here to honour the finalizer of an image another run's daemon
        // imported under this name: drop it, or the delete waits forever.
        let _ = env
            .kubectl()
            .args(["patch", "cvi", &name, "--type=merge", "-p"])
            .arg(r#"{"metadata":{"finalizers":null}}"#)
            .output();
        env.kubectl_ok(&[
            "delete",
            "cvi",
            &name,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=60s",
        ]);
        env.kubectl_ok(&["apply", "-f", example.to_str().unwrap()]);
        env.kubectl_ok(&["label", "cvi", &name, label, "--overwrite"]);
    }

    // A status as the controller would write it, to see it in the columns.
    env.kubectl_ok(&[
        "patch", "cvi", "ubuntu-22.04", "--subresource=status", "--type=merge", "-p",
        r#"{"status":{"phase":"Ready","cdrom":false,"progress":"100%","format":"qcow2",
            "size":{"stored":"285.9Mi","storedBytes":"299761664","unpacked":"2.2Gi","unpackedBytes":"2361393152"},
            "target":{"registryURL":"dvcr.example/cvi/ubuntu-22.04:uid"}}}"#,
    ]);

    let table = env.kubectl_ok(&["get", "cvi", "-l", label]);
    assert_eq!(
        header(&table),
        ["NAME", "PHASE", "CDROM", "PROGRESS", "AGE"]
    );
    let row: Vec<&str> = table
        .lines()
        .find(|line| line.starts_with("ubuntu-22.04 "))
        .expect("ubuntu-22.04 listed")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..4], ["ubuntu-22.04", "Ready", "false", "100%"]);
    assert_eq!(table.lines().count(), examples.len() + 1, "{table}");

    let wide = env.kubectl_ok(&["get", "cvi", "-l", label, "-o", "wide"]);
    assert_eq!(
        header(&wide),
        [
            "NAME",
            "PHASE",
            "CDROM",
            "PROGRESS",
            "STOREDSIZE",
            "UNPACKEDSIZE",
            "REGISTRY URL",
            "AGE"
        ]
    );
    let wide_row = wide
        .lines()
        .find(|line| line.starts_with("ubuntu-22.04 "))
        .unwrap();
    for value in ["285.9Mi", "2.2Gi", "dvcr.example/cvi/ubuntu-22.04:uid"] {
        assert!(wide_row.contains(value), "{wide_row}");
    }

    // The short name and the category reach the same resources.
    let by_category = env.kubectl_ok(&["get", "virtualization-cluster", "-l", label, "-o", "name"]);
    assert_eq!(by_category.lines().count(), examples.len(), "{by_category}");

    env.kubectl_ok(&["delete", "cvi", "-l", label, "--wait=true", "--timeout=60s"]);
}

#[test]
fn invalid_manifests_are_refused_with_a_message_naming_the_field() {
    let env = testenv();
    let corpus = yaml_files("tests/corpus/cvi");
    assert!(
        corpus.len() >= 15,
        "the invalid corpus shrank to {}",
        corpus.len()
    );
    let mut accepted = Vec::new();
    let mut unclear = Vec::new();
    for path in &corpus {
        let text = std::fs::read_to_string(path).unwrap();
        let expected = text
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks its '# expect:' line", path.display()));
        let output = env.kubectl_with_input(&["create", "-f", "-"], &text);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if output.status.success() {
            let name = manifest_name(path);
            env.kubectl_ok(&["delete", "cvi", &name, "--ignore-not-found"]);
            accepted.push(file);
        } else if !stderr.contains(expected) {
            unclear.push(format!("{file}: expected '{expected}' in: {stderr}"));
        }
    }
    assert!(
        accepted.is_empty(),
        "accepted by the apiserver: {accepted:?}"
    );
    assert!(
        unclear.is_empty(),
        "refused without naming the field:\n{}",
        unclear.join("\n")
    );
}

#[test]
fn a_virtual_image_is_namespaced_and_listed_by_its_short_name() {
    let env = testenv();
    // Already there when the environment is reused: that is fine.
    let _ = env
        .kubectl()
        .args(["create", "namespace", "vi-api-test"])
        .output();
    let manifest = r#"
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualImage
metadata:
  name: ubuntu
  namespace: vi-api-test
spec:
  storage: ContainerRegistry
  dataSource:
    type: HTTP
    http:
      url: https://mirror.example.com/images/ubuntu.qcow2
"#;
    env.kubectl_input_ok(&["apply", "-f", "-"], manifest);
    let listed = env.kubectl_ok(&["get", "vi", "-n", "vi-api-test"]);
    assert_eq!(
        header(&listed),
        ["NAME", "PHASE", "CDROM", "PROGRESS", "AGE"]
    );
    assert!(listed.contains("ubuntu"));

    let missing_block = manifest.replace(
        "    http:\n      url: https://mirror.example.com/images/ubuntu.qcow2\n",
        "",
    );
    let output = env.kubectl_with_input(&["apply", "--dry-run=server", "-f", "-"], &missing_block);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("spec.dataSource.http"));
    env.kubectl_ok(&["delete", "vi", "ubuntu", "-n", "vi-api-test"]);
}

#[tokio::test]
async fn the_kube_client_talks_tls_to_the_apiserver_beside_a_reqwest_client() {
    use image_catalog::api::ClusterVirtualImage;
    let env = testenv();
    let client = env.kube_client().await;
    // reqwest in the same process with the same provider: the start-up panic this guards against
    // happens when the second TLS stack initialises.
    let _ = reqwest::Client::builder().build().unwrap();
    let api: kube::Api<ClusterVirtualImage> = kube::Api::all(client);
    api.list(&Default::default())
        .await
        .expect("list CVIs over TLS");
}

#[tokio::test]
async fn a_status_write_meant_for_a_deleted_image_never_lands_on_its_namesake() {
    use image_catalog::api::{ClusterVirtualImage, ImageStatus, status::ImagePhase};
    use image_catalog::k8s::cvi_status::{CviStatusStore, Target};
    use kube::{Api, ResourceExt};
    let env = testenv();
    let name = "status-writer-uid";
    let manifest = format!(
        "apiVersion: virtualization.deckhouse.io/v1alpha2\nkind: ClusterVirtualImage\nmetadata: {{name: {name}}}\n\
         spec: {{dataSource: {{type: HTTP, http: {{url: 'https://example.invalid/a.img'}}}}}}\n"
    );
    let _ = env.kubectl_ok(&["delete", "cvi", name, "--ignore-not-found", "--wait=true"]);
    env.kubectl_input_ok(&["create", "-f", "-"], &manifest);
    let client = env.kube_client().await;
    let api: Api<ClusterVirtualImage> = Api::all(client.clone());
    let first = api.get(name).await.unwrap();
    let store = CviStatusStore::new(client);
    let ready = ImageStatus {
        phase: Some(ImagePhase::Ready),
        ..Default::default()
    };
    let mut old_target = Target::of(&first);
    store.write_import(&mut old_target, &ready).await.unwrap();

    // The same name, another image: the old import's write must fail.
    env.kubectl_ok(&["delete", "cvi", name, "--wait=true"]);
    env.kubectl_input_ok(&["create", "-f", "-"], &manifest);
    let second = api.get(name).await.unwrap();
    assert_ne!(second.uid(), first.uid());
    let stale = store.write_import(&mut old_target, &ready).await;
    assert!(
        matches!(
            stale,
            Err(image_catalog::k8s::cvi_status::WriteError::Gone(_))
        ),
        "a write for the deleted image landed: {stale:?}"
    );
    // Even from a target that never saw a resourceVersion: the UID is compared on conflict.
    let stale = store.write_import(&mut Target::of(&first), &ready).await;
    assert!(stale.is_err(), "{stale:?}");
    let now = api.get(name).await.unwrap();
    assert_eq!(
        now.status.and_then(|s| s.phase),
        None,
        "the new image is untouched"
    );
    store
        .write_import(&mut Target::of(&second), &ready)
        .await
        .unwrap();
    env.kubectl_ok(&["delete", "cvi", name, "--wait=true"]);
}
