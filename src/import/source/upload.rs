//! Uploads (`type: Upload`): the user streams the image with `curl -T image.img <url>` (PUT or
//! POST, with or without Content-Length). Each image waiting for an upload gets an unguessable
//! token (256 bits) in its URL; the HTTP handler hands the request body to the image's import
//! task as a byte source, and answers the uploader with the import's result.
//!
//! Tokens are looked up by their sha256, so the lookup's timing says nothing about the token,
//! and then compared in constant time. A wrong or old token gets the same bare 404 as a path
//! that never existed. One upload at a time per image: a second one gets 409.

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

/// The path prefix of upload URLs.
pub const UPLOAD_PATH: &str = "/upload";

/// The images waiting for an upload, shared by the HTTP handler and the import tasks.
#[derive(Default)]
pub struct UploadGate {
    /// By sha256 of the token.
    waiting: Mutex<HashMap<[u8; 32], Waiter>>,
}

struct Waiter {
    token: String,
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
    key: [u8; 32],
    pub token: String,
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
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Waiter>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers an image waiting for an upload, under a new token.
    pub fn open(self: &Arc<Self>) -> UploadTicket {
        let token = new_token();
        let key = token_key(&token);
        let (sender, uploads) = mpsc::channel(1);
        self.lock().insert(
            key,
            Waiter {
                token: token.clone(),
                uploads: sender,
                busy: Arc::default(),
            },
        );
        UploadTicket {
            gate: self.clone(),
            key,
            token,
            uploads,
        }
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
    let key = token_key(&token);
    let (sender, busy) = {
        let waiting = gate.lock();
        match waiting.get(&key) {
            Some(waiter) if constant_time_eq(waiter.token.as_bytes(), token.as_bytes()) => {
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

/// 32 random bytes from the process's crypto provider, as hex: 256 bits.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    if provider.secure_random.fill(&mut bytes).is_err() {
        // The system's randomness failing is not survivable for a security token.
        tracing::error!("the system random generator failed; upload tokens are not safe");
    }
    hex::encode(bytes)
}

fn token_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares without an early exit, so the time taken says nothing about where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_different() {
        let a = new_token();
        let b = new_token();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
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
        let ticket = gate.open();
        assert_eq!(gate.lock().len(), 1);
        drop(ticket);
        assert!(gate.lock().is_empty());
    }
}
