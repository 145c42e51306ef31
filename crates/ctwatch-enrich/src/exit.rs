//! How a container ended, asked of the runtimes (the sources that work
//! without eBPF): Docker's and Podman's inspect, containerd's task, the CRI's
//! container status, and the runtimes' exit events for containers removed at
//! once (`docker run --rm`, `ctr run --rm`), kept in a bounded [`ExitCache`].
//!
//! Conventions, per runtime:
//! - A process's exit is a wait status; runtimes hand it on as one number:
//!   the exit code, or `128 + n` when signal `n` killed the init (runc's
//!   shims, hence containerd, Docker, Podman and the CRI all follow this
//!   shell convention). [`ExitInfo::from_runtime_status`] maps `129..=192`
//!   to `exit_signal` and leaves `exit_code` unknown: a process that calls
//!   `exit(137)` itself is reported as killed by signal 9, which no runtime
//!   can tell apart either.
//! - `oom_killed` is the runtime's own flag (Docker `State.OOMKilled`, CRI
//!   reason `OOMKilled`, containerd's `/tasks/oom` event; Podman 4.3 on
//!   cgroups v1 says `false` even after an OOM kill); `oom_kills` (kills
//!   anywhere in the container) comes from the cgroup's counters, see
//!   [`crate::oom`].
//! - Times the runtime did not set (Docker's `0001-01-01T00:00:00Z`, a zero
//!   protobuf timestamp) are `None`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What is known of how a container ended; `None` is "not known", never a guess.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitInfo {
    /// The init's exit code, when it exited (not when a signal killed it).
    pub exit_code: Option<i32>,
    /// The signal that killed the init.
    pub exit_signal: Option<i32>,
    /// The runtime's OOM flag: Docker's `State.OOMKilled`, the CRI's reason
    /// `OOMKilled`, containerd's `/tasks/oom` event. These runtimes raise it
    /// on an OOM kill in the container's cgroup while it runs (in practice
    /// the init, the largest process, in most single-process containers);
    /// eBPF's `oom/mark_victim` can tell the init apart. `None` when the
    /// runtime has no such flag (containerd's task record).
    pub oom_killed: Option<bool>,
    /// OOM kills inside the container's cgroup during its life.
    pub oom_kills: Option<u64>,
    /// When the init started.
    pub started_at: Option<SystemTime>,
    /// When the init ended.
    pub finished_at: Option<SystemTime>,
}

/// Highest signal number (`SIGRTMAX` on Linux).
const MAX_SIGNAL: u32 = 64;

impl ExitInfo {
    /// The exit code or signal from a runtime's single exit number, by the
    /// `128 + n` convention (see the module docs); negative or absurd values
    /// give nothing.
    pub fn from_runtime_status(status: i64) -> ExitInfo {
        let mut info = ExitInfo::default();
        match status {
            0..=128 => info.exit_code = Some(status as i32),
            s if s > 128 && s <= (128 + MAX_SIGNAL) as i64 => info.exit_signal = Some((s - 128) as i32),
            s if (0..=255).contains(&s) => info.exit_code = Some(s as i32),
            _ => {}
        }
        info
    }

    /// True when nothing is known.
    pub fn is_empty(&self) -> bool {
        *self == ExitInfo::default()
    }

    /// Takes every field `other` knows, keeping ours where it knows nothing;
    /// `oom_killed: true` from either side wins, and the larger `oom_kills`
    /// (counters only grow).
    pub fn merge(&mut self, other: ExitInfo) {
        if other.exit_code.is_some() || other.exit_signal.is_some() {
            self.exit_code = other.exit_code;
            self.exit_signal = other.exit_signal;
        }
        self.oom_killed = match (self.oom_killed, other.oom_killed) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (a, b) => b.or(a),
        };
        self.oom_kills = self.oom_kills.max(other.oom_kills);
        self.started_at = other.started_at.or(self.started_at);
        self.finished_at = other.finished_at.or(self.finished_at);
    }
}

/// A time in RFC 3339 (as Docker and Podman print them); `None` for Go's
/// zero time (year 1), anything before 1970, or text that is no time.
pub fn parse_runtime_time(text: &str) -> Option<SystemTime> {
    let t = chrono::DateTime::parse_from_rfc3339(text.trim()).ok()?;
    let secs = u64::try_from(t.timestamp()).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, t.timestamp_subsec_nanos()))
}

