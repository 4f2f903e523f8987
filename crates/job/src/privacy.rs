//! The job's privacy target (`[privacy]` in the spec) and the plan it implies.
//!
//! Every job states its privacy unit explicitly, even when it is `"none"`: a research lead
//! cannot forget the question. The plan ([`plan`]) turns the target into mechanism parameters
//! (the noise multiplier) and the list of [`Charge`]s the whole job will spend. It is a pure
//! function of the spec, so the coordinator (for its report) and every site (for its ledger,
//! which never trusts the coordinator's figures) compute the same numbers independently.

use std::collections::BTreeMap;

use fedcare_privacy::{Charge, DistributedNoise, PrivacyError, Unit, epsilon_of, smallest_noise_multiplier_for};
use serde::{Deserialize, Serialize};

use crate::JobSpec;

/// Whose privacy the job protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrivacyUnit {
    /// No differential privacy: only secure aggregation (if enabled) protects the updates.
    None,
    /// Each patient record: DP-SGD at every site, noised federated statistics.
    Record,
    /// Each whole site: its update is clipped and the sum is noised (DP-FedAvg).
    Site,
}

/// Who adds the noise for a site-level job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteMechanism {
    /// Each site adds a share of discrete Gaussian noise before secure aggregation masks its
    /// update (Kairouz, Liu, Steinke 2021): the coordinator never sees an un-noised sum.
    /// Also accepted as `distributed_discrete_gaussian`.
    #[serde(alias = "distributed_discrete_gaussian")]
    Distributed,
    /// As `distributed`, with Skellam noise shares (Agarwal, Kairouz, Liu 2021): the sum of
    /// the shares is exactly Skellam, and its accounting has no `tau` terms.
    DistributedSkellam,
    /// The coordinator adds Gaussian noise to the sum. Weaker: it trusts the coordinator.
    Central,
}

impl SiteMechanism {
    /// The integer noise each site adds, `None` for the central mechanism.
    pub fn noise(self) -> Option<DistributedNoise> {
        match self {
            SiteMechanism::Distributed => Some(DistributedNoise::DiscreteGaussian),
            SiteMechanism::DistributedSkellam => Some(DistributedNoise::Skellam),
            SiteMechanism::Central => None,
        }
    }
}

/// `[privacy]` of a job spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySpec {
    pub unit: PrivacyUnit,
    /// Site unit only: `distributed` (default; discrete Gaussian shares),
    /// `distributed_skellam` or `central`.
    #[serde(default)]
    pub mechanism: Option<SiteMechanism>,
    /// Epsilon for the whole job (all rounds and the statistics step), per site.
    #[serde(default)]
    pub target_epsilon: Option<f64>,
    #[serde(default)]
    pub delta: Option<f64>,
    /// L2 bound on one record's gradient (record unit) or one site's update (site unit).
    #[serde(default)]
    pub clip_norm: Option<f64>,
    /// Record unit: Poisson sampling rate of DP-SGD; each local epoch is `ceil(1/rate)` steps.
    #[serde(default)]
    pub sampling_rate: Option<f64>,
    /// Record unit: noise multiplier of the federated statistics (count, sums, sums of squares).
    /// Default: the smallest that spends at most 1/8 of `target_epsilon` on them alone.
    #[serde(default)]
    pub stats_noise_multiplier: Option<f64>,
    /// The range each numeric feature is clamped to before it enters a noised statistic
    /// (values outside are clamped, never dropped). Required for every numeric feature unless
    /// the unit is `none`; it bounds one record's influence, so it must not come from the data.
    #[serde(default)]
    pub feature_bounds: BTreeMap<String, [f64; 2]>,
}

impl PrivacySpec {
    /// No differential privacy (`unit = "none"`, nothing else set).
    pub fn none() -> PrivacySpec {
        PrivacySpec {
            unit: PrivacyUnit::None,
            mechanism: None,
            target_epsilon: None,
            delta: None,
            clip_norm: None,
            sampling_rate: None,
            stats_noise_multiplier: None,
            feature_bounds: BTreeMap::new(),
        }
    }
}

/// By default the statistics step may spend this fraction of the target epsilon on its own
/// (it then composes with the rounds in RDP, so its share of the total is smaller).
pub const DEFAULT_STATS_SHARE: f64 = 0.125;

