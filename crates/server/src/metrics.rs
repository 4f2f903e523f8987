//! The coordinator's Prometheus metrics, served as OpenMetrics text on `GET /metrics` by
//! [`serve_metrics`] (a separate plain-HTTP port, as Prometheus scrapes it; it carries no
//! secret and no figure derived from a record, only counts of the coordinator's own work).
//!
//! Labels are bounded sets chosen by this crate (a refusal's reason is a fixed category, never
//! a message text), so a hostile site cannot blow up the number of series.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: &'static str,
}

/// Every metric the coordinator exports. Cheap to clone (all handles share their values).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    rounds: Counter,
    round_seconds: Histogram,
    sites_connected: Gauge,
    jobs_running: Gauge,
    jobs_submitted: Counter,
    jobs_ended: Family<State, Counter>,
    bytes_in: Counter,
    bytes_out: Counter,
    refusals: Family<Reason, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("fedcare");
        let rounds = Counter::default();
        // Rounds take from a fraction of a second (simulation) to hours (large models, slow
        // sites): 0.05 s to about 28 h in factors of 4.
        let round_seconds = Histogram::new(exponential_buckets(0.05, 4.0, 11));
        let sites_connected = Gauge::default();
        let jobs_running = Gauge::default();
        let jobs_submitted = Counter::default();
        let jobs_ended = Family::<State, Counter>::default();
        let bytes_in = Counter::default();
        let bytes_out = Counter::default();
        let refusals = Family::<Reason, Counter>::default();
        registry.register("rounds_completed", "Training rounds completed, over all jobs", rounds.clone());
        registry.register("round_duration_seconds", "Wall time of each completed round, from its start to its evaluation", round_seconds.clone());
        registry.register("sites_connected", "Site agents connected now", sites_connected.clone());
        registry.register("jobs_running", "Jobs running now", jobs_running.clone());
        registry.register("jobs_submitted", "Jobs accepted", jobs_submitted.clone());
        registry.register("jobs_ended", "Jobs ended, by how (finished, failed, cancelled)", jobs_ended.clone());
        registry.register("site_bytes_received", "Bytes of site replies received (protobuf encoding)", bytes_in.clone());
        registry.register("site_bytes_sent", "Bytes of tasks sent to sites (protobuf encoding)", bytes_out.clone());
        registry.register("refusals", "Requests refused, by reason", refusals.clone());
        Metrics {
            registry: Arc::new(registry),
            rounds,
            round_seconds,
            sites_connected,
            jobs_running,
            jobs_submitted,
            jobs_ended,
            bytes_in,
            bytes_out,
            refusals,
        }
    }

    pub fn round_completed(&self, duration_ms: u64) {
        self.rounds.inc();
        self.round_seconds.observe(duration_ms as f64 / 1000.0);
    }

    pub fn sites_connected(&self, n: usize) {
        self.sites_connected.set(n as i64);
    }

    pub fn job_submitted(&self) {
        self.jobs_submitted.inc();
        self.jobs_running.inc();
    }

    /// A job left the running state; `state` is `finished`, `failed` or `cancelled`.
    pub fn job_ended(&self, state: &'static str) {
        self.jobs_ended.get_or_create(&State { state }).inc();
        self.jobs_running.dec();
    }

    /// Jobs resumed at start-up count as running.
    pub fn jobs_resumed(&self, n: usize) {
        self.jobs_running.inc_by(n as i64);
    }

    pub fn received(&self, bytes: usize) {
        self.bytes_in.inc_by(bytes as u64);
    }

    pub fn sent(&self, bytes: usize) {
        self.bytes_out.inc_by(bytes as u64);
    }

    /// A refused request. `reason` is one of a fixed set of categories (see the callers).
    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&Reason { reason }).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` (and `GET /healthz`, plain "ok") on `listener` over HTTP/1.1 until
/// `shutdown` completes. Any other path is 404; any other method 405.
pub async fn serve_metrics(listener: TcpListener, metrics: Metrics, shutdown: impl Future<Output = ()> + Send) -> std::io::Result<()> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Method, Response, StatusCode};

    let accept = async {
        loop {
            let (stream, peer) = listener.accept().await?;
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let (status, ctype, body) = match (req.method(), req.uri().path()) {
                            (&Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, metrics.encode()),
                            (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
                            (&Method::GET, _) => (StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics\n".to_owned()),
                            _ => (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".to_owned()),
                        };
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() = status;
                        if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
                            response.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
                        }
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                    tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
                }
            });
        }
    };
    tokio::select! {
        r = accept => r,
        () = shutdown => Ok(()),
    }
}

/// Binds `addr` for [`serve_metrics`]; returns the listener and its real address.
pub async fn bind_metrics(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_metric_and_moves() {
        let m = Metrics::new();
        let before = m.encode();
        assert!(before.contains("fedcare_rounds_completed_total 0"), "{before}");
        m.round_completed(1500);
        m.sites_connected(4);
        m.refused("wrong_round");
        m.refused("wrong_round");
        m.received(100);
        m.sent(250);
        m.job_submitted();
        m.job_ended("finished");
        let after = m.encode();
        for line in [
            "fedcare_rounds_completed_total 1",
            "fedcare_round_duration_seconds_count 1",
            "fedcare_round_duration_seconds_sum 1.5",
            "fedcare_sites_connected 4",
            "fedcare_refusals_total{reason=\"wrong_round\"} 2",
            "fedcare_site_bytes_received_total 100",
            "fedcare_site_bytes_sent_total 250",
            "fedcare_jobs_submitted_total 1",
            "fedcare_jobs_ended_total{state=\"finished\"} 1",
            "fedcare_jobs_running 0",
        ] {
            assert!(after.lines().any(|l| l == line), "missing {line:?} in\n{after}");
        }
        assert!(after.ends_with("# EOF\n"));
    }
}
