//! Tamper-detection tests. Line numbers are 1-based, `seq` is 0-based: entry k is on line k+1.

use std::fs;
use std::path::{Path, PathBuf};

use fedcare_audit::{
    AuditError, AuditEvent, AuditLog, Entry, GENESIS_PREV, HASH_SUFFIX_LEN, read_verified,
    sha256_hex, verify,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn event(i: u64) -> AuditEvent {
    let job_id = format!("job-{}", i % 3);
    match i % 9 {
        0 => AuditEvent::JobReceived {
            job_id,
            job_name: "sepsis \"early\" warning — Bern\n".into(),
        },
        1 => AuditEvent::JobApproved {
            job_id,
            by: "Dr. Zoë Müller".into(),
        },
        2 => AuditEvent::RoundJoined {
            job_id,
            round: i as u32,
        },
        3 => AuditEvent::PayloadSent {
            job_id,
            round: Some(i as u32),
            kind: "masked_update".into(),
            sha256: sha256_hex(&i.to_le_bytes()),
            bytes: 1 << 20,
        },
        4 => AuditEvent::PayloadReceived {
            job_id,
            round: None,
            kind: "global_model".into(),
            sha256: sha256_hex(b"model"),
            bytes: 12345,
        },
        5 => AuditEvent::PrivacySpent {
            job_id,
            round: i as u32,
            epsilon: 0.1 + 0.2,
            delta: 1e-5,
            unit: "record".into(),
        },
        6 => AuditEvent::JobRefused {
            job_id,
            reason: "uses column \\ssn\\ \u{1}".into(),
        },
        7 => AuditEvent::JobEnded {
            job_id,
            success: i.is_multiple_of(2),
            reason: "done".into(),
        },
        _ => AuditEvent::Note {
            text: format!("note {i} 🏥"),
        },
    }
}

fn write_log(dir: &Path, n: u64) -> (PathBuf, Vec<Entry>) {
    let path = dir.join("audit.jsonl");
    let mut log = AuditLog::open(&path).unwrap();
    let entries = (0..n)
        .map(|i| log.append(event(i), 1_700_000_000_000 + i).unwrap())
        .collect();
    (path, entries)
}

/// The file's lines, each with its `\n`.
fn lines(path: &Path) -> Vec<Vec<u8>> {
    fs::read(path)
        .unwrap()
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    fs::write(path, lines.concat()).unwrap();
}

fn bad(e: &AuditError) -> (u64, Option<u64>) {
    e.bad_entry().unwrap_or_else(|| panic!("not about an entry: {e}"))
}

/// Replaces the first occurrence of `from` by `to` (same length) in line `k`.
fn edit_line(path: &Path, k: usize, from: &str, to: &str) {
    let mut ls = lines(path);
    let s = String::from_utf8(ls[k].clone()).unwrap();
    assert!(s.contains(from), "{s} lacks {from}");
    ls[k] = s.replacen(from, to, 1).into_bytes();
    write_lines(path, &ls);
}

#[test]
fn round_trip_reopen_and_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (path, entries) = write_log(dir.path(), 10);
    let report = verify(&path).unwrap();
    assert_eq!(report.entries, 10);
    assert_eq!(report.head.as_deref(), Some(entries[9].hash.as_str()));
    assert_eq!(read_verified(&path).unwrap(), entries);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.seq, i as u64);
        let prev = if i == 0 { GENESIS_PREV } else { &entries[i - 1].hash };
        assert_eq!(e.prev, prev);
    }

    let mut log = AuditLog::open(&path).unwrap();
    assert_eq!(log.len(), 10);
    assert_eq!(log.head(), Some(entries[9].hash.clone()));
    assert_eq!(log.repaired_bytes(), None);
    let e = log.append(event(10), 5).unwrap();
    assert_eq!((e.seq, e.prev.as_str()), (10, entries[9].hash.as_str()));
    assert_eq!(log.head(), Some(e.hash.clone()));
    drop(log);
    assert_eq!(verify(&path).unwrap().entries, 11);
}

#[test]
fn empty_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let log = AuditLog::open(&path).unwrap();
    assert!(log.is_empty());
    assert_eq!(log.head(), None);
    drop(log);
    assert_eq!(verify(&path).unwrap().head, None);
    assert!(matches!(verify(dir.path().join("missing")), Err(AuditError::Io { .. })));
}

