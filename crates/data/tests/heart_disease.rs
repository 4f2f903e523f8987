//! The bundled UCI Heart Disease files, loaded exactly as the example job does
//! (FLamby Fed-Heart-Disease preparation), with the fixture TOMLs quoted in the crate docs.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use fedcare_data::{
    Dataset, FeatureSums, LoadReport, Schema, SiteDataConfig, Standardization, load, parse_schema,
    parse_site_data_config, split,
};

fn fixture(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/heart-disease")
}

fn schema() -> Schema {
    parse_schema(
        &fixture("heart_disease_schema.toml"),
        "heart_disease_schema.toml",
    )
    .unwrap()
}

fn cleveland_cfg() -> SiteDataConfig {
    parse_site_data_config(&fixture("cleveland_site.toml"), "cleveland_site.toml").unwrap()
}

/// The other three sites use the same mapping; only the file differs.
fn site_cfg(site: &str) -> SiteDataConfig {
    let mut c = cleveland_cfg();
    c.path = format!("data/processed.{site}.data").into();
    c
}

const SITES: [&str; 4] = ["cleveland", "hungarian", "switzerland", "va"];

fn load_site(site: &str) -> (Dataset, LoadReport) {
    load(&schema(), &site_cfg(site), &example_dir()).unwrap()
}

#[test]
fn schema_fixture_layout_and_digest() {
    let s = schema();
    assert_eq!(s.encoded_width(), 15);
    assert_eq!(
        s.encoded_names(),
        [
            "age",
            "sex",
            "cp=1",
            "cp=2",
            "cp=3",
            "cp=4",
            "trestbps",
            "chol",
            "fbs",
            "restecg=0",
            "restecg=1",
            "restecg=2",
            "thalach",
            "exang",
            "oldpeak"
        ]
    );
    assert_eq!(
        cleveland_cfg().path,
        PathBuf::from("data/processed.cleveland.data")
    );
    // Pinned: a change here means every site and the coordinator must upgrade together.
    assert_eq!(
        s.digest(),
        "5806451bf0834a5c165f01e214cc8dc558887d1e10c577d2d595203be994b655"
    );
}

#[test]
fn row_counts_after_dropping_missing() {
    // (rows in file, rows kept, positives among kept), kept counts as in FLamby.
    let expected = [
        ("cleveland", 303, 303, 139),
        ("hungarian", 294, 261, 98),
        ("switzerland", 123, 46, 45),
        ("va", 200, 130, 101),
    ];
    for (site, read, kept, pos) in expected {
        let (ds, rep) = load_site(site);
        assert_eq!(
            rep,
            LoadReport {
                rows_read: read,
                rows_dropped_missing: read - kept,
                rows_kept: kept
            },
            "{site}"
        );
        assert_eq!(
            (ds.len(), ds.positives(), ds.n_features()),
            (kept, pos, 15),
            "{site}"
        );
    }
}

#[test]
fn first_cleveland_row_hand_checked() {
    // 63.0,1.0,1.0,145.0,233.0,1.0,2.0,150.0,0.0,2.3,3.0,0.0,6.0,0
    let (ds, _) = load_site("cleveland");
    #[rustfmt::skip]
    let want: [f32; 15] = [
        63.0, 1.0,               // age, sex
        1.0, 0.0, 0.0, 0.0,      // cp = 1
        145.0, 233.0, 1.0,       // trestbps, chol, fbs
        0.0, 0.0, 1.0,           // restecg = 2
        150.0, 0.0, 2.3,         // thalach, exang, oldpeak
    ];
    assert_eq!(ds.row(0).unwrap(), &want);
    assert_eq!(ds.labels()[0], 0.0);
    // Second row: 67.0,1.0,4.0,160.0,286.0,0.0,2.0,108.0,1.0,1.5,2.0,3.0,3.0,2 -> disease.
    #[rustfmt::skip]
    let want2: [f32; 15] = [
        67.0, 1.0, 0.0, 0.0, 0.0, 1.0, 160.0, 286.0, 0.0, 0.0, 0.0, 1.0, 108.0, 1.0, 1.5,
    ];
    assert_eq!(ds.row(1).unwrap(), &want2);
    assert_eq!(ds.labels()[1], 1.0);
}

