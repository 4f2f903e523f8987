//! Rényi-DP accounting: the RDP curve of each mechanism over a fixed grid of orders, added up
//! over steps (RDP composes by addition, order by order), then converted to (epsilon, delta).
//!
//! # Poisson-subsampled Gaussian (Mironov, Talwar, Zhang 2019)
//!
//! Each record is included with probability q, the sum of the included (clipped) records gets
//! N(0, z^2) noise per unit of L2 sensitivity. At order alpha the RDP is
//! `log(A_alpha) / (alpha - 1)` with `A_alpha = E_{x~mu0}[(mu(x)/mu0(x))^alpha]`,
//! `mu0 = N(0, z^2)`, `mu = (1-q) mu0 + q N(1, z^2)`.
//!
//! * Integer alpha: the binomial expansion is finite,
//!   `A = sum_{i=0..alpha} C(alpha,i) q^i (1-q)^(alpha-i) exp((i^2 - i) / (2 z^2))`.
//! * Fractional alpha (MTZ section 3.3): split the integral at
//!   `z0 = z^2 log(1/q - 1) + 1/2` and expand each half in a convergent binomial series whose
//!   terms carry Gaussian tail masses `erfc(.)/2`. The series is summed until both halves'
//!   terms decrease and fall below `e^-30` of the total (the criterion dp_accounting uses); if
//!   it has not converged after 1000 terms, that order is dropped (RDP = +inf), which can
//!   only make the final epsilon larger.
//!
//! Everything is in log space (`log_add`), with `lgamma` for binomial coefficients of
//! real arguments (its absolute value for negative `C(alpha, i)`, as dp_accounting does) and a
//! `log erfc` that stays accurate in the far tail.
//!
//! # Conversion to (epsilon, delta)
//!
//! Per order (Balle et al. 2020, Thm 21; Canonne-Kamath-Steinke 2020, Prop. 12):
//! `eps(alpha) = rdp + log1p(-1/alpha) - log(delta * alpha) / (alpha - 1)` for alpha > 1.01,
//! and `eps = 0` when the KL bound `delta >= sqrt(1 - exp(-rdp))` already holds; epsilon is the
//! minimum over orders (clamped at 0), exactly as `dp_accounting.rdp.compute_epsilon`.
//!
//! # Never optimistic
//!
//! f64 rounding in `lgamma`, `erfc` and the log-space sums is a few ulps of quantities of
//! size <= ~1e3; to absorb it, every `log A_alpha` is raised by [`LOG_A_MARGIN`] (1e-10,
//! absolute) before division by `alpha - 1`. The fractional-order series truncation leaves
//! terms below `e^-30` relative; that tail is also covered by the margin only heuristically
//! (it is ~1e-13 relative when the terms decay geometrically, as they do past the peak). Any
//! order whose series does not converge is dropped (treated as +inf). The result therefore
//! exceeds dp_accounting's by ~1e-10 relative at most, and is never below the exact value
//! by more than that rounding argument allows.

use crate::PrivacyError;

/// Absolute upward margin added to every computed `log A_alpha` (see module docs).
pub const LOG_A_MARGIN: f64 = 1e-10;

/// Terms of the fractional-order series before the order is given up (dp_accounting's limit).
const MAX_FRACTIONAL_TERMS: usize = 1000;

/// The default RDP orders, the same grid as dp_accounting's `RdpAccountant`:
/// 1.1, 1.2, ..., 10.9 (99 orders), 11, 12, ..., 63, and 128, 256, 512, 1024.
pub fn default_orders() -> Vec<f64> {
    let mut orders: Vec<f64> = (1..100).map(|x| 1.0 + f64::from(x) / 10.0).collect();
    orders.extend((11..64).map(f64::from));
    orders.extend([128.0, 256.0, 512.0, 1024.0]);
    orders
}

fn check_rate(q: f64) -> Result<(), PrivacyError> {
    if q.is_finite() && q > 0.0 && q <= 1.0 {
        Ok(())
    } else {
        Err(PrivacyError::InvalidSamplingRate(q))
    }
}

fn check_noise(z: f64) -> Result<(), PrivacyError> {
    if z.is_finite() && z >= 0.0 {
        Ok(())
    } else {
        Err(PrivacyError::InvalidNoiseMultiplier(z))
    }
}

