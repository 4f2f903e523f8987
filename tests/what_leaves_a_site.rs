//! What leaves a site. A scripted coordinator (implemented here, in the test) drives one real
//! site agent through a job and records every byte-level message the site sends. The test
//! proves the non-negotiable for this stage of the system: a site sends only a decision,
//! aggregate feature sums, model updates and aggregate evaluation counts, and the size and
//! shape of each is fixed by the job, not by the site's records, so no message can carry a
//! record. These scripted runs use a job with secure aggregation off, the widest a site's
//! output can be; `tests/secure_aggregation.rs` shows that with it on (the default) no
//! plaintext update leaves at all.

use std::pin::Pin;
use std::time::Duration;

use fedcare_data::{FeatureSums, Standardization};
use fedcare_e2e::{example_dir, job, site_config};
use fedcare_proto::v1 as pb;
use fedcare_proto::v1::site_service_server::{SiteService, SiteServiceServer};
use futures::Stream;
use prost_free::encoded_len;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status};

mod prost_free {
    /// Encoded size of a message as it travels.
    pub fn encoded_len(m: &fedcare_proto::v1::SiteReply) -> usize {
        prost::Message::encoded_len(m)
    }
}

type TaskStream = Pin<Box<dyn Stream<Item = Result<pb::Task, Status>> + Send>>;

struct Scripted {
    tasks: Mutex<Option<mpsc::UnboundedReceiver<Result<pb::Task, Status>>>>,
    replies: mpsc::UnboundedSender<pb::SiteReply>,
}

