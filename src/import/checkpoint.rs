//! Where an import stands, saved while it runs so that a restarted daemon or a standby that
//! takes over goes on from there instead of from byte 0: the DVCR upload session, how many
//! bytes of the file the hashes have seen, the hash states at that point, and what the source
//! must still be for its bytes to follow on (its validator).
//!
//! A checkpoint is outside input when read back (anyone who may write the object that holds
//! it could change it), so nothing in it is trusted to be right: a session URL must be DVCR's
//! own, a state that does not decode starts the import over, and the registry checks the
//! layer digest of its own bytes at the commit, so a wrong hash state can only fail an
//! import, never store wrong bytes. Deciding what to do with one is pure; saving it is the
//! caller's (see `k8s::checkpoints`).

use base64::Engine;
use serde::{Deserialize, Serialize};

/// The checkpoint format; one of another version is discarded.
pub const VERSION: u32 = 1;

/// What a source must still answer for a resumed range to be the same file: a strong ETag
/// or a Last-Modified that served as one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SourceValidator {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

impl SourceValidator {
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// Which import a checkpoint belongs to: one image, one generation of its spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportKey {
    pub uid: String,
    pub generation: i64,
}

/// One saved point of an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub version: u32,
    pub image: ImportKey,
    pub repository: String,
    /// The DVCR upload session, without its state token.
    pub session: String,
    pub file_name: String,
    pub file_size: u64,
    /// Bytes of the file the states below cover (DVCR holds at least these).
    pub offset: u64,
    /// base64 of the hash states after `offset` bytes.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// The layer digest's state after the two tar headers and `offset` bytes.
    pub layer_sha256: String,
    /// None for a source that cannot be opened at an offset: the checkpoint then only tells
    /// which upload session to cancel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceValidator>,
}

/// The hash states of a checkpoint, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashStates {
    pub sha256: Vec<u8>,
    pub md5: Option<Vec<u8>>,
    pub layer_sha256: Vec<u8>,
}

impl HashStates {
    pub fn encode(&self) -> (String, Option<String>, String) {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        (
            b64(&self.sha256),
            self.md5.as_deref().map(b64),
            b64(&self.layer_sha256),
        )
    }
}

/// What to do with the checkpoint found when an import starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Go on from it.
    From(Box<Checkpoint>, HashStates),
    /// Cancel its upload session and start from byte 0, for this reason (for the log).
    Discard(&'static str),
}

/// Decides whether `found` lets the import of `key` into `repository` go on. `wants_md5`:
/// whether the spec asks for an md5 (a checkpoint without its state cannot give one).
pub fn decide(found: &Checkpoint, key: &ImportKey, repository: &str, wants_md5: bool) -> Resume {
    if found.version != VERSION {
        return Resume::Discard("it is of another version");
    }
    if &found.image != key {
        return Resume::Discard("it belongs to another generation of the image");
    }
    if found.repository != repository {
        return Resume::Discard("it names another repository");
    }
    if found.source.as_ref().is_none_or(SourceValidator::is_empty) {
        return Resume::Discard("its source cannot be opened at an offset");
    }
    if found.offset == 0 {
        return Resume::Discard("it was saved before any byte of the file reached DVCR");
    }
    if found.offset > found.file_size {
        return Resume::Discard("it covers more bytes than the file has");
    }
    if wants_md5 != found.md5.is_some() {
        return Resume::Discard("it does not hold the md5 state the spec asks for");
    }
    let decode = |text: &str| base64::engine::general_purpose::STANDARD.decode(text).ok();
    let (Some(sha256), Some(layer_sha256)) = (decode(&found.sha256), decode(&found.layer_sha256))
    else {
        return Resume::Discard("its hash states do not decode");
    };
    let md5 = match found.md5.as_deref().map(decode) {
        None => None,
        Some(Some(md5)) => Some(md5),
        Some(None) => return Resume::Discard("its hash states do not decode"),
    };
    Resume::From(
        Box::new(found.clone()),
        HashStates {
            sha256,
            md5,
            layer_sha256,
        },
    )
}

/// Whether a checkpoint found at start-up is left from an import that no longer runs: its
/// image is gone (`current` is the UID and generation of the image of that name now, if
/// any), or its generation's import has ended (`settled`).
pub fn is_stale(found: &Checkpoint, current: Option<&ImportKey>, settled: bool) -> bool {
    match current {
        None => true,
        Some(current) => current != &found.image || settled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ImportKey {
        ImportKey {
            uid: "u-1".into(),
            generation: 2,
        }
    }

    fn checkpoint() -> Checkpoint {
        let states = HashStates {
            sha256: vec![1; 8],
            md5: None,
            layer_sha256: vec![2; 8],
        };
        let (sha256, md5, layer_sha256) = states.encode();
        Checkpoint {
            version: VERSION,
            image: key(),
            repository: "cvi/a".into(),
            session: "https://dvcr/v2/cvi/a/blobs/uploads/x".into(),
            file_name: "a.img".into(),
            file_size: 100,
            offset: 40,
            sha256,
            md5,
            layer_sha256,
            source: Some(SourceValidator {
                etag: Some("\"e\"".into()),
                last_modified: None,
            }),
        }
    }

    #[test]
    fn a_matching_checkpoint_is_resumed_with_its_states() {
        match decide(&checkpoint(), &key(), "cvi/a", false) {
            Resume::From(found, states) => {
                assert_eq!(found.offset, 40);
                assert_eq!(states.sha256, vec![1; 8]);
                assert_eq!(states.layer_sha256, vec![2; 8]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_checkpoint_that_does_not_fit_is_discarded() {
        let other_generation = ImportKey {
            generation: 3,
            ..key()
        };
        assert!(matches!(
            decide(&checkpoint(), &other_generation, "cvi/a", false),
            Resume::Discard(_)
        ));
        assert!(matches!(
            decide(&checkpoint(), &key(), "cvi/b", false),
            Resume::Discard(_)
        ));
        // The spec asks for an md5 the checkpoint has no state for.
        assert!(matches!(
            decide(&checkpoint(), &key(), "cvi/a", true),
            Resume::Discard(_)
        ));
        let cases: [fn(&mut Checkpoint); 5] = [
            |c| c.version = VERSION + 1,
            |c| c.source = None,
            |c| c.source = Some(SourceValidator::default()),
            |c| c.offset = c.file_size + 1,
            |c| c.sha256 = "not base64!".into(),
        ];
        for change in cases {
            let mut changed = checkpoint();
            change(&mut changed);
            assert!(
                matches!(decide(&changed, &key(), "cvi/a", false), Resume::Discard(_)),
                "{changed:?}"
            );
        }
    }

    #[test]
    fn a_checkpoint_is_stale_once_its_image_or_its_generation_is_gone_or_done() {
        let found = checkpoint();
        assert!(is_stale(&found, None, false));
        assert!(is_stale(
            &found,
            Some(&ImportKey {
                uid: "u-2".into(),
                generation: 2
            }),
            false
        ));
        assert!(is_stale(&found, Some(&key()), true));
        assert!(!is_stale(&found, Some(&key()), false));
    }

    #[test]
    fn a_checkpoint_reads_back_as_written() {
        let text = serde_json::to_string(&checkpoint()).unwrap();
        let back: Checkpoint = serde_json::from_str(&text).unwrap();
        assert_eq!(back, checkpoint());
    }
}
