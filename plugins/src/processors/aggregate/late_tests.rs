//! Late events (CONTRACT §2, "Late events"): applied when they arrive,
//! never dropped; only their place in time-bounded figures depends on their
//! timestamp. Table-driven cases, then a property test against an oracle
//! that applies the contract's forgetting, with lateness up to twice the
//! dedup window.

use std::collections::{BTreeMap, HashMap};

use flowpulse_core::event::{EventKind, WorkflowEvent};
use proptest::prelude::*;

use super::oracle::WorkflowCounts;
use super::state::{AggregateState, Limits};
use super::tests::{event, BASE_MS};

const BOUND_MS: i64 = 5_000;
/// Short, so that lateness of twice the window stays a small test.
const WINDOW_MS: i64 = 60_000;
const WALL_MS: i64 = BASE_MS + 365 * 24 * 3600 * 1000;

fn limits() -> Limits {
    Limits {
        max_out_of_order_ms: BOUND_MS,
        dedup_window_ms: WINDOW_MS,
        stale_after_ms: 24 * 3600 * 1000,
        expire_paused: false,
        max_agents: 100,
        max_workflow_types: 100,
        history_interval_ms: 5_000,
        history_points: 720,
    }
}

use EventKind::{
    WorkflowCancelled as Cancelled, WorkflowCompleted as Completed, WorkflowCreated as Created,
    WorkflowPaused as Paused,
};

/// (total, running, paused, completed, cancelled, anomalies).
type Counts = (u64, u64, u64, u64, u64, u64);

/// A named case: arrivals (kind, workflow, time) and the counts they give.
type Case<'a> = (&'a str, &'a [(EventKind, &'a str, i64)], Counts);

/// The counts after folding `arrivals` in order and flushing.
fn outcome_of(arrivals: &[(EventKind, &str, i64)]) -> Counts {
    let mut state = AggregateState::new(limits());
    for (kind, workflow, ts) in arrivals {
        let mut e = event(*kind, workflow, *ts);
        if kind.is_terminal() {
            e.duration_ms = Some(1_000);
        }
        state.fold(&e, WALL_MS);
    }
    state.flush();
    let o = state.document(String::new(), 5_000).overview;
    (
        o.total_workflows,
        o.running_workflows,
        o.paused_workflows,
        o.completed_workflows,
        o.cancelled_workflows,
        state.accounting().anomalies,
    )
}

#[test]
fn late_events_count_as_if_they_had_come_in_order() {
    let cases: &[Case] = &[
        (
            "a workflow whose events arrive behind another's",
            &[
                (Created, "b", 10_000),
                (Created, "a", 1_000),
                (Completed, "a", 2_000),
            ],
            (2, 1, 0, 1, 0, 0),
        ),
        (
            "created after completed, both late",
            &[
                (Created, "b", 10_000),
                (Completed, "a", 2_000),
                (Created, "a", 1_000),
            ],
            (2, 1, 0, 1, 0, 0),
        ),
        (
            "a whole workflow ten minutes late",
            &[
                (Created, "b", 0),
                (Created, "c", 1_200_000),
                (Created, "a", 600_000),
                (Paused, "a", 601_000),
                (Cancelled, "a", 602_000),
            ],
            (3, 2, 0, 0, 1, 0),
        ),
        (
            "a late duplicate of a finished workflow's outcome",
            &[
                (Created, "a", 1_000),
                (Completed, "a", 2_000),
                (Created, "b", 30_000),
                (Completed, "a", 2_000),
            ],
            (2, 1, 0, 1, 0, 0),
        ),
        (
            "a late pause from before the outcome changes nothing",
            &[
                (Created, "a", 1_000),
                (Completed, "a", 3_000),
                (Created, "b", 30_000),
                (Paused, "a", 2_000),
            ],
            (2, 1, 0, 1, 0, 0),
        ),
        (
            "a late pause after the outcome is an anomaly",
            &[
                (Created, "a", 1_000),
                (Completed, "a", 3_000),
                (Created, "b", 30_000),
                (Paused, "a", 4_000),
            ],
            (2, 1, 0, 1, 0, 1),
        ),
        (
            "a late second terminal event is an anomaly; the outcome stays",
            &[
                (Created, "a", 1_000),
                (Completed, "a", 3_000),
                (Created, "b", 30_000),
                (Cancelled, "a", 2_500),
            ],
            (2, 1, 0, 1, 0, 1),
        ),
    ];
    for (name, arrivals, expected) in cases {
        assert_eq!(outcome_of(arrivals), *expected, "{name}");
    }
}

