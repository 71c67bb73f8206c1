"""Schedule-aware laws: the loss at every step of a run from its learning-rate schedule.

* ``multi_power`` (Luo et al. 2025, "A Multi-Power Law for Loss Curve Prediction Across
  Learning Rate Schedules", arXiv:2503.12811, the multi-power law of Sec. 3):

      L(t) = L0 + A (S1(t) + S_W)^-alpha - B sum_{k=1..t} (eta_{k-1} - eta_k) G(eta_k^-gamma S_k(t)),
      G(x) = 1 - (C x + 1)^-beta,   S_k(t) = sum_{tau=k..t} eta_tau.

* ``lr_annealing`` (Tissue et al. 2024, "Scaling Law with Learning Rate Annealing",
  arXiv:2408.11029, Eq. (1)): L(t) = L0 + A S1(t)^-alpha - C S2(t), S2 the momentum-smoothed
  annealing area (decay 0.999). The baseline the multi-power paper compares against.

The features (areas, binned drops, S2) are computed once per curve on the host by
:mod:`scaling.schedule_features`; the laws here are their JAX forms, evaluated in float64
inside the fit. Learning rates are in units of ``eta_ref`` (the largest fitted LR) inside,
so the start grid does not depend on the LR's units; ``to_params`` gives the published
parametrisation in the caller's LR units: A = A' eta_ref^alpha, B = B' / eta_ref
(B' = e^b / beta),
C = C' eta_ref^(gamma - 1) (multi-power) and C = C' / eta_ref (lr_annealing).

The loss-drop sum in the fast form: for point t and bin j (of :func:`drop_features`), with
s_j = softplus(log C' - gamma log eta'_j + log S'_j) = log(1 + C' eta'_j^-gamma S'_j),
G_j = 1 - e^(-beta s_j) = 1 - (1 + C' eta'^-gamma S')^-beta, summed with the bin weights: O(m J)
per evaluation, J ~ 100 bins instead of t steps. The coordinate b is log(B' beta) and the
sum is of G_j / beta (smooth through beta = 0, where it is s_j): B and beta trade off when
beta is small, and in these coordinates that is no narrow valley for BFGS.

Axis letters: m evaluation points, J drop bins per point, q law coordinates, s starts.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from scaling.schedule_features import annealing_area, drop_features, lr_area


@dataclass(frozen=True)
class CurveLaw:
    """One schedule-aware law.

    Attributes:
      name, citation: registry key and paper.
      theta_names: optimiser coordinates [q] (log of positive parameters, LRs in eta_ref units;
        multi_power's b is log(B' beta)).
      param_names: published parameters.
      log_form: (theta [q], x {feature: [m] or [m, J]}) -> log predicted loss [m] (JAX).
      features: (eta [T], steps [m], eta_ref, resolution) -> {feature: array} (NumPy).
      to_params: (theta [..., q], eta_ref) -> {param: [...]}; from_params: inverse.
      grid: {theta name: start values} given the data scale (see :func:`start_grid`).
    """

    name: str
    citation: str
    theta_names: tuple[str, ...]
    param_names: tuple[str, ...]
    log_form: Callable
    features: Callable
    to_params: Callable
    from_params: Callable
    grid: Callable


# --- multi-power law ----------------------------------------------------------------------------
def _mpl_log_form(theta, x):
    e, a, alpha, b, c, beta, gamma = (theta[i] for i in range(7))
    s = jax.nn.softplus(c - gamma * x["log_lr"] + x["log_gap"])  # log(1 + C' eta'^-gamma S')
    # G / beta = (1 - e^(-beta s)) / beta, smooth through beta = 0 (-> s): b = log(B' beta)
    # carries the drop term's size, so a small beta with a large B is no narrow valley
    u = beta * s
    small = jnp.abs(u) < 1e-6
    u_safe = jnp.where(small, 1.0, u)
    g_over_beta = s * jnp.where(small, 1.0 - 0.5 * u, -jnp.expm1(-u_safe) / u_safe)
    drop = jnp.exp(b) * jnp.sum(x["drop"] * g_over_beta, axis=-1)
    return jnp.log(jnp.exp(e) + jnp.exp(a - alpha * x["log_area"]) - drop)


def _mpl_features(eta, steps, eta_ref, resolution):
    drop, log_lr, log_gap = drop_features(eta, steps, eta_ref, resolution)
    eta = np.asarray(eta, dtype=np.float64) / eta_ref
    return {"log_area": np.log(lr_area(eta)[steps]), "drop": drop, "log_lr": log_lr,
            "log_gap": log_gap, "lr_now": eta[steps]}


def _mpl_to_params(theta, eta_ref):
    th = np.asarray(theta, dtype=np.float64)
    alpha, gamma = th[..., 2], th[..., 6]
    return {"L0": np.exp(th[..., 0]), "A": np.exp(th[..., 1]) * eta_ref ** alpha, "alpha": alpha,
            "B": np.exp(th[..., 3]) / th[..., 5] / eta_ref,
            "C": np.exp(th[..., 4]) * eta_ref ** (gamma - 1.0), "beta": th[..., 5], "gamma": gamma}


def _mpl_from_params(p, eta_ref):
    return np.array([np.log(p["L0"]), np.log(p["A"] / eta_ref ** p["alpha"]), p["alpha"],
                     np.log(p["B"] * p["beta"] * eta_ref),
                     np.log(p["C"] / eta_ref ** (p["gamma"] - 1.0)),
                     p["beta"], p["gamma"]], dtype=np.float64)


def _mpl_grid(scale):
    return {"e": np.log(scale["loss_min"] * np.array([0.6, 0.9])), "alpha": (0.3, 0.6),
            "b": np.log(scale["loss_min"] * np.array([0.005, 0.05])), "c": np.log([0.1, 1.0]),
            "beta": (0.5,), "gamma": (0.5,)}


# --- Tissue et al. 2024 ---------------------------------------------------------------------------
def _lra_log_form(theta, x):
    e, a, alpha, c = (theta[i] for i in range(4))
    return jnp.log(jnp.exp(e) + jnp.exp(a - alpha * x["log_area"]) - jnp.exp(c) * x["anneal"])


def _lra_features(eta, steps, eta_ref, resolution):
    del resolution  # S2 is exact: one recursion over the steps
    return {"log_area": np.log(lr_area(np.asarray(eta) / eta_ref)[steps]),
            "anneal": annealing_area(eta, steps, eta_ref)}


def _lra_to_params(theta, eta_ref):
    th = np.asarray(theta, dtype=np.float64)
    alpha = th[..., 2]
    return {"L0": np.exp(th[..., 0]), "A": np.exp(th[..., 1]) * eta_ref ** alpha, "alpha": alpha,
            "C": np.exp(th[..., 3]) / eta_ref}


def _lra_from_params(p, eta_ref):
    return np.array([np.log(p["L0"]), np.log(p["A"] / eta_ref ** p["alpha"]), p["alpha"],
                     np.log(p["C"] * eta_ref)], dtype=np.float64)


def _lra_grid(scale):
    return {"e": np.log(scale["loss_min"] * np.array([0.6, 0.9])), "alpha": (0.3, 0.6),
            "c": np.log(scale["loss_min"] * np.array([1e-4, 1e-3, 1e-2]))}


CURVE_LAWS: dict[str, CurveLaw] = {
    "multi_power": CurveLaw(
        name="multi_power", citation="Luo et al. 2025, arXiv:2503.12811 (multi-power law)",
        theta_names=("e", "a", "alpha", "b", "c", "beta", "gamma"),
        param_names=("L0", "A", "alpha", "B", "C", "beta", "gamma"),
        log_form=_mpl_log_form, features=_mpl_features, to_params=_mpl_to_params,
        from_params=_mpl_from_params, grid=_mpl_grid),
    "lr_annealing": CurveLaw(
        name="lr_annealing", citation="Tissue et al. 2024, arXiv:2408.11029, Eq. (1)",
        theta_names=("e", "a", "alpha", "c"), param_names=("L0", "A", "alpha", "C"),
        log_form=_lra_log_form, features=_lra_features, to_params=_lra_to_params,
        from_params=_lra_from_params, grid=_lra_grid),
}


def get_curve_law(law: str | CurveLaw) -> CurveLaw:
    """The :class:`CurveLaw` named ``law`` (or ``law`` itself)."""
    if isinstance(law, CurveLaw):
        return law
    if law not in CURVE_LAWS:
        raise ValueError(f"law={law!r}: schedule-aware laws are {sorted(CURVE_LAWS)}")
    return CURVE_LAWS[law]


def start_grid(law: CurveLaw, log_area: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Starting points [s, q]: the law's grid, with log A' chosen per start to meet the data.

    Given L0 and alpha of a start, A' = (median loss - L0) S'_med^alpha puts the power-law
    term through the median point (S'_med its LR area): the data set the scale, so the grid
    holds for any loss level and LR unit.
    """
    axes = law.grid({"loss_min": float(np.min(loss))})
    names = [t for t in law.theta_names if t != "a"]
    rows = []
    med = int(np.argsort(log_area)[len(log_area) // 2])
    for values in itertools.product(*(np.atleast_1d(axes[t]) for t in names)):
        th = dict(zip(names, values))
        gap = max(float(loss[med]) - float(np.exp(th["e"])), 1e-3 * float(np.min(loss)))
        th["a"] = np.log(gap) + th["alpha"] * float(log_area[med])
        rows.append([th[t] for t in law.theta_names])
    return np.asarray(rows, dtype=np.float64)


@functools.lru_cache(maxsize=8)
def _batched(log_form):
    """log_form vmapped over theta rows, jitted once per law (and feature shapes)."""
    return jax.jit(jax.vmap(log_form, in_axes=(0, None)))


def evaluate(law: CurveLaw, theta, x: dict[str, np.ndarray]) -> np.ndarray:
    """Predicted loss [m] (or [n, m] for theta [n, q]) at features ``x``, float64."""
    theta = np.asarray(theta, dtype=np.float64)
    f = _batched(law.log_form)
    with jax.enable_x64(True):
        xj = {k: jnp.asarray(v, jnp.float64) for k, v in x.items()}
        rows = np.atleast_2d(theta)
        out = np.concatenate([np.asarray(f(jnp.asarray(rows[i:i + 64]), xj))
                              for i in range(0, len(rows), 64)])
    out = np.exp(out)
    return out[0] if theta.ndim == 1 else out
