//! The ImageCatalog controller: a thin shell around `catalog::load`, `plan` and
//! `next_status`. A reconcile reads (Git, Secrets, the CVI cache), decides with pure code,
//! then writes: dry run, apply, prune, status, commit check.

mod apply;
mod interval;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::k8s::events::{Event, EventPublisher, EventType};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::mpsc;

use super::fetch_error::FetchError;
use super::plan::{self, Change, FIELD_MANAGER, Plan, PlannedImage};
use super::status::{self, ImageState, Outcome};
use crate::api::ClusterVirtualImage;
use crate::api::catalog::{ImageCatalog, ImageCatalogStatus, condition, keys};
use crate::api::status::condition::READY;
use crate::catalog::{CatalogImage, Problem};
use crate::k8s::secrets::SecretReader;
use crate::metrics::{CatalogSync, Metrics, Reconciler};
use crate::report::publish::{PublishSettings, Publishers};

pub use self::apply::dry_run;
use self::apply::{Writes, apply_commit, images_of};
use self::interval::interval_of;
pub use self::interval::parse_duration;

/// Removed once the catalog's images are pruned (with `prune: true`).
pub const FINALIZER: &str = "imagecatalog.dev/prune-images";
/// The field manager of the catalog status.
pub const STATUS_MANAGER: &str = "image-catalog-sync-status";

#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// The daemon's namespace: where Secrets named by catalogs live.
    pub namespace: String,
    /// Git caches, one folder per catalog.
    pub cache_dir: PathBuf,
    /// Parallel API calls while dry-running and applying.
    pub api_concurrency: usize,
    /// Hosts commit checks may go to besides the repository's own (`--forge-api-host`).
    pub forge_api_hosts: Vec<String>,
    /// Where Git remotes may be: checked before every fetch and push.
    pub egress: std::sync::Arc<crate::egress::EgressPolicy>,
}

pub struct Context {
    client: Client,
    settings: SyncSettings,
    images: Store<ClusterVirtualImage>,
    memory: Mutex<HashMap<String, Memory>>,
    publishers: Publishers,
    secrets: SecretReader,
    metrics: Arc<Metrics>,
    events: EventPublisher,
}

/// What the controller remembers of a catalog between reconciles, so that a reconcile
/// triggered by an image's progress does not fetch Git again.
#[derive(Clone)]
struct Memory {
    generation: Option<i64>,
    fetched_at: Instant,
    commit: String,
    loaded: Arc<Result<Vec<CatalogImage>, Vec<Problem>>>,
    /// The applied commit, when `commit` does not descend from it.
    diverged_from: Option<String>,
    /// A webhook asked for a fetch now.
    fetch_requested: bool,
}

/// A handle to ask for an immediate sync of a catalog (webhooks).
#[derive(Clone)]
pub struct SyncTrigger {
    sender: mpsc::Sender<ObjectRef<ImageCatalog>>,
    context: Arc<Context>,
}

impl SyncTrigger {
    /// Marks the catalog for a Git fetch and queues a reconcile.
    pub async fn sync_now(&self, catalog: &str) {
        if let Ok(mut memory) = self.context.memory.lock()
            && let Some(memory) = memory.get_mut(catalog)
        {
            memory.fetch_requested = true;
        }
        let _ = self.sender.send(ObjectRef::new(catalog)).await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("the daemon hit a bug (a panic: {0}); retrying in a minute")]
    Panicked(String),
}

type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short label for metrics.
    fn kind(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Finalizer(_) => "finalizer",
            Self::Panicked(_) => "panic",
        }
    }
}

/// The controller, ready to run; `trigger()` hands out the webhooks' way in.
pub struct SyncController {
    context: Arc<Context>,
    writer: reflector::store::Writer<ClusterVirtualImage>,
    receiver: mpsc::Receiver<ObjectRef<ImageCatalog>>,
    trigger: SyncTrigger,
}

