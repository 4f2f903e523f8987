//! A hospital site's authoritative, durable ledger of differential-privacy spend.
//!
//! Before a site sends anything derived from its records, it asks its ledger. The ledger
//! computes the release's cost from the mechanism's parameters (a [`Charge`], the site's own
//! view of them, not the coordinator's), refuses it if a cap would be crossed, and otherwise
//! writes the entry to disk and fsyncs it; only then does the caller send. It also keeps the
//! exact bytes of the release, so that after a crash between recording and sending the site
//! re-sends *the same* release and spends nothing new.
//!
//! ```text
//!  round task ──► Ledger::committed_release(job, round, stage)
//!                   │ Some(bytes): send those bytes again (already paid for)
//!                   │ None: produce the noised release, then
//!                   ▼
//!                 Ledger::commit(job, round, stage, unit, delta, charge, release, caps, now)
//!                   │ 1. cost: RDP of the job's charges + this one → epsilon at the job's delta
//!                   │ 2. caps: job epsilon ≤ per-job cap, site total ≤ total cap, else Refusal
//!                   │ 3. release → <ledger>.releases/<sha256>.bin, fsync file and directory
//!                   │ 4. entry line → ledger file, fsync
//!                   ▼
//!                 Ok(Committed) ──► now, and only now, mask and send the release
//! ```
//!
//! # Accounting
//! Within a job, charges compose in Rényi DP (their curves add, [`fedcare_privacy::RdpAccountant`])
//! and the sum is converted to epsilon at the job's delta: the job's epsilon equals
//! [`fedcare_privacy::epsilon_of`] of its charges. Across jobs the site's total is the *sum* of
//! the jobs' epsilons (basic composition; conservative, and valid whatever mechanism each job
//! used), and its total delta is the sum of their deltas. One job has one delta and one
//! privacy [`Unit`]; a charge at another is refused.
//!
//! # File format
//! The ledger is a UTF-8 file of JSON lines, one [`Entry`] per commit, readable by a privacy
//! officer without this crate:
//!
//! ```text
//! {"seq":0,"time_ms":1700000000000,"job":"4f…","round":1,"stage":"update","unit":"record","delta":0.00001,
//!  "charge":{"mechanism":"subsampled_gaussian","noise_multiplier":1.1,"sampling_rate":0.01,"steps":50},
//!  "release_sha256":"9a…","release_bytes":4096,"job_epsilon_after":0.83,"total_epsilon_after":1.91}
//! ```
//! (one line in the file). `seq` counts from 0; `round` is `null` for a job-level stage such
//! as federated statistics; the epsilons are informative (for the reader) and checked on
//! replay against the values recomputed from the charges, which are the truth. Each release is
//! kept beside the ledger in `<ledger file name>.releases/<release_sha256>.bin`.
//!
//! # Guarantees
//! * **Recorded before sent.** [`Ledger::commit`] returns `Ok` only after the release file
//!   (fsync of file and directory) and then the entry (fsync of the ledger file; of its
//!   directory when the ledger is created) are on disk.
//! * **Never over a cap.** A charge that would take the job over `max_epsilon_per_job` or the
//!   site over `max_epsilon_total` is a [`Refusal`] and writes nothing.
//! * **No double spend on retry.** A second commit of the same (job, round, stage) writes
//!   nothing: with the identical release, charge, unit and delta it is **idempotent** (returns
//!   the first entry, `newly_recorded: false`); with anything else it is refused
//!   ([`Refusal::AlreadyCommitted`]). Either way nothing new is spent; the caller must send the
//!   stored release ([`Ledger::committed_release`]), never a fresh one.
//! * **Checked on every open.** [`Ledger::open`] replays every line: numbering, fields, one
//!   delta and unit per job, no repeated (job, round, stage), every charge computable, and the
//!   stored epsilons equal to the recomputed ones (relative 1e-9). Any problem is a
//!   [`LedgerError::Corrupt`] naming the line, and such a ledger cannot be written to. The one
//!   exception is the *last* line without a line end, a crash while appending: a strict
//!   prefix of an entry was never acknowledged, so nothing was sent for it, and it is dropped;
//!   a whole entry missing only its `\n` is counted (it might have been acknowledged; counting
//!   it can only over-count) and its line end added. Either is reported as an [`OpenNote`] for
//!   the caller to log.
//! * **Releases are checked when read back**: their SHA-256 and length must match the entry
//!   ([`LedgerError::ReleaseMismatch`], [`LedgerError::ReleaseMissing`]).
//! * **One writer.** [`Ledger::open`] takes an exclusive OS lock on the file; a second writer
//!   gets [`LedgerError::Locked`]. [`Ledger::open_read_only`] reads without the lock (for the
//!   `ledger` command while an agent runs).
//!
//! # Limits
//! * The ledger is not tamper-evident by itself: someone who can edit it can rewrite it
//!   consistently (or delete lines from its end). The hash-chained audit log
//!   (`fedcare-audit`) is the tamper-evident record; the agent should log each commit there.
//! * A release file written by a commit that crashed before its entry is left in the releases
//!   directory, unreferenced (it was never sent).
//!
//! # Never
//! No network, no clock (the caller passes `now_ms`), no randomness, no `unsafe`; it never
//! rewrites or deletes an entry (the only repair is dropping an unacknowledged torn last line).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod render;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fedcare_privacy::{PrivacyError, RdpAccountant, epsilon_of};
use serde::{Deserialize, Serialize};

