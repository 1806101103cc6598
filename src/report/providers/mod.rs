//! The forges' REST calls: GitHub commit statuses and check runs, Gitea/Forgejo and GitLab
//! commit statuses. One [`Forge`] per reporter, used by its single delivery task only, so
//! its caches need no locks.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::jwt::AppKey;
use super::retry::{Verdict, verdict};
use super::text::{image_table, path_segment, phase_summary, strip_astral, truncate_chars};
use super::{Bounded, CheckState, CommitCheck, Key, ProviderKind, short};

/// GitHub: commit status descriptions are at most 140 characters.
pub const GITHUB_DESCRIPTION_MAX: usize = 140;
/// Gitea/Forgejo and GitLab: 255 (GitLab validates it; Gitea stores more, 255 is safe).
pub const STATUS_DESCRIPTION_MAX: usize = 255;
/// GitHub check runs: `output.summary` and `output.text` are at most 65535 characters.
pub const CHECK_OUTPUT_MAX: usize = 65535;
/// Check run titles show on one line; GitHub documents no limit, this one is safe.
pub const CHECK_TITLE_MAX: usize = 255;
/// Installation tokens live an hour; a new one is fetched this long before expiry.
const TOKEN_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Check-run ids remembered per (commit, context), for PATCHes.
const REMEMBERED_RUNS: usize = 4096;

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// Refused for good and logged: the update is dropped.
    Dropped,
    RateLimited(Option<Duration>),
    Transient,
}

pub enum Auth {
    Token(HeaderValue),
    App {
        app_id: String,
        installation_id: String,
        key: AppKey,
    },
}

pub struct Forge {
    pub kind: ProviderKind,
    /// The API base without a trailing slash.
    pub api: String,
    /// The repository as it goes in URL paths: `owner/name` (each part encoded) or GitLab's
    /// encoded project id.
    pub repo_path: String,
    /// The repository as configured, for logs.
    pub repository: String,
    pub auth: Auth,
    pub client: reqwest::Client,
    installation_token: Option<(HeaderValue, Instant)>,
    check_runs: Bounded<Key, u64>,
    /// The last refusal warned about: a misconfiguration (wrong token, unknown repository)
    /// refuses every update alike, and one warning says it until something changes.
    last_refusal: Option<(u16, String)>,
    /// Whether the installation token of this call came from the cache (not just fetched).
    token_from_cache: bool,
}

/// A forge's answer, read whole (the bodies are small JSON).
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

