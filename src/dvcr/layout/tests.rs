use super::*;
use std::io::Read;

fn layer_bytes(file_name: &str, content: &[u8]) -> Vec<u8> {
    let mut layer = disk_headers(file_name, content.len() as u64).to_vec();
    layer.extend_from_slice(content);
    layer.extend_from_slice(&trailer(content.len() as u64));
    layer
}

#[test]
fn layer_is_a_tar_with_the_directory_and_the_file() {
    for size in [0usize, 1, 511, 512, 513, 4096 + 17] {
        let content: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let layer = layer_bytes("noble.qcow2", &content);
        assert_eq!(layer.len() as u64, layer_size(size as u64));
        assert_eq!(layer.len() % 512, 0);

        let mut archive = tar::Archive::new(layer.as_slice());
        let mut entries = archive.entries().unwrap();

        let dir = entries.next().unwrap().unwrap();
        assert_eq!(dir.header().entry_type(), tar::EntryType::Directory);
        assert_eq!(&*dir.path_bytes(), b"disk/");
        assert_eq!(dir.header().mode().unwrap(), 0o755);
        drop(dir);

        let mut file = entries.next().unwrap().unwrap();
        assert_eq!(file.header().entry_type(), tar::EntryType::Regular);
        assert_eq!(&*file.path_bytes(), b"disk/noble.qcow2");
        assert_eq!(file.header().mode().unwrap(), 0o644);
        assert_eq!(file.header().mtime().unwrap(), 0);
        assert_eq!(file.header().uid().unwrap(), 0);
        assert_eq!(file.header().gid().unwrap(), 0);
        assert_eq!(file.header().size().unwrap(), size as u64);
        let mut read = Vec::new();
        file.read_to_end(&mut read).unwrap();
        assert_eq!(read, content);
        drop(file);

        assert!(entries.next().is_none());
    }
}

#[test]
fn layer_ends_with_two_zero_blocks() {
    let layer = layer_bytes("a", b"xyz");
    assert!(layer[layer.len() - 1024..].iter().all(|&b| b == 0));
    assert_eq!(layer.len(), 1024 + 512 + 1024);
}

#[test]
fn headers_are_reproducible_ustar() {
    let a = disk_headers("x.img", 12345);
    let b = disk_headers("x.img", 12345);
    assert_eq!(a, b);
    assert_eq!(&a[257..263], b"ustar\0");
    assert_eq!(&a[512 + 257..512 + 263], b"ustar\0");
    assert_ne!(disk_headers("x.img", 12346), a);
}

#[test]
fn a_100_byte_file_name_goes_through_the_prefix_field() {
    let name = "n".repeat(100);
    assert_eq!(disk_file_name(&name), name);
    let layer = layer_bytes(&name, b"data");
    let mut archive = tar::Archive::new(layer.as_slice());
    let mut entries = archive.entries().unwrap();
    entries.next().unwrap().unwrap();
    let file = entries.next().unwrap().unwrap();
    assert_eq!(
        file.path().unwrap().to_str().unwrap(),
        format!("disk/{name}")
    );
}

#[test]
fn sizes_of_8_gib_and_more_are_readable() {
    let size = 20 * 1024 * 1024 * 1024u64 + 3;
    let headers = disk_headers("big.raw", size);
    let mut block = [0u8; 512];
    block.copy_from_slice(&headers[512..]);
    let header = tar::Header::from_byte_slice(&block);
    assert_eq!(header.size().unwrap(), size);
    assert_eq!(layer_size(size), 1024 + size + 509 + 1024);
}

#[test]
fn headers_parse_back() {
    for (name, size) in [
        ("noble.qcow2", 0u64),
        ("x.img", 12345),
        (&*"n".repeat(100), 1),
        ("big.raw", 9 << 30),
    ] {
        let headers = disk_headers(name, size);
        assert_eq!(parse_disk_headers(&headers), Ok((name.to_string(), size)));
    }
    let mut corrupt = disk_headers("x.img", 5);
    corrupt[512 + 10] ^= 1;
    assert!(parse_disk_headers(&corrupt).is_err());
    assert!(parse_disk_headers(&[0u8; 100]).is_err());
    let mut swapped = [0u8; 1024];
    let headers = disk_headers("x.img", 5);
    swapped[..512].copy_from_slice(&headers[512..]);
    swapped[512..].copy_from_slice(&headers[..512]);
    assert!(parse_disk_headers(&swapped).is_err());
}

