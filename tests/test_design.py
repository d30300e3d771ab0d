"""Tests of mglm_core.design: formulas -> endog, dense X, sparse Z, ident.

Reference values: statsmodels 0.15 (``BinomialBayesMixedGLM.from_formula``, patsy engine)
is used as an oracle for ``vc_formulas``; the data sets are the R exports in demo_data/.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mglm_core as mg
from mglm_core.design import Design, build_design, check_formula
from mglm_core.errors import DataError, DataWarning, FormulaError, MglmError

DATA = Path(__file__).resolve().parents[1] / "demo_data"


def load(name: str) -> pd.DataFrame:
    """A demo data set with every factor column a pandas Categorical in R's level order."""
    df = pd.read_csv(DATA / f"{name}.csv")
    levels = json.loads((DATA / "factor_levels.json").read_text())[name]
    for col, lv in levels.items():
        df[col] = pd.Categorical(df[col].astype(str), categories=[str(v) for v in lv])
    return df


@pytest.fixture
def small() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 40
    return pd.DataFrame(
        {
            "y": rng.integers(0, 2, n).astype(float),
            "x": rng.normal(size=n),
            "z": rng.uniform(1, 2, size=n),
            "g": rng.choice(["a", "b", "c"], n),
            "h": rng.choice(["u", "v"], n),
            "V": rng.integers(1, 4, n),
            "yc": rng.normal(size=n),
        }
    )


# --------------------------------------------------------------------- fixed part

FIXED_NAMES = {
    "y ~ x": ["Intercept", "x"],
    "y ~ 0 + x": ["x"],
    "y ~ x - 1": ["x"],
    "y ~ g": ["Intercept", "g[T.b]", "g[T.c]"],
    "y ~ C(V)": ["Intercept", "C(V)[T.2]", "C(V)[T.3]"],
    "y ~ x:z": ["Intercept", "x:z"],
    "y ~ x*g": ["Intercept", "x", "g[T.b]", "g[T.c]", "x:g[T.b]", "x:g[T.c]"],
    "y ~ I(x**2)": ["Intercept", "I(x ** 2)"],
    "y ~ I(x^2)": ["Intercept", "I(x^2)"],  # (as written, as lme4 and the random slopes name it)
    "y ~ I(x^2) + log(z**2)": ["Intercept", "I(x^2)", "log(z ** 2)"],  # (R's ^ only inside I())
    "y ~ log(z) + np.log(z) + exp(x) + sqrt(z) + log1p(z)": [
        "Intercept", "log(z)", "np.log(z)", "exp(x)", "sqrt(z)", "log1p(z)",
    ],
    "y ~ center(x) + scale(z)": ["Intercept", "center(x)", "scale(z)"],
    "y ~ x + (1 | g)": ["Intercept", "x"],
    "y ~ (1 | g)": ["Intercept"],
    "y ~ (1 | g) + x + (0 + x | h)": ["Intercept", "x"],
    "y ~ x + (1 | g) - 1": ["x"],  # (lme4 accepts a term subtracted after the random-effect term)
    "y ~ (1 | g) - 1 + x": ["x"],
    "y ~ x + (1 | g) + (0 + x | h) - 1": ["x"],
    "y ~ C(g, Treatment('b'))": [
        "Intercept", "C(g, Treatment('b'))[T.a]", "C(g, Treatment('b'))[T.c]",
    ],
    "y ~ C(g, Sum)": ["Intercept", "C(g, Sum)[S.a]", "C(g, Sum)[S.b]"],
    "y ~ C(g, Treatment)": ["Intercept", "C(g, Treatment)[T.b]", "C(g, Treatment)[T.c]"],  # patsy's names
    "y ~ C(g, contr.sum) + x": ["Intercept", "C(g, contr.sum)[S.a]", "C(g, contr.sum)[S.b]", "x"],
    "y ~ C(g, Helmert)": ["Intercept", "C(g, Helmert)[H.b]", "C(g, Helmert)[H.c]"],
    "y ~ C(g, Poly)": ["Intercept", "C(g, Poly)[.L]", "C(g, Poly)[.Q]"],
    "y ~ C(g, Diff)": ["Intercept", "C(g, Diff)[D.b]", "C(g, Diff)[D.c]"],
    "y ~ log2(z) + np.log10(z) + standardize(x)": ["Intercept", "log2(z)", "np.log10(z)", "standardize(x)"],
    "y ~ bs(z, df=3)": ["Intercept", "bs(z, df=3)[1]", "bs(z, df=3)[2]", "bs(z, df=3)[3]"],
    "y ~ poly(x, degree=2) + (1 | g)": ["Intercept", "poly(x, degree=2)[1]", "poly(x, degree=2)[2]"],
}


@pytest.mark.parametrize("formula,names", FIXED_NAMES.items())
def test_fixed_names(small, formula, names):
    d = build_design(formula, small)
    assert d.exog_names == names
    assert d.exog.shape == (len(small), len(names))
    assert d.exog.dtype == np.float64


@pytest.mark.parametrize("term", ["C(g, Treatment)", "C(g, Sum)", "C(g, Helmert)", "C(g, Poly)", "C(g, Diff)", "bs(z, df=4)",
                                  "bs(z, df=5, degree=2)", "Q('my col')", "np.log2(z)"])
def test_transforms_match_patsy(small, term):
    """Contrasts, B-splines and Q() give patsy's (statsmodels') columns, value for value."""
    patsy = pytest.importorskip("patsy")
    df = small.assign(**{"my col": small["x"] * 3})
    d = build_design(f"y ~ {term}", df)
    expected = np.asarray(patsy.dmatrix(term, df, return_type="dataframe"))
    assert d.exog.shape == expected.shape
    np.testing.assert_allclose(d.exog, expected, atol=1e-12)


def test_spline_basis_of_new_data_uses_the_fitted_knots(small):
    """bs() and poly() are stateful: a prediction on some rows equals the in-sample one on them."""
    import mglm_core as mg

    model = mg.BayesMixedGLM.from_formula("y ~ bs(z, df=3) + poly(x, degree=2) + (1 | g)", data=small,
                                          family="binomial")
    res = model.fit_vb()
    rows = small.iloc[[5, 0, 17]]
    np.testing.assert_allclose(res.predict(rows, linear=True), res.predict(linear=True)[[5, 0, 17]], rtol=1e-10)


