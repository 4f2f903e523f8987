//! The site agent's library: a hospital's side of the federation.
//!
//! The agent dials out to the coordinator, opens its work stream, and for each task asks the
//! site state machine ([`fedcare_protocol::SiteSession`]) whether to act. Accepted work runs
//! here, on the site's own records: loading and mapping the CSV, local training with Burn,
//! held-out evaluation. The reply is built by the state machine and can only be one of the
//! kinds it allows (a decision, aggregate feature sums, a model update, aggregate evaluation
//! counts).
//!
//! What it must never do: send a record, a per-record score, or any error text that could
//! quote a cell of the site's file. Data errors are logged locally in full and reported to the
//! coordinator only as a category.

pub mod config;
mod private;
mod work;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

pub use config::{AgentConfig, ConfigError, SitePrivacy, SiteSection, load_or_create_identity};
use fedcare_proto::PROTOCOL_VERSION;
use fedcare_proto::v1 as pb;
use fedcare_proto::v1::site_service_client::SiteServiceClient;
use fedcare_audit::AuditEvent;
use fedcare_protocol::{ReplyKind, SiteId, SiteSession, Work};
use prost::Message;
use futures::StreamExt;
use tonic::transport::Channel;
use tracing::{info, info_span, warn, Instrument};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("coordinator URL {0:?} is not valid")]
    BadUrl(String),
    #[error("the coordinator refused this site: {0}")]
    Refused(String),
    #[error("cannot create the site's identity key: {0}")]
    Identity(String),
    #[error("the site's audit log: {0}")]
    Audit(String),
    #[error("the site's privacy ledger: {0}")]
    Ledger(String),
    #[error("the site's TLS folder: {0}")]
    Tls(String),
}

/// A running site agent.
pub struct Agent {
    /// Mutual TLS to the coordinator (`https://`), or `None` for a development `http://` one.
    tls: Option<fedcare_pki::ClientTls>,
    audit: Option<fedcare_audit::AuditLog>,
    site: SiteId,
    coordinator: String,
    identity_public_key: Vec<u8>,
    session: SiteSession,
    work: work::Worker,
    fault: Option<FaultHook>,
}

/// A fault to inject, for end-to-end tests: called with each task's kind (`train`, `share-keys`,
/// `mask`, `unmask`, `eval`, ...) and round before the agent acts on it; `true` stops the agent
/// there, as if its process were killed (the connection drops, nothing more is sent). A kill
/// from outside the agent races with its answer; this does not. Never set in production.
pub type FaultHook = std::sync::Arc<dyn Fn(&str, Option<u32>) -> bool + Send + Sync>;

/// How a connection ended.
enum Ended {
    Shutdown,
    /// A [`FaultHook`] stopped the agent.
    Killed,
    Lost(String),
    /// The audit log could not be written: the agent stops rather than act unrecorded.
    Fatal(String),
}

