//! The hook join: what the runtime hook learned about a container (bundle,
//! OCI config, init PID, caller, verdict) becomes part of the container —
//! in the store (so `get`, `ls`, `List` and Watch's current state show it)
//! and in its events.
//!
//! A precreate goes out as it is (with a policy violation after it when a
//! rule matched). A hooked container's create waits (at most
//! [`INIT_PID_WAIT`]) for its runtime to write the init PID, so the create
//! carries it; a later event about the same container releases it first,
//! keeping the order. An untrusted caller's findings are its own event and
//! nothing more: never kept, never joined.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctwatch::hook::{HookInfo, HookMessage};
use ctwatch::{ContainerEvent, EventKind};

use super::{Cx, Transform};
use crate::metrics::Metrics;

/// How long a hooked container's create may wait for its runtime to write the init PID.
pub const INIT_PID_WAIT: Duration = Duration::from_secs(1);

/// The most containers whose findings wait for their cgroup at once (beyond
/// this, new findings are not joined; counted as `hook_join`).
pub const MAX_PENDING: usize = 4096;

/// The join, as a transform.
pub struct HookJoin {
    /// The hook is the only live source: its init start/exit stand for cgroup mkdir/rmdir.
    hook_only: bool,
    /// What the hook learned from trusted callers, by container ID, until the container is removed.
    hooked: HashMap<String, Arc<HookInfo>>,
    /// The cgroup (ID) each hooked container's init was found in: findings go
    /// only to events of that cgroup, whatever ID a runtime was given.
    hooked_cgroup: HashMap<String, u64>,
    /// Creates of hooked containers waiting for the init PID, with when they go out regardless.
    awaiting_pid: Vec<(Instant, ContainerEvent)>,
    metrics: Arc<Metrics>,
}

impl HookJoin {
    /// An empty join; `hook_only` when the hook is the only live source.
    pub fn new(hook_only: bool, metrics: Arc<Metrics>) -> Self {
        HookJoin { hook_only, hooked: HashMap::new(), hooked_cgroup: HashMap::new(), awaiting_pid: Vec::new(), metrics }
    }

    /// What the hook saw: a precreate goes out as it is (into `events`, ahead
    /// of the gate); an init's start and exit are remembered, and stand for
    /// the cgroup's mkdir and rmdir when the hook is the only source.
    pub fn on_hook(&mut self, cx: &mut Cx<'_>, message: HookMessage, events: &mut Vec<ContainerEvent>) {
        match message {
            HookMessage::Precreate { mut container, info, time } => {
                let id = container.id.clone();
                self.metrics.hook_create_answered(Duration::from_micros(info.answer_us));
                let info = Arc::new(*info);
                let violation = info.trusted && info.verdict.is_some();
                container.hook = Some(info.clone());
                let event = ContainerEvent {
                    time,
                    kind: EventKind::ContainerPrecreate,
                    cgroup_id: 0,
                    container: Arc::new(container),
                    kernel_time: None,
                    enriched: None,
                    seq: 0,
                    late: false,
                };
                events.push(event.clone());
                if violation {
                    events.push(ContainerEvent { kind: EventKind::ContainerPolicyViolation, ..event });
                }
                if info.trusted && !info.verdict.as_ref().is_some_and(|v| v.denied) {
                    if self.hooked.len() >= MAX_PENDING && !self.hooked.contains_key(&id) {
                        self.metrics.queue_overflow("hook_join", 1);
                        return;
                    }
                    self.hooked_cgroup.remove(&id);
                    self.hooked.insert(id, info);
                }
            }
            HookMessage::Started { id, init_pid, cgroup } => {
                if let Some(info) = self.hooked.get_mut(&id) {
                    Arc::make_mut(info).init_pid = Some(init_pid);
                    if let Some(c) = &cgroup {
                        self.hooked_cgroup.insert(id.clone(), c.cgroup_id);
                    }
                    // The store's copy too, when the create went out already.
                    let info = info.clone();
                    let cgroup_id = cgroup.as_ref().map(|c| c.cgroup_id);
                    let known = cx.tracker.store().read().get(&id).map(|c| (c.cgroup_id, c.hook.is_some()));
                    if let Some((stored_cgroup, true)) = known {
                        if cgroup_id.is_none_or(|c| c == stored_cgroup) {
                            cx.tracker.update_container(&id, stored_cgroup, |c| c.set_hook(info));
                        }
                    }
                }
                if let (true, Some(cgroup)) = (self.hook_only, cgroup) {
                    cx.tracker.apply(&[cgroup], events);
                }
            }
            HookMessage::Exited { cgroup, .. } => {
                if let (true, Some(cgroup)) = (self.hook_only, cgroup) {
                    cx.tracker.apply(&[cgroup], events);
                }
            }
            HookMessage::Failed { id } => {
                self.hooked.remove(&id);
                self.hooked_cgroup.remove(&id);
            }
        }
    }

