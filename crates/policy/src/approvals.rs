//! Manual approvals: the jobs a site's admin has approved, and the jobs waiting for them.
//!
//! With `approval = "manual"`, a job that passes the policy waits. The agent records it as
//! *pending* (its hash, when it was offered and its spec text); the admin reviews it with
//! `site-agent jobs show` and approves its hash with `site-agent jobs approve <job-hash>`;
//! at its next look the agent finds the approval and joins. An approval names a job hash, and a
//! hash names one exact spec, so approving a job approves nothing else. It never overrides the
//! policy either: the agent evaluates the policy at every offer, approved or not.
//!
//! The store is a directory beside the policy file (by default `approvals/`):
//!
//! ```text
//! approvals/
//!   approved/<job-hash>.json   who approved the job and when (and the spec, if it was pending)
//!   pending/<job-hash>.json    when the job was offered, and its spec text
//! ```
//!
//! One file per job, so the agent (recording offers) and the admin's command (approving,
//! revoking) never rewrite each other's records and need no lock. Each file is written to a
//! temporary name, fsynced, renamed into place and the directory fsynced: a crash leaves the old
//! record or the new one, never half of one. Nothing is cached in memory, so every question is
//! answered from the disk as it is now. Files whose names are not `<64 hex>.json` are ignored
//! (temporary files start with a dot).
//!
//! Job hashes are checked (64 lowercase hex digits) before they become file names, so no input
//! can name a file outside the store.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use fedcare_job::{JobError, JobId, JobSpec};
use serde::{Deserialize, Serialize};

use crate::policy::clean;

/// Name of the store's directory beside the policy file.
pub const DIR_NAME: &str = "approvals";
/// Fewest hex digits [`Approvals::resolve`] accepts as a prefix.
pub const MIN_PREFIX: usize = 8;

const APPROVED: &str = "approved";
const PENDING: &str = "pending";

/// What can go wrong with the approvals store.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// Not a job hash: 64 lowercase hex digits.
    #[error("`{given}` is not a job hash (64 lowercase hex digits)")]
    BadJobHash { given: String },
    /// Not a usable prefix of a job hash.
    #[error(
        "`{given}` is not a job-hash prefix (at least {MIN_PREFIX} and at most 64 lowercase hex digits)"
    )]
    BadPrefix { given: String },
    /// No job's hash starts with the prefix.
    #[error("no {which} job's hash starts with {prefix}")]
    NoMatch { prefix: String, which: &'static str },
    /// More than one job's hash starts with the prefix.
    #[error("{} {which} jobs' hashes start with {prefix} ({}); give more digits", .matches.len(), join_ids(.matches))]
    Ambiguous {
        prefix: String,
        which: &'static str,
        matches: Vec<JobId>,
    },
    /// The approver's name is empty or contains control characters.
    #[error("the approver's name must be non-empty and printable, got `{given}`")]
    BadApprover { given: String },
    /// A pending job's spec text does not parse as a job spec.
    #[error("the spec offered as job {job_hash} is not a valid job spec: {source}")]
    BadSpec {
        job_hash: JobId,
        #[source]
        source: JobError,
    },
    /// A pending job's spec text is not the job the hash names.
    #[error("the spec offered as job {job_hash} is job {actual}")]
    SpecMismatch { job_hash: JobId, actual: JobId },
    /// The file system refused.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record in the store is not what it must be.
    #[error("{}: {message}", .path.display())]
    Corrupt { path: PathBuf, message: String },
}

/// Who approved a job, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRecord {
    pub job_hash: JobId,
    /// The name the admin gave (`site-agent jobs approve --by`, or their login).
    pub approved_by: String,
    /// Milliseconds since the Unix epoch (the caller's clock).
    pub approved_at_ms: u64,
    /// The spec text of the job, if it was pending when approved: what was reviewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_toml: Option<String>,
}

