//! Exact Poisson sampling in O(1) expected time for any rational mean up to 2^44.
//!
//! The distributed Skellam mechanism needs Poisson draws whose mean is the per-site noise
//! variance in lattice steps: 10^5 to 10^12. Summing Poisson(1) draws is exact but O(mean);
//! library samplers (PTRS, Ahrens-Dieter) are fast but decide with floating point, so their
//! output distribution is only approximately Poisson. This sampler is both fast and exact.
//!
//! # Method: table-driven rejection with certified decisions
//! Let `m = floor(lambda)` be the mode and `R(k) = p(k)/p(m) <= 1`. `R` is a product of
//! rational factors: `R(k) = prod_{j=m+1..k} lambda/j` above the mode and
//! `prod_{j=k+1..m} j/lambda` below it.
//!
//! * **Envelope.** Over a window `[lo, hi]` of about `m +- 12 sqrt(lambda)` the integers are
//!   cut into at most 2^16 buckets that never straddle the mode. In a bucket `R` is monotone,
//!   largest at the endpoint nearest the mode (its *anchor*); every point of the bucket gets
//!   the integer weight `V >= 2^S R(anchor)`. Beyond the window the envelope is geometric
//!   (`R(hi + j) <= R(hi) rho^j`, `rho = lambda/(hi+1)`, and likewise below), with an integer
//!   total weight that bounds the tail's mass. All weights are integers, so choosing a point
//!   from the envelope is one uniform integer draw and a binary search: exact.
//! * **Acceptance** of `k` is `R(k) 2^S / V` (a tail point: `R(k)` over its geometric
//!   envelope), a rational number. It is decided by comparing a uniform `U` against an
//!   `f64` approximation whose relative error is *bounded by construction* (below): if `U`
//!   is clearly below or above the enclosure, that is the exact answer. Only if `U` falls
//!   inside it (probability about 1e-14 per draw) is the comparison redone in double-double
//!   arithmetic with its own proven margin, and only if that cannot decide either
//!   (probability about 1e-28) in exact big-integer arithmetic ([`num_bigint`]), drawing
//!   further uniform bits as needed.
//!   Tail points (probability below 2^-40) always take the exact path.
//!
//! The output is therefore exactly Poisson(lambda): every accept/reject is the exact
//! comparison of a uniform variate with the exact acceptance probability; floating point
//! only decides when it provably agrees.
//!
//! # Why the enclosure is rigorous
//! The anchors' values are computed once by a walk from the mode in double-double
//! arithmetic (`Dd`; error below `2^-80` relative, then rounded to `f64`: `u = 2^-53`;
//! the second stage keeps them in double-double and walks on in it, with margin
//! `64 u^2` per step, [`Poisson::rel_err_dd`]).
//! A draw then walks from its bucket's anchor over at most `width - 1` factors, each
//! computed as `num / (den * j)` (or its inverse) with IEEE-754 conversions, one
//! multiplication and one division: correctly rounded basic operations only (no `libm`), so
//! each factor carries a relative error of at most `4u` and the chain at most
//! `(4 width + 2) u (1 + width u)`. The sampler uses twice that, plus `16u` for the final
//! scaling, as its margin ([`Poisson::rel_err`]); `tests::walked_ratio_is_within_its_bound`
//! checks it against exact rationals.
//!
//! # Caveats (as for the other samplers)
//! Running time depends on the output (not constant-time). A tail proposal more than 2^32
//! from the mode is rejected: with the default window that needs a geometric run of over
//! 2^31 steps of ratio at most `1 - 12/2^22`, probability below `exp(-6000)`, and tail
//! proposals are themselves rarer than 2^-40. The truncation changes the distribution by
//! less than that in total variation.

use num_bigint::BigUint;
use rand_core::CryptoRng;

use super::{bernoulli_ratio, gcd, uniform_u64};
use crate::PrivacyError;

/// Largest mean [`Poisson::new`] accepts: the table walk at construction is O(sqrt(mean)).
pub const MAX_MEAN: u64 = 1 << 44;

/// Half-width of the table window in standard deviations (plus [`WINDOW_PAD`]): beyond
/// 12 sigma the Poisson mass is below 1e-30, so the exact tail path is never taken in
/// practice.
const WINDOW_SIGMAS: f64 = 12.0;
const WINDOW_PAD: u64 = 20;

/// Most buckets in the table (about 64 bytes each with the cumulative weights).
const MAX_BUCKETS: u64 = 1 << 16;

/// The table stops where `R(k)` falls below this, keeping every `f64` in the walk normal.
const TINY: f64 = 1e-200;

/// Reduced denominators must be below this.
pub const MAX_DEN: u64 = 1 << 48;

