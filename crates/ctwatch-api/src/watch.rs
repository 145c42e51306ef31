//! Watch as the socket serves it: messages encoded before they reach the
//! connection, so that an event going to many clients is encoded once
//! ([`ctwatch_agent::hub::SharedEvent::encoded`]) and each client's stream
//! only copies its bytes into the HTTP/2 frame.
//!
//! [`ContainersApi`] is the containers service as served: Watch answered
//! here with [`EncodedCodec`], every other method by the generated server.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes};
use ctwatch::ContainerEvent;
use ctwatch_agent::{DataSource, Subscription};
use prost::Message;
use tokio_stream::Stream;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::{Grpc, NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};
use tonic_prost::{ProstCodec, ProstDecoder};
use tracing::{debug, warn};

use crate::convert::{self, event_message};
use crate::pb;
use crate::pb::containers_server::ContainersServer;
use crate::pb::watch_response::Item;
use crate::server::ContainersService;

/// The path of the Watch method.
const WATCH_PATH: &str = "/ctwatch.v1.Containers/Watch";

/// How long a Watch client may leave its queued events unread before it is
/// dropped (its queue let go at once, its stream ended).
pub const STALLED_CLIENT: Duration = Duration::from_secs(10);

/// A Watch stream, its messages encoded: the current containers, `synced`,
/// then each event as the hub shares it (encoded by the first client to
/// send it). A client that falls behind gets RESOURCE_EXHAUSTED next, its
/// queue let go; one that leaves queued events unread for
/// [`STALLED_CLIENT`] is dropped (a watchdog task lets its queue go and the
/// stream ends); the stream ends when the agent stops.
pub struct EncodedWatchStream {
    current: std::vec::IntoIter<ContainerEvent>,
    /// `synced` with the count of current containers, until sent.
    synced: Option<u32>,
    /// `None` once the stream has ended (or the watchdog dropped the client).
    subscription: Arc<Mutex<Option<Subscription>>>,
    /// Messages taken so far: the watchdog's sign of progress.
    taken: Arc<AtomicU64>,
    data_source: DataSource,
    /// A replay from the journal (`after_seq`): its messages instead of the hub's.
    replay: Option<tokio::sync::mpsc::Receiver<Result<EncodedMessage, Status>>>,
}

impl EncodedWatchStream {
    /// The stream of `subscription` (its current state skipped if
    /// `skip_current`), with its watchdog (so: inside a tokio runtime).
    pub fn new(mut subscription: Subscription, data_source: DataSource, skip_current: bool) -> Self {
        let current = if skip_current { Vec::new() } else { subscription.take_current() };
        let synced = Some(current.len() as u32);
        let subscription = Arc::new(Mutex::new(Some(subscription)));
        let taken = Arc::new(AtomicU64::new(0));
        tokio::spawn(watchdog(Arc::downgrade(&subscription), taken.clone(), STALLED_CLIENT));
        EncodedWatchStream { current: current.into_iter(), synced, subscription, taken, data_source, replay: None }
    }

    /// The stream of a replay from the journal (see [`crate::replay`]).
    pub fn replaying(
        replay: tokio::sync::mpsc::Receiver<Result<EncodedMessage, Status>>,
        data_source: DataSource,
    ) -> Self {
        EncodedWatchStream {
            current: Vec::new().into_iter(),
            synced: None,
            subscription: Arc::new(Mutex::new(None)),
            taken: Arc::new(AtomicU64::new(0)),
            data_source,
            replay: Some(replay),
        }
    }
}

fn lock(subscription: &Mutex<Option<Subscription>>) -> MutexGuard<'_, Option<Subscription>> {
    subscription.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drops the subscription of a client that took nothing for `stalled` while
/// events were queued for it; ends with the stream.
async fn watchdog(subscription: Weak<Mutex<Option<Subscription>>>, taken: Arc<AtomicU64>, stalled: Duration) {
    let mut seen = taken.load(Ordering::Acquire);
    loop {
        tokio::time::sleep(stalled).await;
        let Some(subscription) = subscription.upgrade() else { return };
        let mut guard = lock(&subscription);
        let Some(queued) = guard.as_ref().map(Subscription::queued) else { return };
        let now = taken.load(Ordering::Acquire);
        if now == seen && queued > 0 {
            debug!(queued, "a Watch client stopped reading; dropped");
            *guard = None;
            return;
        }
        seen = now;
    }
}

