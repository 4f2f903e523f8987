//! The work a site does on its own records. Everything here runs inside the site; what it
//! returns is a [`ReplyKind`], the only shape of data that may leave.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fedcare_data::{Dataset, FeatureSums, SiteDataConfig, Standardization};
use fedcare_job::{JobId, JobSpec, PrivacyPlan};
use fedcare_models::{FlatParams, metrics};
use fedcare_policy::{Approvals, Policy, Verdict};
use fedcare_protocol::messages::{EvalCounts, EvalReport, ModelUpdate};
use fedcare_protocol::{ReplyKind, SiteId, Work};
use fedcare_secagg::{AdvertiseKeys, EncryptedShare, Encoder, IdentityKey, UnmaskRequest};
use tracing::{info, warn};

use crate::config::{ConfigError, SiteSection};
use crate::private::{self, Budget};
use zeroize::Zeroizing;

/// A job's data at this site: the split, and the same split standardised with the
/// federation-wide scaling once the coordinator sent it.
struct JobData {
    train: Dataset,
    test: Dataset,
    scaled: Option<(Arc<Standardization>, Dataset, Dataset)>,
    /// The current round's secure aggregation client and the quantised update it will mask.
    /// The update is wiped from memory when dropped.
    secure: Option<(fedcare_secagg::Client, Zeroizing<Vec<u64>>)>,
    /// The job's privacy plan as this site computed it (None: the job asks for no DP).
    plan: Option<Arc<PrivacyPlan>>,
    /// This site's FedAvg weight under a privacy plan: the count it released in the
    /// statistics step (noised), never the exact row count.
    weight: Option<u64>,
}

impl JobData {
    /// The standardised split for `std`, computed once per job (the scaling is fixed after the
    /// statistics step).
    fn scaled(&mut self, std: &Arc<Standardization>) -> Result<(&Dataset, &Dataset), String> {
        let fresh = !matches!(&self.scaled, Some((s, _, _)) if s == std);
        if fresh {
            let (mut train, mut test) = (self.train.clone(), self.test.clone());
            std.apply(&mut train).map_err(|e| e.to_string())?;
            std.apply(&mut test).map_err(|e| e.to_string())?;
            self.scaled = Some((std.clone(), train, test));
        }
        match &self.scaled {
            Some((_, train, test)) => Ok((train, test)),
            None => Err("standardisation missing".into()),
        }
    }
}

/// The site's policy file (`[site].policy`); manual approvals live in `approvals/` beside it.
///
/// Only the path is kept: the file is read again at every offer, so what the privacy officer
/// saved last is what the next job is judged by.
pub(crate) struct SitePolicy {
    path: PathBuf,
}

/// How often a job waiting for manual approval looks at the approvals store.
const APPROVAL_POLL: Duration = Duration::from_millis(500);
/// The reason given to the coordinator for a job not approved before the offer's deadline.
pub(crate) const AWAITING_APPROVAL: &str = "awaiting approval by the site's administrator";
/// What the audit log says approved a job when the site has no policy.
const NO_POLICY_APPROVAL: &str = "automatic: this site's data maps onto the job's schema";

impl SitePolicy {
    /// The policy `[site].policy` names (relative to `base_dir`), read once now so that a
    /// missing or invalid policy stops the agent at start rather than at the first offer.
    /// Without one, logs a warning that no policy restricts jobs and returns `None`.
    pub(crate) fn from_config(site: &SiteSection, base_dir: &Path) -> Result<Option<SitePolicy>, ConfigError> {
        let Some(relative) = &site.policy else {
            warn!(site = %site.id, "no site policy configured ([site].policy): no policy restricts which jobs this site joins");
            return Ok(None);
        };
        let path = base_dir.join(relative);
        let invalid = |message: String| ConfigError::Invalid { field: "site.policy".into(), message };
        let policy = Policy::load(&path).map_err(|e| invalid(e.to_string()))?;
        let approval = match policy.approval() {
            fedcare_policy::Approval::Automatic => "automatic",
            fedcare_policy::Approval::Manual => {
                let dir = Approvals::beside(&path);
                let approvals = Approvals::open(&dir).map_err(|e| invalid(format!("the approvals store: {e}")))?;
                let pending = approvals.pending().map_err(|e| invalid(format!("the approvals store: {e}")))?;
                if !pending.is_empty() {
                    info!(site = %site.id, pending = pending.len(), "jobs are waiting for approval (`site-agent jobs list`)");
                }
                "manual"
            }
        };
        info!(site = %site.id, policy = %path.display(), approval, "every job offer is checked against this site's policy");
        Ok(Some(SitePolicy { path }))
    }
}

/// What the policy says about an offer that breaks none of its rules.
enum Admission {
    /// Join; the text says who or what approved the job (for the audit log).
    Approved(String),
    /// Join only once the site's admin approves the job in this store.
    AwaitApproval(Approvals),
}

