//! The controller's side of import checkpoints: an import loads the one an earlier run left,
//! the pipeline publishes new ones on a watch channel and a task mirrors them into the
//! image's checkpoint Lease; the import deletes it when it ends, and a new leader sweeps the
//! ones whose imports ended or whose images are gone, cancelling their DVCR upload sessions.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use crate::api::{ClusterVirtualImage, ImagePhase};
use crate::dvcr::Dvcr;
use crate::import::checkpoint::{self, Checkpoint, ImportKey};
use crate::import::pipeline::{Checkpointing, ImportError, cancel_left_session};
use crate::k8s::checkpoints::CheckpointStore;

/// The checkpoints of one running import.
pub struct ImportCheckpoints {
    pub checkpointing: Checkpointing,
    store: CheckpointStore,
    dvcr: Dvcr,
    uid: String,
    mirror: tokio::task::JoinHandle<()>,
    /// Whether a checkpoint Lease may exist (found, or written by the mirror).
    written: Arc<AtomicBool>,
}

impl ImportCheckpoints {
    /// Loads the checkpoint an earlier run of this import left, and starts mirroring new ones.
    /// `can_resume`: whether the image's source can go on from one at all; when it cannot,
    /// the earlier run's session is cancelled now.
    pub async fn open(
        store: &CheckpointStore,
        dvcr: &Dvcr,
        image: &ClusterVirtualImage,
        generation: i64,
        interval: std::time::Duration,
        can_resume: bool,
    ) -> Self {
        let uid = image.uid().unwrap_or_default();
        let mut found = match store.load(&uid).await {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(image = %image.name_any(), %error, "cannot read the import's checkpoint; starting from byte 0");
                None
            }
        };
        if !can_resume && let Some(left) = found.take() {
            cancel_left_session(dvcr, &left).await;
            if let Err(error) = store.delete(&uid).await {
                tracing::warn!(image = %image.name_any(), %error, "cannot delete the import's checkpoint");
            }
        }
        let written = Arc::new(AtomicBool::new(found.is_some()));
        let (saved_sender, saved) = watch::channel(found.as_ref().map(|c| c.session.clone()));
        let (latest, updates) = watch::channel(found);
        let mirror = tokio::spawn(mirror(
            store.clone(),
            image.clone(),
            updates,
            written.clone(),
            saved_sender,
        ));
        Self {
            checkpointing: Checkpointing {
                key: ImportKey {
                    uid: uid.clone(),
                    generation,
                },
                latest,
                interval,
                saved,
            },
            store: store.clone(),
            dvcr: dvcr.clone(),
            uid,
            mirror,
            written,
        }
    }

    /// Stops mirroring; an import that ended (stored or failed) deletes its checkpoint, a
    /// cancelled one (the daemon stopping, the spec changing) leaves it to the next run.
    pub async fn end<T>(self, outcome: &Result<T, ImportError>) {
        self.mirror.abort();
        // A save in flight is done or dropped before the delete below goes out.
        let _ = self.mirror.await;
        if matches!(outcome, Err(ImportError::Cancelled)) {
            return;
        }
        // A failed import may leave a session: one an attempt kept open for the next, or an
        // earlier run's it never reached. A stored one's session was committed, so is gone.
        let latest = self.checkpointing.latest.borrow().clone();
        if outcome.is_err()
            && let Some(latest) = latest
        {
            cancel_left_session(&self.dvcr, &latest).await;
        }
        if !self.written.load(Ordering::Relaxed) {
            // An import that opened no DVCR session (a copy by mount) wrote none.
            return;
        }
        // Retried for a while (the apiserver may be away): a checkpoint left behind would
        // be swept only by the next leader.
        let mut delay = std::time::Duration::from_millis(200);
        for attempt in 1..=8 {
            match self.store.delete(&self.uid).await {
                Ok(()) => return,
                Err(error) if attempt == 8 => {
                    tracing::warn!(uid = %self.uid, %error, "cannot delete the import's checkpoint; the next leader sweeps it");
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(10));
                }
            }
        }
    }
}

