//! Git for catalogs: fetch one revision of a remote into a bare cache repository, read the
//! catalog files of a commit, and push notes. Blocking (libgit2): callers run it on
//! `spawn_blocking`.
//!
//! Remotes over `https://`, `http://`, `ssh://` (and `user@host:path`), `git://` and `file://`.
//! Credentials come from a Secret and never reach an error message: libgit2's messages are
//! scrubbed of every secret before they leave this module.

pub mod known_hosts;
mod notes;
mod remote;
mod tree;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

use git2::{
    CertificateCheckStatus, Cred, CredentialType, ErrorCode, FetchOptions, PushOptions,
    RemoteCallbacks, RemoteRedirect, Repository,
};

use known_hosts::HostKeyCheck;
pub use notes::push_note;
pub use remote::plaintext_scheme;
use remote::{CallbackVerdict, anonymous_remote, bearer_header, callbacks, check_remote, failure};
pub use tree::read_files;

use crate::catalog::limits::MAX_FILE_BYTES;
use crate::egress::EgressPolicy;

/// The revision a catalog follows.
#[derive(Debug, Clone, PartialEq)]
pub enum GitReference {
    Branch(String),
    Tag(String),
    Commit(String),
}

/// What a catalog's Secret holds. `Debug` shows which fields are set, never their values.
#[derive(Clone, Default)]
pub struct GitCredentials {
    pub username: Option<String>,
    pub password: Option<String>,
    pub bearer_token: Option<String>,
    pub ssh_private_key: Option<String>,
    pub ssh_passphrase: Option<String>,
    pub known_hosts: Option<String>,
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for GitCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitCredentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("bearer_token", &self.bearer_token.as_ref().map(|_| "<set>"))
            .field(
                "ssh_private_key",
                &self.ssh_private_key.as_ref().map(|_| "<set>"),
            )
            .field("known_hosts", &self.known_hosts.is_some())
            .field("ca_pem", &self.ca_pem.is_some())
            .finish()
    }
}

/// Why a Git operation failed. Each variant is a condition reason (see [`GitError::reason`])
/// and its message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{0}")]
    CredentialsInvalid(String),
    #[error("authentication failed: {0}")]
    AuthenticationFailed(String),
    #[error(
        "the SSH host key of {host} is not in known_hosts; add it to the Secret's known_hosts (ssh-keyscan {host})"
    )]
    HostKeyUnknown { host: String },
    #[error(
        "the SSH host key of {host} does not match known_hosts; if the server's key was rotated, update known_hosts in the Secret, otherwise someone may be intercepting the connection"
    )]
    HostKeyMismatch { host: String },
    #[error("the SSH host key of {host} is marked @revoked in known_hosts")]
    HostKeyRevoked { host: String },
    #[error(
        "the server certificate is not trusted: {0}; put the CA that signed it into the Secret's ca.crt"
    )]
    CertificateInvalid(String),
    #[error("{0}")]
    ReferenceNotFound(String),
    #[error(
        "the repository was not found: {0}; check spec.git.url and that the credentials may read it"
    )]
    RepositoryNotFound(String),
    #[error("the server cannot be reached: {0}")]
    Unreachable(String),
    /// Too large to read: `path` is the file (or folder) that passed a limit.
    #[error("{message}")]
    CatalogTooLarge { path: String, message: String },
    #[error("the push was refused: {0}")]
    PushRejected(String),
    /// The remote's address or a redirect is refused (egress policy, another host).
    #[error("{0}")]
    RefusedByPolicy(String),
    /// Credentials would travel unencrypted (`http://`, `git://`).
    #[error("{0}")]
    CredentialsInsecure(String),
    #[error("{0}")]
    Other(String),
}

impl GitError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::CredentialsInvalid(_) => "GitCredentialsInvalid",
            Self::AuthenticationFailed(_) => "GitAuthenticationFailed",
            Self::HostKeyUnknown { .. }
            | Self::HostKeyMismatch { .. }
            | Self::HostKeyRevoked { .. } => "GitHostKeyNotTrusted",
            Self::CertificateInvalid(_) => "GitCertificateInvalid",
            Self::ReferenceNotFound(_) => "GitReferenceNotFound",
            Self::RepositoryNotFound(_) => "GitRepositoryNotFound",
            Self::Unreachable(_) => "GitUnreachable",
            Self::CatalogTooLarge { .. } => "GitCatalogTooLarge",
            Self::PushRejected(_) => "GitPushRejected",
            Self::RefusedByPolicy(_) => "GitRemoteRefusedByPolicy",
            Self::CredentialsInsecure(_) => "GitCredentialsInsecure",
            Self::Other(_) => "GitError",
        }
    }
}

