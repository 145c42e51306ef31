//! The hub: hands every published event to every subscriber, and keeps the
//! live containers as the published events describe them, so that a new
//! subscriber gets the current state and then exactly the events after it —
//! no gap, no repeat — because both happen under one lock.
//!
//! Each subscriber has a bounded buffer, in events and in bytes (at most
//! [`MAX_SUBSCRIBER_BUFFER`] events and [`MAX_SUBSCRIBER_BYTES`] bytes,
//! whatever it asks for). Publishing never waits: a subscriber whose buffer
//! is full is dropped (it learns why from [`Subscription::next`]) and the
//! others go on. A subscriber that goes away is not a drop: it leaves the
//! subscriber count at once.
//!
//! Each event is published once as a [`SharedEvent`]: every subscriber gets
//! the same allocation (a reference count, not a copy), and a sink that
//! encodes events (the gRPC Watch) encodes each one once, for all its
//! clients, with [`SharedEvent::encoded`].

use std::collections::BTreeMap;
use std::mem::size_of;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use ctwatch::hook::HookInfo;
use ctwatch::{Container, ContainerEvent, EventKind};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// The default number of events a subscriber may fall behind before it is dropped.
pub const DEFAULT_SUBSCRIBER_BUFFER: usize = 4096;

/// The most events a subscriber may fall behind; a larger request gets this many.
pub const MAX_SUBSCRIBER_BUFFER: usize = 65_536;

/// The most bytes of events (their approximate size in memory) a subscriber
/// may fall behind, whatever its buffer in events.
pub const MAX_SUBSCRIBER_BYTES: usize = 64 << 20;

/// Why a subscription ended early.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubscriptionError {
    /// The subscriber did not keep up: its buffer filled and it was dropped.
    #[error(
        "dropped: fell more than {buffer} events or {bytes} bytes behind; read faster (or ask for a larger \
         buffer, at most {MAX_SUBSCRIBER_BUFFER} events) and subscribe again: the current state comes first, so \
         nothing is lost but the events in between"
    )]
    Lagged {
        /// The buffer it had, in events.
        buffer: usize,
        /// The buffer it had, in bytes.
        bytes: usize,
    },
}

/// Distributes events; see the module documentation.
pub struct Hub {
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Inner {
    /// The last event published about each live container.
    view: BTreeMap<Arc<str>, ContainerEvent>,
    subscribers: Vec<Slot>,
    closed: bool,
}

/// One published event as every subscriber receives it (shared, not copied).
#[derive(Debug)]
pub struct SharedEvent {
    event: ContainerEvent,
    /// [`approx_event_bytes`] of `event`, counted against each subscriber's byte budget.
    size: usize,
    /// The event's encoding, made by the first subscriber that needs it.
    encoded: OnceLock<Bytes>,
}

impl SharedEvent {
    /// Wraps an event to publish.
    pub fn new(event: ContainerEvent) -> Self {
        SharedEvent { size: approx_event_bytes(&event), event, encoded: OnceLock::new() }
    }

    /// The event.
    pub fn event(&self) -> &ContainerEvent {
        &self.event
    }

