//! ImageCatalog (`imagecatalog.dev/v1alpha1`): a Git repository of catalog YAML that the daemon
//! keeps in sync with the cluster's ClusterVirtualImages.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of the project's own resources, and the prefix of the labels and
/// annotations the daemon owns.
pub const GROUP: &str = "imagecatalog.dev";

/// Labels and annotations the daemon puts on the CVIs it applies from a catalog or imports.
pub mod keys {
    /// Label: the name of the ImageCatalog that owns the CVI.
    pub const CATALOG: &str = "imagecatalog.dev/catalog";
    /// Annotation: the catalog file (and line) the CVI comes from.
    pub const SOURCE: &str = "imagecatalog.dev/source";
    /// Annotation: the commit that last changed the CVI.
    pub const COMMIT: &str = "imagecatalog.dev/commit";
    /// Annotation: a digest of everything the catalog applied, to notice removed fields.
    pub const APPLIED: &str = "imagecatalog.dev/applied-digest";
    /// Annotation: the five-field cron schedule of the image's re-verification.
    pub const VERIFY_SCHEDULE: &str = "imagecatalog.dev/verify-schedule";
    /// Annotation: `"true"` when re-verification also fetches the upstream source again.
    pub const VERIFY_UPSTREAM: &str = "imagecatalog.dev/verify-upstream";
    /// Annotation, written by the import controller (never by a catalog): the sha256 (hex) of
    /// the token in an Upload image's URLs, so the URLs keep working after a restart or a
    /// takeover. Never the token itself.
    pub const UPLOAD_TOKEN_SHA256: &str = "imagecatalog.dev/upload-token-sha256";
    /// Annotation, written with the token's hash: when the wait for an upload of this spec
    /// ends (RFC 3339), whatever restarts, takeovers or failed uploads happen in between.
    pub const UPLOAD_DEADLINE: &str = "imagecatalog.dev/upload-deadline";
    /// Annotation on an ImageCatalog, set by a person: the commit (full id) whose hold they
    /// confirm — a force-push, or a prune of more than `maxPrunePercent` of the images.
    pub const CONFIRM_COMMIT: &str = "imagecatalog.dev/confirm-commit";
    /// The prefix of every key above: catalog entries may not set keys under it.
    pub const PREFIX: &str = "imagecatalog.dev/";
}

/// Duration strings in the Kubernetes style: `30s`, `5m`, `1h30m`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "imagecatalog.dev",
    version = "v1alpha1",
    kind = "ImageCatalog",
    plural = "imagecatalogs",
    singular = "imagecatalog",
    shortname = "icat",
    category = "image-catalog",
    status = "ImageCatalogStatus",
    cel,
    doc = "A Git repository of image catalog YAML, kept in sync with the cluster's ClusterVirtualImages: one image per catalog entry, created, updated and pruned as the repository changes, with the result reported back on each commit.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Images", type_ = "integer", json_path = ".status.images.total"),
    printcolumn(name = "ReadyImages", type_ = "integer", json_path = ".status.images.ready"),
    printcolumn(name = "Revision", type_ = "string", json_path = ".status.lastAppliedRevision"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].message", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new("self.metadata.name.size() <= 63").message("The name must be no longer than 63 characters: it is used as a label value."),
)]
#[serde(rename_all = "camelCase")]
/// Where the catalog lives and how to apply it.
pub struct ImageCatalogSpec {
    /// The Git repository, the revision to follow and the folder holding the catalog files.
    pub git: GitSource,
    /// How often to look for new commits, for example `1m` or `1h`, between 10s and 168h
    /// (shorter or longer values are read as those bounds). Webhooks trigger a sync at once
    /// in between.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: String,
    /// Stop syncing (images already applied stay as they are).
    #[serde(default)]
    pub suspend: bool,
    /// Delete the images this catalog created once their entry is gone from Git.
    #[serde(default = "default_true")]
    pub prune: bool,
    /// The largest share (percent) of this catalog's images one commit may prune; a commit
    /// that would prune more is held, nothing deleted, until a person confirms it with the
    /// `imagecatalog.dev/confirm-commit` annotation. 100: never held for pruning.
    #[serde(default = "default_max_prune_percent")]
    #[schemars(range(max = 100))]
    pub max_prune_percent: u8,
    /// Labels added to every image of the catalog (an entry's own labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to every image of the catalog (an entry's own annotations win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Re-verification defaults for the images of this catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationSettings>,
    /// Where to report each commit's result as a commit check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_status: Option<CommitStatusSettings>,
    /// What to do when the source of an image that is already Ready changes in Git: `Fail`
    /// refuses the commit (Ready images are immutable; give the new image a new name), and
    /// `Recreate` deletes the image and imports it again.
    #[serde(default)]
    pub ready_image_policy: ReadyImagePolicy,
    /// Push webhooks (`POST /hooks/<catalog name>`) that trigger a sync at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSettings>,
}

