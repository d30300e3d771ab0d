"""Plot functions: real fitted numbers end up in the Bokeh data sources."""
import numpy as np
import holoviews as hv
import pytest
import bokeh.plotting
from bokeh.models import ColumnDataSource, GlyphRenderer, HoverTool

from app import plots


def _sources(element):
    fig = hv.render(element, backend="bokeh")
    return [m.data for m in fig.select(type=ColumnDataSource)]


def test_forest_plot_holds_fe_mean(cbpp_state):
    res = cbpp_state.fit.result
    srcs = [d for d in _sources(plots.forest_plot(res)) if "term" in d and "mean" in d and "y" in d]
    assert srcs
    np.testing.assert_allclose(np.asarray(srcs[0]["mean"]), res.fe_mean)
    assert list(srcs[0]["term"]) == list(res.fe_names)


def test_forest_exp_scale_and_truth(cbpp_state):
    res = cbpp_state.fit.result
    el = plots.forest_plot(res, exp_scale=True, truth={"Intercept": -1.4})
    srcs = _sources(el)
    means = [d for d in srcs if "term" in d and "mean" in d and "y" in d][0]
    np.testing.assert_allclose(np.asarray(means["mean"]), np.exp(res.fe_mean))
    truth = [d for d in srcs if "truth" in d][0]
    assert np.asarray(truth["truth"])[0] == pytest.approx(np.exp(-1.4))
    # the tooltip says which numbers are exponentiated, and the axis that the intercept is the baseline odds
    fig = hv.render(el, backend="bokeh")
    tips = [dict(t.tooltips) for t in fig.select(type=HoverTool) if isinstance(t.tooltips, list)]
    assert any("exp(mean)" in t and "sd (log scale)" in t for t in tips)
    assert fig.xaxis[0].axis_label == "odds ratio (exp scale; the intercept: baseline odds)"


def test_forest_compare_two_methods(cbpp_state):
    out = cbpp_state.compare_methods(["map", "vb"])
    srcs = [d for d in _sources(plots.forest_plot({m: o.result for m, o in out.items()}))
            if "method" in d and "y" in d and "mean" in d and "lower" in d]
    methods = {str(d["method"][0]) for d in srcs}
    assert methods == {"Laplace (MAP)", "VB"}


def test_sd_density_uses_vcp_density(cbpp_state):
    res = cbpp_state.fit.result
    dens = res.vcp_density("herd", n=200)
    srcs = [d for d in _sources(plots.sd_density_plot(res, truth={"herd": 0.6})) if "density" in d]
    np.testing.assert_allclose(np.asarray(srcs[0]["sd"]), dens["sd"].to_numpy())
    est = [d for d in _sources(plots.sd_density_plot(res)) if "estimate" in d][0]
    assert est["estimate"][0] == pytest.approx(res.vcp_table().loc["herd", "sd_median"])


