//! DVCR, the in-cluster OCI registry that holds the imported VM images.
//!
//! An image is repository `cvi/<name>` (or `vi/<namespace>/<name>`), tag = the resource's UID,
//! one uncompressed tar layer with `disk/<file>` and config labels describing the file (see
//! [`layout`]). The disk layer goes up as ONE streaming PATCH ([`DiskLayerUpload`]), so an
//! import costs about what the registry takes to accept the bytes; the small requests (config,
//! manifest, HEAD, pulls) go through oci-client. Nothing is visible before [`Dvcr::tag_image`].

pub mod error;
pub mod layout;
mod upload;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderValue, LOCATION, WWW_AUTHENTICATE};
use tracing::debug;
use url::Url;

pub use error::DvcrError;
pub use layout::{ImageLabels, ImageManifest, disk_file_name};
pub use upload::{DiskLayerUpload, LayerSnapshot, SessionProbe, SessionStatus};

/// How long a small request (HEAD, config, manifest, DELETE) may take.
const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const USER_AGENT: &str = concat!("image-catalog/", env!("CARGO_PKG_VERSION"));

/// Where DVCR is and how to log in.
#[derive(Clone, Default)]
pub struct DvcrConfig {
    /// `host:port`, no scheme: DVCR is always reached over https.
    pub registry: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM of the CA that signed DVCR's certificate; when set, the only roots trusted.
    pub ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for DvcrConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DvcrConfig")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "ca_pem",
                &self
                    .ca_pem
                    .as_ref()
                    .map(|pem| format!("<{} bytes>", pem.len())),
            )
            .finish()
    }
}

/// A layer blob stored in DVCR: the whole tar, not the disk file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLayer {
    /// `sha256:<hex>` of the tar.
    pub digest: String,
    /// Bytes of the tar.
    pub size: u64,
}

/// An image read back from DVCR.
#[derive(Debug, Clone)]
pub struct StoredImage {
    /// Digest of the manifest, `sha256:<hex>`.
    pub manifest_digest: String,
    pub manifest: ImageManifest,
    /// All config labels, including the `source-image-*` ones.
    pub labels: BTreeMap<String, String>,
    /// The disk layer.
    pub layer: StoredLayer,
    /// The name of the disk file inside the layer (`disk/<file_name>`).
    pub file_name: String,
    /// Bytes of the disk file (from the tar header).
    pub file_size: u64,
}

impl StoredImage {
    /// The `source-image-*` labels, parsed.
    pub fn image_labels(&self) -> Result<ImageLabels, DvcrError> {
        ImageLabels::from_map(&self.labels).map_err(|message| DvcrError::InvalidImage {
            reference: self.manifest_digest.clone(),
            message,
        })
    }
}

/// A DVCR client: cheap to clone, all clones share the connections.
#[derive(Clone)]
pub struct Dvcr {
    inner: Arc<Inner>,
}

struct Inner {
    /// `host:port`.
    registry: String,
    /// `https://host:port/`.
    base: Url,
    /// For the streaming upload and the requests oci-client does not offer.
    http: reqwest::Client,
    oci: oci_client::Client,
    oci_auth: RegistryAuth,
    /// `Basic ...`, marked sensitive so hyper never logs it.
    basic: Option<HeaderValue>,
}

impl fmt::Debug for Dvcr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dvcr")
            .field("registry", &self.inner.registry)
            .finish_non_exhaustive()
    }
}

