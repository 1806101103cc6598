//! `image-catalog controller`: configuration by flags with environment fallbacks, and the
//! start-up of the controllers and the HTTP endpoints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use kube::{Api, Client};

use crate::api::cvi::ClusterVirtualImage;
use crate::cli_args::{DvcrArgs, EgressArgs, dvcr_config};
use crate::dvcr::Dvcr;
use crate::import::controller::{self, ControllerSettings};
use crate::import::inspect::InspectLimits;
use crate::import::pipeline::PipelineSettings;
use crate::import::source::http::HttpSourceOptions;
use crate::import::source::upload::UploadGate;
use crate::import::spool::{self, SpoolBudget};
use crate::k8s::client::kube_client;
use crate::k8s::events::{EventPublisher, EventType};
use crate::k8s::leader_pod::{LEADER_LABEL, Marked};
use crate::k8s::lease::{self, Election, LeaseConfig, Timings};
use crate::metrics::Metrics;
use crate::server::{self, ServerState};

#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// Path of a kubeconfig; without it, the in-cluster configuration (or ~/.kube/config).
    #[arg(long, env = "KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The namespace the daemon runs in (for its Secrets and its leader-election Lease).
    #[arg(long, env = "POD_NAMESPACE", default_value = "image-catalog")]
    pub namespace: String,
    /// The Pod the daemon runs in: its leader-election identity, and the pod labelled
    /// `imagecatalog.dev/leader=true` while it leads. Outside a pod: host name and process id,
    /// and no label.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Elect one leader among the replicas through a Lease in --namespace: only the leader
    /// runs the controllers and verification and writes; the others wait as standbys, Ready
    /// for their own health. Off: this process leads at once, and no Lease is used.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// The name of the leader-election Lease: replicas sharing it elect one leader.
    #[arg(long, env = "LEADER_ELECTION_LEASE", default_value = "image-catalog")]
    pub leader_election_lease: String,
    /// How long a standby waits after the last renewal it saw before it takes the lease over.
    #[arg(
        long,
        env = "LEADER_ELECTION_LEASE_DURATION_SECONDS",
        default_value_t = 15
    )]
    pub leader_election_lease_duration_seconds: u64,
    /// How long the leader may fail to renew before it stops (it exits, and comes back as a
    /// standby); shorter than the lease duration.
    #[arg(
        long,
        env = "LEADER_ELECTION_RENEW_DEADLINE_SECONDS",
        default_value_t = 10
    )]
    pub leader_election_renew_deadline_seconds: u64,
    /// How often the leader renews and a standby looks at the lease.
    #[arg(
        long,
        env = "LEADER_ELECTION_RETRY_PERIOD_SECONDS",
        default_value_t = 2
    )]
    pub leader_election_retry_period_seconds: u64,
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
    /// The size of the spool (a Kubernetes quantity such as `16Gi`: the emptyDir's
    /// sizeLimit): downloads of unknown size hold at most fifteen sixteenths of it together.
    /// One larger than that fails with SpoolTooSmall; one that finds it full waits and is
    /// tried again (SpoolBusy).
    #[arg(long, env = "SPOOL_SIZE", default_value = "16Gi", value_parser = parse_spool_size)]
    pub spool_size: u64,
    /// Refuse images that unpack to more than this many bytes (decompression bombs).
    #[arg(long, env = "MAX_UNPACKED_SIZE", default_value_t = 1 << 40)]
    pub max_unpacked_size: u64,
    /// The memory (MiB) the xz decoders of all imports may hold together: each starts with
    /// 48 MiB (`xz -6` on two threads) and grows to at most 128 MiB for larger dictionaries;
    /// an import that finds too little left is tried again later.
    #[arg(long, env = "MAX_DECODER_MEMORY_MIB", default_value_t = 176)]
    pub max_decoder_memory_mib: u64,
    /// Every source (HTTP, registry, upload) must send at least
    /// --source-min-kib-per-window KiB in every window of this many seconds, or the attempt
    /// ends (SourceTooSlow) and is tried again: a drip-feeding server or a stalled uploader
    /// holds an import slot no longer.
    #[arg(long, env = "SOURCE_WINDOW_SECONDS", default_value_t = 60)]
    pub source_window_seconds: u64,
    /// See --source-window-seconds.
    #[arg(long, env = "SOURCE_MIN_KIB_PER_WINDOW", default_value_t = 64)]
    pub source_min_kib_per_window: u64,
    /// One attempt of an import ends after this many minutes (ImportDeadlineExceeded).
    #[arg(long, env = "IMPORT_DEADLINE_MINUTES", default_value_t = 1440)]
    pub import_deadline_minutes: u64,
    /// A namespace whose Secrets CVIs may name as imagePullSecrets (repeatable; the daemon's
    /// own namespace always may, any other is refused): the daemon needs the right to read
    /// Secrets there, which the chart's pullSecretNamespaces binds.
    #[arg(
        long = "pull-secret-namespace",
        env = "PULL_SECRET_NAMESPACES",
        value_delimiter = ','
    )]
    pub pull_secret_namespaces: Vec<String>,
    /// A host commit checks may be sent to besides the catalog's repository host and
    /// api.<that host> (repeatable): for a forge whose API lives elsewhere. Any other apiURL
    /// gets no token.
    #[arg(
        long = "forge-api-host",
        env = "FORGE_API_HOSTS",
        value_delimiter = ','
    )]
    pub forge_api_hosts: Vec<String>,
    /// Attempts of one import after transient failures before it ends in Failed.
    #[arg(long, default_value_t = 5)]
    pub max_import_attempts: u32,
    /// How often a running import saves a checkpoint (its DVCR upload session and hash
    /// states, in a Lease of the daemon's namespace), in milliseconds: after a restart or a
    /// takeover the import goes on from the last one, fetching again at most this long's
    /// worth of bytes.
    #[arg(long, env = "CHECKPOINT_INTERVAL_MS", default_value_t = 1000)]
    pub checkpoint_interval_ms: u64,
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
    #[command(flatten)]
    pub egress: EgressArgs,
}

pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    init_logging(args.log_json);
    // From here on SIGTERM and SIGINT stop the daemon through `stop` below.
    let mut signals = Signals::new()?;
    let timings = Timings {
        lease_duration: Duration::from_secs(args.leader_election_lease_duration_seconds),
        renew_deadline: Duration::from_secs(args.leader_election_renew_deadline_seconds),
        retry_period: Duration::from_secs(args.leader_election_retry_period_seconds),
    };
    if args.leader_election {
        timings
            .check()
            .map_err(|problem| anyhow::anyhow!("--leader-election-*: {problem}"))?;
    }
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));

    // Every part runs until the process ends; the first one to stop ends the daemon.
    let mut parts: tokio::task::JoinSet<anyhow::Result<()>> = tokio::task::JoinSet::new();
    // Every replica serves metrics and health at once, and is Ready by its own health: a
    // replica that is Ready only while it leads would stall rolling updates.
    let router = server::router(ServerState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    });
    let metrics_addr = args.metrics_addr;
    parts.spawn(async move {
        server::serve(metrics_addr, router, server::Limits::default())
            .await
            .with_context(|| format!("serving metrics on {metrics_addr}"))
    });
    // Read at start, so that a standby with a wrong configuration says so now, not at
    // takeover; it waits, not Ready, until the configuration works.
    let mut dvcr = if args.import_controller {
        let Some(dvcr) = configure_dvcr(&args, &client, &mut signals).await else {
            return Ok(());
        };
        spawn_readiness_probe(client.clone(), ready.clone());
        Some(dvcr)
    } else {
        tracing::info!("the import controller is switched off");
        ready.store(true, Ordering::Relaxed);
        None
    };

    let lease = args.leader_election_lease.clone();
    let election = if args.leader_election {
        let identity = lease::identity(args.pod_name.as_deref());
        tracing::info!(%lease, %identity, namespace = %args.namespace, "campaigning for leadership");
        Election::start(
            client.clone(),
            LeaseConfig {
                namespace: args.namespace.clone(),
                name: lease.clone(),
                identity,
                timings,
            },
        )
    } else {
        tracing::info!("leader election is switched off: leading at once");
        Election::always_leader()
    };
    let mut leader = election.leader();
    let mut leading = false;
    let mut labelling: Option<tokio::task::JoinHandle<()>> = None;
    let stop = loop {
        let is_leader = *leader.borrow_and_update();
        if is_leader && !leading {
            leading = true;
            metrics.leadership.leader.set(1);
            metrics.leadership.transitions.inc();
            labelling = Some(spawn_pod_labelling(
                client.clone(),
                args.namespace.clone(),
                args.pod_name.clone(),
            ));
            start_leader_parts(&args, &client, &metrics, dvcr.take(), &mut parts);
        } else if !is_leader && leading {
            metrics.leadership.leader.set(0);
            break Stop::Lost;
        }
        tokio::select! {
            biased;
            signal = signals.recv() => break Stop::Signal(signal),
            changed = leader.changed() => {
                if changed.is_err() {
                    break Stop::Failed(anyhow::anyhow!("the leader election for lease {lease} stopped"));
                }
            }
            Some(ended) = parts.join_next() => break Stop::PartEnded(ended),
        }
    };

    // Stop writing first: the controllers and their writers go before the lease does.
    // (Import tasks they spawned end with the process, moments later.)
    parts.abort_all();
    if let Some(labelling) = labelling {
        labelling.abort();
    }
    if let Stop::Lost = stop {
        tracing::error!(%lease, "lost leadership; exiting");
        return Err(anyhow::anyhow!(
            "lost leadership of lease {lease}; a restart campaigns again as a standby"
        ));
    }
    release(&client, &args, election, &lease, leading).await;
    metrics.leadership.leader.set(0);
    match stop {
        Stop::Signal(signal) => {
            tracing::info!("{signal} received: stopped");
            Ok(())
        }
        Stop::PartEnded(Ok(Ok(()))) | Stop::Lost => Ok(()),
        Stop::PartEnded(Ok(Err(error))) | Stop::Failed(error) => Err(error),
        Stop::PartEnded(Err(error)) => Err(error).context("a part of the daemon stopped"),
    }
}

