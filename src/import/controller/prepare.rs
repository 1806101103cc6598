//! One step list for every source that the daemon fetches: the source's own wait (its pull
//! secret, the image it copies) gives a [`Prepared`] source, and every prepared source then
//! goes through the same steps: an import slot, the ImportStarted Event, the transfer with
//! status ticks and retries.

use super::*;
use crate::api::{ContainerImageSource, HttpSource};

/// A source whose wait is over: what one transfer attempt needs.
pub(super) enum Prepared<'a> {
    Http(&'a HttpSource),
    ContainerDisk {
        image: &'a ContainerImageSource,
        credentials: Option<RegistryCredentials>,
        ca_bundle: Option<Vec<u8>>,
    },
    Copy(SourceImage),
}

impl Prepared<'_> {
    /// The ImportStarted Event's note.
    pub(super) fn started(&self) -> String {
        match self {
            Self::Http(http) => format!("Importing from {}", redact_url(&http.url)),
            Self::ContainerDisk { image, .. } => format!("Importing {}", image.image),
            Self::Copy(source) => format!("Copying {}", source.description),
        }
    }

    /// The checksums the spec gives for the file (only an HTTP source has them).
    pub(super) fn checksum(&self) -> Option<crate::api::Checksum> {
        match self {
            Self::Http(http) => http.checksum.clone(),
            Self::ContainerDisk { .. } | Self::Copy(_) => None,
        }
    }

    /// One attempt: from the source into DVCR.
    pub(super) async fn transfer(
        &self,
        ctx: &Context,
        request: &ImportRequest,
        progress: &LiveProgress,
        cancel: &CancellationToken,
    ) -> Result<StoredImage, ImportError> {
        let (dvcr, settings) = (&ctx.dvcr, &ctx.settings.pipeline);
        match self {
            Self::Http(http) => {
                let options = &ctx.settings.http;
                http_import::import(dvcr, settings, options, request, http, progress, cancel)
                    .await
                    .map(|stored| stored_image(&stored))
            }
            Self::ContainerDisk {
                image,
                credentials,
                ca_bundle,
            } => {
                // A container image cannot be opened at an offset: every attempt is whole.
                let open = |_| {
                    ContainerDisk::open(
                        &image.image,
                        ca_bundle.as_deref(),
                        credentials.clone(),
                        &ctx.settings.http.egress,
                    )
                };
                pipeline::store_restarting(dvcr, settings, request, progress, cancel, open)
                    .await
                    .map(|stored| stored_image(&stored))
            }
            Self::Copy(source) => {
                let (stored, method) =
                    object_ref::copy(dvcr, settings, request, source, progress, cancel).await?;
                match method {
                    CopyMethod::Mounted => ctx.metrics.imports.copied(true),
                    CopyMethod::Streamed => ctx.metrics.imports.copied(false),
                };
                Ok(stored)
            }
        }
    }
}

/// Waits for what the source needs and gives it prepared; `None` for a source this
/// controller does not fetch itself (an upload comes to it).
pub(super) async fn prepare<'a>(
    ctx: &Context,
    cvi: &'a ClusterVirtualImage,
    writer: &mut StatusWriter,
    cancel: &CancellationToken,
) -> Result<Option<Prepared<'a>>, ImportError> {
    let source = &cvi.spec.data_source;
    let prepared = match (
        source.type_,
        &source.http,
        &source.object_ref,
        &source.container_image,
    ) {
        (DataSourceType::Http, Some(http), _, _) => Prepared::Http(http),
        (DataSourceType::ContainerImage, _, _, Some(image)) => {
            let credentials = wait_for_pull_secret(ctx, image, writer, cancel).await?;
            let ca_bundle = image
                .ca_bundle
                .as_deref()
                .map(http_import::decode_ca_bundle)
                .transpose()?;
            Prepared::ContainerDisk {
                image,
                credentials,
                ca_bundle,
            }
        }
        (DataSourceType::ObjectRef, _, Some(reference), _) => {
            Prepared::Copy(wait_for_source(ctx, reference, writer, cancel).await?)
        }
        _ => return Ok(None),
    };
    Ok(Some(prepared))
}
