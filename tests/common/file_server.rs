//! A real HTTP/1.1 (and HTTPS) file server for tests, on 127.0.0.1 and a free port.
//!
//! It runs on its own tokio runtime in a background thread, so sync and async tests use it
//! alike, and stops when the [`FileServer`] is dropped. It serves the files under a root
//! directory, streamed from disk (constant memory, any size), with `Accept-Ranges`, `ETag`,
//! `Last-Modified` and `Range`/`If-Range` per RFC 9110, and injects faults per path prefix
//! (see [`Behavior`]): cut, stalled or held connections, no range support, chunked bodies,
//! error statuses, redirects, basic auth. It counts requests, connections and body bytes sent per
//! path.
//!
//! ```ignore
//! let dir = tempfile::tempdir().unwrap();
//! let sha = file_server::write_random_file(&dir.path().join("disk.img"), 4 << 20, 1);
//! let server = FileServer::start(dir.path());
//! server.set_behavior("/disk.img", Behavior::default().cut_after(1 << 20, 2));
//! let url = server.url("/disk.img");
//! ```

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt as _;
use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncSeekExt as _, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::io::ReaderStream;

/// How the server answers requests for a path prefix (or all paths).
///
/// The fault counters (`first_requests`, `times`) count the requests that matched this
/// behaviour since it was set, starting at 0: `cut_after(n, 2)` cuts the responses to the
/// first two requests.
#[derive(Debug, Clone)]
pub struct Behavior {
    /// Advertise `Accept-Ranges: bytes` and honour `Range`/`If-Range` (default true). When
    /// false the server sends no `Accept-Ranges` and answers every GET with the whole file.
    pub ranges: bool,
    /// Send a strong `ETag` (default true).
    pub etag: bool,
    /// Leave the `ETag` out of 206 parts (a broken cache in front of the server).
    pub etag_only_on_full: bool,
    /// Send `Last-Modified` (default true).
    pub last_modified: bool,
    /// Chunked transfer coding, no `Content-Length` (default false).
    pub chunked: bool,
    /// Cut the connection after this many body bytes, for the first N requests.
    pub cut_after: Option<(u64, u64)>,
    /// Stop sending (without closing) after this many body bytes, for the first N requests.
    pub stall_after: Option<(u64, u64)>,
    /// Pause after this many body bytes, for the first N requests, until
    /// [`FileServer::release_held`]; then send the rest.
    pub hold_after: Option<(u64, u64)>,
    /// After this many body bytes, send one byte per interval (every request).
    pub drip_after: Option<(u64, Duration)>,
    /// Answer the first `times` requests with this status.
    pub fail: Option<Fail>,
    /// Answer with this redirect status and `Location`.
    pub redirect: Option<(u16, String)>,
    /// `Content-Disposition` header of file responses.
    pub content_disposition: Option<String>,
    /// Require HTTP basic auth with this user and password (401 otherwise).
    pub basic_auth: Option<(String, String)>,
    /// Send at most this many body bytes per second (every response): a server far away.
    pub rate: Option<u64>,
}

/// An injected error status.
#[derive(Debug, Clone)]
pub struct Fail {
    pub status: u16,
    /// How many requests fail; `u64::MAX` for all.
    pub times: u64,
    pub retry_after: Option<String>,
}

impl Default for Behavior {
    fn default() -> Self {
        Self {
            ranges: true,
            etag: true,
            etag_only_on_full: false,
            last_modified: true,
            chunked: false,
            cut_after: None,
            stall_after: None,
            hold_after: None,
            drip_after: None,
            fail: None,
            redirect: None,
            content_disposition: None,
            basic_auth: None,
            rate: None,
        }
    }
}

impl Behavior {
    /// No `Accept-Ranges`, `Range` ignored (whole file, 200). Validators are still sent;
    /// combine with [`no_validators`](Self::no_validators) for a server that sends neither.
    pub fn no_ranges(mut self) -> Self {
        self.ranges = false;
        self
    }
    /// No `ETag` and no `Last-Modified`.
    pub fn no_validators(mut self) -> Self {
        self.etag = false;
        self.last_modified = false;
        self
    }
    pub fn etag_on_first_only(mut self) -> Self {
        self.etag_only_on_full = true;
        self
    }

