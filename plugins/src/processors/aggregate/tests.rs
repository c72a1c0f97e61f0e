//! `aggregate` against a simple oracle, under duplicates and bounded
//! reordering; snapshot/restore and merge equal uninterrupted processing.

use std::collections::{BTreeMap, HashMap};

use flowpulse_core::event::{EventKind, WorkflowEvent};
use flowpulse_core::metrics::RealtimeMetrics;
use proptest::prelude::*;

use flowpulse_core::state::{ProcessorState, SavedState};

use super::oracle::WorkflowCounts;
use super::snapshot::{self, restore, snapshot};
use super::state::{AggregateState, Limits};

const BOUND_MS: i64 = 5_000;
/// Event time zero of the test events.
pub(super) const BASE_MS: i64 = 1_795_774_502_000;
/// A wall clock far ahead of every test event, so nothing is clamped.
const WALL_MS: i64 = BASE_MS + 365 * 24 * 3600 * 1000;

fn limits() -> Limits {
    Limits {
        max_out_of_order_ms: BOUND_MS,
        dedup_window_ms: 600_000,
        stale_after_ms: 24 * 3600 * 1000,
        expire_paused: false,
        max_agents: 100,
        max_workflow_types: 100,
        history_interval_ms: 5_000,
        history_points: 720,
    }
}

fn document(state: &AggregateState) -> RealtimeMetrics {
    state.document(String::new(), 5_000)
}

/// One workflow's valid lifecycle, as a strategy.
#[derive(Debug, Clone)]
struct Lifecycle {
    workflow_type: Option<&'static str>,
    with_created: bool,
    stages: Vec<(&'static str, bool, u64)>,
    pauses: usize,
    ends_paused: bool,
    /// 0 none, 1 completed, 2 failed, 3 cancelled.
    outcome: u8,
    outcome_duration: Option<u64>,
    start_ms: i64,
    gaps: Vec<i64>,
}

fn lifecycle() -> impl Strategy<Value = Lifecycle> {
    let agents = prop::sample::select(vec!["coder", "tester", "reviewer", "planner"]);
    let types =
        prop::option::weighted(0.9, prop::sample::select(vec!["feature", "bugfix", "docs"]));
    (
        types,
        prop::bool::weighted(0.9),
        prop::collection::vec((agents, prop::bool::weighted(0.8), 1u64..600_000), 0..5),
        0usize..3,
        any::<bool>(),
        0u8..4,
        prop::option::weighted(0.7, 1u64..3_600_000),
        0i64..120_000,
        prop::collection::vec(1i64..3_000, 16),
    )
        .prop_map(
            |(
                workflow_type,
                with_created,
                stages,
                pauses,
                ends_paused,
                outcome,
                outcome_duration,
                start_ms,
                gaps,
            )| Lifecycle {
                workflow_type,
                with_created,
                stages,
                pauses,
                ends_paused,
                outcome,
                outcome_duration,
                start_ms,
                gaps,
            },
        )
}

fn events_of(index: usize, l: &Lifecycle) -> Vec<WorkflowEvent> {
    let workflow_id = format!("wf-{index}");
    let mut ts = BASE_MS + l.start_ms;
    let mut gaps = l.gaps.iter().cycle();
    let mut events = Vec::new();
    let mut push = |kind: EventKind,
                    agent: Option<&str>,
                    duration: Option<u64>,
                    events: &mut Vec<WorkflowEvent>| {
        ts += gaps.next().copied().unwrap_or(1);
        events.push(WorkflowEvent {
            id: Some(format!("{workflow_id}-{}", events.len())),
            kind,
            timestamp_ms: ts,
            workflow_id: workflow_id.clone(),
            workflow_type: if kind.is_stage() {
                None
            } else {
                l.workflow_type.map(str::to_owned)
            },
            agent_type: agent.map(str::to_owned),
            stage: None,
            duration_ms: duration,
            error: None,
        });
    };
    if l.with_created {
        push(EventKind::WorkflowCreated, None, None, &mut events);
    }
    for (agent, ok, duration) in &l.stages {
        let kind = if *ok {
            EventKind::StageCompleted
        } else {
            EventKind::StageFailed
        };
        push(kind, Some(agent), Some(*duration), &mut events);
    }
    for i in 0..l.pauses {
        push(EventKind::WorkflowPaused, None, None, &mut events);
        if !(l.ends_paused && i + 1 == l.pauses) {
            push(EventKind::WorkflowResumed, None, None, &mut events);
        }
    }
    match l.outcome {
        1 => push(
            EventKind::WorkflowCompleted,
            None,
            l.outcome_duration,
            &mut events,
        ),
        2 => push(
            EventKind::WorkflowFailed,
            None,
            l.outcome_duration,
            &mut events,
        ),
        3 => push(EventKind::WorkflowCancelled, None, None, &mut events),
        _ => {}
    }
    // A workflow with no workflow-level event at all is not known: give it one.
    if !events.iter().any(|e| !e.kind.is_stage()) {
        push(EventKind::WorkflowCreated, None, None, &mut events);
    }
    events
}

/// Arrival order: each event (and each duplicate) is delayed by less than
/// the bound, so no event arrives later than the contract allows.
fn arrival(events: &[WorkflowEvent], delays: &[i64], duplicate_every: usize) -> Vec<WorkflowEvent> {
    let mut keyed: Vec<(i64, usize, WorkflowEvent)> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let d = delays[i % delays.len()];
        keyed.push((e.timestamp_ms + d, keyed.len(), e.clone()));
        if duplicate_every > 0 && i % duplicate_every == 0 {
            let d2 = delays[(i * 7 + 3) % delays.len()];
            keyed.push((e.timestamp_ms + d2, keyed.len(), e.clone()));
        }
    }
    keyed.sort_by_key(|(k, seq, _)| (*k, *seq));
    keyed.into_iter().map(|(_, _, e)| e).collect()
}

