//! Shamir secret sharing of 32-byte secrets over GF(p), p = 2^61 - 1.
//!
//! Why this field: no well-kept Rust crate offers Shamir over a prime field with the
//! properties we need (constant share size, reconstruction checks, zeroization), and a
//! Mersenne prime makes the arithmetic a few lines of `u128` with a two-fold reduction, easy to
//! check by hand and against Python's integers. A 32-byte secret is cut into five chunks
//! (four of 7 bytes, one of 4), each below 2^56 < p, and each chunk is shared with its own
//! independent random polynomial of degree t - 1 at the same points. Shamir's scheme is
//! perfectly hiding in any field larger than the number of holders, chunk by chunk, so any
//! t - 1 shares reveal nothing about any chunk, and the chunks' polynomials are independent.
//!
//! Holder `i` (a site index) gets the evaluation at x = i + 1, never at 0.

use rand_core::CryptoRng;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The field modulus, 2^61 - 1.
pub const P: u64 = (1u64 << 61) - 1;
/// Field elements per shared 32-byte secret.
pub const CHUNKS: usize = 5;
const CHUNK_BYTES: [usize; CHUNKS] = [7, 7, 7, 7, 4];

fn reduce128(x: u128) -> u64 {
    // x < 2^122: fold twice, then one conditional subtraction.
    let lo = (x as u64) & P;
    let hi = (x >> 61) as u64;
    let mut r = lo + (hi & P) + (hi >> 61);
    r = (r & P) + (r >> 61);
    if r >= P { r - P } else { r }
}

pub fn add(a: u64, b: u64) -> u64 {
    let s = a + b; // < 2^62
    if s >= P { s - P } else { s }
}

pub fn sub(a: u64, b: u64) -> u64 {
    if a >= b { a - b } else { a + P - b }
}

pub fn mul(a: u64, b: u64) -> u64 {
    reduce128(a as u128 * b as u128)
}

fn pow(mut a: u64, mut e: u64) -> u64 {
    let mut r = 1u64;
    while e > 0 {
        if e & 1 == 1 {
            r = mul(r, a);
        }
        a = mul(a, a);
        e >>= 1;
    }
    r
}

/// Multiplicative inverse (Fermat); `None` for 0.
pub fn inv(a: u64) -> Option<u64> {
    if a.is_multiple_of(P) {
        None
    } else {
        Some(pow(a % P, P - 2))
    }
}

/// Horner evaluation of `coeffs[0] + coeffs[1] x + ...` at `x`.
pub fn eval_poly(coeffs: &[u64], x: u64) -> u64 {
    coeffs.iter().rev().fold(0, |acc, &c| add(mul(acc, x), c))
}

/// Inverts every element with one field inversion (Montgomery's batch trick). `None` if any
/// element is zero.
fn batch_inv(v: &[u64]) -> Option<Vec<u64>> {
    // prefix[i] = v_0 ⋯ v_{i-1}; the product of all is zero exactly when some v_i is.
    let mut prefix = Vec::with_capacity(v.len());
    let mut acc = 1u64;
    for &x in v {
        prefix.push(acc);
        acc = mul(acc, x);
    }
    let mut inv_rest = inv(acc)?;
    let mut out = vec![0u64; v.len()];
    for i in (0..v.len()).rev() {
        // inv_rest = 1 / (v_0 ⋯ v_i).
        out[i] = mul(inv_rest, prefix[i]);
        inv_rest = mul(inv_rest, v[i]);
    }
    Some(out)
}

/// The Lagrange basis over distinct abscissae `xs`, in barycentric form: with
/// c_i = 1 / ∏_{j≠i} (x_i − x_j) computed once (O(t²)), the weights at any other point cost
/// O(t): L_i(at) = ℓ(at) c_i / (at − x_i), where ℓ(at) = ∏_j (at − x_j). Reconstruction
/// checks every share beyond the t it interpolates from, so this keeps a secret with many
/// extra shares at O(t² + extra · t) instead of O(extra · t²).
struct Basis<'a> {
    xs: &'a [u64],
    c: Vec<u64>,
}

