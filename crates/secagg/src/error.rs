//! One error type for the whole crate. Every refusal names what was wrong and, where there is
//! one, the site it concerns. A state machine that returns an error has not changed, unless the
//! variant is [`SecAggError::Aborted`] or [`SecAggError::TooManyDropouts`], which end the round.

use crate::messages::ShareKind;

/// The stage of a round, for errors and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Sites advertise their signed public keys.
    AdvertiseKeys,
    /// Sites send encrypted Shamir shares to their neighbours.
    ShareKeys,
    /// Sites send their masked inputs.
    MaskedInput,
    /// Survivors reveal shares so the coordinator can remove the masks.
    Unmask,
    /// The round is over (finished or aborted).
    Over,
}

/// Why a message, a parameter set or a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecAggError {
    // ---- parameters and setup ----
    #[error("invalid parameters: {0}")]
    InvalidParams(String),
    #[error("invalid round setup: {0}")]
    InvalidSetup(String),
    #[error("no parameters satisfy the requested dropout and corruption fractions: {0}")]
    Infeasible(String),
    #[error("site {0} is not a member of this round")]
    UnknownSite(u32),
    #[error("this site's identity key does not match entry {0} of the round setup")]
    IdentityMismatch(u32),
    #[error("the identity key is not a valid Ed25519 PKCS#8 v2 document")]
    BadIdentityKey,

    // ---- protocol order ----
    #[error("message not expected in stage {stage:?}: {what}")]
    WrongStage { stage: Stage, what: &'static str },
    #[error("the round was aborted; nothing will be revealed")]
    Aborted,

    // ---- keys ----
    #[error("site {0} sent keys without a signature")]
    Unsigned(u32),
    #[error("site {0}'s key signature does not verify against its identity key for this round")]
    BadSignature(u32),
    #[error("site {0} appears more than once")]
    Duplicate(u32),
    #[error("site {0}'s keys differ from the ones it advertised")]
    KeyMismatch(u32),
    #[error("site {0}'s public key is a low-order point (no shared secret)")]
    WeakKey(u32),

    // ---- shares ----
    #[error(
        "share from site {from} to site {to} is not addressed to a neighbour of the sender or to this site"
    )]
    Misaddressed { from: u32, to: u32 },
    #[error(
        "share from site {from} to site {to} failed authentication (tampered, replayed or re-addressed)"
    )]
    ShareAuthFailed { from: u32, to: u32 },
    #[error(
        "site {from} sent {got} shares, expected one for each of its {expected} live neighbours"
    )]
    WrongShareCount {
        from: u32,
        expected: usize,
        got: usize,
    },
    #[error("the shares of site {0} are inconsistent or reconstruct to the wrong secret")]
    BadShares(u32),

    // ---- inputs ----
    #[error("input has {got} coordinates, the round expects {expected}")]
    WrongLength { expected: usize, got: usize },
    #[error("input coordinate {index} is {value}, outside Z_(2^{bits})")]
    OutOfRange { index: usize, value: u64, bits: u32 },

    // ---- unmasking ----
    #[error("unmask request names site {0} both as survivor and as dropped")]
    BothShares(u32),
    #[error(
        "unmask request names site {0}, from which this site holds no share (not a live neighbour)"
    )]
    NotANeighbour(u32),
    #[error("unmask request is malformed: {0}")]
    BadRequest(String),
    #[error("this site already answered an unmask request for this round")]
    AlreadyAnswered,
    #[error(
        "unmask response from site {from} does not match its request (about site {about}, {kind:?})"
    )]
    UnrequestedShare {
        from: u32,
        about: u32,
        kind: ShareKind,
    },

    // ---- thresholds ----
    #[error("too many dropouts at stage {stage:?}: {detail}")]
    TooManyDropouts { stage: Stage, detail: String },

    // ---- encoding ----
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
}

/// Why bytes could not be decoded into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated: needed {needed} more bytes at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    #[error("{0} unexpected trailing bytes")]
    Trailing(usize),
    #[error("not a fedcare-secagg message (bad magic)")]
    BadMagic,
    #[error("unsupported encoding version {0}")]
    BadVersion(u8),
    #[error("expected message type {expected}, found {got}")]
    WrongType { expected: u8, got: u8 },
    #[error("field {field} is out of bounds: {value}")]
    OutOfBounds { field: &'static str, value: u64 },
}
