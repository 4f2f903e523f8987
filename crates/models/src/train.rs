use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor, TensorData};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::net::Net;
use crate::{FlatParams, ModelError, ModelSpec, layout};

/// Which Burn optimiser runs the local steps. A fresh optimiser (no momentum carried over) is
/// made for every call to [`train`], as in FedAvg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

/// Local training settings for one round at one site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the local data; at least 1.
    pub local_epochs: usize,
    /// Rows per optimiser step (the last batch of an epoch may be smaller); at least 1.
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    /// Step size; finite and > 0.
    pub learning_rate: f64,
    /// Seeds the per-epoch shuffles, so a round can be replayed exactly.
    pub seed: u64,
}

/// Result of [`train`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    /// The trained parameters, in the same layout as `start`.
    pub params: FlatParams,
    /// Mean per-row binary cross-entropy over the last epoch, measured on each batch just
    /// before its step (the usual "training loss").
    pub mean_loss: f64,
    /// Number of optimiser steps taken.
    pub steps: usize,
}

/// Checks spec, layout and data shapes; returns the number of rows.
pub(crate) fn check_inputs(
    spec: &ModelSpec,
    params: &FlatParams,
    features: &[f32],
    n_features: usize,
) -> Result<usize, ModelError> {
    spec.validate()?;
    if n_features == 0 {
        return Err(ModelError::Shape("n_features must be at least 1".into()));
    }
    params.check_layout(&layout(spec, n_features))?;
    if !features.len().is_multiple_of(n_features) {
        return Err(ModelError::Shape(format!(
            "{} feature values is not a whole number of rows of {n_features}",
            features.len()
        )));
    }
    let rows = features.len() / n_features;
    if rows == 0 {
        return Err(ModelError::EmptyData);
    }
    if let Some(index) = features.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::NonFiniteInput { index });
    }
    Ok(rows)
}

/// Checks one label per row, each exactly 0.0 or 1.0.
pub(crate) fn check_labels(labels: &[f32], rows: usize) -> Result<(), ModelError> {
    if labels.len() != rows {
        return Err(ModelError::Shape(format!(
            "{} labels for {rows} rows",
            labels.len()
        )));
    }
    if let Some((index, &value)) = labels
        .iter()
        .enumerate()
        .find(|(_, v)| **v != 0.0 && **v != 1.0)
    {
        return Err(ModelError::InvalidLabel { index, value });
    }
    Ok(())
}

/// Numerically stable binary cross-entropy on logits, per row:
/// `max(z, 0) - z*y + log(1 + exp(-|z|))`. Never evaluates `exp` of a large positive number.
pub(crate) fn bce_with_logits(z: Tensor<2>, y: Tensor<2>) -> Tensor<2> {
    let pos = z.clone().clamp_min(0.0);
    let zy = z.clone() * y;
    let soft = z.abs().neg().exp().log1p();
    pos - zy + soft
}

