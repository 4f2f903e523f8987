//! The coordinator's durable state: one crash-safe file (a [redb] database) holding jobs, their
//! event logs, the global model after every round and each finished job's results.
//!
//! # Guarantees
//!
//! - **Each call is one committed transaction.** Every writing method opens a write
//!   transaction, makes all of its changes, and commits with redb's default immediate
//!   durability (fsync) before returning. After it returns `Ok`, the data survives a crash or
//!   power cut; if it returns `Err` or the process dies mid-call, none of its changes are there.
//!   Calls that write two things ([`Store::put_round`], [`Store::put_result`]) write both or
//!   neither. The coordinator relies on this to write every state change *before* acting on it.
//! - **One coordinator per file.** The file is locked while a [`Store`] is open; a second open,
//!   from this process or another, fails with an error saying the file is in use.
//! - **Versioned schema.** A `meta` table records [`SCHEMA_VERSION`]. A file written by a newer
//!   fedcare is refused rather than misread; a later version migrates older files on open.
//! - **Thread-safe.** `Store` is `Send + Sync`; redb serialises write transactions, so
//!   concurrent [`Store::append_event`] calls still get consecutive sequence numbers.
//! - **Damage is reported, not trusted.** The file's page checksums are verified on open, and
//!   every value read back is decoded without panicking: a bad record is a
//!   [`StoreError::Corrupt`].
//!
//! # What it never does
//!
//! - It never overwrites or initialises a file it did not create (random bytes, or another
//!   program's redb file): that is an open error, and the file is left untouched.
//! - It never interprets job events or round/report JSON: they are opaque bytes and text.
//! - It never deletes anything, never writes outside its one file, and does no networking.
//! - It never silently replaces a record that is written once (a job, a round, a result):
//!   that is [`StoreError::AlreadyExists`], because such records may already have been acted on.
//! - It never attaches data to a job that was not inserted: that is [`StoreError::NotFound`],
//!   so a typo in a job id cannot create orphan records.
//!
//! # Layout (schema version 1)
//!
//! Text is stored as UTF-8 bytes (`&[u8]`) rather than redb's `&str`, because redb decodes
//! `&str` with a panic on invalid UTF-8; the store decodes it and reports [`StoreError::Corrupt`].
//! For the same reason job ids inside composite keys are bytes. Tuple keys sort element-wise,
//! so all entries of one job are contiguous and ordered by their number.
//!
//! | table            | key                         | value                                 |
//! |------------------|-----------------------------|---------------------------------------|
//! | `meta`           | `&str` (`"schema_version"`) | `u64`                                 |
//! | `jobs`           | `&str` job id               | JSON of [`JobRecord`]                 |
//! | `job_order`      | `u64` submission number     | job id                                |
//! | `events`         | `(&[u8] job id, u64 seq)`   | event bytes                           |
//! | `round_models`   | `(&[u8] job id, u32 round)` | model, f32 little-endian              |
//! | `round_records`  | `(&[u8] job id, u32 round)` | round record JSON                     |
//! | `result_models`  | `&str` job id               | final model file bytes                |
//! | `result_reports` | `&str` job id               | final report JSON                     |

mod error;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

pub use error::StoreError;
use error::{not_ours, open_error};

/// The layout version this build writes and understands. Bump it (and add a migration in
/// [`Store::open`]) whenever a table is added, removed or changes meaning.
pub const SCHEMA_VERSION: u64 = 1;

/// Where the layout version lives: its own table, so that every future layout can read it
/// before touching anything else.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SCHEMA_VERSION_KEY: &str = "schema_version";

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const JOB_ORDER: TableDefinition<u64, &[u8]> = TableDefinition::new("job_order");
const EVENTS: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("events");
const ROUND_MODELS: TableDefinition<(&[u8], u32), &[u8]> = TableDefinition::new("round_models");
const ROUND_RECORDS: TableDefinition<(&[u8], u32), &[u8]> = TableDefinition::new("round_records");
const RESULT_MODELS: TableDefinition<&str, &[u8]> = TableDefinition::new("result_models");
const RESULT_REPORTS: TableDefinition<&str, &[u8]> = TableDefinition::new("result_reports");

