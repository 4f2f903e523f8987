//! Secure aggregation (SecAgg+) for fedcare rounds: the coordinator learns the sum of the
//! surviving sites' updates and nothing about any single one, even when sites drop out.
//!
//! Like `fedcare-protocol`, this crate is a pair of pure, synchronous state machines — a site's
//! [`Client`] and the coordinator's [`Server`] — whose messages ([`messages`]) the gRPC layer
//! carries as opaque bytes. Nothing here opens a socket, reads a clock or draws randomness
//! except from the `rand_core::CryptoRng` the caller injects ([`SystemRng`] in production, a
//! seeded `ChaCha20Rng` in tests).
//!
//! # The protocol (Bonawitz et al., CCS 2017; Bell et al., CCS 2020)
//!
//! Everyone holds the same [`RoundSetup`]: round id, the sites with their long-term Ed25519
//! identity keys, and [`Params`] (ring Z_{2^b}, dimension d, Shamir threshold t, and the
//! neighbour [`Graph`]: complete for small rounds, a random k-regular Harary graph with
//! k = O(log n) for large ones, seeded by [`graph_seed`]`(round_id)` so every site can check it).
//!
//! 1. **Advertise keys.** Each site draws two fresh X25519 key pairs (mask agreement, share
//!    encryption) and a self-mask seed b_u, and signs both public keys and a commitment to
//!    b_u with its identity key over the setup digest. The coordinator checks and broadcasts.
//! 2. **Share keys.** Each site verifies its neighbours' signatures (refusing unsigned,
//!    altered, duplicated or foreign keys), Shamir-shares b_u and its mask secret key (t of
//!    its k neighbours reconstruct), and encrypts each neighbour's pair of shares with
//!    ChaCha20-Poly1305 under a key from HKDF over the X25519 agreement, bound to the round id
//!    and both site indices (also in the associated data). The coordinator forwards them.
//! 3. **Masked input.** y_u = x_u + PRG(b_u) + Σ_v ±PRG(s_uv) in Z_{2^b}, over the neighbours
//!    v whose shares arrived; s_uv = HKDF(X25519(u, v), round id, ordered pair); the smaller
//!    index adds, the larger subtracts. The PRG is AES-128-CTR keyed by a hash of the seed
//!    ([`prg`]). The coordinator
//!    folds each y_u into one running sum as it arrives.
//! 4. **Unmask.** The coordinator tells each survivor which of its neighbours survived and
//!    which dropped. A survivor reveals its share of b_v for each survivor v and of v's mask
//!    key for each dropped v — never both for one site, never twice. The coordinator
//!    reconstructs the seeds and keys (checked against the commitment and the signed public
//!    key), regenerates the masks and subtracts them: the result is exactly Σ x_u mod 2^b over
//!    the sites whose masked input arrived.
//!
//! Dropouts at any stage up to [`Params::tolerated_dropouts`] leave the sum exact; with more,
//! the coordinator aborts ([`SecAggError::TooManyDropouts`]) and a survivor refuses to reveal
//! anything when fewer than t of its neighbours are said to survive.
//!
//! # Threat model and guarantees
//!
//! - **Honest-but-curious coordinator, colluding with fewer than t of any site's neighbours**
//!   (and, for the regular graph, with at most the corruption fraction given to
//!   [`Params::choose`]): it learns the sum over the survivors and which sites survived,
//!   nothing else. Masks come from 256-bit seeds (expanded with AES-128, so 128-bit
//!   security for the masks); shares below the threshold are
//!   information-theoretically hiding; key agreement is authenticated by identity signatures,
//!   so the coordinator cannot substitute keys (no man in the middle) and keys or shares from
//!   another round, or re-addressed to another site, are refused.
//! - **Lying coordinator** (claims different survivor sets to different sites, replays,
//!   forges): each site answers one request, once, refuses a site named both survived and
//!   dropped, and refuses non-neighbours; since 2t > k + (corrupt neighbours), no split of a
//!   site's neighbours can yield t self-mask shares *and* t key shares of that site. What it
//!   can still do: abort rounds, and — by naming different survivor sets to different sites
//!   (there is no consistency-check round as in Bonawitz et al.'s malicious variant) — learn
//!   the sum over a subset of the survivors of at least t + 1 sites, never a single site's
//!   input. Sites check that the graph seed is [`graph_seed`]`(round_id)` and that the sites
//!   are in the canonical (identity-key) order, so the coordinator cannot choose neighbours.
//! - **Not covered**: malicious sites sending ill-formed inputs (any value in Z_{2^b} is
//!   accepted; input validity is the privacy layer's job), denial of service, and traffic
//!   analysis. Shares are checked for consistency, so a corrupt share makes the round abort
//!   ([`SecAggError::BadShares`]) rather than give a wrong sum.
//!
//! Secrets (X25519 secrets, seeds, Shamir coefficients and shares, derived keys) are held in
//! zeroizing containers and wiped on drop; a site drops its own secrets as soon as its masked
//! input is computed. (The mask PRG's AES key schedule is zeroized on its fast path, [`prg`];
//! `ring`'s internal AES and ChaCha20 key schedules, on the portable path and for the share
//! encryption, are not.)
//!
//! # Never
//!
//! No I/O, no clock, no randomness except the injected CSPRNG, no `unsafe`, no threads
//! unless the caller asks for them ([`Server::finish_threads`], scoped, joined before it
//! returns), no panic on peer input: every malformed or unexpected message is a typed [`SecAggError`] and
//! leaves the state machine unchanged.
//!
//! # Quantisation
//!
//! [`Encoder`] is the seam between float updates and Z_{2^b}; [`StochasticQuantizer`] is a
//! clip-and-scale fixed-point encoder with a stated error bound, to be replaced by the privacy
//! layer's integer encoding.

#![forbid(unsafe_code)]

pub mod client;
pub mod crypto;
mod ctr;
mod derive;
pub mod error;
pub mod graph;
pub mod messages;
pub mod prg;
pub mod quant;
pub mod server;
pub mod setup;
pub mod shamir;

pub use client::Client;
pub use crypto::{IdentityKey, SystemRng};
pub use error::{DecodeError, SecAggError, Stage};
pub use graph::{Graph, Params, graph_seed};
pub use messages::{
    AdvertiseKeys, EncryptedShare, MaskedInput, RevealedShare, ShareKind, UnmaskRequest,
    UnmaskResponse,
};
pub use quant::{Encoder, Rounding, StochasticQuantizer};
pub use server::Server;
pub use setup::{RoundSetup, SiteEntry};
