//! Follows the unpacked byte stream: keeps the bytes the format parsers ask for and counts
//! the rest.

use super::formats::{self, Declarer, Detected, Extent, HEAD_MAX, Next, WindowKind};
use super::{DiskFormat, InspectError, human_size};

enum Phase {
    /// Collecting the first `want` bytes; the head holds every byte seen so far.
    Head {
        want: usize,
    },
    Window {
        start: u64,
        len: usize,
        buf: Vec<u8>,
        kind: WindowKind,
    },
    Count {
        iso: bool,
        extent: Extent,
    },
    Done(Detected),
}

pub(super) struct Analyzer {
    /// Unpacked bytes seen.
    pos: u64,
    limit: u64,
    head: Vec<u8>,
    phase: Phase,
    tail: Tail,
}

impl Analyzer {
    pub fn new(limit: u64) -> Self {
        Self {
            pos: 0,
            limit,
            head: Vec::new(),
            phase: Phase::Head {
                want: formats::FIRST_PROBE,
            },
            tail: Tail::default(),
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done(_))
    }

    /// Takes the next unpacked bytes.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), InspectError> {
        let end = self.pos.saturating_add(data.len() as u64);
        if end > self.limit {
            return Err(InspectError::UnpackedSizeLimitExceeded { limit: self.limit });
        }
        // The hot path for raw and ISO images: count and keep the tail.
        if let Phase::Count { iso, extent } = &self.phase {
            past_declared(*iso, extent, end)?;
            self.pos = end;
            self.tail.push(data);
            return Ok(());
        }
        while !data.is_empty() {
            let complete = match &mut self.phase {
                Phase::Head { want } => {
                    let take = want.saturating_sub(self.head.len()).min(data.len());
                    self.head.extend_from_slice(&data[..take]);
                    self.pos += take as u64;
                    data = &data[take..];
                    self.head.len() >= *want
                }
                Phase::Window {
                    start, len, buf, ..
                } => {
                    if self.pos < *start {
                        let skip = (*start - self.pos).min(data.len() as u64) as usize;
                        self.pos += skip as u64;
                        data = &data[skip..];
                        false
                    } else {
                        let take = (*len - buf.len()).min(data.len());
                        buf.extend_from_slice(&data[..take]);
                        self.pos += take as u64;
                        data = &data[take..];
                        buf.len() == *len
                    }
                }
                Phase::Count { iso, extent } => {
                    past_declared(*iso, extent, end)?;
                    self.pos = end;
                    self.tail.push(data);
                    return Ok(());
                }
                Phase::Done(_) => {
                    self.pos = end;
                    return Ok(());
                }
            };
            if complete {
                self.step(false)?;
            }
        }
        Ok(())
    }

    /// The stream has ended: the result, or why there is none.
    pub fn finish(mut self) -> Result<Detected, InspectError> {
        loop {
            match &self.phase {
                Phase::Head { .. } | Phase::Window { .. } => self.step(true)?,
                Phase::Count { iso, extent } => return self.counted(*iso, extent),
                Phase::Done(found) => return Ok(*found),
            }
        }
    }

    /// Parses what the current phase collected and moves on.
    fn step(&mut self, eof: bool) -> Result<(), InspectError> {
        let phase = std::mem::replace(&mut self.phase, Phase::Head { want: 0 });
        let next = match phase {
            Phase::Head { .. } => formats::probe(&self.head, eof)?,
            Phase::Window {
                start,
                len,
                buf,
                kind,
            } => {
                if buf.len() < len {
                    return Err(truncated(kind.what(), start));
                }
                kind.parse(&buf)?
            }
            Phase::Count { .. } | Phase::Done(_) => {
                self.phase = phase;
                return Ok(());
            }
        };
        self.enter(next, eof)
    }

    fn enter(&mut self, mut next: Next, eof: bool) -> Result<(), InspectError> {
        loop {
            match next {
                Next::Head(want) => {
                    // Parsers only ask for more than they had, while in the head.
                    if eof || want <= self.head.len() || want > HEAD_MAX {
                        return Err(InspectError::Corrupt(format!(
                            "the image ends inside its header (after {} bytes): the file is \
                             truncated; check the source file",
                            self.pos
                        )));
                    }
                    self.phase = Phase::Head { want };
                    return Ok(());
                }
                Next::Window { start, len, kind } => {
                    let end = start.saturating_add(len as u64);
                    let held = self.head.len() as u64;
                    if end <= held {
                        // Already in the head: parse at once.
                        next = kind.parse(&self.head[start as usize..end as usize])?;
                        continue;
                    }
                    if eof {
                        return Err(truncated(kind.what(), start));
                    }
                    let mut buf = Vec::with_capacity(len);
                    if start < self.pos {
                        // Bytes already passed are at hand only while the head holds them all.
                        if self.pos != held {
                            return Err(InspectError::Unsupported(format!(
                                "the image's {} lies before data already read (at offset \
                                 {start}), an unusual layout the streaming import cannot \
                                 follow: convert the image with `qemu-img convert -O qcow2` \
                                 and import the result",
                                kind.what()
                            )));
                        }
                        buf.extend_from_slice(&self.head[start as usize..]);
                    }
                    self.phase = Phase::Window {
                        start,
                        len,
                        buf,
                        kind,
                    };
                    return Ok(());
                }
                Next::Count { iso, extent } => {
                    // Entered from the head, which holds the whole stream so far.
                    past_declared(iso, &extent, self.pos)?;
                    self.tail.push(&self.head);
                    self.head = Vec::new();
                    self.phase = Phase::Count { iso, extent };
                    return Ok(());
                }
                Next::Done(found) => {
                    self.head = Vec::new();
                    self.phase = Phase::Done(found);
                    return Ok(());
                }
            }
        }
    }

    fn counted(&self, iso: bool, extent: &Extent) -> Result<Detected, InspectError> {
        if self.pos == 0 {
            return Err(InspectError::Corrupt(
                "the image is empty (0 bytes): check that the URL points to the image file"
                    .to_owned(),
            ));
        }
        let tail = self.tail.get();
        if let Some(vhd) = formats::fixed_vhd(&tail)? {
            return Ok(vhd);
        }
        if let Some((declared, by)) = extent.at_least
            && self.pos < declared
        {
            return Err(short_of_declared(iso, by, self.pos, declared));
        }
        Ok(Detected {
            format: if iso {
                DiskFormat::Iso
            } else {
                DiskFormat::Raw
            },
            virtual_size: self.pos,
            cdrom: iso,
        })
    }
}

