//! The disk layer upload: one streaming PATCH that carries the tar framing and the disk bytes.
//!
//! `write()` hands each chunk to a bounded channel; a spawned task runs the PATCH whose body
//! drains that channel and hashes what it sends, so the caller's own work (download, its file
//! digests) and the layer hash run on different threads, and a slow registry blocks `write()`
//! instead of growing memory. `finish()` ends the body, then commits the blob with
//! `PUT <location>&digest=`.
//!
//! An upload can outlive the process that started it: [`DiskLayerUpload::snapshot`] gives the
//! layer hash state in stream order (for a checkpoint), [`DiskLayerUpload::detach`] ends the
//! request without cancelling the session, and [`Dvcr::resume_disk_layer`] goes on with a
//! session from its saved state. The registry may hold more bytes than the checkpoint covers
//! (those sent after it): the caller sends them again, they are hashed and not sent twice.
//! The registry checks the digest of its own bytes at the commit, so a resume that does not
//! line up is refused there, never stored.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, warn};
use url::Url;

use super::{Dvcr, DvcrError, StoredLayer, check_repository, layout, location, response_error};

mod resume;
mod session;

use resume::*;
pub use resume::{SessionProbe, SessionStatus};
use session::*;

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
    /// Dropping it leaves the session open: a checkpoint names it, for a later resume.
    keep_on_drop: bool,
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
        let mut upload = Self::open(
            dvcr,
            repository,
            location,
            auth,
            file_size,
            Resumed::default(),
        );
        if let Some(session) = upload.session.as_mut() {
            let headers = Bytes::copy_from_slice(&layout::disk_headers(file_name, file_size));
            session.layer_pos = headers.len() as u64;
            // The channel is empty and has room: try_send cannot be Full. Closed means the
            // request already failed, which the first write() or finish() reports.
            if let Some(sender) = &session.sender {
                let _ = sender.try_send(Frame::Send(headers));
            }
        }
        upload
    }

    /// Starts the PATCH of a session, fresh or, with `resumed`, one another process (or an
    /// earlier attempt) left: where the saved layer hash state stands and what the registry
    /// already holds.
    fn open(
        dvcr: Dvcr,
        repository: &str,
        location: Url,
        auth: Option<HeaderValue>,
        file_size: u64,
        resumed: Resumed,
    ) -> Self {
        let (sender, receiver) = mpsc::channel::<Frame>(CHANNEL_CHUNKS);
        let (digest_sender, digest) = oneshot::channel();
        let body = hashing_body(receiver, digest_sender, resumed.hasher);
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
        Self {
            keep_on_drop: false,
            session: Some(Session {
                dvcr,
                repository: repository.to_string(),
                location,
                auth,
                sender: Some(sender),
                request: Some(request),
                digest: Some(digest),
                file_size,
                written: resumed.written,
                layer_pos: layout::HEADERS_LEN + resumed.written,
                registry_has: resumed.registry_has,
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
        let sent = session.send_layer(chunk).await;
        session.failed = sent.as_ref().err().cloned();
        sent
    }

    /// The layer hash state once every byte written so far has been hashed, with the count
    /// of disk file bytes it covers: what a checkpoint saves.
    pub async fn snapshot(&mut self) -> Result<LayerSnapshot, DvcrError> {
        let session = self.session.as_mut().ok_or_else(finished)?;
        if let Some(error) = &session.failed {
            return Err(error.clone());
        }
        let (reply, state) = oneshot::channel();
        session.send(Frame::Snapshot(reply)).await?;
        let state = state.await.map_err(|_| {
            DvcrError::protocol("upload layer", "the layer body ended before its snapshot")
        })?;
        Ok(LayerSnapshot {
            written: session.written,
            layer_state: state,
        })
    }

    /// The session's URL without its state token: what another process needs to go on with
    /// it ([`Dvcr::resume_disk_layer`]).
    pub fn session_url(&self) -> Option<Url> {
        self.session.as_ref().map(|s| without_state(&s.location))
    }

    /// A way to ask how much of this upload the registry holds, meanwhile.
    pub fn probe(&self) -> Option<SessionProbe> {
        self.session.as_ref().map(|s| SessionProbe {
            dvcr: s.dvcr.clone(),
            session: without_state(&s.location),
            auth: s.auth.clone(),
        })
    }

    /// From now on, dropping the upload unfinished leaves its session open (a checkpoint names
    /// it); `abort()` still cancels it.
    pub fn keep_session_on_drop(&mut self) {
        self.keep_on_drop = true;
    }

    /// Ends the request cleanly and leaves the session open in the registry, with the bytes
    /// sent so far, for a later [`Dvcr::resume_disk_layer`] (a shutdown with a checkpoint).
    pub async fn detach(mut self) {
        if let Some(mut session) = self.session.take() {
            session.end_request().await;
            debug!(repository = %session.repository, written = session.written, "DVCR upload left open for a resume");
        }
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
        if self.keep_on_drop {
            // The body ends with the sender; the session stays for the resume.
            return;
        }
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

/// The layer hash state after `written` bytes of the disk file (and the two headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSnapshot {
    pub written: u64,
    pub layer_state: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_range_tells_the_bytes_held() {
        assert_eq!(parse_upload_range("0-0"), Some(0));
        assert_eq!(parse_upload_range("0-1023"), Some(1024));
        assert_eq!(parse_upload_range("5-9"), None);
        assert_eq!(parse_upload_range("bytes"), None);
    }

    #[test]
    fn the_state_token_is_dropped_from_a_session_url_and_nothing_else() {
        let url = Url::parse("https://dvcr/v2/cvi/a/blobs/uploads/u-1?_state=abc&x=1").unwrap();
        assert_eq!(
            without_state(&url).as_str(),
            "https://dvcr/v2/cvi/a/blobs/uploads/u-1?x=1"
        );
        let url = Url::parse("https://dvcr/v2/cvi/a/blobs/uploads/u-1?_state=abc").unwrap();
        assert_eq!(
            without_state(&url).as_str(),
            "https://dvcr/v2/cvi/a/blobs/uploads/u-1"
        );
    }
}
