//! The images the import controller watches, counted by phase when scraped: a count kept
//! up to date by hand would drift on every missed transition, the watch's store cannot.

use crate::api::ClusterVirtualImage;
use crate::api::status::ImagePhase;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Mutex;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

/// Set while this replica leads and its import controller watches; a standby reports no
/// images, so only the leader's series can raise an alert.
#[derive(Debug, Default)]
pub struct ImagePhases {
    store: Mutex<Option<Store<ClusterVirtualImage>>>,
}

/// Unsets the store when the controller that filled it stops (aborted or ended).
pub struct WatchingImages<'a>(&'a ImagePhases);

impl Drop for WatchingImages<'_> {
    fn drop(&mut self) {
        self.0.set(None);
    }
}

impl ImagePhases {
    pub fn watch(&self, store: Store<ClusterVirtualImage>) -> WatchingImages<'_> {
        self.set(Some(store));
        WatchingImages(self)
    }

    fn set(&self, store: Option<Store<ClusterVirtualImage>>) {
        *self.store.lock().unwrap_or_else(|p| p.into_inner()) = store;
    }

    fn counts(&self) -> Option<Vec<(ImagePhase, i64)>> {
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let images = store.as_ref()?.state();
        Some(count_phases(images.iter().map(|cvi| {
            cvi.status
                .as_ref()
                .and_then(|status| status.phase)
                .unwrap_or(ImagePhase::Pending)
        })))
    }
}

/// Every phase with its count, zeros included, so `> 0` alerts see a series from the start.
fn count_phases(phases: impl Iterator<Item = ImagePhase>) -> Vec<(ImagePhase, i64)> {
    let mut counts: Vec<(ImagePhase, i64)> = ImagePhase::ALL.iter().map(|p| (*p, 0)).collect();
    for phase in phases {
        if let Some(entry) = counts.iter_mut().find(|(p, _)| *p == phase) {
            entry.1 += 1;
        }
    }
    counts
}

impl Collector for ImagePhases {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(counts) = self.counts() else {
            return Ok(());
        };
        let family = Family::<PhaseLabel, Gauge>::default();
        for (phase, count) in counts {
            family
                .get_or_create(&PhaseLabel {
                    phase: phase.to_string(),
                })
                .set(count);
        }
        let metric = encoder.encode_descriptor(
            "images",
            "ClusterVirtualImages the leader's import controller watches, by phase",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_is_counted_and_an_image_without_status_is_pending() {
        let counts =
            count_phases([ImagePhase::Ready, ImagePhase::Ready, ImagePhase::ImageLost].into_iter());
        assert_eq!(counts.len(), 7);
        assert!(counts.contains(&(ImagePhase::Ready, 2)));
        assert!(counts.contains(&(ImagePhase::ImageLost, 1)));
        assert!(counts.contains(&(ImagePhase::Failed, 0)));
    }
}