    /// How many containers' findings are kept.
    pub fn pending(&self) -> usize {
        self.hooked.len()
    }

    /// Gives `events` the findings of their containers (into the store too);
    /// a remove ends what is kept for its container.
    fn join(&mut self, cx: &mut Cx<'_>, events: &mut [ContainerEvent]) {
        if self.hooked.is_empty() {
            return;
        }
        for event in events.iter_mut() {
            let id = event.container.id.clone();
            let same_cgroup = self.hooked_cgroup.get(&id).is_none_or(|c| *c == event.cgroup_id);
            let joined = event.container.hook.is_some();
            if let (false, true, Some(hook)) = (joined, same_cgroup, self.hooked.get(&id)) {
                let stored = cx.tracker.update_container(&id, event.cgroup_id, |c| c.set_hook(hook.clone()));
                event.container = stored.unwrap_or_else(|| {
                    let mut c = (*event.container).clone();
                    c.set_hook(hook.clone());
                    Arc::new(c)
                });
            }
            if event.kind == EventKind::ContainerRemove && same_cgroup {
                self.hooked.remove(&id);
                self.hooked_cgroup.remove(&id);
            }
        }
    }
}

impl Transform for HookJoin {
    fn push(&mut self, cx: &mut Cx<'_>, input: &mut Vec<ContainerEvent>, out: &mut Vec<ContainerEvent>) {
        let mut passed = Vec::with_capacity(input.len());
        for event in input.drain(..) {
            let id = &event.container.id;
            if let Some(i) = self.awaiting_pid.iter().position(|(_, e)| e.container.id == *id) {
                passed.push(self.awaiting_pid.remove(i).1);
            }
            let pending_pid = self.hooked.get(id).is_some_and(|h| h.init_pid.is_none());
            if event.kind == EventKind::ContainerCreate && pending_pid {
                self.awaiting_pid.push((cx.now + INIT_PID_WAIT, event));
            } else {
                passed.push(event);
            }
        }
        self.join(cx, &mut passed);
        out.append(&mut passed);
    }

    fn tick(&mut self, cx: &mut Cx<'_>, out: &mut Vec<ContainerEvent>) {
        if self.awaiting_pid.is_empty() {
            return;
        }
        let (now, hooked) = (cx.now, &self.hooked);
        let over = |(due, e): &(Instant, ContainerEvent)| {
            *due <= now || hooked.get(&e.container.id).is_none_or(|h| h.init_pid.is_some())
        };
        let (released, still): (Vec<_>, Vec<_>) = self.awaiting_pid.drain(..).partition(over);
        self.awaiting_pid = still;
        let mut released: Vec<ContainerEvent> = released.into_iter().map(|(_, e)| e).collect();
        self.join(cx, &mut released);
        out.append(&mut released);
    }

