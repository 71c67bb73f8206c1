"""Fittable law specifications: parameters, log-space form, init grids, derived quantities.

A :class:`LawSpec` is what :func:`scaling.fit.fit_law` needs to fit a law from
:mod:`scaling.laws`: the table variables it reads, the optimiser coordinates ``theta``
(log-space where a parameter must be positive, as in Hoffmann et al. 2022, Appendix D.2),
the log of the predicted loss as a JAX function of ``theta``, the maps between ``theta`` and
the published (natural) parameters, and named grids of starting points.

Axis letters: m data points, p optimiser coordinates, s starts or bootstrap samples.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from scaling import constants as K
from scaling import laws


def _lse(*terms):
    """log(sum_k exp(terms[k])) of 2 or 3 same-shape arrays (the laws' log-sum-exp forms)."""
    return _lse2(*terms) if len(terms) == 2 else _lse3(*terms)


# A fit spends most of its time in these two functions (once per start, point and step).
# Written as hi + log(1 + sum of exp(other - hi)) with the largest term picked by comparisons,
# they need one exponential fewer than exponentiating every term (exp(hi - hi) = 1); the
# custom JVP gives the exact softmax weights, also at ties (where min/max gradients would not).
@jax.custom_jvp
def _lse2(x, y):
    return _lse2_parts(x, y)[0]


def _lse2_parts(x, y):
    x_hi = x >= y
    hi, lo = jnp.where(x_hi, x, y), jnp.where(x_hi, y, x)
    e = jnp.exp(lo - hi)
    return hi + jnp.log(1.0 + e), x_hi, e


@_lse2.defjvp
def _lse2_jvp(primals, tangents):
    out, x_hi, e = _lse2_parts(*primals)
    dx, dy = tangents
    d_hi, d_lo = jnp.where(x_hi, dx, dy), jnp.where(x_hi, dy, dx)
    return out, (d_hi + e * d_lo) / (1.0 + e)


@jax.custom_jvp
def _lse3(x, y, z):
    return _lse3_parts(x, y, z)[0]


def _lse3_parts(x, y, z):
    x_hi = (x >= y) & (x >= z)
    z_hi = ~x_hi & (z > y)
    hi = jnp.where(x_hi, x, jnp.where(z_hi, z, y))
    o1, o2 = jnp.where(x_hi, y, x), jnp.where(z_hi, y, z)  # the other two terms
    e1, e2 = jnp.exp(o1 - hi), jnp.exp(o2 - hi)
    return hi + jnp.log(1.0 + e1 + e2), x_hi, z_hi, e1, e2


@_lse3.defjvp
def _lse3_jvp(primals, tangents):
    out, x_hi, z_hi, e1, e2 = _lse3_parts(*primals)
    dx, dy, dz = tangents
    d_hi = jnp.where(x_hi, dx, jnp.where(z_hi, dz, dy))
    d1, d2 = jnp.where(x_hi, dy, dx), jnp.where(z_hi, dy, dz)
    return out, (d_hi + e1 * d1 + e2 * d2) / (1.0 + e1 + e2)


@dataclass(frozen=True)
class LawSpec:
    """One fittable law.

    Attributes:
      name: registry key (``fit_law(law=name)``).
      citation: paper and equation.
      variables: table variables the law reads, e.g. ("N", "D").
      theta_names: optimiser coordinates, length p.
      param_names: natural (published) parameter names, e.g. ("E", "A", "B", "alpha", "beta").
      log_form: (theta [p], logx {var: [m]}) -> log predicted loss [m], in JAX.
      to_params: theta [..., p] (NumPy) -> {param: [...]}.
      from_params: {param: float} -> theta [p]; must accept exactly ``param_names``.
      predict: ({param: float}, {var: [m]}) -> loss [m], the readable form in laws.py.
      grids: name -> {theta name: tuple of starting values}; the product is the grid.
      derived: optional ({param: [s]}, budgets C) -> {name: [s]} (e.g. N_opt at C).
      theta_of: param name -> the theta coordinate that carries it (for fixing parameters).
    """

    name: str
    citation: str
    variables: tuple[str, ...]
    theta_names: tuple[str, ...]
    param_names: tuple[str, ...]
    log_form: Callable
    to_params: Callable
    from_params: Callable
    predict: Callable
    grids: Mapping[str, Mapping[str, tuple[float, ...]]] = field(default_factory=dict)
    derived: Callable | None = None
    theta_of: Mapping[str, str] | None = None

    def __post_init__(self):
        if self.theta_of is not None and (set(self.theta_of) != set(self.param_names) or not set(
                self.theta_of.values()) <= set(self.theta_names)):
            raise ValueError(f"theta_of={dict(self.theta_of)!r}: must map each of "
                             f"{self.param_names} to one of {self.theta_names}")
        for gname, grid in self.grids.items():
            if set(grid) != set(self.theta_names):
                raise ValueError(f"grids[{gname!r}] keys {sorted(grid)}: must be exactly "
                                 f"theta_names {sorted(self.theta_names)}")

    def grid(self, name: str) -> np.ndarray:
        """The starting points of grid ``name`` as theta rows [s, p]."""
        if name not in self.grids:
            raise ValueError(f"init_grid={name!r}: law {self.name!r} has grids {sorted(self.grids)}")
        axes = [self.grids[name][t] for t in self.theta_names]
        return np.array(list(itertools.product(*axes)), dtype=np.float64)


# --- Chinchilla -------------------------------------------------------------------------------
def _chinchilla_log_form(theta, x):
    a, b, e, alpha, beta = theta[0], theta[1], theta[2], theta[3], theta[4]
    return _lse(a - alpha * x["N"], b - beta * x["D"], jnp.broadcast_to(e, x["N"].shape))


def _chinchilla_to_params(theta):
    theta = np.asarray(theta, dtype=np.float64)
    return {"E": np.exp(theta[..., 2]), "A": np.exp(theta[..., 0]), "B": np.exp(theta[..., 1]),
            "alpha": theta[..., 3], "beta": theta[..., 4]}


def _chinchilla_from_params(p):
    return np.array([np.log(p["A"]), np.log(p["B"]), np.log(p["E"]), p["alpha"], p["beta"]])


def _chinchilla_derived(p, budgets=()):
    alpha, beta = np.asarray(p["alpha"]), np.asarray(p["beta"])
    with np.errstate(all="ignore"):
        out = {"a=beta/(alpha+beta)": beta / (alpha + beta),
               "b=alpha/(alpha+beta)": alpha / (alpha + beta)}
        for c in budgets:
            n, d = laws.chinchilla_allocation(c, p["A"], p["B"], alpha, beta)
            out[f"N_opt(C={c:.3g})"] = n
            out[f"D_opt(C={c:.3g})"] = d
    return out


CHINCHILLA = LawSpec(
    name="chinchilla",
    citation="Hoffmann et al. 2022, arXiv:2203.15556, Eq. (2) and Appendix D.2",
    variables=("N", "D"),
    theta_names=("a", "b", "e", "alpha", "beta"),
    param_names=("E", "A", "B", "alpha", "beta"),
    log_form=_chinchilla_log_form,
    to_params=_chinchilla_to_params,
    from_params=_chinchilla_from_params,
    predict=lambda p, x: laws.chinchilla(x["N"], x["D"], **p),
    grids={
        "hoffmann": K.HOFFMANN_GRID,
        "small": {"a": (0.0, 10.0, 20.0), "b": (0.0, 10.0, 20.0), "e": (-1.0, 0.0, 1.0),
                  "alpha": (0.0, 0.5, 1.0), "beta": (0.0, 0.5, 1.0)},
    },
    derived=_chinchilla_derived,
    theta_of={"E": "e", "A": "a", "B": "b", "alpha": "alpha", "beta": "beta"},
)


# --- Chinchilla with alpha = beta (Muennighoff et al. 2023, C4 fit; Gadre et al. 2024) -------
def _tied_log_form(theta, x):
    return _chinchilla_log_form(jnp.concatenate([theta, theta[3:4]]), x)


def _tied_to_params(theta):
    theta = np.asarray(theta, dtype=np.float64)
    return {"E": np.exp(theta[..., 2]), "A": np.exp(theta[..., 0]), "B": np.exp(theta[..., 1]),
            "alpha": theta[..., 3]}


def _tied_derived(p, budgets=()):
    return _chinchilla_derived({**p, "beta": p["alpha"]}, budgets)


CHINCHILLA_TIED = LawSpec(
    name="chinchilla_tied",
    citation="Hoffmann et al. 2022 Eq. (2) with alpha = beta (Muennighoff et al. 2023, "
             "arXiv:2305.16264, App. C4 fit; Gadre et al. 2024, arXiv:2403.08540, Eq. (4))",
    variables=("N", "D"),
    theta_names=("a", "b", "e", "alpha"),
    param_names=("E", "A", "B", "alpha"),
    log_form=_tied_log_form,
    to_params=_tied_to_params,
    from_params=lambda p: np.array([np.log(p["A"]), np.log(p["B"]), np.log(p["E"]), p["alpha"]]),
    predict=lambda p, x: laws.chinchilla(x["N"], x["D"], beta=p["alpha"], **p),
    grids={"hoffmann": {k: v for k, v in K.HOFFMANN_GRID.items() if k != "beta"}},
    derived=_tied_derived,
    theta_of={"E": "e", "A": "a", "B": "b", "alpha": "alpha"},
)


# --- Muennighoff et al. 2023 data-constrained law ---------------------------------------------
def _dc_log_form(theta, x):
    a, b, e, alpha, beta, log_rd, log_rn = (theta[i] for i in range(7))
    r_d, r_n = jnp.exp(log_rd), jnp.exp(log_rn)
    inv_r_d, inv_r_n = jnp.exp(-log_rd), jnp.exp(-log_rn)  # per start: no per-point division
    tiny = 1e-12
    # U_N = min(N, N_opt(U)): log G = (log(alpha A) - log(beta B)) / (alpha + beta).
    log_g = (jnp.log(jnp.maximum(alpha, tiny)) + a - jnp.log(jnp.maximum(beta, tiny)) - b) / (
        alpha + beta)
    log_n_opt_u = log_g + (beta / jnp.maximum(alpha, tiny)) * (log_g + x["U"])
    log_un = jnp.minimum(x["N"], log_n_opt_u)
    r_n_rep = jnp.expm1(x["N"] - log_un)
    log_n_eff = log_un + jnp.log1p(r_n * -jnp.expm1(-r_n_rep * inv_r_n))
    r_d_rep = jnp.maximum(jnp.exp(x["D"] - x["U"]) - 1.0, 0.0)
    log_d_eff = x["U"] + jnp.log1p(r_d * -jnp.expm1(-r_d_rep * inv_r_d))
    return _lse(a - alpha * log_n_eff, b - beta * log_d_eff, jnp.broadcast_to(e, x["N"].shape))


def _dc_to_params(theta):
    theta = np.asarray(theta, dtype=np.float64)
    return {**_chinchilla_to_params(theta[..., :5]), "R_D_star": np.exp(theta[..., 5]),
            "R_N_star": np.exp(theta[..., 6])}


def _dc_from_params(p):
    return np.concatenate([_chinchilla_from_params(p),
                           [np.log(p["R_D_star"]), np.log(p["R_N_star"])]])


DATA_CONSTRAINED = LawSpec(
    name="data_constrained",
    citation="Muennighoff et al. 2023, arXiv:2305.16264, Eqs. (5)-(7)",
    variables=("N", "D", "U"),
    theta_names=("a", "b", "e", "alpha", "beta", "log_R_D_star", "log_R_N_star"),
    param_names=("E", "A", "B", "alpha", "beta", "R_D_star", "R_N_star"),
    log_form=_dc_log_form,
    to_params=_dc_to_params,
    from_params=_dc_from_params,
    predict=lambda p, x: laws.data_constrained(x["N"], x["D"], x["U"], **p),
    grids={
        "default": {"a": (0.0, 5.0, 10.0, 15.0, 20.0), "b": (0.0, 5.0, 10.0, 15.0, 20.0),
                    "e": (-1.0, 0.0, 1.0), "alpha": (0.25, 0.5), "beta": (0.25, 0.5),
                    "log_R_D_star": tuple(np.log([5.0, 15.0, 50.0])),
                    "log_R_N_star": tuple(np.log([2.0, 5.0, 15.0]))},
        # the published Chinchilla grid x R* values: 25,920 starts (by name only; slow)
        "wide": {**{k: v for k, v in K.HOFFMANN_GRID.items() if k not in ("alpha", "beta")},
                     "alpha": (0.5, 1.0, 1.5, 2.0), "beta": (0.5, 1.0, 1.5, 2.0),
                     "log_R_D_star": tuple(np.log([5.0, 15.0, 50.0])),
                     "log_R_N_star": tuple(np.log([2.0, 5.0, 15.0]))},
    },
    derived=lambda p, budgets=(): _chinchilla_derived(p, budgets),
    theta_of={"E": "e", "A": "a", "B": "b", "alpha": "alpha", "beta": "beta",
              "R_D_star": "log_R_D_star", "R_N_star": "log_R_N_star"},
)


# --- Kaplan et al. 2020 -------------------------------------------------------------------------
def _kaplan_single(var: str, scale: str, expo: str, eq: str) -> LawSpec:
    fn = {"N": laws.kaplan_n, "D": laws.kaplan_d, "C": laws.kaplan_c}[var]
    log_scale = f"log_{scale}"
    return LawSpec(
        name=f"kaplan_{var.lower()}",
        citation=f"Kaplan et al. 2020, arXiv:2001.08361, {eq}",
        variables=(var,),
        theta_names=(log_scale, expo),
        param_names=(scale, expo),
        log_form=lambda theta, x: theta[1] * (theta[0] - x[var]),
        to_params=lambda theta: {scale: np.exp(np.asarray(theta)[..., 0]),
                                 expo: np.asarray(theta)[..., 1]},
        from_params=lambda p: np.array([np.log(p[scale]), p[expo]]),
        predict=lambda p, x: fn(x[var], p[scale], p[expo]),
        grids={"default": {log_scale: (10.0, 20.0, 30.0, 40.0, 50.0),
                           expo: (0.02, 0.05, 0.1, 0.2, 0.5)}},
        theta_of={scale: log_scale, expo: expo},
    )


def _kaplan_nd_log_form(theta, x):
    log_nc, log_dc, alpha_n, alpha_d = theta[0], theta[1], theta[2], theta[3]
    return alpha_d * _lse((alpha_n / alpha_d) * (log_nc - x["N"]), log_dc - x["D"])


KAPLAN_ND = LawSpec(
    name="kaplan_nd",
    citation="Kaplan et al. 2020, arXiv:2001.08361, Eq. (1.5)",
    variables=("N", "D"),
    theta_names=("log_N_c", "log_D_c", "alpha_N", "alpha_D"),
    param_names=("N_c", "D_c", "alpha_N", "alpha_D"),
    log_form=_kaplan_nd_log_form,
    to_params=lambda t: {"N_c": np.exp(np.asarray(t)[..., 0]), "D_c": np.exp(np.asarray(t)[..., 1]),
                         "alpha_N": np.asarray(t)[..., 2], "alpha_D": np.asarray(t)[..., 3]},
    from_params=lambda p: np.array([np.log(p["N_c"]), np.log(p["D_c"]), p["alpha_N"],
                                    p["alpha_D"]]),
    predict=lambda p, x: laws.kaplan_nd(x["N"], x["D"], **p),
    grids={"default": {"log_N_c": (10.0, 20.0, 30.0, 40.0), "log_D_c": (10.0, 20.0, 30.0, 40.0),
                       "alpha_N": (0.05, 0.1, 0.3), "alpha_D": (0.05, 0.1, 0.3)}},
    theta_of={"N_c": "log_N_c", "D_c": "log_D_c", "alpha_N": "alpha_N", "alpha_D": "alpha_D"},
)


# --- Power laws with an offset: L(x) = E + A x^-alpha for x in C, N or D ---------------------
def _offset_law(var: str, name: str, citation: str, grids) -> LawSpec:
    fn = {"C": laws.saturating_power_law, "N": laws.offset_n, "D": laws.offset_d}[var]
    return LawSpec(
        name=name,
        citation=citation,
        variables=(var,),
        theta_names=("a", "e", "alpha"),
        param_names=("E", "A", "alpha"),
        log_form=lambda t, x: _lse(t[0] - t[2] * x[var], jnp.broadcast_to(t[1], x[var].shape)),
        to_params=lambda t: {"E": np.exp(np.asarray(t)[..., 1]), "A": np.exp(np.asarray(t)[..., 0]),
                             "alpha": np.asarray(t)[..., 2]},
        from_params=lambda p: np.array([np.log(p["A"]), np.log(p["E"]), p["alpha"]]),
        predict=lambda p, x: fn(x[var], **p),
        grids=grids,
        theta_of={"E": "e", "A": "a", "alpha": "alpha"},
    )


_OFFSET_GRID = {"default": {"a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0), "e": (-1.0, 0.0, 1.0),
                            "alpha": (0.1, 0.3, 0.6, 1.0)}}
SATURATING = _offset_law(
    "C", "saturating",
    "L(C) = E + A C^-alpha; fit recipe of Porian et al. 2024, arXiv:2406.19146, Sec. 3",
    {"porian": {"alpha": (0.0, 0.1, 0.2, 0.3), "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
                "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)}})
OFFSET_N = _offset_law(
    "N", "offset_n", "L(N) = E + A N^-alpha: Kaplan et al. 2020 Eq. (1.1) with the irreducible "
    "loss of Hoffmann et al. 2022 Eq. (2) (the D -> infinity limit)", _OFFSET_GRID)
OFFSET_D = _offset_law(
    "D", "offset_d", "L(D) = E + B D^-beta written E + A D^-alpha: Kaplan et al. 2020 Eq. (1.2) "
    "with the irreducible loss of Hoffmann et al. 2022 Eq. (2) (the N -> infinity limit)",
    _OFFSET_GRID)


LAWS: dict[str, LawSpec] = {
    spec.name: spec
    for spec in (
        CHINCHILLA,
        CHINCHILLA_TIED,
        DATA_CONSTRAINED,
        _kaplan_single("N", "N_c", "alpha_N", "Eq. (1.1)"),
        _kaplan_single("D", "D_c", "alpha_D", "Eq. (1.2)"),
        _kaplan_single("C", "C_c", "alpha_C", "Eq. (1.3)"),
        KAPLAN_ND,
        SATURATING,
        OFFSET_N,
        OFFSET_D,
    )
}


def get_law(law: str | LawSpec) -> LawSpec:
    """The :class:`LawSpec` named ``law`` (or ``law`` itself)."""
    if isinstance(law, LawSpec):
        return law
    if law not in LAWS:
        raise ValueError(f"law={law!r}: must be one of {sorted(LAWS)}")
    return LAWS[law]


def default_grid(spec: LawSpec) -> str:
    """The grid used for ``init_grid="hoffmann"`` when the law has no such grid."""
    return "hoffmann" if "hoffmann" in spec.grids else next(iter(spec.grids))
