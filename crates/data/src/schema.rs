//! The job's data schema: the `[schema]` table of a job spec, identical at every site.
//!
//! The schema fixes the *encoded* layout (column order and one-hot expansion) that every site
//! produces, so that model parameters and [`crate::FeatureSums`] line up across sites without
//! any site revealing its records. [`Schema::digest`] lets sites and coordinator check that
//! they agree on it before any training round.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::DataError;

/// The job's data schema. See the crate docs for the TOML form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// Features in encoded order; the order is part of the model's contract.
    pub features: Vec<FeatureSpec>,
    pub label: LabelSpec,
    /// Required (no default) so that the seed is a visible decision of the job author.
    pub split: SplitSpec,
}

/// One input feature.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(into = "RawFeatureSpec")]
pub struct FeatureSpec {
    pub name: String,
    pub kind: FeatureKind,
}

/// How a feature is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureKind {
    /// One column holding the value as read.
    Numeric,
    /// One 0/1 column per level, in the order given. Levels are integers because
    /// clinical codes are; a value outside the levels is an error, never silently all-zero.
    Categorical { levels: Vec<i64> },
}

/// The TOML/serde shape of a feature: `{ name = "cp", kind = "categorical", levels = [1,2,3,4] }`.
/// A flat table reads better in a job spec than serde's nested enum form, and
/// `deny_unknown_fields` does not combine with `#[serde(flatten)]`, hence this shim.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeatureSpec {
    name: String,
    kind: RawKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    levels: Option<Vec<i64>>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawKind {
    Numeric,
    Categorical,
}

/// Hand-written so that a `kind`/`levels` mismatch is raised while toml is still inside the
/// feature's own table: its error then points at that table's line, not at the whole array
/// (which is what `#[serde(try_from)]` would give).
impl<'de> Deserialize<'de> for FeatureSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FeatureSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a feature table such as { name = \"age\", kind = \"numeric\" }")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<FeatureSpec, A::Error> {
                let raw =
                    RawFeatureSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                FeatureSpec::try_from(raw).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_map(V)
    }
}

impl TryFrom<RawFeatureSpec> for FeatureSpec {
    type Error = String;
    fn try_from(raw: RawFeatureSpec) -> Result<Self, String> {
        let kind = match (raw.kind, raw.levels) {
            (RawKind::Numeric, None) => FeatureKind::Numeric,
            (RawKind::Numeric, Some(_)) => {
                return Err(format!(
                    "feature `{}`: `levels` is only allowed with kind = \"categorical\"",
                    raw.name
                ));
            }
            (RawKind::Categorical, Some(levels)) => FeatureKind::Categorical { levels },
            (RawKind::Categorical, None) => {
                return Err(format!(
                    "feature `{}`: kind = \"categorical\" requires `levels`",
                    raw.name
                ));
            }
        };
        Ok(FeatureSpec {
            name: raw.name,
            kind,
        })
    }
}

impl From<FeatureSpec> for RawFeatureSpec {
    fn from(f: FeatureSpec) -> Self {
        match f.kind {
            FeatureKind::Numeric => RawFeatureSpec {
                name: f.name,
                kind: RawKind::Numeric,
                levels: None,
            },
            FeatureKind::Categorical { levels } => RawFeatureSpec {
                name: f.name,
                kind: RawKind::Categorical,
                levels: Some(levels),
            },
        }
    }
}

/// The binary label, derived from one source column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSpec {
    pub name: String,
    /// Rule turning the raw value into 1.0 (true) or 0.0 (false).
    pub positive_if: LabelRule,
    /// If set, raw label values must be one of these integers; anything else is an error.
    /// This catches a site mapping the wrong column (which would otherwise train silently).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<i64>>,
}

/// `{ greater_than = 0.0 }` or `{ equals = 1.0 }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LabelRule {
    GreaterThan(f64),
    Equals(f64),
}

impl LabelRule {
    /// Whether a raw label value counts as positive.
    pub fn is_positive(&self, v: f64) -> bool {
        match *self {
            LabelRule::GreaterThan(t) => v > t,
            LabelRule::Equals(t) => v == t,
        }
    }
}

