use super::layer::*;
use super::tar::*;
use super::*;
use futures::StreamExt as _;
use oci_client::manifest::ImageIndexEntry;
use std::io::Write as _;

fn tar_with(entries: impl FnOnce(&mut ::tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut builder = ::tar::Builder::new(Vec::new());
    entries(&mut builder);
    builder.into_inner().unwrap()
}

fn file(builder: &mut ::tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut header = ::tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(::tar::EntryType::Regular);
    builder.append_data(&mut header, path, data).unwrap();
}

fn reader(bytes: Vec<u8>, chunk: usize) -> TarReader {
    let chunks: Vec<Result<Bytes, std::io::Error>> = bytes
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    TarReader::new(LayerReader::new(futures::stream::iter(chunks).boxed()))
}

async fn entries(mut tar: TarReader) -> Vec<(TarEntry, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(entry) = tar.next_entry().await.unwrap() {
        let mut data = Vec::new();
        while let Some(chunk) = tar.read_data().await.unwrap() {
            data.extend_from_slice(&chunk);
        }
        out.push((entry, data));
    }
    tar.drain().await.unwrap();
    out
}

#[tokio::test]
async fn parses_plain_and_gzip_tars_in_any_chunking() {
    let long = format!("disk/{}.qcow2", "x".repeat(150));
    let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let archive = tar_with(|b| {
        let mut dir = ::tar::Header::new_ustar();
        dir.set_entry_type(::tar::EntryType::Directory);
        dir.set_size(0);
        b.append_data(&mut dir, "disk/", std::io::empty()).unwrap();
        file(b, "etc/hostname", b"host\n");
        // GNU long name (`././@LongLink`).
        file(b, &long, &payload);
    });
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&archive).unwrap();
    let gzipped = gz.finish().unwrap();
    for bytes in [archive.clone(), gzipped] {
        for chunk in [1, 3, 511, 512, 4096, 1 << 20] {
            let got = entries(reader(bytes.clone(), chunk)).await;
            let paths: Vec<&str> = got.iter().map(|(e, _)| e.path.as_str()).collect();
            assert_eq!(paths, ["disk", "etc/hostname", long.as_str()]);
            assert_eq!(got[0].0.kind, EntryKind::Directory);
            assert_eq!(got[2].1, payload);
            assert_eq!(got[2].0.size, payload.len() as u64);
        }
    }
}

#[tokio::test]
async fn pax_path_and_size_override_the_header() {
    // A record's length counts its own digits.
    let record = |key: &str, value: &str| {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while body.len() + len.to_string().len() != len {
            len = body.len() + len.to_string().len();
        }
        format!("{len}{body}")
    };
    let pax = format!(
        "{}{}",
        record("path", "./disk/from-pax.img"),
        record("size", "3")
    )
    .into_bytes();
    let archive = tar_with(|b| {
        let mut header = ::tar::Header::new_ustar();
        header.set_entry_type(::tar::EntryType::XHeader);
        header.set_size(pax.len() as u64);
        b.append_data(&mut header, "PaxHeaders/x", pax.as_slice())
            .unwrap();
        file(b, "disk/short.img", b"abc");
    });
    let got = entries(reader(archive, 100)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.path, "disk/from-pax.img");
    assert_eq!(got[0].1, b"abc");
}

#[tokio::test]
async fn zstd_layers_are_refused_by_their_magic() {
    let mut tar = reader(vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0], 2);
    assert!(matches!(tar.next_entry().await, Err(LayerFailure::Zstd)));
    let mut tar = reader(vec![7u8; 1024], 100);
    assert!(matches!(
        tar.next_entry().await,
        Err(LayerFailure::Corrupt(_))
    ));
}

#[test]
fn the_source_and_its_opening_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let egress = Arc::default();
    let open = ContainerDisk::open("example.com/a:b", None, None, &egress);
    assert_send(&open);
}

