//! The job report: what a research lead reads after a job, as JSON (and printed as a table).
//!
//! Every figure in it comes from aggregate counts the sites sent (or, for the pooled reference
//! in simulation, from a central run on the same splits); none is derived from a single record.

use std::collections::BTreeMap;

use fedcare_job::JobSpec;
use fedcare_protocol::{Confusion, EvalCounts, JobOutcome};
use serde::{Deserialize, Serialize};

pub use crate::card::{MIN_REPORTED_N, WORSE_AT_SITE_MARGIN};

/// Held-out metrics over some set of examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub n: u64,
    pub accuracy: f64,
    /// ROC AUC; `None` when the examples hold only one class.
    pub auc: Option<f64>,
    /// Mean binary cross-entropy.
    pub loss: f64,
    /// Brier score: mean squared error of the predicted probability (calibration and
    /// sharpness together; 0 is perfect, 0.25 is always predicting 0.5).
    #[serde(default)]
    pub brier: Option<f64>,
    /// Confusion matrix at threshold 0.5.
    #[serde(default)]
    pub confusion: Option<Confusion>,
    /// Reliability: [`CALIBRATION_BINS`] equal bins of predicted probability, with how many
    /// examples fell in each and how many of them were positive.
    #[serde(default)]
    pub calibration: Vec<CalibrationBin>,
}

/// Bins in a reliability diagram (each groups 10 of the sites' 100 histogram bins).
pub const CALIBRATION_BINS: usize = 10;

/// One bin of a reliability diagram: predictions in `[lo, hi)` (the last bin includes 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    pub lo: f64,
    pub hi: f64,
    pub n: u64,
    pub positives: u64,
}

impl CalibrationBin {
    /// Observed fraction positive; `None` for an empty bin.
    pub fn observed(&self) -> Option<f64> {
        (self.n > 0).then(|| self.positives as f64 / self.n as f64)
    }
}

impl Metrics {
    /// `None` for zero examples: there is no accuracy of nothing (and JSON has no NaN). `auc`
    /// is a site's exact AUC, or for pooled figures the AUC from the merged histograms.
    pub fn from_counts(c: &EvalCounts, auc: Option<f64>) -> Option<Metrics> {
        (c.n > 0).then(|| Metrics {
            n: c.n,
            accuracy: c.accuracy(),
            auc,
            loss: c.mean_loss(),
            brier: Some(c.brier()),
            confusion: Some(c.confusion()),
            calibration: calibration(c),
        })
    }
}

