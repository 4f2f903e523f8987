//! The model card: what a clinician or an ethics board reads about a finished model, in
//! Markdown (`model-card.md`) and JSON (`model-card.json`, this module's [`ModelCard`] as is).
//!
//! A card is a pure function of the job's [`Report`] ([`ModelCard::from_report`]): every
//! figure is copied from the report, never recomputed, so the card and the report cannot
//! disagree. It adds only presentation: plain words for each setting, a warning for a site
//! where the model does noticeably worse than overall, and the suppression of metrics over
//! fewer than [`MIN_REPORTED_N`] test examples (small counts could identify patients).
//! What the report does not record (the date, whether connections used mutual TLS) the card
//! says it does not know; it never guesses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fedcare_data::{FeatureKind, LabelRule};
use fedcare_models::{ModelSpec, OptimizerKind};
use serde::{Deserialize, Serialize};

use crate::report::{Metrics, Report};

/// Metrics over fewer test examples than this are not shown.
pub const MIN_REPORTED_N: u64 = 10;

/// A site whose accuracy is more than this below the federated accuracy gets a warning.
pub const WORSE_AT_SITE_MARGIN: f64 = 0.05;

/// The model card of one finished job. Serialised as is to `model-card.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub job: CardJob,
    pub model: CardModel,
    /// "Research use only: predicts ... ; not validated for clinical decisions."
    pub intended_use: String,
    pub data: CardData,
    pub privacy: CardPrivacy,
    /// Each site's training count and held-out evaluation, in the report's order.
    pub sites: Vec<CardSite>,
    /// The final model on the union of the sites' test splits.
    pub federated: Evaluation,
    /// Simulation only: the same model trained centrally on the union of the training splits.
    pub pooled_reference: Option<Evaluation>,
    /// One line per site where the model does noticeably worse than overall.
    pub warnings: Vec<String>,
    /// Each site's audit-log head hash at the end of the job, where the report has it.
    pub audit_heads: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardJob {
    pub name: String,
    pub description: String,
    /// The SHA-256 of the job spec's canonical form.
    pub job_id: String,
    /// The fedcare version that coordinated the job.
    pub code_version: String,
    /// When the job finished; `None` when the report does not record it.
    pub date: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardModel {
    /// The registry name: `logistic_regression` or `mlp`.
    pub kind: String,
    /// The kind in words.
    pub description: String,
    /// Widths of the hidden layers (empty for logistic regression).
    pub hidden_layers: Vec<usize>,
    pub parameters: usize,
    pub local_epochs: usize,
    /// Rows per training step; `None` under DP-SGD, which samples rows instead.
    pub batch_size: Option<usize>,
    /// DP-SGD: the probability that a record is in one training step's sample.
    pub sampling_rate: Option<f64>,
    pub optimizer: String,
    pub learning_rate: f64,
    pub rounds_planned: u32,
    pub rounds_completed: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardData {
    /// The input features in the model's order.
    pub features: Vec<CardFeature>,
    /// The label rule, e.g. "disease > 0".
    pub label: String,
    /// Share of each site's records held out for testing.
    pub test_fraction: f64,
    /// What the sites' training counts are.
    pub train_counts: TrainCounts,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardFeature {
    pub name: String,
    /// "numeric" or "categorical: 1, 2, 3, 4".
    pub encoding: String,
}

/// What the training example counts in [`CardSite::train_examples`] are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainCounts {
    /// The sites' exact counts (no differential privacy).
    Exact,
    /// Record-level differential privacy: each site's count plus random noise.
    Noised,
    /// Site-level differential privacy: no count is released; every site weighs 1.
    NotReleased,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardPrivacy {
    /// `none`, `record` or `site` (as in the report).
    pub unit: String,
    /// `none`, `dp_sgd`, `distributed_discrete_gaussian`, `distributed_skellam` or
    /// `central_gaussian`.
    pub mechanism: String,
    pub epsilon_spent: Option<f64>,
    pub target_epsilon: Option<f64>,
    pub delta: Option<f64>,
    /// Unit, mechanism and epsilon explained for a non-specialist.
    pub in_plain_words: String,
    /// The report's statement of the guarantee and its limits, verbatim.
    pub statement: String,
    pub secure_aggregation: bool,
    /// `None`: the report does not record whether connections used mutual TLS.
    pub mutual_tls: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardSite {
    pub site: String,
    /// As reported: see [`CardData::train_counts`] for what the count is.
    pub train_examples: u64,
    pub test: Evaluation,
}

/// Held-out metrics as the card shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Evaluation {
    /// The report's metrics, unchanged.
    Reported(Metrics),
    /// Fewer than [`MIN_REPORTED_N`] test examples: neither the metrics nor the n are shown.
    Suppressed,
    /// Not evaluated (the site left the job, or no site evaluated the final model).
    NotEvaluated,
}

impl Evaluation {
    fn of(metrics: Option<&Metrics>) -> Evaluation {
        match metrics {
            None => Evaluation::NotEvaluated,
            Some(m) if m.n < MIN_REPORTED_N => Evaluation::Suppressed,
            Some(m) => Evaluation::Reported(suppress_small_cells(m)),
        }
    }

    /// The metrics, if shown.
    pub fn metrics(&self) -> Option<&Metrics> {
        match self {
            Evaluation::Reported(m) => Some(m),
            _ => None,
        }
    }
}

/// The metrics with every small cell removed: the confusion matrix if any non-empty cell has
/// fewer than [`MIN_REPORTED_N`] patients, and reliability bins with fewer than that many.
fn suppress_small_cells(m: &Metrics) -> Metrics {
    let mut m = m.clone();
    if let Some(c) = m.confusion
        && [c.true_pos, c.false_pos, c.true_neg, c.false_neg].iter().any(|&x| x > 0 && x < MIN_REPORTED_N)
    {
        m.confusion = None;
    }
    m.calibration.retain(|b| b.n >= MIN_REPORTED_N);
    m
}

/// The two files [`ModelCard::write`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardFiles {
    pub markdown: PathBuf,
    pub json: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the model card {path}")]
pub struct CardWriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl ModelCard {
    /// The card of the job `report` describes. Pure: figures are copied, never recomputed.
    pub fn from_report(report: &Report) -> ModelCard {
        let spec = &report.spec;
        let dp_sgd = report.privacy.mechanism == "dp_sgd";
        let (description, hidden_layers) = match &spec.model {
            ModelSpec::LogisticRegression => ("logistic regression, a weighted sum of the inputs turned into a probability".to_owned(), Vec::new()),
            ModelSpec::Mlp { hidden } => (
                format!(
                    "neural network (multilayer perceptron) with {} hidden layer{} of {} units",
                    hidden.len(),
                    if hidden.len() == 1 { "" } else { "s" },
                    join(hidden)
                ),
                hidden.clone(),
            ),
        };
        let model = CardModel {
            kind: report.model.clone(),
            description,
            hidden_layers,
            parameters: report.parameters,
            local_epochs: spec.training.local_epochs,
            batch_size: (!dp_sgd).then_some(spec.training.batch_size),
            sampling_rate: if dp_sgd { spec.privacy.sampling_rate } else { None },
            optimizer: match spec.training.optimizer {
                OptimizerKind::Sgd => "sgd".to_owned(),
                OptimizerKind::Adam => "adam".to_owned(),
            },
            learning_rate: spec.training.learning_rate,
            rounds_planned: spec.rounds,
            rounds_completed: report.rounds.len() as u32,
        };
        let label = &spec.schema.label;
        let rule = match label.positive_if {
            LabelRule::GreaterThan(t) => format!("{} > {t}", label.name),
            LabelRule::Equals(t) => format!("{} = {t}", label.name),
        };
        let intended_use = format!("Research use only: predicts whether {rule} from the features listed; not validated for clinical decisions.");
        let features = spec
            .schema
            .features
            .iter()
            .map(|f| CardFeature {
                name: f.name.clone(),
                encoding: match &f.kind {
                    FeatureKind::Numeric => "numeric".to_owned(),
                    FeatureKind::Categorical { levels } => format!("categorical: {}", join(levels)),
                },
            })
            .collect();
        let p = &report.privacy;
        let train_counts = match p.unit.as_str() {
            "record" => TrainCounts::Noised,
            "site" => TrainCounts::NotReleased,
            _ => TrainCounts::Exact,
        };
        let data = CardData { features, label: rule, test_fraction: spec.schema.split.test_fraction, train_counts };
        let privacy = CardPrivacy {
            unit: p.unit.clone(),
            mechanism: p.mechanism.clone(),
            epsilon_spent: p.epsilon_spent,
            target_epsilon: p.target_epsilon,
            delta: p.delta,
            in_plain_words: privacy_in_words(report),
            statement: p.statement.clone(),
            secure_aggregation: spec.secure_aggregation.enabled,
            mutual_tls: report.mutual_tls,
        };
        let sites: Vec<CardSite> = report
            .sites
            .iter()
            .map(|s| CardSite { site: s.site.clone(), train_examples: s.train_examples, test: Evaluation::of(s.test.as_ref()) })
            .collect();
        let federated = Evaluation::of(report.federated.as_ref());
        let warnings = report.site_warnings();
        ModelCard {
            job: CardJob {
                name: report.job_name.clone(),
                description: spec.description.clone(),
                job_id: report.job_id.clone(),
                code_version: report.code_version.clone(),
                date: report.finished.clone(),
            },
            model,
            intended_use,
            data,
            privacy,
            sites,
            federated,
            pooled_reference: report.pooled_reference.as_ref().map(|r| Evaluation::of(Some(&r.test))),
            warnings,
            audit_heads: report.site_audit_heads.clone(),
        }
    }

    /// The card as pretty JSON (the form written to `model-card.json`).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// The card as Markdown: one or two screens, every term explained where it appears.
    pub fn to_markdown(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let j = &self.job;
        let _ = writeln!(o, "# Model card: {}\n", one_line(&j.name));
        if !j.description.trim().is_empty() {
            let _ = writeln!(o, "{}\n", one_line(&j.description));
        }
        let _ = writeln!(o, "**Intended use.** {}\n", self.intended_use);

        let _ = writeln!(o, "## The job\n");
        let _ = writeln!(o, "- Job id (SHA-256 of the job spec; any change to a setting changes it): `{}`", j.job_id);
        let _ = writeln!(o, "- fedcare version: {}", j.code_version);
        let _ = writeln!(o, "- Date: {}", j.date.as_deref().unwrap_or("not recorded in the job's report"));
        let m = &self.model;
        let _ = writeln!(
            o,
            "- Rounds: {} of {} completed (in each round every site trains on its own records and the coordinator averages their updates)\n",
            m.rounds_completed, m.rounds_planned
        );

        let _ = writeln!(o, "## The model\n");
        let _ = writeln!(o, "- Kind: {} (`{}`, {} parameters)", m.description, m.kind, m.parameters);
        let sampling = match (m.batch_size, m.sampling_rate) {
            (_, Some(q)) => format!("each training step uses a random sample of about {}% of the site's records", pct(q)),
            (Some(b), None) => format!("batch size {b}"),
            (None, None) => "batch size not applicable".to_owned(),
        };
        let _ = writeln!(
            o,
            "- Training at each site, per round: {} local epoch{} (passes over its training records), {sampling}, optimizer {}, learning rate {}\n",
            m.local_epochs,
            if m.local_epochs == 1 { "" } else { "s" },
            m.optimizer,
            m.learning_rate
        );

        let d = &self.data;
        let _ = writeln!(o, "## The data\n");
        let features: Vec<String> = d
            .features
            .iter()
            .map(|f| if f.encoding == "numeric" { one_line(&f.name) } else { format!("{} ({})", one_line(&f.name), f.encoding) })
            .collect();
        let _ = writeln!(o, "- Features ({}): {}", d.features.len(), features.join(", "));
        let _ = writeln!(o, "- Label: positive when {}", one_line(&d.label));
        let _ = writeln!(o, "- Each site kept {}% of its own records aside for testing; none left the site.", pct(d.test_fraction));
        let _ = writeln!(
            o,
            "- Training examples: {}\n",
            match d.train_counts {
                TrainCounts::Exact => "the counts each site reported.",
                TrainCounts::Noised => "noised counts (differential privacy adds random noise to each site's count, so it can differ slightly from the true number).",
                TrainCounts::NotReleased => "not released (under site-level privacy every site weighs the same in the average).",
            }
        );
        let _ = writeln!(o, "| site | training examples | test examples |\n|---|---:|---:|");
        for s in &self.sites {
            let train = if d.train_counts == TrainCounts::NotReleased { "not released".to_owned() } else { s.train_examples.to_string() };
            let test = match &s.test {
                Evaluation::Reported(t) => t.n.to_string(),
                Evaluation::Suppressed => format!("fewer than {MIN_REPORTED_N}"),
                Evaluation::NotEvaluated => "not evaluated".to_owned(),
            };
            let _ = writeln!(o, "| {} | {train} | {test} |", cell(&s.site));
        }
        o.push('\n');

        let p = &self.privacy;
        let _ = writeln!(o, "## Privacy and security\n");
        let _ = writeln!(o, "- {}", p.in_plain_words);
        if p.epsilon_spent.is_some() {
            let _ = writeln!(
                o,
                "- Epsilon measures how much the model can reveal about one {} (smaller is more private); delta is the small chance that this bound fails.",
                if p.unit == "site" { "hospital's data" } else { "patient" }
            );
        }
        let _ = writeln!(o, "- The guarantee in technical terms: {}", p.statement);
        let _ = writeln!(
            o,
            "- Secure aggregation: {}",
            if p.secure_aggregation {
                "yes (the coordinator saw only the sum of the sites' updates in each round, never one site's)"
            } else {
                "no (the coordinator saw each site's update)"
            }
        );
        let _ = writeln!(
            o,
            "- Mutual TLS (every connection authenticated by a certificate from the federation's authority): {}\n",
            match p.mutual_tls {
                Some(true) => "yes",
                Some(false) => "no",
                None => "not recorded in the job's report",
            }
        );

        let _ = writeln!(o, "## Evaluation on held-out test records\n");
        let _ = writeln!(
            o,
            "Accuracy: share of test patients classified correctly. AUC: chance that a positive patient scores higher than a \
             negative one (0.5 is a coin toss, 1 is perfect; n/a when all test patients have the same label). Loss: mean cross-entropy, lower is better. \
             Brier: mean squared error of the predicted risk (calibration; 0 is perfect, 0.25 is always saying 50%). \
             TP / FP / TN / FN: true and false positives and negatives at a predicted risk of 50%. n: test patients. \
             Figures over fewer than {MIN_REPORTED_N} patients are suppressed: small counts could identify patients.\n"
        );
        let _ = writeln!(o, "| | n | accuracy | AUC | loss | Brier | TP / FP / TN / FN |\n|---|---:|---:|---:|---:|---:|---:|");
        for s in &self.sites {
            let _ = writeln!(o, "| {} | {}", cell(&s.site), metrics_cells(&s.test));
        }
        let _ = writeln!(o, "| **all sites (federated)** | {}", metrics_cells(&self.federated));
        if let Some(r) = &self.pooled_reference {
            let _ = writeln!(o, "| pooled reference* | {}", metrics_cells(r));
        }
        o.push('\n');
        if self.pooled_reference.is_some() {
            let _ = writeln!(
                o,
                "\\* Simulation only: the same model trained centrally on all sites' training records, to show what federation costs.\n"
            );
        }
        for w in &self.warnings {
            let _ = writeln!(o, "**Warning.** {w}\n");
        }

        let _ = writeln!(o, "## Provenance\n");
        if self.audit_heads.is_empty() {
            let _ = writeln!(o, "Sites' audit-log head hashes: not available: each site exports its own with `site-agent audit verify`.");
        } else {
            let _ = writeln!(
                o,
                "Each site's audit log (a tamper-evident record of what it received and sent) ended at this hash; \
                 a site checks its own with `site-agent audit verify`.\n"
            );
            let _ = writeln!(o, "| site | audit-log head hash |\n|---|---|");
            let mut names: Vec<&str> = self.sites.iter().map(|s| s.site.as_str()).collect();
            names.extend(self.audit_heads.keys().map(String::as_str).filter(|k| !self.sites.iter().any(|s| s.site == *k)));
            for site in names {
                let head = self.audit_heads.get(site).map_or("not available".to_owned(), |h| format!("`{h}`"));
                let _ = writeln!(o, "| {} | {head} |", cell(site));
            }
        }
        o
    }

    /// Writes `model-card.md` and `model-card.json` into `dir` (which must exist).
    pub fn write(&self, dir: &Path) -> Result<CardFiles, CardWriteError> {
        let files = CardFiles { markdown: dir.join("model-card.md"), json: dir.join("model-card.json") };
        let json = self.to_json().map_err(|e| CardWriteError { path: files.json.clone(), source: std::io::Error::other(e) })?;
        std::fs::write(&files.json, json).map_err(|source| CardWriteError { path: files.json.clone(), source })?;
        std::fs::write(&files.markdown, self.to_markdown()).map_err(|source| CardWriteError { path: files.markdown.clone(), source })?;
        Ok(files)
    }
}

/// The privacy section's first line, for a reader who has not met differential privacy.
fn privacy_in_words(report: &Report) -> String {
    let p = &report.privacy;
    let unit = match p.unit.as_str() {
        "record" => "record-level differential privacy, which protects each patient",
        "site" => "site-level differential privacy, which protects each hospital's whole contribution",
        _ => return "No differential privacy: the model and the figures below are not protected against what they may reveal about a patient or a site.".to_owned(),
    };
    let how = match p.mechanism.as_str() {
        "dp_sgd" => "each site trained with DP-SGD (it limits each patient's influence on every training step and adds random noise)",
        "distributed_discrete_gaussian" | "distributed_skellam" => "each site limited its influence and added its share of random noise before its update was combined with the others",
        "central_gaussian" => "sites limited their influence and the coordinator added the random noise (weaker: it relies on the coordinator being honest)",
        other => other,
    };
    let num = |x: Option<f64>, f: fn(f64) -> String| x.map_or("not computed".to_owned(), f);
    format!(
        "Trained under {unit}: {how}. Epsilon spent: {} (the job allowed {}), delta {}.",
        num(p.epsilon_spent, |e| format!("{e:.3}")),
        num(p.target_epsilon, |e| format!("{e}")),
        num(p.delta, |d| format!("{d:e}")),
    )
}

/// `n | accuracy | AUC | loss |` for one row of the evaluation table.
fn metrics_cells(e: &Evaluation) -> String {
    match e {
        Evaluation::Reported(m) => format!(
            "{} | {:.3} | {} | {:.3} | {} | {} |",
            m.n,
            m.accuracy,
            m.auc.map_or("n/a".to_owned(), |a| format!("{a:.3}")),
            m.loss,
            m.brier.map_or("n/a".to_owned(), |b| format!("{b:.4}")),
            m.confusion.map_or(format!("suppressed (a cell < {MIN_REPORTED_N})"), |c| format!(
                "{} / {} / {} / {}",
                c.true_pos, c.false_pos, c.true_neg, c.false_neg
            )),
        ),
        Evaluation::Suppressed => format!("suppressed (n < {MIN_REPORTED_N}) | | | | | |"),
        Evaluation::NotEvaluated => "not evaluated | | | | | |".to_owned(),
    }
}

fn join<T: std::fmt::Display>(xs: &[T]) -> String {
    xs.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
}

fn pct(fraction: f64) -> String {
    format!("{}", (fraction * 1000.0).round() / 10.0)
}

/// User-given text on one line (a name or description must not break the Markdown).
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// User-given text inside a table cell.
fn cell(s: &str) -> String {
    one_line(s).replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use fedcare_data::Standardization;
    use fedcare_job::JobSpec;
    use fedcare_protocol::messages::EvalReport;
    use fedcare_protocol::{EvalCounts, JobOutcome, RoundRecord, SiteId};

    use super::*;
    use crate::report::PooledReference;

    fn counts(n: u64, correct: u64) -> EvalCounts {
        let mut c = EvalCounts::zero();
        c.n = n;
        c.correct = correct;
        c.loss_sum = n as f64 * 0.5;
        c.pos_hist[90] = n / 2;
        c.neg_hist[10] = n - n / 2;
        c
    }

    /// A report built as in the report's own test, with three sites: `a` (40 test examples,
    /// accuracy 0.900), `b` (60, accuracy 0.700, one class only so no AUC) and `tiny` (5);
    /// overall 83 of 105 right, 0.790.
    fn report(spec: JobSpec) -> Report {
        let sites = [("a", 120, 40, 36, Some(0.93)), ("b", 180, 60, 42, None), ("tiny", 15, 5, 5, Some(1.0))];
        let mut final_eval = BTreeMap::new();
        let mut total = EvalCounts::zero();
        let mut train_examples = BTreeMap::new();
        for (name, train, n, correct, auc) in sites {
            let id = SiteId::parse(name).unwrap();
            let c = counts(n, correct);
            total.add(&c);
            final_eval.insert(id.clone(), EvalReport { round: 1, counts: c, auc });
            train_examples.insert(id, train);
        }
        let ids: Vec<SiteId> = train_examples.keys().cloned().collect();
        let outcome = JobOutcome {
            model: vec![0.0; 16],
            standardization: Standardization { mean: vec![0.0; 15], std: vec![1.0; 15] },
            rounds: vec![RoundRecord { round: 1, sites: ids, train_loss: None, eval: total, site_eval: BTreeMap::new(), started_ms: 5, finished_ms: 25 }],
            final_eval,
            train_examples,
        };
        Report::build(&spec, &outcome, "digest")
    }

    fn example_spec() -> JobSpec {
        JobSpec::from_toml(include_str!("../../../examples/heart-disease/job.toml"), "job.toml").unwrap()
    }

    #[test]
    fn the_cards_figures_are_the_reports() {
        let mut report = report(example_spec());
        report.site_audit_heads.insert("a".into(), "aa11".into());
        report.site_audit_heads.insert("b".into(), "bb22".into());
        report.pooled_reference = Some(PooledReference {
            test: Metrics { n: 105, accuracy: 0.8, auc: Some(0.88), loss: 0.45, brier: Some(0.15), confusion: None, calibration: Vec::new() },
            epochs: 10,
            note: "central".into(),
        });
        let card = ModelCard::from_report(&report);

        assert_eq!(card.job.job_id, report.job_id);
        assert_eq!(card.job.name, report.job_name);
        assert_eq!(card.job.code_version, report.code_version);
        assert_eq!(card.job.description, report.spec.description);
        assert_eq!(card.job.date, None, "the report has no date; the card invents none");
        let mut dated = report.clone();
        dated.finished = Some("2026-11-26T12:00:00Z".into());
        dated.mutual_tls = Some(true);
        let dated = ModelCard::from_report(&dated);
        assert_eq!((dated.job.date.as_deref(), dated.privacy.mutual_tls), (Some("2026-11-26T12:00:00Z"), Some(true)));
        assert_eq!(card.model.kind, "logistic_regression");
        assert_eq!(card.model.parameters, report.parameters);
        assert_eq!(card.model.rounds_planned, report.spec.rounds);
        assert_eq!(card.model.rounds_completed, 1);
        assert_eq!(card.model.learning_rate, report.spec.training.learning_rate);
        // The example uses DP-SGD: rows are sampled, there is no batch size.
        assert_eq!(card.model.batch_size, None);
        assert_eq!(card.model.sampling_rate, Some(0.04));
        assert_eq!(card.data.features.len(), report.spec.schema.features.len());
        assert_eq!(card.data.features[2].encoding, "categorical: 1, 2, 3, 4");
        assert_eq!(card.data.train_counts, TrainCounts::Noised);
        assert_eq!(card.intended_use, "Research use only: predicts whether disease > 0 from the features listed; not validated for clinical decisions.");

        // Privacy: copied, not recomputed.
        assert_eq!(card.privacy.epsilon_spent, report.privacy.epsilon_spent);
        assert!(card.privacy.epsilon_spent.is_some());
        assert_eq!(card.privacy.delta, report.privacy.delta);
        assert_eq!(card.privacy.target_epsilon, report.privacy.target_epsilon);
        assert_eq!((card.privacy.unit.as_str(), card.privacy.mechanism.as_str()), ("record", "dp_sgd"));
        assert_eq!(card.privacy.statement, report.privacy.statement);
        assert!(card.privacy.secure_aggregation);
        assert_eq!(card.privacy.mutual_tls, None, "the report does not say: the card does not claim it");

        // Evaluation: every shown figure is the report's own value.
        assert_eq!(card.sites.len(), report.sites.len());
        for (c, r) in card.sites.iter().zip(&report.sites) {
            assert_eq!(c.site, r.site);
            assert_eq!(c.train_examples, r.train_examples);
            if let Some(m) = c.test.metrics() {
                // The report's own values, less its small cells (empty reliability bins here).
                let r = r.test.as_ref().unwrap();
                assert_eq!((m.n, m.accuracy, m.auc, m.loss, m.brier, m.confusion), (r.n, r.accuracy, r.auc, r.loss, r.brier, r.confusion));
                assert!(m.calibration.iter().all(|b| b.n >= MIN_REPORTED_N && r.calibration.contains(b)));
                assert_eq!(m.calibration.len(), r.calibration.iter().filter(|b| b.n >= MIN_REPORTED_N).count());
            }
        }
        assert_eq!(card.federated.metrics().map(|m| m.accuracy), report.federated.as_ref().map(|m| m.accuracy));
        assert_eq!(card.pooled_reference, Some(Evaluation::Reported(report.pooled_reference.as_ref().unwrap().test.clone())));
        assert_eq!(card.audit_heads, report.site_audit_heads);

        // JSON round trip.
        let back: ModelCard = serde_json::from_str(&card.to_json().unwrap()).unwrap();
        assert_eq!(back, card);
    }

    #[test]
    fn metrics_over_fewer_than_ten_test_examples_are_suppressed() {
        let report = report(example_spec());
        let card = ModelCard::from_report(&report);
        let tiny = card.sites.iter().find(|s| s.site == "tiny").unwrap();
        assert_eq!(tiny.test, Evaluation::Suppressed);
        let a = card.sites.iter().find(|s| s.site == "a").unwrap();
        assert_eq!(a.test.metrics().map(|m| m.n), Some(40));
        let json = card.to_json().unwrap();
        assert!(json.contains("\"status\": \"suppressed\""), "{json}");
        let md = card.to_markdown();
        let row = md.lines().find(|l| l.starts_with("| tiny | suppressed")).unwrap_or_else(|| panic!("no suppressed row:\n{md}"));
        assert_eq!(row, "| tiny | suppressed (n < 10) | | | | | |");
        // Its test n is not shown in the data table either.
        assert!(md.contains("| tiny | 15 | fewer than 10 |"), "{md}");
        // A federated total under ten is suppressed too.
        let mut small = report.clone();
        small.federated.as_mut().unwrap().n = 9;
        assert_eq!(ModelCard::from_report(&small).federated, Evaluation::Suppressed);
    }

    #[test]
    fn a_site_more_than_five_points_below_the_federated_accuracy_is_flagged() {
        let report = report(example_spec());
        // Overall 83/105 = 0.790; a: 0.900, b: 0.700 (0.09 below), tiny: suppressed.
        // Site a's exact AUC (0.93) is also more than 5 points below the pooled one (1.0).
        let card = ModelCard::from_report(&report);
        assert_eq!(card.warnings.len(), 2, "{:?}", card.warnings);
        assert_eq!(card.warnings[0], "Ranks patients worse at site a (ROC AUC 0.930 against 1.000 over all sites): check before use there.");
        assert_eq!(card.warnings[1], "Performs worse at site b (accuracy 0.700 against 0.790 over all sites): check before use there.");
        assert!(card.to_markdown().contains("**Warning.** Performs worse at site b"));
        // Within the margins: no warning.
        let mut close = report.clone();
        let b = close.sites.iter_mut().find(|s| s.site == "b").unwrap();
        b.test.as_mut().unwrap().accuracy = 0.75;
        let a = close.sites.iter_mut().find(|s| s.site == "a").unwrap();
        a.test.as_mut().unwrap().auc = Some(0.96);
        assert!(ModelCard::from_report(&close).warnings.is_empty());
    }

    #[test]
    fn markdown_names_every_site_the_epsilon_and_what_it_does_not_know() {
        let report = report(example_spec());
        let card = ModelCard::from_report(&report);
        let md = card.to_markdown();
        for s in &report.sites {
            assert!(md.contains(&format!("| {} |", s.site)), "{} missing:\n{md}", s.site);
        }
        let eps = report.privacy.epsilon_spent.unwrap();
        assert!(md.contains(&format!("Epsilon spent: {eps:.3} (the job allowed 8), delta 1e-5")), "{md}");
        assert!(md.contains(&report.job_id));
        assert!(md.contains(&card.intended_use));
        assert!(md.contains("| **all sites (federated)** | 105 | 0.790 |"), "{md}");
        assert!(md.contains("| a | 40 | 0.900 | 0.930 | 0.500 |"), "{md}");
        assert!(md.contains("| b | 60 | 0.700 | n/a |"), "{md}");
        assert!(md.contains("cp (categorical: 1, 2, 3, 4)") && md.contains("random sample of about 4% of"), "{md}");
        assert!(md.contains("Date: not recorded"));
        assert!(md.contains("Mutual TLS (every connection authenticated by a certificate from the federation's authority): not recorded"));
        assert!(md.contains("noised counts"));
        assert!(md.contains("not available: each site exports its own with `site-agent audit verify`"));
        // Short: one or two screens.
        assert!(md.lines().count() < 80, "{} lines", md.lines().count());
    }

    #[test]
    fn without_privacy_the_card_says_so_and_shows_a_batch_size() {
        let mut spec = example_spec();
        spec.privacy = fedcare_job::PrivacySpec::none();
        spec.model = ModelSpec::Mlp { hidden: vec![16, 8] };
        let mut report = report(spec);
        report.site_audit_heads.insert("a".into(), "aa11".into());
        let card = ModelCard::from_report(&report);
        assert_eq!(card.model.batch_size, Some(8));
        assert_eq!(card.model.sampling_rate, None);
        assert_eq!(card.model.hidden_layers, vec![16, 8]);
        assert_eq!(card.privacy.epsilon_spent, None);
        assert_eq!(card.data.train_counts, TrainCounts::Exact);
        let md = card.to_markdown();
        assert!(md.contains("No differential privacy"), "{md}");
        assert!(md.contains("batch size 8"), "{md}");
        assert!(md.contains("2 hidden layers of 16, 8 units"), "{md}");
        assert!(md.contains("| a | `aa11` |") && md.contains("| b | not available |"), "{md}");
    }
}
