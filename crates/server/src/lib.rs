//! The coordinator's library: the gRPC services (site-facing and admin), the job report, and
//! the serve loop. The `coordinator` binary only parses arguments and calls [`serve`].
//!
//! Guarantees: the coordinator never connects to a site (sites dial out); a job is durable in
//! the state file before any site hears of it; every malformed or out-of-turn message gets a
//! gRPC error that says why, and changes nothing.

pub mod client;
pub mod coordinator;
pub mod report;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

pub use coordinator::{AdminApi, Coordinator, SiteApi};
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
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
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
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(pb::site_service_server::SiteServiceServer::new(SiteApi(coordinator.clone())))
        .add_service(pb::admin_service_server::AdminServiceServer::new(AdminApi(coordinator)))
        // TCP_NODELAY: replies are small and each one unblocks a site; without it Nagle's
        // algorithm and the peer's delayed ACK hold every reply back about 40 ms.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await;
    ticker.abort();
    Ok(result?)
}

/// [`bind`] then [`serve_on`].
pub async fn serve(addr: SocketAddr, state: &Path, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
    let (listener, local, coordinator) = bind(addr, state).await?;
    tracing::info!(%local, state = %state.display(), "coordinator listening");
    serve_on(listener, coordinator, shutdown).await
}
