//! Mask expansion: a 32-byte seed becomes a vector in Z_{2^b}^d.
//!
//! The PRG is AES-128 in counter mode, keyed by
//! `K = SHA-256("fedcare-secagg mask prg AES-128 v1" ‖ seed)[0..16]` (a domain-separated hash
//! of the 32-byte seed; 128-bit keys are the usual security target for a mask PRG, and seeds
//! stay 256-bit). The vector is cut into chunks of [`CHUNK`] coordinates; chunk `c` is the
//! AES-128-CTR keystream under `K` with the 96-bit nonce `be64(c) ‖ 0^32` and the 32-bit block
//! counter starting at 2. Chunks make any coordinate range computable on its own, so masks
//! are added chunk by chunk while the running sum stays in cache, nobody ever holds a whole
//! mask vector, and disjoint chunk ranges can be unmasked on separate threads
//! ([`Accumulator::apply_masks_threads`]).
//!
//! Two implementations give that same keystream (tested against each other and against the
//! pinned vectors of `tests/vectors.rs`, computed with Python's `cryptography`):
//!
//! - **Fast path** (`src/ctr.rs`), on x86-64 CPUs with VAES and AVX-512 (checked at run
//!   time): 32 counter blocks at a time are encrypted in eight 512-bit registers and the
//!   keystream words are added straight into the lanes, with no keystream buffer. On the
//!   benchmark machine (AMD EPYC, 2 vCPUs) about 50 GB/s per core, keystream and addition
//!   together.
//! - **Portable path**, everywhere else: `ring`'s AES-128-GCM seals a zeroed buffer and the
//!   tag is discarded: GCM's ciphertext *is* that CTR keystream (NIST SP 800-38D, §7.1, GCTR
//!   from inc32(J0)); the keystream words are then added into the lanes by loops compiled
//!   for AVX-512, AVX2 and baseline x86-64 and chosen at run time (`multiversion`). About
//!   9 GB/s per core on the benchmark machine: `ring` interleaves the (wasted) GHASH, and the
//!   buffer is zeroed before, and read back after, each seal. (Plain CTR through the RustCrypto
//!   `aes` crate was slower or no faster there: 7.4–8.5 GB/s with `ctr`; 0.9.4's VAES-512
//!   backend, fused with the addition through its block-closure API, about 11 GB/s.)
//!
//! Coordinate `i` of a mask is the little-endian word of `w` keystream bytes at offset `w * i`
//! of the chunk, reduced mod 2^b, where `w` is 1, 2, 4 or 8, the smallest width holding b bits.
//! Masks are added into accumulators of `u32` lanes (b <= 32) or `u64` lanes (b > 32); since
//! 2^b divides the lane modulus, reducing mod 2^b at the end gives the sum in Z_{2^b}.

use multiversion::multiversion;
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::{Zeroize, Zeroizing};

use crate::ctr::{self, RoundKeys};

/// Domain separation for deriving the AES-128 key from a mask seed. Part of the protocol.
pub const KEY_LABEL: &[u8] = b"fedcare-secagg mask prg AES-128 v1";

/// Coordinates per PRG chunk (one nonce each). Part of the protocol: changing it changes masks.
pub const CHUNK: usize = 4096;

/// Bytes of keystream per coordinate for `bits`.
pub fn lane_bytes(bits: u32) -> usize {
    match bits {
        0..=8 => 1,
        9..=16 => 2,
        17..=32 => 4,
        _ => 8,
    }
}

/// A mask generator for one seed.
///
/// Two ways to the same keystream: on CPUs with VAES and AVX-512 the AES-128 key schedule is
/// kept (zeroized on drop) and `src/ctr.rs` computes the keystream in registers, adding it
/// straight into the lanes; elsewhere `ring`'s AES-128-GCM seals a zeroed buffer (see the
/// module documentation). Both give identical masks (tested).
pub struct MaskPrg {
    inner: Inner,
}

enum Inner {
    Fast(Zeroizing<RoundKeys>),
    // Boxed: ring's key (with its GHASH table) is three times the size of the round keys.
    Ring(Box<LessSafeKey>),
}

