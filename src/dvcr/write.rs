//! Writing into DVCR: a disk layer's upload session opened, an image tagged, a blob mounted
//! from another repository, an image deleted.

use super::*;

impl Dvcr {
    /// Opens an upload session and starts the single streaming request of the disk layer for a
    /// file of exactly `file_size` bytes named `file_name` (sanitised with [`disk_file_name`]).
    pub async fn start_disk_layer(
        &self,
        repository: &str,
        file_name: &str,
        file_size: u64,
    ) -> Result<DiskLayerUpload, DvcrError> {
        check_repository(repository)?;
        let file_name = disk_file_name(file_name);
        let url = self.url(&format!("v2/{repository}/blobs/uploads/"))?;
        let (response, auth) = self
            .send("open upload", repository, &url, |http, url| {
                http.post(url).header("Content-Length", "0")
            })
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(response_error("open upload", response).await);
        }
        let location = location(&response, "open upload")?;
        debug!(
            repository,
            file_name, file_size, "DVCR upload session opened"
        );
        Ok(DiskLayerUpload::start(
            self.clone(),
            repository,
            location,
            auth,
            &file_name,
            file_size,
        ))
    }

    /// Pushes the config and the manifest under `tag`: the only step that makes the image
    /// visible. Returns the manifest digest.
    pub async fn tag_image(
        &self,
        repository: &str,
        tag: &str,
        layer: &StoredLayer,
        labels: &ImageLabels,
    ) -> Result<String, DvcrError> {
        check_repository(repository)?;
        check_tag(tag)?;
        check_digest(&layer.digest)?;
        let reference = self.reference(repository, tag);
        self.inner
            .oci
            .store_auth_if_needed(&self.inner.registry, &self.inner.oci_auth)
            .await;

        let config = layout::config_json(&layer.digest, labels);
        let config_digest = layout::sha256_digest(&config);
        let config_size = config.len() as u64;
        self.inner
            .oci
            .push_blob(&reference, config, &config_digest)
            .await
            .map_err(|e| DvcrError::from_oci("push config", e))?;

        let manifest =
            layout::manifest_json(&config_digest, config_size, &layer.digest, layer.size);
        let manifest_digest = layout::sha256_digest(&manifest);
        self.inner
            .oci
            .push_manifest_raw(
                &reference,
                manifest,
                HeaderValue::from_static(layout::MANIFEST_MEDIA_TYPE),
            )
            .await
            .map_err(|e| DvcrError::from_oci("push manifest", e))?;
        debug!(repository, tag, manifest_digest, "DVCR image tagged");
        Ok(manifest_digest)
    }

    /// Deletes the image tagged `tag`; false when there was none.
    ///
    /// Deletes the manifest by digest, which also removes the tag. When another tag of the
    /// repository points at the same manifest (same file and labels imported twice), only the
    /// tag is deleted, so the other image stays.
    pub async fn delete_image(&self, repository: &str, tag: &str) -> Result<bool, DvcrError> {
        check_repository(repository)?;
        check_tag(tag)?;
        let Some(digest) = self.manifest_digest(repository, tag).await? else {
            return Ok(false);
        };
        let target = if self.digest_shared(repository, tag, &digest).await? {
            tag.to_string()
        } else {
            digest
        };
        let url = self.url(&format!("v2/{repository}/manifests/{target}"))?;
        let (response, _) = self
            .send("delete manifest", repository, &url, |http, url| {
                http.delete(url).timeout(SMALL_REQUEST_TIMEOUT)
            })
            .await?;
        match response.status() {
            StatusCode::ACCEPTED | StatusCode::OK | StatusCode::NO_CONTENT => {
                debug!(repository, tag, target, "DVCR image deleted");
                Ok(true)
            }
            // Deleted by someone else in between.
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(response_error("delete manifest", response).await),
        }
    }

    /// Makes the blob `digest` of `from_repository` available in `to_repository` without
    /// uploading it. False when the registry declines (it then offers an upload session, which
    /// is cancelled here); the caller must then upload the blob itself.
    pub async fn mount_blob(
        &self,
        from_repository: &str,
        to_repository: &str,
        digest: &str,
    ) -> Result<bool, DvcrError> {
        check_repository(from_repository)?;
        check_repository(to_repository)?;
        check_digest(digest)?;
        let mut url = self.url(&format!("v2/{to_repository}/blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", digest)
            .append_pair("from", from_repository);
        // oci-client's mount_blob treats the 202 fallback as an error and leaks its session.
        let (response, auth) = self
            .send("mount blob", to_repository, &url, |http, url| {
                http.post(url)
                    .header("Content-Length", "0")
                    .timeout(SMALL_REQUEST_TIMEOUT)
            })
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                if let Ok(session) = location(&response, "mount blob") {
                    self.cancel_upload(&session, auth.as_ref()).await;
                }
                Ok(false)
            }
            _ => Err(response_error("mount blob", response).await),
        }
    }

    /// DELETE on an upload session, best effort: the registry purges stale sessions anyway.
    pub(super) async fn cancel_upload(&self, session: &Url, auth: Option<&HeaderValue>) {
        let request = self
            .inner
            .http
            .delete(session.clone())
            .timeout(SMALL_REQUEST_TIMEOUT);
        let request = self.authorize(request, session, auth);
        match request.send().await {
            Ok(response) => debug!(status = %response.status(), "DVCR upload session cancelled"),
            Err(e) => debug!(error = %e, "cancelling the DVCR upload session failed"),
        }
    }
}
