//! The site's side of the protocol, as a pure state machine.
//!
//! The agent's runtime hands every task it receives to [`SiteSession::on_task`], which checks
//! it against what this site agreed to and has already done, and returns the [`Work`] to
//! perform (or a typed refusal). When the work is done, [`SiteSession::reply`] records it and
//! builds the reply. The session never sees records: it only sees the job spec and the models
//! the coordinator sends.
//!
//! What it refuses, so that a confused or malicious coordinator cannot make a site act twice or
//! out of order: an offer whose id is not the hash of its spec; any task for a job the site has
//! not accepted; statistics twice; training for a round it already trained (a replay);
//! evaluation for a round it already evaluated; a model whose layout is not the job's.

use std::collections::BTreeMap;
use std::sync::Arc;

use fedcare_data::Standardization;
use fedcare_job::{JobId, JobSpec};

use crate::messages::{ModelVector, Reply, ReplyKind, SecAggRound, SiteId, Task, TaskId, TaskKind};
use crate::secure;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SiteError {
    #[error("job offer is not a valid job spec: {0}")]
    BadSpec(String),
    #[error("job offer claims id {claimed} but its spec hashes to {actual}")]
    IdMismatch { claimed: JobId, actual: JobId },
    #[error("job {0} was already offered to this site")]
    DuplicateOffer(JobId),
    #[error("task {task:?} is for job {job}, which this site has not accepted")]
    NotAccepted { job: JobId, task: TaskId },
    #[error("statistics for job {0} were already sent")]
    StatsTwice(JobId),
    #[error("job {0}: training requested before statistics")]
    NoStats(JobId),
    #[error("job {job}: round {round} is not after the last round handled ({last})")]
    StaleRound { job: JobId, round: u32, last: u32 },
    #[error("job {job}: round {round} is beyond the job's {rounds} rounds")]
    RoundOutOfRange { job: JobId, round: u32, rounds: u32 },
    #[error("job {job}: model layout {got} is not the job's layout {expected}")]
    WrongLayout { job: JobId, expected: String, got: String },
    #[error("job {job}: the model has {got} values, the job's model has {expected}")]
    WrongModelLength { job: JobId, expected: usize, got: usize },
    #[error("job {job}: the model's value {index} is not a finite number")]
    NonFiniteModel { job: JobId, index: usize },
    #[error("job {job}: standardisation has {got} features, the job has {expected}")]
    WrongStandardization { job: JobId, expected: usize, got: usize },
    #[error("no task {task:?} of job {job} is waiting for a reply")]
    NoSuchTask { job: JobId, task: TaskId },
    #[error("a {got} reply does not answer a {expected} task")]
    WrongReply { expected: &'static str, got: &'static str },
    #[error("job {job} requires secure aggregation; this site will not send a plain update")]
    SecAggRequired { job: JobId },
    #[error("job {job} does not use secure aggregation, but the task asks for it")]
    SecAggUnexpected { job: JobId },
    #[error("job {job}: refusing the secure aggregation setup: {reason}")]
    BadSecAggSetup { job: JobId, reason: String },
    #[error("job {job}: a {what} task for round {round} is out of order")]
    SecAggOutOfOrder { job: JobId, what: &'static str, round: u32 },
}

/// What the runtime must do for a task that passed the checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Decide whether to join: check the spec against the site's data mapping (and policy).
    Decide { job: JobId, task: TaskId, spec: Arc<JobSpec> },
    ComputeStats { job: JobId, task: TaskId, spec: Arc<JobSpec> },
    /// Train locally; with `secagg` (the setup and this site's index in it), answer with round
    /// keys and keep the update for the masked-input step.
    Train {
        job: JobId,
        task: TaskId,
        spec: Arc<JobSpec>,
        round: u32,
        model: ModelVector,
        standardization: Arc<Standardization>,
        secagg: Option<(Arc<SecAggRound>, u32)>,
    },
    ShareKeys { job: JobId, task: TaskId, round: u32, keys: Arc<Vec<Vec<u8>>> },
    Mask { job: JobId, task: TaskId, round: u32, shares: Vec<Vec<u8>> },
    Unmask { job: JobId, task: TaskId, round: u32, request: Vec<u8> },
    Evaluate { job: JobId, task: TaskId, spec: Arc<JobSpec>, round: u32, model: ModelVector, standardization: Arc<Standardization> },
    /// The job ended; the runtime may release the job's data.
    Ended { job: JobId, success: bool, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Membership {
    Deciding,
    Accepted,
    Declined,
    Ended,
}

/// The next secure aggregation exchange a site expects in its current round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecNext {
    ShareKeys,
    Mask,
    Unmask,
    Done,
}

#[derive(Debug)]
struct SiteJob {
    spec: Arc<JobSpec>,
    layout_digest: String,
    layout_len: usize,
    /// Round and next step of secure aggregation.
    secure: Option<(u32, SecNext)>,
    membership: Membership,
    stats_sent: bool,
    last_train_round: u32,
    last_eval_round: u32,
    /// The task awaiting this site's reply, with the kind of reply it needs.
    pending: Option<(TaskId, &'static str, u32)>,
}

/// A site's protocol state across the jobs it has been offered.
#[derive(Debug)]
pub struct SiteSession {
    site: SiteId,
    jobs: BTreeMap<JobId, SiteJob>,
    /// Computes a model's layout digest and length from a spec (injected so this crate needs no
    /// model code).
    layout: fn(&JobSpec) -> (String, usize),
    /// This site's long-term public key; a secure aggregation setup must list it under this
    /// site's name.
    identity: Vec<u8>,
}

impl SiteSession {
    pub fn new(site: SiteId, layout: fn(&JobSpec) -> (String, usize), identity: Vec<u8>) -> SiteSession {
        SiteSession { site, jobs: BTreeMap::new(), layout, identity }
    }

    /// Checks a round's secure aggregation setup against what the job implies; returns this
    /// site's index in it.
    fn check_setup(&self, job: &JobId, spec: &JobSpec, layout_len: usize, round: u32, sa: &SecAggRound) -> Result<u32, SiteError> {
        let bad = |reason: String| SiteError::BadSecAggSetup { job: job.clone(), reason };
        let setup = &sa.setup;
        setup.validate().map_err(|e| bad(e.to_string()))?;
        if setup.round_id != secure::round_id(job, round) {
            return Err(bad("its round id is not this job's round".into()));
        }
        let n = setup.n();
        if n < spec.round_quorum() as usize {
            return Err(bad(format!("{n} sites is fewer than the job's minimum of {}", spec.round_quorum())));
        }
        let expected = secure::params(spec, n, layout_len, &setup.round_id).map_err(|e| bad(e.to_string()))?;
        if setup.params != expected {
            return Err(bad(format!("its parameters {:?} are not the job's {:?}", setup.params, expected)));
        }
        let me = setup
            .sites
            .iter()
            .find(|e| e.identity_public_key == self.identity)
            .ok_or_else(|| bad("this site's identity key is not in it".into()))?;
        if me.name != self.site.as_str() {
            return Err(bad(format!("this site's key is listed under the name {:?}", me.name)));
        }
        if sa.total_examples == 0 {
            return Err(bad("it declares 0 training examples in the job".into()));
        }
        Ok(me.index)
    }

    pub fn site(&self) -> &SiteId {
        &self.site
    }

    /// Forgets every job that has not ended, as when the connection to the coordinator is
    /// replaced: a restarted coordinator resumes its jobs by offering them again, and a new
    /// offer of a job the site had joined must be decided afresh rather than refused as a
    /// duplicate. Replaying a round this way cannot extract anything new from the site: under
    /// differential privacy its ledger re-sends the release it recorded for that round, and
    /// without it the same round from the same model gives the same update.
    pub fn forget_unfinished(&mut self) {
        self.jobs.retain(|_, j| j.membership == Membership::Ended);
    }

    /// Checks a task and says what to do. On error nothing changes.
    pub fn on_task(&mut self, task: Task) -> Result<Work, SiteError> {
        let Task { job, id, kind } = task;
        if let TaskKind::Offer { spec_toml } = &kind {
            if self.jobs.contains_key(&job) {
                return Err(SiteError::DuplicateOffer(job));
            }
            let spec = JobSpec::from_toml(spec_toml, "job offer").map_err(|e| SiteError::BadSpec(e.to_string()))?;
            let actual = spec.id();
            if actual != job {
                return Err(SiteError::IdMismatch { claimed: job, actual });
            }
            let spec = Arc::new(spec);
            let (layout_digest, layout_len) = (self.layout)(&spec);
            self.jobs.insert(job.clone(), SiteJob {
                spec: spec.clone(),
                layout_digest,
                layout_len,
                secure: None,
                membership: Membership::Deciding,
                stats_sent: false,
                last_train_round: 0,
                last_eval_round: 0,
                pending: Some((id, "decision", 0)),
            });
            return Ok(Work::Decide { job, task: id, spec });
        }
        if let TaskKind::End { success, reason } = kind {
            // An end for an unknown job is harmless: there is nothing to release.
            if let Some(j) = self.jobs.get_mut(&job) {
                j.membership = Membership::Ended;
                j.pending = None;
            }
            return Ok(Work::Ended { job, success, reason });
        }
        // Check a secure aggregation setup before borrowing the job mutably.
        let setup_index = match (&kind, self.jobs.get(&job)) {
            (TaskKind::Train { round, secagg: Some(sa), .. }, Some(j)) if j.membership == Membership::Accepted => {
                if !j.spec.secure_aggregation.enabled {
                    return Err(SiteError::SecAggUnexpected { job });
                }
                Some(self.check_setup(&job, &j.spec, j.layout_len, *round, sa)?)
            }
            _ => None,
        };
        let Some(j) = self.jobs.get_mut(&job).filter(|j| j.membership == Membership::Accepted) else {
            return Err(SiteError::NotAccepted { job, task: id });
        };
        let spec = j.spec.clone();
        let width = spec.n_features();
        let check_model = |j: &SiteJob, job: &JobId, model: &ModelVector, std: &Standardization| {
            if model.layout_digest != j.layout_digest {
                return Err(SiteError::WrongLayout { job: job.clone(), expected: j.layout_digest.clone(), got: model.layout_digest.clone() });
            }
            if model.values.len() != j.layout_len {
                return Err(SiteError::WrongModelLength { job: job.clone(), expected: j.layout_len, got: model.values.len() });
            }
            if let Some(i) = model.values.iter().position(|v| !v.is_finite()) {
                return Err(SiteError::NonFiniteModel { job: job.clone(), index: i });
            }
            if std.mean.len() != width || std.std.len() != width {
                return Err(SiteError::WrongStandardization { job: job.clone(), expected: width, got: std.mean.len() });
            }
            Ok(())
        };
        match kind {
            TaskKind::Stats => {
                if j.stats_sent {
                    return Err(SiteError::StatsTwice(job));
                }
                j.pending = Some((id, "stats", 0));
                Ok(Work::ComputeStats { job, task: id, spec })
            }
            TaskKind::Train { round, model, standardization, secagg } => {
                if !j.stats_sent {
                    return Err(SiteError::NoStats(job));
                }
                if secagg.is_none() && j.spec.secure_aggregation.enabled {
                    return Err(SiteError::SecAggRequired { job });
                }
                if round <= j.last_train_round {
                    return Err(SiteError::StaleRound { job, round, last: j.last_train_round });
                }
                if round > spec.rounds {
                    return Err(SiteError::RoundOutOfRange { job, round, rounds: spec.rounds });
                }
                check_model(j, &job, &model, &standardization)?;
                let secagg = match (secagg, setup_index) {
                    (Some(sa), Some(index)) => Some((sa, index)),
                    _ => None,
                };
                let reply = if secagg.is_some() { "keys" } else { "update" };
                j.pending = Some((id, reply, round));
                Ok(Work::Train { job, task: id, spec, round, model, standardization, secagg })
            }
            TaskKind::ShareKeys { round, keys } => {
                Self::secure_step(j, &job, round, SecNext::ShareKeys, "share-keys")?;
                j.pending = Some((id, "shares", round));
                Ok(Work::ShareKeys { job, task: id, round, keys })
            }
            TaskKind::Mask { round, shares } => {
                Self::secure_step(j, &job, round, SecNext::Mask, "mask")?;
                j.pending = Some((id, "masked", round));
                Ok(Work::Mask { job, task: id, round, shares })
            }
            TaskKind::Unmask { round, request } => {
                Self::secure_step(j, &job, round, SecNext::Unmask, "unmask")?;
                j.pending = Some((id, "unmasked", round));
                Ok(Work::Unmask { job, task: id, round, request })
            }
            TaskKind::Eval { round, model, standardization } => {
                if !j.stats_sent {
                    return Err(SiteError::NoStats(job));
                }
                if round <= j.last_eval_round {
                    return Err(SiteError::StaleRound { job, round, last: j.last_eval_round });
                }
                if round > spec.rounds {
                    return Err(SiteError::RoundOutOfRange { job, round, rounds: spec.rounds });
                }
                check_model(j, &job, &model, &standardization)?;
                j.pending = Some((id, "evaluation", round));
                Ok(Work::Evaluate { job, task: id, spec, round, model, standardization })
            }
            TaskKind::Offer { .. } | TaskKind::End { .. } => unreachable!("offers and ends are handled above"),
        }
    }

    /// A secure aggregation task must be the next step of the round the site is in.
    fn secure_step(j: &SiteJob, job: &JobId, round: u32, next: SecNext, what: &'static str) -> Result<(), SiteError> {
        match j.secure {
            Some((r, n)) if r == round && n == next => Ok(()),
            _ => Err(SiteError::SecAggOutOfOrder { job: job.clone(), what, round }),
        }
    }

    /// Records finished work and builds its reply. A `Failed` reply answers any task.
    pub fn reply(&mut self, job: &JobId, task: TaskId, kind: ReplyKind) -> Result<Reply, SiteError> {
        let no_task = || SiteError::NoSuchTask { job: job.clone(), task };
        let j = self.jobs.get_mut(job).ok_or_else(no_task)?;
        let (pending_id, expected, round) = j.pending.ok_or_else(no_task)?;
        if pending_id != task {
            return Err(no_task());
        }
        let got = kind.name();
        if got != expected && got != "failed" {
            return Err(SiteError::WrongReply { expected, got });
        }
        match &kind {
            ReplyKind::Decision { accept, .. } => {
                j.membership = if *accept { Membership::Accepted } else { Membership::Declined };
            }
            ReplyKind::Stats(_) => j.stats_sent = true,
            ReplyKind::Update(_) => j.last_train_round = round,
            ReplyKind::Keys { .. } => {
                j.last_train_round = round;
                j.secure = Some((round, SecNext::ShareKeys));
            }
            ReplyKind::Shares { .. } => j.secure = Some((round, SecNext::Mask)),
            ReplyKind::Masked { .. } => j.secure = Some((round, SecNext::Unmask)),
            ReplyKind::Unmasked { .. } => j.secure = Some((round, SecNext::Done)),
            ReplyKind::Evaluation(_) => j.last_eval_round = round,
            ReplyKind::Failed { .. } => {
                if expected == "decision" {
                    j.membership = Membership::Declined;
                }
                // A failed round still counts as handled, so a replay of it is refused.
                if matches!(expected, "keys" | "shares" | "masked" | "unmasked") {
                    j.secure = Some((round, SecNext::Done));
                }
                match expected {
                    "update" | "keys" => j.last_train_round = round,
                    "evaluation" => j.last_eval_round = round,
                    _ => {}
                }
            }
        }
        j.pending = None;
        Ok(Reply { site: self.site.clone(), job: job.clone(), task, kind })
    }
}
