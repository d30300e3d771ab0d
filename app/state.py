"""Session state of the dashboard: param classes only, no widgets.

``DataState``  the table (DataFrame, name, which columns are categorical).
``ModelSpec``  the model the user asks for (columns by role, family, method, priors, formula).
``FitState``   the fit: status, last good outcome, error, progress, warnings.
``AppState``   one per session; owns the three above, validates, fits (live with a
               debounce for small problems, behind a button for large ones) and keeps
               the previous good result on screen when anything goes wrong.

Vocabulary (as in mglm_core): ``fe`` fixed effects, ``vcp`` variance-component
parameters (log-SD of each random-effect term), ``vc`` the random effects themselves.
"""
from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections import OrderedDict

import numpy as np
import pandas as pd
import param

from app import adapter
from app.data import (DEMOS, MAX_FIXED_LEVELS, DataInputError, as_numeric, default_categorical, is_numeric,
                      load_demo, numeric_like, read_upload, reader_call)

NONE = "(none)"
#: Model size (problem_size: random-effect nonzeros plus the dense block's square) up to which the model
#: refits live as controls move.
LIVE_FIT_LIMIT = 250_000
FAMILIES = ["binomial", "poisson"]


class DataState(param.Parameterized):
    """The current table and the role of its columns."""

    df = param.DataFrame(default=None, allow_None=True, doc="The data set being modelled.")
    dataset = param.String(default="", doc="Data set name (demo name or file name).")
    source = param.String(default="", doc="Where the data came from, for the reproducible snippet.")
    reader = param.String(default="", doc="The pandas call that reads the source again (the snippet's).")
    categorical = param.ListSelector(default=[], objects=[], doc=(
        "Columns that could be numbers, treated as categorical (text columns always are); offered are the "
        "columns that read as numbers, R factors of numeric codes included."))
    version = param.Integer(default=0, doc="Incremented at every load; part of the fit cache key.")
    note = param.String(default="", doc="How the file was read, where the user should know (an encoding).")
    demo = param.String(default="", doc="The demo data set's name, when the data is one (app.link's links).")
    upload = param.String(default="", doc="The uploaded file's name, when the data is one (kept in the browser tab "
                                          "for a reload: app.link).")

    def __init__(self, **params):
        super().__init__(**params)
        self._derived = (None, {})  # (the frame, facts derived from it: reset when the frame changes)
        self.initial_categorical: list[str] = []  # the columns read as categories when the frame was loaded

    def _facts(self) -> dict:
        """Facts derived from the current frame (computed once per frame)."""
        frame, facts = self._derived
        if frame is not self.df:
            facts = {}
            self._derived = (self.df, facts)
        return facts

    @property
    def columns(self) -> list[str]:
        return [] if self.df is None else [str(c) for c in self.df.columns]

    def can_be_numeric(self, column: str) -> bool:
        """Whether ``column`` reads as numbers (:func:`app.data.numeric_like`)."""
        facts = self._facts()
        if "numeric_like" not in facts:
            facts["numeric_like"] = ({} if self.df is None
                                     else {str(c): numeric_like(self.df[c]) for c in self.df.columns})
        return facts["numeric_like"].get(column, False)

    def n_levels(self, factors: tuple[str, ...]) -> int:
        """The number of distinct combinations of ``factors`` in the frame (the live decision asks at
        every change)."""
        levels = self._facts().setdefault("levels", {})
        if factors not in levels:
            levels[factors] = (int(self.df[factors[0]].nunique()) if len(factors) == 1
                               else int(self.df.groupby(list(factors), observed=True).ngroups))
        return levels[factors]

    def all_positive(self, column: str) -> bool:
        """Whether every value of a numeric ``column`` is above 0 (its logarithm is an offset choice)."""
        positive = self._facts().setdefault("positive", {})
        if column not in positive:
            v = as_numeric(self.df[column]).to_numpy(dtype=float, na_value=np.nan)
            v = v[~np.isnan(v)]
            positive[column] = bool(v.size) and bool(np.all(v > 0))
        return positive[column]

    @property
    def numeric_columns(self) -> list[str]:
        return [c for c in self.columns if c not in self.categorical and self.can_be_numeric(c)]

    @property
    def categorical_columns(self) -> list[str]:
        numeric = set(self.numeric_columns)
        return [c for c in self.columns if c not in numeric]

    def set_frame(self, df: pd.DataFrame, name: str, source: str = "", demo: str = "", upload: str = "") -> None:
        like = {str(c): numeric_like(df[c]) for c in df.columns}
        with param.parameterized.batch_call_watchers(self):
            self._derived = (df, {"numeric_like": like})
            self.param.categorical.objects = [c for c, ok in like.items() if ok]
            self.categorical = [str(c) for c in default_categorical(df) if like[str(c)]]
            self.initial_categorical = list(self.categorical)
            self.param.update(df=df, dataset=name, source=source or name, reader=reader_call(source or name, df),
                              version=self.version + 1, note=str(df.attrs.get("note", "")), demo=demo,
                              upload=upload)


quote_column = adapter.quote_column  # (the sidebar's formulas and offsets quote names as the grammar reads them)
offset_column = adapter.offset_column


def offset_choices(data: DataState) -> list[str]:
    """The Offset choices: none, and each numeric column as it is and, where all its values are positive, its
    logarithm (an exposure's: ``log(size)``; the library reads the expression, :func:`offset_column`). No
    logarithm is offered whose text names a column itself, or of a name with a backtick (the grammar has none)."""
    out, columns = [NONE], set(data.columns)
    for c in data.numeric_columns:
        out.append(c)
        log = f"log({quote_column(c)})"
        if data.all_positive(c) and log not in columns and "`" not in c:
            out.append(log)
    return out


