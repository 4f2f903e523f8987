#![forbid(unsafe_code)]
//! Tamper-evident, append-only audit log for fedcare.
//!
//! A hospital's privacy officer (at a site) and the coordinator's operator each keep one of
//! these logs, so that they can show exactly what left (and entered) their walls: which jobs
//! arrived, who approved or refused them, which rounds were joined, every payload sent or
//! received (with its SHA-256 and size), the privacy budget spent, and how each job ended.
//!
//! # File format
//! JSON Lines, UTF-8, one entry per line, each line ending in `\n`:
//!
//! ```text
//! {"seq":0,"time_unix_ms":1700000000000,"prev":"000…000","event":{"type":"note","text":"hi"},"hash":"<64 hex>"}
//! ```
//!
//! * `seq` counts entries from 0 with no gaps; line *n* (1-based) holds `seq` *n − 1*.
//! * `prev` is the `hash` of the previous entry, or 64 zeros ([`GENESIS_PREV`]) for the first.
//! * `event` is an [`AuditEvent`], tagged by `"type"` (snake_case), fields in declaration order.
//! * `hash` is the lowercase hex SHA-256 of the entry's **hashed bytes**, defined next.
//!
//! # Exactly what is hashed
//! The hashed bytes are the UTF-8 bytes of the line **without** its `,"hash":"…"` member, i.e.
//! the compact JSON object `{"seq":…,"time_unix_ms":…,"prev":"…","event":{…}}` with the
//! fields in exactly that order, no whitespace, strings escaped as `serde_json` does (only
//! `"`, `\` and control characters are escaped; other characters are written as raw UTF-8),
//! numbers as `serde_json` writes them (e.g. `0.00001`, where Python would write `1e-05`, so
//! re-implementations should hash the stored bytes, not re-serialise). Equivalently: take the stored line (without `\n`),
//! cut off its last 75 bytes (`,"hash":"` + 64 hex digits + `"}`) and append `}`.
//!
//! Every stored line must be **canonical**: byte for byte what this crate would write for the
//! parsed entry. A line that means the same but is spelled differently (extra spaces, fields
//! reordered, `\u00e9` for `é`, `1.0e0` for `1.0`) is rejected. Hence *any* change of *any*
//! byte of the file is detected: either the line no longer parses, or it is no longer
//! canonical, or its hash no longer matches, or the chain (`seq`, `prev`) breaks.
//!
//! An auditor can re-check a log without this crate (this checks the hashes and the chain;
//! the canonical-form check is additional, and not needed to detect a changed byte, because
//! the stored bytes themselves are hashed):
//!
//! ```python
//! import hashlib, json
//! def verify(path):
//!     data = open(path, "rb").read()
//!     assert data == b"" or data.endswith(b"\n"), "incomplete last entry"
//!     prev, seq = "0" * 64, 0
//!     for n, line in enumerate(data.split(b"\n")[:-1], start=1):
//!         e = json.loads(line)
//!         assert line[-75:] == b',"hash":"' + e["hash"].encode() + b'"}', f"line {n}: layout"
//!         assert hashlib.sha256(line[:-75] + b"}").hexdigest() == e["hash"], f"line {n}: hash"
//!         assert e["seq"] == seq, f"line {n}: seq gap or repeat"
//!         assert e["prev"] == prev, f"line {n}: chain broken"
//!         prev, seq = e["hash"], seq + 1
//!     return seq, prev  # number of entries, head
//! ```
//!
//! # Guarantees
//! * **Durable before acknowledged.** [`AuditLog::append`] writes the line and `fsync`s the
//!   file before it returns; only then may the caller act (send the payload, start the job).
//! * **Tamper-evident.** [`verify`] names the *first* bad entry (line number and, when
//!   readable, `seq`) and what is wrong with it: changed content ([`AuditError::HashMismatch`]),
//!   a broken link to the entry before ([`AuditError::PrevMismatch`]), a gap or repeat in the
//!   numbering ([`AuditError::SeqMismatch`]), an unreadable line, a non-canonical line, data
//!   after an entry, or an incomplete last entry.
//! * **No appending to a damaged log.** [`AuditLog::open`] verifies the whole chain and
//!   refuses ([`AuditError::Broken`]) if it is broken; [`AuditLog::append`] refuses if the
//!   file was changed on disk since it was opened. One writer at a time (an OS file lock).
//!
//! # What it never does
//! It never rewrites, reorders or deletes an entry. The **only** repair is in
//! [`AuditLog::open`]: if the file ends in an incomplete line (no final `\n`: a crash while
//! writing), that line is truncated away. This is safe because `append` returns only after the
//! complete line, newline included, is fsynced: an incomplete line was never acknowledged to
//! anyone, so nothing was acted upon because of it. The repair is reported by
//! [`AuditLog::repaired_bytes`] so the caller can record a [`AuditEvent::Note`] about it.
//!
//! # Limits
//! The hashes are unkeyed: someone who can edit the file can rewrite it *entirely* with
//! fresh hashes, or cut entries off its end. Both are detected only by comparing with a head
//! recorded elsewhere (e.g. the site's head sent to the coordinator, or printed in a report):
//! use [`AuditLog::head`] / [`VerifyReport::head`] for that.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev` of the first entry: 64 zeros.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Length of the stored line's suffix `,"hash":"<64 hex>"}` that is not hashed (the closing
/// `}` is hashed, by appending it again to what remains).
pub const HASH_SUFFIX_LEN: usize = 75;

