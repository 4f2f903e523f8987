//! The job spec: what a research lead asks the federation to do, and the hash that names it.
//!
//! A job spec is a TOML file (see `examples/heart-disease/job.toml`): the model from the
//! registry, the data schema every site must map, rounds, minimum sites, local training
//! settings and a seed. Parsing refuses unknown keys and names the field (with line and column)
//! of any error, so a typo never silently falls back to a default.
//!
//! The job's identity is [`JobId`]: the SHA-256 of the spec's canonical JSON form, so two
//! texts that differ only in comments, key order or whitespace name the same job, and any
//! change to a setting names a different one. Sites recompute it from the text they receive and
//! refuse a task whose id does not match.
//!
//! This crate does no I/O beyond what its caller hands it.

use std::fmt;

pub mod privacy;
pub use privacy::{PrivacyPlan, PrivacySpec, PrivacyUnit, SiteMechanism};

use fedcare_data::Schema;
use fedcare_models::{ModelSpec, OptimizerKind, TrainConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Everything that can be wrong with a job spec, each naming the field or position.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The TOML did not parse or had an unknown or missing key; the message carries line and column.
    #[error("{source_name}: {message}")]
    Parse { source_name: String, message: String },
    /// A field parsed but its value is not allowed.
    #[error("{source_name}: field `{field}`: {message}")]
    Invalid { source_name: String, field: String, message: String },
}

/// The hex SHA-256 of a job spec's canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(String);

impl JobId {
    /// Accepts only a 64-character lowercase hex string, the form [`JobSpec::id`] produces.
    pub fn parse(s: &str) -> Option<JobId> {
        let ok = s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| JobId(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The first 12 hex digits, for progress lines and logs.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Local training settings, identical at every site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    /// Passes over the local training split per round.
    pub local_epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    pub learning_rate: f64,
}

/// Deadlines for each round stage; a site that misses one is dropped from that stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deadlines {
    /// Seconds a site has to answer a job offer.
    #[serde(default = "default_offer_secs")]
    pub offer_secs: u64,
    /// Seconds a site has for one stage (statistics, training, evaluation).
    #[serde(default = "default_stage_secs")]
    pub stage_secs: u64,
}

fn default_offer_secs() -> u64 {
    60
}
fn default_stage_secs() -> u64 {
    600
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines { offer_secs: default_offer_secs(), stage_secs: default_stage_secs() }
    }
}

/// Secure aggregation (SecAgg+) settings. On by default: the coordinator then learns only the
/// sum of a round's surviving sites' updates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureAggregationSpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Ring Z_{2^bits} of the masked sum.
    #[serde(default = "default_bits")]
    pub bits: u32,
    /// Bound on each coordinate of a site's weighted update (its delta times its share of the
    /// job's examples); larger values are clipped before quantisation.
    #[serde(default = "default_clip")]
    pub clip: f32,
    /// Fraction of a round's sites that may drop out while the sum stays exact.
    #[serde(default = "default_dropout")]
    pub dropout_fraction: f64,
    /// Fraction of sites assumed to collude with the coordinator.
    #[serde(default)]
    pub corruption_fraction: f64,
}

fn default_true() -> bool {
    true
}
fn default_bits() -> u32 {
    32
}
fn default_clip() -> f32 {
    4.0
}
fn default_dropout() -> f64 {
    0.25
}

impl Default for SecureAggregationSpec {
    fn default() -> Self {
        SecureAggregationSpec {
            enabled: true,
            bits: default_bits(),
            clip: default_clip(),
            dropout_fraction: default_dropout(),
            corruption_fraction: 0.0,
        }
    }
}

/// Most rounds a job may ask for. Bounds the work of planning its privacy (linear in rounds)
/// on the coordinator and on every site that receives the offer.
pub const MAX_ROUNDS: u32 = 10_000;
/// Most sites a job may require (a cross-silo federation is 2 to a few hundred).
pub const MAX_SITES: u32 = 10_000;

