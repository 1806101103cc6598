//! Re-verification of stored images: stream the image back from DVCR and check that the
//! manifest is there, that the layer blob hashes to its digest, and that the disk file hashes
//! to every checksum of the spec (or, without any, to the sha256 recorded at import time).
//!
//! Pure parts decide ([`LayerHasher`], [`expected`], [`judge`]); [`verify`] reads DVCR and
//! [`record`] writes the `Verified` condition under its own field manager, beside the import
//! controller's conditions.

use md5::Md5;
use sha2::{Digest, Sha256};

use crate::api::ClusterVirtualImage;
use crate::api::datasource::Checksum;
use crate::dvcr::layout::{self, ImageLabels};
use crate::dvcr::{Dvcr, DvcrError, StoredImage};

pub mod check;
pub mod schedule;
pub mod scheduler;

pub const VERIFIED: &str = "Verified";

/// What to do about stored bytes that are wrong or gone.
pub const REIMPORT: &str = "delete the ClusterVirtualImage and create it again to import it anew";

/// The Event publisher of verifications, scheduled or on demand.
pub fn events(client: &kube::Client) -> crate::k8s::events::EventPublisher {
    crate::k8s::events::EventPublisher::new(client.clone(), "image-catalog-verify")
}

/// The outcome of one verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every check passed; what was checked.
    Verified(String),
    ChecksumMismatch(String),
    ImageLost(String),
    SourceChanged(String),
    /// The verification could not finish (DVCR unreachable, an unreadable image): nothing is
    /// known about the bytes.
    VerificationFailed(String),
}

impl Verdict {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Verified(_) => "Verified",
            Self::ChecksumMismatch(_) => "ChecksumMismatch",
            Self::ImageLost(_) => "ImageLost",
            Self::SourceChanged(_) => "SourceChanged",
            Self::VerificationFailed(_) => "VerificationFailed",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Verified(message)
            | Self::ChecksumMismatch(message)
            | Self::ImageLost(message)
            | Self::SourceChanged(message)
            | Self::VerificationFailed(message) => message,
        }
    }

    pub fn is_verified(&self) -> bool {
        matches!(self, Self::Verified(_))
    }
}

/// Where an expected checksum comes from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Spec,
    Import,
}

/// What the stored bytes must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// `sha256:<hex>` of the layer tar.
    pub layer_digest: String,
    pub layer_size: u64,
    pub file_name: String,
    pub file_size: u64,
    pub sha256: Option<(String, Origin)>,
    pub md5: Option<(String, Origin)>,
}

/// The checksums to hold the stored file to: the spec's when it has any (they are of the
/// downloaded file, which is what DVCR stores), else those recorded at import time.
pub fn expected(image: &StoredImage, labels: &ImageLabels, spec: Option<&Checksum>) -> Expected {
    let from_spec = |value: Option<&String>| {
        value
            .filter(|v| !v.is_empty())
            .map(|v| (v.to_ascii_lowercase(), Origin::Spec))
    };
    let spec_sha256 = from_spec(spec.and_then(|c| c.sha256.as_ref()));
    let spec_md5 = from_spec(spec.and_then(|c| c.md5.as_ref()));
    let spec_has_any = spec_sha256.is_some() || spec_md5.is_some();
    let recorded = |value: &Option<String>| {
        value
            .as_ref()
            .filter(|_| !spec_has_any)
            .map(|v| (v.to_ascii_lowercase(), Origin::Import))
    };
    Expected {
        layer_digest: image.layer.digest.clone(),
        layer_size: image.layer.size,
        file_name: image.file_name.clone(),
        file_size: image.file_size,
        sha256: spec_sha256.or_else(|| recorded(&labels.sha256)),
        md5: spec_md5.or_else(|| recorded(&labels.md5)),
    }
}

/// Hashes a layer tar as it streams by: the whole blob, and the disk file inside it (the
/// bytes after the two tar headers, `file_size` of them).
pub struct LayerHasher {
    offset: u64,
    file_size: u64,
    blob: Sha256,
    file_sha256: Sha256,
    file_md5: Md5,
}

/// What a [`LayerHasher`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measured {
    pub layer_bytes: u64,
    /// `sha256:<hex>`.
    pub layer_digest: String,
    pub file_sha256: String,
    pub file_md5: String,
}

