//! A layer blob as a stream of tar bytes: gzip or plain, told apart by their magic, not by
//! the media type.

use std::io::Write as _;

use bytes::{Buf, Bytes};
use futures::StreamExt as _;

/// Decompressed bytes gathered per chunk of a gzip layer: big enough to keep the per-chunk
/// cost low, small enough that a highly compressible disk cannot balloon memory.
const GZIP_CHUNK: usize = 256 << 10;

/// Why reading a layer failed.
#[derive(Debug)]
pub(super) enum LayerFailure {
    /// The blob stream failed: network, TLS or digest mismatch.
    Io(std::io::Error),
    Zstd,
    /// Not a (gzip) tar.
    Corrupt(String),
}

pub(super) type LayerResult<T> = Result<T, LayerFailure>;

enum Decoder {
    /// Not known until the first bytes arrive: the media type is not trusted, the magic is.
    Sniffing(Vec<u8>),
    Plain,
    Gzip(Box<flate2::write::MultiGzDecoder<Vec<u8>>>),
}

/// The blob as it comes from the registry.
struct RawStream {
    pub(super) stream: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>,
    /// The stream ended (and oci-client verified the digest).
    done: bool,
}

impl RawStream {
    pub(super) async fn next(&mut self) -> LayerResult<Option<Bytes>> {
        while !self.done {
            match self.stream.next().await {
                Some(Ok(chunk)) if chunk.is_empty() => {}
                Some(Ok(chunk)) => return Ok(Some(chunk)),
                Some(Err(error)) => return Err(LayerFailure::Io(error)),
                None => self.done = true,
            }
        }
        Ok(None)
    }
}

/// The uncompressed bytes of one layer blob, streamed.
pub(super) struct LayerReader {
    raw: RawStream,
    decoder: Decoder,
    /// Compressed bytes not yet fed to the decoder.
    pending: Bytes,
    pub(super) finished: bool,
}

impl LayerReader {
    pub(super) fn new(
        stream: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>,
    ) -> Self {
        Self {
            raw: RawStream {
                stream,
                done: false,
            },
            decoder: Decoder::Sniffing(Vec::new()),
            pending: Bytes::new(),
            finished: false,
        }
    }

    /// The next uncompressed bytes; `None` at the end of the blob.
    pub(super) async fn next(&mut self) -> LayerResult<Option<Bytes>> {
        loop {
            if self.finished {
                return Ok(None);
            }
            match &mut self.decoder {
                Decoder::Sniffing(head) => {
                    let chunk = self.raw.next().await?;
                    if let Some(chunk) = &chunk {
                        head.extend_from_slice(chunk);
                    }
                    if head.len() < 4 && chunk.is_some() {
                        continue;
                    }
                    let head = Bytes::from(std::mem::take(head));
                    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                        return Err(LayerFailure::Zstd);
                    }
                    self.decoder = if head.starts_with(&[0x1f, 0x8b]) {
                        Decoder::Gzip(Box::new(flate2::write::MultiGzDecoder::new(Vec::new())))
                    } else {
                        Decoder::Plain
                    };
                    self.pending = head;
                }
                Decoder::Plain => {
                    if !self.pending.is_empty() {
                        return Ok(Some(std::mem::take(&mut self.pending)));
                    }
                    match self.raw.next().await? {
                        Some(chunk) => return Ok(Some(chunk)),
                        None => {
                            self.finished = true;
                            return Ok(None);
                        }
                    }
                }
                Decoder::Gzip(decoder) => {
                    if self.pending.is_empty() {
                        match self.raw.next().await? {
                            Some(chunk) => {
                                self.pending = chunk;
                                continue;
                            }
                            None => {
                                decoder
                                    .try_finish()
                                    .map_err(|e| LayerFailure::Corrupt(format!("gzip: {e}")))?;
                                self.finished = true;
                                let out = std::mem::take(decoder.get_mut());
                                return Ok((!out.is_empty()).then(|| Bytes::from(out)));
                            }
                        }
                    }
                    // Feed a little at a time: each write yields at most flate2's 32 KiB
                    // buffer, so the output stays bounded however well the disk compresses.
                    while !self.pending.is_empty() && decoder.get_ref().len() < GZIP_CHUNK {
                        let used = decoder
                            .write(&self.pending)
                            .map_err(|e| LayerFailure::Corrupt(format!("gzip: {e}")))?;
                        if used == 0 {
                            return Err(LayerFailure::Corrupt(
                                "gzip: the stream does not progress".to_string(),
                            ));
                        }
                        self.pending.advance(used);
                    }
                    let out = std::mem::take(decoder.get_mut());
                    if !out.is_empty() {
                        return Ok(Some(Bytes::from(out)));
                    }
                }
            }
        }
    }
}
