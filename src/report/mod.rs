//! Commit checks posted to Git forges: GitHub commit statuses or check runs (GitHub App),
//! Gitea/Forgejo and GitLab commit statuses.
//!
//! [`Reporter::report`] only queues: one tokio task per reporter delivers, one call at a
//! time, so a slow or failing forge never blocks a sync. The queue keeps the newest update
//! per (commit, context) only, updates equal to the last one delivered are not sent again,
//! and the task waits out rate limits and backs off on failures.

mod jwt;
mod providers;
pub mod publish;
mod retry;
mod text;

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

use providers::{Auth, Delivery, Forge, provider_name, sensitive};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckState {
    Pending,
    Success,
    Failure,
    Error,
    /// A newer commit replaced this one before its images were ready.
    Superseded,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRow {
    pub name: String,
    pub phase: String,
    pub progress: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitCheck {
    pub commit: String,
    pub context: String,
    pub state: CheckState,
    pub description: String,
    pub details: Vec<ImageRow>,
    pub target_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    GitHubStatus,
    GitHubCheckRun,
    Gitea,
    GitLab,
}

#[derive(Clone)]
pub enum ForgeCredentials {
    Token(String),
    GitHubApp {
        app_id: String,
        installation_id: String,
        private_key_pem: String,
    },
}

#[derive(Clone)]
pub struct ForgeConfig {
    pub kind: ProviderKind,
    pub api_url: String,
    pub repository: String,
    pub credentials: ForgeCredentials,
    pub ca_pem: Option<Vec<u8>>,
}

/// Why a reporter cannot be set up. The messages say what to fix and never contain tokens
/// or keys.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the API URL {url:?} is not usable: {reason}")]
    ApiUrl { url: String, reason: String },
    #[error("the API URL must not contain credentials; put the token in the Secret")]
    ApiUrlCredentials,
    #[error("the repository {repository:?} is not usable: {reason}")]
    Repository { repository: String, reason: String },
    #[error("the GitHub App private key: {0}")]
    PrivateKey(String),
    #[error("{0}")]
    Credentials(String),
    #[error("the CA bundle (ca.crt): {0}")]
    Ca(String),
    #[error("building the HTTP client: {0}")]
    HttpClient(String),
}

/// At most this many (commit, context) updates wait for delivery; beyond, the oldest go.
const MAX_QUEUED: usize = 1024;
/// Delivered updates remembered for de-duplication.
const REMEMBERED: usize = 4096;
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

type Key = (String, String);

/// The short commit id people recognise (12 characters), for logs and messages.
pub fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// A map that forgets its oldest entries beyond `capacity`, so that per-commit state stays
/// bounded in a daemon that runs for months.
struct Bounded<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }
    fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }
    fn insert(&mut self, key: K, value: V) {
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
    fn remove(&mut self, key: &K) {
        if self.map.remove(key).is_some() {
            self.order.retain(|k| k != key);
        }
    }
}

/// Updates waiting for delivery: the newest per (commit, context), in first-queued order.
#[derive(Default)]
struct Queue {
    items: HashMap<Key, CommitCheck>,
    order: VecDeque<Key>,
    closed: bool,
}

impl Queue {
    /// Queues `check`, replacing a waiting update of the same (commit, context) in place.
    fn push(&mut self, check: CommitCheck) -> Option<CommitCheck> {
        let key = (check.commit.clone(), check.context.clone());
        if self.items.insert(key.clone(), check).is_some() {
            return None;
        }
        self.order.push_back(key);
        if self.order.len() > MAX_QUEUED {
            let old = self.order.pop_front()?;
            return self.items.remove(&old);
        }
        None
    }
    /// Puts back an update that failed, unless a newer one for its key arrived meanwhile.
    fn requeue(&mut self, key: Key, check: CommitCheck) {
        if !self.items.contains_key(&key) {
            self.items.insert(key.clone(), check);
            self.order.push_back(key);
        }
    }
    fn pop(&mut self) -> Option<(Key, CommitCheck)> {
        while let Some(key) = self.order.pop_front() {
            if let Some(check) = self.items.remove(&key) {
                return Some((key, check));
            }
        }
        None
    }
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
}

/// Owned by all clones of a reporter; dropping the last one lets the task finish what is
/// queued and stop.
struct Inner {
    shared: Arc<Shared>,
    /// The forge, until the delivery task takes it (at the first report, inside a runtime).
    forge: Mutex<Option<Forge>>,
    provider: &'static str,
    repository: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut queue) = self.shared.queue.lock() {
            queue.closed = true;
        }
        self.shared.wake.notify_one();
    }
}

#[derive(Clone)]
pub struct Reporter {
    inner: Arc<Inner>,
}