impl LayerHasher {
    pub fn new(file_size: u64) -> Self {
        Self {
            offset: 0,
            file_size,
            blob: Sha256::new(),
            file_sha256: Sha256::new(),
            file_md5: Md5::new(),
        }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.blob.update(chunk);
        let start = layout::HEADERS_LEN;
        let end = start + self.file_size;
        let (from, to) = (self.offset, self.offset + chunk.len() as u64);
        let (a, b) = (from.max(start), to.min(end));
        if a < b {
            let part = &chunk[(a - from) as usize..(b - from) as usize];
            self.file_sha256.update(part);
            self.file_md5.update(part);
        }
        self.offset = to;
    }

    pub fn finish(self) -> Measured {
        Measured {
            layer_bytes: self.offset,
            layer_digest: format!("sha256:{}", hex::encode(self.blob.finalize())),
            file_sha256: hex::encode(self.file_sha256.finalize()),
            file_md5: hex::encode(self.file_md5.finalize()),
        }
    }
}

/// The verdict on what was read.
pub fn judge(expected: &Expected, measured: &Measured) -> Verdict {
    let file = format!("disk/{}", expected.file_name);
    let reimport =
        format!("the stored bytes are not the ones imported; {REIMPORT}, and check DVCR's storage");
    if measured.layer_bytes != expected.layer_size {
        return Verdict::ChecksumMismatch(format!(
            "the layer {} in DVCR has {} bytes, its manifest says {}; {reimport}",
            expected.layer_digest, measured.layer_bytes, expected.layer_size
        ));
    }
    if measured.layer_digest != expected.layer_digest {
        return Verdict::ChecksumMismatch(format!(
            "the layer blob hashes to {}, not to its digest {}; {reimport}",
            measured.layer_digest, expected.layer_digest
        ));
    }
    let mut checked = vec![format!("layer {}", short_digest(&expected.layer_digest))];
    for (name, want, got) in [
        ("sha256", &expected.sha256, &measured.file_sha256),
        ("md5", &expected.md5, &measured.file_md5),
    ] {
        let Some((want, origin)) = want else { continue };
        let of = match origin {
            Origin::Spec => "the spec's",
            Origin::Import => "the one recorded at import",
        };
        if want != got {
            return Verdict::ChecksumMismatch(format!(
                "{file} has {name} {got}, not {of} {want}; {reimport}"
            ));
        }
        checked.push(format!("{name} of {file}"));
    }
    Verdict::Verified(format!("{} match", checked.join(", ")))
}

fn short_digest(digest: &str) -> &str {
    let end = digest.len().min("sha256:".len() + 12);
    &digest[..end]
}

/// Whether an image asks for the upstream check (`imagecatalog.dev/verify-upstream: "true"`,
/// from its catalog entry or set by hand).
pub fn wants_upstream_check(cvi: &ClusterVirtualImage) -> bool {
    use kube::ResourceExt;
    cvi.annotations()
        .get(crate::api::catalog::keys::VERIFY_UPSTREAM)
        .is_some_and(|value| value.trim() == "true")
}

/// Verifies the stored image of `cvi` against DVCR, and with `check_upstream` its HTTP
/// source against what was stored.
pub async fn verify(
    dvcr: &Dvcr,
    cvi: &ClusterVirtualImage,
    check_upstream: bool,
    egress: &std::sync::Arc<crate::egress::EgressPolicy>,
) -> Verdict {
    use futures::StreamExt;
    let name = cvi.metadata.name.clone().unwrap_or_default();
    let uid = cvi.metadata.uid.clone().unwrap_or_default();
    let repository = layout::cvi_repository(&name);
    let image = match dvcr.read_image(&repository, &uid).await {
        Ok(image) => image,
        Err(error @ DvcrError::NotFound { .. }) => {
            return Verdict::ImageLost(format!(
                "{error}: the stored image is gone from DVCR; {REIMPORT}"
            ));
        }
        Err(error) => {
            return Verdict::VerificationFailed(format!(
                "reading the image from DVCR: {error}; the next run tries again"
            ));
        }
    };
    let labels = match image.image_labels() {
        Ok(labels) => labels,
        Err(error) => return Verdict::ChecksumMismatch(format!("{error}")),
    };
    let spec = cvi
        .spec
        .data_source
        .http
        .as_ref()
        .and_then(|http| http.checksum.as_ref());
    let expected = expected(&image, &labels, spec);
    let mut stream = match dvcr.layer_stream(&repository, &image.layer).await {
        Ok(stream) => stream,
        Err(error @ DvcrError::NotFound { .. }) => {
            return Verdict::ImageLost(format!(
                "{error}: the layer of the stored image is gone from DVCR; {REIMPORT}"
            ));
        }
        Err(error) => {
            return Verdict::VerificationFailed(format!(
                "reading the layer from DVCR: {error}; the next run tries again"
            ));
        }
    };
    let mut hasher = LayerHasher::new(expected.file_size);
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => hasher.update(&chunk),
            Err(error) => {
                return Verdict::VerificationFailed(format!(
                    "reading the layer from DVCR stopped: {error}; the next run tries again"
                ));
            }
        }
    }
    let verdict = judge(&expected, &hasher.finish());
    if !verdict.is_verified() || !check_upstream {
        return verdict;
    }
    match (&cvi.spec.data_source.http, &labels.sha256) {
        (Some(http), Some(stored)) => {
            match upstream(&http.url, http.ca_bundle.as_deref(), stored, egress).await {
                Ok(None) => Verdict::Verified(format!(
                    "{}, and the source at {} still has the same bytes",
                    verdict.message(),
                    crate::import::source::http::redact_url(&http.url)
                )),
                Ok(Some(changed)) => changed,
                Err((message, retry)) => Verdict::VerificationFailed(format!(
                    "the stored bytes are intact, but the upstream check could not read the source: {message}{}",
                    if retry {
                        "; the next run tries again"
                    } else {
                        ""
                    }
                )),
            }
        }
        // Only HTTP sources have an upstream to compare with.
        _ => verdict,
    }
}