class ModelSpec(param.Parameterized):
    """What to fit. Column choices are offered by role (numeric vs categorical)."""

    #: the trials column that "Treat as categorical" took out of the trials' options (validate says so), or None
    trials_categorical = None

    response = param.Selector(default=None, objects=[], allow_None=True, doc="Outcome column.")
    trials = param.Selector(default=NONE, objects=[NONE], doc="Number of trials (binomial counts).")
    fixed_numeric = param.ListSelector(default=[], objects=[], label="Numeric covariates")
    fixed_factors = param.ListSelector(default=[], objects=[], label="Categorical fixed effects")
    groups = param.ListSelector(default=[], objects=[], label="Random intercepts: grouping factors")
    slopes = param.ListSelector(default=[], objects=[], label="Random slopes (numeric, for every group)")
    offset = param.Selector(default=NONE, objects=[NONE], label="Offset (log exposure)",
                            doc="A numeric column added to the linear predictor, or its logarithm (log(size)).")
    family = param.Selector(default="binomial", objects=FAMILIES)
    method = param.Selector(default="map", objects={"map": "map"}, doc="Fitting method.")
    fe_p = param.Number(default=2.0, bounds=(0.1, 10.0), step=0.1, label="Prior SD of fixed effects (fe_p)")
    vcp_p = param.Number(default=1.0, bounds=(0.05, 5.0), step=0.05,
                         label="Prior SD of the log-SDs (vcp_p)")
    use_formula = param.Boolean(default=False, label="Use my typed formula")
    formula_text = param.String(default="", label="Formula")
    auto_fit = param.Boolean(default=True, label="Refit live (small models)")

    def __init__(self, **params):
        methods = adapter.available_methods()
        super().__init__(**params)
        self.param.method.objects = methods
        if "method" not in params or self.method not in methods.values():
            # integrated Laplace when the library has it, else VB: the joint-mode (MAP) SD often collapses to 0
            keys = list(methods.values())
            self.method = "laplace" if "laplace" in keys else ("vb" if "vb" in keys else keys[0])

    @property
    def fixed(self) -> list[str]:
        return list(self.fixed_numeric) + list(self.fixed_factors)

    def built_formula(self) -> str:
        """The formula implied by the column choices (lme4 syntax); a column whose name is not a plain
        identifier (spaces, accents, a Python keyword) is quoted in backticks."""
        if not self.response:
            return ""
        q = quote_column
        rhs = [q(c) for c in self.fixed] or ["1"]
        terms = [f"(1 | {q(g)})" for g in self.groups]
        terms += [f"(0 + {q(s)} | {q(g)})" for g in self.groups for s in self.slopes]
        return f"{q(self.response)} ~ " + " + ".join(rhs + terms)

    def formula(self) -> str:
        return self.formula_text.strip() if self.use_formula else self.built_formula()

    def update_columns(self, data: DataState, demo=None, keep_formula: bool = False) -> None:
        """Offer the columns of new data by role and choose sensible defaults; a typed formula in use is kept
        with ``keep_formula`` (the same data, a column read another way), else the built formula replaces it."""
        cols, num, cat = data.columns, data.numeric_columns, data.categorical_columns
        with param.parameterized.batch_call_watchers(self):
            self.param.response.objects = cols
            self.param.trials.objects = [NONE] + num
            offsets = offset_choices(data)
            self.param.offset.objects = offsets
            self.param.fixed_numeric.objects = num
            self.param.fixed_factors.objects = cat
            self.param.groups.objects = cols
            self.param.slopes.objects = num
            if demo is not None:
                values = dict(response=demo.response, family=demo.family, trials=demo.trials or NONE,
                              fixed_numeric=[c for c in demo.fixed if c in num],
                              fixed_factors=[c for c in demo.fixed if c in cat],
                              groups=list(demo.groups), slopes=[], offset=NONE, use_formula=False)
            else:
                values = dict(
                    response=self.response if self.response in cols else (cols[0] if cols else None),
                    trials=self.trials if self.trials in num else NONE,
                    offset=self.offset if self.offset in offsets else NONE,
                    # a fixed effect whose column changed kind stays in the model in the other list
                    fixed_numeric=[c for c in self.fixed if c in num],
                    fixed_factors=[c for c in self.fixed if c in cat],
                    groups=[c for c in self.groups if c in cols],
                    slopes=[c for c in self.slopes if c in num],
                    use_formula=self.use_formula and keep_formula,
                )
            self.param.update(**values)
            if not self.use_formula:
                self.formula_text = self.built_formula()

    def refresh_roles(self, data: DataState) -> None:
        """Re-offer columns after the user changed which ones are categorical (a typed formula stays in use: it
        names its columns, now read the new way; it was replaced by the built one without a word)."""
        trials = self.trials
        self.update_columns(data, demo=None, keep_formula=True)
        # (a trials column now read as categories is no longer offered as the trials: validate says why)
        self.trials_categorical = trials if trials != NONE and trials in data.categorical else None


class FitState(param.Parameterized):
    """Status and outcome of the latest fit; ``outcome`` is always the last *good* one."""

    status = param.Selector(default="idle", objects=["idle", "waiting", "fitting", "done", "error", "stale"])
    outcome = param.Parameter(default=None, doc="adapter.FitOutcome of the last successful fit.")
    message = param.String(default="", doc="Plain-words status line.")
    error = param.String(default="", doc="Why the latest attempt failed (previous result kept).")
    progress = param.Integer(default=0, bounds=(-1, 100), doc="-1 = busy without a known fraction.")
    warnings = param.List(default=[], doc="Plain-words diagnostics of the shown result.")
    n_dropped = param.Integer(default=0)
    comparison = param.Dict(default={}, doc="{method key: FitOutcome} for the side-by-side comparison.")
    models = param.List(default=[], doc=(
        "adapter.ModelEvidence of the integrated-Laplace fits on the current data, oldest first (model comparison)."))
    compare_status = param.String(default="")
    compare_current = param.Boolean(default=True, doc="Whether the comparison is of the model the sidebar shows.")

    @property
    def result(self):
        return None if self.outcome is None else self.outcome.result


def _compact(formula: str) -> str:
    """A formula without its spaces (for telling typed formulas apart from built ones)."""
    return re.sub(r"\s+", "", formula)


def _used_columns(formula: str, columns: list[str], extra=()) -> list[str]:
    response, fixed, groups, slopes = adapter.formula_columns(formula)
    named = set(response + fixed + groups + slopes + adapter.offset_columns(formula))
    used = [c for c in columns if c in named]
    return list(dict.fromkeys(used + [c for c in extra if c and c != NONE]))


def formula_parts(formula: str) -> tuple[str, list[str], list[str]]:
    """(response, fixed-effect columns, grouping factors) of an lme4-style formula (the library's
    parser: nothing is evaluated; empty when the formula does not parse)."""
    response, fixed, groups, _ = adapter.formula_columns(formula)
    return (response[0] if response else ""), fixed, groups


def _row_numbers(s: pd.Series) -> bool:
    """Whether a numeric column counts the rows (1..n or 0..n-1, as R's write.csv row names)."""
    v = s.to_numpy(dtype=float, na_value=np.nan)
    return v.size > 1 and bool(np.array_equal(v, np.arange(v.size) + v[0])) and v[0] in (0.0, 1.0)


def _integer_codes(s: pd.Series) -> bool:
    """Whether a numeric column looks like a factor stored as numbers: k integers from 0 or 1 with few gaps
    (up to 1.25 k), 2 <= k <= n/2 (Contraception's districts: 1..61 without 54)."""
    v = s.dropna().to_numpy(dtype=float)
    if v.size < 4 or not np.all(v == np.round(v)):
        return False
    levels = np.unique(v)
    return (2 <= levels.size <= v.size // 2 and levels[0] in (0.0, 1.0)
            and levels[-1] - levels[0] + 1 <= 1.25 * levels.size)


def _whole_nonnegative(s: pd.Series) -> bool:
    """Whether a numeric column holds counts: whole numbers from 0."""
    v = s.dropna().to_numpy(dtype=float)
    return v.size > 0 and bool(np.all(v >= 0) and np.all(v == np.round(v)))


def binary_levels(s: pd.Series) -> tuple | None:
    """The two levels of a text or True/False column as (counted 0, counted 1): False/True, or the
    two texts in sorted order ("no" < "yes"); None for numbers or another number of levels."""
    if is_numeric(s):
        return None
    vals = list(pd.unique(s.dropna()))
    if len(vals) != 2:
        return None
    if all(isinstance(v, (bool, np.bool_)) for v in vals):
        return (False, True)
    lo, hi = sorted(vals, key=str)
    return (lo, hi)


