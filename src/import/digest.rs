//! Checksums of the received file, and their comparison with the spec. The comparison is pure.

use md5::Md5;
use sha2::digest::common::hazmat::SerializableState;
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

impl<D: SerializableState> Hasher<D> {
    /// The state after the bytes so far, to go on from later (a checkpoint): a few dozen
    /// bytes, whatever the input's length.
    pub fn state(&self) -> Vec<u8> {
        self.0.serialize().to_vec()
    }

    /// The hasher as it was when [`state`](Self::state) was taken.
    pub fn from_state(state: &[u8]) -> Result<Self, InvalidHashState> {
        let state = state.try_into().map_err(|_| InvalidHashState)?;
        D::deserialize(&state)
            .map(Self)
            .map_err(|_| InvalidHashState)
    }
}

/// Bytes that are not a saved hash state of this algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a saved hash state")]
pub struct InvalidHashState;

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
    fn a_hash_goes_on_from_its_saved_state_as_if_never_stopped() {
        let mut sha = Sha256Hasher::default();
        let mut md5 = Md5Hasher::default();
        // 100 bytes: the saved state holds a partly filled block.
        sha.update(&[7u8; 100]);
        md5.update(&[7u8; 100]);
        let mut sha = Sha256Hasher::from_state(&sha.state()).unwrap();
        let mut md5 = Md5Hasher::from_state(&md5.state()).unwrap();
        sha.update(b"abc");
        md5.update(b"abc");
        let mut whole = [7u8; 103];
        whole[100..].copy_from_slice(b"abc");
        let expected = digests_of(&whole);
        assert_eq!(sha.finish(), expected.sha256);
        assert_eq!(Some(md5.finish()), expected.md5);
        assert_eq!(
            Sha256Hasher::from_state(&[0; 3]).err(),
            Some(InvalidHashState)
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
