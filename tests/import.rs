//! End to end: ClusterVirtualImages from HTTP(S) sources and from other images, imported by the real controller
//! binary into the real DVCR, against the real apiserver. Images are real: made by qemu-img,
//! ISO images from Debian packages, compressed with gzip and xz. What is stored is read back
//! with skopeo and compared byte for byte with the source.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::cvi::{self, phase};
use common::daemon::{Daemon, Ports};
use common::file_server::{Behavior, FileServer};
use common::stored::{dvcr_has, read_back};
use common::{TestEnv, curl_upload, testenv, wait_for};
use serde_json::Value;
use sha2::{Digest, Sha256};

const SUITE: &str = "import";
/// Short, so the test of the timeout does not wait long; the other upload tests upload at once.
const UPLOAD_TIMEOUT: u64 = 20;
/// The namespaces whose imagePullSecrets the suite's daemon may read.
const PULL_SECRET_NAMESPACES: &str = "registry-secrets,late-secrets";

struct World {
    env: &'static TestEnv,
    metrics_port: u16,
    images: PathBuf,
    http: FileServer,
    https: FileServer,
    _controller: Daemon,
    dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let env = testenv();
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        make_images(&images);
        let http = FileServer::start(&images);
        let https = FileServer::start_https(&images);
        let metrics_port = common::free_port();
        let controller = start_controller(
            env,
            dir.path(),
            SUITE,
            metrics_port,
            &format!("--pull-secret-namespace {PULL_SECRET_NAMESPACES}"),
        );
        World {
            env,
            metrics_port,
            images,
            http,
            https,
            _controller: controller,
            dir,
        }
    })
}

/// Runs the daemon as the ServiceAccount of deploy/rbac.yaml (the shipped roles must
/// suffice), for the images labelled with `suite`, with `extra` flags, on a Lease of its own.
fn start_controller(env: &TestEnv, dir: &Path, suite: &str, port: u16, extra: &str) -> Daemon {
    let ports = Ports {
        metrics: port,
        upload: common::free_port(),
    };
    let flags = format!(
        "--max-concurrent-imports 6 --max-import-attempts 2 \
         --upload-timeout-seconds {UPLOAD_TIMEOUT} --leader-election-lease {lease} {extra}",
        lease = common::unique_lease(suite),
    );
    Daemon::launch(
        env,
        dir,
        suite,
        ports,
        &format!("controller-{suite}"),
        &flags,
    )
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn write_random(path: &Path, random: usize, zeros: usize) {
    let mut bytes = vec![0u8; random + zeros];
    let mut state = 0x9e3779b97f4a7c15u64;
    for byte in &mut bytes[..random] {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    std::fs::write(path, bytes).unwrap();
}

/// Real images: qemu-img formats from one raw disk, ISO images from Debian packages, and
/// compressed variants (some named without an extension: detection is by content).
fn make_images(dir: &Path) {
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    write_random(&dir.join("disk.raw"), 3 << 20, 5 << 20);
    for (format, name) in [
        ("qcow2", "disk.qcow2"),
        ("vmdk", "disk.vmdk"),
        ("vdi", "disk.vdi"),
    ] {
        run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                format,
                &p("disk.raw"),
                &p(name),
            ],
        );
    }
    for (iso, name) in [
        (
            "/usr/lib/grub-rescue/grub-rescue-cdrom.iso",
            "grub-rescue-cdrom.iso",
        ),
        ("/usr/lib/ipxe/ipxe.iso", "ipxe.iso"),
    ] {
        std::fs::copy(iso, dir.join(name))
            .unwrap_or_else(|e| panic!("{iso} (Debian packages grub-rescue-pc, ipxe): {e}"));
    }
    let compress = |tool: &str, from: &str, to: &str| {
        let output = Command::new(tool).args(["-c", &p(from)]).output().unwrap();
        assert!(output.status.success());
        std::fs::write(dir.join(to), output.stdout).unwrap();
    };
    compress("gzip", "disk.qcow2", "disk.qcow2.gz");
    compress("xz", "disk.raw", "disk.raw.xz");
    compress("gzip", "ipxe.iso", "ipxe-iso-gzip-without-extension");
    compress("xz", "disk.vmdk", "disk.vmdk.xz");
    compress("gzip", "disk.raw", "disk.raw.gz");

    run(
        "qemu-img",
        &["create", "-f", "qcow2", &p("base.qcow2"), "16M"],
    );
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            &p("overlay.qcow2"),
        ],
    );
    let xz = std::fs::read(dir.join("disk.raw.xz")).unwrap();
    std::fs::write(dir.join("truncated.raw.xz"), &xz[..xz.len() / 2]).unwrap();
    // Damaged after the header told the size: `head -c` of a real compressed qcow2, and a
    // gzip whose tail is garbage.
    compress("xz", "disk.qcow2", "disk.qcow2.xz");
    let qcow2_xz = std::fs::read(dir.join("disk.qcow2.xz")).unwrap();
    std::fs::write(
        dir.join("cut.qcow2.xz"),
        &qcow2_xz[..qcow2_xz.len() * 3 / 4],
    )
    .unwrap();
    let mut qcow2_gz = std::fs::read(dir.join("disk.qcow2.gz")).unwrap();
    let half = qcow2_gz.len() / 2;
    qcow2_gz[half..].fill(0x55);
    std::fs::write(dir.join("garbage-tail.qcow2.gz"), &qcow2_gz).unwrap();
    write_random(&dir.join("cut.raw"), 16 << 20, 0);
    write_random(&dir.join("slow.raw"), 4 << 20, 0);
    write_random(&dir.join("other.raw"), 1 << 20, 0);
}

/// What `qemu-img info` says of a file: (format, virtual size).
fn qemu_img_info(path: &Path) -> (String, u64) {
    let output = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&output.stdout).unwrap();
    (
        info["format"].as_str().unwrap().to_string(),
        info["virtual-size"].as_u64().unwrap(),
    )
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn create(env: &TestEnv, name: &str, http: Value) {
    create_from(env, name, serde_json::json!({"type": "HTTP", "http": http}));
}

fn create_from(env: &TestEnv, name: &str, data_source: Value) {
    cvi::recreate(env, &cvi::manifest(SUITE, name, data_source));
}

fn get(env: &TestEnv, name: &str) -> Option<Value> {
    cvi::get(env, name)
}

/// Waits until the image is Ready or Failed and returns it.
fn settled(env: &TestEnv, name: &str) -> Value {
    wait_for(
        &format!("{name} to be Ready or Failed"),
        Duration::from_secs(180),
        || get(env, name).filter(|cvi| matches!(phase(cvi), "Ready" | "Failed")),
    )
}

