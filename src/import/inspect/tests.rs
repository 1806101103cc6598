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

#[test]
fn qcow2_v3_and_v2() {
    if !tools() {
        return;
    }
    let images = Images::new();
    for (name, compat) in [("v3.qcow2", "compat=1.1"), ("v2.qcow2", "compat=0.10")] {
        let path = images.convert(name, "qcow2", &["-o", compat]);
        assert_image(&path, None, DiskFormat::Qcow2);
        assert_stops_early(&path);
    }
    let empty = images.create("big.qcow2", "qcow2", &[], "100G");
    assert_image(&empty, None, DiskFormat::Qcow2);
    let small_clusters = images.create("c512.qcow2", "qcow2", &["-o", "cluster_size=512"], "1G");
    assert_image(&small_clusters, None, DiskFormat::Qcow2);
}

#[test]
fn qcow2_with_backing_file_is_refused() {
    if !tools() {
        return;
    }
    let images = Images::new();
    images.create("base.qcow2", "qcow2", &[], "64M");
    let child = images.create(
        "child.qcow2",
        "qcow2",
        &["-b", "base.qcow2", "-F", "qcow2"],
        "64M",
    );
    let message = assert_refused(&child, "UnsafeImage");
    assert!(
        message.contains("backing file (\"base.qcow2\")"),
        "{message}"
    );
    assert!(message.contains("qemu-img convert"), "{message}");
}

#[test]
fn qcow2_with_external_data_file_is_refused() {
    if !tools() {
        return;
    }
    let images = Images::new();
    let path = images.create("d.qcow2", "qcow2", &["-o", "data_file=d.data"], "16M");
    let message = assert_refused(&path, "UnsafeImage");
    assert!(
        message.contains("external data file (\"d.data\")"),
        "{message}"
    );
}

