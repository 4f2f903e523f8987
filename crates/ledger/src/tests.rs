//! Unit tests of the ledger: durability across reopen, caps, crash-and-retry, damage.

use std::fs;
use std::path::{Path, PathBuf};

use fedcare_privacy::epsilon_of;
use tempfile::TempDir;

use super::*;

const DELTA: f64 = 1e-5;
const T0: u64 = 1_700_000_000_000;

fn dpsgd(steps: u64) -> Charge {
    Charge::SubsampledGaussian {
        noise_multiplier: 1.1,
        sampling_rate: 0.01,
        steps,
    }
}

fn gaussian(noise_multiplier: f64) -> Charge {
    Charge::Gaussian {
        noise_multiplier,
        count: 1,
    }
}

fn wide() -> Caps {
    Caps::new(100.0, 1000.0).unwrap()
}

fn release(tag: u8) -> Vec<u8> {
    (0..200u16)
        .map(|i| (i as u8).wrapping_mul(31) ^ tag)
        .collect()
}

/// A ledger path in a directory that does not exist yet (open must create it).
fn path_in(dir: &TempDir) -> PathBuf {
    dir.path().join("site").join("privacy").join("ledger.jsonl")
}

fn eps(charges: &[Charge]) -> f64 {
    epsilon_of(charges, DELTA).unwrap().0
}

/// Commits round `round` of job `job` (stage "update", record level, DP-SGD of 50 steps).
fn commit_round(
    l: &mut Ledger,
    job: &str,
    round: u32,
    caps: &Caps,
) -> Result<Committed, CommitError> {
    l.commit(
        job,
        Some(round),
        "update",
        Unit::Record,
        DELTA,
        dpsgd(50),
        &release(round as u8),
        caps,
        T0 + u64::from(round),
    )
}

