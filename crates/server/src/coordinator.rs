//! The coordinator: drives one [`JobRun`] state machine per job and carries its messages over
//! gRPC.
//!
//! All state sits behind one `std::sync::Mutex` that is never held across an `.await`: an RPC
//! locks, feeds one event into a state machine, drains the machine's actions (queue tasks on
//! the sites' streams, persist and publish events), and unlocks. Work per event is small (the
//! heaviest is adding one update into the running FedAvg sum), so one lock keeps the
//! reasoning simple without costing throughput at cross-silo scale.
//!
//! Durability: a job is written to the store before it is offered to any site, and every event
//! is appended to the store before any watcher sees it; a round's global model is written with
//! its record.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fedcare_job::{JobId, JobSpec};
use fedcare_models::FlatParams;
use fedcare_proto::PROTOCOL_VERSION;
use fedcare_proto::v1 as pb;
use fedcare_protocol::{Action, JobEvent, JobOutcome, JobRun, ReplyError, SiteId};
use fedcare_store::{JobRecord, JobStatus, Store};
use futures::Stream;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};
use tracing::{info, info_span, warn};

use crate::report::Report;

type TaskTx = mpsc::UnboundedSender<Result<pb::Task, Status>>;

struct SiteConn {
    conn: u64,
    tx: TaskTx,
    agent_version: String,
    /// The site's long-term public key (signs its secure aggregation keys).
    identity: Vec<u8>,
    /// SHA-256 of the last chunked model sent on this stream: the site keeps it, so the same
    /// model (a round's Eval, then the next round's Train) is not sent twice.
    last_model: Option<[u8; 32]>,
}

struct JobEntry {
    run: JobRun,
    spec: Arc<JobSpec>,
    layout: fedcare_models::ParamLayout,
    submitted: Instant,
    /// Every event so far, in order; watchers replay them and then follow `published`.
    events: Vec<pb::JobEvent>,
    /// Number of events in `events`, and whether the job is over.
    published: watch::Sender<(usize, bool)>,
    /// Digests of the messages exchanged for this job since its last audit entry.
    payloads: Vec<fedcare_audit::PayloadDigest>,
    /// Set when the job was cancelled (so its end is recorded as cancelled, not failed).
    cancelled: bool,
    /// The current global model encoded once for chunked sending, shared by every site's
    /// stream (`None` until a model too large for one message is first sent).
    model_payload: Option<ModelPayload>,
}

/// A model's chunked-transfer payload ([`fedcare_wire::chunk::model_payload`]) and its digest,
/// kept for as long as the model it encodes is current.
struct ModelPayload {
    values: Arc<Vec<f32>>,
    bytes: bytes::Bytes,
    sha256: [u8; 32],
}

impl ModelPayload {
    /// The payload for `values`: the cached one if it encodes this very vector, else a new one.
    fn for_values<'a>(cache: &'a mut Option<ModelPayload>, values: &Arc<Vec<f32>>) -> &'a ModelPayload {
        if !cache.as_ref().is_some_and(|p| Arc::ptr_eq(&p.values, values)) {
            let bytes = fedcare_wire::chunk::model_payload(values);
            let sha256 = fedcare_wire::chunk::sha256(&bytes);
            *cache = Some(ModelPayload { values: values.clone(), bytes, sha256 });
        }
        match cache {
            Some(p) => p,
            None => unreachable!("filled just above"),
        }
    }
}

/// How much memory, in MiB, chunked replies being reassembled may hold at once. A reply larger
/// than this is reassembled alone. It bounds the coordinator's memory for replies however many
/// sites send at once: with a 50 MB model, one update is reassembled at a time, and the others
/// wait (their bytes stay in the network's flow-control windows).
pub const UPLOAD_BUDGET_MIB: u32 = 64;

/// Longest wait for the next chunk of a chunked reply.
const CHUNK_IDLE: Duration = Duration::from_secs(60);

/// Rebuilds a running job from the store: its spec, the model after its last recorded round,
/// the records of rounds 1..=last, and the events already published (watchers replay them).
fn resume(store: &Store, job: &JobRecord) -> Result<JobEntry, String> {
    let spec = JobSpec::from_toml(&job.spec_toml, "stored job spec").map_err(|e| e.to_string())?;
    let id = spec.id();
    if id.as_str() != job.job_id {
        return Err(format!("the stored spec hashes to {id}, not {}", job.job_id));
    }
    let n_features = spec.n_features();
    let layout = fedcare_models::layout(&spec.model, n_features);
    let last = store.last_round(&job.job_id).map_err(|e| e.to_string())?.unwrap_or(0);
    let mut history = Vec::new();
    for round in 1..=last {
        let json = store.round_record(&job.job_id, round).map_err(|e| e.to_string())?.ok_or(format!("round {round} has no record"))?;
        history.push(serde_json::from_str(&json).map_err(|e| format!("round {round}'s record: {e}"))?);
    }
    let model = match last {
        0 => fedcare_models::init(&spec.model, n_features, spec.seed).values,
        r => store.round_model(&job.job_id, r).map_err(|e| e.to_string())?.ok_or(format!("round {r} has no model"))?,
    };
    if model.len() != layout.len() {
        return Err(format!("the stored model has {} values, the job's model {}", model.len(), layout.len()));
    }
    let events = store
        .events(&job.job_id)
        .map_err(|e| e.to_string())?
        .iter()
        .map(|b| pb::JobEvent::decode(b.as_slice()).map_err(|e| format!("a stored event does not decode: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let spec = Arc::new(spec);
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).map_err(|_| "the system's random generator failed".to_owned())?;
    let run = JobRun::resume(spec.clone(), job.spec_toml.clone().into(), layout.digest(), model, history)?
        .with_noise(<rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::from_seed(seed))
        .with_unmask_threads(unmask_threads());
    zeroize::Zeroize::zeroize(&mut seed);
    let published = watch::channel((events.len(), false)).0;
    Ok(JobEntry { run, spec, layout, submitted: Instant::now(), events, published, payloads: Vec::new(), cancelled: false, model_payload: None })
}

/// The digest of one message's exact protobuf bytes, for the audit log.
fn digest(direction: &str, site: &str, kind: &str, round: Option<u32>, bytes: &[u8]) -> fedcare_audit::PayloadDigest {
    digest_of(direction, site, kind, round, &fedcare_audit::sha256_hex(bytes), bytes.len())
}

/// As [`digest`], for a payload whose SHA-256 is already known (a chunked one).
fn digest_of(direction: &str, site: &str, kind: &str, round: Option<u32>, sha256_hex: &str, len: usize) -> fedcare_audit::PayloadDigest {
    fedcare_audit::PayloadDigest {
        direction: direction.to_owned(),
        site: site.to_owned(),
        kind: kind.to_owned(),
        round,
        sha256: sha256_hex.to_owned(),
        bytes: len as u64,
    }
}

/// Threads for a secure round's unmasking: the machine's cores (read once), at most 8.
fn unmask_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(8))
}

