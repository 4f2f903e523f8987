#!/usr/bin/env python3
"""Reference RDP values for fedcare-privacy's distributed discrete Gaussian accounting.

Run:  python3 make_ddg_vectors.py > ddg_vectors.json     (Python 3 standard library only)

This is an independent transcription of the accounting in the authors' own reference
implementation of Kairouz, Liu and Steinke, "The Distributed Discrete Gaussian Mechanism for
Federated Learning with Secure Aggregation" (ICML 2021): google-research/federated,
distributed_dp/accounting_utils.py (functions rounded_l2_norm_bound, rounded_l1_norm_bound,
the tau series of ddgauss_epsilon, and compute_rdp_dgaussian with q = 1, steps = 1). It is
written in that code's terms (l1_scale, l2_scale, orders floored to integers), not in the
Rust crate's, so that a transcription slip in either shows up as a mismatch. When it was
written, its outputs were also compared with the reference functions themselves (run with a
stub for their unused tensorflow_privacy import) and agreed exactly.

Each point: the scaled-domain sensitivities after conditional randomised rounding, the tau
inflation, and the RDP curve at integer orders 2..128 and 256 of ONE release of the sum of
n sites' discrete Gaussian noise of local std sigma (scaled domain).
"""
import json
import math

ORDERS = list(range(2, 129)) + [256]


def rounded_l2(c_scaled, beta, dim):
    # Conditional randomised rounding: the L2 norm after rounding a vector of norm c_scaled.
    b1 = c_scaled + math.sqrt(dim)
    if beta == 0:
        return b1
    sq = c_scaled ** 2 + 0.25 * dim + math.sqrt(2.0 * math.log(1.0 / beta)) * (c_scaled + 0.5 * math.sqrt(dim))
    return min(b1, math.sqrt(sq))


def rounded_l1(l2, dim):
    # Integer coordinates: L1 <= L2^2, and always L1 <= sqrt(d) L2.
    return l2 * min(math.sqrt(dim), l2)


def tau_of(sigma, n):
    return 10.0 * sum(math.exp(-2.0 * (math.pi * sigma) ** 2 * (k / (k + 1.0))) for k in range(1, n))


def rdp(order, l1_scale, l2_scale, tau, dim):
    order = int(order)
    t1 = order / 2.0 * l2_scale ** 2 + tau * dim
    t2 = order / 2.0 * (l2_scale ** 2 + 2.0 * l1_scale * tau + tau ** 2 * dim)
    t3 = order / 2.0 * (l2_scale + math.sqrt(dim) * tau) ** 2
    return min(t1, t2, t3)


def point(clip, scale, beta, dim, sigma, n):
    l2 = rounded_l2(clip * scale, beta, dim)
    l1 = rounded_l1(l2, dim)
    tau = tau_of(sigma, n)
    l1_scale = l1 / (math.sqrt(n) * sigma)
    l2_scale = l2 / (math.sqrt(n) * sigma)
    return {
        "clip": clip, "scale": scale, "beta": beta, "dim": dim, "sigma": sigma, "n": n,
        "l2": l2, "l1": l1, "tau": tau,
        "rdp": [rdp(a, l1_scale, l2_scale, tau, dim) for a in ORDERS],
    }


def main():
    points = []
    # Small sigma makes tau matter (the regime where the three terms differ); large sigma
    # is the usual one (tau negligible).
    for clip, scale, beta, dim in [(1.0, 1.0, math.exp(-0.5), 16), (0.5, 40.0, math.exp(-0.5), 64),
                                   (4.0, 1000.0, 0.0, 1024), (2.0, 3.0, 0.1, 4)]:
        for sigma in [0.5, 0.8, 1.5, 10.0, 1000.0]:
            for n in [1, 2, 3, 10, 100]:
                points.append(point(clip, scale, beta, dim, sigma, n))
    print(json.dumps({
        "source": "KLS 2021 accounting, transcribed from google-research/federated distributed_dp/accounting_utils.py",
        "orders": ORDERS,
        "points": points,
    }, indent=1))


if __name__ == "__main__":
    main()