pub(crate) struct Worker {
    /// The site's privacy ledger and caps; without one, privacy jobs are refused.
    budget: Option<Arc<Budget>>,
    /// The site's policy; without one, every job the data and the budget can serve is joined.
    policy: Option<SitePolicy>,
    /// Who or what approved each job this site accepted, until the audit log has it.
    approved_by: BTreeMap<JobId, String>,
    site: SiteId,
    data: SiteDataConfig,
    base_dir: PathBuf,
    jobs: BTreeMap<JobId, JobData>,
    identity: Arc<IdentityKey>,
    /// The members of every secure round this site has joined (job, round). A round asked
    /// again (a coordinator resuming after a restart) is joined only with the same members:
    /// two sums of the same updates over different sets would reveal their difference.
    secure_rounds: BTreeMap<(JobId, u32), Vec<String>>,
}

impl Worker {
    pub(crate) fn new(
        site: SiteId,
        data: SiteDataConfig,
        base_dir: PathBuf,
        identity: IdentityKey,
        budget: Option<Arc<Budget>>,
        policy: Option<SitePolicy>,
    ) -> Worker {
        Worker {
            budget,
            policy,
            approved_by: BTreeMap::new(),
            site,
            data,
            base_dir,
            jobs: BTreeMap::new(),
            identity: Arc::new(identity),
            secure_rounds: BTreeMap::new(),
        }
    }

    /// Who or what approved a job this site has just accepted, for the audit log's
    /// `JobApproved` entry: `automatic: policy`, `<admin> (manual)`, or, without a policy, that
    /// the site's data maps onto the job.
    pub(crate) fn approved_by(&mut self, job: &JobId) -> String {
        self.approved_by.remove(job).unwrap_or_else(|| NO_POLICY_APPROVAL.to_owned())
    }

    /// The privacy spend recorded in the ledger for this job's release of `round` (None: the
    /// statistics): the job's epsilon after it, delta and unit.
    pub(crate) fn spend_recorded(&self, job: &JobId, round: Option<u32>) -> Option<(f64, f64, &'static str)> {
        self.budget.as_ref()?.recorded(job, round)
    }

    /// Performs accepted work; `None` means there is nothing to reply (the job ended).
    pub(crate) async fn perform(&mut self, work: Work) -> Option<ReplyKind> {
        match work {
            Work::Decide { job, spec, .. } => Some(self.decide(job, spec).await),
            Work::ComputeStats { job, spec, .. } => {
                let budget = self.budget.clone();
                let result = self.blocking(&job.clone(), move |d| stats(d, &job, &spec, budget.as_deref())).await;
                Some(result.unwrap_or_else(|reason| ReplyKind::Failed { reason }))
            }
            Work::Train { job, spec, round, model, standardization, secagg: Some((sa, index)), .. } => {
                let members: Vec<String> = sa.setup.sites.iter().map(|e| e.name.clone()).collect();
                match self.secure_rounds.get(&(job.clone(), round)) {
                    Some(before) if *before != members => {
                        warn!(job = %job.short(), round, "round asked again with other members; refused");
                        return Some(ReplyKind::Failed {
                            reason: format!("round {round} was already run with other sites ({}); a second sum over a different set is refused", before.join(", ")),
                        });
                    }
                    _ => {
                        self.secure_rounds.insert((job.clone(), round), members);
                    }
                }
                let salt = fedcare_job::site_salt(self.site.as_str());
                let identity = self.identity.clone();
                let budget = self.budget.clone();
                let result = self
                    .blocking(&job.clone(), move |d| {
                        // The plain update never leaves this closure; it and its weighted and
                        // quantised forms are wiped from memory when dropped.
                        let update = round_update(d, &job, &spec, round, &model, &standardization, salt, budget.as_deref())?;
                        let delta = Zeroizing::new(update.delta);
                        let input = if fedcare_protocol::secure::distributed_dp(&spec) {
                            let plan = d.plan.clone().ok_or("no privacy plan")?;
                            Zeroizing::new(ddg_input(&job, &spec, &plan, round, &sa.setup, &delta, budget.as_deref())?)
                        } else {
                            // Weight by this site's share of the job's examples and append the
                            // loss, so the unmasked sum is exactly FedAvg's numerator.
                            let w = update.num_examples as f64 / sa.total_examples as f64;
                            let mut v: Zeroizing<Vec<f32>> = Zeroizing::new(delta.iter().map(|x| (f64::from(*x) * w) as f32).collect());
                            v.push((update.train_loss * w) as f32);
                            let quantizer = fedcare_protocol::secure::quantizer(&spec, sa.setup.n()).map_err(|e| e.to_string())?;
                            Zeroizing::new(quantizer.encode(&v))
                        };
                        let (client, keys) = fedcare_secagg::Client::new(&sa.setup, index, &identity, &mut fedcare_secagg::SystemRng::new())
                            .map_err(|e| format!("secure aggregation setup refused: {e}"))?;
                        d.secure = Some((client, input));
                        Ok((keys.to_bytes(), update.num_examples, update.train_loss))
                    })
                    .await;
                Some(match result {
                    Ok((keys, num_examples, loss)) => {
                        info!(round, loss, "trained locally; update held back for masking");
                        ReplyKind::Keys { round, keys, num_examples }
                    }
                    Err(reason) => ReplyKind::Failed { reason },
                })
            }
            Work::ShareKeys { job, round, keys, .. } => Some(self.secure_step(&job, move |client, _| {
                let list = keys.iter().map(|b| AdvertiseKeys::from_bytes(b)).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
                let shares = client.share_keys(&list).map_err(|e| e.to_string())?;
                Ok(ReplyKind::Shares { round, shares: shares.iter().map(EncryptedShare::to_bytes).collect() })
            }).await),
            Work::Mask { job, round, shares, .. } => Some(self.secure_step(&job, move |client, input| {
                let shares = shares.iter().map(|b| EncryptedShare::from_bytes(b)).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
                let masked = client.masked_input_bytes(&shares, input).map_err(|e| e.to_string())?;
                Ok(ReplyKind::Masked { round, masked })
            }).await),
            Work::Unmask { job, round, request, .. } => Some(self.secure_step(&job, move |client, _| {
                let request = UnmaskRequest::from_bytes(&request).map_err(|e| e.to_string())?;
                let response = client.unmask(&request).map_err(|e| e.to_string())?;
                Ok(ReplyKind::Unmasked { round, response: response.to_bytes() })
            }).await),
            Work::Train { job, spec, round, model, standardization, secagg: None, .. } => {
                let salt = fedcare_job::site_salt(self.site.as_str());
                let budget = self.budget.clone();
                let result = self
                    .blocking(&job.clone(), move |d| round_update(d, &job, &spec, round, &model, &standardization, salt, budget.as_deref()))
                    .await;
                Some(match result {
                    Ok(update) => {
                        info!(round, loss = update.train_loss, "trained locally");
                        ReplyKind::Update(update)
                    }
                    Err(reason) => ReplyKind::Failed { reason },
                })
            }
            Work::Evaluate { job, spec, round, model, standardization, .. } => {
                let result = self
                    .blocking(&job, move |d| {
                        let (_, test) = d.scaled(&standardization)?;
                        let layout = fedcare_models::layout(&spec.model, spec.n_features());
                        let params = FlatParams::new(layout, model.values.as_ref().clone()).map_err(|e| e.to_string())?;
                        let probs = fedcare_models::predict(&spec.model, &params, test.features(), test.n_features())
                            .map_err(|e| format!("prediction failed: {e}"))?;
                        let m = metrics::evaluate(&probs, test.labels());
                        let auc = m.auc;
                        Ok(EvalReport { round, counts: EvalCounts::from(m), auc })
                    })
                    .await;
                Some(match result {
                    Ok(report) => {
                        info!(
                            job = %job.short(),
                            round,
                            test_examples = report.counts.n,
                            accuracy = report.counts.accuracy(),
                            auc = ?report.auc,
                            "evaluated the round's global model on this site's test split (counts sent, no record)"
                        );
                        ReplyKind::Evaluation(report)
                    }
                    Err(reason) => ReplyKind::Failed { reason },
                })
            }
            Work::Ended { job, success, reason } => {
                self.jobs.remove(&job);
                info!(job = %job.short(), success, %reason, "job ended; its data is released");
                None
            }
        }
    }

