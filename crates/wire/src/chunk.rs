//! Chunked transfer: payloads larger than one gRPC message travel as ordered [`pb::Chunk`]s.
//!
//! gRPC implementations refuse messages above a limit (4 MiB by default in tonic and most
//! others), and a hospital's model can be hundreds of megabytes. Rather than raise the limit
//! (which lets any peer make the other allocate that much from one message), large payloads
//! are cut into pieces of [`CHUNK_BYTES`]. Each piece repeats the whole payload's SHA-256 and
//! length, so the receiver knows at the first piece how much it will hold (and can refuse it
//! before allocating anything), appends pieces strictly in order, and checks the digest before
//! decoding or using a single byte. The sender cuts a shared [`Bytes`] buffer, so sending one
//! model to many sites never copies it once per site.
//!
//! Two uses: the coordinator sends large models to sites as `model_chunk` tasks followed by a
//! task naming the model by digest ([`ModelInbox`] reassembles them at the site), and sites
//! and the coordinator send large encoded messages (a site's update, a finished model) as a
//! stream of chunks ([`Assembler`]).

use bytes::Bytes;
use fedcare_proto::v1 as pb;
use sha2::{Digest, Sha256};

use crate::WireError;

/// Data bytes per chunk: well under gRPC's 4 MiB default, large enough that the per-message
/// overhead (a few dozen bytes and one HTTP/2 frame header) is negligible.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Payloads up to this size travel in one message; larger ones are chunked.
pub const INLINE_LIMIT: usize = 1 << 20;

/// Largest payload either side accepts: 1 GiB, a model of 268 million f32 parameters.
pub const MAX_PAYLOAD_BYTES: u64 = 1 << 30;

/// Smallest chunk a receiver accepts other than a payload's last: a sender cannot make it
/// hold a payload's buffer (and its share of the upload budget) while trickling bytes.
pub const MIN_CHUNK_BYTES: usize = 64 << 10;

/// Why a chunked payload was refused. Nothing of a refused payload is used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("a payload of {total} bytes exceeds the limit of {limit}")]
    TooLarge { total: u64, limit: u64 },
    #[error("a chunked payload cannot be empty")]
    EmptyPayload,
    #[error("a chunk carries no data")]
    EmptyChunk,
    #[error("a chunk of {got} bytes before the payload's last: chunks must carry at least {min}")]
    SmallChunk { got: usize, min: usize },
    #[error("a chunk's SHA-256 must be 32 bytes, got {0}")]
    BadDigest(usize),
    #[error("a chunk starts at byte {got}, expected {expected}: chunks must arrive in order, without gaps or overlaps")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("a chunk belongs to another payload (its SHA-256 or total length differs from the first chunk's)")]
    Mixed,
    #[error("a chunk runs past the declared total of {total} bytes")]
    Overrun { total: u64 },
    #[error("the payload ended after {got} of its {total} bytes")]
    Incomplete { got: u64, total: u64 },
    #[error("the payload's SHA-256 does not match the one its chunks declared")]
    Checksum,
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Cuts `payload` into chunks of at most `chunk_bytes` (each a slice of `payload`, no copy).
pub fn split(payload: &Bytes, digest: [u8; 32], chunk_bytes: usize) -> impl Iterator<Item = pb::Chunk> + '_ {
    let step = chunk_bytes.max(1);
    let total = payload.len() as u64;
    (0..payload.len()).step_by(step).map(move |start| pb::Chunk {
        sha256: digest.to_vec(),
        total_len: total,
        offset: start as u64,
        data: payload.slice(start..(start + step).min(payload.len())),
    })
}

/// Reassembles one payload from its chunks.
#[derive(Debug)]
pub struct Assembler {
    digest: [u8; 32],
    total: u64,
    buf: Vec<u8>,
    hasher: Sha256,
    min_chunk: usize,
}

