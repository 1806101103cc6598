//! Uploads (`type: Upload`): the user streams the image with `curl -T image.img <url>` (PUT or
//! POST, with or without Content-Length). Each image waiting for an upload gets an unguessable
//! token (256 bits) in its URL; the HTTP handler hands the request body to the image's import
//! task as a byte source, and answers the uploader with the import's result.
//!
//! The gate knows tokens only by their sha256: a presented token is hashed, looked up by its
//! digest (so the lookup's timing says nothing about the token) and the digests are compared
//! in constant time. A wrong or old token gets the same bare 404 as a path that never existed.
//! One upload at a time per image: a second one gets 409.
//!
//! The URLs survive a restart of the daemon (or a takeover by another replica): the import
//! controller stores the token's sha256 — never the token — in the image's
//! `imagecatalog.dev/upload-token-sha256` annotation before it publishes the URLs, and a new
//! daemon that finds an image still waiting with URLs whose token has that hash registers the
//! hash again instead of making a new token ([`published_token`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, BodyDataStream};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::{SourceError, SourceErrorKind};
use crate::api::{ImagePhase, ImageStatus, ImageUploadUrls};

/// The path prefix of upload URLs.
pub const UPLOAD_PATH: &str = "/upload";

/// An upload token: 256 random bits as 64 hex characters, the last segment of the upload URLs.
/// A secret: its `Debug` shows nothing of it, and only its [`TokenDigest`] is ever stored.
pub struct UploadToken(String);

impl UploadToken {
    /// A new token from the process's crypto provider (the system's random generator).
    pub fn generate() -> Result<Self, RandomUnavailable> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        Self::from_random(|bytes| provider.secure_random.fill(bytes).is_ok())
    }

    /// A token from `fill`, which fills the buffer and says whether it could. A generator that
    /// fails gives no token at all: a predictable token would open the image to anyone.
    fn from_random(fill: impl FnOnce(&mut [u8]) -> bool) -> Result<Self, RandomUnavailable> {
        let mut bytes = [0u8; 32];
        if !fill(&mut bytes) {
            return Err(RandomUnavailable);
        }
        Ok(Self(hex::encode(bytes)))
    }

    /// The token as it goes into the URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn digest(&self) -> TokenDigest {
        TokenDigest::of(&self.0)
    }
}

impl std::fmt::Debug for UploadToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UploadToken(<redacted>)")
    }
}

/// The system's random generator failed: no upload token can be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system's random number generator failed")]
pub struct RandomUnavailable;

/// The sha256 of an upload token: what the gate and the image's annotation keep. Knowing it
/// does not give the token (256 random bits), so it is not a secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Lower-case hex, as stored in the annotation.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The digest from its hex form; None unless it is exactly 64 hex characters.
    pub fn parse(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).ok()?;
        Some(Self(bytes))
    }

    /// Compares without an early exit, so the time taken says nothing about where they differ.
    pub fn matches(&self, other: &Self) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, &other.0).is_ok()
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenDigest({})", self.to_hex())
    }
}

/// The token of the upload URLs an image already published, when they are the ones to keep
/// after a restart or takeover: the status describes the current spec, the image is still
/// waiting for (or was receiving) its upload, and every URL carries the one token whose
/// sha256 is `stored` (the image's annotation). None means the image needs a new token: a new
/// image, a new spec, no stored hash, or URLs that do not match it (a hash written just before
/// the previous daemon died, or edited by hand).
pub fn published_token(
    status: &ImageStatus,
    generation: i64,
    stored: Option<&str>,
) -> Option<UploadToken> {
    let waiting = matches!(
        status.phase,
        Some(ImagePhase::WaitForUserUpload | ImagePhase::Provisioning | ImagePhase::Pending)
    );
    if !waiting || status.observed_generation != Some(generation) {
        return None;
    }
    let stored = TokenDigest::parse(stored?)?;
    let ImageUploadUrls {
        external,
        in_cluster,
    } = status.image_upload_urls.as_ref()?;
    let tokens: Vec<&str> = [external, in_cluster]
        .into_iter()
        .flatten()
        .map(|url| url_token(url))
        .collect::<Option<_>>()?;
    let (first, rest) = tokens.split_first()?;
    let all_match =
        rest.iter().all(|token| token == first) && TokenDigest::of(first).matches(&stored);
    all_match.then(|| UploadToken(first.to_string()))
}

