//! Prometheus metrics of the daemon, served on `/metrics`: one registry, one struct per
//! part of the daemon that counts something.

mod catalog;
mod exposition;
mod images;
mod import;
mod reconcile;
mod verify;

pub use catalog::{CatalogMetrics, CatalogSync, WebhookMetrics};
pub use exposition::Exposition;
pub use images::ImagePhases;
pub use import::ImportMetrics;
pub use reconcile::{ReconcileMetrics, ReconcileTimer, Reconciler};
pub use verify::VerifyMetrics;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Whether this replica leads.
pub struct LeaderMetrics {
    pub leader: Gauge,
    pub transitions: Counter,
}

impl LeaderMetrics {
    fn register(registry: &mut Registry) -> Self {
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader-election Lease and runs the controllers, else 0",
            leader.clone(),
        );
        let transitions = Counter::default();
        registry.register(
            "leader_transitions",
            "Times this replica became the leader",
            transitions.clone(),
        );
        Self {
            leader,
            transitions,
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: ReconcileMetrics,
    pub imports: ImportMetrics,
    pub catalogs: CatalogMetrics,
    pub webhooks: WebhookMetrics,
    pub verifications: VerifyMetrics,
    pub leadership: LeaderMetrics,
    /// The images the import controller watches, counted by phase at each scrape.
    pub images: Arc<ImagePhases>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("image_catalog");
        let images = Arc::new(ImagePhases::default());
        registry.register_collector(Box::new(images.clone()));
        Self {
            reconciles: ReconcileMetrics::register(&mut registry),
            imports: ImportMetrics::register(&mut registry),
            catalogs: CatalogMetrics::register(&mut registry),
            webhooks: WebhookMetrics::register(&mut registry),
            verifications: VerifyMetrics::register(&mut registry),
            leadership: LeaderMetrics::register(&mut registry),
            images,
            registry,
        }
    }

    /// The metrics in the exposition format a scraper asked for.
    pub fn encode(&self, exposition: Exposition) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        match exposition {
            Exposition::OpenMetrics => text,
            Exposition::PrometheusText => exposition::to_prometheus_text(&text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn open_metrics(metrics: &Metrics) -> String {
        metrics.encode(Exposition::OpenMetrics)
    }

    #[test]
    fn imports_are_counted_by_source_outcome_and_reason() {
        let metrics = Metrics::new();
        metrics.imports.failed("HTTP", "ChecksumMismatch");
        metrics.imports.failed("HTTP", "ChecksumMismatch");
        metrics.imports.failed("ContainerImage", "SourceNotFound");
        metrics.imports.succeeded("Upload", Duration::from_secs(3));
        let text = open_metrics(&metrics);
        for line in [
            r#"image_catalog_imports_total{source="HTTP",outcome="failed",reason="ChecksumMismatch"} 2"#,
            r#"image_catalog_imports_total{source="ContainerImage",outcome="failed",reason="SourceNotFound"} 1"#,
            r#"image_catalog_imports_total{source="Upload",outcome="succeeded",reason="Ready"} 1"#,
            r#"image_catalog_import_duration_seconds_count{source="Upload"} 1"#,
            "image_catalog_imports_in_flight 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn leadership_is_a_gauge_and_its_acquisitions_a_counter() {
        let metrics = Metrics::new();
        let text = open_metrics(&metrics);
        assert!(text.contains("image_catalog_leader 0"), "{text}");
        assert!(
            text.contains("image_catalog_leader_transitions_total 0"),
            "{text}"
        );
        metrics.leadership.leader.set(1);
        metrics.leadership.transitions.inc();
        let text = open_metrics(&metrics);
        assert!(text.contains("image_catalog_leader 1"), "{text}");
        assert!(
            text.contains("image_catalog_leader_transitions_total 1"),
            "{text}"
        );
    }

    #[test]
    fn every_family_has_help_and_a_type_in_both_formats() {
        let metrics = Metrics::new();
        for text in [
            metrics.encode(Exposition::OpenMetrics),
            metrics.encode(Exposition::PrometheusText),
        ] {
            let typed: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .filter_map(|l| l.split(' ').next())
                .collect();
            assert!(typed.len() >= 14, "{text}");
            for family in typed {
                assert!(
                    text.lines()
                        .any(|l| l.starts_with(&format!("# HELP {family} "))),
                    "{family} has no help:\n{text}"
                );
            }
        }
    }
}
