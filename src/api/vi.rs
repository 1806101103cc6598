//! VirtualImage: the platform's namespaced VM image. This project reads it as a source of
//! ClusterVirtualImages; its images live in DVCR under `vi/<namespace>/<name>`.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::datasource::NamespacedDataSource;
use super::status::ImageStatus;

/// Where a VirtualImage keeps its bytes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum VirtualImageStorage {
    /// In DVCR, the in-cluster registry.
    #[default]
    ContainerRegistry,
    /// In a PersistentVolumeClaim of the image's namespace.
    PersistentVolumeClaim,
}

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "virtualization.deckhouse.io",
    version = "v1alpha2",
    kind = "VirtualImage",
    plural = "virtualimages",
    singular = "virtualimage",
    namespaced,
    shortname = "vi",
    shortname = "vis",
    category = "virtualization",
    status = "ImageStatus",
    cel,
    doc = "A virtual disk image available in one namespace, stored in DVCR under vi/<namespace>/<name>.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "CDROM", type_ = "boolean", json_path = ".status.cdrom"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(name = "StoredSize", type_ = "string", json_path = ".status.size.stored", priority = "1"),
    printcolumn(name = "UnpackedSize", type_ = "string", json_path = ".status.size.unpacked", priority = "1"),
    printcolumn(name = "Registry URL", type_ = "string", json_path = ".status.target.registryURL", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new("self.metadata.name.size() <= 128").message("The name must be no longer than 128 characters."),
)]
#[serde(rename_all = "camelCase")]
/// The desired image: where it comes from and where it is stored.
pub struct VirtualImageSpec {
    /// Where the image is stored; only `ContainerRegistry` images can be sources of
    /// ClusterVirtualImages.
    #[serde(default)]
    pub storage: VirtualImageStorage,
    /// Origin of the image.
    pub data_source: NamespacedDataSource,
}
