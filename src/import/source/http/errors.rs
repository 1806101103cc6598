//! What a failed request or broken connection means for the download: retried with back-off,
//! started over, or the end of it with a reason and a message that says what to do.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header;

use super::super::{SourceError, find_tls_error, reason};
use super::HttpDownload;
use super::client::MAX_REDIRECTS;
use super::headers::*;
use crate::egress::{self, DowngradeRefused, Refusal, TooManyRedirects};

/// A failed attempt: retried with back-off, or the end of the download.
pub(super) enum Failure {
    Retry(Retryable),
    Fatal(SourceError),
}

pub(super) struct Retryable {
    pub(super) message: String,
    pub(super) retry_after: Option<Duration>,
    dns: bool,
}

impl Retryable {
    pub(super) fn new(message: String) -> Self {
        Self {
            message,
            retry_after: None,
            dns: false,
        }
    }
}

impl HttpDownload {
    pub(super) fn exhausted(&self, retryable: Retryable, attempts: u32) -> SourceError {
        let what = if self.opened {
            format!(
                "the download of {} stopped after {} bytes",
                self.shown, self.delivered
            )
        } else {
            format!("{} could not be downloaded", self.shown)
        };
        if retryable.dns {
            SourceError::permanent(
                reason::SOURCE_HOST_NOT_FOUND,
                format!(
                    "{what}: the host name does not resolve ({attempts} attempts, the last one: \
                     {}); check the host in http.url and the cluster DNS",
                    retryable.message
                ),
            )
        } else {
            SourceError::transient(
                reason::SOURCE_UNAVAILABLE,
                format!(
                    "{what}: {attempts} attempts in a row failed, the last one: {}; the server \
                     may be down or overloaded, the import will be retried later",
                    retryable.message
                ),
            )
        }
    }

    pub(super) fn not_resumable(&self, interruption: &str) -> SourceError {
        SourceError::restart(
            reason::SOURCE_NOT_RESUMABLE,
            format!(
                "the download of {} broke ({interruption}) and the server gives nothing to \
                 resume against safely (ranges, and a strong ETag or a Last-Modified at least a \
                 minute before its Date); the import starts over",
                self.shown
            ),
        )
    }

    pub(super) fn restart_changed(&self, change: &str) -> SourceError {
        SourceError::restart(
            reason::SOURCE_CHANGED,
            format!(
                "the download of {} broke after {} bytes and the file changed on the server \
                 meanwhile ({change}); the import starts over",
                self.shown, self.delivered
            ),
        )
    }

    pub(super) fn restart_not_resumable(&self, what: &str) -> SourceError {
        SourceError::restart(
            reason::SOURCE_NOT_RESUMABLE,
            format!(
                "the download of {} broke after {} bytes and the server {what}: the file changed \
                 on the server or the server does not support resuming; the import starts over",
                self.shown, self.delivered
            ),
        )
    }

    /// Classifies a response whose status is not the one expected.
    pub(super) fn status_failure(&self, response: &reqwest::Response, shown: &str) -> Failure {
        let status = response.status();
        let text = status_text(status);
        if is_retryable_status(status) {
            let retry_after = if status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE
            {
                header_str(response.headers(), header::RETRY_AFTER).and_then(parse_retry_after)
            } else {
                None
            };
            return Failure::Retry(Retryable {
                message: format!("the server answered {text}"),
                retry_after,
                dns: false,
            });
        }
        let error = match status {
            StatusCode::NOT_FOUND => SourceError::permanent(
                reason::SOURCE_NOT_FOUND,
                format!(
                    "{shown} answered {text}: the file does not exist on the server; check \
                     http.url"
                ),
            ),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => SourceError::permanent(
                reason::SOURCE_ACCESS_DENIED,
                format!(
                    "{shown} answered {text}: the server refused access; check the credentials \
                     or token in http.url, or that the file is public"
                ),
            ),
            StatusCode::GONE => SourceError::permanent(
                reason::SOURCE_REJECTED,
                format!(
                    "{shown} answered {text}: the file was removed from the server; point \
                     http.url to a current file"
                ),
            ),
            status if status.is_client_error() => SourceError::permanent(
                reason::SOURCE_REJECTED,
                format!("{shown} answered {text}: the server rejected the request; check http.url"),
            ),
            status if status.is_redirection() => SourceError::permanent(
                reason::SOURCE_REJECTED,
                format!("{shown} answered {text} without a usable redirect target; check http.url"),
            ),
            _ => SourceError::permanent(
                reason::SOURCE_REJECTED,
                format!("{shown} answered the unexpected status {text}; check http.url"),
            ),
        };
        Failure::Fatal(error)
    }