def test_a_collapsed_sd_does_not_flatten_the_other_densities(cbpp_state):
    """cbpp's MAP SD collapses (a density spike millions high): the comparison's height is set by the
    other methods' curves, whose peaks stay in view."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = cbpp_state.compare_methods(["map", "vb", "laplace"])
    results = {m: o.result for m, o in out.items()}
    fig = hv.render(plots.sd_density_plot(results), backend="bokeh")
    peaks = {str(d["method"][0]): float(np.max(d["density"])) for d in
             (m.data for m in fig.select(type=ColumnDataSource)) if "density" in d and "method" in d}
    assert peaks["Laplace (MAP)"] > 1e3 * peaks["VB"]
    top = fig.y_range.end
    assert max(peaks["VB"], peaks["Integrated Laplace"]) < top < 1.5 * max(peaks["VB"], peaks["Integrated Laplace"])


@pytest.fixture(scope="module")
def grouseticks_compared():
    """The SD densities of grouseticks' VB and Integrated Laplace fits, compared in one plot (Bokeh figure)."""
    import warnings

    from app.state import AppState

    st = AppState()
    st.load_demo("grouseticks", fit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = st.compare_methods(["vb", "laplace"])
    return hv.render(plots.sd_density_plot({m: o.result for m, o in out.items()}), backend="bokeh")


def test_over_confident_sd_densities_run_off_the_top_beside_the_integrated_ones(grouseticks_compared):
    """grouseticks compared: VB's SD densities are 4-13 times as high as the Integrated Laplace's; the plot's height
    is set by the Integrated Laplace's curves (a curve over twice their height runs off the top), so that none of
    theirs is flattened (the lowest had been at 6 % of the height)."""
    fig = grouseticks_compared
    peaks = {}
    for d in (m.data for m in fig.select(type=ColumnDataSource)):
        if "density" in d and "method" in d:
            peaks.setdefault(str(d["method"][0]), []).append(float(np.max(d["density"])))
    top = fig.y_range.end
    assert max(peaks["VB"]) > 4 * max(peaks["Integrated Laplace"])
    assert max(peaks["Integrated Laplace"]) < top < 2.5 * max(peaks["Integrated Laplace"])
    assert min(peaks["Integrated Laplace"]) > 0.15 * top


def test_caterpillar_sorted_with_search_and_top_k(cbpp_state):
    res = cbpp_state.fit.result
    df = plots.caterpillar_data(res, "herd")
    assert len(df) == 15 and df["mean"].is_monotonic_increasing
    re = res.random_effects("herd")
    assert set(np.round(df["mean"], 10)) == set(np.round(re["Mean"].to_numpy(), 10))
    assert len(plots.caterpillar_data(res, "herd", top_k=5)) == 5
    assert list(plots.caterpillar_data(res, "herd", search="1")["level"].str.contains("1")) == [True] * 7
    srcs = [d for d in _sources(plots.caterpillar_plot(res, "herd", truth={"herd[1]": 0.3})) if "rank" in d]
    assert any("truth" in d for d in srcs)
    assert max(len(d["rank"]) for d in srcs) == 15


def test_caterpillar_with_thousands_of_levels():
    from app.state import AppState

    st = AppState()
    st.sim.param.update(n_groups=3000, group_size=2, seed=1)
    st.spec.method = "vb"
    st.simulate(fit=False)
    assert st.fit_now(), st.errors
    el = plots.caterpillar_plot(st.fit.result, st.spec.groups[0], top_k=500)
    src = [d for d in _sources(el) if "rank" in d and "level" in d][0]
    assert len(src["rank"]) == 500
    assert "500 of 3000" in el.opts.get().kwargs["title"]


def test_tables_and_html(cbpp_state):
    res = cbpp_state.fit.result
    fe = plots.fe_summary(res, exp_scale=True)
    np.testing.assert_allclose(fe["mean"], res.fe_mean)
    np.testing.assert_allclose(fe["exp_mean"], np.exp(res.fe_mean))
    assert list(plots.vcp_summary(res)["component"]) == ["herd"]
    assert len(plots.re_summary(res)) == 15
    html = plots.to_html(plots.forest_plot(res))
    assert html.startswith("<!DOCTYPE html>") and "Bokeh" in html
    # a saved file loads nothing: no script by a server-relative path or from the internet
    import re

    assert re.findall(r'<script[^>]*\bsrc="(?!data:)', html) == []
    # ... and no stylesheet either, also when the session holds a table (Panel then links Tabulator's from its CDN)
    import pandas as pd
    import panel as pn
    from bokeh.document import Document

    doc = Document()
    with pn.io.server.set_curdoc(doc):
        pn.widgets.Tabulator(pd.DataFrame({"a": [1]})).get_root(doc)
        html = plots.to_html(plots.forest_plot(res))
    assert "Bokeh" in html and re.findall(r'<link[^>]*\bhref="https?:', html) == []


def test_forest_x_range_includes_the_reference_line(cbpp_state):
    """cbpp's intervals all lie below 0; the zero line must still be on the plot (and 1 on the exp scale)."""
    res = cbpp_state.fit.result
    for exp_scale, ref in ((False, 0.0), (True, 1.0)):
        fig = hv.render(plots.forest_plot(res, exp_scale=exp_scale), backend="bokeh")
        assert fig.x_range.start < ref < fig.x_range.end, (exp_scale, fig.x_range.start, fig.x_range.end)


@pytest.mark.parametrize("lo, hi, expected", [
    (0.3, 3.0, [0.5, 1, 2]), (0.15, 0.9, [0.15, 0.2, 0.3, 0.5, 0.7]), (0.8, 1.3, [0.8, 1.0, 1.2]),
    (0.95, 1.05, [0.95, 1.0, 1.05]), (0.01, 500, [0.01, 0.1, 1, 10, 100]),
])
def test_log_axis_ticks(lo, hi, expected):
    np.testing.assert_allclose([v for v, _ in plots.log_ticks(lo, hi)], expected)


def test_log_axis_ticks_over_many_decades_and_a_tiny_range():
    wide = plots.log_ticks(1e-15, 1.0)
    assert len(wide) <= 9 and wide[-1][0] == 1.0 and all(v > 0 for v, _ in wide)  # 1 kept, no tick at 0
    assert plots.log_ticks(1.0, 1.0000001) == [(1.0, "1")]  # one tick per label


def test_forest_exp_scale_ticks_label_the_odds_ratios(cbpp_state):
    """On the exp scale the axis has ticks between powers of ten: cbpp's odds ratios (0.07 to 1) get
    0.1, 0.2, 0.5 and 1, not 0.1 and 1 alone."""
    res = cbpp_state.fit.result
    fig = hv.render(plots.forest_plot(res, exp_scale=True), backend="bokeh")
    ticks = list(fig.xaxis[0].ticker.ticks)
    lower, upper = np.exp(res.fe_mean - 1.96 * res.fe_sd), np.exp(res.fe_mean + 1.96 * res.fe_sd)
    assert min(ticks) >= min(lower.min(), 1.0) and max(ticks) <= max(upper.max(), 1.0)
    assert 1.0 in ticks and len(ticks) >= 3


def test_forest_without_fixed_effects_to_show_is_a_message_not_a_crash():
    """An intercept-only model with the intercept hidden has no rows: the plot says so (drawing the
    empty overlay raised a ValueError inside Bokeh's rendering, past the dashboard's guard)."""
    import warnings

    import mglm_core as mg
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"y": rng.integers(0, 2, 60).astype(float), "g": list("abc") * 20})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mg.BayesMixedGLM.from_formula("y ~ 1 + (1 | g)", data=df).fit_vb()
    el = plots.forest_plot(res, include_intercept=False)
    hv.render(el, backend="bokeh")
    assert isinstance(el, hv.Text) and "No fixed effects to show" in el.text


