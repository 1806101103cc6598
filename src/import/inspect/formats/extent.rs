//! What a raw disk or an ISO declares about its own length, read from its first 33 KiB: the
//! ISO 9660 volume size, a GPT's backup header (on the disk's last sector) and, for hybrid
//! ISOs, the MBR partitions that boot firmware reads past the ISO volume.
//!
//! A stream shorter than what it declares is a truncated file: QEMU would read zeros where
//! the volume or the backup partition table should be. An ISO is also bounded from above: a
//! tail far past everything it declares is either junk appended to it or a source that never
//! stops. A raw disk has no upper bound, because a disk grown with `qemu-img resize` keeps its
//! old backup GPT until the guest fixes it.

use super::{be16, be32, le16, le32, le64};

/// Where the primary volume descriptor (sector 16) starts.
const ISO_PVD_AT: usize = 0x8000;
/// The head must reach the PVD's logical block size field (both-endian u16 at 128).
pub(super) const ISO_HEAD: usize = ISO_PVD_AT + 132;
/// An ISO may go on this far past the end it declares, after rounding up to a MiB: mkisofs
/// padding and isohybrid's cylinder alignment stay well inside it.
const ISO_SLACK: u64 = 1 << 20;

/// What says how long the image must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Declarer {
    IsoVolume,
    Gpt,
}

/// The bounds the stream must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Extent {
    /// The stream must reach this length; shorter is truncated.
    pub at_least: Option<(u64, Declarer)>,
    /// An ISO may not go past this length.
    pub at_most: Option<u64>,
}

impl Extent {
    /// The bounds of a raw image (`iso` false) or an ISO, from the head of the stream.
    pub fn of(h: &[u8], iso: bool) -> Self {
        let gpt = gpt_disk_end(h);
        if !iso {
            return Self {
                at_least: gpt.map(|end| (end, Declarer::Gpt)),
                at_most: None,
            };
        }
        let volume = iso_volume_size(h);
        let at_least = match (volume, gpt) {
            (Some(volume), Some(gpt)) if gpt > volume => Some((gpt, Declarer::Gpt)),
            (Some(volume), _) => Some((volume, Declarer::IsoVolume)),
            (None, gpt) => gpt.map(|end| (end, Declarer::Gpt)),
        };
        let declared = [volume, gpt, mbr_partitions_end(h)]
            .into_iter()
            .flatten()
            .max();
        Self {
            at_least,
            at_most: declared.and_then(|end| {
                end.checked_next_multiple_of(ISO_SLACK)?
                    .checked_add(ISO_SLACK)
            }),
        }
    }
}

/// The volume space size times the logical block size, when both both-endian copies agree.
fn iso_volume_size(h: &[u8]) -> Option<u64> {
    let pvd = h.get(ISO_PVD_AT..ISO_HEAD)?;
    if pvd[0] != 1 || &pvd[1..6] != b"CD001" {
        return None;
    }
    let blocks = le32(pvd, 80);
    let block_size = le16(pvd, 128);
    let agreed = blocks == be32(pvd, 84) && block_size == be16(pvd, 130);
    (agreed && blocks > 0 && matches!(block_size, 512 | 1024 | 2048))
        .then(|| u64::from(blocks) * u64::from(block_size))
}

/// The end of the disk a GPT describes: just past its backup header. Only a header whose CRC
/// matches counts, on 512- or 4096-byte sectors.
fn gpt_disk_end(h: &[u8]) -> Option<u64> {
    [512usize, 4096].into_iter().find_map(|sector| {
        let header = h.get(sector..)?;
        if !header.starts_with(b"EFI PART") {
            return None;
        }
        let size = le32(header, 12) as usize;
        if !(92..=sector).contains(&size) || header.len() < size || le64(header, 24) != 1 {
            return None;
        }
        let mut copy = header[..size].to_vec();
        copy[16..20].fill(0);
        if crc32(&copy) != le32(header, 16) {
            return None;
        }
        let backup = le64(header, 32);
        (backup > 1)
            .then(|| backup.checked_add(1)?.checked_mul(sector as u64))
            .flatten()
    })
}

