"""Scaling-law forms as plain NumPy-compatible functions, each with its citation.

Variables (arrays broadcast together, any shape ``*s``): N parameters, D training tokens,
U unique tokens (data-constrained), C training FLOPs, loss in nats per token. Every
function is elementwise: inputs of shape ``*s`` give outputs of shape ``*s``.

The fitting machinery uses the log-space forms in :mod:`scaling.law_specs`; these functions
are the readable definitions (and what :meth:`scaling.fit.FitResult.predict` evaluates).
"""

from __future__ import annotations

import numpy as np

from scaling import constants as K
from scaling.allocation import chinchilla_allocation, chinchilla_allocation_for_flops, compute_optimal_allocation

__all__ = [
    "kaplan_n",
    "kaplan_d",
    "kaplan_c",
    "kaplan_nd",
    "chinchilla",
    "chinchilla_allocation",
    "chinchilla_allocation_for_flops",
    "compute_optimal_allocation",
    "n_opt_for_tokens",
    "effective_data",
    "effective_params",
    "data_constrained",
    "saturating_power_law",
    "offset_n",
    "offset_d",
    "lr_opt",
    "bs_opt",
    "deepseek_lr_opt",
    "deepseek_bs_opt",
]


# --- Kaplan et al. 2020, arXiv:2001.08361 -----------------------------------------------------
def kaplan_n(N, N_c=K.KAPLAN_N_C, alpha_N=K.KAPLAN_ALPHA_N):
    """L(N) = (N_c / N)^alpha_N: converged loss vs non-embedding parameters, Eq. (1.1)."""
    return (N_c / np.asarray(N, dtype=float)) ** alpha_N


def kaplan_d(D, D_c=K.KAPLAN_D_C, alpha_D=K.KAPLAN_ALPHA_D):
    """L(D) = (D_c / D)^alpha_D: loss of a large model trained with early stopping, Eq. (1.2)."""
    return (D_c / np.asarray(D, dtype=float)) ** alpha_D


def kaplan_c(C, C_c=K.KAPLAN_C_C_MIN, alpha_C=K.KAPLAN_ALPHA_C_MIN):
    """L(C_min) = (C_c / C)^alpha_C: compute-efficient frontier, Eq. (1.3) (C, C_c same units)."""
    return (C_c / np.asarray(C, dtype=float)) ** alpha_C


def kaplan_nd(N, D, N_c=K.KAPLAN_N_C, D_c=K.KAPLAN_D_C, alpha_N=K.KAPLAN_ALPHA_N,
              alpha_D=K.KAPLAN_ALPHA_D):
    """L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D, Eq. (1.5)."""
    N = np.asarray(N, dtype=float)
    D = np.asarray(D, dtype=float)
    return ((N_c / N) ** (alpha_N / alpha_D) + D_c / D) ** alpha_D


# --- Hoffmann et al. 2022, arXiv:2203.15556 ---------------------------------------------------
def chinchilla(N, D, E, A, B, alpha, beta):
    """L(N, D) = E + A / N^alpha + B / D^beta, Hoffmann et al. 2022, Eq. (2)."""
    N = np.asarray(N, dtype=float)
    D = np.asarray(D, dtype=float)
    return E + A / N**alpha + B / D**beta


def n_opt_for_tokens(D, A, B, alpha, beta):
    """N at which D tokens are compute-optimal under C = 6ND (inverse of D_opt(C)).

    With G = (alpha A / (beta B))^(1/(alpha+beta)), Hoffmann Eq. (4) gives
    N_opt = G (C/6)^(beta/(alpha+beta)) and D_opt = G^-1 (C/6)^(alpha/(alpha+beta)), so
    D_opt = D  <=>  N_opt = G (G D)^(beta/alpha) (the ``D_to_N`` of Muennighoff et al. 2023).
    """
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    return G * (G * np.asarray(D, dtype=float)) ** (beta / alpha)


