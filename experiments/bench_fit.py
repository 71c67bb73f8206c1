"""Benchmark of scaling.fit: a 4,500-start Chinchilla fit and a 1,000-resample bootstrap.

``python -m experiments.bench_fit [--points 250] [--resamples 1000]`` prints wall times
(first call, which includes XLA compilation, and a second, warm call) for the published
Hoffmann et al. 2022 grid (alpha, beta in {0,...,2}, e in {-1,...,1}, a, b in {0,...,25}:
4,500 starts) on a synthetic table drawn from the Chinchilla law with 1 % noise.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=250)
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    table = synthetic_table(args.points)
    print(f"cpus={os.cpu_count()} points={args.points} grid=hoffmann (4500 starts)")
    for label in ("first (incl. compile)", "warm"):
        t0 = time.perf_counter()
        res = fit_law(table, law="chinchilla")
        dt = time.perf_counter() - t0
        print(f"fit {label}: {dt:.2f} s  objective={res.objective:.6g} "
              f"n_at_best={res.n_at_best}/{res.n_starts} alpha={res.params['alpha']:.4f} "
              f"beta={res.params['beta']:.4f}")
    for label in ("first (incl. compile)", "warm"):
        t0 = time.perf_counter()
        boot = res.bootstrap(n=args.resamples, seed=0, budgets=[1e21])
        dt = time.perf_counter() - t0
        lo, hi = boot.interval("alpha")
        print(f"bootstrap {args.resamples} {label}: {dt:.2f} s  failed={boot.n_failed} "
              f"alpha 95% [{lo:.4f}, {hi:.4f}]")


if __name__ == "__main__":
    main()
