//! Push webhooks: `POST /hooks/<catalog>` from GitHub, Gitea, Forgejo (HMAC-SHA256 of the
//! body) or GitLab (a secret token), checked in constant time. A valid push triggers a sync
//! at once; anything else changes nothing.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::controller::SyncTrigger;
use crate::api::catalog::ImageCatalog;
use crate::metrics::{Metrics, ReasonLabel};

/// Forges send up to 25 MiB (GitHub); a push of a catalog is far smaller.
const MAX_BODY: usize = 25 << 20;

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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error(
        "the request carries no signature or token header (X-Hub-Signature-256, X-Gitea-Signature, X-Forgejo-Signature or X-Gitlab-Token)"
    )]
    Unsigned,
    #[error("the signature or token does not match the webhook secret")]
    BadSignature,
}

/// Checks a webhook call against `secret` and says what it asks for. Pure.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &[u8]) -> Result<HookEvent, HookError> {
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
        .unwrap_or_default()
        .to_string();
    if let Some(token) = header("X-Gitlab-Token") {
        if !equal_in_constant_time(token.as_bytes(), secret) {
            return Err(HookError::BadSignature);
        }
    } else {
        let signature = header("X-Hub-Signature-256")
            .and_then(|value| value.strip_prefix("sha256="))
            .or_else(|| header("X-Gitea-Signature"))
            .or_else(|| header("X-Forgejo-Signature"))
            .ok_or(HookError::Unsigned)?;
        let signature = hex::decode(signature).map_err(|_| HookError::BadSignature)?;
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
        aws_lc_rs::hmac::verify(&key, body, &signature).map_err(|_| HookError::BadSignature)?;
    }
    Ok(match event.as_str() {
        "push" | "Push Hook" | "Tag Push Hook" | "create" => HookEvent::Push,
        "ping" | "System Hook" => HookEvent::Ping,
        _ => HookEvent::Other(event),
    })
}

fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[derive(Clone)]
struct HookState {
    client: Client,
    namespace: String,
    trigger: SyncTrigger,
    metrics: Arc<Metrics>,
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
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(HookState {
            client,
            namespace,
            trigger,
            metrics,
        })
}

async fn hook(
    State(state): State<HookState>,
    Path(catalog): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let count = |result: &str| {
        state
            .metrics
            .webhooks
            .get_or_create(&ReasonLabel {
                reason: result.to_string(),
            })
            .inc();
    };
    let catalogs: Api<ImageCatalog> = Api::all(state.client.clone());
    let secret_name = match catalogs.get_opt(&catalog).await {
        Ok(Some(found)) => found.spec.webhook.map(|w| w.secret_ref.name),
        Ok(None) => {
            count("unknown_catalog");
            return (
                StatusCode::NOT_FOUND,
                format!("no ImageCatalog {catalog}\n"),
            );
        }
        Err(error) => {
            count("error");
            tracing::warn!(%catalog, %error, "webhook: cannot read the catalog");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot read the catalog; retry\n".into(),
            );
        }
    };
    let Some(secret_name) = secret_name else {
        count("not_configured");
        return (
            StatusCode::FORBIDDEN,
            format!(
                "ImageCatalog {catalog} has no spec.webhook.secretRef: webhooks are off for it\n"
            ),
        );
    };
    let secrets: Api<Secret> = Api::namespaced(state.client.clone(), &state.namespace);
    let secret = match secrets.get_opt(&secret_name).await {
        Ok(Some(secret)) => secret
            .data
            .and_then(|mut data| data.remove("token"))
            .map(|token| token.0),
        Ok(None) => None,
        Err(error) => {
            count("error");
            tracing::warn!(%catalog, %error, "webhook: cannot read the webhook Secret");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot read the webhook secret; retry\n".into(),
            );
        }
    };
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        count("not_configured");
        tracing::warn!(%catalog, secret = %secret_name, "webhook: the Secret is missing or has no `token`");
        return (
            StatusCode::FORBIDDEN,
            "the webhook secret is not configured\n".into(),
        );
    };
    match verify(&headers, &body, &secret) {
        Ok(HookEvent::Push) => {
            count("accepted");
            tracing::info!(%catalog, "webhook: push received, syncing now");
            state.trigger.sync_now(&catalog).await;
            (StatusCode::ACCEPTED, format!("syncing {catalog}\n"))
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
        Err(error) => {
            count("bad_signature");
            tracing::warn!(%catalog, %error, "webhook refused");
            (StatusCode::UNAUTHORIZED, format!("{error}\n"))
        }
    }
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
