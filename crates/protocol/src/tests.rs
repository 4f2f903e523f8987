//! Drives the coordinator's and the sites' state machines against each other, without a
//! network: every message goes through `poll` and `handle_reply`/`on_task` as it would over gRPC.

use std::collections::BTreeMap;
use std::sync::Arc;

use fedcare_data::FeatureSums;
use fedcare_job::JobSpec;

use crate::coordinator::{Action, JobEvent, JobOutcome, JobRun, ReplyError};
use crate::messages::{EvalCounts, EvalReport, ModelUpdate, ReplyKind, SiteId, Task, TaskKind};
use crate::site::{SiteError, SiteSession, Work};

const EXAMPLE: &str = include_str!("../../../examples/heart-disease/job.toml");

fn digest(spec: &JobSpec) -> (String, usize) {
    ("layout-1".to_owned(), spec.n_features() + 1)
}

/// The example job with secure aggregation off: these tests are about the round logic itself.
fn spec_with(rounds: u32, min_sites: u32, quorum: u32) -> (Arc<JobSpec>, Arc<str>) {
    spec_secure(rounds, min_sites, quorum, false)
}

fn spec_secure(rounds: u32, min_sites: u32, quorum: u32, secure: bool) -> (Arc<JobSpec>, Arc<str>) {
    let on = format!("enabled = {secure}");
    // Without differential privacy: these tests check the arithmetic of the rounds exactly.
    let (head, rest) = EXAMPLE.split_once("[privacy]\n").expect("the example has a [privacy] section");
    let tail = &rest[rest.find("# The schema every site maps").expect("schema follows privacy")..];
    let example = format!("{head}[privacy]\nunit = \"none\"\n\n{tail}");
    let text = example
        .replacen("enabled = true", &on, 1)
        .replacen("rounds = 10", &format!("rounds = {rounds}"), 1)
        .replacen("min_sites = 4", &format!("min_sites = {min_sites}"), 1)
        .replacen("min_sites_per_round = 3", &format!("min_sites_per_round = {quorum}"), 1);
    let spec = JobSpec::from_toml(&text, "test").unwrap();
    assert_eq!((spec.rounds, spec.min_sites, spec.round_quorum()), (rounds, min_sites, quorum));
    (Arc::new(spec), text.into())
}

/// A deterministic long-term key per site name, for tests.
fn identity_key(name: &str) -> fedcare_secagg::IdentityKey {
    let mut seed = [0u8; 32];
    for (i, b) in name.bytes().enumerate() {
        seed[i % 32] ^= b;
    }
    fedcare_secagg::IdentityKey::from_seed(&seed).unwrap()
}

fn identity(name: &str) -> Vec<u8> {
    identity_key(name).public_key()
}

fn site(name: &str) -> SiteId {
    SiteId::parse(name).unwrap()
}

/// A simulated federation: the coordinator's machine, each site's machine, and the deliveries.
struct Harness {
    run: JobRun,
    sites: BTreeMap<SiteId, SiteSession>,
    /// Per site: training examples and the constant delta it reports.
    behaviour: BTreeMap<SiteId, (u64, f32)>,
    events: Vec<JobEvent>,
    outcome: Option<Result<JobOutcome, String>>,
    inbox: Vec<(SiteId, Task)>,
    now: u64,
    /// Each site's secure aggregation client and quantised input for the current round.
    clients: BTreeMap<SiteId, (fedcare_secagg::Client, Vec<u64>)>,
    rng: rand_chacha::ChaCha20Rng,
}

impl Harness {
    fn new(rounds: u32, min_sites: u32, quorum: u32, behaviour: &[(&str, u64, f32)]) -> Harness {
        Harness::with_secure(rounds, min_sites, quorum, false, behaviour)
    }

    fn with_secure(rounds: u32, min_sites: u32, quorum: u32, secure: bool, behaviour: &[(&str, u64, f32)]) -> Harness {
        let (spec, text) = spec_secure(rounds, min_sites, quorum, secure);
        let width = spec.n_features();
        let run = JobRun::new(spec, text, "layout-1".into(), vec![0.0; width + 1]);
        let mut sites = BTreeMap::new();
        let mut b = BTreeMap::new();
        for (name, n, d) in behaviour {
            sites.insert(site(name), SiteSession::new(site(name), digest, identity(name)));
            b.insert(site(name), (*n, *d));
        }
        use rand_chacha::rand_core::SeedableRng;
        Harness {
            run,
            sites,
            behaviour: b,
            events: vec![],
            outcome: None,
            inbox: vec![],
            now: 0,
            clients: BTreeMap::new(),
            rng: rand_chacha::ChaCha20Rng::seed_from_u64(7),
        }
    }