impl Reporter {
    /// Checks the configuration (URL, repository, credentials, CA) and builds the HTTP
    /// client; nothing is sent until the first report.
    pub fn new(config: ForgeConfig) -> Result<Self, ReportError> {
        let api = api_base(&config.api_url)?;
        let repo_path = repository_path(config.kind, &config.repository)?;
        let auth = auth(config.kind, config.credentials)?;
        let client = http_client(config.ca_pem.as_deref())?;
        let provider = provider_name(config.kind);
        let forge = Forge::new(
            config.kind,
            api,
            repo_path,
            config.repository.clone(),
            auth,
            client,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    queue: Mutex::new(Queue::default()),
                    wake: Notify::new(),
                }),
                forge: Mutex::new(Some(forge)),
                provider,
                repository: config.repository,
            }),
        })
    }

    /// Queues `check` for delivery and returns at once; a newer update for the same
    /// (commit, context) replaces it while it waits. Must be called inside a tokio runtime
    /// (the first call starts the delivery task there).
    pub fn report(&self, check: CommitCheck) {
        let inner = &self.inner;
        let evicted = match inner.shared.queue.lock() {
            Ok(mut queue) => queue.push(check),
            Err(_) => return,
        };
        if let Some(old) = evicted {
            tracing::warn!(
                provider = inner.provider, repository = %inner.repository,
                commit = short(&old.commit), context = %old.context,
                "too many commit checks waiting for the forge; the oldest is dropped"
            );
        }
        inner.shared.wake.notify_one();
        self.start();
    }

    /// Starts the delivery task on the current runtime, once.
    fn start(&self) {
        let Ok(mut slot) = self.inner.forge.lock() else {
            return;
        };
        if slot.is_none() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                if let Some(forge) = slot.take() {
                    runtime.spawn(deliver_loop(self.inner.shared.clone(), forge));
                }
            }
            Err(_) => tracing::warn!(
                provider = self.inner.provider,
                "commit checks reported outside a tokio runtime stay queued"
            ),
        }
    }
}

/// The delivery task: one call at a time, in queue order, waiting out rate limits and
/// backing off after failures (for the whole forge: an outage or a limit is not per commit).
async fn deliver_loop(shared: Arc<Shared>, mut forge: Forge) {
    // The state and fingerprint last delivered per (commit, context): enough to skip
    // repeats without keeping every image table in memory.
    let mut delivered: Bounded<Key, (CheckState, [u8; 32])> = Bounded::new(REMEMBERED);
    let mut failures: u32 = 0;
    let mut not_before = Instant::now();
    loop {
        // Wait for work first, then for the backoff to pass: updates that arrive during the
        // wait replace the queued ones, so only the newest is sent.
        loop {
            let (empty, closed) = match shared.queue.lock() {
                Ok(queue) => (queue.items.is_empty(), queue.closed),
                Err(_) => return,
            };
            if !empty {
                break;
            }
            if closed {
                return;
            }
            shared.wake.notified().await;
        }
        tokio::time::sleep_until(not_before).await;
        let next = match shared.queue.lock() {
            Ok(mut queue) => queue.pop(),
            Err(_) => return,
        };
        let Some((key, check)) = next else {
            continue;
        };
        let fingerprint = fingerprint(&check);
        let previous = delivered.get(&key).copied();
        if previous.is_some_and(|(_, last)| last == fingerprint) {
            continue;
        }
        let outcome = forge
            .deliver(&key, &check, previous.map(|(state, _)| state))
            .await;
        let wait = match outcome {
            Delivery::Delivered => {
                failures = 0;
                delivered.insert(key, (check.state, fingerprint));
                continue;
            }
            // Refused for good, already logged.
            Delivery::Dropped => continue,
            Delivery::RateLimited(Some(wait)) => wait,
            Delivery::RateLimited(None) | Delivery::Transient => {
                retry::backoff(failures, retry::random_jitter())
            }
        };
        failures = failures.saturating_add(1);
        not_before = Instant::now() + wait;
        if let Ok(mut queue) = shared.queue.lock() {
            // Once every reporter is gone nobody will wait for this forge; give up.
            if !queue.closed {
                queue.requeue(key, check);
            }
        }
    }
}

/// A digest of everything a forge shows of an update: two updates with the same fingerprint
/// look the same on the commit. Fields are length-prefixed so that they cannot run together.
fn fingerprint(check: &CommitCheck) -> [u8; 32] {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    let mut field = |value: Option<&str>| match value {
        Some(value) => {
            hash.update([1]);
            hash.update((value.len() as u64).to_le_bytes());
            hash.update(value.as_bytes());
        }
        None => hash.update([0]),
    };
    field(Some(&check.commit));
    field(Some(&check.context));
    field(Some(&format!("{:?}", check.state)));
    field(Some(&check.description));
    field(check.target_url.as_deref());
    for row in &check.details {
        field(Some(&row.name));
        field(Some(&row.phase));
        field(row.progress.as_deref());
        field(row.message.as_deref());
    }
    hash.finalize().into()
}

