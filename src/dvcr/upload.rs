//! The disk layer upload: one streaming PATCH that carries the tar framing and the disk bytes.
//!
//! `write()` hands each chunk to a bounded channel; a spawned task runs the PATCH whose body
//! drains that channel and hashes what it sends, so the caller's own work (download, its file
//! digests) and the layer hash run on different threads, and a slow registry blocks `write()`
//! instead of growing memory. `finish()` ends the body, then commits the blob with
//! `PUT <location>&digest=`.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, warn};
use url::Url;

use super::{Dvcr, DvcrError, StoredLayer, layout, location, response_error};

/// Chunks buffered between `write()` and the request: the memory bound is this many of the
/// caller's chunks.
const CHANNEL_CHUNKS: usize = 8;
/// How long `write()` may wait for the registry to take more bytes before giving up.
const STALL_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the registry may take to answer once the whole body is sent, and to commit.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an abort waits for the request to wind down before cancelling the session.
const ABORT_TIMEOUT: Duration = Duration::from_secs(30);

type PatchTask = JoinHandle<Result<reqwest::Response, reqwest::Error>>;

/// An upload in progress of the layer holding one disk file; see [`Dvcr::start_disk_layer`].
///
/// Dropping it unfinished cancels the upload session in the background (inside a tokio
/// runtime); [`DiskLayerUpload::abort`] does the same and waits for it.
pub struct DiskLayerUpload {
    session: Option<Session>,
}

struct Session {
    dvcr: Dvcr,
    repository: String,
    /// The upload URL from the POST, `_state` included.
    location: Url,
    auth: Option<HeaderValue>,
    sender: Option<mpsc::Sender<Bytes>>,
    request: Option<PatchTask>,
    /// `sha256:<hex>` of everything the body sent, once it has ended.
    digest: Option<oneshot::Receiver<String>>,
    file_size: u64,
    /// Disk file bytes accepted so far.
    written: u64,
    /// Set when a write failed or was cancelled mid-way: the stream is unusable.
    failed: Option<DvcrError>,
}

impl std::fmt::Debug for DiskLayerUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("DiskLayerUpload");
        if let Some(session) = &self.session {
            s.field("repository", &session.repository)
                .field("file_size", &session.file_size)
                .field("written", &session.written);
        }
        s.finish_non_exhaustive()
    }
}

impl DiskLayerUpload {
    /// Starts the PATCH and queues the two tar headers. Needs a tokio runtime.
    pub(super) fn start(
        dvcr: Dvcr,
        repository: &str,
        location: Url,
        auth: Option<HeaderValue>,
        file_name: &str,
        file_size: u64,
    ) -> Self {
        let (sender, receiver) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
        let (digest_sender, digest) = oneshot::channel();
        let body = hashing_body(receiver, digest_sender);
        // No Content-Length: the body is chunked, so closing it early (abort) still ends the
        // request cleanly and the registry answers with the state needed to cancel the session.
        let request = dvcr
            .authorize(
                dvcr.http().patch(location.clone()),
                &location,
                auth.as_ref(),
            )
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body));
        let request = tokio::spawn(request.send());

        let headers = Bytes::copy_from_slice(&layout::disk_headers(file_name, file_size));
        // The channel is empty and has room: try_send cannot be Full. Closed means the request
        // already failed, which the first write() or finish() reports.
        let _ = sender.try_send(headers);

        Self {
            session: Some(Session {
                dvcr,
                repository: repository.to_string(),
                location,
                auth,
                sender: Some(sender),
                request: Some(request),
                digest: Some(digest),
                file_size,
                written: 0,
                failed: None,
            }),
        }
    }

    /// Sends the next bytes of the disk file. Waits while the registry is slower than the
    /// caller (at most `CHANNEL_CHUNKS` chunks are buffered).
    ///
    /// Fails on more bytes than declared. After any error the upload is unusable: `finish()`
    /// fails too; call `abort()` (or drop it).
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), DvcrError> {
        let session = self.session.as_mut().ok_or_else(finished)?;
        if let Some(error) = &session.failed {
            return Err(error.clone());
        }
        if chunk.is_empty() {
            return Ok(());
        }
        let written = session.written + chunk.len() as u64;
        if written > session.file_size {
            let error = DvcrError::SizeMismatch {
                declared: session.file_size,
                written,
            };
            session.failed = Some(error.clone());
            return Err(error);
        }
        session.written = written;
        // Marks the stream broken if this future is dropped before the chunk is queued: the
        // count already includes bytes the registry would then never get.
        session.failed = Some(DvcrError::protocol(
            "upload layer",
            "a write was cancelled mid-way",
        ));
        let sent = session.send(chunk).await;
        session.failed = sent.as_ref().err().cloned();
        sent
    }

    /// Finishes the tar (padding, end blocks), checks that exactly the declared number of
    /// bytes was written, and commits the blob. Nothing is tagged.
    pub async fn finish(mut self) -> Result<StoredLayer, DvcrError> {
        // The session stays in `self` meanwhile, so dropping this future cancels it too.
        let session = self.session.as_mut().ok_or_else(finished)?;
        let result = session.finish().await;
        if let Some(session) = self.session.take()
            && result.is_err()
        {
            session.cancel().await;
        }
        result
    }

    /// Abandons the upload: ends the request and cancels the session (best effort).
    pub async fn abort(mut self) {
        if let Some(session) = self.session.take() {
            session.cancel().await;
        }
    }

    /// Disk file bytes written so far.
    pub fn written(&self) -> u64 {
        self.session.as_ref().map_or(0, |s| s.written)
    }
}

