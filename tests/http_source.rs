//! The HTTP/HTTPS source against a real file server on loopback: what comes out must be the
//! file, byte for byte, whatever the connection does on the way; failures must be classified
//! so the controller can tell the user what to fix.

mod common;

use common::assert_no_secret;

use std::path::Path;
use std::time::{Duration, Instant};

use common::file_server::{Behavior, FileServer, TestCa, write_random_file};
use image_catalog::import::source::http::{
    DownloadStats, HttpDownload, HttpSourceOptions, redact_url,
};
use image_catalog::import::source::{SourceError, SourceErrorKind};
use sha2::Digest as _;

const MIB: u64 = 1 << 20;

/// Options with tiny back-offs, so retry tests take milliseconds.
fn fast_options() -> HttpSourceOptions {
    HttpSourceOptions {
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
        max_attempts: 5,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        egress: Default::default(),
    }
}

struct Downloaded {
    sha256: String,
    len: u64,
    file_name: String,
    content_length: Option<u64>,
    stats: DownloadStats,
}

/// Opens and reads the whole download, hashing as the pipeline would.
async fn download(
    url: &str,
    ca_pem: Option<&str>,
    options: HttpSourceOptions,
) -> Result<Downloaded, SourceError> {
    let mut source = HttpDownload::open(url, ca_pem.map(str::as_bytes), options).await?;
    let mut hasher = sha2::Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = source.next_chunk().await? {
        assert!(!chunk.is_empty(), "no empty chunks");
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    // The end is sticky.
    assert_eq!(source.next_chunk().await?, None);
    Ok(Downloaded {
        sha256: hex::encode(hasher.finalize()),
        len,
        file_name: source.file_name(),
        content_length: source.content_length(),
        stats: source.stats(),
    })
}

/// A temp dir with one random file; returns (dir, sha256).
fn dir_with_file(name: &str, size: u64) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let sha = write_random_file(&dir.path().join(name), size, size ^ name.len() as u64);
    (dir, sha)
}

#[tokio::test]
async fn plain_http_download_is_byte_identical() {
    let size = 3 * MIB + 12_345;
    let (dir, sha) = dir_with_file("disk.qcow2", size);
    let server = FileServer::start(dir.path());

    let got = download(&server.url("/disk.qcow2"), None, fast_options())
        .await
        .unwrap();

    assert_eq!(got.sha256, sha);
    assert_eq!(got.len, size);
    assert_eq!(got.content_length, Some(size));
    assert_eq!(got.file_name, "disk.qcow2");
    assert_eq!(got.stats.resumes, 0);
    assert_eq!(got.stats.bytes_fetched, size);
    assert_eq!(server.requests("/disk.qcow2"), 1);
    let log = server.request_log();
    assert_eq!(log[0].accept_encoding.as_deref(), Some("identity"));
    assert_eq!(log[0].range, None);
}

#[tokio::test]
async fn empty_file_downloads_as_empty() {
    let (dir, sha) = dir_with_file("empty.img", 0);
    let server = FileServer::start(dir.path());
    let got = download(&server.url("/empty.img"), None, fast_options())
        .await
        .unwrap();
    assert_eq!((got.len, got.sha256), (0, sha));
    assert_eq!(got.content_length, Some(0));
}

#[tokio::test]
async fn https_with_the_ca_bundle_works() {
    let size = 2 * MIB + 1;
    let (dir, sha) = dir_with_file("secure.img", size);
    let server = FileServer::start_https(dir.path());
    // What the controller gets: base64 in caBundle, decoded to PEM.
    let ca_pem = base64_decode(&server.ca_bundle_base64().unwrap());

    let got = download(&server.url("/secure.img"), Some(&ca_pem), fast_options())
        .await
        .unwrap();
    assert_eq!(got.sha256, sha);

    // The certificate is for localhost too.
    let got = download(
        &server.localhost_url("/secure.img"),
        Some(&ca_pem),
        fast_options(),
    )
    .await
    .unwrap();
    assert_eq!(got.sha256, sha);
}

