//! The gRPC service over a [`DataSource`], and the unix socket it listens on.

use std::fs::{self, File};
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use ctwatch_agent::{DataSource, DataSourceError};
use thiserror::Error;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status};
use tracing::{debug, info, warn};

use crate::convert::{self, container_message};
use crate::pb;
use crate::pb::containers_server::Containers;
pub use crate::watch::{ContainersApi, EncodedMessage, EncodedWatchStream};

/// How long a request waits for the scan at start before it is answered anyway.
const SCAN_WAIT: Duration = Duration::from_secs(60);

/// The most bytes one ReadFile answer carries.
pub const MAX_READ_BYTES: usize = 1 << 20;

/// Why the API could not be served.
#[derive(Debug, Error)]
pub enum ServeError {
    /// Another `ctwatch serve` holds the socket.
    #[error("another ctwatch serve is running on {0} (stop it first, or pass a different --socket)")]
    AlreadyServing(PathBuf),
    /// The socket could not be set up.
    #[error("cannot set up the socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("the API server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not read the compiled `.proto` descriptors.
    #[error("cannot set up gRPC reflection: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),
}

/// The bound unix socket; removed (with its lock file) when dropped.
pub struct UnixSocket {
    path: PathBuf,
    lock_path: PathBuf,
    listener: Option<std::os::unix::net::UnixListener>,
    _lock: File,
}

