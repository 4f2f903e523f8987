//! Tests of the store against real files in temporary directories.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};

use super::*;

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    (dir, path)
}

fn job(id: &str, submitted_unix_ms: u64) -> JobRecord {
    JobRecord {
        job_id: id.to_string(),
        name: format!("name of {id}"),
        spec_toml: format!("[job]\nid = \"{id}\"\n"),
        submitted_unix_ms,
        status: JobStatus::Running,
    }
}

fn open_err(path: &Path) -> String {
    match Store::open(path) {
        Ok(_) => panic!("opening {} should have failed", path.display()),
        Err(e) => {
            assert!(matches!(e, StoreError::Open { .. }), "not an Open error: {e:?}");
            eprintln!("open error: {e}");
            e.to_string()
        }
    }
}

/// Writes `version` into the meta table with plain redb, as a newer fedcare would.
fn set_schema_version(path: &Path, version: u64) {
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .insert(SCHEMA_VERSION_KEY, version)
        .unwrap();
    txn.commit().unwrap();
}

fn read_schema_version(path: &Path) -> Option<u64> {
    let db = Database::create(path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    meta.get(SCHEMA_VERSION_KEY).unwrap().map(|v| v.value())
}

#[test]
fn new_file_gets_current_schema_version() {
    let (_dir, path) = temp();
    let store = Store::open(&path).unwrap();
    assert_eq!(store.path(), path.as_path());
    assert!(format!("{store:?}").contains("state.redb"));
    drop(store);
    assert_eq!(read_schema_version(&path), Some(SCHEMA_VERSION));
}

#[test]
fn job_round_trip_and_status() {
    let (_dir, path) = temp();
    let store = Store::open(&path).unwrap();
    let rec = job("a1", 1_700_000_000_000);
    store.insert_job(&rec).unwrap();
    assert_eq!(store.job("a1").unwrap(), Some(rec.clone()));
    assert_eq!(store.job("missing").unwrap(), None);
    assert_eq!(store.jobs().unwrap(), vec![rec.clone()]);

    let failed = JobStatus::Failed {
        reason: "only 1 of 3 sites answered".into(),
    };
    store.set_status("a1", &failed).unwrap();
    let got = store.job("a1").unwrap().unwrap();
    assert_eq!(got.status, failed);
    assert_eq!(got.spec_toml, rec.spec_toml, "set_status must not touch other fields");
    store.set_status("a1", &JobStatus::Finished).unwrap();
    assert_eq!(store.job("a1").unwrap().unwrap().status, JobStatus::Finished);
}

#[test]
fn jobs_come_back_in_submission_order_not_timestamp_order() {
    let (_dir, path) = temp();
    let store = Store::open(&path).unwrap();
    // Ids and timestamps both sort opposite to submission order.
    let recs = [job("c", 30), job("b", 20), job("a", 10)];
    for r in &recs {
        store.insert_job(r).unwrap();
    }
    assert_eq!(store.jobs().unwrap(), recs.to_vec());
}

#[test]
fn already_exists_and_not_found() {
    let (_dir, path) = temp();
    let store = Store::open(&path).unwrap();
    store.insert_job(&job("j", 1)).unwrap();

    let mut other = job("j", 2);
    other.name = "impostor".into();
    let err = store.insert_job(&other).unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    assert!(err.to_string().contains("\"j\""), "{err}");
    assert_eq!(store.job("j").unwrap().unwrap().name, "name of j");
    assert_eq!(store.jobs().unwrap().len(), 1, "a refused insert adds nothing");

    let nf = |r: Result<(), StoreError>| {
        let e = r.unwrap_err();
        assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
        assert!(e.to_string().contains("nope"), "{e}");
    };
    nf(store.set_status("nope", &JobStatus::Finished));
    nf(store.append_event("nope", b"x").map(drop));
    nf(store.put_round("nope", 0, &[1.0], "{}"));
    nf(store.put_result("nope", b"m", "{}"));

    // Nothing was attached to the unknown job.
    assert!(store.events("nope").unwrap().is_empty());
    assert_eq!(store.round_model("nope", 0).unwrap(), None);
    assert_eq!(store.last_round("nope").unwrap(), None);
    assert_eq!(store.result("nope").unwrap(), None);
    assert_eq!(store.job("nope").unwrap(), None);
}

#[test]
fn events_are_consecutive_per_job_and_independent() {
    let (_dir, path) = temp();
    let store = Store::open(&path).unwrap();
    store.insert_job(&job("a", 1)).unwrap();
    store.insert_job(&job("b", 2)).unwrap();
    // "a" is a prefix of "ab": the composite key must still keep them apart.
    store.insert_job(&job("ab", 3)).unwrap();

    assert!(store.events("a").unwrap().is_empty());
    assert_eq!(store.append_event("a", b"a0").unwrap(), 0);
    assert_eq!(store.append_event("b", b"b0").unwrap(), 0);
    assert_eq!(store.append_event("a", b"a1").unwrap(), 1);
    assert_eq!(store.append_event("ab", b"ab0").unwrap(), 0);
    assert_eq!(store.append_event("a", b"").unwrap(), 2);
    assert_eq!(store.append_event("b", b"b1").unwrap(), 1);

    assert_eq!(store.events("a").unwrap(), vec![b"a0".to_vec(), b"a1".to_vec(), vec![]]);
    assert_eq!(store.events("b").unwrap(), vec![b"b0".to_vec(), b"b1".to_vec()]);
    assert_eq!(store.events("ab").unwrap(), vec![b"ab0".to_vec()]);

    // Ordering is numeric, not textual: seq 10 comes after seq 9.
    for i in 3..12u64 {
        assert_eq!(store.append_event("a", &i.to_le_bytes()).unwrap(), i);
    }
    let evs = store.events("a").unwrap();
    assert_eq!(evs.len(), 12);
    for (i, e) in evs.iter().enumerate().skip(3) {
        assert_eq!(e.as_slice(), (i as u64).to_le_bytes());
    }
}

#[test]
fn concurrent_appends_from_threads_get_distinct_consecutive_seqs() {
    let (_dir, path) = temp();
    let store = Arc::new(Store::open(&path).unwrap());
    store.insert_job(&job("j", 1)).unwrap();
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                (0..10u8)
                    .map(|i| (store.append_event("j", &[t, i]).unwrap(), [t, i]))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut by_seq: Vec<(u64, [u8; 2])> =
        threads.into_iter().flat_map(|h| h.join().unwrap()).collect();
    by_seq.sort();
    let seqs: Vec<u64> = by_seq.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (0..40).collect::<Vec<_>>());
    let stored = store.events("j").unwrap();
    let expected: Vec<Vec<u8>> = by_seq.iter().map(|(_, e)| e.to_vec()).collect();
    assert_eq!(stored, expected, "each event sits at the seq it was given");
}