def test_power_inside_I_is_power(small):
    d = build_design("y ~ I(x^2)", small)
    np.testing.assert_allclose(d.exog[:, 1], small["x"] ** 2)


def test_endog_and_types(small):
    d = build_design("y ~ x + (1 | g)", small)
    assert isinstance(d, Design)
    np.testing.assert_array_equal(d.endog, small["y"])
    assert d.endog.dtype == np.float64
    assert sp.isspmatrix_csr(d.exog_vc) or isinstance(d.exog_vc, sp.csr_matrix)
    assert d.ident.dtype == np.int64
    assert d.trials is None and d.offset is None and d.n_dropped == 0


def test_salamanders_reference_level_follows_categorical_order():
    df = load("Salamanders")
    assert list(df["mined"].cat.categories) == ["yes", "no"]
    d = build_design("count ~ mined + (1 | site)", df)
    assert d.exog_names == ["Intercept", "mined[T.no]"]
    np.testing.assert_array_equal(d.exog[:, 1], (df["mined"] == "no").to_numpy(float))
    assert d.vcp_names == ["site"] and d.exog_vc.shape == (644, 23)


# --------------------------------------------------------------------- random effects


def test_cbpp_bar_term():
    df = pd.read_csv(DATA / "cbpp.csv")  # herd and period read as integers
    d = build_design("incidence ~ C(period) + (1 | herd)", df, trials="size")
    assert d.exog_vc.shape == (56, 15)
    np.testing.assert_array_equal(d.ident, np.zeros(15, dtype=np.int64))
    assert d.vcp_names == ["herd"]
    assert d.vc_names == [f"herd[{k}]" for k in range(1, 16)]  # numeric levels sorted numerically
    Z = d.exog_vc.toarray()
    np.testing.assert_array_equal(Z.sum(axis=1), 1.0)
    np.testing.assert_array_equal(Z.argmax(axis=1), df["herd"].to_numpy() - 1)
    np.testing.assert_array_equal(d.trials, df["size"])


@pytest.mark.parametrize(
    "lhs", ["cbind(incidence, size - incidence)", "cbind(incidence, fail)"]
)
def test_cbpp_cbind(lhs):
    df = load("cbpp").assign(fail=lambda f: f["size"] - f["incidence"])
    d = build_design(f"{lhs} ~ period + (1 | herd)", df)
    np.testing.assert_array_equal(d.endog, df["incidence"])
    np.testing.assert_array_equal(d.trials, df["size"])
    assert d.exog_names == ["Intercept", "period[T.2]", "period[T.3]", "period[T.4]"]
    assert d.exog_vc.shape == (56, 15)


def test_grouseticks_three_components():
    df = load("grouseticks")
    d = build_design("TICKS ~ YEAR + HEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)", df)
    assert d.exog_names == ["Intercept", "YEAR[T.96]", "YEAR[T.97]", "HEIGHT"]
    assert d.vcp_names == ["BROOD", "INDEX", "LOCATION"]
    np.testing.assert_array_equal(np.bincount(d.ident), [118, 403, 63])
    assert d.exog_vc.shape == (403, 584) and d.exog_vc.nnz == 3 * 403
    assert [t.name for t in d.vc_terms] == d.vcp_names
    assert len(d.vc_terms[0].levels) == 118


def test_slope_and_interaction_terms(small):
    d = build_design("y ~ x + (0 + x | g) + (1 | g:h)", small)
    assert d.vcp_names == ["g:x", "g:h"]
    assert d.vc_names[:3] == ["g:x[a]", "g:x[b]", "g:x[c]"]
    assert d.vc_names[3] == "g:h[a:u]"
    Z = d.exog_vc.toarray()
    codes = small["g"].map({"a": 0, "b": 1, "c": 2}).to_numpy()
    np.testing.assert_allclose(Z[np.arange(len(small)), codes], small["x"])
    assert d.vc_terms[0].slope == "x" and d.vc_terms[0].group == "g"
    assert d.vc_terms[1].group == "g:h" and d.vc_terms[1].slope is None


def test_transform_slopes_match_their_columns(small):
    """A random slope may be a one-column transform, as in lme4: ``(1 + log(w) || g)`` has the same Z as the
    slope of a column holding log(w), named by the transform; a stateful transform keeps the fitted
    centre and scale for new data."""
    df = small.assign(w=np.exp(small.x), lw=small.x, x2=small.x**2)
    d = build_design("y ~ x + (1 + log(w) || g) + (0 + I(x^2) | h)", df)
    ref = build_design("y ~ x + (1 + lw || g) + (0 + x2 | h)", df)
    assert d.vcp_names == ["g", "g:log(w)", "h:I(x^2)"]
    assert d.vc_names[3] == "g:log(w)[a]"
    np.testing.assert_allclose(d.exog_vc.toarray(), ref.exog_vc.toarray(), rtol=1e-12)
    assert d.vc_terms[1].columns_used() == ("g", "w")
    s = build_design("y ~ (0 + scale(w) | g)", df)
    new = df.iloc[:4].assign(w=[1.0, 2.0, 3.0, 4.0])
    expect = (new.w - df.w.mean()) / df.w.std()
    np.testing.assert_allclose(s.spec.exog_vc_for(new).toarray().sum(axis=1), expect, rtol=1e-12)
    assert s.spec.unseen_levels(new) == {}


@pytest.mark.parametrize("formula, error, message", [
    ("y ~ (0 + bs(x, df=3) | g)", FormulaError, r"one-column transforms \(I\(x\), log\(x\).*bs\(\) gives several"),
    ("y ~ (0 + C(h) | g)", FormulaError, r"C\(\) makes a factor: for an effect of each of its levels"),
    ("y ~ (0 + log(x) * 2 | g)", FormulaError, r"a random slope must be one column or one transform.*got '\*'"),
    ("y ~ (0 + log(z) + I(log(z)) | g)", FormulaError, r"terms must differ; got 'g:log\(z\)' and 'g:I\(log\(z\)\)', "
                                                      r"whose columns are equal"),
    ("y ~ (1 + I(z**0) || g)", FormulaError, r"terms must differ; got 'g' and 'g:I\(z\*\*0\)'"),
    ("y ~ (0 + log(z, 2) | g)", FormulaError, r"log\(\) takes one argument \(for other bases: log2\(x\)"),
    ("y ~ (0 + h | g)", DataError, r"slope `h` must be a numeric column.*write \(1 \| g:h\)"),
    ("y ~ (0 + log(x - 10) | g)", DataError, (r"slope `log\(x - 10\)` of the random-effect term `g:log\(x - 10\)` "
                                              r"must be finite; got 40 non-finite")),
])
def test_slope_errors_say_what_a_slope_may_be(small, formula, error, message):
    with pytest.raises(error, match=message):
        build_design(formula, small)


