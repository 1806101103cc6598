//! Checksums of the received file, and their comparison with the spec. The comparison is pure.

use md5::Md5;
use sha2::{Digest, Sha256};

use crate::api::Checksum;

/// The digests of the file as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigests {
    pub sha256: String,
    /// Computed only when the spec asks for it: md5 cannot be spread across cores and would
    /// otherwise set the pace of every import.
    pub md5: Option<String>,
}

/// An incremental digest over the received bytes, finished as lower-case hex.
#[derive(Default)]
pub struct Hasher<D>(D);

impl<D: Digest> Hasher<D> {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

pub type Sha256Hasher = Hasher<Sha256>;
pub type Md5Hasher = Hasher<Md5>;

/// A checksum of the spec that the file does not match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the downloaded file does not match the {algorithm} checksum of the spec: expected {expected}, got {actual}; \
     check that the URL serves the intended file and that the checksum is right"
)]
pub struct ChecksumMismatch {
    pub algorithm: &'static str,
    pub expected: String,
    pub actual: String,
}

/// Checks every checksum the spec gives (hex, in any case).
pub fn verify(expected: Option<&Checksum>, actual: &FileDigests) -> Result<(), ChecksumMismatch> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let pairs = [
        (
            "sha256",
            expected.sha256.as_deref(),
            Some(actual.sha256.as_str()),
        ),
        ("md5", expected.md5.as_deref(), actual.md5.as_deref()),
    ];
    for (algorithm, want, got) in pairs {
        if let Some(want) = want {
            let got = got.unwrap_or_default();
            if !want.eq_ignore_ascii_case(got) {
                return Err(ChecksumMismatch {
                    algorithm,
                    expected: want.to_ascii_lowercase(),
                    actual: got.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digests_of(bytes: &[u8]) -> FileDigests {
        let mut sha = Sha256Hasher::default();
        let mut md5 = Md5Hasher::default();
        sha.update(bytes);
        md5.update(bytes);
        FileDigests {
            sha256: sha.finish(),
            md5: Some(md5.finish()),
        }
    }

    #[test]
    fn digests_match_the_well_known_values() {
        let digests = digests_of(b"abc");
        assert_eq!(
            digests.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            digests.md5.as_deref(),
            Some("900150983cd24fb0d6963f7d28e17f72")
        );
    }

    #[test]
    fn every_checksum_of_the_spec_must_match_in_any_case() {
        let actual = digests_of(b"abc");
        let spec = Checksum {
            md5: Some("900150983CD24FB0D6963F7D28E17F72".into()),
            sha256: Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into()),
        };
        assert_eq!(verify(Some(&spec), &actual), Ok(()));
        assert_eq!(verify(None, &actual), Ok(()));

        let wrong_md5 = Checksum {
            md5: Some("0".repeat(32)),
            ..spec.clone()
        };
        let error = verify(Some(&wrong_md5), &actual).unwrap_err();
        assert_eq!(error.algorithm, "md5");
        assert!(error.to_string().contains("expected 00000000"));
    }
}
