//! The one-pass import pipeline. Every source hands it a stream of the file's bytes; as the
//! bytes pass they are counted, hashed, inspected and uploaded into DVCR, each stage on its own
//! thread so the slowest one, not their sum, sets the pace. Memory is bounded by the channels
//! between the stages, whatever the image size. The image is tagged only after every checksum
//! matched and the inspection accepted it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::api::Checksum;
use crate::dvcr::{
    DiskLayerUpload, Dvcr, DvcrError, ImageLabels, LayerSnapshot, SessionProbe, StoredLayer,
};
use crate::import::checkpoint::{self, Checkpoint, HashStates, ImportKey, Resume, SourceValidator};
use crate::import::digest::{self, ChecksumMismatch, FileDigests, Md5Hasher, Sha256Hasher};
use crate::import::inspect::{ImageInfo, InspectError, InspectLimits, Inspector};
use crate::import::pace::{Pace, PaceWatch, TooSlow};
use crate::import::source::{SourceError, SourceErrorKind};
use crate::import::spool::{self, SpoolBudget, SpoolFull};

/// How many chunks may wait between two stages: with `STAGE_CHUNK` the bound on the
/// pipeline's memory (the stages share the chunks, they are not copies).
const STAGE_QUEUE: usize = 8;
/// The size of the chunks handed to the stages. Network reads are often a few KiB; hashing
/// and hand-offs between threads cost less per byte in bigger pieces.
const STAGE_CHUNK: usize = 1 << 20;
/// The size of reads from a spool file.
const SPOOL_CHUNK: usize = 1 << 20;

/// A stream of the bytes of one image file, from any source.
pub trait ByteSource: Send {
    /// The file name to keep in DVCR (`disk/<file name>`).
    fn file_name(&self) -> String;
    /// The file's size, when the source announces it.
    fn content_length(&self) -> Option<u64>;
    /// The next bytes, in order; `None` at the end.
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<Bytes>, SourceError>> + Send;
    /// What the source must still answer for a later process to open it again at an offset
    /// and get the same file ([`ResumeAt`]); `None` when it cannot be opened so.
    fn validator(&self) -> Option<SourceValidator> {
        None
    }
}

/// Where a source opened again must start: the bytes before `offset` are already imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeAt {
    pub offset: u64,
    pub file_name: String,
    pub file_size: u64,
    pub validator: SourceValidator,
}

/// Saving checkpoints while an import runs, and going on from the last one.
#[derive(Debug, Clone)]
pub struct Checkpointing {
    pub key: ImportKey,
    /// The newest checkpoint: the one found at the start (an earlier run's), then each one
    /// this run confirms; `None` once there is none to go on from. The caller mirrors it
    /// where any replica can read it.
    pub latest: tokio::sync::watch::Sender<Option<Checkpoint>>,
    /// How often to save one.
    pub interval: std::time::Duration,
    /// The upload session of the newest checkpoint the caller has saved where the next run
    /// finds it.
    pub saved: tokio::sync::watch::Receiver<Option<String>>,
}

/// Counters the status writer samples while the import runs.
#[derive(Debug, Default)]
pub struct LiveProgress {
    received: AtomicU64,
    /// The announced size plus one; zero while unknown.
    total_plus_one: AtomicU64,
    /// The byte a resumed transfer went on from, plus one; zero for a fresh one.
    resumed_at_plus_one: AtomicU64,
}

impl LiveProgress {
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    pub fn total(&self) -> Option<u64> {
        self.total_plus_one.load(Ordering::Relaxed).checked_sub(1)
    }
    /// Where a resumed transfer went on from its checkpoint.
    pub fn resumed_at(&self) -> Option<u64> {
        self.resumed_at_plus_one
            .load(Ordering::Relaxed)
            .checked_sub(1)
    }
    /// Bytes fetched by this transfer (a resumed one had the rest already).
    pub fn fetched(&self) -> u64 {
        self.received()
            .saturating_sub(self.resumed_at().unwrap_or(0))
    }
    fn start(&self, total: Option<u64>) {
        self.resumed_at_plus_one.store(0, Ordering::Relaxed);
        self.received.store(0, Ordering::Relaxed);
        self.total_plus_one
            .store(total.map_or(0, |t| t.saturating_add(1)), Ordering::Relaxed);
    }
    fn add(&self, bytes: u64) {
        self.received.fetch_add(bytes, Ordering::Relaxed);
    }
    fn resume(&self, total: u64, done: u64) {
        self.start(Some(total));
        self.received.store(done, Ordering::Relaxed);
        self.resumed_at_plus_one
            .store(done.saturating_add(1), Ordering::Relaxed);
    }
}

