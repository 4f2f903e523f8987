//! A [`Charge`]: one release's privacy cost, described by its mechanism's parameters rather than
//! by a number, so that anyone (the site's ledger, the coordinator's report, an auditor) can
//! recompute the same RDP curve from the record and nobody has to trust a stored epsilon.

use serde::{Deserialize, Serialize};

use crate::{PrivacyError, RdpAccountant, discrete_gaussian_sum_rdp, gaussian_rdp, poisson_gaussian_rdp, skellam_sum_rdp};

/// Whose privacy a release protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// One patient's record (add or remove one row of one site's training split).
    Record,
    /// One whole site's contribution (add or remove a site).
    Site,
}

impl Unit {
    /// `"record"` or `"site"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Record => "record",
            Unit::Site => "site",
        }
    }
}

/// The privacy cost of one release, as the parameters of its mechanism.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mechanism", rename_all = "snake_case")]
pub enum Charge {
    /// `steps` steps of the Poisson-subsampled Gaussian (DP-SGD) with noise multiplier
    /// `noise_multiplier` (noise std / L2 clip) and sampling rate `sampling_rate`.
    ///
    /// The noise is the *discrete* Gaussian on a lattice (see `dpsgd`). For integer orders the
    /// moments of the subsampled mixture are exactly those of the continuous Gaussian (the
    /// binomial expansion only uses `E[(mu1/mu0)^k] = exp(k(k-1) Delta^2 / 2 sigma^2)`, which
    /// holds for an integer shift of the discrete Gaussian), so only integer orders are used and
    /// fractional ones are set to infinity: looser, never optimistic.
    SubsampledGaussian {
        /// Noise std divided by the L2 sensitivity.
        noise_multiplier: f64,
        /// Poisson sampling rate in (0, 1].
        sampling_rate: f64,
        /// Number of steps.
        steps: u64,
    },
    /// `count` applications of the Gaussian mechanism with noise multiplier `noise_multiplier`
    /// (federated statistics; the central mode's noise on the sum).
    Gaussian {
        /// Noise std divided by the L2 sensitivity.
        noise_multiplier: f64,
        /// Number of releases.
        count: u64,
    },
    /// One release of a sum of at least `n` sites' discrete Gaussian noise shares (the
    /// distributed discrete Gaussian; Kairouz, Liu, Steinke 2021, Theorem 1), in the scaled
    /// integer domain.
    DistributedDiscreteGaussian {
        /// Per-site noise std (scaled domain).
        sigma: f64,
        /// Guaranteed number of sites whose noise is in the sum.
        n: u64,
        /// Padded dimension.
        dim: u64,
        /// L1 sensitivity (scaled domain).
        l1: f64,
        /// L2 sensitivity (scaled domain).
        l2: f64,
    },
    /// One release of a sum of at least `n` sites' Skellam noise shares (the distributed
    /// Skellam mechanism; Agarwal, Kairouz, Liu 2021), in the scaled integer domain.
    DistributedSkellam {
        /// Per-site noise std (scaled domain): each site adds Poisson(sigma^2/2) -
        /// Poisson(sigma^2/2), rounded up.
        sigma: f64,
        /// Guaranteed number of sites whose noise is in the sum.
        n: u64,
        /// Padded dimension (for the record; the bound does not depend on it).
        dim: u64,
        /// L1 sensitivity (scaled domain).
        l1: f64,
        /// L2 sensitivity (scaled domain).
        l2: f64,
    },
}

impl Charge {
    /// The mechanism's short name, for ledgers and reports.
    pub fn mechanism(&self) -> &'static str {
        match self {
            Charge::SubsampledGaussian { .. } => "subsampled_gaussian",
            Charge::Gaussian { .. } => "gaussian",
            Charge::DistributedDiscreteGaussian { .. } => "distributed_discrete_gaussian",
            Charge::DistributedSkellam { .. } => "distributed_skellam",
        }
    }

    /// This charge's RDP curve at `orders` (already composed over its steps or count).
    pub fn rdp(&self, orders: &[f64]) -> Result<Vec<f64>, PrivacyError> {
        match *self {
            Charge::SubsampledGaussian { noise_multiplier, sampling_rate, steps } => {
                if steps == 0 {
                    return Err(PrivacyError::ZeroSteps);
                }
                let per = poisson_gaussian_rdp(noise_multiplier, sampling_rate, orders)?;
                Ok(orders
                    .iter()
                    .zip(per)
                    .map(|(&a, r)| if a.fract() == 0.0 { r * steps as f64 } else { f64::INFINITY })
                    .collect())
            }
            Charge::Gaussian { noise_multiplier, count } => {
                if count == 0 {
                    return Err(PrivacyError::ZeroSteps);
                }
                Ok(gaussian_rdp(noise_multiplier, orders)?.into_iter().map(|r| r * count as f64).collect())
            }
            Charge::DistributedDiscreteGaussian { sigma, n, dim, l1, l2 } => {
                discrete_gaussian_sum_rdp(sigma, n, dim, l1, l2, orders)
            }
            Charge::DistributedSkellam { sigma, n, dim: _, l1, l2 } => skellam_sum_rdp(sigma, n, l1, l2, orders),
        }
    }
}

