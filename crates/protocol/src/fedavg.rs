//! Federated averaging (McMahan et al. 2017), streaming: memory is one running sum the size of
//! the model, however many sites report, and each update is folded in as it arrives.

/// Weighted running sum of model deltas.
#[derive(Debug, Clone)]
pub struct FedAvg {
    /// The model's length.
    len: usize,
    /// Sum of `num_examples * delta`, in f64 so the order in which sites arrive does not change
    /// the result beyond the last bits of an f32. Allocated with the first update: a secure
    /// round never adds a plain update, and a large model's sum would be wasted memory.
    weighted_sum: Vec<f64>,
    total_examples: u64,
    /// Sum of `num_examples * train_loss`.
    weighted_loss: f64,
    updates: u32,
}

/// Why an update cannot be folded in.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpdateError {
    #[error("update has {got} values but the model has {expected}")]
    WrongLength { expected: usize, got: usize },
    #[error("update value at index {index} is not finite ({value})")]
    NonFinite { index: usize, value: f32 },
    #[error("update is based on 0 training examples")]
    NoExamples,
    #[error("training loss {0} is not a finite non-negative number")]
    BadLoss(f64),
    #[error("update declares {0} training examples, above the limit of {max}", max = crate::MAX_DECLARED_EXAMPLES)]
    TooManyExamples(u64),
}

impl FedAvg {
    pub fn new(model_len: usize) -> FedAvg {
        FedAvg { len: model_len, weighted_sum: Vec::new(), total_examples: 0, weighted_loss: 0.0, updates: 0 }
    }

    /// Checks an update without changing anything; [`FedAvg::add`] calls it first.
    pub fn check(&self, delta: &[f32], num_examples: u64, train_loss: f64) -> Result<(), UpdateError> {
        if delta.len() != self.len {
            return Err(UpdateError::WrongLength { expected: self.len, got: delta.len() });
        }
        if let Some((index, &value)) = delta.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(UpdateError::NonFinite { index, value });
        }
        if num_examples == 0 {
            return Err(UpdateError::NoExamples);
        }
        if num_examples > crate::MAX_DECLARED_EXAMPLES || self.total_examples.checked_add(num_examples).is_none() {
            return Err(UpdateError::TooManyExamples(num_examples));
        }
        if !(train_loss.is_finite() && train_loss >= 0.0) {
            return Err(UpdateError::BadLoss(train_loss));
        }
        Ok(())
    }

    /// Folds in one site's update, or changes nothing and says why.
    pub fn add(&mut self, delta: &[f32], num_examples: u64, train_loss: f64) -> Result<(), UpdateError> {
        self.check(delta, num_examples, train_loss)?;
        if self.weighted_sum.is_empty() {
            self.weighted_sum = vec![0.0; self.len];
        }
        let w = num_examples as f64;
        for (s, &d) in self.weighted_sum.iter_mut().zip(delta) {
            *s += w * f64::from(d);
        }
        self.total_examples += num_examples;
        self.weighted_loss += w * train_loss;
        self.updates += 1;
        Ok(())
    }

    pub fn updates(&self) -> u32 {
        self.updates
    }

    pub fn total_examples(&self) -> u64 {
        self.total_examples
    }

    /// Example-weighted mean training loss, NaN with no updates.
    pub fn mean_train_loss(&self) -> f64 {
        self.weighted_loss / self.total_examples as f64
    }

    /// The next global model: `global + sum(n_i * delta_i) / sum(n_i)`. With no updates the
    /// model is unchanged.
    pub fn apply(&self, global: &[f32]) -> Vec<f32> {
        if self.total_examples == 0 {
            return global.to_vec();
        }
        let total = self.total_examples as f64;
        global.iter().zip(&self.weighted_sum).map(|(&g, &s)| (f64::from(g) + s / total) as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn weighted_by_examples() {
        let mut agg = FedAvg::new(2);
        agg.add(&[1.0, 0.0], 1, 0.5).unwrap();
        agg.add(&[0.0, 4.0], 3, 1.0).unwrap();
        // (1*1 + 3*0)/4 = 0.25 ; (1*0 + 3*4)/4 = 3.0
        assert_eq!(agg.apply(&[10.0, 10.0]), vec![10.25, 13.0]);
        assert!((agg.mean_train_loss() - (0.5 + 3.0) / 4.0).abs() < 1e-12);
        assert_eq!(agg.updates(), 2);
    }

    #[test]
    fn bad_updates_change_nothing() {
        let mut agg = FedAvg::new(2);
        agg.add(&[1.0, 1.0], 2, 0.1).unwrap();
        let before = agg.apply(&[0.0, 0.0]);
        assert_eq!(agg.add(&[1.0], 1, 0.1), Err(UpdateError::WrongLength { expected: 2, got: 1 }));
        assert!(matches!(agg.add(&[1.0, f32::NAN], 1, 0.1), Err(UpdateError::NonFinite { index: 1, .. })));
        assert!(matches!(agg.add(&[f32::INFINITY, 0.0], 1, 0.1), Err(UpdateError::NonFinite { index: 0, .. })));
        assert_eq!(agg.add(&[1.0, 1.0], 0, 0.1), Err(UpdateError::NoExamples));
        assert!(matches!(agg.add(&[1.0, 1.0], 1, f64::NAN), Err(UpdateError::BadLoss(_))));
        let too_many = crate::MAX_DECLARED_EXAMPLES + 1;
        assert_eq!(agg.add(&[1.0, 1.0], too_many, 0.1), Err(UpdateError::TooManyExamples(too_many)));
        assert_eq!(agg.add(&[1.0, 1.0], u64::MAX, 0.1), Err(UpdateError::TooManyExamples(u64::MAX)));
        assert_eq!(agg.apply(&[0.0, 0.0]), before);
        assert_eq!(agg.updates(), 1);
        assert_eq!(agg.total_examples(), 2);
    }

    proptest! {
        /// FedAvg of deltas equals the example-weighted mean of the sites' local models.
        #[test]
        fn equals_weighted_mean_of_models(
            global in prop::collection::vec(-10.0f32..10.0, 3),
            sites in prop::collection::vec((prop::collection::vec(-10.0f32..10.0, 3), 1u64..500), 1..8),
        ) {
            let mut agg = FedAvg::new(3);
            for (local, n) in &sites {
                let delta: Vec<f32> = local.iter().zip(&global).map(|(l, g)| l - g).collect();
                agg.add(&delta, *n, 0.0).unwrap();
            }
            let total: u64 = sites.iter().map(|(_, n)| n).sum();
            let next = agg.apply(&global);
            for j in 0..3 {
                let want: f64 = sites.iter().map(|(l, n)| f64::from(l[j]) * *n as f64).sum::<f64>() / total as f64;
                prop_assert!((f64::from(next[j]) - want).abs() < 1e-3, "{} vs {}", next[j], want);
            }
        }
    }
}
