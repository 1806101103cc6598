//! Leader election on a `coordination.k8s.io/v1` Lease, after client-go's `leaderelection`.
//!
//! The decision is pure ([`observe`], [`decide`], [`next_spec`], [`released_spec`]) and tested
//! without an API server; [`Election`] is the thin shell that reads and writes the Lease.
//!
//! Remote clocks are not trusted for expiry: a standby measures a lease's age from the local,
//! monotonic instant at which it last saw the record change, so a holder that stopped renewing
//! is taken over `leaseDurationSeconds` after the standby noticed the last renewal, whatever the
//! holder's clock said. Writes carry the resourceVersion that was read: of two candidates
//! writing at once, the API server accepts one and the other gets a conflict.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::{oneshot, watch};

/// How long a lease lasts and how often it is renewed; client-go's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// How long a standby waits, from the last change of the lease it observed, before it takes
    /// the lease over. Written into the Lease as `leaseDurationSeconds`.
    pub lease_duration: Duration,
    /// How long the leader may go without a successful renewal before it stops leading.
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby looks again.
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl Timings {
    /// The leader must give up (renew deadline) before a standby may take over (lease
    /// duration), and must get several tries at renewing before that.
    pub fn check(&self) -> Result<(), String> {
        if self.retry_period.is_zero() {
            return Err("the retry period must be longer than zero".into());
        }
        if self.renew_deadline <= self.retry_period {
            return Err(format!(
                "the renew deadline ({:?}) must be longer than the retry period ({:?})",
                self.renew_deadline, self.retry_period
            ));
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(format!(
                "the lease duration ({:?}) must be longer than the renew deadline ({:?})",
                self.lease_duration, self.renew_deadline
            ));
        }
        Ok(())
    }
}

/// What leader election reads from a Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `None` when nobody holds the lease (no holder, or an empty one: a released lease).
    pub holder: Option<String>,
    pub lease_duration: Duration,
    pub acquire_time: Option<Timestamp>,
    pub renew_time: Option<Timestamp>,
    pub transitions: i32,
}

impl LeaseRecord {
    pub fn from_spec(spec: Option<&LeaseSpec>) -> Self {
        let spec = spec.cloned().unwrap_or_default();
        Self {
            holder: spec.holder_identity.filter(|holder| !holder.is_empty()),
            lease_duration: Duration::from_secs(
                spec.lease_duration_seconds.unwrap_or(0).max(0) as u64
            ),
            acquire_time: spec.acquire_time.map(|time| time.0),
            renew_time: spec.renew_time.map(|time| time.0),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }
}

/// A record and the local instant at which it was first seen as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub record: LeaseRecord,
    pub at: Instant,
}

/// Remembers `record` as seen at `now`, unless it is the record already observed: then the
/// instant of the earlier observation stays, and with it the lease's expiry.
pub fn observe(previous: Option<Observation>, record: LeaseRecord, now: Instant) -> Observation {
    match previous {
        Some(previous) if previous.record == record => previous,
        _ => Observation { record, at: now },
    }
}

/// Whether this process leads, as far as it knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Standby,
    /// Leading since the last successful write, which started at `renewed_at`.
    Leader {
        renewed_at: Instant,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds the lease, there is none yet, or its holder let it expire: take it.
    Acquire,
    /// The lease is ours: write a fresh renewTime.
    Renew,
    /// Another holder's lease is valid: look again by `until` at the latest.
    Wait { holder: String, until: Instant },
    /// We led, but the lease is no longer ours to write.
    Lost(LostReason),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// No renewal succeeded within the renew deadline; a standby may take over soon.
    RenewDeadlinePassed,
    /// Another candidate holds the lease.
    TakenOver { holder: String },
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LostReason::RenewDeadlinePassed => {
                f.write_str("the lease could not be renewed within the renew deadline")
            }
            LostReason::TakenOver { holder } => write!(f, "the lease is held by {holder} now"),
        }
    }
}

/// What to do about the lease, given what was last observed (`None`: no Lease exists).
pub fn decide(
    observed: Option<&Observation>,
    identity: &str,
    role: Role,
    timings: &Timings,
    now: Instant,
) -> Decision {
    if let Role::Leader { renewed_at } = role
        && now.saturating_duration_since(renewed_at) >= timings.renew_deadline
    {
        return Decision::Lost(LostReason::RenewDeadlinePassed);
    }
    let Some(observed) = observed else {
        return Decision::Acquire;
    };
    match &observed.record.holder {
        None => Decision::Acquire,
        // Ours: renewed while leading, or taken back after a restart under the same identity
        // (the process that wrote it is gone: identities are unique per process).
        Some(holder) if holder == identity => Decision::Renew,
        Some(holder) if matches!(role, Role::Leader { .. }) => {
            Decision::Lost(LostReason::TakenOver {
                holder: holder.clone(),
            })
        }
        Some(holder) => {
            let until = observed.at + observed.record.lease_duration;
            if now >= until {
                Decision::Acquire
            } else {
                Decision::Wait {
                    holder: holder.clone(),
                    until,
                }
            }
        }
    }
}