#[tonic::async_trait]
impl SiteService for Scripted {
    type JoinStream = TaskStream;
    async fn join(&self, _r: Request<pb::JoinRequest>) -> Result<Response<TaskStream>, Status> {
        let rx = self.tasks.lock().await.take().ok_or_else(|| Status::already_exists("one site only"))?;
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
    async fn submit(&self, r: Request<pb::SiteReply>) -> Result<Response<pb::SubmitAck>, Status> {
        let _ = self.replies.send(r.into_inner());
        Ok(Response::new(pb::SubmitAck {}))
    }
    async fn submit_chunked(&self, r: Request<tonic::Streaming<pb::Chunk>>) -> Result<Response<pb::SubmitAck>, Status> {
        let mut stream = r.into_inner();
        let mut chunks = Vec::new();
        while let Some(c) = stream.message().await? {
            chunks.push(c);
        }
        let payload = fedcare_wire::chunk::collect(chunks, fedcare_wire::chunk::MAX_PAYLOAD_BYTES).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let reply = <pb::SiteReply as prost::Message>::decode(payload.as_slice()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let _ = self.replies.send(reply);
        Ok(Response::new(pb::SubmitAck {}))
    }
}

/// A scripted coordinator with one real site agent (Cleveland's config, reading `data_path`)
/// connected to it.
struct Rig {
    /// The site's audit log (in a temp folder that lives as long as the rig).
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
    tasks: mpsc::UnboundedSender<Result<pb::Task, Status>>,
    replies: mpsc::UnboundedReceiver<pb::SiteReply>,
    agent: tokio::task::JoinHandle<Result<(), fedcare_agent::AgentError>>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Rig {
    async fn start(data_path: &std::path::Path) -> Rig {
        let (tasks, task_rx) = mpsc::unbounded_channel();
        let (reply_tx, replies) = mpsc::unbounded_channel();
        let service = Scripted { tasks: Mutex::new(Some(task_rx)), replies: reply_tx };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(SiteServiceServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let (mut cfg, base) = site_config("cleveland", &url);
        cfg.data.path = data_path.to_owned();
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("cleveland.audit.jsonl");
        cfg.site.audit_log = Some(audit.clone());
        let agent = tokio::spawn(fedcare_agent::Agent::new(cfg, base).unwrap().run(std::future::pending::<()>()));
        Rig { audit, _dir: dir, tasks, replies, agent, server }
    }

    fn stop(self) {
        self.agent.abort();
        self.server.abort();
    }
}

/// Runs one site through a 2-round job and returns everything it sent.
async fn drive_site(data_path: &std::path::Path) -> Vec<pb::SiteReply> {
    let (spec_toml, spec) = job(|s| {
        s.rounds = 2;
        s.secure_aggregation.enabled = false;
    });
    let mut rig = Rig::start(data_path).await;
    let task_tx = rig.tasks.clone();

    let job_id = spec.id().to_string();
    let mut next_id = 0u64;
    let mut task = |kind| {
        next_id += 1;
        pb::Task { job_id: job_id.clone(), task_id: next_id, kind: Some(kind) }
    };
    let mut sent = Vec::new();
    let mut ask = async |t: pb::Task| {
        task_tx.send(Ok(t)).unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(30), rig.replies.recv()).await.expect("site answers").unwrap();
        sent.push(reply.clone());
        reply
    };
    use pb::task::Kind;
    let decision = ask(task(Kind::Offer(pb::JobOffer { spec_toml: spec_toml.clone() }))).await;
    assert!(matches!(decision.kind, Some(pb::site_reply::Kind::Decision(pb::JobDecision { accept: true, .. }))), "{decision:?}");
    let stats = ask(task(Kind::Stats(pb::StatsTask {}))).await;
    let Some(pb::site_reply::Kind::Stats(s)) = stats.kind else { panic!("stats expected") };
    // The example job asks for record-level DP: the sums are noised, so the coordinator's
    // robust form is used, as in `JobRun`.
    let sums = FeatureSums { count: s.count, sum: s.sum, sum_sq: s.sum_sq };
    let std = match fedcare_job::privacy::encoded_bounds(&spec) {
        Some(bounds) => Standardization::from_noisy_sums(&sums, &bounds),
        None => Standardization::from_sums(&sums),
    }
    .unwrap();
    let std = pb::Standardization { mean: std.mean, std: std.std };
    let layout = fedcare_models::layout(&spec.model, spec.n_features());
    let mut model = fedcare_models::init(&spec.model, spec.n_features(), spec.seed).values;
    for round in 1..=spec.rounds {
        let m = pb::Model { layout_digest: layout.digest(), values: model.clone(), values_sha256: vec![] };
        let upd = ask(task(Kind::Train(pb::TrainTask { round, model: Some(m.clone()), standardization: Some(std.clone()), secagg: None }))).await;
        let Some(pb::site_reply::Kind::Update(u)) = upd.kind else { panic!("update expected") };
        model = model.iter().zip(&u.delta).map(|(a, d)| a + d).collect();
        ask(task(Kind::Eval(pb::EvalTask { round, model: Some(m), standardization: Some(std.clone()) }))).await;
    }
    task_tx.send(Ok(task(Kind::End(pb::JobEnd { success: true, reason: String::new() })))).unwrap();
    // Nothing more arrives after the end.
    assert!(tokio::time::timeout(Duration::from_millis(300), rig.replies.recv()).await.is_err(), "site sent after the job ended");
    // The site's audit log accounts for exactly what the coordinator received, byte for byte,
    // and for the job's reception, approval, rounds and end.
    let entries = fedcare_audit::read_verified(&rig.audit).expect("the site's audit log verifies");
    let logged: Vec<(String, u64)> = entries
        .iter()
        .filter_map(|e| match &e.event {
            fedcare_audit::AuditEvent::PayloadSent { sha256, bytes, .. } => Some((sha256.clone(), *bytes)),
            _ => None,
        })
        .collect();
    let received: Vec<(String, u64)> = sent
        .iter()
        .map(|r| {
            let b = prost::Message::encode_to_vec(r);
            (fedcare_audit::sha256_hex(&b), b.len() as u64)
        })
        .collect();
    assert_eq!(logged, received, "audit log and wire disagree");
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| match &e.event {
            fedcare_audit::AuditEvent::JobReceived { .. } => "received",
            fedcare_audit::AuditEvent::JobApproved { .. } => "approved",
            fedcare_audit::AuditEvent::RoundJoined { .. } => "round",
            fedcare_audit::AuditEvent::JobEnded { .. } => "ended",
            _ => "payload",
        })
        .filter(|k| *k != "payload")
        .collect();
    assert_eq!(kinds, ["received", "approved", "round", "round", "ended"]);
    rig.stop();
    sent
}

/// The shape of a message: its kind and the lengths of its repeated fields.
fn shape(r: &pb::SiteReply) -> (&'static str, Vec<usize>) {
    use pb::site_reply::Kind;
    match r.kind.as_ref().unwrap() {
        Kind::Decision(_) => ("decision", vec![]),
        Kind::Stats(s) => ("stats", vec![s.count.len(), s.sum.len(), s.sum_sq.len()]),
        Kind::Update(u) => ("update", vec![u.delta.len()]),
        Kind::Evaluation(e) => ("evaluation", vec![e.pos_hist.len(), e.neg_hist.len()]),
        Kind::Failed(_) => ("failed", vec![]),
        Kind::Keys(_) => ("keys", vec![]),
        Kind::Shares(s) => ("shares", vec![s.shares.len()]),
        Kind::Masked(_) => ("masked", vec![]),
        Kind::Unmask(_) => ("unmask", vec![]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_sends_only_fixed_size_aggregates_whatever_its_records() {
    let full = example_dir().join("data/processed.cleveland.data");
    let small_dir = tempfile::tempdir().unwrap();
    let small = small_dir.path().join("first-60.data");
    let text = std::fs::read_to_string(&full).unwrap();
    std::fs::write(&small, text.lines().take(60).map(|l| format!("{l}\n")).collect::<String>()).unwrap();

    let from_full = drive_site(&full).await;
    let from_small = drive_site(&small).await;

    let (_, spec) = job(|s| {
        s.rounds = 2;
        s.secure_aggregation.enabled = false;
    });
    let params = fedcare_models::layout(&spec.model, spec.n_features()).len();
    let width = spec.n_features();
    let hist = fedcare_models::metrics::HIST_BINS;
    let expected = vec![
        ("decision", vec![]),
        ("stats", vec![width; 3]),
        ("update", vec![params]),
        ("evaluation", vec![hist, hist]),
        ("update", vec![params]),
        ("evaluation", vec![hist, hist]),
    ];
    // 303 records or 60: the same messages, of the same shape.
    assert_eq!(from_full.iter().map(shape).collect::<Vec<_>>(), expected);
    assert_eq!(from_small.iter().map(shape).collect::<Vec<_>>(), expected);
    // And bounded sizes: a fixed number of numbers each, nowhere to put a record.
    for r in from_full.iter().chain(&from_small) {
        let bound = match shape(r).0 {
            "decision" => 300,
            "stats" => 200 + width * (10 + 9 + 9),
            "update" => 200 + params * 4,
            _ => 200 + 2 * hist * 10,
        };
        assert!(encoded_len(r) <= bound, "{:?} is {} bytes, over {bound}", shape(r), encoded_len(r));
    }
    // The counts differ (they are aggregates of different record sets), the shapes do not.
    let n_examples = |msgs: &[pb::SiteReply]| match &msgs[2].kind {
        Some(pb::site_reply::Kind::Update(u)) => u.num_examples,
        _ => unreachable!(),
    };
    // Under the example's record-level DP the example count a site sends is the count it
    // released, noised, in the statistics step (never its exact row count): equal to that
    // release, and within 6 noise standard deviations of the truth (std = z_s sqrt(16 + 2w) / 4:
    // the count is weighted 4 in the release).
    let stats_count = |msgs: &[pb::SiteReply]| match &msgs[1].kind {
        Some(pb::site_reply::Kind::Stats(s)) => s.count[0],
        _ => unreachable!(),
    };
    let zs = match spec.privacy_plan().unwrap().unwrap().stats {
        Some(fedcare_privacy::Charge::Gaussian { noise_multiplier, .. }) => noise_multiplier,
        other => panic!("record-level statistics charge expected: {other:?}"),
    };
    let sd = zs * ((16 + 2 * width) as f64).sqrt() / 4.0;
    for (msgs, truth) in [(&from_full, 199.0), (&from_small, 39.0)] {
        assert_eq!(n_examples(msgs), stats_count(msgs));
        assert!((n_examples(msgs) as f64 - truth).abs() < 6.0 * sd, "{} vs {truth}", n_examples(msgs));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declining_site_does_not_quote_its_data() {
    // A file whose cell holds something that must not leave the hospital.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.data");
    let text = std::fs::read_to_string(example_dir().join("data/processed.cleveland.data")).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[5] = lines[5].replacen("1.0", "PATIENT-SMITH-1957", 1);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();

    let (spec_toml, spec) = job(|_| {});
    let mut rig = Rig::start(&path).await;
    let offer = pb::Task {
        job_id: spec.id().to_string(),
        task_id: 1,
        kind: Some(pb::task::Kind::Offer(pb::JobOffer { spec_toml })),
    };
    rig.tasks.send(Ok(offer)).unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(30), rig.replies.recv()).await.unwrap().unwrap();
    let Some(pb::site_reply::Kind::Decision(d)) = &reply.kind else { panic!("decision expected: {reply:?}") };
    assert!(!d.accept, "a file with a non-numeric cell is refused");
    let bytes = prost::Message::encode_to_vec(&reply);
    assert!(!String::from_utf8_lossy(&bytes).contains("SMITH"), "the refusal quotes the record: {reply:?}");
    assert!(d.reason.contains("does not match the job's schema"), "{}", d.reason);
    rig.stop();
}
