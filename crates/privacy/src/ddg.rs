//! The distributed discrete Gaussian (DDG) encoder: Kairouz, Liu, Steinke, ICML 2021, "The
//! Distributed Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation",
//! Algorithm 1 (site) and Algorithm 2 (server).
//!
//! Secure aggregation sums vectors in Z_{2^b}; the coordinator sees only that sum. For the
//! sum to be differentially private without trusting the coordinator, every site adds a
//! share of the noise *before* masking, and the noise must be integer-valued so that it
//! survives the modular sum. The site-side pipeline ([`DdgEncoder::encode`]) is:
//!
//! 1. **Clip** the update to L2 norm `c` ([`DdgParams::l2_clip`]). This bounds one site's
//!    influence on the sum (the sensitivity); everything after it is a fixed bijection up to
//!    rounding, so the privacy analysis is in terms of `c`.
//! 2. **Rotate**: zero-pad to `d' = next_power_of_two(dim)` and apply `H D`, with `D` a
//!    diagonal of random signs and `H` the orthonormal Walsh-Hadamard transform
//!    ([`fwht`], O(d' log d')). A vector of norm `c` then has every coordinate sub-Gaussian
//!    with variance proxy `c^2 / d'` ("flattening"): no coordinate carries much more than its
//!    share, so a small modulus holds the sum with high probability. `D` comes from the
//!    round's public [`DdgParams::rotation_seed`] (ChaCha20, its own stream), identical at
//!    every site, because the server must undo one rotation on the *sum*. The rotation is not
//!    a secret and provides no privacy by itself.
//! 3. **Scale** by `1/gamma` ([`DdgParams::scale`]): `gamma` is the size of one integer
//!    step in the input's units. Smaller `gamma` = finer quantisation but a larger range to
//!    fit in `2^b`.
//! 4. **Conditional stochastic rounding**: round each coordinate up with probability equal
//!    to its fractional part (unbiased), and redraw the whole vector until
//!    `||z||_2 <= Delta_2` ([`DdgParams::l2_sensitivity`]). Plain stochastic rounding can
//!    inflate the norm up to `c/gamma + sqrt(d')`; conditioning caps it at the much smaller
//!    high-probability bound of the paper (each attempt succeeds with probability >= 1 -
//!    beta), which is the sensitivity the accountant uses.
//! 5. **Noise**: add `N_Z(0, local_sigma^2)` to every coordinate with the exact sampler
//!    [`DiscreteGaussian`]. The sum over `n` surviving sites carries `n` such shares; its
//!    privacy is [`crate::discrete_gaussian_sum_rdp`] (the sum of discrete Gaussians is
//!    not itself a discrete Gaussian, hence the paper's `tau` correction terms). Or, with
//!    [`DistributedNoise::Skellam`] (Agarwal, Kairouz, Liu, NeurIPS 2021), add
//!    `Poisson(local_sigma^2/2) - Poisson(local_sigma^2/2)` with the exact [`Skellam`]
//!    sampler: the sum of `n` shares is exactly Skellam, and its privacy is
//!    [`crate::skellam_sum_rdp`]. Everything else in this pipeline is the same.
//! 6. **Wrap** modulo `2^b`. The result is what the site masks and sends.
//!
//! The server ([`DdgEncoder::decode_sum`]) maps the unmasked modular sum to signed integers
//! in `[-2^(b-1), 2^(b-1))`, multiplies by `gamma`, applies the inverse rotation
//! `D H` (H is symmetric and orthonormal, D its own inverse), and drops the padding. The
//! result estimates the sum of the *clipped* updates; its error is the rounding error
//! (bounded, zero-mean) plus the summed noise (variance `n local_sigma^2 gamma^2` per
//! coordinate). If a coordinate of the true integer sum leaves `[-2^(b-1), 2^(b-1))` it
//! wraps ("modular clipping") and that coordinate is garbage; [`DdgCalibration`] picks
//! `gamma` so that this is unlikely.
//!
//! **What the coordinator learns**: only the decoded noisy sum (secure aggregation hides
//! each site's vector), which is `(alpha, rdp_per_round)`-RDP with respect to adding or
//! removing one site, provided at least `n_min` sites' noise is in it. It also knows the
//! public parameters (clip, scale, rotation seed, sigma, bits). Dropouts after noising only
//! *add* noise shares that cancel nothing, so accounting with the guaranteed minimum
//! `n_min` is safe.
//!
//! Randomness: the rounding and the noise draw only from the caller's `rand_core::CryptoRng`;
//! the rotation signs come from the public seed. Floating point is used for clip, rotation,
//! scaling and the rounding probabilities (their exactness does not matter for privacy: the
//! sensitivity is enforced by the integer norm check of step 4); the noise is exact.

