//! The one reader of Secrets, and the rules for which Secret each use may read.
//!
//! - A catalog's Git, commit-status and webhook Secrets live in the daemon's namespace and
//!   must carry [`CATALOG_SECRET_LABEL`]: whoever can write an `ImageCatalog` could otherwise
//!   name any Secret there (DVCR's credentials among them) and have its token sent to a host
//!   of their choosing.
//! - An imagePullSecret (named by a CVI, and so by a line in Git) is read only in the daemon's
//!   namespace or a namespace the operator allowed (`--pull-secret-namespace`, where the chart
//!   also binds the right to read it); never from any tenant's namespace.
//! - The DVCR credentials are the operator's own configuration: read as given.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};

/// The label that lets catalogs use a Secret of the daemon's namespace.
pub const CATALOG_SECRET_LABEL: &str = "imagecatalog.dev/catalog-secret";

/// Reads Secrets for the daemon, applying the rules above.
#[derive(Clone)]
pub struct SecretReader {
    client: Client,
    namespace: String,
    pull_namespaces: Arc<BTreeSet<String>>,
}

/// A Secret as read: its data and the version it was read at.
#[derive(Clone)]
pub struct SecretData {
    pub namespace: String,
    pub name: String,
    pub resource_version: String,
    pub data: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretData")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("Secret {namespace}/{name} does not exist; create it")]
    NotFound { namespace: String, name: String },
    #[error(
        "Secret {namespace}/{name} is not labelled {CATALOG_SECRET_LABEL}=true, so no catalog may use it; if catalogs are meant to, label it: kubectl -n {namespace} label secret {name} {CATALOG_SECRET_LABEL}=true"
    )]
    NotForCatalogs { namespace: String, name: String },
    #[error(
        "imagePullSecrets are read only in the namespaces {allowed}, and {namespace}/{name} is elsewhere; move the Secret into one of them, or allow {namespace} (the chart's pullSecretNamespaces, --pull-secret-namespace)"
    )]
    NamespaceNotAllowed {
        namespace: String,
        name: String,
        allowed: String,
    },
    #[error("reading Secret {namespace}/{name}: {source}")]
    Unreadable {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl SecretError {
    /// The condition reason for a Secret of `role` ("ImagePullSecret", "GitCredentials", …).
    pub fn reason(&self, role: &str) -> String {
        let what = match self {
            Self::NotFound { .. } => "NotFound",
            Self::NotForCatalogs { .. } => "NotLabelled",
            Self::NamespaceNotAllowed { .. } => "NamespaceNotAllowed",
            Self::Unreadable { .. } => "Unreadable",
        };
        format!("{role}{what}")
    }
}

impl SecretReader {
    /// `pull_namespaces`: where imagePullSecrets may be read besides `namespace`.
    pub fn new(
        client: Client,
        namespace: impl Into<String>,
        pull_namespaces: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            pull_namespaces: Arc::new(pull_namespaces.into_iter().collect()),
        }
    }

    /// The daemon's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A Secret a catalog names: in the daemon's namespace, and labelled for catalogs.
    pub async fn catalog_secret(&self, name: &str) -> Result<SecretData, SecretError> {
        let secret = self.read(&self.namespace, name).await?;
        if !labelled_for_catalogs(&secret) {
            return Err(SecretError::NotForCatalogs {
                namespace: self.namespace.clone(),
                name: name.into(),
            });
        }
        Ok(data_of(&self.namespace, name, secret))
    }

    /// An imagePullSecret: `namespace` (the daemon's when none) must be allowed.
    pub async fn pull_secret(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<SecretData, SecretError> {
        let namespace = namespace.unwrap_or(&self.namespace);
        if !pull_namespace_allowed(&self.namespace, &self.pull_namespaces, namespace) {
            let allowed = std::iter::once(self.namespace.as_str())
                .chain(self.pull_namespaces.iter().map(String::as_str))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", ");
            return Err(SecretError::NamespaceNotAllowed {
                namespace: namespace.into(),
                name: name.into(),
                allowed,
            });
        }
        let secret = self.read(namespace, name).await?;
        Ok(data_of(namespace, name, secret))
    }

    /// A Secret of the daemon's own configuration (DVCR's credentials), in its namespace.
    pub async fn own_secret(&self, name: &str) -> Result<SecretData, SecretError> {
        let secret = self.read(&self.namespace, name).await?;
        Ok(data_of(&self.namespace, name, secret))
    }

    async fn read(&self, namespace: &str, name: &str) -> Result<Secret, SecretError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(Some(secret)) => Ok(secret),
            Ok(None) => Err(SecretError::NotFound {
                namespace: namespace.into(),
                name: name.into(),
            }),
            Err(source) => Err(SecretError::Unreadable {
                namespace: namespace.into(),
                name: name.into(),
                source,
            }),
        }
    }
}

