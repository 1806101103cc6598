//! Compressed images: truncated, damaged, bombs, multi-member and multi-block streams,
//! archives.

use super::*;

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