/// Groups the 100 score bins into [`CALIBRATION_BINS`] reliability bins (empty if the
/// histograms are not the expected size).
fn calibration(c: &EvalCounts) -> Vec<CalibrationBin> {
    let per = c.pos_hist.len() / CALIBRATION_BINS;
    if per == 0 || c.pos_hist.len() != c.neg_hist.len() || !c.pos_hist.len().is_multiple_of(CALIBRATION_BINS) {
        return Vec::new();
    }
    (0..CALIBRATION_BINS)
        .map(|b| {
            let range = b * per..(b + 1) * per;
            let positives: u64 = c.pos_hist[range.clone()].iter().sum();
            let negatives: u64 = c.neg_hist[range].iter().sum();
            CalibrationBin {
                lo: b as f64 / CALIBRATION_BINS as f64,
                hi: (b + 1) as f64 / CALIBRATION_BINS as f64,
                n: positives + negatives,
                positives,
            }
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundSummary {
    pub round: u32,
    pub sites: Vec<String>,
    /// `None` when not released (differential privacy).
    pub train_loss: Option<f64>,
    /// The new global model on the union of the sites' test splits (`None` if no site evaluated).
    pub eval: Option<Metrics>,
    /// The new global model on each site's own test split (AUC exact, computed at the site).
    #[serde(default)]
    pub site_eval: BTreeMap<String, Metrics>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteSummary {
    pub site: String,
    pub train_examples: u64,
    /// The final model on this site's test split (AUC computed exactly at the site).
    pub test: Option<Metrics>,
}

/// Feature scaling the model expects, from the federation-wide statistics step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaling {
    pub features: Vec<String>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// A central model trained on the union of the training splits, evaluated the same way: what
/// federation costs. Only possible in simulation, where every site's file is local.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PooledReference {
    pub test: Metrics,
    pub epochs: usize,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub job_id: String,
    pub job_name: String,
    /// fedcare version that coordinated the job.
    pub code_version: String,
    pub model: String,
    pub layout_digest: String,
    pub parameters: usize,
    pub spec: JobSpec,
    /// How updates were protected. Until secure aggregation and differential privacy land this
    /// says plainly that the coordinator saw each site's update.
    pub protection: String,
    /// Differential privacy: the mechanism, unit and the epsilon the job spent.
    pub privacy: PrivacyReport,
    pub rounds: Vec<RoundSummary>,
    pub sites: Vec<SiteSummary>,
    /// The final model on the union of all sites' test splits (pooled from counts); `None` if no
    /// site evaluated it.
    pub federated: Option<Metrics>,
    pub scaling: Scaling,
    pub pooled_reference: Option<PooledReference>,
    /// Each site's audit log head hash at the end of the job, where known (in simulation the
    /// logs are local; otherwise sites export theirs).
    #[serde(default)]
    pub site_audit_heads: BTreeMap<String, String>,
    /// When the job finished (RFC 3339, UTC), as the coordinator's clock says.
    #[serde(default)]
    pub finished: Option<String>,
    /// Whether every connection of the job was mutual TLS (`None`: not recorded).
    #[serde(default)]
    pub mutual_tls: Option<bool>,
}

impl Report {
    pub fn build(spec: &JobSpec, outcome: &JobOutcome, layout_digest: &str) -> Report {
        let rounds = outcome
            .rounds
            .iter()
            .map(|r| RoundSummary {
                round: r.round,
                sites: r.sites.iter().map(|s| s.to_string()).collect(),
                train_loss: r.train_loss,
                eval: Metrics::from_counts(&r.eval, r.eval.auc()),
                site_eval: r
                    .site_eval
                    .iter()
                    .filter_map(|(site, e)| Some((site.to_string(), Metrics::from_counts(&e.counts, e.auc)?)))
                    .collect(),
                duration_ms: r.finished_ms.saturating_sub(r.started_ms),
            })
            .collect();
        let mut sites: BTreeMap<String, SiteSummary> = BTreeMap::new();
        for (site, n) in &outcome.train_examples {
            sites.insert(site.to_string(), SiteSummary { site: site.to_string(), train_examples: *n, test: None });
        }
        let mut total = EvalCounts::zero();
        for (site, eval) in &outcome.final_eval {
            total.add(&eval.counts);
            let entry = sites
                .entry(site.to_string())
                .or_insert_with(|| SiteSummary { site: site.to_string(), train_examples: 0, test: None });
            entry.test = Metrics::from_counts(&eval.counts, eval.auc);
        }
        Report {
            job_id: spec.id().to_string(),
            job_name: spec.name.clone(),
            code_version: env!("CARGO_PKG_VERSION").to_owned(),
            model: spec.model.name().to_owned(),
            layout_digest: layout_digest.to_owned(),
            parameters: outcome.model.len(),
            spec: spec.clone(),
            protection: protection(spec),
            privacy: PrivacyReport::build(spec, outcome.rounds.len() as u32),
            rounds,
            sites: sites.into_values().collect(),
            federated: Metrics::from_counts(&total, total.auc()),
            scaling: Scaling {
                features: spec.schema.encoded_names(),
                mean: outcome.standardization.mean.clone(),
                std: outcome.standardization.std.clone(),
            },
            pooled_reference: None,
            site_audit_heads: BTreeMap::new(),
            finished: None,
            mutual_tls: None,
        }
    }

    /// One line per site where the final model does noticeably worse than over all sites
    /// (accuracy or AUC more than [`WORSE_AT_SITE_MARGIN`] below the federated figure): a
    /// model must be checked across populations, not only on average. Sites with fewer than
    /// [`MIN_REPORTED_N`] test examples are not compared (their figures are suppressed).
    pub fn site_warnings(&self) -> Vec<String> {
        let Some(fed) = self.federated.as_ref().filter(|f| f.n >= MIN_REPORTED_N) else { return Vec::new() };
        let mut warnings = Vec::new();
        for s in &self.sites {
            let Some(m) = s.test.as_ref().filter(|m| m.n >= MIN_REPORTED_N) else { continue };
            if fed.accuracy - m.accuracy > WORSE_AT_SITE_MARGIN {
                warnings.push(format!(
                    "Performs worse at site {} (accuracy {:.3} against {:.3} over all sites): check before use there.",
                    s.site, m.accuracy, fed.accuracy
                ));
            }
            if let (Some(fa), Some(sa)) = (fed.auc, m.auc)
                && fa - sa > WORSE_AT_SITE_MARGIN
            {
                warnings.push(format!(
                    "Ranks patients worse at site {} (ROC AUC {:.3} against {:.3} over all sites): check before use there.",
                    s.site, sa, fa
                ));
            }
        }
        warnings
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let auc = |a: Option<f64>| a.map_or("   n/a".to_owned(), |a| format!("{a:6.3}"));
        let _ = writeln!(out, "{:<14} {:>6} {:>8} {:>6} {:>7} {:>7}", "site", "train", "accuracy", "AUC", "loss", "n test");
        for s in &self.sites {
            match &s.test {
                Some(m) => {
                    let _ = writeln!(
                        out,
                        "{:<14} {:>6} {:>8.3} {} {:>7.3} {:>7}",
                        s.site, s.train_examples, m.accuracy, auc(m.auc), m.loss, m.n
                    );
                }
                None => {
                    let _ = writeln!(out, "{:<14} {:>6}   (did not evaluate the final model)", s.site, s.train_examples);
                }
            }
        }
        let train_total: u64 = self.sites.iter().map(|s| s.train_examples).sum();
        match &self.federated {
            Some(f) => {
                let _ = writeln!(
                    out,
                    "{:<14} {:>6} {:>8.3} {} {:>7.3} {:>7}",
                    "federated", train_total, f.accuracy, auc(f.auc), f.loss, f.n
                );
            }
            None => {
                let _ = writeln!(out, "{:<14} {:>6}   (no site evaluated the final model)", "federated", train_total);
            }
        }
        if let Some(p) = &self.pooled_reference {
            let m = &p.test;
            let _ = writeln!(
                out,
                "{:<14} {:>6} {:>8.3} {} {:>7.3} {:>7}",
                "pooled (ref.)", train_total, m.accuracy, auc(m.auc), m.loss, m.n
            );
        }
        match self.privacy.epsilon_spent {
            Some(eps) => {
                let _ = writeln!(
                    out,
                    "privacy: {} level, {}, epsilon {:.3} spent of {} (delta {:e})",
                    self.privacy.unit,
                    self.privacy.mechanism,
                    eps,
                    self.privacy.target_epsilon.unwrap_or(f64::NAN),
                    self.privacy.delta.unwrap_or(f64::NAN)
                );
            }
            None => {
                let _ = writeln!(out, "privacy: no differential privacy");
            }
        }
        out
    }
}

/// Most points kept in [`PrivacyReport::epsilon_by_round`] (each costs one accountant run).
pub const EPSILON_POINTS: u32 = 100;

/// Epsilon spent once `round` rounds were done.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpsilonPoint {
    pub round: u32,
    pub epsilon: f64,
}

/// The privacy a job spent, as the coordinator computes it from the spec alone (each site
/// computes the same figures for its own ledger; a site that missed rounds spent less).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacyReport {
    /// `none`, `record` or `site`.
    pub unit: String,
    /// `none`, `dp_sgd`, `distributed_discrete_gaussian`, `distributed_skellam` or
    /// `central_gaussian`.
    pub mechanism: String,
    pub target_epsilon: Option<f64>,
    pub delta: Option<f64>,
    /// Epsilon spent by a site that took part in the statistics step and every completed
    /// round (the most any site spent); `None` without differential privacy.
    pub epsilon_spent: Option<f64>,
    pub noise_multiplier: Option<f64>,
    /// Record level: the noise multiplier of the federated statistics release.
    #[serde(default)]
    pub stats_noise_multiplier: Option<f64>,
    pub clip_norm: Option<f64>,
    /// Rounds charged.
    pub rounds_charged: u32,
    /// Epsilon spent after each completed round (statistics step included), for the plot of
    /// spend over time; at most [`EPSILON_POINTS`] rounds, evenly spread, for long jobs.
    #[serde(default)]
    pub epsilon_by_round: Vec<EpsilonPoint>,
    /// The guarantee in words, including its limits.
    pub statement: String,
    /// Each site's own ledger total for this job, where known (in simulation the ledgers are
    /// local; otherwise each site shows its own with `site-agent ledger`).
    #[serde(default)]
    pub site_ledgers: BTreeMap<String, f64>,
}

impl PrivacyReport {
    pub fn build(spec: &JobSpec, rounds_done: u32) -> PrivacyReport {
        let none = |statement: String| PrivacyReport {
            unit: "none".into(),
            mechanism: "none".into(),
            target_epsilon: None,
            delta: None,
            epsilon_spent: None,
            noise_multiplier: None,
            stats_noise_multiplier: None,
            clip_norm: None,
            rounds_charged: 0,
            epsilon_by_round: Vec::new(),
            statement,
            site_ledgers: BTreeMap::new(),
        };
        let plan = match spec.privacy_plan() {
            Ok(Some(plan)) => plan,
            Ok(None) => return none("no differential privacy: the model and the metrics are not protected against what they reveal about a patient or a site".into()),
            Err(e) => return none(format!("the job's privacy plan could not be computed: {e}")),
        };
        let spent_after = |rounds: u32| {
            let mut charges: Vec<fedcare_privacy::Charge> = plan.stats.iter().cloned().collect();
            charges.extend(std::iter::repeat_n(plan.per_round.clone(), rounds as usize));
            fedcare_privacy::epsilon_of(&charges, plan.delta).map(|(e, _)| e).ok()
        };
        let spent = spent_after(rounds_done);
        let step = rounds_done.div_ceil(EPSILON_POINTS).max(1);
        let epsilon_by_round = (1..=rounds_done)
            .filter(|r| r % step == 0 || *r == rounds_done)
            .filter_map(|round| Some(EpsilonPoint { round, epsilon: spent_after(round)? }))
            .collect();
        let statement = match plan.mechanism {
            "dp_sgd" => format!(
                "record-level differential privacy: each site trained with DP-SGD (per-example clipping to {}, Poisson sampling rate {}, \
                 exact discrete Gaussian noise, noise multiplier {:.4}) and noised its statistics; each patient's record is protected \
                 at epsilon {:.3}, delta {:e} against anyone who sees the model, the coordinator included. Held-out evaluation counts \
                 are exact aggregates and not covered.",
                plan.clip_norm, plan.sampling_rate, plan.noise_multiplier, spent.unwrap_or(f64::NAN), plan.delta
            ),
            mechanism @ ("distributed_discrete_gaussian" | "distributed_skellam") => format!(
                "site-level differential privacy, distributed: each site clipped its update to L2 norm {} and added its share of \
                 {} noise before secure aggregation; a whole site's contribution is protected at epsilon {:.3}, delta {:e}, \
                 without trusting the coordinator.",
                plan.clip_norm,
                if mechanism == "distributed_skellam" { "Skellam" } else { "discrete Gaussian" },
                spent.unwrap_or(f64::NAN),
                plan.delta
            ),
            _ => format!(
                "site-level differential privacy, CENTRAL mode (weaker): sites clipped their updates to L2 norm {} and the coordinator \
                 added the noise; the guarantee (epsilon {:.3}, delta {:e}) holds only if the coordinator is honest.",
                plan.clip_norm, spent.unwrap_or(f64::NAN), plan.delta
            ),
        };
        PrivacyReport {
            unit: plan.unit.as_str().into(),
            mechanism: plan.mechanism.into(),
            target_epsilon: Some(plan.target_epsilon),
            delta: Some(plan.delta),
            epsilon_spent: spent,
            noise_multiplier: Some(plan.noise_multiplier),
            stats_noise_multiplier: match plan.stats {
                Some(fedcare_privacy::Charge::Gaussian { noise_multiplier, .. }) => Some(noise_multiplier),
                _ => None,
            },
            clip_norm: Some(plan.clip_norm),
            rounds_charged: rounds_done,
            epsilon_by_round,
            statement,
            site_ledgers: BTreeMap::new(),
        }
    }
}

/// How a job's updates were protected, in words for the report.
fn protection(spec: &JobSpec) -> String {
    let sa = &spec.secure_aggregation;
    if sa.enabled {
        format!(
            "secure aggregation (SecAgg+): the coordinator saw only the sum of each round's surviving sites' \
             updates, quantised in Z_2^{} with clip {} (tolerating a {} fraction of dropouts)",
            sa.bits, sa.clip, sa.dropout_fraction
        )
    } else {
        "none: secure aggregation was disabled for this job, so the coordinator saw each site's update".to_owned()
    }
}

/// `2026-11-26T12:34:56Z` (RFC 3339, UTC, seconds), or `-` for 0 (unknown): how reports and
/// the command line show a time.
pub fn utc(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "-".to_owned();
    }
    let secs = (unix_ms / 1000) as i64;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("@{secs}"))
}

