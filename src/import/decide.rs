//! What the controller should do with an image, given its spec generation, its status and the
//! import this process runs for it. Pure.

use crate::api::ImagePhase;

/// The import this process knows about for one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownImport {
    None,
    Running {
        generation: i64,
    },
    /// Finished (Ready or Failed) for this generation: the status written may not have reached
    /// the watch cache yet, so the cache must not restart it.
    Finished {
        generation: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do: the image is done, or its import runs.
    Wait,
    /// Start importing the current spec.
    Start,
    /// The spec changed while an import ran: cancel it and start over.
    Restart,
}

pub fn decide(
    generation: i64,
    phase: Option<ImagePhase>,
    observed_generation: Option<i64>,
    known: KnownImport,
) -> Decision {
    match known {
        KnownImport::Running {
            generation: running,
        } if running == generation => Decision::Wait,
        KnownImport::Running { .. } => Decision::Restart,
        KnownImport::Finished {
            generation: finished,
        } if finished == generation => Decision::Wait,
        KnownImport::Finished { .. } | KnownImport::None => {
            let settled = matches!(
                phase,
                Some(ImagePhase::Ready | ImagePhase::ImageLost | ImagePhase::Failed)
            ) && observed_generation == Some(generation);
            // A Ready image whose spec changed anyway (the admission policy is not installed)
            // keeps its stored bytes: the spec of a Ready image is frozen.
            let frozen = matches!(phase, Some(ImagePhase::Ready | ImagePhase::ImageLost));
            if settled || frozen {
                Decision::Wait
            } else {
                Decision::Start
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ImagePhase::*;

    #[test]
    fn a_new_image_starts_importing() {
        assert_eq!(decide(1, None, None, KnownImport::None), Decision::Start);
    }

    #[test]
    fn an_import_interrupted_by_a_restart_of_the_daemon_starts_over() {
        assert_eq!(
            decide(1, Some(Provisioning), Some(1), KnownImport::None),
            Decision::Start
        );
        assert_eq!(
            decide(1, Some(Pending), Some(1), KnownImport::None),
            Decision::Start
        );
    }

    #[test]
    fn a_running_import_of_the_current_spec_is_left_alone() {
        assert_eq!(
            decide(
                2,
                Some(Provisioning),
                Some(2),
                KnownImport::Running { generation: 2 }
            ),
            Decision::Wait
        );
    }

    #[test]
    fn a_spec_change_while_importing_restarts_the_import() {
        assert_eq!(
            decide(
                3,
                Some(Provisioning),
                Some(2),
                KnownImport::Running { generation: 2 }
            ),
            Decision::Restart
        );
    }

    #[test]
    fn settled_images_stay_settled_until_their_spec_changes() {
        assert_eq!(
            decide(1, Some(Ready), Some(1), KnownImport::None),
            Decision::Wait
        );
        assert_eq!(
            decide(1, Some(Failed), Some(1), KnownImport::None),
            Decision::Wait
        );
        assert_eq!(
            decide(2, Some(Failed), Some(1), KnownImport::None),
            Decision::Start
        );
        assert_eq!(
            decide(2, Some(Ready), Some(1), KnownImport::None),
            Decision::Wait
        );
    }

    #[test]
    fn a_finished_import_is_not_repeated_while_the_cache_lags_behind() {
        assert_eq!(
            decide(
                1,
                Some(Provisioning),
                Some(1),
                KnownImport::Finished { generation: 1 }
            ),
            Decision::Wait
        );
        assert_eq!(
            decide(
                2,
                Some(Failed),
                Some(1),
                KnownImport::Finished { generation: 1 }
            ),
            Decision::Start
        );
    }
}