/// Composes `charges` (in any order: RDP composition is a sum) and converts to
/// `(epsilon, optimal order)` at `delta`. An empty list is epsilon 0.
pub fn epsilon_of(charges: &[Charge], delta: f64) -> Result<(f64, f64), PrivacyError> {
    let mut acc = RdpAccountant::new();
    if charges.is_empty() {
        crate::rdp::epsilon_from_rdp(acc.orders(), acc.rdp(), delta)?;
        return Ok((0.0, acc.orders()[0]));
    }
    // Runs of equal charges (a job's rounds) are evaluated once and composed as a multiple,
    // so the cost does not grow with the number of rounds.
    let mut i = 0;
    while i < charges.len() {
        let run = charges[i..].iter().take_while(|c| **c == charges[i]).count();
        let r = charges[i].rdp(acc.orders())?;
        acc.compose_rdp(&r, run as u64)?;
        i += run;
    }
    acc.epsilon(delta)
}

/// The smallest noise multiplier `z` (bisection to a relative 1e-6, rounded up) for which the
/// charges `charges_for(z)` compose to at most `target_epsilon` at `delta`. `charges_for`
/// must be monotone: more noise never costs more. The returned `z` always meets the target.
pub fn smallest_noise_multiplier_for(
    target_epsilon: f64,
    delta: f64,
    charges_for: impl Fn(f64) -> Result<Vec<Charge>, PrivacyError>,
) -> Result<f64, PrivacyError> {
    if !(target_epsilon.is_finite() && target_epsilon > 0.0) {
        return Err(PrivacyError::InvalidEpsilon(target_epsilon));
    }
    crate::rdp::bisect_noise_multiplier(target_epsilon, 0.5, |z| Ok(epsilon_of(&charges_for(z)?, delta)?.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{default_orders, epsilon_for};

    #[test]
    fn gaussian_count_equals_composition() {
        let one = Charge::Gaussian { noise_multiplier: 2.0, count: 1 };
        let five = Charge::Gaussian { noise_multiplier: 2.0, count: 5 };
        let (e5, _) = epsilon_of(&[five], 1e-5).unwrap();
        let (e1x5, _) = epsilon_of(&vec![one; 5], 1e-5).unwrap();
        assert!((e5 - e1x5).abs() < 1e-12, "{e5} vs {e1x5}");
    }

    #[test]
    fn subsampled_uses_integer_orders_only_and_is_never_below_continuous() {
        let c = Charge::SubsampledGaussian { noise_multiplier: 1.1, sampling_rate: 256.0 / 60000.0, steps: 14062 };
        let orders = default_orders();
        let r = c.rdp(&orders).unwrap();
        for (a, v) in orders.iter().zip(&r) {
            assert_eq!(a.fract() != 0.0, v.is_infinite(), "order {a}: {v}");
        }
        let (eps, order) = epsilon_of(&[c], 1e-5).unwrap();
        let continuous = epsilon_for(1.1, 256.0 / 60000.0, 14062, 1e-5).unwrap();
        assert!(eps >= continuous, "{eps} < {continuous}");
        assert_eq!(order.fract(), 0.0);
        // Integer orders are dense where the optimum lies: the loss is small.
        assert!(eps < continuous * 1.05, "{eps} vs {continuous}");
    }

    #[test]
    fn calibration_meets_the_target_tightly() {
        let charges = |z: f64| Ok(vec![Charge::Gaussian { noise_multiplier: 4.0, count: 1 }, Charge::SubsampledGaussian { noise_multiplier: z, sampling_rate: 0.04, steps: 250 }]);
        let z = smallest_noise_multiplier_for(8.0, 1e-5, charges).unwrap();
        let at = epsilon_of(&charges(z).unwrap(), 1e-5).unwrap().0;
        let below = epsilon_of(&charges(z * 0.999).unwrap(), 1e-5).unwrap().0;
        assert!(at <= 8.0 && below > 8.0, "z {z}: eps {at}, slightly less noise gives {below}");
        // The stats charge alone must fit: an impossible target is an error, not a wrong z.
        let err = smallest_noise_multiplier_for(0.01, 1e-5, charges).unwrap_err();
        assert!(matches!(err, PrivacyError::UnreachableTarget { .. }), "{err:?}");
    }

    #[test]
    fn empty_is_zero_and_bad_input_is_refused() {
        assert_eq!(epsilon_of(&[], 1e-5).unwrap().0, 0.0);
        assert!(epsilon_of(&[], 2.0).is_err());
        assert!(Charge::Gaussian { noise_multiplier: 1.0, count: 0 }.rdp(&default_orders()).is_err());
        assert!(Charge::SubsampledGaussian { noise_multiplier: 1.0, sampling_rate: 1.5, steps: 1 }.rdp(&default_orders()).is_err());
    }

    #[test]
    fn serde_form_is_tagged_and_round_trips() {
        let c = Charge::SubsampledGaussian { noise_multiplier: 1.5, sampling_rate: 0.04, steps: 25 };
        let s = serde_json::to_string(&c).unwrap();
        assert!(s.contains("\"mechanism\":\"subsampled_gaussian\""), "{s}");
        assert_eq!(serde_json::from_str::<Charge>(&s).unwrap(), c);
    }
}
