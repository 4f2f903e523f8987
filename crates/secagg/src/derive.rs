//! Every key and seed the protocol derives, in one place, each bound to the round and to the
//! sites it concerns.

use zeroize::Zeroizing;

use crate::crypto::{aead_open, aead_seal, hkdf_sha256, label, sha256};
use crate::shamir::{CHUNKS, P, Share};

/// Seed of the pairwise mask of sites `a` and `b` (in either order) from their X25519 shared
/// secret: HKDF-SHA256(salt = round id, ikm = shared, info = label ‖ setup digest ‖ min ‖ max).
pub(crate) fn pairwise_seed(
    round_id: &[u8; 32],
    digest: &[u8; 32],
    a: u32,
    b: u32,
    shared: &[u8; 32],
) -> Zeroizing<[u8; 32]> {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let mut out = Zeroizing::new([0u8; 32]);
    // A 32-byte output is always within HKDF's limit.
    let _ = hkdf_sha256(
        round_id,
        shared,
        &[
            label::PAIRWISE,
            digest,
            &lo.to_be_bytes(),
            &hi.to_be_bytes(),
        ],
        out.as_mut(),
    );
    out
}

/// Key encrypting the shares that `from` sends to `to`: HKDF-SHA256(salt = round id, ikm =
/// X25519 of their share-encryption keys, info = label ‖ setup digest ‖ from ‖ to). Directed,
/// so the two directions of a pair use different keys.
fn share_key(
    round_id: &[u8; 32],
    digest: &[u8; 32],
    from: u32,
    to: u32,
    shared: &[u8; 32],
) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    let _ = hkdf_sha256(
        round_id,
        shared,
        &[
            label::SHARE_KEY,
            digest,
            &from.to_be_bytes(),
            &to.to_be_bytes(),
        ],
        out.as_mut(),
    );
    out
}

fn share_aad(round_id: &[u8; 32], from: u32, to: u32) -> Vec<u8> {
    let mut a = Vec::with_capacity(64);
    a.extend_from_slice(label::SHARE_AAD);
    a.extend_from_slice(round_id);
    a.extend_from_slice(&from.to_be_bytes());
    a.extend_from_slice(&to.to_be_bytes());
    a
}

/// Commitment to a site's self-mask seed.
pub(crate) fn commitment(digest: &[u8; 32], index: u32, seed: &[u8; 32]) -> [u8; 32] {
    sha256(&[label::COMMIT, digest, &index.to_be_bytes(), seed])
}

const PAYLOAD_VERSION: u8 = 1;
const PAYLOAD_LEN: usize = 1 + 16 * CHUNKS;

/// Encrypts one (seed share, key share) pair. Each key encrypts exactly one message, so the
/// nonce is fixed at zero.
pub(crate) fn seal_shares(
    round_id: &[u8; 32],
    digest: &[u8; 32],
    from: u32,
    to: u32,
    shared: &[u8; 32],
    seed: &Share,
    key: &Share,
) -> Vec<u8> {
    let mut pt = Zeroizing::new(Vec::with_capacity(PAYLOAD_LEN));
    pt.push(PAYLOAD_VERSION);
    for y in seed.y.iter().chain(key.y.iter()) {
        pt.extend_from_slice(&y.to_le_bytes());
    }
    let k = share_key(round_id, digest, from, to, shared);
    aead_seal(&k, [0u8; 12], &share_aad(round_id, from, to), &pt)
}

/// Length of a sealed share pair.
pub(crate) const SEALED_LEN: usize = PAYLOAD_LEN + 16;

/// Decrypts and parses a share pair addressed to `to` (whose abscissa is `to + 1`). `None` if
/// authentication fails or the content is malformed.
pub(crate) fn open_shares(
    round_id: &[u8; 32],
    digest: &[u8; 32],
    from: u32,
    to: u32,
    shared: &[u8; 32],
    ciphertext: &[u8],
) -> Option<(Share, Share)> {
    let k = share_key(round_id, digest, from, to, shared);
    let pt = aead_open(&k, [0u8; 12], &share_aad(round_id, from, to), ciphertext)?;
    if pt.len() != PAYLOAD_LEN || pt[0] != PAYLOAD_VERSION {
        return None;
    }
    let x = to as u64 + 1;
    let mut seed = Share { x, y: [0; CHUNKS] };
    let mut key = Share { x, y: [0; CHUNKS] };
    for (i, c) in pt[1..].chunks_exact(8).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        let v = u64::from_le_bytes(b);
        if v >= P {
            return None;
        }
        if i < CHUNKS {
            seed.y[i] = v
        } else {
            key.y[i - CHUNKS] = v
        }
    }
    Some((seed, key))
}