fn ready_condition(cvi: &Value) -> (String, String) {
    let condition = condition(cvi, "Ready");
    (
        condition["reason"].as_str().unwrap_or("").to_string(),
        condition["message"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn every_format_becomes_ready_with_what_qemu_img_sees_and_identical_bytes_in_dvcr() {
    let world = world();
    let env = world.env;
    // (file, expected format, cdrom, the uncompressed original for qemu-img, over https)
    let cases: [(&str, &str, bool, &str, bool); 11] = [
        ("disk.qcow2", "qcow2", false, "disk.qcow2", false),
        ("disk.vmdk", "vmdk", false, "disk.vmdk", true),
        ("disk.vdi", "vdi", false, "disk.vdi", false),
        ("disk.raw", "raw", false, "disk.raw", true),
        (
            "grub-rescue-cdrom.iso",
            "iso",
            true,
            "grub-rescue-cdrom.iso",
            false,
        ),
        ("ipxe.iso", "iso", true, "ipxe.iso", true),
        ("disk.qcow2.gz", "qcow2", false, "disk.qcow2", false),
        ("disk.raw.xz", "raw", false, "disk.raw", true),
        (
            "ipxe-iso-gzip-without-extension",
            "iso",
            true,
            "ipxe.iso",
            false,
        ),
        ("disk.vmdk.xz", "vmdk", false, "disk.vmdk", false),
        ("disk.raw.gz", "raw", false, "disk.raw", false),
    ];
    let name_of = |file: &str| format!("fmt-{}", file.replace(['.', '_'], "-"));
    for (file, _, _, _, https) in cases {
        let mut http = serde_json::json!({"url": if https { world.https.url(file) } else { world.http.url(file) }});
        if https {
            http["caBundle"] = world.https.ca_bundle_base64().unwrap().into();
        }
        if file == "disk.raw" {
            http["checksum"] = serde_json::json!({
                "sha256": sha256_file(&world.images.join(file)).to_uppercase(),
                "md5": hex::encode(md5::Md5::digest(std::fs::read(world.images.join(file)).unwrap())),
            });
        }
        create(env, &name_of(file), http);
    }
    for (file, format, cdrom, original, _) in cases {
        let name = name_of(file);
        let cvi = settled(env, &name);
        assert_eq!(phase(&cvi), "Ready", "{file}: {:?}", ready_condition(&cvi));
        let status = &cvi["status"];
        assert_eq!(status["format"], format, "{file}");
        assert_eq!(status["cdrom"], cdrom, "{file}");
        assert_eq!(status["progress"], "100%", "{file}");
        let (qemu_format, virtual_size) = qemu_img_info(&world.images.join(original));
        let expected_size = if format == "iso" || format == "raw" {
            assert_eq!(qemu_format, "raw");
            std::fs::metadata(world.images.join(original))
                .unwrap()
                .len()
        } else {
            assert_eq!(qemu_format, format);
            virtual_size
        };
        assert_eq!(
            status["size"]["unpackedBytes"],
            expected_size.to_string(),
            "{file}"
        );
        let stored = std::fs::metadata(world.images.join(file)).unwrap().len();
        assert_eq!(status["size"]["storedBytes"], stored.to_string(), "{file}");

        let uid = cvi["metadata"]["uid"].as_str().unwrap();
        let reference = format!("{}/cvi/{name}:{uid}", env.dvcr_registry());
        assert_eq!(status["target"]["registryURL"], reference);
        let (stored_name, sha256, labels) = read_back(env, &reference);
        assert_eq!(stored_name, file, "the file keeps its name");
        assert_eq!(
            sha256,
            sha256_file(&world.images.join(file)),
            "{file}: DVCR holds the bytes as received"
        );
        assert_eq!(labels["source-image-format"], format);
        assert_eq!(
            labels["source-image-virtual-size"],
            expected_size.to_string()
        );
        assert_eq!(labels["source-image-size"], stored.to_string());
    }
}

fn expect_failure(name: &str, http: Value, reason: &str) -> Value {
    let world = world();
    create(world.env, name, http);
    let cvi = settled(world.env, name);
    assert_eq!(phase(&cvi), "Failed", "{name}");
    let (actual, message) = ready_condition(&cvi);
    assert_eq!(actual, reason, "{name}: {message}");
    let uid = cvi["metadata"]["uid"].as_str().unwrap();
    assert!(
        !dvcr_has(
            world.env,
            &format!("{}/cvi/{name}:{uid}", world.env.dvcr_registry())
        ),
        "{name}: a failed import leaves no tagged image"
    );
    cvi
}

#[test]
fn a_checksum_mismatch_fails_for_good_and_tags_nothing() {
    let world = world();
    let cvi = expect_failure(
        "checksum-mismatch",
        serde_json::json!({"url": world.http.url("disk.qcow2"), "checksum": {"sha256": "0".repeat(64)}}),
        "ChecksumMismatch",
    );
    assert!(ready_condition(&cvi).1.contains("sha256"));
    assert_eq!(world.http.requests("/disk.qcow2").min(1), 1);
}

#[test]
fn a_missing_file_fails_with_source_not_found() {
    let world = world();
    let cvi = expect_failure(
        "not-found",
        serde_json::json!({"url": world.http.url("no-such.qcow2")}),
        "SourceNotFound",
    );
    let datasource = cvi["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "DatasourceReady")
        .cloned()
        .unwrap();
    assert_eq!(datasource["status"], "False");
}

#[test]
fn https_with_the_wrong_ca_fails_with_a_tls_reason() {
    let world = world();
    let other = FileServer::start_https(&world.images);
    expect_failure(
        "wrong-ca",
        serde_json::json!({"url": world.https.url("disk.qcow2"), "caBundle": other.ca_bundle_base64().unwrap()}),
        "SourceTLSError",
    );
}

#[test]
fn a_qcow2_with_a_backing_file_is_refused() {
    let world = world();
    let cvi = expect_failure(
        "backing-file",
        serde_json::json!({"url": world.http.url("overlay.qcow2")}),
        "UnsafeImage",
    );
    assert!(
        ready_condition(&cvi).1.contains("backing"),
        "{:?}",
        ready_condition(&cvi)
    );
}

#[test]
fn a_truncated_xz_fails() {
    let world = world();
    expect_failure(
        "truncated-xz",
        serde_json::json!({"url": world.http.url("truncated.raw.xz")}),
        "CorruptImage",
    );
}

#[test]
fn a_compressed_image_damaged_after_its_header_fails_even_with_its_own_checksums() {
    let world = world();
    for (name, file) in [
        ("cut-qcow2-xz", "cut.qcow2.xz"),
        ("garbage-tail-qcow2-gz", "garbage-tail.qcow2.gz"),
    ] {
        // The checksums of the damaged file itself, as a user copying them from it would.
        let sha256 = sha256_file(&world.images.join(file));
        let cvi = expect_failure(
            name,
            serde_json::json!({"url": world.http.url(file), "checksum": {"sha256": sha256}}),
            "CorruptImage",
        );
        let message = ready_condition(&cvi).1;
        assert!(
            message.contains("ended early") || message.contains("corrupt"),
            "{name}: {message}"
        );
    }
}

#[test]
fn a_source_that_drips_a_byte_at_a_time_is_dropped_at_the_end_of_its_window() {
    let world = world();
    const PACED: &str = "import-pace";
    let dir = tempfile::tempdir().unwrap();
    // A window of 3 s, so the test does not wait a minute; 64 KiB must arrive in each.
    let _controller = start_controller(
        world.env,
        dir.path(),
        PACED,
        common::free_port(),
        "--source-window-seconds 3 --source-min-kib-per-window 64",
    );
    let server = FileServer::start(&world.images);
    // One byte every 2 s after the first MiB: never idle for the read timeout (30 s).
    server.set_behavior(
        "/slow.raw",
        Behavior::default().drip_after(1 << 20, Duration::from_secs(2)),
    );
    let name = "drip-feed";
    cvi::recreate(
        world.env,
        &cvi::manifest(
            PACED,
            name,
            serde_json::json!({"type": "HTTP", "http": {"url": server.url("slow.raw")}}),
        ),
    );
    let cvi = settled(world.env, name);
    assert_eq!(phase(&cvi), "Failed");
    let (reason, message) = ready_condition(&cvi);
    assert_eq!(reason, "SourceTooSlow", "{message}");
    assert!(message.contains("in the last 3 s"), "{message}");
    assert!(
        !dvcr_has(
            world.env,
            &format!(
                "{}/cvi/{name}:{}",
                world.env.dvcr_registry(),
                cvi["metadata"]["uid"].as_str().unwrap()
            )
        ),
        "nothing tagged"
    );
}

#[test]
fn the_spool_is_swept_at_start_and_a_download_larger_than_it_fails_without_filling_it() {
    let world = world();
    const SPOOLED: &str = "import-spool";
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    // Left by a daemon that was killed: its process is gone. And a file that is not ours.
    let left = spool.join("image-catalog-spool-4294967294-1-abc123");
    let foreign = spool.join("keep-me");
    std::fs::write(&left, vec![7u8; 1 << 20]).unwrap();
    std::fs::write(&foreign, b"not the daemon's").unwrap();
    let _controller = start_controller(
        world.env,
        dir.path(),
        SPOOLED,
        common::free_port(),
        &format!("--spool-dir '{}' --spool-size 4Mi", spool.display()),
    );
    wait_for(
        "the left spool file to be swept",
        Duration::from_secs(60),
        || (!left.exists()).then_some(()),
    );
    assert!(foreign.exists(), "files not named by the daemon stay");

    // No Content-Length: the bytes go to the spool until the size is known, and 8 MiB is
    // more than 4Mi's fifteen sixteenths.
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    write_random(&served.join("big.raw"), 8 << 20, 0);
    let server = FileServer::start(&served);
    server.set_behavior("/big.raw", Behavior::default().chunked());
    let name = "larger-than-the-spool";
    cvi::recreate(
        world.env,
        &cvi::manifest(
            SPOOLED,
            name,
            serde_json::json!({"type": "HTTP", "http": {"url": server.url("big.raw")}}),
        ),
    );
    let cvi = settled(world.env, name);
    assert_eq!(phase(&cvi), "Failed");
    let (reason, message) = ready_condition(&cvi);
    assert_eq!(reason, "SpoolTooSmall", "{message}");
    assert!(message.contains("--spool-size"), "{message}");
    let spooled: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .filter(|name| name != "keep-me")
        .collect();
    assert!(
        spooled.is_empty(),
        "the spool file went with the import: {spooled:?}"
    );
}

#[test]
fn a_source_the_egress_policy_refuses_fails_with_the_reason_and_the_flag_that_opens_it() {
    let world = world();
    const FENCED: &str = "import-egress";
    let dir = tempfile::tempdir().unwrap();
    let _controller = start_controller(
        world.env,
        dir.path(),
        FENCED,
        common::free_port(),
        "--source-deny 127.0.0.2/32",
    );
    // On loopback, yet denied: a CVI must not be able to name it.
    let server = FileServer::start_on(&world.images, "127.0.0.2");
    let name = "egress-refused";
    cvi::recreate(
        world.env,
        &cvi::manifest(
            FENCED,
            name,
            serde_json::json!({"type": "HTTP", "http": {"url": server.url("disk.raw?token=t0ps3cret")}}),
        ),
    );
    let cvi = settled(world.env, name);
    assert_eq!(phase(&cvi), "Failed");
    let (reason, message) = ready_condition(&cvi);
    assert_eq!(reason, "SourceRefusedByPolicy", "{message}");
    assert!(
        message.contains("127.0.0.2 (a loopback address)")
            && message.contains("--source-deny 127.0.0.2/32")
            && message.contains("--source-allow 127.0.0.2/32"),
        "{message}"
    );
    assert!(
        !cvi["status"].to_string().contains("t0ps3cret"),
        "no query string in the status"
    );
    assert_eq!(server.connections(), 0, "refused before connecting");

    // A registry is checked the same way, on every connection its client opens (the
    // registry's, and any blob storage it redirects to).
    use common::source_registry::SourceRegistry;
    let registry = SourceRegistry::start_public_on("127.0.0.2");
    let image = registry.push_container_disk(
        "fenced/disk:1",
        &[("disk/disk.qcow2", &world.images.join("disk.qcow2"))],
        false,
    );
    let name = "egress-refused-registry";
    cvi::recreate(
        world.env,
        &cvi::manifest(
            FENCED,
            name,
            container_image_source(&image, &registry.ca_bundle_base64(), None),
        ),
    );
    let cvi = settled(world.env, name);
    assert_eq!(phase(&cvi), "Failed");
    let (reason, message) = ready_condition(&cvi);
    assert_eq!(reason, "SourceRefusedByPolicy", "{message}");
    assert!(
        message.contains("127.0.0.2") && message.contains("--source-allow 127.0.0.2/32"),
        "{message}"
    );
}

#[test]
fn a_connection_cut_mid_file_resumes_without_fetching_the_file_twice() {
    let world = world();
    world
        .http
        .set_behavior("/cut.raw", Behavior::default().cut_after(5 << 20, 2));
    create(
        world.env,
        "cut-mid-file",
        serde_json::json!({"url": world.http.url("cut.raw")}),
    );
    let cvi = settled(world.env, "cut-mid-file");
    assert_eq!(phase(&cvi), "Ready", "{:?}", ready_condition(&cvi));
    let size = std::fs::metadata(world.images.join("cut.raw"))
        .unwrap()
        .len();
    let sent = world.http.bytes_sent("/cut.raw");
    assert!(
        sent as f64 <= size as f64 * 1.1,
        "fetched {sent} bytes of a {size}-byte file"
    );
    assert!(
        world.http.stats("/cut.raw").range_requests >= 2,
        "resumed with Range requests"
    );
    let uid = cvi["metadata"]["uid"].as_str().unwrap();
    let (_, sha256, _) = read_back(
        world.env,
        &format!("{}/cvi/cut-mid-file:{uid}", world.env.dvcr_registry()),
    );
    assert_eq!(sha256, sha256_file(&world.images.join("cut.raw")));
}

#[test]
fn a_spec_change_while_provisioning_restarts_the_import_with_the_new_source() {
    let world = world();
    let env = world.env;
    world.http.set_behavior(
        "/slow.raw",
        Behavior::default().stall_after(1 << 20, u64::MAX),
    );
    create(
        env,
        "restart-on-change",
        serde_json::json!({"url": world.http.url("slow.raw")}),
    );
    wait_for(
        "the stalled import to show progress",
        Duration::from_secs(60),
        || {
            get(env, "restart-on-change").filter(|cvi| {
                phase(cvi) == "Provisioning"
                    && cvi["status"]["progress"]
                        .as_str()
                        .is_some_and(|p| p != "0.0%")
            })
        },
    );
    let patch =
        serde_json::json!({"spec": {"dataSource": {"http": {"url": world.http.url("other.raw")}}}})
            .to_string();
    env.kubectl_ok(&[
        "patch",
        "cvi",
        "restart-on-change",
        "--type=merge",
        "-p",
        &patch,
    ]);
    let cvi = settled(env, "restart-on-change");
    assert_eq!(phase(&cvi), "Ready", "{:?}", ready_condition(&cvi));
    assert_eq!(
        cvi["status"]["observedGeneration"],
        cvi["metadata"]["generation"]
    );
    let uid = cvi["metadata"]["uid"].as_str().unwrap();
    let (name, sha256, _) = read_back(
        env,
        &format!("{}/cvi/restart-on-change:{uid}", env.dvcr_registry()),
    );
    assert_eq!(name, "other.raw");
    assert_eq!(sha256, sha256_file(&world.images.join("other.raw")));
}

#[test]
fn the_spec_of_a_ready_image_is_frozen_while_its_metadata_stays_editable() {
    let world = world();
    let env = world.env;
    create(
        env,
        "frozen-when-ready",
        serde_json::json!({"url": world.http.url("disk.vdi")}),
    );
    assert_eq!(phase(&settled(env, "frozen-when-ready")), "Ready");
    let patch =
        serde_json::json!({"spec": {"dataSource": {"http": {"url": world.http.url("disk.vmdk")}}}})
            .to_string();
    let output = env
        .kubectl()
        .args([
            "patch",
            "cvi",
            "frozen-when-ready",
            "--type=merge",
            "-p",
            &patch,
        ])
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "a spec change of a Ready image is refused"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot change once it is Ready"),
        "{stderr}"
    );
    env.kubectl_ok(&["label", "cvi", "frozen-when-ready", "team=platform"]);
    env.kubectl_ok(&["annotate", "cvi", "frozen-when-ready", "note=kept"]);
}

#[test]
fn deleting_an_image_removes_it_from_dvcr_before_the_resource_goes() {
    let world = world();
    let env = world.env;
    create(
        env,
        "deleted-image",
        serde_json::json!({"url": world.http.url("disk.qcow2")}),
    );
    let cvi = settled(env, "deleted-image");
    assert_eq!(phase(&cvi), "Ready");
    let reference = cvi["status"]["target"]["registryURL"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(dvcr_has(env, &reference));
    assert!(
        cvi["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty()),
        "a finalizer guards the stored image"
    );
    env.kubectl_ok(&[
        "delete",
        "cvi",
        "deleted-image",
        "--wait=true",
        "--timeout=60s",
    ]);
    assert!(get(env, "deleted-image").is_none());
    assert!(!dvcr_has(env, &reference), "the manifest is gone from DVCR");
}

fn metrics(port: u16) -> String {
    let output = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .unwrap();
    assert!(output.status.success(), "GET /metrics");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn metrics_count_imports_and_failures_by_reason_and_the_daemon_reports_ready() {
    let world = world();
    create(
        world.env,
        "metrics-ok",
        serde_json::json!({"url": world.http.url("disk.vdi")}),
    );
    expect_failure(
        "metrics-404",
        serde_json::json!({"url": world.http.url("missing-for-metrics.img")}),
        "SourceNotFound",
    );
    assert_eq!(phase(&settled(world.env, "metrics-ok")), "Ready");
    let text = metrics(world.metrics_port);
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|line| line.starts_with(line_start))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{line_start} missing from:\n{text}"))
    };
    assert!(
        value(r#"image_catalog_imports_total{source="HTTP",outcome="succeeded",reason="Ready"}"#)
            >= 1.0
    );
    assert!(
        value(
            r#"image_catalog_imports_total{source="HTTP",outcome="failed",reason="SourceNotFound"}"#
        ) >= 1.0
    );
    assert!(value(r#"image_catalog_imported_bytes_total{source="HTTP"}"#) >= 1.0);
    assert!(value(r#"image_catalog_import_duration_seconds_count{source="HTTP"}"#) >= 1.0);
    assert!(text.contains("image_catalog_imports_in_flight"));
    let ready = Command::new("curl")
        .args([
            "-sf",
            &format!("http://127.0.0.1:{}/readyz", world.metrics_port),
        ])
        .output()
        .unwrap();
    assert!(
        ready.status.success(),
        "the daemon reports ready once it watches its images"
    );
}

#[test]
fn a_failure_is_announced_as_a_warning_event_on_the_image() {
    let world = world();
    expect_failure(
        "event-on-failure",
        serde_json::json!({"url": world.http.url("disk.qcow2"), "checksum": {"md5": "0".repeat(32)}}),
        "ChecksumMismatch",
    );
    let events = wait_for("the warning event", Duration::from_secs(30), || {
        let text = world.env.kubectl_ok(&[
            "get",
            "events.events.k8s.io",
            "-A",
            "--field-selector",
            "regarding.name=event-on-failure",
            "-o",
            "json",
        ]);
        let events: Value = serde_json::from_str(&text).unwrap();
        let items = events["items"].as_array().cloned().unwrap_or_default();
        (!items.is_empty()).then_some(items)
    });
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "Warning" && e["reason"] == "ChecksumMismatch"),
        "{events:?}"
    );
    // The daemon's log says which image the failure is about, in plain text.
    let log_path = world.dir.path().join(format!("controller-{SUITE}.log"));
    let line = wait_for("the failure in the log", Duration::from_secs(30), || {
        std::fs::read_to_string(&log_path)
            .ok()?
            .lines()
            .find(|line| line.contains("import failed") && line.contains("event-on-failure"))
            .map(str::to_string)
    });
    assert!(
        line.contains("import{image=event-on-failure generation=1 source=HTTP}"),
        "{line}"
    );
    assert!(line.contains("reason=ChecksumMismatch"), "{line}");
    assert!(
        !line.contains('\u{1b}'),
        "no terminal colours in a log file: {line:?}"
    );
}

#[test]
fn a_source_without_content_length_is_imported_through_the_spool() {
    let world = world();
    world
        .http
        .set_behavior("/chunked/", Behavior::default().chunked());
    std::fs::create_dir_all(world.images.join("chunked")).unwrap();
    std::fs::copy(
        world.images.join("disk.qcow2.gz"),
        world.images.join("chunked/disk.qcow2.gz"),
    )
    .unwrap();
    create(
        world.env,
        "chunked-source",
        serde_json::json!({"url": world.http.url("chunked/disk.qcow2.gz")}),
    );
    let cvi = settled(world.env, "chunked-source");
    assert_eq!(phase(&cvi), "Ready", "{:?}", ready_condition(&cvi));
    assert_eq!(cvi["status"]["format"], "qcow2");
    let uid = cvi["metadata"]["uid"].as_str().unwrap();
    let (name, sha256, _) = read_back(
        world.env,
        &format!("{}/cvi/chunked-source:{uid}", world.env.dvcr_registry()),
    );
    assert_eq!(name, "disk.qcow2.gz");
    assert_eq!(sha256, sha256_file(&world.images.join("disk.qcow2.gz")));
}

fn condition(cvi: &Value, type_: &str) -> Value {
    common::condition(cvi, type_).unwrap_or_default()
}

fn metric(port: u16, name: &str) -> f64 {
    metrics(port)
        .lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

fn object_ref(kind: &str, name: &str, namespace: Option<&str>) -> Value {
    let mut reference = serde_json::json!({"kind": kind, "name": name});
    if let Some(namespace) = namespace {
        reference["namespace"] = namespace.into();
    }
    serde_json::json!({"type": "ObjectRef", "objectRef": reference})
}

#[test]
fn a_copy_of_a_ready_image_mounts_its_layer_and_moves_no_bytes_through_the_daemon() {
    let world = world();
    let env = world.env;
    create(
        env,
        "copy-source",
        serde_json::json!({"url": world.http.url("grub-rescue-cdrom.iso")}),
    );
    let source = settled(env, "copy-source");
    assert_eq!(phase(&source), "Ready", "{:?}", ready_condition(&source));
    let mounted_before = metric(
        world.metrics_port,
        r#"image_catalog_copies_total{method="mount"}"#,
    );
    let streamed_before = metric(
        world.metrics_port,
        r#"image_catalog_copies_total{method="stream"}"#,
    );
    let downloads_before = world.http.requests("/grub-rescue-cdrom.iso");

    create_from(
        env,
        "copy-of-source",
        object_ref("ClusterVirtualImage", "copy-source", None),
    );
    let copy = settled(env, "copy-of-source");
    assert_eq!(phase(&copy), "Ready", "{:?}", ready_condition(&copy));
    for field in ["format", "cdrom", "size"] {
        assert_eq!(
            copy["status"][field], source["status"][field],
            "{field} comes from the source"
        );
    }
    assert_eq!(copy["status"]["cdrom"], true);
    assert_eq!(copy["status"]["sourceUID"], source["metadata"]["uid"]);

    let (source_name, source_sha, source_labels) = read_back(
        env,
        source["status"]["target"]["registryURL"].as_str().unwrap(),
    );
    let copy_url = copy["status"]["target"]["registryURL"].as_str().unwrap();
    assert!(copy_url.contains("/cvi/copy-of-source:"), "{copy_url}");
    let (copy_name, copy_sha, copy_labels) = read_back(env, copy_url);
    assert_eq!(
        (copy_name, copy_sha),
        (source_name, source_sha),
        "the copy holds the same file"
    );
    assert_eq!(copy_labels, source_labels);

    assert_eq!(
        metric(
            world.metrics_port,
            r#"image_catalog_copies_total{method="mount"}"#
        ),
        mounted_before + 1.0
    );
    assert_eq!(
        metric(
            world.metrics_port,
            r#"image_catalog_copies_total{method="stream"}"#
        ),
        streamed_before,
        "no byte streamed"
    );
    assert_eq!(
        world.http.requests("/grub-rescue-cdrom.iso"),
        downloads_before,
        "the source URL was not fetched again"
    );
}

#[test]
fn a_copy_waits_for_its_source_and_starts_by_itself_once_the_source_is_ready() {
    let world = world();
    let env = world.env;
    let _ = env
        .kubectl()
        .args([
            "delete",
            "cvi",
            "late-source",
            "--ignore-not-found",
            "--wait=true",
        ])
        .output();
    create_from(
        env,
        "copy-of-late-source",
        object_ref("ClusterVirtualImage", "late-source", None),
    );
    let waiting = wait_for(
        "the copy to wait for its source",
        Duration::from_secs(60),
        || {
            get(env, "copy-of-late-source")
                .filter(|cvi| condition(cvi, "DatasourceReady")["reason"] == "SourceImageNotFound")
        },
    );
    assert_eq!(phase(&waiting), "Pending");
    let datasource = condition(&waiting, "DatasourceReady");
    assert_eq!(datasource["status"], "False");
    assert!(
        datasource["message"]
            .as_str()
            .unwrap()
            .contains("ClusterVirtualImage late-source"),
        "{datasource}"
    );

    create(
        env,
        "late-source",
        serde_json::json!({"url": world.http.url("disk.vdi")}),
    );
    let copy = settled(env, "copy-of-late-source");
    assert_eq!(phase(&copy), "Ready", "{:?}", ready_condition(&copy));
    assert_eq!(copy["status"]["format"], "vdi");
    let source = get(env, "late-source").unwrap();
    assert_eq!(copy["status"]["sourceUID"], source["metadata"]["uid"]);
}

#[test]
fn a_virtual_disk_source_stays_pending_and_says_the_type_is_not_installed() {
    let world = world();
    let env = world.env;
    create_from(
        env,
        "from-virtual-disk",
        object_ref("VirtualDisk", "disk-1", Some("team-a")),
    );
    let cvi = wait_for("the VirtualDisk condition", Duration::from_secs(60), || {
        get(env, "from-virtual-disk")
            .filter(|cvi| condition(cvi, "DatasourceReady")["reason"] == "VirtualDiskNotInstalled")
    });
    assert_eq!(phase(&cvi), "Pending");
    assert_eq!(condition(&cvi, "DatasourceReady")["status"], "False");
    assert_eq!(condition(&cvi, "Ready")["status"], "False");
}

fn upload_image(name: &str) -> Value {
    let world = world();
    create_from(world.env, name, serde_json::json!({"type": "Upload"}));
    wait_for(
        &format!("{name} to wait for its upload"),
        Duration::from_secs(30),
        || {
            get(world.env, name).filter(|cvi| {
                phase(cvi) == "WaitForUserUpload"
                    && cvi["status"]["imageUploadURLs"]["external"].is_string()
            })
        },
    )
}

#[test]
fn an_upload_with_curl_as_documented_becomes_ready_with_the_uploaded_bytes() {
    let world = world();
    let cvi = upload_image("uploaded-with-curl");
    let urls = &cvi["status"]["imageUploadURLs"];
    let external = urls["external"].as_str().unwrap();
    let token = external.rsplit('/').next().unwrap();
    assert!(
        token.len() >= 32,
        "the token carries at least 128 bits: {token}"
    );
    assert!(
        urls["inCluster"]
            .as_str()
            .unwrap()
            .starts_with("http://image-catalog-upload.image-catalog.svc/upload/")
    );
    assert_eq!(condition(&cvi, "Ready")["reason"], "WaitingForUserUpload");

    let (code, body) = curl_upload(external, &world.images.join("disk.qcow2"), &[]);
    assert_eq!(code, 201, "{body}");
    let cvi = settled(world.env, "uploaded-with-curl");
    assert_eq!(phase(&cvi), "Ready", "{:?}", ready_condition(&cvi));
    assert_eq!(cvi["status"]["format"], "qcow2");
    let (_, sha256, _) = read_back(
        world.env,
        cvi["status"]["target"]["registryURL"].as_str().unwrap(),
    );
    assert_eq!(sha256, sha256_file(&world.images.join("disk.qcow2")));
}

/// The exposition a user lints with `curl .../metrics | promtool check metrics` is clean, and
/// an upload import is counted and timed like any other.
#[test]
fn metrics_pass_promtool_and_an_upload_import_is_counted_and_timed() {
    let world = world();
    let count = r#"image_catalog_import_duration_seconds_count{source="Upload"}"#;
    let before = metric(world.metrics_port, count);
    let cvi = upload_image("uploaded-for-metrics");
    let external = cvi["status"]["imageUploadURLs"]["external"]
        .as_str()
        .unwrap();
    let (code, body) = curl_upload(external, &world.images.join("disk.qcow2"), &[]);
    assert_eq!(code, 201, "{body}");
    assert_eq!(phase(&settled(world.env, "uploaded-for-metrics")), "Ready");
    assert!(metric(world.metrics_port, count) >= before + 1.0);
    assert!(
        metric(
            world.metrics_port,
            r#"image_catalog_imports_total{source="Upload",outcome="succeeded",reason="Ready"}"#
        ) >= 1.0
    );
    assert!(
        metric(
            world.metrics_port,
            r#"image_catalog_imported_bytes_total{source="Upload"}"#
        ) >= std::fs::metadata(world.images.join("disk.qcow2"))
            .unwrap()
            .len() as f64
    );
    assert!(
        metric(world.metrics_port, r#"image_catalog_images{phase="Ready"}"#) >= 1.0,
        "the images are counted by phase"
    );

    let exposition = metrics(world.metrics_port);
    let (ok, lint) = common::promtool(&["check", "metrics"], &exposition);
    assert!(
        ok && lint.trim().is_empty(),
        "promtool check metrics: {lint}\n{exposition}"
    );
}

#[test]
fn a_wrong_token_gets_a_bare_404_and_a_second_concurrent_upload_gets_409() {
    let world = world();
    let cvi = upload_image("upload-conflicts");
    let external = cvi["status"]["imageUploadURLs"]["external"]
        .as_str()
        .unwrap()
        .to_string();
    let base = external.rsplit_once('/').unwrap().0;
    let (code, body) = curl_upload(
        &format!("{base}/{}", "0".repeat(64)),
        &world.images.join("disk.raw"),
        &[],
    );
    assert_eq!(
        (code, body.trim()),
        (404, ""),
        "a wrong token learns nothing"
    );

    // A slow first upload, then a second one while it runs.
    let slow_file = world.images.join("cut.raw");
    let mut slow = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--limit-rate", "2M", "-T"])
        .arg(&slow_file)
        .arg(&external)
        .spawn()
        .unwrap();
    wait_for(
        "the first upload to show progress",
        Duration::from_secs(30),
        || get(world.env, "upload-conflicts").filter(|cvi| phase(cvi) == "Provisioning"),
    );
    let (code, body) = curl_upload(&external, &world.images.join("disk.raw"), &[]);
    assert_eq!(code, 409, "{body}");
    assert!(slow.wait().unwrap().success());
    let cvi = settled(world.env, "upload-conflicts");
    assert_eq!(phase(&cvi), "Ready");
    assert_eq!(
        cvi["status"]["size"]["storedBytes"],
        std::fs::metadata(&slow_file).unwrap().len().to_string()
    );
}

#[test]
fn a_broken_upload_leaves_the_image_waiting_and_nothing_tagged() {
    use std::io::Write;
    let world = world();
    let cvi = upload_image("upload-broken");
    let external = cvi["status"]["imageUploadURLs"]["external"]
        .as_str()
        .unwrap()
        .to_string();
    let address = external
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let path = &external[external.find("/upload/").unwrap()..];
    // Announce 8 MiB, send 1 MiB, hang up.
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "PUT {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\n\r\n",
        8 << 20
    )
    .unwrap();
    stream.write_all(&vec![7u8; 1 << 20]).unwrap();
    drop(stream);
    let waiting = wait_for("the image to wait again", Duration::from_secs(60), || {
        get(world.env, "upload-broken").filter(|cvi| {
            phase(cvi) == "WaitForUserUpload"
                && condition(cvi, "Ready")["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("last upload failed"))
        })
    });
    let uid = waiting["metadata"]["uid"].as_str().unwrap();
    assert!(!dvcr_has(
        world.env,
        &format!("{}/cvi/upload-broken:{uid}", world.env.dvcr_registry())
    ));
    // The next attempt goes to a new URL: whoever saw the used one cannot send it. The wait
    // keeps its deadline.
    let rotated = waiting["status"]["imageUploadURLs"]["external"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(rotated, external, "a new URL after a failed upload");
    assert!(waiting["metadata"]["annotations"]["imagecatalog.dev/upload-deadline"].is_string());
    assert_eq!(
        waiting["metadata"]["annotations"]["imagecatalog.dev/upload-deadline"],
        cvi["metadata"]["annotations"]["imagecatalog.dev/upload-deadline"],
        "the deadline of the first URL holds"
    );
    let (code, _) = curl_upload(&external, &world.images.join("disk.vdi"), &[]);
    assert_eq!(code, 404, "the used URL is gone");
    let (code, body) = curl_upload(&rotated, &world.images.join("disk.vdi"), &[]);
    assert_eq!(code, 201, "{body}");
    assert_eq!(phase(&settled(world.env, "upload-broken")), "Ready");
}

/// The image's upload URL once it waits at one other than `old`.
fn upload_url_other_than(name: &str, old: &str) -> String {
    let waiting = wait_for(
        &format!("{name} to wait at a new URL"),
        Duration::from_secs(60),
        || {
            get(world().env, name).filter(|cvi| {
                phase(cvi) == "WaitForUserUpload"
                    && cvi["status"]["imageUploadURLs"]["external"]
                        .as_str()
                        .is_some_and(|url| url != old)
            })
        },
    );
    waiting["status"]["imageUploadURLs"]["external"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn every_request_of_the_upload_corpus_gets_its_answer_and_only_a_real_upload_uses_the_url() {
    let world = world();
    let name = "upload-corpus";
    let cvi = upload_image(name);
    let first = cvi["status"]["imageUploadURLs"]["external"]
        .as_str()
        .unwrap()
        .to_string();
    let (cases, expected) =
        common::raw_http::corpus(&common::repo_root().join("tests/corpus/uploads"));
    let answer_of = |case: &Path, url: &str| {
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let path = format!("/{path}");
        let token = path.rsplit('/').next().unwrap();
        let wrong = format!("/upload/{}", "0".repeat(token.len()));
        let half = &path[..path.len() - token.len() / 2];
        let words = [
            ("host", host),
            ("path", path.as_str()),
            ("wrong-path", wrong.as_str()),
            ("half-path", half),
        ];
        let answer =
            common::raw_http::exchange(host, &common::raw_http::request(case, &words, None));
        let body = common::raw_http::body(&answer)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        let status = common::raw_http::status(&answer).to_string();
        if body.is_empty() {
            status
        } else {
            format!("{status} {body}")
        }
    };
    let mut wrong = Vec::new();
    let mut check = |case: &Path, got: String| {
        let case = common::raw_http::case_name(case);
        let want = expected
            .iter()
            .find(|(name, _)| *name == case)
            .map(|(_, answer)| answer);
        if want != Some(&got) {
            wrong.push(format!(
                "{case}:\n    got:      {got}\n    expected: {want:?}"
            ));
        }
    };
    // What never starts an upload leaves the image waiting at the same URL.
    let (uploads, refusals): (Vec<_>, Vec<_>) = cases.iter().partition(|case| {
        let case = common::raw_http::case_name(case);
        expected
            .iter()
            .any(|(name, answer)| *name == case && answer.starts_with("422"))
    });
    for case in &refusals {
        check(case, answer_of(case, &first));
    }
    let still = get(world.env, name).unwrap();
    assert_eq!(phase(&still), "WaitForUserUpload");
    assert_eq!(
        still["status"]["imageUploadURLs"]["external"],
        first.as_str()
    );
    // Each refused upload is answered with the reason, and the next goes to a new URL.
    let mut url = first;
    for case in &uploads {
        check(case, answer_of(case, &url));
        url = upload_url_other_than(name, &url);
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    let (code, body) = curl_upload(&url, &world.images.join("disk.qcow2"), &[]);
    assert_eq!(code, 201, "{body}");
    assert_eq!(phase(&settled(world.env, name)), "Ready");
}

#[test]
fn an_image_nobody_uploads_to_fails_after_the_timeout_and_says_to_recreate_it() {
    let world = world();
    upload_image("upload-never");
    let cvi = settled(world.env, "upload-never");
    assert_eq!(phase(&cvi), "Failed");
    let (reason, message) = ready_condition(&cvi);
    assert_eq!(reason, "UploadTimedOut");
    assert!(message.contains("create it again"), "{message}");
}

#[test]
fn the_upload_command_streams_a_real_iso_and_waits_for_ready() {
    let world = world();
    create_from(
        world.env,
        "uploaded-with-cli",
        serde_json::json!({"type": "Upload"}),
    );
    let iso = world.images.join("ipxe.iso");
    let output = Command::new(env!("CARGO_BIN_EXE_image-catalog"))
        .args(["upload", "uploaded-with-cli"])
        .arg(&iso)
        .env("KUBECONFIG", world.env.kubeconfig())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("2Mi / 2Mi") || stderr.contains("/ 2Mi"),
        "progress shown: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("uploaded-with-cli is Ready"), "{stdout}");
    let cvi = get(world.env, "uploaded-with-cli").unwrap();
    assert_eq!(cvi["status"]["cdrom"], true);
    let (name, sha256, _) = read_back(
        world.env,
        cvi["status"]["target"]["registryURL"].as_str().unwrap(),
    );
    assert_eq!(name, "ipxe.iso", "the CLI sends the file name");
    assert_eq!(sha256, sha256_file(&iso));
}

fn container_image_source(image: &str, ca_bundle: &str, secret: Option<(&str, &str)>) -> Value {
    let mut block = serde_json::json!({"image": image, "caBundle": ca_bundle});
    if let Some((namespace, name)) = secret {
        block["imagePullSecret"] = serde_json::json!({"name": name, "namespace": namespace});
    }
    serde_json::json!({"type": "ContainerImage", "containerImage": block})
}

fn pull_secret(
    env: &TestEnv,
    namespace: &str,
    name: &str,
    registry: &str,
    user: &str,
    password: &str,
) {
    env.bind_pull_secrets(namespace);
    let _ = env
        .kubectl()
        .args([
            "delete",
            "secret",
            name,
            "-n",
            namespace,
            "--ignore-not-found",
        ])
        .output();
    env.kubectl_ok(&[
        "create",
        "secret",
        "docker-registry",
        name,
        "-n",
        namespace,
        &format!("--docker-server={registry}"),
        &format!("--docker-username={user}"),
        &format!("--docker-password={password}"),
    ]);
}

#[test]
fn container_disk_images_import_from_public_and_private_registries() {
    use common::source_registry::SourceRegistry;
    let world = world();
    let env = world.env;
    let public = SourceRegistry::start_public();
    let private = SourceRegistry::start_private();
    let qcow2 = world.images.join("disk.qcow2");
    let iso = world.images.join("ipxe.iso");
    let public_image =
        public.push_container_disk("images/qcow2:1", &[("disk/disk.qcow2", &qcow2)], false);
    let private_image =
        private.push_container_disk("private/ipxe:1", &[("disk/ipxe.iso", &iso)], true);
    let (user, password) = private.credentials().unwrap();
    pull_secret(
        env,
        "registry-secrets",
        "private-registry",
        &private.host(),
        &user,
        &password,
    );

    create_from(
        env,
        "from-public-registry",
        container_image_source(&public_image, &public.ca_bundle_base64(), None),
    );
    create_from(
        env,
        "from-private-registry",
        container_image_source(
            &private_image,
            &private.ca_bundle_base64(),
            Some(("registry-secrets", "private-registry")),
        ),
    );
    for (name, file, format) in [
        ("from-public-registry", &qcow2, "qcow2"),
        ("from-private-registry", &iso, "iso"),
    ] {
        let cvi = settled(env, name);
        assert_eq!(phase(&cvi), "Ready", "{name}: {:?}", ready_condition(&cvi));
        assert_eq!(cvi["status"]["format"], format);
        let (stored_name, sha256, _) = read_back(
            env,
            cvi["status"]["target"]["registryURL"].as_str().unwrap(),
        );
        assert_eq!(
            stored_name,
            file.file_name().unwrap().to_string_lossy(),
            "the file keeps its name"
        );
        assert_eq!(sha256, sha256_file(file), "{name}: the disk file as pushed");
    }
}

#[test]
fn a_missing_pull_secret_keeps_the_image_pending_until_the_secret_appears() {
    use common::source_registry::SourceRegistry;
    let world = world();
    let env = world.env;
    let private = SourceRegistry::start_private();
    let image = private.push_container_disk(
        "late/secret:1",
        &[("disk/disk.vdi", &world.images.join("disk.vdi"))],
        true,
    );
    env.bind_pull_secrets("late-secrets");
    let _ = env
        .kubectl()
        .args([
            "delete",
            "secret",
            "late",
            "-n",
            "late-secrets",
            "--ignore-not-found",
        ])
        .output();
    create_from(
        env,
        "waits-for-secret",
        container_image_source(
            &image,
            &private.ca_bundle_base64(),
            Some(("late-secrets", "late")),
        ),
    );
    let waiting = wait_for(
        "the image to wait for its Secret",
        Duration::from_secs(60),
        || {
            get(env, "waits-for-secret").filter(|cvi| {
                condition(cvi, "DatasourceReady")["reason"] == "ImagePullSecretNotFound"
            })
        },
    );
    assert_eq!(phase(&waiting), "Pending");
    assert_eq!(condition(&waiting, "DatasourceReady")["status"], "False");
    let (user, password) = private.credentials().unwrap();
    pull_secret(
        env,
        "late-secrets",
        "late",
        &private.host(),
        &user,
        &password,
    );
    let cvi = settled(env, "waits-for-secret");
    assert_eq!(phase(&cvi), "Ready", "{:?}", ready_condition(&cvi));
    let message = serde_json::to_string(&cvi["status"]).unwrap();
    assert!(
        !message.contains(&password),
        "the registry password never reaches the status"
    );
}

#[test]
fn a_pull_secret_outside_the_allowed_namespaces_is_never_read() {
    use common::source_registry::SourceRegistry;
    let world = world();
    let env = world.env;
    let private = SourceRegistry::start_private();
    let image = private.push_container_disk(
        "tenant/secret:1",
        &[("disk/disk.vdi", &world.images.join("disk.vdi"))],
        true,
    );
    // A valid Secret the daemon's account could even read: still not one a CVI may name,
    // since anyone who writes the catalog would borrow a tenant's registry credentials.
    let (user, password) = private.credentials().unwrap();
    pull_secret(
        env,
        "tenant-secrets",
        "registry",
        &private.host(),
        &user,
        &password,
    );
    create_from(
        env,
        "borrows-a-tenant-secret",
        container_image_source(
            &image,
            &private.ca_bundle_base64(),
            Some(("tenant-secrets", "registry")),
        ),
    );
    let refused = wait_for(
        "the image to be refused its Secret",
        Duration::from_secs(60),
        || {
            get(env, "borrows-a-tenant-secret").filter(|cvi| {
                condition(cvi, "DatasourceReady")["reason"] == "ImagePullSecretNamespaceNotAllowed"
            })
        },
    );
    assert_eq!(phase(&refused), "Pending");
    let message = condition(&refused, "DatasourceReady")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("tenant-secrets/registry"), "{message}");
    assert!(message.contains("--pull-secret-namespace"), "{message}");
    assert!(!serde_json::to_string(&refused).unwrap().contains(&password));
}

#[test]
fn an_image_without_a_disk_fails_with_a_reason_that_names_the_shape() {
    use common::source_registry::SourceRegistry;
    let world = world();
    let public = SourceRegistry::start_public();
    let image = public.push_container_disk(
        "nodisk/app:1",
        &[("app/readme.txt", &world.images.join("other.raw"))],
        false,
    );
    create_from(
        world.env,
        "image-without-disk",
        container_image_source(&image, &public.ca_bundle_base64(), None),
    );
    let cvi = settled(world.env, "image-without-disk");
    assert_eq!(phase(&cvi), "Failed");
    let (reason, message) = ready_condition(&cvi);
    assert_eq!(reason, "NoDiskInImage");
    assert!(message.contains("/disk"), "{message}");
}