#[derive(Debug, Default, PartialEq)]
struct Expected {
    workflows: WorkflowCounts,
    agents: BTreeMap<String, (u64, u64, u64)>,
}

/// The oracle: each workflow's state straight from its sorted events.
fn oracle(events: &[WorkflowEvent]) -> (Expected, Vec<u64>, HashMap<String, Vec<u64>>, u64) {
    let mut anomalies = 0;
    let mut by_workflow: BTreeMap<&str, Vec<&WorkflowEvent>> = BTreeMap::new();
    let mut expected = Expected::default();
    let mut agent_durations: HashMap<String, Vec<u64>> = HashMap::new();
    for e in events {
        if e.kind.is_stage() {
            let agent = e.agent_type.clone().unwrap_or_default();
            let entry = expected.agents.entry(agent.clone()).or_default();
            entry.0 += 1;
            if e.kind == EventKind::StageCompleted {
                entry.1 += 1;
            } else {
                entry.2 += 1;
            }
            agent_durations
                .entry(agent)
                .or_default()
                .extend(e.duration_ms);
        } else {
            by_workflow.entry(&e.workflow_id).or_default().push(e);
        }
    }
    let mut durations = Vec::new();
    for events in by_workflow.values_mut() {
        expected.workflows.count(events);
        let created = events
            .iter()
            .find(|e| e.kind == EventKind::WorkflowCreated)
            .map(|e| e.timestamp_ms);
        let terminal = events.iter().find(|e| e.kind.is_terminal());
        if let Some(t) = terminal.filter(|t| t.kind != EventKind::WorkflowCancelled) {
            match t
                .duration_ms
                .or(created.map(|c| (t.timestamp_ms - c) as u64))
            {
                Some(d) => durations.push(d),
                // No duration and no creation time: an anomaly for durations.
                None => anomalies += 1,
            }
        }
    }
    (expected, durations, agent_durations, anomalies)
}

fn exact_quantile(values: &mut [u64], q: f64) -> f64 {
    values.sort_unstable();
    values[(q * (values.len() as f64 - 1.0)) as usize] as f64
}

fn within_one_percent(estimate: f64, exact: f64) -> bool {
    (estimate - exact).abs() <= exact * 0.01 + 1e-9
}

fn observed(doc: &RealtimeMetrics) -> Expected {
    Expected {
        workflows: WorkflowCounts::of(doc),
        agents: doc
            .agents
            .iter()
            .map(|a| {
                (
                    a.agent_type.clone(),
                    (a.total_tasks, a.completed_tasks, a.failed_tasks),
                )
            })
            .collect(),
    }
}