/// Where the image goes, what the bytes must match, and whether the import saves checkpoints
/// to go on from after a restart.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub repository: String,
    pub tag: String,
    pub checksum: Option<Checksum>,
    pub checkpointing: Option<Checkpointing>,
}

/// Settings shared by every import.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub inspect: InspectLimits,
    /// Where to keep the bytes of a source that does not announce its size until the size is
    /// known (the tar header of the layer comes before the bytes).
    pub spool_dir: PathBuf,
    /// The bytes all spooled downloads may hold together.
    pub spool_budget: Arc<SpoolBudget>,
    /// How slow a source may be.
    pub pace: Pace,
}

/// What an import stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImport {
    pub registry_url: String,
    pub info: ImageInfo,
    pub stored_size: u64,
    pub digests: FileDigests,
    pub layer: StoredLayer,
    pub manifest_digest: String,
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("{0}")]
    Inspect(#[from] InspectError),
    #[error("{0}")]
    Checksum(#[from] ChecksumMismatch),
    #[error("{0}")]
    Dvcr(#[from] DvcrError),
    #[error("cannot spool the download to {dir}: {error}; check --spool-dir and free disk space")]
    Spool { dir: String, error: std::io::Error },
    #[error("{}", spool_full_message(.0))]
    SpoolFull(SpoolFull),
    #[error("the import was cancelled")]
    Cancelled,
    #[error(
        "no complete upload arrived within {}s; delete the image and create it again for a new upload URL",
        .0.as_secs()
    )]
    UploadTimedOut(std::time::Duration),
    #[error(
        "no upload URL can be made: {0}, and a token from it would be guessable; fix the node's random source (the kernel's getrandom), then delete the image and create it again"
    )]
    UploadTokenUnavailable(#[source] crate::import::source::upload::RandomUnavailable),
    #[error(
        "saving the upload token's sha256 on the image failed ({0}), so no upload URL was published; check that the daemon may patch ClusterVirtualImages, then delete the image and create it again"
    )]
    UploadTokenNotSaved(String),
    #[error(
        "the new DVCR upload session was not recorded in the image's checkpoint Lease within {}s (the apiserver is slow or away), so no byte went into it; the import is tried again",
        .0.as_secs()
    )]
    SessionNotRecorded(std::time::Duration),
    #[error("an import stage stopped unexpectedly: {0}")]
    Stage(String),
    #[error(
        "the daemon hit a bug while importing this image ({0}); the import ended here. Report it with the daemon's log; delete and create the image again to retry"
    )]
    Panicked(String),
}

fn spool_full_message(full: &SpoolFull) -> String {
    match full {
        SpoolFull::TooLarge { limit } => format!(
            "the source sent more than the whole spool holds ({} MiB) before its size was known; if the image is really that large, raise the chart's spool.sizeLimit (--spool-size)",
            limit >> 20
        ),
        SpoolFull::Busy { limit } => format!(
            "the spool ({} MiB) is full with other downloads; the import is tried again",
            limit >> 20
        ),
    }
}

impl ImportError {
    /// The CamelCase condition reason.
    pub fn reason(&self) -> &str {
        match self {
            Self::Source(error) => error.reason,
            Self::Inspect(error) => error.reason(),
            Self::Checksum(_) => "ChecksumMismatch",
            Self::Dvcr(error) => error.reason(),
            Self::Spool { .. } => "SpoolFailed",
            Self::SpoolFull(SpoolFull::TooLarge { .. }) => "SpoolTooSmall",
            Self::SpoolFull(SpoolFull::Busy { .. }) => "SpoolBusy",
            Self::Cancelled => "Cancelled",
            Self::SessionNotRecorded(_) => "CheckpointNotSaved",
            Self::UploadTimedOut(_) => "UploadTimedOut",
            Self::UploadTokenUnavailable(_) => "UploadTokenUnavailable",
            Self::UploadTokenNotSaved(_) => "UploadTokenNotSaved",
            Self::Stage(_) | Self::Panicked(_) => "InternalError",
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Source(error) => error.kind == SourceErrorKind::Transient,
            Self::Dvcr(error) => error.is_transient(),
            Self::Spool { .. }
            | Self::SpoolFull(SpoolFull::Busy { .. })
            | Self::SessionNotRecorded(_) => true,
            Self::Inspect(error) => error.is_transient(),
            _ => false,
        }
    }