/// Whether the file behind `url` still hashes to `stored_sha256`: `Ok(None)` when it does,
/// a `SourceChanged` verdict when not. Read with the import's own HTTP source.
async fn upstream(
    url: &str,
    ca_bundle: Option<&str>,
    stored_sha256: &str,
    egress: &std::sync::Arc<crate::egress::EgressPolicy>,
) -> Result<Option<Verdict>, (String, bool)> {
    use crate::import::source::http::{HttpDownload, HttpSourceOptions, redact_url};
    use crate::import::source::{SourceError, reason};
    // A refusal by the egress policy stays until the daemon's flags change: retrying is no
    // use, and the message already says which flag opens it.
    let failed = |error: SourceError| {
        let retry = error.reason != reason::SOURCE_REFUSED_BY_POLICY;
        (error.to_string(), retry)
    };
    let ca = ca_bundle
        .map(crate::import::source::http_import::decode_ca_bundle)
        .transpose()
        .map_err(|error| (error.to_string(), true))?;
    // The same egress policy as the import: the upstream check must not reach what the
    // import could not.
    let options = HttpSourceOptions {
        egress: egress.clone(),
        ..HttpSourceOptions::default()
    };
    let mut download = HttpDownload::open(url, ca.as_deref(), options)
        .await
        .map_err(failed)?;
    let mut sha256 = Sha256::new();
    while let Some(chunk) = download.next_chunk().await.map_err(failed)? {
        sha256.update(&chunk);
    }
    let now = hex::encode(sha256.finalize());
    if now.eq_ignore_ascii_case(stored_sha256) {
        return Ok(None);
    }
    Ok(Some(Verdict::SourceChanged(format!(
        "the file at {} changed since the import: its sha256 is now {now}, the stored image's is {stored_sha256}; the stored image is intact. A Ready image does not change: to serve the new file, create an image under a new name (and fix the checksum in the catalog)",
        redact_url(url)
    ))))
}

/// The `Verified` condition a verdict gives `cvi`, its transition time kept when its status
/// did not change. Pure.
pub fn verified_condition(
    cvi: &ClusterVirtualImage,
    verdict: &Verdict,
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let mut conditions: Vec<_> = cvi
        .status
        .as_ref()
        .map(|status| status.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ == VERIFIED)
        .collect();
    let message = match verdict {
        Verdict::Verified(what) => format!(
            "Last verified {}: {what}",
            now.0.strftime("%Y-%m-%dT%H:%M:%SZ")
        ),
        other => other.message().to_string(),
    };
    crate::import::status::set_condition(
        &mut conditions,
        VERIFIED,
        Some(verdict.is_verified()),
        verdict.reason(),
        &message,
        cvi.metadata.generation.unwrap_or_default(),
        now,
    );
    conditions.swap_remove(0)
}

/// Writes the `Verified` condition of `cvi`, and only that, through the one status writer.
pub async fn record(
    client: &kube::Client,
    cvi: &ClusterVirtualImage,
    verdict: &Verdict,
) -> Result<(), crate::k8s::cvi_status::WriteError> {
    use crate::k8s::cvi_status::{CviStatusStore, Target};
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    CviStatusStore::new(client.clone())
        .write_verified(
            &mut Target::of(cvi),
            &verified_condition(cvi, verdict, &now),
        )
        .await
}

#[cfg(test)]
mod tests;
