//! ctwatch's agent: runs the pipeline and serves the containers data source.
//!
//! ```text
//! sources/ ──▶ inbox ──▶ transforms/ ────────────────────────────▶ sinks/
//! kernel, hook  (bounded) tracker ─▶ enrichment gate ─▶ hook join    hub, pinned map, metrics
//!                           │                                        │
//!                         store ◀──── DataSource (get, list, ...)   subscribers (CLI, gRPC)
//! ```
//!
//! - [`agent`]: the [`Agent`]: wires the stages and runs the loop; [`config`]: how it is set up.
//! - [`sources`]: the kernel source (eBPF, inotify, scan) and the runtime hook, into one bounded inbox.
//! - [`transforms`]: the tracker, the enrichment gate, the hook join (each unit-tested with an injected clock).
//! - [`sinks`]: the hub, the pinned BPF map, metrics (each with its own bounded queue and overflow policy).
//! - [`hub`]: events to subscribers, with bounded buffers and no gap after the current state.
//! - [`datasource`]: the [`DataSource`] handle Rust code queries.
//! - [`namespaces`]: each container's init PID and mount/network namespaces.
//! - [`metrics`]: Prometheus metrics.
//!
//! ```no_run
//! use ctwatch_agent::{Agent, AgentConfig};
//!
//! let agent = Agent::start(AgentConfig::for_host()?)?;
//! let containers = agent.data_source();
//! let mut events = containers.subscribe();
//! for current in events.current() {
//!     println!("running: {}", current.container.id);
//! }
//! while let Ok(Some(event)) = events.blocking_next() {
//!     println!("{} {}", event.kind.as_str(), event.container.id);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod agent;
pub mod config;
pub mod datasource;
pub mod hub;
pub mod metrics;
pub mod namespaces;
pub mod sinks;
pub mod sources;
pub mod transforms;

pub use agent::{Agent, AgentError};
pub use config::{AgentConfig, PinConfig, SourceChoice, WatchedTree};
pub use datasource::{ContainerFilter, ContainerRecord, DataSource, DataSourceError, HostView, LookupKey};
pub use hub::{Subscription, SubscriptionError, DEFAULT_SUBSCRIBER_BUFFER, MAX_SUBSCRIBER_BYTES};
pub use metrics::{Format as MetricsFormat, Metrics};
pub use namespaces::Namespaces;
