//! Holding `container_create` until enrichment answers or the deadline
//! passes, without reordering a container's own events: a removal that comes
//! first releases the create before it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctwatch::{Container, ContainerEvent, EventKind};

struct Held {
    event: ContainerEvent,
    /// Tells this hold apart from an earlier one of the same container ID.
    seq: u64,
}

/// The creates waiting for their enrichment.
///
/// Every hold lasts the same `deadline`, so holds fall due in the order they
/// were made: a queue in that order makes the next deadline and the expiry
/// O(1) (the watch loop asks after every message).
pub struct Gate {
    held: HashMap<String, Held>,
    /// (due, container ID, seq), oldest first; entries whose hold was released
    /// early are dropped when they reach the front.
    due: VecDeque<(Instant, String, u64)>,
    deadline: Duration,
    next_seq: u64,
}

impl Gate {
    /// A gate that holds a create for `deadline` at most.
    pub fn new(deadline: Duration) -> Self {
        Gate { held: HashMap::new(), due: VecDeque::new(), deadline, next_seq: 0 }
    }

    /// Passes `event` on, or holds it; what may go out now is appended to `out`.
    /// Returns true when the event is held (its enrichment should be asked for).
    pub fn push(&mut self, event: ContainerEvent, now: Instant, out: &mut Vec<ContainerEvent>) -> bool {
        let id = event.container.id.clone();
        match event.kind {
            EventKind::ContainerCreate | EventKind::ExistingContainer => {
                if let Some(earlier) = self.release(&id) {
                    out.push(released(earlier.event, None, false));
                }
                self.next_seq += 1;
                self.due.push_back((now + self.deadline, id.clone(), self.next_seq));
                self.held.insert(id, Held { event, seq: self.next_seq });
                true
            }
            EventKind::ContainerUpdate
            | EventKind::ContainerPrecreate
            | EventKind::ContainerPolicyViolation
            | EventKind::ContainerStart => {
                out.push(event);
                false
            }
            EventKind::ContainerRemove => {
                if let Some(held) = self.release(&id) {
                    out.push(released(held.event, None, false));
                }
                out.push(event);
                false
            }
        }
    }

    /// Enrichment answered for the container `id` whose root cgroup is
    /// `cgroup_id`: release its create with the updated record. Returns false
    /// when no create was held for it (it went out at the deadline already).
    pub fn resolve(
        &mut self,
        id: &str,
        cgroup_id: u64,
        updated: Option<Arc<Container>>,
        complete: bool,
        out: &mut Vec<ContainerEvent>,
    ) -> bool {
        if self.held.get(id).is_none_or(|h| h.event.cgroup_id != cgroup_id) {
            return false;
        }
        let held = self.release(id).expect("present");
        out.push(released(held.event, updated, complete));
        true
    }

    /// Releases the creates whose deadline has passed, unenriched, oldest first.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<ContainerEvent>) {
        while self.due.front().is_some_and(|(due, ..)| *due <= now) {
            let (_, id, _) = self.due.pop_front().expect("front exists");
            if let Some(held) = self.held.remove(&id) {
                out.push(released(held.event, None, false));
            }
            self.drop_stale_front();
        }
    }

    /// When the next held create is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.front().map(|(due, ..)| *due)
    }

    /// How many creates are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    fn release(&mut self, id: &str) -> Option<Held> {
        let held = self.held.remove(id)?;
        self.drop_stale_front();
        Some(held)
    }

    /// Keeps the queue's front a live hold, so `next_due` is exact.
    fn drop_stale_front(&mut self) {
        while self.due.front().is_some_and(|(_, id, seq)| self.held.get(id).is_none_or(|h| h.seq != *seq)) {
            self.due.pop_front();
        }
    }
}

