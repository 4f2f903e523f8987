//! The policy file (`[policy]` in a TOML the privacy officer owns) and the evaluation of a job
//! spec against it.
//!
//! Parsing refuses unknown keys and missing keys: every rule is a visible decision of the
//! officer, never a default they did not see. A value that parses but makes no sense (an
//! unknown model name, a negative epsilon, `"none"` among the privacy units) is refused with
//! the field and the line it is on.
//!
//! [`Policy::evaluate`] is a pure function of the policy and the job spec. It checks every
//! rule and reports every breach, so the officer (and the coordinator) learn all the reasons at
//! once, not one per attempt. Each [`Violation`] reads as a plain sentence that quotes only
//! the job's values and the policy's limits, never anything from the site's data, so it may be
//! sent to the coordinator as the reason for a refusal.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use fedcare_job::{JobSpec, PrivacyUnit};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// Why a policy file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read the policy file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML did not parse, or a key is unknown, missing or of the wrong type; the message
    /// carries the line and column.
    #[error("{source_name}: {message}")]
    Parse {
        source_name: String,
        message: String,
    },
    /// A field parsed but its value is not allowed.
    #[error("{source_name}, line {line}: field `{field}`: {message}")]
    Invalid {
        source_name: String,
        line: usize,
        field: String,
        message: String,
    },
}

/// What happens to a job that passes every rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// The job is approved at once.
    Automatic,
    /// The job waits until the site's admin approves its hash (`site-agent jobs approve`).
    Manual,
}

/// A site's policy: which jobs it may join. Built only by [`Policy::parse`] or
/// [`Policy::load`], so every `Policy` has passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    models: BTreeSet<String>,
    columns: BTreeSet<String>,
    require_differential_privacy: bool,
    allowed_units: Vec<PrivacyUnit>,
    max_epsilon_per_job: f64,
    max_delta: f64,
    require_secure_aggregation: bool,
    min_other_sites: u32,
    approval: Approval,
}

/// The file as written, with positions for error messages.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    policy: RawPolicy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    models: Spanned<Vec<Spanned<String>>>,
    columns: Spanned<Vec<Spanned<String>>>,
    require_differential_privacy: bool,
    allowed_units: Spanned<Vec<Spanned<PrivacyUnit>>>,
    max_epsilon_per_job: Spanned<f64>,
    max_delta: Spanned<f64>,
    require_secure_aggregation: bool,
    min_other_sites: u32,
    approval: Approval,
}

