//! The coordinator's side of one job, as a pure state machine.
//!
//! A job moves through stages: recruiting (offer the job to available sites, collect their
//! decisions), statistics (add the sites' aggregate feature sums into a federation-wide
//! standardisation), then for each round training (FedAvg over the sites' updates) and
//! evaluation (add the sites' held-out counts), and finally finished or failed.
//!
//! Within a stage the machine waits on a set of *outstanding* tasks, one per site. A stage ends
//! when nothing is outstanding: each site either answered, was refused, dropped out, or missed
//! the stage's deadline. Whether the stage succeeded is then decided by the job's quorum.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use fedcare_data::{FeatureSums, Standardization};
use fedcare_job::{JobId, JobSpec};
use serde::{Deserialize, Serialize};

use fedcare_secagg::{AdvertiseKeys, EncryptedShare, MaskedInput, RoundSetup, UnmaskResponse};

use crate::fedavg::FedAvg;
use crate::messages::{EvalCounts, EvalReport, ModelVector, Reply, ReplyKind, SecAggRound, SiteId, Task, TaskId, TaskKind};
use crate::secure;

/// Why a reply was not accepted. The state is unchanged unless the variant says otherwise.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply is for job {got}, not {expected}")]
    WrongJob { expected: JobId, got: JobId },
    #[error("site {0} is not expected to answer anything in this job now")]
    NotExpected(SiteId),
    #[error("site {site} answered task {got:?} but its open task is {expected:?} (stale or replayed reply)")]
    WrongTask { site: SiteId, expected: TaskId, got: TaskId },
    #[error("site {site} sent a {got} reply to a {expected} task")]
    WrongKind { site: SiteId, expected: &'static str, got: &'static str },
    /// The reply was well-formed but its content was refused; the site leaves the current stage
    /// (this changes state: the stage goes on without it).
    #[error("site {site}'s {what} was refused: {reason}")]
    Refused { site: SiteId, what: &'static str, reason: String },
    #[error("the job has ended")]
    JobOver,
}

/// One completed round, as recorded in the job's history and report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: u32,
    /// Sites whose update went into the average.
    pub sites: Vec<SiteId>,
    /// Example-weighted mean training loss; `None` under differential privacy (the loss is
    /// computed on records and not privatised, so sites do not release it).
    pub train_loss: Option<f64>,
    /// Held-out counts summed over the sites that evaluated.
    pub eval: EvalCounts,
    /// Each evaluating site's own counts for this round's model (what a per-site plot needs;
    /// absent in state files written before it was recorded).
    #[serde(default)]
    pub site_eval: BTreeMap<SiteId, EvalReport>,
    pub started_ms: u64,
    pub finished_ms: u64,
}

/// Events for watchers (the admin API, progress lines, the report).
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    SitesJoined(Vec<SiteId>),
    SiteRefused { site: SiteId, round: u32, reason: String },
    StatsDone { total_examples: u64 },
    /// A site finished its part of a stage (or the stage began); `waiting` lists the sites
    /// that still owe an answer in it.
    Progress { round: u32, stage: &'static str, sites_done: u32, sites_total: u32, waiting: Vec<SiteId> },
    RoundDone(RoundRecord),
}

/// Everything the job produced, handed out once when it finishes.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    pub model: Vec<f32>,
    pub standardization: Standardization,
    pub rounds: Vec<RoundRecord>,
    /// Each site's evaluation of the final model.
    pub final_eval: BTreeMap<SiteId, EvalReport>,
    /// Training examples each site reported (its FedAvg weight).
    pub train_examples: BTreeMap<SiteId, u64>,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send { site: SiteId, task: Task },
    Event(JobEvent),
    Finished(Box<JobOutcome>),
    Failed(String),
}

/// The four exchanges of a secure aggregation round, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecStep {
    Keys,
    Shares,
    Masked,
    Unmask,
}

/// The coordinator's side of one round's secure aggregation.
#[derive(Debug)]
struct SecureRound {
    server: fedcare_secagg::Server,
    setup: Arc<SecAggRound>,
    step: SecStep,
    /// Each site's index in the setup.
    index: BTreeMap<SiteId, u32>,
    /// FedAvg weight (training examples) each site declared with its keys.
    weights: BTreeMap<u32, u64>,
}

impl SecureRound {
    fn site_of(&self, index: u32) -> Option<SiteId> {
        self.index.iter().find(|(_, i)| **i == index).map(|(s, _)| s.clone())
    }
}

#[derive(Debug)]
enum Stage {
    Recruiting,
    Stats { sums: FeatureSums, reported: u32 },
    /// Local training and aggregation: plain FedAvg of the updates, or with `secure`, the four
    /// SecAgg+ exchanges after which only the sum is known.
    Training { round: u32, agg: FedAvg, sites: Vec<SiteId>, started_ms: u64, secure: Option<Box<SecureRound>> },
    /// The round's sites evaluate the new model; their reports gather in `last_eval` and are
    /// summed in site order when the stage ends.
    Evaluating { round: u32, record: RoundRecord },
    Over,
}

impl Stage {
    fn name(&self) -> &'static str {
        match self {
            Stage::Recruiting => "recruiting",
            Stage::Stats { .. } => "stats",
            Stage::Training { .. } => "train",
            Stage::Evaluating { .. } => "eval",
            Stage::Over => "over",
        }
    }
}