use crate::{Charge, DiscreteGaussian, PrivacyError, Skellam};
use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore, SeedableRng};
use std::sync::OnceLock;

/// ChaCha20 stream id for the rotation signs ("ddg-rot" in ASCII), separating them from any
/// other use of the same seed.
const ROTATION_STREAM: u64 = u64::from_be_bytes(*b"\0ddg-rot");

/// Largest supported padded dimension (2^30 coordinates).
pub const MAX_PADDED_DIM: usize = 1 << 30;

/// Largest scaled magnitude `c/gamma + sqrt(d')` allowed, so that every rounded integer and
/// every norm computation is exact in `f64` and fits `i64` with the noise (2^50).
pub const MAX_SCALED_NORM: f64 = (1u64 << 50) as f64;

/// Redraws allowed in the conditional rounding before giving up (each succeeds with
/// probability >= 1 - beta, so exhausting them at beta = e^-0.5 has probability
/// < 0.61^10000).
const MAX_ROUNDING_ATTEMPTS: u32 = 10_000;

/// Largest per-site noise std (in lattice steps) the calibration chooses: below the exact
/// sampler's limit (about 1.2e7) with room to spare.
pub const MAX_LOCAL_SIGMA: f64 = (1u64 << 22) as f64;

/// Default conditional-rounding parameter of the paper, `beta = e^-0.5`.
pub const DEFAULT_BETA: f64 = 0.606_530_659_712_633_4;

/// Largest per-site noise std (in lattice steps) the calibration chooses for Skellam noise:
/// the Poisson sampler's table walk grows with sqrt(mean), and 2^18 steps keeps it at a few
/// factors per draw (BENCHMARKS.md) while the quantisation stays 2^18 times finer than the
/// noise.
pub const MAX_LOCAL_SIGMA_SKELLAM: f64 = (1u64 << 18) as f64;

/// Which integer noise each site adds (step 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DistributedNoise {
    /// Discrete Gaussian `N_Z(0, local_sigma^2)` (Kairouz, Liu, Steinke 2021). The sum of
    /// the shares is not a discrete Gaussian; the accounting carries the paper's `tau` terms.
    #[default]
    DiscreteGaussian,
    /// Symmetric Skellam `Poisson(local_sigma^2/2) - Poisson(local_sigma^2/2)` (Agarwal,
    /// Kairouz, Liu 2021). Closed under addition: the sum of `n` shares is exactly Skellam
    /// with variance `n local_sigma^2`.
    Skellam,
}

impl DistributedNoise {
    /// The mechanism's name in plans, ledgers and reports.
    pub fn mechanism(self) -> &'static str {
        match self {
            DistributedNoise::DiscreteGaussian => "distributed_discrete_gaussian",
            DistributedNoise::Skellam => "distributed_skellam",
        }
    }

    /// Largest per-site std the calibration picks for this noise.
    pub fn max_local_sigma(self) -> f64 {
        match self {
            DistributedNoise::DiscreteGaussian => MAX_LOCAL_SIGMA,
            DistributedNoise::Skellam => MAX_LOCAL_SIGMA_SKELLAM,
        }
    }
}

/// Parameters of one round's DDG encoding; identical at every site and the server.
#[derive(Debug, Clone, PartialEq)]
pub struct DdgParams {
    /// Length of the (unpadded) update vector.
    pub dim: usize,
    /// Modulus `2^bits` of secure aggregation, `bits` in 2..=64.
    pub bits: u32,
    /// L2 clipping norm `c`, in the update's units.
    pub l2_clip: f64,
    /// `1/gamma`: integer steps per unit of the update (the paper's `gamma^-1`).
    pub scale: f64,
    /// Conditional rounding parameter `beta` in [0, 1): each rounding attempt meets the bound
    /// with probability >= 1 - beta. 0 disables the high-probability bound (the deterministic
    /// `c/gamma + sqrt(d')` is used). The paper uses `e^-0.5` ([`DEFAULT_BETA`]).
    pub beta: f64,
    /// Standard deviation of each site's discrete Gaussian noise, per coordinate, in the
    /// scaled integer domain (the paper's `sigma / gamma`). 0 = no noise (testing only).
    pub local_sigma: f64,
    /// Public per-round seed of the rotation signs `D`.
    pub rotation_seed: [u8; 32],
    /// The integer noise each site adds.
    pub noise: DistributedNoise,
}

