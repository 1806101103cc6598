//! The git module against real repositories made with the git CLI and reached over file://
//! (the network transports are covered by tests/catalog_sync.rs).

use super::remote::*;
use super::tree::*;
use super::*;
use std::process::Command;

// The module's functions with the default egress policy (file:// remotes have no host).
fn fetch(
    cache_dir: &Path,
    url: &str,
    reference: &GitReference,
    credentials: &GitCredentials,
) -> Result<FetchedCommit, GitError> {
    super::fetch(
        cache_dir,
        url,
        reference,
        credentials,
        &EgressPolicy::default(),
    )
}

fn push_note(
    cache_dir: &Path,
    url: &str,
    credentials: &GitCredentials,
    commit: &str,
    notes_ref: &str,
    compose: &dyn Fn(Option<&str>) -> String,
) -> Result<(), GitError> {
    super::push_note(
        cache_dir,
        url,
        credentials,
        commit,
        notes_ref,
        compose,
        &EgressPolicy::default(),
    )
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

struct Remote {
    dir: tempfile::TempDir,
}

impl Remote {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "-b", "main"]);
        git(dir.path(), &["config", "user.name", "t"]);
        git(dir.path(), &["config", "user.email", "t@localhost"]);
        // Let a plain (non-bare) repository take pushes to refs it has not checked out.
        git(
            dir.path(),
            &["config", "receive.denyCurrentBranch", "ignore"],
        );
        Self { dir }
    }
    fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }
    fn commit(&self, files: &[(&str, &str)]) -> String {
        for (path, content) in files {
            let target = self.dir.path().join(path);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(target, content).unwrap();
        }
        git(self.dir.path(), &["add", "-A"]);
        git(
            self.dir.path(),
            &["commit", "-q", "--allow-empty", "-m", "c"],
        );
        git(self.dir.path(), &["rev-parse", "HEAD"])
    }
}

fn names(files: &[(String, Vec<u8>)]) -> Vec<&str> {
    files.iter().map(|(name, _)| name.as_str()).collect()
}