/// The token segment of an upload URL, `<base>/upload/<token>`.
fn url_token(url: &str) -> Option<&str> {
    let (_, token) = url.rsplit_once(&format!("{UPLOAD_PATH}/"))?;
    (!token.is_empty() && !token.contains(['/', '?', '#'])).then_some(token)
}

/// The image's upload URL under `base`.
pub fn upload_url(base: &str, token: &UploadToken) -> String {
    format!(
        "{}{UPLOAD_PATH}/{}",
        base.trim_end_matches('/'),
        token.as_str()
    )
}

/// The images waiting for an upload, shared by the HTTP handler and the import tasks.
#[derive(Default)]
pub struct UploadGate {
    /// By sha256 of the token.
    waiting: Mutex<HashMap<TokenDigest, Waiter>>,
}

/// Another image's upload is already registered under this digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an upload is already registered under this token")]
pub struct AlreadyRegistered;

struct Waiter {
    digest: TokenDigest,
    uploads: mpsc::Sender<Upload>,
    /// Set while an upload of this image runs: the next one gets 409.
    busy: Arc<AtomicBool>,
}

/// Clears the busy flag when the handler is done, however it ends.
struct BusyGuard(Arc<AtomicBool>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// An image's registration with the gate; unregisters when dropped.
pub struct UploadTicket {
    gate: Arc<UploadGate>,
    key: TokenDigest,
    uploads: mpsc::Receiver<Upload>,
}

impl UploadTicket {
    /// The next upload to arrive.
    pub async fn next(&mut self) -> Option<Upload> {
        self.uploads.recv().await
    }
}

impl Drop for UploadTicket {
    fn drop(&mut self) {
        self.gate.lock().remove(&self.key);
    }
}

/// What the uploader is told when the import of its bytes ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    Stored { registry_url: String },
    Refused { reason: String, message: String },
}

/// One upload in progress: its body is a byte source for the pipeline.
pub struct Upload {
    body: BodyDataStream,
    content_length: Option<u64>,
    file_name: String,
    outcome: Option<oneshot::Sender<UploadOutcome>>,
}

impl Upload {
    pub fn file_name(&self) -> String {
        self.file_name.clone()
    }
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, SourceError> {
        match self.body.next().await {
            None => Ok(None),
            Some(Ok(chunk)) => Ok(Some(chunk)),
            Some(Err(error)) => Err(SourceError {
                kind: SourceErrorKind::Transient,
                reason: super::reason::UPLOAD_INTERRUPTED,
                message: format!("the upload broke off ({error}); upload the image again"),
            }),
        }
    }
    /// Tells the uploader how its upload ended.
    pub fn respond(&mut self, outcome: UploadOutcome) {
        if let Some(sender) = self.outcome.take() {
            // The uploader may be gone (a broken upload): nobody to tell then.
            let _ = sender.send(outcome);
        }
    }
}

impl UploadGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenDigest, Waiter>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers an image waiting for an upload under the sha256 of its token: a new token's,
    /// or the one an earlier daemon published. A digest registered already (another image's)
    /// is refused, never replaced.
    pub fn register(self: &Arc<Self>, key: TokenDigest) -> Result<UploadTicket, AlreadyRegistered> {
        let (sender, uploads) = mpsc::channel(1);
        let mut waiting = self.lock();
        if waiting.contains_key(&key) {
            return Err(AlreadyRegistered);
        }
        waiting.insert(
            key,
            Waiter {
                digest: key,
                uploads: sender,
                busy: Arc::default(),
            },
        );
        Ok(UploadTicket {
            gate: self.clone(),
            key,
            uploads,
        })
    }

    /// How many images are registered (waiting for or receiving an upload).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The upload endpoints: `PUT` and `POST` on `/upload/<token>`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(
                &format!("{UPLOAD_PATH}/{{token}}"),
                put(receive).post(receive),
            )
            .with_state(self)
    }
}

