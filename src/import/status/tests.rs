use super::*;

fn time(seconds: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
}

/// The status after `state`, at second `at`, for generation 1.
fn step(before: &ImageStatus, state: &ImportState, at: i64) -> ImageStatus {
    next_status(before, 1, state, &time(at))
}

fn transfer(received: u64, total: u64) -> Transfer {
    Transfer {
        received,
        total: Some(total),
        speed: Speed {
            average: 1024 * 1024,
            current: 2 * 1024 * 1024,
        },
        after_restart: AfterRestart::No,
    }
}

#[test]
fn a_running_download_shows_progress_speed_and_stored_size() {
    let status = step(
        &ImageStatus::default(),
        &ImportState::Transferring(transfer(282, 1000)),
        10,
    );
    assert_eq!(status.phase, Some(ImagePhase::Provisioning));
    assert_eq!(status.progress.as_deref(), Some("28.2%"));
    let speed = status.download_speed.unwrap();
    assert_eq!(speed.avg.as_deref(), Some("1Mi/s"));
    assert_eq!(speed.current_bytes.as_deref(), Some("2097152"));
    assert_eq!(status.size.unwrap().stored_bytes.as_deref(), Some("282"));
    let ready = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "Provisioning")
    );
    assert_eq!(status.observed_generation, Some(1));
}

#[test]
fn a_retried_download_of_the_same_import_does_not_move_progress_backwards() {
    let before = step(
        &ImageStatus::default(),
        &ImportState::Transferring(transfer(500, 1000)),
        10,
    );
    let after = step(&before, &ImportState::Transferring(transfer(100, 1000)), 12);
    assert_eq!(after.progress.as_deref(), Some("50.0%"));
}

#[test]
fn upload_urls_stay_while_the_upload_runs_and_go_once_the_image_is_stored() {
    let urls = ImageUploadUrls {
        external: Some("http://x/upload/t".into()),
        in_cluster: Some("http://svc/upload/t".into()),
    };
    let awaiting = step(
        &ImageStatus::default(),
        &ImportState::AwaitingUpload {
            urls: urls.clone(),
            message: "upload".into(),
        },
        10,
    );
    let running = step(&awaiting, &ImportState::Transferring(transfer(1, 2)), 11);
    assert_eq!(running.image_upload_urls, Some(urls));
    let stored = StoredImage {
        registry_url: "dvcr:5000/cvi/a:uid".into(),
        format: "raw".into(),
        cdrom: false,
        stored_size: 2,
        virtual_size: 2,
        source_uid: None,
    };
    let ready = step(&running, &ImportState::Stored(stored), 12);
    assert_eq!(ready.image_upload_urls, None);
}

#[test]
fn a_stored_image_is_ready_with_its_facts_and_no_speed() {
    let running = next_status(
        &ImageStatus::default(),
        3,
        &ImportState::Transferring(transfer(1, 2)),
        &time(10),
    );
    let stored = StoredImage {
        registry_url: "dvcr:5000/cvi/a:uid".into(),
        format: "iso".into(),
        cdrom: true,
        stored_size: 209_190_912,
        virtual_size: 209_190_912,
        source_uid: None,
    };
    let status = next_status(&running, 3, &ImportState::Stored(stored), &time(20));
    assert_eq!(status.phase, Some(ImagePhase::Ready));
    assert_eq!(status.progress.as_deref(), Some("100%"));
    assert!(status.cdrom);
    assert_eq!(
        status.size.as_ref().unwrap().unpacked.as_deref(),
        Some("199.5Mi")
    );
    assert_eq!(status.download_speed, None);
    assert_eq!(
        status.target.unwrap().registry_url.as_deref(),
        Some("dvcr:5000/cvi/a:uid")
    );
    let ready = condition_of(&status.conditions, READY);
    assert_eq!(ready.status, "True");
    assert_eq!(ready.last_transition_time, time(20));
    // DatasourceReady was already True: its transition time stays.
    assert_eq!(
        condition_of(&status.conditions, DATASOURCE_READY).last_transition_time,
        time(10)
    );
}

#[test]
fn a_failure_names_its_reason_in_ready_and_blames_the_source_only_when_it_is_at_fault() {
    let problem = Problem {
        reason: "ChecksumMismatch".into(),
        message: "sha256 differs".into(),
        source_fault: false,
    };
    let status = step(&ImageStatus::default(), &ImportState::Failed(problem), 5);
    assert_eq!(status.phase, Some(ImagePhase::Failed));
    assert_eq!(
        condition_of(&status.conditions, READY).reason,
        "ChecksumMismatch"
    );
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.type_ != DATASOURCE_READY)
    );

    let problem = Problem {
        reason: "SourceNotFound".into(),
        message: "404".into(),
        source_fault: true,
    };
    let status = step(&ImageStatus::default(), &ImportState::Failed(problem), 5);
    assert_eq!(
        condition_of(&status.conditions, DATASOURCE_READY).status,
        "False"
    );
}

