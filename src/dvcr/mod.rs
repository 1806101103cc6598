//! DVCR, the in-cluster OCI registry that holds the imported VM images.
//!
//! An image is repository `cvi/<name>` (or `vi/<namespace>/<name>`), tag = the resource's UID,
//! one uncompressed tar layer with `disk/<file>` and config labels describing the file (see
//! [`layout`]). The disk layer goes up as ONE streaming PATCH ([`DiskLayerUpload`]), so an
//! import costs about what the registry takes to accept the bytes; the small requests (config,
//! manifest, HEAD, pulls) go through oci-client. Nothing is visible before [`Dvcr::tag_image`].

mod auth;
pub mod error;
pub mod layout;
mod read;
mod upload;
mod write;

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

use auth::basic_auth_header;
pub use error::DvcrError;
pub use layout::{ImageLabels, ImageManifest, disk_file_name};
pub use read::DiskFileStream;
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

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }
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
