//! Streaming gzip and xz decompression into a fixed scratch buffer, handed to the analyzer.

use flate2::{Decompress, FlushDecompress, Status};
use liblzma::stream::{Action, CONCATENATED, Error as XzError, Status as XzStatus, Stream};

use super::analyzer::Analyzer;
use super::{InspectError, human_size};

/// Unpacked bytes per analyzer call: large enough to amortise calls, small enough for cache.
const SCRATCH_LEN: usize = 256 * 1024;

/// xz needs its whole dictionary in memory: 128 MiB covers `xz -9` (64 MiB) with room, and
/// refuses streams made to exhaust memory.
const XZ_MEMLIMIT: u64 = 128 << 20;

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
                        if out.is_done() {
                            return Ok(());
                        }
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
    stream: Stream,
    scratch: Box<[u8]>,
}

impl XzLayer {
    pub fn new() -> Result<Self, InspectError> {
        // CONCATENATED: accept multi-stream files (and stream padding), as `xz -d` does.
        let stream = Stream::new_stream_decoder(XZ_MEMLIMIT, CONCATENATED)
            .map_err(|err| xz_error(err, 0))?;
        Ok(Self {
            stream,
            scratch: scratch(),
        })
    }

    pub fn feed(&mut self, mut input: &[u8], out: &mut Analyzer) -> Result<(), InspectError> {
        loop {
            let (in_before, out_before) = (self.stream.total_in(), self.stream.total_out());
            let status = self
                .stream
                .process(input, &mut self.scratch, Action::Run)
                .map_err(|err| xz_error(err, self.stream.total_in()))?;
            let used = (self.stream.total_in() - in_before) as usize;
            let made = (self.stream.total_out() - out_before) as usize;
            input = &input[used..];
            if made > 0 {
                out.feed(&self.scratch[..made])?;
                if out.is_done() {
                    return Ok(());
                }
            }
            if status == XzStatus::StreamEnd && !input.is_empty() {
                // CONCATENATED reports the end only when finishing: never expected here.
                return Err(InspectError::Corrupt(
                    "unexpected data after the end of the xz stream: the file is damaged; check \
                     the source file (e.g. `xz -t image.xz`)"
                        .to_owned(),
                ));
            }
            if made == self.scratch.len() {
                // More output may be pending: drain it before taking input.
                continue;
            }
            if input.is_empty() || status == XzStatus::StreamEnd {
                return Ok(());
            }
            if used == 0 {
                // Never seen with room to write; fail rather than drop input.
                return Err(InspectError::Corrupt(format!(
                    "the xz stream could not be unpacked past compressed byte {}; check the \
                     source file (e.g. `xz -t image.xz`)",
                    self.stream.total_in()
                )));
            }
        }
    }

    pub fn finish(&mut self, out: &mut Analyzer) -> Result<(), InspectError> {
        loop {
            let out_before = self.stream.total_out();
            let status = self
                .stream
                .process(&[], &mut self.scratch, Action::Finish)
                .map_err(|err| xz_error(err, self.stream.total_in()))?;
            let made = (self.stream.total_out() - out_before) as usize;
            if made > 0 {
                out.feed(&self.scratch[..made])?;
                if out.is_done() {
                    return Ok(());
                }
            }
            if status == XzStatus::StreamEnd {
                return Ok(());
            }
            if made == 0 {
                return Err(InspectError::Corrupt(format!(
                    "the xz stream ended early (after {} compressed bytes, {} unpacked): the \
                     download was cut short or the source file is truncated; check the source \
                     file (e.g. `xz -t image.xz`)",
                    self.stream.total_in(),
                    self.stream.total_out()
                )));
            }
        }
    }
}

fn xz_error(err: XzError, at: u64) -> InspectError {
    match err {
        XzError::MemLimit => InspectError::Unsupported(format!(
            "the xz stream needs more than {} of memory to unpack (its dictionary is too \
             large); recompress the image with default settings (`xz -6`)",
            human_size(XZ_MEMLIMIT)
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
