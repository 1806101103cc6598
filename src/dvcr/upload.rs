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

/// What the PATCH body task is handed, in order.
enum Frame {
    /// Bytes to hash and send.
    Send(Bytes),
    /// Bytes the registry already holds (sent before a restart): hashed, not sent again.
    HashOnly(Bytes),
    /// Asks for the layer hash state after every frame before this one.
    Snapshot(oneshot::Sender<Vec<u8>>),
}

/// An upload in progress of the layer holding one disk file; see [`Dvcr::start_disk_layer`].
///
/// Dropping it unfinished cancels the upload session in the background (inside a tokio
/// runtime); [`DiskLayerUpload::abort`] does the same and waits for it.
pub struct DiskLayerUpload {
    session: Option<Session>,
    /// Dropping it leaves the session open: a checkpoint names it, for a later resume.
    keep_on_drop: bool,
}

struct Session {
    dvcr: Dvcr,
    repository: String,
    /// The upload URL from the POST, `_state` included.
    location: Url,
    auth: Option<HeaderValue>,
    sender: Option<mpsc::Sender<Frame>>,
    request: Option<PatchTask>,
    /// `sha256:<hex>` of everything the body sent, once it has ended.
    digest: Option<oneshot::Receiver<String>>,
    file_size: u64,
    /// Disk file bytes accepted so far.
    written: u64,
    /// Layer bytes handed to the body task so far (hashed).
    layer_pos: u64,
    /// Layer bytes the registry held when this process took the session over: those are
    /// hashed only.
    registry_has: u64,
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
    pub(super) fn open(
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

/// What the registry holds of an open upload session.
#[derive(Debug, Clone)]
pub struct SessionStatus {
    /// Layer bytes received.
    pub size: u64,
    /// The session URL with a state token for `size`, for the next request.
    pub location: Url,
}

impl Dvcr {
    /// How many bytes the registry holds of the upload `session` (a URL from
    /// [`DiskLayerUpload::session_url`]); `None` when it no longer knows the session.
    pub async fn upload_status(
        &self,
        repository: &str,
        session: &Url,
    ) -> Result<Option<(SessionStatus, Option<HeaderValue>)>, DvcrError> {
        check_session(self, session)?;
        let (response, auth) = self
            .send("upload status", repository, session, |http, url| {
                http.get(url).timeout(ABORT_TIMEOUT)
            })
            .await?;
        Ok(session_status(response).await?.map(|status| (status, auth)))
    }

    /// Goes on with the upload `session` of a file of `file_size` bytes named as before, from
    /// a saved layer hash state after `snapshot.written` bytes. `None` when the session is
    /// gone or holds fewer bytes than the snapshot covers (it is cancelled then): the upload
    /// must start over.
    pub async fn resume_disk_layer(
        &self,
        repository: &str,
        session: &Url,
        file_size: u64,
        snapshot: &LayerSnapshot,
    ) -> Result<Option<(DiskLayerUpload, u64)>, DvcrError> {
        check_repository(repository)?;
        let Some(hasher) = layer_hasher(&snapshot.layer_state) else {
            self.cancel_upload_session(repository, session).await;
            return Ok(None);
        };
        let Some((status, auth)) = self.upload_status(repository, session).await? else {
            return Ok(None);
        };
        let covered = layout::HEADERS_LEN + snapshot.written;
        if snapshot.written > file_size
            || status.size < covered
            || status.size > layout::layer_size(file_size)
        {
            debug!(
                repository,
                held = status.size,
                covered,
                "the DVCR upload session does not fit its checkpoint; starting over"
            );
            self.cancel_upload_session(repository, session).await;
            return Ok(None);
        }
        debug!(
            repository,
            held = status.size,
            covered,
            "DVCR upload resumed"
        );
        let upload = DiskLayerUpload::open(
            self.clone(),
            repository,
            status.location,
            auth,
            file_size,
            Resumed {
                hasher,
                written: snapshot.written,
                registry_has: status.size,
            },
        );
        Ok(Some((upload, status.size)))
    }

    /// Cancels an upload session left open, from its URL without a state token (best effort:
    /// the registry purges stale sessions itself).
    pub async fn cancel_upload_session(&self, repository: &str, session: &Url) {
        match self.upload_status(repository, session).await {
            Ok(Some((status, auth))) => self.cancel_upload(&status.location, auth.as_ref()).await,
            Ok(None) => {}
            Err(error) => {
                warn!(repository, %error, "cannot read a DVCR upload session to cancel it");
            }
        }
    }
}

/// What a session status answer says: `None` for a session the registry does not know.
async fn session_status(response: reqwest::Response) -> Result<Option<SessionStatus>, DvcrError> {
    if response.status() == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if response.status() != StatusCode::NO_CONTENT {
        return Err(response_error("upload status", response).await);
    }
    let size = response
        .headers()
        .get("Range")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_upload_range)
        .ok_or_else(|| DvcrError::protocol("upload status", "no usable Range header"))?;
    let location = location(&response, "upload status")?;
    Ok(Some(SessionStatus { size, location }))
}

/// Asks how much of one running upload the registry holds, with the upload's own credentials
/// (one request each time, where a registry with tokens would otherwise be asked for a new
/// one): what a checkpoint is confirmed with.
#[derive(Clone)]
pub struct SessionProbe {
    dvcr: Dvcr,
    session: Url,
    auth: Option<HeaderValue>,
}

impl SessionProbe {
    /// Layer bytes the registry holds; `None` once it no longer knows the session.
    pub async fn held(&self) -> Result<Option<u64>, DvcrError> {
        let response = self
            .dvcr
            .authorize(
                self.dvcr.http().get(self.session.clone()),
                &self.session,
                self.auth.as_ref(),
            )
            .timeout(ABORT_TIMEOUT)
            .send()
            .await
            .map_err(|e| DvcrError::network("upload status", &e))?;
        Ok(session_status(response).await?.map(|status| status.size))
    }
}

/// Upload sessions are the registry's own URLs: a saved one that points elsewhere is not
/// followed (credentials never cross hosts, and a checkpoint is outside input).
fn check_session(dvcr: &Dvcr, session: &Url) -> Result<(), DvcrError> {
    if crate::net::same_origin(session, &dvcr.inner.base) {
        Ok(())
    } else {
        Err(DvcrError::InvalidReference(
            "an upload session on another host than DVCR".to_string(),
        ))
    }
}

/// The bytes an upload holds, from its `Range: 0-<last>` (distribution says `0-0` for none).
fn parse_upload_range(value: &str) -> Option<u64> {
    let (first, last) = value.trim().split_once('-')?;
    if first != "0" {
        return None;
    }
    let last: u64 = last.parse().ok()?;
    Some(if last == 0 { 0 } else { last + 1 })
}

/// Where a resumed upload stands.
pub(super) struct Resumed {
    /// The layer hash after the two headers and `written` disk file bytes.
    pub hasher: Sha256,
    pub written: u64,
    /// Layer bytes the registry holds (at least the headers and `written` bytes).
    pub registry_has: u64,
}

impl Default for Resumed {
    fn default() -> Self {
        Self {
            hasher: Sha256::new(),
            written: 0,
            registry_has: 0,
        }
    }
}

/// The layer hash state after `written` bytes of the disk file (and the two headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSnapshot {
    pub written: u64,
    pub layer_state: Vec<u8>,
}

