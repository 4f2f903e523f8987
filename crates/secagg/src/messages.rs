//! The messages of a round and their wire encoding.
//!
//! Every message is a plain struct with public fields and `to_bytes`/`from_bytes`. The
//! encoding is ours, small and strict:
//!
//! ```text
//! header   = "FSAG" (4 bytes) ‖ version (1 byte, = 1) ‖ type (1 byte)
//! u32, u64 = big-endian; key = 32 bytes; list<T> = u32 count ‖ count × T
//! type 1 AdvertiseKeys  = index u32 ‖ mask_pk key ‖ share_pk key ‖ commitment 32 ‖ sig_len u16 ‖ sig
//! type 2 EncryptedShare = from u32 ‖ to u32 ‖ ct_len u32 ‖ ciphertext
//! type 3 MaskedInput    = from u32 ‖ bits u8 ‖ dim u32 ‖ ⌈dim·bits/8⌉ bytes: the values packed
//!                         LSB-first, bits each (exactly b/8 little-endian bytes per value when
//!                         8 | b); unused high bits of the last byte are zero
//! type 4 UnmaskRequest  = to u32 ‖ list<u32> survivors ‖ list<u32> dropped
//! type 5 UnmaskResponse = from u32 ‖ list<about u32 ‖ kind u8 (0 self-mask seed, 1 mask key) ‖ 5 × u64>
//! ```
//!
//! Decoding refuses, with a [`DecodeError`], anything truncated, longer than its declared
//! content, of another type or version, or with a field out of bounds; lengths are checked
//! against the bytes actually present before anything is allocated, so a hostile length
//! cannot make the decoder allocate more than the message's own size. It never panics.

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::DecodeError;
use crate::graph::{MAX_DIM, MAX_SITES};
use crate::shamir::{CHUNKS, P};

const MAGIC: &[u8; 4] = b"FSAG";
const VERSION: u8 = 1;
const T_ADVERTISE: u8 = 1;
const T_SHARE: u8 = 2;
const T_MASKED: u8 = 3;
const T_REQUEST: u8 = 4;
const T_RESPONSE: u8 = 5;
/// Largest accepted share ciphertext (the real ones are 97 bytes).
const MAX_SHARE_CT: usize = 1024;
/// Largest accepted signature field (Ed25519 signatures are 64 bytes).
const MAX_SIG: usize = 1024;

/// Step 1, site → coordinator → all: a site's fresh public keys for this round, signed with its
/// identity key over (setup digest, index, keys, commitment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertiseKeys {
    pub index: u32,
    /// X25519 key for pairwise mask agreement.
    pub mask_public_key: [u8; 32],
    /// X25519 key for encrypting Shamir shares.
    pub share_public_key: [u8; 32],
    /// SHA-256 commitment to the self-mask seed, so a reconstructed seed can be checked.
    pub self_mask_commitment: [u8; 32],
    /// Ed25519 signature (64 bytes); empty means unsigned and is refused.
    pub signature: Vec<u8>,
}

/// Step 2, site → coordinator → one neighbour: Shamir shares of the sender's self-mask seed
/// and mask secret key, AEAD-encrypted to the recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedShare {
    pub from: u32,
    pub to: u32,
    pub ciphertext: Vec<u8>,
}

/// Step 3, site → coordinator: the masked input, in Z_{2^bits}.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedInput {
    pub from: u32,
    pub bits: u32,
    pub values: Vec<u64>,
}

/// Step 4, coordinator → one survivor: for which of its neighbours it must reveal the
/// self-mask seed share (survivors) and for which the mask-key share (dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmaskRequest {
    pub to: u32,
    /// Strictly increasing.
    pub survivors: Vec<u32>,
    /// Strictly increasing.
    pub dropped: Vec<u32>,
}

/// Which secret a revealed share belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Zeroize)]
pub enum ShareKind {
    /// Share of a surviving site's self-mask seed.
    SelfMaskSeed,
    /// Share of a dropped site's mask secret key.
    MaskKey,
}

/// One revealed Shamir share (the holder's abscissa is its index + 1).
#[derive(Debug, Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct RevealedShare {
    pub about: u32,
    pub kind: ShareKind,
    pub share: [u64; CHUNKS],
}

