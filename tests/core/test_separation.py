"""Separation: directions of the fixed effects that only the prior bounds (mglm_core.separation)."""
import warnings

import numpy as np
import pytest

import mglm_core as mg
from mglm_core.datasets import load
from mglm_core.separation import find_separation

rng = np.random.default_rng(7)


def _rises(X, y, trials, family, beta):
    """Each row's log-likelihood term along t * beta, t from 0 to 50: rows that rise, rows that fall."""
    eta = X @ beta
    n = np.ones_like(y) if trials is None else trials
    t = np.array([0.0, 50.0])[:, None]
    if family == "binomial":
        ll = y * (t * eta) - n * np.logaddexp(0.0, t * eta)
    else:
        ll = y * (t * eta) - np.exp(t * eta)
    change = ll[1] - ll[0]
    return int(np.sum(change > 1e-9)), int(np.sum(change < -1e-9))


def test_complete_separation_by_a_covariate_is_found_with_a_direction_no_row_falls_along():
    n = 300
    x = rng.normal(size=n)
    X = np.column_stack([np.ones(n), x])
    y = (x > 0.3).astype(float)
    sep = find_separation(X, y, None, "binomial", ["Intercept", "x"])
    assert sep is not None and sep.columns == ("Intercept", "x")
    assert sep.direction[1] > 0 and np.max(np.abs(sep.direction)) == 1.0
    rise, fall = _rises(X, y, None, "binomial", sep.direction)
    assert fall == 0 and rise == sep.strict_rows > 0
    # one outcome flipped across the threshold: the MLE exists, no direction
    y[np.argmin(np.abs(x - 1.0))] = 0.0
    assert find_separation(X, y, None, "binomial", ["Intercept", "x"]) is None


def test_quasi_separation_with_trials_and_a_poisson_level_without_counts():
    cbpp = load("cbpp")
    x = (cbpp.incidence > 0).to_numpy(float)
    X = np.column_stack([np.ones(len(cbpp)), x])
    y, size = cbpp.incidence.to_numpy(float), cbpp["size"].to_numpy(float)
    sep = find_separation(X, y, size, "binomial", ["Intercept", "x"])
    # the herds with cases have both outcomes (no change along it), the others only failures
    np.testing.assert_allclose(sep.direction, [-1.0, 1.0])
    assert _rises(X, y, size, "binomial", sep.direction) == (int(np.sum(x == 0)), 0) == (sep.strict_rows, 0)
    period = np.column_stack([np.ones(len(cbpp))] + [(cbpp.period == k).to_numpy(float) for k in "234"])
    assert find_separation(period, y, size, "binomial", ["I", "2", "3", "4"]) is None
    g = rng.integers(0, 4, 400)
    Xp = np.column_stack([np.ones(400)] + [(g == k).astype(float) for k in (1, 2, 3)])
    counts = rng.poisson(2.0, 400).astype(float)
    counts[g == 2] = 0.0
    sep = find_separation(Xp, counts, None, "poisson", ["I", "g1", "g2", "g3"])
    assert sep.columns == ("g2",) and sep.direction[2] == -1.0 and sep.strict_rows == int(np.sum(g == 2))


@pytest.mark.parametrize("sample_rows", [100, 10_000])
def test_sampled_rows_find_a_rare_separating_covariate_and_certify_the_rest(sample_rows):
    """With more rows than the sample, a sample of full rank whose cone is {0} settles it; a rare covariate
    (absent from the sample) and a threshold the sample's direction crosses are found by adding rows."""
    n = 4000
    x = rng.normal(size=n)
    X = np.column_stack([np.ones(n), x])
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-x))).astype(float)
    assert find_separation(X, y, None, "binomial", ["I", "x"], sample_rows=sample_rows) is None
    rare = np.zeros(n)
    rare[rng.choice(n, 6, replace=False)] = 1.0
    y_rare = np.where(rare == 1.0, 1.0, y)
    X3 = np.column_stack([X, rare])
    sep = find_separation(X3, y_rare, None, "binomial", ["I", "x", "rare"], sample_rows=sample_rows)
    assert sep.columns == ("rare",) and sep.strict_rows == 6
    thresh = (x > 1.5).astype(float)
    sep = find_separation(X, thresh, None, "binomial", ["I", "x"], sample_rows=sample_rows)
    assert sep is not None and _rises(X, thresh, None, "binomial", sep.direction)[1] == 0


def test_direction_follows_a_column_rescaled():
    n = 200
    x = rng.normal(size=n)
    y = (x > 0).astype(float)
    a = find_separation(np.column_stack([np.ones(n), x]), y, None, "binomial", ["I", "x"])
    b = find_separation(np.column_stack([np.ones(n), 100.0 * x]), y, None, "binomial", ["I", "x"])
    assert a.columns == b.columns
    np.testing.assert_allclose(b.direction[1] * 100.0 / b.direction[0], a.direction[1] / a.direction[0],
                               rtol=1e-6)


