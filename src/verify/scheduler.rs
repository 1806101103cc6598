//! The daemon's verification loop: watches imported images, runs each one's verification
//! when its (jittered) schedule comes, at most `concurrency` at a time, and checks more often,
//! by a manifest HEAD only, that every Ready image is still in DVCR: a lost one goes to
//! `ImageLost`, and back to `Ready` when its manifest returns.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::k8s::events::{EventPublisher, EventType};
use chrono::Utc;
use futures::StreamExt;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{Semaphore, mpsc};

use super::check::{VerifiedImage, verify_check};
use super::schedule::{Cadence, Entry, schedule_of};
use super::{Verdict, record, verify};
use crate::api::ClusterVirtualImage;
use crate::api::catalog::ImageCatalog;
use crate::api::status::ImagePhase;
use crate::dvcr::{Dvcr, DvcrError, layout};
use crate::import::status::{PresenceChange, presence_change, with_presence_change};
use crate::k8s::cvi_status::{CviStatusStore, Target};
use crate::metrics::Metrics;
use crate::report::publish::Publishers;

#[derive(Clone, Debug)]
pub struct VerifySettings {
    /// The schedule of images without the annotation.
    pub default_schedule: String,
    /// The jitter window of verifications and the interval of presence checks.
    pub cadence: Cadence,
    /// Verifications reading from DVCR at once.
    pub concurrency: usize,
    /// Only images matching this label selector.
    pub selector: Option<String>,
    /// Where upstream checks may connect (the import's own egress policy).
    pub egress: Arc<crate::egress::EgressPolicy>,
}

enum Done {
    /// A verification finished.
    Verified {
        uid: String,
        catalog: Option<String>,
    },
    /// A presence check changed an image's phase.
    Changed { catalog: Option<String> },
}

/// The catalog an image came from.
fn catalog_of(cvi: &ClusterVirtualImage) -> Option<String> {
    cvi.labels()
        .get(crate::api::catalog::keys::CATALOG)
        .cloned()
}

