//! The HTTP client of a download: egress policy on every connection and redirect, timeouts,
//! the caBundle's roots; and the back-off between attempts.

use std::time::Duration;

use super::super::{SourceError, reason};
use super::HttpSourceOptions;
use crate::egress;

/// Redirects followed per request.
pub(super) const MAX_REDIRECTS: usize = 10;

pub(super) fn build_client(
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

/// Exponential back-off for the `attempt`-th failure in a row (1-based), capped, with the
/// upper half jittered.
pub(super) fn backoff_delay(options: &HttpSourceOptions, attempt: u32) -> Duration {
    crate::net::backoff_from(
        options.initial_backoff,
        attempt.saturating_sub(1),
        crate::net::random_jitter(),
        options.max_backoff,
    )
}