/// What a job will spend, computed from the spec alone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrivacyPlan {
    pub unit: Unit,
    /// `"dp_sgd"`, `"distributed_discrete_gaussian"`, `"distributed_skellam"` or
    /// `"central_gaussian"`.
    pub mechanism: &'static str,
    pub target_epsilon: f64,
    pub delta: f64,
    pub clip_norm: f64,
    /// The calibrated noise multiplier of the training rounds.
    pub noise_multiplier: f64,
    /// Record unit: DP-SGD steps per round and the sampling rate.
    pub steps_per_round: u64,
    pub sampling_rate: f64,
    /// The statistics step's charge (record unit), `None` when the statistics are not
    /// data-dependent (site unit: scaling from the public feature bounds).
    pub stats: Option<Charge>,
    /// One round's charge. (Distributed site-level rounds are recomputed per round from the
    /// round's actual setup; this is the plan's value for `min_sites` participants.)
    pub per_round: Charge,
    pub rounds: u32,
    /// Epsilon of the whole plan (<= target).
    pub planned_epsilon: f64,
}

impl PrivacyPlan {
    /// Every charge of the whole job, in order.
    pub fn charges(&self) -> Vec<Charge> {
        let mut all: Vec<Charge> = self.stats.iter().cloned().collect();
        all.extend(std::iter::repeat_n(self.per_round.clone(), self.rounds as usize));
        all
    }

    /// A one-line human summary for reports and `site-agent jobs show`.
    pub fn summary(&self) -> String {
        format!(
            "{} level, {}: epsilon {:.3} planned (target {}), delta {:e}, clip {}, noise multiplier {:.4}",
            self.unit.as_str(),
            self.mechanism,
            self.planned_epsilon,
            self.target_epsilon,
            self.delta,
            self.clip_norm,
            self.noise_multiplier
        )
    }
}

/// DP-SGD steps per round for `local_epochs` passes at sampling rate `q` (the privacy crate's
/// [`fedcare_privacy::dpsgd::schedule`], which local training uses too); 0 if invalid.
pub fn dp_sgd_steps(local_epochs: usize, q: f64) -> u64 {
    fedcare_privacy::dpsgd::schedule(q, local_epochs).map_or(0, |s| s.steps)
}

/// Checks `[privacy]` against the rest of the spec; returns (field, message) on error.
pub(crate) fn validate(spec: &JobSpec) -> Result<(), (String, String)> {
    let p = &spec.privacy;
    let bad = |f: &str, m: String| Err((format!("privacy.{f}"), m));
    if p.unit == PrivacyUnit::None {
        let set = [
            ("mechanism", p.mechanism.is_some()),
            ("target_epsilon", p.target_epsilon.is_some()),
            ("delta", p.delta.is_some()),
            ("clip_norm", p.clip_norm.is_some()),
            ("sampling_rate", p.sampling_rate.is_some()),
            ("stats_noise_multiplier", p.stats_noise_multiplier.is_some()),
            ("feature_bounds", !p.feature_bounds.is_empty()),
        ];
        if let Some((f, _)) = set.iter().find(|(_, s)| *s) {
            return bad(f, "is only meaningful with unit = \"record\" or \"site\"".into());
        }
        return Ok(());
    }
    let Some(eps) = p.target_epsilon else { return bad("target_epsilon", "is required".into()) };
    if !(eps.is_finite() && eps > 0.0) {
        return bad("target_epsilon", format!("must be a positive number, got {eps}"));
    }
    let Some(delta) = p.delta else { return bad("delta", "is required".into()) };
    if !(delta > 0.0 && delta < 1.0) {
        return bad("delta", format!("must be in (0, 1), got {delta}"));
    }
    let Some(clip) = p.clip_norm else { return bad("clip_norm", "is required".into()) };
    if !(clip.is_finite() && clip > 0.0) {
        return bad("clip_norm", format!("must be a positive number, got {clip}"));
    }
    match p.unit {
        PrivacyUnit::Record => {
            if p.mechanism.is_some() {
                return bad("mechanism", "applies to unit = \"site\" only (record level is DP-SGD)".into());
            }
            let Some(q) = p.sampling_rate else { return bad("sampling_rate", "is required for unit = \"record\"".into()) };
            if !(q > 0.0 && q <= 1.0) {
                return bad("sampling_rate", format!("must be in (0, 1], got {q}"));
            }
            if let Some(z) = p.stats_noise_multiplier
                && !(z.is_finite() && z > 0.0) {
                    return bad("stats_noise_multiplier", format!("must be a positive number, got {z}"));
                }
        }
        PrivacyUnit::Site => {
            if p.sampling_rate.is_some() || p.stats_noise_multiplier.is_some() {
                return bad("sampling_rate", "sampling_rate and stats_noise_multiplier apply to unit = \"record\" only".into());
            }
            if p.mechanism.unwrap_or(SiteMechanism::Distributed).noise().is_some() && !spec.secure_aggregation.enabled {
                return bad("mechanism", "distributed noise needs secure aggregation; enable it or choose mechanism = \"central\"".into());
            }
        }
        PrivacyUnit::None => {}
    }
    let numeric: Vec<&str> = spec
        .schema
        .features
        .iter()
        .filter(|f| matches!(f.kind, fedcare_data::FeatureKind::Numeric))
        .map(|f| f.name.as_str())
        .collect();
    for name in p.feature_bounds.keys() {
        if !numeric.contains(&name.as_str()) {
            return bad("feature_bounds", format!("`{name}` is not a numeric feature of the schema"));
        }
    }
    for name in &numeric {
        match p.feature_bounds.get(*name) {
            None => return bad("feature_bounds", format!("numeric feature `{name}` needs a range, e.g. {name} = [0, 100]")),
            Some([lo, hi]) if !(lo.is_finite() && hi.is_finite() && lo < hi) => {
                return bad("feature_bounds", format!("`{name}` = [{lo}, {hi}] is not a range (need finite lo < hi)"));
            }
            Some(_) => {}
        }
    }
    plan(spec).map_err(|e| ("privacy".to_owned(), e.to_string()))?;
    Ok(())
}

