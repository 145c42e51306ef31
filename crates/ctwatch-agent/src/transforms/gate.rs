//! The enrichment gate: a create waits for its runtime's answer (name,
//! image, pod, labels) or the deadline, whichever comes first; an answer
//! after the create went out makes a `container_update`. A removal cancels
//! the container's enrichment (no retries for what is gone).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctwatch::{Container, ContainerEvent, ContainerState, EventKind};
use ctwatch_enrich::{EnrichResult, Enrichment, Gate};

use super::{Cx, Transform};
use crate::metrics::Metrics;

/// The most containers whose enrichment latency is timed at once (beyond
/// this the latency of new ones is not measured; counted as `enrichment_timing`).
const MAX_TIMED: usize = 65_536;

/// Who answers: the runtimes' APIs ([`Enrichment`]), or a fake in tests.
pub trait Enricher: Send {
    /// Asks about `container` in the background; answers come to the agent's loop.
    fn submit(&self, container: &Container);
    /// Stops asking about `id` (the incarnation with root cgroup `cgroup_id`).
    fn cancel(&self, id: &str, cgroup_id: u64);
}

impl Enricher for Enrichment {
    fn submit(&self, container: &Container) {
        Enrichment::submit(self, container)
    }

    fn cancel(&self, id: &str, cgroup_id: u64) {
        Enrichment::cancel(self, id, cgroup_id)
    }
}

/// A shared enricher (the lifecycle asks the same engine how containers ended).
impl<E: Enricher + Sync> Enricher for Arc<E> {
    fn submit(&self, container: &Container) {
        (**self).submit(container)
    }

    fn cancel(&self, id: &str, cgroup_id: u64) {
        (**self).cancel(id, cgroup_id)
    }
}

/// The gate as a transform.
pub struct EnrichmentGate {
    enricher: Option<Box<dyn Enricher>>,
    gate: Gate,
    /// When each container's enrichment was asked for (for the latency histogram).
    submitted: HashMap<(String, u64), Instant>,
    metrics: Arc<Metrics>,
}

impl EnrichmentGate {
    /// A gate holding creates for `deadline` at most; with no enricher, everything passes.
    pub fn new(enricher: Option<Box<dyn Enricher>>, deadline: Duration, metrics: Arc<Metrics>) -> Self {
        EnrichmentGate { enricher, gate: Gate::new(deadline), submitted: HashMap::new(), metrics }
    }

    /// Puts an enrichment answer in the store, releases the create it held, or,
    /// when the create went out already and the answer changed the record,
    /// emits a `container_update`.
    pub fn answer(&mut self, cx: &mut Cx<'_>, result: EnrichResult, out: &mut Vec<ContainerEvent>) {
        let before = cx.tracker.store().read().get(&result.container_id).cloned();
        let updated =
            cx.tracker.update_container(&result.container_id, result.cgroup_id, |c| result.metadata.apply_to(c));
        let (id, cgroup_id) = (result.container_id.as_str(), result.cgroup_id);
        if let Some(c) = &updated {
            let key = (result.container_id.clone(), cgroup_id);
            if result.complete {
                if let Some(asked) = self.submitted.remove(&key) {
                    self.metrics.enrichment_done(c.runtime, cx.now.saturating_duration_since(asked));
                }
            } else {
                self.metrics.enrichment_failed(c.runtime);
            }
        }
        if self.gate.resolve(id, cgroup_id, updated.clone(), result.complete, out) {
            return;
        }
        let Some(container) = updated else { return };
        let changed = before.is_some_and(|b| *b != *container);
        if changed && container.state != ContainerState::Removed {
            out.push(ContainerEvent {
                time: cx.wall,
                kind: EventKind::ContainerUpdate,
                cgroup_id: container.cgroup_id,
                container,
                kernel_time: None,
                enriched: Some(result.complete),
                seq: 0,
                late: false,
            });
        }
    }

    /// How many creates are held.
    pub fn held(&self) -> usize {
        self.gate.len()
    }
}