fn default_interval() -> String {
    "5m".into()
}

fn default_max_prune_percent() -> u8 {
    50
}

fn default_true() -> bool {
    true
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
// Credentials over an unencrypted transport would be readable on the path: refused at the
// API (the sync refuses them too, for catalogs stored before this rule).
#[x_kube(validation = kube::core::Rule::new("!has(self.secretRef) || !(self.url.startsWith('http://') || self.url.startsWith('git://'))").message("secretRef needs an https:// or SSH url: credentials are never sent over http:// or git://"))]
pub struct GitSource {
    /// Repository URL: `https://`, `http://`, `ssh://`, `user@host:path` or `git://`.
    #[schemars(
        length(min = 1),
        regex(pattern = r"^(https?://|ssh://|git://|file://|[A-Za-z0-9._-]+@[^:]+:).+")
    )]
    pub url: String,
    /// The revision to follow: a branch, a tag or one commit.
    #[serde(rename = "ref")]
    pub reference: GitRef,
    /// The folder of the catalog files inside the repository; `.` is the root.
    #[serde(default = "default_path")]
    pub path: String,
    /// A Secret in the daemon's namespace with the credentials: `username` and `password`
    /// (or a token as the password), or `bearerToken`, for HTTPS; `identity` (a private key)
    /// and `known_hosts` for SSH; `ca.crt` for a server certificate signed by a private CA.
    /// Only with an `https://` or SSH URL; sent only to the URL's own host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalSecretRef>,
}

fn default_path() -> String {
    ".".into()
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("[has(self.branch), has(self.tag), has(self.commit)].filter(x, x).size() == 1").message("set exactly one of branch, tag and commit"))]
pub struct GitRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub tag: Option<String>,
    /// A full 40-character commit id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[0-9a-f]{40}$"))]
    pub commit: Option<String>,
}

impl GitRef {
    /// The revision as people write it: `branch main`, `tag v1`, `commit 0a1b…`.
    pub fn describe(&self) -> String {
        match (&self.branch, &self.tag, &self.commit) {
            (Some(branch), _, _) => format!("branch {branch}"),
            (_, Some(tag), _) => format!("tag {tag}"),
            (_, _, Some(commit)) => format!("commit {commit}"),
            _ => "no revision".into(),
        }
    }
}

