//! HTTP/HTTPS source: one continuous stream of a file's bytes, with the interruptions hidden.
//!
//! [`HttpDownload`] sends one GET and hands its body out chunk by chunk, without copying. When
//! the connection breaks (reset, idle timeout, early EOF, a 5xx on reconnect), it reconnects
//! with back-off and asks for the rest with `Range: bytes=<delivered>-` and `If-Range:
//! <validator>`, so the consumer sees the same bytes in the same order as from an unbroken
//! download. When the rest cannot be proven to belong to the same file (the server ignores
//! the range or the validator changed) the download fails with
//! [`SourceErrorKind::Restart`](super::SourceErrorKind::Restart): the pipeline must start over
//! with fresh state.
//!
//! URLs can carry credentials (`user:pass@host`, tokens in the query): every log line and
//! error message goes through [`redact_url`], and error texts of the HTTP stack are scrubbed
//! of the secrets as well.

mod client;
mod errors;
mod headers;
mod target;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{self, HeaderMap};
use reqwest::{StatusCode, Url};

use self::client::{backoff_delay, build_client};
use self::errors::{Failure, Retryable, is_retryable_status, status_text};
pub use self::headers::fuzz_headers;
use self::headers::*;
use self::target::Target;
use super::SourceError;
use crate::egress::{self, EgressPolicy};
use crate::import::checkpoint::SourceValidator;
use crate::import::pipeline::ResumeAt;
pub use crate::net::redact_url;

/// Tuning of an [`HttpDownload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSourceOptions {
    /// Time allowed to establish a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest time without a byte from the server (waiting for the response headers or
    /// between body chunks) before the connection counts as broken.
    pub read_timeout: Duration,
    /// Attempts in a row that may fail before the download gives up. The first request
    /// counts; a connection that delivers bytes before it breaks resets the count.
    pub max_attempts: u32,
    /// Back-off after the first failure; doubles with every failure in a row.
    pub initial_backoff: Duration,
    /// Cap of the back-off and of a server's `Retry-After`.
    pub max_backoff: Duration,
    /// Where the download may connect: checked on every connection and redirect.
    pub egress: Arc<EgressPolicy>,
}

impl Default for HttpSourceOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            max_attempts: 8,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            egress: Arc::default(),
        }
    }
}

/// Counters of one [`HttpDownload`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DownloadStats {
    /// Body bytes received from the network, including any the download had to discard
    /// (a resumed response that starts before the requested offset).
    pub bytes_fetched: u64,
    /// Bytes handed to the consumer.
    pub bytes_delivered: u64,
    /// Broken connections continued seamlessly with a range request.
    pub resumes: u32,
    /// Failed attempts that were retried (failed requests and broken connections).
    pub retries: u32,
}

/// File name when neither the server nor the URL provides one.
const FALLBACK_FILE_NAME: &str = "disk.img";

/// What the first response said about resuming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptRanges {
    Bytes,
    None,
    Unknown,
}

/// One download of one URL. See the module documentation.
pub struct HttpDownload {
    client: reqwest::Client,
    target: Target,
    /// `target.url` redacted, for messages.
    shown: String,
    options: HttpSourceOptions,
    has_ca_bundle: bool,
    /// The URL after redirects of the first request; resumes go there first.
    final_url: Url,
    /// Resumes go to the original URL again (the final one answered 4xx, e.g. an expired
    /// pre-signed link).
    resume_via_original: bool,
    content_length: Option<u64>,
    accept_ranges: AcceptRanges,
    /// Strong ETag of the first response.
    etag: Option<String>,
    last_modified: Option<String>,
    file_name: String,
    response: Option<reqwest::Response>,
    /// Bytes of the current response to drop before delivering (a 206 that starts early).
    skip: u64,
    delivered: u64,
    failures_in_a_row: u32,
    progress_since_failure: bool,
    finished: bool,
    /// The first response arrived.
    opened: bool,
    /// Once failed, the download fails the same way forever.
    failed: Option<SourceError>,
    stats: DownloadStats,
}

