"""The conjugate-gradient route for random-effect blocks too large to factor (many crossed levels)."""
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import mglm_core as mg
from mglm_core import linalg
from mglm_core.errors import FitError
from mglm_core.iterative import IterativeSPD, gabp_variances, pcg
from mglm_core.linalg import NotPositiveDefinite, Symbolic
from mglm_core.simulate import simulate_arrays


def _crossed_block(n, levels, seed):
    """Z'WZ + prior precision for two crossed factors, rows assigned at random."""
    rng = np.random.default_rng(seed)
    Z = sp.hstack([sp.csr_matrix((np.ones(n), (np.arange(n), rng.integers(0, s, n))), shape=(n, s))
                   for s in levels]).tocsr()
    w = rng.uniform(0.1, 3.0, n)
    q = Z.shape[1]
    A = (Z.T @ sp.diags(w) @ Z + sp.diags(np.full(q, 0.7))).tocsc()
    groups = np.repeat(np.arange(len(levels)), levels)
    return A, groups


def test_pcg_solves_many_columns_and_reports_indefinite():
    A, _ = _crossed_block(3000, (150, 120), seed=1)
    rng = np.random.default_rng(2)
    B = rng.normal(size=(A.shape[0], 4))
    X, it, res = pcg(lambda P: A @ P, B, 1.0 / A.diagonal())
    np.testing.assert_allclose(A @ X, B, atol=1e-7 * np.abs(B).max())
    assert 0 < it < 500 and res < 1e-9
    x1, _, _ = pcg(lambda P: A @ P, B[:, 0], 1.0 / A.diagonal())
    np.testing.assert_allclose(x1, X[:, 0], rtol=1e-8, atol=1e-12)
    bad = sp.csc_matrix(np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(NotPositiveDefinite, match="not positive definite"):
        IterativeSPD(bad, not_pd=NotPositiveDefinite).solve(np.array([1.0, -1.0]))


def test_belief_propagation_variances_are_exact_on_a_tree():
    # a random tree (each node joined to an earlier one): Gaussian belief propagation is exact there
    rng = np.random.default_rng(3)
    n = 200
    parent = np.array([rng.integers(0, i) for i in range(1, n)])
    child = np.arange(1, n)
    w = rng.uniform(0.2, 2.0, n - 1)
    off = sp.coo_matrix((np.concatenate([-w, -w]), (np.concatenate([child, parent]), np.concatenate([parent, child]))),
                        shape=(n, n))
    deg = np.asarray(abs(off).sum(axis=1)).ravel()
    A = (off + sp.diags(deg + rng.uniform(0.05, 1.0, n))).tocsr()
    var, ok = gabp_variances(A)
    assert ok
    np.testing.assert_allclose(var, np.diag(np.linalg.inv(A.toarray())), rtol=1e-9)


def test_belief_propagation_variances_on_a_sparse_crossing():
    # 800 x 800 levels crossed by 8000 rows: cycles make belief propagation's variances slightly low
    # (measured: median 1.0 %, largest 2.3 %)
    A, groups = _crossed_block(8000, (800, 800), seed=4)
    exact = np.diag(np.linalg.inv(A.toarray()))
    f = IterativeSPD(A, Symbolic(A, groups=groups), not_pd=NotPositiveDefinite)
    approx = f.diag_inverse()
    assert f.diag_method == "belief propagation"
    rel = np.abs(approx / exact - 1)
    assert np.median(rel) < 0.015 and rel.max() < 0.035
    # the first-order value it improves on is far worse
    d = A.diagonal()
    first = 1.0 / d
    assert np.median(np.abs(first / exact - 1)) > 10 * np.median(rel)


def test_routes_iterative_only_for_large_dense_crossings(monkeypatch):
    monkeypatch.setattr(linalg, "DENSE_TAIL_MAX", 100)
    A, groups = _crossed_block(6000, (400, 300), seed=5)
    assert Symbolic(A, groups=groups).route == "iterative"
    assert isinstance(linalg.factor_spd(A, Symbolic(A, groups=groups)), IterativeSPD)
    # nested: each lower level in one upper level, no fill: still factored exactly
    n, upper, lower = 6000, 300, 1500
    rng = np.random.default_rng(6)
    low = rng.integers(0, lower, n)
    up = low % upper
    Z = sp.hstack([sp.csr_matrix((np.ones(n), (np.arange(n), up)), shape=(n, upper)),
                   sp.csr_matrix((np.ones(n), (np.arange(n), low)), shape=(n, lower))]).tocsc()
    An = (Z.T @ Z + sp.eye(upper + lower)).tocsc()
    assert Symbolic(An, groups=np.repeat([0, 1], [upper, lower])).route != "iterative"


@pytest.mark.parametrize("family, sd, median_max, worst_max", [("binomial", 1.5, 2e-3, 5e-3),
                                                               ("poisson", 0.8, 8e-3, 0.08)])
def test_fits_on_the_iterative_route_match_the_exact_route(monkeypatch, family, sd, median_max, worst_max):
    # 600 x 600 crossed levels, 12,000 rows: exact dense Schur route against conjugate gradients. The
    # random-effect SDs are belief propagation's (measured: binomial median 0.05 %, largest 0.12 %;
    # Poisson, whose weights can sit on a few rows, median 0.5 %, largest 5.3 %)
    y, X, Z, ident, _ = simulate_arrays(12_000, 1200, family, n_factors=2, seed=3, sd=sd)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact = mg.BayesMixedGLM(y, X, Z, ident, family=family)
        assert exact.symbolic.route == "schur"
        m_ex, v_ex = exact.fit_map(), exact.fit_vb()
        monkeypatch.setattr(linalg, "DENSE_TAIL_MAX", 100)
        model = mg.BayesMixedGLM(y, X, Z, ident, family=family)
        assert model.symbolic.route == "iterative"
        m_it, v_it = model.fit_map(), model.fit_vb()
    assert m_ex.converged and m_it.converged
    for a, b in ((m_ex.fe_mean, m_it.fe_mean), (m_ex.vcp_mean, m_it.vcp_mean), (m_ex.vc_mean, m_it.vc_mean),
                 (v_ex.fe_mean, v_it.fe_mean), (v_ex.vcp_mean, v_it.vcp_mean), (v_ex.vc_sd, v_it.vc_sd)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(m_it.fe_sd, m_ex.fe_sd, rtol=1e-6)
    np.testing.assert_allclose(m_it.vcp_sd, m_ex.vcp_sd, rtol=1e-6)
    rel = np.abs(m_it.vc_sd / m_ex.vc_sd - 1)
    assert np.median(rel) < median_max and rel.max() < worst_max
    assert m_ex.extra["vc_sd_method"] == "exact"
    assert m_it.extra["vc_sd_method"] == "belief propagation"
    assert "conjugate gradients" in m_it.diagnostics.message
    with pytest.raises(FitError, match=r"fit_laplace needs the exact log-determinant.*Use fit_map\(\) or fit_vb\(\)"):
        model.fit_laplace()


def test_unconverged_solves_are_a_warning_on_the_result(monkeypatch):
    from mglm_core import iterative

    y, X, Z, ident, _ = simulate_arrays(6000, 600, "poisson", n_factors=2, seed=5)
    monkeypatch.setattr(linalg, "DENSE_TAIL_MAX", 100)
    monkeypatch.setattr(iterative, "MAX_ITER", 3)
    with pytest.warns(mg.ConvergenceWarning, match="conjugate-gradient solves .* stopped at a relative residual"):
        res = mg.BayesMixedGLM(y, X, Z, ident, family="poisson").fit_map()
    assert any("conjugate-gradient" in w for w in res.diagnostics.warnings)


def test_newton_steps_by_conjugate_gradients_keep_the_exact_covariance(monkeypatch):
    # a dense Schur route whose Newton steps are solved iteratively (linalg.solve_only): the same mode,
    # and every SD exact, from the factorisation at the mode
    y, X, Z, ident, _ = simulate_arrays(8000, 400, "poisson", n_factors=2, seed=7)
    ref_map = mg.BayesMixedGLM(y, X, Z, ident, family="poisson").fit_map()
    ref_vb = mg.BayesMixedGLM(y, X, Z, ident, family="poisson").fit_vb()
    monkeypatch.setattr(linalg, "SOLVE_ITERATIVE_FROM", 50)
    model = mg.BayesMixedGLM(y, X, Z, ident, family="poisson")
    assert model.symbolic.route == "schur" and linalg.solve_only(model.symbolic).route == "iterative"
    res, vb = model.fit_map(), model.fit_vb()
    assert res.extra["vc_sd_method"] == "exact"
    for name in ("fe_mean", "vcp_mean", "vc_mean", "fe_sd", "vcp_sd", "vc_sd"):
        # (the exact route's SDs come from the factorisation one last, free, Newton step before the mode:
        # within 4e-5 relative, laplace._LAST_STEP; these are factored at the mode itself)
        sd = name.endswith("_sd")
        np.testing.assert_allclose(getattr(res, name), getattr(ref_map, name), rtol=1e-4 if sd else 1e-7, atol=1e-9)
        np.testing.assert_allclose(getattr(vb, name), getattr(ref_vb, name), rtol=1e-6, atol=1e-8)
