//! Commit checks of catalogs: which provider each catalog reports to (built from its
//! `commitStatus` and Secret), and the final state of commits that a newer one superseded.
//! Delivery never blocks a sync: providers queue, de-duplicate and back off on their own.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use kube::{Client, ResourceExt};
use tokio::sync::mpsc;

use crate::api::catalog::{CommitStatusProvider, ImageCatalog};
use crate::git::{self, GitCredentials};
use crate::k8s::secrets::SecretReader;
use crate::report::{
    CheckState, CommitCheck, ForgeConfig, ForgeCredentials, ProviderKind, Reporter,
};

/// The notes ref the `GitNotes` provider writes.
pub const NOTES_REF: &str = "refs/notes/image-catalog";

/// Where commit checks may go and where their Git caches live.
#[derive(Debug, Clone)]
pub struct PublishSettings {
    /// The daemon's namespace: where the catalogs' Secrets live.
    pub namespace: String,
    /// The notes caches, one folder per catalog.
    pub cache_dir: PathBuf,
    /// Hosts commit checks may go to besides the repository's own (`--forge-api-host`).
    pub forge_api_hosts: Vec<String>,
    /// Where Git remotes may be: checked before every notes push.
    pub egress: std::sync::Arc<crate::egress::EgressPolicy>,
}

pub struct Publishers {
    secrets: SecretReader,
    settings: PublishSettings,
    sinks: Mutex<HashMap<String, (String, Sink)>>,
    /// The last check sent per catalog: (commit, state).
    last: Mutex<HashMap<String, (String, CheckState)>>,
}

#[derive(Clone)]
enum Sink {
    Forge(Reporter),
    GitNotes(GitNotes),
}

impl Sink {
    async fn send(&self, check: CommitCheck) {
        match self {
            Self::Forge(reporter) => reporter.report(check),
            Self::GitNotes(notes) => notes.send(check),
        }
    }
}