def test_models_warn_of_separation_by_name_on_every_fit():
    """cbpp with a predictor that marks the herds with cases: fit_laplace put the Intercept at -203 +- 29
    (MCMC of the same model: -61 +- 42) without a word about it."""
    cbpp = load("cbpp").assign(x=lambda d: (d.incidence > 0).astype(float))
    with pytest.warns(mg.DataWarning, match=r"The fixed effects Intercept, x separate the outcomes.*\(Intercept -1, "
                                            r"x \+1\).*fe_p"):
        model = mg.BayesMixedGLM.from_formula("incidence ~ x + (1 | herd)", data=cbpp, trials="size")
    assert model.separation.columns == ("Intercept", "x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for res in (model.fit_map(), model.fit_vb()):
            assert any("separate the outcomes" in w for w in res.warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error", mg.DataWarning)
        plain = mg.BayesMixedGLM.from_formula("incidence ~ period + (1 | herd)", data=cbpp, trials="size")
    assert plain.separation is None
    # a response all at one boundary has its own note, not a second one
    with pytest.warns(mg.DataWarning) as caught:
        mg.BayesMixedGLM(np.zeros(20), np.ones((20, 1)), None, None)
    assert [str(w.message).startswith("The response (endog) is all failures") for w in caught] == [True]


def _grid_summary(logp, b0, b1):
    """Posterior means, SDs and log evidence of (b0, b1) from the log density ``logp`` on the grid b0 x b1."""
    from scipy.special import logsumexp

    B0, B1 = np.meshgrid(b0, b1, indexing="ij")
    w = np.exp(logp - logp.max())
    w /= w.sum()
    mean = np.array([(w * B0).sum(), (w * B1).sum()])
    sd = np.sqrt([(w * (B0 - mean[0]) ** 2).sum(), (w * (B1 - mean[1]) ** 2).sum()])
    return mean, sd, logsumexp(logp) + np.log((b0[1] - b0[0]) * (b1[1] - b1[0]))


def _cbpp_separated():
    cbpp = load("cbpp")
    y = cbpp.incidence.to_numpy(float)
    return y, cbpp["size"].to_numpy(float), (y > 0).astype(float), cbpp


@pytest.mark.parametrize("fe_p", [2.0, 10.0])
def test_separated_fit_matches_the_exact_posterior_and_evidence_of_a_glm(fe_p):
    """Without random effects the posterior of (b0, b1) is exact on a 2-D grid: the Laplace at the separated
    mode missed it by several SDs; the direction integrated numerically is within 0.01 SD and 1 % of the SD,
    and its log marginal likelihood within 0.01."""
    from scipy.special import gammaln, log_expit

    y, size, x, _ = _cbpp_separated()
    b0, b1 = np.linspace(-12 * fe_p - 10, 10, 701), np.linspace(-10, 12 * fe_p + 10, 701)
    B0, B1 = np.meshgrid(b0, b1, indexing="ij")
    logp = -0.5 * (B0**2 + B1**2) / fe_p**2 - np.log(2 * np.pi * fe_p**2)
    logp += float(np.sum(gammaln(size + 1) - gammaln(y + 1) - gammaln(size - y + 1)))
    for xi in (0.0, 1.0):  # (the rows' terms by the value of x: two linear predictors)
        eta, rows = B0 + B1 * xi, x == xi
        logp += y[rows].sum() * log_expit(eta) + (size[rows] - y[rows]).sum() * log_expit(-eta)
    mean, sd, evidence = _grid_summary(logp, b0, b1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mg.BayesMixedGLM(y, np.column_stack([np.ones(y.size), x]), None, None, trials=size,
                               fe_p=fe_p).fit_laplace()
    assert len(res.extra["separation_points"]) > 10
    np.testing.assert_array_less(np.abs(res.fe_mean - mean) / sd, 0.01)
    np.testing.assert_allclose(res.fe_sd / sd, 1.0, atol=0.01)
    assert res.log_marginal_likelihood == pytest.approx(evidence, abs=0.01)
    assert any("integrated numerically" in w for w in res.warnings)
    # the 95 % intervals are the mixture's quantiles (mean -+ 1.96 SD straddled 0 for the separating coefficient)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    table = res.fe_table()
    for j, (grid, marginal) in enumerate(((b0, w.sum(axis=1)), (b1, w.sum(axis=0)))):
        exact = np.interp([0.025, 0.975], np.cumsum(marginal) - 0.5 * marginal, grid)
        np.testing.assert_allclose(table.iloc[j][["lower", "upper"]].to_numpy(float), exact,
                                   atol=0.05 * sd[j] + (grid[1] - grid[0]))
    assert table.loc["x1" if "x1" in table.index else table.index[1], "lower"] > 0


@pytest.mark.parametrize("fe_p,b0,b0_sd,s,s_sd", [(2.0, -4.994, 0.685, -0.228, 0.263),
                                                  (100.0, -60.6, 41.3, -0.233, 0.267)])
def test_separated_fit_matches_mcmc_with_random_effects(fe_p, b0, b0_sd, s, s_sd):
    """cbpp with a predictor that marks the herds with cases, (1 | herd): the references are long Metropolis
    runs (tests/reference/separation_mcmc.py, its numbers in its docstring). fit_laplace put the Intercept at
    -203 (SD 29) with fe_p = 100 before, 3.4 reference SDs off."""
    cbpp = load("cbpp").assign(x=lambda d: (d.incidence > 0).astype(float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mg.BayesMixedGLM.from_formula("incidence ~ x + (1 | herd)", data=cbpp, trials="size",
                                            fe_p=fe_p).fit_laplace()
    assert abs(res.fe_mean[0] - b0) / b0_sd < 0.1
    assert res.fe_sd[0] / b0_sd == pytest.approx(1.0, abs=0.1)
    if s is not None:
        assert abs(res.vcp_mean[0] - s) / s_sd < 0.2
        assert res.vcp_sd[0] / s_sd == pytest.approx(1.0, abs=0.15)
        density = res.vcp_density("herd")
        assert np.trapezoid(density["density"], density["sd"]) == pytest.approx(1.0, abs=0.01)


def test_cones_of_two_directions_are_integrated_over_both_and_larger_ones_said_so():
    """Two levels of a factor without counts: each direction alone separates (a cone of two dimensions, integrated
    over both); three such levels: one direction integrated (two would be a grid of grids for little) and the fit
    says the others' Gaussians are unreliable."""
    g = rng.integers(0, 4, 300)
    X = np.column_stack([np.ones(300)] + [(g == k).astype(float) for k in (1, 2, 3)])
    counts = rng.poisson(2.0, 300).astype(float)
    counts[g >= 2] = 0.0
    sep = find_separation(X, counts, None, "poisson", ["I", "g1", "g2", "g3"])
    assert sep.dimension == 2 and set(sep.columns) == {"g2", "g3"}
    np.testing.assert_allclose(sep.span.T @ sep.span, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(sep.span[:2], 0.0, atol=1e-12)  # (the span lies in the levels' coordinates)
    one = counts.copy()
    one[(g == 3) & (np.arange(300) % 2 == 0)] = 1.0
    assert find_separation(X, one, None, "poisson", ["I", "g1", "g2", "g3"]).dimension == 1
    counts[g >= 1] = 0.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = mg.BayesMixedGLM(counts, X, None, None, family="poisson")
        assert model.separation.dimension == 3
        res = model.fit_laplace()
    assert any("separated along 3 independent directions; 1 was integrated" in str(w.message) for w in caught)
    assert np.all(res.fe_mean[1:] < -2)


def test_a_gap_between_the_classes_matches_the_exact_posterior_over_both_directions():
    """Failures at x in [-2, -0.5], successes in [0.5, 2], fe_p = 10: the Intercept's posterior SD is 4.3 on an
    exact 2-D grid; integrated along one direction with a Gaussian across, it was 8.2."""
    from scipy.special import log_expit

    x = np.r_[np.random.default_rng(0).uniform(-2, -0.5, 20), np.random.default_rng(1).uniform(0.5, 2, 20)]
    y = (x > 0).astype(float)
    b0, b1 = np.linspace(-60, 60, 601), np.linspace(-40, 80, 601)
    B0, B1 = np.meshgrid(b0, b1, indexing="ij")
    logp = -0.5 * (B0**2 + B1**2) / 100.0 - np.log(2 * np.pi * 100.0)
    for xi, yi in zip(x, y):
        eta = B0 + B1 * xi
        logp += yi * log_expit(eta) + (1 - yi) * log_expit(-eta)
    mean, sd, evidence = _grid_summary(logp, b0, b1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mg.BayesMixedGLM(y, np.column_stack([np.ones(40), x]), None, None, fe_p=10.0).fit_laplace()
    assert res.model.separation.dimension == 2
    np.testing.assert_array_less(np.abs(res.fe_mean - mean) / sd, 0.02)
    np.testing.assert_allclose(res.fe_sd / sd, 1.0, atol=0.015)
    assert res.log_marginal_likelihood == pytest.approx(evidence, abs=0.02)


def test_a_gap_between_the_classes_is_a_cone_of_two_directions_found_inside_it():
    """Failures at x in [-2, -0.5], successes in [0.5, 2]: (0, 1), (0.4, 1) and (-0.4, 1) all separate. The sum of
    the rows maximised over a box returned the corner (-0.5, 1), an edge along which one row stayed at zero, and
    the dimension came out as 1 (the fit then integrated along the edge, 0.6 SD off, without a word)."""
    x = np.r_[rng.uniform(-2, -0.5, 20), rng.uniform(0.5, 2, 20)]
    X = np.column_stack([np.ones(40), x])
    y = (x > 0).astype(float)
    sep = find_separation(X, y, None, "binomial", ["I", "x"])
    assert sep.dimension == 2 and sep.strict_rows == 40
    assert _rises(X, y, None, "binomial", sep.direction) == (40, 0)  # inside: every row rises
    # touching classes (x = 0.3 on both sides): the cone is the one direction through the touching point
    touch = np.r_[x, 0.3, 0.3]
    y_touch = np.r_[y, 0.0, 1.0]
    sep1 = find_separation(np.column_stack([np.ones(42), touch]), y_touch, None, "binomial", ["I", "x"])
    assert sep1.dimension == 1
    np.testing.assert_allclose(sep1.direction[0] / sep1.direction[1], -0.3, rtol=1e-6)


def test_a_covariate_in_the_tens_of_thousands_is_not_lost():
    """An income-like covariate: the slope's entry of the direction, per unit of income, is about 2e-5 of the
    Intercept's, and was zeroed as negligible (no separation reported)."""
    income = np.r_[rng.uniform(1e4, 4e4, 30), rng.uniform(5e4, 9e4, 30)]
    X = np.column_stack([np.ones(60), income])
    y = (income > 4.5e4).astype(float)
    sep = find_separation(X, y, None, "binomial", ["I", "income"])
    assert sep is not None and "income" in sep.columns
    assert _rises(X, y, None, "binomial", sep.direction)[1] == 0


def test_rows_without_trials_neither_bound_nor_hide_a_separation():
    """A row of no trials adds nothing to the likelihood; counted as "all failures" at x = 1 it held the slope
    down and hid a complete separation by x."""
    x = np.r_[rng.uniform(-2, -0.2, 15), rng.uniform(0.2, 2, 15), 1.0]
    trials = np.r_[np.full(30, 5.0), 0.0]
    y = np.where(x > 0, trials, 0.0)
    X = np.column_stack([np.ones(31), x])
    sep = find_separation(X, y, trials, "binomial", ["Intercept", "x"])
    assert sep is not None and "x" in sep.columns and sep.direction[1] > 0


def test_the_parts_of_a_separated_fit_issue_no_warnings_of_their_own():
    """The conditional fits run quiet (catching their warnings swapped the process's filters under other threads'
    fits, as the dashboard's sessions are): the separated fit warns once, with the heaviest point's messages, and a
    quiet fit still carries its messages on the result."""
    from mglm_core import nested

    zeros = load("cbpp_long").assign(y=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = mg.BayesMixedGLM.from_formula("y ~ period + (1 | herd)", data=zeros)
    with warnings.catch_warnings(record=True) as loud:
        warnings.simplefilter("always")
        res = nested.fit_laplace(model)
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        again = nested.fit_laplace(model, quiet=True)
    assert loud and not quiet
    assert again.diagnostics.warnings == res.diagnostics.warnings
    cbpp = load("cbpp").assign(x=lambda d: (d.incidence > 0).astype(float))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = mg.BayesMixedGLM.from_formula("incidence ~ x + (1 | herd)", data=cbpp, trials="size").fit_laplace()
    approximations = [str(w.message) for w in caught if issubclass(w.category, mg.ApproximationWarning)]
    assert len(approximations) == len(set(approximations)) == len(fit.diagnostics.warnings)


def test_scale_fe_does_not_search_or_warn_again():
    """fit_map(scale_fe=True) and fit_vb(scale_fe=True) fit a standardised copy of the design: the same columns'
    span and so the same separation, which the model found and warned of when built (the copy searched again
    and repeated the warning at fit time)."""
    cbpp = load("cbpp").assign(x=lambda d: (d.incidence > 0).astype(float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = mg.BayesMixedGLM.from_formula("incidence ~ x + (1 | herd)", data=cbpp, trials="size")
    for fit in (lambda: model.fit_map(scale_fe=True), lambda: model.fit_vb(scale_fe=True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = fit()
        assert not any("separate the outcomes" in str(w.message) for w in caught)
        assert any("separate the outcomes" in w for w in res.warnings)  # (the model's note, on the result)
