"""Pure plotting functions: fit result(s) -> HoloViews element (Bokeh backend).

Every function takes results as the library returns them (through ``app.adapter``)
plus display options, and returns a new element; nothing here knows about widgets
or sessions, so each is tested without a browser.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import holoviews as hv

from app import adapter

hv.extension("bokeh", logo=False)

#: Consistent colours across the dashboard.
COLORS = {"map": "#2563eb", "vb": "#ea580c", "laplace": "#059669", "truth": "#dc2626", "ref": "#6b7280",
          "accent": "#2563eb", "band": "#bfdbfe"}
PALETTE = ["#2563eb", "#ea580c", "#059669", "#9333ea", "#d97706", "#0891b2", "#db2777"]
METHOD_NAMES = {"map": "Laplace (MAP)", "vb": "VB", "laplace": "Integrated Laplace"}
#: Plots lower than this (the Teaching tab's, beside its controls) are compact: shorter titles, no key where the
#: tab's text says what the marks are.
_COMPACT = 300


# (the toolbar at the right, HoloViews' place for it: above, it took the title's row, which a narrow window cut
# off; below a compact plot it sat over the next plot's title, as if it were that plot's)
_BASE = dict(responsive=True, toolbar="right", show_grid=True, fontscale=1.05,
             active_tools=["pan"])  # (no wheel zoom until chosen: the wheel scrolls the page past the plots)


def _as_dict(results) -> dict:
    """Accept one result or {label: result}; return {label: result}."""
    if isinstance(results, dict):
        return results
    return {adapter.result_method(results) or "fit": results}


def _color(label: str, i: int) -> str:
    return COLORS.get(label, PALETTE[i % len(PALETTE)])


#: Axis labels and legend entries longer than this are shortened in the middle (the full text is in the hover
#: and the tables): one 200-character column name took a forest plot's whole width for its tick label.
LABEL_MAX = 32
#: Line styles of the methods overlaid on one plot of SD densities (colours tell the components apart).
_DASHES = ("solid", "dashed", "dotted", "dashdot")


def short_label(text, width: int = LABEL_MAX) -> str:
    """``text`` with its middle replaced by an ellipsis where it is longer than ``width`` characters."""
    text = str(text)
    if len(text) <= width:
        return text
    head = (width - 1) // 2 + (width - 1) % 2
    return text[:head] + "\u2026" + text[len(text) - (width - 1 - head):]


def _short_ticks(ticks) -> list[tuple]:
    """``(position, label)`` ticks with their labels shortened, kept distinct: labels that shorten alike (long
    names that differ only in the middle) are numbered among themselves, 1, 2, ..."""
    labels = [short_label(t) for _, t in ticks]
    shared = {lab for lab in labels if labels.count(lab) > 1}
    seen: dict[str, int] = {}
    out = []
    for (pos, _), lab in zip(ticks, labels):
        if lab in shared:
            seen[lab] = seen.get(lab, 0) + 1
            lab = f"{lab} ({seen[lab]})"
        out.append((pos, lab))
    return out


def empty_plot(message: str = "No result yet") -> hv.Element:
    """A message in place of a plot, wrapped into lines that fit a narrow plot (one long line was cut
    off at both sides)."""
    import textwrap

    text = "\n".join(textwrap.wrap(message, 48)) or message
    # At the middle of the unit square, on axes of its own: Panel links the axes of plots in one layout
    # that share dimension names, and on hv.Text's default x and y the message took the range of a forest
    # plot elsewhere on the page (the Compare tab's placeholder sat near its right edge).
    return hv.Text(0.5, 0.5, text, kdims=["message_x", "message_y"]).opts(
        xaxis=None, yaxis=None, toolbar=None, height=300, responsive=True, xlim=(0, 1), ylim=(0, 1),
        show_frame=False, text_align="center", text_baseline="middle", text_font_size="11pt")


# --------------------------------------------------------------------------- forest
def forest_data(res, exp_scale: bool = False, include_intercept: bool = True) -> pd.DataFrame:
    """Fixed-effect table for plotting: term, mean, sd, lower, upper (exponentiated if asked)."""
    ft = adapter.fe_table(res)
    df = pd.DataFrame({"term": [str(i) for i in ft.index], "mean": ft["mean"].to_numpy(float),
                       "sd": ft["sd"].to_numpy(float), "lower": ft["lower"].to_numpy(float),
                       "upper": ft["upper"].to_numpy(float)})
    if not include_intercept:
        df = df[~df.term.map(adapter.is_intercept)]
    if exp_scale:
        for c in ("mean", "lower", "upper"):
            df[c] = np.exp(df[c])
    return df.reset_index(drop=True)


def log_ticks(lo: float, hi: float, most: int = 9) -> list[tuple[float, str]]:
    """Ticks ``(value, label)`` for a log axis spanning ``lo`` to ``hi`` (both > 0): the 1-2-5 series
    (0.1, 0.2, 0.5, 1, 2, 5, ...), finer over a narrow range (1, 1.5, 2, 3, 5, 7), evenly spaced round
    values over a very narrow one (0.95 to 1.05), only the powers of ten over a wide one; at most
    ``most``. Bokeh's log axis alone labels only powers of ten: one tick (at 1) for odds ratios
    between 0.3 and 3."""
    lo, hi = float(min(lo, hi)), float(max(lo, hi))
    if not (np.isfinite(lo) and np.isfinite(hi) and lo > 0):
        return []
    decades = range(int(np.floor(np.log10(lo))) - 1, int(np.ceil(np.log10(hi))) + 1)
    picked = []
    for mantissas in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
        picked = [m * 10.0**e for e in decades for m in mantissas if lo <= m * 10.0**e <= hi]
        if len(picked) >= 3:
            break
    if len(picked) > most:
        powers = [e for e in decades if lo <= 10.0**e <= hi]
        step = int(np.ceil(len(powers) / most))
        picked = [10.0**e for e in powers if e % step == 0]  # 10^0 = 1 (the reference) stays
    elif len(picked) < 3 and hi > lo:
        # a narrow range, where a log axis looks linear: round values 1, 2 or 5 x 10^e apart
        raw = (hi - lo) / 4.0
        base = 10.0 ** np.floor(np.log10(raw))
        step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
        picked = list(np.arange(np.ceil(lo / step) * step, hi + step * 1e-9, step))
    out = {}
    for v in picked:
        v = float(f"{v:.12g}")  # round to significant digits (0.30000000000000004 -> 0.3; 1e-15 stays)
        out.setdefault(f"{v:.6g}", v)  # one tick per label
    return [(v, label) for label, v in out.items()]


def forest_plot(results, exp_scale: bool = False, truth: dict | None = None, family: str = "binomial",
                include_intercept: bool = True, height: int = 360) -> hv.Overlay:
    """Fixed effects: posterior means with 95 % intervals, a reference line at 0 (or 1 on the exp scale).

    ``results`` is one result or {label: result} (side-by-side methods, drawn with a vertical offset).
    ``truth`` maps coefficient names to true values (simulated data); drawn as red crosses.
    """
    results = _as_dict(results)
    ratio = "odds ratio" if family == "binomial" else "rate ratio"
    base = "odds" if family == "binomial" else "rate"
    xlabel = ((f"{ratio} (exp scale" + (f"; the intercept: baseline {base})" if include_intercept else ")"))
              if exp_scale else ("log-odds" if family == "binomial" else "log-rate"))
    first = forest_data(next(iter(results.values())), exp_scale, include_intercept)
    terms = list(first.term)
    if not terms:  # no fixed effects (y ~ 0 + ...), or only the intercept and it is hidden
        return empty_plot("No fixed effects to show" + ("" if include_intercept else " (the intercept is hidden)"))
    ypos = {t: len(terms) - 1 - i for i, t in enumerate(terms)}
    n = len(results)
    ref = 1.0 if exp_scale else 0.0
    layers = [hv.VLine(ref).opts(color=COLORS["ref"], line_dash="dashed", line_width=1.5),
              # an invisible point on the reference line keeps it inside the x range (a VLine does not count)
              hv.Scatter([(ref, (len(terms) - 1) / 2)], group="Reference").opts(alpha=0, size=1, tools=[])]
    for i, (label, res) in enumerate(results.items()):
        df = forest_data(res, exp_scale, include_intercept)
        df = df[df.term.isin(ypos)]
        offset = (i - (n - 1) / 2) * 0.22 if n > 1 else 0.0
        df["y"] = [ypos[t] + offset for t in df.term]
        df["method"] = METHOD_NAMES.get(label, label)
        color = _color(label, i)
        hover = ([("term", "@term"), ("method", "@method"), ("exp(mean)", "@mean{0.0000}"),
                  ("sd (log scale)", "@sd{0.0000}"), ("95% interval (exp)", "@lower{0.0000} to @upper{0.0000}")]
                 if exp_scale else
                 [("term", "@term"), ("method", "@method"), ("mean", "@mean{0.0000}"), ("sd", "@sd{0.0000}"),
                  ("95% interval", "@lower{0.0000} to @upper{0.0000}")])
        seg = hv.Segments(df, ["lower", "y", "upper", "y"], ["term", "mean", "sd", "method"]).opts(
            color=color, line_width=3, alpha=0.8, tools=["hover"], hover_tooltips=hover)
        pts = hv.Scatter(df, "mean", ["y", "term", "sd", "lower", "upper", "method"],
                         label=METHOD_NAMES.get(label, label) if n > 1 else "").opts(
            color=color, size=10, line_color="white", tools=["hover"], hover_tooltips=hover)
        layers += [seg, pts]
    if truth:
        tdf = pd.DataFrame([(t, float(v)) for t, v in truth.items() if t in ypos], columns=["term", "truth"])
        if len(tdf):
            if exp_scale:
                tdf["truth"] = np.exp(tdf["truth"])
            tdf["y"] = [ypos[t] for t in tdf.term]
            layers.append(hv.Scatter(tdf, "truth", ["y", "term"], label="truth").opts(
                color=COLORS["truth"], marker="x", size=14, line_width=3, tools=["hover"],
                hover_tooltips=[("term", "@term"), ("true value", "@truth{0.0000}")]))
    yticks = _short_ticks([(ypos[t], t) for t in terms])
    extra = {}
    if exp_scale:
        values = [ref] + [v for res in results.values() for col in ("lower", "upper")
                          for v in forest_data(res, True, include_intercept)[col]]
        if truth:
            values += [float(np.exp(v)) for t, v in truth.items() if t in ypos]
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values) & (values > 0)]
        ticks = log_ticks(values.min(), values.max()) if values.size else []
        if ticks:
            extra["xticks"] = ticks
    # what the points are: the joint mode's (MAP) estimates are posterior modes, and without a Hessian (a
    # failed MAP fit) there are no intervals
    estimate = "mode" if {adapter.result_method(r) for r in results.values()} == {"map"} else "mean"
    no_sd = all(not np.isfinite(forest_data(r).sd).any() for r in results.values())
    interval = "(no intervals: see the diagnostics)" if no_sd else "and 95 % interval"
    title = ((f"Fixed effects: exp(posterior {estimate}) {interval}" if exp_scale else
              f"Fixed effects: posterior {estimate} {interval}") if height >= _COMPACT
             else f"Fixed effects: exp({estimate}), 95 % interval" if exp_scale
             else f"Fixed effects: {estimate}, 95 % interval")
    return hv.Overlay(layers).opts(
        hv.opts.Overlay(title=title, xlabel=xlabel, ylabel="",
                        yticks=yticks, ylim=(-0.7, len(terms) - 0.3), logx=exp_scale, legend_position="bottom",
                        min_height=max(220, height), **extra, **_BASE))


# --------------------------------------------------------------------------- variance components
def sd_density_data(res, name: str, n: int = 200) -> pd.DataFrame:
    """The SD's posterior density for plotting; no rows where the fit has none (a failed mode's NaN SDs:
    the fit's warnings say why)."""
    try:
        d = adapter.vcp_density(res, name, n=n)
    except adapter.MglmError:
        return pd.DataFrame({"sd": np.zeros(0), "density": np.zeros(0), "component": name})
    return pd.DataFrame({"sd": d["sd"].to_numpy(float), "density": d["density"].to_numpy(float),
                         "component": name})