fn labelled_for_catalogs(secret: &Secret) -> bool {
    secret
        .labels()
        .get(CATALOG_SECRET_LABEL)
        .is_some_and(|value| value == "true")
}

fn pull_namespace_allowed(own: &str, allowed: &BTreeSet<String>, namespace: &str) -> bool {
    namespace == own || allowed.contains(namespace)
}

fn data_of(namespace: &str, name: &str, secret: Secret) -> SecretData {
    SecretData {
        namespace: namespace.into(),
        name: name.into(),
        resource_version: secret.resource_version().unwrap_or_default(),
        data: secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, value.0))
            .collect(),
    }
}

/// A user name and password for one registry, from a dockerconfigjson Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why a dockerconfigjson Secret gave no credentials; never shows a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "Secret {secret} has no .dockerconfigjson key; it must be of type kubernetes.io/dockerconfigjson"
    )]
    NotDockerConfig { secret: String },
    #[error("Secret {secret}: .dockerconfigjson is not JSON with \"auths\"")]
    NotJson { secret: String },
    #[error("Secret {secret} has no credentials for {registry}")]
    NoEntry { secret: String, registry: String },
    #[error(
        "Secret {secret}: the entry for {registry} has neither username and password nor an auth of base64 user:password"
    )]
    Unusable { secret: String, registry: String },
}

/// A registry as dockerconfigjson keys name it, normalised: no scheme, no path, and Docker
/// Hub under one name (`https://index.docker.io/v1/`, `docker.io`, `index.docker.io`).
fn registry_key(host: &str) -> String {
    let host = host.split_once("://").map_or(host, |(_, rest)| rest);
    let host = host.split('/').next().unwrap_or(host).to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        _ => host,
    }
}

