//! ctwatch's local API (`proto/ctwatch/v1/ctwatch.proto`).
//!
//! - [`pb`]: the generated messages, client and server traits.
//! - [`convert`]: data source records and events to and from their messages.
//! - [`server`]: the gRPC service over a [`ctwatch_agent::DataSource`], on a unix socket or TCP.
//! - [`client`]: a client connected over a unix socket.
//! - [`metrics_endpoint`]: Prometheus text over HTTP.

pub mod client;
pub mod convert;
pub mod metrics_endpoint;
pub mod server;

/// The code generated from the `.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("ctwatch.v1");
}

/// The encoded `FileDescriptorSet` of `ctwatch.proto` (with its imports), for
/// gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ctwatch_descriptor.bin"));

/// The socket `ctwatch serve` listens on by default.
pub const DEFAULT_SOCKET: &str = "/run/ctwatch/ctwatch.sock";