/// The refusal of anything that would change a job once the coordinator is stopping.
fn closing() -> Status {
    Status::unavailable("the coordinator is shutting down; try again once it is back")
}


struct State {
    sites: BTreeMap<SiteId, SiteConn>,
    /// Sites whose connection was lost, with when (coordinator clock, ms) and their agent
    /// version; cleared when the site comes back.
    lost: BTreeMap<SiteId, (u64, String)>,
    jobs: BTreeMap<JobId, JobEntry>,
    next_conn: u64,
    /// Set by [`Coordinator::shut_down`]: from then on nothing changes any job (a reply, a
    /// deadline, a connection or a submission is refused), so the state file holds the jobs
    /// exactly as they were for the next coordinator to resume.
    closing: bool,
}

struct Inner {
    store: Store,
    started: Instant,
    state: Mutex<State>,
    /// The coordinator's own tamper-evident log (see [`Coordinator::set_audit_log`]).
    audit: Mutex<Option<fedcare_audit::AuditLog>>,
    metrics: crate::metrics::Metrics,
    /// Whether the server serving this coordinator requires mutual TLS (set by `serve_on`;
    /// `None` for a coordinator driven without a server, as in unit tests).
    mutual_tls: Mutex<Option<bool>>,
    /// MiB of chunked replies being reassembled ([`UPLOAD_BUDGET_MIB`]).
    upload_budget: Arc<tokio::sync::Semaphore>,
}

/// The coordinator's shared state; cheap to clone into each service.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

impl Coordinator {
    /// A coordinator over `store`. Jobs the store still lists as running were cut short by a
    /// previous coordinator's crash or shutdown: each is resumed from its last recorded round
    /// (same model bytes, no round run or counted twice) and offered again to the sites as they
    /// reconnect. A job whose records cannot be read back is marked failed, durably and with
    /// the reason, so nobody waits on it.
    pub fn new(store: Store) -> Result<Coordinator, fedcare_store::StoreError> {
        let mut resumed = BTreeMap::new();
        for job in store.jobs()? {
            if job.status == JobStatus::Running {
                match resume(&store, &job) {
                    Ok(entry) => {
                        info!(job = %job.job_id, rounds_done = entry.run.rounds_done(), "resuming a job interrupted by a coordinator restart");
                        resumed.insert(entry.run.id().clone(), entry);
                        continue;
                    }
                    Err(why) => warn!(job = %job.job_id, reason = %why, "an interrupted job cannot be resumed"),
                }
                let reason = "the coordinator stopped while this job was running and its records could not be read back \
                              to resume it (see the coordinator's log); submit it again"
                    .to_owned();
                warn!(job = %job.job_id, "job was interrupted by a coordinator restart; marked failed");
                store.set_status(&job.job_id, &JobStatus::Failed { reason: reason.clone() })?;
                let event = pb::JobEvent {
                    job_id: job.job_id.clone(),
                    elapsed_ms: 0,
                    kind: Some(pb::job_event::Kind::Failed(pb::JobFailed { reason })),
                };
                store.append_event(&job.job_id, &event.encode_to_vec())?;
            }
        }
        let metrics = crate::metrics::Metrics::new();
        metrics.jobs_resumed(resumed.len());
        Ok(Coordinator {
            inner: Arc::new(Inner {
                store,
                started: Instant::now(),
                state: Mutex::new(State { sites: BTreeMap::new(), lost: BTreeMap::new(), jobs: resumed, next_conn: 1, closing: false }),
                audit: Mutex::new(None),
                metrics,
                mutual_tls: Mutex::new(None),
                upload_budget: Arc::new(tokio::sync::Semaphore::new(UPLOAD_BUDGET_MIB as usize)),
            }),
        })
    }

    /// Keeps the coordinator's audit log in `log`: every job submitted (and by whom), every
    /// site connected (and as whom), every completed round (its sites and the model's hash)
    /// and every released model and report are appended, hash-chained and fsync'd, before the
    /// coordinator acts on them. If the log cannot be written, the act is refused (a job is not
    /// started, a site not connected) or the job fails: nothing happens unrecorded.
    pub fn set_audit_log(&self, log: fedcare_audit::AuditLog) {
        *self.inner.audit.lock().unwrap_or_else(|p| p.into_inner()) = Some(log);
    }

    /// Records how connections are secured, for the reports of jobs it finishes.
    pub fn set_mutual_tls(&self, on: bool) {
        *self.inner.mutual_tls.lock().unwrap_or_else(|p| p.into_inner()) = Some(on);
    }

    /// The coordinator's Prometheus metrics (serve them with [`crate::metrics::serve_metrics`]).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// [`Auth::require`], counting a refusal in the metrics.
    fn authorize<T>(&self, auth: Auth, request: &Request<T>, allowed: &[fedcare_pki::Role], what: &str) -> Result<Option<fedcare_pki::Identity>, Status> {
        auth.require(request, allowed, what).inspect_err(|_| self.inner.metrics.refused("unauthorized"))
    }

