//! The cluster view, from NATS alone: the bucket's live containers and
//! heartbeats, and the stream's events (replayable).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::{self, Context};
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use crate::connect::NatsOptions;
use crate::error::NatsError;
use crate::names::{node_token, untoken};
use crate::sink::Heartbeat;
use crate::{KV_BUCKET, SEQ_HEADER, STREAM, SUBJECT_PREFIX};

/// How long a read may wait for the next message before it is deemed stuck.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a bucket read waits for more once messages came, before it ends.
const IDLE_END: Duration = Duration::from_secs(2);

/// Formats a time as RFC 3339 with milliseconds, in UTC.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A test on a container record or an event's JSON.
pub type JsonPredicate = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

/// Which containers or events to show.
#[derive(Clone, Default)]
pub struct ClusterFilter {
    /// Only this node's.
    pub node: Option<String>,
    /// Only events of these kinds (`container_create`, ...; empty: all). Not used by `ls`.
    pub kinds: Vec<String>,
    /// Only the records / events it accepts.
    pub predicate: Option<JsonPredicate>,
}

impl ClusterFilter {
    fn accepts(&self, json: &Value) -> bool {
        self.predicate.as_ref().is_none_or(|p| p(json))
    }
}

/// One container in the cluster view.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterContainer {
    /// The node it runs on.
    pub node: String,
    /// Its data-source record, as the node wrote it.
    pub record: Value,
    /// True when its node's heartbeat is older than the stale TTL (or missing):
    /// the node may be gone, and the container with it.
    pub stale: bool,
    /// When the node last wrote the record (server time).
    pub updated: SystemTime,
}

impl ClusterContainer {
    /// The record with `node` and `stale` added (what `cluster ls --format json` prints).
    pub fn to_json(&self) -> Value {
        let mut v = self.record.clone();
        if let Value::Object(map) = &mut v {
            map.insert("node".into(), Value::String(self.node.clone()));
            map.insert("stale".into(), Value::Bool(self.stale));
        }
        v
    }

    /// The record's container ID.
    pub fn id(&self) -> &str {
        self.record.get("container_id").and_then(Value::as_str).unwrap_or("")
    }

    /// The record's container name.
    pub fn name(&self) -> &str {
        self.record.get("container_name").and_then(Value::as_str).unwrap_or("")
    }
}

/// One node as its heartbeat says.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatus {
    /// The node's name.
    pub node: String,
    /// Its last heartbeat (`None` when it wrote containers but no heartbeat, or one that does not parse).
    pub heartbeat: Option<Heartbeat>,
    /// How long ago the heartbeat was written (server time against this machine's clock).
    pub age: Duration,
    /// True when `age` is beyond the stale TTL.
    pub stale: bool,
    /// Its containers in the bucket.
    pub containers: usize,
}

/// Where `watch` starts in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// From the oldest event kept.
    All,
    /// Only new events.
    New,
    /// After this stream sequence (the `stream_seq` of an event seen).
    After(u64),
    /// From events stored at or after this time.
    Time(SystemTime),
}

impl Since {
    /// `SEQ` (a stream sequence), an RFC 3339 time, or a duration back from
    /// now (`10m`, `1h`); `all` for everything.
    pub fn parse(s: &str) -> Result<Since, String> {
        let s = s.trim();
        if s == "all" || s == "0" {
            return Ok(Since::All);
        }
        if let Ok(seq) = s.parse::<u64>() {
            return Ok(Since::After(seq));
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Ok(Since::Time(t.with_timezone(&Utc).into()));
        }
        match humantime::parse_duration(s) {
            Ok(d) => Ok(Since::Time(SystemTime::now().checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH))),
            Err(_) => Err(format!("{s:?}: expected a stream sequence, an RFC 3339 time or a duration (10m, 1h)")),
        }
    }

    fn deliver_policy(self) -> DeliverPolicy {
        match self {
            Since::All | Since::After(0) => DeliverPolicy::All,
            Since::New => DeliverPolicy::New,
            Since::After(seq) => DeliverPolicy::ByStartSequence { start_sequence: seq + 1 },
            Since::Time(t) => DeliverPolicy::ByStartTime { start_time: time::OffsetDateTime::from(t) },
        }
    }
}

/// One event from the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterEvent {
    /// The node it came from.
    pub node: String,
    /// The event kind (the subject's last token).
    pub kind: String,
    /// Its sequence in the stream (pass it to [`Since::After`] to resume).
    pub stream_seq: u64,
    /// Its seq in its node's journal.
    pub journal_seq: Option<u64>,
    /// When the server stored it.
    pub stored: SystemTime,
    /// The event as the node wrote it.
    pub payload: Value,
}

