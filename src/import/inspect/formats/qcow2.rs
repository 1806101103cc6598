//! qcow2, after QEMU's docs/interop/qcow2.txt.

use super::{
    HEAD_MAX, Next, be32, be64, done, invalid_header, quoted, stored_name, truncated_header,
};
use crate::import::inspect::{DiskFormat, InspectError};

const QCOW2_EXT_DATA_FILE: u32 = 0x4441_5441;
const QCOW2_INCOMPAT_CORRUPT: u64 = 1 << 1;
const QCOW2_INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// dirty, corrupt, external data file, compression type, extended L2.
const QCOW2_INCOMPAT_KNOWN: u64 = 0x1f;

pub(super) fn qcow2(h: &[u8], eof: bool) -> Result<Next, InspectError> {
    if h.len() < 72 {
        return Err(truncated_header("qcow2"));
    }
    let version = be32(h, 4);
    match version {
        2 | 3 => {}
        1 => {
            return Err(InspectError::Unsupported(
                "the image is in the legacy qcow (version 1) format; convert it with \
                 `qemu-img convert -O qcow2 in.qcow out.qcow2` and import the result"
                    .to_owned(),
            ));
        }
        v => {
            return Err(InspectError::Unsupported(format!(
                "the image is qcow2 version {v}, unknown to this importer (versions 2 and 3 are \
                 supported); convert it with `qemu-img convert -O qcow2 in.qcow2 out.qcow2`"
            )));
        }
    }
    let cluster_bits = be32(h, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(invalid_header(
            "qcow2",
            &format!("cluster_bits {cluster_bits}"),
        ));
    }
    let cluster = 1usize << cluster_bits;
    let (header_len, incompat) = if version == 3 {
        if h.len() < 104 {
            return Err(truncated_header("qcow2"));
        }
        (be32(h, 100) as usize, be64(h, 72))
    } else {
        (72, 0)
    };
    if header_len < 72 || header_len > cluster || (version == 3 && header_len < 104) {
        return Err(invalid_header(
            "qcow2",
            &format!("header_length {header_len}"),
        ));
    }
    let backing_off = be64(h, 8);
    let backing_len = be32(h, 16) as usize;
    let size = be64(h, 24);
    let crypt = be32(h, 32);

    // As in QEMU, the extensions end at the first cluster's end, or at the backing file name.
    let ext_end = match usize::try_from(backing_off) {
        Ok(at) if at > 0 && at < cluster => at,
        _ => cluster,
    };
    let mut data_file = None;
    let mut complete = true;
    let mut at = header_len;
    while at + 8 <= ext_end {
        if h.len() < at + 8 {
            if eof {
                complete = false;
                break;
            }
            return Ok(Next::Head(at + 8));
        }
        let (kind, len) = (be32(h, at), be32(h, at + 4) as usize);
        if kind == 0 {
            break;
        }
        let data = at + 8;
        let end = data
            .checked_add(len)
            .filter(|&end| end <= ext_end)
            .ok_or_else(|| invalid_header("qcow2", "a header extension overruns the cluster"))?;
        if h.len() < end {
            if eof {
                complete = false;
                break;
            }
            return Ok(Next::Head(end));
        }
        if kind == QCOW2_EXT_DATA_FILE {
            data_file = Some(stored_name(&h[data..end]));
        }
        at = data + len.next_multiple_of(8);
    }

    // The name only makes the message clearer: read it if it is near the start.
    let backing = if backing_off == 0 {
        None
    } else {
        let name_end = backing_off
            .checked_add(backing_len as u64)
            .filter(|&end| (1..=1023).contains(&backing_len) && end <= HEAD_MAX as u64);
        match name_end {
            Some(end) if h.len() as u64 >= end => {
                Some(Some(stored_name(&h[backing_off as usize..end as usize])))
            }
            Some(end) if !eof => return Ok(Next::Head(end as usize)),
            _ => Some(None),
        }
    };

    if let Some(name) = backing {
        return Err(InspectError::Unsafe(format!(
            "the qcow2 image has a backing file{}; images must be self-contained: flatten it \
             with `qemu-img convert -O qcow2 in.qcow2 out.qcow2` and import the result",
            quoted(name.as_deref())
        )));
    }
    if incompat & QCOW2_INCOMPAT_DATA_FILE != 0 || data_file.is_some() {
        return Err(InspectError::Unsafe(format!(
            "the qcow2 image keeps its data in an external data file{}; images must be \
             self-contained: copy the data into the image with `qemu-img convert -O qcow2 \
             in.qcow2 out.qcow2` and import the result",
            quoted(data_file.as_deref())
        )));
    }
    if crypt != 0 {
        let method = match crypt {
            1 => "AES",
            2 => "LUKS",
            _ => "unknown method",
        };
        return Err(InspectError::Encrypted(format!(
            "the qcow2 image is encrypted ({method}) and the importer has no key; decrypt it with \
             `qemu-img convert --object secret,id=sec0,file=passphrase.txt --image-opts \
             driver=qcow2,file.filename=in.qcow2,encrypt.key-secret=sec0 -O qcow2 out.qcow2` \
             and import the result"
        )));
    }
    if incompat & QCOW2_INCOMPAT_CORRUPT != 0 {
        return Err(InspectError::Corrupt(
            "the qcow2 image is marked corrupt by QEMU; repair it with `qemu-img check -r all \
             in.qcow2` (or take a good copy) and import it again"
                .to_owned(),
        ));
    }
    if incompat & !QCOW2_INCOMPAT_KNOWN != 0 {
        return Err(InspectError::Unsupported(format!(
            "the qcow2 image uses incompatible features unknown to this importer (bits {:#x}); \
             convert it with `qemu-img convert -O qcow2 in.qcow2 out.qcow2`",
            incompat & !QCOW2_INCOMPAT_KNOWN
        )));
    }
    if !complete {
        return Err(truncated_header("qcow2"));
    }
    done(DiskFormat::Qcow2, size)
}
