use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{ModelError, ModelSpec};

/// One named tensor of the model: its Burn module path and its shape.
/// Linear weights are `[d_input, d_output]` (Burn's row layout), biases `[d_output]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ParamEntry {
    pub name: String,
    pub shape: Vec<usize>,
}

impl ParamEntry {
    /// Number of scalars in this tensor.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The ordered list of tensors making up the flat parameter vector. The order is forward order:
/// `hidden.0.weight, hidden.0.bias, ..., linear.weight, linear.bias`, which is also the order
/// Burn visits the module in (checked when flattening).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ParamLayout {
    pub entries: Vec<ParamEntry>,
}

impl ParamLayout {
    /// Total number of scalars (length of the flat vector).
    pub fn len(&self) -> usize {
        self.entries.iter().map(ParamEntry::numel).sum()
    }

    /// True when the layout holds no scalars.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hex SHA-256 of the names and shapes, in order. Both ends of secure aggregation compare
    /// digests so that a coordinator and a site with different model configs fail loudly
    /// instead of summing unrelated numbers.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"fedcare-param-layout-v1\n");
        for e in &self.entries {
            h.update(e.name.as_bytes());
            h.update(b":");
            let dims: Vec<String> = e.shape.iter().map(|d| d.to_string()).collect();
            h.update(dims.join(",").as_bytes());
            h.update(b"\n");
        }
        hex::encode(h.finalize())
    }

    /// `(start, end)` of each entry within the flat vector.
    pub(crate) fn ranges(&self) -> Vec<(usize, usize)> {
        let mut start = 0;
        self.entries
            .iter()
            .map(|e| {
                let r = (start, start + e.numel());
                start = r.1;
                r
            })
            .collect()
    }
}

/// `(d_input, d_output)` of each Linear layer, input to output.
pub(crate) fn linear_dims(spec: &ModelSpec, n_features: usize) -> Vec<(usize, usize)> {
    let mut dims = Vec::new();
    let mut d_in = n_features;
    for &h in spec.hidden() {
        dims.push((d_in, h));
        d_in = h;
    }
    dims.push((d_in, 1));
    dims
}

/// Burn path prefix of layer `i` of `n` (the last is the logit layer `linear`).
pub(crate) fn layer_prefix(i: usize, n: usize) -> String {
    if i + 1 == n {
        "linear".to_string()
    } else {
        format!("hidden.{i}")
    }
}

/// The parameter layout of `spec` on `n_features` inputs.
pub fn layout(spec: &ModelSpec, n_features: usize) -> ParamLayout {
    let dims = linear_dims(spec, n_features);
    let n = dims.len();
    let mut entries = Vec::with_capacity(2 * n);
    for (i, (d_in, d_out)) in dims.into_iter().enumerate() {
        let p = layer_prefix(i, n);
        entries.push(ParamEntry {
            name: format!("{p}.weight"),
            shape: vec![d_in, d_out],
        });
        entries.push(ParamEntry {
            name: format!("{p}.bias"),
            shape: vec![d_out],
        });
    }
    ParamLayout { entries }
}

/// One flat ordered vector of all parameters: what secure aggregation carries. Construct with
/// [`FlatParams::new`] so the length and finiteness invariants hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlatParams {
    pub layout: ParamLayout,
    pub values: Vec<f32>,
}

impl FlatParams {
    /// Checks `values.len() == layout.len()` and that every value is finite (a NaN would
    /// silently poison a federated average).
    pub fn new(layout: ParamLayout, values: Vec<f32>) -> Result<Self, ModelError> {
        if values.len() != layout.len() {
            return Err(ModelError::LengthMismatch {
                expected: layout.len(),
                got: values.len(),
            });
        }
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite { index });
        }
        Ok(FlatParams { layout, values })
    }

    /// Errors unless these parameters have exactly the `expected` layout.
    pub fn check_layout(&self, expected: &ParamLayout) -> Result<(), ModelError> {
        if &self.layout != expected {
            return Err(ModelError::LayoutMismatch {
                expected: expected.digest(),
                got: self.layout.digest(),
            });
        }
        Ok(())
    }

    /// The values of the named tensor, if the layout has it.
    pub fn tensor(&self, name: &str) -> Option<&[f32]> {
        let i = self.layout.entries.iter().position(|e| e.name == name)?;
        let (s, e) = self.layout.ranges()[i];
        self.values.get(s..e)
    }
}