/// The hash computed by a different route: canonical string built by hand, hashed with sha2,
/// and the Python route (stored line minus the 75-byte hash suffix, plus `}`).
#[test]
fn hash_matches_independent_computation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let mut log = AuditLog::open(&path).unwrap();
    let e0 = log
        .append(AuditEvent::Note { text: "a \"q\" é\n".into() }, 42)
        .unwrap();
    let sha = sha256_hex(b"payload");
    let e1 = log
        .append(
            AuditEvent::PayloadSent {
                job_id: "j1".into(),
                round: None,
                kind: "update".into(),
                sha256: sha.clone(),
                bytes: 7,
            },
            43,
        )
        .unwrap();
    let e2 = log
        .append(
            AuditEvent::PrivacySpent {
                job_id: "j1".into(),
                round: 3,
                epsilon: 1.5,
                delta: 1e-5,
                unit: "record".into(),
            },
            44,
        )
        .unwrap();
    let hand = [
        format!(
            r#"{{"seq":0,"time_unix_ms":42,"prev":"{GENESIS_PREV}","event":{{"type":"note","text":"a \"q\" é\n"}}}}"#
        ),
        format!(
            r#"{{"seq":1,"time_unix_ms":43,"prev":"{}","event":{{"type":"payload_sent","job_id":"j1","round":null,"kind":"update","sha256":"{sha}","bytes":7}}}}"#,
            e0.hash
        ),
        format!(
            r#"{{"seq":2,"time_unix_ms":44,"prev":"{}","event":{{"type":"privacy_spent","job_id":"j1","round":3,"epsilon":1.5,"delta":0.00001,"unit":"record"}}}}"#,
            e1.hash
        ),
    ];
    let stored = lines(&path);
    for ((hand, e), line) in hand.iter().zip([&e0, &e1, &e2]).zip(&stored) {
        assert_eq!(e.hashed_bytes().unwrap(), *hand);
        let h = hex::encode(Sha256::digest(hand.as_bytes()));
        assert_eq!(h, e.hash);
        assert_eq!(e.hashed_bytes().unwrap(), *hand);
        // Stored line = hashed bytes with the hash member inserted before the final `}`.
        let expect_line = format!("{},\"hash\":\"{h}\"}}\n", &hand[..hand.len() - 1]);
        assert_eq!(String::from_utf8(line.clone()).unwrap(), expect_line);
        // Python route.
        let body = &line[..line.len() - 1];
        let mut hashed = body[..body.len() - HASH_SUFFIX_LEN].to_vec();
        hashed.push(b'}');
        assert_eq!(sha256_hex(&hashed), e.hash);
    }
}

#[test]
fn floats_round_trip_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let mut log = AuditLog::open(&path).unwrap();
    for (i, eps) in [0.1 + 0.2, 1e-300, 5e-324, 123_456_789.123_456_78, 2.0_f64.sqrt(), 0.0]
        .into_iter()
        .enumerate()
    {
        log.append(
            AuditEvent::PrivacySpent {
                job_id: "j".into(),
                round: i as u32,
                epsilon: eps,
                delta: eps.min(1.0) / 3.0,
                unit: "site".into(),
            },
            i as u64,
        )
        .unwrap();
    }
    drop(log);
    assert_eq!(verify(&path).unwrap().entries, 6);
}

#[test]
fn flip_in_event_payload_detected_at_that_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_log(dir.path(), 6);
    edit_line(&path, 3, "masked_update", "masked_updatf");
    let e = verify(&path).unwrap_err();
    assert!(matches!(e, AuditError::HashMismatch { line: 4, seq: 3, .. }), "{e}");
    assert!(e.to_string().contains("line 4 (seq 3)"), "{e}");
}

#[test]
fn flip_in_hash_detected_at_that_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (path, entries) = write_log(dir.path(), 6);
    let h = &entries[2].hash;
    let flipped: String = h
        .chars()
        .enumerate()
        .map(|(i, c)| if i == 10 { if c == 'a' { 'b' } else { 'a' } } else { c })
        .collect();
    edit_line(&path, 2, &format!("\"hash\":\"{h}\""), &format!("\"hash\":\"{flipped}\""));
    let e = verify(&path).unwrap_err();
    assert!(matches!(e, AuditError::HashMismatch { line: 3, seq: 2, .. }), "{e}");
}

/// `prev` is covered by the entry's own hash, so a flipped `prev` is caught at the entry
/// itself (hash mismatch), not at the next one.
#[test]
fn flip_in_prev_detected_at_that_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (path, entries) = write_log(dir.path(), 6);
    let p = &entries[4].prev;
    let mut flipped = p.clone();
    flipped.replace_range(0..1, if p.starts_with('0') { "1" } else { "0" });
    edit_line(&path, 4, p, &flipped);
    let e = verify(&path).unwrap_err();
    assert!(matches!(e, AuditError::HashMismatch { line: 5, seq: 4, .. }), "{e}");
}

