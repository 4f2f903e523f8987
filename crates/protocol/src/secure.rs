//! What the coordinator and the sites must compute identically for a secure aggregation round:
//! the round id, the parameters (graph, threshold) the job's settings imply, the quantiser, and
//! the layout of the masked vector. A site recomputes all of it and refuses a setup that
//! differs, so a coordinator cannot quietly lower the threshold or reuse another round's id.

use fedcare_job::{JobId, JobSpec, PrivacyPlan, PrivacyUnit, SiteMechanism};
use fedcare_privacy::{DdgEncoder, DistributedNoise};
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
    fedcare_job::masked_dim(model_len)
}

/// The integer noise of the job's rounds under site-level privacy with a distributed mechanism
/// (discrete Gaussian or Skellam shares): the sites then encode with [`DdgEncoder`] instead of
/// the quantiser. `None` otherwise.
pub fn distributed_noise(spec: &JobSpec) -> Option<DistributedNoise> {
    if spec.privacy.unit != PrivacyUnit::Site {
        return None;
    }
    spec.privacy.mechanism.unwrap_or(SiteMechanism::Distributed).noise()
}

/// Whether the job's rounds carry distributed noise ([`distributed_noise`]).
pub fn distributed_dp(spec: &JobSpec) -> bool {
    distributed_noise(spec).is_some()
}

/// Whether the coordinator adds the noise (site-level privacy, central mechanism).
pub fn central_dp(spec: &JobSpec) -> bool {
    spec.privacy.unit == PrivacyUnit::Site && spec.privacy.mechanism == Some(SiteMechanism::Central)
}

/// Length of the vector secure aggregation sums: the masked vector, padded to a power of two
/// when the DDG's Hadamard rotation needs it.
pub fn vector_len(spec: &JobSpec, model_len: usize) -> usize {
    if distributed_dp(spec) { masked_dim(model_len).next_power_of_two() } else { masked_dim(model_len) }
}

/// Parameters for `n` sites in this round of this job.
pub fn params(spec: &JobSpec, n: usize, model_len: usize, round_id: &[u8; 32]) -> Result<Params, SecAggError> {
    let sa = &spec.secure_aggregation;
    Params::choose(n, vector_len(spec, model_len), sa.bits, sa.dropout_fraction, sa.corruption_fraction, graph_seed(round_id))
}

/// `SHA-256("fedcare/ddg-rotation/v1" || round id)`: the round's public rotation seed, the
/// same at every site and the coordinator, different every round.
pub fn rotation_seed(round_id: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"fedcare/ddg-rotation/v1");
    h.update(round_id);
    h.finalize().into()
}

/// The round's distributed-noise encoder for `n` participants: the job's plan (computed once
/// per job by the caller: calibrating it is a bisection) gives the noise multiplier; the
/// guaranteed minimum of noise shares is the round quorum.
pub fn ddg_encoder(spec: &JobSpec, plan: &PrivacyPlan, n: usize, model_len: usize, round_id: &[u8; 32]) -> Result<DdgEncoder, String> {
    let noise = distributed_noise(spec).ok_or("the job does not use a distributed noise mechanism")?;
    let cal = fedcare_job::privacy::ddg_calibration(
        noise,
        plan.noise_multiplier,
        plan.clip_norm,
        spec.round_quorum() as usize,
        n,
        spec.secure_aggregation.bits,
        model_len,
    );
    let params = cal.params(rotation_seed(round_id)).map_err(|e| e.to_string())?;
    DdgEncoder::new(params).map_err(|e| e.to_string())
}

/// Turns the unmasked sum of a round back into floats (length [`masked_dim`]): the sum of
/// the sites' (weighted) vectors, noised under the distributed mechanism.
pub fn decode_sum(
    spec: &JobSpec,
    plan: Option<&PrivacyPlan>,
    n: usize,
    model_len: usize,
    round_id: &[u8; 32],
    sum: &[u64],
    count: usize,
) -> Result<Vec<f32>, String> {
    if distributed_dp(spec) {
        let plan = plan.ok_or("the job has no privacy plan")?;
        ddg_encoder(spec, plan, n, model_len, round_id)?.try_decode_sum(sum).map_err(|e| e.to_string())
    } else {
        use fedcare_secagg::Encoder;
        Ok(quantizer(spec, n).map_err(|e| e.to_string())?.decode_sum(sum, count))
    }
}

/// The quantiser for a round of `n` sites. Rounding to nearest keeps a job reproducible; the
/// differential privacy work replaces this encoder with its own (randomised) one.
pub fn quantizer(spec: &JobSpec, n: usize) -> Result<StochasticQuantizer, SecAggError> {
    let sa = &spec.secure_aggregation;
    StochasticQuantizer::new(sa.clip, sa.bits, n, Rounding::Nearest)
}