    /// Whether the bytes already received must be thrown away and the import started over.
    pub fn needs_restart(&self) -> bool {
        matches!(self, Self::Source(error) if error.kind == SourceErrorKind::Restart)
    }

    /// Whether the source, rather than its bytes or DVCR, is at fault.
    pub fn is_source_fault(&self) -> bool {
        matches!(self, Self::Source(_))
    }
}

/// Streams `source` through the stages into DVCR and tags the image. On any failure nothing is
/// tagged and the unfinished upload is abandoned.
pub async fn store(
    dvcr: &Dvcr,
    settings: &PipelineSettings,
    request: &ImportRequest,
    source: impl ByteSource,
    progress: &LiveProgress,
    cancel: &CancellationToken,
) -> Result<StoredImport, ImportError> {
    // A source stored this way cannot go on from a checkpoint: the caller cancelled the
    // session of any an earlier run left (`resume::ImportCheckpoints::open`).
    store_from(
        dvcr,
        settings,
        request,
        source,
        Start::Fresh,
        progress,
        cancel,
    )
    .await
}

/// Where one attempt of an import starts.
enum Start {
    Fresh,
    /// Goes on with an upload session, from the checkpoint's hash states.
    Resumed(Box<Resumed>),
}

struct Resumed {
    upload: DiskLayerUpload,
    checkpoint: Checkpoint,
    sha256: Sha256Hasher,
    md5: Option<Md5Hasher>,
}

async fn store_from(
    dvcr: &Dvcr,
    settings: &PipelineSettings,
    request: &ImportRequest,
    mut source: impl ByteSource,
    start: Start,
    progress: &LiveProgress,
    cancel: &CancellationToken,
) -> Result<StoredImport, ImportError> {
    let want_md5 = request.checksum.as_ref().is_some_and(|c| c.md5.is_some());
    let (file_name, announced, mut stages, mut sink, resumed) = match start {
        Start::Fresh => {
            let file_name = crate::dvcr::layout::disk_file_name(&source.file_name());
            let announced = source.content_length();
            progress.start(announced);
            let stages = Stages::start(want_md5, Some(settings.inspect.clone()), None);
            let sink = match announced {
                Some(size) => {
                    let upload = dvcr
                        .start_disk_layer(&request.repository, &file_name, size)
                        .await?;
                    if let Err(error) =
                        record_session(request, &upload, &file_name, size, source.validator()).await
                    {
                        upload.abort().await;
                        return Err(error);
                    }
                    Sink::Upload(Box::new(upload))
                }
                None => Sink::spool(&settings.spool_dir, &settings.spool_budget).await?,
            };
            (file_name, announced, stages, sink, false)
        }
        Start::Resumed(resumed) => {
            let Resumed {
                upload,
                checkpoint,
                sha256,
                md5,
            } = *resumed;
            progress.resume(checkpoint.file_size, checkpoint.offset);
            // The inspection needs the file from its first byte: it reads the stored layer
            // back once it is complete instead.
            let stages = Stages::start(want_md5, None, Some((sha256, md5)));
            (
                checkpoint.file_name,
                Some(checkpoint.file_size),
                stages,
                Sink::Upload(Box::new(upload)),
                true,
            )
        }
    };
    let mut checkpoints = match (&sink, &request.checkpointing, announced) {
        (Sink::Upload(upload), Some(checkpointing), Some(size)) => {
            let template =
                session_checkpoint(request, upload, &file_name, size, source.validator());
            template
                .zip(upload.probe())
                .map(|(template, probe)| UploadCheckpoints::new(template, probe, checkpointing))
        }
        _ => None,
    };
    if let (Some(_), Sink::Upload(upload)) = (&checkpoints, &mut sink) {
        // Another run goes on with the session: it must outlive this one.
        upload.keep_session_on_drop();
    }
    let pace = PaceWatch::start(settings.pace, tokio::time::Instant::now());
    let pumped = pump(
        &mut source,
        &mut stages,
        &mut sink,
        checkpoints.as_mut(),
        progress,
        pace,
        cancel,
    )
    .await;
    let received = match pumped {
        Ok(received) => received,
        Err(error) => {
            // The session stays for the next attempt (after a transient failure) or the next
            // daemon (cancelled: the daemon is stopping) to go on from the checkpoint.
            let keep = checkpoints.as_ref().is_some_and(|c| c.saved_any())
                && (matches!(error, ImportError::Cancelled) || error.is_transient());
            if keep {
                sink.detach().await;
            } else {
                sink.abort().await;
            }
            return Err(match error {
                // A stage that refused the image explains the failure better than the closed
                // channel that surfaced it.
                ImportError::Stage(_) => stages.finish().await.err().unwrap_or(error),
                error => error,
            });
        }
    };
    if let Some(checkpoints) = checkpoints {
        // No DVCR request of a checkpoint may cross the commit (a status read of a session
        // that is being committed leaves a stray entry in the registry).
        checkpoints.settle().await;
    }
    let checked = stages.finish().await.and_then(|(digests, info)| {
        digest::verify(request.checksum.as_ref(), &digests)?;
        Ok((digests, info))
    });
    let (digests, info) = match checked {
        Ok(checked) => checked,
        Err(error) => {
            sink.abort().await;
            return Err(error);
        }
    };
    let layer = match sink {
        Sink::Upload(upload) => match (*upload).finish().await {
            Ok(layer) => layer,
            // DVCR refused what it holds (the digest of its bytes, or the session): the
            // checkpoint did not line up, and trying it again would not help.
            Err(error @ DvcrError::Rejected { .. }) if resumed => {
                return Err(resume_refused(&error).into());
            }
            Err(error) => return Err(error.into()),
        },
        Sink::Spool(spool) => {
            spool
                .upload(dvcr, request, &file_name, received, cancel)
                .await?
        }
    };
    let info = match info {
        Some(info) => info,
        None => {
            inspect_stored(
                dvcr,
                &request.repository,
                &layer,
                &file_name,
                received,
                &settings.inspect,
                cancel,
            )
            .await?
        }
    };
    let labels = ImageLabels {
        stored_size: received,
        virtual_size: info.virtual_size,
        format: info.format.to_string(),
        sha256: Some(digests.sha256.clone()),
        md5: digests.md5.clone(),
    };
    let manifest_digest = dvcr
        .tag_image(&request.repository, &request.tag, &layer, &labels)
        .await?;
    Ok(StoredImport {
        registry_url: dvcr.image_url(&request.repository, &request.tag),
        info,
        stored_size: received,
        digests,
        layer,
        manifest_digest,
    })
}

