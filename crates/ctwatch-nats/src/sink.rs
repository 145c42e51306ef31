//! The sink: publishes the outbox to JetStream in order, with acks, and keeps
//! the live inventory and the node's heartbeat in the key-value bucket.

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::context::{Publish, PublishError};
use async_nats::jetstream::{self, kv, publish::PublishAck, stream};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::connect::NatsOptions;
use crate::error::{one_line, NatsError};
use crate::names::{container_key, event_subject, node_key, node_token, token};
use crate::outbox::{Outbox, OutboxError, OutboxRecord};
use crate::{KV_BUCKET, SEQ_HEADER, STREAM, SUBJECT_PREFIX};

/// The stream's limits (set when the sink creates or updates it).
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Oldest events dropped after this long (default 7 days).
    pub max_age: Duration,
    /// Oldest events dropped beyond this many bytes (default 10 GiB; -1: no limit).
    pub max_bytes: i64,
    /// Oldest events dropped beyond this many messages (-1: no limit, the default).
    pub max_messages: i64,
    /// Re-sends with the same `Nats-Msg-Id` within this window are dropped by
    /// the server (default 2 minutes): an outage longer than this may repeat
    /// the events that were stored but not acked when it began.
    pub duplicate_window: Duration,
    /// Replicas of the stream and the bucket (1 on a single server; 3 in a cluster).
    pub replicas: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_age: Duration::from_secs(7 * 86_400),
            max_bytes: 10 << 30,
            max_messages: -1,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }
}

/// A function that says how many containers the node has now (for the heartbeat).
pub type ContainerCount = Arc<dyn Fn() -> u64 + Send + Sync>;

/// How the sink publishes.
#[derive(Clone)]
pub struct SinkConfig {
    /// This node's name (escaped in subjects and keys; see [`crate::names`]).
    pub node: String,
    /// How to reach NATS.
    pub nats: NatsOptions,
    /// The stream's limits.
    pub limits: StreamLimits,
    /// Messages published and not yet acked, at most (default 1024).
    pub max_in_flight: usize,
    /// Records read from the outbox at a time (default 256).
    pub read_batch: usize,
    /// How often the node's heartbeat is written (default 5 s).
    pub heartbeat_interval: Duration,
    /// How long an ack may take before the session is deemed broken (default 5 s).
    pub ack_timeout: Duration,
    /// First wait after a failure (doubles up to `max_backoff`; default 100 ms).
    pub min_backoff: Duration,
    /// Longest wait between attempts (default 10 s).
    pub max_backoff: Duration,
    /// How often the acked cursor is written to the outbox at most (default 200 ms).
    pub persist_interval: Duration,
    /// The agent's version, for the heartbeat.
    pub agent_version: String,
    /// The node's container count now, for the heartbeat.
    pub container_count: Option<ContainerCount>,
}

impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkConfig").field("node", &self.node).field("nats", &self.nats.urls).finish_non_exhaustive()
    }
}

impl SinkConfig {
    /// Defaults for `node` publishing to `nats`.
    pub fn new(node: impl Into<String>, nats: NatsOptions) -> SinkConfig {
        SinkConfig {
            node: node.into(),
            nats,
            limits: StreamLimits::default(),
            max_in_flight: 1024,
            read_batch: 256,
            heartbeat_interval: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            persist_interval: Duration::from_millis(200),
            agent_version: String::new(),
            container_count: None,
        }
    }
}

/// A node's heartbeat, kept under `nodes.<node>` in the bucket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    /// The node's name.
    pub node: String,
    /// The agent's version.
    pub agent_version: String,
    /// The agent's journal.
    pub journal_id: String,
    /// When the sink started (RFC 3339).
    pub started_at: String,
    /// When this heartbeat was written (RFC 3339, the node's clock).
    pub time: String,
    /// The node's containers now.
    pub containers: u64,
    /// The last seq in the node's journal.
    pub last_seq: u64,
    /// The last seq NATS acked.
    pub acked_seq: u64,
    /// How often heartbeats come, in milliseconds.
    pub interval_ms: u64,
}

