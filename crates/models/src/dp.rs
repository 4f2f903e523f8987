//! Record-level differentially private local training: DP-SGD (Abadi et al. 2016) with
//! per-example clipping, Poisson sampling and exact discrete Gaussian noise on a lattice.
//!
//! How one call of [`train_dp`] flows:
//!
//! 1. [`fedcare_privacy::schedule`] fixes the number of steps from the job's sampling rate `q`
//!    and the epochs. The site's ledger charges the
//!    same schedule, so what is trained is what is accounted.
//! 2. Each step draws a Poisson sample of the rows ([`fedcare_privacy::poisson_sample`]: every
//!    row independently with probability `q`, from the injected CSPRNG). The sample's size is
//!    private; it may be empty (the step then moves the parameters by noise alone).
//! 3. For each sampled row, Burn computes that row's gradient alone (a microbatch of one:
//!    forward on the autodiff flex device, backward, each parameter's gradient read in
//!    [`crate::layout`] order into one flat vector) and hands it to a
//!    [`fedcare_privacy::NoisyGradientSum`], which clips it to `l2_clip`, rounds it onto the
//!    lattice and accumulates it.
//! 4. The sum's `finish` adds the discrete Gaussian noise; the step is plain SGD,
//!    `theta <- theta - lr * noisy_sum / normalizer`, the *expected* batch size from a private
//!    count (dividing by the actual sample size would make the step depend on it without
//!    noise).
//!
//! The Net is rebuilt from the flat parameters once per step (parameters change only between
//! steps); every row of a step reuses its parameter leaves for a fresh forward and backward.
//!
//! Only the returned parameters are fit to leave the site (and only through the round's
//! privacy ledger). [`DpTrainOutcome::mean_loss`] and the number of sampled rows are
//! computed on private data without noise: local logs only.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use fedcare_privacy::dpsgd::DEFAULT_LATTICE_BITS;
use fedcare_privacy::{NoisyGradientSum, PrivacyError, poisson_sample, schedule};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};

use crate::net::Net;
use crate::train::{bce_with_logits, check_inputs, check_labels};
use crate::{FlatParams, ModelError, ModelSpec};

/// DP-SGD settings for one round of local training at one site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpSgdConfig {
    /// Passes over the local data, in expectation; at least 1. One epoch is `ceil(1/q)` steps.
    pub local_epochs: usize,
    /// `q`: the job's Poisson sampling rate, in (0, 1].
    pub sampling_rate: f64,
    /// The divisor of the noisy gradient sum: the expected batch size. It must not depend on
    /// the data except through a private release (the agent uses `q` times the site's noised
    /// count); finite and > 0.
    pub normalizer: f64,
    /// SGD step size; finite and > 0.
    pub learning_rate: f64,
    /// `C`: every per-example gradient is clipped to this L2 norm; finite and > 0.
    pub l2_clip: f64,
    /// `z`: noise std / sensitivity; finite and >= 0 (0 adds no noise: testing only).
    pub noise_multiplier: f64,
}

/// Result of [`train_dp`].
#[derive(Debug, Clone, PartialEq)]
pub struct DpTrainOutcome {
    /// The trained parameters, in the same layout as `start`.
    pub params: FlatParams,
    /// DP-SGD steps taken (from [`fedcare_privacy::schedule`]).
    pub steps: u64,
    /// Poisson sampling rate used (from [`fedcare_privacy::schedule`]).
    pub sampling_rate: f64,
    /// Mean per-row binary cross-entropy of the rows sampled in the last epoch's steps, each
    /// measured before its step (NaN if none was sampled). Not private: a local log only,
    /// never to be released.
    pub mean_loss: f64,
}

fn config_error(e: PrivacyError) -> ModelError {
    ModelError::InvalidConfig(e.to_string())
}

