//! The status shared by ClusterVirtualImage and VirtualImage: the fields clients of the
//! platform already read, and the condition types this project sets.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where an image is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ImagePhase {
    /// Waiting for the resources the image depends on.
    Pending,
    /// Waiting for the user to upload the image (`type: Upload` only).
    WaitForUserUpload,
    /// The image is being fetched, checked and stored in DVCR.
    Provisioning,
    /// The image is stored in DVCR and ready to use.
    Ready,
    /// Creating the image failed; the `Ready` condition says why.
    Failed,
    /// The image is being deleted.
    Terminating,
    /// The image was Ready but its manifest vanished from DVCR.
    ImageLost,
}

impl ImagePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::WaitForUserUpload => "WaitForUserUpload",
            Self::Provisioning => "Provisioning",
            Self::Ready => "Ready",
            Self::Failed => "Failed",
            Self::Terminating => "Terminating",
            Self::ImageLost => "ImageLost",
        }
    }
}

impl ImagePhase {
    /// Every phase, in the order of an image's life.
    pub const ALL: [Self; 7] = [
        Self::Pending,
        Self::WaitForUserUpload,
        Self::Provisioning,
        Self::Ready,
        Self::Failed,
        Self::Terminating,
        Self::ImageLost,
    ];
}

impl std::fmt::Display for ImagePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Observed state of an image.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    /// Current phase: Pending, WaitForUserUpload, Provisioning, Ready, Failed, Terminating or
    /// ImageLost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ImagePhase>,
    /// Progress of copying the image from its source to DVCR, `0%` to `100%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Download speed from the source; shown while Provisioning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_speed: Option<DownloadSpeed>,
    /// Discovered image size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<ImageSize>,
    /// Discovered image format (qcow2, vmdk, vdi, iso, raw, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Whether the image must be mounted as a CD-ROM drive (an ISO image).
    #[serde(default)]
    pub cdrom: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<ImageTarget>,
    /// UID of the source image or disk, for images made from an existing resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "sourceUID")]
    pub source_uid: Option<String>,
    /// Where to upload the image, for `type: Upload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "imageUploadURLs")]
    pub image_upload_urls: Option<ImageUploadUrls>,
    /// The latest observations of the image's state. A map keyed by `type`, so that
    /// different field managers can own different conditions under server-side apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The generation of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Download speed, as human strings with binary suffixes and as byte counts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DownloadSpeed {
    /// Average download speed, for example `10.5Mi/s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg: Option<String>,
    /// Average download speed in bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg_bytes: Option<String>,
    /// Current download speed, for example `12.1Mi/s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Current download speed in bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_bytes: Option<String>,
}

/// Image sizes, as human strings with binary suffixes (`199.5Mi`) and byte counts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSize {
    /// Size of the stored file (as received, still compressed if the source was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<String>,
    /// Virtual size of the disk (the unpacked length for raw and ISO images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpacked: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpacked_bytes: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageTarget {
    /// The image in DVCR: `<dvcr host>/cvi/<name>:<uid>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "registryURL")]
    pub registry_url: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageUploadUrls {
    /// Upload URL reachable from outside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<String>,
    /// Upload URL reachable from inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_cluster: Option<String>,
}

/// Condition types this project sets on images.
pub mod condition {
    /// Whether the source can be read (reachable, credentials present, dependency Ready).
    pub const DATASOURCE_READY: &str = "DatasourceReady";
    /// Whether the image is stored and usable.
    pub const READY: &str = "Ready";
    /// Result of the last scheduled re-verification of the stored bytes.
    pub const VERIFIED: &str = "Verified";
}
