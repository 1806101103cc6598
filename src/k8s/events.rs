//! The one Event publisher: each controller reports under its own name, reasons and notes
//! are cut to what the Events API takes, and a failed publish is logged, never an error —
//! an Event is a courtesy, the status is the record.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
pub use kube::runtime::events::Event;
pub use kube::runtime::events::EventType;
use kube::runtime::events::{Recorder, Reporter};

/// The Events API's limits: 128 characters of reason, 1 KiB of note (bytes, so a note of
/// many-byte characters is cut by its bytes).
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
        event.note = event.note.map(|note| cut_note(&note));
        if let Err(error) = self.recorder.publish(&event, object).await {
            tracing::debug!(%error, reason = %event.reason, "publishing an Event failed");
        }
    }
}

/// `note` within MAX_NOTE bytes, cut on a character boundary and marked when cut.
fn cut_note(note: &str) -> String {
    if note.len() <= MAX_NOTE {
        return note.to_string();
    }
    let mut cut = MAX_NOTE - 3;
    while !note.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &note[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_note_is_cut_to_the_apis_bytes_on_a_character_boundary() {
        assert_eq!(cut_note("short"), "short");
        let cut = cut_note(&"é".repeat(800));
        assert!(
            cut.len() <= MAX_NOTE && cut.ends_with("..."),
            "{}",
            cut.len()
        );
        assert_eq!(cut_note(&"a".repeat(MAX_NOTE)).len(), MAX_NOTE);
    }
}