/// Tail proposals farther than this from the mode are rejected (see the caveats).
const MAX_TAIL_REACH: u64 = 1 << 32;

/// Unit roundoff of `f64`.
const UNIT: f64 = f64::EPSILON / 2.0;

/// One bucket of the envelope: points `start .. start + len`, all weighted `weight`.
#[derive(Debug, Clone, PartialEq)]
struct Bucket {
    start: u64,
    len: u64,
    /// The endpoint nearest the mode, where `R` is largest within the bucket.
    anchor: u64,
    /// `R(anchor)` as computed by the walk (relative error <= `rel_err / 2`).
    r_anchor: f64,
    /// `R(anchor)` in double-double, for the second decision stage.
    r_anchor_dd: Dd,
    /// Per-point envelope weight, `>= 2^S R(anchor)` exactly.
    weight: u64,
}

/// Poisson with rational mean `lambda = num/den`, exact (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct Poisson {
    num: u64,
    den: u64,
    mode: u64,
    /// First and last point of the table window.
    lo: u64,
    hi: u64,
    buckets: Vec<Bucket>,
    /// `cum[i]`: total weight of `buckets[..=i]`.
    cum: Vec<u64>,
    /// Total weights of the geometric tails below `lo` (0 when `lo == 0`) and above `hi`.
    left_tail: u64,
    right_tail: u64,
    total: u64,
    /// `S`: weights are in units of `2^-S`.
    scale_bits: u32,
    /// Margin of the floating-point enclosure (twice the proven bound).
    rel_err: f64,
    /// Margin of the double-double enclosure used when the f64 one cannot decide.
    rel_err_dd: f64,
}

impl Poisson {
    /// `lambda = num/den`, `1 <= den < 2^48` (after reduction), `lambda <= 2^44`. Builds the
    /// envelope table in O(sqrt(lambda)) time and at most ~4 MiB.
    pub fn new(num: u64, den: u64) -> Result<Self, PrivacyError> {
        Self::with_window(num, den, None, MAX_BUCKETS)
    }

