"""The one place where the dashboard talks to ``mglm_core``.

Every other module of ``app`` imports from here, so a difference between the
library and the API contract is absorbed in this file only.
"""
from __future__ import annotations

import re

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

import mglm_core as mg
from mglm_core.design import canonical_name

MglmError = getattr(mg, "MglmError", ValueError)

#: label shown in the UI -> name of the method on the model ("fit_<key>")
_METHODS = {"map": "Laplace at the mode (MAP)", "vb": "Variational Bayes (VB)",
            "laplace": "Integrated Laplace"}


def available_methods() -> dict[str, str]:
    """Methods the installed library offers, as {label: key}; integrated Laplace only when present."""
    model_cls = mg.BayesMixedGLM
    return {label: key for key, label in _METHODS.items() if hasattr(model_cls, f"fit_{key}")}


def method_label(key: str) -> str:
    return _METHODS.get(key, key)


def check_formula(text: str, columns) -> None:
    """Validate a typed formula with the library's safe parser (raises MglmError)."""
    from mglm_core.design import check_formula as _check

    _check(text, list(columns))


def is_intercept(term) -> bool:
    """Whether a fixed effect's name is the intercept (the library's ``Intercept``, R's ``(Intercept)``)."""
    return str(term).lower() in ("intercept", "(intercept)")


def _parsed(text: str):
    """The library's :class:`~mglm_core.design.FormulaColumns` of a formula (its safe grammar; nothing is
    evaluated), or None when the text does not parse."""
    from mglm_core.design import formula_columns as _columns
    from mglm_core.errors import FormulaError

    try:
        return _columns(text)
    except FormulaError:
        return None


def formula_columns(text: str) -> tuple[list[str], list[str], list[str], list[str]]:
    """(response columns, fixed-effect columns, grouping factors, random-slope columns) of a formula,
    parsed by the library's safe grammar; all empty when the text does not parse (:func:`offset_columns`: its
    offset terms')."""
    fc = _parsed(text)
    if fc is None:
        return [], [], [], []
    return list(fc.response), list(fc.fixed), list(fc.groups), list(fc.slopes)


def offset_columns(text: str) -> list[str]:
    """The columns of a formula's ``offset(...)`` terms (empty when the text does not parse)."""
    fc = _parsed(text)
    return [] if fc is None else list(fc.offset)


def random_terms(text: str) -> list[tuple[tuple[str, ...], int]]:
    """Each random-effect term's grouping factors and columns per level (intercept and slopes), parsed
    by the library's safe grammar; empty when the text does not parse."""
    fc = _parsed(text)
    return [] if fc is None else list(fc.terms)


@dataclass(frozen=True)
class FitRequest:
    """Everything needed to reproduce one fit (the data are already cleaned)."""

    data: pd.DataFrame = field(repr=False, compare=False)
    data_key: str
    formula: str
    family: str
    method: str
    trials: str | None = None
    offset: str | None = None
    fe_p: float = 2.0
    vcp_p: float = 1.0
    #: a two-level text or True/False response: (level counted 0, level counted 1); None for numbers
    response_levels: tuple | None = None
    #: the positions in the session's data of the rows of ``data`` (the others had missing values)
    rows: object = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> tuple:
        return (self.data_key, self.formula, self.family, self.method, self.trials, self.offset,
                round(self.fe_p, 6), round(self.vcp_p, 6))


@dataclass(frozen=True)
class FitOutcome:
    result: object
    request: FitRequest
    warnings: tuple[str, ...]
    seconds: float


@dataclass(frozen=True)
class ModelEvidence:
    r"""One model's log marginal likelihood :math:`\log p(y)` (an integrated-Laplace fit), with what it
    may be compared against: ``outcome_key`` names the outcome data it explains (family, response and
    trials, row by row; :func:`outcome_key`), ``categorical`` the data's columns read as categories."""

    key: tuple  #: the fit's FitRequest.key
    formula: str
    fe_p: float
    vcp_p: float
    n_params: int  #: fixed effects plus variance components
    log_ml: float
    outcome_key: str
    categorical: str = ""
    offset: str = ""  #: the offset column ("" for none): part of the model, not of the data compared
    #: the fitted model itself (:func:`model_fingerprint`): the same model typed otherwise, or with an unused
    #: column read another way, is one entry
    fingerprint: str = ""

    @property
    def label(self) -> str:
        return model_label(self.formula, self.offset)


def model_label(formula: str, offset: str | None) -> str:
    """A model as the dashboard names it: the formula, with the offset where there is one (models that differ
    only by it read alike without)."""
    if offset and offset_column(offset) == offset:  # (a column: in backticks where no identifier)
        offset = quote_column(offset)
    return formula + (f" + offset({offset})" if offset else "")