    /// Decides whether to join a job, in this order, each step before the site's data is read:
    /// the site's policy (a job that breaks a rule is refused, with every rule it breaks as
    /// the reason), the site's privacy budget, and with manual approval the admin's approval
    /// (waited for until shortly before the offer's deadline). Only then is the site's file
    /// loaded and split for the job's schema; it is refused if it does not map.
    async fn decide(&mut self, job: JobId, spec: Arc<JobSpec>) -> ReplyKind {
        let admission = match self.admit(&job, &spec) {
            Ok(a) => a,
            Err(reason) => return ReplyKind::Decision { accept: false, reason },
        };
        // The site's own view of what the job will spend, checked against its own caps first:
        // a job over budget is refused before the data is even read.
        let plan = match spec.privacy_plan() {
            Ok(plan) => plan.map(Arc::new),
            Err(e) => return ReplyKind::Decision { accept: false, reason: format!("the job's privacy settings are unusable: {e}") },
        };
        if let Some(plan) = &plan {
            let Some(budget) = &self.budget else {
                warn!(job = %job.short(), "job declined: it asks for differential privacy but this site has no privacy ledger ([privacy] in its config)");
                return ReplyKind::Decision { accept: false, reason: "this site has no privacy ledger configured, so it cannot enforce a budget".into() };
            };
            if let Err(reason) = budget.check_plan(&job, plan) {
                warn!(job = %job.short(), %reason, "job declined");
                return ReplyKind::Decision { accept: false, reason };
            }
            info!(job = %job.short(), plan = %plan.summary(), "the job's privacy plan fits this site's budget");
        }
        let approved_by = match admission {
            Admission::Approved(by) => by,
            Admission::AwaitApproval(approvals) => match await_approval(&job, &spec, &approvals).await {
                Ok(by) => by,
                Err(reason) => return ReplyKind::Decision { accept: false, reason },
            },
        };
        let (cfg, base) = (self.data.clone(), self.base_dir.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            let (ds, report) = fedcare_data::load(&spec.schema, &cfg, &base)?;
            let (train, test) = fedcare_data::split(&ds, &spec.schema.split)?;
            Ok::<_, fedcare_data::DataError>((train, test, report))
        })
        .await;
        match loaded {
            Ok(Ok((train, test, report))) => {
                info!(
                    job = %job.short(),
                    rows_read = report.rows_read,
                    rows_dropped_missing = report.rows_dropped_missing,
                    train = train.len(),
                    test = test.len(),
                    "job accepted: data mapped onto the job's schema"
                );
                self.approved_by.insert(job.clone(), approved_by);
                self.jobs.insert(job, JobData { train, test, scaled: None, secure: None, plan, weight: None });
                ReplyKind::Decision { accept: true, reason: String::new() }
            }
            Ok(Err(e)) => {
                // The full error (file, line, column, maybe a cell's text) stays in the site's
                // log; the coordinator learns only the category.
                warn!(job = %job.short(), error = %e, "job declined: this site's data does not map onto the job's schema");
                ReplyKind::Decision { accept: false, reason: "the site's data does not match the job's schema (details in the site's log)".into() }
            }
            Err(e) => ReplyKind::Decision { accept: false, reason: format!("the site could not load its data: {e}") },
        }
    }

    /// The site's policy on an offer: refused (the reason, every rule the job breaks, is safe
    /// to send), approved at once, or waiting for the admin. Reads the policy file (and with
    /// manual approval the approvals store), never the site's data. Fails closed: a policy or
    /// store that cannot be read refuses the job.
    fn admit(&self, job: &JobId, spec: &JobSpec) -> Result<Admission, String> {
        let Some(site_policy) = &self.policy else { return Ok(Admission::Approved(NO_POLICY_APPROVAL.to_owned())) };
        let policy = Policy::load(&site_policy.path).map_err(|e| {
            warn!(job = %job.short(), error = %e, "job declined: this site's policy file cannot be used");
            "this site's policy file cannot be used (details in the site's log)".to_owned()
        })?;
        let evaluation = policy.evaluate(spec);
        match evaluation.verdict() {
            Verdict::Refuse(violations) => {
                let reason = evaluation.refusal_reason().unwrap_or_else(|| "this site's policy refuses the job".to_owned());
                let rules: Vec<&str> = violations.iter().map(|v| v.category()).collect();
                warn!(job = %job.short(), name = %spec.name, rules = %rules.join(","), %reason, "job declined by this site's policy; its data was not read");
                Err(reason)
            }
            Verdict::Approve => {
                info!(job = %job.short(), name = %spec.name, "the job passes this site's policy (automatic approval)");
                Ok(Admission::Approved("automatic: policy".to_owned()))
            }
            Verdict::AwaitApproval => {
                let approvals = Approvals::open(Approvals::beside(&site_policy.path)).map_err(store_error(job))?;
                match approvals.approval(job.as_str()).map_err(store_error(job))? {
                    Some(record) => {
                        info!(job = %job.short(), name = %spec.name, by = %record.approved_by, "the job passes this site's policy and was approved");
                        Ok(Admission::Approved(format!("{} (manual)", record.approved_by)))
                    }
                    None => Ok(Admission::AwaitApproval(approvals)),
                }
            }
        }
    }

    /// One secure aggregation step with the round's client (on a blocking thread: expanding
    /// masks is real work). The client is dropped once it has answered the unmasking request.
    async fn secure_step(
        &mut self,
        job: &JobId,
        f: impl FnOnce(&mut fedcare_secagg::Client, &[u64]) -> Result<ReplyKind, String> + Send + 'static,
    ) -> ReplyKind {
        let result = self
            .blocking(job, move |d| {
                let (client, input) = d.secure.as_mut().ok_or("no secure aggregation round is in progress")?;
                let reply = f(client, input)?;
                if matches!(reply, ReplyKind::Unmasked { .. }) {
                    d.secure = None;
                }
                Ok(reply)
            })
            .await;
        result.unwrap_or_else(|reason| ReplyKind::Failed { reason: format!("secure aggregation: {reason}") })
    }

    /// Runs `f` on the job's data on a blocking thread (training must not stall the runtime).
    async fn blocking<T: Send + 'static>(
        &mut self,
        job: &JobId,
        f: impl FnOnce(&mut JobData) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let Some(mut data) = self.jobs.remove(job) else {
            return Err("the site holds no data for this job".into());
        };
        let joined = tokio::task::spawn_blocking(move || {
            let r = f(&mut data);
            (data, r)
        })
        .await;
        match joined {
            Ok((data, r)) => {
                self.jobs.insert(job.clone(), data);
                r
            }
            Err(e) => Err(format!("local work crashed: {e}")),
        }
    }
}

