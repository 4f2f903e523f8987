//! The mask PRG's AES-128-CTR keystream computed with VAES on AVX-512 and consumed in
//! registers: added into (or subtracted from) `u32`/`u64` lanes, or written out as bytes.
//!
//! # Why this module exists
//!
//! Masks were most of the cost of a SecAgg+ round: at the benchmark's setting about 2,950 masks
//! of 4 MB are expanded per round. Through `ring`'s AES-128-GCM ([`crate::prg`]'s portable
//! path) each mask costs a pass zeroing a buffer, the GCM sealing (whose GHASH is wasted work
//! here) writing 16 KiB of keystream, and a pass reading it back into the lanes: about
//! 9 GB/s per core. Here the keystream of 32 blocks at a time is computed in eight 512-bit
//! registers (four AES blocks each, `vaesenc`) and added straight into the lanes, with no
//! buffer, no GHASH and no zeroing: several times faster on CPUs with VAES and AVX-512. (The
//! round keys are kept in a zeroizing container; their broadcast copies and the keystream live
//! in registers, and the one stack copy of a partial group of keystream is wiped.)
//!
//! # What it computes
//!
//! Exactly the keystream [`crate::prg`] specifies, and so exactly the masks the portable path
//! gives: block `j` of chunk `c` is AES-128(K, be64(c) ‖ 0^32 ‖ be32(2 + j)), its 16 bytes
//! read as little-endian words. The AES itself is the CPU's instruction (`vaesenc`,
//! `vaesenclast`: constant time, no tables); the key schedule is the textbook AES-NI one
//! (`aeskeygenassist`, Intel's AES-NI white paper, §4.1). The key schedule is checked against
//! FIPS-197 Appendix A.1 and the keystream against `ring`'s for random keys, chunks, lengths
//! and lane widths (unit tests below); the crate's pinned PRG vectors (`tests/vectors.rs`,
//! from Python's `cryptography`) run through whichever path the machine takes, and
//! `tests/vectors.rs` also compares the two paths through every entry point.
//!
//! # No `unsafe`
//!
//! Runtime dispatch is the `multiversion` crate's: each `#[multiversion]` function is
//! compiled twice, once with the target features enabled (selected when the CPU has them) and
//! once without, and the inner `imp` exists in the first only (`target_cfg`), so intrinsics
//! are called only where their features are enabled and are safe to call there. Vectors move
//! to and from slices through `bytemuck` casts. The crate keeps `#![forbid(unsafe_code)]`.
//!
//! [`available`] decides whether the fast path is used; every function here also answers
//! `false` (and does nothing) when called on a CPU without the features, so a caller can
//! always fall back to the portable path.

use multiversion::multiversion;
// Used as attributes inside `#[multiversion]` functions, which the macro rewrites, so the
// compiler may not see them used.
#[allow(unused_imports)]
use multiversion::{inherit_target, target::target_cfg};
use zeroize::{Zeroize, Zeroizing};

/// The 11 round keys of AES-128, round key 0 being the key itself.
pub(crate) type RoundKeys = [[u8; 16]; 11];

/// Where one chunk's keystream goes.
pub(crate) enum Sink<'a> {
    /// Each 4 keystream bytes, as a little-endian `u32`, added to (subtracted from, with
    /// `negate`) one lane (wrapping).
    U32 { lanes: &'a mut [u32], negate: bool },
    /// Each 8 keystream bytes, as a little-endian `u64`, added to (subtracted from) one lane.
    U64 { lanes: &'a mut [u64], negate: bool },
    /// The keystream itself, as many bytes as the slice holds.
    Bytes(&'a mut [u8]),
}

/// Whether this CPU has what the fast path needs: AES-NI, VAES and AVX-512 F and BW, and —
/// since `multiversion` compiles its AVX-512 versions only for CPUs with the whole Ice
/// Lake/Zen 4 set, where AVX-512 does not slow the clock — also CD, DQ, VL, IFMA, VBMI,
/// VBMI2, VNNI, BITALG, VPOPCNTDQ, GFNI and VPCLMULQDQ. Asked through `multiversion` itself,
/// with the same target as [`apply`], so the two always agree; the standard library detects
/// the features once and caches them.
#[multiversion(targets("x86_64+avx512f+avx512bw+vaes+aes"))]
pub(crate) fn available() -> bool {
    #[target_cfg(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "vaes",
        target_feature = "aes"
    ))]
    fn imp() -> bool {
        true
    }
    #[target_cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "vaes",
        target_feature = "aes"
    )))]
    fn imp() -> bool {
        false
    }
    imp()
}

/// The AES-128 key schedule of `key`, or `None` when the fast path is not available (then
/// nothing else here is used).
pub(crate) fn round_keys(key: &[u8; 16]) -> Option<Zeroizing<RoundKeys>> {
    if !available() {
        return None;
    }
    let mut rk = Zeroizing::new([[0u8; 16]; 11]);
    expand_key(key, &mut rk).then_some(rk)
}

