"""Benchmark of scaling.fit: a 4,500-start Chinchilla fit, a small-table fit, a bootstrap.

``python -m experiments.bench_fit [--points 240] [--small 5] [--resamples 1000]`` prints, for
each case, the first call (which includes XLA compilation), the compile time alone (the
first call minus a warm call) and the warm time, as wall and process CPU seconds:

- the published Hoffmann et al. 2022 grid (alpha, beta in {0,...,2}, e in {-1,...,1},
  a, b in {0,...,25}: 4,500 starts) on ``--points`` runs drawn from the Chinchilla law
  with 1 % noise (target: <= 2 s warm);
- an over-training fit on ``--small`` runs (Gadre et al. 2024's 5-point setting:
  chinchilla_tied, its 900-start grid; target: <= 2 s for tables up to 50 rows), with the
  number of starts that hit the iteration cap;
- ``--resamples`` bootstrap refits of the first fit.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd

from scaling import fit_law, laws
from scaling.constants import (HOFFMANN_A, HOFFMANN_ALPHA, HOFFMANN_B, HOFFMANN_BETA,
                               HOFFMANN_E)


def synthetic_table(m: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e10), m))
    D = np.exp(rng.uniform(np.log(1e8), np.log(1e12), m))
    L = laws.chinchilla(N, D, HOFFMANN_E, HOFFMANN_A, HOFFMANN_B, HOFFMANN_ALPHA, HOFFMANN_BETA)
    return pd.DataFrame({"N": N, "D": D, "loss": L * np.exp(rng.normal(0, 0.01, m))})


def overtraining_table(m: int, seed: int = 1) -> pd.DataFrame:
    """m runs like Gadre et al.'s small set: 4 sizes at 20 tokens/param, then over-trained ones."""
    sizes = np.geomspace(1e7, 4e8, 4)
    N = np.concatenate([sizes, np.full(max(m - 4, 0), sizes[0])])[:m]
    mult = np.concatenate([np.ones(4), 16.0 * 2.0 ** np.arange(max(m - 4, 0))])[:m]
    D = 20.0 * mult * N
    rng = np.random.default_rng(seed)
    L = laws.chinchilla(N, D, HOFFMANN_E, HOFFMANN_A, HOFFMANN_B, HOFFMANN_ALPHA, HOFFMANN_ALPHA)
    return pd.DataFrame({"N": N, "D": D, "loss": L * np.exp(rng.normal(0, 0.005, m))})


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _report(name: str, fn, describe) -> object:
    out, w1, c1 = _timed(fn)
    out, w2, c2 = _timed(fn)
    print(f"{name}: first {w1:.2f} s wall ({c1:.2f} s CPU) = compile {max(w1 - w2, 0):.2f} s + "
          f"warm {w2:.2f} s wall ({c2:.2f} s CPU); {describe(out)}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=240)
    ap.add_argument("--small", type=int, default=5)
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}")
    table = synthetic_table(args.points)
    res = _report(f"chinchilla, {args.points} points, hoffmann grid",
                  lambda: fit_law(table, law="chinchilla"),
                  lambda r: f"{r.n_starts} starts, {r.n_at_best} at the best, "
                            f"{int((~r.starts['converged']).sum())} not converged, alpha={r.params['alpha']:.4f}")
    small = overtraining_table(args.small)
    _report(f"chinchilla_tied, {args.small} points, hoffmann grid",
            lambda: fit_law(small, law="chinchilla_tied"),
            lambda r: f"{r.n_starts} starts, {r.n_at_best} at the best, "
                      f"{int((r.starts['iterations'] >= 500).sum())} at the iteration cap")
    _report(f"bootstrap {args.resamples} resamples of the {args.points}-point fit",
            lambda: res.bootstrap(n=args.resamples, seed=0, budgets=[1e21]),
            lambda b: f"failed={b.n_failed}, alpha {b.level:.0%} {tuple(round(v, 4) for v in b.interval('alpha'))}")


if __name__ == "__main__":
    main()