    /// Whether an audit log is kept (digests are computed only then).
    fn audited(&self) -> bool {
        self.inner.audit.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Records the digests not yet in an entry (a job's last messages).
    fn audit_payloads(&self, job: &mut JobEntry, id: &JobId) {
        let payloads = std::mem::take(&mut job.payloads);
        if !payloads.is_empty() {
            let _ = self.audit(fedcare_audit::AuditEvent::PayloadsExchanged { job_id: id.to_string(), payloads });
        }
    }

    /// Appends to the audit log if one is kept.
    fn audit(&self, event: fedcare_audit::AuditEvent) -> Result<(), String> {
        let mut guard = self.inner.audit.lock().unwrap_or_else(|p| p.into_inner());
        let Some(log) = guard.as_mut() else { return Ok(()) };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        log.append(event, now).map(|_| ()).map_err(|e| {
            tracing::error!(error = %e, "cannot write the coordinator's audit log");
            format!("the coordinator's audit log cannot be written: {e}")
        })
    }

    /// The stored (durable) events of a job from an earlier coordinator run, if any.
    fn stored_events(&self, id: &JobId) -> Result<Option<Vec<pb::JobEvent>>, Status> {
        let internal = |e: fedcare_store::StoreError| Status::internal(e.to_string());
        if self.inner.store.job(id.as_str()).map_err(internal)?.is_none() {
            return Ok(None);
        }
        let raw = self.inner.store.events(id.as_str()).map_err(internal)?;
        let events = raw
            .iter()
            .map(|b| pb::JobEvent::decode(b.as_slice()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::data_loss(format!("a stored event of job {id} does not decode: {e}")))?;
        Ok(Some(events))
    }

    fn now_ms(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug in this crate; the state machines are written
        // not to panic on input, so a poisoned lock is recovered rather than taking the whole
        // coordinator down with it.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies deadlines; the server calls this periodically.
    pub fn tick(&self) {
        let now = self.now_ms();
        let mut st = self.lock();
        if st.closing {
            return;
        }
        let ids: Vec<JobId> = st.jobs.iter().filter(|(_, j)| !j.run.is_over()).map(|(id, _)| id.clone()).collect();
        for id in ids {
            if let Some(job) = st.jobs.get_mut(&id)
                && job.run.next_deadline().is_some_and(|d| d <= now) {
                    job.run.tick(now);
                    self.drive(&mut st, &id);
                }
        }
    }

    /// Validates, stores and starts a job; returns its id.
    pub fn submit(&self, spec_toml: &str) -> Result<JobId, Status> {
        self.submit_by(spec_toml, "unauthenticated (no TLS)")
    }

    /// [`Coordinator::submit`] for the research lead `by` (their certificate's identity).
    pub fn submit_by(&self, spec_toml: &str, by: &str) -> Result<JobId, Status> {
        let spec = JobSpec::from_toml(spec_toml, "submitted job spec").map_err(|e| Status::invalid_argument(e.to_string()))?;
        let id = spec.id();
        let n_features = spec.n_features();
        let layout = fedcare_models::layout(&spec.model, n_features);
        let initial = fedcare_models::init(&spec.model, n_features, spec.seed);
        let mut st = self.lock();
        if st.closing {
            return Err(closing());
        }
        if st.jobs.contains_key(&id) {
            return Err(Status::already_exists(format!("job {id} was already submitted")));
        }
        self.audit(fedcare_audit::AuditEvent::JobSubmitted { job_id: id.to_string(), job_name: spec.name.clone(), by: by.to_owned() })
            .map_err(Status::unavailable)?;
        let record = JobRecord {
            job_id: id.to_string(),
            name: spec.name.clone(),
            spec_toml: spec_toml.to_owned(),
            submitted_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            status: JobStatus::Running,
        };
        self.inner.store.insert_job(&record).map_err(|e| match e {
            fedcare_store::StoreError::AlreadyExists(_) => {
                Status::already_exists(format!("job {id} is already in the coordinator's state file"))
            }
            e => Status::internal(format!("could not record the job: {e}")),
        })?;
        let spec = Arc::new(spec);
        // The central mechanism's noise: ChaCha20 keyed from the operating system's CSPRNG.
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| Status::internal("the system's random generator failed"))?;
        let run = JobRun::new(spec.clone(), spec_toml.into(), layout.digest(), initial.values)
            .with_noise(<rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::from_seed(seed))
        .with_unmask_threads(unmask_threads());
        zeroize::Zeroize::zeroize(&mut seed);
        info!(job = %id.short(), name = %spec.name, rounds = spec.rounds, min_sites = spec.min_sites, "job submitted");
        st.jobs.insert(id.clone(), JobEntry {
            run,
            spec,
            layout,
            submitted: Instant::now(),
            events: Vec::new(),
            published: watch::channel((0, false)).0,
            payloads: Vec::new(),
            cancelled: false,
            model_payload: None,
        });
        self.inner.metrics.job_submitted();
        let now = self.now_ms();
        let sites: Vec<(SiteId, Vec<u8>)> = st.sites.iter().map(|(s, c)| (s.clone(), c.identity.clone())).collect();
        if let Some(job) = st.jobs.get_mut(&id) {
            for (s, key) in &sites {
                job.run.site_available(s, key, now);
            }
        }
        self.drive(&mut st, &id);
        Ok(id)
    }

    /// Ends every site's work stream and every watcher's event stream, for a graceful stop:
    /// the server waits for open streams, and these never end by themselves. Sites are not
    /// treated as lost (no job changes state), so every running job is resumed, as it was,
    /// by the next coordinator on this state file; agents reconnect to it with backoff.
    pub fn shut_down(&self) {
        let mut st = self.lock();
        st.closing = true;
        st.sites.clear();
        for job in st.jobs.values_mut() {
            // Dropping the sender ends its watchers' streams.
            job.published = watch::channel((job.events.len(), job.run.is_over())).0;
        }
        info!("shutting down: site and watcher streams closed");
    }

    /// Registers a site's work stream, replacing an older one of the same site.
    fn connect(&self, site: SiteId, agent_version: String, identity: Vec<u8>, authenticated_as: &str) -> Result<SiteStream, Status> {
        self.audit(fedcare_audit::AuditEvent::SiteConnected { site: site.to_string(), identity: authenticated_as.to_owned() })
            .map_err(Status::unavailable)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let now = self.now_ms();
        let mut st = self.lock();
        if st.closing {
            return Err(closing());
        }
        let conn = st.next_conn;
        st.next_conn += 1;
        st.lost.remove(&site);
        if st.sites.insert(site.clone(), SiteConn { conn, tx, agent_version, identity: identity.clone(), last_model: None }).is_some() {
            // The old stream is gone; anything it owed is lost with it.
            warn!(site = %site, "site reconnected; its previous stream is closed");
            self.site_gone(&mut st, &site, now);
        }
        info!(site = %site, "site connected");
        self.inner.metrics.sites_connected(st.sites.len());
        let ids: Vec<JobId> = st.jobs.keys().cloned().collect();
        for id in ids {
            if let Some(job) = st.jobs.get_mut(&id) {
                job.run.site_available(&site, &identity, now);
            }
            self.drive(&mut st, &id);
        }
        Ok(SiteStream { rx, _guard: ConnGuard { coordinator: self.clone(), site, conn } })
    }

    fn disconnect(&self, site: &SiteId, conn: u64) {
        let now = self.now_ms();
        let mut st = self.lock();
        if st.sites.get(site).is_some_and(|c| c.conn == conn) {
            if let Some(c) = st.sites.remove(site) {
                st.lost.insert(site.clone(), (now, c.agent_version));
            }
            info!(site = %site, "site disconnected");
            self.inner.metrics.sites_connected(st.sites.len());
            self.site_gone(&mut st, site, now);
        }
    }

    fn site_gone(&self, st: &mut State, site: &SiteId, now: u64) {
        let ids: Vec<JobId> = st.jobs.keys().cloned().collect();
        for id in ids {
            if let Some(job) = st.jobs.get_mut(&id) {
                job.run.site_lost(site, now);
            }
            self.drive(st, &id);
        }
    }

    /// Feeds a site's reply into its job. `chunked` is the SHA-256 and length of the reply's
    /// encoding when it arrived in chunks (already checked), so it is not encoded again.
    fn reply(&self, reply: pb::SiteReply, chunked: Option<([u8; 32], usize)>) -> Result<(), Status> {
        let metrics = &self.inner.metrics;
        let len = chunked.map_or_else(|| reply.encoded_len(), |(_, len)| len);
        metrics.received(len);
        let received = self.audited().then(|| {
            let sha = match chunked {
                Some((sha, _)) => hex::encode(sha),
                None => fedcare_audit::sha256_hex(&reply.encode_to_vec()),
            };
            (reply.site_id.clone(), fedcare_wire::reply_round(&reply), sha, len)
        });
        let reply = fedcare_wire::reply_from_wire(reply).map_err(|e| {
            metrics.refused("malformed");
            Status::invalid_argument(e.to_string())
        })?;
        let kind_name = reply.kind.name();
        let span = info_span!("reply", site = %reply.site, job = %reply.job.short(), task = reply.task.0, kind = reply.kind.name());
        let _enter = span.enter();
        let now = self.now_ms();
        let mut st = self.lock();
        if st.closing {
            return Err(closing());
        }
        let job_id = reply.job.clone();
        let job = st.jobs.get_mut(&job_id).ok_or_else(|| {
            metrics.refused("unknown_job");
            Status::not_found(format!("no job {job_id}"))
        })?;
        if let Some((site, round, sha, len)) = &received {
            job.payloads.push(digest_of("received", site, kind_name, *round, sha, *len));
        }
        let result = job.run.handle_reply(reply, now);
        // A refused update still changes the stage (the site leaves it), so drive either way.
        self.drive(&mut st, &job_id);
        result.map_err(|e| {
            warn!(error = %e, "reply refused");
            metrics.refused(match &e {
                ReplyError::WrongJob { .. } => "wrong_job",
                ReplyError::NotExpected(_) => "not_expected",
                ReplyError::WrongTask { .. } => "stale_or_replayed",
                ReplyError::WrongKind { .. } => "wrong_kind",
                ReplyError::Refused { .. } => "invalid_content",
                ReplyError::JobOver => "job_over",
            });
            match e {
                ReplyError::Refused { .. } => Status::invalid_argument(e.to_string()),
                _ => Status::failed_precondition(e.to_string()),
            }
        })
    }

    /// Drains a job's actions: queue tasks, persist then publish events, store results.
    fn drive(&self, st: &mut State, id: &JobId) {
        loop {
            let Some(job) = st.jobs.get_mut(id) else { return };
            let Some(action) = job.run.poll() else { return };
            match action {
                Action::Send { site, task } => {
                    // Once secure aggregation starts, no task names the current model again
                    // before the round ends with a new one: free its encoding for the
                    // unmasking, the round's memory peak.
                    if matches!(task.kind, fedcare_protocol::messages::TaskKind::ShareKeys { .. }) {
                        job.model_payload = None;
                    }
                    // A model too large for one message goes first, in chunks cut from one
                    // shared encoding; the task then names it by digest.
                    let mut chunks = Vec::new();
                    let mut chunked = None;
                    if let Some(model) = fedcare_wire::task_model(&task)
                        && model.values.len() * 4 > fedcare_wire::chunk::INLINE_LIMIT
                    {
                        let payload = ModelPayload::for_values(&mut job.model_payload, &model.values);
                        let conn = st.sites.get_mut(&site);
                        let held = conn.as_ref().is_some_and(|c| c.last_model == Some(payload.sha256));
                        if let Some(c) = conn {
                            c.last_model = Some(payload.sha256);
                        }
                        let job_id = task.job.to_string();
                        if !held {
                            chunks.extend(fedcare_wire::chunk::split(&payload.bytes, payload.sha256, fedcare_wire::chunk::CHUNK_BYTES).map(|c| {
                                pb::Task { job_id: job_id.clone(), task_id: task.id.0, kind: Some(pb::task::Kind::ModelChunk(c)) }
                            }));
                            self.inner.metrics.sent(payload.bytes.len());
                        }
                        if self.audited() && !held {
                            let round = match &task.kind {
                                fedcare_protocol::messages::TaskKind::Train { round, .. } | fedcare_protocol::messages::TaskKind::Eval { round, .. } => Some(*round),
                                _ => None,
                            };
                            job.payloads.push(digest_of("sent", site.as_str(), "model", round, &hex::encode(payload.sha256), payload.bytes.len()));
                        }
                        chunked = Some(payload.sha256);
                    }
                    let wire = fedcare_wire::task_to_wire_with(&task, chunked);
                    self.inner.metrics.sent(wire.encoded_len());
                    if self.audited() {
                        let d = digest("sent", site.as_str(), task.kind.name(), fedcare_wire::task_round(&wire), &wire.encode_to_vec());
                        job.payloads.push(d);
                    }
                    let delivered = st.sites.get(&site).is_some_and(|c| {
                        chunks.into_iter().chain(std::iter::once(wire)).all(|t| c.tx.send(Ok(t)).is_ok())
                    });
                    if !delivered {
                        let now = self.now_ms();
                        if let Some(job) = st.jobs.get_mut(id) {
                            job.run.site_lost(&site, now);
                        }
                    }
                }
                Action::Event(event) => {
                    match &event {
                        JobEvent::RoundDone(r) => info!(
                            job = %id.short(),
                            round = r.round,
                            sites = r.sites.len(),
                            train_loss = r.train_loss.unwrap_or(f64::NAN),
                            test_accuracy = r.eval.accuracy(),
                            ms = r.finished_ms.saturating_sub(r.started_ms),
                            "round done"
                        ),
                        JobEvent::SiteRefused { site, round, reason } => {
                            warn!(job = %id.short(), site = %site, round, %reason, "site left the round")
                        }
                        JobEvent::SitesJoined(sites) => info!(job = %id.short(), sites = sites.len(), "sites joined"),
                        _ => {}
                    }
                    if let JobEvent::RoundDone(record) = &event {
                        self.inner.metrics.round_completed(record.finished_ms.saturating_sub(record.started_ms));
                        let model_sha256 = hex::encode(fedcare_wire::chunk::model_sha256(job.run.model()));
                        let sites = record.sites.iter().map(|s| s.to_string()).collect();
                        let payloads = std::mem::take(&mut job.payloads);
                        if let Err(reason) = self.audit(fedcare_audit::AuditEvent::RoundCompleted { job_id: id.to_string(), round: record.round, sites, model_sha256, payloads }) {
                            job.run.abort(reason);
                            continue;
                        }
                        let stored = serde_json::to_string(record)
                            .map_err(|e| e.to_string())
                            .and_then(|json| self.inner.store.put_round(id.as_str(), record.round, job.run.model(), &json).map_err(|e| e.to_string()));
                        if let Err(e) = stored {
                            // A round that is not on disk must not be acted on: resuming would
                            // run it again and the sites would spend their budget twice.
                            warn!(error = %e, round = record.round, "could not persist the round; the job stops");
                            job.run.abort(format!(
                                "the coordinator could not store round {} ({e}); the job stops rather than go on unrecorded. \
                                 Free disk space or repair the state file, then submit the job again",
                                record.round
                            ));
                            continue;
                        }
                    }
                    let wire = event_to_wire(&event);
                    self.publish(job, wire);
                }
                Action::Finished(outcome) => {
                    self.audit_payloads(job, id);
                    let kind = match self.finish(job, &outcome) {
                        Ok(report_json) => {
                            self.inner.metrics.job_ended("finished");
                            let _ = self.audit(fedcare_audit::AuditEvent::JobEnded { job_id: id.to_string(), success: true, reason: String::new() });
                            pb::job_event::Kind::Finished(pb::JobFinished { report_json })
                        }
                        Err(reason) => {
                            self.inner.metrics.job_ended("failed");
                            let _ = self.inner.store.set_status(id.as_str(), &JobStatus::Failed { reason: reason.clone() });
                            pb::job_event::Kind::Failed(pb::JobFailed { reason })
                        }
                    };
                    self.publish(job, kind);
                }
                Action::Failed(reason) => {
                    let status = if job.cancelled {
                        info!(job = %id.short(), %reason, "job cancelled");
                        JobStatus::Cancelled { reason: reason.clone() }
                    } else {
                        warn!(job = %id.short(), %reason, "job failed");
                        JobStatus::Failed { reason: reason.clone() }
                    };
                    self.inner.metrics.job_ended(status.name());
                    self.audit_payloads(job, id);
                    let _ = self.audit(fedcare_audit::AuditEvent::JobEnded { job_id: id.to_string(), success: false, reason: reason.clone() });
                    if let Err(e) = self.inner.store.set_status(id.as_str(), &status) {
                        warn!(error = %e, "could not persist the job's failure");
                    }
                    self.publish(job, pb::job_event::Kind::Failed(pb::JobFailed { reason }));
                }
            }
        }
    }

    /// Writes the final model and report; returns the report JSON.
    fn finish(&self, job: &JobEntry, outcome: &JobOutcome) -> Result<String, String> {
        let params = FlatParams::new(job.layout.clone(), outcome.model.clone()).map_err(|e| format!("final model invalid: {e}"))?;
        let bytes = fedcare_models::to_bytes(&job.spec.model, &params).map_err(|e| format!("could not encode the model: {e}"))?;
        let mut report = Report::build(&job.spec, outcome, &job.layout.digest());
        report.finished = Some(crate::report::utc(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)));
        report.mutual_tls = *self.inner.mutual_tls.lock().unwrap_or_else(|p| p.into_inner());
        let json = serde_json::to_string_pretty(&report).map_err(|e| format!("could not encode the report: {e}"))?;
        self.audit(fedcare_audit::AuditEvent::ModelReleased {
            job_id: job.run.id().to_string(),
            model_sha256: fedcare_audit::sha256_hex(&bytes),
            report_sha256: fedcare_audit::sha256_hex(json.as_bytes()),
        })?;
        self.inner.store.put_result(job.run.id().as_str(), &bytes, &json).map_err(|e| format!("could not store the result: {e}"))?;
        info!(job = %job.run.id().short(), accuracy = ?report.federated.as_ref().map(|m| m.accuracy), "job finished");
        Ok(json)
    }

    fn publish(&self, job: &mut JobEntry, kind: pb::job_event::Kind) {
        let event = pb::JobEvent {
            job_id: job.run.id().to_string(),
            elapsed_ms: job.submitted.elapsed().as_millis() as u64,
            kind: Some(kind),
        };
        // Progress events (which site finished which step) are transient and the most frequent
        // by far; persisting each would put an fsync under the lock for every reply. Everything
        // that changes what a job is (sites joined or left, statistics, rounds, the end) is
        // written before watchers see it.
        let transient = matches!(event.kind, Some(pb::job_event::Kind::Progress(_)));
        if !transient
            && let Err(e) = self.inner.store.append_event(job.run.id().as_str(), &event.encode_to_vec()) {
                // What cannot be recorded must not go on: stop the job with the cause (its
                // failure is published, from memory, to the watchers still connected).
                warn!(error = %e, "could not persist a job event; the job stops");
                job.run.abort(format!(
                    "the coordinator could not record the job's progress ({e}); the job stops rather than go on unrecorded. \
                     Free disk space or repair the state file, then submit the job again"
                ));
            }
        job.events.push(event);
        let over = job.run.is_over();
        job.published.send_replace((job.events.len(), over));
    }

    /// Events of a job from index `from`, whether the job is over, and a receiver to wait on.
    fn events_since(&self, id: &JobId, from: usize) -> Option<EventsSince> {
        let st = self.lock();
        let job = st.jobs.get(id)?;
        let events = job.events.get(from..).unwrap_or_default().to_vec();
        let over = job.published.borrow().1;
        Some((events, over, job.published.subscribe()))
    }

    pub fn sites(&self) -> Vec<pb::SiteInfo> {
        let now = self.now_ms();
        let st = self.lock();
        st.sites
            .iter()
            .map(|(id, c)| {
                let job = st
                    .jobs
                    .iter()
                    .find(|(_, j)| !j.run.is_over() && j.run.participants().any(|p| p == id))
                    .map(|(jid, _)| jid.to_string())
                    .unwrap_or_default();
                pb::SiteInfo { site_id: id.to_string(), agent_version: c.agent_version.clone(), job_id: job, connected: true, lost_ms_ago: 0 }
            })
            .chain(st.lost.iter().map(|(id, (at, version))| pb::SiteInfo {
                site_id: id.to_string(),
                agent_version: version.clone(),
                job_id: String::new(),
                connected: false,
                lost_ms_ago: now.saturating_sub(*at),
            }))
            .collect()
    }

    fn fetch(&self, id: &JobId) -> Result<pb::FetchModelResponse, Status> {
        {
            let st = self.lock();
            if let Some(job) = st.jobs.get(id)
                && !job.run.is_over() {
                    let round = job.run.history().len();
                    return Err(Status::failed_precondition(format!(
                        "job {} is still running ({} stage, {round} of {} rounds done)",
                        id.short(),
                        job.run.stage_name(),
                        job.spec.rounds
                    )));
                }
        }
        match self.inner.store.result(id.as_str()) {
            Ok(Some((safetensors, report_json))) => Ok(pb::FetchModelResponse { safetensors, report_json }),
            Ok(None) => match self.inner.store.job(id.as_str()) {
                Ok(Some(rec)) => match rec.status {
                    JobStatus::Failed { reason } => Err(Status::failed_precondition(format!("job failed: {reason}"))),
                    JobStatus::Cancelled { reason } => Err(Status::failed_precondition(format!("job was cancelled: {reason}"))),
                    _ => Err(Status::failed_precondition("job has no result")),
                },
                Ok(None) => Err(Status::not_found(format!("no job {id}"))),
                Err(e) => Err(Status::internal(e.to_string())),
            },
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }
}

impl Coordinator {
    /// A job's rounds so far: from memory for a job of this run, else from the state file.
    fn rounds_of(&self, id: &str) -> Result<Vec<fedcare_protocol::RoundRecord>, Status> {
        if let Ok(job_id) = fedcare_wire::job_id(id)
            && let Some(job) = self.lock().jobs.get(&job_id)
        {
            return Ok(job.run.history().to_vec());
        }
        let internal = |e: fedcare_store::StoreError| Status::internal(e.to_string());
        let last = self.inner.store.last_round(id).map_err(internal)?.unwrap_or(0);
        (1..=last)
            .map(|round| {
                let json = self
                    .inner
                    .store
                    .round_record(id, round)
                    .map_err(internal)?
                    .ok_or_else(|| Status::data_loss(format!("round {round} of job {id} has no record")))?;
                serde_json::from_str(&json).map_err(|e| Status::data_loss(format!("round {round} of job {id}: {e}")))
            })
            .collect()
    }

    fn summary(&self, rec: &JobRecord, rounds: &[fedcare_protocol::RoundRecord]) -> pb::JobSummary {
        let rounds_total = JobSpec::from_toml(&rec.spec_toml, "stored job spec").map_or(0, |s| s.rounds);
        let stage = match fedcare_wire::job_id(&rec.job_id) {
            Ok(id) => self.lock().jobs.get(&id).filter(|j| !j.run.is_over()).map(|j| j.run.stage_name().to_owned()).unwrap_or_default(),
            Err(_) => String::new(),
        };
        pb::JobSummary {
            job_id: rec.job_id.clone(),
            name: rec.name.clone(),
            state: rec.status.name().to_owned(),
            reason: rec.status.reason().to_owned(),
            rounds_done: rounds.len() as u32,
            rounds_total,
            submitted_unix_ms: rec.submitted_unix_ms,
            stage,
            accuracy: rounds.last().filter(|r| r.eval.n > 0).map(|r| r.eval.accuracy()),
        }
    }

    fn record(&self, id: &JobId) -> Result<JobRecord, Status> {
        self.inner
            .store
            .job(id.as_str())
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::not_found(format!("no job {id} is known to this coordinator")))
    }

    /// Every recorded job, newest first.
    pub fn list_jobs(&self) -> Result<Vec<pb::JobSummary>, Status> {
        let mut records = self.inner.store.jobs().map_err(|e| Status::internal(e.to_string()))?;
        records.sort_by(|a, b| b.submitted_unix_ms.cmp(&a.submitted_unix_ms).then_with(|| a.job_id.cmp(&b.job_id)));
        records.iter().map(|rec| Ok(self.summary(rec, &self.rounds_of(&rec.job_id)?))).collect()
    }

    /// One job: its summary, its rounds, and its report once finished.
    pub fn get_job(&self, id: &JobId) -> Result<pb::GetJobResponse, Status> {
        let rec = self.record(id)?;
        let rounds = self.rounds_of(id.as_str())?;
        let report_json = match rec.status {
            JobStatus::Finished => self.inner.store.result(id.as_str()).map_err(|e| Status::internal(e.to_string()))?.map(|r| r.1).unwrap_or_default(),
            _ => String::new(),
        };
        Ok(pb::GetJobResponse { summary: Some(self.summary(&rec, &rounds)), rounds: rounds.iter().map(round_to_wire).collect(), report_json })
    }

    /// Cancels a running job on behalf of `by`: its sites are sent the end of the job (so they
    /// spend no further privacy budget), and it is recorded as cancelled, with who and why.
    pub fn cancel(&self, id: &JobId, by: &str, why: &str) -> Result<pb::JobSummary, Status> {
        let why = why.trim();
        let reason = if why.is_empty() { format!("cancelled by {by}") } else { format!("cancelled by {by}: {why}") };
        {
            let mut st = self.lock();
            if st.closing {
                return Err(closing());
            }
            let Some(job) = st.jobs.get_mut(id).filter(|j| !j.run.is_over()) else {
                drop(st);
                let rec = self.record(id)?;
                return Err(Status::failed_precondition(format!("job {} is not running: it is {}", id.short(), rec.status.name())));
            };
            job.cancelled = true;
            job.run.abort(reason);
            self.drive(&mut st, id);
        }
        let rec = self.record(id)?;
        Ok(self.summary(&rec, &self.rounds_of(id.as_str())?))
    }
}

/// New events, whether the job is over, and a receiver that changes when more arrive.
type EventsSince = (Vec<pb::JobEvent>, bool, watch::Receiver<(usize, bool)>);

fn event_to_wire(e: &JobEvent) -> pb::job_event::Kind {
    use pb::job_event::Kind;
    match e {
        JobEvent::SitesJoined(sites) => Kind::Joined(pb::SitesJoined { sites: sites.iter().map(|s| s.to_string()).collect() }),
        JobEvent::SiteRefused { site, round, reason } => {
            Kind::Refused(pb::SiteRefused { site_id: site.to_string(), round: *round, reason: reason.clone() })
        }
        JobEvent::StatsDone { total_examples } => Kind::StatsDone(pb::StatsDone { total_examples: *total_examples }),
        JobEvent::Progress { round, stage, sites_done, sites_total, waiting } => Kind::Progress(pb::RoundProgress {
            round: *round,
            stage: (*stage).to_owned(),
            sites_done: *sites_done,
            sites_total: *sites_total,
            waiting: waiting.iter().map(|s| s.to_string()).collect(),
        }),
        JobEvent::RoundDone(r) => Kind::RoundDone(round_to_wire(r)),
    }
}

fn round_to_wire(r: &fedcare_protocol::RoundRecord) -> pb::RoundDone {
    pb::RoundDone {
        round: r.round,
        sites: r.sites.len() as u32,
        // NaN on the wire: not released (differential privacy).
        train_loss: r.train_loss.unwrap_or(f64::NAN),
        eval_loss: r.eval.mean_loss(),
        eval_accuracy: r.eval.accuracy(),
        round_ms: r.finished_ms.saturating_sub(r.started_ms),
        eval_auc: r.eval.auc(),
        eval_n: r.eval.n,
    }
}

/// Unregisters a site when its stream is dropped (the site disconnected).
struct ConnGuard {
    coordinator: Coordinator,
    site: SiteId,
    conn: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.coordinator.disconnect(&self.site, self.conn);
    }
}

/// A site's task stream.
pub struct SiteStream {
    rx: mpsc::UnboundedReceiver<Result<pb::Task, Status>>,
    _guard: ConnGuard,
}

impl Stream for SiteStream {
    type Item = Result<pb::Task, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

// ----- gRPC services -----

/// Whether callers are authenticated by their certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Mutual TLS: the caller's identity and role come from its certificate.
    MutualTls,
    /// Development only: no authentication, a site is known by the name it sends.
    Plaintext,
}

impl Auth {
    /// Under mutual TLS, the caller's identity if its role is one of `allowed`; a clear
    /// `PermissionDenied` (wrong role) or `Unauthenticated` (no identity) otherwise.
    fn require<T>(self, request: &Request<T>, allowed: &[fedcare_pki::Role], what: &str) -> Result<Option<fedcare_pki::Identity>, Status> {
        match self {
            Auth::Plaintext => Ok(None),
            Auth::MutualTls => match fedcare_pki::require_role(request, allowed) {
                Ok(id) => Ok(Some(id)),
                Err(e) => {
                    warn!(what, error = %e, "call refused");
                    Err(Status::from(e))
                }
            },
        }
    }

