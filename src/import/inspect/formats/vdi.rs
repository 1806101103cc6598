//! VDI (VirtualBox).

use super::{Next, done, invalid_header, le32, le64, truncated_header};
use crate::import::inspect::{DiskFormat, InspectError};

pub(super) const VDI_SIGNATURE: [u8; 4] = 0xbeda_107f_u32.to_le_bytes();

pub(super) fn vdi(h: &[u8]) -> Result<Next, InspectError> {
    if h.len() < 0x180 {
        return Err(truncated_header("VDI"));
    }
    let version = le32(h, 68);
    if version != 0x0001_0001 {
        return Err(InspectError::Unsupported(format!(
            "the VDI image has header version {}.{} (only 1.1 is supported); convert it with \
             `VBoxManage clonemedium disk in.vdi out.vdi` or to qcow2, and import the result",
            version >> 16,
            version & 0xffff
        )));
    }
    match le32(h, 76) {
        // Dynamic, fixed.
        1 | 2 => {}
        3 => {
            return Err(InspectError::Unsupported(
                "the VDI image is an undo image; clone it to a normal image with `VBoxManage \
                 clonemedium disk in.vdi out.vdi` and import the result"
                    .to_owned(),
            ));
        }
        4 => {
            return Err(InspectError::Unsafe(
                "the VDI image is a differencing image (a snapshot) that needs its parent \
                 disk; images must be self-contained: merge it into a standalone image with \
                 `VBoxManage clonemedium disk snapshot.vdi full.vdi` and import the result"
                    .to_owned(),
            ));
        }
        other => return Err(invalid_header("VDI", &format!("image type {other}"))),
    }
    // QEMU counts whole sectors.
    done(DiskFormat::Vdi, le64(h, 0x170) / 512 * 512)
}
