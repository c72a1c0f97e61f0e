//! A seeded generator of realistic workflow traffic (CONTRACT §1): many
//! workflows in flight across workflow and agent types, with stage failures
//! and retries, pauses, resumes, cancellations, and periodic incidents in
//! which one agent fails or slows down for a minute or two.
//!
//! The same seed and start time always give the same events, and the
//! generator keeps a [`Tally`] of what it produced, so tests and load tools
//! know the exact expected counts.

use std::collections::VecDeque;

use flowpulse_core::event::{EventKind, WorkflowEvent};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Workflow types and their stages, each run by one agent type.
const WORKFLOW_TYPES: [(&str, &[(&str, &str)]); 5] = [
    (
        "feature",
        &[
            ("planning", "planner"),
            ("scaffolding", "scaffold"),
            ("implementation", "coder"),
            ("testing", "tester"),
            ("review", "reviewer"),
            ("deployment", "deployer"),
        ],
    ),
    (
        "bugfix",
        &[
            ("triage", "planner"),
            ("implementation", "coder"),
            ("testing", "tester"),
            ("review", "reviewer"),
        ],
    ),
    (
        "refactor",
        &[
            ("planning", "planner"),
            ("implementation", "coder"),
            ("testing", "tester"),
            ("review", "reviewer"),
        ],
    ),
    ("docs", &[("writing", "documenter"), ("review", "reviewer")]),
    (
        "security_patch",
        &[
            ("triage", "security"),
            ("implementation", "coder"),
            ("testing", "tester"),
            ("security_review", "security"),
            ("deployment", "deployer"),
        ],
    ),
];

/// Agent types with their typical stage duration in ms.
const AGENTS: [(&str, u64); 8] = [
    ("coder", 12_000),
    ("deployer", 6_000),
    ("documenter", 3_000),
    ("planner", 4_000),
    ("reviewer", 5_000),
    ("scaffold", 2_000),
    ("security", 7_000),
    ("tester", 8_000),
];

/// What the generator simulates.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Seeds every random choice.
    pub seed: u64,
    /// Event time of the first event, ms since the epoch.
    pub start_ms: i64,
    /// Events per second of event time.
    pub rate: f64,
    /// Workflows kept in flight.
    pub in_flight: usize,
    /// Whether incidents happen.
    pub incidents: bool,
    /// Event time between incident starts, ms.
    pub incident_every_ms: i64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            seed: 42,
            start_ms: 1_795_774_502_000,
            rate: 100.0,
            in_flight: 200,
            incidents: true,
            incident_every_ms: 240_000,
        }
    }
}

/// Exact counts of what was generated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Events produced.
    pub events: u64,
    /// Workflows created.
    pub created: u64,
    /// Workflows completed.
    pub completed: u64,
    /// Workflows failed.
    pub failed: u64,
    /// Workflows cancelled.
    pub cancelled: u64,
    /// Workflows paused right now.
    pub paused: u64,
    /// Stage tasks completed.
    pub stages_completed: u64,
    /// Stage tasks failed.
    pub stages_failed: u64,
}

impl Tally {
    /// Workflows created and without outcome, not paused.
    pub fn running(&self) -> u64 {
        self.created - self.completed - self.failed - self.cancelled - self.paused
    }
}

/// An incident in progress: one agent misbehaving until `until_ms`.
#[derive(Debug, Clone, Copy)]
struct Incident {
    agent: usize,
    slow: bool,
    until_ms: i64,
}

struct Active {
    id: String,
    workflow_type: usize,
    created_ms: i64,
    stage: usize,
    paused: bool,
}

/// An endless iterator of workflow events.
pub struct WorkloadGenerator {
    config: WorkloadConfig,
    rng: SmallRng,
    clock_ms: f64,
    step_ms: f64,
    active: Vec<Active>,
    queued: VecDeque<WorkflowEvent>,
    next_workflow: u64,
    incident: Option<Incident>,
    next_incident_ms: i64,
    tally: Tally,
}

impl WorkloadGenerator {
    /// A generator of `config`'s traffic.
    pub fn new(config: WorkloadConfig) -> WorkloadGenerator {
        let rate = if config.rate > 0.0 { config.rate } else { 1.0 };
        WorkloadGenerator {
            rng: SmallRng::seed_from_u64(config.seed),
            clock_ms: config.start_ms as f64,
            step_ms: 1000.0 / rate,
            active: Vec::with_capacity(config.in_flight),
            queued: VecDeque::new(),
            next_workflow: 1,
            incident: None,
            next_incident_ms: config.start_ms + 60_000,
            tally: Tally::default(),
            config,
        }
    }