/// The sink's counters and gauges, for metrics. All are read with relaxed loads.
#[derive(Debug, Default)]
pub struct SinkStats {
    sent: AtomicU64,
    published: AtomicU64,
    duplicates: AtomicU64,
    kv_puts: AtomicU64,
    kv_deletes: AtomicU64,
    errors: AtomicU64,
    sessions: AtomicU64,
    gaps: AtomicU64,
    skipped: AtomicU64,
    heartbeats: AtomicU64,
    reconciles: AtomicU64,
    acked: AtomicU64,
    last_seq: AtomicU64,
    connected: AtomicBool,
    /// The outbox's last seq, seen directly (so the backlog shows while NATS is down).
    appended: Option<watch::Receiver<u64>>,
}

impl SinkStats {
    /// Events sent to JetStream (re-sends included), acked or not.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    /// Events acked by JetStream (re-sends included).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
    /// Acks that said the server already had the message (a re-send it dropped).
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
    /// Container records put in the bucket.
    pub fn kv_puts(&self) -> u64 {
        self.kv_puts.load(Ordering::Relaxed)
    }
    /// Container keys deleted from the bucket.
    pub fn kv_deletes(&self) -> u64 {
        self.kv_deletes.load(Ordering::Relaxed)
    }
    /// Sessions that ended in an error (each is followed by a backoff and a resume).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    /// Sessions started (connections made and set up).
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }
    /// Seqs missing from the outbox (dropped by its retention before they were sent).
    pub fn gaps(&self) -> u64 {
        self.gaps.load(Ordering::Relaxed)
    }
    /// Records whose container ID cannot be a key (kept out of the bucket; the event is still published).
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
    /// Heartbeats written.
    pub fn heartbeats(&self) -> u64 {
        self.heartbeats.load(Ordering::Relaxed)
    }
    /// Reconciliations of the bucket with the node's live containers (one per session at most).
    pub fn reconciles(&self) -> u64 {
        self.reconciles.load(Ordering::Relaxed)
    }
    /// The last seq NATS acked.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }
    /// The last seq in the outbox.
    pub fn last_seq(&self) -> u64 {
        let seen = self.last_seq.load(Ordering::Relaxed);
        self.appended.as_ref().map_or(seen, |rx| seen.max(*rx.borrow()))
    }
    /// Records not yet acked: last seq − acked.
    pub fn backlog(&self) -> u64 {
        self.last_seq().saturating_sub(self.acked())
    }
    /// True while a session is up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// The running sink: a task that publishes the outbox to NATS until stopped.
/// It never blocks the outbox's writer: it only reads the outbox.
pub struct NatsSink {
    stats: Arc<SinkStats>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl NatsSink {
    /// Starts the sink on the current tokio runtime. Fails only on a node
    /// name that cannot be used; NATS being down is not an error (the sink
    /// keeps trying, with backoff).
    pub fn spawn(config: SinkConfig, outbox: Arc<dyn Outbox>) -> Result<NatsSink, NatsError> {
        let node = node_token(&config.node)?;
        if config.nats.urls.is_empty() {
            return Err(NatsError::Options("no NATS URL given (--nats-url nats://HOST:4222)".into()));
        }
        let stats = Arc::new(SinkStats { appended: Some(outbox.subscribe()), ..SinkStats::default() });
        stats.acked.store(outbox.acked(), Ordering::Relaxed);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(config, node, outbox, stats.clone(), stop_rx));
        Ok(NatsSink { stats, stop, task })
    }

