//! The ContainerImage source against real registries: Debian's docker-registry with TLS (public
//! or htpasswd-protected), images built as OCI layouts and pushed with skopeo, real qcow2 and
//! ISO files. What comes out through `ByteSource` must be the file, byte for byte; failures
//! must carry the reason the controller shows.

mod common;

use common::assert_no_secret;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::file_server::TestCa;
use common::source_registry::SourceRegistry;
use image_catalog::dvcr::{Dvcr, DvcrConfig};
use image_catalog::import::inspect::InspectLimits;
use image_catalog::import::pipeline::{
    self, ByteSource, ImportRequest, LiveProgress, PipelineSettings,
};
use image_catalog::import::source::SourceError;
use image_catalog::import::source::container_image::{ContainerDisk, RegistryCredentials};
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;

struct Read {
    sha256: String,
    len: u64,
    file_name: String,
    content_length: Option<u64>,
}

/// Reads the whole source through the pipeline's interface; on failure, also returns the
/// bytes delivered before it.
async fn read_all(mut source: impl ByteSource) -> Result<Read, (SourceError, u64, String)> {
    let file_name = source.file_name();
    let content_length = source.content_length();
    let mut hasher = sha2::Sha256::new();
    let mut len = 0u64;
    loop {
        match source.next_chunk().await {
            Ok(Some(chunk)) => {
                assert!(!chunk.is_empty(), "no empty chunks");
                len += chunk.len() as u64;
                hasher.update(&chunk);
            }
            Ok(None) => break,
            Err(error) => {
                // Errors are sticky.
                assert_eq!(source.next_chunk().await.unwrap_err(), error);
                return Err((error, len, hex::encode(hasher.finalize())));
            }
        }
    }
    assert_eq!(
        source.next_chunk().await.unwrap(),
        None,
        "the end is sticky"
    );
    Ok(Read {
        sha256: hex::encode(hasher.finalize()),
        len,
        file_name,
        content_length,
    })
}

fn sha256_of(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("command runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A qcow2 with data in it: a patterned raw file of `mib` MiB converted by qemu-img.
fn make_qcow2(dir: &Path, name: &str, mib: usize) -> PathBuf {
    let raw = dir.join(format!("{name}.raw"));
    let mut data = vec![0u8; mib << 20];
    // Every other MiB holds data, the rest stays zero, so qcow2 allocates some clusters.
    for (i, byte) in data.iter_mut().enumerate() {
        if (i >> 20) % 2 == 0 {
            *byte = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
        }
    }
    std::fs::write(&raw, data).unwrap();
    let qcow2 = dir.join(name);
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    std::fs::remove_file(raw).unwrap();
    qcow2
}

/// An empty qcow2 of a larger virtual size (qemu-img create).
fn make_sparse_qcow2(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg("256M"));
    path
}

fn qemu_info(path: &Path) -> (String, u64) {
    let json = run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path));
    let info: serde_json::Value = serde_json::from_str(&json).unwrap();
    (
        info["format"].as_str().unwrap().to_string(),
        info["virtual-size"].as_u64().unwrap(),
    )
}

fn credentials_of(registry: &SourceRegistry) -> Option<RegistryCredentials> {
    registry
        .credentials()
        .map(|(username, password)| RegistryCredentials { username, password })
}

