//! The Burn side: one module type for both models (logistic regression is an MLP with no
//! hidden layers), built from and flattened back to [`FlatParams`].

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};

use crate::flat::linear_dims;
use crate::{FlatParams, ModelError, ModelSpec, ParamEntry, ParamLayout, layout};

/// `hidden.i` layers with ReLU after each, then `linear` producing one logit per row.
/// Field order matters: Burn visits fields in declaration order, which must equal layout order.
#[derive(Module, Debug)]
pub(crate) struct Net {
    hidden: Vec<Linear>,
    linear: Linear,
}

impl Net {
    /// Logits `[n, 1]` for inputs `[n, d]`.
    pub(crate) fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mut h = x;
        for layer in &self.hidden {
            h = relu(layer.forward(h));
        }
        self.linear.forward(h)
    }

    /// Builds the module on `device` from a flat vector, copying values verbatim. The caller
    /// has already checked `params.layout == layout(spec, n_features)`.
    pub(crate) fn from_flat(
        spec: &ModelSpec,
        n_features: usize,
        params: &FlatParams,
        device: &Device,
    ) -> Net {
        let mut offset = 0;
        let mut take = |n: usize| {
            let s = &params.values[offset..offset + n];
            offset += n;
            s.to_vec()
        };
        let mut layers: Vec<Linear> = linear_dims(spec, n_features)
            .into_iter()
            .map(|(d_in, d_out)| {
                let w = TensorData::new(take(d_in * d_out), [d_in, d_out]);
                let b = TensorData::new(take(d_out), [d_out]);
                Linear {
                    weight: Param::from_tensor(Tensor::from_data(w, device)),
                    bias: Some(Param::from_tensor(Tensor::from_data(b, device))),
                }
            })
            .collect();
        // linear_dims always yields at least the logit layer.
        let linear = layers
            .pop()
            .unwrap_or_else(|| unreachable!("no logit layer"));
        Net {
            hidden: layers,
            linear,
        }
    }

    /// Reads every parameter back into one flat vector, in Burn's visit order, and checks that
    /// the names and shapes Burn reports equal `layout(spec, n_features)`. That check is what
    /// ties the flat order to the names used by the safetensors file.
    pub(crate) fn to_flat(
        &self,
        spec: &ModelSpec,
        n_features: usize,
    ) -> Result<FlatParams, ModelError> {
        let expected = layout(spec, n_features);
        let mut v = Flattener {
            path: Vec::new(),
            entries: Vec::new(),
            values: Vec::with_capacity(expected.len()),
            error: None,
        };
        self.visit(&mut v);
        if let Some(e) = v.error {
            return Err(e);
        }
        let got = ParamLayout { entries: v.entries };
        if got != expected {
            return Err(ModelError::LayoutMismatch {
                expected: expected.digest(),
                got: got.digest(),
            });
        }
        FlatParams::new(expected, v.values)
    }
}

/// Collects `(path, shape, values)` of every float parameter, tracking the module path the way
/// burn-store's collector does (`enter_module` pushes the field name or Vec index).
struct Flattener {
    path: Vec<String>,
    entries: Vec<ParamEntry>,
    values: Vec<f32>,
    error: Option<ModelError>,
}

impl ModuleVisitor for Flattener {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.error.is_some() {
            return;
        }
        let tensor = param.val();
        let shape = tensor.dims().to_vec();
        match tensor
            .try_into_data()
            .map_err(|e| ModelError::Backend(format!("{e:?}")))
            .and_then(|d| {
                d.try_to_vec::<f32>()
                    .map_err(|e| ModelError::Backend(format!("{e:?}")))
            }) {
            Ok(vals) => {
                self.entries.push(ParamEntry {
                    name: self.path.join("."),
                    shape,
                });
                self.values.extend(vals);
            }
            Err(e) => self.error = Some(e),
        }
    }
}