/// The credentials for `registry` in a dockerconfigjson Secret.
pub fn registry_credentials(
    secret: &SecretData,
    registry: &str,
) -> Result<RegistryCredentials, CredentialsError> {
    let name = format!("{}/{}", secret.namespace, secret.name);
    let data =
        secret
            .data
            .get(".dockerconfigjson")
            .ok_or_else(|| CredentialsError::NotDockerConfig {
                secret: name.clone(),
            })?;
    let config: serde_json::Value =
        serde_json::from_slice(data).map_err(|_| CredentialsError::NotJson {
            secret: name.clone(),
        })?;
    let auths = config["auths"]
        .as_object()
        .ok_or_else(|| CredentialsError::NotJson {
            secret: name.clone(),
        })?;
    let entry = auths
        .iter()
        .find(|(host, _)| registry_key(host) == registry_key(registry))
        .map(|(_, entry)| entry)
        .ok_or_else(|| CredentialsError::NoEntry {
            secret: name.clone(),
            registry: registry.into(),
        })?;
    if let (Some(username), Some(password)) =
        (entry["username"].as_str(), entry["password"].as_str())
    {
        return Ok(RegistryCredentials {
            username: username.into(),
            password: password.into(),
        });
    }
    let unusable = || CredentialsError::Unusable {
        secret: name.clone(),
        registry: registry.into(),
    };
    let decoded = entry["auth"]
        .as_str()
        .and_then(|auth| base64::engine::general_purpose::STANDARD.decode(auth).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(unusable)?;
    let (username, password) = decoded.split_once(':').ok_or_else(unusable)?;
    Ok(RegistryCredentials {
        username: username.into(),
        password: password.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(json: &str) -> SecretData {
        SecretData {
            namespace: "image-catalog".into(),
            name: "dvcr-auth".into(),
            resource_version: "1".into(),
            data: [(".dockerconfigjson".to_string(), json.as_bytes().to_vec())].into(),
        }
    }

    fn credentials(username: &str, password: &str) -> RegistryCredentials {
        RegistryCredentials {
            username: username.into(),
            password: password.into(),
        }
    }

    #[test]
    fn credentials_come_from_auth_or_from_username_and_password() {
        let by_auth = secret(r#"{"auths":{"dvcr.example:5000":{"auth":"dXNlcjpwYTpzcw=="}}}"#);
        assert_eq!(
            registry_credentials(&by_auth, "dvcr.example:5000").unwrap(),
            credentials("user", "pa:ss")
        );
        let by_fields =
            secret(r#"{"auths":{"https://dvcr.example:5000/":{"username":"u","password":"p"}}}"#);
        assert_eq!(
            registry_credentials(&by_fields, "dvcr.example:5000").unwrap(),
            credentials("u", "p")
        );
    }

    #[test]
    fn docker_hub_credentials_match_whatever_name_the_secret_uses() {
        let hub =
            secret(r#"{"auths":{"https://index.docker.io/v1/":{"username":"h","password":"p"}}}"#);
        assert_eq!(
            registry_credentials(&hub, "index.docker.io").unwrap(),
            credentials("h", "p")
        );
        assert_eq!(
            registry_credentials(&hub, "docker.io").unwrap(),
            credentials("h", "p")
        );
    }

    #[test]
    fn a_secret_without_the_registry_says_so_without_revealing_other_credentials() {
        let other = secret(r#"{"auths":{"other:5000":{"username":"u","password":"hunter2"}}}"#);
        let error = registry_credentials(&other, "dvcr.example:5000").unwrap_err();
        assert_eq!(
            error,
            CredentialsError::NoEntry {
                secret: "image-catalog/dvcr-auth".into(),
                registry: "dvcr.example:5000".into()
            }
        );
        assert!(!error.to_string().contains("hunter2"));
        let broken = secret(r#"{"auths":{"dvcr.example:5000":{"auth":"aHVudGVyMg=="}}}"#);
        let error = registry_credentials(&broken, "dvcr.example:5000").unwrap_err();
        assert!(matches!(error, CredentialsError::Unusable { .. }));
        assert!(!error.to_string().contains("hunter2"));
    }

    #[test]
    fn pull_secrets_are_read_only_in_the_daemons_namespace_and_those_allowed() {
        let allowed: BTreeSet<String> = ["registry-secrets".to_string()].into();
        assert!(pull_namespace_allowed(
            "image-catalog",
            &allowed,
            "image-catalog"
        ));
        assert!(pull_namespace_allowed(
            "image-catalog",
            &allowed,
            "registry-secrets"
        ));
        assert!(!pull_namespace_allowed(
            "image-catalog",
            &allowed,
            "tenant-a"
        ));
        assert!(!pull_namespace_allowed(
            "image-catalog",
            &BTreeSet::new(),
            "registry-secrets"
        ));
    }

    #[test]
    fn only_secrets_labelled_true_are_for_catalogs() {
        let mut secret = Secret::default();
        assert!(!labelled_for_catalogs(&secret));
        secret.metadata.labels = Some([(CATALOG_SECRET_LABEL.to_string(), "yes".into())].into());
        assert!(!labelled_for_catalogs(&secret));
        secret.metadata.labels = Some([(CATALOG_SECRET_LABEL.to_string(), "true".into())].into());
        assert!(labelled_for_catalogs(&secret));
    }
}
