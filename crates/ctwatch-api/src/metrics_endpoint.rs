//! Serves the agent's metrics as Prometheus text over HTTP (`GET /metrics`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use ctwatch_agent::Metrics;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info};

/// Answers `GET /metrics` (and `/`) on `listener` until `shutdown` completes.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>, shutdown: impl Future<Output = ()>) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics on http://{addr}/metrics");
    }
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!("metrics: accept failed: {e}");
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(answer(&request, &metrics)) }
            });
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
            {
                debug!("metrics: connection ended: {e}");
            }
        });
    }
}

fn answer(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let mut response = match (request.method().as_str(), request.uri().path()) {
        ("GET", "/metrics" | "/") => Response::new(Full::new(Bytes::from(metrics.encode()))),
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"not found: try GET /metrics\n")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
