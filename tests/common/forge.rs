//! A fake Git forge for commit-check tests: GitHub (statuses, App installation tokens, check
//! runs), Gitea/Forgejo and GitLab commit statuses, on 127.0.0.1 and a free port.
//!
//! It is strict where the real forges are: auth headers per provider, GitHub App JWTs
//! verified (RS256 signature, issuer, lifetime ≤ 10 min), state values, GitHub's 140-character
//! status descriptions without 4-byte characters (422), GitLab's 255 characters and its
//! refusal of a transition to the state a status already has (400, after updating the
//! description, as GitLab does). It records every call with its answer and arrival time, and
//! can be told to answer the next calls with 429, a rate-limit 403 or 500.
//!
//! ```ignore
//! let forge = FakeForge::start(Flavor::GitLab { token: "t".into(), project: "g/s/n".into() });
//! forge.fail_next(Fault::TooManyRequests { retry_after: 1 }, 1);
//! // ... Reporter::new(ForgeConfig { api_url: forge.api_url(), .. })
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// Which forge the server plays, with its credentials and repository.
#[derive(Clone, Debug)]
pub enum Flavor {
    /// GitHub commit statuses with a token (`Authorization: Bearer <token>`).
    GitHub { token: String, repository: String },
    /// GitHub with a GitHub App: JWTs signed by the key whose PKCS#1 public key DER is
    /// `public_key`, exchanged for installation tokens that the other calls need.
    GitHubApp {
        app_id: String,
        installation_id: String,
        public_key: Vec<u8>,
        repository: String,
    },
    /// Gitea/Forgejo (`Authorization: token <token>`), under `/api/v1`.
    Gitea { token: String, repository: String },
    /// GitLab (`PRIVATE-TOKEN`), under `/api/v4`; `project` is the path `group/sub/name`.
    GitLab { token: String, project: String },
}

/// An answer forced on the next calls.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// 429 with `Retry-After: N`.
    TooManyRequests { retry_after: u64 },
    /// 403 with `x-ratelimit-remaining: 0` and a reset N seconds ahead (GitHub's primary
    /// rate limit).
    RateLimitExhausted { reset_in: u64 },
    /// 500.
    ServerError,
}

/// One call the forge received.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    /// The path as sent, still percent-encoded.
    pub path: String,
    pub body: Value,
    pub status: u16,
    pub at: Instant,
}

impl Call {
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Default)]
struct Recorded {
    calls: Vec<Call>,
    faults: VecDeque<Fault>,
    installation_tokens: Vec<String>,
    check_runs: HashMap<u64, Value>,
    next_run: u64,
    /// GitLab: (sha, name) → (state, description).
    gitlab: HashMap<(String, String), (String, String)>,
}

struct Shared {
    flavor: Flavor,
    recorded: Mutex<Recorded>,
}

pub struct FakeForge {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeForge {
    /// Starts the server on its own runtime thread; it stops when dropped.
    pub fn start(flavor: Flavor) -> Self {
        let shared = Arc::new(Shared {
            flavor,
            recorded: Mutex::new(Recorded {
                next_run: 4000,
                ..Default::default()
            }),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let server_shared = shared.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("forge runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let router = axum::Router::new()
                    .fallback(handle)
                    .with_state(server_shared);
                tokio::select! {
                    result = axum::serve(listener, router) => {
                        if let Err(error) = result {
                            eprintln!("fake forge stopped: {error}");
                        }
                    }
                    _ = shutdown_rx => {}
                }
            });
            runtime.shutdown_background();
        });
        Self {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// The API base a reporter is configured with.
    pub fn api_url(&self) -> String {
        let prefix = match self.shared.flavor {
            Flavor::GitHub { .. } | Flavor::GitHubApp { .. } => "",
            Flavor::Gitea { .. } => "/api/v1",
            Flavor::GitLab { .. } => "/api/v4",
        };
        format!("http://{}{prefix}", self.addr)
    }

    /// Answers the next `times` calls with `fault`.
    pub fn fail_next(&self, fault: Fault, times: usize) {
        let mut recorded = self.shared.recorded.lock().unwrap();
        for _ in 0..times {
            recorded.faults.push_back(fault);
        }
    }

    /// Revokes the installation tokens issued so far (as reinstalling the App does).
    pub fn revoke_installation_tokens(&self) {
        let mut recorded = self.shared.recorded.lock().unwrap();
        for token in &mut recorded.installation_tokens {
            token.insert_str(0, "revoked-");
        }
    }

    /// Every call so far, refused ones included.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.recorded.lock().unwrap().calls.clone()
    }

