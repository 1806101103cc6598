//! Real Git remotes for the catalog tests: a repository made with the git CLI, served by
//! `git daemon` (git://) or by `git http-backend` behind a real HTTP server with basic auth
//! (smart HTTP, as forges serve it).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs git in `dir`; panics with its output when it fails. Returns stdout, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap_or_else(|error| panic!("git {args:?}: {error}"));
    assert!(
        output.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A bare repository `root/catalog.git` with branch `main`, and a working clone that
/// commits and pushes to it.
pub struct TestRepo {
    pub root: PathBuf,
    work: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestRepo {
    pub const NAME: &'static str = "catalog.git";

    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("served");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        git(&root, &["init", "-q", "--bare", "-b", "main", Self::NAME]);
        let bare = root.join(Self::NAME);
        // Pushing notes over smart HTTP and git:// needs receive-pack on.
        git(&bare, &["config", "http.receivepack", "true"]);
        git(&bare, &["config", "daemon.receivepack", "true"]);
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["config", "user.name", "Catalog Tests"]);
        git(&work, &["config", "user.email", "tests@localhost"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Self {
            root,
            work,
            _dir: dir,
        }
    }

    /// Writes `files` (path, content) — an empty content deletes the file — commits, pushes
    /// `main` and returns the commit id.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, content) in files {
            let target = self.work.join(path);
            if content.is_empty() {
                let _ = std::fs::remove_file(&target);
                continue;
            }
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(&target, content).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        git(&self.work, &["push", "-q", "origin", "main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Replaces the last commit with one of `files` and force-pushes `main`: the new commit
    /// does not descend from the old one. Returns its id.
    pub fn amend(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, content) in files {
            std::fs::write(self.work.join(path), content).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "--amend", "-m", message]);
        git(&self.work, &["push", "-q", "-f", "origin", "main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Tags the current commit (annotated) and pushes the tag.
    pub fn tag(&self, name: &str) {
        git(&self.work, &["tag", "-a", "-m", name, name]);
        git(&self.work, &["push", "-q", "origin", name]);
    }

    pub fn bare(&self) -> PathBuf {
        self.root.join(Self::NAME)
    }
}

impl Default for TestRepo {
    fn default() -> Self {
        Self::new()
    }
}

fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

fn free_port_on(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    wait_for_port_on("127.0.0.1", port, what)
}

fn wait_for_port_on(ip: &str, port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let address = SocketAddr::new(ip.parse().expect("an IP address"), port);
    while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `git daemon` serving every repository under a folder over git://, pushes allowed.
pub struct GitDaemon {
    ip: String,
    port: u16,
    child: Child,
}

impl GitDaemon {
    pub fn start(root: &Path) -> Self {
        Self::start_on(root, "127.0.0.1")
    }

    /// Listening on `ip` (the test node's address, which pods reach).
    pub fn start_on(root: &Path, ip: &str) -> Self {
        let port = free_port_on(ip);
        let child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--enable=receive-pack",
                &format!("--listen={ip}"),
                &format!("--port={port}"),
                &format!("--base-path={}", root.display()),
                root.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon");
        wait_for_port_on(ip, port, "git daemon");
        Self {
            ip: ip.to_string(),
            port,
            child,
        }
    }

    pub fn url(&self, repository: &str) -> String {
        format!("git://{}:{}/{repository}", self.ip, self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Smart HTTP: `git http-backend` run as a CGI program per request by an HTTP server that
/// asks for basic auth on every request, as forges do for private repositories.
pub struct HttpGitServer {
    pub username: String,
    pub password: String,
    /// The CA of the HTTPS server's certificate, for the Secret's `ca.crt`.
    pub ca_pem: Option<String>,
    address: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpGitServer {
    pub fn start(root: &Path) -> Self {
        Self::spawn(root, None)
    }

    /// Smart HTTPS on 127.0.0.1, with a certificate from a CA of its own ([`Self::ca_pem`]):
    /// credentials are only ever sent over https.
    pub fn start_https(root: &Path) -> Self {
        Self::spawn(
            root,
            Some(super::file_server::tls_config(&["127.0.0.1", "localhost"])),
        )
    }

    fn spawn(root: &Path, tls: Option<(std::sync::Arc<rustls::ServerConfig>, String)>) -> Self {
        let username = "catalog-reader".to_string();
        let password = format!("pw-{}", std::process::id() ^ free_port() as u32);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = std::sync::Arc::new(Cgi {
            root: root.to_path_buf(),
            authorization: format!(
                "Basic {}",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("{username}:{password}")
                )
            ),
        });
        let (tls, ca_pem) = match tls {
            Some((config, pem)) => (Some(config), Some(pem)),
            None => (None, None),
        };
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new().fallback(move |request| {
                    let state = state.clone();
                    async move { state.serve(request).await }
                });
                let stopped = async {
                    let _ = stopped.await;
                };
                match tls {
                    Some(config) => {
                        axum::serve(super::file_server::TlsListener::new(listener, config), app)
                            .with_graceful_shutdown(stopped)
                            .await
                            .unwrap()
                    }
                    None => axum::serve(listener, app)
                        .with_graceful_shutdown(stopped)
                        .await
                        .unwrap(),
                }
            });
        });
        Self {
            username,
            password,
            ca_pem,
            address,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn url(&self, repository: &str) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}/{repository}", self.address)
    }
}

impl Drop for HttpGitServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Cgi {
    root: PathBuf,
    authorization: String,
}

impl Cgi {
    async fn serve(&self, request: axum::extract::Request) -> axum::response::Response {
        use axum::http::{HeaderValue, StatusCode, header};
        use axum::response::IntoResponse;
        let (parts, body) = request.into_parts();
        let authorized = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            == Some(self.authorization.as_str());
        if !authorized {
            let mut response =
                (StatusCode::UNAUTHORIZED, "authentication required").into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"git\""),
            );
            return response;
        }
        let body = axum::body::to_bytes(body, 256 << 20)
            .await
            .unwrap_or_default();
        let header_text = |name: header::HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let mut command = tokio::process::Command::new("git");
        command
            .arg("http-backend")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("GIT_PROJECT_ROOT", &self.root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("REQUEST_METHOD", parts.method.as_str())
            .env("PATH_INFO", parts.uri.path())
            .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
            .env("CONTENT_TYPE", header_text(header::CONTENT_TYPE))
            .env("CONTENT_LENGTH", body.len().to_string())
            .env(
                "HTTP_CONTENT_ENCODING",
                header_text(header::CONTENT_ENCODING),
            )
            .env(
                "GIT_PROTOCOL",
                parts
                    .headers
                    .get("git-protocol")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default(),
            )
            .env("REMOTE_USER", "catalog-reader")
            .env("REMOTE_ADDR", "127.0.0.1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("git http-backend");
        let mut stdin = child.stdin.take().unwrap();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(&body).await;
        });
        let output = child.wait_with_output().await.expect("git http-backend");
        let _ = writer.await;
        cgi_response(&output.stdout)
    }
}

/// A CGI program's output (headers, blank line, body) as an HTTP response.
fn cgi_response(output: &[u8]) -> axum::response::Response {
    use axum::http::{HeaderName, HeaderValue, StatusCode};
    let split = output
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|at| (at, 4))
        .or_else(|| {
            output
                .windows(2)
                .position(|window| window == b"\n\n")
                .map(|at| (at, 2))
        });
    let Some((at, separator)) = split else {
        return axum::response::Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(axum::body::Body::from("no CGI headers"))
            .unwrap();
    };
    let mut builder = axum::response::Response::builder().status(StatusCode::OK);
    for line in String::from_utf8_lossy(&output[..at]).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("200");
            builder = builder.status(code.parse::<u16>().unwrap_or(200));
        } else if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            builder = builder.header(name, value);
        }
    }
    builder
        .body(axum::body::Body::from(output[at + separator..].to_vec()))
        .unwrap()
}

