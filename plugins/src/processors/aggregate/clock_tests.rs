//! One clock for every partition: the merge of partials moves event time
//! on by the wall clock only when every partition is idle, and the
//! partitions follow the merged time instead of moving their own.

use std::sync::Arc;
use std::time::Duration;

use flowpulse_core::event::{EventKind, WorkflowEvent};
use flowpulse_core::plugin::Processor;
use flowpulse_core::record::{Batch, Record};
use flowpulse_core::runtime::Output;
use flowpulse_core::state::{ProcessorState, SavedState};
use flowpulse_core::telemetry::ComponentStats;

use super::config::AggregateConfig;
use super::processor::Aggregate;
use super::snapshot;
use super::state::{AggregateState, Limits};
use super::tests::{event, BASE_MS};

/// When the test's partitions last folded an event (wall clock).
const WALL_MS: i64 = BASE_MS + 3_600_000;
const INTERVAL_MS: i64 = 5_000;
const BOUND_MS: i64 = 5_000;

fn limits() -> Limits {
    Limits {
        max_out_of_order_ms: BOUND_MS,
        dedup_window_ms: 600_000,
        stale_after_ms: 60_000,
        expire_paused: false,
        max_agents: 100,
        max_workflow_types: 100,
        history_interval_ms: INTERVAL_MS,
        history_points: 720,
    }
}

fn created(workflow: &str, ts: i64) -> WorkflowEvent {
    event(EventKind::WorkflowCreated, workflow, ts)
}

/// A partition that folded `events` (ms after BASE) and was last active at
/// wall time `active_at`.
fn partition(events: &[(&str, i64)], active_at: i64) -> AggregateState {
    let mut state = AggregateState::new(limits());
    for &(workflow, ts) in events {
        state.fold(&created(workflow, ts), WALL_MS + 3_600_000);
    }
    state.note_active(active_at);
    state
}

/// The partials of `partitions` merged into a fresh state, settled at
/// wall time `wall`: the merged T.
fn merged_time(partitions: &mut [AggregateState], wall: i64) -> Option<i64> {
    let mut merged = AggregateState::new(limits());
    for state in partitions {
        let partial = ProcessorState::partial(state).expect("the aggregate has partials");
        let saved = SavedState {
            version: snapshot::VERSION,
            body: partial.body,
            parts: Default::default(),
        };
        ProcessorState::merge(&mut merged, saved).unwrap();
    }
    merged.settle_merged_at(wall)
}

#[test]
fn merged_time_moves_on_by_the_wall_clock_only_when_every_partition_is_idle() {
    // `quiet` folded the latest event long ago; `busy` folds older events
    // (catching up) and was active a moment ago.
    let quiet = || partition(&[("q", 20_000)], WALL_MS - 600_000);
    let busy = || partition(&[("b", 10_000)], WALL_MS);

    // One partition still active: T is the largest partition's event time,
    // however long the other has been idle.
    let t = merged_time(&mut [quiet(), busy()], WALL_MS + 1_000);
    assert_eq!(t, Some(BASE_MS + 20_000));

    // Every partition idle for more than an interval: T moves on by the
    // wall time since the last of them folded an event, less that interval.
    let t = merged_time(&mut [quiet(), busy()], WALL_MS + 15_000);
    assert_eq!(t, Some(BASE_MS + 20_000 + 15_000 - INTERVAL_MS));

    // Order of the partials does not matter.
    let t = merged_time(&mut [busy(), quiet()], WALL_MS + 15_000);
    assert_eq!(t, Some(BASE_MS + 20_000 + 15_000 - INTERVAL_MS));
}

#[test]
fn merged_time_never_goes_back() {
    // A partition that followed an earlier merged T carries it in its
    // partial; a later merge while another is active keeps it.
    let mut followed = partition(&[("q", 20_000)], WALL_MS - 600_000);
    followed.follow(BASE_MS + 50_000);
    let busy = partition(&[("b", 10_000)], WALL_MS);
    let t = merged_time(&mut [followed, busy], WALL_MS + 1_000);
    assert_eq!(t, Some(BASE_MS + 50_000));
}

