//! The neighbour graph and the choice of parameters (SecAgg+, Bell et al., CCS 2020).
//!
//! In SecAgg (Bonawitz et al., CCS 2017) every pair of sites shares a mask and every site
//! secret-shares its keys to all others: cost per site linear in n. SecAgg+ replaces the
//! complete graph by a random k-regular graph with k = O(log n): a site only agrees masks with,
//! and shares its secrets to, its k neighbours. The graph is the Harary graph H(k, n) (every
//! node joined to the k/2 nearest on each side of a cycle) with the nodes placed on the cycle
//! in a random order (Bell et al., §3, "GenerateGraph"). The order is a Fisher–Yates shuffle
//! driven by ChaCha20 keyed with `SHA-256(label ‖ seed)`, and the seed itself must equal
//! [`graph_seed`]`(round_id)`, so every site recomputes the same graph and can check that the
//! coordinator did not pick it.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::crypto::{label, sha256};
use crate::error::SecAggError;

/// Sites below this count always use the complete graph: there, k-regular graphs with the
/// required properties are not much sparser than the complete graph, and the complete graph
/// gives deterministic (not just overwhelmingly likely) guarantees.
pub const COMPLETE_BELOW: usize = 40;
/// Statistical security parameter σ: an adversary's chance to learn more than the sum is at
/// most 2^-σ per round (Bell et al. use σ = 40).
pub const SIGMA: f64 = 40.0;
/// Correctness parameter η: a round with dropouts within the stated fraction fails with
/// probability at most 2^-η (Bell et al. use η = 30).
pub const ETA: f64 = 30.0;
/// Largest supported number of sites in one round.
pub const MAX_SITES: usize = 1 << 20;
/// Largest supported dimension (2^30 coordinates).
pub const MAX_DIM: usize = 1 << 30;

/// Which pairs of sites are neighbours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Graph {
    /// Everyone is everyone's neighbour (SecAgg).
    Complete,
    /// A random k-regular Harary graph (SecAgg+); `k` even, `2 <= k <= n - 2`.
    Regular { k: u32, seed: [u8; 32] },
}

/// The graph seed for a round: `SHA-256("fedcare-secagg/v1/graph-seed" ‖ round_id)`. A
/// deterministic function of the round id (itself a hash of the job id and round number), so
/// the coordinator cannot choose it and every site checks it.
pub fn graph_seed(round_id: &[u8; 32]) -> [u8; 32] {
    sha256(&[label::GRAPH_SEED, round_id])
}

/// Uniform integer in 0..bound (bound >= 1) by rejection, so the shuffle is exactly uniform
/// and does not depend on any library's sampling algorithm.
fn below(rng: &mut ChaCha20Rng, bound: u64) -> u64 {
    let zone = u64::MAX - (u64::MAX - bound + 1) % bound; // largest multiple of bound, minus 1
    loop {
        let v = rng.next_u64();
        if v <= zone {
            return v % bound;
        }
    }
}

impl Graph {
    /// The degree of every node in a graph of `n` nodes.
    pub fn degree(&self, n: usize) -> usize {
        match self {
            Graph::Complete => n.saturating_sub(1),
            Graph::Regular { k, .. } => *k as usize,
        }
    }

    pub(crate) fn validate(&self, n: usize) -> Result<(), SecAggError> {
        if let Graph::Regular { k, .. } = self {
            let k = *k as usize;
            if k < 2 || !k.is_multiple_of(2) || k + 2 > n {
                return Err(SecAggError::InvalidParams(format!(
                    "a regular graph needs an even degree k with 2 <= k <= n - 2; got k = {k}, n = {n}"
                )));
            }
        }
        Ok(())
    }

    /// Everyone's sorted neighbour list.
    pub fn adjacency(&self, n: usize) -> Vec<Vec<u32>> {
        match self {
            Graph::Complete => (0..n as u32)
                .map(|i| (0..n as u32).filter(|&j| j != i).collect())
                .collect(),
            Graph::Regular { k, seed } => {
                let order = self::cycle_order(seed, n);
                let mut pos = vec![0usize; n];
                for (p, &node) in order.iter().enumerate() {
                    pos[node as usize] = p;
                }
                let half = *k as usize / 2;
                (0..n)
                    .map(|i| {
                        let mut nb: Vec<u32> = (1..=half)
                            .flat_map(|j| [order[(pos[i] + j) % n], order[(pos[i] + n - j) % n]])
                            .collect();
                        nb.sort_unstable();
                        nb
                    })
                    .collect()
            }
        }
    }

