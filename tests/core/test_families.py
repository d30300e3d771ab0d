"""Gaussian expectations of the log-likelihood against adaptive quadrature and derivatives."""
import numpy as np
import pytest
from scipy.integrate import quad
from scipy.special import expit, gammaln

from mglm_core.families import Binomial, Poisson, get_family
from mglm_core.errors import DataError


def _brute(f, m, s):
    g = lambda z: f(m + s * z) * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
    return quad(g, -12, 12, epsabs=1e-13, epsrel=1e-13, limit=400)[0]


@pytest.mark.parametrize("m,s", [(0.0, 0.1), (1.3, 0.19), (-0.7, 0.29), (2.2, 0.45), (1.1, 0.74), (-0.4, 0.9), (-2.0, 1.0), (3.0, 4.0),
                                 (30.0, 2.0), (-40.0, 0.5), (0.5, 6.0)])
def test_binomial_expectation_against_quadrature(m, s):
    fam = Binomial()
    y, n = np.array([3.0]), np.array([7.0])
    e, dm, dv, d2 = fam.gaussian_expectation(y, np.array([m]), np.array([s * s]), n)
    ll = lambda eta: 3 * eta - 7 * np.logaddexp(0, eta) + gammaln(8) - gammaln(4) - gammaln(5)
    # every quadrature tier (5, 6, 8, 12, 20 Gauss-Hermite nodes; split Gauss-Legendre), 7 trials
    assert e[0] == pytest.approx(_brute(ll, m, s), abs=1e-7)
    assert dm[0] == pytest.approx(_brute(lambda t: 3 - 7 * expit(t), m, s), abs=1e-7)
    assert d2[0] == pytest.approx(_brute(lambda t: -7 * expit(t) * (1 - expit(t)), m, s), abs=1e-7)
    h = 1e-5
    num = (fam.gaussian_expectation(y, np.array([m]), np.array([s * s + h]), n)[0]
           - fam.gaussian_expectation(y, np.array([m]), np.array([s * s - h]), n)[0]) / (2 * h)
    assert dv[0] == pytest.approx(num[0], abs=1e-5)


@pytest.mark.parametrize("family", [Binomial(), Poisson()])
def test_expectation_without_value_has_the_same_derivatives(family):
    # every binomial tier in one call (s from 0.05 to 3: rows of several tiers at once) and each tier alone
    rng = np.random.default_rng(3)
    m, s = rng.normal(0.0, 2.0, 400), np.linspace(0.05, 3.0, 400)
    y = rng.integers(0, 6, 400).astype(float)
    n = np.full(400, 5.0) if family.name == "binomial" else None
    for rows in [slice(None), s <= 0.2, (s > 0.3) & (s <= 0.5), s > 1.0]:
        tr = None if n is None else n[rows]
        full = family.gaussian_expectation(y[rows], m[rows], s[rows] ** 2, tr)
        lean = family.gaussian_expectation(y[rows], m[rows], s[rows] ** 2, tr, value=False)
        assert lean[0] is None
        for a, b in zip(full[1:], lean[1:]):
            np.testing.assert_array_equal(a, b)


def test_poisson_expectation_is_exact():
    fam = Poisson()
    y, m, v = np.array([4.0]), np.array([1.3]), np.array([16.0])
    e, dm, dv, d2 = fam.gaussian_expectation(y, m, v)
    brute = _brute(lambda t: 4 * t - np.exp(t) - gammaln(5), 1.3, 4.0)
    assert e[0] == pytest.approx(brute, rel=1e-9)
    assert dv[0] == pytest.approx(-0.5 * np.exp(1.3 + 8), rel=1e-12)


def test_softplus_is_stable_for_large_eta():
    fam = Binomial()
    ll = fam.loglike(np.array([1.0, 0.0]), np.array([800.0, -800.0]), None)
    assert np.all(np.isfinite(ll)) and np.allclose(ll, 0.0)