    /// As [`Self::new`] with an explicit window half-width and bucket count: tests use small
    /// ones to drive the tail and bucket paths hard.
    fn with_window(num: u64, den: u64, half: Option<u64>, max_buckets: u64) -> Result<Self, PrivacyError> {
        if den == 0 {
            return Err(PrivacyError::InvalidRational { num, den, reason: "denominator is 0" });
        }
        let g = gcd(u128::from(num), u128::from(den)).max(1) as u64;
        let (num, den) = (num / g, den / g);
        if den >= MAX_DEN {
            // Keeps den * k below 2^106, exact in double-double.
            return Err(PrivacyError::InvalidRational { num, den, reason: "reduced denominator must be below 2^48" });
        }
        if u128::from(num) > u128::from(MAX_MEAN) * u128::from(den) {
            return Err(PrivacyError::InvalidRational { num, den, reason: "mean must be <= 2^44" });
        }
        let lambda = num as f64 / den as f64;
        let mode = num / den;
        let half = half.unwrap_or_else(|| (WINDOW_SIGMAS * lambda.sqrt()).ceil() as u64 + WINDOW_PAD).max(1);
        let (num_f, den_f) = (num as f64, den as f64);

        // Walk outwards from the mode: R at every point of the window, kept only at bucket
        // anchors. Right side first (anchors are bucket starts), then left (bucket ends). The
        // walk is in double-double arithmetic, so an anchor's only significant error is its
        // final rounding to f64 (see `Dd`), however long the walk.
        let span_guess = half.saturating_mul(2).saturating_add(1);
        let width = span_guess.div_ceil(max_buckets).max(1);
        let rel_err = 8.0 * (width + 8) as f64 * UNIT;
        // Double-double steps err by at most 10u^2 each (see `Dd`); 64u^2 per step over the
        // longest walk (to the window's edge, then within a bucket) leaves a wide margin.
        let rel_err_dd = 64.0 * (half + 2 * width + 8) as f64 * UNIT * UNIT;
        let (num_dd, den_dd) = (Dd::from_u128(u128::from(num)), u128::from(den));
        let mut right = Vec::new();
        let mut r = Dd::ONE;
        let mut k = mode;
        let mut hi = mode;
        if num > 0 {
            loop {
                if (k - mode) % width == 0 {
                    right.push((k, r));
                }
                hi = k;
                if k - mode >= half || r.hi < TINY {
                    break;
                }
                k += 1;
                r = r.mul(num_dd.div(Dd::from_u128(den_dd * u128::from(k))));
            }
        }
        let mut left = Vec::new();
        let mut lo = mode;
        let mut r = Dd::ONE;
        let mut k = mode;
        // Below the mode: R(k) = R(k+1) (k+1)/lambda.
        while k > 0 && mode - k < half && r.hi >= TINY {
            r = r.mul(Dd::from_u128(den_dd * u128::from(k)).div(num_dd));
            k -= 1;
            if (mode - 1 - k) % width == 0 {
                left.push((k, r));
            }
            lo = k;
        }
        let mut buckets = Vec::with_capacity(left.len() + right.len());
        // Left buckets: anchor = end; each covers [max(lo, end - width + 1), end].
        for &(end, r) in left.iter().rev() {
            let start = end.saturating_sub(width - 1).max(lo);
            buckets.push(Bucket { start, len: end - start + 1, anchor: end, r_anchor: r.to_f64(), r_anchor_dd: r, weight: 0 });
        }
        for &(start, r) in &right {
            let end = (start + width - 1).min(hi);
            buckets.push(Bucket { start, len: end - start + 1, anchor: start, r_anchor: r.to_f64(), r_anchor_dd: r, weight: 0 });
        }
        if num == 0 {
            buckets.push(Bucket { start: 0, len: 1, anchor: 0, r_anchor: 1.0, r_anchor_dd: Dd::ONE, weight: 0 });
        }

        // Tail masses (upper bounds, before scaling): R(edge) rho / (1 - rho).
        let r_hi = buckets.last().map_or(1.0, |b| Self::walk_value(num_f, den_f, b.anchor, b.r_anchor, hi));
        let right_ratio = if num == 0 {
            0.0
        } else {
            // rho/(1-rho) = num / (den (hi+1) - num), den (hi+1) > num since hi >= mode.
            num_f / (u128::from(den) * u128::from(hi + 1) - u128::from(num)) as f64
        };
        let r_lo = buckets.first().map_or(1.0, |b| Self::walk_value(num_f, den_f, b.anchor, b.r_anchor, lo));
        let left_ratio = if lo == 0 {
            0.0
        } else {
            // rho_L/(1-rho_L) = lo den / (num - lo den); lo < lambda.
            (u128::from(lo) * u128::from(den)) as f64 / (u128::from(num) - u128::from(lo) * u128::from(den)) as f64
        };
        let margin = (1.0 + rel_err) * (1.0 + rel_err);
        let mass: f64 = buckets.iter().map(|b| b.len as f64 * b.r_anchor).sum::<f64>()
            + r_hi * right_ratio
            + r_lo * left_ratio;
        // Total weight <= 2^S margin mass + 2 (span + 2) <= 2^62: room in a u64.
        let scale_bits = (61.0 - (mass * margin).log2()).floor().min(52.0);
        if !(scale_bits >= 16.0) {
            return Err(PrivacyError::InvalidRational { num, den, reason: "envelope table too large" });
        }
        let scale_bits = scale_bits as u32;
        let two_s = (1u64 << scale_bits) as f64;
        let weight_of = |x: f64| -> u64 { (x * margin * two_s).ceil() as u64 + 1 };
        let mut cum = Vec::with_capacity(buckets.len());
        let mut acc: u64 = 0;
        for b in &mut buckets {
            b.weight = weight_of(b.r_anchor);
            acc += b.weight * b.len;
            cum.push(acc);
        }
        let right_tail = if num == 0 { 0 } else { weight_of(r_hi * right_ratio) };
        let left_tail = if lo == 0 { 0 } else { weight_of(r_lo * left_ratio) };
        let total = acc + right_tail + left_tail;
        Ok(Self { num, den, mode, lo, hi, buckets, cum, left_tail, right_tail, total, scale_bits, rel_err, rel_err_dd })
    }

    /// The mean as the reduced rational `(num, den)`.
    pub fn mean(&self) -> (u64, u64) {
        (self.num, self.den)
    }

    /// `R(k)` by walking from `from` (whose value is `r`) to `k`, all within the window and on
    /// one side of the mode.
    #[inline]
    fn walk_value(num_f: f64, den_f: f64, from: u64, mut r: f64, k: u64) -> f64 {
        if k >= from {
            for j in from + 1..=k {
                r *= num_f / (den_f * j as f64);
            }
        } else {
            for j in k + 1..=from {
                r *= den_f * j as f64 / num_f;
            }
        }
        r
    }

    /// One draw.
    pub fn sample(&self, rng: &mut dyn CryptoRng) -> u64 {
        if self.num == 0 {
            return 0;
        }
        loop {
            let u = uniform_u64(rng, self.total);
            if u < self.left_tail {
                if let Some(k) = self.left_tail_draw(rng) {
                    return k;
                }
                continue;
            }
            let u = u - self.left_tail;
            let in_table = self.cum.last().copied().unwrap_or(0);
            if u >= in_table {
                if let Some(k) = self.right_tail_draw(rng) {
                    return k;
                }
                continue;
            }
            let i = self.cum.partition_point(|&c| c <= u);
            let before = if i == 0 { 0 } else { self.cum[i - 1] };
            let b = &self.buckets[i];
            let k = b.start + (u - before) / b.weight;
            if self.accept_in_table(rng, b, k) {
                return k;
            }
        }
    }

