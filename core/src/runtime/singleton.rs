//! A stateful processor that one instance at a time runs, in a pipeline
//! whose input is shared among instances (alert rules after a partitioned
//! `aggregate`): every instance computes the same merged document, and
//! rules evaluated on each would fire once per instance.
//!
//! The instances take turns under a lease in the checkpoint store: the
//! holder takes the state's fencing token, restores its checkpoint and
//! runs the processor; the others let their input go. A holder that loses
//! the lease (it stalled past its lifetime and another took it) drops the
//! state, and its writes are refused by the newer token in the meantime.
//! The next holder resumes from the checkpoint, so an alert fires and
//! notifies once, not once per instance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::partitioned::Partitioning;
use super::stateful::{StateKeeper, WriteState};
use super::{handle_result, next_tick, ticker, Output};
use crate::checkpoint::{self, CheckpointStore};
use crate::plugin::{ComponentError, Processor, Shutdown};
use crate::record::Batch;
use crate::telemetry::ComponentStats;

/// How long a lease lasts without renewal: how long the others wait after
/// its holder dies.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(10);

/// How much earlier than the store this instance counts its lease as
/// lapsed: the store's clock and this one may run a little apart.
const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// Until when the lease is surely this instance's, by its own clock: the
/// start of the last renewal the store granted, plus the lease's lifetime,
/// less [`LEASE_MARGIN`]. A holder that stalled (or could not reach the
/// store) past that lets the state go before it handles anything more,
/// rather than at its next renewal: another instance may hold the lease.
#[derive(Debug, Default)]
struct LeaseClock {
    valid_until: Option<Instant>,
}

impl LeaseClock {
    /// The store granted (or renewed) the lease asked for at `asked`.
    fn granted(&mut self, asked: Instant) {
        self.valid_until = Some(asked + LEASE_TTL - LEASE_MARGIN);
    }

    /// Whether the lease may have lapsed by `now`.
    fn lapsed(&self, now: Instant) -> bool {
        self.valid_until.is_none_or(|until| now >= until)
    }
}

/// The lease and the processor it runs, while held.
struct Holder {
    processor: Box<dyn Processor>,
    keeper: StateKeeper,
}

pub(crate) async fn run_singleton(
    name: String,
    setup: Partitioning,
    mut rx: mpsc::Receiver<Batch>,
    mut out: Output,
    stats: Arc<ComponentStats>,
    stopping: Shutdown,
) -> Result<(), ComponentError> {
    let Some((store, interval)) = setup.store.clone() else {
        return Err(ComponentError::Fatal(
            "taking turns with other instances needs a [checkpoint] store".into(),
        ));
    };
    let template = (setup.factory)()
        .await
        .map_err(|e| ComponentError::Fatal(e.0))?;
    let key = checkpoint::lease_key(&setup.pipeline, &name);
    let owner = format!(
        "{} #{:08x}",
        checkpoint::instance_label(),
        rand_suffix(&name)
    );
    let holding = stats.gauge(
        "lease_held",
        "1 while this instance holds the lease under which the component runs",
    );
    let mut ticks = ticker(template.tick_interval());
    let mut checkpoints = ticker(Some(interval));
    let mut renewals = tokio::time::interval(LEASE_TTL / 4);
    renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held: Option<Holder> = None;
    let mut clock = LeaseClock::default();
    let mut waiting_logged = false;
    loop {
        let result = tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) => {
                    stats.received(batch.len());
                    let_go_if_lapsed(&name, &clock, &mut held, &holding);
                    match held.as_mut() {
                        Some(h) => {
                            let (batch, admitted) = h.keeper.admit(batch, &stats);
                            let result = h.processor.process(batch, &mut out).await;
                            h.keeper.settle(admitted, result.is_ok());
                            result
                        }
                        // Another instance runs it; this one's copy of the
                        // input is not needed.
                        None => Ok(()),
                    }
                }
                None => break,
            },
            _ = next_tick(&mut ticks) => {
                let_go_if_lapsed(&name, &clock, &mut held, &holding);
                match held.as_mut() {
                    Some(h) => h.processor.tick(&mut out).await,
                    None => Ok(()),
                }
            }
            _ = next_tick(&mut checkpoints) => {
                let_go_if_lapsed(&name, &clock, &mut held, &holding);
                if let Some(h) = held.as_mut() {
                    if let Some(state) = h.processor.state() {
                        h.keeper.checkpoint(state, true, &stats).await;
                    }
                    if h.keeper.write_state() == WriteState::FencedOut {
                        warn!(component = %name, "another instance took over; letting the state go");
                        held = None;
                        holding.set(0);
                    }
                }
                Ok(())
            }
            _ = renewals.tick() => {
                let asked = Instant::now();
                let granted = store.lease(&key, &owner, LEASE_TTL).await;
                if let Ok(None) = granted {
                    clock.granted(asked);
                }
                match granted {
                    Ok(None) if held.is_none() => {
                        match take_over(&setup, &name, store.clone(), interval).await {
                            Ok(holder) => {
                                held = Some(holder);
                                holding.set(1);
                                waiting_logged = false;
                                info!(component = %name, "holds the lease: runs here");
                            }
                            // Tried again at the next renewal.
                            Err(e) => stats.error(format!("cannot take over the state: {e}")),
                        }
                    }
                    Ok(None) => {}
                    Ok(Some(other)) => {
                        if held.take().is_some() {
                            holding.set(0);
                            warn!(component = %name, holder = %other, "lost the lease to another instance; letting the state go");
                        } else if !waiting_logged {
                            info!(component = %name, holder = %other, "another instance holds the lease; waiting to take over");
                            waiting_logged = true;
                        }
                    }
                    Err(e) => {
                        stats.error(format!("cannot renew the lease {key}: {e}"));
                        let_go_if_lapsed(&name, &clock, &mut held, &holding);
                    }
                }
                Ok(())
            }
        };
        handle_result(&name, &stats, result)?;
    }
    // A lease that may have lapsed, or a final write another instance's
    // token refused, means the state is another's now: nothing more is
    // emitted from this copy.
    let_go_if_lapsed(&name, &clock, &mut held, &holding);
    if let Some(mut h) = held.take() {
        if let Some(state) = h.processor.state() {
            h.keeper.checkpoint(state, true, &stats).await;
        }
        if h.keeper.write_state() == WriteState::FencedOut {
            warn!(component = %name, "another instance took over; letting the state go");
            holding.set(0);
            return Ok(());
        }
        let result =
            super::finish(h.processor.as_mut(), &mut out, &stopping, Some(&h.keeper)).await;
        if let Err(e) = store.release_lease(&key, &owner).await {
            warn!(component = %name, "cannot give the lease up ({e}); the next holder waits for it to lapse");
        }
        handle_result(&name, &stats, result)?;
    }
    Ok(())
}

