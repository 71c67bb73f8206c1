"""Per-point features of a learning-rate schedule for the schedule-aware laws.

A curve is the loss at some evaluation steps t of one run; its schedule is the learning rate
eta_tau at EVERY step tau = 0, 1, ... (index 0 is the first update). The laws read:

* the LR area S(t) = sum_{tau=0..t} eta_tau. It is S1(t) + S_W of Luo et al. 2025
  (arXiv:2503.12811, the multi-power law: S_W the warmup area, S1 the area after it) and the
  forward area S1 of Tissue et al. 2024 (arXiv:2408.11029, Eq. (1)).
* the drops d_k = eta_{k-1} - eta_k (k >= 1) and, for each, the area after it
  S_k(t) = sum_{tau=k..t} eta_tau = S(t) - S(k-1) (the "cumulative-sum form": O(1) per pair).
  The multi-power law's loss-drop term sums B d_k G(eta_k^-gamma S_k(t)) over k <= t.
  Every k counts, the warmup's rises too (with d_k < 0): that is the authors' released code
  (github.com/thu-yao-01-luo/MultiPowerLaw, ``src/models.py``), which produced the published
  parameters (``tests/scaling/test_curves_published.py`` checks they reproduce the published
  errors only this way). A constant stretch has d_k = 0 and costs nothing.
* the annealing area S2(t) = sum_{i<=t} m_i, m_i = lam m_{i-1} + d_i (Tissue et al. 2024,
  Eq. (1) and the momentum form of S2, lam = 0.999), over the drops after the schedule's
  peak (the warmup is not annealing; a later rise counts negatively, as their re-warming).

Fast form of the drop sum. For one evaluation step t the pairs (k, t) are grouped into bins
of the distance n = t - k + 1: one bin per step for n <= 1/resolution, then bins whose
width is ``resolution`` times their distance (so ~(1 + ln(resolution T)) / resolution bins
per point instead of T steps). Rises and drops go to separate bins. A bin is replaced by
one pair at its drop-weighted centroid: weight sum_k d_k, log-LR mean_d log eta_k, area
S(t) - mean_d S(k-1), all from prefix sums. The rule is exact for a bin of one step or one
drop (constant, step and two-stage schedules are exact) and second-order in the bin width
otherwise (``resolution`` 0 makes every bin one step: exact everywhere). LR values are
divided by ``eta_ref`` (the largest fitted LR), so the laws' internal coordinates do not
depend on the LR's units.

Axis letters: T schedule steps, m evaluation points, J bins per point.
"""

from __future__ import annotations

import numpy as np

DEFAULT_RESOLUTION = 0.1  # bin width / distance; error ~1e-6 of the loss on the published curves
ANNEALING_DECAY = 0.999  # Tissue et al. 2024: the momentum decay factor lambda of S2
LEVEL = 0.25  # log-LR width of the levels a bin may not cross (a factor 1.28)
_TINY = 1e-30  # floor of normalised LRs and areas (log 0 = -inf would give 0 * inf = NaN)


