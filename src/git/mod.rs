//! Git for catalogs: fetch one revision of a remote into a bare cache repository, read the
//! catalog files of a commit, and push notes. Blocking (libgit2): callers run it on
//! `spawn_blocking`.
//!
//! Remotes over `https://`, `http://`, `ssh://` (and `user@host:path`), `git://` and `file://`.
//! Credentials come from a Secret and never reach an error message: libgit2's messages are
//! scrubbed of every secret before they leave this module.

pub mod known_hosts;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

use git2::{
    CertificateCheckStatus, Cred, CredentialType, ErrorCode, FetchOptions, PushOptions,
    RemoteCallbacks, RemoteRedirect, Repository,
};

use known_hosts::HostKeyCheck;

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

/// The largest catalog read from a commit: files are held in memory while validated.
const MAX_CATALOG_BYTES: usize = 64 << 20;
/// The most files a catalog may have.
const MAX_CATALOG_FILES: usize = 10_000;

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

/// What the callbacks decided, kept because libgit2 turns callback errors into its own
/// (which say less).
type CallbackVerdict = RefCell<Option<GitError>>;

/// The callbacks' own error if they refused, else libgit2's, classified.
fn failure(verdict: CallbackVerdict, error: git2::Error, credentials: &GitCredentials) -> GitError {
    verdict
        .into_inner()
        .unwrap_or_else(|| classify(error, credentials))
}

/// Credentials and server verification for one remote operation.
fn callbacks<'a>(
    url: &'a str,
    credentials: &'a GitCredentials,
    verdict: &'a CallbackVerdict,
) -> RemoteCallbacks<'a> {
    let mut callbacks = RemoteCallbacks::new();
    let mut attempts = 0;
    let own_host = remote_endpoint(url).map(|endpoint| endpoint.host);
    callbacks.credentials(move |asking_url, username_from_url, allowed| {
        // Answer only for the remote's own host: redirects are kept on it (see
        // `run_fetch`), and this holds even if libgit2 ever followed one elsewhere.
        let asking_host = remote_endpoint(asking_url).map(|endpoint| endpoint.host);
        if asking_host != own_host {
            let error = GitError::RefusedByPolicy(format!(
                "{} asks for credentials, but they are only given to {}; set spec.git.url to the repository's own host",
                asking_host.as_deref().unwrap_or("another host"),
                own_host.as_deref().unwrap_or("the remote's host")
            ));
            let message = error.to_string();
            *verdict.borrow_mut() = Some(error);
            return Err(git2::Error::from_str(&message));
        }
        attempts += 1;
        if attempts > 1 {
            // libgit2 asks again when the server refused what we gave: stop, or it loops.
            let error = GitError::AuthenticationFailed(
                "the server refused the credentials in the Secret; check them and that they may read the repository".into(),
            );
            let message = error.to_string();
            *verdict.borrow_mut() = Some(error);
            return Err(git2::Error::from_str(&message));
        }
        let username = credentials
            .username
            .as_deref()
            .or(username_from_url)
            .unwrap_or("git");
        if allowed.contains(CredentialType::SSH_KEY)
            && let Some(key) = &credentials.ssh_private_key
        {
            return Cred::ssh_key_from_memory(
                username,
                None,
                key,
                credentials.ssh_passphrase.as_deref(),
            );
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
            && let (Some(user), Some(password)) = (&credentials.username, &credentials.password)
        {
            return Cred::userpass_plaintext(user, password);
        }
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(username);
        }
        let error = GitError::AuthenticationFailed(
            "the server asks for credentials the Secret does not have (username and password for HTTPS, identity for SSH)".into(),
        );
        let message = error.to_string();
        *verdict.borrow_mut() = Some(error);
        Err(git2::Error::from_str(&message))
    });
    callbacks.certificate_check(move |cert, host| {
        if let Some(hostkey) = cert.as_hostkey() {
            let Some(key) = hostkey.hostkey() else {
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let name = known_hosts::lookup_name(host, ssh_port(url));
            let error = match credentials
                .known_hosts
                .as_deref()
                .map(|file| known_hosts::check(file, &name, key))
            {
                Some(HostKeyCheck::Trusted) => return Ok(CertificateCheckStatus::CertificateOk),
                Some(HostKeyCheck::Mismatch) => GitError::HostKeyMismatch { host: name },
                Some(HostKeyCheck::Revoked) => GitError::HostKeyRevoked { host: name },
                Some(HostKeyCheck::UnknownHost) | None => GitError::HostKeyUnknown { host: name },
            };
            let message = error.to_string();
            *verdict.borrow_mut() = Some(error);
            return Err(git2::Error::from_str(&message));
        }
        if let (Some(x509), Some(ca_pem)) = (cert.as_x509(), &credentials.ca_pem) {
            return match verify_with_ca(x509.data(), host, ca_pem) {
                Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                // Not signed by the extra CA: the system roots decide.
                Err(_) => Ok(CertificateCheckStatus::CertificatePassthrough),
            };
        }
        Ok(CertificateCheckStatus::CertificatePassthrough)
    });
    callbacks
}