/// Step 4, survivor → coordinator: the requested shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmaskResponse {
    pub from: u32,
    pub shares: Vec<RevealedShare>,
}

// ---------------------------------------------------------------------------------------------

struct Writer(Vec<u8>);

impl Writer {
    fn new(ty: u8, cap: usize) -> Writer {
        let mut v = Vec::with_capacity(cap + 6);
        v.extend_from_slice(MAGIC);
        v.push(VERSION);
        v.push(ty);
        Writer(v)
    }
    fn u8(&mut self, x: u8) {
        self.0.push(x);
    }
    fn u16(&mut self, x: u16) {
        self.0.extend_from_slice(&x.to_be_bytes());
    }
    fn u32(&mut self, x: u32) {
        self.0.extend_from_slice(&x.to_be_bytes());
    }
    fn u64(&mut self, x: u64) {
        self.0.extend_from_slice(&x.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn u32_list(&mut self, l: &[u32]) {
        self.u32(l.len() as u32);
        for &x in l {
            self.u32(x);
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], ty: u8) -> Result<Reader<'a>, DecodeError> {
        let mut r = Reader { buf, pos: 0 };
        if r.take(4)? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let v = r.u8()?;
        if v != VERSION {
            return Err(DecodeError::BadVersion(v));
        }
        let got = r.u8()?;
        if got != ty {
            return Err(DecodeError::WrongType { expected: ty, got });
        }
        Ok(r)
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n - self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    /// A count of items of `item_len` bytes each, checked against `max` and the bytes left.
    fn count(
        &mut self,
        field: &'static str,
        max: usize,
        item_len: usize,
    ) -> Result<usize, DecodeError> {
        let c = self.u32()? as usize;
        if c > max {
            return Err(DecodeError::OutOfBounds {
                field,
                value: c as u64,
            });
        }
        if c.saturating_mul(item_len) > self.remaining() {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: c * item_len - self.remaining(),
            });
        }
        Ok(c)
    }
    fn u32_list(&mut self, field: &'static str) -> Result<Vec<u32>, DecodeError> {
        let c = self.count(field, MAX_SITES, 4)?;
        (0..c).map(|_| self.u32()).collect()
    }
    fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

impl AdvertiseKeys {
    /// The bytes the signature covers.
    pub(crate) fn signed_bytes(&self, setup_digest: &[u8; 32]) -> Vec<u8> {
        let mut m = Vec::with_capacity(200);
        m.extend_from_slice(crate::crypto::label::ADVERTISE);
        m.extend_from_slice(setup_digest);
        m.extend_from_slice(&self.index.to_be_bytes());
        m.extend_from_slice(&self.mask_public_key);
        m.extend_from_slice(&self.share_public_key);
        m.extend_from_slice(&self.self_mask_commitment);
        m
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(T_ADVERTISE, 102 + self.signature.len());
        w.u32(self.index);
        w.bytes(&self.mask_public_key);
        w.bytes(&self.share_public_key);
        w.bytes(&self.self_mask_commitment);
        w.u16(self.signature.len().min(u16::MAX as usize) as u16);
        w.bytes(&self.signature[..self.signature.len().min(u16::MAX as usize)]);
        w.0
    }

    pub fn from_bytes(b: &[u8]) -> Result<AdvertiseKeys, DecodeError> {
        let mut r = Reader::new(b, T_ADVERTISE)?;
        let index = r.u32()?;
        let mask_public_key = r.array()?;
        let share_public_key = r.array()?;
        let self_mask_commitment = r.array()?;
        let sl = r.u16()? as usize;
        if sl > MAX_SIG {
            return Err(DecodeError::OutOfBounds {
                field: "signature length",
                value: sl as u64,
            });
        }
        let signature = r.take(sl)?.to_vec();
        r.finish()?;
        Ok(AdvertiseKeys {
            index,
            mask_public_key,
            share_public_key,
            self_mask_commitment,
            signature,
        })
    }
}

impl EncryptedShare {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(T_SHARE, 12 + self.ciphertext.len());
        w.u32(self.from);
        w.u32(self.to);
        w.u32(self.ciphertext.len() as u32);
        w.bytes(&self.ciphertext);
        w.0
    }

