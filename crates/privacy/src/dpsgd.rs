//! Record-level DP-SGD on a lattice: per-example clipping, Poisson sampling and **exact**
//! discrete Gaussian noise (Abadi et al. 2016, "Deep Learning with Differential Privacy",
//! with the noise of Canonne, Kamath, Steinke 2020 and the conditional rounding of Kairouz,
//! Liu, Steinke 2021).
//!
//! One local DP-SGD step at a site is:
//!
//! 1. **Poisson sampling** ([`poisson_sample`]): every training row joins the step
//!    independently with probability `q`, the job's public sampling rate. The draw is exact
//!    ([`bernoulli_exact`] compares uniform bits with `q`'s binary expansion). An empty sample
//!    is a valid step (the released sum is pure noise).
//! 2. For each sampled row, its gradient goes into a [`NoisyGradientSum`]
//!    ([`NoisyGradientSum::add_example`]): **clip** to L2 norm `C`, **scale** by
//!    `1/gamma` with `gamma = C / 2^k` (the lattice step, `k` = [`DEFAULT_LATTICE_BITS`]),
//!    **round** each coordinate stochastically to an integer, redrawing until the integer
//!    vector's L2 norm is at most `Delta` (conditional rounding with the bound of
//!    [`crate::ddg`], padded dimension = `dim`, `beta` = [`crate::ddg::DEFAULT_BETA`]), and
//!    **accumulate** into an `i64` vector.
//! 3. [`NoisyGradientSum::finish`] adds independent exact discrete Gaussian noise
//!    `N_Z(0, sigma_int^2)`, `sigma_int = z Delta`, to every integer coordinate and multiplies
//!    by `gamma`: the noisy sum of clipped gradients. The caller divides by a public or
//!    already-released normaliser (the expected batch size from the site's *noised* count,
//!    never the sample's size, which is private) and takes an SGD step.
//!
//! [`schedule`] is the one definition of how many such steps a round takes and at what rate;
//! the trainer and the accountant ([`Schedule::charge`]) both call it.
//!
//! # Why the accounting is exact
//!
//! The released integer vector is `S + N`: `S` the sum of the sampled rows' rounded vectors,
//! `N` the discrete Gaussian. Adding or removing one row changes `S` by one **integer** vector
//! `v` with `||v||_2 <= Delta` (the rounding is conditioned on that bound; the row's own
//! rounding randomness is a mixture over such `v`, and Rényi divergence is quasi-convex, so
//! the worst single `v` bounds it). For the discrete Gaussian and an integer order `k`,
//! `E_{x ~ N_Z(0, s^2)} [(p(x - v) / p(x))^k] = exp(k (k - 1) ||v||^2 / (2 s^2))`, exactly as
//! for the continuous Gaussian: the sum `sum_x exp(-||x - k v||^2 / 2 s^2)` over the lattice
//! is invariant under the integer shift `k v`. The binomial expansion of the Poisson-subsampled
//! mixture at integer orders uses only these moments, so at integer orders the mechanism's
//! RDP is that of the subsampled Gaussian with noise multiplier `sigma_int / Delta = z` and
//! rate `q`. This is [`crate::Charge::SubsampledGaussian`], which keeps only integer orders
//! (see its doc). Everything after the integer sum (multiplying by `gamma`, the SGD step) is
//! post-processing.
//!
//! The price of the lattice: `Delta >= C / gamma` (rounding can only add norm), so the noise
//! in the gradient's units is `z Delta gamma`, and the *effective* noise multiplier relative
//! to `C`, [`NoisyGradientSum::effective_noise_multiplier`] = `z Delta gamma / C`, is `>= z`.
//! With `beta = e^-0.5` (so `sqrt(2 ln(1/beta)) = 1`) and `k = 16`,
//! `(Delta gamma / C)^2 = 1 + 2^-16 + sqrt(d) 2^-33 + d 2^-34`, i.e. `Delta gamma / C ~ 1 +
//! 7.6e-6` for small `d`: more noise in the gradient's units than `z C`, by a negligible
//! amount, never less.
//!
//! # The lattice resolution `k`
//!
//! `gamma = C / 2^k`. Larger `k` means finer quantisation (rounding error per coordinate
//! `< gamma` per example, zero-mean) but a larger integer noise std `sigma_int ~ z 2^k`. The
//! exact sampler accepts `sigma_int` up to about `1.2e7 ~ 2^23.5` (its rational arithmetic
//! must fit in 96 bits), so `k = 16` ([`DEFAULT_LATTICE_BITS`]) leaves room for `z` up to
//! ~180, while its quantisation (`gamma = C / 65536`) is far below any useful noise level.
//! Every scaled value and partial sum is an integer far below `2^53`, so the norm check and the
//! accumulation are exact.
//!
//! # Floating point
//!
//! Clipping, scaling and the rounding probabilities use `f64`; their exactness does not matter
//! for privacy because the sensitivity is enforced on the integer vector (step 2's norm check,
//! exact in `f64` for integers of this size). The noise is exact and integer-valued.