/// Waits for the site's admin to approve a job that passes the policy: records it as pending
/// (with its spec, for `site-agent jobs show`), says once in the log how to approve it, and
/// looks at the approvals store every [`APPROVAL_POLL`] until it is approved (`Ok`, naming the
/// approver) or the offer's deadline is near (`Err`, [`AWAITING_APPROVAL`]). A job declined
/// for want of approval stays pending: approved later, it is joined when offered again.
///
/// This site's tasks are handled in order, so its next task waits too; the wait ends before
/// the coordinator's offer deadline, so the refusal still reaches it.
async fn await_approval(job: &JobId, spec: &JobSpec, approvals: &Approvals) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + approval_wait(spec.deadlines.offer_secs);
    // The spec as text for the admin's review. Its id is checked against the job's hash by the
    // store, so the review is of exactly the job being approved.
    let spec_toml = toml::to_string(spec).map_err(|e| {
        warn!(job = %job.short(), error = %e, "job declined: its spec cannot be recorded for review");
        "the job cannot be recorded for the site's administrator to review (details in the site's log)".to_owned()
    })?;
    approvals.record_pending(job.as_str(), &spec_toml, now_ms()).map_err(store_error(job))?;
    info!(
        job = %job.short(),
        name = %spec.name,
        "job {} ({}) waits for approval: review it with `site-agent jobs show {job}` and run `site-agent jobs approve {job}` (with --config and this site's config)",
        spec.name,
        job.short(),
    );
    loop {
        if let Some(record) = approvals.approval(job.as_str()).map_err(store_error(job))? {
            info!(job = %job.short(), by = %record.approved_by, "job approved by the site's administrator");
            return Ok(format!("{} (manual)", record.approved_by));
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            warn!(
                job = %job.short(),
                "job declined: not approved before the offer's deadline; it stays pending, and if approved it is joined when offered again"
            );
            return Err(AWAITING_APPROVAL.to_owned());
        }
        tokio::time::sleep(APPROVAL_POLL.min(deadline - now)).await;
    }
}

