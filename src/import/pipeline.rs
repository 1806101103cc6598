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
use crate::dvcr::{DiskLayerUpload, Dvcr, DvcrError, ImageLabels, StoredLayer};
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
}

/// Counters the status writer samples while the import runs.
#[derive(Debug, Default)]
pub struct LiveProgress {
    received: AtomicU64,
    /// The announced size plus one; zero while unknown.
    total_plus_one: AtomicU64,
}

impl LiveProgress {
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    pub fn total(&self) -> Option<u64> {
        self.total_plus_one.load(Ordering::Relaxed).checked_sub(1)
    }
    fn start(&self, total: Option<u64>) {
        self.received.store(0, Ordering::Relaxed);
        self.total_plus_one
            .store(total.map_or(0, |t| t.saturating_add(1)), Ordering::Relaxed);
    }
    fn add(&self, bytes: u64) {
        self.received.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Where the image goes and what the bytes must match.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub repository: String,
    pub tag: String,
    pub checksum: Option<Checksum>,
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
            Self::Spool { .. } | Self::SpoolFull(SpoolFull::Busy { .. }) => true,
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
    mut source: impl ByteSource,
    progress: &LiveProgress,
    cancel: &CancellationToken,
) -> Result<StoredImport, ImportError> {
    let file_name = crate::dvcr::layout::disk_file_name(&source.file_name());
    let announced = source.content_length();
    progress.start(announced);
    let want_md5 = request.checksum.as_ref().is_some_and(|c| c.md5.is_some());
    let mut stages = Stages::start(want_md5, settings.inspect.clone());

    let mut sink = match announced {
        Some(size) => Sink::Upload(Box::new(
            dvcr.start_disk_layer(&request.repository, &file_name, size)
                .await?,
        )),
        None => Sink::spool(&settings.spool_dir, &settings.spool_budget).await?,
    };
    let pace = PaceWatch::start(settings.pace, tokio::time::Instant::now());
    let pumped = pump(&mut source, &mut stages, &mut sink, progress, pace, cancel).await;
    let received = match pumped {
        Ok(received) => received,
        Err(error) => {
            sink.abort().await;
            return Err(match error {
                // A stage that refused the image explains the failure better than the closed
                // channel that surfaced it.
                ImportError::Stage(_) => stages.finish().await.err().unwrap_or(error),
                error => error,
            });
        }
    };
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
        Sink::Upload(upload) => (*upload).finish().await?,
        Sink::Spool(spool) => {
            spool
                .upload(dvcr, &request.repository, &file_name, received, cancel)
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

/// How often one import may start over (a file that changed under its URL, a layer whose
/// bytes did not match its digest) before it gives up.
const MAX_RESTARTS: u32 = 3;

/// `store` with a source that may ask to start over: `open` makes a fresh source, and the
/// import starts again with fresh hash state and a fresh upload.
pub async fn store_restarting<S, Fut>(
    dvcr: &Dvcr,
    settings: &PipelineSettings,
    request: &ImportRequest,
    progress: &LiveProgress,
    cancel: &CancellationToken,
    mut open: impl FnMut() -> Fut,
) -> Result<StoredImport, ImportError>
where
    S: ByteSource,
    Fut: Future<Output = Result<S, SourceError>>,
{
    let mut restarts = 0;
    loop {
        let source = tokio::select! {
            _ = cancel.cancelled() => return Err(ImportError::Cancelled),
            source = open() => source?,
        };
        match store(dvcr, settings, request, source, progress, cancel).await {
            Err(error) if error.needs_restart() && restarts < MAX_RESTARTS => {
                restarts += 1;
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
    progress: &LiveProgress,
    mut pace: PaceWatch,
    cancel: &CancellationToken,
) -> Result<u64, ImportError> {
    let mut received = 0u64;
    let mut pending = bytes::BytesMut::new();
    loop {
        let chunk = {
            // The same read goes on across pace checks: dropping it could lose bytes.
            let next = source.next_chunk();
            tokio::pin!(next);
            loop {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Err(ImportError::Cancelled),
                    chunk = &mut next => break chunk?,
                    _ = tokio::time::sleep_until(pace.next_check()) => {
                        pace.check(tokio::time::Instant::now()).map_err(too_slow)?;
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

/// The hashing and inspection stages, each on its own thread: a compressed image is
/// unpacked to its end by the inspection, which must not slow the hashes down.
struct Stages {
    check_tx: Option<mpsc::Sender<Bytes>>,
    check: oneshot::Receiver<Result<ImageInfo, InspectError>>,
    sha256_tx: Option<mpsc::Sender<Bytes>>,
    sha256: oneshot::Receiver<String>,
    md5_tx: Option<mpsc::Sender<Bytes>>,
    md5: Option<oneshot::Receiver<String>>,
}

impl Stages {
    fn start(want_md5: bool, limits: InspectLimits) -> Self {
        let (check_tx, mut check_rx) = mpsc::channel::<Bytes>(STAGE_QUEUE);
        let check = stage_thread("import-inspect", move || {
            let mut inspector = Inspector::new(limits);
            while let Some(chunk) = check_rx.blocking_recv() {
                // An error stops taking chunks: the import ends with it.
                inspector.update(&chunk)?;
            }
            inspector.finish()
        });
        let (sha256_tx, mut sha256_rx) = mpsc::channel::<Bytes>(STAGE_QUEUE);
        let sha256 = stage_thread("import-sha256", move || {
            let mut sha256 = Sha256Hasher::default();
            while let Some(chunk) = sha256_rx.blocking_recv() {
                sha256.update(&chunk);
            }
            sha256.finish()
        });
        let (md5_tx, md5) = if want_md5 {
            let (tx, mut rx) = mpsc::channel::<Bytes>(STAGE_QUEUE);
            let md5 = stage_thread("import-md5", move || {
                let mut md5 = Md5Hasher::default();
                while let Some(chunk) = rx.blocking_recv() {
                    md5.update(&chunk);
                }
                md5.finish()
            });
            (Some(tx), Some(md5))
        } else {
            (None, None)
        };
        Self {
            check_tx: Some(check_tx),
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
            tx.send(chunk.clone()).await.map_err(|_| stopped())?;
        }
        if let Some(tx) = &self.sha256_tx {
            tx.send(chunk.clone()).await.map_err(|_| stopped())?;
        }
        if let Some(tx) = &self.check_tx
            && tx.send(chunk.clone()).await.is_err()
        {
            // The inspection refused the image: its error is the import's.
            self.check_tx = None;
            let joined = |_| ImportError::Stage("the inspection ended without a result".into());
            let result = (&mut self.check).await.map_err(joined)?;
            return Err(match result {
                Err(error) => error.into(),
                Ok(_) => stopped(),
            });
        }
        Ok(())
    }

    /// Ends the stream and collects the results of the stages.
    async fn finish(&mut self) -> Result<(FileDigests, ImageInfo), ImportError> {
        self.check_tx = None;
        self.sha256_tx = None;
        self.md5_tx = None;
        let joined = |_| ImportError::Stage("an import stage thread ended without a result".into());
        let info = (&mut self.check).await.map_err(joined)??;
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
        repository: &str,
        file_name: &str,
        size: u64,
        cancel: &CancellationToken,
    ) -> Result<StoredLayer, ImportError> {
        self.file.flush().await.map_err(|e| self.error(e))?;
        let mut file = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| self.error(e))?;
        let mut upload = dvcr.start_disk_layer(repository, file_name, size).await?;
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
