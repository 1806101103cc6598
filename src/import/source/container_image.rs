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

use std::fmt;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::StreamExt as _;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

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

/// Time allowed to establish a TCP (and TLS) connection to the registry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time without a byte from the registry.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Decompressed bytes gathered per chunk of a gzip layer: big enough to keep the per-chunk
/// cost low, small enough that a highly compressible disk cannot balloon memory.
const GZIP_CHUNK: usize = 256 << 10;
/// The largest PAX header or GNU long name accepted; real ones are a few hundred bytes.
const MAX_META_ENTRY: u64 = 1 << 20;
const BLOCK: usize = 512;
const DISK_DIR: &str = "disk/";

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

    fn layer_error(&self, failure: LayerFailure) -> SourceError {
        let layer = self.layers.get(self.layer_index);
        let what = format!(
            "layer {} ({}) of {}",
            self.layer_index + 1,
            layer.map_or("", |l| l.digest.as_str()),
            self.shown
        );
        match failure {
            LayerFailure::Io(error) => self.io_error(&error, &what),
            LayerFailure::Zstd => SourceError::permanent(
                reason::UNSUPPORTED_IMAGE_LAYER,
                format!(
                    "{what} is zstd-compressed, which is not supported: build the image with \
                     gzip or uncompressed layers"
                ),
            ),
            LayerFailure::Corrupt(detail) => SourceError::permanent(
                reason::UNSUPPORTED_IMAGE_LAYER,
                format!(
                    "{what} is not a valid tar or tar+gzip archive ({detail}): rebuild and push \
                     the image"
                ),
            ),
        }
    }

    /// Classifies a failure of a stream read (network, TLS, digest check).
    fn io_error(&self, error: &std::io::Error, what: &str) -> SourceError {
        if let Some(refused) = self.refused() {
            return refused;
        }
        if let Some(tls) = find_tls_error(error) {
            return self.tls_error(tls);
        }
        if let Some(inner) = error.get_ref()
            && let Some(digest) = inner.downcast_ref::<oci_client::errors::DigestError>()
        {
            return SourceError::restart(
                reason::LAYER_DIGEST_MISMATCH,
                format!(
                    "the bytes of {what} do not match its digest ({}): the download was \
                     corrupted or the registry's copy is damaged; the import starts over",
                    self.scrub.apply(&digest.to_string())
                ),
            );
        }
        SourceError::transient(
            reason::SOURCE_UNAVAILABLE,
            format!(
                "reading {what} failed: {}; the registry may be down or unreachable, the import \
                 will be retried later",
                self.scrub.apply(&crate::net::error_chain(error))
            ),
        )
    }

    fn tls_error(&self, tls: &rustls::Error) -> SourceError {
        let registry = self.reference.resolve_registry();
        let hint = match tls {
            rustls::Error::InvalidCertificate(_) => {
                "the registry certificate is not trusted: if the registry uses a private CA, put \
                 its PEM chain, base64-encoded, in containerImage.caBundle; also check that the \
                 certificate is valid for this host and not expired"
            }
            _ => {
                "the TLS handshake failed: check that the registry speaks HTTPS on this port \
                 (only TLS registries are supported) and the containerImage.caBundle"
            }
        };
        SourceError::permanent(
            reason::SOURCE_TLS_ERROR,
            format!(
                "TLS connection to {registry} for {} failed ({}): {hint}",
                self.shown,
                self.scrub.apply(&tls.to_string())
            ),
        )
    }

    /// The policy's refusal behind a failed request: the client saw only the proxy's 403.
    fn refused(&self) -> Option<SourceError> {
        let refusal = self.proxy.as_ref()?.refusal()?;
        Some(SourceError::permanent(
            reason::SOURCE_REFUSED_BY_POLICY,
            format!("{} is not pulled: {refusal}", self.shown),
        ))
    }

    /// Classifies an error of oci-client; `what` is the object requested.
    fn oci_error(&self, error: OciDistributionError, what: &str) -> SourceError {
        if let Some(refused) = self.refused() {
            return refused;
        }
        let registry = self.reference.registry();
        let denied = || {
            let hint = if self.scrub.has_credentials {
                "check the imagePullSecret".to_string()
            } else {
                format!(
                    "the image needs credentials: set containerImage.imagePullSecret to a \
                     kubernetes.io/dockerconfigjson Secret with credentials for {registry}"
                )
            };
            SourceError::permanent(
                reason::SOURCE_ACCESS_DENIED,
                format!(
                    "authentication refused by {registry} for {}: {hint}",
                    self.shown
                ),
            )
        };
        let not_found = || {
            SourceError::permanent(
                reason::IMAGE_NOT_FOUND,
                format!(
                    "{what} of {} was not found in {registry}: check containerImage.image \
                     (repository, tag or digest)",
                    self.shown
                ),
            )
        };
        let unavailable = |detail: String| {
            SourceError::transient(
                reason::SOURCE_UNAVAILABLE,
                format!(
                    "{registry} could not deliver {what} of {}: {}; the import will be retried \
                     later",
                    self.shown,
                    self.scrub.apply(&detail)
                ),
            )
        };
        let rejected = |detail: String| {
            SourceError::permanent(
                reason::SOURCE_REJECTED,
                format!(
                    "{registry} refused {what} of {}: {}; check containerImage.image",
                    self.shown,
                    self.scrub.apply(&detail)
                ),
            )
        };
        match error {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => denied(),
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let detail = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    denied()
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::ManifestBlobUnknown
                    )
                }) {
                    not_found()
                } else if codes.contains(&&OciErrorCode::Toomanyrequests) {
                    unavailable(format!("too many requests ({detail})"))
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::NameInvalid | OciErrorCode::TagInvalid))
                {
                    SourceError::permanent(
                        reason::INVALID_IMAGE_REFERENCE,
                        format!(
                            "{registry} says the reference {} is invalid ({}): fix \
                             containerImage.image",
                            self.shown,
                            self.scrub.apply(&detail)
                        ),
                    )
                } else {
                    rejected(detail)
                }
            }
            OciDistributionError::ServerError { code, message, .. } => {
                let detail = format!("HTTP {code}: {}", truncate(&message, 200));
                match code {
                    401 | 403 => denied(),
                    404 => not_found(),
                    408 | 429 | 500..=599 => unavailable(detail),
                    _ => rejected(detail),
                }
            }
            OciDistributionError::RequestError(error) => {
                if let Some(tls) = find_tls_error(&error) {
                    return self.tls_error(tls);
                }
                unavailable(crate::net::error_chain(&error.without_url()))
            }
            OciDistributionError::IoError(error) => self.io_error(&error, what),
            OciDistributionError::ImageManifestNotFoundError(_) => not_found(),
            OciDistributionError::UnsupportedMediaTypeError(media_type) => SourceError::permanent(
                reason::UNSUPPORTED_IMAGE_LAYER,
                format!(
                    "{} has a manifest of the unsupported media type {media_type}: push it as \
                     an OCI or Docker v2 image",
                    self.shown
                ),
            ),
            OciDistributionError::UnsupportedSchemaVersionError(version) => SourceError::permanent(
                reason::UNSUPPORTED_IMAGE_LAYER,
                format!(
                    "{} has a schema version {version} manifest: push it as an OCI or \
                         Docker v2 image",
                    self.shown
                ),
            ),
            other => rejected(other.to_string()),
        }
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

