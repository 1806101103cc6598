//! The source egress policy against real servers, without a connection that could leave the
//! machine: loopback servers (127.0.0.1, 127.0.0.2, `localhost`) for deny rules, redirect hops
//! and https→http; and for the link-local default, a network namespace the test makes, with
//! 169.254.169.254 on its own loopback and both the server and the client inside it.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use common::file_server::{Behavior, FileServer, write_random_file};
use image_catalog::cli_args::EgressArgs;
use image_catalog::egress::EgressPolicy;
use image_catalog::import::source::http::{HttpDownload, HttpSourceOptions};
use image_catalog::import::source::{SourceError, SourceErrorKind};
use sha2::Digest as _;

const REFUSED: &str = "SourceRefusedByPolicy";

/// The daemon's flags, parsed as the daemon parses them.
#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    egress: EgressArgs,
}

fn policy(flags: &[&str]) -> Arc<EgressPolicy> {
    let args = std::iter::once("test").chain(flags.iter().copied());
    Flags::try_parse_from(args).unwrap().egress.policy()
}

fn options(policy: Arc<EgressPolicy>) -> HttpSourceOptions {
    HttpSourceOptions {
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
        max_attempts: 3,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        egress: policy,
    }
}

/// The sha256 of the whole download.
async fn download(
    url: &str,
    ca_pem: Option<&str>,
    options: HttpSourceOptions,
) -> Result<String, SourceError> {
    let mut source = HttpDownload::open(url, ca_pem.map(str::as_bytes), options).await?;
    let mut hasher = sha2::Sha256::new();
    while let Some(chunk) = source.next_chunk().await? {
        hasher.update(&chunk);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn refused(result: Result<String, SourceError>) -> SourceError {
    let error = result.expect_err("the policy must refuse this download");
    assert_eq!(error.reason, REFUSED, "{}", error.message);
    assert_eq!(error.kind, SourceErrorKind::Permanent);
    error
}

fn dir_with_file(name: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let sha = write_random_file(&dir.path().join(name), 256 * 1024, 7);
    (dir, sha)
}

#[tokio::test]
async fn a_denied_literal_address_is_refused_before_any_connection() {
    let (dir, sha) = dir_with_file("disk.img");
    let server = FileServer::start_on(dir.path(), "127.0.0.2");
    let url = server.url("/disk.img?token=s3cr3t-token");

    let error = refused(
        download(
            &url,
            None,
            options(policy(&["--source-deny", "127.0.0.2/32"])),
        )
        .await,
    );
    assert!(
        error.message.contains("127.0.0.2 (a loopback address)")
            && error
                .message
                .contains("it matches --source-deny 127.0.0.2/32")
            && error.message.contains("--source-allow 127.0.0.2/32"),
        "{}",
        error.message
    );
    assert!(!error.message.contains("s3cr3t-token"), "{}", error.message);
    assert_eq!(server.connections(), 0);

    // An allow rule opens a hole in the deny rule, and only there.
    let opened = policy(&[
        "--source-deny",
        "127.0.0.0/8",
        "--source-allow",
        "127.0.0.2/32",
    ]);
    assert_eq!(download(&url, None, options(opened)).await.unwrap(), sha);
}

#[tokio::test]
async fn a_name_is_refused_by_the_addresses_it_resolves_to() {
    let (dir, sha) = dir_with_file("disk.img");
    let server = FileServer::start(dir.path());
    let url = server.localhost_url("/disk.img");
    // The name passes every name rule; only its resolved address is denied.
    let deny = policy(&["--source-deny", "127.0.0.1/32", "--source-deny", "::1/128"]);

    let error = refused(download(&url, None, options(deny)).await);
    assert!(
        error
            .message
            .contains("localhost (127.0.0.1, a loopback address)")
            && error.message.contains("--source-allow localhost"),
        "{}",
        error.message
    );
    assert_eq!(server.connections(), 0);

    // Allowing the name opens it whatever it resolves to.
    let by_name = policy(&[
        "--source-deny",
        "127.0.0.1/32",
        "--source-deny",
        "::1/128",
        "--source-allow",
        "localhost",
    ]);
    assert_eq!(download(&url, None, options(by_name)).await.unwrap(), sha);
}

#[tokio::test]
async fn every_redirect_hop_is_checked_literal_ips_names_and_resolved_addresses() {
    let (dir, _) = dir_with_file("disk.img");
    let first = FileServer::start(dir.path());
    let second = FileServer::start_on(dir.path(), "127.0.0.2");

    // A hop to a denied literal IP: refused on the hop, never connected.
    first.set_behavior(
        "/to-ip",
        Behavior::default().redirect(&second.url("/disk.img")),
    );
    let error = refused(
        download(
            &first.url("/to-ip"),
            None,
            options(policy(&["--source-deny", "127.0.0.2/32"])),
        )
        .await,
    );
    assert!(error.message.contains("127.0.0.2"), "{}", error.message);
    assert_eq!(first.requests("/to-ip"), 1);
    assert_eq!(second.connections(), 0);

    // A hop to a denied name: refused by the name rule.
    first.set_behavior(
        "/to-name",
        Behavior::default().redirect(&first.localhost_url("/disk.img")),
    );
    let error = refused(
        download(
            &first.url("/to-name"),
            None,
            options(policy(&["--source-deny", "localhost"])),
        )
        .await,
    );
    assert!(
        error.message.contains("it matches --source-deny localhost"),
        "{}",
        error.message
    );
    assert_eq!(first.requests("/disk.img"), 0);

    // A hop from 127.0.0.2 to a name whose address is denied: the hop passes the name
    // rules, and the new connection is refused after DNS.
    second.set_behavior(
        "/to-localhost",
        Behavior::default().redirect(&first.localhost_url("/disk.img")),
    );
    let error = refused(
        download(
            &second.url("/to-localhost"),
            None,
            options(policy(&[
                "--source-deny",
                "127.0.0.1/32",
                "--source-deny",
                "::1/128",
            ])),
        )
        .await,
    );
    assert!(
        error.message.contains("localhost (127.0.0.1"),
        "{}",
        error.message
    );
    assert_eq!(second.requests("/to-localhost"), 1);
    assert_eq!(first.requests("/disk.img"), 0);
}

#[tokio::test]
async fn a_redirect_from_https_to_http_is_refused() {
    let (dir, sha) = dir_with_file("disk.img");
    let secure = FileServer::start_https(dir.path());
    let plain = FileServer::start(dir.path());
    secure.set_behavior(
        "/downgrade",
        Behavior::default().redirect(&plain.url("/disk.img?sig=abc123def")),
    );

    let error = refused(
        download(
            &secure.url("/downgrade"),
            secure.ca_pem(),
            options(Arc::default()),
        )
        .await,
    );
    assert!(
        error.message.contains("from https to http"),
        "{}",
        error.message
    );
    assert!(!error.message.contains("abc123def"), "{}", error.message);
    assert_eq!(plain.connections(), 0);

    // http → http and https → https are followed as before.
    secure.set_behavior("/same", Behavior::default().redirect("/disk.img"));
    let got = download(
        &secure.url("/same"),
        secure.ca_pem(),
        options(Arc::default()),
    )
    .await;
    assert_eq!(got.unwrap(), sha);
}

#[tokio::test]
async fn the_redirect_limit_still_holds_under_the_policys_redirect_rules() {
    let (dir, _) = dir_with_file("disk.img");
    let server = FileServer::start(dir.path());
    server.set_behavior("/loop", Behavior::default().redirect("/loop"));

    let error = download(&server.url("/loop"), None, options(Arc::default()))
        .await
        .expect_err("a redirect loop must end");
    assert_eq!(error.reason, "SourceRejected", "{}", error.message);
    assert!(
        error.message.contains("redirects more than 10 times"),
        "{}",
        error.message
    );
    // The first request and ten redirects, then no more.
    assert_eq!(server.requests("/loop"), 11);
}

/// A network namespace of this test: only its own loopback, with 169.254.169.254 on it, so
/// nothing inside can reach anything outside. Deleted on drop, with its processes.
struct Namespace {
    name: String,
    children: Vec<Child>,
}

impl Namespace {
    fn create() -> Self {
        let name = format!("ic-egress-{}", std::process::id());
        // A namespace left by a killed run of the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let namespace = Self {
            name,
            children: Vec::new(),
        };
        namespace.ip(&["netns", "add", &namespace.name]);
        namespace.ip(&["-n", &namespace.name, "link", "set", "lo", "up"]);
        namespace.ip(&[
            "-n",
            &namespace.name,
            "addr",
            "add",
            "169.254.169.254/32",
            "dev",
            "lo",
        ]);
        // `ip netns exec` mounts /etc/netns/<name>/hosts over /etc/hosts inside: a name for
        // the address, resolved by getaddrinfo like any other.
        let etc = namespace.etc_dir();
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("hosts"),
            "127.0.0.1 localhost\n169.254.169.254 metadata.test\n",
        )
        .unwrap();
        namespace
    }

    fn etc_dir(&self) -> std::path::PathBuf {
        Path::new("/etc/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) {
        let output = Command::new("ip").args(args).output().unwrap_or_else(|e| {
            panic!("running ip {args:?}: {e} (this test needs iproute2 and root)")
        });
        assert!(
            output.status.success(),
            "ip {args:?}: {} (this test needs root to make a network namespace)",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// A file server on 169.254.169.254:`port` inside the namespace, started once it listens.
    fn serve(&mut self, dir: &Path, port: u16) {
        let mut child = self
            .command("python3")
            .args(["-u", "-m", "http.server", "--bind", "169.254.169.254"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 for the file server inside the namespace");
        let stdout = child.stdout.take().unwrap();
        self.children.push(child);
        // Readiness from its own banner: connecting from here would leave the namespace.
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(line.starts_with("Serving HTTP"), "the server said {line:?}");
    }

    /// Runs this test binary's `netns_child` inside the namespace: the download of `url`
    /// with the daemon flags `flags`. Returns the child's result line.
    fn download(&self, url: &str, flags: &[&str]) -> String {
        let output = self
            .command(std::env::current_exe().unwrap())
            .args(["netns_child", "--exact", "--ignored", "--nocapture"])
            .env("EGRESS_CHILD_URL", url)
            .env("EGRESS_CHILD_FLAGS", flags.join(" "))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        stdout
            .lines()
            .find_map(|line| line.strip_prefix("EGRESS-RESULT "))
            .unwrap_or_else(|| {
                panic!(
                    "no result from the child: {stdout}\n{}",
                    String::from_utf8_lossy(&output.stderr)
                )
            })
            .to_string()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}

#[test]
fn link_local_is_refused_by_default_and_fetched_when_allowed_inside_a_network_namespace() {
    let (dir, sha) = dir_with_file("meta-data");
    let mut namespace = Namespace::create();
    let port = 18_000 + (std::process::id() % 2000) as u16;
    namespace.serve(dir.path(), port);

    for url in [
        format!("http://169.254.169.254:{port}/meta-data"),
        format!("http://[::ffff:169.254.169.254]:{port}/meta-data"),
    ] {
        let result = namespace.download(&url, &[]);
        assert!(
            result.starts_with(&format!("error {REFUSED} ")),
            "{url}: {result}"
        );
        assert!(
            result.contains(
                "169.254.169.254 (a link-local address, where cloud metadata services live)"
            ) && result.contains("are refused by default")
                && result.contains("--source-allow 169.254.169.254/32"),
            "{result}"
        );
    }
    // By name: refused after getaddrinfo, by the address it gave.
    let by_name = format!("http://metadata.test:{port}/meta-data");
    let result = namespace.download(&by_name, &[]);
    assert!(result.starts_with(&format!("error {REFUSED} ")), "{result}");
    assert!(
        result.contains("metadata.test (169.254.169.254, a link-local address"),
        "{result}"
    );

    let allowed = namespace.download(
        &format!("http://169.254.169.254:{port}/meta-data"),
        &["--source-allow", "169.254.169.254/32"],
    );
    assert_eq!(allowed, format!("ok {sha}"));
    let allowed = namespace.download(&by_name, &["--source-allow", "metadata.test"]);
    assert_eq!(allowed, format!("ok {sha}"));
}

/// Not a test of its own: the client half of the namespace test, run inside the namespace
/// by `Namespace::download`. Does nothing elsewhere.
#[tokio::test]
#[ignore = "run by link_local_is_refused_by_default_and_fetched_when_allowed_inside_a_network_namespace"]
async fn netns_child() {
    let Ok(url) = std::env::var("EGRESS_CHILD_URL") else {
        return;
    };
    let flags = std::env::var("EGRESS_CHILD_FLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split_whitespace().collect();
    let result = match download(&url, None, options(policy(&flags))).await {
        Ok(sha) => format!("ok {sha}"),
        Err(error) => format!("error {} {}", error.reason, error.message),
    };
    println!("EGRESS-RESULT {result}");
}
