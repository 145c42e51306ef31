//! Watch from the journal: replay after a seq (or from a time), then the live
//! tail, from the same log ([`ctwatch_journal::Journal::follow`]), so the seam
//! has no gap and no repeat. Events the journal kept are its JSON; they are
//! turned back into `Event` messages here (the runtime hook's findings,
//! `Event.hook`, are not replayed).

use std::collections::HashMap;
use std::sync::Arc;

use ctwatch_journal::{Followed, Journal, JournalError, Record};
use serde_json::Value;
use tonic::Status;
use tracing::debug;

use crate::pb;
use crate::pb::watch_response::Item;
use crate::watch::EncodedMessage;

/// Records read from the journal at a time.
const BATCH: usize = 512;
/// Messages queued for one replaying client (the reader waits for room).
const QUEUE: usize = 1024;

/// Where a replay starts and ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayRange {
    /// Replay the events after this seq.
    pub after_seq: u64,
    /// End after the event with this seq (0: never).
    pub until_seq: u64,
    /// End at the first event after this time (ns since the epoch).
    pub until_ns: Option<i64>,
}

impl ReplayRange {
    /// The range a Watch request asks for, or `None` if it asks for no replay.
    pub fn of(journal: &Journal, r: &pb::WatchRequest) -> Result<Option<ReplayRange>, Status> {
        let after_seq = match (r.after_seq, r.since_unix_nano) {
            (Some(_), Some(_)) => return Err(Status::invalid_argument("give after_seq or since_unix_nano, not both")),
            (Some(seq), None) => seq,
            (None, Some(t)) => match journal.find_by_time(t) {
                Ok(Some(seq)) => seq - 1,
                // Every event kept is older: start at the tail.
                Ok(None) => journal.last_seq(),
                Err(e) => return Err(Status::unavailable(format!("journal: {e}"))),
            },
            (None, None) => return Ok(None),
        };
        Ok(Some(ReplayRange { after_seq, until_seq: r.until_seq, until_ns: r.until_unix_nano }))
    }
}

/// The messages of a replay: a `gap` first if retention dropped events after
/// `after_seq`, then every event from the journal, then the live ones as they
/// are appended, until the range ends, the journal closes or the client goes.
pub fn replay(
    journal: Arc<Journal>,
    range: ReplayRange,
) -> tokio::sync::mpsc::Receiver<Result<EncodedMessage, Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    tokio::spawn(async move {
        let mut follower = journal.follow(range.after_seq);
        loop {
            let next = tokio::select! {
                next = follower.next(BATCH) => next,
                _ = tx.closed() => return,
            };
            let records = match next {
                Ok(Followed::Records(records)) => records,
                Ok(Followed::Gap { after_seq, oldest_seq }) => {
                    let gap = pb::WatchResponse { item: Some(Item::Gap(pb::Gap { after_seq, oldest_seq })) };
                    if tx.send(Ok(EncodedMessage::of(&gap))).await.is_err() {
                        return;
                    }
                    continue;
                }
                Ok(_) => continue,
                Err(JournalError::Closed) => return,
                Err(e) => {
                    let _ = tx.send(Err(Status::unavailable(format!("journal: {e}")))).await;
                    return;
                }
            };
            for record in records {
                if range.until_ns.is_some_and(|t| record.time_ns > t) {
                    return;
                }
                match event_from_record(&record) {
                    Some(event) => {
                        let message = pb::WatchResponse { item: Some(Item::Event(event)) };
                        if tx.send(Ok(EncodedMessage::of(&message))).await.is_err() {
                            return;
                        }
                    }
                    None => debug!(seq = record.seq, "a journal record that is not an event; skipped"),
                }
                if range.until_seq != 0 && record.seq >= range.until_seq {
                    return;
                }
            }
        }
    });
    rx
}