fn check_config(cfg: &DpSgdConfig) -> Result<(), ModelError> {
    if cfg.local_epochs == 0 {
        return Err(ModelError::InvalidConfig(
            "local_epochs must be >= 1".into(),
        ));
    }
    if !(cfg.normalizer.is_finite() && cfg.normalizer > 0.0) {
        return Err(ModelError::InvalidConfig(format!("normalizer must be finite and > 0, got {}", cfg.normalizer)));
    }
    if !(cfg.learning_rate.is_finite() && cfg.learning_rate > 0.0) {
        return Err(ModelError::InvalidConfig(format!(
            "learning_rate must be finite and > 0, got {}",
            cfg.learning_rate
        )));
    }
    if !(cfg.l2_clip.is_finite() && cfg.l2_clip > 0.0) {
        return Err(ModelError::InvalidConfig(format!(
            "l2_clip must be finite and > 0, got {}",
            cfg.l2_clip
        )));
    }
    if !(cfg.noise_multiplier.is_finite() && cfg.noise_multiplier >= 0.0) {
        return Err(ModelError::InvalidConfig(format!(
            "noise_multiplier must be finite and >= 0, got {}",
            cfg.noise_multiplier
        )));
    }
    Ok(())
}

/// Record-level DP-SGD on Burn's flex CPU backend with autodiff; see the module doc.
/// `features` is row-major `n_rows x n_features`, `labels` are 0.0/1.0, one per row. All
/// randomness (sampling, rounding, noise) comes from `rng`.
///
/// Errors: the input checks of [`crate::train`] (shapes, NaN/inf, labels, layout), an
/// unusable config ([`ModelError::InvalidConfig`]), and [`ModelError::NonFinite`] if the
/// parameters diverge.
pub fn train_dp(
    spec: &ModelSpec,
    start: &FlatParams,
    features: &[f32],
    n_features: usize,
    labels: &[f32],
    cfg: &DpSgdConfig,
    rng: &mut dyn CryptoRng,
) -> Result<DpTrainOutcome, ModelError> {
    let rows = check_inputs(spec, start, features, n_features)?;
    check_labels(labels, rows)?;
    check_config(cfg)?;
    let sched = schedule(cfg.sampling_rate, cfg.local_epochs).map_err(config_error)?;
    let dim = start.layout.len();
    // Validates C and z against the lattice and the exact sampler once; cloned per step.
    let empty_sum =
        NoisyGradientSum::new(dim, cfg.l2_clip, cfg.noise_multiplier, DEFAULT_LATTICE_BITS)
            .map_err(config_error)?;
    let last_epoch_from = sched.steps.saturating_sub(sched.steps_per_epoch());
    let step_size = cfg.learning_rate / cfg.normalizer;

    let device = Device::flex().autodiff();
    let mut params = start.clone();
    let (mut loss_sum, mut loss_rows) = (0.0f64, 0usize);
    for step in 0..sched.steps {
        let sample = poisson_sample(rows, sched.sampling_rate, rng).map_err(config_error)?;
        let mut sum = empty_sum.clone();
        if !sample.is_empty() {
            let net = Net::from_flat(spec, n_features, &params, &device);
            for &r in &sample {
                let x = &features[r * n_features..(r + 1) * n_features];
                let (grad, loss) = example_gradient(&net, x, labels[r], dim, &device)?;
                if step >= last_epoch_from {
                    loss_sum += loss;
                    loss_rows += 1;
                }
                // Finite parameters and inputs give finite gradients (the loss is the stable
                // form), so an error here is a backend fault, not bad input.
                sum.add_example(&grad, rng).map_err(|e| {
                    ModelError::Backend(format!("per-example gradient refused: {e}"))
                })?;
            }
        }
        for (p, g) in params.values.iter_mut().zip(sum.finish(rng)) {
            *p = (f64::from(*p) - step_size * g) as f32;
        }
        // Stop at the first divergence: a NaN would only propagate.
        if let Some(index) = params.values.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite { index });
        }
    }

    Ok(DpTrainOutcome {
        params: FlatParams::new(params.layout, params.values)?,
        steps: sched.steps,
        sampling_rate: sched.sampling_rate,
        mean_loss: if loss_rows == 0 {
            f64::NAN
        } else {
            loss_sum / loss_rows as f64
        },
    })
}