#[test]
fn rounds_round_trip_and_last_round() {
    let (_dir, path) = temp();
    let store = Store::open(&path).unwrap();
    store.insert_job(&job("j", 1)).unwrap();
    store.insert_job(&job("k", 2)).unwrap();
    assert_eq!(store.last_round("j").unwrap(), None);

    let m0 = vec![0.5f32, -1.25, f32::MAX, f32::MIN_POSITIVE, 0.0];
    store.put_round("j", 0, &m0, r#"{"round":0}"#).unwrap();
    store.put_round("j", 1, &[], r#"{"round":1}"#).unwrap();
    store.put_round("j", 300, &[3.0], r#"{"round":300}"#).unwrap();
    store.put_round("k", 7, &[7.0], r#"{"round":7}"#).unwrap();

    assert_eq!(store.round_model("j", 0).unwrap(), Some(m0.clone()));
    assert_eq!(store.round_model("j", 1).unwrap(), Some(vec![]));
    assert_eq!(store.round_model("j", 2).unwrap(), None);
    assert_eq!(store.round_record("j", 300).unwrap().as_deref(), Some(r#"{"round":300}"#));
    assert_eq!(store.round_record("j", 2).unwrap(), None);
    // Numeric order: 300 > 1 even though "300" < "1…" would not hold textually for all.
    assert_eq!(store.last_round("j").unwrap(), Some(300));
    assert_eq!(store.last_round("k").unwrap(), Some(7));

    let err = store.put_round("j", 0, &[9.9], "{}").unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    assert!(err.to_string().contains("round 0"), "{err}");
    assert_eq!(store.round_model("j", 0).unwrap(), Some(m0), "a refused round changes nothing");
    assert_eq!(store.round_record("j", 0).unwrap().as_deref(), Some(r#"{"round":0}"#));
}

#[test]
fn put_round_writes_model_and_record_together() {
    let (_dir, path) = temp();
    {
        let store = Store::open(&path).unwrap();
        store.insert_job(&job("j", 1)).unwrap();
        store.put_round("j", 4, &[1.0, 2.0], r#"{"loss":0.3}"#).unwrap();
    }
    // Read the raw tables: both halves are present, in the same committed state.
    let db = Database::create(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let models = txn.open_table(ROUND_MODELS).unwrap();
    let records = txn.open_table(ROUND_RECORDS).unwrap();
    let key = (b"j".as_slice(), 4u32);
    assert_eq!(models.get(key).unwrap().unwrap().value().len(), 8);
    assert_eq!(records.get(key).unwrap().unwrap().value(), br#"{"loss":0.3}"#);
    assert_eq!(models.len().unwrap(), 1);
    assert_eq!(records.len().unwrap(), 1);
}

#[test]
fn results_round_trip_and_set_finished() {
    let (_dir, path) = temp();
    let store = Store::open(&path).unwrap();
    store.insert_job(&job("j", 1)).unwrap();
    assert_eq!(store.result("j").unwrap(), None);
    store.put_result("j", &[0, 159, 146, 150], r#"{"auc":0.81}"#).unwrap();
    assert_eq!(
        store.result("j").unwrap(),
        Some((vec![0, 159, 146, 150], r#"{"auc":0.81}"#.to_string()))
    );
    assert_eq!(store.job("j").unwrap().unwrap().status, JobStatus::Finished);
}

#[test]
fn a_failed_call_rolls_back_everything_it_did() {
    // put_result sets the status before it finds the result already there; the refusal must
    // undo that status change too, since the whole call is one transaction.
    let (_dir, path) = temp();
    let store = Store::open(&path).unwrap();
    store.insert_job(&job("j", 1)).unwrap();
    store.put_result("j", b"model-1", "{}").unwrap();
    store.set_status("j", &JobStatus::Running).unwrap();
    let err = store.put_result("j", b"model-2", r#"{"x":1}"#).unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    assert_eq!(store.job("j").unwrap().unwrap().status, JobStatus::Running);
    assert_eq!(store.result("j").unwrap(), Some((b"model-1".to_vec(), "{}".to_string())));
}

#[test]
fn everything_survives_reopen() {
    let (_dir, path) = temp();
    let a = job("a", 5);
    let b = job("b", 4);
    {
        let store = Store::open(&path).unwrap();
        store.insert_job(&a).unwrap();
        store.insert_job(&b).unwrap();
        store.append_event("a", b"e0").unwrap();
        store.append_event("a", b"e1").unwrap();
        store.put_round("a", 0, &[1.5, -2.5], r#"{"r":0}"#).unwrap();
        store.put_round("a", 1, &[3.5], r#"{"r":1}"#).unwrap();
        store.put_result("a", b"final", r#"{"ok":true}"#).unwrap();
        store
            .set_status("b", &JobStatus::Failed { reason: "site lost".into() })
            .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let mut a_done = a.clone();
    a_done.status = JobStatus::Finished;
    let mut b_failed = b.clone();
    b_failed.status = JobStatus::Failed { reason: "site lost".into() };
    assert_eq!(store.jobs().unwrap(), vec![a_done, b_failed]);
    assert_eq!(store.events("a").unwrap(), vec![b"e0".to_vec(), b"e1".to_vec()]);
    assert_eq!(store.round_model("a", 0).unwrap(), Some(vec![1.5, -2.5]));
    assert_eq!(store.round_record("a", 1).unwrap().as_deref(), Some(r#"{"r":1}"#));
    assert_eq!(store.last_round("a").unwrap(), Some(1));
    assert_eq!(
        store.result("a").unwrap(),
        Some((b"final".to_vec(), r#"{"ok":true}"#.to_string()))
    );
    // Counters continue after reopen rather than restarting.
    assert_eq!(store.append_event("a", b"e2").unwrap(), 2);
    store.insert_job(&job("c", 1)).unwrap();
    let ids: Vec<String> = store.jobs().unwrap().into_iter().map(|j| j.job_id).collect();
    assert_eq!(ids, ["a", "b", "c"]);
}

#[test]
fn model_blob_of_wrong_length_is_corrupt() {
    let (_dir, path) = temp();
    {
        let store = Store::open(&path).unwrap();
        store.insert_job(&job("j", 1)).unwrap();
    }
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(ROUND_MODELS)
            .unwrap()
            .insert((b"j".as_slice(), 0u32), [1u8, 2, 3, 4, 5].as_slice())
            .unwrap();
        txn.open_table(JOBS)
            .unwrap()
            .insert("bad", b"{not json".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(&path).unwrap();
    let err = store.round_model("j", 0).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("5 bytes"), "{err}");
    let err = store.job("bad").unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
}

#[test]
fn open_in_missing_directory_names_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-folder").join("state.redb");
    let msg = open_err(&path);
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("does not exist"), "{msg}");
    assert!(!path.parent().unwrap().exists(), "open must not create folders");
}

#[test]
fn open_in_read_only_directory_is_permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    fs::create_dir(&ro).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    let path = ro.join("state.redb");
    // Root (as in CI containers) ignores directory permissions. Probe whether this process can
    // create a file there anyway; if so the refusal cannot be observed and the assertion is
    // skipped rather than faked.
    let probe = ro.join("probe");
    let writable_anyway = fs::write(&probe, b"").is_ok();
    if writable_anyway {
        let _ = fs::remove_file(&probe);
        eprintln!("skipped: this user can write into a 0o555 directory (running as root)");
    } else {
        let msg = open_err(&path);
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("permission denied"), "{msg}");
    }
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn open_read_only_file_is_permission_denied_unless_root() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, path) = temp();
    drop(Store::open(&path).unwrap());
    fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).unwrap();
    // Same root caveat as above: root may open a 0o444 file for writing.
    if fs::OpenOptions::new().write(true).open(&path).is_ok() {
        eprintln!("skipped: this user can write a 0o444 file (running as root)");
    } else {
        let msg = open_err(&path);
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("permission denied"), "{msg}");
    }
}

#[test]
fn opening_a_folder_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let msg = open_err(dir.path());
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(msg.contains("folder"), "{msg}");
}

#[test]
fn random_bytes_file_is_refused_and_left_untouched() {
    let (_dir, path) = temp();
    // Deterministic "random" bytes (a simple LCG), 10 KiB.
    let mut x: u32 = 0x1234_5678;
    let bytes: Vec<u8> = (0..10 * 1024)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect();
    fs::write(&path, &bytes).unwrap();
    let msg = open_err(&path);
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("not a fedcare state file"), "{msg}");
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

#[test]
fn text_file_is_refused() {
    let (_dir, path) = temp();
    fs::write(&path, "[job]\nname = \"oops, the job spec\"\n").unwrap();
    let msg = open_err(&path);
    assert!(msg.contains("not a fedcare state file"), "{msg}");
}

#[test]
fn another_programs_redb_file_is_refused_and_left_untouched() {
    let (_dir, path) = temp();
    const OTHER: TableDefinition<&str, u64> = TableDefinition::new("inventory");
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(OTHER).unwrap().insert("bandages", 40).unwrap();
        txn.commit().unwrap();
    }
    let msg = open_err(&path);
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("not a fedcare state file"), "{msg}");
    assert!(msg.contains("inventory"), "{msg}");
    let db = Database::create(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let tables: Vec<String> = txn.list_tables().unwrap().map(|t| t.name().to_string()).collect();
    assert_eq!(tables, ["inventory"], "no fedcare tables were added");
}

#[test]
fn newer_schema_version_is_refused_and_left_untouched() {
    let (_dir, path) = temp();
    drop(Store::open(&path).unwrap());
    set_schema_version(&path, SCHEMA_VERSION + 1);
    let msg = open_err(&path);
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("newer version of fedcare"), "{msg}");
    assert!(msg.contains(&format!("version {}", SCHEMA_VERSION + 1)), "{msg}");
    assert_eq!(read_schema_version(&path), Some(SCHEMA_VERSION + 1));
}

#[test]
fn meta_without_version_is_refused() {
    let (_dir, path) = temp();
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap();
        txn.commit().unwrap();
    }
    let msg = open_err(&path);
    assert!(msg.contains("not a fedcare state file"), "{msg}");
}

#[test]
fn second_open_of_the_same_file_says_in_use() {
    let (_dir, path) = temp();
    let first = Store::open(&path).unwrap();
    first.insert_job(&job("j", 1)).unwrap();
    let msg = open_err(&path);
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("in use by another running fedcare coordinator"), "{msg}");
    // The refused open did not disturb the first one, and the lock goes with it.
    first.append_event("j", b"still fine").unwrap();
    drop(first);
    let again = Store::open(&path).unwrap();
    assert_eq!(again.events("j").unwrap(), vec![b"still fine".to_vec()]);
}

#[test]
fn empty_existing_file_is_initialised() {
    // A zero-length file (e.g. pre-created by an installer) is treated as new.
    let (_dir, path) = temp();
    fs::write(&path, b"").unwrap();
    let store = Store::open(&path).unwrap();
    assert!(store.jobs().unwrap().is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Every f32 bit pattern (NaNs, infinities, -0.0, subnormals) comes back bit-identical.
    #[test]
    fn f32_encoding_round_trips_bitwise(bits in proptest::collection::vec(any::<u32>(), 0..64)) {
        let values: Vec<f32> = bits.iter().map(|b| f32::from_bits(*b)).collect();
        let encoded = encode_f32s(&values);
        prop_assert_eq!(encoded.len(), values.len() * 4);
        let decoded = decode_f32s(&encoded).unwrap();
        let back: Vec<u32> = decoded.iter().map(|v| v.to_bits()).collect();
        prop_assert_eq!(back, bits);
    }

    #[test]
    fn f32_decoding_rejects_partial_values(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        prop_assert_eq!(decode_f32s(&bytes).is_some(), bytes.len() % 4 == 0);
    }
}

proptest! {
    // Each case creates and fsyncs a real file, so fewer cases.
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Arbitrary events for two jobs, interleaved arbitrarily, come back per job in append
    /// order with seqs 0, 1, 2, … — also after reopening the file.
    #[test]
    fn events_and_models_round_trip_through_the_file(
        appends in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..24),
        model in proptest::collection::vec(any::<u32>(), 0..100),
    ) {
        let (_dir, path) = temp();
        let mut expected: [Vec<Vec<u8>>; 2] = [vec![], vec![]];
        let ids = ["job-x", "job-y"];
        let model: Vec<f32> = model.into_iter().map(f32::from_bits).collect();
        {
            let store = Store::open(&path).unwrap();
            for id in ids {
                store.insert_job(&job(id, 0)).unwrap();
            }
            for (which, ev) in &appends {
                let i = usize::from(*which);
                let seq = store.append_event(ids[i], ev).unwrap();
                prop_assert_eq!(seq, expected[i].len() as u64);
                expected[i].push(ev.clone());
            }
            store.put_round(ids[0], 2, &model, "{}").unwrap();
        }
        let store = Store::open(&path).unwrap();
        for i in 0..2 {
            prop_assert_eq!(&store.events(ids[i]).unwrap(), &expected[i]);
        }
        let back: Vec<u32> =
            store.round_model(ids[0], 2).unwrap().unwrap().iter().map(|v| v.to_bits()).collect();
        let want: Vec<u32> = model.iter().map(|v| v.to_bits()).collect();
        prop_assert_eq!(back, want);
    }
}
