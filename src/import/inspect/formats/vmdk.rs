//! VMDK, after VMware's Virtual Disk Format 1.1: sparse extents with an embedded
//! descriptor, and descriptor files.

use super::{Next, WindowKind, done, invalid_header, le32, le64, quoted, truncated_header};
use crate::import::inspect::{DiskFormat, InspectError};

/// Embedded descriptors are a few KiB; QEMU reads at most 1 MiB and so much is never needed.
const VMDK_DESCRIPTOR_MAX: u64 = 64 * 1024;

pub(super) fn vmdk_sparse(h: &[u8]) -> Result<Next, InspectError> {
    if h.len() < 80 {
        return Err(truncated_header("VMDK"));
    }
    let version = le32(h, 4);
    if !(1..=3).contains(&version) {
        return Err(InspectError::Unsupported(format!(
            "the VMDK image has sparse extent version {version}, unknown to this importer; \
             convert it with `qemu-img convert -O qcow2 in.vmdk out.qcow2`"
        )));
    }
    let capacity = le64(h, 12)
        .checked_mul(512)
        .ok_or_else(|| invalid_header("VMDK", "capacity"))?;
    let (desc_sector, desc_sectors) = (le64(h, 28), le64(h, 36));
    if desc_sector == 0 || desc_sectors == 0 {
        return Err(vmdk_split_extent());
    }
    let start = desc_sector
        .checked_mul(512)
        .ok_or_else(|| invalid_header("VMDK", "descriptor offset"))?;
    let len = desc_sectors.saturating_mul(512).min(VMDK_DESCRIPTOR_MAX) as usize;
    Ok(Next::Window {
        start,
        len,
        kind: WindowKind::VmdkDescriptor { capacity },
    })
}

fn vmdk_split_extent() -> InspectError {
    InspectError::Unsafe(
        "the VMDK file is one extent of a split disk (it has no descriptor of its own): the \
         rest of the disk lives in other files; images must be self-contained: convert the \
         whole disk with `qemu-img convert -O qcow2 disk.vmdk out.qcow2` (pointing at its \
         descriptor file) and import the result"
            .to_owned(),
    )
}

pub(super) fn vmdk_embedded_descriptor(data: &[u8], capacity: u64) -> Result<Next, InspectError> {
    let text = descriptor_text(data);
    if text.trim().is_empty() {
        return Err(vmdk_split_extent());
    }
    let desc = Descriptor::parse(&text);
    if let Some(err) = desc.parent_error() {
        return Err(err);
    }
    match desc.extents.as_slice() {
        [] => Err(InspectError::Corrupt(
            "the VMDK image's embedded descriptor lists no extent: the file is damaged; check \
             the source file"
                .to_owned(),
        )),
        [only] if only.kind == "SPARSE" => done(DiskFormat::Vmdk, capacity),
        _ => Err(InspectError::Unsafe(format!(
            "the VMDK image's descriptor references other extent files{}: the disk data lives \
             in other files; images must be self-contained: convert the disk with `qemu-img \
             convert -O qcow2 disk.vmdk out.qcow2` and import the result",
            desc.extent_list()
        ))),
    }
}

/// A plain-text descriptor, as QEMU probes it: "# Disk DescriptorFile", or a first
/// non-comment line "version=N".
pub(super) fn is_vmdk_descriptor(h: &[u8]) -> bool {
    let start = &h[..h.len().min(1024)];
    let start = start.strip_prefix(b"\xef\xbb\xbf").unwrap_or(start);
    let from = start
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(start.len());
    if start[from..].starts_with(b"# Disk DescriptorFile") {
        return true;
    }
    start
        .split(|&c| c == b'\n')
        .map(|line| line.trim_ascii())
        .find(|line| !line.is_empty() && !line.starts_with(b"#"))
        .is_some_and(|line| matches!(line, b"version=1" | b"version=2" | b"version=3"))
}

/// Descriptor files are small: this much names their extents.
const VMDK_DESCRIPTOR_FILE_PROBE: usize = 4096;

pub(super) fn vmdk_descriptor_file(h: &[u8], eof: bool) -> Result<Next, InspectError> {
    if h.len() < VMDK_DESCRIPTOR_FILE_PROBE && !eof {
        return Ok(Next::Head(VMDK_DESCRIPTOR_FILE_PROBE));
    }
    let desc = Descriptor::parse(&descriptor_text(h));
    Err(InspectError::Unsafe(format!(
        "the image is a VMDK descriptor file: the disk data lives in other files{}; images \
         must be self-contained: convert the disk with `qemu-img convert -O qcow2 disk.vmdk \
         out.qcow2` (next to its extent files) and import the result; single-file VMDKs \
         (monolithicSparse, streamOptimized) are accepted",
        desc.extent_list()
    )))
}

fn descriptor_text(data: &[u8]) -> String {
    let end = data.iter().position(|&c| c == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

#[derive(Debug, Default)]
struct Descriptor {
    parent_cid: Option<String>,
    parent_hint: Option<String>,
    extents: Vec<Extent>,
}

#[derive(Debug)]
struct Extent {
    /// SPARSE, FLAT, ZERO, VMFS…, upper case.
    kind: String,
    file: Option<String>,
}

impl Descriptor {
    fn parse(text: &str) -> Self {
        let mut desc = Self::default();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            if matches!(words.next(), Some("RW" | "RDONLY" | "NOACCESS")) {
                let kind = words.nth(1).unwrap_or_default().to_ascii_uppercase();
                let file = line
                    .split_once('"')
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(name, _)| name.chars().take(200).collect());
                desc.extents.push(Extent { kind, file });
            } else if let Some((key, value)) = line.split_once('=') {
                let value = value.trim().trim_matches('"').to_owned();
                match key.trim() {
                    "parentCID" => desc.parent_cid = Some(value),
                    "parentFileNameHint" => desc.parent_hint = Some(value),
                    _ => {}
                }
            }
        }
        desc
    }

    fn parent_error(&self) -> Option<InspectError> {
        let has_parent = self
            .parent_cid
            .as_deref()
            .is_some_and(|cid| !cid.eq_ignore_ascii_case("ffffffff"))
            || self.parent_hint.is_some();
        has_parent.then(|| {
            InspectError::Unsafe(format!(
                "the VMDK image is a delta disk (snapshot) that needs its parent disk{}; images \
                 must be self-contained: flatten it with `qemu-img convert -O qcow2 in.vmdk \
                 out.qcow2` and import the result",
                quoted(self.parent_hint.as_deref())
            ))
        })
    }

    /// ` ("a.vmdk", "b.vmdk")`, or nothing when no extent names a file.
    fn extent_list(&self) -> String {
        let names: Vec<String> = self
            .extents
            .iter()
            .filter_map(|e| e.file.as_ref())
            .map(|name| format!("{name:?}"))
            .collect();
        match names.len() {
            0 => String::new(),
            1..=3 => format!(" ({})", names.join(", ")),
            n => format!(" ({} and {} more)", names[..3].join(", "), n - 3),
        }
    }
}
