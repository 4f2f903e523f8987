//! Whole rounds: the unmasked sum equals the plain sum under tolerated dropouts at every
//! stage, rounds beyond the tolerance abort, and every refusal the issue lists.

mod common;

use std::collections::BTreeSet;

use common::*;
use fedcare_secagg::{
    Client, EncryptedShare, Graph, Params, RoundSetup, SecAggError, Server, Stage, UnmaskRequest,
};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

/// (n, degree k or None for complete, threshold) with 2t > degree.
fn shape() -> impl Strategy<Value = (usize, Option<u32>, usize)> {
    (2usize..12).prop_flat_map(|n| {
        let regular = if n >= 4 {
            (1u32..=((n as u32 - 2) / 2))
                .prop_map(|h| Some(2 * h))
                .boxed()
        } else {
            Just(None).boxed()
        };
        prop_oneof![Just(None), regular].prop_flat_map(move |k| {
            let deg = k.map_or(n - 1, |k| k as usize);
            (Just(n), Just(k), (deg / 2 + 1)..=deg)
        })
    })
}

/// Splits `sites` into the four stages' dropout sets, using `stages[i]` for the i-th site.
fn assign(sites: &[u32], stages: &[u8]) -> [BTreeSet<u32>; 4] {
    let mut d: [BTreeSet<u32>; 4] = Default::default();
    for (s, st) in sites.iter().zip(stages) {
        d[*st as usize % 4].insert(*s);
    }
    d
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Up to the tolerated number of dropouts, spread over the four stages: exact sum.
    #[test]
    fn unmasked_sum_equals_plain_sum(
        (n, k, t) in shape(),
        dim in 1usize..50,
        bits in prop::sample::select(vec![8u32, 16, 32, 64, 5, 33]),
        seed in any::<u64>(),
        pick in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        stages in prop::collection::vec(0u8..4, 12),
    ) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let round = make_round(n, dim, bits, k, t, seed, &mut rng);
        let tolerated = round.setup.params.tolerated_dropouts(n);
        let mut dropped: Vec<u32> = pick.iter().map(|ix| ix.index(n) as u32).collect::<BTreeSet<_>>().into_iter().collect();
        dropped.truncate(tolerated);
        let drops = assign(&dropped, &stages);
        let inputs = random_inputs(n, dim, bits, &mut rng);
        let out = run(&round, &inputs, &drops, &mut rng);
        prop_assert!(out.client_errors.is_empty(), "{:?}", out.client_errors);
        let sum = out.result.expect("round within tolerance must finish");
        let expected_survivors: BTreeSet<u32> =
            (0..n as u32).filter(|i| !drops[0].contains(i) && !drops[1].contains(i) && !drops[2].contains(i)).collect();
        prop_assert_eq!(&out.survivors, &expected_survivors);
        prop_assert_eq!(sum, plain_sum(&inputs, &expected_survivors, bits));
    }

    /// More dropouts than tolerated, all among one surviving site's neighbours: the round
    /// aborts and finish reveals nothing.
    #[test]
    fn too_many_dropouts_abort(
        (n, k, t) in shape(),
        dim in 1usize..20,
        seed in any::<u64>(),
        victim in any::<prop::sample::Index>(),
        stages in prop::collection::vec(0u8..4, 12),
    ) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let round = make_round(n, dim, 16, k, t, seed, &mut rng);
        let victim = victim.index(n) as u32;
        let nb = round.setup.params.graph.neighbours(n, victim);
        let too_many = round.setup.params.tolerated_dropouts(n) + 1;
        let dropped: Vec<u32> = nb.into_iter().take(too_many).collect();
        prop_assume!(dropped.len() == too_many);
        let drops = assign(&dropped, &stages);
        let inputs = random_inputs(n, dim, 16, &mut rng);
        let out = run(&round, &inputs, &drops, &mut rng);
        prop_assert!(out.result.is_err(), "a round beyond tolerance must abort");
        match out.result {
            Err(SecAggError::TooManyDropouts { .. }) => {}
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}

/// Runs the first two steps of a 5-site complete round; returns the setup, clients, keys and
/// the forwarded shares.
struct Staged {
    round: Round,
    clients: Vec<Client>,
    server: Server,
    keys: Vec<fedcare_secagg::AdvertiseKeys>,
    forwarded: std::collections::BTreeMap<u32, Vec<EncryptedShare>>,
}