fn fold_all(state: &mut AggregateState, events: &[WorkflowEvent]) {
    for e in events {
        state.fold(e, WALL_MS);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn counts_match_the_oracle_under_duplicates_and_reordering(
        lifecycles in prop::collection::vec(lifecycle(), 1..60),
        delays in prop::collection::vec(0i64..BOUND_MS, 1..50),
        duplicate_every in 0usize..5,
    ) {
        let events: Vec<_> = lifecycles.iter().enumerate().flat_map(|(i, l)| events_of(i, l)).collect();
        let arrived = arrival(&events, &delays, duplicate_every);
        let mut state = AggregateState::new(limits());
        fold_all(&mut state, &arrived);
        state.flush();
        let doc = document(&state);
        let (expected, mut durations, mut agent_durations, anomalies) = oracle(&events);
        prop_assert_eq!(observed(&doc), expected);
        prop_assert_eq!(state.accounting().anomalies, anomalies);
        prop_assert_eq!(state.accounting().events, events.len() as u64);
        let o = &doc.overview;
        prop_assert_eq!(o.running_workflows + o.paused_workflows + o.completed_workflows + o.failed_workflows + o.cancelled_workflows + o.expired_workflows, o.total_workflows);
        if !durations.is_empty() {
            for (q, estimate) in [(0.5, doc.latency_p50_ms), (0.95, doc.latency_p95_ms), (0.99, doc.latency_p99_ms)] {
                let exact = exact_quantile(&mut durations, q);
                prop_assert!(within_one_percent(estimate, exact), "p{} {} vs exact {}", q, estimate, exact);
            }
        }
        for agent in &doc.agents {
            let values = agent_durations.get_mut(&agent.agent_type).unwrap();
            let exact = exact_quantile(values, 0.95);
            prop_assert!(within_one_percent(agent.p95_duration_ms, exact));
            let mean = values.iter().sum::<u64>() as f64 / values.len() as f64;
            prop_assert_eq!(agent.avg_duration_ms, mean);
        }
    }

    #[test]
    fn snapshot_restore_continue_equals_uninterrupted(
        lifecycles in prop::collection::vec(lifecycle(), 1..40),
        delays in prop::collection::vec(0i64..BOUND_MS, 1..20),
        cut in 0.0f64..1.0,
    ) {
        let events: Vec<_> = lifecycles.iter().enumerate().flat_map(|(i, l)| events_of(i, l)).collect();
        let arrived = arrival(&events, &delays, 3);
        let at = (arrived.len() as f64 * cut) as usize;
        let mut whole = AggregateState::new(limits());
        fold_all(&mut whole, &arrived);
        whole.flush();

        let mut first = AggregateState::new(limits());
        fold_all(&mut first, &arrived[..at]);
        let mut resumed = restore(&snapshot(&first), &limits()).unwrap();
        // What the snapshot had folded comes again after a crash: skipped as duplicates.
        fold_all(&mut resumed, &arrived[..at]);
        fold_all(&mut resumed, &arrived[at..]);
        resumed.flush();
        prop_assert!(document(&resumed).same_state(&document(&whole)));
    }

    #[test]
    fn folding_in_batches_equals_folding_one_by_one(
        lifecycles in prop::collection::vec(lifecycle(), 1..40),
        delays in prop::collection::vec(0i64..BOUND_MS, 1..20),
        batch in 1usize..50,
    ) {
        let events: Vec<_> = lifecycles.iter().enumerate().flat_map(|(i, l)| events_of(i, l)).collect();
        let arrived = arrival(&events, &delays, 3);
        let mut one_by_one = AggregateState::new(limits());
        fold_all(&mut one_by_one, &arrived);
        let mut batched = AggregateState::new(limits());
        for chunk in arrived.chunks(batch) {
            batched.fold_all(chunk, WALL_MS);
        }
        // Before the final flush too: what is applied so far is the same.
        prop_assert!(document(&batched).same_state(&document(&one_by_one)));
        one_by_one.flush();
        batched.flush();
        prop_assert!(document(&batched).same_state(&document(&one_by_one)));
    }

    #[test]
    fn merged_partitions_equal_the_whole(
        lifecycles in prop::collection::vec(lifecycle(), 1..40),
        delays in prop::collection::vec(0i64..BOUND_MS, 1..20),
    ) {
        let events: Vec<_> = lifecycles.iter().enumerate().flat_map(|(i, l)| events_of(i, l)).collect();
        let arrived = arrival(&events, &delays, 4);
        let mut whole = AggregateState::new(limits());
        fold_all(&mut whole, &arrived);
        whole.flush();
        let partition = |e: &&WorkflowEvent| xxhash_rust::xxh3::xxh3_64(e.workflow_id.as_bytes()).is_multiple_of(2);
        let (left, right): (Vec<&WorkflowEvent>, Vec<&WorkflowEvent>) = arrived.iter().partition(partition);
        let mut a = AggregateState::new(limits());
        let mut b = AggregateState::new(limits());
        for e in left { a.fold(e, WALL_MS); }
        for e in right { b.fold(e, WALL_MS); }
        // Through the runtime's state API: b's snapshot (body and parts)
        // merged into a.
        let snapshot = ProcessorState::snapshot(&mut b, &|_| false);
        let saved = SavedState {
            version: snapshot::VERSION,
            body: snapshot.body,
            parts: snapshot.parts.into_iter().filter_map(|p| Some((p.id, p.bytes?))).collect(),
        };
        ProcessorState::merge(&mut a, saved).unwrap();
        a.flush();
        prop_assert!(document(&a).same_state(&document(&whole)), "{:#?}\nvs\n{:#?}", document(&a).overview, document(&whole).overview);
    }

    /// What instances sharing a partitioned input emit: each partition
    /// folded apart (so each has its own event time, the largest of its own
    /// events), its partial taken through the runtime's state API, and the
    /// partials merged into a fresh state, whatever the partitioning and
    /// however many partitions there are.
    #[test]
    fn merged_partials_of_any_partitioning_equal_the_whole(
        lifecycles in prop::collection::vec(lifecycle(), 1..40),
        delays in prop::collection::vec(0i64..BOUND_MS, 1..20),
        partitions in 1u64..7,
        salt in any::<u64>(),
    ) {
        let events: Vec<_> = lifecycles.iter().enumerate().flat_map(|(i, l)| events_of(i, l)).collect();
        let arrived = arrival(&events, &delays, 4);
        let mut whole = AggregateState::new(limits());
        fold_all(&mut whole, &arrived);
        whole.flush();
        let mut states: Vec<AggregateState> = (0..partitions).map(|_| AggregateState::new(limits())).collect();
        for e in &arrived {
            let p = xxhash_rust::xxh3::xxh3_64_with_seed(e.workflow_id.as_bytes(), salt) % partitions;
            states[p as usize].fold(e, WALL_MS);
        }
        let mut merged = AggregateState::new(limits());
        for state in &mut states {
            state.flush();
            let partial = ProcessorState::partial(state).expect("the aggregate has partials");
            prop_assert!(partial.parts.is_empty(), "a partial carries no dedup epochs");
            let saved = SavedState { version: snapshot::VERSION, body: partial.body, parts: Default::default() };
            ProcessorState::merge(&mut merged, saved).unwrap();
        }
        prop_assert!(document(&merged).same_state(&document(&whole)), "{:#?}\nvs\n{:#?}", document(&merged).overview, document(&whole).overview);
        prop_assert_eq!(merged.accounting(), whole.accounting());
    }
}

/// A partial is a fraction of its state's snapshot: it leaves out the dedup
/// window and the workflows in flight, which only folding needs.
#[test]
fn a_partial_is_small_beside_the_snapshot() {
    let mut state = AggregateState::new(limits());
    for i in 0..5_000 {
        state.fold(
            &event(EventKind::WorkflowCreated, &format!("wf-{i}"), i),
            WALL_MS,
        );
    }
    let whole = ProcessorState::snapshot(&mut state, &|_| false);
    let whole_bytes = whole.body.len()
        + whole
            .parts
            .iter()
            .filter_map(|p| p.bytes.as_ref())
            .map(Vec::len)
            .sum::<usize>();
    let partial = ProcessorState::partial(&mut state).unwrap();
    assert!(
        partial.body.len() * 10 < whole_bytes,
        "partial {} bytes, snapshot {whole_bytes}",
        partial.body.len()
    );
}

/// A workflow-level event of `workflow` at `ts` ms after [`BASE_MS`].
pub(super) fn event(kind: EventKind, workflow: &str, ts: i64) -> WorkflowEvent {
    WorkflowEvent {
        id: Some(format!("{workflow}-{kind:?}-{ts}")),
        kind,
        timestamp_ms: BASE_MS + ts,
        workflow_id: workflow.into(),
        workflow_type: Some("feature".into()),
        agent_type: None,
        stage: None,
        duration_ms: None,
        error: None,
    }
}

#[test]
fn duplicate_event_is_counted_once() {
    let mut state = AggregateState::new(limits());
    let created = event(EventKind::WorkflowCreated, "a", 0);
    state.fold(&created, WALL_MS);
    state.fold(&created, WALL_MS);
    state.flush();
    assert_eq!(document(&state).overview.total_workflows, 1);
    assert_eq!(state.accounting().duplicates, 1);
}

#[test]
fn completed_before_created_still_counts_one_completed_workflow() {
    let mut state = AggregateState::new(limits());
    let mut done = event(EventKind::WorkflowCompleted, "a", 3_000);
    done.duration_ms = None;
    state.fold(&done, WALL_MS);
    state.fold(&event(EventKind::WorkflowCreated, "a", 0), WALL_MS);
    state.flush();
    let doc = document(&state);
    assert_eq!(
        (
            doc.overview.total_workflows,
            doc.overview.completed_workflows,
            doc.overview.running_workflows
        ),
        (1, 1, 0)
    );
    // The duration comes from created → completed.
    assert_eq!(doc.overview.avg_completion_time_ms, 3_000.0);
    assert_eq!(state.accounting().anomalies, 0);
}

#[test]
fn pause_then_cancel_is_cancelled_not_paused() {
    let mut state = AggregateState::new(limits());
    for e in [
        event(EventKind::WorkflowCreated, "a", 0),
        event(EventKind::WorkflowPaused, "a", 10),
        event(EventKind::WorkflowCancelled, "a", 20),
    ] {
        state.fold(&e, WALL_MS);
    }
    state.flush();
    let o = document(&state).overview;
    assert_eq!(
        (
            o.paused_workflows,
            o.cancelled_workflows,
            o.running_workflows
        ),
        (0, 1, 0)
    );
}

#[test]
fn second_terminal_event_is_an_anomaly_and_changes_nothing() {
    let mut state = AggregateState::new(limits());
    let mut done = event(EventKind::WorkflowCompleted, "a", 10);
    done.duration_ms = Some(10);
    for e in [
        event(EventKind::WorkflowCreated, "a", 0),
        done,
        event(EventKind::WorkflowFailed, "a", 20),
    ] {
        state.fold(&e, WALL_MS);
    }
    state.flush();
    let o = document(&state).overview;
    assert_eq!((o.completed_workflows, o.failed_workflows), (1, 0));
    assert_eq!(state.accounting().anomalies, 1);
}

#[test]
fn names_past_the_cap_are_counted_as_other() {
    let mut state = AggregateState::new(Limits {
        max_agents: 2,
        ..limits()
    });
    for (i, agent) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let mut e = event(EventKind::StageCompleted, "w", i as i64);
        e.agent_type = Some(agent.into());
        e.duration_ms = Some(5);
        state.fold(&e, WALL_MS);
    }
    state.flush();
    let names: Vec<_> = document(&state)
        .agents
        .into_iter()
        .map(|a| (a.agent_type, a.total_tasks))
        .collect();
    assert_eq!(
        names,
        vec![("a".into(), 1), ("b".into(), 1), ("other".into(), 2)]
    );
}

