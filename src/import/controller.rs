//! The ClusterVirtualImage controller: a thin shell around `decide`, the pipeline and
//! `next_status`. Reconcile reads the image, decides, and starts or cancels an import task; the
//! task streams the image and writes the status, at most once per `status_interval`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::k8s::events::{EventPublisher, EventType};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::catalog::keys::{UPLOAD_DEADLINE, UPLOAD_TOKEN_SHA256};
use crate::api::{ClusterVirtualImage, DataSourceType, ImageStatus, ImageUploadUrls};
use crate::dvcr::Dvcr;
use crate::import::decide::{Decision, KnownImport, decide};
use crate::import::http_import;
use crate::import::object_ref::{self, CopyMethod, SourceImage, SourceState};
use crate::import::pipeline;
use crate::import::pipeline::{
    ImportError, ImportRequest, LiveProgress, PipelineSettings, StoredImport,
};
use crate::import::progress::speed;
use crate::import::resume::{self, ImportCheckpoints};
use crate::import::source::container_image::{ContainerDisk, RegistryCredentials, registry_host};
use crate::import::source::http::{HttpSourceOptions, redact_url};
use crate::import::source::upload::{
    TokenDigest, UploadGate, UploadOutcome, UploadTicket, UploadToken, published_token, upload_url,
};
use crate::import::status::{
    AfterRestart, ImportState, Problem, StoredImage, Transfer, UPLOAD_INTERRUPTED_MESSAGE,
    interrupted_by_restart, next_status, starting_point,
};
use crate::k8s::checkpoints::CheckpointStore;
use crate::k8s::cvi_status::{CviStatusStore, Target, WriteError};
use crate::k8s::secrets::{self, SecretError, SecretReader};
use crate::metrics::Metrics;

/// Removed only after the image is gone from DVCR.
pub const FINALIZER: &str = "imagecatalog.dev/dvcr-cleanup";
/// The field manager of the upload token's hash annotation, the one field of an image's
/// metadata this controller writes.
pub const UPLOAD_TOKEN_MANAGER: &str = "image-catalog-import-upload-token";

#[derive(Debug, Clone)]
pub struct ControllerSettings {
    pub max_concurrent_imports: usize,
    /// Only images matching this label selector are handled (for sharding, and for tests).
    pub selector: Option<String>,
    pub pipeline: PipelineSettings,
    pub http: HttpSourceOptions,
    /// Attempts of one import after transient failures before it ends in Failed.
    pub max_attempts: u32,
    pub retry_backoff: Duration,
    /// At most one status write per image per interval while importing.
    pub status_interval: Duration,
    /// The daemon's namespace: where imagePullSecrets without a namespace are looked up.
    pub namespace: String,
    /// Other namespaces imagePullSecrets may be read in; any other is refused.
    pub pull_secret_namespaces: Vec<String>,
    /// How long an Upload image waits for its upload before it fails.
    pub upload_timeout: Duration,
    /// Base of the upload URL reachable from outside the cluster (`<base>/upload/<token>`).
    /// None: no URL from outside the cluster is configured (no Ingress, no NodePort).
    pub upload_external_base: Option<String>,
    /// Base of the upload URL reachable inside the cluster (the daemon's Service).
    pub upload_in_cluster_base: String,
    /// How often a running import saves a checkpoint to go on from after a restart.
    pub checkpoint_interval: Duration,
    /// This replica, as the holder of the checkpoint Leases it writes.
    pub identity: String,
}

/// Everything a reconcile needs, shared.
pub struct Context {
    client: Client,
    dvcr: Dvcr,
    settings: ControllerSettings,
    imports: Mutex<HashMap<String, TrackedImport>>,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    events: EventPublisher,
    uploads: Arc<UploadGate>,
    statuses: CviStatusStore,
    secrets: SecretReader,
    checkpoints: CheckpointStore,
}

struct TrackedImport {
    generation: i64,
    /// None once the import finished.
    cancel: Option<CancellationToken>,
    task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("writing the status: {0}")]
    Status(#[from] WriteError),
    #[error("deleting the image from DVCR: {0}")]
    Cleanup(#[from] crate::dvcr::DvcrError),
    #[error("finalizer: {0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
    #[error("the daemon hit a bug (a panic: {0}); retrying in a minute")]
    Panicked(String),
}

impl Error {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Status(_) => "status_write",
            Self::Cleanup(_) => "dvcr_cleanup",
            Self::Finalizer(_) => "finalizer",
            Self::Panicked(_) => "panic",
        }
    }
}

