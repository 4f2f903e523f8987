//! Held-out evaluation. Everything in [`Metrics`] is a sum or a count, so sites' metrics can be
//! pooled by adding them up ([`Metrics::merge`]) without sharing any individual score; the
//! pooled AUC then comes from the merged histograms.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Number of equal-width probability bins over `[0, 1]` in the score histograms.
pub const HIST_BINS: usize = 100;

/// Probabilities are clamped to `[EPS, 1 - EPS]` in the loss so a confident mistake costs a
/// large but finite amount.
const EPS: f64 = 1e-7;

/// Evaluation of one site's (or pooled) held-out predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Number of rows.
    pub n: u64,
    /// Sum of per-row binary cross-entropy.
    pub loss_sum: f64,
    /// Rows classified correctly at threshold 0.5 (p >= 0.5 predicts 1).
    pub correct: u64,
    /// Exact ROC AUC; `None` when one class is absent.
    pub auc: Option<f64>,
    /// Counts of positives' predicted probabilities in [`HIST_BINS`] equal bins over `[0, 1]`.
    pub pos_hist: Vec<u64>,
    /// Same for negatives.
    pub neg_hist: Vec<u64>,
    /// Sum of (p - y)^2 over rows (the Brier score's numerator).
    #[serde(default)]
    pub sq_err_sum: f64,
    /// Positives with p >= 0.5.
    #[serde(default)]
    pub true_pos: u64,
    /// Negatives with p >= 0.5.
    #[serde(default)]
    pub false_pos: u64,
}

impl Metrics {
    /// Fraction correct at threshold 0.5 (0 when there are no rows).
    pub fn accuracy(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.correct as f64 / self.n as f64
        }
    }

    /// Mean binary cross-entropy (0 when there are no rows).
    pub fn mean_loss(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.loss_sum / self.n as f64
        }
    }

    /// Pools two evaluations. The pooled AUC is [`auc_from_histograms`] of the summed
    /// histograms, since exact scores are not shared between sites.
    pub fn merge(&self, other: &Metrics) -> Metrics {
        let add = |a: &[u64], b: &[u64]| -> Vec<u64> {
            (0..a.len().max(b.len()))
                .map(|i| a.get(i).copied().unwrap_or(0) + b.get(i).copied().unwrap_or(0))
                .collect()
        };
        let pos_hist = add(&self.pos_hist, &other.pos_hist);
        let neg_hist = add(&self.neg_hist, &other.neg_hist);
        Metrics {
            n: self.n + other.n,
            loss_sum: self.loss_sum + other.loss_sum,
            correct: self.correct + other.correct,
            auc: auc_from_histograms(&pos_hist, &neg_hist),
            pos_hist,
            neg_hist,
            sq_err_sum: self.sq_err_sum + other.sq_err_sum,
            true_pos: self.true_pos + other.true_pos,
            false_pos: self.false_pos + other.false_pos,
        }
    }
}

/// Histogram bin of a probability: `floor(p * HIST_BINS)` computed in f32 (so that e.g.
/// `0.01f32` lands in bin 1, as a reader expects), with p = 1 in the last bin. NaN lands in
/// bin 0 (a float-to-int cast saturates NaN to 0).
pub fn bin_of(p: f32) -> usize {
    ((p.clamp(0.0, 1.0) * HIST_BINS as f32) as usize).min(HIST_BINS - 1)
}

/// Evaluates probabilities against 0/1 labels (a label > 0.5 counts as positive).
/// Pairs past the shorter slice are ignored; use [`try_evaluate`] to have that be an error.
pub fn evaluate(probs: &[f32], labels: &[f32]) -> Metrics {
    let mut m = Metrics {
        n: 0,
        loss_sum: 0.0,
        correct: 0,
        auc: None,
        pos_hist: vec![0; HIST_BINS],
        neg_hist: vec![0; HIST_BINS],
        sq_err_sum: 0.0,
        true_pos: 0,
        false_pos: 0,
    };
    let mut scored: Vec<(f32, bool)> = Vec::with_capacity(probs.len().min(labels.len()));
    for (&p, &y) in probs.iter().zip(labels) {
        let pos = y > 0.5;
        let pc = (p as f64).clamp(EPS, 1.0 - EPS);
        m.n += 1;
        m.loss_sum += if pos { -pc.ln() } else { -(1.0 - pc).ln() };
        let predicted = p >= 0.5;
        if predicted == pos {
            m.correct += 1;
        }
        match (predicted, pos) {
            (true, true) => m.true_pos += 1,
            (true, false) => m.false_pos += 1,
            _ => {}
        }
        // The probability as a probability: clamped into [0, 1] (NaN counts as 0.5, the
        // uninformative prediction) so each term stays in [0, 1].
        let pb = if p.is_nan() { 0.5 } else { (p as f64).clamp(0.0, 1.0) };
        m.sq_err_sum += (pb - if pos { 1.0 } else { 0.0 }).powi(2);
        let b = bin_of(p);
        if pos {
            m.pos_hist[b] += 1;
        } else {
            m.neg_hist[b] += 1;
        }
        scored.push((p, pos));
    }
    m.auc = exact_auc(&mut scored);
    m
}

