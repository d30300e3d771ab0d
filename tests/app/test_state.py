"""State classes without a browser: data in, validation messages, fitting with the real library."""
import numpy as np
import pandas as pd
import pytest

import mglm_core as mg
from app import adapter
from app.data import MAX_UPLOAD_BYTES, DataInputError, column_overview, load_demo, read_upload
from app.state import NONE, AppState, formula_parts, problem_size, validate


def test_demo_load_sets_roles_and_formula():
    st = AppState()
    st.load_demo("cbpp", fit=False)
    assert st.spec.formula() == "incidence ~ period + (1 | herd)"
    assert st.spec.trials == "size"
    assert "herd" in st.data.categorical and "period" in st.data.categorical
    assert st.data.numeric_columns == ["incidence", "size"]
    assert validate(st.spec, st.data) == {}


def test_fit_matches_library_directly(cbpp_state):
    df = load_demo("cbpp")
    res = mg.BayesMixedGLM.from_formula("incidence ~ period + (1 | herd)", data=df, family="binomial",
                                        trials="size").fit_vb()
    np.testing.assert_allclose(cbpp_state.fit.result.fe_mean, res.fe_mean, rtol=1e-6)
    assert cbpp_state.fit.status == "done"
    assert "converged" in cbpp_state.fit.message


def test_methods_offered_from_library():
    methods = adapter.available_methods()
    assert "map" in methods.values() and "vb" in methods.values()
    assert ("laplace" in methods.values()) == hasattr(mg.BayesMixedGLM, "fit_laplace")


@pytest.mark.parametrize("content, match", [
    (b"", "empty"),
    (b"\xff\xfe\x00\x81bad,bytes\n\x90,\x91\n", "looks binary"),
    (b"onlyone\n1\n2\n", "only one column"),
    (b"a,b\n", "no data rows"),
])
def test_bad_files_give_plain_messages(content, match):
    with pytest.raises(DataInputError, match=match):
        read_upload("x.csv", content)


def test_file_size_limit():
    with pytest.raises(DataInputError, match="limit is 50 MB"):
        read_upload("big.csv", b"a" * (MAX_UPLOAD_BYTES + 1))


def test_bad_upload_keeps_previous_result(cbpp_state):
    before = cbpp_state.fit.outcome
    assert not cbpp_state.load_upload("bad.csv", b"\xff\xfe\x00\xfa")
    assert "looks binary" in cbpp_state.errors["data"]
    assert cbpp_state.fit.outcome is before
    assert cbpp_state.data.dataset == "cbpp"


def test_upload_csv_guesses_roles_and_fits():
    st = AppState()
    csv = load_demo("cbpp_long").to_csv(index=False).encode()
    assert st.load_upload("long.csv", csv, fit=False)
    st.spec.param.update(response="y", family="binomial", fixed_factors=[], groups=["herd"])
    st.data.categorical = sorted(set(st.data.categorical) | {"herd", "period"})
    st.spec.fixed_factors = ["period"]
    st.spec.method = "vb"
    assert st.fit_now(), st.errors
    assert list(st.fit.result.fe_names)[:1] == ["Intercept"]


def _errors_for(**spec):
    st = AppState()
    st.load_demo("cbpp", fit=False)
    st._loading = True
    st.spec.param.update(**spec)
    st._loading = False
    return validate(st.spec, st.data)


def test_non_binary_outcome_with_binomial():
    assert "not binary" in _errors_for(trials=NONE)["response"]


def test_text_response():
    # (cbpp's herd is numbers read as categories: said so)
    assert "is marked under Treat as categorical" in _errors_for(response="herd", groups=["period"],
                                                                 fixed_factors=[])["response"]
    st = AppState()
    st.load_frame(pd.DataFrame({"y": list("abcab") * 4, "g": list("xxyyz") * 4}), fit=False)
    st.spec.param.update(response="y", family="binomial", groups=["g"])
    assert "is text" in validate(st.spec, st.data)["response"]


def test_negative_counts_with_poisson():
    st = AppState()
    df = pd.DataFrame({"y": [1, -2, 3, 0] * 5, "g": list("ababbabababababababa")})
    st.load_frame(df, fit=False)
    st.spec.param.update(response="y", family="poisson", groups=["g"])
    assert "negative" in validate(st.spec, st.data)["response"]


def test_grouping_factor_with_one_level():
    st = AppState()
    df = pd.DataFrame({"y": [0, 1] * 10, "g": ["only"] * 20, "h": list("ab") * 10})
    st.load_frame(df, fit=False)
    st.spec.param.update(response="y", family="binomial", groups=["g"])
    assert "only one level" in validate(st.spec, st.data)["groups"]


def test_text_column_with_many_levels_as_fixed_effect():
    st = AppState()
    st.load_demo("VerbAgg", fit=False)
    st._loading = True
    st.spec.param.update(fixed_factors=["id"], groups=["item"])
    st._loading = False
    assert "distinct values" in validate(st.spec, st.data)["fixed"]


@pytest.mark.parametrize("text", ["incidence ~ __import__('os').system('ls') + (1 | herd)",
                                  "incidence ~ period + (1 | herd); import os", "incidence ~ nosuchcol + (1 | herd)"])
def test_formula_with_python_code_is_rejected(text, cbpp_state):
    before = cbpp_state.fit.outcome
    cbpp_state.spec.param.update(formula_text=text)
    assert cbpp_state.spec.use_formula  # typing a formula switches to it
    assert "Formula not accepted" in cbpp_state.errors["formula"]
    assert cbpp_state.fit.outcome is before


def test_an_offset_is_a_typed_term_or_a_logarithm_chosen_in_the_model_card(cbpp_state):
    """lme4's ``offset(log(size))`` in a typed formula, and ``log(size)`` chosen under Offset, fit the library's
    model with that offset (a Poisson rate per animal); the reproducing script says so."""
    df = load_demo("cbpp")
    want = mg.BayesMixedGLM.from_formula("incidence ~ period + (1 | herd)", data=df, family="poisson",
                                         offset=np.log(df["size"].to_numpy())).fit_vb()
    spec = cbpp_state.spec
    assert "log(size)" in spec.param.offset.objects and "log(incidence)" not in spec.param.offset.objects  # (zeros)
    spec.param.update(family="poisson")
    spec.param.update(formula_text="incidence ~ period + offset(log(size)) + (1 | herd)", method="vb")
    assert "formula" not in cbpp_state.errors and cbpp_state.fit_now()
    np.testing.assert_allclose(cbpp_state.fit.result.fe_mean, want.fe_mean, rtol=1e-6)
    spec.param.update(use_formula=False, offset="log(size)")
    assert spec.formula() == "incidence ~ period + (1 | herd)" and cbpp_state.fit_now()
    np.testing.assert_allclose(cbpp_state.fit.result.fe_mean, want.fe_mean, rtol=1e-6)
    assert "offset='log(size)'" in adapter.snippet(cbpp_state.fit.outcome.request, "cbpp.csv")


def test_typed_formula_is_fitted(cbpp_state):
    cbpp_state.spec.param.update(formula_text="incidence ~ 1 + (1 | herd)")
    assert cbpp_state.fit_now()
    assert list(cbpp_state.fit.result.fe_names) == ["Intercept"]


def test_formula_parts():
    assert formula_parts("y ~ a + b + (1 | g) + (0 + x | h)") == ("y", ["a", "b"], ["g", "h"])


