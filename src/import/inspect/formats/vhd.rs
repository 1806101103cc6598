//! VHD (Microsoft Virtual Hard Disk, "vpc" in QEMU): dynamic and fixed.

use super::{Detected, Next, be32, be64, bytes, done, invalid_header, truncated_header};
use crate::import::inspect::{DiskFormat, InspectError};

const VHD_FOOTER_LEN: usize = 512;
const VHD_FIXED: u32 = 2;
const VHD_DYNAMIC: u32 = 3;
const VHD_DIFFERENCING: u32 = 4;

/// A dynamic VHD starts with a copy of its footer.
pub(super) fn vhd(h: &[u8]) -> Result<Next, InspectError> {
    if h.len() < VHD_FOOTER_LEN {
        return Err(truncated_header("VHD"));
    }
    let footer = &h[..VHD_FOOTER_LEN];
    match be32(footer, 60) {
        VHD_FIXED | VHD_DYNAMIC => done(DiskFormat::Vhd, vhd_size(footer)?),
        VHD_DIFFERENCING => Err(InspectError::Unsafe(
            "the VHD image is a differencing disk that needs its parent disk; images must be \
             self-contained: merge it into a standalone image (e.g. `qemu-img convert -O vpc \
             child.vhd full.vhd` next to its parent) and import the result"
                .to_owned(),
        )),
        other => Err(invalid_header("VHD", &format!("disk type {other}"))),
    }
}

/// A fixed VHD is raw data followed by a 512-byte footer: `tail` is the stream's last bytes.
pub(in crate::import::inspect) fn fixed_vhd(tail: &[u8]) -> Result<Option<Detected>, InspectError> {
    if tail.len() != VHD_FOOTER_LEN
        || !tail.starts_with(b"conectix")
        || be32(tail, 60) != VHD_FIXED
        || !vhd_checksum_ok(tail)
    {
        return Ok(None);
    }
    Ok(Some(Detected {
        format: DiskFormat::Vhd,
        virtual_size: vhd_size(tail)?,
        cdrom: false,
    }))
}

/// One's complement of the byte sum, the checksum field excluded: makes a footer found at
/// the end of otherwise raw data trustworthy.
fn vhd_checksum_ok(footer: &[u8]) -> bool {
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |sum, (_, &b)| sum.wrapping_add(u32::from(b)));
    !sum == be32(footer, 64)
}

/// The size QEMU gives the disk: from the CHS geometry, except for the creators known to use
/// the footer's current size (block/vpc.c).
fn vhd_size(footer: &[u8]) -> Result<u64, InspectError> {
    const MAX_GEOMETRY: u64 = 65535 * 16 * 255;
    const MAX_SECTORS: u64 = 0xff00_0000;
    let [cyls_hi, cyls_lo, heads, sectors_per_cyl]: [u8; 4] = bytes(footer, 56);
    let chs = u64::from(u16::from_be_bytes([cyls_hi, cyls_lo]))
        * u64::from(heads)
        * u64::from(sectors_per_cyl);
    let creator: [u8; 4] = bytes(footer, 28);
    let uses_current_size = matches!(&creator, b"win " | b"qem2" | b"d2v " | b"CTXS" | b"tap\0");
    let sectors = if uses_current_size || chs == MAX_GEOMETRY {
        be64(footer, 48) / 512
    } else {
        chs
    };
    if sectors > MAX_SECTORS {
        return Err(InspectError::Unsupported(
            "the VHD image is larger than 2040 GiB, the format's limit; convert it with \
             `qemu-img convert -O qcow2 in.vhd out.qcow2` and import the result"
                .to_owned(),
        ));
    }
    Ok(sectors * 512)
}