/// One thing that happened, as recorded in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A job description arrived (site) or was submitted (coordinator).
    JobReceived { job_id: String, job_name: String },
    /// A person approved the job.
    JobApproved { job_id: String, by: String },
    /// The job was refused (by a person or by policy).
    JobRefused { job_id: String, reason: String },
    /// This party joined a training round.
    RoundJoined { job_id: String, round: u32 },
    /// A payload left this party. `sha256` is the lowercase hex SHA-256 of the exact bytes sent.
    PayloadSent {
        job_id: String,
        round: Option<u32>,
        kind: String,
        sha256: String,
        bytes: u64,
    },
    /// A payload arrived at this party. `sha256` is of the exact bytes received.
    PayloadReceived {
        job_id: String,
        round: Option<u32>,
        kind: String,
        sha256: String,
        bytes: u64,
    },
    /// Differential-privacy budget spent by a release (`round` 0: the statistics step);
    /// `epsilon` is the job's total after it, as the site's ledger computed it.
    PrivacySpent {
        job_id: String,
        round: u32,
        epsilon: f64,
        delta: f64,
        unit: String,
    },
    /// The job ended (successfully or not).
    JobEnded {
        job_id: String,
        success: bool,
        reason: String,
    },
    /// Free text, e.g. an operator's remark or a note about a repaired log.
    Note { text: String },
    /// Coordinator: a research lead submitted a job (`by`: the caller's certificate identity).
    JobSubmitted { job_id: String, job_name: String, by: String },
    /// Coordinator: a site opened its work stream (`identity`: its certificate's identity).
    SiteConnected { site: String, identity: String },
    /// Coordinator: a round's new global model, the sites whose updates are in it, the
    /// SHA-256 of the model's parameters (little-endian f32s, in layout order), and the digest
    /// of every message exchanged with the sites for the job since the previous entry.
    RoundCompleted {
        job_id: String,
        round: u32,
        sites: Vec<String>,
        model_sha256: String,
        #[serde(default)]
        payloads: Vec<PayloadDigest>,
    },
    /// Coordinator: digests of messages exchanged for a job that no round entry covers (those
    /// after the last round), recorded when the job ends.
    PayloadsExchanged { job_id: String, payloads: Vec<PayloadDigest> },
    /// Coordinator: a job's final model and report were stored for release.
    ModelReleased { job_id: String, model_sha256: String, report_sha256: String },
}

/// One message between the coordinator and a site: its direction as seen by the party that
/// records it (`sent` or `received`), the site, the message kind, the round if any, and the
/// SHA-256 and size of its exact protobuf bytes. A site's `PayloadReceived` entry for a task
/// carries the same hash as the coordinator's `sent` digest of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PayloadDigest {
    pub direction: String,
    pub site: String,
    pub kind: String,
    pub round: Option<u32>,
    pub sha256: String,
    pub bytes: u64,
}