@pytest.mark.parametrize("term", ["(1 + x | g)", "(x | g)", "(x || g)", "(1 | g) + (0 + x | g)"])
def test_correlated_syntax_expands_to_independent_components(small, term):
    """lme4's correlated syntax is fitted as independent components, and says so (an lme4 user would
    otherwise expect the correlation to be estimated); ``||`` and separate terms say nothing."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = build_design(f"y ~ {term}", small)
    assert d.vcp_names == ["g", "g:x"]
    np.testing.assert_array_equal(d.ident, [0, 0, 0, 1, 1, 1])
    said = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    if term in ("(1 + x | g)", "(x | g)"):
        assert said == ["(1 + x | g) is fitted as independent random effects, (1 | g) + (0 + x | g): the model "
                        "has no correlations between them (lme4 would estimate them). Write (1 + x || g) to say so."]
        assert d.notes == tuple(said)
    else:
        assert said == [] and d.notes == ()


def test_nested_grouping(small):
    d = build_design("y ~ (1 | g/h)", small)
    assert d.vcp_names == ["g", "g:h"]


def test_formula_terms_come_before_vc_formulas(small):
    d = build_design("y ~ x + (1 | h)", small, vc_formulas={"grp": "0 + C(g)"})
    assert d.vcp_names == ["h", "grp"]
    assert d.vc_names == ["h[u]", "h[v]", "C(g)[a]", "C(g)[b]", "C(g)[c]"]
    np.testing.assert_array_equal(d.ident, [0, 0, 1, 1, 1])


def test_duplicate_component_names(small):
    with pytest.raises(FormulaError, match="unique"):
        build_design("y ~ (1 | g)", small, vc_formulas={"g": "0 + C(g)"})
    with pytest.raises(FormulaError, match="got 'g:h' and 'h:g', the same effects twice"):
        build_design("y ~ (1 | g:h) + (1 | h:g)", small)
    with pytest.raises(FormulaError, match=r"needs 1, 0 or slopes before '\|'"):
        build_design("y ~ (| g)", small)


VC_FORMULAS = {
    "v": "0 + C(V)*yc",
    "vi": "0 + C(V)",
    "gs": "0 + C(g):yc",
    "sg": "0 + yc:C(g)",
    "gg": "0 + g",
    "m1": "C(h) - 1",
}


def test_vc_formulas_match_statsmodels(small):
    from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = BinomialBayesMixedGLM.from_formula("y ~ x + C(g)", VC_FORMULAS, small)
    d = build_design("y ~ x + C(g)", small, vc_formulas=VC_FORMULAS)
    # statsmodels' names, prefixed by the component where two components make the same ones (here v and vi
    # both make C(V)[1]...: statsmodels keeps the duplicates, ours must be distinct)
    comp = [d.vcp_names[j] for j in d.ident]
    assert [n.removeprefix(c + ":") for n, c in zip(d.vc_names, comp)] == list(ref.vc_names)
    assert len(set(d.vc_names)) == len(d.vc_names) and d.vc_names[0] == "v:C(V)[1]"
    assert d.vcp_names == list(ref.vcp_names)
    np.testing.assert_array_equal(d.ident, ref.ident)
    ref_vc = ref.exog_vc.toarray() if sp.issparse(ref.exog_vc) else np.asarray(ref.exog_vc)
    np.testing.assert_allclose(d.exog_vc.toarray(), ref_vc)
    # fixed effects: same columns (formulaic orders terms by degree, patsy differently)
    ref_x = pd.DataFrame(ref.exog, columns=ref.exog_names)
    assert sorted(d.exog_names) == sorted(ref.exog_names)
    np.testing.assert_allclose(d.exog, ref_x[d.exog_names].to_numpy())
    np.testing.assert_array_equal(d.endog, ref.endog)


def test_single_level_grouping_factor(small):
    with pytest.raises(DataError, match=r"grouping factor `h` must have at least 2 levels; got 1"):
        build_design("y ~ x + (1 | h)", small.assign(h="u"))


def test_text_slope_rejected(small):
    with pytest.raises(DataError, match=r"slope `g` must be a numeric column"):
        build_design("y ~ (0 + g | h)", small)


# --------------------------------------------------------------------- missing values


def test_missing_values_dropped_once(small):
    df = small.copy()
    df.loc[[1, 5], "x"] = np.nan
    df.loc[[5, 7], "g"] = None
    df.loc[9, "z"] = np.nan  # z is not used: the row stays
    off = np.arange(len(df), dtype=float)
    off[11] = np.nan
    with pytest.warns(DataWarning, match=r"dropped 4 of 40 rows with missing values.*x \(2\).*g \(2\).*offset \(1\)"):
        d = build_design("y ~ x + (1 | g)", df, offset=off)
    keep = np.ones(len(df), bool)
    keep[[1, 5, 7, 11]] = False
    assert d.n_dropped == 4
    assert d.endog.shape == (36,) and d.exog.shape[0] == 36 and d.exog_vc.shape[0] == 36
    np.testing.assert_array_equal(d.endog, df["y"][keep])
    np.testing.assert_array_equal(d.exog[:, 1], df["x"][keep])
    np.testing.assert_array_equal(d.offset, off[keep])
    assert d.exog_vc.nnz == 36


def test_all_rows_missing(small):
    with pytest.raises(DataError, match="at least one row without missing values.*x \\(40\\)"):
        build_design("y ~ x", small.assign(x=np.nan))


# --------------------------------------------------------------------- new data


def test_rebuild_on_new_data(small):
    d = build_design("y ~ center(x) + g + I(z^2) + (1 | g) + (0 + x | h)", small)
    np.testing.assert_allclose(d.spec.exog_for(small), d.exog)
    assert (d.spec.exog_vc_for(small) != d.exog_vc).nnz == 0
    # stateful transforms keep the fitted centre
    new = small.iloc[:5].copy()
    np.testing.assert_allclose(d.spec.exog_for(new), d.exog[:5])
    new = new.drop(columns="y")  # the response is not needed
    new["h"] = ["u", "zz", "v", "zz", "u"]
    Z = d.spec.exog_vc_for(new)
    assert Z.shape == (5, d.exog_vc.shape[1])
    hblock = Z.toarray()[:, d.ident == 1]
    np.testing.assert_array_equal(hblock[[1, 3]], 0.0)
    assert (hblock[[0, 2, 4]] != 0).sum() == 3
    assert d.spec.unseen_levels(new) == {"h:x": ["zz"]}
    assert d.spec.unseen_levels(small) == {}


def test_new_data_unseen_fixed_level(small):
    d = build_design("y ~ g", small)
    with pytest.raises(DataError, match="levels seen in fitting"):
        d.spec.exog_for(small.assign(g="zz"))


# --------------------------------------------------------------------- safe grammar


COLUMNS = ["y", "x", "g", "my col"]

REJECTED = {
    "y ~ __import__('os')": r"dunder name '__import__' is not allowed at position 4",
    "y ~ x.__class__": r"attribute access 'x.__class__' is not allowed",
    "y ~ lambda: 1": r"keyword 'lambda' is not allowed",
    "y ~ open('f')": r"function 'open' is not allowed at position 4",
    "y ~ os.system('ls')": r"attribute access 'os.system' is not allowed",
    "y ~ x + foo": r"unknown column 'foo' at position 8; columns are: y, x, g, my col",
    "y ~ x; import os": r"character ';' is not allowed at position 5",
    "y ~ I(x==1)": r"comparison 'x ==' is not allowed.*make the indicator a column of the data",
    "y ~ x + hérd": r"character 'é' is not allowed at position 9; a column name with letters outside ASCII goes in "
                    r"backticks",
    "y ~ x[0]": r"'\[' \(subscript or list\) is not allowed",
    "y ~ 'x'": r"string constant 'x' is not allowed here",
    "y ~ np.random(x)": r"attribute access 'np.random' is not allowed",
    "y ~ I(x | 1)": r"'\|' is only allowed in random-effect terms",
    "y ~ (1 | g) * x": r"random-effect term must be followed by '\+' or '-' and a term",
    "y ~ x - (1 | g)": r"random-effect term must be added with '\+' at position 6",
    "y ~ x ~ g": r"exactly one '~'",
    "y ~ x + (0 + offset(x) | g)": r"offset\(...\) must be a term of the formula's right-hand side, outside any "
                                   r"bracket at position 13",
    "y ~ x - offset(x)": r"an offset term must be added with '\+'",
    "y ~ offset() + x": r"offset\(\) needs the offset's expression",
    "y x": r"must contain '~'",
    "I(y) ~ x": r"response must be a column name",
    "y ~ `nope`": r"unknown column 'nope'",
    "y ~ (x": r"unclosed '\('",
    "y ~ ": r"right-hand side is empty",
    "y ~ (1 + C(g) | g)": r"random-effect terms accept only 1, 0, numeric column names and one-column transforms",
    "y ~ Q(x)": r"Q\(\) takes the column name as a quoted string, e.g. Q\('x'\)",
    "y ~ Q('nope')": r"unknown column 'nope' at position 6",
    "y ~ Q('x', 'g')": r"Q\(\) takes exactly one quoted column name",
    "y ~ Q()": r"Q\(\) takes exactly one quoted column name",
    "y ~ bs(x, 3)": r"bs\(\) takes its options as keywords",
    "y ~ bs(x, df=99)": r"`df=` must be a whole number from 1 to 30",
    "y ~ bs(x, df=9**9**9)": r"`df=` must be a whole number from 1 to 30",
    "y ~ poly(x, degree=x)": r"`degree=` must be a whole number",
    "y ~ bs(x, knots=3)": r"keyword argument 'knots' is not allowed",
    "y ~ bs(x, df=2)": r"bs\(\) needs df of at least its degree \(3\); got df=2 at position 13",
    "y ~ bs(x, degree=5, df=4)": r"bs\(\) needs df of at least its degree \(5\); got df=4",
    "y ~ C(g, Foo)": r"second argument of C\(\) must be a contrast .*got 'Foo'",
    "y ~ C(g, contr.bad)": r"attribute access 'contr.bad' is not allowed",
    "y ~ Sum(x)": r"function 'Sum' is not allowed",
    "y ~ x + Sum": r"unknown column 'Sum'",
    # each contrast's option: patsy's Treatment(reference=), R's contr.treatment(base=), none for the others
    "y ~ C(g, Treatment(base='b'))": r"Treatment\(\) names its reference level as reference=\.\.\.; got base=",
    "y ~ C(g, contr.treatment(reference='b'))": r"contr\.treatment\(\) names its reference level as base=",
    "y ~ C(g, Treatment(levels=['b']))": r"got levels=",
    "y ~ C(g, Sum(omit='b'))": r"Sum\(\) takes no options here .* write Sum or Sum\(\)",
    "y ~ C(g, Helmert('a'))": r"Helmert\(\) takes no options here",
    "y ~ C(g, contr.poly(2))": r"contr\.poly\(\) takes no options here",
}


@pytest.mark.parametrize("formula,message", REJECTED.items())
def test_check_formula_rejects(formula, message):
    with pytest.raises(FormulaError, match=message) as info:
        check_formula(formula, COLUMNS)
    assert info.value.formula == formula
    assert isinstance(info.value, MglmError) and isinstance(info.value, ValueError)


ACCEPTED = [
    "y ~ x + g",
    "y ~ I(x^2) + np.log(x) + log1p(x) + center(x)",
    "y ~ C(g, Treatment('b')) + C(g, levels=['b', 'a'])",
    "y ~ `my col` + (1 | g) + (0 + x || g)",
    "cbind(y, x - y) ~ 1",
    "y ~ C(g, Sum) + C(g, contr.helmert) + C(g, Diff) + C(g, Poly) + C(g, contr.treatment('b'))",
    "y ~ C(g, Treatment(reference='b')) + C(g, contr.treatment(base='b')) + C(g, Sum()) + C(g, Treatment(), levels=['b', 'a'])",
    "y ~ Q('my col') + log2(x) + np.log10(x) + bs(x, df=4, degree=3) + poly(x, degree=2) + standardize(x)",
]


@pytest.mark.parametrize("formula", ACCEPTED)
def test_check_formula_accepts(formula):
    check_formula(formula, COLUMNS)


@pytest.mark.parametrize("formula,message", [
    ("y ~ C(g, Treatment(reference='z'))", r"the reference level 'z' is not a level of `g`; its levels are 'a', 'b', 'c'"),
    ("y ~ C(g, contr.treatment(base=2))", r"not a level of `g` \(it names a level, not a position: R's base=2 is 'b' here\)"),
    ("y ~ C(k, Treatment(2))", r"not a level of `k` \(the levels are text: write '2'\); its levels are '1', '2', '3'"),
    ("y ~ C(n, Treatment(7))", r"the reference level 7 is not a level of `n`; its levels are 1, 2, 3 at position 19"),
])
def test_a_reference_level_the_column_lacks_is_named_with_its_levels(formula, message):
    """formulaic's message was "Value `2` for `TreatmentContrasts.base` is not among the provided levels"."""
    df = pd.DataFrame({"y": [0.0, 1.0, 1.0, 0.0, 1.0, 0.0], "g": list("abcabc"), "n": [1, 2, 3, 1, 2, 3]})
    df["k"] = pd.Categorical(df["n"].astype(str))
    with pytest.raises(FormulaError, match=message):
        build_design(formula, df)