    /// A connection the egress policy refused: permanent, the daemon's flags must change.
    pub(super) fn refused(&self, refusal: &Refusal) -> SourceError {
        SourceError::permanent(
            reason::SOURCE_REFUSED_BY_POLICY,
            format!("{} is not downloaded: {refusal}", self.shown),
        )
    }

    pub(super) fn classify_request_error(&self, error: reqwest::Error) -> Failure {
        if let Some(refusal) = egress::find_in_chain::<Refusal>(&error) {
            return Failure::Fatal(self.refused(refusal));
        }
        if let Some(downgrade) = egress::find_in_chain::<DowngradeRefused>(&error) {
            return Failure::Fatal(SourceError::permanent(
                reason::SOURCE_REFUSED_BY_POLICY,
                format!(
                    "{} is not downloaded: {downgrade}; use an https source that stays on https",
                    self.shown
                ),
            ));
        }
        let host = self.target.url.host_str().unwrap_or_default().to_string();
        if let Some(tls) = find_tls_error(&error) {
            let hint = match tls {
                rustls::Error::InvalidCertificate(_) if self.has_ca_bundle => {
                    "the server certificate is not trusted: check that caBundle holds the CA \
                     chain that signed the server certificate, and that the certificate is \
                     valid for this host and not expired"
                }
                rustls::Error::InvalidCertificate(_) => {
                    "the server certificate is not trusted: if the server uses a private CA, \
                     put its PEM chain, base64-encoded, in caBundle; also check that the \
                     certificate is valid for this host and not expired"
                }
                _ => {
                    "the TLS handshake failed: check that the server speaks HTTPS on this port \
                     and, if it uses a private CA, the caBundle"
                }
            };
            let detail = self.target.scrub(&tls.to_string());
            return Failure::Fatal(SourceError::permanent(
                reason::SOURCE_TLS_ERROR,
                format!(
                    "TLS connection to {host} for {} failed ({detail}): {hint}",
                    self.shown
                ),
            ));
        }
        if error.is_redirect() || egress::find_in_chain::<TooManyRedirects>(&error).is_some() {
            return Failure::Fatal(SourceError::permanent(
                reason::SOURCE_REJECTED,
                format!(
                    "{} redirects more than {MAX_REDIRECTS} times or in a loop: check http.url",
                    self.shown
                ),
            ));
        }
        if error.is_builder() {
            return Failure::Fatal(SourceError::permanent(
                reason::INVALID_URL,
                format!(
                    "the request to {} cannot be built ({}): fix http.url",
                    self.shown,
                    self.describe(error)
                ),
            ));
        }
        let dns = error.is_dns();
        let timeout = error.is_timeout();
        let detail = self.describe(error);
        let message = if timeout {
            format!("the request timed out: {detail}")
        } else {
            format!("the request failed: {detail}")
        };
        Failure::Retry(Retryable {
            message,
            retry_after: None,
            dns,
        })
    }

    /// The error and its sources, without URLs and scrubbed of secrets.
    pub(super) fn describe(&self, error: reqwest::Error) -> String {
        self.target
            .scrub(&crate::net::error_chain(&error.without_url()))
    }
}

pub(super) fn is_retryable_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

pub(super) fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(text) => format!("{} {text}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}
