//! The daemon's configuration: flags, each with an environment fallback.

use super::*;

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

/// What only the leader runs: the controllers, verification, and the upload and webhook
/// endpoints (whose Services select the leader's pod).
fn parse_spool_size(text: &str) -> Result<u64, String> {
    spool::parse_quantity(text)
        .filter(|size| *size > 0)
        .ok_or_else(|| format!("{text:?} is not a size such as 16Gi, 500M or 1073741824"))
}
