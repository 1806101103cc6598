//! Where the bytes go: straight into a DVCR upload session when the size is known, else into
//! a spool file uploaded once the source ends.

use super::*;

/// Where the bytes go while they stream: straight into DVCR when the size is known, or into
/// a spool file until it is.
pub(super) enum Sink {
    Upload(Box<DiskLayerUpload>),
    Spool(Spool),
}

impl Sink {
    pub(super) async fn spool(
        dir: &std::path::Path,
        budget: &Arc<SpoolBudget>,
    ) -> Result<Self, ImportError> {
        let spool_error = |error| ImportError::Spool {
            dir: dir.display().to_string(),
            error,
        };
        static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let prefix = PREFIX.get_or_init(|| spool::file_prefix(spool::Owner::current()));
        let path = tempfile::Builder::new()
            .prefix(prefix.as_str())
            .tempfile_in(dir)
            .map_err(spool_error)?
            .into_temp_path();
        let file = tokio::fs::File::create(&path).await.map_err(spool_error)?;
        Ok(Self::Spool(Spool {
            path,
            file,
            dir: dir.display().to_string(),
            reservation: budget.reservation(),
        }))
    }

    pub(super) async fn write(&mut self, chunk: Bytes) -> Result<(), ImportError> {
        match self {
            Self::Upload(upload) => Ok(upload.write(chunk).await?),
            Self::Spool(spool) => {
                spool
                    .reservation
                    .grow(chunk.len() as u64)
                    .map_err(ImportError::SpoolFull)?;
                spool
                    .file
                    .write_all(&chunk)
                    .await
                    .map_err(|error| spool.error(error))
            }
        }
    }

    pub(super) async fn abort(self) {
        match self {
            Self::Upload(upload) => (*upload).abort().await,
            // Dropping the TempPath removes the file.
            Self::Spool(_) => {}
        }
    }

    /// Leaves the upload session open for a later run that goes on from its checkpoint.
    pub(super) async fn detach(self) {
        match self {
            Self::Upload(upload) => (*upload).detach().await,
            Self::Spool(_) => {}
        }
    }
}

pub(super) struct Spool {
    pub(super) path: tempfile::TempPath,
    pub(super) file: tokio::fs::File,
    pub(super) dir: String,
    /// Given back when the spool file is gone (dropped with it).
    reservation: spool::Reservation,
}

impl Spool {
    pub(super) fn error(&self, error: std::io::Error) -> ImportError {
        ImportError::Spool {
            dir: self.dir.clone(),
            error,
        }
    }

    /// Uploads the spooled file, now that its size is known; the file is removed afterwards.
    pub(super) async fn upload(
        mut self,
        dvcr: &Dvcr,
        request: &ImportRequest,
        file_name: &str,
        size: u64,
        cancel: &CancellationToken,
    ) -> Result<StoredLayer, ImportError> {
        self.file.flush().await.map_err(|e| self.error(e))?;
        let mut file = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| self.error(e))?;
        let mut upload = dvcr
            .start_disk_layer(&request.repository, file_name, size)
            .await?;
        if let Err(error) = record_session(request, &upload, file_name, size, None, cancel).await {
            upload.abort().await;
            return Err(error);
        }
        loop {
            let mut buffer = bytes::BytesMut::with_capacity(SPOOL_CHUNK);
            let read = tokio::select! {
                _ = cancel.cancelled() => { upload.abort().await; return Err(ImportError::Cancelled) }
                read = file.read_buf(&mut buffer) => read,
            };
            match read {
                Ok(0) => break,
                Ok(_) => {
                    if let Err(error) = upload.write(buffer.freeze()).await {
                        upload.abort().await;
                        return Err(error.into());
                    }
                }
                Err(error) => {
                    upload.abort().await;
                    return Err(self.error(error));
                }
            }
        }
        Ok(upload.finish().await?)
    }
}
