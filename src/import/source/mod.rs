//! Sources of image bytes.

pub mod container_image;
pub mod http;
pub mod http_import;
pub mod object_ref;
pub mod upload;

/// What the pipeline should do about a [`SourceError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceErrorKind {
    /// Retrying the same request will not help: the URL, the credentials or the `caBundle`
    /// must change first.
    Permanent,
    /// The source is unavailable for now; the source has already retried with back-off, so
    /// the caller should give up this attempt and try again later.
    Transient,
    /// The bytes already delivered cannot be trusted to belong to the file now on the
    /// server: the caller must discard everything derived from them (hash state, partial
    /// upload) and import again from the first byte.
    Restart,
}

/// A classified failure of a source, ready for a condition: `reason` is a CamelCase
/// condition reason (see [`reason`]) and `message` tells the user what went wrong and what to
/// do. Messages never contain URL credentials or query strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    pub kind: SourceErrorKind,
    pub reason: &'static str,
    pub message: String,
}

impl SourceError {
    pub fn permanent(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind: SourceErrorKind::Permanent,
            reason,
            message: message.into(),
        }
    }

    pub fn transient(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind: SourceErrorKind::Transient,
            reason,
            message: message.into(),
        }
    }

    pub fn restart(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind: SourceErrorKind::Restart,
            reason,
            message: message.into(),
        }
    }

    pub fn is_permanent(&self) -> bool {
        self.kind == SourceErrorKind::Permanent
    }

    pub fn is_transient(&self) -> bool {
        self.kind == SourceErrorKind::Transient
    }

    pub fn is_restart(&self) -> bool {
        self.kind == SourceErrorKind::Restart
    }
}

/// Condition reasons of [`SourceError`]s.
pub mod reason {
    /// The URL cannot be parsed or has an unsupported scheme (permanent).
    pub const INVALID_URL: &str = "InvalidURL";
    /// The `caBundle` holds no usable PEM certificate (permanent).
    pub const INVALID_CA_BUNDLE: &str = "InvalidCABundle";
    /// 404 (permanent).
    pub const SOURCE_NOT_FOUND: &str = "SourceNotFound";
    /// 401 or 403 (permanent).
    pub const SOURCE_ACCESS_DENIED: &str = "SourceAccessDenied";
    /// 410, any other 4xx, an unexpected status or too many redirects (permanent).
    pub const SOURCE_REJECTED: &str = "SourceRejected";
    /// The TLS handshake failed, usually an untrusted certificate (permanent).
    pub const SOURCE_TLS_ERROR: &str = "SourceTLSError";
    /// The source's address, host name or redirect is refused by the daemon's egress policy
    /// (`--source-deny`, `--source-allow`, link-local by default) or is an https→http
    /// redirect (permanent).
    pub const SOURCE_REFUSED_BY_POLICY: &str = "SourceRefusedByPolicy";
    /// The host name did not resolve, even after retries (permanent).
    pub const SOURCE_HOST_NOT_FOUND: &str = "SourceHostNotFound";
    /// 5xx, 408, 429, refused or broken connections, timeouts: still failing after all
    /// attempts (transient).
    pub const SOURCE_UNAVAILABLE: &str = "SourceUnavailable";
    /// The file on the server changed while it was downloaded (restart).
    pub const SOURCE_CHANGED: &str = "SourceChanged";
    /// The download broke and the server cannot resume it (restart).
    pub const SOURCE_NOT_RESUMABLE: &str = "SourceNotResumable";
    /// The uploader's connection broke off before the whole image arrived.
    pub const UPLOAD_INTERRUPTED: &str = "UploadInterrupted";
    /// The container image reference cannot be parsed (permanent).
    pub const INVALID_IMAGE_REFERENCE: &str = "InvalidImageReference";
    /// The registry has no such repository, tag, digest or platform (permanent).
    pub const IMAGE_NOT_FOUND: &str = "ImageNotFound";
    /// The container image holds no regular file under `disk/` (permanent).
    pub const NO_DISK_IN_IMAGE: &str = "NoDiskInImage";
    /// The container image holds more than one file under `disk/` (permanent).
    pub const MULTIPLE_DISKS_IN_IMAGE: &str = "MultipleDisksInImage";
    /// The entry under `disk/` is a link, device or sparse file, not a plain file (permanent).
    pub const DISK_NOT_REGULAR_FILE: &str = "DiskNotRegularFile";
    /// A layer is zstd-compressed, of an unknown media type, or not a valid (gzip) tar
    /// (permanent).
    pub const UNSUPPORTED_IMAGE_LAYER: &str = "UnsupportedImageLayer";
    /// A layer's bytes do not match its digest (restart).
    pub const LAYER_DIGEST_MISMATCH: &str = "LayerDigestMismatch";
    /// Fewer bytes than the minimum arrived in a window (transient).
    pub const SOURCE_TOO_SLOW: &str = "SourceTooSlow";
    /// One attempt ran past the import deadline (transient).
    pub const IMPORT_DEADLINE_EXCEEDED: &str = "ImportDeadlineExceeded";
}

/// The rustls error behind a request error, if the TLS handshake failed.
pub(crate) fn find_tls_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // `io::Error::source` skips the wrapped error itself.
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            if let Some(tls) = find_tls_error(inner) {
                return Some(tls);
            }
        }
        current = err.source();
    }
    None
}
