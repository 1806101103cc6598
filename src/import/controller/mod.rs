//! The ClusterVirtualImage controller: a thin shell around `decide`, the pipeline and
//! `next_status`. Reconcile reads the image, decides, and starts or cancels an import task; the
//! task streams the image and writes the status, at most once per `status_interval`.

mod prepare;
mod slots;
mod status_writer;
mod upload;
mod waits;

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
use crate::import::pipeline;
use crate::import::pipeline::{
    ImportError, ImportRequest, LiveProgress, PipelineSettings, StoredImport,
};
use crate::import::progress::speed;
use crate::import::resume::{self, ImportCheckpoints};
use crate::import::source::container_image::{ContainerDisk, RegistryCredentials, registry_host};
use crate::import::source::http::{HttpSourceOptions, redact_url};
use crate::import::source::http_import;
use crate::import::source::object_ref::{self, CopyMethod, SourceImage, SourceState};
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
use crate::metrics::{Metrics, Reconciler};

use self::prepare::prepare;
use self::slots::{acquire_slot, transfer_with_retries, with_status_ticks};
use self::status_writer::{StatusWriter, now};
use self::upload::receive_upload;
use self::waits::{wait_for_pull_secret, wait_for_source};

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
    let controller = Controller::new(api, config);
    let metrics = ctx.metrics.clone();
    let _counted = metrics.images.watch(controller.store());
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile did not finish");
            }
        })
        .await;
}

/// The source type, as metrics label it.
fn source_label(cvi: &ClusterVirtualImage) -> &'static str {
    cvi.spec.data_source.type_.as_str()
}

// Every log line of a reconcile, and of the import it starts, names its image.
#[tracing::instrument(name = "reconcile", skip_all, fields(controller = "import", image = %cvi.name_any()))]
async fn reconcile(cvi: Arc<ClusterVirtualImage>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconciles.start(Reconciler::Import);
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
    ctx.metrics
        .reconciles
        .failed(Reconciler::Import, error.kind());
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
#[tracing::instrument(name = "import", skip_all, fields(image = %cvi.name_any(), generation = generation, source = %source_label(&cvi)))]
async fn import_task(
    ctx: Arc<Context>,
    cvi: Arc<ClusterVirtualImage>,
    generation: i64,
    cancel: CancellationToken,
) {
    let uid = cvi.uid().unwrap_or_default();
    let mut writer = StatusWriter::new(ctx.clone(), &cvi, generation);
    let run = crate::panics::caught(run_import(&ctx, &cvi, &mut writer, &cancel));
    let outcome = tokio::select! {
        outcome = run => outcome.unwrap_or_else(|message| Err(ImportError::Panicked(message))),
        _ = cancel.cancelled() => Err(ImportError::Cancelled),
    };
    match outcome {
        Err(ImportError::Cancelled) => {
            tracing::info!("import cancelled");
            return;
        }
        Ok(stored) => {
            ctx.metrics
                .imports
                .succeeded(source_label(&cvi), writer.transferring_for());
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
            tracing::info!(url = %stored.registry_url, format = %stored.format, "image ready");
        }
        Err(error) => {
            ctx.metrics
                .imports
                .failed(source_label(&cvi), error.reason());
            let problem = problem(&error);
            writer
                .write_final(&ImportState::Failed(problem.clone()))
                .await;
            ctx.publish(&cvi, EventType::Warning, &problem.reason, &problem.message)
                .await;
            tracing::warn!(reason = %problem.reason, message = %problem.message, "import failed");
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
    let Some(prepared) = prepare(ctx, cvi, writer, cancel).await? else {
        // An upload's bytes come once, from the user: its own steps wait for the next one
        // instead of retrying.
        if source.type_ == DataSourceType::Upload {
            return receive_upload(ctx, cvi, &request, writer, cancel).await;
        }
        writer
            .write_now(&ImportState::Waiting {
                reason: "SourceTypeNotSupported".into(),
                message: format!(
                    "This controller does not import {} sources yet; the image stays Pending until a controller that does handles it.",
                    source.type_
                ),
                source_blocked: false,
            })
            .await;
        // Parks the task until the spec changes or the image goes away.
        cancel.cancelled().await;
        return Err(ImportError::Cancelled);
    };
    let request = ImportRequest {
        checksum: prepared.checksum(),
        ..request
    };
    let _slot = acquire_slot(ctx, writer, cancel).await?;
    ctx.publish(cvi, EventType::Normal, "ImportStarted", &prepared.started())
        .await;
    transfer_with_retries(ctx, cvi, writer, cancel, |progress| {
        let (prepared, request) = (&prepared, &request);
        async move { prepared.transfer(ctx, request, &progress, cancel).await }
    })
    .await
}
