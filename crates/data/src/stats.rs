//! Federation-wide standardisation from aggregate sums.
//!
//! Standardising each site with its own mean and std would give every site a different input
//! space (and leak less-aggregated statistics through the model). Instead each site sends only
//! per-column count, sum and sum of squares; the coordinator adds them and derives one
//! [`Standardization`] that every site applies. These sums are the only thing this crate
//! produces that is meant to leave a site.

use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::error::DataError;

/// Per encoded column: number of values, their sum and their sum of squares (in f64).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSums {
    pub count: Vec<u64>,
    pub sum: Vec<f64>,
    pub sum_sq: Vec<f64>,
}

impl FeatureSums {
    /// The sums of one site's dataset (usually its training part only, so that test rows do
    /// not influence the model's preprocessing).
    pub fn of(ds: &Dataset) -> FeatureSums {
        let w = ds.n_features();
        let mut s = FeatureSums::zero(w);
        if w == 0 {
            return s;
        }
        for row in ds.features().chunks_exact(w) {
            for (j, &v) in row.iter().enumerate() {
                let v = f64::from(v);
                s.sum[j] += v;
                s.sum_sq[j] += v * v;
            }
        }
        s.count.iter_mut().for_each(|c| *c = ds.len() as u64);
        s
    }

    /// The neutral element for [`FeatureSums::add`].
    pub fn zero(width: usize) -> Self {
        FeatureSums {
            count: vec![0; width],
            sum: vec![0.0; width],
            sum_sq: vec![0.0; width],
        }
    }

    /// Number of encoded columns. A deserialised value may be ragged; [`FeatureSums::add`] and
    /// [`Standardization::from_sums`] check that.
    pub fn width(&self) -> usize {
        self.count.len()
    }

    fn check_shape(&self, what: &str) -> Result<(), DataError> {
        if self.sum.len() != self.count.len() || self.sum_sq.len() != self.count.len() {
            return Err(DataError::WidthMismatch {
                what: format!(
                    "{what}: count/sum/sum_sq lengths differ ({}/{}/{})",
                    self.count.len(),
                    self.sum.len(),
                    self.sum_sq.len()
                ),
                expected: self.count.len(),
                found: self.sum.len().max(self.sum_sq.len()),
            });
        }
        Ok(())
    }

    /// Add another site's sums (the coordinator's only arithmetic on site data).
    /// Refuses a different width, since that means a different schema, and count overflow.
    pub fn add(&mut self, other: &FeatureSums) -> Result<(), DataError> {
        self.check_shape("FeatureSums::add (self)")?;
        other.check_shape("FeatureSums::add (other)")?;
        if other.width() != self.width() {
            return Err(DataError::WidthMismatch {
                what: "FeatureSums::add".into(),
                expected: self.width(),
                found: other.width(),
            });
        }
        let mut count = self.count.clone();
        for (c, o) in count.iter_mut().zip(&other.count) {
            *c = c
                .checked_add(*o)
                .ok_or_else(|| DataError::Stats("FeatureSums::add: count overflows u64".into()))?;
        }
        self.count = count;
        for (s, o) in self.sum.iter_mut().zip(&other.sum) {
            *s += o;
        }
        for (s, o) in self.sum_sq.iter_mut().zip(&other.sum_sq) {
            *s += o;
        }
        Ok(())
    }
}

/// Per-column mean and std, the same at every site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standardization {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// Variance at or below this fraction of `mean² + 1` counts as zero: `E[x²] - mean²` of a
/// constant column can come out as rounding noise instead of 0, and dividing by the root of
/// that noise would blow the column up instead of leaving it alone.
const ZERO_VARIANCE_REL: f64 = 1e-12;