def test_family_lookup():
    sm = pytest.importorskip("statsmodels.api")
    assert get_family(sm.families.Binomial()).name == "binomial"
    assert get_family(sm.families.Poisson()).name == "poisson"
    assert get_family("poisson").name == "poisson"
    with pytest.raises(DataError, match="instance, not a class"):
        get_family(sm.families.Binomial)
    with pytest.raises(DataError, match="must be 'binomial' or 'poisson'"):
        get_family("gamma")


@pytest.mark.parametrize("family", [Binomial(), Poisson()])
@pytest.mark.parametrize("with_trials", [False, True])
def test_fused_loglike_score_weight_matches_the_separate_functions(family, with_trials):
    """The one-pass hot path equals loglike + score_weight, extreme eta included,
    and ``const=False`` drops exactly the log base measure."""
    rng = np.random.default_rng(1)
    n = 500
    trials = rng.integers(1, 10, n).astype(float) if (with_trials and family.name == "binomial") else None
    if family.name == "binomial":
        eta = rng.normal(0, 3, n)
        eta[:3] = [700.0, -700.0, 0.0]
        y = (rng.random(n) < 0.5) * 1.0 if trials is None else np.floor(trials * rng.random(n))
    else:
        eta = rng.normal(0, 1.5, n)
        y = rng.poisson(2.0, n).astype(float)
    ll, score, w = family.loglike_score_weight(y, eta.copy(), trials)
    s0, w0 = family.score_weight(y, eta, trials)
    ll0 = family.loglike(y, eta, trials).sum()
    assert ll == pytest.approx(ll0, rel=1e-13, abs=1e-9)
    np.testing.assert_allclose(score, s0, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(w, w0, rtol=1e-12, atol=1e-300)
    ll_nc = family.loglike_score_weight(y, eta.copy(), trials, const=False)[0]
    assert ll - ll_nc == pytest.approx(family.log_base_measure(y, trials).sum(), rel=1e-12, abs=1e-12)
    # the element-wise one-pass terms (the quadrature's nodes: rows x nodes, y and trials as columns)
    E = np.stack([eta, -eta, 0.5 * eta], axis=1)
    tr = None if trials is None else trials[:, None]
    lr, sr, wr = family.row_terms(y[:, None], E, tr)
    s1, w1 = family.score_weight(y[:, None], E, tr)
    assert lr.shape == sr.shape == wr.shape == E.shape
    np.testing.assert_allclose(lr, family.loglike(y[:, None], E, tr), rtol=1e-13, atol=1e-9)
    np.testing.assert_allclose(sr, s1, rtol=1e-12, atol=1e-14)
    if family.name == "binomial":  # p (1 - p) without the cancellation of 1 - p (exact at |eta| = 350)
        t = np.exp(-np.abs(E))
        w1 = (1.0 if tr is None else tr) * t / (1.0 + t) ** 2
    np.testing.assert_allclose(wr, w1, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("family", [Binomial(), Poisson()])
@pytest.mark.parametrize("with_trials", [False, True])
def test_weight_derivatives_from_scores_and_weights(family, with_trials):
    """The weight's first and second derivatives from the rows' scores and weights (no exponential) equal
    those computed from eta, out to |eta| = 30 (where 1 - 2p and 1 - 6 w / n saturate)."""
    rng = np.random.default_rng(4)
    n = 400
    trials = rng.integers(1, 10, n).astype(float) if (with_trials and family.name == "binomial") else None
    if family.name == "binomial":
        eta = np.concatenate([rng.normal(0, 3, n - 4), [30.0, -30.0, 0.0, 1e-3]])
        y = (rng.random(n) < 0.5) * 1.0 if trials is None else np.floor(trials * rng.random(n))
    else:
        eta = rng.normal(0, 1.5, n)
        y = rng.poisson(2.0, n).astype(float)
    score, weight = family.score_weight(y, eta, trials)
    d1, d2 = family.weight_derivatives(y, score, weight, trials)
    np.testing.assert_allclose(d1, family.weight_derivative(y, eta, trials), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(d2, family.weight_second_derivative(y, eta, trials), rtol=1e-9, atol=1e-15)
