//! The stages every import's bytes pass, without a registry: what the hashes and the
//! inspection make of a stream, and the hash states a resumed import goes on from.

use super::*;
use crate::import::inspect::DiskFormat;
use sha2::Digest as _;

fn disk(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

async fn feed(stages: &mut Stages, data: &[u8], chunk: usize) -> Result<(), ImportError> {
    for piece in data.chunks(chunk) {
        stages.feed(&Bytes::copy_from_slice(piece)).await?;
    }
    Ok(())
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(md5::Md5::digest(data))
}

#[tokio::test]
async fn the_stages_hash_every_chunk_in_order_and_inspect_the_whole_stream() {
    let data = disk(3 << 20);
    let mut stages = Stages::start(true, Some(InspectLimits::default()), None);
    feed(&mut stages, &data, 65_536 + 7).await.unwrap();
    let (digests, info) = stages.finish().await.unwrap();
    assert_eq!(digests.sha256, sha256_hex(&data));
    assert_eq!(digests.md5.as_deref(), Some(md5_hex(&data).as_str()));
    let info = info.expect("the inspection ran");
    assert_eq!(info.format, DiskFormat::Raw);
    assert_eq!(info.virtual_size, data.len() as u64);
}

#[tokio::test]
async fn hash_states_taken_mid_stream_go_on_to_the_digests_of_one_pass() {
    let data = disk(2 << 20);
    let (head, tail) = data.split_at(700_001);
    let mut first = Stages::start(true, None, None);
    feed(&mut first, head, 4096).await.unwrap();
    let states = first
        .snapshot()
        .await
        .unwrap()
        .collect(Vec::new())
        .await
        .unwrap();
    // The first attempt goes on a little past its snapshot, as a killed one does.
    feed(&mut first, &tail[..10_000], 4096).await.unwrap();
    drop(first);

    let from = (
        Sha256Hasher::from_state(&states.sha256).unwrap(),
        Some(Md5Hasher::from_state(&states.md5.unwrap()).unwrap()),
    );
    let mut resumed = Stages::start(true, None, Some(from));
    feed(&mut resumed, tail, 1 << 20).await.unwrap();
    let (digests, info) = resumed.finish().await.unwrap();
    assert_eq!(digests.sha256, sha256_hex(&data));
    assert_eq!(digests.md5.as_deref(), Some(md5_hex(&data).as_str()));
    assert!(
        info.is_none(),
        "a resumed import inspects the stored layer instead"
    );
}

#[tokio::test]
async fn an_image_the_inspection_refuses_stops_the_stream_with_its_reason() {
    let mut archive = ::tar::Builder::new(Vec::new());
    let payload = disk(4 << 20);
    let mut header = ::tar::Header::new_ustar();
    header.set_size(payload.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    archive
        .append_data(&mut header, "disk.raw", payload.as_slice())
        .unwrap();
    let tarball = archive.into_inner().unwrap();

    let mut stages = Stages::start(false, Some(InspectLimits::default()), None);
    let error = match feed(&mut stages, &tarball, 65_536).await {
        Err(error) => error,
        Ok(()) => stages.finish().await.unwrap_err(),
    };
    assert_eq!(error.reason(), "UnsupportedImage");
    assert!(error.to_string().contains("tar archive"), "{error}");
}
