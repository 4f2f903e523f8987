#!/usr/bin/env python3
"""Reference RDP values for fedcare-privacy's distributed Skellam accounting.

Run:  python3 make_skellam_vectors.py > skellam_vectors.json     (Python 3 standard library only)

An independent transcription of the Skellam accounting in the authors' reference
implementation of Agarwal, Kairouz and Liu, "The Skellam Mechanism for Differentially Private
Federated Learning" (NeurIPS 2021): google-research/federated,
distributed_dp/accounting_utils.py (rounded_l2_norm_bound, rounded_l1_norm_bound,
_skellam_rdp and skellam_rdp with q = 1, steps = 1). It is written in that code's terms:
sensitivities and variance in the UNSCALED (input) domain, with the scale s = 1/gamma
appearing explicitly in the surcharge term, while the Rust crate works in the scaled integer
domain. A slip in either unit conversion shows up as a mismatch.

Each point: the input-domain clip, scale, beta, padded dim, the per-site noise std in the
scaled domain (sigma) and the number of sites n; the scaled-domain sensitivities after
conditional rounding; and the RDP curve at integer orders 2..128 and 256 of ONE release of
the sum of n sites' Skellam noise (central variance n sigma^2 in the scaled domain).
"""
import json
import math

ORDERS = list(range(2, 129)) + [256]


def rounded_l2_norm_bound(l2_norm_bound, beta, dim):
    bound_1 = l2_norm_bound + math.sqrt(dim)
    if beta == 0:
        return bound_1
    squared_bound_2 = l2_norm_bound ** 2 + 0.25 * dim
    squared_bound_2 += math.sqrt(2.0 * math.log(1.0 / beta)) * (l2_norm_bound + 0.5 * math.sqrt(dim))
    return min(bound_1, math.sqrt(squared_bound_2))


def rounded_l1_norm_bound(l2_norm_bound, dim):
    return l2_norm_bound * min(math.sqrt(dim), l2_norm_bound)


def skellam_rdp_at(l1_sens, l2_sens, central_var, scale, order):
    # Input-domain form: l1_sens, l2_sens, central_var in input units; scale = 1/gamma.
    a, s, mu = order, scale, central_var
    rdp = a / (2 * mu) * l2_sens ** 2
    rdp += min(((2 * a - 1) * s * l2_sens ** 2 + 6 * l1_sens) / (4 * s ** 3 * mu ** 2),
               3 * l1_sens / (2 * s * mu))
    return rdp


def point(clip, scale, beta, dim, sigma, n):
    # The reference rounds the input-domain clip: rescale, bound, scale back.
    l2_sens = rounded_l2_norm_bound(clip * scale, beta, dim) / scale
    l1_sens = rounded_l1_norm_bound(l2_sens * scale, dim) / scale
    local_stddev = sigma / scale          # input units
    central_stddev = local_stddev * math.sqrt(n)
    central_var = central_stddev ** 2
    return {
        "clip": clip, "scale": scale, "beta": beta, "dim": dim, "sigma": sigma, "n": n,
        "l2": l2_sens * scale, "l1": l1_sens * scale,
        "rdp": [skellam_rdp_at(l1_sens, l2_sens, central_var, scale, a) for a in ORDERS],
    }


def main():
    points = []
    # Small sigma: the surcharge matters (and its two branches trade places); large sigma is
    # the usual regime (surcharge negligible).
    for clip, scale, beta, dim in [(1.0, 1.0, math.exp(-0.5), 16), (0.5, 40.0, math.exp(-0.5), 64),
                                   (4.0, 1000.0, 0.0, 1024), (2.0, 3.0, 0.1, 4)]:
        for sigma in [0.5, 2.0, 10.0, 1000.0, 262144.0]:
            for n in [1, 2, 3, 10, 100]:
                points.append(point(clip, scale, beta, dim, sigma, n))
    print(json.dumps({
        "source": "AKL 2021 Skellam accounting, transcribed from google-research/federated distributed_dp/accounting_utils.py",
        "orders": ORDERS,
        "points": points,
    }, indent=1))


if __name__ == "__main__":
    main()