    pub fn from_bytes(b: &[u8]) -> Result<EncryptedShare, DecodeError> {
        let mut r = Reader::new(b, T_SHARE)?;
        let from = r.u32()?;
        let to = r.u32()?;
        let l = r.u32()? as usize;
        if l > MAX_SHARE_CT {
            return Err(DecodeError::OutOfBounds {
                field: "ciphertext length",
                value: l as u64,
            });
        }
        let ciphertext = r.take(l)?.to_vec();
        r.finish()?;
        Ok(EncryptedShare {
            from,
            to,
            ciphertext,
        })
    }
}

/// Bytes needed to pack `dim` values of `bits` bits.
pub fn packed_len(dim: usize, bits: u32) -> usize {
    (dim as u128 * bits as u128).div_ceil(8) as usize
}

impl MaskedInput {
    /// Encodes the values (which must be below 2^bits; higher bits are dropped).
    pub fn to_bytes(&self) -> Vec<u8> {
        let bits = self.bits.clamp(1, 64);
        let mut out = MaskedInput::header(self.from, bits, self.values.len());
        pack(&self.values, bits, &mut out);
        out
    }

    /// The encoding's header, with room for the packed body.
    pub(crate) fn header(from: u32, bits: u32, dim: usize) -> Vec<u8> {
        let mut w = Writer::new(T_MASKED, 9 + packed_len(dim, bits));
        w.u32(from);
        w.u8(bits as u8);
        w.u32(dim as u32);
        w.0
    }

    pub fn from_bytes(b: &[u8]) -> Result<MaskedInput, DecodeError> {
        let (from, bits, dim, body) = MaskedInput::parse(b)?;
        let values = unpack(body, bits, dim).ok_or(DecodeError::OutOfBounds {
            field: "padding bits",
            value: 1,
        })?;
        Ok(MaskedInput { from, bits, values })
    }

    /// Checks the header and length and returns (from, bits, dim, packed body); the body's
    /// padding bits are checked too, so every body returned decodes.
    pub(crate) fn parse(b: &[u8]) -> Result<(u32, u32, usize, &[u8]), DecodeError> {
        let mut r = Reader::new(b, T_MASKED)?;
        let from = r.u32()?;
        let bits = r.u8()? as u32;
        if !(1..=64).contains(&bits) {
            return Err(DecodeError::OutOfBounds {
                field: "bits",
                value: bits as u64,
            });
        }
        let dim = r.u32()? as usize;
        if dim == 0 || dim > MAX_DIM {
            return Err(DecodeError::OutOfBounds {
                field: "dim",
                value: dim as u64,
            });
        }
        let body = r.take(packed_len(dim, bits))?;
        r.finish()?;
        let used = (dim as u128 * bits as u128 % 8) as u32;
        if used != 0 && body.last().is_some_and(|&last| last >> used != 0) {
            return Err(DecodeError::OutOfBounds {
                field: "padding bits",
                value: 1,
            });
        }
        Ok((from, bits, dim, body))
    }
}

pub(crate) fn pack(values: &[u64], bits: u32, out: &mut Vec<u8>) {
    if bits.is_multiple_of(8) {
        let w = bits as usize / 8;
        let start = out.len();
        out.resize(start + w * values.len(), 0);
        for (c, v) in out[start..].chunks_exact_mut(w).zip(values) {
            c.copy_from_slice(&v.to_le_bytes()[..w]);
        }
        return;
    }
    let mask = (1u64 << bits) - 1; // bits < 64 here
    let mut acc: u128 = 0;
    let mut n = 0u32;
    for &v in values {
        acc |= ((v & mask) as u128) << n;
        n += bits;
        while n >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            n -= 8;
        }
    }
    if n > 0 {
        out.push(acc as u8);
    }
}

