"""Bad input gets clear errors before fitting; results tables, random effects and prediction."""
import warnings

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
    (dict(exog=[[1.0, 0.5]] * (N - 1) + [[1.0]]), "`exog` must be a rectangular array"),
    (dict(exog=pd.DataFrame(X, columns=["a", "a"])), "`exog` must have distinct column names; got 'a' more than once"),
    (dict(fe_p=1e-300), "`fe_p` must be a prior SD between 1e-6 and 1e6; got 1e-300"),
    (dict(vcp_p=1e300), "`vcp_p` must be a prior SD between 1e-6 and 1e6"),
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
    # whole floats are numbers too (pandas' integers with gaps): not "0.0" in every message
    floats = mg.BayesMixedGLM(Y, X, Z3, np.array([0, 0, 2, 2, 5, 5], dtype=float), family="binomial")
    assert floats.vcp_names == ["VC_1", "VC_3", "VC_6"]
    assert mg.BayesMixedGLM(Y, X, Z3, [0.5, 0.5, 2, 2, 5, 5]).vcp_names == ["0.5", "2.0", "5.0"]
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
    assert f"ELBO = {result.log_marginal_likelihood:.4f}" in text  # (VB's lower bound, named as such)
    assert "<table" in result.summary()._repr_html_()
    integrated = model.fit_laplace()
    assert (f"log marginal likelihood = {integrated.log_marginal_likelihood:.4f}" in str(integrated.summary())
            and "log marginal likelihood" in integrated.summary()._repr_html_())
    assert "ELBO" not in str(model.fit_map().summary()) and "marginal" not in str(model.fit_map().summary())


def test_results_tables_random_effects_and_predict():
    sim = mg.simulate.simulate_glmm("poisson", n_groups=12, group_size=15, seed=4)
    model = mg.PoissonBayesMixedGLM.from_formula(sim.formula, None, sim.data)
    res = model.fit_laplace()
    fe = res.fe_table()
    assert list(fe.index) == ["Intercept", "x"]
    # (the quantiles of the mixture over the log-SD grid: near mean -+ 1.96 SD, skewed by the SD's uncertainty)
    np.testing.assert_allclose(fe["upper"] - fe["lower"], 2 * 1.959964 * res.fe_sd, rtol=0.05)
    assert np.all((fe["lower"] < fe["mean"]) & (fe["mean"] < fe["upper"]))
    vt = res.vcp_table()
    assert vt.loc["g", "sd_lower"] < vt.loc["g", "sd_median"] < vt.loc["g", "sd_upper"]
    dens = res.vcp_density("g")
    assert np.trapezoid(dens["density"], dens["sd"]) == pytest.approx(1.0, abs=0.02)
    re = res.random_effects("g", intervals=True)
    assert len(re) == 12 and set(re["term"]) == {"g"} and re["level"].iloc[0] == "g01"
    assert res.random_effects(0, intervals=True).equals(re)
    plain = res.random_effects("g")  # statsmodels' columns: numbers only
    assert list(plain.columns) == ["Mean", "SD"] and plain.equals(re[["Mean", "SD"]])
    np.testing.assert_allclose(np.exp(plain).to_numpy(), np.exp(re[["Mean", "SD"]].to_numpy()))
    # In-sample prediction equals prediction on the same frame, with and without random effects;
    # the default is statsmodels': the fixed effects only.
    np.testing.assert_allclose(res.predict(), res.predict(sim.data), rtol=1e-10)
    np.testing.assert_allclose(res.predict(random_effects=True), res.predict(sim.data, random_effects=True),
                               rtol=1e-10)
    np.testing.assert_allclose(res.predict(linear=True), model.exog @ res.fe_mean, rtol=1e-12)
    np.testing.assert_allclose(res.predict(linear=True, random_effects=True),
                               model.exog @ res.fe_mean + model.exog_vc @ res.vc_mean, rtol=1e-12)
    np.testing.assert_allclose(model.predict(res.params), res.predict(), rtol=1e-12)
    # Unseen levels get random effect 0, with a warning.
    new = sim.data.head(3).assign(g=["zz", "g01", "zz"])
    with pytest.warns(mg.DataWarning, match="not seen in fitting.*zz"):
        eta = res.predict(new, linear=True, random_effects=True)
    pop = res.predict(new, linear=True)
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


def test_offset_and_trials_series_are_read_by_the_data_rows_labels():
    """A pandas Series offset or trials goes with the rows of ``data`` by label (as pandas aligns), so
    shuffled data give the same fit; a Series on other rows is an error, not a silent pairing by position."""
    g = load("grouseticks").assign(logH=lambda d: np.log(d.HEIGHT))
    off = g["logH"]
    fit = mg.PoissonBayesMixedGLM.from_formula("TICKS ~ cHEIGHT + (1 | LOCATION)", None, g, offset=off).fit_map()
    shuffled = g.sample(frac=1.0, random_state=3)
    again = mg.PoissonBayesMixedGLM.from_formula("TICKS ~ cHEIGHT + (1 | LOCATION)", None, shuffled,
                                                 offset=off).fit_map()
    np.testing.assert_allclose(again.fe_mean, fit.fe_mean, rtol=1e-6)
    np.testing.assert_allclose(fit.predict(g.iloc[[2, 0, 1]], offset=off.iloc[:3], linear=True),
                               fit.predict(linear=True)[[2, 0, 1]], rtol=1e-12)
    with pytest.raises(mg.DataError, match=r"`offset` must be a Series on the data's rows.*first: 1000"):
        mg.PoissonBayesMixedGLM.from_formula("TICKS ~ cHEIGHT + (1 | LOCATION)", None, g,
                                             offset=off.set_axis(np.arange(len(g)) + 1000))
    cbpp = load("cbpp")
    size = cbpp["size"]
    base = mg.BinomialBayesMixedGLM.from_formula("incidence ~ period + (1 | herd)", None, cbpp, trials="size").fit_vb()
    turned = mg.BinomialBayesMixedGLM.from_formula("incidence ~ period + (1 | herd)", None, cbpp.iloc[::-1],
                                                   trials=size).fit_vb()
    np.testing.assert_allclose(turned.fe_mean, base.fe_mean, rtol=1e-5)
    with pytest.raises(mg.DataError, match=r"`trials` must be a Series.*got a Series of 55 values for 56 rows"):
        mg.BinomialBayesMixedGLM.from_formula("incidence ~ period + (1 | herd)", None, cbpp, trials=size.iloc[1:])


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
    counts = df.dropna().assign(y=0)
    with pytest.warns(mg.DataWarning, match=r"The response \(endog\) is all zeros"):
        mg.PoissonBayesMixedGLM.from_formula("y ~ period + (1 | herd)", None, counts)