impl Stream for EncodedWatchStream {
    type Item = Result<EncodedMessage, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(replay) = &mut this.replay {
            return replay.poll_recv(cx);
        }
        if let Some(event) = this.current.next() {
            this.taken.fetch_add(1, Ordering::Release);
            let message = event_message(&event, this.data_source.record_cached(&event.container));
            return Poll::Ready(Some(Ok(EncodedMessage::of(&pb::WatchResponse {
                item: Some(Item::Current(message)),
            }))));
        }
        if let Some(current_count) = this.synced.take() {
            this.taken.fetch_add(1, Ordering::Release);
            let synced = pb::WatchResponse { item: Some(Item::Synced(pb::Synced { current_count })) };
            return Poll::Ready(Some(Ok(EncodedMessage::of(&synced))));
        }
        let mut guard = lock(&this.subscription);
        let Some(subscription) = guard.as_mut() else { return Poll::Ready(None) };
        match subscription.poll_next_shared(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(shared))) => {
                drop(guard);
                this.taken.fetch_add(1, Ordering::Release);
                let ds = &this.data_source;
                let bytes = shared.encoded(|event| {
                    let message = event_message(event, ds.record_cached(&event.container));
                    EncodedMessage::of(&pb::WatchResponse { item: Some(Item::Event(message)) }).into_bytes()
                });
                Poll::Ready(Some(Ok(EncodedMessage(bytes))))
            }
            Poll::Ready(Ok(None)) => {
                *guard = None; // the agent is stopping
                Poll::Ready(None)
            }
            Poll::Ready(Err(lagged)) => {
                warn!("a Watch client fell behind and was dropped: {lagged}");
                // Its queue goes now; the status follows what is already on its way.
                *guard = None;
                Poll::Ready(Some(Err(convert::subscription_status(lagged))))
            }
        }
    }
}

/// One `WatchResponse`, already protobuf-encoded (the bytes shared, not copied, by clones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedMessage(Bytes);

impl EncodedMessage {
    /// Encodes `response`.
    pub fn of(response: &pb::WatchResponse) -> Self {
        EncodedMessage(Bytes::from(response.encode_to_vec()))
    }

    /// A message from bytes a `WatchResponse` was encoded to.
    pub fn from_bytes(bytes: Bytes) -> Self {
        EncodedMessage(bytes)
    }

    /// The encoded bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The message decoded back.
    pub fn decode(&self) -> Result<pb::WatchResponse, Status> {
        pb::WatchResponse::decode(self.0.as_ref()).map_err(|e| Status::internal(format!("bad Watch message: {e}")))
    }
}

/// Decodes `WatchRequest`s with prost and writes [`EncodedMessage`]s as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct EncodedCodec;

/// Writes an [`EncodedMessage`]'s bytes (tonic adds the gRPC frame header).
#[derive(Debug, Clone, Copy, Default)]
pub struct EncodedEncoder;

impl Encoder for EncodedEncoder {
    type Item = EncodedMessage;
    type Error = Status;

    fn encode(&mut self, item: EncodedMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item.0);
        Ok(())
    }
}

impl Codec for EncodedCodec {
    type Encode = EncodedMessage;
    type Decode = pb::WatchRequest;
    type Encoder = EncodedEncoder;
    type Decoder = ProstDecoder<pb::WatchRequest>;

    fn encoder(&mut self) -> EncodedEncoder {
        EncodedEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<pb::WatchRequest, pb::WatchRequest>::raw_decoder(BufferSettings::default())
    }
}

/// The containers service as served on the socket: Watch with messages
/// encoded once per event, the other methods by the generated server.
#[derive(Clone)]
pub struct ContainersApi {
    service: ContainersService,
    generated: ContainersServer<ContainersService>,
}