def validate(spec: ModelSpec, data: DataState) -> dict[str, str]:
    """Check the model against the data; returns {control: plain-words message}. Empty = fine."""
    errors: dict[str, str] = {}
    df = data.df
    if df is None:
        return {"data": "No data loaded: choose a demo data set or upload a file."}
    cols = data.columns
    formula = spec.formula()
    if spec.use_formula:
        try:
            adapter.check_formula(formula, cols)
        except adapter.MglmError as exc:
            errors["formula"] = f"Formula not accepted: {str(exc).removeprefix('formula: ')}"
            return errors
        except Exception as exc:  # last resort: any parser failure is a formula problem
            errors["formula"] = f"Formula not accepted: {exc}"
            return errors
        response, fixed, groups = formula_parts(formula)
        fixed = [f for f in fixed if f in cols]
    else:
        response, fixed, groups = spec.response, spec.fixed, list(spec.groups)
    if not response or response not in cols:
        errors["response"] = "Choose a response column."
        return errors
    # a column with no values at all drops every row: said by its name (the fit said "`data` must have at least
    # one row; got 0 rows")
    offset = offset_column(spec.offset, cols)
    empty = [c for c in _used_columns(formula, cols, (spec.trials, offset)) if c in cols and df[c].isna().all()]
    if empty:
        c = empty[0]
        role, where = (("response", "response") if c == response else ("trials", "response") if c == spec.trials
                       else ("offset", "fixed") if c == offset else ("grouping factor", "groups") if c in groups
                       else ("covariate", "fixed"))
        if spec.use_formula and role not in ("trials", "offset"):  # (named in the typed formula: said under it)
            where = "formula"
        errors[where] = f"The {role} column {c!r} has no values (every row is missing): choose another column."
        return errors
    if response in data.categorical and data.can_be_numeric(response):
        errors["response"] = (f"The response {response!r} is marked under Treat as categorical: a response is numbers "
                              "(0/1, successes or counts), so untick it there.")
        return errors
    numeric = set(data.numeric_columns)

    def values(col):  # a column the model reads as numbers (text that reads as numbers converted)
        return as_numeric(df[col]) if col in numeric else df[col]

    y = values(response)
    trials = spec.trials if spec.trials != NONE else None
    if trials is not None and spec.family == "poisson":
        errors["response"] = f"The Poisson family has no trials; set Trials to (none) instead of {trials!r}."
        return errors
    if trials is not None and trials not in numeric:
        errors["response"] = f"The trials column {trials!r} must hold numbers (counts of trials)."
        return errors
    if spec.use_formula and len(adapter.formula_columns(formula)[0]) > 1:  # cbind(successes, failures) ~ ...
        if spec.family != "binomial":
            errors["response"] = "A cbind(successes, failures) response needs the binomial family."
        elif trials is not None:
            errors["response"] = (f"The cbind(...) response gives the trials itself; set Trials to (none) instead "
                                  f"of {trials!r}.")
    elif spec.family == "binomial":
        if not is_numeric(y) and (binary_levels(y) is None or trials):
            errors["response"] = (f"Response {response!r} is text. The binomial family needs 0/1 values, a column "
                                  "with two levels (such as yes/no), or success counts together with a trials "
                                  "column.")
        elif trials:
            n = values(trials)
            bad = (y < 0) | (y > n)
            if bad.any():
                errors["response"] = (f"Response {response!r} must be between 0 and the trials column {trials!r}; "
                                      f"{int(bad.sum())} rows are not.")
        elif is_numeric(y):  # (a two-level text column is mapped to 0/1 in prepare_data)
            vals = set(pd.unique(y.dropna()))
            if not vals <= {0, 1}:
                errors["response"] = (f"Response {response!r} is not binary (values from {y.min():g} to {y.max():g}). "
                                      "Choose a trials column for counts out of n, or the Poisson family.")
                dropped = getattr(spec, "trials_categorical", None)
                if dropped and dropped in data.categorical:
                    errors["response"] += (f" (The trials column {dropped!r} is marked under Treat as categorical, so "
                                           "it is no longer offered as the trials: untick it there.)")
    elif spec.family == "poisson":
        if not is_numeric(y):
            errors["response"] = f"Response {response!r} is text; the Poisson family needs counts (0, 1, 2, ...)."
        elif (y < 0).any():
            errors["response"] = (f"Response {response!r} has negative values (minimum {y.min():g}); "
                                  "Poisson counts must be 0 or more.")
        elif y.notna().any() and not _whole_nonnegative(y):  # (not negative, from the test above: a fraction)
            counts = y.dropna()
            first = counts[counts != np.round(counts)].iloc[0]
            errors["response"] = (f"Response {response!r} has values that are not whole numbers (e.g. {first:g}); "
                                  "the Poisson family needs counts (0, 1, 2, ...). Is it an exposure or a rate?")
    if response in groups:
        errors["groups"] = f"The response {response!r} cannot also be a grouping factor."
    elif response in fixed:
        errors["fixed"] = f"The response {response!r} cannot also be a predictor."
    for col in fixed:
        s = df[col]
        if col not in numeric:
            k = s.nunique(dropna=True)
            if k > MAX_FIXED_LEVELS:
                errors["fixed"] = (f"{col!r} is a categorical column with {k} distinct values; as a fixed effect it "
                                   f"would add {k - 1} coefficients. Use it as a grouping factor instead.")
            elif k < 2:
                errors["fixed"] = f"Fixed effect {col!r} has a single level; it cannot be estimated."
    if not groups:
        errors["groups"] = ("Add a random-effect term such as (1 | group) to the formula." if spec.use_formula
                            else "Choose at least one grouping factor for the random effects.")
    for g in groups:
        if g not in cols:
            errors["groups"] = f"Grouping factor {g!r} is not a column of the data."
        elif df[g].nunique(dropna=True) < 2:
            errors["groups"] = (f"Grouping factor {g!r} has only one level ({str(df[g].dropna().iloc[0])!r}); "
                                "a random effect needs at least two groups.")
    for s in ([] if spec.use_formula else spec.slopes):
        if s in groups:
            errors["groups"] = f"{s!r} cannot be both a grouping factor and a random slope."
    if spec.use_formula:  # (the typed formula's terms: said under it, not beside the Model card's unused widgets)
        about = [errors.pop(k) for k in ("fixed", "groups") if k in errors]
        if about:
            errors["formula"] = " ".join(about)
    typed_offsets = adapter.offset_columns(formula) if spec.use_formula else []
    if spec.offset != NONE and typed_offsets:  # (both would be added: a doubled exposure, without a word)
        errors["formula"] = errors["fixed"] = (
            f"The typed formula has its own offset(...) and {spec.offset!r} is chosen under Offset in the Model card: "
            "the two would add up. Set Offset to (none), or take offset(...) out of the formula.")
    elif spec.offset != NONE and offset == response:
        errors["fixed"] = f"The offset {spec.offset!r} is the response's column: choose another column under Offset."
    elif spec.offset != NONE and offset not in numeric:  # (chosen in the Model card, typed formula or not)
        errors["fixed"] = f"Offset {spec.offset!r} must be numeric."
    elif spec.offset != NONE and offset != spec.offset and not data.all_positive(offset):
        errors["fixed"] = f"Offset {spec.offset!r} needs values above 0 in every row: {offset!r} has some at or below 0."
    return errors