#[test]
fn silent_running_workflows_expire_and_paused_ones_do_not() {
    let mut state = AggregateState::new(Limits {
        stale_after_ms: 60_000,
        ..limits()
    });
    state.fold(&event(EventKind::WorkflowCreated, "quiet", 0), WALL_MS);
    state.fold(&event(EventKind::WorkflowCreated, "resting", 0), WALL_MS);
    state.fold(&event(EventKind::WorkflowPaused, "resting", 1), WALL_MS);
    state.fold(&event(EventKind::WorkflowCreated, "busy", 100_000), WALL_MS);
    state.flush();
    assert_eq!(state.expire_stale(), 1);
    let o = document(&state).overview;
    assert_eq!(
        (
            o.expired_workflows,
            o.paused_workflows,
            o.running_workflows,
            o.total_workflows
        ),
        (1, 1, 1, 3)
    );
}

#[test]
fn a_workflow_whose_next_event_waits_for_the_watermark_does_not_expire() {
    let mut state = AggregateState::new(Limits {
        stale_after_ms: 60_000,
        ..limits()
    });
    state.fold(&event(EventKind::WorkflowCreated, "long", 0), WALL_MS);
    // Silent for longer than `stale_after`, then its outcome arrives and
    // waits for the watermark while a document (and expiry) comes.
    let mut done = event(EventKind::WorkflowCompleted, "long", 100_000);
    done.duration_ms = Some(100_000);
    state.fold(&done, WALL_MS);
    assert_eq!(state.expire_stale(), 0);
    state.flush();
    let o = document(&state).overview;
    assert_eq!((o.completed_workflows, o.expired_workflows), (1, 0));
    assert_eq!(state.accounting().anomalies, 0);
}

