//! Loader tests: mapping against hand-checked rows, and every bad-input error with its location.

use super::*;
use crate::schema::parse_schema;

const SCHEMA: &str = r#"
[schema]
features = [
  { name = "age", kind = "numeric" },
  { name = "cp", kind = "categorical", levels = [1, 2, 3, 4] },
  { name = "oldpeak", kind = "numeric" },
]
label = { name = "disease", positive_if = { greater_than = 0.0 }, allowed = [0, 1, 2, 3, 4] }

[schema.split]
test_fraction = 0.34
seed = 42
"#;

fn schema() -> Schema {
    parse_schema(SCHEMA, "job.toml").unwrap()
}

fn cfg(columns: &[&str]) -> SiteDataConfig {
    let mut c = SiteDataConfig::new("site.csv");
    c.columns = Some(columns.iter().map(|s| s.to_string()).collect());
    c.map.insert("disease".into(), "num".into());
    c
}

fn heart_cfg() -> SiteDataConfig {
    cfg(&["age", "cp", "oldpeak", "num"])
}

fn load_str(c: &SiteDataConfig, text: &str) -> Result<(Dataset, LoadReport), DataError> {
    load_from_reader(&schema(), c, text.as_bytes(), "site.csv")
}

fn err(c: &SiteDataConfig, text: &str) -> String {
    load_str(c, text).unwrap_err().to_string()
}

#[test]
fn maps_and_encodes_hand_checked_rows() {
    let (ds, rep) = load_str(
        &heart_cfg(),
        "63.0,1.0,2.3,0\n41,2,.7,3\n 50 , 4 , -1.1 , 1 \n",
    )
    .unwrap();
    assert_eq!(
        ds.feature_names(),
        ["age", "cp=1", "cp=2", "cp=3", "cp=4", "oldpeak"]
    );
    assert_eq!(ds.row(0).unwrap(), &[63.0, 1.0, 0.0, 0.0, 0.0, 2.3]);
    assert_eq!(ds.row(1).unwrap(), &[41.0, 0.0, 1.0, 0.0, 0.0, 0.7]);
    assert_eq!(ds.row(2).unwrap(), &[50.0, 0.0, 0.0, 0.0, 1.0, -1.1]);
    assert_eq!(ds.labels(), &[0.0, 1.0, 1.0]);
    assert_eq!(
        rep,
        LoadReport {
            rows_read: 3,
            rows_dropped_missing: 0,
            rows_kept: 3
        }
    );
}

#[test]
fn header_renames_reordering_and_extra_columns() {
    // Different names and order, an unused column, a semicolon delimiter, a header.
    let mut c = SiteDataConfig::new("site.csv");
    c.has_header = true;
    c.delimiter = Some(';');
    c.map.insert("disease".into(), "diagnosis".into());
    c.map.insert("cp".into(), "chest_pain".into());
    let text = "patient_id;diagnosis;oldpeak;chest_pain;age\nA7;0;1.5;3;70\n";
    let (ds, rep) = load_str(&c, text).unwrap();
    assert_eq!(ds.row(0).unwrap(), &[70.0, 0.0, 0.0, 1.0, 0.0, 1.5]);
    assert_eq!(ds.labels(), &[0.0]);
    assert_eq!(rep.rows_read, 1);
}

#[test]
fn equals_rule_and_no_allowed_list() {
    let text = SCHEMA
        .replace("{ greater_than = 0.0 }", "{ equals = 2.0 }")
        .replace(", allowed = [0, 1, 2, 3, 4]", "");
    let s = parse_schema(&text, "job.toml").unwrap();
    let (ds, _) =
        load_from_reader(&s, &heart_cfg(), "1,1,0,2\n1,1,0,7.5\n".as_bytes(), "x").unwrap();
    assert_eq!(ds.labels(), &[1.0, 0.0]);
}

#[test]
fn drop_row_counts_missing_in_used_columns_only() {
    let c = cfg(&["age", "cp", "oldpeak", "unused", "num"]);
    let text = "60,1,1,?,0\n61,?,1,5,1\n62,2,,5,1\n63,3,1,5,?\n";
    let (ds, rep) = load_str(&c, text).unwrap();
    assert_eq!(
        rep,
        LoadReport {
            rows_read: 4,
            rows_dropped_missing: 3,
            rows_kept: 1
        }
    );
    assert_eq!(ds.row(0).unwrap()[0], 60.0);
}