    fn drain(&mut self) {
        while let Some(a) = self.run.poll() {
            match a {
                Action::Send { site, task } => self.inbox.push((site, task)),
                Action::Event(e) => self.events.push(e),
                Action::Finished(o) => self.outcome = Some(Ok(*o)),
                Action::Failed(r) => self.outcome = Some(Err(r)),
            }
        }
    }

    fn offer_all(&mut self) {
        let names: Vec<SiteId> = self.sites.keys().cloned().collect();
        for s in names {
            let key = identity(s.as_str());
            self.run.site_available(&s, &key, self.now);
        }
        self.drain();
    }

    /// The honest site's answer to a task, computed by its own state machine.
    fn answer(&mut self, to: &SiteId, task: Task) -> Option<crate::messages::Reply> {
        let session = self.sites.get_mut(to).unwrap();
        let (n, d) = self.behaviour[to];
        let width = 15;
        let (job, id, kind) = match session.on_task(task).unwrap() {
            Work::Decide { job, task, .. } => (job, task, ReplyKind::Decision { accept: true, reason: String::new() }),
            Work::ComputeStats { job, task, .. } => {
                let sums = FeatureSums { count: vec![n; width], sum: vec![n as f64; width], sum_sq: vec![2.0 * n as f64; width] };
                (job, task, ReplyKind::Stats(sums))
            }
            Work::Train { job, task, round, model, secagg: None, .. } => {
                let delta = vec![d; model.values.len()];
                (job, task, ReplyKind::Update(ModelUpdate { round, num_examples: n, delta, train_loss: 0.5 }))
            }
            Work::Train { job, task, round, model, spec, secagg: Some((sa, index)), .. } => {
                // What the agent does: weight by the site's share of examples, append the
                // loss, quantise, and start the round's secure aggregation client.
                use fedcare_secagg::Encoder;
                let w = n as f64 / sa.total_examples as f64;
                let mut v: Vec<f32> = vec![(f64::from(d) * w) as f32; model.values.len()];
                v.push((0.5 * w) as f32);
                let input = crate::secure::quantizer(&spec, sa.setup.n()).unwrap().encode(&v);
                let (client, keys) = fedcare_secagg::Client::new(&sa.setup, index, &identity_key(to.as_str()), &mut self.rng).unwrap();
                self.clients.insert(to.clone(), (client, input));
                (job, task, ReplyKind::Keys { round, keys: keys.to_bytes(), num_examples: n })
            }
            Work::ShareKeys { job, task, round, keys } => {
                let list: Vec<_> = keys.iter().map(|b| fedcare_secagg::AdvertiseKeys::from_bytes(b).unwrap()).collect();
                let (client, _) = self.clients.get_mut(to).unwrap();
                let shares = client.share_keys(&list).unwrap().iter().map(|s| s.to_bytes()).collect();
                (job, task, ReplyKind::Shares { round, shares })
            }
            Work::Mask { job, task, round, shares } => {
                let shares: Vec<_> = shares.iter().map(|b| fedcare_secagg::EncryptedShare::from_bytes(b).unwrap()).collect();
                let (client, input) = self.clients.get_mut(to).unwrap();
                let masked = client.masked_input(&shares, input).unwrap().to_bytes();
                (job, task, ReplyKind::Masked { round, masked })
            }
            Work::Unmask { job, task, round, request } => {
                let request = fedcare_secagg::UnmaskRequest::from_bytes(&request).unwrap();
                let (client, _) = self.clients.get_mut(to).unwrap();
                let response = client.unmask(&request).unwrap().to_bytes();
                (job, task, ReplyKind::Unmasked { round, response })
            }
            Work::Evaluate { job, task, round, .. } => {
                let mut counts = EvalCounts::zero();
                counts.n = 10;
                counts.correct = 8;
                counts.loss_sum = 4.0;
                counts.pos_hist[80] = 5;
                counts.neg_hist[20] = 5;
                // Consistent confusion: 3 of the positives and all 5 negatives right.
                counts.true_pos = 3;
                counts.sq_err_sum = 1.5;
                (job, task, ReplyKind::Evaluation(EvalReport { round, counts, auc: Some(1.0) }))
            }
            Work::Ended { .. } => return None,
        };
        Some(session.reply(&job, id, kind).unwrap())
    }

    /// Delivers everything until quiet; `filter` may drop or rewrite a site's reply.
    fn run_until_quiet(&mut self, mut filter: impl FnMut(&mut Self, &SiteId, &Task) -> Delivery) {
        loop {
            self.drain();
            if self.inbox.is_empty() {
                return;
            }
            let batch = std::mem::take(&mut self.inbox);
            for (to, task) in batch {
                match filter(self, &to, &task) {
                    Delivery::Drop => continue,
                    Delivery::Honest => {
                        if let Some(reply) = self.answer(&to, task) {
                            self.run.handle_reply(reply, self.now).unwrap();
                        }
                    }
                    Delivery::Replace(kind) => {
                        let reply = crate::messages::Reply { site: to.clone(), job: task.job.clone(), task: task.id, kind };
                        // Keep the site's own machine in step: it thinks it answered honestly.
                        let _ = self.answer(&to, task);
                        let _ = self.run.handle_reply(reply, self.now);
                    }
                }
            }
        }
    }
}

