//! How long to wait before calling a forge again: rate limits and exponential backoff.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

/// The longest wait a forge's rate-limit headers can impose (GitHub's windows are an hour).
pub const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(3600);

/// What a forge's answer means for the update and the next calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Rate-limited: wait this long (None: the forge did not say; back off exponentially).
    RateLimited(Option<Duration>),
    /// A transient failure (5xx, 408): retry with backoff.
    Transient,
    /// Refused for good (401, 404, 422...): drop the update.
    Refused,
}

/// Classifies a response by status and rate-limit headers. `now` is Unix seconds.
pub fn verdict(status: StatusCode, headers: &HeaderMap, now: i64) -> Verdict {
    if status.is_success() {
        return Verdict::Accepted;
    }
    let rate_limited = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN
            && (header(headers, "retry-after").is_some()
                || header(headers, "x-ratelimit-remaining").as_deref() == Some("0")
                || header(headers, "ratelimit-remaining").as_deref() == Some("0")));
    if rate_limited {
        return Verdict::RateLimited(rate_limit_wait(headers, now));
    }
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return Verdict::Transient;
    }
    Verdict::Refused
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim().to_string())
}

/// The wait a rate-limited answer asks for: `Retry-After` (seconds or an HTTP date), else
/// the reset time of an exhausted window (GitHub `x-ratelimit-reset`, GitLab
/// `ratelimit-reset`, Unix seconds), bounded by [`MAX_RATE_LIMIT_WAIT`].
pub fn rate_limit_wait(headers: &HeaderMap, now: i64) -> Option<Duration> {
    if let Some(value) = header(headers, "retry-after") {
        return parse_retry_after(&value, now).map(|wait| wait.min(MAX_RATE_LIMIT_WAIT));
    }
    let exhausted = header(headers, "x-ratelimit-remaining").as_deref() == Some("0")
        || header(headers, "ratelimit-remaining").as_deref() == Some("0");
    if !exhausted {
        return None;
    }
    let reset =
        header(headers, "x-ratelimit-reset").or_else(|| header(headers, "ratelimit-reset"))?;
    let reset: i64 = reset.parse().ok()?;
    // At least a second: a reset "now" by a clock slightly behind ours is still in the future.
    let seconds = (reset - now).clamp(1, MAX_RATE_LIMIT_WAIT.as_secs() as i64);
    Some(Duration::from_secs(seconds as u64))
}

pub use crate::net::{backoff, parse_retry_after, random_jitter};

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn statuses_and_headers_give_verdicts() {
        let none = HeaderMap::new();
        assert_eq!(verdict(StatusCode::CREATED, &none, 0), Verdict::Accepted);
        assert_eq!(
            verdict(
                StatusCode::TOO_MANY_REQUESTS,
                &headers(&[("retry-after", "3")]),
                0
            ),
            Verdict::RateLimited(Some(Duration::from_secs(3)))
        );
        assert_eq!(
            verdict(StatusCode::TOO_MANY_REQUESTS, &none, 0),
            Verdict::RateLimited(None)
        );
        assert_eq!(
            verdict(
                StatusCode::FORBIDDEN,
                &headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "130")]),
                100
            ),
            Verdict::RateLimited(Some(Duration::from_secs(30)))
        );
        // A reset far away is bounded; one in the past still waits a second.
        assert_eq!(
            rate_limit_wait(
                &headers(&[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "999999")
                ]),
                0
            ),
            Some(MAX_RATE_LIMIT_WAIT)
        );
        assert_eq!(
            rate_limit_wait(
                &headers(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "5")]),
                10
            ),
            Some(Duration::from_secs(1))
        );
        // A plain 403 is a permission problem, not a rate limit.
        assert_eq!(verdict(StatusCode::FORBIDDEN, &none, 0), Verdict::Refused);
        assert_eq!(
            verdict(StatusCode::UNPROCESSABLE_ENTITY, &none, 0),
            Verdict::Refused
        );
        assert_eq!(
            verdict(StatusCode::BAD_GATEWAY, &none, 0),
            Verdict::Transient
        );
    }
}