impl Assembler {
    /// Starts from the first chunk's header (its data is not taken yet: pass it to
    /// [`Assembler::push`]). Refuses a payload above `limit`. Nothing is allocated until the
    /// first push, so a receiver can check a payload, then wait for room to hold it.
    pub fn new(first: &pb::Chunk, limit: u64) -> Result<Assembler, ChunkError> {
        let digest: [u8; 32] = first.sha256.as_slice().try_into().map_err(|_| ChunkError::BadDigest(first.sha256.len()))?;
        if first.total_len == 0 {
            return Err(ChunkError::EmptyPayload);
        }
        if first.total_len > limit {
            return Err(ChunkError::TooLarge { total: first.total_len, limit });
        }
        // The buffer is reserved at the first push, whole (`total_len <= limit`, and every limit
        // used is far below `usize::MAX` on 64-bit targets).
        usize::try_from(first.total_len).map_err(|_| ChunkError::TooLarge { total: first.total_len, limit })?;
        Ok(Assembler { digest, total: first.total_len, buf: Vec::new(), hasher: Sha256::new(), min_chunk: 1 })
    }

    /// Refuses chunks shorter than `min` bytes other than the payload's last
    /// ([`MIN_CHUNK_BYTES`] for a peer that might trickle).
    pub fn with_min_chunk(mut self, min: usize) -> Assembler {
        self.min_chunk = min.max(1);
        self
    }

    /// The SHA-256 every chunk of this payload declares.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The payload's declared length.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether `c` claims to belong to this payload (same digest and length).
    pub fn same_payload(&self, c: &pb::Chunk) -> bool {
        c.sha256.as_slice() == self.digest && c.total_len == self.total
    }

    /// Appends the next chunk; returns whether the payload is now complete.
    pub fn push(&mut self, c: &pb::Chunk) -> Result<bool, ChunkError> {
        if c.sha256.len() != 32 {
            return Err(ChunkError::BadDigest(c.sha256.len()));
        }
        if !self.same_payload(c) {
            return Err(ChunkError::Mixed);
        }
        let have = self.buf.len() as u64;
        if c.offset != have {
            return Err(ChunkError::OutOfOrder { expected: have, got: c.offset });
        }
        if c.data.is_empty() {
            return Err(ChunkError::EmptyChunk);
        }
        if have + c.data.len() as u64 > self.total {
            return Err(ChunkError::Overrun { total: self.total });
        }
        if c.data.len() < self.min_chunk && have + (c.data.len() as u64) < self.total {
            return Err(ChunkError::SmallChunk { got: c.data.len(), min: self.min_chunk });
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.total as usize);
        }
        self.hasher.update(&c.data);
        self.buf.extend_from_slice(&c.data);
        Ok(self.buf.len() as u64 == self.total)
    }

    /// The whole payload, once every byte has arrived and its digest matches.
    pub fn finish(self) -> Result<Vec<u8>, ChunkError> {
        if self.buf.len() as u64 != self.total {
            return Err(ChunkError::Incomplete { got: self.buf.len() as u64, total: self.total });
        }
        let got: [u8; 32] = self.hasher.finalize().into();
        if got != self.digest {
            return Err(ChunkError::Checksum);
        }
        Ok(self.buf)
    }
}

/// Reassembles a whole payload from a sequence of chunks (for a stream already collected).
pub fn collect(chunks: impl IntoIterator<Item = pb::Chunk>, limit: u64) -> Result<Vec<u8>, ChunkError> {
    let mut it = chunks.into_iter();
    let first = it.next().ok_or(ChunkError::EmptyPayload)?;
    let mut asm = Assembler::new(&first, limit)?;
    asm.push(&first)?;
    for c in it {
        asm.push(&c)?;
    }
    asm.finish()
}