#[test]
fn zero_is_missing_applies_to_its_column() {
    let mut c = heart_cfg();
    c.zero_is_missing = vec!["oldpeak".into()];
    let (ds, rep) = load_str(&c, "60,1,0,0\n61,1,0.5,0\n62,1,-0.0,0\n").unwrap();
    assert_eq!(rep.rows_dropped_missing, 2);
    assert_eq!(ds.len(), 1);
    // Without it, zeros are values.
    let (ds, _) = load_str(&heart_cfg(), "60,1,0,0\n").unwrap();
    assert_eq!(ds.len(), 1);
    // A zero_is_missing column that does not exist is a config error naming the field.
    c.zero_is_missing = vec!["chol".into()];
    let e = err(&c, "60,1,0,0\n");
    assert!(
        e.contains("data.zero_is_missing") && e.contains("chol"),
        "{e}"
    );
}

#[test]
fn missing_under_fail_policy_names_line_and_column() {
    let mut c = heart_cfg();
    c.missing_policy = MissingPolicy::Fail;
    let e = err(&c, "60,1,1,0\n61,?,1,0\n");
    assert!(e.contains("site.csv, line 2, column 2 (`cp`)"), "{e}");
    assert!(e.contains("missing"), "{e}");
}

#[test]
fn short_and_long_rows_name_line_and_column() {
    let e = err(&heart_cfg(), "60,1,1,0\n61,1,1\n");
    assert!(
        e.contains("line 2, column 4") && e.contains("3 fields but 4"),
        "{e}"
    );
    let e = err(&heart_cfg(), "60,1,1,0\n61,1,1,0\n62,1,1,0,\n");
    assert!(
        e.contains("line 3, column 5") && e.contains("5 fields but 4"),
        "{e}"
    );
    // Against a header.
    let mut c = SiteDataConfig::new("site.csv");
    c.has_header = true;
    c.map.insert("disease".into(), "num".into());
    let e = err(&c, "age,cp,oldpeak,num\n60,1,1\n");
    assert!(
        e.contains("line 2, column 4") && e.contains("by the header"),
        "{e}"
    );
}

#[test]
fn header_missing_a_mapped_column_names_field() {
    let mut c = SiteDataConfig::new("site.csv");
    c.has_header = true;
    c.map.insert("disease".into(), "num".into());
    let e = err(&c, "age,cp,num\n60,1,0\n");
    assert!(e.contains("site.csv") && e.contains("`oldpeak`"), "{e}");
    assert!(e.contains("field `data.map.oldpeak`, unset"), "{e}");
    assert!(e.contains("age, cp, num"), "{e}");
    // Mapped to a column that is not there.
    c.map.insert("oldpeak".into(), "st_depression".into());
    let e = err(&c, "age,cp,num\n60,1,0\n");
    assert!(
        e.contains("`st_depression`") && e.contains("field `data.map.oldpeak`"),
        "{e}"
    );
    // Label column absent from `columns`.
    let mut c = cfg(&["age", "cp", "oldpeak", "target"]);
    c.map.clear();
    let e = err(&c, "60,1,1,0\n");
    assert!(
        e.contains("label `disease`") && e.contains("data.map.disease"),
        "{e}"
    );
}

#[test]
fn unknown_map_key_is_an_error() {
    let mut c = heart_cfg();
    c.map.insert("agee".into(), "age".into());
    let e = err(&c, "60,1,1,0\n");
    assert!(e.contains("data.map.agee"), "{e}");
}

#[test]
fn duplicate_used_header_column() {
    let mut c = SiteDataConfig::new("site.csv");
    c.has_header = true;
    c.map.insert("disease".into(), "num".into());
    let e = err(&c, "age,cp,age,oldpeak,num\n60,1,61,1,0\n");
    assert!(e.contains("line 1, column 3") && e.contains("`age`"), "{e}");
    // An unused duplicate is harmless.
    assert!(load_str(&c, "age,cp,x,x,oldpeak,num\n60,1,0,0,1,0\n").is_ok());
    let c = cfg(&["age", "cp", "oldpeak", "num", "age"]);
    let e = err(&c, "60,1,1,0,1\n");
    assert!(e.contains("data.columns"), "{e}");
}

#[test]
fn non_numeric_value_names_line_and_column() {
    let e = err(&heart_cfg(), "60,1,1,0\n\n61,1,one,0\n");
    // The blank line is skipped but still counted: the bad row is on line 3.
    assert!(e.contains("site.csv, line 3, column 3 (`oldpeak`)"), "{e}");
    assert!(e.contains("\"one\" is not a number"), "{e}");
}

