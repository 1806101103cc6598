//! The project's own OCI image, as `scripts/image` makes it without a Docker daemon: the
//! same inputs give the same digest; it runs as 65532 with only the files of its one layer;
//! and `--push` puts it into DVCR under exactly the digest it prints.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::repo_root;
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_image-catalog");
const VERSION: &str = env!("CARGO_PKG_VERSION");
const ENTRYPOINT: &str = "/usr/local/bin/image-catalog";

/// What one run of `scripts/image` printed.
struct Run {
    /// The last line of stdout: the image reference.
    reference: String,
    stderr: String,
}

/// This test's own build of the daemon, in `dir`, without its debug information: the same
/// code, a tenth of the bytes to pack (a debug build is some 350 MiB of DWARF).
fn test_binary(dir: &Path) -> PathBuf {
    let path = dir.join("image-catalog");
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(BINARY)
        .arg(&path));
    path
}

/// Runs `scripts/image --binary <binary>` with `args`, failing the test with its stderr when
/// it fails.
fn scripts_image(binary: &Path, args: &[&str], configure: impl FnOnce(&mut Command)) -> Run {
    let mut command = Command::new(repo_root().join("scripts/image"));
    command
        .arg("--binary")
        .arg(binary)
        .args(args)
        .current_dir(repo_root());
    configure(&mut command);
    let output = command.output().expect("scripts/image runs");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    eprintln!("scripts/image {}:\n{stderr}", args.join(" "));
    assert!(output.status.success(), "scripts/image failed:\n{stderr}");
    let reference = stdout
        .lines()
        .last()
        .expect("scripts/image prints the image reference")
        .to_string();
    Run { reference, stderr }
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

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

/// An OCI image layout as written by `scripts/image`.
struct Layout(PathBuf);

impl Layout {
    fn blob(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.0.join("blobs/sha256").join(hex)
    }
    fn manifest_digest(&self) -> String {
        let index = read_json(&self.0.join("index.json"));
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 1, "one image in the layout: {index}");
        assert_eq!(
            manifests[0]["annotations"]["org.opencontainers.image.ref.name"],
            VERSION
        );
        manifests[0]["digest"].as_str().unwrap().to_string()
    }
    fn manifest(&self) -> Value {
        read_json(&self.blob(&self.manifest_digest()))
    }
    fn layer(&self) -> PathBuf {
        let manifest = self.manifest();
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "a single layer: {manifest}");
        assert_eq!(
            layers[0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        self.blob(layers[0]["digest"].as_str().unwrap())
    }
    fn reference(&self) -> String {
        format!("oci:{}:{VERSION}", self.0.display())
    }
}

fn head_commit() -> (String, String) {
    let revision = run(Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo_root()));
    let time = run(Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(repo_root()));
    (revision.trim().to_string(), time.trim().to_string())
}

/// The loader named by the binary's ELF interpreter, resolved inside `root` (its symlinks are
/// absolute paths of the image, not of this machine).
fn loader_in(root: &Path, interpreter: &str) -> PathBuf {
    let mut path = root.join(interpreter.trim_start_matches('/'));
    for _ in 0..10 {
        let Ok(target) = std::fs::read_link(&path) else {
            return path;
        };
        path = if target.is_absolute() {
            root.join(target.strip_prefix("/").unwrap())
        } else {
            path.parent().unwrap().join(target)
        };
    }
    panic!("symlink loop at {}", path.display())
}