impl ClusterEvent {
    /// The event's JSON with `node` and `stream_seq` added (and `seq` when the payload has none).
    pub fn to_json(&self) -> Value {
        let mut v = self.payload.clone();
        if let Value::Object(map) = &mut v {
            map.insert("node".into(), Value::String(self.node.clone()));
            map.insert("stream_seq".into(), self.stream_seq.into());
            if let Some(seq) = self.journal_seq {
                map.entry("seq").or_insert(seq.into());
            }
        }
        v
    }
}

/// A stream of events from [`Cluster::watch`].
pub type ClusterEvents = Pin<Box<dyn Stream<Item = Result<ClusterEvent, NatsError>> + Send>>;

/// A reader of the cluster, from NATS alone (no agent needed).
pub struct Cluster {
    js: Context,
    stale_after: Duration,
}

impl Cluster {
    /// Connects; a node whose heartbeat is older than `stale_after` is stale.
    pub async fn connect(options: &NatsOptions, stale_after: Duration) -> Result<Cluster, NatsError> {
        let client = options.connect().await?;
        Ok(Cluster { js: jetstream::new(client), stale_after })
    }

    /// A reader over an existing JetStream context.
    pub fn new(js: Context, stale_after: Duration) -> Cluster {
        Cluster { js, stale_after }
    }

    /// The last value of every key under `filter` (a subject filter of the
    /// bucket's stream), deleted keys left out: (key, value, stored time).
    pub(crate) async fn read_bucket(&self, filter: &str) -> Result<Vec<(String, bytes::Bytes, SystemTime)>, NatsError> {
        let stream_name = format!("KV_{KV_BUCKET}");
        let stream = self.js.get_stream(&stream_name).await.map_err(|_| NatsError::NotSetUp(stream_name))?;
        // The last message stored now: once it (or a later one) is delivered,
        // every key's last value as of now has been (the consumer delivers in
        // stream order). `pending` alone cannot end the read: nats-server 2.9
        // counts superseded messages in it for last-per-subject consumers, and
        // a key written all the time (a heartbeat) would keep the read going.
        let last_now = stream.cached_info().state.last_sequence;
        let prefix = format!("$KV.{KV_BUCKET}.");
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: format!("{prefix}{filter}"),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| NatsError::js("bucket read", e))?;
        let mut out = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(|e| NatsError::js("bucket read", e))?;
        let mut received = false;
        loop {
            // Once messages flow, a pause of IDLE_END also ends the read (a
            // filtered read may never see `last_now`, and `pending` may not reach 0).
            let wait = if received { IDLE_END } else { READ_TIMEOUT };
            let next = match tokio::time::timeout(wait, messages.next()).await {
                Ok(next) => next,
                Err(_) if received => break,
                Err(_) => return Err(NatsError::js("bucket read", "timed out")),
            };
            received = true;
            let Some(message) = next else { break };
            let message = message.map_err(|e| NatsError::js("bucket read", e))?;
            let info = message.info().map_err(|e| NatsError::js("bucket read", e))?;
            let done = info.pending == 0 || info.stream_sequence >= last_now;
            let stored = SystemTime::from(info.published);
            let deleted = message
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
            if !deleted {
                if let Some(key) = message.subject.strip_prefix(prefix.as_str()) {
                    out.push((key.to_string(), message.payload.clone(), stored));
                }
            }
            if done {
                break;
            }
        }
        Ok(out)
    }

    fn node_status(&self, node: String, value: &[u8], stored: SystemTime, now: SystemTime) -> NodeStatus {
        let age = now.duration_since(stored).unwrap_or_default();
        NodeStatus {
            node,
            heartbeat: serde_json::from_slice(value).ok(),
            age,
            stale: age > self.stale_after,
            containers: 0,
        }
    }

    /// Every node that wrote a heartbeat or containers, by name.
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>, NatsError> {
        let (nodes, containers) = self.read(None).await?;
        let mut nodes = nodes;
        for c in &containers {
            if !nodes.iter().any(|n| n.node == c.node) {
                nodes.push(NodeStatus {
                    node: c.node.clone(),
                    heartbeat: None,
                    age: Duration::MAX,
                    stale: true,
                    containers: 0,
                });
            }
        }
        for n in &mut nodes {
            n.containers = containers.iter().filter(|c| c.node == n.node).count();
        }
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(nodes)
    }

    /// Reads the heartbeats and containers (of one node, or all).
    async fn read(&self, node: Option<&str>) -> Result<(Vec<NodeStatus>, Vec<ClusterContainer>), NatsError> {
        let entries = match node {
            Some(node) => {
                let t = node_token(node)?;
                let mut e = self.read_bucket(&format!("nodes.{t}")).await?;
                e.extend(self.read_bucket(&format!("{t}.*")).await?);
                e
            }
            None => self.read_bucket(">").await?,
        };
        let now = SystemTime::now();
        let mut nodes = Vec::new();
        let mut containers = Vec::new();
        for (key, value, stored) in entries {
            let Some((first, second)) = key.split_once('.') else { continue };
            if first == "nodes" {
                if let Some(node) = untoken(second) {
                    nodes.push(self.node_status(node, &value, stored, now));
                }
                continue;
            }
            let (Some(node), Ok(record)) = (untoken(first), serde_json::from_slice::<Value>(&value)) else {
                continue;
            };
            containers.push(ClusterContainer { node, record, stale: true, updated: stored });
        }
        for c in &mut containers {
            c.stale = nodes.iter().find(|n| n.node == c.node).is_none_or(|n| n.stale);
        }
        Ok((nodes, containers))
    }

    /// The live containers of every node (or `filter.node`'s) that `filter` accepts,
    /// by node then container ID.
    pub async fn ls(&self, filter: &ClusterFilter) -> Result<Vec<ClusterContainer>, NatsError> {
        let (_, containers) = self.read(filter.node.as_deref()).await?;
        let mut out: Vec<ClusterContainer> = containers.into_iter().filter(|c| filter.accepts(&c.record)).collect();
        out.sort_by(|a, b| a.node.cmp(&b.node).then_with(|| a.id().cmp(b.id())));
        Ok(out)
    }

    /// The containers whose ID is `key`, else whose ID starts with `key`, else
    /// whose name is `key` (more than one when ambiguous; none when unknown).
    pub async fn get(&self, key: &str) -> Result<Vec<ClusterContainer>, NatsError> {
        let all = self.ls(&ClusterFilter::default()).await?;
        let pick = |f: &dyn Fn(&ClusterContainer) -> bool| all.iter().filter(|c| f(c)).cloned().collect::<Vec<_>>();
        let exact = pick(&|c| c.id() == key);
        if !exact.is_empty() || key.is_empty() {
            return Ok(exact);
        }
        let prefix = pick(&|c| c.id().starts_with(key));
        if !prefix.is_empty() {
            return Ok(prefix);
        }
        Ok(pick(&|c| c.name() == key || c.name().trim_start_matches('/') == key))
    }

    /// The stream's events from `since` on, then live ones, through an
    /// ordered consumer (the server keeps no state for it).
    pub async fn watch(&self, since: Since, filter: ClusterFilter) -> Result<ClusterEvents, NatsError> {
        let stream = self.js.get_stream(STREAM).await.map_err(|_| NatsError::NotSetUp(STREAM.to_string()))?;
        let node = match &filter.node {
            Some(n) => node_token(n)?,
            None => "*".to_string(),
        };
        let kind = match filter.kinds.as_slice() {
            [one] => crate::names::kind_token(one),
            _ => "*".to_string(),
        };
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: format!("{SUBJECT_PREFIX}.{node}.{kind}"),
                deliver_policy: since.deliver_policy(),
                ..Default::default()
            })
            .await
            .map_err(|e| NatsError::js("consumer create", e))?;
        let messages = consumer.messages().await.map_err(|e| NatsError::js("consumer", e))?;
        let events = messages.filter_map(move |m| {
            let out = match m {
                Err(e) => Some(Err(NatsError::js("consumer", e))),
                Ok(m) => to_event(&m)
                    .filter(|e| {
                        (filter.kinds.is_empty() || filter.kinds.contains(&e.kind)) && filter.accepts(&e.payload)
                    })
                    .map(Ok),
            };
            std::future::ready(out)
        });
        Ok(Box::pin(events))
    }
}

