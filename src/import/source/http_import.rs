//! HTTP and HTTPS sources feed the pipeline through `HttpDownload`, which hides interrupted
//! connections behind range requests; a file that changed under its URL starts over.

use base64::Engine;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::api::HttpSource;
use crate::dvcr::Dvcr;
use crate::import::checkpoint::SourceValidator;
use crate::import::pipeline::{
    self, ByteSource, ImportError, ImportRequest, LiveProgress, PipelineSettings, StoredImport,
};
use crate::import::source::http::{HttpDownload, HttpSourceOptions};
use crate::import::source::{SourceError, SourceErrorKind};

impl ByteSource for HttpDownload {
    fn file_name(&self) -> String {
        HttpDownload::file_name(self)
    }
    fn content_length(&self) -> Option<u64> {
        HttpDownload::content_length(self)
    }
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, SourceError> {
        HttpDownload::next_chunk(self).await
    }
    fn validator(&self) -> Option<SourceValidator> {
        HttpDownload::validator(self)
    }
}

/// Imports the file behind an HTTP(S) URL.
pub async fn import(
    dvcr: &Dvcr,
    settings: &PipelineSettings,
    options: &HttpSourceOptions,
    request: &ImportRequest,
    source: &HttpSource,
    progress: &LiveProgress,
    cancel: &CancellationToken,
) -> Result<StoredImport, ImportError> {
    let ca_bundle = source
        .ca_bundle
        .as_deref()
        .map(decode_ca_bundle)
        .transpose()?;
    pipeline::store_restarting(dvcr, settings, request, progress, cancel, |at| {
        let ca_bundle = ca_bundle.clone();
        async move {
            match at {
                Some(at) => {
                    HttpDownload::open_at(&source.url, ca_bundle.as_deref(), options.clone(), &at)
                }
                None => {
                    HttpDownload::open(&source.url, ca_bundle.as_deref(), options.clone()).await
                }
            }
        }
    })
    .await
}

/// The caBundle of the spec is base64 of a PEM chain.
pub(crate) fn decode_ca_bundle(encoded: &str) -> Result<Vec<u8>, ImportError> {
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|error| {
            ImportError::Source(SourceError {
                kind: SourceErrorKind::Permanent,
                reason: "InvalidCABundle",
                message: format!("http.caBundle is not valid base64 ({error}); put the base64 of a PEM certificate chain there"),
            })
        })
}