#[test]
fn a_late_created_gives_the_duration_an_outcome_lacked() {
    let mut state = AggregateState::new(limits());
    state.fold(&event(Created, "b", 60_000), WALL_MS);
    // Both late; the outcome, without `duration_ms`, comes first.
    state.fold(&event(Completed, "a", 30_000), WALL_MS);
    assert_eq!(state.accounting().anomalies, 1, "no duration known yet");
    state.fold(&event(Created, "a", 10_000), WALL_MS);
    assert_eq!(state.accounting().anomalies, 0);
    let doc = state.document(String::new(), 5_000);
    assert!(
        (doc.latency_p50_ms - 20_000.0).abs() <= 200.0,
        "{}",
        doc.latency_p50_ms
    );
    assert_eq!(doc.overview.avg_completion_time_ms, 20_000.0);
}

#[test]
fn a_late_outcome_counts_in_a_window_only_if_its_time_is_inside_it() {
    let mut state = AggregateState::new(limits());
    let t = 1_000_000;
    state.fold(&event(Created, "now", t), WALL_MS);
    for (workflow, at) in [("30s-ago", t - 30_000), ("2m-ago", t - 120_000)] {
        state.fold(&event(Created, workflow, at - 1_000), WALL_MS);
        state.fold(&event(Completed, workflow, at), WALL_MS);
    }
    let doc = state.document(String::new(), 5_000);
    assert_eq!(doc.overview.completed_workflows, 2);
    assert_eq!(doc.throughput_per_minute, 1);
    assert_eq!(doc.window["1m"].finished, 1);
    assert_eq!(doc.window["5m"].finished, 2);
}

#[test]
fn an_emitted_history_point_never_changes() {
    let mut state = AggregateState::new(limits());
    state.fold(&event(Created, "a", 0), WALL_MS);
    state.fold(&event(Completed, "a", 1_000), WALL_MS);
    state.fold(&event(Created, "b", 60_000), WALL_MS);
    state.seal_history();
    let before = state.document(String::new(), 5_000);
    let first = before.history.first().cloned().expect("a sealed point");
    assert_eq!(first.finished, 1);
    // A late outcome in that point's interval counts in the totals only.
    state.fold(&event(Created, "late", 500), WALL_MS);
    state.fold(&event(Completed, "late", 2_000), WALL_MS);
    state.seal_history();
    let after = state.document(String::new(), 5_000);
    assert_eq!(after.overview.completed_workflows, 2);
    assert_eq!(after.history.first(), Some(&first));
}

/// One workflow's events, valid in event time.
fn lifecycle(index: usize) -> impl Strategy<Value = Vec<WorkflowEvent>> {
    (
        0i64..180_000,
        prop::collection::vec(1i64..3_000, 8),
        prop::bool::weighted(0.8),
        0usize..3,
        0usize..3,
        0u8..4,
        prop::option::weighted(0.7, 1u64..600_000),
    )
        .prop_map(
            move |(start, gaps, with_created, stages, pauses, outcome, duration)| {
                let workflow = format!("wf-{index}");
                let mut ts = start;
                let mut gaps = gaps.into_iter().cycle();
                let mut events = Vec::new();
                let mut push = |kind: EventKind, agent: Option<&str>, events: &mut Vec<_>| {
                    ts += gaps.next().unwrap_or(1);
                    let mut e = event(kind, &workflow, ts);
                    e.id = Some(format!("{workflow}-{}", events.len()));
                    if kind.is_stage() {
                        e.workflow_type = None;
                        e.agent_type = agent.map(str::to_owned);
                        e.duration_ms = Some(100);
                    }
                    if kind.is_terminal() {
                        e.duration_ms = duration;
                    }
                    events.push(e);
                };
                if with_created {
                    push(Created, None, &mut events);
                }
                for i in 0..stages {
                    let kind = if i % 2 == 0 {
                        EventKind::StageCompleted
                    } else {
                        EventKind::StageFailed
                    };
                    push(kind, Some(["coder", "tester"][i % 2]), &mut events);
                }
                for _ in 0..pauses {
                    push(Paused, None, &mut events);
                    push(EventKind::WorkflowResumed, None, &mut events);
                }
                match outcome {
                    1 => push(Completed, None, &mut events),
                    2 => push(EventKind::WorkflowFailed, None, &mut events),
                    3 => push(Cancelled, None, &mut events),
                    _ => {}
                }
                if !events.iter().any(|e| !e.kind.is_stage()) {
                    push(Created, None, &mut events);
                }
                events
            },
        )
}

