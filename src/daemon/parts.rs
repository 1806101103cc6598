//! What the leader starts: DVCR's configuration, then the catalog controller, verification
//! and the import controller, each a task the daemon aborts when it stops leading.

use super::*;

/// How often a DVCR configuration that did not work is read again.
const DVCR_CONFIG_RETRY: Duration = Duration::from_secs(15);

/// DVCR access from the flags and the credentials Secret. A misconfiguration (no registry, a
/// Secret without credentials for it, an unreadable CA) does not crash-loop the pod: the daemon
/// stays up and not Ready, says what is wrong in its log and in a Warning Event on its pod, and
/// reads the configuration again every 15 s, so fixing the Secret is enough. None: stopped by
/// a signal while waiting.
pub(super) async fn configure_dvcr(
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

pub(super) fn start_leader_parts(
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
                cadence: crate::verify::schedule::Cadence {
                    jitter_window: Duration::from_secs(args.verify_jitter_seconds),
                    presence_interval: Duration::from_secs(args.presence_interval_seconds.max(1)),
                },
                concurrency: args.verify_concurrency,
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

pub(super) fn git_cache_dir(args: &ControllerArgs) -> PathBuf {
    args.git_cache_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("image-catalog-git"))
}