/// Where a job stands. Stored inside [`JobRecord`] as JSON, so new variants can be added later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    Running,
    Finished,
    Failed { reason: String },
    /// Stopped on request (`reason` names who asked, and why).
    Cancelled { reason: String },
}

impl JobStatus {
    /// The state's name as the admin API and the CLI show it.
    pub fn name(&self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Finished => "finished",
            JobStatus::Failed { .. } => "failed",
            JobStatus::Cancelled { .. } => "cancelled",
        }
    }

    /// Why the job failed or was cancelled (empty otherwise).
    pub fn reason(&self) -> &str {
        match self {
            JobStatus::Failed { reason } | JobStatus::Cancelled { reason } => reason,
            _ => "",
        }
    }
}

/// A submitted job as the coordinator recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub name: String,
    /// The job spec exactly as submitted, so the job can be re-read after a restart.
    pub spec_toml: String,
    pub submitted_unix_ms: u64,
    pub status: JobStatus,
}

/// The open state file. Cheap to share: wrap it in an `Arc` and call it from any thread.
pub struct Store {
    db: Database,
    path: PathBuf,
}

// Other crates hold a Store across threads and tasks; fail the build here, not there.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
};

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish_non_exhaustive()
    }
}

/// redb's page cache (see [`Store::open`]).
const CACHE_BYTES: usize = 16 << 20;

