//! What each failure of a containerDisk import tells the user: a layer that broke off, TLS,
//! the network, the registry's answers; none of them carries a credential.

use super::*;

impl ContainerDisk {
    pub(super) fn layer_error(&self, failure: LayerFailure) -> SourceError {
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
    pub(super) fn io_error(&self, error: &std::io::Error, what: &str) -> SourceError {
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

    pub(super) fn tls_error(&self, tls: &rustls::Error) -> SourceError {
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
    pub(super) fn refused(&self) -> Option<SourceError> {
        let refusal = self.proxy.as_ref()?.refusal()?;
        Some(SourceError::permanent(
            reason::SOURCE_REFUSED_BY_POLICY,
            format!("{} is not pulled: {refusal}", self.shown),
        ))
    }

    /// Classifies an error of oci-client; `what` is the object requested.
    pub(super) fn oci_error(&self, error: OciDistributionError, what: &str) -> SourceError {
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

pub(super) fn no_disk(shown: &str, detail: &str) -> SourceError {
    SourceError::permanent(
        reason::NO_DISK_IN_IMAGE,
        format!(
            "the image {shown} has no disk file ({detail}): the image must contain exactly one \
             file under /disk, as in `COPY disk.img /disk/disk.img`"
        ),
    )
}
