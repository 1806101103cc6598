//! The registry client of a container image source: TLS roots from the caBundle, timeouts,
//! the egress proxy, and what its messages may show.

use std::time::Duration;

use oci_client::Client;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::ImageIndexEntry;

use super::super::{SourceError, reason};
use crate::k8s::secrets::RegistryCredentials;

/// Time allowed to establish a TCP (and TLS) connection to the registry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time without a byte from the registry.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// An image reference fit for messages even when unparsable: no `user:pass@` before the
/// registry.
pub(super) fn redact_reference(image: &str) -> String {
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
pub(super) fn pick_platform(manifests: &[ImageIndexEntry]) -> Option<String> {
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

pub(super) fn describe_platforms(manifests: &[ImageIndexEntry]) -> String {
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
pub(super) fn environment_proxy() -> bool {
    ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
}

pub(super) fn build_client(
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
pub(super) struct Scrubber {
    pub(super) secrets: crate::net::Scrubber,
    pub(super) has_credentials: bool,
}

impl Scrubber {
    pub(super) fn new(credentials: Option<&RegistryCredentials>) -> Self {
        Self {
            secrets: crate::net::Scrubber::new(credentials.map(|c| c.password.clone())),
            has_credentials: credentials.is_some(),
        }
    }

    pub(super) fn apply(&self, text: &str) -> String {
        self.secrets.apply(text)
    }
}

pub(super) fn truncate(text: &str, max: usize) -> String {
    let text = text.trim();
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}
