//! Flags several commands share (`controller`, `verify`, `plan`), and what they build: DVCR
//! access and the egress policy of sources.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use kube::Client;

use crate::dvcr::DvcrConfig;
use crate::k8s::secrets::{SecretReader, registry_credentials};

/// How to reach DVCR: shared by the daemon and the commands that read stored images.
#[derive(clap::Args, Debug, Clone)]
pub struct DvcrArgs {
    /// DVCR address, host:port (needed by the import controller).
    #[arg(long, env = "DVCR_REGISTRY", value_name = "HOST:PORT")]
    pub dvcr_registry: Option<String>,
    /// DVCR user name (with --dvcr-password; or use --dvcr-auth-secret).
    #[arg(long, env = "DVCR_USERNAME")]
    pub dvcr_username: Option<String>,
    /// DVCR password. Prefer the environment variable to the flag: flags show in `ps`.
    #[arg(long, env = "DVCR_PASSWORD", hide_env_values = true)]
    pub dvcr_password: Option<String>,
    /// A Secret of type kubernetes.io/dockerconfigjson in --namespace with the DVCR credentials.
    #[arg(long, env = "DVCR_AUTH_SECRET", value_name = "NAME")]
    pub dvcr_auth_secret: Option<String>,
    /// PEM file of the CA that signed DVCR's certificate.
    #[arg(long, env = "DVCR_CA_FILE", value_name = "FILE")]
    pub dvcr_ca_file: Option<PathBuf>,
}

/// Where sources may connect: shared by the daemon and the commands that fetch sources
/// (`verify --upstream`, `plan`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EgressArgs {
    /// Refuse connections of sources (HTTP images, upstream checks, Git remotes) to this
    /// CIDR, address or host name (`*.example.com`: every name below example.com); checked
    /// after DNS on every connection and redirect. Repeatable; the environment variable
    /// takes a comma-separated list. Link-local (169.254.0.0/16, fe80::/10) is always refused.
    #[arg(
        long = "source-deny",
        env = "SOURCE_DENY",
        value_name = "CIDR|HOST",
        value_delimiter = ','
    )]
    pub source_deny: Vec<crate::egress::Rule>,
    /// Open an exception in the --source-deny rules and the link-local default for this
    /// CIDR, address or host name. An allow rule only opens holes in deny rules. Repeatable.
    #[arg(
        long = "source-allow",
        env = "SOURCE_ALLOW",
        value_name = "CIDR|HOST",
        value_delimiter = ','
    )]
    pub source_allow: Vec<crate::egress::Rule>,
}

impl EgressArgs {
    pub fn policy(&self) -> Arc<crate::egress::EgressPolicy> {
        Arc::new(crate::egress::EgressPolicy::new(
            self.source_deny.clone(),
            self.source_allow.clone(),
        ))
    }
}

pub async fn dvcr_config(
    args: &DvcrArgs,
    namespace: &str,
    client: &Client,
) -> anyhow::Result<DvcrConfig> {
    let Some(registry) = args.dvcr_registry.clone() else {
        anyhow::bail!(
            "the import controller needs DVCR: set --dvcr-registry (or DVCR_REGISTRY), or switch it off with --import-controller=false"
        );
    };
    let ca_pem = match &args.dvcr_ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading --dvcr-ca-file {}", path.display()))?,
        ),
        None => None,
    };
    let (username, password) = match &args.dvcr_auth_secret {
        Some(secret) => {
            let reader = SecretReader::new(client.clone(), namespace, []);
            let secret = reader
                .own_secret(secret)
                .await
                .context("reading the DVCR auth Secret")?;
            let credentials = registry_credentials(&secret, &registry)?;
            (Some(credentials.username), Some(credentials.password))
        }
        None => (args.dvcr_username.clone(), args.dvcr_password.clone()),
    };
    Ok(DvcrConfig {
        registry,
        username,
        password,
        ca_pem,
    })
}