#[multiversion(targets("x86_64+avx512f+avx512bw+vaes+aes"))]
fn expand_key(key: &[u8; 16], rk: &mut RoundKeys) -> bool {
    #[target_cfg(all(target_arch = "x86_64", target_feature = "aes"))]
    #[inherit_target]
    fn imp(key: &[u8; 16], rk: &mut RoundKeys) -> bool {
        use core::arch::x86_64::*;
        // One step of the AES-128 key expansion: w[i..i+4] from w[i-4..i] and
        // SubWord(RotWord(w[i-1])) ^ Rcon, which aeskeygenassist leaves in dword 3.
        #[inherit_target]
        fn step(k: __m128i, assist: __m128i) -> __m128i {
            let t = _mm_shuffle_epi32(assist, 0xff);
            let k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
            let k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
            let k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
            _mm_xor_si128(k, t)
        }
        let mut k: __m128i = bytemuck::cast(*key);
        rk[0] = *key;
        macro_rules! round {
            ($i:expr, $rcon:expr) => {
                k = step(k, _mm_aeskeygenassist_si128(k, $rcon));
                rk[$i] = bytemuck::cast(k);
            };
        }
        round!(1, 0x01);
        round!(2, 0x02);
        round!(3, 0x04);
        round!(4, 0x08);
        round!(5, 0x10);
        round!(6, 0x20);
        round!(7, 0x40);
        round!(8, 0x80);
        round!(9, 0x1b);
        round!(10, 0x36);
        true
    }
    #[target_cfg(not(all(target_arch = "x86_64", target_feature = "aes")))]
    fn imp(_: &[u8; 16], _: &mut RoundKeys) -> bool {
        false
    }
    imp(key, rk)
}

