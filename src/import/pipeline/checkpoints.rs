//! Checkpoints of an upload straight into DVCR: the session recorded before a byte goes into
//! it, the hash states saved once DVCR confirms the bytes they cover, and a checkpoint turned
//! back into a start after a restart (or discarded, its session cancelled).

use super::*;

/// Cancels the DVCR upload session a checkpoint names (one nothing goes on with).
pub async fn cancel_left_session(dvcr: &Dvcr, found: &Checkpoint) {
    if let Ok(session) = url::Url::parse(&found.session) {
        dvcr.cancel_upload_session(&found.repository, &session)
            .await;
    }
}

/// Turns the latest checkpoint into a start: resumed when it fits the import and DVCR still
/// holds its session, else fresh (its session cancelled).
pub(super) async fn prepare_resume(
    dvcr: &Dvcr,
    request: &ImportRequest,
    checkpointing: &Checkpointing,
) -> Result<Start, ImportError> {
    let Some(found) = checkpointing.latest.borrow().clone() else {
        return Ok(Start::Fresh);
    };
    let want_md5 = request.checksum.as_ref().is_some_and(|c| c.md5.is_some());
    let discard = |why: &'static str| {
        tracing::info!(repository = %request.repository, why, "not resuming from the checkpoint; starting from byte 0");
        checkpointing.latest.send_replace(None);
    };
    let (checkpoint, states) =
        match checkpoint::decide(&found, &checkpointing.key, &request.repository, want_md5) {
            Resume::From(checkpoint, states) => (checkpoint, states),
            Resume::Discard(why) => {
                if found.repository == request.repository {
                    cancel_left_session(dvcr, &found).await;
                }
                discard(why);
                return Ok(Start::Fresh);
            }
        };
    let Ok(session) = url::Url::parse(&checkpoint.session) else {
        discard("its upload session is not a URL");
        return Ok(Start::Fresh);
    };
    let HashStates {
        sha256,
        md5,
        layer_sha256,
    } = states;
    let hashers = (
        Sha256Hasher::from_state(&sha256),
        md5.as_deref().map(Md5Hasher::from_state).transpose(),
    );
    let (Ok(sha256), Ok(md5)) = hashers else {
        cancel_left_session(dvcr, &checkpoint).await;
        discard("its hash states are not valid");
        return Ok(Start::Fresh);
    };
    let snapshot = LayerSnapshot {
        written: checkpoint.offset,
        layer_state: layer_sha256,
    };
    match dvcr
        .resume_disk_layer(
            &request.repository,
            &session,
            checkpoint.file_size,
            &snapshot,
        )
        .await?
    {
        Some((upload, held)) => {
            tracing::info!(
                repository = %request.repository,
                from = checkpoint.offset,
                dvcr_holds = held.saturating_sub(crate::dvcr::layout::HEADERS_LEN),
                "resuming the import from its checkpoint"
            );
            Ok(Start::Resumed(Box::new(Resumed {
                upload,
                checkpoint: *checkpoint,
                sha256,
                md5,
            })))
        }
        None => {
            discard("DVCR no longer holds its upload session, or holds fewer bytes");
            Ok(Start::Fresh)
        }
    }
}

/// Saves checkpoints of an upload straight into DVCR: every `interval`, the hash states in
/// stream order, published once DVCR confirms it holds the bytes they cover.
pub(super) struct UploadCheckpoints {
    pub(super) template: Checkpoint,
    pub(super) probe: SessionProbe,
    pub(super) latest: tokio::sync::watch::Sender<Option<Checkpoint>>,
    pub(super) interval: std::time::Duration,
    next: tokio::time::Instant,
    /// The snapshot being confirmed.
    confirming: Option<tokio::task::JoinHandle<bool>>,
}

/// The checkpoint that names a new upload session before any byte of the file is in it:
/// it covers nothing, so the next run cancels the session instead of going on from it.
pub(super) fn session_checkpoint(
    request: &ImportRequest,
    upload: &DiskLayerUpload,
    file_name: &str,
    file_size: u64,
    validator: Option<SourceValidator>,
) -> Option<Checkpoint> {
    let checkpointing = request.checkpointing.as_ref()?;
    Some(Checkpoint {
        version: checkpoint::VERSION,
        image: checkpointing.key.clone(),
        repository: request.repository.clone(),
        session: upload.session_url()?.to_string(),
        file_name: file_name.to_string(),
        file_size,
        offset: 0,
        sha256: String::new(),
        md5: None,
        layer_sha256: String::new(),
        source: validator.filter(|v| !v.is_empty()),
    })
}