/// A job that passed the policy and waits for the admin.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingJob {
    pub job_hash: JobId,
    /// When the agent first recorded the offer, milliseconds since the Unix epoch.
    pub offered_at_ms: u64,
    /// The spec text as offered.
    pub spec_toml: String,
    /// The parsed spec; its id is `job_hash` (checked when recorded and when read).
    pub spec: JobSpec,
}

/// A pending job as stored.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingFile {
    job_hash: JobId,
    offered_at_ms: u64,
    spec_toml: String,
}

/// The approvals store: a handle on its directory. Every method reads or writes the disk.
#[derive(Debug, Clone)]
pub struct Approvals {
    dir: PathBuf,
}

impl Approvals {
    /// The default store directory for a policy file: `approvals/` beside it.
    pub fn beside(policy_path: &Path) -> PathBuf {
        parent_dir(policy_path).join(DIR_NAME)
    }

    /// Opens the store in `dir`, creating it (durably) if missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Approvals, ApprovalError> {
        let dir = dir.into();
        for d in [dir.clone(), dir.join(APPROVED), dir.join(PENDING)] {
            if !d.is_dir() {
                fs::create_dir_all(&d).map_err(io("create the directory", &d))?;
                sync_dir(parent_dir(&d))?;
            }
        }
        Ok(Approvals { dir })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Approves a job: from now on [`Approvals::is_approved`] says yes for it. The job need
    /// not be pending (an admin may approve a spec they reviewed elsewhere by its full hash);
    /// if it is, its spec is kept in the approval and it leaves the pending list. Approving an
    /// approved job changes nothing and returns the first approval.
    pub fn approve(
        &self,
        job_hash: &str,
        by: &str,
        now_ms: u64,
    ) -> Result<ApprovalRecord, ApprovalError> {
        let id = parse_hash(job_hash)?;
        if by.trim().is_empty() || by.chars().any(char::is_control) {
            return Err(ApprovalError::BadApprover { given: shown(by) });
        }
        if let Some(existing) = self.approval(id.as_str())? {
            self.remove(PENDING, &id)?;
            return Ok(existing);
        }
        let pending = self.get_pending(id.as_str())?;
        let record = ApprovalRecord {
            job_hash: id.clone(),
            approved_by: by.trim().to_owned(),
            approved_at_ms: now_ms,
            spec_toml: pending.map(|p| p.spec_toml),
        };
        self.write(APPROVED, &id, &to_json(&record))?;
        // The approval is durable before the pending record goes: a crash in between leaves
        // both, and `pending` hides a job that is approved.
        self.remove(PENDING, &id)?;
        Ok(record)
    }

    /// Withdraws an approval. Returns whether there was one. The job is not put back on the
    /// pending list; the agent records it again if it is offered again.
    pub fn revoke(&self, job_hash: &str) -> Result<bool, ApprovalError> {
        let id = parse_hash(job_hash)?;
        self.remove(APPROVED, &id)
    }

    /// Whether the job is approved.
    pub fn is_approved(&self, job_hash: &str) -> Result<bool, ApprovalError> {
        Ok(self.approval(job_hash)?.is_some())
    }

    /// The job's approval, if it has one.
    pub fn approval(&self, job_hash: &str) -> Result<Option<ApprovalRecord>, ApprovalError> {
        let id = parse_hash(job_hash)?;
        let path = self.path(APPROVED, &id);
        let Some(bytes) = read_if_exists(&path)? else {
            return Ok(None);
        };
        let record: ApprovalRecord =
            serde_json::from_slice(&bytes).map_err(|e| ApprovalError::Corrupt {
                path: path.clone(),
                message: format!("not an approval record: {e}"),
            })?;
        if record.job_hash != id {
            return Err(ApprovalError::Corrupt {
                path,
                message: format!(
                    "names job {}, not the job of its file name",
                    shown(record.job_hash.as_str())
                ),
            });
        }
        Ok(Some(record))
    }