impl Agent {
    /// `base_dir` resolves the relative data path (normally the config file's directory).
    pub fn new(config: AgentConfig, base_dir: PathBuf) -> Result<Agent, AgentError> {
        let site = SiteId::parse(&config.site.id).map_err(|e| ConfigError::Invalid { field: "site.id".into(), message: e })?;
        // The long-term key that signs this site's secure aggregation keys: from its key file if
        // configured, else fresh for this process. (Binding it to the site's certificate is the
        // governance issue's work.)
        let identity = match &config.site.identity_key {
            Some(path) => config::load_or_create_identity(&base_dir.join(path))?,
            None => fedcare_secagg::IdentityKey::generate(&mut fedcare_secagg::SystemRng::new())
                .map_err(|e| AgentError::Identity(e.to_string()))?,
        };
        let session = SiteSession::new(site.clone(), layout, identity.public_key());
        let audit = match &config.site.audit_log {
            Some(path) => Some(fedcare_audit::AuditLog::open(base_dir.join(path)).map_err(|e| AgentError::Audit(e.to_string()))?),
            None => {
                tracing::warn!(site = %site, "no audit log configured ([site].audit_log): what this site sends is not recorded");
                None
            }
        };
        let budget = match &config.privacy {
            Some(p) => {
                let path = base_dir.join(&p.ledger);
                let ledger = fedcare_ledger::Ledger::open(&path).map_err(|e| AgentError::Ledger(format!("{}: {e}", path.display())))?;
                let caps = fedcare_ledger::Caps::new(p.max_epsilon_per_job, p.max_epsilon_total).map_err(|e| AgentError::Ledger(e.to_string()))?;
                info!(site = %site, ledger = %path.display(), spent_total = ledger.total_epsilon(), cap_total = p.max_epsilon_total, "privacy ledger open");
                Some(private::Budget::new(ledger, caps))
            }
            None => None,
        };
        let tls = match (&config.site.tls, config.site.coordinator.starts_with("https://")) {
            (Some(dir), true) => {
                let dir = base_dir.join(dir);
                let party = fedcare_pki::PartyFiles::load(&dir).map_err(|e| AgentError::Tls(format!("{}: {e}", dir.display())))?;
                let id = &party.identity;
                // The coordinator will know this site by its certificate: a certificate for
                // another site or role would be refused there, so say it here, clearly.
                if id.role() != fedcare_pki::Role::Site || id.name() != site.as_str() {
                    return Err(AgentError::Tls(format!(
                        "{}: the certificate is for {id}, but this site's id is {site:?}; ask the CA for a site certificate named {site}",
                        dir.display()
                    )));
                }
                let host = fedcare_pki::url_host(&config.site.coordinator).map_err(|e| AgentError::Tls(e.to_string()))?;
                Some(party.client(&host).map_err(|e| AgentError::Tls(format!("{}: {e}", dir.display())))?)
            }
            (None, true) => {
                return Err(AgentError::Tls(format!(
                    "the coordinator {} is https://: set [site].tls to this site's TLS folder",
                    config.site.coordinator
                )));
            }
            (Some(_), false) => {
                return Err(AgentError::Tls(format!(
                    "[site].tls is set but the coordinator {} is http://; use its https:// URL",
                    config.site.coordinator
                )));
            }
            (None, false) => {
                warn!(site = %site, coordinator = %config.site.coordinator, "connecting WITHOUT TLS (http://): for development only");
                None
            }
        };
        // The site's policy, checked now so that an invalid one stops the agent at start.
        let policy = work::SitePolicy::from_config(&config.site, &base_dir)?;
        Ok(Agent {
            tls,
            audit,
            site: site.clone(),
            coordinator: config.site.coordinator.clone(),
            identity_public_key: identity.public_key(),
            session,
            work: work::Worker::new(site, config.data, base_dir, identity, budget, policy),
            fault: None,
        })
    }

    /// Stops the agent before the first task for which `hook` says so (see [`FaultHook`]).
    pub fn with_fault(mut self, hook: FaultHook) -> Agent {
        self.fault = Some(hook);
        self
    }

    pub fn site(&self) -> &SiteId {
        &self.site
    }