fn bad(name: &'static str, value: f64, reason: &'static str) -> PrivacyError {
    PrivacyError::InvalidParameter { name, value, reason }
}

/// `Delta_2` of the paper (conditional rounding bound) for clip `c`, scale `1/gamma`,
/// padded dimension `d`, parameter `beta`:
/// `min( c^2/gamma^2 + d/4 + sqrt(2 ln(1/beta)) (c/gamma + sqrt(d)/2), (c/gamma + sqrt(d))^2 )`,
/// square-rooted.
pub(crate) fn rounding_bound(l2_clip: f64, scale: f64, padded: usize, beta: f64) -> f64 {
    let cg = l2_clip * scale;
    let d = padded as f64;
    let deterministic = (cg + d.sqrt()).powi(2);
    let sq = if beta > 0.0 {
        let hp = cg * cg + d / 4.0 + (2.0 * (1.0 / beta).ln()).sqrt() * (cg + d.sqrt() / 2.0);
        hp.min(deterministic)
    } else {
        deterministic
    };
    sq.sqrt()
}

impl DdgParams {
    /// Checks every field; [`DdgEncoder::new`] calls it.
    pub fn validate(&self) -> Result<(), PrivacyError> {
        if self.dim == 0 {
            return Err(bad("dim", 0.0, "must be >= 1"));
        }
        if self.dim > MAX_PADDED_DIM {
            return Err(bad("dim", self.dim as f64, "must be <= 2^30"));
        }
        if !(2..=64).contains(&self.bits) {
            return Err(bad("bits", f64::from(self.bits), "must be in 2..=64"));
        }
        if !(self.l2_clip.is_finite() && self.l2_clip > 0.0) {
            return Err(bad("l2_clip", self.l2_clip, "must be finite and > 0"));
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(bad("scale", self.scale, "must be finite and > 0"));
        }
        if !(self.beta.is_finite() && (0.0..1.0).contains(&self.beta)) {
            return Err(bad("beta", self.beta, "must be in [0, 1)"));
        }
        if !(self.local_sigma.is_finite() && self.local_sigma >= 0.0) {
            return Err(bad("local_sigma", self.local_sigma, "must be finite and >= 0"));
        }
        let norm = self.l2_clip * self.scale + (self.padded_dim() as f64).sqrt();
        if norm > MAX_SCALED_NORM {
            return Err(bad("scale", self.scale, "l2_clip * scale + sqrt(padded dim) must be <= 2^50"));
        }
        Ok(())
    }

    /// `d'`: `dim` rounded up to a power of two (the length of every encoded vector).
    pub fn padded_dim(&self) -> usize {
        self.dim.max(1).next_power_of_two()
    }

    /// `gamma = 1/scale`: the update-domain size of one integer step.
    pub fn gamma(&self) -> f64 {
        1.0 / self.scale
    }

    /// `Delta_2`: the L2 norm every rounded vector is guaranteed to respect, in the scaled
    /// integer domain (KLS 2021, conditional randomised rounding):
    /// `Delta_2^2 = min( c^2/gamma^2 + d'/4 + sqrt(2 ln(1/beta)) (c/gamma + sqrt(d')/2),
    ///                   (c/gamma + sqrt(d'))^2 )`.
    /// It is the L2 sensitivity of the integer sum under adding/removing one site.
    pub fn l2_sensitivity(&self) -> f64 {
        rounding_bound(self.l2_clip, self.scale, self.padded_dim(), self.beta)
    }

    /// One round's privacy charge when at least `n_min` sites' noise is in the sum, from the
    /// parameters alone (no sampler is built: the job's calibration evaluates it many times).
    pub fn charge(&self, n_min: usize) -> Charge {
        let DdgAccounting { sigma, n, dim, l1, l2 } = self.accounting(n_min);
        match self.noise {
            DistributedNoise::DiscreteGaussian => Charge::DistributedDiscreteGaussian { sigma, n, dim, l1, l2 },
            DistributedNoise::Skellam => Charge::DistributedSkellam { sigma, n, dim, l1, l2 },
        }
    }

