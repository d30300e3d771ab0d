"""The Dashboard object without a browser."""
from bokeh.document import Document


def _watchers(obj):
    return sum(len(v) for per_param in obj.param.watchers.values() for v in per_param.values())


def test_reloading_data_does_not_accumulate_watchers():
    """Widgets rebuilt for each data set must not leave watchers behind on the session state."""
    from app import Dashboard

    d = Dashboard()
    d.__panel__().get_root(Document())
    st = d.state
    parts = [st, st.spec, st.data, st.view, st.fit]
    before = [_watchers(o) for o in parts]
    for name in ("grouseticks", "cbpp", "grouseticks", "cbpp"):
        st.load_demo(name, fit=False)
    assert [_watchers(o) for o in parts] == before


def test_notebook_cells_build_and_fit_the_dashboard(monkeypatch):
    """The code cells of notebooks/dashboard.ipynb run in order (as Jupyter would run them), the
    dashboard renders to Bokeh models, and its fit is the library's fit of the same model."""
    import json
    from pathlib import Path

    import numpy as np

    import mglm_core as mg

    root = Path(__file__).resolve().parents[2]
    nb = json.loads((root / "notebooks" / "dashboard.ipynb").read_text())
    monkeypatch.chdir(root / "notebooks")
    ns: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "dashboard.ipynb", "exec"), ns)  # the repository's own notebook
    dash = ns["dash"]
    assert dash.__panel__().get_root(Document()) is not None
    res = dash.state.fit.result
    model = mg.BayesMixedGLM.from_formula("count ~ mined + (1 | site)", data=ns["df"], family="poisson")
    direct = getattr(model, f"fit_{dash.state.spec.method}")()
    np.testing.assert_allclose(res.fe_mean, direct.fe_mean, rtol=1e-6)


def test_plots_of_an_out_of_date_result_are_dimmed():
    """While another data set's fit runs, after a change that leaves the result out of date, and after
    a failed fit, the plots still show the previous result: dimmed, and bright again with the new fit."""
    from app import Dashboard

    d = Dashboard()
    st = d.state
    opacity = lambda: {box.styles.get("opacity") for box in d._plot_boxes}  # noqa: E731
    assert st.fit.status == "done" and opacity() == {"1"}
    st.spec.fe_p = 3.0                          # a live refit of the same data: stays bright
    st.fit.status = "fitting"
    assert opacity() == {"1"}
    st.load_demo("grouseticks", fit=False)      # another data set, not fitted yet: the status is unchanged
    assert opacity() == {"0.65"}
    st.fit.status = "fitting"
    assert opacity() == {"0.65"}
    assert st.fit_now(), st.errors
    assert opacity() == {"1"}
    st.fit.status = "stale"
    assert opacity() == {"0.65"}


def test_dimmed_plots_keep_their_text_readable():
    """Faded plots keep Bokeh's axis text (#444444) at a contrast of at least 3:1 on white (WCAG's bar for
    graphics); the greying is a filter, not more fading."""
    from app import dashboard

    def luminance(v):
        c = v / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    alpha = float(dashboard._DIMMED["opacity"])
    text = alpha * 0x44 + (1 - alpha) * 255  # the faded grey on white
    contrast = (1.05) / (luminance(text) + 0.05)
    assert contrast >= 3.0, contrast
    assert "grayscale" in dashboard._DIMMED["filter"] and dashboard._BRIGHT["opacity"] == "1"


def test_the_categorical_choice_offers_the_columns_that_read_as_numbers():
    """cbpp's factors of numeric codes are offered (and ticked); a frame of text columns only has nothing
    to choose, which the sidebar says instead of showing an empty control."""
    import pandas as pd
    import panel as pn

    from app import Dashboard

    d = Dashboard()
    widget = d._categorical_widget(0)
    assert isinstance(widget, pn.widgets.MultiChoice)
    assert set(widget.options) == {"herd", "incidence", "size", "period"} and set(widget.value) == {"herd", "period"}
    d.state.load_frame(pd.DataFrame({"y": ["no", "yes"] * 10, "site": list("abcd") * 5}), fit=False)
    note = d._categorical_widget(1)
    assert isinstance(note, pn.pane.Markdown) and "every column is categorical" in note.object