def sd_summary(res) -> pd.DataFrame:
    """Per component: SD point estimate (posterior median) and 95 % interval on the SD scale."""
    vt = adapter.vcp_table(res)
    if {"sd_median", "sd_lower", "sd_upper"} <= set(vt.columns):
        est, lo, hi = vt["sd_median"], vt["sd_lower"], vt["sd_upper"]
    else:
        est, lo, hi = np.exp(vt["mean"]), np.exp(vt["lower"]), np.exp(vt["upper"])
    return pd.DataFrame({"component": [str(i) for i in vt.index], "sd_estimate": np.asarray(est, float),
                         "sd_lower": np.asarray(lo, float), "sd_upper": np.asarray(hi, float)})


def _key(curves) -> tuple[list, int]:
    """``(curves, columns)``: the legend of several methods' SD densities, below the plot (a legend beside it narrowed the frames of
    the plots above, which Bokeh aligns): the components' colours on its first row, the methods' line styles on
    the second (not every pair: 3 x 3 entries). Legend-only curves of no length; Bokeh fills a legend of
    ``ncols`` columns column by column, so the entries alternate, and a row shorter than the other is padded
    with blank entries (distinct labels of no-break spaces: equal labels would merge)."""
    x0 = float(curves[0][3]["sd_estimate"])
    components = {}
    for _, c, _, _, _, _, name in curves:
        components.setdefault(short_label(name), (c, "solid", 1.0))
    methods = {}
    for d, _, _, _, _, dash, _ in curves:  # (the methods that drew a density)
        methods.setdefault(str(d["method"].iloc[0]), (COLORS["ref"], dash, 1.0))
    rows = [list(components.items()), list(methods.items())]
    ncols = max(map(len, rows))
    for r, row in enumerate(rows):
        row += [("\u00a0" * (2 * i + r + 1), ("#ffffff", "solid", 0.0)) for i in range(ncols - len(row))]
    entries = [row[i] for i in range(ncols) for row in rows]
    return [hv.Curve([(x0, 0.0), (x0, 0.0)], label=lab).opts(color=c, line_dash=dash, line_width=2.5, alpha=a)
            for lab, (c, dash, a) in entries], ncols