    /// Bernoulli(R(k) 2^S / weight): certified float comparison, exact fallback.
    fn accept_in_table(&self, rng: &mut dyn CryptoRng, b: &Bucket, k: u64) -> bool {
        let r = Self::walk_value(self.num as f64, self.den as f64, b.anchor, b.r_anchor, k);
        let x = r * (1u64 << self.scale_bits) as f64 / b.weight as f64 * 18_446_744_073_709_551_616.0;
        let slack = self.rel_err + 16.0 * UNIT;
        let (lo_t, hi_t) = (x * (1.0 - slack), x * (1.0 + slack));
        let u = rng.next_u64();
        let uf = u as f64;
        // |uf - u| <= 2^11; the +-8192 also absorbs the rounding of the additions.
        if uf + 8192.0 <= lo_t {
            return true;
        }
        if uf - 8192.0 >= hi_t {
            return false;
        }
        match self.decide_dd(u, b, k) {
            Some(accept) => accept,
            None => self.accept_exact_after(rng, u, k, b.weight),
        }
    }

    /// `R(k)` in double-double, walked from the bucket's double-double anchor.
    fn walk_dd(&self, b: &Bucket, k: u64) -> Dd {
        let (num, den) = (Dd::from_u128(u128::from(self.num)), u128::from(self.den));
        let mut r = b.r_anchor_dd;
        if k >= b.anchor {
            for j in b.anchor + 1..=k {
                r = r.mul(num.div(Dd::from_u128(den * u128::from(j))));
            }
        } else {
            for j in k + 1..=b.anchor {
                r = r.mul(Dd::from_u128(den * u128::from(j)).div(num));
            }
        }
        r
    }

    /// Second stage: the same comparison with `R(k)` walked in double-double from the
    /// anchor's double-double value. Decides unless `u` is within about `2^-100` relative of
    /// the threshold; `None` then, and the big integers decide.
    #[cold]
    fn decide_dd(&self, u: u64, b: &Bucket, k: u64) -> Option<bool> {
        let r = self.walk_dd(b, k);
        // x = R(k) 2^S / weight * 2^64 (power-of-two scalings are exact).
        let scale = (1u64 << self.scale_bits) as f64 * 18_446_744_073_709_551_616.0;
        let x = Dd { hi: r.hi * scale, lo: r.lo * scale }.div(Dd::from_u128(u128::from(b.weight)));
        // d = x - u, to within 2^-40 absolute (both are below 2^65); the margin covers the
        // relative error of x, the +1 of "u + 1 <= x", and that subtraction's rounding.
        let d = x.sub(Dd::from_u128(u128::from(u)));
        let margin = self.rel_err_dd * x.hi.abs() + 2.0;
        if d.hi > margin {
            Some(true)
        } else if d.hi < -margin {
            Some(false)
        } else {
            None
        }
    }

    /// The exact comparison `(u + V) / 2^64 < R(k) 2^S / weight`, `V` uniform in [0, 1).
    #[cold]
    fn accept_exact_after(&self, rng: &mut dyn CryptoRng, u: u64, k: u64, weight: u64) -> bool {
        let (p, q) = self.exact_ratio(k);
        bernoulli_big_after(rng, u, &(p << self.scale_bits), &(q * weight))
    }

    /// `R(k) = p(k)/p(mode)` as an exact fraction.
    fn exact_ratio(&self, k: u64) -> (BigUint, BigUint) {
        let den = u128::from(self.den);
        if k >= self.mode {
            (BigUint::from(self.num).pow(to_u32(k - self.mode)), product(self.mode + 1, k + 1, den))
        } else {
            (product(k + 1, self.mode + 1, den), BigUint::from(self.num).pow(to_u32(self.mode - k)))
        }
    }

