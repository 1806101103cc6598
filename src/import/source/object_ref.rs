//! Images made from other images (`type: ObjectRef`). The source is resolved and waited for
//! until it is Ready; then it is copied inside DVCR by mounting its layer into the new
//! repository, so no byte passes through the daemon. When the registry declines the mount,
//! the disk file streams through the same pipeline as any other source, checked against the
//! digests recorded when the source was imported.

use bytes::Bytes;
use kube::api::DynamicObject;
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::api::{
    Checksum, ClusterVirtualImage, ImagePhase, ImageStatus, ObjectRef, ObjectRefKind, VirtualImage,
    VirtualImageStorage,
};
use crate::dvcr::{DiskFileStream, Dvcr, DvcrError, layout};
use crate::import::pipeline::{
    self, ByteSource, ImportError, ImportRequest, LiveProgress, PipelineSettings,
};
use crate::import::source::{SourceError, SourceErrorKind};
use crate::import::status::StoredImage;

/// A Ready source image in DVCR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceImage {
    pub repository: String,
    pub tag: String,
    pub uid: String,
    /// `ClusterVirtualImage base`, for messages.
    pub description: String,
}

/// Where the source of an ObjectRef stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    Ready(SourceImage),
    /// Not usable yet: the condition reason and message to show while waiting.
    Waiting {
        reason: &'static str,
        message: String,
    },
}

/// Where a source image lives in DVCR, from its status. Pure.
pub fn source_state(
    description: &str,
    default_repository: String,
    uid: &str,
    status: Option<&ImageStatus>,
) -> SourceState {
    let phase = status.and_then(|s| s.phase);
    if phase != Some(ImagePhase::Ready) {
        let now = phase.map_or("without a status yet".to_string(), |p| format!("it is {p}"));
        return SourceState::Waiting {
            reason: "SourceImageNotReady",
            message: format!(
                "Waiting for {description} to become Ready ({now}); the copy starts by itself then."
            ),
        };
    }
    // The platform records where it stored the image; images this daemon stored follow the
    // same layout, so the fallback is the layout's own place.
    let (repository, tag) = status
        .and_then(|s| s.target.as_ref())
        .and_then(|t| t.registry_url.as_deref())
        .and_then(parse_registry_url)
        .unwrap_or((default_repository, uid.to_string()));
    SourceState::Ready(SourceImage {
        repository,
        tag,
        uid: uid.to_string(),
        description: description.to_string(),
    })
}

/// `host[:port]/repo/sitory:tag` → (`repo/sitory`, `tag`).
fn parse_registry_url(url: &str) -> Option<(String, String)> {
    let (_, path) = url.split_once('/')?;
    let (repository, tag) = path.rsplit_once(':')?;
    (!repository.is_empty() && !tag.is_empty() && !tag.contains('/'))
        .then(|| (repository.to_string(), tag.to_string()))
}

/// Reads the source of an ObjectRef from the cluster.
pub async fn resolve(client: &Client, reference: &ObjectRef) -> Result<SourceState, kube::Error> {
    let name = &reference.name;
    match reference.kind {
        ObjectRefKind::ClusterVirtualImage => {
            let description = format!("ClusterVirtualImage {name}");
            let api: Api<ClusterVirtualImage> = Api::all(client.clone());
            Ok(match api.get_opt(name).await? {
                None => not_found(description),
                Some(image) => source_state(
                    &description,
                    layout::cvi_repository(name),
                    &image.uid().unwrap_or_default(),
                    image.status.as_ref(),
                ),
            })
        }
        ObjectRefKind::VirtualImage => {
            let namespace = reference.namespace.clone().unwrap_or_default();
            let description = format!("VirtualImage {namespace}/{name}");
            let api: Api<VirtualImage> = Api::namespaced(client.clone(), &namespace);
            Ok(match api.get_opt(name).await? {
                None => not_found(description),
                Some(image) if image.spec.storage != VirtualImageStorage::ContainerRegistry => {
                    SourceState::Waiting {
                        reason: "SourceNotInDVCR",
                        message: format!(
                            "{description} is stored in a PersistentVolumeClaim, not in DVCR; only images with storage ContainerRegistry can be copied. Point objectRef at such an image."
                        ),
                    }
                }
                Some(image) => source_state(
                    &description,
                    layout::vi_repository(&namespace, name),
                    &image.uid().unwrap_or_default(),
                    image.status.as_ref(),
                ),
            })
        }
        ObjectRefKind::VirtualDisk => virtual_disk(client, reference).await,
    }
}

fn not_found(description: String) -> SourceState {
    SourceState::Waiting {
        reason: "SourceImageNotFound",
        message: format!(
            "{description} does not exist; the copy starts by itself once it exists and is Ready."
        ),
    }
}

/// VirtualDisks are the platform's, and hold their bytes in volumes this daemon cannot read:
/// say which of that is the case, and never pretend to copy.
async fn virtual_disk(client: &Client, reference: &ObjectRef) -> Result<SourceState, kube::Error> {
    let namespace = reference.namespace.clone().unwrap_or_default();
    let description = format!("VirtualDisk {namespace}/{}", reference.name);
    let installed = match client
        .list_api_group_resources("virtualization.deckhouse.io/v1alpha2")
        .await
    {
        Ok(resources) => resources.resources.iter().any(|r| r.name == "virtualdisks"),
        Err(kube::Error::Api(status)) if status.code == 404 => false,
        Err(error) => return Err(error),
    };
    if !installed {
        return Ok(SourceState::Waiting {
            reason: "VirtualDiskNotInstalled",
            message: format!(
                "The VirtualDisk resource type is not installed in this cluster, so {description} cannot be a source; install the virtualization platform or use another source."
            ),
        });
    }
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "virtualization.deckhouse.io",
        "v1alpha2",
        "VirtualDisk",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &resource);
    Ok(match api.get_opt(&reference.name).await? {
        None => not_found(description),
        Some(disk) if disk.data["status"]["phase"] != "Ready" => SourceState::Waiting {
            reason: "SourceDiskNotReady",
            message: format!("Waiting for {description} to become Ready."),
        },
        Some(_) => SourceState::Waiting {
            reason: "SourceKindNotSupported",
            message: format!(
                "{description} is Ready, but its bytes live in a volume this controller cannot read; copying VirtualDisks is left to the platform's own controller."
            ),
        },
    })
}