def test_column_widgets_show_the_values_the_state_sets():
    """The Trials choice follows the state: Poisson sets it aside (and disables it), binomial brings it
    back; it used to keep showing `size` while the model ran without trials, and picking `size` again
    sent no change."""
    from app import Dashboard

    d = Dashboard()
    d.__panel__().get_root(Document())
    trials = next(w for w in d._model_widgets(d.state.columns_version) if getattr(w, "name", "").startswith("Trials"))
    assert (trials.value, trials.disabled) == ("size", False)
    d.state.spec.family = "poisson"
    assert (d.state.spec.trials, trials.value, trials.disabled) == ("(none)", "(none)", True)
    d.state.spec.family = "binomial"
    assert (d.state.spec.trials, trials.value, trials.disabled) == ("size", "size", False)
    trials.value = "(none)"
    assert d.state.spec.trials == "(none)"


def test_a_comparison_of_another_model_is_marked_out_of_date():
    """After Fit with every method, a change of the model (not of the method shown) marks the comparison
    out of date (it stayed on screen as if current); changing it back makes it current again."""
    from app import Dashboard

    d = Dashboard()
    d.__panel__().get_root(Document())
    st = d.state
    st.fit.param.update(comparison=st.compare_methods(["vb", "laplace"]), compare_current=True)
    stale = next(o for o in d.tabs.objects[5].objects if "compare-stale" in getattr(o, "css_classes", []))
    assert not stale.visible
    st.spec.family = "poisson"
    assert not st.fit.compare_current and stale.visible
    st.spec.family = "binomial"
    assert st.fit.compare_current and not stale.visible
    st.spec.method = "vb"  # another method of the same model: still current
    assert st.fit.compare_current
    st.spec.fe_p = 3.0
    assert not st.fit.compare_current and stale.visible
    # a new comparison (both parameters set in one update): current, the warning gone (it stayed on)
    st.fit.param.update(comparison=st.compare_methods(["vb", "laplace"]), compare_current=True)
    assert not stale.visible


def test_the_comparison_plots_do_not_move_the_other_tabs_axes():
    """The Compare tab's forest and SD densities have axes of their own: linked to the Fixed effects and
    Variance components plots (same dimensions), MAP's collapsed SD stretched the main density's axis to 0
    and a zoom in one moved the other."""
    import bokeh.plotting

    from app import Dashboard

    d = Dashboard()
    d.state.fit.param.update(comparison=d.state.compare_methods(["map", "laplace"]), compare_current=True)
    d.tabs.dynamic = False  # (every tab rendered, as after visiting them all)
    root = d.__panel__().get_root(Document())
    figs = {}
    for f in root.select({"type": bokeh.plotting.figure}):
        figs.setdefault(f.title.text if f.title else "", []).append(f)
    forests = figs["Fixed effects: posterior mean and 95 % interval"]
    densities = figs["Random-effect SDs: density, median, 95 % interval"]
    assert len(forests) == 2 and len(densities) == 2
    assert forests[0].x_range is not forests[1].x_range and densities[0].x_range is not densities[1].x_range
    main_density = next(f for f in densities if len(f.legend[0].items) == 1)  # (one method: the main tab's)
    assert main_density.x_range.start > 0.1  # (linked, it started at MAP's SD of 0)


def _send_file(upload, name, content, chunk=4, uid=1):
    """The browser side of :class:`app.upload.ChunkedUpload`: a file's messages, in chunks of ``chunk`` bytes."""
    import base64

    parts = [content[i:i + chunk] for i in range(0, len(content), chunk)]
    upload._handle_msg({"kind": "start", "id": uid, "name": name, "size": len(content), "chunks": len(parts)})
    for i, part in enumerate(parts):
        upload._handle_msg({"kind": "chunk", "id": uid, "index": i, "data": base64.b64encode(part).decode()})
    upload._handle_msg({"kind": "end", "id": uid, "name": name})


def test_an_empty_file_is_reported():
    """An empty file arrives as its name and no bytes: said so next to the upload (it was silently ignored)."""
    from app import Dashboard

    d = Dashboard()
    _send_file(d.file_input, "empty.csv", b"")
    assert d.state.errors.get("data") == "The file 'empty.csv' is empty."