impl GitCredentials {
    /// Reads the Secret keys: `username`, `password`, `bearerToken` (HTTPS); `identity`,
    /// `identity.passphrase`, `known_hosts` (SSH); `ca.crt`.
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, GitError> {
        let text = |key: &str| -> Result<Option<String>, GitError> {
            match data.get(key) {
                None => Ok(None),
                Some(value) => String::from_utf8(value.clone())
                    .map(Some)
                    .map_err(|_| GitError::CredentialsInvalid(format!("{key} is not UTF-8 text"))),
            }
        };
        // Values pasted into Secrets often end with a newline that is not part of a password.
        let trimmed = |key: &str| -> Result<Option<String>, GitError> {
            Ok(text(key)?
                .map(|value| value.trim().to_string())
                .filter(|value| !value.is_empty()))
        };
        let credentials = Self {
            username: trimmed("username")?,
            password: trimmed("password")?,
            bearer_token: trimmed("bearerToken")?,
            ssh_private_key: text("identity")?.filter(|key| !key.trim().is_empty()),
            ssh_passphrase: trimmed("identity.passphrase")?,
            known_hosts: text("known_hosts")?.filter(|hosts| !hosts.trim().is_empty()),
            ca_pem: data.get("ca.crt").cloned(),
        };
        if credentials.password.is_some() && credentials.username.is_none() {
            return Err(GitError::CredentialsInvalid(
                "password is set without username; add username (any non-empty name works for most token-based servers)".into(),
            ));
        }
        if credentials.ssh_private_key.is_some() && credentials.known_hosts.is_none() {
            return Err(GitError::CredentialsInvalid(
                "identity is set without known_hosts; add the server's host key (ssh-keyscan <host>) as known_hosts".into(),
            ));
        }
        if let Some(pem) = &credentials.ca_pem
            && crate::tls::split_pem_certificates(pem).is_empty()
        {
            return Err(GitError::CredentialsInvalid(
                "ca.crt holds no PEM certificate".into(),
            ));
        }
        Ok(credentials)
    }

    /// Whether anything here must not travel unencrypted.
    fn has_secrets(&self) -> bool {
        self.password.is_some()
            || self.bearer_token.is_some()
            || self.ssh_private_key.is_some()
            || self.ssh_passphrase.is_some()
    }