def _body_peak(d: pd.DataFrame, summary) -> float:
    """The height of an SD density's body: its highest inner local maximum, or (a curve that only falls, a long
    tail's 1/SD) its value at the median; 0 without rows."""
    y = d["density"].to_numpy(float)
    if y.size == 0 or not np.isfinite(y).any():
        return 0.0
    inner = y[1:-1][(y[1:-1] >= y[:-2]) & (y[1:-1] >= y[2:])] if y.size > 2 else np.zeros(0)
    inner = inner[np.isfinite(inner)]
    if inner.size:
        return float(inner.max())
    return float(np.interp(summary["sd_estimate"], d["sd"].to_numpy(float), y))


def sd_density_plot(results, truth: dict | None = None, components: list[str] | None = None,
                    height: int = 360) -> hv.Overlay:
    """Posterior densities of the random-effect SDs, with the point estimate (median) and 95 % interval
    drawn under each curve; ``truth`` ({component: true SD}) is drawn as a red dashed line."""
    results = _as_dict(results)
    multi = len(results) > 1
    layers = []
    curves = []
    for i, (label, res) in enumerate(results.items()):
        summ = sd_summary(res).set_index("component")
        names = components or list(summ.index)
        for j, name in enumerate(names):
            # one colour per component; several methods are told apart by their lines' dashes
            color = PALETTE[j % len(PALETTE)]
            d = sd_density_data(res, name)
            if not np.isfinite(d["density"]).any():  # no posterior SD (MAP's Hessian not negative definite)
                continue
            d["method"] = METHOD_NAMES.get(label, label)
            lab = f"{name} ({METHOD_NAMES.get(label, label)})" if multi else short_label(name)
            curves.append((d, color, lab, summ.loc[name], len(curves), _DASHES[i % len(_DASHES)], name))
    if not curves:
        return empty_plot("No SD densities to draw: the posterior SDs are unavailable (the Hessian at the mode "
                          "is not negative definite). The Integrated Laplace method gives them.")
    # A collapsed posterior (the joint mode's SD near 0: a spike millions high) would flatten every other
    # curve: the height is set by the others, and the spike runs off the top. Beside the Integrated Laplace's
    # curves (the accurate ones) any curve over twice their height runs off the top: VB's over-confident SD
    # densities, 4-13 times as high as grouseticks', had left one of those at 6 % of the plot's height.
    # (a curve's peak is its highest inner local maximum: a wide prior's long tail towards SD 0 is a density per
    # unit of SD growing without bound at 0, cbpp's at vcp_p = 5 to 36 times the herd SD's peak, and runs off the
    # top too; its largest value over the 95 % interval sits at the interval's lower end, grouseticks' LOCATION's
    # 58 times its density at the median, and had set the height)
    peaks = np.array([_body_peak(d, s) for d, _, _, s, *_ in curves])
    tall = any(float(np.nanmax(d["density"])) > 1.5 * pk for (d, *_), pk in zip(curves, peaks) if len(d))
    spikes = peaks > 8.0 * np.median(peaks) if peaks.size > 1 else np.zeros(peaks.size, bool)
    accurate = np.array([str(d["method"].iloc[0]) == METHOD_NAMES["laplace"] if len(d) else False
                         for d, *_ in curves])
    if multi and accurate.any() and (~accurate).any():
        spikes |= peaks > 2.0 * float(peaks[accurate].max())
    ymax = float(peaks[~spikes].max()) if (~spikes).any() else float(peaks.max(initial=0.0))
    for d, color, lab, s, k, dash, _ in curves:
        hover = [("component", "@component"), ("SD", "@sd{0.0000}"), ("density", "@density{0.000}")]
        layers.append(hv.Area(d, "sd", "density").opts(  # (a second value column is the baseline of an Area)
            color=color, alpha=0.15, line_alpha=0))
        layers.append(hv.Curve(d, "sd", ["density", "component", "method"], label="" if multi else lab).opts(
            color=color, line_width=2.5, line_dash=dash, tools=["hover"], hover_tooltips=hover))
        y = -ymax * (0.05 + 0.05 * k)
        iv = pd.DataFrame({"lower": [s["sd_lower"]], "upper": [s["sd_upper"]], "estimate": [s["sd_estimate"]],
                           "y": [y], "component": [lab]})
        tips = [("component", "@component"), ("SD estimate (median)", "@estimate{0.0000}"),
                ("95% interval", "@lower{0.0000} to @upper{0.0000}")]
        layers.append(hv.Segments(iv, ["lower", "y", "upper", "y"], ["estimate", "component"]).opts(
            color=color, line_width=4, line_dash=dash, tools=["hover"], hover_tooltips=tips))
        layers.append(hv.Scatter(iv, "estimate", ["y", "lower", "upper", "component"]).opts(
            color=color, size=10, marker="diamond", line_color="white", tools=["hover"], hover_tooltips=tips))
    key_cols = 1
    if multi:
        key, key_cols = _key(curves)
        layers += key
    if truth:
        for name, v in truth.items():
            layers.append(hv.VLine(float(v)).opts(color=COLORS["truth"], line_dash="dashed", line_width=2.5))
        # (a vertical line has no legend entry: a curve of no length at the first true SD carries it)
        v0 = float(next(iter(truth.values())))
        layers.append(hv.Curve([(v0, 0.0), (v0, 0.0)], label="truth").opts(color=COLORS["truth"],
                                                                           line_dash="dashed", line_width=2.5))
    if not layers:
        return empty_plot("No variance components")
    ylim = {}
    if (spikes.any() or tall) and ymax > 0:
        ylim = {"ylim": (-ymax * (0.1 + 0.05 * (len(curves) - 1)), 1.15 * ymax)}
    from bokeh.models import CustomJSTickFormatter

    # (the intervals sit below the axis's zero: no density there, so no tick labels below it either)
    no_negative = CustomJSTickFormatter(code="return tick < 0 ? '' : String(+tick.toPrecision(6));")
    return hv.Overlay(layers).opts(hv.opts.Overlay(
        title="Random-effect SDs: density, median, 95 % interval" if height >= _COMPACT
        else "Random-effect SDs: posterior density", xlabel="standard deviation",
        ylabel="density", legend_position="bottom" if multi else "top_right",
        legend_cols=key_cols,
        legend_limit=1000,  # (HoloViews drops the legend of an overlay of more than 25 glyphs: 3 methods x 3 SDs)
        min_height=max(220, height), yformatter=no_negative,
        **ylim, **_BASE))


