use super::*;
use crate::dvcr::StoredLayer;
use crate::dvcr::layout::ImageManifest;

/// A layer tar as the import writes it: two headers, the file, padding and the trailer.
fn layer(file: &[u8]) -> Vec<u8> {
    let mut tar = layout::disk_headers("disk.qcow2", file.len() as u64).to_vec();
    tar.extend_from_slice(file);
    tar.extend(layout::trailer(file.len() as u64));
    tar
}

fn stored(tar: &[u8], file_size: u64) -> StoredImage {
    StoredImage {
        manifest_digest: "sha256:00".into(),
        manifest: serde_json::from_value::<ImageManifest>(serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:00", "size": 1},
            "layers": []
        }))
        .unwrap(),
        labels: Default::default(),
        layer: StoredLayer {
            digest: layout::sha256_digest(tar),
            size: tar.len() as u64,
        },
        file_name: "disk.qcow2".into(),
        file_size,
    }
}

fn labels(sha256: Option<String>, md5: Option<String>) -> ImageLabels {
    ImageLabels {
        stored_size: 0,
        virtual_size: 0,
        format: "qcow2".into(),
        sha256,
        md5,
    }
}

/// Hashes `tar` in uneven chunks, as a network stream delivers it.
fn measure(tar: &[u8], file_size: u64) -> Measured {
    let mut hasher = LayerHasher::new(file_size);
    for chunk in tar.chunks(777) {
        hasher.update(chunk);
    }
    hasher.finish()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn intact_bytes_are_verified_against_the_spec_checksums() {
    let file: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let tar = layer(&file);
    let image = stored(&tar, file.len() as u64);
    let spec = Checksum {
        sha256: Some(sha256_hex(&file).to_uppercase()),
        md5: Some(hex::encode(Md5::digest(&file))),
    };
    let expected = expected(&image, &labels(Some("ignored".into()), None), Some(&spec));
    assert_eq!(expected.sha256.as_ref().unwrap().1, Origin::Spec);
    let verdict = judge(&expected, &measure(&tar, file.len() as u64));
    assert!(verdict.is_verified(), "{verdict:?}");
    assert!(
        verdict.message().contains("sha256 of disk/disk.qcow2"),
        "{verdict:?}"
    );
    assert!(
        verdict.message().contains("md5 of disk/disk.qcow2"),
        "{verdict:?}"
    );
}

#[test]
fn without_spec_checksums_the_sha256_recorded_at_import_is_the_reference() {
    let file = b"some disk bytes".to_vec();
    let tar = layer(&file);
    let image = stored(&tar, file.len() as u64);
    let expected = expected(&image, &labels(Some(sha256_hex(&file)), None), None);
    assert_eq!(expected.sha256.as_ref().unwrap().1, Origin::Import);
    assert!(judge(&expected, &measure(&tar, file.len() as u64)).is_verified());
}

#[test]
fn a_flipped_byte_is_a_checksum_mismatch() {
    let file = vec![7u8; 3000];
    let tar = layer(&file);
    let image = stored(&tar, file.len() as u64);
    let expected = expected(&image, &labels(Some(sha256_hex(&file)), None), None);
    let mut corrupt = tar.clone();
    corrupt[layout::HEADERS_LEN as usize + 100] ^= 1;
    let verdict = judge(&expected, &measure(&corrupt, file.len() as u64));
    assert_eq!(verdict.reason(), "ChecksumMismatch");
    assert!(
        verdict.message().contains("not to its digest"),
        "{verdict:?}"
    );
    // A registry that serves a short blob.
    let short = judge(
        &expected,
        &measure(&tar[..tar.len() - 10], file.len() as u64),
    );
    assert_eq!(short.reason(), "ChecksumMismatch");
}

#[test]
fn a_file_that_differs_from_the_spec_under_a_consistent_layer_is_named() {
    // The layer is intact (its digest matches) but the spec checksum is of other bytes:
    // what the spec promised is not what is stored.
    let file = vec![1u8; 1000];
    let tar = layer(&file);
    let image = stored(&tar, file.len() as u64);
    let spec = Checksum {
        sha256: Some(sha256_hex(b"other")),
        md5: None,
    };
    let verdict = judge(
        &expected(&image, &labels(None, None), Some(&spec)),
        &measure(&tar, file.len() as u64),
    );
    assert_eq!(verdict.reason(), "ChecksumMismatch");
    assert!(
        verdict.message().starts_with("disk/disk.qcow2 has sha256"),
        "{verdict:?}"
    );
}