impl Context {
    pub fn new(
        client: Client,
        dvcr: Dvcr,
        settings: ControllerSettings,
        metrics: Arc<Metrics>,
        uploads: Arc<UploadGate>,
    ) -> Arc<Self> {
        Arc::new(Self {
            events: EventPublisher::new(client.clone(), "image-catalog"),
            statuses: CviStatusStore::new(client.clone()),
            secrets: SecretReader::new(
                client.clone(),
                settings.namespace.clone(),
                settings.pull_secret_namespaces.iter().cloned(),
            ),
            slots: Arc::new(Semaphore::new(settings.max_concurrent_imports.max(1))),
            checkpoints: CheckpointStore::new(
                client.clone(),
                &settings.namespace,
                settings.identity.clone(),
            ),
            client,
            dvcr,
            settings,
            imports: Mutex::new(HashMap::new()),
            metrics,
            uploads,
        })
    }

    fn known_import(&self, uid: &str) -> KnownImport {
        let imports = self
            .imports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match imports.get(uid) {
            Some(TrackedImport {
                generation,
                cancel: Some(_),
                ..
            }) => KnownImport::Running {
                generation: *generation,
            },
            Some(TrackedImport {
                generation,
                cancel: None,
                ..
            }) => KnownImport::Finished {
                generation: *generation,
            },
            None => KnownImport::None,
        }
    }

    fn track(
        &self,
        uid: &str,
        generation: i64,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    ) -> Option<TrackedImport> {
        let mut imports = self
            .imports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        imports.insert(
            uid.to_string(),
            TrackedImport {
                generation,
                cancel: Some(cancel),
                task: Some(task),
            },
        )
    }

    /// Marks the import of `generation` finished, unless a newer one replaced it meanwhile.
    fn mark_finished(&self, uid: &str, generation: i64) {
        let mut imports = self
            .imports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(tracked) = imports.get_mut(uid)
            && tracked.generation == generation
        {
            tracked.cancel = None;
        }
    }

    /// Cancels the import of an image that goes away, and returns its task to wait for.
    fn forget(&self, uid: &str) -> Option<tokio::task::JoinHandle<()>> {
        let mut imports = self
            .imports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let tracked = imports.remove(uid)?;
        if let Some(cancel) = tracked.cancel {
            cancel.cancel();
        }
        tracked.task
    }
}

/// Runs the controller until the process ends (or its task is aborted: the daemon owns the
/// signals and leadership, and stops the controller before it gives the lease up).
pub async fn run(ctx: Arc<Context>) {
    if let Err(error) = resume::sweep(
        &ctx.client,
        &ctx.checkpoints,
        &ctx.dvcr,
        ctx.settings.selector.as_deref(),
    )
    .await
    {
        tracing::warn!(%error, "cannot sweep the checkpoints of imports that ended; the next leader tries again");
    }
    let api: Api<ClusterVirtualImage> = Api::all(ctx.client.clone());
    let mut config = watcher::Config::default().any_semantic();
    if let Some(selector) = &ctx.settings.selector {
        config = config.labels(selector);
    }
    Controller::new(api, config)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile did not finish");
            }
        })
        .await;
}

async fn reconcile(cvi: Arc<ClusterVirtualImage>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<ClusterVirtualImage> = Api::all(ctx.client.clone());
    let reconciled = finalizer(&api, FINALIZER, cvi, |event| async {
        match event {
            FinalizerEvent::Apply(cvi) => apply(cvi, ctx.clone()).await,
            FinalizerEvent::Cleanup(cvi) => cleanup(cvi, ctx.clone()).await,
        }
    });
    crate::panics::caught(reconciled)
        .await
        .map_err(Error::Panicked)?
        .map_err(|error| Error::Finalizer(Box::new(error)))
}