/// Builds the controller's shared state.
pub fn new(client: Client, settings: SyncSettings, metrics: Arc<Metrics>) -> SyncController {
    let (reader, writer) = reflector::store();
    let context = Arc::new(Context {
        publishers: Publishers::new(
            client.clone(),
            PublishSettings {
                namespace: settings.namespace.clone(),
                cache_dir: settings.cache_dir.clone(),
                forge_api_hosts: settings.forge_api_hosts.clone(),
                egress: settings.egress.clone(),
            },
        ),
        secrets: SecretReader::new(client.clone(), settings.namespace.clone(), []),
        client: client.clone(),
        settings,
        images: reader,
        memory: Mutex::new(HashMap::new()),
        metrics,
        events: EventPublisher::new(client.clone(), "image-catalog-sync"),
    });
    let (sender, receiver) = mpsc::channel(64);
    let trigger = SyncTrigger {
        sender,
        context: context.clone(),
    };
    SyncController {
        context,
        writer,
        receiver,
        trigger,
    }
}

impl SyncController {
    pub fn trigger(&self) -> SyncTrigger {
        self.trigger.clone()
    }

    /// Runs until the process ends (or its task is aborted: the daemon owns the signals).
    pub async fn run(self) {
        let client = self.context.client.clone();
        let images_api: Api<ClusterVirtualImage> = Api::all(client.clone());
        let image_events = reflector::reflector(
            self.writer,
            watcher(images_api, watcher::Config::default().any_semantic()),
        )
        .default_backoff()
        .touched_objects();
        let catalogs: Api<ImageCatalog> = Api::all(client);
        let config =
            kube::runtime::controller::Config::default().debounce(Duration::from_millis(500));
        Controller::new(catalogs, watcher::Config::default().any_semantic())
            .with_config(config)
            .watches_stream(image_events, catalog_of_image)
            .reconcile_on(tokio_stream_from(self.receiver))
            .run(reconcile, error_policy, self.context)
            .for_each(|result| async move {
                if let Err(error) = result {
                    tracing::debug!(%error, "catalog reconcile did not finish");
                }
            })
            .await;
    }
}

fn catalog_of_image(cvi: ClusterVirtualImage) -> Option<ObjectRef<ImageCatalog>> {
    cvi.labels()
        .get(keys::CATALOG)
        .map(|catalog| ObjectRef::new(catalog))
}

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

// Every log line of a sync, down to Git and the forges, names its catalog.
#[tracing::instrument(name = "reconcile", skip_all, fields(controller = "catalog", catalog = %catalog.name_any()))]
async fn reconcile(catalog: Arc<ImageCatalog>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconciles.start(Reconciler::Catalog);
    let api: Api<ImageCatalog> = Api::all(ctx.client.clone());
    let reconciled = finalizer(&api, FINALIZER, catalog.clone(), |event| async {
        match event {
            FinalizerEvent::Apply(catalog) => sync(catalog, ctx.clone()).await,
            FinalizerEvent::Cleanup(catalog) => cleanup(catalog, ctx.clone()).await,
        }
    });
    match crate::panics::caught(reconciled).await {
        Ok(result) => result.map_err(|error| Error::Finalizer(Box::new(error))),
        Err(panic) => {
            report_panic(&ctx, &catalog, &panic).await;
            Err(Error::Panicked(panic))
        }
    }
}

/// Says on the catalog that the daemon hit a bug with it; other catalogs go on.
async fn report_panic(ctx: &Context, catalog: &ImageCatalog, panic: &str) {
    let outcome = Outcome::FetchFailed(FetchError::Panicked(panic.to_string()));
    let (_, next, _) = next_status(ctx, catalog, &outcome);
    if let Err(error) = write_status(ctx, &catalog.name_any(), &next).await {
        tracing::warn!(catalog = %catalog.name_any(), %error, "could not report the panic on the catalog");
    }
}

