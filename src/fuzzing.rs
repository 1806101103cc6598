//! Entry points for the fuzz targets in `fuzz/` (`scripts/fuzz`): each parser of outside input
//! fed arbitrary bytes. A panic is a bug; so is an invariant below that does not hold. Not
//! part of the API.

use crate::catalog::{self, SourceFile};
use crate::import::inspect::{InspectLimits, Inspector};

/// A chunk size for `data`, so that the fuzzer also varies how the stream is cut; taken from
/// its length, not its bytes, so that a real image header used as a seed stays whole.
fn chunked(data: &[u8]) -> (usize, &[u8]) {
    (1 + data.len().wrapping_mul(2_654_435_761) % 8191, data)
}

/// The format inspection (plain, gzip, xz; qcow2, VMDK, VHD, VHDX, VDI, ISO, raw headers).
pub fn inspect(data: &[u8]) {
    let (chunk, bytes) = chunked(data);
    let mut inspector = Inspector::new(InspectLimits {
        max_unpacked_size: 64 << 20,
        ..InspectLimits::default()
    });
    for piece in bytes.chunks(chunk) {
        if inspector.update(piece).is_err() {
            return;
        }
    }
    if let Ok(info) = inspector.finish() {
        assert!(
            info.cdrom == (info.format == crate::import::inspect::DiskFormat::Iso),
            "only an ISO is a CD-ROM: {info:?}"
        );
    }
}

/// The streaming tar reader of container image layers.
pub fn tar(data: &[u8]) {
    let (chunk, bytes) = chunked(data);
    crate::import::source::container_image::fuzz_tar(bytes, chunk);
}

/// Content-Range and Content-Disposition.
pub fn http_headers(data: &[u8]) {
    crate::import::source::http::fuzz_headers(&String::from_utf8_lossy(data));
}

/// Retry-After, as seconds or an HTTP date.
pub fn retry_after(data: &[u8]) {
    let _ = crate::net::parse_retry_after(&String::from_utf8_lossy(data), 1_700_000_000);
}

/// known_hosts files (plain and hashed host names, markers, options).
pub fn known_hosts(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (hosts, host) = text.split_once('\0').unwrap_or((&text, "git.example"));
    let _ = crate::git::known_hosts::check(hosts, host, b"key");
}

/// Catalog YAML, through the one validator (positions included).
pub fn catalog(data: &[u8]) {
    let files = [SourceFile {
        path: "images.yaml".to_string(),
        content: data.to_vec(),
    }];
    if let Err(problems) = catalog::load(&files) {
        assert!(!problems.is_empty(), "a refused catalog says why");
    }
}

/// Five-field cron schedules, and their next run.
pub fn cron(data: &[u8]) {
    if let Ok(schedule) = crate::schedule::parse(&String::from_utf8_lossy(data)) {
        let _ = schedule.upcoming(chrono::Utc).next();
    }
}
