//! The work a site does on its own records. Everything here runs inside the site; what it
//! returns is a [`ReplyKind`], the only shape of data that may leave.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use fedcare_data::{Dataset, FeatureSums, SiteDataConfig, Standardization};
use fedcare_job::{JobId, JobSpec};
use fedcare_models::{FlatParams, metrics};
use fedcare_protocol::messages::{EvalCounts, EvalReport, ModelUpdate};
use fedcare_protocol::{ReplyKind, SiteId, Work};
use fedcare_secagg::{AdvertiseKeys, EncryptedShare, Encoder, IdentityKey, UnmaskRequest};
use tracing::{info, warn};
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
    site: SiteId,
    data: SiteDataConfig,
    base_dir: PathBuf,
    jobs: BTreeMap<JobId, JobData>,
    identity: Arc<IdentityKey>,
}

impl Worker {
    pub(crate) fn new(site: SiteId, data: SiteDataConfig, base_dir: PathBuf, identity: IdentityKey) -> Worker {
        Worker { site, data, base_dir, jobs: BTreeMap::new(), identity: Arc::new(identity) }
    }

    /// Performs accepted work; `None` means there is nothing to reply (the job ended).
    pub(crate) async fn perform(&mut self, work: Work) -> Option<ReplyKind> {
        match work {
            Work::Decide { job, spec, .. } => Some(self.decide(job, spec).await),
            Work::ComputeStats { job, .. } => Some(match self.jobs.get(&job) {
                Some(d) => ReplyKind::Stats(FeatureSums::of(&d.train)),
                None => ReplyKind::Failed { reason: "the site holds no data for this job".into() },
            }),
            Work::Train { job, spec, round, model, standardization, secagg: Some((sa, index)), .. } => {
                let salt = fedcare_job::site_salt(self.site.as_str());
                let identity = self.identity.clone();
                let result = self
                    .blocking(&job, move |d| {
                        // The plain update never leaves this closure; it and its weighted and
                        // quantised forms are wiped from memory when dropped.
                        let update = train_locally(d, &spec, round, &model, &standardization, salt)?;
                        let delta = Zeroizing::new(update.delta);
                        // Weight by this site's share of the job's examples and append the
                        // loss, so the unmasked sum is exactly FedAvg's numerator.
                        let w = update.num_examples as f64 / sa.total_examples as f64;
                        let mut v: Zeroizing<Vec<f32>> = Zeroizing::new(delta.iter().map(|x| (f64::from(*x) * w) as f32).collect());
                        v.push((update.train_loss * w) as f32);
                        let quantizer = fedcare_protocol::secure::quantizer(&spec, sa.setup.n()).map_err(|e| e.to_string())?;
                        let input = Zeroizing::new(quantizer.encode(&v));
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
                let result = self
                    .blocking(&job, move |d| train_locally(d, &spec, round, &model, &standardization, salt))
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
                self.jobs.insert(job, JobData { train, test, scaled: None, secure: None });
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
