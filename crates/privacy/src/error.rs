//! The one error type of this crate: every rejected input is named, with its value.

use thiserror::Error;

/// Why a privacy computation or a sampler refused its input.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PrivacyError {
    /// Poisson sampling rates live in (0, 1].
    #[error("sampling rate {0} is outside (0, 1]")]
    InvalidSamplingRate(f64),
    /// Noise multipliers (noise standard deviation / L2 sensitivity) are finite and >= 0.
    #[error("noise multiplier {0} must be finite and non-negative")]
    InvalidNoiseMultiplier(f64),
    /// delta lives in (0, 1).
    #[error("delta {0} is outside (0, 1)")]
    InvalidDelta(f64),
    /// A composition of zero steps is almost certainly a caller bug, so it is refused.
    #[error("the number of steps must be at least 1")]
    ZeroSteps,
    /// A target epsilon must be finite and > 0.
    #[error("target epsilon {0} must be finite and positive")]
    InvalidEpsilon(f64),
    /// No noise multiplier up to the search's ceiling meets the target.
    #[error(
        "target epsilon {target} is unreachable: noise multiplier {max_noise_multiplier} \
         still gives epsilon {achieved}"
    )]
    UnreachableTarget {
        /// The epsilon asked for.
        target: f64,
        /// The largest noise multiplier tried.
        max_noise_multiplier: f64,
        /// The epsilon it gives.
        achieved: f64,
    },
    /// RDP orders are finite and > 1.
    #[error("RDP order {0} must be finite and greater than 1")]
    InvalidOrder(f64),
    /// An RDP curve must have one value per order, each >= 0 (or +inf).
    #[error("RDP curve is invalid: {0}")]
    InvalidRdpCurve(&'static str),
    /// A parameter of the discrete-Gaussian-sum bound is out of its range.
    #[error("invalid parameter {name} = {value}: {reason}")]
    InvalidParameter {
        /// Which parameter.
        name: &'static str,
        /// Its value, as given.
        value: f64,
        /// What it must satisfy.
        reason: &'static str,
    },
    /// A rational sampler parameter `num/den` is out of range.
    #[error("rational parameter {num}/{den} is invalid: {reason}")]
    InvalidRational {
        /// Numerator as given.
        num: u64,
        /// Denominator as given.
        den: u64,
        /// What it must satisfy.
        reason: &'static str,
    },
    /// An input vector does not have the length the encoder was built for.
    #[error("input has length {got}, expected {expected}")]
    InputLength {
        /// The configured length.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// An input vector holds a NaN or an infinity.
    #[error("input coordinate {index} is not finite")]
    NonFiniteInput {
        /// The first offending coordinate.
        index: usize,
    },
}
