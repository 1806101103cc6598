//! Each disk format, made by qemu-img or xorriso: what inspection says, and what it refuses.

use super::*;

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