fn ring_key(key: &[u8]) -> LessSafeKey {
    // AES-128 accepts every 16-byte key.
    match UnboundKey::new(&AES_128_GCM, key) {
        Ok(k) => LessSafeKey::new(k),
        Err(_) => unreachable!("AES-128 accepts any 16-byte key"),
    }
}

fn ring_keystream(key: &LessSafeKey, chunk: u64, buf: &mut [u8]) {
    buf.fill(0);
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&chunk.to_be_bytes());
    // Sealing fails only beyond 2^36 bytes per nonce; a chunk is at most 32 KiB.
    if key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), buf)
        .is_err()
    {
        unreachable!("AES-GCM seal of a 32 KiB buffer cannot fail");
    }
}

impl MaskPrg {
    pub fn new(seed: &[u8; 32]) -> MaskPrg {
        let digest = Zeroizing::new(crate::crypto::sha256(&[KEY_LABEL, seed]));
        let mut key = Zeroizing::new([0u8; 16]);
        key.copy_from_slice(&digest[..16]);
        let inner = match ctr::round_keys(&key) {
            Some(rk) => Inner::Fast(rk),
            None => Inner::Ring(Box::new(ring_key(&key[..]))),
        };
        MaskPrg { inner }
    }

    /// Like [`MaskPrg::new`] but always on the portable path (`ring`), whatever the CPU: the
    /// same masks, for cross-checks of the fast path and for measuring the portable one.
    pub fn new_portable(seed: &[u8; 32]) -> MaskPrg {
        let digest = Zeroizing::new(crate::crypto::sha256(&[KEY_LABEL, seed]));
        MaskPrg {
            inner: Inner::Ring(Box::new(ring_key(&digest[..16]))),
        }
    }

    /// Writes the keystream of chunk `chunk` into `buf` (whose previous content is ignored).
    pub fn keystream(&self, chunk: u64, buf: &mut [u8]) {
        match &self.inner {
            Inner::Fast(rk) => {
                if !ctr::apply(rk, chunk, ctr::Sink::Bytes(buf)) {
                    // Not reached: round keys exist only where the fast path is available.
                    // Round key 0 is the AES key, so the portable path still gives the mask.
                    ring_keystream(&ring_key(&rk[0]), chunk, buf);
                }
            }
            Inner::Ring(key) => ring_keystream(key, chunk, buf),
        }
    }

    /// Adds (or subtracts) the words of chunk `chunk`'s keystream, `w` bytes per lane, into
    /// `lanes`; `buf` (at least `lanes.len() * w` bytes) is scratch space for the portable
    /// path, whose previous content is ignored.
    fn apply<T: Lane>(&self, chunk: u64, lanes: &mut [T], w: usize, negate: bool, buf: &mut [u8]) {
        if let Inner::Fast(rk) = &self.inner
            && T::fused(rk, chunk, lanes, w, negate)
        {
            return;
        }
        let ks = &mut buf[..lanes.len() * w];
        self.keystream(chunk, ks);
        T::add_words(lanes, ks, w, negate);
    }
}

/// A lane type of [`Accumulator`], with its ways of adding keystream words.
trait Lane: Copy + Send {
    fn add_words(acc: &mut [Self], ks: &[u8], w: usize, negate: bool);
    /// Adds the keystream in registers (`src/ctr.rs`) when the lane is w bytes wide; false
    /// (doing nothing) otherwise.
    fn fused(rk: &RoundKeys, chunk: u64, acc: &mut [Self], w: usize, negate: bool) -> bool;
}

impl Lane for u32 {
    fn add_words(acc: &mut [u32], ks: &[u8], w: usize, negate: bool) {
        add_words32(acc, ks, w, negate)
    }
    fn fused(rk: &RoundKeys, chunk: u64, lanes: &mut [u32], w: usize, negate: bool) -> bool {
        w == 4 && ctr::apply(rk, chunk, ctr::Sink::U32 { lanes, negate })
    }
}

