use super::*;

const ME: &str = "image-catalog-7d9f-a";
const OTHER: &str = "image-catalog-7d9f-b";

fn record(holder: Option<&str>, transitions: i32) -> LeaseRecord {
    LeaseRecord {
        holder: holder.map(str::to_string),
        lease_duration: Duration::from_secs(15),
        acquire_time: Some(Timestamp::from_second(1_700_000_000).unwrap()),
        renew_time: Some(Timestamp::from_second(1_700_000_100).unwrap()),
        transitions,
    }
}

fn seen(record: LeaseRecord, at: Instant) -> Option<Observation> {
    Some(Observation { record, at })
}

/// What this replica decides, with the default timings.
fn decide_as_me(observed: Option<&Observation>, role: Role, now: Instant) -> Decision {
    decide(observed, ME, role, &Timings::default(), now)
}

#[test]
fn a_missing_lease_is_acquired_and_created_with_no_transitions() {
    let now = Instant::now();
    let decision = decide_as_me(None, Role::Standby, now);
    assert_eq!(decision, Decision::Acquire);
    let written = Timestamp::from_second(1_700_000_200).unwrap();
    let spec = next_spec(&decision, None, ME, &Timings::default(), written).unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(ME));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert_eq!(spec.lease_transitions, Some(0));
    assert_eq!(spec.acquire_time, Some(MicroTime(written)));
    assert_eq!(spec.renew_time, Some(MicroTime(written)));
}

#[test]
fn an_empty_holder_is_free() {
    let now = Instant::now();
    let released = LeaseRecord::from_spec(Some(&LeaseSpec {
        holder_identity: Some(String::new()),
        lease_duration_seconds: Some(3600),
        lease_transitions: Some(3),
        ..LeaseSpec::default()
    }));
    assert_eq!(released.holder, None);
    let observed = seen(released, now);
    assert_eq!(
        decide_as_me(observed.as_ref(), Role::Standby, now),
        Decision::Acquire
    );
}

#[test]
fn a_held_lease_waits_until_observed_plus_duration() {
    let observed_at = Instant::now();
    let observed = seen(record(Some(OTHER), 1), observed_at);
    let later = observed_at + Duration::from_secs(14);
    assert_eq!(
        decide_as_me(observed.as_ref(), Role::Standby, later),
        Decision::Wait {
            holder: OTHER.into(),
            until: observed_at + Duration::from_secs(15),
        }
    );
}

#[test]
fn the_holders_duration_counts_not_ours() {
    let observed_at = Instant::now();
    let mut long = record(Some(OTHER), 1);
    long.lease_duration = Duration::from_secs(60);
    let observed = seen(long, observed_at);
    let later = observed_at + Duration::from_secs(30);
    assert!(matches!(
        decide_as_me(observed.as_ref(), Role::Standby, later),
        Decision::Wait { .. }
    ));
}

#[test]
fn an_expired_lease_is_acquired() {
    let observed_at = Instant::now();
    let observed = seen(record(Some(OTHER), 1), observed_at);
    let later = observed_at + Duration::from_secs(15);
    assert_eq!(
        decide_as_me(observed.as_ref(), Role::Standby, later),
        Decision::Acquire
    );
}

#[test]
fn expiry_counts_from_the_last_observed_change_not_from_the_remote_renew_time() {
    let first = Instant::now();
    let observed = observe(None, record(Some(OTHER), 1), first);
    // The same record seen again later: the lease has not been renewed since `first`.
    let again = observe(
        Some(observed.clone()),
        record(Some(OTHER), 1),
        first + Duration::from_secs(10),
    );
    assert_eq!(again.at, first);
    // A renewal (new renewTime) restarts the clock, whatever time the holder wrote.
    let mut renewed = record(Some(OTHER), 1);
    renewed.renew_time = Some(Timestamp::from_second(1_000).unwrap());
    let changed = observe(Some(again), renewed, first + Duration::from_secs(12));
    assert_eq!(changed.at, first + Duration::from_secs(12));
    assert!(matches!(
        decide_as_me(
            Some(&changed),
            Role::Standby,
            first + Duration::from_secs(20)
        ),
        Decision::Wait { .. }
    ));
}