    /// Under mutual TLS, checks that the site name a message carries is the one its sender's
    /// certificate names.
    fn check_site_name(self, id: &Option<fedcare_pki::Identity>, claimed: &str) -> Result<(), Status> {
        match id {
            Some(id) if id.name() != claimed => Err(Status::permission_denied(format!(
                "this connection's certificate names site {:?}, but the message says {claimed:?}",
                id.name()
            ))),
            _ => Ok(()),
        }
    }
}

/// Roles that may use the admin service: research leads (jobs) and operators (watching).
const ADMIN_ROLES: [fedcare_pki::Role; 2] = [fedcare_pki::Role::ResearchLead, fedcare_pki::Role::Operator];

/// The site-facing service.
#[derive(Clone)]
pub struct SiteApi(pub Coordinator, pub Auth);

#[tonic::async_trait]
impl pb::site_service_server::SiteService for SiteApi {
    type JoinStream = SiteStream;

    async fn join(&self, request: Request<pb::JoinRequest>) -> Result<Response<SiteStream>, Status> {
        let id = self.0.authorize(self.1, &request, &[fedcare_pki::Role::Site], "join")?;
        let r = request.into_inner();
        self.1.check_site_name(&id, &r.site_id)?;
        let site = fedcare_wire::site_id(&r.site_id, "site_id").map_err(|e| Status::invalid_argument(e.to_string()))?;
        let _span = info_span!("join", site = %site).entered();
        if r.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "site speaks protocol version {}, this coordinator speaks {PROTOCOL_VERSION}",
                r.protocol_version
            )));
        }
        if r.identity_public_key.len() != 32 {
            return Err(Status::invalid_argument(format!(
                "identity_public_key must be a 32-byte Ed25519 public key, got {} bytes",
                r.identity_public_key.len()
            )));
        }
        let who = id.as_ref().map_or_else(|| "unauthenticated (no TLS)".to_owned(), |i| i.urn());
        Ok(Response::new(self.0.connect(site, r.agent_version, r.identity_public_key, &who)?))
    }

    async fn submit(&self, request: Request<pb::SiteReply>) -> Result<Response<pb::SubmitAck>, Status> {
        let id = self.0.authorize(self.1, &request, &[fedcare_pki::Role::Site], "submit")?;
        let reply = request.into_inner();
        self.1.check_site_name(&id, &reply.site_id)?;
        self.0.reply(reply, None)?;
        Ok(Response::new(pb::SubmitAck {}))
    }

    /// A reply too large for one message. It is reassembled within the coordinator's upload
    /// budget ([`UPLOAD_BUDGET_MIB`]), its SHA-256 checked, and only then decoded and handled
    /// exactly as a [`submit`](Self::submit); any fault in the chunks refuses the whole reply
    /// and changes nothing.
    async fn submit_chunked(&self, request: Request<tonic::Streaming<pb::Chunk>>) -> Result<Response<pb::SubmitAck>, Status> {
        let id = self.0.authorize(self.1, &request, &[fedcare_pki::Role::Site], "submit")?;
        let metrics = &self.0.inner.metrics;
        let malformed = |e: fedcare_wire::chunk::ChunkError| {
            metrics.refused("malformed");
            Status::invalid_argument(format!("chunked reply refused: {e}"))
        };
        let mut stream = request.into_inner();
        // A sender that stalls is cut off rather than left holding its buffer and the budget.
        let mut next = async || match tokio::time::timeout(CHUNK_IDLE, stream.message()).await {
            Ok(m) => m,
            Err(_) => Err(Status::deadline_exceeded(format!("chunked reply: no chunk for {} s", CHUNK_IDLE.as_secs()))),
        };
        let first = next().await?.ok_or_else(|| malformed(fedcare_wire::chunk::ChunkError::EmptyPayload))?;
        let mut asm = fedcare_wire::chunk::Assembler::new(&first, fedcare_wire::chunk::MAX_PAYLOAD_BYTES)
            .map_err(malformed)?
            .with_min_chunk(fedcare_wire::chunk::MIN_CHUNK_BYTES);
        // Hold budget for the whole payload (all of it if the payload is larger) before the
        // assembler allocates or takes in any of it.
        let mib = asm.total().div_ceil(1 << 20).clamp(1, u64::from(UPLOAD_BUDGET_MIB)) as u32;
        let _permit = self.0.inner.upload_budget.clone().acquire_many_owned(mib).await.map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
        let mut complete = asm.push(&first).map_err(malformed)?;
        drop(first);
        while let Some(c) = next().await? {
            if complete {
                return Err(malformed(fedcare_wire::chunk::ChunkError::Overrun { total: asm.total() }));
            }
            complete = asm.push(&c).map_err(malformed)?;
        }
        let digest = asm.digest();
        let payload = asm.finish().map_err(malformed)?;
        let reply = pb::SiteReply::decode(payload.as_slice()).map_err(|e| {
            metrics.refused("malformed");
            Status::invalid_argument(format!("chunked reply does not decode: {e}"))
        })?;
        let len = payload.len();
        drop(payload);
        self.1.check_site_name(&id, &reply.site_id)?;
        self.0.reply(reply, Some((digest, len)))?;
        Ok(Response::new(pb::SubmitAck {}))
    }
}

