//! A whole round simulated in memory: n clients, one server, dropouts at chosen stages.
#![allow(dead_code)]

use std::collections::BTreeSet;

use fedcare_secagg::{Client, Graph, IdentityKey, Params, RoundSetup, SecAggError, Server};
use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;

pub struct Round {
    pub setup: RoundSetup,
    pub identities: Vec<IdentityKey>,
}

pub fn round_id(tag: u64) -> [u8; 32] {
    fedcare_secagg::crypto::sha256(&[b"test round", &tag.to_be_bytes()])
}

/// A round of `n` sites with the given graph degree (`None`: complete) and threshold.
pub fn make_round(
    n: usize,
    dim: usize,
    bits: u32,
    k: Option<u32>,
    threshold: usize,
    tag: u64,
    rng: &mut ChaCha20Rng,
) -> Round {
    let rid = round_id(tag);
    let graph = match k {
        None => Graph::Complete,
        Some(k) => Graph::Regular {
            k,
            seed: fedcare_secagg::graph_seed(&rid),
        },
    };
    let params = Params {
        bits,
        dim,
        threshold,
        graph,
    };
    let ids: Vec<IdentityKey> = (0..n)
        .map(|_| IdentityKey::generate(rng).unwrap())
        .collect();
    let setup = RoundSetup::new(
        rid,
        ids.iter()
            .enumerate()
            .map(|(i, id)| (format!("site-{i}"), id.public_key()))
            .collect(),
        params,
    )
    .unwrap();
    // Put identities in setup order.
    let mut identities = ids;
    identities.sort_by_key(|id| setup.index_of(&id.public_key()).unwrap());
    Round { setup, identities }
}

pub fn random_inputs(n: usize, dim: usize, bits: u32, rng: &mut ChaCha20Rng) -> Vec<Vec<u64>> {
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    (0..n)
        .map(|_| (0..dim).map(|_| rng.next_u64() & mask).collect())
        .collect()
}

pub fn plain_sum(inputs: &[Vec<u64>], who: &BTreeSet<u32>, bits: u32) -> Vec<u64> {
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let dim = inputs[0].len();
    (0..dim)
        .map(|c| {
            who.iter()
                .fold(0u64, |a, &i| a.wrapping_add(inputs[i as usize][c]))
                & mask
        })
        .collect()
}

/// What happened in a simulated round.
pub struct Outcome {
    pub result: Result<Vec<u64>, SecAggError>,
    /// Sites whose masked input reached the server.
    pub survivors: BTreeSet<u32>,
    /// Client-side refusals seen (site, error).
    pub client_errors: Vec<(u32, SecAggError)>,
}

/// Runs a round. `drops[s]` holds the sites that go silent at stage s (0: never advertise
/// keys, 1: no shares, 2: no masked input, 3: no unmask response). A client that refuses a
/// step is treated as silent from then on.
pub fn run(
    round: &Round,
    inputs: &[Vec<u64>],
    drops: &[BTreeSet<u32>; 4],
    rng: &mut ChaCha20Rng,
) -> Outcome {
    let n = round.setup.n();
    let mut server = Server::new(&round.setup).unwrap();
    let mut clients: Vec<Option<Client>> = Vec::new();
    let mut client_errors = Vec::new();
    for i in 0..n as u32 {
        let (c, keys) = Client::new(&round.setup, i, &round.identities[i as usize], rng).unwrap();
        if drops[0].contains(&i) {
            clients.push(None);
        } else {
            server.add_keys(keys).unwrap();
            clients.push(Some(c));
        }
    }
    let fail = |result, client_errors| Outcome {
        result: Err(result),
        survivors: BTreeSet::new(),
        client_errors,
    };
    let keys = match server.keys_done() {
        Ok(k) => k,
        Err(e) => return fail(e, client_errors),
    };
    for i in 0..n as u32 {
        let Some(c) = clients[i as usize].as_mut() else {
            continue;
        };
        match c.share_keys(&keys) {
            Ok(shares) if !drops[1].contains(&i) => server.add_shares(i, shares).unwrap(),
            Ok(_) => clients[i as usize] = None,
            Err(e) => {
                client_errors.push((i, e));
                clients[i as usize] = None;
            }
        }
    }
    let mut forwarded = match server.shares_done() {
        Ok(f) => f,
        Err(e) => return fail(e, client_errors),
    };
    for i in 0..n as u32 {
        let Some(c) = clients[i as usize].as_mut() else {
            continue;
        };
        let mine = forwarded.remove(&i).unwrap_or_default();
        // Even sites go through the struct, odd ones straight to bytes; the server likewise
        // alternates between its two entry points, so both paths are covered by every sum.
        let masked = if i % 2 == 0 {
            c.masked_input(&mine, &inputs[i as usize])
                .map(|m| m.to_bytes())
        } else {
            c.masked_input_bytes(&mine, &inputs[i as usize])
        };
        match masked {
            Ok(bytes) if !drops[2].contains(&i) => {
                if (i / 2) % 2 == 0 {
                    server
                        .add_masked(fedcare_secagg::MaskedInput::from_bytes(&bytes).unwrap())
                        .unwrap()
                } else {
                    server.add_masked_bytes(&bytes).unwrap()
                }
            }
            Ok(_) => clients[i as usize] = None,
            Err(e) => {
                client_errors.push((i, e));
                clients[i as usize] = None;
            }
        }
    }
    let requests = match server.masked_done() {
        Ok(r) => r,
        Err(e) => return fail(e, client_errors),
    };
    let survivors: BTreeSet<u32> = server.survivors().into_iter().collect();
    for (i, req) in requests {
        let Some(c) = clients[i as usize].as_mut() else {
            continue;
        };
        if drops[3].contains(&i) {
            continue;
        }
        let req = fedcare_secagg::UnmaskRequest::from_bytes(&req.to_bytes()).unwrap();
        match c.unmask(&req) {
            Ok(r) => server
                .add_unmask(fedcare_secagg::UnmaskResponse::from_bytes(&r.to_bytes()).unwrap())
                .unwrap(),
            Err(e) => client_errors.push((i, e)),
        }
    }
    Outcome {
        // 1, 2 or 3 unmasking threads, by round size: the sum must not depend on it.
        result: server.finish_threads(1 + n % 3),
        survivors,
        client_errors,
    }
}
