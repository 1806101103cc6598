//! Errors of DVCR operations, classified into condition reasons and retry decisions.
//!
//! No variant carries credentials: messages come from URLs without userinfo, HTTP statuses and
//! registry error bodies, never from request headers.

/// What went wrong talking to DVCR.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DvcrError {
    /// The DVCR settings cannot work (bad registry address, unreadable CA).
    #[error("invalid DVCR configuration: {0}")]
    Config(String),

    /// A repository, tag or digest that is not valid in an OCI reference.
    #[error("invalid DVCR reference: {0}")]
    InvalidReference(String),

    /// The registry could not be reached, or answered with a server-side failure.
    #[error("DVCR is unavailable ({operation}): {message}")]
    Unavailable {
        operation: &'static str,
        /// HTTP status when the registry answered (5xx, 408, 429), None for network errors.
        status: Option<u16>,
        message: String,
    },

    /// The registry refused the credentials (401) or the access (403).
    #[error("DVCR refused the credentials ({operation}): HTTP {status}")]
    AuthFailed {
        operation: &'static str,
        status: u16,
    },

    /// The registry refused the request for another reason.
    #[error("DVCR rejected {operation}: HTTP {status} {code}: {message}")]
    Rejected {
        operation: &'static str,
        status: u16,
        /// The OCI error code (`BLOB_UPLOAD_UNKNOWN`, `DIGEST_INVALID`, ...), or empty.
        code: String,
        message: String,
    },

    /// The caller wrote a different number of bytes than it declared for the disk file.
    #[error("disk file size mismatch: declared {declared} bytes, {written} written")]
    SizeMismatch { declared: u64, written: u64 },

    /// The registry answered in a way the distribution protocol does not allow.
    #[error("unexpected DVCR answer ({operation}): {message}")]
    Protocol {
        operation: &'static str,
        message: String,
    },

    /// The image (or the blob) is not in the registry.
    #[error("{reference} is not in DVCR")]
    NotFound { reference: String },

    /// The image exists but does not follow the DVCR disk image layout.
    #[error("{reference} is not a DVCR disk image: {message}")]
    InvalidImage { reference: String, message: String },
}

impl DvcrError {
    /// The CamelCase condition reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            DvcrError::Config(_) => "DVCRMisconfigured",
            DvcrError::InvalidReference(_) => "DVCRInvalidReference",
            DvcrError::Unavailable { .. } => "DVCRUnavailable",
            DvcrError::AuthFailed { .. } => "DVCRAuthFailed",
            DvcrError::Rejected { .. } => "DVCRRejected",
            DvcrError::SizeMismatch { .. } => "DVCRSizeMismatch",
            DvcrError::Protocol { .. } => "DVCRProtocolError",
            DvcrError::NotFound { .. } => "DVCRImageNotFound",
            DvcrError::InvalidImage { .. } => "DVCRImageInvalid",
        }
    }

    /// Whether retrying the whole operation later may succeed without any change.
    pub fn is_transient(&self) -> bool {
        match self {
            DvcrError::Unavailable { .. } => true,
            // An upload session that vanished (registry restart, purge) or whose received bytes
            // do not hash to the digest (corrupted in transit): a fresh upload can succeed.
            DvcrError::Rejected { code, .. } => matches!(
                code.as_str(),
                "BLOB_UPLOAD_UNKNOWN"
                    | "BLOB_UPLOAD_INVALID"
                    | "DIGEST_INVALID"
                    | "TOOMANYREQUESTS"
            ),
            DvcrError::Config(_)
            | DvcrError::InvalidReference(_)
            | DvcrError::AuthFailed { .. }
            | DvcrError::SizeMismatch { .. }
            | DvcrError::Protocol { .. }
            | DvcrError::NotFound { .. }
            | DvcrError::InvalidImage { .. } => false,
        }
    }

    /// A network-level failure of `operation`.
    pub(crate) fn network(operation: &'static str, error: &reqwest::Error) -> Self {
        DvcrError::Unavailable {
            operation,
            status: None,
            message: crate::net::error_chain(error),
        }
    }

    pub(crate) fn protocol(operation: &'static str, message: impl Into<String>) -> Self {
        DvcrError::Protocol {
            operation,
            message: message.into(),
        }
    }

    /// Classifies an HTTP error status with the registry's error body.
    pub(crate) fn from_status(operation: &'static str, status: u16, body: &[u8]) -> Self {
        let (code, message) = oci_error(body);
        match status {
            401 | 403 => DvcrError::AuthFailed { operation, status },
            408 | 429 | 500..=599 => DvcrError::Unavailable {
                operation,
                status: Some(status),
                message: if message.is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!("HTTP {status}: {message}")
                },
            },
            _ => DvcrError::Rejected {
                operation,
                status,
                code,
                message,
            },
        }
    }

    /// Maps an oci-client error.
    pub(crate) fn from_oci(
        operation: &'static str,
        error: oci_client::errors::OciDistributionError,
    ) -> Self {
        use oci_client::errors::OciDistributionError as E;
        match error {
            E::RequestError(e) => DvcrError::network(operation, &e),
            E::UnauthorizedError { .. } => DvcrError::AuthFailed {
                operation,
                status: 401,
            },
            E::AuthenticationFailure(_) => DvcrError::AuthFailed {
                operation,
                status: 401,
            },
            E::ServerError { code, message, .. } => {
                DvcrError::from_status(operation, code, message.as_bytes())
            }
            E::RegistryError { envelope, .. } => {
                let first = envelope.errors.first();
                let code = first.map(|e| oci_code_name(&e.code)).unwrap_or_default();
                let message = envelope
                    .errors
                    .iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                match code.as_str() {
                    "UNAUTHORIZED" => DvcrError::AuthFailed {
                        operation,
                        status: 401,
                    },
                    "DENIED" => DvcrError::AuthFailed {
                        operation,
                        status: 403,
                    },
                    _ => DvcrError::Rejected {
                        operation,
                        // The envelope does not keep the status; 400 is what the codes map to
                        // except the *_UNKNOWN ones.
                        status: if code.ends_with("_UNKNOWN") { 404 } else { 400 },
                        code,
                        message,
                    },
                }
            }
            E::IoError(e) => DvcrError::Unavailable {
                operation,
                status: None,
                message: e.to_string(),
            },
            other => DvcrError::protocol(operation, other.to_string()),
        }
    }

    /// Whether this is a "no such manifest / repository / blob" answer.
    pub(crate) fn is_not_found(&self) -> bool {
        match self {
            DvcrError::NotFound { .. } => true,
            DvcrError::Rejected { status, code, .. } => {
                *status == 404
                    || matches!(
                        code.as_str(),
                        "MANIFEST_UNKNOWN" | "NAME_UNKNOWN" | "BLOB_UNKNOWN"
                    )
            }
            _ => false,
        }
    }
}

