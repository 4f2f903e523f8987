//! What differential privacy changes at a site, and the site's budget.
//!
//! The site never trusts the coordinator's privacy figures: it recomputes the job's plan from
//! the spec it received ([`fedcare_job::privacy::plan`]), checks it against its own caps before
//! it accepts the job, and before each release (the noised statistics, each round's DP-SGD
//! update) it records the release's charge and bytes in its durable [`Ledger`]; only then is
//! the release sent. After a crash, a release that was recorded is re-sent as it was (the
//! ledger holds its bytes): nothing is spent twice and nothing leaves unrecorded.

use std::sync::{Arc, Mutex};

use fedcare_data::{Dataset, FeatureSums};
use fedcare_job::{JobId, JobSpec, PrivacyPlan};
use fedcare_ledger::{Caps, Ledger};
use fedcare_privacy::Unit;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// The site's ledger and caps, shared by the agent's tasks.
pub(crate) struct Budget {
    ledger: Mutex<Ledger>,
    caps: Caps,
}

impl Budget {
    pub(crate) fn new(ledger: Ledger, caps: Caps) -> Arc<Budget> {
        Arc::new(Budget { ledger: Mutex::new(ledger), caps })
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic while holding the lock cannot leave a half-written entry (appends are
        // single writes), so a poisoned lock is still usable.
        self.ledger.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the whole job fits this site's caps; the reason is safe to tell the coordinator.
    pub(crate) fn check_plan(&self, job: &JobId, plan: &PrivacyPlan) -> Result<(), String> {
        self.ledger()
            .check_plan(job.as_str(), plan.unit, plan.delta, &plan.charges(), &self.caps)
            .map(|_| ())
            .map_err(|r| format!("this site's privacy budget refuses the job: {r}"))
    }

    /// The release recorded earlier for this stage, if the site crashed after recording it.
    pub(crate) fn earlier_release(&self, job: &JobId, round: Option<u32>, stage: &str) -> Result<Option<Vec<u8>>, String> {
        self.ledger().committed_release(job.as_str(), round, stage).map_err(|e| format!("privacy ledger: {e}"))
    }

    /// The job's epsilon after the release recorded for `round` (None: the statistics), its
    /// delta and unit, if one is recorded.
    pub(crate) fn recorded(&self, job: &JobId, round: Option<u32>) -> Option<(f64, f64, &'static str)> {
        let ledger = self.ledger();
        ledger.entries().iter().rev().find(|e| e.job == job.as_str() && e.round == round).map(|e| (e.job_epsilon_after, e.delta, e.unit.as_str()))
    }

    /// Records a release durably; an error means it must not be sent.
    pub(crate) fn commit(&self, job: &JobId, round: Option<u32>, stage: &str, plan: &PrivacyPlan, charge: fedcare_privacy::Charge, release: &[u8]) -> Result<(), String> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.ledger()
            .commit(job.as_str(), round, stage, plan.unit, plan.delta, charge, release, &self.caps, now)
            .map(|_| ())
            .map_err(|e| format!("privacy ledger refused the release: {e}"))
    }
}

/// A fresh noise generator for one release: ChaCha20 keyed from the operating system's
/// generator (through ring), so every noise draw comes from a CSPRNG without a system call
/// per sample.
pub(crate) fn noise_rng() -> Result<ChaCha20Rng, String> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), seed.as_mut())
        .map_err(|_| "the system's random generator failed".to_owned())?;
    Ok(ChaCha20Rng::from_seed(*seed))
}

/// The statistics release of a privacy job.
///
/// Record level: each training row contributes `(K, x'_1..x'_w, x'_1^2..x'_w^2)` with
/// `x' = (clamp(x) - mid) / half` in `[-1, 1]` (the column's public range) and `K` =
/// [`COUNT_WEIGHT`], a vector of L2 norm at most `sqrt(K^2 + 2w)`; the sum over rows gets exact discrete Gaussian noise with noise
/// multiplier `z` (the lattice mechanism of `fedcare_privacy::dpsgd`), and is mapped back to
/// count, sums and sums of squares in the data's units. Site level: no data is used at all; the
/// site reports the range's midpoint and a uniform spread over it with count 1, which makes
/// FedAvg's weights uniform (DP-FedAvg does not weight by example counts).
///
/// Returns the sums and the count the site uses as its FedAvg weight from now on.
/// How much more of the statistics' noise budget the count gets than one sum: the count is
/// every site's FedAvg weight and the denominator of every mean, so its relative error matters
/// most. Weighting it by `K` divides its noise by about `K` for a small increase of the sums'.
pub(crate) const COUNT_WEIGHT: f64 = 4.0;