#[test]
fn the_same_state_twice_gives_the_same_status() {
    let state = ImportState::Transferring(transfer(10, 100));
    let first = step(&ImageStatus::default(), &state, 1);
    let second = step(&first, &state, 9);
    assert_eq!(first, second);
}

fn restarted(received: u64, total: u64) -> Transfer {
    Transfer {
        after_restart: AfterRestart::FromZero,
        ..transfer(received, total)
    }
}

#[test]
fn a_transfer_resumed_from_its_checkpoint_says_where_it_went_on() {
    let resumed = Transfer {
        after_restart: AfterRestart::ResumedAt(600),
        ..transfer(700, 1000)
    };
    let status = step(
        &ImageStatus::default(),
        &ImportState::Transferring(resumed),
        20,
    );
    let message = ready_message(&status);
    assert!(message.starts_with(RESUMED_MESSAGE), "{message}");
    assert!(message.contains("at 600B"), "{message}");
    assert_eq!(status.progress.as_deref(), Some("70.0%"));
}

fn ready_message(status: &ImageStatus) -> &str {
    &condition_of(&status.conditions, READY).message
}

#[test]
fn a_transfer_cut_by_a_restart_starts_again_from_zero_and_says_so() {
    // What the previous daemon wrote last: 75% of the file.
    let before = step(
        &ImageStatus::default(),
        &ImportState::Transferring(transfer(750, 1000)),
        10,
    );
    assert!(interrupted_by_restart(&before, 1));
    let start = starting_point(&before, 1);
    assert_eq!(start.progress, None);
    assert_eq!(start.size, None);
    assert_eq!(start.conditions, before.conditions);

    let first = step(&start, &ImportState::Transferring(restarted(100, 1000)), 20);
    assert_eq!(first.progress.as_deref(), Some("10.0%"));
    assert!(
        ready_message(&first).starts_with(RESTARTED_MESSAGE),
        "{}",
        ready_message(&first)
    );
    assert!(ready_message(&first).contains("Downloading: 100B of 1000B"));
    // Within the new transfer progress still never goes backwards, and stays below 100%
    // until the image is Ready.
    let later = step(&first, &ImportState::Transferring(restarted(50, 1000)), 22);
    assert_eq!(later.progress.as_deref(), Some("10.0%"));
    let end = step(
        &later,
        &ImportState::Transferring(restarted(1000, 1000)),
        24,
    );
    assert_eq!(end.progress.as_deref(), Some("99.9%"));
}

#[test]
fn only_a_status_of_this_spec_in_flight_counts_as_interrupted() {
    let provisioning = step(
        &ImageStatus::default(),
        &ImportState::Transferring(transfer(750, 1000)),
        10,
    );
    // Another spec: a new import, also from zero, but not a restart.
    assert!(!interrupted_by_restart(&provisioning, 2));
    assert_eq!(starting_point(&provisioning, 2).progress, None);
    let waiting = step(
        &ImageStatus::default(),
        &ImportState::Waiting {
            reason: "WaitingForImportSlot".into(),
            message: "later".into(),
            source_blocked: false,
        },
        10,
    );
    assert!(!interrupted_by_restart(&waiting, 1));
    let urls = ImageUploadUrls {
        external: Some("http://x/upload/t".into()),
        in_cluster: None,
    };
    let awaiting = step(
        &ImageStatus::default(),
        &ImportState::AwaitingUpload {
            urls: urls.clone(),
            message: "upload".into(),
        },
        10,
    );
    assert!(!interrupted_by_restart(&awaiting, 1));
    // An upload that arrived and waited for a slot was cut too.
    let queued = step(
        &awaiting,
        &ImportState::Waiting {
            reason: "WaitingForImportSlot".into(),
            message: "later".into(),
            source_blocked: false,
        },
        11,
    );
    assert_eq!(queued.image_upload_urls, Some(urls.clone()));
    assert!(interrupted_by_restart(&queued, 1));
    // Settled images are not imports in flight.
    let mut ready = provisioning.clone();
    ready.phase = Some(ImagePhase::Ready);
    assert!(!interrupted_by_restart(&ready, 1));
    // A new spec drops the old URLs; the same spec keeps them.
    assert_eq!(starting_point(&awaiting, 2).image_upload_urls, None);
    assert_eq!(starting_point(&awaiting, 1), awaiting);
}

fn condition_of<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
    conditions.iter().find(|c| c.type_ == type_).unwrap()
}