@pytest.mark.parametrize("formula,message", [
    ("y ~ C(g, levels=['b', 'a'])", r"`levels=` of C\(g, \.\.\.\) must list every value of `g` and only its values "
                                    r"\(its values are 'a', 'b', 'c'\); not listed: 'c' at position 16"),
    ("y ~ C(g, Sum, levels=['c', 'b', 'a', 'z'])", r"not values of `g`: 'z'"),
    ("y ~ C(n, levels=['1', '2', '3'])", r"not listed: 1, 2, 3; not values of `n`: '1', '2', '3'"),
])
def test_levels_must_list_exactly_the_values_of_the_column(formula, message):
    """formulaic turned a value missing from levels=[...] into a row without any level (counted as the reference
    level, with a warning only; patsy refuses it) and a listed level without rows into a column of zeros."""
    df = pd.DataFrame({"y": [0.0, 1.0, 1.0, 0.0, 1.0, 0.0], "g": list("abcabc"), "n": [1, 2, 3, 1, 2, 3]})
    with pytest.raises(FormulaError, match=message):
        build_design(formula, df)
    exog = build_design("y ~ C(g, levels=['c', 'a', 'b'])", df).exog  # every value listed: c is the reference
    np.testing.assert_array_equal(exog[:, 1:], np.column_stack([df.g == "a", df.g == "b"]).astype(float))