/// Uniform in `[-bound, bound)` from 24 random bits. Written out rather than using a `rand`
/// distribution so the mapping from ChaCha output to floats can never change under us.
fn uniform(rng: &mut ChaCha20Rng, bound: f32) -> f32 {
    let u = (rng.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
    (2.0 * u - 1.0) * bound
}

/// Deterministic initialisation. Hidden (ReLU) layers get Kaiming/He-uniform weights
/// (bound `sqrt(6 / fan_in)`), the logit layer Xavier/Glorot-uniform
/// (bound `sqrt(6 / (fan_in + fan_out))`); biases are zero. Values are drawn in flat-vector
/// order from one `ChaCha20Rng::seed_from_u64(seed)` stream.
pub fn init(spec: &ModelSpec, n_features: usize, seed: u64) -> FlatParams {
    let layout = layout(spec, n_features);
    let dims = linear_dims(spec, n_features);
    let n = dims.len();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(layout.len());
    for (i, (d_in, d_out)) in dims.into_iter().enumerate() {
        let bound = if i + 1 == n {
            (6.0f64 / (d_in + d_out).max(1) as f64).sqrt() as f32
        } else {
            (6.0f64 / d_in.max(1) as f64).sqrt() as f32
        };
        values.extend((0..d_in * d_out).map(|_| uniform(&mut rng, bound)));
        values.extend(std::iter::repeat_n(0.0f32, d_out));
    }
    // All values are finite by construction and the length matches the layout.
    FlatParams { layout, values }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Net;
    use burn::tensor::Device;

    fn mlp() -> ModelSpec {
        ModelSpec::Mlp {
            hidden: vec![16, 8],
        }
    }

    #[test]
    fn logistic_layout_names_shapes_order() {
        let l = layout(&ModelSpec::LogisticRegression, 13);
        let got: Vec<(&str, Vec<usize>)> = l
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.shape.clone()))
            .collect();
        assert_eq!(
            got,
            vec![("linear.weight", vec![13, 1]), ("linear.bias", vec![1])]
        );
        assert_eq!(l.len(), 14);
    }

    #[test]
    fn mlp_layout_names_shapes_order() {
        let l = layout(&mlp(), 13);
        let got: Vec<(&str, Vec<usize>)> = l
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.shape.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("hidden.0.weight", vec![13, 16]),
                ("hidden.0.bias", vec![16]),
                ("hidden.1.weight", vec![16, 8]),
                ("hidden.1.bias", vec![8]),
                ("linear.weight", vec![8, 1]),
                ("linear.bias", vec![1]),
            ]
        );
        assert_eq!(l.len(), 13 * 16 + 16 + 16 * 8 + 8 + 8 + 1);
    }

    #[test]
    fn digest_is_stable_and_distinguishes_layouts() {
        let a = layout(&mlp(), 13);
        assert_eq!(a.digest(), layout(&mlp(), 13).digest());
        assert_eq!(a.digest().len(), 64);
        assert_ne!(a.digest(), layout(&mlp(), 12).digest());
        assert_ne!(
            a.digest(),
            layout(
                &ModelSpec::Mlp {
                    hidden: vec![8, 16]
                },
                13
            )
            .digest()
        );
        assert_ne!(
            layout(&ModelSpec::LogisticRegression, 13).digest(),
            layout(&ModelSpec::LogisticRegression, 14).digest()
        );
    }

    #[test]
    fn init_is_deterministic_and_seed_dependent() {
        for spec in [ModelSpec::LogisticRegression, mlp()] {
            let a = init(&spec, 13, 7);
            let b = init(&spec, 13, 7);
            let c = init(&spec, 13, 8);
            assert_eq!(a.values, b.values);
            assert_ne!(a.values, c.values);
            assert_eq!(a.values.len(), a.layout.len());
            assert!(a.values.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn init_golden_values_pin_the_generator() {
        // Pins ChaCha20 + our float mapping: if this changes, old seeds no longer reproduce.
        let p = init(&ModelSpec::LogisticRegression, 2, 42);
        let bound = (6.0f64 / 3.0).sqrt() as f32;
        assert!(p.values[..2].iter().all(|v| v.abs() <= bound));
        assert_eq!(p.values[2], 0.0);
        let bits: Vec<u32> = p.values.iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits, vec![1064833912, 1025688494, 0]);
    }

    #[test]
    fn init_biases_zero_and_weights_bounded() {
        let p = init(&mlp(), 13, 1);
        assert!(p.tensor("hidden.0.bias").unwrap().iter().all(|v| *v == 0.0));
        assert!(p.tensor("linear.bias").unwrap().iter().all(|v| *v == 0.0));
        let b0 = (6.0f64 / 13.0).sqrt() as f32;
        let w0 = p.tensor("hidden.0.weight").unwrap();
        assert!(w0.iter().all(|v| v.abs() <= b0));
        assert!(w0.iter().any(|v| *v != 0.0));
    }

    #[test]
    fn flat_round_trip_through_burn_is_exact() {
        for spec in [ModelSpec::LogisticRegression, mlp()] {
            let p = init(&spec, 13, 3);
            // Include awkward values to make sure nothing is rounded or reordered.
            let mut values = p.values.clone();
            values[0] = f32::MIN_POSITIVE;
            values[1] = -1.0e30;
            let last = values.len() - 1;
            values[last] = 0.123_456_79;
            let p = FlatParams::new(p.layout, values).unwrap();
            for device in [Device::flex(), Device::flex().autodiff()] {
                let net = Net::from_flat(&spec, 13, &p, &device);
                let back = net.to_flat(&spec, 13).unwrap();
                assert_eq!(back, p);
            }
        }
    }

    #[test]
    fn flat_params_rejects_bad_length_and_non_finite() {
        let l = layout(&ModelSpec::LogisticRegression, 3);
        assert_eq!(
            FlatParams::new(l.clone(), vec![0.0; 3]),
            Err(ModelError::LengthMismatch {
                expected: 4,
                got: 3
            })
        );
        assert_eq!(
            FlatParams::new(l.clone(), vec![0.0, f32::NAN, 0.0, 0.0]),
            Err(ModelError::NonFinite { index: 1 })
        );
        assert_eq!(
            FlatParams::new(l.clone(), vec![0.0, 0.0, 0.0, f32::INFINITY]),
            Err(ModelError::NonFinite { index: 3 })
        );
        assert!(FlatParams::new(l, vec![0.0; 4]).is_ok());
    }
}