use rand_core::CryptoRng;

use crate::ddg::{DEFAULT_BETA, MAX_PADDED_DIM, clip_l2, round_conditional, rounding_bound, sigma2_rational};
use crate::{Charge, DiscreteGaussian, PrivacyError};

/// Default lattice resolution `k`: `gamma = C / 2^16`. See the module doc.
pub const DEFAULT_LATTICE_BITS: u32 = 16;

/// Largest accepted `k`. Beyond it, even `z = 1` exceeds the exact sampler's range.
pub const MAX_LATTICE_BITS: u32 = 23;

/// How many DP-SGD steps one round of local training takes, and the Poisson sampling rate.
/// Built only by [`schedule`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Number of DP-SGD steps: `local_epochs * ceil(1 / sampling_rate)`.
    pub steps: u64,
    /// Poisson sampling rate `q` in (0, 1].
    pub sampling_rate: f64,
}

impl Schedule {
    /// The privacy charge of running this schedule with noise multiplier `noise_multiplier`
    /// (the `z` given to [`NoisyGradientSum::new`]): record-level, Poisson-subsampled Gaussian.
    pub fn charge(&self, noise_multiplier: f64) -> Charge {
        Charge::SubsampledGaussian { noise_multiplier, sampling_rate: self.sampling_rate, steps: self.steps }
    }

    /// Steps in one epoch (`ceil(1/q)`: one pass over the rows in expectation).
    pub fn steps_per_epoch(&self) -> u64 {
        (1.0 / self.sampling_rate).ceil() as u64
    }
}

fn bad(name: &'static str, value: f64, reason: &'static str) -> PrivacyError {
    PrivacyError::InvalidParameter { name, value, reason }
}

/// The DP-SGD schedule of one round: the job's public sampling rate `q` and
/// `steps = local_epochs * ceil(1/q)` (one "epoch" is as many steps as it takes to see every
/// row once in expectation).
///
/// The rate is the job's, not `b / n_rows`: a rate derived from a site's exact row count
/// would make the accounting depend on that count, which is itself private. This is the one
/// place these two numbers are defined: local training draws exactly `steps` Poisson samples
/// at rate `q`, and the ledger charges exactly [`Schedule::charge`].
pub fn schedule(sampling_rate: f64, local_epochs: usize) -> Result<Schedule, PrivacyError> {
    if !(sampling_rate > 0.0 && sampling_rate <= 1.0) {
        return Err(PrivacyError::InvalidSamplingRate(sampling_rate));
    }
    if local_epochs == 0 {
        return Err(PrivacyError::ZeroSteps);
    }
    let per_epoch = (1.0 / sampling_rate).ceil();
    let steps = (local_epochs as f64) * per_epoch;
    if steps > (1u64 << 40) as f64 {
        return Err(bad("sampling_rate", sampling_rate, "too many steps per round"));
    }
    Ok(Schedule { steps: steps as u64, sampling_rate })
}