fn str_of(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn time_of(v: &Value, key: &str) -> Option<i64> {
    let s = v.get(key)?.as_str()?;
    chrono::DateTime::parse_from_rfc3339(s).ok()?.timestamp_nanos_opt()
}

/// A journaled event (its JSON) as an `Event` message, its seq the record's,
/// with how the container started and ended where the event said it;
/// `None` if the record is not an event's JSON.
pub fn event_from_record(record: &Record) -> Option<pb::Event> {
    let v: Value = serde_json::from_slice(&record.payload).ok()?;
    let event = v.get("event")?.as_str()?.to_string();
    let args = v.get("args").cloned().unwrap_or(Value::Null);
    let labels: HashMap<String, String> = args
        .get("labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default();
    let cgroup_id = v.get("cgroup_id").and_then(Value::as_u64).unwrap_or_default();
    let container = pb::Container {
        container_id: str_of(&args, "container_id"),
        container_ctime: args.get("ctime").and_then(Value::as_u64).unwrap_or_default(),
        container_name: str_of(&args, "container_name"),
        container_image: str_of(&args, "container_image"),
        container_image_digest: str_of(&args, "container_image_digest"),
        runtime: str_of(&args, "runtime"),
        k8s_pod_id: str_of(&args, "pod_uid"),
        k8s_pod_name: str_of(&args, "pod_name"),
        k8s_pod_namespace: str_of(&args, "pod_namespace"),
        k8s_pod_sandbox: args.get("pod_sandbox").and_then(Value::as_bool).unwrap_or_default(),
        cgroup_id,
        labels,
        // How it started and ended, where the event said (a remove says how it ended).
        init_pid: args.get("init_pid").and_then(Value::as_u64).and_then(|p| u32::try_from(p).ok()),
        started_at_unix_nano: time_of(&args, "started_at"),
        finished_at_unix_nano: time_of(&args, "finished_at"),
        exit_code: args.get("exit_code").and_then(Value::as_i64).and_then(|c| i32::try_from(c).ok()),
        exit_signal: args.get("exit_signal").and_then(Value::as_i64).and_then(|c| i32::try_from(c).ok()),
        oom_killed: args.get("oom_killed").and_then(Value::as_bool),
        oom_kills: args.get("oom_kills").and_then(Value::as_u64),
        exe: args.get("exe").and_then(Value::as_str).map(str::to_string),
        argv0: args.get("argv0").and_then(Value::as_str).map(str::to_string),
        ..Default::default()
    };
    Some(pb::Event {
        event,
        time_unix_nano: record.time_ns,
        kernel_time_unix_nano: time_of(&v, "kernel_time"),
        cgroup_id,
        enriched: v.get("enriched").and_then(Value::as_bool),
        container: Some(container),
        seq: record.seq,
        late: v.get("late").and_then(Value::as_bool).unwrap_or_default(),
        ..Default::default()
    })
}

/// What the journal says of one container: the seqs of its last describing
/// event and of its removal (0: none), its name, and its newest seq.
#[derive(Debug, Default, Clone)]
struct Known {
    name: String,
    last_known: u64,
    remove: u64,
    newest: u64,
}

/// Most containers a [`KnownIndex`] keeps (about 130 bytes each); past it, it
/// is dropped and every call reads the whole journal, as without an index.
pub const MAX_KNOWN: usize = 1 << 18;

/// The containers the journal knows (ID, name, and the seqs of their last
/// describing event and removal), for `History` by name and prefix and for
/// `ListRemoved`. Built on first use from the whole journal, then brought up to
/// date on each call from where it stopped (only the events appended since
/// are read), pruned of what retention dropped, bounded by [`MAX_KNOWN`]
/// containers (past it: [`KnownIndex::overflows`] counts it, and calls read
/// the whole journal instead). The lock is never held while the journal is
/// read.
#[derive(Debug)]
pub struct KnownIndex {
    state: std::sync::Mutex<KnownState>,
    max: usize,
    overflows: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct KnownState {
    /// Every record up to this seq is in `known`.
    after: u64,
    known: HashMap<String, Known>,
    /// False once the index outgrew its bound.
    overflowed: bool,
}

impl Default for KnownIndex {
    fn default() -> Self {
        KnownIndex::new(MAX_KNOWN)
    }
}

impl KnownIndex {
    /// An empty index of at most `max` containers.
    pub fn new(max: usize) -> Self {
        KnownIndex { state: Default::default(), max, overflows: Default::default() }
    }

    /// How many times the index outgrew its bound (and was dropped).
    pub fn overflows(&self) -> u64 {
        self.overflows.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KnownState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the index up to the journal's tail; `false` if it overflowed.
    fn catch_up(&self, journal: &Journal) -> Result<bool, Status> {
        loop {
            let after = {
                let st = self.lock();
                if st.overflowed {
                    return Ok(false);
                }
                st.after
            };
            let records = match journal.read_from(after, 4096) {
                Ok(r) => r,
                Err(JournalError::Expired { oldest_seq, .. }) => {
                    let mut st = self.lock();
                    st.after = st.after.max(oldest_seq.saturating_sub(1));
                    continue;
                }
                Err(e) => return Err(Status::unavailable(format!("journal: {e}"))),
            };
            let Some(last) = records.last().map(|r| r.seq) else { break };
            // Decoded without the lock.
            let updates: Vec<(u64, String, bool, Option<String>)> = records
                .into_iter()
                .filter(|r| !r.container_id.is_empty())
                .map(|r| {
                    let remove = r.kind == "container_remove";
                    let name = (!remove)
                        .then(|| serde_json::from_slice::<Value>(&r.payload).ok())
                        .flatten()
                        .map(|v| str_of(&v["args"], "container_name"));
                    (r.seq, r.container_id, remove, name)
                })
                .collect();
            let mut st = self.lock();
            if st.overflowed {
                return Ok(false);
            }
            let from = st.after;
            for (seq, id, remove, name) in updates.into_iter().filter(|u| u.0 > from) {
                let k = st.known.entry(id).or_default();
                k.newest = seq;
                if remove {
                    k.remove = seq;
                } else {
                    k.remove = 0; // an ID seen again (not expected): alive again
                    k.last_known = seq;
                    k.name = name.unwrap_or_default();
                }
            }
            st.after = st.after.max(last);
            if st.known.len() > self.max {
                st.overflowed = true;
                st.known = HashMap::new();
                self.overflows.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    max = self.max,
                    "the journal's index of containers is full; history and ls --all read the whole journal"
                );
                return Ok(false);
            }
        }
        // Forget what retention dropped.
        let oldest = journal.first_seq();
        let mut st = self.lock();
        st.known.retain(|_, k| k.newest >= oldest);
        Ok(true)
    }

    /// Runs `f` on what the journal knows: this index if it is complete, else a
    /// full read of the journal.
    fn with_known<T>(&self, journal: &Journal, f: impl FnOnce(&HashMap<String, Known>) -> T) -> Result<T, Status> {
        if self.catch_up(journal)? {
            return Ok(f(&self.lock().known));
        }
        let full = KnownIndex::new(usize::MAX);
        full.catch_up(journal)?;
        let known = full.lock();
        Ok(f(&known.known))
    }

    /// The container ID `key` names in the journal: a full ID, a unique ID prefix or an exact name.
    pub fn resolve(&self, journal: &Journal, key: &str) -> Result<String, Status> {
        self.with_known(journal, |known| {
            if known.contains_key(key) {
                return Ok(key.to_string());
            }
            let mut ids: Vec<&String> = known.keys().filter(|id| id.starts_with(key)).collect();
            if ids.is_empty() {
                ids = known.iter().filter(|(_, k)| k.last_known != 0 && k.name == key).map(|(id, _)| id).collect();
            }
            match ids.as_slice() {
                [id] => Ok((*id).clone()),
                [] => Err(Status::not_found(format!("the journal knows no container {key:?}"))),
                many => Err(Status::invalid_argument(format!("{key:?} is ambiguous: {} containers match", many.len()))),
            }
        })?
    }

    /// Every event the journal keeps about the container `key` names, oldest first. Blocking.
    pub fn history(&self, journal: &Journal, key: &str) -> Result<pb::HistoryResponse, Status> {
        let id = self.resolve(journal, key)?;
        let records = journal.history(&id).map_err(|e| Status::unavailable(format!("journal: {e}")))?;
        Ok(pb::HistoryResponse { events: records.iter().filter_map(event_from_record).collect() })
    }

    /// The containers the journal saw removed, newest removal first. Blocking.
    pub fn list_removed(&self, journal: &Journal) -> Result<pb::ListRemovedResponse, Status> {
        let mut seqs: Vec<(u64, u64)> = self.with_known(journal, |known| {
            known.values().filter(|k| k.remove != 0).map(|k| (k.remove, k.last_known)).collect()
        })?;
        seqs.sort_by_key(|&(remove, _)| std::cmp::Reverse(remove));
        let event_at = |seq: u64| -> Result<Option<pb::Event>, Status> {
            if seq == 0 {
                return Ok(None);
            }
            match journal.read_from(seq - 1, 1) {
                Ok(r) => Ok(r.first().filter(|r| r.seq == seq).and_then(event_from_record)),
                Err(JournalError::Expired { .. }) => Ok(None),
                Err(e) => Err(Status::unavailable(format!("journal: {e}"))),
            }
        };
        let mut containers = Vec::with_capacity(seqs.len());
        for (remove, last_known) in seqs {
            let Some(remove) = event_at(remove)? else { continue };
            containers.push(pb::RemovedContainer { remove: Some(remove), last_known: event_at(last_known)? });
        }
        Ok(pb::ListRemovedResponse { containers })
    }
}

/// The container ID `key` names in the journal (a full read; see [`KnownIndex::resolve`]).
pub fn resolve(journal: &Journal, key: &str) -> Result<String, Status> {
    KnownIndex::new(usize::MAX).resolve(journal, key)
}

/// Every event the journal keeps about the container `key` names, oldest first
/// (a full read; see [`KnownIndex::history`]). Blocking.
pub fn history(journal: &Journal, key: &str) -> Result<pb::HistoryResponse, Status> {
    KnownIndex::new(usize::MAX).history(journal, key)
}

/// The containers the journal saw removed, newest removal first (a full read;
/// see [`KnownIndex::list_removed`]). Blocking.
pub fn list_removed(journal: &Journal) -> Result<pb::ListRemovedResponse, Status> {
    KnownIndex::new(usize::MAX).list_removed(journal)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use ctwatch::{Container, ContainerEvent, EventKind, Runtime};
    use ctwatch_agent::ContainerRecord;

    use super::*;
    use crate::convert::event_message;

    #[test]
    fn a_journaled_event_replays_as_the_live_message_said_it() {
        let mut c = Container::new(format!("{:064x}", 7), Runtime::Docker);
        c.name = "web".into();
        c.image = "local/busybox:1".into();
        c.cgroup_id = 42;
        c.labels.insert("app".into(), "shop".into());
        let event = ContainerEvent {
            time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            kind: EventKind::ContainerCreate,
            cgroup_id: 42,
            container: Arc::new(c.clone()),
            kernel_time: Some(UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_001)),
            enriched: Some(true),
            seq: 9,
            late: false,
        };
        let record = Record {
            seq: 9,
            time_ns: 1_700_000_000_123_456_789,
            container_id: c.id.clone(),
            kind: "container_create".into(),
            payload: serde_json::to_vec(&event).unwrap(),
        };
        let replayed = event_from_record(&record).unwrap();
        let live = event_message(&event, ContainerRecord::new(&c, None));
        assert_eq!(replayed.seq, 9);
        assert_eq!(replayed.event, live.event);
        assert_eq!(replayed.time_unix_nano, live.time_unix_nano);
        assert_eq!(replayed.kernel_time_unix_nano, live.kernel_time_unix_nano);
        assert_eq!(replayed.enriched, live.enriched);
        let (r, l) = (replayed.container.unwrap(), live.container.unwrap());
        assert_eq!(
            (&r.container_id, &r.container_name, &r.container_image, &r.runtime, &r.labels, r.cgroup_id),
            (&l.container_id, &l.container_name, &l.container_image, &l.runtime, &l.labels, l.cgroup_id)
        );
        assert!(event_from_record(&Record { payload: b"not json".to_vec(), ..record }).is_none());
    }

    /// A clock the test moves.
    struct FakeClock(std::sync::atomic::AtomicI64);

    impl ctwatch_journal::Clock for FakeClock {
        fn now_ns(&self) -> i64 {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    const HOUR_NS: i64 = 3_600_000_000_000;

    /// Journals `kind` about `c` at `time_ns` as the agent's journal stage does.
    fn journal_event(journal: &Journal, c: &Container, kind: EventKind, time_ns: i64) {
        let mut event = ContainerEvent {
            time: UNIX_EPOCH + Duration::from_nanos(time_ns as u64),
            kind,
            cgroup_id: c.cgroup_id,
            container: Arc::new(c.clone()),
            kernel_time: None,
            enriched: Some(true),
            seq: 0,
            late: false,
        };
        journal
            .append_with(time_ns, &c.id, kind.as_str(), |seq, buf| {
                event.seq = seq;
                serde_json::to_writer(&mut *buf, &event).unwrap();
            })
            .unwrap();
    }

    #[test]
    fn history_and_ls_all_still_show_a_container_removed_an_hour_ago_and_how_it_ended() {
        let dir = tempfile::tempdir().unwrap();
        let start = 1_800_000_000 * 1_000_000_000i64;
        let clock = Arc::new(FakeClock(std::sync::atomic::AtomicI64::new(start)));
        let options = ctwatch_journal::Options { clock: clock.clone(), ..Default::default() };
        let journal = Journal::open(dir.path(), options).unwrap();

        // What the RPCs use (kept up to date between calls), one that overflows at once
        // (so reads the whole journal each call), and the plain full reads.
        let index = KnownIndex::default();
        let tiny = KnownIndex::new(1);
        let other = Container::new("cd".repeat(32), Runtime::Podman);
        journal_event(&journal, &other, EventKind::ContainerCreate, start - 1);
        journal.flush().unwrap();
        assert!(index.list_removed(&journal).unwrap().containers.is_empty());
        assert_eq!(index.resolve(&journal, "web").unwrap_err().code(), tonic::Code::NotFound);

        let mut web = Container::new("ab".repeat(32), Runtime::Docker);
        web.name = "web".into();
        web.image = "local/busybox:1".into();
        web.cgroup_id = 7;
        journal_event(&journal, &web, EventKind::ContainerCreate, start);
        web.init_pid = Some(4242);
        web.started_at_ns = Some(start as u64 + 1_000);
        journal_event(&journal, &web, EventKind::ContainerStart, start + 1_000);
        let mut ended = web.clone();
        ended.finished_at_ns = Some(start as u64 + 5_000_000_000);
        ended.exit_code = Some(137);
        ended.exit_signal = Some(9);
        ended.oom_killed = Some(true);
        ended.oom_kills = Some(1);
        journal_event(&journal, &ended, EventKind::ContainerRemove, start + 5_000_000_000);
        // Another container, still running, and events long after.
        let third = Container::new("ef".repeat(32), Runtime::Podman);
        journal_event(&journal, &third, EventKind::ContainerCreate, start + HOUR_NS);

        // An hour and more later (far past the 5 s grace period); retention runs on this clock.
        clock.0.store(start + HOUR_NS + 60_000_000_000, std::sync::atomic::Ordering::Relaxed);
        journal.enforce_retention().unwrap();

        journal.flush().unwrap();
        let answers = [&index, &tiny].map(|i| i.list_removed(&journal).unwrap());
        for removed in answers.into_iter().chain([list_removed(&journal).unwrap()]) {
            let removed = removed.containers;
            assert_eq!(removed.len(), 1, "only the removed one: {removed:?}");
            let remove = removed[0].remove.as_ref().unwrap();
            assert_eq!(remove.event, "container_remove");
            assert_eq!(remove.time_unix_nano, start + 5_000_000_000);
            let how = remove.container.as_ref().unwrap();
            assert_eq!(how.container_id, web.id);
            assert_eq!(
                (how.exit_code, how.exit_signal, how.oom_killed, how.oom_kills),
                (Some(137), Some(9), Some(true), Some(1))
            );
            assert_eq!(how.finished_at_unix_nano, Some(start + 5_000_000_000));
            let last_known = removed[0].last_known.as_ref().unwrap().container.as_ref().unwrap();
            assert_eq!((last_known.container_name.as_str(), last_known.init_pid), ("web", Some(4242)));
        }
        assert_eq!((index.overflows(), tiny.overflows()), (0, 1), "the tiny index overflowed, once");

        // history by name, by prefix and by ID: its whole life, in order.
        for key in ["web", &web.id[..12], &web.id] {
            let events = index.history(&journal, key).unwrap().events;
            assert_eq!(events, history(&journal, key).unwrap().events);
            assert_eq!(events, tiny.history(&journal, key).unwrap().events);
            let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
            assert_eq!(kinds, ["container_create", "container_start", "container_remove"], "{key}");
            assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
            assert_eq!(events[2].container.as_ref().unwrap().exit_code, Some(137));
        }

        // Past the retention (7 days by default), it is gone, and history says so.
        clock.0.store(start + 8 * 24 * HOUR_NS, std::sync::atomic::Ordering::Relaxed);
        journal.enforce_retention().unwrap();
        journal_event(&journal, &other, EventKind::ContainerRemove, start + 8 * 24 * HOUR_NS);
        journal.flush().unwrap();
        for i in [&index, &tiny] {
            assert_eq!(i.history(&journal, "web").unwrap_err().code(), tonic::Code::NotFound);
            let removed = i.list_removed(&journal).unwrap().containers;
            let ids: Vec<&str> = removed
                .iter()
                .map(|c| c.remove.as_ref().unwrap().container.as_ref().unwrap().container_id.as_str())
                .collect();
            assert_eq!(ids, [other.id.as_str()], "only the one removed since");
        }
    }
}