    /// What has been generated so far.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// The event time the next event will carry (at least).
    pub fn clock_ms(&self) -> i64 {
        self.clock_ms as i64
    }

    /// The agent currently misbehaving, if any, and whether it is slow
    /// (rather than failing).
    pub fn incident(&self) -> Option<(&'static str, bool)> {
        self.incident.map(|i| (AGENTS[i.agent].0, i.slow))
    }

    fn message_id(&mut self) -> String {
        let v: u128 = self.rng.random();
        let h = format!("{v:032x}");
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    fn event(&mut self, kind: EventKind, index: usize) -> WorkflowEvent {
        let now = self.clock_ms as i64;
        let workflow = &self.active[index];
        let (type_name, stages) = WORKFLOW_TYPES[workflow.workflow_type];
        let id = self.message_id();
        let workflow = &self.active[index];
        let mut event = WorkflowEvent {
            id: Some(id),
            kind,
            timestamp_ms: now,
            workflow_id: workflow.id.clone(),
            workflow_type: Some(type_name.to_owned()),
            agent_type: None,
            stage: None,
            duration_ms: None,
            error: None,
        };
        if kind.is_stage() {
            let (stage, agent) = stages[workflow.stage];
            event.agent_type = Some(agent.to_owned());
            event.stage = Some(stage.to_owned());
        }
        if matches!(
            kind,
            EventKind::WorkflowCompleted | EventKind::WorkflowFailed
        ) {
            event.duration_ms = Some((now - workflow.created_ms).max(0) as u64);
        }
        event
    }

    fn update_incident(&mut self) {
        let now = self.clock_ms as i64;
        if let Some(incident) = self.incident {
            if now >= incident.until_ms {
                self.incident = None;
            }
        }
        if self.config.incidents && self.incident.is_none() && now >= self.next_incident_ms {
            let agent = self.rng.random_range(0..AGENTS.len());
            let length = self.rng.random_range(60_000..120_000);
            self.incident = Some(Incident {
                agent,
                slow: self.rng.random_bool(0.5),
                until_ms: now + length,
            });
            self.next_incident_ms = now + self.config.incident_every_ms.max(length + 1);
        }
    }

    fn create(&mut self) -> WorkflowEvent {
        let id = format!("wf-{:06}", self.next_workflow);
        self.next_workflow += 1;
        let workflow_type = self.rng.random_range(0..WORKFLOW_TYPES.len());
        self.active.push(Active {
            id,
            workflow_type,
            created_ms: self.clock_ms as i64,
            stage: 0,
            paused: false,
        });
        self.tally.created += 1;
        self.event(EventKind::WorkflowCreated, self.active.len() - 1)
    }

    /// The workflow's terminal event; the tally counts it once it is
    /// yielded ([`Self::count_outcome`]), so an event still queued when the
    /// caller stops taking is not in the tally.
    fn finish(&mut self, index: usize, kind: EventKind) -> WorkflowEvent {
        let mut event = self.event(kind, index);
        if kind == EventKind::WorkflowFailed {
            event.error = Some("stage failed after retries".into());
        }
        if self.active[index].paused {
            self.tally.paused -= 1;
        }
        self.active.swap_remove(index);
        event
    }

    fn count_outcome(&mut self, kind: EventKind) {
        match kind {
            EventKind::WorkflowCompleted => self.tally.completed += 1,
            EventKind::WorkflowFailed => self.tally.failed += 1,
            EventKind::WorkflowCancelled => self.tally.cancelled += 1,
            _ => {}
        }
    }

    fn run_stage(&mut self, index: usize) -> WorkflowEvent {
        let workflow = &self.active[index];
        let stages = WORKFLOW_TYPES[workflow.workflow_type].1;
        let agent_name = stages[workflow.stage].1;
        let agent = AGENTS
            .iter()
            .position(|(a, _)| *a == agent_name)
            .unwrap_or(0);
        let incident = self.incident.filter(|i| i.agent == agent);
        let fail_p = match incident {
            Some(i) if !i.slow => 0.6,
            _ => 0.04,
        };
        let failed = self.rng.random_bool(fail_p);
        let base = AGENTS[agent].1 as f64 * self.rng.random_range(0.5..1.8);
        let slow = if incident.is_some_and(|i| i.slow) {
            5.0
        } else {
            1.0
        };
        let kind = if failed {
            EventKind::StageFailed
        } else {
            EventKind::StageCompleted
        };
        let mut event = self.event(kind, index);
        event.duration_ms = Some((base * slow) as u64);
        if failed {
            self.tally.stages_failed += 1;
            event.error = Some(format!("{agent_name} task failed"));
            if self.rng.random_bool(0.5) {
                let finish = self.finish(index, EventKind::WorkflowFailed);
                self.queued.push_back(finish);
            }
        } else {
            self.tally.stages_completed += 1;
            let workflow = &mut self.active[index];
            workflow.stage += 1;
            if workflow.stage == stages.len() {
                workflow.stage -= 1;
                let finish = self.finish(index, EventKind::WorkflowCompleted);
                self.queued.push_back(finish);
            }
        }
        event
    }
}

impl Iterator for WorkloadGenerator {
    type Item = WorkflowEvent;

