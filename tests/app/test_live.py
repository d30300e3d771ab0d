"""LivePlot: a refit that changes numbers only updates the displayed Bokeh data in place."""
import numpy as np
import param
from bokeh.document import Document
from bokeh.models import ColumnDataSource, Range1d

from app import plots
from app.live import LivePlot


class _Holder(param.Parameterized):
    result = param.Parameter()
    exp_scale = param.Boolean(default=False)


def _forest_means(root):
    return [np.asarray(m.data["mean"]) for m in root.select({"type": ColumnDataSource})
            if {"term", "mean", "y"} <= set(m.data)]


def _two_fits(cbpp_state):
    first = cbpp_state.fit.result
    cbpp_state.spec.fe_p = 0.3  # a tight prior moves every estimate towards 0
    assert cbpp_state.fit_now(), cbpp_state.errors
    return first, cbpp_state.fit.result


def test_numbers_update_in_place_and_axes_follow(cbpp_state):
    first, second = _two_fits(cbpp_state)
    h = _Holder(result=first)
    live = LivePlot(lambda r, e: plots.forest_plot(r, exp_scale=e), h.param.result, h.param.exp_scale)
    assert live.n_replaced == 1 and live.n_updated == 0  # not displayed yet: nothing built
    root = live.pane.get_root(Document())
    sources = [m for m in root.select({"type": ColumnDataSource}) if "mean" in m.data]
    np.testing.assert_allclose(_forest_means(root)[0], first.fe_mean)

    h.result = second
    assert live.n_updated == 1 and live.n_replaced == 1
    # the same Bokeh data sources now hold the new estimates
    assert [m for m in root.select({"type": ColumnDataSource}) if "mean" in m.data] == sources
    np.testing.assert_allclose(_forest_means(root)[0], second.fe_mean)
    lo, hi = second.fe_mean - 2 * second.fe_sd, second.fe_mean + 2 * second.fe_sd
    x_ranges = [r for r in root.select({"type": Range1d}) if r.start < lo.min()]
    assert x_ranges and all(r.end > hi.max() for r in x_ranges)


def test_structure_change_replaces_the_plot(cbpp_state):
    h = _Holder(result=cbpp_state.fit.result)
    live = LivePlot(lambda r, e: plots.forest_plot(r, exp_scale=e), h.param.result, h.param.exp_scale)
    live.pane.get_root(Document())
    h.exp_scale = True  # log axis and new labels: a new plot
    assert live.n_replaced == 2 and live.n_updated == 0
    root = live.pane.get_root(Document())
    np.testing.assert_allclose(_forest_means(root)[0], np.exp(cbpp_state.fit.result.fe_mean))