/// The catalog's status after `outcome`, beside the one it had and its images now.
fn next_status(
    ctx: &Context,
    catalog: &ImageCatalog,
    outcome: &Outcome,
) -> (ImageCatalogStatus, ImageCatalogStatus, Vec<ImageState>) {
    let previous = catalog.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let images = images_of(ctx, &catalog.name_any());
    let next = status::next_status(&previous, catalog.meta().generation, outcome, &images, &now);
    (previous, next, images)
}

fn error_policy(catalog: Arc<ImageCatalog>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconciles
        .failed(Reconciler::Catalog, error.kind());
    tracing::warn!(catalog = %catalog.name_any(), %error, "catalog sync failed; retrying");
    match error {
        // The same commit likely panics again: not in a tight loop.
        Error::Panicked(_) => Action::requeue(Duration::from_secs(60)),
        _ => Action::requeue(Duration::from_secs(10)),
    }
}

/// A catalog being deleted takes its images with it when it prunes.
async fn cleanup(catalog: Arc<ImageCatalog>, ctx: Arc<Context>) -> Result<Action> {
    let name = catalog.name_any();
    ctx.memory.lock().map(|mut m| m.remove(&name)).ok();
    ctx.metrics.catalogs.forget(
        &name,
        &[condition::READY, condition::RECONCILING, condition::STALLED],
    );
    if !catalog.spec.prune {
        tracing::info!(catalog = %name, "catalog deleted; prune is off, so its images stay");
        return Ok(Action::await_change());
    }
    let api: Api<ClusterVirtualImage> = Api::all(ctx.client.clone());
    let owned = api
        .list_metadata(&ListParams::default().labels(&format!("{}={name}", keys::CATALOG)))
        .await?;
    for image in owned {
        let image_name = image.name_any();
        match api.delete(&image_name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(catalog = %name, image = %image_name, "catalog deleted: pruning its image")
            }
            Err(kube::Error::Api(response)) if response.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(Action::await_change())
}

async fn sync(catalog: Arc<ImageCatalog>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let name = catalog.name_any();
    let interval = interval_of(&catalog);
    let writes = Writes::default();
    let (outcome, requeue) = if catalog.spec.suspend {
        (Outcome::Suspended, interval)
    } else {
        match source(&catalog, &ctx).await {
            Err(outcome) => (outcome, interval.min(Duration::from_secs(60))),
            Ok(memory) => {
                ctx.images.wait_until_ready().await.ok();
                apply_commit(&catalog, &ctx, &memory, &writes).await
            }
        }
    };
    let (previous, next, images) = next_status(&ctx, &catalog, &outcome);
    if next != previous {
        write_status(&ctx, &name, &next).await?;
        writes.add(1);
        announce(&ctx, &catalog, &previous, &next, &outcome).await;
    }
    if let Some(settings) = &catalog.spec.commit_status
        && let Some(check) = status::commit_check(
            &format!("{}/{name}", settings.context_prefix),
            &outcome,
            &images,
            settings.target_url.clone(),
        )
    {
        ctx.publishers.publish(&catalog, check).await;
    }

    let result = match &outcome {
        Outcome::Suspended => "suspended",
        Outcome::FetchFailed(_) => "fetch_failed",
        Outcome::Invalid { .. } => "invalid",
        Outcome::ApplyFailed { .. } => "apply_failed",
        Outcome::Held { .. } => "held",
        Outcome::Applied { .. } if writes.count() == 0 => "unchanged",
        Outcome::Applied { .. } => "applied",
    };
    ctx.metrics.catalogs.synced(CatalogSync {
        catalog: &name,
        result,
        reason: next
            .conditions
            .iter()
            .find(|c| c.type_ == condition::READY)
            .map(|c| c.reason.clone())
            .unwrap_or_default(),
        writes: writes.count(),
        took: started.elapsed(),
        conditions: next
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone()))
            .collect(),
    });
    tracing::debug!(catalog = %name, result, writes = writes.count(), elapsed_ms = started.elapsed().as_millis() as u64, "catalog synced");
    Ok(Action::requeue(requeue))
}