impl Dvcr {
    pub fn new(config: DvcrConfig) -> Result<Self, DvcrError> {
        crate::tls::install_crypto_provider();

        let registry = config.registry.trim().trim_end_matches('/').to_string();
        if registry.is_empty() || registry.contains(['/', '@', '?', '#', ' ']) {
            return Err(DvcrError::Config(format!(
                "registry must be host:port without scheme or path, got {registry:?}"
            )));
        }
        let base = Url::parse(&format!("https://{registry}/"))
            .ok()
            .filter(|url| url.host_str().is_some())
            .ok_or_else(|| DvcrError::Config(format!("registry {registry:?} is not host:port")))?;

        let mut http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT)
            // Keepalive notices a registry that vanished mid-upload without closing the socket.
            .tcp_keepalive(Duration::from_secs(30))
            // The layer upload is one long request: HTTP/1.1 has no flow-control window of its
            // own, while Go's HTTP/2 server (the registry) limits each upload stream's window;
            // `curl -T` of 1 GiB measured up to twice as slow over HTTP/2 here.
            .http1_only();
        let mut oci_config = ClientConfig {
            protocol: ClientProtocol::Https,
            // POST + PUT for the config blob instead of POST + PATCH + PUT.
            use_monolithic_push: true,
            read_timeout: Some(SMALL_REQUEST_TIMEOUT),
            connect_timeout: Some(CONNECT_TIMEOUT),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        if let Some(pem) = &config.ca_pem {
            let certs = crate::tls::pem_certificates(pem)
                .map_err(|error| DvcrError::Config(format!("the DVCR CA {error}")))?;
            let blocks = crate::tls::split_pem_certificates(pem);
            http = http.tls_certs_only(certs);
            oci_config.tls_certs_only = blocks
                .into_iter()
                .map(|data| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data,
                })
                .collect();
        }
        let http = http
            .build()
            .map_err(|e| DvcrError::Config(format!("building the HTTP client: {e}")))?;
        let oci = oci_client::Client::try_from(oci_config)
            .map_err(|e| DvcrError::Config(format!("building the OCI client: {e}")))?;

        let (oci_auth, basic) = match &config.username {
            Some(username) => {
                let password = config.password.clone().unwrap_or_default();
                let basic = basic_auth_header(username, &password)?;
                (RegistryAuth::Basic(username.clone(), password), Some(basic))
            }
            None => (RegistryAuth::Anonymous, None),
        };