#[test]
fn encrypted_qcow2_is_refused() {
    if !tools() {
        return;
    }
    let images = Images::new();
    let secret = ["--object", "secret,id=sec0,data=passphrase"];
    for (name, options) in [
        (
            "aes-v2.qcow2",
            "compat=0.10,encrypt.format=aes,encrypt.key-secret=sec0",
        ),
        ("aes-v3.qcow2", "encrypt.format=aes,encrypt.key-secret=sec0"),
        (
            "luks.qcow2",
            "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        ),
    ] {
        let out = Command::new("qemu-img")
            .current_dir(images.dir.path())
            .args(["create", "-q", "-f", "qcow2"])
            .args(secret)
            .args(["-o", options, name, "16M"])
            .output()
            .unwrap();
        if !out.status.success() {
            // LUKS benchmarks its key derivation with CPU-time clocks some sandboxes lack.
            assert_eq!(
                name,
                "luks.qcow2",
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!(
                "note: no LUKS qcow2 here ({}); AES ones cover crypt_method",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            continue;
        }
        let message = assert_refused(&images.path(name), "EncryptedImage");
        assert!(message.contains("encrypted"), "{message}");
    }
}

#[test]
fn qcow2_marked_corrupt_or_with_unknown_features_is_refused() {
    if !tools() {
        return;
    }
    let images = Images::new();
    let path = images.create("q.qcow2", "qcow2", &[], "16M");
    let original = std::fs::read(&path).unwrap();
    // incompatible_features (u64 BE at 72): bit 1 is "corrupt", bit 40 is unknown.
    let mut corrupt = original.clone();
    corrupt[79] |= 2;
    let err = inspect(&corrupt, 4096).unwrap_err();
    assert_eq!(err.reason(), "CorruptImage", "{err}");
    assert!(err.to_string().contains("qemu-img check -r all"), "{err}");
    let mut unknown = original;
    unknown[74] |= 1;
    let err = inspect(&unknown, 4096).unwrap_err();
    assert_eq!(err.reason(), "UnsupportedImage", "{err}");
}

#[test]
fn truncated_qcow2_header_is_corrupt() {
    if !tools() {
        return;
    }
    let images = Images::new();
    let path = images.create("q.qcow2", "qcow2", &[], "16M");
    let data = std::fs::read(&path).unwrap();
    for len in [4, 50, 100, 300] {
        for (_, variant) in variants(&data[..len]) {
            let err = inspect(&variant, 7).unwrap_err();
            assert_eq!(err.reason(), "CorruptImage", "{len} bytes: {err}");
        }
    }
}

#[test]
fn vmdk_single_file_subformats() {
    if !tools() {
        return;
    }
    let images = Images::new();
    for subformat in ["monolithicSparse", "streamOptimized"] {
        let path = images.convert(
            &format!("{subformat}.vmdk"),
            "vmdk",
            &["-o", &format!("subformat={subformat}")],
        );
        assert_image(&path, None, DiskFormat::Vmdk);
        assert_stops_early(&path);
    }
}

#[test]
fn vmdk_with_other_files_is_refused() {
    if !tools() {
        return;
    }
    let images = Images::new();
    let split = images.create(
        "split.vmdk",
        "vmdk",
        &["-o", "subformat=twoGbMaxExtentSparse"],
        "64M",
    );
    let message = assert_refused(&split, "UnsafeImage");
    assert!(message.contains("\"split-s001.vmdk\""), "{message}");
    // One extent of the split disk on its own.
    let message = assert_refused(&images.path("split-s001.vmdk"), "UnsafeImage");
    assert!(message.contains("split disk"), "{message}");

    let flat = images.create(
        "flat.vmdk",
        "vmdk",
        &["-o", "subformat=monolithicFlat"],
        "8M",
    );
    let message = assert_refused(&flat, "UnsafeImage");
    assert!(message.contains("\"flat-flat.vmdk\""), "{message}");
}

#[test]
fn vmdk_delta_disk_is_refused() {
    if !tools() {
        return;
    }
    let images = Images::new();
    images.create("parent.vmdk", "vmdk", &[], "16M");
    let child = images.create(
        "child.vmdk",
        "vmdk",
        &["-b", "parent.vmdk", "-F", "vmdk"],
        "16M",
    );
    let message = assert_refused(&child, "UnsafeImage");
    assert!(message.contains("parent"), "{message}");
}

#[test]
fn vdi_dynamic_and_static() {
    if !tools() {
        return;
    }
    let images = Images::new();
    let dynamic = images.convert("dynamic.vdi", "vdi", &[]);
    assert_image(&dynamic, None, DiskFormat::Vdi);
    assert_stops_early(&dynamic);
    let fixed = images.convert("static.vdi", "vdi", &["-o", "static=on"]);
    assert_image(&fixed, None, DiskFormat::Vdi);
    assert_stops_early(&fixed);
}

#[test]
fn vhd_dynamic_and_fixed() {
    if !tools() {
        return;
    }
    let images = Images::new();
    let dynamic = images.convert("dynamic.vhd", "vpc", &[]);
    assert_image(&dynamic, None, DiskFormat::Vhd);
    assert_stops_early(&dynamic);
    // QEMU probes a fixed VHD as raw (its footer is only at the end): force the driver.
    let fixed = images.convert("fixed.vhd", "vpc", &["-o", "subformat=fixed"]);
    assert_image(&fixed, Some("vpc"), DiskFormat::Vhd);
    let hyperv = images.convert(
        "hyperv.vhd",
        "vpc",
        &["-o", "subformat=fixed,force_size=on"],
    );
    assert_image(&hyperv, Some("vpc"), DiskFormat::Vhd);
}

#[test]
fn vhdx() {
    if !tools() {
        return;
    }
    let images = Images::new();
    let path = images.convert("disk.vhdx", "vhdx", &[]);
    assert_image(&path, None, DiskFormat::Vhdx);
    assert_stops_early(&path);
    let big = images.create("big.vhdx", "vhdx", &[], "20G");
    assert_image(&big, None, DiskFormat::Vhdx);
}

#[test]
fn raw_of_any_length() {
    if !tools() {
        return;
    }
    let images = Images::new();
    assert_image(&images.raw(), None, DiskFormat::Raw);
    // Shorter than the ISO probe, shorter than a sector, one byte.
    for len in [40_000, 20_000, 300, 1] {
        let path = images.path(&format!("short{len}.raw"));
        std::fs::write(&path, disk_content(len + 4096).split_off(4096)).unwrap();
        assert_image(&path, None, DiskFormat::Raw);
    }
    let zeros = images.path("zeros.raw");
    std::fs::write(&zeros, vec![0; 100_000]).unwrap();
    assert_image(&zeros, None, DiskFormat::Raw);
}

#[test]
fn empty_stream_is_refused() {
    let err = Inspector::new(InspectLimits::default())
        .finish()
        .unwrap_err();
    assert_eq!(err.reason(), "CorruptImage");
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn iso_images() {
    if !tools() {
        return;
    }
    let images = Images::new();
    if have("xorriso") {
        assert_image(&images.iso(), None, DiskFormat::Iso);
    } else {
        eprintln!("note: xorriso not found; ISO made by it not tested");
    }
    // A real bootable (hybrid) ISO too, when a package ships one; the smallest is enough.
    let packaged = [
        "/usr/lib/ipxe/ipxe.iso",
        "/usr/lib/grub-rescue/grub-rescue-cdrom.iso",
    ];
    if let Some(path) = packaged.iter().map(Path::new).find(|p| p.exists()) {
        assert_image(path, None, DiskFormat::Iso);
    }
}

/// The refusal of `data` in every variant and chunking, with `reason`; returns the message.
fn refused_bytes(data: &[u8], reason: &str, what: &str) -> String {
    let mut message = String::new();
    for (compression, data) in variants(data) {
        let err = inspect_all(&data).expect_err(&format!("{what} ({compression:?}) is refused"));
        assert_eq!(err.reason(), reason, "{what} ({compression:?}): {err}");
        message = err.to_string();
    }
    message
}

#[test]
fn an_iso_short_of_its_volume_or_far_past_it_is_refused_as_is_a_raw_disk_short_of_its_gpt() {
    if !tools() || !have("xorriso") || !have("sfdisk") {
        eprintln!("SKIPPED: xorriso or sfdisk (fdisk) missing");
        return;
    }
    let images = Images::new();
    let iso = std::fs::read(images.iso()).unwrap();
    let message = refused_bytes(&iso[..iso.len() - 2048], "CorruptImage", "a cut ISO");
    assert!(
        message.contains("ends after") && message.contains("its volume descriptor declares"),
        "{message}"
    );
    let mut appended = iso.clone();
    appended.extend(disk_content(3 << 20));
    let message = refused_bytes(&appended, "CorruptImage", "an ISO with 3 MiB appended");
    assert!(message.contains("goes on past 2 MiB"), "{message}");
    // Padding to the next MiB, as isohybrid does, is an ISO still.
    let mut padded = iso.clone();
    padded.resize(1 << 20, 0);
    assert_eq!(inspect_all(&padded).unwrap().format, DiskFormat::Iso);

    let disk = images.path("gpt.raw");
    std::fs::write(&disk, disk_content(4 << 20)).unwrap();
    filter(
        "sfdisk",
        &[
            "--quiet",
            "--no-reread",
            "--no-tell-kernel",
            disk.to_str().unwrap(),
        ],
        b"label: gpt\n,,L\n",
    );
    assert_image(&disk, None, DiskFormat::Raw);
    let gpt = std::fs::read(&disk).unwrap();
    let message = refused_bytes(&gpt[..gpt.len() - 512], "CorruptImage", "a cut GPT disk");
    assert!(
        message.contains("puts the end of the disk at 4194304 bytes")
            && message.contains("truncated"),
        "{message}"
    );
    // Grown without moving its backup header, as `qemu-img resize` leaves it: still a disk.
    let mut grown = gpt.clone();
    grown.resize(5 << 20, 0);
    assert_eq!(inspect_all(&grown).unwrap().virtual_size, 5 << 20);
}

#[test]
fn truncated_compressed_raw_is_corrupt() {
    if !tools() {
        return;
    }
    let images = Images::new();
    let raw = std::fs::read(images.raw()).unwrap();
    for (compression, data) in variants(&raw).into_iter().skip(1) {
        for cut in [data.len() / 2, data.len() - 1, 20] {
            for chunk in [7, 4096, 0] {
                let mut inspector = Inspector::new(InspectLimits::default());
                for piece in data[..cut].chunks(chunk.max(1)) {
                    inspector.update(piece).unwrap();
                }
                let err = inspector.finish().unwrap_err();
                assert_eq!(err.reason(), "CorruptImage", "{compression:?} cut at {cut}");
                assert!(err.to_string().contains("ended early"), "{err}");
            }
        }
    }
}

#[test]
fn damaged_compressed_raw_is_corrupt() {
    if !tools() {
        return;
    }
    let images = Images::new();
    let raw = std::fs::read(images.raw()).unwrap();
    for (compression, mut data) in variants(&raw).into_iter().skip(1) {
        let middle = data.len() / 2;
        for byte in &mut data[middle..middle + 64] {
            *byte ^= 0x5a;
        }
        let err = inspect(&data, 4096).unwrap_err();
        assert_eq!(err.reason(), "CorruptImage", "{compression:?}: {err}");
    }
}

#[test]
fn decompression_bombs_are_stopped() {
    if !tools() {
        return;
    }
    let limits = InspectLimits {
        max_unpacked_size: 10 << 20,
        ..InspectLimits::default()
    };
    let gz = run("sh", &["-c", "head -c 200M /dev/zero | gzip -c"]);
    let xz = run("sh", &["-c", "head -c 50M /dev/zero | xz -c -1 -T1"]);
    for data in [gz, xz] {
        let mut inspector = Inspector::new(limits.clone());
        let err = data
            .chunks(64 * 1024)
            .find_map(|chunk| inspector.update(chunk).err())
            .expect("the bomb is stopped while it is fed");
        assert_eq!(err.reason(), "UnpackedSizeLimitExceeded");
        assert!(err.to_string().contains("10 MiB"), "{err}");
        assert!(!inspector.needs_more());
        assert_eq!(inspector.finish().unwrap_err().reason(), err.reason());
    }
    // A plain image counts too, and exactly at the limit is fine.
    let exact = vec![7u8; 10 << 20];
    assert_eq!(
        inspect_with(&exact, 1 << 20, limits.clone())
            .unwrap()
            .virtual_size,
        10 << 20
    );
    let over = vec![7u8; (10 << 20) + 1];
    assert_eq!(
        inspect_with(&over, 1 << 20, limits).unwrap_err().reason(),
        "UnpackedSizeLimitExceeded"
    );
}

#[test]
fn multi_member_gzip_and_padding() {
    if !tools() {
        return;
    }
    let first = disk_content(300_000);
    let second = disk_content(500_001);
    let mut data = gzip(&first);
    data.extend(gzip(&second));
    let expected = ImageInfo {
        format: DiskFormat::Raw,
        compression: Some(Compression::Gzip),
        virtual_size: 800_001,
        cdrom: false,
    };
    assert_eq!(inspect_all(&data).unwrap(), expected);
    // Zero padding after the last member, as block devices and tape tools leave.
    data.extend([0; 1000]);
    assert_eq!(inspect_all(&data).unwrap(), expected);
    data.extend(b"junk");
    assert_eq!(inspect(&data, 4096).unwrap_err().reason(), "CorruptImage");
    // Concatenated xz streams.
    let mut data = xz(&first);
    data.extend(xz(&second));
    assert_eq!(
        inspect_all(&data).unwrap(),
        ImageInfo {
            compression: Some(Compression::Xz),
            ..expected
        }
    );
}

#[test]
fn multi_block_xz_from_parallel_xz_decodes_in_threads_and_keeps_padding_rules() {
    if !tools() {
        return;
    }
    let plain = disk_content(3_000_000);
    // `xz -T2` with small blocks: the blocks decode in parallel.
    let mut data = filter("xz", &["-c", "-1", "-T2", "--block-size=262144"], &plain);
    let expected = ImageInfo {
        format: DiskFormat::Raw,
        compression: Some(Compression::Xz),
        virtual_size: 3_000_000,
        cdrom: false,
    };
    assert_eq!(inspect_all(&data).unwrap(), expected);
    // Stream padding (a multiple of four zero bytes) and a second stream.
    data.extend([0; 8]);
    data.extend(xz(&plain[..1000]));
    let two_streams = inspect_all(&data).unwrap();
    assert_eq!(two_streams.virtual_size, 3_001_000);
    // Padding that is not a multiple of four is damage.
    let mut bad = filter("xz", &["-c", "-1"], &plain[..1000]);
    bad.extend([0; 3]);
    assert_eq!(inspect(&bad, 4096).unwrap_err().reason(), "CorruptImage");
}

#[test]
fn a_compressed_image_is_unpacked_to_its_end_after_the_header_told_its_size() {
    if !tools() {
        return;
    }
    let images = Images::new();
    let path = images.convert("d.qcow2", "qcow2", &[]);
    let plain = std::fs::read(&path).unwrap();
    for (compression, data) in variants(&plain).into_iter().skip(1) {
        let (head, rest) = data.split_at(data.len() / 2);
        // Garbage after the header: the old importer stored this Ready.
        let mut inspector = Inspector::new(InspectLimits::default());
        inspector.update(head).unwrap();
        assert!(inspector.needs_more(), "{compression:?}");
        let garbage = vec![0x55; rest.len()];
        let refused = inspector
            .update(&garbage)
            .and_then(|()| inspector.finish().map(|_| ()))
            .unwrap_err();
        assert_eq!(
            refused.reason(),
            "CorruptImage",
            "{compression:?}: {refused}"
        );
        // Cut short, as `head -c` of a real file: refused at the end.
        let mut inspector = Inspector::new(InspectLimits::default());
        inspector.update(head).unwrap();
        let cut = inspector.finish().unwrap_err();
        assert_eq!(cut.reason(), "CorruptImage", "{compression:?}: {cut}");
        assert!(cut.to_string().contains("ended early"), "{cut}");
        // The whole stream: the same answer as for the plain file.
        assert_eq!(inspect(&data, 4096).unwrap().format, DiskFormat::Qcow2);
    }
}

#[test]
fn archives_and_double_compression_are_refused() {
    if !tools() {
        return;
    }
    let images = Images::new();
    let raw = std::fs::read(images.raw()).unwrap();
    let twice = gzip(&xz(&raw));
    let err = inspect(&twice, 4096).unwrap_err();
    assert_eq!(err.reason(), "UnsupportedImage");
    assert!(err.to_string().contains("compressed twice"), "{err}");

    let tar = run(
        "tar",
        &[
            "-C",
            images.dir.path().to_str().unwrap(),
            "-cf",
            "-",
            "disk.raw",
        ],
    );
    for (_, data) in variants(&tar) {
        let err = inspect(&data, 4096).unwrap_err();
        assert_eq!(err.reason(), "UnsupportedImage");
        assert!(err.to_string().contains("tar archive"), "{err}");
    }
}

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