impl Policy {
    /// Parses and validates a policy. `source_name` (the file's path) appears in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Policy, PolicyError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| PolicyError::Parse {
            source_name: source_name.to_owned(),
            message: e.to_string(),
        })?;
        let p = raw.policy;
        let bad = |span: Range<usize>, field: &str, message: String| PolicyError::Invalid {
            source_name: source_name.to_owned(),
            line: line_of(text, span.start),
            field: format!("policy.{field}"),
            message,
        };

        let models = names(&p.models, "models", &bad, |name| {
            if fedcare_models::REGISTRY.contains(&name) {
                Ok(())
            } else {
                Err(format!(
                    "unknown model `{name}`; the models are {}",
                    fedcare_models::REGISTRY.join(", ")
                ))
            }
        })?;
        let columns = names(&p.columns, "columns", &bad, |name| {
            if name.trim().is_empty() {
                Err("a column name must not be empty".to_owned())
            } else {
                Ok(())
            }
        })?;

        if p.allowed_units.get_ref().is_empty() {
            return Err(bad(
                p.allowed_units.span(),
                "allowed_units",
                "must list at least one of \"record\", \"site\"".into(),
            ));
        }
        let mut allowed_units = Vec::new();
        for unit in p.allowed_units.get_ref() {
            let u = *unit.get_ref();
            if u == PrivacyUnit::None {
                return Err(bad(
                    unit.span(),
                    "allowed_units",
                    "\"none\" is not a differential-privacy unit; to allow jobs without differential privacy, set require_differential_privacy = false".into(),
                ));
            }
            if allowed_units.contains(&u) {
                return Err(bad(
                    unit.span(),
                    "allowed_units",
                    format!("\"{}\" is listed twice", unit_name(u)),
                ));
            }
            allowed_units.push(u);
        }

        let eps = *p.max_epsilon_per_job.get_ref();
        if !(eps.is_finite() && eps > 0.0) {
            return Err(bad(
                p.max_epsilon_per_job.span(),
                "max_epsilon_per_job",
                format!("must be a positive number, got {eps}"),
            ));
        }
        let delta = *p.max_delta.get_ref();
        if !(delta > 0.0 && delta < 1.0) {
            return Err(bad(
                p.max_delta.span(),
                "max_delta",
                format!("must be in (0, 1), got {delta}"),
            ));
        }

        Ok(Policy {
            models,
            columns,
            require_differential_privacy: p.require_differential_privacy,
            allowed_units,
            max_epsilon_per_job: eps,
            max_delta: delta,
            require_secure_aggregation: p.require_secure_aggregation,
            min_other_sites: p.min_other_sites,
            approval: p.approval,
        })
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::parse(&text, &path.display().to_string())
    }

    /// Model kinds this site trains (registry names, e.g. `logistic_regression`).
    pub fn models(&self) -> &BTreeSet<String> {
        &self.models
    }
    /// Schema column names (features and label) a job may use.
    pub fn columns(&self) -> &BTreeSet<String> {
        &self.columns
    }
    /// Whether a job without differential privacy (`unit = "none"`) is refused.
    pub fn require_differential_privacy(&self) -> bool {
        self.require_differential_privacy
    }
    /// Privacy units a differentially private job may use (never `None`).
    pub fn allowed_units(&self) -> &[PrivacyUnit] {
        &self.allowed_units
    }
    /// The most epsilon one job may spend (the ledger enforces the site's total).
    pub fn max_epsilon_per_job(&self) -> f64 {
        self.max_epsilon_per_job
    }
    /// The largest delta a job may use.
    pub fn max_delta(&self) -> f64 {
        self.max_delta
    }
    /// Whether a job without secure aggregation is refused.
    pub fn require_secure_aggregation(&self) -> bool {
        self.require_secure_aggregation
    }
    /// The fewest other sites that must be in any round this site's update is summed in.
    pub fn min_other_sites(&self) -> u32 {
        self.min_other_sites
    }
    /// What happens to a job that passes.
    pub fn approval(&self) -> Approval {
        self.approval
    }

    /// Checks a job against every rule and reports every breach.
    ///
    /// The rules:
    /// * the job's model kind is in `models`;
    /// * each feature name and the label name is in `columns`;
    /// * with `require_differential_privacy`, the job's unit is not `none`; a job with
    ///   differential privacy uses one of `allowed_units`, may spend at most
    ///   `max_epsilon_per_job` (its target epsilon, which bounds what its plan spends) and uses
    ///   a delta of at most `max_delta`. A job without differential privacy that the policy
    ///   allows has no epsilon to compare;
    /// * with `require_secure_aggregation`, the job has it enabled;
    /// * the fewest sites a round of the job may complete with (its `min_sites_per_round`,
    ///   which defaults to `min_sites`) leaves at least `min_other_sites` besides this one.
    ///   A round's quorum, not `min_sites`, is what bounds how many updates this site's is
    ///   summed with.
    pub fn evaluate(&self, spec: &JobSpec) -> Evaluation {
        let mut violations = Vec::new();

        let model = spec.model.name();
        if !self.models.contains(model) {
            violations.push(Violation::Model {
                model: model.to_owned(),
            });
        }

        for f in &spec.schema.features {
            if !self.columns.contains(&f.name) {
                violations.push(Violation::Column {
                    column: f.name.clone(),
                    role: ColumnRole::Feature,
                });
            }
        }
        let label = &spec.schema.label.name;
        if !self.columns.contains(label) {
            violations.push(Violation::Column {
                column: label.clone(),
                role: ColumnRole::Label,
            });
        }

        match spec.privacy.unit {
            PrivacyUnit::None => {
                if self.require_differential_privacy {
                    violations.push(Violation::DifferentialPrivacyRequired);
                }
            }
            unit => {
                if !self.allowed_units.contains(&unit) {
                    violations.push(Violation::Unit { unit });
                }
                match spec.privacy_plan() {
                    Ok(Some(plan)) => {
                        // The plan spends at most its target; the target is what the job asks for.
                        let epsilon = plan.target_epsilon.max(plan.planned_epsilon);
                        if epsilon.is_nan() || epsilon > self.max_epsilon_per_job {
                            violations.push(Violation::Epsilon {
                                job: epsilon,
                                max: self.max_epsilon_per_job,
                            });
                        }
                        if plan.delta.is_nan() || plan.delta > self.max_delta {
                            violations.push(Violation::Delta {
                                job: plan.delta,
                                max: self.max_delta,
                            });
                        }
                    }
                    Ok(None) => violations.push(Violation::PrivacyPlan {
                        reason: "the job has no privacy plan".into(),
                    }),
                    Err(e) => violations.push(Violation::PrivacyPlan {
                        reason: e.to_string(),
                    }),
                }
            }
        }

        if self.require_secure_aggregation && !spec.secure_aggregation.enabled {
            violations.push(Violation::SecureAggregationRequired);
        }

        let fewest_sites = spec.round_quorum().min(spec.min_sites);
        if fewest_sites.saturating_sub(1) < self.min_other_sites {
            violations.push(Violation::TooFewOtherSites {
                fewest_sites,
                required_others: self.min_other_sites,
            });
        }

        Evaluation {
            violations,
            approval: self.approval,
        }
    }
}