/// In-place Fisher-Yates shuffle driven by ChaCha (own code, so the permutation for a seed is
/// fixed by this crate rather than by a `rand` version).
fn shuffle(idx: &mut [usize], rng: &mut ChaCha20Rng) {
    for i in (1..idx.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
}

/// Local training with Burn on the flex CPU backend with autodiff; see the crate docs.
/// `features` is row-major `n_rows x n_features`, `labels` are 0.0/1.0, one per row.
pub fn train(
    spec: &ModelSpec,
    start: &FlatParams,
    features: &[f32],
    n_features: usize,
    labels: &[f32],
    cfg: &TrainConfig,
) -> Result<TrainOutcome, ModelError> {
    let rows = check_inputs(spec, start, features, n_features)?;
    check_labels(labels, rows)?;
    if cfg.local_epochs == 0 {
        return Err(ModelError::InvalidConfig(
            "local_epochs must be >= 1".into(),
        ));
    }
    if cfg.batch_size == 0 {
        return Err(ModelError::InvalidConfig("batch_size must be >= 1".into()));
    }
    if !(cfg.learning_rate.is_finite() && cfg.learning_rate > 0.0) {
        return Err(ModelError::InvalidConfig(format!(
            "learning_rate must be finite and > 0, got {}",
            cfg.learning_rate
        )));
    }

    let device = Device::flex().autodiff();
    let mut model = Net::from_flat(spec, n_features, start, &device);
    let mut optim = match cfg.optimizer {
        OptimizerKind::Sgd => SgdConfig::new().init(),
        OptimizerKind::Adam => AdamConfig::new().init(),
    };
    let mut rng = ChaCha20Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..rows).collect();
    let batch = cfg.batch_size.min(rows);
    let mut xb = Vec::with_capacity(batch * n_features);
    let mut yb = Vec::with_capacity(batch);
    let mut steps = 0;
    let mut epoch_loss = 0.0f64;

    for _ in 0..cfg.local_epochs {
        shuffle(&mut order, &mut rng);
        epoch_loss = 0.0;
        for chunk in order.chunks(batch) {
            xb.clear();
            yb.clear();
            for &r in chunk {
                xb.extend_from_slice(&features[r * n_features..(r + 1) * n_features]);
                yb.push(labels[r]);
            }
            let n = chunk.len();
            let x = Tensor::<2>::from_data(TensorData::new(xb.clone(), [n, n_features]), &device);
            let y = Tensor::<2>::from_data(TensorData::new(yb.clone(), [n, 1]), &device);
            let loss = bce_with_logits(model.forward(x), y).mean();
            let value: f32 = loss.clone().into_scalar();
            epoch_loss += value as f64 * n as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(cfg.learning_rate, model, grads);
            steps += 1;
        }
    }

    // A diverged run (NaN/inf weights) is reported by FlatParams::new as NonFinite.
    let params = model.valid().to_flat(spec, n_features)?;
    Ok(TrainOutcome {
        params,
        mean_loss: epoch_loss / rows as f64,
        steps,
    })
}

