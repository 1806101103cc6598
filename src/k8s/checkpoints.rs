//! Import checkpoints where every replica reads them: one Lease per running import in the
//! daemon's namespace, `image-catalog-import-<image UID>`. A Lease, because it is the API's
//! object for small records rewritten every second or so, and writing it does not wake every
//! watcher of ClusterVirtualImages; its holder is the replica importing, its renew time the
//! last checkpoint. The image owns it (garbage-collected with the image); the import deletes
//! it when it ends, and a new leader sweeps those left by imports that ended meanwhile.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use crate::api::ClusterVirtualImage;
use crate::import::checkpoint::Checkpoint;

/// On every checkpoint Lease, to find them.
pub const LABEL: &str = "imagecatalog.dev/import-checkpoint";
/// The checkpoint, as JSON.
const ANNOTATION: &str = "imagecatalog.dev/checkpoint";
/// The image's name (the UID is in the Lease name).
const IMAGE_ANNOTATION: &str = "imagecatalog.dev/image";
const MANAGER: &str = "image-catalog-import-checkpoint";
const NAME_PREFIX: &str = "image-catalog-import-";

/// A checkpoint Lease found by [`CheckpointStore::list`].
#[derive(Debug, Clone)]
pub struct FoundCheckpoint {
    pub lease: String,
    pub image: Option<String>,
    /// None when the annotation is missing or does not parse.
    pub checkpoint: Option<Checkpoint>,
}

#[derive(Clone)]
pub struct CheckpointStore {
    api: Api<Lease>,
    /// The replica that writes: the Lease's holder.
    holder: String,
}

impl CheckpointStore {
    pub fn new(client: Client, namespace: &str, holder: String) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            holder,
        }
    }

    fn name(uid: &str) -> String {
        format!("{NAME_PREFIX}{uid}")
    }

    /// The checkpoint of the import of the image `uid`, if one was saved (and reads back).
    pub async fn load(&self, uid: &str) -> Result<Option<Checkpoint>, kube::Error> {
        let Some(lease) = self.api.get_opt(&Self::name(uid)).await? else {
            return Ok(None);
        };
        Ok(parse(&lease))
    }

    /// Saves `checkpoint` of the import of `image`, replacing the one before.
    pub async fn save(
        &self,
        image: &ClusterVirtualImage,
        checkpoint: &Checkpoint,
    ) -> Result<(), kube::Error> {
        let uid = image.uid().unwrap_or_default();
        let text = serde_json::to_string(checkpoint).unwrap_or_default();
        let renewed = chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": Self::name(&uid),
                "labels": {
                    LABEL: "true",
                    "app.kubernetes.io/managed-by": "image-catalog",
                },
                "annotations": {
                    ANNOTATION: text,
                    IMAGE_ANNOTATION: image.name_any(),
                },
                "ownerReferences": [{
                    "apiVersion": "virtualization.deckhouse.io/v1alpha2",
                    "kind": "ClusterVirtualImage",
                    "name": image.name_any(),
                    "uid": uid,
                }],
            },
            "spec": {
                "holderIdentity": self.holder,
                "renewTime": renewed,
            },
        });
        let params = PatchParams::apply(MANAGER).force();
        self.api
            .patch(&Self::name(&uid), &params, &Patch::Apply(&lease))
            .await?;
        Ok(())
    }

    /// Deletes the checkpoint of the image `uid` (none is fine).
    pub async fn delete(&self, uid: &str) -> Result<(), kube::Error> {
        self.delete_lease(&Self::name(uid)).await
    }

    pub async fn delete_lease(&self, lease: &str) -> Result<(), kube::Error> {
        match self.api.delete(lease, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Every checkpoint Lease of the namespace.
    pub async fn list(&self) -> Result<Vec<FoundCheckpoint>, kube::Error> {
        let leases = self
            .api
            .list(&ListParams::default().labels(&format!("{LABEL}=true")))
            .await?;
        Ok(leases
            .items
            .into_iter()
            .filter(|lease| lease.name_any().starts_with(NAME_PREFIX))
            .map(|lease| FoundCheckpoint {
                lease: lease.name_any(),
                image: lease.annotations().get(IMAGE_ANNOTATION).cloned(),
                checkpoint: parse(&lease),
            })
            .collect())
    }
}

fn parse(lease: &Lease) -> Option<Checkpoint> {
    let text = lease.annotations().get(ANNOTATION)?;
    match serde_json::from_str(text) {
        Ok(checkpoint) => Some(checkpoint),
        Err(error) => {
            tracing::warn!(lease = %lease.name_any(), %error, "an import checkpoint does not parse; it is ignored");
            None
        }
    }
}