    /// Every approval, ordered by job hash.
    pub fn approved(&self) -> Result<Vec<ApprovalRecord>, ApprovalError> {
        let mut out = Vec::new();
        for id in self.hashes(APPROVED)? {
            if let Some(r) = self.approval(id.as_str())? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Records an offered job that waits for approval. Checks that `spec_toml` is a valid
    /// spec whose id is `job_hash`, so the review an admin reads is of the job they approve.
    /// Returns `false` (and writes nothing) if the job is already pending or approved: the
    /// first offer's time is kept.
    pub fn record_pending(
        &self,
        job_hash: &str,
        spec_toml: &str,
        now_ms: u64,
    ) -> Result<bool, ApprovalError> {
        let id = parse_hash(job_hash)?;
        check_spec(&id, spec_toml)?;
        if self.path(APPROVED, &id).exists() || self.path(PENDING, &id).exists() {
            return Ok(false);
        }
        let file = PendingFile {
            job_hash: id.clone(),
            offered_at_ms: now_ms,
            spec_toml: spec_toml.to_owned(),
        };
        self.write(PENDING, &id, &to_json(&file))?;
        Ok(true)
    }

    /// Jobs waiting for approval (not approved), oldest offer first.
    pub fn pending(&self) -> Result<Vec<PendingJob>, ApprovalError> {
        let mut out = Vec::new();
        for id in self.pending_hashes()? {
            if let Some(p) = self.get_pending(id.as_str())? {
                out.push(p);
            }
        }
        out.sort_by(|a, b| (a.offered_at_ms, &a.job_hash).cmp(&(b.offered_at_ms, &b.job_hash)));
        Ok(out)
    }

    /// The pending job with this hash, if it is pending and not approved.
    pub fn get_pending(&self, job_hash: &str) -> Result<Option<PendingJob>, ApprovalError> {
        let id = parse_hash(job_hash)?;
        if self.path(APPROVED, &id).exists() {
            return Ok(None);
        }
        let path = self.path(PENDING, &id);
        let Some(bytes) = read_if_exists(&path)? else {
            return Ok(None);
        };
        let file: PendingFile =
            serde_json::from_slice(&bytes).map_err(|e| ApprovalError::Corrupt {
                path: path.clone(),
                message: format!("not a pending-job record: {e}"),
            })?;
        if file.job_hash != id {
            return Err(ApprovalError::Corrupt {
                path,
                message: format!(
                    "names job {}, not the job of its file name",
                    shown(file.job_hash.as_str())
                ),
            });
        }
        let spec = check_spec(&id, &file.spec_toml).map_err(|e| ApprovalError::Corrupt {
            path,
            message: e.to_string(),
        })?;
        Ok(Some(PendingJob {
            job_hash: id,
            offered_at_ms: file.offered_at_ms,
            spec_toml: file.spec_toml,
            spec,
        }))
    }

    /// Drops a job from the pending list without approving it (an offer the coordinator
    /// withdrew, or one the admin declines). Returns whether it was pending.
    pub fn discard_pending(&self, job_hash: &str) -> Result<bool, ApprovalError> {
        let id = parse_hash(job_hash)?;
        self.remove(PENDING, &id)
    }

    /// The one pending job whose hash starts with `prefix` (at least [`MIN_PREFIX`] lowercase
    /// hex digits; a full hash counts as its own prefix). No match, or more than one, is an
    /// error that says so.
    pub fn resolve(&self, prefix: &str) -> Result<JobId, ApprovalError> {
        resolve_in(prefix, self.pending_hashes()?, "pending")
    }

    /// Like [`Approvals::resolve`], among approved jobs (for `revoke`).
    pub fn resolve_approved(&self, prefix: &str) -> Result<JobId, ApprovalError> {
        resolve_in(prefix, self.hashes(APPROVED)?, "approved")
    }

    /// Hashes of pending jobs that are not approved, ordered.
    fn pending_hashes(&self) -> Result<Vec<JobId>, ApprovalError> {
        let approved = self.hashes(APPROVED)?;
        Ok(self
            .hashes(PENDING)?
            .into_iter()
            .filter(|id| approved.binary_search(id).is_err())
            .collect())
    }

    fn path(&self, kind: &str, id: &JobId) -> PathBuf {
        self.dir.join(kind).join(format!("{id}.json"))
    }

    /// The job hashes with a record in `kind`, ordered.
    fn hashes(&self, kind: &str) -> Result<Vec<JobId>, ApprovalError> {
        let dir = self.dir.join(kind);
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io("list", &dir))? {
            let entry = entry.map_err(io("list", &dir))?;
            let name = entry.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(JobId::parse)
            {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Writes a record atomically and durably: temporary file, fsync, rename, fsync of the
    /// directory.
    fn write(&self, kind: &str, id: &JobId, bytes: &[u8]) -> Result<(), ApprovalError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = self.dir.join(kind);
        let dest = self.path(kind, id);
        let tmp = dir.join(format!(
            ".{id}.{}.{}.tmp",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let written = File::create(&tmp).and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io("write", &tmp)(e));
        }
        if let Err(e) = fs::rename(&tmp, &dest) {
            let _ = fs::remove_file(&tmp);
            return Err(io("rename into place", &dest)(e));
        }
        sync_dir(&dir)
    }

    /// Removes a record durably; returns whether there was one.
    fn remove(&self, kind: &str, id: &JobId) -> Result<bool, ApprovalError> {
        let path = self.path(kind, id);
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.dir.join(kind))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }
}

fn resolve_in(prefix: &str, ids: Vec<JobId>, which: &'static str) -> Result<JobId, ApprovalError> {
    let ok = (MIN_PREFIX..=64).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !ok {
        return Err(ApprovalError::BadPrefix {
            given: shown(prefix),
        });
    }
    let mut matches: Vec<JobId> = ids
        .into_iter()
        .filter(|id| id.as_str().starts_with(prefix))
        .collect();
    match matches.len() {
        0 => Err(ApprovalError::NoMatch {
            prefix: prefix.to_owned(),
            which,
        }),
        1 => Ok(matches.remove(0)),
        _ => Err(ApprovalError::Ambiguous {
            prefix: prefix.to_owned(),
            which,
            matches,
        }),
    }
}

fn parse_hash(s: &str) -> Result<JobId, ApprovalError> {
    JobId::parse(s).ok_or_else(|| ApprovalError::BadJobHash { given: shown(s) })
}

/// Parses a spec text and checks its id is `id`.
fn check_spec(id: &JobId, spec_toml: &str) -> Result<JobSpec, ApprovalError> {
    let spec = JobSpec::from_toml(spec_toml, "<offered job>").map_err(|source| {
        ApprovalError::BadSpec {
            job_hash: id.clone(),
            source,
        }
    })?;
    let actual = spec.id();
    if &actual != id {
        return Err(ApprovalError::SpecMismatch {
            job_hash: id.clone(),
            actual,
        });
    }
    Ok(spec)
}

/// A user's input, short and on one line, for an error message.
fn shown(s: &str) -> String {
    const MAX: usize = 80;
    let mut out = clean(&s.chars().take(MAX).collect::<String>());
    if s.chars().count() > MAX {
        out.push('…');
    }
    out
}

fn join_ids(ids: &[JobId]) -> String {
    ids.iter()
        .map(|id| id.short())
        .collect::<Vec<_>>()
        .join(", ")
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Records are plain structs of strings and integers: serialising them cannot fail.
    let mut bytes = serde_json::to_vec_pretty(value).expect("a record always serialises to JSON");
    bytes.push(b'\n');
    bytes
}

fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, ApprovalError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path)(e)),
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ApprovalError {
    let path = path.to_path_buf();
    move |source| ApprovalError::Io {
        action,
        path,
        source,
    }
}

/// The directory a path lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a directory's entries (a new, renamed or removed file) durable.
fn sync_dir(dir: &Path) -> Result<(), ApprovalError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync the directory", dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