/// Drops the state if the lease may have lapsed (see [`LeaseClock`]).
fn let_go_if_lapsed(
    name: &str,
    clock: &LeaseClock,
    held: &mut Option<Holder>,
    holding: &crate::telemetry::Gauge,
) {
    if held.is_some() && clock.lapsed(Instant::now()) {
        *held = None;
        holding.set(0);
        warn!(component = %name, "the lease may have lapsed (this process stalled, or could not reach the store to renew it); letting the state go until it holds the lease again");
    }
}

/// Builds the processor and restores its state under a new fencing token.
async fn take_over(
    setup: &Partitioning,
    name: &str,
    store: Arc<dyn CheckpointStore>,
    interval: Duration,
) -> Result<Holder, ComponentError> {
    let mut processor = (setup.factory)()
        .await
        .map_err(|e| ComponentError::Fatal(e.0))?;
    let Some(state) = processor.state() else {
        return Err(ComponentError::Fatal(format!("{name} keeps no state")));
    };
    let keeper =
        StateKeeper::start_partition(&setup.pipeline, name, Some((store, interval)), 0, state)
            .await
            .map_err(ComponentError::Transient)?;
    Ok(Holder { processor, keeper })
}

/// A per-process number that tells two runs of one host and pid apart.
fn rand_suffix(name: &str) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ name.len() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_counts_as_lapsed_before_the_store_lets_it_go() {
        let mut clock = LeaseClock::default();
        let asked = Instant::now();
        assert!(clock.lapsed(asked), "never granted");
        clock.granted(asked);
        // Renewed every quarter lifetime: well within it.
        assert!(!clock.lapsed(asked + LEASE_TTL / 4));
        // Lapsed here before the store's lifetime ends, whatever the
        // clocks' drift within the margin.
        assert!(clock.lapsed(asked + LEASE_TTL - LEASE_MARGIN));
        assert!(clock.lapsed(asked + LEASE_TTL));
        // A renewal counts from when it was asked, not when granted.
        let later = asked + LEASE_TTL / 2;
        clock.granted(later);
        assert!(!clock.lapsed(later + LEASE_TTL / 2));
        assert!(clock.lapsed(later + LEASE_TTL - LEASE_MARGIN));
    }
}