fn error_policy(cvi: Arc<ClusterVirtualImage>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.count_reconcile_error(error.kind());
    tracing::warn!(image = %cvi.name_any(), %error, "reconcile failed; retrying");
    match error {
        // The same object likely panics again: not in a tight loop.
        Error::Panicked(_) => Action::requeue(Duration::from_secs(60)),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

async fn apply(cvi: Arc<ClusterVirtualImage>, ctx: Arc<Context>) -> Result<Action, Error> {
    let uid = cvi.uid().unwrap_or_default();
    let generation = cvi.metadata.generation.unwrap_or_default();
    let status = cvi.status.clone().unwrap_or_default();
    match decide(
        generation,
        status.phase,
        status.observed_generation,
        ctx.known_import(&uid),
    ) {
        Decision::Wait => {}
        Decision::Start | Decision::Restart => {
            let cancel = CancellationToken::new();
            let task = tokio::spawn(import_task(
                ctx.clone(),
                cvi.clone(),
                generation,
                cancel.clone(),
            ));
            if let Some(TrackedImport {
                cancel: Some(previous),
                ..
            }) = ctx.track(&uid, generation, cancel, task)
            {
                tracing::info!(image = %cvi.name_any(), generation, "spec changed during the import; starting over");
                previous.cancel();
            }
        }
    }
    Ok(Action::await_change())
}

async fn cleanup(cvi: Arc<ClusterVirtualImage>, ctx: Arc<Context>) -> Result<Action, Error> {
    let uid = cvi.uid().unwrap_or_default();
    if let Some(task) = ctx.forget(&uid) {
        // A cancelled import stops at its next await; waiting for it means it cannot tag the
        // image after the deletion below.
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    resume::discard(&ctx.checkpoints, &ctx.dvcr, &uid).await;
    let previous = cvi.status.clone().unwrap_or_default();
    let generation = cvi.metadata.generation.unwrap_or_default();
    let terminating = next_status(&previous, generation, &ImportState::Terminating, &now());
    if terminating != previous {
        ctx.statuses
            .write_import(&mut Target::of(&cvi), &terminating)
            .await?;
    }
    let existed = ctx.dvcr.delete_image(&repository(&cvi), &uid).await?;
    tracing::info!(image = %cvi.name_any(), existed, "deleted from DVCR");
    Ok(Action::await_change())
}

/// The DVCR repository of a ClusterVirtualImage.
pub fn repository(cvi: &ClusterVirtualImage) -> String {
    crate::dvcr::layout::cvi_repository(&cvi.name_any())
}

/// One import of one generation of one image, from the queue to Ready or Failed.
async fn import_task(
    ctx: Arc<Context>,
    cvi: Arc<ClusterVirtualImage>,
    generation: i64,
    cancel: CancellationToken,
) {
    let name = cvi.name_any();
    let uid = cvi.uid().unwrap_or_default();
    let mut writer = StatusWriter::new(ctx.clone(), &cvi, generation);
    let run = crate::panics::caught(run_import(&ctx, &cvi, &mut writer, &cancel));
    let outcome = tokio::select! {
        outcome = run => outcome.unwrap_or_else(|message| Err(ImportError::Panicked(message))),
        _ = cancel.cancelled() => Err(ImportError::Cancelled),
    };
    match outcome {
        Err(ImportError::Cancelled) => {
            tracing::info!(image = %name, generation, "import cancelled");
            return;
        }
        Ok(stored) => {
            ctx.metrics.imports_succeeded.inc();
            writer
                .write_final(&ImportState::Stored(stored.clone()))
                .await;
            ctx.publish(
                &cvi,
                EventType::Normal,
                "ImageReady",
                &format!("Stored in DVCR as {}", stored.registry_url),
            )
            .await;
            tracing::info!(image = %name, url = %stored.registry_url, format = %stored.format, "image ready");
        }
        Err(error) => {
            ctx.metrics.count_failure(error.reason());
            let problem = problem(&error);
            writer
                .write_final(&ImportState::Failed(problem.clone()))
                .await;
            ctx.publish(&cvi, EventType::Warning, &problem.reason, &problem.message)
                .await;
            tracing::warn!(image = %name, reason = %problem.reason, message = %problem.message, "import failed");
        }
    }
    ctx.mark_finished(&uid, generation);
}

impl Context {
    async fn publish(&self, cvi: &ClusterVirtualImage, type_: EventType, reason: &str, note: &str) {
        self.events
            .publish(&cvi.object_ref(&()), type_, reason, "Import", note)
            .await;
    }
}

fn problem(error: &ImportError) -> Problem {
    Problem {
        reason: error.reason().to_string(),
        message: error.to_string(),
        source_fault: error.is_source_fault(),
    }
}

fn stored_image(stored: &StoredImport) -> StoredImage {
    StoredImage {
        registry_url: stored.registry_url.clone(),
        format: stored.info.format.to_string(),
        cdrom: stored.info.cdrom,
        stored_size: stored.stored_size,
        virtual_size: stored.info.virtual_size,
        source_uid: None,
    }
}

/// Imports the image from its source: waits for what it depends on and for an import slot,
/// then runs the source's import.
async fn run_import(
    ctx: &Context,
    cvi: &ClusterVirtualImage,
    writer: &mut StatusWriter,
    cancel: &CancellationToken,
) -> Result<StoredImage, ImportError> {
    // Every import saves checkpoints: a source that can be opened at an offset goes on from
    // them after a restart, and for the others they name the upload session to cancel.
    let checkpoints = ImportCheckpoints::open(
        &ctx.checkpoints,
        &ctx.dvcr,
        cvi,
        writer.generation,
        ctx.settings.checkpoint_interval,
        // Only an HTTP source can be opened again at an offset.
        cvi.spec.data_source.type_ == DataSourceType::Http,
    )
    .await;
    let request = ImportRequest {
        repository: repository(cvi),
        tag: cvi.uid().unwrap_or_default(),
        checksum: None,
        checkpointing: Some(checkpoints.checkpointing.clone()),
    };
    let outcome = import_source(ctx, cvi, writer, cancel, request).await;
    checkpoints.end(&outcome).await;
    outcome
}

async fn import_source(
    ctx: &Context,
    cvi: &ClusterVirtualImage,
    writer: &mut StatusWriter,
    cancel: &CancellationToken,
    request: ImportRequest,
) -> Result<StoredImage, ImportError> {
    let source = &cvi.spec.data_source;
    match (
        source.type_,
        &source.http,
        &source.object_ref,
        &source.container_image,
    ) {
        (DataSourceType::Http, Some(http), _, _) => {
            let _slot = acquire_slot(ctx, writer, cancel).await?;
            ctx.publish(
                cvi,
                EventType::Normal,
                "ImportStarted",
                &format!("Importing from {}", redact_url(&http.url)),
            )
            .await;
            let request = ImportRequest {
                checksum: http.checksum.clone(),
                ..request
            };
            let stored = transfer_with_retries(ctx, cvi, writer, cancel, |progress| {
                let request = &request;
                async move {
                    http_import::import(
                        &ctx.dvcr,
                        &ctx.settings.pipeline,
                        &ctx.settings.http,
                        request,
                        http,
                        &progress,
                        cancel,
                    )
                    .await
                }
            })
            .await?;
            Ok(stored_image(&stored))
        }
        (DataSourceType::ContainerImage, _, _, Some(image)) => {
            let credentials = wait_for_pull_secret(ctx, image, writer, cancel).await?;
            let _slot = acquire_slot(ctx, writer, cancel).await?;
            ctx.publish(
                cvi,
                EventType::Normal,
                "ImportStarted",
                &format!("Importing {}", image.image),
            )
            .await;
            let ca_bundle = image
                .ca_bundle
                .as_deref()
                .map(http_import::decode_ca_bundle)
                .transpose()?;
            let stored = transfer_with_retries(ctx, cvi, writer, cancel, |progress| {
                let (request, credentials, ca_bundle) =
                    (&request, credentials.clone(), ca_bundle.clone());
                async move {
                    pipeline::store_restarting(
                        &ctx.dvcr,
                        &ctx.settings.pipeline,
                        request,
                        &progress,
                        cancel,
                        |_| {
                            ContainerDisk::open(
                                &image.image,
                                ca_bundle.as_deref(),
                                credentials.clone(),
                                &ctx.settings.http.egress,
                            )
                        },
                    )
                    .await
                }
            })
            .await?;
            Ok(stored_image(&stored))
        }
        (DataSourceType::ObjectRef, _, Some(reference), _) => {
            let source = wait_for_source(ctx, reference, writer, cancel).await?;
            let _slot = acquire_slot(ctx, writer, cancel).await?;
            ctx.publish(
                cvi,
                EventType::Normal,
                "ImportStarted",
                &format!("Copying {}", source.description),
            )
            .await;
            let progress = LiveProgress::default();
            writer.begin_transfer(&progress);
            let (stored, method) = object_ref::copy(
                &ctx.dvcr,
                &ctx.settings.pipeline,
                &request,
                &source,
                &progress,
                cancel,
            )
            .await?;
            match method {
                CopyMethod::Mounted => ctx.metrics.copies_mounted.inc(),
                CopyMethod::Streamed => ctx.metrics.copies_streamed.inc(),
            };
            Ok(stored)
        }
        (DataSourceType::Upload, _, _, _) => {
            receive_upload(ctx, cvi, &request, writer, cancel).await
        }
        (type_, _, _, _) => {
            writer
                .write_now(&ImportState::Waiting {
                    reason: "SourceTypeNotSupported".into(),
                    message: format!(
                        "This controller does not import {type_} sources yet; the image stays Pending until a controller that does handles it."
                    ),
                    source_blocked: false,
                })
                .await;
            // Parks the task until the spec changes or the image goes away.
            cancel.cancelled().await;
            Err(ImportError::Cancelled)
        }
    }
}

/// What an image waiting for its upload tells the user to do.
fn waiting_for_upload_message(has_external_url: bool) -> String {
    if has_external_url {
        "Waiting for the image: upload it with `curl <status.imageUploadURLs.external> -T image.img`.".into()
    } else {
        "Waiting for the image: upload it from inside the cluster with `curl <status.imageUploadURLs.inCluster> -T image.img`. No URL from outside the cluster is configured: set the chart's upload.externalURL (or upload.ingress), or the daemon's --upload-external-url.".into()
    }
}

/// Waits for the user's upload and imports it. A broken or refused upload leaves the image
/// waiting for the next attempt; no upload for `upload_timeout` ends in Failed.
async fn receive_upload(
    ctx: &Context,
    cvi: &ClusterVirtualImage,
    request: &ImportRequest,
    writer: &mut StatusWriter,
    cancel: &CancellationToken,
) -> Result<StoredImage, ImportError> {
    let (token, ticket, deadline) = open_upload(ctx, cvi, cancel).await?;
    let mut ticket = OpenUpload::new(ticket, &ctx.metrics);
    let mut urls = upload_urls(ctx, &token);
    drop(token);
    let mut message = if writer.take_restart() {
        tracing::info!(image = %cvi.name_any(), "the last upload was cut by the daemon's restart; waiting for it again");
        UPLOAD_INTERRUPTED_MESSAGE.to_string()
    } else {
        waiting_for_upload_message(ctx.settings.upload_external_base.is_some())
    };
    loop {
        writer
            .write_now(&ImportState::AwaitingUpload {
                urls: urls.clone(),
                message: message.clone(),
            })
            .await;
        let left = (deadline - chrono::Utc::now()).to_std().unwrap_or_default();
        let mut upload = tokio::select! {
            upload = ticket.next() => upload.ok_or(ImportError::Cancelled)?,
            _ = tokio::time::sleep(left) => {
                return Err(ImportError::UploadTimedOut(ctx.settings.upload_timeout))
            }
            _ = cancel.cancelled() => return Err(ImportError::Cancelled),
        };
        let _slot = acquire_slot(ctx, writer, cancel).await?;
        ctx.publish(
            cvi,
            EventType::Normal,
            "UploadStarted",
            "An upload of the image started",
        )
        .await;
        let progress = LiveProgress::default();
        writer.begin_transfer(&progress);
        let result = with_status_ticks(
            ctx,
            writer,
            &progress,
            pipeline::store(
                &ctx.dvcr,
                &ctx.settings.pipeline,
                request,
                &mut upload,
                &progress,
                cancel,
            ),
        )
        .await;
        ctx.metrics.bytes_imported.inc_by(progress.received());
        match result {
            Ok(stored) => {
                upload.respond(UploadOutcome::Stored {
                    registry_url: stored.registry_url.clone(),
                });
                return Ok(stored_image(&stored));
            }
            Err(ImportError::Cancelled) => return Err(ImportError::Cancelled),
            Err(error) => {
                tracing::info!(image = %cvi.name_any(), reason = error.reason(), "an upload failed; waiting for another");
                upload.respond(UploadOutcome::Refused {
                    reason: error.reason().to_string(),
                    message: format!(
                        "{error}; the next upload goes to a new URL: see the image's status.imageUploadURLs"
                    ),
                });
                // A URL that was used once is not used again: whoever saw it (a log, a
                // proxy, a shell history) cannot send the next attempt.
                let token = UploadToken::generate().map_err(ImportError::UploadTokenUnavailable)?;
                save_token_digest(ctx, &cvi.name_any(), &token.digest(), deadline, cancel).await?;
                ticket.ticket = ctx.uploads.register(token.digest()).map_err(|error| {
                    ImportError::Stage(format!("registering a new upload token: {error}"))
                })?;
                urls = upload_urls(ctx, &token);
                message = format!(
                    "The last upload failed ({}: {error}); upload the image again, to the new URL in status.imageUploadURLs (the old one no longer works).",
                    error.reason()
                );
            }
        }
    }
}

fn upload_urls(ctx: &Context, token: &UploadToken) -> ImageUploadUrls {
    ImageUploadUrls {
        external: ctx
            .settings
            .upload_external_base
            .as_deref()
            .map(|base| upload_url(base, token)),
        in_cluster: Some(upload_url(&ctx.settings.upload_in_cluster_base, token)),
    }
}

type Deadline = chrono::DateTime<chrono::Utc>;

/// The token of an Upload image, registered with the gate, and when the wait ends: the
/// token its URLs already carry when a previous daemon published them for this spec (a
/// restart or takeover keeps the URLs the user was told, and the deadline), otherwise a new
/// one whose sha256 is stored on the image before any URL with it is published.
async fn open_upload(
    ctx: &Context,
    cvi: &ClusterVirtualImage,
    cancel: &CancellationToken,
) -> Result<(UploadToken, UploadTicket, Deadline), ImportError> {
    let fresh_deadline = || {
        chrono::Utc::now()
            + chrono::Duration::from_std(ctx.settings.upload_timeout).unwrap_or_default()
    };
    let name = cvi.name_any();
    let generation = cvi.metadata.generation.unwrap_or_default();
    let status = cvi.status.clone().unwrap_or_default();
    let stored = cvi
        .annotations()
        .get(UPLOAD_TOKEN_SHA256)
        .map(String::as_str);
    if let Some(token) = published_token(&status, generation, stored) {
        match ctx.uploads.register(token.digest()) {
            Ok(ticket) => {
                tracing::info!(image = %name, "kept the upload URLs published before the restart");
                // A daemon from before deadlines were kept starts the wait again.
                let deadline = cvi
                    .annotations()
                    .get(UPLOAD_DEADLINE)
                    .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
                    .map_or_else(fresh_deadline, |at| at.with_timezone(&chrono::Utc));
                return Ok((token, ticket, deadline));
            }
            Err(error) => {
                tracing::warn!(image = %name, %error, "the published upload URLs cannot be kept; making new ones")
            }
        }
    }
    let token = UploadToken::generate().map_err(ImportError::UploadTokenUnavailable)?;
    let deadline = fresh_deadline();
    save_token_digest(ctx, &name, &token.digest(), deadline, cancel).await?;
    let ticket = ctx
        .uploads
        .register(token.digest())
        .map_err(|error| ImportError::Stage(format!("registering a new upload token: {error}")))?;
    Ok((token, ticket, deadline))
}

/// Stores the token's sha256 and the deadline in the image's annotations (server-side apply,
/// under the controller's own field manager), retried with back-off while the API server
/// fails.
async fn save_token_digest(
    ctx: &Context,
    name: &str,
    digest: &TokenDigest,
    deadline: Deadline,
    cancel: &CancellationToken,
) -> Result<(), ImportError> {
    let api: Api<ClusterVirtualImage> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({
        "apiVersion": ClusterVirtualImage::api_version(&()),
        "kind": ClusterVirtualImage::kind(&()),
        "metadata": {
            "name": name,
            "annotations": {
                UPLOAD_TOKEN_SHA256: digest.to_hex(),
                UPLOAD_DEADLINE: deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            },
        },
    });
    let params = PatchParams::apply(UPLOAD_TOKEN_MANAGER).force();
    let mut delay = Duration::from_millis(200);
    let mut tries = 1;
    loop {
        let error = match api.patch(name, &params, &Patch::Apply(&patch)).await {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        let retry = match &error {
            kube::Error::Api(status) => status.code >= 500 || status.code == 429,
            _ => true,
        };
        if !retry || tries >= 8 {
            return Err(ImportError::UploadTokenNotSaved(error.to_string()));
        }
        tracing::warn!(image = %name, %error, "saving the upload token's hash failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return Err(ImportError::Cancelled),
        }
        delay = (delay * 2).min(Duration::from_secs(10));
        tries += 1;
    }
}

/// An image's registration with the upload gate, counted in `uploads_open` while it lasts.
struct OpenUpload<'a> {
    ticket: UploadTicket,
    metrics: &'a Metrics,
}

impl<'a> OpenUpload<'a> {
    fn new(ticket: UploadTicket, metrics: &'a Metrics) -> Self {
        metrics.uploads_open.inc();
        Self { ticket, metrics }
    }
    async fn next(&mut self) -> Option<crate::import::source::upload::Upload> {
        self.ticket.next().await
    }
}

impl Drop for OpenUpload<'_> {
    fn drop(&mut self) {
        self.metrics.uploads_open.dec();
    }
}

/// How often a missing or unready source image is looked at again.
const SOURCE_POLL: Duration = Duration::from_secs(3);

/// Waits until the source of an ObjectRef is Ready, showing why meanwhile.
async fn wait_for_source(
    ctx: &Context,
    reference: &crate::api::ObjectRef,
    writer: &mut StatusWriter,
    cancel: &CancellationToken,
) -> Result<SourceImage, ImportError> {
    loop {
        match object_ref::resolve(&ctx.client, reference).await {
            Ok(SourceState::Ready(source)) => return Ok(source),
            Ok(SourceState::Waiting { reason, message }) => {
                writer
                    .write_now(&ImportState::Waiting {
                        reason: reason.into(),
                        message,
                        source_blocked: true,
                    })
                    .await;
            }
            Err(error) => tracing::warn!(%error, "reading the source image failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(SOURCE_POLL) => {}
            _ = cancel.cancelled() => return Err(ImportError::Cancelled),
        }
    }
}

/// Holds an import slot until dropped.
struct Slot<'a> {
    metrics: &'a Metrics,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.metrics.imports_in_flight.dec();
    }
}

/// Waits for one of the `--max-concurrent-imports` slots, showing Pending meanwhile.
async fn acquire_slot<'a>(
    ctx: &'a Context,
    writer: &mut StatusWriter,
    cancel: &CancellationToken,
) -> Result<Slot<'a>, ImportError> {
    let permit = match ctx.slots.clone().try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => {
            ctx.metrics.imports_queued.inc();
            writer
                .write_now(&ImportState::Waiting {
                    reason: "WaitingForImportSlot".into(),
                    message: format!(
                        "{} imports already run (--max-concurrent-imports); this one starts when one of them ends.",
                        ctx.settings.max_concurrent_imports
                    ),
                    source_blocked: false,
                })
                .await;
            let permit = tokio::select! {
                permit = ctx.slots.clone().acquire_owned() => permit,
                _ = cancel.cancelled() => { ctx.metrics.imports_queued.dec(); return Err(ImportError::Cancelled) }
            };
            ctx.metrics.imports_queued.dec();
            permit.map_err(|_| ImportError::Cancelled)?
        }
    };
    ctx.metrics.imports_in_flight.inc();
    Ok(Slot {
        metrics: &ctx.metrics,
        _permit: permit,
    })
}

