//! The import task's view of its image's status: what it shows while it runs and at the
//! end, written through the one CVI status store.

use super::*;

/// Writes the status of one import: the pure `next_status` decides, this only writes when the
/// result differs from what was written last.
pub(super) struct StatusWriter {
    pub(super) ctx: Arc<Context>,
    pub(super) name: String,
    target: Target,
    pub(super) generation: i64,
    written: ImageStatus,
    /// A previous daemon was importing this spec when it stopped; the next transfer (or the
    /// upload's wait) says that it started over.
    restart_pending: bool,
    /// The running transfer is the one that started over after the restart.
    restarted: bool,
    transfer_started: Instant,
    last_sample: (Instant, u64),
    /// When the first transfer of this import began (retries included), for the duration
    /// metric.
    first_transfer: Option<Instant>,
}

impl StatusWriter {
    pub(super) fn new(ctx: Arc<Context>, cvi: &ClusterVirtualImage, generation: i64) -> Self {
        let found = cvi.status.clone().unwrap_or_default();
        let restart_pending = interrupted_by_restart(&found, generation);
        if restart_pending {
            tracing::info!(image = %cvi.name_any(), generation, "the import was interrupted by a restart of the daemon; starting it again from byte 0");
        }
        Self {
            ctx,
            name: cvi.name_any(),
            target: Target::of(cvi),
            generation,
            written: starting_point(&found, generation),
            restart_pending,
            restarted: false,
            transfer_started: Instant::now(),
            last_sample: (Instant::now(), 0),
            first_transfer: None,
        }
    }

    /// Whether the import was interrupted by a restart, telling it only once.
    pub(super) fn take_restart(&mut self) -> bool {
        std::mem::take(&mut self.restart_pending)
    }

    pub(super) fn begin_transfer(&mut self, _progress: &LiveProgress) {
        self.transfer_started = Instant::now();
        self.first_transfer.get_or_insert(self.transfer_started);
        self.last_sample = (self.transfer_started, 0);
        self.restarted = self.take_restart();
    }

    /// How long the import has been moving bytes, from its first transfer.
    pub(super) fn transferring_for(&self) -> Duration {
        self.first_transfer
            .map(|started| started.elapsed())
            .unwrap_or_default()
    }

    /// A broken upload is not part of the next one's duration: the user chose when to retry.
    pub(super) fn forget_transfers(&mut self) {
        self.first_transfer = None;
    }

    pub(super) async fn write_transfer(
        &mut self,
        progress: &LiveProgress,
        problem: Option<Problem>,
    ) {
        let now = Instant::now();
        // Speeds count what this transfer fetched, not what a resumed one had already.
        let fetched = progress.fetched();
        let (sampled_at, sampled_bytes) = self.last_sample;
        self.last_sample = (now, fetched);
        let transfer = Transfer {
            received: progress.received(),
            total: progress.total(),
            speed: speed(
                fetched,
                now - self.transfer_started,
                fetched.saturating_sub(sampled_bytes),
                now - sampled_at,
            ),
            after_restart: match (self.restarted, progress.resumed_at()) {
                (false, _) => AfterRestart::No,
                (true, Some(offset)) => AfterRestart::ResumedAt(offset),
                (true, None) => AfterRestart::FromZero,
            },
        };
        let state = match problem {
            Some(problem) => ImportState::Retrying { transfer, problem },
            None => ImportState::Transferring(transfer),
        };
        self.write_now(&state).await;
    }

    pub(super) async fn write_now(&mut self, state: &ImportState) {
        let next = next_status(&self.written, self.generation, state, &now());
        if next == self.written {
            return;
        }
        match self
            .ctx
            .statuses
            .write_import(&mut self.target, &next)
            .await
        {
            Ok(()) => self.written = next,
            Err(error) => {
                tracing::warn!(image = %self.name, %error, "writing the status failed; the next write retries")
            }
        }
    }

    /// The last write of an import: retried, since nothing would write it later.
    pub(super) async fn write_final(&mut self, state: &ImportState) {
        let next = next_status(&self.written, self.generation, state, &now());
        let mut delay = Duration::from_millis(200);
        for _ in 0..8 {
            match self
                .ctx
                .statuses
                .write_import(&mut self.target, &next)
                .await
            {
                Ok(()) => {
                    self.written = next;
                    return;
                }
                Err(WriteError::Gone(_)) => return,
                Err(error) => {
                    tracing::warn!(image = %self.name, %error, "writing the final status failed; retrying")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}

pub(super) fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}
