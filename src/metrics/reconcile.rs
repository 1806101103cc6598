//! The standard reconcile metrics of each controller: runs, failures by reason, duration.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabel {
    controller: &'static str,
    reason: &'static str,
}

/// The controllers that reconcile, each with its series from the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconciler {
    /// ImageCatalogs into ClusterVirtualImages.
    Catalog,
    /// ClusterVirtualImages into DVCR.
    Import,
}

impl Reconciler {
    const ALL: [Self; 2] = [Self::Catalog, Self::Import];

    fn as_str(self) -> &'static str {
        match self {
            Self::Catalog => "catalog",
            Self::Import => "import",
        }
    }
}

pub struct ReconcileMetrics {
    runs: Family<ControllerLabel, Counter>,
    failures: Family<FailureLabel, Counter>,
    duration: Family<ControllerLabel, Histogram>,
}

/// Counts a reconcile when made and observes its duration when dropped, however the
/// reconcile ends.
pub struct ReconcileTimer {
    histogram: Histogram,
    started: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

impl ReconcileMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let runs = Family::default();
        registry.register(
            "reconciles",
            "Reconciles run, by controller (catalog, import)",
            runs.clone(),
        );
        let failures = Family::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and are retried, by controller and error kind",
            failures.clone(),
        );
        let duration: Family<_, Histogram> = Family::new_with_constructor(|| {
            // 1 ms to about 65 s.
            Histogram::new(exponential_buckets(0.001, 2.0, 17))
        });
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciles, by controller",
            duration.clone(),
        );
        for controller in Reconciler::ALL {
            let label = ControllerLabel {
                controller: controller.as_str(),
            };
            let _ = runs.get_or_create(&label);
            let _ = duration.get_or_create(&label);
        }
        Self {
            runs,
            failures,
            duration,
        }
    }

    pub fn start(&self, controller: Reconciler) -> ReconcileTimer {
        let label = ControllerLabel {
            controller: controller.as_str(),
        };
        self.runs.get_or_create(&label).inc();
        ReconcileTimer {
            histogram: self.duration.get_or_create(&label).clone(),
            started: Instant::now(),
        }
    }

    pub fn failed(&self, controller: Reconciler, reason: &'static str) {
        self.failures
            .get_or_create(&FailureLabel {
                controller: controller.as_str(),
                reason,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconcile_is_counted_and_timed_however_it_ends() {
        let mut registry = Registry::default();
        let metrics = ReconcileMetrics::register(&mut registry);
        drop(metrics.start(Reconciler::Import));
        let timer = metrics.start(Reconciler::Import);
        metrics.failed(Reconciler::Import, "kube");
        drop(timer);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"reconciles_total{controller="import"} 2"#,
            r#"reconcile_errors_total{controller="import",reason="kube"} 1"#,
            r#"reconcile_duration_seconds_count{controller="import"} 2"#,
            r#"reconciles_total{controller="catalog"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