pub fn provider_name(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::GitHubStatus => "github",
        ProviderKind::GitHubCheckRun => "github-check-run",
        ProviderKind::Gitea => "gitea",
        ProviderKind::GitLab => "gitlab",
    }
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Forge {
    pub fn new(
        kind: ProviderKind,
        api: String,
        repo_path: String,
        repository: String,
        auth: Auth,
        client: reqwest::Client,
    ) -> Self {
        Self {
            kind,
            api,
            repo_path,
            repository,
            auth,
            client,
            installation_token: None,
            check_runs: Bounded::new(REMEMBERED_RUNS),
            last_refusal: None,
            token_from_cache: false,
        }
    }

    /// Posts `check`. `previous` is the state last delivered for the same (commit, context).
    pub async fn deliver(
        &mut self,
        key: &Key,
        check: &CommitCheck,
        previous: Option<CheckState>,
    ) -> Delivery {
        match self.kind {
            ProviderKind::GitHubStatus => {
                let url = format!(
                    "{}/repos/{}/statuses/{}",
                    self.api,
                    self.repo_path,
                    path_segment(&check.commit)
                );
                self.post_status(check, url, github_status_body(check))
                    .await
            }
            ProviderKind::Gitea => {
                let url = format!(
                    "{}/repos/{}/statuses/{}",
                    self.api,
                    self.repo_path,
                    path_segment(&check.commit)
                );
                self.post_status(check, url, gitea_status_body(check)).await
            }
            ProviderKind::GitLab => {
                let url = format!(
                    "{}/projects/{}/statuses/{}",
                    self.api,
                    self.repo_path,
                    path_segment(&check.commit)
                );
                let body = gitlab_status_body(check, previous);
                self.post_status(check, url, body).await
            }
            ProviderKind::GitHubCheckRun => self.check_run(key, check).await,
        }
    }

    async fn post_status(&mut self, check: &CommitCheck, url: String, body: Value) -> Delivery {
        let auth = match self.authorization(check).await {
            Ok(auth) => auth,
            Err(delivery) => return delivery,
        };
        let reply = match self.send(Method::POST, &url, &auth, &body).await {
            Ok(reply) => reply,
            Err(error) => return self.network_failure(check, "posting the commit status", &error),
        };
        // GitLab refuses a transition to the state a status already has ("Cannot transition
        // status via :enqueue from :pending") after it has updated the description: for us
        // that is delivered.
        if self.kind == ProviderKind::GitLab
            && reply.status == StatusCode::BAD_REQUEST
            && forge_message(&reply.body).contains("Cannot transition status")
        {
            return Delivery::Delivered;
        }
        self.judge(check, "posting the commit status", &reply)
    }

    /// Creates the check run of (commit, context), or PATCHes the one created before.
    async fn check_run(&mut self, key: &Key, check: &CommitCheck) -> Delivery {
        let auth = match self.authorization(check).await {
            Ok(auth) => auth,
            Err(delivery) => return delivery,
        };
        if let Some(id) = self.check_runs.get(key).copied() {
            let url = format!("{}/repos/{}/check-runs/{id}", self.api, self.repo_path);
            let body = check_run_body(check, false);
            let reply = match self.send(Method::PATCH, &url, &auth, &body).await {
                Ok(reply) => reply,
                Err(error) => return self.network_failure(check, "updating the check run", &error),
            };
            // The run is gone (deleted with its suite): create a new one below.
            if reply.status != StatusCode::NOT_FOUND {
                return self.judge(check, "updating the check run", &reply);
            }
            self.check_runs.remove(key);
        }
        let url = format!("{}/repos/{}/check-runs", self.api, self.repo_path);
        let body = check_run_body(check, true);
        let reply = match self.send(Method::POST, &url, &auth, &body).await {
            Ok(reply) => reply,
            Err(error) => return self.network_failure(check, "creating the check run", &error),
        };
        let delivery = self.judge(check, "creating the check run", &reply);
        if delivery == Delivery::Delivered {
            match serde_json::from_str::<Value>(&reply.body)
                .ok()
                .and_then(|run| run.get("id").and_then(Value::as_u64))
            {
                Some(id) => self.check_runs.insert(key.clone(), id),
                None => tracing::warn!(
                    provider = provider_name(self.kind),
                    repository = %self.repository,
                    commit = short(&check.commit),
                    "GitHub created the check run but its answer has no id; the next update creates another run"
                ),
            }
        }
        delivery
    }

    /// The `Authorization` (or `PRIVATE-TOKEN`) header value for the next call.
    async fn authorization(&mut self, check: &CommitCheck) -> Result<HeaderValue, Delivery> {
        let (app_id, installation_id, key) = match &self.auth {
            Auth::Token(value) => return Ok(value.clone()),
            Auth::App {
                app_id,
                installation_id,
                key,
            } => (app_id, installation_id, key),
        };
        if let Some((token, valid_until)) = &self.installation_token
            && Instant::now() < *valid_until
        {
            self.token_from_cache = true;
            return Ok(token.clone());
        }
        self.token_from_cache = false;
        let jwt = match key.jwt(app_id, unix_now()) {
            Ok(jwt) => jwt,
            Err(message) => {
                tracing::warn!(provider = provider_name(self.kind), repository = %self.repository, "{message}");
                return Err(Delivery::Dropped);
            }
        };
        let url = format!(
            "{}/app/installations/{}/access_tokens",
            self.api,
            path_segment(installation_id)
        );
        let bearer = sensitive(&format!("Bearer {jwt}")).map_err(|_| Delivery::Dropped)?;
        const WHAT: &str = "getting a GitHub App installation token";
        let reply = match self.send(Method::POST, &url, &bearer, &Value::Null).await {
            Ok(reply) => reply,
            Err(error) => return Err(self.network_failure(check, WHAT, &error)),
        };
        let delivery = self.judge(check, WHAT, &reply);
        if delivery != Delivery::Delivered {
            return Err(delivery);
        }
        let answer: Value = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
        let Some(token) = answer.get("token").and_then(Value::as_str) else {
            tracing::warn!(provider = provider_name(self.kind), repository = %self.repository, "GitHub's installation token answer has no token");
            return Err(Delivery::Transient);
        };
        let header = sensitive(&format!("Bearer {token}")).map_err(|_| Delivery::Transient)?;
        // Valid until shortly before `expires_at`; an hour if GitHub did not say.
        let lifetime = answer
            .get("expires_at")
            .and_then(Value::as_str)
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
            .map(|at| Duration::from_secs((at.timestamp() - unix_now()).max(0) as u64))
            .unwrap_or(Duration::from_secs(3600));
        let valid_until = Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN);
        self.installation_token = Some((header.clone(), valid_until));
        Ok(header)
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        auth: &HeaderValue,
        body: &Value,
    ) -> Result<Reply, reqwest::Error> {
        let mut request = self.client.request(method, url);
        request = match self.kind {
            ProviderKind::GitHubStatus | ProviderKind::GitHubCheckRun => request
                .header(reqwest::header::AUTHORIZATION, auth.clone())
                .header(reqwest::header::ACCEPT, "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28"),
            ProviderKind::Gitea => request
                .header(reqwest::header::AUTHORIZATION, auth.clone())
                .header(reqwest::header::ACCEPT, "application/json"),
            ProviderKind::GitLab => request
                .header("PRIVATE-TOKEN", auth.clone())
                .header(reqwest::header::ACCEPT, "application/json"),
        };
        if !body.is_null() {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// Logs and classifies a forge's answer.
    fn judge(&mut self, check: &CommitCheck, what: &str, reply: &Reply) -> Delivery {
        let provider = provider_name(self.kind);
        let delivery = match verdict(reply.status, &reply.headers, unix_now()) {
            Verdict::Accepted => {
                self.last_refusal = None;
                return Delivery::Delivered;
            }
            Verdict::RateLimited(wait) => Delivery::RateLimited(wait),
            Verdict::Transient => Delivery::Transient,
            Verdict::Refused => Delivery::Dropped,
        };
        if reply.status == StatusCode::UNAUTHORIZED && self.installation_token.is_some() {
            self.installation_token = None;
            // A cached installation token can be revoked before it expires (the App was
            // reinstalled): retry with a new one rather than drop the update.
            if self.token_from_cache {
                tracing::info!(
                    provider, repository = %self.repository,
                    "GitHub refused the cached installation token; fetching a new one"
                );
                return Delivery::Transient;
            }
        }
        let message = forge_message(&reply.body);
        let status = reply.status.as_u16();
        let refusal = Some((status, message.clone()));
        match &delivery {
            Delivery::Dropped if self.last_refusal == refusal => tracing::debug!(
                provider, repository = %self.repository, commit = short(&check.commit),
                context = %check.context, status, "{what} failed again: {message}; this update is dropped"
            ),
            Delivery::Dropped => tracing::warn!(
                provider, repository = %self.repository, commit = short(&check.commit),
                context = %check.context, status, "{what} failed: {message}; this update is dropped"
            ),
            Delivery::RateLimited(wait) => tracing::warn!(
                provider, repository = %self.repository, commit = short(&check.commit),
                context = %check.context, status, wait_seconds = wait.map(|w| w.as_secs()),
                "{what}: rate-limited: {message}; retrying later"
            ),
            Delivery::Transient | Delivery::Delivered => tracing::warn!(
                provider, repository = %self.repository, commit = short(&check.commit),
                context = %check.context, status, "{what} failed: {message}; retrying with backoff"
            ),
        }
        if delivery == Delivery::Dropped {
            self.last_refusal = refusal;
        }
        delivery
    }

    fn network_failure(&self, check: &CommitCheck, what: &str, error: &reqwest::Error) -> Delivery {
        tracing::warn!(
            provider = provider_name(self.kind), repository = %self.repository,
            commit = short(&check.commit), context = %check.context,
            "{what} failed: {}; retrying with backoff", crate::net::error_chain(error)
        );
        Delivery::Transient
    }
}

/// A header value hidden from Debug output.
pub fn sensitive(value: &str) -> Result<HeaderValue, reqwest::header::InvalidHeaderValue> {
    let mut value = HeaderValue::from_str(value)?;
    value.set_sensitive(true);
    Ok(value)
}

/// The forge's own error text: JSON `message` (GitHub, Gitea, GitLab; GitLab's may be an
/// object) plus GitHub's `errors`, else `error`, else the start of the body, on one line.
pub fn forge_message(body: &str) -> String {
    let text = match serde_json::from_str::<Value>(body) {
        Ok(json) => {
            let mut parts = Vec::new();
            match json.get("message") {
                Some(Value::String(message)) => parts.push(message.clone()),
                Some(other) => parts.push(other.to_string()),
                None => {}
            }
            if let Some(errors) = json.get("errors").filter(|e| !e.is_null()) {
                parts.push(errors.to_string());
            }
            if parts.is_empty()
                && let Some(error) = json.get("error")
            {
                parts.push(
                    error
                        .as_str()
                        .map_or_else(|| error.to_string(), str::to_string),
                );
            }
            if parts.is_empty() {
                body.to_string()
            } else {
                parts.join(" ")
            }
        }
        Err(_) => body.to_string(),
    };
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        "(no message)".into()
    } else {
        truncate_chars(&text, 300)
    }
}

