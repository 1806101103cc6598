//! Streaming gzip and xz decompression into a fixed scratch buffer, handed to the analyzer.

use flate2::{Decompress, FlushDecompress, Status};
use liblzma::stream::{Action, Error as XzError, Status as XzStatus, Stream};

use super::analyzer::Analyzer;
use super::memory::{DecoderMemory, MAX_PER_DECODER, Reservation};
use super::{InspectError, human_size};

/// Unpacked bytes per analyzer call: large enough to amortise calls, small enough for cache.
const SCRATCH_LEN: usize = 256 * 1024;

fn scratch() -> Box<[u8]> {
    vec![0; SCRATCH_LEN].into_boxed_slice()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GzState {
    /// Inside a member (gzip header, deflate data or trailer).
    Member,
    /// A member ended: another may follow.
    Between,
    /// Zero bytes after the last member (block padding), to be ignored.
    Padding,
}

pub(super) struct GzipLayer {
    inflate: Decompress,
    scratch: Box<[u8]>,
    state: GzState,
    /// Compressed bytes consumed by earlier members, and bytes unpacked (for messages).
    consumed: u64,
    unpacked: u64,
}

impl GzipLayer {
    pub fn new() -> Self {
        Self {
            inflate: Decompress::new_gzip(15),
            scratch: scratch(),
            state: GzState::Member,
            consumed: 0,
            unpacked: 0,
        }
    }

    fn offset(&self) -> u64 {
        self.consumed + self.inflate.total_in()
    }

    pub fn feed(&mut self, mut input: &[u8], out: &mut Analyzer) -> Result<(), InspectError> {
        loop {
            match self.state {
                GzState::Between => {
                    let Some(&first) = input.first() else {
                        return Ok(());
                    };
                    if first == 0 {
                        self.state = GzState::Padding;
                    } else if first == super::GZIP_MAGIC[0] {
                        // Multi-member gzip (pigz, bgzip, concatenated files).
                        self.consumed += self.inflate.total_in();
                        self.inflate.reset(true);
                        self.state = GzState::Member;
                    } else {
                        return Err(gzip_trailing(self.offset()));
                    }
                }
                GzState::Padding => {
                    return if input.iter().all(|&b| b == 0) {
                        Ok(())
                    } else {
                        Err(gzip_trailing(self.offset()))
                    };
                }
                GzState::Member => {
                    let (in_before, out_before) =
                        (self.inflate.total_in(), self.inflate.total_out());
                    let status = self
                        .inflate
                        .decompress(input, &mut self.scratch, FlushDecompress::None)
                        .map_err(|err| {
                            InspectError::Corrupt(format!(
                                "the gzip stream is corrupt ({err}, near compressed byte {}): \
                                 the file is damaged or truncated; check the source file (e.g. \
                                 `gzip -t image.gz`)",
                                self.offset()
                            ))
                        })?;
                    let used = (self.inflate.total_in() - in_before) as usize;
                    let made = (self.inflate.total_out() - out_before) as usize;
                    input = &input[used..];
                    self.unpacked += made as u64;
                    if made > 0 {
                        out.feed(&self.scratch[..made])?;
                    }
                    if status == Status::StreamEnd {
                        self.state = GzState::Between;
                    } else if made == self.scratch.len() {
                        // More output may be pending: drain it before taking input.
                    } else if input.is_empty() {
                        return Ok(());
                    } else if used == 0 {
                        // Never seen with room to write; fail rather than drop input.
                        return Err(InspectError::Corrupt(format!(
                            "the gzip stream could not be unpacked past compressed byte {}; \
                             check the source file (e.g. `gzip -t image.gz`)",
                            self.offset()
                        )));
                    }
                }
            }
        }
    }

    /// feed() drains all output, so only the state tells whether the stream ended.
    pub fn finish(&self) -> Result<(), InspectError> {
        if self.state == GzState::Member {
            return Err(InspectError::Corrupt(format!(
                "the gzip stream ended early (after {} compressed bytes, {} unpacked): the \
                 download was cut short or the source file is truncated; check the source file \
                 (e.g. `gzip -t image.gz`)",
                self.offset(),
                self.unpacked
            )));
        }
        Ok(())
    }
}

fn gzip_trailing(at: u64) -> InspectError {
    InspectError::Corrupt(format!(
        "unexpected data after the end of the gzip stream (at compressed byte {at}): the file is \
         damaged or not a single gzip file; check the source file (e.g. `gzip -t image.gz`)"
    ))
}

pub(super) struct XzLayer {
    /// The decoder of the current stream; None between two concatenated streams.
    stream: Option<Stream>,
    /// The decoder's share of the daemon's decoder memory: its memory limit.
    memory: Reservation,
    /// Compressed bytes of the streams already finished, for messages.
    finished_in: u64,
    /// Zero bytes seen since the last stream ended (stream padding, a multiple of four).
    padding: u64,
    scratch: Box<[u8]>,
}

/// Decoder threads: files made with `xz -T` have independent blocks that decode in parallel,
/// as `xz -dc` does. Threads are used only while their blocks fit in the decoder's
/// reservation; past it the decoder falls back to one thread.
const XZ_THREADS: u32 = 2;

/// The magic bytes that open an xz stream.
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];

