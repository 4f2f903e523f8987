//! The work a site does on its own records. Everything here runs inside the site; what it
//! returns is a [`ReplyKind`], the only shape of data that may leave.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use fedcare_data::{Dataset, FeatureSums, SiteDataConfig, Standardization};
use fedcare_job::{JobId, JobSpec, PrivacyPlan};
use fedcare_models::{FlatParams, metrics};
use fedcare_protocol::messages::{EvalCounts, EvalReport, ModelUpdate};
use fedcare_protocol::{ReplyKind, SiteId, Work};
use fedcare_secagg::{AdvertiseKeys, EncryptedShare, Encoder, IdentityKey, UnmaskRequest};
use tracing::{info, warn};

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

pub(crate) struct Worker {
    /// The site's privacy ledger and caps; without one, privacy jobs are refused.
    budget: Option<Arc<Budget>>,
    site: SiteId,
    data: SiteDataConfig,
    base_dir: PathBuf,
    jobs: BTreeMap<JobId, JobData>,
    identity: Arc<IdentityKey>,
}

impl Worker {
    pub(crate) fn new(site: SiteId, data: SiteDataConfig, base_dir: PathBuf, identity: IdentityKey, budget: Option<Arc<Budget>>) -> Worker {
        Worker { budget, site, data, base_dir, jobs: BTreeMap::new(), identity: Arc::new(identity) }
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
                        let counts = EvalCounts { n: m.n, loss_sum: m.loss_sum, correct: m.correct, pos_hist: m.pos_hist, neg_hist: m.neg_hist };
                        Ok(EvalReport { round, counts, auc: m.auc })
                    })
                    .await;
                Some(match result {
                    Ok(report) => ReplyKind::Evaluation(report),
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

    /// Loads and splits this site's file for the job's schema; refuses if it does not map.
    async fn decide(&mut self, job: JobId, spec: Arc<JobSpec>) -> ReplyKind {
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
/// (clip, rotate, round, add this site's share of discrete Gaussian noise, wrap), recorded in
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
    let enc = fedcare_protocol::secure::ddg_encoder(spec, setup.n(), len, &setup.round_id)?;
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
    let a = enc.accounting(spec.round_quorum() as usize);
    let charge = fedcare_privacy::Charge::DistributedDiscreteGaussian { sigma: a.sigma, n: a.n, dim: a.dim, l1: a.l1, l2: a.l2 };
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
