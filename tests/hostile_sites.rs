//! Broken and hostile sites over real gRPC: a NaN update, a wrong-length update, a replayed
//! reply, a reply for another job, a forged site id, a site that goes silent, and a site whose
//! data does not match the job's schema. Each is refused with a reason and the job completes
//! with the honest sites. The job has secure aggregation off so that the coordinator's checks on
//! plain updates are exercised (with it on, a plain update is refused outright).

use std::time::Duration;

use fedcare_e2e::{TestCoordinator, example_dir, job};
use fedcare_proto::v1 as pb;
use fedcare_proto::v1::site_service_client::SiteServiceClient;
use futures::StreamExt;
use tonic::Code;

/// The rogue's view of what happened to each bad message it sent.
#[derive(Debug, Default)]
struct RogueLog {
    nan_update: Option<(Code, String)>,
    short_update: Option<(Code, String)>,
    replay: Option<(Code, String)>,
    other_job: Option<(Code, String)>,
    forged_site: Option<(Code, String)>,
    silent_round: Option<u32>,
    /// Chunked replies (for updates too large for one message) that are damaged or trickled.
    chunk_checksum: Option<(Code, String)>,
    chunk_trickle: Option<(Code, String)>,
}

async fn rogue(url: String, other_job: String) -> RogueLog {
    let mut client = SiteServiceClient::connect(url).await.unwrap();
    let join = pb::JoinRequest {
        site_id: "cleveland".into(),
        protocol_version: fedcare_proto::PROTOCOL_VERSION,
        agent_version: "rogue".into(),
        identity_public_key: vec![7; 32],
    };
    let mut tasks = client.join(join).await.unwrap().into_inner();
    let mut log = RogueLog::default();
    let mut last_reply: Option<pb::SiteReply> = None;
    let err = |r: Result<tonic::Response<pb::SubmitAck>, tonic::Status>| {
        let s = r.expect_err("the coordinator must refuse this");
        Some((s.code(), s.message().to_owned()))
    };
    while let Some(Ok(task)) = tasks.next().await {
        use pb::site_reply::Kind as R;
        use pb::task::Kind as T;
        let reply = |kind| pb::SiteReply { site_id: "cleveland".into(), job_id: task.job_id.clone(), task_id: task.task_id, kind: Some(kind) };
        match task.kind.unwrap() {
            T::Offer(_) => {
                client.submit(reply(R::Decision(pb::JobDecision { accept: true, reason: String::new() }))).await.unwrap();
            }
            T::Stats(_) => {
                let sums = pb::FeatureSums { count: vec![100; 15], sum: vec![0.0; 15], sum_sq: vec![100.0; 15] };
                client.submit(reply(R::Stats(sums))).await.unwrap();
            }
            T::Train(t) => {
                let n = t.model.as_ref().unwrap().values.len();
                match t.round {
                    1 => {
                        let mut delta = vec![0.0; n];
                        delta[0] = f32::NAN;
                        let r = reply(R::Update(pb::ModelUpdate { round: 1, num_examples: 100, delta, train_loss: 0.1 }));
                        last_reply = Some(r.clone());
                        // The same reply in chunks, first with a changed byte, then in 1-byte
                        // pieces: both refused whole, and the round still expects this site.
                        let payload = bytes::Bytes::from(prost::Message::encode_to_vec(&r));
                        let digest = fedcare_wire::chunk::sha256(&payload);
                        let mut damaged: Vec<pb::Chunk> = fedcare_wire::chunk::split(&payload, digest, 64 << 10).collect();
                        let mut last = damaged.pop().unwrap();
                        let mut data = last.data.to_vec();
                        data[0] ^= 1;
                        last.data = bytes::Bytes::from(data);
                        damaged.push(last);
                        log.chunk_checksum = err(client.submit_chunked(futures::stream::iter(damaged)).await);
                        let trickle: Vec<pb::Chunk> = fedcare_wire::chunk::split(&payload, digest, 1).take(3).collect();
                        log.chunk_trickle = err(client.submit_chunked(futures::stream::iter(trickle)).await);
                        log.nan_update = err(client.submit(r).await);
                    }
                    2 => {
                        let r = reply(R::Update(pb::ModelUpdate { round: 2, num_examples: 100, delta: vec![0.5; 3], train_loss: 0.1 }));
                        log.short_update = err(client.submit(r).await);
                        // Now replay last round's message, and send one for a job that is not this one.
                        log.replay = err(client.submit(last_reply.clone().unwrap()).await);
                        let mut other = reply(R::Update(pb::ModelUpdate { round: 2, num_examples: 1, delta: vec![0.0; n], train_loss: 0.1 }));
                        other.job_id = other_job.clone();
                        log.other_job = err(client.submit(other).await);
                        let mut forged = reply(R::Update(pb::ModelUpdate { round: 2, num_examples: 1, delta: vec![0.0; n], train_loss: 0.1 }));
                        forged.site_id = "cleveland; DROP TABLE".into();
                        log.forged_site = err(client.submit(forged).await);
                    }
                    round => log.silent_round = Some(round), // never answers: the deadline drops it
                }
            }
            T::Eval(e) => {
                let hist = fedcare_models::metrics::HIST_BINS;
                let mut pos_hist = vec![0; hist];
                pos_hist[99] = 5;
                let ev = pb::Evaluation { round: e.round, num_examples: 5, loss_sum: 0.5, correct: 5, auc: None, pos_hist, neg_hist: vec![0; hist], true_pos: 5, ..Default::default() };
                let _ = client.submit(reply(R::Evaluation(ev))).await;
            }
            T::End(_) => break,
            other => panic!("a plain job sends no secure aggregation task: {other:?}"),
        }
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_broken_sites_are_refused_and_the_job_completes() {
    let coordinator = TestCoordinator::start().await;
    for site in ["hungarian", "switzerland", "va"] {
        coordinator.spawn_site(site);
    }
    // A fifth site whose file does not fit the job: its config names 13 columns, the file has 14.
    let (mut cfg, base) = fedcare_e2e::site_config("va", &coordinator.url);
    cfg.site.id = "mismatched".into();
    cfg.data.columns.as_mut().unwrap().pop();
    coordinator.spawn_agent(cfg, base);
    let (_, other) = job(|s| s.seed = 999);
    let rogue = tokio::spawn(rogue(coordinator.url.clone(), other.id().to_string()));
    coordinator.wait_for_sites(5).await;

    let (text, spec) = job(|s| {
        s.secure_aggregation.enabled = false;
        s.rounds = 3;
        s.min_sites = 4;
        s.min_sites_per_round = Some(3);
        s.deadlines.stage_secs = 1;
    });
    let mut admin = fedcare_server::client::AdminClient::connect(&coordinator.url).await.unwrap();
    let id = admin.submit(&text).await.unwrap();
    assert_eq!(id, spec.id().to_string());
    let mut lines = Vec::new();
    let report = tokio::time::timeout(Duration::from_secs(60), admin.watch(&id, |e| lines.extend(fedcare_server::client::describe(e, 3).map(|l| l.text))))
        .await
        .expect("job ends in time")
        .expect("job finishes with the honest sites");
    let log = rogue.await.unwrap();

    // Every bad message was refused with a reason that says what was wrong.
    let (code, msg) = log.nan_update.expect("NaN update answered");
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("not finite"), "{msg}");
    let (code, msg) = log.short_update.expect("short update answered");
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("has 3 values"), "{msg}");
    let (code, msg) = log.replay.expect("replay answered");
    assert_eq!(code, Code::FailedPrecondition);
    assert!(msg.contains("not expected") || msg.contains("stale"), "{msg}");
    let (code, _) = log.other_job.expect("other job answered");
    assert_eq!(code, Code::NotFound);
    let (code, msg) = log.forged_site.expect("forged site answered");
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("site_id"), "{msg}");
    assert_eq!(log.silent_round, Some(3));
    let (code, msg) = log.chunk_checksum.expect("damaged chunked reply answered");
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("SHA-256"), "{msg}");
    let (code, msg) = log.chunk_trickle.expect("trickled chunked reply answered");
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("at least"), "{msg}");

    // The rounds went on with the three honest sites, and the refusals are in the job's log.
    assert_eq!(report.rounds.len(), 3);
    for r in &report.rounds {
        assert_eq!(r.sites, vec!["hungarian", "switzerland", "va"], "round {}", r.round);
    }
    let joined = lines.iter().find(|l| l.contains("sites joined")).expect("joined line");
    assert!(!joined.contains("mismatched"), "{joined}");
    assert!(lines.iter().any(|l| l.contains("site mismatched") && l.contains("declined")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("site cleveland") && l.contains("not finite")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("site cleveland") && l.contains("deadline")), "{lines:#?}");
    assert!(report.sites.iter().all(|s| s.site != "mismatched"));
    coordinator.stop().await;
    let _ = example_dir();
}
