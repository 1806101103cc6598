//! Disk format parsers: from the first bytes (and, for VMDK and VHDX, windows further in)
//! to a format, a virtual size, or a refusal.
//!
//! Sizes follow what `qemu-img info` reports, since the images are later read with QEMU.

mod extent;
mod qcow2;
mod vdi;
mod vhd;
mod vhdx;
mod vmdk;

pub(super) use extent::{Declarer, Extent};
pub(super) use vhd::fixed_vhd;

use super::{DiskFormat, GZIP_MAGIC, InspectError, XZ_MAGIC};
use qcow2::qcow2;
use vdi::{VDI_SIGNATURE, vdi};
use vhd::vhd;
use vhdx::{vhdx, vhdx_items, vhdx_metadata_table};
use vmdk::{is_vmdk_descriptor, vmdk_descriptor_file, vmdk_embedded_descriptor, vmdk_sparse};

/// A format and size, once known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Detected {
    pub format: DiskFormat,
    pub virtual_size: u64,
    pub cdrom: bool,
}

/// What a parser needs next.
pub(super) enum Next {
    /// The first `n` bytes of the image (more than it had).
    Head(usize),
    /// `len` bytes at `start`, handed to `kind.parse()`.
    Window {
        start: u64,
        len: usize,
        kind: WindowKind,
    },
    /// Everything: the size is the unpacked length (raw, or ISO if `iso`), within what the
    /// image declares of its own length.
    Count {
        iso: bool,
        extent: Extent,
    },
    Done(Detected),
}

/// Enough for the headers of every format but qcow2's extensions and VHDX.
pub(super) const FIRST_PROBE: usize = 512;
/// qcow2 keeps its header extensions in the first cluster, at most 2 MiB.
pub(super) const HEAD_MAX: usize = 2 << 20;
/// The ISO 9660 volume descriptor identifier "CD001" at 32769.
const ISO_ID_AT: usize = 0x8001;
const ISO_PROBE: usize = ISO_ID_AT + 5;
/// An ISO's head reaches the sizes in its primary volume descriptor.
const ISO_HEAD: usize = extent::ISO_HEAD;

/// Parses the first bytes of the image; `eof` when they are all there is.
pub(super) fn probe(h: &[u8], eof: bool) -> Result<Next, InspectError> {
    if h.len() < FIRST_PROBE && !eof {
        return Ok(Next::Head(FIRST_PROBE));
    }
    if h.starts_with(b"QFI\xfb") {
        return qcow2(h, eof);
    }
    if h.starts_with(b"KDMV") {
        return vmdk_sparse(h);
    }
    if h.get(64..68) == Some(&VDI_SIGNATURE[..]) {
        return vdi(h);
    }
    if h.starts_with(b"conectix") {
        return vhd(h);
    }
    if h.starts_with(b"vhdxfile") {
        return vhdx(h, eof);
    }
    if is_vmdk_descriptor(h) {
        return vmdk_descriptor_file(h, eof);
    }
    if let Some(err) = foreign(h) {
        return Err(err);
    }
    if h.len() < ISO_HEAD && !eof {
        return Ok(Next::Head(ISO_HEAD));
    }
    // Shorter than an ISO's volume descriptors: raw, however short.
    let iso = h.get(ISO_ID_AT..ISO_PROBE) == Some(&b"CD001"[..]);
    if iso && h.len() < ISO_HEAD {
        return Err(truncated_header("ISO"));
    }
    Ok(Next::Count {
        iso,
        extent: Extent::of(h, iso),
    })
}

/// A window of bytes further into the image, and what to make of it.
pub(super) enum WindowKind {
    VmdkDescriptor {
        capacity: u64,
    },
    VhdxMetadataTable {
        region: u64,
        region_len: u64,
    },
    VhdxItems {
        size_at: usize,
        params_at: Option<usize>,
    },
}