    /// Every secret value, to scrub from messages.
    fn secrets(&self) -> Vec<&str> {
        [
            &self.password,
            &self.bearer_token,
            &self.ssh_passphrase,
            &self.ssh_private_key,
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .filter(|secret| secret.len() >= 3)
        .collect()
    }
}

pub struct FetchedCommit {
    pub commit: String,
}

/// Where the fetched revision is kept in the cache repository.
const FETCHED_REF: &str = "refs/image-catalog/fetched";

/// Fetches `reference` of `url` into the bare repository at `cache_dir` (created when
/// missing) and returns the commit it names. Shallow where the server supports it.
pub fn fetch(
    cache_dir: &Path,
    url: &str,
    reference: &GitReference,
    credentials: &GitCredentials,
    egress: &EgressPolicy,
) -> Result<FetchedCommit, GitError> {
    let repo = open_cache(cache_dir)?;
    if let GitReference::Commit(commit) = reference
        && let Some(found) = local_commit(&repo, commit)
    {
        // A commit never changes: once here, no need to ask the server again.
        return Ok(FetchedCommit { commit: found });
    }
    let refspec = refspec_of(reference);
    // A ref left by an earlier fetch must never stand in for this one.
    if let Ok(mut stale) = repo.find_reference(FETCHED_REF) {
        let _ = stale.delete();
    }
    let first = run_fetch(
        &repo,
        url,
        credentials,
        egress,
        &[refspec.as_str()],
        Some(1),
    );
    let first = match first {
        // Dumb HTTP and some servers cannot serve a shallow fetch.
        Err(GitError::Other(message)) if message.contains("shallow") => {
            run_fetch(&repo, url, credentials, egress, &[refspec.as_str()], None)
        }
        other => other,
    };
    match (reference, first) {
        (_, Ok(())) => {}
        // Servers without uploadpack.allowReachableSHA1InWant refuse a fetch by commit id:
        // fetch every branch and tag, then look for it.
        (GitReference::Commit(_), Err(error)) if !is_access_error(&error) => {
            tracing::debug!(%error, "fetch by commit id failed; fetching every branch and tag");
            let everything = [
                "+refs/heads/*:refs/image-catalog/heads/*",
                "+refs/tags/*:refs/image-catalog/tags/*",
            ];
            run_fetch(&repo, url, credentials, egress, &everything, None)?;
        }
        (_, Err(error)) => return Err(error),
    }
    if let GitReference::Commit(commit) = reference {
        return local_commit(&repo, commit)
            .map(|commit| FetchedCommit { commit })
            .ok_or_else(|| {
                GitError::ReferenceNotFound(format!(
                    "commit {commit} is not on any branch or tag of the repository; check spec.git.ref.commit"
                ))
            });
    }
    let commit = repo
        .find_reference(FETCHED_REF)
        .and_then(|reference| reference.peel_to_commit())
        .map_err(|error| {
            GitError::ReferenceNotFound(format!(
                "{} does not name a commit: {}",
                describe(reference),
                error.message()
            ))
        })?;
    Ok(FetchedCommit {
        commit: commit.id().to_string(),
    })
}

fn refspec_of(reference: &GitReference) -> String {
    match reference {
        GitReference::Branch(branch) => format!("+refs/heads/{branch}:{FETCHED_REF}"),
        GitReference::Tag(tag) => format!("+refs/tags/{tag}:{FETCHED_REF}"),
        GitReference::Commit(commit) => format!("+{commit}:{FETCHED_REF}"),
    }
}

/// How much history is fetched to tell whether a branch moved forward.
const ANCESTRY_DEPTH: i32 = 256;

/// Whether `commit` (fetched into the cache) descends from `applied`, the commit applied
/// before: false for a force-push or a moved tag, and also when `applied` is more than
/// ANCESTRY_DEPTH commits back (the hold then asks a person, which is the safe side).
pub fn descends_from(
    cache_dir: &Path,
    url: &str,
    reference: &GitReference,
    credentials: &GitCredentials,
    egress: &EgressPolicy,
    commit: &str,
    applied: &str,
) -> Result<bool, GitError> {
    let repo = open_cache(cache_dir)?;
    let descends =
        |repo: &Repository| match (git2::Oid::from_str(commit), git2::Oid::from_str(applied)) {
            (Ok(new), Ok(old)) => new == old || repo.graph_descendant_of(new, old).unwrap_or(false),
            _ => false,
        };
    if descends(&repo) {
        return Ok(true);
    }
    // The usual fetch is shallow (one commit): deepen before saying it does not descend.
    let refspec = refspec_of(reference);
    match run_fetch(
        &repo,
        url,
        credentials,
        egress,
        &[refspec.as_str()],
        Some(ANCESTRY_DEPTH),
    ) {
        Err(GitError::Other(message)) if message.contains("shallow") => {
            run_fetch(&repo, url, credentials, egress, &[refspec.as_str()], None)?
        }
        other => other?,
    }
    Ok(descends(&repo))
}

fn describe(reference: &GitReference) -> String {
    match reference {
        GitReference::Branch(branch) => format!("branch {branch}"),
        GitReference::Tag(tag) => format!("tag {tag}"),
        GitReference::Commit(commit) => format!("commit {commit}"),
    }
}

fn is_access_error(error: &GitError) -> bool {
    !matches!(error, GitError::Other(_) | GitError::ReferenceNotFound(_))
}

/// The commit `id` (a full or abbreviated hex id) if the cache already has it.
fn local_commit(repo: &Repository, id: &str) -> Option<String> {
    repo.revparse_single(id)
        .ok()
        .and_then(|object| object.peel_to_commit().ok())
        .map(|commit| commit.id().to_string())
}

/// Opens the bare cache repository, creating it when missing or unreadable.
fn open_cache(cache_dir: &Path) -> Result<Repository, GitError> {
    configure_libgit2();
    if let Ok(repo) = Repository::open_bare(cache_dir) {
        return Ok(repo);
    }
    // A half-written cache (the daemon stopped mid-clone) is thrown away and rebuilt.
    if cache_dir.exists() {
        let _ = std::fs::remove_dir_all(cache_dir);
    }
    std::fs::create_dir_all(cache_dir).map_err(|error| {
        GitError::Other(format!(
            "creating the Git cache {}: {error}",
            cache_dir.display()
        ))
    })?;
    Repository::init_bare(cache_dir).map_err(|error| {
        GitError::Other(format!(
            "creating the Git cache {}: {}",
            cache_dir.display(),
            error.message()
        ))
    })
}

/// Timeouts, so that a silent server cannot hold a sync forever.
fn configure_libgit2() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: these set libgit2 globals; Once runs them before any other libgit2 call
        // of this process that could read them concurrently.
        unsafe {
            let _ = git2::opts::set_server_connect_timeout_in_milliseconds(30_000);
            let _ = git2::opts::set_server_timeout_in_milliseconds(120_000);
        }
    });
}

