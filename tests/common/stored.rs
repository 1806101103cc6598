//! Reading stored images back from DVCR with skopeo, to compare them with their sources.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::TestEnv;

pub fn skopeo_auth(env: &TestEnv) -> Vec<String> {
    let ca_dir = Path::new(env.var("DVCR_CA_FILE"))
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    vec![
        format!(
            "--creds={}:{}",
            env.var("DVCR_USERNAME"),
            env.var("DVCR_PASSWORD")
        ),
        format!("--cert-dir={ca_dir}"),
    ]
}

/// Whether DVCR holds a manifest under the image's registry URL.
pub fn dvcr_has(env: &TestEnv, reference: &str) -> bool {
    let mut args = vec!["inspect".to_string(), "--raw".to_string()];
    args.extend(skopeo_auth(env));
    args.push(format!("docker://{reference}"));
    Command::new("skopeo")
        .args(&args)
        .output()
        .unwrap()
        .status
        .success()
}

/// Reads the image back from DVCR with skopeo: (file name under disk/, its sha256, labels).
pub fn read_back(env: &TestEnv, reference: &str) -> (String, String, Value) {
    let out = tempfile::tempdir().unwrap();
    let mut args = vec!["copy".to_string()];
    args.extend(skopeo_auth(env).into_iter().map(|a| {
        a.replace("--creds", "--src-creds")
            .replace("--cert-dir", "--src-cert-dir")
    }));
    args.push(format!("docker://{reference}"));
    args.push(format!("dir:{}", out.path().display()));
    let output = Command::new("skopeo").args(&args).output().unwrap();
    assert!(
        output.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).unwrap()).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );
    let blob = |digest: &Value| {
        out.path()
            .join(digest.as_str().unwrap().trim_start_matches("sha256:"))
    };
    let config: Value =
        serde_json::from_slice(&std::fs::read(blob(&manifest["config"]["digest"])).unwrap())
            .unwrap();
    let mut archive = tar::Archive::new(std::fs::File::open(blob(&layers[0]["digest"])).unwrap());
    let mut files = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if entry.header().entry_type().is_file() {
            let mut hasher = Sha256::new();
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                let n = std::io::Read::read(&mut entry, &mut buffer).unwrap();
                if n == 0 {
                    break;
                }
                hasher.update(&buffer[..n]);
            }
            files.push((path, hex::encode(hasher.finalize())));
        } else {
            assert_eq!(
                path.trim_end_matches('/'),
                "disk",
                "only disk/ and its file"
            );
        }
    }
    assert_eq!(files.len(), 1, "exactly one file under disk/: {files:?}");
    let (path, sha256) = files.remove(0);
    let name = path
        .strip_prefix("disk/")
        .expect("the file is under disk/")
        .to_string();
    (name, sha256, config["config"]["Labels"].clone())
}