/// A federated job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A human name; the id is the hash, not this.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seeds the model's initialisation and each site's local shuffling.
    pub seed: u64,
    /// Training rounds (each: local training at every site, FedAvg, federated evaluation).
    pub rounds: u32,
    /// Sites that must accept the job before it starts.
    pub min_sites: u32,
    /// Valid updates a round needs to complete; defaults to `min_sites`. A site whose update is
    /// refused (wrong length, NaN) or who drops out leaves the round, which still completes if
    /// at least this many remain.
    #[serde(default)]
    pub min_sites_per_round: Option<u32>,
    pub model: ModelSpec,
    pub training: TrainingSpec,
    #[serde(default)]
    pub deadlines: Deadlines,
    #[serde(default)]
    pub secure_aggregation: SecureAggregationSpec,
    /// Required: every job states whose privacy it protects (`unit = "none"` included).
    pub privacy: PrivacySpec,
    pub schema: Schema,
}

impl JobSpec {
    /// Parses and validates a spec. `source_name` (a path, or "<submitted>") appears in errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<JobSpec, JobError> {
        let spec: JobSpec = toml::from_str(text).map_err(|e| JobError::Parse {
            source_name: source_name.to_owned(),
            message: e.to_string(),
        })?;
        spec.validate(source_name)?;
        Ok(spec)
    }

    /// Checks values the types cannot: ranges, the model registry, the schema.
    pub fn validate(&self, source_name: &str) -> Result<(), JobError> {
        let bad = |field: &str, message: String| JobError::Invalid {
            source_name: source_name.to_owned(),
            field: field.to_owned(),
            message,
        };
        if self.name.trim().is_empty() {
            return Err(bad("name", "must not be empty".into()));
        }
        if !(1..=MAX_ROUNDS).contains(&self.rounds) {
            return Err(bad("rounds", format!("must be between 1 and {MAX_ROUNDS}, got {}", self.rounds)));
        }
        if !(1..=MAX_SITES).contains(&self.min_sites) {
            return Err(bad("min_sites", format!("must be between 1 and {MAX_SITES}, got {}", self.min_sites)));
        }
        if let Some(m) = self.min_sites_per_round
            && (m == 0 || m > self.min_sites) {
                return Err(bad(
                    "min_sites_per_round",
                    format!("must be between 1 and min_sites ({}), got {m}", self.min_sites),
                ));
            }
        if self.training.local_epochs == 0 {
            return Err(bad("training.local_epochs", "must be at least 1".into()));
        }
        if self.training.batch_size == 0 {
            return Err(bad("training.batch_size", "must be at least 1".into()));
        }
        let lr = self.training.learning_rate;
        if !(lr.is_finite() && lr > 0.0) {
            return Err(bad("training.learning_rate", format!("must be a positive number, got {lr}")));
        }
        if self.deadlines.offer_secs == 0 || self.deadlines.stage_secs == 0 {
            return Err(bad("deadlines", "deadlines must be at least one second".into()));
        }
        let sa = &self.secure_aggregation;
        if !(8..=64).contains(&sa.bits) {
            return Err(bad("secure_aggregation.bits", format!("must be between 8 and 64, got {}", sa.bits)));
        }
        if !(sa.clip.is_finite() && sa.clip > 0.0) {
            return Err(bad("secure_aggregation.clip", format!("must be a positive number, got {}", sa.clip)));
        }
        for (field, f) in [("secure_aggregation.dropout_fraction", sa.dropout_fraction), ("secure_aggregation.corruption_fraction", sa.corruption_fraction)] {
            if !(f.is_finite() && (0.0..0.5).contains(&f)) {
                return Err(bad(field, format!("must be in [0, 0.5), got {f}")));
            }
        }
        self.model.validate().map_err(|e| bad("model", e.to_string()))?;
        self.schema.validate().map_err(|e| bad("schema", e.to_string()))?;
        privacy::validate(self).map_err(|(field, message)| bad(&field, message))?;
        Ok(())
    }

    /// The job's identity: SHA-256 over the canonical JSON of the parsed spec.
    pub fn id(&self) -> JobId {
        // Serialising a plain struct of owned data to JSON cannot fail: every field is a
        // string, number, bool, sequence or map with string keys.
        let canonical = serde_json::to_vec(self).expect("a JobSpec always serialises to JSON");
        JobId(hex::encode(Sha256::digest(&canonical)))
    }

    /// Valid updates a round needs.
    pub fn round_quorum(&self) -> u32 {
        self.min_sites_per_round.unwrap_or(self.min_sites)
    }

    /// Width of the encoded feature vector the model sees.
    pub fn n_features(&self) -> usize {
        self.schema.encoded_width()
    }

    /// Local training settings for one site in one round. The seed mixes the job seed, round and
    /// site so sites shuffle differently but reproducibly.
    pub fn train_config(&self, round: u32, site_salt: u64) -> TrainConfig {
        let seed = self
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(u64::from(round).wrapping_mul(0xBF58_476D_1CE4_E5B9))
            .wrapping_add(site_salt);
        TrainConfig {
            local_epochs: self.training.local_epochs,
            batch_size: self.training.batch_size,
            optimizer: self.training.optimizer,
            learning_rate: self.training.learning_rate,
            seed,
        }
    }
}

