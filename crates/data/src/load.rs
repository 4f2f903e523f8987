//! Reading a site's CSV and encoding it onto the schema.
//!
//! The loader is strict on purpose: a value it cannot interpret is an error naming file, line
//! and column, never a silent zero, because a silently mis-encoded site poisons the federated
//! model and nobody outside the site can look at the rows to find out why.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{MissingPolicy, SiteDataConfig};
use crate::dataset::Dataset;
use crate::error::{CellLocation, DataError};
use crate::schema::{FeatureKind, Schema};

/// Row counts of one load; aggregate numbers only, safe to log or report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LoadReport {
    /// Data rows in the file (header excluded).
    pub rows_read: usize,
    /// Rows dropped because a used column was missing (policy `drop_row`).
    pub rows_dropped_missing: usize,
    /// Rows in the returned dataset.
    pub rows_kept: usize,
}

/// Load a site's file. A relative `cfg.path` is resolved against `base_dir` (the directory of
/// the site config, typically). Error messages name the resolved path.
pub fn load(
    schema: &Schema,
    cfg: &SiteDataConfig,
    base_dir: &Path,
) -> Result<(Dataset, LoadReport), DataError> {
    let path = if cfg.path.is_absolute() {
        cfg.path.clone()
    } else {
        base_dir.join(&cfg.path)
    };
    let file = File::open(&path).map_err(|source| DataError::Io {
        path: path.clone(),
        source,
    })?;
    load_from_reader(
        schema,
        cfg,
        BufReader::new(file),
        &path.display().to_string(),
    )
}

/// What a used column is for.
enum Role<'a> {
    Feature(&'a FeatureKind, &'a str),
    Label,
}

struct UsedColumn<'a> {
    /// 0-based index in the file's rows.
    index: usize,
    role: Role<'a>,
    zero_is_missing: bool,
}

/// A cell's integer value if it is integral and in range (levels and labels are integer codes;
/// `1.0` in one site's file and `1` in another's must mean the same level).
fn as_integer(v: f64) -> Option<i64> {
    if v.fract() == 0.0 && (-9.0e15..=9.0e15).contains(&v) {
        Some(v as i64)
    } else {
        None
    }
}