    pub fn no_etag(mut self) -> Self {
        self.etag = false;
        self
    }
    /// Chunked transfer coding without `Content-Length`.
    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }
    /// Cut the connection after `bytes` body bytes of each of the first `first_requests`
    /// responses.
    pub fn cut_after(mut self, bytes: u64, first_requests: u64) -> Self {
        self.cut_after = Some((bytes, first_requests));
        self
    }
    /// Stop sending after `bytes` body bytes (the connection stays open, idle) for the first
    /// `first_requests` responses.
    pub fn stall_after(mut self, bytes: u64, first_requests: u64) -> Self {
        self.stall_after = Some((bytes, first_requests));
        self
    }
    /// Pause after `bytes` body bytes of each of the first `first_requests` responses until
    /// [`FileServer::release_held`] is called; the connection stays open meanwhile, and the
    /// rest of the file follows. Lets a test look at a transfer in the middle, without timing.
    pub fn hold_after(mut self, bytes: u64, first_requests: u64) -> Self {
        self.hold_after = Some((bytes, first_requests));
        self
    }
    /// At most `bytes_per_second` body bytes per second, every response.
    pub fn rate(mut self, bytes_per_second: u64) -> Self {
        self.rate = Some(bytes_per_second.max(1));
        self
    }
    /// After `bytes` body bytes, send one byte every `every`: a connection that never idles
    /// long enough for a read timeout, and never gets anywhere.
    pub fn drip_after(mut self, bytes: u64, every: Duration) -> Self {
        self.drip_after = Some((bytes, every));
        self
    }
    /// Answer the first `times` requests with `status` (`u64::MAX`: always).
    pub fn fail(mut self, status: u16, times: u64) -> Self {
        self.fail = Some(Fail {
            status,
            times,
            retry_after: None,
        });
        self
    }
    /// Like [`fail`](Self::fail), with a `Retry-After` header.
    pub fn fail_with_retry_after(mut self, status: u16, times: u64, retry_after: &str) -> Self {
        self.fail = Some(Fail {
            status,
            times,
            retry_after: Some(retry_after.to_string()),
        });
        self
    }
    /// Answer `302 Found` with `Location: location` (absolute, or a path on this server).
    pub fn redirect(self, location: &str) -> Self {
        self.redirect_with(302, location)
    }
    pub fn redirect_with(mut self, status: u16, location: &str) -> Self {
        self.redirect = Some((status, location.to_string()));
        self
    }
    pub fn content_disposition(mut self, value: &str) -> Self {
        self.content_disposition = Some(value.to_string());
        self
    }
    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        self.basic_auth = Some((user.to_string(), password.to_string()));
        self
    }
}

/// Counters of one request path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathStats {
    /// Requests received.
    pub requests: u64,
    /// Requests with a `Range` header.
    pub range_requests: u64,
    /// Body bytes of file responses handed to the connection.
    pub bytes_sent: u64,
    /// Status of every response, in order.
    pub statuses: Vec<u16>,
}

/// One request, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub accept_encoding: Option<String>,
    pub authorization: Option<String>,
    pub user_agent: Option<String>,
    pub status: u16,
}

struct Rule {
    behavior: Behavior,
    matched: AtomicU64,
}