#[test]
fn a_branch_is_fetched_and_only_catalog_files_under_the_path_are_read() {
    let remote = Remote::new();
    let first = remote.commit(&[
        ("images/a.yaml", "a: 1\n"),
        ("images/nested/b.yml", "b: 2\n"),
        ("images/README.md", "no"),
        ("other/c.yaml", "c: 3\n"),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().join("cat");
    let branch = GitReference::Branch("main".into());
    let fetched = fetch(&cache, &remote.url(), &branch, &GitCredentials::default()).unwrap();
    assert_eq!(fetched.commit, first);

    let files = read_files(&cache, &first, "./images/").unwrap();
    assert_eq!(names(&files), ["images/a.yaml", "images/nested/b.yml"]);
    assert_eq!(files[0].1, b"a: 1\n");
    let all = read_files(&cache, &first, ".").unwrap();
    assert_eq!(all.len(), 3);
    assert!(read_files(&cache, &first, "missing").unwrap().is_empty());
    let one = read_files(&cache, &first, "other/c.yaml").unwrap();
    assert_eq!(names(&one), ["other/c.yaml"]);

    // The next fetch into the same cache follows the branch.
    let second = remote.commit(&[("images/a.yaml", "a: 2\n")]);
    let fetched = fetch(&cache, &remote.url(), &branch, &GitCredentials::default()).unwrap();
    assert_eq!(fetched.commit, second);
    assert_eq!(
        read_files(&cache, &second, "images").unwrap()[0].1,
        b"a: 2\n"
    );
}

#[test]
fn tags_and_commits_are_followed_and_a_missing_branch_says_so() {
    let remote = Remote::new();
    let tagged = remote.commit(&[("a.yaml", "a: 1\n")]);
    git(remote.dir.path(), &["tag", "-a", "-m", "v1", "v1"]);
    let later = remote.commit(&[("a.yaml", "a: 2\n")]);
    let cache = tempfile::tempdir().unwrap();
    let none = GitCredentials::default();

    let tag = fetch(
        cache.path(),
        &remote.url(),
        &GitReference::Tag("v1".into()),
        &none,
    )
    .unwrap();
    assert_eq!(tag.commit, tagged, "an annotated tag names its commit");
    let by_id = fetch(
        cache.path(),
        &remote.url(),
        &GitReference::Commit(later.clone()),
        &none,
    )
    .unwrap();
    assert_eq!(by_id.commit, later);

    let missing = fetch(
        cache.path(),
        &remote.url(),
        &GitReference::Branch("no-such-branch".into()),
        &none,
    )
    .err()
    .unwrap();
    assert_eq!(missing.reason(), "GitReferenceNotFound", "{missing}");
    let unknown_commit = fetch(
        cache.path(),
        &remote.url(),
        &GitReference::Commit("0123456789012345678901234567890123456789".into()),
        &none,
    )
    .err()
    .unwrap();
    assert_eq!(
        unknown_commit.reason(),
        "GitReferenceNotFound",
        "{unknown_commit}"
    );
}

#[test]
fn a_missing_repository_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/nothing-here", dir.path().display());
    let cache = tempfile::tempdir().unwrap();
    let error = fetch(
        cache.path(),
        &url,
        &GitReference::Branch("main".into()),
        &GitCredentials::default(),
    )
    .err()
    .unwrap();
    assert_ne!(error.reason(), "GitAuthenticationFailed", "{error}");
    assert!(error.to_string().contains("nothing-here"), "{error}");
}

#[test]
fn notes_are_pushed_composed_from_the_current_note_and_read_back_by_git() {
    let work = Remote::new();
    let commit = work.commit(&[("a.yaml", "a: 1\n")]);
    // libgit2 pushes over file:// only to bare repositories.
    let remote = Remote {
        dir: tempfile::tempdir().unwrap(),
    };
    git(
        remote.dir.path(),
        &[
            "clone",
            "-q",
            "--bare",
            work.dir.path().to_str().unwrap(),
            ".",
        ],
    );
    let cache = tempfile::tempdir().unwrap();
    let none = GitCredentials::default();
    let notes_ref = "refs/notes/image-catalog";
    push_note(
        cache.path(),
        &remote.url(),
        &none,
        &commit,
        notes_ref,
        &|current| {
            assert_eq!(current, None);
            "first\n".into()
        },
    )
    .unwrap();
    // Another writer's cache: it sees the first note and appends to it.
    let other_cache = tempfile::tempdir().unwrap();
    push_note(
        other_cache.path(),
        &remote.url(),
        &none,
        &commit,
        notes_ref,
        &|current| format!("{}second\n", current.unwrap_or_default()),
    )
    .unwrap();
    // The first writer, now behind the remote, must not lose the second writer's part.
    push_note(
        cache.path(),
        &remote.url(),
        &none,
        &commit,
        notes_ref,
        &|current| format!("{}third\n", current.unwrap_or_default()),
    )
    .unwrap();
    let shown = git(
        remote.dir.path(),
        &["notes", "--ref", "image-catalog", "show", &commit],
    );
    assert_eq!(shown, "first\nsecond\nthird");
}

#[test]
fn secrets_rules_and_redaction() {
    let data = |pairs: &[(&str, &str)]| -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.as_bytes().to_vec()))
            .collect()
    };
    let credentials =
        GitCredentials::from_secret_data(&data(&[("username", "bot\n"), ("password", "s3cret\n")]))
            .unwrap();
    assert_eq!(credentials.username.as_deref(), Some("bot"));
    assert_eq!(credentials.password.as_deref(), Some("s3cret"));
    assert!(!format!("{credentials:?}").contains("s3cret"));

    let no_user = GitCredentials::from_secret_data(&data(&[("password", "x")]))
        .err()
        .unwrap();
    assert_eq!(no_user.reason(), "GitCredentialsInvalid");
    let no_hosts = GitCredentials::from_secret_data(&data(&[("identity", "-----BEGIN")]))
        .err()
        .unwrap();
    assert!(no_hosts.to_string().contains("known_hosts"), "{no_hosts}");
    let bad_ca = GitCredentials::from_secret_data(&data(&[("ca.crt", "nope")]))
        .err()
        .unwrap();
    assert!(bad_ca.to_string().contains("ca.crt"), "{bad_ca}");

    let error = classify(
        git2::Error::from_str("remote said: bad password s3cret for https://bot:s3cret@host/x"),
        &credentials,
    );
    assert!(!error.to_string().contains("s3cret"), "{error}");
}