    /// A point above the window: `hi + j`, `j - 1` geometric with ratio
    /// `rho = num / (den (hi + 1))`, accepted with `R(k)` over its envelope
    /// `(T / 2^S) (1 - rho) rho^(j-1)`, all exact. `None` = rejected.
    #[cold]
    fn right_tail_draw(&self, rng: &mut dyn CryptoRng) -> Option<u64> {
        let d = u128::from(self.den) * u128::from(self.hi + 1);
        let mut j: u64 = 1;
        while bernoulli_ratio(rng, u128::from(self.num), d) {
            j = j.checked_add(1)?;
        }
        let k = self.hi.checked_add(j).filter(|k| k - self.mode < MAX_TAIL_REACH)?;
        let (p, q) = self.exact_ratio(k);
        // A = p 2^S d^j / (q T (d - num) num^(j-1)).
        let d_big = BigUint::from(d);
        let accept_num = (p << self.scale_bits) * d_big.pow(to_u32(j));
        let accept_den = q * self.right_tail * (d - u128::from(self.num)) * BigUint::from(self.num).pow(to_u32(j - 1));
        debug_assert!(accept_num <= accept_den, "right-tail envelope below the pmf at k = {k}");
        bernoulli_big(rng, &accept_num, &accept_den).then_some(k)
    }

    /// A point below the window: `lo - j`, `j - 1` geometric with ratio
    /// `rho_L = lo den / num`; `k < 0` is rejected.
    #[cold]
    fn left_tail_draw(&self, rng: &mut dyn CryptoRng) -> Option<u64> {
        let nl = u128::from(self.lo) * u128::from(self.den);
        let mut j: u64 = 1;
        while bernoulli_ratio(rng, nl, u128::from(self.num)) {
            j = j.checked_add(1)?;
        }
        let k = self.lo.checked_sub(j).filter(|k| self.mode - k < MAX_TAIL_REACH)?;
        let (p, q) = self.exact_ratio(k);
        // A = p 2^S num^j / (q T (num - nl) nl^(j-1)).
        let accept_num = (p << self.scale_bits) * BigUint::from(self.num).pow(to_u32(j));
        let accept_den = q * self.left_tail * (u128::from(self.num) - nl) * BigUint::from(nl).pow(to_u32(j - 1));
        debug_assert!(accept_num <= accept_den, "left-tail envelope below the pmf at k = {k}");
        bernoulli_big(rng, &accept_num, &accept_den).then_some(k)
    }

    /// Margin of the floating-point enclosure used by the fast path.
    pub fn rel_err(&self) -> f64 {
        self.rel_err
    }

    /// Margin of the double-double enclosure used by the second stage.
    pub fn rel_err_dd(&self) -> f64 {
        self.rel_err_dd
    }
}

/// Exponents here are distances from the mode, below [`MAX_TAIL_REACH`] by construction.
fn to_u32(x: u64) -> u32 {
    debug_assert!(x < MAX_TAIL_REACH);
    u32::try_from(x).unwrap_or(u32::MAX)
}

/// `prod_{j in a..b} den j`, as a balanced product tree (so that big multiplications pair
/// operands of similar size and num-bigint's Karatsuba/Toom-3 apply).
fn product(a: u64, b: u64, den: u128) -> BigUint {
    if b <= a {
        return BigUint::from(1u8);
    }
    if b - a <= 16 {
        let mut p = BigUint::from(1u8);
        for j in a..b {
            p *= den * u128::from(j);
        }
        return p;
    }
    let mid = a + (b - a) / 2;
    product(a, mid, den) * product(mid, b, den)
}

/// A double-double number `hi + lo` (`|lo| <= ulp(hi)/2`): the construction walk and the
/// second decision stage.
///
/// The algorithms are the classic ones (Dekker 1971; the QD library): error-free
/// `two_prod` by fused multiply-add and `two_sum`, then one renormalisation. Their relative
/// error is a few `u^2` per operation (`u = 2^-53`; Joldes, Muller, Popescu 2017 bound close
/// variants by 7u^2 to 10u^2). The sampler allows 64u^2 per step, so a walk of `L` steps is
/// within `64 L u^2` (below `2^-80` for any window built here: `L < 2^27`), and
/// `tests::double_double_walk_is_within_its_bound` checks walks against exact rationals.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Dd {
    hi: f64,
    lo: f64,
}

impl Dd {
    const ONE: Dd = Dd { hi: 1.0, lo: 0.0 };

    /// Exact for `x < 2^106`.
    fn from_u128(x: u128) -> Dd {
        let bits = 128 - x.leading_zeros();
        let shift = bits.saturating_sub(53);
        let top = (x >> shift) << shift;
        Dd::fast_two_sum(top as f64, (x - top) as f64)
    }

    fn fast_two_sum(a: f64, b: f64) -> Dd {
        let s = a + b;
        Dd { hi: s, lo: b - (s - a) }
    }

    fn two_prod(a: f64, b: f64) -> Dd {
        let p = a * b;
        Dd { hi: p, lo: a.mul_add(b, -p) }
    }

    fn mul(self, y: Dd) -> Dd {
        let p = Dd::two_prod(self.hi, y.hi);
        let lo = p.lo + self.hi.mul_add(y.lo, self.lo * y.hi);
        Dd::fast_two_sum(p.hi, lo)
    }

