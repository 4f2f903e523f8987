//! fedcare-models: the models a fedcare job can train, as seen by everything else in the system.
//!
//! A model is a [`ModelSpec`] (from the job spec's `[model]` table) plus one flat, ordered
//! vector of `f32` parameters ([`FlatParams`]). That flat vector is what secure aggregation
//! masks and sums, so both the coordinator and every site must agree on exactly which scalar
//! sits at which index: [`layout`] defines the order, and [`ParamLayout::digest`] lets the two
//! sides check they agree before exchanging numbers.
//!
//! Local training and inference run on Burn (flex CPU backend, autodiff for training): the flat
//! vector is loaded into a Burn module, trained, and flattened back.
//!
//! Guarantees:
//! - [`init`] is deterministic: the same spec, feature count and seed give bit-identical values
//!   on any machine (values come from ChaCha20 and our own integer-to-float mapping, never
//!   from Burn's global RNG).
//! - The flat vector order is the layout order: entries in [`ParamLayout::entries`] order, each
//!   tensor row-major. Loading into Burn and flattening back is exact (no arithmetic).
//! - Bad input (wrong lengths, NaN/inf, unknown model) is a typed [`ModelError`], never a panic.
//!
//! What this crate must never do: network access of any kind, or any I/O other than the file
//! written by [`save`] and read by [`load`]. It holds no global state, so callers may run it on
//! several sites' data in the same process.

mod dp;
mod error;
mod flat;
pub mod metrics;
mod net;
mod spec;
mod store;
mod train;

pub use dp::{DpSgdConfig, DpTrainOutcome, train_dp};
pub use error::ModelError;
pub use flat::{FlatParams, ParamEntry, ParamLayout, init, layout};
pub use metrics::{HIST_BINS, Metrics, auc_from_histograms, evaluate};
pub use spec::{MAX_HIDDEN_LAYERS, MAX_WIDTH, ModelSpec, REGISTRY};
pub use store::{from_bytes, load, save, to_bytes};
pub use train::{OptimizerKind, TrainConfig, TrainOutcome, predict, train};