/// The layer hash as saved by [`DiskLayerUpload::snapshot`].
pub(super) fn layer_hasher(state: &[u8]) -> Option<Sha256> {
    let state = state.try_into().ok()?;
    Sha256::deserialize(&state).ok()
}

/// `url` without the registry's `_state` query parameter (which goes stale with every request).
pub(super) fn without_state(url: &Url) -> Url {
    let mut bare = url.clone();
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(key, _)| key != "_state")
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    bare.set_query(None);
    if !kept.is_empty() {
        bare.query_pairs_mut().extend_pairs(kept);
    }
    bare
}

impl Session {
    /// Queues layer bytes: what the registry already holds is hashed only, the rest is sent.
    async fn send_layer(&mut self, mut chunk: Bytes) -> Result<(), DvcrError> {
        let start = self.layer_pos;
        self.layer_pos += chunk.len() as u64;
        if start < self.registry_has {
            let held = (self.registry_has - start).min(chunk.len() as u64) as usize;
            self.send(Frame::HashOnly(chunk.split_to(held))).await?;
        }
        if chunk.is_empty() {
            return Ok(());
        }
        self.send(Frame::Send(chunk)).await
    }

    /// Queues `frame` for the request, waiting for room.
    async fn send(&mut self, frame: Frame) -> Result<(), DvcrError> {
        let Some(sender) = &self.sender else {
            return Err(finished());
        };
        match tokio::time::timeout(STALL_TIMEOUT, sender.send(frame)).await {
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
        self.send_layer(trailer).await?;
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
    /// Ends the body cleanly and waits (a while) for the registry's answer, keeping the
    /// session's newest state token from it.
    async fn end_request(&mut self) {
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
    }

    async fn cancel(mut self) {
        self.end_request().await;
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

/// The PATCH body: the bytes from `receiver`, hashed on the way (starting from `hasher`); the
/// digest goes to `digest` when the channel closes (the body's normal end).
fn hashing_body(
    mut receiver: mpsc::Receiver<Frame>,
    digest: oneshot::Sender<String>,
    hasher: Sha256,
) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static {
    let mut hasher = Some(hasher);
    let mut digest = Some(digest);
    futures::stream::poll_fn(move |cx| {
        loop {
            return match receiver.poll_recv(cx) {
                std::task::Poll::Ready(Some(Frame::Send(chunk))) => {
                    if let Some(hasher) = hasher.as_mut() {
                        hasher.update(&chunk);
                    }
                    std::task::Poll::Ready(Some(Ok(chunk)))
                }
                std::task::Poll::Ready(Some(Frame::HashOnly(chunk))) => {
                    if let Some(hasher) = hasher.as_mut() {
                        hasher.update(&chunk);
                    }
                    continue;
                }
                std::task::Poll::Ready(Some(Frame::Snapshot(reply))) => {
                    if let Some(hasher) = hasher.as_ref() {
                        // Nobody waits for it when the snapshot's caller gave up.
                        let _ = reply.send(hasher.serialize().to_vec());
                    }
                    continue;
                }
                std::task::Poll::Ready(None) => {
                    if let (Some(hasher), Some(digest)) = (hasher.take(), digest.take()) {
                        // Nobody waits for it after an abort.
                        let _ = digest.send(format!("sha256:{}", hex::encode(hasher.finalize())));
                    }
                    std::task::Poll::Ready(None)
                }
                std::task::Poll::Pending => std::task::Poll::Pending,
            };
        }
    })
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
