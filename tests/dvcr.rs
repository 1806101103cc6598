//! The DVCR client against the real registry of `scripts/testenv`: images pushed through the
//! streaming layer upload read back with skopeo and tar byte for byte, failed uploads leave no
//! tag, deletion, cross-repository mounts, and credential errors that do not leak the password.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use image_catalog::dvcr::{Dvcr, DvcrConfig, ImageLabels, StoredLayer};
use sha2::{Digest, Sha256};

use common::{TestEnv, testenv};

fn config(env: &TestEnv) -> DvcrConfig {
    DvcrConfig {
        registry: env.dvcr_registry().to_string(),
        username: Some(env.var("DVCR_USERNAME").to_string()),
        password: Some(env.var("DVCR_PASSWORD").to_string()),
        ca_pem: Some(std::fs::read(env.var("DVCR_CA_FILE")).unwrap()),
    }
}

fn dvcr(env: &TestEnv) -> Dvcr {
    Dvcr::new(config(env)).unwrap()
}

/// A value no earlier run of the shared registry has used.
fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{:x}{n}", nanos, std::process::id())
}

fn unique_repository(test: &str) -> String {
    format!("itest/{test}-{}", unique())
}

fn tag() -> String {
    format!("uid-{}", unique())
}

/// Bytes that do not compress and differ per call.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut seed = Sha256::digest(unique().as_bytes()).to_vec();
    let mut out = Vec::with_capacity(len + 32);
    while out.len() < len {
        seed = Sha256::digest(&seed).to_vec();
        out.extend_from_slice(&seed);
    }
    out.truncate(len);
    out
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("command runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A real qcow2 holding a few MiB of data, with its virtual size.
fn qcow2_disk(dir: &Path) -> (PathBuf, u64) {
    let raw = dir.join("disk.raw");
    std::fs::write(&raw, random_bytes(3 * 1024 * 1024 + 4096)).unwrap();
    let qcow2 = dir.join("noble-server.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    let info = run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&qcow2));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    (qcow2, info["virtual-size"].as_u64().unwrap())
}

/// Uploads `content` in chunks of varying sizes and commits the layer.
async fn upload(dvcr: &Dvcr, repository: &str, file_name: &str, content: &[u8]) -> StoredLayer {
    let mut upload = dvcr
        .start_disk_layer(repository, file_name, content.len() as u64)
        .await
        .unwrap();
    let sizes = [1usize, 511, 4096, 65_536 + 7, 1 << 20];
    let mut offset = 0;
    for size in sizes.iter().cycle() {
        if offset == content.len() {
            break;
        }
        let end = (offset + size).min(content.len());
        upload
            .write(Bytes::copy_from_slice(&content[offset..end]))
            .await
            .unwrap();
        offset = end;
    }
    upload.finish().await.unwrap()
}

fn labels_for(content: &[u8], virtual_size: u64, format: &str) -> ImageLabels {
    ImageLabels {
        stored_size: content.len() as u64,
        virtual_size,
        format: format.to_string(),
        sha256: Some(hex::encode(Sha256::digest(content))),
        md5: Some(hex::encode(md5::Md5::digest(content))),
    }
}

/// skopeo's `--src-cert-dir`: a directory with the CA as `ca.crt`.
fn cert_dir(env: &TestEnv, dir: &Path) -> PathBuf {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(env.var("DVCR_CA_FILE"), certs.join("ca.crt")).unwrap();
    certs
}

fn skopeo(env: &TestEnv, dir: &Path, args: &[&str], image: &str) -> Output {
    let creds = format!("{}:{}", env.var("DVCR_USERNAME"), env.var("DVCR_PASSWORD"));
    let certs = cert_dir(env, dir);
    let mut command = Command::new("skopeo");
    command.arg(args[0]);
    if args[0] == "copy" {
        command
            .arg("--src-creds")
            .arg(&creds)
            .arg("--src-cert-dir")
            .arg(&certs);
    } else {
        command
            .arg("--creds")
            .arg(&creds)
            .arg("--cert-dir")
            .arg(&certs);
    }
    command.args(&args[1..]).arg(format!("docker://{image}"));
    if args[0] == "copy" {
        command.arg(format!("dir:{}", dir.join("image").display()));
    }
    command.output().expect("skopeo runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_disk_reads_back_with_skopeo_and_tar() {
    let env = testenv();
    let dvcr = dvcr(env);
    let dir = tempfile::tempdir().unwrap();
    let (disk, virtual_size) = qcow2_disk(dir.path());
    let content = std::fs::read(&disk).unwrap();
    let repository = unique_repository("roundtrip");
    let tag = tag();

    let layer = upload(
        &dvcr,
        &repository,
        "/images/noble-server.qcow2?sig=x",
        &content,
    )
    .await;
    assert_eq!(layer.size % 512, 0);
    assert!(layer.size >= content.len() as u64 + 2048);
    // Committed but not tagged: not visible yet.
    assert_eq!(dvcr.manifest_digest(&repository, &tag).await.unwrap(), None);

    let labels = labels_for(&content, virtual_size, "qcow2");
    let manifest_digest = dvcr
        .tag_image(&repository, &tag, &layer, &labels)
        .await
        .unwrap();
    assert_eq!(
        dvcr.manifest_digest(&repository, &tag).await.unwrap(),
        Some(manifest_digest.clone())
    );
    let image = dvcr.image_url(&repository, &tag);
    assert_eq!(image, format!("{}/{repository}:{tag}", env.dvcr_registry()));

    // The image as any OCI client sees it.
    let output = skopeo(env, dir.path(), &["copy"], &image);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let image_dir = dir.path().join("image");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );
    assert_eq!(layers[0]["digest"], layer.digest.as_str());
    assert_eq!(layers[0]["size"], layer.size);

    let layer_file = image_dir.join(layer.digest.trim_start_matches("sha256:"));
    let listing = run(Command::new("tar").arg("-tf").arg(&layer_file));
    assert_eq!(
        String::from_utf8(listing.stdout).unwrap(),
        "disk/\ndisk/noble-server.qcow2\n"
    );
    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&layer_file)
        .arg("-C")
        .arg(&unpacked));
    let stored = std::fs::read(unpacked.join("disk/noble-server.qcow2")).unwrap();
    assert!(
        stored == content,
        "the stored disk differs from the uploaded bytes"
    );

    let output = skopeo(env, dir.path(), &["inspect", "--config"], &image);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let config: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["rootfs"]["diff_ids"][0], layer.digest.as_str());
    let found = &config["config"]["Labels"];
    assert_eq!(found["source-image-size"], content.len().to_string());
    assert_eq!(found["source-image-virtual-size"], virtual_size.to_string());
    assert_eq!(found["source-image-format"], "qcow2");
    assert_eq!(
        found["source-image-sha256"],
        labels.sha256.as_deref().unwrap()
    );
    assert_eq!(found["source-image-md5"], labels.md5.as_deref().unwrap());

    // And through the client itself.
    let read = dvcr.read_image(&repository, &tag).await.unwrap();
    assert_eq!(read.manifest_digest, manifest_digest);
    assert_eq!(read.layer, layer);
    assert_eq!(read.file_name, "noble-server.qcow2");
    assert_eq!(read.file_size, content.len() as u64);
    assert_eq!(read.image_labels().unwrap(), labels);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_file_gives_the_same_layer_digest() {
    let env = testenv();
    let dvcr = dvcr(env);
    let content = random_bytes(100_000);
    let repository = unique_repository("reproducible");
    let first = upload(&dvcr, &repository, "a.img", &content).await;
    let second = upload(&dvcr, &repository, "a.img", &content).await;
    assert_eq!(first, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_or_dropped_upload_leaves_no_tag() {
    let env = testenv();
    let dvcr = dvcr(env);
    let repository = unique_repository("abort");
    let tag = tag();
    let content = random_bytes(2 * 1024 * 1024);

    let mut aborted = dvcr
        .start_disk_layer(&repository, "a.img", content.len() as u64)
        .await
        .unwrap();
    aborted
        .write(Bytes::copy_from_slice(&content[..1024 * 1024]))
        .await
        .unwrap();
    aborted.abort().await;
    assert_eq!(dvcr.manifest_digest(&repository, &tag).await.unwrap(), None);

    let mut dropped = dvcr
        .start_disk_layer(&repository, "a.img", content.len() as u64)
        .await
        .unwrap();
    dropped
        .write(Bytes::copy_from_slice(&content[..1000]))
        .await
        .unwrap();
    drop(dropped);
    assert_eq!(dvcr.manifest_digest(&repository, &tag).await.unwrap(), None);

    // The repository still takes a full upload afterwards.
    let layer = upload(&dvcr, &repository, "a.img", &content).await;
    dvcr.tag_image(&repository, &tag, &layer, &labels_for(&content, 0, "raw"))
        .await
        .unwrap();
    assert!(
        dvcr.manifest_digest(&repository, &tag)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_byte_count_fails_and_tags_nothing() {
    let env = testenv();
    let dvcr = dvcr(env);
    let repository = unique_repository("size-mismatch");
    let tag = tag();
    let content = random_bytes(10_000);

    // Fewer bytes than declared.
    let mut short = dvcr
        .start_disk_layer(&repository, "a.img", content.len() as u64 + 1)
        .await
        .unwrap();
    short.write(Bytes::from(content.clone())).await.unwrap();
    let error = short.finish().await.unwrap_err();
    assert_eq!(error.reason(), "DVCRSizeMismatch", "{error}");
    assert!(!error.is_transient());

    // More bytes than declared.
    let mut long = dvcr
        .start_disk_layer(&repository, "a.img", content.len() as u64 - 1)
        .await
        .unwrap();
    let error = long.write(Bytes::from(content.clone())).await.unwrap_err();
    assert_eq!(error.reason(), "DVCRSizeMismatch", "{error}");
    let error = long.finish().await.unwrap_err();
    assert_eq!(error.reason(), "DVCRSizeMismatch", "{error}");

    // More bytes over several writes.
    let mut long = dvcr
        .start_disk_layer(&repository, "a.img", 5000)
        .await
        .unwrap();
    long.write(Bytes::copy_from_slice(&content[..4000]))
        .await
        .unwrap();
    assert!(
        long.write(Bytes::copy_from_slice(&content[4000..8000]))
            .await
            .is_err()
    );
    assert!(long.finish().await.is_err());

    assert_eq!(dvcr.manifest_digest(&repository, &tag).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_image_removes_it() {
    let env = testenv();
    let dvcr = dvcr(env);
    let dir = tempfile::tempdir().unwrap();
    let repository = unique_repository("delete");
    let tag = tag();
    let content = random_bytes(50_000);
    let layer = upload(&dvcr, &repository, "a.img", &content).await;
    dvcr.tag_image(&repository, &tag, &layer, &labels_for(&content, 0, "raw"))
        .await
        .unwrap();
    let image = dvcr.image_url(&repository, &tag);
    assert!(
        skopeo(env, dir.path(), &["inspect"], &image)
            .status
            .success()
    );

    assert!(dvcr.delete_image(&repository, &tag).await.unwrap());
    assert_eq!(dvcr.manifest_digest(&repository, &tag).await.unwrap(), None);
    assert!(
        !skopeo(env, dir.path(), &["inspect"], &image)
            .status
            .success()
    );
    let error = dvcr.read_image(&repository, &tag).await.unwrap_err();
    assert_eq!(error.reason(), "DVCRImageNotFound", "{error}");

    // Deleting again, or something never pushed, is not an error.
    assert!(!dvcr.delete_image(&repository, &tag).await.unwrap());
    assert!(
        !dvcr
            .delete_image(&unique_repository("never"), &tag)
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_one_of_two_identical_images_keeps_the_other() {
    let env = testenv();
    let dvcr = dvcr(env);
    let repository = unique_repository("delete-shared");
    let (old, new) = (tag(), tag());
    let content = random_bytes(20_000);
    let layer = upload(&dvcr, &repository, "a.img", &content).await;
    let labels = labels_for(&content, 0, "raw");
    let a = dvcr
        .tag_image(&repository, &old, &layer, &labels)
        .await
        .unwrap();
    let b = dvcr
        .tag_image(&repository, &new, &layer, &labels)
        .await
        .unwrap();
    assert_eq!(a, b, "same layer and labels give the same manifest");

    assert!(dvcr.delete_image(&repository, &old).await.unwrap());
    assert_eq!(dvcr.manifest_digest(&repository, &old).await.unwrap(), None);
    assert_eq!(
        dvcr.manifest_digest(&repository, &new).await.unwrap(),
        Some(b)
    );
    assert!(dvcr.delete_image(&repository, &new).await.unwrap());
    assert_eq!(dvcr.manifest_digest(&repository, &new).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_with_auth_failed_and_does_not_leak() {
    let env = testenv();
    let password = format!("wrong-{}", unique());
    let dvcr = Dvcr::new(DvcrConfig {
        password: Some(password.clone()),
        ..config(env)
    })
    .unwrap();
    let repository = unique_repository("auth");

    let error = dvcr
        .start_disk_layer(&repository, "a.img", 10)
        .await
        .unwrap_err();
    let errors = vec![
        error,
        dvcr.manifest_digest(&repository, "t").await.unwrap_err(),
        dvcr.tag_image(
            &repository,
            "t",
            &StoredLayer {
                digest: format!("sha256:{}", "0".repeat(64)),
                size: 2048,
            },
            &labels_for(b"", 0, "raw"),
        )
        .await
        .unwrap_err(),
        dvcr.delete_image(&repository, "t").await.unwrap_err(),
        dvcr.read_image(&repository, "t").await.unwrap_err(),
    ];
    for error in errors {
        assert_eq!(error.reason(), "DVCRAuthFailed", "{error:?}");
        assert!(!error.is_transient());
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains(&password), "{shown}");
        assert!(!shown.contains(env.var("DVCR_PASSWORD")), "{shown}");
    }
    let shown = format!("{:?} {dvcr:?}", config(env));
    assert!(!shown.contains(env.var("DVCR_PASSWORD")), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_untrusted_registry_is_unavailable() {
    let env = testenv();
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener);
    let dvcr = Dvcr::new(DvcrConfig {
        registry: closed.to_string(),
        ..config(env)
    })
    .unwrap();
    let error = dvcr
        .start_disk_layer("itest/unreachable", "a.img", 1)
        .await
        .unwrap_err();
    assert_eq!(error.reason(), "DVCRUnavailable", "{error}");
    assert!(error.is_transient());

    // The real registry, but trusting another CA only.
    let other_ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dvcr = Dvcr::new(DvcrConfig {
        ca_pem: Some(other_ca.cert.pem().into_bytes()),
        ..config(env)
    })
    .unwrap();
    let error = dvcr
        .start_disk_layer("itest/untrusted", "a.img", 1)
        .await
        .unwrap_err();
    assert_eq!(error.reason(), "DVCRUnavailable", "{error}");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );
}

/// HEAD /v2/<repository>/blobs/<digest> with curl: 200 when the blob is there.
fn blob_status(env: &TestEnv, repository: &str, digest: &str) -> String {
    let output = run(Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-I",
        ])
        .arg("--cacert")
        .arg(env.var("DVCR_CA_FILE"))
        .arg("-u")
        .arg(format!(
            "{}:{}",
            env.var("DVCR_USERNAME"),
            env.var("DVCR_PASSWORD")
        ))
        .arg(format!(
            "https://{}/v2/{repository}/blobs/{digest}",
            env.dvcr_registry()
        )));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_blob_shares_a_layer_between_repositories() {
    let env = testenv();
    let dvcr = dvcr(env);
    let from = unique_repository("mount-from");
    let to = unique_repository("mount-to");
    let content = random_bytes(300_000);
    let layer = upload(&dvcr, &from, "a.img", &content).await;
    assert_eq!(blob_status(env, &from, &layer.digest), "200");
    assert_eq!(blob_status(env, &to, &layer.digest), "404");
    assert!(!dvcr.blob_exists(&to, &layer.digest).await.unwrap());

    assert!(dvcr.mount_blob(&from, &to, &layer.digest).await.unwrap());
    assert_eq!(blob_status(env, &to, &layer.digest), "200");
    assert!(dvcr.blob_exists(&to, &layer.digest).await.unwrap());

    // A copy is a mount plus a tag: the image reads back the same in the second repository.
    let tag = tag();
    let labels = labels_for(&content, 0, "raw");
    dvcr.tag_image(&to, &tag, &layer, &labels).await.unwrap();
    let read = dvcr.read_image(&to, &tag).await.unwrap();
    assert_eq!(read.layer, layer);
    assert_eq!(read.image_labels().unwrap(), labels);

    // A blob the source does not have: the registry declines.
    let unknown = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(unique().as_bytes()))
    );
    assert!(!dvcr.mount_blob(&from, &to, &unknown).await.unwrap());
}