/// `true` with probability exactly `q` (a double in [0, 1]), from uniform bits: compares the
/// binary expansion of a uniform real `u` with that of `q` bit by bit; `u < q` is decided at
/// the first differing bit. `q`'s expansion is finite and every doubling and subtraction of
/// one below is exact in `f64`, so no rounding enters. Two bits are used on average.
pub fn bernoulli_exact(q: f64, rng: &mut dyn CryptoRng) -> bool {
    if q.is_nan() || q <= 0.0 {
        return false;
    }
    if q >= 1.0 {
        return true;
    }
    let mut x = q;
    loop {
        let mut bits = rng.next_u64();
        for _ in 0..64 {
            x *= 2.0;
            let q_bit = x >= 1.0;
            if q_bit {
                x -= 1.0;
            }
            let u_bit = bits & 1 == 1;
            bits >>= 1;
            if q_bit != u_bit {
                // The first difference decides: u < q iff q has the 1 here.
                return q_bit;
            }
            if x == 0.0 {
                // q's expansion ended and u matched it so far: u >= q.
                return false;
            }
        }
    }
}

/// One Poisson sample of the rows `0..n_rows`: each row is included independently with
/// probability exactly `sampling_rate` ([`bernoulli_exact`]), returned in increasing order.
/// The result may be empty.
pub fn poisson_sample(n_rows: usize, sampling_rate: f64, rng: &mut dyn CryptoRng) -> Result<Vec<usize>, PrivacyError> {
    if !(sampling_rate > 0.0 && sampling_rate <= 1.0) {
        return Err(PrivacyError::InvalidSamplingRate(sampling_rate));
    }
    Ok((0..n_rows).filter(|_| bernoulli_exact(sampling_rate, rng)).collect())
}

/// The noisy sum of one DP-SGD step's clipped per-example gradients, on the lattice
/// `gamma Z^dim`. See the module doc for the pipeline and why its accounting is exact.
#[derive(Debug, Clone)]
pub struct NoisyGradientSum {
    dim: usize,
    l2_clip: f64,
    noise_multiplier: f64,
    /// `1/gamma = 2^k / C`.
    scale: f64,
    /// `Delta`: L2 bound of every rounded example, integer domain.
    delta: f64,
    /// `N_Z(0, (z Delta)^2)` (variance rounded up), or none when `z = 0`.
    noise: Option<DiscreteGaussian>,
    sum: Vec<i64>,
    examples: u64,
    /// Examples accepted before an `i64` coordinate could overflow: `2^62 / (Delta + 1)`.
    max_examples: u64,
}

impl NoisyGradientSum {
    /// A zero sum for gradients of length `dim`, clipped to L2 norm `l2_clip` (`C`), with noise
    /// multiplier `noise_multiplier` (`z`, >= 0; 0 adds no noise and gives no privacy: tests
    /// only) on the lattice `gamma = C / 2^lattice_bits` (use [`DEFAULT_LATTICE_BITS`]).
    ///
    /// Errors: `dim` not in `1..=2^30`, `C` not finite and > 0, `z` not finite and >= 0,
    /// `lattice_bits` not in `1..=`[`MAX_LATTICE_BITS`], or `z Delta` beyond the exact sampler.
    pub fn new(dim: usize, l2_clip: f64, noise_multiplier: f64, lattice_bits: u32) -> Result<Self, PrivacyError> {
        if dim == 0 || dim > MAX_PADDED_DIM {
            return Err(bad("dim", dim as f64, "must be in 1..=2^30"));
        }
        if !(l2_clip.is_finite() && l2_clip > 0.0) {
            return Err(bad("l2_clip", l2_clip, "must be finite and > 0"));
        }
        if !(noise_multiplier.is_finite() && noise_multiplier >= 0.0) {
            return Err(PrivacyError::InvalidNoiseMultiplier(noise_multiplier));
        }
        if !(1..=MAX_LATTICE_BITS).contains(&lattice_bits) {
            return Err(bad("lattice_bits", f64::from(lattice_bits), "must be in 1..=23"));
        }
        let scale = f64::from(1u32 << lattice_bits) / l2_clip;
        if !scale.is_finite() {
            return Err(bad("l2_clip", l2_clip, "too small: 2^lattice_bits / l2_clip overflows"));
        }
        let delta = rounding_bound(l2_clip, scale, dim, DEFAULT_BETA);
        let noise = if noise_multiplier > 0.0 {
            Some(sigma2_rational(noise_multiplier * delta).map_err(|_| {
                bad(
                    "noise_multiplier",
                    noise_multiplier,
                    "noise_multiplier * Delta exceeds the exact discrete Gaussian sampler (std ~1.2e7); \
                     lower lattice_bits",
                )
            })?)
        } else {
            None
        };
        let max_examples = ((1u64 << 62) as f64 / (delta + 1.0)).floor() as u64;
        Ok(Self {
            dim,
            l2_clip,
            noise_multiplier,
            scale,
            delta,
            noise,
            sum: vec![0; dim],
            examples: 0,
            max_examples,
        })
    }

