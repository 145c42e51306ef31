//! ctwatch's local API (`proto/ctwatch/v1/ctwatch.proto`).
//!
//! - [`pb`]: the generated messages, client and server traits.
//! - [`convert`]: data source records and events to and from their messages.
//! - [`server`]: the gRPC service over a [`ctwatch_agent::DataSource`], on a unix socket or TCP.
//! - [`watch`]: Watch served with each event encoded once for every client.
//! - [`client`]: a client connected over a unix socket, and the standard health check.
//! - [`metrics_endpoint`]: Prometheus text over HTTP.

pub mod client;
pub mod convert;
pub mod metrics_endpoint;
pub mod replay;
pub mod server;
pub mod watch;

/// The code generated from the `.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("ctwatch.v1");
}

/// The encoded `FileDescriptorSet` of `ctwatch.proto` (with its imports), for
/// gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ctwatch_descriptor.bin"));

/// The full gRPC name of the containers service (`ctwatch.v1.Containers`), as health checks name it.
pub const SERVICE_NAME: &str = "ctwatch.v1.Containers";

/// The socket `ctwatch serve` listens on by default.
pub const DEFAULT_SOCKET: &str = "/run/ctwatch/ctwatch.sock";

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn file_descriptor_set_describes_the_service() {
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).expect("a FileDescriptorSet");
        let file = set.file.iter().find(|f| f.name() == "ctwatch/v1/ctwatch.proto").expect("ctwatch.proto in the set");
        assert_eq!(file.package(), "ctwatch.v1");
        let service = file.service.iter().find(|s| s.name() == "Containers").expect("the Containers service");
        assert!(service.method.iter().any(|m| m.name() == "Watch"), "no Watch in {:?}", service.method);
    }
}
