"""Sparse Markov chain: construction, stationary distribution and entropy rate (float64)."""

import collections
import itertools

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from lm.data import markov


@pytest.mark.parametrize("a,k", [(2, 5), (3, 3), (5, 2), (7, 1)])
def test_de_bruijn_contains_every_kgram_once(a, k):
    seq = markov.de_bruijn(a, k).tolist()
    assert len(seq) == a**k
    ext = seq + seq[: k - 1]
    grams = collections.Counter(tuple(ext[i : i + k]) for i in range(len(seq)))
    assert set(grams) == set(itertools.product(range(a), repeat=k))
    assert set(grams.values()) == {1}


def _dense_transition(chain):
    """float64 [c, c]: P[c, c'] built by enumerating contexts (independent of next_contexts)."""
    a, k, n = chain.alphabet, chain.order, chain.num_contexts
    P = np.zeros((n, n))
    for c in range(n):
        digits = [(c // a ** (k - 1 - j)) % a for j in range(k)]
        for x, p in zip(chain.symbols[c], chain.probs[c]):
            new = digits[1:] + [int(x)]
            P[c, sum(d * a ** (k - 1 - j) for j, d in enumerate(new))] += p
    return P


@pytest.mark.parametrize("a,k,b", [(6, 2, 3), (4, 3, 2), (9, 1, 4)])
def test_chain_is_sparse_irreducible_aperiodic(a, k, b):
    chain = markov.make_chain(a, k, b, 1.0, 3)
    assert chain.symbols.shape == (a**k, b)
    assert all(len(set(row)) == b for row in chain.symbols.tolist())
    np.testing.assert_allclose(chain.probs.sum(1), 1.0, rtol=0, atol=1e-12)
    P = _dense_transition(chain)
    n_comp, _ = connected_components(csr_matrix(P > 0), directed=True, connection="strong")
    assert n_comp == 1
    assert P[0, 0] > 0  # self-loop: aperiodic


@pytest.mark.parametrize("a,k,b,conc", [(6, 2, 3, 1.0), (4, 3, 2, 0.3), (9, 1, 4, 5.0)])
def test_stationary_distribution_matches_dense_eigenvector(a, k, b, conc):
    chain = markov.make_chain(a, k, b, conc, 1)
    P = _dense_transition(chain)
    w, v = np.linalg.eig(P.T)
    ref = np.real(v[:, np.argmin(np.abs(w - 1.0))])
    ref = ref / ref.sum()
    pi = markov.stationary_distribution(chain)
    np.testing.assert_allclose(pi, ref, rtol=0, atol=1e-10)
    h_ref = -sum(
        ref[c] * p * np.log2(p) for c in range(len(ref)) for p in chain.probs[c] if p > 0
    )
    assert markov.entropy_rate_bits(chain) == pytest.approx(h_ref, abs=1e-10)


def test_entropy_rate_matches_empirical_conditional_entropy():
    """Plug-in H(X_t | X_{t-k..t-1}) from a long sample (Miller-Madow bias correction)."""
    a, k, b = 16, 2, 4
    chain = markov.make_chain(a, k, b, 1.0, 0)
    rng = np.random.default_rng(123)
    x = np.concatenate([markov.sample(chain, rng, 50_000) for _ in range(8)]).reshape(8, -1).astype(np.int64)
    ctx = x[:, :-2] * a + x[:, 1:-1]
    joint = np.bincount((ctx * a + x[:, 2:]).ravel(), minlength=a ** (k + 1)).astype(np.float64)
    n = joint.sum()
    pc = joint.reshape(-1, a).sum(1)
    h_joint = -np.sum(joint[joint > 0] / n * np.log2(joint[joint > 0] / n))
    h_ctx = -np.sum(pc[pc > 0] / n * np.log2(pc[pc > 0] / n))
    correction = ((joint > 0).sum() - (pc > 0).sum()) / (2 * n * np.log(2))
    empirical = h_joint - h_ctx + correction
    exact = markov.entropy_rate_bits(chain)
    assert 0.5 < exact < np.log2(b)
    assert empirical == pytest.approx(exact, abs=0.01)
    # Every emitted transition is one the chain allows.
    allowed = np.zeros((a**k, a), bool)
    np.put_along_axis(allowed, chain.symbols, True, axis=1)
    assert allowed[ctx.ravel(), x[:, 2:].ravel()].all()


def test_block_entropy_matches_sample_and_chain_rule():
    chain = markov.make_chain(8, 2, 3, 1.0, 2)
    x = markov.sample(chain, np.random.default_rng(0), 200_000).astype(np.int64)
    counts = np.bincount(x, minlength=8) / len(x)
    h1 = -np.sum(counts[counts > 0] * np.log2(counts[counts > 0]))
    assert markov.block_entropy_bits(chain, 1) == pytest.approx(h1, abs=5e-3)
    # H(X1..X3) = H(X1, X2) + H(X3 | X1, X2) = block(2) + rate, and block(2) = H(pi).
    pi = markov.stationary_distribution(chain)
    assert markov.block_entropy_bits(chain, 2) == pytest.approx(-np.sum(pi * np.log2(pi)), abs=1e-12)
    assert markov.block_entropy_bits(chain, 3) == pytest.approx(
        markov.block_entropy_bits(chain, 2) + markov.entropy_rate_bits(chain), abs=1e-12
    )