#[test]
fn integer_files_encode_like_float_files() {
    // Hungarian writes "28,1,2,130,132,0,2,185,0,0,?,?,?,0": integers, unused columns missing.
    let (ds, _) = load_site("hungarian");
    #[rustfmt::skip]
    let want: [f32; 15] = [
        28.0, 1.0, 0.0, 1.0, 0.0, 0.0, 130.0, 132.0, 0.0, 0.0, 0.0, 1.0, 185.0, 0.0, 0.0,
    ];
    assert_eq!(ds.row(0).unwrap(), &want);
    // Switzerland's first kept row is its line 1: "32,1,1,95,0,?,..." has fbs missing -> dropped.
    // Its chol is 0 in every row and is kept as a value (not marked missing).
    let (ch, _) = load_site("switzerland");
    assert!((0..ch.len()).all(|i| ch.row(i).unwrap()[7] == 0.0));
}

#[test]
fn split_sizes_and_stratification() {
    // (train, test, positives in test); test = ceil(0.34 n), classes allocated proportionally.
    let expected = [
        ("cleveland", 199, 104, 48),
        ("hungarian", 172, 89, 33),
        ("switzerland", 30, 16, 16),
        ("va", 85, 45, 35),
    ];
    let s = schema();
    for (site, n_train, n_test, test_pos) in expected {
        let (ds, _) = load_site(site);
        let (train, test) = split(&ds, &s.split).unwrap();
        assert_eq!((train.len(), test.len()), (n_train, n_test), "{site}");
        assert_eq!(test.positives(), test_pos, "{site}");
        assert_eq!(
            train.positives() + test.positives(),
            ds.positives(),
            "{site}"
        );
        // Deterministic.
        let (train2, test2) = split(&ds, &s.split).unwrap();
        assert_eq!((&train, &test), (&train2, &test2), "{site}");
    }
}

#[test]
fn cleveland_split_is_pinned() {
    // Regression pin of which rows the job's seed selects: the split must not drift with a
    // dependency upgrade, or a rerun would evaluate on different patients.
    let (ds, _) = load_site("cleveland");
    let (_, test) = split(&ds, &schema().split).unwrap();
    let ages: Vec<f32> = (0..5).map(|i| test.row(i).unwrap()[0]).collect();
    assert_eq!(ages, [67.0, 67.0, 57.0, 52.0, 48.0]);
    let mut h = Sha256::new();
    for v in test.features().iter().chain(test.labels()) {
        h.update(v.to_le_bytes());
    }
    assert_eq!(
        hex::encode(h.finalize()),
        "a3d84557abc6c46034d7fd2004f7c1e3130b9434c5806edbb739b34a61867e2a"
    );
}

#[test]
fn federated_sums_equal_pooled_sums_and_standardise() {
    let s = schema();
    let trains: Vec<Dataset> = SITES
        .iter()
        .map(|site| split(&load_site(site).0, &s.split).unwrap().0)
        .collect();
    let mut total = FeatureSums::zero(s.encoded_width());
    for t in &trains {
        total.add(&FeatureSums::of(t)).unwrap();
    }
    let parts: Vec<&Dataset> = trains.iter().collect();
    let mut pooled = Dataset::concat(&parts).unwrap();
    let direct = FeatureSums::of(&pooled);
    assert_eq!(total.count, direct.count);
    assert_eq!(total.count[0], 199 + 172 + 30 + 85);
    for j in 0..total.sum.len() {
        assert!((total.sum[j] - direct.sum[j]).abs() <= 1e-9 * direct.sum[j].abs().max(1.0));
        assert!((total.sum_sq[j] - direct.sum_sq[j]).abs() <= 1e-9 * direct.sum_sq[j].max(1.0));
    }
    let z = Standardization::from_sums(&total).unwrap();
    z.apply(&mut pooled).unwrap();
    let after = FeatureSums::of(&pooled);
    for j in 0..after.sum.len() {
        let n = after.count[j] as f64;
        assert!((after.sum[j] / n).abs() < 1e-4, "column {j} mean");
        assert!(
            (after.sum_sq[j] / n - 1.0).abs() < 1e-3,
            "column {j} variance"
        );
    }
    // Switzerland alone: chol is constant 0, so its std is 1 and it is left at 0.
    let swiss = Standardization::from_sums(&FeatureSums::of(&trains[2])).unwrap();
    assert_eq!((swiss.mean[7], swiss.std[7]), (0.0, 1.0));
}