#[tokio::test]
async fn https_with_a_wrong_ca_is_a_permanent_tls_error_without_retries() {
    let (dir, _) = dir_with_file("secure.img", MIB);
    let server = FileServer::start_https(dir.path());
    let wrong_ca = TestCa::generate().cert_pem;

    let error = download(&server.url("/secure.img"), Some(&wrong_ca), fast_options())
        .await
        .err()
        .expect("the certificate must not be trusted");

    assert_eq!(error.kind, SourceErrorKind::Permanent);
    assert_eq!(error.reason, "SourceTLSError");
    assert!(error.message.contains("caBundle"), "{}", error.message);
    assert_eq!(server.connections(), 1, "a TLS failure is not retried");
    assert_eq!(server.requests("/secure.img"), 0);
}

#[tokio::test]
async fn https_with_a_private_ca_and_no_ca_bundle_suggests_ca_bundle() {
    let (dir, _) = dir_with_file("secure.img", MIB);
    let server = FileServer::start_https(dir.path());

    let error = download(&server.url("/secure.img"), None, fast_options())
        .await
        .err()
        .expect("a private CA is not trusted by default");

    assert_eq!(error.kind, SourceErrorKind::Permanent);
    assert_eq!(error.reason, "SourceTLSError");
    assert!(error.message.contains("caBundle"), "{}", error.message);
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn a_ca_bundle_without_certificates_is_rejected_before_connecting() {
    let (dir, _) = dir_with_file("secure.img", MIB);
    let server = FileServer::start_https(dir.path());
    let error = HttpDownload::open(
        &server.url("/secure.img"),
        Some(b"not a certificate"),
        fast_options(),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(error.kind, SourceErrorKind::Permanent);
    assert_eq!(error.reason, "InvalidCABundle");
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn redirects_are_followed_and_the_file_name_comes_from_the_final_url() {
    let size = MIB + 7;
    let (dir, sha) = dir_with_file("fedora-40.qcow2", size);
    let server = FileServer::start(dir.path());
    server.set_behavior("/latest", Behavior::default().redirect("/mirror/hop"));
    server.set_behavior(
        "/mirror/hop",
        Behavior::default().redirect("/fedora-40.qcow2"),
    );

    let got = download(&server.url("/latest"), None, fast_options())
        .await
        .unwrap();

    assert_eq!(got.sha256, sha);
    assert_eq!(got.file_name, "fedora-40.qcow2");
    assert_eq!(server.requests("/latest"), 1);
    assert_eq!(server.requests("/fedora-40.qcow2"), 1);
}

#[tokio::test]
async fn content_disposition_names_the_file() {
    let (dir, sha) = dir_with_file("download", MIB);
    let server = FileServer::start(dir.path());
    server.set_behavior(
        "/download",
        Behavior::default().content_disposition("attachment; filename=\"ubuntu 24.04.img\""),
    );
    let got = download(&server.url("/download"), None, fast_options())
        .await
        .unwrap();
    assert_eq!(got.sha256, sha);
    assert_eq!(got.file_name, "ubuntu 24.04.img");

    // Percent-encoded path segments are decoded; a bare host falls back to disk.img.
    std::fs::copy(dir.path().join("download"), dir.path().join("my disk.vmdk")).unwrap();
    let got = download(&server.url("/my%20disk.vmdk"), None, fast_options())
        .await
        .unwrap();
    assert_eq!(got.file_name, "my disk.vmdk");
    let source = HttpDownload::open(&server.url("/"), None, fast_options()).await;
    assert_eq!(source.err().unwrap().reason, "SourceNotFound");
}

#[tokio::test]
async fn missing_file_is_source_not_found_and_not_retried() {
    let (dir, _) = dir_with_file("present.img", 1024);
    let server = FileServer::start(dir.path());

    let error = download(&server.url("/absent.img"), None, fast_options())
        .await
        .err()
        .unwrap();

    assert_eq!(error.kind, SourceErrorKind::Permanent);
    assert_eq!(error.reason, "SourceNotFound");
    assert!(error.message.contains("404"), "{}", error.message);
    assert!(error.message.contains("/absent.img"), "{}", error.message);
    assert_eq!(server.requests("/absent.img"), 1);
}

#[tokio::test]
async fn access_denied_and_other_client_errors_are_permanent() {
    let (dir, _) = dir_with_file("f.img", 1024);
    let server = FileServer::start(dir.path());
    for (status, reason) in [
        (401, "SourceAccessDenied"),
        (403, "SourceAccessDenied"),
        (410, "SourceRejected"),
        (400, "SourceRejected"),
    ] {
        server.set_behavior("/f.img", Behavior::default().fail(status, u64::MAX));
        let error = download(&server.url("/f.img"), None, fast_options())
            .await
            .err()
            .unwrap();
        assert_eq!(
            (error.kind, error.reason),
            (SourceErrorKind::Permanent, reason)
        );
    }
    assert_eq!(
        server.requests("/f.img"),
        4,
        "one request per status: no retries"
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_the_server_recovers() {
    let size = MIB;
    let (dir, sha) = dir_with_file("flaky.img", size);
    let server = FileServer::start(dir.path());
    server.set_behavior("/flaky.img", Behavior::default().fail(500, 2));

    let got = download(&server.url("/flaky.img"), None, fast_options())
        .await
        .unwrap();

    assert_eq!(got.sha256, sha);
    assert_eq!(got.stats.retries, 2);
    assert_eq!(server.stats("/flaky.img").statuses, vec![500, 500, 200]);
}

#[tokio::test]
async fn a_server_that_keeps_failing_is_unavailable_after_max_attempts() {
    let (dir, _) = dir_with_file("down.img", 1024);
    let server = FileServer::start(dir.path());
    server.set_behavior("/down.img", Behavior::default().fail(500, u64::MAX));
    let options = HttpSourceOptions {
        max_attempts: 4,
        ..fast_options()
    };

    let error = download(&server.url("/down.img"), None, options)
        .await
        .err()
        .unwrap();

    assert_eq!(error.kind, SourceErrorKind::Transient);
    assert_eq!(error.reason, "SourceUnavailable");
    assert!(error.message.contains("500"), "{}", error.message);
    assert_eq!(server.requests("/down.img"), 4);
}

#[tokio::test]
async fn retry_after_is_honoured_up_to_max_backoff() {
    let (dir, sha) = dir_with_file("busy.img", 4096);
    let server = FileServer::start(dir.path());
    server.set_behavior(
        "/busy.img",
        Behavior::default().fail_with_retry_after(503, 1, "1"),
    );
    let options = HttpSourceOptions {
        max_backoff: Duration::from_secs(5),
        ..fast_options()
    };
    let started = Instant::now();
    let got = download(&server.url("/busy.img"), None, options)
        .await
        .unwrap();
    assert_eq!(got.sha256, sha);
    assert!(started.elapsed() >= Duration::from_millis(950));

    // Capped: a Retry-After of an hour waits max_backoff.
    server.set_behavior(
        "/busy.img",
        Behavior::default().fail_with_retry_after(429, 1, "3600"),
    );
    let started = Instant::now();
    let got = download(&server.url("/busy.img"), None, fast_options())
        .await
        .unwrap();
    assert_eq!(got.sha256, sha);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn connection_refused_is_unavailable_after_retries() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let error = download(
        &format!("http://127.0.0.1:{port}/x.img"),
        None,
        HttpSourceOptions {
            max_attempts: 3,
            ..fast_options()
        },
    )
    .await
    .err()
    .unwrap();
    assert_eq!(error.kind, SourceErrorKind::Transient);
    assert_eq!(error.reason, "SourceUnavailable");
    assert!(error.message.contains("3 attempts"), "{}", error.message);
}

#[tokio::test]
async fn an_unknown_host_is_reported_after_retries() {
    let error = download(
        "http://image-catalog-test.invalid/x.img",
        None,
        HttpSourceOptions {
            max_attempts: 2,
            ..fast_options()
        },
    )
    .await
    .err()
    .unwrap();
    assert_eq!(error.kind, SourceErrorKind::Permanent);
    assert_eq!(error.reason, "SourceHostNotFound");
    assert!(
        error.message.contains("image-catalog-test.invalid"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn cut_connections_are_resumed_seamlessly() {
    let size = 4 * MIB + 333;
    let (dir, sha) = dir_with_file("big.img", size);
    let server = FileServer::start(dir.path());
    server.set_behavior("/big.img", Behavior::default().cut_after(MIB + 17, 2));

    let got = download(&server.url("/big.img"), None, fast_options())
        .await
        .unwrap();

    assert_eq!(got.sha256, sha, "the consumer sees the file, byte for byte");
    assert_eq!(got.len, size);
    assert_eq!(got.stats.resumes, 2);
    let sent = server.bytes_sent("/big.img");
    assert!(
        sent as f64 <= 1.1 * size as f64,
        "sent {sent} bytes for a {size}-byte file"
    );
    assert!(got.stats.bytes_fetched <= sent);
    // The resumes asked for the rest, guarded by the validator.
    let log = server.request_log();
    assert_eq!(log.len(), 3);
    for record in &log[1..] {
        assert!(record.range.as_deref().unwrap().starts_with("bytes="));
        assert!(record.if_range.as_deref().unwrap().starts_with('"'));
    }
    assert_eq!(server.stats("/big.img").statuses, vec![200, 206, 206]);
}

#[tokio::test]
async fn cut_connections_resume_with_last_modified_when_there_is_no_etag() {
    let size = 2 * MIB;
    let (dir, sha) = dir_with_file("lm.img", size);
    // A Last-Modified is a strong validator only a minute or more before the Date.
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(dir.path().join("lm.img"))
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    let server = FileServer::start(dir.path());
    server.set_behavior("/lm.img", Behavior::default().no_etag().cut_after(MIB, 1));
    let got = download(&server.url("/lm.img"), None, fast_options())
        .await
        .unwrap();
    assert_eq!(got.sha256, sha);
    assert_eq!(got.stats.resumes, 1);
    assert!(
        server.request_log()[1]
            .if_range
            .as_deref()
            .unwrap()
            .ends_with("GMT")
    );

    // Modified just now (a file being rewritten?) and no ETag: no safe resume, start over.
    let (fresh, _) = dir_with_file("fresh.img", size);
    let server = FileServer::start(fresh.path());
    server.set_behavior(
        "/fresh.img",
        Behavior::default().no_etag().cut_after(MIB, 1),
    );
    let error = download(&server.url("/fresh.img"), None, fast_options())
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind, SourceErrorKind::Restart);
    assert_eq!(error.reason, "SourceNotResumable");
    assert_eq!(server.requests("/fresh.img"), 1, "no range request at all");
}

#[tokio::test]
async fn a_resumed_part_that_does_not_repeat_the_etag_asks_for_a_restart() {
    let size = 2 * MIB;
    let (dir, _) = dir_with_file("echo.img", size);
    let server = FileServer::start(dir.path());
    server.set_behavior(
        "/echo.img",
        Behavior::default().etag_on_first_only().cut_after(MIB, 1),
    );
    let error = download(&server.url("/echo.img"), None, fast_options())
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind, SourceErrorKind::Restart, "{}", error.message);
    assert!(
        error.message.contains("did not repeat the ETag"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn stalled_connections_time_out_and_resume() {
    let size = 2 * MIB;
    let (dir, sha) = dir_with_file("stall.img", size);
    let server = FileServer::start(dir.path());
    server.set_behavior("/stall.img", Behavior::default().stall_after(MIB / 2, 1));
    let options = HttpSourceOptions {
        read_timeout: Duration::from_millis(300),
        ..fast_options()
    };
    let got = download(&server.url("/stall.img"), None, options)
        .await
        .unwrap();
    assert_eq!(got.sha256, sha);
    assert_eq!(got.stats.resumes, 1);
}

#[tokio::test]
async fn cut_without_range_support_asks_for_a_restart() {
    let size = 2 * MIB;
    let (dir, _) = dir_with_file("noranges.img", size);
    let server = FileServer::start(dir.path());

    // The server keeps validators but ignores Range: the resume gets the whole file (200).
    server.set_behavior(
        "/noranges.img",
        Behavior::default().no_ranges().cut_after(MIB, 1),
    );
    let error = download(&server.url("/noranges.img"), None, fast_options())
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind, SourceErrorKind::Restart);
    assert_eq!(error.reason, "SourceNotResumable");
    assert!(error.message.contains("starts over"), "{}", error.message);
    assert_eq!(server.stats("/noranges.img").statuses, vec![200, 200]);

    // Neither Accept-Ranges nor a validator: nothing to try, restart at once.
    server.set_behavior(
        "/noranges.img",
        Behavior::default()
            .no_ranges()
            .no_validators()
            .cut_after(MIB, 1),
    );
    server.reset_stats();
    let error = download(&server.url("/noranges.img"), None, fast_options())
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind, SourceErrorKind::Restart);
    assert_eq!(server.requests("/noranges.img"), 1);
}

#[tokio::test]
async fn a_file_replaced_during_the_download_asks_for_a_restart() {
    let size = 2 * MIB;
    let (dir, _) = dir_with_file("moving.img", size);
    let server = FileServer::start(dir.path());
    server.set_behavior("/moving.img", Behavior::default().cut_after(MIB, 1));

    let mut source = HttpDownload::open(&server.url("/moving.img"), None, fast_options())
        .await
        .unwrap();
    source.next_chunk().await.unwrap().unwrap();
    // A new version is published (a new inode: the open response keeps the old one).
    let staged = dir.path().join("moving.img.new");
    write_random_file(&staged, size, 99);
    std::fs::rename(&staged, dir.path().join("moving.img")).unwrap();

    let error = loop {
        match source.next_chunk().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the download must not complete with mixed content"),
            Err(error) => break error,
        }
    };
    assert_eq!(error.kind, SourceErrorKind::Restart);
    assert_eq!(error.reason, "SourceChanged");
    // And it stays failed.
    assert_eq!(source.next_chunk().await.err(), Some(error));
}

#[tokio::test]
async fn chunked_response_without_content_length_is_byte_identical() {
    let size = 3 * MIB + 5;
    let (dir, sha) = dir_with_file("chunked.img", size);
    let server = FileServer::start(dir.path());
    server.set_behavior("/chunked.img", Behavior::default().chunked());

    let got = download(&server.url("/chunked.img"), None, fast_options())
        .await
        .unwrap();

    assert_eq!(got.sha256, sha);
    assert_eq!(got.content_length, None);
    assert_eq!(got.stats.resumes, 0);
}

#[tokio::test]
async fn chunked_response_cut_midway_is_resumed() {
    let size = 3 * MIB;
    let (dir, sha) = dir_with_file("chunked.img", size);
    let server = FileServer::start(dir.path());
    server.set_behavior(
        "/chunked.img",
        Behavior::default().chunked().cut_after(MIB, 2),
    );

    let got = download(&server.url("/chunked.img"), None, fast_options())
        .await
        .unwrap();

    assert_eq!(got.sha256, sha);
    assert_eq!(got.stats.resumes, 2);
}

#[tokio::test]
async fn credentials_in_the_url_are_used_and_never_shown() {
    let size = MIB;
    let (dir, sha) = dir_with_file("private.img", size);
    let server = FileServer::start(dir.path());
    let password = "hunter2-Secret";
    let token = "tok3n-value";
    // The credentials work, also on the resumes.
    server.set_behavior(
        "/private.img",
        Behavior::default()
            .basic_auth("alice", password)
            .cut_after(MIB / 3, 1),
    );
    let url =
        server.url_with_credentials(&format!("/private.img?token={token}"), "alice", password);
    let got = download(&url, None, fast_options()).await.unwrap();
    assert_eq!(got.sha256, sha);
    assert_eq!(got.stats.resumes, 1);
    assert!(server.request_log().iter().all(|r| r.status != 401));
    assert!(!redact_url(&url).contains(password) && !redact_url(&url).contains(token));

    // Every kind of failure, with the password and token in the URL.
    let mut errors = Vec::new();
    let wrong = server.url_with_credentials(
        &format!("/private.img?token={token}"),
        "alice",
        "wrong-password",
    );
    errors.push(download(&wrong, None, fast_options()).await.err().unwrap());
    let missing =
        server.url_with_credentials(&format!("/missing.img?token={token}"), "alice", password);
    errors.push(
        download(&missing, None, fast_options())
            .await
            .err()
            .unwrap(),
    );
    server.set_behavior("/down.img", Behavior::default().fail(503, u64::MAX));
    let down = server.url_with_credentials(&format!("/down.img?token={token}"), "alice", password);
    errors.push(download(&down, None, fast_options()).await.err().unwrap());
    server.set_behavior(
        "/private.img",
        Behavior::default().no_ranges().cut_after(MIB / 3, 1),
    );
    errors.push(download(&url, None, fast_options()).await.err().unwrap());
    let refused_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let refused = format!("http://alice:{password}@127.0.0.1:{refused_port}/x.img?token={token}");
    errors.push(
        download(&refused, None, fast_options())
            .await
            .err()
            .unwrap(),
    );
    let https = FileServer::start_https(dir.path());
    let tls = https.url_with_credentials(&format!("/private.img?token={token}"), "alice", password);
    errors.push(download(&tls, None, fast_options()).await.err().unwrap());
    errors.push(
        HttpDownload::open(
            &format!("ftp://alice:{password}@example.com/x?token={token}"),
            None,
            fast_options(),
        )
        .await
        .err()
        .unwrap(),
    );
    errors.push(
        HttpDownload::open(
            &format!("http://alice:{password}@exa mple.com/x?token={token}"),
            None,
            fast_options(),
        )
        .await
        .err()
        .unwrap(),
    );

    let reasons: Vec<_> = errors.iter().map(|e| e.reason).collect();
    assert_eq!(
        reasons,
        [
            "SourceAccessDenied",
            "SourceNotFound",
            "SourceUnavailable",
            "SourceNotResumable",
            "SourceUnavailable",
            "SourceTLSError",
            "InvalidURL",
            "InvalidURL",
        ]
    );
    for error in &errors {
        assert_no_secret(error, &[password, token]);
        assert!(
            error.message.contains("127.0.0.1")
                || error.message.contains("example.com")
                || error.message.contains("exa mple"),
            "{}",
            error.message
        );
    }
}

#[test]
fn the_server_is_usable_from_sync_tests() {
    let (dir, sha) = dir_with_file("sync.img", MIB);
    let server = FileServer::start(dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got = runtime
        .block_on(download(&server.url("/sync.img"), None, fast_options()))
        .unwrap();
    assert_eq!(got.sha256, sha);
    assert_eq!(
        common::file_server::sha256_file(&dir.path().join("sync.img")),
        sha
    );
    assert!(Path::new(server.root()).join("sync.img").exists());
}

fn base64_decode(text: &str) -> String {
    use base64::Engine as _;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap(),
    )
    .unwrap()
}