struct Shared {
    root: PathBuf,
    default_rule: Mutex<Arc<Rule>>,
    rules: Mutex<Vec<(String, Arc<Rule>)>>,
    stats: Mutex<HashMap<String, PathStats>>,
    log: Mutex<Vec<RequestRecord>>,
    connections: AtomicU64,
    /// Counts [`FileServer::release_held`] calls: a body held since epoch `n` goes on once
    /// this is above `n`.
    released: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn rule_for(&self, path: &str) -> Arc<Rule> {
        let rules = lock(&self.rules);
        rules
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, rule)| rule.clone())
            .unwrap_or_else(|| lock(&self.default_rule).clone())
    }

    fn with_stats(&self, path: &str, update: impl FnOnce(&mut PathStats)) {
        update(lock(&self.stats).entry(path.to_string()).or_default());
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running file server; stops when dropped.
pub struct FileServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: Option<String>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FileServer {
    /// Plain HTTP server for the files under `root`.
    pub fn start(root: impl Into<PathBuf>) -> Self {
        Self::spawn(root.into(), None, "127.0.0.1")
    }

    /// Plain HTTP server on `ip` (the test node's address, which pods reach).
    pub fn start_on(root: impl Into<PathBuf>, ip: &str) -> Self {
        Self::spawn(root.into(), None, ip)
    }

    /// HTTPS server for the files under `root`, with a certificate for `127.0.0.1` and
    /// `localhost` signed by a CA generated for this server (see [`ca_pem`](Self::ca_pem)).
    pub fn start_https(root: impl Into<PathBuf>) -> Self {
        let ca = TestCa::generate();
        let (cert_der, key_der) = ca.issue_server_cert(&["127.0.0.1", "localhost"]);
        image_catalog::tls::install_crypto_provider();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert_der],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into()),
            )
            .expect("server certificate is usable");
        Self::spawn(
            root.into(),
            Some((Arc::new(config), ca.cert_pem)),
            "127.0.0.1",
        )
    }

    fn spawn(root: PathBuf, tls: Option<(Arc<rustls::ServerConfig>, String)>, ip: &str) -> Self {
        let shared = Arc::new(Shared {
            root,
            default_rule: Mutex::new(Arc::new(Rule {
                behavior: Behavior::default(),
                matched: AtomicU64::new(0),
            })),
            rules: Mutex::new(Vec::new()),
            stats: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            connections: AtomicU64::new(0),
            released: tokio::sync::watch::Sender::new(0),
        });
        let listener =
            std::net::TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("listener address");
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let ca_pem = tls.as_ref().map(|(_, pem)| pem.clone());
        let server_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("file-server-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("file server runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("tokio listener");
                    let router = axum::Router::new()
                        .fallback(handle)
                        .with_state(server_shared.clone());
                    let listener = CountingListener {
                        tcp: listener,
                        tls: tls.map(|(config, _)| config),
                        shared: server_shared,
                    };
                    tokio::select! {
                        result = axum::serve(listener, router) => {
                            if let Err(error) = result {
                                eprintln!("file server stopped: {error}");
                            }
                        }
                        _ = shutdown_rx => {}
                    }
                });
                // Open connections (stalled bodies) are dropped, not awaited.
                runtime.shutdown_background();
            })
            .expect("file server thread");
        Self {
            shared,
            addr,
            ca_pem,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Lets every response held by [`Behavior::hold_after`] so far send the rest of its file.
    pub fn release_held(&self) {
        self.shared.released.send_modify(|epoch| *epoch += 1);
    }

    pub fn is_https(&self) -> bool {
        self.ca_pem.is_some()
    }

    /// `http(s)://<ip>:<port>`
    pub fn base_url(&self) -> String {
        let scheme = if self.is_https() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The URL of `path` (with or without a leading `/`; may include a query).
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base_url(), path.trim_start_matches('/'))
    }

    /// The URL of `path` with `user:password@` in it.
    pub fn url_with_credentials(&self, path: &str, user: &str, password: &str) -> String {
        let scheme = if self.is_https() { "https" } else { "http" };
        format!(
            "{scheme}://{user}:{password}@{}/{}",
            self.addr,
            path.trim_start_matches('/')
        )
    }

    /// The URL of `path` with host `localhost` instead of `127.0.0.1`.
    pub fn localhost_url(&self, path: &str) -> String {
        let scheme = if self.is_https() { "https" } else { "http" };
        format!(
            "{scheme}://localhost:{}/{}",
            self.addr.port(),
            path.trim_start_matches('/')
        )
    }

    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// PEM of the CA that signed the server certificate (HTTPS only).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The CA PEM, base64-encoded as a CVI's `caBundle` (HTTPS only).
    pub fn ca_bundle_base64(&self) -> Option<String> {
        self.ca_pem
            .as_ref()
            .map(|pem| base64::engine::general_purpose::STANDARD.encode(pem))
    }

    /// Behaviour for paths without a more specific one.
    pub fn set_default_behavior(&self, behavior: Behavior) {
        *lock(&self.shared.default_rule) = Arc::new(Rule {
            behavior,
            matched: AtomicU64::new(0),
        });
    }

    /// Behaviour for paths starting with `prefix` (the longest matching prefix wins);
    /// replaces an earlier one for the same prefix and restarts its fault counters.
    pub fn set_behavior(&self, prefix: &str, behavior: Behavior) {
        let mut rules = lock(&self.shared.rules);
        rules.retain(|(existing, _)| existing != prefix);
        rules.push((
            prefix.to_string(),
            Arc::new(Rule {
                behavior,
                matched: AtomicU64::new(0),
            }),
        ));
    }

    /// Back to default behaviour everywhere.
    pub fn clear_behaviors(&self) {
        lock(&self.shared.rules).clear();
        self.set_default_behavior(Behavior::default());
    }

    /// Counters of one request path (exactly as requested, without the query).
    pub fn stats(&self, path: &str) -> PathStats {
        lock(&self.shared.stats)
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    pub fn requests(&self, path: &str) -> u64 {
        self.stats(path).requests
    }

    pub fn bytes_sent(&self, path: &str) -> u64 {
        self.stats(path).bytes_sent
    }

    /// Body bytes sent for all paths.
    pub fn total_bytes_sent(&self) -> u64 {
        lock(&self.shared.stats)
            .values()
            .map(|stats| stats.bytes_sent)
            .sum()
    }

    /// TCP connections accepted (for HTTPS, including failed handshakes).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Every request so far, in order of completion of the response headers.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).clone()
    }

    pub fn reset_stats(&self) {
        lock(&self.shared.stats).clear();
        lock(&self.shared.log).clear();
        self.shared.connections.store(0, Ordering::SeqCst);
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A CA for test certificates.
pub struct TestCa {
    pub cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn generate() -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "image-catalog test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses): (certificate DER,
    /// PKCS#8 key DER).
    pub fn issue_server_cert(
        &self,
        names: &[&str],
    ) -> (rustls::pki_types::CertificateDer<'static>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params = rcgen::CertificateParams::new(
            names
                .iter()
                .map(|name| name.to_string())
                .collect::<Vec<_>>(),
        )
        .expect("server params");
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        (cert.der().clone(), key.serialize_der())
    }
}

