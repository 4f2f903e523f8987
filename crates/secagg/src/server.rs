//! The coordinator's side of one round, as a state machine:
//!
//! ```text
//! add_keys* → keys_done → add_shares* → shares_done → add_masked* → masked_done
//!           → add_unmask* → finish
//! ```
//!
//! A site that never calls in at a stage is a dropout from then on. Every `add_*` checks the
//! sender and the message and changes nothing on error. Every `*_done` checks that the round
//! can still finish with the sites left; if not, the round aborts ([`SecAggError::TooManyDropouts`])
//! and every later call answers [`SecAggError::Aborted`]. Masked inputs are folded into one
//! running sum as they arrive: memory is O(d + n k), never O(n d).

use std::collections::{BTreeMap, BTreeSet};

use crate::client::verify_keys;
use crate::crypto::X25519Secret;
use crate::derive::{SEALED_LEN, commitment, pairwise_seed};
use crate::error::{SecAggError, Stage};
use crate::messages::{
    AdvertiseKeys, EncryptedShare, MaskedInput, ShareKind, UnmaskRequest, UnmaskResponse,
};
use crate::prg::{Accumulator, MaskPrg, SignedMask};
use crate::setup::RoundSetup;
use crate::shamir::{self, Share};

/// The coordinator's state for one round.
pub struct Server {
    setup: RoundSetup,
    digest: [u8; 32],
    adjacency: Vec<Vec<u32>>,
    stage: Stage,
    aborted: bool,
    keys: Vec<Option<AdvertiseKeys>>,
    shares_in: BTreeMap<u32, Vec<EncryptedShare>>,
    /// Sites that sent shares (U2).
    u2: BTreeSet<u32>,
    sum: Option<Accumulator>,
    /// Sites whose masked input is in the sum (U3).
    u3: BTreeSet<u32>,
    requests: BTreeMap<u32, UnmaskRequest>,
    responded: BTreeSet<u32>,
    seed_shares: BTreeMap<u32, Vec<Share>>,
    key_shares: BTreeMap<u32, Vec<Share>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("stage", &self.stage)
            .field("aborted", &self.aborted)
            .finish_non_exhaustive()
    }
}