impl ContainersApi {
    /// Serves `service`.
    pub fn new(service: ContainersService) -> Self {
        ContainersApi { generated: ContainersServer::new(service.clone()), service }
    }
}

impl NamedService for ContainersApi {
    const NAME: &'static str = crate::SERVICE_NAME;
}

/// Watch for [`Grpc::server_streaming`].
struct WatchMethod(ContainersService);

impl ServerStreamingService<pb::WatchRequest> for WatchMethod {
    type Response = EncodedMessage;
    type ResponseStream = EncodedWatchStream;
    type Future = BoxFuture<Response<EncodedWatchStream>, Status>;

    fn call(&mut self, request: Request<pb::WatchRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.watch_encoded(request.into_inner()).await.map(Response::new) })
    }
}

impl<B> Service<http::Request<B>> for ContainersApi
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != WATCH_PATH {
            return self.generated.call(request);
        }
        let method = WatchMethod(self.service.clone());
        Box::pin(async move { Ok(Grpc::new(EncodedCodec).server_streaming(method, request).await) })
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use ctwatch::{Container, EventKind, Runtime};
    use ctwatch_agent::hub::Hub;
    use ctwatch_agent::Metrics;

    use super::*;

    fn event(i: u64) -> ContainerEvent {
        ContainerEvent {
            time: SystemTime::now(),
            kind: EventKind::ContainerCreate,
            cgroup_id: i,
            container: Arc::new(Container::new(format!("{i:064x}"), Runtime::Docker)),
            kernel_time: None,
            enriched: None,
            seq: 0,
            late: false,
        }
    }

    #[tokio::test]
    async fn the_watchdog_drops_a_client_that_leaves_its_queue_unread_and_only_that_one() {
        let stalled = Duration::from_millis(50);
        let hub = Hub::new(Arc::new(Metrics::new()));
        let idle = Arc::new(Mutex::new(Some(hub.subscribe(16))));
        let reading = Arc::new(Mutex::new(Some(hub.subscribe(16))));
        let stuck = Arc::new(Mutex::new(Some(hub.subscribe(16))));
        let reading_taken = Arc::new(AtomicU64::new(0));
        let watchdogs = [
            tokio::spawn(watchdog(Arc::downgrade(&stuck), Arc::new(AtomicU64::new(0)), stalled)),
            tokio::spawn(watchdog(Arc::downgrade(&reading), reading_taken.clone(), stalled)),
            tokio::spawn(watchdog(Arc::downgrade(&idle), Arc::new(AtomicU64::new(0)), stalled)),
        ];
        // Nothing queued for `idle` (its events are taken at once); `reading` takes one
        // event per period, leaving the rest queued; `stuck` takes none.
        for i in 0..6 {
            hub.publish(&[event(i), event(100 + i)]);
            while lock(&idle).as_mut().is_some_and(|s| s.try_next().is_some()) {}
            if lock(&reading).as_mut().is_some_and(|s| s.try_next().is_some()) {
                reading_taken.fetch_add(1, Ordering::Release);
            }
            tokio::time::sleep(stalled / 2).await;
        }
        assert!(lock(&stuck).is_none(), "the client that read nothing was dropped");
        assert!(lock(&reading).as_ref().is_some_and(|s| s.queued() > 0), "the slow reader was kept");
        assert!(lock(&idle).is_some(), "the idle client was kept");
        assert!(watchdogs[0].is_finished());
        drop((idle, reading));
        for w in watchdogs {
            tokio::time::timeout(Duration::from_secs(5), w).await.expect("a watchdog ends with its stream").unwrap();
        }
    }

    #[test]
    fn an_encoded_message_is_the_message_protobuf_encoded() {
        let response =
            pb::WatchResponse { item: Some(pb::watch_response::Item::Synced(pb::Synced { current_count: 42 })) };
        let encoded = EncodedMessage::of(&response);
        assert_eq!(encoded.decode().unwrap(), response);
        assert_eq!(encoded.clone().into_bytes(), Bytes::from(response.encode_to_vec()));
    }
}