pub use error::{CapsError, CommitError, Corruption, LedgerError, OpenNote, Refusal};
pub use fedcare_privacy::{Charge, Unit};

/// Relative tolerance when comparing a stored epsilon with the recomputed one on replay
/// (the accountant's `exp`/`ln` may differ in the last bit between platforms).
pub const EPSILON_TOLERANCE: f64 = 1e-9;

/// Suffix of the releases directory's name, appended to the ledger file's name.
pub const RELEASES_DIR_SUFFIX: &str = ".releases";

/// The site's privacy caps: finite and > 0 (checked by [`Caps::new`] and when deserialised).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "CapsRepr", into = "CapsRepr")]
pub struct Caps {
    max_epsilon_per_job: f64,
    max_epsilon_total: f64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CapsRepr {
    max_epsilon_per_job: f64,
    max_epsilon_total: f64,
}

impl TryFrom<CapsRepr> for Caps {
    type Error = CapsError;
    fn try_from(r: CapsRepr) -> Result<Self, CapsError> {
        Caps::new(r.max_epsilon_per_job, r.max_epsilon_total)
    }
}

impl From<Caps> for CapsRepr {
    fn from(c: Caps) -> Self {
        CapsRepr {
            max_epsilon_per_job: c.max_epsilon_per_job,
            max_epsilon_total: c.max_epsilon_total,
        }
    }
}

impl Caps {
    /// Caps of `max_epsilon_per_job` for any one job and `max_epsilon_total` summed over all
    /// jobs; both must be finite and > 0.
    pub fn new(max_epsilon_per_job: f64, max_epsilon_total: f64) -> Result<Caps, CapsError> {
        for (name, value) in [
            ("max_epsilon_per_job", max_epsilon_per_job),
            ("max_epsilon_total", max_epsilon_total),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(CapsError { name, value });
            }
        }
        Ok(Caps {
            max_epsilon_per_job,
            max_epsilon_total,
        })
    }

    /// The most epsilon any one job may spend.
    pub fn max_epsilon_per_job(&self) -> f64 {
        self.max_epsilon_per_job
    }

    /// The most epsilon all jobs together may spend.
    pub fn max_epsilon_total(&self) -> f64 {
        self.max_epsilon_total
    }