fn xz_decoder(memory: &Reservation) -> Result<Stream, InspectError> {
    // The multi-threaded decoder has no flag for concatenated streams: `feed` starts a new
    // decoder for each stream instead, skipping the stream padding between them.
    liblzma::stream::MtStreamBuilder::new()
        .threads(XZ_THREADS)
        .memlimit_threading(memory.bytes())
        .memlimit_stop(memory.bytes())
        .decoder()
        .map_err(|err| xz_error(err, 0))
}

impl XzLayer {
    pub fn new(memory: &DecoderMemory) -> Result<Self, InspectError> {
        let memory = memory
            .reserve()
            .ok_or_else(|| decoder_memory_busy(memory))?;
        Ok(Self {
            stream: Some(xz_decoder(&memory)?),
            memory,
            finished_in: 0,
            padding: 0,
            scratch: scratch(),
        })
    }

    fn total_in(&self) -> u64 {
        self.finished_in + self.padding + self.stream.as_ref().map_or(0, |s| s.total_in())
    }

    /// Runs the decoder of the current stream once over `input` and hands what it unpacked to
    /// the analyzer; ends the stream when the decoder says so.
    fn step(
        &mut self,
        input: &[u8],
        action: Action,
        out: &mut Analyzer,
    ) -> Result<XzStep, InspectError> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(XzStep {
                used: 0,
                made: 0,
                ended: true,
                grew: false,
            });
        };
        let (in_before, out_before) = (stream.total_in(), stream.total_out());
        let result = stream.process(input, &mut self.scratch, action);
        let used = (stream.total_in() - in_before) as usize;
        let made = (stream.total_out() - out_before) as usize;
        let status = match result {
            // The file asks for more than the reservation: grow it if the pool can, and go
            // on where the decoder stopped (what it made so far is handed over first).
            Err(XzError::MemLimit) if self.memory.bytes() < MAX_PER_DECODER => {
                if made > 0 {
                    out.feed(&self.scratch[..made])?;
                }
                if !self.memory.grow_to(MAX_PER_DECODER) {
                    return Err(decoder_memory_busy(&self.memory.pool()));
                }
                stream
                    .set_memlimit(self.memory.bytes())
                    .map_err(|err| xz_error(err, in_before))?;
                return Ok(XzStep {
                    used,
                    made,
                    ended: false,
                    grew: true,
                });
            }
            result => result.map_err(|err| xz_error(err, in_before))?,
        };
        let ended = status == XzStatus::StreamEnd;
        if ended {
            self.finished_in += stream.total_in();
            self.stream = None;
        }
        if made > 0 {
            out.feed(&self.scratch[..made])?;
        }
        Ok(XzStep {
            used,
            made,
            ended,
            grew: false,
        })
    }

    pub fn feed(&mut self, mut input: &[u8], out: &mut Analyzer) -> Result<(), InspectError> {
        loop {
            if self.stream.is_none() {
                // Between streams: skip padding, then a new stream must begin.
                let zeros = input.iter().take_while(|&&b| b == 0).count();
                self.padding += zeros as u64;
                input = &input[zeros..];
                if input.is_empty() {
                    return Ok(());
                }
                if !self.padding.is_multiple_of(4) || input[0] != XZ_MAGIC[0] {
                    return Err(InspectError::Corrupt(
                        "unexpected data after the end of the xz stream: the file is damaged; \
                         check the source file (e.g. `xz -t image.xz`)"
                            .to_owned(),
                    ));
                }
                self.finished_in += self.padding;
                self.padding = 0;
                self.stream = Some(xz_decoder(&self.memory)?);
            }
            let step = self.step(input, Action::Run, out)?;
            input = &input[step.used..];
            if step.ended || step.grew || step.made == self.scratch.len() {
                // Another stream may follow, more output is pending, or the decoder may go
                // on with more memory: go round again.
                continue;
            }
            if input.is_empty() {
                return Ok(());
            }
            if step.used == 0 && step.made == 0 {
                // Never seen with room to write; fail rather than drop input.
                return Err(InspectError::Corrupt(format!(
                    "the xz stream could not be unpacked past compressed byte {}; check the \
                     source file (e.g. `xz -t image.xz`)",
                    self.total_in()
                )));
            }
        }
    }

    pub fn finish(&mut self, out: &mut Analyzer) -> Result<(), InspectError> {
        while self.stream.is_some() {
            let (total_in, total_out) = self
                .stream
                .as_ref()
                .map_or((0, 0), |s| (s.total_in(), s.total_out()));
            let step = self.step(&[], Action::Finish, out)?;
            if !step.ended && !step.grew && step.made == 0 {
                return Err(InspectError::Corrupt(format!(
                    "the xz stream ended early (after {total_in} compressed bytes, {total_out} \
                     unpacked): the download was cut short or the source file is truncated; \
                     check the source file (e.g. `xz -t image.xz`)"
                )));
            }
        }
        if !self.padding.is_multiple_of(4) {
            return Err(InspectError::Corrupt(
                "the xz file ends with damaged stream padding; check the source file \
                 (e.g. `xz -t image.xz`)"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

struct XzStep {
    used: usize,
    made: usize,
    ended: bool,
    /// The decoder stopped for memory and now has more.
    grew: bool,
}

fn decoder_memory_busy(memory: &DecoderMemory) -> InspectError {
    InspectError::Busy(format!(
        "other imports hold the decoder memory now ({} of {} in use); the import is tried again \
         later (raise --max-decoder-memory-mib, or lower --max-concurrent-imports, if this \
         happens often)",
        human_size(memory.total() - memory.available()),
        human_size(memory.total())
    ))
}

fn xz_error(err: XzError, at: u64) -> InspectError {
    match err {
        XzError::MemLimit => InspectError::Unsupported(format!(
            "the xz stream needs more than {} of memory to unpack (its dictionary is too \
             large); recompress the image with default settings (`xz -6`)",
            human_size(MAX_PER_DECODER)
        )),
        XzError::Options => InspectError::Unsupported(
            "the xz stream uses options or filters this importer does not support; recompress \
             the image with default settings (`xz -6`)"
                .to_owned(),
        ),
        XzError::Format | XzError::Data => InspectError::Corrupt(format!(
            "the xz stream is corrupt (near compressed byte {at}): the file is damaged or \
             truncated; check the source file (e.g. `xz -t image.xz`)"
        )),
        other => InspectError::Corrupt(format!(
            "the xz stream could not be unpacked ({other}, near compressed byte {at}); check the \
             source file (e.g. `xz -t image.xz`)"
        )),
    }
}