def test_a_file_chosen_during_an_upload_replaces_it():
    """A second file chosen while the first is being sent: the first's late chunks and end are ignored (their upload
    id is not the latest), the second loads whole; a chunk out of order drops its file with a message."""
    import base64

    from app import Dashboard

    d = Dashboard()
    up = d.file_input
    first = b"y,x\n" + b"".join(f"{i % 2},{i}\n".encode() for i in range(9))
    second = b"y,z\n" + b"".join(f"{i % 2},{2 * i}\n".encode() for i in range(11))
    up._handle_msg({"kind": "start", "id": 1, "name": "a.csv", "size": len(first), "chunks": 2})
    up._handle_msg({"kind": "chunk", "id": 1, "index": 0, "data": base64.b64encode(first[:6]).decode()})
    up._handle_msg({"kind": "start", "id": 2, "name": "b.csv", "size": len(second), "chunks": 1})
    up._handle_msg({"kind": "chunk", "id": 1, "index": 1, "data": base64.b64encode(first[6:]).decode()})
    up._handle_msg({"kind": "end", "id": 1, "name": "a.csv"})
    assert d.state.data.upload != "a.csv"
    up._handle_msg({"kind": "chunk", "id": 2, "index": 0, "data": base64.b64encode(second).decode()})
    up._handle_msg({"kind": "end", "id": 2, "name": "b.csv"})
    assert d.state.data.upload == "b.csv" and list(d.state.data.df.columns) == ["y", "z"]
    up._handle_msg({"kind": "start", "id": 3, "name": "c.csv", "size": 8, "chunks": 2})
    up._handle_msg({"kind": "chunk", "id": 3, "index": 1, "data": base64.b64encode(b"abcd").decode()})
    assert d.state.errors.get("data", "").startswith("The upload of 'c.csv' failed: its transfer broke off")
    assert d.state.data.upload == "b.csv"


def test_an_upload_arrives_in_chunks_and_loads():
    """A file sent in chunks is joined and read (a file of 7 rows in chunks of 4 bytes); the same file sent again
    loads again."""
    from app import Dashboard

    d = Dashboard()
    content = b"y,x,g\n" + b"".join(f"{i % 2},{i * 0.5},g{i % 3}\n".encode() for i in range(7))
    _send_file(d.file_input, "tiny.csv", content)
    assert d.state.data.upload == "tiny.csv" and d.state.data.df.shape == (7, 3), d.state.errors
    assert d.file_input.value is None  # (forgotten once read: the same file again is news)
    d.state.load_demo("cbpp", fit=False)
    _send_file(d.file_input, "tiny.csv", content, chunk=5, uid=2)
    assert d.state.data.upload == "tiny.csv"


def test_an_upload_over_the_limit_is_refused_with_its_size():
    """The browser refuses a file over the limit before sending it and says its name and size: the message names
    both and the limit, and the data stay. A client that sends more than it announced, or more than the limit,
    or text that is not base64, loads nothing."""
    from app import Dashboard
    from app.data import MAX_UPLOAD_MB

    d = Dashboard()
    before = d.state.data.df
    d.file_input._handle_msg({"kind": "refused", "id": 1, "name": "big.csv", "size": 120 * 2**20})
    assert d.state.errors.get("data") == f"The file 'big.csv' is 120.0 MB; the limit is {MAX_UPLOAD_MB} MB."
    assert d.state.data.df is before
    d.file_input._handle_msg({"kind": "start", "id": 2, "name": "liar.csv", "size": 3, "chunks": 1})
    d.file_input._handle_msg({"kind": "chunk", "id": 2, "index": 0, "data": "YWJjZGVm"})  # (6 bytes for 3)
    d.file_input._handle_msg({"kind": "end", "id": 2, "name": "liar.csv"})
    assert d.state.errors.get("data") == "The upload of 'liar.csv' failed: more than its 3 bytes arrived. Choose the file again."
    d.file_input._handle_msg({"kind": "start", "id": 3, "name": "huge.csv", "size": 10**12, "chunks": 1})
    assert d.file_input.refused == ("huge.csv", 10**12)
    d.file_input._handle_msg({"kind": "start", "id": 4, "name": "odd.csv", "size": 3, "chunks": 1})
    d.file_input._handle_msg({"kind": "chunk", "id": 4, "index": 0, "data": "not base64!"})
    d.file_input._handle_msg({"kind": "end", "id": 4, "name": "odd.csv"})
    for bad in ({"kind": "start"}, {"kind": "start", "id": "x"}, {"kind": "start", "id": 5, "size": "inf"},
                {"kind": "chunk", "id": None}, "text", None, {"kind": "start", "id": 6, "name": "n.csv", "size": None}):
        d.file_input._handle_msg(bad)  # (ignored, no exception)
    assert d.state.data.df is before and d.state.data.upload != "odd.csv"


