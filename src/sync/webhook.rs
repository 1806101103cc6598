//! Push webhooks: `POST /hooks/<catalog>` from GitHub, Gitea, Forgejo (HMAC-SHA256 of the
//! body) or GitLab (a secret token), checked in constant time. A valid push triggers a sync
//! at once; anything else changes nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use futures::StreamExt;
use kube::{Api, Client};
use tokio::sync::Semaphore;

use super::controller::SyncTrigger;
use crate::api::catalog::ImageCatalog;
use crate::k8s::secrets::{SecretError, SecretReader};
use crate::metrics::Metrics;

/// The largest body read. Forges send up to 25 MiB (GitHub), but a push to a catalog
/// repository is a few KiB; a larger body is refused (the periodic sync still sees the push).
pub const MAX_BODY: usize = 1 << 20;
/// The whole body must arrive within this.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Calls checked at once; more get 503 and the forge retries. Each costs two API reads.
const MAX_CONCURRENT_CALLS: usize = 16;

/// What a verified call asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookEvent {
    /// A push (or tag push): sync now.
    Push,
    /// The forge checking the hook works.
    Ping,
    /// Another event type, accepted and ignored.
    Other(String),
}

/// Why a call was refused. The caller only ever learns that it was (one answer for every
/// reason, so calls cannot probe which catalogs exist); the log and the metric say which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error(
        "the request carries no signature or token header (X-Hub-Signature-256, X-Gitea-Signature, X-Forgejo-Signature or X-Gitlab-Token)"
    )]
    Unsigned,
    #[error("the signature or token does not match the webhook secret")]
    BadSignature,
    #[error("the path names no ImageCatalog that could exist")]
    InvalidName,
    #[error("there is no such ImageCatalog")]
    UnknownCatalog,
    #[error("the ImageCatalog has no spec.webhook.secretRef: webhooks are off for it")]
    NotConfigured,
    #[error("the webhook Secret is missing or has no `token` key")]
    SecretMissing,
    #[error(
        "the webhook Secret is not labelled {}=true, so no catalog may use it",
        crate::k8s::secrets::CATALOG_SECRET_LABEL
    )]
    SecretNotForCatalogs,
    #[error("the body is larger than {} KiB", MAX_BODY >> 10)]
    BodyTooLarge,
    #[error("the body did not arrive within {} s, or broke off", BODY_TIMEOUT.as_secs())]
    BodyIncomplete,
}

impl HookError {
    /// The metric label.
    fn label(&self) -> &'static str {
        match self {
            Self::Unsigned | Self::BadSignature => "bad_signature",
            Self::InvalidName | Self::UnknownCatalog => "unknown_catalog",
            Self::NotConfigured | Self::SecretMissing | Self::SecretNotForCatalogs => {
                "not_configured"
            }
            Self::BodyTooLarge | Self::BodyIncomplete => "bad_body",
        }
    }
}

/// How a call proves it knows the secret, read from its headers alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// GitLab: the secret itself.
    Token(String),
    /// GitHub, Gitea, Forgejo: HMAC-SHA256 of the body (not hex-decodable: never matches).
    Hmac(Option<Vec<u8>>),
}

/// The proof a call carries, and the event it announces. Pure.
pub fn read_headers(headers: &HeaderMap) -> Result<(Proof, HookEvent), HookError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let event = header("X-GitHub-Event")
        .or_else(|| header("X-Gitea-Event"))
        .or_else(|| header("X-Forgejo-Event"))
        .or_else(|| header("X-Gitlab-Event"))
        .unwrap_or_default();
    let event = match event {
        "push" | "Push Hook" | "Tag Push Hook" | "create" => HookEvent::Push,
        "ping" | "System Hook" => HookEvent::Ping,
        _ => HookEvent::Other(event.to_string()),
    };
    let proof = match header("X-Gitlab-Token") {
        Some(token) => Proof::Token(token.to_string()),
        None => {
            let signature = header("X-Hub-Signature-256")
                .and_then(|value| value.strip_prefix("sha256="))
                .or_else(|| header("X-Gitea-Signature"))
                .or_else(|| header("X-Forgejo-Signature"))
                .ok_or(HookError::Unsigned)?;
            Proof::Hmac(hex::decode(signature).ok())
        }
    };
    Ok((proof, event))
}

/// Checks a proof against `secret` while the body streams through: the body is never held.
pub struct BodyCheck {
    hmac: Option<(aws_lc_rs::hmac::Context, Option<Vec<u8>>)>,
    token_matches: bool,
    length: usize,
}