def test_compact_plots_keep_their_titles_clear_and_the_truth_in_the_legend(cbpp_state):
    """The Teaching tab's low plots have short titles and the toolbar at the right (above, it covered the cut
    titles; below, it sat over the next plot's title), and the true SD has a legend entry like the other true
    values."""
    res = cbpp_state.fit.result
    small = hv.render(plots.sd_density_plot(res, truth={"herd": 0.8}, height=260), backend="bokeh")
    assert small.toolbar_location == "right" and small.title.text == "Random-effect SDs: posterior density"
    assert [item.label.value for item in small.legend[0].items] == ["herd", "truth"]
    full = hv.render(plots.forest_plot(res, height=360), backend="bokeh")
    assert full.toolbar_location == "right" and "95 % interval" in full.title.text
    # the forest's legend (methods, truth) lies below the frame, where it cannot cover a mark
    truth = {name: 0.0 for name in res.fe_names}
    forest = hv.render(plots.forest_plot({"laplace": res, "vb": res}, truth=truth, height=360), backend="bokeh")
    [legend] = [item for item in forest.below if type(item).__name__ == "Legend"]
    assert not forest.legend or all(item in forest.below for item in forest.legend)
    assert [item.label.value for item in legend.items][-1] == "truth" and legend.orientation == "horizontal"


