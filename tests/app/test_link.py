"""Links (app.link): a session's model written as a URL query opens the same model in a new session."""
import pytest

from app import link
from app.dashboard import Dashboard
from app.state import AppState


def _model(st: AppState) -> dict:
    spec = st.spec
    return {"data": st.data.demo, "categorical": sorted(st.data.categorical), "formula": spec.formula(),
            "typed": spec.use_formula, "family": spec.family, "trials": spec.trials, "offset": spec.offset,
            "method": spec.method, "fe_p": spec.fe_p, "vcp_p": spec.vcp_p}


def _reopened(st: AppState, tab: str = "") -> Dashboard:
    return Dashboard(query=link.query_of(st, tab))


def test_a_sidebar_model_round_trips_through_its_link():
    st = AppState()
    st.load_demo("grouseticks", fit=False)
    st.spec.param.update(groups=["BROOD", "LOCATION"], method="vb", vcp_p=1.5, fe_p=3.0)
    d = _reopened(st, "random-effects")
    assert _model(d.state) == _model(st) and not d.state.spec.use_formula
    assert d.tabs[d.tabs.active].name == "Random effects"
    assert d.state.fit.status == "done" and list(d.state.fit.result.vcp_names) == ["BROOD", "LOCATION"]


def test_a_typed_formula_round_trips():
    st = AppState()
    st.load_demo("cbpp", fit=False)
    st.spec.param.update(formula_text="cbind(incidence, size - incidence) ~ period + (1 | herd)", use_formula=True,
                         trials="(none)")
    d = _reopened(st)
    assert _model(d.state) == _model(st) and d.state.spec.use_formula
    assert d.state.fit.status == "done"


def test_a_column_read_as_categories_round_trips():
    st = AppState()
    st.load_demo("cbpp", fit=False)
    st.data.categorical = ["size"]  # (size is then no longer the trials: a Poisson model of the counts)
    st.spec.param.update(family="poisson", groups=["herd", "size"])
    assert link.query_of(st)["categorical"] == '["size"]'
    d = _reopened(st)
    assert _model(d.state) == _model(st) and not d.state.spec.use_formula
    assert list(d.state.fit.result.vcp_names) == ["herd", "size"]


def test_a_demo_unchanged_makes_a_short_link_an_upload_names_its_file_and_simulated_data_none():
    st = AppState()
    st.load_demo("cbpp", fit=False)
    assert set(link.query_of(st)) == {"data", "formula", "family", "trials", "offset", "method"}
    st.load_upload("mine.csv", b"y,g\n1,a\n0,b\n1,a\n0,b\n", fit=False)
    query = link.query_of(st)
    assert query["upload"] == "mine.csv" and "data" not in query and query["formula"] == "y ~ 1 + (1 | g)"
    st.simulate(fit=False)
    assert link.query_of(st) == {}


@pytest.mark.parametrize("query, note", [
    ({"data": "nosuch"}, "The link's data set 'nosuch' is not a demo data set (cbpp,"),
    ({"data": "cbpp", "family": "gaussian"}, "The link's `family` must be one of 'binomial', 'poisson'; got 'gaussian'"),
    ({"data": "cbpp", "vcp_p": "1e9"}, "The link's `vcp_p` must be from 0.05 to 5; got 1e+09, so it is 5."),
    ({"data": "cbpp", "fe_p": "nan"}, "The link's `fe_p` must be a number from 0.1 to 10; got 'nan' (left at 2)."),
    ({"data": "cbpp", "method": "mcmc"}, "The link's `method` must be one of map (Laplace at the mode (MAP)), vb ("),
    ({"data": "cbpp", "tab": "nope"}, "The link's tab 'nope' is not one of fixed-effects, variance-components"),
    ({"data": "cbpp", "categorical": "size"}, "The link's `categorical` must be a JSON list of column names"),
    ({"data": "cbpp", "categorical": "[" * 1000 + "]" * 1000},
     "The link's `categorical` must be a JSON list of column names"),
    ({"data": "cbpp", "formula": "y ~ " + "x + " * 600}, "The link's `formula` is 2404 characters long"),
])
def test_a_bad_link_opens_the_rest_and_says_what_was_left_out(query, note):
    d = Dashboard(query=query)
    assert note in d.state.errors["link"]
    assert d.state.fit.status == "done"  # (the demo's own model where the link's could not be read)


def test_a_links_formula_is_never_evaluated_and_shows_its_error():
    d = Dashboard(query={"data": "cbpp", "formula": "incidence ~ __import__('os').system('x') + (1 | herd)"})
    assert d.state.spec.use_formula and "Formula not accepted" in d.state.errors["formula"]
    assert d.state.fit.result is None


def test_a_typed_formula_the_sidebar_cannot_say_leaves_the_sidebar_as_it_was():
    """The sidebar shows a link's formula where it builds it; else the formula is typed and the sidebar keeps the
    data set's own choices (it was set to the formula's columns: unticking the typed formula then fitted
    ``incidence ~ size + period + (1 | herd) + (0 + size | herd)``, another model)."""
    text = "incidence ~ period + offset(log(size)) + (0 + log(size) | herd) + (1 | herd)"
    d = Dashboard(query={"data": "cbpp", "formula": text, "family": "poisson"})
    spec = d.state.spec
    assert spec.use_formula and spec.formula() == text and spec.trials == "(none)"
    assert spec.built_formula() == "incidence ~ period + (1 | herd)"


def test_a_link_whose_model_cannot_be_fitted_says_so_on_the_first_screen():
    d = Dashboard(query={"data": "grouseticks", "family": "poisson", "formula": "TICKS ~ YEER + (1 | BROOD)"})
    st = d.state
    assert st.fit.status == "error" and "cannot be fitted" in st.fit.message
    assert "Its model cannot be fitted as it is: see the message in card 4 · Formula." in st.errors["link"]
    assert "unknown column 'YEER'" in st.errors["formula"]
