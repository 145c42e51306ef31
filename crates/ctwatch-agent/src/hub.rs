//! The hub: hands every published event to every subscriber, and keeps the
//! live containers as the published events describe them, so that a new
//! subscriber gets the current state and then exactly the events after it —
//! no gap, no repeat — because both happen under one lock.
//!
//! Each subscriber has a bounded buffer. Publishing never waits: a
//! subscriber whose buffer is full is dropped (it learns why from
//! [`Subscription::next`]) and the others go on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ctwatch::{ContainerEvent, EventKind};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// The default number of events a subscriber may fall behind before it is dropped.
pub const DEFAULT_SUBSCRIBER_BUFFER: usize = 4096;

/// The largest buffer a subscriber may ask for (effectively unbounded).
pub const MAX_SUBSCRIBER_BUFFER: usize = usize::MAX >> 4;

/// Why a subscription ended early.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubscriptionError {
    /// The subscriber did not keep up: its buffer filled and it was dropped.
    #[error("dropped: fell more than {buffer} events behind (read faster, or ask for a larger buffer)")]
    Lagged {
        /// The buffer it had.
        buffer: usize,
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

struct Slot {
    tx: mpsc::Sender<ContainerEvent>,
    lagged: Arc<AtomicBool>,
}

/// The current containers, then every event after them.
pub struct Subscription {
    current: Vec<ContainerEvent>,
    rx: mpsc::Receiver<ContainerEvent>,
    lagged: Arc<AtomicBool>,
    buffer: usize,
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
                    }
                }
                EventKind::ContainerUpdate => {
                    if let Some(slot) = inner.view.get_mut(id) {
                        self.metrics.container_gone(slot.container.runtime);
                        self.metrics.container_seen(event.container.runtime);
                        // Keep the kind that introduced it, with the new record.
                        let kind = slot.kind;
                        *slot = ContainerEvent { kind, ..event.clone() };
                    }
                }
                EventKind::ContainerCreate | EventKind::ExistingContainer => {
                    if let Some(old) = inner.view.insert(Arc::from(id), event.clone()) {
                        self.metrics.container_gone(old.container.runtime);
                    }
                    self.metrics.container_seen(event.container.runtime);
                }
                // Before the container exists: not part of the current state.
                EventKind::ContainerPrecreate | EventKind::ContainerPolicyViolation => {}
            }
        }
        let before = inner.subscribers.len();
        inner.subscribers.retain(|slot| {
            for event in events {
                match slot.tx.try_send(event.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        slot.lagged.store(true, Ordering::Release);
                        return false;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
        let dropped = before - inner.subscribers.len();
        if dropped > 0 {
            self.metrics.subscribers_dropped(dropped);
            tracing::debug!(dropped, "subscribers gone or too slow");
        }
        self.metrics.set_subscribers(inner.subscribers.len());
    }

    /// Subscribes with room for `buffer` events (at least 1, at most [`MAX_SUBSCRIBER_BUFFER`]).
    pub fn subscribe(&self, buffer: usize) -> Subscription {
        let buffer = buffer.clamp(1, MAX_SUBSCRIBER_BUFFER);
        let (tx, rx) = mpsc::channel(buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        let mut inner = self.lock();
        let current = inner.view.values().cloned().collect();
        if !inner.closed {
            inner.subscribers.push(Slot { tx, lagged: lagged.clone() });
            self.metrics.set_subscribers(inner.subscribers.len());
        }
        Subscription { current, rx, lagged, buffer }
    }

    /// Ends every subscription (the agent stopped); later ones get the last state and no events.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.subscribers.clear();
        self.metrics.set_subscribers(0);
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

    /// The next event; `Ok(None)` once the agent has stopped.
    pub async fn next(&mut self) -> Result<Option<ContainerEvent>, SubscriptionError> {
        let event = self.rx.recv().await;
        self.outcome(event)
    }

    /// [`Subscription::next`] for code outside an async runtime (it blocks the thread).
    pub fn blocking_next(&mut self) -> Result<Option<ContainerEvent>, SubscriptionError> {
        let event = self.rx.blocking_recv();
        self.outcome(event)
    }

    /// The next event if one is already queued (never blocks; the end of the
    /// subscription is reported by the next [`Subscription::blocking_next`]).
    pub fn try_next(&mut self) -> Option<ContainerEvent> {
        self.rx.try_recv().ok()
    }

    /// True once the subscriber has been dropped for falling behind.
    pub fn is_lagged(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }

    fn outcome(&self, event: Option<ContainerEvent>) -> Result<Option<ContainerEvent>, SubscriptionError> {
        match event {
            Some(event) => Ok(Some(event)),
            None if self.lagged.load(Ordering::Acquire) => Err(SubscriptionError::Lagged { buffer: self.buffer }),
            None => Ok(None),
        }
    }
}