/// One entry of the log, as stored on one line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub time_unix_ms: u64,
    /// `hash` of the previous entry, or [`GENESIS_PREV`].
    pub prev: String,
    pub event: AuditEvent,
    /// Lowercase hex SHA-256 of [`Entry::hashed_bytes`].
    pub hash: String,
}

/// The hashed part of an entry; the field order here *is* the canonical order.
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    time_unix_ms: u64,
    prev: &'a str,
    event: &'a AuditEvent,
}

impl Entry {
    /// The exact bytes that `hash` covers: compact JSON of `seq`, `time_unix_ms`, `prev`,
    /// `event`, in that order (see the crate documentation).
    pub fn hashed_bytes(&self) -> Result<String, AuditError> {
        to_json(&Hashed {
            seq: self.seq,
            time_unix_ms: self.time_unix_ms,
            prev: &self.prev,
            event: &self.event,
        })
    }

    /// SHA-256 (lowercase hex) of [`Entry::hashed_bytes`], i.e. what `hash` should be.
    pub fn compute_hash(&self) -> Result<String, AuditError> {
        Ok(sha256_hex(self.hashed_bytes()?.as_bytes()))
    }

    /// The canonical stored line, without the trailing `\n`.
    pub fn to_line(&self) -> Result<String, AuditError> {
        to_json(self)
    }
}

/// Lowercase hex SHA-256 of `bytes` (for payload hashes in [`AuditEvent::PayloadSent`] etc.).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What a successful [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of entries.
    pub entries: u64,
    /// `hash` of the last entry; `None` for an empty log.
    pub head: Option<String>,
}

/// Everything that can go wrong; the messages are meant for a privacy officer.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot {action} the audit log {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the audit log {path} is in use by another program (locked); only one program may write to it at a time")]
    Locked { path: PathBuf },
    #[error("the audit log {path} is damaged or was tampered with; refusing to add entries to it: {source}")]
    Broken {
        path: PathBuf,
        #[source]
        source: Box<AuditError>,
    },
    #[error("line {line}: the entry cannot be read ({reason}); the file was damaged or edited")]
    Unparsable { line: u64, reason: String },
    #[error("line {line}{}: unexpected data after the entry on the same line; the file was damaged or edited", seq_note(*seq))]
    TrailingGarbage { line: u64, seq: Option<u64> },
    #[error("line {line} (seq {seq}): the entry is not written exactly as the log writes it (spacing, field order or escaping differ); it was edited after it was written")]
    NonCanonical { line: u64, seq: u64 },
    #[error("line {line} (seq {seq}): the entry's contents were changed after it was written (its stored hash is {stored}, its contents hash to {computed})")]
    HashMismatch {
        line: u64,
        seq: u64,
        stored: String,
        computed: String,
    },
    #[error("line {line} (seq {seq}): the entry does not link to the entry before it (it names {found} as the previous hash, but the previous entry's hash is {expected}); an entry before it was removed, inserted, reordered or rewritten")]
    PrevMismatch {
        line: u64,
        seq: u64,
        expected: String,
        found: String,
    },
    #[error("line {line} (seq {found}): expected entry number {expected} here; {}", seq_problem(*expected, *found))]
    SeqMismatch { line: u64, expected: u64, found: u64 },
    #[error("line {line}: incomplete last entry, probably a crash while writing ({bytes} bytes without a line end); it was never confirmed as written, and opening the log for writing removes it")]
    IncompleteLastEntry { line: u64, bytes: u64 },
    #[error("the audit log {path} was changed on disk by someone else since it was opened; refusing to add entries to it (run a verification)")]
    ModifiedSinceOpen { path: PathBuf },
    #[error("refusing to record this event: {0}")]
    InvalidEvent(String),
    #[error("internal error encoding an entry: {0}")]
    Encode(String),
}

fn seq_note(seq: Option<u64>) -> String {
    seq.map(|s| format!(" (seq {s})")).unwrap_or_default()
}

