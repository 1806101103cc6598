//! The one Event publisher: each controller reports under its own name, reasons and notes
//! are cut to what the Events API takes, and a failed publish is logged, never an error —
//! an Event is a courtesy, the status is the record.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
pub use kube::runtime::events::Event;
pub use kube::runtime::events::EventType;
use kube::runtime::events::{Recorder, Reporter};

/// The Events API's limits: 128 characters of reason, 1 KiB of note.
const MAX_REASON: usize = 128;
const MAX_NOTE: usize = 1000;

#[derive(Clone)]
pub struct EventPublisher {
    recorder: Recorder,
}

impl EventPublisher {
    /// Events of `controller` (`image-catalog`, `image-catalog-sync`…), from this pod.
    pub fn new(client: Client, controller: &str) -> Self {
        Self {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: controller.into(),
                    instance: std::env::var("POD_NAME").ok(),
                },
            ),
        }
    }

    pub async fn publish(
        &self,
        object: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.into()),
            action: action.into(),
            secondary: None,
        };
        self.send(object, event).await;
    }

    /// Publishes an Event built elsewhere, cut to the API's limits.
    pub async fn send(&self, object: &ObjectReference, mut event: Event) {
        event.reason = event.reason.chars().take(MAX_REASON).collect();
        event.note = event.note.map(|note| note.chars().take(MAX_NOTE).collect());
        if let Err(error) = self.recorder.publish(&event, object).await {
            tracing::debug!(%error, reason = %event.reason, "publishing an Event failed");
        }
    }
}
