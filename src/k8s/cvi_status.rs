//! The one writer of ClusterVirtualImage status. Two field managers share it, by server-side
//! apply: the import's (phase, progress, sizes, the `Ready` and `DataSourceReady`
//! conditions) and verification's (the `Verified` condition), so neither overwrites the
//! other's fields.
//!
//! Every write is for one image, named by its UID: a write meant for an image that was deleted
//! and created again under the same name must fail rather than land on the new one. The status
//! subresource keeps the stored metadata whatever a patch says (a `metadata.uid` in it is
//! ignored), so the check is the resourceVersion: each write carries the one its target last
//! saw, and when someone else wrote in between (409), the image is read again and the write
//! goes on only if it still has the same UID.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};

use crate::api::status::condition::{DATASOURCE_READY, READY};
use crate::api::{ClusterVirtualImage, ImageStatus};

/// The field manager of everything the import writes.
pub const IMPORT_MANAGER: &str = "image-catalog-import";
/// The field manager of the `Verified` condition.
pub const VERIFY_MANAGER: &str = "image-catalog-verify";

/// How often a write reads the image again after a conflict before it gives up (each time
/// someone else wrote in between).
const CONFLICT_RETRIES: usize = 4;

/// The image a write is for: its name, its UID, and the resourceVersion it was last seen at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl Target {
    pub fn of(cvi: &ClusterVirtualImage) -> Self {
        Self {
            name: cvi.name_any(),
            uid: cvi.uid(),
            resource_version: cvi.resource_version(),
        }
    }
}

/// Why a status write did not land.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The image is gone, or another image has its name now: nothing to write to.
    #[error("the image {0} was deleted (or deleted and created again): its status is not written")]
    Gone(String),
    /// Someone else wrote the image between each of the tries.
    #[error("the status of {0} changed under every write; the next write tries again")]
    Contended(String),
    #[error("{0}")]
    Kube(#[from] kube::Error),
}

/// Writes the status of ClusterVirtualImages.
#[derive(Clone)]
pub struct CviStatusStore {
    client: Client,
}

impl CviStatusStore {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The import's part of `status`: everything but conditions other than `Ready` and
    /// `DataSourceReady`.
    pub async fn write_import(
        &self,
        target: &mut Target,
        status: &ImageStatus,
    ) -> Result<(), WriteError> {
        self.apply(target, IMPORT_MANAGER, &import_part(status))
            .await
    }

    /// The `Verified` condition, and nothing else.
    pub async fn write_verified(
        &self,
        target: &mut Target,
        verified: &Condition,
    ) -> Result<(), WriteError> {
        let status = serde_json::json!({"conditions": [verified]});
        self.apply(target, VERIFY_MANAGER, &status).await
    }

    async fn apply(
        &self,
        target: &mut Target,
        manager: &str,
        status: &impl serde::Serialize,
    ) -> Result<(), WriteError> {
        let api: Api<ClusterVirtualImage> = Api::all(self.client.clone());
        let params = PatchParams::apply(manager).force();
        for _ in 0..=CONFLICT_RETRIES {
            let patch = apply_patch(target, status);
            match api
                .patch_status(&target.name, &params, &Patch::Apply(&patch))
                .await
            {
                Ok(written) => {
                    target.resource_version = written.resource_version();
                    return Ok(());
                }
                Err(kube::Error::Api(response)) if response.code == 404 => {
                    return Err(WriteError::Gone(target.name.clone()));
                }
                Err(kube::Error::Api(response)) if response.code == 409 => {
                    let current = api.get_opt(&target.name).await?;
                    match current {
                        Some(current) if same_image(target, &current) => {
                            target.resource_version = current.resource_version();
                        }
                        _ => return Err(WriteError::Gone(target.name.clone())),
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(WriteError::Contended(target.name.clone()))
    }
}

/// Whether `current` is the image `target` was for.
fn same_image(target: &Target, current: &ClusterVirtualImage) -> bool {
    target.uid.is_none() || current.uid() == target.uid
}

/// What the import owns of a status. Pure.
pub fn import_part(status: &ImageStatus) -> ImageStatus {
    let mut status = status.clone();
    status
        .conditions
        .retain(|c| c.type_ == DATASOURCE_READY || c.type_ == READY);
    status
}

/// The apply configuration of a status write, with the resourceVersion it was last seen at
/// as its precondition. Pure.
fn apply_patch(target: &Target, status: &impl serde::Serialize) -> serde_json::Value {
    let mut metadata = serde_json::json!({"name": target.name});
    if let Some(version) = &target.resource_version {
        metadata["resourceVersion"] = serde_json::Value::String(version.clone());
    }
    serde_json::json!({
        "apiVersion": ClusterVirtualImage::api_version(&()),
        "kind": ClusterVirtualImage::kind(&()),
        "metadata": metadata,
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(type_: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: "True".into(),
            reason: "R".into(),
            message: "m".into(),
            observed_generation: Some(1),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        }
    }

    #[test]
    fn the_import_never_writes_the_verified_condition() {
        let status = ImageStatus {
            conditions: vec![
                condition(READY),
                condition("Verified"),
                condition(DATASOURCE_READY),
            ],
            ..Default::default()
        };
        let types: Vec<_> = import_part(&status)
            .conditions
            .into_iter()
            .map(|c| c.type_)
            .collect();
        assert_eq!(types, [READY, DATASOURCE_READY]);
    }

    #[test]
    fn every_write_carries_the_version_it_was_last_seen_at() {
        let target = Target {
            name: "a".into(),
            uid: Some("u-1".into()),
            resource_version: Some("42".into()),
        };
        let patch = apply_patch(&target, &serde_json::json!({}));
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(patch["metadata"]["name"], "a");
        assert_eq!(patch["kind"], "ClusterVirtualImage");
    }
}