fn staged(tag: u64) -> Staged {
    let mut rng = ChaCha20Rng::seed_from_u64(tag);
    let round = make_round(5, 8, 32, None, 3, tag, &mut rng);
    let mut server = Server::new(&round.setup).unwrap();
    let mut clients = Vec::new();
    for i in 0..5u32 {
        let (c, k) = Client::new(&round.setup, i, &round.identities[i as usize], &mut rng).unwrap();
        server.add_keys(k).unwrap();
        clients.push(c);
    }
    let keys = server.keys_done().unwrap();
    for (i, c) in clients.iter_mut().enumerate() {
        let s = c.share_keys(&keys).unwrap();
        server.add_shares(i as u32, s).unwrap();
    }
    let forwarded = server.shares_done().unwrap();
    Staged {
        round,
        clients,
        server,
        keys,
        forwarded,
    }
}

#[test]
fn unmask_refuses_both_shares_non_neighbours_and_a_second_answer() {
    let mut st = staged(1);
    let input = vec![1u64; 8];
    let m = st.clients[0]
        .masked_input(&st.forwarded[&0], &input)
        .unwrap();
    assert_ne!(m.values, input, "the masked input hides the input");
    let c = &mut st.clients[0];
    let both = UnmaskRequest {
        to: 0,
        survivors: vec![1, 2, 3],
        dropped: vec![3],
    };
    assert_eq!(c.unmask(&both), Err(SecAggError::BothShares(3)));
    let outsider = UnmaskRequest {
        to: 0,
        survivors: vec![1, 2, 7],
        dropped: vec![],
    };
    assert_eq!(c.unmask(&outsider), Err(SecAggError::NotANeighbour(7)));
    let itself = UnmaskRequest {
        to: 0,
        survivors: vec![0, 1, 2],
        dropped: vec![],
    };
    assert_eq!(c.unmask(&itself), Err(SecAggError::NotANeighbour(0)));
    let unsorted = UnmaskRequest {
        to: 0,
        survivors: vec![2, 1, 3],
        dropped: vec![],
    };
    assert!(matches!(
        c.unmask(&unsorted),
        Err(SecAggError::BadRequest(_))
    ));
    let other = UnmaskRequest {
        to: 1,
        survivors: vec![2, 3, 4],
        dropped: vec![],
    };
    assert!(matches!(c.unmask(&other), Err(SecAggError::BadRequest(_))));
    let few = UnmaskRequest {
        to: 0,
        survivors: vec![1, 2],
        dropped: vec![3, 4],
    };
    assert!(matches!(
        c.unmask(&few),
        Err(SecAggError::TooManyDropouts { .. })
    ));
    // Refusals changed nothing: a proper request is still answered, once.
    let ok = UnmaskRequest {
        to: 0,
        survivors: vec![1, 2, 3],
        dropped: vec![4],
    };
    let r = c.unmask(&ok).unwrap();
    assert_eq!(r.shares.len(), 4);
    assert_eq!(c.unmask(&ok), Err(SecAggError::AlreadyAnswered));
    let again = UnmaskRequest {
        to: 0,
        survivors: vec![1, 2, 3, 4],
        dropped: vec![],
    };
    assert_eq!(c.unmask(&again), Err(SecAggError::AlreadyAnswered));
}

#[test]
fn tampered_replayed_and_readdressed_shares_are_rejected() {
    let mut st = staged(2);
    let input = vec![5u64; 8];
    // Tampered: one bit of the ciphertext.
    let mut tampered = st.forwarded[&0].clone();
    tampered[1].ciphertext[3] ^= 0x10;
    let from = tampered[1].from;
    assert_eq!(
        st.clients[0].masked_input(&tampered, &input),
        Err(SecAggError::ShareAuthFailed { from, to: 0 })
    );
    // Re-addressed: a share for site 1 relabelled as for site 0 (sender 2 is a neighbour of both).
    let mut readdressed = st.forwarded[&0].clone();
    let for_1 = st.forwarded[&1]
        .iter()
        .find(|s| s.from == 2)
        .unwrap()
        .clone();
    let slot = readdressed.iter().position(|s| s.from == 2).unwrap();
    readdressed[slot] = EncryptedShare { to: 0, ..for_1 };
    assert_eq!(
        st.clients[0].masked_input(&readdressed, &input),
        Err(SecAggError::ShareAuthFailed { from: 2, to: 0 })
    );
    // Misaddressed (left as for site 1): refused before decryption.
    let mut mis = st.forwarded[&0].clone();
    mis[0].to = 1;
    assert!(matches!(
        st.clients[0].masked_input(&mis, &input),
        Err(SecAggError::Misaddressed { .. })
    ));
    // Duplicate.
    let mut dup = st.forwarded[&0].clone();
    dup.push(dup[0].clone());
    assert!(matches!(
        st.clients[0].masked_input(&dup, &input),
        Err(SecAggError::Duplicate(_))
    ));
    // Replayed from another round with the same sites and keys-to-be: a second round over the
    // same identities, whose shares are offered to this round's site 0.
    let other = staged(3);
    let replay: Vec<EncryptedShare> = other.forwarded[&0].clone();
    assert!(matches!(
        st.clients[0].masked_input(&replay, &input),
        Err(SecAggError::ShareAuthFailed { .. })
    ));
    // Wrong length, out of range.
    assert_eq!(
        st.clients[0].masked_input(&st.forwarded[&0], &[1; 7]),
        Err(SecAggError::WrongLength {
            expected: 8,
            got: 7
        })
    );
    let mut big = input.clone();
    big[3] = 1 << 32;
    assert!(matches!(
        st.clients[0].masked_input(&st.forwarded[&0], &big),
        Err(SecAggError::OutOfRange { index: 3, .. })
    ));
    // None of that changed the client: the genuine shares still work.
    assert!(
        st.clients[0]
            .masked_input(&st.forwarded[&0], &input)
            .is_ok()
    );
}