/// A forger who changes entry k AND recomputes its hash is caught at entry k+1 (its `prev`
/// no longer matches); one who also rewrites `prev` of k is caught at k itself.
#[test]
fn rewrite_with_recomputed_hash_detected_by_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (path, entries) = write_log(dir.path(), 6);
    let mut forged = entries[2].clone();
    forged.event = AuditEvent::Note { text: "nothing happened".into() };
    forged.hash = forged.compute_hash().unwrap();
    let mut ls = lines(&path);
    ls[2] = format!("{}\n", forged.to_line().unwrap()).into_bytes();
    write_lines(&path, &ls);
    let e = verify(&path).unwrap_err();
    assert!(matches!(e, AuditError::PrevMismatch { line: 4, seq: 3, .. }), "{e}");

    let (path, entries) = write_log(&dir.path().join("x").tap_mkdir(), 6);
    let mut forged = entries[2].clone();
    forged.prev = GENESIS_PREV.into();
    forged.hash = forged.compute_hash().unwrap();
    let mut ls = lines(&path);
    ls[2] = format!("{}\n", forged.to_line().unwrap()).into_bytes();
    write_lines(&path, &ls);
    let e = verify(&path).unwrap_err();
    assert!(matches!(e, AuditError::PrevMismatch { line: 3, seq: 2, .. }), "{e}");
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}
impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn deleted_entry_detected_at_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_log(dir.path(), 6);
    let mut ls = lines(&path);
    ls.remove(2);
    write_lines(&path, &ls);
    let e = verify(&path).unwrap_err();
    // Entry seq 3 now sits on line 3, where seq 2 was expected.
    assert!(
        matches!(e, AuditError::SeqMismatch { line: 3, expected: 2, found: 3 }),
        "{e}"
    );
    assert!(e.to_string().contains("entry 2 is missing"), "{e}");
}

/// Cutting entries off the END is not detectable from the file alone (documented limit);
/// it is detected by comparing with a head recorded elsewhere.
#[test]
fn deleted_last_entry_changes_head() {
    let dir = tempfile::tempdir().unwrap();
    let (path, entries) = write_log(dir.path(), 6);
    let mut ls = lines(&path);
    ls.pop();
    write_lines(&path, &ls);
    let report = verify(&path).unwrap();
    assert_eq!(report.entries, 5);
    assert_ne!(report.head.as_deref(), Some(entries[5].hash.as_str()));
}

#[test]
fn swapped_entries_detected_at_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_log(dir.path(), 6);
    let mut ls = lines(&path);
    ls.swap(2, 3);
    write_lines(&path, &ls);
    let e = verify(&path).unwrap_err();
    assert!(
        matches!(e, AuditError::SeqMismatch { line: 3, expected: 2, found: 3 }),
        "{e}"
    );
}

#[test]
fn duplicated_entry_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_log(dir.path(), 6);
    let mut ls = lines(&path);
    let dup = ls[2].clone();
    ls.insert(3, dup);
    write_lines(&path, &ls);
    let e = verify(&path).unwrap_err();
    assert!(
        matches!(e, AuditError::SeqMismatch { line: 4, expected: 3, found: 2 }),
        "{e}"
    );
    assert!(e.to_string().contains("already used"), "{e}");
    // Duplicating the last entry at the end is caught the same way.
    let (path, _) = write_log(&dir.path().join("b").tap_mkdir(), 3);
    let mut ls = lines(&path);
    ls.push(ls[2].clone());
    write_lines(&path, &ls);
    let e = verify(&path).unwrap_err();
    assert!(matches!(e, AuditError::SeqMismatch { line: 4, expected: 3, found: 2 }), "{e}");
}

#[test]
fn non_canonical_lines_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_log(dir.path(), 6);
    let orig = fs::read(&path).unwrap();
    for (from, to) in [
        ("\"seq\":1,", "\"seq\": 1,"),
        ("Müller", "M\\u00fcller"),
        ("\"time_unix_ms\":1700000000001,", "\"time_unix_ms\":1.700000000001e12,"),
        ("{\"seq\":1", "{ \"seq\":1"),
    ] {
        fs::write(&path, &orig).unwrap();
        edit_line(&path, 1, from, to);
        let e = verify(&path).unwrap_err();
        assert!(
            matches!(e, AuditError::NonCanonical { line: 2, seq: 1 } | AuditError::Unparsable { line: 2, .. }),
            "{from}: {e}"
        );
    }
    // Semantically identical spellings are NonCanonical specifically.
    fs::write(&path, &orig).unwrap();
    edit_line(&path, 1, "Müller", "M\\u00fcller");
    assert!(matches!(verify(&path), Err(AuditError::NonCanonical { line: 2, seq: 1 })));
}