    /// The mechanism's figures for one round with at least `n_min` noise shares: sigma =
    /// `local_sigma`, n = `n_min`, dim = d', l1 = `Delta_1`, l2 = `Delta_2` (scaled domain;
    /// add/remove-one-site neighbouring; for replace-one, double l1 and l2).
    pub fn accounting(&self, n_min: usize) -> DdgAccounting {
        DdgAccounting {
            sigma: self.local_sigma,
            n: n_min as u64,
            dim: self.padded_dim() as u64,
            l1: self.l1_sensitivity(),
            l2: self.l2_sensitivity(),
        }
    }

    /// `Delta_1 = min(Delta_2^2, sqrt(d') Delta_2)`: an integer vector has
    /// `||z||_1 <= ||z||_2^2` (each `|z_j| <= z_j^2`) and `||z||_1 <= sqrt(d') ||z||_2`.
    pub fn l1_sensitivity(&self) -> f64 {
        let l2 = self.l2_sensitivity();
        (l2 * l2).min((self.padded_dim() as f64).sqrt() * l2)
    }
}

/// Inputs of the parameter choice ([`DdgCalibration::params`]), after KLS 2021 Sections 4-5
/// and the reference implementation's heuristic (TensorFlow Federated,
/// `distributed_discrete_gaussian`).
#[derive(Debug, Clone, PartialEq)]
pub struct DdgCalibration {
    /// Target noise multiplier `z`: total noise std of the sum (over `n_min` sites) divided
    /// by the L2 sensitivity, both in the scaled integer domain.
    pub noise_multiplier: f64,
    /// Guaranteed minimum number of sites whose noise is in the sum.
    pub n_min: usize,
    /// Maximum number of sites whose inputs can be in the sum (the round's participants);
    /// the modulus must hold their sum. `>= n_min`.
    pub n_max: usize,
    /// Modulus bits `b`.
    pub bits: u32,
    /// Update length.
    pub dim: usize,
    /// L2 clip `c`.
    pub l2_clip: f64,
    /// Conditional rounding `beta` (use [`DEFAULT_BETA`]).
    pub beta: f64,
    /// Half-width of the modular range in sub-Gaussian standard deviations, `k` (the paper
    /// and TFF use 3-4; per-coordinate wrap probability <= `2 exp(-k^2/2)`).
    pub k_stddevs: f64,
    /// The integer noise. Both are sized the same way, as in the authors' reference
    /// implementations (`ddgauss_params`, `dskellam_params`): the modulus holds `k_stddevs`
    /// standard deviations of the sum.
    pub noise: DistributedNoise,
}

