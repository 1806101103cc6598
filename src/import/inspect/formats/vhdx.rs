//! VHDX, after MS-VHDX.

use super::{Next, WindowKind, bytes, done, invalid_header, le16, le32, le64, truncated_header};
use crate::import::inspect::{DiskFormat, InspectError};

/// Both headers (64 KiB, 128 KiB) and the region table (192 KiB).
const VHDX_HEAD: usize = 0x40000;
const VHDX_HEADERS: [usize; 2] = [0x10000, 0x20000];
const VHDX_REGION_TABLE: usize = 0x30000;
const VHDX_TABLE_LEN: usize = 64 * 1024;
const VHDX_ITEMS_MAX: u64 = 1 << 20;
const VHDX_ENTRIES_MAX: usize = 2047;

/// A GUID as stored on disk (first three fields little-endian).
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let (a, b, c) = (a.to_le_bytes(), b.to_le_bytes(), c.to_le_bytes());
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}
const VHDX_BAT: [u8; 16] = guid(
    0x2dc2_7766,
    0xf623,
    0x4200,
    [0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08],
);
const VHDX_METADATA: [u8; 16] = guid(
    0x8b7c_a206,
    0x4790,
    0x4b9a,
    [0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e],
);
const VHDX_FILE_PARAMETERS: [u8; 16] = guid(
    0xcaa1_6737,
    0xfa36,
    0x4d43,
    [0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b],
);
const VHDX_VIRTUAL_DISK_SIZE: [u8; 16] = guid(
    0x2fa5_4224,
    0xcd1b,
    0x4876,
    [0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8],
);
const VHDX_PARENT_LOCATOR: [u8; 16] = guid(
    0xa8d3_5f2d,
    0xb30b,
    0x454d,
    [0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c],
);

fn vhdx_differencing() -> InspectError {
    InspectError::Unsafe(
        "the VHDX image is a differencing disk that needs its parent disk; images must be \
         self-contained: merge it into a standalone image (e.g. with Hyper-V's Merge-VHD) and \
         import the result"
            .to_owned(),
    )
}

pub(super) fn vhdx(h: &[u8], eof: bool) -> Result<Next, InspectError> {
    if h.len() < VHDX_HEAD {
        return if eof {
            Err(truncated_header("VHDX"))
        } else {
            Ok(Next::Head(VHDX_HEAD))
        };
    }
    // The current header is the valid one with the higher sequence number.
    let header = VHDX_HEADERS
        .into_iter()
        .filter(|&at| bytes::<4>(h, at) == *b"head")
        .max_by_key(|&at| le64(h, at + 8))
        .ok_or_else(|| invalid_header("VHDX", "no valid header"))?;
    if bytes::<16>(h, header + 48) != [0; 16] {
        return Err(InspectError::Unsupported(
            "the VHDX image has a pending log (it was not closed cleanly), so its metadata \
             may be stale; replay the log with `qemu-img check -r all in.vhdx` (or attach and \
             detach it in Hyper-V) and import it again"
                .to_owned(),
        ));
    }
    let table = VHDX_REGION_TABLE;
    if bytes::<4>(h, table) != *b"regi" {
        return Err(invalid_header("VHDX", "no region table"));
    }
    let count = le32(h, table + 8) as usize;
    if count > VHDX_ENTRIES_MAX {
        return Err(invalid_header("VHDX", "region table entry count"));
    }
    let mut metadata = None;
    for entry in (0..count).map(|i| table + 16 + 32 * i) {
        let id: [u8; 16] = bytes(h, entry);
        let required = le32(h, entry + 28) & 1 != 0;
        if id == VHDX_METADATA {
            metadata = Some((le64(h, entry + 16), u64::from(le32(h, entry + 24))));
        } else if id != VHDX_BAT && required {
            return Err(InspectError::Unsupported(
                "the VHDX image has a required region unknown to this importer; convert it \
                 with `qemu-img convert -O qcow2 in.vhdx out.qcow2` and import the result"
                    .to_owned(),
            ));
        }
    }
    let (region, region_len) =
        metadata.ok_or_else(|| invalid_header("VHDX", "no metadata region"))?;
    if region < 1 << 20 || region_len < VHDX_TABLE_LEN as u64 {
        return Err(invalid_header("VHDX", "metadata region location"));
    }
    Ok(Next::Window {
        start: region,
        len: VHDX_TABLE_LEN,
        kind: WindowKind::VhdxMetadataTable { region, region_len },
    })
}

pub(super) fn vhdx_metadata_table(
    t: &[u8],
    region: u64,
    region_len: u64,
) -> Result<Next, InspectError> {
    if bytes::<8>(t, 0) != *b"metadata" {
        return Err(invalid_header("VHDX", "no metadata table"));
    }
    let count = usize::from(le16(t, 10));
    if count > VHDX_ENTRIES_MAX {
        return Err(invalid_header("VHDX", "metadata table entry count"));
    }
    let (mut size_item, mut params_item) = (None, None);
    for entry in (0..count).map(|i| 32 + 32 * i) {
        let id: [u8; 16] = bytes(t, entry);
        let offset = u64::from(le32(t, entry + 16));
        match id {
            VHDX_PARENT_LOCATOR => return Err(vhdx_differencing()),
            VHDX_VIRTUAL_DISK_SIZE => size_item = Some(offset),
            VHDX_FILE_PARAMETERS => params_item = Some(offset),
            _ => {}
        }
    }
    let size_item = size_item.ok_or_else(|| invalid_header("VHDX", "no virtual disk size"))?;
    // Items follow the table and lie within the region; read them in one window.
    let items = [Some(size_item), params_item];
    let items = items.iter().flatten();
    if items
        .clone()
        .any(|&at| at < VHDX_TABLE_LEN as u64 || at + 8 > region_len)
    {
        return Err(invalid_header("VHDX", "metadata item location"));
    }
    let low = items.clone().copied().min().unwrap_or(size_item);
    let high = items.map(|&at| at + 8).max().unwrap_or(size_item + 8);
    if high - low > VHDX_ITEMS_MAX {
        return Err(InspectError::Unsupported(
            "the VHDX image's metadata has an unusual layout the streaming import cannot \
             follow; convert it with `qemu-img convert -O qcow2 in.vhdx out.qcow2` and import \
             the result"
                .to_owned(),
        ));
    }
    let start = region
        .checked_add(low)
        .ok_or_else(|| invalid_header("VHDX", "metadata region location"))?;
    Ok(Next::Window {
        start,
        len: (high - low) as usize,
        kind: WindowKind::VhdxItems {
            size_at: (size_item - low) as usize,
            params_at: params_item.map(|at| (at - low) as usize),
        },
    })
}

pub(super) fn vhdx_items(
    d: &[u8],
    size_at: usize,
    params_at: Option<usize>,
) -> Result<Next, InspectError> {
    // File parameters: block size (u32), then flags; bit 1 is HasParent.
    if params_at.is_some_and(|at| le32(d, at + 4) & 2 != 0) {
        return Err(vhdx_differencing());
    }
    done(DiskFormat::Vhdx, le64(d, size_at))
}