/// Validates a list of names: not empty, each passing `check`, none twice.
fn names(
    list: &Spanned<Vec<Spanned<String>>>,
    field: &str,
    bad: &dyn Fn(Range<usize>, &str, String) -> PolicyError,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<BTreeSet<String>, PolicyError> {
    if list.get_ref().is_empty() {
        return Err(bad(
            list.span(),
            field,
            "must list at least one name".into(),
        ));
    }
    let mut out = BTreeSet::new();
    for name in list.get_ref() {
        check(name.get_ref()).map_err(|m| bad(name.span(), field, m))?;
        if !out.insert(name.get_ref().clone()) {
            return Err(bad(
                name.span(),
                field,
                format!("`{}` is listed twice", name.get_ref()),
            ));
        }
    }
    Ok(out)
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The spec's name of a privacy unit.
pub(crate) fn unit_name(unit: PrivacyUnit) -> &'static str {
    match unit {
        PrivacyUnit::None => "none",
        PrivacyUnit::Record => "record",
        PrivacyUnit::Site => "site",
    }
}

/// A string from a job spec, safe to print on one line: control characters (a newline that
/// could forge a line of a summary or a log) are escaped.
pub(crate) fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a column is one of the job's features or its label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnRole {
    Feature,
    Label,
}

/// One rule of the policy that a job breaks. `Display` gives a sentence for the privacy
/// officer that quotes only the job's values and the policy's limits, so it is also safe to
/// send to the coordinator.
#[derive(Debug, Clone, PartialEq)]
pub enum Violation {
    /// The job's model kind is not among the policy's `models`.
    Model { model: String },
    /// The job uses a column (feature or label) not among the policy's `columns`.
    Column { column: String, role: ColumnRole },
    /// The job has no differential privacy and the policy requires it.
    DifferentialPrivacyRequired,
    /// The job's privacy unit is not among the policy's `allowed_units`.
    Unit { unit: PrivacyUnit },
    /// The job may spend more epsilon than `max_epsilon_per_job`.
    Epsilon { job: f64, max: f64 },
    /// The job's delta exceeds `max_delta`.
    Delta { job: f64, max: f64 },
    /// The job's privacy plan cannot be computed, so its spend cannot be checked.
    PrivacyPlan { reason: String },
    /// The job has secure aggregation off and the policy requires it.
    SecureAggregationRequired,
    /// A round of the job may complete with fewer other sites than `min_other_sites`.
    TooFewOtherSites {
        fewest_sites: u32,
        required_others: u32,
    },
}