#[test]
fn a_partition_following_the_merged_time_applies_held_events_and_expires_silent_workflows() {
    let mut state = partition(&[("a", 0), ("b", 1_000)], WALL_MS);
    // Both wait for the watermark (T - the out-of-order bound).
    assert_eq!(
        state
            .document(String::new(), 5_000)
            .overview
            .total_workflows,
        0
    );
    state.follow(BASE_MS + 1_000 + BOUND_MS);
    assert_eq!(
        state
            .document(String::new(), 5_000)
            .overview
            .total_workflows,
        2
    );
    assert_eq!(state.expire_stale(), 0);
    // Another partition's events moved the merged T past `stale_after`.
    state.follow(BASE_MS + 1_000 + 60_001);
    assert_eq!(state.expire_stale(), 2);
    // An earlier time changes nothing.
    state.follow(BASE_MS);
    assert_eq!(state.event_time_ms(), Some(BASE_MS + 1_000 + 60_001));
}

fn aggregate(follows_merge: bool) -> Aggregate {
    let config: AggregateConfig = toml::from_str("interval = \"10ms\"").unwrap();
    let mut aggregate = Aggregate::new(
        &config,
        AggregateState::new(config.limits()),
        Arc::new(ComponentStats::default()),
    );
    if follows_merge {
        aggregate.follow_merged_time();
    }
    aggregate
}

/// How far T moved past the one event after idle ticks.
async fn idle_advance(mut aggregate: Aggregate) -> i64 {
    let now = super::processor::wall_ms();
    let batch = Batch::new(vec![Record::Event(created("a", now - BASE_MS))], Vec::new());
    aggregate
        .process(batch, &mut Output::discard())
        .await
        .unwrap();
    // Three ticks: the first sees the batch, the others an idle input.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        aggregate.tick(&mut Output::discard()).await.unwrap();
    }
    aggregate.state_ref().event_time_ms().unwrap() - now
}

#[tokio::test]
async fn a_partition_does_not_move_its_time_by_the_wall_clock() {
    // Alone, an idle input moves T on by the wall clock (>= two idle ticks
    // of 20 ms); kept for a partition, T stays at its events' time.
    assert!(idle_advance(aggregate(false)).await >= 40);
    assert_eq!(idle_advance(aggregate(true)).await, 0);
}

#[test]
fn activity_survives_a_snapshot_and_a_version_3_snapshot_restores_without_it() {
    let state = partition(&[("a", 0)], WALL_MS);
    let restored = snapshot::restore(&snapshot::snapshot(&state), &limits()).unwrap();
    assert_eq!(restored.active_at_wall_ms, Some(WALL_MS));

    let old = snapshot::snapshot_of_version_3(&state);
    let restored = snapshot::restore(&old, &limits()).unwrap();
    assert_eq!(restored.active_at_wall_ms, None);
    assert_eq!(restored.accounting(), state.accounting());
    assert_eq!(restored.event_time_ms(), state.event_time_ms());
}

/// Held events applied as T moves on by the wall clock change the state
/// with no batch folded: it says so until its next snapshot, so that the
/// runtime checkpoints it and a restart does not show them held again.
#[test]
fn held_events_applied_while_idle_ask_for_a_checkpoint() {
    let mut state = partition(&[("a", 0), ("b", 1_000)], WALL_MS);
    assert_eq!(state.pending_len(), 2, "within the bound: held");
    ProcessorState::snapshot(&mut state, &|_| false);
    assert!(!ProcessorState::changed_by_itself(&state));
    // Idle for less than the bound: nothing applied, nothing to write.
    state.advance(BOUND_MS / 2);
    assert_eq!(state.pending_len(), 2);
    assert!(!ProcessorState::changed_by_itself(&state));
    state.advance(BOUND_MS);
    assert_eq!(state.pending_len(), 0, "the bound passed: applied");
    assert!(ProcessorState::changed_by_itself(&state));
    ProcessorState::snapshot(&mut state, &|_| false);
    assert!(!ProcessorState::changed_by_itself(&state));
    state.advance(BOUND_MS);
    assert!(
        !ProcessorState::changed_by_itself(&state),
        "nothing left to apply"
    );
}