/// Probabilities `P(y = 1)` for each row, on the flex backend without autodiff.
pub fn predict(
    spec: &ModelSpec,
    params: &FlatParams,
    features: &[f32],
    n_features: usize,
) -> Result<Vec<f32>, ModelError> {
    let rows = check_inputs(spec, params, features, n_features)?;
    let device = Device::flex();
    let model = Net::from_flat(spec, n_features, params, &device);
    let x = Tensor::<2>::from_data(
        TensorData::new(features.to_vec(), [rows, n_features]),
        &device,
    );
    let probs = sigmoid(model.forward(x));
    probs
        .try_into_data()
        .map_err(|e| ModelError::Backend(format!("{e:?}")))?
        .try_to_vec::<f32>()
        .map_err(|e| ModelError::Backend(format!("{e:?}")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{evaluate, init};

    /// Linearly separable data with a margin: label = [w.x + 0.3 > 0], rows too close to the
    /// boundary are dropped.
    pub(crate) fn separable(rows: usize, d: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        use rand::Rng;
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let w: Vec<f32> = (0..d)
            .map(|i| if i % 2 == 0 { 1.0 } else { -0.5 })
            .collect();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        while y.len() < rows {
            let row: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let s: f32 = row.iter().zip(&w).map(|(a, b)| a * b).sum::<f32>() + 0.3;
            if s.abs() < 0.2 {
                continue;
            }
            x.extend(row);
            y.push(if s > 0.0 { 1.0 } else { 0.0 });
        }
        (x, y)
    }

    fn cfg(optimizer: OptimizerKind, lr: f64, epochs: usize) -> TrainConfig {
        TrainConfig {
            local_epochs: epochs,
            batch_size: 32,
            optimizer,
            learning_rate: lr,
            seed: 11,
        }
    }

    fn check_learns(spec: ModelSpec, c: TrainConfig) {
        let d = 13;
        let (x, y) = separable(200, d, 1);
        let start = init(&spec, d, 5);
        let before = evaluate(&predict(&spec, &start, &x, d).unwrap(), &y);
        let out = train(&spec, &start, &x, d, &y, &c).unwrap();
        assert_eq!(out.steps, c.local_epochs * 200usize.div_ceil(32));
        assert_eq!(out.params.layout, start.layout);
        let after = evaluate(&predict(&spec, &out.params, &x, d).unwrap(), &y);
        assert!(
            after.mean_loss() < before.mean_loss() * 0.7,
            "{spec:?}: loss {} -> {}",
            before.mean_loss(),
            after.mean_loss()
        );
        assert!(
            after.accuracy() > 0.9,
            "{spec:?}: accuracy {}",
            after.accuracy()
        );
        assert!(out.mean_loss.is_finite() && out.mean_loss < before.mean_loss());
    }

    #[test]
    fn logistic_regression_learns_with_sgd_and_adam() {
        check_learns(
            ModelSpec::LogisticRegression,
            cfg(OptimizerKind::Sgd, 0.5, 20),
        );
        check_learns(
            ModelSpec::LogisticRegression,
            cfg(OptimizerKind::Adam, 0.05, 20),
        );
    }

    #[test]
    fn mlp_learns_with_adam_and_sgd() {
        check_learns(
            ModelSpec::Mlp {
                hidden: vec![16, 8],
            },
            cfg(OptimizerKind::Adam, 0.01, 20),
        );
        check_learns(
            ModelSpec::Mlp { hidden: vec![16] },
            cfg(OptimizerKind::Sgd, 0.2, 30),
        );
    }

    #[test]
    fn training_is_deterministic_for_a_seed() {
        let spec = ModelSpec::Mlp { hidden: vec![8] };
        let (x, y) = separable(100, 5, 2);
        let start = init(&spec, 5, 1);
        let c = cfg(OptimizerKind::Adam, 0.01, 3);
        let a = train(&spec, &start, &x, 5, &y, &c).unwrap();
        let b = train(&spec, &start, &x, 5, &y, &c).unwrap();
        assert_eq!(a.params.values, b.params.values);
        let c2 = TrainConfig { seed: 12, ..c };
        let other = train(&spec, &start, &x, 5, &y, &c2).unwrap();
        assert_ne!(a.params.values, other.params.values);
    }

    #[test]
    fn predict_matches_hand_computed_sigmoid() {
        let spec = ModelSpec::LogisticRegression;
        let l = layout(&spec, 3);
        let p = FlatParams::new(l, vec![0.5, -1.0, 2.0, 0.25]).unwrap();
        let x = [1.0, 2.0, 3.0, -1.0, 0.0, 0.5, 0.0, 0.0, 0.0];
        let got = predict(&spec, &p, &x, 3).unwrap();
        assert_eq!(got.len(), 3);
        for (r, g) in got.iter().enumerate() {
            let row = &x[r * 3..r * 3 + 3];
            let z = 0.5 * row[0] as f64 - row[1] as f64 + 2.0 * row[2] as f64 + 0.25;
            let want = 1.0 / (1.0 + (-z).exp());
            assert!((*g as f64 - want).abs() < 1e-6, "row {r}: {g} vs {want}");
        }
    }

    #[test]
    fn bce_is_stable_for_huge_logits() {
        let device = Device::flex();
        let z = Tensor::<2>::from_data(
            TensorData::new(vec![1000.0f32, -1000.0, 0.0], [3, 1]),
            &device,
        );
        let y = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 0.0, 1.0], [3, 1]), &device);
        let v = bce_with_logits(z, y)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(v[0], 1000.0);
        assert_eq!(v[1], 0.0);
        assert!((v[2] - std::f32::consts::LN_2).abs() < 1e-6);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let spec = ModelSpec::LogisticRegression;
        let p = init(&spec, 3, 0);
        let c = cfg(OptimizerKind::Sgd, 0.1, 1);
        let x = [0.0f32; 6];
        let y = [0.0f32, 1.0];
        assert!(matches!(
            train(&spec, &p, &x[..5], 3, &y, &c),
            Err(ModelError::Shape(_))
        ));
        assert!(matches!(
            train(&spec, &p, &x, 3, &y[..1], &c),
            Err(ModelError::Shape(_))
        ));
        assert_eq!(
            train(&spec, &p, &[], 3, &[], &c).unwrap_err(),
            ModelError::EmptyData
        );
        let mut nan = x;
        nan[4] = f32::NAN;
        assert_eq!(
            train(&spec, &p, &nan, 3, &y, &c).unwrap_err(),
            ModelError::NonFiniteInput { index: 4 }
        );
        assert_eq!(
            predict(&spec, &p, &nan, 3).unwrap_err(),
            ModelError::NonFiniteInput { index: 4 }
        );
        assert_eq!(
            train(&spec, &p, &x, 3, &[0.0, 0.5], &c).unwrap_err(),
            ModelError::InvalidLabel {
                index: 1,
                value: 0.5
            }
        );
        // Parameters for another feature count or model.
        assert!(matches!(
            train(&spec, &init(&spec, 4, 0), &x, 3, &y, &c),
            Err(ModelError::LayoutMismatch { .. })
        ));
        let mlp = ModelSpec::Mlp { hidden: vec![2] };
        assert!(matches!(
            predict(&mlp, &p, &x, 3),
            Err(ModelError::LayoutMismatch { .. })
        ));
        assert!(matches!(
            predict(&spec, &p, &x, 0),
            Err(ModelError::Shape(_))
        ));
        for bad in [
            TrainConfig {
                batch_size: 0,
                ..c.clone()
            },
            TrainConfig {
                local_epochs: 0,
                ..c.clone()
            },
            TrainConfig {
                learning_rate: f64::NAN,
                ..c.clone()
            },
            TrainConfig {
                learning_rate: -1.0,
                ..c.clone()
            },
        ] {
            assert!(matches!(
                train(&spec, &p, &x, 3, &y, &bad),
                Err(ModelError::InvalidConfig(_))
            ));
        }
        assert!(matches!(
            train(&ModelSpec::Mlp { hidden: vec![] }, &p, &x, 3, &y, &c),
            Err(ModelError::InvalidSpec(_))
        ));
    }

    #[test]
    fn batch_larger_than_data_and_single_row_work() {
        let spec = ModelSpec::LogisticRegression;
        let p = init(&spec, 2, 0);
        let c = TrainConfig {
            batch_size: 1000,
            ..cfg(OptimizerKind::Sgd, 0.1, 2)
        };
        let out = train(&spec, &p, &[1.0, 2.0], 2, &[1.0], &c).unwrap();
        assert_eq!(out.steps, 2);
    }

    #[test]
    fn concurrent_sites_get_the_same_result_as_sequential() {
        // The simulator trains several sites in one process; Burn must not share state between
        // them.
        let spec = ModelSpec::Mlp { hidden: vec![8] };
        let c = cfg(OptimizerKind::Adam, 0.01, 2);
        let data: Vec<_> = (0..4).map(|s| separable(80, 6, s)).collect();
        let start = init(&spec, 6, 3);
        let seq: Vec<_> = data
            .iter()
            .map(|(x, y)| train(&spec, &start, x, 6, y, &c).unwrap().params)
            .collect();
        let par: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = data
                .iter()
                .map(|(x, y)| s.spawn(|| train(&spec, &start, x, 6, y, &c).unwrap().params))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(seq, par);
    }

    #[test]
    fn optimizer_serde_names() {
        assert_eq!(
            serde_json::to_string(&OptimizerKind::Sgd).unwrap(),
            "\"sgd\""
        );
        assert_eq!(
            serde_json::from_str::<OptimizerKind>("\"adam\"").unwrap(),
            OptimizerKind::Adam
        );
    }
}