def test_predict_applies_the_offset_to_new_data():
    """An offset column is read from new data again; an offset array must be given for new rows."""
    g = load("grouseticks").assign(logH=lambda d: np.log(d.HEIGHT))
    res = mg.PoissonBayesMixedGLM.from_formula("TICKS ~ cHEIGHT + (1 | LOCATION)", None, g, offset="logH").fit_vb()
    model = res.model
    np.testing.assert_allclose(res.predict(linear=True), model.exog @ res.fe_mean + g.logH, rtol=1e-12)
    np.testing.assert_allclose(res.predict(g.iloc[:5]), res.predict()[:5], rtol=1e-12)
    np.testing.assert_allclose(res.predict(g.iloc[:5], random_effects=True),
                               res.predict(random_effects=True)[:5], rtol=1e-12)
    np.testing.assert_allclose(res.predict(g.iloc[:5], offset=0.0, linear=True),
                               res.predict(linear=True)[:5] - g.logH[:5], rtol=1e-12)
    arr = mg.PoissonBayesMixedGLM.from_formula("TICKS ~ cHEIGHT + (1 | LOCATION)", None, g,
                                               offset=g.logH.to_numpy()).fit_vb()
    with pytest.raises(mg.DataError, match="`offset` must be given for new data"):
        arr.predict(g.iloc[:5])
    np.testing.assert_allclose(arr.predict(g.iloc[:5], offset=g.logH[:5]), res.predict()[:5], rtol=1e-10)


def test_predict_brings_new_columns_to_the_fitted_kinds():
    """A factor fitted as categories or strings may come as numbers (and back); unknown levels and
    text in a numeric column are errors naming the column; missing values predict NaN."""
    g = load("grouseticks")
    res = mg.PoissonBayesMixedGLM.from_formula("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", None, g).fit_vb()
    new = g.iloc[[0, 200, 300]]
    base = res.predict(new, random_effects=True)
    for changed in (new.assign(YEAR=new.YEAR.astype(int)), new.assign(YEAR=new.YEAR.astype(str)),
                    new.assign(LOCATION=new.LOCATION.astype(int)), new.assign(cHEIGHT=new.cHEIGHT.astype(str))):
        np.testing.assert_allclose(res.predict(changed, random_effects=True), base, rtol=1e-12)
    with pytest.raises(mg.DataError, match=r"column `YEAR` in the new data must take levels seen in fitting.*98"):
        res.predict(new.assign(YEAR=[98, 95, 96]))
    with pytest.raises(mg.DataError, match="column `YEAR`.*True"):
        res.predict(new.assign(YEAR=True))
    with pytest.raises(mg.DataError, match="column `cHEIGHT` in the new data must be numeric"):
        res.predict(new.assign(cHEIGHT=["a", "b", "c"]))
    with pytest.warns(mg.DataWarning, match=r"1 of 3 predictions are NaN.*first at row 1"):
        out = res.predict(new.assign(YEAR=["95", None, "97"]))
    assert np.isnan(out[1]) and np.allclose(out[[0, 2]], res.predict(new)[[0, 2]])
    # a missing grouping value: the population level for that row, said so (it was silent)
    with pytest.warns(mg.DataWarning, match=r"missing grouping value.*`LOCATION`: 1 row"):
        out = res.predict(new.assign(LOCATION=[new.LOCATION.iloc[0], None, new.LOCATION.iloc[2]]), random_effects=True)
    np.testing.assert_allclose(out[[0, 2]], base[[0, 2]], rtol=1e-12)
    np.testing.assert_allclose(out[1], res.predict(new)[1], rtol=1e-12)


def test_predict_follows_statsmodels_and_checks_its_arguments():
    """Population-level means per trial (probabilities) in both in-sample and new-data paths, as
    statsmodels' predict; exog_vc without exog is an error."""
    cbpp = load("cbpp")
    res = mg.BinomialBayesMixedGLM.from_formula("incidence ~ period + (1 | herd)", None, cbpp, trials="size").fit_vb()
    p = res.predict()
    assert np.all((p > 0) & (p < 1))
    np.testing.assert_allclose(res.predict(cbpp.iloc[:4]), p[:4], rtol=1e-12)
    np.testing.assert_allclose(res.model.predict(res.params[:res.model.k_fep]), p, rtol=1e-12)
    with pytest.raises(mg.DataError, match="`exog_vc` must come with `exog`"):
        res.predict(None, exog_vc=res.model.exog_vc[:3])
    X3, Z3 = res.model.exog[:3], res.model.exog_vc[:3]
    np.testing.assert_allclose(res.predict(X3, exog_vc=Z3, linear=True), (X3 @ res.fe_mean + Z3 @ res.vc_mean))
    np.testing.assert_allclose(res.predict(X3, exog_vc=Z3, linear=True, random_effects=False), X3 @ res.fe_mean)
    # statsmodels' positional order: predict(exog, linear)
    np.testing.assert_allclose(res.predict(X3, True), X3 @ res.fe_mean, rtol=1e-12)
    np.testing.assert_allclose(res.predict(None, True)[:3], X3 @ res.fe_mean, rtol=1e-12)
    with pytest.raises(mg.DataError, match="`exog_vc` must be given with an array `exog`"):
        res.predict(X3, random_effects=True)
    # a model built from arrays takes a frame's columns by name
    frame = pd.DataFrame({"a": np.ones(N), "x": X[:, 1]})
    arr = mg.BayesMixedGLM(Y, frame, Z, IDENT).fit_vb()
    np.testing.assert_allclose(arr.predict(frame[["x", "a"]].head(3)), arr.predict(X[:3]), rtol=1e-12)
    with pytest.raises(mg.DataError, match="`exog` column `x` must be numeric"):
        arr.predict(frame.assign(x="u"))


def test_fits_take_statsmodels_positional_arguments_and_check_their_own():
    model = mg.BayesMixedGLM(Y, X, Z, IDENT)
    np.testing.assert_array_equal(model.fit_map("BFGS", None, False).params, model.fit_map().params)
    np.testing.assert_array_equal(model.fit_vb(None, None, "BFGS", None, False, False).params,
                                  model.fit_vb().params)
    for kwargs, match in ((dict(tol="a"), "`tol` must be a non-negative number"),
                          (dict(tol=-1.0), "`tol` must be a non-negative finite number"),
                          (dict(max_iter=-1), "`max_iter` must be a positive integer; got -1"),
                          (dict(max_iter=2.5), "`max_iter` must be a positive integer")):
        for fit in (model.fit_map, model.fit_vb):
            with pytest.raises(mg.DataError, match=match):
                fit(**kwargs)