/// The research lead's and operator's service.
#[derive(Clone)]
pub struct AdminApi(pub Coordinator, pub Auth);

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::Chunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    type WatchJobStream = EventStream;
    type FetchModelStream = ChunkStream;

    async fn submit_job(&self, request: Request<pb::SubmitJobRequest>) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let caller = self.0.authorize(self.1, &request, &[fedcare_pki::Role::ResearchLead], "submit_job")?;
        let _span = info_span!("submit_job", by = %caller.as_ref().map_or("(unauthenticated)".to_owned(), |c| c.to_string())).entered();
        let by = caller.as_ref().map_or_else(|| "unauthenticated (no TLS)".to_owned(), |c| c.urn());
        let id = self.0.submit_by(&request.into_inner().spec_toml, &by)?;
        Ok(Response::new(pb::SubmitJobResponse { job_id: id.to_string() }))
    }

    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<EventStream>, Status> {
        self.0.authorize(self.1, &request, &ADMIN_ROLES, "watch_job")?;
        let id = fedcare_wire::job_id(&request.into_inner().job_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        info!(job = %id.short(), "watch_job");
        if self.0.events_since(&id, 0).is_none() {
            // A job from an earlier run of this coordinator: replay what was stored, then end.
            return match self.0.stored_events(&id)? {
                Some(events) => {
                    let items: Vec<Result<pb::JobEvent, Status>> = events.into_iter().map(Ok).collect();
                    Ok(Response::new(Box::pin(futures::stream::iter(items))))
                }
                None => Err(Status::not_found(format!("no job {id} is known to this coordinator"))),
            };
        }
        let coordinator = self.0.clone();
        // Replay from the start, then follow: each step takes what is new since `next`.
        let stream = futures::stream::unfold((0usize, None::<watch::Receiver<(usize, bool)>>), move |(next, rx)| {
            let coordinator = coordinator.clone();
            let id = id.clone();
            async move {
                let mut rx = rx;
                loop {
                    let (events, over, fresh_rx) = coordinator.events_since(&id, next)?;
                    let rx_ref = rx.get_or_insert(fresh_rx);
                    if !events.is_empty() {
                        let n = events.len();
                        let items: Vec<Result<pb::JobEvent, Status>> = events.into_iter().map(Ok).collect();
                        return Some((futures::stream::iter(items), (next + n, rx)));
                    }
                    if over {
                        return None;
                    }
                    // Wait for more; a closed channel means the coordinator is shutting down.
                    if rx_ref.changed().await.is_err() {
                        return None;
                    }
                }
            }
        });
        use futures::StreamExt;
        Ok(Response::new(Box::pin(stream.flatten())))
    }

    async fn list_sites(&self, request: Request<pb::ListSitesRequest>) -> Result<Response<pb::ListSitesResponse>, Status> {
        self.0.authorize(self.1, &request, &ADMIN_ROLES, "list_sites")?;
        let _span = info_span!("list_sites").entered();
        Ok(Response::new(pb::ListSitesResponse { sites: self.0.sites() }))
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        self.0.authorize(self.1, &request, &ADMIN_ROLES, "list_jobs")?;
        let _span = info_span!("list_jobs").entered();
        Ok(Response::new(pb::ListJobsResponse { jobs: self.0.list_jobs()? }))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        self.0.authorize(self.1, &request, &ADMIN_ROLES, "get_job")?;
        let id = fedcare_wire::job_id(&request.into_inner().job_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let _span = info_span!("get_job", job = %id.short()).entered();
        Ok(Response::new(self.0.get_job(&id)?))
    }

    async fn cancel_job(&self, request: Request<pb::CancelJobRequest>) -> Result<Response<pb::CancelJobResponse>, Status> {
        let caller = self.0.authorize(self.1, &request, &ADMIN_ROLES, "cancel_job")?;
        let by = caller.as_ref().map_or_else(|| "unauthenticated (no TLS)".to_owned(), |c| c.urn());
        let r = request.into_inner();
        let id = fedcare_wire::job_id(&r.job_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let _span = info_span!("cancel_job", job = %id.short(), %by).entered();
        Ok(Response::new(pb::CancelJobResponse { summary: Some(self.0.cancel(&id, &by, &r.reason)?) }))
    }

    /// The model and report, encoded as one `FetchModelResponse` and sent in chunks.
    async fn fetch_model(&self, request: Request<pb::FetchModelRequest>) -> Result<Response<ChunkStream>, Status> {
        self.0.authorize(self.1, &request, &[fedcare_pki::Role::ResearchLead], "fetch_model")?;
        let id = fedcare_wire::job_id(&request.into_inner().job_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let _span = info_span!("fetch_model", job = %id.short()).entered();
        let payload = bytes::Bytes::from(self.0.fetch(&id)?.encode_to_vec());
        let digest = fedcare_wire::chunk::sha256(&payload);
        let chunks: Vec<Result<pb::Chunk, Status>> =
            fedcare_wire::chunk::split(&payload, digest, fedcare_wire::chunk::CHUNK_BYTES).map(Ok).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}

/// How often deadlines are checked.
pub const TICK: Duration = Duration::from_millis(200);
