//! Running a transfer: an import slot first, status ticks while it runs, retries with
//! back-off after transient failures.

use super::*;

/// Holds an import slot until dropped.
pub(super) struct Slot<'a> {
    pub(super) metrics: &'a Metrics,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.metrics.imports.in_flight.dec();
    }
}

/// Waits for one of the `--max-concurrent-imports` slots, showing Pending meanwhile.
pub(super) async fn acquire_slot<'a>(
    ctx: &'a Context,
    writer: &mut StatusWriter,
    cancel: &CancellationToken,
) -> Result<Slot<'a>, ImportError> {
    let permit = match ctx.slots.clone().try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => {
            ctx.metrics.imports.queued.inc();
            writer
                .write_now(&ImportState::Waiting {
                    reason: "WaitingForImportSlot".into(),
                    message: format!(
                        "{} imports already run (--max-concurrent-imports); this one starts when one of them ends.",
                        ctx.settings.max_concurrent_imports
                    ),
                    source_blocked: false,
                })
                .await;
            let permit = tokio::select! {
                permit = ctx.slots.clone().acquire_owned() => permit,
                _ = cancel.cancelled() => { ctx.metrics.imports.queued.dec(); return Err(ImportError::Cancelled) }
            };
            ctx.metrics.imports.queued.dec();
            permit.map_err(|_| ImportError::Cancelled)?
        }
    };
    ctx.metrics.imports.in_flight.inc();
    Ok(Slot {
        metrics: &ctx.metrics,
        _permit: permit,
    })
}

/// Drives `import` to its end, writing the transfer status once per status interval meanwhile.
pub(super) async fn with_status_ticks<T>(
    ctx: &Context,
    writer: &mut StatusWriter,
    progress: &LiveProgress,
    import: impl Future<Output = T>,
) -> T {
    tokio::pin!(import);
    let mut ticker = tokio::time::interval(ctx.settings.status_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = &mut import => return result,
            _ = ticker.tick() => writer.write_transfer(progress, None).await,
        }
    }
}

/// Runs `attempt` (one import from the source into DVCR) with a status write per interval,
/// retrying transient failures with back-off.
pub(super) async fn transfer_with_retries<T, F, Fut>(
    ctx: &Context,
    cvi: &ClusterVirtualImage,
    writer: &mut StatusWriter,
    cancel: &CancellationToken,
    mut attempt: F,
) -> Result<T, ImportError>
where
    F: FnMut(Arc<LiveProgress>) -> Fut,
    Fut: Future<Output = Result<T, ImportError>>,
{
    let mut tries = 1;
    loop {
        let progress = Arc::new(LiveProgress::default());
        writer.begin_transfer(&progress);
        let result = with_status_ticks(ctx, writer, &progress, attempt(progress.clone())).await;
        ctx.metrics
            .imports
            .received(source_label(cvi), progress.fetched());
        match result {
            Ok(stored) => return Ok(stored),
            Err(error) if error.is_transient() && tries < ctx.settings.max_attempts => {
                let problem = problem(&error);
                tracing::info!(image = %cvi.name_any(), tries, reason = %problem.reason, "transient failure; retrying");
                writer.write_transfer(&progress, Some(problem)).await;
                let backoff = crate::net::backoff_from(
                    ctx.settings.retry_backoff,
                    tries - 1,
                    crate::net::random_jitter(),
                    ctx.settings.retry_backoff.saturating_mul(64),
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = cancel.cancelled() => return Err(ImportError::Cancelled),
                }
                tries += 1;
            }
            Err(error) => return Err(error),
        }
    }
}
