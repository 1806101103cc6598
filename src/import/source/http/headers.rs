//! Parsers of the response headers a download trusts no further than it must: lengths,
//! validators, Content-Range, Retry-After, and the file name of Content-Disposition or the
//! URL.

use std::time::{Duration, SystemTime};

use reqwest::Url;
use reqwest::header::{self, HeaderMap, HeaderValue};

pub(super) fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers
        .get(name)
        .and_then(|value: &HeaderValue| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

/// Content-Length of a response body not sent with a transfer coding.
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    header_str(headers, header::CONTENT_LENGTH)?.parse().ok()
}

/// `Last-Modified` as a validator, only when it is strong (RFC 9110 §8.8.2.2): at least 60 s
/// before the response's `Date`, so a file changed twice within one second cannot keep it.
pub(super) fn strong_last_modified(
    last_modified: Option<&str>,
    date: Option<&str>,
) -> Option<String> {
    let parse = |text: &str| chrono::DateTime::parse_from_rfc2822(text.trim()).ok();
    let modified = parse(last_modified?)?;
    let date = parse(date?)?;
    (date.signed_duration_since(modified) >= chrono::Duration::seconds(60))
        .then(|| last_modified.map(str::to_string))
        .flatten()
}

pub(super) fn strong_etag(headers: &HeaderMap) -> Option<String> {
    header_str(headers, header::ETAG)
        .filter(|etag| !etag.starts_with("W/") && etag.starts_with('"'))
        .map(str::to_string)
}

/// `Content-Range: bytes <start>-<end>/<total>` (or `bytes */<total>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ContentRange {
    pub(super) start: Option<u64>,
    pub(super) total: Option<u64>,
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

pub(super) fn parse_content_range(value: &str) -> Option<ContentRange> {
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
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64);
    crate::net::parse_retry_after(value, now)
}

/// The file name of a `Content-Disposition` header: `filename*` (RFC 8187) first, then
/// `filename`.
pub(super) fn content_disposition_file_name(value: &str) -> Option<String> {
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
pub(super) fn url_file_name(url: &Url) -> Option<String> {
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
