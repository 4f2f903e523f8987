//! The primitives this crate composes, each behind one small function so that the published
//! test vectors (`tests/vectors.rs`) exercise exactly the code paths the protocol uses.
//!
//! - Ed25519 identity signatures: `ring`.
//! - X25519 agreement with reusable secrets: `x25519-dalek` (`ring`'s agreement keys are
//!   single-use, and a mask secret key is used once per neighbour and again, after
//!   reconstruction, by the coordinator).
//! - HKDF-SHA256, SHA-256, ChaCha20-Poly1305: `ring`.
//! - Randomness: only the `rand_core::CryptoRng` the caller injects. [`SystemRng`] adapts
//!   `ring`'s operating-system generator for production callers.

use rand_core::{CryptoRng, RngCore};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::digest::{Context, SHA256};
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use crate::error::SecAggError;

/// Length of an Ed25519 public key and of an X25519 key, in bytes.
pub const KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Domain-separation labels. Every hash, KDF and AEAD input in the crate starts with one of
/// these, so no value computed for one purpose can be replayed as another.
pub(crate) mod label {
    pub const SETUP: &[u8] = b"fedcare-secagg/v1/setup";
    pub const GRAPH_SEED: &[u8] = b"fedcare-secagg/v1/graph-seed";
    pub const GRAPH_PERM: &[u8] = b"fedcare-secagg/v1/graph-permutation";
    pub const ADVERTISE: &[u8] = b"fedcare-secagg/v1/advertise-keys";
    pub const COMMIT: &[u8] = b"fedcare-secagg/v1/self-mask-commitment";
    pub const PAIRWISE: &[u8] = b"fedcare-secagg/v1/pairwise-mask-seed";
    pub const SHARE_KEY: &[u8] = b"fedcare-secagg/v1/share-encryption-key";
    pub const SHARE_AAD: &[u8] = b"fedcare-secagg/v1/share";
}

/// SHA-256 over the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

struct OutLen(usize);
impl KeyType for OutLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256 (RFC 5869): extract with `salt` over `ikm`, expand with the concatenation of
/// `info` into `out`. `out` may be at most 255 * 32 bytes (the RFC's limit).
pub fn hkdf_sha256(
    salt: &[u8],
    ikm: &[u8],
    info: &[&[u8]],
    out: &mut [u8],
) -> Result<(), SecAggError> {
    let prk = Salt::new(HKDF_SHA256, salt).extract(ikm);
    let okm = prk.expand(info, OutLen(out.len())).map_err(|_| {
        SecAggError::InvalidParams(format!("HKDF output of {} bytes is too long", out.len()))
    })?;
    okm.fill(out)
        .map_err(|_| SecAggError::InvalidParams("HKDF fill failed".into()))
}

/// ChaCha20-Poly1305 (RFC 8439) seal: returns ciphertext followed by the 16-byte tag.
pub fn aead_seal(key: &[u8; 32], nonce: [u8; 12], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut buf = plaintext.to_vec();
    // A 32-byte key is always a valid ChaCha20-Poly1305 key and sealing only fails for inputs
    // longer than 256 GiB, which this crate never produces.
    if let Ok(unbound) = UnboundKey::new(&CHACHA20_POLY1305, key) {
        let key = LessSafeKey::new(unbound);
        if key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .is_ok()
        {
            return buf;
        }
    }
    unreachable!("ChaCha20-Poly1305 with a 32-byte key cannot fail on small inputs")
}

/// ChaCha20-Poly1305 open; `None` if the tag does not verify.
pub fn aead_open(
    key: &[u8; 32],
    nonce: [u8; 12],
    aad: &[u8],
    ciphertext_and_tag: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).ok()?);
    let mut buf = Zeroizing::new(ciphertext_and_tag.to_vec());
    let len = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            buf.as_mut_slice(),
        )
        .ok()?
        .len();
    buf.truncate(len);
    Some(buf)
}

/// An X25519 secret that may be used for several agreements and is zeroized on drop.
pub struct X25519Secret(StaticSecret);