impl Lane for u64 {
    fn add_words(acc: &mut [u64], ks: &[u8], w: usize, negate: bool) {
        add_words64(acc, ks, w, negate)
    }
    fn fused(rk: &RoundKeys, chunk: u64, lanes: &mut [u64], w: usize, negate: bool) -> bool {
        w == 8 && ctr::apply(rk, chunk, ctr::Sink::U64 { lanes, negate })
    }
}

/// A mask to apply: its generator and whether it is added or subtracted.
pub struct SignedMask {
    pub prg: MaskPrg,
    pub negate: bool,
}

/// A running vector in Z_{2^bits}, stored in the lane width the PRG uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accumulator {
    /// bits <= 32.
    U32 { bits: u32, lanes: Vec<u32> },
    /// bits > 32 (or any bits, for masks of every width).
    U64 { bits: u32, lanes: Vec<u64> },
}

impl Accumulator {
    pub fn zeros(bits: u32, dim: usize) -> Accumulator {
        if bits <= 32 {
            Accumulator::U32 {
                bits,
                lanes: vec![0; dim],
            }
        } else {
            Accumulator::U64 {
                bits,
                lanes: vec![0; dim],
            }
        }
    }

    /// The accumulator holding `values` (which the caller has checked are below 2^bits).
    pub fn from_values(bits: u32, values: &[u64]) -> Accumulator {
        if bits <= 32 {
            Accumulator::U32 {
                bits,
                lanes: values.iter().map(|&v| v as u32).collect(),
            }
        } else {
            Accumulator::U64 {
                bits,
                lanes: values.to_vec(),
            }
        }
    }

    /// Appends the values, reduced mod 2^bits, packed as in the `MaskedInput` encoding.
    pub fn write_packed(&self, out: &mut Vec<u8>) {
        match self {
            Accumulator::U32 { bits: 32, lanes } => {
                let start = out.len();
                out.resize(start + 4 * lanes.len(), 0);
                for (c, v) in out[start..].chunks_exact_mut(4).zip(lanes) {
                    c.copy_from_slice(&v.to_le_bytes());
                }
            }
            Accumulator::U64 { bits: 64, lanes } => {
                let start = out.len();
                out.resize(start + 8 * lanes.len(), 0);
                for (c, v) in out[start..].chunks_exact_mut(8).zip(lanes) {
                    c.copy_from_slice(&v.to_le_bytes());
                }
            }
            other => {
                let bits = match other {
                    Accumulator::U32 { bits, .. } | Accumulator::U64 { bits, .. } => *bits,
                };
                crate::messages::pack(&other.clone().into_values(), bits, out);
            }
        }
    }

    pub fn dim(&self) -> usize {
        match self {
            Accumulator::U32 { lanes, .. } => lanes.len(),
            Accumulator::U64 { lanes, .. } => lanes.len(),
        }
    }

    /// Adds `values` coordinate-wise (wrapping).
    pub fn add_values(&mut self, values: &[u64]) {
        match self {
            Accumulator::U32 { lanes, .. } => {
                for (a, &v) in lanes.iter_mut().zip(values) {
                    *a = a.wrapping_add(v as u32);
                }
            }
            Accumulator::U64 { lanes, .. } => {
                for (a, &v) in lanes.iter_mut().zip(values) {
                    *a = a.wrapping_add(v);
                }
            }
        }
    }

