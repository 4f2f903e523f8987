use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Names the registry knows, for error messages and job-spec validation.
pub const REGISTRY: &[&str] = &["logistic_regression", "mlp"];

/// Upper bounds on MLP size. Job specs come from outside; without a bound a typo such as
/// `hidden = [1000000]` would try to allocate gigabytes at every site.
pub const MAX_HIDDEN_LAYERS: usize = 8;
/// Largest allowed width of one hidden layer.
pub const MAX_WIDTH: usize = 4096;

/// Which model, from the job spec's `[model]` table:
///
/// ```toml
/// [model]
/// kind = "mlp"
/// hidden = [16, 8]
/// ```
///
/// Unknown kinds and unknown keys are rejected when parsing; sizes are checked by
/// [`ModelSpec::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    deny_unknown_fields,
    from = "RawSpec"
)]
pub enum ModelSpec {
    /// One `Linear(d, 1)` giving the logit.
    LogisticRegression,
    /// `Linear` layers of the given widths with ReLU between, then `Linear(last, 1)`.
    Mlp { hidden: Vec<usize> },
}

/// What the job spec is parsed into. serde ignores unknown keys next to the tag of a *unit*
/// variant even under `deny_unknown_fields`, so parsing goes through this copy whose
/// logistic-regression variant is an (empty) struct, where unknown keys are rejected.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RawSpec {
    LogisticRegression {},
    Mlp { hidden: Vec<usize> },
}

impl From<RawSpec> for ModelSpec {
    fn from(raw: RawSpec) -> Self {
        match raw {
            RawSpec::LogisticRegression {} => ModelSpec::LogisticRegression,
            RawSpec::Mlp { hidden } => ModelSpec::Mlp { hidden },
        }
    }
}

impl ModelSpec {
    /// The registry name (the `kind` in the job spec).
    pub fn name(&self) -> &'static str {
        match self {
            ModelSpec::LogisticRegression => "logistic_regression",
            ModelSpec::Mlp { .. } => "mlp",
        }
    }

    /// Builds a spec from a registry name; `hidden` is used only by `mlp`.
    /// Unknown names give [`ModelError::UnknownModel`] listing [`REGISTRY`].
    pub fn from_name(name: &str, hidden: &[usize]) -> Result<Self, ModelError> {
        let spec = match name {
            "logistic_regression" => ModelSpec::LogisticRegression,
            "mlp" => ModelSpec::Mlp {
                hidden: hidden.to_vec(),
            },
            other => {
                return Err(ModelError::UnknownModel {
                    name: other.to_string(),
                    known: REGISTRY,
                });
            }
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the spec can be built: an MLP needs 1..=[`MAX_HIDDEN_LAYERS`] hidden layers,
    /// each of width 1..=[`MAX_WIDTH`].
    pub fn validate(&self) -> Result<(), ModelError> {
        match self {
            ModelSpec::LogisticRegression => Ok(()),
            ModelSpec::Mlp { hidden } => {
                if hidden.is_empty() {
                    return Err(ModelError::InvalidSpec(
                        "mlp needs at least one hidden layer (use logistic_regression for none)"
                            .into(),
                    ));
                }
                if hidden.len() > MAX_HIDDEN_LAYERS {
                    return Err(ModelError::InvalidSpec(format!(
                        "mlp has {} hidden layers, at most {MAX_HIDDEN_LAYERS} allowed",
                        hidden.len()
                    )));
                }
                if let Some((i, w)) = hidden
                    .iter()
                    .enumerate()
                    .find(|(_, w)| **w == 0 || **w > MAX_WIDTH)
                {
                    return Err(ModelError::InvalidSpec(format!(
                        "mlp hidden layer {i} has width {w}, must be 1..={MAX_WIDTH}"
                    )));
                }
                Ok(())
            }
        }
    }

    /// Hidden widths (empty for logistic regression, which is an MLP without hidden layers).
    pub(crate) fn hidden(&self) -> &[usize] {
        match self {
            ModelSpec::LogisticRegression => &[],
            ModelSpec::Mlp { hidden } => hidden,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Job {
        model: ModelSpec,
    }

    #[test]
    fn parses_job_spec_tables() {
        let j: Job = toml::from_str("[model]\nkind = \"logistic_regression\"\n").unwrap();
        assert_eq!(j.model, ModelSpec::LogisticRegression);
        let j: Job = toml::from_str("[model]\nkind = \"mlp\"\nhidden = [16, 8]\n").unwrap();
        assert_eq!(
            j.model,
            ModelSpec::Mlp {
                hidden: vec![16, 8]
            }
        );
        assert_eq!(j.model.name(), "mlp");
        assert!(toml::from_str::<Job>("[model]\nkind = \"cnn\"\n").is_err());
        assert!(toml::from_str::<Job>("[model]\nkind = \"logistic_regression\"\nx = 1\n").is_err());
        assert!(toml::from_str::<Job>("[model]\nkind = \"mlp\"\n").is_err());
        assert!(toml::from_str::<Job>("[model]\nkind = \"mlp\"\nhidden = [2]\nx = 1\n").is_err());
        // Serialises back to the same table shape.
        let s = toml::to_string(&ModelSpec::Mlp {
            hidden: vec![16, 8],
        })
        .unwrap();
        assert_eq!(
            toml::from_str::<ModelSpec>(&s).unwrap(),
            ModelSpec::Mlp {
                hidden: vec![16, 8]
            }
        );
        let s = toml::to_string(&ModelSpec::LogisticRegression).unwrap();
        assert_eq!(s.trim(), "kind = \"logistic_regression\"");
        assert_eq!(
            toml::from_str::<ModelSpec>(&s).unwrap(),
            ModelSpec::LogisticRegression
        );
    }

    #[test]
    fn validate_and_registry() {
        assert_eq!(REGISTRY, &["logistic_regression", "mlp"]);
        assert!(ModelSpec::LogisticRegression.validate().is_ok());
        assert!(ModelSpec::Mlp { hidden: vec![4] }.validate().is_ok());
        assert!(ModelSpec::Mlp { hidden: vec![] }.validate().is_err());
        assert!(ModelSpec::Mlp { hidden: vec![4, 0] }.validate().is_err());
        assert!(
            ModelSpec::Mlp {
                hidden: vec![MAX_WIDTH + 1]
            }
            .validate()
            .is_err()
        );
        assert!(
            ModelSpec::Mlp {
                hidden: vec![2; MAX_HIDDEN_LAYERS + 1]
            }
            .validate()
            .is_err()
        );
        let e = ModelSpec::from_name("cnn", &[]).unwrap_err();
        assert_eq!(
            e,
            ModelError::UnknownModel {
                name: "cnn".into(),
                known: REGISTRY
            }
        );
        assert!(e.to_string().contains("logistic_regression, mlp"));
        assert_eq!(
            ModelSpec::from_name("mlp", &[3]).unwrap(),
            ModelSpec::Mlp { hidden: vec![3] }
        );
        for name in REGISTRY {
            assert_eq!(ModelSpec::from_name(name, &[2]).unwrap().name(), *name);
        }
    }
}
