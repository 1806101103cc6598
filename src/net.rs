//! Small network helpers every client of the daemon shares (the HTTP source, the registry
//! source, DVCR, the forges): error chains as one line, origins, percent-decoding.

use std::error::Error;
use std::time::Duration;

use url::Url;

/// An error and its causes on one line, `a: b: c`, each cause once: reqwest's and rustls'
/// own Display hides the interesting part (connection refused, unknown issuer…), and a cause
/// whose text an outer error already repeats is left out.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(err) = current {
        let text = err.to_string();
        if !text.is_empty() && !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

/// Takes secrets out of texts that come from the network stack (errors that quote a URL, a
/// server's answer) before they reach a message.
#[derive(Clone, Default)]
pub struct Scrubber {
    /// Longest first, so a secret containing another is replaced whole.
    secrets: Vec<String>,
}

impl Scrubber {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            // Short strings would garble messages and cannot be told from ordinary words.
            .filter(|secret| secret.len() >= 3)
            .collect();
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        secrets.dedup();
        Self { secrets }
    }

    pub fn apply(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "<redacted>");
            }
        }
        text
    }
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrubber({} secrets)", self.secrets.len())
    }
}

/// Same scheme, host and port: where credentials given for `a` may also go.
pub fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Lossy `%XX` decoding: invalid escapes stay as they are, invalid UTF-8 becomes U+FFFD.
pub fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// The longest backoff after failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// `Retry-After`: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(Duration::from_secs((date.timestamp() - now).max(0) as u64))
}

/// Exponential backoff after `failures` consecutive failures (0 for the first): 1 s, 2 s,
/// 4 s... up to 5 min, with "equal jitter" (half fixed, half random by `jitter` in [0, 1])
/// so that many daemons do not retry in lockstep.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    backoff_from(Duration::from_secs(1), failures, jitter, MAX_BACKOFF)
}

/// [`backoff`] starting at `initial` and capped at `max`.
pub fn backoff_from(initial: Duration, failures: u32, jitter: f64, max: Duration) -> Duration {
    let base = initial.saturating_mul(1u32 << failures.min(16)).min(max);
    let jitter = jitter.clamp(0.0, 1.0);
    base / 2 + base.mul_f64(jitter / 2.0)
}

/// A random number in [0, 1] for jitter; 0.5 if the system RNG fails (it does not).
pub fn random_jitter() -> f64 {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut bytes = [0u8; 2];
    match aws_lc_rs::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u16::from_le_bytes(bytes)) / f64::from(u16::MAX),
        Err(_) => 0.5,
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1
                .as_deref()
                .map(|layer| layer as &(dyn Error + 'static))
        }
    }

    #[test]
    fn an_error_chain_names_each_cause_once() {
        let error = Layer(
            "error sending request",
            Some(Box::new(Layer(
                "connection refused",
                Some(Box::new(Layer("refused", None))),
            ))),
        );
        assert_eq!(
            error_chain(&error),
            "error sending request: connection refused"
        );
        assert_eq!(
            error_chain(&Layer("", Some(Box::new(Layer("eof", None))))),
            "eof"
        );
    }

    #[test]
    fn secrets_are_scrubbed_longest_first_and_short_ones_are_left() {
        let scrubber = Scrubber::new(["hunter2".to_string(), "hunter2x".into(), "ab".into()]);
        assert_eq!(
            scrubber.apply("hunter2x and hunter2 and ab"),
            "<redacted> and <redacted> and ab"
        );
        assert_eq!(format!("{scrubber:?}"), "Scrubber(2 secrets)");
    }

    #[test]
    fn origins_compare_scheme_host_and_effective_port() {
        let url = |text: &str| Url::parse(text).unwrap();
        assert!(same_origin(
            &url("https://a.example/x"),
            &url("https://a.example:443/y")
        ));
        assert!(!same_origin(
            &url("https://a.example/"),
            &url("http://a.example/")
        ));
        assert!(!same_origin(
            &url("https://a.example/"),
            &url("https://b.example/")
        ));
        assert!(!same_origin(
            &url("https://a.example/"),
            &url("https://a.example:8443/")
        ));
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("ubuntu%2022.04%2Eimg"), "ubuntu 22.04.img");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%+1"), "%+1", "a sign is not a hex digit");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("7", 0), Some(Duration::from_secs(7)));
        // Sun, 06 Nov 1994 08:49:37 GMT is 784111777.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_770),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_800),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", 0), None);
    }

    #[test]
    fn backoff_doubles_to_five_minutes_with_jitter() {
        assert_eq!(backoff(0, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(0, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(3, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(20, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX, 0.0), MAX_BACKOFF / 2);
        let jitter = random_jitter();
        assert!((0.0..=1.0).contains(&jitter));
    }

    proptest::proptest! {
        #[test]
        fn retry_after_never_panics(value in ".{0,40}", now in proptest::num::i64::ANY) {
            let _ = parse_retry_after(&value, now);
        }

        #[test]
        fn percent_decoding_undoes_percent_encoding(text in ".{0,40}") {
            let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
            proptest::prop_assert_eq!(percent_decode(&encoded), text);
        }

        #[test]
        fn backoff_stays_within_its_bounds(failures in proptest::num::u32::ANY, jitter in -1.0f64..2.0) {
            let delay = backoff(failures, jitter);
            proptest::prop_assert!(delay >= Duration::from_millis(500) && delay <= MAX_BACKOFF);
        }
    }
}
