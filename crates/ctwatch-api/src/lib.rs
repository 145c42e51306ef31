//! ctwatch's local API (`proto/ctwatch/v1/ctwatch.proto`).
//!
//! - [`pb`]: the generated messages, client and server traits.
//! - [`convert`]: data source records and events to and from their messages.
//! - [`server`]: the gRPC service over a [`ctwatch_agent::DataSource`], on a unix socket or TCP.
//! - [`client`]: a client connected over a unix socket, and the standard health check.
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

/// The encoded `FileDescriptorSet` of `ctwatch.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ctwatch_descriptor");

/// The full gRPC name of the containers service (`ctwatch.v1.Containers`), as health checks name it.
pub const SERVICE_NAME: &str = "ctwatch.v1.Containers";

/// The socket `ctwatch serve` listens on by default.
pub const DEFAULT_SOCKET: &str = "/run/ctwatch/ctwatch.sock";
