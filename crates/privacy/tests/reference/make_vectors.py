#!/usr/bin/env python3
"""Reference epsilons for fedcare-privacy's RDP accountant, from Google's dp_accounting.

Run:  pip install dp-accounting==0.6.0 && python3 make_vectors.py > rdp_vectors.json

Each point is PoissonSampledDpEvent(q, GaussianDpEvent(z)) self-composed `steps` times in a
fresh RdpAccountant (default orders, ADD_OR_REMOVE_ONE), converted to epsilon at `delta`.
"""
import json
import math
from importlib.metadata import version

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant as rdp

NOISE = [0.5, 0.8, 1.1, 2.0, 5.0]
RATES = [0.001, 256 / 60000, 0.01, 0.1, 1.0]
STEPS = [1, 10, 100, 1000, 14062]
DELTAS = [1e-5, 1e-6]


def epsilon(z, q, steps, delta):
    acc = rdp.RdpAccountant()
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)
    acc.compose(event)
    eps, order = acc.get_epsilon_and_optimal_order(delta)
    return float(eps), float(order)


def main():
    points = []
    for z in NOISE:
        for q in RATES:
            for t in STEPS:
                for d in DELTAS:
                    eps, order = epsilon(z, q, t, d)
                    points.append({"noise_multiplier": z, "sampling_rate": q, "steps": t,
                                   "delta": d, "epsilon": eps if math.isfinite(eps) else None,
                                   "order": order})
    out = {
        "source": "dp_accounting.rdp.RdpAccountant, PoissonSampledDpEvent(q, GaussianDpEvent(z)) x steps",
        "dp_accounting_version": version("dp-accounting"),
        "orders": [float(o) for o in rdp.DEFAULT_RDP_ORDERS],
        "points": points,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