/// How long a job may wait for approval: the offer's deadline less a margin (a quarter, at most
/// two seconds), since the coordinator counts from when it sent the offer and the refusal must
/// reach it in time.
fn approval_wait(offer_secs: u64) -> Duration {
    let total = Duration::from_secs(offer_secs);
    total - (total / 4).min(Duration::from_secs(2))
}

/// Logs an approvals-store failure in full; the coordinator learns only that the site could not
/// check approvals (fail closed: the job is declined).
fn store_error(job: &JobId) -> impl FnOnce(fedcare_policy::ApprovalError) -> String + '_ {
    move |e| {
        warn!(job = %job.short(), error = %e, "job declined: this site's approvals store cannot be used");
        "this site's approvals store cannot be used (details in the site's log)".to_owned()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The statistics step: exact sums without a privacy plan; otherwise the noised release,
/// recorded in the ledger before it is returned (or the one recorded before a crash).
fn stats(d: &mut JobData, job: &JobId, spec: &JobSpec, budget: Option<&Budget>) -> Result<ReplyKind, String> {
    let Some(plan) = d.plan.clone() else { return Ok(ReplyKind::Stats(FeatureSums::of(&d.train))) };
    let budget = budget.ok_or("no privacy ledger")?;
    let sums = match budget.earlier_release(job, None, "stats")? {
        Some(bytes) => serde_json::from_slice::<FeatureSums>(&bytes).map_err(|e| format!("the ledger's stored statistics do not parse: {e}"))?,
        None => {
            let mut rng = private::noise_rng()?;
            let (sums, _) = private::stats_release(&d.train, spec, &plan, &mut rng)?;
            let bytes = serde_json::to_vec(&sums).map_err(|e| e.to_string())?;
            if let Some(charge) = &plan.stats {
                budget.commit(job, None, "stats", &plan, charge.clone(), &bytes)?;
            }
            sums
        }
    };
    d.weight = Some(sums.count.first().copied().unwrap_or(1).max(1));
    Ok(ReplyKind::Stats(sums))
}

/// This round's update: plain local training without a privacy plan; DP-SGD with the round's
/// spend recorded before the update is returned under record-level privacy.
#[allow(clippy::too_many_arguments)]
fn round_update(
    d: &mut JobData,
    job: &JobId,
    spec: &JobSpec,
    round: u32,
    model: &fedcare_protocol::ModelVector,
    standardization: &Arc<Standardization>,
    salt: u64,
    budget: Option<&Budget>,
) -> Result<ModelUpdate, String> {
    let Some(plan) = d.plan.clone() else { return train_locally(d, spec, round, model, standardization, salt) };
    let budget = budget.ok_or("no privacy ledger")?;
    let weight = d.weight.ok_or("the statistics step has not run for this job")?;
    match plan.unit {
        fedcare_privacy::Unit::Record => {
            let delta = match budget.earlier_release(job, Some(round), "train")? {
                Some(bytes) => private::f32s_from(&bytes)?,
                None => {
                    let (train, _) = d.scaled(standardization)?;
                    let layout = fedcare_models::layout(&spec.model, spec.n_features());
                    let start = FlatParams::new(layout, model.values.as_ref().clone()).map_err(|e| e.to_string())?;
                    let cfg = fedcare_models::DpSgdConfig {
                        local_epochs: spec.training.local_epochs,
                        sampling_rate: plan.sampling_rate,
                        // The released count, not the true one: the step size must not depend
                        // on the data except through a private release.
                        normalizer: (plan.sampling_rate * weight as f64).max(1.0),
                        learning_rate: spec.training.learning_rate,
                        l2_clip: plan.clip_norm,
                        noise_multiplier: plan.noise_multiplier,
                    };
                    let mut rng = private::noise_rng()?;
                    let out = fedcare_models::train_dp(&spec.model, &start, train.features(), train.n_features(), train.labels(), &cfg, &mut rng)
                        .map_err(|e| format!("local DP-SGD failed: {e}"))?;
                    let delta: Vec<f32> = out.params.values.iter().zip(&start.values).map(|(a, b)| a - b).collect();
                    budget.commit(job, Some(round), "train", &plan, plan.per_round.clone(), &private::f32_bytes(&delta))?;
                    info!(round, steps = out.steps, local_loss = out.mean_loss, "DP-SGD round trained; spend recorded before sending");
                    delta
                }
            };
            if delta.len() != model.values.len() {
                return Err(format!("the ledger's stored update has {} values, the model {}", delta.len(), model.values.len()));
            }
            // The training loss is computed on records and is not privatised: it is not sent.
            Ok(ModelUpdate { round, num_examples: weight, delta, train_loss: 0.0 })
        }
        fedcare_privacy::Unit::Site if fedcare_protocol::secure::central_dp(spec) => {
            // Central mechanism: the coordinator adds the noise; the site clips its update and
            // records the round's spend as it computes it (trusting the coordinator to noise).
            let delta = match budget.earlier_release(job, Some(round), "train")? {
                Some(bytes) => private::f32s_from(&bytes)?,
                None => {
                    let mut delta = train_locally(d, spec, round, model, standardization, salt)?.delta;
                    clip_l2(&mut delta, plan.clip_norm);
                    budget.commit(job, Some(round), "train", &plan, plan.per_round.clone(), &private::f32_bytes(&delta))?;
                    delta
                }
            };
            Ok(ModelUpdate { round, num_examples: weight, delta, train_loss: 0.0 })
        }
        fedcare_privacy::Unit::Site => {
            // Distributed mechanism: the DDG encoder clips, rotates and noises the update when
            // it is encoded for secure aggregation (`ddg_input`), where the spend is recorded.
            let update = train_locally(d, spec, round, model, standardization, salt)?;
            Ok(ModelUpdate { train_loss: 0.0, num_examples: weight, ..update })
        }
    }
}

/// Scales `v` down to L2 norm at most `c`.
fn clip_l2(v: &mut [f32], c: f64) {
    let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if norm > c {
        let k = c / norm;
        v.iter_mut().for_each(|x| *x = (f64::from(*x) * k) as f32);
    }
}

/// Site-level privacy, distributed mechanism: the round's DDG encoding of the site's update
/// (clip, rotate, round, add this site's share of discrete Gaussian or Skellam noise, wrap), recorded in
/// the ledger with its charge before it is masked and sent; or the encoding recorded before a
/// crash.
fn ddg_input(
    job: &JobId,
    spec: &JobSpec,
    plan: &PrivacyPlan,
    round: u32,
    setup: &fedcare_secagg::RoundSetup,
    delta: &[f32],
    budget: Option<&Budget>,
) -> Result<Vec<u64>, String> {
    let budget = budget.ok_or("no privacy ledger")?;
    let len = delta.len();
    let enc = fedcare_protocol::secure::ddg_encoder(spec, plan, setup.n(), len, &setup.round_id)?;
    if let Some(bytes) = budget.earlier_release(job, Some(round), "train")? {
        let v = private::u64s_from(&bytes)?;
        if v.len() != enc.encoded_len() {
            return Err(format!("the ledger's stored encoding has {} values, the round needs {}", v.len(), enc.encoded_len()));
        }
        return Ok(v);
    }
    let mut x = delta.to_vec();
    // The loss coordinate is not released under privacy.
    x.push(0.0);
    let mut rng = private::noise_rng()?;
    let encoded = enc.encode(&x, &mut rng).map_err(|e| format!("DDG encoding failed: {e}"))?;
    let charge = enc.charge(spec.round_quorum() as usize);
    budget.commit(job, Some(round), "train", plan, charge, &private::u64_bytes(&encoded))?;
    Ok(encoded)
}

/// Local training from the global model; returns the update (local minus global).
fn train_locally(
    d: &mut JobData,
    spec: &JobSpec,
    round: u32,
    model: &fedcare_protocol::ModelVector,
    standardization: &Arc<Standardization>,
    salt: u64,
) -> Result<ModelUpdate, String> {
    let (train, _) = d.scaled(standardization)?;
    let layout = fedcare_models::layout(&spec.model, spec.n_features());
    let start = FlatParams::new(layout, model.values.as_ref().clone()).map_err(|e| e.to_string())?;
    let cfg = spec.train_config(round, salt);
    let out = fedcare_models::train(&spec.model, &start, train.features(), train.n_features(), train.labels(), &cfg)
        .map_err(|e| format!("local training failed: {e}"))?;
    let delta: Vec<f32> = out.params.values.iter().zip(&start.values).map(|(a, b)| a - b).collect();
    Ok(ModelUpdate { round, num_examples: train.len() as u64, delta, train_loss: out.mean_loss })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;

    const SITE: &str = include_str!("../../../examples/heart-disease/sites/cleveland.toml");
    const JOB: &str = include_str!("../../../examples/heart-disease/job.toml");
    const EXAMPLE_POLICY: &str = include_str!("../../../examples/heart-disease/sites/policy/policy.toml");
    /// The example job's columns: its ten features and its label.
    const COLUMNS: [&str; 11] = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak", "disease"];

    fn sites_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/heart-disease/sites")
    }

    /// The example job without differential privacy (so the site needs no ledger), edited.
    fn job(edit: impl FnOnce(&mut JobSpec)) -> (JobId, Arc<JobSpec>) {
        let mut spec = JobSpec::from_toml(JOB, "job.toml").unwrap();
        spec.privacy = fedcare_job::PrivacySpec::none();
        edit(&mut spec);
        spec.validate("edited job").unwrap();
        (spec.id(), Arc::new(spec))
    }

    /// A policy in `dir` allowing these columns, otherwise permissive.
    fn policy_file(dir: &Path, columns: &[&str], approval: &str) -> PathBuf {
        let columns: Vec<String> = columns.iter().map(|c| format!("{c:?}")).collect();
        let text = format!(
            "[policy]\nmodels = [\"logistic_regression\"]\ncolumns = [{}]\nrequire_differential_privacy = false\nallowed_units = [\"record\"]\n\
             max_epsilon_per_job = 10.0\nmax_delta = 1e-5\nrequire_secure_aggregation = false\nmin_other_sites = 0\napproval = \"{approval}\"\n",
            columns.join(", ")
        );
        let path = dir.join("policy.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// cleveland's worker under `policy`; with `missing_data` its data file does not exist, so
    /// any attempt to read it declines the job with a data error.
    fn worker(policy: Option<&Path>, missing_data: bool) -> Worker {
        let mut cfg = AgentConfig::parse(SITE, "cleveland.toml").unwrap();
        cfg.site.policy = policy.map(Path::to_path_buf);
        if missing_data {
            cfg.data.path = PathBuf::from("no-such-folder/never-read.data");
        }
        let base = sites_dir();
        let policy = SitePolicy::from_config(&cfg.site, &base).unwrap();
        let identity = IdentityKey::generate(&mut fedcare_secagg::SystemRng::new()).unwrap();
        Worker::new(SiteId::parse("cleveland").unwrap(), cfg.data, base, identity, None, policy)
    }

    fn decision(reply: ReplyKind) -> (bool, String) {
        match reply {
            ReplyKind::Decision { accept, reason } => (accept, reason),
            other => panic!("not a decision: {other:?}"),
        }
    }

    const DATA_ERROR: &str = "the site's data does not match the job's schema (details in the site's log)";

    #[tokio::test]
    async fn a_job_outside_the_policy_is_refused_before_the_data_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let (id, spec) = job(|_| {});
        // Control: a job the policy lets through does try to read the missing file.
        let open = policy_file(dir.path(), &COLUMNS, "automatic");
        let (accept, reason) = decision(worker(Some(&open), true).decide(id.clone(), spec.clone()).await);
        assert!(!accept);
        assert_eq!(reason, DATA_ERROR);

        // `chol` is not allowed: the refusal names it and the rule, and it is not a data error.
        let allowed: Vec<&str> = COLUMNS.iter().copied().filter(|c| *c != "chol").collect();
        let strict = policy_file(dir.path(), &allowed, "manual");
        let mut w = worker(Some(&strict), true);
        let (accept, reason) = decision(w.decide(id.clone(), spec.clone()).await);
        assert!(!accept);
        assert_eq!(reason, "this site's policy refuses the job: the job uses column `chol`, which this site's policy does not allow");
        assert!(w.jobs.is_empty());
        // A refused job is never put before the admin for approval.
        let approvals = Approvals::open(Approvals::beside(&strict)).unwrap();
        assert!(approvals.pending().unwrap().is_empty());

        // Every broken rule is named.
        let (id, spec) = job(|s| s.model = fedcare_models::ModelSpec::Mlp { hidden: vec![4] });
        let (_, reason) = decision(w.decide(id, spec).await);
        assert!(reason.contains("model `mlp`") && reason.contains("column `chol`") && reason.contains("; "), "{reason}");
    }

    #[tokio::test]
    async fn automatic_approval_joins_and_says_so_for_the_audit_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = policy_file(dir.path(), &COLUMNS, "automatic");
        let mut w = worker(Some(&path), false);
        let (id, spec) = job(|_| {});
        let (accept, reason) = decision(w.decide(id.clone(), spec).await);
        assert!(accept, "{reason}");
        assert_eq!(w.approved_by(&id), "automatic: policy");
        // Automatic approval keeps no approvals store.
        assert!(!Approvals::beside(&path).exists());

        let mut w = worker(None, false);
        let (accept, _) = decision(w.decide(id.clone(), job(|_| {}).1).await);
        assert!(accept);
        assert_eq!(w.approved_by(&id), NO_POLICY_APPROVAL);
    }

    #[tokio::test]
    async fn manual_approval_declines_at_the_deadline_and_keeps_the_job_pending() {
        let dir = tempfile::tempdir().unwrap();
        let path = policy_file(dir.path(), &COLUMNS, "manual");
        let (id, spec) = job(|s| s.deadlines.offer_secs = 1);
        let started = std::time::Instant::now();
        let (accept, reason) = decision(worker(Some(&path), true).decide(id.clone(), spec.clone()).await);
        let waited = started.elapsed();
        assert!(!accept);
        // Not a data error: the file was not read while waiting.
        assert_eq!(reason, AWAITING_APPROVAL);
        assert!(waited >= Duration::from_millis(700) && waited < Duration::from_millis(1000), "waited {waited:?} of a 1 s offer");

        let approvals = Approvals::open(Approvals::beside(&path)).unwrap();
        let pending = approvals.pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].job_hash, id);
        assert_eq!(&pending[0].spec, spec.as_ref(), "the admin reviews exactly the job offered");

        // Approved afterwards, the same job offered again is joined at once.
        approvals.approve(id.as_str(), "alice", 1).unwrap();
        let mut w = worker(Some(&path), false);
        let started = std::time::Instant::now();
        let (accept, reason) = decision(w.decide(id.clone(), spec).await);
        assert!(accept, "{reason}");
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(w.approved_by(&id), "alice (manual)");
    }

    #[tokio::test]
    async fn manual_approval_waits_until_the_admin_approves() {
        let dir = tempfile::tempdir().unwrap();
        let path = policy_file(dir.path(), &COLUMNS, "manual");
        let (id, spec) = job(|s| s.deadlines.offer_secs = 30);
        let store = Approvals::beside(&path);
        let hash = id.clone();
        let admin = std::thread::spawn(move || {
            let approvals = Approvals::open(store).unwrap();
            // The admin sees the job pending, then approves it by a prefix of its hash.
            for _ in 0..100 {
                if !approvals.pending().unwrap().is_empty() {
                    let resolved = approvals.resolve(&hash.as_str()[..10]).unwrap();
                    assert_eq!(resolved, hash);
                    approvals.approve(resolved.as_str(), "bob", 2).unwrap();
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!("the job was never recorded as pending");
        });
        let mut w = worker(Some(&path), false);
        let started = std::time::Instant::now();
        let (accept, reason) = decision(w.decide(id.clone(), spec).await);
        admin.join().unwrap();
        assert!(accept, "{reason}");
        assert!(started.elapsed() < Duration::from_secs(5), "joined {:?} after the approval", started.elapsed());
        assert_eq!(w.approved_by(&id), "bob (manual)");
        assert!(w.jobs.contains_key(&id));
    }

    #[test]
    fn the_example_job_passes_the_example_policy() {
        let policy = Policy::parse(EXAMPLE_POLICY, "policy.toml").unwrap();
        let spec = JobSpec::from_toml(JOB, "job.toml").unwrap();
        assert_eq!(policy.evaluate(&spec).verdict(), Verdict::Approve);
        assert_eq!(policy.approval(), fedcare_policy::Approval::Automatic, "the example runs unattended");
        // ... and it is a real policy: the same job without differential privacy or secure
        // aggregation is refused.
        let (_, weak) = job(|s| s.secure_aggregation.enabled = false);
        let categories: Vec<&str> = policy.evaluate(&weak).violations.iter().map(|v| v.category()).collect();
        assert_eq!(categories, ["differential_privacy", "secure_aggregation"]);
        // The commented line turns manual approval on.
        let manual = EXAMPLE_POLICY.replace("# approval = \"manual\"\napproval = \"automatic\"", "approval = \"manual\"");
        assert_eq!(Policy::parse(&manual, "policy.toml").unwrap().approval(), fedcare_policy::Approval::Manual);
    }

    #[test]
    fn a_job_waits_for_approval_until_shortly_before_the_offer_deadline() {
        assert_eq!(approval_wait(60), Duration::from_secs(58));
        assert_eq!(approval_wait(2), Duration::from_millis(1500));
        assert_eq!(approval_wait(1), Duration::from_millis(750));
    }

    #[test]
    fn a_missing_or_invalid_policy_stops_the_agent_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = AgentConfig::parse(SITE, "cleveland.toml").unwrap();
        cfg.site.policy = Some(dir.path().join("missing.toml"));
        let err = SitePolicy::from_config(&cfg.site, dir.path()).err().unwrap().to_string();
        assert!(err.contains("site.policy") && err.contains("missing.toml"), "{err}");
        std::fs::write(dir.path().join("bad.toml"), "[policy]\nmodels = [\"forest\"]\n").unwrap();
        cfg.site.policy = Some("bad.toml".into());
        let err = SitePolicy::from_config(&cfg.site, dir.path()).err().unwrap().to_string();
        assert!(err.contains("site.policy") && err.contains("bad.toml"), "{err}");
    }
}
