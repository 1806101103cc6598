//! Format detection and safety checks on the received bytes (being written).
//!
//! [`Inspector`] is fed an image exactly as received (plain, gzip or xz, told apart by magic
//! bytes), in chunks of any size, and tells its disk format, virtual size and whether it is a
//! CD-ROM image. It refuses images that cannot stand alone (backing files, external data
//! files, split or differencing disks), encrypted ones and decompression bombs.
//!
//! Memory stays bounded whatever the image size: the header bytes a format needs (at most
//! 2 MiB, for a qcow2 with 2 MiB clusters; 256 KiB for VHDX, 32 KiB otherwise), one window
//! of at most 1 MiB further in (VMDK descriptor, VHDX metadata), the last 512 bytes, and the
//! decompressor state (256 KiB of output scratch, plus the xz dictionary: 8 MiB for `xz -6`,
//! at most 128 MiB). A compressed stream is unpacked to its very end even once a header has
//! told the size: a damaged or cut-short tail is refused, never stored as a Ready image.

mod analyzer;
mod compression;
mod formats;
pub mod memory;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Deserialize, Serialize};

use analyzer::Analyzer;
use compression::{GzipLayer, XzLayer};
pub use memory::DecoderMemory;

/// The disk format of an image, as named by `qemu-img` (but "vhd" for its "vpc").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Qcow2,
    Vmdk,
    Vdi,
    Vhd,
    Vhdx,
    Iso,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qcow2 => "qcow2",
            Self::Vmdk => "vmdk",
            Self::Vdi => "vdi",
            Self::Vhd => "vhd",
            Self::Vhdx => "vhdx",
            Self::Iso => "iso",
            Self::Raw => "raw",
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The compression wrapped around the image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Compression {
    #[serde(rename = "gz")]
    Gzip,
    #[serde(rename = "xz")]
    Xz,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gzip => "gz",
            Self::Xz => "xz",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the inspection found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: DiskFormat,
    pub compression: Option<Compression>,
    /// The size of the disk the image describes, in bytes (for raw and ISO: the unpacked
    /// length).
    pub virtual_size: u64,
    pub cdrom: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectLimits {
    /// The most bytes the image may unpack to (counted on plain images too, where it is the
    /// received length); protects against decompression bombs.
    pub max_unpacked_size: u64,
    /// The memory the xz decoders of all imports share.
    pub decoder_memory: DecoderMemory,
}

impl Default for InspectLimits {
    fn default() -> Self {
        Self {
            max_unpacked_size: 1 << 40,
            decoder_memory: DecoderMemory::default(),
        }
    }
}

/// Why an image was refused. The messages are written for users: what is wrong, what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    /// The image needs other files (backing file, external data file, other extents, a parent
    /// disk): imported alone it would be a different, broken disk.
    #[error("{0}")]
    Unsafe(String),
    /// The image is encrypted and the importer has no key.
    #[error("{0}")]
    Encrypted(String),
    /// Truncated or damaged data (compressed stream or image headers).
    #[error("{0}")]
    Corrupt(String),
    /// A valid image of a kind or variant that cannot be imported as is.
    #[error("{0}")]
    Unsupported(String),
    /// Not now: what unpacking needs is in use by other imports.
    #[error("{0}")]
    Busy(String),
    #[error(
        "the image unpacks to more than {} (the unpacked size limit): it may be a decompression \
         bomb; if the image is genuine, ask the administrator to raise the limit",
        human_size(*limit)
    )]
    UnpackedSizeLimitExceeded { limit: u64 },
}

impl InspectError {
    /// A CamelCase condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unsafe(_) => "UnsafeImage",
            Self::Encrypted(_) => "EncryptedImage",
            Self::Corrupt(_) => "CorruptImage",
            Self::Unsupported(_) => "UnsupportedImage",
            Self::Busy(_) => "DecoderMemoryBusy",
            Self::UnpackedSizeLimitExceeded { .. } => "UnpackedSizeLimitExceeded",
        }
    }
}

impl InspectError {
    /// Whether the same image may pass when tried again later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Busy(_))
    }
}