/// One round's charge as a function of the noise multiplier being calibrated.
type PerRound = Box<dyn Fn(f64) -> Charge>;

/// The job's privacy plan; `None` for unit `none`. Deterministic: the same spec gives the
/// same plan everywhere.
pub fn plan(spec: &JobSpec) -> Result<Option<PrivacyPlan>, PrivacyError> {
    let p = &spec.privacy;
    if p.unit == PrivacyUnit::None {
        return Ok(None);
    }
    let (Some(target), Some(delta), Some(clip)) = (p.target_epsilon, p.delta, p.clip_norm) else {
        return Err(PrivacyError::InvalidEpsilon(f64::NAN));
    };
    let rounds = spec.rounds;
    let (unit, mechanism, stats, q, steps, per_round): (Unit, &'static str, Option<Charge>, f64, u64, PerRound) =
        match p.unit {
            PrivacyUnit::Record => {
                let q = p.sampling_rate.unwrap_or(1.0);
                let steps = dp_sgd_steps(spec.training.local_epochs, q);
                let zs = match p.stats_noise_multiplier {
                    Some(z) => z,
                    None => smallest_noise_multiplier_for(target * DEFAULT_STATS_SHARE, delta, |z| {
                        Ok(vec![Charge::Gaussian { noise_multiplier: z, count: 1 }])
                    })?,
                };
                let stats = Charge::Gaussian { noise_multiplier: zs, count: 1 };
                let f = move |z| Charge::SubsampledGaussian { noise_multiplier: z, sampling_rate: q, steps };
                (Unit::Record, "dp_sgd", Some(stats), q, steps, Box::new(f))
            }
            PrivacyUnit::Site => match p.mechanism.unwrap_or(SiteMechanism::Distributed) {
                SiteMechanism::Central => {
                    (Unit::Site, "central_gaussian", None, 1.0, 1, Box::new(|z| Charge::Gaussian { noise_multiplier: z, count: 1 }))
                }
                m @ (SiteMechanism::Distributed | SiteMechanism::DistributedSkellam) => {
                    let noise = m.noise().unwrap_or_default();
                    let model_len = fedcare_models::layout(&spec.model, spec.n_features()).len();
                    let (n_min, n_max) = (spec.round_quorum() as usize, spec.min_sites as usize);
                    let bits = spec.secure_aggregation.bits;
                    let f = move |z| {
                        ddg_charge(&ddg_calibration(noise, z, clip, n_min, n_max, bits, model_len))
                            .unwrap_or(Charge::Gaussian { noise_multiplier: 0.0, count: 1 })
                    };
                    (Unit::Site, noise.mechanism(), None, 1.0, 1, Box::new(f))
                }
            },
            PrivacyUnit::None => unreachable!("handled above"),
        };
    let charges = |z: f64| -> Result<Vec<Charge>, PrivacyError> {
        let mut all: Vec<Charge> = stats.iter().cloned().collect();
        let c = per_round(z);
        all.extend(std::iter::repeat_n(c, rounds as usize));
        Ok(all)
    };
    let z = smallest_noise_multiplier_for(target, delta, charges)?;
    let all = charges(z)?;
    let planned_epsilon = epsilon_of(&all, delta)?.0;
    Ok(Some(PrivacyPlan {
        unit,
        mechanism,
        target_epsilon: target,
        delta,
        clip_norm: clip,
        noise_multiplier: z,
        steps_per_round: steps,
        sampling_rate: q,
        stats,
        per_round: per_round(z),
        rounds,
        planned_epsilon,
    }))
}

/// The distributed mechanism's parameters for one round.
pub fn ddg_calibration(
    noise: DistributedNoise,
    z: f64,
    clip: f64,
    n_min: usize,
    n_max: usize,
    bits: u32,
    model_len: usize,
) -> fedcare_privacy::DdgCalibration {
    fedcare_privacy::DdgCalibration {
        noise,
        noise_multiplier: z,
        n_min,
        n_max: n_max.max(n_min),
        bits,
        dim: crate::masked_dim(model_len),
        l2_clip: clip,
        beta: fedcare_privacy::ddg::DEFAULT_BETA,
        k_stddevs: 4.0,
    }
}

/// One round's charge under the distributed mechanism calibrated by `cal` (the rotation seed
/// does not change the parameters, only the signs). From the (validated) parameters alone:
/// the calibration's bisection calls this many times, and building an encoder would build its
/// rotation and noise sampler each time.
pub fn ddg_charge(cal: &fedcare_privacy::DdgCalibration) -> Result<Charge, PrivacyError> {
    Ok(cal.params([0; 32])?.charge(cal.n_min))
}

/// The public range of every *encoded* column: a numeric feature's `feature_bounds`, `[0, 1]`
/// for each one-hot level. `None` for unit `none` (no bounds are declared).
pub fn encoded_bounds(spec: &JobSpec) -> Option<Vec<(f64, f64)>> {
    if spec.privacy.unit == PrivacyUnit::None {
        return None;
    }
    let mut out = Vec::with_capacity(spec.n_features());
    for f in &spec.schema.features {
        match &f.kind {
            fedcare_data::FeatureKind::Numeric => {
                let [lo, hi] = *spec.privacy.feature_bounds.get(&f.name)?;
                out.push((lo, hi));
            }
            fedcare_data::FeatureKind::Categorical { levels } => out.extend(std::iter::repeat_n((0.0, 1.0), levels.len())),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use crate::JobSpec;

    const EXAMPLE: &str = include_str!("../../../examples/heart-disease/job.toml");

    fn edited(from: &str, to: &str) -> Result<JobSpec, String> {
        let text = EXAMPLE.replacen(from, to, 1);
        assert_ne!(text, EXAMPLE, "{from} not in the example");
        JobSpec::from_toml(&text, "job.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn the_example_plans_record_level_dp_sgd_at_its_target() {
        let spec = JobSpec::from_toml(EXAMPLE, "job.toml").unwrap();
        let plan = spec.privacy_plan().unwrap().expect("the example asks for DP");
        assert_eq!(plan.mechanism, "dp_sgd");
        assert_eq!((plan.steps_per_round, plan.sampling_rate), (25, 0.04));
        assert!(plan.planned_epsilon <= 8.0 && plan.planned_epsilon > 7.99, "{}", plan.planned_epsilon);
        assert_eq!(plan.charges().len(), 1 + spec.rounds as usize);
        // The plan is a pure function of the spec: the site's and the coordinator's agree.
        assert_eq!(spec.privacy_plan().unwrap().unwrap(), plan);
        let bounds = super::encoded_bounds(&spec).unwrap();
        assert_eq!(bounds.len(), spec.n_features());
        assert_eq!(bounds[0], (18.0, 90.0));
    }

    #[test]
    fn bad_privacy_settings_name_their_field() {
        for (from, to, field) in [
            ("target_epsilon = 8.0", "target_epsilon = -1.0", "privacy.target_epsilon"),
            ("delta = 1e-5", "delta = 1.5", "privacy.delta"),
            ("sampling_rate = 0.04", "sampling_rate = 0.0", "privacy.sampling_rate"),
            ("clip_norm = 2.0", "clip_norm = 0.0", "privacy.clip_norm"),
            ("age = [18, 90]", "age = [90, 18]", "privacy.feature_bounds"),
            ("age = [18, 90]\n", "", "privacy.feature_bounds"),
            ("age = [18, 90]", "age = [18, 90]\nweight = [0, 300]", "privacy.feature_bounds"),
            ("unit = \"record\"", "unit = \"none\"", "privacy.target_epsilon"),
            ("unit = \"record\"", "unit = \"site\"", "privacy.sampling_rate"),
            // A target so small the statistics step alone exceeds it.
            ("target_epsilon = 8.0", "target_epsilon = 8.0\nstats_noise_multiplier = 0.5", "privacy"),
        ] {
            let err = edited(from, to).unwrap_err();
            assert!(err.contains(field), "{from} -> {to}: {err}");
        }
    }

    #[test]
    fn site_level_plans_and_needs_secure_aggregation_for_the_distributed_mechanism() {
        let site = "unit = \"site\"\nmechanism = \"distributed\"";
        let text = EXAMPLE
            .replacen("unit = \"record\"", site, 1)
            .replacen("sampling_rate = 0.04\n", "", 1)
            .replacen("target_epsilon = 8.0", "target_epsilon = 50.0", 1);
        let spec = JobSpec::from_toml(&text, "job.toml").unwrap();
        let plan = spec.privacy_plan().unwrap().unwrap();
        assert_eq!(plan.mechanism, "distributed_discrete_gaussian");
        assert!(plan.stats.is_none());
        assert!(plan.planned_epsilon <= 50.0 && plan.planned_epsilon > 49.9, "{}", plan.planned_epsilon);
        let off = text.replacen("enabled = true", "enabled = false", 1);
        let err = JobSpec::from_toml(&off, "job.toml").unwrap_err().to_string();
        assert!(err.contains("privacy.mechanism") && err.contains("secure aggregation"), "{err}");
        let central = off.replacen("mechanism = \"distributed\"", "mechanism = \"central\"", 1);
        let plan = JobSpec::from_toml(&central, "job.toml").unwrap().privacy_plan().unwrap().unwrap();
        assert_eq!(plan.mechanism, "central_gaussian");
        // Central: one Gaussian release per round, so the same z as 10 plain compositions.
        let (eps, _) = fedcare_privacy::epsilon_of(&[fedcare_privacy::Charge::Gaussian { noise_multiplier: plan.noise_multiplier, count: 10 }], 1e-5).unwrap();
        assert!((eps - plan.planned_epsilon).abs() < 1e-9);

        // Skellam shares: the same rules, its own charge; the long name of the default parses.
        let skellam = text.replacen("mechanism = \"distributed\"", "mechanism = \"distributed_skellam\"", 1);
        let plan = JobSpec::from_toml(&skellam, "job.toml").unwrap().privacy_plan().unwrap().unwrap();
        assert_eq!(plan.mechanism, "distributed_skellam");
        assert!(matches!(plan.per_round, fedcare_privacy::Charge::DistributedSkellam { .. }), "{:?}", plan.per_round);
        assert!(plan.planned_epsilon <= 50.0 && plan.planned_epsilon > 49.9, "{}", plan.planned_epsilon);
        let err = JobSpec::from_toml(&skellam.replacen("enabled = true", "enabled = false", 1), "job.toml").unwrap_err().to_string();
        assert!(err.contains("privacy.mechanism") && err.contains("secure aggregation"), "{err}");
        let long = text.replacen("mechanism = \"distributed\"", "mechanism = \"distributed_discrete_gaussian\"", 1);
        let plan = JobSpec::from_toml(&long, "job.toml").unwrap().privacy_plan().unwrap().unwrap();
        assert_eq!(plan.mechanism, "distributed_discrete_gaussian");
    }
}
