//! Reaching a remote: credentials only to the remote's own host and never over a plaintext
//! transport, host keys against known_hosts, TLS against the catalog's CA, redirects checked.

use super::*;

/// What the callbacks decided, kept because libgit2 turns callback errors into its own
/// (which say less).
pub(super) type CallbackVerdict = RefCell<Option<GitError>>;

/// The callbacks' own error if they refused, else libgit2's, classified.
pub(super) fn failure(
    verdict: CallbackVerdict,
    error: git2::Error,
    credentials: &GitCredentials,
) -> GitError {
    verdict
        .into_inner()
        .unwrap_or_else(|| classify(error, credentials))
}

/// Credentials and server verification for one remote operation.
pub(super) fn callbacks<'a>(
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
pub(super) struct Endpoint {
    pub(super) scheme: String,
    /// Lower case, without IPv6 brackets.
    pub(super) host: String,
    pub(super) port: u16,
    /// The URL carries a password (`https://user:secret@host/...`).
    has_password: bool,
}

/// The endpoint of `url`: `scheme://[user[:password]@]host[:port]/path` or scp-like
/// `[user@]host:path` (SSH). None for local paths and `file://`.
pub(super) fn remote_endpoint(url: &str) -> Option<Endpoint> {
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
pub(super) fn check_remote(
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
pub(super) fn verify_with_ca(leaf_der: &[u8], host: &str, ca_pem: &[u8]) -> Result<(), String> {
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
pub(super) fn bearer_header(credentials: &GitCredentials) -> Option<String> {
    credentials
        .bearer_token
        .as_ref()
        .map(|token| format!("Authorization: Bearer {token}"))
}

/// A remote for `url` that is not saved in the cache's config: the URL may carry secrets.
pub(super) fn anonymous_remote<'r>(
    repo: &'r Repository,
    url: &str,
    credentials: &GitCredentials,
) -> Result<git2::Remote<'r>, GitError> {
    repo.remote_anonymous(url)
        .map_err(|error| classify(error, credentials))
}
