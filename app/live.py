"""A HoloViews pane whose Bokeh plot is updated in place when only the data change.

Re-rendering a HoloViews element builds a new Bokeh figure on the server and sends the
whole model to the browser (a few hundred milliseconds for an overlay of glyphs). A live
refit usually changes numbers only, so :class:`LivePlot` shows its elements through a
``DynamicMap`` fed by a ``Pipe`` stream: an element with the same *structure* as the one on
screen (same layer types, labels, dimensions and options) is sent through the pipe and
HoloViews updates the existing data sources and axis ranges; anything else (another set
of terms, a truth layer appearing, a new title) replaces the plot.
"""
from __future__ import annotations

import holoviews as hv
import panel as pn

__all__ = ["LivePlot", "structure"]


def _options(el) -> tuple:
    out = []
    for group in ("plot", "style"):
        try:
            kw = hv.Store.lookup_options("bokeh", el, group).kwargs
        except Exception:  # pragma: no cover - backend not loaded
            kw = {}
        out.append(tuple(sorted((k, repr(v)) for k, v in kw.items())))
    return tuple(out)


def structure(element) -> tuple:
    """What must stay the same for an in-place update: per layer its type, group, label,
    dimensions and options (plot and style), and the container's own options."""
    layers = list(element) if isinstance(element, hv.Overlay) else [element]
    sig = [(type(element).__name__, _options(element))]
    for el in layers:
        sig.append((type(el).__name__, el.group, el.label, tuple(str(d) for d in el.dimensions()),
                    _options(el)))
    return tuple(sig)


def _framewise(element):
    """Axis ranges follow each new frame (a DynamicMap otherwise keeps the first frame's).
    Set in place: the plotting functions return fresh elements."""
    for el in (list(element) if isinstance(element, hv.Overlay) else []) + [element]:
        el.opts(framewise=True)
    return element


class LivePlot(pn.viewable.Viewer):
    """Show ``fn(*deps)`` and keep it current as the parameters in ``deps`` change.

    While the pane is not on screen (a hidden tab) nothing is built: the pane holds a lazy
    ``DynamicMap`` that builds the element when it is first displayed.

    Parameters
    ----------
    fn : callable
        Returns a HoloViews element for the current values of ``deps``.
    *deps
        Parameters (``obj.param.name``) or other values, as for :func:`panel.bind`.
    **pane_kw
        Passed to :class:`panel.pane.HoloViews`.
    """

    def __init__(self, fn, *deps, **pane_kw):
        super().__init__()
        self._fn = fn
        self._pipe = None
        self._structure = None
        self.n_replaced = 0  # new plots (the rest were in-place updates)
        self.n_updated = 0
        self.pane = pn.pane.HoloViews(None, **pane_kw)
        self._args = pn.bind(lambda *a: a, *deps)
        self.refresh(*self._args())
        pn.bind(self.refresh, *deps, watch=True)

    @property
    def element(self):
        """The element on screen (built now if the pane has not been displayed yet)."""
        if self._pipe is None:
            return None
        kind, x = self._pipe.data
        return x if kind == "element" else self._build(x)

    def _build(self, args):
        return _framewise(self._fn(*args))

    def _callback(self, data):
        kind, x = data
        el = x if kind == "element" else self._build(x)
        self._structure = structure(el)
        return el

    def _replace(self, data) -> None:
        self.n_replaced += 1
        self._structure = None
        self._pipe = hv.streams.Pipe(data=data)
        self.pane.object = hv.DynamicMap(self._callback, streams=[self._pipe])

    def refresh(self, *args) -> None:
        """Show ``fn(*args)``: in place if the plot is displayed and keeps its structure."""
        if not self.pane._models:  # not displayed: build lazily when it is
            self._replace(("args", args))
            return
        el = self._build(args)
        if self._pipe is not None and structure(el) == self._structure:
            self.n_updated += 1
            self._pipe.send(("element", el))
        else:
            self._replace(("element", el))

    def __panel__(self):
        return self.pane
