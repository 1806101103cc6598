//! The verification check on a catalog's commit: `<prefix>/<catalog>/verify`, success when
//! every image of the catalog verified on its last run, failure naming those that did not.

use crate::report::{CheckState, CommitCheck, ImageRow};

/// One image of the catalog and its last verification: `None` until it has run once, else
/// (verified, reason).
pub struct VerifiedImage {
    pub name: String,
    pub last: Option<(bool, String)>,
}

pub fn verify_check(
    context: &str,
    commit: &str,
    images: &[VerifiedImage],
    target_url: Option<String>,
) -> Option<CommitCheck> {
    if images.is_empty() {
        return None;
    }
    let verified = images
        .iter()
        .filter(|image| matches!(image.last, Some((true, _))))
        .count();
    let failed: Vec<&VerifiedImage> = images
        .iter()
        .filter(|image| matches!(image.last, Some((false, _))))
        .collect();
    let waiting = images.len() - verified - failed.len();
    let mut description = format!("{verified}/{} verified", images.len());
    if waiting > 0 {
        description.push_str(&format!(", {waiting} not yet"));
    }
    let state = if !failed.is_empty() {
        let named: Vec<String> = failed
            .iter()
            .take(5)
            .map(|image| {
                let reason = image
                    .last
                    .as_ref()
                    .map_or("", |(_, reason)| reason.as_str());
                format!("{} ({reason})", image.name)
            })
            .collect();
        description.push_str(&format!("; failed: {}", named.join(", ")));
        if failed.len() > named.len() {
            description.push_str(&format!(" and {} more", failed.len() - named.len()));
        }
        CheckState::Failure
    } else if waiting > 0 {
        CheckState::Pending
    } else {
        CheckState::Success
    };
    let details = images
        .iter()
        .map(|image| ImageRow {
            name: image.name.clone(),
            phase: match &image.last {
                None => "NotVerifiedYet".to_string(),
                Some((_, reason)) => reason.clone(),
            },
            progress: None,
            message: None,
        })
        .collect();
    Some(CommitCheck {
        commit: commit.to_string(),
        context: context.to_string(),
        state,
        description,
        details,
        target_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, last: Option<(bool, &str)>) -> VerifiedImage {
        VerifiedImage {
            name: name.into(),
            last: last.map(|(ok, reason)| (ok, reason.to_string())),
        }
    }

    #[test]
    fn success_only_when_every_image_verified_and_failures_are_named() {
        let all = [
            image("a", Some((true, "Verified"))),
            image("b", Some((true, "Verified"))),
        ];
        let check = verify_check("image-catalog/base/verify", "c0ffee", &all, None).unwrap();
        assert_eq!(check.state, CheckState::Success);
        assert_eq!(check.description, "2/2 verified");

        let some = [image("a", Some((true, "Verified"))), image("b", None)];
        let check = verify_check("x", "c0ffee", &some, None).unwrap();
        assert_eq!(check.state, CheckState::Pending);
        assert_eq!(check.description, "1/2 verified, 1 not yet");

        let bad = [
            image("a", Some((true, "Verified"))),
            image("b", Some((false, "ChecksumMismatch"))),
            image("c", None),
        ];
        let check = verify_check("x", "c0ffee", &bad, None).unwrap();
        assert_eq!(check.state, CheckState::Failure);
        assert_eq!(
            check.description,
            "1/3 verified, 1 not yet; failed: b (ChecksumMismatch)"
        );
        assert!(verify_check("x", "c0ffee", &[], None).is_none());
    }
}