@pytest.mark.parametrize("formula,message", [
    ("y ~ log(g)", r"log\(\) needs numbers, but `g` is a factor \(values 'a', 'b', 'c'\); use C\(g\) for its levels"),
    ("y ~ np.sqrt(g) + n", r"sqrt\(\) needs numbers, but `g`"),
    ("y ~ I((n + g) * 2)", r"I\(\) needs numbers, but `g`"),
    ("y ~ poly(Q('my g'), degree=2)", r"poly\(\) needs numbers, but `my g` is a factor .* use C\(`my g`\)"),
    ("y ~ center(k)", r"center\(\) needs numbers, but `k` is a factor \(values '1', '2', '3'\)"),
])
def test_a_factor_inside_a_numeric_transform_is_named(formula, message):
    """numpy's message was "loop of ufunc does not support argument 0 of type str"; a factor inside C() within
    I() stays allowed."""
    df = pd.DataFrame({"y": [0.0, 1.0, 1.0, 0.0, 1.0, 0.0], "g": list("abcabc"), "n": [1.0, 2, 3, 1, 2, 3]})
    df["k"], df["my g"] = pd.Categorical(df["n"].astype(int).astype(str)), df["g"]
    with pytest.raises(FormulaError, match=message):
        build_design(formula, df)
    assert build_design("y ~ I(C(g)) + log(n)", df).exog.shape == (6, 4)


def test_what_formulaic_still_refuses_is_a_formula_error(small, monkeypatch):
    """Past the checks, formulaic's own error is wrapped in a FormulaError that names the fixed part."""
    import formulaic

    def refuse(*args, **kwargs):
        raise ValueError("cannot evaluate")

    monkeypatch.setattr(formulaic, "model_matrix", refuse)
    with pytest.raises(FormulaError, match=r"could not build the fixed effects from 'x \+ g': cannot evaluate"):
        build_design("y ~ x + g + (1 | h)", small)


def test_a_reference_level_changes_the_treatment_contrast_as_patsy_and_r_name_it():
    """Treatment(reference=), Treatment('b'), contr.treatment(base=) and a numeric level of a numeric column all
    drop the named level: the fitted design equals the one with that level first."""
    df = pd.DataFrame({"y": [0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0], "g": list("abcabca"), "n": [1, 2, 3, 1, 2, 3, 1]})
    want = build_design("y ~ C(g, levels=['b', 'a', 'c'])", df).exog
    for term in ("C(g, Treatment(reference='b'))", "C(g, Treatment('b'))", "C(g, contr.treatment(base='b'))"):
        np.testing.assert_array_equal(build_design(f"y ~ {term}", df).exog, want)
    np.testing.assert_array_equal(build_design("y ~ C(n, Treatment(2))", df).exog, want)


@pytest.mark.parametrize("formula,column", [("y ~ log(x)", "log"), ("y ~ np.log(x)", "np"), ("y ~ C(g)", "C"),
                                            ("y ~ C(g, Sum)", "Sum"), ("y ~ C(g, contr.sum)", "contr")])
def test_a_column_named_like_a_function_is_named_in_the_error(small, formula, column):
    """formulaic looks names up in the data first, so a column named like a formula function hides it (its
    error was "'Series' object is not callable"); the check names the column instead."""
    df = small.assign(**{column: 1.0})
    with pytest.raises(FormulaError, match=f"the data column '{column}' has the name of a formula function"):
        build_design(formula, df)
    build_design("y ~ x", df)  # the column itself is fine


def test_formula_error_caret():
    with pytest.raises(FormulaError) as info:
        check_formula("y ~ x + foo", COLUMNS)
    err = info.value
    assert err.position == 8
    lines = str(err).splitlines()
    assert lines[1].strip() == "y ~ x + foo"
    assert lines[2].index("^") - lines[1].index("y") == 8


def test_build_design_checks_grammar(small):
    with pytest.raises(FormulaError, match="dunder"):
        build_design("y ~ __import__('os')", small)
    with pytest.raises(FormulaError, match="function 'open'"):
        build_design("y ~ x", small, vc_formulas={"a": "0 + open('f')"})


