//! The ImageCatalog controller: a thin shell around `catalog::load`, `plan` and
//! `next_status`. A reconcile reads (Git, Secrets, the CVI cache), decides with pure code,
//! then writes: dry run, apply, prune, status, commit check.

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

use super::plan::{self, Change, FIELD_MANAGER, Plan, PlannedImage};
use super::status::{self, ImageState, Outcome};
use crate::api::ClusterVirtualImage;
use crate::api::catalog::{ImageCatalog, ImageCatalogStatus, keys};
use crate::api::status::condition::READY;
use crate::catalog::{CatalogImage, Problem};
use crate::k8s::secrets::SecretReader;
use crate::metrics::{CatalogLabel, Metrics, SyncLabel};
use crate::report::publish::{PublishSettings, Publishers};

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

async fn reconcile(catalog: Arc<ImageCatalog>, ctx: Arc<Context>) -> Result<Action> {
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
    let outcome = Outcome::FetchFailed {
        reason: "InternalError".into(),
        message: format!(
            "The daemon hit a bug syncing this catalog ({panic}); nothing more was applied, and it tries again in a minute. Report it with the daemon's log."
        ),
    };
    let previous = catalog.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let images = images_of(ctx, &catalog.name_any());
    let next = status::next_status(
        &previous,
        catalog.meta().generation,
        &outcome,
        &images,
        &now,
    );
    if let Err(error) = write_status(ctx, &catalog.name_any(), &next).await {
        tracing::warn!(catalog = %catalog.name_any(), %error, "could not report the panic on the catalog");
    }
}

fn error_policy(catalog: Arc<ImageCatalog>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.count_reconcile_error("catalog");
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

/// Polls at most this often, and at least this often (a longer interval is read as this:
/// the CRD's pattern admits `99999999999999999999h`, which no timer can hold).
const MIN_INTERVAL: Duration = Duration::from_secs(10);
const MAX_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);

fn interval_of(catalog: &ImageCatalog) -> Duration {
    poll_interval(&catalog.spec.interval)
}

fn poll_interval(text: &str) -> Duration {
    parse_duration(text)
        .unwrap_or(Duration::from_secs(300))
        .clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// `1h30m`, `90s`, `500ms`: the Kubernetes duration strings the CRD's pattern admits.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut number = String::new();
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let value: f64 = number.parse().ok()?;
        number.clear();
        let unit = match c {
            'h' => 3600.0,
            's' => 1.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0.001
            }
            'm' => 60.0,
            _ => return None,
        };
        // Saturates instead of panicking on values no Duration holds.
        let part = Duration::try_from_secs_f64(value * unit).unwrap_or(Duration::MAX);
        total = total.saturating_add(part);
        any = true;
    }
    (any && number.is_empty()).then_some(total)
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
    let images = images_of(&ctx, &name);
    let previous = catalog.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let next = status::next_status(
        &previous,
        catalog.meta().generation,
        &outcome,
        &images,
        &now,
    );
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
        Outcome::FetchFailed { .. } => "fetch_failed",
        Outcome::Invalid { .. } => "invalid",
        Outcome::ApplyFailed { .. } => "apply_failed",
        Outcome::Held { .. } => "held",
        Outcome::Applied { .. } if writes.count() == 0 => "unchanged",
        Outcome::Applied { .. } => "applied",
    };
    let label = CatalogLabel {
        catalog: name.clone(),
    };
    ctx.metrics
        .catalog_syncs
        .get_or_create(&SyncLabel {
            catalog: name.clone(),
            result: result.into(),
        })
        .inc();
    ctx.metrics
        .catalog_writes
        .get_or_create(&label)
        .inc_by(writes.count());
    ctx.metrics
        .catalog_sync_seconds
        .get_or_create(&label)
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(catalog = %name, result, writes = writes.count(), elapsed_ms = started.elapsed().as_millis() as u64, "catalog synced");
    Ok(Action::requeue(requeue))
}

#[derive(Default)]
struct Writes(std::sync::atomic::AtomicU64);

