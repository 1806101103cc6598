//! DVCR, the in-cluster registry of VM images (being written).