/// Where a remote URL connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    scheme: String,
    /// Lower case, without IPv6 brackets.
    host: String,
    port: u16,
    /// The URL carries a password (`https://user:secret@host/...`).
    has_password: bool,
}

/// The endpoint of `url`: `scheme://[user[:password]@]host[:port]/path` or scp-like
/// `[user@]host:path` (SSH). None for local paths and `file://`.
fn remote_endpoint(url: &str) -> Option<Endpoint> {
    if url.contains("://") {
        let parsed = url::Url::parse(url).ok()?;
        let scheme = parsed.scheme().to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            "ssh" | "git+ssh" | "ssh+git" => 22,
            "git" => 9418,
            _ => return None,
        };
        let host = parsed
            .host_str()?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        return Some(Endpoint {
            scheme,
            host,
            port: parsed.port().unwrap_or(default_port),
            has_password: parsed.password().is_some(),
        });
    }
    // scp-like: a colon before any slash.
    let colon = url.find(':')?;
    if url[..colon].contains('/') {
        return None;
    }
    let authority = &url[..colon];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| Endpoint {
        scheme: "ssh".into(),
        host: host.to_ascii_lowercase(),
        port: 22,
        has_password: false,
    })
}

/// `http` or `git` when `url` travels unencrypted. Pure.
pub fn plaintext_scheme(url: &str) -> Option<&'static str> {
    match remote_endpoint(url)?.scheme.as_str() {
        "http" => Some("http"),
        "git" => Some("git"),
        _ => None,
    }
}

/// Before libgit2 connects: no secrets over a plaintext transport, and the remote's host
/// and its addresses pass the egress policy. libgit2 resolves the name again on its own, so
/// a name whose DNS answer changes between the two lookups is not caught; without a hook
/// into libgit2's connect this is the best available, and redirects to other hosts are not
/// followed at all (see `run_fetch`).
fn check_remote(
    url: &str,
    credentials: &GitCredentials,
    egress: &EgressPolicy,
) -> Result<(), GitError> {
    let Some(endpoint) = remote_endpoint(url) else {
        return Ok(());
    };
    if let Some(scheme) = plaintext_scheme(url)
        && (credentials.has_secrets() || endpoint.has_password)
    {
        return Err(GitError::CredentialsInsecure(format!(
            "credentials are never sent over {scheme}://, which is unencrypted; use an https:// or ssh:// URL for {}",
            endpoint.host
        )));
    }
    crate::egress::check_resolved_blocking(egress, &endpoint.host, endpoint.port).map_err(
        |refusal| GitError::RefusedByPolicy(format!("the Git remote is not fetched: {refusal}")),
    )
}

/// The port of an `ssh://` URL, if it names one.
fn ssh_port(url: &str) -> Option<u16> {
    url::Url::parse(url)
        .ok()
        .filter(|parsed| parsed.scheme() == "ssh")
        .and_then(|parsed| parsed.port())
}

/// Verifies a server's leaf certificate against the CA bundle of the Secret. libgit2 hands
/// over only the leaf, so intermediates must be in the bundle.
fn verify_with_ca(leaf_der: &[u8], host: &str, ca_pem: &[u8]) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    crate::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem) {
        let der = der.map_err(|error| format!("ca.crt: {error}"))?;
        roots.add(der).map_err(|error| format!("ca.crt: {error}"))?;
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder(std::sync::Arc::new(roots))
        .build()
        .map_err(|error| error.to_string())?;
    let name = ServerName::try_from(host.to_string()).map_err(|error| error.to_string())?;
    verifier
        .verify_server_cert(
            &CertificateDer::from(leaf_der.to_vec()),
            &[],
            &name,
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|error| error.to_string())
}