impl DdgCalibration {
    /// Chooses `scale = 1/gamma` and `local_sigma` (scaled domain).
    ///
    /// **Modulus (no modular clipping, KLS Sections 4.2/4.4).** In the rotated basis, each
    /// coordinate of the scaled noisy sum over `n = n_max` sites is sub-Gaussian with variance
    /// proxy at most `(n^2 c^2 / d' + n gamma^2 / 4 + n sigma^2) / gamma^2`, `sigma =
    /// gamma local_sigma` the noise in input units (rotation of a norm-`n c` vector: `n^2
    /// c^2/d'`; rounding error in an interval of length 1: `1/4`; discrete Gaussian: its
    /// variance). Requiring `2^b = 2 k sqrt(proxy)` and solving for `gamma`:
    ///
    /// `1/gamma = sqrt(4^b - n k^2) / (2 k sqrt(n^2 c^2 / d' + n sigma^2))`,
    ///
    /// so each coordinate wraps with probability <= `2 exp(-k^2/2)` and the whole sum with
    /// probability <= `2 d' exp(-k^2/2)` (union bound; the conditioning of the rounding is
    /// ignored, as in the paper). Needs `4^b > n k^2`.
    ///
    /// **Noise.** `local_sigma = max(1/2, z Delta_2(gamma) / sqrt(n_min))`: the noise of
    /// `n_min` sites has std `z` times the *post-rounding* sensitivity `Delta_2`, not merely
    /// `z c/gamma`. Since `sigma` enters the formula for `gamma` and `Delta_2` depends on
    /// `gamma`, the two are iterated to a fixed point (it converges in a few steps:
    /// `Delta_2 gamma -> c`). The RDP of the result, which includes the paper's `tau`
    /// terms, is [`DdgEncoder::rdp_per_round`]; the noise multiplier is only the sizing rule.
    pub fn params(&self, rotation_seed: [u8; 32]) -> Result<DdgParams, PrivacyError> {
        let z = self.noise_multiplier;
        if !(z.is_finite() && z > 0.0) {
            return Err(PrivacyError::InvalidNoiseMultiplier(z));
        }
        if self.n_min == 0 || self.n_max < self.n_min {
            return Err(bad("n_max", self.n_max as f64, "need 1 <= n_min <= n_max"));
        }
        if !(self.k_stddevs.is_finite() && self.k_stddevs > 0.0) {
            return Err(bad("k_stddevs", self.k_stddevs, "must be finite and > 0"));
        }
        // Validate the shared fields through a provisional DdgParams.
        let mut p = DdgParams {
            dim: self.dim,
            bits: self.bits,
            l2_clip: self.l2_clip,
            scale: 1.0,
            beta: self.beta,
            local_sigma: 0.0,
            rotation_seed,
            noise: self.noise,
        };
        p.validate()?;
        let (n, nmin, k, c) = (self.n_max as f64, self.n_min as f64, self.k_stddevs, self.l2_clip);
        let d = p.padded_dim() as f64;
        let range2 = 4f64.powi(self.bits as i32) - n * k * k;
        if range2 <= 0.0 {
            return Err(bad("bits", f64::from(self.bits), "4^bits must exceed n_max k_stddevs^2"));
        }
        let scale_for = |sigma_in: f64| range2.sqrt() / (2.0 * k * (n * n * c * c / d + n * sigma_in * sigma_in).sqrt());
        // Start from the ideal (no rounding inflation) noise in input units: z c / sqrt(n_min).
        let mut scale = scale_for(z * c / nmin.sqrt());
        for _ in 0..200 {
            let delta2 = rounding_bound(c, scale, p.padded_dim(), self.beta);
            let local = (z * delta2 / nmin.sqrt()).max(0.5);
            let next = scale_for(local / scale);
            let converged = (next - scale).abs() <= 1e-12 * scale;
            scale = next;
            if converged {
                break;
            }
        }
        // The modulus alone may ask for a scale whose noise exceeds what the exact sampler
        // draws (std ~1.2e7): with few sites and 32 bits it does. A coarser lattice then: cap
        // the local noise at MAX_LOCAL_SIGMA steps. The modulus only gets more headroom, and
        // the quantisation stays millions of times finer than the noise.
        let cap = self.noise.max_local_sigma();
        for _ in 0..50 {
            let delta2 = rounding_bound(c, scale, p.padded_dim(), self.beta);
            let local = z * delta2 / nmin.sqrt();
            if local <= cap {
                break;
            }
            scale *= cap / local * 0.999;
        }
        p.scale = scale;
        p.local_sigma = (z * p.l2_sensitivity() / nmin.sqrt()).max(0.5);
        p.validate()?;
        Ok(p)
    }
}

/// The arguments of [`crate::RdpAccountant::compose_discrete_gaussian_sum`] for one round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DdgAccounting {
    /// Per-site noise std, scaled domain.
    pub sigma: f64,
    /// Guaranteed number of sites whose noise is in the sum.
    pub n: u64,
    /// Padded dimension `d'` (noise is in every padded coordinate).
    pub dim: u64,
    /// `Delta_1` ([`DdgParams::l1_sensitivity`]).
    pub l1: f64,
    /// `Delta_2` ([`DdgParams::l2_sensitivity`]).
    pub l2: f64,
}

/// In-place orthonormal Walsh-Hadamard transform (`H = H^T = H^-1`, entries
/// `(-1)^popcount(i & j) / sqrt(n)`); `x.len()` must be a power of two (or 0). O(n log n).
pub fn fwht(x: &mut [f64]) {
    let n = x.len();
    debug_assert!(n == 0 || n.is_power_of_two());
    let mut h = 1;
    while h < n {
        for block in x.chunks_mut(2 * h) {
            let (lo, hi) = block.split_at_mut(h);
            for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                let (u, v) = (*a, *b);
                *a = u + v;
                *b = u - v;
            }
        }
        h *= 2;
    }
    if n > 1 {
        let norm = 1.0 / (n as f64).sqrt();
        for v in x.iter_mut() {
            *v *= norm;
        }
    }
}

