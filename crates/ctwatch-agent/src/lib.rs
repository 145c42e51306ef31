//! ctwatch's agent: runs the pipeline and serves the containers data source.
//!
//! ```text
//! sources ──▶ tracker ──▶ enrichment gate ──▶ hub ──▶ subscribers
//!               │                               │
//!             store ◀──── DataSource (get, get_by_pid, list, subscribe, resolve_path)
//! ```
//!
//! - [`pipeline`]: the [`Agent`]: kernel source, tracker, enrichment, publishing.
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

pub mod datasource;
pub mod hub;
pub mod metrics;
pub mod namespaces;
pub mod pipeline;

pub use datasource::{ContainerFilter, ContainerRecord, DataSource, DataSourceError, HostView, LookupKey};
pub use hub::{Subscription, SubscriptionError, DEFAULT_SUBSCRIBER_BUFFER, MAX_SUBSCRIBER_BYTES};
pub use metrics::{Format as MetricsFormat, Metrics};
pub use namespaces::Namespaces;
pub use pipeline::{Agent, AgentConfig, AgentError, PinConfig, SourceChoice, WatchedTree};