impl Store {
    /// Opens or creates the file. Errors name the path and say what is wrong in words a
    /// hospital IT person understands (directory missing, permission denied, file locked by
    /// another coordinator, not a fedcare state file, newer schema version).
    ///
    /// The whole file's checksums are verified on open (redb's integrity check): a damaged file
    /// is then refused with a clear message instead of risking a panic later. This costs one
    /// read of the file at startup, which is cheap next to a federated training run.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut builder = Database::builder();
        builder.set_check_integrity_on_open(true);
        // redb caches up to 1 GiB of pages by default. The coordinator reads little back (a
        // resumed job's last model, a finished job's result), and each round writes a whole
        // model: a small cache keeps its memory near one model instead of growing by one
        // model per stored round.
        builder.set_cache_size(CACHE_BYTES);
        let db = builder.create(path).map_err(|e| open_error(path, e))?;
        let store = Store {
            db,
            path: path.to_path_buf(),
        };
        // On error the Database is dropped here, which releases the file lock.
        let created = store.init_schema()?;
        if created {
            tracing::info!(path = %path.display(), "created fedcare state file");
        } else {
            tracing::info!(path = %path.display(), "opened fedcare state file");
        }
        Ok(store)
    }

    /// The path the store was opened with (for log and error messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the file is ours and current, or initialises an empty one. Returns whether it
    /// initialised. Runs in one write transaction, so a crash half-way leaves an empty file that
    /// the next open initialises again.
    fn init_schema(&self) -> Result<bool, StoreError> {
        let refuse = |reason: String| StoreError::Open {
            path: self.path.clone(),
            reason,
        };
        let txn = self.db.begin_write().map_err(|e| self.open_failed(e))?;
        let tables: Vec<String> = txn
            .list_tables()
            .map_err(|e| self.open_failed(e))?
            .map(|t| t.name().to_string())
            .collect();
        let multimap_tables = txn
            .list_multimap_tables()
            .map_err(|e| self.open_failed(e))?
            .count();
        let created = if tables.iter().any(|t| t == META.name()) {
            let meta = txn.open_table(META).map_err(|_| {
                refuse(not_ours("its `meta` table does not have fedcare's layout"))
            })?;
            let version = meta
                .get(SCHEMA_VERSION_KEY)
                .map_err(|e| self.open_failed(e))?
                .map(|v| v.value());
            match version {
                None => return Err(refuse(not_ours("it has no fedcare schema version"))),
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(refuse(format!(
                        "it was written by a newer version of fedcare (state format version {v}; \
                         this coordinator understands version {SCHEMA_VERSION}). Upgrade the \
                         coordinator. The file was not changed"
                    )));
                }
                // Version 1 is the first; a lower number was never written by fedcare.
                Some(v) if v < SCHEMA_VERSION => {
                    return Err(refuse(not_ours(&format!(
                        "it claims state format version {v}, which fedcare never used"
                    ))));
                }
                Some(_) => false,
            }
        } else if !tables.is_empty() || multimap_tables > 0 {
            return Err(refuse(not_ours(&format!(
                "it is a database of another program, with tables {}",
                tables.join(", ")
            ))));
        } else {
            let mut meta = txn.open_table(META).map_err(|e| self.open_failed(e))?;
            meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)
                .map_err(|e| self.open_failed(e))?;
            true
        };
        // Opening a table in a write transaction creates it, so every later read can assume
        // all tables exist and treat a missing one as damage.
        for result in [
            txn.open_table(JOBS).map(drop),
            txn.open_table(JOB_ORDER).map(drop),
            txn.open_table(EVENTS).map(drop),
            txn.open_table(ROUND_MODELS).map(drop),
            txn.open_table(ROUND_RECORDS).map(drop),
            txn.open_table(RESULT_MODELS).map(drop),
            txn.open_table(RESULT_REPORTS).map(drop),
        ] {
            result.map_err(|e| {
                refuse(not_ours(&format!("a table does not have fedcare's layout: {e}")))
            })?;
        }
        txn.commit().map_err(|e| self.open_failed(e))?;
        Ok(created)
    }

    /// Records a new job; AlreadyExists error if the id is present.
    ///
    /// Also gives the job the next submission number, which is what [`Store::jobs`] orders by
    /// (the wall-clock `submitted_unix_ms` can repeat or go backwards).
    pub fn insert_job(&self, rec: &JobRecord) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut jobs = txn.open_table(JOBS).map_err(|e| self.db_err(e))?;
            if jobs.get(rec.job_id.as_str()).map_err(|e| self.db_err(e))?.is_some() {
                return Err(StoreError::AlreadyExists(job_label(&rec.job_id)));
            }
            let json = encode_job(rec)?;
            jobs.insert(rec.job_id.as_str(), json.as_slice())
                .map_err(|e| self.db_err(e))?;
            let mut order = txn.open_table(JOB_ORDER).map_err(|e| self.db_err(e))?;
            let next = match order.last().map_err(|e| self.db_err(e))? {
                Some((k, _)) => k.value().checked_add(1).ok_or_else(|| {
                    StoreError::Corrupt(format!("{}: job counter is at its maximum", self.here()))
                })?,
                None => 0,
            };
            order
                .insert(next, rec.job_id.as_bytes())
                .map_err(|e| self.db_err(e))?;
            Ok(())
        })
    }

    /// Replaces a job's status; NotFound if the job is unknown. Any transition is allowed: the
    /// coordinator, not the store, owns the job lifecycle.
    pub fn set_status(&self, job_id: &str, status: &JobStatus) -> Result<(), StoreError> {
        self.write(|txn| self.set_status_in(txn, job_id, status))
    }

    /// One job, or `None` if it was never inserted.
    pub fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.read(|txn| {
            let jobs = txn.open_table(JOBS).map_err(|e| self.db_err(e))?;
            match jobs.get(job_id).map_err(|e| self.db_err(e))? {
                Some(v) => Ok(Some(self.decode_job(job_id, v.value())?)),
                None => Ok(None),
            }
        })
    }

    /// All jobs, in submission order (the order of [`Store::insert_job`] calls).
    pub fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.read(|txn| {
            let order = txn.open_table(JOB_ORDER).map_err(|e| self.db_err(e))?;
            let jobs = txn.open_table(JOBS).map_err(|e| self.db_err(e))?;
            let mut out = Vec::new();
            for entry in order.iter().map_err(|e| self.db_err(e))? {
                let (_, id) = entry.map_err(|e| self.db_err(e))?;
                let id = self.utf8(id.value(), "a job id in the submission order")?;
                let rec = jobs.get(id).map_err(|e| self.db_err(e))?.ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "{}: job \"{id}\" is listed in the submission order but has no record",
                        self.here()
                    ))
                })?;
                out.push(self.decode_job(id, rec.value())?);
            }
            Ok(out)
        })
    }

    /// Job events (already-encoded bytes, opaque to the store), appended with consecutive
    /// sequence numbers from 0; returns the seq. NotFound if the job is unknown.
    ///
    /// The next number is derived from the last stored event inside the same write
    /// transaction, and redb runs one write transaction at a time, so concurrent appends never
    /// share or skip a number.
    pub fn append_event(&self, job_id: &str, event: &[u8]) -> Result<u64, StoreError> {
        self.write(|txn| {
            self.require_job(txn, job_id)?;
            let mut events = txn.open_table(EVENTS).map_err(|e| self.db_err(e))?;
            let key = job_id.as_bytes();
            let last = events
                .range((key, 0u64)..=(key, u64::MAX))
                .map_err(|e| self.db_err(e))?
                .next_back()
                .transpose()
                .map_err(|e| self.db_err(e))?
                .map(|(k, _)| k.value().1);
            let seq = match last {
                Some(s) => s.checked_add(1).ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "{}: event counter of job \"{job_id}\" is at its maximum",
                        self.here()
                    ))
                })?,
                None => 0,
            };
            events
                .insert((key, seq), event)
                .map_err(|e| self.db_err(e))?;
            Ok(seq)
        })
    }

    /// A job's events in sequence order; empty if the job has none (or is unknown).
    pub fn events(&self, job_id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        self.read(|txn| {
            let events = txn.open_table(EVENTS).map_err(|e| self.db_err(e))?;
            let key = job_id.as_bytes();
            let mut out = Vec::new();
            for entry in events
                .range((key, 0u64)..=(key, u64::MAX))
                .map_err(|e| self.db_err(e))?
            {
                let (_, v) = entry.map_err(|e| self.db_err(e))?;
                out.push(v.value().to_vec());
            }
            Ok(out)
        })
    }

    /// The global model after a round (flat f32 values) and the round's record (JSON text),
    /// written in ONE transaction, so after a crash a round is either fully recorded or absent.
    /// NotFound if the job is unknown; AlreadyExists if the round was already written (its
    /// model may already have been sent to the sites, so it must not change under them).
    pub fn put_round(
        &self,
        job_id: &str,
        round: u32,
        model: &[f32],
        record_json: &str,
    ) -> Result<(), StoreError> {
        self.write(|txn| {
            self.require_job(txn, job_id)?;
            let key = (job_id.as_bytes(), round);
            let mut models = txn.open_table(ROUND_MODELS).map_err(|e| self.db_err(e))?;
            if models.get(key).map_err(|e| self.db_err(e))?.is_some() {
                return Err(StoreError::AlreadyExists(format!(
                    "round {round} of {}",
                    job_label(job_id)
                )));
            }
            models
                .insert(key, encode_f32s(model).as_slice())
                .map_err(|e| self.db_err(e))?;
            let mut records = txn.open_table(ROUND_RECORDS).map_err(|e| self.db_err(e))?;
            records
                .insert(key, record_json.as_bytes())
                .map_err(|e| self.db_err(e))?;
            Ok(())
        })
    }

    /// The global model after `round`, or `None` if that round was not written.
    pub fn round_model(&self, job_id: &str, round: u32) -> Result<Option<Vec<f32>>, StoreError> {
        self.read(|txn| {
            let models = txn.open_table(ROUND_MODELS).map_err(|e| self.db_err(e))?;
            match models
                .get((job_id.as_bytes(), round))
                .map_err(|e| self.db_err(e))?
            {
                Some(v) => Ok(Some(self.decode_f32s(v.value(), job_id, round)?)),
                None => Ok(None),
            }
        })
    }

    /// The record (JSON text) written with `round`, or `None` if that round was not written.
    pub fn round_record(&self, job_id: &str, round: u32) -> Result<Option<String>, StoreError> {
        self.read(|txn| {
            let records = txn.open_table(ROUND_RECORDS).map_err(|e| self.db_err(e))?;
            match records
                .get((job_id.as_bytes(), round))
                .map_err(|e| self.db_err(e))?
            {
                Some(v) => Ok(Some(
                    self.utf8(v.value(), "a round record")?.to_string(),
                )),
                None => Ok(None),
            }
        })
    }

    /// The highest round written for the job, or `None` if none was. This is where a resumed
    /// job continues from.
    pub fn last_round(&self, job_id: &str) -> Result<Option<u32>, StoreError> {
        self.read(|txn| {
            let models = txn.open_table(ROUND_MODELS).map_err(|e| self.db_err(e))?;
            let key = job_id.as_bytes();
            let last = models
                .range((key, 0u32)..=(key, u32::MAX))
                .map_err(|e| self.db_err(e))?
                .next_back()
                .transpose()
                .map_err(|e| self.db_err(e))?
                .map(|(k, _)| k.value().1);
            Ok(last)
        })
    }

    /// Final artefacts of a finished job: model file bytes and report JSON; also sets status
    /// Finished in the same transaction, so a job is never "Finished" without its results nor
    /// has results while still "Running". NotFound if the job is unknown; AlreadyExists if
    /// results were already written.
    pub fn put_result(
        &self,
        job_id: &str,
        model_bytes: &[u8],
        report_json: &str,
    ) -> Result<(), StoreError> {
        self.write(|txn| {
            self.set_status_in(txn, job_id, &JobStatus::Finished)?;
            let mut models = txn.open_table(RESULT_MODELS).map_err(|e| self.db_err(e))?;
            if models.get(job_id).map_err(|e| self.db_err(e))?.is_some() {
                return Err(StoreError::AlreadyExists(format!(
                    "the result of {}",
                    job_label(job_id)
                )));
            }
            models
                .insert(job_id, model_bytes)
                .map_err(|e| self.db_err(e))?;
            let mut reports = txn.open_table(RESULT_REPORTS).map_err(|e| self.db_err(e))?;
            reports
                .insert(job_id, report_json.as_bytes())
                .map_err(|e| self.db_err(e))?;
            Ok(())
        })
    }

    /// The final model file bytes and report JSON, or `None` if the job has no result yet.
    pub fn result(&self, job_id: &str) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        self.read(|txn| {
            let models = txn.open_table(RESULT_MODELS).map_err(|e| self.db_err(e))?;
            let reports = txn.open_table(RESULT_REPORTS).map_err(|e| self.db_err(e))?;
            let model = models.get(job_id).map_err(|e| self.db_err(e))?;
            let report = reports.get(job_id).map_err(|e| self.db_err(e))?;
            match (model, report) {
                (Some(m), Some(r)) => Ok(Some((
                    m.value().to_vec(),
                    self.utf8(r.value(), "a result report")?.to_string(),
                ))),
                (None, None) => Ok(None),
                _ => Err(StoreError::Corrupt(format!(
                    "{}: the result of job \"{job_id}\" is only half there",
                    self.here()
                ))),
            }
        })
    }

    // ---- helpers ----

    /// Runs `f` in a write transaction and commits it. If `f` fails, the transaction is dropped
    /// uncommitted, which redb rolls back: a failed call changes nothing.
    fn write<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        let out = f(&txn)?;
        txn.commit().map_err(|e| self.db_err(e))?;
        Ok(out)
    }

    /// Runs `f` in a read transaction: a consistent snapshot of the last commit.
    fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        f(&txn)
    }

    fn set_status_in(
        &self,
        txn: &WriteTransaction,
        job_id: &str,
        status: &JobStatus,
    ) -> Result<(), StoreError> {
        let mut jobs = txn.open_table(JOBS).map_err(|e| self.db_err(e))?;
        let mut rec = match jobs.get(job_id).map_err(|e| self.db_err(e))? {
            Some(v) => self.decode_job(job_id, v.value())?,
            None => return Err(StoreError::NotFound(job_label(job_id))),
        };
        rec.status = status.clone();
        let json = encode_job(&rec)?;
        jobs.insert(job_id, json.as_slice())
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    fn require_job(&self, txn: &WriteTransaction, job_id: &str) -> Result<(), StoreError> {
        let jobs = txn.open_table(JOBS).map_err(|e| self.db_err(e))?;
        if jobs.get(job_id).map_err(|e| self.db_err(e))?.is_none() {
            return Err(StoreError::NotFound(job_label(job_id)));
        }
        Ok(())
    }

    fn decode_job(&self, job_id: &str, bytes: &[u8]) -> Result<JobRecord, StoreError> {
        let rec: JobRecord = serde_json::from_slice(bytes).map_err(|e| {
            StoreError::Corrupt(format!(
                "{}: the record of job \"{job_id}\" does not decode: {e}",
                self.here()
            ))
        })?;
        if rec.job_id != job_id {
            return Err(StoreError::Corrupt(format!(
                "{}: the record stored under job \"{job_id}\" is for job \"{}\"",
                self.here(),
                rec.job_id
            )));
        }
        Ok(rec)
    }

    fn decode_f32s(&self, bytes: &[u8], job_id: &str, round: u32) -> Result<Vec<f32>, StoreError> {
        decode_f32s(bytes).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "{}: the model of round {round} of job \"{job_id}\" is {} bytes, not a whole \
                 number of f32 values",
                self.here(),
                bytes.len()
            ))
        })
    }

    fn utf8<'a>(&self, bytes: &'a [u8], what: &str) -> Result<&'a str, StoreError> {
        std::str::from_utf8(bytes).map_err(|e| {
            StoreError::Corrupt(format!("{}: {what} is not valid text: {e}", self.here()))
        })
    }

    /// Prefix for runtime messages, so a log line names the file without the caller's help.
    fn here(&self) -> String {
        self.path.display().to_string()
    }

    /// A redb failure while the file is open: damage is Corrupt, anything else Io.
    fn db_err(&self, err: impl Into<redb::Error>) -> StoreError {
        match err.into() {
            redb::Error::Corrupted(msg) => StoreError::Corrupt(format!("{}: {msg}", self.here())),
            other => StoreError::Io(format!("{}: {other}", self.here())),
        }
    }

    /// A redb failure during `open`: reported as an open error naming the path.
    fn open_failed(&self, err: impl Into<redb::Error>) -> StoreError {
        let reason = match err.into() {
            redb::Error::Corrupted(msg) => format!(
                "the file is damaged ({msg}); restore it from a backup"
            ),
            other => format!("the database engine failed: {other}"),
        };
        StoreError::Open {
            path: self.path.clone(),
            reason,
        }
    }
}

fn job_label(job_id: &str) -> String {
    format!("job \"{job_id}\"")
}

fn encode_job(rec: &JobRecord) -> Result<Vec<u8>, StoreError> {
    // Serialising plain strings and integers cannot fail; mapped rather than unwrapped anyway.
    serde_json::to_vec(rec)
        .map_err(|e| StoreError::Io(format!("cannot encode job \"{}\": {e}", rec.job_id)))
}

/// Little-endian so the file reads the same on any machine it is copied to.
fn encode_f32s(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `None` if the length is not a multiple of 4 (so the blob is not what `encode_f32s` wrote).
fn decode_f32s(bytes: &[u8]) -> Option<Vec<f32>> {
    let chunks = bytes.chunks_exact(4);
    if !chunks.remainder().is_empty() {
        return None;
    }
    Some(
        chunks
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}
