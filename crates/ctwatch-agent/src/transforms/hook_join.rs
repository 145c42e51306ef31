//! The hook join: what the runtime hook learned about a container (bundle,
//! OCI config, init PID, caller, verdict) becomes part of the container —
//! in the store (so `get`, `ls`, `List` and Watch's current state show it)
//! and in its events.
//!
//! A precreate goes out as it is (with a policy violation after it when a
//! rule matched). A hooked container's create is never held here: it goes
//! out with what the hook learned before the mkdir (the OCI config; and the
//! name, image and pod the hook found, where enrichment has not filled
//! them); the init PID comes later, in `container_start` (see
//! [`super::lifecycle`]). An untrusted caller's findings are its own event
//! and nothing more: never kept, never joined.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctwatch::hook::{HookInfo, HookMessage};
use ctwatch::{Container, ContainerEvent, EventKind, PodInfo};

use super::{Cx, Transform};
use crate::metrics::Metrics;

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
    /// The name, image, digest and pod the hook found for each hooked container.
    found: HashMap<String, Found>,
    metrics: Arc<Metrics>,
}

/// What the hook found of a container's identity before its create.
struct Found {
    name: String,
    image: String,
    image_digest: String,
    pod: PodInfo,
}

impl Found {
    /// Fills what enrichment left empty.
    fn fill(&self, c: &mut Container) {
        if c.name.is_empty() {
            c.name.clone_from(&self.name);
        }
        if c.image.is_empty() {
            c.image.clone_from(&self.image);
        }
        if c.image_digest.is_empty() {
            c.image_digest.clone_from(&self.image_digest);
        }
        if c.pod.name.is_empty() && c.pod.namespace.is_empty() && !self.pod.name.is_empty() {
            let uid = std::mem::take(&mut c.pod.uid);
            c.pod = self.pod.clone();
            if !uid.is_empty() {
                c.pod.uid = uid;
            }
        }
    }
}

impl HookJoin {
    /// An empty join; `hook_only` when the hook is the only live source.
    pub fn new(hook_only: bool, metrics: Arc<Metrics>) -> Self {
        HookJoin { hook_only, hooked: HashMap::new(), hooked_cgroup: HashMap::new(), found: HashMap::new(), metrics }
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
                container.security = info.security.clone();
                let found = Found {
                    name: container.name.clone(),
                    image: container.image.clone(),
                    image_digest: container.image_digest.clone(),
                    pod: container.pod.clone(),
                };
                let event = ContainerEvent {
                    time,
                    kind: EventKind::ContainerPrecreate,
                    cgroup_id: 0,
                    container: Arc::new(*container),
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
                    self.found.insert(id.clone(), found);
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
                self.found.remove(&id);
            }
        }
    }

    /// How many containers' findings are kept.
    pub fn pending(&self) -> usize {
        self.hooked.len()
    }

    /// Whether the hook's findings on container `id` are kept (a trusted caller's create, not refused).
    pub fn is_hooked(&self, id: &str) -> bool {
        self.hooked.contains_key(id)
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
                let found = self.found.get(&id);
                let update = |c: &mut Container| {
                    c.set_hook(hook.clone());
                    if let Some(found) = found {
                        found.fill(c);
                    }
                };
                let stored = cx.tracker.update_container(&id, event.cgroup_id, update);
                event.container = stored.unwrap_or_else(|| {
                    let mut c = (*event.container).clone();
                    update(&mut c);
                    Arc::new(c)
                });
            }
            if event.kind == EventKind::ContainerRemove && same_cgroup {
                self.hooked.remove(&id);
                self.hooked_cgroup.remove(&id);
                self.found.remove(&id);
            }
        }
    }
}

impl Transform for HookJoin {
    fn push(&mut self, cx: &mut Cx<'_>, input: &mut Vec<ContainerEvent>, out: &mut Vec<ContainerEvent>) {
        self.join(cx, input);
        out.append(input);
    }

