//! A site's mapping of its own CSV onto the job schema: the `[data]` table of a site config.
//!
//! Each hospital keeps its own column names and file layout; this small table is the only
//! thing a site has to write to take part in a job. It stays at the site (it names local paths).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// What to do with a row that has a missing value in a column the schema uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingPolicy {
    /// Drop the row and count it in [`crate::LoadReport::rows_dropped_missing`] (complete-case
    /// analysis, as in the FLamby Fed-Heart-Disease preparation).
    #[default]
    DropRow,
    /// Refuse the file, naming the line and column, for sites that must not have gaps.
    Fail,
}

/// The `[data]` table of a site's config TOML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteDataConfig {
    /// CSV file; relative paths are resolved against the base dir given to [`crate::load`]
    /// (normally the directory of the site config), so configs can be moved with their data.
    pub path: PathBuf,
    /// Whether the first line names the columns (default false).
    #[serde(default)]
    pub has_header: bool,
    /// Column names when there is no header; required then, forbidden with a header
    /// (two sources of names would be ambiguous).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Field delimiter, one ASCII character (default `,`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<char>,
    /// Cell texts (after trimming) that mean "missing" (default `["?", ""]`). A pandas export
    /// writing `NaN` for gaps needs `"NaN"` here; otherwise NaN is refused as non-finite.
    #[serde(default = "default_missing")]
    pub missing: Vec<String>,
    #[serde(default)]
    pub missing_policy: MissingPolicy,
    /// Schema feature/label name -> source column name. Unmapped names are looked up under
    /// their own name. Keys must be schema names, so a typo is an error, not a silent fallback.
    #[serde(default)]
    pub map: BTreeMap<String, String>,
    /// Source columns in which 0 means "not measured" (e.g. a registry writing 0 for absent
    /// cholesterol). Such zeros are treated exactly like the `missing` tokens.
    #[serde(default)]
    pub zero_is_missing: Vec<String>,
}

fn default_missing() -> Vec<String> {
    vec!["?".to_string(), String::new()]
}

impl SiteDataConfig {
    /// A config with every optional field at its default (no header, `,`, `["?", ""]`, drop_row).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SiteDataConfig {
            path: path.into(),
            has_header: false,
            columns: None,
            delimiter: None,
            missing: default_missing(),
            missing_policy: MissingPolicy::DropRow,
            map: BTreeMap::new(),
            zero_is_missing: Vec::new(),
        }
    }

    /// The delimiter as the byte the CSV reader needs.
    pub fn delimiter_byte(&self) -> u8 {
        // validate() guarantees ASCII; fall back to ',' rather than panic if it was skipped.
        self.delimiter
            .filter(|c| c.is_ascii())
            .map_or(b',', |c| c as u8)
    }

    /// Checks that need no schema and no file. `source_name` names the config in messages.
    pub fn validate(&self, source_name: &str) -> Result<(), DataError> {
        let err = |field: &str, message: String| {
            Err(DataError::Config {
                source_name: source_name.to_string(),
                field: field.to_string(),
                message,
            })
        };
        if self.path.as_os_str().is_empty() {
            return err("data.path", "must not be empty".into());
        }
        if let Some(d) = self.delimiter
            && (!d.is_ascii() || d == '"' || d == '\n' || d == '\r')
        {
            return err(
                "data.delimiter",
                format!(
                    "{d:?} cannot be used: it must be one ASCII character other than a quote or newline"
                ),
            );
        }
        match (&self.columns, self.has_header) {
            (Some(_), true) => {
                return err(
                    "data.columns",
                    "must not be set when has_header = true (the header names the columns)".into(),
                );
            }
            (None, false) => {
                return err(
                    "data.columns",
                    "required when has_header = false: the file has no names to map onto the schema"
                        .into(),
                );
            }
            (Some(cols), false) => {
                if cols.is_empty() {
                    return err("data.columns", "must not be empty".into());
                }
                if let Some(c) = cols.iter().find(|c| c.trim().is_empty()) {
                    return err("data.columns", format!("contains an empty name {c:?}"));
                }
            }
            (None, true) => {}
        }
        for (k, v) in &self.map {
            if v.trim().is_empty() {
                return err(
                    &format!("data.map.{k}"),
                    "source column name is empty".into(),
                );
            }
        }
        Ok(())
    }
}

