//! Quantisation: the seam between float model updates and Z_{2^b}.
//!
//! Secure aggregation sums integers mod 2^b. An [`Encoder`] maps a site's flat float update to
//! that ring and the unmasked sum back to floats. The privacy work will replace
//! [`StochasticQuantizer`] with its own integer encoding (clip, rotate, round, add discrete
//! noise, wrap); anything implementing [`Encoder`] fits here.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::error::SecAggError;

/// Maps float vectors to Z_{2^b} and sums of them back.
pub trait Encoder {
    /// One site's vector, each coordinate in Z_{2^b}.
    fn encode(&self, x: &[f32]) -> Vec<u64>;
    /// The float sum of `count` sites' vectors from the sum of their encodings mod 2^b.
    fn decode_sum(&self, sum: &[u64], count: usize) -> Vec<f32>;
    /// Bound on |decode_sum(Σ encode(x_i)) - Σ clip(x_i)| per coordinate for `count` inputs
    /// (infinite when `count` exceeds what the encoder was sized for).
    fn error_bound(&self, count: usize) -> f32;
}

/// How a scaled value is rounded to an integer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rounding {
    /// Round to nearest: error at most half a step per input, deterministic, biased for
    /// values that sit between steps.
    Nearest,
    /// Stochastic rounding (up with probability equal to the fractional part): unbiased,
    /// error below one step per input. The randomness is ChaCha20 keyed by `seed`, which the
    /// site must draw fresh from its CSPRNG for every round.
    Stochastic { seed: [u8; 32] },
}

/// Fixed-point quantiser with clipping.
///
/// Each coordinate is clipped to [-clip, clip] (NaN counts as 0), shifted to [0, 2 clip],
/// scaled by s = (L - 1) / (2 clip) with L = ⌊(2^b - 1) / max_count⌋, and rounded (see
/// [`Rounding`]) to an integer in [0, L - 1]. The sum of up to `max_count` such integers stays
/// below 2^b, so the sum mod 2^b is the true sum, and
/// `decode_sum(S, count) = S / s - count · clip`.
///
/// Error bound per coordinate, for `count <= max_count` inputs, against the sum of the
/// clipped inputs: `count · r / s + count · clip · 2^-22`, where r = 1/2 (nearest) or 1
/// (stochastic) is the rounding error per input, and the second term covers f32/f64
/// conversions.
#[derive(Debug, Clone, PartialEq)]
pub struct StochasticQuantizer {
    clip: f32,
    bits: u32,
    max_count: usize,
    rounding: Rounding,
    levels: u64,
    scale: f64,
}

impl StochasticQuantizer {
    pub fn new(
        clip: f32,
        bits: u32,
        max_count: usize,
        rounding: Rounding,
    ) -> Result<StochasticQuantizer, SecAggError> {
        if !(clip.is_finite() && clip > 0.0) {
            return Err(SecAggError::InvalidParams(format!(
                "clip must be positive and finite, got {clip}"
            )));
        }
        if !(1..=64).contains(&bits) || max_count == 0 {
            return Err(SecAggError::InvalidParams(format!(
                "bits {bits} must be in 1..=64 and max_count {max_count} >= 1"
            )));
        }
        let top = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let levels = top / max_count as u64;
        if levels < 2 {
            return Err(SecAggError::InvalidParams(format!(
                "{bits} bits cannot hold the sum of {max_count} inputs"
            )));
        }
        let scale = (levels - 1) as f64 / (2.0 * clip as f64);
        Ok(StochasticQuantizer {
            clip,
            bits,
            max_count,
            rounding,
            levels,
            scale,
        })
    }

    pub fn clip(&self) -> f32 {
        self.clip
    }
    pub fn bits(&self) -> u32 {
        self.bits
    }
    pub fn max_count(&self) -> usize {
        self.max_count
    }
    /// Quantisation step (the value of one integer unit).
    pub fn step(&self) -> f64 {
        1.0 / self.scale
    }
}

