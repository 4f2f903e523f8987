//! The messages of a round in domain types. `fedcare-server` and `fedcare-agent` convert them
//! to and from the wire (`fedcare.v1`); conversion is where malformed input is refused, so
//! values here are already well-formed (a valid [`SiteId`], a known task kind).

use std::fmt;
use std::sync::Arc;

use fedcare_data::{FeatureSums, Standardization};
use fedcare_job::JobId;
pub use fedcare_models::metrics::HIST_BINS;
use fedcare_models::metrics::auc_from_histograms;
use serde::{Deserialize, Serialize};

/// A site's name: 1 to 64 characters of `[A-Za-z0-9._-]`, so it is safe in logs, file names and
/// certificate subjects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SiteId(String);

impl SiteId {
    pub fn parse(s: &str) -> Result<SiteId, String> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if s.is_empty() || s.len() > 64 || !s.chars().all(ok_char) {
            return Err(format!(
                "site id {s:?} must be 1 to 64 characters of letters, digits, '.', '_' or '-'"
            ));
        }
        Ok(SiteId(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies one task within a job; a reply must cite the task it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId(pub u64);

/// A global model as one flat vector, with the digest of its layout (names and shapes).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelVector {
    pub layout_digest: String,
    pub values: Arc<Vec<f32>>,
}

/// A round's secure aggregation setup, as the coordinator sends it with the training task.
#[derive(Debug, Clone, PartialEq)]
pub struct SecAggRound {
    pub setup: fedcare_secagg::RoundSetup,
    /// Training examples over the job's participants: a site weights its update by
    /// `num_examples / total_examples` before masking, so the unmasked sum is the weighted sum.
    pub total_examples: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TaskKind {
    /// Join this job? The site answers with [`ReplyKind::Decision`].
    Offer { spec_toml: Arc<str> },
    /// Send aggregate feature sums of the training split.
    Stats,
    /// Train locally from this global model for one round. With `secagg`, the site answers
    /// with its round keys and sends its update only masked, later.
    Train { round: u32, model: ModelVector, standardization: Arc<Standardization>, secagg: Option<Arc<SecAggRound>> },
    /// Secure aggregation: every site's signed keys; answer with encrypted shares.
    ShareKeys { round: u32, keys: Arc<Vec<Vec<u8>>> },
    /// Secure aggregation: the shares addressed to this site; answer with the masked update.
    Mask { round: u32, shares: Vec<Vec<u8>> },
    /// Secure aggregation: survivors and dropouts; answer with the shares that unmask the sum.
    Unmask { round: u32, request: Vec<u8> },
    /// Evaluate this global model on the held-out split.
    Eval { round: u32, model: ModelVector, standardization: Arc<Standardization> },
    /// The job is over (for this site).
    End { success: bool, reason: String },
}

impl TaskKind {
    /// Short name for logs and progress.
    pub fn name(&self) -> &'static str {
        match self {
            TaskKind::Offer { .. } => "offer",
            TaskKind::Stats => "stats",
            TaskKind::Train { .. } => "train",
            TaskKind::Eval { .. } => "eval",
            TaskKind::End { .. } => "end",
            TaskKind::ShareKeys { .. } => "share-keys",
            TaskKind::Mask { .. } => "mask",
            TaskKind::Unmask { .. } => "unmask",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub job: JobId,
    pub id: TaskId,
    pub kind: TaskKind,
}

/// A site's model update for one round: local model minus the global model it started from.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelUpdate {
    pub round: u32,
    /// Training examples behind the update: its FedAvg weight.
    pub num_examples: u64,
    pub delta: Vec<f32>,
    pub train_loss: f64,
}

/// Held-out evaluation as aggregate counts, which add across sites.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalCounts {
    pub n: u64,
    pub loss_sum: f64,
    pub correct: u64,
    pub pos_hist: Vec<u64>,
    pub neg_hist: Vec<u64>,
    /// Sum of squared errors (p - y)^2: the Brier score's numerator, for calibration.
    #[serde(default)]
    pub sq_err_sum: f64,
    /// Positives predicted positive (p >= 0.5). With `false_pos`, the class totals from the
    /// histograms and `correct`, this gives the whole confusion matrix at threshold 0.5.
    #[serde(default)]
    pub true_pos: u64,
    /// Negatives predicted positive (p >= 0.5).
    #[serde(default)]
    pub false_pos: u64,
}

/// A site's evaluation as the counts it sends (the exact AUC travels beside them).
impl From<fedcare_models::metrics::Metrics> for EvalCounts {
    fn from(m: fedcare_models::metrics::Metrics) -> EvalCounts {
        EvalCounts {
            n: m.n,
            loss_sum: m.loss_sum,
            correct: m.correct,
            pos_hist: m.pos_hist,
            neg_hist: m.neg_hist,
            sq_err_sum: m.sq_err_sum,
            true_pos: m.true_pos,
            false_pos: m.false_pos,
        }
    }
}

/// The confusion matrix at threshold 0.5, from [`EvalCounts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub true_pos: u64,
    pub false_pos: u64,
    pub true_neg: u64,
    pub false_neg: u64,
}

impl EvalCounts {
    pub fn zero() -> EvalCounts {
        EvalCounts {
            n: 0,
            loss_sum: 0.0,
            correct: 0,
            pos_hist: vec![0; HIST_BINS],
            neg_hist: vec![0; HIST_BINS],
            sq_err_sum: 0.0,
            true_pos: 0,
            false_pos: 0,
        }
    }