def test_truth_marks_only_on_the_simulated_datas_fit_and_plain_status():
    """While a simulation's fit runs, the plots show the previous data's result: no truth marks on it (they
    were drawn on cbpp's Intercept), and the Teaching plots are dimmed with the others. A fit that did not
    converge is not badged as FITTED, and the library's advice names the dashboard's method."""
    from app import Dashboard

    d = Dashboard()
    d.__panel__().get_root(Document())
    st = d.state
    st.sim.param.update(n_groups=20, group_size=10, seed=2)
    st.simulate(fit=False)  # loaded, not fitted yet: the shown result is cbpp's
    assert st.truth and d._truth(st.truth, "fe") is None and not d.plots_current()
    assert all(box.styles.get("opacity") == "0.65" for box in d._plot_boxes)
    assert st.fit_now()
    assert d._truth(st.truth, "fe") == st.truth["fe"]
    st.load_demo("cbpp", fit=False)
    st.spec.param.update(method="map")
    assert st.fit_now()
    assert any("Choose the Integrated Laplace method" in w for w in st.fit.warnings)
    assert not any("fit_laplace()" in w for w in st.fit.warnings)
    assert ">FITTED<" in d._status_text(st.fit.message, st.fit.status)
    st.load_demo("grouseticks", fit=False)  # its joint mode's search ends without converging
    assert st.fit_now() and not st.fit.result.converged
    assert ">NOT CONVERGED<" in d._status_text(st.fit.message, st.fit.status)


def test_served_app_keeps_library_warnings_out_of_the_server_log():
    """`panel serve app` runs app/main.py: the library's warnings (shown on the page from the result) are not
    printed to the server's log; other warnings still are."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = ("import runpy, warnings\n"
            "runpy.run_path('app/main.py')\n"
            "from mglm_core.errors import DataWarning, ConvergenceWarning\n"
            "warnings.warn('probe-data', DataWarning)\n"
            "warnings.warn('probe-convergence', ConvergenceWarning)\n"
            "warnings.warn('probe-other', UserWarning)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "probe-other" in out.stderr
    assert "probe-data" not in out.stderr and "probe-convergence" not in out.stderr


def test_whole_number_inputs_state_their_range():
    """A number typed outside an input's range is set back by the browser without a word: each label says
    what is accepted, from the parameter's bounds."""
    import panel as pn

    from app import Dashboard

    d = Dashboard()
    names = {w.label for w in d.__panel__().select(pn.widgets.IntInput)}
    st = d.state
    for p in (st.sim.param.n_groups, st.sim.param.group_size, st.sim.param.seed, st.view.param.re_top_k):
        lo, hi = p.bounds
        assert f"{p.label} ({lo:,}–{hi:,})" in names, names
    assert "Number of groups (2–5,000)" in names


def test_a_whole_number_outside_its_range_is_brought_to_the_bound_with_a_note():
    """The browser is not given the bounds (it would revert a number outside them silently): the server brings
    it to the nearest bound and says so under the input; the parameter only ever holds values in range."""
    import panel as pn

    from app import Dashboard

    d = Dashboard()
    sim = d.state.sim
    box = next(c for c in d.__panel__().select(pn.Column) if c.objects
               and isinstance(c.objects[0], pn.widgets.IntInput) and c.objects[0].label.startswith("Number of groups"))
    widget, note = box.objects
    assert widget.start is None and widget.end is None and not note.visible
    widget.value = 12_345
    assert (widget.value, sim.n_groups) == (5000, 5000)
    assert note.visible and note.object == "Number of groups must be from 2 to 5,000; got 12,345, so it is 5,000."
    widget.value = 40
    assert sim.n_groups == 40 and not note.visible
    widget.value = -3
    assert (widget.value, sim.n_groups) == (2, 2) and "got -3, so it is 2" in note.object
    widget.value = None  # an emptied input
    assert (widget.value, sim.n_groups) == (2, 2) and note.object == "Enter a whole number from 2 to 5,000."
    sim.n_groups = 77  # set from code: the input follows
    assert widget.value == 77 and not note.visible