    fn check(&self, job: &str, job_epsilon: f64, total: f64) -> Result<(), Refusal> {
        // `fits` is false for NaN, so NaN refuses.
        let fits = |value: f64, cap: f64| value.partial_cmp(&cap).is_some_and(|o| o.is_le());
        if !fits(job_epsilon, self.max_epsilon_per_job) {
            return Err(Refusal::JobCap {
                job: job.to_owned(),
                epsilon: job_epsilon,
                cap: self.max_epsilon_per_job,
            });
        }
        if !fits(total, self.max_epsilon_total) {
            return Err(Refusal::TotalCap {
                job: job.to_owned(),
                total,
                cap: self.max_epsilon_total,
            });
        }
        Ok(())
    }
}

/// One line of the ledger file: one release's charge, recorded before it was sent. The field
/// order here is the order in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Position in the file, from 0.
    pub seq: u64,
    /// When it was recorded, milliseconds since the Unix epoch (the caller's clock).
    pub time_ms: u64,
    /// The job's id.
    pub job: String,
    /// The round, or `None` for a job-level stage (e.g. federated statistics).
    pub round: Option<u32>,
    /// What was released within the round (e.g. `"update"`, `"statistics"`).
    pub stage: String,
    /// Whose privacy the job protects.
    pub unit: Unit,
    /// The job's delta.
    pub delta: f64,
    /// The release's mechanism and parameters: the source of truth for its cost.
    pub charge: Charge,
    /// Lowercase hex SHA-256 of the released bytes.
    pub release_sha256: String,
    /// Length of the released bytes.
    pub release_bytes: u64,
    /// The job's epsilon including this charge.
    pub job_epsilon_after: f64,
    /// The site's total epsilon (sum over jobs) including this charge.
    pub total_epsilon_after: f64,
}

/// What one job has spent so far.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobSpend {
    /// The job's id.
    pub job: String,
    /// Its privacy unit.
    pub unit: Unit,
    /// Its delta.
    pub delta: f64,
    /// Epsilon spent: its charges composed in RDP, converted at `delta`.
    pub epsilon: f64,
    /// The RDP order at which that conversion is tightest.
    pub rdp_order: f64,
    /// Number of charges (entries).
    pub entries: usize,
    /// Number of distinct rounds charged (job-level stages not counted).
    pub rounds_charged: usize,
}

/// A recorded charge: the caller may now send the release.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// The entry's `seq`.
    pub seq: u64,
    /// The job's epsilon including this charge.
    pub job_epsilon_after: f64,
    /// The site's total epsilon including this charge, as recorded in the entry.
    pub total_epsilon_after: f64,
    /// SHA-256 of the release (lowercase hex).
    pub release_sha256: String,
    /// `false` if this (job, round, stage) had already been recorded with the identical release
    /// and charge: nothing was written, nothing new spent (the retry after a crash).
    pub newly_recorded: bool,
}

#[derive(Debug, Clone)]
struct JobState {
    unit: Unit,
    delta: f64,
    acc: RdpAccountant,
    epsilon: f64,
    rdp_order: f64,
    entries: usize,
    rounds: BTreeSet<u32>,
}

/// A job's state after one more charge, and the site's total with it.
struct Step {
    state: JobState,
    total: f64,
}

type Key = (String, Option<u32>, String);

/// How the ledger file ends.
enum Tail {
    /// With a complete line (or empty).
    Clean,
    /// With a strict prefix of an entry: a torn write, dropped.
    Torn { line: u64, bytes: u64 },
    /// With a whole entry but no `\n` (`end`: the byte after it): counted.
    Unterminated { line: u64, end: usize },
}

/// The site's privacy ledger, open for writing (holding the file's lock) or read-only.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    releases: PathBuf,
    writer: Option<store::Writer>,
    entries: Vec<Entry>,
    jobs: BTreeMap<String, JobState>,
    keys: BTreeMap<Key, usize>,
    notes: Vec<OpenNote>,
}

