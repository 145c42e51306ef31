//! Holding `container_create` until enrichment answers or the deadline
//! passes, without reordering a container's own events: a removal that comes
//! first releases the create before it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctwatch::{Container, ContainerEvent, EventKind};

struct Held {
    event: ContainerEvent,
    due: Instant,
}

/// The creates waiting for their enrichment.
pub struct Gate {
    held: HashMap<String, Held>,
    deadline: Duration,
}

impl Gate {
    /// A gate that holds a create for `deadline` at most.
    pub fn new(deadline: Duration) -> Self {
        Gate { held: HashMap::new(), deadline }
    }

    /// Passes `event` on, or holds it; what may go out now is appended to `out`.
    /// Returns true when the event is held (its enrichment should be asked for).
    pub fn push(&mut self, event: ContainerEvent, now: Instant, out: &mut Vec<ContainerEvent>) -> bool {
        let id = event.container.id.clone();
        match event.kind {
            EventKind::ContainerCreate | EventKind::ExistingContainer => {
                if let Some(earlier) = self.held.remove(&id) {
                    out.push(released(earlier.event, None, false));
                }
                self.held.insert(id, Held { event, due: now + self.deadline });
                true
            }
            EventKind::ContainerUpdate => {
                out.push(event);
                false
            }
            EventKind::ContainerRemove => {
                if let Some(held) = self.held.remove(&id) {
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
        if self.held.get(id).is_some_and(|h| h.event.cgroup_id == cgroup_id) {
            let held = self.held.remove(id).expect("present");
            out.push(released(held.event, updated, complete));
            return true;
        }
        false
    }

    /// Releases the creates whose deadline has passed, unenriched.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<ContainerEvent>) {
        let due: Vec<String> = self.held.iter().filter(|(_, h)| h.due <= now).map(|(id, _)| id.clone()).collect();
        let mut released_now: Vec<Held> = due.iter().filter_map(|id| self.held.remove(id)).collect();
        released_now.sort_by_key(|h| h.due);
        out.extend(released_now.into_iter().map(|h| released(h.event, None, false)));
    }

    /// When the next held create is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.held.values().map(|h| h.due).min()
    }

    /// How many creates are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

fn released(mut event: ContainerEvent, updated: Option<Arc<Container>>, complete: bool) -> ContainerEvent {
    if let Some(container) = updated {
        event.container = container;
    }
    event.enriched = Some(complete);
    event
}