/// Saves where the next run finds it that `upload`'s session exists, and waits for that
/// before any byte goes into it: a daemon killed at any later moment leaves no session that
/// nothing names. Not saved within [`RECORD_TIMEOUT`] (the apiserver slow or away), the
/// import does not go on with a session nothing could find: the caller cancels it and the
/// import is tried again. Gives the record, the template of the import's later checkpoints.
/// Cancelled meanwhile (the daemon stopping), it ends at once, and the caller cancels the
/// session as for a record not saved.
pub(super) async fn record_session(
    request: &ImportRequest,
    upload: &DiskLayerUpload,
    file_name: &str,
    file_size: u64,
    validator: Option<SourceValidator>,
    cancel: &CancellationToken,
) -> Result<Option<Checkpoint>, ImportError> {
    let (Some(checkpointing), Some(record)) = (
        &request.checkpointing,
        session_checkpoint(request, upload, file_name, file_size, validator),
    ) else {
        return Ok(None);
    };
    let session = record.session.clone();
    checkpointing.latest.send_replace(Some(record.clone()));
    let mut saved = checkpointing.saved.clone();
    let recorded = tokio::select! {
        _ = cancel.cancelled() => return Err(ImportError::Cancelled),
        recorded = tokio::time::timeout(
            RECORD_TIMEOUT,
            saved.wait_for(|saved| saved.as_deref() == Some(session.as_str())),
        ) => recorded,
    };
    if matches!(recorded, Ok(Ok(_))) {
        return Ok(Some(record));
    }
    // Nothing to go on from: the session is about to be cancelled.
    checkpointing.latest.send_replace(None);
    Err(ImportError::SessionNotRecorded(RECORD_TIMEOUT))
}

/// How long an import waits for its new upload session to be recorded.
const RECORD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl UploadCheckpoints {
    pub(super) fn new(
        template: Checkpoint,
        probe: SessionProbe,
        checkpointing: &Checkpointing,
    ) -> Self {
        Self {
            template,
            probe,
            latest: checkpointing.latest.clone(),
            interval: checkpointing.interval,
            // Soon, so that little is fetched again after a kill.
            next: tokio::time::Instant::now() + checkpointing.interval.min(FIRST_CHECKPOINT),
            confirming: None,
        }
    }
}

/// When an upload's first checkpoint is taken.
const FIRST_CHECKPOINT: std::time::Duration = std::time::Duration::from_millis(200);
/// How long DVCR may take to confirm the bytes of a snapshot before it is dropped.
const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// What a registry may hold back of a request's bytes until the request ends (distribution:
/// a 4 KiB buffered writer over its storage).
const REGISTRY_WRITE_BUFFER: u64 = 64 << 10;
/// How often DVCR is asked whether it holds the bytes of a snapshot.
const CONFIRM_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Sleeps until `at`, or forever without one.
pub(super) async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl UploadCheckpoints {
    pub(super) fn next_due(&self) -> tokio::time::Instant {
        self.next
    }

    /// Whether to take a snapshot now; while the last one is still being confirmed, the next
    /// one waits a little.
    pub(super) fn due(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if let Some(confirming) = &self.confirming {
            if !confirming.is_finished() {
                self.next = self.next.max(now + CONFIRM_POLL);
                return false;
            }
            self.confirming = None;
        }
        now >= self.next
    }

    /// Whether a checkpoint of this upload session that covers bytes was published: a later
    /// run can go on from it.
    pub(super) fn saved_any(&self) -> bool {
        self.latest
            .borrow()
            .as_ref()
            .is_some_and(|c| c.session == self.template.session && c.offset > 0)
    }

    /// Takes a snapshot at the current position of the stream; it is published once DVCR
    /// holds the bytes it covers (bytes sent may still be on their way).
    pub(super) async fn take(
        &mut self,
        stages: &mut Stages,
        upload: &mut DiskLayerUpload,
    ) -> Result<(), ImportError> {
        self.next = tokio::time::Instant::now() + self.interval;
        let states = stages.snapshot().await?;
        let layer = upload.snapshot().await?;
        let mut checkpoint = self.template.clone();
        checkpoint.offset = layer.written;
        let (probe, latest) = (self.probe.clone(), self.latest.clone());
        let covered = crate::dvcr::layout::HEADERS_LEN + layer.written;
        self.confirming = Some(tokio::spawn(async move {
            let Ok(states) = states.collect(layer.layer_state).await else {
                return false;
            };
            (checkpoint.sha256, checkpoint.md5, checkpoint.layer_sha256) = states.encode();
            let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
            while tokio::time::Instant::now() < deadline {
                match probe.held().await {
                    // The registry writes what it receives through a small buffer, flushed
                    // when the request ends (as it does when this process dies): bytes in it
                    // count as held.
                    Ok(Some(held)) if held + REGISTRY_WRITE_BUFFER >= covered => {
                        latest.send_replace(Some(checkpoint));
                        return true;
                    }
                    Ok(None) => return false,
                    Ok(Some(_)) | Err(_) => tokio::time::sleep(CONFIRM_POLL).await,
                }
            }
            false
        }));
        Ok(())
    }
}

impl UploadCheckpoints {
    /// Waits for the snapshot being confirmed, if any.
    pub(super) async fn settle(mut self) {
        if let Some(confirming) = self.confirming.take() {
            let _ = confirming.await;
        }
    }
}

impl Drop for UploadCheckpoints {
    fn drop(&mut self) {
        // A snapshot confirmed after the import ended would bring back a checkpoint of it.
        if let Some(confirming) = self.confirming.take() {
            confirming.abort();
        }
    }
}