pub async fn run(
    client: Client,
    dvcr: Dvcr,
    settings: VerifySettings,
    metrics: Arc<Metrics>,
    publishers: Option<Publishers>,
) -> anyhow::Result<()> {
    crate::schedule::parse(&settings.default_schedule)
        .map_err(|error| anyhow::anyhow!("--verify-schedule: {error}"))?;
    let api: Api<ClusterVirtualImage> = Api::all(client.clone());
    let mut config = watcher::Config::default();
    if let Some(selector) = &settings.selector {
        config = config.labels(selector);
    }
    let (store, writer) = reflector::store();
    let watch = reflector(writer, watcher(api, config))
        .default_backoff()
        .touched_objects()
        .for_each(|_| futures::future::ready(()));
    tokio::spawn(watch);
    store.wait_until_ready().await?;

    let events = super::events(&client);
    let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut entries: HashMap<String, Entry> = HashMap::new();
    let cadence = settings.cadence;
    // Catalogs whose verification check is to be sent again.
    let mut dirty: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(done) = done_rx.recv() => {
                match done {
                    Done::Verified { uid, catalog } => {
                        if let Some(entry) = entries.get_mut(&uid) {
                            entry.verified(Utc::now(), cadence);
                        }
                        dirty.extend(catalog);
                    }
                    Done::Changed { catalog } => dirty.extend(catalog),
                }
                continue;
            }
        }
        let now = Utc::now();
        let images = store.state();
        // The conditions written since the last tick are in the store by now.
        if let Some(publishers) = &publishers {
            for catalog in std::mem::take(&mut dirty) {
                send_verify_check(&client, publishers, &catalog, &images).await;
            }
        }
        let present: HashSet<String> = images.iter().filter_map(|cvi| cvi.uid()).collect();
        entries.retain(|uid, entry| {
            let kept = present.contains(uid);
            if !kept {
                metrics.verifications.forget(&entry.image);
            }
            kept
        });
        for cvi in images {
            let Some(uid) = cvi.uid() else { continue };
            let phase = cvi.status.as_ref().and_then(|status| status.phase);
            if !matches!(phase, Some(ImagePhase::Ready | ImagePhase::ImageLost))
                || cvi.meta().deletion_timestamp.is_some()
            {
                continue;
            }
            let schedule = schedule_of(cvi.annotations(), &settings.default_schedule);
            let entry = entries
                .entry(uid.clone())
                .or_insert_with(|| Entry::new(&cvi.name_any(), &uid, now, cadence));
            let tick = entry.tick(schedule, phase == Some(ImagePhase::Ready), now, cadence);
            if let Some(error) = tick.invalid_schedule {
                let verdict = Verdict::VerificationFailed(format!(
                    "the verification schedule is invalid: {error}; fix the imagecatalog.dev/verify-schedule annotation (or the catalog entry it comes from)"
                ));
                if let Err(error) = record(&client, &cvi, &verdict).await {
                    tracing::warn!(image = %cvi.name_any(), %error, "recording the schedule problem failed");
                }
            }
            if tick.check_presence {
                let (client, dvcr, events, cvi, done) = (
                    client.clone(),
                    dvcr.clone(),
                    events.clone(),
                    cvi.clone(),
                    done_tx.clone(),
                );
                tokio::spawn(async move {
                    if check_presence(&client, &dvcr, &events, &cvi).await {
                        let _ = done.send(Done::Changed {
                            catalog: catalog_of(&cvi),
                        });
                    }
                });
            }
            if tick.verify {
                let egress = settings.egress.clone();
                let (client, dvcr, events, metrics, slots, done) = (
                    client.clone(),
                    dvcr.clone(),
                    events.clone(),
                    metrics.clone(),
                    slots.clone(),
                    done_tx.clone(),
                );
                tokio::spawn(async move {
                    if let Ok(_slot) = slots.acquire_owned().await {
                        metrics.verifications.in_flight.inc();
                        let run = run_one(&client, &dvcr, &events, &metrics, &cvi, &egress);
                        // A bug in one check must not leave the image marked as running
                        // (never verified again).
                        if let Err(panic) = crate::panics::caught(run).await {
                            tracing::error!(image = %cvi.name_any(), %panic, "verification hit a bug; the next run is on schedule");
                        }
                        metrics.verifications.in_flight.dec();
                    }
                    let _ = done.send(Done::Verified {
                        uid,
                        catalog: catalog_of(&cvi),
                    });
                });
            }
        }
    }
}

/// One scheduled verification: verify, record, count, and raise an Event on failure.
#[tracing::instrument(name = "verify", skip_all, fields(image = %cvi.name_any()))]
async fn run_one(
    client: &Client,
    dvcr: &Dvcr,
    events: &EventPublisher,
    metrics: &Metrics,
    cvi: &ClusterVirtualImage,
    egress: &Arc<crate::egress::EgressPolicy>,
) {
    let name = cvi.name_any();
    let verdict = verify(dvcr, cvi, super::wants_upstream_check(cvi), egress).await;
    metrics.verifications.verified(
        &name,
        verdict.reason(),
        verdict.is_verified(),
        Utc::now().timestamp(),
    );
    if verdict.is_verified() {
        tracing::info!(image = %name, "{}", verdict.message());
    } else {
        tracing::warn!(image = %name, reason = verdict.reason(), "{}", verdict.message());
        publish(
            events,
            cvi,
            EventType::Warning,
            verdict.reason(),
            verdict.message(),
        )
        .await;
    }
    if let Err(error) = record(client, cvi, &verdict).await {
        tracing::warn!(image = %name, %error, "recording the verification failed");
    }
}