fn run_fetch(
    repo: &Repository,
    url: &str,
    credentials: &GitCredentials,
    egress: &EgressPolicy,
    refspecs: &[&str],
    depth: Option<i32>,
) -> Result<(), GitError> {
    check_remote(url, credentials, egress)?;
    let verdict = CallbackVerdict::default();
    let result = {
        let mut options = FetchOptions::new();
        options.remote_callbacks(callbacks(url, credentials, &verdict));
        // Redirects stay on the remote's host (libgit2's "none" still follows same-host
        // ones): the credentials, the bearer header and the egress check are for that
        // host only, and libgit2 offers no hook to check another host's addresses.
        options.follow_redirects(RemoteRedirect::None);
        options.download_tags(git2::AutotagOption::None);
        if let Some(depth) = depth {
            options.depth(depth);
        }
        let header = bearer_header(credentials);
        options.custom_headers(&header.iter().map(String::as_str).collect::<Vec<_>>());
        anonymous_remote(repo, url, credentials)?.fetch(refspecs, Some(&mut options), None)
    };
    result.map_err(|error| failure(verdict, error, credentials))
}

/// A libgit2 error as a [`GitError`], its message scrubbed of secrets.
fn classify(error: git2::Error, credentials: &GitCredentials) -> GitError {
    let mut message = error.message().to_string();
    for secret in credentials.secrets() {
        message = message.replace(secret, "***");
    }
    let lower = message.to_ascii_lowercase();
    match error.code() {
        ErrorCode::Auth => GitError::AuthenticationFailed(message),
        ErrorCode::Certificate => GitError::CertificateInvalid(message),
        _ if lower.contains("401") || lower.contains("authentication required") => {
            GitError::AuthenticationFailed(message)
        }
        _ if lower.contains("certificate") => GitError::CertificateInvalid(message),
        _ if lower.contains("cannot redirect from") => GitError::RefusedByPolicy(format!(
            "{message}: redirects are followed only on the remote's own host and never from https to http, so that credentials and the egress policy apply; set spec.git.url to the repository's final URL"
        )),
        _ if lower.contains("couldn't find remote ref")
            || lower.contains("could not find remote ref")
            || lower.contains("not our ref") =>
        {
            GitError::ReferenceNotFound(format!(
                "{message}; check spec.git.ref: the branch or tag must exist on the remote"
            ))
        }
        _ if lower.contains("404")
            || lower.contains("repository not found")
            || lower.contains("does not appear to be a git repository")
            || lower.contains("not exported") =>
        {
            GitError::RepositoryNotFound(message)
        }
        _ if [
            "failed to connect",
            "failed to resolve",
            "timed out",
            "connection refused",
            "unreachable",
        ]
        .iter()
        .any(|sign| lower.contains(sign)) =>
        {
            GitError::Unreachable(message)
        }
        _ => GitError::Other(message),
    }
}

#[cfg(test)]
mod tests;
