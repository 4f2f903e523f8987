//! What the coordinator and the sites must compute identically for a secure aggregation round:
//! the round id, the parameters (graph, threshold) the job's settings imply, the quantiser, and
//! the layout of the masked vector. A site recomputes all of it and refuses a setup that
//! differs, so a coordinator cannot quietly lower the threshold or reuse another round's id.

use fedcare_job::{JobId, JobSpec};
use fedcare_secagg::{Params, Rounding, SecAggError, StochasticQuantizer, graph_seed};
use sha2::{Digest, Sha256};

/// `SHA-256("fedcare/secagg-round/v1" || job id || round)`: binds every key, share and mask of
/// a round to that job and round, so nothing from another round can be replayed into it.
pub fn round_id(job: &JobId, round: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"fedcare/secagg-round/v1");
    h.update(job.as_str().as_bytes());
    h.update(round.to_be_bytes());
    h.finalize().into()
}

/// The masked vector: the model's parameters, then one coordinate for the training loss (so the
/// coordinator learns only the weighted sum of the sites' losses too).
pub fn masked_dim(model_len: usize) -> usize {
    model_len + 1
}

/// Parameters for `n` sites in this round of this job.
pub fn params(spec: &JobSpec, n: usize, model_len: usize, round_id: &[u8; 32]) -> Result<Params, SecAggError> {
    let sa = &spec.secure_aggregation;
    Params::choose(n, masked_dim(model_len), sa.bits, sa.dropout_fraction, sa.corruption_fraction, graph_seed(round_id))
}

/// The quantiser for a round of `n` sites. Rounding to nearest keeps a job reproducible; the
/// differential privacy work replaces this encoder with its own (randomised) one.
pub fn quantizer(spec: &JobSpec, n: usize) -> Result<StochasticQuantizer, SecAggError> {
    let sa = &spec.secure_aggregation;
    StochasticQuantizer::new(sa.clip, sa.bits, n, Rounding::Nearest)
}
