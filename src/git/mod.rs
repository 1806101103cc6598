//! Placeholder until the git module lands.
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub enum GitReference {
    Branch(String),
    Tag(String),
    Commit(String),
}

#[derive(Clone, Default, Debug)]
pub struct GitCredentials {
    pub username: Option<String>,
    pub password: Option<String>,
    pub bearer_token: Option<String>,
    pub ssh_private_key: Option<String>,
    pub ssh_passphrase: Option<String>,
    pub known_hosts: Option<String>,
    pub ca_pem: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
#[error("git is not built yet")]
pub struct GitError;

impl GitError {
    pub fn reason(&self) -> &'static str {
        "GitError"
    }
}

impl GitCredentials {
    pub fn from_secret_data(
        _data: &std::collections::BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, GitError> {
        Err(GitError)
    }
}

pub struct FetchedCommit {
    pub commit: String,
}

pub fn fetch(
    _cache_dir: &Path,
    _url: &str,
    _reference: &GitReference,
    _credentials: &GitCredentials,
) -> Result<FetchedCommit, GitError> {
    Err(GitError)
}

pub fn read_files(
    _cache_dir: &Path,
    _commit: &str,
    _path: &str,
) -> Result<Vec<(String, Vec<u8>)>, GitError> {
    Err(GitError)
}

pub fn push_note(
    _cache_dir: &Path,
    _url: &str,
    _credentials: &GitCredentials,
    _commit: &str,
    _notes_ref: &str,
    _text: &str,
) -> Result<(), GitError> {
    Err(GitError)
}
