//! What an import waits for before it may start: the image it copies to be Ready, the pull
//! secret it names to exist.

use super::*;

/// How often a missing or unready source image is looked at again.
const SOURCE_POLL: Duration = Duration::from_secs(3);

/// Waits until the source of an ObjectRef is Ready, showing why meanwhile.
pub(super) async fn wait_for_source(
    ctx: &Context,
    reference: &crate::api::ObjectRef,
    writer: &mut StatusWriter,
    cancel: &CancellationToken,
) -> Result<SourceImage, ImportError> {
    loop {
        match object_ref::resolve(&ctx.client, reference).await {
            Ok(SourceState::Ready(source)) => return Ok(source),
            Ok(SourceState::Waiting { reason, message }) => {
                writer
                    .write_now(&ImportState::Waiting {
                        reason: reason.into(),
                        message,
                        source_blocked: true,
                    })
                    .await;
            }
            Err(error) => tracing::warn!(%error, "reading the source image failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(SOURCE_POLL) => {}
            _ = cancel.cancelled() => return Err(ImportError::Cancelled),
        }
    }
}

/// Reads the credentials of a ContainerImage source from its imagePullSecret, waiting (with
/// DatasourceReady=False saying why) while the Secret is missing or unusable.
pub(super) async fn wait_for_pull_secret(
    ctx: &Context,
    source: &crate::api::ContainerImageSource,
    writer: &mut StatusWriter,
    cancel: &CancellationToken,
) -> Result<Option<RegistryCredentials>, ImportError> {
    let Some(name) = source
        .image_pull_secret
        .as_ref()
        .and_then(|s| s.name.clone())
    else {
        return Ok(None);
    };
    let namespace = source
        .image_pull_secret
        .as_ref()
        .and_then(|s| s.namespace.clone());
    let registry = registry_host(&source.image);
    loop {
        let (reason, message) = match ctx.secrets.pull_secret(namespace.as_deref(), &name).await {
            Ok(secret) => match secrets::registry_credentials(&secret, &registry) {
                Ok(credentials) => return Ok(Some(credentials)),
                Err(error) => (
                    "ImagePullSecretInvalid".to_string(),
                    format!("{error}; fix the Secret and the import starts by itself."),
                ),
            },
            Err(error @ SecretError::NotFound { .. }) => (
                error.reason("ImagePullSecret"),
                format!(
                    "The imagePullSecret {}/{name} does not exist; create it (type kubernetes.io/dockerconfigjson) and the import starts by itself.",
                    namespace.as_deref().unwrap_or(ctx.secrets.namespace())
                ),
            ),
            Err(error) => (error.reason("ImagePullSecret"), format!("{error}.")),
        };
        writer
            .write_now(&ImportState::Waiting {
                reason,
                message,
                source_blocked: true,
            })
            .await;
        tokio::select! {
            _ = tokio::time::sleep(SOURCE_POLL) => {}
            _ = cancel.cancelled() => return Err(ImportError::Cancelled),
        }
    }
}