#[test]
fn bad_unsigned_duplicate_and_altered_keys_are_rejected() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let round = make_round(4, 3, 16, None, 2, 4, &mut rng);
    let mut clients = Vec::new();
    let mut keys = Vec::new();
    for i in 0..4u32 {
        let (c, k) = Client::new(&round.setup, i, &round.identities[i as usize], &mut rng).unwrap();
        clients.push(c);
        keys.push(k);
    }
    let c = &mut clients[0];
    let mut bad = keys.clone();
    bad[2].mask_public_key[0] ^= 1;
    assert_eq!(c.share_keys(&bad), Err(SecAggError::BadSignature(2)));
    let mut unsigned = keys.clone();
    unsigned[3].signature.clear();
    assert_eq!(c.share_keys(&unsigned), Err(SecAggError::Unsigned(3)));
    let mut dup = keys.clone();
    dup.push(keys[1].clone());
    assert_eq!(c.share_keys(&dup), Err(SecAggError::Duplicate(1)));
    let mut mine = keys.clone();
    mine[0].share_public_key[5] ^= 1;
    assert_eq!(c.share_keys(&mine), Err(SecAggError::KeyMismatch(0)));
    // Keys signed by the wrong identity (site 1 signs as site 2).
    let mut forged = keys.clone();
    forged[2].signature = keys[1].signature.clone();
    assert_eq!(c.share_keys(&forged), Err(SecAggError::BadSignature(2)));
    // Keys from another round (same identities, other round id) do not verify here.
    let mut rng2 = ChaCha20Rng::seed_from_u64(4);
    let other = make_round(4, 3, 16, None, 2, 5, &mut rng2);
    let (_, k_other) = Client::new(&other.setup, 2, &other.identities[2], &mut rng2).unwrap();
    let mut replayed = keys.clone();
    replayed[2] = k_other;
    assert_eq!(c.share_keys(&replayed), Err(SecAggError::BadSignature(2)));
    // The server refuses the same.
    let mut server = Server::new(&round.setup).unwrap();
    assert_eq!(
        server.add_keys(bad[2].clone()),
        Err(SecAggError::BadSignature(2))
    );
    assert_eq!(
        server.add_keys(unsigned[3].clone()),
        Err(SecAggError::Unsigned(3))
    );
    server.add_keys(keys[1].clone()).unwrap();
    assert_eq!(
        server.add_keys(keys[1].clone()),
        Err(SecAggError::Duplicate(1))
    );
    // After all the refusals the genuine keys are accepted.
    assert_eq!(c.share_keys(&keys).map(|s| s.len()), Ok(3));
}