def test_messages_in_place_of_plots_are_centred_and_sd_densities_need_sds():
    """A message in place of a plot sits in the middle of the plot's unit square, wrapped (at (0, 0) it sat
    in the corner, cut off); a MAP fit without posterior SDs (its Hessian not negative definite) gets a
    message instead of an SD plot with a 'nan' axis."""
    from app.state import AppState

    fig = hv.render(plots.empty_plot("No level of BROOD matches 'zzz' " * 3), backend="bokeh")
    [text] = [m for m in fig.renderers if hasattr(m.glyph, "text")]
    src = text.data_source.data
    assert (src["x"][0], src["y"][0]) == (0.5, 0.5) and (fig.x_range.start, fig.x_range.end) == (0, 1)
    assert all(len(line) <= 48 for line in src["text"][0].split("\n"))
    st = AppState()
    # beside a forest plot in one Panel layout (the Compare tab below the Fixed effects tab), the message
    # keeps its own axes: Panel links the ranges of plots sharing dimension names, and on hv.Text's
    # default x the message took the forest's range and sat near the right edge
    import panel as pn

    st.load_demo("cbpp", fit=False)
    assert st.fit_now()
    layout = pn.Column(pn.pane.HoloViews(plots.forest_plot(st.fit.result)),
                       pn.pane.HoloViews(plots.empty_plot("Press the button")))
    root = layout.get_root()
    figs = list(root.select({"type": bokeh.plotting.figure}))
    [message_fig] = [f for f in figs if any(isinstance(r, GlyphRenderer) and hasattr(r.glyph, "text")
                                            for r in f.renderers)]
    [forest_fig] = [f for f in figs if f is not message_fig]
    assert (message_fig.x_range.start, message_fig.x_range.end) == (0, 1)
    assert message_fig.x_range is not forest_fig.x_range and message_fig.y_range is not forest_fig.y_range
    st.load_demo("grouseticks", fit=False)
    st.spec.method = "map"
    assert st.fit_now() and not np.isfinite(st.fit.result.vcp_sd).any()
    el = plots.sd_density_plot(st.fit.result)
    assert isinstance(el, hv.Text) and "posterior SDs are unavailable" in el.text.replace("\n", " ")


def test_a_fit_without_an_sd_density_plots_the_others(cbpp_state):
    """A failed mode leaves NaN log-SD summaries: the library says it has no density (it returned NaN
    silently), and the plot draws the other methods' curves instead of failing."""
    import dataclasses

    import mglm_core as mg

    res = cbpp_state.fit.result
    failed = dataclasses.replace(res, vcp_sd=np.array([np.nan]), vcp_grid=None)
    with pytest.raises(mg.DataError, match="the posterior of `herd` has no density"):
        failed.vcp_density("herd")
    assert len(plots.sd_density_data(failed, "herd")) == 0
    fig = hv.render(plots.sd_density_plot({"map": failed, "laplace": res}), backend="bokeh")
    curves = [m.data for m in fig.select(type=ColumnDataSource) if "density" in m.data]
    assert any(len(d["density"]) == 200 for d in curves)


def test_the_wheel_scrolls_the_page_not_the_plots(cbpp_state):
    """HoloViews activated wheel zoom, so scrolling the page over a plot zoomed it out to negative SDs."""
    from bokeh.models import WheelZoomTool

    res = cbpp_state.fit.result
    for element in (plots.forest_plot(res), plots.sd_density_plot(res), plots.caterpillar_plot(res, "herd")):
        fig = hv.render(element, backend="bokeh")
        assert not isinstance(fig.toolbar.active_scroll, WheelZoomTool)
        assert any(isinstance(t, WheelZoomTool) for t in fig.tools)  # (still offered, when chosen)


def test_the_exp_scale_forest_says_it_shows_exp_of_the_mean(cbpp_state):
    res = cbpp_state.fit.result
    assert hv.render(plots.forest_plot(res, exp_scale=True), backend="bokeh").title.text.startswith(
        "Fixed effects: exp(posterior mean)")
    assert hv.render(plots.forest_plot(res), backend="bokeh").title.text.startswith("Fixed effects: posterior mean")