fn released(mut event: ContainerEvent, updated: Option<Arc<Container>>, complete: bool) -> ContainerEvent {
    if let Some(container) = updated {
        event.container = container;
    }
    event.enriched = Some(complete);
    event
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use ctwatch::Runtime;

    use super::*;

    fn event(kind: EventKind, id: &str, cgroup_id: u64) -> ContainerEvent {
        let container = Container {
            cgroup_id,
            cgroup_path: format!("/docker/{id}"),
            ctime_ns: 1,
            ..Container::new(id, Runtime::Docker)
        };
        ContainerEvent {
            time: SystemTime::now(),
            kind,
            cgroup_id,
            container: Arc::new(container),
            kernel_time: None,
            enriched: None,
            seq: 0,
            late: false,
        }
    }

    fn summary(out: &[ContainerEvent]) -> Vec<(EventKind, String, Option<bool>)> {
        out.iter().map(|e| (e.kind, e.container.id.clone(), e.enriched)).collect()
    }

    #[test]
    fn creates_wait_for_their_answer_or_the_deadline_in_order() {
        let t0 = Instant::now();
        let mut gate = Gate::new(Duration::from_secs(2));
        let mut out = Vec::new();
        assert!(gate.push(event(EventKind::ContainerCreate, "a", 1), t0, &mut out));
        assert!(gate.push(event(EventKind::ContainerCreate, "b", 2), t0 + Duration::from_millis(10), &mut out));
        assert!(gate.push(event(EventKind::ContainerCreate, "c", 3), t0 + Duration::from_millis(20), &mut out));
        assert!(out.is_empty());
        // b answers; a and c fall due, oldest first.
        assert!(gate.resolve("b", 2, None, true, &mut out));
        assert_eq!(gate.next_due(), Some(t0 + Duration::from_secs(2)));
        gate.expire(t0 + Duration::from_secs(3), &mut out);
        assert_eq!(
            summary(&out),
            [
                (EventKind::ContainerCreate, "b".into(), Some(true)),
                (EventKind::ContainerCreate, "a".into(), Some(false)),
                (EventKind::ContainerCreate, "c".into(), Some(false)),
            ]
        );
        assert!(gate.is_empty() && gate.next_due().is_none());
        // A late answer finds nothing held.
        assert!(!gate.resolve("a", 1, None, true, &mut out));
    }

    #[test]
    fn a_removal_releases_its_create_first_and_others_keep_their_deadline() {
        let t0 = Instant::now();
        let mut gate = Gate::new(Duration::from_secs(2));
        let mut out = Vec::new();
        gate.push(event(EventKind::ContainerCreate, "a", 1), t0, &mut out);
        gate.push(event(EventKind::ContainerCreate, "b", 2), t0 + Duration::from_secs(1), &mut out);
        assert!(!gate.push(event(EventKind::ContainerRemove, "a", 1), t0, &mut out));
        assert_eq!(
            summary(&out),
            [(EventKind::ContainerCreate, "a".into(), Some(false)), (EventKind::ContainerRemove, "a".into(), None)]
        );
        assert_eq!(gate.next_due(), Some(t0 + Duration::from_secs(3)), "the released hold no longer counts");
        assert_eq!(gate.len(), 1);
    }

    #[test]
    fn a_reused_id_is_a_new_hold() {
        let t0 = Instant::now();
        let mut gate = Gate::new(Duration::from_secs(2));
        let mut out = Vec::new();
        gate.push(event(EventKind::ContainerCreate, "a", 1), t0, &mut out);
        gate.push(event(EventKind::ContainerCreate, "a", 7), t0 + Duration::from_secs(1), &mut out);
        assert_eq!(summary(&out), [(EventKind::ContainerCreate, "a".into(), Some(false))]);
        assert!(!gate.resolve("a", 1, None, true, &mut out), "an answer for the old incarnation");
        gate.expire(t0 + Duration::from_millis(2500), &mut out);
        assert_eq!(gate.len(), 1, "the new hold is due at t0+3s, not t0+2s");
        assert!(gate.resolve("a", 7, None, true, &mut out));
        assert!(gate.is_empty());
    }
}
