//! The one-pass import pipeline. Every source hands it a stream of the file's bytes; as the
//! bytes pass they are counted, hashed, inspected and uploaded into DVCR, each stage on its own
//! thread so the slowest one, not their sum, sets the pace. Memory is bounded by the channels
//! between the stages, whatever the image size. The image is tagged only after every checksum
//! matched and the inspection accepted it.

mod checkpoints;
mod error;
mod sink;
mod stages;

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

pub use self::checkpoints::cancel_left_session;
use self::checkpoints::{
    UploadCheckpoints, prepare_resume, record_session, session_checkpoint, sleep_until_some,
};
pub use self::error::ImportError;
use self::sink::Sink;
use self::stages::{Stages, inspect_stage};

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
    // `template`: the session's own checkpoint, which the later ones fill in.
    let (file_name, mut stages, mut sink, template, resumed) = match start {
        Start::Fresh => {
            let file_name = crate::dvcr::layout::disk_file_name(&source.file_name());
            let announced = source.content_length();
            progress.start(announced);
            let stages = Stages::start(want_md5, Some(settings.inspect.clone()), None);
            let (sink, template) = match announced {
                Some(size) => {
                    let upload = dvcr
                        .start_disk_layer(&request.repository, &file_name, size)
                        .await?;
                    let validator = source.validator();
                    match record_session(request, &upload, &file_name, size, validator, cancel)
                        .await
                    {
                        Ok(template) => (Sink::Upload(Box::new(upload)), template),
                        Err(error) => {
                            upload.abort().await;
                            return Err(error);
                        }
                    }
                }
                None => (
                    Sink::spool(&settings.spool_dir, &settings.spool_budget).await?,
                    None,
                ),
            };
            (file_name, stages, sink, template, false)
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
            let template = session_checkpoint(
                request,
                &upload,
                &checkpoint.file_name,
                checkpoint.file_size,
                source.validator(),
            );
            (
                checkpoint.file_name,
                stages,
                Sink::Upload(Box::new(upload)),
                template,
                true,
            )
        }
    };
    let mut checkpoints = match (&sink, &request.checkpointing, template) {
        (Sink::Upload(upload), Some(checkpointing), Some(template)) => upload
            .probe()
            .map(|probe| UploadCheckpoints::new(template, probe, checkpointing)),
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

#[cfg(test)]
mod tests;
