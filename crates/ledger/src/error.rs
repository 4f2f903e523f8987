//! What can go wrong, in three kinds that call for different reactions:
//!
//! * [`Refusal`]: the ledger says no (a cap would be crossed, the job's delta or unit changed,
//!   the charge is invalid, the (job, round, stage) was already charged for a different
//!   release). Nothing was written; the site must not send, and may tell the coordinator why
//!   in a category.
//! * [`LedgerError`]: the ledger itself cannot be trusted or used (I/O, a damaged line, a
//!   stored release that no longer matches its entry, another program holding the lock). The
//!   site must stop sending anything that needs privacy accounting until a person looks.
//! * [`CommitError`]: either of the two, from [`crate::Ledger::commit`].
//!
//! [`OpenNote`] is not an error: a warning from [`crate::Ledger::open`] for the caller's log.

use std::path::PathBuf;

use fedcare_privacy::{PrivacyError, Unit};

/// Why a plan or a charge was refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The job's epsilon would exceed the site's per-job cap.
    #[error(
        "job {job}: its epsilon would reach {epsilon:.6}, over this site's per-job cap of {cap} by {:.6}",
        .epsilon - .cap
    )]
    JobCap {
        /// The job.
        job: String,
        /// The job's epsilon if this were accepted.
        epsilon: f64,
        /// The per-job cap.
        cap: f64,
    },
    /// The site's total epsilon (sum over jobs) would exceed the site's total cap.
    #[error(
        "job {job}: this site's total epsilon over all jobs would reach {total:.6}, over its total cap of {cap} by {:.6}",
        .total - .cap
    )]
    TotalCap {
        /// The job asking.
        job: String,
        /// The site's total epsilon if this were accepted.
        total: f64,
        /// The total cap.
        cap: f64,
    },
    /// The job was charged before at another delta; one job has one delta.
    #[error(
        "job {job}: delta {given:e} differs from the delta {recorded:e} already recorded for this job"
    )]
    DeltaMismatch {
        /// The job.
        job: String,
        /// The delta of the job's earlier entries.
        recorded: f64,
        /// The delta given now.
        given: f64,
    },
    /// The job was charged before for another privacy unit; one job has one unit.
    #[error("job {job}: privacy unit {} differs from the unit {} already recorded for this job", .given.as_str(), .recorded.as_str())]
    UnitMismatch {
        /// The job.
        job: String,
        /// The unit of the job's earlier entries.
        recorded: Unit,
        /// The unit given now.
        given: Unit,
    },
    /// The charge (or delta) cannot be accounted: invalid parameters.
    #[error("job {job}: the privacy cost cannot be computed: {source}")]
    InvalidCharge {
        /// The job.
        job: String,
        /// What the accountant refused.
        #[source]
        source: PrivacyError,
    },
    /// A job or stage name that cannot be recorded (empty, or with control characters).
    #[error("{what} {value:?} cannot be recorded: {reason}")]
    InvalidName {
        /// `"job"` or `"stage"`.
        what: &'static str,
        /// The name given.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// This (job, round, stage) was already charged, for a different release or charge.
    /// Sending a new release would spend again: resend the stored one
    /// ([`crate::Ledger::committed_release`]).
    #[error(
        "job {job}, round {}, stage {stage}: already charged (entry seq {seq}) for a different release or charge; \
         send the stored release instead of a new one",
        crate::render::round_str(*.round)
    )]
    AlreadyCommitted {
        /// The job.
        job: String,
        /// The round.
        round: Option<u32>,
        /// The stage.
        stage: String,
        /// The existing entry.
        seq: u64,
    },
}

/// What is wrong with one stored line (see [`LedgerError::Corrupt`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Corruption {
    /// Not UTF-8 text.
    #[error("not valid UTF-8 text")]
    NotUtf8,
    /// An empty line.
    #[error("empty line")]
    Empty,
    /// Not a ledger entry (bad JSON, missing or unknown field, wrong type).
    #[error("not a ledger entry: {0}")]
    Unparsable(String),
    /// The file's last line has no line end but is not what a crash while writing leaves.
    #[error("the last line has no line end and is not an interrupted write")]
    IncompleteNotTorn,
    /// `seq` does not count from 0 without gaps.
    #[error(
        "expected seq {expected}, found {found}: an entry was removed, duplicated or reordered"
    )]
    Seq {
        /// `seq` this line should have.
        expected: u64,
        /// `seq` it has.
        found: u64,
    },
    /// A field with an impossible value.
    #[error("field {field}: {reason}")]
    BadField {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The same (job, round, stage) was charged twice.
    #[error("this (job, round, stage) was already charged on line {first_line}")]
    Duplicate {
        /// The line of the first charge.
        first_line: u64,
    },
    /// The job's delta changed.
    #[error("delta {found:e} differs from the job's delta {recorded:e}")]
    DeltaMismatch {
        /// The job's delta from its first entry.
        recorded: f64,
        /// This line's delta.
        found: f64,
    },
    /// The job's unit changed.
    #[error("unit {} differs from the job's unit {}", .found.as_str(), .recorded.as_str())]
    UnitMismatch {
        /// The job's unit from its first entry.
        recorded: Unit,
        /// This line's unit.
        found: Unit,
    },
    /// The charge or delta cannot be accounted.
    #[error("the charge cannot be accounted: {0}")]
    InvalidCharge(PrivacyError),
    /// A stored epsilon differs from the one recomputed from the charges.
    #[error("stored {field} {stored} differs from {recomputed} recomputed from the charges")]
    EpsilonMismatch {
        /// `job_epsilon_after` or `total_epsilon_after`.
        field: &'static str,
        /// The stored value.
        stored: f64,
        /// The recomputed value.
        recomputed: f64,
    },
}