def offset_column(choice: str, columns=()) -> str:
    """The column an Offset choice reads: ``size`` for ``size`` and for ``log(size)`` (``log(`my col`)`` too); a
    choice that is itself one of ``columns`` (a column named "log(size)") is that column."""
    if choice not in columns and choice.startswith("log(") and choice.endswith(")"):
        inner = choice[4:-1]
        return inner[1:-1] if inner.startswith("`") and inner.endswith("`") else inner
    return choice


def quote_column(name: str) -> str:
    """A column name as the formula grammar reads it: bare if it is a plain ASCII identifier that is
    not a Python keyword or a formula function, else in backticks."""
    import keyword

    plain = re.fullmatch(r"[A-Za-z_][A-Za-z_0-9]*", name) and not keyword.iskeyword(name)
    return name if plain and name not in ("C", "I", "np") else f"`{name}`"


def outcome_key(outcome: FitOutcome) -> str:
    r"""What the log marginal likelihood of a fit is a density of, as a hash: the library's
    :func:`~mglm_core.comparison.outcomes` of the fitted model (family, response and trials, as the model
    reads them: ``cbind(a, n - a)`` and ``a`` with trials ``n`` alike) and the positions in the session's
    data of the rows it kept. Two models' values of :math:`\log p(y)` compare only when this is equal."""
    family, y, trials, kept = mg.comparison.outcomes(outcome.result.model)
    rows = outcome.request.rows
    if rows is not None and kept is not None:
        rows = np.asarray(rows)[kept]
    return _digest(family, y, trials, rows)