    /// The event encoded by `encode`, which runs once per event whatever
    /// the number of subscribers asking (they share its bytes). Every caller
    /// must encode the same way: the first encoding is the one kept.
    pub fn encoded(&self, encode: impl FnOnce(&ContainerEvent) -> Bytes) -> Bytes {
        self.encoded.get_or_init(|| encode(&self.event)).clone()
    }
}

struct Slot {
    tx: mpsc::Sender<Arc<SharedEvent>>,
    shared: Arc<Shared>,
}

/// What a subscription and its slot in the hub both see.
#[derive(Default)]
struct Shared {
    /// Set when the hub dropped the subscriber for falling behind.
    lagged: AtomicBool,
    /// Bytes queued and not yet taken.
    queued_bytes: AtomicUsize,
    /// The most bytes that may be queued.
    max_bytes: usize,
}

/// The current containers, then every event after them.
pub struct Subscription {
    current: Vec<ContainerEvent>,
    rx: mpsc::Receiver<Arc<SharedEvent>>,
    shared: Arc<Shared>,
    buffer: usize,
    /// Counted in the subscriber gauge until dropped.
    counted: Option<Arc<Metrics>>,
}

/// About how many bytes an event holds in memory while queued (its
/// container and hook record counted whole, though they may be shared).
pub fn approx_event_bytes(event: &ContainerEvent) -> usize {
    let map = |m: &BTreeMap<String, String>| m.iter().map(|(k, v)| k.len() + v.len() + 64).sum::<usize>();
    let strings = |v: &[String]| v.iter().map(|s| s.len() + size_of::<String>()).sum::<usize>();
    let c = &event.container;
    let container = size_of::<Container>()
        + c.id.len()
        + c.cgroup_path.len()
        + c.image.len()
        + c.image_digest.len()
        + c.name.len()
        + c.pod.name.len()
        + c.pod.namespace.len()
        + c.pod.uid.len()
        + map(&c.labels)
        + map(&c.annotations);
    let hook = event.hook().map(|h| &**h).map_or(0, |h| {
        let oci = h.oci.as_ref().map_or(0, |o| {
            o.oci_version.len()
                + strings(&o.args)
                + o.cwd.len()
                + o.hostname.len()
                + o.root_path.len()
                + o.cgroups_path.len()
                + strings(&o.namespaces)
                + strings(&o.capabilities)
                + map(&o.annotations)
        });
        let verdict = h.verdict.as_ref().map_or(0, |v| v.mode.len() + v.rule.len() + v.reason.len());
        size_of::<HookInfo>()
            + h.runtime_binary.len()
            + h.command.len()
            + h.bundle.len()
            + h.pid_file.len()
            + h.state_root.len()
            + h.oci_error.as_ref().map_or(0, String::len)
            + oci
            + verdict
    });
    size_of::<SharedEvent>() + container + hook
}

impl Hub {
    /// An empty hub reporting to `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Hub { inner: Mutex::new(Inner::default()), metrics }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes events in order: updates the view, then offers each event to every subscriber.
    pub fn publish(&self, events: &[ContainerEvent]) {
        if events.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for event in events {
            self.metrics.event(event.kind);
            let id = event.container.id.as_str();
            match event.kind {
                EventKind::ContainerRemove => {
                    if let Some(old) = inner.view.remove(id) {
                        self.metrics.container_gone(old.container.runtime);
                        self.metrics.privilege_gone(&old.container);
                    }
                }
                EventKind::ContainerUpdate | EventKind::ContainerStart => {
                    if let Some(slot) = inner.view.get_mut(id) {
                        self.metrics.container_gone(slot.container.runtime);
                        self.metrics.container_seen(event.container.runtime);
                        self.metrics.privilege_gone(&slot.container);
                        self.metrics.privilege_seen(&event.container);
                        // Keep the kind that introduced it, with the new record.
                        let kind = slot.kind;
                        *slot = ContainerEvent { kind, ..event.clone() };
                    }
                }
                EventKind::ContainerCreate | EventKind::ExistingContainer => {
                    if let Some(old) = inner.view.insert(Arc::from(id), event.clone()) {
                        self.metrics.container_gone(old.container.runtime);
                        self.metrics.privilege_gone(&old.container);
                    }
                    self.metrics.container_seen(event.container.runtime);
                    self.metrics.privilege_seen(&event.container);
                }
                // Before the container exists: not part of the current state.
                EventKind::ContainerPrecreate | EventKind::ContainerPolicyViolation => {}
            }
        }
        if inner.subscribers.is_empty() {
            return;
        }
        let shared: Vec<Arc<SharedEvent>> = events.iter().map(|e| Arc::new(SharedEvent::new(e.clone()))).collect();
        let mut dropped = 0;
        inner.subscribers.retain(|slot| {
            for event in &shared {
                let size = event.size;
                let queued = slot.shared.queued_bytes.fetch_add(size, Ordering::AcqRel) + size;
                let result = if queued > slot.shared.max_bytes {
                    Err(mpsc::error::TrySendError::Full(event.clone()))
                } else {
                    slot.tx.try_send(event.clone())
                };
                match result {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        slot.shared.lagged.store(true, Ordering::Release);
                        dropped += 1;
                        return false;
                    }
                    // It went away (its subscription was dropped): not a drop.
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
        if dropped > 0 {
            self.metrics.subscribers_dropped(dropped);
            tracing::debug!(dropped, "subscribers too slow, dropped");
        }
    }

    /// Subscribes with room for `buffer` events (at least 1, at most
    /// [`MAX_SUBSCRIBER_BUFFER`]) and at most [`MAX_SUBSCRIBER_BYTES`] bytes.
    pub fn subscribe(&self, buffer: usize) -> Subscription {
        self.subscribe_bounded(buffer, MAX_SUBSCRIBER_BYTES)
    }

    /// [`Hub::subscribe`] with room for at most `bytes` bytes of events
    /// (at most [`MAX_SUBSCRIBER_BYTES`]).
    pub fn subscribe_bounded(&self, buffer: usize, bytes: usize) -> Subscription {
        let buffer = buffer.clamp(1, MAX_SUBSCRIBER_BUFFER);
        let bytes = bytes.clamp(1, MAX_SUBSCRIBER_BYTES);
        let (tx, rx) = mpsc::channel(buffer);
        let shared = Arc::new(Shared { max_bytes: bytes, ..Shared::default() });
        let mut inner = self.lock();
        let current = inner.view.values().cloned().collect();
        let mut counted = None;
        if !inner.closed {
            inner.subscribers.push(Slot { tx, shared: shared.clone() });
            self.metrics.subscriber_joined();
            counted = Some(self.metrics.clone());
        }
        Subscription { current, rx, shared, buffer, counted }
    }

    /// Ends every subscription (the agent stopped); later ones get the last state and no events.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.subscribers.clear();
    }

    /// How many live containers the published events describe.
    pub fn live_count(&self) -> usize {
        self.lock().view.len()
    }
}

impl Subscription {
    /// The containers live when the subscription began, each as the last
    /// event published about it (its create, existing or latest update).
    pub fn current(&self) -> &[ContainerEvent] {
        &self.current
    }

    /// Takes [`Subscription::current`] out, leaving it empty.
    pub fn take_current(&mut self) -> Vec<ContainerEvent> {
        std::mem::take(&mut self.current)
    }

    /// The next event; `Ok(None)` once the agent has stopped. Once the
    /// subscriber has been dropped for falling behind, the error comes at
    /// once (the events still queued are let go).
    pub async fn next(&mut self) -> Result<Option<ContainerEvent>, SubscriptionError> {
        Ok(self.next_shared().await?.map(|e| e.event.clone()))
    }

    /// [`Subscription::next`] as the hub shares it (to encode it once for every subscriber).
    pub async fn next_shared(&mut self) -> Result<Option<Arc<SharedEvent>>, SubscriptionError> {
        if self.is_lagged() {
            return self.outcome(None);
        }
        let event = self.rx.recv().await;
        self.outcome(event)
    }

    /// [`Subscription::next_shared`] for a hand-written future or stream:
    /// `Pending` (with `cx` woken later) while no event is queued.
    pub fn poll_next_shared(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<Option<Arc<SharedEvent>>, SubscriptionError>> {
        if self.is_lagged() {
            return std::task::Poll::Ready(self.outcome(None));
        }
        self.rx.poll_recv(cx).map(|event| self.outcome(event))
    }

    /// [`Subscription::next`] for code outside an async runtime (it blocks the thread).
    pub fn blocking_next(&mut self) -> Result<Option<ContainerEvent>, SubscriptionError> {
        if self.is_lagged() {
            return self.outcome(None).map(|_| None);
        }
        let event = self.rx.blocking_recv();
        Ok(self.outcome(event)?.map(|e| e.event.clone()))
    }

    /// The next event if one is already queued (never blocks; the end of the
    /// subscription is reported by the next [`Subscription::blocking_next`]).
    pub fn try_next(&mut self) -> Option<ContainerEvent> {
        self.try_next_shared().map(|e| e.event.clone())
    }

    /// [`Subscription::try_next`] as the hub shares it.
    pub fn try_next_shared(&mut self) -> Option<Arc<SharedEvent>> {
        let event = self.rx.try_recv().ok()?;
        self.shared.queued_bytes.fetch_sub(event.size, Ordering::AcqRel);
        Some(event)
    }

    /// How many events are queued for this subscriber, not yet taken.
    pub fn queued(&self) -> usize {
        self.rx.len()
    }

    /// True once the subscriber has been dropped for falling behind.
    pub fn is_lagged(&self) -> bool {
        self.shared.lagged.load(Ordering::Acquire)
    }

    fn outcome(&self, event: Option<Arc<SharedEvent>>) -> Result<Option<Arc<SharedEvent>>, SubscriptionError> {
        match event {
            Some(event) => {
                self.shared.queued_bytes.fetch_sub(event.size, Ordering::AcqRel);
                Ok(Some(event))
            }
            None if self.is_lagged() => {
                Err(SubscriptionError::Lagged { buffer: self.buffer, bytes: self.shared.max_bytes })
            }
            None => Ok(None),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(metrics) = self.counted.take() {
            metrics.subscriber_left();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use ctwatch::Runtime;

    use super::*;

    fn create(i: usize) -> ContainerEvent {
        ContainerEvent {
            time: SystemTime::now(),
            kind: EventKind::ContainerCreate,
            cgroup_id: i as u64,
            container: Arc::new(Container::new(format!("{i:064x}"), Runtime::Docker)),
            kernel_time: None,
            enriched: None,
            seq: 0,
            late: false,
        }
    }

    fn line(metrics: &Metrics, name: &str) -> String {
        metrics
            .encode(crate::metrics::Format::Text)
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn a_huge_buffer_is_clamped_and_a_full_one_drops_the_subscriber() {
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(metrics.clone());
        let mut sub = hub.subscribe(usize::MAX);
        let events: Vec<_> = (0..MAX_SUBSCRIBER_BUFFER).map(create).collect();
        hub.publish(&events);
        assert!(!sub.is_lagged());
        hub.publish(&[create(MAX_SUBSCRIBER_BUFFER)]);
        assert!(sub.is_lagged());
        let err = sub.blocking_next().unwrap_err();
        assert_eq!(err, SubscriptionError::Lagged { buffer: MAX_SUBSCRIBER_BUFFER, bytes: MAX_SUBSCRIBER_BYTES });
        assert_eq!(line(&metrics, "ctwatch_subscribers_dropped_total"), "ctwatch_subscribers_dropped_total 1");
    }

    #[test]
    fn the_byte_budget_drops_a_subscriber_before_its_event_buffer_fills() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let size = approx_event_bytes(&create(0));
        let mut sub = hub.subscribe_bounded(1000, 10 * size);
        hub.publish(&(0..10).map(create).collect::<Vec<_>>());
        assert!(!sub.is_lagged());
        // Reading frees room.
        assert!(sub.try_next().is_some());
        hub.publish(&[create(10)]);
        assert!(!sub.is_lagged());
        hub.publish(&[create(11)]);
        assert!(sub.is_lagged());
        let message = sub.blocking_next().unwrap_err().to_string();
        assert!(message.contains(&format!("{} bytes", 10 * size)) && message.contains("subscribe again"), "{message}");
    }

    #[test]
    fn a_hang_up_is_no_drop_and_leaves_the_gauge_at_once() {
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(metrics.clone());
        let kept = hub.subscribe(8);
        let gone = hub.subscribe(8);
        assert_eq!(line(&metrics, "ctwatch_subscribers "), "ctwatch_subscribers 2");
        drop(gone);
        assert_eq!(line(&metrics, "ctwatch_subscribers "), "ctwatch_subscribers 1");
        hub.publish(&[create(1)]);
        assert_eq!(line(&metrics, "ctwatch_subscribers_dropped_total"), "ctwatch_subscribers_dropped_total 0");
        assert_eq!(hub.lock().subscribers.len(), 1);
        drop(kept);
        assert_eq!(line(&metrics, "ctwatch_subscribers "), "ctwatch_subscribers 0");
    }

    #[test]
    fn every_subscriber_gets_the_same_event_encoded_once() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let mut subs: Vec<Subscription> = (0..10).map(|_| hub.subscribe(8)).collect();
        hub.publish(&[create(7)]);
        let encodings = AtomicUsize::new(0);
        let mut seen = Vec::new();
        for sub in &mut subs {
            let shared = sub.try_next_shared().expect("the event");
            assert_eq!(shared.event().cgroup_id, 7);
            let bytes = shared.encoded(|e| {
                encodings.fetch_add(1, Ordering::Relaxed);
                Bytes::from(e.container.id.clone())
            });
            seen.push((Arc::as_ptr(&shared), bytes));
        }
        assert_eq!(encodings.load(Ordering::Relaxed), 1, "encoded once for ten subscribers");
        assert!(seen.iter().all(|(p, b)| *p == seen[0].0 && b == &Bytes::from(format!("{:064x}", 7))));
        // The byte budget was given back as each took it.
        assert!(subs.iter().all(|s| s.shared.queued_bytes.load(Ordering::Acquire) == 0));
    }
}
