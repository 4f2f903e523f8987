//! Mutual TLS for tonic, on rustls with the ring provider, TLS 1.3 only.
//!
//! Server ([`server_tls`]): tonic's own `ServerTlsConfig` cannot check a CRL, so we build the
//! rustls `ServerConfig` ourselves (a `WebPkiClientVerifier` with the federation's CA as the
//! only root and its CRL) and hand tonic already-handshaken connections through
//! [`ServerTls::incoming`]. A client must present a certificate that chains to the CA, is
//! within its validity, is not in the CRL and allows client authentication; otherwise the
//! handshake fails and tonic never sees the connection. The connections are
//! `tokio_rustls::server::TlsStream<TcpStream>`, for which tonic records the peer's
//! certificates, so a handler reads the verified caller with [`peer_identity`].
//!
//! Client ([`client_tls`]): the server must chain to the CA (no other roots), match the
//! DNS name or IP address the client expects, not be revoked (when the client has a CRL)
//! and carry the coordinator role. tonic would refuse an `https` URL with a custom connector,
//! so [`ClientTls::endpoint`] takes the `https://` URL and gives tonic a plain one: the TLS
//! is done by [`MtlsConnector`].
//!
//! Session resumption is off on both sides: a resumed session would skip the certificate
//! checks, so a certificate revoked or expired since the first handshake could reconnect.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::identity::{Identity, Role, identity_of};
use crate::{HostName, PkiError, pem};

/// A handshake that has not finished by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once on one listener; connections beyond are closed at once.
const MAX_HANDSHAKES: usize = 256;

const ALPN_H2: &[u8] = b"h2";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| PkiError::BadCertificate(format!("the CA certificate: {e}")))?;
    Ok(Arc::new(roots))
}

/// Checks that `crl` was issued by `ca`: a CRL from elsewhere would leave every peer's
/// revocation status unknown, and every handshake would fail with a less helpful error.
fn check_crl(ca: &CertificateDer<'_>, crl: &CertificateRevocationListDer<'_>) -> Result<(), PkiError> {
    let (_, ca) = x509_parser::parse_x509_certificate(ca)
        .map_err(|e| PkiError::BadCertificate(format!("the CA certificate: {e}")))?;
    let (_, crl) = x509_parser::parse_x509_crl(crl).map_err(|e| PkiError::BadCrl(format!("cannot parse it: {e}")))?;
    if crl.issuer().as_raw() != ca.subject().as_raw() {
        return Err(PkiError::BadCrl(format!("it was issued by {}, not by the CA ({})", crl.issuer(), ca.subject())));
    }
    crl.verify_signature(ca.public_key())
        .map_err(|_| PkiError::BadCrl("its signature does not verify with the CA's key".into()))?;
    // A stale CRL still lists every revocation it had, so it is used; but the CA has
    // probably revoked more since.
    if crl.next_update().is_some_and(|next| next < x509_parser::time::ASN1Time::now()) {
        tracing::warn!(issued = %crl.last_update(), "the CRL is past its next update: ask the CA for a new one");
    }
    Ok(())
}

