//! A site's side of one round, as a state machine:
//!
//! ```text
//! Client::new ──AdvertiseKeys──▶ share_keys(all keys) ──EncryptedShare×k──▶
//!   masked_input(shares for me, input) ──MaskedInput──▶ unmask(request) ──UnmaskResponse──▶ done
//! ```
//!
//! Each call checks everything it receives before it changes anything: on error the client is
//! as it was (and the caller may simply stop: a site that stops is a dropout).

use std::collections::{BTreeMap, BTreeSet};

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::crypto::{IdentityKey, SIGNATURE_LEN, X25519Secret, verify_ed25519};
use crate::derive::{commitment, open_shares, pairwise_seed, seal_shares};
use crate::error::{SecAggError, Stage};
use crate::messages::{
    AdvertiseKeys, EncryptedShare, MaskedInput, RevealedShare, ShareKind, UnmaskRequest,
    UnmaskResponse,
};
use crate::prg::{self, Accumulator, MaskPrg, SignedMask};
use crate::setup::RoundSetup;
use crate::shamir::{self, Share};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientStage {
    AwaitingKeys,
    AwaitingShares,
    AwaitingUnmask,
    Done,
}

/// The shares a site holds for one neighbour.
struct Held {
    seed: Share,
    key: Share,
}

/// One site's state for one round. Secrets are zeroized when dropped, and the site's own
/// secrets are dropped as soon as its masked input is computed.
pub struct Client {
    setup: RoundSetup,
    digest: [u8; 32],
    me: u32,
    neighbours: Vec<u32>,
    advertised: AdvertiseKeys,
    mask_secret: Option<X25519Secret>,
    share_secret: X25519Secret,
    self_seed: Option<Zeroizing<[u8; 32]>>,
    /// Random polynomial coefficients for the two Shamir splits, drawn in `new`.
    coefficients: Option<[Zeroizing<Vec<u64>>; 2]>,
    /// Neighbours whose signed keys arrived (N1).
    live: BTreeMap<u32, AdvertiseKeys>,
    /// X25519 agreements of the share-encryption keys with each live neighbour.
    share_agreed: BTreeMap<u32, Zeroizing<[u8; 32]>>,
    /// Neighbours whose shares arrived (R), with those shares.
    held: BTreeMap<u32, Held>,
    stage: ClientStage,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("me", &self.me)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

/// Verifies one advertised key set against the setup.
pub(crate) fn verify_keys(
    setup: &RoundSetup,
    digest: &[u8; 32],
    k: &AdvertiseKeys,
) -> Result<(), SecAggError> {
    let site = setup
        .sites
        .get(k.index as usize)
        .ok_or(SecAggError::UnknownSite(k.index))?;
    if k.signature.is_empty() {
        return Err(SecAggError::Unsigned(k.index));
    }
    if k.signature.len() != SIGNATURE_LEN
        || !verify_ed25519(
            &site.identity_public_key,
            &k.signed_bytes(digest),
            &k.signature,
        )
    {
        return Err(SecAggError::BadSignature(k.index));
    }
    Ok(())
}

impl Client {
    /// Starts site `me`'s part of the round: checks the setup (including that `identity` is
    /// entry `me`), draws fresh X25519 key pairs and a self-mask seed from `rng`, and returns
    /// the signed keys to send to the coordinator.
    pub fn new(
        setup: &RoundSetup,
        me: u32,
        identity: &IdentityKey,
        rng: &mut dyn CryptoRng,
    ) -> Result<(Client, AdvertiseKeys), SecAggError> {
        setup.validate()?;
        let entry = setup
            .sites
            .get(me as usize)
            .ok_or(SecAggError::UnknownSite(me))?;
        if entry.identity_public_key != identity.public_key() {
            return Err(SecAggError::IdentityMismatch(me));
        }
        let digest = setup.digest();
        let mask_secret = X25519Secret::generate(rng);
        let share_secret = X25519Secret::generate(rng);
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        let t = setup.params.threshold;
        let coefficients = Some([
            shamir::random_coefficients(t, rng),
            shamir::random_coefficients(t, rng),
        ]);
        let mut keys = AdvertiseKeys {
            index: me,
            mask_public_key: mask_secret.public_key(),
            share_public_key: share_secret.public_key(),
            self_mask_commitment: commitment(&digest, me, &seed),
            signature: Vec::new(),
        };
        keys.signature = identity.sign(&keys.signed_bytes(&digest));
        let client = Client {
            neighbours: setup.params.graph.neighbours(setup.n(), me),
            setup: setup.clone(),
            digest,
            me,
            advertised: keys.clone(),
            mask_secret: Some(mask_secret),
            share_secret,
            self_seed: Some(seed),
            coefficients,
            live: BTreeMap::new(),
            share_agreed: BTreeMap::new(),
            held: BTreeMap::new(),
            stage: ClientStage::AwaitingKeys,
        };
        Ok((client, keys))
    }

