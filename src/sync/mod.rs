//! The ImageCatalog controller: fetch the catalog's commit, validate it whole, dry-run,
//! apply, prune, record the inventory, and report on the commit.

pub mod controller;
pub mod fetch_error;
pub mod plan;
pub mod source;
pub mod status;
pub mod webhook;
