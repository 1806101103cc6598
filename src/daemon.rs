//! `image-catalog controller`: configuration by flags with environment fallbacks, and the
//! start-up of the controllers and the HTTP endpoints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::dvcr::{Dvcr, DvcrConfig};
use crate::import::controller::{self, ControllerSettings};
use crate::import::inspect::InspectLimits;
use crate::import::pipeline::PipelineSettings;
use crate::import::source::http::HttpSourceOptions;
use crate::import::source::upload::UploadGate;
use crate::metrics::Metrics;
use crate::server::{self, ServerState};

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

#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// Path of a kubeconfig; without it, the in-cluster configuration (or ~/.kube/config).
    #[arg(long, env = "KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The namespace the daemon runs in (for its Secrets).
    #[arg(long, env = "POD_NAMESPACE", default_value = "image-catalog")]
    pub namespace: String,
    #[command(flatten)]
    pub dvcr: DvcrArgs,
    /// How many images may import at once; the others wait in Pending.
    #[arg(long, env = "MAX_CONCURRENT_IMPORTS", default_value_t = 4)]
    pub max_concurrent_imports: usize,
    /// Handle only the images matching this label selector.
    #[arg(long, env = "IMAGE_SELECTOR")]
    pub selector: Option<String>,
    /// Run the import controller. Switch it off on clusters where the platform's own
    /// controller imports ClusterVirtualImages.
    #[arg(long, env = "IMPORT_CONTROLLER", default_value_t = true, action = clap::ArgAction::Set)]
    pub import_controller: bool,
    /// Address of the metrics, health and readiness endpoints.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Where to keep downloads of unknown size until their size is known.
    #[arg(long, env = "SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Refuse images that unpack to more than this many bytes (decompression bombs).
    #[arg(long, env = "MAX_UNPACKED_SIZE", default_value_t = 1 << 40)]
    pub max_unpacked_size: u64,
    /// Attempts of one import after transient failures before it ends in Failed.
    #[arg(long, default_value_t = 5)]
    pub max_import_attempts: u32,
    /// Address of the upload endpoint (`PUT <base>/upload/<token>`) for `type: Upload` images.
    #[arg(long, env = "UPLOAD_ADDR", default_value = "0.0.0.0:8081")]
    pub upload_addr: SocketAddr,
    /// Base URL of the upload endpoint as seen from outside the cluster (an Ingress), shown in
    /// status.imageUploadURLs.external. Defaults to http://<--upload-addr>.
    #[arg(long, env = "UPLOAD_EXTERNAL_URL")]
    pub upload_external_url: Option<String>,
    /// Base URL of the upload endpoint inside the cluster (the daemon's Service).
    #[arg(long, env = "UPLOAD_IN_CLUSTER_URL")]
    pub upload_in_cluster_url: Option<String>,
    /// How long an Upload image waits for its upload before it fails, in seconds.
    #[arg(long, env = "UPLOAD_TIMEOUT_SECONDS", default_value_t = 600)]
    pub upload_timeout_seconds: u64,
    /// Run the ImageCatalog controller (sync Git catalogs into ClusterVirtualImages).
    #[arg(long, env = "CATALOG_CONTROLLER", default_value_t = true, action = clap::ArgAction::Set)]
    pub catalog_controller: bool,
    /// Where catalogs' Git repositories are cached (one folder per catalog).
    #[arg(long, env = "GIT_CACHE_DIR")]
    pub git_cache_dir: Option<PathBuf>,
    /// Address of the Git webhook endpoint (`POST /hooks/<catalog>`).
    #[arg(long, env = "WEBHOOK_ADDR", default_value = "0.0.0.0:8082")]
    pub webhook_addr: SocketAddr,
    /// Parallel API calls of a catalog sync (dry runs and applies).
    #[arg(long, env = "SYNC_API_CONCURRENCY", default_value_t = 32)]
    pub sync_api_concurrency: usize,
    /// Re-verify stored images on their schedules and check that Ready images are still in
    /// DVCR (needs the import controller's DVCR access).
    #[arg(long, env = "VERIFICATION", default_value_t = true, action = clap::ArgAction::Set)]
    pub verification: bool,
    /// The verification schedule (five-field cron, UTC) of images without the
    /// `imagecatalog.dev/verify-schedule` annotation.
    #[arg(long, env = "VERIFY_SCHEDULE", default_value = "0 3 * * *")]
    pub verify_schedule: String,
    /// Runs of one schedule are spread over this many seconds.
    #[arg(long, env = "VERIFY_JITTER_SECONDS", default_value_t = 3600)]
    pub verify_jitter_seconds: u64,
    /// Verifications reading from DVCR at once.
    #[arg(long, env = "VERIFY_CONCURRENCY", default_value_t = 2)]
    pub verify_concurrency: usize,
    /// How often each Ready image's manifest is checked to be in DVCR, in seconds.
    #[arg(long, env = "PRESENCE_INTERVAL_SECONDS", default_value_t = 300)]
    pub presence_interval_seconds: u64,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "LOG_JSON", default_value_t = false)]
    pub log_json: bool,
}

pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    init_logging(args.log_json);
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));

    // Every part runs until the process ends; the first one to stop ends the daemon.
    let mut parts: tokio::task::JoinSet<anyhow::Result<()>> = tokio::task::JoinSet::new();
    let router = server::router(ServerState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    });
    let metrics_addr = args.metrics_addr;
    parts.spawn(async move {
        server::serve(metrics_addr, router)
            .await
            .with_context(|| format!("serving metrics on {metrics_addr}"))
    });

    if args.catalog_controller {
        let settings = crate::sync::controller::SyncSettings {
            namespace: args.namespace.clone(),
            cache_dir: git_cache_dir(&args),
            api_concurrency: args.sync_api_concurrency.max(1),
        };
        let sync = crate::sync::controller::new(client.clone(), settings, metrics.clone());
        let hooks = crate::sync::webhook::router(
            client.clone(),
            args.namespace.clone(),
            sync.trigger(),
            metrics.clone(),
        );
        let webhook_addr = args.webhook_addr;
        parts.spawn(async move {
            server::serve(webhook_addr, hooks)
                .await
                .with_context(|| format!("serving webhooks on {webhook_addr}"))
        });
        parts.spawn(async move {
            sync.run().await;
            Ok(())
        });
        tracing::info!("catalog controller started");
    }

    if args.import_controller {
        let dvcr = Dvcr::new(dvcr_config(&args.dvcr, &args.namespace, &client).await?)
            .context("configuring DVCR access")?;
        let settings = ControllerSettings {
            max_concurrent_imports: args.max_concurrent_imports,
            selector: args.selector.clone(),
            pipeline: PipelineSettings {
                inspect: InspectLimits {
                    max_unpacked_size: args.max_unpacked_size,
                },
                spool_dir: args.spool_dir.clone().unwrap_or_else(std::env::temp_dir),
            },
            http: HttpSourceOptions::default(),
            max_attempts: args.max_import_attempts.max(1),
            retry_backoff: Duration::from_secs(10),
            status_interval: Duration::from_secs(2),
            namespace: args.namespace.clone(),
            upload_timeout: Duration::from_secs(args.upload_timeout_seconds),
            upload_external_base: args
                .upload_external_url
                .clone()
                .unwrap_or_else(|| format!("http://{}", args.upload_addr)),
            upload_in_cluster_base: args
                .upload_in_cluster_url
                .clone()
                .unwrap_or_else(|| format!("http://image-catalog-upload.{}.svc", args.namespace)),
        };
        let uploads = Arc::new(UploadGate::default());
        let upload_addr = args.upload_addr;
        let upload_router = uploads.clone().router();
        parts.spawn(async move {
            server::serve(upload_addr, upload_router)
                .await
                .with_context(|| format!("serving uploads on {upload_addr}"))
        });
        if args.verification {
            let verify_settings = crate::verify::scheduler::VerifySettings {
                default_schedule: args.verify_schedule.clone(),
                jitter_window: Duration::from_secs(args.verify_jitter_seconds),
                concurrency: args.verify_concurrency,
                presence_interval: Duration::from_secs(args.presence_interval_seconds.max(1)),
                selector: args.selector.clone(),
            };
            // Verification checks go to the catalogs' commits, through their own notes
            // cache: two writers must not share one local repository.
            let publishers = args.catalog_controller.then(|| {
                crate::sync::publish::Publishers::new(
                    client.clone(),
                    crate::sync::controller::SyncSettings {
                        namespace: args.namespace.clone(),
                        cache_dir: git_cache_dir(&args).join(".verify"),
                        api_concurrency: 1,
                    },
                )
            });
            let (client, dvcr, metrics) = (client.clone(), dvcr.clone(), metrics.clone());
            tracing::info!("verification started");
            parts.spawn(async move {
                crate::verify::scheduler::run(client, dvcr, verify_settings, metrics, publishers)
                    .await
            });
        }
        let ctx = controller::Context::new(client, dvcr, settings, metrics, uploads);
        tracing::info!("import controller started");
        let import_ready = ready.clone();
        parts.spawn(async move {
            controller::run(ctx, import_ready).await;
            Ok(())
        });
    } else {
        tracing::info!("the import controller is switched off");
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    match parts.join_next().await {
        Some(Ok(Ok(()))) | None => Ok(()),
        Some(Ok(Err(error))) => Err(error),
        Some(Err(error)) => Err(error).context("a part of the daemon stopped"),
    }
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // A second initialisation (tests) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn git_cache_dir(args: &ControllerArgs) -> PathBuf {
    args.git_cache_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("image-catalog-git"))
}