fn no_disk(shown: &str, detail: &str) -> SourceError {
    SourceError::permanent(
        reason::NO_DISK_IN_IMAGE,
        format!(
            "the image {shown} has no disk file ({detail}): the image must contain exactly one \
             file under /disk, as in `COPY disk.img /disk/disk.img`"
        ),
    )
}

/// An image reference fit for messages even when unparsable: no `user:pass@` before the
/// registry.
fn redact_reference(image: &str) -> String {
    let image = image.trim();
    let (first, rest) = match image.find('/') {
        Some(at) => image.split_at(at),
        None => (image, ""),
    };
    match first.rfind('@') {
        // `name@sha256:...` without a slash is a digest, not credentials.
        Some(at) if !rest.is_empty() => format!("{}{rest}", &first[at + 1..]),
        _ => image.to_string(),
    }
}

/// linux/amd64, else the only image of the index (attestations do not count).
fn pick_platform(manifests: &[ImageIndexEntry]) -> Option<String> {
    let platform = |entry: &ImageIndexEntry| {
        entry
            .platform
            .as_ref()
            .map(|p| (p.os.to_string(), p.architecture.to_string()))
    };
    if let Some(entry) = manifests
        .iter()
        .find(|e| platform(e).is_some_and(|(os, arch)| os == "linux" && arch == "amd64"))
    {
        return Some(entry.digest.clone());
    }
    let images: Vec<&ImageIndexEntry> = manifests
        .iter()
        .filter(|e| platform(e).is_none_or(|(os, _)| os != "unknown"))
        .collect();
    match images.as_slice() {
        [only] => Some(only.digest.clone()),
        _ => None,
    }
}