impl Violation {
    /// A short, stable name of the rule, for logs, metrics and tests.
    pub fn category(&self) -> &'static str {
        match self {
            Violation::Model { .. } => "model",
            Violation::Column { .. } => "column",
            Violation::DifferentialPrivacyRequired => "differential_privacy",
            Violation::Unit { .. } => "privacy_unit",
            Violation::Epsilon { .. } => "epsilon",
            Violation::Delta { .. } => "delta",
            Violation::PrivacyPlan { .. } => "privacy_plan",
            Violation::SecureAggregationRequired => "secure_aggregation",
            Violation::TooFewOtherSites { .. } => "min_other_sites",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Model { model } => {
                write!(f, "the job trains model `{}`, which this site's policy does not allow", clean(model))
            }
            Violation::Column { column, role: ColumnRole::Feature } => {
                write!(f, "the job uses column `{}`, which this site's policy does not allow", clean(column))
            }
            Violation::Column { column, role: ColumnRole::Label } => {
                write!(f, "the job uses column `{}` as its label, which this site's policy does not allow", clean(column))
            }
            Violation::DifferentialPrivacyRequired => f.write_str(
                "the job has no differential privacy (privacy unit \"none\"), which this site's policy requires",
            ),
            Violation::Unit { unit } => write!(
                f,
                "the job protects privacy at the \"{}\" level, which this site's policy does not allow",
                unit_name(*unit)
            ),
            Violation::Epsilon { job, max } => write!(
                f,
                "the job may spend epsilon {job}, more than this site's policy allows for one job ({max})"
            ),
            Violation::Delta { job, max } => {
                write!(f, "the job's delta {job:e} is larger than this site's policy allows ({max:e})")
            }
            Violation::PrivacyPlan { reason } => {
                write!(f, "the job's privacy spend cannot be computed ({}), so this site cannot check it", clean(reason))
            }
            Violation::SecureAggregationRequired => {
                f.write_str("the job does not use secure aggregation, which this site's policy requires")
            }
            Violation::TooFewOtherSites { fewest_sites, required_others } => write!(
                f,
                "a round of the job may complete with {fewest_sites} site{}, that is {} besides this one, but this site's policy requires at least {required_others} other site{}",
                plural(u64::from(*fewest_sites)),
                fewest_sites.saturating_sub(1),
                plural(u64::from(*required_others)),
            ),
        }
    }
}

pub(crate) fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The outcome of [`Policy::evaluate`]: every rule the job breaks, and what the policy says
/// happens to a job that breaks none.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub violations: Vec<Violation>,
    pub approval: Approval,
}

/// What the site does with a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Decline, for these reasons (at least one).
    Refuse(Vec<Violation>),
    /// Join at once.
    Approve,
    /// Join only once the site's admin has approved the job's hash. An approval never
    /// overrides a refusal: the policy is evaluated at every offer.
    AwaitApproval,
}

impl Evaluation {
    /// Whether the job breaks no rule.
    pub fn passes(&self) -> bool {
        self.violations.is_empty()
    }

    /// Refuse if any rule is broken; otherwise what the policy's `approval` says.
    pub fn verdict(&self) -> Verdict {
        if !self.violations.is_empty() {
            return Verdict::Refuse(self.violations.clone());
        }
        match self.approval {
            Approval::Automatic => Verdict::Approve,
            Approval::Manual => Verdict::AwaitApproval,
        }
    }

    /// The reason to give the coordinator (and the log) for a refusal, `None` if the job
    /// passes: "this site's policy refuses the job: <every violation, separated by `; `>".
    pub fn refusal_reason(&self) -> Option<String> {
        if self.violations.is_empty() {
            return None;
        }
        let reasons: Vec<String> = self.violations.iter().map(ToString::to_string).collect();
        Some(format!(
            "this site's policy refuses the job: {}",
            reasons.join("; ")
        ))
    }
}
