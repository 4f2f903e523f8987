//! Deterministic, optionally stratified train/test split of one site's records.
//!
//! Each site splits its own data locally with the job's seed, so the split is reproducible
//! by the site (audits, reruns) without anyone else seeing which rows went where.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::dataset::Dataset;
use crate::error::DataError;
use crate::schema::SplitSpec;

/// Split into `(train, test)`.
///
/// Sizes follow scikit-learn's `train_test_split`: `n_test = ceil(test_fraction * n)`,
/// `n_train = n - n_test`, both must be at least 1. With `stratify`, `n_test` is shared
/// between the two classes in proportion to their sizes (floor of each share, then the
/// leftover rows to the largest remainders, ties to class 0), so both parts keep the site's
/// class balance. Unlike scikit-learn, a class with a single row is not an error: it goes to
/// whichever part the allocation gives it (Switzerland has one negative row after cleaning).
///
/// Rows are drawn with a ChaCha20 generator seeded from `split.seed` and a Fisher-Yates
/// shuffle written here (not `rand`'s `shuffle`/`random_range`, whose algorithms may change
/// between releases), so the split depends only on the seed and the data. Both parts keep
/// the rows in their original file order.
pub fn split(ds: &Dataset, split: &SplitSpec) -> Result<(Dataset, Dataset), DataError> {
    let f = split.test_fraction;
    if !(f.is_finite() && f > 0.0 && f < 1.0) {
        return Err(DataError::Split(format!(
            "test_fraction {f} is not strictly between 0 and 1"
        )));
    }
    let n = ds.len();
    let n_test = (f * n as f64).ceil() as usize;
    if n_test == 0 || n_test >= n {
        return Err(DataError::Split(format!(
            "{n} rows with test_fraction {f} give {n_test} test and {} train rows; both must be at least 1",
            n.saturating_sub(n_test)
        )));
    }
    let mut rng = ChaCha20Rng::seed_from_u64(split.seed);
    let mut test: Vec<usize> = if split.stratify {
        let neg: Vec<usize> = (0..n).filter(|&i| ds.labels()[i] == 0.0).collect();
        let pos: Vec<usize> = (0..n).filter(|&i| ds.labels()[i] != 0.0).collect();
        let [t_neg, t_pos] = allocate([neg.len(), pos.len()], n_test);
        let mut out = pick(neg, t_neg, &mut rng);
        out.extend(pick(pos, t_pos, &mut rng));
        out
    } else {
        pick((0..n).collect(), n_test, &mut rng)
    };
    test.sort_unstable();
    let mut in_test = vec![false; n];
    for &i in &test {
        in_test[i] = true;
    }
    let train: Vec<usize> = (0..n).filter(|&i| !in_test[i]).collect();
    Ok((ds.select(&train), ds.select(&test)))
}

/// Share `total` draws among classes proportionally to `counts` (largest-remainder method).
fn allocate(counts: [usize; 2], total: usize) -> [usize; 2] {
    let n: usize = counts.iter().sum();
    let mut out = [0usize; 2];
    let mut rem = [(0usize, 0usize); 2]; // (remainder numerator, class)
    for c in 0..2 {
        // Exact integer arithmetic: share = counts[c] * total / n.
        out[c] = counts[c] * total / n;
        rem[c] = (counts[c] * total % n, c);
    }
    let mut left = total - out.iter().sum::<usize>();
    // Larger remainder first; on a tie, the lower class index first.
    rem.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, c) in &rem {
        if left == 0 {
            break;
        }
        if out[c] < counts[c] {
            out[c] += 1;
            left -= 1;
        }
    }
    out
}

/// Uniform integer in `0..bound` by rejection sampling (no modulo bias).
fn below(rng: &mut ChaCha20Rng, bound: usize) -> usize {
    let bound = bound as u64;
    let zone = u64::MAX - (u64::MAX % bound);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return (x % bound) as usize;
        }
    }
}