pub(crate) fn stats_release(train: &Dataset, spec: &JobSpec, plan: &PrivacyPlan, rng: &mut ChaCha20Rng) -> Result<(FeatureSums, u64), String> {
    let bounds = fedcare_job::privacy::encoded_bounds(spec).ok_or("the job declares no feature ranges")?;
    let w = train.n_features();
    if bounds.len() != w {
        return Err(format!("{} feature ranges for {w} columns", bounds.len()));
    }
    let (mids, halves): (Vec<f64>, Vec<f64>) = bounds.iter().map(|(lo, hi)| ((lo + hi) / 2.0, (hi - lo) / 2.0)).unzip();
    let (n, s1, s2): (f64, Vec<f64>, Vec<f64>) = match plan.unit {
        Unit::Site => (1.0, vec![0.0; w], vec![1.0 / 3.0; w]),
        Unit::Record => {
            let Some(fedcare_privacy::Charge::Gaussian { noise_multiplier, .. }) = plan.stats else {
                return Err("the plan has no statistics charge".into());
            };
            let dim = 1 + 2 * w;
            let clip = (COUNT_WEIGHT * COUNT_WEIGHT + 2.0 * w as f64).sqrt();
            let mut sum = fedcare_privacy::dpsgd::NoisyGradientSum::new(dim, clip, noise_multiplier, fedcare_privacy::dpsgd::DEFAULT_LATTICE_BITS)
                .map_err(|e| e.to_string())?;
            let mut v = vec![0f32; dim];
            for row in train.features().chunks_exact(w) {
                v[0] = COUNT_WEIGHT as f32;
                for j in 0..w {
                    let (lo, hi) = bounds[j];
                    let x = ((f64::from(row[j]).clamp(lo, hi) - mids[j]) / halves[j]).clamp(-1.0, 1.0);
                    v[1 + j] = x as f32;
                    v[1 + w + j] = (x * x) as f32;
                }
                sum.add_example(&v, rng).map_err(|e| e.to_string())?;
            }
            let out = sum.finish(rng);
            (out[0] / COUNT_WEIGHT, out[1..=w].to_vec(), out[1 + w..].to_vec())
        }
    };
    // A count below one is noise; one keeps the weights and means defined.
    let count = n.round().max(1.0) as u64;
    let nf = count as f64;
    let sum: Vec<f64> = (0..w).map(|j| mids[j] * nf + halves[j] * s1[j]).collect();
    let sum_sq: Vec<f64> = (0..w)
        .map(|j| mids[j] * mids[j] * nf + 2.0 * mids[j] * halves[j] * s1[j] + halves[j] * halves[j] * s2[j])
        .collect();
    Ok((FeatureSums { count: vec![count; w], sum, sum_sq }, count))
}

/// A release's bytes: little-endian f32s (what the ledger stores and hashes).
pub(crate) fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The inverse of [`f32_bytes`]; refuses a length that is not whole f32s.
pub(crate) fn f32s_from(bytes: &[u8]) -> Result<Vec<f32>, String> {
    if !bytes.len().is_multiple_of(4) {
        return Err(format!("a stored release of {} bytes is not whole f32 values", bytes.len()));
    }
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// A release's bytes: little-endian u64s (a DDG encoding).
pub(crate) fn u64_bytes(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The inverse of [`u64_bytes`].
pub(crate) fn u64s_from(bytes: &[u8]) -> Result<Vec<u64>, String> {
    if !bytes.len().is_multiple_of(8) {
        return Err(format!("a stored release of {} bytes is not whole u64 values", bytes.len()));
    }
    Ok(bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example job and one example site's training split.
    fn example(site: &str) -> (JobSpec, Dataset) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/heart-disease");
        let spec = JobSpec::from_toml(&std::fs::read_to_string(dir.join("job.toml")).unwrap(), "job.toml").unwrap();
        let (cfg, base) = crate::AgentConfig::load(&dir.join("sites").join(format!("{site}.toml"))).unwrap();
        let (ds, _) = fedcare_data::load(&spec.schema, &cfg.data, &base).unwrap();
        let (train, _) = fedcare_data::split(&ds, &spec.schema.split).unwrap();
        (spec, train)
    }

    #[test]
    fn without_noise_the_statistics_release_is_the_exact_clamped_sums() {
        for site in ["switzerland", "cleveland"] {
            let (spec, train) = example(site);
            let mut plan = spec.privacy_plan().unwrap().unwrap();
            plan.stats = Some(fedcare_privacy::Charge::Gaussian { noise_multiplier: 0.0, count: 1 });
            let (sums, count) = stats_release(&train, &spec, &plan, &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
            assert_eq!(count, train.len() as u64, "{site}");
            // Against the exact sums of the clamped values, computed directly.
            let bounds = fedcare_job::privacy::encoded_bounds(&spec).unwrap();
            let w = train.n_features();
            for j in 0..w {
                let (lo, hi) = bounds[j];
                let exact: f64 = train.features().chunks_exact(w).map(|r| f64::from(r[j]).clamp(lo, hi)).sum();
                let tol = 1e-3 * (hi - lo) * train.len() as f64;
                assert!((sums.sum[j] - exact).abs() < tol, "{site} column {j}: {} vs {exact}", sums.sum[j]);
            }
        }
    }

    #[test]
    fn the_noised_count_is_unbiased() {
        // 200 releases of Switzerland's 30 rows at the example's noise: the mean count is 30
        // within 5 standard errors (std per release z_s sqrt(K^2 + 2w) / K).
        let (spec, train) = example("switzerland");
        let plan = spec.privacy_plan().unwrap().unwrap();
        let Some(fedcare_privacy::Charge::Gaussian { noise_multiplier: z, .. }) = plan.stats else { panic!() };
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let n = 200;
        let mut total = 0.0;
        for _ in 0..n {
            let (sums, _) = stats_release(&train, &spec, &plan, &mut rng).unwrap();
            total += sums.count[0] as f64;
        }
        let w = train.n_features() as f64;
        let sd = z * (COUNT_WEIGHT * COUNT_WEIGHT + 2.0 * w).sqrt() / COUNT_WEIGHT;
        let mean = total / n as f64;
        assert!((mean - 30.0).abs() < 5.0 * sd / (n as f64).sqrt() + 0.5, "mean count {mean}, sd {sd}");
    }

    #[test]
    fn f32_release_bytes_round_trip() {
        let v = vec![1.5f32, -0.0, f32::MIN_POSITIVE, 3.25e7];
        assert_eq!(f32s_from(&f32_bytes(&v)).unwrap(), v);
        assert!(f32s_from(&[0u8; 5]).is_err());
    }
}