impl fmt::Debug for HttpDownload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpDownload")
            .field("url", &self.shown)
            .field("content_length", &self.content_length)
            .field("delivered", &self.delivered)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl HttpDownload {
    /// Opens the URL (following up to 10 redirects) and reads the response headers; the body
    /// is read by [`next_chunk`](Self::next_chunk). With `ca_bundle_pem` (the PEM chain
    /// decoded from the image's base64 `caBundle`) the server certificate must chain to one
    /// of those certificates and nothing else; without it, the system roots apply.
    /// Transient failures are retried here with back-off, up to `options.max_attempts`.
    pub async fn open(
        url: &str,
        ca_bundle_pem: Option<&[u8]>,
        options: HttpSourceOptions,
    ) -> Result<Self, SourceError> {
        let mut download = Self::new(url, ca_bundle_pem, options)?;
        loop {
            match download.try_open().await {
                Ok(()) => return Ok(download),
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Retry(retryable)) => download.back_off(retryable).await?,
            }
        }
    }

    /// A download that goes on from byte `at.offset` of the file an earlier process was
    /// downloading: the first read asks for the rest with a range request, and the answer
    /// must repeat the saved validator and size, else the download fails with
    /// [`SourceErrorKind::Restart`](super::SourceErrorKind::Restart) (the file changed).
    pub fn open_at(
        url: &str,
        ca_bundle_pem: Option<&[u8]>,
        options: HttpSourceOptions,
        at: &ResumeAt,
    ) -> Result<Self, SourceError> {
        let mut download = Self::new(url, ca_bundle_pem, options)?;
        download.content_length = Some(at.file_size);
        download.accept_ranges = AcceptRanges::Bytes;
        download.etag = at.validator.etag.clone();
        download.last_modified = at.validator.last_modified.clone();
        download.file_name = at.file_name.clone();
        download.delivered = at.offset;
        download.stats.bytes_delivered = at.offset;
        download.opened = true;
        download.finished = at.offset == at.file_size;
        tracing::info!(url = %download.shown, from = at.offset, "downloading the rest after a restart");
        Ok(download)
    }

    /// What a later process needs to go on with this download at an offset: the strong
    /// validator of the first response (with the size announced).
    pub fn validator(&self) -> Option<SourceValidator> {
        (self.resumable() && self.content_length.is_some()).then(|| SourceValidator {
            etag: self.etag.clone(),
            last_modified: self.last_modified.clone(),
        })
    }

    fn new(
        url: &str,
        ca_bundle_pem: Option<&[u8]>,
        options: HttpSourceOptions,
    ) -> Result<Self, SourceError> {
        let target = Target::parse(url)?;
        let shown = redact_url(target.url.as_str());
        let client = build_client(ca_bundle_pem, &options, &shown)?;
        let final_url = target.url.clone();
        Ok(Self {
            client,
            target,
            shown,
            options,
            has_ca_bundle: ca_bundle_pem.is_some(),
            final_url,
            resume_via_original: false,
            content_length: None,
            accept_ranges: AcceptRanges::Unknown,
            etag: None,
            last_modified: None,
            file_name: FALLBACK_FILE_NAME.to_string(),
            response: None,
            skip: 0,
            delivered: 0,
            failures_in_a_row: 0,
            progress_since_failure: false,
            finished: false,
            opened: false,
            failed: None,
            stats: DownloadStats::default(),
        })
    }

    /// Size of the whole file, when the server announced it.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// The file's name: the `Content-Disposition` filename when the server sent one, else the
    /// last non-empty path segment of the final URL (after redirects), percent-decoded; else
    /// `disk.img`.
    pub fn file_name(&self) -> String {
        self.file_name.clone()
    }

    /// The URL after the redirects of the first request, redacted.
    pub fn final_url_redacted(&self) -> String {
        redact_url(self.final_url.as_str())
    }

    /// The next bytes of the file, in order, with no gap and no repetition; `Ok(None)` at the
    /// end. Broken connections are resumed inside. After an error, every call returns the
    /// same error.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, SourceError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        match self.next_chunk_inner().await {
            Ok(chunk) => Ok(chunk),
            Err(error) => {
                self.response = None;
                self.failed = Some(error.clone());
                Err(error)
            }
        }
    }

    pub fn stats(&self) -> DownloadStats {
        self.stats
    }

    async fn next_chunk_inner(&mut self) -> Result<Option<Bytes>, SourceError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            let Some(response) = self.response.as_mut() else {
                match self.try_resume().await {
                    Ok(()) => {}
                    Err(Failure::Fatal(error)) => return Err(error),
                    Err(Failure::Retry(retryable)) => self.back_off(retryable).await?,
                }
                continue;
            };
            let read = tokio::time::timeout(self.options.read_timeout, response.chunk()).await;
            let interruption = match read {
                Ok(Ok(Some(mut chunk))) => {
                    self.stats.bytes_fetched += chunk.len() as u64;
                    if self.skip > 0 {
                        let drop = self.skip.min(chunk.len() as u64);
                        self.skip -= drop;
                        // In range: `drop` ≤ chunk.len().
                        chunk = chunk.slice(drop as usize..);
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    self.delivered += chunk.len() as u64;
                    self.stats.bytes_delivered = self.delivered;
                    self.progress_since_failure = true;
                    return Ok(Some(chunk));
                }
                Ok(Ok(None)) => match self.content_length {
                    Some(total) if self.delivered < total => format!(
                        "the server closed the connection after {} of {total} bytes",
                        self.delivered
                    ),
                    _ => {
                        self.response = None;
                        self.finished = true;
                        tracing::debug!(
                            url = %self.shown,
                            bytes = self.delivered,
                            fetched = self.stats.bytes_fetched,
                            resumes = self.stats.resumes,
                            "download complete"
                        );
                        return Ok(None);
                    }
                },
                Ok(Err(error)) => format!(
                    "the connection broke after {} bytes: {}",
                    self.delivered,
                    self.describe(error)
                ),
                Err(_) => format!(
                    "no data for {:?} after {} bytes",
                    self.options.read_timeout, self.delivered
                ),
            };
            self.response = None;
            self.skip = 0;
            if !self.resumable() {
                return Err(self.not_resumable(&interruption));
            }
            self.back_off(Retryable::new(interruption)).await?;
        }
    }

    /// Whether the first response allows trying a range request.
    fn resumable(&self) -> bool {
        match self.accept_ranges {
            AcceptRanges::None => false,
            // Without a strong validator a resume could splice a changed file: start over.
            AcceptRanges::Bytes | AcceptRanges::Unknown => {
                self.etag.is_some() || self.last_modified.is_some()
            }
        }
    }

    /// Records a failed attempt and sleeps before the next one, or gives up.
    async fn back_off(&mut self, retryable: Retryable) -> Result<(), SourceError> {
        if self.progress_since_failure {
            self.failures_in_a_row = 0;
            self.progress_since_failure = false;
        }
        self.failures_in_a_row += 1;
        let attempts = self.failures_in_a_row;
        if attempts >= self.options.max_attempts {
            return Err(self.exhausted(retryable, attempts));
        }
        let delay = match retryable.retry_after {
            Some(after) => after.min(self.options.max_backoff),
            None => backoff_delay(&self.options, attempts),
        };
        self.stats.retries += 1;
        tracing::warn!(
            url = %self.shown,
            attempt = attempts,
            max_attempts = self.options.max_attempts,
            delay_ms = delay.as_millis() as u64,
            delivered = self.delivered,
            "{}; retrying",
            retryable.message
        );
        tokio::time::sleep(delay).await;
        Ok(())
    }

    async fn send(&self, url: &Url, range_from: Option<u64>) -> Result<reqwest::Response, Failure> {
        // Literal IPs never reach the resolver that checks every other connection.
        egress::check_url(&self.options.egress, url)
            .map_err(|refusal| Failure::Fatal(self.refused(&refusal)))?;
        let mut request = self
            .client
            .get(url.clone())
            .header(header::ACCEPT_ENCODING, "identity");
        if self.target.has_credentials() && self.target.same_origin(url) {
            request = request.basic_auth(&self.target.username, self.target.password.as_ref());
        }
        if let Some(from) = range_from {
            request = request.header(header::RANGE, format!("bytes={from}-"));
            if let Some(validator) = self.etag.as_ref().or(self.last_modified.as_ref()) {
                request = request.header(header::IF_RANGE, validator);
            }
        }
        request
            .send()
            .await
            .map_err(|error| self.classify_request_error(error))
    }

    async fn try_open(&mut self) -> Result<(), Failure> {
        let url = self.target.url.clone();
        let response = self.send(&url, None).await?;
        let status = response.status();
        if status != StatusCode::OK && status != StatusCode::NON_AUTHORITATIVE_INFORMATION {
            return Err(self.status_failure(&response, &self.shown));
        }
        let headers = response.headers();
        self.final_url = response.url().clone();
        self.content_length = content_length(headers);
        self.accept_ranges = match header_str(headers, header::ACCEPT_RANGES) {
            Some(value)
                if value
                    .split(',')
                    .any(|v| v.trim().eq_ignore_ascii_case("bytes")) =>
            {
                AcceptRanges::Bytes
            }
            Some(value) if value.trim().eq_ignore_ascii_case("none") => AcceptRanges::None,
            _ => AcceptRanges::Unknown,
        };
        self.etag = strong_etag(headers);
        self.last_modified = strong_last_modified(
            header_str(headers, header::LAST_MODIFIED),
            header_str(headers, header::DATE),
        );
        self.file_name = header_str(headers, header::CONTENT_DISPOSITION)
            .and_then(content_disposition_file_name)
            .or_else(|| url_file_name(&self.final_url))
            .unwrap_or_else(|| FALLBACK_FILE_NAME.to_string());
        tracing::info!(
            url = %self.shown,
            final_url = %redact_url(self.final_url.as_str()),
            content_length = ?self.content_length,
            resumable = self.resumable(),
            file_name = %self.file_name,
            "downloading"
        );
        self.response = Some(response);
        self.opened = true;
        Ok(())
    }

    async fn try_resume(&mut self) -> Result<(), Failure> {
        let url = if self.resume_via_original {
            self.target.url.clone()
        } else {
            self.final_url.clone()
        };
        let shown = redact_url(url.as_str());
        let response = self.send(&url, Some(self.delivered)).await?;
        let status = response.status();
        let headers = response.headers();
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let Some(range) = header_str(headers, header::CONTENT_RANGE)
                    .and_then(parse_content_range)
                    .filter(|range| range.start.is_some())
                else {
                    return Err(Failure::Fatal(self.restart_not_resumable(
                        "answered the range request without a usable Content-Range",
                    )));
                };
                let start = range.start.unwrap_or(0);
                if start > self.delivered {
                    return Err(Failure::Fatal(self.restart_not_resumable(&format!(
                        "resumed at byte {start} instead of byte {}",
                        self.delivered
                    ))));
                }
                if let (Some(expected), Some(total)) = (self.content_length, range.total)
                    && expected != total
                {
                    return Err(Failure::Fatal(self.restart_changed(&format!(
                        "its size changed from {expected} to {total} bytes"
                    ))));
                }
                if let Some(change) = self.validator_change(headers) {
                    return Err(Failure::Fatal(self.restart_changed(&change)));
                }
                self.skip = self.delivered - start;
                self.stats.resumes += 1;
                tracing::info!(
                    url = %shown,
                    from = self.delivered,
                    resumes = self.stats.resumes,
                    "download resumed"
                );
                self.response = Some(response);
                Ok(())
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let total = header_str(headers, header::CONTENT_RANGE)
                    .and_then(parse_content_range)
                    .and_then(|range| range.total);
                // Without a Content-Length, a connection cut right after the last byte looks
                // like this: the file is complete.
                if self.content_length.is_none() && total == Some(self.delivered) {
                    self.finished = true;
                    Ok(())
                } else {
                    Err(Failure::Fatal(self.restart_changed(&format!(
                        "it no longer has byte {} (416 Range Not Satisfiable)",
                        self.delivered
                    ))))
                }
            }
            status if status.is_success() => {
                let change = self.validator_change(headers);
                Err(Failure::Fatal(match change {
                    Some(change) => self.restart_changed(&change),
                    None => self.restart_not_resumable(&format!(
                        "answered the range request with the whole file ({status})"
                    )),
                }))
            }
            status
                if status.is_client_error()
                    && !is_retryable_status(status)
                    && !self.resume_via_original
                    && self.final_url != self.target.url =>
            {
                // The redirect target may have expired (pre-signed links): go through the
                // original URL again.
                self.resume_via_original = true;
                Err(Failure::Retry(Retryable::new(format!(
                    "the server answered {} for {shown}",
                    status_text(status)
                ))))
            }
            _ => Err(self.status_failure(&response, &shown)),
        }
    }

    /// How the validators of a later response differ from the first one, if they do.
    /// A resumed part must repeat the validator: one that does not cannot be told from a
    /// changed file.
    fn validator_change(&self, headers: &HeaderMap) -> Option<String> {
        if let Some(etag) = &self.etag {
            return match header_str(headers, header::ETAG) {
                None => Some(format!("its resumed part did not repeat the ETag {etag}")),
                Some(now) => {
                    (now != etag).then(|| format!("its ETag changed from {etag} to {now}"))
                }
            };
        }
        let before = self.last_modified.as_ref()?;
        match header_str(headers, header::LAST_MODIFIED) {
            None => Some(format!(
                "its resumed part did not repeat the Last-Modified {before}"
            )),
            Some(now) => {
                (now != before).then(|| format!("its Last-Modified changed from {before} to {now}"))
            }
        }
    }
}