fn check_name(what: &'static str, value: &str) -> Result<(), Refusal> {
    let reason = if value.is_empty() {
        "it is empty"
    } else if value.chars().any(char::is_control) {
        "it contains control characters"
    } else {
        return Ok(());
    };
    Err(Refusal::InvalidName {
        what,
        value: value.to_owned(),
        reason,
    })
}

/// Equal within the tolerance; a non-finite value is close to nothing (an infinite recomputed
/// epsilon would otherwise be "within tolerance" of any stored one).
fn close(stored: f64, recomputed: f64) -> bool {
    stored.is_finite() && recomputed.is_finite() && (stored - recomputed).abs() <= EPSILON_TOLERANCE * stored.abs().max(recomputed.abs()).max(1.0)
}

/// Is this last line (no `\n`) what a crash part-way through appending leaves: a strict
/// prefix of an entry, possibly followed by zero bytes (some file systems zero-fill after a
/// crash)? A whole entry is not (see `Tail::Unterminated`); anything else is damage.
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
    let ends_inside = |t: &str| serde_json::from_str::<Entry>(t).is_err_and(|e| e.is_eof());
    // A number cut right after its `.`, `e`, `e-` or `-` is reported as an invalid number, not
    // as the end of the input: finish it with a digit and look again.
    ends_inside(text)
        || (text.ends_with(['.', 'e', 'E', '-', '+']) && ends_inside(&format!("{text}0")))
}