def _component_scales(model) -> np.ndarray:
    """Each variance component's typical coefficient in the random-effects design: the root mean square
    of its nonzero entries (1 for a random intercept, the covariate's size for a slope)."""
    Z = model.exog_vc.tocsc()
    out = np.ones(model.k_vcp)
    for k in range(model.k_vcp):
        vals = Z[:, np.flatnonzero(model.ident == k)].data
        if vals.size:
            out[k] = float(np.sqrt(np.mean(vals**2)))
    return out


def prepare_data(spec: ModelSpec, data: DataState) -> tuple[pd.DataFrame, int, np.ndarray]:
    """The columns the model uses, categorical ones as pandas categories, rows with missing values dropped:
    ``(frame, rows dropped, positions of the rows kept)``."""
    df = data.df
    formula = spec.formula()
    extra = [spec.trials, offset_column(spec.offset, data.columns)]
    used = _used_columns(formula, data.columns, extra)
    sub = df[used].copy()
    response, fixed, groups = formula_parts(formula)
    # a numeric column that groups and is also a number elsewhere (a fixed effect, log(size), the trials or the
    # offset) stays numeric: the grouping term takes its levels by itself, as lme4's does; as a category it
    # became 22 dummy coefficients in the fixed part, and "trials must be numeric"
    elsewhere = (set(fixed) | set(adapter.formula_columns(formula)[3]) | set(adapter.offset_columns(formula))
                 | {c for c in extra if c})
    levels01 = binary_levels(sub[response]) if spec.family == "binomial" and response in sub else None
    if levels01 is not None:  # yes/no, True/False: the second level counts as a success
        s = sub[response]
        sub[response] = (s == levels01[1]).astype(float).where(s.notna())
    numeric = set(data.numeric_columns)
    for c in used:
        s = sub[c]
        if c == response and levels01 is not None:
            continue
        if c in numeric and (c not in groups or c in elsewhere):
            if not is_numeric(s):  # numbers written as text, or a factor of numeric codes, treated as numbers
                sub[c] = as_numeric(s)
        elif not isinstance(s.dtype, pd.CategoricalDtype):
            text = s.astype(str).where(s.notna())  # vectorised str(v); missing stays missing
            if is_numeric(s):
                levels = [str(v) for v in sorted(s.dropna().unique())]
                sub[c] = pd.Categorical(text, categories=levels)
            else:
                sub[c] = pd.Categorical(text)
    complete = sub.notna().all(axis=1).to_numpy()
    sub = sub[complete].reset_index(drop=True)
    if any(isinstance(sub[c].dtype, pd.CategoricalDtype) for c in sub.columns):
        for c in sub.columns:
            if isinstance(sub[c].dtype, pd.CategoricalDtype):
                sub[c] = sub[c].cat.remove_unused_categories()
    return sub, int((~complete).sum()), np.flatnonzero(complete)


def problem_size(spec: ModelSpec, data: DataState) -> int:
    """The work of a fit, in units of a row's work: the nonzeros of the random-effect design (rows
    times random-effect columns per row) plus, with several grouping factors, the square of the
    levels left once the largest factor is eliminated (the dense block that crossed and nested designs
    factor). It decides live vs button fitting; 5,000 groups of 20 rows count 100,000, two crossed
    factors of 500 levels over 100,000 rows 450,000."""
    df = data.df
    if df is None:
        return 0
    per_row, levels = 0, {}
    for factors, columns in adapter.random_terms(spec.formula()):
        if not all(f in data.columns for f in factors):
            continue
        per_row += columns
        if factors not in levels:
            levels[factors] = data.n_levels(factors)
    dense = sum(levels.values()) - max(levels.values()) if len(levels) > 1 else 0
    return len(df) * per_row + dense**2


def model_comparison(models, outcome) -> tuple[pd.DataFrame, int]:
    r"""The models of ``models`` (:class:`adapter.ModelEvidence`) that explain the same outcomes as the shown
    fit ``outcome`` (the same family and response values, row by row), best first, and how many others were
    left out (fitted to other rows, another response or family).

    Columns: the formula (the shown one marked), the priors, the fixed effects and variance components,
    :math:`\log p(y)`, the log Bayes factor against the best, :math:`\log p(y \mid M) - \max_{M'} \log p(y
    \mid M')`, and the posterior probability of each model with equal prior odds among those listed."""
    if outcome is None:
        return pd.DataFrame(), 0
    # (the shown fit is normally among those kept: no second hash of its response)
    current = next((m for m in models if m.key == outcome.request.key), None)
    if current is None:
        current = adapter.evidence(outcome)
        if current is None:
            return pd.DataFrame(), 0
        # (a fit taken from the cache under another wording of a model kept: that entry is the one shown)
        current = next((m for m in models if m.fingerprint == current.fingerprint), current)
    same = [m for m in models if m.outcome_key == current.outcome_key]
    if not any(m.key == current.key for m in same):
        same.append(current)
    log_ml = np.array([m.log_ml for m in same])
    log_bf, probability = adapter.bayes_factors(log_ml)
    labels = [m.label for m in same]
    for i, m in enumerate(same):  # the same formula on another reading of the columns: say which
        if sum(o.label == m.label and o.fe_p == m.fe_p and o.vcp_p == m.vcp_p for o in same) > 1:
            labels[i] += f" [categorical: {m.categorical.replace(',', ', ') or 'none'}]"
    df = pd.DataFrame({
        "model": [label + (" (shown)" if m.key == current.key else "") for label, m in zip(labels, same)],
        "priors": [f"fe_p {m.fe_p:g}, vcp_p {m.vcp_p:g}" for m in same],
        "parameters": [m.n_params for m in same],
        "log_marginal_likelihood": log_ml,
        "log_bayes_factor": log_bf,
        "posterior_probability": probability,
    }).sort_values("log_marginal_likelihood", ascending=False, kind="stable", ignore_index=True)
    return df, sum(m.outcome_key != current.outcome_key for m in models)


def _groups_also_fixed(res) -> list[str]:
    """Grouping factors (random intercepts) whose levels also have fixed coefficients: a fixed-effect term
    named ``g[...]`` or ``C(g)[...]`` alone (not in an interaction) for a random-effect term ``g``."""
    fe = [str(n) for n in res.fe_names if ":" not in str(n)]
    return [g for g in adapter.re_terms(res) if ":" not in g
            and any(n.startswith((f"{g}[", f"C({g})[")) for n in fe)]


#: the library's advice in the dashboard's words (its methods are chosen in the sidebar)
_DASHBOARD_WORDS = (
    ("Use fit_laplace() (the integrated method)", "Choose the Integrated Laplace method"),
    ("Use fit_laplace() for intervals", "Choose the Integrated Laplace method for intervals"),
    ("use fit_laplace()", "choose the Integrated Laplace method"),
    ("Use fit_map() or fit_vb(), which solve", "Choose the Laplace (MAP) or VB method, which solve"),
    ("Use fit_map() or fit_vb()", "Choose the Laplace (MAP) or VB method"),
    ("use fit_map() or fit_vb()", "choose the Laplace (MAP) or VB method"),
    ("fit_laplace needs", "Integrated Laplace needs"),
    ("fit_laplace could not", "Integrated Laplace could not"),
    ("The response (endog)", "The response"),  # (statsmodels' name, not the dashboard's)
    ("fit_map's and fit_vb's", "the MAP and VB methods'"),
    ("(fit_laplace integrates", "(Integrated Laplace integrates"),
    ("give a wider fe_p (lme4's estimates have no prior)",
     "raise the prior SD of the fixed effects (fe_p; lme4's estimates have no prior)"),
)