/// Copies a Ready source image under `request`'s repository and tag.
pub async fn copy(
    dvcr: &Dvcr,
    settings: &PipelineSettings,
    request: &ImportRequest,
    source: &SourceImage,
    progress: &LiveProgress,
    cancel: &CancellationToken,
) -> Result<(StoredImage, CopyMethod), ImportError> {
    let image = dvcr.read_image(&source.repository, &source.tag).await?;
    let labels = image.image_labels()?;
    let stored =
        |registry_url: String, format: String, stored_size: u64, virtual_size: u64| StoredImage {
            registry_url,
            cdrom: format == "iso",
            format,
            stored_size,
            virtual_size,
            source_uid: Some(source.uid.clone()),
        };
    if dvcr
        .mount_blob(&source.repository, &request.repository, &image.layer.digest)
        .await?
    {
        dvcr.tag_image(&request.repository, &request.tag, &image.layer, &labels)
            .await?;
        let url = dvcr.image_url(&request.repository, &request.tag);
        return Ok((
            stored(url, labels.format, labels.stored_size, labels.virtual_size),
            CopyMethod::Mounted,
        ));
    }
    tracing::info!(source = %source.description, "DVCR declined the blob mount; streaming the copy");
    let file = dvcr.disk_file_stream(&source.repository, &image).await?;
    // The copy must be the bytes that were imported: check them against the recorded digests.
    let request = ImportRequest {
        checksum: Some(Checksum {
            md5: labels.md5.clone(),
            sha256: labels.sha256.clone(),
        }),
        ..request.clone()
    };
    let copied = pipeline::store(dvcr, settings, &request, file, progress, cancel).await?;
    Ok((
        stored(
            copied.registry_url,
            copied.info.format.to_string(),
            copied.stored_size,
            copied.info.virtual_size,
        ),
        CopyMethod::Streamed,
    ))
}

/// How a copy reached its new repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    /// The registry linked the layer into the new repository; no byte moved.
    Mounted,
    /// The bytes streamed through the pipeline.
    Streamed,
}

impl ByteSource for DiskFileStream {
    fn file_name(&self) -> String {
        self.file_name.clone()
    }
    fn content_length(&self) -> Option<u64> {
        Some(self.file_size)
    }
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, SourceError> {
        DiskFileStream::next_chunk(self)
            .await
            .map_err(|error: DvcrError| SourceError {
                kind: if error.is_transient() {
                    SourceErrorKind::Transient
                } else {
                    SourceErrorKind::Permanent
                },
                reason: error.reason(),
                message: error.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ImageTarget;

    fn status(phase: ImagePhase, url: Option<&str>) -> ImageStatus {
        ImageStatus {
            phase: Some(phase),
            target: url.map(|u| ImageTarget {
                registry_url: Some(u.to_string()),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_source_that_is_not_ready_is_waited_for_and_named() {
        let state = source_state(
            "ClusterVirtualImage base",
            "cvi/base".into(),
            "u1",
            Some(&status(ImagePhase::Provisioning, None)),
        );
        let SourceState::Waiting { reason, message } = state else {
            panic!("{state:?}")
        };
        assert_eq!(reason, "SourceImageNotReady");
        assert!(
            message.contains("ClusterVirtualImage base") && message.contains("Provisioning"),
            "{message}"
        );
        assert!(matches!(
            source_state("x", "cvi/x".into(), "u", None),
            SourceState::Waiting { .. }
        ));
    }

    #[test]
    fn a_ready_source_is_found_where_its_status_says() {
        let ready = status(
            ImagePhase::Ready,
            Some("dvcr.d8-virtualization.svc/vi/team-a/ubuntu:abc-123"),
        );
        assert_eq!(
            source_state(
                "VirtualImage team-a/ubuntu",
                "vi/team-a/ubuntu".into(),
                "uid-1",
                Some(&ready)
            ),
            SourceState::Ready(SourceImage {
                repository: "vi/team-a/ubuntu".into(),
                tag: "abc-123".into(),
                uid: "uid-1".into(),
                description: "VirtualImage team-a/ubuntu".into(),
            })
        );
        let with_port = status(ImagePhase::Ready, Some("127.0.0.1:5000/cvi/base:u2"));
        let SourceState::Ready(image) =
            source_state("b", "cvi/base".into(), "u2", Some(&with_port))
        else {
            panic!()
        };
        assert_eq!(
            (image.repository.as_str(), image.tag.as_str()),
            ("cvi/base", "u2")
        );
        let without_url = status(ImagePhase::Ready, None);
        let SourceState::Ready(image) =
            source_state("b", "cvi/base".into(), "u3", Some(&without_url))
        else {
            panic!()
        };
        assert_eq!(
            (image.repository.as_str(), image.tag.as_str()),
            ("cvi/base", "u3")
        );
    }
}
