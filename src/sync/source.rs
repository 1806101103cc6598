//! Reading a catalog's commit: credentials from its Secret, a fetch off the async runtime,
//! the catalog files under its path. Shared by the controller and `image-catalog plan`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::fetch_error::FetchError;
use super::status::Outcome;
use crate::api::catalog::ImageCatalog;
use crate::catalog::{self, CatalogImage, Location, Problem, SourceFile};
use crate::git::{self, GitCredentials, GitReference};
use crate::k8s::secrets::SecretReader;

/// The Git credentials a catalog names, or a FetchFailed outcome that says what is wrong.
pub async fn credentials(
    secrets: &SecretReader,
    catalog: &ImageCatalog,
) -> Result<GitCredentials, Outcome> {
    let Some(secret) = &catalog.spec.git.secret_ref else {
        return Ok(GitCredentials::default());
    };
    if let Some(refused) = insecure_secret_ref(catalog) {
        return Err(refused);
    }
    let secret = secrets
        .catalog_secret(&secret.name)
        .await
        .map_err(|error| Outcome::FetchFailed(FetchError::Secret(Arc::new(error))))?;
    GitCredentials::from_secret_data(&secret.data).map_err(|error| {
        Outcome::FetchFailed(FetchError::Credentials {
            namespace: secret.namespace.clone(),
            name: secret.name.clone(),
            error: Arc::new(error),
        })
    })
}

/// A `secretRef` paired with an `http://` or `git://` URL: refused before the Secret is even
/// read, since anyone on the path would read the credentials. Pure.
pub fn insecure_secret_ref(catalog: &ImageCatalog) -> Option<Outcome> {
    let secret = catalog.spec.git.secret_ref.as_ref()?;
    let scheme = git::plaintext_scheme(&catalog.spec.git.url)?;
    Some(Outcome::FetchFailed(FetchError::InsecureSecretRef {
        secret: secret.name.clone(),
        scheme: scheme.to_string(),
        url: redact(&catalog.spec.git.url),
    }))
}

/// The commit applied under this very spec, whose descendants a fetch may move to without a
/// hold; None after a spec change (another branch, say), which starts afresh.
pub fn applied_revision(catalog: &ImageCatalog) -> Option<String> {
    catalog
        .status
        .as_ref()
        .filter(|status| status.observed_generation == catalog.metadata.generation)
        .and_then(|status| status.last_applied_revision.clone())
}

pub struct Fetched {
    pub commit: String,
    /// The commit's catalog files, or the one problem that kept them from being read (too
    /// large). None when the commit is `known_commit`: nothing to read again.
    pub files: Option<Result<Vec<SourceFile>, Problem>>,
    /// The applied commit, when the fetched one does not descend from it (a force-push or
    /// a moved tag).
    pub diverged_from: Option<String>,
}