/// The coordinator's state for one job.
#[derive(Debug)]
pub struct JobRun {
    job: JobId,
    spec: Arc<JobSpec>,
    spec_toml: Arc<str>,
    layout_digest: String,
    model: Arc<Vec<f32>>,
    stage: Stage,
    /// Sites that accepted the job.
    participants: BTreeSet<SiteId>,
    /// Sites the job was offered to (accepted, refused or pending).
    offered: BTreeSet<SiteId>,
    /// Each site's long-term public key, which signs its secure aggregation keys.
    identities: BTreeMap<SiteId, Vec<u8>>,
    /// The one task each site must answer next, with its deadline.
    outstanding: BTreeMap<SiteId, (TaskId, u64)>,
    next_task: u64,
    standardization: Option<Arc<Standardization>>,
    train_examples: BTreeMap<SiteId, u64>,
    last_eval: BTreeMap<SiteId, EvalReport>,
    history: Vec<RoundRecord>,
    actions: VecDeque<Action>,
    /// Central mechanism's noise source (see [`JobRun::with_noise`]).
    noise: Option<rand_chacha::ChaCha20Rng>,
    /// Threads for a secure round's unmasking (see [`JobRun::with_unmask_threads`]).
    unmask_threads: usize,
    /// The job's privacy plan, calibrated once here rather than every round (`None`: no
    /// differential privacy, or a plan that cannot be computed, which a validated spec rules out).
    plan: Option<Arc<fedcare_job::PrivacyPlan>>,
    /// Former participants that reconnected while the job runs, working their way back in:
    /// the task they owe (the offer again, then their statistics again), and its deadline.
    /// Kept apart from `outstanding` so a rejoining site never holds up the current stage.
    rejoining: BTreeMap<SiteId, (TaskId, u64, Rejoin)>,
    /// Sites that rejoined and take part again from the next round.
    rejoined: BTreeSet<SiteId>,
}

/// Where a reconnected former participant is on its way back into a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejoin {
    /// Offered the job again (it forgot it when its connection dropped); owes a decision.
    Offer,
    /// Accepted; owes its statistics release again (a site re-sends the bytes its ledger
    /// recorded, so nothing new is spent). The coordinator checks, and does not re-add, them.
    Stats,
}

impl JobRun {
    /// Starts recruiting for `spec`, whose global model begins as `initial_model`.
    pub fn new(spec: Arc<JobSpec>, spec_toml: Arc<str>, layout_digest: String, initial_model: Vec<f32>) -> JobRun {
        let plan = spec.privacy_plan().ok().flatten().map(Arc::new);
        JobRun {
            job: spec.id(),
            spec,
            spec_toml,
            layout_digest,
            model: Arc::new(initial_model),
            stage: Stage::Recruiting,
            participants: BTreeSet::new(),
            offered: BTreeSet::new(),
            identities: BTreeMap::new(),
            outstanding: BTreeMap::new(),
            next_task: 1,
            standardization: None,
            train_examples: BTreeMap::new(),
            last_eval: BTreeMap::new(),
            history: Vec::new(),
            actions: VecDeque::new(),
            noise: None,
            unmask_threads: 1,
            plan,
            rejoining: BTreeMap::new(),
            rejoined: BTreeSet::new(),
        }
    }

    pub fn id(&self) -> &JobId {
        &self.job
    }

    /// A job resumed after a coordinator restart: `model` is the global model after the last
    /// recorded round and `history` the records of rounds `1..=history.len()`, in order. It
    /// recruits again and redoes the statistics step (sites answer with the statistics they
    /// recorded, so nothing new is spent and the scaling is the same), then continues with
    /// round `history.len() + 1`: no recorded round is run or counted twice.
    pub fn resume(
        spec: Arc<JobSpec>,
        spec_toml: Arc<str>,
        layout_digest: String,
        model: Vec<f32>,
        history: Vec<RoundRecord>,
    ) -> Result<JobRun, String> {
        for (i, r) in history.iter().enumerate() {
            if r.round != i as u32 + 1 {
                return Err(format!("recorded rounds are not 1..{}: found round {} at position {}", history.len(), r.round, i + 1));
            }
        }
        if history.len() as u32 > spec.rounds {
            return Err(format!("{} rounds recorded for a job of {}", history.len(), spec.rounds));
        }
        let mut run = JobRun::new(spec, spec_toml, layout_digest, model);
        run.history = history;
        Ok(run)
    }

    /// Rounds completed so far.
    pub fn rounds_done(&self) -> u32 {
        self.history.len() as u32
    }

    /// The noise source of the central mechanism (site-level privacy, `mechanism =
    /// "central"`). The driver seeds it from a CSPRNG; a central job without one fails at
    /// its first round rather than release an un-noised model.
    pub fn with_noise(mut self, rng: rand_chacha::ChaCha20Rng) -> JobRun {
        self.noise = Some(rng);
        self
    }

    /// How many threads a secure round's unmasking may use (default 1). Unmasking regenerates
    /// every survivor's self mask and the dropouts' pairwise masks over the whole model; the
    /// result is the same for any number of threads. The driver, not this I/O-free state
    /// machine, knows the machine's cores.
    pub fn with_unmask_threads(mut self, threads: usize) -> JobRun {
        self.unmask_threads = threads.max(1);
        self
    }

