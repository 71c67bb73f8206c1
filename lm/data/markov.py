"""Sparse random Markov chain of order k over bytes, with its exact entropy rate.

A synthetic language whose irreducible loss is known: a fitted loss floor E of a scaling
law (Hoffmann et al. 2022, Eq. 2, L(N, D) = E + A/N^alpha + B/D^beta) can be checked
against the truth.

The chain: symbols 0..a-1 (a <= 256, so a symbol is a byte); a context is the last k
symbols, encoded as c = sum_j x_{t-k+1+j} a^(k-1-j) in [0, a^k). Each context allows
``branching`` next symbols with Dirichlet(concentration) probabilities.
- Irreducible by construction: one allowed successor of every context is the next symbol
  of a de Bruijn sequence B(a, k) (Fredricksen-Kessler-Maiorana), a cycle through every
  context, so every context reaches every other.
- Aperiodic: the all-zero context allows the symbol 0 (a self-loop).
Hence the stationary distribution pi over contexts is unique, and the entropy rate
(Cover & Thomas, Thm 4.2.4) is
    H = sum_c pi(c) H(X | c) = -sum_c pi(c) sum_x p(x|c) log2 p(x|c)   [bits/symbol].
pi is computed in float64 by power iteration on the sparse context-transition matrix.

Axis letters: c contexts (a^k), b branches per context, n symbols.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class MarkovChain:
    """Order-k chain. ``symbols`` int64 [c, b] (distinct per row), ``probs`` float64 [c, b]."""

    alphabet: int
    order: int
    symbols: np.ndarray
    probs: np.ndarray

    @property
    def num_contexts(self) -> int:
        return self.alphabet**self.order

    def next_contexts(self) -> np.ndarray:
        """int64 [c, b]: the context reached from c by emitting symbols[c, j]."""
        c = np.arange(self.num_contexts)[:, None]
        return (c * self.alphabet + self.symbols) % self.num_contexts

    @functools.cached_property
    def _tables(self) -> tuple[list[list[float]], list[list[int]]]:
        cum = np.cumsum(self.probs, axis=1)
        cum[:, -1] = 1.0  # guard against round-off: u < 1 always lands on a branch
        return cum.tolist(), self.symbols.tolist()


def de_bruijn(alphabet: int, order: int) -> np.ndarray:
    """int64 [a^k]: de Bruijn sequence B(a, k); cyclically every k-gram occurs exactly once."""
    seq: list[int] = []
    a = [0] * (order + 1)

    def db(t: int, p: int) -> None:  # Fredricksen-Kessler-Maiorana (Lyndon words)
        if t > order:
            if order % p == 0:
                seq.extend(a[1 : p + 1])
            return
        a[t] = a[t - p]
        db(t + 1, p)
        for j in range(a[t - p] + 1, alphabet):
            a[t] = j
            db(t + 1, t)

    db(1, 1)
    return np.asarray(seq, dtype=np.int64)


@functools.lru_cache(maxsize=8)
def make_chain(alphabet: int, order: int, branching: int, concentration: float, seed: int) -> MarkovChain:
    """The random sparse chain of the module docstring, deterministic in ``seed``."""
    if not 2 <= branching <= alphabet:
        raise ValueError(f"branching={branching}: must be in [2, alphabet={alphabet}]")
    num_contexts = alphabet**order
    rng = np.random.default_rng([seed, alphabet, order, branching])
    seq = de_bruijn(alphabet, order)
    ext = np.concatenate([seq, seq[:order]])
    ctx = np.zeros(num_contexts, dtype=np.int64)
    for j in range(order):
        ctx = ctx * alphabet + ext[j : j + num_contexts]
    successor = np.empty(num_contexts, dtype=np.int64)
    successor[ctx] = ext[order : order + num_contexts]
    # Other branches: successor + distinct non-zero offsets (mod a), redrawn until distinct.
    offsets = rng.integers(1, alphabet, size=(num_contexts, branching - 1))
    while True:
        s = np.sort(offsets, axis=1)
        bad = np.any(s[:, 1:] == s[:, :-1], axis=1) if branching > 2 else np.zeros(num_contexts, bool)
        if not bad.any():
            break
        offsets[bad] = rng.integers(1, alphabet, size=(int(bad.sum()), branching - 1))
    symbols = np.concatenate([successor[:, None], (successor[:, None] + offsets) % alphabet], axis=1)
    if 0 not in symbols[0]:
        symbols[0, -1] = 0  # self-loop on the all-zero context: aperiodic
    probs = rng.dirichlet(np.full(branching, concentration), size=num_contexts)
    return MarkovChain(alphabet, order, symbols, probs)


@functools.lru_cache(maxsize=8)
def _stationary_cached(chain: MarkovChain, tol: float, max_iters: int) -> np.ndarray:
    nxt = chain.next_contexts().ravel()
    n = chain.num_contexts
    pi = np.full(n, 1.0 / n)
    for _ in range(max_iters):
        new = np.bincount(nxt, weights=(pi[:, None] * chain.probs).ravel(), minlength=n)
        new /= new.sum()
        if np.abs(new - pi).sum() < tol:
            return new
        pi = new
    raise RuntimeError(f"stationary distribution did not converge to {tol} in {max_iters} iterations")


def stationary_distribution(chain: MarkovChain, tol: float = 1e-14, max_iters: int = 100_000) -> np.ndarray:
    """float64 [c]: pi(c) = P(last k symbols = c) of the stationary chain (power iteration)."""
    return _stationary_cached(chain, tol, max_iters)


def context_entropies_bits(chain: MarkovChain) -> np.ndarray:
    """float64 [c]: H(X | context c) in bits."""
    p = chain.probs
    return -np.sum(np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0), axis=1)


def entropy_rate_bits(chain: MarkovChain) -> float:
    """Exact entropy rate sum_c pi(c) H(X|c) in bits per symbol (= bits per byte)."""
    return float(stationary_distribution(chain) @ context_entropies_bits(chain))


def block_entropy_bits(chain: MarkovChain, m: int) -> float:
    """H(X_1..X_m) in bits of m consecutive symbols of the stationary chain.

    m <= k: entropy of the m-gram marginal of pi; m > k: H(X_1..X_k) + (m - k) H (Markov
    property and stationarity). H(X_m | X_1..X_{m-1}) = block(m) - block(m-1) is the
    best possible loss at position m of a document that starts in stationarity.
    """
    if m <= 0:
        return 0.0
    k, a = chain.order, chain.alphabet
    if m > k:
        return block_entropy_bits(chain, k) + (m - k) * entropy_rate_bits(chain)
    marg = stationary_distribution(chain).reshape(a ** (k - m), a**m).sum(axis=0)
    marg = marg[marg > 0]
    return float(-(marg * np.log2(marg)).sum())


def sample(chain: MarkovChain, rng: np.random.Generator, length: int) -> np.ndarray:
    """uint8 [length]: symbols of the stationary chain (initial context drawn from pi, not emitted)."""
    pi = stationary_distribution(chain)
    cum, syms = chain._tables
    c = int(rng.choice(chain.num_contexts, p=pi))
    a, n = chain.alphabet, chain.num_contexts
    out = bytearray(length)
    for t, u in enumerate(rng.random(length).tolist()):
        row = cum[c]
        x = syms[c][min(bisect.bisect_right(row, u), len(row) - 1)]
        out[t] = x
        c = (c * a + x) % n
    return np.frombuffer(bytes(out), dtype=np.uint8)