def in_dashboard_words(text: str) -> str:
    """A library message with its advice in the dashboard's words (methods, not function calls)."""
    for old, new in _DASHBOARD_WORDS:
        text = text.replace(old, new)
    return text


def _raw_exposure_notes(outcome) -> list[tuple[bool, str]]:
    """``(strong, note)`` for each offset column that enters as it is (the Offset choice, or a typed formula's
    ``offset(column)``) and is all positive: an exposure rather than its logarithm, unless its name says log. Strong
    where its values look like one (whole numbers from 1, or spanning a factor of 3 up to 5 or more: a logarithm
    would rarely be all positive and so spread); else a gentler word (person-years of 0.5 to 5)."""
    request, out = outcome.request, []
    design = getattr(outcome.result.model, "design", None)
    typed = [t.strip("`") for t in getattr(getattr(design, "spec", None), "offset_terms", ())
             if t.strip("`") in request.data.columns]
    for off in dict.fromkeys(([request.offset] if request.offset else []) + typed):
        if off not in request.data.columns or re.search(r"log|ln", off, re.IGNORECASE):
            continue
        v = request.data[off].to_numpy(dtype=float)
        if not (v.size and np.all(v > 0)):
            continue
        where = (f"choose its logarithm, log({quote_column(off)}), under Offset" if off == request.offset
                 else f"write offset(log({quote_column(off)})) in the formula")
        whole = np.all(v >= 1) and np.all(v == np.round(v))
        strong = bool(v.max() >= 5 and (whole or v.max() >= 3.0 * v.min()))
        if strong:
            kind = "whole numbers" if whole else "all positive"
            out.append((True, (f"The offset {off!r} enters the linear predictor as it is, and its values "
                               f"({v.min():g} to {v.max():g}, {kind}) look like an exposure itself: for rates per "
                               f"unit of it, {where}.")))
        else:
            out.append((False, (f"The offset {off!r} enters the linear predictor as it is (values {v.min():.3g} to "
                                f"{v.max():.3g}). If it is an exposure (time, area, population) rather than its "
                                f"logarithm, {where}: a rate per unit of exposure needs the logarithm.")))
    return out


def diagnostics(outcome, n_dropped: int, family: str) -> list[str]:
    """Plain-words warnings for a fit: library warnings, convergence, dropped rows, degenerate SDs, separation."""
    if outcome is None:
        return []
    res = outcome.result
    out = []
    if not adapter.converged(res):
        out.append("The optimizer did not report convergence: treat the numbers with care "
                   "(try the other method or stronger priors).")
    lib_text = " ".join(outcome.warnings).lower()
    for w in outcome.warnings:
        w = in_dashboard_words(w)
        if w not in out:
            out.append(w)
    if n_dropped:
        out.append(f"{n_dropped} rows with missing values in the model's columns were left out.")
    if outcome.request.method == "vb" and not any(w.startswith("Variational Bayes' fixed-effect SDs") for w in out):
        # (its means are good; its SDs are not: benchmarks/ACCURACY.md. The library's note, where it measured
        # how narrow, says it with numbers)
        out.append("Variational Bayes (mean field) gives good means but posterior SDs that are too narrow, the "
                   "fixed effects' often several times: for intervals, choose the Integrated Laplace method.")
    out_exposure = _raw_exposure_notes(outcome)
    raw_exposure = any(strong for strong, _ in out_exposure)
    out += [text for _, text in out_exposure]
    levels = getattr(outcome.request, "response_levels", None)
    if levels is not None:
        out.append(f"The response is text with two levels: {str(levels[1])!r} counts as a success (1), "
                   f"{str(levels[0])!r} as a failure (0).")
    try:
        vt = adapter.vcp_table(res)
        col = "sd_median" if "sd_median" in vt.columns else None
        scale = _component_scales(res.model)
        for k, name in enumerate(vt.index):
            sd = float(vt.loc[name, col]) if col else float(np.exp(vt.loc[name, "mean"]))
            # a slope's SD is per unit of its covariate: judged by its effect on the linear predictor
            # (SD times the covariate's root mean square; grouseticks' height slope 0.014 per metre is
            # 0.5 over heights of about 36)
            if sd * scale[k] < 0.05 and "degenerate" not in lib_text:
                per = ("" if abs(scale[k] - 1.0) < 1e-9 else
                       f" per unit of the covariate, {sd * scale[k]:.3g} on the linear predictor for its typical size")
                mode = " (a degenerate variance mode)" if outcome.request.method == "map" else ""
                out.append(f"The random-effect SD of {name!r} is close to zero ({sd:.3g}{per}): the data show almost "
                           f"no variation between its groups{mode}.")
    except Exception:
        pass
    for g in _groups_also_fixed(res):
        out.append(f"{g!r} is both a categorical fixed effect and a grouping factor: each of its levels has its "
                   "own fixed coefficient, so its random effects have nothing left to explain (they stay near "
                   f"zero, and their SD follows mostly the prior). Keep {g!r} in one of the two roles.")
    try:
        ft = adapter.fe_table(res)
        big = ft.index[(ft["mean"].abs() > 8) | (ft["sd"] > 5)]
        separated = getattr(res.model, "separation", None)  # (the library's warning names those columns)
        big = [b for b in big if separated is None or str(b) not in separated.columns]
        if raw_exposure:  # (the Intercept then offsets the raw exposure: the note above says why, not separation)
            big = [b for b in big if not adapter.is_intercept(b)]
        if len(big):
            words = "success/failure" if family == "binomial" else "zero/non-zero counts"
            out.append("Very large or very uncertain coefficients (" + ", ".join(map(str, big)) +
                       f"): the {words} may be perfectly separated by these predictors; the prior is then "
                       "what keeps them finite.")
    except Exception:
        pass
    return out