def check_schedule(eta, steps, run="") -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 LRs [T] and int evaluation steps [m]; ValueError naming ``run``.

    The LRs must be finite and >= 0 with at least one > 0; the steps integers in [0, T),
    strictly increasing.
    """
    where = f"run {run!r}: " if run != "" else ""
    eta = np.asarray(eta, dtype=np.float64).ravel()
    steps_f = np.asarray(steps, dtype=np.float64).ravel()
    if eta.size == 0 or not np.all(np.isfinite(eta)) or np.any(eta < 0) or not np.any(eta > 0):
        raise ValueError(f"{where}learning rates must be finite, >= 0 and not all 0")
    if steps_f.size == 0:
        raise ValueError(f"{where}no evaluation steps")
    if not np.all(np.isfinite(steps_f)) or np.any(steps_f != np.round(steps_f)):
        raise ValueError(f"{where}steps must be integers")
    steps_i = steps_f.astype(np.int64)
    if np.any(np.diff(steps_i) <= 0):
        bad = int(np.argmax(np.diff(steps_i) <= 0))
        raise ValueError(f"{where}steps must be strictly increasing (step {steps_i[bad + 1]} "
                         f"follows {steps_i[bad]})")
    if steps_i[0] < 0 or steps_i[-1] >= eta.size:
        raise ValueError(f"{where}steps must lie in [0, {eta.size}) (the learning rates given); "
                         f"got {steps_i[0]}..{steps_i[-1]}")
    return eta, steps_i


def lr_area(eta) -> np.ndarray:
    """S(t) = sum_{tau=0..t} eta_tau [T] (S1(t) + S_W of Luo et al. 2025)."""
    return np.cumsum(np.asarray(eta, dtype=np.float64))


def _bin_edges(t_max: int, resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """Distance bins [lo, hi) [J]: single steps up to 1/resolution, then width = resolution * lo."""
    if resolution <= 0:
        lo = np.arange(1, t_max + 1)
        return lo, lo + 1
    n0 = int(np.ceil(1.0 / resolution))
    edges = list(range(1, min(n0, t_max) + 2))
    while edges[-1] <= t_max:
        edges.append(max(edges[-1] + 1, int(np.ceil(edges[-1] * (1.0 + resolution)))))
    edges = np.asarray(edges, dtype=np.int64)
    return edges[:-1], edges[1:]


def drop_features(eta, steps, eta_ref: float, resolution: float = DEFAULT_RESOLUTION):
    """Binned drop pairs of the multi-power law's loss-drop term, per evaluation point.

    Args:
      eta: learning rate at every step [T]; steps: evaluation steps [m] (validated).
      eta_ref: LR unit (> 0); resolution: bin width / distance (0: exact, one bin per step;
        memory O(m T) then, for short schedules).
    Returns:
      (drop [m, J], log_lr [m, J], log_gap [m, J]): bin weight sum_k d_k / eta_ref, its
      centroid's log(eta_k / eta_ref) and log(S_k(t) / eta_ref); unused slots have drop 0
      (and finite log values), so that sum_j drop G(...) is the drop sum at any J.
    """
    eta = np.asarray(eta, dtype=np.float64) / eta_ref
    steps = np.asarray(steps, dtype=np.int64)
    area = lr_area(eta)
    d = np.zeros_like(eta)
    d[1:] = eta[:-1] - eta[1:]
    log_lr = np.log(np.maximum(eta, _TINY))
    area_before = np.concatenate([[0.0], area[:-1]])  # S(k - 1)
    lo, hi = _bin_edges(int(steps.max()), resolution)
    t = steps[:, None]
    # pieces of [1, t]: cut where a distance bin starts (n = t - k + 1 in [lo, hi)) and where the
    # LR moves to another level (a factor e^LEVEL): a bin then never mixes very different LRs
    # (a linear warmup from 0 spans decades within one bin)
    k_dist = np.where(lo[None, :] <= t, np.clip(t - np.minimum(hi[None, :], t + 1) + 2, 1, None), t + 1)
    level = np.floor(log_lr / LEVEL)
    level_starts = np.flatnonzero(np.diff(level[1:]) != 0) + 2 if resolution > 0 else np.zeros(0, int)
    k_level = np.where(level_starts[None, :] <= t, level_starts[None, :], t + 1)
    k_a = np.sort(np.concatenate([k_dist, k_level], axis=1), axis=1)
    k_b = np.concatenate([k_a[:, 1:] - 1, t], axis=1)
    valid = k_a <= k_b
    out = []
    for part in (np.maximum(d, 0.0), np.minimum(d, 0.0)):
        prefix = [np.concatenate([[0.0], np.cumsum(part * f)]) for f in (1.0, log_lr, area_before)]
        # prefix[i][k] = sum over k' < k of part * f; the bin sums k_a..k_b inclusive
        sums = [np.where(valid, p[np.minimum(k_b + 1, len(p) - 1)] - p[np.minimum(k_a, len(p) - 1)], 0.0)
                for p in prefix]
        w = sums[0]
        safe = np.where(w != 0, w, 1.0)
        mean_log_lr = np.where(w != 0, sums[1] / safe, 0.0)
        gap = np.where(w != 0, area[steps][:, None] - sums[2] / safe, 1.0)
        out.append((w, mean_log_lr, np.log(np.maximum(gap, _TINY))))
    drop, log_lr_b, log_gap = (np.concatenate([out[0][i], out[1][i]], axis=1) for i in range(3))
    return _compact(drop, log_lr_b, log_gap)


def _compact(drop, log_lr, log_gap):
    """Move each row's nonzero bins to the front and cut the columns to a multiple of 8."""
    order = np.argsort(drop == 0, axis=1, kind="stable")
    drop, log_lr, log_gap = (np.take_along_axis(a, order, axis=1) for a in (drop, log_lr, log_gap))
    used = int((drop != 0).sum(axis=1).max()) if drop.size else 0
    width = max(8, -(-used // 8) * 8)
    pad = max(0, width - drop.shape[1])
    cut = [np.pad(a[:, :width], ((0, 0), (0, pad))) for a in (drop, log_lr, log_gap)]
    return cut[0], cut[1], cut[2]


def annealing_area(eta, steps, eta_ref: float, decay: float = ANNEALING_DECAY) -> np.ndarray:
    """S2(t) / eta_ref [m]: sum_{i<=t} m_i, m_i = decay m_{i-1} + d_i over the drops after the peak.

    Tissue et al. 2024 (arXiv:2408.11029), Eq. (1) with the momentum form of S2. The warmup
    (steps up to the first largest LR) is not annealing and adds nothing.
    """
    from scipy.signal import lfilter

    eta = np.asarray(eta, dtype=np.float64) / eta_ref
    d = np.zeros_like(eta)
    d[1:] = eta[:-1] - eta[1:]
    d[:int(np.argmax(eta)) + 1] = 0.0
    momentum = lfilter([1.0], [1.0, -decay], d)
    return np.cumsum(momentum)[np.asarray(steps, dtype=np.int64)]
