//! A site's policy: which federated jobs the site may join, and who approved them.
//!
//! A hospital's privacy officer owns a TOML file that says which jobs the site may join:
//!
//! ```toml
//! [policy]
//! models = ["logistic_regression", "mlp"]         # model kinds the site trains
//! columns = ["age", "sex", "chol", "disease"]     # schema columns (features and label) a job may use
//! require_differential_privacy = true             # refuse jobs with privacy.unit = "none"
//! allowed_units = ["record", "site"]              # privacy units a job may use
//! max_epsilon_per_job = 10.0                      # the per-job ceiling (the ledger caps the total)
//! max_delta = 1e-5
//! require_secure_aggregation = true
//! min_other_sites = 2                             # other sites every round must include
//! approval = "manual"                             # or "automatic"
//! ```
//!
//! The site agent evaluates every job offer against it ([`Policy::evaluate`]) before it
//! touches data. The evaluation lists every rule the job breaks ([`Violation`]), each as a
//! sentence that quotes only the job's values and the policy's limits, never the site's data,
//! so the same sentences go to the site's log and, as the reason for a refusal, to the
//! coordinator. A job that breaks no rule is approved at once or, with `approval = "manual"`,
//! waits in the [`Approvals`] store until the site's admin has read its [`summary`] and
//! approved its hash.
//!
//! Flow at a site:
//!
//! ```text
//! offer (spec text) ──► JobSpec::from_toml, id ──► Policy::evaluate ──► Verdict
//!     Refuse(violations) ──► decline with Evaluation::refusal_reason
//!     Approve            ──► accept
//!     AwaitApproval      ──► Approvals::is_approved(id)? accept
//!                            : Approvals::record_pending(id, spec text); wait for the admin
//! admin: site-agent jobs show (summary_with_policy) ──► jobs approve <prefix>
//!        (Approvals::resolve, Approvals::approve)
//! ```
//!
//! What the policy does not do: it keeps no privacy budget (the site's ledger enforces totals
//! and each release; the policy's epsilon is a per-job ceiling), and it checks what a job
//! *declares*; that each round honours the declaration (its member list, its noise) is the
//! site's protocol session's job.
//!
//! This crate reads and writes only the files its caller names (the policy, the approvals
//! store); it has no clock (callers pass `now_ms`), no network and no randomness.

mod approvals;
mod policy;
mod summary;

pub use approvals::{ApprovalError, ApprovalRecord, Approvals, DIR_NAME, MIN_PREFIX, PendingJob};
pub use policy::{Approval, ColumnRole, Evaluation, Policy, PolicyError, Verdict, Violation};
pub use summary::{summary, summary_with_policy};

#[cfg(test)]
mod tests;