    /// The sink's counters and gauges.
    pub fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }

    /// Stops the sink and waits for it: the acked cursor is written to the outbox first.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(
    config: SinkConfig,
    node: String,
    outbox: Arc<dyn Outbox>,
    stats: Arc<SinkStats>,
    mut stop: watch::Receiver<bool>,
) {
    let started = SystemTime::now();
    let mut backoff = config.min_backoff;
    loop {
        let mut progressed = false;
        match session(&config, &node, &outbox, &stats, &mut stop, started, &mut progressed).await {
            Ok(()) => return,
            Err(e) => {
                stats.connected.store(false, Ordering::Relaxed);
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(backlog = stats.backlog(), "NATS sink: {e}; resuming from seq {}", stats.acked());
            }
        }
        if progressed {
            backoff = config.min_backoff;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// A record published and not yet fully acked. Each future is dropped once
/// it has completed (a completed future must not be polled again when the
/// select that awaited it was cancelled half-way).
struct InFlight {
    seq: u64,
    ack: Option<AckFuture>,
    acked: Option<PublishAck>,
    kv: Option<AckFuture>,
}

/// Runs `f` on a blocking thread (the outbox may do disk I/O).
async fn blocking<T: Send + 'static>(
    outbox: &Arc<dyn Outbox>,
    f: impl FnOnce(&dyn Outbox) -> Result<T, OutboxError> + Send + 'static,
) -> Result<T, NatsError> {
    let outbox = outbox.clone();
    match tokio::task::spawn_blocking(move || f(outbox.as_ref())).await {
        Ok(r) => r.map_err(NatsError::from),
        Err(e) => Err(NatsError::Outbox(OutboxError(format!("outbox call failed: {e}")))),
    }
}

/// The stream's configuration.
pub(crate) fn stream_config(limits: &StreamLimits) -> stream::Config {
    stream::Config {
        name: STREAM.to_string(),
        description: Some("ctwatch: every node's container events".to_string()),
        subjects: vec![format!("{SUBJECT_PREFIX}.>")],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: limits.max_age,
        max_bytes: limits.max_bytes,
        max_messages: limits.max_messages,
        max_messages_per_subject: -1,
        duplicate_window: limits.duplicate_window,
        num_replicas: limits.replicas.max(1),
        ..Default::default()
    }
}

/// Creates or updates the stream and the bucket; the bucket's subject prefix.
pub(crate) async fn set_up(js: &jetstream::Context, limits: &StreamLimits) -> Result<kv::Store, NatsError> {
    let config = stream_config(limits);
    match js.get_stream(STREAM).await {
        Ok(mut s) => {
            let current = s.info().await.map_err(|e| NatsError::js("stream info", e))?.config.clone();
            let differs = current.max_age != config.max_age
                || current.max_bytes != config.max_bytes
                || current.max_messages != config.max_messages
                || current.duplicate_window != config.duplicate_window
                || current.subjects != config.subjects;
            if differs {
                js.update_stream(config).await.map_err(|e| NatsError::js("stream update", e))?;
            }
        }
        Err(_) => {
            if let Err(e) = js.create_stream(config).await {
                // Another node may have made it meanwhile.
                js.get_stream(STREAM).await.map_err(|_| NatsError::js("stream create", e))?;
            }
        }
    }
    match js.get_key_value(KV_BUCKET).await {
        Ok(store) => Ok(store),
        Err(_) => {
            // The bucket's stream as `create_key_value` makes it, made directly:
            // that call first asks for the account's info, which async-nats
            // cannot parse from nats-server 2.9 (Debian 12's).
            let config = stream::Config {
                name: format!("KV_{KV_BUCKET}"),
                description: Some("ctwatch: every node's live containers and heartbeats".to_string()),
                subjects: vec![format!("$KV.{KV_BUCKET}.>")],
                max_messages_per_subject: 1,
                max_bytes: -1,
                max_messages: -1,
                max_message_size: -1,
                storage: stream::StorageType::File,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                num_replicas: limits.replicas.max(1),
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            };
            if let Err(e) = js.create_stream(config).await {
                js.get_stream(format!("KV_{KV_BUCKET}")).await.map_err(|_| NatsError::js("bucket create", e))?;
            }
            js.get_key_value(KV_BUCKET).await.map_err(|e| NatsError::js("bucket open", e))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    config: &SinkConfig,
    node: &str,
    outbox: &Arc<dyn Outbox>,
    stats: &Arc<SinkStats>,
    stop: &mut watch::Receiver<bool>,
    started: SystemTime,
    progressed: &mut bool,
) -> Result<(), NatsError> {
    let (broken_tx, mut broken) = mpsc::channel(4);
    let client = config.nats.connect_session(broken_tx).await?;
    let mut js = jetstream::new(client.clone());
    js.set_timeout(config.ack_timeout);
    let store = set_up(&js, &config.limits).await?;
    let kv_prefix = store.put_prefix.clone().unwrap_or_else(|| store.prefix.clone());
    let journal_id = outbox.journal_id();
    let msg_id_prefix = format!("{node}.{}", token(&journal_id).unwrap_or_else(|_| "journal".into()));
    stats.sessions.fetch_add(1, Ordering::Relaxed);
    stats.connected.store(true, Ordering::Relaxed);

    let mut acked = blocking(outbox, |o| Ok(o.acked())).await?.max(stats.acked());
    stats.acked.store(acked, Ordering::Relaxed);
    let mut persisted = acked;
    let mut next = acked;
    tracing::info!(node = config.node, acked, "NATS sink connected; publishing from seq {}", acked + 1);

    // The bucket's keys of this node set to its live containers (when the
    // outbox knows them; else at a later heartbeat).
    let mut reconciled = reconcile(&js, node, &kv_prefix, outbox, stats).await?;

    let mut appended = outbox.subscribe();
    let mut pending: VecDeque<OutboxRecord> = VecDeque::new();
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut persist = tokio::time::interval(config.persist_interval);
    persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let max_in_flight = config.max_in_flight.max(1);

    let result = loop {
        let last = *appended.borrow_and_update();
        stats.last_seq.fetch_max(last, Ordering::Relaxed);
        // Fill the window.
        while in_flight.len() < max_in_flight {
            if pending.is_empty() {
                let limit = config.read_batch.max(1);
                let records = blocking(outbox, move |o| o.read_after(next, limit)).await?;
                if records.is_empty() {
                    break;
                }
                pending.extend(records);
            }
            let Some(record) = pending.pop_front() else { break };
            if record.seq <= next {
                continue;
            }
            if record.seq > next + 1 {
                stats.gaps.fetch_add(record.seq - next - 1, Ordering::Relaxed);
            }
            stats.last_seq.fetch_max(record.seq, Ordering::Relaxed);
            next = record.seq;
            in_flight.push_back(publish(&js, config, node, &msg_id_prefix, &kv_prefix, record, stats).await?);
        }

        let caught_up = pending.is_empty() && in_flight.len() < max_in_flight;
        tokio::select! {
            biased;
            _ = stop.changed() => break Ok(()),
            _ = broken.recv() => break Err(NatsError::Connect { urls: config.nats.urls.join(","), message: "connection lost".into() }),
            done = front_ack(&mut in_flight), if !in_flight.is_empty() => {
                let (seq, ack) = match done {
                    Ok(x) => x,
                    Err(e) => break Err(NatsError::js("publish ack", e)),
                };
                in_flight.pop_front();
                if ack.duplicate {
                    stats.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                stats.published.fetch_add(1, Ordering::Relaxed);
                acked = seq;
                stats.acked.store(acked, Ordering::Relaxed);
                *progressed = true;
            }
            _ = heartbeat.tick() => {
                let count = config.container_count.as_ref().map_or(0, |f| f());
                let now = SystemTime::now();
                let beat = Heartbeat {
                    node: config.node.clone(),
                    agent_version: config.agent_version.clone(),
                    journal_id: journal_id.clone(),
                    started_at: crate::cluster::rfc3339(started),
                    time: crate::cluster::rfc3339(now),
                    containers: count,
                    last_seq: stats.last_seq(),
                    acked_seq: acked,
                    interval_ms: config.heartbeat_interval.as_millis() as u64,
                };
                let body = Bytes::from(serde_json::to_vec(&beat).unwrap_or_default());
                if let Err(e) = store.put(node_key(node), body).await {
                    break Err(NatsError::js("heartbeat", e));
                }
                stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                if !reconciled {
                    match reconcile(&js, node, &kv_prefix, outbox, stats).await {
                        Ok(done) => reconciled = done,
                        Err(e) => break Err(e),
                    }
                }
            }
            _ = persist.tick(), if acked > persisted => {
                let seq = acked;
                blocking(outbox, move |o| o.set_acked(seq)).await?;
                persisted = seq;
            }
            _ = appended.changed(), if caught_up => {}
        }
    };
    if acked > persisted {
        let seq = acked;
        blocking(outbox, move |o| o.set_acked(seq)).await?;
    }
    drop(client);
    result
}

/// Sets this node's keys in the bucket to the outbox's live containers: puts
/// their records and deletes every other key of the node (containers removed
/// while no agent published). False when the outbox does not know them yet.
///
/// Events published before it are applied before it (one connection keeps
/// the order); the outbox's later events are applied after it, so the
/// bucket converges to the node's state whatever the backlog holds.
async fn reconcile(
    js: &jetstream::Context,
    node: &str,
    kv_prefix: &str,
    outbox: &Arc<dyn Outbox>,
    stats: &SinkStats,
) -> Result<bool, NatsError> {
    let Some(live) = blocking(outbox, |o| o.live()).await? else { return Ok(false) };
    let mut want = std::collections::HashMap::new();
    for (id, record) in live {
        match container_key(node, &id) {
            Ok(key) => {
                want.insert(key, record);
            }
            Err(_) => {
                stats.skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let reader = crate::cluster::Cluster::new(js.clone(), Duration::MAX);
    let present = reader.read_bucket(&format!("{node}.*")).await?;
    let mut acks = Vec::new();
    let mut deleted = 0u64;
    for (key, _, _) in present {
        if !want.contains_key(&key) {
            let message = Publish::build().header("KV-Operation", "DEL");
            acks.push(
                js.send_publish(format!("{kv_prefix}{key}"), message)
                    .await
                    .map_err(|e| NatsError::js("bucket write", e))?,
            );
            deleted += 1;
        }
    }
    let put = want.len() as u64;
    for (key, record) in want {
        let message = Publish::build().payload(record);
        acks.push(
            js.send_publish(format!("{kv_prefix}{key}"), message)
                .await
                .map_err(|e| NatsError::js("bucket write", e))?,
        );
    }
    for ack in acks {
        ack.await.map_err(|e| NatsError::js("bucket write ack", e))?;
    }
    stats.kv_puts.fetch_add(put, Ordering::Relaxed);
    stats.kv_deletes.fetch_add(deleted, Ordering::Relaxed);
    stats.reconciles.fetch_add(1, Ordering::Relaxed);
    tracing::info!(node, live = put, deleted, "NATS sink: the bucket reconciled with the live containers");
    Ok(true)
}

/// Waits for the oldest in-flight record's acks (event, then bucket).
async fn front_ack(in_flight: &mut VecDeque<InFlight>) -> Result<(u64, PublishAck), PublishError> {
    let Some(front) = in_flight.front_mut() else { return std::future::pending().await };
    if let Some(ack) = front.ack.as_mut() {
        let done = ack.as_mut().await;
        front.ack = None;
        front.acked = Some(done?);
    }
    if let Some(kv) = front.kv.as_mut() {
        let done = kv.as_mut().await;
        front.kv = None;
        done?;
    }
    Ok((front.seq, front.acked.clone().unwrap_or_default()))
}

async fn publish(
    js: &jetstream::Context,
    config: &SinkConfig,
    node: &str,
    msg_id_prefix: &str,
    kv_prefix: &str,
    record: OutboxRecord,
    stats: &SinkStats,
) -> Result<InFlight, NatsError> {
    let subject = event_subject(node, &record.kind);
    let message = Publish::build()
        .payload(record.payload_json)
        .message_id(format!("{msg_id_prefix}.{}", record.seq))
        .header(SEQ_HEADER, record.seq.to_string().as_str());
    let ack = js.send_publish(subject, message).await.map_err(|e| NatsError::js("publish", e))?.into_future();
    stats.sent.fetch_add(1, Ordering::Relaxed);
    let mut kv = None;
    if !record.container_id.is_empty() {
        match container_key(node, &record.container_id) {
            Ok(key) => {
                let subject = format!("{kv_prefix}{key}");
                let op = match record.record_json {
                    Some(json) => Some((Publish::build().payload(json), true)),
                    None if record.kind == "container_remove" => {
                        Some((Publish::build().header("KV-Operation", "DEL"), false))
                    }
                    None => None,
                };
                if let Some((message, put)) = op {
                    let fut = js.send_publish(subject, message).await.map_err(|e| NatsError::js("bucket write", e))?;
                    let counter = if put { &stats.kv_puts } else { &stats.kv_deletes };
                    counter.fetch_add(1, Ordering::Relaxed);
                    kv = Some(fut.into_future());
                }
            }
            Err(e) => {
                stats.skipped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node = config.node, "not in the bucket: {}", one_line(&e.to_string()));
            }
        }
    }
    Ok(InFlight { seq: record.seq, ack: Some(ack), acked: None, kv })
}