/// Writes `size` pseudo-random bytes (determined by `seed`) to `path`, in 1 MiB blocks, and
/// returns their SHA-256 (hex).
pub fn write_random_file(path: &Path, size: u64, seed: u64) -> String {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create file"));
    let mut hasher = sha2::Sha256::new();
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        for word in block[..n].chunks_mut(8) {
            // splitmix64
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            word.copy_from_slice(&z.to_le_bytes()[..word.len()]);
        }
        file.write_all(&block[..n]).expect("write file");
        hasher.update(&block[..n]);
        left -= n as u64;
    }
    file.flush().expect("flush file");
    hex::encode(hasher.finalize())
}

/// SHA-256 (hex) of a file, read in blocks.
pub fn sha256_file(path: &Path) -> String {
    let mut file = std::fs::File::open(path).expect("open file");
    let mut hasher = sha2::Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut block).expect("read file");
        if n == 0 {
            break;
        }
        hasher.update(&block[..n]);
    }
    hex::encode(hasher.finalize())
}

// ----------------------------------------------------------------------------------------
// Request handling

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response<Body> {
    let path = request.uri().path().to_string();
    let headers = request.headers();
    let header = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    let mut record = RequestRecord {
        method: request.method().to_string(),
        path: path.clone(),
        query: request.uri().query().map(str::to_string),
        range: header(header::RANGE),
        if_range: header(header::IF_RANGE),
        accept_encoding: header(header::ACCEPT_ENCODING),
        authorization: header(header::AUTHORIZATION),
        user_agent: header(header::USER_AGENT),
        status: 0,
    };
    shared.with_stats(&path, |stats| {
        stats.requests += 1;
        if record.range.is_some() {
            stats.range_requests += 1;
        }
    });
    let response = respond(&shared, &path, request.method(), headers).await;
    record.status = response.status().as_u16();
    shared.with_stats(&path, |stats| stats.statuses.push(record.status));
    lock(&shared.log).push(record);
    response
}