/// `Authorization: Bearer` for servers that take a token that way (libgit2 has no bearer
/// credential type).
fn bearer_header(credentials: &GitCredentials) -> Option<String> {
    credentials
        .bearer_token
        .as_ref()
        .map(|token| format!("Authorization: Bearer {token}"))
}

/// A remote for `url` that is not saved in the cache's config: the URL may carry secrets.
fn anonymous_remote<'r>(
    repo: &'r Repository,
    url: &str,
    credentials: &GitCredentials,
) -> Result<git2::Remote<'r>, GitError> {
    repo.remote_anonymous(url)
        .map_err(|error| classify(error, credentials))
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

/// The `*.yaml` and `*.yml` files under `path` (relative to the repository root; `.` or
/// empty is the root) of `commit`, sorted by path. A missing path gives no files: the
/// caller says what that means. Symlinks and submodules are skipped.
pub fn read_files(
    cache_dir: &Path,
    commit: &str,
    path: &str,
) -> Result<Vec<(String, Vec<u8>)>, GitError> {
    let repo = Repository::open_bare(cache_dir).map_err(|error| {
        GitError::Other(format!(
            "opening the Git cache {}: {}",
            cache_dir.display(),
            error.message()
        ))
    })?;
    let other = |error: git2::Error| {
        GitError::Other(format!("reading commit {commit}: {}", error.message()))
    };
    let commit_object = repo
        .revparse_single(commit)
        .and_then(|object| object.peel_to_commit())
        .map_err(other)?;
    let root = commit_object.tree().map_err(other)?;
    let prefix = normalize_path(path);
    let tree = if prefix.is_empty() {
        root
    } else {
        match root.get_path(Path::new(&prefix)) {
            Ok(entry) => match entry.to_object(&repo).map_err(other)?.into_tree() {
                Ok(tree) => tree,
                // The path names one file: the catalog is that file.
                Err(object) => {
                    if object.kind() != Some(git2::ObjectType::Blob) || !is_catalog_file(&prefix) {
                        return Ok(Vec::new());
                    }
                    let content = Budget::default().read(&repo, object.id(), &prefix, &other)?;
                    return Ok(vec![(prefix.clone(), content)]);
                }
            },
            Err(error) if error.code() == ErrorCode::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(other(error)),
        }
    };
    let mut files = Vec::new();
    let mut budget = Budget::default();
    let mut failure = None;
    tree.walk(git2::TreeWalkMode::PreOrder, |parent, entry| {
        if entry.filemode() != i32::from(git2::FileMode::Blob)
            && entry.filemode() != i32::from(git2::FileMode::BlobExecutable)
        {
            return git2::TreeWalkResult::Ok;
        }
        let Ok(name) = entry.name() else {
            return git2::TreeWalkResult::Ok;
        };
        let relative = if prefix.is_empty() {
            format!("{parent}{name}")
        } else {
            format!("{prefix}/{parent}{name}")
        };
        if !is_catalog_file(&relative) {
            return git2::TreeWalkResult::Ok;
        }
        match budget.read(&repo, entry.id(), &relative, &other) {
            Ok(content) => {
                files.push((relative, content));
                git2::TreeWalkResult::Ok
            }
            Err(error) => {
                failure = Some(error);
                git2::TreeWalkResult::Abort
            }
        }
    })
    .map_err(|error| failure.take().unwrap_or_else(|| other(error)))?;
    if let Some(failure) = failure {
        return Err(failure);
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// What a commit's catalog may hold, checked from each object's header before its blob is
/// loaded, so a hostile commit costs no memory.
#[derive(Default)]
struct Budget {
    files: usize,
    bytes: usize,
}

impl Budget {
    /// The content of the blob `id` at `path`, if it fits.
    fn read(
        &mut self,
        repo: &Repository,
        id: git2::Oid,
        path: &str,
        failed: &dyn Fn(git2::Error) -> GitError,
    ) -> Result<Vec<u8>, GitError> {
        self.files += 1;
        if self.files > MAX_CATALOG_FILES {
            return Err(GitError::CatalogTooLarge {
                path: path.to_string(),
                message: format!(
                    "the catalog has more than {MAX_CATALOG_FILES} files; split it across catalogs"
                ),
            });
        }
        let (size, _) = repo
            .odb()
            .and_then(|odb| odb.read_header(id))
            .map_err(failed)?;
        if size > MAX_FILE_BYTES {
            return Err(GitError::CatalogTooLarge {
                path: path.to_string(),
                message: format!(
                    "the file has {size} bytes, more than the {} MiB a catalog file may have; split it into several files",
                    MAX_FILE_BYTES >> 20
                ),
            });
        }
        self.bytes += size;
        if self.bytes > MAX_CATALOG_BYTES {
            return Err(GitError::CatalogTooLarge {
                path: path.to_string(),
                message: format!(
                    "with this file the catalog files are larger than {} MiB together; split the catalog",
                    MAX_CATALOG_BYTES >> 20
                ),
            });
        }
        let blob = repo.find_blob(id).map_err(failed)?;
        Ok(blob.content().to_vec())
    }
}

fn is_catalog_file(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml")
}

/// `./images/` → `images`; `.` and `/` → the root.
fn normalize_path(path: &str) -> String {
    path.split('/')
        .filter(|segment| !segment.is_empty() && *segment != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Writes the note of `commit` under `notes_ref` in the remote `url`: fetches the remote's
/// notes, computes the new text from the current one with `compose` (so that other writers'
/// parts of a note survive), commits and pushes. Retries when another writer pushed first.
pub fn push_note(
    cache_dir: &Path,
    url: &str,
    credentials: &GitCredentials,
    commit: &str,
    notes_ref: &str,
    compose: &dyn Fn(Option<&str>) -> String,
    egress: &EgressPolicy,
) -> Result<(), GitError> {
    let repo = open_cache(cache_dir)?;
    let target = git2::Oid::from_str(commit)
        .map_err(|_| GitError::Other(format!("{commit} is not a commit id")))?;
    let mut last_error = None;
    for _ in 0..4 {
        let refspec = format!("+{notes_ref}:{notes_ref}");
        match run_fetch(&repo, url, credentials, egress, &[refspec.as_str()], None) {
            Ok(()) => {}
            // No notes on the remote yet: start them.
            Err(GitError::ReferenceNotFound(_)) => {
                if let Ok(mut reference) = repo.find_reference(notes_ref) {
                    let _ = reference.delete();
                }
            }
            Err(error) => return Err(error),
        }
        let current = repo
            .find_note(Some(notes_ref), target)
            .ok()
            .and_then(|note| note.message().ok().map(str::to_string));
        let text = compose(current.as_deref());
        if current.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        let signature = git2::Signature::now("image-catalog", "image-catalog@localhost")
            .map_err(|error| GitError::Other(error.message().to_string()))?;
        repo.note(&signature, &signature, Some(notes_ref), target, &text, true)
            .map_err(|error| GitError::Other(format!("writing the note: {}", error.message())))?;
        match run_push(&repo, url, credentials, egress, notes_ref) {
            Ok(()) => return Ok(()),
            // Someone else pushed notes in between: fetch theirs and compose again.
            Err(error @ GitError::PushRejected(_)) => last_error = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last_error.unwrap_or_else(|| GitError::Other("the note push did not settle".into())))
}

fn run_push(
    repo: &Repository,
    url: &str,
    credentials: &GitCredentials,
    egress: &EgressPolicy,
    reference: &str,
) -> Result<(), GitError> {
    check_remote(url, credentials, egress)?;
    let verdict = CallbackVerdict::default();
    let rejected = RefCell::new(None::<String>);
    let result = {
        let mut callbacks = callbacks(url, credentials, &verdict);
        callbacks.push_update_reference(|name, status| {
            if let Some(status) = status {
                *rejected.borrow_mut() = Some(format!("{name}: {status}"));
            }
            Ok(())
        });
        let mut options = PushOptions::new();
        options.remote_callbacks(callbacks);
        // As in `run_fetch`: redirects stay on the remote's host.
        options.follow_redirects(RemoteRedirect::None);
        let header = bearer_header(credentials);
        options.custom_headers(&header.iter().map(String::as_str).collect::<Vec<_>>());
        anonymous_remote(repo, url, credentials)?
            .push(&[format!("{reference}:{reference}")], Some(&mut options))
    };
    result.map_err(|error| match failure(verdict, error, credentials) {
        GitError::Other(message)
            if message.contains("non-fast-forward") || message.contains("rejected") =>
        {
            GitError::PushRejected(message)
        }
        other => other,
    })?;
    match rejected.into_inner() {
        Some(status) => Err(GitError::PushRejected(status)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