def test_names_and_labels():
    """Default random-effect names follow the component names; tuples are labels; names are distinct;
    a class or a Series as exog."""
    Z3 = sp.hstack([Z, Z[:, :2]]).tocsr()
    m = mg.BayesMixedGLM(Y, X, Z3, [5, 5, 7, 7, 7, 7])
    assert m.vcp_names == ["VC_6", "VC_8"] and m.vc_names == ["VC_6[0]", "VC_6[1]"] + [f"VC_8[{j}]" for j in range(4)]
    t = mg.BayesMixedGLM(Y, X, Z3, [("a", 1)] * 2 + [("b", 2)] * 4)
    assert t.k_vcp == 2 and list(t.ident) == [0, 0, 1, 1, 1, 1]
    assert list(t.fit_vb().random_effects(1).index) == t.vc_names[2:]
    with pytest.raises(mg.DataError, match="`fep_names` must be distinct; got 'a' more than once"):
        mg.BayesMixedGLM(Y, X, Z, IDENT, fep_names=["a", "a"])
    with pytest.raises(mg.DataError, match="`vcp_names` must be distinct"):
        mg.BayesMixedGLM(Y, X, Z3, [0, 0, 1, 1, 1, 1], vcp_names=["v", "v"])
    with pytest.raises(mg.DataError, match="`exog` must be data, not a class; got DataFrame"):
        mg.BayesMixedGLM(Y, pd.DataFrame, Z, IDENT)
    assert mg.BayesMixedGLM(Y, pd.Series(X[:, 1], name="x"), Z, IDENT).fep_names == ["x"]


def test_fit_vb_starts_where_a_raw_scale_random_slope_does_not_overflow():
    """A random slope of heights in the hundreds: the start at SD 1 overflows exp(eta); the fit
    starts from the conditional log-SD mode instead and agrees with the integrated fit."""
    g = load("grouseticks")
    model = mg.PoissonBayesMixedGLM.from_formula("TICKS ~ 1 + (0 + HEIGHT | LOCATION)", None, g)
    vb, lap = model.fit_vb(), model.fit_laplace()
    assert vb.converged and np.all(np.isfinite(vb.params))
    assert abs(vb.vcp_mean[0] - lap.vcp_mean[0]) < 0.5 and abs(vb.fe_mean[0] - lap.fe_mean[0]) < 3 * lap.fe_sd[0]


@pytest.mark.parametrize("call,match", [
    (lambda: mg.simulate.simulate_glmm(n_groups=1), "`n_groups` must be an integer >= 2; got 1"),
    (lambda: mg.simulate.simulate_glmm(sd="a"), "`sd` must be a non-negative number; got 'a'"),
    (lambda: mg.simulate.simulate_glmm(n_groups2=5, sd2=-1), "`sd2` must be a non-negative finite number; got -1"),
    (lambda: mg.simulate.simulate_glmm(fe={"z": 1}), "`fe` must be a dict with keys among"),
    (lambda: mg.simulate.simulate_glmm("poisson", trials=5), "`trials` must be None for the poisson family"),
    (lambda: mg.simulate.simulate_glmm("gamma"), "`family` must be 'binomial' or 'poisson'"),
    (lambda: mg.simulate.simulate_arrays(100.5, 10), "`n` must be an integer >= 1; got 100.5"),
    (lambda: mg.simulate.simulate_arrays(100, 10, n_factors=0), "`n_factors` must be an integer >= 1; got 0"),
    (lambda: mg.simulate.simulate_arrays(100, 3, n_factors=2), "at least 2 levels; got q = 3"),
    (lambda: mg.simulate.simulate_arrays(100, 10, fe=(1, 2, 3)), r"`fe` must be \(intercept, slope of x\)"),
    (lambda: mg.simulate.simulate_arrays(100, 10, sd=-1), "`sd` must be a non-negative finite number; got -1"),
])
def test_simulation_arguments_are_checked(call, match):
    with pytest.raises(mg.DataError, match=match):
        call()


def test_simulation_keeps_given_and_default_truth():
    sim = mg.simulate.simulate_glmm("Binomial", fe={"x": 2.0}, seed=1)
    assert sim.family == "binomial" and sim.fe == {"Intercept": -0.5, "x": 2.0}


def test_models_and_results_pickle_after_every_fit():
    """A model and its results pickle (to save a session, or to send to a worker) after fit_laplace too,
    whose cache of row variances holds a weak reference; the unpickled model fits the same."""
    import pickle

    model = mg.BinomialBayesMixedGLM.from_formula("incidence ~ period + (1 | herd)", None, load("cbpp"),
                                                  trials="size")
    fits = [model.fit_laplace(), model.fit_vb()]
    for res in fits:
        back = pickle.loads(pickle.dumps(res))
        np.testing.assert_array_equal(back.fe_mean, res.fe_mean)
        np.testing.assert_array_equal(back.vc_sd, res.vc_sd)
    again = pickle.loads(pickle.dumps(model)).fit_laplace()
    np.testing.assert_allclose(again.fe_mean, fits[0].fe_mean, rtol=1e-10)
    np.testing.assert_allclose(again.vcp_sd, fits[0].vcp_sd, rtol=1e-10)


def test_results_and_models_cannot_be_changed_in_place():
    """A result's arrays are read-only (writing into fe_mean would change fe_table, predict and params
    behind the reader's back), and a built model refuses new attribute values (its row data and
    factorisation pattern are cached from them)."""
    model = mg.BinomialBayesMixedGLM.from_formula("incidence ~ period + (1 | herd)", None, load("cbpp"),
                                                  trials="size")
    res = model.fit_laplace()
    for arr in (res.fe_mean, res.vc_sd, res.border_cov, res.extra["weights"], res.vcp_grid.density[0]):
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 99.0
    with pytest.raises(AttributeError, match="`fe_p` of a BinomialBayesMixedGLM must not be changed"):
        model.fe_p = -1.0
    assert model.fe_p == 2.0 and res.fe_table()["mean"].iloc[0] == res.fe_mean[0]


def test_with_exog_takes_another_number_of_columns():
    """with_exog keeps the names for a design of the same width and takes new ones otherwise (it reused
    the old names and failed for another width)."""
    model = mg.BayesMixedGLM(Y, X, Z, IDENT, fep_names=["const", "x"])
    assert model.with_exog(X * 2.0).fep_names == ["const", "x"]
    assert model.with_exog(np.ones((N, 1))).fep_names == ["FE_1"]
    wide = model.with_exog(pd.DataFrame({"a": X[:, 1], "b": X[:, 1] ** 2, "c": np.ones(N)}))
    assert wide.fep_names == ["a", "b", "c"] and wide.k_fep == 3