# --------------------------------------------------------------------------- caterpillar
def caterpillar_data(res, term: str, search: str = "", top_k: int | None = None) -> pd.DataFrame:
    """Random effects of one term, sorted by posterior mean; optional substring search and top-k by |mean|."""
    re_df = adapter.random_effects(res, term)
    df = pd.DataFrame({"level": [str(v) for v in re_df["level"]], "mean": re_df["Mean"].to_numpy(float),
                       "sd": re_df["SD"].to_numpy(float), "lower": re_df["lower"].to_numpy(float),
                       "upper": re_df["upper"].to_numpy(float), "name": [str(i) for i in re_df.index]})
    df["n_total"] = len(df)
    if search:
        df = df[df.level.str.contains(search, case=False, regex=False)]
    if top_k and len(df) > top_k:
        df = df.loc[df["mean"].abs().sort_values(ascending=False).index[:top_k]]
    df = df.sort_values("mean").reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1)
    return df


def caterpillar_plot(res, term: str, search: str = "", top_k: int | None = 200, truth: dict | None = None,
                     height: int = 380) -> hv.Overlay:
    """Caterpillar plot: each level's posterior mean and 95 % interval, sorted. ``truth`` maps level labels
    (or full names like ``herd[3]``) to true effects (red crosses)."""
    df = caterpillar_data(res, term, search, top_k)
    total = int(df["n_total"].iloc[0]) if len(df) else len(adapter.random_effects(res, term))
    shown = f"{len(df)} of {total} levels" + (f" matching {search!r}" if search else "")
    if top_k and total > top_k and not search:
        shown += f" (the {top_k} largest |effects|)"
    if not len(df):
        return empty_plot(f"No level of {term} matches {search!r}")
    hover = [("level", "@level"), ("mean", "@mean{0.0000}"), ("sd", "@sd{0.0000}"),
             ("95% interval", "@lower{0.0000} to @upper{0.0000}")]
    width = 2 if len(df) > 300 else 3
    # a key only with true values, above the plot (inside it covered intervals), and not on a compact plot (the
    # Teaching tab's, whose text says the red marks are the truth: above, the key took a third of its height)
    keyed = bool(truth) and height >= _COMPACT
    layers = [
        hv.HLine(0).opts(color=COLORS["ref"], line_dash="dashed", line_width=1.5),
        hv.Segments(df, ["rank", "lower", "rank", "upper"], ["level", "mean", "sd"]).opts(
            color=COLORS["band"], line_width=width, tools=["hover"], hover_tooltips=hover),
        hv.Scatter(df, "rank", ["mean", "level", "sd", "lower", "upper"],
                   label="posterior mean and 95 % interval" if keyed else "").opts(
            color=COLORS["accent"], size=7 if len(df) <= 300 else 4, tools=["hover"], hover_tooltips=hover),
    ]
    if truth:
        tv = []
        for lvl, nm, r in zip(df.level, df.name, df["rank"]):
            v = truth.get(nm, truth.get(lvl))
            if v is not None:
                tv.append((r, float(v), lvl))
        if tv:
            tdf = pd.DataFrame(tv, columns=["rank", "truth", "level"])
            layers.append(hv.Scatter(tdf, "rank", ["truth", "level"], label="truth" if keyed else "").opts(
                color=COLORS["truth"], marker="x", size=9, line_width=2, tools=["hover"],
                hover_tooltips=[("level", "@level"), ("true effect", "@truth{0.0000}")]))
    xticks = None
    if len(df) <= 40:
        xticks = _short_ticks(list(zip(df["rank"], df["level"])))
    return hv.Overlay(layers).opts(hv.opts.Overlay(
        title=f"Random effects of {short_label(term)}: {shown}",
        # (above 40 levels the axis counts ranks, not levels: said so, as the numbers looked like level ids)
        xlabel=(f"{short_label(term)} levels (sorted by mean)" if xticks
                else f"{short_label(term)} levels, ranked by posterior mean (hover for names)"),
        ylabel="effect: mean and 95 % interval", xticks=xticks, xrotation=45 if xticks else 0,
        legend_position="top", legend_opts={"orientation": "horizontal"},
        min_height=max(220, height), **_BASE))