    /// This site's index.
    pub fn index(&self) -> u32 {
        self.me
    }

    /// This site's neighbours in the round's graph.
    pub fn neighbours(&self) -> &[u32] {
        &self.neighbours
    }

    fn stage_error(&self, what: &'static str) -> SecAggError {
        let stage = match self.stage {
            ClientStage::AwaitingKeys => Stage::AdvertiseKeys,
            ClientStage::AwaitingShares => Stage::ShareKeys,
            ClientStage::AwaitingUnmask => Stage::MaskedInput,
            ClientStage::Done => Stage::Over,
        };
        SecAggError::WrongStage { stage, what }
    }

    /// Step 2. Takes the keys the coordinator broadcast, verifies each neighbour's signature
    /// (refusing unsigned, badly signed, duplicated or altered keys), and returns the
    /// encrypted Shamir shares of this site's self-mask seed and mask secret key, one for
    /// each neighbour that advertised keys.
    pub fn share_keys(
        &mut self,
        all_keys: &[AdvertiseKeys],
    ) -> Result<Vec<EncryptedShare>, SecAggError> {
        if self.stage != ClientStage::AwaitingKeys {
            return Err(self.stage_error("share_keys"));
        }
        let n = self.setup.n();
        let mut seen = BTreeSet::new();
        let mut mine = false;
        let mut live = BTreeMap::new();
        for k in all_keys {
            if k.index as usize >= n {
                return Err(SecAggError::UnknownSite(k.index));
            }
            if !seen.insert(k.index) {
                return Err(SecAggError::Duplicate(k.index));
            }
            if k.index == self.me {
                if *k != self.advertised {
                    return Err(SecAggError::KeyMismatch(self.me));
                }
                mine = true;
            } else if self.neighbours.binary_search(&k.index).is_ok() {
                verify_keys(&self.setup, &self.digest, k)?;
                if k.mask_public_key == k.share_public_key {
                    return Err(SecAggError::KeyMismatch(k.index));
                }
                live.insert(k.index, k.clone());
            }
        }
        if !mine {
            return Err(SecAggError::KeyMismatch(self.me));
        }
        let t = self.setup.params.threshold;
        if live.len() < t {
            return Err(SecAggError::TooManyDropouts {
                stage: Stage::ShareKeys,
                detail: format!(
                    "site {} has {} live neighbours, threshold {t}",
                    self.me,
                    live.len()
                ),
            });
        }
        // Agree first, so that a weak key refuses the whole step before anything is produced.
        let mut agreed = Vec::with_capacity(live.len());
        for (&j, k) in &live {
            let s = self
                .share_secret
                .agree(&k.share_public_key)
                .ok_or(SecAggError::WeakKey(j))?;
            agreed.push((j, s));
        }
        let (Some(seed), Some(mask_secret), Some([c_seed, c_key])) =
            (&self.self_seed, &self.mask_secret, &self.coefficients)
        else {
            return Err(self.stage_error("share_keys"));
        };
        let xs: Vec<u64> = live.keys().map(|&j| j as u64 + 1).collect();
        let seed_shares = shamir::split_with(seed, t, &xs, c_seed);
        let key_shares = shamir::split_with(&mask_secret.to_bytes(), t, &xs, c_key);
        let out = agreed
            .iter()
            .zip(seed_shares.iter().zip(&key_shares))
            .map(|((j, shared), (s, k))| EncryptedShare {
                from: self.me,
                to: *j,
                ciphertext: seal_shares(
                    &self.setup.round_id,
                    &self.digest,
                    self.me,
                    *j,
                    shared,
                    s,
                    k,
                ),
            })
            .collect();
        self.live = live;
        self.share_agreed = agreed.into_iter().collect();
        self.coefficients = None;
        self.stage = ClientStage::AwaitingShares;
        Ok(out)
    }