/// Same as [`load`] for any reader; `source_name` names the input in error messages.
pub fn load_from_reader<R: Read>(
    schema: &Schema,
    cfg: &SiteDataConfig,
    reader: R,
    source_name: &str,
) -> Result<(Dataset, LoadReport), DataError> {
    schema.validate()?;
    cfg.validate(source_name)?;
    let file = source_name.to_string();
    let config_err = |field: String, message: String| DataError::Config {
        source_name: file.clone(),
        field,
        message,
    };

    // A map key that is no schema name is almost certainly a typo; refuse it.
    for key in cfg.map.keys() {
        let known = key == &schema.label.name || schema.features.iter().any(|f| &f.name == key);
        if !known {
            return Err(config_err(
                format!("data.map.{key}"),
                format!("`{key}` is not a feature or the label of the job schema"),
            ));
        }
    }

    // The whole input is read first so that line numbers can be computed from byte offsets:
    // the csv crate's own line counter does not count the blank lines it skips, and an error
    // message pointing at the wrong line is worse than none.
    let mut input = Vec::new();
    let mut reader = reader;
    reader
        .read_to_end(&mut input)
        .map_err(|source| DataError::Io {
            path: file.clone().into(),
            source,
        })?;
    let newlines: Vec<u64> = input
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i as u64)
        .collect();
    // A record's position may point at blank lines csv skipped before it; step over them.
    let line_of = |pos: Option<&csv::Position>| -> u64 {
        pos.map_or(0, |p| {
            let mut b = usize::try_from(p.byte())
                .unwrap_or(usize::MAX)
                .min(input.len());
            while matches!(input.get(b), Some(b'\n' | b'\r')) {
                b += 1;
            }
            newlines.partition_point(|&nl| nl < b as u64) as u64 + 1
        })
    };

    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false) // header handled here, so its line number is known
        .flexible(true) // row widths checked here, with a better message
        .trim(csv::Trim::All)
        .delimiter(cfg.delimiter_byte())
        .from_reader(input.as_slice());
    let mut records = rdr.records();
    let csv_err = |e: csv::Error| DataError::Csv {
        file: file.clone(),
        line: line_of(e.position()),
        message: e.to_string(),
    };

    // Column names and the line they came from (0 = from the config's `columns`).
    let (names, header_line): (Vec<String>, u64) = if cfg.has_header {
        match records.next() {
            None => {
                return Err(DataError::EmptyFile {
                    file: file.clone(),
                    detail: "no header line (has_header = true)".into(),
                });
            }
            Some(r) => {
                let r = r.map_err(csv_err)?;
                let line = line_of(r.position()).max(1);
                (r.iter().map(str::to_string).collect(), line)
            }
        }
    } else {
        (cfg.columns.clone().unwrap_or_default(), 0)
    };
    let width = names.len();

    // Resolve every schema name to a source column index.
    let resolve = |name: &str, role: &'static str| -> Result<usize, DataError> {
        let mapped = cfg.map.get(name);
        let src = mapped.map_or(name, String::as_str);
        let hits: Vec<usize> = (0..width).filter(|&i| names[i] == src).collect();
        match hits.as_slice() {
            [i] => Ok(*i),
            [] => Err(DataError::UnmappedColumn {
                file: file.clone(),
                role,
                name: name.to_string(),
                column: src.to_string(),
                mapped: mapped.is_some(),
                available: names.clone().into_boxed_slice(),
            }),
            [_, second, ..] => {
                if header_line > 0 {
                    Err(DataError::DuplicateColumn {
                        file: file.clone(),
                        line: header_line,
                        column: second + 1,
                        name: src.to_string(),
                    })
                } else {
                    Err(config_err(
                        "data.columns".into(),
                        format!("column `{src}` is listed twice and used by `{name}`"),
                    ))
                }
            }
        }
    };
    for z in &cfg.zero_is_missing {
        if !names.contains(z) {
            return Err(config_err(
                "data.zero_is_missing".into(),
                format!(
                    "`{z}` is not a column of the file; columns are: {}",
                    names.join(", ")
                ),
            ));
        }
    }
    let mut used = Vec::with_capacity(schema.features.len() + 1);
    for f in &schema.features {
        let index = resolve(&f.name, "feature")?;
        used.push(UsedColumn {
            index,
            role: Role::Feature(&f.kind, &f.name),
            zero_is_missing: cfg.zero_is_missing.contains(&names[index]),
        });
    }
    let label_index = resolve(&schema.label.name, "label")?;
    used.push(UsedColumn {
        index: label_index,
        role: Role::Label,
        zero_is_missing: cfg.zero_is_missing.contains(&names[label_index]),
    });

    let enc_width = schema.encoded_width();
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut report = LoadReport::default();
    let mut row = Vec::with_capacity(enc_width);

    for rec in records {
        let rec = rec.map_err(csv_err)?;
        let line = line_of(rec.position());
        report.rows_read += 1;
        if rec.len() != width {
            return Err(DataError::RowWidth {
                file: file.clone(),
                line,
                column: rec.len().min(width) + 1,
                expected: width,
                found: rec.len(),
                what: if header_line > 0 {
                    "by the header"
                } else {
                    "by data.columns"
                },
            });
        }
        row.clear();
        let mut label = 0.0f32;
        let mut missing = false;
        // Every used cell is checked even in a row that will be dropped: a malformed value is
        // a problem with the file, not a gap in the record.
        for u in &used {
            let text = rec.get(u.index).unwrap_or("");
            let column = u.index + 1;
            let at = || {
                Box::new(CellLocation {
                    file: file.clone(),
                    line,
                    column,
                    column_name: names[u.index].clone(),
                })
            };
            let value = if cfg.missing.iter().any(|m| m == text) {
                None
            } else {
                let v: f64 = text.parse().map_err(|_| DataError::NotNumeric {
                    at: at(),
                    value: text.to_string(),
                })?;
                if !v.is_finite() || !(v as f32).is_finite() {
                    return Err(DataError::NonFinite {
                        at: at(),
                        value: text.to_string(),
                    });
                }
                if u.zero_is_missing && v == 0.0 {
                    None
                } else {
                    Some(v)
                }
            };
            let Some(v) = value else {
                if cfg.missing_policy == MissingPolicy::Fail {
                    return Err(DataError::MissingValue {
                        at: at(),
                        value: text.to_string(),
                    });
                }
                missing = true;
                // Keep the encoded row aligned; the row is discarded below anyway.
                if let Role::Feature(kind, _) = u.role {
                    let n = match kind {
                        FeatureKind::Numeric => 1,
                        FeatureKind::Categorical { levels } => levels.len(),
                    };
                    row.extend(std::iter::repeat_n(0.0, n));
                }
                continue;
            };
            match u.role {
                Role::Feature(FeatureKind::Numeric, _) => row.push(v as f32),
                Role::Feature(FeatureKind::Categorical { levels }, feature) => {
                    let code = as_integer(v).filter(|c| levels.contains(c));
                    let Some(code) = code else {
                        return Err(DataError::NotALevel {
                            at: at(),
                            feature: feature.to_string(),
                            value: text.to_string(),
                            levels: levels.clone(),
                        });
                    };
                    row.extend(levels.iter().map(|&l| if l == code { 1.0 } else { 0.0 }));
                }
                Role::Label => {
                    if let Some(allowed) = &schema.label.allowed
                        && !as_integer(v).is_some_and(|c| allowed.contains(&c))
                    {
                        return Err(DataError::LabelNotAllowed {
                            at: at(),
                            label: schema.label.name.clone(),
                            value: text.to_string(),
                            allowed: allowed.clone(),
                        });
                    }
                    label = if schema.label.positive_if.is_positive(v) {
                        1.0
                    } else {
                        0.0
                    };
                }
            }
        }
        if missing {
            report.rows_dropped_missing += 1;
            continue;
        }
        debug_assert_eq!(row.len(), enc_width);
        features.extend_from_slice(&row);
        labels.push(label);
    }
    if report.rows_read == 0 {
        return Err(DataError::EmptyFile {
            file,
            detail: if header_line > 0 {
                "a header but no data rows".into()
            } else {
                "no data rows".into()
            },
        });
    }
    report.rows_kept = labels.len();
    Ok((
        Dataset::from_parts_unchecked(schema.encoded_names(), features, labels),
        report,
    ))
}

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;
