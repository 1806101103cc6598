//! Reading from DVCR: manifests and their digests, a stored image's labels and layers, the
//! disk file as a stream.

use super::*;

impl Dvcr {
    /// The digest of the manifest tagged `tag`, None when there is none.
    pub async fn manifest_digest(
        &self,
        repository: &str,
        tag: &str,
    ) -> Result<Option<String>, DvcrError> {
        check_repository(repository)?;
        check_tag(tag)?;
        self.head_manifest(&self.reference(repository, tag)).await
    }

    async fn head_manifest(&self, reference: &Reference) -> Result<Option<String>, DvcrError> {
        match self
            .inner
            .oci
            .fetch_manifest_digest(reference, &self.inner.oci_auth)
            .await
        {
            Ok(digest) => Ok(Some(digest)),
            Err(e) => {
                let error = DvcrError::from_oci("head manifest", e);
                if error.is_not_found() {
                    Ok(None)
                } else {
                    Err(error)
                }
            }
        }
    }

    /// Whether a tag other than `tag` points at `digest`.
    pub(super) async fn digest_shared(
        &self,
        repository: &str,
        tag: &str,
        digest: &str,
    ) -> Result<bool, DvcrError> {
        let reference = self.reference(repository, tag);
        let tags = self
            .inner
            .oci
            .list_tags(&reference, &self.inner.oci_auth, None, None)
            .await
            .map_err(|e| DvcrError::from_oci("list tags", e))?
            .tags;
        for other in tags.iter().filter(|t| t.as_str() != tag) {
            let other_reference = self.reference(repository, other);
            if self.head_manifest(&other_reference).await?.as_deref() == Some(digest) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Reads an image back and checks that it has the DVCR disk layout.
    pub async fn read_image(&self, repository: &str, tag: &str) -> Result<StoredImage, DvcrError> {
        check_repository(repository)?;
        check_tag(tag)?;
        let reference = self.reference(repository, tag);
        let name = self.image_url(repository, tag);
        let invalid = |message: String| DvcrError::InvalidImage {
            reference: name.clone(),
            message,
        };

        let (raw, manifest_digest) = self
            .inner
            .oci
            .pull_manifest_raw(
                &reference,
                &self.inner.oci_auth,
                &[layout::MANIFEST_MEDIA_TYPE],
            )
            .await
            .map_err(|e| not_found_as(DvcrError::from_oci("pull manifest", e), &name))?;
        let manifest: ImageManifest = serde_json::from_slice(&raw)
            .map_err(|e| invalid(format!("manifest is not an OCI image manifest: {e}")))?;
        if manifest.media_type.as_deref() != Some(layout::MANIFEST_MEDIA_TYPE) {
            return Err(invalid(format!(
                "manifest media type {:?}",
                manifest.media_type
            )));
        }
        if manifest.config.media_type != layout::CONFIG_MEDIA_TYPE {
            return Err(invalid(format!(
                "config media type {}",
                manifest.config.media_type
            )));
        }
        let [layer] = manifest.layers.as_slice() else {
            return Err(invalid(format!(
                "{} layers instead of 1",
                manifest.layers.len()
            )));
        };
        if layer.media_type != layout::LAYER_MEDIA_TYPE {
            return Err(invalid(format!("layer media type {}", layer.media_type)));
        }
        check_digest(&manifest.config.digest)?;
        check_digest(&layer.digest)?;

        let mut config = Vec::new();
        self.inner
            .oci
            .pull_blob(&reference, manifest.config.digest.as_str(), &mut config)
            .await
            .map_err(|e| not_found_as(DvcrError::from_oci("pull config", e), &name))?;
        let config: layout::ImageConfig = serde_json::from_slice(&config)
            .map_err(|e| invalid(format!("config is not an OCI image config: {e}")))?;
        if config.rootfs.diff_ids != [layer.digest.clone()] {
            return Err(invalid(
                "rootfs.diff_ids is not the layer digest".to_string(),
            ));
        }
        let labels = config.config.labels.unwrap_or_default();

        let headers = self.layer_headers(&reference, &layer.digest, &name).await?;
        let (file_name, file_size) = layout::parse_disk_headers(&headers).map_err(invalid)?;
        if layout::layer_size(file_size) != layer.size {
            return Err(invalid(format!(
                "layer of {} bytes cannot hold a {file_size}-byte file",
                layer.size
            )));
        }

        let layer = StoredLayer {
            digest: layer.digest.clone(),
            size: layer.size,
        };
        Ok(StoredImage {
            manifest_digest,
            manifest,
            labels,
            layer,
            file_name,
            file_size,
        })
    }

    /// The bytes of the disk file of a stored image, streamed straight from its layer (a range
    /// request past the two tar headers), for copies that cannot mount and for verification.
    pub async fn disk_file_stream(
        &self,
        repository: &str,
        image: &StoredImage,
    ) -> Result<DiskFileStream, DvcrError> {
        // `read_image` gave it, a manifest read, so the client holds pull credentials.
        self.layer_file_stream(repository, &image.layer, &image.file_name, image.file_size)
            .await
    }

    /// The bytes of the disk file in a committed `layer` that no tag names yet (a resumed
    /// import's, read back before its tag), as in [`disk_file_stream`](Self::disk_file_stream).
    pub async fn untagged_disk_file_stream(
        &self,
        repository: &str,
        layer: &StoredLayer,
        file_name: &str,
        file_size: u64,
    ) -> Result<DiskFileStream, DvcrError> {
        check_repository(repository)?;
        // Blob reads use the credentials of an earlier manifest read; without one, log in.
        self.inner
            .oci
            .auth(
                &self.reference(repository, "latest"),
                &self.inner.oci_auth,
                RegistryOperation::Pull,
            )
            .await
            .map_err(|e| DvcrError::from_oci("pull layer", e))?;
        self.layer_file_stream(repository, layer, file_name, file_size)
            .await
    }

    async fn layer_file_stream(
        &self,
        repository: &str,
        layer: &StoredLayer,
        file_name: &str,
        file_size: u64,
    ) -> Result<DiskFileStream, DvcrError> {
        use oci_client::client::BlobResponse;
        check_repository(repository)?;
        check_digest(&layer.digest)?;
        let reference = self.reference(repository, "latest");
        let name = format!("{}/{repository}@{}", self.inner.registry, layer.digest);
        let response = self
            .inner
            .oci
            .pull_blob_stream_partial(
                &reference,
                layer.digest.as_str(),
                layout::HEADERS_LEN,
                Some(file_size),
            )
            .await
            .map_err(|e| not_found_as(DvcrError::from_oci("pull layer", e), &name))?;
        // A registry that ignores Range sends the whole layer: skip the headers then.
        let (skip, sized) = match response {
            BlobResponse::Partial(sized) => (0, sized),
            BlobResponse::Full(sized) => (layout::HEADERS_LEN, sized),
        };
        Ok(DiskFileStream {
            stream: sized.stream,
            skip,
            remaining: file_size,
            file_name: file_name.to_string(),
            file_size,
        })
    }

    /// The whole layer blob of a stored image, as the registry serves it, for verification:
    /// the caller checks the digest itself (a range request, so the client does not stop at
    /// a mismatch before the caller has seen every byte).
    pub async fn layer_stream(
        &self,
        repository: &str,
        layer: &StoredLayer,
    ) -> Result<futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>, DvcrError>
    {
        use oci_client::client::BlobResponse;
        check_repository(repository)?;
        check_digest(&layer.digest)?;
        let reference = self.reference(repository, "latest");
        let name = format!("{}/{repository}@{}", self.inner.registry, layer.digest);
        let response = self
            .inner
            .oci
            .pull_blob_stream_partial(&reference, layer.digest.as_str(), 0, Some(layer.size))
            .await
            .map_err(|e| not_found_as(DvcrError::from_oci("pull layer", e), &name))?;
        let (BlobResponse::Full(sized) | BlobResponse::Partial(sized)) = response;
        Ok(sized.stream)
    }

    /// The first two tar blocks of a layer (a range request: the layer may be gigabytes).
    async fn layer_headers(
        &self,
        reference: &Reference,
        digest: &str,
        name: &str,
    ) -> Result<Vec<u8>, DvcrError> {
        use oci_client::client::BlobResponse;
        let want = layout::HEADERS_LEN as usize;
        let response = self
            .inner
            .oci
            .pull_blob_stream_partial(reference, digest, 0, Some(want as u64))
            .await
            .map_err(|e| not_found_as(DvcrError::from_oci("pull layer", e), name))?;
        let (BlobResponse::Full(sized) | BlobResponse::Partial(sized)) = response;
        let mut stream = sized.stream;
        let mut headers = Vec::with_capacity(want);
        // A registry that ignores Range sends the whole layer: stop reading after the headers.
        while headers.len() < want {
            match stream.next().await {
                Some(Ok(chunk)) => headers.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(DvcrError::Unavailable {
                        operation: "pull layer",
                        status: None,
                        message: e.to_string(),
                    });
                }
                None => break,
            }
        }
        headers.truncate(want);
        Ok(headers)
    }

    /// Whether the blob `digest` can be read from `repository`.
    pub async fn blob_exists(&self, repository: &str, digest: &str) -> Result<bool, DvcrError> {
        check_repository(repository)?;
        check_digest(digest)?;
        let reference = self.reference(repository, "latest");
        self.inner
            .oci
            .store_auth_if_needed(&self.inner.registry, &self.inner.oci_auth)
            .await;
        self.inner
            .oci
            .blob_exists(&reference, digest)
            .await
            .map_err(|e| DvcrError::from_oci("check blob", e))
    }
}

/// The disk file of a stored image, as a stream of its bytes; see [`Dvcr::disk_file_stream`].
pub struct DiskFileStream {
    stream: futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
    /// Bytes to drop before the file starts (when the registry ignored the range).
    skip: u64,
    /// File bytes still to come.
    remaining: u64,
    pub file_name: String,
    pub file_size: u64,
}

impl DiskFileStream {
    /// The next bytes of the file; `None` after exactly `file_size` bytes.
    pub async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, DvcrError> {
        use futures::StreamExt;
        while self.remaining > 0 {
            let Some(chunk) = self.stream.next().await else {
                return Err(DvcrError::Unavailable {
                    operation: "pull layer",
                    status: None,
                    message: format!(
                        "the layer ended {} bytes before the end of the disk file",
                        self.remaining
                    ),
                });
            };
            let mut chunk = chunk.map_err(|e| DvcrError::Unavailable {
                operation: "pull layer",
                status: None,
                message: e.to_string(),
            })?;
            if self.skip > 0 {
                let dropped = self.skip.min(chunk.len() as u64);
                let _ = chunk.split_to(dropped as usize);
                self.skip -= dropped;
            }
            if chunk.len() as u64 > self.remaining {
                chunk.truncate(self.remaining as usize);
            }
            if !chunk.is_empty() {
                self.remaining -= chunk.len() as u64;
                return Ok(Some(chunk));
            }
        }
        Ok(None)
    }
}
