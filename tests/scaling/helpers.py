"""Synthetic tables drawn from known laws (float64 NumPy), shared by the scaling tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

TRUE = {"E": 1.8, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37}


def chinchilla_loss(N, D, E, A, B, alpha, beta):
    """Hoffmann et al. 2022 Eq. (2), written out independently of scaling.laws."""
    return E + A * np.power(N, -alpha) + B * np.power(D, -beta)


def chinchilla_table(m: int = 120, noise: float = 1e-3, seed: int = 0, params=TRUE) -> pd.DataFrame:
    """m runs with log-uniform N in [1e7, 3e9] and tokens/param in [2, 200], log-normal noise."""
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(1e7), np.log(3e9), m))
    D = N * np.exp(rng.uniform(np.log(2.0), np.log(200.0), m))
    L = chinchilla_loss(N, D, **params) * np.exp(rng.normal(0.0, noise, m))
    return pd.DataFrame({"N": N, "D": D, "loss": L})


def theta_of(params) -> np.ndarray:
    """Chinchilla optimiser coordinates (a, b, e, alpha, beta) of natural parameters."""
    return np.array([np.log(params["A"]), np.log(params["B"]), np.log(params["E"]),
                     params["alpha"], params["beta"]])
