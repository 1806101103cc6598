//! A second real registry for tests, apart from DVCR: Debian's `docker-registry` (distribution
//! 2.8) as a child process on 127.0.0.1 and a free port, with TLS from a test CA, storage in a
//! temp dir, and htpasswd basic auth (private) or none (public). Killed on drop.
//!
//! Images are built by hand as an OCI image layout (one tar layer, config, manifest, index)
//! and pushed with `skopeo copy`, so what the source reads is what real tooling produced.
//!
//! ```ignore
//! let registry = SourceRegistry::start_private();
//! let image = registry.push_container_disk("vm/disk:v1", &[("disk/disk.img", &path)], true);
//! ```

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use sha2::Digest as _;

use super::file_server::TestCa;

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const USERNAME: &str = "source-user";

pub struct SourceRegistry {
    child: Child,
    ip: &'static str,
    port: u16,
    ca_pem: String,
    credentials: Option<(String, String)>,
    dir: tempfile::TempDir,
}

impl SourceRegistry {
    /// A registry that requires basic auth; see [`credentials`](Self::credentials).
    pub fn start_private() -> Self {
        let password = format!("pw-{:016x}", rand_u64());
        Self::start(Some((USERNAME.to_string(), password)), "127.0.0.1")
    }

    /// A registry anyone may pull from and push to.
    pub fn start_public() -> Self {
        Self::start(None, "127.0.0.1")
    }

    /// A public registry on another loopback address (127.0.0.2, say).
    #[allow(dead_code)]
    pub fn start_public_on(ip: &'static str) -> Self {
        Self::start(None, ip)
    }

    fn start(credentials: Option<(String, String)>, ip: &'static str) -> Self {
        ensure_tools();
        let dir = tempfile::tempdir().expect("registry temp dir");
        let ca = TestCa::generate();
        let (cert_der, key_der) = ca.issue_server_cert(&[ip, "localhost"]);
        std::fs::write(dir.path().join("server.crt"), pem("CERTIFICATE", &cert_der)).unwrap();
        std::fs::write(dir.path().join("server.key"), pem("PRIVATE KEY", &key_der)).unwrap();
        // skopeo's --dest-cert-dir reads every *.crt in the directory as a CA.
        let cert_dir = dir.path().join("certs");
        std::fs::create_dir(&cert_dir).unwrap();
        std::fs::write(cert_dir.join("ca.crt"), &ca.cert_pem).unwrap();
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).unwrap();

        let auth = match &credentials {
            Some((user, password)) => {
                let output = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("htpasswd runs");
                assert!(output.status.success(), "htpasswd failed");
                std::fs::write(dir.path().join("htpasswd"), &output.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: source-registry\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                )
            }
            None => String::new(),
        };