        Ok(Self {
            inner: Arc::new(Inner {
                registry,
                base,
                http,
                oci,
                oci_auth,
                basic,
            }),
        })
    }

    /// `host:port`.
    pub fn registry(&self) -> &str {
        &self.inner.registry
    }

    /// The image URL users see: `<host:port>/<repository>:<tag>`.
    pub fn image_url(&self, repository: &str, tag: &str) -> String {
        format!("{}/{repository}:{tag}", self.inner.registry)
    }

    /// Opens an upload session and starts the single streaming request of the disk layer for a
    /// file of exactly `file_size` bytes named `file_name` (sanitised with [`disk_file_name`]).
    pub async fn start_disk_layer(
        &self,
        repository: &str,
        file_name: &str,
        file_size: u64,
    ) -> Result<DiskLayerUpload, DvcrError> {
        check_repository(repository)?;
        let file_name = disk_file_name(file_name);
        let url = self.url(&format!("v2/{repository}/blobs/uploads/"))?;
        let (response, auth) = self
            .send("open upload", repository, &url, |http, url| {
                http.post(url).header("Content-Length", "0")
            })
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(response_error("open upload", response).await);
        }
        let location = location(&response, "open upload")?;
        debug!(
            repository,
            file_name, file_size, "DVCR upload session opened"
        );
        Ok(DiskLayerUpload::start(
            self.clone(),
            repository,
            location,
            auth,
            &file_name,
            file_size,
        ))
    }

    /// Pushes the config and the manifest under `tag`: the only step that makes the image
    /// visible. Returns the manifest digest.
    pub async fn tag_image(
        &self,
        repository: &str,
        tag: &str,
        layer: &StoredLayer,
        labels: &ImageLabels,
    ) -> Result<String, DvcrError> {
        check_repository(repository)?;
        check_tag(tag)?;
        check_digest(&layer.digest)?;
        let reference = self.reference(repository, tag);
        self.inner
            .oci
            .store_auth_if_needed(&self.inner.registry, &self.inner.oci_auth)
            .await;

        let config = layout::config_json(&layer.digest, labels);
        let config_digest = layout::sha256_digest(&config);
        let config_size = config.len() as u64;
        self.inner
            .oci
            .push_blob(&reference, config, &config_digest)
            .await
            .map_err(|e| DvcrError::from_oci("push config", e))?;

        let manifest =
            layout::manifest_json(&config_digest, config_size, &layer.digest, layer.size);
        let manifest_digest = layout::sha256_digest(&manifest);
        self.inner
            .oci
            .push_manifest_raw(
                &reference,
                manifest,
                HeaderValue::from_static(layout::MANIFEST_MEDIA_TYPE),
            )
            .await
            .map_err(|e| DvcrError::from_oci("push manifest", e))?;
        debug!(repository, tag, manifest_digest, "DVCR image tagged");
        Ok(manifest_digest)
    }

    /// The digest of the manifest tagged `tag`, None when there is none.
    pub async fn manifest_digest(
        &self,
        repository: &str,
        tag: &str,
    ) -> Result<Option<String>, DvcrError> {
        check_repository(repository)?;
        check_tag(tag)?;
        self.head_manifest(&self.reference(repository, tag)).await
    }

    async fn head_manifest(&self, reference: &Reference) -> Result<Option<String>, DvcrError> {
        match self
            .inner
            .oci
            .fetch_manifest_digest(reference, &self.inner.oci_auth)
            .await
        {
            Ok(digest) => Ok(Some(digest)),
            Err(e) => {
                let error = DvcrError::from_oci("head manifest", e);
                if error.is_not_found() {
                    Ok(None)
                } else {
                    Err(error)
                }
            }
        }
    }

    /// Deletes the image tagged `tag`; false when there was none.
    ///
    /// Deletes the manifest by digest, which also removes the tag. When another tag of the
    /// repository points at the same manifest (same file and labels imported twice), only the
    /// tag is deleted, so the other image stays.
    pub async fn delete_image(&self, repository: &str, tag: &str) -> Result<bool, DvcrError> {
        check_repository(repository)?;
        check_tag(tag)?;
        let Some(digest) = self.manifest_digest(repository, tag).await? else {
            return Ok(false);
        };
        let target = if self.digest_shared(repository, tag, &digest).await? {
            tag.to_string()
        } else {
            digest
        };
        let url = self.url(&format!("v2/{repository}/manifests/{target}"))?;
        let (response, _) = self
            .send("delete manifest", repository, &url, |http, url| {
                http.delete(url).timeout(SMALL_REQUEST_TIMEOUT)
            })
            .await?;
        match response.status() {
            StatusCode::ACCEPTED | StatusCode::OK | StatusCode::NO_CONTENT => {
                debug!(repository, tag, target, "DVCR image deleted");
                Ok(true)
            }
            // Deleted by someone else in between.
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(response_error("delete manifest", response).await),
        }
    }

    /// Whether a tag other than `tag` points at `digest`.
    async fn digest_shared(
        &self,
        repository: &str,
        tag: &str,
        digest: &str,
    ) -> Result<bool, DvcrError> {
        let reference = self.reference(repository, tag);
        let tags = self
            .inner
            .oci
            .list_tags(&reference, &self.inner.oci_auth, None, None)
            .await
            .map_err(|e| DvcrError::from_oci("list tags", e))?
            .tags;
        for other in tags.iter().filter(|t| t.as_str() != tag) {
            let other_reference = self.reference(repository, other);
            if self.head_manifest(&other_reference).await?.as_deref() == Some(digest) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Reads an image back and checks that it has the DVCR disk layout.
    pub async fn read_image(&self, repository: &str, tag: &str) -> Result<StoredImage, DvcrError> {
        check_repository(repository)?;
        check_tag(tag)?;
        let reference = self.reference(repository, tag);
        let name = self.image_url(repository, tag);
        let invalid = |message: String| DvcrError::InvalidImage {
            reference: name.clone(),
            message,
        };

        let (raw, manifest_digest) = self
            .inner
            .oci
            .pull_manifest_raw(
                &reference,
                &self.inner.oci_auth,
                &[layout::MANIFEST_MEDIA_TYPE],
            )
            .await
            .map_err(|e| not_found_as(DvcrError::from_oci("pull manifest", e), &name))?;
        let manifest: ImageManifest = serde_json::from_slice(&raw)
            .map_err(|e| invalid(format!("manifest is not an OCI image manifest: {e}")))?;
        if manifest.media_type.as_deref() != Some(layout::MANIFEST_MEDIA_TYPE) {
            return Err(invalid(format!(
                "manifest media type {:?}",
                manifest.media_type
            )));
        }
        if manifest.config.media_type != layout::CONFIG_MEDIA_TYPE {
            return Err(invalid(format!(
                "config media type {}",
                manifest.config.media_type
            )));
        }
        let [layer] = manifest.layers.as_slice() else {
            return Err(invalid(format!(
                "{} layers instead of 1",
                manifest.layers.len()
            )));
        };
        if layer.media_type != layout::LAYER_MEDIA_TYPE {
            return Err(invalid(format!("layer media type {}", layer.media_type)));
        }
        check_digest(&manifest.config.digest)?;
        check_digest(&layer.digest)?;

        let mut config = Vec::new();
        self.inner
            .oci
            .pull_blob(&reference, manifest.config.digest.as_str(), &mut config)
            .await
            .map_err(|e| not_found_as(DvcrError::from_oci("pull config", e), &name))?;
        let config: layout::ImageConfig = serde_json::from_slice(&config)
            .map_err(|e| invalid(format!("config is not an OCI image config: {e}")))?;
        if config.rootfs.diff_ids != [layer.digest.clone()] {
            return Err(invalid(
                "rootfs.diff_ids is not the layer digest".to_string(),
            ));
        }
        let labels = config.config.labels.unwrap_or_default();

        let headers = self.layer_headers(&reference, &layer.digest, &name).await?;
        let (file_name, file_size) = layout::parse_disk_headers(&headers).map_err(invalid)?;
        if layout::layer_size(file_size) != layer.size {
            return Err(invalid(format!(
                "layer of {} bytes cannot hold a {file_size}-byte file",
                layer.size
            )));
        }

        let layer = StoredLayer {
            digest: layer.digest.clone(),
            size: layer.size,
        };
        Ok(StoredImage {
            manifest_digest,
            manifest,
            labels,
            layer,
            file_name,
            file_size,
        })
    }

    /// The bytes of the disk file of a stored image, streamed straight from its layer (a range
    /// request past the two tar headers), for copies that cannot mount and for verification.
    pub async fn disk_file_stream(
        &self,
        repository: &str,
        image: &StoredImage,
    ) -> Result<DiskFileStream, DvcrError> {
        // `read_image` gave it, a manifest read, so the client holds pull credentials.
        self.layer_file_stream(repository, &image.layer, &image.file_name, image.file_size)
            .await
    }

    /// The bytes of the disk file in a committed `layer` that no tag names yet (a resumed
    /// import's, read back before its tag), as in [`disk_file_stream`](Self::disk_file_stream).
    pub async fn untagged_disk_file_stream(
        &self,
        repository: &str,
        layer: &StoredLayer,
        file_name: &str,
        file_size: u64,
    ) -> Result<DiskFileStream, DvcrError> {
        check_repository(repository)?;
        // Blob reads use the credentials of an earlier manifest read; without one, log in.
        self.inner
            .oci
            .auth(
                &self.reference(repository, "latest"),
                &self.inner.oci_auth,
                RegistryOperation::Pull,
            )
            .await
            .map_err(|e| DvcrError::from_oci("pull layer", e))?;
        self.layer_file_stream(repository, layer, file_name, file_size)
            .await
    }

    async fn layer_file_stream(
        &self,
        repository: &str,
        layer: &StoredLayer,
        file_name: &str,
        file_size: u64,
    ) -> Result<DiskFileStream, DvcrError> {
        use oci_client::client::BlobResponse;
        check_repository(repository)?;
        check_digest(&layer.digest)?;
        let reference = self.reference(repository, "latest");
        let name = format!("{}/{repository}@{}", self.inner.registry, layer.digest);
        let response = self
            .inner
            .oci
            .pull_blob_stream_partial(
                &reference,
                layer.digest.as_str(),
                layout::HEADERS_LEN,
                Some(file_size),
            )
            .await
            .map_err(|e| not_found_as(DvcrError::from_oci("pull layer", e), &name))?;
        // A registry that ignores Range sends the whole layer: skip the headers then.
        let (skip, sized) = match response {
            BlobResponse::Partial(sized) => (0, sized),
            BlobResponse::Full(sized) => (layout::HEADERS_LEN, sized),
        };
        Ok(DiskFileStream {
            stream: sized.stream,
            skip,
            remaining: file_size,
            file_name: file_name.to_string(),
            file_size,
        })
    }

    /// The whole layer blob of a stored image, as the registry serves it, for verification:
    /// the caller checks the digest itself (a range request, so the client does not stop at
    /// a mismatch before the caller has seen every byte).
    pub async fn layer_stream(
        &self,
        repository: &str,
        layer: &StoredLayer,
    ) -> Result<futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>, DvcrError>
    {
        use oci_client::client::BlobResponse;
        check_repository(repository)?;
        check_digest(&layer.digest)?;
        let reference = self.reference(repository, "latest");
        let name = format!("{}/{repository}@{}", self.inner.registry, layer.digest);
        let response = self
            .inner
            .oci
            .pull_blob_stream_partial(&reference, layer.digest.as_str(), 0, Some(layer.size))
            .await
            .map_err(|e| not_found_as(DvcrError::from_oci("pull layer", e), &name))?;
        let (BlobResponse::Full(sized) | BlobResponse::Partial(sized)) = response;
        Ok(sized.stream)
    }

    /// The first two tar blocks of a layer (a range request: the layer may be gigabytes).
    async fn layer_headers(
        &self,
        reference: &Reference,
        digest: &str,
        name: &str,
    ) -> Result<Vec<u8>, DvcrError> {
        use oci_client::client::BlobResponse;
        let want = layout::HEADERS_LEN as usize;
        let response = self
            .inner
            .oci
            .pull_blob_stream_partial(reference, digest, 0, Some(want as u64))
            .await
            .map_err(|e| not_found_as(DvcrError::from_oci("pull layer", e), name))?;
        let (BlobResponse::Full(sized) | BlobResponse::Partial(sized)) = response;
        let mut stream = sized.stream;
        let mut headers = Vec::with_capacity(want);
        // A registry that ignores Range sends the whole layer: stop reading after the headers.
        while headers.len() < want {
            match stream.next().await {
                Some(Ok(chunk)) => headers.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(DvcrError::Unavailable {
                        operation: "pull layer",
                        status: None,
                        message: e.to_string(),
                    });
                }
                None => break,
            }
        }
        headers.truncate(want);
        Ok(headers)
    }

    /// Whether the blob `digest` can be read from `repository`.
    pub async fn blob_exists(&self, repository: &str, digest: &str) -> Result<bool, DvcrError> {
        check_repository(repository)?;
        check_digest(digest)?;
        let reference = self.reference(repository, "latest");
        self.inner
            .oci
            .store_auth_if_needed(&self.inner.registry, &self.inner.oci_auth)
            .await;
        self.inner
            .oci
            .blob_exists(&reference, digest)
            .await
            .map_err(|e| DvcrError::from_oci("check blob", e))
    }

    /// Makes the blob `digest` of `from_repository` available in `to_repository` without
    /// uploading it. False when the registry declines (it then offers an upload session, which
    /// is cancelled here); the caller must then upload the blob itself.
    pub async fn mount_blob(
        &self,
        from_repository: &str,
        to_repository: &str,
        digest: &str,
    ) -> Result<bool, DvcrError> {
        check_repository(from_repository)?;
        check_repository(to_repository)?;
        check_digest(digest)?;
        let mut url = self.url(&format!("v2/{to_repository}/blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", digest)
            .append_pair("from", from_repository);
        // oci-client's mount_blob treats the 202 fallback as an error and leaks its session.
        let (response, auth) = self
            .send("mount blob", to_repository, &url, |http, url| {
                http.post(url)
                    .header("Content-Length", "0")
                    .timeout(SMALL_REQUEST_TIMEOUT)
            })
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                if let Ok(session) = location(&response, "mount blob") {
                    self.cancel_upload(&session, auth.as_ref()).await;
                }
                Ok(false)
            }
            _ => Err(response_error("mount blob", response).await),
        }
    }

    /// DELETE on an upload session, best effort: the registry purges stale sessions anyway.
    async fn cancel_upload(&self, session: &Url, auth: Option<&HeaderValue>) {
        let request = self
            .inner
            .http
            .delete(session.clone())
            .timeout(SMALL_REQUEST_TIMEOUT);
        let request = self.authorize(request, session, auth);
        match request.send().await {
            Ok(response) => debug!(status = %response.status(), "DVCR upload session cancelled"),
            Err(e) => debug!(error = %e, "cancelling the DVCR upload session failed"),
        }
    }

    fn reference(&self, repository: &str, tag: &str) -> Reference {
        Reference::with_tag(
            self.inner.registry.clone(),
            repository.to_string(),
            tag.to_string(),
        )
    }

    fn url(&self, path: &str) -> Result<Url, DvcrError> {
        self.inner
            .base
            .join(path)
            .map_err(|e| DvcrError::InvalidReference(format!("{path}: {e}")))
    }

    /// Adds the credentials when `url` is the registry itself: an upload Location may point
    /// elsewhere (a storage redirect), and credentials never cross hosts.
    fn authorize(
        &self,
        request: reqwest::RequestBuilder,
        url: &Url,
        auth: Option<&HeaderValue>,
    ) -> reqwest::RequestBuilder {
        match auth {
            Some(auth) if crate::net::same_origin(url, &self.inner.base) => {
                request.header(AUTHORIZATION, auth.clone())
            }
            _ => request,
        }
    }

    /// Sends the request `build` makes for `url` with basic auth; when the registry wants a
    /// bearer token instead, gets one through oci-client and sends it again. Returns the
    /// response and the Authorization that worked, for the follow-up requests of a session.
    async fn send(
        &self,
        operation: &'static str,
        repository: &str,
        url: &Url,
        build: impl Fn(&reqwest::Client, Url) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::Response, Option<HeaderValue>), DvcrError> {
        let request = build(&self.inner.http, url.clone());
        let response = self
            .authorize(request, url, self.inner.basic.as_ref())
            .send()
            .await
            .map_err(|e| DvcrError::network(operation, &e))?;
        if response.status() != StatusCode::UNAUTHORIZED || !bearer_challenge(&response) {
            return Ok((response, self.inner.basic.clone()));
        }
        let token = self.bearer_token(operation, repository).await?;
        let response = self
            .authorize(build(&self.inner.http, url.clone()), url, Some(&token))
            .send()
            .await
            .map_err(|e| DvcrError::network(operation, &e))?;
        Ok((response, Some(token)))
    }

    async fn bearer_token(
        &self,
        operation: &'static str,
        repository: &str,
    ) -> Result<HeaderValue, DvcrError> {
        let reference = self.reference(repository, "latest");
        let token = self
            .inner
            .oci
            .auth(&reference, &self.inner.oci_auth, RegistryOperation::Push)
            .await
            .map_err(|e| DvcrError::from_oci(operation, e))?
            .ok_or(DvcrError::AuthFailed {
                operation,
                status: 401,
            })?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| DvcrError::protocol(operation, "token is not a valid header value"))?;
        value.set_sensitive(true);
        Ok(value)
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }
}