fn github_state(state: CheckState) -> &'static str {
    match state {
        CheckState::Pending => "pending",
        CheckState::Success => "success",
        CheckState::Failure => "failure",
        // Statuses have no "cancelled": error, with the description saying why.
        CheckState::Error | CheckState::Superseded => "error",
    }
}

fn gitea_state(state: CheckState) -> &'static str {
    match state {
        CheckState::Pending => "pending",
        CheckState::Success => "success",
        CheckState::Failure => "failure",
        CheckState::Error => "error",
        // Not a failure of the commit: its images were simply never finished.
        CheckState::Superseded => "warning",
    }
}

/// GitLab's state; a pending update after a delivered pending one goes out as `running`,
/// since GitLab refuses pending → pending and would keep the old text otherwise.
fn gitlab_state(state: CheckState, previous: Option<CheckState>) -> &'static str {
    match state {
        CheckState::Pending if previous == Some(CheckState::Pending) => "running",
        CheckState::Pending => "pending",
        CheckState::Success => "success",
        CheckState::Failure | CheckState::Error => "failed",
        CheckState::Superseded => "canceled",
    }
}

fn with_target_url(mut body: Value, check: &CommitCheck, key: &str) -> Value {
    if let Some(url) = check.target_url.as_deref().filter(|u| !u.is_empty())
        && let Some(object) = body.as_object_mut()
    {
        object.insert(key.into(), Value::from(url));
    }
    body
}