/// Length of the vector a site masks in a secure round: the model's parameters, then one
/// coordinate for the training loss.
pub fn masked_dim(model_len: usize) -> usize {
    model_len + 1
}

/// The job's privacy plan (see [`privacy::plan`]).
impl JobSpec {
    pub fn privacy_plan(&self) -> Result<Option<PrivacyPlan>, fedcare_privacy::PrivacyError> {
        privacy::plan(self)
    }
}

/// A stable 64-bit salt from a site's name, for [`JobSpec::train_config`].
pub fn site_salt(site: &str) -> u64 {
    let d = Sha256::digest(site.as_bytes());
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/heart-disease/job.toml");

    #[test]
    fn example_parses_and_has_stable_id() {
        let spec = JobSpec::from_toml(EXAMPLE, "job.toml").unwrap();
        assert_eq!(spec.min_sites, 4);
        assert_eq!(spec.n_features(), 15);
        let id = spec.id();
        assert_eq!(id.as_str().len(), 64);
        assert_eq!(JobId::parse(id.as_str()), Some(id.clone()));
        // Comments and whitespace do not change the id; a setting does.
        let reformatted = format!("# a comment\n\n{EXAMPLE}");
        assert_eq!(JobSpec::from_toml(&reformatted, "x").unwrap().id(), id);
        let changed = EXAMPLE.replacen("seed = 42", "seed = 43", 1);
        assert_ne!(changed, EXAMPLE, "the example must set seed = 42 for this test");
        assert_ne!(JobSpec::from_toml(&changed, "x").unwrap().id(), id);
    }

    #[test]
    fn unknown_key_is_refused_with_position() {
        let text = EXAMPLE.replacen("rounds =", "roundz = 3\nrounds =", 1);
        let err = JobSpec::from_toml(&text, "job.toml").unwrap_err().to_string();
        assert!(err.contains("job.toml"), "{err}");
        assert!(err.contains("roundz"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn unknown_model_is_refused() {
        let text = EXAMPLE.replacen("kind = \"logistic_regression\"", "kind = \"transformer\"", 1);
        assert_ne!(text, EXAMPLE);
        let err = JobSpec::from_toml(&text, "job.toml").unwrap_err().to_string();
        assert!(err.contains("transformer"), "{err}");
    }

    #[test]
    fn bad_values_name_their_field() {
        for (from, to, field) in [
            ("rounds = ", "rounds = 0 #", "rounds"),
            ("learning_rate = ", "learning_rate = -1.0 #", "training.learning_rate"),
            ("batch_size = ", "batch_size = 0 #", "training.batch_size"),
        ] {
            let text = EXAMPLE.replacen(from, to, 1);
            assert_ne!(text, EXAMPLE);
            let err = JobSpec::from_toml(&text, "job.toml").unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn job_id_parse_refuses_non_hex() {
        assert!(JobId::parse("abc").is_none());
        assert!(JobId::parse(&"G".repeat(64)).is_none());
        assert!(JobId::parse(&"A".repeat(64)).is_none());
    }
}