/// An ISO that goes on past what it declares: refused as soon as it does, so an endless
/// source ends here.
fn past_declared(iso: bool, extent: &Extent, end: u64) -> Result<(), InspectError> {
    match extent.at_most {
        Some(bound) if iso && end > bound => Err(InspectError::Corrupt(format!(
            "the ISO image goes on past {}, well beyond the end its volume descriptor and \
             partition table declare: data was appended to it, or the source sends more than \
             the file; check the source file against its published checksum",
            human_size(bound)
        ))),
        _ => Ok(()),
    }
}

fn short_of_declared(iso: bool, by: Declarer, got: u64, declared: u64) -> InspectError {
    let (image, declarer) = match (iso, by) {
        (true, Declarer::IsoVolume) => ("ISO image", "its volume descriptor declares"),
        (true, Declarer::Gpt) => ("ISO image", "its GPT partition table declares"),
        (false, _) => (
            "raw disk image",
            "its GPT partition table puts the end of the disk at",
        ),
    };
    // Sizes within a percent of each other read the same rounded: then give the bytes.
    let (got, declared) = if declared - got < declared / 100 {
        (format!("{got} bytes"), format!("{declared} bytes"))
    } else {
        (human_size(got), human_size(declared))
    };
    InspectError::Corrupt(format!(
        "the {image} ends after {got}, but {declarer} {declared}: the file is truncated (an \
         interrupted download or copy); check the source file against its published checksum"
    ))
}

fn truncated(what: &str, at: u64) -> InspectError {
    InspectError::Corrupt(format!(
        "the image ends before its {what} (at offset {at}): the file is truncated; check the \
         source file"
    ))
}

/// The last bytes of the stream (where a fixed VHD keeps its footer), in a ring so that
/// tiny chunks cost no shifting.
pub(super) struct Tail {
    buf: [u8; TAIL_LEN],
    /// Where the next byte goes.
    end: usize,
    filled: usize,
}

pub(super) const TAIL_LEN: usize = 512;

impl Default for Tail {
    fn default() -> Self {
        Self {
            buf: [0; TAIL_LEN],
            end: 0,
            filled: 0,
        }
    }
}

impl Tail {
    #[inline]
    pub fn push(&mut self, data: &[u8]) {
        if data.len() >= TAIL_LEN {
            self.buf.copy_from_slice(&data[data.len() - TAIL_LEN..]);
            self.end = 0;
            self.filled = TAIL_LEN;
            return;
        }
        let first = (TAIL_LEN - self.end).min(data.len());
        self.buf[self.end..self.end + first].copy_from_slice(&data[..first]);
        let rest = data.len() - first;
        self.buf[..rest].copy_from_slice(&data[first..]);
        self.end = (self.end + data.len()) % TAIL_LEN;
        self.filled = (self.filled + data.len()).min(TAIL_LEN);
    }

    /// The kept bytes in stream order.
    pub fn get(&self) -> Vec<u8> {
        if self.filled < TAIL_LEN {
            // Never wrapped: the bytes start at 0.
            return self.buf[..self.filled].to_vec();
        }
        let mut out = Vec::with_capacity(TAIL_LEN);
        out.extend_from_slice(&self.buf[self.end..]);
        out.extend_from_slice(&self.buf[..self.end]);
        out
    }
}
