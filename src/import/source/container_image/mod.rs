//! Container image source: the disk file of a "containerDisk" image (`FROM scratch` +
//! `COPY disk.img /disk/disk.img`) in a TLS registry.
//!
//! [`ContainerDisk::open`] resolves the image, then reads its layers in order until the tar
//! header of the one regular file under `disk/` turns up. [`ContainerDisk::next_chunk`]
//! streams that file's bytes straight out of the (gunzipped) layer stream; after the last
//! byte it reads the rest of the layers, discarding the data of other entries, so that a
//! second file under `disk/` fails the import and every layer's digest is checked. Nothing is
//! buffered beyond one decompressed chunk: the tar parser works on the stream, 512-byte
//! block by block.
//!
//! Registry credentials go only into oci-client's Basic auth; messages show the image
//! reference (which carries no credentials) and are scrubbed of the password regardless.

mod errors;
mod layer;
mod registry;
mod tar;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use self::errors::no_disk;
use self::layer::{LayerFailure, LayerReader};
use self::registry::{
    Scrubber, build_client, describe_platforms, environment_proxy, pick_platform, redact_reference,
    truncate,
};
pub use self::tar::fuzz_tar;
use self::tar::{DiskEntry, TarReader, classify};
use super::{SourceError, find_tls_error, reason};
use crate::egress::EgressPolicy;
use crate::egress::connect_proxy::ConnectProxy;

/// Credentials for the registry of the image, from the imagePullSecret.
pub use crate::k8s::secrets::RegistryCredentials;

/// The registry part of an image reference, as the client contacts it: `docker.io` (also
/// implied by references without a registry) becomes `index.docker.io`, as in oci-client's
/// [`Reference::resolve_registry`]. An unparsable reference yields its first path segment.
pub fn registry_host(image: &str) -> String {
    match image.trim().parse::<Reference>() {
        Ok(reference) => reference.resolve_registry().to_string(),
        Err(_) => {
            let first = image.trim().split('/').next().unwrap_or_default();
            let host = first.rsplit('@').next().unwrap_or_default();
            host.to_string()
        }
    }
}

/// The disk file of a container image, as one stream. See the module documentation.
pub struct ContainerDisk {
    client: Client,
    reference: Reference,
    /// The image reference for messages.
    shown: String,
    scrub: Scrubber,
    layers: Vec<OciDescriptor>,
    /// The index of the layer `tar` reads.
    layer_index: usize,
    tar: Option<TarReader>,
    /// The disk file's path in the image (normalised, e.g. `disk/disk.img`).
    file_path: String,
    file_name: String,
    size: u64,
    finished: bool,
    /// Once failed, the stream fails the same way forever.
    failed: Option<SourceError>,
    /// Every connection of `client` goes through it (the egress policy); None when the
    /// environment names a proxy of its own.
    proxy: Option<ConnectProxy>,
}

impl fmt::Debug for ContainerDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContainerDisk")
            .field("image", &self.shown)
            .field("file", &self.file_path)
            .field("size", &self.size)
            .field("layer", &self.layer_index)
            .finish_non_exhaustive()
    }
}