/// The manifest HEAD of a Ready or ImageLost image, and the phase change it calls for.
/// Returns whether it changed the phase.
#[tracing::instrument(name = "presence", skip_all, fields(image = %cvi.name_any()))]
async fn check_presence(
    client: &Client,
    dvcr: &Dvcr,
    events: &EventPublisher,
    cvi: &ClusterVirtualImage,
) -> bool {
    let name = cvi.name_any();
    let uid = cvi.uid().unwrap_or_default();
    let repository = layout::cvi_repository(&name);
    let present = match dvcr.manifest_digest(&repository, &uid).await {
        Ok(digest) => digest.is_some(),
        Err(DvcrError::NotFound { .. }) => false,
        Err(error) => {
            // Unreachable DVCR says nothing about the image: no phase change.
            tracing::debug!(image = %name, %error, "presence check failed");
            return false;
        }
    };
    let phase = cvi.status.as_ref().and_then(|status| status.phase);
    let url = dvcr.image_url(&repository, &uid);
    let Some(change) = presence_change(phase, present, &url, super::REIMPORT) else {
        return false;
    };
    let api: Api<ClusterVirtualImage> = Api::all(client.clone());
    let Ok(Some(fresh)) = api.get_opt(&name).await else {
        return false;
    };
    // The watch may lag: an image being deleted (its DVCR copy first) is not lost, and a
    // phase someone else changed meanwhile is theirs.
    let fresh_phase = fresh.status.as_ref().and_then(|status| status.phase);
    if fresh.metadata.deletion_timestamp.is_some()
        || fresh.uid() != cvi.uid()
        || fresh_phase != phase
    {
        return false;
    }
    let status = with_presence_change(
        &fresh.status.clone().unwrap_or_default(),
        &change,
        fresh.metadata.generation.unwrap_or_default(),
        &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    let store = CviStatusStore::new(client.clone());
    if let Err(error) = store.write_import(&mut Target::of(&fresh), &status).await {
        tracing::warn!(image = %name, %error, "writing the {} phase failed; the next presence check tries again", change.phase);
        return false;
    }
    let PresenceChange { ready, message, .. } = change;
    if ready {
        tracing::info!(image = %name, "{message}");
        publish(events, cvi, EventType::Normal, "ImageFound", &message).await;
    } else {
        tracing::warn!(image = %name, "{message}");
        publish(events, cvi, EventType::Warning, "ImageLost", &message).await;
        let verdict = Verdict::ImageLost(message);
        if let Err(error) = record(client, &fresh, &verdict).await {
            tracing::warn!(image = %name, %error, "recording the loss failed");
        }
    }
    true
}

pub(crate) async fn publish(
    events: &EventPublisher,
    cvi: &ClusterVirtualImage,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    events
        .publish(&cvi.object_ref(&()), type_, reason, "Verify", note)
        .await;
}

/// Sends `<prefix>/<catalog>/verify` on the catalog's applied commit, from the Verified
/// conditions of its imported images.
async fn send_verify_check(
    client: &Client,
    publishers: &Publishers,
    catalog: &str,
    images: &[Arc<ClusterVirtualImage>],
) {
    let api: Api<ImageCatalog> = Api::all(client.clone());
    let Ok(Some(found)) = api.get_opt(catalog).await else {
        return;
    };
    let Some(settings) = &found.spec.commit_status else {
        return;
    };
    let Some(commit) = found
        .status
        .as_ref()
        .and_then(|status| status.last_applied_revision.clone())
    else {
        return;
    };
    let rows: Vec<VerifiedImage> = images
        .iter()
        .filter(|cvi| catalog_of(cvi).as_deref() == Some(catalog))
        .filter(|cvi| {
            matches!(
                cvi.status.as_ref().and_then(|status| status.phase),
                Some(ImagePhase::Ready | ImagePhase::ImageLost)
            )
        })
        .map(|cvi| VerifiedImage {
            name: cvi.name_any(),
            last: cvi
                .status
                .as_ref()
                .and_then(|status| {
                    status
                        .conditions
                        .iter()
                        .find(|c| c.type_ == super::VERIFIED)
                })
                .map(|c| (c.status == "True", c.reason.clone())),
        })
        .collect();
    let context = format!("{}/{catalog}/verify", settings.context_prefix);
    if let Some(check) = verify_check(&context, &commit, &rows, settings.target_url.clone()) {
        publishers.send(&found, check).await;
    }
}