def test_the_sd_density_axis_labels_no_negative_densities(cbpp_state):
    from bokeh.models import CustomJSTickFormatter

    fig = hv.render(plots.sd_density_plot(cbpp_state.fit.result), backend="bokeh")
    formatter = fig.yaxis[0].formatter
    assert isinstance(formatter, CustomJSTickFormatter) and "tick < 0 ? ''" in formatter.code


def test_long_names_are_shortened_on_the_axes_and_kept_in_the_hover(cbpp_state):
    """A 200-character column name took a forest plot's whole width for its tick label: labels longer than
    LABEL_MAX are cut in the middle, kept distinct, and the hover and tables keep the full name."""
    assert plots.short_label("abc") == "abc"
    cut = plots.short_label("a" * 50 + "b" * 50)
    assert len(cut) == plots.LABEL_MAX and cut.startswith("a") and cut.endswith("b") and "\u2026" in cut
    res = cbpp_state.fit.result
    long_a, long_b = "x" * 20 + "A" * 100 + "y" * 20, "x" * 20 + "B" * 100 + "y" * 20
    df = plots.forest_data(res)
    renamed = dict(zip(df.term, ["Intercept", long_a, long_b, "period4"]))
    fake = type("R", (), {})()  # the forest reads its table through the adapter: rename the terms there
    from app import adapter
    table = adapter.fe_table(res).rename(index=renamed)
    orig = adapter.fe_table
    try:
        adapter.fe_table = lambda r: table if r is fake else orig(r)
        el = plots.forest_plot(fake)
    finally:
        adapter.fe_table = orig
    fig = hv.render(el, backend="bokeh")
    labels = list(fig.yaxis[0].major_label_overrides.values())
    # (the two that shorten alike are numbered among themselves)
    assert max(map(len, labels)) <= plots.LABEL_MAX + 4 and len(set(labels)) == 4
    assert sorted(lab[-3:] for lab in labels if lab.startswith("x")) == ["(1)", "(2)"]
    terms = [d for d in (m.data for m in fig.select(type=ColumnDataSource)) if "term" in d and "mean" in d]
    assert long_a in list(terms[0]["term"])  # the hover's full name


def test_several_methods_share_a_colour_per_component_and_a_line_style_per_method(grouseticks_compared):
    """Comparing methods on three SDs (grouseticks): each component keeps its colour across the methods, each
    method has its own dashes, and the legend is the key to both (one entry per component and per method that
    drew a density), below the plot where it covers no curve."""
    fig = grouseticks_compared
    lines = [(r.data_source.data, r.glyph) for r in fig.select(type=GlyphRenderer)
             if "density" in r.data_source.data and type(r.glyph).__name__ == "Line"]
    assert len(lines) == 6
    colour = {}
    dashes = {}
    for data, glyph in lines:
        colour.setdefault(str(data["component"][0]), set()).add(glyph.line_color)
        dashes.setdefault(str(data["method"][0]), set()).add(tuple(glyph.line_dash))
    assert all(len(c) == 1 for c in colour.values()) and len(set.union(*colour.values())) == 3
    assert all(len(d) == 1 for d in dashes.values()) and len(set.union(*dashes.values())) == 2
    [legend] = fig.legend
    labels = [i.label.value for i in legend.items]
    # filled column by column in three columns: the components on the first row, the methods on the second
    assert labels[::2] == ["BROOD", "INDEX", "LOCATION"] and labels[1::2][:2] == ["VB", "Integrated Laplace"]
    assert legend.ncols == 3 and not labels[5].strip()  # (a blank entry pads the methods' row)
    assert legend in fig.below  # (beside the plot it narrowed the frames of the plots above it)


def test_the_caterpillar_legend_appears_only_with_true_values(cbpp_state):
    res = cbpp_state.fit.result
    plain = hv.render(plots.caterpillar_plot(res, "herd"), backend="bokeh")
    assert not any(legend.items for legend in plain.legend)
    with_truth = hv.render(plots.caterpillar_plot(res, "herd", truth={"herd[1]": 0.3}), backend="bokeh")
    assert with_truth.legend and with_truth.legend[0] in with_truth.above
    compact = hv.render(plots.caterpillar_plot(res, "herd", truth={"herd[1]": 0.3}, height=260), backend="bokeh")
    assert not any(legend.items for legend in compact.legend)  # (the Teaching tab's text says what red is)