#[test]
fn setup_and_identity_checks() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let round = make_round(50, 4, 32, Some(10), 6, 6, &mut rng);
    // Identity of another site.
    assert_eq!(
        Client::new(&round.setup, 0, &round.identities[1], &mut rng).err(),
        Some(SecAggError::IdentityMismatch(0))
    );
    assert_eq!(
        Client::new(&round.setup, 50, &round.identities[1], &mut rng).err(),
        Some(SecAggError::UnknownSite(50))
    );
    // A graph seed the coordinator picked is refused.
    let mut s = round.setup.clone();
    s.params.graph = Graph::Regular {
        k: 10,
        seed: [1; 32],
    };
    assert!(matches!(Server::new(&s), Err(SecAggError::InvalidSetup(_))));
    assert!(matches!(
        Client::new(&s, 0, &round.identities[0], &mut rng),
        Err(SecAggError::InvalidSetup(_))
    ));
    // Sites out of canonical order are refused.
    let mut s = round.setup.clone();
    s.sites.swap(0, 1);
    s.sites[0].index = 0;
    s.sites[1].index = 1;
    assert!(matches!(s.validate(), Err(SecAggError::InvalidSetup(_))));
    // A threshold at or below half the degree is refused.
    let p = Params {
        bits: 32,
        dim: 4,
        threshold: 5,
        graph: round.setup.params.graph.clone(),
    };
    assert!(matches!(p.validate(50), Err(SecAggError::InvalidParams(_))));
    let sites = round
        .identities
        .iter()
        .map(|id| (String::new(), id.public_key()))
        .collect();
    assert!(RoundSetup::new(round.setup.round_id, sites, p).is_err());
}

#[test]
fn server_refuses_bad_messages_without_changing_state_and_aborts_for_good() {
    let mut st = staged(7);
    let input = vec![3u64; 8];
    let m0 = st.clients[0]
        .masked_input(&st.forwarded[&0], &input)
        .unwrap();
    let mut wrong_len = m0.clone();
    wrong_len.values.pop();
    assert!(matches!(
        st.server.add_masked(wrong_len),
        Err(SecAggError::WrongLength { .. })
    ));
    let mut stranger = m0.clone();
    stranger.from = 9;
    assert_eq!(
        st.server.add_masked(stranger),
        Err(SecAggError::UnknownSite(9))
    );
    st.server.add_masked(m0.clone()).unwrap();
    assert_eq!(st.server.add_masked(m0), Err(SecAggError::Duplicate(0)));
    assert!(matches!(
        st.server.add_keys(st.keys[0].clone()),
        Err(SecAggError::WrongStage { .. })
    ));
    // Only one masked input: below t + 1, the round aborts and stays aborted.
    assert!(matches!(
        st.server.masked_done(),
        Err(SecAggError::TooManyDropouts {
            stage: Stage::MaskedInput,
            ..
        })
    ));
    assert_eq!(st.server.finish(), Err(SecAggError::Aborted));
    let _ = &st.round;
}

#[test]
fn server_refuses_a_response_that_does_not_match_its_request() {
    let mut st = staged(8);
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    for i in 0..5u32 {
        let mut input = vec![0u64; 8];
        input.iter_mut().for_each(|v| *v = rng.next_u32() as u64);
        let m = st.clients[i as usize]
            .masked_input(&st.forwarded[&i], &input)
            .unwrap();
        st.server.add_masked(m).unwrap();
    }
    let reqs = st.server.masked_done().unwrap();
    let mut r = st.clients[0].unmask(&reqs[&0]).unwrap();
    r.shares[0].kind = fedcare_secagg::ShareKind::MaskKey;
    assert!(matches!(
        st.server.add_unmask(r.clone()),
        Err(SecAggError::UnrequestedShare { .. })
    ));
    r.shares[0].kind = fedcare_secagg::ShareKind::SelfMaskSeed;
    r.shares.pop();
    assert!(matches!(
        st.server.add_unmask(r),
        Err(SecAggError::BadRequest(_))
    ));
}

#[test]
fn a_corrupted_revealed_share_is_caught() {
    // The same error, naming the same site, whether the secrets are checked on 1 or 3 threads.
    let mut errors = Vec::new();
    for threads in [1, 3] {
        let mut st = staged(9);
        for i in 0..5u32 {
            let m = st.clients[i as usize]
                .masked_input(&st.forwarded[&i], &[7u64; 8])
                .unwrap();
            st.server.add_masked(m).unwrap();
        }
        let reqs = st.server.masked_done().unwrap();
        for i in 0..5u32 {
            let mut r = st.clients[i as usize].unmask(&reqs[&i]).unwrap();
            if i == 0 {
                r.shares[0].share[0] = (r.shares[0].share[0] + 1) % fedcare_secagg::shamir::P;
            }
            st.server.add_unmask(r).unwrap();
        }
        let e = st.server.finish_threads(threads).unwrap_err();
        assert!(matches!(e, SecAggError::BadShares(_)), "{e:?}");
        // The round is over for good.
        assert_eq!(st.server.finish(), Err(SecAggError::Aborted));
        errors.push(e);
    }
    assert_eq!(errors[0], errors[1]);
}