#[test]
fn file_names_are_sanitised() {
    assert_eq!(disk_file_name("/images/noble/noble.qcow2"), "noble.qcow2");
    assert_eq!(
        disk_file_name("https://h/a/b.img.xz?X-Sig=1#frag"),
        "b.img.xz"
    );
    assert_eq!(disk_file_name("ubuntu%2024.04.img"), "ubuntu 24.04.img");
    assert_eq!(disk_file_name("a%2F..%2Fb"), "a_.._b");
    assert_eq!(disk_file_name("..\\..\\evil.img"), "evil.img");
    assert_eq!(disk_file_name("/images/"), FALLBACK_FILE_NAME);
    assert_eq!(disk_file_name(""), FALLBACK_FILE_NAME);
    assert_eq!(disk_file_name(".."), FALLBACK_FILE_NAME);
    assert_eq!(disk_file_name("/a/%2E%2E"), FALLBACK_FILE_NAME);
    assert_eq!(disk_file_name("."), FALLBACK_FILE_NAME);
    assert_eq!(disk_file_name("a\nb\0c"), "a_b_c");
    assert_eq!(disk_file_name("bad%zzescape%"), "bad%zzescape%");
    let long = format!("{}.qcow2", "é".repeat(80));
    let short = disk_file_name(&long);
    assert!(short.len() <= MAX_FILE_NAME_BYTES);
    assert!(short.starts_with("éé"));
    assert_eq!(short.len(), 100);
}

#[test]
fn config_carries_platform_labels_and_diff_id() {
    let labels = ImageLabels {
        stored_size: 1000,
        virtual_size: 2_147_483_648,
        format: "qcow2".to_string(),
        sha256: Some("ab".repeat(32)),
        md5: None,
    };
    let json: serde_json::Value =
        serde_json::from_slice(&config_json("sha256:0123", &labels)).unwrap();
    assert_eq!(json["architecture"], "amd64");
    assert_eq!(json["os"], "linux");
    assert_eq!(json["rootfs"]["type"], "layers");
    assert_eq!(json["rootfs"]["diff_ids"][0], "sha256:0123");
    assert_eq!(json["config"]["Labels"]["source-image-size"], "1000");
    assert_eq!(
        json["config"]["Labels"]["source-image-virtual-size"],
        "2147483648"
    );
    assert_eq!(json["config"]["Labels"]["source-image-format"], "qcow2");
    assert_eq!(
        json["config"]["Labels"]["source-image-sha256"],
        "ab".repeat(32)
    );
    assert!(json["config"]["Labels"].get("source-image-md5").is_none());

    let parsed: ImageConfig = serde_json::from_slice(&config_json("sha256:0123", &labels)).unwrap();
    let back = ImageLabels::from_map(parsed.config.labels.as_ref().unwrap()).unwrap();
    assert_eq!(back, labels);
}

#[test]
fn manifest_has_the_oci_media_types() {
    let json: serde_json::Value =
        serde_json::from_slice(&manifest_json("sha256:c", 10, "sha256:l", 2048)).unwrap();
    assert_eq!(json["schemaVersion"], 2);
    assert_eq!(json["mediaType"], MANIFEST_MEDIA_TYPE);
    assert_eq!(json["config"]["mediaType"], CONFIG_MEDIA_TYPE);
    assert_eq!(json["config"]["digest"], "sha256:c");
    assert_eq!(json["config"]["size"], 10);
    assert_eq!(json["layers"].as_array().unwrap().len(), 1);
    assert_eq!(json["layers"][0]["mediaType"], LAYER_MEDIA_TYPE);
    assert_eq!(json["layers"][0]["digest"], "sha256:l");
    assert_eq!(json["layers"][0]["size"], 2048);
}

#[test]
fn names_tags_and_digests_are_validated() {
    assert!(is_valid_repository("cvi/ubuntu-24.04"));
    assert!(is_valid_repository("vi/default/my_img"));
    assert!(!is_valid_repository("cvi/Ubuntu"));
    assert!(!is_valid_repository("cvi//x"));
    assert!(!is_valid_repository("cvi/x/"));
    assert!(!is_valid_repository("cvi/a..b"));
    assert!(!is_valid_repository("cvi/../x"));
    assert!(!is_valid_repository(""));
    assert!(is_valid_tag("3f1c2a9e-1b2c-4d5e-8f90-0123456789ab"));
    assert!(!is_valid_tag("-x"));
    assert!(!is_valid_tag("a/b"));
    assert!(!is_valid_tag(&"a".repeat(129)));
    assert!(is_sha256_digest(&sha256_digest(b"")));
    assert!(!is_sha256_digest("sha256:ABC"));
    assert_eq!(
        sha256_digest(b""),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(cvi_repository("u"), "cvi/u");
    assert_eq!(vi_repository("ns", "u"), "vi/ns/u");
}