#[test]
fn a_server_certificate_signed_by_the_secrets_ca_is_accepted_and_others_are_not() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["git.example.com".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();

    let ca_pem = ca.pem().into_bytes();
    verify_with_ca(leaf.der(), "git.example.com", &ca_pem).unwrap();
    assert!(verify_with_ca(leaf.der(), "other.example.com", &ca_pem).is_err());
    let stranger_key = rcgen::KeyPair::generate().unwrap();
    let stranger = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&stranger_key)
        .unwrap();
    assert!(verify_with_ca(leaf.der(), "git.example.com", stranger.pem().as_bytes()).is_err());
}

#[test]
fn a_file_over_the_size_limit_is_refused_before_it_is_loaded_and_named() {
    let remote = Remote::new();
    let big = "#".repeat(crate::catalog::limits::MAX_FILE_BYTES + 1);
    let commit = remote.commit(&[
        ("images/a.yaml", "a: 1\n"),
        ("images/big.yaml", big.as_str()),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().join("cat");
    let branch = GitReference::Branch("main".into());
    fetch(&cache, &remote.url(), &branch, &GitCredentials::default()).unwrap();
    for path in ["images", "images/big.yaml"] {
        match read_files(&cache, &commit, path) {
            Err(GitError::CatalogTooLarge { path, message }) => {
                assert_eq!(path, "images/big.yaml");
                assert!(message.contains("more than the 4 MiB"), "{message}");
            }
            other => panic!("{path}: {other:?}"),
        }
    }
}

#[test]
fn remote_endpoints_are_read_from_urls_and_scp_forms() {
    let endpoint = |url: &str| remote_endpoint(url).map(|e| (e.scheme, e.host, e.port));
    assert_eq!(
        endpoint("https://user:pw@Git.Example:8443/c.git"),
        Some(("https".into(), "git.example".into(), 8443))
    );
    assert_eq!(
        endpoint("git://git.example/c.git"),
        Some(("git".into(), "git.example".into(), 9418))
    );
    assert_eq!(
        endpoint("git@git.example:org/c.git"),
        Some(("ssh".into(), "git.example".into(), 22))
    );
    assert_eq!(
        endpoint("ssh://[::1]:2222/c.git"),
        Some(("ssh".into(), "::1".into(), 2222))
    );
    assert_eq!(endpoint("file:///srv/c.git"), None);
    assert_eq!(endpoint("/srv/c.git"), None);
    assert_eq!(endpoint("./a:b/c.git"), None);
}

#[test]
fn secrets_never_travel_over_http_or_git_protocol() {
    let token = GitCredentials {
        bearer_token: Some("tok-123".into()),
        ..GitCredentials::default()
    };
    let policy = EgressPolicy::default();
    for url in ["http://git.example/c.git", "git://git.example/c.git"] {
        let error = check_remote(url, &token, &policy).unwrap_err();
        assert_eq!(error.reason(), "GitCredentialsInsecure", "{url}");
        assert!(!error.to_string().contains("tok-123"));
    }
    let error = check_remote(
        "http://u:hunter2@git.example/c.git",
        &GitCredentials::default(),
        &policy,
    )
    .unwrap_err();
    assert_eq!(error.reason(), "GitCredentialsInsecure");
    assert!(!error.to_string().contains("hunter2"));
    assert_eq!(plaintext_scheme("https://git.example/c.git"), None);
    assert_eq!(plaintext_scheme("git@git.example:c.git"), None);
}

#[test]
fn a_remote_on_a_refused_address_is_not_fetched() {
    let cache = tempfile::tempdir().unwrap();
    let policy = EgressPolicy::from_flags(&["127.0.0.0/8".into()], &[]).unwrap();
    // Refused before libgit2 connects: nothing listens there, and nothing is tried.
    let error = super::fetch(
        cache.path(),
        "https://127.0.0.1:9/c.git",
        &GitReference::Branch("main".into()),
        &GitCredentials::default(),
        &policy,
    )
    .err()
    .unwrap();
    assert_eq!(error.reason(), "GitRemoteRefusedByPolicy", "{error}");
    let text = error.to_string();
    assert!(text.contains("127.0.0.1 (a loopback address)"), "{text}");
    assert!(text.contains("--source-allow 127.0.0.1/32"), "{text}");
    // localhost resolves (to loopback) before libgit2 connects: refused by its addresses.
    let error = super::fetch(
        cache.path(),
        "ssh://git@localhost:9/c.git",
        &GitReference::Branch("main".into()),
        &GitCredentials::default(),
        &policy,
    )
    .err()
    .unwrap();
    assert_eq!(error.reason(), "GitRemoteRefusedByPolicy", "{error}");
}
