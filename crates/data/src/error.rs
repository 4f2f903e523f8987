//! The crate's single error type.
//!
//! Every variant that comes from input carries enough location to fix the input without a
//! debugger: the file (or TOML source) name, and the 1-based line and column, or the dotted
//! TOML field (`schema.features[2].levels`, `data.map.chol`). Site operators read these
//! messages; they are the only feedback they get, because the data never leaves the site.

use std::fmt;
use std::path::PathBuf;

/// Where a bad cell is. Boxed inside [`DataError`] to keep the error (and every `Result`
/// carrying it) small on the success path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellLocation {
    /// File (or reader source) name.
    pub file: String,
    /// 1-based physical line in the file.
    pub line: u64,
    /// 1-based column (field) index in the row.
    pub column: usize,
    /// The column's name from the header or `data.columns`.
    pub column_name: String,
}

impl fmt::Display for CellLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, line {}, column {} (`{}`)",
            self.file, self.line, self.column, self.column_name
        )
    }
}

/// Everything that can go wrong while reading a schema, a site config or a site's records.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The data file could not be opened or read.
    #[error("{}: cannot read file: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// TOML syntax error, unknown key, wrong type ... `message` is toml's own rendering,
    /// which already names the line and column and quotes the offending text.
    #[error("{source_name}: {message}")]
    Toml {
        source_name: String,
        message: String,
    },

    /// The job schema is inconsistent; `field` is the dotted TOML path of the culprit.
    #[error("invalid schema, field `{field}`: {message}")]
    Schema { field: String, message: String },

    /// The site's `[data]` config is inconsistent on its own or against the schema/file.
    #[error("{source_name}: invalid site data config, field `{field}`: {message}")]
    Config {
        source_name: String,
        field: String,
        message: String,
    },

    /// The file holds no record at all (or only a header).
    #[error("{file}: empty file: {detail}")]
    EmptyFile { file: String, detail: String },

    /// Low-level CSV problem (bad quoting, invalid UTF-8, ...).
    #[error("{file}, line {line}: malformed CSV: {message}")]
    Csv {
        file: String,
        line: u64,
        message: String,
    },

    /// A row has fewer or more fields than the header / `columns` declare.
    #[error(
        "{file}, line {line}, column {column}: row has {found} fields but {expected} columns are declared ({what})"
    )]
    RowWidth {
        file: String,
        line: u64,
        /// 1-based column where the row first deviates: the first missing field, or the first extra one.
        column: usize,
        expected: usize,
        found: usize,
        what: &'static str,
    },

    /// A schema name maps to a source column the file does not have.
    #[error(
        "{file}: schema {role} `{name}` maps to source column `{column}` (field `data.map.{name}`{}), which is not a column of the file; columns are: {}",
        if *.mapped { "" } else { ", unset: looked up under its own name" },
        .available.join(", ")
    )]
    UnmappedColumn {
        file: String,
        /// "feature" or "label".
        role: &'static str,
        name: String,
        column: String,
        /// Whether `data.map` has an entry for `name` (else the schema name itself was used).
        mapped: bool,
        available: Box<[String]>,
    },

    /// The header (or `columns`) names a used column twice, so the mapping is ambiguous.
    #[error(
        "{file}, line {line}, column {column}: column name `{name}` appears more than once and is used"
    )]
    DuplicateColumn {
        file: String,
        line: u64,
        column: usize,
        name: String,
    },

    /// A used cell is neither a number nor a missing-value token.
    #[error("{at}: value {value:?} is not a number")]
    NotNumeric {
        at: Box<CellLocation>,
        value: String,
    },

    /// A used cell parses as NaN or infinity (or overflows f32).
    #[error("{at}: value {value:?} is not finite (NaN/inf or out of f32 range)")]
    NonFinite {
        at: Box<CellLocation>,
        value: String,
    },

    /// A categorical cell is not one of the schema's levels.
    #[error(
        "{at}: value {value:?} is not a level of categorical feature `{feature}` (levels {levels:?})"
    )]
    NotALevel {
        at: Box<CellLocation>,
        feature: String,
        value: String,
        levels: Vec<i64>,
    },

    /// A label cell is outside the schema's `allowed` values.
    #[error("{at}: label value {value:?} is not allowed for label `{label}` (allowed {allowed:?})")]
    LabelNotAllowed {
        at: Box<CellLocation>,
        label: String,
        value: String,
        allowed: Vec<i64>,
    },

    /// A used cell is missing and the site's policy is `fail`.
    #[error("{at}: missing value {value:?} and missing_policy = \"fail\"")]
    MissingValue {
        at: Box<CellLocation>,
        value: String,
    },

    /// Two datasets/sums/standardisations of different encoded layouts were combined.
    #[error("{what}: width mismatch, expected {expected}, found {found}")]
    WidthMismatch {
        what: String,
        expected: usize,
        found: usize,
    },

    /// Splitting is impossible (too few rows for the fraction, ...).
    #[error("cannot split: {0}")]
    Split(String),

    /// Aggregate statistics are unusable (no rows, non-finite sums, overflow).
    #[error("invalid statistics: {0}")]
    Stats(String),
}