    /// Step 3. Takes the shares the coordinator forwarded to this site and the input (already
    /// in Z_{2^bits}); returns input + self mask + pairwise masks with every neighbour whose
    /// shares arrived. Refuses shares that are misaddressed, duplicated or fail
    /// authentication, an input of the wrong length or out of range, and fewer than t
    /// neighbours.
    pub fn masked_input(
        &mut self,
        received: &[EncryptedShare],
        input: &[u64],
    ) -> Result<MaskedInput, SecAggError> {
        let masks = self.masks(received, input)?;
        let mut acc = Accumulator::from_values(self.setup.params.bits, input);
        acc.apply_masks(&masks);
        Ok(MaskedInput {
            from: self.me,
            bits: self.setup.params.bits,
            values: acc.into_values(),
        })
    }

    /// [`Client::masked_input`] straight to its wire encoding (`MaskedInput::to_bytes`),
    /// without the intermediate `Vec<u64>`.
    pub fn masked_input_bytes(
        &mut self,
        received: &[EncryptedShare],
        input: &[u64],
    ) -> Result<Vec<u8>, SecAggError> {
        let masks = self.masks(received, input)?;
        let p = &self.setup.params;
        let mut out = MaskedInput::header(self.me, p.bits, p.dim);
        // Byte-aligned widths are masked and packed chunk by chunk, in one pass.
        if !prg::mask_into_packed(p.bits, input, &masks, &mut out) {
            let mut acc = Accumulator::from_values(p.bits, input);
            acc.apply_masks(&masks);
            acc.write_packed(&mut out);
        }
        Ok(out)
    }

