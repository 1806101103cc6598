//! Commit checks as git notes, pushed to the remote.

use super::*;

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