fn describe_platforms(manifests: &[ImageIndexEntry]) -> String {
    if manifests.is_empty() {
        return "no images".to_string();
    }
    manifests
        .iter()
        .map(|e| match &e.platform {
            Some(p) => format!("{}/{}", p.os, p.architecture),
            None => "an image without platform".to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the environment sends HTTPS through a proxy of its own (reqwest honours it).
fn environment_proxy() -> bool {
    ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
}

fn build_client(
    ca_bundle_pem: Option<&[u8]>,
    shown: &str,
    proxy: Option<&str>,
) -> Result<Client, SourceError> {
    crate::tls::install_crypto_provider();
    let invalid = |detail: String| {
        SourceError::permanent(
            reason::INVALID_CA_BUNDLE,
            format!(
                "the caBundle for {shown} {detail}: put the base64-encoded PEM chain of the CA \
                 that signed the registry certificate in containerImage.caBundle"
            ),
        )
    };
    let mut certificates = Vec::new();
    if let Some(pem) = ca_bundle_pem {
        certificates = crate::tls::split_pem_certificates(pem);
        if certificates.is_empty() {
            return Err(invalid("holds no PEM certificate".to_string()));
        }
    }
    let config = ClientConfig {
        protocol: ClientProtocol::Https,
        extra_root_certificates: certificates
            .into_iter()
            .map(|data| Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            })
            .collect(),
        // Image indexes are resolved here, with better messages than oci-client's.
        platform_resolver: None,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        user_agent: concat!("image-catalog/", env!("CARGO_PKG_VERSION")),
        https_proxy: proxy.map(str::to_string),
        ..ClientConfig::default()
    };
    // `Client::new` would silently fall back to a default client on a bad certificate.
    Client::try_from(config).map_err(|e| match ca_bundle_pem {
        Some(_) => invalid(format!("cannot be used ({e})")),
        None => SourceError::permanent(
            reason::SOURCE_TLS_ERROR,
            format!("the registry client for {shown} cannot be set up ({e})"),
        ),
    })
}

/// Removes the registry password from texts of the HTTP stack.
struct Scrubber {
    secrets: crate::net::Scrubber,
    has_credentials: bool,
}

impl Scrubber {
    fn new(credentials: Option<&RegistryCredentials>) -> Self {
        Self {
            secrets: crate::net::Scrubber::new(credentials.map(|c| c.password.clone())),
            has_credentials: credentials.is_some(),
        }
    }

    fn apply(&self, text: &str) -> String {
        self.secrets.apply(text)
    }
}

fn truncate(text: &str, max: usize) -> String {
    let text = text.trim();
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Layers: decompression and tar parsing over the blob stream.

/// Why reading a layer failed.
#[derive(Debug)]
enum LayerFailure {
    /// The blob stream failed: network, TLS or digest mismatch.
    Io(std::io::Error),
    Zstd,
    /// Not a (gzip) tar.
    Corrupt(String),
}

type LayerResult<T> = Result<T, LayerFailure>;

enum Decoder {
    /// Not known until the first bytes arrive: the media type is not trusted, the magic is.
    Sniffing(Vec<u8>),
    Plain,
    Gzip(Box<flate2::write::MultiGzDecoder<Vec<u8>>>),
}

/// The blob as it comes from the registry.
struct RawStream {
    stream: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>,
    /// The stream ended (and oci-client verified the digest).
    done: bool,
}

impl RawStream {
    async fn next(&mut self) -> LayerResult<Option<Bytes>> {
        while !self.done {
            match self.stream.next().await {
                Some(Ok(chunk)) if chunk.is_empty() => {}
                Some(Ok(chunk)) => return Ok(Some(chunk)),
                Some(Err(error)) => return Err(LayerFailure::Io(error)),
                None => self.done = true,
            }
        }
        Ok(None)
    }
}

/// The uncompressed bytes of one layer blob, streamed.
struct LayerReader {
    raw: RawStream,
    decoder: Decoder,
    /// Compressed bytes not yet fed to the decoder.
    pending: Bytes,
    finished: bool,
}

impl LayerReader {
    fn new(stream: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>) -> Self {
        Self {
            raw: RawStream {
                stream,
                done: false,
            },
            decoder: Decoder::Sniffing(Vec::new()),
            pending: Bytes::new(),
            finished: false,
        }
    }

    /// The next uncompressed bytes; `None` at the end of the blob.
    async fn next(&mut self) -> LayerResult<Option<Bytes>> {
        loop {
            if self.finished {
                return Ok(None);
            }
            match &mut self.decoder {
                Decoder::Sniffing(head) => {
                    let chunk = self.raw.next().await?;
                    if let Some(chunk) = &chunk {
                        head.extend_from_slice(chunk);
                    }
                    if head.len() < 4 && chunk.is_some() {
                        continue;
                    }
                    let head = Bytes::from(std::mem::take(head));
                    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                        return Err(LayerFailure::Zstd);
                    }
                    self.decoder = if head.starts_with(&[0x1f, 0x8b]) {
                        Decoder::Gzip(Box::new(flate2::write::MultiGzDecoder::new(Vec::new())))
                    } else {
                        Decoder::Plain
                    };
                    self.pending = head;
                }
                Decoder::Plain => {
                    if !self.pending.is_empty() {
                        return Ok(Some(std::mem::take(&mut self.pending)));
                    }
                    match self.raw.next().await? {
                        Some(chunk) => return Ok(Some(chunk)),
                        None => {
                            self.finished = true;
                            return Ok(None);
                        }
                    }
                }
                Decoder::Gzip(decoder) => {
                    if self.pending.is_empty() {
                        match self.raw.next().await? {
                            Some(chunk) => {
                                self.pending = chunk;
                                continue;
                            }
                            None => {
                                decoder
                                    .try_finish()
                                    .map_err(|e| LayerFailure::Corrupt(format!("gzip: {e}")))?;
                                self.finished = true;
                                let out = std::mem::take(decoder.get_mut());
                                return Ok((!out.is_empty()).then(|| Bytes::from(out)));
                            }
                        }
                    }
                    // Feed a little at a time: each write yields at most flate2's 32 KiB
                    // buffer, so the output stays bounded however well the disk compresses.
                    while !self.pending.is_empty() && decoder.get_ref().len() < GZIP_CHUNK {
                        let used = decoder
                            .write(&self.pending)
                            .map_err(|e| LayerFailure::Corrupt(format!("gzip: {e}")))?;
                        if used == 0 {
                            return Err(LayerFailure::Corrupt(
                                "gzip: the stream does not progress".to_string(),
                            ));
                        }
                        self.pending.advance(used);
                    }
                    let out = std::mem::take(decoder.get_mut());
                    if !out.is_empty() {
                        return Ok(Some(Bytes::from(out)));
                    }
                }
            }
        }
    }
}

/// The kind of a tar entry, as far as the disk search cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    Regular,
    Directory,
    HardLink,
    SymLink,
    Device,
    Fifo,
    Sparse,
    Other(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct TarEntry {
    /// Normalised: no leading `./` or `/`, no trailing `/`.
    path: String,
    kind: EntryKind,
    size: u64,
    /// PAX `GNU.sparse.*` records: the data is not the file's bytes.
    pax_sparse: bool,
}

/// What a PAX extended header says about the next entry.
#[derive(Debug, Default, PartialEq, Eq)]
struct Pax {
    path: Option<String>,
    size: Option<u64>,
    sparse: bool,
}

/// A streaming tar parser over one layer.
struct TarReader {
    layer: LayerReader,
    /// Uncompressed bytes not yet parsed.
    buf: Bytes,
    /// Data bytes of the current entry not yet read.
    data_left: u64,
    /// Padding after the current entry's data.
    pad_left: u64,
    /// The end-of-archive blocks were seen (or the layer ended).
    ended: bool,
}

impl TarReader {
    fn new(layer: LayerReader) -> Self {
        Self {
            layer,
            buf: Bytes::new(),
            data_left: 0,
            pad_left: 0,
            ended: false,
        }
    }

    /// Makes `buf` non-empty; false at the end of the layer.
    async fn fill(&mut self) -> LayerResult<bool> {
        while self.buf.is_empty() {
            match self.layer.next().await? {
                Some(chunk) => self.buf = chunk,
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    async fn skip(&mut self, mut count: u64) -> LayerResult<()> {
        while count > 0 {
            if !self.fill().await? {
                return Err(LayerFailure::Corrupt(
                    "the archive ends inside an entry".to_string(),
                ));
            }
            let take = count.min(self.buf.len() as u64);
            // In range: `take` ≤ buf.len().
            self.buf.advance(take as usize);
            count -= take;
        }
        Ok(())
    }

    /// One 512-byte block; `None` at a clean end of the layer.
    async fn read_block(&mut self) -> LayerResult<Option<[u8; BLOCK]>> {
        let mut block = [0u8; BLOCK];
        let mut got = 0;
        while got < BLOCK {
            if !self.fill().await? {
                if got == 0 {
                    return Ok(None);
                }
                return Err(LayerFailure::Corrupt(
                    "the archive ends inside a header".to_string(),
                ));
            }
            let take = (BLOCK - got).min(self.buf.len());
            block[got..got + take].copy_from_slice(&self.buf[..take]);
            self.buf.advance(take);
            got += take;
        }
        Ok(Some(block))
    }

    /// The data of a metadata entry (PAX header, GNU long name), with its padding.
    async fn read_meta(&mut self, size: u64) -> LayerResult<Vec<u8>> {
        if size > MAX_META_ENTRY {
            return Err(LayerFailure::Corrupt(format!(
                "a tar metadata entry of {size} bytes"
            )));
        }
        // In range: checked against MAX_META_ENTRY.
        let mut data = Vec::with_capacity(size as usize);
        let mut left = size;
        while left > 0 {
            if !self.fill().await? {
                return Err(LayerFailure::Corrupt(
                    "the archive ends inside an entry".to_string(),
                ));
            }
            let take = left.min(self.buf.len() as u64) as usize;
            data.extend_from_slice(&self.buf[..take]);
            self.buf.advance(take);
            left -= take as u64;
        }
        self.skip(padding(size)).await?;
        Ok(data)
    }

    /// The next entry's header, skipping whatever is left of the current entry's data.
    /// `None` at the end of the archive.
    async fn next_entry(&mut self) -> LayerResult<Option<TarEntry>> {
        if self.ended {
            return Ok(None);
        }
        let left = self.data_left + self.pad_left;
        self.data_left = 0;
        self.pad_left = 0;
        self.skip(left).await?;
        let mut pax = Pax::default();
        let mut long_name: Option<String> = None;
        loop {
            let Some(block) = self.read_block().await? else {
                // Some writers omit the end-of-archive blocks.
                self.ended = true;
                return Ok(None);
            };
            if block.iter().all(|&b| b == 0) {
                self.ended = true;
                return Ok(None);
            }
            if !checksum_ok(&block) {
                return Err(LayerFailure::Corrupt(
                    "a tar header has a wrong checksum".to_string(),
                ));
            }
            let header_size = parse_numeric(&block[124..136]).ok_or_else(|| {
                LayerFailure::Corrupt("a tar header has an invalid size".to_string())
            })?;
            let typeflag = block[156];
            match typeflag {
                b'x' => {
                    let data = self.read_meta(header_size).await?;
                    pax = parse_pax(&data);
                    continue;
                }
                b'L' => {
                    let data = self.read_meta(header_size).await?;
                    long_name = Some(c_string(&data));
                    continue;
                }
                // Global PAX headers and GNU long link names do not matter here.
                b'g' | b'K' => {
                    self.read_meta(header_size).await?;
                    continue;
                }
                _ => {}
            }
            let raw_path = pax
                .path
                .take()
                .or(long_name.take())
                .unwrap_or_else(|| header_name(&block));
            let size = pax.size.unwrap_or(header_size);
            let kind = match typeflag {
                b'0' | 0 | b'7' => EntryKind::Regular,
                b'1' => EntryKind::HardLink,
                b'2' => EntryKind::SymLink,
                b'3' | b'4' => EntryKind::Device,
                b'5' => EntryKind::Directory,
                b'6' => EntryKind::Fifo,
                b'S' => EntryKind::Sparse,
                other => EntryKind::Other(other),
            };
            // Old tars mark directories with a trailing slash only.
            let kind = if kind == EntryKind::Regular && raw_path.ends_with('/') {
                EntryKind::Directory
            } else {
                kind
            };
            self.data_left = size;
            self.pad_left = padding(size);
            return Ok(Some(TarEntry {
                path: normalize_path(&raw_path),
                kind,
                size,
                pax_sparse: pax.sparse,
            }));
        }
    }

    /// The next bytes of the current entry's data; `None` after its last byte.
    async fn read_data(&mut self) -> LayerResult<Option<Bytes>> {
        if self.data_left == 0 {
            let pad = std::mem::take(&mut self.pad_left);
            self.skip(pad).await?;
            return Ok(None);
        }
        if !self.fill().await? {
            return Err(LayerFailure::Corrupt(
                "the archive ends inside the disk file".to_string(),
            ));
        }
        let take = self.data_left.min(self.buf.len() as u64);
        // In range: `take` ≤ buf.len().
        let chunk = self.buf.split_to(take as usize);
        self.data_left -= take;
        Ok(Some(chunk))
    }

    /// Reads the layer to its end, so the blob's digest is checked.
    async fn drain(&mut self) -> LayerResult<()> {
        self.buf = Bytes::new();
        while self.layer.next().await?.is_some() {}
        Ok(())
    }
}

/// For the fuzz targets (`fuzz/`): the streaming tar reader over `data` (a layer, plain or
/// gzip, in chunks of `chunk` bytes), entry by entry to its end or its first error, checking
/// that no entry hands out more data than its header declared.
#[doc(hidden)]
pub fn fuzz_tar(data: &[u8], chunk: usize) {
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let mut tar = TarReader::new(LayerReader::new(futures::stream::iter(chunks).boxed()));
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    runtime.block_on(async {
        while let Ok(Some(entry)) = tar.next_entry().await {
            let mut read = 0u64;
            loop {
                match tar.read_data().await {
                    Ok(Some(bytes)) => read += bytes.len() as u64,
                    Ok(None) => break,
                    Err(_) => return,
                }
                assert!(read <= entry.size, "more data than declared: {entry:?}");
            }
        }
    });
}

/// What an entry means for the disk search.
enum DiskEntry<'a> {
    Ignored,
    /// The disk file; its name under `disk/`.
    File(&'a str),
    /// Under `disk/` but not a plain file: what it is.
    NotRegular(&'static str),
}

fn classify(entry: &TarEntry) -> DiskEntry<'_> {
    let Some(name) = entry.path.strip_prefix(DISK_DIR) else {
        return DiskEntry::Ignored;
    };
    let base = name.rsplit('/').next().unwrap_or(name);
    if name.is_empty() || base.starts_with(".wh.") {
        return DiskEntry::Ignored;
    }
    match entry.kind {
        EntryKind::Directory => DiskEntry::Ignored,
        EntryKind::Regular if entry.pax_sparse => DiskEntry::NotRegular("a sparse file"),
        EntryKind::Regular => DiskEntry::File(base),
        EntryKind::HardLink => DiskEntry::NotRegular("a hard link"),
        EntryKind::SymLink => DiskEntry::NotRegular("a symbolic link"),
        EntryKind::Device => DiskEntry::NotRegular("a device node"),
        EntryKind::Fifo => DiskEntry::NotRegular("a named pipe"),
        EntryKind::Sparse => DiskEntry::NotRegular("a sparse file"),
        EntryKind::Other(_) => DiskEntry::NotRegular("an unsupported kind of tar entry"),
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// A NUL-terminated field as text.
fn c_string(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// The name of a header: ustar's prefix joined with the name (GNU headers use the prefix
/// field for other things).
fn header_name(block: &[u8; BLOCK]) -> String {
    let name = c_string(&block[0..100]);
    if &block[257..263] == b"ustar\0" {
        let prefix = c_string(&block[345..500]);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

/// `./disk/x`, `/disk/x`, `disk//x/` → `disk/x`.
fn normalize_path(raw: &str) -> String {
    raw.split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// An octal field (NUL or space terminated), or GNU base-256 for big values.
fn parse_numeric(field: &[u8]) -> Option<u64> {
    if let Some(&first) = field.first()
        && first & 0x80 != 0
    {
        // Negative base-256 values make no sense for sizes.
        if first & 0x40 != 0 {
            return None;
        }
        let mut value: u64 = u64::from(first & 0x3f);
        for &byte in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(byte))?;
        }
        return Some(value);
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// The header checksum: the sum of all bytes with the checksum field as spaces (unsigned, or
/// signed as some old tars computed it).
fn checksum_ok(block: &[u8; BLOCK]) -> bool {
    let Some(stored) = parse_numeric(&block[148..156]) else {
        return false;
    };
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &byte) in block.iter().enumerate() {
        let byte = if (148..156).contains(&i) { b' ' } else { byte };
        unsigned += u64::from(byte);
        signed += i64::from(byte as i8);
    }
    stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed)
}

/// The records of a PAX extended header that matter: `path`, `size`, `GNU.sparse.*`.
fn parse_pax(data: &[u8]) -> Pax {
    let mut pax = Pax::default();
    let mut rest = data;
    while !rest.is_empty() {
        let Some(space) = rest.iter().position(|&b| b == b' ') else {
            break;
        };
        let Some(len) = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|t| t.parse::<usize>().ok())
        else {
            break;
        };
        if len <= space + 1 || len > rest.len() {
            break;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            let key = &record[..eq];
            let value = String::from_utf8_lossy(&record[eq + 1..]).into_owned();
            match key {
                b"path" => pax.path = Some(value),
                b"size" => pax.size = value.trim().parse().ok(),
                key if key.starts_with(b"GNU.sparse.") => pax.sparse = true,
                _ => {}
            }
        }
        rest = &rest[len..];
    }
    pax
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        entries(&mut builder);
        builder.into_inner().unwrap()
    }

    fn file(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, data).unwrap();
    }

    fn reader(bytes: Vec<u8>, chunk: usize) -> TarReader {
        let chunks: Vec<Result<Bytes, std::io::Error>> = bytes
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        TarReader::new(LayerReader::new(futures::stream::iter(chunks).boxed()))
    }

    async fn entries(mut tar: TarReader) -> Vec<(TarEntry, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(entry) = tar.next_entry().await.unwrap() {
            let mut data = Vec::new();
            while let Some(chunk) = tar.read_data().await.unwrap() {
                data.extend_from_slice(&chunk);
            }
            out.push((entry, data));
        }
        tar.drain().await.unwrap();
        out
    }

    #[tokio::test]
    async fn parses_plain_and_gzip_tars_in_any_chunking() {
        let long = format!("disk/{}.qcow2", "x".repeat(150));
        let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let archive = tar_with(|b| {
            let mut dir = tar::Header::new_ustar();
            dir.set_entry_type(tar::EntryType::Directory);
            dir.set_size(0);
            b.append_data(&mut dir, "disk/", std::io::empty()).unwrap();
            file(b, "etc/hostname", b"host\n");
            // GNU long name (`././@LongLink`).
            file(b, &long, &payload);
        });
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&archive).unwrap();
        let gzipped = gz.finish().unwrap();
        for bytes in [archive.clone(), gzipped] {
            for chunk in [1, 3, 511, 512, 4096, 1 << 20] {
                let got = entries(reader(bytes.clone(), chunk)).await;
                let paths: Vec<&str> = got.iter().map(|(e, _)| e.path.as_str()).collect();
                assert_eq!(paths, ["disk", "etc/hostname", long.as_str()]);
                assert_eq!(got[0].0.kind, EntryKind::Directory);
                assert_eq!(got[2].1, payload);
                assert_eq!(got[2].0.size, payload.len() as u64);
            }
        }
    }

    #[tokio::test]
    async fn pax_path_and_size_override_the_header() {
        // A record's length counts its own digits.
        let record = |key: &str, value: &str| {
            let body = format!(" {key}={value}\n");
            let mut len = body.len() + 1;
            while body.len() + len.to_string().len() != len {
                len = body.len() + len.to_string().len();
            }
            format!("{len}{body}")
        };
        let pax = format!(
            "{}{}",
            record("path", "./disk/from-pax.img"),
            record("size", "3")
        )
        .into_bytes();
        let archive = tar_with(|b| {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::XHeader);
            header.set_size(pax.len() as u64);
            b.append_data(&mut header, "PaxHeaders/x", pax.as_slice())
                .unwrap();
            file(b, "disk/short.img", b"abc");
        });
        let got = entries(reader(archive, 100)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.path, "disk/from-pax.img");
        assert_eq!(got[0].1, b"abc");
    }

    #[tokio::test]
    async fn zstd_layers_are_refused_by_their_magic() {
        let mut tar = reader(vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0], 2);
        assert!(matches!(tar.next_entry().await, Err(LayerFailure::Zstd)));
        let mut tar = reader(vec![7u8; 1024], 100);
        assert!(matches!(
            tar.next_entry().await,
            Err(LayerFailure::Corrupt(_))
        ));
    }

    #[test]
    fn the_source_and_its_opening_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let egress = Arc::default();
        let open = ContainerDisk::open("example.com/a:b", None, None, &egress);
        assert_send(&open);
    }

    #[test]
    fn numeric_fields() {
        assert_eq!(parse_numeric(b"0000644\0"), Some(0o644));
        assert_eq!(parse_numeric(b"     12 "), Some(0o12));
        assert_eq!(parse_numeric(b"\0\0\0\0"), Some(0));
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[4..].copy_from_slice(&(20u64 << 30).to_be_bytes());
        assert_eq!(parse_numeric(&big), Some(20 << 30));
        assert_eq!(parse_numeric(b"99"), None);
    }

    #[test]
    fn paths_and_classification() {
        assert_eq!(normalize_path("./disk/x.img"), "disk/x.img");
        assert_eq!(normalize_path("/disk//x.img"), "disk/x.img");
        assert_eq!(normalize_path("disk/"), "disk");
        let entry = |path: &str, kind| TarEntry {
            path: normalize_path(path),
            kind,
            size: 1,
            pax_sparse: false,
        };
        assert!(matches!(
            classify(&entry("./disk/a.img", EntryKind::Regular)),
            DiskEntry::File("a.img")
        ));
        assert!(matches!(
            classify(&entry("disk/.wh.a.img", EntryKind::Regular)),
            DiskEntry::Ignored
        ));
        assert!(matches!(
            classify(&entry("diskette/a.img", EntryKind::Regular)),
            DiskEntry::Ignored
        ));
        assert!(matches!(
            classify(&entry("disk/a.img", EntryKind::SymLink)),
            DiskEntry::NotRegular(_)
        ));
        assert!(matches!(
            classify(&entry("disk", EntryKind::Directory)),
            DiskEntry::Ignored
        ));
    }

    #[test]
    fn registry_hosts_follow_oci_client() {
        assert_eq!(registry_host("ubuntu:22.04"), "index.docker.io");
        assert_eq!(registry_host("docker.io/library/ubuntu"), "index.docker.io");
        assert_eq!(registry_host("quay.io/org/img:1"), "quay.io");
        assert_eq!(
            registry_host("127.0.0.1:5000/a/b@sha256:{}"),
            "127.0.0.1:5000"
        );
        assert_eq!(registry_host("localhost:5000/a"), "localhost:5000");
    }

    #[test]
    fn references_are_redacted() {
        assert_eq!(redact_reference("u:p@host/r:t"), "host/r:t");
        assert_eq!(redact_reference("host/r@sha256:ab"), "host/r@sha256:ab");
        assert_eq!(redact_reference("r@sha256:ab"), "r@sha256:ab");
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let credentials = RegistryCredentials {
            username: "robot".into(),
            password: "s3cr3t-pass".into(),
        };
        assert!(!format!("{credentials:?}").contains("s3cr3t"));
    }

    #[test]
    fn platforms_are_picked() {
        let entry = |digest: &str, platform: Option<(&str, &str)>| {
            let mut value = serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": 1,
            });
            if let Some((os, arch)) = platform {
                value["platform"] = serde_json::json!({"os": os, "architecture": arch});
            }
            serde_json::from_value::<ImageIndexEntry>(value).unwrap()
        };
        let index = [
            entry("sha256:arm", Some(("linux", "arm64"))),
            entry("sha256:amd", Some(("linux", "amd64"))),
        ];
        assert_eq!(pick_platform(&index).as_deref(), Some("sha256:amd"));
        let single = [
            entry("sha256:arm", Some(("linux", "arm64"))),
            entry("sha256:att", Some(("unknown", "unknown"))),
        ];
        assert_eq!(pick_platform(&single).as_deref(), Some("sha256:arm"));
        assert_eq!(pick_platform(&index[..1]).as_deref(), Some("sha256:arm"));
        let two = [
            entry("sha256:arm", Some(("linux", "arm64"))),
            entry("sha256:ppc", Some(("linux", "ppc64le"))),
        ];
        assert_eq!(pick_platform(&two), None);
    }
}