/// DVCR refused to commit a resumed layer: its bytes and the checkpoint's hash states did not
/// line up (the registry checks the digest of what it holds). Nothing was stored; the import
/// starts over.
fn resume_refused(error: &DvcrError) -> SourceError {
    SourceError::restart(
        crate::import::source::reason::SOURCE_CHANGED,
        format!(
            "DVCR refused the layer continued from the checkpoint ({error}); the import starts over from byte 0"
        ),
    )
}

/// The inspection of a resumed import: the stored layer's disk file, read back from DVCR
/// (the source is not fetched again), before the image is tagged.
async fn inspect_stored(
    dvcr: &Dvcr,
    repository: &str,
    layer: &StoredLayer,
    file_name: &str,
    file_size: u64,
    limits: &InspectLimits,
    cancel: &CancellationToken,
) -> Result<ImageInfo, ImportError> {
    let mut stored = dvcr
        .untagged_disk_file_stream(repository, layer, file_name, file_size)
        .await?;
    let (tx, check) = inspect_stage(limits.clone());
    loop {
        let chunk = tokio::select! {
            _ = cancel.cancelled() => return Err(ImportError::Cancelled),
            chunk = stored.next_chunk() => chunk?,
        };
        let Some(chunk) = chunk else { break };
        if tx.send(chunk).await.is_err() {
            // The inspection refused the image: its result says why.
            break;
        }
    }
    drop(tx);
    check
        .await
        .map_err(|_| ImportError::Stage("the inspection ended without a result".into()))?
        .map_err(ImportError::from)
}

/// How often one import may start over (a file that changed under its URL, a layer whose
/// bytes did not match its digest) before it gives up.
const MAX_RESTARTS: u32 = 3;