fn seq_problem(expected: u64, found: u64) -> String {
    if found < expected {
        "this entry number was already used: an entry was duplicated, or entries were reordered".to_owned()
    } else if found == expected + 1 {
        format!("entry {expected} is missing: it was deleted, or entries were reordered")
    } else {
        format!(
            "entries {expected} to {} are missing: they were deleted, or entries were reordered",
            found - 1
        )
    }
}

impl AuditError {
    /// The line number (1-based) and, if known, the `seq` of the first bad entry, when this
    /// error is about one (looks through [`AuditError::Broken`]).
    pub fn bad_entry(&self) -> Option<(u64, Option<u64>)> {
        match self {
            AuditError::Broken { source, .. } => source.bad_entry(),
            AuditError::Unparsable { line, .. } => Some((*line, None)),
            AuditError::IncompleteLastEntry { line, .. } => Some((*line, None)),
            AuditError::TrailingGarbage { line, seq } => Some((*line, *seq)),
            AuditError::NonCanonical { line, seq }
            | AuditError::HashMismatch { line, seq, .. }
            | AuditError::PrevMismatch { line, seq, .. } => Some((*line, Some(*seq))),
            AuditError::SeqMismatch { line, found, .. } => Some((*line, Some(*found))),
            _ => None,
        }
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<String, AuditError> {
    serde_json::to_string(v).map_err(|e| AuditError::Encode(e.to_string()))
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AuditError {
    let path = path.to_path_buf();
    move |source| AuditError::Io {
        action,
        path,
        source,
    }
}

/// Result of reading a whole log.
struct Scan {
    entries: u64,
    head: Option<String>,
    /// Byte length of the complete, verified lines.
    good_len: u64,
    /// The last complete line, with its `\n`.
    last_line: Vec<u8>,
    /// An incomplete last line (crash while writing): (line number, length in bytes).
    torn: Option<(u64, u64)>,
}

/// Checks one complete line (without `\n`) against the expected `seq` and `prev`.
fn check_line(line_no: u64, bytes: &[u8], seq: u64, prev: &str) -> Result<Entry, AuditError> {
    let text = std::str::from_utf8(bytes).map_err(|_| AuditError::Unparsable {
        line: line_no,
        reason: "not valid UTF-8 text".to_owned(),
    })?;
    if text.is_empty() {
        return Err(AuditError::Unparsable {
            line: line_no,
            reason: "empty line".to_owned(),
        });
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let entry = Entry::deserialize(&mut de).map_err(|e| AuditError::Unparsable {
        line: line_no,
        reason: format!("JSON: {e}"),
    })?;
    if de.end().is_err() {
        return Err(AuditError::TrailingGarbage {
            line: line_no,
            seq: Some(entry.seq),
        });
    }
    if entry.to_line()? != text {
        return Err(AuditError::NonCanonical {
            line: line_no,
            seq: entry.seq,
        });
    }
    let computed = entry.compute_hash()?;
    if computed != entry.hash {
        return Err(AuditError::HashMismatch {
            line: line_no,
            seq: entry.seq,
            stored: entry.hash,
            computed,
        });
    }
    if entry.seq != seq {
        return Err(AuditError::SeqMismatch {
            line: line_no,
            expected: seq,
            found: entry.seq,
        });
    }
    if entry.prev != prev {
        return Err(AuditError::PrevMismatch {
            line: line_no,
            seq: entry.seq,
            expected: prev.to_owned(),
            found: entry.prev,
        });
    }
    Ok(entry)
}

/// Is this last line (no `\n`) what a crash part-way through writing a line leaves behind?
/// A torn write leaves a prefix of a canonical line, possibly followed by zero bytes (some
/// file systems zero-fill after a crash). Anything else is damage, not a torn write.
fn is_torn_write(tail: &[u8]) -> bool {
    let end = tail.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let tail = &tail[..end];
    let text = match std::str::from_utf8(tail) {
        Ok(t) => t,
        // Cut in the middle of a multi-byte character.
        Err(e) if e.error_len().is_none() => match std::str::from_utf8(&tail[..e.valid_up_to()]) {
            Ok(t) => t,
            Err(_) => return false,
        },
        Err(_) => return false,
    };
    if text.is_empty() {
        return true;
    }
    let mut de = serde_json::Deserializer::from_str(text);
    match Entry::deserialize(&mut de) {
        // The whole line was written but not its `\n`: still never acknowledged.
        Ok(_) => de.end().is_ok(),
        Err(e) => e.is_eof(),
    }
}

fn scan(
    reader: impl Read,
    path: &Path,
    mut each: impl FnMut(Entry),
) -> Result<Scan, AuditError> {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    let mut scan = Scan {
        entries: 0,
        head: None,
        good_len: 0,
        last_line: Vec::new(),
        torn: None,
    };
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(io("read", path))?;
        if n == 0 {
            return Ok(scan);
        }
        let line_no = scan.entries + 1;
        if buf.last() != Some(&b'\n') {
            if is_torn_write(&buf) {
                scan.torn = Some((line_no, buf.len() as u64));
                return Ok(scan);
            }
            // Not a torn write: report it as the damage it is.
            check_line(line_no, &buf, scan.entries, scan.head.as_deref().unwrap_or(GENESIS_PREV))?;
            // A complete, valid entry cannot fail to be torn-write-shaped, but stay safe.
            return Err(AuditError::TrailingGarbage {
                line: line_no,
                seq: None,
            });
        }
        let prev = scan.head.as_deref().unwrap_or(GENESIS_PREV);
        let entry = check_line(line_no, &buf[..buf.len() - 1], scan.entries, prev)?;
        scan.entries += 1;
        scan.good_len += buf.len() as u64;
        scan.head = Some(entry.hash.clone());
        std::mem::swap(&mut scan.last_line, &mut buf);
        each(entry);
    }
}

/// Verifies the whole log at `path`: every line canonical, every hash right, `seq` counting
/// from 0 without gaps, every `prev` equal to the previous `hash`, the last line complete.
/// The error names the first bad entry. A missing file is an error.
pub fn verify(path: impl AsRef<Path>) -> Result<VerifyReport, AuditError> {
    read_verified_with(path.as_ref(), |_| {})
}

/// Like [`verify`], but also returns the entries.
pub fn read_verified(path: impl AsRef<Path>) -> Result<Vec<Entry>, AuditError> {
    let mut out = Vec::new();
    read_verified_with(path.as_ref(), |e| out.push(e))?;
    Ok(out)
}

fn read_verified_with(path: &Path, each: impl FnMut(Entry)) -> Result<VerifyReport, AuditError> {
    let file = File::open(path).map_err(io("open", path))?;
    let scan = scan(&file, path, each)?;
    if let Some((line, bytes)) = scan.torn {
        return Err(AuditError::IncompleteLastEntry { line, bytes });
    }
    Ok(VerifyReport {
        entries: scan.entries,
        head: scan.head,
    })
}

fn check_sha256(field: &str, v: &str) -> Result<(), AuditError> {
    if v.len() == 64 && v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(AuditError::InvalidEvent(format!(
            "{field} must be 64 lowercase hexadecimal digits (a SHA-256), got {v:?}"
        )))
    }
}

fn validate(event: &AuditEvent) -> Result<(), AuditError> {
    match event {
        AuditEvent::PayloadSent { sha256, .. } | AuditEvent::PayloadReceived { sha256, .. } => {
            check_sha256("sha256", sha256)
        }
        AuditEvent::PrivacySpent { epsilon, delta, .. } => {
            if !(epsilon.is_finite() && *epsilon >= 0.0) {
                return Err(AuditError::InvalidEvent(format!(
                    "epsilon must be a finite number >= 0, got {epsilon}"
                )));
            }
            if !(delta.is_finite() && (0.0..=1.0).contains(delta)) {
                return Err(AuditError::InvalidEvent(format!(
                    "delta must be a number between 0 and 1, got {delta}"
                )));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// An audit log open for appending. Holds an exclusive OS lock on the file while alive.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    entries: u64,
    head: Option<String>,
    /// File length after the last acknowledged entry.
    size: u64,
    /// The last line written (with `\n`), to notice changes made behind our back.
    last_line: Vec<u8>,
    repaired: Option<u64>,
}

impl AuditLog {
    /// Opens the log at `path`, creating it if missing. An existing log is verified in full
    /// first; if it is broken, this fails with [`AuditError::Broken`] naming the first bad
    /// entry. The only repair: an incomplete last line (crash while writing, never
    /// acknowledged) is truncated away; see [`AuditLog::repaired_bytes`].
    pub fn open(path: impl AsRef<Path>) -> Result<AuditLog, AuditError> {
        let path = path.as_ref().to_path_buf();
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(AuditError::Locked { path }),
            Err(std::fs::TryLockError::Error(e)) => return Err(io("lock", &path)(e)),
        }
        if !existed {
            // Make the new file's directory entry durable too.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                sync_dir(dir)?;
            }
        }
        let scan = scan(&file, &path, |_| {}).map_err(|e| match e {
            e @ AuditError::Io { .. } => e,
            e => AuditError::Broken {
                path: path.clone(),
                source: Box::new(e),
            },
        })?;
        let mut repaired = None;
        if let Some((_, bytes)) = scan.torn {
            // Safe: this line was never acknowledged (append fsyncs the full line, `\n`
            // included, before returning), so nobody acted on it.
            file.set_len(scan.good_len).map_err(io("repair", &path))?;
            file.sync_all().map_err(io("sync", &path))?;
            repaired = Some(bytes);
        }
        file.seek(SeekFrom::Start(scan.good_len))
            .map_err(io("seek in", &path))?;
        Ok(AuditLog {
            path,
            file,
            entries: scan.entries,
            head: scan.head,
            size: scan.good_len,
            last_line: scan.last_line,
            repaired,
        })
    }

    /// Appends `event` at `time_unix_ms` (milliseconds since the Unix epoch). Returns only
    /// after the line is written and fsynced: once this returns `Ok`, the entry is durable and
    /// the caller may act on it. Refuses if the file was changed since it was opened.
    pub fn append(&mut self, event: AuditEvent, time_unix_ms: u64) -> Result<Entry, AuditError> {
        validate(&event)?;
        self.check_unchanged()?;
        let mut entry = Entry {
            seq: self.entries,
            time_unix_ms,
            prev: self.head.clone().unwrap_or_else(|| GENESIS_PREV.to_owned()),
            event,
            hash: String::new(),
        };
        entry.hash = entry.compute_hash()?;
        let mut line = entry.to_line()?.into_bytes();
        line.push(b'\n');
        let written = self
            .file
            .seek(SeekFrom::Start(self.size))
            .and_then(|_| self.file.write_all(&line))
            .and_then(|_| self.file.sync_all());
        if let Err(e) = written {
            // Best effort: remove our own unacknowledged partial line. If this fails too,
            // the size check refuses further appends until the log is reopened (and repaired).
            let _ = self.file.set_len(self.size).and_then(|_| self.file.sync_all());
            return Err(io("write to", &self.path)(e));
        }
        self.size += line.len() as u64;
        self.entries += 1;
        self.head = Some(entry.hash.clone());
        self.last_line = line;
        Ok(entry)
    }

    fn check_unchanged(&mut self) -> Result<(), AuditError> {
        let modified = || AuditError::ModifiedSinceOpen {
            path: self.path.clone(),
        };
        let len = self
            .file
            .metadata()
            .map_err(io("inspect", &self.path))?
            .len();
        if len != self.size {
            return Err(modified());
        }
        if !self.last_line.is_empty() {
            let mut buf = vec![0u8; self.last_line.len()];
            self.file
                .seek(SeekFrom::Start(self.size - self.last_line.len() as u64))
                .and_then(|_| self.file.read_exact(&mut buf))
                .map_err(io("read", &self.path))?;
            if buf != self.last_line {
                return Err(modified());
            }
        }
        Ok(())
    }

    /// `hash` of the last entry, `None` if the log is empty. Record it elsewhere to make
    /// truncation or wholesale rewriting of the log detectable.
    pub fn head(&self) -> Option<String> {
        self.head.clone()
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.entries
    }

    /// Whether the log has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// If `open` truncated an incomplete last line (crash while writing), its length in bytes.
    pub fn repaired_bytes(&self) -> Option<u64> {
        self.repaired
    }
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync the directory of", dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
