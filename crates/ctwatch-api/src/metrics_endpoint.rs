//! Serves the agent's metrics over HTTP: `GET /metrics` (and `HEAD`), in
//! OpenMetrics when the scraper's `Accept` asks for it, else in the Prometheus
//! text format 0.0.4.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE, VARY};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use ctwatch_agent::{Metrics, MetricsFormat};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Answers `/metrics` on `listener` until `shutdown` completes.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics on http://{addr}/metrics");
    }
    if let Err(e) = axum::serve(listener, router(metrics)).with_graceful_shutdown(shutdown).await {
        warn!("the metrics server failed: {e}");
    }
}

/// The routes: `GET`/`HEAD /metrics`, a short index at `/`; 404 elsewhere,
/// 405 (with `Allow`) for other methods.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route("/metrics", get(scrape)).route("/", get(index)).fallback(not_found).with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>, headers: HeaderMap) -> impl IntoResponse {
    let format = negotiate(&headers);
    ([(CONTENT_TYPE, format.content_type()), (VARY, "Accept")], metrics.encode(format))
}

async fn index() -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/plain; charset=utf-8")], "ctwatch: metrics at /metrics\n")
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, [(CONTENT_TYPE, "text/plain; charset=utf-8")], "not found: try GET /metrics\n")
}

/// The format a request's `Accept` headers prefer: OpenMetrics when they
/// accept `application/openmetrics-text` (version 1.0.0 or 0.0.1, or none
/// given) at least as much as the text format, else the text format (also
/// when nothing they list is offered, as Prometheus clients do).
pub fn negotiate(headers: &HeaderMap) -> MetricsFormat {
    let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
    let ranges = headers.get_all(ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','));
    for range in ranges {
        let Ok(mime) = range.trim().parse::<mime::Mime>() else { continue };
        let param = |name: &str| mime.get_param(name).map(|v| v.as_str().to_string());
        let q = param("q").and_then(|q| q.parse::<f32>().ok()).unwrap_or(1.0).clamp(0.0, 1.0);
        let version = param("version");
        let (ty, sub) = (mime.type_().as_str(), mime.subtype().as_str());
        let is = |t: &str, s: &str| ty.eq_ignore_ascii_case(t) && sub.eq_ignore_ascii_case(s);
        if is("application", "openmetrics-text") && matches!(version.as_deref(), None | Some("1.0.0" | "0.0.1")) {
            openmetrics = openmetrics.max(q);
        }
        let plain = is("text", "plain") && matches!(version.as_deref(), None | Some("0.0.4"));
        if plain || is("text", "*") || is("*", "*") {
            text = text.max(q);
        }
    }
    if openmetrics > 0.0 && openmetrics >= text {
        MetricsFormat::OpenMetrics
    } else {
        MetricsFormat::Text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format_for(accept: &[&str]) -> MetricsFormat {
        let mut headers = HeaderMap::new();
        for a in accept {
            headers.append(ACCEPT, a.parse().unwrap());
        }
        negotiate(&headers)
    }

    #[test]
    fn openmetrics_only_when_asked_for() {
        use MetricsFormat::{OpenMetrics, Text};
        // What Prometheus 2.x sends.
        let prometheus =
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                          text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(format_for(&[prometheus]), OpenMetrics);
        assert_eq!(format_for(&["application/openmetrics-text"]), OpenMetrics);
        assert_eq!(format_for(&["text/plain", "application/openmetrics-text; version=\"1.0.0\""]), OpenMetrics);
        assert_eq!(format_for(&[]), Text);
        assert_eq!(format_for(&["*/*"]), Text);
        assert_eq!(format_for(&["text/plain;version=0.0.4"]), Text);
        assert_eq!(format_for(&["application/openmetrics-text;q=0.2, text/plain;q=0.9"]), Text);
        assert_eq!(format_for(&["application/openmetrics-text;q=0"]), Text);
        assert_eq!(format_for(&["application/openmetrics-text;version=2.0.0"]), Text);
        assert_eq!(format_for(&["application/json"]), Text);
        assert_eq!(format_for(&["garbage;;;, application/openmetrics-text"]), OpenMetrics);
    }
}