/// Why the daemon stops.
enum Stop {
    Signal(&'static str),
    Lost,
    PartEnded(Result<anyhow::Result<()>, tokio::task::JoinError>),
    Failed(anyhow::Error),
}

/// SIGTERM (the kubelet, a rolling update) and SIGINT (Ctrl-C).
/// The base of upload URLs from outside the cluster: the configured one, else the upload
/// address itself when it is a real one (a daemon run by hand on 127.0.0.1), else none — a
/// wildcard address such as the default 0.0.0.0 is nowhere a user could send to.
fn external_upload_base(configured: Option<&str>, upload_addr: SocketAddr) -> Option<String> {
    match configured {
        Some(url) if !url.trim().is_empty() => Some(url.trim().to_string()),
        _ if upload_addr.ip().is_unspecified() => None,
        _ => Some(format!("http://{upload_addr}")),
    }
}

/// How often a DVCR configuration that did not work is read again.
const DVCR_CONFIG_RETRY: Duration = Duration::from_secs(15);

/// DVCR access from the flags and the credentials Secret. A misconfiguration (no registry, a
/// Secret without credentials for it, an unreadable CA) does not crash-loop the pod: the daemon
/// stays up and not Ready, says what is wrong in its log and in a Warning Event on its pod, and
/// reads the configuration again every 15 s, so fixing the Secret is enough. None: stopped by
/// a signal while waiting.
async fn configure_dvcr(
    args: &ControllerArgs,
    client: &Client,
    signals: &mut Signals,
) -> Option<Dvcr> {
    let mut last_problem = String::new();
    loop {
        let attempt = match dvcr_config(&args.dvcr, &args.namespace, client).await {
            Ok(config) => Dvcr::new(config).context("configuring DVCR access"),
            Err(error) => Err(error),
        };
        match attempt {
            Ok(dvcr) => {
                if !last_problem.is_empty() {
                    tracing::info!("the DVCR configuration works now");
                }
                return Some(dvcr);
            }
            Err(error) => {
                let problem = format!("{error:#}");
                if problem != last_problem {
                    tracing::error!(
                        problem = %problem,
                        "cannot use DVCR; not importing until the configuration is fixed (read again every {}s)",
                        DVCR_CONFIG_RETRY.as_secs()
                    );
                    announce_on_own_pod(client, args, "DVCRMisconfigured", &format!(
                        "Cannot use DVCR: {problem}. Fix the DVCR settings (the chart's dvcr.* values, or the dvcr-auth Secret); the daemon reads them again every {}s and stays not Ready until then.",
                        DVCR_CONFIG_RETRY.as_secs()
                    ))
                    .await;
                    last_problem = problem;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(DVCR_CONFIG_RETRY) => {}
            signal = signals.recv() => {
                tracing::info!("{signal}: stopping");
                return None;
            }
        }
    }
}

/// A Warning Event on the daemon's own pod, where `kubectl describe pod` shows it. Outside a
/// pod (no POD_NAME) there is only the log.
async fn announce_on_own_pod(client: &Client, args: &ControllerArgs, reason: &str, note: &str) {
    use kube::Resource as _;
    let Some(pod_name) = args.pod_name.as_deref() else {
        return;
    };
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(client.clone(), &args.namespace);
    let pod = match pods.get(pod_name).await {
        Ok(pod) => pod,
        Err(error) => {
            tracing::debug!(%error, "reading the daemon's own pod for an Event failed");
            return;
        }
    };
    EventPublisher::new(client.clone(), "image-catalog")
        .publish(
            &pod.object_ref(&()),
            EventType::Warning,
            reason,
            "Configure",
            note,
        )
        .await;
}

struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("handling SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("handling SIGINT")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// Gives the lease up so that a standby takes over at its next look (about a second), and
/// takes the leader label off this pod if it led.
async fn release(
    client: &Client,
    args: &ControllerArgs,
    election: Election,
    lease: &str,
    leading: bool,
) {
    match tokio::time::timeout(RELEASE_TIMEOUT, election.release()).await {
        Ok(Ok(true)) => tracing::info!("released lease {lease}"),
        Ok(Ok(false)) => {}
        Ok(Err(error)) => tracing::warn!(error = format!("{error:#}"), "releasing the lease"),
        Err(_) => tracing::warn!(
            "releasing lease {lease} timed out: a standby takes over when it expires"
        ),
    }
    if let Some(pod) = args.pod_name.as_ref().filter(|_| leading) {
        let unmark = crate::k8s::leader_pod::unmark(client, &args.namespace, pod);
        match tokio::time::timeout(RELEASE_TIMEOUT, unmark).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(error = format!("{error:#}"), "removing the leader label")
            }
            Err(_) => tracing::warn!("removing the leader label timed out"),
        }
    }
}

const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Labels this pod as the leader's (and takes the label from any other), retrying until it is
/// done: the upload and webhook Services route by that label.
fn spawn_pod_labelling(
    client: Client,
    namespace: String,
    pod: Option<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(pod) = pod else {
            tracing::debug!("POD_NAME is not set: not in a pod, so no pod is labelled leader");
            return;
        };
        let mut delay = Duration::from_millis(500);
        loop {
            match crate::k8s::leader_pod::mark(&client, &namespace, &pod).await {
                Ok(Marked::Pod { unmarked }) => {
                    tracing::info!(
                        ?unmarked,
                        "labelled pod {namespace}/{pod} {LEADER_LABEL}=true"
                    );
                    return;
                }
                Ok(Marked::NoSuchPod) => {
                    tracing::debug!(
                        "no pod {namespace}/{pod}: not in a pod, so no pod is labelled leader"
                    );
                    return;
                }
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "labelling the leader's pod")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    })
}

/// Ready once the images can be listed: the API answers, the CRD is served and the daemon's
/// permissions suffice. A standby is Ready by the same test as the leader.
fn spawn_readiness_probe(client: Client, ready: Arc<AtomicBool>) {
    let api: Api<ClusterVirtualImage> = Api::all(client);
    let params = kube::api::ListParams::default().limit(1);
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(500);
        loop {
            match api.list_metadata(&params).await {
                Ok(_) => {
                    ready.store(true, Ordering::Relaxed);
                    return;
                }
                Err(error) => tracing::warn!(%error, "cannot list ClusterVirtualImages yet"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    });
}

/// What only the leader runs: the controllers, verification, and the upload and webhook
/// endpoints (whose Services select the leader's pod).
fn parse_spool_size(text: &str) -> Result<u64, String> {
    spool::parse_quantity(text)
        .filter(|size| *size > 0)
        .ok_or_else(|| format!("{text:?} is not a size such as 16Gi, 500M or 1073741824"))
}

fn start_leader_parts(
    args: &ControllerArgs,
    client: &Client,
    metrics: &Arc<Metrics>,
    dvcr: Option<Dvcr>,
    parts: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) {
    let egress = args.egress.policy();
    tracing::info!(
        deny = ?args.egress.source_deny.iter().map(ToString::to_string).collect::<Vec<_>>(),
        allow = ?args.egress.source_allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "source egress policy: link-local refused by default"
    );
    if args.catalog_controller {
        let settings = crate::sync::controller::SyncSettings {
            namespace: args.namespace.clone(),
            cache_dir: git_cache_dir(args),
            api_concurrency: args.sync_api_concurrency.max(1),
            forge_api_hosts: args.forge_api_hosts.clone(),
            egress: egress.clone(),
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
            server::serve(webhook_addr, hooks, server::Limits::default())
                .await
                .with_context(|| format!("serving webhooks on {webhook_addr}"))
        });
        parts.spawn(async move {
            sync.run().await;
            Ok(())
        });
        tracing::info!("catalog controller started");
    }

    if let Some(dvcr) = dvcr {
        let spool_dir = args.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
        // Nothing imports yet: what a killed daemon left in the spool goes now.
        match spool::sweep(&spool_dir) {
            Ok(removed) if !removed.is_empty() => {
                let bytes: u64 = removed.iter().map(|(_, size)| size).sum();
                tracing::info!(files = removed.len(), bytes, dir = %spool_dir.display(), "removed spool files an earlier daemon left");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, dir = %spool_dir.display(), "cannot sweep the spool folder")
            }
        }
        let settings = ControllerSettings {
            max_concurrent_imports: args.max_concurrent_imports,
            selector: args.selector.clone(),
            pipeline: PipelineSettings {
                inspect: InspectLimits {
                    max_unpacked_size: args.max_unpacked_size,
                    decoder_memory: crate::import::inspect::DecoderMemory::new(
                        args.max_decoder_memory_mib.saturating_mul(1 << 20),
                    ),
                },
                spool_dir: spool_dir.clone(),
                spool_budget: SpoolBudget::new(spool::budget_of(args.spool_size)),
                pace: crate::import::pace::Pace {
                    window: Duration::from_secs(args.source_window_seconds.max(1)),
                    min_bytes_per_window: args.source_min_kib_per_window.saturating_mul(1024),
                    deadline: Duration::from_secs(
                        args.import_deadline_minutes.max(1).saturating_mul(60),
                    ),
                },
            },
            http: HttpSourceOptions {
                egress: egress.clone(),
                ..HttpSourceOptions::default()
            },
            max_attempts: args.max_import_attempts.max(1),
            retry_backoff: Duration::from_secs(10),
            status_interval: Duration::from_secs(2),
            namespace: args.namespace.clone(),
            pull_secret_namespaces: args.pull_secret_namespaces.clone(),
            upload_timeout: Duration::from_secs(args.upload_timeout_seconds),
            upload_external_base: external_upload_base(
                args.upload_external_url.as_deref(),
                args.upload_addr,
            ),
            upload_in_cluster_base: args
                .upload_in_cluster_url
                .clone()
                .unwrap_or_else(|| format!("http://image-catalog-upload.{}.svc", args.namespace)),
            checkpoint_interval: Duration::from_millis(args.checkpoint_interval_ms.max(100)),
            identity: lease::identity(args.pod_name.as_deref()),
        };
        let uploads = Arc::new(UploadGate::default());
        let upload_addr = args.upload_addr;
        let upload_router = uploads.clone().router();
        parts.spawn(async move {
            server::serve(upload_addr, upload_router, server::Limits::default())
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
                egress: egress.clone(),
            };
            // Verification checks go to the catalogs' commits, through their own notes
            // cache: two writers must not share one local repository.
            let publishers = args.catalog_controller.then(|| {
                crate::report::publish::Publishers::new(
                    client.clone(),
                    crate::report::publish::PublishSettings {
                        namespace: args.namespace.clone(),
                        cache_dir: git_cache_dir(args).join(".verify"),
                        forge_api_hosts: args.forge_api_hosts.clone(),
                        egress: egress.clone(),
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
        let ctx =
            controller::Context::new(client.clone(), dvcr, settings, metrics.clone(), uploads);
        tracing::info!("import controller started");
        parts.spawn(async move {
            controller::run(ctx).await;
            Ok(())
        });
    }
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a log file or `kubectl logs` gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_external_upload_url_is_the_configured_one_or_a_real_listen_address_or_none() {
        let any: SocketAddr = "0.0.0.0:8081".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        assert_eq!(
            external_upload_base(Some("https://images.example.com"), any).as_deref(),
            Some("https://images.example.com")
        );
        assert_eq!(external_upload_base(None, any), None);
        assert_eq!(external_upload_base(Some(""), any), None);
        assert_eq!(
            external_upload_base(None, local).as_deref(),
            Some("http://127.0.0.1:8081")
        );
    }
}