/// A local `sshd` for this user, with its own host key and one authorized client key:
/// `ssh://` remotes as forges serve them, host key checking included.
pub struct SshGitServer {
    pub user: String,
    /// The client's private key (PEM), for the Secret's `identity`.
    pub identity: String,
    /// The `known_hosts` line of this server.
    pub known_hosts: String,
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl SshGitServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        for (key, kind) in [("host_key", "ed25519"), ("client_key", "ecdsa")] {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", kind, "-m", "PEM", "-N", "", "-C", key, "-f"])
                .arg(path(key))
                .output()
                .expect("ssh-keygen");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::copy(path("client_key.pub"), path("authorized_keys")).unwrap();
        let port = free_port();
        std::fs::write(
            path("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile none\n\
                 AuthorizedKeysFile {}\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                 StrictModes no\nUsePAM no\n",
                path("host_key"),
                path("authorized_keys")
            ),
        )
        .unwrap();
        // sshd insists on its privilege separation directory even when it runs unprivileged.
        let _ = std::fs::create_dir_all("/run/sshd");
        let sshd = ["/usr/sbin/sshd", "/sbin/sshd"]
            .into_iter()
            .find(|candidate| Path::new(candidate).exists())
            .expect("sshd is installed (scripts/testenv installs openssh-server)");
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(path("sshd_config"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(path("sshd.log")).unwrap())
            .spawn()
            .expect("sshd");
        wait_for_port(port, "sshd");
        let host_key = std::fs::read_to_string(path("host_key.pub")).unwrap();
        let mut fields = host_key.split_whitespace();
        let known_hosts = format!(
            "[127.0.0.1]:{port} {} {}\n",
            fields.next().unwrap(),
            fields.next().unwrap()
        );
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        Self {
            user,
            identity: std::fs::read_to_string(path("client_key")).unwrap(),
            known_hosts,
            port,
            child,
            _dir: dir,
        }
    }

    /// The URL of a repository at an absolute path on this machine.
    pub fn url(&self, repository: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            repository.display()
        )
    }
}

impl Drop for SshGitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