#[test]
fn throughput_counts_only_the_last_minute_of_event_time() {
    let mut state = AggregateState::new(limits());
    for (i, ts) in [0, 30_000, 100_000, 130_000, 150_000]
        .into_iter()
        .enumerate()
    {
        let workflow = format!("w{i}");
        state.fold(
            &event(EventKind::WorkflowCreated, &workflow, ts - 1),
            WALL_MS,
        );
        let mut done = event(EventKind::WorkflowCompleted, &workflow, ts);
        done.duration_ms = Some(1000);
        state.fold(&done, WALL_MS);
    }
    state.flush();
    let doc = document(&state);
    // T = 150 s: finished at 100, 130 and 150 s are within (90 s, 150 s].
    assert_eq!(doc.throughput_per_minute, 3);
    assert_eq!(doc.window["5m"].finished, 5);
}

#[test]
fn finished_workflows_are_remembered_for_the_dedup_window_then_leave_memory() {
    // 2,000 s of event time, more than three dedup windows (600 s): a
    // workflow every 100 ms, each finished 5 ms after it started.
    let mut state = AggregateState::new(limits());
    for i in 0..20_000i64 {
        let workflow = format!("w{i}");
        state.fold(
            &event(EventKind::WorkflowCreated, &workflow, i * 100),
            WALL_MS,
        );
        state.fold(
            &event(EventKind::WorkflowCancelled, &workflow, i * 100 + 5),
            WALL_MS,
        );
    }
    // Those finished within the last window (plus the bound) are kept, so a
    // late event of one neither revives nor doubles it; older ones left.
    let held = state.workflows_in_memory();
    assert!((6_000..=6_100).contains(&held), "{held}");
    assert_eq!(
        document(&state).overview.cancelled_workflows + state.pending_len() as u64 / 2,
        20_000
    );
}