impl Publishers {
    pub fn new(client: Client, settings: PublishSettings) -> Self {
        Self {
            secrets: SecretReader::new(client, settings.namespace.clone(), []),
            settings,
            sinks: Mutex::new(HashMap::new()),
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Sends the check of a sync on its commit (sync decides it), and gives the commit it
    /// replaced a final state if that one was still pending.
    pub async fn publish(&self, catalog: &ImageCatalog, check: CommitCheck) {
        let Some(settings) = &catalog.spec.commit_status else {
            return;
        };
        let name = catalog.name_any();
        let context = check.context.clone();
        let sink = match self.sink(catalog).await {
            Ok(sink) => sink,
            Err(message) => {
                tracing::warn!(catalog = %name, "{message}; commit checks are not sent");
                return;
            }
        };
        let replaced =
            self.last.lock().ok().and_then(|mut last| {
                last.insert(name.clone(), (check.commit.clone(), check.state))
            });
        if let Some((old_commit, CheckState::Pending)) = replaced
            && old_commit != check.commit
        {
            sink.send(CommitCheck {
                commit: old_commit,
                context: context.clone(),
                state: CheckState::Superseded,
                description: format!(
                    "Superseded by {} before its images were Ready",
                    super::short(&check.commit)
                ),
                details: Vec::new(),
                target_url: settings.target_url.clone(),
            })
            .await;
        }
        sink.send(check).await;
    }

    /// Sends one check of this catalog (the verification checks use it), through the
    /// catalog's provider; nothing when the catalog reports nowhere.
    pub async fn send(&self, catalog: &ImageCatalog, check: CommitCheck) {
        if catalog.spec.commit_status.is_none() {
            return;
        }
        match self.sink(catalog).await {
            Ok(sink) => sink.send(check).await,
            Err(message) => {
                tracing::warn!(catalog = %catalog.name_any(), "{message}; commit checks are not sent")
            }
        }
    }

    /// The catalog's provider, rebuilt when its settings or Secret change.
    async fn sink(&self, catalog: &ImageCatalog) -> Result<Sink, String> {
        let name = catalog.name_any();
        let Some(settings) = &catalog.spec.commit_status else {
            return Err("no commitStatus".into());
        };
        let secret_name = match settings.provider {
            CommitStatusProvider::GitNotes => catalog.spec.git.secret_ref.as_ref(),
            _ => settings.secret_ref.as_ref(),
        }
        .map(|s| s.name.clone());
        let (data, version) = match &secret_name {
            Some(secret) => {
                let secret = self
                    .secrets
                    .catalog_secret(secret)
                    .await
                    .map_err(|error| error.to_string())?;
                (secret.data, secret.resource_version)
            }
            None => (BTreeMap::new(), String::new()),
        };
        let key = format!(
            "{}|{}|{version}",
            serde_json::to_string(settings).unwrap_or_default(),
            serde_json::to_string(&catalog.spec.git).unwrap_or_default()
        );
        if let Ok(sinks) = self.sinks.lock()
            && let Some((known, sink)) = sinks.get(&name)
            && *known == key
        {
            return Ok(sink.clone());
        }
        let sink = match settings.provider {
            CommitStatusProvider::GitNotes => {
                let credentials = GitCredentials::from_secret_data(&data)
                    .map_err(|error| format!("the Git Secret: {error}"))?;
                Sink::GitNotes(GitNotes::start(
                    self.settings.cache_dir.join(format!("{name}.notes")),
                    catalog.spec.git.url.clone(),
                    credentials,
                    self.settings.egress.clone(),
                ))
            }
            provider => {
                let text = |key: &str| {
                    data.get(key)
                        .and_then(|value| String::from_utf8(value.clone()).ok())
                        .map(|value| value.trim().to_string())
                };
                let credentials = match provider {
                    CommitStatusProvider::GitHubCheckRun => ForgeCredentials::GitHubApp {
                        app_id: text("appID").ok_or("the Secret has no appID")?,
                        installation_id: text("installationID")
                            .ok_or("the Secret has no installationID")?,
                        private_key_pem: text("privateKey")
                            .ok_or("the Secret has no privateKey")?,
                    },
                    _ => ForgeCredentials::Token(text("token").ok_or("the Secret has no token")?),
                };
                let kind = match provider {
                    CommitStatusProvider::GitHub => ProviderKind::GitHubStatus,
                    CommitStatusProvider::GitHubCheckRun => ProviderKind::GitHubCheckRun,
                    CommitStatusProvider::Gitea | CommitStatusProvider::Forgejo => {
                        ProviderKind::Gitea
                    }
                    CommitStatusProvider::GitLab | CommitStatusProvider::GitNotes => {
                        ProviderKind::GitLab
                    }
                };
                let api_url = settings
                    .api_url
                    .clone()
                    .unwrap_or_else(|| "https://api.github.com".into());
                forge_api_allowed(
                    &catalog.spec.git.url,
                    &api_url,
                    &self.settings.forge_api_hosts,
                )?;
                let config = ForgeConfig {
                    kind,
                    api_url,
                    repository: settings.repository.clone().unwrap_or_default(),
                    credentials,
                    ca_pem: data.get("ca.crt").cloned(),
                };
                Sink::Forge(
                    Reporter::new(config).map_err(|error| {
                        format!("setting up the commit-status provider: {error}")
                    })?,
                )
            }
        };
        if let Ok(mut sinks) = self.sinks.lock() {
            sinks.insert(name, (key, sink.clone()));
        }
        Ok(sink)
    }
}

/// The host of a Git remote URL: `https://host/…`, `ssh://user@host:port/…`, `git://host/…` or
/// scp-like `user@host:path`.
fn remote_host(url: &str) -> Option<String> {
    let host = match url.split_once("://") {
        Some((_, rest)) => {
            let authority = rest.split('/').next().unwrap_or_default();
            let authority = authority.rsplit('@').next().unwrap_or_default();
            match authority.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or_default(),
                None => authority.split(':').next().unwrap_or_default(),
            }
        }
        None => {
            let (before_path, _) = url.split_once(':')?;
            before_path.rsplit('@').next().unwrap_or_default()
        }
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Whether a catalog's commit-status token may go to `api_url`: only to the repository's own
/// host, `api.` of it (GitHub's `api.github.com`), or a host the operator allowed — otherwise
/// whoever writes an ImageCatalog could send a forge token anywhere.
pub fn forge_api_allowed(
    repository_url: &str,
    api_url: &str,
    allowed_hosts: &[String],
) -> Result<(), String> {
    let api_host = reqwest::Url::parse(api_url)
        .ok()
        .and_then(|url| {
            url.host_str()
                .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
        })
        .ok_or_else(|| format!("apiURL {api_url} is not a URL with a host"))?;
    let repository_host = remote_host(repository_url);
    let own = repository_host
        .as_ref()
        .is_some_and(|repo| api_host == *repo || api_host == format!("api.{repo}"));
    let listed = allowed_hosts
        .iter()
        .any(|host| host.trim().eq_ignore_ascii_case(&api_host));
    if own || listed {
        return Ok(());
    }
    Err(format!(
        "apiURL host {api_host} is neither the repository's host ({}) nor allowed: the token is not sent; correct commitStatus.apiURL, or allow the host with --forge-api-host (the chart's forgeAPIHosts)",
        repository_host.as_deref().unwrap_or("unknown")
    ))
}

/// The `GitNotes` provider: one note per commit under `refs/notes/image-catalog` in the
/// catalog's own repository, with a section per check context. Works with any Git server.
#[derive(Clone)]
pub struct GitNotes {
    queue: mpsc::UnboundedSender<CommitCheck>,
}

impl GitNotes {
    pub fn start(
        cache: PathBuf,
        url: String,
        credentials: GitCredentials,
        egress: std::sync::Arc<crate::egress::EgressPolicy>,
    ) -> Self {
        let (queue, mut receiver) = mpsc::unbounded_channel::<CommitCheck>();
        tokio::spawn(async move {
            // The sections of each commit's note, and what was last pushed.
            let mut notes: HashMap<String, BTreeMap<String, String>> = HashMap::new();
            let mut pushed: HashMap<String, String> = HashMap::new();
            while let Some(first) = receiver.recv().await {
                // Latest wins: take everything queued and push each commit's note once.
                let mut batch = vec![first];
                while let Ok(more) = receiver.try_recv() {
                    batch.push(more);
                }
                for check in batch {
                    notes
                        .entry(check.commit.clone())
                        .or_default()
                        .insert(check.context.clone(), note_section(&check));
                }
                for (commit, sections) in &notes {
                    let text = sections.values().cloned().collect::<Vec<_>>().join("\n");
                    if pushed.get(commit) == Some(&text) {
                        continue;
                    }
                    let (cache, url, credentials, commit_id, ours, egress) = (
                        cache.clone(),
                        url.clone(),
                        credentials.clone(),
                        commit.clone(),
                        sections.clone(),
                        egress.clone(),
                    );
                    let result = tokio::task::spawn_blocking(move || {
                        git::push_note(
                            &cache,
                            &url,
                            &credentials,
                            &commit_id,
                            NOTES_REF,
                            &|current| merge_note(current, &ours),
                            &egress,
                        )
                    })
                    .await;
                    match result {
                        Ok(Ok(())) => {
                            pushed.insert(commit.clone(), text);
                        }
                        Ok(Err(error)) => {
                            tracing::warn!(commit = %super::short(commit), %error, "could not push the commit note; retrying with the next update")
                        }
                        Err(error) => tracing::warn!(%error, "the note push stopped"),
                    }
                }
                // Keep memory bounded: only commits whose note is not pushed yet, and the
                // most recent ones.
                if notes.len() > 64 {
                    notes.retain(|commit, _| !pushed.contains_key(commit));
                    pushed.clear();
                }
            }
        });
        Self { queue }
    }

    fn send(&self, check: CommitCheck) {
        let _ = self.queue.send(check);
    }
}

/// The note of a commit: the sections other writers (other catalogs on the same repository,
/// the verification checks) left in `current`, with ours put in, ordered by context.
pub fn merge_note(current: Option<&str>, ours: &BTreeMap<String, String>) -> String {
    let mut sections: BTreeMap<String, String> = BTreeMap::new();
    let mut open: Option<String> = None;
    for line in current.unwrap_or_default().lines() {
        if let Some(context) = section_header(line) {
            open = Some(context.to_string());
        }
        if let Some(context) = &open {
            let section = sections.entry(context.clone()).or_default();
            section.push_str(line);
            section.push('\n');
        }
    }
    for (context, section) in ours {
        sections.insert(context.clone(), section.clone());
    }
    sections
        .into_values()
        .map(|section| format!("{}\n", section.trim_end()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `image-catalog/base: pending` → `image-catalog/base`.
fn section_header(line: &str) -> Option<&str> {
    if line.starts_with(char::is_whitespace) {
        return None;
    }
    let (context, state) = line.rsplit_once(": ")?;
    ["pending", "success", "failure", "error", "superseded"]
        .contains(&state)
        .then_some(context)
}

/// One context's section of a commit note:
///
/// ```text
/// image-catalog/base: pending
/// 12/14 Ready, 2 importing
///   debian-12  Provisioning  45%
/// ```
pub fn note_section(check: &CommitCheck) -> String {
    let state = match check.state {
        CheckState::Pending => "pending",
        CheckState::Success => "success",
        CheckState::Failure => "failure",
        CheckState::Error => "error",
        CheckState::Superseded => "superseded",
    };
    let mut text = format!("{}: {state}\n{}\n", check.context, check.description);
    for row in &check.details {
        text.push_str(&format!(
            "  {}  {}{}{}\n",
            row.name,
            row.phase,
            row.progress
                .as_deref()
                .map(|p| format!("  {p}"))
                .unwrap_or_default(),
            row.message
                .as_deref()
                .map(|m| format!("  {m}"))
                .unwrap_or_default()
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forge_token_goes_only_to_the_repositorys_host_or_an_allowed_one() {
        let none: &[String] = &[];
        for (repository, api) in [
            (
                "https://github.com/platform/images.git",
                "https://api.github.com",
            ),
            (
                "git@gitlab.example.com:platform/images.git",
                "https://gitlab.example.com/api/v4",
            ),
            (
                "ssh://git@Gitea.Example.com:2222/p/i.git",
                "https://gitea.example.com:3000",
            ),
            ("http://127.0.0.1:3000/p/i.git", "http://127.0.0.1:8929"),
            ("https://[::1]:3000/p/i.git", "http://[::1]:8929"),
        ] {
            assert_eq!(
                forge_api_allowed(repository, api, none),
                Ok(()),
                "{repository} {api}"
            );
        }
        let error = forge_api_allowed(
            "https://github.com/p/i.git",
            "https://collector.example",
            none,
        )
        .unwrap_err();
        assert!(error.contains("collector.example"), "{error}");
        assert!(error.contains("--forge-api-host"), "{error}");
        assert!(
            forge_api_allowed(
                "https://github.com/p/i.git",
                "https://api.github.com.evil.example",
                none
            )
            .is_err()
        );
        assert!(forge_api_allowed("https://git.example/p/i.git", "not a url", none).is_err());
        let allowed = ["forge-api.internal".to_string()];
        assert_eq!(
            forge_api_allowed(
                "https://git.example/p/i.git",
                "https://FORGE-API.internal/api",
                &allowed
            ),
            Ok(())
        );
    }

    #[test]
    fn a_note_keeps_the_sections_of_other_writers_and_replaces_ours() {
        let theirs = "image-catalog/other: success\n1/1 Ready\n\nimage-catalog/base: pending\n0/2 Ready, 2 importing\n  a  Provisioning  10%\n";
        let ours = BTreeMap::from([(
            "image-catalog/base".to_string(),
            "image-catalog/base: success\n2/2 Ready\n".to_string(),
        )]);
        let merged = merge_note(Some(theirs), &ours);
        assert_eq!(
            merged,
            "image-catalog/base: success\n2/2 Ready\n\nimage-catalog/other: success\n1/1 Ready\n"
        );
        // Merging again changes nothing: no push for an unchanged note.
        assert_eq!(merge_note(Some(&merged), &ours), merged);
        assert_eq!(
            merge_note(None, &ours),
            "image-catalog/base: success\n2/2 Ready\n"
        );
    }
}
