//! ClusterVirtualImages as tests make and read them, through kubectl.

use serde_json::Value;

use super::TestEnv;

/// The label every suite puts on its images, so that its daemon handles only those.
pub const SUITE_LABEL: &str = "image-catalog.test/suite";

/// A CVI of `suite` with this data source.
pub fn manifest(suite: &str, name: &str, data_source: Value) -> Value {
    serde_json::json!({
        "apiVersion": "virtualization.deckhouse.io/v1alpha2",
        "kind": "ClusterVirtualImage",
        "metadata": {"name": name, "labels": {SUITE_LABEL: suite}},
        "spec": {"dataSource": data_source},
    })
}

/// Creates the image, deleting first what an earlier run left under its name.
pub fn recreate(env: &TestEnv, manifest: &Value) {
    let name = manifest["metadata"]["name"]
        .as_str()
        .expect("a named manifest");
    let _ = env
        .kubectl()
        .args([
            "delete",
            "cvi",
            name,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=60s",
        ])
        .output();
    env.kubectl_input_ok(&["create", "-f", "-"], &manifest.to_string());
}

/// The image as the apiserver has it, or None when there is none.
pub fn get(env: &TestEnv, name: &str) -> Option<Value> {
    env.get_json(&["cvi", name])
}

pub fn phase(cvi: &Value) -> &str {
    cvi["status"]["phase"].as_str().unwrap_or("")
}

/// The import checkpoint of the image `uid`, as the daemon saved it in its Lease.
pub fn checkpoint(env: &TestEnv, uid: &str) -> Option<Value> {
    let lease = env.get_json(&[
        "lease",
        "-n",
        "image-catalog",
        &format!("image-catalog-import-{uid}"),
    ])?;
    serde_json::from_str(lease["metadata"]["annotations"]["imagecatalog.dev/checkpoint"].as_str()?)
        .ok()
}