def test_backtick_column(small):
    df = small.rename(columns={"x": "my x"})
    d = build_design("y ~ `my x` + (0 + `my x` | g)", df)
    np.testing.assert_array_equal(d.exog[:, 1], df["my x"])
    assert d.vcp_names == ["g:my x"]


@pytest.mark.parametrize("rename,formula,message", [
    ({"x": "Intercept"}, "y ~ Intercept + (1 | g)", "'Intercept' from the terms '1' and 'Intercept'"),
    ({"x": "h[T.v]"}, "y ~ h + `h[T.v]` + (1 | g)", "'h[T.v]' from the terms 'h' and 'h[T.v]'"),
    ({"x": "x:z"}, "y ~ `x:z` + x:z + (1 | g)", "'x:z' from the terms"),
    ({"x": "1"}, "y ~ `1` + (1 | g)", "got `1`, which formulaic reads as the number 1"),
])
def test_data_column_named_like_a_made_column_is_an_error(small, rename, formula, message):
    """A data column named like a column the formula makes (or like a literal) would silently take
    that column's place, or be left out: pandas keeps one column per name."""
    df = small.rename(columns=rename)
    if "x:z" in rename.values():  # the interaction of the columns beside the column named like it
        df["x"] = small["x"]
    with pytest.raises(FormulaError, match=re.escape(message)):
        build_design(formula, df)
    d = build_design("y ~ `0` + (1 | g)", small.rename(columns={"x": "0"}))  # a name formulaic reads as the column
    assert d.exog_names == ["Intercept", "0"]
    np.testing.assert_array_equal(d.exog[:, 1], small["x"])


def test_unused_categories_of_a_fixed_factor_are_left_out(small):
    """A pandas Categorical with a declared but unused level (or one whose rows were dropped as missing)
    makes no all-zero dummy column (it was an error), as with the grouping factors; the data are unchanged."""
    df = small.assign(h=pd.Categorical(small["h"], categories=["u", "v", "w"]))
    d = build_design("y ~ h + (1 | g)", df)
    assert d.exog_names == ["Intercept", "h[T.v]"]
    assert list(df["h"].cat.categories) == ["u", "v", "w"]
    df.loc[df["h"] == "v", "x"] = np.nan  # every row of level v dropped for a missing x
    with pytest.warns(DataWarning) as caught:
        d = build_design("y ~ h + x + (1 | g)", df)
    assert d.exog_names == ["Intercept", "x"]  # one level left: said so, not silently
    assert any("`h` has a single level (u) in the rows used" in str(w.message) for w in caught)


def test_numbers_stored_as_text_are_pointed_out(small):
    """An object column of numbers becomes a factor of many levels, as formulaic reads it; said so."""
    with pytest.warns(DataWarning, match="`x` holds numbers stored as text.*factor of 40 levels.*pd.to_numeric"):
        d = build_design("y ~ x + (1 | g)", small.assign(x=small["x"].astype(object)))
    assert len(d.exog_names) == 40


def test_levels_that_print_alike_are_named_as_such(small):
    """A grouping column holding 1 and "1" has two levels with one label: the error names the column and
    the types (it spoke of `vc_names`, which the user never passed)."""
    df = small.assign(g=[1, "1", 2, "b"] * 10)
    with pytest.raises(DataError, match=r"grouping factor `g` must have levels with distinct labels; got '1'.*int, str"):
        build_design("y ~ (1 | g)", df)


# --------------------------------------------------------------------- validation


def test_validation_errors(small):
    with pytest.raises(FormulaError, match="unknown column 'nope'"):
        build_design("nope ~ x", small)
    with pytest.raises(DataError, match=r"`data` must have at least one row; got 0 rows"):
        build_design("y ~ x", small.iloc[:0])
    with pytest.raises(DataError, match=r"response `g` must be a numeric column"):
        build_design("g ~ x", small)
    with pytest.raises(DataError, match=r"`trials` \(`tr`\) must be >= the response `y`"):
        build_design("y ~ x", small.assign(tr=0.0), trials="tr")
    with pytest.raises(DataError, match=r"`trials` must be a column of data"):
        build_design("y ~ x", small, trials="nope")
    with pytest.raises(DataError, match=r"`offset` must have shape \(40,\)"):
        build_design("y ~ x", small, offset=np.zeros(3))
    with pytest.raises(FormulaError, match="must contain '~'"):
        build_design("y + x", small)
    with pytest.raises(DataError, match=r"`trials` must be None when the response is cbind"):
        build_design("cbind(y, x) ~ 1", small, trials="z")
    with pytest.raises(FormulaError, match=r"I\(\) needs numbers, but `g` is a factor"):
        build_design("y ~ I(g**2)", small)
    with pytest.raises(FormulaError, match=r"the reference level 'z' is not a level of `g`; its levels are 'c', 'a', 'b'"):
        build_design("y ~ C(g, Treatment('z'), levels=['c', 'a', 'b'])", small)
    with pytest.raises(DataError, match=r"fixed-effect column `log\(x\)` must be finite"):
        build_design("y ~ log(x)", small)  # x has negative values


def test_trials_and_offset_columns_and_arrays(small):
    df = small.assign(n=3.0, off=np.log(small["z"]))
    d = build_design("y ~ x", df, trials="n", offset="off")
    np.testing.assert_array_equal(d.trials, 3.0)
    np.testing.assert_allclose(d.offset, np.log(small["z"]))
    d2 = build_design("y ~ x", df, trials=np.full(40, 3.0), offset=df["off"].to_numpy())
    np.testing.assert_array_equal(d2.trials, d.trials)
    np.testing.assert_array_equal(d2.offset, d.offset)


