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

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};

use super::{SourceError, find_tls_error, reason};
use crate::egress::{self, DowngradeRefused, EgressPolicy, Refusal, TooManyRedirects};
use crate::import::checkpoint::SourceValidator;
use crate::import::pipeline::ResumeAt;

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

/// Redirects followed per request.
const MAX_REDIRECTS: usize = 10;
/// File name when neither the server nor the URL provides one.
const FALLBACK_FILE_NAME: &str = "disk.img";

/// The URL as it may appear in logs and messages: without user name, password, query string
/// or fragment. A query string is shown as `?<redacted>` so users can tell it was there.
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            let had_query = parsed.query().is_some();
            // Fails only for URLs that cannot have credentials (`data:`, `mailto:`); those
            // have none to hide.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.set_fragment(None);
            let mut text = parsed.to_string();
            if had_query {
                text.push_str("?<redacted>");
            }
            text
        }
        Err(_) => redact_unparsable(url),
    }
}

/// Best effort for a string that is not a URL: drops everything from `?` or `#` and the
/// part of the authority before `@`.
fn redact_unparsable(url: &str) -> String {
    let (without_query, had_query) = match url.find(['?', '#']) {
        Some(at) => (&url[..at], url[at..].starts_with('?')),
        None => (url, false),
    };
    let (scheme, rest) = match without_query.find("://") {
        Some(at) => without_query.split_at(at + 3),
        None => ("", without_query),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    let mut text = format!("{scheme}{rest}");
    if had_query {
        text.push_str("?<redacted>");
    }
    text
}

/// The URL to download, split into a credential-free URL and the credentials.
struct Target {
    url: Url,
    username: String,
    password: Option<String>,
    /// Strings that must never reach a message: password, user name, query string, in raw
    /// and percent-decoded forms.
    secrets: crate::net::Scrubber,
}

impl Target {
    fn parse(raw: &str) -> Result<Self, SourceError> {
        let shown = redact_url(raw);
        let mut url = Url::parse(raw.trim()).map_err(|e| {
            SourceError::permanent(
                reason::INVALID_URL,
                format!("the URL {shown} is not valid ({e}): fix the http.url of the image"),
            )
        })?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(SourceError::permanent(
                reason::INVALID_URL,
                format!(
                    "the URL {shown} has the unsupported scheme {:?}: only http and https URLs \
                     can be imported",
                    url.scheme()
                ),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(SourceError::permanent(
                reason::INVALID_URL,
                format!("the URL {shown} has no host: fix the http.url of the image"),
            ));
        }
        let mut secrets = Vec::new();
        let raw_username = url.username().to_string();
        let raw_password = url.password().map(str::to_string);
        if let Some(query) = url.query() {
            secrets.push(query.to_string());
            secrets.push(crate::net::percent_decode(query));
        }
        let username = crate::net::percent_decode(&raw_username);
        let password = raw_password.as_deref().map(crate::net::percent_decode);
        secrets.extend([raw_username, username.clone()]);
        secrets.extend(raw_password);
        secrets.extend(password.clone());
        let secrets = crate::net::Scrubber::new(secrets);
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_fragment(None);
        Ok(Self {
            url,
            username,
            password,
            secrets,
        })
    }

    fn has_credentials(&self) -> bool {
        !self.username.is_empty() || self.password.is_some()
    }

    /// Whether `url` is on the origin the credentials were given for.
    fn same_origin(&self, url: &Url) -> bool {
        crate::net::same_origin(&self.url, url)
    }

    /// Removes any secret from a text taken from the HTTP stack.
    fn scrub(&self, text: &str) -> String {
        self.secrets.apply(text)
    }
}

/// What the first response said about resuming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptRanges {
    Bytes,
    None,
    Unknown,
}

/// A failed attempt: retried with back-off, or the end of the download.
enum Failure {
    Retry(Retryable),
    Fatal(SourceError),
}

struct Retryable {
    message: String,
    retry_after: Option<Duration>,
    dns: bool,
}

impl Retryable {
    fn new(message: String) -> Self {
        Self {
            message,
            retry_after: None,
            dns: false,
        }
    }
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

    fn exhausted(&self, retryable: Retryable, attempts: u32) -> SourceError {
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

    fn not_resumable(&self, interruption: &str) -> SourceError {
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

    fn restart_changed(&self, change: &str) -> SourceError {
        SourceError::restart(
            reason::SOURCE_CHANGED,
            format!(
                "the download of {} broke after {} bytes and the file changed on the server \
                 meanwhile ({change}); the import starts over",
                self.shown, self.delivered
            ),
        )
    }

    fn restart_not_resumable(&self, what: &str) -> SourceError {
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
    fn status_failure(&self, response: &reqwest::Response, shown: &str) -> Failure {
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
    fn refused(&self, refusal: &Refusal) -> SourceError {
        SourceError::permanent(
            reason::SOURCE_REFUSED_BY_POLICY,
            format!("{} is not downloaded: {refusal}", self.shown),
        )
    }

    fn classify_request_error(&self, error: reqwest::Error) -> Failure {
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
    fn describe(&self, error: reqwest::Error) -> String {
        self.target
            .scrub(&crate::net::error_chain(&error.without_url()))
    }
}

fn build_client(
    ca_bundle_pem: Option<&[u8]>,
    options: &HttpSourceOptions,
    shown: &str,
) -> Result<reqwest::Client, SourceError> {
    crate::tls::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .http1_only()
        .user_agent(concat!("image-catalog/", env!("CARGO_PKG_VERSION")))
        .redirect(egress::redirect_policy(
            options.egress.clone(),
            MAX_REDIRECTS,
        ))
        // Every connection's addresses pass the egress policy after DNS, so a name that
        // re-resolves to a refused address is refused on that connection too.
        .dns_resolver(egress::PolicyResolver::new(options.egress.clone()))
        .connect_timeout(options.connect_timeout)
        .read_timeout(options.read_timeout)
        .tcp_keepalive(Duration::from_secs(30));
    if let Some(pem) = ca_bundle_pem {
        let invalid = |detail: String| {
            SourceError::permanent(
                reason::INVALID_CA_BUNDLE,
                format!(
                    "the caBundle for {shown} {detail}: put the base64-encoded PEM chain of the \
                     CA that signed the server certificate in caBundle"
                ),
            )
        };
        let certificates =
            crate::tls::pem_certificates(pem).map_err(|error| invalid(error.to_string()))?;
        builder = builder.tls_certs_only(certificates);
    }
    builder.build().map_err(|e| {
        let detail = e.without_url().to_string();
        match ca_bundle_pem {
            Some(_) => SourceError::permanent(
                reason::INVALID_CA_BUNDLE,
                format!(
                    "the HTTP client for {shown} cannot be set up with the caBundle ({detail}): \
                     check that caBundle holds valid CA certificates"
                ),
            ),
            None => SourceError::permanent(
                reason::SOURCE_TLS_ERROR,
                format!("the HTTP client for {shown} cannot be set up ({detail})"),
            ),
        }
    })
}

fn is_retryable_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(text) => format!("{} {text}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// Exponential back-off for the `attempt`-th failure in a row (1-based), capped, with the
/// upper half jittered.
fn backoff_delay(options: &HttpSourceOptions, attempt: u32) -> Duration {
    crate::net::backoff_from(
        options.initial_backoff,
        attempt.saturating_sub(1),
        crate::net::random_jitter(),
        options.max_backoff,
    )
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers
        .get(name)
        .and_then(|value: &HeaderValue| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

/// Content-Length of a response body not sent with a transfer coding.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    header_str(headers, header::CONTENT_LENGTH)?.parse().ok()
}

/// `Last-Modified` as a validator, only when it is strong (RFC 9110 §8.8.2.2): at least 60 s
/// before the response's `Date`, so a file changed twice within one second cannot keep it.
fn strong_last_modified(last_modified: Option<&str>, date: Option<&str>) -> Option<String> {
    let parse = |text: &str| chrono::DateTime::parse_from_rfc2822(text.trim()).ok();
    let modified = parse(last_modified?)?;
    let date = parse(date?)?;
    (date.signed_duration_since(modified) >= chrono::Duration::seconds(60))
        .then(|| last_modified.map(str::to_string))
        .flatten()
}

fn strong_etag(headers: &HeaderMap) -> Option<String> {
    header_str(headers, header::ETAG)
        .filter(|etag| !etag.starts_with("W/") && etag.starts_with('"'))
        .map(str::to_string)
}

/// `Content-Range: bytes <start>-<end>/<total>` (or `bytes */<total>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ContentRange {
    start: Option<u64>,
    total: Option<u64>,
}

/// For the fuzz targets (`fuzz/`): what the header parsers of untrusted responses make of
/// `value`, checking what must always hold of their results.
#[doc(hidden)]
pub fn fuzz_headers(value: &str) {
    if let Some(range) = parse_content_range(value)
        && let (Some(start), Some(total)) = (range.start, range.total)
    {
        assert!(start < total, "a range starts inside the file: {value:?}");
    }
    if let Some(name) = content_disposition_file_name(value) {
        assert!(
            !name.is_empty() && !name.contains('/') && name != "." && name != "..",
            "a file name is one plain path segment: {name:?} from {value:?}"
        );
    }
}

fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim();
    let rest = rest
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes "))
        .map(|_| &rest[6..])?;
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    let start = match range.trim() {
        "*" => None,
        range => {
            let (start, end) = range.split_once('-')?;
            let start: u64 = start.trim().parse().ok()?;
            let end: u64 = end.trim().parse().ok()?;
            // A range past the end of the file is no part of it.
            if end < start || total.is_some_and(|total| end >= total) {
                return None;
            }
            Some(start)
        }
    };
    Some(ContentRange { start, total })
}

/// `Retry-After`: delta-seconds or an IMF-fixdate.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64);
    crate::net::parse_retry_after(value, now)
}

/// The file name of a `Content-Disposition` header: `filename*` (RFC 8187) first, then
/// `filename`.
fn content_disposition_file_name(value: &str) -> Option<String> {
    let mut plain = None;
    let mut extended = None;
    for param in split_params(value).into_iter().skip(1) {
        let Some((name, raw)) = param.split_once('=') else {
            continue;
        };
        let name = name.trim();
        let raw = raw.trim();
        if name.eq_ignore_ascii_case("filename*") {
            // charset'language'percent-encoded
            let mut parts = raw.splitn(3, '\'');
            let (_charset, _language, encoded) = (parts.next(), parts.next(), parts.next());
            extended = encoded.map(crate::net::percent_decode);
        } else if name.eq_ignore_ascii_case("filename") {
            plain = Some(unquote(raw));
        }
    }
    extended
        .and_then(|name| sanitize_file_name(&name))
        .or_else(|| plain.and_then(|name| sanitize_file_name(&name)))
}

/// Splits at `;` outside quoted strings.
fn split_params(value: &str) -> Vec<&str> {
    let mut params = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (at, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                params.push(&value[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    params.push(&value[start..]);
    params
}

fn unquote(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return value.to_string();
    };
    let mut text = String::with_capacity(inner.len());
    let mut escaped = false;
    for c in inner.chars() {
        if escaped || c != '\\' {
            text.push(c);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    text
}

/// Last non-empty path segment of the URL, percent-decoded.
fn url_file_name(url: &Url) -> Option<String> {
    let segment = url.path_segments()?.rev().find(|s| !s.is_empty())?;
    sanitize_file_name(&crate::net::percent_decode(segment))
}

/// A plain file name: the last path component, without control characters; not `.` or `..`.
fn sanitize_file_name(name: &str) -> Option<String> {
    let name = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let name: String = name.chars().filter(|c| !c.is_control()).collect();
    let name = name.trim();
    (!name.is_empty() && name != "." && name != "..").then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_modified_is_a_validator_only_a_minute_before_the_date() {
        let date = Some("Thu, 03 Dec 2026 13:00:00 GMT");
        assert_eq!(
            strong_last_modified(Some("Thu, 03 Dec 2026 12:59:00 GMT"), date).as_deref(),
            Some("Thu, 03 Dec 2026 12:59:00 GMT")
        );
        assert_eq!(
            strong_last_modified(Some("Thu, 03 Dec 2026 12:59:30 GMT"), date),
            None,
            "changed within the last minute: weak"
        );
        assert_eq!(
            strong_last_modified(Some("Thu, 03 Dec 2026 12:00:00 GMT"), None),
            None
        );
        assert_eq!(strong_last_modified(Some("yesterday"), date), None);
    }

    #[test]
    fn redact_url_drops_credentials_and_query() {
        assert_eq!(
            redact_url("https://user:s3cret@example.com:8443/a/b.img?token=xyz#frag"),
            "https://example.com:8443/a/b.img?<redacted>"
        );
        assert_eq!(
            redact_url("http://example.com/a.img"),
            "http://example.com/a.img"
        );
        let unparsable = redact_url("http://user:s3cret@exa mple.com/a?token=xyz");
        assert!(!unparsable.contains("s3cret") && !unparsable.contains("xyz"));
        assert!(unparsable.contains("exa mple.com/a"));
    }

    #[test]
    fn content_range_parses() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some(ContentRange {
                start: Some(100),
                total: Some(1000)
            })
        );
        assert_eq!(
            parse_content_range("bytes 5-9/*"),
            Some(ContentRange {
                start: Some(5),
                total: None
            })
        );
        assert_eq!(
            parse_content_range("bytes */1000"),
            Some(ContentRange {
                start: None,
                total: Some(1000)
            })
        );
        assert_eq!(parse_content_range("bytes 9-5/10"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn file_names() {
        assert_eq!(
            content_disposition_file_name(r#"attachment; filename="a \"b\".img""#).as_deref(),
            Some(r#"a "b".img"#)
        );
        assert_eq!(
            content_disposition_file_name(
                "attachment; filename=\"x.img\"; filename*=UTF-8''%C3%A9t%C3%A9.qcow2"
            )
            .as_deref(),
            Some("été.qcow2")
        );
        assert_eq!(
            content_disposition_file_name("attachment; filename=\"../../etc/passwd\"").as_deref(),
            Some("passwd")
        );
        assert_eq!(content_disposition_file_name("inline"), None);
        let url = Url::parse("https://h/dir/my%20disk.qcow2/").unwrap();
        assert_eq!(url_file_name(&url).as_deref(), Some("my disk.qcow2"));
        assert_eq!(url_file_name(&Url::parse("https://h/").unwrap()), None);
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let options = HttpSourceOptions::default();
        for attempt in 1..40 {
            let delay = backoff_delay(&options, attempt);
            let base = Duration::from_secs(1u64 << (attempt - 1).min(6)).min(options.max_backoff);
            assert!(delay >= base / 2 && delay <= base, "{attempt}: {delay:?}");
        }
    }

    #[test]
    fn target_scrubs_secrets() {
        let target = Target::parse("https://alice:p%40ssword@h.example/f.img?sig=abcdef").unwrap();
        assert_eq!(target.password.as_deref(), Some("p@ssword"));
        let text = target.scrub("x p@ssword y p%40ssword z sig=abcdef");
        assert!(
            !text.contains("ssword") && !text.contains("abcdef"),
            "{text}"
        );
        assert_eq!(target.url.as_str(), "https://h.example/f.img?sig=abcdef");
    }

    #[test]
    fn invalid_urls_are_permanent() {
        for url in ["not a url", "ftp://h/x", "http://", "file:///tmp/x"] {
            let error = Target::parse(url).err().unwrap();
            assert_eq!(error.reason, reason::INVALID_URL, "{url}");
            assert!(error.is_permanent());
        }
    }

    proptest::proptest! {
        #[test]
        fn content_ranges_never_panic_and_hold_only_ranges_inside_the_file(value in ".{0,64}") {
            if let Some(ContentRange { start: Some(start), total: Some(total) }) =
                parse_content_range(&value)
            {
                proptest::prop_assert!(start < total, "{value:?}");
            }
        }

        #[test]
        fn a_valid_content_range_reads_back(start in 0u64..1 << 40, len in 1u64..1 << 30, extra in 0u64..1 << 30) {
            let end = start + len - 1;
            let total = end + 1 + extra;
            let parsed = parse_content_range(&format!("bytes {start}-{end}/{total}"));
            proptest::prop_assert_eq!(parsed, Some(ContentRange { start: Some(start), total: Some(total) }));
            proptest::prop_assert_eq!(parse_content_range(&format!("bytes {start}-{end}/{end}")), None);
        }

        #[test]
        fn a_content_disposition_never_names_a_path(value in "(attachment; )?(filename\\*?=)?[ -~]{0,40}") {
            if let Some(name) = content_disposition_file_name(&value) {
                proptest::prop_assert!(!name.contains('/') && !name.contains('\\') && !name.contains('\0'), "{name:?}");
                proptest::prop_assert!(name != "." && name != ".." && !name.is_empty(), "{name:?}");
            }
        }
    }
}