impl Standardization {
    /// Mean and population std (`sqrt(sum_sq/n - mean²)`, like scikit-learn's StandardScaler).
    /// A zero-variance column (e.g. a one-hot level no site has, or Switzerland's all-zero
    /// `chol`) gets std = 1, so it is centred but not divided by zero.
    pub fn from_sums(s: &FeatureSums) -> Result<Self, DataError> {
        s.check_shape("Standardization::from_sums")?;
        let w = s.width();
        let mut mean = Vec::with_capacity(w);
        let mut std = Vec::with_capacity(w);
        for j in 0..w {
            let n = s.count[j];
            if n == 0 {
                return Err(DataError::Stats(format!(
                    "column {} has no values: cannot standardise without data",
                    j + 1
                )));
            }
            let (sum, sum_sq) = (s.sum[j], s.sum_sq[j]);
            if !sum.is_finite() || !sum_sq.is_finite() || sum_sq < 0.0 {
                return Err(DataError::Stats(format!(
                    "column {}: sums are not usable (sum {sum}, sum_sq {sum_sq})",
                    j + 1
                )));
            }
            let m = sum / n as f64;
            let var = (sum_sq / n as f64 - m * m).max(0.0);
            let sd = if var <= ZERO_VARIANCE_REL * (m * m + 1.0) {
                1.0
            } else {
                var.sqrt()
            };
            mean.push(m);
            std.push(sd);
        }
        Ok(Standardization { mean, std })
    }

    /// Mean and std from *noised* sums (differentially private statistics), made robust with
    /// the public range `bounds[j] = (lo, hi)` of each column: the noise can push a mean
    /// outside the range or a variance below zero, so the mean is clamped to `[lo, hi]` and
    /// the std to `[(hi - lo) / 100, (hi - lo) / 2]` (no column confined to `[lo, hi]` has a
    /// larger std). Post-processing of a private release, so it costs no privacy.
    pub fn from_noisy_sums(s: &FeatureSums, bounds: &[(f64, f64)]) -> Result<Self, DataError> {
        s.check_shape("Standardization::from_noisy_sums")?;
        if bounds.len() != s.width() {
            return Err(DataError::WidthMismatch { what: "Standardization::from_noisy_sums bounds".into(), expected: s.width(), found: bounds.len() });
        }
        let (mut mean, mut std) = (Vec::with_capacity(s.width()), Vec::with_capacity(s.width()));
        for (j, &(lo, hi)) in bounds.iter().enumerate() {
            let (sum, sum_sq) = (s.sum[j], s.sum_sq[j]);
            if !(lo.is_finite() && hi.is_finite() && lo < hi && sum.is_finite() && sum_sq.is_finite()) {
                return Err(DataError::Stats(format!("column {}: unusable noised sums or range", j + 1)));
            }
            let n = s.count[j].max(1) as f64;
            let m = (sum / n).clamp(lo, hi);
            let var = sum_sq / n - m * m;
            let width = hi - lo;
            let sd = if var.is_finite() && var > 0.0 { var.sqrt() } else { 0.0 };
            mean.push(m);
            std.push(sd.clamp(width / 100.0, width / 2.0));
        }
        Ok(Standardization { mean, std })
    }