/// The first `k` entries of a Fisher-Yates shuffle of `items`.
fn pick(mut items: Vec<usize>, k: usize, rng: &mut ChaCha20Rng) -> Vec<usize> {
    let n = items.len();
    for i in 0..k.min(n) {
        let j = i + below(rng, n - i);
        items.swap(i, j);
    }
    items.truncate(k);
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(labels: &[f32]) -> Dataset {
        let feats: Vec<f32> = (0..labels.len()).map(|i| i as f32).collect();
        Dataset::new(vec!["id".into()], feats, labels.to_vec()).unwrap()
    }

    fn spec(f: f64, seed: u64, stratify: bool) -> SplitSpec {
        SplitSpec {
            test_fraction: f,
            seed,
            stratify,
        }
    }

    #[test]
    fn allocation_matches_hand_computation() {
        // 303 Cleveland rows, 164 neg / 139 pos, 104 test: 56.29 / 47.71 -> 56 / 48.
        assert_eq!(allocate([164, 139], 104), [56, 48]);
        // Switzerland: 1 neg / 45 pos, 16 test: 0.35 / 15.65 -> 0 / 16.
        assert_eq!(allocate([1, 45], 16), [0, 16]);
        // Exact tie: 5/5, 3 draws: 1.5 / 1.5 -> class 0 gets the extra row.
        assert_eq!(allocate([5, 5], 3), [2, 1]);
        assert_eq!(allocate([0, 10], 4), [0, 4]);
    }

    #[test]
    fn sizes_follow_sklearn_ceil() {
        let labels: Vec<f32> = (0..10).map(|i| (i % 2) as f32).collect();
        let (tr, te) = split(&ds(&labels), &spec(0.25, 1, true)).unwrap();
        assert_eq!((tr.len(), te.len()), (7, 3)); // ceil(2.5) = 3
        let (tr, te) = split(&ds(&labels), &spec(0.25, 1, false)).unwrap();
        assert_eq!((tr.len(), te.len()), (7, 3));
    }

    #[test]
    fn deterministic_partition_and_seed_sensitive() {
        let labels: Vec<f32> = (0..50)
            .map(|i| if i % 3 == 0 { 1.0 } else { 0.0 })
            .collect();
        let d = ds(&labels);
        let (tr1, te1) = split(&d, &spec(0.34, 42, true)).unwrap();
        let (tr2, te2) = split(&d, &spec(0.34, 42, true)).unwrap();
        assert_eq!((&tr1, &te1), (&tr2, &te2));
        // A partition: every id exactly once.
        let mut ids: Vec<f32> = tr1
            .features()
            .iter()
            .chain(te1.features())
            .copied()
            .collect();
        ids.sort_by(f32::total_cmp);
        assert_eq!(ids, (0..50).map(|i| i as f32).collect::<Vec<_>>());
        // Stratified: 17 positives, 17 test rows of 50 -> 5.78 -> 6 positives in test.
        assert_eq!(te1.len(), 17);
        assert_eq!(te1.positives(), 6);
        assert_eq!(tr1.positives(), 11);
        let (_, te3) = split(&d, &spec(0.34, 43, true)).unwrap();
        assert_ne!(te1, te3, "another seed should pick other rows");
    }

    #[test]
    fn rows_keep_file_order() {
        let labels: Vec<f32> = (0..20).map(|i| (i % 2) as f32).collect();
        let (tr, te) = split(&ds(&labels), &spec(0.3, 7, true)).unwrap();
        for part in [tr, te] {
            assert!(part.features().windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn too_small_is_an_error() {
        assert!(split(&ds(&[1.0]), &spec(0.5, 1, true)).is_err());
        assert!(split(&ds(&[]), &spec(0.5, 1, true)).is_err());
        // ceil(0.9 * 2) = 2 leaves no training row.
        assert!(split(&ds(&[0.0, 1.0]), &spec(0.9, 1, true)).is_err());
        assert!(split(&ds(&[0.0, 1.0]), &spec(1.0, 1, true)).is_err());
    }

    #[test]
    fn below_is_in_range() {
        let mut rng = ChaCha20Rng::seed_from_u64(0);
        for b in 1..50 {
            assert!(below(&mut rng, b) < b);
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// A partition of the right sizes, deterministic, and each part's positives within
            /// one row of its exact proportional share.
            #[test]
            fn partition_sizes_and_balance(
                labels in proptest::collection::vec(prop_oneof![Just(0.0f32), Just(1.0f32)], 2..120),
                f in 0.05f64..0.95,
                seed in any::<u64>(),
                stratify in any::<bool>(),
            ) {
                let n = labels.len();
                let n_test = (f * n as f64).ceil() as usize;
                let d = ds(&labels);
                let s = spec(f, seed, stratify);
                let res = split(&d, &s);
                if n_test >= n {
                    prop_assert!(res.is_err());
                    return Ok(());
                }
                let (tr, te) = res.unwrap();
                prop_assert_eq!((tr.len(), te.len()), (n - n_test, n_test));
                let mut ids: Vec<f32> = tr.features().iter().chain(te.features()).copied().collect();
                ids.sort_by(f32::total_cmp);
                prop_assert_eq!(ids, (0..n).map(|i| i as f32).collect::<Vec<_>>());
                if stratify {
                    let share = d.positives() as f64 * n_test as f64 / n as f64;
                    prop_assert!((te.positives() as f64 - share).abs() < 1.0);
                }
                prop_assert_eq!(split(&d, &s).unwrap(), (tr, te));
            }
        }
    }
}