#[test]
fn our_own_lease_renews_and_keeps_acquire_time_and_transitions() {
    let now = Instant::now();
    let ours = record(Some(ME), 4);
    let observed = seen(ours.clone(), now);
    let role = Role::Leader {
        renewed_at: now - Duration::from_secs(2),
    };
    let decision = decide_as_me(observed.as_ref(), role, now);
    assert_eq!(decision, Decision::Renew);
    let written = Timestamp::from_second(1_700_000_300).unwrap();
    let spec = next_spec(&decision, Some(&ours), ME, &Timings::default(), written).unwrap();
    assert_eq!(spec.lease_transitions, Some(4));
    assert_eq!(spec.acquire_time, ours.acquire_time.map(MicroTime));
    assert_eq!(spec.renew_time, Some(MicroTime(written)));
}

#[test]
fn a_restarted_process_with_the_same_identity_takes_its_lease_back_at_once() {
    let now = Instant::now();
    let observed = seen(record(Some(ME), 2), now);
    assert_eq!(
        decide_as_me(observed.as_ref(), Role::Standby, now),
        Decision::Renew
    );
}

#[test]
fn a_renew_past_the_deadline_is_lost() {
    let renewed_at = Instant::now();
    let observed = seen(record(Some(ME), 1), renewed_at);
    let role = Role::Leader { renewed_at };
    let timings = Timings::default();
    assert_eq!(
        decide_as_me(observed.as_ref(), role, renewed_at + Duration::from_secs(9)),
        Decision::Renew
    );
    assert_eq!(
        decide_as_me(observed.as_ref(), role, renewed_at + timings.renew_deadline),
        Decision::Lost(LostReason::RenewDeadlinePassed)
    );
}

#[test]
fn a_leader_that_finds_another_holder_has_lost() {
    let now = Instant::now();
    let observed = seen(record(Some(OTHER), 2), now);
    assert_eq!(
        decide_as_me(observed.as_ref(), Role::Leader { renewed_at: now }, now),
        Decision::Lost(LostReason::TakenOver {
            holder: OTHER.into()
        })
    );
}

#[test]
fn takeover_increments_transitions_and_restarts_acquire_time() {
    let theirs = record(Some(OTHER), 6);
    let written = Timestamp::from_second(1_700_000_400).unwrap();
    let spec = next_spec(
        &Decision::Acquire,
        Some(&theirs),
        ME,
        &Timings::default(),
        written,
    )
    .unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(ME));
    assert_eq!(spec.lease_transitions, Some(7));
    assert_eq!(spec.acquire_time, Some(MicroTime(written)));
}

#[test]
fn waiting_and_losing_write_nothing() {
    let now = Timestamp::from_second(1_700_000_500).unwrap();
    let wait = Decision::Wait {
        holder: OTHER.into(),
        until: Instant::now(),
    };
    assert_eq!(next_spec(&wait, None, ME, &Timings::default(), now), None);
    let lost = Decision::Lost(LostReason::RenewDeadlinePassed);
    assert_eq!(next_spec(&lost, None, ME, &Timings::default(), now), None);
}

#[test]
fn a_released_lease_has_no_holder_a_short_duration_and_the_same_transitions() {
    let now = Timestamp::from_second(1_700_000_600).unwrap();
    let spec = released_spec(&record(Some(ME), 5), now);
    assert_eq!(spec.holder_identity, None);
    assert_eq!(spec.lease_duration_seconds, Some(1));
    assert_eq!(spec.lease_transitions, Some(5));
    assert_eq!(spec.renew_time, Some(MicroTime(now)));
    let read_back = LeaseRecord::from_spec(Some(&spec));
    assert_eq!(read_back.holder, None);
}

#[test]
fn timings_must_let_the_leader_give_up_before_a_standby_takes_over() {
    assert_eq!(Timings::default().check(), Ok(()));
    let too_long_deadline = Timings {
        renew_deadline: Duration::from_secs(15),
        ..Timings::default()
    };
    assert!(too_long_deadline.check().is_err());
    let retry_past_deadline = Timings {
        retry_period: Duration::from_secs(10),
        ..Timings::default()
    };
    assert!(retry_past_deadline.check().is_err());
}

#[test]
fn the_identity_is_the_pod_name_or_host_and_pid() {
    assert_eq!(
        identity(Some("image-catalog-5c7b-x2")),
        "image-catalog-5c7b-x2"
    );
    let outside = identity(None);
    assert!(
        outside.ends_with(&format!("-{}", std::process::id())),
        "{outside}"
    );
    assert_eq!(identity(Some("")), outside);
}