/// Checks our own certificate before we present it: signed by the CA, and for `role`.
fn check_own(ca: &CertificateDer<'_>, chain: &[CertificateDer<'static>], role: Option<Role>) -> Result<Identity, PkiError> {
    let leaf = chain.first().ok_or_else(|| PkiError::BadCertificate("no certificate".into()))?;
    let (_, ca_cert) = x509_parser::parse_x509_certificate(ca)
        .map_err(|e| PkiError::BadCertificate(format!("the CA certificate: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| PkiError::BadCertificate(format!("our certificate: {e}")))?;
    cert.verify_signature(Some(ca_cert.public_key()))
        .map_err(|_| PkiError::BadCertificate("our certificate was not signed by this CA".into()))?;
    let identity = identity_of(leaf)?;
    match role {
        Some(role) if identity.role() != role => Err(PkiError::RoleNotAllowed { identity, allowed: vec![role] }),
        _ => Ok(identity),
    }
}

struct ServerParts {
    roots: Arc<RootCertStore>,
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ServerParts {
    fn config(&self, crls: Vec<CertificateRevocationListDer<'static>>) -> Result<Arc<ServerConfig>, PkiError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .with_crls(crls)
            .build()
            .map_err(|e| PkiError::TlsConfig(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .and_then(|b| b.with_client_cert_verifier(verifier).with_single_cert(self.chain.clone(), self.key.clone_key()))
            .map_err(|e| PkiError::TlsConfig(e.to_string()))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }
}

/// The coordinator's side of mutual TLS; cheap to clone (clones share the CRL).
#[derive(Clone)]
pub struct ServerTls {
    parts: Arc<ServerParts>,
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// Mutual TLS for a coordinator: `ca_cert_pem` is the federation's CA certificate, `crl_pem`
/// its current CRL (an empty one from a new CA is fine; one is required so that revocation
/// cannot be forgotten), `cert_pem`/`key_pem` the coordinator's own certificate and key.
/// Refuses a CRL or an own certificate that is not from this CA, or an own certificate
/// without the coordinator role.
pub fn server_tls(ca_cert_pem: &str, crl_pem: &str, cert_pem: &str, key_pem: &str) -> Result<ServerTls, PkiError> {
    let ca = pem::one_cert(ca_cert_pem)?;
    let chain = pem::certs(cert_pem, "certificate")?;
    check_own(&ca, &chain, Some(Role::Coordinator))?;
    let parts = ServerParts { roots: roots(&ca)?, ca, chain, key: pem::key(key_pem)? };
    let crls = pem::crls(crl_pem)?;
    for crl in &crls {
        check_crl(&parts.ca, crl)?;
    }
    let config = parts.config(crls)?;
    Ok(ServerTls { parts: Arc::new(parts), current: Arc::new(RwLock::new(config)) })
}

impl ServerTls {
    /// Replaces the CRL (e.g. after the CA revoked a certificate). New handshakes use it at
    /// once; connections already open stay open until they close.
    pub fn set_crl(&self, crl_pem: &str) -> Result<(), PkiError> {
        let crls = pem::crls(crl_pem)?;
        for crl in &crls {
            check_crl(&self.parts.ca, crl)?;
        }
        let config = self.parts.config(crls)?;
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
        Ok(())
    }

    /// The rustls configuration new handshakes use now.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Accepts TCP connections on `listener` and yields those whose TLS handshake succeeds,
    /// for `tonic::transport::Server::serve_with_incoming(_shutdown)`. Handshakes run
    /// concurrently, each bounded by [`HANDSHAKE_TIMEOUT`]; a refused one is logged and
    /// dropped. Must be called within a tokio runtime; dropping the stream stops accepting.
    pub fn incoming(&self, listener: TcpListener) -> TlsIncoming {
        let (tx, rx) = mpsc::channel(64);
        let accept = tokio::spawn(accept_loop(listener, self.clone(), tx));
        TlsIncoming { rx, accept }
    }
}

/// The stream of verified connections made by [`ServerTls::incoming`].
pub struct TlsIncoming {
    rx: mpsc::Receiver<tokio_rustls::server::TlsStream<TcpStream>>,
    accept: tokio::task::JoinHandle<()>,
}

impl tokio_stream::Stream for TlsIncoming {
    type Item = Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().rx.poll_recv(cx).map(|next| next.map(Ok))
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: ServerTls,
    tx: mpsc::Sender<tokio_rustls::server::TlsStream<TcpStream>>,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = tx.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically out of file descriptors: wait rather than spin.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many TLS handshakes in progress; connection closed");
            continue;
        };
        // Replies are small and each one unblocks a peer: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.config());
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // Fails only if the server has stopped; the connection is then dropped.
                    let _ = tx.send(stream).await;
                }
                Ok(Err(e)) => tracing::warn!(%peer, error = %e, "TLS handshake refused"),
                Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// The verified identity of the caller of a request served through [`ServerTls::incoming`]
/// (or any tonic TLS server): from its certificate, never from anything it sent. Fails
/// without TLS or without a client certificate.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Result<Identity, PkiError> {
    let certs = request.peer_certs().ok_or(PkiError::NoPeerCertificate)?;
    let leaf = certs.first().ok_or(PkiError::NoPeerCertificate)?;
    identity_of(leaf)
}

/// [`peer_identity`], refused unless its role is one of `allowed`.
pub fn require_role<T>(request: &tonic::Request<T>, allowed: &[Role]) -> Result<Identity, PkiError> {
    let identity = peer_identity(request)?;
    if allowed.contains(&identity.role()) {
        Ok(identity)
    } else {
        Err(PkiError::RoleNotAllowed { identity, allowed: allowed.to_vec() })
    }
}

/// A party's side of mutual TLS towards the coordinator; cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

/// Mutual TLS for a party dialling the coordinator: `ca_cert_pem` is the federation's CA
/// certificate (the only trusted root), `crl_pem` a CRL to check the coordinator against
/// (optional: a site may not have one), `cert_pem`/`key_pem` the party's own certificate and
/// key, and `server` the DNS name or IP address the coordinator's certificate must carry
/// (whatever address is dialled).
pub fn client_tls(
    ca_cert_pem: &str,
    crl_pem: Option<&str>,
    cert_pem: &str,
    key_pem: &str,
    server: &str,
) -> Result<ClientTls, PkiError> {
    let ca = pem::one_cert(ca_cert_pem)?;
    let chain = pem::certs(cert_pem, "certificate")?;
    check_own(&ca, &chain, None)?;
    let server_name = match server.parse::<HostName>()? {
        HostName::Dns(dns) => ServerName::try_from(dns),
        HostName::Ip(ip) => Ok(ServerName::from(ip)),
    }
    .map_err(|e| PkiError::BadHostName { host: server.to_owned(), reason: e.to_string() })?;
    let mut verifier = WebPkiServerVerifier::builder_with_provider(roots(&ca)?, provider());
    if let Some(crl_pem) = crl_pem {
        let crls = pem::crls(crl_pem)?;
        for crl in &crls {
            check_crl(&ca, crl)?;
        }
        verifier = verifier.with_crls(crls);
    }
    let verifier = verifier.build().map_err(|e| PkiError::TlsConfig(e.to_string()))?;
    let key = pem::key(key_pem)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .and_then(|b| b.with_webpki_verifier(verifier).with_client_auth_cert(chain, key))
        .map_err(|e| PkiError::TlsConfig(e.to_string()))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(ClientTls { config: Arc::new(config), server_name })
}

impl ClientTls {
    /// The tonic endpoint for the coordinator at `url` (`https://host:port`), to be
    /// connected with [`ClientTls::connector`]: tonic is given the same address as `http`,
    /// because the connector, not tonic, does the TLS.
    pub fn endpoint(url: &str) -> Result<Endpoint, PkiError> {
        let bad = |why: &str| PkiError::BadUrl { url: url.to_owned(), reason: why.to_owned() };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("mutual TLS needs an https:// URL"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.port_u16().is_none() {
            return Err(bad("no port"));
        }
        Endpoint::from_shared(format!("http://{authority}")).map_err(|_| bad("not a URL"))
    }

    /// What `Endpoint::connect_with_connector(_lazy)` needs to dial over mutual TLS.
    pub fn connector(&self) -> MtlsConnector {
        MtlsConnector { tls: self.clone() }
    }

    /// Connects to the coordinator at `url` (`https://host:port`).
    pub async fn connect(&self, url: &str) -> Result<Channel, PkiError> {
        ClientTls::endpoint(url)?
            // A party notices a dead coordinator by the same HTTP/2 keepalive it answers.
            .http2_keep_alive_interval(std::time::Duration::from_secs(10))
            .keep_alive_timeout(std::time::Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .connect_with_connector(self.connector())
            .await
            .map_err(|source| PkiError::Connect { url: url.to_owned(), source })
    }

    async fn dial(self, uri: Uri) -> Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, PkiError> {
        let host = uri.host().unwrap_or_default();
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port = uri.port_u16().unwrap_or(443);
        let addr = format!("{host}:{port}");
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|source| PkiError::Dial { addr: addr.clone(), source })?;
        let _ = tcp.set_nodelay(true);
        let handshake = TlsConnector::from(self.config.clone()).connect(self.server_name.clone(), tcp);
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| PkiError::HandshakeTimeout(addr.clone()))?
            .map_err(|source| PkiError::Handshake { addr: addr.clone(), source })?;
        let (_, session) = stream.get_ref();
        if session.alpn_protocol() != Some(ALPN_H2) {
            return Err(PkiError::TlsConfig(format!("{addr} did not agree to HTTP/2")));
        }
        let leaf = session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .ok_or(PkiError::NoPeerCertificate)?;
        let identity = identity_of(leaf)?;
        if identity.role() != Role::Coordinator {
            return Err(PkiError::RoleNotAllowed { identity, allowed: vec![Role::Coordinator] });
        }
        Ok(TokioIo::new(stream))
    }
}

/// A tower connector that dials TCP, runs the mutual TLS handshake and checks that the
/// server is the federation's coordinator. Made by [`ClientTls::connector`].
#[derive(Clone, Debug)]
pub struct MtlsConnector {
    tls: ClientTls,
}

impl tower_service::Service<Uri> for MtlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = PkiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, PkiError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), PkiError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.tls.clone().dial(uri))
    }
}