impl Writes {
    fn add(&self, count: u64) {
        self.0
            .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
    }
    fn count(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
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

/// Plans the commit against the cluster and writes it: everything or nothing for invalid
/// commits, only what changed otherwise.
async fn apply_commit(
    catalog: &ImageCatalog,
    ctx: &Context,
    memory: &Memory,
    writes: &Writes,
) -> (Outcome, Duration) {
    let name = catalog.name_any();
    let interval = interval_of(catalog);
    let commit = memory.commit.clone();
    let images = match memory.loaded.as_ref() {
        Err(problems) => {
            let outcome = Outcome::Invalid {
                commit,
                problems: problems.clone(),
            };
            return (outcome, interval);
        }
        Ok(images) => images,
    };
    let plan = plan_against_cluster(ctx, &name, catalog, images);
    if !plan.problems.is_empty() {
        return (
            Outcome::Invalid {
                commit,
                problems: plan.problems,
            },
            interval,
        );
    }
    if !plan.writes() {
        return (
            Outcome::Applied {
                commit,
                waiting_for_deletion: 0,
            },
            interval,
        );
    }
    let confirmed = plan::confirms(
        catalog
            .annotations()
            .get(keys::CONFIRM_COMMIT)
            .map(String::as_str),
        &commit,
    );
    if let Some(hold) = plan::hold(
        &plan,
        memory.diverged_from.as_deref(),
        catalog.spec.max_prune_percent,
        confirmed,
    ) {
        let message = hold.message(&name, &commit);
        return (
            Outcome::Held {
                commit,
                reason: hold.reason().into(),
                message,
            },
            interval,
        );
    }
    let refused = dry_run(&ctx.client, ctx.settings.api_concurrency, &plan, &commit).await;
    if !refused.is_empty() {
        return (
            Outcome::Invalid {
                commit,
                problems: refused,
            },
            interval,
        );
    }
    match write_plan(ctx, &name, &plan, &commit, writes).await {
        Ok(()) => {
            let recreating = plan.count(Change::Recreate);
            let requeue = if recreating > 0 {
                Duration::from_secs(2)
            } else {
                interval
            };
            (
                Outcome::Applied {
                    commit,
                    waiting_for_deletion: recreating,
                },
                requeue,
            )
        }
        Err(message) => (
            Outcome::ApplyFailed { commit, message },
            Duration::from_secs(10),
        ),
    }
}

/// The plan of `images` against the controller's cache of every CVI.
fn plan_against_cluster(
    ctx: &Context,
    name: &str,
    catalog: &ImageCatalog,
    images: &[CatalogImage],
) -> Plan {
    let desired = plan::render(name, &catalog.spec, images);
    let existing = ctx.images.state();
    let existing: Vec<&ClusterVirtualImage> = existing.iter().map(AsRef::as_ref).collect();
    plan::plan(
        name,
        desired,
        &existing,
        catalog.spec.prune,
        catalog.spec.ready_image_policy,
    )
}

/// Offers every create and update to the API server as a dry run: its CRD schema, CEL
/// rules and admission policies get their say before anything is written.
pub async fn dry_run(
    client: &Client,
    concurrency: usize,
    plan: &Plan,
    commit: &str,
) -> Vec<Problem> {
    let api: Api<ClusterVirtualImage> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
    // Owned items: a stream of borrowed ones trips the compiler's Send check in spawned
    // reconciles.
    let candidates: Vec<plan::DesiredImage> = plan
        .images
        .iter()
        .filter(|image| matches!(image.change, Change::Create | Change::Update))
        .map(|image| image.desired.clone())
        .collect();
    let mut problems: Vec<Problem> = futures::stream::iter(candidates)
        .map(|desired| {
            let api = api.clone();
            let params = params.clone();
            let body = desired.manifest(commit);
            async move {
                match api
                    .patch(&desired.name, &params, &Patch::Apply(&body))
                    .await
                {
                    Ok(_) => None,
                    Err(kube::Error::Api(response))
                        if response.code < 500 && response.code != 429 =>
                    {
                        Some(Problem {
                            location: desired.location.clone(),
                            message: format!(
                                "the API server refuses image {}: {}",
                                desired.name, response.message
                            ),
                        })
                    }
                    // Not a verdict on the commit: the real apply will retry.
                    Err(error) => {
                        tracing::warn!(image = %desired.name, %error, "dry run failed");
                        None
                    }
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|problem| async move { problem })
        .collect()
        .await;
    problems.sort();
    problems
}

async fn write_plan(
    ctx: &Context,
    catalog: &str,
    plan: &Plan,
    commit: &str,
    writes: &Writes,
) -> std::result::Result<(), String> {
    let api: Api<ClusterVirtualImage> = Api::all(ctx.client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied: Vec<String> = futures::stream::iter(plan.images.clone())
        .map(|image| {
            let api = api.clone();
            let params = params.clone();
            let (commit, catalog) = (commit.to_string(), catalog.to_string());
            async move { write_image(&api, &params, &image, &commit, &catalog).await }
        })
        .buffer_unordered(ctx.settings.api_concurrency.max(1))
        .try_collect::<Vec<Option<String>>>()
        .await?
        .into_iter()
        .flatten()
        .collect();
    writes.add(applied.len() as u64);
    for gone in &plan.prune {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(gone.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&gone.name, &params).await {
            Ok(_) => {
                writes.add(1);
                tracing::info!(catalog, image = %gone.name, "pruned: its entry is gone from Git");
            }
            Err(kube::Error::Api(response)) if matches!(response.code, 404 | 409) => {}
            Err(error) => return Err(format!("pruning image {}: {error}", gone.name)),
        }
    }
    // Wait (briefly) until the cache shows what was written, so the status counts it and
    // the next reconcile does not write it again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let seen = applied
            .iter()
            .all(|name| ctx.images.get(&ObjectRef::new(name)).is_some());
        if seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Writes one image; returns its name when it was created or updated.
async fn write_image(
    api: &Api<ClusterVirtualImage>,
    params: &PatchParams,
    image: &PlannedImage,
    commit: &str,
    catalog: &str,
) -> std::result::Result<Option<String>, String> {
    let name = &image.desired.name;
    match image.change {
        Change::Unchanged => Ok(None),
        Change::Create | Change::Update => {
            api.patch(name, params, &Patch::Apply(&image.desired.manifest(commit)))
                .await
                .map_err(|error| format!("applying image {name}: {error}"))?;
            tracing::info!(catalog, image = %name, change = image.change.as_str(), commit = %status::short(commit), "applied");
            Ok(Some(name.clone()))
        }
        Change::Recreate => {
            let Some(uid) = &image.uid else {
                return Ok(None);
            };
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(name, &params).await {
                Ok(_) => {
                    tracing::info!(catalog, image = %name, "source of a Ready image changed: deleting it to import it again");
                    Ok(None)
                }
                Err(kube::Error::Api(response)) if matches!(response.code, 404 | 409) => Ok(None),
                Err(error) => Err(format!("deleting image {name} to recreate it: {error}")),
            }
        }
    }
}

/// The catalog's images as the cache shows them.
fn images_of(ctx: &Context, catalog: &str) -> Vec<ImageState> {
    let mut images: Vec<ImageState> = ctx
        .images
        .state()
        .iter()
        .filter(|cvi| cvi.labels().get(keys::CATALOG).map(String::as_str) == Some(catalog))
        .map(|cvi| {
            let status = cvi.status.clone().unwrap_or_default();
            let ready = status.conditions.iter().find(|c| c.type_ == READY);
            let phase = if cvi.metadata.deletion_timestamp.is_some() {
                Some(crate::api::ImagePhase::Terminating)
            } else {
                status.phase
            };
            ImageState {
                name: cvi.name_any(),
                uid: cvi.uid().unwrap_or_default(),
                phase,
                progress: status.progress.clone(),
                message: ready
                    .filter(|c| c.status != "True")
                    .map(|c| c.message.clone()),
            }
        })
        .collect();
    images.sort_by(|a, b| a.name.cmp(&b.name));
    images
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
        Outcome::FetchFailed { reason, message } if previous_reason != Some(reason.as_str()) => {
            Some(Event {
                type_: EventType::Warning,
                reason: reason.clone(),
                note: Some(message.clone()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_kubernetes_writes_them() {
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5d"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(
            parse_duration("99999999999999999999h"),
            Some(Duration::MAX),
            "saturates rather than panicking"
        );
        assert_eq!(parse_duration("1e400s"), None, "not the CRD's pattern");
    }

    #[test]
    fn poll_intervals_stay_within_what_a_timer_holds() {
        assert_eq!(poll_interval("99999999999999999999h"), MAX_INTERVAL);
        assert_eq!(poll_interval("1ms"), MIN_INTERVAL);
        assert_eq!(poll_interval("90s"), Duration::from_secs(90));
    }
}