    fn sub(self, y: Dd) -> Dd {
        let s = self.hi - y.hi;
        let bb = s - self.hi;
        let e = (self.hi - (s - bb)) + (-y.hi - bb);
        Dd::fast_two_sum(s, e + (self.lo - y.lo))
    }

    fn div(self, y: Dd) -> Dd {
        let q1 = self.hi / y.hi;
        // Remainder self - q1 y, to double-double accuracy.
        let p = Dd::two_prod(q1, y.hi);
        let r = ((self.hi - p.hi) - p.lo + self.lo) - q1 * y.lo;
        Dd::fast_two_sum(q1, r / y.hi)
    }

    fn to_f64(self) -> f64 {
        self.hi + self.lo
    }
}

/// Uniform big integer in `[0, n)`, `n >= 1`, by masked rejection on whole bytes.
fn uniform_big_below(rng: &mut dyn CryptoRng, n: &BigUint) -> BigUint {
    let bits = n.bits();
    let bytes = usize::try_from(bits.div_ceil(8)).unwrap_or(usize::MAX).max(1);
    let excess = (bytes as u64 * 8 - bits) as u32;
    let mut buf = vec![0u8; bytes];
    loop {
        rng.fill_bytes(&mut buf);
        if let Some(top) = buf.last_mut() {
            *top &= 0xffu8.checked_shr(excess).unwrap_or(0);
        }
        let x = BigUint::from_bytes_le(&buf);
        if &x < n {
            return x;
        }
    }
}

/// Bernoulli(p/q), `q >= 1`.
fn bernoulli_big(rng: &mut dyn CryptoRng, p: &BigUint, q: &BigUint) -> bool {
    if p >= q {
        return true;
    }
    &uniform_big_below(rng, q) < p
}

/// Given the first 64 uniform bits `u`, the exact outcome of `(u + V)/2^64 < p/q` with `V`
/// uniform in [0, 1): reject if `u q >= p 2^64`, accept if `(u + 1) q <= p 2^64`, otherwise
/// Bernoulli(r/q) with `r = p 2^64 - u q` (the conditional probability).
fn bernoulli_big_after(rng: &mut dyn CryptoRng, u: u64, p: &BigUint, q: &BigUint) -> bool {
    let uq = BigUint::from(u) * q;
    let p64 = p << 64u32;
    if uq >= p64 {
        return false;
    }
    let r = p64 - uq;
    if &r >= q {
        return true;
    }
    uniform_big_below(rng, q) < r
}

#[cfg(test)]
mod tests {
    //! Fixed seeds; each statistical check states its false-alarm rate for a fresh seed.
    use super::super::tests::{Z_1E4_ONE_SIDED, Z_1E5, chi2_critical};
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    /// `p / q` as an f64, for big p and q (relative error ~1e-15).
    fn ratio_f64(p: &BigUint, q: &BigUint) -> f64 {
        let shift = |x: &BigUint| -> (f64, i64) {
            let bits = x.bits() as i64;
            let s = (bits - 60).max(0);
            let top = (x >> (s as u32)).to_u64_digits().first().copied().unwrap_or(0);
            (top as f64, s)
        };
        let ((pm, ps), (qm, qs)) = (shift(p), shift(q));
        pm / qm * 2f64.powi((ps - qs) as i32)
    }

    /// Exact Poisson pmf in f64 (log-space with lgamma; ~1e-12 relative, plenty for a test).
    fn pmf(lambda: f64, k: u64) -> f64 {
        (k as f64 * lambda.ln() - lambda - libm::lgamma(k as f64 + 1.0)).exp()
    }

    #[test]
    fn walked_ratio_is_within_its_bound() {
        for (num, den, points) in [(1u64, 2u64, 300), (7, 3, 300), (30, 1, 300), (2001, 2, 300), (493_827, 4, 300), (1 << 30, 3, 12)] {
            let p = Poisson::new(num, den).unwrap();
            let (nf, df) = (p.num as f64, p.den as f64);
            let stride = ((p.hi - p.lo) / points).max(1);
            let mut k = p.lo;
            while k <= p.hi {
                let i = p.buckets.partition_point(|b| b.start + b.len <= k);
                let b = &p.buckets[i];
                assert!(b.start <= k && k < b.start + b.len);
                let walked = Poisson::walk_value(nf, df, b.anchor, b.r_anchor, k);
                let (pe, qe) = p.exact_ratio(k);
                let exact = ratio_f64(&pe, &qe);
                let err = (walked / exact - 1.0).abs();
                assert!(err <= p.rel_err / 2.0, "lambda {num}/{den}, k {k}: rel err {err:e} > {:e}", p.rel_err / 2.0);
                // The bucket weight dominates R at every point of the bucket.
                assert!(
                    BigUint::from(b.weight) * &qe >= pe << p.scale_bits,
                    "lambda {num}/{den}: weight below the pmf at k {k}"
                );
                k += stride;
            }
        }
    }