/// [`evaluate`], but unequal lengths are an error.
pub fn try_evaluate(probs: &[f32], labels: &[f32]) -> Result<Metrics, ModelError> {
    if probs.len() != labels.len() {
        return Err(ModelError::LengthMismatch {
            expected: labels.len(),
            got: probs.len(),
        });
    }
    Ok(evaluate(probs, labels))
}

/// Mann-Whitney AUC: the probability that a random positive scores above a random negative,
/// ties counting 1/2. Sorting once makes it O(n log n).
fn exact_auc(scored: &mut [(f32, bool)]) -> Option<f64> {
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n_pos = scored.iter().filter(|s| s.1).count() as f64;
    let n_neg = scored.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return None;
    }
    let mut num = 0.0f64;
    let mut neg_below = 0.0f64;
    let mut i = 0;
    while i < scored.len() {
        let mut j = i;
        let (mut pos_tie, mut neg_tie) = (0.0f64, 0.0f64);
        while j < scored.len() && scored[j].0.total_cmp(&scored[i].0).is_eq() {
            if scored[j].1 {
                pos_tie += 1.0;
            } else {
                neg_tie += 1.0;
            }
            j += 1;
        }
        num += pos_tie * (neg_below + 0.5 * neg_tie);
        neg_below += neg_tie;
        i = j;
    }
    Some(num / (n_pos * n_neg))
}