/// The report as pretty JSON (the form written to `report.json`).
pub fn to_json(report: &Report) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(report)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use fedcare_data::Standardization;
    use fedcare_protocol::messages::EvalReport;
    use fedcare_protocol::{EvalCounts, JobOutcome, RoundRecord, SiteId};

    use super::*;

    fn counts(n: u64, correct: u64, pos_bin: usize, neg_bin: usize) -> EvalCounts {
        let mut c = EvalCounts::zero();
        c.n = n;
        c.correct = correct;
        c.loss_sum = n as f64 * 0.5;
        c.pos_hist[pos_bin] = n / 2;
        c.neg_hist[neg_bin] = n - n / 2;
        // Positives predicted positive where their bin says so; the rest of `correct` are
        // true negatives.
        c.true_pos = if pos_bin >= 50 { (n / 2).min(correct) } else { 0 };
        c.false_pos = (n - n / 2) - (correct - c.true_pos);
        c.sq_err_sum = n as f64 * 0.2;
        c
    }

    #[test]
    fn report_totals_are_the_sums_of_the_sites_counts() {
        let spec = JobSpec::from_toml(include_str!("../../../examples/heart-disease/job.toml"), "job.toml").unwrap();
        let a = SiteId::parse("a").unwrap();
        let b = SiteId::parse("b").unwrap();
        let mut final_eval = BTreeMap::new();
        final_eval.insert(a.clone(), EvalReport { round: 1, counts: counts(10, 8, 90, 10), auc: Some(0.9) });
        final_eval.insert(b.clone(), EvalReport { round: 1, counts: counts(30, 15, 40, 60), auc: None });
        let mut total = EvalCounts::zero();
        total.add(&final_eval[&a].counts);
        total.add(&final_eval[&b].counts);
        let outcome = JobOutcome {
            model: vec![0.0; 16],
            standardization: Standardization { mean: vec![0.0; 15], std: vec![1.0; 15] },
            rounds: vec![RoundRecord { round: 1, sites: vec![a.clone(), b.clone()], train_loss: Some(0.4), eval: total, site_eval: BTreeMap::new(), started_ms: 5, finished_ms: 25 }],
            final_eval,
            train_examples: [(a, 20), (b, 60)].into_iter().collect(),
        };
        let report = Report::build(&spec, &outcome, "digest");
        let fed = report.federated.as_ref().unwrap();
        assert_eq!(fed.n, 40);
        assert!((fed.accuracy - 23.0 / 40.0).abs() < 1e-12);
        // Site a's AUC is the exact one it computed; b has none; the pooled one comes from bins.
        assert_eq!(report.sites[0].test.as_ref().unwrap().auc, Some(0.9));
        assert_eq!(report.sites[1].test.as_ref().unwrap().auc, None);
        assert!(fed.auc.is_some());
        assert_eq!(report.rounds[0].duration_ms, 20);
        assert_eq!(report.parameters, 16);
        let table = report.table();
        assert!(table.contains("federated") && table.contains("0.575") && table.contains("n/a"), "{table}");
        // JSON round trip.
        let back: Report = serde_json::from_str(&to_json(&report).unwrap()).unwrap();
        assert_eq!(back, report);
    }
}