impl Ledger {
    /// Opens the ledger at `path` for writing, creating it (and its directory, and the
    /// releases directory beside it) if missing, durably. Takes an exclusive lock on the file.
    /// Replays and checks every entry (see the crate documentation); an incomplete last line
    /// is truncated away and reported in [`Ledger::notes`].
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        let path = path.to_path_buf();
        let releases = releases_dir(&path)?;
        store::create_dir_durably(store::parent_dir(&path))?;
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(store::io("open", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(LedgerError::Locked { path }),
            Err(std::fs::TryLockError::Error(e)) => return Err(store::io("lock", &path)(e)),
        }
        if !existed {
            file.sync_all().map_err(store::io("sync", &path))?;
            store::sync_dir(store::parent_dir(&path))?;
        }
        store::create_dir_durably(&releases)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)
            .map_err(store::io("read", &path))?;
        let mut ledger = Ledger::empty(path, releases);
        let (mut good_len, tail) = ledger.replay(&data)?;
        match tail {
            Tail::Clean => {}
            Tail::Torn { line, bytes } => {
                // Safe: commit returns only after the whole line, `\n` included, is fsynced, so
                // an incomplete line was never acknowledged and nothing was sent for it.
                file.set_len(good_len as u64)
                    .and_then(|_| file.sync_all())
                    .map_err(store::io(
                        "remove the incomplete last line of",
                        &ledger.path,
                    ))?;
                ledger.notes.push(OpenNote::TruncatedLastLine {
                    line,
                    bytes,
                    removed: true,
                });
            }
            Tail::Unterminated { line, end } => {
                // The entry is already counted; give it its line end (dropping any zero fill).
                file.set_len(end as u64)
                    .and_then(|_| file.seek(SeekFrom::Start(end as u64)))
                    .and_then(|_| file.write_all(b"\n"))
                    .and_then(|_| file.sync_all())
                    .map_err(store::io("complete the last line of", &ledger.path))?;
                data.truncate(end);
                data.push(b'\n');
                good_len = end + 1;
                ledger.notes.push(OpenNote::UnterminatedLastLine {
                    line,
                    completed: true,
                });
            }
        }
        let last_start = data[..good_len].strip_suffix(b"\n").map_or(0, |d| {
            d.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
        });
        ledger.writer = Some(store::Writer {
            file,
            size: good_len as u64,
            last_line: data[last_start..good_len].to_vec(),
        });
        Ok(ledger)
    }

    /// Opens an existing ledger for reading only, without the lock (so it works while an
    /// agent holds the ledger open). Checks it like [`Ledger::open`]; an incomplete last line
    /// (possibly an append in progress) is ignored and reported in [`Ledger::notes`].
    /// [`Ledger::commit`] on it is refused with [`LedgerError::ReadOnly`].
    pub fn open_read_only(path: &Path) -> Result<Ledger, LedgerError> {
        let path = path.to_path_buf();
        let releases = releases_dir(&path)?;
        let mut data = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(store::io("read", &path))?;
        let mut ledger = Ledger::empty(path, releases);
        match ledger.replay(&data)?.1 {
            Tail::Clean => {}
            Tail::Torn { line, bytes } => {
                ledger.notes.push(OpenNote::TruncatedLastLine {
                    line,
                    bytes,
                    removed: false,
                });
            }
            Tail::Unterminated { line, .. } => {
                ledger.notes.push(OpenNote::UnterminatedLastLine {
                    line,
                    completed: false,
                });
            }
        }
        Ok(ledger)
    }

    fn empty(path: PathBuf, releases: PathBuf) -> Ledger {
        Ledger {
            path,
            releases,
            writer: None,
            entries: Vec::new(),
            jobs: BTreeMap::new(),
            keys: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    /// Replays the file's bytes. Returns the length of the complete lines and what the end
    /// of the file looks like.
    fn replay(&mut self, data: &[u8]) -> Result<(usize, Tail), LedgerError> {
        let mut pos = 0;
        let mut line_no = 0u64;
        let corrupt = |path: &Path, line: u64| {
            let path = path.to_path_buf();
            move |problem| LedgerError::Corrupt {
                path,
                line,
                problem,
            }
        };
        while pos < data.len() {
            line_no += 1;
            let rest = &data[pos..];
            if let Some(n) = rest.iter().position(|&b| b == b'\n') {
                self.replay_line(&rest[..n])
                    .map_err(corrupt(&self.path, line_no))?;
                pos += n + 1;
                continue;
            }
            // The last line has no line end.
            let end = rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            let whole = std::str::from_utf8(&rest[..end])
                .is_ok_and(|t| serde_json::from_str::<Entry>(t).is_ok());
            if whole {
                // A whole entry whose `\n` is missing: most likely a crash after the line but
                // before its end reached the disk, so `commit` never returned. Count it anyway:
                // dropping a line that *was* acknowledged (and whose release was sent) would
                // under-count, counting one that was not only over-counts, and its release is
                // stored, so a retry sends exactly that release.
                self.replay_line(&rest[..end])
                    .map_err(corrupt(&self.path, line_no))?;
                return Ok((
                    pos,
                    Tail::Unterminated {
                        line: line_no,
                        end: pos + end,
                    },
                ));
            }
            if is_torn_write(rest) {
                return Ok((
                    pos,
                    Tail::Torn {
                        line: line_no,
                        bytes: rest.len() as u64,
                    },
                ));
            }
            let problem = self
                .replay_line(rest)
                .err()
                .unwrap_or(Corruption::IncompleteNotTorn);
            return Err(corrupt(&self.path, line_no)(problem));
        }
        Ok((pos, Tail::Clean))
    }

    fn replay_line(&mut self, bytes: &[u8]) -> Result<(), Corruption> {
        let text = std::str::from_utf8(bytes).map_err(|_| Corruption::NotUtf8)?;
        if text.is_empty() {
            return Err(Corruption::Empty);
        }
        let entry: Entry =
            serde_json::from_str(text).map_err(|e| Corruption::Unparsable(e.to_string()))?;
        let expected = self.entries.len() as u64;
        if entry.seq != expected {
            return Err(Corruption::Seq {
                expected,
                found: entry.seq,
            });
        }
        for (field, value) in [("job", &entry.job), ("stage", &entry.stage)] {
            check_name(field, value).map_err(|r| Corruption::BadField {
                field,
                reason: r.to_string(),
            })?;
        }
        if !store::is_sha256_hex(&entry.release_sha256) {
            return Err(Corruption::BadField {
                field: "release_sha256",
                reason: "must be 64 lowercase hexadecimal digits".to_owned(),
            });
        }
        let key = (entry.job.clone(), entry.round, entry.stage.clone());
        if let Some(&first) = self.keys.get(&key) {
            return Err(Corruption::Duplicate {
                first_line: first as u64 + 1,
            });
        }
        let step = self
            .step(
                &entry.job,
                entry.round,
                entry.unit,
                entry.delta,
                &entry.charge,
            )
            .map_err(|r| match r {
                Refusal::DeltaMismatch {
                    recorded, given, ..
                } => Corruption::DeltaMismatch {
                    recorded,
                    found: given,
                },
                Refusal::UnitMismatch {
                    recorded, given, ..
                } => Corruption::UnitMismatch {
                    recorded,
                    found: given,
                },
                Refusal::InvalidCharge { source, .. } => Corruption::InvalidCharge(source),
                other => Corruption::BadField {
                    field: "charge",
                    reason: other.to_string(),
                },
            })?;
        for (field, stored, recomputed) in [
            (
                "job_epsilon_after",
                entry.job_epsilon_after,
                step.state.epsilon,
            ),
            ("total_epsilon_after", entry.total_epsilon_after, step.total),
        ] {
            if !close(stored, recomputed) {
                return Err(Corruption::EpsilonMismatch {
                    field,
                    stored,
                    recomputed,
                });
            }
        }
        self.apply(key, step, entry);
        Ok(())
    }

    /// The job's state with one more charge, and the site's total then. Pure.
    fn step(
        &self,
        job: &str,
        round: Option<u32>,
        unit: Unit,
        delta: f64,
        charge: &Charge,
    ) -> Result<Step, Refusal> {
        let mut state = self
            .job_state(job, unit, delta)?
            .cloned()
            .unwrap_or_else(|| JobState {
                unit,
                delta,
                acc: RdpAccountant::new(),
                epsilon: 0.0,
                rdp_order: 0.0,
                entries: 0,
                rounds: BTreeSet::new(),
            });
        let invalid = |source: PrivacyError| Refusal::InvalidCharge {
            job: job.to_owned(),
            source,
        };
        // Composed one charge at a time in ledger order: exactly what `epsilon_of` does with
        // the job's charges, so the two agree to the bit.
        let curve = charge.rdp(state.acc.orders()).map_err(invalid)?;
        state.acc.compose_rdp(&curve, 1).map_err(invalid)?;
        let (epsilon, order) = state.acc.epsilon(delta).map_err(invalid)?;
        state.epsilon = epsilon;
        state.rdp_order = order;
        state.entries += 1;
        if let Some(r) = round {
            state.rounds.insert(r);
        }
        let total = self.total_with(job, epsilon);
        Ok(Step { state, total })
    }

    /// The job's recorded state, after checking `unit` and `delta` against it.
    fn job_state(&self, job: &str, unit: Unit, delta: f64) -> Result<Option<&JobState>, Refusal> {
        let Some(s) = self.jobs.get(job) else {
            return Ok(None);
        };
        if s.delta.to_bits() != delta.to_bits() {
            return Err(Refusal::DeltaMismatch {
                job: job.to_owned(),
                recorded: s.delta,
                given: delta,
            });
        }
        if s.unit != unit {
            return Err(Refusal::UnitMismatch {
                job: job.to_owned(),
                recorded: s.unit,
                given: unit,
            });
        }
        Ok(Some(s))
    }

    fn apply(&mut self, key: Key, step: Step, entry: Entry) {
        self.keys.insert(key, self.entries.len());
        self.jobs.insert(entry.job.clone(), step.state);
        self.entries.push(entry);
    }

    /// The site's total if `job`'s epsilon were `epsilon`: the sum over jobs in name order
    /// (the same order, hence the same bits, as [`Ledger::total_epsilon`]).
    fn total_with(&self, job: &str, epsilon: f64) -> f64 {
        let mut total = 0.0;
        let mut placed = false;
        for (name, s) in &self.jobs {
            if !placed && name.as_str() >= job {
                total += epsilon;
                placed = true;
                if name == job {
                    continue;
                }
            }
            total += s.epsilon;
        }
        if !placed {
            total += epsilon;
        }
        total
    }

    /// Would a job with these planned charges (its whole run, including any rounds already
    /// charged) fit? Returns the plan's epsilon ([`epsilon_of`] of `planned` at `delta`), or
    /// why not: the per-job cap, or the site's total cap given what the other jobs have
    /// spent; or a delta or unit different from what the job already recorded. Writes nothing.
    pub fn check_plan(
        &self,
        job: &str,
        unit: Unit,
        delta: f64,
        planned: &[Charge],
        caps: &Caps,
    ) -> Result<f64, Refusal> {
        check_name("job", job)?;
        let recorded = self.job_state(job, unit, delta)?;
        let (planned_epsilon, _) =
            epsilon_of(planned, delta).map_err(|source| Refusal::InvalidCharge {
                job: job.to_owned(),
                source,
            })?;
        // If the plan somehow covers less than is already spent, the spent amount counts.
        let job_epsilon = recorded.map_or(planned_epsilon, |s| planned_epsilon.max(s.epsilon));
        caps.check(job, job_epsilon, self.total_with(job, job_epsilon))?;
        Ok(planned_epsilon)
    }

    /// Records `charge` for (`job`, `round`, `stage`) durably, **before** the caller sends
    /// `release` (the exact bytes of the DP output: the noised update before masking).
    ///
    /// In order: refuses if the job's epsilon after this charge would exceed
    /// `caps.max_epsilon_per_job()` or the site's total would exceed `caps.max_epsilon_total()`
    /// (or delta/unit differ from the job's, or the charge is invalid), writing nothing;
    /// stores `release` beside the ledger (fsync of file and directory); appends the entry
    /// (fsync). Returns only when both are durable.
    ///
    /// The same (job, round, stage) again is idempotent if release, charge, unit and delta
    /// are identical (`newly_recorded: false`, nothing written, nothing spent; the stored
    /// release is rewritten from `release` if it was lost) and refused
    /// ([`Refusal::AlreadyCommitted`]) otherwise. Call [`Ledger::committed_release`] first
    /// and send what it returns.
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        &mut self,
        job: &str,
        round: Option<u32>,
        stage: &str,
        unit: Unit,
        delta: f64,
        charge: Charge,
        release: &[u8],
        caps: &Caps,
        now_ms: u64,
    ) -> Result<Committed, CommitError> {
        check_name("job", job)?;
        check_name("stage", stage)?;
        if self.writer.is_none() {
            return Err(LedgerError::ReadOnly {
                path: self.path.clone(),
            }
            .into());
        }
        let sha = store::sha256_hex(release);
        let key: Key = (job.to_owned(), round, stage.to_owned());
        if let Some(&i) = self.keys.get(&key) {
            let e = &self.entries[i];
            let same = e.release_sha256 == sha
                && e.release_bytes == release.len() as u64
                && e.charge == charge
                && e.unit == unit
                && e.delta.to_bits() == delta.to_bits();
            if !same {
                return Err(Refusal::AlreadyCommitted {
                    job: job.to_owned(),
                    round,
                    stage: stage.to_owned(),
                    seq: e.seq,
                }
                .into());
            }
            store::put_release(&self.releases, &sha, release)?;
            return Ok(Committed {
                seq: e.seq,
                job_epsilon_after: e.job_epsilon_after,
                total_epsilon_after: e.total_epsilon_after,
                release_sha256: sha,
                newly_recorded: false,
            });
        }
        let step = self.step(job, round, unit, delta, &charge)?;
        caps.check(job, step.state.epsilon, step.total)?;
        let entry = Entry {
            seq: self.entries.len() as u64,
            time_ms: now_ms,
            job: job.to_owned(),
            round,
            stage: stage.to_owned(),
            unit,
            delta,
            charge,
            release_sha256: sha.clone(),
            release_bytes: release.len() as u64,
            job_epsilon_after: step.state.epsilon,
            total_epsilon_after: step.total,
        };
        let mut line =
            serde_json::to_string(&entry).map_err(|e| LedgerError::Encode(e.to_string()))?;
        line.push('\n');
        let writer = self.writer.as_mut().ok_or_else(|| LedgerError::ReadOnly {
            path: self.path.clone(),
        })?;
        writer.check_unchanged(&self.path)?;
        store::put_release(&self.releases, &sha, release)?;
        writer.append(&self.path, line.as_bytes())?;
        let committed = Committed {
            seq: entry.seq,
            job_epsilon_after: entry.job_epsilon_after,
            total_epsilon_after: entry.total_epsilon_after,
            release_sha256: sha,
            newly_recorded: true,
        };
        self.apply(key, step, entry);
        Ok(committed)
    }

    /// The release stored by an earlier commit of (`job`, `round`, `stage`), checked against
    /// its entry's SHA-256 and length; `None` if there was no such commit. After a crash the
    /// caller sends this instead of producing a new release.
    pub fn committed_release(
        &self,
        job: &str,
        round: Option<u32>,
        stage: &str,
    ) -> Result<Option<Vec<u8>>, LedgerError> {
        match self.keys.get(&(job.to_owned(), round, stage.to_owned())) {
            Some(&i) => store::get_release(&self.releases, &self.entries[i]).map(Some),
            None => Ok(None),
        }
    }

    /// Reads back every stored release and checks it against its entry; returns how many.
    pub fn verify_releases(&self) -> Result<usize, LedgerError> {
        for e in &self.entries {
            store::get_release(&self.releases, e)?;
        }
        Ok(self.entries.len())
    }

    /// What `job` has spent, if it has any entry.
    pub fn job_spend(&self, job: &str) -> Option<JobSpend> {
        self.jobs.get(job).map(|s| spend(job, s))
    }

    /// Every job's spend, by job id.
    pub fn jobs(&self) -> Vec<JobSpend> {
        self.jobs.iter().map(|(j, s)| spend(j, s)).collect()
    }

    /// The site's total epsilon: the sum of the jobs' epsilons (basic composition).
    pub fn total_epsilon(&self) -> f64 {
        self.jobs.values().fold(0.0, |t, s| t + s.epsilon)
    }

    /// The site's total delta: the sum of the jobs' deltas.
    pub fn total_delta(&self) -> f64 {
        self.jobs.values().fold(0.0, |t, s| t + s.delta)
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Warnings from opening (for the caller's log).
    pub fn notes(&self) -> &[OpenNote] {
        &self.notes
    }

    /// The ledger file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding the releases.
    pub fn releases_dir(&self) -> &Path {
        &self.releases
    }
}

fn spend(job: &str, s: &JobState) -> JobSpend {
    JobSpend {
        job: job.to_owned(),
        unit: s.unit,
        delta: s.delta,
        epsilon: s.epsilon,
        rdp_order: s.rdp_order,
        entries: s.entries,
        rounds_charged: s.rounds.len(),
    }
}

fn releases_dir(path: &Path) -> Result<PathBuf, LedgerError> {
    let name = path.file_name().ok_or_else(|| LedgerError::Io {
        action: "use as a ledger file",
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path does not name a file",
        ),
    })?;
    let mut dir = name.to_os_string();
    dir.push(RELEASES_DIR_SUFFIX);
    Ok(path.with_file_name(dir))
}

#[cfg(test)]
mod tests;