def test_fit_arguments_are_checked_by_name():
    """A fit's arguments are checked before fitting, with the argument named (they failed deep inside)."""
    model = mg.BayesMixedGLM(Y, X, Z, IDENT)
    with pytest.raises(mg.DataError, match="`callback` must be a function f\\(fraction, message\\) or None; got 3"):
        model.fit_vb(callback=3)
    with pytest.raises(mg.DataError, match="`vcp_bounds` must be two numbers"):
        model.fit_laplace(vcp_bounds=3)
    with pytest.raises(mg.DataError, match="`vcp_bounds` must be finite with low < high"):
        model.fit_laplace(vcp_bounds=(2.0, -2.0))
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_iter'"):
        model.fit_laplace(max_iter=3)
    data = load("cbpp")
    with pytest.raises(mg.DataError, match="a DataFrame as `vc_formulas`.*data=df"):
        mg.BayesMixedGLM.from_formula("incidence ~ period + (1 | herd)", data)
    with pytest.raises(mg.DataError, match="`data` must have distinct column names; got 'size' more than once"):
        mg.BayesMixedGLM.from_formula("incidence ~ period + (1 | herd)", data=pd.concat([data, data["size"]], axis=1))


def test_statsmodels_docstring_example_and_its_names():
    """statsmodels' own example, two vc_formulas components over the same factor: the columns of each are
    named after it where they clash (it failed: `vc_names` must be distinct), and from_formula takes
    statsmodels' vcp_names and vc_names."""
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"Village": rng.integers(0, 12, 240), "year_cen": rng.normal(size=240)})
    data["y"] = rng.integers(0, 2, 240).astype(float)
    random = {"a": "0 + C(Village)", "b": "0 + C(Village)*year_cen"}
    model = mg.BinomialBayesMixedGLM.from_formula("y ~ year_cen", random, data)
    assert model.vcp_names == ["a", "b"] and len(set(model.vc_names)) == model.k_vc
    assert model.vc_names[0] == "a:C(Village)[0]" and model.vc_names[12] == "b:C(Village)[0]"
    res = model.fit_vb()
    assert list(res.random_effects("a", intervals=True)["level"][:2]) == ["0", "1"]
    named = mg.PoissonBayesMixedGLM.from_formula("count ~ mined", {"site": "0 + C(site)"}, load("Salamanders"),
                                                 vcp_names=["Site"], vc_names=[f"s{i}" for i in range(23)])
    assert named.vcp_names == ["Site"] and named.vc_names[:2] == ["s0", "s1"]


def test_predict_takes_a_dict_or_one_row_and_densities_check_their_grid():
    """New rows as a dict of columns or one row as a Series predict as the DataFrame does (a raw
    TypeError, a shape error before); vcp_density's grid size is checked by name."""
    cbpp = load("cbpp")
    res = mg.BinomialBayesMixedGLM.from_formula("incidence ~ period + (1 | herd)", None, cbpp, trials="size").fit_vb()
    base = res.predict(cbpp.head(3), random_effects=True)
    np.testing.assert_allclose(res.predict(cbpp.head(3).to_dict("list"), random_effects=True), base, rtol=1e-12)
    np.testing.assert_allclose(res.predict(cbpp.iloc[1], random_effects=True), base[1:2], rtol=1e-12)
    for n in (0, -1, 2.5):
        with pytest.raises(mg.DataError, match="`n` must be an integer of at least 2"):
            res.vcp_density("herd", n=n)


def test_vb_start_values_are_checked_by_name():
    model = mg.BayesMixedGLM(Y, X, Z, IDENT)
    n = 2 + 1 + 4
    with pytest.raises(mg.DataError, match="`mean` must be finite; got 7 NaN/inf"):
        model.fit_vb(mean=np.full(n, np.nan))
    with pytest.raises(mg.DataError, match="`sd` must be 7 positive finite values .* got 1 that are not"):
        model.fit_vb(sd=np.r_[np.ones(n - 1), -1.0])