async fn receive(
    State(gate): State<Arc<UploadGate>>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let presented = TokenDigest::of(&token);
    let (sender, busy) = {
        let waiting = gate.lock();
        match waiting.get(&presented) {
            Some(waiter) if waiter.digest.matches(&presented) => {
                (waiter.uploads.clone(), waiter.busy.clone())
            }
            _ => return StatusCode::NOT_FOUND.into_response(),
        }
    };
    if busy.swap(true, Ordering::AcqRel) {
        return (
            StatusCode::CONFLICT,
            "another upload of this image is in progress; wait for it to end\n",
        )
            .into_response();
    }
    let _busy = BusyGuard(busy);
    let (outcome_sender, outcome) = oneshot::channel();
    let upload = Upload {
        body: body.into_data_stream(),
        content_length: headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
        file_name: file_name(&headers),
        outcome: Some(outcome_sender),
    };
    // Not busy, so the channel is empty; closed means the image stopped waiting just now.
    if sender.try_send(upload).is_err() {
        return StatusCode::NOT_FOUND.into_response();
    }
    match outcome.await {
        Ok(UploadOutcome::Stored { registry_url }) => (
            StatusCode::CREATED,
            format!("stored in DVCR as {registry_url}\n"),
        )
            .into_response(),
        Ok(UploadOutcome::Refused { reason, message }) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{reason}: {message}\n"),
        )
            .into_response(),
        // The image went away (deleted, spec changed) while the upload ran.
        Err(_) => (StatusCode::GONE, "the image is gone\n").into_response(),
    }
}

/// The file name from `Content-Disposition: attachment; filename="..."`, as the CLI sends it;
/// `curl -T` sends none.
fn file_name(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(';')
                .find_map(|part| part.trim().strip_prefix("filename="))
        })
        .map(|name| name.trim_matches('"').to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "disk.img".to_string())
}