/// The spec to write for an `Acquire` or `Renew` decision over `current` (`None`: the Lease is
/// to be created); `None` for the decisions that write nothing.
pub fn next_spec(
    decision: &Decision,
    current: Option<&LeaseRecord>,
    identity: &str,
    timings: &Timings,
    now: Timestamp,
) -> Option<LeaseSpec> {
    let (acquire_time, transitions) = match decision {
        Decision::Acquire => (now, current.map_or(0, |record| record.transitions + 1)),
        Decision::Renew => (
            current
                .and_then(|record| record.acquire_time)
                .unwrap_or(now),
            current.map_or(0, |record| record.transitions),
        ),
        Decision::Wait { .. } | Decision::Lost(_) => return None,
    };
    Some(LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(seconds(timings.lease_duration)),
        acquire_time: Some(MicroTime(acquire_time)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    })
}

/// The spec that gives a lease up: no holder, and a duration of one second for candidates that
/// only look at the duration. A standby acquires it on its next look.
pub fn released_spec(current: &LeaseRecord, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(current.transitions),
        ..LeaseSpec::default()
    }
}

fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Where the lease lives and who campaigns for it.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per process: the pod name, or host name and process id outside a pod.
    pub identity: String,
    pub timings: Timings,
}

/// The identity of this process: `pod_name` when set, else `<host name>-<process id>`.
pub fn identity(pod_name: Option<&str>) -> String {
    match pod_name.filter(|name| !name.is_empty()) {
        Some(name) => name.to_string(),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_string())
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "localhost".to_string());
            format!("{host}-{}", std::process::id())
        }
    }
}

type ReleaseReply = oneshot::Sender<anyhow::Result<bool>>;

/// A running election. `leader()` tells whether this process leads; `release()` ends the
/// campaign and gives the lease up.
pub struct Election {
    leader: watch::Receiver<bool>,
    /// `None` for an election that is always won (no Lease).
    campaign: Option<oneshot::Sender<ReleaseReply>>,
    _always: Option<watch::Sender<bool>>,
}

impl Election {
    /// Starts campaigning for the lease in the background.
    pub fn start(client: Client, config: LeaseConfig) -> Self {
        let (leader_tx, leader) = watch::channel(false);
        let (release_tx, release_rx) = oneshot::channel();
        let elector = Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            role: Role::Standby,
            observed: None,
            started: Instant::now(),
            reported_holder: None,
            leader: leader_tx,
        };
        tokio::spawn(elector.run(release_rx));
        Self {
            leader,
            campaign: Some(release_tx),
            _always: None,
        }
    }

    /// No election: this process leads from the start, and no Lease is read or written.
    pub fn always_leader() -> Self {
        let (sender, leader) = watch::channel(true);
        Self {
            leader,
            campaign: None,
            _always: Some(sender),
        }
    }

    /// "Am I leader": true once the lease is acquired, false again when it is lost.
    pub fn leader(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Stops campaigning and, when this process holds the lease, releases it so that a standby
    /// takes over at its next look. Whether a lease was released.
    pub async fn release(self) -> anyhow::Result<bool> {
        let Some(campaign) = self.campaign else {
            return Ok(false);
        };
        let (reply_tx, reply) = oneshot::channel();
        if campaign.send(reply_tx).is_err() {
            return Ok(false);
        }
        reply.await.unwrap_or(Ok(false))
    }
}

/// The shell: reads the Lease, asks [`decide`], writes what it says.
struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    role: Role,
    observed: Option<Observation>,
    started: Instant,
    /// The holder last named in a "standby" log line, so that it is said once per holder.
    reported_holder: Option<String>,
    leader: watch::Sender<bool>,
}

enum Next {
    /// Look again after this long.
    After(Duration),
    Lost(LostReason),
}

impl Elector {
    async fn run(mut self, mut release: oneshot::Receiver<ReleaseReply>) {
        let mut lost = false;
        loop {
            tokio::select! {
                biased;
                reply = &mut release => {
                    let result = self.release().await;
                    if let Ok(reply) = reply {
                        let _ = reply.send(result);
                    }
                    return;
                }
                next = self.look_and_pause(), if !lost => lost = next.is_some(),
            }
        }
    }

    /// One look at the lease, then the pause until the next; `Some` when leadership is lost.
    /// Campaigning again after a loss is for a fresh process: this one stops writing and exits.
    async fn look_and_pause(&mut self) -> Option<LostReason> {
        match self.step().await {
            Next::After(pause) => {
                tokio::time::sleep(pause).await;
                None
            }
            Next::Lost(reason) => {
                tracing::warn!(lease = %self.config.name, %reason, "leadership lost");
                self.role = Role::Standby;
                self.leader.send_replace(false);
                Some(reason)
            }
        }
    }