/// The ledger cannot be used as it is.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A file-system operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another program (or another `Ledger` in this one) has the ledger open for writing.
    #[error(
        "the privacy ledger {path} is in use by another program (locked); only one program may write to it at a time"
    )]
    Locked {
        /// The ledger file.
        path: PathBuf,
    },
    /// A stored line is damaged or was edited. Nothing is appended to such a ledger.
    #[error("the privacy ledger {path} is damaged or was edited at line {line}: {problem}")]
    Corrupt {
        /// The ledger file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        problem: Corruption,
    },
    /// The release stored for an entry is missing.
    #[error("the release of ledger entry seq {seq} is missing: {path}")]
    ReleaseMissing {
        /// The entry.
        seq: u64,
        /// Where it should be.
        path: PathBuf,
    },
    /// The release stored for an entry is not the one the entry names.
    #[error(
        "the release of ledger entry seq {seq} ({path}) was changed or damaged: the entry names SHA-256 {expected_sha256} \
         ({expected_bytes} bytes), the file has SHA-256 {found_sha256} ({found_bytes} bytes)"
    )]
    ReleaseMismatch {
        /// The entry.
        seq: u64,
        /// The release file.
        path: PathBuf,
        /// SHA-256 named by the entry.
        expected_sha256: String,
        /// Length named by the entry.
        expected_bytes: u64,
        /// SHA-256 of the file.
        found_sha256: String,
        /// Length of the file.
        found_bytes: u64,
    },
    /// The ledger file changed on disk since it was opened (not by this `Ledger`).
    #[error(
        "the privacy ledger {path} was changed on disk since it was opened; refusing to add to it (reopen it to check it)"
    )]
    ModifiedSinceOpen {
        /// The ledger file.
        path: PathBuf,
    },
    /// The ledger was opened read-only.
    #[error("the privacy ledger {path} was opened read-only")]
    ReadOnly {
        /// The ledger file.
        path: PathBuf,
    },
    /// Serialising an entry failed (a bug, not an input problem).
    #[error("internal error encoding a ledger entry: {0}")]
    Encode(String),
}

impl LedgerError {
    /// The 1-based line number of a damaged line, if this error is about one.
    pub fn line(&self) -> Option<u64> {
        match self {
            LedgerError::Corrupt { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// Why [`crate::Ledger::commit`] did not record a charge. Either way nothing new was written
/// and the caller must not send.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The ledger refused the charge.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The ledger could not be used.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// A warning from opening a ledger, for the caller to log. Nothing about the recorded spend is
/// lost: what it describes was never acknowledged to anyone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenNote {
    /// The file ended in an incomplete line: a crash while a commit was being written. That
    /// commit never returned, so nothing was sent because of it. A ledger opened for writing
    /// truncates it away; a read-only one ignores it.
    #[error(
        "the privacy ledger ended in an incomplete line {line} ({bytes} bytes), left by a crash while recording; \
         it was never confirmed, nothing was sent for it, and it was {}",
        if *.removed { "removed" } else { "ignored" }
    )]
    TruncatedLastLine {
        /// 1-based line number.
        line: u64,
        /// Its length in bytes.
        bytes: u64,
        /// Whether it was truncated away (writable open) or only ignored (read-only).
        removed: bool,
    },
    /// The last entry was complete but had no line end: a crash just before it was confirmed
    /// (or an edit). It is counted, which can only over-count (never under-count) the spend;
    /// its release is stored, so a retry re-sends exactly that release.
    #[error(
        "the last entry of the privacy ledger (line {line}) had no line end, probably a crash just before it was \
         confirmed; it is counted as spent{}",
        if *.completed { " and its line end was added" } else { "" }
    )]
    UnterminatedLastLine {
        /// 1-based line number.
        line: u64,
        /// Whether the line end was added (writable open) or not (read-only).
        completed: bool,
    },
}

/// Caps that are not finite and positive.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("privacy cap {name} must be a finite number greater than 0, got {value}")]
pub struct CapsError {
    /// Which cap.
    pub name: &'static str,
    /// Its value.
    pub value: f64,
}
