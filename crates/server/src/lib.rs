//! The coordinator's library: the gRPC services (site-facing and admin), the job report, and
//! the serve loop. The `coordinator` binary only parses arguments and calls [`serve`].
//!
//! Guarantees: the coordinator never connects to a site (sites dial out); a job is durable in
//! the state file before any site hears of it; every malformed or out-of-turn message gets a
//! gRPC error that says why, and changes nothing.

pub mod card;
pub mod client;
pub mod coordinator;
pub mod metrics;
pub mod report;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

pub use coordinator::{AdminApi, Auth, Coordinator, SiteApi};
use fedcare_proto::v1 as pb;
use fedcare_store::Store;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] fedcare_store::StoreError),
    #[error("cannot listen on {addr}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
    #[error("mutual TLS: {0}")]
    Tls(#[from] fedcare_pki::PkiError),
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    #[error("the coordinator's audit log {path}: {message}")]
    Audit { path: std::path::PathBuf, message: String },
}

/// How often the coordinator pings each connection (HTTP/2 keepalive).
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is dropped as lost.
pub const HEARTBEAT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// How the coordinator's connections are secured.
#[derive(Clone)]
pub enum Security {
    /// Mutual TLS: every connection presents a certificate from the federation's CA, not
    /// expired, not revoked; the coordinator knows each caller by its certificate. `crl_path`
    /// is re-read when it changes, so a revocation takes effect without a restart.
    MutualTls { tls: fedcare_pki::ServerTls, crl_path: Option<std::path::PathBuf> },
    /// No TLS and no authentication: a site is known by the name it sends. For development on
    /// one machine only.
    Plaintext,
}

/// Binds `addr` (port 0 picks a free one) and opens the state file; returns the listener's
/// real address, ready to hand to [`serve_on`].
pub async fn bind(addr: SocketAddr, state: &Path) -> Result<(TcpListener, SocketAddr, Coordinator), ServeError> {
    let store = Store::open(state)?;
    let listener = TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(|source| ServeError::Bind { addr, source })?;
    let coordinator = Coordinator::new(store)?;
    Ok((listener, local, coordinator))
}

/// Serves the site and admin services (and gRPC health) until `shutdown` completes.
pub async fn serve_on(
    listener: TcpListener,
    coordinator: Coordinator,
    security: Security,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let auth = match &security {
        Security::MutualTls { .. } => Auth::MutualTls,
        Security::Plaintext => Auth::Plaintext,
    };
    coordinator.set_mutual_tls(auth == Auth::MutualTls);
    // On shutdown, end the long-lived streams (sites' work, watchers' events): a graceful stop
    // waits for open streams, and SIGTERM from docker, systemd or Kubernetes would otherwise
    // wait until it became SIGKILL.
    let shutdown = {
        let c = coordinator.clone();
        async move {
            shutdown.await;
            c.shut_down();
        }
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<pb::site_service_server::SiteServiceServer<SiteApi>>().await;
    health.set_serving::<pb::admin_service_server::AdminServiceServer<AdminApi>>().await;
    let ticker = {
        let c = coordinator.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(coordinator::TICK);
            loop {
                interval.tick().await;
                c.tick();
            }
        })
    };
    // Server reflection (v1) for the coordinator's services and health, so `grpcurl list`
    // and `grpcurl describe` work without the .proto file.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fedcare_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let router = tonic::transport::Server::builder()
        // Heartbeat: HTTP/2 pings every 10 s; a site that does not answer within 20 s is
        // dropped (its work stream closes, it leaves its round as a dropout, `sites` shows it
        // as lost) instead of being waited for until a stage deadline.
        .http2_keepalive_interval(Some(HEARTBEAT_INTERVAL))
        .http2_keepalive_timeout(Some(HEARTBEAT_TIMEOUT))
        .tcp_keepalive(Some(HEARTBEAT_INTERVAL))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(pb::site_service_server::SiteServiceServer::new(SiteApi(coordinator.clone(), auth)))
        .add_service(pb::admin_service_server::AdminServiceServer::new(AdminApi(coordinator, auth)));
    let result = match security {
        Security::MutualTls { tls, crl_path } => {
            let watcher = crl_path.map(|path| tokio::spawn(watch_crl(tls.clone(), path)));
            // The TLS acceptor sets TCP_NODELAY on every accepted connection.
            let r = router.serve_with_incoming_shutdown(tls.incoming(listener), shutdown).await;
            if let Some(w) = watcher {
                w.abort();
            }
            r
        }
        // TCP_NODELAY: replies are small and each one unblocks a site; without it Nagle's
        // algorithm and the peer's delayed ACK hold every reply back about 40 ms.
        Security::Plaintext => router.serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown).await,
    };
    ticker.abort();
    Ok(result?)
}

/// Reloads the CRL whenever its file changes (checked every few seconds), so that revoking a
/// party shuts it out of new connections without restarting the coordinator. A CRL that does
/// not verify is ignored with an error in the log; the previous one stays in force.
async fn watch_crl(tls: fedcare_pki::ServerTls, path: std::path::PathBuf) {
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last = stamp(&path);
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(3));
    loop {
        interval.tick().await;
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        match std::fs::read_to_string(&path).map_err(|e| e.to_string()).and_then(|pem| tls.set_crl(&pem).map_err(|e| e.to_string())) {
            Ok(()) => tracing::info!(crl = %path.display(), "revocation list reloaded"),
            Err(e) => tracing::error!(crl = %path.display(), error = %e, "new revocation list refused; the previous one stays in force"),
        }
    }
}

/// [`bind`] then [`serve_on`], keeping the coordinator's audit log in `audit_log`, and serving
/// Prometheus metrics on `metrics` if given.
pub async fn serve(
    addr: SocketAddr,
    state: &Path,
    audit_log: &Path,
    security: Security,
    metrics: Option<SocketAddr>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (listener, local, coordinator) = bind(addr, state).await?;
    let metrics_task = match metrics {
        Some(addr) => {
            let (l, local) = metrics::bind_metrics(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
            tracing::info!(%local, "Prometheus metrics on http://{local}/metrics");
            let m = coordinator.metrics().clone();
            Some(tokio::spawn(async move {
                if let Err(e) = metrics::serve_metrics(l, m, std::future::pending()).await {
                    tracing::error!(error = %e, "the metrics endpoint stopped");
                }
            }))
        }
        None => None,
    };
    let log = fedcare_audit::AuditLog::open(audit_log).map_err(|e| ServeError::Audit { path: audit_log.to_owned(), message: e.to_string() })?;
    tracing::info!(audit_log = %audit_log.display(), entries = log.len(), "coordinator audit log open");
    coordinator.set_audit_log(log);
    match &security {
        Security::MutualTls { .. } => tracing::info!(%local, state = %state.display(), "coordinator listening (mutual TLS)"),
        Security::Plaintext => tracing::warn!(
            %local,
            state = %state.display(),
            "coordinator listening WITHOUT TLS: anyone who can reach this port can join as any site; for development only"
        ),
    }
    let result = serve_on(listener, coordinator, security, shutdown).await;
    if let Some(t) = metrics_task {
        t.abort();
    }
    result
}
