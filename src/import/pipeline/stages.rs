//! The stages the bytes pass, each on its own thread: sha256, md5 and the inspection, fed the
//! same chunks over bounded channels.

use super::*;

/// What a hashing stage is handed, in order.
enum HashMsg {
    Chunk(Bytes),
    /// Asks for the hash state after every chunk before this one.
    Snapshot(oneshot::Sender<Vec<u8>>),
}

/// The hashing and inspection stages, each on its own thread: a compressed image is
/// unpacked to its end by the inspection, which must not slow the hashes down.
pub(super) struct Stages {
    check_tx: Option<mpsc::Sender<Bytes>>,
    /// None for a resumed import: the inspection reads the stored layer back instead.
    pub(super) check: Option<oneshot::Receiver<Result<ImageInfo, InspectError>>>,
    sha256_tx: Option<mpsc::Sender<HashMsg>>,
    pub(super) sha256: oneshot::Receiver<String>,
    md5_tx: Option<mpsc::Sender<HashMsg>>,
    pub(super) md5: Option<oneshot::Receiver<String>>,
}

/// Hash states on their way from the stage threads.
pub(super) struct StageStates {
    pub(super) sha256: oneshot::Receiver<Vec<u8>>,
    pub(super) md5: Option<oneshot::Receiver<Vec<u8>>>,
}

impl StageStates {
    pub(super) async fn collect(self, layer_sha256: Vec<u8>) -> Result<HashStates, ()> {
        let sha256 = self.sha256.await.map_err(|_| ())?;
        let md5 = match self.md5 {
            Some(md5) => Some(md5.await.map_err(|_| ())?),
            None => None,
        };
        Ok(HashStates {
            sha256,
            md5,
            layer_sha256,
        })
    }
}

/// The inspection on its own thread: chunks in, the image's info (or why it is refused) out.
pub(super) fn inspect_stage(
    limits: InspectLimits,
) -> (
    mpsc::Sender<Bytes>,
    oneshot::Receiver<Result<ImageInfo, InspectError>>,
) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(STAGE_QUEUE);
    let check = stage_thread("import-inspect", move || {
        let mut inspector = Inspector::new(limits);
        while let Some(chunk) = rx.blocking_recv() {
            // An error stops taking chunks: the import ends with it.
            inspector.update(&chunk)?;
        }
        inspector.finish()
    });
    (tx, check)
}

fn hash_stage<
    D: sha2::Digest + sha2::digest::common::hazmat::SerializableState + Send + 'static,
>(
    name: &str,
    mut hasher: digest::Hasher<D>,
) -> (mpsc::Sender<HashMsg>, oneshot::Receiver<String>) {
    let (tx, mut rx) = mpsc::channel::<HashMsg>(STAGE_QUEUE);
    let result = stage_thread(name, move || {
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                HashMsg::Chunk(chunk) => hasher.update(&chunk),
                // Nobody waits for it when the checkpoint was given up.
                HashMsg::Snapshot(reply) => drop(reply.send(hasher.state())),
            }
        }
        hasher.finish()
    });
    (tx, result)
}

impl Stages {
    /// `inspect`: the limits of the inspection, or None to skip it; `from`: the hash states to
    /// go on from (sha256, md5), for a resumed import.
    pub(super) fn start(
        want_md5: bool,
        inspect: Option<InspectLimits>,
        from: Option<(Sha256Hasher, Option<Md5Hasher>)>,
    ) -> Self {
        let (check_tx, check) = match inspect.map(inspect_stage) {
            Some((check_tx, check)) => (Some(check_tx), Some(check)),
            None => (None, None),
        };
        let (sha256_from, md5_from) = match from {
            Some((sha256, md5)) => (sha256, md5),
            None => (Sha256Hasher::default(), None),
        };
        let (sha256_tx, sha256) = hash_stage("import-sha256", sha256_from);
        let (md5_tx, md5) = if want_md5 {
            let (tx, md5) = hash_stage("import-md5", md5_from.unwrap_or_default());
            (Some(tx), Some(md5))
        } else {
            (None, None)
        };
        Self {
            check_tx,
            check,
            sha256_tx: Some(sha256_tx),
            sha256,
            md5_tx,
            md5,
        }
    }

    /// Hands a chunk to every stage (a reference count, not a copy).
    pub(super) async fn feed(&mut self, chunk: &Bytes) -> Result<(), ImportError> {
        let stopped = || ImportError::Stage("an import stage stopped".into());
        if let Some(tx) = &self.md5_tx {
            tx.send(HashMsg::Chunk(chunk.clone()))
                .await
                .map_err(|_| stopped())?;
        }
        if let Some(tx) = &self.sha256_tx {
            tx.send(HashMsg::Chunk(chunk.clone()))
                .await
                .map_err(|_| stopped())?;
        }
        if let Some(tx) = &self.check_tx
            && tx.send(chunk.clone()).await.is_err()
        {
            // The inspection refused the image: its error is the import's.
            self.check_tx = None;
            let joined = |_| ImportError::Stage("the inspection ended without a result".into());
            let Some(check) = self.check.as_mut() else {
                return Err(stopped());
            };
            let result = check.await.map_err(joined)?;
            return Err(match result {
                Err(error) => error.into(),
                Ok(_) => stopped(),
            });
        }
        Ok(())
    }

    /// The hash states after every chunk fed so far, as the stages get to them.
    pub(super) async fn snapshot(&mut self) -> Result<StageStates, ImportError> {
        let stopped = || ImportError::Stage("an import stage stopped".into());
        let ask = |tx: &Option<mpsc::Sender<HashMsg>>| {
            let tx = tx.clone();
            async move {
                let (reply, state) = oneshot::channel();
                tx.ok_or_else(stopped)?
                    .send(HashMsg::Snapshot(reply))
                    .await
                    .map_err(|_| stopped())?;
                Ok::<_, ImportError>(state)
            }
        };
        let sha256 = ask(&self.sha256_tx).await?;
        let md5 = match &self.md5_tx {
            Some(_) => Some(ask(&self.md5_tx).await?),
            None => None,
        };
        Ok(StageStates { sha256, md5 })
    }

    /// Ends the stream and collects the results of the stages; no image info when the
    /// inspection was skipped.
    pub(super) async fn finish(&mut self) -> Result<(FileDigests, Option<ImageInfo>), ImportError> {
        self.check_tx = None;
        self.sha256_tx = None;
        self.md5_tx = None;
        let joined = |_| ImportError::Stage("an import stage thread ended without a result".into());
        let info = match self.check.as_mut() {
            Some(check) => Some(check.await.map_err(joined)??),
            None => None,
        };
        let sha256 = (&mut self.sha256).await.map_err(joined)?;
        let md5 = match self.md5.take() {
            Some(md5) => Some(md5.await.map_err(joined)?),
            None => None,
        };
        Ok((FileDigests { sha256, md5 }, info))
    }
}

/// Runs one stage on its own named thread (named, so `top -H` shows where the time goes);
/// the receiver yields its result.
fn stage_thread<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> oneshot::Receiver<T> {
    let (done, result) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            // The receiver may be gone (the import was dropped): the result is not needed then.
            let _ = done.send(work());
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start an import stage thread");
    }
    result
}