    /// Pearson chi-square of `n` draws against the exact pmf, cells `[a, b]` with the two
    /// tails merged into the end cells so that each expects >= 5. Critical value at 1e-4.
    fn chi_square(p: &Poisson, n: usize, seed: u64) {
        let lambda = p.num as f64 / p.den as f64;
        let nf = n as f64;
        let mut a = p.mode;
        while a > 0 && nf * pmf(lambda, a - 1) >= 5.0 {
            a -= 1;
        }
        let mut b = p.mode;
        while nf * pmf(lambda, b + 1) >= 5.0 {
            b += 1;
        }
        let below: f64 = (0..a).map(|k| pmf(lambda, k)).sum();
        let above: f64 = 1.0 - below - (a..=b).map(|k| pmf(lambda, k)).sum::<f64>();
        let mut counts = vec![0u64; (b - a + 1) as usize];
        let mut r = rng(seed);
        for _ in 0..n {
            let k = p.sample(&mut r).clamp(a, b);
            counts[(k - a) as usize] += 1;
        }
        let mut chi2 = 0.0;
        for (i, &o) in counts.iter().enumerate() {
            let k = a + i as u64;
            let mut e = pmf(lambda, k);
            if k == a {
                e += below;
            }
            if k == b {
                e += above.max(0.0);
            }
            let e = e * nf;
            chi2 += (o as f64 - e).powi(2) / e;
        }
        let df = (b - a) as f64;
        let crit = chi2_critical(df, Z_1E4_ONE_SIDED);
        assert!(chi2 < crit, "lambda {lambda}: chi2 {chi2} >= {crit} (df {df})");
    }

    #[test]
    fn goodness_of_fit_across_means() {
        for (i, (num, den)) in [(1u64, 2u64), (7, 3), (30, 1), (2001, 2), (500_000, 1)].into_iter().enumerate() {
            chi_square(&Poisson::new(num, den).unwrap(), 60_000, 100 + i as u64);
        }
    }

    #[test]
    fn goodness_of_fit_through_the_tails_and_wide_buckets() {
        // Narrow windows (+-1 to +-5 around the mode): most draws go through the geometric
        // tails (exact path). Wide buckets (4 in all; 3 sd wide at lambda = 1000): the
        // acceptance inside a bucket varies from 1 to e^-4.5, so it has to be right.
        for (i, (num, den, half)) in [(30u64, 1u64, 2u64), (201, 2, 5), (3, 1, 1), (1000, 1, 190)].into_iter().enumerate() {
            let p = Poisson::with_window(num, den, Some(half), 4).unwrap();
            assert!(p.right_tail > 0);
            chi_square(&p, 40_000, 200 + i as u64);
        }
    }

    #[test]
    fn goodness_of_fit_when_every_decision_is_exact() {
        // Wide buckets as above, so that acceptances are far from certain.
        for (i, (num, den, half)) in [(7u64, 3u64, 4u64), (1000, 1, 190)].into_iter().enumerate() {
            let mut p = Poisson::with_window(num, den, Some(half), 4).unwrap();
            p.rel_err = f64::INFINITY; // no decision is certified by either enclosure:
            p.rel_err_dd = f64::INFINITY; // all go to big integers
            chi_square(&p, 30_000, 300 + i as u64);
        }
    }

    #[test]
    fn goodness_of_fit_when_the_double_double_stage_decides() {
        for (i, (num, den, half)) in [(7u64, 3u64, 4u64), (1000, 1, 190)].into_iter().enumerate() {
            let mut p = Poisson::with_window(num, den, Some(half), 4).unwrap();
            p.rel_err = f64::INFINITY; // the f64 stage never decides
            chi_square(&p, 30_000, 400 + i as u64);
        }
    }