/// Everything on disk: the ledger's bytes and the releases directory's file names.
fn snapshot(l: &Ledger) -> (Vec<u8>, Vec<String>) {
    let mut names: Vec<String> = fs::read_dir(l.releases_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    (fs::read(l.path()).unwrap(), names)
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    fs::write(
        path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

fn corrupt_line(err: LedgerError) -> (u64, Corruption) {
    match err {
        LedgerError::Corrupt { line, problem, .. } => (line, problem),
        other => panic!("expected a corrupt line, got {other:?}"),
    }
}

fn refusal(r: Result<Committed, CommitError>) -> Refusal {
    match r {
        Err(CommitError::Refused(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Three rounds of job-a (DP-SGD) and a statistics release plus one round of job-b (Gaussian).
fn populate(l: &mut Ledger) {
    for r in 1..=3 {
        commit_round(l, "job-a", r, &wide()).unwrap();
    }
    l.commit(
        "job-b",
        None,
        "statistics",
        Unit::Site,
        1e-6,
        gaussian(4.0),
        b"stats",
        &wide(),
        T0,
    )
    .unwrap();
    l.commit(
        "job-b",
        Some(1),
        "update",
        Unit::Site,
        1e-6,
        gaussian(2.0),
        &release(9),
        &wide(),
        T0,
    )
    .unwrap();
}

#[test]
fn commit_then_reopen_gives_the_same_spend() {
    let dir = TempDir::new().unwrap();
    let path = path_in(&dir);
    let mut l = Ledger::open(&path).unwrap();
    assert!(l.jobs().is_empty());
    assert_eq!(l.total_epsilon(), 0.0);
    populate(&mut l);
    let (jobs, total, entries) = (l.jobs(), l.total_epsilon(), l.entries().to_vec());
    assert_eq!(jobs.len(), 2);
    assert_eq!(entries.len(), 5);
    assert_eq!(l.job_spend("job-a").unwrap().rounds_charged, 3);
    let b = l.job_spend("job-b").unwrap();
    assert_eq!(
        (b.entries, b.rounds_charged, b.unit, b.delta),
        (2, 1, Unit::Site, 1e-6)
    );
    assert!(l.job_spend("job-c").is_none());
    drop(l);

    let l = Ledger::open(&path).unwrap();
    assert!(l.notes().is_empty());
    assert_eq!(l.jobs(), jobs);
    assert_eq!(l.total_epsilon().to_bits(), total.to_bits());
    assert_eq!(l.entries(), entries.as_slice());
    assert_eq!(l.verify_releases().unwrap(), 5);
    drop(l);

    let r = Ledger::open_read_only(&path).unwrap();
    assert_eq!(r.jobs(), jobs);
    assert_eq!(
        r.committed_release("job-b", None, "statistics")
            .unwrap()
            .unwrap(),
        b"stats"
    );
}

#[test]
fn epsilons_equal_epsilon_of_the_same_charges() {
    let dir = TempDir::new().unwrap();
    let mut l = Ledger::open(&path_in(&dir)).unwrap();
    for r in 1..=3u32 {
        let c = commit_round(&mut l, "job-a", r, &wide()).unwrap();
        let expected = eps(&vec![dpsgd(50); r as usize]);
        assert_eq!(c.job_epsilon_after, expected, "round {r}");
        assert_eq!(c.total_epsilon_after, expected, "round {r}");
    }
    l.commit(
        "job-b",
        None,
        "statistics",
        Unit::Site,
        1e-6,
        gaussian(4.0),
        b"stats",
        &wide(),
        T0,
    )
    .unwrap();
    l.commit(
        "job-b",
        Some(1),
        "update",
        Unit::Site,
        1e-6,
        gaussian(2.0),
        &release(9),
        &wide(),
        T0,
    )
    .unwrap();

    let a = eps(&[dpsgd(50), dpsgd(50), dpsgd(50)]);
    let b = epsilon_of(&[gaussian(4.0), gaussian(2.0)], 1e-6).unwrap().0;
    assert!(a > 0.1 && b > 0.1, "{a} {b}");
    assert_eq!(l.job_spend("job-a").unwrap().epsilon, a);
    assert_eq!(l.job_spend("job-b").unwrap().epsilon, b);
    assert_eq!(l.total_epsilon(), a + b);
    assert_eq!(l.total_delta(), DELTA + 1e-6);
    // Basic composition, not RDP across jobs: strictly more than composing everything at once.
    assert!(
        l.total_epsilon()
            > eps(&[
                dpsgd(50),
                dpsgd(50),
                dpsgd(50),
                gaussian(4.0),
                gaussian(2.0)
            ])
    );

    // And the file says the same, in the documented field names.
    let last: serde_json::Value = serde_json::from_str(lines(l.path()).last().unwrap()).unwrap();
    assert_eq!(last["job_epsilon_after"].as_f64().unwrap(), b);
    assert_eq!(last["total_epsilon_after"].as_f64().unwrap(), a + b);
    assert_eq!(last["charge"]["mechanism"], "gaussian");
    assert_eq!(last["release_sha256"], store::sha256_hex(&release(9)));
    assert_eq!(last["release_bytes"], 200);
    assert_eq!(last["round"], 1);
    assert_eq!(last["unit"], "site");
}

#[test]
fn a_commit_over_the_per_job_cap_is_refused_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let mut l = Ledger::open(&path_in(&dir)).unwrap();
    let (e2, e3) = (
        eps(&[dpsgd(50), dpsgd(50)]),
        eps(&[dpsgd(50), dpsgd(50), dpsgd(50)]),
    );
    let caps = Caps::new((e2 + e3) / 2.0, 1000.0).unwrap();
    commit_round(&mut l, "job-a", 1, &caps).unwrap();
    commit_round(&mut l, "job-a", 2, &caps).unwrap();
    let before = snapshot(&l);

    let r = refusal(commit_round(&mut l, "job-a", 3, &caps));
    match &r {
        Refusal::JobCap { job, epsilon, cap } => {
            assert_eq!(job, "job-a");
            assert_eq!(*epsilon, e3);
            assert_eq!(*cap, (e2 + e3) / 2.0);
        }
        other => panic!("{other:?}"),
    }
    let msg = r.to_string();
    assert!(
        msg.contains("per-job cap") && msg.contains(&format!("by {:.6}", e3 - (e2 + e3) / 2.0)),
        "{msg}"
    );
    assert_eq!(snapshot(&l), before, "a refused commit wrote something");
    assert_eq!(l.job_spend("job-a").unwrap().epsilon, e2);
    assert_eq!(
        l.committed_release("job-a", Some(3), "update").unwrap(),
        None
    );
    drop(l);
    assert_eq!(Ledger::open(&path_in(&dir)).unwrap().entries().len(), 2);
}

#[test]
fn a_commit_over_the_total_cap_is_refused_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let mut l = Ledger::open(&path_in(&dir)).unwrap();
    let a = eps(&[dpsgd(50)]);
    let b = epsilon_of(&[gaussian(2.0)], 1e-6).unwrap().0;
    let caps = Caps::new(100.0, a + b / 2.0).unwrap();
    commit_round(&mut l, "job-a", 1, &caps).unwrap();
    let before = snapshot(&l);

    let r = refusal(l.commit(
        "job-b",
        Some(1),
        "update",
        Unit::Site,
        1e-6,
        gaussian(2.0),
        &release(1),
        &caps,
        T0,
    ));
    assert_eq!(
        r,
        Refusal::TotalCap {
            job: "job-b".into(),
            total: a + b,
            cap: a + b / 2.0
        }
    );
    assert!(r.to_string().contains("total cap"), "{r}");
    assert_eq!(snapshot(&l), before);
    assert!(l.job_spend("job-b").is_none());
    assert_eq!(l.total_epsilon(), a);
    // A cheaper release of job-b still fits.
    let small = Charge::Gaussian {
        noise_multiplier: 50.0,
        count: 1,
    };
    assert!(epsilon_of(std::slice::from_ref(&small), 1e-6).unwrap().0 < b / 2.0);
    l.commit(
        "job-b",
        Some(1),
        "update",
        Unit::Site,
        1e-6,
        small,
        &release(1),
        &caps,
        T0,
    )
    .unwrap();
}

#[test]
fn crash_between_recording_and_sending_resends_the_same_release_and_spends_nothing() {
    let dir = TempDir::new().unwrap();
    let path = path_in(&dir);
    let sent = release(7);
    let mut l = Ledger::open(&path).unwrap();
    commit_round(&mut l, "job-a", 1, &wide()).unwrap();
    let first = l
        .commit(
            "job-a",
            Some(2),
            "update",
            Unit::Record,
            DELTA,
            dpsgd(50),
            &sent,
            &wide(),
            T0,
        )
        .unwrap();
    assert!(first.newly_recorded);
    // The process dies here, before sending.
    drop(l);

    let mut l = Ledger::open(&path).unwrap();
    let spent = l.job_spend("job-a").unwrap();
    let before = snapshot(&l);
    // The agent asks first, and gets the very bytes it was about to send.
    let stored = l
        .committed_release("job-a", Some(2), "update")
        .unwrap()
        .unwrap();
    assert_eq!(stored, sent);
    // Committing the identical release again is idempotent: same entry, nothing written.
    let again = l
        .commit(
            "job-a",
            Some(2),
            "update",
            Unit::Record,
            DELTA,
            dpsgd(50),
            &stored,
            &wide(),
            T0 + 99,
        )
        .unwrap();
    assert_eq!(
        again,
        Committed {
            newly_recorded: false,
            ..first.clone()
        }
    );
    assert_eq!(snapshot(&l), before);
    assert_eq!(l.job_spend("job-a").unwrap(), spent);

    // A fresh release (new noise) for the same round would spend again: refused.
    let r = refusal(l.commit(
        "job-a",
        Some(2),
        "update",
        Unit::Record,
        DELTA,
        dpsgd(50),
        &release(8),
        &wide(),
        T0,
    ));
    assert_eq!(
        r,
        Refusal::AlreadyCommitted {
            job: "job-a".into(),
            round: Some(2),
            stage: "update".into(),
            seq: first.seq
        }
    );
    // So would the same bytes under another charge.
    let r = refusal(l.commit(
        "job-a",
        Some(2),
        "update",
        Unit::Record,
        DELTA,
        dpsgd(51),
        &sent,
        &wide(),
        T0,
    ));
    assert!(matches!(r, Refusal::AlreadyCommitted { .. }), "{r:?}");
    assert_eq!(snapshot(&l), before);
    assert_eq!(l.job_spend("job-a").unwrap(), spent);

    // Even with a per-job cap now below the spend, the idempotent retry succeeds: it spends nothing.
    let tight = Caps::new(spent.epsilon / 2.0, 1000.0).unwrap();
    assert!(
        !l.commit(
            "job-a",
            Some(2),
            "update",
            Unit::Record,
            DELTA,
            dpsgd(50),
            &sent,
            &tight,
            T0
        )
        .unwrap()
        .newly_recorded
    );
}

#[test]
fn a_lost_release_is_restored_by_an_identical_retry() {
    let dir = TempDir::new().unwrap();
    let mut l = Ledger::open(&path_in(&dir)).unwrap();
    let c = commit_round(&mut l, "job-a", 1, &wide()).unwrap();
    fs::remove_file(store::release_path(l.releases_dir(), &c.release_sha256)).unwrap();
    assert!(matches!(
        l.committed_release("job-a", Some(1), "update"),
        Err(LedgerError::ReleaseMissing { seq: 0, .. })
    ));
    assert!(
        !commit_round(&mut l, "job-a", 1, &wide())
            .unwrap()
            .newly_recorded
    );
    assert_eq!(
        l.committed_release("job-a", Some(1), "update")
            .unwrap()
            .unwrap(),
        release(1)
    );
}

#[test]
fn a_tampered_or_missing_release_is_a_typed_error() {
    let dir = TempDir::new().unwrap();
    let mut l = Ledger::open(&path_in(&dir)).unwrap();
    let c = commit_round(&mut l, "job-a", 1, &wide()).unwrap();
    let file = store::release_path(l.releases_dir(), &c.release_sha256);
    assert_eq!(
        file.file_name().unwrap().to_str().unwrap(),
        format!("{}.bin", store::sha256_hex(&release(1)))
    );

    let mut bytes = fs::read(&file).unwrap();
    bytes[17] ^= 1;
    fs::write(&file, &bytes).unwrap();
    match l.committed_release("job-a", Some(1), "update") {
        Err(LedgerError::ReleaseMismatch {
            seq,
            expected_sha256,
            found_sha256,
            expected_bytes,
            found_bytes,
            ..
        }) => {
            assert_eq!(seq, 0);
            assert_eq!(expected_sha256, c.release_sha256);
            assert_eq!(found_sha256, store::sha256_hex(&bytes));
            assert_eq!((expected_bytes, found_bytes), (200, 200));
        }
        other => panic!("{other:?}"),
    }
    assert!(l.verify_releases().is_err());

    fs::remove_file(&file).unwrap();
    assert!(matches!(
        l.committed_release("job-a", Some(1), "update"),
        Err(LedgerError::ReleaseMissing { .. })
    ));
    assert_eq!(
        l.committed_release("job-a", Some(2), "update").unwrap(),
        None
    );
}

#[test]
fn a_truncated_last_line_is_tolerated_with_a_note() {
    let dir = TempDir::new().unwrap();
    let path = path_in(&dir);
    let mut l = Ledger::open(&path).unwrap();
    for r in 1..=3 {
        commit_round(&mut l, "job-a", r, &wide()).unwrap();
    }
    let two = l
        .job_spend("job-a")
        .map(|_| eps(&[dpsgd(50), dpsgd(50)]))
        .unwrap();
    drop(l);
    let full = fs::read(&path).unwrap();
    let good = full[..full.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    let third_len = full.len() - good;

    // Every strict prefix of the third line is a torn write: dropped.
    for cut in good + 1..full.len() - 1 {
        fs::write(&path, &full[..cut]).unwrap();
        let r = Ledger::open_read_only(&path).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(r.entries().len(), 2, "cut at {cut}");
        assert_eq!(
            r.notes(),
            &[OpenNote::TruncatedLastLine {
                line: 3,
                bytes: (cut - good) as u64,
                removed: false
            }]
        );
        assert_eq!(r.job_spend("job-a").unwrap().epsilon, two);
    }
    // The whole third line without its `\n` is counted (it may have been acknowledged).
    fs::write(&path, &full[..full.len() - 1]).unwrap();
    let r = Ledger::open_read_only(&path).unwrap();
    assert_eq!(r.entries().len(), 3);
    assert_eq!(
        r.notes(),
        &[OpenNote::UnterminatedLastLine {
            line: 3,
            completed: false
        }]
    );
    drop(r);
    let mut with_zeros = full[..full.len() - 1].to_vec();
    with_zeros.extend([0u8; 7]);
    fs::write(&path, &with_zeros).unwrap();
    let l = Ledger::open(&path).unwrap();
    assert_eq!(l.entries().len(), 3);
    assert_eq!(
        l.notes(),
        &[OpenNote::UnterminatedLastLine {
            line: 3,
            completed: true
        }]
    );
    assert_eq!(
        l.committed_release("job-a", Some(3), "update")
            .unwrap()
            .unwrap(),
        release(3)
    );
    drop(l);
    assert_eq!(
        fs::read(&path).unwrap(),
        full,
        "the line end was not restored"
    );

    // A crash that zero-filled the rest of the block.
    let mut zero_filled = full[..good + 40].to_vec();
    zero_filled.extend([0u8; 100]);
    fs::write(&path, &zero_filled).unwrap();

    // Opening for writing removes it, durably, and says so.
    let mut l = Ledger::open(&path).unwrap();
    assert_eq!(
        l.notes(),
        &[OpenNote::TruncatedLastLine {
            line: 3,
            bytes: 140,
            removed: true
        }]
    );
    assert!(l.notes()[0].to_string().contains("incomplete line 3"));
    assert_eq!(fs::read(&path).unwrap(), &full[..good]);
    // The round was never sent: it can be committed again, and the ledger is whole again.
    commit_round(&mut l, "job-a", 3, &wide()).unwrap();
    drop(l);
    assert_eq!(fs::read(&path).unwrap().len(), good + third_len);
    let l = Ledger::open(&path).unwrap();
    assert!(l.notes().is_empty());
    assert_eq!(l.entries().len(), 3);
}

#[test]
fn a_corrupted_middle_line_is_an_error_naming_it() {
    let dir = TempDir::new().unwrap();
    let path = path_in(&dir);
    let mut l = Ledger::open(&path).unwrap();
    for r in 1..=3 {
        commit_round(&mut l, "job-a", r, &wide()).unwrap();
    }
    drop(l);
    let good = lines(&path);

    let check = |edited: Vec<String>, line: u64| -> Corruption {
        write_lines(&path, &edited);
        let bytes = fs::read(&path).unwrap();
        let (l1, p1) = corrupt_line(Ledger::open_read_only(&path).unwrap_err());
        let (l2, p2) = corrupt_line(Ledger::open(&path).unwrap_err());
        assert_eq!((l1, &p1), (l2, &p2));
        assert_eq!(l1, line, "{p1}");
        assert_eq!(
            fs::read(&path).unwrap(),
            bytes,
            "opening a damaged ledger changed it"
        );
        p1
    };
    let with = |i: usize, s: String| {
        let mut v = good.clone();
        v[i] = s;
        v
    };

    // Not JSON.
    let p = check(with(1, good[1][..40].to_owned()), 2);
    assert!(matches!(p, Corruption::Unparsable(_)), "{p:?}");
    // An edited number.
    let e2 = eps(&[dpsgd(50), dpsgd(50)]);
    let edited = good[1].replace(
        &format!("\"job_epsilon_after\":{e2}"),
        "\"job_epsilon_after\":0.1",
    );
    assert_ne!(edited, good[1]);
    let p = check(with(1, edited), 2);
    assert!(
        matches!(
            p,
            Corruption::EpsilonMismatch {
                field: "job_epsilon_after",
                stored: 0.1,
                ..
            }
        ),
        "{p:?}"
    );
    // An edited charge: the stored epsilons no longer follow from it.
    let p = check(with(1, good[1].replace("\"steps\":50", "\"steps\":5")), 2);
    assert!(matches!(p, Corruption::EpsilonMismatch { .. }), "{p:?}");
    // A deleted line.
    let p = check(vec![good[0].clone(), good[2].clone()], 2);
    assert_eq!(
        p,
        Corruption::Seq {
            expected: 1,
            found: 2
        }
    );
    // A changed delta.
    let (d5, d6) = (
        serde_json::to_string(&1e-5).unwrap(),
        serde_json::to_string(&1e-6).unwrap(),
    );
    let edited = good[1].replace(&format!("\"delta\":{d5}"), &format!("\"delta\":{d6}"));
    assert_ne!(edited, good[1]);
    let p = check(with(1, edited), 2);
    assert_eq!(
        p,
        Corruption::DeltaMismatch {
            recorded: 1e-5,
            found: 1e-6
        }
    );
    // A duplicated charge (renumbered).
    let p = check(with(2, good[1].replace("\"seq\":1", "\"seq\":2")), 3);
    assert_eq!(p, Corruption::Duplicate { first_line: 2 });
    // A release hash that is not one (it would be used as a file name).
    let sha = store::sha256_hex(&release(2));
    let p = check(with(1, good[1].replace(&sha, "../../etc/passwd")), 2);
    assert!(
        matches!(
            p,
            Corruption::BadField {
                field: "release_sha256",
                ..
            }
        ),
        "{p:?}"
    );
    // An unknown field.
    let p = check(with(0, good[0].replacen('{', "{\"extra\":1,", 1)), 1);
    assert!(matches!(p, Corruption::Unparsable(_)), "{p:?}");
    // An empty line.
    let p = check(with(1, String::new()), 2);
    assert_eq!(p, Corruption::Empty);
    // A last line without a line end that is not a prefix of an entry is damage, not a crash.
    write_lines(&path, &good);
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(b"hello");
    fs::write(&path, &bytes).unwrap();
    let (line, _) = corrupt_line(Ledger::open(&path).unwrap_err());
    assert_eq!(line, 4);
    let err = Ledger::open_read_only(&path).unwrap_err();
    assert!(err.to_string().contains("line 4"), "{err}");
    assert_eq!(err.line(), Some(4));
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

#[test]
fn check_plan_refuses_a_plan_over_the_cap() {
    let dir = TempDir::new().unwrap();
    let mut l = Ledger::open(&path_in(&dir)).unwrap();
    let plan = vec![dpsgd(50); 100];
    let planned = eps(&plan);

    let caps = Caps::new(planned / 2.0, 1000.0).unwrap();
    let r = l
        .check_plan("job-a", Unit::Record, DELTA, &plan, &caps)
        .unwrap_err();
    assert_eq!(
        r,
        Refusal::JobCap {
            job: "job-a".into(),
            epsilon: planned,
            cap: planned / 2.0
        }
    );
    assert!(
        r.to_string().contains(&format!("by {:.6}", planned / 2.0)),
        "{r}"
    );
    assert_eq!(
        l.check_plan("job-a", Unit::Record, DELTA, &plan, &wide())
            .unwrap(),
        planned
    );
    assert_eq!(
        l.check_plan("job-a", Unit::Record, DELTA, &[], &wide())
            .unwrap(),
        0.0
    );

    // The total cap counts what other jobs already spent.
    commit_round(&mut l, "job-a", 1, &wide()).unwrap();
    let spent = l.total_epsilon();
    let before = snapshot(&l);
    let caps = Caps::new(100.0, spent + planned / 2.0).unwrap();
    let r = l
        .check_plan("job-b", Unit::Record, DELTA, &plan, &caps)
        .unwrap_err();
    assert_eq!(
        r,
        Refusal::TotalCap {
            job: "job-b".into(),
            total: spent + planned,
            cap: spent + planned / 2.0
        }
    );
    // ... but a job's own earlier rounds are part of its plan, not added on top.
    let caps = Caps::new(100.0, planned).unwrap();
    assert_eq!(
        l.check_plan("job-a", Unit::Record, DELTA, &plan, &caps)
            .unwrap(),
        planned
    );
    // A plan at another delta or unit for a job already charged is refused.
    let r = l
        .check_plan("job-a", Unit::Record, 1e-6, &plan, &wide())
        .unwrap_err();
    assert!(
        matches!(
            r,
            Refusal::DeltaMismatch {
                recorded: 1e-5,
                given: 1e-6,
                ..
            }
        ),
        "{r:?}"
    );
    let r = l
        .check_plan("job-a", Unit::Site, DELTA, &plan, &wide())
        .unwrap_err();
    assert!(matches!(r, Refusal::UnitMismatch { .. }), "{r:?}");
    let r = l
        .check_plan("job-c", Unit::Site, 1.5, &plan, &wide())
        .unwrap_err();
    assert!(matches!(r, Refusal::InvalidCharge { .. }), "{r:?}");
    assert_eq!(snapshot(&l), before, "check_plan wrote something");
}

#[test]
fn a_job_keeps_one_delta_one_unit_and_valid_charges() {
    let dir = TempDir::new().unwrap();
    let mut l = Ledger::open(&path_in(&dir)).unwrap();
    commit_round(&mut l, "job-a", 1, &wide()).unwrap();
    let before = snapshot(&l);
    let r = refusal(l.commit(
        "job-a",
        Some(2),
        "update",
        Unit::Record,
        2e-5,
        dpsgd(50),
        b"x",
        &wide(),
        T0,
    ));
    assert_eq!(
        r,
        Refusal::DeltaMismatch {
            job: "job-a".into(),
            recorded: 1e-5,
            given: 2e-5
        }
    );
    let r = refusal(l.commit(
        "job-a",
        Some(2),
        "update",
        Unit::Site,
        DELTA,
        dpsgd(50),
        b"x",
        &wide(),
        T0,
    ));
    assert_eq!(
        r,
        Refusal::UnitMismatch {
            job: "job-a".into(),
            recorded: Unit::Record,
            given: Unit::Site
        }
    );
    let zero = Charge::Gaussian {
        noise_multiplier: 1.0,
        count: 0,
    };
    let r = refusal(l.commit(
        "job-a",
        Some(2),
        "update",
        Unit::Record,
        DELTA,
        zero,
        b"x",
        &wide(),
        T0,
    ));
    assert!(matches!(r, Refusal::InvalidCharge { .. }), "{r:?}");
    let r = refusal(l.commit(
        "job-b",
        Some(1),
        "update",
        Unit::Record,
        1.0,
        dpsgd(1),
        b"x",
        &wide(),
        T0,
    ));
    assert!(
        matches!(
            r,
            Refusal::InvalidCharge {
                source: PrivacyError::InvalidDelta(_),
                ..
            }
        ),
        "{r:?}"
    );
    let r = refusal(l.commit(
        "",
        Some(1),
        "update",
        Unit::Record,
        DELTA,
        dpsgd(1),
        b"x",
        &wide(),
        T0,
    ));
    assert!(
        matches!(r, Refusal::InvalidName { what: "job", .. }),
        "{r:?}"
    );
    let r = refusal(l.commit(
        "job-b",
        Some(1),
        "up\ndate",
        Unit::Record,
        DELTA,
        dpsgd(1),
        b"x",
        &wide(),
        T0,
    ));
    assert!(
        matches!(r, Refusal::InvalidName { what: "stage", .. }),
        "{r:?}"
    );
    assert_eq!(snapshot(&l), before);
}

#[test]
fn one_writer_at_a_time_but_readers_may_look() {
    let dir = TempDir::new().unwrap();
    let path = path_in(&dir);
    let mut l = Ledger::open(&path).unwrap();
    commit_round(&mut l, "job-a", 1, &wide()).unwrap();
    assert!(matches!(
        Ledger::open(&path),
        Err(LedgerError::Locked { .. })
    ));
    let mut r = Ledger::open_read_only(&path).unwrap();
    assert_eq!(r.jobs(), l.jobs());
    let e = r
        .commit(
            "job-a",
            Some(2),
            "update",
            Unit::Record,
            DELTA,
            dpsgd(50),
            b"x",
            &wide(),
            T0,
        )
        .unwrap_err();
    assert!(
        matches!(e, CommitError::Ledger(LedgerError::ReadOnly { .. })),
        "{e:?}"
    );
    drop(l);
    Ledger::open(&path).unwrap();
    assert!(Ledger::open_read_only(&dir.path().join("missing.jsonl")).is_err());
}

#[test]
fn a_ledger_edited_behind_the_writers_back_is_not_appended_to() {
    let dir = TempDir::new().unwrap();
    let path = path_in(&dir);
    let mut l = Ledger::open(&path).unwrap();
    commit_round(&mut l, "job-a", 1, &wide()).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let edited = bytes.len() - 5;
    bytes[edited] = b'7';
    fs::write(&path, &bytes).unwrap();
    let e = commit_round(&mut l, "job-a", 2, &wide()).unwrap_err();
    assert!(
        matches!(
            e,
            CommitError::Ledger(LedgerError::ModifiedSinceOpen { .. })
        ),
        "{e:?}"
    );
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

#[test]
fn caps_are_finite_and_positive() {
    for (j, t) in [
        (0.0, 1.0),
        (1.0, -1.0),
        (f64::NAN, 1.0),
        (1.0, f64::INFINITY),
    ] {
        assert!(Caps::new(j, t).is_err(), "{j} {t}");
    }
    let c = Caps::new(3.0, 10.0).unwrap();
    assert_eq!(
        (c.max_epsilon_per_job(), c.max_epsilon_total()),
        (3.0, 10.0)
    );
    let parsed: Caps =
        serde_json::from_str(r#"{"max_epsilon_per_job":3.0,"max_epsilon_total":10.0}"#).unwrap();
    assert_eq!(parsed, c);
    let e = serde_json::from_str::<Caps>(r#"{"max_epsilon_per_job":0.0,"max_epsilon_total":10.0}"#)
        .unwrap_err();
    assert!(e.to_string().contains("max_epsilon_per_job"), "{e}");
    assert!(
        serde_json::from_str::<Caps>(r#"{"max_epsilon_per_job":1,"max_epsilon_total":1,"x":1}"#)
            .is_err()
    );
}

#[test]
fn the_report_shows_jobs_entries_and_total() {
    let dir = TempDir::new().unwrap();
    let mut l = Ledger::open(&path_in(&dir)).unwrap();
    assert!(l.render_text().contains("No privacy spent"));
    populate(&mut l);
    let text = l.render_text();
    let a = eps(&[dpsgd(50), dpsgd(50), dpsgd(50)]);
    let b = epsilon_of(&[gaussian(4.0), gaussian(2.0)], 1e-6).unwrap().0;
    let job_a = text
        .lines()
        .find(|s| s.trim_start().starts_with("job-a "))
        .unwrap();
    let cells: Vec<&str> = job_a.split_whitespace().collect();
    assert_eq!(
        cells,
        ["job-a", "record", "1e-5", &format!("{a:.6}"), "3", "3"]
    );
    let stats = text.lines().find(|s| s.contains("statistics")).unwrap();
    let cells: Vec<&str> = stats.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "3",
            "2023-11-14",
            "22:13:20Z",
            "job-b",
            "-",
            "statistics",
            "gaussian",
            "count=1",
            "noise_multiplier=4.0"
        ]
        .into_iter()
        .map(str::to_owned)
        .chain([
            format!("{:.6}", epsilon_of(&[gaussian(4.0)], 1e-6).unwrap().0),
            format!("{:.6}", a + epsilon_of(&[gaussian(4.0)], 1e-6).unwrap().0)
        ])
        .collect::<Vec<_>>()
    );
    assert!(text.contains("sampling_rate=0.01 steps=50"), "{text}");
    assert!(
        text.contains(&format!(
            "Total: epsilon {:.6}, delta 1.1e-5, over 2 jobs",
            a + b
        )),
        "{text}"
    );

    let j = l.to_json();
    assert_eq!(j["total"]["epsilon"].as_f64().unwrap(), a + b);
    assert_eq!(j["total"]["jobs"], 2);
    assert_eq!(j["jobs"][0]["job"], "job-a");
    assert_eq!(j["jobs"][0]["epsilon"].as_f64().unwrap(), a);
    assert_eq!(j["jobs"][0]["rounds_charged"], 3);
    assert_eq!(j["jobs"][1]["unit"], "site");
    assert_eq!(j["entries"].as_array().unwrap().len(), 5);
    assert_eq!(j["entries"][3]["round"], serde_json::Value::Null);
    assert_eq!(j["notes"].as_array().unwrap().len(), 0);
}

#[test]
fn times_are_shown_in_utc() {
    assert_eq!(render::utc(0), "1970-01-01 00:00:00Z");
    assert_eq!(render::utc(T0), "2023-11-14 22:13:20Z");
    assert_eq!(render::utc(951_782_400_000), "2000-02-29 00:00:00Z");
    assert_eq!(render::utc(4_102_444_799_999), "2099-12-31 23:59:59Z");
}

#[test]
fn small_numbers_are_shown_short() {
    assert_eq!(render::sci(1e-5), "1e-5");
    assert_eq!(render::sci(1e-5 + 1e-6), "1.1e-5");
    assert_eq!(render::sci(2.5e-7), "2.5e-7");
    assert_eq!(render::sci(0.0), "0e0");
}

#[test]
fn every_prefix_of_an_entry_is_a_torn_write_and_other_tails_are_not() {
    // Numbers in exponent form too (`1e-12`, `2.5e-7`): a cut after `e` or `-` is a torn write.
    let entry = Entry {
        seq: 12,
        time_ms: T0,
        job: "jöb-é".into(),
        round: None,
        stage: "statistics".into(),
        unit: Unit::Site,
        delta: 1e-12,
        charge: Charge::SubsampledGaussian {
            noise_multiplier: 0.7,
            sampling_rate: 2.5e-7,
            steps: 3,
        },
        release_sha256: store::sha256_hex(b""),
        release_bytes: 0,
        job_epsilon_after: 1.25e-3,
        total_epsilon_after: 12.5,
    };
    let line = serde_json::to_string(&entry).unwrap();
    assert!(line.contains("e-12") && line.contains("e-7"), "{line}");
    let bytes = line.as_bytes();
    for cut in 0..bytes.len() {
        assert!(
            is_torn_write(&bytes[..cut]),
            "cut at {cut}: {:?}",
            String::from_utf8_lossy(&bytes[..cut])
        );
    }
    // A whole entry is not a torn write (it is counted, see `Tail::Unterminated`).
    assert!(!is_torn_write(bytes));
    for tail in [
        &b"hello"[..],
        b"{\"seq\":1}",
        b"{\"bogus\":1",
        b"\xff\xfe",
        b"{\"seq\":1,\0\0x",
    ] {
        assert!(!is_torn_write(tail), "{:?}", String::from_utf8_lossy(tail));
    }
}

#[test]
fn a_nan_or_infinite_spend_never_fits() {
    let caps = wide();
    assert!(caps.check("j", f64::NAN, 0.0).is_err());
    assert!(caps.check("j", 0.0, f64::NAN).is_err());
    assert!(caps.check("j", f64::INFINITY, 0.0).is_err());
    assert!(
        caps.check("j", 100.0, 1000.0).is_ok(),
        "a spend equal to the cap fits"
    );
}