# --------------------------------------------------------------------------- tables
def fe_summary(res, exp_scale: bool = False) -> pd.DataFrame:
    """Fixed-effect table for display and CSV export."""
    ft = adapter.fe_table(res)
    out = pd.DataFrame({"term": [str(i) for i in ft.index], "mean": ft["mean"].to_numpy(float),
                        "sd": ft["sd"].to_numpy(float), "lower_95": ft["lower"].to_numpy(float),
                        "upper_95": ft["upper"].to_numpy(float)})
    if exp_scale:
        out["exp_mean"] = np.exp(out["mean"])
        out["exp_lower_95"] = np.exp(out["lower_95"])
        out["exp_upper_95"] = np.exp(out["upper_95"])
    return out


def vcp_summary(res) -> pd.DataFrame:
    """Variance components on the SD scale (and log-SD scale) for display and CSV export."""
    vt = adapter.vcp_table(res)
    s = sd_summary(res)
    return pd.DataFrame({"component": s["component"], "sd_estimate": s["sd_estimate"],
                         "sd_lower_95": s["sd_lower"], "sd_upper_95": s["sd_upper"],
                         "log_sd_mean": vt["mean"].to_numpy(float), "log_sd_sd": vt["sd"].to_numpy(float)})


def re_summary(res) -> pd.DataFrame:
    re_df = adapter.random_effects(res)
    return pd.DataFrame({"term": re_df["term"].astype(str).to_numpy(), "level": re_df["level"].astype(str).to_numpy(),
                         "mean": re_df["Mean"].to_numpy(float), "sd": re_df["SD"].to_numpy(float),
                         "lower_95": re_df["lower"].to_numpy(float), "upper_95": re_df["upper"].to_numpy(float)})


def to_html(element, title: str = "mglm plot") -> str:
    """Standalone HTML (Bokeh resources inlined, so it opens offline)."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    model = hv.render(element.opts(responsive=False, width=900, height=480, clone=True)
                      if hasattr(element, "opts") else element, backend="bokeh")
    # Panel's resources add a loader of its ES-module shims by a path relative to a server, and in a session
    # holding a table the table's stylesheet from Panel's CDN (for components the plots do not use): a saved
    # file has no server and may be opened offline, where those requests fail
    html = re.sub(r'<script src="static/[^"]*"></script>\s*', "", file_html(model, INLINE, title))
    return re.sub(r'<link rel="stylesheet" href="https?://cdn\.holoviz\.org/[^"]*"[^>]*>\s*', "", html)