/// `store` with a source that may ask to start over: `open` makes a fresh source (`None`) or
/// one that starts at an offset, and the import starts again with fresh hash state and a
/// fresh upload. With the request's checkpointing, the import goes on from its latest
/// checkpoint when it can, and saves new ones as it runs.
pub async fn store_restarting<S, Fut>(
    dvcr: &Dvcr,
    settings: &PipelineSettings,
    request: &ImportRequest,
    progress: &LiveProgress,
    cancel: &CancellationToken,
    mut open: impl FnMut(Option<ResumeAt>) -> Fut,
) -> Result<StoredImport, ImportError>
where
    S: ByteSource,
    Fut: Future<Output = Result<S, SourceError>>,
{
    let checkpointing = request.checkpointing.as_ref();
    let mut restarts = 0;
    loop {
        let start = match checkpointing {
            Some(checkpointing) => prepare_resume(dvcr, request, checkpointing).await?,
            None => Start::Fresh,
        };
        let at = match &start {
            Start::Fresh => None,
            Start::Resumed(resumed) => Some(ResumeAt {
                offset: resumed.checkpoint.offset,
                file_name: resumed.checkpoint.file_name.clone(),
                file_size: resumed.checkpoint.file_size,
                validator: resumed.checkpoint.source.clone().unwrap_or_default(),
            }),
        };
        let source = tokio::select! {
            _ = cancel.cancelled() => return Err(ImportError::Cancelled),
            source = open(at) => source?,
        };
        match store_from(dvcr, settings, request, source, start, progress, cancel).await {
            Err(error) if error.needs_restart() && restarts < MAX_RESTARTS => {
                restarts += 1;
                if let Some(checkpointing) = checkpointing {
                    // What it saved belongs to bytes that are thrown away.
                    checkpointing.latest.send_replace(None);
                }
                tracing::info!(
                    restarts,
                    reason = error.reason(),
                    "starting the import over"
                );
            }
            result => return result,
        }
    }
}

/// Cancels the DVCR upload session a checkpoint names (one nothing goes on with).
pub async fn cancel_left_session(dvcr: &Dvcr, found: &Checkpoint) {
    if let Ok(session) = url::Url::parse(&found.session) {
        dvcr.cancel_upload_session(&found.repository, &session)
            .await;
    }
}