    fn next_due(&self) -> Option<Instant> {
        self.awaiting_pid.iter().map(|(due, _)| *due).min()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use ctwatch::sources::CgroupChange;
    use ctwatch::state_dirs::PathOnly;
    use ctwatch::{Clock, Container, ManualClock, Runtime, SharedStore, Store, Tracker};

    use super::*;
    use crate::transforms::tracker::tests::cgroup;

    fn info(trusted: bool) -> Box<HookInfo> {
        Box::new(HookInfo {
            runtime_binary: "/usr/sbin/runc".into(),
            runtime_pid: 9,
            command: "create".into(),
            bundle: "/run/bundle".into(),
            pid_file: String::new(),
            state_root: String::new(),
            oci: None,
            oci_error: None,
            verdict: None,
            answer_us: 1,
            answered_by_deadline: false,
            init_pid: None,
            trusted,
            caller_uid: 0,
        })
    }

    fn precreate(id: &str, trusted: bool) -> HookMessage {
        HookMessage::Precreate {
            container: Container::new(id, Runtime::Docker),
            info: info(trusted),
            time: SystemTime::UNIX_EPOCH,
        }
    }

    struct Rig {
        clock: ManualClock,
        tracker: Tracker,
        join: HookJoin,
        store: SharedStore,
    }

    impl Rig {
        fn new() -> Rig {
            let clock = ManualClock::new();
            let store = SharedStore::new(Store::default());
            let tracker = Tracker::new(store.clone(), Box::new(PathOnly)).with_clock(Arc::new(clock.clone()));
            Rig { clock, tracker, join: HookJoin::new(false, Arc::new(Metrics::new())), store }
        }

        fn hook(&mut self, message: HookMessage) -> Vec<ContainerEvent> {
            let mut events = Vec::new();
            self.join.on_hook(&mut Cx::new(&mut self.tracker), message, &mut events);
            let mut out = Vec::new();
            self.join.push(&mut Cx::new(&mut self.tracker), &mut events, &mut out);
            out
        }

        fn cgroups(&mut self, change: CgroupChange, id: &str, cgroup_id: u64) -> Vec<ContainerEvent> {
            let mut events = Vec::new();
            self.tracker.apply(&[cgroup(change, cgroup_id, &format!("/docker/{id}"))], &mut events);
            let mut out = Vec::new();
            let mut cx = Cx::new(&mut self.tracker);
            self.join.tick(&mut cx, &mut out);
            self.join.push(&mut cx, &mut events, &mut out);
            out
        }

        fn tick(&mut self) -> Vec<ContainerEvent> {
            let mut out = Vec::new();
            self.join.tick(&mut Cx::new(&mut self.tracker), &mut out);
            out
        }
    }

    fn kinds(events: &[ContainerEvent]) -> Vec<EventKind> {
        events.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn a_hooked_create_waits_for_the_init_pid_and_carries_it_into_the_store() {
        let mut rig = Rig::new();
        let id = "a".repeat(64);
        assert_eq!(kinds(&rig.hook(precreate(&id, true))), [EventKind::ContainerPrecreate]);
        assert!(rig.cgroups(CgroupChange::Mkdir, &id, 5).is_empty(), "the create waits for the PID");
        assert_eq!(rig.join.next_due(), Some(rig.clock.now() + INIT_PID_WAIT));
        assert!(rig.hook(HookMessage::Started { id: id.clone(), init_pid: 42, cgroup: None }).is_empty());
        let out = rig.tick();
        assert_eq!(kinds(&out), [EventKind::ContainerCreate]);
        assert_eq!(out[0].container.hook.as_ref().unwrap().init_pid, Some(42));
        let stored = rig.store.read().get(&id).cloned().unwrap();
        assert_eq!(stored.hook.as_ref().unwrap().bundle, "/run/bundle", "the findings are in the store");
        assert_eq!(stored.hook.as_ref().unwrap().init_pid, Some(42));
        // The remove carries them too, and ends what was kept.
        let out = rig.cgroups(CgroupChange::Rmdir, &id, 5);
        assert_eq!(kinds(&out), [EventKind::ContainerRemove]);
        assert!(out[0].container.hook.is_some() && rig.join.pending() == 0);
    }

    #[test]
    fn without_a_pid_the_create_goes_out_at_the_deadline_and_before_a_later_event() {
        let mut rig = Rig::new();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        rig.hook(precreate(&a, true));
        rig.hook(precreate(&b, true));
        assert!(rig.cgroups(CgroupChange::Mkdir, &a, 5).is_empty());
        assert!(rig.cgroups(CgroupChange::Mkdir, &b, 6).is_empty());
        rig.clock.advance(INIT_PID_WAIT - Duration::from_millis(1));
        assert!(rig.tick().is_empty(), "not before the wait is over");
        // b's remove comes first: it releases b's create ahead of itself.
        let out = rig.cgroups(CgroupChange::Rmdir, &b, 6);
        assert_eq!(kinds(&out), [EventKind::ContainerCreate, EventKind::ContainerRemove]);
        assert!(out.iter().all(|e| e.container.id == b && e.container.hook.is_some()));
        rig.clock.advance(Duration::from_millis(1));
        let out = rig.tick();
        assert_eq!(kinds(&out), [EventKind::ContainerCreate]);
        assert_eq!(out[0].container.id, a);
        assert_eq!(out[0].container.hook.as_ref().unwrap().init_pid, None, "no PID: the create went without");
    }

    #[test]
    fn an_untrusted_callers_findings_are_never_joined() {
        let mut rig = Rig::new();
        let id = "c".repeat(64);
        let out = rig.hook(precreate(&id, false));
        assert_eq!(kinds(&out), [EventKind::ContainerPrecreate]);
        assert!(!out[0].container.hook.as_ref().unwrap().trusted);
        let out = rig.cgroups(CgroupChange::Mkdir, &id, 7);
        assert_eq!(kinds(&out), [EventKind::ContainerCreate], "no wait");
        assert!(out[0].container.hook.is_none() && rig.store.read().get(&id).unwrap().hook.is_none());
    }
}