fn to_event(m: &jetstream::Message) -> Option<ClusterEvent> {
    let info = m.info().ok()?;
    let rest = m.subject.strip_prefix(SUBJECT_PREFIX)?.strip_prefix('.')?;
    let (node, kind) = rest.split_once('.')?;
    let payload = serde_json::from_slice(&m.payload)
        .unwrap_or_else(|_| serde_json::json!({ "raw": String::from_utf8_lossy(&m.payload) }));
    Some(ClusterEvent {
        node: untoken(node)?,
        kind: untoken(kind).unwrap_or_else(|| kind.to_string()),
        stream_seq: info.stream_sequence,
        journal_seq: m.headers.as_ref().and_then(|h| h.get(SEQ_HEADER)).and_then(|v| v.as_str().parse().ok()),
        stored: SystemTime::from(info.published),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_parses_seqs_times_and_durations() {
        assert_eq!(Since::parse("42"), Ok(Since::After(42)));
        assert_eq!(Since::parse("all"), Ok(Since::All));
        let t = Since::parse("2026-01-02T03:04:05Z").unwrap();
        assert_eq!(t, Since::Time(SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_323_045)));
        let Since::Time(ago) = Since::parse("10m").unwrap() else { panic!("a time") };
        let back = SystemTime::now().duration_since(ago).unwrap();
        assert!(back >= Duration::from_secs(600) && back < Duration::from_secs(660));
        assert!(Since::parse("yesterday-ish").unwrap_err().contains("RFC 3339"));
    }
}
