//! Commit checks against a fake forge that enforces each provider's API and limits: what a
//! user sees on the commit, and how the reporter copes with rate limits and outages.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::forge::{Call, FakeForge, Fault, Flavor};
use image_catalog::report::{
    CheckState, CommitCheck, ForgeConfig, ForgeCredentials, ImageRow, ProviderKind, Reporter,
};

const SHA: &str = "4f1e7c3b2a9d8e6f5a4b3c2d1e0f9a8b7c6d5e4f";
const OTHER_SHA: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567";
const WAIT: Duration = Duration::from_secs(20);

fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn reporter(
    kind: ProviderKind,
    forge: &FakeForge,
    repository: &str,
    credentials: ForgeCredentials,
) -> Reporter {
    Reporter::new(ForgeConfig {
        kind,
        api_url: forge.api_url(),
        repository: repository.into(),
        credentials,
        ca_pem: None,
    })
    .expect("the reporter is configured")
}

fn check(commit: &str, context: &str, state: CheckState, description: &str) -> CommitCheck {
    CommitCheck {
        commit: commit.into(),
        context: context.into(),
        state,
        description: description.into(),
        details: Vec::new(),
        target_url: Some("https://catalog.example/catalogs/prod".into()),
    }
}

fn accepted_on(forge: &FakeForge, path_end: &str) -> Vec<Call> {
    forge
        .accepted()
        .into_iter()
        .filter(|c| c.path.ends_with(path_end))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_statuses_land_on_the_commit_within_limits_and_once() {
    init();
    let forge = FakeForge::start(Flavor::GitHub {
        token: "ghp_secret".into(),
        repository: "acme/catalog".into(),
    });
    let reporter = reporter(
        ProviderKind::GitHubStatus,
        &forge,
        "acme/catalog",
        ForgeCredentials::Token("ghp_secret".into()),
    );
    let context = "image-catalog/prod";
    reporter.report(check(
        SHA,
        context,
        CheckState::Pending,
        "Importing 2 images",
    ));
    forge
        .wait_until("the pending status", WAIT, |f| f.accepted().len() == 1)
        .await;
    reporter.report(check(SHA, context, CheckState::Success, "2 images Ready"));
    forge
        .wait_until("the success status", WAIT, |f| f.accepted().len() == 2)
        .await;
    let calls = forge.accepted();
    for call in &calls {
        assert_eq!(call.method, "POST");
        assert_eq!(call.path, format!("/repos/acme/catalog/statuses/{SHA}"));
        assert_eq!(call.body["context"], context);
        assert_eq!(
            call.body["target_url"],
            "https://catalog.example/catalogs/prod"
        );
    }
    assert_eq!(calls[0].body["state"], "pending");
    assert_eq!(calls[1].body["state"], "success");
    assert_eq!(calls[1].body["description"], "2 images Ready");

    // A long description with emoji: GitHub would refuse it (422); it arrives cut down.
    let long = format!("Importing ✅🚀 2 images: {}", "é".repeat(300));
    reporter.report(check(OTHER_SHA, context, CheckState::Pending, &long));
    forge
        .wait_until("the long status", WAIT, |f| f.accepted().len() == 3)
        .await;
    let description = forge.accepted()[2].body["description"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(description.chars().count() <= 140, "{description}");
    assert!(
        description.chars().all(|c| (c as u32) <= 0xFFFF),
        "{description}"
    );
    assert!(
        description.starts_with("Importing ✅ 2 images: éé") && description.ends_with('…'),
        "{description}"
    );

    // The same success again posts nothing: the update after it arrives alone.
    reporter.report(check(SHA, context, CheckState::Success, "2 images Ready"));
    reporter.report(check(
        SHA,
        "image-catalog/marker",
        CheckState::Success,
        "marker",
    ));
    forge
        .wait_until("the marker status", WAIT, |f| f.accepted().len() == 4)
        .await;
    let calls = forge.calls();
    assert_eq!(calls.len(), 4, "{calls:#?}");
    assert_eq!(calls[3].body["context"], "image-catalog/marker");
}

/// A PKCS#1 PEM RSA key, as GitHub hands out App keys, and its public key (PKCS#1 DER).
fn app_key() -> (String, Vec<u8>) {
    let output = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "2048"])
        .output()
        .expect("openssl runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pem = String::from_utf8(output.stdout).unwrap();
    assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "{pem}");
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let key = aws_lc_rs::signature::RsaKeyPair::from_der(&der).unwrap();
    let public = aws_lc_rs::signature::KeyPair::public_key(&key)
        .as_ref()
        .to_vec();
    (pem, public)
}