#[test]
fn unparsable_and_garbage_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_log(dir.path(), 4);
    let orig = lines(&path);

    let mut ls = orig.clone();
    ls[1][0] = b'[';
    write_lines(&path, &ls);
    let e = verify(&path).unwrap_err();
    assert!(matches!(e, AuditError::Unparsable { line: 2, .. }), "{e}");

    let mut ls = orig.clone();
    ls[2][5] = 0xff;
    write_lines(&path, &ls);
    let e = verify(&path).unwrap_err();
    assert!(matches!(e, AuditError::Unparsable { line: 3, .. }), "{e}");
    assert!(e.to_string().contains("UTF-8"), "{e}");

    let mut ls = orig.clone();
    ls[2].pop();
    ls[2].extend_from_slice(b" x\n");
    write_lines(&path, &ls);
    let e = verify(&path).unwrap_err();
    assert!(matches!(e, AuditError::TrailingGarbage { line: 3, seq: Some(2) }), "{e}");

    let mut ls = orig.clone();
    ls.push(b"\n".to_vec());
    write_lines(&path, &ls);
    let e = verify(&path).unwrap_err();
    assert!(matches!(e, AuditError::Unparsable { line: 5, .. }), "{e}");

    // Final newline replaced: not a torn write (a torn write is a prefix), so not repaired.
    let mut ls = orig.clone();
    *ls[3].last_mut().unwrap() = b'x';
    write_lines(&path, &ls);
    let e = verify(&path).unwrap_err();
    assert!(matches!(e, AuditError::TrailingGarbage { line: 4, .. }), "{e}");
    let e = AuditLog::open(&path).unwrap_err();
    assert!(matches!(e, AuditError::Broken { .. }), "{e}");
    assert_eq!(bad(&e), (4, Some(3)));
}

/// Every possible crash point while writing the last line: reported as incomplete, repaired
/// by `open` (truncated), and the chain continues from the previous entry.
#[test]
fn torn_last_line_reported_and_repaired_at_every_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (path, entries) = write_log(dir.path(), 4);
    let orig = lines(&path);
    let last = orig[3].clone();
    let cuts: Vec<Vec<u8>> = (1..last.len())
        .map(|c| last[..c].to_vec())
        .chain([{
            let mut z = last[..40].to_vec();
            z.extend([0u8; 64]);
            z
        }])
        .chain([vec![0u8; 300]])
        .collect();
    for tail in cuts {
        let mut ls = orig[..3].to_vec();
        ls.push(tail.clone());
        write_lines(&path, &ls);
        let e = verify(&path).unwrap_err();
        assert!(
            matches!(e, AuditError::IncompleteLastEntry { line: 4, bytes } if bytes == tail.len() as u64),
            "cut {}: {e}",
            tail.len()
        );
        assert!(e.to_string().contains("incomplete last entry, probably a crash while writing"));

        let mut log = AuditLog::open(&path).unwrap();
        assert_eq!(log.repaired_bytes(), Some(tail.len() as u64));
        assert_eq!(log.len(), 3);
        assert_eq!(log.head(), Some(entries[2].hash.clone()));
        let e = log.append(AuditEvent::Note { text: "recovered".into() }, 9).unwrap();
        assert_eq!((e.seq, e.prev.as_str()), (3, entries[2].hash.as_str()));
        drop(log);
        let report = verify(&path).unwrap();
        assert_eq!(report.entries, 4);
        assert_eq!(report.head, Some(e.hash));
    }
}

#[test]
fn open_refuses_tampered_log_naming_first_bad_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_log(dir.path(), 6);
    edit_line(&path, 1, "Zoë", "Zoe");
    let before = fs::read(&path).unwrap();
    let e = AuditLog::open(&path).unwrap_err();
    assert!(matches!(e, AuditError::Broken { .. }), "{e}");
    assert_eq!(bad(&e), (2, Some(1)));
    assert!(e.to_string().contains("refusing"), "{e}");
    assert_eq!(fs::read(&path).unwrap(), before, "open must not touch a broken log");
}