def test_live_vs_button_threshold():
    """The model size is the random-effect design's nonzeros plus the square of the dense block of
    several factors: VerbAgg's 316 persons crossed with 24 items (fits in a tenth of a second) is live;
    two crossed factors of 500 levels over 100,000 rows (a dense 500 x 500 block) are not."""
    st = AppState()
    st.load_demo("cbpp", fit=False)
    assert problem_size(st.spec, st.data) == 56 and st.is_live()
    st.load_demo("VerbAgg", fit=False)
    assert st.spec.formula().endswith("(1 | id) + (1 | item)")
    assert problem_size(st.spec, st.data) == 7584 * 2 + 24**2 and st.is_live()
    rng = np.random.default_rng(0)
    n = 100_000
    st.load_frame(pd.DataFrame({"y": rng.integers(0, 2, n), "g": rng.integers(0, 500, n).astype(str),
                                "h": rng.integers(0, 500, n).astype(str)}), fit=False)
    st.spec.param.update(response="y", family="binomial", groups=["g", "h"])
    assert problem_size(st.spec, st.data) == 2 * n + 500**2
    assert not st.is_live()
    st.request_fit()
    assert st.fit.status == "stale" and "press Fit" in st.fit.message


def test_refit_on_prior_change_changes_result(cbpp_state):
    cbpp_state.debounce = 0
    before = cbpp_state.fit.result.fe_sd.copy()
    cbpp_state.spec.fe_p = 0.3  # live refit (runs synchronously without an event loop)
    assert cbpp_state.fit.outcome.request.fe_p == 0.3
    assert not np.allclose(cbpp_state.fit.result.fe_sd, before)


def test_a_slow_model_fitted_before_is_shown_at_once(cbpp_state):
    """A model whose fits are too slow to refit live, switched back to a method whose result is cached,
    shows that result at once instead of asking for Fit."""
    st = cbpp_state
    st.debounce = 0
    st.live_seconds = 0.0  # every fit counts as slow: no live refits
    st.spec.method = "laplace"
    assert st.fit_now() and st.fit.outcome.request.method == "laplace"
    st.spec.method = "vb"  # cached by the fixture's fit
    assert st.fit.status == "done" and st.fit.outcome.request.method == "vb"
    st.spec.fe_p = 0.5  # not fitted before: out of date
    assert st.fit.status == "stale" and "press Fit" in st.fit.message
    st.spec.fe_p = 2.0
    assert st.fit.status == "done" and st.fit.outcome.request.fe_p == 2.0


def test_simulation_sets_truth_and_fits():
    st = AppState()
    st.sim.param.update(n_groups=20, group_size=15, seed=3)
    st.spec.method = "vb"
    st.simulate(fit=False)
    assert st.truth["fe"]["x"] == pytest.approx(1.0)
    assert set(st.truth["sd"]) == set(st.spec.groups)
    assert st.fit_now()
    assert abs(st.fit.result.fe_mean[list(st.fit.result.fe_names).index("x")] - 1.0) < 0.6


def test_simulation_in_a_worker_thread_loads_the_same_data():
    """The dashboard's button draws in a thread (simulate_async): the same data and truth as simulate(), and a
    failure becomes the teaching message."""
    import asyncio
    import threading

    a, b = AppState(), AppState()
    for st in (a, b):
        st.sim.param.update(n_groups=12, group_size=7, seed=5)
    a.simulate(fit=False)
    main = threading.get_ident()
    drew_in = []
    real = adapter.simulate

    def spy(*args):
        drew_in.append(threading.get_ident())
        return real(*args)

    adapter.simulate = spy
    try:
        asyncio.run(b.simulate_async(fit=False))
    finally:
        adapter.simulate = real
    assert drew_in and drew_in[0] != main
    pd.testing.assert_frame_equal(a.data.df, b.data.df)
    assert a.truth == b.truth and "teach" not in b.errors

    def broken(*args):
        raise ValueError("n_groups too large")

    adapter.simulate = broken
    try:
        asyncio.run(b.simulate_async(fit=False))
        a.simulate(fit=False)
    finally:
        adapter.simulate = real
    assert b.errors["teach"] == a.errors["teach"] == "Could not simulate: n_groups too large"
    pd.testing.assert_frame_equal(a.data.df, b.data.df)  # the data drawn before stay


def test_compare_methods(cbpp_state):
    out = cbpp_state.compare_methods(["map", "vb"])
    assert set(out) == {"map", "vb"}
    assert out["vb"].result.method == "vb"
    # each method's warnings stand next to its numbers (cbpp's MAP SD collapses to 0)
    from app.dashboard import Dashboard

    table = Dashboard._compare_table(out)
    notes = table.groupby("method")["notes"].first()
    assert "Degenerate mode" in notes["Laplace (MAP)"] and "Degenerate" not in notes["VB"]
    # an SD's estimate is its posterior median (as the SD plots mark it), said so: it was headed "mean"
    sd_row = table[(table["parameter"] == "SD(herd)") & (table["method"] == "VB")].iloc[0]
    assert sd_row["estimate is"] == "posterior median"
    assert sd_row["estimate"] == pytest.approx(out["vb"].result.vcp_table().loc["herd", "sd_median"])
    # the joint mode's estimates are modes; VB's row carries the main page's note on its narrow SDs
    map_rows = table[table["method"] == "Laplace (MAP)"]
    assert set(map_rows["estimate is"]) == {"posterior mode", "joint posterior mode"}
    assert "too narrow" in notes["VB"] and "too narrow" not in notes["Laplace (MAP)"]


def test_snippet_refits_same_model(cbpp_state, tmp_path, monkeypatch):
    code = adapter.snippet(cbpp_state.fit.outcome.request, "demo_data/cbpp.csv")
    assert "fit_vb()" in code and "trials='size'" in code
    ns = {}
    monkeypatch.setattr("builtins.print", lambda *a, **k: None)
    exec(compile(code, "snippet", "exec"), ns)  # the snippet is ours, not user input
    np.testing.assert_allclose(ns["res"].fe_mean, cbpp_state.fit.result.fe_mean, rtol=1e-6)


@pytest.mark.parametrize("filename,write", [
    ("cbpp.xlsx", lambda df, path: df.to_excel(path, index=False)),
    ("cbpp.parquet", lambda df, path: df.to_parquet(path, index=False)),
    ("cbpp_tab.csv", lambda df, path: df.to_csv(path, index=False, sep="\t")),
    ("cbpp_euro.csv", lambda df, path: df.assign(x=df["size"] / 7).to_csv(path, index=False, sep=";", decimal=",")),
])
def test_snippet_reads_each_upload_format_again(filename, write, tmp_path, monkeypatch):
    """The reproducing script reads the uploaded file as the dashboard did (Excel, Parquet, tab- or
    semicolon-separated with decimal commas; it used to call read_csv on every file) and refits the
    same model; decimal commas read as numbers."""
    df = load_demo("cbpp")[["herd", "incidence", "size", "period"]].astype({"herd": str, "period": str})
    path = tmp_path / filename
    write(df, path)
    st = AppState()
    assert st.load_upload(filename, path.read_bytes(), fit=False)
    if "euro" in filename:
        assert "x" in st.data.numeric_columns
    st.spec.param.update(response="incidence", trials="size", family="binomial", groups=["herd"],
                         fixed_factors=["period"], method="vb")
    assert st.fit_now(), st.errors
    code = adapter.snippet(st.fit.outcome.request, filename, st.data.reader)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("builtins.print", lambda *a, **k: None)
    ns = {}
    exec(compile(code, "snippet", "exec"), ns)  # the snippet is ours, not user input
    np.testing.assert_allclose(ns["res"].fe_mean, st.fit.result.fe_mean, rtol=1e-6)