#[test]
fn a_late_pause_after_the_outcome_is_an_anomaly_and_changes_nothing() {
    let mut state = AggregateState::new(limits());
    state.fold(&event(EventKind::WorkflowCreated, "a", 0), WALL_MS);
    state.fold(&event(EventKind::WorkflowCancelled, "a", 10), WALL_MS);
    state.fold(&event(EventKind::WorkflowCreated, "b", 60_000), WALL_MS);
    state.fold(&event(EventKind::WorkflowPaused, "a", 20), WALL_MS);
    state.flush();
    let o = document(&state).overview;
    assert_eq!((o.total_workflows, o.cancelled_workflows), (2, 1));
    assert_eq!(state.accounting().anomalies, 1);
}

#[test]
fn snapshot_with_other_limits_is_refused() {
    let state = AggregateState::new(limits());
    let bytes = snapshot(&state);
    let err = restore(
        &bytes,
        &Limits {
            max_agents: 7,
            ..limits()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("other aggregate settings"),
        "{err}"
    );
    let mut other_version = bytes.clone();
    other_version[4] = 99;
    assert!(restore(&other_version, &limits())
        .unwrap_err()
        .to_string()
        .contains("version 99"));
    assert!(restore(b"nope", &limits()).is_err());
}

#[test]
fn custom_values_appear_under_custom() {
    let mut state = AggregateState::new(limits());
    state.set_custom("stage_failures_per_hour", &serde_json::json!({"coder": 2}));
    assert_eq!(
        document(&state).custom["stage_failures_per_hour"],
        serde_json::json!({"coder": 2})
    );
}

#[test]
fn backlog_after_an_idle_stretch_is_not_late() {
    let mut state = AggregateState::new(limits());
    state.fold(&event(EventKind::WorkflowCreated, "a", 0), WALL_MS);
    // The input was idle (or Redis away) for a minute of wall time...
    state.advance(60_000);
    // ...then the backlog arrives: in bound by event time, so it counts.
    state.fold(&event(EventKind::WorkflowCreated, "b", 1_000), WALL_MS);
    state.fold(&event(EventKind::WorkflowCancelled, "a", 2_000), WALL_MS);
    state.flush();
    let o = document(&state).overview;
    assert_eq!(
        (
            o.total_workflows,
            o.cancelled_workflows,
            o.running_workflows
        ),
        (2, 1, 1)
    );
    assert_eq!(state.accounting().anomalies, 0);
}

#[test]
fn idle_time_applies_held_events() {
    let mut state = AggregateState::new(limits());
    state.fold(&event(EventKind::WorkflowCreated, "a", 0), WALL_MS);
    assert_eq!(document(&state).overview.total_workflows, 0);
    state.advance(BOUND_MS);
    assert_eq!(document(&state).overview.total_workflows, 1);
}

#[test]
fn a_timestamp_from_the_future_is_clamped() {
    let mut state = AggregateState::new(limits());
    let mut far = event(EventKind::WorkflowCreated, "a", 0);
    far.timestamp_ms = i64::MAX / 2;
    state.fold(&far, WALL_MS);
    assert_eq!(state.event_time_ms(), Some(WALL_MS + 60_000));
}

#[test]
fn names_sharing_a_long_prefix_stay_apart() {
    let mut state = AggregateState::new(limits());
    for (i, agent) in [
        "security",
        "security_review",
        "security_patch",
        "security_review",
    ]
    .into_iter()
    .enumerate()
    {
        let mut e = event(EventKind::StageCompleted, "w", i as i64);
        e.agent_type = Some(agent.into());
        e.duration_ms = Some(5);
        state.fold(&e, WALL_MS);
    }
    let names: Vec<_> = document(&state)
        .agents
        .into_iter()
        .map(|a| (a.agent_type, a.total_tasks))
        .collect();
    assert_eq!(
        names,
        vec![
            ("security".into(), 1),
            ("security_patch".into(), 1),
            ("security_review".into(), 2)
        ]
    );
}

#[test]
fn dedup_epochs_are_stored_apart_once_and_restore_exactly() {
    use super::snapshot::{restore_with, snapshot_split};
    let n = 2 * super::dedup::EPOCH_LEN as i64 + 10;
    let mut state = AggregateState::new(limits());
    for i in 0..n {
        let mut e = event(EventKind::StageCompleted, "w", i);
        e.agent_type = Some("coder".into());
        e.duration_ms = Some(10);
        state.fold(&e, WALL_MS);
    }
    let (main, fresh) = snapshot_split(&state, &Default::default());
    assert!(fresh.len() >= 2, "{} epochs", fresh.len());
    let full = snapshot(&state);
    assert!(
        main.len() * 2 < full.len(),
        "main {} vs full {}",
        main.len(),
        full.len()
    );
    // Already stored: the next checkpoint writes no epoch again.
    let stored = fresh.iter().map(|(order, _)| *order).collect();
    assert!(snapshot_split(&state, &stored).1.is_empty());
    let mut epochs: std::collections::HashMap<u64, Vec<_>> = fresh
        .into_iter()
        .map(|(order, bytes)| (order, postcard::from_bytes(&bytes).unwrap()))
        .collect();
    let mut restored = restore_with(&main, &limits(), |order| epochs.remove(&order)).unwrap();
    assert_eq!(restored.dedup_len(), state.dedup_len());
    // Every identity is still known: folding them again changes nothing.
    let before = document(&restored);
    for i in 0..n {
        let mut e = event(EventKind::StageCompleted, "w", i);
        e.agent_type = Some("coder".into());
        e.duration_ms = Some(10);
        restored.fold(&e, WALL_MS);
    }
    assert!(document(&restored).same_state(&before));
    assert_eq!(restored.accounting().duplicates, n as u64);
    // An epoch missing from the store is reported, not silently dropped.
    assert!(restore_with(&main, &limits(), |_| None)
        .unwrap_err()
        .to_string()
        .contains("missing"));
}