    fn tick(&mut self, _cx: &mut Cx<'_>, _out: &mut Vec<ContainerEvent>) {}

    fn next_due(&self) -> Option<Instant> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use ctwatch::sources::CgroupChange;
    use ctwatch::state_dirs::PathOnly;
    use ctwatch::{Container, ManualClock, Runtime, SharedStore, Store, Tracker};

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
            security: None,
        })
    }

    fn precreate(id: &str, trusted: bool) -> HookMessage {
        HookMessage::Precreate {
            container: Box::new(Container::new(id, Runtime::Docker)),
            info: info(trusted),
            time: SystemTime::UNIX_EPOCH,
        }
    }

    struct Rig {
        tracker: Tracker,
        join: HookJoin,
        store: SharedStore,
    }

    impl Rig {
        fn new() -> Rig {
            let clock = ManualClock::new();
            let store = SharedStore::new(Store::default());
            let tracker = Tracker::new(store.clone(), Box::new(PathOnly)).with_clock(Arc::new(clock));
            Rig { tracker, join: HookJoin::new(false, Arc::new(Metrics::new())), store }
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
    fn a_hooked_create_goes_out_at_once_with_what_the_hook_found() {
        let mut rig = Rig::new();
        let id = "a".repeat(64);
        let mut pre = precreate(&id, true);
        if let HookMessage::Precreate { container, .. } = &mut pre {
            container.name = "web".into();
            container.image = "busybox:1".into();
        }
        assert_eq!(kinds(&rig.hook(pre)), [EventKind::ContainerPrecreate]);
        let out = rig.cgroups(CgroupChange::Mkdir, &id, 5);
        assert_eq!(kinds(&out), [EventKind::ContainerCreate], "not held for the PID");
        assert_eq!(rig.join.next_due(), None);
        let c = &out[0].container;
        assert_eq!((c.name.as_str(), c.image.as_str()), ("web", "busybox:1"), "the hook's identity fills the create");
        assert_eq!(c.hook.as_ref().unwrap().init_pid, None);
        assert!(rig.hook(HookMessage::Started { id: id.clone(), init_pid: 42, cgroup: None }).is_empty());
        let stored = rig.store.read().get(&id).cloned().unwrap();
        assert_eq!(stored.hook.as_ref().unwrap().bundle, "/run/bundle", "the findings are in the store");
        assert_eq!(stored.hook.as_ref().unwrap().init_pid, Some(42));
        assert_eq!(stored.name, "web");
        // The remove carries them too, and ends what was kept.
        let out = rig.cgroups(CgroupChange::Rmdir, &id, 5);
        assert_eq!(kinds(&out), [EventKind::ContainerRemove]);
        assert!(out[0].container.hook.is_some() && rig.join.pending() == 0);
        assert!(rig.tick().is_empty());
    }

    #[test]
    fn the_hooks_security_profile_is_the_containers_from_the_precreate_on() {
        let mut rig = Rig::new();
        let id = "d".repeat(64);
        let profile = ctwatch::SecurityProfile::from_config_bytes(
            br#"{"process":{"capabilities":{"bounding":["CAP_SYS_ADMIN"]}},"linux":{"namespaces":[{"type":"mount"}]}}"#,
        )
        .unwrap();
        let mut info = info(true);
        info.security = Some(Arc::new(profile.clone()));
        let message = HookMessage::Precreate {
            container: Box::new(Container::new(&id, Runtime::Docker)),
            info,
            time: SystemTime::UNIX_EPOCH,
        };
        let out = rig.hook(message);
        assert_eq!(out[0].container.security.as_deref(), Some(&profile), "the precreate carries it");
        rig.hook(HookMessage::Started { id: id.clone(), init_pid: 42, cgroup: None });
        let out = rig.cgroups(CgroupChange::Mkdir, &id, 8);
        assert_eq!(kinds(&out), [EventKind::ContainerCreate], "the PID is known: no wait");
        assert!(out[0].container.security.as_deref().is_some_and(|p| p.matches_filter("host_ns", "pid").unwrap()));
        let json = serde_json::to_value(&out[0]).unwrap();
        assert_eq!(json["args"]["security"]["capabilities_added"][0], "CAP_SYS_ADMIN");
        assert!(json["hook"].get("security").is_none(), "printed once, in args");
        assert_eq!(rig.store.read().get(&id).unwrap().security.as_deref(), Some(&profile), "and the store's");
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