/// Sends the keystream of chunk `chunk` (from its first block) into `sink`. Returns false,
/// leaving the sink alone, when this CPU lacks the fast path.
#[multiversion(targets("x86_64+avx512f+avx512bw+vaes+aes"))]
pub(crate) fn apply(rk: &RoundKeys, chunk: u64, sink: Sink<'_>) -> bool {
    #[target_cfg(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "vaes",
        target_feature = "aes"
    ))]
    #[inherit_target]
    fn imp(rk: &RoundKeys, chunk: u64, sink: Sink<'_>) -> bool {
        use core::arch::x86_64::*;
        /// Registers of 4 blocks per step: 32 blocks, 512 bytes, in flight at once (enough to
        /// hide `vaesenc`'s latency; 11 round keys + 8 blocks + 2 constants fit 32 registers).
        const G: usize = 8;
        let mut k = [_mm512_setzero_si512(); 11];
        for (k, r) in k.iter_mut().zip(rk) {
            *k = _mm512_broadcast_i32x4(bytemuck::cast(*r));
        }
        // Counter blocks: dwords 0-1 the chunk number as written big-endian, dword 2 zero,
        // dword 3 the block counter, kept native and byte-swapped just before encryption.
        let c = chunk.to_be_bytes();
        let lo = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let hi = i32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        let mut ctr = _mm512_set_epi32(5, 0, hi, lo, 4, 0, hi, lo, 3, 0, hi, lo, 2, 0, hi, lo);
        let four = _mm512_set_epi32(4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0);
        let swap = _mm512_broadcast_i32x4(_mm_set_epi8(
            12, 13, 14, 15, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
        ));
        // The next 32 keystream blocks.
        macro_rules! next {
            () => {{
                let mut b = [_mm512_setzero_si512(); G];
                for x in b.iter_mut() {
                    *x = _mm512_xor_si512(_mm512_shuffle_epi8(ctr, swap), k[0]);
                    ctr = _mm512_add_epi32(ctr, four);
                }
                for key in &k[1..10] {
                    for x in b.iter_mut() {
                        *x = _mm512_aesenc_epi128(*x, *key);
                    }
                }
                for x in b.iter_mut() {
                    *x = _mm512_aesenclast_epi128(*x, k[10]);
                }
                b
            }};
        }
        // Adds (or subtracts) the keystream into lanes of $t, $n lanes per register.
        macro_rules! lanes {
            ($lanes:expr, $negate:expr, $t:ty, $n:literal, $add:ident, $sub:ident) => {{
                let (groups, tail) = $lanes.as_chunks_mut::<{ $n * G }>();
                for g in groups {
                    let ks = next!();
                    let mut a: [__m512i; G] = bytemuck::cast(*g);
                    for (a, s) in a.iter_mut().zip(ks) {
                        *a = if $negate { $sub(*a, s) } else { $add(*a, s) };
                    }
                    *g = bytemuck::cast(a);
                }
                if !tail.is_empty() {
                    let mut ks: [$t; $n * G] = bytemuck::cast(next!());
                    for (a, s) in tail.iter_mut().zip(ks) {
                        *a = if $negate {
                            a.wrapping_sub(s)
                        } else {
                            a.wrapping_add(s)
                        };
                    }
                    ks.zeroize();
                }
            }};
        }
        match sink {
            Sink::U32 { lanes, negate } => {
                lanes!(lanes, negate, u32, 16, _mm512_add_epi32, _mm512_sub_epi32)
            }
            Sink::U64 { lanes, negate } => {
                lanes!(lanes, negate, u64, 8, _mm512_add_epi64, _mm512_sub_epi64)
            }
            Sink::Bytes(out) => {
                let (groups, tail) = out.as_chunks_mut::<{ 64 * G }>();
                for g in groups {
                    *g = bytemuck::cast(next!());
                }
                if !tail.is_empty() {
                    let mut ks: [u8; 64 * G] = bytemuck::cast(next!());
                    tail.copy_from_slice(&ks[..tail.len()]);
                    ks.zeroize();
                }
            }
        }
        true
    }
    #[target_cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "vaes",
        target_feature = "aes"
    )))]
    fn imp(_: &RoundKeys, _: u64, _: Sink<'_>) -> bool {
        false
    }
    imp(rk, chunk, sink)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};
    use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The keystream through ring's AES-128-GCM (the portable path's definition).
    fn ring_keystream(key: &[u8; 16], chunk: u64, len: usize) -> Vec<u8> {
        let k = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key).unwrap());
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&chunk.to_be_bytes());
        let mut buf = vec![0u8; len];
        let _tag = k
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .unwrap();
        buf
    }

    /// FIPS-197 Appendix A.1: the AES-128 key expansion of 2b7e1516...
    #[test]
    fn key_schedule_matches_fips_197() {
        let key: [u8; 16] = hex("2b7e151628aed2a6abf7158809cf4f3c").try_into().unwrap();
        let Some(rk) = round_keys(&key) else {
            assert!(!available());
            return; // no fast path on this CPU: nothing to check
        };
        assert_eq!(rk[0], key);
        assert_eq!(rk[1].to_vec(), hex("a0fafe1788542cb123a339392a6c7605"));
        assert_eq!(rk[5].to_vec(), hex("d4d1c6f87c839d87caf2b8bc11f915bc"));
        assert_eq!(rk[10].to_vec(), hex("d014f9a8c9ee2589e13f0cc8b6630ca6"));
    }

    /// Every sink gives exactly ring's AES-128-GCM keystream (so the masks do not depend on
    /// the path), for random keys, chunk numbers (large ones too) and lengths that end on and
    /// off the 512-byte groups.
    #[test]
    fn every_sink_matches_ring() {
        if !available() {
            return;
        }
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let lens = [
            0usize, 1, 3, 4, 15, 16, 17, 63, 64, 100, 511, 512, 513, 1000, 4096, 16384,
        ];
        for round in 0..24 {
            let mut key = [0u8; 16];
            rng.fill_bytes(&mut key);
            let chunk = match round % 4 {
                0 => round as u64,
                1 => rng.next_u64(),
                2 => u64::MAX - round as u64,
                _ => rng.next_u32() as u64,
            };
            let rk = round_keys(&key).unwrap();
            let negate = round % 2 == 1;
            let mut extra = [0usize; 2];
            for x in &mut extra {
                *x = (rng.next_u32() % 32768) as usize;
            }
            for &len in lens.iter().chain(&extra) {
                let want = ring_keystream(&key, chunk, len);
                let mut got = vec![0xA5u8; len];
                assert!(apply(&rk, chunk, Sink::Bytes(&mut got)));
                assert_eq!(got, want, "bytes, chunk {chunk}, len {len}");

                let base32: Vec<u32> = (0..len / 4).map(|_| rng.next_u32()).collect();
                let mut l = base32.clone();
                assert!(apply(
                    &rk,
                    chunk,
                    Sink::U32 {
                        lanes: &mut l,
                        negate
                    }
                ));
                for (i, (g, b)) in l.iter().zip(&base32).enumerate() {
                    let w = u32::from_le_bytes(want[4 * i..4 * i + 4].try_into().unwrap());
                    let e = if negate {
                        b.wrapping_sub(w)
                    } else {
                        b.wrapping_add(w)
                    };
                    assert_eq!(*g, e, "u32 lane {i}, chunk {chunk}, len {len}");
                }

                let base64: Vec<u64> = (0..len / 8).map(|_| rng.next_u64()).collect();
                let mut l = base64.clone();
                assert!(apply(
                    &rk,
                    chunk,
                    Sink::U64 {
                        lanes: &mut l,
                        negate
                    }
                ));
                for (i, (g, b)) in l.iter().zip(&base64).enumerate() {
                    let w = u64::from_le_bytes(want[8 * i..8 * i + 8].try_into().unwrap());
                    let e = if negate {
                        b.wrapping_sub(w)
                    } else {
                        b.wrapping_add(w)
                    };
                    assert_eq!(*g, e, "u64 lane {i}, chunk {chunk}, len {len}");
                }
            }
        }
    }
}
