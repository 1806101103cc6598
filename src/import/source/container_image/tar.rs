//! The streaming tar reader: entries and their data from a layer, 512-byte block by block,
//! with GNU long names and PAX headers; nothing buffered beyond one chunk.

use bytes::{Buf, Bytes};
use futures::StreamExt as _;

use super::layer::{LayerFailure, LayerReader, LayerResult};

/// The largest PAX header or GNU long name accepted; real ones are a few hundred bytes.
const MAX_META_ENTRY: u64 = 1 << 20;
const BLOCK: usize = 512;
const DISK_DIR: &str = "disk/";

/// The kind of a tar entry, as far as the disk search cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EntryKind {
    Regular,
    Directory,
    HardLink,
    SymLink,
    Device,
    Fifo,
    Sparse,
    Other(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TarEntry {
    /// Normalised: no leading `./` or `/`, no trailing `/`.
    pub(super) path: String,
    pub(super) kind: EntryKind,
    pub(super) size: u64,
    /// PAX `GNU.sparse.*` records: the data is not the file's bytes.
    pub(super) pax_sparse: bool,
}

/// What a PAX extended header says about the next entry.
#[derive(Debug, Default, PartialEq, Eq)]
struct Pax {
    pub(super) path: Option<String>,
    pub(super) size: Option<u64>,
    sparse: bool,
}

/// A streaming tar parser over one layer.
pub(super) struct TarReader {
    pub(super) layer: LayerReader,
    /// Uncompressed bytes not yet parsed.
    buf: Bytes,
    /// Data bytes of the current entry not yet read.
    data_left: u64,
    /// Padding after the current entry's data.
    pad_left: u64,
    /// The end-of-archive blocks were seen (or the layer ended).
    ended: bool,
}

impl TarReader {
    pub(super) fn new(layer: LayerReader) -> Self {
        Self {
            layer,
            buf: Bytes::new(),
            data_left: 0,
            pad_left: 0,
            ended: false,
        }
    }

    /// Makes `buf` non-empty; false at the end of the layer.
    async fn fill(&mut self) -> LayerResult<bool> {
        while self.buf.is_empty() {
            match self.layer.next().await? {
                Some(chunk) => self.buf = chunk,
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    async fn skip(&mut self, mut count: u64) -> LayerResult<()> {
        while count > 0 {
            if !self.fill().await? {
                return Err(LayerFailure::Corrupt(
                    "the archive ends inside an entry".to_string(),
                ));
            }
            let take = count.min(self.buf.len() as u64);
            // In range: `take` ≤ buf.len().
            self.buf.advance(take as usize);
            count -= take;
        }
        Ok(())
    }

    /// One 512-byte block; `None` at a clean end of the layer.
    async fn read_block(&mut self) -> LayerResult<Option<[u8; BLOCK]>> {
        let mut block = [0u8; BLOCK];
        let mut got = 0;
        while got < BLOCK {
            if !self.fill().await? {
                if got == 0 {
                    return Ok(None);
                }
                return Err(LayerFailure::Corrupt(
                    "the archive ends inside a header".to_string(),
                ));
            }
            let take = (BLOCK - got).min(self.buf.len());
            block[got..got + take].copy_from_slice(&self.buf[..take]);
            self.buf.advance(take);
            got += take;
        }
        Ok(Some(block))
    }

    /// The data of a metadata entry (PAX header, GNU long name), with its padding.
    async fn read_meta(&mut self, size: u64) -> LayerResult<Vec<u8>> {
        if size > MAX_META_ENTRY {
            return Err(LayerFailure::Corrupt(format!(
                "a tar metadata entry of {size} bytes"
            )));
        }
        // In range: checked against MAX_META_ENTRY.
        let mut data = Vec::with_capacity(size as usize);
        let mut left = size;
        while left > 0 {
            if !self.fill().await? {
                return Err(LayerFailure::Corrupt(
                    "the archive ends inside an entry".to_string(),
                ));
            }
            let take = left.min(self.buf.len() as u64) as usize;
            data.extend_from_slice(&self.buf[..take]);
            self.buf.advance(take);
            left -= take as u64;
        }
        self.skip(padding(size)).await?;
        Ok(data)
    }

    /// The next entry's header, skipping whatever is left of the current entry's data.
    /// `None` at the end of the archive.
    pub(super) async fn next_entry(&mut self) -> LayerResult<Option<TarEntry>> {
        if self.ended {
            return Ok(None);
        }
        let left = self.data_left + self.pad_left;
        self.data_left = 0;
        self.pad_left = 0;
        self.skip(left).await?;
        let mut pax = Pax::default();
        let mut long_name: Option<String> = None;
        loop {
            let Some(block) = self.read_block().await? else {
                // Some writers omit the end-of-archive blocks.
                self.ended = true;
                return Ok(None);
            };
            if block.iter().all(|&b| b == 0) {
                self.ended = true;
                return Ok(None);
            }
            if !checksum_ok(&block) {
                return Err(LayerFailure::Corrupt(
                    "a tar header has a wrong checksum".to_string(),
                ));
            }
            let header_size = parse_numeric(&block[124..136]).ok_or_else(|| {
                LayerFailure::Corrupt("a tar header has an invalid size".to_string())
            })?;
            let typeflag = block[156];
            match typeflag {
                b'x' => {
                    let data = self.read_meta(header_size).await?;
                    pax = parse_pax(&data);
                    continue;
                }
                b'L' => {
                    let data = self.read_meta(header_size).await?;
                    long_name = Some(c_string(&data));
                    continue;
                }
                // Global PAX headers and GNU long link names do not matter here.
                b'g' | b'K' => {
                    self.read_meta(header_size).await?;
                    continue;
                }
                _ => {}
            }
            let raw_path = pax
                .path
                .take()
                .or(long_name.take())
                .unwrap_or_else(|| header_name(&block));
            let size = pax.size.unwrap_or(header_size);
            let kind = match typeflag {
                b'0' | 0 | b'7' => EntryKind::Regular,
                b'1' => EntryKind::HardLink,
                b'2' => EntryKind::SymLink,
                b'3' | b'4' => EntryKind::Device,
                b'5' => EntryKind::Directory,
                b'6' => EntryKind::Fifo,
                b'S' => EntryKind::Sparse,
                other => EntryKind::Other(other),
            };
            // Old tars mark directories with a trailing slash only.
            let kind = if kind == EntryKind::Regular && raw_path.ends_with('/') {
                EntryKind::Directory
            } else {
                kind
            };
            self.data_left = size;
            self.pad_left = padding(size);
            return Ok(Some(TarEntry {
                path: normalize_path(&raw_path),
                kind,
                size,
                pax_sparse: pax.sparse,
            }));
        }
    }

    /// The next bytes of the current entry's data; `None` after its last byte.
    pub(super) async fn read_data(&mut self) -> LayerResult<Option<Bytes>> {
        if self.data_left == 0 {
            let pad = std::mem::take(&mut self.pad_left);
            self.skip(pad).await?;
            return Ok(None);
        }
        if !self.fill().await? {
            return Err(LayerFailure::Corrupt(
                "the archive ends inside the disk file".to_string(),
            ));
        }
        let take = self.data_left.min(self.buf.len() as u64);
        // In range: `take` ≤ buf.len().
        let chunk = self.buf.split_to(take as usize);
        self.data_left -= take;
        Ok(Some(chunk))
    }

    /// Reads the layer to its end, so the blob's digest is checked.
    pub(super) async fn drain(&mut self) -> LayerResult<()> {
        self.buf = Bytes::new();
        while self.layer.next().await?.is_some() {}
        Ok(())
    }
}

/// For the fuzz targets (`fuzz/`): the streaming tar reader over `data` (a layer, plain or
/// gzip, in chunks of `chunk` bytes), entry by entry to its end or its first error, checking
/// that no entry hands out more data than its header declared.
#[doc(hidden)]
pub fn fuzz_tar(data: &[u8], chunk: usize) {
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let mut tar = TarReader::new(LayerReader::new(futures::stream::iter(chunks).boxed()));
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    runtime.block_on(async {
        while let Ok(Some(entry)) = tar.next_entry().await {
            let mut read = 0u64;
            loop {
                match tar.read_data().await {
                    Ok(Some(bytes)) => read += bytes.len() as u64,
                    Ok(None) => break,
                    Err(_) => return,
                }
                assert!(read <= entry.size, "more data than declared: {entry:?}");
            }
        }
    });
}

/// What an entry means for the disk search.
pub(super) enum DiskEntry<'a> {
    Ignored,
    /// The disk file; its name under `disk/`.
    File(&'a str),
    /// Under `disk/` but not a plain file: what it is.
    NotRegular(&'static str),
}

pub(super) fn classify(entry: &TarEntry) -> DiskEntry<'_> {
    let Some(name) = entry.path.strip_prefix(DISK_DIR) else {
        return DiskEntry::Ignored;
    };
    let base = name.rsplit('/').next().unwrap_or(name);
    if name.is_empty() || base.starts_with(".wh.") {
        return DiskEntry::Ignored;
    }
    match entry.kind {
        EntryKind::Directory => DiskEntry::Ignored,
        EntryKind::Regular if entry.pax_sparse => DiskEntry::NotRegular("a sparse file"),
        EntryKind::Regular => DiskEntry::File(base),
        EntryKind::HardLink => DiskEntry::NotRegular("a hard link"),
        EntryKind::SymLink => DiskEntry::NotRegular("a symbolic link"),
        EntryKind::Device => DiskEntry::NotRegular("a device node"),
        EntryKind::Fifo => DiskEntry::NotRegular("a named pipe"),
        EntryKind::Sparse => DiskEntry::NotRegular("a sparse file"),
        EntryKind::Other(_) => DiskEntry::NotRegular("an unsupported kind of tar entry"),
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// A NUL-terminated field as text.
fn c_string(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// The name of a header: ustar's prefix joined with the name (GNU headers use the prefix
/// field for other things).
fn header_name(block: &[u8; BLOCK]) -> String {
    let name = c_string(&block[0..100]);
    if &block[257..263] == b"ustar\0" {
        let prefix = c_string(&block[345..500]);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

/// `./disk/x`, `/disk/x`, `disk//x/` → `disk/x`.
pub(super) fn normalize_path(raw: &str) -> String {
    raw.split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// An octal field (NUL or space terminated), or GNU base-256 for big values.
pub(super) fn parse_numeric(field: &[u8]) -> Option<u64> {
    if let Some(&first) = field.first()
        && first & 0x80 != 0
    {
        // Negative base-256 values make no sense for sizes.
        if first & 0x40 != 0 {
            return None;
        }
        let mut value: u64 = u64::from(first & 0x3f);
        for &byte in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(byte))?;
        }
        return Some(value);
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// The header checksum: the sum of all bytes with the checksum field as spaces (unsigned, or
/// signed as some old tars computed it).
fn checksum_ok(block: &[u8; BLOCK]) -> bool {
    let Some(stored) = parse_numeric(&block[148..156]) else {
        return false;
    };
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &byte) in block.iter().enumerate() {
        let byte = if (148..156).contains(&i) { b' ' } else { byte };
        unsigned += u64::from(byte);
        signed += i64::from(byte as i8);
    }
    stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed)
}

/// The records of a PAX extended header that matter: `path`, `size`, `GNU.sparse.*`.
fn parse_pax(data: &[u8]) -> Pax {
    let mut pax = Pax::default();
    let mut rest = data;
    while !rest.is_empty() {
        let Some(space) = rest.iter().position(|&b| b == b' ') else {
            break;
        };
        let Some(len) = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|t| t.parse::<usize>().ok())
        else {
            break;
        };
        if len <= space + 1 || len > rest.len() {
            break;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            let key = &record[..eq];
            let value = String::from_utf8_lossy(&record[eq + 1..]).into_owned();
            match key {
                b"path" => pax.path = Some(value),
                b"size" => pax.size = value.trim().parse().ok(),
                key if key.starts_with(b"GNU.sparse.") => pax.sparse = true,
                _ => {}
            }
        }
        rest = &rest[len..];
    }
    pax
}
