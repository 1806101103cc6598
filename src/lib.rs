//! image-catalog: syncs a Git catalog of VM images into ClusterVirtualImages and imports the
//! images into DVCR.
//!
//! The modules follow the data: `api` (resource types) → `catalog` → `sync` → `import` →
//! `dvcr` → `report`.

pub mod api;
pub mod catalog;
pub mod daemon;
pub mod dvcr;
pub mod import;
pub mod metrics;
pub mod schedule;
pub mod server;
pub mod tls;
pub mod upload_cli;