def test_compare_models_ranks_fits_of_the_same_outcomes():
    """compare_models: cbpp's period effect is favoured over the null model by its log marginal likelihood (the
    fits' own values; log Bayes factors against the best, probabilities summing to one; a mapping's keys or
    `names` name the models), and fits it cannot compare are refused by name: fit_vb's ELBO, fit_map, a single
    fit, other rows (fewer, or as many but others), another family, and inconsistent names."""
    import warnings

    df = load("cbpp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mg.ApproximationWarning)
        period = mg.BayesMixedGLM.from_formula("incidence ~ period + (1 | herd)", data=df, trials="size").fit_laplace()
        null = mg.BayesMixedGLM.from_formula("incidence ~ (1 | herd)", data=df, trials="size").fit_laplace()
        fewer = mg.BayesMixedGLM.from_formula("incidence ~ (1 | herd)", data=df.iloc[1:], trials="size").fit_laplace()
        counts = mg.BayesMixedGLM.from_formula("incidence ~ (1 | herd)", data=df, family="poisson").fit_laplace()
    table = mg.compare_models({"null": null, "period": period})
    assert list(table.index) == ["period", "null"]
    np.testing.assert_allclose(table["log_marginal_likelihood"],
                               [period.log_marginal_likelihood, null.log_marginal_likelihood])
    assert table["log_bayes_factor"].iloc[0] == 0.0
    log_bf = null.log_marginal_likelihood - period.log_marginal_likelihood
    assert table["log_bayes_factor"].iloc[1] == pytest.approx(log_bf) and log_bf < -3.0
    assert table["posterior_probability"].sum() == pytest.approx(1.0)
    assert list(table["k_fe"]) == [4, 1] and list(table["k_vc"]) == [1, 1]
    assert list(mg.compare_models([null, period], names=["a", "b"]).index) == ["b", "a"]
    assert list(mg.compare_models([null, period]).index) == ["model 2", "model 1"]

    vb = mg.BayesMixedGLM.from_formula("incidence ~ (1 | herd)", data=df, trials="size").fit_vb()
    with pytest.raises(mg.DataError, match="got a fit_vb result as 'model 2', whose ELBO is only a lower bound"):
        mg.compare_models([period, vb])
    map_fit = mg.BayesMixedGLM.from_formula("incidence ~ (1 | herd)", data=df, trials="size").fit_map()
    with pytest.raises(mg.DataError, match="got a fit_map result as 'b', which has none"):
        mg.compare_models({"a": period, "b": map_fit})
    with pytest.raises(mg.DataError, match="at least two fits"):
        mg.compare_models([period])
    with pytest.raises(mg.DataError, match="at least two; got one result"):
        mg.compare_models(period)
    with pytest.raises(mg.DataError, match=r"'model 2' differing from 'model 1' in its rows \(55, not 56\)"):
        mg.compare_models([period, fewer])
    with pytest.raises(mg.DataError, match=r"in its family \(poisson, not binomial\)"):
        mg.compare_models([period, counts])
    with pytest.raises(mg.DataError, match="one entry per result; got 1 for 2"):
        mg.compare_models([period, null], names=["a"])
    with pytest.raises(mg.DataError, match="must be distinct"):
        mg.compare_models([period, null], names=["a", "a"])
    with pytest.raises(mg.DataError, match="`log_ml` must be a non-empty sequence of finite"):
        mg.comparison.bayes_factors([])
    with pytest.raises(mg.DataError, match="`log_ml` must be a non-empty sequence of finite"):
        mg.comparison.bayes_factors([-1.0, np.nan])


def test_compare_models_knows_which_rows_and_what_is_part_of_the_model():
    """Two formulas that each drop one row for a missing value keep as many rows, with the same responses, but
    not the same rows: refused. An exposure offset is part of the model (compared with a coefficient on the
    log exposure), and Bernoulli rows without trials are the rows with trials of one."""
    import warnings

    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(12), 5)
    data = pd.DataFrame({"g": g.astype(str), "x1": rng.normal(size=60), "x2": rng.normal(size=60),
                         "y": (rng.random(60) < 0.5).astype(float)})
    data.loc[[4, 5], "y"] = 1.0
    data.loc[4, "x1"] = np.nan
    data.loc[5, "x2"] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (mg.ApproximationWarning, mg.DataWarning))
        a = mg.BayesMixedGLM.from_formula("y ~ x1 + (1 | g)", data=data).fit_laplace()
        b = mg.BayesMixedGLM.from_formula("y ~ x2 + (1 | g)", data=data).fit_laplace()
    assert np.array_equal(a.model.endog, b.model.endog)
    with pytest.raises(mg.DataError, match="in its rows \\(the same number, but others of the data"):
        mg.compare_models([a, b])

    counts = pd.DataFrame({"g": g.astype(str), "expo": np.exp(rng.normal(size=60))})
    counts["y"] = rng.poisson(counts["expo"] * 2.0).astype(float)
    counts["log_expo"] = np.log(counts["expo"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mg.ApproximationWarning)
        offset = mg.BayesMixedGLM.from_formula("y ~ (1 | g)", data=counts, family="poisson",
                                               offset="log_expo").fit_laplace()
        slope = mg.BayesMixedGLM.from_formula("y ~ log_expo + (1 | g)", data=counts, family="poisson").fit_laplace()
        X, Z = np.ones((60, 1)), np.eye(12)[g]
        bernoulli = mg.BayesMixedGLM(data["y"].to_numpy(), X, Z, np.zeros(12, int)).fit_laplace()
        ones = mg.BayesMixedGLM(data["y"].to_numpy(), X, Z, np.zeros(12, int), trials=np.ones(60)).fit_laplace()
    assert len(mg.compare_models({"offset": offset, "slope": slope})) == 2
    table = mg.compare_models({"without trials": bernoulli, "trials of one": ones})
    assert table["log_marginal_likelihood"].iloc[0] == pytest.approx(table["log_marginal_likelihood"].iloc[1], abs=1e-6)


def test_pandas_arguments_on_other_rows_are_an_error_not_a_pairing_by_position():
    """endog, exog and exog_vc as pandas objects must carry the same row index (statsmodels raises too): a
    shuffled exog was paired by position and put the period-2 effect at -0.003 instead of -0.42."""
    cl = load("cbpp_long")
    Zdf = pd.get_dummies(cl.herd).astype(float)
    Xdf = pd.DataFrame({"const": 1.0, "p2": (cl.period == "2").astype(float)}, index=cl.index)
    shuffled = cl.sample(frac=1, random_state=1).index
    ident = np.zeros(15, int)
    with pytest.raises(mg.DataError, match=r"`exog` must have the same row index as `endog`.*position 0: 483 "
                                           r"against 0.*exog.loc\[endog.index\]"):
        mg.BinomialBayesMixedGLM(cl.y, Xdf.loc[shuffled], Zdf, ident)
    with pytest.raises(mg.DataError, match="`exog_vc` must have the same row index as `endog`"):
        mg.BinomialBayesMixedGLM(cl.y, Xdf, Zdf.loc[shuffled], ident)
    aligned = mg.BinomialBayesMixedGLM(cl.y, Xdf, Zdf, ident).fit_vb()
    realigned = mg.BinomialBayesMixedGLM(cl.y.loc[shuffled], Xdf.loc[shuffled], Zdf.loc[shuffled], ident).fit_vb()
    np.testing.assert_allclose(realigned.fe_mean, aligned.fe_mean, rtol=1e-5)
    assert aligned.fe_mean[1] < -0.3  # (the period-2 effect the pairing by position lost)
    # arrays carry no index: taken by position, as before
    mg.BinomialBayesMixedGLM(cl.y.to_numpy(), Xdf.loc[shuffled].to_numpy(), Zdf, ident)


def test_unseen_levels_of_a_categorical_grouping_column_are_named_and_predict_at_the_population_level():
    """A model fitted on a categorical column (as datasets.load gives) warns of new levels by name, as one fitted
    on strings did; the new levels used to be cast to missing (a pandas deprecation) and go unreported."""
    import warnings

    cbpp = load("cbpp")
    assert isinstance(cbpp.herd.dtype, pd.CategoricalDtype)
    res = mg.BayesMixedGLM.from_formula("incidence ~ period + (1 | herd)", data=cbpp, family="binomial",
                                        trials="size").fit_vb()
    new = pd.DataFrame({"herd": ["99", "1"], "period": ["1", "1"]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = res.predict(new, random_effects=True)
    messages = [str(w.message) for w in caught]
    assert any("levels not seen in fitting" in m and "'99'" in m for m in messages), messages
    assert not any(issubclass(w.category, (DeprecationWarning, FutureWarning)) or "deprecated" in str(w.message)
                   for w in caught), messages
    np.testing.assert_allclose(out[0], res.predict(new.iloc[:1])[0], rtol=1e-12)  # the population level
    np.testing.assert_allclose(out[1], res.predict(cbpp.iloc[:1], random_effects=True)[0], rtol=1e-12)
    assert res.model.design.spec.unseen_levels(new) == {"herd": ["99"]}


def test_dotted_column_names_are_read_in_backticks_or_q():
    """R's data have dotted names (Sepal.Length): backticks and Q() read them, a factor's too, with the same fit
    as a plain name; a column named like a number is still refused (the formula reads the literal)."""
    cbpp = load("cbpp")
    x = np.random.default_rng(0).normal(size=len(cbpp))
    data = cbpp.assign(**{"Sepal.Length": x, "plain": x, "per.iod": cbpp.period, "1": x})
    base = mg.BayesMixedGLM.from_formula("incidence ~ plain + (1|herd)", data=data, trials="size").fit_map()
    for formula in ("incidence ~ `Sepal.Length` + (1|herd)", "incidence ~ Q('Sepal.Length') + (1|herd)"):
        fit = mg.BayesMixedGLM.from_formula(formula, data=data, trials="size").fit_map()
        np.testing.assert_allclose(fit.fe_mean, base.fe_mean, rtol=1e-10)
    periods = mg.BayesMixedGLM.from_formula("incidence ~ period + (1|herd)", data=data, trials="size").fit_map()
    dotted = mg.BayesMixedGLM.from_formula("incidence ~ `per.iod` + (1|herd)", data=data, trials="size")
    assert dotted.fep_names[1] == "per.iod[T.2]"
    np.testing.assert_allclose(dotted.fit_map().fe_mean, periods.fe_mean, rtol=1e-10)
    with pytest.raises(mg.FormulaError, match="reads as the number 1"):
        mg.BayesMixedGLM.from_formula("incidence ~ `1` + (1|herd)", data=data, trials="size")
    with pytest.raises(mg.FormulaError, match=r"attribute access 'Sepal.Length'.*backticks: `Sepal.Length`"):
        mg.BayesMixedGLM.from_formula("incidence ~ Sepal.Length + (1|herd)", data=data, trials="size")


def test_unpickled_and_copied_results_and_model_arrays_stay_read_only():
    """Read-only survives pickling and deep copies (unpickled arrays came back writable, and a write changed
    fe_table and vcp_density); a model keeps its own read-only copies of the data it was given."""
    import copy
    import pickle

    cbpp = load("cbpp")
    res = mg.BayesMixedGLM.from_formula("incidence ~ period + (1|herd)", data=cbpp, trials="size").fit_laplace()
    for back in (pickle.loads(pickle.dumps(res)), copy.deepcopy(res)):
        for arr in (back.fe_mean, back.vcp_grid.points[0], back.vcp_grid.density[0], back.extra["weights"]):
            with pytest.raises(ValueError, match="read-only"):
                arr[0] = 5.0
        np.testing.assert_array_equal(back.fe_table()["mean"], res.fe_table()["mean"])
        with pytest.raises(TypeError, match="`extra` must not be changed"):
            back.extra["weights"] = None
    y, X = Y.copy(), X_COPY.copy()
    model = mg.BayesMixedGLM(y, X, Z, IDENT)
    fit = model.fit_map()
    y[:] = 1.0 - y  # the caller's arrays change later: the model's do not
    X[:, 1] = 0.0
    for arr in (model.endog, model.exog, model.ident):
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 1
    np.testing.assert_array_equal(model.fit_map().fe_mean, fit.fe_mean)


X_COPY = X


def test_a_component_without_any_nonzero_entry_is_an_error():
    """An all-zero slope (or a component no row carries) was fitted silently, its prior reported as a
    posterior; an all-zero exog column was already an error."""
    with pytest.raises(mg.DataError, match=r"variance component must have a nonzero entry.*'herd:z'.*Leave the "
                                           "component out"):
        mg.BayesMixedGLM.from_formula("incidence ~ period + (1|herd) + (0 + z|herd)",
                                      data=load("cbpp").assign(z=0.0), trials="size")
    Z2 = sp.hstack([Z, sp.csr_matrix((N, 2))]).tocsr()
    with pytest.raises(mg.DataError, match="got none in the columns of 'b'"):
        mg.BayesMixedGLM(Y, X, Z2, ["a"] * 4 + ["b"] * 2)
    # a column of a component that others carry is data (a level without rows): accepted
    mg.BayesMixedGLM(Y, X, Z2, ["a"] * 3 + ["b"] + ["a"] * 2)


def test_an_infinite_response_is_named_not_blamed_on_trials():
    cbpp = load("cbpp").assign(incidence=lambda d: d.incidence.astype(float))
    cbpp.loc[3, "incidence"] = np.inf
    with pytest.raises(mg.DataError, match=r"the response `incidence` must be finite; got inf at row 3"):
        mg.BayesMixedGLM.from_formula("incidence ~ period + (1|herd)", data=cbpp, trials="size")


def test_density_of_a_model_without_components_and_vb_at_its_iteration_limit_say_what_they_are():
    y = np.r_[np.zeros(10), np.ones(10)]
    res = mg.BayesMixedGLM(y, np.ones((20, 1)), None, None).fit_vb()
    with pytest.raises(mg.DataError, match="this model has none; got 0"):
        res.vcp_density(0)
    model = mg.BayesMixedGLM.from_formula("incidence ~ period + (1|herd)", data=load("cbpp"), trials="size")
    full = model.fit_vb()
    short = model.fit_vb(max_iter=full.diagnostics.n_iter - 2)  # (max_iter counts the coordinate phase's too)
    # converged by the gradient (within 10 gtol) though L-BFGS stopped at its limit: the message says both
    assert short.converged and "ITERATIONS REACHED LIMIT" in short.diagnostics.message
    assert "within 10 x gtol: converged" in short.diagnostics.message
    np.testing.assert_allclose(short.fe_mean, full.fe_mean, atol=1e-3)


def test_random_effect_levels_holding_brackets_keep_their_text():
    cbpp = load("cbpp")
    data = cbpp.assign(hh=("h[" + cbpp.herd.astype(str) + "]:x").astype(object))
    res = mg.BayesMixedGLM.from_formula("incidence ~ period + (1|hh)", data=data, trials="size").fit_vb()
    table = res.random_effects("hh", intervals=True)
    assert set(table["level"]) == {f"h[{h}]:x" for h in cbpp.herd.astype(str)}
    assert (table["term"] == "hh").all()


def test_a_date_column_is_named_and_whole_floats_find_their_levels():
    cbpp = load("cbpp").assign(t=pd.date_range("2020-01-01", periods=56))
    with pytest.raises(mg.DataError, match=r"fixed-effect column `t` must be numeric or categorical; got dtype "
                                           r"datetime64"):
        mg.BayesMixedGLM.from_formula("incidence ~ t + (1|herd)", data=cbpp, trials="size")
    # a year fitted as a category comes as 95.0 after a merge that brought missing values
    g = load("grouseticks")
    res = mg.PoissonBayesMixedGLM.from_formula("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", None, g).fit_vb()
    new = g.iloc[[0, 200, 300]]
    as_float = new.assign(YEAR=new.YEAR.astype(str).astype(int).astype(float))
    np.testing.assert_allclose(res.predict(as_float), res.predict(new), rtol=1e-12)
    with pytest.raises(mg.DataError, match=r"column `YEAR`.*levels seen in fitting.*95.5"):
        res.predict(as_float.assign(YEAR=[95.5, 96.0, 97.0]))


def test_statsmodels_names_and_a_data_frames_columns_name_the_effects():
    cl = load("cbpp_long")
    Zdf = pd.get_dummies(cl.herd, prefix="herd").astype(float)
    model = mg.BinomialBayesMixedGLM(cl.y, pd.DataFrame({"const": np.ones(len(cl))}), Zdf, np.zeros(15, int))
    assert model.vc_names[:2] == ["VC_1[herd_1]", "VC_1[herd_2]"]
    assert model.exog_names == ["const"] and model.endog_names == "y"
    assert list(model.fit_vb().random_effects(intervals=True)["level"][:2]) == ["herd_1", "herd_2"]
    formula = mg.BayesMixedGLM.from_formula("incidence ~ period + (1|herd)", data=load("cbpp"), trials="size")
    assert formula.endog_names == "incidence" and formula.exog_names == formula.fep_names
    assert mg.BayesMixedGLM(Y, X, Z, IDENT).vc_names[:2] == ["VC_1[0]", "VC_1[1]"]


def test_review_details_of_names_levels_and_indexes():
    from mglm_core.results import _level

    assert _level("g[x[1]", "g") == "x[1" and _level("g[h[10]:x]", "g") == "h[10]:x"
    # indexes of categories differ: named, not a pandas TypeError
    cl = load("cbpp_long").iloc[:40]
    y = cl.y.set_axis(pd.CategoricalIndex([f"r{i}" for i in range(40)]))
    X = pd.DataFrame({"c": np.ones(40)}, index=pd.CategoricalIndex([f"s{i}" for i in range(40)]))
    with pytest.raises(mg.DataError, match="`exog` must have the same row index as `endog`.*'s0' against 'r0'"):
        mg.BayesMixedGLM(y, X, None, None)
    # a named Series names the response; float categories take new floats in predict (95.0 -> "95" broke 1.0)
    assert mg.BayesMixedGLM(y.rename("cases"), X.set_axis(y.index), None, None).endog_names == "cases"
    cbpp = load("cbpp")
    floats = cbpp.assign(p=pd.Categorical(cbpp.period.astype(int).astype(float)))
    res = mg.BayesMixedGLM.from_formula("incidence ~ p + (1|herd)", data=floats, trials="size").fit_vb()
    np.testing.assert_allclose(res.predict(pd.DataFrame({"p": [1.0, 2.0], "herd": ["1", "1"]})),
                               res.predict(floats.iloc[[0, 1]]), rtol=1e-12)
    # repeated names within a component (two factors' dummies side by side): counted, not an error
    Zdf = pd.concat([pd.get_dummies(cl.herd).astype(float), pd.get_dummies(cl.period).astype(float)], axis=1)
    Zdf = Zdf.loc[:, Zdf.sum() > 0]
    model = mg.BayesMixedGLM(cl.y, np.ones((40, 1)), Zdf, np.zeros(Zdf.shape[1], int))
    assert model.vc_names[0] == "VC_1[0]"


def test_a_missing_component_label_and_a_callback_of_the_wrong_arity_are_named():
    with pytest.raises(mg.DataError, match="`ident` must not contain None or NaN.*got 4 of them"):
        mg.BayesMixedGLM(Y, X, Z, [None] * 4)
    model = mg.BayesMixedGLM(Y, X, Z, IDENT)
    with pytest.raises(mg.DataError, match=r"`callback` must take two arguments.*\(fraction\)"):
        model.fit_vb(callback=lambda fraction: None)
    seen = []
    model.fit_vb(callback=lambda fraction, message, *rest: seen.append(fraction))
    assert seen and seen[-1] == 1.0


def test_summary_has_statsmodels_tables_and_latex():
    res = mg.BayesMixedGLM.from_formula("incidence ~ period + (1|herd)", data=load("cbpp"), trials="size").fit_vb()
    summary = res.summary()
    facts, params = summary.tables
    assert list(params.index) == list(res.fe_names) + list(res.vcp_names)
    assert "Binomial Mixed GLM Results" in facts.iloc[0, 0]
    latex = summary.as_latex()
    # (LaTeX's special characters escaped: a bare % would comment out the rest of the header row)
    assert r"2.5\%" in latex and r"N(0, 2\textasciicircum{}2)" in latex and "fe \\textasciitilde{} N" in latex
    assert latex.count("\\\\") == len(params) + 1


def test_the_models_predict_reads_new_rows_as_the_results_predict_does():
    """``model.predict(params, df)`` (statsmodels' signature) turned a formula model's raw data frame into
    floats: cbpp's four columns passed for the four fixed effects, and the predictions were 1e-9 where the
    results' predict gave 0.2. New rows now go through the formula, with the offset column."""
    cbpp = load("cbpp")
    m = mg.BayesMixedGLM.from_formula("incidence ~ period + (1 | herd)", data=cbpp, trials="size")
    r = m.fit_vb()
    new = cbpp.head(6)
    np.testing.assert_allclose(m.predict(r.params, new), r.predict(new), rtol=1e-12)
    np.testing.assert_allclose(m.predict(r.params, new), m.predict(r.params)[:6], rtol=1e-12)
    np.testing.assert_allclose(m.predict(r.params, {"period": ["1", "4"]}), r.predict({"period": ["1", "4"]}))
    # an offset column is read from the new rows, and an explicit offset overrides it
    df = cbpp.assign(log_size=np.log(cbpp["size"]))
    mp = mg.PoissonBayesMixedGLM.from_formula("incidence ~ period + (1 | herd)", data=df, offset="log_size")
    rp = mp.fit_vb()
    np.testing.assert_allclose(mp.predict(rp.params, df.head(3)), mp.predict(rp.params)[:3], rtol=1e-12)
    np.testing.assert_allclose(mp.predict(rp.params, df.head(3), linear=True, offset=0.0),
                               mp.predict(rp.params, df.head(3), linear=True) - df["log_size"][:3], rtol=1e-12)
    # a model built from arrays takes a DataFrame's columns by name, and names a text column
    arr = mg.BayesMixedGLM(m.endog, pd.DataFrame(m.exog, columns=m.fep_names), m.exog_vc, m.ident,
                           trials=m.trials)
    X = pd.DataFrame(m.exog[:3], columns=m.fep_names)
    np.testing.assert_allclose(arr.predict(r.params, X[X.columns[::-1]]), m.predict(r.params)[:3], rtol=1e-12)
    with pytest.raises(mg.DataError, match="`exog` column `period` must be numeric"):
        arr.predict(r.params, X.assign(period=["a", "b", "c"])[["Intercept", "period", "period[T.3]", "period[T.4]"]])


def test_messages_name_the_argument_given_and_complex_data_is_refused():
    res = mg.BayesMixedGLM.from_formula("incidence ~ period + (1|herd)", data=load("cbpp"), trials="size").fit_vb()
    with pytest.raises(mg.DataError, match=r"`name` must be one of \['herd'\] or an index; got 'nope'"):
        res.vcp_density("nope")
    with pytest.raises(mg.DataError, match=r"`term` must be one of \['herd'\]"):
        res.random_effects("nope")
    with pytest.raises(mg.DataError, match="`endog` must be real numbers; got complex values"):
        mg.BayesMixedGLM(Y + 0j, X, Z, IDENT)
    with pytest.raises(mg.DataError, match="`exog_vc` must be real numbers; got complex values"):
        mg.BayesMixedGLM(Y, X, sp.csr_matrix(Z, dtype=complex), IDENT)
    fit = mg.BayesMixedGLM(Y, X, Z, IDENT).fit_vb()
    with pytest.raises(mg.DataError, match="`exog` must be real numbers; got complex values"):
        fit.predict(np.asarray(X) + 1j)


def test_mixture_quantiles_are_a_gaussians_and_a_point_masss():
    from mglm_core.results import Z975, mixture_quantiles

    lower, upper = mixture_quantiles([1.0], [[2.0, -1.0]], [[0.5, 3.0]])
    np.testing.assert_allclose(lower, [2.0 - Z975 * 0.5, -1.0 - Z975 * 3.0], rtol=1e-9)
    np.testing.assert_allclose(upper, [2.0 + Z975 * 0.5, -1.0 + Z975 * 3.0], rtol=1e-9)
    # two point masses (SD 0) of weights 0.9 and 0.1: the 2.5 % quantile is the first, the 97.5 % the second
    lower, upper = mixture_quantiles([0.9, 0.1], [[0.0], [10.0]], [[0.0], [0.0]])
    assert lower[0] == pytest.approx(0.0, abs=1e-6) and upper[0] == pytest.approx(10.0, abs=1e-6)


def test_summary_names_the_offset_and_the_mixtures_are_read_only():
    """summary()'s header says where the offset came from (a column and lme4's offset terms); the mixtures kept for
    the intervals are read-only, as the rest of a result."""
    import warnings

    rng = np.random.default_rng(1)
    df = pd.DataFrame({"expo": rng.uniform(0.5, 5, 120), "x": rng.normal(size=120),
                       "g": rng.integers(0, 12, 120).astype(str), "w": 0.5})
    df["y"] = rng.poisson(df.expo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mg.BayesMixedGLM.from_formula("y ~ x + offset(log(expo)) + (1 | g)", data=df, family="poisson",
                                            offset="w").fit_laplace()
        bare = mg.BayesMixedGLM.from_formula("y ~ x + (1 | g)", data=df, family="poisson").fit_map()
    assert "; offset: `w` + offset(log(expo))" in str(res.summary())
    assert "offset" not in str(bare.summary()).split("\n")[2]
    w, means, sds = res.extra["vc_mixture"][:3]
    for a in (w, means, sds):
        with pytest.raises(ValueError, match="read-only"):
            a[0] = 1.0


def test_prior_pull_is_exact_for_a_gaussian_likelihood():
    """priors.prior_pull: for a Gaussian likelihood N(beta_hat, Lambda^-1) and the prior N(0, fe_p^2 I), the
    posterior N(m, Sigma) gives back beta_hat and the move m - beta_hat in posterior SDs exactly, with badly scaled
    coordinates (an intercept and a covariate in the hundreds); a likelihood that does not identify a direction
    gives None."""
    from mglm_core.priors import prior_pull

    rng = np.random.default_rng(0)
    A = rng.normal(size=(3, 3))
    D = np.diag([1.0, 100.0, 0.01])
    lam = D @ (A @ A.T + 3 * np.eye(3)) @ D
    beta_hat = np.array([11.4, 0.02, -300.0])
    fe_p = 2.0
    cov = np.linalg.inv(lam + np.eye(3) / fe_p**2)
    m = cov @ lam @ beta_hat
    pull, alone = prior_pull(m, cov, fe_p)
    np.testing.assert_allclose(alone, beta_hat, rtol=1e-8)
    np.testing.assert_allclose(pull, (beta_hat - m) / np.sqrt(np.diag(cov)), rtol=1e-8)
    flat = D @ np.diag([1.0, 1.0, 0.0]) @ D  # (nothing about the third coordinate in the data)
    assert prior_pull(np.zeros(3), np.linalg.inv(flat + np.eye(3) / fe_p**2), fe_p) is None


def test_a_prior_that_decides_the_estimates_warns():
    """grouseticks with the height in metres: the default prior N(0, 2^2) holds the Intercept at 6.3 where the data
    want 11.4 (lme4): fit_laplace and fit_map warn, naming the effects it moves and by how much, and carry it on
    their warnings; with fe_p = 100 (lme4's estimates) or the height scaled, nothing is said. (fit_vb is not judged:
    its mean-field SDs are far too narrow to measure a move by, and it says so itself.)"""
    g = load("grouseticks")
    f = "TICKS ~ YEAR + HEIGHT + (1 | BROOD) + (1 | LOCATION)"
    for method in ("fit_laplace", "fit_map"):
        with pytest.warns(mg.DataWarning, match=r"prior N\(0, 2\^2\) moves Intercept by about [3-6]\.\d posterior SDs \(to "):
            res = getattr(mg.BayesMixedGLM.from_formula(f, data=g, family="poisson"), method)()
        assert any("moves Intercept" in w for w in res.warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error", mg.DataWarning)
        wide = mg.BayesMixedGLM.from_formula(f, data=g, family="poisson", fe_p=100.0).fit_laplace()
        mg.BayesMixedGLM.from_formula(f.replace("HEIGHT", "scale(HEIGHT)"), data=g, family="poisson").fit_laplace()
    assert wide.fe_mean[0] == pytest.approx(11.4, abs=0.3) and not wide.warnings
