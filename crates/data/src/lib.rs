//! fedcare-data: the site-local data layer of fedcare.
//!
//! # What it is
//!
//! A job's [`Schema`] (the `[schema]` table of the job spec, identical at every site) fixes
//! which features a model sees and how they are encoded: numeric columns as they are,
//! categorical ones one-hot over fixed levels, and a binary label from a rule. Each hospital
//! maps its *own* CSV onto that schema with a small [`SiteDataConfig`] (the `[data]` table of
//! its site config): file path, column names, missing-value tokens, renames. [`load`] reads
//! and encodes the file into a [`Dataset`], [`split`] cuts it into train and test with the
//! job's seed, and [`FeatureSums`] / [`Standardization`] standardise all sites alike from
//! aggregate sums.
//!
//! # What it guarantees
//!
//! - Every site produces the same encoded layout ([`Schema::encoded_names`]) and can prove it
//!   agrees on the schema by comparing [`Schema::digest`].
//! - Every value in a [`Dataset`] is finite and every label is 0.0 or 1.0.
//! - Bad input is an error, never a panic and never a silent guess: messages name the file,
//!   line and column (or the TOML field) so a site operator can fix the file alone.
//! - Splitting is deterministic: same data, same seed, same split, on any machine.
//!
//! # What it must never do
//!
//! - No network access of any kind; this crate only reads local files.
//! - Records never leave the process: [`Dataset`] is not serialisable and its `Debug` prints
//!   only its shape. The only values meant to be sent to the coordinator are [`FeatureSums`]
//!   (per-column count, sum, sum of squares) and, if wanted, [`LoadReport`] row counts.
//!
//! # Example: the heart-disease job
//!
//! ```
//! let job = r#"
//! [schema]
//! features = [
//!   { name = "age", kind = "numeric" },
//!   { name = "cp", kind = "categorical", levels = [1, 2, 3, 4] },
//! ]
//! label = { name = "disease", positive_if = { greater_than = 0.0 }, allowed = [0, 1, 2, 3, 4] }
//!
//! [schema.split]
//! test_fraction = 0.34
//! seed = 42
//! stratify = true
//! "#;
//! let schema = fedcare_data::parse_schema(job, "job.toml")?;
//! let site = r#"
//! [data]
//! path = "site.csv"
//! columns = ["age", "cp", "num"]
//! map = { disease = "num" }
//! "#;
//! let cfg = fedcare_data::parse_site_data_config(site, "site.toml")?;
//! let csv = "63.0,1.0,0\n67,4,2\n";
//! let (ds, report) = fedcare_data::load_from_reader(&schema, &cfg, csv.as_bytes(), "site.csv")?;
//! assert_eq!(report.rows_kept, 2);
//! assert_eq!(ds.features(), &[63.0, 1.0, 0.0, 0.0, 0.0, 67.0, 0.0, 0.0, 0.0, 1.0]);
//! assert_eq!(ds.labels(), &[0.0, 1.0]);
//! # Ok::<(), fedcare_data::DataError>(())
//! ```

mod config;
mod dataset;
mod error;
mod load;
mod schema;
mod split;
mod stats;

pub use config::{MissingPolicy, SiteDataConfig, parse_site_data_config};
pub use dataset::Dataset;
pub use error::{CellLocation, DataError};
pub use load::{LoadReport, load, load_from_reader};
pub use schema::{FeatureKind, FeatureSpec, LabelRule, LabelSpec, Schema, SplitSpec, parse_schema};
pub use split::split;
pub use stats::{FeatureSums, Standardization};
