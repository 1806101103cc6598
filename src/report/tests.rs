use super::*;

fn check(commit: &str, state: CheckState, description: &str) -> CommitCheck {
    CommitCheck {
        commit: commit.into(),
        context: "ctx".into(),
        state,
        description: description.into(),
        details: Vec::new(),
        target_url: None,
    }
}

#[test]
fn the_queue_keeps_the_newest_update_per_commit_and_context() {
    let mut queue = Queue::default();
    queue.push(check("a", CheckState::Pending, "1"));
    queue.push(check("b", CheckState::Pending, "1"));
    queue.push(check("a", CheckState::Success, "2"));
    let (key, first) = queue.pop().unwrap();
    assert_eq!(key.0, "a");
    assert_eq!(first.description, "2");
    // A failed older update does not overwrite a newer one that arrived meanwhile.
    queue.push(check("a", CheckState::Failure, "3"));
    queue.requeue(key, first);
    assert_eq!(queue.pop().unwrap().1.commit, "b");
    assert_eq!(queue.pop().unwrap().1.description, "3");
    assert!(queue.pop().is_none());
}

#[test]
fn the_queue_is_bounded() {
    let mut queue = Queue::default();
    for i in 0..MAX_QUEUED {
        assert!(
            queue
                .push(check(&i.to_string(), CheckState::Pending, ""))
                .is_none()
        );
    }
    let evicted = queue.push(check("new", CheckState::Pending, "")).unwrap();
    assert_eq!(evicted.commit, "0");
    assert_eq!(queue.items.len(), MAX_QUEUED);
}

#[test]
fn fingerprints_tell_visible_changes_apart() {
    let base = check("a", CheckState::Pending, "Importing");
    assert_eq!(fingerprint(&base), fingerprint(&base.clone()));
    let mut changed = base.clone();
    changed.state = CheckState::Success;
    assert_ne!(fingerprint(&base), fingerprint(&changed));
    let mut changed = base.clone();
    changed.target_url = Some(String::new());
    assert_ne!(fingerprint(&base), fingerprint(&changed));
    let mut with_row = base.clone();
    with_row.details.push(ImageRow {
        name: "ubuntu".into(),
        phase: "Ready".into(),
        progress: None,
        message: Some("x".into()),
    });
    let mut other_row = with_row.clone();
    other_row.details[0].progress = Some("x".into());
    other_row.details[0].message = None;
    assert_ne!(fingerprint(&with_row), fingerprint(&other_row));
}

#[test]
fn bounded_maps_forget_the_oldest() {
    let mut map = Bounded::new(2);
    map.insert(1, "a");
    map.insert(2, "b");
    map.insert(1, "c");
    map.insert(3, "d");
    assert_eq!(map.get(&1), None);
    assert_eq!(map.get(&2), Some(&"b"));
    map.remove(&2);
    assert_eq!(map.order.len(), 1);
}

fn config(
    kind: ProviderKind,
    api_url: &str,
    repository: &str,
    credentials: ForgeCredentials,
) -> ForgeConfig {
    ForgeConfig {
        kind,
        api_url: api_url.into(),
        repository: repository.into(),
        credentials,
        ca_pem: None,
    }
}

fn error(config: ForgeConfig) -> String {
    match Reporter::new(config) {
        Ok(_) => panic!("expected an error"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn configuration_errors_say_what_to_fix_without_secrets() {
    let token = || ForgeCredentials::Token("s3cr3t-token".into());
    let gh = ProviderKind::GitHubStatus;
    assert!(error(config(gh, "not a url", "o/r", token())).contains("API URL"));
    let leaked = error(config(
        gh,
        "https://user:s3cr3t-token@h/api",
        "o/r",
        token(),
    ));
    assert!(!leaked.contains("s3cr3t"), "{leaked}");
    assert!(error(config(gh, "ftp://h", "o/r", token())).contains("scheme"));
    assert!(error(config(gh, "https://h", "o/r/x", token())).contains("owner/name"));
    assert!(error(config(gh, "https://h", "", token())).contains("empty"));
    let bad_header = error(config(
        gh,
        "https://h",
        "o/r",
        ForgeCredentials::Token("s3cr3t\u{7f}x".into()),
    ));
    assert!(!bad_header.contains("s3cr3t"), "{bad_header}");
    assert!(
        error(config(
            ProviderKind::GitHubCheckRun,
            "https://h",
            "o/r",
            token()
        ))
        .contains("GitHub App")
    );
    let app = ForgeCredentials::GitHubApp {
        app_id: "1".into(),
        installation_id: "2".into(),
        private_key_pem:
            "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0\n-----END RSA PRIVATE KEY-----\n".into(),
    };
    let bad_key = error(config(
        ProviderKind::GitHubCheckRun,
        "https://h",
        "o/r",
        app,
    ));
    assert!(bad_key.contains("private key"), "{bad_key}");
    assert!(!bad_key.contains("c2VjcmV0"), "{bad_key}");
    let mut with_ca = config(gh, "https://h", "o/r", token());
    with_ca.ca_pem = Some(b"not pem".to_vec());
    assert!(error(with_ca).contains("CA"));
    let ca = rcgen::generate_simple_self_signed(vec!["forge.internal".into()]).unwrap();
    let mut with_ca = config(gh, "https://forge.internal/api/v3", "o/r", token());
    with_ca.ca_pem = Some(ca.cert.pem().into_bytes());
    assert!(Reporter::new(with_ca).is_ok(), "a PEM CA is accepted");
}

#[test]
fn repositories_become_url_paths() {
    assert_eq!(
        repository_path(ProviderKind::GitLab, "group/sub/name").unwrap(),
        "group%2Fsub%2Fname"
    );
    assert_eq!(repository_path(ProviderKind::GitLab, "42").unwrap(), "42");
    assert_eq!(
        repository_path(ProviderKind::Gitea, "/owner/repo/").unwrap(),
        "owner/repo"
    );
    assert!(repository_path(ProviderKind::GitHubStatus, "owner/../x").is_err());
    assert_eq!(
        api_base("https://gitea.example/api/v1/").unwrap(),
        "https://gitea.example/api/v1"
    );
}