/// A Secret in the daemon's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct LocalSecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationSettings {
    /// Standard five-field cron schedule of the re-verification, for example `17 3 * * *`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Also fetch the upstream source again and compare, to notice a file that changed
    /// under the same URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_upstream: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ReadyImagePolicy {
    #[default]
    Fail,
    Recreate,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CommitStatusProvider {
    /// GitHub commit statuses, with a token.
    GitHub,
    /// GitHub check runs, with GitHub App credentials; shows a table of the images.
    GitHubCheckRun,
    Gitea,
    Forgejo,
    GitLab,
    /// A Git note per commit under `refs/notes/image-catalog`, pushed to the catalog's own
    /// repository with its credentials: works with any Git server.
    GitNotes,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.provider == 'GitNotes' || has(self.secretRef)").message("secretRef is required for this provider"))]
#[x_kube(validation = kube::core::Rule::new("self.provider in ['GitNotes', 'GitHub', 'GitHubCheckRun'] || has(self.apiURL)").message("apiURL is required for Gitea, Forgejo and GitLab"))]
#[x_kube(validation = kube::core::Rule::new("self.provider == 'GitNotes' || has(self.repository)").message("repository is required for this provider"))]
pub struct CommitStatusSettings {
    pub provider: CommitStatusProvider,
    /// The forge's API base URL, for example `https://gitea.example.com/api/v1` or
    /// `https://gitlab.example.com/api/v4`. GitHub defaults to `https://api.github.com`.
    #[serde(default, rename = "apiURL", skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// The repository on the forge: `owner/name`, or the GitLab project path or id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// A Secret in the daemon's namespace: `token`, or for GitHub check runs `appID`,
    /// `installationID` and `privateKey`; optionally `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalSecretRef>,
    /// The check is named `<contextPrefix>/<catalog name>`.
    #[serde(default = "default_context_prefix")]
    pub context_prefix: String,
    /// A link shown with each check, for example a dashboard.
    #[serde(default, rename = "targetURL", skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
}

fn default_context_prefix() -> String {
    "image-catalog".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSettings {
    /// A Secret in the daemon's namespace whose `token` is the webhook secret configured on
    /// the forge (GitHub, Gitea and Forgejo sign with it; GitLab sends it as a token).
    pub secret_ref: LocalSecretRef,
}

/// Observed state of a catalog.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageCatalogStatus {
    /// `Ready` (the last commit is applied and its images are Ready), `Reconciling` (a sync
    /// or imports are under way) and `Stalled` (it cannot go on without a change by a person).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The commit of the last sync attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_revision: Option<String>,
    /// The commit whose images are applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_revision: Option<String>,
    /// The problems that kept the last attempted commit from being applied, as
    /// `file:line:column: message`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// The images this catalog created and owns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inventory: Vec<InventoryEntry>,
    /// How many of the catalog's images are in each phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImageCounts>,
}

#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub struct InventoryEntry {
    pub name: String,
    pub uid: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageCounts {
    pub total: u32,
    pub ready: u32,
    /// Pending, WaitForUserUpload or Provisioning.
    pub in_progress: u32,
    pub failed: u32,
    pub image_lost: u32,
    pub terminating: u32,
}

/// Condition types and reasons of an ImageCatalog.
pub mod condition {
    pub const READY: &str = "Ready";
    pub const RECONCILING: &str = "Reconciling";
    pub const STALLED: &str = "Stalled";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(yaml: &str) -> ImageCatalog {
        serde_yaml::from_str(yaml).expect("catalog parses")
    }

    #[test]
    fn defaults_fill_in_what_a_short_catalog_leaves_out() {
        let catalog = catalog(
            "apiVersion: imagecatalog.dev/v1alpha1\nkind: ImageCatalog\nmetadata: {name: base}\n\
             spec:\n  git: {url: 'https://git.example/catalog.git', ref: {branch: main}}\n",
        );
        assert_eq!(catalog.spec.interval, "5m");
        assert!(catalog.spec.prune);
        assert_eq!(catalog.spec.git.path, ".");
        assert_eq!(catalog.spec.ready_image_policy, ReadyImagePolicy::Fail);
        assert!(catalog.validate_cel().is_ok());
    }

    #[test]
    fn cel_refuses_a_secret_ref_over_http_or_git() {
        for url in ["http://git.example/c.git", "git://git.example/c.git"] {
            let insecure = catalog(&format!(
                "apiVersion: imagecatalog.dev/v1alpha1\nkind: ImageCatalog\nmetadata: {{name: base}}\n\
                 spec:\n  git: {{url: '{url}', ref: {{branch: main}}, secretRef: {{name: s}}}}\n",
            ));
            let errors = format!("{:?}", insecure.validate_cel().unwrap_err());
            assert!(
                errors.contains("never sent over http://"),
                "{url}: {errors}"
            );
        }
        let fine = catalog(
            "apiVersion: imagecatalog.dev/v1alpha1\nkind: ImageCatalog\nmetadata: {name: base}\n\
             spec:\n  git: {url: 'http://git.example/c.git', ref: {branch: main}}\n",
        );
        assert!(fine.validate_cel().is_ok());
    }

    #[test]
    fn cel_rules_want_exactly_one_revision_and_complete_forge_settings() {
        let two_refs = catalog(
            "apiVersion: imagecatalog.dev/v1alpha1\nkind: ImageCatalog\nmetadata: {name: base}\n\
             spec:\n  git: {url: 'https://git.example/c.git', ref: {branch: main, tag: v1}}\n",
        );
        let errors = format!("{:?}", two_refs.validate_cel().unwrap_err());
        assert!(errors.contains("exactly one of branch"), "{errors}");

        let gitea_without_api = catalog(
            "apiVersion: imagecatalog.dev/v1alpha1\nkind: ImageCatalog\nmetadata: {name: base}\n\
             spec:\n  git: {url: 'https://git.example/c.git', ref: {branch: main}}\n\
             \x20 commitStatus: {provider: Gitea, repository: o/r, secretRef: {name: t}}\n",
        );
        let errors = format!("{:?}", gitea_without_api.validate_cel().unwrap_err());
        assert!(errors.contains("apiURL is required"), "{errors}");
    }
}