    /// Central mechanism: adds Gaussian noise of std `z C / count` to each coordinate of the
    /// new model (the mean of `count` clipped updates has L2 sensitivity `C / count`). The
    /// noise is the exact discrete Gaussian on the lattice `C / (count 2^16)`, so no
    /// floating-point sampler is involved. A no-op for every other mechanism.
    fn central_noise(&mut self, model: &mut [f32], count: usize) -> Result<(), String> {
        if !secure::central_dp(&self.spec) {
            return Ok(());
        }
        let plan = self.plan.clone().ok_or("no privacy plan")?;
        let rng = self.noise.as_mut().ok_or("the central mechanism has no noise source; refusing to release an un-noised model")?;
        const LATTICE: f64 = 65536.0;
        let sigma_int = plan.noise_multiplier * LATTICE;
        let num = (sigma_int * sigma_int * 1024.0).ceil();
        if !(num.is_finite() && num >= 1.0 && num < u64::MAX as f64) {
            return Err(format!("noise multiplier {} is out of the sampler's range", plan.noise_multiplier));
        }
        let dg = fedcare_privacy::DiscreteGaussian::new(num as u64, 1024).map_err(|e| e.to_string())?;
        let gamma = plan.clip_norm / (count.max(1) as f64 * LATTICE);
        for v in model.iter_mut() {
            *v = (f64::from(*v) + gamma * dg.sample(rng) as f64) as f32;
        }
        Ok(())
    }

    pub fn spec(&self) -> &Arc<JobSpec> {
        &self.spec
    }

    pub fn is_over(&self) -> bool {
        matches!(self.stage, Stage::Over)
    }