/// What the contract says a state must show.
#[derive(Debug, Default, PartialEq)]
struct Expected {
    events: u64,
    workflows: WorkflowCounts,
    agents: BTreeMap<String, (u64, u64)>,
}

/// The oracle: folds arrivals by the contract's rules, plainly. An identity
/// is remembered a dedup window after it was (last) counted; a finished
/// workflow a window after it could first be known finished (its outcome
/// time plus the bound if in order, its arrival if late). What is forgotten
/// counts again; everything else counts once, whatever the order.
fn oracle(arrivals: &[WorkflowEvent]) -> Expected {
    let mut expected = Expected::default();
    let mut now: Option<i64> = None;
    let mut seen: HashMap<&str, i64> = HashMap::new();
    // One entry per workflow instance: its events, and when it may be forgotten.
    let mut instances: Vec<(Vec<&WorkflowEvent>, Option<i64>)> = Vec::new();
    let mut current: HashMap<&str, usize> = HashMap::new();
    for e in arrivals {
        let ts = e.timestamp_ms;
        if let Some(id) = e.id.as_deref() {
            let cutoff = now.map_or(i64::MIN, |t| t - WINDOW_MS);
            if seen.get(id).is_some_and(|s| *s >= cutoff) {
                continue;
            }
            seen.insert(id, now.map_or(ts, |t| t.max(ts)));
        }
        expected.events += 1;
        if e.kind.is_stage() {
            let agent = expected
                .agents
                .entry(e.agent_type.clone().unwrap_or_default())
                .or_default();
            if e.kind == EventKind::StageCompleted {
                agent.0 += 1;
            } else {
                agent.1 += 1;
            }
        } else {
            let late = now.is_some_and(|t| ts < t - BOUND_MS);
            let index = *current.entry(&e.workflow_id).or_insert_with(|| {
                instances.push((Vec::new(), None));
                instances.len() - 1
            });
            let (events, forget_after) = &mut instances[index];
            events.push(e);
            if e.kind.is_terminal() && forget_after.is_none() {
                *forget_after = Some(match (late, now) {
                    (true, Some(t)) => t,
                    _ => ts + BOUND_MS,
                });
            }
        }
        now = Some(now.map_or(ts, |t| t.max(ts)));
        let horizon = now.map_or(i64::MIN, |t| t - WINDOW_MS);
        current.retain(|_, index| instances[*index].1.is_none_or(|f| f >= horizon));
    }
    for (mut events, _) in instances {
        expected.workflows.count(&mut events);
    }
    expected
}

fn observed(state: &AggregateState) -> Expected {
    let doc = state.document(String::new(), 5_000);
    Expected {
        events: state.accounting().events,
        workflows: WorkflowCounts::of(&doc),
        agents: doc
            .agents
            .iter()
            .map(|a| (a.agent_type.clone(), (a.completed_tasks, a.failed_tasks)))
            .collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any arrival order within twice the dedup window, duplicates
    /// included: every count equals the oracle's.
    #[test]
    fn counts_match_the_oracle_under_lateness_up_to_twice_the_dedup_window(
        workflows in (1usize..40).prop_flat_map(|n| (0..n).map(lifecycle).collect::<Vec<_>>()),
        delays in prop::collection::vec(
            prop_oneof![3 => 0i64..BOUND_MS, 1 => 0i64..2 * WINDOW_MS],
            1..64,
        ),
        duplicate_every in 0usize..4,
        batch in 1usize..40,
    ) {
        let events: Vec<WorkflowEvent> = workflows.into_iter().flatten().collect();
        let mut keyed: Vec<(i64, usize, &WorkflowEvent)> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            keyed.push((e.timestamp_ms + delays[i % delays.len()], keyed.len(), e));
            if duplicate_every > 0 && i % duplicate_every == 0 {
                let again = delays[(i * 7 + 3) % delays.len()];
                keyed.push((e.timestamp_ms + again, keyed.len(), e));
            }
        }
        keyed.sort_by_key(|(at, seq, _)| (*at, *seq));
        let arrivals: Vec<WorkflowEvent> = keyed.into_iter().map(|(_, _, e)| e.clone()).collect();

        let mut state = AggregateState::new(limits());
        for chunk in arrivals.chunks(batch) {
            state.fold_all(chunk, WALL_MS);
        }
        state.flush();
        let o = state.document(String::new(), 5_000).overview;
        prop_assert_eq!(
            o.running_workflows + o.paused_workflows + o.completed_workflows
                + o.failed_workflows + o.cancelled_workflows + o.expired_workflows,
            o.total_workflows
        );
        prop_assert_eq!(observed(&state), oracle(&arrivals));
    }
}
