//! A federation in a temporary directory, a health server over mutual TLS that records who
//! called, and a raw TLS client that can present any certificate (or none).

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use fedcare_pki::{HostName, Identity, Role, ServerTls, Validity};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

pub struct Federation {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    parties: AtomicUsize,
}

pub struct Party {
    pub cert: String,
    pub key: String,
    pub key_path: PathBuf,
}

impl Federation {
    pub fn new(name: &str) -> Federation {
        let dir = tempfile::tempdir().unwrap();
        let ca_pem = fedcare_pki::init_ca(&dir.path().join("ca"), name, 365).unwrap();
        Federation { dir, ca_pem, parties: AtomicUsize::new(0) }
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// Enrols a party the way the real flow does: key and CSR in the party's own directory,
    /// then the CA signs the CSR.
    pub fn enrol_with(&self, role: Role, name: &str, validity: Validity, hosts: &[&str]) -> Party {
        let n = self.parties.fetch_add(1, Ordering::Relaxed);
        let party_dir = self.dir.path().join(format!("party-{n}"));
        let (key_path, csr_path) = fedcare_pki::make_key_and_csr(&party_dir, name).unwrap();
        let csr = std::fs::read_to_string(csr_path).unwrap();
        let hosts: Vec<HostName> = hosts.iter().map(|h| h.parse().unwrap()).collect();
        let cert = fedcare_pki::sign_csr(&self.ca_dir(), &csr, role, name, validity, &hosts).unwrap();
        let key = std::fs::read_to_string(&key_path).unwrap();
        Party { cert, key, key_path }
    }

    pub fn enrol(&self, role: Role, name: &str) -> Party {
        let hosts: &[&str] = if role == Role::Coordinator { &["localhost", "127.0.0.1"] } else { &[] };
        self.enrol_with(role, name, Validity::Days(30), hosts)
    }

    pub fn crl(&self) -> String {
        fedcare_pki::crl(&self.ca_dir()).unwrap()
    }

    pub fn server_tls(&self) -> ServerTls {
        let coord = self.enrol(Role::Coordinator, "coord");
        fedcare_pki::server_tls(&self.ca_pem, &self.crl(), &coord.cert, &coord.key).unwrap()
    }

    pub fn client(&self, party: &Party) -> fedcare_pki::ClientTls {
        fedcare_pki::client_tls(&self.ca_pem, None, &party.cert, &party.key, "localhost").unwrap()
    }
}

/// A gRPC health server whose interceptor reads the caller's identity (and, if `allowed` is
/// set, refuses other roles), recording every identity it let through.
pub struct Server {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Identity>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(tls: &ServerTls, allowed: Option<Vec<Role>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let gate = tonic::service::InterceptorLayer::new(move |request: tonic::Request<()>| {
            let identity = match &allowed {
                Some(roles) => fedcare_pki::require_role(&request, roles)?,
                None => fedcare_pki::peer_identity(&request)?,
            };
            record.lock().unwrap().push(identity);
            Ok(request)
        });
        let (_reporter, health) = tonic_health::server::health_reporter();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let incoming = tls.incoming(listener);
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .layer(gate)
                .add_service(health)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Server { addr, seen, stop: Some(stop), task }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Identity> {
        self.seen.lock().unwrap().clone()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// One health check over `channel`: Ok if the server answered.
pub async fn check(channel: Channel) -> Result<(), tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map(|_| ())
}

/// Connects with `fedcare_pki::client_tls` and makes one health check.
pub async fn call(client: &fedcare_pki::ClientTls, url: &str) -> Result<(), String> {
    let channel = client.connect(url).await.map_err(|e| e.to_string())?;
    check(channel).await.map_err(|e| e.to_string())
}

/// A client built directly on rustls, trusting `ca_pem`, presenting `identity` (cert, key)
/// or no certificate at all: to show what the *server* refuses.
pub async fn raw_call(ca_pem: &str, identity: Option<(&str, &str)>, addr: SocketAddr) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).map(|c| c.unwrap()).collect();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = RawConnector { config: Arc::new(config) };
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    check(channel).await.map_err(|e| format!("rpc: {e}"))
}

#[derive(Clone)]
struct RawConnector {
    config: Arc<rustls::ClientConfig>,
}

impl tower_service::Service<Uri> for RawConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let addr = format!("{}:{}", uri.host().unwrap_or_default(), uri.port_u16().unwrap_or(443));
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// The mode bits of a file.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}