def _digest(text: str, *parts) -> str:
    """A hash of ``text`` and the arrays ``parts`` (each with its length: no two sequences of parts hash alike;
    None for an absent one)."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    digest.update(text.encode())
    for part in parts:
        digest.update(b"none;" if part is None else
                      f"{np.size(part)}:".encode() + np.ascontiguousarray(part, dtype=float).tobytes())
    return digest.hexdigest()


def model_fingerprint(outcome: FitOutcome, outcomes: str) -> str:
    r"""The fitted model as a hash: its outcomes (``outcomes``, the fit's :func:`outcome_key`), the fixed-effect and
    random-effect designs with their names, the components, the offset, the family and the priors. Equal for the
    same model written with other spacing (``(1|herd)``, ``(1 | herd)``), with its powers as ``I(x^2)`` or ``I(x**2)``,
    or fitted after an unused column's reading changed."""
    m = outcome.result.model
    Z = m.exog_vc.tocsr()
    names = [[canonical_name(n) for n in names_] for names_ in (m.fep_names, m.vcp_names, m.vc_names)] + [
        [m.family.name, repr(float(m.fe_p)), repr(float(m.vcp_p))]]
    return _digest(outcomes + repr(names), m.exog, m.ident, Z.indptr, Z.indices, Z.data, m.offset)


def bayes_factors(log_ml):
    """(log Bayes factors against the best, probabilities with equal prior odds) of log marginal likelihoods."""
    return mg.comparison.bayes_factors(log_ml)


def evidence(outcome: FitOutcome) -> ModelEvidence | None:
    """The log marginal likelihood of an integrated-Laplace fit (None for the other methods: the MAP
    fit has none, VB's ELBO is only a lower bound)."""
    res, req = outcome.result, outcome.request
    value = res.log_marginal_likelihood
    if req.method != "laplace" or value is None or not np.isfinite(value):
        return None
    outcomes = outcome_key(outcome)
    return ModelEvidence(key=req.key, formula=req.formula, fe_p=req.fe_p, vcp_p=req.vcp_p,
                         n_params=len(res.fe_mean) + len(res.vcp_mean), log_ml=float(value),
                         outcome_key=outcomes, categorical=req.data_key.partition(":")[2],
                         offset=req.offset or "", fingerprint=model_fingerprint(outcome, outcomes))


def fit(request: FitRequest, progress=None) -> FitOutcome:
    """Build the model and fit it; errors propagate.

    The library's messages come from the result (``result.warnings``: the fit's and the data's),
    not from capturing warnings: ``warnings.catch_warnings`` swaps process-wide state and is not
    safe in the worker threads where sessions fit concurrently. ``progress(fraction, message)``
    is called from the fitting thread as the fit goes on."""
    t0 = time.perf_counter()
    model = mg.BayesMixedGLM.from_formula(
        request.formula, vc_formulas=None, data=request.data, family=request.family,
        trials=request.trials, offset=request.offset, vcp_p=request.vcp_p, fe_p=request.fe_p)
    result = getattr(model, f"fit_{request.method}")(callback=progress)
    messages = tuple(dict.fromkeys(str(m) for m in (getattr(result, "warnings", ()) or ())))
    return FitOutcome(result=result, request=request, warnings=messages, seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------- result access
def fe_table(res) -> pd.DataFrame:
    return res.fe_table()


def vcp_table(res) -> pd.DataFrame:
    return res.vcp_table()


def vcp_density(res, name: str, n: int = 200) -> pd.DataFrame:
    return res.vcp_density(name, n=n)


def random_effects(res, term: str | None = None) -> pd.DataFrame:
    df = res.random_effects(term, intervals=True)
    return df


def re_terms(res) -> list[str]:
    return list(res.vcp_names)


def converged(res) -> bool:
    return bool(getattr(res, "converged", True))


def result_method(res) -> str:
    return str(getattr(res, "method", ""))


# ---------------------------------------------------------------- simulation
@dataclass(frozen=True)
class Simulated:
    data: pd.DataFrame
    formula: str
    family: str
    truth_fe: dict
    truth_sd: dict
    truth_re: dict  # level label -> true random effect (may be empty)
    response: str
    fixed: tuple
    groups: tuple
    trials: str | None = None


def load_dataset(name: str):
    """A bundled data set with R's factor level order (``mglm_core.datasets.load``)."""
    from mglm_core.datasets import load

    return load(name)


def simulate(family: str, n_groups: int, group_size: int, intercept: float, slope: float,
             sd: float, seed: int) -> Simulated:
    """Draw a data set with known truth via ``mglm_core.simulate.simulate_glmm``."""
    from mglm_core.simulate import simulate_glmm

    sim = simulate_glmm(family=family, n_groups=int(n_groups), group_size=int(group_size),
                        fe={"Intercept": float(intercept), "x": float(slope)}, sd=float(sd), seed=int(seed))
    groups = tuple(sim.sd)
    truth_re = {f"{term}[{level}]": float(v) for term, series in sim.re.items() for level, v in series.items()}
    return Simulated(data=sim.data.copy(), formula=sim.formula, family=family, truth_fe=dict(sim.fe),
                     truth_sd=dict(sim.sd), truth_re=truth_re, response="y", fixed=("x",), groups=groups,
                     trials=sim.trials)


# ---------------------------------------------------------------- reproducible snippet
def _numeric_order(levels: list[str]) -> bool:
    """Whether ``levels`` are numbers' texts in increasing order of the numbers."""
    try:
        values = [float(v) for v in levels]
    except ValueError:
        return False
    return values == sorted(values)


def snippet(request: FitRequest, data_source: str, reader: str | None = None) -> str:
    """Python code that refits the same model with mglm_core outside the dashboard; ``reader`` is the
    pandas call that reads ``data_source`` (``pd.read_csv(data_source)`` by default)."""
    args = [f"    {request.formula!r},", "    data=df,", f"    family={request.family!r},"]
    if request.trials:
        args.append(f"    trials={request.trials!r},")
    if request.offset:
        args.append(f"    offset={request.offset!r},")
    args.append(f"    fe_p={request.fe_p!r},")
    args.append(f"    vcp_p={request.vcp_p!r},")
    cat_cols = [c for c in request.data.columns if isinstance(request.data[c].dtype, pd.CategoricalDtype)]
    lines = ["import pandas as pd", "import mglm_core as mg", "",
             "# the data: the uploaded file, or the dashboard's Data tab's download, beside this script",
             f"df = {reader or f'pd.read_csv({data_source!r})'}"]
    if request.response_levels is not None:
        from mglm_core.design import formula_columns

        resp = formula_columns(request.formula).response[0]
        one = str(request.response_levels[1])
        lines.append(f"df[{resp!r}] = (df[{resp!r}].astype(str) == {one!r}).astype(float).where(df[{resp!r}].notna())"
                     f"  # {one!r} = 1")
    for c in cat_cols:
        levels = [str(x) for x in request.data[c].cat.categories]
        # the dashboard's order of the levels (the first is a fixed factor's reference): written out, or, for many
        # levels, as the rule that gives it (text order, or numbers' order: codes 5..44 sort '10' first as text)
        if len(levels) > 30 and levels == sorted(levels):
            lines.append(f"df[{c!r}] = df[{c!r}].astype(str).astype('category')")
        elif len(levels) > 30 and _numeric_order(levels):
            lines.append(f"df[{c!r}] = pd.Categorical(df[{c!r}].astype(str), "
                         f"categories=sorted(df[{c!r}].dropna().astype(str).unique(), key=float))")
        else:
            lines.append(f"df[{c!r}] = pd.Categorical(df[{c!r}].astype(str), categories={levels!r})")
    lines += ["", "model = mg.BayesMixedGLM.from_formula(", *args, ")",
              f"res = model.fit_{request.method}()", "print(res.summary())",
              "print(res.fe_table())", "print(res.vcp_table())"]
    return "\n".join(lines) + "\n"