/// The API base without a trailing slash; http(s) only, no credentials in it.
fn api_base(url: &str) -> Result<String, ReportError> {
    let trimmed = url.trim().trim_end_matches('/');
    let parsed = url::Url::parse(trimmed).map_err(|e| ReportError::ApiUrl {
        url: trimmed.to_string(),
        reason: format!("{e} (expected e.g. https://api.github.com, https://host/api/v4)"),
    })?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ReportError::ApiUrlCredentials);
    }
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(ReportError::ApiUrl {
            url: trimmed.to_string(),
            reason: "the scheme must be https (or http)".into(),
        });
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(ReportError::ApiUrl {
            url: trimmed.to_string(),
            reason: "it must not have a query or fragment".into(),
        });
    }
    Ok(trimmed.to_string())
}

/// The repository as it goes into URL paths.
fn repository_path(kind: ProviderKind, repository: &str) -> Result<String, ReportError> {
    let repository = repository.trim().trim_matches('/');
    let invalid = |reason: &str| ReportError::Repository {
        repository: repository.to_string(),
        reason: reason.to_string(),
    };
    if repository.is_empty() {
        return Err(invalid("it is empty; set commitStatus.repository"));
    }
    let parts: Vec<&str> = repository.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(invalid("it has an empty, \".\" or \"..\" part"));
    }
    match kind {
        // The project id: numeric, or the full path URL-encoded as one segment.
        ProviderKind::GitLab => Ok(text::path_segment(repository)),
        _ if parts.len() == 2 => Ok(format!(
            "{}/{}",
            text::path_segment(parts[0]),
            text::path_segment(parts[1])
        )),
        _ => Err(invalid("expected owner/name")),
    }
}

fn auth(kind: ProviderKind, credentials: ForgeCredentials) -> Result<Auth, ReportError> {
    match credentials {
        ForgeCredentials::Token(token) => {
            let token = token.trim();
            if kind == ProviderKind::GitHubCheckRun {
                return Err(ReportError::Credentials(
                    "check runs need GitHub App credentials (appID, installationID, privateKey), not a token".into(),
                ));
            }
            if token.is_empty() {
                return Err(ReportError::Credentials("the token is empty".into()));
            }
            let value = match kind {
                ProviderKind::GitLab => token.to_string(),
                ProviderKind::Gitea => format!("token {token}"),
                _ => format!("Bearer {token}"),
            };
            let value = sensitive(&value).map_err(|_| {
                ReportError::Credentials(
                    "the token has characters not allowed in an HTTP header".into(),
                )
            })?;
            Ok(Auth::Token(value))
        }
        ForgeCredentials::GitHubApp {
            app_id,
            installation_id,
            private_key_pem,
        } => {
            if !matches!(
                kind,
                ProviderKind::GitHubCheckRun | ProviderKind::GitHubStatus
            ) {
                return Err(ReportError::Credentials(
                    "GitHub App credentials work with GitHub only; give a token".into(),
                ));
            }
            let app_id = app_id.trim().to_string();
            if app_id.is_empty() {
                return Err(ReportError::Credentials(
                    "the GitHub App ID (appID) is empty".into(),
                ));
            }
            let installation_id = installation_id.trim().to_string();
            if installation_id.is_empty() || !installation_id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ReportError::Credentials(
                    "the GitHub App installation ID (installationID) must be a number".into(),
                ));
            }
            let key = jwt::AppKey::from_pem(&private_key_pem).map_err(ReportError::PrivateKey)?;
            Ok(Auth::App {
                app_id,
                installation_id,
                key,
            })
        }
    }
}

fn http_client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, ReportError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("image-catalog/", env!("CARGO_PKG_VERSION")))
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(pem) = ca_pem.filter(|pem| !pem.iter().all(u8::is_ascii_whitespace)) {
        let certificates = crate::tls::pem_certificates(pem).map_err(|error| match error {
            crate::tls::PemError::Unreadable(detail) => {
                ReportError::Ca(format!("not a PEM certificate bundle ({detail})"))
            }
            crate::tls::PemError::Empty => ReportError::Ca("it holds no PEM certificate".into()),
        })?;
        // In addition to the system roots: a private CA for a self-hosted forge.
        builder = builder.tls_certs_merge(certificates);
    }
    builder
        .build()
        .map_err(|e| ReportError::HttpClient(e.to_string()))
}

#[cfg(test)]
mod tests;