/// Writes each new checkpoint into the Lease (the newest only, when writes are slower than
/// checkpoints), and deletes it when there is none to go on from; `saved` tells the session
/// of each one written.
async fn mirror(
    store: CheckpointStore,
    image: ClusterVirtualImage,
    mut updates: watch::Receiver<Option<Checkpoint>>,
    written: Arc<AtomicBool>,
    saved: watch::Sender<Option<String>>,
) {
    while updates.changed().await.is_ok() {
        let latest = updates.borrow_and_update().clone();
        let result = match &latest {
            Some(checkpoint) => {
                written.store(true, Ordering::Relaxed);
                let result = store.save(&image, checkpoint).await;
                if result.is_ok() {
                    saved.send_replace(Some(checkpoint.session.clone()));
                }
                result
            }
            None => store.delete(&image.uid().unwrap_or_default()).await,
        };
        if let Err(error) = result {
            tracing::warn!(image = %image.name_any(), %error, "saving the import's checkpoint failed; the next one tries again");
        }
    }
}

/// Cancels the DVCR session of the checkpoint of image `uid` and deletes it (the image is
/// going away).
pub async fn discard(store: &CheckpointStore, dvcr: &Dvcr, uid: &str) {
    match store.load(uid).await {
        Ok(Some(found)) => cancel_left_session(dvcr, &found).await,
        Ok(None) => {}
        Err(error) => tracing::warn!(uid, %error, "cannot read the import's checkpoint"),
    }
    if let Err(error) = store.delete(uid).await {
        tracing::warn!(uid, %error, "cannot delete the import's checkpoint");
    }
}

/// At a leader's start: cancels and deletes the checkpoints of imports that ended or whose
/// images are gone. Images outside `selector` belong to another daemon and are left alone.
pub async fn sweep(
    client: &Client,
    store: &CheckpointStore,
    dvcr: &Dvcr,
    selector: Option<&str>,
) -> Result<(), kube::Error> {
    let found = store.list().await?;
    if found.is_empty() {
        return Ok(());
    }
    let images: Api<ClusterVirtualImage> = Api::all(client.clone());
    let mut params = ListParams::default();
    if let Some(selector) = selector {
        params = params.labels(selector);
    }
    let ours: HashMap<String, Arc<ClusterVirtualImage>> = images
        .list(&params)
        .await?
        .items
        .into_iter()
        .map(|image| (image.name_any(), Arc::new(image)))
        .collect();
    for found in found {
        let image = match found.image.as_deref() {
            Some(name) => match ours.get(name) {
                Some(image) => Some(image.clone()),
                // Another daemon's image, unless it is gone.
                None => match images.get_opt(name).await? {
                    Some(_) => continue,
                    None => None,
                },
            },
            None => None,
        };
        let current = image.as_ref().map(|image| ImportKey {
            uid: image.uid().unwrap_or_default(),
            generation: image.metadata.generation.unwrap_or_default(),
        });
        let stale = match &found.checkpoint {
            Some(checkpoint) => {
                let settled = image
                    .as_ref()
                    .and_then(|image| image.status.as_ref())
                    .is_some_and(|status| {
                        matches!(status.phase, Some(ImagePhase::Ready | ImagePhase::Failed))
                            && status.observed_generation == Some(checkpoint.image.generation)
                    });
                checkpoint::is_stale(checkpoint, current.as_ref(), settled)
            }
            None => true,
        };
        if !stale {
            continue;
        }
        tracing::info!(lease = %found.lease, "sweeping the checkpoint of an import that no longer runs");
        if let Some(checkpoint) = &found.checkpoint {
            cancel_left_session(dvcr, checkpoint).await;
        }
        store.delete_lease(&found.lease).await?;
    }
    Ok(())
}