    /// Gradient length.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// `C`.
    pub fn l2_clip(&self) -> f64 {
        self.l2_clip
    }

    /// `z`: the noise multiplier the accountant uses (noise std / `Delta`, integer domain).
    pub fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }

    /// `gamma = C / 2^k`: one lattice step in the gradient's units.
    pub fn gamma(&self) -> f64 {
        1.0 / self.scale
    }

    /// `Delta`: the L2 norm bound of one rounded example, integer domain (the sensitivity).
    pub fn l2_sensitivity(&self) -> f64 {
        self.delta
    }

    /// `z Delta`: the noise std per coordinate, integer domain (the sampler's variance is this
    /// squared, rounded up to a rational).
    pub fn noise_std_int(&self) -> f64 {
        self.noise_multiplier * self.delta
    }

    /// `z Delta gamma`: the noise std per coordinate of [`Self::finish`]'s output.
    pub fn noise_std(&self) -> f64 {
        self.noise_std_int() * self.gamma()
    }

    /// `z Delta gamma / C >= z`: the noise std relative to the clip norm, in the gradient's
    /// units (the lattice only ever adds noise relative to what the accountant assumes).
    pub fn effective_noise_multiplier(&self) -> f64 {
        self.noise_std() / self.l2_clip
    }

    /// Number of examples added so far (private: never release it).
    pub fn examples(&self) -> u64 {
        self.examples
    }

    /// Clips `grad` to L2 norm `C`, scales by `1/gamma`, rounds conditionally to an integer
    /// vector of norm <= `Delta` and adds it to the sum. A wrong length
    /// ([`PrivacyError::InputLength`]), a NaN or infinity ([`PrivacyError::NonFiniteInput`]),
    /// or a failed rounding leave the sum unchanged.
    pub fn add_example(&mut self, grad: &[f32], rng: &mut dyn CryptoRng) -> Result<(), PrivacyError> {
        if self.examples >= self.max_examples {
            return Err(bad("examples", self.examples as f64, "too many examples for an i64 sum"));
        }
        let mut v = clip_l2(grad, self.dim, self.l2_clip)?;
        v.iter_mut().for_each(|a| *a *= self.scale);
        let z = round_conditional(&v, self.delta, DEFAULT_BETA, rng)?;
        // |z_j| <= Delta and examples < 2^62 / (Delta + 1): no overflow.
        for (s, zj) in self.sum.iter_mut().zip(z) {
            *s += zj;
        }
        self.examples += 1;
        Ok(())
    }

    /// Adds `N_Z(0, (z Delta)^2)` to every integer coordinate (exact sampler, randomness from
    /// `rng`) and returns the result times `gamma`: the noisy sum of clipped gradients.
    pub fn finish(self, rng: &mut dyn CryptoRng) -> Vec<f64> {
        let gamma = self.gamma();
        self.sum
            .into_iter()
            .map(|s| {
                // A noise draw beyond 2^62 has probability ~exp(-2^124 / sigma^2): saturating
                // is for totality, not a case that occurs.
                let noise = self.noise.as_ref().map_or(0, |dg| dg.sample(rng));
                s.saturating_add(noise) as f64 * gamma
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    fn norm(v: &[f64]) -> f64 {
        v.iter().map(|a| a * a).sum::<f64>().sqrt()
    }

    #[test]
    fn schedule_values() {
        let s = schedule(0.04, 1).unwrap();
        assert_eq!(s, Schedule { steps: 25, sampling_rate: 0.04 });
        assert_eq!(s.steps_per_epoch(), 25);
        assert_eq!(schedule(0.04, 3).unwrap().steps, 75);
        // ceil(1/0.3) = 4 steps per epoch.
        assert_eq!(schedule(0.3, 2).unwrap().steps, 8);
        assert_eq!(schedule(1.0, 2).unwrap(), Schedule { steps: 2, sampling_rate: 1.0 });
        assert!(schedule(0.0, 1).is_err());
        assert!(schedule(1.5, 1).is_err());
        assert!(schedule(f64::NAN, 1).is_err());
        assert_eq!(schedule(0.5, 0).unwrap_err(), PrivacyError::ZeroSteps);
        assert_eq!(s.charge(1.1), Charge::SubsampledGaussian { noise_multiplier: 1.1, sampling_rate: 0.04, steps: 25 });
    }

    #[test]
    fn bernoulli_exact_has_rate_q() {
        let mut r = rng(7);
        assert!(!bernoulli_exact(0.0, &mut r));
        assert!(bernoulli_exact(1.0, &mut r));
        // q = 1/2 is decided by the first bit alone; q = 0.04 and 0.3 have long expansions.
        // 200_000 draws: Bin(n, q) has std sqrt(n q (1-q)); 6 std two-sided (~2e-9 false alarm).
        for q in [0.5, 0.3, 0.04, 1e-3] {
            let n = 200_000u32;
            let hits = (0..n).filter(|_| bernoulli_exact(q, &mut r)).count() as f64;
            let (mean, sd) = (f64::from(n) * q, (f64::from(n) * q * (1.0 - q)).sqrt());
            assert!((hits - mean).abs() < 6.0 * sd, "q {q}: {hits} vs {mean} +- {sd}");
        }
    }

    #[test]
    fn poisson_sample_includes_each_row_at_rate_q() {
        let mut r = rng(1);
        assert_eq!(poisson_sample(5, 1.0, &mut r).unwrap(), vec![0, 1, 2, 3, 4]);
        assert!(poisson_sample(5, 0.0, &mut r).is_err());
        assert!(poisson_sample(5, 1.01, &mut r).is_err());
        assert!(poisson_sample(0, 0.5, &mut r).unwrap().is_empty());
        // 20_000 trials of 10 rows at q = 0.3: per-row inclusion count ~ Bin(20000, 0.3),
        // std 64.8; 6 std = 389 (two-sided false alarm ~2e-9 per row).
        let trials = 20_000;
        let mut counts = [0u32; 10];
        let mut empty = 0;
        for _ in 0..trials {
            let s = poisson_sample(10, 0.3, &mut r).unwrap();
            assert!(s.windows(2).all(|w| w[0] < w[1]));
            empty += usize::from(s.is_empty());
            for i in s {
                counts[i] += 1;
            }
        }
        for c in counts {
            assert!((f64::from(c) - 6000.0).abs() < 389.0, "{counts:?}");
        }
        // P(empty) = 0.7^10 = 0.0282, expected 565, std 23.4: within 6 std.
        assert!((empty as f64 - 565.0).abs() < 141.0, "{empty}");
    }

    #[test]
    fn constructor_refuses_bad_parameters() {
        assert!(NoisyGradientSum::new(0, 1.0, 1.0, 16).is_err());
        assert!(NoisyGradientSum::new(3, 0.0, 1.0, 16).is_err());
        assert!(NoisyGradientSum::new(3, f64::NAN, 1.0, 16).is_err());
        assert!(NoisyGradientSum::new(3, f64::INFINITY, 1.0, 16).is_err());
        assert_eq!(
            NoisyGradientSum::new(3, 1.0, -1.0, 16).unwrap_err(),
            PrivacyError::InvalidNoiseMultiplier(-1.0)
        );
        assert!(NoisyGradientSum::new(3, 1.0, f64::NAN, 16).is_err());
        assert!(NoisyGradientSum::new(3, 1.0, 1.0, 0).is_err());
        assert!(NoisyGradientSum::new(3, 1.0, 1.0, MAX_LATTICE_BITS + 1).is_err());
        // sigma_int = 1000 * 2^16 > 1.2e7: beyond the exact sampler, refused (typed).
        assert!(matches!(
            NoisyGradientSum::new(3, 1.0, 1000.0, 16),
            Err(PrivacyError::InvalidParameter { name: "noise_multiplier", .. })
        ));
        // z = 100 at k = 16 is fine; so is z = 1 at the largest k.
        assert!(NoisyGradientSum::new(3, 1.0, 100.0, 16).is_ok());
        assert!(NoisyGradientSum::new(3, 1.0, 1.0, MAX_LATTICE_BITS).is_ok());
    }

    #[test]
    fn parameters_and_effective_noise_multiplier() {
        let s = NoisyGradientSum::new(10, 2.0, 1.5, 16).unwrap();
        assert_eq!(s.gamma(), 2.0 / 65536.0);
        let delta = s.l2_sensitivity();
        assert!((65536.0..65536.0 * (1.0 + 1e-4)).contains(&delta), "{delta}");
        assert_eq!(s.noise_std_int(), 1.5 * delta);
        let eff = s.effective_noise_multiplier();
        assert!((1.5..1.5 * (1.0 + 1e-4)).contains(&eff), "{eff}");
    }

    #[test]
    fn clipping_bounds_one_contribution() {
        // A gradient of norm 10 with C = 1 contributes at most Delta * gamma (and at least
        // C - sqrt(d) gamma: rounding moves each coordinate by < gamma).
        for seed in 0..50 {
            let mut s = NoisyGradientSum::new(4, 1.0, 0.0, 16).unwrap();
            let bound = s.l2_sensitivity() * s.gamma();
            let gamma = s.gamma();
            let mut r = rng(seed);
            s.add_example(&[6.0, 0.0, -8.0, 0.0], &mut r).unwrap();
            let out = s.finish(&mut r);
            let n = norm(&out);
            assert!(n <= bound, "{n} > {bound}");
            assert!(n >= 1.0 - 2.0 * gamma, "{n}");
            // Direction kept: (0.6, 0, -0.8, 0) up to rounding.
            assert!((out[0] - 0.6).abs() < gamma && (out[2] + 0.8).abs() < gamma, "{out:?}");
            assert!(out[1].abs() < gamma && out[3].abs() < gamma);
        }
    }

    #[test]
    fn sum_of_examples_below_the_clip_is_their_sum_up_to_rounding() {
        let mut s = NoisyGradientSum::new(3, 1.0, 0.0, 16).unwrap();
        let gamma = s.gamma();
        let mut r = rng(3);
        let rows = [[0.1f32, -0.2, 0.3], [0.5, 0.5, -0.5], [0.0, 0.0, 0.0]];
        for row in &rows {
            s.add_example(row, &mut r).unwrap();
        }
        assert_eq!(s.examples(), 3);
        let out = s.finish(&mut r);
        for (j, o) in out.iter().enumerate() {
            let want: f64 = rows.iter().map(|row| f64::from(row[j])).sum();
            // Each example's coordinate moves by < gamma.
            assert!((o - want).abs() < 3.0 * gamma, "{j}: {o} vs {want}");
        }
    }

    #[test]
    fn rounding_is_unbiased() {
        // A vector of norm 0.5 C never meets the rounding bound (||round(x)|| <= ||x|| +
        // sqrt(d) < 2^16 <= Delta in scaled units), so conditioning never redraws and the
        // rounding is plain stochastic rounding: unbiased. Its per-example error in scaled
        // units has variance frac(1 - frac) <= 1/4, so the mean over N = 20_000 examples has std
        // <= 0.5 / sqrt(N) = 0.0035; we allow 6 std (false alarm ~2e-9 per coordinate).
        let n = 20_000u32;
        let x = [0.123_456_7f32, -0.333_333_3, 0.000_001_2, 0.25];
        let mut s = NoisyGradientSum::new(4, 1.0, 0.0, 16).unwrap();
        let scale = 1.0 / s.gamma();
        let mut r = rng(7);
        for _ in 0..n {
            s.add_example(&x, &mut r).unwrap();
        }
        let out = s.finish(&mut r);
        let tol = 6.0 * 0.5 / f64::from(n).sqrt();
        for (o, &xj) in out.iter().zip(&x) {
            let mean_scaled = o * scale / f64::from(n);
            let want = f64::from(xj) * scale;
            assert!((mean_scaled - want).abs() < tol, "{mean_scaled} vs {want}");
        }
        // And the rounding did something (not always-down or always-up): the scaled value
        // -0.3333333 * 65536 = -21845.33 has fractional part 0.67, so the mean is strictly
        // between the two neighbouring integers.
        let m = out[1] * scale / f64::from(n);
        assert!(m > -21846.0 + 0.1 && m < -21845.0 - 0.1, "{m}");
    }

    #[test]
    fn noise_std_matches_z_delta_gamma() {
        // No examples: the output is pure noise, d independent draws of N_Z(0, sigma_int^2)
        // times gamma. For sigma_int ~ 6.5e4 the discrete Gaussian's variance equals sigma^2 to
        // within exp(-2 pi^2 sigma^2), and the sampler's sigma^2 is rounded up by less than
        // 2^-30 relative. The sample variance over d = 20_000 coordinates has relative std
        // sqrt(2/d) = 0.01 (chi-square, normal approximation); we allow 5 std = 5%
        // (two-sided false alarm ~6e-7). The mean has std sigma/sqrt(d); we allow 5 std.
        let d = 20_000;
        for (z, seed) in [(0.5, 11u64), (1.0, 12), (3.0, 13)] {
            let s = NoisyGradientSum::new(d, 1.0, z, 16).unwrap();
            let want = s.noise_std();
            assert_eq!(want, z * s.l2_sensitivity() * s.gamma());
            let out = s.finish(&mut rng(seed));
            let mean = out.iter().sum::<f64>() / d as f64;
            let var = out.iter().map(|v| v * v).sum::<f64>() / d as f64;
            assert!(mean.abs() < 5.0 * want / (d as f64).sqrt(), "z = {z}: mean {mean}");
            let ratio = var / (want * want);
            assert!((ratio - 1.0).abs() < 5.0 * (2.0 / d as f64).sqrt(), "z = {z}: var ratio {ratio}");
            // Every value is on the lattice gamma Z.
            let gamma = 1.0 / 65536.0;
            assert!(out.iter().all(|v| (v / gamma).fract() == 0.0));
        }
    }

    #[test]
    fn bad_input_is_refused_and_leaves_the_sum_unchanged() {
        let mut s = NoisyGradientSum::new(3, 1.0, 0.0, 16).unwrap();
        let mut r = rng(5);
        s.add_example(&[0.5, 0.25, -0.125], &mut r).unwrap();
        let before = (s.sum.clone(), s.examples());
        assert_eq!(
            s.add_example(&[1.0, 2.0], &mut r).unwrap_err(),
            PrivacyError::InputLength { expected: 3, got: 2 }
        );
        assert_eq!(
            s.add_example(&[1.0, f32::NAN, 0.0], &mut r).unwrap_err(),
            PrivacyError::NonFiniteInput { index: 1 }
        );
        assert_eq!(
            s.add_example(&[1.0, 0.0, f32::NEG_INFINITY], &mut r).unwrap_err(),
            PrivacyError::NonFiniteInput { index: 2 }
        );
        assert_eq!((s.sum.clone(), s.examples()), before);
        // 0.5, 0.25, -0.125 are exact multiples of gamma: no rounding at all.
        assert_eq!(s.finish(&mut r), vec![0.5, 0.25, -0.125]);
    }
}
