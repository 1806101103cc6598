//! How an import fails: one error for every stage and source, each with its condition reason
//! and whether trying again may help.

use super::*;

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("{0}")]
    Inspect(#[from] InspectError),
    #[error("{0}")]
    Checksum(#[from] ChecksumMismatch),
    #[error("{0}")]
    Dvcr(#[from] DvcrError),
    #[error("cannot spool the download to {dir}: {error}; check --spool-dir and free disk space")]
    Spool { dir: String, error: std::io::Error },
    #[error("{}", spool_full_message(.0))]
    SpoolFull(SpoolFull),
    #[error("the import was cancelled")]
    Cancelled,
    #[error(
        "no complete upload arrived within {}s; delete the image and create it again for a new upload URL",
        .0.as_secs()
    )]
    UploadTimedOut(std::time::Duration),
    #[error(
        "no upload URL can be made: {0}, and a token from it would be guessable; fix the node's random source (the kernel's getrandom), then delete the image and create it again"
    )]
    UploadTokenUnavailable(#[source] crate::import::source::upload::RandomUnavailable),
    #[error(
        "saving the upload token's sha256 on the image failed ({0}), so no upload URL was published; check that the daemon may patch ClusterVirtualImages, then delete the image and create it again"
    )]
    UploadTokenNotSaved(String),
    #[error(
        "the new DVCR upload session was not recorded in the image's checkpoint Lease within {}s (the apiserver is slow or away), so no byte went into it; the import is tried again",
        .0.as_secs()
    )]
    SessionNotRecorded(std::time::Duration),
    #[error("an import stage stopped unexpectedly: {0}")]
    Stage(String),
    #[error(
        "the daemon hit a bug while importing this image ({0}); the import ended here. Report it with the daemon's log; delete and create the image again to retry"
    )]
    Panicked(String),
}

fn spool_full_message(full: &SpoolFull) -> String {
    match full {
        SpoolFull::TooLarge { limit } => format!(
            "the source sent more than the whole spool holds ({} MiB) before its size was known; if the image is really that large, raise the chart's spool.sizeLimit (--spool-size)",
            limit >> 20
        ),
        SpoolFull::Busy { limit } => format!(
            "the spool ({} MiB) is full with other downloads; the import is tried again",
            limit >> 20
        ),
    }
}

impl ImportError {
    /// The CamelCase condition reason.
    pub fn reason(&self) -> &str {
        match self {
            Self::Source(error) => error.reason,
            Self::Inspect(error) => error.reason(),
            Self::Checksum(_) => "ChecksumMismatch",
            Self::Dvcr(error) => error.reason(),
            Self::Spool { .. } => "SpoolFailed",
            Self::SpoolFull(SpoolFull::TooLarge { .. }) => "SpoolTooSmall",
            Self::SpoolFull(SpoolFull::Busy { .. }) => "SpoolBusy",
            Self::Cancelled => "Cancelled",
            Self::SessionNotRecorded(_) => "CheckpointNotSaved",
            Self::UploadTimedOut(_) => "UploadTimedOut",
            Self::UploadTokenUnavailable(_) => "UploadTokenUnavailable",
            Self::UploadTokenNotSaved(_) => "UploadTokenNotSaved",
            Self::Stage(_) | Self::Panicked(_) => "InternalError",
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Source(error) => error.kind == SourceErrorKind::Transient,
            Self::Dvcr(error) => error.is_transient(),
            Self::Spool { .. }
            | Self::SpoolFull(SpoolFull::Busy { .. })
            | Self::SessionNotRecorded(_) => true,
            Self::Inspect(error) => error.is_transient(),
            _ => false,
        }
    }

    /// Whether the bytes already received must be thrown away and the import started over.
    pub fn needs_restart(&self) -> bool {
        matches!(self, Self::Source(error) if error.kind == SourceErrorKind::Restart)
    }

    /// Whether the source, rather than its bytes or DVCR, is at fault.
    pub fn is_source_fault(&self) -> bool {
        matches!(self, Self::Source(_))
    }
}