/// Drives `import` to its end, writing the transfer status once per status interval meanwhile.
async fn with_status_ticks<T>(
    ctx: &Context,
    writer: &mut StatusWriter,
    progress: &LiveProgress,
    import: impl Future<Output = T>,
) -> T {
    tokio::pin!(import);
    let mut ticker = tokio::time::interval(ctx.settings.status_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = &mut import => return result,
            _ = ticker.tick() => writer.write_transfer(progress, None).await,
        }
    }
}

/// Runs `attempt` (one import from the source into DVCR) with a status write per interval,
/// retrying transient failures with back-off.
async fn transfer_with_retries<F, Fut>(
    ctx: &Context,
    cvi: &ClusterVirtualImage,
    writer: &mut StatusWriter,
    cancel: &CancellationToken,
    mut attempt: F,
) -> Result<StoredImport, ImportError>
where
    F: FnMut(Arc<LiveProgress>) -> Fut,
    Fut: Future<Output = Result<StoredImport, ImportError>>,
{
    let started = Instant::now();
    let mut tries = 1;
    loop {
        let progress = Arc::new(LiveProgress::default());
        writer.begin_transfer(&progress);
        let result = with_status_ticks(ctx, writer, &progress, attempt(progress.clone())).await;
        ctx.metrics.bytes_imported.inc_by(progress.fetched());
        match result {
            Ok(stored) => {
                ctx.metrics
                    .import_duration_seconds
                    .observe(started.elapsed().as_secs_f64());
                return Ok(stored);
            }
            Err(error) if error.is_transient() && tries < ctx.settings.max_attempts => {
                let problem = problem(&error);
                tracing::info!(image = %cvi.name_any(), tries, reason = %problem.reason, "transient failure; retrying");
                writer.write_transfer(&progress, Some(problem)).await;
                let backoff = crate::net::backoff_from(
                    ctx.settings.retry_backoff,
                    tries - 1,
                    crate::net::random_jitter(),
                    ctx.settings.retry_backoff.saturating_mul(64),
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = cancel.cancelled() => return Err(ImportError::Cancelled),
                }
                tries += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Reads the credentials of a ContainerImage source from its imagePullSecret, waiting (with
/// DatasourceReady=False saying why) while the Secret is missing or unusable.
async fn wait_for_pull_secret(
    ctx: &Context,
    source: &crate::api::ContainerImageSource,
    writer: &mut StatusWriter,
    cancel: &CancellationToken,
) -> Result<Option<RegistryCredentials>, ImportError> {
    let Some(name) = source
        .image_pull_secret
        .as_ref()
        .and_then(|s| s.name.clone())
    else {
        return Ok(None);
    };
    let namespace = source
        .image_pull_secret
        .as_ref()
        .and_then(|s| s.namespace.clone());
    let registry = registry_host(&source.image);
    loop {
        let (reason, message) = match ctx.secrets.pull_secret(namespace.as_deref(), &name).await {
            Ok(secret) => match secrets::registry_credentials(&secret, &registry) {
                Ok(credentials) => return Ok(Some(credentials)),
                Err(error) => (
                    "ImagePullSecretInvalid".to_string(),
                    format!("{error}; fix the Secret and the import starts by itself."),
                ),
            },
            Err(error @ SecretError::NotFound { .. }) => (
                error.reason("ImagePullSecret"),
                format!(
                    "The imagePullSecret {}/{name} does not exist; create it (type kubernetes.io/dockerconfigjson) and the import starts by itself.",
                    namespace.as_deref().unwrap_or(ctx.secrets.namespace())
                ),
            ),
            Err(error) => (error.reason("ImagePullSecret"), format!("{error}.")),
        };
        writer
            .write_now(&ImportState::Waiting {
                reason,
                message,
                source_blocked: true,
            })
            .await;
        tokio::select! {
            _ = tokio::time::sleep(SOURCE_POLL) => {}
            _ = cancel.cancelled() => return Err(ImportError::Cancelled),
        }
    }
}

/// Writes the status of one import: the pure `next_status` decides, this only writes when the
/// result differs from what was written last.
struct StatusWriter {
    ctx: Arc<Context>,
    name: String,
    target: Target,
    generation: i64,
    written: ImageStatus,
    /// A previous daemon was importing this spec when it stopped; the next transfer (or the
    /// upload's wait) says that it started over.
    restart_pending: bool,
    /// The running transfer is the one that started over after the restart.
    restarted: bool,
    transfer_started: Instant,
    last_sample: (Instant, u64),
}

impl StatusWriter {
    fn new(ctx: Arc<Context>, cvi: &ClusterVirtualImage, generation: i64) -> Self {
        let found = cvi.status.clone().unwrap_or_default();
        let restart_pending = interrupted_by_restart(&found, generation);
        if restart_pending {
            tracing::info!(image = %cvi.name_any(), generation, "the import was interrupted by a restart of the daemon; starting it again from byte 0");
        }
        Self {
            ctx,
            name: cvi.name_any(),
            target: Target::of(cvi),
            generation,
            written: starting_point(&found, generation),
            restart_pending,
            restarted: false,
            transfer_started: Instant::now(),
            last_sample: (Instant::now(), 0),
        }
    }

    /// Whether the import was interrupted by a restart, telling it only once.
    fn take_restart(&mut self) -> bool {
        std::mem::take(&mut self.restart_pending)
    }

    fn begin_transfer(&mut self, _progress: &LiveProgress) {
        self.transfer_started = Instant::now();
        self.last_sample = (self.transfer_started, 0);
        self.restarted = self.take_restart();
    }

    async fn write_transfer(&mut self, progress: &LiveProgress, problem: Option<Problem>) {
        let now = Instant::now();
        // Speeds count what this transfer fetched, not what a resumed one had already.
        let fetched = progress.fetched();
        let (sampled_at, sampled_bytes) = self.last_sample;
        self.last_sample = (now, fetched);
        let transfer = Transfer {
            received: progress.received(),
            total: progress.total(),
            speed: speed(
                fetched,
                now - self.transfer_started,
                fetched.saturating_sub(sampled_bytes),
                now - sampled_at,
            ),
            after_restart: match (self.restarted, progress.resumed_at()) {
                (false, _) => AfterRestart::No,
                (true, Some(offset)) => AfterRestart::ResumedAt(offset),
                (true, None) => AfterRestart::FromZero,
            },
        };
        let state = match problem {
            Some(problem) => ImportState::Retrying { transfer, problem },
            None => ImportState::Transferring(transfer),
        };
        self.write_now(&state).await;
    }

    async fn write_now(&mut self, state: &ImportState) {
        let next = next_status(&self.written, self.generation, state, &now());
        if next == self.written {
            return;
        }
        match self
            .ctx
            .statuses
            .write_import(&mut self.target, &next)
            .await
        {
            Ok(()) => self.written = next,
            Err(error) => {
                tracing::warn!(image = %self.name, %error, "writing the status failed; the next write retries")
            }
        }
    }

    /// The last write of an import: retried, since nothing would write it later.
    async fn write_final(&mut self, state: &ImportState) {
        let next = next_status(&self.written, self.generation, state, &now());
        let mut delay = Duration::from_millis(200);
        for _ in 0..8 {
            match self
                .ctx
                .statuses
                .write_import(&mut self.target, &next)
                .await
            {
                Ok(()) => {
                    self.written = next;
                    return;
                }
                Err(WriteError::Gone(_)) => return,
                Err(error) => {
                    tracing::warn!(image = %self.name, %error, "writing the final status failed; retrying")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}