impl Server {
    pub fn new(setup: &RoundSetup) -> Result<Server, SecAggError> {
        setup.validate()?;
        let n = setup.n();
        Ok(Server {
            digest: setup.digest(),
            adjacency: setup.params.graph.adjacency(n),
            setup: setup.clone(),
            stage: Stage::AdvertiseKeys,
            aborted: false,
            keys: vec![None; n],
            shares_in: BTreeMap::new(),
            u2: BTreeSet::new(),
            sum: None,
            u3: BTreeSet::new(),
            requests: BTreeMap::new(),
            responded: BTreeSet::new(),
            seed_shares: BTreeMap::new(),
            key_shares: BTreeMap::new(),
        })
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The sites whose inputs are in the sum (known after [`Server::masked_done`]).
    pub fn survivors(&self) -> Vec<u32> {
        self.u3.iter().copied().collect()
    }

    fn expect(&self, stage: Stage, what: &'static str) -> Result<(), SecAggError> {
        if self.aborted {
            return Err(SecAggError::Aborted);
        }
        if self.stage != stage {
            return Err(SecAggError::WrongStage {
                stage: self.stage,
                what,
            });
        }
        Ok(())
    }

    fn abort(&mut self, stage: Stage, detail: String) -> SecAggError {
        self.aborted = true;
        self.stage = Stage::Over;
        self.sum = None;
        self.shares_in.clear();
        self.seed_shares.clear();
        self.key_shares.clear();
        SecAggError::TooManyDropouts { stage, detail }
    }

    /// Sites in `alive` with fewer than t neighbours in `alive`.
    fn short_of_neighbours(
        &self,
        alive: &dyn Fn(u32) -> bool,
        who: impl Iterator<Item = u32>,
    ) -> Option<(u32, usize)> {
        let t = self.setup.params.threshold;
        who.map(|i| {
            (
                i,
                self.adjacency[i as usize]
                    .iter()
                    .filter(|&&j| alive(j))
                    .count(),
            )
        })
        .find(|&(_, c)| c < t)
    }

    /// Step 1: a site's signed keys.
    pub fn add_keys(&mut self, keys: AdvertiseKeys) -> Result<(), SecAggError> {
        self.expect(Stage::AdvertiseKeys, "add_keys")?;
        let i = keys.index as usize;
        if i >= self.keys.len() {
            return Err(SecAggError::UnknownSite(keys.index));
        }
        if self.keys[i].is_some() {
            return Err(SecAggError::Duplicate(keys.index));
        }
        verify_keys(&self.setup, &self.digest, &keys)?;
        self.keys[i] = Some(keys);
        Ok(())
    }

    /// Ends step 1: the keys to broadcast to every site that advertised.
    pub fn keys_done(&mut self) -> Result<Vec<AdvertiseKeys>, SecAggError> {
        self.expect(Stage::AdvertiseKeys, "keys_done")?;
        let u1: Vec<u32> = (0..self.keys.len() as u32)
            .filter(|&i| self.keys[i as usize].is_some())
            .collect();
        if let Some((i, c)) =
            self.short_of_neighbours(&|j| self.keys[j as usize].is_some(), u1.iter().copied())
        {
            let t = self.setup.params.threshold;
            return Err(self.abort(
                Stage::AdvertiseKeys,
                format!("site {i} has {c} live neighbours, threshold {t}"),
            ));
        }
        self.stage = Stage::ShareKeys;
        Ok(self.keys.iter().flatten().cloned().collect())
    }

    fn in_u1(&self, i: u32) -> bool {
        self.keys.get(i as usize).is_some_and(|k| k.is_some())
    }

    /// Step 2: the encrypted shares a site sends, one for each of its live neighbours.
    pub fn add_shares(
        &mut self,
        from: u32,
        shares: Vec<EncryptedShare>,
    ) -> Result<(), SecAggError> {
        self.expect(Stage::ShareKeys, "add_shares")?;
        if !self.in_u1(from) {
            return Err(SecAggError::UnknownSite(from));
        }
        if self.shares_in.contains_key(&from) {
            return Err(SecAggError::Duplicate(from));
        }
        let expected: BTreeSet<u32> = self.adjacency[from as usize]
            .iter()
            .copied()
            .filter(|&j| self.in_u1(j))
            .collect();
        if shares.len() != expected.len() {
            return Err(SecAggError::WrongShareCount {
                from,
                expected: expected.len(),
                got: shares.len(),
            });
        }
        let mut seen = BTreeSet::new();
        for s in &shares {
            if s.from != from || !expected.contains(&s.to) {
                return Err(SecAggError::Misaddressed {
                    from: s.from,
                    to: s.to,
                });
            }
            if !seen.insert(s.to) {
                return Err(SecAggError::Duplicate(s.to));
            }
            if s.ciphertext.len() != SEALED_LEN {
                return Err(SecAggError::ShareAuthFailed {
                    from: s.from,
                    to: s.to,
                });
            }
        }
        self.shares_in.insert(from, shares);
        Ok(())
    }

    /// Ends step 2: for each site that sent shares, the shares addressed to it by the others
    /// that did.
    pub fn shares_done(&mut self) -> Result<BTreeMap<u32, Vec<EncryptedShare>>, SecAggError> {
        self.expect(Stage::ShareKeys, "shares_done")?;
        let u2: BTreeSet<u32> = self.shares_in.keys().copied().collect();
        if let Some((i, c)) = self.short_of_neighbours(&|j| u2.contains(&j), u2.iter().copied()) {
            let t = self.setup.params.threshold;
            return Err(self.abort(
                Stage::ShareKeys,
                format!("site {i} has {c} neighbours left after sharing, threshold {t}"),
            ));
        }
        let mut out: BTreeMap<u32, Vec<EncryptedShare>> =
            u2.iter().map(|&i| (i, Vec::new())).collect();
        for (_, shares) in std::mem::take(&mut self.shares_in) {
            for s in shares {
                if let Some(v) = out.get_mut(&s.to) {
                    v.push(s);
                }
            }
        }
        self.u2 = u2;
        self.sum = Some(Accumulator::zeros(
            self.setup.params.bits,
            self.setup.params.dim,
        ));
        self.stage = Stage::MaskedInput;
        Ok(out)
    }

    fn check_masked_sender(&self, from: u32, bits: u32, dim: usize) -> Result<(), SecAggError> {
        self.expect(Stage::MaskedInput, "add_masked")?;
        let p = &self.setup.params;
        if !self.u2.contains(&from) {
            return Err(SecAggError::UnknownSite(from));
        }
        if self.u3.contains(&from) {
            return Err(SecAggError::Duplicate(from));
        }
        if bits != p.bits {
            return Err(SecAggError::OutOfRange {
                index: 0,
                value: bits as u64,
                bits: p.bits,
            });
        }
        if dim != p.dim {
            return Err(SecAggError::WrongLength {
                expected: p.dim,
                got: dim,
            });
        }
        Ok(())
    }

    /// Step 3: a masked input, added into the running sum at once.
    pub fn add_masked(&mut self, m: MaskedInput) -> Result<(), SecAggError> {
        self.check_masked_sender(m.from, m.bits, m.values.len())?;
        let bits = self.setup.params.bits;
        if bits < 64
            && let Some((index, &value)) =
                m.values.iter().enumerate().find(|(_, v)| **v >> bits != 0)
        {
            return Err(SecAggError::OutOfRange { index, value, bits });
        }
        if let Some(sum) = self.sum.as_mut() {
            sum.add_values(&m.values);
        }
        self.u3.insert(m.from);
        Ok(())
    }

    /// Step 3 straight from the wire: decodes a `MaskedInput` encoding into the running sum
    /// without materialising the vector (what a streaming coordinator should call).
    pub fn add_masked_bytes(&mut self, bytes: &[u8]) -> Result<(), SecAggError> {
        let (from, bits, dim, body) = MaskedInput::parse(bytes)?;
        self.check_masked_sender(from, bits, dim)?;
        if let Some(sum) = self.sum.as_mut() {
            sum.add_packed(body, bits);
        }
        self.u3.insert(from);
        Ok(())
    }

    /// Dropped sites (sent shares, no masked input) that some survivor masked with.
    fn dropped_with_partners(&self) -> Vec<u32> {
        self.u2
            .iter()
            .copied()
            .filter(|w| {
                !self.u3.contains(w)
                    && self.adjacency[*w as usize]
                        .iter()
                        .any(|v| self.u3.contains(v))
            })
            .collect()
    }

    /// Ends step 3: one unmask request per survivor, naming which of its neighbours survived
    /// and which dropped.
    pub fn masked_done(&mut self) -> Result<BTreeMap<u32, UnmaskRequest>, SecAggError> {
        self.expect(Stage::MaskedInput, "masked_done")?;
        let t = self.setup.params.threshold;
        if self.u3.len() < t + 1 {
            let d = format!("{} masked inputs, at least {} needed", self.u3.len(), t + 1);
            return Err(self.abort(Stage::MaskedInput, d));
        }
        let u3 = self.u3.clone();
        let needy = u3.iter().copied().chain(self.dropped_with_partners());
        if let Some((i, c)) = self.short_of_neighbours(&|j| u3.contains(&j), needy) {
            return Err(self.abort(
                Stage::MaskedInput,
                format!("site {i} has {c} surviving neighbours, threshold {t}"),
            ));
        }
        let mut out = BTreeMap::new();
        for &v in &u3 {
            let (survivors, dropped) = self.adjacency[v as usize]
                .iter()
                .copied()
                .filter(|j| self.u2.contains(j))
                .partition(|j| u3.contains(j));
            out.insert(
                v,
                UnmaskRequest {
                    to: v,
                    survivors,
                    dropped,
                },
            );
        }
        self.requests = out.clone();
        self.stage = Stage::Unmask;
        Ok(out)
    }

    /// Step 4: a survivor's revealed shares, which must answer its request exactly.
    pub fn add_unmask(&mut self, r: UnmaskResponse) -> Result<(), SecAggError> {
        self.expect(Stage::Unmask, "add_unmask")?;
        let req = self
            .requests
            .get(&r.from)
            .ok_or(SecAggError::UnknownSite(r.from))?;
        if self.responded.contains(&r.from) {
            return Err(SecAggError::Duplicate(r.from));
        }
        if r.shares.len() != req.survivors.len() + req.dropped.len() {
            return Err(SecAggError::BadRequest(format!(
                "site {} answered {} shares for a request of {}",
                r.from,
                r.shares.len(),
                req.survivors.len() + req.dropped.len()
            )));
        }
        let mut seen = BTreeSet::new();
        for s in &r.shares {
            let asked = match s.kind {
                ShareKind::SelfMaskSeed => req.survivors.binary_search(&s.about).is_ok(),
                ShareKind::MaskKey => req.dropped.binary_search(&s.about).is_ok(),
            };
            if !asked || !seen.insert(s.about) || s.share.iter().any(|&y| y >= shamir::P) {
                return Err(SecAggError::UnrequestedShare {
                    from: r.from,
                    about: s.about,
                    kind: s.kind,
                });
            }
        }
        let x = r.from as u64 + 1;
        for s in &r.shares {
            let share = Share { x, y: s.share };
            match s.kind {
                ShareKind::SelfMaskSeed => self.seed_shares.entry(s.about).or_default().push(share),
                ShareKind::MaskKey => self.key_shares.entry(s.about).or_default().push(share),
            }
        }
        self.responded.insert(r.from);
        Ok(())
    }

    /// Ends the round: reconstructs the survivors' self-mask seeds and the dropped sites' mask
    /// keys, removes every mask, and returns the sum mod 2^bits of the survivors' inputs
    /// ([`Server::survivors`]). If any secret cannot be reconstructed the round aborts and the
    /// sum is discarded. Runs on the calling thread; see [`Server::finish_threads`].
    pub fn finish(&mut self) -> Result<Vec<u64>, SecAggError> {
        self.finish_threads(1)
    }

    /// [`Server::finish`] on up to `threads` scoped threads (the calling thread included; 0
    /// counts as 1). First the secrets: the survivors' seeds and the dropped sites' keys are
    /// reconstructed and checked, and the dropped sites' pairwise seeds agreed, the sites
    /// dealt to the threads in turn; then the masks are regenerated with each thread over a
    /// disjoint range of the d coordinates with its own chunk buffer, so memory stays
    /// O(d + n k). The result, and the error if the round aborts (that of the first failing
    /// site in the sequential order), are the same for every `threads`. This is the only
    /// place the crate starts threads, and only when the caller asks for more than one.
    pub fn finish_threads(&mut self, threads: usize) -> Result<Vec<u64>, SecAggError> {
        self.expect(Stage::Unmask, "finish")?;
        let jobs: Vec<Secret> = self
            .u3
            .iter()
            .map(|&w| Secret::SelfMask(w))
            .chain(
                self.dropped_with_partners()
                    .into_iter()
                    .map(Secret::MaskKey),
            )
            .collect();
        let workers = threads.clamp(1, jobs.len().max(1));
        let mut results: Vec<Option<Result<Vec<SignedMask>, Failure>>> =
            (0..jobs.len()).map(|_| None).collect();
        if workers == 1 {
            for (r, &job) in results.iter_mut().zip(&jobs) {
                let m = self.masks_of(job);
                let failed = m.is_err();
                *r = Some(m);
                if failed {
                    break;
                }
            }
        } else {
            let this = &*self;
            let jobs = &jobs;
            // Thread k takes jobs k, k + workers, ...: the dropped sites' keys, each costing
            // one agreement per surviving neighbour, come last and are spread evenly.
            let deal = move |k: usize| -> Vec<(usize, Result<Vec<SignedMask>, Failure>)> {
                (k..jobs.len())
                    .step_by(workers)
                    .map(|i| (i, this.masks_of(jobs[i])))
                    .collect()
            };
            let done = std::thread::scope(|s| {
                let handles: Vec<_> = (1..workers).map(|k| s.spawn(move || deal(k))).collect();
                let mut done = deal(0);
                for h in handles {
                    match h.join() {
                        Ok(part) => done.extend(part),
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                }
                done
            });
            for (i, r) in done {
                results[i] = Some(r);
            }
        }
        let mut masks = Vec::new();
        for r in results.into_iter().flatten() {
            match r {
                Ok(m) => masks.extend(m),
                Err(Failure::Short(detail)) => return Err(self.abort(Stage::Unmask, detail)),
                Err(Failure::Bad(e)) => {
                    self.abort(Stage::Unmask, String::new());
                    return Err(e);
                }
            }
        }
        let Some(mut sum) = self.sum.take() else {
            return Err(SecAggError::Aborted);
        };
        sum.apply_masks_threads(&masks, threads);
        self.stage = Stage::Over;
        self.seed_shares.clear();
        self.key_shares.clear();
        Ok(sum.into_values())
    }

    /// The masks to remove for one secret: a survivor's self mask, or the pairwise masks of a
    /// dropped site with each surviving neighbour. Reads only.
    fn masks_of(&self, job: Secret) -> Result<Vec<SignedMask>, Failure> {
        let t = self.setup.params.threshold;
        let (round_id, digest) = (&self.setup.round_id, &self.digest);
        let (w, shares, what) = match job {
            Secret::SelfMask(w) => (w, self.seed_shares.get(&w), "self-mask shares of site"),
            Secret::MaskKey(w) => (w, self.key_shares.get(&w), "key shares of dropped site"),
        };
        let shares: Vec<&Share> = shares.map(|v| v.iter().collect()).unwrap_or_default();
        if shares.len() < t {
            return Err(Failure::Short(format!(
                "{} {what} {w} arrived, threshold {t}",
                shares.len()
            )));
        }
        let bad = || Failure::Bad(SecAggError::BadShares(w));
        let secret = shamir::reconstruct(&shares, t).ok_or_else(bad)?;
        let keys = self.keys[w as usize].as_ref();
        match job {
            Secret::SelfMask(_) => {
                if keys.map(|k| k.self_mask_commitment) != Some(commitment(digest, w, &secret)) {
                    return Err(bad());
                }
                Ok(vec![SignedMask {
                    prg: MaskPrg::new(&secret),
                    negate: true,
                }])
            }
            Secret::MaskKey(_) => {
                let secret = X25519Secret::from_bytes(*secret);
                if keys.map(|k| k.mask_public_key) != Some(secret.public_key()) {
                    return Err(bad());
                }
                let mut masks = Vec::new();
                for &v in &self.adjacency[w as usize] {
                    if !self.u3.contains(&v) {
                        continue;
                    }
                    let peer = self.keys[v as usize]
                        .as_ref()
                        .map(|k| k.mask_public_key)
                        .unwrap_or([0; 32]);
                    let shared = secret
                        .agree(&peer)
                        .ok_or(Failure::Bad(SecAggError::WeakKey(v)))?;
                    let s = pairwise_seed(round_id, digest, v, w, &shared);
                    // v added the mask if v < w and subtracted it otherwise; undo that.
                    masks.push(SignedMask {
                        prg: MaskPrg::new(&s),
                        negate: v < w,
                    });
                }
                Ok(masks)
            }
        }
    }
}

/// A secret the coordinator reconstructs at the end of a round.
#[derive(Debug, Clone, Copy)]
enum Secret {
    /// A survivor's self-mask seed.
    SelfMask(u32),
    /// A dropped site's mask secret key.
    MaskKey(u32),
}

/// Why a secret could not be used: too few shares (the round aborts for dropouts) or shares or
/// keys that do not check out.
enum Failure {
    Short(String),
    Bad(SecAggError),
}