# --- Muennighoff et al. 2023, arXiv:2305.16264 ------------------------------------------------
def effective_data(D, U, R_D_star):
    """D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*)), R_D = max(D/U - 1, 0): Eq. (5)."""
    U = np.asarray(U, dtype=float)
    R_D = np.maximum(np.asarray(D, dtype=float) / U - 1.0, 0.0)
    return U + U * R_D_star * (1.0 - np.exp(-R_D / R_D_star))


def effective_params(N, U_N, R_N_star):
    """N' = U_N + U_N R_N* (1 - exp(-R_N / R_N*)), R_N = max(N/U_N - 1, 0): Eq. (6)."""
    U_N = np.asarray(U_N, dtype=float)
    R_N = np.maximum(np.asarray(N, dtype=float) / U_N - 1.0, 0.0)
    return U_N + U_N * R_N_star * (1.0 - np.exp(-R_N / R_N_star))


def data_constrained(N, D, U, E, A, B, alpha, beta, R_D_star, R_N_star):
    """Data-constrained loss L(N, D, U), Muennighoff et al. 2023, Eq. (7).

    L = E + A / N'^alpha + B / D'^beta with D' = effective_data(D, U, R_D*) and
    N' = effective_params(N, U_N, R_N*), U_N = min(N, N_opt at which U tokens are
    compute-optimal) (:func:`n_opt_for_tokens`): parameters beyond what the unique data
    can use decay in value like repeated tokens do.
    """
    N = np.asarray(N, dtype=float)
    U_N = np.minimum(N, n_opt_for_tokens(U, A, B, alpha, beta))
    N_eff = effective_params(N, U_N, R_N_star)
    D_eff = effective_data(D, U, R_D_star)
    return E + A / N_eff**alpha + B / D_eff**beta


# --- Compute-saturating law (e.g. Porian et al. 2024, arXiv:2406.19146, Sec. 3) --------------
def saturating_power_law(C, E, A, alpha):
    """L(C) = E + A C^-alpha: loss of the compute-optimal model vs compute."""
    return E + A * np.asarray(C, dtype=float) ** (-alpha)


def offset_n(N, E, A, alpha):
    """L(N) = E + A N^-alpha: loss vs parameters with an irreducible term (Hoffmann Eq. (2), D -> inf)."""
    return E + A * np.asarray(N, dtype=float) ** (-alpha)


def offset_d(D, E, A, alpha):
    """L(D) = E + A D^-alpha: loss vs tokens with an irreducible term (Hoffmann Eq. (2), N -> inf)."""
    return E + A * np.asarray(D, dtype=float) ** (-alpha)


# --- Hyperparameter laws ----------------------------------------------------------------------
def lr_opt(N, D, c=K.STEP_LAW_LR_COEF, a=K.STEP_LAW_LR_N_EXP, b=K.STEP_LAW_LR_D_EXP):
    """Optimal peak learning rate eta(N, D) = c N^a D^b (Step Law, Li et al. 2025, Eq. (1))."""
    return c * np.asarray(N, dtype=float) ** a * np.asarray(D, dtype=float) ** b


def bs_opt(D, d=K.STEP_LAW_BS_COEF, g=K.STEP_LAW_BS_D_EXP):
    """Optimal batch size (tokens) B(D) = d D^g (Step Law, Li et al. 2025, Eq. (2))."""
    return d * np.asarray(D, dtype=float) ** g


def deepseek_lr_opt(C, c=K.DEEPSEEK_LR_COEF, a=K.DEEPSEEK_LR_C_EXP):
    """Optimal learning rate eta(C) = c C^a (DeepSeek LLM 2024, Eq. (1))."""
    return c * np.asarray(C, dtype=float) ** a


def deepseek_bs_opt(C, d=K.DEEPSEEK_BS_COEF, g=K.DEEPSEEK_BS_C_EXP):
    """Optimal batch size (tokens) B(C) = d C^g (DeepSeek LLM 2024, Eq. (1))."""
    return d * np.asarray(C, dtype=float) ** g

