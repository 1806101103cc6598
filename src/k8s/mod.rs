//! Kubernetes plumbing shared by the controllers: the one writer of ClusterVirtualImage
//! status, the one reader of Secrets, the leader-election Lease and the label that routes leader-only traffic to the
//! leader's pod.

pub mod checkpoints;
pub mod client;
pub mod cvi_status;
pub mod events;
pub mod leader_pod;
pub mod lease;
pub mod secrets;
