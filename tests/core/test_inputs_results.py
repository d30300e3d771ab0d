"""Bad input gets clear errors before fitting; results tables, random effects and prediction."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mglm_core as mg
from mglm_core.datasets import load

rng = np.random.default_rng(0)
N = 40
Y = rng.integers(0, 2, N).astype(float)
X = np.column_stack([np.ones(N), rng.normal(size=N)])
Z = sp.csr_matrix((np.ones(N), (np.arange(N), rng.integers(0, 4, N))), shape=(N, 4))
IDENT = np.zeros(4, dtype=int)


@pytest.mark.parametrize("kwargs,match", [
    (dict(endog=np.r_[Y[:-1], 2.0]), "endog must be 0 or 1 for the binomial family"),
    (dict(endog=np.r_[Y[:-1], np.nan]), "`endog` must be finite; got 1 NaN/inf value"),
    (dict(endog=Y[:-1]), "`exog` must have one row per entry of endog; got 40 rows for 39"),
    (dict(ident=[0, 0, 1]), "`ident` must have one entry per column of exog_vc; got 3 for 4 columns"),
    (dict(exog=np.column_stack([X, 2 * X[:, 1]])), "full column rank.*FE_3|full column rank.*FE_2"),
    (dict(exog=np.column_stack([X, np.full(N, 3.0)])), "at most one constant column"),
    (dict(exog=np.column_stack([X, np.full(N, np.nan)])), "exog column `FE_3` must be finite; got all-NaN"),
    (dict(exog=pd.DataFrame({"a": X[:, 1], "b": ["u"] * N})), "exog column `b` must be numeric"),
    (dict(trials=np.ones(N)), None),
    (dict(trials=np.zeros(N)), "must not exceed `trials`"),
    (dict(offset=np.ones(N - 1)), "`offset` must have one entry per row of endog; got 39 for 40"),
    (dict(family="poisson", endog=np.r_[Y[:-1], -1.0]), "non-negative counts"),
    (dict(family="poisson", endog=np.r_[Y[:-1], 0.5]), "integer counts"),
    (dict(vcp_p=-1), "`vcp_p` must be a positive finite number"),
    (dict(endog=np.zeros(0), exog=np.zeros((0, 2)), exog_vc=None), "`endog` must have at least one row"),
    (dict(exog_vc=np.zeros((N - 1, 4))), "`exog_vc` must have one row per entry of endog"),
    (dict(vcp_names=["a", "b"]), "`vcp_names` must have one name per distinct ident label; got 2 for 1"),
])
def test_bad_input_is_named(kwargs, match):
    args = dict(endog=Y, exog=X, exog_vc=Z, ident=IDENT, family="binomial")
    args.update(kwargs)
    if match is None:
        mg.BayesMixedGLM(**args)
        return
    with pytest.raises(mg.DataError, match=match):
        mg.BayesMixedGLM(**args)


def test_family_class_instead_of_instance():
    with pytest.raises(mg.DataError, match="instance, not a class"):
        mg.BayesMixedGLM(Y, X, Z, IDENT, family=mg.Binomial)


def test_ident_labels_make_no_phantom_components():
    Z3 = sp.hstack([Z, Z[:, :2]]).tocsr()
    model = mg.BayesMixedGLM(Y, X, Z3, [0, 0, 2, 2, 5, 5], family="binomial")
    assert model.k_vcp == 3 and model.vcp_names == ["VC_1", "VC_3", "VC_6"]
    named = mg.BayesMixedGLM(Y, X, Z3, ["b", "b", "a", "a", "c", "c"])
    assert named.vcp_names == ["a", "b", "c"] and list(named.ident) == [1, 1, 0, 0, 2, 2]


def test_seed_example_runs_with_statsmodels_style_code():
    import mglm_core as sm
    data = load("cbpp_long")
    random = {"herd": "0 + C(herd)"}
    model = sm.BinomialBayesMixedGLM.from_formula("y ~ period", random, data)
    result = model.fit_vb()
    assert result.converged and result.vcp_names == ["herd"]
    assert isinstance(sm.MixedGLM.from_formula("y ~ period + (1 | herd)", data=data), sm.BayesMixedGLM)
    text = str(result.summary())
    assert "Post. Mean" in text and "97.5%" in text and "herd" in text
    assert "<table" in result.summary()._repr_html_()


def test_results_tables_random_effects_and_predict():
    sim = mg.simulate.simulate_glmm("poisson", n_groups=12, group_size=15, seed=4)
    model = mg.PoissonBayesMixedGLM.from_formula(sim.formula, None, sim.data)
    res = model.fit_laplace()
    fe = res.fe_table()
    assert list(fe.index) == ["Intercept", "x"]
    np.testing.assert_allclose(fe["upper"] - fe["lower"], 2 * 1.959964 * res.fe_sd, rtol=1e-6)
    vt = res.vcp_table()
    assert vt.loc["g", "sd_lower"] < vt.loc["g", "sd_median"] < vt.loc["g", "sd_upper"]
    dens = res.vcp_density("g")
    assert np.trapezoid(dens["density"], dens["sd"]) == pytest.approx(1.0, abs=0.02)
    re = res.random_effects("g")
    assert len(re) == 12 and set(re["term"]) == {"g"} and re["level"].iloc[0] == "g01"
    assert res.random_effects(0).equals(re)
    # In-sample prediction equals prediction on the same frame.
    np.testing.assert_allclose(res.predict(), res.predict(sim.data), rtol=1e-10)
    # Unseen levels get random effect 0, with a warning.
    new = sim.data.head(3).assign(g=["zz", "g01", "zz"])
    with pytest.warns(mg.DataWarning, match="not seen in fitting.*zz"):
        eta = res.predict(new, linear=True)
    pop = res.predict(new, linear=True, random_effects=False)
    assert eta[0] == pytest.approx(pop[0]) and eta[1] != pytest.approx(pop[1])
    # Array-built models have random_effects too.
    arr = mg.BayesMixedGLM(model.endog, model.exog, model.exog_vc, model.ident, family="poisson").fit_vb()
    assert len(arr.random_effects(0)) == 12
    with pytest.raises(mg.DataError, match="`term` must be one of"):
        arr.random_effects("nope")
    cov = res.cov_params()
    assert list(cov.index) == ["Intercept", "x", "g"]
    assert isinstance(arr.cov_params(), pd.Series)


def test_binomial_trials_equal_bernoulli_expansion():
    """Invariance: successes out of n give the same posterior as the expanded 0/1 rows."""
    agg = mg.BayesMixedGLM.from_formula("incidence ~ period + (1 | herd)", data=load("cbpp"), trials="size")
    long = mg.BayesMixedGLM.from_formula("y ~ period + (1 | herd)", data=load("cbpp_long"))
    ma, mb = agg.fit_map(), long.fit_map()
    np.testing.assert_allclose(ma.fe_mean, mb.fe_mean, atol=1e-7)
    np.testing.assert_allclose(ma.vcp_mean, mb.vcp_mean, atol=1e-7)
    a, b = agg.fit_laplace(), long.fit_laplace()
    # the integrated fit's inner and vcp-mode searches stop at ~1e-6 (different starting points)
    np.testing.assert_allclose(a.fe_mean, b.fe_mean, atol=1e-5)
    np.testing.assert_allclose(a.vcp_mean, b.vcp_mean, atol=5e-5)
    np.testing.assert_allclose(a.log_marginal_likelihood - b.log_marginal_likelihood, 185.4757, atol=1e-3)


def test_poisson_offset_is_exposure():
    sim = mg.simulate.simulate_glmm("poisson", n_groups=10, group_size=20, seed=9)
    data = sim.data.assign(expo=np.exp(rng.normal(size=len(sim.data))))
    data["logexpo"] = np.log(data["expo"])
    with_off = mg.BayesMixedGLM.from_formula(sim.formula, data=data, family="poisson", offset="logexpo").fit_map()
    shifted = mg.BayesMixedGLM.from_formula(sim.formula, data=data, family="poisson",
                                            offset=data["logexpo"].to_numpy() + 1.0).fit_map()
    # Adding a constant to the offset moves only the intercept (up to its prior's pull).
    assert shifted.fe_mean[0] == pytest.approx(with_off.fe_mean[0] - 1.0, abs=0.02)
    assert shifted.fe_mean[1] == pytest.approx(with_off.fe_mean[1], abs=0.01)


def test_subclass_from_formula_takes_statsmodels_positional_priors():
    data = load("Salamanders")
    model = mg.PoissonBayesMixedGLM.from_formula("count ~ mined", {"site": "0 + C(site)"}, data, 0.5, 3.0)
    assert (model.vcp_p, model.fe_p, model.family.name) == (0.5, 3.0, "poisson")


def test_data_warnings_are_carried_on_every_fit():
    """Warnings from building the model (dropped rows, an all-failure outcome) are also on each
    result's ``warnings``, so callers need not capture Python warnings (not thread-safe)."""
    df = load("cbpp_long").copy()
    df.loc[:4, "period"] = np.nan
    with pytest.warns(mg.DataWarning, match="dropped 5"):
        model = mg.BayesMixedGLM.from_formula("y ~ period + (1 | herd)", data=df)
    assert any("dropped 5" in w for w in model.fit_vb().warnings)
    zeros = df.dropna().assign(y=0)
    with pytest.warns(mg.DataWarning, match="all failures"):
        m0 = mg.BayesMixedGLM.from_formula("y ~ period + (1 | herd)", data=zeros)
    assert any("all failures" in w for w in m0.fit_laplace().warnings)