def test_summary_tab_compares_the_models_fitted_by_their_marginal_likelihood():
    """The Summary tab's model comparison shows the integrated fits of these outcomes as the session makes
    them (its table is the state's, renamed), explains a method without p(y), and its button clears it."""
    import asyncio

    from app import Dashboard

    d = Dashboard()
    d.__panel__().get_root(Document())
    st = d.state
    summary = d.tabs.objects[3]
    box = next(o for o in summary.objects if any("model-comparison" in getattr(c, "css_classes", [])
                                                 for c in getattr(o, "objects", [])))
    note, table, button = box.objects[1], box.objects[2], box.objects[3]
    st.spec.method = "laplace"
    assert st.fit_now()
    st.spec.param.update(formula_text="incidence ~ (1 | herd)", use_formula=True)
    assert st.fit_now()
    shown = table.value
    assert list(shown.columns[3:]) == ["log p(y)", "log BF vs best", "probability"] and len(shown) == 2
    assert shown["model"].iloc[0] == "incidence ~ period + (1 | herd)"
    assert shown["log p(y)"].iloc[1] == st.fit.result.log_marginal_likelihood
    assert "Bayes factor" in note.object
    st.spec.method = "vb"
    assert st.fit_now()
    assert table.value.empty and "Integrated Laplace" in note.object
    button.clicks += 1
    asyncio.run(asyncio.sleep(0))
    assert st.fit.models == []


def test_the_data_tab_says_how_many_rows_its_table_shows():
    """The note beside the download names the rows shown: all of cbpp's 56 (it said "the first 500" of
    them), and the first 500 of a larger upload, whose table holds exactly those."""
    import numpy as np
    import pandas as pd
    import panel as pn

    from app import Dashboard
    from app.dashboard import PREVIEW_ROWS

    d = Dashboard()
    d.__panel__().get_root(Document())
    data_tab = d.tabs.objects[4]
    note = next(o for o in data_tab.objects[2].objects if isinstance(o, pn.pane.Markdown))
    table = data_tab.objects[3]
    assert "shows all 56 rows" in note.object and len(table.value) == 56
    big = pd.DataFrame({"y": np.arange(1200) % 2, "g": np.arange(1200) % 30})
    d.state.load_frame(big, "big", fit=False)
    assert f"first {PREVIEW_ROWS} of the 1,200 rows" in note.object and len(table.value) == PREVIEW_ROWS


def test_the_summary_tab_says_which_model_its_tables_and_exports_are_of():
    """After a failed fit the Summary tab showed and exported the previous model at full brightness, and the
    previous fit's diagnostics stood beside the ERROR badge as if they were the current model's."""
    from app import Dashboard

    d = Dashboard()
    st = d.state
    assert d._previous_note() == "" and d._diag_text(["a note"], "done").startswith("**Diagnostics**")
    st.spec.param.update(formula_text="incidence ~ period + (1 | nosuchcolumn)")
    assert st.fit.status in ("error", "stale") and not d.plots_current()
    note = d._previous_note()
    assert "last fitted model" in note and "period" in note and "herd" in note
    assert {box.styles.get("opacity") for box in d._plot_boxes} == {"0.65"}
    assert d._diag_text(["a note"], st.fit.status).startswith("**Diagnostics of the previous fit**")


def test_the_model_comparison_shows_its_table_only_with_models_to_list():
    from app import Dashboard

    d = Dashboard()  # (the default method, Integrated Laplace: this model is listed)
    assert d.models_table.visible
    d.state.spec.method = "vb"
    d.state.clear_models()
    assert d.state.fit_now(), d.state.errors
    assert not d.models_table.visible


def test_the_note_of_a_slow_model_speaks_of_that_model():
    """After a slow fit the note said "Press Fit model after changes", but a change to another model refit live
    (each model is judged by its own fits): the note now says that this model refits on the button only."""
    from app import Dashboard

    d = Dashboard()
    st = d.state
    st._slow[st._slow_key()] = 5.5
    note = d._mode_note(st.fit.status, True)
    assert note.startswith("This model refits on **Fit model** only: its last fit took 5.5 s")
    st.spec.method = "vb"  # (another model: not known to be slow, live)
    assert "refits live as you change the model" in d._mode_note(st.fit.status, True)