#[test]
fn image_is_reproducible_runs_as_nonroot_and_holds_only_what_the_daemon_needs() {
    let dir = tempfile::tempdir().unwrap();
    let first = Layout(dir.path().join("a"));
    let second = Layout(dir.path().join("b"));

    let binary = test_binary(dir.path());
    let run_a = scripts_image(&binary, &["--output", first.0.to_str().unwrap()], |_| {});
    assert_eq!(run_a.reference, first.reference());
    assert!(
        run_a.stderr.contains("compressed") && run_a.stderr.contains("uncompressed"),
        "sizes reported: {}",
        run_a.stderr
    );

    // The second build: another copy of the binary (new mtime, odd mode), a restrictive umask,
    // another temporary directory, later in time. None of it may show in the image.
    let copy = dir.path().join("copy/image-catalog");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(&binary, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o700)).unwrap();
    let other_tmp = dir.path().join("tmp");
    std::fs::create_dir(&other_tmp).unwrap();
    let mut command = Command::new("sh");
    command
        .args(["-c", "umask 077 && exec \"$@\"", "sh"])
        .arg(repo_root().join("scripts/image"))
        .args(["--binary", copy.to_str().unwrap()])
        .args(["--output", second.0.to_str().unwrap()])
        .env("TMPDIR", &other_tmp)
        .current_dir(repo_root());
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "second scripts/image failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    assert_eq!(
        first.manifest_digest(),
        second.manifest_digest(),
        "same inputs, same digest"
    );
    assert_eq!(
        std::fs::read(first.0.join("index.json")).unwrap(),
        std::fs::read(second.0.join("index.json")).unwrap()
    );

    // What a consumer sees: skopeo reads the layout, and the config says who and what runs.
    let inspect: Value = serde_json::from_str(&run(
        Command::new("skopeo").args(["inspect", &first.reference()])
    ))
    .unwrap();
    assert_eq!(inspect["Digest"], first.manifest_digest());
    let config: Value = serde_json::from_str(&run(Command::new("skopeo").args([
        "inspect",
        "--config",
        &first.reference(),
    ])))
    .unwrap();
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!([ENTRYPOINT])
    );
    assert!(config["config"]["Cmd"].is_null(), "no shell, no command");
    assert_eq!(config["os"], "linux");
    let (revision, commit_time) = head_commit();
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    assert_eq!(
        labels["org.opencontainers.image.revision"],
        revision.as_str()
    );
    let created = chrono::DateTime::from_timestamp(commit_time.parse().unwrap(), 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    assert_eq!(labels["org.opencontainers.image.created"], created.as_str());
    assert_eq!(
        config["created"],
        created.as_str(),
        "created is the commit time"
    );

    // The layer: every entry owned by root, the files the daemon needs, nothing else.
    let layer = first.layer();
    let listing = run(Command::new("tar")
        .args(["-tvzf"])
        .arg(&layer)
        .arg("--numeric-owner"));
    let mut entries: HashMap<String, String> = HashMap::new();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[1], "0/0", "owned by root: {line}");
        entries.insert(
            fields[5].trim_end_matches('/').to_string(),
            fields[0].to_string(),
        );
    }
    assert_eq!(
        entries
            .get("usr/local/bin/image-catalog")
            .map(String::as_str),
        Some("-rwxr-xr-x")
    );
    assert_eq!(
        entries.get("tmp").map(String::as_str),
        Some("drwxrwxrwt"),
        "/tmp is 1777"
    );
    for needed in [
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
        "etc/group",
        "lib64/ld-linux-x86-64.so.2",
    ] {
        assert!(entries.contains_key(needed), "{needed} in the layer");
    }
    for name in entries.keys() {
        assert!(
            !name.starts_with("usr/share/") && !name.contains("/man/") && !name.starts_with("bin/"),
            "{name}: no docs, man pages or tools in the image"
        );
    }

    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&layer)
        .arg("-C")
        .arg(&root)
        .arg("--no-same-owner"));
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("nonroot:x:65532:65532:")),
        "/etc/passwd has nonroot 65532: {passwd}"
    );
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    assert!(
        group.lines().any(|l| l.starts_with("nonroot:x:65532:")),
        "{group}"
    );
    let bundle = std::fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    let certificates = bundle.matches("-----BEGIN CERTIFICATE-----").count();
    assert!(
        certificates > 100,
        "a CA bundle, {certificates} certificates"
    );

    // The daemon from the layer runs with the layer's loader and libraries only: the loader
    // resolves every library inside the extracted layer, and --version answers.
    let interpreter = "/lib64/ld-linux-x86-64.so.2";
    let loader = loader_in(&root, interpreter);
    let library_path = [
        "lib/x86_64-linux-gnu",
        "usr/lib/x86_64-linux-gnu",
        "lib",
        "usr/lib",
    ]
    .iter()
    .map(|d| root.join(d).display().to_string())
    .collect::<Vec<_>>()
    .join(":");
    let daemon = root.join(ENTRYPOINT.trim_start_matches('/'));
    let list = run(Command::new(&loader)
        .env_clear()
        .args(["--inhibit-cache", "--library-path", &library_path, "--list"])
        .arg(&daemon));
    let resolved: Vec<&str> = list
        .lines()
        .filter_map(|l| {
            l.split_once("=> ")
                .map(|(_, rest)| rest.split(" (").next().unwrap())
        })
        .collect();
    assert!(resolved.len() >= 3, "libraries listed: {list}");
    for path in &resolved {
        assert!(
            Path::new(path).starts_with(&root),
            "{path} resolved outside the layer:\n{list}"
        );
    }
    let version = run(Command::new(&loader)
        .env_clear()
        .args(["--inhibit-cache", "--library-path", &library_path])
        .arg(&daemon)
        .arg("--version"));
    assert_eq!(version.trim(), format!("image-catalog {VERSION}"));
}

#[test]
fn pushed_image_is_in_dvcr_under_the_digest_it_prints() {
    let env = common::testenv();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout(dir.path().join("oci"));
    let repository = format!("test/container-image-{}", std::process::id());
    let testenv_dir = repo_root().join(".testenv");

    let binary = test_binary(dir.path());
    let pushed = scripts_image(
        &binary,
        &[
            "--push",
            "--output",
            layout.0.to_str().unwrap(),
            "--repository",
            &repository,
        ],
        |command| {
            command.env("TESTENV_DIR", &testenv_dir);
        },
    );
    let password = env.var("DVCR_PASSWORD");
    assert!(
        !pushed.stderr.contains(password),
        "the password is never printed"
    );
    let registry = env.dvcr_registry();
    let digest = layout.manifest_digest();
    assert_eq!(
        pushed.reference,
        format!("{registry}/{repository}@{digest}")
    );

    // What the registry holds, by digest and by tag, is the layout's manifest.
    let cert_dir = Path::new(env.var("DVCR_CA_FILE")).parent().unwrap();
    let creds = format!("{}:{password}", env.var("DVCR_USERNAME"));
    for reference in [
        format!("docker://{}", pushed.reference),
        format!("docker://{registry}/{repository}:{VERSION}"),
    ] {
        let inspect: Value = serde_json::from_str(&run(Command::new("skopeo")
            .args(["inspect", "--cert-dir"])
            .arg(cert_dir)
            .args(["--creds", &creds, &reference])))
        .unwrap();
        assert_eq!(inspect["Digest"], digest.as_str(), "{reference}");
    }
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--cert-dir"])
        .arg(cert_dir)
        .args(["--creds", &creds, &format!("docker://{}", pushed.reference)]));
    assert_eq!(
        raw.as_bytes(),
        std::fs::read(layout.blob(&digest)).unwrap(),
        "the very manifest bytes of the layout"
    );
}