/// Parse (and check) the `[data]` table of a site config.
///
/// Accepts the site agent's whole config text, reading only its `[data]` table (the other
/// tables belong to the agent and are ignored here), or a document that is just the body of
/// `[data]`. Unknown keys inside `[data]` are errors; toml's message with line/column is kept.
pub fn parse_site_data_config(
    toml_text: &str,
    source_name: &str,
) -> Result<SiteDataConfig, DataError> {
    #[derive(Deserialize)]
    struct Wrapper {
        data: Option<SiteDataConfig>,
    }
    let cfg = match toml::from_str::<Wrapper>(toml_text) {
        Ok(Wrapper { data: Some(c) }) => c,
        Ok(Wrapper { data: None }) => {
            toml::from_str::<SiteDataConfig>(toml_text).map_err(|e| DataError::Toml {
                source_name: source_name.to_string(),
                message: format!("no [data] table, and not a bare [data] body either: {e}"),
            })?
        }
        Err(e) => {
            return Err(DataError::Toml {
                source_name: source_name.to_string(),
                message: e.to_string(),
            });
        }
    };
    cfg.validate(source_name)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: &str = r#"
[site]
name = "cleveland"

[data]
path = "data/processed.cleveland.data"
columns = ["age", "cp", "num"]
missing = ["?"]
map = { disease = "num" }
"#;

    #[test]
    fn parses_data_table_of_a_larger_config_with_defaults() {
        let c = parse_site_data_config(SITE, "site.toml").unwrap();
        assert_eq!(c.path, PathBuf::from("data/processed.cleveland.data"));
        assert!(!c.has_header);
        assert_eq!(c.delimiter_byte(), b',');
        assert_eq!(c.missing, ["?"]);
        assert_eq!(c.missing_policy, MissingPolicy::DropRow);
        assert_eq!(c.map["disease"], "num");
        assert!(c.zero_is_missing.is_empty());
    }

    #[test]
    fn default_missing_tokens() {
        let c = parse_site_data_config("path = \"x.csv\"\nhas_header = true\n", "s").unwrap();
        assert_eq!(c.missing, ["?", ""]);
        assert_eq!(c, {
            let mut n = SiteDataConfig::new("x.csv");
            n.has_header = true;
            n
        });
    }

    #[test]
    fn unknown_key_in_data_names_line_and_column() {
        let text = SITE.replace(
            "missing = [\"?\"]",
            "missing = [\"?\"]\nmising_policy = \"fail\"",
        );
        let e = parse_site_data_config(&text, "site.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("site.toml"), "{e}");
        assert!(e.contains("line 9") && e.contains("column 1"), "{e}");
        assert!(e.contains("mising_policy"), "{e}");
    }

    #[test]
    fn bad_policy_value_names_position() {
        let text = SITE.replace("missing = [\"?\"]", "missing_policy = \"skip\"");
        let e = parse_site_data_config(&text, "site.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 8") && e.contains("skip"), "{e}");
    }

    #[test]
    fn validate_errors_name_the_field() {
        let cases = [
            ("delimiter = \"é\"\n", "data.delimiter"),
            ("delimiter = '\"'\n", "data.delimiter"),
            ("has_header = true\n", "data.columns"),
            ("map = { disease = \"\" }\n", "data.map.disease"),
        ];
        for (extra, field) in cases {
            let text = format!("path = \"a.csv\"\ncolumns = [\"a\"]\n{extra}");
            let e = parse_site_data_config(&text, "s.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(field) && e.contains("s.toml"), "{extra}: {e}");
        }
        let e = parse_site_data_config("path = \"a.csv\"\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.columns") && e.contains("required"), "{e}");
        let e = parse_site_data_config("path = \"a.csv\"\ncolumns = []\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.columns"), "{e}");
    }

    #[test]
    fn two_char_delimiter_is_a_toml_error_with_position() {
        let e = parse_site_data_config(
            "path = \"a.csv\"\ncolumns = [\"a\"]\ndelimiter = \";;\"\n",
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 3"), "{e}");
    }
}