impl WindowKind {
    pub fn what(&self) -> &'static str {
        match self {
            Self::VmdkDescriptor { .. } => "VMDK embedded descriptor",
            Self::VhdxMetadataTable { .. } => "VHDX metadata table",
            Self::VhdxItems { .. } => "VHDX metadata",
        }
    }

    pub fn parse(self, data: &[u8]) -> Result<Next, InspectError> {
        match self {
            Self::VmdkDescriptor { capacity } => vmdk_embedded_descriptor(data, capacity),
            Self::VhdxMetadataTable { region, region_len } => {
                vhdx_metadata_table(data, region, region_len)
            }
            Self::VhdxItems { size_at, params_at } => vhdx_items(data, size_at, params_at),
        }
    }
}

fn done(format: DiskFormat, virtual_size: u64) -> Result<Next, InspectError> {
    Ok(Next::Done(Detected {
        format,
        virtual_size,
        cdrom: false,
    }))
}

// Readers that never panic: out-of-range bytes read as zero (callers check lengths first).
fn bytes<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b.get(at..at.saturating_add(N))
        .and_then(|s| s.try_into().ok())
        .unwrap_or([0; N])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes(b, at))
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes(b, at))
}
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(bytes(b, at))
}
fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes(b, at))
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes(b, at))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes(b, at))
}

/// A file name stored in an image, shortened and made printable; quote it with `{:?}`.
fn stored_name(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end])
        .chars()
        .take(200)
        .collect()
}

fn truncated_header(format: &str) -> InspectError {
    InspectError::Corrupt(format!(
        "the {format} image ends inside its header: the file is truncated; check the source file"
    ))
}

fn invalid_header(format: &str, what: &str) -> InspectError {
    InspectError::Corrupt(format!(
        "the {format} image has an invalid header ({what}): the file is damaged or not really \
         {format}; check the source file (e.g. with `qemu-img check`)"
    ))
}

/// ` ("name")`, or nothing when the name is unknown or empty.
fn quoted(name: Option<&str>) -> String {
    match name {
        Some(name) if !name.is_empty() => format!(" ({name:?})"),
        _ => String::new(),
    }
}

// --- Not disk images, or formats not imported ---

fn foreign(h: &[u8]) -> Option<InspectError> {
    let refuse = |what: &str, todo: &str| {
        Some(InspectError::Unsupported(format!(
            "the image is {what}; {todo}"
        )))
    };
    let extract = "extract the disk image from it and import that file";
    let convert = "convert it with `qemu-img convert -O qcow2 in.img out.qcow2` and import the \
                   result";
    if h.starts_with(&GZIP_MAGIC) || h.starts_with(&XZ_MAGIC) {
        return refuse(
            "compressed twice (the unpacked data is gzip or xz data again)",
            "compress the disk image only once, with gzip or xz",
        );
    }
    if h.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return refuse(
            "zstd-compressed, and only gzip and xz are supported",
            "recompress it, e.g. `zstd -dc image.zst | xz -T0 > image.xz`",
        );
    }
    let bzip2_block = |magic: [u8; 6]| h.get(4..10) == Some(&magic[..]);
    if h.starts_with(b"BZh")
        && h.get(3).is_some_and(|level| (b'1'..=b'9').contains(level))
        && (bzip2_block([0x31, 0x41, 0x59, 0x26, 0x53, 0x59])
            || bzip2_block([0x17, 0x72, 0x45, 0x38, 0x50, 0x90]))
    {
        return refuse(
            "bzip2-compressed, and only gzip and xz are supported",
            "recompress it, e.g. `bzip2 -dc image.bz2 | xz -T0 > image.xz`",
        );
    }
    if h.starts_with(b"PK\x03\x04") {
        return refuse("a zip archive", extract);
    }
    if h.starts_with(b"7z\xbc\xaf\x27\x1c") {
        return refuse("a 7-Zip archive", extract);
    }
    if h.get(257..262) == Some(b"ustar") {
        return refuse(
            "a tar archive (an OVA appliance, for instance)",
            "extract the disk image from it (e.g. `tar xf appliance.ova`) and import that file",
        );
    }
    if h.starts_with(b"QED\0") {
        return refuse("in the QED format", convert);
    }
    if h.starts_with(b"COWD") {
        return refuse("a VMware ESX sparse (COWD) VMDK", convert);
    }
    if h.starts_with(b"WithoutFreeSpace") || h.starts_with(b"WithouFreSpacExt") {
        return refuse("a Parallels disk image", convert);
    }
    None
}
