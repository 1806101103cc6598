//! Kubernetes plumbing shared by the controllers: the leader-election Lease and the label that
//! routes leader-only traffic to the leader's pod.

pub mod leader_pod;
pub mod lease;