#[test]
fn append_refused_if_changed_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_log(dir.path(), 3);
    let mut log = AuditLog::open(&path).unwrap();
    // Same length, different content in the last entry.
    edit_line(&path, 2, "\"seq\":2", "\"seq\":3");
    let e = log.append(event(3), 1).unwrap_err();
    assert!(matches!(e, AuditError::ModifiedSinceOpen { .. }), "{e}");

    let (path, _) = write_log(&dir.path().join("b").tap_mkdir(), 3);
    let mut log = AuditLog::open(&path).unwrap();
    let mut ls = lines(&path);
    ls.pop();
    write_lines(&path, &ls);
    assert!(matches!(log.append(event(3), 1), Err(AuditError::ModifiedSinceOpen { .. })));
}

#[test]
fn second_writer_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let _log = AuditLog::open(&path).unwrap();
    assert!(matches!(AuditLog::open(&path), Err(AuditError::Locked { .. })));
    assert!(verify(&path).is_ok(), "reading is always allowed");
}

#[test]
fn invalid_events_refused_and_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let mut log = AuditLog::open(&path).unwrap();
    let spent = |epsilon, delta| AuditEvent::PrivacySpent {
        job_id: "j".into(),
        round: 0,
        epsilon,
        delta,
        unit: "record".into(),
    };
    for ev in [
        spent(f64::NAN, 0.0),
        spent(f64::INFINITY, 0.0),
        spent(-1.0, 0.0),
        spent(1.0, 2.0),
        AuditEvent::PayloadSent {
            job_id: "j".into(),
            round: None,
            kind: "k".into(),
            sha256: "ABC".into(),
            bytes: 1,
        },
    ] {
        assert!(matches!(log.append(ev, 0), Err(AuditError::InvalidEvent(_))));
    }
    assert!(log.is_empty());
    assert_eq!(fs::read(&path).unwrap(), b"");
}

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,12}", "[a-z \"\\\\\n]{0,12}"]
}

fn arb_event() -> impl Strategy<Value = AuditEvent> {
    let id = "[a-z0-9-]{1,8}";
    let hash = "[0-9a-f]{64}";
    prop_oneof![
        (id, arb_text()).prop_map(|(job_id, job_name)| AuditEvent::JobReceived { job_id, job_name }),
        (id, arb_text()).prop_map(|(job_id, by)| AuditEvent::JobApproved { job_id, by }),
        (id, arb_text()).prop_map(|(job_id, reason)| AuditEvent::JobRefused { job_id, reason }),
        (id, any::<u32>()).prop_map(|(job_id, round)| AuditEvent::RoundJoined { job_id, round }),
        (id, any::<Option<u32>>(), arb_text(), hash, any::<u64>()).prop_map(
            |(job_id, round, kind, sha256, bytes)| AuditEvent::PayloadSent { job_id, round, kind, sha256, bytes }
        ),
        (id, any::<Option<u32>>(), arb_text(), hash, any::<u64>()).prop_map(
            |(job_id, round, kind, sha256, bytes)| AuditEvent::PayloadReceived { job_id, round, kind, sha256, bytes }
        ),
        (id, any::<u32>(), 0.0..1e6f64, 0.0..=1.0f64, arb_text()).prop_map(
            |(job_id, round, epsilon, delta, unit)| AuditEvent::PrivacySpent { job_id, round, epsilon, delta, unit }
        ),
        (id, any::<bool>(), arb_text()).prop_map(|(job_id, success, reason)| AuditEvent::JobEnded { job_id, success, reason }),
        arb_text().prop_map(|text| AuditEvent::Note { text }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any single-byte change anywhere in a valid log is detected, at the line holding the
    /// byte (a line's `\n` belongs to it).
    #[test]
    fn any_byte_change_detected(
        events in prop::collection::vec((arb_event(), any::<u64>()), 1..6),
        pos in any::<prop::sample::Index>(),
        delta in 1u8..=255,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        for (ev, t) in events {
            log.append(ev, t).unwrap();
        }
        drop(log);
        let mut bytes = fs::read(&path).unwrap();
        prop_assert!(verify(&path).is_ok());
        let i = pos.index(bytes.len());
        let line = bytes[..i].iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        bytes[i] = bytes[i].wrapping_add(delta);
        fs::write(&path, &bytes).unwrap();
        let e = verify(&path).unwrap_err();
        prop_assert_eq!(bad(&e).0, line, "{}", e);
    }
}

#[test]
fn proptest_helpers_sanity() {
    // `bad()` covers every entry-related variant reported above.
    let e = AuditError::IncompleteLastEntry { line: 2, bytes: 3 };
    assert_eq!(bad(&e), (2, None));
}

