//! Shared helpers for the end-to-end tests: the bundled example, an in-process coordinator on
//! a free loopback port, real site agents, and the paths of the built binaries.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fedcare_agent::{Agent, AgentConfig};
use fedcare_job::JobSpec;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// `examples/heart-disease` in this repository.
pub fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/heart-disease")
}

/// The example job spec with some fields changed, as TOML text and parsed.
pub fn job(edit: impl FnOnce(&mut JobSpec)) -> (String, JobSpec) {
    let path = example_dir().join("job.toml");
    let text = std::fs::read_to_string(&path).expect("example job.toml is readable");
    let mut spec = JobSpec::from_toml(&text, "job.toml").expect("example job parses");
    edit(&mut spec);
    spec.validate("edited job").expect("edited job is valid");
    let text = toml::to_string(&spec).expect("spec serialises");
    (text, spec)
}

/// An example site's agent config, pointed at `url`, with its privacy ledger in a fresh
/// temporary folder (so tests never share, lock or exhaust one another's budgets).
pub fn site_config(name: &str, url: &str) -> (AgentConfig, PathBuf) {
    let (mut cfg, base) = AgentConfig::load(&example_dir().join("sites").join(format!("{name}.toml"))).expect("example site config loads");
    cfg.site.coordinator = url.to_owned();
    if let Some(p) = cfg.privacy.as_mut() {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        p.ledger = dir.join(format!("{name}.ledger.jsonl"));
    }
    (cfg, base)
}

/// Writes an example site's config into `dir` (data path made absolute), so that its ledger
/// and other state land in `dir`; returns the config's path. For tests that run the binaries.
pub fn write_site_config(dir: &Path, name: &str) -> PathBuf {
    let sites = example_dir().join("sites");
    let text = std::fs::read_to_string(sites.join(format!("{name}.toml"))).expect("example site config readable");
    let data = sites.join("../data/").canonicalize().expect("example data folder");
    let text = text.replace("path = \"../data/", &format!("path = \"{}/", data.display()));
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("site config written");
    path
}

pub const SITES: [&str; 4] = ["cleveland", "hungarian", "switzerland", "va"];

/// A coordinator served in-process over real gRPC on 127.0.0.1.
pub struct TestCoordinator {
    pub url: String,
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
    pub state_dir: tempfile::TempDir,
    /// The coordinator's Prometheus metrics (shared with the running server).
    pub metrics: fedcare_server::metrics::Metrics,
}

impl TestCoordinator {
    pub async fn start() -> TestCoordinator {
        let state_dir = tempfile::tempdir().expect("temp dir");
        let state = state_dir.path().join("coordinator.redb");
        let (listener, addr, coordinator) =
            fedcare_server::bind("127.0.0.1:0".parse().expect("addr"), &state).await.expect("coordinator binds");
        let metrics = coordinator.metrics().clone();
        let (stop, rx) = watch::channel(false);
        let server = tokio::spawn(async move {
            let mut rx = rx;
            let shutdown = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            fedcare_server::serve_on(listener, coordinator, fedcare_server::Security::Plaintext, shutdown).await.expect("coordinator serves");
        });
        TestCoordinator { url: format!("http://{addr}"), addr, stop, server: Some(server), state_dir, metrics }
    }

    /// A shutdown future for agents that should stop with this coordinator.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Starts a real agent for an example site.
    pub fn spawn_site(&self, name: &str) -> JoinHandle<()> {
        let (cfg, base) = site_config(name, &self.url);
        self.spawn_agent(cfg, base)
    }

    pub fn spawn_agent(&self, cfg: AgentConfig, base: PathBuf) -> JoinHandle<()> {
        let agent = Agent::new(cfg, base).expect("agent config valid");
        let stopped = self.stopped();
        tokio::spawn(async move {
            agent.run(stopped).await.expect("agent runs until stopped");
        })
    }

    /// Waits until `n` sites are connected.
    pub async fn wait_for_sites(&self, n: usize) {
        let mut admin = fedcare_server::client::AdminClient::connect(&self.url).await.expect("admin connects");
        for _ in 0..500 {
            if admin.sites().await.expect("list sites").iter().filter(|s| s.connected).count() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fewer than {n} sites connected within 5 s");
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
    }
}

/// Path of a workspace binary built by `cargo test --workspace` (next to this test's
/// executable's `deps/` folder).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target profile directory");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds the binaries",
        path.display()
    );
    path
}

/// A TCP relay between site agents and the coordinator that records every byte the sites
/// send: what a network tap at the hospital's edge would see (the connection is not yet TLS).
pub struct Tap {
    pub url: String,
    captured: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl Tap {
    pub async fn start(target: SocketAddr) -> Tap {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("tap binds");
        let url = format!("http://{}", listener.local_addr().expect("tap address"));
        let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = captured.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { continue };
                let (mut in_r, mut in_w) = inbound.into_split();
                let (mut out_r, mut out_w) = outbound.into_split();
                let sink = sink.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = in_r.read(&mut buf).await {
                        if n == 0 || out_w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        sink.lock().expect("tap lock").extend_from_slice(&buf[..n]);
                    }
                });
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut out_r, &mut in_w).await;
                });
            }
        });
        Tap { url, captured, task }
    }

    /// Everything the sites sent so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.captured.lock().expect("tap lock").clone()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Simulation options for the bundled example writing to `out`: the job as specified, mutual
/// TLS on, no pooled reference; tests change only what they are about.
pub fn sim_options(out: &Path) -> fedcare_sim::SimOptions {
    fedcare_sim::SimOptions {
        example_dir: example_dir(),
        rounds: None,
        out_dir: out.to_owned(),
        pooled_reference: false,
        secure_aggregation: None,
        privacy: fedcare_sim::PrivacyOverride::AsSpecified,
        mtls: true,
    }
}