    /// Adds values packed as in the MaskedInput encoding (`bits` per value, LSB-first; b/8
    /// little-endian bytes per value when 8 | b), without materialising them. The caller has
    /// checked the length and padding (`MaskedInput::parse`).
    pub fn add_packed(&mut self, body: &[u8], bits: u32) {
        match self {
            Accumulator::U32 { lanes, .. } if bits == 32 => {
                for (a, c) in lanes.iter_mut().zip(body.chunks_exact(4)) {
                    *a = a.wrapping_add(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                }
            }
            Accumulator::U32 { lanes, .. } if bits == 16 => {
                for (a, c) in lanes.iter_mut().zip(body.chunks_exact(2)) {
                    *a = a.wrapping_add(u16::from_le_bytes([c[0], c[1]]) as u32);
                }
            }
            Accumulator::U32 { lanes, .. } if bits == 8 => {
                for (a, &c) in lanes.iter_mut().zip(body) {
                    *a = a.wrapping_add(c as u32);
                }
            }
            Accumulator::U64 { lanes, .. } if bits == 64 => {
                for (a, c) in lanes.iter_mut().zip(body.chunks_exact(8)) {
                    *a = a.wrapping_add(u64::from_le_bytes([
                        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
                    ]));
                }
            }
            _ => {
                let dim = self.dim();
                if let Some(v) = crate::messages::unpack(body, bits, dim) {
                    self.add_values(&v);
                }
            }
        }
    }

    /// Adds (or subtracts) every mask, chunk by chunk, on the calling thread.
    pub fn apply_masks(&mut self, masks: &[SignedMask]) {
        self.apply_masks_threads(masks, 1);
    }

    /// [`Accumulator::apply_masks`] on up to `threads` scoped threads (the calling thread is
    /// one of them), each owning a disjoint range of whole chunks and its own 32 KiB keystream
    /// buffer; the result does not depend on `threads`. Extra memory: one chunk buffer per
    /// thread.
    pub fn apply_masks_threads(&mut self, masks: &[SignedMask], threads: usize) {
        match self {
            Accumulator::U32 { bits, lanes } => {
                let w = lane_bytes(*bits);
                split_chunks(lanes, masks, threads, &|l, c0| {
                    apply_chunks(l, c0, masks, w)
                })
            }
            Accumulator::U64 { bits, lanes } => {
                let w = lane_bytes(*bits);
                split_chunks(lanes, masks, threads, &|l, c0| {
                    apply_chunks(l, c0, masks, w)
                })
            }
        }
    }

    /// The values reduced mod 2^bits.
    pub fn into_values(self) -> Vec<u64> {
        match self {
            Accumulator::U32 { bits, lanes } => {
                let m = if bits == 32 {
                    u32::MAX
                } else {
                    (1u32 << bits) - 1
                };
                lanes.into_iter().map(|v| (v & m) as u64).collect()
            }
            Accumulator::U64 { bits, lanes } => {
                let m = if bits == 64 {
                    u64::MAX
                } else {
                    (1u64 << bits) - 1
                };
                lanes.into_iter().map(|v| v & m).collect()
            }
        }
    }
}

/// Appends the `MaskedInput` packing of `input` + Σ ±masks for byte-aligned `bits` (8, 16, 32
/// or 64: `bits / 8` little-endian bytes per value), chunk by chunk, so each chunk is masked
/// and packed while it is in cache and no whole-vector accumulator exists. The caller has
/// checked that the inputs are below 2^bits. Returns false (leaving `out` alone) for other
/// widths.
pub fn mask_into_packed(bits: u32, input: &[u64], masks: &[SignedMask], out: &mut Vec<u8>) -> bool {
    let w = lane_bytes(bits);
    if bits as usize != 8 * w {
        return false;
    }
    out.reserve(input.len() * w);
    let mut buf = vec![0u8; CHUNK * w];
    if w == 8 {
        let mut lanes = vec![0u64; CHUNK];
        for (c, x) in input.chunks(CHUNK).enumerate() {
            let l = &mut lanes[..x.len()];
            l.copy_from_slice(x);
            for m in masks {
                m.prg.apply(c as u64, l, w, m.negate, &mut buf);
            }
            let start = out.len();
            out.resize(start + x.len() * w, 0);
            for (o, v) in out[start..].chunks_exact_mut(8).zip(l.iter()) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
    } else {
        let mut lanes = vec![0u32; CHUNK];
        for (c, x) in input.chunks(CHUNK).enumerate() {
            let l = &mut lanes[..x.len()];
            for (a, &v) in l.iter_mut().zip(x) {
                *a = v as u32;
            }
            for m in masks {
                m.prg.apply(c as u64, l, w, m.negate, &mut buf);
            }
            let start = out.len();
            out.resize(start + x.len() * w, 0);
            let o = &mut out[start..];
            match w {
                1 => o.iter_mut().zip(l.iter()).for_each(|(o, v)| *o = *v as u8),
                2 => o
                    .chunks_exact_mut(2)
                    .zip(l.iter())
                    .for_each(|(o, v)| o.copy_from_slice(&(*v as u16).to_le_bytes())),
                _ => o
                    .chunks_exact_mut(4)
                    .zip(l.iter())
                    .for_each(|(o, v)| o.copy_from_slice(&v.to_le_bytes())),
            }
        }
    }
    buf.zeroize();
    true
}

/// Runs `f(part, first_chunk)` over up to `threads` disjoint ranges of whole chunks.
fn split_chunks<T: Send>(
    lanes: &mut [T],
    masks: &[SignedMask],
    threads: usize,
    f: &(dyn Fn(&mut [T], u64) + Sync),
) {
    let chunks = lanes.len().div_ceil(CHUNK);
    let threads = threads.clamp(1, chunks.max(1));
    if threads == 1 || masks.is_empty() {
        f(lanes, 0);
        return;
    }
    let per = chunks.div_ceil(threads) * CHUNK;
    std::thread::scope(|s| {
        let mut parts = lanes.chunks_mut(per).enumerate();
        let first = parts.next();
        for (i, part) in parts {
            s.spawn(move || f(part, (i * per / CHUNK) as u64));
        }
        if let Some((_, part)) = first {
            f(part, 0);
        }
    });
}

/// Adds every mask into `lanes`, which start at chunk `first_chunk`.
fn apply_chunks<T: Lane>(lanes: &mut [T], first_chunk: u64, masks: &[SignedMask], w: usize) {
    let mut buf = vec![0u8; CHUNK * w];
    for (c, part) in lanes.chunks_mut(CHUNK).enumerate() {
        for m in masks {
            m.prg
                .apply(first_chunk + c as u64, part, w, m.negate, &mut buf);
        }
    }
    buf.zeroize();
}

// The portable path's add loops, compiled also for AVX-512 and AVX2 and chosen at run time
// (baseline x86-64 only has SSE2).
#[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2"))]
fn add_words32(acc: &mut [u32], ks: &[u8], w: usize, negate: bool) {
    macro_rules! go {
        ($n:expr, $conv:expr) => {
            if negate {
                for (a, c) in acc.iter_mut().zip(ks.chunks_exact($n)) {
                    *a = a.wrapping_sub($conv(c));
                }
            } else {
                for (a, c) in acc.iter_mut().zip(ks.chunks_exact($n)) {
                    *a = a.wrapping_add($conv(c));
                }
            }
        };
    }
    match w {
        1 => go!(1, |c: &[u8]| c[0] as u32),
        2 => go!(2, |c: &[u8]| u16::from_le_bytes([c[0], c[1]]) as u32),
        _ => go!(4, |c: &[u8]| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    }
}

#[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2"))]
fn add_words64(acc: &mut [u64], ks: &[u8], w: usize, negate: bool) {
    macro_rules! go {
        ($n:expr, $conv:expr) => {
            if negate {
                for (a, c) in acc.iter_mut().zip(ks.chunks_exact($n)) {
                    *a = a.wrapping_sub($conv(c));
                }
            } else {
                for (a, c) in acc.iter_mut().zip(ks.chunks_exact($n)) {
                    *a = a.wrapping_add($conv(c));
                }
            }
        };
    }
    match w {
        1 => go!(1, |c: &[u8]| c[0] as u64),
        2 => go!(2, |c: &[u8]| u16::from_le_bytes([c[0], c[1]]) as u64),
        4 => go!(4, |c: &[u8]| u32::from_le_bytes([c[0], c[1], c[2], c[3]])
            as u64),
        _ => go!(8, |c: &[u8]| u64::from_le_bytes([
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
        ])),
    }
}

/// The whole mask vector of `seed` in Z_{2^bits}^dim. For tests and cross-checks only: the
/// protocol never materialises a mask.
pub fn expand(seed: &[u8; 32], bits: u32, dim: usize) -> Vec<u64> {
    let mut acc = Accumulator::zeros(bits, dim);
    acc.apply_masks(&[SignedMask {
        prg: MaskPrg::new(seed),
        negate: false,
    }]);
    acc.into_values()
}
