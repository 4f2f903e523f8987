//! The round protocol as pure, synchronous state machines: the coordinator's side of a job
//! ([`coordinator::JobRun`]) and the site's side ([`site::SiteSession`]).
//!
//! Like `quinn-proto`, nothing here touches a socket, a clock or a thread. Callers feed events
//! in (a site became available, a reply arrived, time passed) and drain the actions that come
//! out (send this task to that site, this round finished). The gRPC layer in `fedcare-server`
//! and `fedcare-agent` only carries these messages, so every ordering, replay and dropout case
//! can be tested here in microseconds, without a network.
//!
//! Guarantees:
//! - A reply is accepted only from a site the coordinator is waiting on, for the task it was
//!   sent, in the stage that task belongs to. Anything else is a typed [`ReplyError`] and
//!   changes nothing.
//! - A model update with the wrong length, a non-finite value or no examples is refused; the
//!   round goes on without that site and completes if the job's quorum remains.
//! - What a site can send is fixed by [`messages::ReplyKind`]: a decision, aggregate feature
//!   sums, a model update and aggregate evaluation counts. There is no variant that carries a
//!   record.
//!
//! Never: I/O, time, randomness, or blocking work such as training.

/// Largest number of examples one site may declare in a reply (training or evaluation), the
/// same bound as the wire layer's `fedcare_wire::MAX_EXAMPLES`: the state machine enforces it
/// itself, so sums over sites cannot overflow whoever feeds it (10^12 per site leaves room for
/// 1.8e7 sites in a u64, and the sums saturate beyond that).
pub const MAX_DECLARED_EXAMPLES: u64 = 1_000_000_000_000;

pub mod coordinator;
pub mod fedavg;
pub mod messages;
pub mod secure;
pub mod site;

pub use coordinator::{Action, JobEvent, JobOutcome, JobRun, ReplyError, RoundRecord};
pub use messages::{Confusion, EvalCounts, ModelUpdate, ModelVector, Reply, ReplyKind, SecAggRound, SiteId, Task, TaskId, TaskKind};
pub use site::{SiteError, SiteSession, Work};

#[cfg(test)]
mod tests;