    fn next(&mut self) -> Option<WorkflowEvent> {
        self.clock_ms += self.step_ms;
        self.tally.events += 1;
        if let Some(event) = self.queued.pop_front() {
            self.count_outcome(event.kind);
            return Some(event);
        }
        self.update_incident();
        if self.active.len() < self.config.in_flight.max(1) {
            return Some(self.create());
        }
        let index = self.rng.random_range(0..self.active.len());
        let roll: f64 = self.rng.random();
        let event = if self.active[index].paused {
            if roll < 0.8 {
                self.active[index].paused = false;
                self.tally.paused -= 1;
                self.event(EventKind::WorkflowResumed, index)
            } else {
                self.finish(index, EventKind::WorkflowCancelled)
            }
        } else if roll < 0.02 {
            self.active[index].paused = true;
            self.tally.paused += 1;
            self.event(EventKind::WorkflowPaused, index)
        } else if roll < 0.025 {
            self.finish(index, EventKind::WorkflowCancelled)
        } else {
            self.run_stage(index)
        };
        self.count_outcome(event.kind);
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_the_same_events() {
        let a: Vec<_> = WorkloadGenerator::new(WorkloadConfig::default())
            .take(500)
            .collect();
        let b: Vec<_> = WorkloadGenerator::new(WorkloadConfig::default())
            .take(500)
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn tally_matches_the_events_produced() {
        tally_matches_after(20_000);
    }

    /// Whatever the count taken, even one that stops between a stage event
    /// and the terminal event it queued.
    #[test]
    fn tally_matches_wherever_the_caller_stops() {
        for n in 1..=400 {
            tally_matches_after(n);
        }
    }

    fn tally_matches_after(n: usize) {
        let mut generator = WorkloadGenerator::new(WorkloadConfig {
            in_flight: 50,
            ..WorkloadConfig::default()
        });
        let events: Vec<_> = generator.by_ref().take(n).collect();
        let count = |kind| events.iter().filter(|e| e.kind == kind).count() as u64;
        let tally = generator.tally();
        assert_eq!(tally.created, count(EventKind::WorkflowCreated));
        assert_eq!(tally.completed, count(EventKind::WorkflowCompleted));
        assert_eq!(tally.failed, count(EventKind::WorkflowFailed));
        assert_eq!(tally.cancelled, count(EventKind::WorkflowCancelled));
        let mut paused = std::collections::HashMap::new();
        for e in &events {
            match e.kind {
                EventKind::WorkflowPaused => paused.insert(e.workflow_id.as_str(), true),
                k if k.is_terminal() || k == EventKind::WorkflowResumed => {
                    paused.insert(e.workflow_id.as_str(), false)
                }
                _ => None,
            };
        }
        assert_eq!(tally.paused, paused.values().filter(|p| **p).count() as u64);
        assert_eq!(tally.stages_failed, count(EventKind::StageFailed));
        assert!(tally.paused <= 50);
        if n >= 20_000 {
            assert!(tally.completed > 0 && tally.failed > 0 && tally.cancelled > 0);
        }
    }

    #[test]
    fn incidents_raise_one_agents_failure_rate() {
        let mut generator = WorkloadGenerator::new(WorkloadConfig {
            rate: 50.0,
            ..WorkloadConfig::default()
        });
        let mut seen = false;
        for _ in 0..100_000 {
            generator.next();
            seen |= generator.incident().is_some();
        }
        assert!(seen, "no incident in 2000 s of event time");
    }
}
