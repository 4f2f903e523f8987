use thiserror::Error;

/// Everything that can go wrong in this crate. Each variant names the failure so callers (and
/// operators reading logs) can tell bad input from a bad model file from a backend problem.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ModelError {
    /// The model name is not in [`crate::REGISTRY`].
    #[error("unknown model {name:?}; known models: {}", known.join(", "))]
    UnknownModel {
        name: String,
        known: &'static [&'static str],
    },
    /// The spec is structurally invalid (e.g. an MLP without hidden layers).
    #[error("invalid model spec: {0}")]
    InvalidSpec(String),
    /// A flat vector does not have the number of scalars its layout requires.
    #[error("length mismatch: expected {expected} values, got {got}")]
    LengthMismatch { expected: usize, got: usize },
    /// A parameter value is NaN or infinite (at this index of the flat vector).
    #[error("non-finite parameter at index {index}")]
    NonFinite { index: usize },
    /// Parameters were made for another model or feature count (layout digests differ).
    #[error("parameter layout mismatch: expected digest {expected}, got {got}")]
    LayoutMismatch { expected: String, got: String },
    /// Input data has inconsistent shape (features not n_rows x n_features, labels per row...).
    #[error("shape error: {0}")]
    Shape(String),
    /// There are no rows to train on or predict.
    #[error("empty data: no rows")]
    EmptyData,
    /// An input feature is NaN or infinite (at this index of the row-major feature slice).
    #[error("non-finite input feature at index {index}")]
    NonFiniteInput { index: usize },
    /// A label is not exactly 0.0 or 1.0.
    #[error("invalid label {value} at row {index}: labels must be 0.0 or 1.0")]
    InvalidLabel { index: usize, value: f32 },
    /// The training configuration is unusable (zero batch size, bad learning rate...).
    #[error("invalid training config: {0}")]
    InvalidConfig(String),
    /// Saving or loading a model file / byte buffer failed.
    #[error("model store error: {0}")]
    Store(String),
    /// The Burn backend failed to produce data (should not happen on the CPU backend).
    #[error("backend error: {0}")]
    Backend(String),
}