/// `x * min(1, c/||x||_2)` in f64, for an `x` that must have length `dim` and finite
/// values (typed errors otherwise). Shared by [`DdgEncoder::clip`] and the DP-SGD sum
/// ([`crate::dpsgd`]).
pub(crate) fn clip_l2(x: &[f32], dim: usize, l2_clip: f64) -> Result<Vec<f64>, PrivacyError> {
    if x.len() != dim {
        return Err(PrivacyError::InputLength { expected: dim, got: x.len() });
    }
    if let Some(index) = x.iter().position(|v| !v.is_finite()) {
        return Err(PrivacyError::NonFiniteInput { index });
    }
    let mut v: Vec<f64> = x.iter().map(|&a| f64::from(a)).collect();
    let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
    if norm > l2_clip {
        let f = l2_clip / norm;
        v.iter_mut().for_each(|a| *a *= f);
    }
    Ok(v)
}

/// Conditional stochastic rounding (KLS 2021): rounds each coordinate of `scaled` up with
/// probability equal to its fractional part, and redraws the whole vector until
/// `||z||_2 <= bound` (`bound` = [`DdgParams::l2_sensitivity`] or its DP-SGD analogue, which
/// makes each attempt succeed with probability >= 1 - `beta`). Every `|scaled_j|` must be
/// <= [`MAX_SCALED_NORM`] (callers validate it). `beta` is only quoted in the error.
pub(crate) fn round_conditional(
    scaled: &[f64],
    bound: f64,
    beta: f64,
    rng: &mut dyn CryptoRng,
) -> Result<Vec<i64>, PrivacyError> {
    let bound2 = bound * bound;
    let mut z = vec![0i64; scaled.len()];
    for _ in 0..MAX_ROUNDING_ATTEMPTS {
        let mut norm2 = 0.0f64;
        for (o, &v) in z.iter_mut().zip(scaled) {
            let fl = v.floor();
            let frac = v - fl;
            // Uniform on the 2^-53 grid in [0, 1): P(up) = frac (to 2^-53).
            let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            let r = if u < frac { fl + 1.0 } else { fl };
            // |r| <= 2^50 (validated), so the cast and the square are exact enough.
            *o = r as i64;
            norm2 += r * r;
        }
        if norm2 <= bound2 {
            return Ok(z);
        }
    }
    Err(bad("beta", beta, "conditional rounding did not meet its bound"))
}

/// Site encoder and server decoder of one round.
#[derive(Debug, Clone)]
pub struct DdgEncoder {
    params: DdgParams,
    padded: usize,
    /// Diagonal of D, +1.0 or -1.0.
    signs: Vec<f64>,
    /// The noise sampler, built at the first encoding: the coordinator only decodes, and a
    /// Skellam table at the largest means takes ~0.1 s to build.
    noise: OnceLock<Option<NoiseSampler>>,
    delta2: f64,
    mask: u64,
}

/// The exact sampler of one site's noise share.
#[derive(Debug, Clone)]
enum NoiseSampler {
    Gaussian(DiscreteGaussian),
    Skellam(Skellam),
}

impl NoiseSampler {
    fn sample(&self, rng: &mut dyn CryptoRng) -> i64 {
        match self {
            NoiseSampler::Gaussian(g) => g.sample(rng),
            NoiseSampler::Skellam(s) => s.sample(rng),
        }
    }
}

/// `x` as a rational `num/den` rounded UP (noise is never smaller than stated), with the
/// largest power-of-two denominator <= 2^20 for which `fits(num, den)`; `None` if none does.
fn rational_up(x: f64, fits: impl Fn(u64, u64) -> bool) -> Option<(u64, u64)> {
    let mut den: u64 = 1 << 20;
    loop {
        let num = (x * den as f64).ceil();
        if (1.0..1.8e19).contains(&num) && fits(num as u64, den) {
            return Some((num as u64, den));
        }
        if den == 1 {
            return None;
        }
        den /= 2;
    }
}

/// Each Poisson's mean `sigma^2/2` for Skellam noise (variance never below `sigma^2`), within
/// the exact Poisson sampler's range. Cheap: the sampler's table is built only when noise is
/// drawn.
pub(crate) fn skellam_mean(sigma: f64) -> Result<(u64, u64), PrivacyError> {
    let max = u128::from(crate::sample::poisson::MAX_MEAN);
    rational_up(sigma * sigma / 2.0, |num, den| u128::from(num) <= max * u128::from(den))
        .ok_or_else(|| bad("local_sigma", sigma, "too large for the exact Skellam sampler"))
}

