"""Law forms: closed forms vs independent transcriptions, limits, log-space forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling import laws
from scaling.law_specs import LAWS
from tests.scaling.helpers import TRUE, chinchilla_loss


def test_chinchilla_matches_transcription():
    N, D = np.array([1e8, 3e9]), np.array([2e9, 6e10])
    np.testing.assert_allclose(laws.chinchilla(N, D, **TRUE), chinchilla_loss(N, D, **TRUE),
                               rtol=1e-14)


def test_allocation_closed_form_is_the_constrained_minimum():
    C = np.array([1e19, 1e21, 1e23])
    n_cf, d_cf = laws.chinchilla_allocation(C, TRUE["A"], TRUE["B"], TRUE["alpha"], TRUE["beta"])
    np.testing.assert_allclose(6 * n_cf * d_cf, C, rtol=1e-12)
    # Brute force: dense grid over log N with D = C / 6N.
    for c, n_opt in zip(C, n_cf):
        n = np.exp(np.linspace(np.log(n_opt) - 1, np.log(n_opt) + 1, 200001))
        loss = chinchilla_loss(n, c / (6 * n), **TRUE)
        assert abs(np.log(n[np.argmin(loss)] / n_opt)) < 2e-5
    # The numeric solver with f(N) = 6N agrees with the closed form.
    loss_fn = lambda n, d: laws.chinchilla(n, d, **TRUE)
    n_num, d_num = laws.compute_optimal_allocation(C, loss_fn)
    np.testing.assert_allclose(n_num, n_cf, rtol=1e-5)
    np.testing.assert_allclose(d_num, d_cf, rtol=1e-5)


def test_allocation_with_custom_flops_per_token():
    # FLOPs per token with an attention-like extra term: 6N + 6 * n_layer * ctx * d_model
    # approximated as 6N + 1e4 N^(1/3).
    fpt = lambda n: 6 * n + 1e4 * np.cbrt(n)
    loss_fn = lambda n, d: laws.chinchilla(n, d, **TRUE)
    C = np.array([1e18, 1e20])
    n_opt, d_opt = laws.compute_optimal_allocation(C, loss_fn, flops_per_token=fpt)
    np.testing.assert_allclose(fpt(n_opt) * d_opt, C, rtol=1e-12)
    for c, n_star in zip(C, n_opt):
        n = np.exp(np.linspace(np.log(n_star) - 1, np.log(n_star) + 1, 200001))
        loss = chinchilla_loss(n, c / fpt(n), **TRUE)
        assert abs(np.log(n[np.argmin(loss)] / n_star)) < 2e-5
    # The extra FLOPs change the answer (the solver does use flops_per_token).
    _, d_6 = laws.chinchilla_allocation(C, TRUE["A"], TRUE["B"], TRUE["alpha"], TRUE["beta"])
    assert np.all(np.abs(np.log(d_opt / d_6)) > 1e-3)


def test_vectorised_allocation_for_flops_matches_the_scalar_solver():
    # The grid + parabola allocation (used for plot bands) agrees with Brent's method on the
    # same FLOPs-per-token function, for a batch of parameter sets against a batch of budgets.
    fpt = lambda n: 6 * n + 1e4 * np.cbrt(n)
    C = np.array([1e17, 1e19, 1e21])
    scales = np.array([[0.8], [1.0], [1.3]])  # three parameter sets x three budgets
    n_vec, d_vec = laws.chinchilla_allocation_for_flops(
        C[None, :], TRUE["A"] * scales, TRUE["B"], TRUE["alpha"], TRUE["beta"], fpt)
    assert n_vec.shape == (3, 3)
    for i, s in enumerate(scales[:, 0]):
        p = dict(TRUE, A=TRUE["A"] * s)
        n_ref, d_ref = laws.compute_optimal_allocation(C, lambda n, d, p=p: laws.chinchilla(n, d, **p),
                                                       flops_per_token=fpt)
        np.testing.assert_allclose(n_vec[i], n_ref, rtol=1e-6)
        np.testing.assert_allclose(d_vec[i], d_ref, rtol=1e-6)
    # with f = 6N it is the closed form
    n6, d6 = laws.chinchilla_allocation_for_flops(C, TRUE["A"], TRUE["B"], TRUE["alpha"], TRUE["beta"],
                                                  lambda n: 6 * n)
    n_cf, d_cf = laws.chinchilla_allocation(C, TRUE["A"], TRUE["B"], TRUE["alpha"], TRUE["beta"])
    np.testing.assert_allclose(n6, n_cf, rtol=1e-6)
    np.testing.assert_allclose(d6, d_cf, rtol=1e-6)
    # f = 6N x 1e4 moves the optimum by 1e4^(beta/(alpha+beta)) from the 6ND one: 1.8 decades
    # for the true exponents (on the grid), beyond 3 for alpha = 0.01 (solved by Brent there)
    far = lambda n: 6e4 * n
    alphas = np.array([[TRUE["alpha"]], [0.01]])
    n_far, d_far = laws.chinchilla_allocation_for_flops(C, TRUE["A"], TRUE["B"], alphas, TRUE["beta"], far)
    for i, a in enumerate(alphas[:, 0]):
        p = dict(TRUE, alpha=a)
        n_ref, d_ref = laws.compute_optimal_allocation(C, lambda n, d, p=p: laws.chinchilla(n, d, **p),
                                                       flops_per_token=far, n_bounds=(1.0, 1e30))
        np.testing.assert_allclose(n_far[i], n_ref, rtol=1e-6)
        np.testing.assert_allclose(d_far[i], d_ref, rtol=1e-6)
    n6_far, _ = laws.chinchilla_allocation(C, TRUE["A"], TRUE["B"], 0.01, TRUE["beta"])
    assert np.all(np.abs(np.log10(n_far[1] / n6_far)) > 3)  # the fallback really was exercised


def test_data_constrained_reduces_to_chinchilla_without_repetition():
    p = dict(TRUE, R_D_star=15.0, R_N_star=5.0)
    U = np.array([1e10, 1e11])
    N = 0.5 * laws.n_opt_for_tokens(U, TRUE["A"], TRUE["B"], TRUE["alpha"], TRUE["beta"])
    np.testing.assert_allclose(laws.data_constrained(N, U, U, **p),
                               chinchilla_loss(N, U, **TRUE), rtol=1e-14)


def test_effective_data_limits():
    U, r_star = 1e9, 15.0
    # Few repetitions: almost as good as fresh data; many: saturates at U (1 + R_D*).
    np.testing.assert_allclose(laws.effective_data(1.01 * U, U, r_star), 1.01 * U, rtol=1e-4)
    np.testing.assert_allclose(laws.effective_data(1e6 * U, U, r_star), U * (1 + r_star),
                               rtol=1e-10)


def test_n_opt_for_tokens_inverts_the_allocation():
    C = 1e21
    n, d = laws.chinchilla_allocation(C, TRUE["A"], TRUE["B"], TRUE["alpha"], TRUE["beta"])
    np.testing.assert_allclose(laws.n_opt_for_tokens(d, TRUE["A"], TRUE["B"], TRUE["alpha"],
                                                     TRUE["beta"]), n, rtol=1e-12)


def test_kaplan_nd_limits():
    N = np.array([1e8, 1e10])
    np.testing.assert_allclose(laws.kaplan_nd(N, 1e30), laws.kaplan_n(N), rtol=1e-9)
    np.testing.assert_allclose(laws.kaplan_nd(1e30, N), laws.kaplan_d(N), rtol=1e-9)
    assert np.isclose(laws.kaplan_n(8.8e13), 1.0)


def test_hyperparameter_laws_step_law_values():
    # Step Law Eq. (1)-(2) evaluated by hand at N = 1e9, D = 1e11.
    assert np.isclose(laws.lr_opt(1e9, 1e11), 1.79 * 1e9**-0.713 * 1e11**0.307)
    assert np.isclose(laws.bs_opt(1e11), 0.58 * 1e11**0.571)
    assert np.isclose(laws.deepseek_lr_opt(1e20), 0.3118 * 1e20**-0.125)
    assert np.isclose(laws.deepseek_bs_opt(1e20), 0.2920 * 1e20**0.3271)


@pytest.mark.parametrize("name", sorted(LAWS))
def test_log_form_matches_readable_form(name):
    """exp(log-space JAX form) == the NumPy law at random parameters (two implementations)."""
    spec = LAWS[name]
    rng = np.random.default_rng(1)
    grid = spec.grid(next(iter(spec.grids)))
    theta = grid[rng.integers(len(grid))] + rng.uniform(0.05, 0.2, grid.shape[1])
    x = {"N": np.exp(rng.uniform(16, 22, 7)), "D": np.exp(rng.uniform(19, 26, 7)),
         "C": np.exp(rng.uniform(40, 50, 7))}
    x["U"] = x["D"] / np.exp(rng.uniform(0, 3, 7))
    x = {k: v for k, v in x.items() if k in spec.variables}
    with jax.enable_x64(True):
        got = np.exp(np.asarray(spec.log_form(jnp.asarray(theta),
                                              {k: jnp.log(jnp.asarray(v)) for k, v in x.items()})))
    want = spec.predict(spec.to_params(theta), x)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_allclose(spec.from_params(spec.to_params(theta)), theta, rtol=1e-12)