    /// The accepted calls so far, installation-token exchanges left out.
    pub fn accepted(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.accepted() && !c.path.ends_with("/access_tokens"))
            .collect()
    }

    /// GitLab: the (state, description) of the status `name` on `sha`.
    pub fn gitlab_status(&self, sha: &str, name: &str) -> Option<(String, String)> {
        let recorded = self.shared.recorded.lock().unwrap();
        recorded
            .gitlab
            .get(&(sha.to_string(), name.to_string()))
            .cloned()
    }

    /// Polls (without blocking the runtime) until `probe` holds, or panics after `timeout`.
    pub async fn wait_until(&self, what: &str, timeout: Duration, probe: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !probe(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; calls: {:#?}",
                self.calls()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for FakeForge {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn error(status: StatusCode, message: impl Into<Value>) -> (StatusCode, Value) {
    (status, json!({ "message": message.into() }))
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let path = uri.path().to_string();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut recorded = shared.recorded.lock().unwrap();
    let fault = recorded.faults.pop_front();
    let (status, answer, extra): (StatusCode, Value, Vec<(&str, String)>) = match fault {
        Some(Fault::TooManyRequests { retry_after }) => (
            StatusCode::TOO_MANY_REQUESTS,
            json!({"message": "Too many requests"}),
            vec![("retry-after", retry_after.to_string())],
        ),
        Some(Fault::RateLimitExhausted { reset_in }) => {
            let reset = unix_now() + reset_in as i64;
            (
                StatusCode::FORBIDDEN,
                json!({"message": "API rate limit exceeded"}),
                vec![
                    ("x-ratelimit-remaining", "0".into()),
                    ("x-ratelimit-reset", reset.to_string()),
                ],
            )
        }
        Some(Fault::ServerError) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"message": "Server Error"}),
            Vec::new(),
        ),
        None => {
            let (status, answer) = route(
                &shared.flavor,
                &mut recorded,
                &method,
                &path,
                &headers,
                &json,
            );
            (status, answer, Vec::new())
        }
    };
    recorded.calls.push(Call {
        method: method.to_string(),
        path,
        body: json,
        status: status.as_u16(),
        at,
    });
    let mut response = (status, axum::Json(answer)).into_response();
    for (name, value) in extra {
        response
            .headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    response
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn is_sha(value: &str) -> bool {
    value.len() == 40 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

fn route(
    flavor: &Flavor,
    recorded: &mut Recorded,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &Value,
) -> (StatusCode, Value) {
    match flavor {
        Flavor::GitHub { .. } | Flavor::GitHubApp { .. } => {
            github(flavor, recorded, method, path, headers, body)
        }
        Flavor::Gitea { token, repository } => {
            if header(headers, "authorization") != Some(&format!("token {token}")) {
                return error(StatusCode::UNAUTHORIZED, "token is required");
            }
            let Some(rest) = path.strip_prefix(&format!("/api/v1/repos/{repository}/statuses/"))
            else {
                return error(StatusCode::NOT_FOUND, "Not Found");
            };
            if *method != Method::POST || !is_sha(rest) {
                return error(StatusCode::NOT_FOUND, "Not Found");
            }
            let state = body["state"].as_str().unwrap_or("");
            if !["pending", "success", "error", "failure", "warning"].contains(&state) {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("invalid state {state:?}"),
                );
            }
            if body["description"].as_str().unwrap_or("").chars().count() > 255 {
                return error(StatusCode::UNPROCESSABLE_ENTITY, "description too long");
            }
            (StatusCode::CREATED, body.clone())
        }
        Flavor::GitLab { token, project } => {
            if header(headers, "private-token") != Some(token.as_str()) {
                return error(StatusCode::UNAUTHORIZED, "401 Unauthorized");
            }
            let encoded = project.replace('/', "%2F");
            let Some(sha) = path.strip_prefix(&format!("/api/v4/projects/{encoded}/statuses/"))
            else {
                return error(StatusCode::NOT_FOUND, "404 Project Not Found");
            };
            if *method != Method::POST || !is_sha(sha) {
                return error(StatusCode::NOT_FOUND, "404 Not Found");
            }
            let state = body["state"].as_str().unwrap_or("");
            let event = match state {
                "pending" => "enqueue",
                "running" => "run",
                "success" => "success",
                "failed" => "drop",
                "canceled" => "cancel",
                "skipped" => "skip",
                _ => return error(StatusCode::BAD_REQUEST, "state does not have a valid value"),
            };
            let description = body["description"].as_str().unwrap_or("").to_string();
            if description.chars().count() > 255 {
                return error(
                    StatusCode::BAD_REQUEST,
                    json!({"description": ["is too long (maximum is 255 characters)"]}),
                );
            }
            let name = body["name"].as_str().unwrap_or("default").to_string();
            let entry = recorded
                .gitlab
                .entry((sha.to_string(), name))
                .or_insert_with(|| (String::new(), String::new()));
            // GitLab updates the description first, then fails the transition.
            entry.1 = description;
            if entry.0 == state {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("Cannot transition status via :{event} from :{state}"),
                );
            }
            entry.0 = state.to_string();
            (StatusCode::CREATED, body.clone())
        }
    }
}

fn github(
    flavor: &Flavor,
    recorded: &mut Recorded,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &Value,
) -> (StatusCode, Value) {
    if header(headers, "user-agent").is_none_or(str::is_empty) {
        return error(
            StatusCode::FORBIDDEN,
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header",
        );
    }
    if header(headers, "accept") != Some("application/vnd.github+json")
        || header(headers, "x-github-api-version") != Some("2022-11-28")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "expected the GitHub media type and API version headers",
        );
    }
    let bearer = header(headers, "authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let repository = match flavor {
        Flavor::GitHub { repository, .. } | Flavor::GitHubApp { repository, .. } => repository,
        _ => unreachable!(),
    };
    if let Flavor::GitHubApp {
        app_id,
        installation_id,
        public_key,
        ..
    } = flavor
        && path.starts_with("/app/")
    {
        if *method != Method::POST
            || path != format!("/app/installations/{installation_id}/access_tokens")
        {
            return error(StatusCode::NOT_FOUND, "Not Found");
        }
        if let Err(message) = verify_jwt(bearer, app_id, public_key) {
            return error(StatusCode::UNAUTHORIZED, message);
        }
        let token = format!("ghs_token_{}", recorded.installation_tokens.len() + 1);
        recorded.installation_tokens.push(token.clone());
        let expires_at = chrono::Utc::now() + chrono::Duration::hours(1);
        return (
            StatusCode::CREATED,
            json!({"token": token, "expires_at": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}),
        );
    }
    let authorized = match flavor {
        Flavor::GitHub { token, .. } => bearer == token,
        _ => recorded.installation_tokens.iter().any(|t| t == bearer),
    };
    if !authorized {
        return error(StatusCode::UNAUTHORIZED, "Bad credentials");
    }
    let Some(rest) = path.strip_prefix(&format!("/repos/{repository}/")) else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    if let Some(sha) = rest.strip_prefix("statuses/") {
        if *method != Method::POST || !is_sha(sha) {
            return error(StatusCode::NOT_FOUND, "Not Found");
        }
        let state = body["state"].as_str().unwrap_or("");
        if !["error", "failure", "pending", "success"].contains(&state) {
            return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed: state");
        }
        let description = body["description"].as_str().unwrap_or("");
        if description.chars().count() > 140 {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Validation Failed: description is too long (maximum is 140 characters)",
            );
        }
        if description.chars().any(|c| c as u32 > 0xFFFF) {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Validation Failed: description has 4-byte characters",
            );
        }
        return (StatusCode::CREATED, body.clone());
    }
    if !matches!(flavor, Flavor::GitHubApp { .. }) {
        return error(
            StatusCode::FORBIDDEN,
            "Resource not accessible by personal access token",
        );
    }
    let (status, id) = if rest == "check-runs" && *method == Method::POST {
        if body["name"].as_str().is_none_or(str::is_empty)
            || !body["head_sha"].as_str().is_some_and(is_sha)
        {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Validation Failed: name and head_sha are required",
            );
        }
        recorded.next_run += 1;
        (StatusCode::CREATED, recorded.next_run)
    } else if let Some(id) = rest.strip_prefix("check-runs/")
        && *method == Method::PATCH
    {
        match id.parse::<u64>() {
            Ok(id) if recorded.check_runs.contains_key(&id) => (StatusCode::OK, id),
            _ => return error(StatusCode::NOT_FOUND, "Not Found"),
        }
    } else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    if let Err(message) = validate_check_run(body) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, message);
    }
    let mut run = recorded
        .check_runs
        .remove(&id)
        .unwrap_or_else(|| json!({"id": id}));
    for (key, value) in body.as_object().unwrap() {
        run[key] = value.clone();
    }
    recorded.check_runs.insert(id, run.clone());
    (status, run)
}