/// The gradient of one row's loss with respect to every parameter of `net`, as one flat
/// vector in layout order (Burn visits parameters in declaration order, which is the layout
/// order that [`Net::to_flat`] checks), and the row's loss.
fn example_gradient(
    net: &Net,
    x: &[f32],
    y: f32,
    dim: usize,
    device: &Device,
) -> Result<(Vec<f32>, f64), ModelError> {
    let xt = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [1, x.len()]), device);
    let yt = Tensor::<2>::from_data(TensorData::new(vec![y], [1, 1]), device);
    let loss = bce_with_logits(net.forward(xt), yt).sum();
    let value: f32 = loss.clone().into_scalar();
    let mut grads = loss.backward();
    let mut collector = GradCollector {
        grads: &mut grads,
        out: Vec::with_capacity(dim),
        error: None,
    };
    net.visit(&mut collector);
    if let Some(e) = collector.error {
        return Err(e);
    }
    if collector.out.len() != dim {
        return Err(ModelError::Backend(format!(
            "per-example gradient has {} values, the layout {dim}",
            collector.out.len()
        )));
    }
    Ok((collector.out, f64::from(value)))
}

/// Appends each float parameter's gradient, in visit order, to `out`.
struct GradCollector<'a> {
    grads: &'a mut Gradients,
    out: Vec<f32>,
    error: Option<ModelError>,
}