def test_offset_terms_as_lme4_writes_them(small):
    """``offset(log(z))`` in the formula (lme4's), or the expression given as ``offset``, is the offset of a
    column holding log(z); it adds to an offset column, and new rows get it from their own z."""
    df = small.assign(lz=np.log(small.z), w=0.5)
    by_column = build_design("y ~ x + (1 | g)", df, offset="lz")
    d = build_design("y ~ x + offset(log(z)) + (1 | g)", df)
    assert d.exog_names == by_column.exog_names and d.spec.offset_terms == ("log(z)",)
    np.testing.assert_allclose(d.offset, by_column.offset, rtol=1e-14)
    np.testing.assert_allclose(build_design("y ~ x + (1 | g)", df, offset="log(z)").offset, by_column.offset)
    both = build_design("y ~ offset(I(2 * z)) + x", df, offset="w")
    np.testing.assert_allclose(both.offset, 0.5 + 2 * small.z, rtol=1e-14)
    new = pd.DataFrame({"x": [0.0, 1.0], "z": [1.0, np.e], "g": ["a", "b"]})
    np.testing.assert_allclose(d.spec.offset_for(new), [0.0, 1.0], atol=1e-15)
    np.testing.assert_allclose(d.spec.offset_for(new, offset=3.0), [3.0, 3.0])  # (given: the whole offset)
    with pytest.raises(DataError, match=r"the offset `log\(x\)` must be finite in every row; got \d+ rows where "
                                        r"it is not, the first at row \d+ of the data \(counted from 0\) \(log and "
                                        r"sqrt need values above 0"):
        build_design("y ~ offset(log(x))", small)
    with pytest.raises(FormulaError, match=r"function 'ofset' is not allowed at position 8; did you "
                                           r"mean offset\(\)\?; allowed functions are: C, I.*and offset\(...\)"):
        build_design("y ~ x + ofset(log(z))", small)
    with pytest.raises(DataError, match=r"the offset `C\(g\)` must be numeric; `g` is a factor"):
        build_design("y ~ x + offset(C(g))", small)
    with pytest.raises(FormulaError, match=r"the offset `bs\(x, df=3\)` must give one numeric column; got 3"):
        build_design("y ~ x + offset(bs(x, df=3))", small)
    from mglm_core.design import formula_columns
    assert formula_columns("y ~ x + offset(log(z)) + (1 | g)").offset == ("z",)
    # arithmetic as R reads it (formulaic's '*' would be an interaction), and an offset given twice refused
    np.testing.assert_allclose(build_design("y ~ x", df, offset="z * 2").offset, 2 * small.z, rtol=1e-14)
    np.testing.assert_allclose(build_design("y ~ x + offset(log(z) - 1)", df).offset, np.log(small.z) - 1)
    with pytest.raises(FormulaError, match=r"offset\(log\(z\)\) is given twice"):
        build_design("y ~ x + offset(log(z)) + offset(log(z))", df)
    with pytest.raises(DataError, match=r"the offset `g` must be numeric; `g` is a factor"):
        build_design("y ~ x + offset(g)", df)
    arr = build_design("y ~ x + offset(log(z))", df, offset=np.ones(40))
    with pytest.raises(DataError, match=r"pass predict\(..., offset=...\), the whole offset: its terms "
                                        r"offset\(log\(z\)\) included"):
        arr.spec.offset_for(new)
    import mglm_core as mg
    model = mg.BayesMixedGLM.from_formula("y ~ x + offset(log(z)) + (1 | g)", data=df, family="poisson")
    params = np.r_[0.3, 0.0, np.zeros(model.k_vcp + model.k_vc)]
    np.testing.assert_allclose(model.predict(params, new), np.exp(0.3) * new.z, rtol=1e-12)


def test_intercept_free_fixed_part(small):
    d = build_design("y ~ 0 + (1 | g)", small)
    assert d.exog.shape == (40, 0) and d.exog_names == []
    assert d.spec.exog_for(small.iloc[:3]).shape == (3, 0)


# --------------------------------------------------------------------- scale


def test_large_sparse_build_is_linear_in_nonzeros():
    rng = np.random.default_rng(1)
    n = 200_000
    df = pd.DataFrame(
        {
            "y": rng.integers(0, 2, n).astype(float),
            "x": rng.normal(size=n),
            "g": rng.integers(0, 50_000, n),
        }
    )
    t0 = time.perf_counter()
    d = build_design("y ~ x + (1 | g)", df)
    elapsed = time.perf_counter() - t0
    assert d.exog_vc.nnz == n
    assert d.exog_vc.shape == (n, df["g"].nunique())
    assert elapsed < 5.0

def test_formula_columns_by_role():
    """The columns a formula uses, parsed by the safe grammar (functions, namespaces and
    keyword names are not columns; cbind gives both response columns)."""
    from mglm_core.design import formula_columns
    from mglm_core.errors import FormulaError

    fc = formula_columns("y ~ x + log(z) + (1 | g) + (0 + x | g:h)")
    assert fc.response == ("y",) and fc.fixed == ("x", "z") and fc.groups == ("g", "h") and fc.slopes == ("x",)
    assert fc.terms == ((("g",), 1), (("g", "h"), 1))  # grouping factors, columns per level
    assert formula_columns("y ~ x + (1 + t || g) + (1 | g/h)").terms == ((("g",), 2), (("g",), 1), (("g", "h"), 1))
    # Q's string is a column; a contrast and keyword names are not
    assert formula_columns("y ~ Q('my col') + C(a, Sum) + C(b, contr.sum) + bs(x, df=3)").fixed == (
        "my col", "a", "b", "x")
    fc = formula_columns('cbind(s, n - s) ~ C(a, levels=["u", "v"]) + I(age^2) + np.log(w) + `odd name` '
                         "+ (1 + t || g) + (1 | g/h)")
    assert fc.response == ("s", "n") and fc.fixed == ("a", "age", "w", "odd name")
    assert fc.groups == ("g", "h") and fc.slopes == ("t",)
    assert fc.all == ("s", "n", "a", "age", "w", "odd name", "g", "h", "t")
    assert formula_columns("y ~ 1 + (1 | g)").fixed == ()
    with pytest.raises(FormulaError):
        formula_columns("y ~ x + (1 | )")
    with pytest.raises(FormulaError, match="response column left of '~'"):
        formula_columns("~ (1 | herd)")  # (was an IndexError from the parser, also in the dashboard)
    with pytest.raises(FormulaError, match="__import__"):
        formula_columns("y ~ __import__('os')", columns=["y", "x"])


def test_constant_arithmetic_is_floating_point(small):
    """Integer powers of constants would be exact and unbounded in Python (9**9**9 never returns):
    inside transforms the literals are floats, which overflow at once with an error; names keep the
    integers as written."""
    import signal

    def stuck(*_):
        raise AssertionError("formula evaluation did not return")

    old = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(20)
    try:
        for formula in ("y ~ I(x + 9**9**9)", "y ~ np.log(9**9**9) + x", "y ~ I(x + 2^99999999)"):
            with pytest.raises(FormulaError, match="Numerical result out of range"):
                build_design(formula, small)
        with pytest.raises(FormulaError, match="Numerical result out of range"):
            build_design("y ~ x", small, vc_formulas={"a": "0 + C(g):I(x + 9**9**9)"})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    d = build_design("y ~ I(x^2) + I(2**x) + np.log(x + 10) + C(g, levels=['b', 'a', 'c'])", small)
    assert d.exog_names[1:4] == ["I(x ** 2)", "I(2 ** x)", "np.log(x + 10)"]
    np.testing.assert_allclose(d.exog[:, 1:4], np.column_stack([small.x**2, 2.0**small.x, np.log(small.x + 10)]))


