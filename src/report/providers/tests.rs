use super::*;
use crate::report::ImageRow;

fn check(state: CheckState, description: &str) -> CommitCheck {
    CommitCheck {
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        context: "image-catalog/prod".into(),
        state,
        description: description.into(),
        details: vec![ImageRow {
            name: "ubuntu".into(),
            phase: "Importing".into(),
            progress: Some("10%".into()),
            message: None,
        }],
        target_url: Some("https://ci.example/run/1".into()),
    }
}

#[test]
fn states_map_per_forge() {
    let all = [
        CheckState::Pending,
        CheckState::Success,
        CheckState::Failure,
        CheckState::Error,
        CheckState::Superseded,
    ];
    let github: Vec<_> = all.iter().map(|s| github_state(*s)).collect();
    assert_eq!(github, ["pending", "success", "failure", "error", "error"]);
    let gitea: Vec<_> = all.iter().map(|s| gitea_state(*s)).collect();
    assert_eq!(gitea, ["pending", "success", "failure", "error", "warning"]);
    let gitlab: Vec<_> = all.iter().map(|s| gitlab_state(*s, None)).collect();
    assert_eq!(
        gitlab,
        ["pending", "success", "failed", "failed", "canceled"]
    );
    assert_eq!(
        gitlab_state(CheckState::Pending, Some(CheckState::Pending)),
        "running"
    );
    assert_eq!(
        gitlab_state(CheckState::Pending, Some(CheckState::Failure)),
        "pending"
    );
}

#[test]
fn github_status_fits_the_limits() {
    let long = format!("{} 🚀 done", "x".repeat(300));
    let body = github_status_body(&check(CheckState::Superseded, &long));
    let description = body["description"].as_str().unwrap();
    assert_eq!(description.chars().count(), 140);
    assert!(description.chars().all(|c| (c as u32) <= 0xFFFF));
    assert_eq!(body["state"], "error");
    assert_eq!(body["context"], "image-catalog/prod");
    assert_eq!(body["target_url"], "https://ci.example/run/1");
}

#[test]
fn gitlab_status_uses_name_and_255_characters() {
    let body = gitlab_status_body(&check(CheckState::Failure, &"y".repeat(400)), None);
    assert_eq!(body["name"], "image-catalog/prod");
    assert_eq!(body["state"], "failed");
    assert_eq!(body["description"].as_str().unwrap().chars().count(), 255);
}

#[test]
fn check_runs_carry_status_conclusion_and_table() {
    let pending = check_run_body(&check(CheckState::Pending, "Importing 1 image"), true);
    assert_eq!(pending["status"], "in_progress");
    assert!(pending.get("conclusion").is_none());
    assert_eq!(pending["name"], "image-catalog/prod");
    assert_eq!(
        pending["head_sha"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(pending["details_url"], "https://ci.example/run/1");
    assert_eq!(pending["output"]["title"], "Importing 1 image");
    assert!(
        pending["output"]["text"]
            .as_str()
            .unwrap()
            .contains("| ubuntu | Importing | 10% |  |")
    );
    let done = check_run_body(&check(CheckState::Superseded, "Superseded"), false);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["conclusion"], "cancelled");
    assert!(done.get("head_sha").is_none());
}

#[test]
fn forge_messages_are_short_single_lines() {
    assert_eq!(
        forge_message(r#"{"message":"Validation Failed","errors":[{"code":"custom"}]}"#),
        r#"Validation Failed [{"code":"custom"}]"#
    );
    assert_eq!(
        forge_message(r#"{"message":{"name":["is too long"]}}"#),
        r#"{"name":["is too long"]}"#
    );
    assert_eq!(
        forge_message(r#"{"error":"invalid_token"}"#),
        "invalid_token"
    );
    assert_eq!(
        forge_message("<html>\n bad gateway </html>"),
        "<html> bad gateway </html>"
    );
    assert_eq!(forge_message(""), "(no message)");
    assert!(forge_message(&"z".repeat(1000)).chars().count() <= 300);
}