    #[test]
    fn double_double_walk_is_within_its_bound() {
        // The second stage's R(k), against exact rationals: |DD - p/q| <= (rel_err_dd / 2) p/q,
        // checked exactly (a DD value is a sum of two dyadic rationals).
        use num_bigint::{BigInt, Sign};
        let exact_dyadic = |x: f64| -> (BigInt, i32) {
            // x = m 2^e exactly.
            if x == 0.0 {
                return (BigInt::from(0), 0);
            }
            let bits = x.to_bits();
            let exp = ((bits >> 52) & 0x7ff) as i32;
            let frac = bits & ((1u64 << 52) - 1);
            let (m, e) = if exp == 0 { (frac, -1074) } else { (frac | (1u64 << 52), exp - 1075) };
            let m = BigInt::from(m);
            (if x < 0.0 { -m } else { m }, e)
        };
        for (num, den, points) in [(7u64, 3u64, 200u64), (2001, 2, 200), (1 << 30, 3, 8)] {
            let p = Poisson::new(num, den).unwrap();
            let stride = ((p.hi - p.lo) / points).max(1);
            let mut k = p.lo;
            while k <= p.hi {
                let i = p.buckets.partition_point(|b| b.start + b.len <= k);
                let b = &p.buckets[i];
                let r = p.walk_dd(b, k);
                let ((mh, eh), (ml, el)) = (exact_dyadic(r.hi), exact_dyadic(r.lo));
                let e = eh.min(el);
                // value = v / 2^(-e), v = mh 2^(eh-e) + ml 2^(el-e).
                let v = (mh << ((eh - e) as u32)) + (ml << ((el - e) as u32));
                let (pe, qe) = p.exact_ratio(k);
                let (pe, qe) = (BigInt::from_biguint(Sign::Plus, pe), BigInt::from_biguint(Sign::Plus, qe));
                // |v q - p 2^-e| <= bound p 2^-e, bound = rel_err_dd / 2 ~ t / 2^200.
                let t = BigInt::from((p.rel_err_dd / 2.0 * 2f64.powi(200)) as u128);
                let lhs = (v * &qe - (&pe << ((-e) as u32))).magnitude().clone();
                let rhs = (t * &pe << ((-e) as u32)) >> 200u32;
                assert!(BigInt::from_biguint(Sign::Plus, lhs) <= rhs, "lambda {num}/{den}, k {k}: DD walk outside its bound");
                k += stride;
            }
        }
    }

    #[test]
    fn exact_comparison_with_a_known_prefix() {
        // p/q = 1/3: a prefix u decides when u/2^64 is clearly on one side.
        let (p, q) = (BigUint::from(1u8), BigUint::from(3u8));
        let third = u64::MAX / 3; // floor(2^64/3) - 0 ... the boundary prefix
        let mut r = rng(7);
        assert!(bernoulli_big_after(&mut r, 0, &p, &q));
        assert!(bernoulli_big_after(&mut r, third - 1, &p, &q));
        assert!(!bernoulli_big_after(&mut r, third + 1, &p, &q));
        assert!(!bernoulli_big_after(&mut r, u64::MAX, &p, &q));
        // On the boundary prefix the rest decides: P(accept) = frac(2^64/3) = 1/3.
        let n = 30_000;
        let hits = (0..n).filter(|_| bernoulli_big_after(&mut r, third, &p, &q)).count() as f64;
        let sd = (2.0 / 9.0 / n as f64).sqrt();
        assert!((hits / n as f64 - 1.0 / 3.0).abs() < Z_1E5 * sd, "{hits}");
        // Uniform below n never reaches n.
        let big = BigUint::from(1u8) << 70u32;
        assert!((0..200).all(|_| uniform_big_below(&mut r, &(big.clone() + 5u8)) < big.clone() + 5u8));
    }

    #[test]
    fn bad_means_are_refused_and_zero_is_zero() {
        assert!(Poisson::new(1, 0).is_err());
        assert!(Poisson::new(MAX_MEAN + 1, 1).is_err());
        assert!(Poisson::new(MAX_MEAN, 1).is_ok());
        assert!(Poisson::new(3, MAX_DEN).is_err());
        assert!(Poisson::new(2, MAX_DEN).is_ok(), "reduced to 1/2^47");
        let z = Poisson::new(0, 5).unwrap();
        let mut r = rng(1);
        assert!((0..100).all(|_| z.sample(&mut r) == 0));
        assert_eq!(Poisson::new(6, 4).unwrap().mean(), (3, 2));
    }

    #[test]
    fn large_mean_moments() {
        // lambda = 2^40: mean and variance within 4.417 sd (1e-5 each).
        let lambda = (1u64 << 40) as f64;
        let p = Poisson::new(1 << 40, 1).unwrap();
        let n = 20_000;
        let mut r = rng(9);
        let xs: Vec<f64> = (0..n).map(|_| p.sample(&mut r) as f64 - lambda).collect();
        let nf = n as f64;
        let mean = xs.iter().sum::<f64>() / nf;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (nf - 1.0);
        assert!(mean.abs() <= Z_1E5 * (lambda / nf).sqrt(), "{mean}");
        assert!((var - lambda).abs() <= Z_1E5 * ((lambda + 2.0 * lambda * lambda) / nf).sqrt(), "{var}");
    }
}