async fn respond(
    shared: &Arc<Shared>,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Response<Body> {
    let rule = shared.rule_for(path);
    let index = rule.matched.fetch_add(1, Ordering::SeqCst);
    let behavior = &rule.behavior;

    if let Some((user, password)) = &behavior.basic_auth {
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header(header::WWW_AUTHENTICATE, "Basic realm=\"test\"")
                .body(Body::from("unauthorized\n"))
                .expect("response");
        }
    }
    if let Some(fail) = &behavior.fail
        && index < fail.times
    {
        let mut response =
            Response::builder().status(StatusCode::from_u16(fail.status).expect("valid status"));
        if let Some(retry_after) = &fail.retry_after {
            response = response.header(header::RETRY_AFTER, retry_after);
        }
        return response
            .body(Body::from(format!("injected failure {}\n", fail.status)))
            .expect("response");
    }
    if let Some((status, location)) = &behavior.redirect {
        return Response::builder()
            .status(StatusCode::from_u16(*status).expect("valid status"))
            .header(header::LOCATION, location)
            .body(Body::empty())
            .expect("response");
    }
    if method != Method::GET && method != Method::HEAD {
        return Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "GET, HEAD")
            .body(Body::empty())
            .expect("response");
    }

    let Some(file_path) = resolve(&shared.root, path) else {
        return not_found();
    };
    let Ok(mut file) = tokio::fs::File::open(&file_path).await else {
        return not_found();
    };
    let Ok(metadata) = file.metadata().await else {
        return not_found();
    };
    if !metadata.is_file() {
        return not_found();
    }
    let len = metadata.len();
    let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let etag = {
        use std::os::unix::fs::MetadataExt as _;
        let nanos = modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        format!("\"{:x}-{len:x}-{nanos:x}\"", metadata.ino())
    };
    let last_modified = http_date(modified);

    // RFC 9110 §14.2 and §13.1.5: a Range is honoured only if If-Range (when present)
    // matches the current representation by strong comparison.
    let mut range = None;
    if behavior.ranges
        && method == Method::GET
        && let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok())
    {
        let if_range_ok = match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
            None => true,
            Some(tag) if tag.starts_with('"') => behavior.etag && tag == etag,
            Some(tag) if tag.starts_with("W/") => false,
            Some(date) => behavior.last_modified && date == last_modified,
        };
        if if_range_ok {
            match parse_range(value, len) {
                RangeRequest::Satisfiable(start, end) => range = Some((start, end)),
                RangeRequest::Unsatisfiable => {
                    return Response::builder()
                        .status(StatusCode::RANGE_NOT_SATISFIABLE)
                        .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                        .body(Body::empty())
                        .expect("response");
                }
                RangeRequest::Ignored => {}
            }
        }
    }

    let (status, start, body_len) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        None => (StatusCode::OK, 0, len),
    };
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if behavior.ranges {
        response = response.header(header::ACCEPT_RANGES, "bytes");
    }
    if behavior.etag && !(behavior.etag_only_on_full && range.is_some()) {
        response = response.header(header::ETAG, &etag);
    }
    if behavior.last_modified {
        response = response.header(header::LAST_MODIFIED, &last_modified);
    }
    if let Some(disposition) = &behavior.content_disposition {
        response = response.header(header::CONTENT_DISPOSITION, disposition);
    }
    if range.is_some() {
        response = response.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", start + body_len - 1),
        );
    }
    if !behavior.chunked {
        response = response.header(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    }
    if method == Method::HEAD {
        return response.body(Body::empty()).expect("response");
    }
    if start > 0 && file.seek(io::SeekFrom::Start(start)).await.is_err() {
        return not_found();
    }

    let fault = match (
        behavior.cut_after,
        behavior.stall_after,
        behavior.hold_after,
    ) {
        (Some((bytes, first)), _, _) if index < first => Fault::Cut(bytes),
        (_, Some((bytes, first)), _) if index < first => Fault::Stall(bytes),
        (_, _, Some((bytes, first))) if index < first => {
            Fault::Hold(bytes, *shared.released.borrow())
        }
        _ => match behavior.drip_after {
            Some((bytes, every)) => Fault::Drip(bytes, every),
            None => Fault::None,
        },
    };
    let body = BodyState {
        inner: ReaderStream::with_capacity(file.take(body_len), 64 * 1024),
        sent: 0,
        fault,
        rest: None,
        done: false,
        shared: shared.clone(),
        path: path.to_string(),
        rate: behavior
            .rate
            .map(|rate| (rate, tokio::time::Instant::now())),
    };
    let stream = futures::stream::unfold(body, BodyState::next);
    response.body(Body::from_stream(stream)).expect("response")
}

fn not_found() -> Response<Body> {
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .body(Body::from("not found\n"))
        .expect("response")
}

