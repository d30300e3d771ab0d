"""The dashboard's model as a link: a demo data set and the model, in the page's URL query.

A teacher shares ``/app?data=grouseticks&formula=TICKS+~+YEAR+%2B+(1+%7C+BROOD)&family=poisson`` and every student
opens the same model and tab; a reload keeps them. The query holds

========== ==========================================================================================
``data``        a demo data set's name (simulated data are not in links: their query is empty)
``upload``      or an uploaded file's name: the browser tab keeps the file (sessionStorage, up to a few MB), and a
                reload reads it again there; another tab, or another person, is asked to upload it
``categorical`` the columns read as categories, a JSON list (only where they differ from the file's reading)
``formula``     the model's formula (the sidebar's, or a typed one)
``family``      ``binomial`` or ``poisson``; ``trials`` and ``offset`` their columns (or ``(none)``)
``method``      the fitting method; ``fe_p`` and ``vcp_p`` the priors where not the defaults
``tab``         the results tab shown, where not the first
========== ==========================================================================================

Reading a link evaluates nothing: the formula goes through the same safe grammar as a typed one (and is shown with
its error if it fails it), and every other value must be one of its control's choices, else it is left out with a
note under the data card.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping

import numpy as np

from app import adapter
from app.data import DEMOS
from app.state import NONE, AppState, _compact

#: the query's keys, in the order a link writes them
KEYS = ("data", "upload", "categorical", "formula", "family", "trials", "offset", "method", "fe_p", "vcp_p", "tab")
#: the longest value read from a link (a formula of a few hundred characters is long)
VALUE_MAX = 2000


def tab_key(title: str) -> str:
    """A tab's title as a link writes it: ``"Summary & export"`` -> ``"summary-export"``."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def query_of(state: AppState, tab: str = "") -> dict[str, str]:
    """The query that opens this session's model again: for a demo data set, or an uploaded file (``upload``: its
    name; the file itself is kept in the browser tab, for a reload there); empty for simulated data."""
    data, spec = state.data, state.spec
    if data.demo:
        query = {"data": data.demo}
    elif data.upload:
        query = {"upload": data.upload}
    else:
        return {}
    if sorted(data.categorical) != sorted(data.initial_categorical):
        query["categorical"] = json.dumps(list(data.categorical))
    query["formula"] = spec.formula()
    query["family"] = spec.family
    query["trials"], query["offset"] = spec.trials, spec.offset  # ("(none)" too: a demo may have trials)
    query["method"] = spec.method
    for key in ("fe_p", "vcp_p"):
        if getattr(spec, key) != spec.param[key].default:
            query[key] = f"{getattr(spec, key):g}"
    if tab:
        query["tab"] = tab
    return query


def demo_of(args: Mapping[str, str]) -> str | None:
    """The demo data set a link names, if it names one that exists."""
    name = args.get("data", "")
    return name if name in DEMOS else None


def apply_query(state: AppState, args: Mapping[str, str]) -> list[str]:
    """Set the model a link describes on ``state``, whose data is already the link's (its demo, :func:`demo_of`, or
    its uploaded file, given back by the browser tab: ``app.dashboard``).

    Nothing is fitted here. Returns notes on what the link held that could not be used (the rest is applied)."""
    notes = []
    args = {k: v for k, v in args.items() if k in KEYS}
    for key, value in list(args.items()):
        if len(value) > VALUE_MAX:
            notes.append(f"the link's `{key}` is {len(value)} characters long (at most {VALUE_MAX}); left out.")
            del args[key]
    if args.get("data") and demo_of(args) is None:
        notes.append(f"the link's data set {args['data']!r} is not a demo data set ({', '.join(DEMOS)}); the first "
                     "demo data set is shown instead, with its own model.")
        return notes
    spec, data = state.spec, state.data
    state._loading = True
    try:
        if "categorical" in args:
            try:
                cats = json.loads(args["categorical"])
                if not (isinstance(cats, list) and all(isinstance(c, str) for c in cats)):
                    raise ValueError
            except (ValueError, RecursionError):  # (nested brackets a thousand deep exhaust the parser)
                notes.append("the link's `categorical` must be a JSON list of column names; left out.")
            else:
                offered = data.param.categorical.objects
                data.categorical = [c for c in offered if c in cats]
                if unknown := [c for c in cats if c not in offered]:
                    notes.append(f"the link's categorical columns {unknown} are not columns that read as numbers.")
                spec.refresh_roles(data)
        for key in ("family", "trials", "offset", "method", "fe_p", "vcp_p"):
            if key not in args:
                continue
            value = args[key]
            if key in ("fe_p", "vcp_p"):  # (as the slider: a number out of range is brought to its bound)
                lo, hi = spec.param[key].bounds
                try:
                    number = float(value)
                    if not np.isfinite(number):
                        raise ValueError
                except ValueError:
                    notes.append(f"the link's `{key}` must be a number from {lo:g} to {hi:g}; got {value!r} (left at "
                                 f"{getattr(spec, key):g}).")
                    continue
                if not lo <= number <= hi:
                    notes.append(f"the link's `{key}` must be from {lo:g} to {hi:g}; got {number:g}, so it is "
                                 f"{min(max(number, lo), hi):g}.")
                spec.param.update(**{key: min(max(number, lo), hi)})
                continue
            try:
                spec.param.update(**{key: value})
            except ValueError:
                notes.append(f"the link's `{key}` must be one of {_choices(spec, key)}; got {value!r} (left at "
                             f"{_choices(spec, key, getattr(spec, key))}).")
        if spec.family == "poisson" and "trials" not in args:
            spec.trials = NONE  # (as choosing the Poisson family in the Model card does)
        if "formula" in args:
            _set_formula(spec, data, args["formula"])
    finally:
        state._loading = False
    state.columns_version += 1
    return notes


def _choices(spec, key: str, value=None) -> str:
    """A parameter's choices as the sidebar names them (the method's labels with the link's names), or ``value``'s."""
    labels = getattr(spec.param[key], "names", None) or {}  # ({label: value} where the choices were a dict)
    named = {v: repr(v) for v in spec.param[key].objects} | {v: f"{v} ({label})" for label, v in labels.items()}
    return named.get(value, repr(value)) if value is not None else ", ".join(named.values())


def _set_formula(spec, data, text: str) -> None:
    """The sidebar's choices where they build ``text``, else ``text`` as a typed formula (its errors show there)."""
    response, fixed, groups, slopes = adapter.formula_columns(text)  # (all empty where it does not parse)
    if response:
        num, cat = data.numeric_columns, data.categorical_columns
        keys = ("response", "fixed_numeric", "fixed_factors", "groups", "slopes")
        before = {k: getattr(spec, k) for k in keys}
        try:
            spec.param.update(response=response[0], fixed_numeric=[c for c in fixed if c in num],
                              fixed_factors=[c for c in fixed if c in cat], groups=groups, slopes=slopes)
        except ValueError:  # a column a sidebar control does not offer
            pass
        if _compact(spec.built_formula()) == _compact(text):
            spec.param.update(formula_text=spec.built_formula(), use_formula=False)
            return
        spec.param.update(**before)  # (the sidebar keeps the demo's choices: it cannot say this formula)
    spec.param.update(formula_text=text, use_formula=True)