class AppState(param.Parameterized):
    """One dashboard session: data, model, fit, and the truth of simulated data."""

    data = param.ClassSelector(class_=DataState)
    spec = param.ClassSelector(class_=ModelSpec)
    fit = param.ClassSelector(class_=FitState)
    errors = param.Dict(default={}, doc="{control: message} for the control that caused a problem.")
    truth = param.Dict(default=None, allow_None=True, doc="Known truth of simulated data (fe, sd, re).")
    view = param.ClassSelector(class_=param.Parameterized, doc="PlotOptions")
    sim = param.ClassSelector(class_=param.Parameterized, doc="SimSettings")
    columns_version = param.Integer(default=0, doc="Incremented after the offered columns changed (views rebuild).")
    replaced_formula = param.String(default="", doc="A typed formula that a column choice (or unticking it) "
                                    "replaced by the built one: kept for restore_formula().")
    debounce = param.Number(default=0.05, doc="Seconds to wait after the last change before a live refit.")
    quiet_fit_seconds = param.Number(default=0.3, doc="A fit shows its progress once it has run this long.")
    live_limit = param.Integer(default=LIVE_FIT_LIMIT)
    progress_seconds = param.Number(default=0.1, doc="A fit's progress is shown at most once in this many seconds.")
    live_seconds = param.Number(default=1.5, doc="A model whose last fit took longer refits only on the Fit button.")

    _SPEC_KEYS = ["response", "trials", "fixed_numeric", "fixed_factors", "groups", "slopes", "offset", "family",
                  "method", "fe_p", "vcp_p", "use_formula", "formula_text", "auto_fit"]
    #: the sidebar's column choices: changing one after typing a formula goes back to the built formula
    _ROLE_KEYS = {"response", "fixed_numeric", "fixed_factors", "groups", "slopes"}

    def __init__(self, **params):
        params.setdefault("data", DataState())
        params.setdefault("spec", ModelSpec())
        params.setdefault("fit", FitState())
        params.setdefault("view", PlotOptions())
        params.setdefault("sim", SimSettings())
        super().__init__(**params)
        self._cache: OrderedDict = OrderedDict()
        self._slow: dict = {}  # model key (see _slow_key) -> seconds of its last fit, if that was slow
        self._generation = 0
        self._busy = False
        self._rerun = False
        self._loading = False
        self._setting_formula = False
        self._changed_note = ""  # said with a running fit's progress: the model changed since it started
        self._trials_before = None  # the trials column the Poisson family set aside
        self.spec.param.watch(self._on_spec_change, self._SPEC_KEYS)
        self.fit.param.watch(self._on_outcome, ["outcome"])
        self.data.param.watch(self._on_roles_change, ["categorical"])

    # ------------------------------------------------------------ data in
    def load_demo(self, name: str, fit: bool = True) -> None:
        # (the file the Data tab downloads, and the reproducing script reads; demo_data/ in the repository)
        self._set_data(load_demo(name), name, DEMOS[name].file, DEMOS[name], truth=None, fit=fit, demo_name=name)

    def load_frame(self, df: pd.DataFrame, name: str = "data", fit: bool = True) -> None:
        self._set_data(df, name, name if name.lower().endswith(".csv") else f"{name}.csv", None, truth=None, fit=fit)

    def load_upload(self, filename: str, content: bytes, fit: bool = True) -> bool:
        """Read an uploaded file; on failure show why next to the upload and keep everything else."""
        try:
            df = read_upload(filename, content)
        except DataInputError as exc:
            self._set_error("data", str(exc))
            return False
        except Exception as exc:  # last resort
            self._set_error("data", f"Could not read {filename!r}: {exc}")
            return False
        self._set_data(df, filename, filename, None, truth=None, fit=fit, upload=filename)
        return True

    def load_simulation(self, sim: adapter.Simulated, fit: bool = True) -> None:
        from app.data import DemoSpec

        demo = DemoSpec("simulated", "", sim.response, sim.family, sim.fixed, sim.groups, trials=sim.trials)
        truth = {"fe": sim.truth_fe, "sd": sim.truth_sd, "re": sim.truth_re}
        self._set_data(sim.data, "simulated", "simulated.csv", demo, truth=truth, fit=fit)

    def _set_data(self, df, name, source, demo, truth, fit: bool, demo_name: str = "", upload: str = "") -> None:
        self._loading = True
        self._trials_before = None
        try:
            self.data.set_frame(df, name, source, demo=demo_name, upload=upload)
            self._setting_formula = True
            self.spec.update_columns(self.data, demo)
            self._setting_formula = False
            if demo is None:
                self._guess_roles()
            self.truth = truth
            self.fit.param.update(comparison={}, models=[])
            self.errors = {}
            self.replaced_formula = ""  # (another data set's columns)
        finally:
            self._loading = False
        self.columns_version += 1
        if fit:
            self.request_fit(immediate=True)

    def _guess_roles(self) -> None:
        """For uploaded data: a first response and grouping factor so the user sees something quickly."""
        spec, data = self.spec, self.data
        df, n = data.df, len(data.df)
        rownum = {c for c in data.numeric_columns if _row_numbers(as_numeric(df[c]))}  # R's write.csv row names
        filled = {c for c in data.columns if df[c].notna().any()}  # (an empty column is no candidate for any role)
        num = [c for c in data.numeric_columns if c not in rownum and c in filled]
        cat = [c for c in data.categorical_columns if c in filled]
        codes = [c for c in num if _integer_codes(as_numeric(df[c]))]  # herd 1..15: a factor stored as numbers
        binary = [c for c in num if set(pd.unique(df[c].dropna())) <= {0, 1}]
        binary += [c for c in cat if binary_levels(df[c]) is not None]  # yes/no, True/False
        # counts: whole numbers from 0, not factor codes (a decimal column is an exposure or a measurement)
        whole = [c for c in num if _whole_nonnegative(as_numeric(df[c]))]
        counts = [c for c in whole if c not in codes] or whole or [c for c in num if c not in codes] or num
        response = binary[0] if binary else (counts[0] if counts else (data.columns[0] if data.columns else None))
        fam = "binomial" if response in binary else "poisson"
        # the grouping factor: of the factors with 3 to n/2 levels, the one with most (herds rather than
        # periods, subjects rather than items' types), else one with two levels
        levels = {c: df[c].nunique() for c in cat + codes if c != response}
        wide = [c for c, k in levels.items() if 3 <= k <= n // 2]
        groups = ([max(wide, key=levels.get)] if wide else [c for c, k in levels.items() if 1 < k < n][:1])
        spec.param.update(response=response, family=fam, groups=groups, fixed_numeric=[], fixed_factors=[],
                          trials=NONE, offset=NONE, slopes=[])
        spec.formula_text = spec.built_formula()

    def _on_roles_change(self, *_):
        self._mark_comparison()
        if self._loading:
            return
        self._loading = True
        try:
            self.spec.refresh_roles(self.data)
        finally:
            self._loading = False
        self.columns_version += 1
        self.request_fit()

    # ------------------------------------------------------------ fitting
    def _on_spec_change(self, *events):
        self._mark_comparison()
        if self._loading:
            return
        if self._setting_formula:
            return
        names = {e.name for e in events}
        spec = self.spec
        if "family" in names and spec.family == "poisson" and spec.trials != NONE:
            self._trials_before = spec.trials  # back to binomial brings it back
            spec.trials = NONE  # Poisson has no trials (the watcher fires again)
            return
        if ("family" in names and spec.family == "binomial" and spec.trials == NONE
                and self._trials_before in spec.param.trials.objects):
            spec.trials, self._trials_before = self._trials_before, None  # (the watcher fires again)
            return
        if spec.use_formula and names & self._ROLE_KEYS:
            typed = spec.formula_text.strip()  # (restore_formula brings it back, unless the sidebar builds it)
            self.replaced_formula = typed if _compact(typed) != _compact(spec.built_formula()) else ""
            spec.use_formula = False  # the latest choice wins: the sidebar's columns (the watcher fires again)
            return
        if spec.use_formula:
            self.replaced_formula = ""
        elif (names == {"use_formula"} and spec.formula_text.strip()
              and _compact(spec.formula_text) != _compact(spec.built_formula())):
            self.replaced_formula = spec.formula_text.strip()  # unticked by hand: the built formula replaces it
        if names == {"formula_text"} and not spec.use_formula and spec.formula_text.strip() != spec.built_formula():
            spec.use_formula = True  # the user typed a formula: use it (the watcher fires again)
            return
        if not spec.use_formula and names - {"formula_text", "fe_p", "vcp_p", "method"}:
            self._setting_formula = True
            try:
                spec.formula_text = spec.built_formula()
            finally:
                self._setting_formula = False
        self.request_fit()

    def restore_formula(self) -> None:
        """Fit the typed formula that a column choice replaced (:attr:`replaced_formula`) again."""
        if self.replaced_formula:
            text, self.replaced_formula = self.replaced_formula, ""
            self.spec.param.update(formula_text=text, use_formula=True)

    def _on_outcome(self, event):
        res = self.fit.result
        if res is None:
            return
        terms = adapter.re_terms(res)
        self.view.param.re_term.objects = terms
        if self.view.re_term not in terms:
            self.view.re_term = terms[0] if terms else None

    def _simulation_args(self) -> tuple:
        s = self.sim
        return (s.family, s.n_groups, s.group_size, s.intercept, s.slope, s.sd, s.seed)

    def simulate(self, fit: bool = True) -> None:
        """Teaching mode: draw data with the truth in ``sim`` and fit it."""
        self._load_drawn(self._draw(), fit)

    async def simulate_async(self, fit: bool = True) -> None:
        """:meth:`simulate` with the drawing in a worker thread (millions of rows take a second): the session
        keeps answering meanwhile."""
        self._load_drawn(await asyncio.to_thread(self._draw), fit)

    def _draw(self):
        """The simulated data set, or the exception that stopped the drawing (returned, not raised: the
        message is set on the session's own thread, :meth:`_load_drawn`)."""
        try:
            return adapter.simulate(*self._simulation_args())
        except Exception as exc:
            return exc

    def _load_drawn(self, drawn, fit: bool) -> None:
        if isinstance(drawn, Exception):
            self._set_error("teach", f"Could not simulate: {drawn}")
        else:
            self.load_simulation(drawn, fit=fit)

    def _set_error(self, key: str, message: str) -> None:
        errors = dict(self.errors)
        errors[key] = message
        self.errors = errors

    def _data_key(self) -> str:
        """The data as a fit sees them: the version and the columns treated as categorical."""
        return f"{self.data.version}:{','.join(self.data.categorical)}"

    def _request(self, data=None, response_levels=None) -> adapter.FitRequest:
        """The fit of the current spec on ``data`` (the prepared frame; None for its key alone)."""
        s = self.spec
        # (a formula typed over several lines, on one: it is shown in the status line, labels and the snippet)
        formula = re.sub(r"\s*[\r\n]+\s*", " ", s.formula()).strip()
        return adapter.FitRequest(data=data, data_key=self._data_key(), formula=formula, family=s.family,
                                  method=s.method, trials=None if s.trials == NONE else s.trials,
                                  offset=None if s.offset == NONE else s.offset, fe_p=float(s.fe_p),
                                  vcp_p=float(s.vcp_p), response_levels=response_levels)

    def _current_key(self) -> tuple:
        """:attr:`adapter.FitRequest.key` of the current data and spec (without validating them)."""
        return self._request().key

    def _slow_key(self, request=None):
        """The model a fit time belongs to: of ``request``, or of the current spec."""
        r = request or self._request()
        return (self.data.version, r.formula, r.family, r.method, r.trials, r.offset)

    def is_live(self) -> bool:
        """Refit live: auto-fit on, the model size (:func:`problem_size`) within the live limit, and this
        model's last fit was quick."""
        return (self.spec.auto_fit and problem_size(self.spec, self.data) <= self.live_limit
                and self._slow_key() not in self._slow)

    def _not_live_reason(self) -> str:
        if not self.spec.auto_fit:
            return "live refits are switched off"
        if self._slow_key() in self._slow:
            return (f"its last fit took {self._slow[self._slow_key()]:.1f} s; live refits are for fits under "
                    f"{self.live_seconds:g} s")
        return f"the model size {problem_size(self.spec, self.data):,} is above the live limit {self.live_limit:,}"

    def make_request(self) -> adapter.FitRequest | None:
        """Validate; on success the cleaned data and spec, frozen. On failure, errors are set and None returned."""
        errors = validate(self.spec, self.data)
        # a failed upload or simulation stays visible until the next successful load
        self.errors = {**{k: v for k, v in self.errors.items() if k in ("data", "teach", "link")}, **errors}
        if errors:
            return None
        df, n_dropped, rows = prepare_data(self.spec, self.data)
        self.fit.n_dropped = n_dropped
        response = formula_parts(self.spec.formula())[0]
        levels01 = (binary_levels(self.data.df[response]) if self.spec.family == "binomial"
                    and response in self.data.columns else None)
        return dataclasses.replace(self._request(df, levels01), rows=rows)

    def request_fit(self, immediate: bool = False) -> None:
        """Called after any change: live refit (debounced) for small models, else mark the result stale."""
        request = self.make_request()
        if request is None:
            self._invalid()
            return
        # a model fitted before (its result cached) is shown at once, live or not
        if not (immediate or self.is_live() or request.key in self._cache):
            if self._busy and self.fit.status == "fitting":
                # the running fit keeps its status and progress (out of date, they hid a fit still running, and
                # after it the model queued); the note stays with its progress, and its end judges the model then
                # (_fit_done)
                self._changed_note = (f" The model was changed during this fit: press Fit model after it to fit "
                                      f"the new one ({self._not_live_reason()}).")
                self.fit.message = self.fit.message.split(" The model was changed")[0] + self._changed_note
                return
            self.fit.param.update(status="stale", message=f"The model changed: press Fit model to refit "
                                  f"({self._not_live_reason()}).")
            return
        self._generation += 1
        generation = self._generation
        delay = 0 if immediate else self.debounce
        if immediate:
            self.fit.param.update(status="waiting", message="Refitting...")
        param.parameterized.async_executor(lambda: self._debounced_fit(generation, delay))

    async def _debounced_fit(self, generation: int, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        if generation != self._generation:
            return  # a newer change superseded this one
        await self.fit_async()

    async def fit_async(self) -> None:
        """Fit off the event loop (worker thread); the session keeps answering meanwhile."""
        if self._busy:
            self._rerun = True
            return
        request = self.make_request()
        if request is None:
            self._invalid()
            return
        self._busy = True
        self._changed_note = ""  # (a change made during the previous fit: judged when it ended)
        try:
            outcome = self._cache.get(request.key)
            if outcome is None:
                task = asyncio.ensure_future(asyncio.to_thread(adapter.fit, request, self._progress_reporter(request)))
                # Quick (live) refits swap the result in without a "fitting" flash; longer ones show progress.
                done, _ = await asyncio.wait({task}, timeout=self.quiet_fit_seconds)
                if not done:
                    self.fit.param.update(status="fitting", progress=-1, message=(
                        f"Fitting {request.formula} ({adapter.method_label(request.method)})..."))
                try:
                    outcome = await task
                except Exception as exc:
                    self._fit_failed(exc)
                    return
            self._fit_done(outcome)
        finally:
            self._busy = False
            self.fit.progress = 0
        if self._rerun:
            self._rerun = False
            await self.fit_async()

    def _progress_reporter(self, request):
        """A callback for the fitting thread: hands the fraction (at most once in :attr:`progress_seconds`) to the
        session's event loop, which shows it once the fit has been running visibly."""
        loop = asyncio.get_running_loop()
        last = {"t": 0.0, "pct": -1}
        label = f"Fitting {request.formula} ({adapter.method_label(request.method)})"

        def show(pct, message):
            if self.fit.status == "fitting":
                self.fit.param.update(progress=pct, message=f"{label}: {message} ({pct} %){self._changed_note}")

        def report(fraction, message):
            now, pct = time.monotonic(), int(100 * fraction)
            if pct != last["pct"] and (now - last["t"] >= self.progress_seconds or pct == 100):
                last.update(t=now, pct=pct)
                loop.call_soon_threadsafe(show, pct, message)

        return report

    def _invalid(self) -> None:
        kept = " The previous result is still shown." if self.fit.outcome is not None else ""
        self.fit.param.update(status="error", message="The model cannot be fitted as specified: see the message "
                              "next to the control in the sidebar." + kept)

    def fit_now(self) -> bool:
        """Synchronous fit (tests, notebooks, scripts). Returns True on success."""
        request = self.make_request()
        if request is None:
            return False
        outcome = self._cache.get(request.key)
        if outcome is None:
            try:
                outcome = adapter.fit(request)
            except Exception as exc:
                self._fit_failed(exc)
                return False
        self._fit_done(outcome)
        return True

    def _fit_done(self, outcome) -> None:
        if outcome.request.data_key.startswith(f"{self.data.version}:"):
            key = self._slow_key(outcome.request)
            if outcome.seconds > self.live_seconds:
                self._slow[key] = outcome.seconds
            else:  # quick again (e.g. the first fit was slowed by other sessions): live again
                self._slow.pop(key, None)
        self._cache[outcome.request.key] = outcome
        self._cache.move_to_end(outcome.request.key)
        while len(self._cache) > 12:
            self._cache.popitem(last=False)
        self._record_evidence([outcome])
        errors = dict(self.errors)
        errors.pop("fit", None)
        self.errors = errors
        res = outcome.result
        conv = "converged" if adapter.converged(res) else "NOT converged"
        self.fit.param.update(
            outcome=outcome, status="done", error="",
            warnings=diagnostics(outcome, self.fit.n_dropped, outcome.request.family)
            + ([self.data.note] if self.data.note else []),
            message=(f"{adapter.method_label(outcome.request.method)} fit of "
                     f"{adapter.model_label(outcome.request.formula, outcome.request.offset)}"
                     f" ({outcome.request.family}) on {len(outcome.request.data):,} rows: {conv} in "
                     f"{outcome.seconds:.2f} s."))
        if not self._rerun and outcome.request.key != self._current_key():
            # the model changed while this fit ran (a change that does not refit live only marked the
            # result out of date, which the finished fit must not overwrite)
            self.request_fit()


    def _fit_failed(self, exc: Exception) -> None:
        if isinstance(exc, adapter.MglmError):
            msg = f"The model could not be fitted: {in_dashboard_words(str(exc))}"
        else:
            msg = (f"The model could not be fitted ({type(exc).__name__}: {exc}). "
                   "Check the chosen columns; the previous result is still shown.")
        key = "formula" if "formula" in type(exc).__name__.lower() else "fit"
        self._set_error(key, msg)
        self.fit.param.update(status="error", error=msg,
                              message="Fit failed; showing the previous result." if self.fit.outcome else "Fit failed.")

    # ------------------------------------------------------------ comparison
    #: model comparison: at most this many models are kept (the oldest go first)
    MAX_MODELS = 20

    def _record_evidence(self, outcomes) -> None:
        """Keep the log marginal likelihood of each integrated-Laplace fit among ``outcomes`` made on the current
        data (a refit of the same model replaces its entry)."""
        models = list(self.fit.models)
        for oc in outcomes:
            if not oc.request.data_key.startswith(f"{self.data.version}:"):
                continue
            ev = adapter.evidence(oc)
            if ev is not None:  # (the same model, typed otherwise: its latest fit and wording)
                models = [m for m in models if m.key != ev.key and m.fingerprint != ev.fingerprint] + [ev]
        if models != self.fit.models:
            self.fit.models = models[-self.MAX_MODELS:]

    def clear_models(self) -> None:
        """Forget the models kept for comparison."""
        self.fit.models = []

    def _mark_comparison(self) -> None:
        """Mark the comparison out of date once the model differs from the one it fitted (any method)."""
        comparison = self.fit.comparison
        if comparison:
            req = next(iter(comparison.values())).request
            current = dataclasses.replace(self._request(), method=req.method).key == req.key
        else:
            current = True
        if current != self.fit.compare_current:
            self.fit.compare_current = current

    def compare_methods(self, methods=None) -> dict:
        """Fit the current model with several methods (synchronously); {method: FitOutcome}."""
        base = self.make_request()
        if base is None:
            return {}
        out = {}
        methods = methods or list(self.spec.param.method.objects.values())
        for m in methods:
            req = dataclasses.replace(base, method=m)
            oc = self._cache.get(req.key) or adapter.fit(req)
            self._cache[req.key] = oc
            out[m] = oc
        return out

    async def compare_async(self, methods=None) -> None:
        methods = methods or list(self.spec.param.method.objects.values())
        self.fit.compare_status = "Fitting " + " and ".join(adapter.method_label(m) for m in methods) + "..."
        try:
            out = await asyncio.to_thread(self.compare_methods, methods)
        except Exception as exc:
            self.fit.compare_status = f"Comparison failed: {exc}"
            return
        if out:
            self.fit.param.update(comparison=out, compare_current=True)
            self._record_evidence(out.values())
            self.fit.compare_status = "  |  ".join(
                f"{adapter.method_label(m)}: {oc.seconds:.2f} s" + (" (see its notes in the table)" if oc.warnings
                                                                   or not adapter.converged(oc.result) else "")
                for m, oc in out.items())
        else:
            self.fit.compare_status = "Fix the model first (see the messages in the sidebar)."


class PlotOptions(param.Parameterized):
    """How results are displayed (not what is fitted)."""

    exp_scale = param.Boolean(default=False, label="Exp scale (odds / rate ratios)")
    include_intercept = param.Boolean(default=True, label="Show intercept")
    re_term = param.Selector(default=None, objects=[], allow_None=True, label="Random-effect term")
    re_search = param.String(default="", label="Search levels")
    re_top_k = param.Integer(default=200, bounds=(5, 5000), label="Show at most (largest |effect|)")


class SimSettings(param.Parameterized):
    """Teaching mode: the truth the user sets before drawing data."""

    family = param.Selector(default="binomial", objects=FAMILIES)
    intercept = param.Number(default=-0.5, bounds=(-3.0, 3.0), step=0.1, label="True intercept")
    slope = param.Number(default=1.0, bounds=(-3.0, 3.0), step=0.1, label="True slope of x")
    sd = param.Number(default=0.8, bounds=(0.0, 3.0), step=0.05, label="True SD of group effects")
    n_groups = param.Integer(default=30, bounds=(2, 5000), label="Number of groups")
    group_size = param.Integer(default=20, bounds=(1, 500), label="Observations per group")
    seed = param.Integer(default=1, bounds=(0, 10**6), label="Random seed")
