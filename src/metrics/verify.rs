//! What the verify scheduler counts.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ImageLabel {
    image: String,
}

pub struct VerifyMetrics {
    /// Verifications reading from DVCR right now.
    pub in_flight: Gauge,
    finished: Family<OutcomeLabel, Counter>,
    last_success: Family<ImageLabel, Gauge>,
}

impl VerifyMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let finished = Family::default();
        registry.register(
            "verifications",
            "Verifications of stored images, by outcome (verified, failed) and reason (Verified, ChecksumMismatch, ImageLost, SourceChanged, VerificationFailed)",
            finished.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "verifications_in_flight",
            "Verifications reading from DVCR right now",
            in_flight.clone(),
        );
        let last_success = Family::default();
        registry.register(
            "verification_last_success_timestamp_seconds",
            "When each image last verified (Unix time); time() minus this is the age of the proof",
            last_success.clone(),
        );
        let _ = finished.get_or_create(&OutcomeLabel {
            outcome: "verified",
            reason: "Verified".into(),
        });
        Self {
            in_flight,
            finished,
            last_success,
        }
    }

    /// Counts one verification; a verified image's proof is dated `now` (Unix seconds).
    pub fn verified(&self, image: &str, reason: &str, verified: bool, now: i64) {
        self.finished
            .get_or_create(&OutcomeLabel {
                outcome: if verified { "verified" } else { "failed" },
                reason: reason.to_string(),
            })
            .inc();
        if verified {
            self.last_success
                .get_or_create(&ImageLabel {
                    image: image.to_string(),
                })
                .set(now);
        }
    }

    /// Drops a deleted image's proof, so its age does not grow into an alert.
    pub fn forget(&self, image: &str) {
        self.last_success.remove(&ImageLabel {
            image: image.to_string(),
        });
    }
}
