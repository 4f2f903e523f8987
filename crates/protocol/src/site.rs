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

use crate::messages::{ModelVector, Reply, ReplyKind, SiteId, Task, TaskId, TaskKind};

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
    #[error("job {job}: standardisation has {got} features, the job has {expected}")]
    WrongStandardization { job: JobId, expected: usize, got: usize },
    #[error("no task {task:?} of job {job} is waiting for a reply")]
    NoSuchTask { job: JobId, task: TaskId },
    #[error("a {got} reply does not answer a {expected} task")]
    WrongReply { expected: &'static str, got: &'static str },
}

/// What the runtime must do for a task that passed the checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Decide whether to join: check the spec against the site's data mapping (and policy).
    Decide { job: JobId, task: TaskId, spec: Arc<JobSpec> },
    ComputeStats { job: JobId, task: TaskId, spec: Arc<JobSpec> },
    Train { job: JobId, task: TaskId, spec: Arc<JobSpec>, round: u32, model: ModelVector, standardization: Arc<Standardization> },
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

#[derive(Debug)]
struct SiteJob {
    spec: Arc<JobSpec>,
    layout_digest: String,
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
    /// Computes a model layout digest from a spec (injected so this crate needs no model code).
    layout_digest: fn(&JobSpec) -> String,
}

impl SiteSession {
    pub fn new(site: SiteId, layout_digest: fn(&JobSpec) -> String) -> SiteSession {
        SiteSession { site, jobs: BTreeMap::new(), layout_digest }
    }

    pub fn site(&self) -> &SiteId {
        &self.site
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
            let layout_digest = (self.layout_digest)(&spec);
            self.jobs.insert(job.clone(), SiteJob {
                spec: spec.clone(),
                layout_digest,
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
        let Some(j) = self.jobs.get_mut(&job).filter(|j| j.membership == Membership::Accepted) else {
            return Err(SiteError::NotAccepted { job, task: id });
        };
        let spec = j.spec.clone();
        let width = spec.n_features();
        let check_model = |j: &SiteJob, job: &JobId, model: &ModelVector, std: &Standardization| {
            if model.layout_digest != j.layout_digest {
                return Err(SiteError::WrongLayout { job: job.clone(), expected: j.layout_digest.clone(), got: model.layout_digest.clone() });
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
            TaskKind::Train { round, model, standardization } => {
                if !j.stats_sent {
                    return Err(SiteError::NoStats(job));
                }
                if round <= j.last_train_round {
                    return Err(SiteError::StaleRound { job, round, last: j.last_train_round });
                }
                if round > spec.rounds {
                    return Err(SiteError::RoundOutOfRange { job, round, rounds: spec.rounds });
                }
                check_model(j, &job, &model, &standardization)?;
                j.pending = Some((id, "update", round));
                Ok(Work::Train { job, task: id, spec, round, model, standardization })
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
            TaskKind::Offer { .. } | TaskKind::End { .. } => unreachable!("handled above"),
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
            ReplyKind::Evaluation(_) => j.last_eval_round = round,
            ReplyKind::Failed { .. } => {
                if expected == "decision" {
                    j.membership = Membership::Declined;
                }
                // A failed round still counts as handled, so a replay of it is refused.
                match expected {
                    "update" => j.last_train_round = round,
                    "evaluation" => j.last_eval_round = round,
                    _ => {}
                }
            }
        }
        j.pending = None;
        Ok(Reply { site: self.site.clone(), job: job.clone(), task, kind })
    }
}