/// The discrete Gaussian sampler for `sigma^2`, rounded up as [`rational_up`] does.
pub(crate) fn sigma2_rational(sigma: f64) -> Result<DiscreteGaussian, PrivacyError> {
    let (num, den) = rational_up(sigma * sigma, |num, den| DiscreteGaussian::new(num, den).is_ok())
        .ok_or_else(|| bad("local_sigma", sigma, "too large for the exact sampler"))?;
    DiscreteGaussian::new(num, den)
}

impl DdgEncoder {
    /// Validates `params`, derives the rotation signs and the noise sampler.
    pub fn new(params: DdgParams) -> Result<Self, PrivacyError> {
        params.validate()?;
        let padded = params.padded_dim();
        let mut chacha = ChaCha20Rng::from_seed(params.rotation_seed);
        chacha.set_stream(ROTATION_STREAM);
        let mut signs = Vec::with_capacity(padded);
        let mut word = 0u64;
        for i in 0..padded {
            if i % 64 == 0 {
                word = chacha.next_u64();
            }
            signs.push(if (word >> (i % 64)) & 1 == 1 { -1.0 } else { 1.0 });
        }
        // Validate the noise parameters now (cheap), build the sampler later.
        let noise = OnceLock::new();
        match (params.local_sigma > 0.0, params.noise) {
            (false, _) => {
                let _ = noise.set(None);
            }
            (true, DistributedNoise::DiscreteGaussian) => {
                let _ = noise.set(Some(NoiseSampler::Gaussian(sigma2_rational(params.local_sigma)?)));
            }
            (true, DistributedNoise::Skellam) => {
                skellam_mean(params.local_sigma)?;
            }
        }
        let delta2 = params.l2_sensitivity();
        let mask = if params.bits == 64 { u64::MAX } else { (1u64 << params.bits) - 1 };
        Ok(Self { params, padded, signs, noise, delta2, mask })
    }

    /// The parameters.
    pub fn params(&self) -> &DdgParams {
        &self.params
    }

    /// Length of every encoded vector (`d'`).
    pub fn encoded_len(&self) -> usize {
        self.padded
    }

    /// Step 1: `x * min(1, c/||x||_2)` in f64. Errors on a wrong length or a non-finite value.
    pub fn clip(&self, x: &[f32]) -> Result<Vec<f64>, PrivacyError> {
        clip_l2(x, self.params.dim, self.params.l2_clip)
    }

    /// Step 2: pads `x` (length <= d') with zeros and returns `H D x`.
    pub fn rotate(&self, x: &[f64]) -> Vec<f64> {
        let mut v = vec![0.0; self.padded];
        for ((o, &a), &s) in v.iter_mut().zip(x).zip(&self.signs) {
            *o = a * s;
        }
        fwht(&mut v);
        v
    }

    /// Inverse of [`Self::rotate`] on a length-d' vector: `D H y` (padding kept).
    pub fn unrotate(&self, y: &[f64]) -> Vec<f64> {
        let mut v = y.to_vec();
        v.resize(self.padded, 0.0);
        fwht(&mut v);
        for (o, &s) in v.iter_mut().zip(&self.signs) {
            *o *= s;
        }
        v
    }

    /// Step 4: conditional stochastic rounding of the scaled, rotated vector: redraws until
    /// `||z||_2^2 <= Delta_2^2`.
    fn round_conditional(&self, scaled: &[f64], rng: &mut dyn CryptoRng) -> Result<Vec<i64>, PrivacyError> {
        round_conditional(scaled, self.delta2, self.params.beta, rng)
    }

    /// Algorithm 1: clip, rotate, scale, round conditionally, add discrete Gaussian noise,
    /// wrap mod 2^bits. Output length is [`Self::encoded_len`]. All randomness from `rng`.
    pub fn encode(&self, x: &[f32], rng: &mut dyn CryptoRng) -> Result<Vec<u64>, PrivacyError> {
        let clipped = self.clip(x)?;
        let mut rotated = self.rotate(&clipped);
        rotated.iter_mut().for_each(|v| *v *= self.params.scale);
        let z = self.round_conditional(&rotated, rng)?;
        let sampler = self.noise_sampler()?;
        Ok(z
            .into_iter()
            .map(|zi| {
                let noise = sampler.map_or(0, |s| s.sample(rng));
                // Two's complement then mask = reduction mod 2^bits.
                (zi.wrapping_add(noise) as u64) & self.mask
            })
            .collect())
    }