/// The file for a URL path under `root`; None for paths leaving it.
fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(url_path);
    let relative = Path::new(decoded.trim_start_matches('/'));
    if relative
        .components()
        .any(|component| !matches!(component, Component::Normal(_)))
    {
        return None;
    }
    Some(root.join(relative))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = bytes
            .get(at + 1..at + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[at], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                at += 3;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

enum RangeRequest {
    /// First and last byte, inclusive.
    Satisfiable(u64, u64),
    Unsatisfiable,
    /// Not a single byte range we serve: answer with the whole file.
    Ignored,
}

/// One `bytes=` range (`a-b`, `a-`, `-n`); several ranges or bad syntax are ignored, which
/// RFC 9110 allows.
fn parse_range(value: &str, len: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Ignored;
    };
    if spec.contains(',') {
        return RangeRequest::Ignored;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Ignored;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let Ok(suffix) = last.parse::<u64>() else {
            return RangeRequest::Ignored;
        };
        if suffix == 0 || len == 0 {
            return RangeRequest::Unsatisfiable;
        }
        return RangeRequest::Satisfiable(len.saturating_sub(suffix), len - 1);
    }
    let Ok(first) = first.parse::<u64>() else {
        return RangeRequest::Ignored;
    };
    let last = if last.is_empty() {
        u64::MAX
    } else {
        match last.parse::<u64>() {
            Ok(last) if last >= first => last,
            _ => return RangeRequest::Ignored,
        }
    };
    if first >= len {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Satisfiable(first, last.min(len - 1))
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn http_date(time: SystemTime) -> String {
    let seconds = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let days = (seconds / 86_400) as i64;
    let rem = seconds % 86_400;
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!(
        "{weekday}, {day:02} {month} {year} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[derive(Clone, Copy)]
enum Fault {
    None,
    Cut(u64),
    Stall(u64),
    /// Pause at this many bytes until the release epoch is above the one given.
    Hold(u64, u64),
    /// From this many bytes on, one byte per interval.
    Drip(u64, Duration),
}

struct BodyState {
    inner: ReaderStream<tokio::io::Take<tokio::fs::File>>,
    sent: u64,
    fault: Fault,
    /// The part of a chunk beyond a fault's byte limit.
    rest: Option<Bytes>,
    done: bool,
    shared: Arc<Shared>,
    path: String,
    /// The response's pace: bytes per second, and when it started.
    rate: Option<(u64, tokio::time::Instant)>,
}

impl BodyState {
    async fn next(mut self) -> Option<(io::Result<Bytes>, Self)> {
        if self.done {
            return None;
        }
        if let Fault::Hold(at, epoch) = self.fault
            && self.sent >= at
        {
            let mut released = self.shared.released.subscribe();
            // The sender lives as long as the server.
            let _ = released.wait_for(|now| *now > epoch).await;
            self.fault = Fault::None;
        }
        if let Fault::Drip(at, every) = self.fault
            && self.sent >= at
        {
            tokio::time::sleep(every).await;
            let mut chunk = match self.rest.take() {
                Some(rest) => rest,
                None => match self.inner.next().await? {
                    Ok(chunk) => chunk,
                    Err(error) => return Some((Err(error), self)),
                },
            };
            if chunk.len() > 1 {
                self.rest = Some(chunk.split_off(1));
            }
            self.sent += chunk.len() as u64;
            let len = chunk.len() as u64;
            self.shared
                .with_stats(&self.path, |stats| stats.bytes_sent += len);
            return Some((Ok(chunk), self));
        }
        let limit = match self.fault {
            Fault::None | Fault::Drip(..) => None,
            Fault::Cut(at) | Fault::Stall(at) | Fault::Hold(at, _) => Some(at),
        };
        if let Some(limit) = limit
            && self.sent >= limit
        {
            // Let the connection flush what was sent before the fault.
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Fault::Stall(_) = self.fault {
                futures::future::pending::<()>().await;
            }
            self.done = true;
            let error = io::Error::new(io::ErrorKind::ConnectionAborted, "injected cut");
            return Some((Err(error), self));
        }
        let mut chunk = match self.rest.take() {
            Some(rest) => rest,
            None => match self.inner.next().await? {
                Ok(chunk) => chunk,
                Err(error) => {
                    self.done = true;
                    return Some((Err(error), self));
                }
            },
        };
        if let Some(limit) = limit {
            let room = limit - self.sent;
            if chunk.len() as u64 > room {
                // A held body sends the rest later; a cut or stalled one never does.
                self.rest = Some(chunk.split_off(room as usize));
            }
        }
        if let Some((rate, started)) = self.rate {
            // Small pieces, so that a cut connection has sent no more than its pace allows.
            if chunk.len() > 16 * 1024 {
                let rest = chunk.split_off(16 * 1024);
                self.rest = Some(match self.rest.take() {
                    Some(later) => [rest, later].concat().into(),
                    None => rest,
                });
            }
            let due = started + Duration::from_secs_f64(self.sent as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
        self.sent += chunk.len() as u64;
        let len = chunk.len() as u64;
        self.shared
            .with_stats(&self.path, |stats| stats.bytes_sent += len);
        Some((Ok(chunk), self))
    }
}

// ----------------------------------------------------------------------------------------
// Listener: plain TCP or TLS over rustls (no tokio-rustls among the dependencies)

struct CountingListener {
    tcp: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shared: Arc<Shared>,
}

impl axum::serve::Listener for CountingListener {
    type Io = MaybeTls;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, addr) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            self.shared.connections.fetch_add(1, Ordering::SeqCst);
            let _ = tcp.set_nodelay(true);
            let Some(config) = &self.tls else {
                return (MaybeTls::Plain(tcp), addr);
            };
            let Ok(mut conn) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            // Back-pressure comes from `poll_write` refusing data while records are
            // pending, not from the plaintext buffer.
            conn.set_buffer_limit(None);
            return (
                MaybeTls::Tls(Box::new(TlsStream {
                    tcp,
                    conn,
                    tcp_eof: false,
                    closing: false,
                })),
                addr,
            );
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A rustls listener for the other test servers (the Git smart-HTTPS server).
pub struct TlsListener {
    tcp: TcpListener,
    config: Arc<rustls::ServerConfig>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        Self { tcp, config }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = MaybeTls;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let Ok(mut conn) = rustls::ServerConnection::new(self.config.clone()) else {
                continue;
            };
            conn.set_buffer_limit(None);
            let stream = TlsStream {
                tcp,
                conn,
                tcp_eof: false,
                closing: false,
            };
            return (MaybeTls::Tls(Box::new(stream)), addr);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A rustls server configuration with a certificate for `names` from a new CA, and that
/// CA's PEM.
pub fn tls_config(names: &[&str]) -> (Arc<rustls::ServerConfig>, String) {
    let ca = TestCa::generate();
    let (cert_der, key_der) = ca.issue_server_cert(names);
    image_catalog::tls::install_crypto_provider();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert_der],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into()),
        )
        .expect("server certificate is usable");
    (Arc::new(config), ca.cert_pem)
}

pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A server-side TLS stream: rustls driven over a tokio `TcpStream`.
pub struct TlsStream {
    tcp: TcpStream,
    conn: rustls::ServerConnection,
    tcp_eof: bool,
    closing: bool,
}

/// `std::io` view of the TCP stream inside a poll: `Pending` becomes `WouldBlock`.
struct SyncIo<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for SyncIo<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut read_buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.tcp).poll_read(self.cx, &mut read_buf) {
            Poll::Ready(Ok(())) => Ok(read_buf.filled().len()),
            Poll::Ready(Err(error)) => Err(error),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for SyncIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.tcp).poll_flush(self.cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl TlsStream {
    /// Writes the pending TLS records to the socket.
    fn write_records(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let mut io = SyncIo {
                tcp: &mut self.tcp,
                cx,
            };
            match self.conn.write_tls(&mut io) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Handshake messages and alerts go out before waiting for more input.
            if let Poll::Ready(Err(error)) = this.write_records(cx) {
                return Poll::Ready(Err(error));
            }
            match this.conn.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: an ordinary EOF for HTTP.
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Ok(()));
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
            if this.tcp_eof {
                return Poll::Ready(Ok(()));
            }
            let mut io = SyncIo {
                tcp: &mut this.tcp,
                cx,
            };
            match this.conn.read_tls(&mut io) {
                Ok(0) => this.tcp_eof = true,
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(error) => return Poll::Ready(Err(error)),
            }
            if let Err(error) = this.conn.process_new_packets() {
                // Send the alert, if the socket takes it.
                let _ = this.write_records(cx);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)));
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Accept new data only when earlier records are out: constant memory.
        match this.write_records(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Ready(Ok(())) => {}
        }
        let n = this.conn.writer().write(buf)?;
        if let Poll::Ready(Err(error)) = this.write_records(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.writer().flush()?;
        match this.write_records(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.tcp).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.conn.send_close_notify();
            this.closing = true;
        }
        match this.write_records(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.tcp).poll_shutdown(cx),
            other => other,
        }
    }
}