#[test]
fn nan_and_inf_are_rejected() {
    for bad in ["NaN", "nan", "inf", "-inf", "infinity", "1e39"] {
        let e = err(&heart_cfg(), &format!("60,1,1,0\n{bad},1,1,0\n"));
        assert!(
            e.contains("line 2, column 1 (`age`)") && e.contains("not finite"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn categorical_outside_levels() {
    for bad in ["5", "0", "1.5"] {
        let e = err(&heart_cfg(), &format!("60,{bad},1,0\n"));
        assert!(e.contains("line 1, column 2 (`cp`)"), "{e}");
        assert!(e.contains("not a level of categorical feature `cp`"), "{e}");
    }
}

#[test]
fn label_outside_allowed() {
    for bad in ["5", "-1", "0.5"] {
        let e = err(&heart_cfg(), &format!("60,1,1,0\n60,1,1,{bad}\n"));
        assert!(
            e.contains("line 2, column 4 (`num`)") && e.contains("not allowed"),
            "{e}"
        );
    }
}

#[test]
fn a_bad_value_in_a_dropped_row_is_still_an_error() {
    let e = err(&heart_cfg(), "60,?,x,0\n");
    assert!(e.contains("column 3") && e.contains("not a number"), "{e}");
}

#[test]
fn empty_files() {
    for text in ["", "\n\n"] {
        let e = err(&heart_cfg(), text);
        assert!(e.contains("site.csv: empty file"), "{e}");
    }
    let mut c = SiteDataConfig::new("site.csv");
    c.has_header = true;
    c.map.insert("disease".into(), "num".into());
    assert!(err(&c, "").contains("empty file"));
    let e = err(&c, "age,cp,oldpeak,num\n");
    assert!(
        e.contains("empty file") && e.contains("header but no data"),
        "{e}"
    );
}

#[test]
fn all_rows_dropped_is_an_empty_dataset_not_an_error() {
    let (ds, rep) = load_str(&heart_cfg(), "?,1,1,0\n").unwrap();
    assert!(ds.is_empty());
    assert_eq!(
        rep,
        LoadReport {
            rows_read: 1,
            rows_dropped_missing: 1,
            rows_kept: 0
        }
    );
}

#[test]
fn invalid_utf8_names_the_line() {
    let bytes = b"60,1,1,0\n6\xff,1,1,0\n";
    let e = load_from_reader(&schema(), &heart_cfg(), &bytes[..], "site.csv")
        .unwrap_err()
        .to_string();
    assert!(e.contains("site.csv, line 2"), "{e}");
}

#[test]
fn load_resolves_relative_paths_and_reports_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("site.csv"), "60,1,1,0\n").unwrap();
    let (ds, _) = load(&schema(), &heart_cfg(), dir.path()).unwrap();
    assert_eq!(ds.len(), 1);
    let mut c = heart_cfg();
    c.path = "nope.csv".into();
    let e = load(&schema(), &c, dir.path()).unwrap_err().to_string();
    assert!(e.contains("nope.csv") && e.contains("cannot read"), "{e}");
}

#[test]
fn invalid_schema_or_config_is_refused_before_reading() {
    let mut s = schema();
    s.split.test_fraction = 2.0;
    let e = load_from_reader(&s, &heart_cfg(), "60,1,1,0\n".as_bytes(), "x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("schema.split.test_fraction"), "{e}");
    let mut c = heart_cfg();
    c.columns = None;
    assert!(err(&c, "60,1,1,0\n").contains("data.columns"));
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever the bytes, loading returns Ok or Err, never panics, and Ok upholds the invariants.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(
            prop_oneof![Just(b','), Just(b'\n'), Just(b'?'), Just(b'"'), Just(b'.'), Just(b'-'),
                        b'0'..=b'9', any::<u8>()], 0..200)) {
            if let Ok((ds, rep)) = load_from_reader(&schema(), &heart_cfg(), &bytes[..], "f") {
                prop_assert_eq!(ds.len(), rep.rows_kept);
                prop_assert_eq!(rep.rows_read, rep.rows_kept + rep.rows_dropped_missing);
                prop_assert!(ds.features().iter().all(|v| v.is_finite()));
                prop_assert!(ds.labels().iter().all(|&l| l == 0.0 || l == 1.0));
            }
        }
    }
}

#[test]
fn line_numbers_survive_leading_blank_lines_and_crlf() {
    let e = err(&heart_cfg(), "\n\n60,1,1,0\r\n61,x,1,0\r\n");
    assert!(e.contains("line 4, column 2 (`cp`)"), "{e}");
    let (ds, _) = load_str(&heart_cfg(), "60,1,1,0\r\n61,2,1,1\r\n").unwrap();
    assert_eq!(ds.labels(), &[0.0, 1.0]);
}