fn check_delta(delta: f64) -> Result<(), PrivacyError> {
    if delta.is_finite() && delta > 0.0 && delta < 1.0 {
        Ok(())
    } else {
        Err(PrivacyError::InvalidDelta(delta))
    }
}

fn check_orders(orders: &[f64]) -> Result<(), PrivacyError> {
    match orders.iter().find(|a| !(a.is_finite() && **a > 1.0)) {
        Some(a) => Err(PrivacyError::InvalidOrder(*a)),
        None if orders.is_empty() => Err(PrivacyError::InvalidRdpCurve("no orders")),
        None => Ok(()),
    }
}

/// `log(e^x + e^y)` without overflow.
fn log_add(x: f64, y: f64) -> f64 {
    let (lo, hi) = if x < y { (x, y) } else { (y, x) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// `log |C(n, k)|` for real n, k via `lgamma` (which returns `log |Gamma|`).
fn log_binom(n: f64, k: f64) -> f64 {
    libm::lgamma(n + 1.0) - libm::lgamma(k + 1.0) - libm::lgamma(n - k + 1.0)
}

/// `log(erfc(x))`, accurate for large x where `erfc` underflows.
fn log_erfc(x: f64) -> f64 {
    if x < 25.0 {
        // erfc(25) ~ 8e-274 is still a normal f64; libm's erfc is accurate to a few ulps
        // relative over its whole range.
        libm::erfc(x).ln()
    } else {
        // Asymptotic series: erfc(x) = exp(-x^2)/(x sqrt(pi)) * (1 - 1/(2x^2) + 3/(4x^4)
        // - 15/(8x^6) + 105/(16x^8) - ...); at x >= 25 the first omitted term is < 1e-15.
        let u = 1.0 / (x * x);
        let series = 1.0 - 0.5 * u + 0.75 * u * u - 1.875 * u * u * u + 6.5625 * u * u * u * u;
        -x * x - x.ln() - 0.5 * std::f64::consts::PI.ln() + series.ln()
    }
}

fn log_a_integer(q: f64, z: f64, alpha: u64) -> f64 {
    let (log_q, log_1mq) = (q.ln(), (-q).ln_1p());
    let a = alpha as f64;
    (0..=alpha).fold(f64::NEG_INFINITY, |acc, i| {
        let i = i as f64;
        let term =
            log_binom(a, i) + i * log_q + (a - i) * log_1mq + (i * i - i) / (2.0 * z * z);
        log_add(acc, term)
    })
}

fn log_a_fractional(q: f64, z: f64, alpha: f64) -> f64 {
    let (log_q, log_1mq) = (q.ln(), (-q).ln_1p());
    let z0 = z * z * (1.0 / q - 1.0).ln() + 0.5;
    let s2 = std::f64::consts::SQRT_2 * z;
    let log_half = 0.5f64.ln();
    let (mut a0, mut a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let (mut last0, mut last1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for i in 0..MAX_FRACTIONAL_TERMS {
        let i = i as f64;
        let j = alpha - i;
        let coef = log_binom(alpha, i);
        // Left part (x <= z0): expand in powers of the N(1) component with exponent i.
        let s0 = coef + i * log_q + j * log_1mq + (i * i - i) / (2.0 * z * z)
            + log_half
            + log_erfc((i - z0) / s2);
        // Right part (x >= z0): the roles of q and 1-q swap, exponent j.
        let s1 = coef + j * log_q + i * log_1mq + (j * j - j) / (2.0 * z * z)
            + log_half
            + log_erfc((z0 - j) / s2);
        a0 = log_add(a0, s0);
        a1 = log_add(a1, s1);
        let total = log_add(a0, a1);
        if s0 < last0 && s1 < last1 && s0.max(s1) < total - 30.0 {
            return total;
        }
        last0 = s0;
        last1 = s1;
    }
    // Not converged: drop this order (conservative).
    f64::INFINITY
}

/// RDP at one order of one step of the Poisson-subsampled Gaussian mechanism; inputs checked.
fn poisson_gaussian_rdp_at(z: f64, q: f64, alpha: f64) -> f64 {
    if z == 0.0 {
        return f64::INFINITY;
    }
    if q == 1.0 {
        return gaussian_rdp_at(z, alpha);
    }
    let log_a = if alpha.fract() == 0.0 && alpha <= 1e6 {
        log_a_integer(q, z, alpha as u64)
    } else {
        log_a_fractional(q, z, alpha)
    };
    (log_a + LOG_A_MARGIN) / (alpha - 1.0)
}

/// RDP of the plain Gaussian mechanism with noise multiplier z (sensitivity 1):
/// `alpha / (2 z^2)`, exact (Mironov 2017, Prop. 7).
fn gaussian_rdp_at(z: f64, alpha: f64) -> f64 {
    if z == 0.0 { f64::INFINITY } else { alpha / (2.0 * z * z) }
}

/// The RDP curve, at `orders`, of ONE step of the Poisson-subsampled Gaussian mechanism with
/// noise multiplier `z` and sampling rate `q`.
pub fn poisson_gaussian_rdp(z: f64, q: f64, orders: &[f64]) -> Result<Vec<f64>, PrivacyError> {
    check_noise(z)?;
    check_rate(q)?;
    check_orders(orders)?;
    Ok(orders.iter().map(|&a| poisson_gaussian_rdp_at(z, q, a)).collect())
}

/// The RDP curve of ONE application of the Gaussian mechanism (no subsampling), noise
/// multiplier `z`: exactly `alpha / (2 z^2)`.
pub fn gaussian_rdp(z: f64, orders: &[f64]) -> Result<Vec<f64>, PrivacyError> {
    check_noise(z)?;
    check_orders(orders)?;
    Ok(orders.iter().map(|&a| gaussian_rdp_at(z, a)).collect())
}

/// Largest number of sites the sum accountants accept.
pub const MAX_SUM_SITES: u64 = 1 << 32;

/// Terms of the discrete Gaussian sum's `tau` series summed one by one (the rest bounded).
const TAU_EXACT_TERMS: u64 = 4096;

/// The RDP curve of one release of the SUM of `n` independent discrete Gaussians
/// `N_Z(0, sigma^2)` per coordinate, in `dim` coordinates, for neighbouring integer inputs
/// at L1 distance <= `l1` and L2 distance <= `l2` (Kairouz, Liu, Steinke 2021, Theorem 1 /
/// Prop. 14): with `tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k/(k+1))`,
///
/// `eps(alpha) = min( alpha l2^2/(2 n sigma^2) + tau dim,
///                    alpha/2 (l2^2/(n sigma^2) + 2 l1 tau/(sqrt(n) sigma) + tau^2 dim),
///                    alpha/2 (l2/(sqrt(n) sigma) + tau sqrt(dim))^2 )`.
///
/// Requires sigma >= 1/2. With n = 1, tau = 0 and this is `alpha l2^2 / (2 sigma^2)`, the
/// discrete Gaussian's exact concentrated-DP bound (Canonne, Kamath, Steinke 2020, Thm 4).
/// Transcribed from the paper's statement and checked against the authors' reference
/// accounting (`tests/reference_vectors.rs`).
pub fn discrete_gaussian_sum_rdp(
    sigma: f64,
    n: u64,
    dim: u64,
    l1: f64,
    l2: f64,
    orders: &[f64],
) -> Result<Vec<f64>, PrivacyError> {
    let bad = |name, value, reason| Err(PrivacyError::InvalidParameter { name, value, reason });
    if !(sigma.is_finite() && sigma >= 0.5) {
        return bad("sigma", sigma, "must be finite and >= 1/2");
    }
    if n == 0 || n > MAX_SUM_SITES {
        return bad("n", n as f64, "must be between 1 and 2^32");
    }
    if dim == 0 {
        return bad("dim", 0.0, "must be >= 1");
    }
    if !(l1.is_finite() && l1 >= 0.0) {
        return bad("l1", l1, "must be finite and >= 0");
    }
    if !(l2.is_finite() && l2 >= 0.0) {
        return bad("l2", l2, "must be finite and >= 0");
    }
    check_orders(orders)?;
    let pi2s2 = 2.0 * std::f64::consts::PI.powi(2) * sigma * sigma;
    // The first TAU_EXACT_TERMS terms are summed; the rest are bounded in O(1), because `n`
    // comes from specs and ledger files, not only from honest sites. With c = 2 pi^2 sigma^2
    // and K = TAU_EXACT_TERMS, a later term is exp(-c) exp(c/(k+1)) with c/(k+1) <= x0 =
    // c/(K+2), and by convexity exp(x) <= 1 + x exp(x0) on [0, x0]; summing, with
    // sum_{k=K+1}^{n-1} 1/(k+1) <= ln(n/(K+1)):
    //   tail <= (n-1-K) exp(-c) + c ln(n/(K+1)) exp(-c (1 - 1/(K+2))),
    // an upper bound (never optimistic), within ~(c/K)^2 of the sum, and free of overflow.
    let term = |k: u64| (-pi2s2 * k as f64 / (k as f64 + 1.0)).exp();
    let exact = (n - 1).min(TAU_EXACT_TERMS);
    let mut tau = (1..=exact).map(term).sum::<f64>();
    if n - 1 > exact {
        let k = exact as f64;
        tau += (n - 1 - exact) as f64 * (-pi2s2).exp()
            + pi2s2 * (n as f64 / (k + 1.0)).ln() * (-pi2s2 * (1.0 - 1.0 / (k + 2.0))).exp();
    }
    let tau = 10.0 * tau;
    let (nf, d) = (n as f64, dim as f64);
    let ns2 = nf * sigma * sigma;
    let sns = nf.sqrt() * sigma;
    Ok(orders
        .iter()
        .map(|&a| {
            let b1 = a * l2 * l2 / (2.0 * ns2) + tau * d;
            let b2 = a / 2.0 * (l2 * l2 / ns2 + 2.0 * l1 * tau / sns + tau * tau * d);
            let b3 = a / 2.0 * (l2 / sns + tau * d.sqrt()).powi(2);
            b1.min(b2).min(b3)
        })
        .collect())
}

/// The RDP curve of one release of the SUM of `n` sites' symmetric Skellam noise shares,
/// each of variance `sigma^2` per coordinate, for neighbouring integer inputs at L1 distance
/// <= `l1` and L2 distance <= `l2` (Agarwal, Kairouz, Liu 2021, "The Skellam Mechanism for
/// Differentially Private Federated Learning", Theorem 3.5 / Corollary 3.6). Skellam is
/// closed under addition, so the sum is Skellam with variance `V = n sigma^2` and, for
/// integer `alpha > 1`,
///
/// `eps(alpha) = alpha l2^2 / (2 V) + min( ((2 alpha - 1) l2^2 + 6 l1) / (4 V^2), 3 l1 / (2 V) )`.
///
/// The bound is proven for integer orders only: fractional orders get `+inf` (looser, never
/// optimistic). Same form as the authors' reference accounting (google-research/federated,
/// `distributed_dp/accounting_utils.py`, `_skellam_rdp`, there in unscaled units); checked
/// against a transcription of it in `tests/reference_vectors.rs`.
pub fn skellam_sum_rdp(sigma: f64, n: u64, l1: f64, l2: f64, orders: &[f64]) -> Result<Vec<f64>, PrivacyError> {
    let bad = |name, value, reason| Err(PrivacyError::InvalidParameter { name, value, reason });
    if !(sigma.is_finite() && sigma > 0.0) {
        return bad("sigma", sigma, "must be finite and > 0");
    }
    if n == 0 || n > MAX_SUM_SITES {
        return bad("n", n as f64, "must be between 1 and 2^32");
    }
    if !(l1.is_finite() && l1 >= 0.0) {
        return bad("l1", l1, "must be finite and >= 0");
    }
    if !(l2.is_finite() && l2 >= 0.0) {
        return bad("l2", l2, "must be finite and >= 0");
    }
    check_orders(orders)?;
    let v = n as f64 * sigma * sigma;
    Ok(orders
        .iter()
        .map(|&a| {
            if a.fract() != 0.0 {
                return f64::INFINITY;
            }
            let surcharge = (((2.0 * a - 1.0) * l2 * l2 + 6.0 * l1) / (4.0 * v * v)).min(3.0 * l1 / (2.0 * v));
            a * l2 * l2 / (2.0 * v) + surcharge
        })
        .collect())
}

/// Converts an RDP curve to (epsilon, optimal order) at `delta`, with the conversion of
/// Balle et al. 2020 / Canonne-Kamath-Steinke 2020 that dp_accounting uses.
pub fn epsilon_from_rdp(orders: &[f64], rdp: &[f64], delta: f64) -> Result<(f64, f64), PrivacyError> {
    check_delta(delta)?;
    check_orders(orders)?;
    if orders.len() != rdp.len() {
        return Err(PrivacyError::InvalidRdpCurve("one value per order is required"));
    }
    if rdp.iter().any(|r| r.is_nan() || *r < 0.0) {
        return Err(PrivacyError::InvalidRdpCurve("RDP values must be >= 0 and not NaN"));
    }
    let mut best = (f64::INFINITY, orders[0]);
    for (&a, &r) in orders.iter().zip(rdp) {
        let eps = if delta * delta + (-r).exp_m1() > 0.0 {
            // KL bound: delta >= sqrt(1 - exp(-KL)) and KL <= D_alpha, so epsilon = 0 works.
            0.0
        } else if a > 1.01 {
            r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
        } else {
            // Numerically unstable as alpha -> 1; never useful there anyway.
            f64::INFINITY
        };
        if eps < best.0 {
            best = (eps, a);
        }
    }
    Ok((best.0.max(0.0), best.1))
}

/// Accumulated RDP over a fixed grid of orders. Compose mechanisms into it, then ask for
/// epsilon. Cloning is cheap: to test "would this round exceed the budget?", compose into a
/// clone first.
#[derive(Debug, Clone, PartialEq)]
pub struct RdpAccountant {
    orders: Vec<f64>,
    rdp: Vec<f64>,
}

impl Default for RdpAccountant {
    fn default() -> Self {
        Self::new()
    }
}

impl RdpAccountant {
    /// An empty accountant over [`default_orders`] (dp_accounting's grid).
    pub fn new() -> Self {
        let orders = default_orders();
        let rdp = vec![0.0; orders.len()];
        Self { orders, rdp }
    }

    /// An empty accountant over caller-chosen orders (each finite and > 1).
    pub fn with_orders(orders: Vec<f64>) -> Result<Self, PrivacyError> {
        check_orders(&orders)?;
        let rdp = vec![0.0; orders.len()];
        Ok(Self { orders, rdp })
    }

    /// Rebuilds an accountant from a stored curve (for a ledger that persists `orders` and
    /// `rdp`).
    pub fn from_parts(orders: Vec<f64>, rdp: Vec<f64>) -> Result<Self, PrivacyError> {
        check_orders(&orders)?;
        if orders.len() != rdp.len() {
            return Err(PrivacyError::InvalidRdpCurve("one value per order is required"));
        }
        if rdp.iter().any(|r| r.is_nan() || *r < 0.0) {
            return Err(PrivacyError::InvalidRdpCurve("RDP values must be >= 0 and not NaN"));
        }
        Ok(Self { orders, rdp })
    }

    /// The orders.
    pub fn orders(&self) -> &[f64] {
        &self.orders
    }

    /// The accumulated RDP, one value per order.
    pub fn rdp(&self) -> &[f64] {
        &self.rdp
    }

    /// Adds `steps` times a per-step curve (already computed at `self.orders()`).
    pub fn compose_rdp(&mut self, per_step: &[f64], steps: u64) -> Result<(), PrivacyError> {
        if steps == 0 {
            return Err(PrivacyError::ZeroSteps);
        }
        if per_step.len() != self.orders.len() {
            return Err(PrivacyError::InvalidRdpCurve("one value per order is required"));
        }
        if per_step.iter().any(|r| r.is_nan() || *r < 0.0) {
            return Err(PrivacyError::InvalidRdpCurve("RDP values must be >= 0 and not NaN"));
        }
        let t = steps as f64; // exact for steps < 2^53
        for (acc, r) in self.rdp.iter_mut().zip(per_step) {
            *acc += t * r;
        }
        Ok(())
    }

    /// Composes `steps` steps of the Poisson-subsampled Gaussian mechanism (noise multiplier
    /// `z`, sampling rate `q`). On error nothing is composed.
    pub fn compose_poisson_gaussian(&mut self, z: f64, q: f64, steps: u64) -> Result<(), PrivacyError> {
        if steps == 0 {
            return Err(PrivacyError::ZeroSteps);
        }
        let curve = poisson_gaussian_rdp(z, q, &self.orders)?;
        self.compose_rdp(&curve, steps)
    }

    /// Composes `steps` applications of the plain Gaussian mechanism (noise multiplier `z`).
    pub fn compose_gaussian(&mut self, z: f64, steps: u64) -> Result<(), PrivacyError> {
        if steps == 0 {
            return Err(PrivacyError::ZeroSteps);
        }
        let curve = gaussian_rdp(z, &self.orders)?;
        self.compose_rdp(&curve, steps)
    }

    /// Composes `steps` releases of a sum of `n` discrete Gaussians (see
    /// [`discrete_gaussian_sum_rdp`]).
    pub fn compose_discrete_gaussian_sum(
        &mut self,
        sigma: f64,
        n: u64,
        dim: u64,
        l1: f64,
        l2: f64,
        steps: u64,
    ) -> Result<(), PrivacyError> {
        if steps == 0 {
            return Err(PrivacyError::ZeroSteps);
        }
        let curve = discrete_gaussian_sum_rdp(sigma, n, dim, l1, l2, &self.orders)?;
        self.compose_rdp(&curve, steps)
    }

    /// (epsilon, optimal order) at `delta` for everything composed so far.
    pub fn epsilon(&self, delta: f64) -> Result<(f64, f64), PrivacyError> {
        epsilon_from_rdp(&self.orders, &self.rdp, delta)
    }
}

/// Epsilon at `delta` after `steps` steps of the Poisson-subsampled Gaussian (default orders).
pub fn epsilon_for(z: f64, q: f64, steps: u64, delta: f64) -> Result<f64, PrivacyError> {
    check_delta(delta)?;
    let mut acc = RdpAccountant::new();
    acc.compose_poisson_gaussian(z, q, steps)?;
    Ok(acc.epsilon(delta)?.0)
}

/// Relative tolerance of [`smallest_noise_multiplier`]'s bisection.
pub const CALIBRATION_TOLERANCE: f64 = 1e-6;

/// Largest noise multiplier [`smallest_noise_multiplier`] tries before giving up.
pub const MAX_NOISE_MULTIPLIER: f64 = 1e6;

/// The smallest noise multiplier z (to within a relative [`CALIBRATION_TOLERANCE`], rounded
/// up) such that `epsilon_for(z, q, steps, delta) <= target_epsilon`. The returned z always
/// satisfies the target: bisection keeps an upper end that meets it and returns that end.
pub fn smallest_noise_multiplier(
    target_epsilon: f64,
    q: f64,
    steps: u64,
    delta: f64,
) -> Result<f64, PrivacyError> {
    if !(target_epsilon.is_finite() && target_epsilon > 0.0) {
        return Err(PrivacyError::InvalidEpsilon(target_epsilon));
    }
    check_rate(q)?;
    check_delta(delta)?;
    if steps == 0 {
        return Err(PrivacyError::ZeroSteps);
    }
    bisect_noise_multiplier(target_epsilon, 1.0, |z| epsilon_for(z, q, steps, delta))
}

/// The smallest noise multiplier (to a relative [`CALIBRATION_TOLERANCE`], rounded up) whose
/// `epsilon(z)` is at most `target_epsilon`, for an `epsilon` that decreases with `z`.
/// Doubles from `start` to bracket the target, then bisects, always keeping an upper end that
/// meets it and returning that end: the result is never optimistic.
pub(crate) fn bisect_noise_multiplier(
    target_epsilon: f64,
    start: f64,
    epsilon: impl Fn(f64) -> Result<f64, PrivacyError>,
) -> Result<f64, PrivacyError> {
    // Bracket: lo fails (z = 0 gives infinite epsilon), hi meets the target.
    let mut lo = 0.0;
    let mut hi = start;
    loop {
        let e = epsilon(hi)?;
        if e <= target_epsilon {
            break;
        }
        if hi >= MAX_NOISE_MULTIPLIER {
            return Err(PrivacyError::UnreachableTarget { target: target_epsilon, max_noise_multiplier: hi, achieved: e });
        }
        lo = hi;
        hi *= 2.0;
    }
    while hi - lo > CALIBRATION_TOLERANCE * hi {
        let mid = 0.5 * (lo + hi);
        if epsilon(mid)? <= target_epsilon {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_orders_match_dp_accounting_grid() {
        let o = default_orders();
        assert_eq!(o.len(), 99 + 53 + 4);
        assert_eq!(o[0], 1.1);
        assert_eq!(o[98], 10.9);
        assert_eq!(o[99], 11.0);
        assert_eq!(o[151], 63.0);
        assert_eq!(o[155], 1024.0);
    }

    #[test]
    fn log_erfc_is_continuous_at_the_switch() {
        let below = libm::erfc(24.999_999).ln();
        let above = log_erfc(25.000_001);
        assert!((below - above).abs() < 1e-4 * below.abs(), "{below} vs {above}");
        // scipy: log(2) + log_ndtr(-30 sqrt 2) = -903.9741171106442.
        assert!((log_erfc(30.0) - (-903.974_117_110_644_2)).abs() < 1e-9);
    }

    #[test]
    fn issue_example_is_about_2_60() {
        let (eps, order) = {
            let mut a = RdpAccountant::new();
            a.compose_poisson_gaussian(1.1, 256.0 / 60000.0, 14062).unwrap();
            a.epsilon(1e-5).unwrap()
        };
        // dp_accounting 0.6.0: 2.5965558697943036 at order 8.1.
        assert!((eps - 2.596_555_869_794_303_6).abs() < 1e-6 * 2.6, "{eps}");
        assert_eq!(order, 8.1);
    }

    #[test]
    fn full_batch_is_plain_gaussian() {
        let o = default_orders();
        assert_eq!(poisson_gaussian_rdp(2.0, 1.0, &o).unwrap(), gaussian_rdp(2.0, &o).unwrap());
        assert_eq!(gaussian_rdp(2.0, &[3.0]).unwrap(), vec![3.0 / 8.0]);
    }

    #[test]
    fn integer_and_fractional_paths_agree_near_integers() {
        // The fractional series at alpha = 5 +- 1e-7 must bracket the integer formula.
        let (z, q) = (1.1, 0.01);
        let at = |a: f64| poisson_gaussian_rdp_at(z, q, a);
        let lo = at(5.0 - 1e-7);
        let mid = at(5.0);
        let hi = at(5.0 + 1e-7);
        assert!((lo - mid).abs() < 1e-6 * mid && (hi - mid).abs() < 1e-6 * mid, "{lo} {mid} {hi}");
    }

    #[test]
    fn invalid_inputs_are_typed_errors() {
        let mut a = RdpAccountant::new();
        assert_eq!(a.compose_poisson_gaussian(1.0, 0.0, 1), Err(PrivacyError::InvalidSamplingRate(0.0)));
        assert_eq!(a.compose_poisson_gaussian(1.0, 1.5, 1), Err(PrivacyError::InvalidSamplingRate(1.5)));
        assert!(matches!(a.compose_poisson_gaussian(1.0, f64::NAN, 1), Err(PrivacyError::InvalidSamplingRate(_))));
        assert_eq!(a.compose_poisson_gaussian(-1.0, 0.1, 1), Err(PrivacyError::InvalidNoiseMultiplier(-1.0)));
        assert!(matches!(a.compose_poisson_gaussian(f64::INFINITY, 0.1, 1), Err(PrivacyError::InvalidNoiseMultiplier(_))));
        assert_eq!(a.compose_poisson_gaussian(1.0, 0.1, 0), Err(PrivacyError::ZeroSteps));
        assert_eq!(a.epsilon(0.0), Err(PrivacyError::InvalidDelta(0.0)));
        assert_eq!(a.epsilon(1.0), Err(PrivacyError::InvalidDelta(1.0)));
        assert_eq!(a.rdp().iter().sum::<f64>(), 0.0, "failed composes left no trace");
        assert_eq!(smallest_noise_multiplier(0.0, 0.1, 10, 1e-5), Err(PrivacyError::InvalidEpsilon(0.0)));
        assert!(matches!(
            smallest_noise_multiplier(1e-9, 1.0, 1_000_000, 1e-5),
            Err(PrivacyError::UnreachableTarget { .. })
        ));
        assert!(RdpAccountant::with_orders(vec![1.0]).is_err());
        assert!(RdpAccountant::from_parts(vec![2.0], vec![-1.0]).is_err());
    }

    #[test]
    fn zero_noise_means_infinite_epsilon() {
        assert_eq!(epsilon_for(0.0, 0.1, 1, 1e-5).unwrap(), f64::INFINITY);
    }

    #[test]
    fn calibrator_meets_target_and_is_tight() {
        let (q, steps, delta, target) = (256.0 / 60000.0, 14062, 1e-5, 2.6);
        let z = smallest_noise_multiplier(target, q, steps, delta).unwrap();
        assert!(epsilon_for(z, q, steps, delta).unwrap() <= target);
        assert!(epsilon_for(z * (1.0 - 2.0 * CALIBRATION_TOLERANCE), q, steps, delta).unwrap() > target);
        assert!((z - 1.1).abs() < 1e-3, "{z}");
    }

    #[test]
    fn discrete_gaussian_single_site_is_gaussian() {
        let o = default_orders();
        let dg = discrete_gaussian_sum_rdp(3.0, 1, 100, 5.0, 1.0, &o).unwrap();
        let g = gaussian_rdp(3.0, &o).unwrap();
        assert!(dg.iter().zip(&g).all(|(a, b)| (a - b).abs() <= 1e-15 * b), "{dg:?}");
        // More sites with the same per-site sigma: the sum has more noise, less RDP.
        let dg10 = discrete_gaussian_sum_rdp(3.0, 10, 100, 5.0, 1.0, &o).unwrap();
        assert!(dg10.iter().zip(&g).all(|(a, b)| *a < *b && *a >= b / 10.0 * (1.0 - 1e-12)));
    }

    #[test]
    fn discrete_gaussian_sum_is_bounded_not_summed_beyond_4096_sites() {
        // sigma = 0.5 keeps tau large enough to matter. The full series (summed here, as the
        // accountant did before) is never above the bounded one, and within 1e-5 of it.
        let o = default_orders();
        let full_tau = |n: u64| {
            let c = 2.0 * std::f64::consts::PI.powi(2) * 0.25;
            10.0 * (1..n).map(|k| (-c * k as f64 / (k as f64 + 1.0)).exp()).sum::<f64>()
        };
        for n in [TAU_EXACT_TERMS, TAU_EXACT_TERMS + 1, TAU_EXACT_TERMS + 2, 20_000, 1_000_000] {
            let tau = full_tau(n);
            let (nf, d, l2) = (n as f64, 64.0, 2.0);
            let bounded = discrete_gaussian_sum_rdp(0.5, n, 64, 4.0, l2, &o).unwrap();
            for (a, got) in o.iter().zip(&bounded) {
                let ns2 = nf * 0.25;
                let b1 = a * l2 * l2 / (2.0 * ns2) + tau * d;
                let b2 = a / 2.0 * (l2 * l2 / ns2 + 2.0 * 4.0 * tau / (nf.sqrt() * 0.5) + tau * tau * d);
                let b3 = a / 2.0 * (l2 / (nf.sqrt() * 0.5) + tau * d.sqrt()).powi(2);
                let exact = b1.min(b2).min(b3);
                assert!(*got >= exact * (1.0 - 1e-12) && *got <= exact * (1.0 + 1e-5), "n {n} order {a}: {got} vs {exact}");
            }
        }
        // A site count from a hostile spec or ledger costs no more than a small one.
        assert!(discrete_gaussian_sum_rdp(0.5, MAX_SUM_SITES, 64, 4.0, 2.0, &o).is_ok());
        assert!(discrete_gaussian_sum_rdp(0.5, MAX_SUM_SITES + 1, 64, 4.0, 2.0, &o).is_err());
        assert!(skellam_sum_rdp(0.5, MAX_SUM_SITES + 1, 4.0, 2.0, &o).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn epsilon_grows_with_steps(z in 0.5f64..5.0, q in 1e-3f64..1.0, t in 1u64..2000, dt in 1u64..2000) {
            let a = epsilon_for(z, q, t, 1e-5).unwrap();
            let b = epsilon_for(z, q, t + dt, 1e-5).unwrap();
            prop_assert!(b >= a, "{a} {b}");
        }

        #[test]
        fn epsilon_grows_with_rate(z in 0.5f64..5.0, q in 1e-3f64..0.5, f in 1.01f64..2.0, t in 1u64..2000) {
            let a = epsilon_for(z, q, t, 1e-5).unwrap();
            let b = epsilon_for(z, q * f, t, 1e-5).unwrap();
            prop_assert!(b >= a, "{a} {b}");
        }

        #[test]
        fn epsilon_shrinks_with_noise(z in 0.5f64..5.0, f in 1.01f64..2.0, q in 1e-3f64..1.0, t in 1u64..2000) {
            let a = epsilon_for(z, q, t, 1e-5).unwrap();
            let b = epsilon_for(z * f, q, t, 1e-5).unwrap();
            prop_assert!(b <= a, "{a} {b}");
        }

        #[test]
        fn epsilon_shrinks_with_delta(z in 0.5f64..5.0, q in 1e-3f64..1.0, t in 1u64..2000, d in 1e-9f64..1e-3, f in 1.1f64..10.0) {
            let a = epsilon_for(z, q, t, d).unwrap();
            let b = epsilon_for(z, q, t, (d * f).min(0.5)).unwrap();
            prop_assert!(b <= a, "{a} {b}");
        }
    }
}