    /// Positives and negatives, from the histograms.
    pub fn class_totals(&self) -> (u64, u64) {
        (self.pos_hist.iter().sum(), self.neg_hist.iter().sum())
    }

    /// The confusion matrix at threshold 0.5 (counts that [`validate`](Self::validate) has
    /// checked are consistent; saturating otherwise).
    pub fn confusion(&self) -> Confusion {
        let (pos, neg) = self.class_totals();
        Confusion {
            true_pos: self.true_pos,
            false_pos: self.false_pos,
            true_neg: neg.saturating_sub(self.false_pos),
            false_neg: pos.saturating_sub(self.true_pos),
        }
    }

    /// Mean squared error of the predicted probability (the Brier score; 0 is perfect, 0.25
    /// is a constant 0.5). NaN for no examples.
    pub fn brier(&self) -> f64 {
        if self.n == 0 { f64::NAN } else { self.sq_err_sum / self.n as f64 }
    }

    /// Checks internal consistency of counts received from a site.
    pub fn validate(&self) -> Result<(), String> {
        if self.n > crate::MAX_DECLARED_EXAMPLES {
            return Err(format!("n ({}) exceeds the limit of {}", self.n, crate::MAX_DECLARED_EXAMPLES));
        }
        if self.pos_hist.len() != HIST_BINS || self.neg_hist.len() != HIST_BINS {
            return Err(format!(
                "histograms must have {HIST_BINS} bins, got {} and {}",
                self.pos_hist.len(),
                self.neg_hist.len()
            ));
        }
        let hist_total: u64 = self.pos_hist.iter().chain(&self.neg_hist).try_fold(0u64, |a, &b| a.checked_add(b)).ok_or("histogram counts overflow")?;
        if hist_total != self.n {
            return Err(format!("histograms count {hist_total} examples but n is {}", self.n));
        }
        if self.correct > self.n {
            return Err(format!("correct ({}) exceeds n ({})", self.correct, self.n));
        }
        if !(self.loss_sum.is_finite() && self.loss_sum >= 0.0) {
            return Err(format!("loss sum {} is not a finite non-negative number", self.loss_sum));
        }
        // Each squared error is in [0, 1].
        if !(self.sq_err_sum.is_finite() && self.sq_err_sum >= 0.0 && self.sq_err_sum <= self.n as f64) {
            return Err(format!("squared-error sum {} is not in [0, n = {}]", self.sq_err_sum, self.n));
        }
        let (pos, neg) = self.class_totals();
        if self.true_pos > pos || self.false_pos > neg {
            return Err(format!(
                "confusion counts (true positives {}, false positives {}) exceed the class totals ({pos} positives, {neg} negatives)",
                self.true_pos, self.false_pos
            ));
        }
        if self.true_pos + (neg - self.false_pos) != self.correct {
            return Err(format!(
                "correct ({}) is not true positives ({}) plus true negatives ({})",
                self.correct,
                self.true_pos,
                neg - self.false_pos
            ));
        }
        Ok(())
    }

    /// Adds another site's counts. Each site's are bounded by `validate`, so these sums cannot
    /// overflow below 1.8e7 sites; they saturate rather than wrap or panic beyond.
    pub fn add(&mut self, other: &EvalCounts) {
        self.n = self.n.saturating_add(other.n);
        self.loss_sum += other.loss_sum;
        self.correct = self.correct.saturating_add(other.correct);
        self.sq_err_sum += other.sq_err_sum;
        self.true_pos = self.true_pos.saturating_add(other.true_pos);
        self.false_pos = self.false_pos.saturating_add(other.false_pos);
        for (a, b) in self.pos_hist.iter_mut().zip(&other.pos_hist) {
            *a = a.saturating_add(*b);
        }
        for (a, b) in self.neg_hist.iter_mut().zip(&other.neg_hist) {
            *a = a.saturating_add(*b);
        }
    }