impl crate::import::pipeline::ByteSource for Upload {
    fn file_name(&self) -> String {
        Upload::file_name(self)
    }
    fn content_length(&self) -> Option<u64> {
        Upload::content_length(self)
    }
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, SourceError> {
        Upload::next_chunk(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_different() {
        let a = UploadToken::generate().unwrap();
        let b = UploadToken::generate().unwrap();
        assert_eq!(a.as_str().len(), 64);
        assert_ne!(a.as_str(), b.as_str());
        assert!(a.as_str().chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn a_failing_random_generator_gives_no_token_rather_than_a_predictable_one() {
        assert_eq!(
            UploadToken::from_random(|_| false).unwrap_err(),
            RandomUnavailable
        );
        let token = UploadToken::from_random(|bytes| {
            bytes.fill(0xab);
            true
        })
        .unwrap();
        assert_eq!(token.as_str(), "ab".repeat(32));
    }

    #[test]
    fn a_token_never_shows_in_debug_output() {
        let token = UploadToken::generate().unwrap();
        let shown = format!("{token:?}");
        assert!(!shown.contains(token.as_str()), "{shown}");
    }

    #[test]
    fn digests_round_trip_through_hex_and_compare_exactly() {
        let token = UploadToken::generate().unwrap();
        let digest = token.digest();
        assert_eq!(digest.to_hex().len(), 64);
        assert_eq!(TokenDigest::parse(&digest.to_hex()), Some(digest));
        assert!(digest.matches(&TokenDigest::of(token.as_str())));
        assert!(!digest.matches(&TokenDigest::of("another token")));
        assert_eq!(TokenDigest::parse("abc"), None);
        assert_eq!(TokenDigest::parse(&"z".repeat(64)), None);
        assert_eq!(TokenDigest::parse(&"0".repeat(66)), None);
    }

    fn waiting_status(token: &str, phase: ImagePhase) -> ImageStatus {
        ImageStatus {
            phase: Some(phase),
            observed_generation: Some(2),
            image_upload_urls: Some(ImageUploadUrls {
                external: Some(format!("https://images.example.com/upload/{token}")),
                in_cluster: Some(format!(
                    "http://image-catalog-upload.image-catalog.svc/upload/{token}"
                )),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_waiting_image_keeps_the_token_its_annotation_holds_the_hash_of() {
        let token = UploadToken::generate().unwrap();
        let hash = token.digest().to_hex();
        for phase in [
            ImagePhase::WaitForUserUpload,
            ImagePhase::Provisioning,
            ImagePhase::Pending,
        ] {
            let status = waiting_status(token.as_str(), phase);
            let kept = published_token(&status, 2, Some(&hash)).expect("kept");
            assert_eq!(kept.as_str(), token.as_str());
            assert_eq!(
                upload_url("https://images.example.com/", &kept),
                status.image_upload_urls.unwrap().external.unwrap()
            );
        }
    }

    #[test]
    fn a_new_spec_a_missing_or_other_hash_or_a_settled_image_gets_a_new_token() {
        let token = UploadToken::generate().unwrap();
        let hash = token.digest().to_hex();
        let status = waiting_status(token.as_str(), ImagePhase::WaitForUserUpload);
        // A new spec.
        assert!(published_token(&status, 3, Some(&hash)).is_none());
        // No hash, a malformed one, another token's.
        assert!(published_token(&status, 2, None).is_none());
        assert!(published_token(&status, 2, Some("not hex")).is_none());
        let other = UploadToken::generate().unwrap().digest().to_hex();
        assert!(published_token(&status, 2, Some(&other)).is_none());
        // Settled.
        for phase in [
            ImagePhase::Ready,
            ImagePhase::Failed,
            ImagePhase::Terminating,
        ] {
            let status = waiting_status(token.as_str(), phase);
            assert!(published_token(&status, 2, Some(&hash)).is_none());
        }
        // No URLs, or URLs with two different tokens.
        let mut status = waiting_status(token.as_str(), ImagePhase::WaitForUserUpload);
        status.image_upload_urls = None;
        assert!(published_token(&status, 2, Some(&hash)).is_none());
        let mut status = waiting_status(token.as_str(), ImagePhase::WaitForUserUpload);
        status.image_upload_urls.as_mut().unwrap().in_cluster =
            Some("http://svc/upload/other".into());
        assert!(published_token(&status, 2, Some(&hash)).is_none());
    }

    #[test]
    fn the_file_name_comes_from_content_disposition() {
        let mut headers = HeaderMap::new();
        assert_eq!(file_name(&headers), "disk.img");
        headers.insert(
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"ipxe.iso\"".parse().unwrap(),
        );
        assert_eq!(file_name(&headers), "ipxe.iso");
    }

    #[tokio::test]
    async fn a_ticket_unregisters_its_token_when_dropped() {
        let gate = Arc::new(UploadGate::default());
        let ticket = gate.register(TokenDigest::of("t")).unwrap();
        assert_eq!(gate.len(), 1);
        drop(ticket);
        assert!(gate.is_empty());
    }

    #[tokio::test]
    async fn a_digest_registered_already_is_refused_not_replaced() {
        let gate = Arc::new(UploadGate::default());
        let _first = gate.register(TokenDigest::of("t")).unwrap();
        assert!(gate.register(TokenDigest::of("t")).is_err());
        assert_eq!(gate.len(), 1);
    }

    /// Serves the gate on loopback and PUTs `body` to `/upload/<token>`.
    async fn put(base: &str, token: &str) -> u16 {
        crate::tls::install_crypto_provider();
        reqwest::Client::new()
            .put(format!("{base}{UPLOAD_PATH}/{token}"))
            .body("bytes")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn serve(gate: &Arc<UploadGate>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(axum::serve(listener, gate.clone().router()).into_future());
        base
    }

    #[tokio::test]
    async fn a_registered_hash_accepts_its_token_and_a_wrong_token_gets_a_bare_404() {
        let gate = Arc::new(UploadGate::default());
        let token = UploadToken::generate().unwrap();
        // Registered by its hash only, as a new daemon does after a restart.
        let mut ticket = gate
            .register(TokenDigest::parse(&token.digest().to_hex()).unwrap())
            .unwrap();
        let base = serve(&gate).await;
        assert_eq!(put(&base, &"0".repeat(64)).await, 404);
        let digest_as_token = put(&base, &token.digest().to_hex()).await;
        assert_eq!(digest_as_token, 404, "the hash is not the token");
        let receiver = tokio::spawn(async move {
            let mut upload = ticket.next().await.unwrap();
            while upload.next_chunk().await.unwrap().is_some() {}
            upload.respond(UploadOutcome::Stored {
                registry_url: "dvcr/cvi/a:uid".into(),
            });
            ticket
        });
        assert_eq!(put(&base, token.as_str()).await, 201);
        drop(receiver.await.unwrap());
        assert_eq!(put(&base, token.as_str()).await, 404);
    }
}
