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


@pytest.mark.parametrize("m,s", [(0.0, 0.1), (-2.0, 1.0), (3.0, 4.0), (30.0, 2.0), (-40.0, 0.5), (0.5, 6.0)])
def test_binomial_expectation_against_quadrature(m, s):
    fam = Binomial()
    y, n = np.array([3.0]), np.array([7.0])
    e, dm, dv, d2 = fam.gaussian_expectation(y, np.array([m]), np.array([s * s]), n)
    ll = lambda eta: 3 * eta - 7 * np.logaddexp(0, eta) + gammaln(8) - gammaln(4) - gammaln(5)
    assert e[0] == pytest.approx(_brute(ll, m, s), abs=1e-7)
    assert dm[0] == pytest.approx(_brute(lambda t: 3 - 7 * expit(t), m, s), abs=1e-7)
    assert d2[0] == pytest.approx(_brute(lambda t: -7 * expit(t) * (1 - expit(t)), m, s), abs=1e-7)
    h = 1e-5
    num = (fam.gaussian_expectation(y, np.array([m]), np.array([s * s + h]), n)[0]
           - fam.gaussian_expectation(y, np.array([m]), np.array([s * s - h]), n)[0]) / (2 * h)
    assert dv[0] == pytest.approx(num[0], abs=1e-5)


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