/// The registry's error code name as it appears on the wire.
fn oci_code_name(code: &oci_client::errors::OciErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `(code, message)` of an OCI error body (`{"errors":[{"code":..,"message":..}]}`); for
/// anything else, no code and the body itself (shortened).
fn oci_error(body: &[u8]) -> (String, String) {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(envelope) = serde_json::from_slice::<Envelope>(body)
        && let Some(first) = envelope.errors.first()
    {
        let message = envelope
            .errors
            .iter()
            .map(|e| e.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        return (first.code.clone(), message);
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (String::new(), text[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_reasons() {
        let e = DvcrError::from_status("push", 401, b"");
        assert_eq!(e.reason(), "DVCRAuthFailed");
        assert!(!e.is_transient());
        let e = DvcrError::from_status("push", 503, b"");
        assert_eq!(e.reason(), "DVCRUnavailable");
        assert!(e.is_transient());
        let e = DvcrError::from_status(
            "commit",
            404,
            br#"{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN","message":"blob upload unknown to registry"}]}"#,
        );
        assert_eq!(e.reason(), "DVCRRejected");
        assert!(e.is_transient());
        assert!(e.to_string().contains("BLOB_UPLOAD_UNKNOWN"), "{e}");
        let e = DvcrError::from_status(
            "push manifest",
            400,
            br#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid"}]}"#,
        );
        assert!(!e.is_transient());
        assert!(!e.is_not_found());
        let e = DvcrError::from_status("head", 404, b"");
        assert!(e.is_not_found());
        let e = DvcrError::SizeMismatch {
            declared: 3,
            written: 4,
        };
        assert_eq!(e.reason(), "DVCRSizeMismatch");
        assert!(!e.is_transient());
    }

    #[test]
    fn oci_client_errors_are_classified() {
        use oci_client::errors::OciDistributionError as E;
        let e = DvcrError::from_oci("x", E::UnauthorizedError { url: "u".into() });
        assert_eq!(e.reason(), "DVCRAuthFailed");
        let e = DvcrError::from_oci(
            "x",
            E::ServerError {
                code: 502,
                url: "u".into(),
                message: "bad gateway".into(),
            },
        );
        assert!(e.is_transient());
        let envelope: oci_client::errors::OciEnvelope = serde_json::from_str(
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#,
        )
        .unwrap();
        let e = DvcrError::from_oci(
            "x",
            E::RegistryError {
                envelope,
                url: "u".into(),
            },
        );
        assert!(e.is_not_found(), "{e:?}");
    }
}