impl UnixSocket {
    /// Binds `path` with `mode` (for example 0o660) and group `gid` (if given).
    /// A lock file next to it makes a second server on the same path fail
    /// with [`ServeError::AlreadyServing`]; a stale socket left by a killed
    /// server is replaced.
    pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> Result<Self, ServeError> {
        let err = |source| ServeError::Socket { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            if !dir.exists() {
                fs::create_dir_all(dir).map_err(err)?;
                fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(err)?;
            }
        }
        let mut lock_name = path.as_os_str().to_owned();
        lock_name.push(".lock");
        let lock_path = PathBuf::from(lock_name);
        let lock = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(err)?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(ServeError::AlreadyServing(path.to_path_buf()));
        }
        match fs::remove_file(path) {
            Ok(()) => debug!(path = %path.display(), "removed a stale socket"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let listener = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(err)?;
        }
        listener.set_nonblocking(true).map_err(err)?;
        Ok(UnixSocket { path: path.to_path_buf(), lock_path, listener: Some(listener), _lock: lock })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn take_listener(&mut self) -> Option<std::os::unix::net::UnixListener> {
        self.listener.take()
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// Each method and the status codes it answers in the normal course of things
/// (its request counters exist from the start).
const EXPECTED_CODES: &[(&str, &[Code])] = &[
    ("Get", &[Code::Ok, Code::NotFound, Code::InvalidArgument]),
    ("GetByCgroupId", &[Code::Ok, Code::NotFound]),
    ("GetByPid", &[Code::Ok, Code::NotFound]),
    ("GetByMountNs", &[Code::Ok, Code::NotFound]),
    ("List", &[Code::Ok, Code::InvalidArgument]),
    ("Watch", &[Code::Ok]),
    ("ResolvePath", &[Code::Ok, Code::NotFound, Code::InvalidArgument]),
    ("ReadFile", &[Code::Ok, Code::NotFound, Code::InvalidArgument]),
    ("History", &[Code::Ok, Code::NotFound, Code::InvalidArgument]),
    ("ListRemoved", &[Code::Ok]),
];

/// A status code's canonical gRPC name (`OK`, `NOT_FOUND`...), as gRPC's own
/// metrics and tools spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct ContainersService {
    data_source: DataSource,
    default_buffer: usize,
    max_bytes: usize,
    /// The journal's containers, for History and ListRemoved.
    known: std::sync::Arc<crate::replay::KnownIndex>,
}

impl ContainersService {
    /// A service answering from `data_source`; Watch clients get `default_buffer` events of slack.
    /// The request counters of every method with the codes it commonly answers
    /// are made (at 0) here, so that `rate()` sees their first increments.
    pub fn new(data_source: DataSource, default_buffer: usize) -> Self {
        for (method, codes) in EXPECTED_CODES {
            for code in *codes {
                data_source.metrics().expect_api_request(method, code_name(*code));
            }
        }
        ContainersService {
            data_source,
            default_buffer,
            max_bytes: ctwatch_agent::MAX_SUBSCRIBER_BYTES,
            known: std::sync::Arc::default(),
        }
    }

    /// Drops a Watch client once its queued events hold more than `bytes`
    /// bytes (default and most: [`ctwatch_agent::MAX_SUBSCRIBER_BYTES`]).
    pub fn with_client_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    fn counted<T>(&self, method: &'static str, result: Result<T, Status>) -> Result<Response<T>, Status> {
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        self.data_source.metrics().api_request(method, code_name(code));
        result.map(Response::new)
    }

    /// Waits (off the async threads) until the scan at start is done, so that
    /// no answer is given from a half-filled store; at most [`SCAN_WAIT`].
    async fn scanned(&self) {
        if self.data_source.wait_scanned(Duration::ZERO) {
            return;
        }
        let ds = self.data_source.clone();
        let _ = tokio::task::spawn_blocking(move || ds.wait_scanned(SCAN_WAIT)).await;
    }

    /// Runs a lookup that may read /proc off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(DataSource) -> Result<T, DataSourceError> + Send + 'static,
    ) -> Result<T, Status> {
        let ds = self.data_source.clone();
        match tokio::task::spawn_blocking(move || f(ds)).await {
            Ok(result) => result.map_err(convert::status),
            Err(e) => Err(Status::internal(format!("lookup failed: {e}"))),
        }
    }
}

impl ContainersService {
    /// Watch: the current containers, `synced`, then every event, each
    /// message already encoded. An event is encoded once for every client
    /// (the hub shares it, with its encoding); only a client's current state
    /// and `synced` are its own. The stream reads the hub's queue itself, so
    /// the connection takes every message already queued in one write.
    pub async fn watch_encoded(&self, request: pb::WatchRequest) -> Result<EncodedWatchStream, Status> {
        self.scanned().await;
        if request.after_seq.is_some() || request.since_unix_nano.is_some() {
            let Some(journal) = self.data_source.journal().cloned() else {
                let status =
                    Status::failed_precondition("the agent keeps no journal (--no-journal): nothing to replay");
                return self.counted("Watch", Err(status)).map(Response::into_inner);
            };
            let range = match crate::replay::ReplayRange::of(&journal, &request) {
                Ok(range) => range.unwrap_or_default(),
                Err(status) => return self.counted("Watch", Err(status)).map(Response::into_inner),
            };
            let rx = crate::replay::replay(journal, range);
            let stream = EncodedWatchStream::replaying(rx, self.data_source.clone());
            return self.counted("Watch", Ok(stream)).map(Response::into_inner);
        }
        let buffer = if request.buffer == 0 { self.default_buffer } else { request.buffer as usize };
        let subscription = self.data_source.subscribe_bounded(buffer, self.max_bytes);
        let stream = EncodedWatchStream::new(subscription, self.data_source.clone(), request.skip_current);
        self.counted("Watch", Ok(stream)).map(Response::into_inner)
    }
}

#[tonic::async_trait]
impl Containers for ContainersService {
    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::Container>, Status> {
        self.scanned().await;
        let id = request.into_inner().id;
        let result = if id.is_empty() {
            Err(Status::invalid_argument("give a container ID or prefix"))
        } else {
            // A map lookup (plus, once per container, a few /proc reads): answered inline.
            self.data_source.get(&id).map(container_message).map_err(convert::status)
        };
        self.counted("Get", result)
    }

    async fn get_by_cgroup_id(
        &self,
        request: Request<pb::GetByCgroupIdRequest>,
    ) -> Result<Response<pb::Container>, Status> {
        self.scanned().await;
        let id = request.into_inner().cgroup_id;
        let result = self.data_source.get_by_cgroup_id(id).map(container_message).map_err(convert::status);
        self.counted("GetByCgroupId", result)
    }