impl Transform for EnrichmentGate {
    fn push(&mut self, cx: &mut Cx<'_>, input: &mut Vec<ContainerEvent>, out: &mut Vec<ContainerEvent>) {
        let Some(enricher) = &self.enricher else {
            out.append(input);
            return;
        };
        for event in input.drain(..) {
            let container = event.container.clone();
            if event.kind == EventKind::ContainerRemove {
                enricher.cancel(&container.id, event.cgroup_id);
                self.submitted.remove(&(container.id.clone(), event.cgroup_id));
            }
            if self.gate.push(event, cx.now, out) {
                enricher.submit(&container);
                if self.submitted.len() < MAX_TIMED {
                    self.submitted.insert((container.id.clone(), container.cgroup_id), cx.now);
                } else {
                    self.metrics.queue_overflow("enrichment_timing", 1);
                }
            }
        }
    }

    fn tick(&mut self, cx: &mut Cx<'_>, out: &mut Vec<ContainerEvent>) {
        self.gate.expire(cx.now, out);
    }

    fn next_due(&self) -> Option<Instant> {
        self.gate.next_due()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use ctwatch::sources::CgroupChange;
    use ctwatch::state_dirs::PathOnly;
    use ctwatch::{Clock, ManualClock, SharedStore, Store, Tracker};
    use ctwatch_enrich::metadata::Metadata;

    use super::*;
    use crate::transforms::tracker::tests::cgroup;

    #[derive(Default, Clone)]
    struct Fake(Arc<Mutex<Vec<String>>>);

    impl Enricher for Fake {
        fn submit(&self, c: &Container) {
            self.0.lock().unwrap().push(format!("submit {}", c.id));
        }
        fn cancel(&self, id: &str, _: u64) {
            self.0.lock().unwrap().push(format!("cancel {id}"));
        }
    }

    fn kinds(out: &[ContainerEvent]) -> Vec<(EventKind, Option<bool>)> {
        out.iter().map(|e| (e.kind, e.enriched)).collect()
    }

    #[test]
    fn a_create_waits_for_its_answer_or_the_deadline_and_a_remove_cancels() {
        let clock = ManualClock::new();
        let mut tracker =
            Tracker::new(SharedStore::new(Store::default()), Box::new(PathOnly)).with_clock(Arc::new(clock.clone()));
        let fake = Fake::default();
        let mut gate =
            EnrichmentGate::new(Some(Box::new(fake.clone())), Duration::from_millis(100), Arc::new(Metrics::new()));
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let mut created = Vec::new();
        tracker.apply(
            &[
                cgroup(CgroupChange::Mkdir, 1, &format!("/docker/{a}")),
                cgroup(CgroupChange::Mkdir, 2, &format!("/docker/{b}")),
            ],
            &mut created,
        );
        let mut out = Vec::new();
        gate.push(&mut Cx::new(&mut tracker), &mut created, &mut out);
        assert!(
            out.is_empty() && gate.held() == 2 && gate.next_due() == Some(clock.now() + Duration::from_millis(100))
        );
        // a's answer comes in time: its create goes out enriched, with the name.
        let answer = EnrichResult {
            container_id: a.clone(),
            cgroup_id: 1,
            metadata: Metadata { name: "web".into(), ..Metadata::default() },
            complete: true,
        };
        gate.answer(&mut Cx::new(&mut tracker), answer, &mut out);
        assert_eq!(kinds(&out), [(EventKind::ContainerCreate, Some(true))]);
        assert_eq!(out[0].container.name, "web");
        out.clear();
        // b's does not: one tick before the deadline nothing, at the deadline its create, unenriched.
        clock.advance(Duration::from_millis(99));
        gate.tick(&mut Cx::new(&mut tracker), &mut out);
        assert!(out.is_empty());
        clock.advance(Duration::from_millis(1));
        gate.tick(&mut Cx::new(&mut tracker), &mut out);
        assert_eq!(kinds(&out), [(EventKind::ContainerCreate, Some(false))]);
        out.clear();
        // b is removed: its enrichment is cancelled.
        let mut removed = Vec::new();
        tracker.apply(&[cgroup(CgroupChange::Rmdir, 2, &format!("/docker/{b}"))], &mut removed);
        gate.push(&mut Cx::new(&mut tracker), &mut removed, &mut out);
        assert_eq!(kinds(&out), [(EventKind::ContainerRemove, None)]);
        assert_eq!(*fake.0.lock().unwrap(), [format!("submit {a}"), format!("submit {b}"), format!("cancel {b}")]);
    }
}
