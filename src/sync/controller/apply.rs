//! A commit applied: the plan computed against what the cluster holds (pure), then written
//! image by image, or shown as a dry run.

use super::*;

#[derive(Default)]
pub(super) struct Writes(std::sync::atomic::AtomicU64);

impl Writes {
    pub(super) fn add(&self, count: u64) {
        self.0
            .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
    }
    pub(super) fn count(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Plans the commit against the cluster and writes it: everything or nothing for invalid
/// commits, only what changed otherwise.
pub(super) async fn apply_commit(
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
pub(super) fn images_of(ctx: &Context, catalog: &str) -> Vec<ImageState> {
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