def test_vc_formula_and_slope_checks(small):
    with pytest.raises(FormulaError, match=r"`vc_formulas\['b'\]` must be a formula such as"):
        build_design("y ~ x", small, vc_formulas={"b": " "})
    bad = small.assign(x=np.where(np.arange(len(small)) == 3, np.inf, small.x))
    with pytest.raises(DataError, match="slope `x` of the random-effect term `g:x` must be finite; got 1"):
        build_design("y ~ 1 + (0 + x | g)", bad)
    with pytest.raises(FormulaError) as err:  # formulaic's message without terminal colour codes
        build_design("y ~ np . log(z)", small)
    assert "\x1b" not in str(err.value)


def test_cbind_failures_must_not_be_negative(small):
    df = small.assign(s=small["V"].astype(float), f=small["V"] - 2.0)
    with pytest.raises(DataError, match=r"the failures `f` in cbind\(...\) must be >= 0; got -1 at row"):
        build_design("cbind(s, f) ~ x + (1 | g)", df)


def test_formulas_built_in_threads_leave_the_warning_filters_as_they_were():
    """Formula building swaps the process's warning filters (catch_warnings): from two threads at once the
    restores could interleave and leave formulaic's warnings ignored for good; a lock keeps them in order."""
    import threading
    import warnings

    from mglm_core.datasets import load

    cbpp = load("cbpp")
    before = list(warnings.filters)

    def build():
        for _ in range(20):
            build_design("incidence ~ period + log(size) + (1 | herd)", cbpp, trials="size")

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert warnings.filters == before


def test_a_vc_formula_with_an_intercept_is_warned_of():
    """``vc_formulas={"g": "C(g)"}`` (no ``0 +``) makes an intercept shared by every row plus contrasts, not one
    effect per level: taken, as statsmodels takes it, with a warning that says how to write the usual model."""
    df = pd.DataFrame({"y": [0, 1, 1, 0, 1, 0], "g": list("aabbcc")})
    with pytest.warns(DataWarning, match=r"vc_formulas\['g'\] = 'C\(g\)' adds an intercept column.*'0 \+ C\(g\)'"):
        d = build_design("y ~ 1", df, vc_formulas={"g": "C(g)"})
    assert d.vc_names[0] == "Intercept"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_design("y ~ 1", df, vc_formulas={"g": "0 + C(g)"})
        build_design("y ~ 1", df, vc_formulas={"g": "1 + C(g)"})  # (asked for)


@pytest.mark.parametrize("formula, message", [
    ("y ~ factor(h) + (1 | g)", r"function 'factor' is not allowed .*\(R's factor\(x\) is C\(x\) here"),
    ("y ~ as.factor(h) + (1 | g)", r"R's as.factor\(\) is not a formula function here .*\(R's as.factor\(x\) is C\(x\)"),
    ("y ~ as.numeric(x) + (1 | g)", r"R's as.numeric\(\) .*\(a numeric column is used as it is\)"),
    ("y ~ ordered(h) + (1 | g)", r"\(R's ordered\(x\) is C\(x, Poly\) here"),
    ("y ~ poly(x, 2) + (1 | g)", r"poly\(\) takes its options as keywords .*\(R's poly\(x, 2\) is poly\(x, degree=2\)\)"),
])
def test_r_spellings_get_their_equivalents(small, formula, message):
    """R's factor(), as.factor(), as.numeric(), ordered() and poly(x, 2) are refused with what to write here
    (as.factor had been "keyword 'as' is not allowed")."""
    with pytest.raises(FormulaError, match=message):
        build_design(formula, small)


def test_q_names_a_column_everywhere(small):
    """Q('a column') names a column in the response (alone and in cbind), the grouping factor and a slope, as
    backticks do (it had been refused outside the fixed part)."""
    df = small.rename(columns={"y": "n pos", "g": "herd id", "x": "my x"}).assign(**{"n.tot": 3.0})
    ref = build_design("cbind(`n pos`, `n.tot` - `n pos`) ~ `my x` + (1 + `my x` || `herd id`)", df)
    d = build_design("cbind(Q('n pos'), Q('n.tot') - Q('n pos')) ~ Q('my x') + (1 + Q('my x') || Q('herd id'))", df)
    assert d.vcp_names == ref.vcp_names == ["herd id", "herd id:my x"]
    np.testing.assert_array_equal(d.exog_vc.toarray(), ref.exog_vc.toarray())
    np.testing.assert_array_equal(d.endog, ref.endog)
    np.testing.assert_array_equal(d.trials, ref.trials)
    assert build_design("Q('n pos') ~ 1 + (1 | `herd id`)", df).endog.tolist() == df["n pos"].tolist()


def test_levels_holding_the_separator_keep_interactions_apart():
    """Levels that hold ':' themselves ("10:30") are shown in backticks in an interaction's names, so pairs that
    differ do not share a name (x:y with z and x with y:z had both been 'a:b[x:y:z]', a DataError)."""
    df = pd.DataFrame({"a": ["x:y", "x"] * 20, "b": ["z", "y:z"] * 20, "y": np.arange(40) % 3})
    d = build_design("y ~ 1 + (1 | a/b)", df)
    assert d.vc_names == ["a[x]", "a[x:y]", "a:b[x:`y:z`]", "a:b[`x:y`:z]"]
    np.testing.assert_array_equal(d.exog_vc.toarray()[:2, 2:], [[0, 1], [1, 0]])


def test_weights_get_what_to_write_instead(small):
    """lme4's weights= (a proportion's trials) is refused with the arguments that say it here, not a TypeError."""
    for cls in (mg.BayesMixedGLM, mg.BinomialBayesMixedGLM):
        with pytest.raises(DataError, match=r"`weights` is not an argument of this model: .*trials='n'"):
            cls.from_formula("y ~ x + (1 | g)", data=small, weights="z")