enum Delivery {
    Honest,
    Drop,
    Replace(ReplyKind),
}

#[test]
fn four_sites_complete_all_rounds_with_weighted_average() {
    let mut h = Harness::new(3, 4, 3, &[("a", 100, 1.0), ("b", 300, -1.0), ("c", 50, 2.0), ("d", 50, 0.0)]);
    h.offer_all();
    h.run_until_quiet(|_, _, _| Delivery::Honest);
    let outcome = h.outcome.take().expect("job ended").expect("job succeeded");
    assert_eq!(outcome.rounds.len(), 3);
    // Each round moves every parameter by (100*1 - 300*1 + 50*2 + 0) / 500 = -0.2.
    for v in &outcome.model {
        assert!((v - (-0.6)).abs() < 1e-5, "{v}");
    }
    assert_eq!(outcome.train_examples.values().sum::<u64>(), 500);
    assert_eq!(outcome.final_eval.len(), 4);
    let last = outcome.rounds.last().unwrap();
    assert_eq!(last.eval.n, 40);
    assert_eq!(last.eval.correct, 32);
    assert_eq!(last.sites.len(), 4);
    assert!(h.events.iter().any(|e| matches!(e, JobEvent::StatsDone { total_examples: 500 })));
    assert_eq!(h.events.iter().filter(|e| matches!(e, JobEvent::RoundDone(_))).count(), 3);
    assert!(h.run.is_over());
}

