//! Why a catalog's commit could not be read: the outcome of a failed fetch, shared by the
//! fetch that makes it and the status that reports it.

use std::sync::Arc;

use crate::git;
use crate::k8s::secrets::SecretError;

/// Why a catalog's commit could not be read. Each variant is a condition reason
/// ([`FetchError::reason`]); its message says what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error(
        "spec.git.secretRef {secret} is paired with the {scheme}:// URL {url}, which is unencrypted: credentials are never sent that way; use an https:// or ssh:// URL, or remove the secretRef"
    )]
    InsecureSecretRef {
        secret: String,
        scheme: String,
        /// Redacted.
        url: String,
    },
    #[error("{0}, or remove spec.git.secretRef")]
    Secret(Arc<SecretError>),
    #[error("Secret {namespace}/{name}: {error}")]
    Credentials {
        namespace: String,
        name: String,
        error: Arc<git::GitError>,
    },
    #[error("spec.git.ref names no branch, tag or commit")]
    NoReference,
    #[error("the Git fetch stopped: {0}")]
    Stopped(String),
    #[error("Fetching {reference} of {url}: {error}")]
    Git {
        reference: String,
        /// Redacted.
        url: String,
        error: Arc<git::GitError>,
    },
    #[error(
        "The daemon hit a bug syncing this catalog ({0}); nothing more was applied, and it tries again in a minute. Report it with the daemon's log."
    )]
    Panicked(String),
}

impl FetchError {
    /// The condition reason and Event reason.
    pub fn reason(&self) -> String {
        match self {
            Self::InsecureSecretRef { .. } => "GitCredentialsInsecure".into(),
            Self::Secret(error) => match error.as_ref() {
                SecretError::NotFound { .. } => "GitCredentialsMissing".into(),
                error => error.reason("GitCredentials"),
            },
            Self::Credentials { error, .. } | Self::Git { error, .. } => error.reason().into(),
            Self::NoReference => "InvalidSpec".into(),
            Self::Stopped(_) => "GitError".into(),
            Self::Panicked(_) => "InternalError".into(),
        }
    }
}

/// Two failures are the same to a user when they read the same.
impl PartialEq for FetchError {
    fn eq(&self, other: &Self) -> bool {
        self.reason() == other.reason() && self.to_string() == other.to_string()
    }
}