    /// Checks step 3's inputs and returns the masks to add (self mask and pairwise masks);
    /// on success the site's own secrets are dropped and the stage advances.
    fn masks(
        &mut self,
        received: &[EncryptedShare],
        input: &[u64],
    ) -> Result<Vec<SignedMask>, SecAggError> {
        if self.stage != ClientStage::AwaitingShares {
            return Err(self.stage_error("masked_input"));
        }
        let p = self.setup.params.clone();
        if input.len() != p.dim {
            return Err(SecAggError::WrongLength {
                expected: p.dim,
                got: input.len(),
            });
        }
        if p.bits < 64
            && let Some((index, &value)) =
                input.iter().enumerate().find(|(_, v)| **v >> p.bits != 0)
        {
            return Err(SecAggError::OutOfRange {
                index,
                value,
                bits: p.bits,
            });
        }
        let mut held = BTreeMap::new();
        for s in received {
            if s.to != self.me || !self.live.contains_key(&s.from) {
                return Err(SecAggError::Misaddressed {
                    from: s.from,
                    to: s.to,
                });
            }
            if held.contains_key(&s.from) {
                return Err(SecAggError::Duplicate(s.from));
            }
            let auth = SecAggError::ShareAuthFailed {
                from: s.from,
                to: s.to,
            };
            let shared = self
                .share_agreed
                .get(&s.from)
                .ok_or(SecAggError::WeakKey(s.from))?;
            let (seed, key) = open_shares(
                &self.setup.round_id,
                &self.digest,
                s.from,
                self.me,
                shared,
                &s.ciphertext,
            )
            .ok_or(auth)?;
            held.insert(s.from, Held { seed, key });
        }
        let t = p.threshold;
        if held.len() < t {
            return Err(SecAggError::TooManyDropouts {
                stage: Stage::MaskedInput,
                detail: format!(
                    "site {} received shares from {} neighbours, threshold {t}",
                    self.me,
                    held.len()
                ),
            });
        }
        let (Some(seed), Some(mask_secret)) = (&self.self_seed, &self.mask_secret) else {
            return Err(self.stage_error("masked_input"));
        };
        let mut masks = Vec::with_capacity(held.len() + 1);
        masks.push(SignedMask {
            prg: MaskPrg::new(seed),
            negate: false,
        });
        for &j in held.keys() {
            let shared = mask_secret
                .agree(&self.live[&j].mask_public_key)
                .ok_or(SecAggError::WeakKey(j))?;
            let s = pairwise_seed(&self.setup.round_id, &self.digest, self.me, j, &shared);
            // The smaller index adds the pairwise mask, the larger subtracts it.
            masks.push(SignedMask {
                prg: MaskPrg::new(&s),
                negate: self.me > j,
            });
        }
        // This site's own secrets are no longer needed: drop (and so zeroize) them.
        self.self_seed = None;
        self.mask_secret = None;
        self.held = held;
        self.share_agreed.clear();
        self.stage = ClientStage::AwaitingUnmask;
        Ok(masks)
    }

    /// Step 4. Reveals, for each neighbour the request names, the self-mask seed share (if it
    /// survived) or the mask-key share (if it dropped). Refuses a request addressed to another
    /// site, naming a site in both lists, naming a site this site holds no shares for, naming
    /// fewer than t survivors, or coming a second time.
    pub fn unmask(&mut self, request: &UnmaskRequest) -> Result<UnmaskResponse, SecAggError> {
        match self.stage {
            ClientStage::AwaitingUnmask => {}
            ClientStage::Done => return Err(SecAggError::AlreadyAnswered),
            _ => return Err(self.stage_error("unmask")),
        }
        if request.to != self.me {
            return Err(SecAggError::BadRequest(format!(
                "addressed to site {}, this is site {}",
                request.to, self.me
            )));
        }
        for (name, list) in [
            ("survivors", &request.survivors),
            ("dropped", &request.dropped),
        ] {
            if !list.windows(2).all(|w| w[0] < w[1]) {
                return Err(SecAggError::BadRequest(format!(
                    "{name} list is not strictly increasing"
                )));
            }
        }
        if let Some(&both) = request
            .survivors
            .iter()
            .find(|s| request.dropped.binary_search(s).is_ok())
        {
            return Err(SecAggError::BothShares(both));
        }
        if let Some(&x) = request
            .survivors
            .iter()
            .chain(&request.dropped)
            .find(|x| !self.held.contains_key(x))
        {
            return Err(SecAggError::NotANeighbour(x));
        }
        let t = self.setup.params.threshold;
        if request.survivors.len() < t {
            return Err(SecAggError::TooManyDropouts {
                stage: Stage::Unmask,
                detail: format!(
                    "request names {} surviving neighbours, threshold {t}",
                    request.survivors.len()
                ),
            });
        }
        let mut shares = Vec::with_capacity(request.survivors.len() + request.dropped.len());
        for &s in &request.survivors {
            shares.push(RevealedShare {
                about: s,
                kind: ShareKind::SelfMaskSeed,
                share: self.held[&s].seed.y,
            });
        }
        for &d in &request.dropped {
            shares.push(RevealedShare {
                about: d,
                kind: ShareKind::MaskKey,
                share: self.held[&d].key.y,
            });
        }
        self.held.clear();
        self.stage = ClientStage::Done;
        Ok(UnmaskResponse {
            from: self.me,
            shares,
        })
    }
}