/// The furthest end of the MBR's partitions (the GPT-protective one aside), when the table
/// looks like one: boot code in a partitionless image must not pass for partitions.
fn mbr_partitions_end(h: &[u8]) -> Option<u64> {
    const TABLE: usize = 446;
    if h.get(510..512) != Some(&[0x55, 0xaa][..]) {
        return None;
    }
    let entries: Vec<&[u8]> = h[TABLE..510].chunks(16).collect();
    if entries.iter().any(|entry| !matches!(entry[0], 0x00 | 0x80)) {
        return None;
    }
    entries
        .iter()
        .filter(|entry| !matches!(entry[4], 0x00 | 0xee))
        .map(|entry| (u64::from(le32(entry, 8)) + u64::from(le32(entry, 12))) * 512)
        .max()
}

/// CRC-32 (IEEE, reflected), as GPT headers carry it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_the_ieee_one() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    fn pvd(head: &mut [u8], blocks: u32, block_size: u16) {
        let pvd = &mut head[ISO_PVD_AT..ISO_HEAD];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[80..84].copy_from_slice(&blocks.to_le_bytes());
        pvd[84..88].copy_from_slice(&blocks.to_be_bytes());
        pvd[128..130].copy_from_slice(&block_size.to_le_bytes());
        pvd[130..132].copy_from_slice(&block_size.to_be_bytes());
    }

    #[test]
    fn an_iso_must_reach_its_volume_size_and_may_go_a_little_past_it() {
        let mut head = vec![0; ISO_HEAD];
        pvd(&mut head, 184, 2048);
        assert_eq!(
            Extent::of(&head, true),
            Extent {
                at_least: Some((376_832, Declarer::IsoVolume)),
                at_most: Some(2 << 20),
            }
        );
        // Disagreeing both-endian copies declare nothing.
        head[ISO_PVD_AT + 84] ^= 1;
        assert_eq!(Extent::of(&head, true), Extent::default());
    }

    #[test]
    fn a_hybrid_iso_is_bounded_by_its_mbr_partition_past_the_volume() {
        // Like ipxe.iso: a 1,730,560-byte volume, and an MBR partition (here of 6 MiB) that
        // the file holds beyond it.
        let mut head = vec![0; ISO_HEAD];
        pvd(&mut head, 845, 2048);
        head[446] = 0x80;
        head[446 + 4] = 0x17;
        head[446 + 12..446 + 16].copy_from_slice(&12_288u32.to_le_bytes());
        head[510..512].copy_from_slice(&[0x55, 0xaa]);
        let extent = Extent::of(&head, true);
        assert_eq!(extent.at_least, Some((1_730_560, Declarer::IsoVolume)));
        assert_eq!(extent.at_most, Some(7 << 20));
        // A status byte that is no status byte: boot code, not a table.
        head[446 + 16] = 0x42;
        assert_eq!(Extent::of(&head, true).at_most, Some(3 << 20));
    }

    fn gpt(head: &mut [u8], sector: usize, backup: u64) {
        let header = &mut head[sector..sector + 92];
        header[..8].copy_from_slice(b"EFI PART");
        header[12..16].copy_from_slice(&92u32.to_le_bytes());
        header[24..32].copy_from_slice(&1u64.to_le_bytes());
        header[32..40].copy_from_slice(&backup.to_le_bytes());
        let crc = crc32(header);
        header[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn a_raw_disk_with_a_gpt_must_reach_its_backup_header_and_has_no_upper_bound() {
        for sector in [512, 4096] {
            let mut head = vec![0; 8192];
            gpt(&mut head, sector, 2047);
            assert_eq!(
                Extent::of(&head, false),
                Extent {
                    at_least: Some((2048 * sector as u64, Declarer::Gpt)),
                    at_most: None,
                }
            );
            // A header whose CRC does not match is not trusted.
            head[sector + 40] ^= 1;
            assert_eq!(Extent::of(&head, false), Extent::default());
        }
    }

    #[test]
    fn arbitrary_heads_never_overflow() {
        let mut head = vec![0xff; ISO_HEAD];
        head[510..512].copy_from_slice(&[0x55, 0xaa]);
        head[446..510].fill(0x80);
        gpt(&mut head, 512, u64::MAX);
        assert_eq!(Extent::of(&head, false), Extent::default());
        assert_eq!(Extent::of(&head[..100], true), Extent::default());
    }
}