    /// One node's sorted neighbour list (O(n) time for a regular graph: the shuffle).
    pub fn neighbours(&self, n: usize, me: u32) -> Vec<u32> {
        match self {
            Graph::Complete => (0..n as u32).filter(|&j| j != me).collect(),
            Graph::Regular { .. } => self.adjacency(n).swap_remove(me as usize),
        }
    }
}

/// The random cyclic order of the Harary graph.
fn cycle_order(seed: &[u8; 32], n: usize) -> Vec<u32> {
    let mut rng = ChaCha20Rng::from_seed(sha256(&[label::GRAPH_PERM, seed]));
    let mut order: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = below(&mut rng, i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// The parameters of one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Inputs live in Z_{2^bits}, 1 <= bits <= 64; values are carried as u64.
    pub bits: u32,
    /// Number of coordinates.
    pub dim: usize,
    /// Shamir threshold t: shares needed to reconstruct a secret.
    pub threshold: usize,
    pub graph: Graph,
}

/// ln(i!) for i in 0..=n.
fn ln_factorials(n: usize) -> Vec<f64> {
    let mut t = Vec::with_capacity(n + 1);
    let mut acc = 0.0f64;
    t.push(0.0);
    for i in 1..=n {
        acc += (i as f64).ln();
        t.push(acc);
    }
    t
}

fn ln_choose(lf: &[f64], a: usize, b: usize) -> f64 {
    if b > a {
        f64::NEG_INFINITY
    } else {
        lf[a] - lf[b] - lf[a - b]
    }
}

/// P[X >= x] for X hypergeometric: `draws` draws without replacement from a population of
/// `pop` containing `bad` marked items.
fn hypergeom_tail(lf: &[f64], pop: usize, bad: usize, draws: usize, x: usize) -> f64 {
    let total = ln_choose(lf, pop, draws);
    (x..=bad.min(draws))
        .map(|i| (ln_choose(lf, bad, i) + ln_choose(lf, pop - bad, draws - i) - total).exp())
        .sum()
}

impl Params {
    /// Checks internal consistency for a round of `n` sites.
    pub fn validate(&self, n: usize) -> Result<(), SecAggError> {
        if !(1..=64).contains(&self.bits) {
            return Err(SecAggError::InvalidParams(format!(
                "bits must be in 1..=64, got {}",
                self.bits
            )));
        }
        if self.dim == 0 || self.dim > MAX_DIM {
            return Err(SecAggError::InvalidParams(format!(
                "dim must be in 1..={MAX_DIM}, got {}",
                self.dim
            )));
        }
        if !(2..=MAX_SITES).contains(&n) {
            return Err(SecAggError::InvalidParams(format!(
                "a round needs 2..={MAX_SITES} sites, got {n}"
            )));
        }
        self.graph.validate(n)?;
        let deg = self.graph.degree(n);
        if self.threshold == 0 || self.threshold > deg {
            return Err(SecAggError::InvalidParams(format!(
                "threshold must be in 1..={deg} (the degree), got {}",
                self.threshold
            )));
        }
        // A coordinator that lies about who dropped could ask one group of a site's
        // neighbours for its self-mask share and another for its key share; with 2t > k the
        // two groups cannot both reach t.
        if 2 * self.threshold <= deg {
            return Err(SecAggError::InvalidParams(format!(
                "threshold {} must exceed half the degree {deg}",
                self.threshold
            )));
        }
        Ok(())
    }

    /// The number of dropouts, summed over all stages, that a round of `n` sites with these
    /// parameters survives *whatever* sites drop: every survivor keeps at least t surviving
    /// neighbours. Complete graph: n - 1 - t. Regular graph: k - t (a worst-case bound; random
    /// dropouts up to the fraction given to [`Params::choose`] are tolerated with probability
    /// at least 1 - 2^-η).
    pub fn tolerated_dropouts(&self, n: usize) -> usize {
        self.graph.degree(n).saturating_sub(self.threshold)
    }

    /// Picks the graph, its degree k and the threshold t for `n` sites of which a fraction
    /// `dropout_fraction` (δ) may drop out over the round and a fraction `corruption_fraction`
    /// (γ) may collude with the coordinator. Follows the analysis of Bell et al., CCS 2020,
    /// §3 (Harary graph with random labels) and §4 (choosing k and t), with D = ⌊δn⌋ dropouts
    /// and C = ⌊γn⌋ corrupt sites, σ = [`SIGMA`], η = [`ETA`], and HG(N, K, k) the
    /// hypergeometric law of the marked neighbours when k of N = n - 1 others are drawn, K of
    /// them marked:
    ///
    /// 1. corrupt neighbours: c* = the least c with n · P[HG(n-1, C, k) > c] <= 2^-σ; a
    ///    union bound over sites, so w.p. 1 - 2^-σ no site has more than c* corrupt
    ///    neighbours;
    /// 2. threshold: t = ⌊(k + c*)/2⌋ + 1, so t > c* (corrupt neighbours alone cannot
    ///    reconstruct a secret) and 2t > k + c* (a coordinator lying about dropouts cannot
    ///    collect t self-mask shares and t key shares of one site from disjoint honest
    ///    groups plus the corrupt ones);
    /// 3. correctness: n · P[HG(n-1, D, k) > k - t] <= 2^-η (every site keeps t live
    ///    neighbours);
    /// 4. connectivity: n · C(C+D, k/2) / C(n-1, k/2) <= 2^-σ. The honest survivors of a
    ///    Harary graph stay connected unless k/2 consecutive nodes of the cycle are all
    ///    corrupt or dropped; this bounds that chance by a union over the n windows. A
    ///    disconnected honest graph would reveal the sums of its components.
    ///
    /// k is the least even value meeting 1-4. The complete graph is used when n is below
    /// [`COMPLETE_BELOW`] or no k <= n - 2 qualifies; then t = ⌊(n - 1 + C)/2⌋ + 1 and the
    /// round must tolerate D dropouts outright: n - 1 - t >= D.
    pub fn choose(
        n: usize,
        dim: usize,
        bits: u32,
        dropout_fraction: f64,
        corruption_fraction: f64,
        graph_seed: [u8; 32],
    ) -> Result<Params, SecAggError> {
        let frac_ok = |f: f64| f.is_finite() && (0.0..0.5).contains(&f);
        if !frac_ok(dropout_fraction) || !frac_ok(corruption_fraction) {
            return Err(SecAggError::InvalidParams(format!(
                "fractions must be in [0, 0.5): dropout {dropout_fraction}, corruption {corruption_fraction}"
            )));
        }
        if !(2..=MAX_SITES).contains(&n) {
            return Err(SecAggError::InvalidParams(format!(
                "a round needs 2..={MAX_SITES} sites, got {n}"
            )));
        }
        let dropped = (dropout_fraction * n as f64 + 1e-9).floor() as usize;
        let corrupt = (corruption_fraction * n as f64 + 1e-9).floor() as usize;
        let complete = || -> Result<Params, SecAggError> {
            let t = (n - 1 + corrupt) / 2 + 1;
            if t > n - 1 || n - 1 - t < dropped {
                return Err(SecAggError::Infeasible(format!(
                    "{n} sites cannot tolerate {dropped} dropouts with {corrupt} corrupt sites (threshold {t})"
                )));
            }
            let p = Params {
                bits,
                dim,
                threshold: t,
                graph: Graph::Complete,
            };
            p.validate(n)?;
            Ok(p)
        };
        if n < COMPLETE_BELOW {
            return complete();
        }
        let lf = ln_factorials(n);
        let others = n - 1;
        let sec = (-SIGMA * std::f64::consts::LN_2).exp();
        let cor = (-ETA * std::f64::consts::LN_2).exp();
        let mut k = 2;
        while k + 2 <= n {
            let c_star = (0..=k.min(corrupt))
                .find(|&c| n as f64 * hypergeom_tail(&lf, others, corrupt, k, c + 1) <= sec);
            if let Some(c_star) = c_star {
                let t = (k + c_star) / 2 + 1;
                let correct =
                    t <= k && n as f64 * hypergeom_tail(&lf, others, dropped, k, k - t + 1) <= cor;
                let half = k / 2;
                let marked = corrupt + dropped;
                let conn = if marked < half {
                    0.0
                } else {
                    n as f64 * (ln_choose(&lf, marked, half) - ln_choose(&lf, others, half)).exp()
                };
                if correct && conn <= sec {
                    let p = Params {
                        bits,
                        dim,
                        threshold: t,
                        graph: Graph::Regular {
                            k: k as u32,
                            seed: graph_seed,
                        },
                    };
                    p.validate(n)?;
                    return Ok(p);
                }
            }
            k += 2;
        }
        complete()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harary_graph_is_k_regular_symmetric_and_seeded() {
        for n in [6usize, 7, 10, 41, 100] {
            for k in (2..=n - 2).step_by(2).take(6) {
                let g = Graph::Regular {
                    k: k as u32,
                    seed: [n as u8; 32],
                };
                let adj = g.adjacency(n);
                for (i, nb) in adj.iter().enumerate() {
                    assert_eq!(nb.len(), k, "n={n} k={k}");
                    assert!(!nb.contains(&(i as u32)));
                    assert!(nb.windows(2).all(|w| w[0] < w[1]));
                    for &j in nb {
                        assert!(adj[j as usize].contains(&(i as u32)));
                    }
                    assert_eq!(g.neighbours(n, i as u32), *nb);
                }
                let other = Graph::Regular {
                    k: k as u32,
                    seed: [n as u8 + 1; 32],
                }
                .adjacency(n);
                if n > 6 && k < n - 2 {
                    assert_ne!(adj, other, "a different seed gives a different graph");
                }
            }
        }
    }

    #[test]
    fn choose_follows_documented_cases() {
        let seed = [7u8; 32];
        // Small rounds: complete graph, majority threshold.
        let p = Params::choose(10, 5, 32, 0.1, 0.0, seed).unwrap();
        assert_eq!(p.graph, Graph::Complete);
        assert_eq!(p.threshold, 5);
        assert!(p.tolerated_dropouts(10) >= 1);
        // Values from an independent transcription of the formulas in Python with exact
        // integer binomials:
        //   from math import comb
        //   tail = lambda N, K, k, x: sum(comb(K, i) * comb(N - K, k - i)
        //                                 for i in range(x, min(K, k) + 1)) / comb(N, k)
        //   for k in range(2, n - 1, 2):
        //       c = min(c for c in range(min(k, C) + 1) if n * tail(n - 1, C, k, c + 1) <= 2**-40)
        //       t = (k + c) // 2 + 1
        //       ok = n * tail(n - 1, D, k, k - t + 1) <= 2**-30 and (
        //            C + D < k // 2 or n * comb(C + D, k // 2) / comb(n - 1, k // 2) <= 2**-40)
        //       if ok: print(k, t); break
        for (n, delta, gamma, k, t) in [
            (100, 0.1, 0.05, 28, 17),
            (100, 0.1, 0.0, 22, 12),
            (200, 0.1, 0.05, 48, 30),
            (1000, 0.1, 0.05, 90, 58),
            (10_000, 0.1, 0.05, 114, 74),
            (40, 0.1, 0.05, 14, 9),
        ] {
            let p = Params::choose(n, 5, 32, delta, gamma, seed).unwrap();
            assert_eq!(
                (p.graph.clone(), p.threshold),
                (Graph::Regular { k, seed }, t),
                "n = {n}"
            );
            assert!(p.tolerated_dropouts(n) >= 1);
        }
        assert!(Params::choose(10, 5, 32, 0.45, 0.3, seed).is_err());
        assert!(Params::choose(10, 5, 32, f64::NAN, 0.0, seed).is_err());
    }
}