impl Drop for DiskLayerUpload {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(session.cancel());
                }
                // Without a runtime the request still ends when the sender drops; the registry
                // purges the abandoned session on its own.
                Err(_) => debug!("DVCR upload dropped outside a runtime; session left to expire"),
            }
        }
    }
}

fn finished() -> DvcrError {
    DvcrError::protocol("upload layer", "the upload is already finished")
}

impl Session {
    /// Queues `chunk` for the request, waiting for room.
    async fn send(&mut self, chunk: Bytes) -> Result<(), DvcrError> {
        let Some(sender) = &self.sender else {
            return Err(finished());
        };
        match tokio::time::timeout(STALL_TIMEOUT, sender.send(chunk)).await {
            Ok(Ok(())) => Ok(()),
            // The request ended before its body did: its outcome says why.
            Ok(Err(_)) => Err(self.early_end().await),
            Err(_) => Err(DvcrError::Unavailable {
                operation: "upload layer",
                status: None,
                message: format!("the registry took no data for {}s", STALL_TIMEOUT.as_secs()),
            }),
        }
    }

    /// The error of a PATCH that ended while the body was still being written.
    async fn early_end(&mut self) -> DvcrError {
        let Some(request) = self.request.take() else {
            return finished();
        };
        match request.await {
            Ok(Ok(response)) if !response.status().is_success() => {
                response_error("upload layer", response).await
            }
            Ok(Ok(response)) => DvcrError::protocol(
                "upload layer",
                format!(
                    "the registry answered {} before the layer was complete",
                    response.status()
                ),
            ),
            Ok(Err(e)) => DvcrError::network("upload layer", &e),
            Err(e) => DvcrError::protocol("upload layer", format!("upload task failed: {e}")),
        }
    }

    async fn finish(&mut self) -> Result<StoredLayer, DvcrError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if self.written != self.file_size {
            return Err(DvcrError::SizeMismatch {
                declared: self.file_size,
                written: self.written,
            });
        }
        let trailer = Bytes::from(layout::trailer(self.file_size));
        self.send(trailer).await?;
        // Ends the body.
        self.sender = None;

        let layer_size = layout::layer_size(self.file_size);
        let Some(mut request) = self.request.take() else {
            return Err(finished());
        };
        let response = match tokio::time::timeout(COMMIT_TIMEOUT, &mut request).await {
            Ok(Ok(Ok(response))) => response,
            Ok(Ok(Err(e))) => return Err(DvcrError::network("upload layer", &e)),
            Ok(Err(e)) => {
                return Err(DvcrError::protocol(
                    "upload layer",
                    format!("upload task failed: {e}"),
                ));
            }
            Err(_) => {
                request.abort();
                return Err(DvcrError::Unavailable {
                    operation: "upload layer",
                    status: None,
                    message: "no answer after the whole layer was sent".to_string(),
                });
            }
        };
        if response.status() != StatusCode::ACCEPTED {
            return Err(response_error("upload layer", response).await);
        }
        // The session's new state: a commit or cancel with the old one is refused.
        self.location = location(&response, "upload layer")?;
        if let Some(range) = response
            .headers()
            .get("Range")
            .and_then(|v| v.to_str().ok())
        {
            let expected = format!("0-{}", layer_size - 1);
            if range != expected {
                return Err(DvcrError::protocol(
                    "upload layer",
                    format!("registry holds bytes {range}, expected {expected}"),
                ));
            }
        }