def test_the_forest_title_says_what_the_points_are(cbpp_state):
    """The joint mode's points are posterior modes; a fit without posterior SDs (MAP's Hessian not negative
    definite) has no intervals, and its title said "posterior mean and 95 % interval" over bare points."""
    import dataclasses
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = cbpp_state.compare_methods(["map", "vb"])
    title = lambda res: hv.render(plots.forest_plot(res), backend="bokeh").title.text
    assert title(out["vb"].result) == "Fixed effects: posterior mean and 95 % interval"
    assert title(out["map"].result) == "Fixed effects: posterior mode and 95 % interval"
    assert title({m: o.result for m, o in out.items()}) == "Fixed effects: posterior mean and 95 % interval"
    res = out["map"].result
    no_sd = dataclasses.replace(res, fe_sd=np.full_like(res.fe_sd, np.nan))
    assert title(no_sd) == "Fixed effects: posterior mode (no intervals: see the diagnostics)"


def test_a_wide_priors_tail_towards_sd_zero_runs_off_the_top():
    """cbpp at vcp_p = 5: the log-SD's posterior has a long tail towards SD 0 (the prior's own), a density per unit
    of SD that grows without bound at 0 (36 times the herd SD's peak on the density's grid); the plot's height is
    set by the curve over its 95 % interval, whose peak stays in view, half of the density's points lie over the
    central 98 % of the log-SD (spread evenly over the tail, a handful had drawn the peak), and the shading lies
    under the curve."""
    import warnings

    import mglm_core as mg
    from mglm_core.datasets import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mg.BayesMixedGLM.from_formula("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                                            data=load("cbpp"), vcp_p=5.0).fit_laplace()
    dens = res.vcp_density("herd")
    lo, hi = np.log(res.vcp_table().loc["herd", ["sd_lower", "sd_upper"]].to_numpy(float))
    body = dens["density"][dens["sd"] >= np.exp(lo)].max()
    assert dens["density"].max() > 10 * body
    assert np.sum((np.log(dens["sd"]) > lo) & (np.log(dens["sd"]) < hi)) >= 40
    for n in (2, 3, 8, 9, 200, 201):  # (exactly n points, increasing: the two parts' shared point had made n - 1)
        d = res.vcp_density("herd", n=n)
        assert len(d) == n and np.all(np.diff(d["sd"]) > 0)
    fig = hv.render(plots.sd_density_plot(res), backend="bokeh")
    assert body < fig.y_range.end < 1.5 * body
    # the shading closes on the zero line, under the curve (with the curve's hover columns as value columns, the
    # Area had taken the second for its baseline and closed the curve on itself: shaded above it, up to the spike)
    patch = next(r.data_source.data for r in fig.select(type=GlyphRenderer) if type(r.glyph).__name__ == "Patch")
    n = len(dens)
    np.testing.assert_array_equal(np.asarray(patch["y"])[:n], 0.0)
    np.testing.assert_allclose(np.asarray(patch["y"])[n:][::-1], dens["density"].to_numpy())


def test_a_density_that_only_falls_over_its_interval_does_not_set_the_height():
    """grouseticks at vcp_p = 5: LOCATION's SD density per unit of SD falls all across its 95 % interval (the 1/SD of
    a long tail towards SD 0), its largest value there 58 times its value at the median; the plot's height follows
    the curves' bodies (INDEX's peak), not that value (it had been 33, leaving BROOD's peak at 8 % of the plot)."""
    import warnings

    import mglm_core as mg
    from mglm_core.datasets import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mg.BayesMixedGLM.from_formula("TICKS ~ YEAR + HEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)",
                                            data=load("grouseticks"), family="poisson", vcp_p=5.0).fit_laplace()
    index = res.vcp_density("INDEX")["density"].max()
    fig = hv.render(plots.sd_density_plot(res), backend="bokeh")
    assert index < fig.y_range.end < 1.5 * index
