//! An Upload image: its token and URLs published on the image, then the user's upload
//! received, imported, or waited for again when it breaks.

use super::*;

/// What an image waiting for its upload tells the user to do.
fn waiting_for_upload_message(has_external_url: bool) -> String {
    if has_external_url {
        "Waiting for the image: upload it with `curl <status.imageUploadURLs.external> -T image.img`.".into()
    } else {
        "Waiting for the image: upload it from inside the cluster with `curl <status.imageUploadURLs.inCluster> -T image.img`. No URL from outside the cluster is configured: set the chart's upload.externalURL (or upload.ingress), or the daemon's --upload-external-url.".into()
    }
}

/// Waits for the user's upload and imports it. A broken or refused upload leaves the image
/// waiting for the next attempt; no upload for `upload_timeout` ends in Failed.
pub(super) async fn receive_upload(
    ctx: &Context,
    cvi: &ClusterVirtualImage,
    request: &ImportRequest,
    writer: &mut StatusWriter,
    cancel: &CancellationToken,
) -> Result<StoredImage, ImportError> {
    let (token, ticket, deadline) = open_upload(ctx, cvi, cancel).await?;
    let mut ticket = OpenUpload::new(ticket, &ctx.metrics);
    let mut urls = upload_urls(ctx, &token);
    drop(token);
    let mut message = if writer.take_restart() {
        tracing::info!(image = %cvi.name_any(), "the last upload was cut by the daemon's restart; waiting for it again");
        UPLOAD_INTERRUPTED_MESSAGE.to_string()
    } else {
        waiting_for_upload_message(ctx.settings.upload_external_base.is_some())
    };
    loop {
        writer
            .write_now(&ImportState::AwaitingUpload {
                urls: urls.clone(),
                message: message.clone(),
            })
            .await;
        let left = (deadline - chrono::Utc::now()).to_std().unwrap_or_default();
        let mut upload = tokio::select! {
            upload = ticket.next() => upload.ok_or(ImportError::Cancelled)?,
            _ = tokio::time::sleep(left) => {
                return Err(ImportError::UploadTimedOut(ctx.settings.upload_timeout))
            }
            _ = cancel.cancelled() => return Err(ImportError::Cancelled),
        };
        let _slot = acquire_slot(ctx, writer, cancel).await?;
        ctx.publish(
            cvi,
            EventType::Normal,
            "UploadStarted",
            "An upload of the image started",
        )
        .await;
        let progress = LiveProgress::default();
        writer.begin_transfer(&progress);
        let result = with_status_ticks(
            ctx,
            writer,
            &progress,
            pipeline::store(
                &ctx.dvcr,
                &ctx.settings.pipeline,
                request,
                &mut upload,
                &progress,
                cancel,
            ),
        )
        .await;
        ctx.metrics
            .imports
            .received(source_label(cvi), progress.received());
        match result {
            Ok(stored) => {
                upload.respond(UploadOutcome::Stored {
                    registry_url: stored.registry_url.clone(),
                });
                return Ok(stored_image(&stored));
            }
            Err(ImportError::Cancelled) => return Err(ImportError::Cancelled),
            Err(error) => {
                tracing::info!(image = %cvi.name_any(), reason = error.reason(), "an upload failed; waiting for another");
                writer.forget_transfers();
                upload.respond(UploadOutcome::Refused {
                    reason: error.reason().to_string(),
                    message: format!(
                        "{error}; the next upload goes to a new URL: see the image's status.imageUploadURLs"
                    ),
                });
                // A URL that was used once is not used again: whoever saw it (a log, a
                // proxy, a shell history) cannot send the next attempt.
                let token = UploadToken::generate().map_err(ImportError::UploadTokenUnavailable)?;
                save_token_digest(ctx, &cvi.name_any(), &token.digest(), deadline, cancel).await?;
                ticket.ticket = ctx.uploads.register(token.digest()).map_err(|error| {
                    ImportError::Stage(format!("registering a new upload token: {error}"))
                })?;
                urls = upload_urls(ctx, &token);
                message = format!(
                    "The last upload failed ({}: {error}); upload the image again, to the new URL in status.imageUploadURLs (the old one no longer works).",
                    error.reason()
                );
            }
        }
    }
}

fn upload_urls(ctx: &Context, token: &UploadToken) -> ImageUploadUrls {
    ImageUploadUrls {
        external: ctx
            .settings
            .upload_external_base
            .as_deref()
            .map(|base| upload_url(base, token)),
        in_cluster: Some(upload_url(&ctx.settings.upload_in_cluster_base, token)),
    }
}