impl Encoder for StochasticQuantizer {
    fn encode(&self, x: &[f32]) -> Vec<u64> {
        let c = self.clip as f64;
        let top = (self.levels - 1) as f64;
        let mut rng = match &self.rounding {
            Rounding::Nearest => None,
            Rounding::Stochastic { seed } => Some(ChaCha20Rng::from_seed(*seed)),
        };
        x.iter()
            .map(|&v| {
                let v = if v.is_nan() {
                    0.0
                } else {
                    (v as f64).clamp(-c, c)
                };
                let q = ((v + c) * self.scale).clamp(0.0, top);
                let r = match rng.as_mut() {
                    None => q.round(),
                    Some(rng) => {
                        let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
                        let f = q.floor();
                        if u < q - f { f + 1.0 } else { f }
                    }
                };
                (r as u64).min(self.levels - 1)
            })
            .collect()
    }

    fn decode_sum(&self, sum: &[u64], count: usize) -> Vec<f32> {
        let offset = count as f64 * self.clip as f64;
        sum.iter()
            .map(|&s| (s as f64 / self.scale - offset) as f32)
            .collect()
    }

    fn error_bound(&self, count: usize) -> f32 {
        if count > self.max_count {
            return f32::INFINITY;
        }
        let r = match self.rounding {
            Rounding::Nearest => 0.5,
            Rounding::Stochastic { .. } => 1.0,
        };
        (count as f64 * (r / self.scale + self.clip as f64 * 2f64.powi(-22))) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sum_mod(encs: &[Vec<u64>], bits: u32) -> Vec<u64> {
        let m = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        (0..encs[0].len())
            .map(|c| encs.iter().fold(0u64, |a, e| a.wrapping_add(e[c])) & m)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn decoded_sum_is_within_the_stated_bound(
            bits in prop::sample::select(vec![8u32, 12, 16, 32, 64]),
            clip in 0.01f32..100.0,
            stochastic in any::<bool>(),
            seed in any::<[u8; 32]>(),
            xs in prop::collection::vec(prop::collection::vec(-200f32..200.0, 7), 1..10),
        ) {
            let count = xs.len();
            let rounding = if stochastic { Rounding::Stochastic { seed } } else { Rounding::Nearest };
            let Ok(q) = StochasticQuantizer::new(clip, bits, 10, rounding) else {
                prop_assume!(false);
                unreachable!()
            };
            let encs: Vec<Vec<u64>> = xs.iter().map(|x| q.encode(x)).collect();
            for e in &encs {
                prop_assert!(e.iter().all(|&v| v < q.levels));
            }
            let got = q.decode_sum(&sum_mod(&encs, bits), count);
            let bound = q.error_bound(count);
            for c in 0..7 {
                let want: f64 = xs.iter().map(|x| (x[c] as f64).clamp(-clip as f64, clip as f64)).sum();
                prop_assert!((got[c] as f64 - want).abs() <= bound as f64,
                    "coord {c}: got {} want {want} bound {bound}", got[c]);
            }
        }
    }

    #[test]
    fn clipping_nan_and_limits() {
        let q = StochasticQuantizer::new(1.0, 16, 4, Rounding::Nearest).unwrap();
        let e = q.encode(&[-5.0, 5.0, f32::NAN, 0.0]);
        assert_eq!(e[0], 0);
        assert_eq!(e[1], q.levels - 1);
        assert_eq!(e[2], e[3]);
        let d = q.decode_sum(&q.encode(&[5.0, -0.25]), 1);
        assert!((d[0] - 1.0).abs() <= q.error_bound(1));
        assert!((d[1] + 0.25).abs() <= q.error_bound(1));
        assert_eq!(q.error_bound(5), f32::INFINITY);
        assert!(StochasticQuantizer::new(1.0, 2, 4, Rounding::Nearest).is_err());
        assert!(StochasticQuantizer::new(0.0, 16, 4, Rounding::Nearest).is_err());
        assert!(StochasticQuantizer::new(1.0, 65, 4, Rounding::Nearest).is_err());
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        // 0.3 of a step above a level: the mean over many coordinates approaches it.
        let q =
            StochasticQuantizer::new(1.0, 16, 1, Rounding::Stochastic { seed: [5; 32] }).unwrap();
        let x = (3.3 * q.step() - 1.0) as f32;
        let e = q.encode(&vec![x; 20_000]);
        let mean = e.iter().sum::<u64>() as f64 / e.len() as f64;
        assert!((mean - 3.3).abs() < 0.02, "mean {mean}");
        assert!(e.iter().all(|&v| v == 3 || v == 4));
    }
}
