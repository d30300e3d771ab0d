"""The dashboard view: widgets built from the state's parameters, plots bound to the fit.

``Dashboard`` is a ``pn.viewable.Viewer``: ``panel serve app`` builds one per browser
session (``app/main.py``) and a notebook displays it directly::

    from app import Dashboard
    Dashboard(data=df, spec=dict(response="y", groups=["g"], family="binomial"))
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Mapping
from urllib.parse import urlencode

import pandas as pd
import panel as pn
import param

from app import adapter, link, plots
from app.live import LivePlot
from app.data import DEMOS, MAX_UPLOAD_BYTES, MAX_UPLOAD_MB, column_overview, too_large_message
from app.state import AppState, diagnostics, model_comparison, problem_size
from app.upload import ChunkedUpload


def _rows(n: int) -> str:
    return f"{n:,} row" + ("" if n == 1 else "s")


def literal_markdown(text: str) -> str:
    """Markdown that shows ``text`` as written: punctuation escaped (a formula's ``**`` or
    ``__import__`` is not emphasis), and the indented lines of a formula error (the formula and the
    caret under the bad token) kept as a monospaced block."""
    out, block = [], []
    for line in str(text).split("\n"):
        if line.startswith("    "):
            block.append(line[4:])
            continue
        if block:
            out.append("```text\n" + "\n".join(block) + "\n```")
            block = []
        out.append(re.sub(r"([\\`*_{}\[\]<>()#+\-!|~])", r"\\\1", line))
    if block:
        out.append("```text\n" + "\n".join(block) + "\n```")
    return "\n\n".join(part for part in out if part)

ACCENT = plots.COLORS["accent"]
OWN_DATA = "(uploaded or simulated data)"

# Bokeh 3.9's tab headers take the focus but no key (keyboard support arrives with bokeh/bokeh#15168): one
# document-level listener (once per page) lets Enter/Space and the arrow, Home and End keys switch tabs through
# Bokeh's own click handler, so the server hears a keyboard switch as it hears a click, and marks the headers
# with their ARIA roles (disabled tabs are skipped). The script also names the inputs Bokeh leaves without an
# accessible name, from their visible labels.
TAB_KEYS = r"""<script>(() => {
  if (window.__mglmTabKeys) return; window.__mglmTabKeys = true;
  const tabOf = e => e.composedPath().find(n => n.classList && n.classList.contains("bk-tab"));
  const mark = t => { t.parentElement.setAttribute("role", "tablist");
    for (const x of t.parentElement.children) { x.setAttribute("role", "tab");
      x.setAttribute("aria-selected", String(x.classList.contains("bk-active"))); } };
  // the server's new tab content re-renders the headers, and the focused one goes with them: for a few
  // seconds after a switch, a lost focus returns to the active header
  const keep = root => {
    const fix = () => { const a = root.querySelector(".bk-tab.bk-active");
      if (a && !root.activeElement && (document.activeElement === document.body || !document.activeElement)) {
        a.focus(); mark(a); } };
    const obs = new MutationObserver(fix);
    obs.observe(root, {childList: true, subtree: true, attributes: true, attributeFilter: ["class"]});
    setTimeout(() => obs.disconnect(), 5000);
  };
  document.addEventListener("keydown", e => {
    const t = tabOf(e);
    if (!t || t.classList.contains("bk-disabled") || e.altKey || e.ctrlKey || e.metaKey) return;
    const tabs = [...t.parentElement.children].filter(x => !x.classList.contains("bk-disabled"));
    const i = tabs.indexOf(t), n = tabs.length;
    const target = {"Enter": t, " ": t, "ArrowRight": tabs[(i + 1) % n], "ArrowLeft": tabs[(i - 1 + n) % n],
                    "Home": tabs[0], "End": tabs[n - 1]}[e.key];
    if (!target) return;
    e.preventDefault(); target.click(); target.focus(); mark(target); keep(target.getRootNode());
  }, true);
  // Bokeh leaves some inputs without an accessible name: a checkbox's text is a sibling div, a multi-choice's
  // label points at its hidden select, a slider's handle is apart from its title. Name them from that text.
  const text = el => el ? el.textContent.trim().replace(/:\s*$/, "") : "";
  const label = (el, from) => { if (!el.hasAttribute("aria-label") && text(from)) el.setAttribute("aria-label", text(from)); };
  const nameAll = root => {
    for (const el of root.querySelectorAll("*")) {
      if (el.shadowRoot) nameAll(el.shadowRoot);
      if (el.matches("input[type=checkbox]") && el.parentNode === root) label(el, root.querySelector(".bk-label"));
      else if (el.matches(".choices[role=combobox]")) label(el, el.parentNode.querySelector(":scope > label"));
      else if (el.matches(".noUi-handle[role=slider]")) label(el, root.querySelector(".bk-slider-title"));
      else if (el.matches(".bk-tab") && !el.hasAttribute("role")) mark(el);
    }
  };
  document.addEventListener("focusin", e => { nameAll(document); const t = tabOf(e); if (t) mark(t); }, true);
  setInterval(() => nameAll(document), 1500);
})();</script>"""
# Plots of another model's result are greyed and faded, not hidden; at 0.65 their axis text keeps a contrast of
# about 3.7:1 on white (0.35 left 2.4:1, below WCAG's 3:1 for graphics).
_BRIGHT = {"opacity": "1", "filter": "none", "transition": "opacity 0.3s, filter 0.3s"}
_DIMMED = {"opacity": "0.65", "filter": "grayscale(0.85)", "transition": "opacity 0.3s, filter 0.3s"}


CSS = """
:host { --accent: %s; }
:host(.mglm-status) { font-size: 0.95em; color: #334155; }
:host(.mglm-note) { color: #64748b; }
""" % ACCENT
#: a pane's classes and the sheet that styles them (each Bokeh model has its own shadow root: a sheet on a
#: layout, or the page's CSS, does not reach the panes inside it)
NOTE = dict(css_classes=["mglm-note"], stylesheets=[CSS])
#: Signals to the browser tab's store (Dashboard._signal): restore (answered in ``sink``), commit the file put aside,
#: or clear
_STORE_JS = """
const kind = (source.value || '').split(':')[0];
try {
  if (kind === 'restore') {
    const kept = window.sessionStorage.getItem('mglm-upload');
    sink.value = kept ? kept : 'none:' + source.value;
  } else if (kind === 'commit') {  // (moved, not copied: two copies of a file of 1.5 MB overran the tab's storage)
    const pending = window.sessionStorage.getItem('mglm-upload-pending');
    window.sessionStorage.removeItem('mglm-upload-pending');
    window.sessionStorage.removeItem('mglm-upload');
    if (pending) { window.sessionStorage.setItem('mglm-upload', pending); }
  } else if (kind === 'clear') {
    window.sessionStorage.removeItem('mglm-upload');
  }
} catch (e) { if (kind === 'restore') { sink.value = 'none:' + source.value; } }
"""
#: where each kind of message is shown (AppState.errors' keys)
_CARDS = {"response": "card 2 · Model", "fixed": "card 2 · Model", "groups": "card 2 · Model",
          "formula": "card 4 · Formula", "teach": "the Teaching tab"}
STATUS = dict(css_classes=["mglm-status"], stylesheets=[CSS])


#: the Data tab's table shows at most this many rows (the download has them all)
PREVIEW_ROWS = 500


def _text_labels(objects) -> dict:
    """``{label: value}`` with each label's HTML special characters escaped, for widgets that render their
    labels as HTML (MultiChoice): an uploaded column named ``<img onerror=...>`` is shown as that text and
    never becomes markup (or script) in the page. The values stay the columns' names."""
    items = objects.items() if isinstance(objects, dict) else ((v, v) for v in objects)
    return {_escaped_name(label): value for label, value in items}


#: Headers of the results' tables in words that wrap (the columns keep the CSV exports' names)
_TITLES = {"lower_95": "lower 95 %", "upper_95": "upper 95 %", "exp_mean": "exp(mean)",
           "exp_lower_95": "exp(lower 95 %)", "exp_upper_95": "exp(upper 95 %)", "sd_estimate": "SD (median)",
           "sd_lower_95": "SD lower 95 %", "sd_upper_95": "SD upper 95 %", "log_sd_mean": "log-SD mean",
           "log_sd_sd": "log-SD sd", "parameters": "number of parameters"}


def _escaped_name(name) -> str:
    """A column's name for a table header that renders HTML: its text, escaped."""
    return html.escape(str(name), quote=False)


def _preview_note(df) -> str:
    """The note beside the data download: how much of the data the table shows."""
    n = 0 if df is None else len(df)
    shown = (f"The table below shows the first {PREVIEW_ROWS} of the {n:,} rows; the download has them all"
             if n > PREVIEW_ROWS else f"The table below shows all {n:,} rows")
    return shown + " (the reproducing script reads the downloaded file)."


def _bounded_input(obj: param.Parameterized, name: str, **kw) -> pn.Column:
    """A whole-number input for the bounded parameter ``name`` of ``obj``, its range in the label.

    The browser is not told the bounds (it would set a number outside them back to the previous value
    without a word): a number outside them is brought to the nearest bound here, and a note under the
    input says so (an emptied input returns to the parameter's value). The parameter only ever holds
    values within its bounds."""
    p = obj.param[name]
    lo, hi = p.bounds
    label = f"{p.label} ({lo:,}–{hi:,})"
    widget = pn.widgets.IntInput(label=label, value=getattr(obj, name), **kw)
    note = pn.pane.Markdown("", visible=False, **NOTE, margin=(0, 10))

    resetting = []  # (set while this watcher puts a value back: the note it wrote stays)

    def put_back(value, message):
        note.param.update(object=message, visible=True)
        resetting.append(True)
        try:
            widget.value = value  # (this watcher again, in range: the parameter follows)
        finally:
            resetting.pop()

    def typed(event):
        v = event.new
        if v is None:
            put_back(getattr(obj, name), f"Enter a whole number from {lo:,} to {hi:,}.")
        elif v < lo or v > hi:
            kept = min(max(v, lo), hi)
            put_back(kept, f"{p.label} must be from {lo:,} to {hi:,}; got {v:,}, so it is {kept:,}.")
        else:
            if not resetting:
                note.visible = False
            setattr(obj, name, v)

    widget.param.watch(typed, "value")
    obj.param.watch(lambda e: setattr(widget, "value", e.new), name)
    return pn.Column(widget, note, margin=0, sizing_mode=kw.get("sizing_mode"))


#: The template's page on narrow screens (phones): one scrolling page, the results first and the
#: controls below them (the template keeps the page at the window's height, the controls in a panel
#: that scrolls on its own, and the results below the window, out of reach).
PAGE_CSS = """
@media (min-width: 769px) and (max-width: 1100px) {
  html:root { --sidebar-width: 300px; }  /* (a laptop or a projector at 800 px: room for the plots) */
}
@media (max-width: 768px) {
  #container { height: auto !important; min-height: 100vh; overflow: visible !important; }
  #content { flex-direction: column; overflow: visible !important; height: auto !important; }
  #sidebar { order: 2; height: auto !important; max-height: none !important; overflow: visible !important;
             width: 100% !important; }
  #main { order: 1; height: auto !important; max-height: none !important; overflow: visible !important;
          width: 100% !important; }
  #header .title, .navbar-brand { font-size: 1.1rem !important; white-space: normal !important; }
}
"""

INTRO = """
**mglm** fits Bayesian generalized linear mixed models (binomial and Poisson) with
random intercepts and slopes. Choose a data set, the columns by role, and read the
fixed effects, the random-effect SDs and the random effects in the tabs.
"""


class Dashboard(pn.viewable.Viewer):
    """Interactive Bayesian GLMM dashboard (one per session or notebook cell)."""

    state = param.ClassSelector(class_=AppState, doc="The session state (data, model, fit).")

    def __init__(self, data: pd.DataFrame | None = None, demo: str = "cbpp", spec: dict | None = None,
                 data_name: str = "data", query: Mapping[str, str] | None = None, **params):
        """``query``: a link's URL query (:mod:`app.link`), read after ``demo`` and ``spec``: its demo data set
        replaces ``demo``, and its model is set on the sidebar (for a link to an uploaded file, once the browser tab
        gives the file back: :meth:`link_to`)."""
        params.setdefault("state", AppState())
        super().__init__(**params)
        self._syncs = {}  # (id(obj), parameter) -> (obj, watcher) keeping the newest column widget in step
        self._location = None  # the page's URL, kept to the model by _write_link once served (servable)
        self._signals = 0  # signals sent to the browser tab's store of an uploaded file (_signal)
        self._restoring = False  # (while the file the tab gave back is read: it stays kept as it is)
        self._kept_comparison = None  # the last model comparison and its inputs (_comparison)
        st = self.state
        if data is not None:
            st.load_frame(data, data_name, fit=False)
        else:
            st.load_demo(link.demo_of(query or {}) or demo, fit=False)
        if spec:
            st._loading = True
            try:
                st.spec.param.update(**spec)
                st.spec.formula_text = st.spec.built_formula()
            finally:
                st._loading = False
        # a link to an uploaded file: its model is set once the browser tab gives the file back (link_to)
        self._pending_query = dict(query) if query and query.get("upload") and data is None else None
        notes = self._read_link(query) if query and data is None and not self._pending_query else []
        if not st.fit_now() and st.errors:  # the first screen already shows a result, or says why it cannot
            st._invalid()
            if query:
                where = ", ".join(sorted({_CARDS.get(k, k) for k in st.errors if k not in ("data", "link")}))
                notes.append(f"its model cannot be fitted as it is: see the message in {where or 'the sidebar'}.")
        self._build()
        tab = (query or {}).get("tab")
        self.tabs.active = next((i for i, t in enumerate(self.tabs) if link.tab_key(t.name) == tab), 0)
        if tab and link.tab_key(self.tabs[self.tabs.active].name) != tab:
            notes.append(f"the link's tab {tab!r} is not one of {', '.join(link.tab_key(t.name) for t in self.tabs)}.")
        self._link_notes(notes)

    def _read_link(self, query) -> list[str]:
        """:func:`app.link.apply_query`'s notes; a link that cannot be read is one more note (a link must never take
        the session down: the data set's own model stays)."""
        try:
            return link.apply_query(self.state, query)
        except Exception as exc:
            return [f"the link could not be read ({type(exc).__name__}); the data set's own model is shown."]

    def _link_notes(self, notes) -> None:
        """Say under the data card what a link held that could not be used."""
        if notes:
            self.state._set_error("link", "From the link: " + " ".join(n[0].upper() + n[1:] for n in notes))

    @staticmethod
    def session_query() -> dict[str, str]:
        """The served page's URL query (``pn.state.session_args``) as text: the link's keys only."""
        out = {}
        for key, values in (pn.state.session_args or {}).items():
            if key in link.KEYS and values:
                try:
                    out[key] = values[-1].decode("utf-8")
                except (UnicodeDecodeError, AttributeError):
                    continue
        return out

    @staticmethod
    def _share_text(demo: str, upload: str) -> str:
        if demo:
            return ("**Share this model:** the page's address opens it again (data set, model, method and tab): copy "
                    "it from the address bar, or with the button.")
        if upload:
            return ("**This model's address** reopens it after a reload in this browser tab, which keeps the uploaded "
                    "file (up to a few MB). Anyone else needs the file too: share it and the script below.")
        return ("**Links** hold demo data sets and uploaded files: simulated data are not in the page's address. "
                "Share the data file and the script below instead.")

    def _write_link(self, *_):
        """Keep the page's URL the link to the model shown (:func:`app.link.query_of`); no query for simulated
        data. The address is replaced, not pushed (Panel's Location pushes a history entry per change, and Back
        then showed an address of another model than the page's)."""
        if self._location is None or self._pending_query:  # (the link's file not given back yet: its address stays)
            return
        active = self.tabs.active
        tab = link.tab_key(self.tabs[active].name) if 0 < active < len(self.tabs) else ""
        query = link.query_of(self.state, tab)
        self._address.value = self._location.pathname + ("?" + urlencode(query) if query else "")

    def link_to(self, location) -> None:
        """Keep the served page's address (``location``: its ``pn.state.location``) the link to the model shown."""
        self._location = location
        st = self.state
        st.spec.param.watch(self._write_link, list(AppState._SPEC_KEYS))
        st.data.param.watch(self._write_link, ["demo", "upload", "categorical"])
        self.tabs.param.watch(self._write_link, "active")
        pn.state.onload(self._write_link)  # (once the page is up: the browser's address is synced then)
        self._share_note.visible = True
        self._copy_link.visible = bool(st.data.demo)
        st.data.param.watch(lambda e: setattr(self._copy_link, "visible", bool(e.new)), "demo")
        # the uploaded file kept in the browser tab (sessionStorage) for a reload: stored when chosen, kept once
        # read (else dropped), given back when the page opens with its link (the browser's side: _build)
        self._stored.param.watch(self._on_stored, "value")
        self._seen_version = st.data.version
        st.param.watch(self._keep_upload, "columns_version")  # (after a load's roles are set: _set_data's end)
        if self._pending_query:
            pn.state.onload(lambda: self._signal("restore"))

    def _signal(self, kind: str) -> None:
        """Ask the browser tab to restore, keep or clear the uploaded file it holds (:data:`_STORE_JS`)."""
        self._signals += 1
        self._tab_store.value = f"{kind}:{self._signals}"

    def _keep_upload(self, *_):
        """New data: the tab keeps a file just read (its link then reopens it), and forgets it for other data; the
        model of a link to that file (whose tab had lost it) is set once it is uploaded again."""
        data = self.state.data
        if data.version == self._seen_version:  # (the same data: a column read another way)
            return
        self._seen_version = data.version
        if not self._restoring:  # (a file the tab gave back stays kept as it is)
            self._signal("commit" if data.upload else "clear")
        pending = self._pending_query
        if data.upload and pending and pending.get("upload") == data.upload:
            self._pending_query = None
            self._apply_pending(pending)

    def _apply_pending(self, query) -> None:
        self._link_notes(self._read_link({k: v for k, v in query.items() if k not in ("data", "upload")}))
        self.state.request_fit(immediate=True)

    def _on_stored(self, event):
        """The browser tab's answer to "restore": the file it kept (JSON of its name and base64 content), or
        ``none:...``."""
        pending, text = self._pending_query, event.new or ""
        if not pending or not text:
            return
        name = pending["upload"]
        try:
            kept = json.loads(text) if not text.startswith("none:") else None
            content = base64.b64decode(kept["value"]) if kept and kept.get("filename") == name else None
        except (ValueError, TypeError, KeyError):
            content = None
        if content is None:
            self._link_notes([(f"its data, the uploaded file {name!r}, is not kept in this browser tab (another tab "
                               "or browser, or a file of more than a few MB): upload it again, and the link's model is "
                               "set for it.")])
            return
        self._restoring = True
        try:
            self.state.load_upload(name, content, fit=False)  # (then _keep_upload sets the link's model and fits)
        finally:
            self._restoring = False

    # ------------------------------------------------------------------ helpers
    def _alert(self, key: str, alert_type: str = "danger") -> pn.pane.Alert:
        errors = self.state.param.errors
        return pn.pane.Alert(pn.bind(lambda e: literal_markdown(e.get(key, "")), errors), alert_type=alert_type,
                             visible=pn.bind(lambda e: bool(e.get(key)), errors),
                             sizing_mode="stretch_width", margin=(2, 5), css_classes=[f"alert-{key}"])

    @staticmethod
    def _safe(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # a plot must never take the session down
            return plots.empty_plot(f"Cannot draw this plot: {exc}")

    # ------------------------------------------------------------------ build
    def _build(self) -> None:
        st, spec, fit, view, sim = self.state, self.state.spec, self.state.fit, self.state.view, self.state.sim
        # linked to spec by a watcher: made once here, not with the column widgets at every data load
        self._family_widget = pn.widgets.RadioButtonGroup.from_param(
            spec.param.family, color="primary", variant="outline", sizing_mode="stretch_width")
        self._trials_widget = None  # the newest Trials choice, disabled for the Poisson family (one watcher)
        spec.param.watch(lambda e: self._trials_widget is not None
                         and self._trials_widget.param.update(disabled=e.new == "poisson"), "family")

        # ---- data
        # (a Select set to a value outside its options silently breaks the session's updates: use a placeholder)
        self.demo_select = pn.widgets.Select(label="Demo data set", options=[OWN_DATA] + list(DEMOS),
                                             value=st.data.dataset if st.data.dataset in DEMOS else OWN_DATA,
                                             sizing_mode="stretch_width")
        self.demo_select.param.watch(self._on_demo, "value")
        # (a file over the limit is refused in the browser, before any of it is sent; the others come in chunks)
        self.file_input = ChunkedUpload(accept=".csv,.txt,.tsv,.parquet,.pq,.xlsx,.xls", max_bytes=MAX_UPLOAD_BYTES,
                                        sizing_mode="stretch_width", label="Upload")
        self.file_input.param.watch(self._on_upload, "value")
        self.file_input.param.watch(self._on_refused, ["refused", "failed"])
        data_info = pn.pane.Markdown(pn.bind(self._data_info, st.data.param.df, st.data.param.dataset),
                                     margin=(0, 5), **NOTE)
        # widgets whose options depend on the data are rebuilt when the columns change: pushing new options to
        # a live Select races with its value (the browser resets it to the first option and sends that back)
        categorical = pn.panel(pn.bind(self._categorical_widget, st.param.columns_version),
                               sizing_mode="stretch_width")
        data_card = pn.Card(
            self.demo_select,
            pn.pane.Markdown(f"**or upload** a CSV, Parquet or Excel file (at most {MAX_UPLOAD_MB} MB):",
                             margin=(0, 5)),
            self.file_input, self._alert("data"), self._alert("link", "warning"), data_info, categorical,
            title="1 · Data", sizing_mode="stretch_width", collapsible=True)

        # ---- model
        w = dict(sizing_mode="stretch_width")
        self._alerts = {k: self._alert(k) for k in ("response", "fixed", "groups")}
        # the family choice stays the same widget across data loads (rebuilt with the column choices, a
        # click on it during a load could be lost)
        model_card = pn.Card(
            pn.panel(pn.bind(self._response_widget, st.param.columns_version), sizing_mode="stretch_width"),
            self._family_widget,
            pn.pane.Markdown("Your typed formula (card 4) is in use, not these column choices; changing one of them "
                             "goes back to them (the typed formula can be restored). Trials and Offset apply to the "
                             "typed formula too.", **NOTE, margin=(0, 5),
                             visible=spec.param.use_formula),
            pn.panel(pn.bind(self._model_widgets, st.param.columns_version), sizing_mode="stretch_width"),
            title="2 · Model", sizing_mode="stretch_width", collapsible=True)

        # ---- method, priors, fit
        self.fit_button = pn.widgets.Button(label="Fit model", color="primary", **w)
        self.fit_button.on_click(self._on_fit_click)
        def progress_bar():  # (one under the Fit button, one under the status line: a clone lost the bindings)
            return pn.indicators.Progress(value=fit.param.progress, active=pn.bind(lambda v: v < 0, fit.param.progress),
                                          bar_color="primary", height=10,
                                          visible=pn.bind(lambda s: s in ("fitting", "waiting"), fit.param.status),
                                          sizing_mode="stretch_width")

        progress = progress_bar()
        # (on every change of the model too: a method whose fit is quick refits live, and the status may
        # stay "done" through a cached or quick refit)
        mode_note = pn.pane.Markdown(pn.bind(self._mode_note, fit.param.status, spec.param.auto_fit,
                                             fit.param.outcome, spec.param.method, st.param.columns_version),
                                     **NOTE, margin=(0, 5))
        fit_card = pn.Card(
            pn.widgets.Select.from_param(spec.param.method, label="Method", **w),
            pn.widgets.FloatSlider.from_param(spec.param.fe_p, throttled=True, **w),
            pn.widgets.FloatSlider.from_param(spec.param.vcp_p, throttled=True, **w),
            pn.widgets.Checkbox.from_param(spec.param.auto_fit, css_classes=["auto-fit-toggle"]),
            self.fit_button, progress, mode_note,
            title="3 · Priors and fitting", sizing_mode="stretch_width", collapsible=True)

        # ---- formula
        formula_card = pn.Card(
            pn.widgets.TextAreaInput.from_param(spec.param.formula_text, label="Model formula (lme4 syntax)",
                                                height=80, **w),
            pn.widgets.Checkbox.from_param(spec.param.use_formula),
            pn.pane.Markdown("Edit the formula to fit it as typed, e.g. `y ~ x + (1 | g) + (0 + x | g)`. "
                             "It is checked by a safe parser; nothing is evaluated as Python.",
                             **NOTE, margin=(0, 5)),
            self._alert("formula"),
            pn.panel(pn.bind(self._replaced_note, st.param.replaced_formula), sizing_mode="stretch_width"),
            title="4 · Formula", sizing_mode="stretch_width", collapsible=True)

        self.sidebar = pn.Column(data_card, model_card, fit_card, formula_card, sizing_mode="stretch_width")

        # ---- main: status and diagnostics
        status = pn.pane.Markdown(pn.bind(self._status_text, fit.param.message, fit.param.status),
                                  **STATUS, sizing_mode="stretch_width", margin=(0, 10))
        diag = pn.pane.Alert(pn.bind(self._diag_text, fit.param.warnings, fit.param.status), alert_type="warning",
                             visible=pn.bind(bool, fit.param.warnings), sizing_mode="stretch_width",
                             css_classes=["alert-diagnostics"])
        self.header = pn.Column(status, pn.Row(progress_bar()), self._alert("fit"), diag,
                                sizing_mode="stretch_width")

        truth = st.param.truth
        outcome = fit.param.outcome
        # Live plots: a refit that changes numbers only updates the Bokeh data in place.
        self.forest_pane = LivePlot(self._forest, outcome, view.param.exp_scale, view.param.include_intercept, truth,
                                    sizing_mode="stretch_width", min_height=380)
        self.density_pane = LivePlot(self._density, outcome, truth, sizing_mode="stretch_width", min_height=380)
        self.caterpillar_pane = LivePlot(self._caterpillar, outcome, view.param.re_term, view.param.re_search,
                                         view.param.re_top_k, truth, sizing_mode="stretch_width", min_height=400)

        # plots of a result that is not the current model's (the data changed and the new fit runs, the
        # result is out of date, or the last fit failed) are dimmed until the current model's arrives
        # (styled through a wrapping column: styles set on a HoloViews pane itself fail to sync in Panel 1.9)
        self._plot_boxes = tuple(pn.Column(p, sizing_mode="stretch_width", margin=0)
                                 for p in (self.forest_pane, self.density_pane, self.caterpillar_pane))
        forest_box, density_box, caterpillar_box = self._plot_boxes
        fit.param.watch(self._dim_plots, ["status", "outcome"])
        st.data.param.watch(self._dim_plots, ["version", "categorical"])
        self._dim_plots()

        fe_tab = pn.Column(
            pn.Row(pn.widgets.Checkbox.from_param(view.param.exp_scale, css_classes=["exp-toggle"]),
                   pn.widgets.Checkbox.from_param(view.param.include_intercept)),
            forest_box, sizing_mode="stretch_width", name="Fixed effects")
        vc_tab = pn.Column(density_box, pn.pane.Markdown(
            "Densities of each random-effect **standard deviation**; the diamond is the posterior median and the bar "
            "the 95 % interval.", **NOTE), sizing_mode="stretch_width", name="Variance components")
        re_tab = pn.Column(
            pn.FlexBox(pn.panel(pn.bind(self._re_term_widget, fit.param.outcome)),
                       pn.widgets.TextInput.from_param(view.param.re_search, placeholder="level name contains...",
                                                       width=220),
                       _bounded_input(view, "re_top_k", width=220),
                       flex_wrap="wrap", sizing_mode="stretch_width"),  # (narrow screens: one above the other)
            caterpillar_box, sizing_mode="stretch_width", name="Random effects")

        # ---- summary and export
        table_kw = dict(show_index=False, sizing_mode="stretch_width", disabled=True, theme="bootstrap5",
                        layout="fit_data_stretch")
        # the results' tables: every column fitted to the width, headers wrapped (fitted to their data, the last
        # columns were cut off in a narrow window)
        fitted_kw = {**table_kw, "layout": "fit_columns", "titles": _TITLES,
                     "configuration": {"columnDefaults": {"headerWordWrap": True}},
                     # (an empty trailing column, 1 px in the header and 10 px in the rows, pushed the rows 9 px past
                     # the frame: the last column's edge was cut, behind a horizontal scroll bar)
                     "stylesheets": [(".tabulator-row .tabulator-cell:not([tabulator-field]):last-child, "
                                      ".tabulator-header .tabulator-col:not([tabulator-field]):last-child "
                                      "{ display: none; }")]}
        fe_table = pn.widgets.Tabulator(pn.bind(self._fe_df, outcome, view.param.exp_scale),
                                        formatters=self._fmt(), widths={"term": "24%"}, **fitted_kw)
        vc_table = pn.widgets.Tabulator(pn.bind(self._vc_df, outcome), formatters=self._fmt(),
                                        widths={"component": "20%"}, **fitted_kw)
        # (FlexBoxes: the buttons wrap onto a second line in a narrow window instead of being cut off)
        downloads = pn.FlexBox(
            pn.widgets.FileDownload(callback=self._csv_fe, filename="fixed_effects.csv", label="Fixed effects CSV",
                                    color="primary", variant="outline"),
            pn.widgets.FileDownload(callback=self._csv_vc, filename="variance_components.csv",
                                    label="Variance components CSV", color="primary", variant="outline"),
            pn.widgets.FileDownload(callback=self._csv_re, filename="random_effects.csv", label="Random effects CSV",
                                    color="primary", variant="outline"),
            sizing_mode="stretch_width")
        html_downloads = pn.FlexBox(
            pn.widgets.FileDownload(callback=lambda: self._html("forest"), filename="forest_plot.html",
                                    label="Forest plot HTML", variant="outline"),
            pn.widgets.FileDownload(callback=lambda: self._html("density"), filename="sd_densities.html",
                                    label="SD densities HTML", variant="outline"),
            pn.widgets.FileDownload(callback=lambda: self._html("caterpillar"), filename="caterpillar.html",
                                    label="Caterpillar HTML", variant="outline"),
            sizing_mode="stretch_width")
        code = pn.pane.Markdown(pn.bind(self._snippet_md, outcome), sizing_mode="stretch_width")
        # (shown only with models to list: an empty table and a "Clear the list" button were an odd empty state)
        listed = pn.bind(lambda models, oc: not self._models_df(models, oc).empty, fit.param.models, outcome)
        # (the columns fitted to the table's width, the formulas wrapped: long formulas pushed the probability
        # column out of sight)
        models_table = pn.widgets.Tabulator(pn.bind(self._models_df, fit.param.models, outcome),
                                            formatters={**self._fmt(), "model": {"type": "textarea"},
                                                        "priors": {"type": "textarea"}},
                                            widths={"model": "36%"}, css_classes=["model-comparison"], visible=listed,
                                            **fitted_kw)
        clear_models = pn.widgets.Button(label="Clear the list", variant="outline", width=160, visible=listed)
        clear_models.on_click(lambda _: self.state.clear_models())
        self.models_table = models_table
        models_box = pn.Column(
            pn.pane.Markdown("### Model comparison"),
            pn.pane.Markdown(pn.bind(self._models_note, fit.param.models, outcome), **NOTE, margin=(0, 10)),
            models_table, clear_models, sizing_mode="stretch_width")
        # (the tables and exports are the shown result's: dimmed with the plots, and said so, while that is not
        # the current model's; they exported the previous model without a word)
        previous = pn.pane.Alert(pn.bind(self._previous_note, fit.param.status, outcome, st.data.param.version),
                                 alert_type="warning", sizing_mode="stretch_width",
                                 visible=pn.bind(lambda *_: not self.plots_current(), fit.param.status, outcome,
                                                 st.data.param.version))
        results_box = pn.Column(
            pn.pane.Markdown("### Fixed effects"), fe_table, pn.pane.Markdown("### Variance components (SD scale)"),
            vc_table, sizing_mode="stretch_width", margin=0)
        # (shown once served: link_to)
        self._share_note = pn.pane.Markdown(pn.bind(self._share_text, st.data.param.demo, st.data.param.upload),
                                            **NOTE, visible=False)
        self._copy_link = pn.widgets.Button(label="Copy link to this model", variant="outline", visible=False,
                                            width=220)
        self._copy_link.js_on_click(code="navigator.clipboard && navigator.clipboard.writeText(window.location.href)")
        export_box = pn.Column(
            pn.pane.Markdown("### Export"), self._share_note, self._copy_link, downloads, html_downloads,
            pn.pane.Markdown("### Reproduce this fit in Python"), code,
            pn.widgets.FileDownload(callback=self._py, filename="refit_mglm.py", label="Download script",
                                    variant="outline"), sizing_mode="stretch_width", margin=0)
        self._plot_boxes += (results_box, export_box)
        summary_tab = pn.Column(previous, results_box, models_box, export_box, sizing_mode="stretch_width",
                                name="Summary & export")

        # ---- data preview
        self.data_download = pn.widgets.FileDownload(callback=self._csv_data, filename=self._data_file(),
                                                     label="Download the data (CSV)", color="primary", width=260)
        st.data.param.watch(lambda e: setattr(self.data_download, "filename", self._data_file()), "source")
        data_tab = pn.Column(
            pn.pane.Markdown(pn.bind(lambda n, df: f"### {n}: {_rows(0 if df is None else len(df))}",
                                     st.data.param.dataset, st.data.param.df)),
            pn.widgets.Tabulator(pn.bind(self._overview, st.data.param.df, st.data.param.categorical), **table_kw),
            pn.Row(self.data_download, pn.pane.Markdown(pn.bind(_preview_note, st.data.param.df), **NOTE,
                                                        sizing_mode="stretch_width"),
                sizing_mode="stretch_width"),
            # (the preview's headers render as HTML: the columns' names escaped, an uploaded header such as
            # <img onerror=...> is shown as text, never run)
            pn.widgets.Tabulator(pn.bind(lambda df: df.head(PREVIEW_ROWS).rename(columns=_escaped_name)
                                         if df is not None else pd.DataFrame(),
                                         st.data.param.df), pagination="local", page_size=12, **table_kw),
            sizing_mode="stretch_width", name="Data")

        # ---- comparison
        self.compare_button = pn.widgets.Button(label="Fit with every method", color="primary", width=260)
        self.compare_button.on_click(self._on_compare)
        comparison = fit.param.comparison
        compare_tab = pn.Column(
            pn.pane.Markdown(
                "Fit the current model with every method on the same data and overlay them. Integrated "
                "Laplace integrates the random effects out (the accurate one); Laplace (MAP) uses the curvature "
                "at the joint mode, which can collapse an SD to 0; VB is a mean-field Gaussian, too narrow."),
            pn.FlexBox(self.compare_button, pn.pane.Markdown(fit.param.compare_status, **NOTE, min_width=260,
                                                             styles={"flex": "1 1 260px"}),
                       sizing_mode="stretch_width", flex_wrap="wrap"),
            pn.pane.Alert("The model has changed since this comparison: **Fit with every method** compares the "
                          "model the sidebar shows.", alert_type="warning", sizing_mode="stretch_width",
                          # (pn.bind: the reactive expression of both stayed True after one update set them together)
                          visible=pn.bind(lambda current, comp: not current and bool(comp), fit.param.compare_current,
                                          comparison),
                          css_classes=["compare-stale"]),
            pn.Column(
                # (axes not linked to the other tabs' plots of the same dimensions: zooming here, or a MAP SD
                # collapsed to 0, would move the Fixed effects and Variance components plots too)
                pn.pane.HoloViews(pn.bind(self._compare_forest, comparison, view.param.exp_scale, truth),
                                  sizing_mode="stretch_width", min_height=340, linked_axes=False),
                pn.pane.HoloViews(pn.bind(self._compare_density, comparison, truth), sizing_mode="stretch_width",
                                  min_height=340, linked_axes=False),
                pn.widgets.Tabulator(pn.bind(self._compare_table, comparison),
                                     formatters={**self._fmt(), "notes": {"type": "textarea"}},
                                     widths={"notes": "30%"}, **fitted_kw),
                styles=pn.bind(lambda current: _BRIGHT if current else _DIMMED, fit.param.compare_current),
                sizing_mode="stretch_width"),
            sizing_mode="stretch_width", name="Compare methods")

        # ---- teaching
        self.sim_button = pn.widgets.Button(label="Draw data and fit", color="success", **w)
        self.sim_button.on_click(self._on_simulate)
        sim_controls = pn.Column(
            pn.pane.Markdown("### Teaching: simulate with known truth\nSet the true model, draw a data set, fit it, "
                             "and compare: the **red marks** on every plot are the truth."),
            pn.widgets.RadioButtonGroup.from_param(sim.param.family, color="success", variant="outline"),
            # (one format for the three: "1" beside "-0.50" read as two kinds of number)
            *(pn.widgets.FloatSlider.from_param(sim.param[name], format="0.00") for name in ("intercept", "slope", "sd")),
            _bounded_input(sim, "n_groups"),
            _bounded_input(sim, "group_size"), _bounded_input(sim, "seed"),
            self.sim_button, self._alert("teach"), width=320)
        # Lazy: the teaching plots are computed only while the Teaching tab is on screen, so a live refit
        # elsewhere does not pay for them.
        teach_plots = pn.Column(
            pn.param.ParamFunction(pn.bind(self._forest, outcome, view.param.exp_scale, view.param.include_intercept,
                                           truth, 260), lazy=True, sizing_mode="stretch_width", min_height=260),
            pn.param.ParamFunction(pn.bind(self._density, outcome, truth, 260), lazy=True,
                                   sizing_mode="stretch_width", min_height=260),
            pn.param.ParamFunction(pn.bind(self._caterpillar, outcome, view.param.re_term, view.param.re_search,
                                           view.param.re_top_k, truth, 260), lazy=True,
                                   sizing_mode="stretch_width", min_height=260),
            sizing_mode="stretch_width", styles={"flex": "1 1 480px"}, min_width=300)
        self._plot_boxes += (teach_plots,)  # (dimmed with the others while they show another result)
        self._dim_plots()
        # (a FlexBox: on a narrow screen or a projector the plots go below the controls, at full width; beside
        # them they were squeezed to 70 px at 800 px)
        teach_tab = pn.FlexBox(sim_controls, teach_plots, flex_wrap="wrap", align_items="flex-start",
                               sizing_mode="stretch_width", name="Teaching")

        self.tabs = pn.Tabs(fe_tab, vc_tab, re_tab, summary_tab, data_tab, compare_tab, teach_tab,
                            sizing_mode="stretch_width", dynamic=True, stylesheets=[
                                ".bk-headers-wrapper, .bk-headers { flex-wrap: wrap; }",  # narrow screens
                                f".bk-tab:focus-visible {{ outline: 2px solid {ACCENT}; outline-offset: -2px; }}"])
        # the page's address, kept the link to the model shown once served (_write_link): replaced in the browser's
        # history, not pushed
        self._address = pn.widgets.TextInput(visible=False, name="address")
        # the browser tab's store of an uploaded file (link_to): signals to it, and its answer
        self._tab_store = pn.widgets.TextInput(visible=False, name="tab store")
        self._stored = pn.widgets.TextInput(visible=False, name="stored file")
        # (set before the page is made: callbacks added to a rendered widget do not reach its browser model)
        self._tab_store.jscallback(value=_STORE_JS, args={"sink": self._stored})
        self._address.jscallback(value="if (source.value) { window.history.replaceState(null, '', source.value) }")
        self.main = pn.Column(self.header, self.tabs, pn.pane.HTML(TAB_KEYS, width=0, height=0, margin=0),
                              self._address, self._tab_store, self._stored,
                              sizing_mode="stretch_width")

    def plots_current(self) -> bool:
        """Whether the plots show the current model's result: not while the result is out of date
        (``stale``) or a fit failed, nor while they show other data (newly loaded data not fitted yet, or
        a fit of the previous data finishing after the load); a live refit of the same data keeps them
        bright (they update in place a moment later)."""
        fit, st = self.state.fit, self.state
        if fit.outcome is None:
            return True
        if fit.status in ("stale", "error"):
            return False
        return fit.outcome.request.data_key == st._data_key()

    def _dim_plots(self, *_):
        style = _BRIGHT if self.plots_current() else _DIMMED
        for box in self._plot_boxes:
            box.styles = {**box.styles, **style}  # (a box's own styles kept: the Teaching plots' flex basis)

    def _column_widget(self, cls, obj, pname: str, **kw):
        """A widget for a parameter whose options (data columns) change with the data.

        ``from_param`` would push every change of the parameter's ``objects`` to the live widget, and a Select
        whose value is not (yet) among its new options resets itself to the first option and writes that back.
        These widgets are instead created with the current options and value whenever the columns change; they
        write user changes to the parameter and show its value when the state changes it (the trials reset by
        the Poisson family) while that value is among their options. The newest widget of a parameter is the
        one kept in step (the watcher of the one it replaced is removed).
        """
        p = obj.param[pname]
        objects = list(p.objects) if not isinstance(p.objects, dict) else p.objects
        if cls is pn.widgets.MultiChoice:  # its chips and menu render labels as HTML: a column's name is text
            objects = _text_labels(objects)
        widget = cls(label=kw.pop("label", p.label), options=objects, value=getattr(obj, pname), **kw)
        offered = list(objects.values()) if isinstance(objects, dict) else objects

        def _write(event):
            if event.new != getattr(obj, pname):
                obj.param.update({pname: list(event.new) if isinstance(event.new, list) else event.new})

        def _read(event):
            new = list(event.new) if isinstance(event.new, (list, tuple)) else event.new
            shown = all(v in offered for v in new) if isinstance(new, list) else new in offered
            if shown and widget.value != new:
                widget.value = new

        widget.param.watch(_write, "value")
        key = (id(obj), pname)
        if key in self._syncs:
            old_obj, old_watcher = self._syncs[key]
            old_obj.param.unwatch(old_watcher)
        self._syncs[key] = (obj, obj.param.watch(_read, pname))
        return widget

    def _categorical_widget(self, _version):
        if not self.state.data.param.categorical.objects:  # no column reads as numbers: nothing to choose
            return pn.pane.Markdown("Every column is text, so every column is categorical.",
                                    **NOTE, sizing_mode="stretch_width")
        return self._column_widget(pn.widgets.MultiChoice, self.state.data, "categorical",
                                   label="Treat as categorical", sizing_mode="stretch_width")

    def _response_widget(self, _version):
        return self._column_widget(pn.widgets.Select, self.state.spec, "response", label="Response",
                                   sizing_mode="stretch_width")

    def _model_widgets(self, _version):
        spec, w, cw = self.state.spec, dict(sizing_mode="stretch_width"), self._column_widget
        self._trials_widget = cw(pn.widgets.Select, spec, "trials", label="Trials (binomial counts out of n)",
                                 disabled=spec.family == "poisson", **w)
        return pn.Column(
            self._trials_widget,
            self._alerts["response"],
            cw(pn.widgets.MultiChoice, spec, "fixed_numeric", **w),
            cw(pn.widgets.MultiChoice, spec, "fixed_factors", **w),
            self._alerts["fixed"],
            cw(pn.widgets.MultiChoice, spec, "groups", label="Grouping factors (random intercepts)", **w),
            cw(pn.widgets.MultiChoice, spec, "slopes", label="Random slopes (numeric)", **w),
            self._alerts["groups"],
            cw(pn.widgets.Select, spec, "offset", label="Offset (added to the linear predictor)",
               description="For rates per unit of exposure (time at risk, area, population), choose the "
                           "logarithm of the exposure, log(column). A column chosen as it is enters unchanged.",
               **w),
            sizing_mode="stretch_width", margin=0)

    def _replaced_note(self, replaced: str):
        """Under the formula: the typed formula a column choice replaced, with a button that restores it."""
        if not replaced:
            return pn.Column(visible=False)
        button = pn.widgets.Button(label="Restore my typed formula", button_type="default", sizing_mode="stretch_width")
        button.on_click(lambda _: self.state.restore_formula())
        return pn.Column(pn.pane.Alert(f"Your typed formula **{literal_markdown(replaced)}** was replaced by the "
                                       "sidebar's column choices.", alert_type="warning", margin=(0, 5)),
                         button, sizing_mode="stretch_width", margin=0)

    def _re_term_widget(self, _outcome):
        return self._column_widget(pn.widgets.Select, self.state.view, "re_term", width=220)

    # ------------------------------------------------------------------ callbacks
    def _on_demo(self, event):
        if event.new and event.new != OWN_DATA:
            try:
                self.state.load_demo(event.new)
            except Exception as exc:
                self.state._set_error("data", f"Could not load {event.new}: {exc}")

    def _on_refused(self, event):
        """A file that did not arrive: refused by the page as over the upload limit, or broken off."""
        if event.new is None:
            return
        name, detail = event.new
        if event.name == "refused":
            self.state._set_error("data", too_large_message(name, detail))
        else:
            self.state._set_error("data", f"The upload of {name!r} failed: {detail}. Choose the file again.")

    def _on_upload(self, event):
        if event.new is None:
            return
        ok = self.state.load_upload(self.file_input.filename or "upload.csv", event.new)
        if ok:
            self.demo_select.value = OWN_DATA
        # forget the file, so that choosing the same file again (after a demo, or after fixing it on disk)
        # is a new upload: an unchanged value fires no event and the browser's input ignores the same file
        self.file_input.value = None
        self.file_input.clear()

    async def _on_fit_click(self, event):
        await self.state.fit_async()

    async def _on_compare(self, event):
        await self.state.compare_async()

    async def _on_simulate(self, event):
        await self.state.simulate_async(fit=True)
        self.demo_select.value = OWN_DATA

    # ------------------------------------------------------------------ bound renderers
    def _data_info(self, df, name):
        if df is None:
            return "No data loaded."
        return f"**{name}**: {_rows(len(df))}, {df.shape[1]} columns." + (
            f" {DEMOS[name].description}" if name in DEMOS else "")

    def _mode_note(self, status, auto, *_):
        if self.state.errors:  # (an invalid model has no size to speak of)
            return "Fix the model first (see the messages in the sidebar)."
        size = problem_size(self.state.spec, self.state.data)
        if self.state.is_live():
            return (f"Model size {size:,} (rows × random-effect terms, plus the dense block of several factors): "
                    "refits live as you change the model.")
        if not auto:
            return f"Model size {size:,}: press **Fit model** after changes."
        slow = self.state._slow.get(self.state._slow_key())
        if slow is not None:  # (this model is slow; another is judged by its own fits: it may refit live)
            return (f"This model refits on **Fit model** only: its last fit took {slow:.1f} s (live refits are for "
                    f"fits under {self.state.live_seconds:g} s).")
        return f"Press **Fit model** after changes: {self.state._not_live_reason()}."

    def _status_text(self, message, status):
        label = {"done": "FITTED", "fitting": "FITTING", "waiting": "WAITING", "error": "ERROR",
                 "stale": "OUT OF DATE"}.get(status, "")
        color = {"done": "#059669", "error": "#dc2626", "stale": "#d97706"}.get(status, "#2563eb")
        oc = self.state.fit.outcome
        if status == "done" and oc is not None and not adapter.converged(oc.result):
            label, color = "NOT CONVERGED", "#d97706"  # (not the green of a good fit)
        badge = (f'<span style="background:{color};color:white;border-radius:4px;padding:2px 8px;'
                 f'font-size:0.8em;font-weight:600;margin-right:8px">{label}</span>') if label else ""
        return f"{badge}{literal_markdown(message)}" if message else ""

    @staticmethod
    def _diag_text(warnings, status=None):
        if not warnings:
            return ""
        # (after a failed fit or a change not fitted yet, the notes are the shown result's, not the model's)
        title = ("**Diagnostics of the previous fit** (the one still shown)" if status in ("error", "stale")
                 else "**Diagnostics**")
        return title + "\n\n" + "\n".join(f"- {literal_markdown(w)}" for w in warnings)

    def _previous_note(self, *_):
        """Which model the Summary tab's tables and exports are of, while that is not the current one."""
        oc = self.state.fit.outcome
        if oc is None or self.plots_current():
            return ""
        return (f"These tables and exports are of the last fitted model, **{literal_markdown(oc.request.formula)}** "
                f"({oc.request.family}, {adapter.method_label(oc.request.method)}), not of the current one: fit the "
                "current model (or mend what the sidebar points out) to export it.")

    def _truth(self, truth, key):
        """The true values of a simulation, only for a result of the simulated data (while its fit runs,
        the plots still show the previous data's result: no truth on it)."""
        oc = self.state.fit.outcome
        if oc is None or oc.request.data_key != self.state._data_key():
            return None
        return (truth or {}).get(key) or None

    def _forest(self, outcome, exp_scale, include_intercept, truth, height=360):
        if outcome is None:
            return plots.empty_plot()
        return self._safe(plots.forest_plot, outcome.result, exp_scale=exp_scale, truth=self._truth(truth, "fe"),
                          family=outcome.request.family, include_intercept=include_intercept, height=height)

    def _density(self, outcome, truth, height=360):
        if outcome is None:
            return plots.empty_plot()
        return self._safe(plots.sd_density_plot, outcome.result, truth=self._truth(truth, "sd"), height=height)

    def _caterpillar(self, outcome, term, search, top_k, truth, height=380):
        if outcome is None:
            return plots.empty_plot()
        terms = adapter.re_terms(outcome.result)
        term = term if term in terms else (terms[0] if terms else None)
        if term is None:
            return plots.empty_plot("No random effects")
        return self._safe(plots.caterpillar_plot, outcome.result, term, search=search, top_k=top_k,
                          truth=self._truth(truth, "re"), height=height)

    def _compare_forest(self, comparison, exp_scale, truth):
        if not comparison:
            return plots.empty_plot("Press the button to fit every method")
        fam = next(iter(comparison.values())).request.family
        return self._safe(plots.forest_plot, {m: oc.result for m, oc in comparison.items()}, exp_scale=exp_scale,
                          truth=self._truth(truth, "fe"), family=fam, height=300)

    def _compare_density(self, comparison, truth):
        if not comparison:
            return plots.empty_plot("")
        return self._safe(plots.sd_density_plot, {m: oc.result for m, oc in comparison.items()},
                          truth=self._truth(truth, "sd"), height=300)

    @staticmethod
    def _compare_table(comparison):
        if not comparison:
            return pd.DataFrame()
        frames = []
        # each method's diagnostics as the main page words them (VB's narrow SDs, an SD near 0), less those
        # every method has (the data's: rows left out, the response's levels), which the main page shows
        notes = {m: diagnostics(oc, 0, oc.request.family) for m, oc in comparison.items()}
        common = set.intersection(*map(set, notes.values())) if len(notes) > 1 else set()
        for m, oc in comparison.items():
            fe = plots.fe_summary(oc.result)[["term", "mean", "sd"]].rename(
                columns={"term": "parameter", "mean": "estimate"})
            mode = adapter.result_method(oc.result) == "map"  # (the joint mode: modes, the SD's exp(mode))
            fe["estimate is"] = "posterior mode" if mode else "posterior mean"
            vc = plots.vcp_summary(oc.result)[["component", "sd_estimate"]].rename(
                columns={"component": "parameter", "sd_estimate": "estimate"})
            vc["parameter"] = "SD(" + vc["parameter"] + ")"
            # (of the SD, as the SD plots mark it; it was headed "mean")
            vc["estimate is"] = "joint posterior mode" if mode else "posterior median"
            df = pd.concat([fe, vc], ignore_index=True)
            df["method"] = plots.METHOD_NAMES.get(m, m)
            df["seconds"] = oc.seconds
            # a collapsed SD or a failed Hessian is said next to its numbers
            df["notes"] = " ".join(n for n in notes[m] if n not in common)
            frames.append(df)
        return pd.concat(frames, ignore_index=True)

    def _comparison(self, models, outcome):
        """:func:`app.state.model_comparison`, computed once for the table, its visibility and its note (the last
        inputs and result kept, with the inputs themselves, so that their ids name them)."""
        key = (tuple(map(id, models)), id(outcome))
        kept = self._kept_comparison
        if kept is None or kept[0] != key:
            kept = self._kept_comparison = (key, (list(models), outcome), model_comparison(models, outcome))
        return kept[2]

    def _models_df(self, models, outcome):
        df, _ = self._comparison(models, outcome)
        if df.empty:
            return df
        return df.rename(columns={"log_marginal_likelihood": "log p(y)", "log_bayes_factor": "log BF vs best",
                                  "posterior_probability": "probability"})

    def _models_note(self, models, outcome):
        if outcome is None:
            return ""
        df, others = self._comparison(models, outcome)
        if df.empty:  # (a method without p(y))
            return ("Models are compared by their marginal likelihood p(y), which the **Integrated Laplace** method "
                    "computes: fit with it to list this model here.")
        text = ("Every model fitted with Integrated Laplace to these outcomes (the same response values, row by row), "
                "best first. **log BF vs best** is the log Bayes factor against the best model: below -1 (a factor "
                "of 2.7) the data favour the best, below -3 (20) strongly. **probability** assumes every model "
                "listed equally likely beforehand. Both depend on the priors: a wider fe_p costs a model more per "
                "fixed effect.")
        if len(df) == 1:
            text += " Change the model (a term more or less) to compare it with this one."
        if others:
            text += (f" {others} other model(s) fitted to other rows, another response or another family are not "
                     "listed: their p(y) is of other data.")
        return text

    @staticmethod
    def _fmt():
        from bokeh.models.widgets.tables import NumberFormatter

        f = NumberFormatter(format="0.0000")
        return {c: f for c in ["mean", "sd", "lower_95", "upper_95", "exp_mean", "exp_lower_95", "exp_upper_95",
                               "sd_estimate", "sd_lower_95", "sd_upper_95", "log_sd_mean", "log_sd_sd", "log p(y)",
                               "log BF vs best", "probability", "estimate"]} | {"seconds": NumberFormatter(format="0.000")}

    def _fe_df(self, outcome, exp_scale):
        return pd.DataFrame() if outcome is None else plots.fe_summary(outcome.result, exp_scale=exp_scale)

    def _vc_df(self, outcome):
        return pd.DataFrame() if outcome is None else plots.vcp_summary(outcome.result)

    def _overview(self, df, categorical):
        return pd.DataFrame() if df is None else column_overview(df, list(categorical), self.state.data.numeric_columns)

    def _snippet(self, outcome) -> str:
        if outcome is None:
            return "# no model fitted yet\n"
        data = self.state.data
        return adapter.snippet(outcome.request, data.source or "data.csv", data.reader or None)

    def _snippet_md(self, outcome):
        return f"```python\n{self._snippet(outcome)}```"

    # ------------------------------------------------------------------ exports
    def _csv(self, fn) -> io.StringIO:
        res = self.state.fit.result
        buf = io.StringIO()
        if res is not None:
            fn(res).to_csv(buf, index=False)
        buf.seek(0)
        return buf

    def _csv_fe(self):
        return self._csv(lambda r: plots.fe_summary(r, exp_scale=True))

    def _csv_vc(self):
        return self._csv(plots.vcp_summary)

    def _csv_re(self):
        return self._csv(plots.re_summary)

    def _data_file(self) -> str:
        """The data's file name for the download: the source's, as CSV (an upload keeps its own reader)."""
        from pathlib import Path

        src = Path(self.state.data.source or "data.csv").name
        return src if src.lower().endswith(".csv") else f"{Path(src).stem}.csv"

    def _csv_data(self):
        df = self.state.data.df
        return io.StringIO(df.to_csv(index=False) if df is not None else "")

    def _py(self):
        return io.StringIO(self._snippet(self.state.fit.outcome))

    def _html(self, which: str) -> io.StringIO:
        st, oc, view = self.state, self.state.fit.outcome, self.state.view
        if which == "forest":
            el = self._forest(oc, view.exp_scale, view.include_intercept, st.truth)
        elif which == "density":
            el = self._density(oc, st.truth)
        else:
            el = self._caterpillar(oc, view.re_term, view.re_search, view.re_top_k, st.truth)
        return io.StringIO(plots.to_html(el, title=f"mglm {which}"))

    # ------------------------------------------------------------------ display
    def __panel__(self):
        return pn.Row(pn.Column(self.sidebar, width=380), self.main, sizing_mode="stretch_width",
                      stylesheets=[CSS])

    def template(self) -> pn.template.BootstrapTemplate:
        """A full-page layout for ``panel serve`` (BootstrapTemplate loads nothing from the internet)."""
        tmpl = pn.template.BootstrapTemplate(
            title="mglm · Bayesian GLMM dashboard", sidebar_width=390, header_background=ACCENT,
            sidebar=[pn.pane.Markdown(INTRO, **NOTE), self.sidebar], main=[self.main],
            raw_css=[PAGE_CSS])
        return tmpl

    def servable(self, title=None, location=True, area="main", target=None):
        """The full page (:meth:`template`) made servable; with ``location``, in a served session, its URL is kept
        the link to the model shown (:meth:`link_to`)."""
        page = self.template().servable(title=title, location=location, area=area, target=target)
        doc = pn.state.curdoc
        if location and doc is not None and doc.session_context is not None and pn.state.location is not None:
            self.link_to(pn.state.location)
        return page