    /// Runs until `shutdown` completes, reconnecting with exponential backoff and jitter
    /// whenever the coordinator is unreachable or the stream breaks.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        let endpoint = Channel::from_shared(self.coordinator.clone())
            .map_err(|_| AgentError::BadUrl(self.coordinator.clone()))?
            // Notice a dead coordinator by HTTP/2 keepalive, then reconnect with backoff.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let tls = self.tls.take();
        let span = info_span!("site", site = %self.site);
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(200);
        loop {
            let attempt = async {
                let connected = match &tls {
                    Some(tls) => tls.connect(&self.coordinator).await.map_err(|e| e.to_string()),
                    None => endpoint.connect().await.map_err(|e| format!("cannot reach {}: {e}", self.coordinator)),
                };
                match connected {
                    Ok(channel) => self.serve(SiteServiceClient::new(channel)).await,
                    Err(e) => Err(e),
                }
            }
            .instrument(span.clone());
            let result = tokio::select! {
                _ = &mut shutdown => Ok(Ended::Shutdown),
                r = attempt => r,
            };
            match result {
                Ok(Ended::Shutdown) => return Ok(()),
                Ok(Ended::Killed) => {
                    warn!(parent: &span, "stopped by an injected fault");
                    return Ok(());
                }
                Ok(Ended::Fatal(why)) => return Err(AgentError::Audit(why)),
                Ok(Ended::Lost(why)) | Err(why) => {
                    if let Some(refusal) = why.strip_prefix("refused: ") {
                        return Err(AgentError::Refused(refusal.to_owned()));
                    }
                    let jitter = Duration::from_millis(rand::random_range(0..=backoff.as_millis() as u64 / 2));
                    warn!(parent: &span, reason = %why, retry_in_ms = (backoff + jitter).as_millis() as u64, "connection to coordinator lost");
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep(backoff + jitter) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// One connection: join, then handle tasks in order until the stream ends.
    async fn serve(&mut self, mut client: SiteServiceClient<Channel>) -> Result<Ended, String> {
        let join = pb::JoinRequest {
            site_id: self.site.to_string(),
            protocol_version: PROTOCOL_VERSION,
            agent_version: format!("fedcare site-agent {}", env!("CARGO_PKG_VERSION")),
            identity_public_key: self.identity_public_key.clone(),
        };
        // A new connection: jobs in flight are offered again if the coordinator still has them.
        self.session.forget_unfinished();
        let mut stream = match client.join(join).await {
            Ok(r) => r.into_inner(),
            Err(s) if matches!(s.code(), tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition | tonic::Code::PermissionDenied) => {
                return Err(format!("refused: {}", s.message()));
            }
            Err(s) => return Err(format!("join failed: {}", s.message())),
        };
        info!("connected to coordinator, waiting for work");
        // Models too large for one message arrive in chunks just before the task that uses them.
        let mut inbox = fedcare_wire::chunk::ModelInbox::new();
        while let Some(item) = stream.next().await {
            let task = match item {
                Ok(t) => t,
                Err(s) => return Ok(Ended::Lost(format!("stream error: {}", s.message()))),
            };
            if let Some(pb::task::Kind::ModelChunk(chunk)) = &task.kind {
                match inbox.push(chunk) {
                    Ok(fedcare_wire::chunk::ModelProgress::Pending) => {}
                    Ok(fedcare_wire::chunk::ModelProgress::Complete(sha256, bytes)) => {
                        // The whole model, as received, is what the audit log records.
                        let event = AuditEvent::PayloadReceived {
                            job_id: task.job_id.clone(),
                            round: None,
                            kind: "model".to_owned(),
                            sha256: hex::encode(sha256),
                            bytes,
                        };
                        if let Err(e) = self.record(event) {
                            return Ok(Ended::Fatal(e));
                        }
                    }
                    Err(e) => warn!(error = %e, "a damaged model chunk from the coordinator was dropped"),
                }
                continue;
            }
            let received = task.encode_to_vec();
            let round = fedcare_wire::task_round(&task);
            let kind_name = task.kind.as_ref().map_or("unknown", wire_task_kind);
            let event = AuditEvent::PayloadReceived {
                job_id: task.job_id.clone(),
                round,
                kind: kind_name.to_owned(),
                sha256: fedcare_audit::sha256_hex(&received),
                bytes: received.len() as u64,
            };
            if let Err(e) = self.record(event) {
                return Ok(Ended::Fatal(e));
            }
            let task = match inbox.resolve(task).and_then(fedcare_wire::task_from_wire) {
                Ok(t) => t,
                Err(e) => {
                    warn!(error = %e, "malformed task from the coordinator ignored");
                    continue;
                }
            };
            let (job, task_id, kind_name) = (task.job.clone(), task.id, task.kind.name());
            if self.fault.as_ref().is_some_and(|f| f(kind_name, round)) {
                return Ok(Ended::Killed);
            }
            let span = info_span!("task", job = %job.short(), task = task_id.0, kind = kind_name);
            let work = match self.session.on_task(task) {
                Ok(w) => w,
                Err(e) => {
                    warn!(parent: &span, error = %e, "task refused");
                    continue;
                }
            };
            let event = match &work {
                Work::Decide { spec, .. } => Some(AuditEvent::JobReceived { job_id: job.to_string(), job_name: spec.name.clone() }),
                Work::Train { round, .. } => Some(AuditEvent::RoundJoined { job_id: job.to_string(), round: *round }),
                Work::Ended { success, reason, .. } => {
                    Some(AuditEvent::JobEnded { job_id: job.to_string(), success: *success, reason: reason.clone() })
                }
                _ => None,
            };
            if let Some(event) = event
                && let Err(e) = self.record(event) {
                    return Ok(Ended::Fatal(e));
                }
            let Some(reply_kind) = self.work.perform(work).instrument(span.clone()).await else { continue };
            // A privatised release is in the ledger by now; the audit log records its spend too,
            // before it is sent.
            let released = match &reply_kind {
                ReplyKind::Stats(_) => Some(None),
                ReplyKind::Keys { round, .. } => Some(Some(*round)),
                ReplyKind::Update(u) => Some(Some(u.round)),
                _ => None,
            };
            if let Some(round) = released
                && let Some((epsilon, delta, unit)) = self.work.spend_recorded(&job, round)
                && let Err(e) = self.record(AuditEvent::PrivacySpent {
                    job_id: job.to_string(),
                    round: round.unwrap_or(0),
                    epsilon,
                    delta,
                    unit: unit.to_owned(),
                })
            {
                return Ok(Ended::Fatal(e));
            }
            let decision = match &reply_kind {
                ReplyKind::Decision { accept: true, .. } => Some(AuditEvent::JobApproved {
                    job_id: job.to_string(),
                    // `automatic: policy`, `<admin> (manual)`, or (no policy) the data mapping.
                    by: self.work.approved_by(&job),
                }),
                ReplyKind::Decision { accept: false, reason } => Some(AuditEvent::JobRefused { job_id: job.to_string(), reason: reason.clone() }),
                _ => None,
            };
            if let Some(event) = decision
                && let Err(e) = self.record(event) {
                    return Ok(Ended::Fatal(e));
                }
            let reply = match self.session.reply(&job, task_id, reply_kind) {
                Ok(r) => r,
                Err(e) => {
                    warn!(parent: &span, error = %e, "could not record the reply");
                    continue;
                }
            };
            // What leaves the site is recorded, durably, before it is sent.
            let wire = fedcare_wire::reply_to_wire(&reply);
            let sent = wire.encode_to_vec();
            let event = AuditEvent::PayloadSent {
                job_id: job.to_string(),
                round: reply_round(&reply.kind),
                kind: reply.kind.name().to_owned(),
                sha256: fedcare_audit::sha256_hex(&sent),
                bytes: sent.len() as u64,
            };
            if let Err(e) = self.record(event) {
                return Ok(Ended::Fatal(e));
            }
            let outcome = if sent.len() > fedcare_wire::chunk::INLINE_LIMIT {
                // Too large for one message: the same bytes, in chunks.
                drop(wire);
                let payload = bytes::Bytes::from(sent);
                let digest = fedcare_wire::chunk::sha256(&payload);
                let chunks: Vec<pb::Chunk> = fedcare_wire::chunk::split(&payload, digest, fedcare_wire::chunk::CHUNK_BYTES).collect();
                client.submit_chunked(futures::stream::iter(chunks)).await
            } else {
                client.submit(wire).await
            };
            if let Err(s) = outcome {
                warn!(parent: &span, code = ?s.code(), message = s.message(), "coordinator refused the reply");
            }
        }
        Ok(Ended::Lost("the coordinator closed the work stream".into()))
    }
}

impl Agent {
    /// Appends to the audit log (fsync'd) if one is configured.
    fn record(&mut self, event: AuditEvent) -> Result<(), String> {
        let Some(log) = self.audit.as_mut() else { return Ok(()) };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        log.append(event, now).map(|_| ()).map_err(|e| {
            tracing::error!(error = %e, "cannot write the audit log; stopping rather than act unrecorded");
            e.to_string()
        })
    }
}

fn wire_task_kind(k: &pb::task::Kind) -> &'static str {
    use pb::task::Kind;
    match k {
        Kind::Offer(_) => "offer",
        Kind::Stats(_) => "stats",
        Kind::Train(_) => "train",
        Kind::Eval(_) => "eval",
        Kind::End(_) => "end",
        Kind::ShareKeys(_) => "share-keys",
        Kind::Mask(_) => "mask",
        Kind::Unmask(_) => "unmask",
        Kind::ModelChunk(_) => "model-chunk",
    }
}

/// The round a reply belongs to, if any.
fn reply_round(k: &ReplyKind) -> Option<u32> {
    match k {
        ReplyKind::Update(u) => Some(u.round),
        ReplyKind::Evaluation(e) => Some(e.round),
        ReplyKind::Keys { round, .. }
        | ReplyKind::Shares { round, .. }
        | ReplyKind::Masked { round, .. }
        | ReplyKind::Unmasked { round, .. } => Some(*round),
        ReplyKind::Decision { .. } | ReplyKind::Stats(_) | ReplyKind::Failed { .. } => None,
    }
}

/// The model layout digest and length a job implies, for checking what the coordinator sends.
fn layout(spec: &fedcare_job::JobSpec) -> (String, usize) {
    let layout = fedcare_models::layout(&spec.model, spec.n_features());
    (layout.digest(), layout.len())
}