/// How each site splits its own records into train and test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Test share in (0, 1); the test size is `ceil(test_fraction * n)` as in scikit-learn.
    pub test_fraction: f64,
    /// Seed of the ChaCha20 generator; same seed and data give the same split everywhere.
    pub seed: u64,
    /// Keep the class balance of each site in both parts (default true).
    #[serde(default = "default_true")]
    pub stratify: bool,
}

fn default_true() -> bool {
    true
}

impl Schema {
    /// Check the schema's internal consistency. Called by [`parse_schema`] and [`crate::load`],
    /// so that a broken job spec fails at every site the same way, before any data is read.
    pub fn validate(&self) -> Result<(), DataError> {
        let err = |field: String, message: String| Err(DataError::Schema { field, message });
        if self.features.is_empty() {
            return err(
                "schema.features".into(),
                "at least one feature is required".into(),
            );
        }
        let mut names = BTreeSet::new();
        for (i, f) in self.features.iter().enumerate() {
            let field = format!("schema.features[{i}]");
            if f.name.trim().is_empty() {
                return err(format!("{field}.name"), "must not be empty".into());
            }
            if !names.insert(f.name.as_str()) {
                return err(
                    format!("{field}.name"),
                    format!("duplicate feature name `{}`", f.name),
                );
            }
            if let FeatureKind::Categorical { levels } = &f.kind {
                if levels.is_empty() {
                    return err(
                        format!("{field}.levels"),
                        format!("feature `{}` has no levels", f.name),
                    );
                }
                let mut seen = BTreeSet::new();
                for l in levels {
                    if !seen.insert(*l) {
                        return err(
                            format!("{field}.levels"),
                            format!("feature `{}` lists level {l} twice", f.name),
                        );
                    }
                }
            }
        }
        if self.label.name.trim().is_empty() {
            return err("schema.label.name".into(), "must not be empty".into());
        }
        if names.contains(self.label.name.as_str()) {
            return err(
                "schema.label.name".into(),
                format!("label `{}` is also a feature name", self.label.name),
            );
        }
        let t = match self.label.positive_if {
            LabelRule::GreaterThan(t) | LabelRule::Equals(t) => t,
        };
        if !t.is_finite() {
            return err(
                "schema.label.positive_if".into(),
                format!("threshold {t} is not finite"),
            );
        }
        if let Some(allowed) = &self.label.allowed {
            if allowed.is_empty() {
                return err("schema.label.allowed".into(), "must not be empty".into());
            }
            let mut seen = BTreeSet::new();
            for a in allowed {
                if !seen.insert(*a) {
                    return err("schema.label.allowed".into(), format!("{a} listed twice"));
                }
            }
        }
        let encoded = self.encoded_names();
        let mut seen = BTreeSet::new();
        for e in &encoded {
            if !seen.insert(e.as_str()) {
                return err(
                    "schema.features".into(),
                    format!(
                        "encoded column name `{e}` occurs twice (a numeric feature named like a one-hot column?)"
                    ),
                );
            }
        }
        let f = self.split.test_fraction;
        if !(f.is_finite() && f > 0.0 && f < 1.0) {
            return err(
                "schema.split.test_fraction".into(),
                format!("{f} is not strictly between 0 and 1"),
            );
        }
        Ok(())
    }

    /// Number of encoded columns: 1 per numeric feature, one per level of a categorical one.
    pub fn encoded_width(&self) -> usize {
        self.features
            .iter()
            .map(|f| match &f.kind {
                FeatureKind::Numeric => 1,
                FeatureKind::Categorical { levels } => levels.len(),
            })
            .sum()
    }