    /// The stage's name, for status displays.
    pub fn stage_name(&self) -> &'static str {
        self.stage.name()
    }

    /// The current global model (after the last completed training stage).
    pub fn model(&self) -> &[f32] {
        &self.model
    }

    /// Rounds completed so far.
    pub fn history(&self) -> &[RoundRecord] {
        &self.history
    }

    /// Sites that accepted the job.
    pub fn participants(&self) -> impl Iterator<Item = &SiteId> {
        self.participants.iter()
    }

    /// Next action for the driver, if any.
    pub fn poll(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// A site is connected and may be offered the job. Offers go out only while recruiting and
    /// once per site. `identity` is the site's long-term public key.
    pub fn site_available(&mut self, site: &SiteId, identity: &[u8], now_ms: u64) {
        if matches!(self.stage, Stage::Training { .. } | Stage::Evaluating { .. }) {
            return self.offer_rejoin(site, identity, now_ms);
        }
        if !matches!(self.stage, Stage::Recruiting) || self.offered.contains(site) {
            return;
        }
        self.identities.insert(site.clone(), identity.to_vec());
        self.offered.insert(site.clone());
        let kind = TaskKind::Offer { spec_toml: self.spec_toml.clone() };
        let deadline = now_ms.saturating_add(self.spec.deadlines.offer_secs.saturating_mul(1000));
        self.send(site, kind, deadline);
    }

    /// A former participant of this running job (it sent its statistics, then left: its
    /// connection dropped, or its agent restarted) is back: offer it the job again. Once it
    /// accepts and re-sends its recorded statistics it takes part from the next round.
    fn offer_rejoin(&mut self, site: &SiteId, identity: &[u8], now_ms: u64) {
        if !self.train_examples.contains_key(site)
            || self.participants.contains(site)
            || self.rejoining.contains_key(site)
            || self.rejoined.contains(site)
        {
            return;
        }
        self.identities.insert(site.clone(), identity.to_vec());
        self.offered.insert(site.clone());
        let kind = TaskKind::Offer { spec_toml: self.spec_toml.clone() };
        let deadline = now_ms.saturating_add(self.spec.deadlines.offer_secs.saturating_mul(1000));
        self.send_rejoin(site, kind, deadline, Rejoin::Offer);
    }

    fn send_rejoin(&mut self, site: &SiteId, kind: TaskKind, deadline_ms: u64, step: Rejoin) {
        let id = self.task_id();
        self.rejoining.insert(site.clone(), (id, deadline_ms, step));
        self.actions.push_back(Action::Send { site: site.clone(), task: Task { job: self.job.clone(), id, kind } });
    }

    /// A rejoining site's answer (see [`JobRun::offer_rejoin`]).
    fn handle_rejoin(&mut self, site: SiteId, step: Rejoin, kind: ReplyKind, now_ms: u64) -> Result<(), ReplyError> {
        let round = self.current_round();
        self.rejoining.remove(&site);
        let refuse = |what: &'static str, reason: String| ReplyError::Refused { site: site.clone(), what, reason };
        match (step, kind) {
            (Rejoin::Offer, ReplyKind::Decision { accept: true, .. }) => {
                let deadline = now_ms.saturating_add(self.spec.deadlines.stage_secs.saturating_mul(1000));
                self.send_rejoin(&site, TaskKind::Stats, deadline, Rejoin::Stats);
                Ok(())
            }
            (Rejoin::Offer, ReplyKind::Decision { accept: false, reason }) => {
                self.offered.remove(&site);
                self.event(JobEvent::SiteRefused { site: site.clone(), round, reason: format!("site declined to rejoin: {reason}") });
                Ok(())
            }
            (Rejoin::Stats, ReplyKind::Stats(sums)) => {
                // The same release as before (a site's ledger re-sends it byte for byte), so the
                // same count; anything else is refused and the site stays out.
                let n = sums.count.iter().copied().max().unwrap_or(0);
                let width = self.spec.n_features();
                let expected = self.train_examples.get(&site).copied();
                if sums.count.len() != width || Some(n) != expected {
                    self.offered.remove(&site);
                    let e = refuse("statistics on rejoining", format!("they differ from the site's first release (count {n}, expected {expected:?})"));
                    self.event(JobEvent::SiteRefused { site: site.clone(), round, reason: e.to_string() });
                    return Err(e);
                }
                self.rejoined.insert(site.clone());
                self.event(JobEvent::SitesJoined(vec![site]));
                Ok(())
            }
            (_, kind) => {
                self.offered.remove(&site);
                let e = refuse("reply while rejoining", format!("a {} reply where a {} was expected", kind.name(), if step == Rejoin::Offer { "decision" } else { "stats" }));
                self.event(JobEvent::SiteRefused { site: site.clone(), round, reason: e.to_string() });
                Err(e)
            }
        }
    }

    /// A site disconnected: it leaves the job (and the current stage, if it owed a reply).
    pub fn site_lost(&mut self, site: &SiteId, now_ms: u64) {
        if self.is_over() {
            return;
        }
        self.rejoining.remove(site);
        self.rejoined.remove(site);
        self.offered.remove(site);
        let was_participant = self.participants.remove(site);
        if self.outstanding.remove(site).is_some() || was_participant {
            let round = self.current_round();
            self.event(JobEvent::SiteRefused { site: site.clone(), round, reason: "disconnected".into() });
            self.maybe_advance(now_ms);
        }
    }

    /// Time passed: sites that missed their stage's deadline leave that stage.
    pub fn tick(&mut self, now_ms: u64) {
        let late_rejoins: Vec<SiteId> = self.rejoining.iter().filter(|(_, (_, d, _))| *d <= now_ms).map(|(s, _)| s.clone()).collect();
        for site in late_rejoins {
            self.rejoining.remove(&site);
            self.offered.remove(&site);
            let round = self.current_round();
            self.event(JobEvent::SiteRefused { site, round, reason: "did not finish rejoining before the deadline".into() });
        }
        let late: Vec<SiteId> =
            self.outstanding.iter().filter(|(_, (_, deadline))| *deadline <= now_ms).map(|(s, _)| s.clone()).collect();
        if late.is_empty() {
            return;
        }
        let round = self.current_round();
        for site in late {
            self.outstanding.remove(&site);
            if matches!(self.stage, Stage::Recruiting | Stage::Stats { .. }) {
                // A site that cannot answer an offer or send its sums in time takes no part.
                self.participants.remove(&site);
            }
            self.event(JobEvent::SiteRefused { site, round, reason: "missed the stage deadline".into() });
        }
        self.maybe_advance(now_ms);
    }

    /// The earliest deadline among outstanding tasks, so the driver knows when to call [`tick`](Self::tick).
    pub fn next_deadline(&self) -> Option<u64> {
        self.outstanding.values().map(|(_, d)| *d).chain(self.rejoining.values().map(|(_, d, _)| *d)).min()
    }

    /// A site answered a task.
    pub fn handle_reply(&mut self, reply: Reply, now_ms: u64) -> Result<(), ReplyError> {
        if self.is_over() {
            return Err(ReplyError::JobOver);
        }
        if reply.job != self.job {
            return Err(ReplyError::WrongJob { expected: self.job.clone(), got: reply.job });
        }
        let site = reply.site;
        if let Some(&(task, _, step)) = self.rejoining.get(&site)
            && task == reply.task
        {
            return self.handle_rejoin(site, step, reply.kind, now_ms);
        }
        let Some(&(expected, _)) = self.outstanding.get(&site) else {
            return Err(ReplyError::NotExpected(site));
        };
        if expected != reply.task {
            return Err(ReplyError::WrongTask { site, expected, got: reply.task });
        }
        let expected_kind = match &self.stage {
            Stage::Recruiting => "decision",
            Stage::Stats { .. } => "stats",
            Stage::Training { secure: None, .. } => "update",
            Stage::Training { secure: Some(sec), .. } => match sec.step {
                SecStep::Keys => "keys",
                SecStep::Shares => "shares",
                SecStep::Masked => "masked",
                SecStep::Unmask => "unmasked",
            },
            Stage::Evaluating { .. } => "evaluation",
            Stage::Over => return Err(ReplyError::JobOver),
        };
        let got_kind = reply.kind.name();
        if got_kind != expected_kind && got_kind != "failed" {
            return Err(ReplyError::WrongKind { site, expected: expected_kind, got: got_kind });
        }
        let result = self.apply_reply(&site, reply.kind);
        // Whether accepted or refused, the site owes nothing more in this stage.
        self.outstanding.remove(&site);
        if let Err(ReplyError::Refused { reason, .. }) = &result {
            let round = self.current_round();
            self.event(JobEvent::SiteRefused { site: site.clone(), round, reason: reason.clone() });
        }
        self.progress();
        self.maybe_advance(now_ms);
        result
    }

    fn apply_reply(&mut self, site: &SiteId, kind: ReplyKind) -> Result<(), ReplyError> {
        let refuse = |what: &'static str, reason: String| ReplyError::Refused { site: site.clone(), what, reason };
        let round = self.current_round();
        match (&mut self.stage, kind) {
            (Stage::Recruiting, ReplyKind::Decision { accept: true, .. }) => {
                self.participants.insert(site.clone());
                Ok(())
            }
            (Stage::Recruiting, ReplyKind::Decision { accept: false, reason }) => {
                self.event(JobEvent::SiteRefused { site: site.clone(), round, reason: format!("site declined: {reason}") });
                Ok(())
            }
            (Stage::Recruiting | Stage::Stats { .. }, ReplyKind::Failed { reason }) => {
                self.participants.remove(site);
                Err(refuse("task", format!("site failed: {reason}")))
            }
            (_, ReplyKind::Failed { reason }) => Err(refuse("task", format!("site failed: {reason}"))),
            (Stage::Stats { sums, reported }, ReplyKind::Stats(site_sums)) => {
                let check = site_sums.count.len() == sums.count.len()
                    && site_sums.sum.len() == sums.count.len()
                    && site_sums.sum_sq.len() == sums.count.len();
                let finite = site_sums.sum.iter().chain(&site_sums.sum_sq).all(|v| v.is_finite());
                let result = if !check {
                    Err(format!("expected sums for {} features, got {}", sums.count.len(), site_sums.count.len()))
                } else if !finite {
                    Err("sums contain a non-finite value".to_owned())
                } else {
                    sums.add(&site_sums).map_err(|e| e.to_string())
                };
                match result {
                    Ok(()) => {
                        *reported += 1;
                        let n = site_sums.count.iter().copied().max().unwrap_or(0);
                        self.train_examples.insert(site.clone(), n);
                        Ok(())
                    }
                    Err(reason) => {
                        self.participants.remove(site);
                        Err(refuse("feature sums", reason))
                    }
                }
            }
            (Stage::Training { round, secure: Some(sec), .. }, kind) => {
                let round = *round;
                let index = *sec.index.get(site).ok_or_else(|| refuse("reply", "site is not in this round's setup".into()))?;
                let check_round = |r: u32, what: &'static str| {
                    if r == round { Ok(()) } else { Err(refuse(what, format!("it is for round {r}, not {round}"))) }
                };
                match kind {
                    ReplyKind::Keys { round: r, keys, num_examples } => {
                        check_round(r, "keys")?;
                        let keys = AdvertiseKeys::from_bytes(&keys).map_err(|e| refuse("keys", e.to_string()))?;
                        if keys.index != index {
                            return Err(refuse("keys", format!("they claim index {}, the site's index is {index}", keys.index)));
                        }
                        if num_examples == 0 {
                            return Err(refuse("keys", "they declare 0 training examples".into()));
                        }
                        if num_examples > crate::MAX_DECLARED_EXAMPLES {
                            return Err(refuse(
                                "keys",
                                format!("they declare {num_examples} training examples, above the limit of {}", crate::MAX_DECLARED_EXAMPLES),
                            ));
                        }
                        sec.server.add_keys(keys).map_err(|e| refuse("keys", e.to_string()))?;
                        sec.weights.insert(index, num_examples);
                        Ok(())
                    }
                    ReplyKind::Shares { round: r, shares } => {
                        check_round(r, "shares")?;
                        let shares = shares
                            .iter()
                            .map(|b| EncryptedShare::from_bytes(b))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| refuse("shares", e.to_string()))?;
                        sec.server.add_shares(index, shares).map_err(|e| refuse("shares", e.to_string()))
                    }
                    ReplyKind::Masked { round: r, masked } => {
                        check_round(r, "masked update")?;
                        let m = MaskedInput::from_bytes(&masked).map_err(|e| refuse("masked update", e.to_string()))?;
                        if m.from != index {
                            return Err(refuse("masked update", format!("it claims index {}, the site's index is {index}", m.from)));
                        }
                        sec.server.add_masked(m).map_err(|e| refuse("masked update", e.to_string()))
                    }
                    ReplyKind::Unmasked { round: r, response } => {
                        check_round(r, "unmasking shares")?;
                        let u = UnmaskResponse::from_bytes(&response).map_err(|e| refuse("unmasking shares", e.to_string()))?;
                        if u.from != index {
                            return Err(refuse("unmasking shares", format!("they claim index {}, the site's index is {index}", u.from)));
                        }
                        sec.server.add_unmask(u).map_err(|e| refuse("unmasking shares", e.to_string()))
                    }
                    other => Err(ReplyError::WrongKind { site: site.clone(), expected: "secure aggregation", got: other.name() }),
                }
            }
            (Stage::Training { round, agg, sites, .. }, ReplyKind::Update(update)) => {
                if update.round != *round {
                    return Err(refuse("update", format!("it is for round {}, not {round}", update.round)));
                }
                agg.add(&update.delta, update.num_examples, update.train_loss)
                    .map_err(|e| refuse("update", e.to_string()))?;
                sites.push(site.clone());
                Ok(())
            }
            (Stage::Evaluating { round, .. }, ReplyKind::Evaluation(report)) => {
                if report.round != *round {
                    return Err(refuse("evaluation", format!("it is for round {}, not {round}", report.round)));
                }
                report.counts.validate().map_err(|e| refuse("evaluation", e))?;
                if report.counts.n == 0 {
                    return Err(refuse("evaluation", "it covers 0 examples".into()));
                }
                if let Some(auc) = report.auc
                    && !(0.0..=1.0).contains(&auc) {
                        return Err(refuse("evaluation", format!("AUC {auc} outside [0, 1]")));
                    }
                self.last_eval.insert(site.clone(), report);
                Ok(())
            }
            // handle_reply checked the kind against the stage already.
            (stage, kind) => Err(ReplyError::WrongKind { site: site.clone(), expected: stage.name(), got: kind.name() }),
        }
    }

    fn current_round(&self) -> u32 {
        match &self.stage {
            Stage::Training { round, .. } | Stage::Evaluating { round, .. } => *round,
            _ => 0,
        }
    }

    fn progress(&mut self) {
        let (round, stage) = (self.current_round(), self.stage.name());
        let total = match &self.stage {
            Stage::Recruiting => self.offered.len(),
            _ => self.participants.len(),
        } as u32;
        let done = total.saturating_sub(self.outstanding.len() as u32);
        let waiting = self.outstanding.keys().cloned().collect();
        self.event(JobEvent::Progress { round, stage, sites_done: done, sites_total: total, waiting });
    }

    /// Ends the current stage once nothing is outstanding.
    fn maybe_advance(&mut self, now_ms: u64) {
        if !self.outstanding.is_empty() || self.is_over() {
            return;
        }
        let min_sites = self.spec.min_sites as usize;
        let quorum = self.spec.round_quorum();
        match std::mem::replace(&mut self.stage, Stage::Over) {
            Stage::Recruiting => {
                if self.participants.len() >= min_sites {
                    self.event(JobEvent::SitesJoined(self.participants.iter().cloned().collect()));
                    self.start_stats(now_ms);
                } else {
                    // Wait for more sites to become available.
                    self.stage = Stage::Recruiting;
                }
            }
            Stage::Stats { sums, reported } => {
                if (reported as usize) < min_sites || self.participants.len() < min_sites {
                    return self.fail(format!(
                        "only {reported} of the {min_sites} sites the job needs sent their feature statistics"
                    ));
                }
                let total = sums.count.iter().copied().max().unwrap_or(0);
                // Noised statistics (record-level privacy) are made robust with the job's
                // public feature ranges; exact ones are used as they are.
                let std = match fedcare_job::privacy::encoded_bounds(&self.spec) {
                    Some(bounds) => Standardization::from_noisy_sums(&sums, &bounds),
                    None => Standardization::from_sums(&sums),
                };
                match std {
                    Ok(std) => {
                        self.standardization = Some(Arc::new(std));
                        self.event(JobEvent::StatsDone { total_examples: total });
                        // A resumed job continues after its last recorded round.
                        let next = self.history.len() as u32 + 1;
                        if next > self.spec.rounds {
                            self.finish();
                        } else {
                            self.start_round(next, now_ms);
                        }
                    }
                    Err(e) => self.fail(format!("federated statistics unusable: {e}")),
                }
            }
            Stage::Training { round, agg, sites, started_ms, secure: Some(sec) } => {
                self.advance_secure(round, agg, sites, started_ms, sec, now_ms);
            }
            Stage::Training { round, agg, mut sites, started_ms, secure: None } => {
                // Arrival order is a race; the record lists sites by name.
                sites.sort();
                if agg.updates() < quorum {
                    return self.fail(format!(
                        "round {round}: only {} valid updates, the job needs {quorum}",
                        agg.updates()
                    ));
                }
                let mut model = agg.apply(&self.model);
                if let Err(e) = self.central_noise(&mut model, agg.updates() as usize) {
                    return self.fail(format!("round {round}: {e}"));
                }
                self.start_eval(round, model, sites, agg.mean_train_loss(), started_ms, now_ms);
            }
            Stage::Evaluating { round, mut record } => {
                record.site_eval = self
                    .last_eval
                    .iter()
                    .filter(|(_, e)| e.round == round)
                    .map(|(s, e)| (s.clone(), e.clone()))
                    .collect();
                // Summed in site order, not arrival order: float sums then do not depend on
                // which site answered first, so the same job gives the same report.
                record.eval = EvalCounts::zero();
                for e in record.site_eval.values() {
                    record.eval.add(&e.counts);
                }
                record.finished_ms = now_ms;
                self.history.push(record.clone());
                self.event(JobEvent::RoundDone(record));
                if round < self.spec.rounds {
                    self.start_round(round + 1, now_ms);
                } else {
                    self.finish();
                }
            }
            Stage::Over => {}
        }
    }

    /// The new global model is known: record the round's training and have it evaluated.
    fn start_eval(&mut self, round: u32, model: Vec<f32>, sites: Vec<SiteId>, train_loss: f64, started_ms: u64, now_ms: u64) {
        // Each update was finite, but their weighted sum may not be (values near f32::MAX):
        // never hand the sites a model they would refuse.
        if let Some(i) = model.iter().position(|v| !v.is_finite()) {
            return self.fail(format!("round {round}: the new global model is not finite at parameter {i} (an update was too large)"));
        }
        self.model = Arc::new(model);
        let train_loss = (self.spec.privacy.unit == fedcare_job::PrivacyUnit::None).then_some(train_loss);
        let record = RoundRecord { round, sites, train_loss, eval: EvalCounts::zero(), site_eval: BTreeMap::new(), started_ms, finished_ms: now_ms };
        self.stage = Stage::Evaluating { round, record };
        let task = |s: &Self| TaskKind::Eval { round, model: s.model_vector(), standardization: s.std() };
        self.send_to_participants(task, now_ms);
    }

    /// Ends one secure aggregation exchange and starts the next, or decodes the sum.
    fn advance_secure(&mut self, round: u32, agg: FedAvg, sites: Vec<SiteId>, started_ms: u64, mut sec: Box<SecureRound>, now_ms: u64) {
        let deadline = now_ms.saturating_add(self.spec.deadlines.stage_secs.saturating_mul(1000));
        let abort = |e: fedcare_secagg::SecAggError| format!("round {round}: secure aggregation aborted, nothing was revealed: {e}");
        let mut sends: Vec<(SiteId, TaskKind)> = Vec::new();
        match sec.step {
            SecStep::Keys => match sec.server.keys_done() {
                Ok(list) => {
                    let keys: Arc<Vec<Vec<u8>>> = Arc::new(list.iter().map(AdvertiseKeys::to_bytes).collect());
                    for k in &list {
                        if let Some(site) = sec.site_of(k.index) {
                            sends.push((site, TaskKind::ShareKeys { round, keys: keys.clone() }));
                        }
                    }
                    sec.step = SecStep::Shares;
                }
                Err(e) => return self.fail(abort(e)),
            },
            SecStep::Shares => match sec.server.shares_done() {
                Ok(map) => {
                    for (to, shares) in map {
                        if let Some(site) = sec.site_of(to) {
                            sends.push((site, TaskKind::Mask { round, shares: shares.iter().map(EncryptedShare::to_bytes).collect() }));
                        }
                    }
                    sec.step = SecStep::Masked;
                }
                Err(e) => return self.fail(abort(e)),
            },
            SecStep::Masked => match sec.server.masked_done() {
                Ok(map) => {
                    for (to, request) in map {
                        if let Some(site) = sec.site_of(to) {
                            sends.push((site, TaskKind::Unmask { round, request: request.to_bytes() }));
                        }
                    }
                    sec.step = SecStep::Unmask;
                }
                Err(e) => return self.fail(abort(e)),
            },
            SecStep::Unmask => {
                let survivors = sec.server.survivors();
                let sum = match sec.server.finish_threads(self.unmask_threads) {
                    Ok(sum) => sum,
                    Err(e) => return self.fail(abort(e)),
                };
                let quorum = self.spec.round_quorum() as usize;
                if survivors.len() < quorum {
                    return self.fail(format!("round {round}: only {} sites' updates are in the sum, the job needs {quorum}", survivors.len()));
                }
                let len = self.model.len();
                let decoded = match secure::decode_sum(&self.spec, self.plan.as_deref(), sec.setup.setup.n(), len, &sec.setup.setup.round_id, &sum, survivors.len()) {
                    Ok(d) => d,
                    Err(e) => return self.fail(format!("round {round}: the unmasked sum cannot be decoded: {e}")),
                };
                // Under the distributed mechanism every site's (clipped, noised) update has
                // weight one: the new model moves by the mean over the survivors.
                let weight = if secure::distributed_dp(&self.spec) {
                    survivors.len() as f64
                } else {
                    let examples = survivors.iter().filter_map(|i| sec.weights.get(i)).fold(0u64, |a, b| a.saturating_add(*b));
                    examples as f64 / sec.setup.total_examples as f64
                };
                // `weight` is NaN if total_examples were 0; `is_nan` keeps that case a failure.
                if decoded.len() != secure::masked_dim(len) || weight.is_nan() || weight <= 0.0 {
                    return self.fail(format!("round {round}: the unmasked sum has the wrong shape or no weight"));
                }
                let mut model: Vec<f32> =
                    self.model.iter().zip(&decoded[..len]).map(|(g, d)| (f64::from(*g) + f64::from(*d) / weight) as f32).collect();
                if let Err(e) = self.central_noise(&mut model, survivors.len()) {
                    return self.fail(format!("round {round}: {e}"));
                }
                let train_loss = f64::from(decoded[len]) / weight;
                let mut names: Vec<SiteId> = survivors.iter().filter_map(|i| sec.site_of(*i)).collect();
                names.sort();
                drop(agg);
                drop(sites);
                return self.start_eval(round, model, names, train_loss, started_ms, now_ms);
            }
        }
        self.stage = Stage::Training { round, agg, sites, started_ms, secure: Some(sec) };
        // A site that left the job since its last message is a dropout for the secure
        // aggregation; it gets no further task.
        let sends: Vec<(SiteId, TaskKind)> = sends.into_iter().filter(|(site, _)| self.participants.contains(site)).collect();
        for (site, kind) in sends {
            self.send(&site, kind, deadline);
        }
        if self.outstanding.is_empty() {
            // Everyone who could answer has left: end this step now rather than wait.
            return self.maybe_advance(now_ms);
        }
        self.progress();
    }

    /// This round's secure aggregation setup over the current participants.
    fn secure_round(&self, round: u32) -> Result<SecureRound, String> {
        let mut entries = Vec::new();
        for site in &self.participants {
            match self.identities.get(site) {
                Some(key) if !key.is_empty() => entries.push((site.to_string(), key.clone())),
                _ => return Err(format!("site {site} has no identity key to sign its round keys")),
            }
        }
        let round_id = secure::round_id(&self.job, round);
        let params = secure::params(&self.spec, entries.len(), self.model.len(), &round_id).map_err(|e| e.to_string())?;
        let setup = RoundSetup::new(round_id, entries, params).map_err(|e| e.to_string())?;
        let server = fedcare_secagg::Server::new(&setup).map_err(|e| e.to_string())?;
        let index = setup
            .sites
            .iter()
            .filter_map(|e| SiteId::parse(&e.name).ok().map(|s| (s, e.index)))
            .collect();
        let total_examples = self.participants.iter().filter_map(|s| self.train_examples.get(s)).fold(0u64, |a, b| a.saturating_add(*b));
        Ok(SecureRound {
            server,
            setup: Arc::new(SecAggRound { setup, total_examples }),
            step: SecStep::Keys,
            index,
            weights: BTreeMap::new(),
        })
    }

    fn start_stats(&mut self, now_ms: u64) {
        let width = self.spec.n_features();
        self.stage = Stage::Stats { sums: FeatureSums::zero(width), reported: 0 };
        self.send_to_participants(|_| TaskKind::Stats, now_ms);
    }

    fn start_round(&mut self, round: u32, now_ms: u64) {
        let back = std::mem::take(&mut self.rejoined);
        self.participants.extend(back);
        let quorum = self.spec.round_quorum() as usize;
        if self.participants.len() < quorum {
            return self.fail(format!(
                "round {round}: only {} sites remain, the job needs {quorum}",
                self.participants.len()
            ));
        }
        let secure = if self.spec.secure_aggregation.enabled {
            match self.secure_round(round) {
                Ok(s) => Some(Box::new(s)),
                Err(e) => return self.fail(format!("round {round}: cannot set up secure aggregation: {e}")),
            }
        } else {
            None
        };
        let secagg = secure.as_ref().map(|s| s.setup.clone());
        self.stage = Stage::Training { round, agg: FedAvg::new(self.model.len()), sites: Vec::new(), started_ms: now_ms, secure };
        let task = |s: &Self| TaskKind::Train { round, model: s.model_vector(), standardization: s.std(), secagg: secagg.clone() };
        self.send_to_participants(task, now_ms);
    }

    fn finish(&mut self) {
        self.stage = Stage::Over;
        let outcome = JobOutcome {
            model: self.model.as_ref().clone(),
            standardization: self.std().as_ref().clone(),
            rounds: self.history.clone(),
            final_eval: std::mem::take(&mut self.last_eval),
            train_examples: self.train_examples.clone(),
        };
        self.end_tasks(true, "job finished".into());
        self.actions.push_back(Action::Finished(Box::new(outcome)));
    }

    /// Ends the job as failed for a reason outside the protocol (e.g. the driver could not
    /// record something it must record). A no-op once the job is over.
    pub fn abort(&mut self, reason: String) {
        if !self.is_over() {
            self.fail(reason);
        }
    }

    fn fail(&mut self, reason: String) {
        self.stage = Stage::Over;
        self.outstanding.clear();
        // Work not yet handed out is withdrawn: a site must not start (and spend privacy
        // budget on) a round of a job that has already failed.
        self.actions.retain(|a| !matches!(a, Action::Send { .. }));
        self.end_tasks(false, reason.clone());
        self.actions.push_back(Action::Failed(reason));
    }

    fn end_tasks(&mut self, success: bool, reason: String) {
        let sites: Vec<SiteId> = self.offered.iter().cloned().collect();
        for site in sites {
            let task = Task { job: self.job.clone(), id: self.task_id(), kind: TaskKind::End { success, reason: reason.clone() } };
            self.actions.push_back(Action::Send { site, task });
        }
    }

    fn model_vector(&self) -> ModelVector {
        ModelVector { layout_digest: self.layout_digest.clone(), values: self.model.clone() }
    }

    fn std(&self) -> Arc<Standardization> {
        // Rounds start only after the statistics stage set it.
        self.standardization.clone().expect("standardization is set before any round starts")
    }

    fn send_to_participants(&mut self, kind: impl Fn(&Self) -> TaskKind, now_ms: u64) {
        let deadline = now_ms.saturating_add(self.spec.deadlines.stage_secs.saturating_mul(1000));
        let sites: Vec<SiteId> = self.participants.iter().cloned().collect();
        for site in sites {
            let k = kind(self);
            self.send(&site, k, deadline);
        }
        self.progress();
    }

    fn task_id(&mut self) -> TaskId {
        let id = TaskId(self.next_task);
        self.next_task += 1;
        id
    }

    fn send(&mut self, site: &SiteId, kind: TaskKind, deadline_ms: u64) {
        let id = self.task_id();
        self.outstanding.insert(site.clone(), (id, deadline_ms));
        self.actions.push_back(Action::Send { site: site.clone(), task: Task { job: self.job.clone(), id, kind } });
    }

    fn event(&mut self, e: JobEvent) {
        self.actions.push_back(Action::Event(e));
    }
}