@pytest.mark.parametrize("codes", [np.arange(5, 45), np.array([f"L{i}" for i in range(40)])])
def test_snippet_keeps_the_order_of_many_levels(codes, tmp_path, monkeypatch):
    """A fixed factor of 40 numeric codes (5..44) read as categories: the script sorted them as text, made '10'
    the reference instead of '5' and gave another Intercept. Text labels keep their own order too."""
    rng = np.random.default_rng(1)
    n = 400
    df = pd.DataFrame({"lvl": np.repeat(codes, n // len(codes)), "g": rng.integers(0, 8, n).astype(str),
                       "y": rng.integers(0, 2, n)})
    path = tmp_path / "codes.csv"
    df.to_csv(path, index=False)
    st = AppState()
    assert st.load_upload("codes.csv", path.read_bytes(), fit=False)
    if "lvl" not in st.data.categorical:
        st.data.categorical = st.data.categorical + ["lvl"]
    st.spec.param.update(response="y", family="binomial", groups=["g"], fixed_factors=["lvl"], fixed_numeric=[],
                         method="vb")
    assert st.fit_now(), st.errors
    code = adapter.snippet(st.fit.outcome.request, "codes.csv", st.data.reader)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("builtins.print", lambda *a, **k: None)
    ns = {}
    exec(compile(code, "snippet", "exec"), ns)  # the snippet is ours, not user input
    assert list(ns["res"].fe_names) == list(st.fit.result.fe_names)
    np.testing.assert_allclose(ns["res"].fe_mean, st.fit.result.fe_mean, rtol=1e-6)


def test_a_column_without_values_is_never_guessed_and_is_named_when_chosen():
    """An all-missing column passed as binary (no value outside {0, 1}) and became the response; the fit then
    said "`data` must have at least one row; got 0 rows"."""
    df = load_demo("cbpp").assign(empty=np.nan, blank=None)
    df = df[["empty", "blank", "herd", "incidence", "size", "period"]]
    st = AppState()
    st.load_frame(df, "holes", fit=False)
    assert st.spec.response == "incidence" and "empty" not in st.spec.groups + st.spec.fixed
    st.spec.param.update(fixed_numeric=["empty"])
    assert validate(st.spec, st.data) == {
        "fixed": "The covariate column 'empty' has no values (every row is missing): choose another column."}
    st.spec.param.update(fixed_numeric=[], offset="empty")
    assert validate(st.spec, st.data) == {
        "fixed": "The offset column 'empty' has no values (every row is missing): choose another column."}
    st.spec.param.update(offset=NONE, formula_text="incidence ~ empty + (1 | herd)", use_formula=True)
    assert "The covariate column 'empty' has no values" in validate(st.spec, st.data)["formula"]
    st.spec.param.update(use_formula=False, response="empty")
    assert "The response column 'empty' has no values" in validate(st.spec, st.data)["response"]


def test_a_response_or_trials_read_as_categorical_is_said_in_the_sidebar():
    """The response marked categorical passed the sidebar's checks and failed in the fit ("must be a numeric
    column; got dtype category"); the trials marked categorical left the trials unset without a word."""
    st = AppState()
    st.load_demo("cbpp", fit=False)
    st.data.categorical = st.data.categorical + ["incidence"]
    assert validate(st.spec, st.data)["response"].startswith(
        "The response 'incidence' is marked under Treat as categorical")
    st.data.categorical = [c for c in st.data.categorical if c != "incidence"] + ["size"]
    assert st.spec.trials == NONE
    assert "The trials column 'size' is marked under Treat as categorical" in validate(st.spec, st.data)["response"]
    st.data.categorical = [c for c in st.data.categorical if c != "size"]
    st.spec.trials = "size"
    assert validate(st.spec, st.data) == {}


def test_sessions_are_independent():
    a, b = AppState(), AppState()
    a.load_demo("cbpp", fit=False)
    b.load_demo("Salamanders", fit=False)
    assert a.spec.response == "incidence" and b.spec.response == "count"
    assert a.spec is not b.spec


def test_long_fit_reports_progress_through_the_event_loop():
    """A fit off the event loop shows a determinate, increasing progress (0-100) and its stage."""
    import asyncio

    from app.state import AppState

    st = AppState()
    st.load_demo("grouseticks", fit=False)
    st.spec.method = "laplace"
    st.quiet_fit_seconds = 0.0  # show progress at once
    st.progress_seconds = 0.0  # every change (the fit takes 0.1-0.3 s, as long as the default interval or less)
    seen = []
    st.fit.param.watch(lambda e: seen.append((e.new, st.fit.message)), "progress")
    asyncio.run(st.fit_async())
    assert st.fit.status == "done" and st.fit.outcome is not None
    shown = [p for p, _ in seen if p > 0]
    assert len(shown) >= 3 and shown == sorted(shown) and shown[-1] >= 90
    assert any("integration point" in m for _, m in seen)
    assert st.fit.progress == 0  # reset when the fit ends


def test_a_change_during_a_fit_leaves_the_fit_shown_running_and_is_judged_after_it():
    """A change that does not refit live, made while a fit runs: the status stayed "out of date" for the whole
    fit (51 s), with the progress hidden. Now the running fit keeps its status and says the model changed, and
    when it ends the result is marked out of date."""
    import asyncio

    st = AppState()
    st.load_demo("grouseticks", fit=False)
    st.spec.method = "laplace"
    st.quiet_fit_seconds = 0.0
    st.progress_seconds = 0.0  # every change of the progress: the note must stay through them
    st.live_limit = 0  # no change refits live
    messages = []
    st.fit.param.watch(lambda e: messages.append(e.new), "message")

    async def run():
        task = asyncio.ensure_future(st.fit_async())
        while st.fit.status != "fitting":
            await asyncio.sleep(0.005)
        st.spec.fe_p = 1.5
        during = (st.fit.status, st.fit.message, len(messages))
        await task
        return during

    status, message, at = asyncio.run(run())
    assert status == "fitting" and message.startswith("Fitting TICKS ~")
    note = "The model was changed during this fit: press Fit model after it to fit the new one (the model size"
    assert note in message
    later = [m for m in messages[at:] if m.startswith("Fitting TICKS ~")]
    assert later and all(note in m for m in later)  # (the progress's messages kept it)
    assert st.fit.status == "stale" and st.fit.outcome.request.fe_p == 2.0


def test_a_slow_model_leaves_live_mode():
    """A model whose fit took longer than live_seconds refits on the Fit button only (its slider
    changes mark the result stale and say why); a quick one keeps refitting live."""
    from app.state import AppState

    st = AppState()
    st.load_demo("cbpp", fit=False)
    st.spec.method = "vb"
    assert st.is_live() and st.fit_now()
    st.live_seconds = 0.0  # every fit counts as slow from now on
    assert st.fit_now() and not st.is_live()
    st.spec.fe_p = 1.5
    assert st.fit.status == "stale" and "last fit took" in st.fit.message
    st.spec.method = "map"  # another model: refits live (once), until its own fit proved slow
    assert st.fit.status == "done" and st.fit.outcome.request.method == "map"
    assert not st.is_live()


def test_a_slow_model_is_live_again_after_a_quick_fit():
    from app.state import AppState

    st = AppState()
    st.load_demo("cbpp", fit=False)
    st.spec.method = "vb"
    st.live_seconds = 0.0
    assert st.fit_now() and not st.is_live()
    st.live_seconds = 60.0
    assert st.fit_now() and st.is_live()  # the same model, fitted quickly this time


def test_columns_with_spaces_and_accents_are_quoted_in_the_built_formula():
    """An upload whose column names are not identifiers: the sidebar's formula quotes them and fits."""
    from app.state import quote_column

    assert [quote_column(c) for c in ("y", "x 1", "Größe", "class", "C", "温度")] == \
        ["y", "`x 1`", "`Größe`", "`class`", "`C`", "`温度`"]
    df = load_demo("cbpp").rename(columns={"incidence": "new cases", "herd": "Herde (Größe)", "period": "x 1"})
    st = AppState()
    assert st.load_upload("u.csv", df.to_csv(index=False).encode(), fit=False)
    st.spec.param.update(response="new cases", family="binomial", trials="size", groups=["Herde (Größe)"],
                         fixed_numeric=[], fixed_factors=[])
    st.spec.method = "vb"
    assert st.spec.formula() == "`new cases` ~ 1 + (1 | `Herde (Größe)`)"
    assert st.fit_now(), st.errors
    assert st.fit.result.vcp_names == ["Herde (Größe)"]


def test_switching_to_poisson_clears_the_trials(cbpp_state):
    cbpp_state.spec.auto_fit = False
    cbpp_state.spec.family = "poisson"
    assert cbpp_state.spec.trials == NONE and "trials" not in " ".join(cbpp_state.errors.values())


def test_a_fit_that_finishes_after_the_model_changed_is_not_shown_as_current(cbpp_state):
    """A change during a fit that does not refit live marks the result out of date; the fit that was
    running when it came must not show FITTED for a model the sidebar no longer shows."""
    old = cbpp_state.fit.outcome
    cbpp_state.spec.auto_fit = False
    cbpp_state.spec.fe_p = 0.5  # not live: marked out of date
    assert cbpp_state.fit.status == "stale"
    cbpp_state._fit_done(old)  # the fit of the previous model finishes now
    assert cbpp_state.fit.status == "stale" and "press Fit" in cbpp_state.fit.message


def test_messages_are_shown_as_written():
    from app.dashboard import literal_markdown

    md = literal_markdown("formula: dunder name '__import__' is not allowed\n    y ~ __import__('os')\n        ^^^^")
    assert "\\_\\_import\\_\\_" in md and "```text\ny ~ __import__('os')\n    ^^^^\n```" in md
    assert literal_markdown("I(x + 9.0**9.0)") == "I\\(x \\+ 9.0\\*\\*9.0\\)"


def test_a_sidebar_choice_after_a_typed_formula_takes_over(cbpp_state):
    """Typed formula, then a column picked in the sidebar: the latest choice wins (the sidebar's
    change was silently ignored while the typed formula stayed in use)."""
    cbpp_state.spec.auto_fit = False
    cbpp_state.spec.formula_text = "incidence ~ 1 + (1 | herd)"
    assert cbpp_state.spec.use_formula and cbpp_state.spec.formula() == "incidence ~ 1 + (1 | herd)"
    cbpp_state.spec.fixed_numeric = ["size"]
    assert not cbpp_state.spec.use_formula
    assert cbpp_state.spec.formula() == cbpp_state.spec.formula_text == "incidence ~ size + period + (1 | herd)"
    # ... and the typed formula is kept, to be restored (it was lost without a word)
    assert cbpp_state.replaced_formula == "incidence ~ 1 + (1 | herd)"
    cbpp_state.restore_formula()
    cbpp_state.spec.formula_text = "incidence ~ period+(1|herd)"  # (what the sidebar builds once size goes)
    cbpp_state.spec.fixed_numeric = []
    assert cbpp_state.replaced_formula == ""  # the typed formula was the sidebar's own: nothing to restore
    cbpp_state.spec.param.update(formula_text="incidence ~ 1 + (1 | herd)", use_formula=True)
    cbpp_state.spec.fixed_numeric = ["size"]
    cbpp_state.restore_formula()
    assert cbpp_state.spec.use_formula and cbpp_state.spec.formula() == "incidence ~ 1 + (1 | herd)"
    assert cbpp_state.replaced_formula == ""


def test_a_typed_formula_stays_in_use_when_a_column_is_read_another_way_and_a_new_data_set_ends_it(cbpp_state):
    """Changing "Treat as categorical" rebuilt the formula from the sidebar while the typed one stayed ticked: a
    different model was fitted under it without a word."""
    cbpp_state.spec.auto_fit = False
    typed = "incidence ~ period + size + (1 | herd)"
    cbpp_state.spec.param.update(formula_text=typed, use_formula=True)
    cbpp_state.data.categorical = [c for c in cbpp_state.data.categorical if c != "period"]
    assert cbpp_state.spec.use_formula and cbpp_state.spec.formula() == typed
    assert cbpp_state.make_request().formula == typed
    cbpp_state.load_frame(load_demo("cbpp"), "again", fit=False)
    assert not cbpp_state.spec.use_formula and cbpp_state.spec.formula_text == cbpp_state.spec.built_formula()


def test_the_same_model_typed_otherwise_is_listed_once_in_the_comparison():
    """Fitted as built, typed with other spacing, and after an unused column's reading changed: one model, one
    row (two rows split its probability, 0.4998 each)."""
    from app.state import model_comparison

    st = AppState()
    st.load_demo("cbpp", fit=False)
    st.spec.method = "laplace"
    assert st.fit_now()
    st.spec.param.update(formula_text="incidence ~ period+(1|herd)", use_formula=True)
    assert st.fit_now()
    st.spec.formula_text = "incidence ~ 1 + (1|herd)"
    assert st.fit_now()
    table, _ = model_comparison(st.fit.models, st.fit.outcome)
    assert len(table) == 2 and len(st.fit.models) == 2
    assert table["posterior_probability"].max() > 0.99
    assert "incidence ~ period+(1|herd)" in list(table["model"])  # (the latest wording)
    st.spec.formula_text = "incidence ~ period+(1|herd)"  # (the cache's fit of the model kept: it is the one shown)
    assert st.fit_now()
    table, _ = model_comparison(st.fit.models, st.fit.outcome)
    assert len(table) == 2 and table["model"].str.endswith("(shown)").sum() == 1


def test_unticking_a_typed_formula_keeps_it_to_restore_and_a_new_data_set_forgets_it(cbpp_state):
    cbpp_state.spec.auto_fit = False
    typed = "incidence ~ period + size + (1 | herd)"
    cbpp_state.spec.param.update(formula_text=typed, use_formula=True)
    assert cbpp_state.replaced_formula == ""
    cbpp_state.spec.use_formula = False
    assert cbpp_state.spec.formula_text == cbpp_state.spec.built_formula() != typed
    assert cbpp_state.replaced_formula == typed
    cbpp_state.spec.param.update(formula_text="incidence ~ 1 + (1 | herd)", use_formula=True)  # typed anew
    assert cbpp_state.replaced_formula == ""
    cbpp_state.spec.groups = []
    assert cbpp_state.replaced_formula == "incidence ~ 1 + (1 | herd)"
    cbpp_state.load_demo("Salamanders", fit=False)
    assert cbpp_state.replaced_formula == ""
    cbpp_state.restore_formula()  # nothing to restore: nothing changes
    assert not cbpp_state.spec.use_formula


def test_live_refits_switched_off_say_so_and_on_again_refit(cbpp_state):
    cbpp_state.debounce = 0
    cbpp_state.spec.auto_fit = False
    cbpp_state.spec.fe_p = 0.5
    assert cbpp_state.fit.status == "stale" and "live refits are switched off" in cbpp_state.fit.message
    cbpp_state.spec.auto_fit = True  # back on: the model is fitted again (synchronously here)
    assert cbpp_state.fit.status == "done" and cbpp_state.fit.outcome.request.fe_p == 0.5


@pytest.mark.parametrize("values, one", [(["no", "yes"], "yes"), ([False, True], True)])
def test_a_two_level_text_response_is_a_binary_outcome(values, one):
    """yes/no or True/False outcomes: guessed as the binomial response, fitted as 0/1 (the second level,
    or True, a success), said so in the diagnostics, and the reproducing snippet maps them the same way."""
    df = load_demo("cbpp_long")
    df["y"] = np.where(df["y"] == 1, values[1], values[0])
    st = AppState()
    assert st.load_upload("yn.csv", df.to_csv(index=False).encode(), fit=False)
    assert st.spec.response == "y" and st.spec.family == "binomial" and "y" not in st.spec.groups
    st.spec.param.update(groups=["herd"], method="vb")
    assert validate(st.spec, st.data) == {} and st.fit_now(), st.errors
    ref = mg.BayesMixedGLM.from_formula("y ~ 1 + (1 | herd)", data=load_demo("cbpp_long")).fit_vb()
    np.testing.assert_allclose(st.fit.result.fe_mean, ref.fe_mean, rtol=1e-6)
    assert any(f"{str(one)!r} counts as a success" in w for w in st.fit.warnings)
    code = adapter.snippet(st.fit.outcome.request, "yn.csv")
    assert f"== {str(one)!r}" in code


def test_an_offset_that_looks_like_a_raw_exposure_is_pointed_out():
    st = AppState()
    st.load_demo("cbpp", fit=False)
    st.spec.param.update(family="poisson", offset="size", method="vb")
    assert st.fit_now(), st.errors
    assert any("'size' enters the linear predictor as it is" in w for w in st.fit.warnings)
    st.data.df = st.data.df.assign(logsize=np.log(st.data.df["size"]))
    st.data.version += 1
    st.spec.update_columns(st.data)
    st.spec.param.update(family="poisson", offset="logsize")
    assert st.fit_now(), st.errors
    assert not any("enters the linear predictor as it is" in w for w in st.fit.warnings)
    # person-time with decimals (it passed: only whole numbers were checked); the status line names the offset
    st.data.df = st.data.df.assign(years=st.data.df["size"] * 0.37)
    st.data.version += 1
    st.spec.update_columns(st.data)
    st.spec.param.update(family="poisson", offset="years")
    assert st.fit_now(), st.errors
    assert any("'years' enters the linear predictor as it is" in w and "all positive" in w for w in st.fit.warnings)
    assert "+ offset(years) (poisson)" in st.fit.message


def test_a_raw_exposure_is_not_also_called_separation():
    """A raw exposure of 20-30 days as the offset drives the Intercept far below 0: the offset's note says why;
    the note on "very large coefficients ... perfectly separated" was a false lead."""
    rng = np.random.default_rng(3)
    days = rng.integers(20, 31, 120)
    df = pd.DataFrame({"site": np.repeat([f"s{i}" for i in range(12)], 10), "days": days,
                       "count": rng.poisson(days / 10.0)})
    st = AppState()
    st.load_frame(df, "visits", fit=False)
    st.spec.param.update(response="count", family="poisson", groups=["site"], fixed_numeric=[], offset="days",
                         method="vb")
    assert st.fit_now(), st.errors
    assert st.fit.result.fe_mean[0] < -8  # (the Intercept offsets the raw exposure)
    assert any("'days' enters the linear predictor as it is" in w for w in st.fit.warnings)
    assert not any("Very large" in w for w in st.fit.warnings)


def test_models_that_differ_by_their_offset_are_told_apart_in_the_comparison():
    from app.state import model_comparison

    st = AppState()
    st.load_demo("cbpp", fit=False)
    st.data.df = st.data.df.assign(logsize=np.log(st.data.df["size"]))
    st.data.version += 1
    st.spec.update_columns(st.data)
    st.spec.param.update(family="poisson", method="laplace", offset="logsize")
    assert st.fit_now(), st.errors
    st.spec.offset = "(none)"
    assert st.fit_now(), st.errors
    table, _ = model_comparison(st.fit.models, st.fit.outcome)
    labels = list(table["model"])
    assert len(labels) == 2 and len(set(labels)) == 2
    assert any("+ offset(logsize)" in label for label in labels)


@pytest.mark.parametrize("values, expected", [
    (pd.Series(["1", "2", "10", None]), True),                       # numbers written as text
    (pd.Series(pd.Categorical(["1", "2", "3"])), True),              # an R factor of numeric codes
    (pd.Series([1.5, 2.0]), True),
    (pd.Series(["H1", "H2"]), False),
    (pd.Series(["1", "inf"]), False),                                 # not a finite number
    (pd.Series([True, False]), False),
    (pd.Series([None, None], dtype=object), False),
])
def test_which_columns_can_be_numbers(values, expected):
    from app.data import numeric_like

    assert numeric_like(values) is expected


def test_a_factor_of_numeric_codes_unticked_as_categorical_is_fitted_as_a_number(cbpp_state):
    """cbpp's period is an R factor of the codes 1-4: unticking "Treat as categorical" makes it one slope
    (it stays in the model, now among the numeric covariates; it used to drop out), and ticking it again
    makes it a factor again."""
    st = cbpp_state
    assert "period" in st.data.param.categorical.objects and "period" in st.data.categorical
    st.data.categorical = [c for c in st.data.categorical if c != "period"]
    assert "period" in st.data.numeric_columns and "period" not in st.spec.fixed_factors
    assert st.spec.fixed_numeric == ["period"]
    assert st.spec.formula() == "incidence ~ period + (1 | herd)"
    assert st.fit_now(), st.errors
    df = load_demo("cbpp")
    df["period"] = df["period"].astype(int)
    direct = mg.BayesMixedGLM.from_formula("incidence ~ period + (1 | herd)", data=df, family="binomial",
                                           trials="size").fit_vb()
    assert list(st.fit.result.fe_names) == ["Intercept", "period"]
    np.testing.assert_allclose(st.fit.result.fe_mean, direct.fe_mean, rtol=1e-6)
    roles = column_overview(st.data.df, st.data.categorical, st.data.numeric_columns).set_index("column")["role"]
    assert roles["period"] == "numeric" and roles["herd"] == "categorical"
    st.data.categorical = st.data.categorical + ["period"]
    assert (st.spec.fixed_factors, st.spec.fixed_numeric) == (["period"], [])


def test_text_columns_are_always_categorical_and_not_offered_as_numbers():
    st = AppState()
    df = pd.DataFrame({"y": [0, 1, 1, 0] * 10, "site": ["s1", "s2", "s3", "s4"] * 10,
                       "dose": ["1", "2", "4", "8"] * 10})
    st.load_frame(df, fit=False)
    assert st.data.param.categorical.objects == ["y", "dose"]   # the columns that read as numbers
    assert "site" in st.data.categorical_columns and "dose" in st.data.categorical_columns
    st.data.categorical = []                                     # "dose" as a number
    assert st.data.numeric_columns == ["y", "dose"]
    st.spec.param.update(response="y", family="binomial", fixed_numeric=["dose"], fixed_factors=[],
                         groups=["site"])
    assert st.fit_now(), st.errors
    assert list(st.fit.result.fe_names) == ["Intercept", "dose"]


def test_a_trials_column_of_numbers_written_as_text_is_read_as_numbers():
    """Numbers written as text in the trials column (a CSV with quoted counts): offered once unticked as
    categorical, checked and fitted as numbers (the check compared the text with the response before)."""
    rng = np.random.default_rng(2)
    st = AppState()
    df = pd.DataFrame({"k": rng.integers(0, 6, 40), "n": ["5"] * 40, "site": list("abcd") * 10})
    st.load_frame(df, fit=False)
    st.data.categorical = []
    st.spec.param.update(response="k", family="binomial", trials="n", fixed_numeric=[], fixed_factors=[],
                         groups=["site"])
    assert validate(st.spec, st.data) == {}
    assert st.fit_now(), st.errors
    direct = mg.BayesMixedGLM.from_formula("k ~ 1 + (1 | site)", data=df.assign(n=5.0), family="binomial",
                                           trials="n").fit_laplace()
    np.testing.assert_allclose(st.fit.result.fe_mean, direct.fe_mean, rtol=1e-6)
    st.data.categorical = ["n"]  # treated as categorical, it is no longer offered (nor kept) as the trials
    assert st.spec.trials == NONE and "n" not in st.spec.param.trials.objects
    assert "not binary" in validate(st.spec, st.data)["response"]


def test_new_upload_starts_from_a_valid_model(cbpp_state):
    """Roles guessed for an upload after a binomial-with-trials model: the old trials and offset go
    (they made a Poisson guess fail with the library's "`trials` must be None")."""
    import io

    buf = io.BytesIO()
    load_demo("cbpp").to_csv(buf)  # with R's row names as a first column (pandas' index here)
    assert cbpp_state.load_upload("cbpp.csv", buf.getvalue(), fit=False)
    spec = cbpp_state.spec
    # the row numbers are neither response nor group; the herds' numeric codes are the grouping factor
    assert spec.formula() == "incidence ~ 1 + (1 | herd)"
    assert spec.family == "poisson" and spec.trials == NONE and spec.offset == NONE
    assert validate(spec, cbpp_state.data) == {}
    assert cbpp_state.fit_now(), cbpp_state.errors


def test_cbind_response_and_trials_are_checked_together(cbpp_state):
    """lme4's cbind(successes, failures) response carries its trials: it fits with Trials (none) as the
    library's from_formula does, and a Trials column beside it, or Trials with Poisson, is a message
    next to the response, not the library's error after a fit."""
    spec = cbpp_state.spec
    spec.auto_fit = False
    spec.param.update(trials=NONE, formula_text="cbind(incidence, size - incidence) ~ period + (1 | herd)",
                      use_formula=True)
    assert validate(spec, cbpp_state.data) == {}
    assert cbpp_state.fit_now(), cbpp_state.errors
    direct = mg.BayesMixedGLM.from_formula("incidence ~ period + (1 | herd)", data=load_demo("cbpp"),
                                           trials="size")
    np.testing.assert_allclose(cbpp_state.fit.result.fe_mean,
                               getattr(direct, f"fit_{spec.method}")().fe_mean, rtol=1e-6)
    spec.trials = "size"
    assert "gives the trials itself" in validate(spec, cbpp_state.data)["response"]
    spec.param.update(use_formula=False)
    cbpp_state._loading = True  # (as a stale widget could: Poisson with a trials column)
    spec.param.update(family="poisson", trials="size")
    cbpp_state._loading = False
    assert "Poisson family has no trials" in validate(spec, cbpp_state.data)["response"]


def test_a_slope_sd_is_judged_on_the_linear_predictor_scale():
    """A random slope's SD is per unit of its covariate: grouseticks' height slope (0.019 per metre,
    about 0.7 on the linear predictor) is not called degenerate, and neither is it in millimetres; a
    slope whose variation is small on the linear predictor is (though its SD per unit is not small),
    and the message gives that scale."""
    from app.state import diagnostics

    def notes(df, slope, method="laplace"):
        st = AppState()
        st.load_frame(df, "data", fit=False)
        st.spec.param.update(response="TICKS", family="poisson", groups=["BROOD"], fixed_numeric=[slope],
                             slopes=[slope], method=method)
        assert st.fit_now(), st.errors
        return [w for w in diagnostics(st.fit.outcome, 0, "poisson") if "close to zero" in w]

    g = load_demo("grouseticks")[["TICKS", "BROOD", "cHEIGHT"]]
    assert notes(g, "cHEIGHT") == []
    assert notes(g.assign(mm=g.cHEIGHT * 1000), "mm") == []
    rng = np.random.default_rng(2)
    # a covariate of size 0.01: whatever its slopes' SD per unit, they hardly move the linear predictor
    sim = pd.DataFrame({"BROOD": np.repeat(np.arange(40), 10), "x": rng.normal(0, 0.01, 400)})
    sim["TICKS"] = rng.poisson(np.exp(0.5 + rng.normal(0, 0.5, 40)[sim.BROOD]))
    [note] = notes(sim.astype({"BROOD": str}), "x")
    assert "'BROOD:x'" in note and "on the linear predictor for its typical size" in note


def test_a_grouping_factor_that_is_also_a_fixed_effect_is_pointed_out():
    """cbpp's herd chosen as a categorical fixed effect as well as the grouping factor (typed as C(herd)
    too): its random effects are pushed towards zero, and the diagnostics say why. The canonical model, a
    slope's term (herd:size) and a nested grouping whose coarser factor is fixed (herd:period with period
    fixed) are not flagged."""
    st = AppState()
    st.load_demo("cbpp", fit=False)
    st.spec.method = "laplace"
    assert st.fit_now() and not any("both a categorical" in w for w in st.fit.warnings)
    canonical = np.abs(st.fit.result.random_effects("herd")["Mean"]).max()
    st.spec.fixed_factors = ["period", "herd"]
    assert st.fit_now(), st.errors
    [note] = [w for w in st.fit.warnings if "both a categorical" in w]
    assert note.startswith("'herd' is both") and "Keep 'herd' in one of the two roles" in note
    assert np.abs(st.fit.result.random_effects("herd")["Mean"]).max() < canonical / 2
    st.spec.param.update(formula_text="incidence ~ period + C(herd) + (1 | herd)", use_formula=True)
    assert st.fit_now(), st.errors
    assert any(w.startswith("'herd' is both") for w in st.fit.warnings)
    for formula in ["incidence ~ period + (1 | herd) + (0 + size | herd)", "incidence ~ period + (1 | herd:period)"]:
        st.spec.param.update(formula_text=formula, use_formula=True)
        assert st.fit_now(), st.errors
        assert not any("both a categorical" in w for w in st.fit.warnings), formula


def test_vb_results_carry_a_caution_about_their_sds(cbpp_state):
    """VB's SDs are too narrow (mean field): the diagnostics say so next to its result, not only on the
    Compare tab."""
    assert any("too narrow" in w and "Integrated Laplace" in w for w in cbpp_state.fit.warnings)
    cbpp_state.spec.method = "laplace"
    assert cbpp_state.fit_now() and not any("too narrow" in w for w in cbpp_state.fit.warnings)


def test_model_comparison_lists_the_integrated_fits_of_the_same_outcomes():
    """Every integrated-Laplace fit on the current data is kept with its log p(y); the table compares those
    of the same outcomes as the shown fit (their values are the fits' own, the log Bayes factors and
    probabilities follow from them), leaves out fits of other rows (a formula drops the rows its columns miss,
    even rows whose outcomes equal others'), lists nothing for a method without p(y), tells apart one formula
    on two readings of a column, and a new data set clears the list."""
    from app.state import model_comparison

    st = AppState()
    st.load_demo("cbpp", fit=False)
    st.spec.method = "laplace"
    assert st.fit_now()
    with_period = st.fit.result.log_marginal_likelihood
    st.spec.param.update(formula_text="incidence ~ (1 | herd)", use_formula=True)
    assert st.fit_now()
    without = st.fit.result.log_marginal_likelihood
    st.spec.fe_p = 5.0  # another prior: another model, listed apart
    assert st.fit_now()
    wide = st.fit.result.log_marginal_likelihood
    assert len({with_period, without, wide}) == 3
    table, others = model_comparison(st.fit.models, st.fit.outcome)
    assert others == 0 and len(table) == 3
    assert list(table["log_marginal_likelihood"]) == sorted([with_period, without, wide], reverse=True)
    assert table["model"].str.endswith("(shown)").sum() == 1
    assert table.loc[table["model"].str.endswith("(shown)"), "log_marginal_likelihood"].item() == wide
    np.testing.assert_allclose(table["log_bayes_factor"], table["log_marginal_likelihood"] - max(with_period, without,
                                                                                                wide))
    np.testing.assert_allclose(table["posterior_probability"].sum(), 1.0)
    # cbpp's period effect is real: p(y) favours the model with it (a log Bayes factor of several units)
    assert with_period - without > 3.0
    # the same model refitted (the cache) is not listed twice
    st.spec.fe_p = 2.0
    assert st.fit_now() and len(st.fit.models) == 3

    # the other methods have no p(y): nothing to compare
    st.spec.method = "vb"
    assert st.fit_now()
    assert model_comparison(st.fit.models, st.fit.outcome)[0].empty

    # a formula whose column misses values drops rows: its p(y) is of other outcomes, even where the rows
    # dropped have the same outcomes (rows 5 and 6 alike here, each formula dropping one of them)
    df = load_demo("cbpp")
    df.loc[6, ["incidence", "size"]] = df.loc[5, ["incidence", "size"]].to_numpy()
    df = df.assign(z1=np.linspace(-1, 1, len(df)), z2=np.linspace(1, -1, len(df)), w=np.arange(len(df)) % 3)
    df.loc[5, "z1"], df.loc[6, "z2"] = np.nan, np.nan
    st.load_frame(df, "cbpp_z", fit=False)
    assert st.fit.models == []
    st.spec.param.update(formula_text="incidence ~ period + (1 | herd)", use_formula=True, family="binomial",
                         trials="size", method="laplace")
    assert st.fit_now()
    st.spec.formula_text = "incidence ~ period + z1 + (1 | herd)"
    assert st.fit_now() and st.fit.n_dropped == 1
    st.spec.formula_text = "incidence ~ period + z2 + (1 | herd)"
    assert st.fit_now() and st.fit.n_dropped == 1
    assert np.array_equal(st._cache[st.fit.models[1].key].result.model.endog, st.fit.result.model.endog)
    table, others = model_comparison(st.fit.models, st.fit.outcome)
    assert len(table) == 1 and others == 2
    st.clear_models()
    assert st.fit.models == [] and len(model_comparison(st.fit.models, st.fit.outcome)[0]) == 1
    # the same formula (the sidebar's) with a column read as numbers, then as categories: told apart
    st.spec.param.update(use_formula=False, response="incidence", trials="size", groups=["herd"])
    st.data.categorical = [c for c in st.data.categorical if c != "w"]
    st.spec.param.update(fixed_numeric=["w"], fixed_factors=[])
    assert st.spec.formula() == "incidence ~ w + (1 | herd)" and st.fit_now()
    st.data.categorical = st.data.categorical + ["w"]
    st.spec.fixed_factors = ["w"]
    assert st.spec.formula() == "incidence ~ w + (1 | herd)" and st.fit_now()
    labels = [m for m in model_comparison(st.fit.models, st.fit.outcome)[0]["model"] if " ~ w " in m]
    assert len(labels) == 2 and len(set(labels)) == 2 and all("[categorical:" in label for label in labels)


def test_outcome_key_names_the_outcomes_a_marginal_likelihood_is_of():
    """Models compare by p(y) only on the same outcomes, as the fitted model reads them: equal keys for
    formulas with one response, for cbind(successes, total - successes) and successes with trials, and with
    an offset (part of the model); different ones for another family or response, other trials, or other
    rows of the session's data (as many, but not the same)."""
    df = load_demo("cbpp").assign(herd=lambda d: d["herd"].astype(str), period=lambda d: d["period"].astype(str),
                                  log_size=lambda d: np.log(d["size"]))

    def key(formula="incidence ~ period + (1 | herd)", family="binomial", trials="size", offset=None, rows=None):
        data = df if rows is None else df.iloc[rows].reset_index(drop=True)
        request = adapter.FitRequest(data=data, data_key="1:", formula=formula, family=family, method="vb",
                                     trials=trials, offset=offset, rows=rows)
        return adapter.outcome_key(adapter.fit(request))

    base = key()
    assert key("incidence ~ (1 | herd)") == base
    assert key("cbind(incidence, size - incidence) ~ period + (1 | herd)", trials=None) == base
    assert key("incidence ~ (1 | herd)", family="poisson", trials=None, offset="log_size") == key(
        "incidence ~ log_size + (1 | herd)", family="poisson", trials=None)
    others = [key(family="poisson", trials=None), key("size ~ (1 | herd)", family="poisson", trials=None),
              key("cbind(incidence, size) ~ period + (1 | herd)", trials=None),
              key(rows=np.arange(1, 56)), key(rows=np.r_[0, np.arange(2, 56)])]
    assert len({base, *others}) == 6


def test_a_numeric_column_that_groups_stays_a_number_elsewhere(cbpp_state):
    """(1 | size) beside size as a fixed effect, log(size) or the trials: the grouping term takes its levels,
    the column stays numeric (one slope, as the library and lme4 fit it; it became 22 dummy coefficients, and
    the trials 'must be numeric; got dtype category')."""
    cbpp_state.spec.family = "poisson"
    cbpp_state.spec.param.update(formula_text="incidence ~ period + size + (1 | herd) + (1 | size)")
    assert cbpp_state.fit_now(), cbpp_state.errors
    names = list(cbpp_state.fit.result.fe_names)
    assert names[-1] == "size" and not any(n.startswith("size[") for n in names)
    assert "size" in cbpp_state.fit.result.vcp_names
    cbpp_state.spec.family = "binomial"
    cbpp_state.spec.trials = "size"
    cbpp_state.spec.param.update(formula_text="incidence ~ period + log(size) + (1 | herd) + (1 | size)")
    assert cbpp_state.fit_now(), cbpp_state.errors
    assert "log(size)" in list(cbpp_state.fit.result.fe_names)


def test_a_windows_csv_is_read_as_cp1252_with_a_note(cbpp_state):
    """Excel on Windows writes CSV in cp1252: it was refused ("not UTF-8"), though the reader promised a fallback;
    it is read, the fit's notes say how, and the reproducible snippet reads it the same way."""
    frame = load_demo("cbpp").assign(herd=lambda d: "É" + d.herd.astype(str))
    content = frame.to_csv(index=False).encode("cp1252")
    df = read_upload("excel.csv", content)
    assert df["herd"].iloc[0] == "É1" and df.attrs["read_csv"]["encoding"] == "cp1252"
    assert cbpp_state.load_upload("excel.csv", content, fit=False)
    assert "encoding='cp1252'" in cbpp_state.data.reader
    cbpp_state.spec.param.update(response="incidence", family="binomial", trials="size", groups=["herd"])
    cbpp_state.spec.method = "vb"
    assert cbpp_state.fit_now(), cbpp_state.errors
    assert any("read as Windows text (cp1252)" in w for w in cbpp_state.fit.warnings)
    cbpp_state.load_demo("cbpp", fit=False)
    assert cbpp_state.data.note == ""


def test_an_upload_without_a_binary_column_guesses_its_counts_and_a_decimal_response_is_named():
    """site, exposure (decimals), log_exposure, count: the guess took the decimal exposure as a Poisson response
    and the library's "endog must be integer counts" came back as a failed fit."""
    rng = np.random.default_rng(1)
    exposure = rng.uniform(1.0, 50.0, 120).round(2)
    frame = pd.DataFrame({"site": np.repeat([f"s{i}" for i in range(12)], 10), "exposure": exposure,
                          "log_exposure": np.log(exposure), "count": rng.poisson(exposure / 5.0)})
    st = AppState()
    assert st.load_upload("rates.csv", frame.to_csv(index=False).encode(), fit=False)
    assert st.spec.response == "count" and st.spec.family == "poisson" and st.spec.groups == ["site"]
    st.spec.response = "exposure"
    assert "not whole numbers (e.g. " in validate(st.spec, st.data)["response"]


def test_a_typed_formulas_problems_are_said_under_it():
    """A typed formula without a random-effect term: the message stood beside the Model card's grouping widget,
    which still showed herd, and told the user to choose one there."""
    st = AppState()
    st.load_demo("cbpp", fit=False)
    st.spec.param.update(formula_text="incidence ~ period")
    errors = validate(st.spec, st.data)
    assert "groups" not in errors and "Add a random-effect term such as (1 | group)" in errors["formula"]
    st.spec.param.update(formula_text="incidence ~ period + (1 | incidence)")
    assert "cannot also be a grouping factor" in validate(st.spec, st.data)["formula"]
    st.spec.param.update(use_formula=False, groups=[])
    assert "Choose at least one grouping factor" in validate(st.spec, st.data)["groups"]


def test_a_repeated_header_is_said_to_be_renamed():
    df = read_upload("dup.csv", b"a,a,b\n1,2,3\n4,5,6\n")
    assert list(df.columns) == ["a", "a.1", "b"]
    assert "repeats column names; the repeats were renamed 'a.1'" in df.attrs["note"]
    assert "note" not in read_upload("ok.csv", b"a,b\n1,2\n3,4\n").attrs


def test_a_name_with_a_year_is_not_taken_for_a_renamed_repeat():
    df = read_upload("years.csv", b"score,score.2020,g\n1,2,a\n3,4,b\n")
    assert "note" not in df.attrs


def test_a_separation_is_said_in_the_dashboards_words():
    st = AppState()
    st.load_demo("cbpp", fit=False)
    st.data.df = st.data.df.assign(x=(st.data.df.incidence > 0).astype(float))
    st.data.version += 1
    st.spec.update_columns(st.data)
    st.spec.method = "vb"
    st.spec.param.update(formula_text="incidence ~ x + (1 | herd)")
    assert st.fit_now(), st.errors
    note = next(w for w in st.fit.warnings if "separate the outcomes" in w)
    assert "the MAP and VB methods' Gaussian summaries" in note and "Integrated Laplace integrates" in note
    assert "fit_map" not in note and "fit_laplace" not in note


def test_a_prior_that_decides_the_estimates_is_said_in_the_dashboards_words():
    """grouseticks with the raw height: the library's warning that the fixed effects' prior holds the Intercept
    (6.3 where the data want 11.4) reaches the dashboard's warnings, its advice naming the slider."""
    st = AppState()
    st.load_demo("grouseticks", fit=False)
    st.spec.method = "laplace"
    st.spec.param.update(family="poisson", formula_text="TICKS ~ YEAR + HEIGHT + (1 | BROOD) + (1 | LOCATION)")
    assert st.fit_now(), st.errors
    note = next(w for w in st.fit.warnings if "moves Intercept by" in w)
    assert "raise the prior SD of the fixed effects (fe_p;" in note and "give a wider fe_p" not in note


def test_a_formula_typed_over_lines_is_shown_on_one():
    st = AppState()
    st.load_demo("cbpp", fit=False)
    st.spec.method = "vb"
    st.spec.param.update(formula_text="incidence ~ period\n  + (1 | herd)")
    assert st.fit_now(), st.errors
    assert "fit of incidence ~ period + (1 | herd) (binomial)" in st.fit.message


def test_a_typed_formula_with_a_transformed_random_slope_is_fitted(cbpp_state):
    """A random slope written as a transform (lme4's ``(0 + log(size) | herd)``) reads its column and fits, with
    the component named as typed."""
    cbpp_state.spec.param.update(formula_text="incidence ~ period + (1 | herd) + (0 + log(size) | herd)")
    assert "formula" not in cbpp_state.errors
    assert cbpp_state.fit_now()
    assert list(cbpp_state.fit.result.vcp_names) == ["herd", "herd:log(size)"]


def test_an_offset_typed_and_chosen_under_offset_is_refused_rather_than_doubled(cbpp_state):
    spec = cbpp_state.spec
    spec.param.update(family="poisson")
    spec.param.update(offset="log(size)")
    spec.param.update(formula_text="incidence ~ period + offset(log(size)) + (1 | herd)")
    assert not cbpp_state.fit_now()
    assert "has its own offset(...) and 'log(size)' is chosen under Offset" in cbpp_state.errors["formula"]
    spec.offset = "(none)"
    assert cbpp_state.fit_now() and "formula" not in cbpp_state.errors


def test_an_offset_of_the_response_is_not_called_a_predictor(cbpp_state):
    cbpp_state.spec.param.update(family="poisson")
    cbpp_state.spec.param.update(formula_text="incidence ~ period + offset(log(size + 1)) + (1 | herd)")
    assert cbpp_state.fit_now(), cbpp_state.errors


def test_a_column_named_like_a_logarithm_is_read_as_itself():
    df = pd.DataFrame({"y": [1, 0, 3, 2, 5, 1, 0, 2], "expo": [1.0, 2, 3, 4, 5, 6, 7, 8],
                       "log(expo)": [10.0] * 8, "g": list("aabbccdd")})
    st = AppState()
    st.load_frame(df, "d.csv", fit=False)
    offsets = st.spec.param.offset.objects
    assert offsets.count("log(expo)") == 1 and "log(`log(expo)`)" in offsets
    st.spec.param.update(response="y", family="poisson", groups=["g"], offset="log(expo)")
    assert st.fit_now(), st.errors
    np.testing.assert_allclose(st.fit.result.model.offset, 10.0)


def _rate_data(years):
    rng = np.random.default_rng(4)
    g = np.repeat(np.arange(20), 6)
    x = rng.normal(size=g.size)
    y = rng.poisson(years * np.exp(0.5 + 0.3 * x + rng.normal(0, 0.3, 20)[g]))
    return pd.DataFrame({"y": y, "years": years, "x": x, "clinic": [f"c{k}" for k in g]})


@pytest.mark.parametrize("typed", [False, True])
def test_a_raw_exposure_offset_is_pointed_out_whichever_way_it_was_chosen(typed):
    """Person-years of 0.5 to 5 entered as they are (the Offset choice, or a typed offset(years)) get a word that
    their logarithm is what rates need, in the place they were chosen; log(years) gets none."""
    years = np.random.default_rng(3).uniform(0.5, 4.9, 120)
    st = AppState()
    st.load_frame(_rate_data(years), "rates.csv", fit=False)
    st.spec.param.update(response="y", family="poisson", groups=["clinic"], fixed_numeric=["x"])
    if typed:
        st.spec.formula_text = "y ~ x + offset(years) + (1 | clinic)"
    else:
        st.spec.offset = "years"
    assert st.fit_now(), st.errors
    where = "write offset(log(years)) in the formula" if typed else "choose its logarithm, log(years), under Offset"
    notes = [w for w in st.fit.warnings if "enters the linear predictor as it is" in w]
    assert len(notes) == 1 and "If it is an exposure" in notes[0] and where in notes[0], st.fit.warnings
    if typed:
        st.spec.formula_text = "y ~ x + offset(log(years)) + (1 | clinic)"
    else:
        st.spec.offset = "log(years)"
    assert st.fit_now()
    assert not any("enters the linear predictor as it is" in w for w in st.fit.warnings)
    assert st.fit.result.fe_mean[0] == pytest.approx(0.5, abs=0.2)


def test_the_response_is_no_offset_and_two_offsets_are_refused_under_both_cards(cbpp_state):
    spec = cbpp_state.spec
    spec.param.update(family="poisson")
    spec.offset = "incidence"
    assert not cbpp_state.fit_now()
    assert "is the response's column" in cbpp_state.errors["fixed"]
    spec.offset = "log(size)"
    spec.formula_text = "incidence ~ period + offset(log(size)) + (1 | herd)"
    assert not cbpp_state.fit_now()
    assert cbpp_state.errors["fixed"] == cbpp_state.errors["formula"] and "would add up" in cbpp_state.errors["fixed"]


def test_a_failed_fit_gives_the_librarys_advice_in_the_dashboards_words(cbpp_state, monkeypatch):
    from mglm_core.errors import FitError

    def fail(request, progress=None):
        raise FitError("fit_laplace needs the exact log-determinant ... Use fit_map() or fit_vb(), which solve it by "
                       "conjugate gradients.")

    monkeypatch.setattr(adapter, "fit", fail)
    cbpp_state.spec.vcp_p = 1.5
    assert not cbpp_state.fit_now()
    assert cbpp_state.fit.error == ("The model could not be fitted: Integrated Laplace needs the exact log-determinant "
                                    "... Choose the Laplace (MAP) or VB method, which solve it by conjugate gradients.")


def test_a_power_written_either_way_is_one_model_in_the_comparison():
    """``I(x^2)`` (named as written) and ``I(x**2)`` are one model: refitted with the other spelling it is not
    listed twice in the session's comparison."""
    df = load_demo("cbpp").assign(x=lambda d: np.linspace(-1.0, 1.0, len(d)))
    st = AppState()
    st.load_frame(df, "cbpp_x", fit=False)
    st.spec.param.update(formula_text="incidence ~ I(x^2) + (1 | herd)", use_formula=True, family="binomial",
                         trials="size", method="laplace")
    assert st.fit_now() and "I(x^2)" in st.fit.result.fe_names
    st.spec.formula_text = "incidence ~ I(x**2) + (1 | herd)"
    assert st.fit_now() and "I(x ** 2)" in st.fit.result.fe_names
    assert len(st.fit.models) == 1
