//! Prometheus metrics of the daemon, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabel {
    pub catalog: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ImageLabel {
    pub image: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CatalogLabel {
    pub catalog: String,
}

pub struct Metrics {
    registry: Registry,
    pub catalog_syncs: Family<SyncLabel, Counter>,
    pub catalog_writes: Family<CatalogLabel, Counter>,
    pub catalog_sync_seconds: Family<CatalogLabel, Histogram>,
    pub webhooks: Family<ReasonLabel, Counter>,
    pub verifications: Family<ReasonLabel, Counter>,
    pub verifications_in_flight: Gauge,
    pub verification_last_success: Family<ImageLabel, Gauge>,
    pub imports_in_flight: Gauge,
    pub imports_queued: Gauge,
    pub uploads_open: Gauge,
    pub bytes_imported: Counter,
    pub import_duration_seconds: Histogram,
    pub import_failures: Family<ReasonLabel, Counter>,
    pub imports_succeeded: Counter,
    pub copies_mounted: Counter,
    pub copies_streamed: Counter,
    pub reconcile_errors: Family<KindLabel, Counter>,
    pub leader: Gauge,
    pub leader_transitions: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("image_catalog");
        let imports_in_flight = Gauge::default();
        registry.register(
            "imports_in_flight",
            "Imports moving bytes right now",
            imports_in_flight.clone(),
        );
        let uploads_open = Gauge::default();
        registry.register(
            "uploads_open",
            "Upload images whose upload URL accepts an upload (waiting for or receiving one)",
            uploads_open.clone(),
        );
        let imports_queued = Gauge::default();
        registry.register(
            "imports_queued",
            "Imports waiting for a free import slot",
            imports_queued.clone(),
        );
        let bytes_imported = Counter::default();
        registry.register(
            "imported_bytes",
            "Bytes received from image sources",
            bytes_imported.clone(),
        );
        // 1 s to about 4.5 hours.
        let import_duration_seconds = Histogram::new(exponential_buckets(1.0, 2.0, 15));
        registry.register(
            "import_duration_seconds",
            "Duration of successful imports, from the first byte requested to the tagged image",
            import_duration_seconds.clone(),
        );
        let import_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "import_failures",
            "Imports that ended in Failed, by condition reason",
            import_failures.clone(),
        );
        let imports_succeeded = Counter::default();
        registry.register(
            "imports_succeeded",
            "Imports that ended in Ready",
            imports_succeeded.clone(),
        );
        let copies_mounted = Counter::default();
        registry.register(
            "copies_mounted",
            "Images copied from another image by mounting its layer, without moving bytes",
            copies_mounted.clone(),
        );
        let copies_streamed = Counter::default();
        registry.register(
            "copies_streamed",
            "Images copied from another image by streaming, after DVCR declined a mount",
            copies_streamed.clone(),
        );
        let reconcile_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by error kind",
            reconcile_errors.clone(),
        );
        let catalog_syncs = Family::<SyncLabel, Counter>::default();
        registry.register(
            "catalog_syncs",
            "Catalog syncs, by catalog and result (applied, unchanged, invalid, fetch_failed, apply_failed, suspended)",
            catalog_syncs.clone(),
        );
        let catalog_writes = Family::<CatalogLabel, Counter>::default();
        registry.register(
            "catalog_writes",
            "Write calls a catalog's syncs made to the API server (applies, deletes, status)",
            catalog_writes.clone(),
        );
        let catalog_sync_seconds = Family::<CatalogLabel, Histogram>::new_with_constructor(|| {
            // 10 ms to about 80 s.
            Histogram::new(exponential_buckets(0.01, 2.0, 14))
        });
        registry.register(
            "catalog_sync_duration_seconds",
            "Duration of catalog syncs, from reading Git to the status written",
            catalog_sync_seconds.clone(),
        );
        let webhooks = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "webhooks",
            "Webhook calls by result (accepted, bad_signature, unknown_catalog, ...)",
            webhooks.clone(),
        );
        let verifications = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "verifications",
            "Verifications of stored images by result (Verified, ChecksumMismatch, ImageLost, SourceChanged, VerificationFailed)",
            verifications.clone(),
        );
        let verifications_in_flight = Gauge::default();
        registry.register(
            "verifications_in_flight",
            "Verifications reading from DVCR right now",
            verifications_in_flight.clone(),
        );
        let verification_last_success = Family::<ImageLabel, Gauge>::default();
        registry.register(
            "verification_last_success_timestamp_seconds",
            "When each image last verified (Unix time); time() minus this is the age of the proof",
            verification_last_success.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader-election Lease and runs the controllers, else 0",
            leader.clone(),
        );
        let leader_transitions = Counter::default();
        registry.register(
            "leader_transitions",
            "Times this replica became the leader",
            leader_transitions.clone(),
        );
        Self {
            registry,
            leader,
            leader_transitions,
            verifications,
            verifications_in_flight,
            verification_last_success,
            catalog_syncs,
            catalog_writes,
            catalog_sync_seconds,
            webhooks,
            imports_in_flight,
            imports_queued,
            uploads_open,
            bytes_imported,
            import_duration_seconds,
            import_failures,
            imports_succeeded,
            copies_mounted,
            copies_streamed,
            reconcile_errors,
        }
    }

    pub fn count_failure(&self, reason: &str) {
        self.import_failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn count_reconcile_error(&self, kind: &str) {
        self.reconcile_errors
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_reason() {
        let metrics = Metrics::new();
        metrics.count_failure("ChecksumMismatch");
        metrics.count_failure("ChecksumMismatch");
        metrics.count_failure("SourceNotFound");
        let text = metrics.encode();
        assert!(
            text.contains(r#"image_catalog_import_failures_total{reason="ChecksumMismatch"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"image_catalog_import_failures_total{reason="SourceNotFound"} 1"#),
            "{text}"
        );
        assert!(text.contains("image_catalog_imports_in_flight 0"), "{text}");
    }

    #[test]
    fn leadership_is_a_gauge_and_its_acquisitions_a_counter() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        assert!(text.contains("image_catalog_leader 0"), "{text}");
        assert!(
            text.contains("image_catalog_leader_transitions_total 0"),
            "{text}"
        );
        metrics.leader.set(1);
        metrics.leader_transitions.inc();
        let text = metrics.encode();
        assert!(text.contains("image_catalog_leader 1"), "{text}");
        assert!(
            text.contains("image_catalog_leader_transitions_total 1"),
            "{text}"
        );
    }
}
