//! How DVCR requests authenticate: Basic credentials, or the bearer token a 401 challenge
//! asks for, fetched once and reused.

use super::*;

impl Dvcr {
    /// Adds the credentials when `url` is the registry itself: an upload Location may point
    /// elsewhere (a storage redirect), and credentials never cross hosts.
    pub(super) fn authorize(
        &self,
        request: reqwest::RequestBuilder,
        url: &Url,
        auth: Option<&HeaderValue>,
    ) -> reqwest::RequestBuilder {
        match auth {
            Some(auth) if crate::net::same_origin(url, &self.inner.base) => {
                request.header(AUTHORIZATION, auth.clone())
            }
            _ => request,
        }
    }

    /// Sends the request `build` makes for `url` with basic auth; when the registry wants a
    /// bearer token instead, gets one through oci-client and sends it again. Returns the
    /// response and the Authorization that worked, for the follow-up requests of a session.
    pub(super) async fn send(
        &self,
        operation: &'static str,
        repository: &str,
        url: &Url,
        build: impl Fn(&reqwest::Client, Url) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::Response, Option<HeaderValue>), DvcrError> {
        let request = build(&self.inner.http, url.clone());
        let response = self
            .authorize(request, url, self.inner.basic.as_ref())
            .send()
            .await
            .map_err(|e| DvcrError::network(operation, &e))?;
        if response.status() != StatusCode::UNAUTHORIZED || !bearer_challenge(&response) {
            return Ok((response, self.inner.basic.clone()));
        }
        let token = self.bearer_token(operation, repository).await?;
        let response = self
            .authorize(build(&self.inner.http, url.clone()), url, Some(&token))
            .send()
            .await
            .map_err(|e| DvcrError::network(operation, &e))?;
        Ok((response, Some(token)))
    }

    async fn bearer_token(
        &self,
        operation: &'static str,
        repository: &str,
    ) -> Result<HeaderValue, DvcrError> {
        let reference = self.reference(repository, "latest");
        let token = self
            .inner
            .oci
            .auth(&reference, &self.inner.oci_auth, RegistryOperation::Push)
            .await
            .map_err(|e| DvcrError::from_oci(operation, e))?
            .ok_or(DvcrError::AuthFailed {
                operation,
                status: 401,
            })?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| DvcrError::protocol(operation, "token is not a valid header value"))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

fn bearer_challenge(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.trim_start().to_ascii_lowercase().starts_with("bearer"))
}

pub(super) fn basic_auth_header(username: &str, password: &str) -> Result<HeaderValue, DvcrError> {
    use base64::Engine as _;
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .map_err(|_| DvcrError::Config("credentials are not valid in a header".to_string()))?;
    value.set_sensitive(true);
    Ok(value)
}