impl ContainerDisk {
    /// Resolves the image (tag or digest; an image index picks linux/amd64, else its only
    /// image), then reads the layers in order until the header of the file under `disk/` is
    /// found, so its name and size are known. `ca_bundle_pem` (the PEM chain decoded from
    /// `caBundle`) is trusted in addition to the system roots. Only HTTPS registries.
    pub async fn open(
        image: &str,
        ca_bundle_pem: Option<&[u8]>,
        credentials: Option<RegistryCredentials>,
        egress: &Arc<EgressPolicy>,
    ) -> Result<Self, SourceError> {
        let shown_raw = redact_reference(image);
        let reference: Reference = image.trim().parse().map_err(|e| {
            SourceError::permanent(
                reason::INVALID_IMAGE_REFERENCE,
                format!(
                    "the image reference {shown_raw:?} is not valid ({e}): write it as \
                     registry.example.com/path/name:tag or .../name@sha256:<digest>"
                ),
            )
        })?;
        let shown = reference.whole();
        let scrub = Scrubber::new(credentials.as_ref());
        let proxy = if environment_proxy() {
            // That proxy resolves and connects; the policy cannot see its connections.
            None
        } else {
            Some(ConnectProxy::start(egress.clone()).await.map_err(|error| {
                SourceError::transient(
                    reason::SOURCE_UNAVAILABLE,
                    format!("cannot start the egress check for {shown} ({error}); the import will be retried later"),
                )
            })?)
        };
        let client = build_client(ca_bundle_pem, &shown, proxy.as_ref().map(ConnectProxy::url))?;
        let auth = match &credentials {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let mut disk = Self {
            client,
            reference,
            shown,
            scrub,
            layers: Vec::new(),
            layer_index: 0,
            tar: None,
            file_path: String::new(),
            file_name: String::new(),
            size: 0,
            finished: false,
            failed: None,
            proxy,
        };
        disk.layers = disk.resolve_layers(&auth).await?;
        disk.find_disk().await?;
        tracing::debug!(
            image = %disk.shown,
            file = %disk.file_path,
            size = disk.size,
            layer = disk.layer_index,
            "found the disk file of the container image"
        );
        Ok(disk)
    }

    /// The file's name under `disk/`.
    pub fn file_name(&self) -> String {
        self.file_name.clone()
    }

    /// The file's size from its tar header.
    pub fn content_length(&self) -> Option<u64> {
        Some(self.size)
    }

    /// The next bytes of the disk file; `Ok(None)` once the file is complete and the rest of
    /// the image was checked to hold no other file under `disk/`. After an error, every call
    /// returns the same error.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, SourceError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if self.finished {
            return Ok(None);
        }
        match self.next_chunk_inner().await {
            Ok(Some(chunk)) => Ok(Some(chunk)),
            Ok(None) => {
                self.finished = true;
                self.tar = None;
                Ok(None)
            }
            Err(error) => {
                self.tar = None;
                self.failed = Some(error.clone());
                Err(error)
            }
        }
    }

    async fn next_chunk_inner(&mut self) -> Result<Option<Bytes>, SourceError> {
        let Some(tar) = self.tar.as_mut() else {
            return Err(SourceError::permanent(
                reason::SOURCE_REJECTED,
                format!("the stream of {} is closed", self.shown),
            ));
        };
        let read = tar.read_data().await;
        match read {
            Ok(Some(chunk)) => Ok(Some(chunk)),
            Ok(None) => {
                self.check_rest().await?;
                Ok(None)
            }
            Err(failure) => Err(self.layer_error(failure)),
        }
    }

    /// The manifest's layers, after resolving an image index.
    async fn resolve_layers(
        &mut self,
        auth: &RegistryAuth,
    ) -> Result<Vec<OciDescriptor>, SourceError> {
        let (manifest, _) = self
            .client
            .pull_manifest(&self.reference, auth)
            .await
            .map_err(|e| self.oci_error(e, "the manifest"))?;
        let manifest = match manifest {
            OciManifest::Image(manifest) => manifest,
            OciManifest::ImageIndex(index) => {
                let digest = pick_platform(&index.manifests).ok_or_else(|| {
                    SourceError::permanent(
                        reason::IMAGE_NOT_FOUND,
                        format!(
                            "the image index {} has no linux/amd64 image (it lists {}): \
                             point containerImage.image at a linux/amd64 image or its digest",
                            self.shown,
                            describe_platforms(&index.manifests)
                        ),
                    )
                })?;
                let platform = self.reference.clone_with_digest(digest);
                match self.client.pull_manifest(&platform, auth).await {
                    Ok((OciManifest::Image(manifest), _)) => manifest,
                    Ok((OciManifest::ImageIndex(_), _)) => {
                        return Err(SourceError::permanent(
                            reason::IMAGE_NOT_FOUND,
                            format!(
                                "the image index {} points at another index instead of an \
                                 image: point containerImage.image at the image's digest",
                                self.shown
                            ),
                        ));
                    }
                    Err(e) => return Err(self.oci_error(e, "the manifest")),
                }
            }
        };
        for (index, layer) in manifest.layers.iter().enumerate() {
            if layer.media_type.contains("zstd") {
                return Err(SourceError::permanent(
                    reason::UNSUPPORTED_IMAGE_LAYER,
                    format!(
                        "layer {} of {} is zstd-compressed ({}), which is not supported: \
                         build the image with gzip or uncompressed layers (e.g. `buildah push \
                         --compression-format gzip` or `skopeo copy --dest-compress-format \
                         gzip`)",
                        index + 1,
                        self.shown,
                        layer.media_type
                    ),
                ));
            }
        }
        if manifest.layers.is_empty() {
            return Err(no_disk(&self.shown, "it has no layers"));
        }
        Ok(manifest.layers)
    }

    /// Reads layers until the header of the disk file; `self.tar` is then at its data.
    async fn find_disk(&mut self) -> Result<(), SourceError> {
        while self.layer_index < self.layers.len() {
            let mut tar = self.open_layer().await?;
            loop {
                let entry = match tar.next_entry().await {
                    Ok(entry) => entry,
                    Err(failure) => return Err(self.layer_error(failure)),
                };
                let Some(entry) = entry else { break };
                match classify(&entry) {
                    DiskEntry::Ignored => {}
                    DiskEntry::File(name) => {
                        self.file_name = name.to_string();
                        self.file_path = entry.path.clone();
                        self.size = entry.size;
                        self.tar = Some(tar);
                        return Ok(());
                    }
                    DiskEntry::NotRegular(what) => {
                        return Err(SourceError::permanent(
                            reason::DISK_NOT_REGULAR_FILE,
                            format!(
                                "{} in the image {} is {what}, not a regular file: copy the \
                                 disk file itself into the image, as in `COPY disk.img \
                                 /disk/disk.img`",
                                entry.path, self.shown
                            ),
                        ));
                    }
                }
            }
            if let Err(failure) = tar.drain().await {
                return Err(self.layer_error(failure));
            }
            self.layer_index += 1;
        }
        Err(no_disk(
            &self.shown,
            "none of its layers has a file under /disk",
        ))
    }

    /// After the disk file: the rest of the image must hold no other file under `disk/`.
    /// Reading it to the end also checks the digests of the remaining layers.
    async fn check_rest(&mut self) -> Result<(), SourceError> {
        loop {
            let Some(tar) = self.tar.as_mut() else {
                return Ok(());
            };
            loop {
                let entry = match tar.next_entry().await {
                    Ok(entry) => entry,
                    Err(failure) => return Err(self.layer_error(failure)),
                };
                let Some(entry) = entry else { break };
                if matches!(classify(&entry), DiskEntry::Ignored) {
                    continue;
                }
                let detail = if entry.path == self.file_path {
                    format!("{} appears twice (in layers that replace it)", entry.path)
                } else {
                    format!("it holds both {} and {}", self.file_path, entry.path)
                };
                return Err(SourceError::permanent(
                    reason::MULTIPLE_DISKS_IN_IMAGE,
                    format!(
                        "the image {} has more than one file under /disk ({detail}): it must \
                         contain exactly one, as in `COPY disk.img /disk/disk.img`",
                        self.shown
                    ),
                ));
            }
            let drained = tar.drain().await;
            if let Err(failure) = drained {
                return Err(self.layer_error(failure));
            }
            self.tar = None;
            self.layer_index += 1;
            if self.layer_index < self.layers.len() {
                self.tar = Some(self.open_layer().await?);
            }
        }
    }

    async fn open_layer(&mut self) -> Result<TarReader, SourceError> {
        let layer = &self.layers[self.layer_index];
        let what = format!("layer {} ({})", self.layer_index + 1, layer.digest);
        let stream = self
            .client
            .pull_blob_stream(&self.reference, layer)
            .await
            .map_err(|e| self.oci_error(e, &what))?;
        Ok(TarReader::new(LayerReader::new(stream.stream)))
    }
}

impl crate::import::pipeline::ByteSource for ContainerDisk {
    fn file_name(&self) -> String {
        ContainerDisk::file_name(self)
    }
    fn content_length(&self) -> Option<u64> {
        ContainerDisk::content_length(self)
    }
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, SourceError> {
        ContainerDisk::next_chunk(self).await
    }
}