pub async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    crate::tls::install_crypto_provider();
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("finding the Kubernetes configuration")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
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
            let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
            let secret = secrets
                .get(secret)
                .await
                .with_context(|| format!("reading the DVCR auth Secret {}/{secret}", namespace))?;
            let (username, password) = registry_credentials(&secret, &registry)?;
            (Some(username), Some(password))
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

/// The user name and password for `registry` in a dockerconfigjson Secret.
pub fn registry_credentials(secret: &Secret, registry: &str) -> anyhow::Result<(String, String)> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let data = secret
        .data
        .as_ref()
        .and_then(|data| data.get(".dockerconfigjson"))
        .with_context(|| format!("Secret {name} has no .dockerconfigjson key; it must be of type kubernetes.io/dockerconfigjson"))?;
    let config: serde_json::Value = serde_json::from_slice(&data.0)
        .with_context(|| format!("Secret {name}: .dockerconfigjson is not JSON"))?;
    let auths = config["auths"]
        .as_object()
        .with_context(|| format!("Secret {name}: no \"auths\" in .dockerconfigjson"))?;
    let entry = auths
        .iter()
        .find(|(host, _)| registry_key(host) == registry_key(registry))
        .map(|(_, entry)| entry)
        .with_context(|| format!("Secret {name} has no credentials for {registry}"))?;
    if let (Some(user), Some(pass)) = (entry["username"].as_str(), entry["password"].as_str()) {
        return Ok((user.to_string(), pass.to_string()));
    }
    let auth = entry["auth"].as_str().with_context(|| {
        format!("Secret {name}: the entry for {registry} has neither username/password nor auth")
    })?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .with_context(|| {
            format!("Secret {name}: the auth of {registry} is not base64 of user:password")
        })?;
    let (user, pass) = decoded
        .split_once(':')
        .with_context(|| format!("Secret {name}: the auth of {registry} is not user:password"))?;
    Ok((user.to_string(), pass.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(json: &str) -> Secret {
        let mut secret = Secret::default();
        secret.metadata.name = Some("dvcr-auth".into());
        secret.data = Some(
            [(
                ".dockerconfigjson".to_string(),
                ByteString(json.as_bytes().to_vec()),
            )]
            .into(),
        );
        secret
    }

    #[test]
    fn credentials_come_from_auth_or_from_username_and_password() {
        let by_auth = secret(r#"{"auths":{"dvcr.example:5000":{"auth":"dXNlcjpwYTpzcw=="}}}"#);
        assert_eq!(
            registry_credentials(&by_auth, "dvcr.example:5000").unwrap(),
            ("user".into(), "pa:ss".into())
        );
        let by_fields =
            secret(r#"{"auths":{"https://dvcr.example:5000/":{"username":"u","password":"p"}}}"#);
        assert_eq!(
            registry_credentials(&by_fields, "dvcr.example:5000").unwrap(),
            ("u".into(), "p".into())
        );
    }

    #[test]
    fn docker_hub_credentials_match_whatever_name_the_secret_uses() {
        let hub =
            secret(r#"{"auths":{"https://index.docker.io/v1/":{"username":"h","password":"p"}}}"#);
        assert_eq!(
            registry_credentials(&hub, "index.docker.io").unwrap(),
            ("h".into(), "p".into())
        );
        assert_eq!(
            registry_credentials(&hub, "docker.io").unwrap(),
            ("h".into(), "p".into())
        );
    }

    #[test]
    fn a_secret_without_the_registry_says_so_without_revealing_other_credentials() {
        let other = secret(r#"{"auths":{"other:5000":{"username":"u","password":"hunter2"}}}"#);
        let error = registry_credentials(&other, "dvcr.example:5000")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("no credentials for dvcr.example:5000"),
            "{error}"
        );
        assert!(!error.contains("hunter2"));
    }
}