    /// Names of the encoded columns, in order: `age`, `cp=1`, `cp=2`, ...
    pub fn encoded_names(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.encoded_width());
        for f in &self.features {
            match &f.kind {
                FeatureKind::Numeric => out.push(f.name.clone()),
                FeatureKind::Categorical { levels } => {
                    out.extend(levels.iter().map(|l| format!("{}={l}", f.name)))
                }
            }
        }
        out
    }

    /// Hex SHA-256 of a canonical serialisation.
    ///
    /// The canonical form is hand-written (length-prefixed strings, shortest round-trip floats)
    /// rather than TOML output, so that comments, key order, whitespace or a toml-crate upgrade
    /// never change the digest, while any change to names, order, levels, label rule or split does.
    pub fn digest(&self) -> String {
        fn s(out: &mut String, v: &str) {
            out.push_str(&format!("{}:{v};", v.len()));
        }
        let mut c = String::from("fedcare-schema-v1\n");
        for f in &self.features {
            c.push_str("feature ");
            s(&mut c, &f.name);
            match &f.kind {
                FeatureKind::Numeric => c.push_str("numeric"),
                FeatureKind::Categorical { levels } => {
                    c.push_str("categorical");
                    for l in levels {
                        c.push_str(&format!(" {l}"));
                    }
                }
            }
            c.push('\n');
        }
        c.push_str("label ");
        s(&mut c, &self.label.name);
        match self.label.positive_if {
            LabelRule::GreaterThan(t) => c.push_str(&format!("greater_than {t:?}")),
            LabelRule::Equals(t) => c.push_str(&format!("equals {t:?}")),
        }
        match &self.label.allowed {
            None => c.push_str(" allowed-any"),
            Some(a) => {
                c.push_str(" allowed");
                for v in a {
                    c.push_str(&format!(" {v}"));
                }
            }
        }
        c.push('\n');
        c.push_str(&format!(
            "split {:?} {} {}\n",
            self.split.test_fraction, self.split.seed, self.split.stratify
        ));
        hex::encode(Sha256::digest(c.as_bytes()))
    }
}