    /// The noise sampler, built on first use (see the field).
    fn noise_sampler(&self) -> Result<Option<&NoiseSampler>, PrivacyError> {
        if let Some(s) = self.noise.get() {
            return Ok(s.as_ref());
        }
        // `new` sets it for every other case; only Skellam noise is built here.
        debug_assert_eq!(self.params.noise, DistributedNoise::Skellam);
        let (num, den) = skellam_mean(self.params.local_sigma)?;
        let built = Some(NoiseSampler::Skellam(Skellam::new(num, den)?));
        // A concurrent first use may have set it already: either value is the same sampler.
        let _ = self.noise.set(built);
        Ok(self.noise.get().and_then(|s| s.as_ref()))
    }

    /// Maps a residue mod 2^bits to its representative in `[-2^(bits-1), 2^(bits-1))`.
    pub fn to_signed(&self, v: u64) -> i64 {
        let v = v & self.mask;
        let bits = self.params.bits;
        if bits == 64 {
            return v as i64;
        }
        let half = 1u64 << (bits - 1);
        if v >= half { v as i64 - (1i64 << bits) } else { v as i64 }
    }

    /// Algorithm 2, fallible: `sum` (length d', the sum of encodings mod 2^bits) to the
    /// estimate of the sum of the clipped inputs (length `dim`).
    pub fn try_decode_sum(&self, sum: &[u64]) -> Result<Vec<f32>, PrivacyError> {
        if sum.len() != self.padded {
            return Err(PrivacyError::InputLength { expected: self.padded, got: sum.len() });
        }
        let gamma = self.params.gamma();
        let y: Vec<f64> = sum.iter().map(|&v| self.to_signed(v) as f64 * gamma).collect();
        let mut x = self.unrotate(&y);
        x.truncate(self.params.dim);
        Ok(x.into_iter().map(|v| v as f32).collect())
    }

    /// Algorithm 2 with the shape of `fedcare_secagg::quant::Encoder::decode_sum`. `count`
    /// does not enter the estimate (no offset to remove); a `sum` of the wrong length gives
    /// `dim` NaNs (use [`Self::try_decode_sum`] for a typed error).
    pub fn decode_sum(&self, sum: &[u64], _count: usize) -> Vec<f32> {
        self.try_decode_sum(sum).unwrap_or_else(|_| vec![f32::NAN; self.params.dim])
    }

    /// Per-coordinate bound on `|decode_sum - sum of clipped inputs|` for `count` sites,
    /// excluding noise and modular wrap: the rounding error vector of one site has every
    /// scaled coordinate in (-1, 1), so after the orthonormal inverse rotation each output
    /// coordinate moves by < `gamma sqrt(d')` per site; plus `count c 2^-20` for f32/f64
    /// conversions. With `local_sigma > 0` the noise is unbounded: this is then a bound on
    /// the rounding part only (see [`Self::noise_std`]).
    pub fn error_bound(&self, count: usize) -> f32 {
        let n = count as f64;
        let b = n * self.params.gamma() * (self.padded as f64).sqrt() + n * self.params.l2_clip * 2f64.powi(-20);
        b as f32
    }

    /// Std of the summed noise in each decoded coordinate for `count` sites:
    /// `sqrt(count) local_sigma gamma` (the rotation is orthonormal).
    pub fn noise_std(&self, count: usize) -> f64 {
        (count as f64).sqrt() * self.params.local_sigma * self.params.gamma()
    }

    /// [`DdgParams::accounting`] of this encoder's parameters (the arguments of
    /// [`crate::RdpAccountant::compose_discrete_gaussian_sum`] for discrete Gaussian noise).
    pub fn accounting(&self, n_min: usize) -> DdgAccounting {
        self.params.accounting(n_min)
    }

    /// One round's privacy charge when at least `n_min` sites' noise is in the sum
    /// ([`DdgParams::charge`]). The site's ledger takes it from here; the job's plan from the
    /// parameters.
    pub fn charge(&self, n_min: usize) -> Charge {
        self.params.charge(n_min)
    }

    /// RDP curve of one round's decoded sum at `orders`, when at least `n_min` sites' noise
    /// is in it (the RDP of [`Self::charge`]). The discrete Gaussian requires
    /// `local_sigma >= 1/2`.
    pub fn rdp_per_round(&self, n_min: usize, orders: &[f64]) -> Result<Vec<f64>, PrivacyError> {
        self.charge(n_min).rdp(orders)
    }
}
