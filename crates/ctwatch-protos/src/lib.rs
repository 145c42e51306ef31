//! gRPC clients for the Kubernetes CRI and containerd's API, generated at
//! build time from the `.proto` files vendored in `proto/third_party` (see its
//! README for where each came from) by protox and tonic-prost-build: no
//! `protoc` is needed.
//!
//! - [`cri::v1`]: the CRI (`runtime.v1`), e.g. `RuntimeServiceClient`.
//! - [`containerd`]: containerd's containers, images, namespaces, version,
//!   tasks and events services, by package, and all four together in
//!   [`containerd::services::v1`].
//! - [`connect`]: a channel to a gRPC server on a unix socket.

#![warn(missing_docs)]

use std::path::Path;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// The Kubernetes Container Runtime Interface.
pub mod cri {
    /// CRI v1 (package `runtime.v1`): messages and the runtime and image service clients.
    #[allow(missing_docs, clippy::all, rustdoc::all)]
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}

/// containerd's API (its modules follow the protobuf packages, as the generated code expects).
pub mod containerd {
    /// Shared types (package `containerd.types`).
    #[allow(missing_docs, clippy::all, rustdoc::all)]
    pub mod types {
        tonic::include_proto!("containerd.types");
    }

    /// Task types (package `containerd.v1.types`): a process's status and exit.
    pub mod v1 {
        /// Package `containerd.v1.types`.
        #[allow(missing_docs, clippy::all, rustdoc::all)]
        pub mod types {
            tonic::include_proto!("containerd.v1.types");
        }
    }

    /// The events containerd publishes (package `containerd.events`), e.g. `TaskExit` on `/tasks/exit`.
    #[allow(missing_docs, clippy::all, rustdoc::all)]
    pub mod events {
        tonic::include_proto!("containerd.events");
    }

    /// containerd's services.
    pub mod services {
        /// The containers service.
        pub mod containers {
            /// Package `containerd.services.containers.v1`.
            #[allow(missing_docs, clippy::all, rustdoc::all)]
            pub mod v1 {
                tonic::include_proto!("containerd.services.containers.v1");
            }
        }

        /// The images service.
        pub mod images {
            /// Package `containerd.services.images.v1`.
            #[allow(missing_docs, clippy::all, rustdoc::all)]
            pub mod v1 {
                tonic::include_proto!("containerd.services.images.v1");
            }
        }

        /// The namespaces service.
        pub mod namespaces {
            /// Package `containerd.services.namespaces.v1`.
            #[allow(missing_docs, clippy::all, rustdoc::all)]
            pub mod v1 {
                tonic::include_proto!("containerd.services.namespaces.v1");
            }
        }

        /// The tasks service (a container's running or stopped process).
        pub mod tasks {
            /// Package `containerd.services.tasks.v1`.
            #[allow(missing_docs, clippy::all, rustdoc::all)]
            pub mod v1 {
                tonic::include_proto!("containerd.services.tasks.v1");
            }
        }

        /// The events service (subscribe to what containerd publishes).
        pub mod events {
            /// Package `containerd.services.events.v1`.
            #[allow(missing_docs, clippy::all, rustdoc::all)]
            pub mod v1 {
                tonic::include_proto!("containerd.services.events.v1");
            }
        }

        /// The version service.
        pub mod version {
            /// Package `containerd.services.version.v1`.
            #[allow(missing_docs, clippy::all, rustdoc::all)]
            pub mod v1 {
                tonic::include_proto!("containerd.services.version.v1");
            }
        }

        /// The four services' messages and clients in one module, as the
        /// `containerd-client` crate lays them out.
        pub mod v1 {
            pub use super::containers::v1::*;
            pub use super::images::v1::*;
            pub use super::namespaces::v1::*;
            pub use super::version::v1::*;
        }
    }
}

/// A channel to the gRPC server listening on the unix socket `path` (the
/// connection is made before this returns).
pub async fn connect(path: impl AsRef<Path>) -> Result<Channel, tonic::transport::Error> {
    let path = path.as_ref().to_path_buf();
    // The URI is required by the API but unused: the connector dials the socket.
    Endpoint::from_static("http://[::]")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
}
