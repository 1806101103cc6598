//! What the import controller counts: imports by source and outcome, their bytes and time,
//! and the work waiting for a slot.

use crate::api::datasource::DataSourceType;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    source: String,
    outcome: &'static str,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CopyLabel {
    method: &'static str,
}

/// The reason of a Ready image's `Ready` condition, the label of a success.
const SUCCEEDED_REASON: &str = "Ready";

pub struct ImportMetrics {
    /// Imports moving bytes right now.
    pub in_flight: Gauge,
    /// Imports waiting for a free slot.
    pub queued: Gauge,
    /// Upload images whose upload URL accepts an upload.
    pub uploads_open: Gauge,
    finished: Family<OutcomeLabel, Counter>,
    duration: Family<SourceLabel, Histogram>,
    bytes: Family<SourceLabel, Counter>,
    copies: Family<CopyLabel, Counter>,
}

impl ImportMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let in_flight = Gauge::default();
        registry.register(
            "imports_in_flight",
            "Imports moving bytes right now",
            in_flight.clone(),
        );
        let queued = Gauge::default();
        registry.register(
            "imports_queued",
            "Imports waiting for a free import slot",
            queued.clone(),
        );
        let uploads_open = Gauge::default();
        registry.register(
            "uploads_open",
            "Upload images whose upload URL accepts an upload (waiting for or receiving one)",
            uploads_open.clone(),
        );
        let finished = Family::default();
        registry.register(
            "imports",
            "Imports that ended, by source type, outcome (succeeded, failed) and the Ready condition's reason",
            finished.clone(),
        );
        let duration: Family<_, Histogram> = Family::new_with_constructor(|| {
            // 1 s to about 4.5 hours.
            Histogram::new(exponential_buckets(1.0, 2.0, 15))
        });
        registry.register(
            "import_duration_seconds",
            "Duration of successful imports by source type, from the first byte requested (or uploaded) to the tagged image",
            duration.clone(),
        );
        let bytes = Family::default();
        registry.register(
            "imported_bytes",
            "Bytes received from image sources, by source type",
            bytes.clone(),
        );
        let copies = Family::default();
        registry.register(
            "copies",
            "Images copied from another image, by method: mount (DVCR linked the layer, no byte moved) or stream (DVCR declined a mount)",
            copies.clone(),
        );
        let metrics = Self {
            in_flight,
            queued,
            uploads_open,
            finished,
            duration,
            bytes,
            copies,
        };
        // Every source's series exists from the start: a dashboard shows 0, not "no data",
        // and rate() has a first sample to start from.
        for source in DataSourceType::ALL {
            let label = SourceLabel {
                source: source.as_str().to_string(),
            };
            let _ = metrics.duration.get_or_create(&label);
            let _ = metrics.bytes.get_or_create(&label);
            let _ = metrics.finished.get_or_create(&OutcomeLabel {
                source: source.as_str().to_string(),
                outcome: "succeeded",
                reason: SUCCEEDED_REASON.to_string(),
            });
        }
        for method in ["mount", "stream"] {
            let _ = metrics.copies.get_or_create(&CopyLabel { method });
        }
        metrics
    }

    pub fn succeeded(&self, source: &str, took: Duration) {
        self.finished
            .get_or_create(&OutcomeLabel {
                source: source.to_string(),
                outcome: "succeeded",
                reason: SUCCEEDED_REASON.to_string(),
            })
            .inc();
        self.duration
            .get_or_create(&SourceLabel {
                source: source.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn failed(&self, source: &str, reason: &str) {
        self.finished
            .get_or_create(&OutcomeLabel {
                source: source.to_string(),
                outcome: "failed",
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn received(&self, source: &str, bytes: u64) {
        self.bytes
            .get_or_create(&SourceLabel {
                source: source.to_string(),
            })
            .inc_by(bytes);
    }

    pub fn copied(&self, mounted: bool) {
        let method = if mounted { "mount" } else { "stream" };
        self.copies.get_or_create(&CopyLabel { method }).inc();
    }
}