/// Fetches the catalog's revision into `cache` and reads its files, unless the commit is
/// `known_commit`; and tells whether it descends from `applied`, the commit applied before.
pub async fn fetch(
    cache: &Path,
    catalog: &ImageCatalog,
    credentials: GitCredentials,
    known_commit: Option<String>,
    applied: Option<String>,
    egress: &std::sync::Arc<crate::egress::EgressPolicy>,
) -> Result<Fetched, Outcome> {
    let git = &catalog.spec.git;
    let reference = match (
        &git.reference.branch,
        &git.reference.tag,
        &git.reference.commit,
    ) {
        (Some(branch), _, _) => GitReference::Branch(branch.clone()),
        (_, Some(tag), _) => GitReference::Tag(tag.clone()),
        (_, _, Some(commit)) => GitReference::Commit(commit.clone()),
        _ => {
            return Err(Outcome::FetchFailed(FetchError::NoReference));
        }
    };
    let cache: PathBuf = cache.to_path_buf();
    let url = git.url.clone();
    let path = git.path.clone();
    let egress = egress.clone();
    tokio::task::spawn_blocking(move || {
        let fetched = git::fetch(&cache, &url, &reference, &credentials, &egress)?;
        // A pinned commit has no history to follow: changing it is a change of the spec.
        let diverged_from = match (&reference, applied) {
            (GitReference::Commit(_), _) | (_, None) => None,
            (_, Some(applied)) => (!git::descends_from(
                &cache,
                &url,
                &reference,
                &credentials,
                &egress,
                &fetched.commit,
                &applied,
            )?)
            .then_some(applied),
        };
        if known_commit.as_deref() == Some(fetched.commit.as_str()) {
            return Ok(Fetched {
                commit: fetched.commit,
                files: None,
                diverged_from,
            });
        }
        let files = match git::read_files(&cache, &fetched.commit, &path) {
            Ok(files) => Ok(files
                .into_iter()
                .map(|(path, content)| SourceFile { path, content })
                .collect()),
            // A property of the commit, reported on it like any other problem of its files.
            Err(git::GitError::CatalogTooLarge { path, message }) => Err(Problem {
                location: Location {
                    file: path,
                    line: 1,
                    column: 1,
                },
                message,
            }),
            Err(error) => return Err(error),
        };
        Ok::<_, git::GitError>(Fetched {
            commit: fetched.commit,
            files: Some(files),
            diverged_from,
        })
    })
    .await
    .map_err(|error| Outcome::FetchFailed(FetchError::Stopped(error.to_string())))?
    .map_err(|error| {
        Outcome::FetchFailed(FetchError::Git {
            reference: git.reference.describe(),
            url: redact(&git.url),
            error: Arc::new(error),
        })
    })
}

/// The images of a commit's files. No files at all is refused: an empty catalog would
/// prune every image, which is never what a wrong `path` means.
pub fn load(path: &str, files: &[SourceFile]) -> Result<Vec<CatalogImage>, Vec<Problem>> {
    if files.is_empty() {
        return Err(vec![Problem {
            location: Location {
                file: path.to_string(),
                line: 1,
                column: 1,
            },
            message: format!(
                "no *.yaml or *.yml files under {path}; an empty catalog would prune every image, so it is refused: check spec.git.path"
            ),
        }]);
    }
    catalog::load(files)
}

/// `https://user:secret@host/x` → `https://host/x`: URLs may carry credentials.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_never_reach_messages() {
        assert_eq!(
            redact("https://user:hunter2@git.example/c.git"),
            "https://git.example/c.git"
        );
        assert_eq!(redact("git@git.example:c.git"), "git@git.example:c.git");
    }

    #[test]
    fn a_secret_ref_with_an_http_or_git_url_is_refused() {
        let catalog = |url: &str, secret: bool| -> ImageCatalog {
            let secret = if secret {
                ", secretRef: {name: git-creds}"
            } else {
                ""
            };
            serde_yaml::from_str(&format!(
                "apiVersion: imagecatalog.dev/v1alpha1\nkind: ImageCatalog\nmetadata: {{name: base}}\n\
                 spec:\n  git: {{url: '{url}', ref: {{branch: main}}{secret}}}\n"
            ))
            .unwrap()
        };
        for url in [
            "http://u:pw123@git.example/c.git",
            "git://git.example/c.git",
        ] {
            let Some(Outcome::FetchFailed(error)) = insecure_secret_ref(&catalog(url, true)) else {
                panic!("{url} with a secretRef must be refused");
            };
            let (reason, message) = (error.reason(), error.to_string());
            assert_eq!(reason, "GitCredentialsInsecure");
            assert!(
                message.contains("git-creds") && message.contains("https://"),
                "{message}"
            );
            assert!(!message.contains("pw123"), "{message}");
            assert!(insecure_secret_ref(&catalog(url, false)).is_none());
        }
        for url in [
            "https://git.example/c.git",
            "git@git.example:c.git",
            "ssh://git.example/c",
        ] {
            assert!(insecure_secret_ref(&catalog(url, true)).is_none(), "{url}");
        }
    }

    #[test]
    fn a_commit_without_catalog_files_is_refused_rather_than_pruning_everything() {
        let problems = load("images", &[]).unwrap_err();
        assert!(problems[0].to_string().starts_with("images:1:1: no *.yaml"));
    }
}