/// A model's values as a payload: little-endian f32, in order.
pub fn model_payload(values: &[f32]) -> Bytes {
    let mut out = Vec::with_capacity(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Bytes::from(out)
}

/// SHA-256 of [`model_payload`]`(values)` (the digest that names a chunked model), without
/// building the payload: the values are hashed in small batches.
pub fn model_sha256(values: &[f32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    let mut buf = [0u8; 4 * 1024];
    for batch in values.chunks(buf.len() / 4) {
        for (out, v) in buf.chunks_exact_mut(4).zip(batch) {
            out.copy_from_slice(&v.to_le_bytes());
        }
        hasher.update(&buf[..batch.len() * 4]);
    }
    hasher.finalize().into()
}

/// What [`ModelInbox::push`] made of a model chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum ModelProgress {
    /// More chunks are due.
    Pending,
    /// The model payload is complete and its digest checks: `(sha256, bytes)`.
    Complete([u8; 32], u64),
}

/// The site's side of chunked models: gathers `model_chunk` tasks, then puts the values into
/// the Train or Eval task that names them by digest.
///
/// It holds at most one model being received and one complete model; a new model's first chunk
/// replaces whatever was there (the coordinator sends a model's chunks back to back, right
/// before the task that uses it).
#[derive(Debug, Default)]
pub struct ModelInbox {
    receiving: Option<Assembler>,
    ready: Option<([u8; 32], Vec<u8>)>,
}

impl ModelInbox {
    pub fn new() -> ModelInbox {
        ModelInbox::default()
    }

    /// Takes one `model_chunk`. On an error the partial model is dropped.
    pub fn push(&mut self, c: &pb::Chunk) -> Result<ModelProgress, ChunkError> {
        // Anything but the next piece of the model being received starts a new one, which must
        // begin at offset 0; on any error the partial model is dropped.
        let mut asm = match self.receiving.take() {
            Some(a) if a.same_payload(c) && c.offset != 0 => a,
            _ if c.offset != 0 => return Err(ChunkError::OutOfOrder { expected: 0, got: c.offset }),
            _ => Assembler::new(c, MAX_PAYLOAD_BYTES)?,
        };
        if !asm.push(c)? {
            self.receiving = Some(asm);
            return Ok(ModelProgress::Pending);
        }
        let digest = asm.digest();
        let bytes = asm.finish()?;
        let len = bytes.len() as u64;
        self.ready = Some((digest, bytes));
        Ok(ModelProgress::Complete(digest, len))
    }

    /// Puts the named model's values into a Train or Eval task whose `Model` carries
    /// `values_sha256`; passes every other task through unchanged. The model is kept, so a
    /// task naming the same model again (an Eval after a Train of the same round's model)
    /// needs no second transfer.
    pub fn resolve(&mut self, mut task: pb::Task) -> Result<pb::Task, WireError> {
        use pb::task::Kind;
        let model = match task.kind.as_mut() {
            Some(Kind::Train(t)) => t.model.as_mut(),
            Some(Kind::Eval(e)) => e.model.as_mut(),
            _ => None,
        };
        let Some(model) = model else { return Ok(task) };
        if model.values_sha256.is_empty() {
            return Ok(task);
        }
        if !model.values.is_empty() {
            return Err(crate::invalid("model", "carries both values and a reference to chunked values"));
        }
        let Some((digest, bytes)) = self.ready.as_ref() else {
            return Err(crate::invalid("model.values_sha256", "names a model whose chunks did not all arrive"));
        };
        if model.values_sha256.as_slice() != digest {
            return Err(crate::invalid("model.values_sha256", "names a model other than the one received"));
        }
        if bytes.len() % 4 != 0 {
            return Err(crate::invalid("model", format!("a chunked model of {} bytes is not whole f32 values", bytes.len())));
        }
        model.values = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        model.values_sha256.clear();
        Ok(task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(n: usize) -> Bytes {
        Bytes::from((0..n).map(|i| (i * 7 + i / 251) as u8).collect::<Vec<u8>>())
    }

    fn chunks(p: &Bytes, size: usize) -> Vec<pb::Chunk> {
        split(p, sha256(p), size).collect()
    }

    #[test]
    fn split_then_collect_gives_the_payload_back() {
        for (n, size) in [(1, 1), (10, 3), (4096, 1024), (4097, 1024), (100_000, 7_777)] {
            let p = payload(n);
            let cs = chunks(&p, size);
            assert_eq!(cs.len(), n.div_ceil(size));
            assert!(cs.iter().all(|c| c.data.len() <= size && c.total_len == n as u64));
            assert_eq!(collect(cs, MAX_PAYLOAD_BYTES).unwrap(), p.to_vec());
        }
    }

    #[test]
    fn a_models_digest_is_its_payloads() {
        for n in [0, 1, 1023, 1024, 1025, 5000] {
            let values: Vec<f32> = (0..n).map(|i| i as f32 * -0.5 + 3.0).collect();
            assert_eq!(model_sha256(&values), sha256(&model_payload(&values)), "{n} values");
        }
    }

    #[test]
    fn chunks_share_the_sender_buffer() {
        let p = payload(3000);
        let cs = chunks(&p, 1000);
        // `Bytes::slice` points into the same allocation.
        assert_eq!(cs[1].data.as_ptr(), p[1000..].as_ptr());
    }

    #[test]
    fn reordered_dropped_duplicated_or_foreign_chunks_are_refused() {
        let p = payload(5000);
        let cs = chunks(&p, 1000);
        let mut swapped = cs.clone();
        swapped.swap(1, 2);
        assert_eq!(collect(swapped, MAX_PAYLOAD_BYTES), Err(ChunkError::OutOfOrder { expected: 1000, got: 2000 }));
        let mut dropped = cs.clone();
        dropped.remove(4);
        assert_eq!(collect(dropped, MAX_PAYLOAD_BYTES), Err(ChunkError::Incomplete { got: 4000, total: 5000 }));
        let mut dup = cs.clone();
        dup.insert(2, cs[1].clone());
        assert_eq!(collect(dup, MAX_PAYLOAD_BYTES), Err(ChunkError::OutOfOrder { expected: 2000, got: 1000 }));
        let other = payload(5001);
        let mut mixed = cs.clone();
        mixed[3] = chunks(&other, 1000)[3].clone();
        assert_eq!(collect(mixed, MAX_PAYLOAD_BYTES), Err(ChunkError::Mixed));
    }

    #[test]
    fn a_changed_byte_fails_the_checksum() {
        let p = payload(5000);
        let mut cs = chunks(&p, 1000);
        let mut data = cs[2].data.to_vec();
        data[17] ^= 1;
        cs[2].data = Bytes::from(data);
        assert_eq!(collect(cs, MAX_PAYLOAD_BYTES), Err(ChunkError::Checksum));
    }

    #[test]
    fn bad_headers_are_refused_before_allocating() {
        let p = payload(100);
        let good = chunks(&p, 100).remove(0);
        let huge = pb::Chunk { total_len: MAX_PAYLOAD_BYTES + 1, ..good.clone() };
        assert_eq!(Assembler::new(&huge, MAX_PAYLOAD_BYTES).unwrap_err(), ChunkError::TooLarge { total: MAX_PAYLOAD_BYTES + 1, limit: MAX_PAYLOAD_BYTES });
        let short = pb::Chunk { sha256: vec![0; 31], ..good.clone() };
        assert_eq!(Assembler::new(&short, MAX_PAYLOAD_BYTES).unwrap_err(), ChunkError::BadDigest(31));
        let empty = pb::Chunk { total_len: 0, ..good.clone() };
        assert_eq!(Assembler::new(&empty, MAX_PAYLOAD_BYTES).unwrap_err(), ChunkError::EmptyPayload);
        // A chunk running past the declared total.
        let over = pb::Chunk { total_len: 50, ..good.clone() };
        let mut asm = Assembler::new(&over, MAX_PAYLOAD_BYTES).unwrap();
        assert_eq!(asm.push(&over), Err(ChunkError::Overrun { total: 50 }));
        let mut asm = Assembler::new(&good, MAX_PAYLOAD_BYTES).unwrap();
        assert_eq!(asm.push(&pb::Chunk { data: Bytes::new(), ..good.clone() }), Err(ChunkError::EmptyChunk));
    }

    #[test]
    fn a_minimum_chunk_size_refuses_trickling_but_not_a_short_last_chunk() {
        let p = payload(2500);
        let cs = chunks(&p, 1000);
        let mut asm = Assembler::new(&cs[0], MAX_PAYLOAD_BYTES).unwrap().with_min_chunk(1000);
        for c in &cs {
            asm.push(c).unwrap();
        }
        assert_eq!(asm.finish().unwrap(), p.to_vec());
        let small = chunks(&p, 999);
        let mut asm = Assembler::new(&small[0], MAX_PAYLOAD_BYTES).unwrap().with_min_chunk(1000);
        assert_eq!(asm.push(&small[0]), Err(ChunkError::SmallChunk { got: 999, min: 1000 }));
    }

    proptest::proptest! {
        /// Whatever chunks arrive (any digest, lengths, offsets and data, in any order), the
        /// assembler returns the payload or a typed error and never panics; it returns a
        /// payload only if its bytes hash to the declared digest.
        #[test]
        fn arbitrary_chunks_never_panic_and_never_pass_unchecked(
            parts in proptest::collection::vec(
                (proptest::collection::vec(proptest::prelude::any::<u8>(), 0..34), 0u64..64, 0u64..64, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)),
                1..6,
            )
        ) {
            let chunks: Vec<pb::Chunk> = parts
                .into_iter()
                .map(|(sha256, total_len, offset, data)| pb::Chunk { sha256, total_len, offset, data: Bytes::from(data) })
                .collect();
            let declared = chunks[0].sha256.clone();
            if let Ok(p) = collect(chunks.clone(), 64) {
                proptest::prop_assert_eq!(sha256(&p).to_vec(), declared);
            }
            let mut inbox = ModelInbox::new();
            for c in &chunks {
                let _ = inbox.push(c);
            }
        }
    }

    fn train_task(model: pb::Model) -> pb::Task {
        pb::Task {
            job_id: "j".into(),
            task_id: 1,
            kind: Some(pb::task::Kind::Train(pb::TrainTask { round: 1, model: Some(model), standardization: None, secagg: None })),
        }
    }

    #[test]
    fn the_inbox_fills_a_task_with_the_model_it_names() {
        let values: Vec<f32> = (0..3000).map(|i| i as f32 * 0.25 - 7.0).collect();
        let p = model_payload(&values);
        let digest = sha256(&p);
        let mut inbox = ModelInbox::new();
        let cs: Vec<_> = split(&p, digest, 1000).collect();
        for c in &cs[..cs.len() - 1] {
            assert_eq!(inbox.push(c), Ok(ModelProgress::Pending));
        }
        assert_eq!(inbox.push(&cs[cs.len() - 1]), Ok(ModelProgress::Complete(digest, 12_000)));
        let named = pb::Model { layout_digest: "l".into(), values: vec![], values_sha256: digest.to_vec() };
        let task = inbox.resolve(train_task(named.clone())).unwrap();
        let Some(pb::task::Kind::Train(t)) = task.kind else { panic!("not a train task") };
        let m = t.model.unwrap();
        assert_eq!(m.values, values);
        assert!(m.values_sha256.is_empty());
        // The same model again (no second transfer), and an inline model passes through.
        assert!(inbox.resolve(train_task(named)).is_ok());
        let inline = pb::Model { layout_digest: "l".into(), values: vec![1.0], values_sha256: vec![] };
        assert_eq!(inbox.resolve(train_task(inline.clone())).unwrap(), train_task(inline));
    }

    #[test]
    fn the_inbox_refuses_a_missing_partial_or_other_model() {
        let p = model_payload(&[1.0; 1000]);
        let digest = sha256(&p);
        let named = pb::Model { layout_digest: "l".into(), values: vec![], values_sha256: digest.to_vec() };
        let mut inbox = ModelInbox::new();
        assert!(inbox.resolve(train_task(named.clone())).is_err(), "nothing received");
        let cs: Vec<_> = split(&p, digest, 1000).collect();
        inbox.push(&cs[0]).unwrap();
        assert!(inbox.resolve(train_task(named.clone())).is_err(), "only part received");
        for c in &cs[1..] {
            inbox.push(c).unwrap();
        }
        let other = pb::Model { values_sha256: vec![9; 32], ..named.clone() };
        assert!(inbox.resolve(train_task(other)).is_err(), "another digest");
        let both = pb::Model { values: vec![1.0], ..named.clone() };
        assert!(inbox.resolve(train_task(both)).is_err(), "values and a reference");
        // A chunk out of order drops the partial model; a fresh model starts over.
        let mut inbox = ModelInbox::new();
        assert!(inbox.push(&cs[1]).is_err());
        inbox.push(&cs[0]).unwrap();
        assert!(inbox.push(&cs[2]).is_err());
        assert!(inbox.resolve(train_task(named)).is_err());
    }
}