    /// Replace every value `x` by `(x - mean) / std`, in place.
    pub fn apply(&self, ds: &mut Dataset) -> Result<(), DataError> {
        let w = ds.n_features();
        if self.mean.len() != w || self.std.len() != w {
            return Err(DataError::WidthMismatch {
                what: "Standardization::apply".into(),
                expected: w,
                found: if self.mean.len() != w {
                    self.mean.len()
                } else {
                    self.std.len()
                },
            });
        }
        if let Some(j) = (0..w)
            .find(|&j| !self.mean[j].is_finite() || !self.std[j].is_finite() || self.std[j] <= 0.0)
        {
            return Err(DataError::Stats(format!(
                "Standardization::apply: column {} has mean {} and std {}",
                j + 1,
                self.mean[j],
                self.std[j]
            )));
        }
        for row in ds.features_mut().chunks_exact_mut(w) {
            for (j, v) in row.iter_mut().enumerate() {
                *v = ((f64::from(*v) - self.mean[j]) / self.std[j]) as f32;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(rows: &[[f32; 2]], labels: &[f32]) -> Dataset {
        Dataset::new(
            vec!["a".into(), "b".into()],
            rows.iter().flatten().copied().collect(),
            labels.to_vec(),
        )
        .unwrap()
    }

    #[test]
    fn sums_by_hand() {
        // a: 1, 2, 3 -> sum 6, sum_sq 14;  b: 10, 10, 40 -> sum 60, sum_sq 1800.
        let d = ds(&[[1.0, 10.0], [2.0, 10.0], [3.0, 40.0]], &[0.0, 1.0, 0.0]);
        let s = FeatureSums::of(&d);
        assert_eq!(
            s,
            FeatureSums {
                count: vec![3, 3],
                sum: vec![6.0, 60.0],
                sum_sq: vec![14.0, 1800.0],
            }
        );
        let z = Standardization::from_sums(&s).unwrap();
        // a: mean 2, var 14/3 - 4 = 2/3.  b: mean 20, var 600 - 400 = 200.
        assert_eq!(z.mean, vec![2.0, 20.0]);
        assert!((z.std[0] - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((z.std[1] - 200f64.sqrt()).abs() < 1e-9);

        let mut d2 = d.clone();
        z.apply(&mut d2).unwrap();
        // Row 0: a = (1-2)/0.81650 = -1.224745, b = (10-20)/14.142136 = -0.707107.
        let f = d2.features();
        assert!((f[0] + 1.224_745).abs() < 1e-5, "{f:?}");
        assert!(
            (f[1] + std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-5,
            "{f:?}"
        ); // -10/√200 = -1/√2
        assert!((f[4] - 1.224_745).abs() < 1e-5, "{f:?}");
        assert!((f[5] - std::f32::consts::SQRT_2).abs() < 1e-5, "{f:?}"); // 20/√200 = √2
        assert_eq!(d2.labels(), d.labels(), "labels are untouched");
    }

    #[test]
    fn noisy_sums_are_clamped_to_the_public_range() {
        // Noise made the second column's variance negative and the first column's mean leave
        // its range: the result stays usable and inside what the range allows.
        let s = FeatureSums { count: vec![10, 10], sum: vec![150.0, 5.0], sum_sq: vec![2300.0, 1.0] };
        let z = Standardization::from_noisy_sums(&s, &[(0.0, 10.0), (0.0, 1.0)]).unwrap();
        assert_eq!(z.mean, vec![10.0, 0.5]);
        // Column 1: 230 - 100 = 130 -> sqrt 11.4, above the cap 5.
        assert_eq!(z.std[0], 5.0);
        // Column 2: 0.1 - 0.25 < 0 -> the floor 1/100.
        assert_eq!(z.std[1], 0.01);
        // In-range values pass through unchanged.
        let s = FeatureSums { count: vec![4], sum: vec![20.0], sum_sq: vec![116.0] };
        let z = Standardization::from_noisy_sums(&s, &[(0.0, 10.0)]).unwrap();
        assert_eq!((z.mean[0], z.std[0]), (5.0, 2.0));
        assert!(Standardization::from_noisy_sums(&s, &[]).is_err());
    }

    #[test]
    fn zero_variance_gets_std_one() {
        // Constant 140 (non-zero, so E[x²]-mean² is subject to rounding) and constant 0.
        let d = ds(
            &[[140.1, 0.0], [140.1, 0.0], [140.1, 0.0]],
            &[0.0, 0.0, 1.0],
        );
        let z = Standardization::from_sums(&FeatureSums::of(&d)).unwrap();
        assert_eq!(z.std, vec![1.0, 1.0]);
        let mut d2 = d.clone();
        z.apply(&mut d2).unwrap();
        assert!(
            d2.features().iter().all(|v| v.abs() < 1e-4),
            "{:?}",
            d2.features()
        );
    }

    #[test]
    fn add_by_hand_and_width_check() {
        let mut a = FeatureSums {
            count: vec![2, 2],
            sum: vec![1.0, 2.0],
            sum_sq: vec![3.0, 4.0],
        };
        let b = FeatureSums {
            count: vec![1, 1],
            sum: vec![10.0, 20.0],
            sum_sq: vec![100.0, 400.0],
        };
        a.add(&b).unwrap();
        assert_eq!(a.count, vec![3, 3]);
        assert_eq!(a.sum, vec![11.0, 22.0]);
        assert_eq!(a.sum_sq, vec![103.0, 404.0]);
        let mut z = FeatureSums::zero(2);
        z.add(&a).unwrap();
        assert_eq!(z, a);
        let e = a.add(&FeatureSums::zero(3)).unwrap_err().to_string();
        assert!(e.contains("expected 2, found 3"), "{e}");
        let ragged = FeatureSums {
            count: vec![1, 1],
            sum: vec![1.0],
            sum_sq: vec![1.0, 1.0],
        };
        assert!(a.add(&ragged).is_err());
        let big = FeatureSums {
            count: vec![u64::MAX, 0],
            sum: vec![0.0, 0.0],
            sum_sq: vec![0.0, 0.0],
        };
        let before = a.clone();
        assert!(a.add(&big).is_err());
        assert_eq!(a, before, "a failed add leaves the sums unchanged");
    }

    #[test]
    fn from_sums_and_apply_reject_bad_input() {
        assert!(Standardization::from_sums(&FeatureSums::zero(2)).is_err());
        let nan = FeatureSums {
            count: vec![1],
            sum: vec![f64::NAN],
            sum_sq: vec![1.0],
        };
        assert!(Standardization::from_sums(&nan).is_err());
        let z = Standardization {
            mean: vec![0.0],
            std: vec![1.0],
        };
        let mut d = ds(&[[1.0, 2.0]], &[1.0]);
        let e = z.apply(&mut d).unwrap_err().to_string();
        assert!(e.contains("expected 2, found 1"), "{e}");
        let z = Standardization {
            mean: vec![0.0, 0.0],
            std: vec![1.0, 0.0],
        };
        assert!(z.apply(&mut d).is_err());
    }

    #[test]
    fn sums_serialise_for_the_wire() {
        let s = FeatureSums {
            count: vec![2],
            sum: vec![3.5],
            sum_sq: vec![7.25],
        };
        let text = toml::to_string(&s).unwrap();
        assert_eq!(toml::from_str::<FeatureSums>(&text).unwrap(), s);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Sites of a common width: each a list of rows; `dyadic` values are multiples of 1/4
        /// below 2^10, whose sums and squares are exact in f64, so equality can be exact.
        fn sites(dyadic: bool) -> impl Strategy<Value = (usize, Vec<Vec<Vec<f32>>>)> {
            (1usize..5).prop_flat_map(move |w| {
                let value = if dyadic {
                    (-4096i32..4096).prop_map(|q| q as f32 / 4.0).boxed()
                } else {
                    (-1.0e4f32..1.0e4).boxed()
                };
                let row = proptest::collection::vec(value, w);
                let site = proptest::collection::vec(row, 0..12);
                (Just(w), proptest::collection::vec(site, 1..6))
            })
        }

        fn to_ds(w: usize, rows: &[Vec<f32>]) -> Dataset {
            let names = (0..w).map(|j| format!("f{j}")).collect();
            let labels = (0..rows.len()).map(|i| (i % 2) as f32).collect();
            Dataset::new(names, rows.concat(), labels).unwrap()
        }

        proptest! {
            #[test]
            fn per_site_sums_add_up_to_pooled_sums_exactly((w, sites) in sites(true)) {
                let parts: Vec<Dataset> = sites.iter().map(|s| to_ds(w, s)).collect();
                let mut total = FeatureSums::zero(w);
                for p in &parts {
                    total.add(&FeatureSums::of(p)).unwrap();
                }
                let refs: Vec<&Dataset> = parts.iter().collect();
                prop_assert_eq!(total, FeatureSums::of(&Dataset::concat(&refs).unwrap()));
            }

            #[test]
            fn per_site_sums_add_up_to_pooled_sums_within_rounding((w, sites) in sites(false)) {
                let parts: Vec<Dataset> = sites.iter().map(|s| to_ds(w, s)).collect();
                let mut total = FeatureSums::zero(w);
                for p in &parts {
                    total.add(&FeatureSums::of(p)).unwrap();
                }
                let refs: Vec<&Dataset> = parts.iter().collect();
                let pooled = FeatureSums::of(&Dataset::concat(&refs).unwrap());
                prop_assert_eq!(&total.count, &pooled.count);
                let n = pooled.count[0] as f64;
                for j in 0..w {
                    // Each sum has at most ~n roundings of terms bounded by 1e4 (1e8 squared).
                    prop_assert!((total.sum[j] - pooled.sum[j]).abs() <= 1e-12 * 1.0e4 * (n + 1.0));
                    prop_assert!((total.sum_sq[j] - pooled.sum_sq[j]).abs() <= 1e-12 * 1.0e8 * (n + 1.0));
                }
            }
        }
    }
}