fn validate_check_run(body: &Value) -> Result<(), String> {
    let status = body["status"].as_str();
    if let Some(status) = status
        && !["queued", "in_progress", "completed"].contains(&status)
    {
        return Err(format!("Validation Failed: status {status:?}"));
    }
    let conclusion = body["conclusion"].as_str();
    if let Some(conclusion) = conclusion
        && ![
            "action_required",
            "cancelled",
            "failure",
            "neutral",
            "success",
            "skipped",
            "stale",
            "timed_out",
        ]
        .contains(&conclusion)
    {
        return Err(format!("Validation Failed: conclusion {conclusion:?}"));
    }
    if status == Some("completed") && conclusion.is_none() {
        return Err("Validation Failed: a completed check run needs a conclusion".into());
    }
    if let Some(output) = body.get("output") {
        if output["title"].as_str().is_none_or(str::is_empty)
            || output["summary"].as_str().is_none_or(str::is_empty)
        {
            return Err("Validation Failed: output needs a title and a summary".into());
        }
        for field in ["summary", "text"] {
            if output[field].as_str().unwrap_or("").chars().count() > 65535 {
                return Err(format!("Validation Failed: output.{field} is too long"));
            }
        }
    }
    Ok(())
}

/// Verifies a GitHub App JWT as GitHub does: RS256 with the App's key, `iss` the App ID,
/// issued in the past, not expired, at most 10 minutes long.
fn verify_jwt(jwt: &str, app_id: &str, public_key: &[u8]) -> Result<(), String> {
    let (input, signature) = jwt
        .rsplit_once('.')
        .ok_or("A JSON web token could not be decoded")?;
    let (header, claims) = input
        .split_once('.')
        .ok_or("A JSON web token could not be decoded")?;
    let decode = |part: &str| -> Result<Value, String> {
        let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    };
    let header = decode(header)?;
    if header["alg"] != "RS256" {
        return Err(format!("unsupported alg {}", header["alg"]));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|e| e.to_string())?;
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_key)
        .verify(input.as_bytes(), &signature)
        .map_err(|_| "'Issuer' claim ('iss') must be an Integer: signature does not verify")?;
    let claims = decode(claims)?;
    let iss = match &claims["iss"] {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => return Err(format!("bad iss {other}")),
    };
    if iss != app_id {
        return Err(format!("iss {iss} is not the App"));
    }
    let (iat, exp) = (
        claims["iat"].as_i64().ok_or("no iat")?,
        claims["exp"].as_i64().ok_or("no exp")?,
    );
    let now = unix_now();
    if iat > now + 5 || exp <= now {
        return Err("'Expiration time' claim ('exp') is too far in the future or expired".into());
    }
    if exp - iat > 600 {
        return Err("the JWT lives longer than 10 minutes".into());
    }
    Ok(())
}