impl X25519Secret {
    /// A fresh secret from the injected generator.
    pub fn generate(rng: &mut dyn CryptoRng) -> X25519Secret {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bytes.as_mut());
        X25519Secret(StaticSecret::from(*bytes))
    }

    /// The secret from its 32 bytes (clamping happens inside the scalar multiplication).
    pub fn from_bytes(bytes: [u8; 32]) -> X25519Secret {
        X25519Secret(StaticSecret::from(bytes))
    }

    /// The secret's bytes, for Shamir sharing.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    pub fn public_key(&self) -> [u8; 32] {
        PublicKey::from(&self.0).to_bytes()
    }

    /// X25519(secret, peer). `None` if the peer key is a low-order point, so that the shared
    /// secret would not depend on our secret (RFC 7748 §6.1's all-zero check).
    pub fn agree(&self, peer: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        let shared = self.0.diffie_hellman(&PublicKey::from(*peer));
        if !shared.was_contributory() {
            return None;
        }
        Some(Zeroizing::new(*shared.as_bytes()))
    }
}

/// A site's long-term Ed25519 identity key (ring key pair; PKCS#8 v2 bytes kept zeroizable).
///
/// It signs the site's per-round public keys. Later it will come from the site's certificate;
/// it is a separate type so that the round keys and the identity never mix.
pub struct IdentityKey {
    pkcs8: Zeroizing<Vec<u8>>,
    pair: Ed25519KeyPair,
}

/// The fixed parts of an Ed25519 PKCS#8 v2 document (RFC 8410 / RFC 5958), as `ring` emits and
/// parses it: prefix, 32-byte seed, middle, 32-byte public key.
const PKCS8_V2_PREFIX: [u8; 16] = [
    0x30, 0x53, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const PKCS8_V2_MIDDLE: [u8; 5] = [0xa1, 0x23, 0x03, 0x21, 0x00];

impl IdentityKey {
    /// A new identity from 32 bytes of the injected generator.
    pub fn generate(rng: &mut dyn CryptoRng) -> Result<IdentityKey, SecAggError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        IdentityKey::from_seed(&seed)
    }

    /// The identity whose Ed25519 private key (RFC 8032 "secret key") is `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> Result<IdentityKey, SecAggError> {
        let pair =
            Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| SecAggError::BadIdentityKey)?;
        let mut doc = Zeroizing::new(Vec::with_capacity(85));
        doc.extend_from_slice(&PKCS8_V2_PREFIX);
        doc.extend_from_slice(seed);
        doc.extend_from_slice(&PKCS8_V2_MIDDLE);
        doc.extend_from_slice(pair.public_key().as_ref());
        IdentityKey::from_pkcs8(&doc)
    }

    /// Parses a PKCS#8 v2 document (what `ring::signature::Ed25519KeyPair::generate_pkcs8`
    /// produces); `ring` checks that the embedded public key matches the private key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<IdentityKey, SecAggError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| SecAggError::BadIdentityKey)?;
        Ok(IdentityKey {
            pkcs8: Zeroizing::new(pkcs8.to_vec()),
            pair,
        })
    }

    /// The PKCS#8 v2 document, for storage.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The 32-byte Ed25519 public key.
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// Ed25519 signature of `msg`.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }
}

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityKey")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// Verifies an Ed25519 signature.
pub fn verify_ed25519(public_key: &[u8], msg: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(msg, signature)
        .is_ok()
}

/// `ring`'s operating-system CSPRNG as a `rand_core` generator, for production callers.
///
/// The state machines only ever see `&mut dyn CryptoRng`, so tests inject a seeded
/// `ChaCha20Rng` and production injects this.
#[derive(Debug, Clone)]
pub struct SystemRng(ring::rand::SystemRandom);

impl SystemRng {
    pub fn new() -> SystemRng {
        SystemRng(ring::rand::SystemRandom::new())
    }
}

impl Default for SystemRng {
    fn default() -> SystemRng {
        SystemRng::new()
    }
}

impl RngCore for SystemRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        use ring::rand::SecureRandom;
        // The operating system's generator failing is not a recoverable condition: continuing
        // with predictable keys would be worse than stopping.
        if self.0.fill(dest).is_err() {
            dest.zeroize();
            panic!("the operating system's random number generator failed");
        }
    }
}

impl CryptoRng for SystemRng {}