fn bearer_challenge(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.trim_start().to_ascii_lowercase().starts_with("bearer"))
}

fn basic_auth_header(username: &str, password: &str) -> Result<HeaderValue, DvcrError> {
    use base64::Engine as _;
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .map_err(|_| DvcrError::Config("credentials are not valid in a header".to_string()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The Location of `response` as an absolute URL: registries send relative or absolute ones;
/// the query (`_state`) is part of it and must be sent back.
pub(crate) fn location(
    response: &reqwest::Response,
    operation: &'static str,
) -> Result<Url, DvcrError> {
    let value = response
        .headers()
        .get(LOCATION)
        .ok_or_else(|| DvcrError::protocol(operation, "no Location header"))?
        .to_str()
        .map_err(|_| DvcrError::protocol(operation, "Location header is not text"))?;
    response
        .url()
        .join(value)
        .map_err(|e| DvcrError::protocol(operation, format!("bad Location {value:?}: {e}")))
}

/// The error an unsuccessful response stands for (its body is small: an OCI error envelope).
pub(crate) async fn response_error(
    operation: &'static str,
    response: reqwest::Response,
) -> DvcrError {
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap_or_default();
    DvcrError::from_status(operation, status, &body)
}

fn not_found_as(error: DvcrError, reference: &str) -> DvcrError {
    if error.is_not_found() {
        DvcrError::NotFound {
            reference: reference.to_string(),
        }
    } else {
        error
    }
}

fn check_repository(repository: &str) -> Result<(), DvcrError> {
    if layout::is_valid_repository(repository) {
        Ok(())
    } else {
        Err(DvcrError::InvalidReference(format!(
            "repository {repository:?}"
        )))
    }
}

fn check_tag(tag: &str) -> Result<(), DvcrError> {
    if layout::is_valid_tag(tag) {
        Ok(())
    } else {
        Err(DvcrError::InvalidReference(format!("tag {tag:?}")))
    }
}

fn check_digest(digest: &str) -> Result<(), DvcrError> {
    if layout::is_sha256_digest(digest) {
        Ok(())
    } else {
        Err(DvcrError::InvalidReference(format!("digest {digest:?}")))
    }
}

/// The disk file of a stored image, as a stream of its bytes; see [`Dvcr::disk_file_stream`].
pub struct DiskFileStream {
    stream: futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
    /// Bytes to drop before the file starts (when the registry ignored the range).
    skip: u64,
    /// File bytes still to come.
    remaining: u64,
    pub file_name: String,
    pub file_size: u64,
}

impl DiskFileStream {
    /// The next bytes of the file; `None` after exactly `file_size` bytes.
    pub async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, DvcrError> {
        use futures::StreamExt;
        while self.remaining > 0 {
            let Some(chunk) = self.stream.next().await else {
                return Err(DvcrError::Unavailable {
                    operation: "pull layer",
                    status: None,
                    message: format!(
                        "the layer ended {} bytes before the end of the disk file",
                        self.remaining
                    ),
                });
            };
            let mut chunk = chunk.map_err(|e| DvcrError::Unavailable {
                operation: "pull layer",
                status: None,
                message: e.to_string(),
            })?;
            if self.skip > 0 {
                let dropped = self.skip.min(chunk.len() as u64);
                let _ = chunk.split_to(dropped as usize);
                self.skip -= dropped;
            }
            if chunk.len() as u64 > self.remaining {
                chunk.truncate(self.remaining as usize);
            }
            if !chunk.is_empty() {
                self.remaining -= chunk.len() as u64;
                return Ok(Some(chunk));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let config = DvcrConfig {
            registry: "dvcr:5000".to_string(),
            username: Some("admin".to_string()),
            password: Some("s3cr3t-pass".to_string()),
            ca_pem: None,
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cr3t-pass"), "{debug}");
        assert!(debug.contains("admin"));
        let dvcr = Dvcr::new(config).unwrap();
        let debug = format!("{dvcr:?}");
        assert!(!debug.contains("s3cr3t-pass"), "{debug}");
    }

    #[test]
    fn registry_must_be_host_port() {
        for bad in ["", "https://dvcr:5000", "dvcr:5000/x", "user@dvcr"] {
            let err = Dvcr::new(DvcrConfig {
                registry: bad.to_string(),
                ..DvcrConfig::default()
            })
            .unwrap_err();
            assert_eq!(err.reason(), "DVCRMisconfigured", "{bad}");
        }
        let dvcr = Dvcr::new(DvcrConfig {
            registry: "127.0.0.1:5000".to_string(),
            ..DvcrConfig::default()
        })
        .unwrap();
        assert_eq!(
            dvcr.image_url("cvi/ubuntu", "0b8a"),
            "127.0.0.1:5000/cvi/ubuntu:0b8a"
        );
    }

    #[test]
    fn a_ca_without_certificates_is_refused() {
        let err = Dvcr::new(DvcrConfig {
            registry: "dvcr:5000".to_string(),
            ca_pem: Some(b"not a pem".to_vec()),
            ..DvcrConfig::default()
        })
        .unwrap_err();
        assert_eq!(err.reason(), "DVCRMisconfigured");
    }

    #[test]
    fn pem_bundles_are_split() {
        let one = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----";
        let bundle = format!("junk\n{one}\n{one}\n");
        let blocks = crate::tls::split_pem_certificates(bundle.as_bytes());
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0], format!("{one}\n").into_bytes());
    }
}