#[test]
fn nan_and_wrong_length_updates_are_refused_and_the_round_goes_on() {
    let mut h = Harness::new(2, 4, 2, &[("a", 100, 1.0), ("b", 100, 1.0), ("c", 100, 5.0), ("d", 100, 5.0)]);
    h.offer_all();
    h.run_until_quiet(|_, to, task| match (&task.kind, to.as_str()) {
        (TaskKind::Train { round, model, .. }, "c") => {
            let mut delta = vec![0.0; model.values.len()];
            delta[3] = f32::NAN;
            Delivery::Replace(ReplyKind::Update(ModelUpdate { round: *round, num_examples: 100, delta, train_loss: 0.1 }))
        }
        (TaskKind::Train { round, .. }, "d") => {
            Delivery::Replace(ReplyKind::Update(ModelUpdate { round: *round, num_examples: 100, delta: vec![1.0; 3], train_loss: 0.1 }))
        }
        _ => Delivery::Honest,
    });
    let outcome = h.outcome.take().unwrap().expect("two valid updates meet the quorum of 2");
    // Only a and b (delta 1.0) count: two rounds of +1.
    assert!(outcome.model.iter().all(|v| (v - 2.0).abs() < 1e-6));
    let refusals: Vec<&String> = h
        .events
        .iter()
        .filter_map(|e| match e {
            JobEvent::SiteRefused { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(refusals.len(), 4, "{refusals:?}");
    assert!(refusals.iter().any(|r| r.contains("not finite")));
    assert!(refusals.iter().any(|r| r.contains("has 3 values")));
    assert!(outcome.rounds.iter().all(|r| r.sites.len() == 2));
}

#[test]
fn too_few_valid_updates_fail_the_job_with_a_reason() {
    let mut h = Harness::new(2, 3, 3, &[("a", 10, 1.0), ("b", 10, 1.0), ("c", 10, 1.0)]);
    h.offer_all();
    h.run_until_quiet(|_, to, task| match (&task.kind, to.as_str()) {
        (TaskKind::Train { .. }, "c") => Delivery::Replace(ReplyKind::Failed { reason: "out of memory".into() }),
        _ => Delivery::Honest,
    });
    let reason = h.outcome.take().unwrap().unwrap_err();
    assert!(reason.contains("only 2 valid updates"), "{reason}");
    assert!(h.run.is_over());
}

#[test]
fn replies_out_of_turn_change_nothing() {
    let mut h = Harness::new(1, 2, 2, &[("a", 10, 1.0), ("b", 10, 1.0)]);
    h.offer_all();
    // Deliver the offers honestly, then hold the stats tasks.
    let offers = std::mem::take(&mut h.inbox);
    let mut replies = vec![];
    for (to, task) in offers {
        replies.push(h.answer(&to, task).unwrap());
    }
    let first = replies[0].clone();
    for r in replies {
        h.run.handle_reply(r, 0).unwrap();
    }
    h.drain();
    assert_eq!(h.run.stage_name(), "stats");
    // A replay of the offer decision is refused (its task is no longer open).
    assert!(matches!(h.run.handle_reply(first.clone(), 0), Err(ReplyError::WrongTask { .. })));
    // A site that was never offered anything.
    let mut stranger = first.clone();
    stranger.site = site("z");
    assert!(matches!(h.run.handle_reply(stranger, 0), Err(ReplyError::NotExpected(_))));
    // The right task id but the wrong kind of reply.
    let (to, task) = h.inbox[0].clone();
    let wrong = crate::messages::Reply {
        site: to.clone(),
        job: task.job.clone(),
        task: task.id,
        kind: ReplyKind::Decision { accept: true, reason: String::new() },
    };
    assert!(matches!(h.run.handle_reply(wrong, 0), Err(ReplyError::WrongKind { .. })));
    // Another job's id.
    let mut other = crate::messages::Reply { site: to, job: task.job.clone(), task: task.id, kind: ReplyKind::Stats(FeatureSums::zero(15)) };
    other.job = JobSpec::from_toml(&EXAMPLE.replacen("seed = 42", "seed = 7", 1), "x").unwrap().id();
    assert!(matches!(h.run.handle_reply(other, 0), Err(ReplyError::WrongJob { .. })));
    // None of that moved the job: finish honestly and check the result is the plain one.
    h.run_until_quiet(|_, _, _| Delivery::Honest);
    let outcome = h.outcome.take().unwrap().unwrap();
    assert!(outcome.model.iter().all(|v| (v - 1.0).abs() < 1e-6));
}

#[test]
fn a_silent_site_is_dropped_at_the_deadline() {
    let mut h = Harness::new(1, 3, 2, &[("a", 10, 1.0), ("b", 10, 3.0), ("c", 10, 100.0)]);
    h.offer_all();
    h.run_until_quiet(|_, to, task| match (&task.kind, to.as_str()) {
        (TaskKind::Train { .. }, "c") => Delivery::Drop,
        _ => Delivery::Honest,
    });
    assert!(h.outcome.is_none(), "the job waits for c until its deadline");
    assert_eq!(h.run.stage_name(), "train");
    let deadline = h.run.next_deadline().expect("c's task has a deadline");
    h.run.tick(deadline - 1);
    h.drain();
    assert_eq!(h.run.stage_name(), "train");
    h.now = deadline;
    h.run.tick(deadline);
    h.run_until_quiet(|_, _, _| Delivery::Honest);
    let outcome = h.outcome.take().unwrap().unwrap();
    assert!(outcome.model.iter().all(|v| (v - 2.0).abs() < 1e-6), "c's update is not in the mean");
    assert!(h.events.iter().any(|e| matches!(e, JobEvent::SiteRefused { reason, .. } if reason.contains("deadline"))));
}

#[test]
fn a_site_lost_during_training_leaves_the_round() {
    let mut h = Harness::new(2, 3, 2, &[("a", 10, 1.0), ("b", 10, 1.0), ("c", 10, 9.0)]);
    h.offer_all();
    let mut lost = false;
    h.run_until_quiet(|h, to, task| {
        if to.as_str() == "c" && matches!(task.kind, TaskKind::Train { .. }) && !lost {
            lost = true;
            h.run.site_lost(to, 0);
            return Delivery::Drop;
        }
        Delivery::Honest
    });
    let outcome = h.outcome.take().unwrap().unwrap();
    assert_eq!(outcome.rounds.len(), 2);
    assert!(outcome.rounds.iter().all(|r| r.sites.len() == 2));
    assert!(outcome.model.iter().all(|v| (v - 2.0).abs() < 1e-6));
}

/// Loses site c when round 1's training reaches it, and brings its agent back with a fresh
/// session (it forgot the job with its old connection) once round 1 is being evaluated.
#[derive(Default)]
struct LoseCAndBringItBack {
    lost: bool,
    back: bool,
}

impl LoseCAndBringItBack {
    /// `Some(Drop)` for the task lost with the site; `None` leaves the delivery to the caller.
    fn step(&mut self, h: &mut Harness, to: &SiteId, task: &Task) -> Option<Delivery> {
        if to.as_str() == "c" && matches!(task.kind, TaskKind::Train { round: 1, .. }) && !self.lost {
            self.lost = true;
            h.run.site_lost(to, 0);
            return Some(Delivery::Drop);
        }
        if self.lost && !self.back && matches!(task.kind, TaskKind::Eval { round: 1, .. }) {
            self.back = true;
            let c = site("c");
            h.sites.insert(c.clone(), SiteSession::new(c.clone(), digest, identity("c")));
            h.run.site_available(&c, &identity("c"), h.now);
        }
        None
    }
}

#[test]
fn a_lost_site_that_comes_back_rejoins_from_the_next_round() {
    // Site c is lost when round 1's training reaches it; round 1 completes with a and b. When
    // c reconnects (its agent forgot the job), it is offered the job again, re-sends its
    // statistics, and takes part from the round after that, with its first-release weight.
    // It comes back during round 1's evaluation; round 2 has already started by the time it
    // has re-sent its statistics, so it is in from round 3.
    let mut h = Harness::new(4, 3, 2, &[("a", 10, 1.0), ("b", 10, 1.0), ("c", 20, 4.0)]);
    h.offer_all();
    let mut c = LoseCAndBringItBack::default();
    h.run_until_quiet(|h, to, task| c.step(h, to, task).unwrap_or(Delivery::Honest));
    let outcome = h.outcome.take().expect("job ended").expect("job succeeded");
    let sites: Vec<usize> = outcome.rounds.iter().map(|r| r.sites.len()).collect();
    assert_eq!(sites, vec![2, 2, 3, 3], "c is out of rounds 1 and 2 and back from round 3");
    // Rounds 1-2 move by 1.0; rounds 3-4 by (10 + 10 + 20 * 4) / 40 = 2.5: 2 + 5 = 7.
    assert!(outcome.model.iter().all(|v| (v - 7.0).abs() < 1e-5), "{:?}", outcome.model);
    assert!(h.events.iter().any(|e| matches!(e, JobEvent::SitesJoined(s) if s == &vec![site("c")])));
    // Its weight stayed the one from its first statistics release.
    assert_eq!(outcome.train_examples[&site("c")], 20);
}

#[test]
fn a_rejoining_site_with_other_statistics_stays_out() {
    let mut h = Harness::new(3, 3, 2, &[("a", 10, 1.0), ("b", 10, 1.0), ("c", 20, 4.0)]);
    h.offer_all();
    let mut c = LoseCAndBringItBack::default();
    h.run_until_quiet(|h, to, task| {
        if let Some(d) = c.step(h, to, task) {
            return d;
        }
        // The returning agent claims a different count this time.
        if c.back && to.as_str() == "c" && matches!(task.kind, TaskKind::Stats) {
            return Delivery::Replace(ReplyKind::Stats(FeatureSums { count: vec![25; 15], sum: vec![25.0; 15], sum_sq: vec![50.0; 15] }));
        }
        Delivery::Honest
    });
    let outcome = h.outcome.take().expect("job ended").expect("job succeeded");
    assert!(outcome.rounds.iter().all(|r| r.sites.len() == 2), "c never came back");
    assert!(h.events.iter().any(|e| matches!(e, JobEvent::SiteRefused { site: s, reason, .. } if s == &site("c") && reason.contains("differ from the site's first release"))));
}

#[test]
fn recruiting_waits_for_enough_sites() {
    let mut h = Harness::new(1, 3, 3, &[("a", 10, 1.0), ("b", 10, 1.0), ("c", 10, 1.0)]);
    h.run.site_available(&site("a"), &identity("a"), 0);
    h.run.site_available(&site("a"), &identity("a"), 0); // offered once only
    h.drain();
    assert_eq!(h.inbox.len(), 1);
    h.run_until_quiet(|_, _, _| Delivery::Honest);
    assert_eq!(h.run.stage_name(), "recruiting");
    h.run.site_available(&site("b"), &identity("b"), 0);
    h.run.site_available(&site("c"), &identity("c"), 0);
    h.run_until_quiet(|_, _, _| Delivery::Honest);
    assert!(h.outcome.take().unwrap().is_ok());
}

#[test]
fn a_declining_site_does_not_take_part() {
    let mut h = Harness::new(1, 2, 2, &[("a", 10, 1.0), ("b", 10, 1.0), ("c", 10, 50.0)]);
    h.offer_all();
    h.run_until_quiet(|_, to, task| match (&task.kind, to.as_str()) {
        (TaskKind::Offer { .. }, "c") => Delivery::Replace(ReplyKind::Decision { accept: false, reason: "policy".into() }),
        _ => Delivery::Honest,
    });
    let outcome = h.outcome.take().unwrap().unwrap();
    assert_eq!(outcome.train_examples.len(), 2);
    assert!(outcome.model.iter().all(|v| (v - 1.0).abs() < 1e-6));
}

// --- the site's machine alone ---

fn offered_session() -> (SiteSession, Arc<JobSpec>, Task) {
    let (spec, text) = spec_with(2, 1, 1);
    let mut s = SiteSession::new(site("a"), digest, identity("a"));
    let offer = Task { job: spec.id(), id: crate::messages::TaskId(1), kind: TaskKind::Offer { spec_toml: text } };
    (s.on_task(offer.clone()).map(|_| ()).and(Ok(s)).unwrap(), spec, offer)
}

fn model(values: usize) -> crate::messages::ModelVector {
    crate::messages::ModelVector { layout_digest: "layout-1".into(), values: Arc::new(vec![0.0; values]) }
}

fn std15() -> Arc<fedcare_data::Standardization> {
    Arc::new(fedcare_data::Standardization { mean: vec![0.0; 15], std: vec![1.0; 15] })
}

#[test]
fn site_refuses_mismatched_offer_and_duplicate_offer() {
    let (mut s, spec, offer) = offered_session();
    assert!(matches!(s.on_task(offer), Err(SiteError::DuplicateOffer(_))));
    let other = JobSpec::from_toml(&EXAMPLE.replacen("seed = 42", "seed = 1", 1), "x").unwrap().id();
    let text: Arc<str> = EXAMPLE.into();
    let lie = Task { job: other, id: crate::messages::TaskId(2), kind: TaskKind::Offer { spec_toml: text } };
    assert!(matches!(s.on_task(lie), Err(SiteError::IdMismatch { .. })));
    let garbage = Task { job: spec.id(), id: crate::messages::TaskId(3), kind: TaskKind::Offer { spec_toml: "rounds = [".into() } };
    let mut fresh = SiteSession::new(site("b"), digest, identity("b"));
    assert!(matches!(fresh.on_task(garbage), Err(SiteError::BadSpec(_))));
}

#[test]
fn site_refuses_work_before_acceptance_replays_and_wrong_layouts() {
    let (mut s, spec, _) = offered_session();
    let job = spec.id();
    let t = |id: u64, kind: TaskKind| Task { job: job.clone(), id: crate::messages::TaskId(id), kind };
    // Not accepted yet: no statistics.
    assert!(matches!(s.on_task(t(2, TaskKind::Stats)), Err(SiteError::NotAccepted { .. })));
    s.reply(&job, crate::messages::TaskId(1), ReplyKind::Decision { accept: true, reason: String::new() }).unwrap();
    // Training before statistics.
    let train = |id, round| t(id, TaskKind::Train { round, model: model(16), standardization: std15(), secagg: None });
    assert!(matches!(s.on_task(train(3, 1)), Err(SiteError::NoStats(_))));
    assert!(matches!(s.on_task(t(4, TaskKind::Stats)), Ok(Work::ComputeStats { .. })));
    // Replying to a task that is not open, or with the wrong kind.
    assert!(matches!(s.reply(&job, crate::messages::TaskId(99), ReplyKind::Stats(FeatureSums::zero(15))), Err(SiteError::NoSuchTask { .. })));
    assert!(matches!(
        s.reply(&job, crate::messages::TaskId(4), ReplyKind::Decision { accept: true, reason: String::new() }),
        Err(SiteError::WrongReply { .. })
    ));
    s.reply(&job, crate::messages::TaskId(4), ReplyKind::Stats(FeatureSums::zero(15))).unwrap();
    assert!(matches!(s.on_task(t(5, TaskKind::Stats)), Err(SiteError::StatsTwice(_))));
    // Wrong layout, wrong standardisation width, round beyond the job.
    let mut bad = model(16);
    bad.layout_digest = "other".into();
    assert!(matches!(s.on_task(t(6, TaskKind::Train { round: 1, model: bad, standardization: std15(), secagg: None })), Err(SiteError::WrongLayout { .. })));
    let narrow = Arc::new(fedcare_data::Standardization { mean: vec![0.0; 3], std: vec![1.0; 3] });
    assert!(matches!(
        s.on_task(t(7, TaskKind::Train { round: 1, model: model(16), standardization: narrow, secagg: None })),
        Err(SiteError::WrongStandardization { .. })
    ));
    assert!(matches!(s.on_task(train(8, 3)), Err(SiteError::RoundOutOfRange { .. })));
    // Round 1 once; its replay is refused.
    assert!(matches!(s.on_task(train(9, 1)), Ok(Work::Train { round: 1, .. })));
    let update = ModelUpdate { round: 1, num_examples: 1, delta: vec![0.0; 16], train_loss: 0.1 };
    s.reply(&job, crate::messages::TaskId(9), ReplyKind::Update(update)).unwrap();
    assert!(matches!(s.on_task(train(10, 1)), Err(SiteError::StaleRound { round: 1, last: 1, .. })));
    assert!(matches!(s.on_task(train(11, 2)), Ok(Work::Train { round: 2, .. })));
    // After the end, nothing more is accepted.
    assert!(matches!(s.on_task(t(12, TaskKind::End { success: true, reason: String::new() })), Ok(Work::Ended { .. })));
    assert!(matches!(s.on_task(train(13, 2)), Err(SiteError::NotAccepted { .. })));
}

// --- secure aggregation through the round machines ---

#[test]
fn secure_rounds_give_the_plain_weighted_average() {
    let sites = [("a", 100, 1.0), ("b", 300, -1.0), ("c", 50, 2.0), ("d", 50, 0.0)];
    let mut h = Harness::with_secure(3, 4, 3, true, &sites);
    h.offer_all();
    h.run_until_quiet(|_, _, _| Delivery::Honest);
    let outcome = h.outcome.take().expect("job ended").expect("job succeeded");
    // As in the plain test: -0.2 per round, now through masks and quantisation.
    for v in &outcome.model {
        assert!((v - (-0.6)).abs() < 1e-5, "{v}");
    }
    for r in &outcome.rounds {
        assert_eq!(r.sites.len(), 4);
        // The loss came through the masked sum too: every site reported 0.5.
        assert!((r.train_loss.unwrap() - 0.5).abs() < 1e-5, "{:?}", r.train_loss);
    }
}

#[test]
fn a_site_dropping_after_sharing_its_keys_is_unmasked_out_exactly() {
    // c shares its secrets, then never sends its masked update: its pairwise masks are
    // removed with the key shares of the others and the sum is a's, b's and d's.
    let sites = [("a", 10, 1.0), ("b", 10, 3.0), ("c", 10, 100.0), ("d", 10, 2.0)];
    let mut h = Harness::with_secure(1, 4, 3, true, &sites);
    h.offer_all();
    h.run_until_quiet(|_, to, task| match (&task.kind, to.as_str()) {
        (TaskKind::Mask { .. }, "c") => Delivery::Drop,
        _ => Delivery::Honest,
    });
    assert!(h.outcome.is_none());
    let deadline = h.run.next_deadline().unwrap();
    h.now = deadline;
    h.run.tick(deadline);
    h.run_until_quiet(|_, _, _| Delivery::Honest);
    let outcome = h.outcome.take().unwrap().unwrap();
    // (1 + 3 + 2) / 3 = 2.
    assert!(outcome.model.iter().all(|v| (v - 2.0).abs() < 1e-4), "{:?}", outcome.model);
    assert_eq!(outcome.rounds[0].sites, vec![site("a"), site("b"), site("d")]);
}

#[test]
fn too_many_dropouts_abort_the_round_without_a_result() {
    // Two of four sites vanish after the key exchange; the job tolerates one.
    let sites = [("a", 10, 1.0), ("b", 10, 1.0), ("c", 10, 1.0), ("d", 10, 1.0)];
    let mut h = Harness::with_secure(1, 4, 2, true, &sites);
    h.offer_all();
    h.run_until_quiet(|_, to, task| match (&task.kind, to.as_str()) {
        (TaskKind::ShareKeys { .. }, "c" | "d") => Delivery::Drop,
        _ => Delivery::Honest,
    });
    let deadline = h.run.next_deadline().unwrap();
    h.run.tick(deadline);
    h.run_until_quiet(|_, _, _| Delivery::Honest);
    let reason = h.outcome.take().unwrap().unwrap_err();
    assert!(reason.contains("secure aggregation aborted"), "{reason}");
}

#[test]
fn plain_updates_are_refused_when_the_job_is_secure_and_sites_refuse_weak_setups() {
    let (spec, text) = spec_secure(1, 2, 2, true);
    let job = spec.id();
    let mut s = SiteSession::new(site("a"), digest, identity("a"));
    let t = |id: u64, kind: TaskKind| Task { job: job.clone(), id: crate::messages::TaskId(id), kind };
    s.on_task(t(1, TaskKind::Offer { spec_toml: text })).unwrap();
    s.reply(&job, crate::messages::TaskId(1), ReplyKind::Decision { accept: true, reason: String::new() }).unwrap();
    s.on_task(t(2, TaskKind::Stats)).unwrap();
    s.reply(&job, crate::messages::TaskId(2), ReplyKind::Stats(FeatureSums::zero(15))).unwrap();
    // No setup: the site will not send a plain update for a secure job.
    let plain = t(3, TaskKind::Train { round: 1, model: model(16), standardization: std15(), secagg: None });
    assert!(matches!(s.on_task(plain), Err(SiteError::SecAggRequired { .. })));

    let round_id = crate::secure::round_id(&job, 1);
    let honest = crate::secure::params(&spec, 2, 16, &round_id).unwrap();
    let setup = |params: fedcare_secagg::Params, rid: [u8; 32]| {
        let entries = vec![("a".to_owned(), identity("a")), ("b".to_owned(), identity("b"))];
        Some(Arc::new(crate::messages::SecAggRound { setup: fedcare_secagg::RoundSetup::new(rid, entries, params).unwrap(), total_examples: 20 }))
    };
    let train = |id, secagg| t(id, TaskKind::Train { round: 1, model: model(16), standardization: std15(), secagg });
    // Parameters other than the job's (a smaller ring), another round's id: refused. (A lowered
    // threshold is refused by the setup's own validation: 2t must exceed the degree.)
    let mut weak = honest.clone();
    weak.bits = 16;
    assert!(matches!(s.on_task(train(4, setup(weak, round_id))), Err(SiteError::BadSecAggSetup { .. })));
    let other_round = crate::secure::round_id(&job, 2);
    assert!(matches!(s.on_task(train(5, setup(honest.clone(), other_round))), Err(SiteError::BadSecAggSetup { .. })));
    // A setup that does not list this site's key under its name.
    let stranger = Some(Arc::new(crate::messages::SecAggRound {
        setup: fedcare_secagg::RoundSetup::new(round_id, vec![("a".to_owned(), identity("x")), ("b".to_owned(), identity("b"))], honest.clone()).unwrap(),
        total_examples: 20,
    }));
    assert!(matches!(s.on_task(train(6, stranger)), Err(SiteError::BadSecAggSetup { .. })));
    // Secure steps out of order.
    let keys = t(7, TaskKind::ShareKeys { round: 1, keys: Arc::new(vec![]) });
    assert!(matches!(s.on_task(keys), Err(SiteError::SecAggOutOfOrder { .. })));
    // The honest setup is accepted.
    assert!(matches!(s.on_task(train(8, setup(honest, round_id))), Ok(Work::Train { secagg: Some((_, 0 | 1)), .. })));
}

// --- hostile input never panics and, unless it is a refused update, changes nothing ---

mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::messages::{Reply, TaskId};

    /// A snapshot of what a reply could change.
    fn snapshot(run: &JobRun) -> (&'static str, usize, Option<u64>, Vec<f32>, usize) {
        (run.stage_name(), run.participants().count(), run.next_deadline(), run.model().to_vec(), run.history().len())
    }

    fn kind_strategy() -> impl Strategy<Value = ReplyKind> {
        prop_oneof![
            any::<bool>().prop_map(|accept| ReplyKind::Decision { accept, reason: String::new() }),
            (0usize..20).prop_map(|w| ReplyKind::Stats(FeatureSums { count: vec![1; w], sum: vec![0.0; w], sum_sq: vec![1.0; w] })),
            (any::<u32>(), prop::collection::vec(any::<f32>(), 0..20), any::<u64>(), any::<f64>()).prop_map(|(round, delta, n, loss)| {
                ReplyKind::Update(ModelUpdate { round, num_examples: n, delta, train_loss: loss })
            }),
            (any::<u32>(), prop::collection::vec(any::<u8>(), 0..200), any::<u64>())
                .prop_map(|(round, keys, n)| ReplyKind::Keys { round, keys, num_examples: n }),
            (any::<u32>(), prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 0..5))
                .prop_map(|(round, shares)| ReplyKind::Shares { round, shares }),
            (any::<u32>(), prop::collection::vec(any::<u8>(), 0..200)).prop_map(|(round, masked)| ReplyKind::Masked { round, masked }),
            (any::<u32>(), prop::collection::vec(any::<u8>(), 0..200)).prop_map(|(round, response)| ReplyKind::Unmasked { round, response }),
            "[a-z]{0,10}".prop_map(|reason| ReplyKind::Failed { reason }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn random_replies_in_any_stage(secure in any::<bool>(), stage_steps in 0usize..4, who in 0usize..5, task in 0u64..40, kind in kind_strategy()) {
            let sites = [("a", 10, 1.0), ("b", 20, 2.0), ("c", 30, 3.0)];
            let mut h = Harness::with_secure(2, 3, 2, secure, &sites);
            h.offer_all();
            // Advance honestly by a few deliveries so the stage varies.
            for _ in 0..stage_steps {
                h.drain();
                let batch = std::mem::take(&mut h.inbox);
                for (to, t) in batch {
                    if let Some(r) = h.answer(&to, t) {
                        h.run.handle_reply(r, 0).unwrap();
                    }
                }
            }
            h.drain();
            let names = ["a", "b", "c", "z", "b"];
            let reply = Reply { site: site(names[who]), job: h.run.id().clone(), task: TaskId(task), kind };
            let before = snapshot(&h.run);
            match h.run.handle_reply(reply, 0) {
                Ok(()) => {}
                Err(ReplyError::Refused { .. }) => {
                    // The site left the stage; the model and history are untouched.
                    let after = snapshot(&h.run);
                    prop_assert_eq!(after.3, before.3);
                    prop_assert_eq!(after.4, before.4);
                }
                Err(_) => prop_assert_eq!(snapshot(&h.run), before),
            }
        }
    }
}