impl ModuleVisitor for GradCollector<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.error.is_some() {
            return;
        }
        let Some(grad) = param.val().grad_remove(self.grads) else {
            self.error = Some(ModelError::Backend("a parameter has no gradient".into()));
            return;
        };
        match grad
            .try_into_data()
            .map_err(|e| ModelError::Backend(format!("{e:?}")))
            .and_then(|d| {
                d.try_to_vec::<f32>()
                    .map_err(|e| ModelError::Backend(format!("{e:?}")))
            }) {
            Ok(v) => self.out.extend(v),
            Err(e) => self.error = Some(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{predict, tests::separable};
    use crate::{evaluate, init, layout};
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn sigmoid(z: f64) -> f64 {
        1.0 / (1.0 + (-z).exp())
    }

    /// Expected batch `b` of `rows` rows: rate `min(1, b/rows)`, normaliser `b`.
    fn cfg(b: usize, rows: usize, epochs: usize, lr: f64, c: f64, z: f64) -> DpSgdConfig {
        DpSgdConfig {
            local_epochs: epochs,
            sampling_rate: (b as f64 / rows as f64).min(1.0),
            normalizer: b as f64,
            learning_rate: lr,
            l2_clip: c,
            noise_multiplier: z,
        }
    }

    /// Logistic regression on 3 features, parameters (w0, w1, w2, b), and 6 rows.
    fn tiny() -> (ModelSpec, FlatParams, Vec<f32>, Vec<f32>) {
        let spec = ModelSpec::LogisticRegression;
        let p = FlatParams::new(layout(&spec, 3), vec![0.3, -0.7, 0.2, 0.1]).unwrap();
        let x = vec![
            0.5, 1.0, -0.2, //
            -1.0, 0.3, 0.8, //
            0.0, -0.5, 0.4, //
            1.2, 0.7, -0.9, //
            -0.3, -0.3, 0.1, //
            0.9, -1.1, 0.6,
        ];
        let y = vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        (spec, p, x, y)
    }

    /// Closed form: per-row gradient of the BCE of sigmoid(w.x + b) is (sigmoid - y) (x, 1).
    fn closed_form_grads(p: &[f32], x: &[f32], y: &[f32]) -> Vec<Vec<f64>> {
        let d = p.len() - 1;
        y.iter()
            .enumerate()
            .map(|(r, &yr)| {
                let row = &x[r * d..(r + 1) * d];
                let z = row
                    .iter()
                    .zip(p)
                    .map(|(a, w)| f64::from(*a) * f64::from(*w))
                    .sum::<f64>()
                    + f64::from(p[d]);
                let e = sigmoid(z) - f64::from(yr);
                let mut g: Vec<f64> = row.iter().map(|a| e * f64::from(*a)).collect();
                g.push(e);
                g
            })
            .collect()
    }

    #[test]
    fn one_step_without_noise_or_clipping_is_plain_sgd() {
        // b = rows: q = 1 and one step per epoch. C = 10 exceeds every row's gradient norm
        // (checked), z = 0: the step is theta - lr * sum_i g_i / b up to the lattice rounding,
        // which moves each row's coordinate by < gamma = C / 2^16 (so the update by < lr * gamma)
        // plus f32 arithmetic.
        let (spec, p, x, y) = tiny();
        let (lr, c, b) = (0.5, 10.0, 6);
        let grads = closed_form_grads(&p.values, &x, &y);
        for g in &grads {
            assert!(g.iter().map(|v| v * v).sum::<f64>().sqrt() < c);
        }
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let out = train_dp(&spec, &p, &x, 3, &y, &cfg(b, 6, 1, lr, c, 0.0), &mut rng).unwrap();
        assert_eq!((out.steps, out.sampling_rate), (1, 1.0));
        let gamma = c / 65536.0;
        for j in 0..4 {
            let sum: f64 = grads.iter().map(|g| g[j]).sum();
            let want = f64::from(p.values[j]) - lr * sum / b as f64;
            let got = f64::from(out.params.values[j]);
            assert!(
                (got - want).abs() < lr * gamma + 1e-6,
                "{j}: {got} vs {want}"
            );
        }
        // The loss is the mean BCE at the start parameters over all rows (all sampled).
        let want_loss: f64 = y
            .iter()
            .enumerate()
            .map(|(r, &yr)| {
                let row = &x[r * 3..r * 3 + 3];
                let z = row
                    .iter()
                    .zip(&p.values)
                    .map(|(a, w)| f64::from(*a * *w))
                    .sum::<f64>()
                    + 0.1;
                let s = sigmoid(z);
                -(f64::from(yr) * s.ln() + (1.0 - f64::from(yr)) * (1.0 - s).ln())
            })
            .sum::<f64>()
            / 6.0;
        assert!(
            (out.mean_loss - want_loss).abs() < 1e-5,
            "{} vs {want_loss}",
            out.mean_loss
        );
    }

    #[test]
    fn mlp_per_example_gradients_are_in_layout_order() {
        // Against Burn's own full-batch gradient of the summed loss (via the plain trainer's
        // path): one DP step with q = 1, z = 0 and no clipping equals one SGD step of
        // sum-of-losses / b, for a model with several parameter tensors.
        let spec = ModelSpec::Mlp { hidden: vec![4, 3] };
        let (x, y) = separable(10, 5, 9);
        let p = init(&spec, 5, 2);
        let (lr, c) = (0.1, 100.0);
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let out = train_dp(&spec, &p, &x, 5, &y, &cfg(10, 10, 1, lr, c, 0.0), &mut rng).unwrap();

        let device = Device::flex().autodiff();
        let net = Net::from_flat(&spec, 5, &p, &device);
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [10, 5]), &device);
        let yt = Tensor::<2>::from_data(TensorData::new(y.clone(), [10, 1]), &device);
        let loss = bce_with_logits(net.forward(xt), yt).sum();
        let mut grads = loss.backward();
        let mut col = GradCollector {
            grads: &mut grads,
            out: Vec::new(),
            error: None,
        };
        net.visit(&mut col);
        assert!(col.error.is_none());
        assert_eq!(col.out.len(), p.values.len());
        // Sanity of the reference's order: flattening the same Net gives p.
        assert_eq!(net.valid().to_flat(&spec, 5).unwrap(), p);
        let gamma = c / 65536.0;
        for (j, g) in col.out.iter().enumerate() {
            let want = f64::from(p.values[j]) - lr * f64::from(*g) / 10.0;
            let got = f64::from(out.params.values[j]);
            // 10 rows each rounded by < gamma per coordinate: update error < lr * gamma.
            assert!(
                (got - want).abs() < lr * gamma + 1e-5,
                "{j}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn tiny_clip_bounds_the_update() {
        // C = 1e-3 is far below every gradient norm: each row contributes a vector of norm
        // <= Delta gamma (~C), so with z = 0 and q = 1 the update norm is at most
        // lr * |batch| * Delta gamma / b, and close to it when the gradients align.
        let (spec, p, x, y) = tiny();
        let (lr, c, b) = (0.5, 1e-3, 6);
        let s = NoisyGradientSum::new(4, c, 0.0, DEFAULT_LATTICE_BITS).unwrap();
        let per_row = s.l2_sensitivity() * s.gamma();
        let norm = |out: &DpTrainOutcome| {
            out.params
                .values
                .iter()
                .zip(&p.values)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let out = train_dp(&spec, &p, &x, 3, &y, &cfg(b, 6, 1, lr, c, 0.0), &mut rng).unwrap();
        let n = norm(&out);
        let bound = lr * 6.0 * per_row / b as f64;
        // f32 storage of parameters ~0.5 adds at most 6e-8 per coordinate.
        assert!(n <= bound + 1e-7, "{n} > {bound}");
        assert!(n > 0.0);

        // With noise z = 2: the noise vector's norm is at most sigma (sqrt(d) + 6) except with
        // probability exp(-18) ~ 1.5e-8 (the discrete Gaussian is sub-Gaussian with variance
        // proxy sigma^2, Lipschitz concentration of the norm); the update is bounded by
        // lr * (that + |batch| Delta gamma) / b.
        let z = 2.0;
        for seed in 0..20 {
            let mut rng = ChaCha20Rng::seed_from_u64(100 + seed);
            let out = train_dp(&spec, &p, &x, 3, &y, &cfg(b, 6, 1, lr, c, z), &mut rng).unwrap();
            let sigma = z * per_row;
            let noise = sigma * (4f64.sqrt() + 6.0);
            let bound = lr * (noise + 6.0 * per_row) / b as f64;
            let n = norm(&out);
            assert!(n <= bound + 1e-7, "seed {seed}: {n} > {bound}");
        }
    }

    #[test]
    fn learns_a_separable_set_with_noise() {
        let spec = ModelSpec::LogisticRegression;
        let d = 5;
        let (x, y) = separable(200, d, 4);
        let start = init(&spec, d, 6);
        let before = evaluate(&predict(&spec, &start, &x, d).unwrap(), &y);
        let c = cfg(8, 200, 5, 0.5, 1.0, 0.5);
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let t = std::time::Instant::now();
        let out = train_dp(&spec, &start, &x, d, &y, &c, &mut rng).unwrap();
        let elapsed = t.elapsed();
        assert_eq!(out.steps, 5 * 25);
        assert_eq!(out.sampling_rate, 0.04);
        let after = evaluate(&predict(&spec, &out.params, &x, d).unwrap(), &y);
        eprintln!(
            "DP-SGD logistic regression, {} steps, ~8 rows each: {elapsed:?} \
             ({:?} per step, ~{:?} per example); accuracy {} -> {}",
            out.steps,
            elapsed / out.steps as u32,
            elapsed / (out.steps as u32 * 8),
            before.accuracy(),
            after.accuracy()
        );
        assert!(
            after.accuracy() > before.accuracy() + 0.1,
            "{} -> {}",
            before.accuracy(),
            after.accuracy()
        );
        assert!(after.accuracy() > 0.85, "{}", after.accuracy());
        assert!(out.mean_loss.is_finite() && out.mean_loss < before.mean_loss());
        assert_eq!(out.params.layout, start.layout);
    }

    #[test]
    fn mlp_timing_and_improvement() {
        let spec = ModelSpec::Mlp {
            hidden: vec![16, 8],
        };
        let d = 13;
        let (x, y) = separable(200, d, 8);
        let start = init(&spec, d, 1);
        let before = evaluate(&predict(&spec, &start, &x, d).unwrap(), &y);
        let c = cfg(8, 200, 3, 0.5, 1.0, 0.5);
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let t = std::time::Instant::now();
        let out = train_dp(&spec, &start, &x, d, &y, &c, &mut rng).unwrap();
        let elapsed = t.elapsed();
        let after = evaluate(&predict(&spec, &out.params, &x, d).unwrap(), &y);
        eprintln!(
            "DP-SGD mlp [16, 8] on 13 features ({} params), {} steps: {elapsed:?} ({:?} per step, \
             ~{:?} per example); accuracy {} -> {}",
            start.values.len(),
            out.steps,
            elapsed / out.steps as u32,
            elapsed / (out.steps as u32 * 8),
            before.accuracy(),
            after.accuracy()
        );
        assert!(
            after.accuracy() > before.accuracy(),
            "{} -> {}",
            before.accuracy(),
            after.accuracy()
        );
    }

    #[test]
    fn same_rng_seed_same_result() {
        let (spec, p, x, y) = tiny();
        let c = cfg(2, 6, 3, 0.5, 1.0, 1.0);
        let a = train_dp(&spec, &p, &x, 3, &y, &c, &mut ChaCha20Rng::seed_from_u64(9)).unwrap();
        let b = train_dp(&spec, &p, &x, 3, &y, &c, &mut ChaCha20Rng::seed_from_u64(9)).unwrap();
        let other = train_dp(
            &spec,
            &p,
            &x,
            3,
            &y,
            &c,
            &mut ChaCha20Rng::seed_from_u64(10),
        )
        .unwrap();
        assert_eq!(a, b);
        assert_ne!(a.params, other.params);
    }

    #[test]
    fn bad_inputs_and_configs_are_typed_errors() {
        let (spec, p, x, y) = tiny();
        let good = cfg(2, 6, 1, 0.1, 1.0, 1.0);
        let mut rng = ChaCha20Rng::seed_from_u64(0);
        let mut run = |x: &[f32], n: usize, y: &[f32], c: &DpSgdConfig| {
            train_dp(&spec, &p, x, n, y, c, &mut rng)
        };
        assert!(matches!(
            run(&x[..17], 3, &y, &good),
            Err(ModelError::Shape(_))
        ));
        assert!(matches!(
            run(&x, 3, &y[..5], &good),
            Err(ModelError::Shape(_))
        ));
        assert!(matches!(run(&x, 0, &y, &good), Err(ModelError::Shape(_))));
        assert_eq!(run(&[], 3, &[], &good).unwrap_err(), ModelError::EmptyData);
        let mut nan = x.clone();
        nan[7] = f32::NAN;
        assert_eq!(
            run(&nan, 3, &y, &good).unwrap_err(),
            ModelError::NonFiniteInput { index: 7 }
        );
        let mut inf = x.clone();
        inf[0] = f32::INFINITY;
        assert_eq!(
            run(&inf, 3, &y, &good).unwrap_err(),
            ModelError::NonFiniteInput { index: 0 }
        );
        let mut bad_y = y.clone();
        bad_y[2] = 0.5;
        assert_eq!(
            run(&x, 3, &bad_y, &good).unwrap_err(),
            ModelError::InvalidLabel {
                index: 2,
                value: 0.5
            }
        );
        // Parameters of another shape.
        let other = init(&spec, 4, 0);
        assert!(matches!(
            train_dp(
                &spec,
                &other,
                &x,
                3,
                &y,
                &good,
                &mut ChaCha20Rng::seed_from_u64(0)
            ),
            Err(ModelError::LayoutMismatch { .. })
        ));
        for bad in [
            DpSgdConfig {
                local_epochs: 0,
                ..good.clone()
            },
            DpSgdConfig {
                sampling_rate: 0.0,
                ..good.clone()
            },
            DpSgdConfig {
                normalizer: 0.0,
                ..good.clone()
            },
            DpSgdConfig {
                learning_rate: 0.0,
                ..good.clone()
            },
            DpSgdConfig {
                learning_rate: f64::NAN,
                ..good.clone()
            },
            DpSgdConfig {
                l2_clip: 0.0,
                ..good.clone()
            },
            DpSgdConfig {
                l2_clip: f64::INFINITY,
                ..good.clone()
            },
            DpSgdConfig {
                noise_multiplier: -1.0,
                ..good.clone()
            },
            DpSgdConfig {
                noise_multiplier: f64::NAN,
                ..good.clone()
            },
            // Beyond the exact sampler's range.
            DpSgdConfig {
                noise_multiplier: 1e4,
                ..good.clone()
            },
        ] {
            assert!(
                matches!(run(&x, 3, &y, &bad), Err(ModelError::InvalidConfig(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn divergence_is_non_finite() {
        // A learning rate of 1e300 overflows f32 on the first step that moves the parameters.
        let (spec, p, x, y) = tiny();
        let c = cfg(6, 6, 1, 1e300, 1.0, 0.0);
        let e = train_dp(&spec, &p, &x, 3, &y, &c, &mut ChaCha20Rng::seed_from_u64(0)).unwrap_err();
        assert!(matches!(e, ModelError::NonFinite { .. }), "{e:?}");
    }
}