    async fn get_by_pid(&self, request: Request<pb::GetByPidRequest>) -> Result<Response<pb::Container>, Status> {
        self.scanned().await;
        let pid = request.into_inner().pid;
        let result = self.blocking(move |ds| ds.get_by_pid(pid)).await.map(container_message);
        self.counted("GetByPid", result)
    }

    async fn get_by_mount_ns(
        &self,
        request: Request<pb::GetByMountNsRequest>,
    ) -> Result<Response<pb::Container>, Status> {
        self.scanned().await;
        let ns = request.into_inner().mount_ns;
        let result = self.blocking(move |ds| ds.get_by_mount_ns(ns)).await.map(container_message);
        self.counted("GetByMountNs", result)
    }

    async fn list(&self, request: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        self.scanned().await;
        let result = match convert::filter_from_request(request.get_ref()) {
            Ok(filter) => self
                .blocking(move |ds| Ok(ds.list(&filter)))
                .await
                .map(|records| pb::ListResponse { containers: records.into_iter().map(container_message).collect() }),
            Err(status) => Err(status),
        };
        self.counted("List", result)
    }

    async fn history(&self, request: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        let key = request.into_inner().container;
        let result = match self.data_source.journal().cloned() {
            None => Err(Status::failed_precondition("the agent keeps no journal (--no-journal)")),
            Some(_) if key.is_empty() => Err(Status::invalid_argument("give a container ID, prefix or name")),
            Some(journal) => {
                let known = self.known.clone();
                tokio::task::spawn_blocking(move || known.history(&journal, &key))
                    .await
                    .unwrap_or_else(|e| Err(Status::internal(format!("history failed: {e}"))))
            }
        };
        self.counted("History", result)
    }

    async fn list_removed(
        &self,
        _request: Request<pb::ListRemovedRequest>,
    ) -> Result<Response<pb::ListRemovedResponse>, Status> {
        let result = match self.data_source.journal().cloned() {
            None => Err(Status::failed_precondition("the agent keeps no journal (--no-journal)")),
            Some(journal) => {
                let known = self.known.clone();
                tokio::task::spawn_blocking(move || known.list_removed(&journal))
                    .await
                    .unwrap_or_else(|e| Err(Status::internal(format!("list failed: {e}"))))
            }
        };
        self.counted("ListRemoved", result)
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

    /// The same stream as [`ContainersService::watch_encoded`], each message
    /// decoded back (the socket never comes here: [`ContainersApi`] sends the
    /// encoded messages as they are).
    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let stream = self.watch_encoded(request.into_inner()).await?;
        let decoded = stream.map(|item| item.and_then(|m| m.decode()));
        Ok(Response::new(Box::pin(decoded)))
    }

    async fn resolve_path(
        &self,
        request: Request<pb::ResolvePathRequest>,
    ) -> Result<Response<pb::ResolvePathResponse>, Status> {
        self.scanned().await;
        let pb::ResolvePathRequest { container, path } = request.into_inner();
        let result =
            self.blocking(move |ds| ds.resolve_path(&container, &path)).await.map(|r| pb::ResolvePathResponse {
                container_path: r.container_path.to_string_lossy().into_owned(),
                host_path: r.host_path.to_string_lossy().into_owned(),
                dev: r.dev,
                ino: r.ino,
            });
        self.counted("ResolvePath", result)
    }

    async fn read_file(&self, request: Request<pb::ReadFileRequest>) -> Result<Response<pb::ReadFileResponse>, Status> {
        self.scanned().await;
        let pb::ReadFileRequest { container, path, offset, max_bytes } = request.into_inner();
        let max = match usize::try_from(max_bytes) {
            Ok(0) | Err(_) => MAX_READ_BYTES,
            Ok(n) => n.min(MAX_READ_BYTES),
        };
        let result = self
            .blocking(move |ds| {
                let resolved = ds.resolve_path(&container, &path)?;
                let chunk = resolved.read(offset, max)?;
                Ok(pb::ReadFileResponse {
                    data: chunk.data,
                    container_path: resolved.container_path.to_string_lossy().into_owned(),
                    size: chunk.size,
                    eof: chunk.eof,
                    dev: resolved.dev,
                    ino: resolved.ino,
                })
            })
            .await;
        self.counted("ReadFile", result)
    }
}

/// Whether the service answers yet: `grpc.health.v1.Health` reports
/// NOT_SERVING (for `""` and `ctwatch.v1.Containers`) until [`Readiness::set_serving`]
/// is called, for example once the scan at start is done.
#[derive(Clone)]
pub struct Readiness {
    reporter: tonic_health::server::HealthReporter,
}

impl Readiness {
    /// Marks the whole server and the containers service SERVING.
    pub async fn set_serving(&self) {
        for name in ["", crate::SERVICE_NAME] {
            self.reporter.set_service_status(name, tonic_health::ServingStatus::Serving).await;
        }
    }