/// "10 MiB", "1.5 GiB", "700 bytes": sizes in messages.
pub(crate) fn human_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut unit = 0;
    let mut scale = 1024u64;
    while unit + 1 < UNITS.len() && n / scale >= 1024 {
        unit += 1;
        scale *= 1024;
    }
    if n.is_multiple_of(scale) {
        format!("{} {}", n / scale, UNITS[unit])
    } else {
        format!("{:.1} {}", n as f64 / scale as f64, UNITS[unit])
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// What sits between the received bytes and the format analysis.
enum Layer {
    /// Too few bytes yet to tell the compression.
    Sniff {
        buf: [u8; XZ_MAGIC.len()],
        len: usize,
    },
    Plain,
    Gzip(Box<GzipLayer>),
    Xz(Box<XzLayer>),
    /// The analysis failed, or finish() took the layer: received bytes are ignored.
    Idle,
}

/// Tells an image's format, size and safety from its bytes, fed incrementally.
pub struct Inspector {
    layer: Layer,
    compression: Option<Compression>,
    analyzer: Analyzer,
    failed: Option<InspectError>,
    decoder_memory: DecoderMemory,
}

impl Inspector {
    pub fn new(limits: InspectLimits) -> Self {
        Self {
            layer: Layer::Sniff {
                buf: [0; XZ_MAGIC.len()],
                len: 0,
            },
            compression: None,
            analyzer: Analyzer::new(limits.max_unpacked_size),
            failed: None,
            decoder_memory: limits.decoder_memory,
        }
    }

    /// Feeds the next received bytes. Once it has failed, it returns the same error again.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), InspectError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let result = self.feed(chunk);
        if let Err(err) = &result {
            self.failed = Some(err.clone());
            self.layer = Layer::Idle;
        }
        result
    }

    /// Whether further bytes still matter: false once a plain image's format and size are
    /// known without reading the rest (or the image was refused); update() is then cheap.
    /// A compressed stream needs every byte: its end is checked.
    pub fn needs_more(&self) -> bool {
        self.failed.is_none()
            && (!self.analyzer.is_done() || matches!(self.layer, Layer::Gzip(_) | Layer::Xz(_)))
    }

    /// Ends the stream: returns the result, or an error for a truncated or corrupt stream.
    pub fn finish(mut self) -> Result<ImageInfo, InspectError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        match std::mem::replace(&mut self.layer, Layer::Idle) {
            // Shorter than any compression magic: plain data.
            Layer::Sniff { buf, len } => self.analyzer.feed(&buf[..len])?,
            Layer::Gzip(gz) => gz.finish()?,
            Layer::Xz(mut xz) => xz.finish(&mut self.analyzer)?,
            Layer::Plain | Layer::Idle => {}
        }
        let found = self.analyzer.finish()?;
        Ok(ImageInfo {
            format: found.format,
            compression: self.compression,
            virtual_size: found.virtual_size,
            cdrom: found.cdrom,
        })
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<(), InspectError> {
        match &mut self.layer {
            Layer::Plain => self.analyzer.feed(chunk),
            Layer::Idle => Ok(()),
            Layer::Gzip(gz) => gz.feed(chunk, &mut self.analyzer),
            Layer::Xz(xz) => xz.feed(chunk, &mut self.analyzer),
            Layer::Sniff { buf, len } => {
                let take = (buf.len() - *len).min(chunk.len());
                buf[*len..*len + take].copy_from_slice(&chunk[..take]);
                *len += take;
                let Some(compression) = sniff(&buf[..*len]) else {
                    // Undecided only while the magic is incomplete, so all of chunk was taken.
                    return Ok(());
                };
                let (buf, len) = (*buf, *len);
                self.compression = compression;
                self.layer = match compression {
                    None => Layer::Plain,
                    Some(Compression::Gzip) => Layer::Gzip(Box::new(GzipLayer::new())),
                    Some(Compression::Xz) => {
                        Layer::Xz(Box::new(XzLayer::new(&self.decoder_memory)?))
                    }
                };
                self.feed(&buf[..len])?;
                self.feed(&chunk[take..])
            }
        }
    }
}

/// The compression announced by the first bytes: None while they could still be a magic.
fn sniff(start: &[u8]) -> Option<Option<Compression>> {
    let magic: &[u8] = match start.first()? {
        0x1f => &GZIP_MAGIC,
        0xfd => &XZ_MAGIC,
        _ => return Some(None),
    };
    let n = start.len().min(magic.len());
    if start[..n] != magic[..n] {
        Some(None)
    } else if n < magic.len() {
        None
    } else if magic == GZIP_MAGIC {
        Some(Some(Compression::Gzip))
    } else {
        Some(Some(Compression::Xz))
    }
}