/// The manifest as the registry stores it (to check what the harness pushed).
fn layer_media_type(registry: &SourceRegistry, image: &str) -> String {
    let certs = tempfile::tempdir().unwrap();
    std::fs::write(certs.path().join("ca.crt"), registry.ca_pem()).unwrap();
    let mut command = Command::new("skopeo");
    command
        .args(["inspect", "--raw", "--cert-dir"])
        .arg(certs.path());
    if let Some((user, password)) = registry.credentials() {
        command.arg("--creds").arg(format!("{user}:{password}"));
    }
    let raw = run(command.arg(format!("docker://{image}")));
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    manifest["layers"][0]["mediaType"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Opens `image` of `registry`, trusting its CA, under the default egress policy.
async fn open_from(
    registry: &SourceRegistry,
    image: &str,
    credentials: Option<RegistryCredentials>,
) -> ContainerDisk {
    ContainerDisk::open(
        image,
        Some(registry.ca_pem().as_bytes()),
        credentials,
        &Default::default(),
    )
    .await
    .unwrap()
}

async fn open_err(
    image: &str,
    ca: Option<&str>,
    credentials: Option<RegistryCredentials>,
) -> SourceError {
    ContainerDisk::open(
        image,
        ca.map(str::as_bytes),
        credentials,
        &Default::default(),
    )
    .await
    .expect_err("open must fail")
}

#[tokio::test]
async fn public_registry_uncompressed_layer_streams_the_disk() {
    let registry = SourceRegistry::start_public();
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = make_qcow2(dir.path(), "disk.qcow2", 6);
    let image =
        registry.push_container_disk("images/plain:v1", &[("disk/disk.qcow2", &qcow2)], false);
    assert_eq!(
        layer_media_type(&registry, &image),
        "application/vnd.oci.image.layer.v1.tar"
    );

    let source = open_from(&registry, &image, None).await;
    let read = read_all(source)
        .await
        .unwrap_or_else(|(e, ..)| panic!("{e:?}"));
    let size = std::fs::metadata(&qcow2).unwrap().len();
    assert_eq!(read.file_name, "disk.qcow2");
    assert_eq!(read.content_length, Some(size));
    assert_eq!(read.len, size);
    assert_eq!(read.sha256, sha256_of(&qcow2));

    // `./disk/x` counts as well, and other files outside disk/ are skipped.
    let other = dir.path().join("motd");
    std::fs::write(&other, b"hello\n").unwrap();
    let image = registry.push_container_disk(
        "images/dotted:v1",
        &[("etc/motd", &other), ("./disk/dotted.qcow2", &qcow2)],
        false,
    );
    let source = open_from(&registry, &image, None).await;
    let read = read_all(source)
        .await
        .unwrap_or_else(|(e, ..)| panic!("{e:?}"));
    assert_eq!(read.file_name, "dotted.qcow2");
    assert_eq!(read.sha256, sha256_of(&qcow2));
}

#[tokio::test]
async fn private_registry_gzip_layer_with_credentials() {
    let registry = SourceRegistry::start_private();
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = make_qcow2(dir.path(), "private.qcow2", 5);
    let image =
        registry.push_container_disk("vm/private:1.0", &[("disk/private.qcow2", &qcow2)], true);
    assert_eq!(
        layer_media_type(&registry, &image),
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );

    let source = open_from(&registry, &image, credentials_of(&registry)).await;
    let read = read_all(source)
        .await
        .unwrap_or_else(|(e, ..)| panic!("{e:?}"));
    assert_eq!(read.file_name, "private.qcow2");
    assert_eq!(
        read.content_length,
        Some(std::fs::metadata(&qcow2).unwrap().len())
    );
    assert_eq!(read.sha256, sha256_of(&qcow2));

    // An ISO, when the system has one.
    let iso = Path::new("/usr/lib/ipxe/ipxe.iso");
    if iso.exists() {
        let image = registry.push_container_disk("vm/iso:latest", &[("disk/ipxe.iso", iso)], true);
        let source = open_from(&registry, &image, credentials_of(&registry)).await;
        let read = read_all(source)
            .await
            .unwrap_or_else(|(e, ..)| panic!("{e:?}"));
        assert_eq!(read.file_name, "ipxe.iso");
        assert_eq!(read.sha256, sha256_of(iso));
    }
}

#[tokio::test]
async fn private_registry_without_or_with_wrong_credentials_is_access_denied() {
    let registry = SourceRegistry::start_private();
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = make_sparse_qcow2(dir.path(), "secret.qcow2");
    let image = registry.push_container_disk("vm/secret:1", &[("disk/secret.qcow2", &qcow2)], true);
    let (user, password) = registry.credentials().unwrap();
    let ca = registry.ca_pem();

    let error = open_err(&image, Some(ca), None).await;
    assert_eq!(error.reason, "SourceAccessDenied", "{error:?}");
    assert!(error.is_permanent());
    assert!(
        error.message.contains(&registry.host()),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("imagePullSecret"),
        "{}",
        error.message
    );

    let wrong = "wrong-password-4711";
    let error = open_err(
        &image,
        Some(ca),
        Some(RegistryCredentials {
            username: user.clone(),
            password: wrong.to_string(),
        }),
    )
    .await;
    assert_eq!(error.reason, "SourceAccessDenied", "{error:?}");
    assert!(
        error.message.contains("authentication refused by")
            && error.message.contains("check the imagePullSecret"),
        "{}",
        error.message
    );
    assert_no_secret(&error, &[wrong, &password]);

    // An unknown user is refused the same way.
    let error = open_err(
        &image,
        Some(ca),
        Some(RegistryCredentials {
            username: "nobody".into(),
            password: password.clone(),
        }),
    )
    .await;
    assert_eq!(error.reason, "SourceAccessDenied", "{error:?}");
    assert_no_secret(&error, &[&password]);
}

#[tokio::test]
async fn missing_tag_or_repository_is_image_not_found() {
    let registry = SourceRegistry::start_private();
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = make_sparse_qcow2(dir.path(), "d.qcow2");
    let image = registry.push_container_disk("vm/exists:1", &[("disk/d.qcow2", &qcow2)], false);
    let ca = registry.ca_pem();

    for missing in [
        image.replace(":1", ":2"),
        format!("{}/vm/absent:1", registry.host()),
        format!("{}/vm/exists@sha256:{}", registry.host(), "0".repeat(64)),
    ] {
        let error = open_err(&missing, Some(ca), credentials_of(&registry)).await;
        assert_eq!(error.reason, "ImageNotFound", "{missing}: {error:?}");
        assert!(error.is_permanent());
        assert!(
            error.message.contains(&registry.host()),
            "{}",
            error.message
        );
    }
}

#[tokio::test]
async fn image_without_a_file_under_disk_is_refused() {
    let registry = SourceRegistry::start_public();
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = make_sparse_qcow2(dir.path(), "d.qcow2");
    // The disk is in the wrong directory.
    let image = registry.push_container_disk("vm/nodisk:1", &[("images/d.qcow2", &qcow2)], true);

    let error = open_err(&image, Some(registry.ca_pem()), None).await;
    assert_eq!(error.reason, "NoDiskInImage", "{error:?}");
    assert!(error.is_permanent());
    assert!(
        error.message.contains("exactly one file under /disk")
            && error.message.contains("COPY disk.img /disk/disk.img"),
        "{}",
        error.message
    );
}

/// Two files under disk/: the first one streams, and the end of the stream (not its start)
/// fails, because the rest of the image is only read after the first file's last byte.
#[tokio::test]
async fn image_with_two_files_under_disk_fails_at_the_end_of_the_stream() {
    let registry = SourceRegistry::start_public();
    let dir = tempfile::tempdir().unwrap();
    let first = make_qcow2(dir.path(), "first.qcow2", 2);
    let second = make_sparse_qcow2(dir.path(), "second.qcow2");
    for gzip in [false, true] {
        let image = registry.push_container_disk(
            &format!("vm/two:{gzip}"),
            &[("disk/first.qcow2", &first), ("disk/second.qcow2", &second)],
            gzip,
        );
        let source = open_from(&registry, &image, None).await;
        assert_eq!(source.file_name(), "first.qcow2");
        let Err((error, delivered, sha)) = read_all(source).await else {
            panic!("two disks must fail");
        };
        assert_eq!(error.reason, "MultipleDisksInImage", "{error:?}");
        assert!(error.is_permanent());
        assert!(
            error.message.contains("disk/first.qcow2")
                && error.message.contains("disk/second.qcow2"),
            "{}",
            error.message
        );
        // The whole first file came out before the failure.
        assert_eq!(delivered, std::fs::metadata(&first).unwrap().len());
        assert_eq!(sha, sha256_of(&first));
    }
}

#[tokio::test]
async fn untrusted_registry_certificate_is_a_tls_error() {
    let registry = SourceRegistry::start_public();
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = make_sparse_qcow2(dir.path(), "d.qcow2");
    let image = registry.push_container_disk("vm/tls:1", &[("disk/d.qcow2", &qcow2)], false);

    let other_ca = TestCa::generate().cert_pem;
    for ca in [Some(other_ca.as_str()), None] {
        let error = open_err(&image, ca, None).await;
        assert_eq!(error.reason, "SourceTLSError", "{error:?}");
        assert!(error.is_permanent());
        assert!(error.message.contains("caBundle"), "{}", error.message);
    }

    let error = open_err(&image, Some("not a certificate"), None).await;
    assert_eq!(error.reason, "InvalidCABundle", "{error:?}");
}

#[tokio::test]
async fn invalid_references_and_unreachable_registries() {
    let error = open_err("Not A Valid//Reference", None, None).await;
    assert_eq!(error.reason, "InvalidImageReference", "{error:?}");
    assert!(error.is_permanent());

    // Nothing listens there: transient.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = open_err(&format!("127.0.0.1:{port}/vm/x:1"), None, None).await;
    assert_eq!(error.reason, "SourceUnavailable", "{error:?}");
    assert!(error.is_transient());
}

#[tokio::test]
async fn pipeline_stores_the_disk_of_a_container_image_in_dvcr() {
    let env = common::testenv();
    let dvcr = Dvcr::new(DvcrConfig {
        registry: env.dvcr_registry().to_string(),
        username: Some(env.var("DVCR_USERNAME").to_string()),
        password: Some(env.var("DVCR_PASSWORD").to_string()),
        ca_pem: Some(std::fs::read(env.var("DVCR_CA_FILE")).unwrap()),
    })
    .unwrap();
    let registry = SourceRegistry::start_private();
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = make_qcow2(dir.path(), "pipeline.qcow2", 4);
    // A bigger virtual size than data, so the check is not trivially the file size.
    run(Command::new("qemu-img")
        .args(["resize", "-q"])
        .arg(&qcow2)
        .arg("1G"));
    let mut cases = vec![(qcow2, true)];
    let iso = PathBuf::from("/usr/lib/ipxe/ipxe.iso");
    if iso.exists() {
        cases.push((iso, false));
    }

    for (file, gzip) in cases {
        let name = file.file_name().unwrap().to_str().unwrap().to_string();
        let image = registry.push_container_disk(
            "vm/pipeline:1",
            &[(&format!("disk/{name}"), &file)],
            gzip,
        );
        let source = open_from(&registry, &image, credentials_of(&registry)).await;
        let spool = tempfile::tempdir().unwrap();
        let settings = PipelineSettings {
            inspect: InspectLimits::default(),
            spool_dir: spool.path().to_path_buf(),
            spool_budget: image_catalog::import::spool::SpoolBudget::new(1 << 40),
            pace: Default::default(),
        };
        let unique = format!(
            "{:x}{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
            std::process::id()
        );
        let request = ImportRequest {
            repository: format!("cvi/container-image-test-{unique}"),
            tag: "v1".to_string(),
            checksum: None,
            checkpointing: None,
        };
        let stored = pipeline::store(
            &dvcr,
            &settings,
            &request,
            source,
            &LiveProgress::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));

        let (format, virtual_size) = qemu_info(&file);
        let expected_format = if format == "raw" && name.ends_with(".iso") {
            "iso".to_string()
        } else {
            format
        };
        assert_eq!(stored.info.format.to_string(), expected_format, "{name}");
        assert_eq!(stored.info.virtual_size, virtual_size, "{name}");
        assert_eq!(stored.stored_size, std::fs::metadata(&file).unwrap().len());
        assert_eq!(stored.digests.sha256, sha256_of(&file));
    }
}