/// `None` if the padding bits are not zero (non-canonical encoding).
pub(crate) fn unpack(body: &[u8], bits: u32, dim: usize) -> Option<Vec<u64>> {
    match bits {
        8 => return Some(body.iter().map(|&b| b as u64).collect()),
        16 => {
            return Some(
                body.chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as u64)
                    .collect(),
            );
        }
        32 => {
            return Some(
                body.chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64)
                    .collect(),
            );
        }
        _ if bits.is_multiple_of(8) => {
            let w = bits as usize / 8;
            return Some(
                body.chunks_exact(w)
                    .map(|c| {
                        let mut b = [0u8; 8];
                        b[..w].copy_from_slice(c);
                        u64::from_le_bytes(b)
                    })
                    .collect(),
            );
        }
        _ => {}
    }
    let mut values = Vec::with_capacity(dim);
    let mask = (1u64 << bits) - 1;
    let mut acc: u128 = 0;
    let mut n = 0u32;
    let mut bytes = body.iter();
    while values.len() < dim {
        while n < bits {
            acc |= (*bytes.next()? as u128) << n;
            n += 8;
        }
        values.push((acc as u64) & mask);
        acc >>= bits;
        n -= bits;
    }
    if acc != 0 || bytes.next().is_some() {
        return None;
    }
    Some(values)
}

impl UnmaskRequest {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(
            T_REQUEST,
            12 + 4 * (self.survivors.len() + self.dropped.len()),
        );
        w.u32(self.to);
        w.u32_list(&self.survivors);
        w.u32_list(&self.dropped);
        w.0
    }

    pub fn from_bytes(b: &[u8]) -> Result<UnmaskRequest, DecodeError> {
        let mut r = Reader::new(b, T_REQUEST)?;
        let to = r.u32()?;
        let survivors = r.u32_list("survivors count")?;
        let dropped = r.u32_list("dropped count")?;
        r.finish()?;
        Ok(UnmaskRequest {
            to,
            survivors,
            dropped,
        })
    }
}

const REVEALED_LEN: usize = 4 + 1 + 8 * CHUNKS;