/// Turns the latest checkpoint into a start: resumed when it fits the import and DVCR still
/// holds its session, else fresh (its session cancelled).
async fn prepare_resume(
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
struct UploadCheckpoints {
    template: Checkpoint,
    probe: SessionProbe,
    latest: tokio::sync::watch::Sender<Option<Checkpoint>>,
    interval: std::time::Duration,
    next: tokio::time::Instant,
    /// The snapshot being confirmed.
    confirming: Option<tokio::task::JoinHandle<bool>>,
}

/// The checkpoint that names a new upload session before any byte of the file is in it:
/// it covers nothing, so the next run cancels the session instead of going on from it.
fn session_checkpoint(
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
/// import is tried again.
async fn record_session(
    request: &ImportRequest,
    upload: &DiskLayerUpload,
    file_name: &str,
    file_size: u64,
    validator: Option<SourceValidator>,
) -> Result<(), ImportError> {
    let (Some(checkpointing), Some(record)) = (
        &request.checkpointing,
        session_checkpoint(request, upload, file_name, file_size, validator),
    ) else {
        return Ok(());
    };
    let session = record.session.clone();
    checkpointing.latest.send_replace(Some(record));
    let mut saved = checkpointing.saved.clone();
    let recorded = tokio::time::timeout(
        RECORD_TIMEOUT,
        saved.wait_for(|saved| saved.as_deref() == Some(session.as_str())),
    )
    .await;
    if matches!(recorded, Ok(Ok(_))) {
        return Ok(());
    }
    // Nothing to go on from: the session is about to be cancelled.
    checkpointing.latest.send_replace(None);
    Err(ImportError::SessionNotRecorded(RECORD_TIMEOUT))
}

/// How long an import waits for its new upload session to be recorded.
const RECORD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl UploadCheckpoints {
    fn new(template: Checkpoint, probe: SessionProbe, checkpointing: &Checkpointing) -> Self {
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
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl UploadCheckpoints {
    fn next_due(&self) -> tokio::time::Instant {
        self.next
    }

    /// Whether to take a snapshot now; while the last one is still being confirmed, the next
    /// one waits a little.
    fn due(&mut self) -> bool {
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
    fn saved_any(&self) -> bool {
        self.latest
            .borrow()
            .as_ref()
            .is_some_and(|c| c.session == self.template.session && c.offset > 0)
    }

    /// Takes a snapshot at the current position of the stream; it is published once DVCR
    /// holds the bytes it covers (bytes sent may still be on their way).
    async fn take(
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
    async fn settle(mut self) {
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

/// Moves every byte from the source to the stages and the sink, gathered into chunks of
/// `STAGE_CHUNK`; returns the byte count.
async fn pump(
    source: &mut impl ByteSource,
    stages: &mut Stages,
    sink: &mut Sink,
    mut checkpoints: Option<&mut UploadCheckpoints>,
    progress: &LiveProgress,
    mut pace: PaceWatch,
    cancel: &CancellationToken,
) -> Result<u64, ImportError> {
    let mut received = progress.received();
    let mut pending = bytes::BytesMut::new();
    loop {
        let chunk = {
            // The same read goes on across pace and checkpoint ticks: dropping it could lose
            // bytes.
            let next = source.next_chunk();
            tokio::pin!(next);
            loop {
                let checkpoint_at = checkpoints.as_deref().map(UploadCheckpoints::next_due);
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Err(ImportError::Cancelled),
                    chunk = &mut next => break chunk?,
                    _ = tokio::time::sleep_until(pace.next_check()) => {
                        pace.check(tokio::time::Instant::now()).map_err(too_slow)?;
                    }
                    _ = sleep_until_some(checkpoint_at) => {
                        if let Some(checkpoints) = checkpoints.as_deref_mut()
                            && checkpoints.due()
                        {
                            // Everything received goes into the checkpoint: a source that
                            // stalls here leaves nothing to fetch again.
                            if !pending.is_empty() {
                                dispatch(pending.split().freeze(), stages, sink).await?;
                            }
                            // Between dispatches the stages and the upload stand at the same
                            // byte.
                            if let Sink::Upload(upload) = &mut *sink {
                                checkpoints.take(stages, upload).await?;
                            }
                        }
                    }
                }
            }
        };
        if let Some(chunk) = &chunk {
            pace.received(chunk.len() as u64);
        }
        let Some(chunk) = chunk else {
            if !pending.is_empty() {
                dispatch(pending.split().freeze(), stages, sink).await?;
            }
            return Ok(received);
        };
        received += chunk.len() as u64;
        progress.add(chunk.len() as u64);
        if pending.is_empty() && chunk.len() >= STAGE_CHUNK {
            dispatch(chunk, stages, sink).await?;
            continue;
        }
        if pending.capacity() == 0 {
            pending.reserve(STAGE_CHUNK);
        }
        pending.extend_from_slice(&chunk);
        if pending.len() >= STAGE_CHUNK {
            dispatch(pending.split().freeze(), stages, sink).await?;
        }
    }
}

fn too_slow(error: TooSlow) -> ImportError {
    SourceError {
        kind: SourceErrorKind::Transient,
        reason: match error {
            TooSlow::Stalled { .. } => crate::import::source::reason::SOURCE_TOO_SLOW,
            TooSlow::Deadline { .. } => crate::import::source::reason::IMPORT_DEADLINE_EXCEEDED,
        },
        message: error.to_string(),
    }
    .into()
}

async fn dispatch(chunk: Bytes, stages: &mut Stages, sink: &mut Sink) -> Result<(), ImportError> {
    stages.feed(&chunk).await?;
    sink.write(chunk).await
}

/// What a hashing stage is handed, in order.
enum HashMsg {
    Chunk(Bytes),
    /// Asks for the hash state after every chunk before this one.
    Snapshot(oneshot::Sender<Vec<u8>>),
}

/// The hashing and inspection stages, each on its own thread: a compressed image is
/// unpacked to its end by the inspection, which must not slow the hashes down.
struct Stages {
    check_tx: Option<mpsc::Sender<Bytes>>,
    /// None for a resumed import: the inspection reads the stored layer back instead.
    check: Option<oneshot::Receiver<Result<ImageInfo, InspectError>>>,
    sha256_tx: Option<mpsc::Sender<HashMsg>>,
    sha256: oneshot::Receiver<String>,
    md5_tx: Option<mpsc::Sender<HashMsg>>,
    md5: Option<oneshot::Receiver<String>>,
}

/// Hash states on their way from the stage threads.
struct StageStates {
    sha256: oneshot::Receiver<Vec<u8>>,
    md5: Option<oneshot::Receiver<Vec<u8>>>,
}

impl StageStates {
    async fn collect(self, layer_sha256: Vec<u8>) -> Result<HashStates, ()> {
        let sha256 = self.sha256.await.map_err(|_| ())?;
        let md5 = match self.md5 {
            Some(md5) => Some(md5.await.map_err(|_| ())?),
            None => None,
        };
        Ok(HashStates {
            sha256,
            md5,
            layer_sha256,
        })
    }
}

/// The inspection on its own thread: chunks in, the image's info (or why it is refused) out.
fn inspect_stage(
    limits: InspectLimits,
) -> (
    mpsc::Sender<Bytes>,
    oneshot::Receiver<Result<ImageInfo, InspectError>>,
) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(STAGE_QUEUE);
    let check = stage_thread("import-inspect", move || {
        let mut inspector = Inspector::new(limits);
        while let Some(chunk) = rx.blocking_recv() {
            // An error stops taking chunks: the import ends with it.
            inspector.update(&chunk)?;
        }
        inspector.finish()
    });
    (tx, check)
}

fn hash_stage<
    D: sha2::Digest + sha2::digest::common::hazmat::SerializableState + Send + 'static,
>(
    name: &str,
    mut hasher: digest::Hasher<D>,
) -> (mpsc::Sender<HashMsg>, oneshot::Receiver<String>) {
    let (tx, mut rx) = mpsc::channel::<HashMsg>(STAGE_QUEUE);
    let result = stage_thread(name, move || {
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                HashMsg::Chunk(chunk) => hasher.update(&chunk),
                // Nobody waits for it when the checkpoint was given up.
                HashMsg::Snapshot(reply) => drop(reply.send(hasher.state())),
            }
        }
        hasher.finish()
    });
    (tx, result)
}

impl Stages {
    /// `inspect`: the limits of the inspection, or None to skip it; `from`: the hash states to
    /// go on from (sha256, md5), for a resumed import.
    fn start(
        want_md5: bool,
        inspect: Option<InspectLimits>,
        from: Option<(Sha256Hasher, Option<Md5Hasher>)>,
    ) -> Self {
        let (check_tx, check) = match inspect.map(inspect_stage) {
            Some((check_tx, check)) => (Some(check_tx), Some(check)),
            None => (None, None),
        };
        let (sha256_from, md5_from) = match from {
            Some((sha256, md5)) => (sha256, md5),
            None => (Sha256Hasher::default(), None),
        };
        let (sha256_tx, sha256) = hash_stage("import-sha256", sha256_from);
        let (md5_tx, md5) = if want_md5 {
            let (tx, md5) = hash_stage("import-md5", md5_from.unwrap_or_default());
            (Some(tx), Some(md5))
        } else {
            (None, None)
        };
        Self {
            check_tx,
            check,
            sha256_tx: Some(sha256_tx),
            sha256,
            md5_tx,
            md5,
        }
    }

    /// Hands a chunk to every stage (a reference count, not a copy).
    async fn feed(&mut self, chunk: &Bytes) -> Result<(), ImportError> {
        let stopped = || ImportError::Stage("an import stage stopped".into());
        if let Some(tx) = &self.md5_tx {
            tx.send(HashMsg::Chunk(chunk.clone()))
                .await
                .map_err(|_| stopped())?;
        }
        if let Some(tx) = &self.sha256_tx {
            tx.send(HashMsg::Chunk(chunk.clone()))
                .await
                .map_err(|_| stopped())?;
        }
        if let Some(tx) = &self.check_tx
            && tx.send(chunk.clone()).await.is_err()
        {
            // The inspection refused the image: its error is the import's.
            self.check_tx = None;
            let joined = |_| ImportError::Stage("the inspection ended without a result".into());
            let Some(check) = self.check.as_mut() else {
                return Err(stopped());
            };
            let result = check.await.map_err(joined)?;
            return Err(match result {
                Err(error) => error.into(),
                Ok(_) => stopped(),
            });
        }
        Ok(())
    }

    /// The hash states after every chunk fed so far, as the stages get to them.
    async fn snapshot(&mut self) -> Result<StageStates, ImportError> {
        let stopped = || ImportError::Stage("an import stage stopped".into());
        let ask = |tx: &Option<mpsc::Sender<HashMsg>>| {
            let tx = tx.clone();
            async move {
                let (reply, state) = oneshot::channel();
                tx.ok_or_else(stopped)?
                    .send(HashMsg::Snapshot(reply))
                    .await
                    .map_err(|_| stopped())?;
                Ok::<_, ImportError>(state)
            }
        };
        let sha256 = ask(&self.sha256_tx).await?;
        let md5 = match &self.md5_tx {
            Some(_) => Some(ask(&self.md5_tx).await?),
            None => None,
        };
        Ok(StageStates { sha256, md5 })
    }

    /// Ends the stream and collects the results of the stages; no image info when the
    /// inspection was skipped.
    async fn finish(&mut self) -> Result<(FileDigests, Option<ImageInfo>), ImportError> {
        self.check_tx = None;
        self.sha256_tx = None;
        self.md5_tx = None;
        let joined = |_| ImportError::Stage("an import stage thread ended without a result".into());
        let info = match self.check.as_mut() {
            Some(check) => Some(check.await.map_err(joined)??),
            None => None,
        };
        let sha256 = (&mut self.sha256).await.map_err(joined)?;
        let md5 = match self.md5.take() {
            Some(md5) => Some(md5.await.map_err(joined)?),
            None => None,
        };
        Ok((FileDigests { sha256, md5 }, info))
    }
}

/// Runs one stage on its own named thread (named, so `top -H` shows where the time goes);
/// the receiver yields its result.
fn stage_thread<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> oneshot::Receiver<T> {
    let (done, result) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            // The receiver may be gone (the import was dropped): the result is not needed then.
            let _ = done.send(work());
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start an import stage thread");
    }
    result
}

/// Where the bytes go while they stream: straight into DVCR when the size is known, or into
/// a spool file until it is.
enum Sink {
    Upload(Box<DiskLayerUpload>),
    Spool(Spool),
}

impl Sink {
    async fn spool(dir: &std::path::Path, budget: &Arc<SpoolBudget>) -> Result<Self, ImportError> {
        let spool_error = |error| ImportError::Spool {
            dir: dir.display().to_string(),
            error,
        };
        static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let prefix = PREFIX.get_or_init(|| spool::file_prefix(spool::Owner::current()));
        let path = tempfile::Builder::new()
            .prefix(prefix.as_str())
            .tempfile_in(dir)
            .map_err(spool_error)?
            .into_temp_path();
        let file = tokio::fs::File::create(&path).await.map_err(spool_error)?;
        Ok(Self::Spool(Spool {
            path,
            file,
            dir: dir.display().to_string(),
            reservation: budget.reservation(),
        }))
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), ImportError> {
        match self {
            Self::Upload(upload) => Ok(upload.write(chunk).await?),
            Self::Spool(spool) => {
                spool
                    .reservation
                    .grow(chunk.len() as u64)
                    .map_err(ImportError::SpoolFull)?;
                spool
                    .file
                    .write_all(&chunk)
                    .await
                    .map_err(|error| spool.error(error))
            }
        }
    }

    async fn abort(self) {
        match self {
            Self::Upload(upload) => (*upload).abort().await,
            // Dropping the TempPath removes the file.
            Self::Spool(_) => {}
        }
    }

    /// Leaves the upload session open for a later run that goes on from its checkpoint.
    async fn detach(self) {
        match self {
            Self::Upload(upload) => (*upload).detach().await,
            Self::Spool(_) => {}
        }
    }
}

struct Spool {
    path: tempfile::TempPath,
    file: tokio::fs::File,
    dir: String,
    /// Given back when the spool file is gone (dropped with it).
    reservation: spool::Reservation,
}

impl Spool {
    fn error(&self, error: std::io::Error) -> ImportError {
        ImportError::Spool {
            dir: self.dir.clone(),
            error,
        }
    }

    /// Uploads the spooled file, now that its size is known; the file is removed afterwards.
    async fn upload(
        mut self,
        dvcr: &Dvcr,
        request: &ImportRequest,
        file_name: &str,
        size: u64,
        cancel: &CancellationToken,
    ) -> Result<StoredLayer, ImportError> {
        self.file.flush().await.map_err(|e| self.error(e))?;
        let mut file = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| self.error(e))?;
        let mut upload = dvcr
            .start_disk_layer(&request.repository, file_name, size)
            .await?;
        if let Err(error) = record_session(request, &upload, file_name, size, None).await {
            upload.abort().await;
            return Err(error);
        }
        loop {
            let mut buffer = bytes::BytesMut::with_capacity(SPOOL_CHUNK);
            let read = tokio::select! {
                _ = cancel.cancelled() => { upload.abort().await; return Err(ImportError::Cancelled) }
                read = file.read_buf(&mut buffer) => read,
            };
            match read {
                Ok(0) => break,
                Ok(_) => {
                    if let Err(error) = upload.write(buffer.freeze()).await {
                        upload.abort().await;
                        return Err(error.into());
                    }
                }
                Err(error) => {
                    upload.abort().await;
                    return Err(self.error(error));
                }
            }
        }
        Ok(upload.finish().await?)
    }
}

impl ByteSource for crate::import::source::upload::Upload {
    fn file_name(&self) -> String {
        crate::import::source::upload::Upload::file_name(self)
    }
    fn content_length(&self) -> Option<u64> {
        crate::import::source::upload::Upload::content_length(self)
    }
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, SourceError> {
        crate::import::source::upload::Upload::next_chunk(self).await
    }
}

/// A source lent to the pipeline stays with its owner (an upload answers its uploader after).
impl<S: ByteSource> ByteSource for &mut S {
    fn file_name(&self) -> String {
        (**self).file_name()
    }
    fn content_length(&self) -> Option<u64> {
        (**self).content_length()
    }
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, SourceError> {
        (**self).next_chunk().await
    }
}
