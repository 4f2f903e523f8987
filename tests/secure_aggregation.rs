//! Secure aggregation end to end: the four-site example with SecAgg+ (the default) gives the
//! model it gives without (up to quantisation), no plaintext update crosses the wire, and a
//! site killed during a round does not stop it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedcare_data::Standardization;
use fedcare_e2e::{SITES, Tap, TestCoordinator, contains, job, site_config};
use fedcare_job::JobSpec;
use fedcare_proto::v1 as pb;
use fedcare_secagg::Encoder;

async fn simulate(secure: bool, rounds: u32) -> (fedcare_server::report::Report, Vec<f32>) {
    let out = tempfile::tempdir().unwrap();
    let opts = fedcare_sim::SimOptions {
        rounds: Some(rounds),
        secure_aggregation: Some(secure),
        privacy: fedcare_sim::PrivacyOverride::Off,
        ..fedcare_e2e::sim_options(out.path())
    };
    let result = fedcare_sim::run(&opts, |_| {}).await.expect("simulation runs");
    let spec = &result.report.spec;
    assert_eq!(spec.secure_aggregation.enabled, secure);
    let params = fedcare_models::load(&spec.model, spec.n_features(), &result.model_path).unwrap();
    (result.report, params.values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_and_plain_aggregation_give_the_same_model() {
    let (plain_report, plain) = simulate(false, 3).await;
    let (secure_report, secure) = simulate(true, 3).await;
    // Per round and coordinate the quantisation error is below 1e-7 (32 bits, clip 4, 4 sites);
    // three rounds of training carry it along without amplifying it much.
    let worst = plain.iter().zip(&secure).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "models differ by {worst}");
    let (p, s) = (plain_report.federated.unwrap(), secure_report.federated.unwrap());
    assert_eq!(p.n, s.n);
    assert!((p.accuracy - s.accuracy).abs() < 1e-9, "{} vs {}", p.accuracy, s.accuracy);
    assert!(secure_report.protection.starts_with("secure aggregation"), "{}", secure_report.protection);
    assert!(plain_report.protection.starts_with("none"), "{}", plain_report.protection);
}

/// Cleveland's round-1 update, recomputed here from its data, the job and the scaling the
/// federation agreed on: what a plain update from Cleveland carries.
fn cleveland_round_one_delta(spec: &JobSpec, scaling: &fedcare_server::report::Scaling) -> Vec<f32> {
    let (cfg, base) = site_config("cleveland", "http://unused");
    let (ds, _) = fedcare_data::load(&spec.schema, &cfg.data, &base).unwrap();
    let (mut train, _) = fedcare_data::split(&ds, &spec.schema.split).unwrap();
    Standardization { mean: scaling.mean.clone(), std: scaling.std.clone() }.apply(&mut train).unwrap();
    let start = fedcare_models::init(&spec.model, spec.n_features(), spec.seed);
    let cfg = spec.train_config(1, fedcare_job::site_salt("cleveland"));
    let out = fedcare_models::train(&spec.model, &start, train.features(), train.n_features(), train.labels(), &cfg).unwrap();
    out.params.values.iter().zip(&start.values).map(|(a, b)| a - b).collect()
}

/// Runs a one-round job with every site behind a tap; returns the report and what the tap saw.
async fn tapped_run(secure: bool) -> (fedcare_server::report::Report, Vec<u8>) {
    let coordinator = TestCoordinator::start().await;
    let tap = Tap::start(coordinator.addr).await;
    for site in SITES {
        let (cfg, base) = site_config(site, &tap.url);
        coordinator.spawn_agent(cfg, base);
    }
    coordinator.wait_for_sites(4).await;
    let (text, _) = job(|s| {
        s.rounds = 1;
        s.secure_aggregation.enabled = secure;
        // Without DP noise, so the test can recompute Cleveland's exact update.
        s.privacy = fedcare_job::PrivacySpec::none();
    });
    let mut admin = fedcare_server::client::AdminClient::connect(&coordinator.url).await.unwrap();
    let id = admin.submit(&text).await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), admin.watch(&id, |_| {})).await.unwrap().unwrap();
    let bytes = tap.bytes();
    coordinator.stop().await;
    (report, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_update_crosses_the_wire() {
    // Without secure aggregation, Cleveland's update is on the wire, and this test finds it:
    // the check below can fail.
    let (plain, plain_bytes) = tapped_run(false).await;
    let delta = cleveland_round_one_delta(&plain.spec, &plain.scaling);
    let needle: Vec<u8> = delta[..4].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert!(contains(&plain_bytes, &needle), "the tap must see a plain update");

    // With it, neither the update nor its quantised, weighted form is anywhere in what the
    // sites sent, though the sites sent their (masked) updates.
    let (secure, secure_bytes) = tapped_run(true).await;
    assert_eq!(secure.rounds.len(), 1);
    assert_eq!(secure.rounds[0].sites.len(), 4);
    let delta = cleveland_round_one_delta(&secure.spec, &secure.scaling);
    let needle: Vec<u8> = delta[..4].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert!(!contains(&secure_bytes, &needle), "a plaintext update crossed the wire");
    let w = 199.0 / 486.0;
    let weighted: Vec<f32> = delta.iter().map(|d| (f64::from(*d) * w) as f32).collect();
    let quantised = fedcare_protocol::secure::quantizer(&secure.spec, 4).unwrap().encode(&weighted);
    let needle: Vec<u8> = quantised[..4].iter().flat_map(|v| (*v as u32).to_le_bytes()).collect();
    assert!(!contains(&secure_bytes, &needle), "an unmasked quantised update crossed the wire");
    assert!(secure_bytes.len() > 1000, "the sites did send their masked inputs");
}

/// The example job for the dropout tests, named `name`: three rounds of the four sites that go
/// on with three, and no DP noise (these tests are about dropouts, and three noisy rounds
/// would not reach the accuracy bar).
fn dropout_job(name: &str) -> String {
    job(|s| {
        s.name = name.to_owned();
        s.rounds = 3;
        s.min_sites = 4;
        s.min_sites_per_round = Some(3);
        s.privacy = fedcare_job::PrivacySpec::none();
    })
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_killed_during_a_round_does_not_stop_it() {
    let coordinator = TestCoordinator::start().await;
    let mut agents = std::collections::BTreeMap::new();
    for site in SITES {
        agents.insert(site, coordinator.spawn_site(site));
    }
    coordinator.wait_for_sites(4).await;
    let text = dropout_job("heart-disease-logreg");
    let mut admin = fedcare_server::client::AdminClient::connect(&coordinator.url).await.unwrap();
    let id = admin.submit(&text).await.unwrap();
    let va = Arc::new(Mutex::new(agents.remove("va")));
    let killed_at = Arc::new(Mutex::new(None));
    let mut lines = Vec::new();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        admin.watch(&id, |e| {
            lines.extend(fedcare_server::client::describe(e, 3).map(|l| l.text));
            // Kill VA's agent in the middle of round 2, once another site has answered.
            if let Some(pb::job_event::Kind::Progress(p)) = &e.kind
                && p.round == 2 && p.sites_done >= 1
                    && let Some(handle) = va.lock().unwrap().take() {
                        handle.abort();
                        *killed_at.lock().unwrap() = Some(p.sites_done);
                    }
        }),
    )
    .await
    .expect("the job ends")
    .expect("the job finishes without the killed site");
    assert!(killed_at.lock().unwrap().is_some(), "the kill happened");
    assert_eq!(report.rounds.len(), 3);
    assert_eq!(report.rounds[0].sites.len(), 4);
    assert_eq!(report.rounds[2].sites, vec!["cleveland", "hungarian", "switzerland"]);
    assert!(lines.iter().any(|l| l.contains("site va left round 2")), "{lines:#?}");
    assert!(report.federated.as_ref().unwrap().accuracy > 0.7);
    coordinator.stop().await;
}

/// A site killed at each step of a secure round in turn (before its round keys, its shares,
/// its masked input, its unmasking shares, its evaluation): every time the round completes with
/// the others, exactly as secure aggregation's dropout rules say, and the job finishes. The
/// agent stops itself before answering (a fault hook), so the kill never races its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_killed_at_each_step_of_a_secure_round_leaves_it_and_the_round_completes() {
    for step in ["train", "share-keys", "mask", "unmask", "eval"] {
        let coordinator = TestCoordinator::start().await;
        for site in ["cleveland", "hungarian", "switzerland"] {
            coordinator.spawn_site(site);
        }
        let (cfg, base) = site_config("va", &coordinator.url);
        let hook: fedcare_agent::FaultHook = Arc::new(move |kind, round| kind == step && round == Some(2));
        let va = fedcare_agent::Agent::new(cfg, base).unwrap().with_fault(hook);
        let stopped = coordinator.stopped();
        let va = tokio::spawn(async move { va.run(stopped).await });
        coordinator.wait_for_sites(4).await;
        let text = dropout_job(&format!("kill-at-{step}"));
        let mut admin = fedcare_server::client::AdminClient::connect(&coordinator.url).await.unwrap();
        let id = admin.submit(&text).await.unwrap();
        let report = tokio::time::timeout(Duration::from_secs(60), admin.watch(&id, |_| {}))
            .await
            .unwrap_or_else(|_| panic!("killed at {step}: the job did not end"))
            .unwrap_or_else(|e| panic!("killed at {step}: the job failed: {e}"));
        assert!(va.is_finished(), "killed at {step}: VA's agent stopped");
        assert_eq!(report.rounds.len(), 3, "killed at {step}");
        let others = vec!["cleveland", "hungarian", "switzerland"];
        assert_eq!(report.rounds[0].sites.len(), 4, "killed at {step}");
        // Before its masked input arrived VA is a dropout of round 2; after, its input is in
        // the sum (the others' shares unmask it) and the round counts it.
        let round2: Vec<&str> = report.rounds[1].sites.iter().map(String::as_str).collect();
        if matches!(step, "train" | "share-keys" | "mask") {
            assert_eq!(round2, others, "killed at {step}");
        } else {
            assert_eq!(round2.len(), 4, "killed at {step}: {round2:?}");
        }
        assert!(!report.rounds[1].site_eval.contains_key("va"), "killed at {step}: VA evaluated round 2");
        assert!(report.rounds[0].site_eval.contains_key("va"), "killed at {step}: VA evaluated round 1");
        assert_eq!(report.rounds[2].sites, others, "killed at {step}");
        coordinator.stop().await;
    }
}
