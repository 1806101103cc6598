//! An upload session after a restart: what the registry holds of it, going on from a saved
//! hash state, or cancelling it.

use super::*;

/// What the registry holds of an open upload session.
#[derive(Debug, Clone)]
pub struct SessionStatus {
    /// Layer bytes received.
    pub size: u64,
    /// The session URL with a state token for `size`, for the next request.
    pub location: Url,
}

impl Dvcr {
    /// How many bytes the registry holds of the upload `session` (a URL from
    /// [`DiskLayerUpload::session_url`]); `None` when it no longer knows the session.
    pub async fn upload_status(
        &self,
        repository: &str,
        session: &Url,
    ) -> Result<Option<(SessionStatus, Option<HeaderValue>)>, DvcrError> {
        check_session(self, session)?;
        let (response, auth) = self
            .send("upload status", repository, session, |http, url| {
                http.get(url).timeout(ABORT_TIMEOUT)
            })
            .await?;
        Ok(session_status(response).await?.map(|status| (status, auth)))
    }

    /// Goes on with the upload `session` of a file of `file_size` bytes named as before, from
    /// a saved layer hash state after `snapshot.written` bytes. `None` when the session is
    /// gone or holds fewer bytes than the snapshot covers (it is cancelled then): the upload
    /// must start over.
    pub async fn resume_disk_layer(
        &self,
        repository: &str,
        session: &Url,
        file_size: u64,
        snapshot: &LayerSnapshot,
    ) -> Result<Option<(DiskLayerUpload, u64)>, DvcrError> {
        check_repository(repository)?;
        let Some(hasher) = layer_hasher(&snapshot.layer_state) else {
            self.cancel_upload_session(repository, session).await;
            return Ok(None);
        };
        let Some((status, auth)) = self.upload_status(repository, session).await? else {
            return Ok(None);
        };
        let covered = layout::HEADERS_LEN + snapshot.written;
        if snapshot.written > file_size
            || status.size < covered
            || status.size > layout::layer_size(file_size)
        {
            debug!(
                repository,
                held = status.size,
                covered,
                "the DVCR upload session does not fit its checkpoint; starting over"
            );
            self.cancel_upload_session(repository, session).await;
            return Ok(None);
        }
        debug!(
            repository,
            held = status.size,
            covered,
            "DVCR upload resumed"
        );
        let upload = DiskLayerUpload::open(
            self.clone(),
            repository,
            status.location,
            auth,
            file_size,
            Resumed {
                hasher,
                written: snapshot.written,
                registry_has: status.size,
            },
        );
        Ok(Some((upload, status.size)))
    }

    /// Cancels an upload session left open, from its URL without a state token (best effort:
    /// the registry purges stale sessions itself).
    pub async fn cancel_upload_session(&self, repository: &str, session: &Url) {
        match self.upload_status(repository, session).await {
            Ok(Some((status, auth))) => self.cancel_upload(&status.location, auth.as_ref()).await,
            Ok(None) => {}
            Err(error) => {
                warn!(repository, %error, "cannot read a DVCR upload session to cancel it");
            }
        }
    }
}

/// What a session status answer says: `None` for a session the registry does not know.
async fn session_status(response: reqwest::Response) -> Result<Option<SessionStatus>, DvcrError> {
    if response.status() == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if response.status() != StatusCode::NO_CONTENT {
        return Err(response_error("upload status", response).await);
    }
    let size = response
        .headers()
        .get("Range")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_upload_range)
        .ok_or_else(|| DvcrError::protocol("upload status", "no usable Range header"))?;
    let location = location(&response, "upload status")?;
    Ok(Some(SessionStatus { size, location }))
}

/// Asks how much of one running upload the registry holds, with the upload's own credentials
/// (one request each time, where a registry with tokens would otherwise be asked for a new
/// one): what a checkpoint is confirmed with.
#[derive(Clone)]
pub struct SessionProbe {
    pub(super) dvcr: Dvcr,
    pub(super) session: Url,
    pub(super) auth: Option<HeaderValue>,
}

impl SessionProbe {
    /// Layer bytes the registry holds; `None` once it no longer knows the session.
    pub async fn held(&self) -> Result<Option<u64>, DvcrError> {
        let response = self
            .dvcr
            .authorize(
                self.dvcr.http().get(self.session.clone()),
                &self.session,
                self.auth.as_ref(),
            )
            .timeout(ABORT_TIMEOUT)
            .send()
            .await
            .map_err(|e| DvcrError::network("upload status", &e))?;
        Ok(session_status(response).await?.map(|status| status.size))
    }
}

/// Upload sessions are the registry's own URLs: a saved one that points elsewhere is not
/// followed (credentials never cross hosts, and a checkpoint is outside input).
fn check_session(dvcr: &Dvcr, session: &Url) -> Result<(), DvcrError> {
    if crate::net::same_origin(session, &dvcr.inner.base) {
        Ok(())
    } else {
        Err(DvcrError::InvalidReference(
            "an upload session on another host than DVCR".to_string(),
        ))
    }
}

/// The bytes an upload holds, from its `Range: 0-<last>` (distribution says `0-0` for none).
pub(super) fn parse_upload_range(value: &str) -> Option<u64> {
    let (first, last) = value.trim().split_once('-')?;
    if first != "0" {
        return None;
    }
    let last: u64 = last.parse().ok()?;
    Some(if last == 0 { 0 } else { last + 1 })
}

/// Where a resumed upload stands.
pub(super) struct Resumed {
    /// The layer hash after the two headers and `written` disk file bytes.
    pub hasher: Sha256,
    pub written: u64,
    /// Layer bytes the registry holds (at least the headers and `written` bytes).
    pub registry_has: u64,
}

impl Default for Resumed {
    fn default() -> Self {
        Self {
            hasher: Sha256::new(),
            written: 0,
            registry_has: 0,
        }
    }
}

/// The layer hash as saved by [`DiskLayerUpload::snapshot`].
fn layer_hasher(state: &[u8]) -> Option<Sha256> {
    let state = state.try_into().ok()?;
    Sha256::deserialize(&state).ok()
}

/// `url` without the registry's `_state` query parameter (which goes stale with every request).
pub(super) fn without_state(url: &Url) -> Url {
    let mut bare = url.clone();
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(key, _)| key != "_state")
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    bare.set_query(None);
    if !kept.is_empty() {
        bare.query_pairs_mut().extend_pairs(kept);
    }
    bare
}