type Deadline = chrono::DateTime<chrono::Utc>;

/// The token of an Upload image, registered with the gate, and when the wait ends: the
/// token its URLs already carry when a previous daemon published them for this spec (a
/// restart or takeover keeps the URLs the user was told, and the deadline), otherwise a new
/// one whose sha256 is stored on the image before any URL with it is published.
async fn open_upload(
    ctx: &Context,
    cvi: &ClusterVirtualImage,
    cancel: &CancellationToken,
) -> Result<(UploadToken, UploadTicket, Deadline), ImportError> {
    let fresh_deadline = || {
        chrono::Utc::now()
            + chrono::Duration::from_std(ctx.settings.upload_timeout).unwrap_or_default()
    };
    let name = cvi.name_any();
    let generation = cvi.metadata.generation.unwrap_or_default();
    let status = cvi.status.clone().unwrap_or_default();
    let stored = cvi
        .annotations()
        .get(UPLOAD_TOKEN_SHA256)
        .map(String::as_str);
    if let Some(token) = published_token(&status, generation, stored) {
        match ctx.uploads.register(token.digest()) {
            Ok(ticket) => {
                tracing::info!(image = %name, "kept the upload URLs published before the restart");
                // A daemon from before deadlines were kept starts the wait again.
                let deadline = cvi
                    .annotations()
                    .get(UPLOAD_DEADLINE)
                    .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
                    .map_or_else(fresh_deadline, |at| at.with_timezone(&chrono::Utc));
                return Ok((token, ticket, deadline));
            }
            Err(error) => {
                tracing::warn!(image = %name, %error, "the published upload URLs cannot be kept; making new ones")
            }
        }
    }
    let token = UploadToken::generate().map_err(ImportError::UploadTokenUnavailable)?;
    let deadline = fresh_deadline();
    save_token_digest(ctx, &name, &token.digest(), deadline, cancel).await?;
    let ticket = ctx
        .uploads
        .register(token.digest())
        .map_err(|error| ImportError::Stage(format!("registering a new upload token: {error}")))?;
    Ok((token, ticket, deadline))
}

/// Stores the token's sha256 and the deadline in the image's annotations (server-side apply,
/// under the controller's own field manager), retried with back-off while the API server
/// fails.
async fn save_token_digest(
    ctx: &Context,
    name: &str,
    digest: &TokenDigest,
    deadline: Deadline,
    cancel: &CancellationToken,
) -> Result<(), ImportError> {
    let api: Api<ClusterVirtualImage> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({
        "apiVersion": ClusterVirtualImage::api_version(&()),
        "kind": ClusterVirtualImage::kind(&()),
        "metadata": {
            "name": name,
            "annotations": {
                UPLOAD_TOKEN_SHA256: digest.to_hex(),
                UPLOAD_DEADLINE: deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            },
        },
    });
    let params = PatchParams::apply(UPLOAD_TOKEN_MANAGER).force();
    let mut delay = Duration::from_millis(200);
    let mut tries = 1;
    loop {
        let error = match api.patch(name, &params, &Patch::Apply(&patch)).await {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        let retry = match &error {
            kube::Error::Api(status) => status.code >= 500 || status.code == 429,
            _ => true,
        };
        if !retry || tries >= 8 {
            return Err(ImportError::UploadTokenNotSaved(error.to_string()));
        }
        tracing::warn!(image = %name, %error, "saving the upload token's hash failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return Err(ImportError::Cancelled),
        }
        delay = (delay * 2).min(Duration::from_secs(10));
        tries += 1;
    }
}

/// An image's registration with the upload gate, counted in `uploads_open` while it lasts.
struct OpenUpload<'a> {
    ticket: UploadTicket,
    pub(super) metrics: &'a Metrics,
}

impl<'a> OpenUpload<'a> {
    pub(super) fn new(ticket: UploadTicket, metrics: &'a Metrics) -> Self {
        metrics.imports.uploads_open.inc();
        Self { ticket, metrics }
    }
    pub(super) async fn next(&mut self) -> Option<crate::import::source::upload::Upload> {
        self.ticket.next().await
    }
}

impl Drop for OpenUpload<'_> {
    fn drop(&mut self) {
        self.metrics.imports.uploads_open.dec();
    }
}