/// The catalog's files at the commit to apply: fetched when the interval is up, the spec
/// changed or a webhook asked; otherwise what the last fetch found.
async fn source(catalog: &ImageCatalog, ctx: &Context) -> Result<Memory, Outcome> {
    let name = catalog.name_any();
    let generation = catalog.meta().generation;
    let remembered = ctx.memory.lock().ok().and_then(|m| m.get(&name).cloned());
    if let Some(memory) = &remembered
        && memory.generation == generation
        && !memory.fetch_requested
        && memory.fetched_at.elapsed() < interval_of(catalog)
    {
        return Ok(memory.clone());
    }
    let credentials = super::source::credentials(&ctx.secrets, catalog).await?;
    // Same commit and same spec: the files are what the last fetch read.
    let same_spec = remembered.as_ref().filter(|m| m.generation == generation);
    let applied = super::source::applied_revision(catalog);
    let fetched = super::source::fetch(
        &ctx.settings.cache_dir.join(&name),
        catalog,
        credentials,
        same_spec.map(|m| m.commit.clone()),
        applied,
        &ctx.settings.egress,
    )
    .await?;
    let loaded = match (fetched.files, same_spec) {
        (Some(Ok(files)), _) => Arc::new(super::source::load(&catalog.spec.git.path, &files)),
        (Some(Err(problem)), _) => Arc::new(Err(vec![problem])),
        (None, Some(memory)) => memory.loaded.clone(),
        (None, None) => Arc::new(Ok(Vec::new())),
    };
    let memory = Memory {
        generation,
        fetched_at: Instant::now(),
        commit: fetched.commit,
        loaded,
        diverged_from: fetched.diverged_from,
        fetch_requested: false,
    };
    if let Ok(mut all) = ctx.memory.lock() {
        all.insert(name, memory.clone());
    }
    Ok(memory)
}

async fn write_status(ctx: &Context, name: &str, status: &ImageCatalogStatus) -> Result<()> {
    let api: Api<ImageCatalog> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({
        "apiVersion": "imagecatalog.dev/v1alpha1",
        "kind": "ImageCatalog",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(STATUS_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Events for the moments people look for: a commit refused, a commit applied.
async fn announce(
    ctx: &Context,
    catalog: &ImageCatalog,
    previous: &ImageCatalogStatus,
    next: &ImageCatalogStatus,
    outcome: &Outcome,
) {
    // A failure is announced once, when its reason first shows.
    let previous_reason = previous
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| c.reason.as_str());
    let event = match outcome {
        Outcome::Invalid { commit, problems }
            if previous.last_attempted_revision.as_deref() != Some(commit.as_str())
                || previous.problems != next.problems =>
        {
            Some(Event {
                type_: EventType::Warning,
                reason: "ValidationFailed".into(),
                note: Some(format!(
                    "Commit {} was not applied: {}",
                    status::short(commit),
                    problems
                        .iter()
                        .take(5)
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
                action: "Validate".into(),
                secondary: None,
            })
        }
        Outcome::FetchFailed(error) if previous_reason != Some(error.reason().as_str()) => {
            Some(Event {
                type_: EventType::Warning,
                reason: error.reason(),
                note: Some(error.to_string()),
                action: "Fetch".into(),
                secondary: None,
            })
        }
        Outcome::Held {
            commit,
            reason,
            message,
        } if previous.last_attempted_revision.as_deref() != Some(commit.as_str())
            || previous_reason != Some(reason.as_str()) =>
        {
            Some(Event {
                type_: EventType::Warning,
                reason: reason.clone(),
                note: Some(message.clone()),
                action: "Apply".into(),
                secondary: None,
            })
        }
        Outcome::Applied { commit, .. }
            if previous.last_applied_revision.as_deref() != Some(commit.as_str()) =>
        {
            Some(Event {
                type_: EventType::Normal,
                reason: "Applied".into(),
                note: Some(format!("Commit {} applied", status::short(commit))),
                action: "Apply".into(),
                secondary: None,
            })
        }
        _ => None,
    };
    if let Some(event) = event {
        ctx.events.send(&catalog.object_ref(&()), event).await;
    }
}