impl<'a> Basis<'a> {
    /// `None` if two abscissae coincide.
    fn new(xs: &'a [u64]) -> Option<Basis<'a>> {
        let dens: Vec<u64> = xs
            .iter()
            .enumerate()
            .map(|(i, &xi)| {
                xs.iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .fold(1, |d, (_, &xj)| mul(d, sub(xi, xj)))
            })
            .collect();
        Some(Basis {
            xs,
            c: batch_inv(&dens)?,
        })
    }

    /// Weights w with f(at) = Σ w_i f(x_i) for every polynomial f of degree < xs.len().
    /// `None` if `at` is one of the abscissae.
    fn weights_at(&self, at: u64) -> Option<Vec<u64>> {
        let diffs: Vec<u64> = self.xs.iter().map(|&xj| sub(at, xj)).collect();
        let inv_diffs = batch_inv(&diffs)?;
        let l = diffs.iter().fold(1, |a, &d| mul(a, d));
        Some(
            self.c
                .iter()
                .zip(&inv_diffs)
                .map(|(&ci, &di)| mul(l, mul(ci, di)))
                .collect(),
        )
    }
}

/// Lagrange weights for evaluating, at `at`, the polynomial through points with abscissae
/// `xs`. `None` if two abscissae coincide or `at` is one of them.
fn lagrange_weights(xs: &[u64], at: u64) -> Option<Vec<u64>> {
    Basis::new(xs)?.weights_at(at)
}

/// The value at 0 of the polynomial of degree < points.len() through `points`.
pub fn interpolate_at_zero(points: &[(u64, u64)]) -> Option<u64> {
    let xs: Vec<u64> = points.iter().map(|p| p.0).collect();
    let w = lagrange_weights(&xs, 0)?;
    Some(
        points
            .iter()
            .zip(&w)
            .fold(0, |acc, (p, &wi)| add(acc, mul(p.1, wi))),
    )
}

/// One holder's share of one 32-byte secret: x and the five chunk evaluations.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Share {
    pub x: u64,
    pub y: [u64; CHUNKS],
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share")
            .field("x", &self.x)
            .finish_non_exhaustive()
    }
}

fn uniform(rng: &mut dyn CryptoRng) -> u64 {
    loop {
        let v = rng.next_u64() & P; // 61 random bits; reject the single value equal to P
        if v < P {
            return v;
        }
    }
}

/// Fresh random coefficients for one [`split_with`] at threshold `threshold`: the non-constant
/// coefficients of the [`CHUNKS`] polynomials, uniform in GF(p).
pub fn random_coefficients(threshold: usize, rng: &mut dyn CryptoRng) -> Zeroizing<Vec<u64>> {
    Zeroizing::new(
        (0..CHUNKS * threshold.saturating_sub(1))
            .map(|_| uniform(rng))
            .collect(),
    )
}

/// Splits `secret` into one share per abscissa in `xs` (distinct, non-zero, below P), any
/// `threshold` of which reconstruct it. Panics only on caller bugs (threshold 0 or larger
/// than the number of holders), which the protocol's parameter checks exclude.
pub fn split(
    secret: &[u8; 32],
    threshold: usize,
    xs: &[u64],
    rng: &mut dyn CryptoRng,
) -> Vec<Share> {
    split_with(secret, threshold, xs, &random_coefficients(threshold, rng))
}