fn row(name: &str, phase: &str, progress: Option<&str>, message: Option<&str>) -> ImageRow {
    ImageRow {
        name: name.into(),
        phase: phase.into(),
        progress: progress.map(Into::into),
        message: message.map(Into::into),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_check_runs_use_app_tokens_and_are_updated_in_place() {
    init();
    let (pem, public_key) = app_key();
    let forge = FakeForge::start(Flavor::GitHubApp {
        app_id: "123456".into(),
        installation_id: "987".into(),
        public_key,
        repository: "acme/catalog".into(),
    });
    let reporter = reporter(
        ProviderKind::GitHubCheckRun,
        &forge,
        "acme/catalog",
        ForgeCredentials::GitHubApp {
            app_id: "123456".into(),
            installation_id: "987".into(),
            private_key_pem: pem,
        },
    );
    let context = "image-catalog/prod";
    let mut pending = check(SHA, context, CheckState::Pending, "Importing 2 images");
    pending.details = vec![
        row("ubuntu-24.04", "Importing", Some("42%"), None),
        row("alpine-3.20", "Pending", None, Some("waiting | for a slot")),
    ];
    reporter.report(pending.clone());
    forge
        .wait_until("the check run", WAIT, |f| f.accepted().len() == 1)
        .await;
    let mut done = pending.clone();
    done.state = CheckState::Success;
    done.description = "2 images Ready".into();
    done.details = vec![
        row("ubuntu-24.04", "Ready", Some("100%"), None),
        row("alpine-3.20", "Ready", Some("100%"), None),
    ];
    reporter.report(done);
    forge
        .wait_until("the check run update", WAIT, |f| f.accepted().len() == 2)
        .await;

    let calls = forge.calls();
    let tokens: Vec<_> = calls
        .iter()
        .filter(|c| c.path.ends_with("/access_tokens"))
        .collect();
    assert_eq!(
        tokens.len(),
        1,
        "the installation token is reused: {calls:#?}"
    );
    assert_eq!(tokens[0].path, "/app/installations/987/access_tokens");
    assert!(tokens[0].accepted(), "GitHub accepted the App JWT");

    let runs = forge.accepted();
    assert_eq!(runs[0].method, "POST");
    assert_eq!(runs[0].path, "/repos/acme/catalog/check-runs");
    assert_eq!(runs[0].body["name"], context);
    assert_eq!(runs[0].body["head_sha"], SHA);
    assert_eq!(runs[0].body["status"], "in_progress");
    assert_eq!(
        runs[0].body["details_url"],
        "https://catalog.example/catalogs/prod"
    );
    let text = runs[0].body["output"]["text"].as_str().unwrap();
    assert!(
        text.contains("| ubuntu-24.04 | Importing | 42% |  |"),
        "{text}"
    );
    assert!(
        text.contains("| alpine-3.20 | Pending |  | waiting \\| for a slot |"),
        "{text}"
    );

    assert_eq!(runs[1].method, "PATCH");
    assert_eq!(runs[1].path, "/repos/acme/catalog/check-runs/4001");
    assert_eq!(runs[1].body["status"], "completed");
    assert_eq!(runs[1].body["conclusion"], "success");
    assert_eq!(runs[1].body["output"]["title"], "2 images Ready");
    let text = runs[1].body["output"]["text"].as_str().unwrap();
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("| Ready | 100% |"))
            .count(),
        2,
        "{text}"
    );

    // A commit a newer one replaced ends as cancelled; meanwhile the App was reinstalled, so
    // the cached installation token is refused and a new one is fetched.
    forge.revoke_installation_tokens();
    let mut superseded = check(OTHER_SHA, context, CheckState::Pending, "Importing");
    reporter.report(superseded.clone());
    forge
        .wait_until("the second check run", WAIT, |f| f.accepted().len() == 3)
        .await;
    superseded.state = CheckState::Superseded;
    superseded.description = "Superseded".into();
    reporter.report(superseded);
    forge
        .wait_until("the cancelled check run", WAIT, |f| f.accepted().len() == 4)
        .await;
    let runs = forge.accepted();
    assert_eq!(runs[3].path, "/repos/acme/catalog/check-runs/4002");
    assert_eq!(runs[3].body["conclusion"], "cancelled");
    let calls = forge.calls();
    assert_eq!(
        calls.iter().filter(|c| c.status == 401).count(),
        1,
        "{calls:#?}"
    );
    let tokens = calls
        .iter()
        .filter(|c| c.path.ends_with("/access_tokens") && c.accepted());
    assert_eq!(tokens.count(), 2, "a new token after the revocation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitea_statuses_use_the_token_header_and_gitea_states() {
    init();
    let forge = FakeForge::start(Flavor::Gitea {
        token: "gitea-secret".into(),
        repository: "acme/catalog".into(),
    });
    let reporter = reporter(
        ProviderKind::Gitea,
        &forge,
        "acme/catalog",
        ForgeCredentials::Token("gitea-secret".into()),
    );
    let states = [
        (SHA, CheckState::Pending, "pending"),
        (SHA, CheckState::Failure, "failure"),
        (OTHER_SHA, CheckState::Error, "error"),
        (OTHER_SHA, CheckState::Superseded, "warning"),
        (SHA, CheckState::Success, "success"),
    ];
    for (index, (sha, state, _)) in states.iter().enumerate() {
        reporter.report(check(
            sha,
            "image-catalog/prod",
            *state,
            &format!("step {index}"),
        ));
        forge
            .wait_until("the status", WAIT, |f| f.accepted().len() == index + 1)
            .await;
    }
    let calls = forge.calls();
    assert_eq!(
        calls.len(),
        states.len(),
        "every call was accepted: {calls:#?}"
    );
    for (call, (sha, _, expected)) in calls.iter().zip(states) {
        assert_eq!(
            call.path,
            format!("/api/v1/repos/acme/catalog/statuses/{sha}")
        );
        assert_eq!(call.body["state"], expected);
        assert_eq!(call.body["context"], "image-catalog/prod");
    }

    // A wrong token is refused by the forge and dropped, not retried forever.
    let wrong = self::reporter(
        ProviderKind::Gitea,
        &forge,
        "acme/catalog",
        ForgeCredentials::Token("wrong".into()),
    );
    wrong.report(check(SHA, "image-catalog/other", CheckState::Pending, "x"));
    forge
        .wait_until("the refused call", WAIT, |f| {
            f.calls().len() == states.len() + 1
        })
        .await;
    assert_eq!(forge.calls().last().unwrap().status, 401);
    // The next update of the good reporter still goes out, after the refused one.
    reporter.report(check(
        SHA,
        "image-catalog/prod",
        CheckState::Pending,
        "again",
    ));
    forge
        .wait_until("the next status", WAIT, |f| {
            f.accepted().len() == states.len() + 1
        })
        .await;
    assert_eq!(
        forge.calls().iter().filter(|c| c.status == 401).count(),
        1,
        "the refused update was not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_statuses_use_the_encoded_project_and_running_for_new_pending_text() {
    init();
    let forge = FakeForge::start(Flavor::GitLab {
        token: "glpat-secret".into(),
        project: "infra/images/catalog".into(),
    });
    let reporter = reporter(
        ProviderKind::GitLab,
        &forge,
        "infra/images/catalog",
        ForgeCredentials::Token("glpat-secret".into()),
    );
    let name = "image-catalog/prod";
    let steps = [
        (CheckState::Pending, "Importing 0 of 2 images"),
        (CheckState::Pending, "Importing 1 of 2 images"),
        (CheckState::Pending, "Importing 2 of 2 images"),
        (CheckState::Success, "2 images Ready"),
    ];
    for (index, (state, description)) in steps.iter().enumerate() {
        reporter.report(check(SHA, name, *state, description));
        forge
            .wait_until("the status", WAIT, |f| f.calls().len() == index + 1)
            .await;
    }
    let calls = forge.calls();
    for call in &calls {
        assert_eq!(
            call.path,
            format!("/api/v4/projects/infra%2Fimages%2Fcatalog/statuses/{SHA}")
        );
        assert_eq!(call.body["name"], name);
    }
    let states: Vec<_> = calls
        .iter()
        .map(|c| c.body["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["pending", "running", "running", "success"]);
    // GitLab refused running → running (400) but kept the new text; the reporter took that
    // as delivered: no retry, and the success after it went out.
    assert_eq!(calls[2].status, 400);
    assert!(calls[3].accepted());
    assert_eq!(
        forge.gitlab_status(SHA, name),
        Some(("success".into(), "2 images Ready".into()))
    );
    // Superseded ends as canceled.
    reporter.report(check(OTHER_SHA, name, CheckState::Pending, "Importing"));
    reporter.report(check(
        OTHER_SHA,
        name,
        CheckState::Superseded,
        "Superseded by a newer commit",
    ));
    forge
        .wait_until("the canceled status", WAIT, |f| {
            f.gitlab_status(OTHER_SHA, name)
                .is_some_and(|(state, _)| state == "canceled")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_waited_out_without_blocking_the_caller() {
    init();
    let forge = FakeForge::start(Flavor::GitHub {
        token: "ghp_secret".into(),
        repository: "acme/catalog".into(),
    });
    let reporter = reporter(
        ProviderKind::GitHubStatus,
        &forge,
        "acme/catalog",
        ForgeCredentials::Token("ghp_secret".into()),
    );
    forge.fail_next(Fault::TooManyRequests { retry_after: 1 }, 1);
    let started = Instant::now();
    reporter.report(check(
        SHA,
        "image-catalog/prod",
        CheckState::Pending,
        "Importing",
    ));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "report() returned at once, not after the retry"
    );
    forge
        .wait_until("the status after the rate limit", WAIT, |f| {
            f.accepted().len() == 1
        })
        .await;
    let calls = forge.calls();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert_eq!(calls[0].status, 429);
    assert!(
        calls[1].at - calls[0].at >= Duration::from_secs(1),
        "the retry waited for Retry-After: {:?}",
        calls[1].at - calls[0].at
    );

    // GitHub's primary rate limit: 403 with x-ratelimit-remaining: 0 until the reset.
    forge.fail_next(Fault::RateLimitExhausted { reset_in: 1 }, 1);
    reporter.report(check(
        SHA,
        "image-catalog/prod",
        CheckState::Success,
        "Ready",
    ));
    forge
        .wait_until("the status after the reset", WAIT, |f| {
            f.accepted().len() == 2
        })
        .await;
    let calls = forge.calls();
    assert_eq!(calls.len(), 4, "{calls:#?}");
    assert_eq!(calls[2].status, 403);
    assert!(calls[3].at - calls[2].at >= Duration::from_secs(1));
    assert_eq!(calls[3].body["state"], "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_the_latest_state_is_delivered_and_stale_ones_are_skipped() {
    init();
    let forge = FakeForge::start(Flavor::GitHub {
        token: "ghp_secret".into(),
        repository: "acme/catalog".into(),
    });
    let reporter = reporter(
        ProviderKind::GitHubStatus,
        &forge,
        "acme/catalog",
        ForgeCredentials::Token("ghp_secret".into()),
    );
    forge.fail_next(Fault::ServerError, 2);
    let context = "image-catalog/prod";
    reporter.report(check(SHA, context, CheckState::Pending, "Importing step 0"));
    forge
        .wait_until("the first failed call", WAIT, |f| !f.calls().is_empty())
        .await;
    // While the reporter backs off, the sync moves on.
    let started = Instant::now();
    for step in 1..10 {
        reporter.report(check(
            SHA,
            context,
            CheckState::Pending,
            &format!("Importing step {step}"),
        ));
    }
    reporter.report(check(SHA, context, CheckState::Success, "All images Ready"));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "report() never waits"
    );
    forge
        .wait_until("the final state", WAIT, |f| {
            f.accepted().iter().any(|c| c.body["state"] == "success")
        })
        .await;
    let calls = forge.calls();
    assert_eq!(
        calls.len(),
        3,
        "500, 500, then the latest state only: {calls:#?}"
    );
    assert_eq!(calls[0].body["description"], "Importing step 0");
    for call in &calls[1..] {
        assert_eq!(call.body["description"], "All images Ready");
    }
    assert_eq!(accepted_on(&forge, SHA).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_hosted_forge_behind_a_private_ca_is_reached_with_its_ca() {
    init();
    let dir = tempfile::tempdir().unwrap();
    // An HTTPS server whose certificate only the generated CA vouches for: the call arrives
    // only if the reporter trusts `ca_pem` (the forge itself answers 404/405 here; the
    // handshake and the request are what count).
    let server = common::file_server::FileServer::start_https(dir.path());
    let reporter = Reporter::new(ForgeConfig {
        kind: ProviderKind::GitHubStatus,
        api_url: format!("{}/api/v3", server.base_url()),
        repository: "acme/catalog".into(),
        credentials: ForgeCredentials::Token("ghe_secret".into()),
        ca_pem: Some(server.ca_pem().unwrap().as_bytes().to_vec()),
    })
    .unwrap();
    reporter.report(check(
        SHA,
        "image-catalog/prod",
        CheckState::Pending,
        "Importing",
    ));
    let path = format!("/api/v3/repos/acme/catalog/statuses/{SHA}");
    let deadline = Instant::now() + WAIT;
    let request = loop {
        if let Some(request) = server.request_log().into_iter().find(|r| r.path == path) {
            break request;
        }
        assert!(
            Instant::now() < deadline,
            "no request reached the HTTPS forge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(request.method, "POST");
    assert_eq!(request.authorization.as_deref(), Some("Bearer ghe_secret"));
    assert!(
        request
            .user_agent
            .unwrap_or_default()
            .starts_with("image-catalog/")
    );
}