        // The body ended (the registry answered after reading all of it), so the digest is set.
        let digest = match self.digest.take() {
            Some(digest) => digest.await.map_err(|_| {
                DvcrError::protocol("upload layer", "the layer body was not sent to its end")
            })?,
            None => return Err(finished()),
        };
        let mut commit = self.location.clone();
        commit.query_pairs_mut().append_pair("digest", &digest);
        let request = self
            .dvcr
            .authorize(
                self.dvcr.http().put(commit.clone()),
                &commit,
                self.auth.as_ref(),
            )
            .header(CONTENT_LENGTH, "0")
            .timeout(COMMIT_TIMEOUT);
        let response = request
            .send()
            .await
            .map_err(|e| DvcrError::network("commit layer", &e))?;
        if response.status() != StatusCode::CREATED {
            return Err(response_error("commit layer", response).await);
        }
        if let Some(stored) = response
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            && stored != digest
        {
            return Err(DvcrError::protocol(
                "commit layer",
                format!("registry stored {stored}, sent {digest}"),
            ));
        }
        debug!(repository = %self.repository, digest, size = layer_size, "DVCR layer committed");
        Ok(StoredLayer {
            digest,
            size: layer_size,
        })
    }

    /// Ends the request and cancels the session. Ending the body cleanly (rather than cutting
    /// the connection) gets the registry's latest `_state`, without which it refuses the DELETE.
    async fn cancel(mut self) {
        self.sender = None;
        if let Some(mut request) = self.request.take() {
            match tokio::time::timeout(ABORT_TIMEOUT, &mut request).await {
                Ok(Ok(Ok(response))) if response.status() == StatusCode::ACCEPTED => {
                    if let Ok(latest) = location(&response, "abort upload") {
                        self.location = latest;
                    }
                }
                Ok(_) => {}
                Err(_) => request.abort(),
            }
        }
        let request = self
            .dvcr
            .authorize(
                self.dvcr.http().delete(self.location.clone()),
                &self.location,
                self.auth.as_ref(),
            )
            .timeout(ABORT_TIMEOUT);
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                debug!(repository = %self.repository, "DVCR upload cancelled");
            }
            Ok(response) => {
                // The registry purges stale sessions itself; nothing was tagged either way.
                warn!(repository = %self.repository, status = %response.status(), "DVCR refused to cancel an upload session");
            }
            Err(e) => {
                warn!(repository = %self.repository, error = %e, "cancelling a DVCR upload session failed");
            }
        }
    }
}

/// The PATCH body: the chunks from `receiver`, hashed on the way; the digest goes to
/// `digest` when the channel closes (the body's normal end).
fn hashing_body(
    mut receiver: mpsc::Receiver<Bytes>,
    digest: oneshot::Sender<String>,
) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static {
    let mut hasher = Some(Sha256::new());
    let mut digest = Some(digest);
    futures::stream::poll_fn(move |cx| match receiver.poll_recv(cx) {
        std::task::Poll::Ready(Some(chunk)) => {
            if let Some(hasher) = hasher.as_mut() {
                hasher.update(&chunk);
            }
            std::task::Poll::Ready(Some(Ok(chunk)))
        }
        std::task::Poll::Ready(None) => {
            if let (Some(hasher), Some(digest)) = (hasher.take(), digest.take()) {
                // Nobody waits for it after an abort.
                let _ = digest.send(format!("sha256:{}", hex::encode(hasher.finalize())));
            }
            std::task::Poll::Ready(None)
        }
        std::task::Poll::Pending => std::task::Poll::Pending,
    })
}
