//! Tests on real images made by qemu-img, xorriso, gzip and xz (Debian: qemu-utils, xorriso,
//! xz-utils), compared with what `qemu-img info` says about them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::*;

/// Chunk sizes the received bytes come in; 0 stands for a random mix.
const CHUNKINGS: [usize; 5] = [1, 7, 4096, 1 << 20, 0];

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the image tools are there; says how to get them when they are not.
fn tools() -> bool {
    let missing: Vec<_> = ["qemu-img", "gzip", "xz"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if missing.is_empty() {
        return true;
    }
    eprintln!(
        "SKIPPED: {missing:?} not found; install them with `apt-get update && apt-get install -y \
         qemu-utils xorriso xz-utils gzip`"
    );
    false
}

fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Pipes `input` through `program args`.
fn filter(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{program} {args:?} failed");
    out.stdout
}

fn gzip(data: &[u8]) -> Vec<u8> {
    filter("gzip", &["-c", "-6"], data)
}

fn xz(data: &[u8]) -> Vec<u8> {
    filter("xz", &["-c", "-6", "-T1"], data)
}

struct Images {
    dir: tempfile::TempDir,
}

impl Images {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn str(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_owned()
    }

    /// `qemu-img create -f format [options] name size`, run in the image directory so that
    /// relative names (backing, data files) stay relative.
    fn create(&self, name: &str, format: &str, options: &[&str], size: &str) -> PathBuf {
        let out = Command::new("qemu-img")
            .current_dir(self.dir.path())
            .args(["create", "-q", "-f", format])
            .args(options)
            .args([name, size])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "qemu-img create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.path(name)
    }

    /// Converts the test raw disk, so that images hold data.
    fn convert(&self, name: &str, format: &str, options: &[&str]) -> PathBuf {
        let raw = self.raw();
        let mut args = vec!["convert", "-q", "-f", "raw", "-O", format];
        args.extend_from_slice(options);
        let (raw, out) = (raw.to_str().unwrap().to_owned(), self.str(name));
        args.extend([raw.as_str(), out.as_str()]);
        run("qemu-img", &args);
        self.path(name)
    }

    /// A raw disk of mixed content, not a multiple of 512 bytes.
    fn raw(&self) -> PathBuf {
        let path = self.path("disk.raw");
        if !path.exists() {
            std::fs::write(&path, disk_content(1 << 20 | 123)).unwrap();
        }
        path
    }

    fn iso(&self) -> PathBuf {
        let files = self.path("iso-root");
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(files.join("readme.txt"), b"hello from the test ISO\n").unwrap();
        std::fs::write(files.join("data.bin"), disk_content(200_000)).unwrap();
        let iso = self.str("test.iso");
        run(
            "xorriso",
            &[
                "-as",
                "mkisofs",
                "-quiet",
                "-V",
                "TESTISO",
                "-o",
                &iso,
                files.to_str().unwrap(),
            ],
        );
        self.path("test.iso")
    }
}

/// Zeros, text and noise, like a disk; compresses to about a tenth.
fn disk_content(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut block = 0u64;
    while out.len() < len {
        match block % 8 {
            0 | 3 | 5 => out.extend(std::iter::repeat_n(0, 4096)),
            7 => out.extend((0..512).flat_map(|_| rng.next().to_le_bytes())),
            _ => {
                let line = format!("block {block} of the test disk, some text to compress\n");
                out.extend(line.bytes().cycle().take(4096));
            }
        }
        block += 1;
    }
    out.truncate(len);
    out
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64: deterministic noise without a dependency.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Feeds `data` in chunks of `chunk` bytes (0: random sizes), as the pipeline does: every
/// chunk, whatever needs_more() says.
fn inspect_with(
    data: &[u8],
    chunk: usize,
    limits: InspectLimits,
) -> Result<ImageInfo, InspectError> {
    let mut inspector = Inspector::new(limits);
    let mut rng = Rng(chunk as u64 + 12345);
    let mut rest = data;
    while !rest.is_empty() {
        let size = match chunk {
            0 => match rng.next() % 4 {
                0 => 1 + (rng.next() % 16) as usize,
                1 => 1 + (rng.next() % 100_000) as usize,
                2 => 4096,
                _ => 1 << 20,
            },
            n => n,
        };
        let (now, later) = rest.split_at(size.min(rest.len()));
        inspector.update(now)?;
        rest = later;
    }
    inspector.finish()
}

fn inspect(data: &[u8], chunk: usize) -> Result<ImageInfo, InspectError> {
    inspect_with(data, chunk, InspectLimits::default())
}

/// The same answer whatever the chunking; 1-byte chunks only where that stays fast (the
/// compressed variants of the test disk, small images).
fn inspect_all(data: &[u8]) -> Result<ImageInfo, InspectError> {
    let first = inspect(data, 4096);
    for chunk in CHUNKINGS {
        if chunk == 1 && data.len() > 256 << 10 {
            continue;
        }
        assert_eq!(inspect(data, chunk), first, "chunks of {chunk} bytes");
    }
    first
}

/// The three ways an image arrives.
fn variants(plain: &[u8]) -> [(Option<Compression>, Vec<u8>); 3] {
    [
        (None, plain.to_vec()),
        (Some(Compression::Gzip), gzip(plain)),
        (Some(Compression::Xz), xz(plain)),
    ]
}

fn qemu_info(path: &Path, format: Option<&str>) -> (String, u64) {
    let mut args = vec!["info", "--output=json"];
    if let Some(format) = format {
        args.extend(["-f", format]);
    }
    args.push(path.to_str().unwrap());
    let info: serde_json::Value = serde_json::from_slice(&run("qemu-img", &args)).unwrap();
    (
        info["format"].as_str().unwrap().to_owned(),
        info["virtual-size"].as_u64().unwrap(),
    )
}

/// Checks the inspection of `path`, plain, gzip'ed and xz'ed, in every chunking, against
/// `qemu-img info` (with `qemu_format` forced when given).
fn assert_image(path: &Path, qemu_format: Option<&str>, format: DiskFormat) {
    let (qemu_name, size) = qemu_info(path, qemu_format);
    let expected_qemu_name = match format {
        DiskFormat::Vhd => "vpc",
        DiskFormat::Iso => "raw",
        other => other.as_str(),
    };
    assert_eq!(qemu_name, expected_qemu_name, "{}", path.display());
    let plain = std::fs::read(path).unwrap();
    let size = if matches!(format, DiskFormat::Raw | DiskFormat::Iso) {
        // QEMU rounds up to whole sectors; the size of raw data is its length.
        assert_eq!(size, (plain.len() as u64).next_multiple_of(512));
        plain.len() as u64
    } else {
        size
    };
    for (compression, data) in variants(&plain) {
        let info = inspect_all(&data).unwrap_or_else(|e| {
            panic!("{} ({compression:?}): {e} [{}]", path.display(), e.reason())
        });
        assert_eq!(
            info,
            ImageInfo {
                format,
                compression,
                virtual_size: size,
                cdrom: format == DiskFormat::Iso,
            },
            "{} ({compression:?})",
            path.display()
        );
    }
}

/// Checks that `path` is refused with `reason` in every variant and chunking; returns the
/// message.
fn assert_refused(path: &Path, reason: &str) -> String {
    let plain = std::fs::read(path).unwrap();
    let mut message = String::new();
    for (compression, data) in variants(&plain) {
        let err = inspect_all(&data).expect_err(&format!(
            "{} ({compression:?}) should be refused",
            path.display()
        ));
        assert_eq!(
            err.reason(),
            reason,
            "{} ({compression:?}): {err}",
            path.display()
        );
        message = err.to_string();
    }
    message
}

/// needs_more() turns false well before the end of a plain image with a header.
fn assert_stops_early(path: &Path) {
    let data = std::fs::read(path).unwrap();
    let mut inspector = Inspector::new(InspectLimits::default());
    let mut fed = 0;
    for chunk in data.chunks(4096) {
        inspector.update(chunk).unwrap();
        fed += chunk.len();
        if !inspector.needs_more() {
            break;
        }
    }
    assert!(
        !inspector.needs_more(),
        "{} read to the end",
        path.display()
    );
    assert!(fed < data.len(), "{} read to the end", path.display());
    assert!(inspector.finish().is_ok());
}

mod compression;
mod formats;

#[test]
fn inspector_moves_to_a_thread() {
    fn send<T: Send + 'static>() {}
    send::<Inspector>();
    send::<InspectError>();
}

#[test]
fn reasons_and_display() {
    assert_eq!(DiskFormat::Qcow2.to_string(), "qcow2");
    assert_eq!(DiskFormat::Vhd.to_string(), "vhd");
    assert_eq!(Compression::Gzip.to_string(), "gz");
    assert_eq!(serde_json::to_string(&Compression::Xz).unwrap(), "\"xz\"");
    assert_eq!(
        serde_json::to_string(&DiskFormat::Vhdx).unwrap(),
        "\"vhdx\""
    );
    assert_eq!(InspectLimits::default().max_unpacked_size, 1 << 40);
    assert_eq!(human_size(10 << 20), "10 MiB");
    assert_eq!(human_size(1 << 40), "1 TiB");
    assert_eq!(human_size(1536), "1.5 KiB");
    assert_eq!(human_size(700), "700 bytes");
    let err = InspectError::UnpackedSizeLimitExceeded { limit: 1 << 30 };
    assert_eq!(err.reason(), "UnpackedSizeLimitExceeded");
}

/// How fast update() takes plain and gzip'ed data. Not a test: run it by hand, optimised:
/// `cargo test --release --lib import::inspect::tests::throughput -- --ignored --nocapture`
#[test]
#[ignore = "a measurement to run by hand"]
fn throughput() {
    use std::time::Instant;
    const LEN: usize = 512 << 20;
    let data = disk_content(LEN);
    for chunk in [16 * 1024, 64 * 1024, 1 << 20] {
        let start = Instant::now();
        let info = inspect(&data, chunk).unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(info.virtual_size, LEN as u64);
        // The bytes are not read, only counted: the cost is per call.
        println!(
            "raw, {} chunks: {:.0} ns per update(), {:.0} GB/s",
            human_size(chunk as u64),
            secs * 1e9 / (LEN / chunk) as f64,
            LEN as f64 / secs / 1e9
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, packed) in [("gzip -6", gzip(&data)), ("xz -6", xz(&data[..LEN / 8]))] {
        let unpacked = if name.starts_with("xz") { LEN / 8 } else { LEN };
        let start = Instant::now();
        let info = inspect(&packed, 64 * 1024).unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(info.virtual_size, unpacked as u64);
        let tool = if name.starts_with("xz") { "xz" } else { "gzip" };
        let file = dir.path().join(tool);
        std::fs::write(&file, &packed).unwrap();
        let command = format!("{tool} -dc {} > /dev/null", file.display());
        let start = Instant::now();
        run("sh", &["-c", &command]);
        let tool_secs = start.elapsed().as_secs_f64();
        println!(
            "{name} ({} -> {}): {:.0} MB/s unpacked ({:.0} MB/s received); `{tool} -dc` \
             to /dev/null: {:.0} MB/s unpacked",
            human_size(unpacked as u64),
            human_size(packed.len() as u64),
            unpacked as f64 / secs / 1e6,
            packed.len() as f64 / secs / 1e6,
            unpacked as f64 / tool_secs / 1e6
        );
    }
}

#[test]
fn an_xz_decoder_grows_into_the_shared_memory_only_when_its_file_asks_and_the_pool_has_it() {
    if !tools() {
        return;
    }
    let plain = vec![3u8; 1 << 20];
    // A 96 MiB dictionary: more than a decoder's first 48 MiB, within the 128 MiB ceiling.
    let big_dictionary = filter("xz", &["-c", "-T1", "--lzma2=dict=96MiB,mf=hc3"], &plain);
    let pool = DecoderMemory::new(176 << 20);
    let limits = InspectLimits {
        decoder_memory: pool.clone(),
        ..InspectLimits::default()
    };
    let info = inspect_with(&big_dictionary, 64 << 10, limits).unwrap();
    assert_eq!(info.virtual_size, 1 << 20);
    assert_eq!(pool.available(), pool.total(), "returned after the import");

    // The same file while other imports hold most of the pool: tried again later.
    let small = DecoderMemory::new(60 << 20);
    let limits = InspectLimits {
        decoder_memory: small.clone(),
        ..InspectLimits::default()
    };
    let error = inspect_with(&big_dictionary, 64 << 10, limits).unwrap_err();
    assert_eq!(error.reason(), "DecoderMemoryBusy", "{error}");
    assert!(error.is_transient());
    assert_eq!(small.available(), small.total());

    // Past the ceiling: refused for good, with what to do.
    let huge_dictionary = filter("xz", &["-c", "-T1", "--lzma2=dict=192MiB,mf=hc3"], &plain);
    let error = inspect(&huge_dictionary, 64 << 10).unwrap_err();
    assert_eq!(error.reason(), "UnsupportedImage", "{error}");
    assert!(error.to_string().contains("recompress"), "{error}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_bytes_get_an_answer_not_a_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..4096), chunk in 0usize..64) {
        let _ = inspect(&data, chunk);
    }

    #[test]
    fn a_format_magic_followed_by_garbage_gets_an_answer_not_a_panic(
        magic in proptest::sample::select(vec![&b"QFI\xfb"[..], b"conectix", b"vhdxfile", b"KDMV", b"# Disk DescriptorFile", b"\x1f\x8b\x08", b"\xfd7zXZ\0"]),
        rest in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
    ) {
        let mut data = magic.to_vec();
        data.extend(rest);
        let _ = inspect(&data, 0);
    }
}
