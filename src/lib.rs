//! image-catalog: syncs a Git catalog of VM images into ClusterVirtualImages and imports the
//! images into DVCR.
//!
//! The modules follow the data: `api` (resource types) → `catalog` → `sync` → `import` →
//! `dvcr` → `report`; `k8s` holds the Kubernetes plumbing they share (leader election).

pub mod api;
pub mod catalog;
pub mod cli_args;
pub mod daemon;
pub mod dvcr;
pub mod egress;
#[doc(hidden)]
pub mod fuzzing;
pub mod git;
pub mod import;
pub mod inspect_cli;
pub mod k8s;
pub mod metrics;
pub mod net;
pub mod panics;
pub mod plan_cli;
pub mod report;
pub mod schedule;
pub mod server;
pub mod sync;
pub mod tls;
pub mod upload_cli;
pub mod verify;
pub mod verify_cli;
