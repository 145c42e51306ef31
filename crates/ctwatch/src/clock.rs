//! The clock the tracker and the agent's transforms read, injected so that
//! grace periods, deadlines and waits are tested without sleeping.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Monotonic time for deadlines, wall time for what events say.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, for deadlines and grace periods.
    fn now(&self) -> Instant;
    /// Now, as printed in events.
    fn wall(&self) -> SystemTime;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told (for tests).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<(Instant, SystemTime)>>);

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock(Arc::new(Mutex::new((Instant::now(), SystemTime::now()))))
    }
}

impl ManualClock {
    /// A clock at the real now, standing still.
    pub fn new() -> Self {
        ManualClock::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        t.0 += by;
        t.1 += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    fn wall(&self) -> SystemTime {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

/// The real clock, shared.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}
