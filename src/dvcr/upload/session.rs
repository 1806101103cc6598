//! The PATCH request of an upload: a task whose body drains the channel `write()` fills, hashing
//! what it sends, then the commit.

use super::*;

/// What the PATCH body task is handed, in order.
pub(super) enum Frame {
    /// Bytes to hash and send.
    Send(Bytes),
    /// Bytes the registry already holds (sent before a restart): hashed, not sent again.
    HashOnly(Bytes),
    /// Asks for the layer hash state after every frame before this one.
    Snapshot(oneshot::Sender<Vec<u8>>),
}

pub(super) struct Session {
    pub(super) dvcr: Dvcr,
    pub(super) repository: String,
    /// The upload URL from the POST, `_state` included.
    pub(super) location: Url,
    pub(super) auth: Option<HeaderValue>,
    pub(super) sender: Option<mpsc::Sender<Frame>>,
    pub(super) request: Option<PatchTask>,
    /// `sha256:<hex>` of everything the body sent, once it has ended.
    pub(super) digest: Option<oneshot::Receiver<String>>,
    pub(super) file_size: u64,
    /// Disk file bytes accepted so far.
    pub(super) written: u64,
    /// Layer bytes handed to the body task so far (hashed).
    pub(super) layer_pos: u64,
    /// Layer bytes the registry held when this process took the session over: those are
    /// hashed only.
    pub(super) registry_has: u64,
    /// Set when a write failed or was cancelled mid-way: the stream is unusable.
    pub(super) failed: Option<DvcrError>,
}

impl Session {
    /// Queues layer bytes: what the registry already holds is hashed only, the rest is sent.
    pub(super) async fn send_layer(&mut self, mut chunk: Bytes) -> Result<(), DvcrError> {
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
    pub(super) async fn send(&mut self, frame: Frame) -> Result<(), DvcrError> {
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
    pub(super) async fn early_end(&mut self) -> DvcrError {
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

    pub(super) async fn finish(&mut self) -> Result<StoredLayer, DvcrError> {
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
    pub(super) async fn end_request(&mut self) {
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

    pub(super) async fn cancel(mut self) {
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
pub(super) fn hashing_body(
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