/// [`split`] with coefficients drawn beforehand by [`random_coefficients`].
pub fn split_with(secret: &[u8; 32], threshold: usize, xs: &[u64], random: &[u64]) -> Vec<Share> {
    assert!(
        threshold >= 1 && threshold <= xs.len(),
        "threshold out of range"
    );
    assert_eq!(
        random.len(),
        CHUNKS * (threshold - 1),
        "wrong number of coefficients"
    );
    let mut shares: Vec<Share> = xs.iter().map(|&x| Share { x, y: [0; CHUNKS] }).collect();
    let mut coeffs = Zeroizing::new(vec![0u64; threshold]);
    let mut off = 0;
    for (c, &len) in CHUNK_BYTES.iter().enumerate() {
        let mut word = [0u8; 8];
        word[..len].copy_from_slice(&secret[off..off + len]);
        off += len;
        coeffs[0] = u64::from_le_bytes(word);
        word.zeroize();
        coeffs[1..].copy_from_slice(&random[c * (threshold - 1)..(c + 1) * (threshold - 1)]);
        for s in shares.iter_mut() {
            s.y[c] = eval_poly(&coeffs, s.x);
        }
    }
    shares
}

/// Reconstructs a secret from at least `threshold` shares with distinct abscissae. Shares
/// beyond the first `threshold` must lie on the same polynomials, and every chunk must be in
/// range; otherwise `None` (some share is corrupt).
pub fn reconstruct(shares: &[&Share], threshold: usize) -> Option<Zeroizing<[u8; 32]>> {
    if threshold == 0 || shares.len() < threshold {
        return None;
    }
    let (base, extra) = shares.split_at(threshold);
    let xs: Vec<u64> = base.iter().map(|s| s.x).collect();
    if xs.iter().any(|&x| x == 0 || x >= P) {
        return None;
    }
    let basis = Basis::new(&xs)?;
    let w0 = basis.weights_at(0)?;
    let mut secret = Zeroizing::new([0u8; 32]);
    let mut off = 0;
    for (c, &len) in CHUNK_BYTES.iter().enumerate() {
        let v = base
            .iter()
            .zip(&w0)
            .fold(0, |acc, (s, &wi)| add(acc, mul(s.y[c], wi)));
        if v >> (8 * len) != 0 {
            return None;
        }
        secret[off..off + len].copy_from_slice(&v.to_le_bytes()[..len]);
        off += len;
    }
    for e in extra {
        if e.x == 0 || xs.contains(&e.x) {
            return None;
        }
        let we = basis.weights_at(e.x)?;
        for c in 0..CHUNKS {
            let v = base
                .iter()
                .zip(&we)
                .fold(0, |acc, (s, &wi)| add(acc, mul(s.y[c], wi)));
            if v != e.y[c] {
                return None;
            }
        }
    }
    Some(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    // Independent values computed with Python's integers:
    //
    //   p = 2**61 - 1
    //   c = [0x0123456789abcd, 0x1fedcba987654321, 0x0abcdef012345678, 5]
    //   f = lambda x: sum(ci * x**i for i, ci in enumerate(c)) % p
    //   print([hex(f(x)) for x in (1, 2, 3, 7, 1000, p - 1)])
    //   print(hex(pow(123456789, p - 2, p)))
    //   print(hex((0x1fedcba987654321 * 0x0abcdef012345678) % p))
    const COEFFS: [u64; 4] = [0x0123456789abcd, 0x1fedcba987654321, 0x0abcdef012345678, 5];
    include!("shamir_vectors.rs");

    #[test]
    fn field_ops_match_python() {
        assert_eq!(inv(123456789), Some(INV_123456789));
        assert_eq!(mul(COEFFS[1], COEFFS[2]), MUL_C1_C2);
        assert_eq!(mul(P - 1, P - 1), 1);
        assert_eq!(add(P - 1, 1), 0);
        assert_eq!(sub(0, 1), P - 1);
        assert_eq!(inv(0), None);
        for a in [1u64, 2, 3, 12345, P - 1, P - 2, 1 << 60] {
            assert_eq!(mul(a, inv(a).unwrap_or(0)), 1);
        }
    }

    #[test]
    fn evaluation_and_interpolation_match_python() {
        for (x, y) in EVALS {
            assert_eq!(eval_poly(&COEFFS, x), y, "x = {x}");
        }
        // Any 4 of the points give back the constant term; 3 do not.
        let pts: Vec<(u64, u64)> = EVALS.to_vec();
        for skip in 0..pts.len() {
            for skip2 in skip + 1..pts.len() {
                let sub: Vec<_> = pts
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != skip && *i != skip2)
                    .map(|(_, p)| *p)
                    .collect();
                assert_eq!(interpolate_at_zero(&sub), Some(COEFFS[0]));
                assert_ne!(interpolate_at_zero(&sub[..3]), Some(COEFFS[0]));
            }
        }
    }

    fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
        (0u32..(1 << n))
            .filter(|m| m.count_ones() as usize == k)
            .map(|m| (0..n).filter(|i| m >> i & 1 == 1).collect())
            .collect()
    }

    #[test]
    fn every_threshold_subset_reconstructs_and_fewer_do_not() {
        let mut rng = ChaCha20Rng::from_seed([9; 32]);
        let mut secret = [0u8; 32];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37) ^ 0xa5;
        }
        for n in 1..=7usize {
            for t in 1..=n {
                let xs: Vec<u64> = (1..=n as u64).map(|i| i * 3).collect();
                let shares = split(&secret, t, &xs, &mut rng);
                for sub in subsets(n, t) {
                    let pick: Vec<&Share> = sub.iter().map(|&i| &shares[i]).collect();
                    assert_eq!(
                        reconstruct(&pick, t).as_deref(),
                        Some(&secret),
                        "n={n} t={t} {sub:?}"
                    );
                }
                // All shares together also reconstruct (and pass the consistency check).
                let all: Vec<&Share> = shares.iter().collect();
                assert_eq!(reconstruct(&all, t).as_deref(), Some(&secret));
                if t >= 2 {
                    for sub in subsets(n, t - 1) {
                        let pick: Vec<&Share> = sub.iter().map(|&i| &shares[i]).collect();
                        assert_eq!(reconstruct(&pick, t), None);
                        // Interpolating t-1 points as if they were enough gives a wrong secret.
                        assert_ne!(reconstruct(&pick, t - 1).as_deref(), Some(&secret));
                    }
                }
            }
        }
    }

    /// The barycentric weights equal the textbook ∏_{j≠i} (at − x_j) / (x_i − x_j), and
    /// repeated abscissae or an evaluation point among them give `None`.
    #[test]
    fn barycentric_weights_match_the_textbook_formula() {
        let mut rng = ChaCha20Rng::from_seed([4; 32]);
        for t in 1..=12usize {
            let mut xs: Vec<u64> = Vec::new();
            while xs.len() < t {
                let x = uniform(&mut rng);
                if x != 0 && !xs.contains(&x) {
                    xs.push(x);
                }
            }
            for at in [0, 1, uniform(&mut rng), P - 1] {
                if xs.contains(&at) {
                    continue;
                }
                let textbook: Vec<u64> = (0..t)
                    .map(|i| {
                        (0..t).filter(|&j| j != i).fold(1, |w, j| {
                            mul(w, mul(sub(at, xs[j]), inv(sub(xs[i], xs[j])).unwrap()))
                        })
                    })
                    .collect();
                assert_eq!(lagrange_weights(&xs, at), Some(textbook), "t {t}, at {at}");
            }
            assert_eq!(lagrange_weights(&xs, xs[t - 1]), None);
            if t >= 2 {
                let mut dup = xs.clone();
                dup[0] = dup[1];
                assert_eq!(lagrange_weights(&dup, 0), None);
            }
        }
    }

    #[test]
    fn a_corrupted_extra_share_is_detected() {
        let mut rng = ChaCha20Rng::from_seed([1; 32]);
        let secret = [0x42u8; 32];
        let xs = [1u64, 2, 3, 4, 5];
        let mut shares = split(&secret, 3, &xs, &mut rng);
        shares[4].y[2] = add(shares[4].y[2], 1);
        let all: Vec<&Share> = shares.iter().collect();
        assert_eq!(reconstruct(&all, 3), None);
        assert_eq!(reconstruct(&all[..3], 3).as_deref(), Some(&secret));
        let dup = [&shares[0], &shares[0], &shares[1]];
        assert_eq!(reconstruct(&dup, 3), None);
    }
}