    /// One look at the lease, bounded in time: a leader's by its renew deadline.
    async fn step(&mut self) -> Next {
        let timings = self.config.timings;
        let started = Instant::now();
        let deadline = match self.role {
            Role::Leader { renewed_at } => renewed_at + timings.renew_deadline,
            Role::Standby => started + timings.renew_deadline,
        };
        if let Role::Leader { .. } = self.role
            && started >= deadline
        {
            return Next::Lost(LostReason::RenewDeadlinePassed);
        }
        match tokio::time::timeout_at(deadline.into(), self.try_acquire_or_renew(started)).await {
            Ok(Ok(next)) => next,
            Ok(Err(error)) => {
                tracing::warn!(lease = %self.config.name, error = format!("{error:#}"), "leader election");
                Next::After(
                    timings
                        .retry_period
                        .min(deadline.saturating_duration_since(Instant::now())),
                )
            }
            Err(_) => match self.role {
                Role::Leader { .. } => Next::Lost(LostReason::RenewDeadlinePassed),
                Role::Standby => {
                    tracing::warn!(lease = %self.config.name, "reading the lease timed out");
                    Next::After(timings.retry_period)
                }
            },
        }
    }

    async fn try_acquire_or_renew(&mut self, started: Instant) -> anyhow::Result<Next> {
        let LeaseConfig {
            namespace,
            name,
            identity,
            timings,
        } = &self.config;
        let lease = self
            .api
            .get_opt(name)
            .await
            .with_context(|| format!("reading lease {namespace}/{name}"))?;
        let now = Instant::now();
        let previous = self.observed.take();
        self.observed = lease
            .as_ref()
            .map(|lease| observe(previous, LeaseRecord::from_spec(lease.spec.as_ref()), now));
        let decision = decide(self.observed.as_ref(), identity, self.role, timings, now);
        let current = self.observed.as_ref().map(|observed| &observed.record);
        let Some(spec) = next_spec(&decision, current, identity, timings, Timestamp::now()) else {
            return Ok(match decision {
                Decision::Lost(reason) => Next::Lost(reason),
                Decision::Wait { holder, until } => {
                    if self.reported_holder.as_ref() != Some(&holder) {
                        tracing::info!("standby: lease {name} held by {holder}");
                        self.reported_holder = Some(holder);
                    }
                    // Wake up when the lease expires if that comes before the next look.
                    Next::After(
                        timings
                            .retry_period
                            .min(until.saturating_duration_since(now) + Duration::from_millis(10)),
                    )
                }
                Decision::Acquire | Decision::Renew => Next::After(timings.retry_period),
            });
        };
        let written = match lease {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                lease.spec = Some(spec);
                // The resourceVersion read above goes with it: a conflict means another
                // candidate wrote the lease since.
                self.api.replace(name, &PostParams::default(), &lease).await
            }
        };
        let written = match written {
            Ok(written) => written,
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::debug!(lease = %name, "another candidate wrote the lease first");
                return Ok(Next::After(Duration::from_millis(100)));
            }
            Err(error) => {
                return Err(error).with_context(|| format!("writing lease {namespace}/{name}"));
            }
        };
        self.observed = Some(observe(
            self.observed.take(),
            LeaseRecord::from_spec(written.spec.as_ref()),
            Instant::now(),
        ));
        if self.role == Role::Standby {
            tracing::info!(
                "acquired leadership of lease {name} (after {} ms waiting)",
                self.started.elapsed().as_millis()
            );
            self.leader.send_replace(true);
        }
        self.role = Role::Leader {
            renewed_at: started,
        };
        Ok(Next::After(timings.retry_period))
    }

    /// Gives the lease up if this process holds it. Whether it did. Asks the API server even
    /// as a standby: a release can cut short an acquisition whose write already landed.
    async fn release(&mut self) -> anyhow::Result<bool> {
        self.role = Role::Standby;
        self.leader.send_replace(false);
        let LeaseConfig {
            namespace,
            name,
            identity,
            ..
        } = &self.config;
        let Some(mut lease) = self
            .api
            .get_opt(name)
            .await
            .with_context(|| format!("reading lease {namespace}/{name} to release it"))?
        else {
            return Ok(false);
        };
        let record = LeaseRecord::from_spec(lease.spec.as_ref());
        if record.holder.as_deref() != Some(identity.as_str()) {
            return Ok(false);
        }
        lease.spec = Some(released_spec(&record, Timestamp::now()));
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error).with_context(|| format!("releasing lease {namespace}/{name}")),
        }
    }
}

#[cfg(test)]
mod tests;