#[test]
fn numeric_fields() {
    assert_eq!(parse_numeric(b"0000644\0"), Some(0o644));
    assert_eq!(parse_numeric(b"     12 "), Some(0o12));
    assert_eq!(parse_numeric(b"\0\0\0\0"), Some(0));
    let mut big = [0u8; 12];
    big[0] = 0x80;
    big[4..].copy_from_slice(&(20u64 << 30).to_be_bytes());
    assert_eq!(parse_numeric(&big), Some(20 << 30));
    assert_eq!(parse_numeric(b"99"), None);
}

#[test]
fn paths_and_classification() {
    assert_eq!(normalize_path("./disk/x.img"), "disk/x.img");
    assert_eq!(normalize_path("/disk//x.img"), "disk/x.img");
    assert_eq!(normalize_path("disk/"), "disk");
    let entry = |path: &str, kind| TarEntry {
        path: normalize_path(path),
        kind,
        size: 1,
        pax_sparse: false,
    };
    assert!(matches!(
        classify(&entry("./disk/a.img", EntryKind::Regular)),
        DiskEntry::File("a.img")
    ));
    assert!(matches!(
        classify(&entry("disk/.wh.a.img", EntryKind::Regular)),
        DiskEntry::Ignored
    ));
    assert!(matches!(
        classify(&entry("diskette/a.img", EntryKind::Regular)),
        DiskEntry::Ignored
    ));
    assert!(matches!(
        classify(&entry("disk/a.img", EntryKind::SymLink)),
        DiskEntry::NotRegular(_)
    ));
    assert!(matches!(
        classify(&entry("disk", EntryKind::Directory)),
        DiskEntry::Ignored
    ));
}

#[test]
fn registry_hosts_follow_oci_client() {
    assert_eq!(registry_host("ubuntu:22.04"), "index.docker.io");
    assert_eq!(registry_host("docker.io/library/ubuntu"), "index.docker.io");
    assert_eq!(registry_host("quay.io/org/img:1"), "quay.io");
    assert_eq!(
        registry_host("127.0.0.1:5000/a/b@sha256:{}"),
        "127.0.0.1:5000"
    );
    assert_eq!(registry_host("localhost:5000/a"), "localhost:5000");
}

#[test]
fn references_are_redacted() {
    assert_eq!(redact_reference("u:p@host/r:t"), "host/r:t");
    assert_eq!(redact_reference("host/r@sha256:ab"), "host/r@sha256:ab");
    assert_eq!(redact_reference("r@sha256:ab"), "r@sha256:ab");
}

#[test]
fn credentials_debug_hides_the_password() {
    let credentials = RegistryCredentials {
        username: "robot".into(),
        password: "s3cr3t-pass".into(),
    };
    assert!(!format!("{credentials:?}").contains("s3cr3t"));
}

#[test]
fn platforms_are_picked() {
    let entry = |digest: &str, platform: Option<(&str, &str)>| {
        let mut value = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": 1,
        });
        if let Some((os, arch)) = platform {
            value["platform"] = serde_json::json!({"os": os, "architecture": arch});
        }
        serde_json::from_value::<ImageIndexEntry>(value).unwrap()
    };
    let index = [
        entry("sha256:arm", Some(("linux", "arm64"))),
        entry("sha256:amd", Some(("linux", "amd64"))),
    ];
    assert_eq!(pick_platform(&index).as_deref(), Some("sha256:amd"));
    let single = [
        entry("sha256:arm", Some(("linux", "arm64"))),
        entry("sha256:att", Some(("unknown", "unknown"))),
    ];
    assert_eq!(pick_platform(&single).as_deref(), Some("sha256:arm"));
    assert_eq!(pick_platform(&index[..1]).as_deref(), Some("sha256:arm"));
    let two = [
        entry("sha256:arm", Some(("linux", "arm64"))),
        entry("sha256:ppc", Some(("linux", "ppc64le"))),
    ];
    assert_eq!(pick_platform(&two), None);
}
