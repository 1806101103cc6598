//! The URL of a download split from its credentials, with every secret it carries known so
//! that none reaches a message.

use reqwest::Url;

use super::super::{SourceError, reason};
use crate::net::redact_url;

/// The URL to download, split into a credential-free URL and the credentials.
pub(super) struct Target {
    pub(super) url: Url,
    pub(super) username: String,
    pub(super) password: Option<String>,
    /// Strings that must never reach a message: password, user name, query string, in raw
    /// and percent-decoded forms.
    secrets: crate::net::Scrubber,
}

impl Target {
    pub(super) fn parse(raw: &str) -> Result<Self, SourceError> {
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

    pub(super) fn has_credentials(&self) -> bool {
        !self.username.is_empty() || self.password.is_some()
    }

    /// Whether `url` is on the origin the credentials were given for.
    pub(super) fn same_origin(&self, url: &Url) -> bool {
        crate::net::same_origin(&self.url, url)
    }

    /// Removes any secret from a text taken from the HTTP stack.
    pub(super) fn scrub(&self, text: &str) -> String {
        self.secrets.apply(text)
    }
}