/// Parse and validate a schema from TOML text.
///
/// Accepts either a whole job spec containing a `[schema]` table (other top-level tables are
/// left to the job crate) or a document that is just the schema's body. `source_name` is used
/// in error messages; toml's own error text (with line and column) is kept verbatim.
pub fn parse_schema(toml_text: &str, source_name: &str) -> Result<Schema, DataError> {
    #[derive(Deserialize)]
    struct Wrapper {
        schema: Option<Schema>,
    }
    let schema = match toml::from_str::<Wrapper>(toml_text) {
        Ok(Wrapper { schema: Some(s) }) => s,
        Ok(Wrapper { schema: None }) => {
            toml::from_str::<Schema>(toml_text).map_err(|e| DataError::Toml {
                source_name: source_name.to_string(),
                message: format!("no [schema] table, and not a bare schema either: {e}"),
            })?
        }
        Err(e) => {
            return Err(DataError::Toml {
                source_name: source_name.to_string(),
                message: e.to_string(),
            });
        }
    };
    schema.validate()?;
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const HEART: &str = r#"
[schema]
features = [
  { name = "age", kind = "numeric" },
  { name = "cp", kind = "categorical", levels = [1, 2, 3, 4] },
]
label = { name = "disease", positive_if = { greater_than = 0.0 }, allowed = [0, 1, 2, 3, 4] }

[schema.split]
test_fraction = 0.34
seed = 42
"#;

    fn heart() -> Schema {
        parse_schema(HEART, "job.toml").expect("valid schema")
    }

    fn err_of(text: &str) -> String {
        parse_schema(text, "job.toml").unwrap_err().to_string()
    }

    #[test]
    fn parses_flat_feature_tables_and_defaults() {
        let s = heart();
        assert_eq!(s.features[0].kind, FeatureKind::Numeric);
        assert_eq!(
            s.features[1].kind,
            FeatureKind::Categorical {
                levels: vec![1, 2, 3, 4]
            }
        );
        assert_eq!(s.label.positive_if, LabelRule::GreaterThan(0.0));
        assert!(s.split.stratify, "stratify defaults to true");
        assert_eq!(s.encoded_width(), 5);
        assert_eq!(s.encoded_names(), ["age", "cp=1", "cp=2", "cp=3", "cp=4"]);
    }

    #[test]
    fn bare_schema_body_is_accepted() {
        let bare = HEART
            .replace("[schema]\n", "")
            .replace("[schema.split]", "[split]");
        assert_eq!(parse_schema(&bare, "x").unwrap(), heart());
    }

    #[test]
    fn round_trips_through_toml() {
        let s = heart();
        #[derive(Serialize)]
        struct W<'a> {
            schema: &'a Schema,
        }
        let text = toml::to_string(&W { schema: &s }).unwrap();
        assert_eq!(parse_schema(&text, "rt").unwrap(), s);
    }

    #[test]
    fn unknown_key_error_keeps_toml_line_and_column() {
        let text = HEART.replace("seed = 42", "seed = 42\nsed = 1");
        let e = err_of(&text);
        assert!(e.contains("job.toml"), "{e}");
        assert!(e.contains("line 12"), "{e}");
        assert!(e.contains("column 1"), "{e}");
        assert!(e.contains("sed"), "{e}");
    }

    #[test]
    fn unknown_key_inside_feature_is_rejected_with_position() {
        let text = HEART.replace(
            r#"{ name = "age", kind = "numeric" }"#,
            r#"{ name = "age", kind = "numeric", unit = "y" }"#,
        );
        let e = err_of(&text);
        assert!(e.contains("line 4"), "{e}");
        assert!(e.contains("unit"), "{e}");
    }

    #[test]
    fn levels_on_numeric_and_missing_levels_are_errors() {
        let e = err_of(&HEART.replace(
            r#"kind = "numeric" }"#,
            r#"kind = "numeric", levels = [1] }"#,
        ));
        assert!(e.contains("only allowed") && e.contains("line 4"), "{e}");
        let e = err_of(&HEART.replace(r#", levels = [1, 2, 3, 4]"#, ""));
        assert!(
            e.contains("requires `levels`") && e.contains("line 5"),
            "{e}"
        );
    }

    #[test]
    fn unknown_label_rule_is_an_error() {
        let e = err_of(&HEART.replace("greater_than", "bigger_than"));
        assert!(e.contains("bigger_than") && e.contains("line 7"), "{e}");
    }

    #[test]
    fn validate_names_the_field() {
        let mut s = heart();
        s.features[1].name = "age".into();
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.contains("schema.features[1].name") && e.contains("duplicate"),
            "{e}"
        );

        let mut s = heart();
        s.features[1].kind = FeatureKind::Categorical { levels: vec![] };
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("schema.features[1].levels"), "{e}");

        let mut s = heart();
        s.features[1].kind = FeatureKind::Categorical { levels: vec![1, 1] };
        assert!(s.validate().unwrap_err().to_string().contains("twice"));

        for bad in [0.0, 1.0, -0.1, 1.5, f64::NAN] {
            let mut s = heart();
            s.split.test_fraction = bad;
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains("schema.split.test_fraction"), "{e}");
        }

        let mut s = heart();
        s.label.name = "age".into();
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("schema.label.name")
        );

        let mut s = heart();
        s.label.allowed = Some(vec![]);
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("schema.label.allowed")
        );

        let mut s = heart();
        s.features.clear();
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("schema.features")
        );

        let mut s = heart();
        s.features.push(FeatureSpec {
            name: "cp=2".into(),
            kind: FeatureKind::Numeric,
        });
        assert!(s.validate().unwrap_err().to_string().contains("cp=2"));

        let mut s = heart();
        s.label.positive_if = LabelRule::Equals(f64::INFINITY);
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("positive_if")
        );
    }

    #[test]
    fn digest_ignores_formatting_but_not_content() {
        let s = heart();
        let reformatted = HEART.replace("seed = 42", "# a comment\nseed    =   42");
        assert_eq!(
            parse_schema(&reformatted, "x").unwrap().digest(),
            s.digest()
        );
        assert_eq!(s.digest().len(), 64);

        let mut t = s.clone();
        t.split.seed = 43;
        assert_ne!(t.digest(), s.digest());
        let mut t = s.clone();
        t.features.swap(0, 1);
        assert_ne!(t.digest(), s.digest());
        let mut t = s.clone();
        t.label.positive_if = LabelRule::Equals(0.0);
        assert_ne!(t.digest(), s.digest());
        let mut t = s.clone();
        t.label.allowed = None;
        assert_ne!(t.digest(), s.digest());
        // Length prefixes keep names from bleeding into each other.
        let mut a = s.clone();
        a.features[0].name = "ag".into();
        a.label.name = "edisease".into();
        assert_ne!(a.digest(), s.digest());
    }

    #[test]
    fn label_rules() {
        assert!(LabelRule::GreaterThan(0.0).is_positive(1.0));
        assert!(!LabelRule::GreaterThan(0.0).is_positive(0.0));
        assert!(LabelRule::Equals(1.0).is_positive(1.0));
        assert!(!LabelRule::Equals(1.0).is_positive(2.0));
    }
}