    /// Marks them NOT_SERVING (the agent is stopping).
    pub async fn set_not_serving(&self) {
        for name in ["", crate::SERVICE_NAME] {
            self.reporter.set_service_status(name, tonic_health::ServingStatus::NotServing).await;
        }
    }
}

/// The standard services served next to ctwatch's own: health
/// (`grpc.health.v1.Health`) and server reflection (`grpc.reflection.v1` and
/// `v1alpha`, for `grpcurl list` and friends).
pub struct StandardServices {
    readiness: Readiness,
    routes: tonic::service::Routes,
}

impl StandardServices {
    /// Health (everything NOT_SERVING until [`Readiness::set_serving`]) and reflection.
    pub async fn new() -> Result<Self, ServeError> {
        let reporter = tonic_health::server::HealthReporter::new();
        let readiness = Readiness { reporter: reporter.clone() };
        readiness.set_not_serving().await;
        let health = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(reporter),
        );
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let routes = tonic::service::Routes::new(health)
            .add_service(reflection().build_v1().map_err(ServeError::Reflection)?)
            .add_service(reflection().build_v1alpha().map_err(ServeError::Reflection)?);
        Ok(StandardServices { readiness, routes })
    }

    /// The handle that flips health to SERVING.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }
}

/// Serves `service` and the [`StandardServices`] on the unix socket (and on
/// `tcp` when given) until `shutdown` completes.
pub async fn serve(
    service: ContainersService,
    standard: StandardServices,
    socket: &mut UnixSocket,
    tcp: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let path = socket.path().to_path_buf();
    let listener = socket.take_listener().ok_or_else(|| ServeError::Socket {
        path: path.clone(),
        source: io::Error::other("the socket was already served"),
    })?;
    let listener = tokio::net::UnixListener::from_std(listener)
        .map_err(|source| ServeError::Socket { path: path.clone(), source })?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let router = |service: ContainersService| {
        tonic::transport::Server::builder().add_routes(standard.routes.clone()).add_service(ContainersApi::new(service))
    };
    info!(socket = %path.display(), "API listening");
    let unix = router(service.clone())
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopped(stop_rx.clone()));
    match tcp {
        None => unix.await?,
        Some(tcp) => {
            if let Ok(addr) = tcp.local_addr() {
                warn!(%addr, "API also listening on TCP: anyone who can reach it can list this host's containers");
            }
            let tcp = router(service).serve_with_incoming_shutdown(TcpListenerStream::new(tcp), stopped(stop_rx));
            let (a, b) = tokio::join!(unix, tcp);
            a?;
            b?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_grpcs_canonical_ones() {
        let names: Vec<&str> = (0..=16).map(|i| code_name(Code::from_i32(i))).collect();
        assert_eq!(
            names,
            [
                "OK",
                "CANCELLED",
                "UNKNOWN",
                "INVALID_ARGUMENT",
                "DEADLINE_EXCEEDED",
                "NOT_FOUND",
                "ALREADY_EXISTS",
                "PERMISSION_DENIED",
                "RESOURCE_EXHAUSTED",
                "FAILED_PRECONDITION",
                "ABORTED",
                "OUT_OF_RANGE",
                "UNIMPLEMENTED",
                "INTERNAL",
                "UNAVAILABLE",
                "DATA_LOSS",
                "UNAUTHENTICATED",
            ]
        );
    }
}
