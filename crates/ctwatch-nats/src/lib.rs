//! ctwatch's cluster sink and cluster view over NATS JetStream.
//!
//! Every node's agent publishes its journal (the [`Outbox`]) into the stream
//! [`STREAM`] on `ctwatch.events.<node>.<event kind>`, with the header
//! `Nats-Msg-Id: <node>.<journal id>.<seq>` so that re-sends are dropped by the
//! server, and keeps its live containers in the key-value bucket [`KV_BUCKET`]
//! (`<node>.<container id>` → the data-source record, `nodes.<node>` → a
//! heartbeat). [`NatsSink`] does the publishing; [`Cluster`] reads the cluster
//! back from NATS alone (`ctwatch cluster ls|get|watch|nodes`).

#![warn(missing_docs)]

mod cluster;
mod connect;
mod error;
pub mod names;
mod outbox;
mod sink;
pub mod testing;

pub use cluster::{
    Cluster, ClusterContainer, ClusterEvent, ClusterEvents, ClusterFilter, JsonPredicate, NodeStatus, Since,
};
pub use connect::NatsOptions;
pub use error::NatsError;
pub use outbox::{MemoryOutbox, Outbox, OutboxError, OutboxRecord};
pub use sink::{Heartbeat, NatsSink, SinkConfig, SinkStats, StreamLimits};

/// The JetStream stream that holds every node's events.
pub const STREAM: &str = "CTWATCH_EVENTS";
/// The first tokens of every event subject: `ctwatch.events.<node>.<event kind>`.
pub const SUBJECT_PREFIX: &str = "ctwatch.events";
/// The key-value bucket of the live containers and the nodes' heartbeats.
pub const KV_BUCKET: &str = "ctwatch_containers";
/// The header with the event's journal sequence number on its node.
pub const SEQ_HEADER: &str = "Ctwatch-Seq";
