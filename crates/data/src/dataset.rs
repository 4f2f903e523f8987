//! Encoded records held in memory at the site.

use std::fmt;

use crate::error::DataError;

/// Loaded, encoded records: row-major `f32` features and `0.0`/`1.0` labels.
///
/// Deliberately not `Serialize`, and its `Debug` prints only the shape: records must not leave
/// the site process, not even by accident through a log line or a message payload.
#[derive(Clone, PartialEq)]
pub struct Dataset {
    names: Vec<String>,
    features: Vec<f32>,
    labels: Vec<f32>,
}

impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("rows", &self.len())
            .field("n_features", &self.n_features())
            .field("positives", &self.positives())
            .finish_non_exhaustive()
    }
}

impl Dataset {
    /// Build a dataset from already encoded parts (for tests and simulations).
    ///
    /// `names` are the encoded column names (see [`crate::Schema::encoded_names`]); they are
    /// kept so that [`Dataset::concat`] can refuse to mix different layouts. Every value must be
    /// finite and every label 0.0 or 1.0, the same guarantees [`crate::load`] gives.
    pub fn new(
        names: Vec<String>,
        features: Vec<f32>,
        labels: Vec<f32>,
    ) -> Result<Self, DataError> {
        let w = names.len();
        if w == 0 {
            return Err(DataError::WidthMismatch {
                what: "Dataset::new: at least one feature column is required".into(),
                expected: 1,
                found: 0,
            });
        }
        if features.len() != labels.len() * w {
            return Err(DataError::WidthMismatch {
                what: format!(
                    "Dataset::new: features for {} rows of {w} columns",
                    labels.len()
                ),
                expected: labels.len() * w,
                found: features.len(),
            });
        }
        if let Some(i) = features.iter().position(|v| !v.is_finite()) {
            return Err(DataError::Stats(format!(
                "Dataset::new: feature value at row {}, column {} is not finite",
                i / w + 1,
                i % w + 1
            )));
        }
        if let Some(i) = labels.iter().position(|&l| l != 0.0 && l != 1.0) {
            return Err(DataError::Stats(format!(
                "Dataset::new: label of row {} is {}, not 0 or 1",
                i + 1,
                labels[i]
            )));
        }
        Ok(Dataset {
            names,
            features,
            labels,
        })
    }

    /// Used by the loader and splitter, which uphold the invariants themselves.
    pub(crate) fn from_parts_unchecked(
        names: Vec<String>,
        features: Vec<f32>,
        labels: Vec<f32>,
    ) -> Self {
        debug_assert_eq!(features.len(), labels.len() * names.len());
        Dataset {
            names,
            features,
            labels,
        }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Encoded width (columns per row).
    pub fn n_features(&self) -> usize {
        self.names.len()
    }

    /// Encoded column names, as [`crate::Schema::encoded_names`].
    pub fn feature_names(&self) -> &[String] {
        &self.names
    }

    /// Row-major features, `len() * n_features()` values.
    pub fn features(&self) -> &[f32] {
        &self.features
    }

    /// Mutable access, e.g. for an in-place transform; the shape cannot change through it.
    pub fn features_mut(&mut self) -> &mut [f32] {
        &mut self.features
    }

    /// Labels, 0.0 or 1.0, one per row.
    pub fn labels(&self) -> &[f32] {
        &self.labels
    }

    /// One row's features.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        let w = self.n_features();
        self.features.get(i * w..(i + 1) * w)
    }

    /// Number of rows with label 1.0.
    pub fn positives(&self) -> usize {
        self.labels.iter().filter(|&&l| l == 1.0).count()
    }

    /// Stack datasets of the same layout, in order. Exists for the pooled (centralised)
    /// reference model in simulation; a real deployment never has more than one site's records.
    pub fn concat(parts: &[&Dataset]) -> Result<Dataset, DataError> {
        let Some(first) = parts.first() else {
            return Err(DataError::WidthMismatch {
                what: "Dataset::concat of no parts (layout unknown)".into(),
                expected: 1,
                found: 0,
            });
        };
        for (i, p) in parts.iter().enumerate() {
            if p.names != first.names {
                return Err(DataError::WidthMismatch {
                    what: format!(
                        "Dataset::concat: part {i} has a different encoded layout than part 0"
                    ),
                    expected: first.n_features(),
                    found: p.n_features(),
                });
            }
        }
        let rows: usize = parts.iter().map(|p| p.len()).sum();
        let mut features = Vec::with_capacity(rows * first.n_features());
        let mut labels = Vec::with_capacity(rows);
        for p in parts {
            features.extend_from_slice(&p.features);
            labels.extend_from_slice(&p.labels);
        }
        Ok(Dataset::from_parts_unchecked(
            first.names.clone(),
            features,
            labels,
        ))
    }

    /// The rows at `idx`, in that order (used by the splitter).
    pub(crate) fn select(&self, idx: &[usize]) -> Dataset {
        let w = self.n_features();
        let mut features = Vec::with_capacity(idx.len() * w);
        let mut labels = Vec::with_capacity(idx.len());
        for &i in idx {
            features.extend_from_slice(&self.features[i * w..(i + 1) * w]);
            labels.push(self.labels[i]);
        }
        Dataset::from_parts_unchecked(self.names.clone(), features, labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("f{i}")).collect()
    }

    #[test]
    fn new_checks_shape_values_and_labels() {
        let d = Dataset::new(names(2), vec![1.0, 2.0, 3.0, 4.0], vec![0.0, 1.0]).unwrap();
        assert_eq!((d.len(), d.n_features(), d.positives()), (2, 2, 1));
        assert_eq!(d.row(1), Some(&[3.0, 4.0][..]));
        assert_eq!(d.row(2), None);
        assert!(Dataset::new(names(2), vec![1.0, 2.0, 3.0], vec![0.0, 1.0]).is_err());
        assert!(Dataset::new(names(1), vec![f32::NAN], vec![0.0]).is_err());
        assert!(Dataset::new(names(1), vec![1.0], vec![0.5]).is_err());
        assert!(Dataset::new(vec![], vec![], vec![]).is_err());
    }

    #[test]
    fn debug_does_not_print_records() {
        let d = Dataset::new(names(1), vec![12345.0], vec![1.0]).unwrap();
        let s = format!("{d:?}");
        assert!(!s.contains("12345"), "{s}");
        assert!(s.contains("rows: 1"), "{s}");
    }

    #[test]
    fn concat_stacks_and_checks_layout() {
        let a = Dataset::new(names(2), vec![1.0, 2.0], vec![1.0]).unwrap();
        let b = Dataset::new(names(2), vec![3.0, 4.0, 5.0, 6.0], vec![0.0, 0.0]).unwrap();
        let c = Dataset::concat(&[&a, &b]).unwrap();
        assert_eq!(c.features(), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(c.labels(), &[1.0, 0.0, 0.0]);
        let other = Dataset::new(names(1), vec![1.0], vec![1.0]).unwrap();
        let e = Dataset::concat(&[&a, &other]).unwrap_err().to_string();
        assert!(e.contains("part 1"), "{e}");
        assert!(Dataset::concat(&[]).is_err());
    }
}