/// AUC from merged histograms (pooled over sites without sharing scores): bins are ordered by
/// score and scores within one bin count as ties (1/2). `None` if one class is absent or the
/// histograms differ in length. The error against the exact AUC is at most half the fraction
/// of positive/negative pairs that share a bin.
pub fn auc_from_histograms(pos: &[u64], neg: &[u64]) -> Option<f64> {
    if pos.len() != neg.len() {
        return None;
    }
    let n_pos: f64 = pos.iter().map(|&c| c as f64).sum();
    let n_neg: f64 = neg.iter().map(|&c| c as f64).sum();
    if n_pos == 0.0 || n_neg == 0.0 {
        return None;
    }
    let mut num = 0.0f64;
    let mut neg_below = 0.0f64;
    for (&p, &n) in pos.iter().zip(neg) {
        num += p as f64 * (neg_below + 0.5 * n as f64);
        neg_below += n as f64;
    }
    Some(num / (n_pos * n_neg))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// O(n^2) definition: P(score_pos > score_neg) + 1/2 P(equal).
    fn brute_auc(probs: &[f32], labels: &[f32]) -> f64 {
        let (mut num, mut den) = (0.0, 0.0);
        for (p, y) in probs.iter().zip(labels) {
            for (q, z) in probs.iter().zip(labels) {
                if *y == 1.0 && *z == 0.0 {
                    den += 1.0;
                    num += if p > q {
                        1.0
                    } else if p == q {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        num / den
    }

    #[test]
    fn brier_and_confusion_hand_computed() {
        // p:     0.9  0.6  0.4  0.2  0.5
        // y:     1    0    1    0    0
        // pred:  1    1    0    0    1   -> TP 1, FP 2, TN 1, FN 1; correct 2
        // (p-y)^2: 0.01 0.36 0.36 0.04 0.25 = 1.02
        let m = evaluate(&[0.9, 0.6, 0.4, 0.2, 0.5], &[1.0, 0.0, 1.0, 0.0, 0.0]);
        assert_eq!((m.true_pos, m.false_pos, m.correct), (1, 2, 2));
        assert!((m.sq_err_sum - 1.02).abs() < 1e-6, "{}", m.sq_err_sum);
        // Out-of-range and NaN probabilities still give terms in [0, 1].
        let odd = evaluate(&[f32::NAN, 2.0], &[1.0, 0.0]);
        assert!((odd.sq_err_sum - 1.25).abs() < 1e-9, "{}", odd.sq_err_sum);
    }

    #[test]
    fn auc_hand_computed() {
        let m = evaluate(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]);
        assert_eq!(m.auc, Some(0.75));
        assert_eq!(m.n, 4);
        // 0.1->0 ok, 0.4->0 ok, 0.35->0 wrong, 0.8->1 ok
        assert_eq!(m.correct, 3);
        assert_eq!(m.accuracy(), 0.75);
        let expect = -(0.9f64.ln() + 0.6f64.ln() + 0.35f64.ln() + 0.8f64.ln());
        assert!(
            (m.loss_sum - expect).abs() < 1e-6,
            "{} vs {expect}",
            m.loss_sum
        );
        assert!((m.mean_loss() - expect / 4.0).abs() < 1e-6);
    }

    #[test]
    fn auc_with_ties() {
        // pos {0.5, 0.7}, neg {0.5, 0.2}: pairs (0.5,0.5)=1/2, (0.5,0.2)=1, (0.7,0.5)=1, (0.7,0.2)=1
        let m = evaluate(&[0.5, 0.7, 0.5, 0.2], &[1.0, 1.0, 0.0, 0.0]);
        assert_eq!(m.auc, Some(3.5 / 4.0));
        // All tied -> 0.5.
        assert_eq!(evaluate(&[0.3; 4], &[1.0, 0.0, 1.0, 0.0]).auc, Some(0.5));
        // One class absent.
        assert_eq!(evaluate(&[0.3, 0.9], &[1.0, 1.0]).auc, None);
        assert_eq!(evaluate(&[], &[]).auc, None);
        assert_eq!(evaluate(&[], &[]).accuracy(), 0.0);
    }

    #[test]
    fn exact_auc_matches_brute_force() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        for _ in 0..20 {
            let n = rng.random_range(2..60);
            // Coarse scores so there are many ties.
            let probs: Vec<f32> = (0..n)
                .map(|_| rng.random_range(0..10) as f32 / 10.0)
                .collect();
            let labels: Vec<f32> = (0..n).map(|_| rng.random_range(0..2) as f32).collect();
            let m = evaluate(&probs, &labels);
            match m.auc {
                Some(a) => assert!((a - brute_auc(&probs, &labels)).abs() < 1e-12),
                None => assert!(labels.iter().all(|l| *l == labels[0])),
            }
        }
    }

    #[test]
    fn histograms_count_and_bin_edges() {
        let m = evaluate(
            &[0.0, 0.005, 0.01, 0.999, 1.0, 0.5],
            &[1.0, 1.0, 0.0, 0.0, 1.0, 0.0],
        );
        assert_eq!(m.pos_hist.len(), HIST_BINS);
        assert_eq!(m.neg_hist.len(), HIST_BINS);
        assert_eq!(m.pos_hist[0], 2);
        assert_eq!(m.neg_hist[1], 1);
        assert_eq!(m.neg_hist[99], 1);
        assert_eq!(m.pos_hist[99], 1);
        assert_eq!(m.neg_hist[50], 1);
        assert_eq!(
            m.pos_hist.iter().sum::<u64>() + m.neg_hist.iter().sum::<u64>(),
            m.n
        );
    }

    #[test]
    fn histogram_auc_close_to_exact_and_pools() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        let n = 2000;
        let labels: Vec<f32> = (0..n).map(|_| rng.random_range(0..2) as f32).collect();
        let probs: Vec<f32> = labels
            .iter()
            .map(|y| 0.35 * y + rng.random_range(0.0f32..0.65))
            .collect();
        let m = evaluate(&probs, &labels);
        let exact = m.auc.unwrap();
        let approx = auc_from_histograms(&m.pos_hist, &m.neg_hist).unwrap();
        assert!((exact - approx).abs() < 0.01, "{exact} vs {approx}");
        // Pooling two halves through merge gives the histogram AUC of the whole.
        let a = evaluate(&probs[..n / 2], &labels[..n / 2]);
        let b = evaluate(&probs[n / 2..], &labels[n / 2..]);
        let pooled = a.merge(&b);
        assert_eq!(pooled.n, m.n);
        assert_eq!(pooled.correct, m.correct);
        assert_eq!(pooled.pos_hist, m.pos_hist);
        assert!((pooled.auc.unwrap() - approx).abs() < 1e-12);
        assert!((pooled.loss_sum - m.loss_sum).abs() < 1e-9);
    }

    #[test]
    fn histogram_auc_edge_cases() {
        assert_eq!(auc_from_histograms(&[1, 0], &[0, 1]), Some(0.0));
        assert_eq!(auc_from_histograms(&[0, 1], &[1, 0]), Some(1.0));
        assert_eq!(auc_from_histograms(&[1, 1], &[1, 1]), Some(0.5));
        assert_eq!(auc_from_histograms(&[0, 0], &[1, 1]), None);
        assert_eq!(auc_from_histograms(&[1], &[1, 1]), None);
        assert!(try_evaluate(&[0.1], &[]).is_err());
    }
}