/// A protobuf timestamp; `None` when unset or zero.
pub fn from_timestamp(t: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    let t = t?;
    let secs = u64::try_from(t.seconds).ok().filter(|s| *s > 0)?;
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// A CRI nanosecond time; `None` when zero.
pub fn from_unix_nanos(ns: i64) -> Option<SystemTime> {
    let ns = u64::try_from(ns).ok().filter(|n| *n > 0)?;
    Some(UNIX_EPOCH + Duration::from_nanos(ns))
}

/// Exits seen in the runtimes' event streams, by container ID, kept until
/// taken: a container removed at once (`--rm`) can no longer be inspected,
/// but its `die` / `/tasks/exit` event said how it ended. Bounded: when
/// full, the oldest entry goes and is counted in [`ExitCache::evicted`].
#[derive(Debug)]
pub struct ExitCache {
    capacity: usize,
    inner: Mutex<CacheInner>,
    evicted: AtomicU64,
}

#[derive(Debug, Default)]
struct CacheInner {
    entries: HashMap<String, ExitInfo>,
    order: VecDeque<String>,
}

impl ExitCache {
    /// A cache of at most `capacity` containers (at least 1).
    pub fn new(capacity: usize) -> Self {
        ExitCache { capacity: capacity.max(1), inner: Mutex::new(CacheInner::default()), evicted: AtomicU64::new(0) }
    }

    /// Records what an event said of container `id` (merged with what is there).
    pub fn record(&self, id: &str, info: ExitInfo) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = inner.entries.get_mut(id) {
            known.merge(info);
            return;
        }
        while inner.entries.len() >= self.capacity {
            let Some(oldest) = inner.order.pop_front() else { break };
            if inner.entries.remove(&oldest).is_some() {
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        inner.entries.insert(id.to_string(), info);
        inner.order.push_back(id.to_string());
    }

    /// What was recorded for `id`, removed from the cache.
    pub fn take(&self, id: &str) -> Option<ExitInfo> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let found = inner.entries.remove(id)?;
        inner.order.retain(|k| k != id);
        Some(found)
    }

    /// What was recorded for `id`, left in the cache.
    pub fn get(&self, id: &str) -> Option<ExitInfo> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).entries.get(id).copied()
    }

    /// Entries now held.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries dropped because the cache was full.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_status_numbers_follow_the_128_plus_n_convention() {
        assert_eq!(ExitInfo::from_runtime_status(0).exit_code, Some(0));
        assert_eq!(ExitInfo::from_runtime_status(3).exit_code, Some(3));
        let killed = ExitInfo::from_runtime_status(137);
        assert_eq!((killed.exit_code, killed.exit_signal), (None, Some(9)));
        assert_eq!(ExitInfo::from_runtime_status(143).exit_signal, Some(15));
        assert_eq!(ExitInfo::from_runtime_status(255).exit_code, Some(255));
        assert!(ExitInfo::from_runtime_status(-1).is_empty());
        assert!(ExitInfo::from_runtime_status(1 << 40).is_empty());
    }

    #[test]
    fn merge_keeps_what_is_known_and_any_oom() {
        let mut a = ExitInfo { exit_code: Some(3), oom_killed: Some(true), oom_kills: Some(2), ..ExitInfo::default() };
        a.merge(ExitInfo { oom_killed: Some(false), oom_kills: Some(1), ..ExitInfo::default() });
        assert_eq!((a.exit_code, a.oom_killed, a.oom_kills), (Some(3), Some(true), Some(2)));
        a.merge(ExitInfo { exit_signal: Some(9), ..ExitInfo::default() });
        assert_eq!((a.exit_code, a.exit_signal), (None, Some(9)), "code and signal come from one source");
    }

    #[test]
    fn times_unset_by_the_runtime_are_none() {
        assert_eq!(parse_runtime_time("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_runtime_time("yesterday"), None);
        let t = parse_runtime_time("2026-12-01T00:54:08.123456789Z").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap(), Duration::new(1_796_086_448, 123_456_789));
        assert_eq!(parse_runtime_time("2026-12-01T01:54:08.123456789+01:00"), Some(t), "offsets");
        assert_eq!(from_timestamp(Some(&prost_types::Timestamp { seconds: 0, nanos: 0 })), None);
        assert_eq!(from_unix_nanos(0), None);
        assert_eq!(from_unix_nanos(1_500_000_000), Some(UNIX_EPOCH + Duration::from_millis(1500)));
    }

    #[test]
    fn the_cache_is_bounded_and_counts_what_it_drops() {
        let cache = ExitCache::new(2);
        for id in ["a", "b", "c"] {
            cache.record(id, ExitInfo::from_runtime_status(1));
        }
        assert_eq!((cache.len(), cache.evicted()), (2, 1));
        assert_eq!(cache.get("a"), None, "the oldest went");
        cache.record("b", ExitInfo { oom_killed: Some(true), ..ExitInfo::default() });
        let b = cache.take("b").unwrap();
        assert_eq!((b.exit_code, b.oom_killed), (Some(1), Some(true)), "merged");
        assert_eq!(cache.take("b"), None);
        cache.record("d", ExitInfo::default());
        cache.record("e", ExitInfo::default());
        assert_eq!(cache.evicted(), 2, "b's stale place in the order is not counted");
    }
}
