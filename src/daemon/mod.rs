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

mod args;
mod parts;
mod pod;

pub use args::ControllerArgs;
use parts::{configure_dvcr, start_leader_parts};
use pod::{announce_on_own_pod, spawn_pod_labelling, spawn_readiness_probe};

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