impl BodyCheck {
    pub fn new(proof: Proof, secret: &[u8]) -> Self {
        match proof {
            Proof::Token(token) => Self {
                hmac: None,
                token_matches: equal_in_constant_time(token.as_bytes(), secret),
                length: 0,
            },
            Proof::Hmac(signature) => {
                let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
                Self {
                    hmac: Some((aws_lc_rs::hmac::Context::with_key(&key), signature)),
                    token_matches: false,
                    length: 0,
                }
            }
        }
    }

    pub fn update(&mut self, chunk: &[u8]) -> Result<(), HookError> {
        self.length += chunk.len();
        if self.length > MAX_BODY {
            return Err(HookError::BodyTooLarge);
        }
        if let Some((context, _)) = &mut self.hmac {
            context.update(chunk);
        }
        Ok(())
    }

    pub fn finish(self) -> Result<(), HookError> {
        let matches = match self.hmac {
            None => self.token_matches,
            Some((context, Some(signature))) => {
                equal_in_constant_time(context.sign().as_ref(), &signature)
            }
            Some((_, None)) => false,
        };
        if matches {
            Ok(())
        } else {
            Err(HookError::BadSignature)
        }
    }
}

/// Checks a webhook call against `secret` and says what it asks for. Pure.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &[u8]) -> Result<HookEvent, HookError> {
    let (proof, event) = read_headers(headers)?;
    let mut check = BodyCheck::new(proof, secret);
    check.update(body)?;
    check.finish()?;
    Ok(event)
}

fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// Whether `name` could be an ImageCatalog's name (a DNS subdomain of at most 63
/// characters, the CRD's rule): anything else never reaches an API path.
fn is_catalog_name(name: &str) -> bool {
    name.len() <= 63
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[derive(Clone)]
struct HookState {
    client: Client,
    secrets: SecretReader,
    trigger: SyncTrigger,
    metrics: Arc<Metrics>,
    calls: Arc<Semaphore>,
}

/// The router of `POST /hooks/{catalog}`.
pub fn router(
    client: Client,
    namespace: String,
    trigger: SyncTrigger,
    metrics: Arc<Metrics>,
) -> Router {
    Router::new()
        .route("/hooks/{catalog}", post(hook))
        .with_state(HookState {
            secrets: SecretReader::new(client.clone(), namespace, []),
            client,
            trigger,
            metrics,
            calls: Arc::new(Semaphore::new(MAX_CONCURRENT_CALLS)),
        })
}

/// The one answer to every refused call.
const REFUSED: &str = "refused; the image-catalog daemon's log says why\n";

async fn hook(
    State(state): State<HookState>,
    Path(catalog): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, String) {
    let count = |result: &'static str| state.metrics.webhooks.called(result);
    let Ok(_call) = state.calls.clone().try_acquire_owned() else {
        count("busy");
        return (StatusCode::SERVICE_UNAVAILABLE, "busy; retry\n".into());
    };
    match check(&state, &catalog, &headers, body).await {
        Ok(HookEvent::Push) => {
            count("accepted");
            tracing::info!(%catalog, "webhook: push received, syncing now");
            state.trigger.sync_now(&catalog).await;
            (StatusCode::ACCEPTED, "syncing\n".into())
        }
        Ok(HookEvent::Ping) => {
            count("ping");
            (StatusCode::OK, "pong\n".into())
        }
        Ok(HookEvent::Other(event)) => {
            count("ignored");
            (
                StatusCode::ACCEPTED,
                format!("event {event:?} ignored; only pushes trigger a sync\n"),
            )
        }
        Err(Refusal::Hook(error)) => {
            count(error.label());
            // The name is shown escaped: it comes from anyone who can reach the port.
            tracing::warn!(catalog = ?catalog, %error, "webhook refused");
            (StatusCode::FORBIDDEN, REFUSED.into())
        }
        Err(Refusal::Api(what, error)) => {
            count("error");
            tracing::warn!(%catalog, %error, "webhook: cannot read the {what}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot check the call now; retry\n".into(),
            )
        }
    }
}

enum Refusal {
    Hook(HookError),
    Api(&'static str, kube::Error),
}

impl From<HookError> for Refusal {
    fn from(error: HookError) -> Self {
        Self::Hook(error)
    }
}

/// Everything cheap first: the headers, then the catalog and its Secret, and only then the
/// body, streamed through the signature check within its size and time.
async fn check(
    state: &HookState,
    catalog: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<HookEvent, Refusal> {
    if !is_catalog_name(catalog) {
        return Err(HookError::InvalidName.into());
    }
    let (proof, event) = read_headers(headers)?;
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_BODY) {
        return Err(HookError::BodyTooLarge.into());
    }
    let catalogs: Api<ImageCatalog> = Api::all(state.client.clone());
    let secret_name = match catalogs.get_opt(catalog).await {
        Ok(Some(found)) => found.spec.webhook.map(|w| w.secret_ref.name),
        Ok(None) => return Err(HookError::UnknownCatalog.into()),
        Err(error) => return Err(Refusal::Api("catalog", error)),
    };
    let secret_name = secret_name.ok_or(HookError::NotConfigured)?;
    let secret = match state.secrets.catalog_secret(&secret_name).await {
        Ok(mut secret) => secret
            .data
            .remove("token")
            .filter(|token| !token.is_empty())
            .ok_or(HookError::SecretMissing)?,
        Err(SecretError::NotForCatalogs { .. }) => {
            return Err(HookError::SecretNotForCatalogs.into());
        }
        Err(SecretError::Unreadable { source, .. }) => {
            return Err(Refusal::Api("webhook Secret", source));
        }
        Err(SecretError::NotFound { .. } | SecretError::NamespaceNotAllowed { .. }) => {
            return Err(HookError::SecretMissing.into());
        }
    };
    let mut check = BodyCheck::new(proof, &secret);
    let mut stream = body.into_data_stream();
    let read = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| HookError::BodyIncomplete)?;
            check.update(&chunk)?;
        }
        Ok::<_, HookError>(())
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .map_err(|_| HookError::BodyIncomplete)??;
    check.finish()?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
        hex::encode(aws_lc_rs::hmac::sign(&key, body).as_ref())
    }

    const BODY: &[u8] = br#"{"ref":"refs/heads/main"}"#;

    #[test]
    fn a_github_push_signed_with_the_secret_is_a_push() {
        let signature = format!("sha256={}", sign(b"s3cret", BODY));
        let call = headers(&[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &signature),
        ]);
        assert_eq!(verify(&call, BODY, b"s3cret"), Ok(HookEvent::Push));
    }

    #[test]
    fn gitea_and_forgejo_sign_without_a_prefix() {
        let signature = sign(b"s3cret", BODY);
        for (event, header) in [
            ("X-Gitea-Event", "X-Gitea-Signature"),
            ("X-Forgejo-Event", "X-Forgejo-Signature"),
        ] {
            let call = headers(&[(event, "push"), (header, &signature)]);
            assert_eq!(verify(&call, BODY, b"s3cret"), Ok(HookEvent::Push));
        }
    }

    #[test]
    fn gitlab_sends_the_secret_as_a_token() {
        let call = headers(&[
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", "s3cret"),
        ]);
        assert_eq!(verify(&call, BODY, b"s3cret"), Ok(HookEvent::Push));
        let wrong = headers(&[
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", "s3cres"),
        ]);
        assert_eq!(
            verify(&wrong, BODY, b"s3cret"),
            Err(HookError::BadSignature)
        );
    }

    #[test]
    fn a_changed_body_a_wrong_secret_or_no_signature_is_refused() {
        let signature = format!("sha256={}", sign(b"s3cret", BODY));
        let call = headers(&[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &signature),
        ]);
        assert_eq!(
            verify(&call, b"{}", b"s3cret"),
            Err(HookError::BadSignature)
        );
        assert_eq!(verify(&call, BODY, b"other"), Err(HookError::BadSignature));
        let garbage = headers(&[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", "sha256=zz"),
        ]);
        assert_eq!(
            verify(&garbage, BODY, b"s3cret"),
            Err(HookError::BadSignature)
        );
        let unsigned = headers(&[("X-GitHub-Event", "push")]);
        assert_eq!(verify(&unsigned, BODY, b"s3cret"), Err(HookError::Unsigned));
    }

    #[test]
    fn pings_and_other_events_do_not_sync() {
        let signature = format!("sha256={}", sign(b"s", BODY));
        let ping = headers(&[
            ("X-GitHub-Event", "ping"),
            ("X-Hub-Signature-256", &signature),
        ]);
        assert_eq!(verify(&ping, BODY, b"s"), Ok(HookEvent::Ping));
        let issue = headers(&[
            ("X-GitHub-Event", "issues"),
            ("X-Hub-Signature-256", &signature),
        ]);
        assert_eq!(
            verify(&issue, BODY, b"s"),
            Ok(HookEvent::Other("issues".into()))
        );
    }
}