        // The port is free when probed; a collision before the registry binds makes the
        // readiness wait fail loudly rather than silently use another server.
        let port = super::free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             http:\n  addr: {ip}:{port}\n  secret: {secret:016x}\n  tls:\n    certificate: {cert}\n    key: {key}\n\
             {auth}",
            storage = storage.display(),
            secret = rand_u64(),
            cert = dir.path().join("server.crt").display(),
            key = dir.path().join("server.key").display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry starts");
        let mut registry = Self {
            child,
            ip,
            port,
            ca_pem: ca.cert_pem,
            credentials,
            dir,
        };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "docker-registry exited ({status}): {}",
                    std::fs::read_to_string(self.dir.path().join("registry.log"))
                        .unwrap_or_default()
                );
            }
            if std::net::TcpStream::connect((self.ip, self.port)).is_ok() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "docker-registry did not listen on {} in time",
                self.host()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `<ip>:<port>`.
    pub fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// The PEM of the CA that signed the registry certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA as a `caBundle` holds it.
    pub fn ca_bundle_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.ca_pem)
    }

    /// (user, password) of a private registry.
    pub fn credentials(&self) -> Option<(String, String)> {
        self.credentials.clone()
    }

    /// Builds an OCI image layout with one layer holding a `disk/` directory entry and
    /// `files` (path in the image, file on disk), in that order, gzip-compressed if asked,
    /// and pushes it as `repo_tag`. Returns the image reference `host/repo:tag`.
    pub fn push_container_disk(
        &self,
        repo_tag: &str,
        files: &[(&str, &Path)],
        gzip: bool,
    ) -> String {
        let layout = tempfile::tempdir().expect("layout dir");
        let blobs = layout.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();

        // The uncompressed tar, written straight to a file.
        let tar_path = layout.path().join("layer.tar");
        {
            let mut builder = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
            let mut dir = tar::Header::new_gnu();
            dir.set_entry_type(tar::EntryType::Directory);
            dir.set_mode(0o755);
            dir.set_size(0);
            dir.set_mtime(0);
            builder
                .append_data(&mut dir, "disk/", std::io::empty())
                .unwrap();
            for (path_in_image, file) in files {
                let mut source = std::fs::File::open(file).unwrap();
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o444);
                header.set_mtime(0);
                header.set_size(source.metadata().unwrap().len());
                builder
                    .append_data(&mut header, path_in_image, &mut source)
                    .unwrap();
            }
            builder.into_inner().unwrap().sync_all().unwrap();
        }
        let (diff_id, tar_size) = sha256_file(&tar_path);
        let (layer_path, media_type) = if gzip {
            let gz_path = layout.path().join("layer.tar.gz");
            let mut encoder = flate2::write::GzEncoder::new(
                std::fs::File::create(&gz_path).unwrap(),
                flate2::Compression::fast(),
            );
            std::io::copy(&mut std::fs::File::open(&tar_path).unwrap(), &mut encoder).unwrap();
            encoder.finish().unwrap();
            (gz_path, "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            (tar_path.clone(), "application/vnd.oci.image.layer.v1.tar")
        };
        let (layer_digest, layer_size) = if gzip {
            sha256_file(&layer_path)
        } else {
            (diff_id.clone(), tar_size)
        };
        std::fs::rename(&layer_path, blobs.join(&layer_digest)).unwrap();

        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        });
        let (config_digest, config_size) =
            write_blob(&blobs, &serde_json::to_vec(&config).unwrap());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{config_digest}"),
                "size": config_size,
            },
            "layers": [{
                "mediaType": media_type,
                "digest": format!("sha256:{layer_digest}"),
                "size": layer_size,
            }],
        });
        let (manifest_digest, manifest_size) =
            write_blob(&blobs, &serde_json::to_vec(&manifest).unwrap());
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_digest}"),
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }],
        });
        std::fs::write(
            layout.path().join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        std::fs::write(
            layout.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let _ = std::fs::remove_file(&tar_path);

        let reference = format!("{}/{repo_tag}", self.host());
        let mut skopeo = Command::new("skopeo");
        skopeo
            .args(["--insecure-policy", "copy", "--quiet"])
            // Keep the layer as built: skopeo would otherwise gzip uncompressed layers.
            .arg("--preserve-digests")
            .arg("--dest-cert-dir")
            .arg(self.dir.path().join("certs"));
        if let Some((user, password)) = &self.credentials {
            skopeo.arg("--dest-creds").arg(format!("{user}:{password}"));
        }
        let output = skopeo
            .arg(format!("oci:{}:latest", layout.path().display()))
            .arg(format!("docker://{reference}"))
            .output()
            .expect("skopeo runs");
        assert!(
            output.status.success(),
            "skopeo copy to {reference} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        reference
    }
}

impl Drop for SourceRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_blob(blobs: &Path, data: &[u8]) -> (String, u64) {
    let digest = hex::encode(sha2::Sha256::digest(data));
    std::fs::write(blobs.join(&digest), data).unwrap();
    (digest, data.len() as u64)
}

/// (hex sha256, size) of a file, streamed.
fn sha256_file(path: &Path) -> (String, u64) {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer).unwrap();
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    (hex::encode(hasher.finalize()), size)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).unwrap());
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}

fn port_5000_listening() -> bool {
    std::net::TcpStream::connect(("127.0.0.1", 5000)).is_ok()
}

/// Installs docker-registry (and skopeo, htpasswd) when missing, once per test binary. The
/// package may start its own service on port 5000: stop it, but only when the install
/// started it.
fn ensure_tools() {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return;
    }
    let mut missing = Vec::new();
    if !Path::new(REGISTRY_BIN).exists() {
        missing.push("docker-registry");
    }
    if !command_exists("skopeo") {
        missing.push("skopeo");
    }
    if !command_exists("htpasswd") {
        missing.push("apache2-utils");
    }
    if !missing.is_empty() {
        let busy_before = port_5000_listening();
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
        install.extend(&missing);
        if !apt(&install) {
            assert!(apt(&["update", "-q"]), "apt-get update failed");
            assert!(apt(&install), "apt-get install {missing:?} failed");
        }
        if missing.contains(&"docker-registry") && !busy_before && port_5000_listening() {
            // The package's own service, started by the install: not ours to keep.
            let stopped = Command::new("systemctl")
                .args(["stop", "docker-registry"])
                .status()
                .is_ok_and(|s| s.success());
            if !stopped {
                let _ = Command::new("service")
                    .args(["docker-registry", "stop"])
                    .status();
            }
        }
    }
    *done = true;
}

fn command_exists(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}