impl UnmaskResponse {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(T_RESPONSE, 8 + REVEALED_LEN * self.shares.len());
        w.u32(self.from);
        w.u32(self.shares.len() as u32);
        for s in &self.shares {
            w.u32(s.about);
            w.u8(match s.kind {
                ShareKind::SelfMaskSeed => 0,
                ShareKind::MaskKey => 1,
            });
            for &y in &s.share {
                w.u64(y);
            }
        }
        w.0
    }

    pub fn from_bytes(b: &[u8]) -> Result<UnmaskResponse, DecodeError> {
        let mut r = Reader::new(b, T_RESPONSE)?;
        let from = r.u32()?;
        let c = r.count("share count", MAX_SITES, REVEALED_LEN)?;
        let mut shares = Vec::with_capacity(c);
        for _ in 0..c {
            let about = r.u32()?;
            let kind = match r.u8()? {
                0 => ShareKind::SelfMaskSeed,
                1 => ShareKind::MaskKey,
                k => {
                    return Err(DecodeError::OutOfBounds {
                        field: "share kind",
                        value: k as u64,
                    });
                }
            };
            let mut share = [0u64; CHUNKS];
            for y in share.iter_mut() {
                *y = r.u64()?;
                if *y >= P {
                    return Err(DecodeError::OutOfBounds {
                        field: "share value",
                        value: *y,
                    });
                }
            }
            shares.push(RevealedShare { about, kind, share });
        }
        r.finish()?;
        Ok(UnmaskResponse { from, shares })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_input_packs_tightly_and_round_trips() {
        for bits in [1u32, 3, 8, 12, 16, 31, 32, 33, 63, 64] {
            let mask = if bits == 64 {
                u64::MAX
            } else {
                (1 << bits) - 1
            };
            let values: Vec<u64> = (0..37u64)
                .map(|i| i.wrapping_mul(0x9e3779b97f4a7c15) & mask)
                .collect();
            let m = MaskedInput {
                from: 3,
                bits,
                values,
            };
            let b = m.to_bytes();
            assert_eq!(b.len(), 6 + 9 + packed_len(37, bits));
            assert_eq!(MaskedInput::from_bytes(&b).unwrap(), m);
            for cut in [0, 5, 6, 10, b.len() - 1] {
                assert!(MaskedInput::from_bytes(&b[..cut]).is_err());
            }
            let mut long = b.clone();
            long.push(0);
            assert_eq!(
                MaskedInput::from_bytes(&long),
                Err(DecodeError::Trailing(1))
            );
        }
    }

    #[test]
    fn nonzero_padding_is_refused() {
        let m = MaskedInput {
            from: 0,
            bits: 3,
            values: vec![7, 7, 7],
        };
        let mut b = m.to_bytes();
        *b.last_mut().unwrap() |= 0x80;
        assert!(MaskedInput::from_bytes(&b).is_err());
    }

    #[test]
    fn all_messages_round_trip_and_refuse_garbage() {
        let a = AdvertiseKeys {
            index: 7,
            mask_public_key: [1; 32],
            share_public_key: [2; 32],
            self_mask_commitment: [3; 32],
            signature: vec![4; 64],
        };
        assert_eq!(AdvertiseKeys::from_bytes(&a.to_bytes()).unwrap(), a);
        let s = EncryptedShare {
            from: 1,
            to: 2,
            ciphertext: vec![9; 97],
        };
        assert_eq!(EncryptedShare::from_bytes(&s.to_bytes()).unwrap(), s);
        let q = UnmaskRequest {
            to: 4,
            survivors: vec![1, 2, 5],
            dropped: vec![3],
        };
        assert_eq!(UnmaskRequest::from_bytes(&q.to_bytes()).unwrap(), q);
        let p = UnmaskResponse {
            from: 4,
            shares: vec![RevealedShare {
                about: 1,
                kind: ShareKind::MaskKey,
                share: [1, 2, 3, 4, P - 1],
            }],
        };
        assert_eq!(UnmaskResponse::from_bytes(&p.to_bytes()).unwrap(), p);

        // Wrong type, magic, version.
        assert!(matches!(
            EncryptedShare::from_bytes(&a.to_bytes()),
            Err(DecodeError::WrongType { .. })
        ));
        let mut bad = a.to_bytes();
        bad[0] = b'X';
        assert_eq!(AdvertiseKeys::from_bytes(&bad), Err(DecodeError::BadMagic));
        let mut bad = a.to_bytes();
        bad[4] = 9;
        assert_eq!(
            AdvertiseKeys::from_bytes(&bad),
            Err(DecodeError::BadVersion(9))
        );
        // A huge declared count with no bytes behind it is refused without allocating.
        let mut huge = Writer::new(T_REQUEST, 0);
        huge.u32(0);
        huge.u32(1 << 20);
        assert!(matches!(
            UnmaskRequest::from_bytes(&huge.0),
            Err(DecodeError::Truncated { .. })
        ));
        let mut huge = Writer::new(T_RESPONSE, 0);
        huge.u32(0);
        huge.u32(u32::MAX);
        assert!(matches!(
            UnmaskResponse::from_bytes(&huge.0),
            Err(DecodeError::OutOfBounds { .. })
        ));
        // Every truncation of every message is an error.
        for b in [a.to_bytes(), s.to_bytes(), q.to_bytes(), p.to_bytes()] {
            for cut in 0..b.len() {
                let r = (
                    AdvertiseKeys::from_bytes(&b[..cut]).is_err(),
                    EncryptedShare::from_bytes(&b[..cut]).is_err(),
                    UnmaskRequest::from_bytes(&b[..cut]).is_err(),
                    UnmaskResponse::from_bytes(&b[..cut]).is_err(),
                );
                assert_eq!(r, (true, true, true, true), "cut {cut}");
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let mut b = bytes.clone();
            if b.len() >= 6 { b[..4].copy_from_slice(MAGIC); b[4] = VERSION; }
            for ty in 1..=5u8 {
                if b.len() >= 6 { b[5] = ty; }
                let _ = AdvertiseKeys::from_bytes(&b);
                let _ = EncryptedShare::from_bytes(&b);
                let _ = MaskedInput::from_bytes(&b);
                let _ = UnmaskRequest::from_bytes(&b);
                let _ = UnmaskResponse::from_bytes(&b);
            }
        }
    }
}