pub fn github_status_body(check: &CommitCheck) -> Value {
    let description = truncate_chars(&strip_astral(&check.description), GITHUB_DESCRIPTION_MAX);
    let body = json!({
        "state": github_state(check.state),
        "description": description,
        "context": check.context,
    });
    with_target_url(body, check, "target_url")
}

pub fn gitea_status_body(check: &CommitCheck) -> Value {
    let body = json!({
        "state": gitea_state(check.state),
        "description": truncate_chars(&check.description, STATUS_DESCRIPTION_MAX),
        "context": check.context,
    });
    with_target_url(body, check, "target_url")
}

pub fn gitlab_status_body(check: &CommitCheck, previous: Option<CheckState>) -> Value {
    let body = json!({
        "state": gitlab_state(check.state, previous),
        "name": check.context,
        "description": truncate_chars(&check.description, STATUS_DESCRIPTION_MAX),
    });
    with_target_url(body, check, "target_url")
}

/// A check run: `in_progress` while pending, else `completed` with a conclusion; the output
/// carries the description and the per-image table.
pub fn check_run_body(check: &CommitCheck, create: bool) -> Value {
    let title = if check.description.trim().is_empty() {
        check.context.clone()
    } else {
        truncate_chars(&check.description, CHECK_TITLE_MAX)
    };
    let mut summary = check.description.clone();
    let phases = phase_summary(&check.details);
    if !phases.is_empty() {
        summary.push_str(&format!("\n\nImages: {phases}."));
    }
    if summary.trim().is_empty() {
        summary = check.context.clone();
    }
    let mut output = json!({
        "title": title,
        "summary": truncate_chars(&summary, CHECK_OUTPUT_MAX),
    });
    let text = image_table(&check.details, CHECK_OUTPUT_MAX);
    if !text.is_empty()
        && let Some(object) = output.as_object_mut()
    {
        object.insert("text".into(), Value::from(text));
    }
    let mut body = json!({ "output": output });
    let Some(object) = body.as_object_mut() else {
        return body;
    };
    if create {
        object.insert("name".into(), Value::from(check.context.clone()));
        object.insert("head_sha".into(), Value::from(check.commit.clone()));
    }
    let conclusion = match check.state {
        CheckState::Pending => None,
        CheckState::Success => Some("success"),
        CheckState::Failure | CheckState::Error => Some("failure"),
        CheckState::Superseded => Some("cancelled"),
    };
    match conclusion {
        None => {
            object.insert("status".into(), Value::from("in_progress"));
        }
        Some(conclusion) => {
            object.insert("status".into(), Value::from("completed"));
            object.insert("conclusion".into(), Value::from(conclusion));
            object.insert(
                "completed_at".into(),
                Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            );
        }
    }
    with_target_url(body, check, "details_url")
}

#[cfg(test)]
mod tests;
