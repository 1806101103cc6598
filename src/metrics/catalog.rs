//! What the catalog controller and its webhooks count.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabel {
    catalog: String,
    result: &'static str,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CatalogLabel {
    catalog: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabel {
    catalog: String,
    r#type: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// One sync's outcome, as counted.
pub struct CatalogSync<'a> {
    pub catalog: &'a str,
    /// applied, unchanged, invalid, fetch_failed, apply_failed, held, suspended.
    pub result: &'static str,
    /// The reason of the Ready condition the sync left (Succeeded, GitAuthenticationFailed, ...).
    pub reason: String,
    pub writes: u64,
    pub took: Duration,
    /// Each condition of the status the sync left, with its status (True, False, Unknown).
    pub conditions: Vec<(String, String)>,
}

pub struct CatalogMetrics {
    syncs: Family<SyncLabel, Counter>,
    writes: Family<CatalogLabel, Counter>,
    duration: Family<CatalogLabel, Histogram>,
    conditions: Family<ConditionLabel, Gauge>,
}

const CONDITION_STATUSES: [&str; 3] = ["True", "False", "Unknown"];

impl CatalogMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let syncs = Family::default();
        registry.register(
            "catalog_syncs",
            "Catalog syncs, by catalog, result (applied, unchanged, invalid, fetch_failed, apply_failed, held, suspended) and the Ready condition's reason",
            syncs.clone(),
        );
        let writes = Family::default();
        registry.register(
            "catalog_writes",
            "Write calls a catalog's syncs made to the API server (applies, deletes, status)",
            writes.clone(),
        );
        let duration: Family<_, Histogram> = Family::new_with_constructor(|| {
            // 10 ms to about 80 s.
            Histogram::new(exponential_buckets(0.01, 2.0, 14))
        });
        registry.register(
            "catalog_sync_duration_seconds",
            "Duration of catalog syncs, from reading Git to the status written",
            duration.clone(),
        );
        let conditions = Family::default();
        registry.register(
            "catalog_condition",
            "The conditions of each catalog (Ready, Reconciling, Stalled): 1 for the status it has, 0 for the others",
            conditions.clone(),
        );
        Self {
            syncs,
            writes,
            duration,
            conditions,
        }
    }

    pub fn synced(&self, sync: CatalogSync) {
        let catalog = sync.catalog.to_string();
        self.syncs
            .get_or_create(&SyncLabel {
                catalog: catalog.clone(),
                result: sync.result,
                reason: sync.reason,
            })
            .inc();
        let label = CatalogLabel {
            catalog: catalog.clone(),
        };
        self.writes.get_or_create(&label).inc_by(sync.writes);
        self.duration
            .get_or_create(&label)
            .observe(sync.took.as_secs_f64());
        for (type_, current) in sync.conditions {
            for status in CONDITION_STATUSES {
                let label = ConditionLabel {
                    catalog: catalog.clone(),
                    r#type: type_.clone(),
                    status,
                };
                self.conditions
                    .get_or_create(&label)
                    .set(i64::from(current == status));
            }
        }
    }

    /// Drops a deleted catalog's condition series, so no alert fires on a catalog that is
    /// gone; its counters stay, as counters do.
    pub fn forget(&self, catalog: &str, condition_types: &[&str]) {
        for type_ in condition_types {
            for status in CONDITION_STATUSES {
                self.conditions.remove(&ConditionLabel {
                    catalog: catalog.to_string(),
                    r#type: type_.to_string(),
                    status,
                });
            }
        }
    }
}

pub struct WebhookMetrics {
    calls: Family<ResultLabel, Counter>,
}

impl WebhookMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let calls = Family::default();
        registry.register(
            "webhooks",
            "Webhook calls by result (accepted, bad_signature, unknown_catalog, ...)",
            calls.clone(),
        );
        let _ = calls.get_or_create(&ResultLabel { result: "accepted" });
        Self { calls }
    }

    pub fn called(&self, result: &'static str) {
        self.calls.get_or_create(&ResultLabel { result }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn a_catalog_reports_the_status_of_each_condition_and_forgets_them_when_deleted() {
        let mut registry = Registry::default();
        let metrics = CatalogMetrics::register(&mut registry);
        metrics.synced(CatalogSync {
            catalog: "base",
            result: "fetch_failed",
            reason: "GitAuthenticationFailed".into(),
            writes: 1,
            took: Duration::from_millis(20),
            conditions: vec![
                ("Ready".into(), "False".into()),
                ("Stalled".into(), "True".into()),
            ],
        });
        let text = encoded(&registry);
        for line in [
            r#"catalog_condition{catalog="base",type="Ready",status="False"} 1"#,
            r#"catalog_condition{catalog="base",type="Ready",status="True"} 0"#,
            r#"catalog_condition{catalog="base",type="Stalled",status="True"} 1"#,
            r#"catalog_syncs_total{catalog="base",result="fetch_failed",reason="GitAuthenticationFailed"} 1"#,
            r#"catalog_writes_total{catalog="base"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        metrics.forget("base", &["Ready", "Stalled"]);
        let text = encoded(&registry);
        assert!(!text.contains("catalog_condition{"), "{text}");
        assert!(text.contains(r#"catalog_syncs_total{catalog="base""#));
    }
}