    pub fn accuracy(&self) -> f64 {
        if self.n == 0 { f64::NAN } else { self.correct as f64 / self.n as f64 }
    }

    pub fn mean_loss(&self) -> f64 {
        if self.n == 0 { f64::NAN } else { self.loss_sum / self.n as f64 }
    }

    /// Pooled ROC AUC from the binned scores (ties within a bin count one half).
    pub fn auc(&self) -> Option<f64> {
        auc_from_histograms(&self.pos_hist, &self.neg_hist)
    }
}

/// One site's evaluation of one round's global model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub round: u32,
    pub counts: EvalCounts,
    /// Exact AUC on the site's split, computed at the site; `None` if a class is absent.
    pub auc: Option<f64>,
}

/// What a site may send. There is deliberately no variant that could carry a record.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyKind {
    Decision { accept: bool, reason: String },
    Stats(FeatureSums),
    Update(ModelUpdate),
    Evaluation(EvalReport),
    /// The site could not do the task (its data failed to load, training diverged ...).
    Failed { reason: String },
    /// Secure aggregation: the site's signed round keys and its FedAvg weight.
    Keys { round: u32, keys: Vec<u8>, num_examples: u64 },
    /// Secure aggregation: Shamir shares of the site's secrets, each encrypted to a neighbour.
    Shares { round: u32, shares: Vec<Vec<u8>> },
    /// Secure aggregation: the quantised, weighted update plus masks.
    Masked { round: u32, masked: Vec<u8> },
    /// Secure aggregation: the revealed shares.
    Unmasked { round: u32, response: Vec<u8> },
}

impl ReplyKind {
    pub fn name(&self) -> &'static str {
        match self {
            ReplyKind::Decision { .. } => "decision",
            ReplyKind::Stats(_) => "stats",
            ReplyKind::Update(_) => "update",
            ReplyKind::Evaluation(_) => "evaluation",
            ReplyKind::Failed { .. } => "failed",
            ReplyKind::Keys { .. } => "keys",
            ReplyKind::Shares { .. } => "shares",
            ReplyKind::Masked { .. } => "masked",
            ReplyKind::Unmasked { .. } => "unmasked",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub site: SiteId,
    pub job: JobId,
    pub task: TaskId,
    pub kind: ReplyKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_ids_are_restricted() {
        assert!(SiteId::parse("cleveland").is_ok());
        assert!(SiteId::parse("va-long_beach.1").is_ok());
        for bad in ["", "a b", "../etc", "x/y", &"a".repeat(65), "é"] {
            assert!(SiteId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn eval_counts_validate_and_add() {
        let mut a = EvalCounts::zero();
        a.n = 3;
        a.correct = 2;
        a.loss_sum = 1.5;
        a.pos_hist[90] = 2;
        a.neg_hist[10] = 1;
        // One positive right, one wrong; the negative right: 1 + 1 = 2 correct.
        a.true_pos = 1;
        a.false_pos = 0;
        a.sq_err_sum = 0.9;
        assert!(a.validate().is_ok());
        let mut total = EvalCounts::zero();
        total.add(&a);
        total.add(&a);
        assert_eq!(total.n, 6);
        assert_eq!(total.correct, 4);
        assert_eq!(total.confusion(), Confusion { true_pos: 2, false_pos: 0, true_neg: 2, false_neg: 2 });
        assert!((total.brier() - 0.3).abs() < 1e-12);
        assert_eq!(total.pos_hist[90], 4);
        assert!((total.accuracy() - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(total.auc(), Some(1.0));

        let mut bad = a.clone();
        bad.n = 4;
        assert!(bad.validate().unwrap_err().contains("histograms count 3"));
        let mut bad = a.clone();
        bad.correct = 9;
        assert!(bad.validate().is_err());
        let mut bad = a.clone();
        bad.loss_sum = f64::NAN;
        assert!(bad.validate().is_err());
        let mut bad = a.clone();
        bad.true_pos = 2;
        assert!(bad.validate().unwrap_err().contains("is not true positives"));
        let mut bad = a.clone();
        bad.false_pos = 2;
        assert!(bad.validate().unwrap_err().contains("exceed the class totals"));
        let mut bad = a.clone();
        bad.sq_err_sum = 3.5;
        assert!(bad.validate().unwrap_err().contains("squared-error sum"));
        let mut bad = a;
        bad.pos_hist.pop();
        assert!(bad.validate().is_err());
    }
}
