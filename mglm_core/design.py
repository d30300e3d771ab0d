r"""Formulas -> design matrices for Bayesian GLMMs.

The model (notation used across mglm)::

    linear predictor   eta = offset + X @ fe + Z @ vc
    random effects     vc[j] ~ N(0, exp(vcp[ident[j]])**2)

* ``X`` (``exog``, dense, n x p): the fixed-effect design, built by formulaic from the
  right-hand side of the formula (without its random-effect terms).
* ``Z`` (``exog_vc``, ``scipy.sparse.csr_matrix``, n x q): the random-effect design,
  one block of columns per *variance component*. ``ident[j]`` (0..k-1) says which
  component column ``j`` belongs to; all columns of one component share one standard
  deviation ``exp(vcp[k])``.

Random-effect blocks of ``Z``
-----------------------------
For a grouping factor ``g`` with levels ``l_1..l_m`` (integer codes ``c_i`` in 0..m-1)

* ``(1 | g)`` -- random intercept, component ``g``, columns ``g[l_1] .. g[l_m]``::

      Z[i, j] = 1        if j == c_i      (one nonzero per row)
                0        otherwise

* ``(0 + x | g)`` -- random slope of the numeric column ``x``, component ``g:x``,
  columns ``g:x[l_1] ..``::

      Z[i, j] = x_i      if j == c_i

  The slope may also be a one-column transform of numeric columns (``(0 + log(w) | g)``,
  ``scale(w)``, ``I(w^2)``, the calls of the safe grammar but ``bs``/``poly``), component ``g:log(w)``;
  formulaic evaluates it, and keeps a stateful transform's fitted centre and scale for new data.
  A factor is not a slope: its levels within groups are ``(1 | g:f)``.
* ``(1 | g:h)`` -- intercept for every observed combination of ``g`` and ``h``,
  component ``g:h``, columns ``g:h[a:b]`` (combinations in the order of ``g``'s levels,
  then ``h``'s).
* ``(1 | g/h)`` -- nesting, expanded to ``(1 | g) + (1 | g:h)``.
* ``offset(log(n))`` -- lme4's offset term (not a random-effect block): one numeric column, evaluated
  like a transform slope and added to the offset (with an ``offset=`` column, expression or array).
* ``(1 + x | g)`` and ``(x | g)`` -- in lme4 these are *correlated* intercept and slope.
  mglm only has independent variance components, so both are expanded to
  ``(1 | g) + (0 + x | g)`` (two components ``g`` and ``g:x``), which is exactly lme4's
  double-bar ``(x || g)``.

Each block is built directly in CSR form from the integer codes (``indptr =
arange(n + 1)``, ``indices = codes``, ``data = 1`` or ``x``): memory is proportional to
the number of nonzeros (n per component) and no dense n x q array is ever made.

Levels are the values present in the data (after dropping rows with missing values):
in category order for a pandas ``Categorical``, otherwise sorted (numbers numerically,
strings lexicographically). Labels are ``str(value)``.

statsmodels' ``vc_formulas``
----------------------------
``vc_formulas={"herd": "0 + C(herd)"}`` gives one component per key, named by the key.
The common patterns ``0 + C(g)``, ``0 + g`` (categorical ``g``), ``0 + C(g):x`` and
``0 + x:C(g)`` are built sparse as above with statsmodels'/patsy's column names
(``C(herd)[1]``, ``C(g)[a]:x``, ``x:C(g)[a]``). Anything else (e.g. statsmodels' doc
example ``"0 + C(Village)*year_cen"``) is materialized by formulaic with
``output="sparse"``, whose column names and values match patsy's.

Safe grammar
------------
Formula text is never evaluated as arbitrary Python: :func:`check_formula` tokenizes
it and allows only data columns (bare or backtick-quoted), numbers, the operators
``+ - * / ** ^ : ~``, parentheses, ``|``/``||`` inside random-effect terms, and the
functions ``C, I, Q, log, log2, log10, exp, sqrt, log1p, center, scale, standardize,
bs, poly`` and ``np.log, np.log2, np.log10, np.exp, np.sqrt, np.log1p`` (plus ``cbind`` on
the left-hand side). Inside ``C(...)`` the second argument may name a contrast
(``Treatment, Sum, Helmert, Poly, Diff`` or ``contr.treatment`` ... ``contr.diff``, bare or
called) or be ``levels=[...]``. Only the treatment contrast takes an option, its reference level, as
patsy's ``Treatment('a')`` / ``Treatment(reference='a')`` or ``contr.treatment(base='a')`` (formulaic's:
the level itself, not R's position); a level the column lacks is an error that lists its levels, and
``levels=[...]`` must list exactly the column's values (formulaic would count a value left out as the
reference level).
``Q('a column')`` takes exactly one string, which must name a column. ``bs(x, df=4)`` and
``poly(x, degree=2)`` take the keywords ``df`` and ``degree``, each a whole number from 1 to 30
written as a literal. formulaic then evaluates the checked text in a namespace holding only those
functions.
"""

from __future__ import annotations

import itertools
import keyword
import re
import threading
import types
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .checks import check_distinct_columns
from .errors import DataError, DataWarning, FormulaError

#: Held while this module swaps the process's warning filters (``warnings.catch_warnings`` saves and restores the
#: one global list: two threads building formulas at once, as the dashboard's sessions do, could restore each
#: other's filters out of order and leave formulaic's warnings ignored for good).
_WARNINGS_LOCK = threading.RLock()

__all__ = ["Design", "DesignSpec", "FormulaColumns", "VCTerm", "build_design", "check_formula", "formula_columns"]


# ---------------------------------------------------------------------------
# tokenizer and safe-grammar check
# ---------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
   |(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
   |(?P<name>[A-Za-z_][A-Za-z_0-9]*)
   |(?P<backtick>`[^`]*`)
   |(?P<string>'[^'\\\n]*'|"[^"\\\n]*")
   |(?P<op>\*\*|\|\||[-+*/:~|(),=\[\]^.])
    """,
    re.VERBOSE,
)

#: functions allowed anywhere in a formula (formulaic provides them)
FORMULA_FUNCTIONS = ("C", "I", "Q", "log", "log2", "log10", "exp", "sqrt", "log1p", "center", "scale",
                     "standardize", "bs", "poly")
#: functions allowed as ``np.<name>``
NUMPY_FUNCTIONS = ("log", "log2", "log10", "exp", "sqrt", "log1p")
#: contrasts allowed as the second argument of ``C(...)`` (formulaic's; bare or called)
_CONTRAST_FUNCTIONS = ("Treatment", "Sum", "Helmert", "Poly", "Diff")
_CONTR_NAMES = ("treatment", "sum", "helmert", "poly", "diff")  # ``contr.<name>``
#: the keyword each contrast takes (the reference level), as formulaic spells it: patsy's ``Treatment(reference=)``
#: and R's ``contr.treatment(base=)``; the other contrasts take no options here
_CONTRAST_KEYWORDS = {"Treatment": "reference", "contr.treatment": "base"}
#: spline and polynomial bases, with their keywords (each a literal whole number in 1..30)
_BASIS_FUNCTIONS = ("bs", "poly")
_BASIS_KEYWORDS = ("df", "degree")
_BASIS_MAX = 30

# the only namespace formulaic evaluates factors in (besides its own transforms)
_SAFE_CONTEXT = {
    "np": types.SimpleNamespace(**{f: getattr(np, f) for f in NUMPY_FUNCTIONS}),
    **{f: getattr(np, f) for f in NUMPY_FUNCTIONS},
}


@dataclass(frozen=True)
class _Token:
    kind: str  # "number" | "name" | "backtick" | "string" | "op"
    text: str
    start: int
    end: int

    @property
    def column(self) -> str:
        """Column name for a name or backtick token."""
        return self.text[1:-1] if self.kind == "backtick" else self.text


def _tokenize(formula: str) -> list[_Token]:
    tokens = []
    pos = 0
    while pos < len(formula):
        m = _TOKEN_RE.match(formula, pos)
        if m is None:
            ch = formula[pos]
            if ch in "`'\"":
                raise FormulaError(f"formula: unterminated quote {ch!r} at position {pos}", formula, pos)
            hint = ("; a column name with letters outside ASCII goes in backticks (`hérd`)" if ch.isalpha()
                    else "")
            raise FormulaError(
                f"formula: character {ch!r} is not allowed at position {pos}{hint}", formula, pos
            )
        kind = m.lastgroup
        if kind != "ws":
            tokens.append(_Token(kind, m.group(), m.start(), m.end()))
        pos = m.end()
    return tokens


def _err(msg: str, formula: str, tok: _Token, hint: str = "") -> FormulaError:
    return FormulaError(
        f"formula: {msg} at position {tok.start}{hint}", formula, tok.start, tok.end - tok.start
    )


def _unknown_column(formula: str, tok: _Token, columns: Sequence[str]) -> FormulaError:
    shown = ", ".join(map(str, list(columns)[:30])) + (", ..." if len(columns) > 30 else "")
    return FormulaError(
        f"formula: unknown column {tok.column!r} at position {tok.start}; columns are: {shown}",
        formula,
        tok.start,
        tok.end - tok.start,
    )


def _allowed_functions(name: str = "") -> str:
    """The functions a formula may call (with lme4's ``offset`` term, and ``cbind`` on the left), led by the
    nearest to a misspelled ``name``."""
    import difflib

    known = FORMULA_FUNCTIONS + ("offset", "cbind")
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.7) if name else []
    return ((f"; did you mean {near[0]}()?" if near else "") + "; allowed functions are: "
            + ", ".join(FORMULA_FUNCTIONS + tuple(f"np.{f}" for f in NUMPY_FUNCTIONS))
            + ", and offset(...) as a term of the right-hand side (cbind(...) on the left)")


def _check_tokens(
    formula: str, tokens: Sequence[_Token], columns: Sequence[str], allow_cbind: bool = False,
    allow_offset: bool = False,
) -> None:
    """Token-level whitelist (see the module docstring). Raises FormulaError. ``allow_offset``: lme4's
    ``offset(...)`` terms (a two-sided formula's right-hand side, outside any bracket)."""
    colset = set(columns)
    # stack of open brackets: [kind, token, commas seen] with kind in
    # "group" | "C" | "contrast" | "call" | "Q" | "basis" | "list"
    stack: list[list] = []
    i = 0
    n = len(tokens)

    def nxt(k: int) -> _Token | None:
        return tokens[k] if k < n else None

    def inside(*kinds: str) -> bool:
        return bool(stack) and stack[-1][0] in kinds

    def unshadowed(tok: _Token) -> None:
        """formulaic looks names up in the data first: a column named like a function hides it."""
        if tok.text in colset:
            raise _err(f"the data column {tok.text!r} has the name of a formula function and hides it; rename the "
                       f"column (e.g. df.rename(columns={{{tok.text!r}: {tok.text + '_'!r}}}))", formula, tok)

    def contrast_argument() -> bool:  # C(x, <here>)
        return inside("C") and stack[-1][2] == 1

    def contrast(tok: _Token, opening: _Token | None, width: int, name: str) -> int:
        """A contrast's ``width`` tokens, bare (``Sum``) or called (``Sum(``: its bracket opened, ``name`` kept
        for its options)."""
        if opening is not None and opening.text == "(":
            stack.append(["contrast", tok, 0, name])
            return width + 1
        return width

    def contrast_option(tok: _Token) -> None:
        """Inside a called contrast: only Treatment and contr.treatment take an option (the reference level)."""
        name = stack[-1][3]
        if name not in _CONTRAST_KEYWORDS and not (tok.kind == "op" and tok.text == ")"):
            raise _err(f"{name}() takes no options here (only Treatment(reference=...) and contr.treatment(base=...) "
                       f"name a reference level); write {name} or {name}()", formula, tok)

    while i < n:
        tok = tokens[i]
        after = nxt(i + 1)
        if inside("contrast"):
            contrast_option(tok)
        if tok.kind == "name":
            name = tok.text
            if name.startswith("__"):
                raise _err(f"dunder name {name!r} is not allowed", formula, tok)
            if keyword.iskeyword(name):
                if name == "as" and after is not None and after.text == "." and nxt(i + 2) is not None:
                    # (R's as.factor(x), as.numeric(x): no Python keyword meant)
                    conv = nxt(i + 2).text
                    raise _err(f"R's as.{conv}() is not a formula function here", formula, tok,
                               " (R's as.factor(x) is C(x) here)" if conv == "factor" else
                               " (a numeric column is used as it is)" if conv in ("numeric", "integer", "double")
                               else _allowed_functions(conv))
                raise _err(f"keyword {name!r} is not allowed", formula, tok)
            if after is not None and after.text == ".":
                attr = nxt(i + 2)
                call = nxt(i + 3)
                dotted = f"{name}.{attr.text if attr is not None else ''}"
                ok = attr is not None and attr.kind == "name"
                if ok and name == "contr" and attr.text in _CONTR_NAMES and contrast_argument():
                    unshadowed(tok)
                    i += contrast(tok, call, 3, dotted)
                    continue
                if ok and call is not None and call.text == "(" and name == "np" and attr.text in NUMPY_FUNCTIONS:
                    unshadowed(tok)
                    stack.append(["call", attr, 0])  # (named by its function: "log() takes one argument")
                    i += 4
                    continue
                raise FormulaError(
                    f"formula: attribute access {dotted!r} is not allowed at position "
                    f"{tok.start}; allowed are: "
                    + ", ".join(f"np.{f}" for f in NUMPY_FUNCTIONS)
                    + " and, as a contrast in C(x, ...), "
                    + ", ".join(f"contr.{f}" for f in _CONTR_NAMES)
                    + f" (a column whose name holds a dot, as R's data often have, is written in backticks: `{dotted}`)",
                    formula,
                    tok.start,
                    (attr.end if attr is not None else after.end) - tok.start,
                )
            if name in _CONTRAST_FUNCTIONS and contrast_argument():
                unshadowed(tok)
                i += contrast(tok, after, 1, name)
                continue
            if after is not None and after.text == "(":
                if name in FORMULA_FUNCTIONS:
                    unshadowed(tok)
                if name == "C":
                    stack.append(["C", tok, 0])
                elif name == "Q":
                    stack.append(["Q", tok, 0])
                elif name in _BASIS_FUNCTIONS:
                    stack.append(["basis", tok, 0, {}])  # (its options, by keyword: value token)
                elif name in FORMULA_FUNCTIONS or (not stack and (  # (and lme4's response and offset(...) term)
                        (name == "cbind" and allow_cbind) or (name == "offset" and allow_offset))):
                    stack.append(["call", tok, 0])
                elif name == "offset":
                    raise _err("offset(...) must be a term of the formula's right-hand side, outside any bracket",
                               formula, tok, " (y ~ x + offset(log(exposure)) + (1 | g))")
                elif name in ("factor", "ordered"):
                    raise _err(f"function {name!r} is not allowed", formula, tok,
                               " (R's factor(x) is C(x) here: the column's values as the levels of a factor)"
                               if name == "factor" else " (R's ordered(x) is C(x, Poly) here: polynomial contrasts)")
                else:
                    raise _err(f"function {name!r} is not allowed", formula, tok, _allowed_functions(name))
                i += 2
                continue
            if after is not None and after.text == "=":
                second = nxt(i + 2)
                if second is not None and second.text == "=" and second.start == after.end:
                    raise _err(f"comparison '{name} ==' is not allowed (the formula grammar has no comparisons); "
                               "make the indicator a column of the data (df['big'] = df['size'] == 15) and use it",
                               formula, after)
                if name == "levels" and inside("C"):
                    i += 2
                    continue
                if inside("contrast"):  # (a contrast without options was refused above)
                    wanted = _CONTRAST_KEYWORDS[stack[-1][3]]
                    if name != wanted:
                        raise _err(f"{stack[-1][3]}() names its reference level as {wanted}=...; got {name}=",
                                   formula, tok)
                    i += 2
                    continue
                if name in _BASIS_KEYWORDS and inside("basis"):
                    value, close = nxt(i + 2), nxt(i + 3)
                    if (value is None or value.kind != "number" or not re.fullmatch(r"\d+", value.text)
                            or not 1 <= int(value.text) <= _BASIS_MAX or close is None
                            or close.text not in (",", ")")):
                        raise _err(f"`{name}=` must be a whole number from 1 to {_BASIS_MAX} written as a "
                                   f"literal (e.g. {name}=3)", formula, value if value is not None else tok)
                    stack[-1][3][name] = value
                    i += 3
                    continue
                raise _err(f"keyword argument {name!r} is not allowed here", formula, tok)
            if contrast_argument():
                raise _err(f"the second argument of C() must be a contrast ({', '.join(_CONTRAST_FUNCTIONS)}, "
                           f"contr.treatment, ...) or levels=[...]; got {name!r}", formula, tok)
            if inside("Q"):
                raise _err(f"Q() takes the column name as a quoted string, e.g. Q('{name}'); got {name!r}",
                           formula, tok)
            if name not in colset:
                raise _unknown_column(formula, tok, columns)
        elif tok.kind == "backtick":
            if tok.column not in colset:
                raise _unknown_column(formula, tok, columns)
        elif tok.kind == "string":
            if inside("Q"):
                if stack[-1][2] or nxt(i - 1).text != "(" or after is None or after.text != ")":
                    raise _err("Q() takes exactly one quoted column name", formula, tok)
                if tok.text[1:-1] not in colset:
                    raise _unknown_column(formula, _Token("backtick", tok.text, tok.start, tok.end), columns)
            elif not inside("list", "contrast"):
                raise _err(
                    f"string constant {tok.text} is not allowed here (only in C(x, levels=[...]), "
                    "C(x, Treatment('a')) or Q('a column'))",
                    formula,
                    tok,
                )
        elif tok.kind == "op":
            t = tok.text
            if t == "(":
                stack.append(["group", tok, 0])
            elif t == ")":
                if not stack or stack[-1][0] == "list":
                    raise _err("unmatched ')'", formula, tok)
                if stack[-1][0] == "Q" and not (i > 0 and tokens[i - 1].kind == "string"):
                    raise _err("Q() takes exactly one quoted column name", formula, tok)
                if stack[-1][0] == "basis" and stack[-1][1].text == "bs" and "df" in stack[-1][3]:
                    # (formulaic's own message said "`df` must be greater than 3" of df=2, and accepts 3)
                    opts = stack[-1][3]
                    degree = int(opts["degree"].text) if "degree" in opts else 3
                    if int(opts["df"].text) < degree:
                        raise _err(f"bs() needs df of at least its degree ({degree}); got df={opts['df'].text}",
                                   formula, opts["df"])
                stack.pop()
            elif t == "[":
                if not inside("C", "contrast"):
                    raise _err("'[' (subscript or list) is not allowed here", formula, tok)
                stack.append(["list", tok, 0])
            elif t == "]":
                if not inside("list"):
                    raise _err("unmatched ']'", formula, tok)
                stack.pop()
            elif t == ",":
                if not inside("C", "contrast", "list", "call", "basis"):
                    raise _err("',' is only allowed between function arguments", formula, tok)
                if inside("call") and stack[-1][1].text != "cbind":  # (numpy's second argument is its output)
                    name = stack[-1][1].text
                    hint = " (for other bases: log2(x), log10(x), or I(log(x) / log(b)))" if name == "log" else ""
                    raise _err(f"{name}() takes one argument{hint}", formula, tok)
                stack[-1][2] += 1
            elif t == "=":
                raise _err("'=' is only allowed as C(x, levels=[...]) or bs(x, df=3)", formula, tok)
            elif t == ".":
                raise _err("attribute access '.' is not allowed", formula, tok)
            elif t == "~":
                raise _err("a formula must contain exactly one '~'", formula, tok)
            elif t in ("|", "||"):
                if not (len(stack) == 1 and stack[0][0] == "group"):
                    raise _err(
                        f"{t!r} is only allowed in random-effect terms like (1 | g)", formula, tok
                    )
        elif tok.kind == "number" and inside("basis") and stack[-1][2] >= 1:
            fn = stack[-1][1].text
            raise _err(f"{fn}() takes its options as keywords (df=, degree=)", formula, tok,
                       f" (R's {fn}(x, {tok.text}) is {fn}(x, degree={tok.text}))" if fn == "poly" else "")
        i += 1
    if stack:
        kind, tok = stack[-1][:2]
        raise _err("unclosed '['" if kind == "list" else "unclosed '('", formula, tok)


def _split_tilde(formula: str, tokens: list[_Token]) -> tuple[list[_Token], list[_Token], _Token]:
    tildes = [k for k, t in enumerate(tokens) if t.text == "~"]
    if not tildes:
        raise FormulaError(
            f"formula must contain '~' separating the response from the predictors "
            f"(e.g. 'y ~ x + (1 | g)'); got {formula!r}.",
            formula,
            len(formula),
        )
    if len(tildes) > 1:
        raise _err("a formula must contain exactly one '~'", formula, tokens[tildes[1]])
    k = tildes[0]
    if k == len(tokens) - 1:
        raise _err(
            "the right-hand side is empty (use '1' for an intercept only)", formula, tokens[k]
        )
    return tokens[:k], tokens[k + 1 :], tokens[k]


def check_formula(formula: str, columns: Iterable[str], one_sided: bool = False) -> None:
    """Validate formula text against the safe grammar without evaluating anything.

    Parameters
    ----------
    formula : str
        A two-sided formula ``"y ~ x + (1 | g)"`` (or, with ``one_sided=True``, a
        right-hand side such as a ``vc_formulas`` value ``"0 + C(g)"``).
    columns : iterable of str
        The data columns that names in the formula may refer to.
    one_sided : bool, default False
        Check a right-hand side only (no ``~``).

    Raises
    ------
    FormulaError
        Naming the first bad token and its position (``error.position``); ``str(error)``
        shows the formula with a caret under the token.
    """
    if not isinstance(formula, str):
        raise FormulaError(f"`formula` must be a str; got {type(formula).__name__}.")
    columns = [str(c) for c in columns]
    tokens = _tokenize(formula)
    if one_sided:
        _check_tokens(formula, tokens, columns)
        return
    lhs, rhs, tilde = _split_tilde(formula, tokens)
    if not lhs:
        raise _err("the response (left of '~') is missing", formula, tilde)
    _check_tokens(formula, lhs, columns, allow_cbind=True)
    _check_tokens(formula, rhs, columns, allow_offset=True)
    _parse_response(formula, lhs)
    _split_rhs(formula, rhs)  # structure of the random-effect and offset terms


# ---------------------------------------------------------------------------
# parsing: response, random-effect terms, fixed part
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Response:
    successes: str
    failures: str | None = None  # cbind(s, f): trials = s + f
    total: str | None = None  # cbind(s, total - s): trials = total


def _is_col(tok: _Token | None) -> bool:
    return tok is not None and tok.kind in ("name", "backtick")


def _q_columns(tokens: list[_Token]) -> list[_Token]:
    """``tokens`` with every ``Q('a column')`` as the one backtick token it names (the response, the grouping
    factors and the slopes read columns by token; the fixed part is formulaic's, which reads Q() itself)."""
    out, i = [], 0
    while i < len(tokens):
        t = tokens[i]
        if (t.kind == "name" and t.text == "Q" and i + 3 < len(tokens) and tokens[i + 1].text == "("
                and tokens[i + 2].kind == "string" and tokens[i + 3].text == ")"):
            out.append(_Token("backtick", f"`{tokens[i + 2].text[1:-1]}`", t.start, tokens[i + 3].end))
            i += 4
            continue
        out.append(t)
        i += 1
    return out


def _parse_response(formula: str, lhs: list[_Token]) -> _Response:
    lhs = _q_columns(lhs)
    if not lhs:
        raise FormulaError(f"The formula needs a response column left of '~', e.g. 'y ~ x + (1 | g)'; got {formula!r}.")
    texts = [t.text for t in lhs]
    if len(lhs) == 1 and _is_col(lhs[0]):
        return _Response(lhs[0].column)
    if len(lhs) >= 6 and texts[:2] == ["cbind", "("] and texts[-1] == ")":
        inner = lhs[2:-1]
        if len(inner) == 3 and _is_col(inner[0]) and inner[1].text == "," and _is_col(inner[2]):
            return _Response(inner[0].column, failures=inner[2].column)
        if (
            len(inner) == 5
            and _is_col(inner[0])
            and inner[1].text == ","
            and _is_col(inner[2])
            and inner[3].text == "-"
            and _is_col(inner[4])
            and inner[4].column == inner[0].column
        ):
            return _Response(inner[0].column, total=inner[2].column)
    start, end = lhs[0].start, lhs[-1].end
    raise FormulaError(
        "formula: the response must be a column name, cbind(successes, failures) or "
        f"cbind(successes, total - successes); got {formula[start:end]!r} at position {start}",
        formula,
        start,
        end - start,
    )


@dataclass(frozen=True)
class _BarTerm:
    factors: tuple[str, ...]
    intercept: bool
    slopes: tuple[str, ...]
    #: written with ``|`` and several columns per level: lme4 would fit their correlation too
    correlated: bool = False
    #: each slope's tokens: one column, or a transform's call (``log ( w )``)
    slope_tokens: tuple[tuple[_Token, ...], ...] = ()


def _matching(tokens: list[_Token], k: int) -> int:
    depth = 0
    for j in range(k, len(tokens)):
        if tokens[j].text in ("(", "["):
            depth += 1
        elif tokens[j].text in (")", "]"):
            depth -= 1
            if depth == 0:
                return j
    return len(tokens) - 1  # unreachable after _check_tokens


def _is_col_text(text: str) -> bool:
    """Whether ``text`` is a single column name (bare or in backticks), not an expression."""
    try:
        tokens = _tokenize(text)
    except FormulaError:
        return True  # (left to the column check, whose message lists the columns)
    return len(tokens) == 1 and _is_col(tokens[0])


def _slope_call(expr: list[_Token], k: int) -> int:
    """Where a one-column transform's call starts at ``expr[k]`` (``log(``, ``np.log(``): the index of its
    opening bracket from k (1 or 3); 0 if none starts there."""
    texts = [t.text for t in expr[k : k + 4]]
    if texts[:2] and texts[0] in _SLOPE_CALLS and texts[1:2] == ["("] and expr[k].kind == "name":
        return 1
    if texts[:2] == ["np", "."] and len(texts) == 4 and texts[2] in NUMPY_FUNCTIONS and texts[3] == "(":
        return 3
    return 0


def _parse_bar(formula: str, inner: list[_Token], open_tok: _Token) -> list[_BarTerm]:
    inner = _q_columns(inner)
    bar = next(k for k, t in enumerate(inner) if t.text in ("|", "||"))
    expr, group = inner[:bar], inner[bar + 1 :]
    if not expr:
        raise _err("random-effect term needs 1, 0 or slopes before '|' (for an intercept: (1 | g))", formula,
                   inner[bar])
    # --- grouping: a, a:b, a/b
    if not group:
        raise _err("random-effect term needs a grouping factor after '|'", formula, inner[bar])
    parts: list[list[str]] = [[]]
    ops = []
    for k, t in enumerate(group):
        if k % 2 == 0:
            if not _is_col(t):
                raise _err(f"grouping factor must be a column name; got {t.text!r}", formula, t)
            parts[-1].append(t.column)
        elif t.text == ":":
            pass
        elif t.text == "/":
            ops.append("/")
            parts.append([])
        else:
            raise _err(f"operator {t.text!r} is not allowed in a grouping factor", formula, t)
    if len(group) % 2 == 0:
        raise _err("incomplete grouping factor", formula, group[-1])
    # --- expression: 1, 0, -1, numeric columns or one-column transforms of them joined by + (and a -1)
    intercept = True
    slopes: list[str] = []
    slope_tokens: list[tuple[_Token, ...]] = []
    k = 0
    sign = "+"
    while k < len(expr):
        t = expr[k]
        if t.text in ("+", "-"):
            sign = t.text
            k += 1
            continue
        end = k + 1
        if t.kind == "number" and t.text in ("0", "1"):
            if t.text == "0" or sign == "-":
                intercept = False
        elif sign == "+" and _is_col(t) and not (k + 1 < len(expr) and expr[k + 1].text in ("(", ".")):
            if t.column not in slopes:
                slopes.append(t.column)
                slope_tokens.append((t,))
        elif sign == "+" and (call := _slope_call(expr, k)):
            end = _matching(expr, k + call) + 1
            if end < len(expr) and expr[end].text not in ("+", "-"):
                raise _err("a random slope must be one column or one transform such as log(x) or I(x^2), joined to "
                           f"the others by '+'; got {expr[end].text!r} after {t.text}(...)", formula, expr[end])
            text = formula[t.start : expr[end - 1].end]
            if text not in slopes:
                slopes.append(text)
                slope_tokens.append(tuple(expr[k:end]))
        else:
            calls = ", ".join(f"{c}(x)" for c in _SLOPE_CALLS)
            what = (f"{t.text}() gives several columns" if t.text in _BASIS_FUNCTIONS
                    else "C() makes a factor: for an effect of each of its levels within each group, write "
                         "(1 | g:f), one SD shared by the pairs of levels" if t.text == "C"
                    else f"got {t.text!r}")
            raise _err(
                f"random-effect terms accept only 1, 0, numeric column names and one-column transforms ({calls}) "
                f"joined by '+'; {what}",
                formula,
                t,
            )
        sign = "+"
        k = end
    if not intercept and not slopes:
        raise _err("random-effect term has neither an intercept nor a slope", formula, open_tok)
    terms = []
    if len(parts) > 1 and slopes:
        raise _err("nested grouping 'a/b' is only supported for random intercepts", formula, open_tok)
    factors: tuple[str, ...] = ()
    correlated = inner[bar].text == "|" and int(intercept) + len(slopes) > 1
    for p in parts:  # a/b -> (1|a) + (1|a:b)
        factors = factors + tuple(p)
        terms.append(_BarTerm(factors, intercept, tuple(slopes), correlated, tuple(slope_tokens)))
    return terms


#: calls whose arguments formulaic evaluates as Python arithmetic
_ARITHMETIC_CALLS = ("I", "log", "log2", "log10", "exp", "sqrt", "log1p", "center", "scale", "standardize",
                     "bs", "poly")
#: ... those that give one column: a random slope may be one (``(0 + log(w) | g)``)
_SLOPE_CALLS = tuple(c for c in _ARITHMETIC_CALLS if c not in _BASIS_FUNCTIONS)


def _python_arithmetic(formula: str, kept: Sequence[tuple[_Token, int]]) -> str:
    """The text of the tokens ``kept`` (with their indices, to keep the original spacing of
    neighbours) for formulaic, with the arithmetic inside calls made safe and Python's:

    * R's power ``^`` inside ``I(...)`` becomes ``**``;
    * integer literals inside ``I(...)``, ``log(...)`` and the other transforms become floats
      (``9`` -> ``9.0``), so that constant arithmetic is floating point: Python's integer
      powers are exact and unbounded (``I(x + 9**9**9)`` would compute a number with 370
      million digits and never return), float powers overflow at once with an error.

    Integers elsewhere keep their meaning (``0 + x``, ``(a + b)^2``, ``C(x, levels=[1, 2])``).
    A bare ``Treatment`` contrast (patsy's ``C(x, Treatment)``) is called: formulaic's ``Treatment`` is a
    function that makes the contrast (:func:`_integer_text` shows the name as written).
    """
    pieces: list[str] = []
    prev = None
    for pos, (t, stack, commas) in enumerate(_frames([t for t, _ in kept])):
        idx = kept[pos][1]
        if prev is not None:
            pieces.append(formula[kept[pos - 1][0].end : t.start] if idx == prev + 1 else " ")
        text = t.text
        after = kept[pos + 1][0].text if pos + 1 < len(kept) else ""
        if t.kind == "name" and t.text == "Treatment" and _at_contrast(stack, commas) and after != "(":
            text = "Treatment()"
        elif t.text == "^" and "I" in stack:
            text = "**"
        elif (t.kind == "number" and re.fullmatch(r"\d+", t.text) and _in_arithmetic(stack)
              and not (pos > 0 and kept[pos - 1][0].text == "=")):  # bs(x, df=3) keeps its integer
            text = t.text + ".0"
        pieces.append(text)
        prev = idx
    return "".join(pieces)


def _frames(tokens: Sequence[_Token]):
    """Each token with the brackets around it: ``(token, names, commas)``, ``names`` the functions whose
    brackets enclose the token, innermost last (``"group"`` for a plain bracket), and ``commas`` the commas
    seen so far inside the innermost (0 outside any). A bracket is reported once it has opened or closed."""
    names: list[str] = []
    commas: list[int] = []
    for k, t in enumerate(tokens):
        if t.kind == "op" and t.text == "(":
            before = tokens[k - 1] if k > 0 else None
            names.append(before.text if before is not None and before.kind == "name" else "group")
            commas.append(0)
        elif t.kind == "op" and t.text == ")" and names:
            names.pop()
            commas.pop()
        elif t.kind == "op" and t.text == "," and commas:
            commas[-1] += 1
        yield t, names, (commas[-1] if commas else 0)


def _at_contrast(names: Sequence[str], commas: int) -> bool:
    """Whether a token is the second argument of ``C(...)``: its contrast (``C(x, Sum)``)."""
    return bool(names) and names[-1] == "C" and commas == 1


def _integer_text(name: str, caret: bool = False) -> str:
    """A column name as the formula wrote it: with the integer literals that :func:`_python_arithmetic` made
    floats (``I(x ** 2.0)`` -> ``I(x ** 2)``) and the bare ``Treatment`` contrast it called
    (``C(g, Treatment())`` -> ``C(g, Treatment)``, patsy's name); with ``caret`` (the formula wrote its powers
    as R's ``^``, never ``**``: :func:`_writes_caret`) the powers as ``^`` (``I(x^2)``, lme4's name and the
    random slopes' here)."""
    name = re.sub(r"(?<=, )Treatment\(\)(?=[,)])", "Treatment", name)
    name = re.sub(r"(?<![\w.])(\d+)\.0(?![\w.])", r"\1", name)
    return _powers_in_I(name, r" \*\* ", "^") if caret else name


def _powers_in_I(name: str, pattern: str, new: str) -> str:
    """``name`` with the regular expression ``pattern`` replaced by ``new`` inside its ``I(...)`` calls only (not in
    ``log(z ** 2)``, nor in a column's own name)."""
    out, i = [], 0
    while (m := re.search(r"(?<![\w.`])I\(", name[i:])) is not None:
        start = i + m.start()
        depth, end = 0, len(name)
        for j in range(start + 1, len(name)):
            depth += (name[j] == "(") - (name[j] == ")")
            if depth == 0:
                end = j + 1
                break
        out += [name[i:start], re.sub(pattern, new, name[start:end])]
        i = end
    return "".join(out) + name[i:]


def canonical_name(name: str) -> str:
    """A column's name with the powers inside ``I(...)`` spelled ``**`` (``I(x^2)`` and ``I(x ** 2)`` are one
    column), for comparing models written either way."""
    return _powers_in_I(str(name), r"\s*(\*\*|\^)\s*", " ** ")


def _writes_caret(text: str) -> bool:
    """Whether a formula writes powers inside ``I(...)`` as ``^`` and nowhere as ``**``."""
    ops = [t.text for t, stack, _ in _frames(list(_tokenize(text))) if "I" in stack and t.text in ("^", "**")]
    return "^" in ops and "**" not in ops


def _in_arithmetic(stack: Sequence[str]) -> bool:
    """Inside a transform's arguments, and not inside a ``C(...)`` (whose levels may be integers)."""
    for name in reversed(stack):
        if name in _ARITHMETIC_CALLS:
            return True
        if name not in ("group",):
            return False
    return False


def _split_rhs(formula: str, rhs: list[_Token]) -> tuple[str, list[_BarTerm], list[str]]:
    """Extract the ``( ... | ... )`` and ``offset(...)`` terms; return the fixed-effect text, the random-effect
    terms and the offsets' expressions (``log(n)`` for ``offset(log(n))``)."""
    keep = [True] * len(rhs)
    bars: list[_BarTerm] = []
    offsets: list[str] = []

    def cut(k: int, j: int, what: str) -> int:
        """Take the term ``rhs[k..j]`` out of the fixed part, with the '+' that joins it: it must be added by '+',
        and a fixed term may follow it with '+' or '-' (lme4's ``y ~ x + (1 | g) - 1``). Returns where to go on."""
        if k > 0 and rhs[k - 1].text != "+":
            raise _err(f"{what} must be added with '+'", formula, rhs[k - 1])
        if j + 1 < len(rhs) and rhs[j + 1].text not in ("+", "-"):
            raise _err(f"{what} must be followed by '+' or '-' and a term", formula, rhs[j + 1])
        for u in range(k, j + 1):
            keep[u] = False
        if k > 0:
            keep[k - 1] = False
        elif j + 1 < len(rhs) and rhs[j + 1].text == "+":  # (a '-' stays: "(1 | g) - 1" is "-1")
            keep[j + 1] = False
        return j + 1

    depth = 0
    k = 0
    while k < len(rhs):
        t = rhs[k]
        if depth == 0 and t.kind == "name" and t.text == "offset" and k + 1 < len(rhs) and rhs[k + 1].text == "(":
            j = _matching(rhs, k + 1)
            if j == k + 2:
                raise _err("offset() needs the offset's expression, e.g. offset(log(exposure))", formula, t)
            offsets.append(formula[rhs[k + 2].start : rhs[j - 1].end])
            k = cut(k, j, "an offset term")
            continue
        if t.text == "(" and depth == 0 and (k == 0 or rhs[k - 1].kind != "name"):
            j = _matching(rhs, k)
            inner = rhs[k + 1 : j]
            if any(u.text in ("|", "||") for u in inner):
                k = cut(k, j, "a random-effect term")
                bars.extend(_parse_bar(formula, inner, t))
                continue
        if t.text in ("(", "["):
            depth += 1
        elif t.text in (")", "]"):
            depth -= 1
        k += 1
    kept = [(idx, t) for idx, t in enumerate(rhs) if keep[idx]]
    # leading '+' left over when the first term was removed
    while kept and kept[0][1].text == "+":
        kept.pop(0)
    fixed = _python_arithmetic(formula, [(rhs[idx], idx) for idx, _ in kept]).strip()
    return (fixed if fixed else "1"), bars, offsets


@dataclass(frozen=True)
class FormulaColumns:
    """The data columns a formula uses, by role (from :func:`formula_columns`)."""

    response: tuple[str, ...]
    fixed: tuple[str, ...]
    groups: tuple[str, ...]
    slopes: tuple[str, ...]
    #: each random-effect bar term's grouping factors and its number of columns per level (the
    #: intercept and the slopes): ``(1 + x | g:h)`` is ``(("g", "h"), 2)``
    terms: tuple[tuple[tuple[str, ...], int], ...] = ()
    #: the columns of its ``offset(...)`` terms
    offset: tuple[str, ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.response + self.fixed + self.groups + self.slopes + self.offset))


def _names(tokens: list[_Token]) -> list[str]:
    """Column names among tokens: names and backticks that are not functions (``log(``),
    namespaces (``np.``), keyword arguments (``levels=``) or contrasts (``C(x, Sum)``), and the
    strings of ``Q('a column')``."""
    out = []
    for k, (t, stack, commas) in enumerate(_frames(tokens)):
        before = tokens[k - 1].text if k > 0 else ""
        after = tokens[k + 1].text if k + 1 < len(tokens) else ""
        if t.kind == "string" and stack and stack[-1] == "Q":
            out.append(t.text[1:-1])
        elif t.kind == "backtick":
            out.append(t.column)
        elif (t.kind == "name" and not (after in ("(", ".", "=") or before in (".", "="))
              and not _at_contrast(stack, commas)):  # C(x, Sum)
            out.append(t.column)
    return list(dict.fromkeys(out))


def formula_columns(formula: str, columns: Iterable[str] | None = None) -> FormulaColumns:
    """The columns a formula refers to, by role, parsed with the same grammar as the fits
    (nothing is evaluated). Raises :class:`FormulaError` for a malformed formula and, when the
    data's ``columns`` are given, for anything :func:`check_formula` rejects.

    >>> formula_columns("y ~ x + log(z) + (1 | g) + (0 + x | g:h)").groups
    ('g', 'h')
    """
    if columns is not None:
        check_formula(formula, columns)
    tokens = _tokenize(formula)
    lhs, rhs, _ = _split_tilde(formula, tokens)
    resp = _parse_response(formula, lhs)
    fixed_text, bars, offsets = _split_rhs(formula, rhs)
    response = tuple(c for c in (resp.successes, resp.failures, resp.total) if c)
    fixed = tuple(_names(_tokenize(fixed_text))) if fixed_text != "1" else ()
    groups = tuple(dict.fromkeys(f for b in bars for f in b.factors))
    slopes = tuple(dict.fromkeys(c for b in bars for sl in b.slope_tokens for c in _names(list(sl))))
    terms = tuple((tuple(b.factors), int(b.intercept) + len(b.slopes)) for b in bars)
    offset = tuple(dict.fromkeys(c for text in offsets for c in _names(_tokenize(text))))
    return FormulaColumns(response, fixed, groups, slopes, terms, offset)


# ---------------------------------------------------------------------------
# random-effect terms
# ---------------------------------------------------------------------------


def _is_categorical_like(s: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(s) or isinstance(s.dtype, pd.CategoricalDtype)


def _numeric_column(df: pd.DataFrame, col: str, role: str) -> np.ndarray:
    s = df[col]
    if isinstance(s.dtype, pd.CategoricalDtype) or not (
        pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)
    ):
        vals = ", ".join(repr(v) for v in pd.unique(s)[:3])
        raise DataError(
            f"{role} `{col}` must be a numeric column; got dtype {s.dtype} (values like {vals})."
        )
    return s.to_numpy(dtype=np.float64)


def _factorize(s: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Codes 0..m-1 and the m levels present: categorical order, otherwise sorted."""
    try:
        codes, uniques = pd.factorize(s, sort=True)
    except TypeError:  # mixed types: sort by the string labels
        codes, uniques = pd.factorize(s, sort=False)
        order = np.argsort([str(u) for u in uniques], kind="stable")
        remap = np.empty_like(order)
        remap[order] = np.arange(len(order))
        codes = np.where(codes >= 0, remap[codes], -1)
        uniques = uniques[order]
    labels = [str(u) for u in uniques]
    if len(set(labels)) < len(labels):  # 1 and "1", True and "True": one name for two levels
        same = next(a for a in labels if labels.count(a) > 1)
        kinds = sorted({type(u).__name__ for u in uniques if str(u) == same})
        raise DataError(f"grouping factor `{s.name}` must have levels with distinct labels; got {same!r} for more "
                        f"than one level (of types {', '.join(kinds)}). Convert the column to one type, e.g. with "
                        ".astype(str).")
    return np.asarray(codes, dtype=np.int64), pd.Index(np.asarray(uniques))


@dataclass(frozen=True)
class VCTerm:
    """One variance component: a block of columns of ``exog_vc`` sharing one SD.

    Attributes
    ----------
    name : str
        Component name (an entry of ``vcp_names``): ``"g"`` for ``(1 | g)``, ``"g:x"`` for
        ``(0 + x | g)``, ``"g:h"`` for ``(1 | g:h)``, or the ``vc_formulas`` key.
    group : str or None
        The grouping factor (``"g"`` or ``"g:h"``); None for a general ``vc_formulas``
        value materialized by formulaic.
    slope : str or None
        Numeric column multiplying the indicators, or None for an intercept.
    levels : tuple of str
        Level labels, one per column of the block.
    column_names : tuple of str
        The block's entries of ``vc_names``.
    """

    name: str
    group: str | None
    slope: str | None
    levels: tuple[str, ...]
    column_names: tuple[str, ...]
    factors: tuple[str, ...] = ()
    _level_values: tuple[pd.Index, ...] = field(default=(), repr=False, compare=False)
    _keys: np.ndarray | None = field(default=None, repr=False, compare=False)
    _formulaic_spec: Any = field(default=None, repr=False, compare=False)
    #: a slope that is a transform (``log(w)``): formulaic's spec of its one column, with the fitted state of
    #: stateful transforms (``scale(w)``'s centre and scale) for new data
    _slope_spec: Any = field(default=None, repr=False, compare=False)

    @property
    def n_columns(self) -> int:
        return len(self.column_names)

    def columns_used(self) -> tuple[str, ...]:
        if self._formulaic_spec is not None:
            return tuple(sorted(self._formulaic_spec.required_variables))
        if self._slope_spec is not None:
            return self.factors + tuple(sorted(self._slope_spec.required_variables))
        return self.factors + ((self.slope,) if self.slope else ())

    def slope_values(self, df: pd.DataFrame) -> np.ndarray:
        """The slope's values in the rows of ``df`` (a column, or its transform by the fitted spec)."""
        if self._slope_spec is None:
            return _numeric_column(df, self.slope, "slope")
        return _one_column(self._slope_spec, df)

    def _codes(self, df: pd.DataFrame) -> np.ndarray:
        """Column index (0..m-1) of each row's level; -1 for unseen or missing."""
        per = [lv.get_indexer(df[f]) for lv, f in zip(self._level_values, self.factors)]
        if len(per) == 1:
            return per[0].astype(np.int64)
        bad = np.zeros(len(df), dtype=bool)
        for c in per:
            bad |= c < 0
        dims = tuple(len(lv) for lv in self._level_values)
        flat = np.ravel_multi_index(tuple(np.where(bad, 0, c) for c in per), dims)
        pos = np.searchsorted(self._keys, flat)
        pos = np.minimum(pos, len(self._keys) - 1)
        found = (~bad) & (self._keys[pos] == flat)
        return np.where(found, pos, -1).astype(np.int64)

    def matrix(self, df: pd.DataFrame) -> sp.csr_matrix:
        """This block of ``Z`` for ``df``; rows with unseen/missing levels are empty."""
        n = len(df)
        if self._formulaic_spec is not None:
            with _WARNINGS_LOCK, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mm = self._formulaic_spec.get_model_matrix(df, output="sparse", context=_SAFE_CONTEXT)
            return sp.csr_matrix(mm, dtype=np.float64)
        codes = self._codes(df)
        valid = codes >= 0
        if self.slope is None:
            data = np.ones(int(valid.sum()))
        else:
            data = self.slope_values(df)[valid]
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(valid, out=indptr[1:])
        return sp.csr_matrix((data, codes[valid], indptr), shape=(n, self.n_columns))

    def unseen(self, df: pd.DataFrame) -> list[str]:
        """Labels of levels in ``df`` that were not seen in fitting (missing excluded)."""
        if self._formulaic_spec is not None or not self.factors:
            return []
        sub = df[list(self.factors)].dropna()
        codes = self._codes(sub)
        if (codes >= 0).all():
            return []
        bad = sub[codes < 0].drop_duplicates()
        return [":".join(str(v) for v in row) for row in bad.itertuples(index=False)]


def _one_column_spec(df: pd.DataFrame, text: str, what: str) -> Any:
    """formulaic's spec of the one numeric column an expression makes (``log(w)``: a transform slope, an
    offset), built on the fitting rows; ``what`` names it in errors (the text has passed the safe grammar)."""
    safe = "0 + " + _python_arithmetic(text, [(t, i) for i, t in enumerate(_tokenize(text))])
    mm = _formulaic_matrix(safe, df, "numpy", text, f"formula: could not build {what}")
    if mm.shape[1] != 1:
        raise FormulaError(f"{what} must give one numeric column; got {mm.shape[1]} columns "
                           f"({', '.join(map(str, mm.model_spec.column_names[:4]))}).", text, 0, len(text))
    return mm.model_spec


def _formulaic_matrix(
    safe: str, df: pd.DataFrame, output: str, text: str, what: str,
    ignore: tuple[type[Warning], ...] = (Warning,), span: tuple[int, int] | None = None,
) -> Any:
    """formulaic's model matrix of ``safe`` (the user's ``text`` after the safe grammar, as Python arithmetic) on
    ``df``, numpy's floating-point errors and the warnings of the categories ``ignore`` silenced; formulaic's own
    errors become a :class:`FormulaError` headed ``what``, marking ``span`` (position, length; all of ``text`` by
    default) in ``text``."""
    from formulaic import model_matrix

    position, length = (0, len(text)) if span is None else span
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings(), np.errstate(all="ignore"):
            for category in ignore:
                warnings.simplefilter("ignore", category=category)
            return model_matrix(safe, df, output=output, na_action="ignore", context=_SAFE_CONTEXT)
    except Exception as exc:  # formulaic's own errors -> ours, with the text shown
        raise FormulaError(f"{what}: {exc}", text, position, length) from exc


def _one_column(spec: Any, df: pd.DataFrame) -> np.ndarray:
    """The values of :func:`_one_column_spec`'s column in the rows of ``df`` (stateful transforms as fitted)."""
    with _WARNINGS_LOCK, warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        mm = spec.get_model_matrix(df, output="numpy", na_action="ignore", context=_SAFE_CONTEXT)
    return np.asarray(mm, dtype=np.float64).reshape(len(df))


def _grouped_term(
    df: pd.DataFrame, name: str, factors: tuple[str, ...], slope: str | None, label: Any,
    slope_tokens: Sequence[_Token] = (),
) -> VCTerm:
    """Fit-time levels of ``factors``; ``label(level)`` gives the column name. ``slope_tokens``: the slope's
    tokens, where it is a transform (``log ( w )``) rather than a column."""
    codes_per, levels_per = [], []
    for f in factors:
        c, lv = _factorize(df[f])
        codes_per.append(c)
        levels_per.append(lv)
    if len(factors) == 1:
        keys = np.arange(len(levels_per[0]), dtype=np.int64)
        labels = [str(v) for v in levels_per[0]]
    else:
        dims = tuple(len(lv) for lv in levels_per)
        flat = np.ravel_multi_index(tuple(codes_per), dims)
        keys = np.unique(flat)
        parts = np.unravel_index(keys, dims)
        # (a level holding ':' itself, "10:30", goes in backticks: x:y with z and x with y:z differ)
        shown = [[f"`{v}`" if ":" in str(v) else str(v) for v in lv] for lv in levels_per]
        labels = [":".join(shown[d][parts[d][j]] for d in range(len(factors))) for j in range(len(keys))]
    group = ":".join(factors)
    if len(labels) < 2:
        raise DataError(
            f"grouping factor `{group}` must have at least 2 levels; got {len(labels)}."
        )
    spec = (_one_column_spec(df, slope, f"the slope `{slope}` of the random-effect term `{name}`")
            if len(slope_tokens) > 1 else None)
    if slope is not None and spec is None and _is_categorical_like(df[slope]):
        vals = ", ".join(repr(v) for v in pd.unique(df[slope])[:3])
        raise DataError(f"slope `{slope}` must be a numeric column; got dtype {df[slope].dtype} (values like {vals}). "
                        f"For an effect of each level of `{slope}` within each level of `{group}`, write "
                        f"(1 | {group}:{slope}): one SD shared by the pairs of levels.")
    term = VCTerm(
        name=name,
        group=group,
        slope=slope,
        levels=tuple(labels),
        column_names=tuple(label(lv) for lv in labels),
        factors=tuple(factors),
        _level_values=tuple(levels_per),
        _keys=keys,
        _slope_spec=spec,
    )
    if slope is not None:
        x = term.slope_values(df)
        if not np.all(np.isfinite(x)):
            raise DataError(f"slope `{slope}` of the random-effect term `{name}` must be finite; got "
                            f"{int((~np.isfinite(x)).sum())} non-finite value(s).")
    return term


def _bar_components(df: pd.DataFrame, bar: _BarTerm) -> list[VCTerm]:
    group = ":".join(bar.factors)
    out = []
    if bar.intercept:
        out.append(_grouped_term(df, group, bar.factors, None, lambda lv: f"{group}[{lv}]"))
    for x, toks in zip(bar.slopes, bar.slope_tokens):
        nm = f"{group}:{x}"
        out.append(_grouped_term(df, nm, bar.factors, x, lambda lv, nm=nm: f"{nm}[{lv}]", toks))
    return out


def _simple_vc_pattern(
    tokens: list[_Token], df: pd.DataFrame
) -> tuple[str, str, str | None, str] | None:
    """Recognize ``0 + C(g)``, ``0 + g``, ``0 + C(g):x``, ``0 + x:C(g)`` (and ``... - 1``).

    Returns (factor column, patsy prefix, slope column or None, slope side) or None.
    """
    texts = [t.text for t in tokens]
    if texts[:2] == ["0", "+"]:
        core = tokens[2:]
    elif texts[-2:] in (["-", "1"], ["+", "0"]):
        core = tokens[:-2]
    else:
        return None

    def factor_at(k: int) -> tuple[str, str, int] | None:
        if k + 3 < len(core) + 0 and [t.text for t in core[k : k + 2]] == ["C", "("] and _is_col(
            core[k + 2]
        ) and core[k + 3].text == ")":
            col = core[k + 2].column
            return col, f"C({col})", k + 4
        if k < len(core) and _is_col(core[k]) and core[k].column in df.columns:
            col = core[k].column
            if _is_categorical_like(df[col]):
                return col, col, k + 1
        return None

    f = factor_at(0)
    if f is not None:
        col, prefix, k = f
        if k == len(core):
            return col, prefix, None, ""
        if k + 2 == len(core) and core[k].text == ":" and _is_col(core[k + 1]):
            return col, prefix, core[k + 1].column, "right"
        return None
    if len(core) >= 3 and _is_col(core[0]) and core[1].text == ":":
        f = factor_at(2)
        if f is not None and f[2] == len(core):
            return f[0], f[1], core[0].column, "left"
    return None


def _vc_formula_component(df: pd.DataFrame, key: str, text: str) -> VCTerm:
    tokens = _tokenize(text)
    pattern = _simple_vc_pattern(tokens, df)
    if pattern is not None:
        col, prefix, slope, side = pattern
        if slope is None:
            label = lambda lv: f"{prefix}[{lv}]"  # noqa: E731
        elif side == "right":
            label = lambda lv: f"{prefix}[{lv}]:{slope}"  # noqa: E731
        else:
            label = lambda lv: f"{slope}:{prefix}[{lv}]"  # noqa: E731
        return _grouped_term(df, key, (col,), slope, label)
    safe = _python_arithmetic(text, [(t, i) for i, t in enumerate(tokens)])
    mm = _formulaic_matrix(safe, df, "sparse", text, f"vc_formulas[{key!r}]", ignore=(RuntimeWarning,))
    names = tuple(_integer_text(c, _writes_caret(text)) for c in mm.model_spec.column_names)
    return VCTerm(
        name=key,
        group=None,
        slope=None,
        levels=names,
        column_names=names,
        _formulaic_spec=mm.model_spec,
    )


# ---------------------------------------------------------------------------
# spec and design
# ---------------------------------------------------------------------------


def _describe_values(values, limit=5) -> str:
    vals = [v.item() if isinstance(v, np.generic) else v for v in values]
    return ", ".join(repr(v) for v in vals[:limit]) + (f", ... ({len(vals)} in all)" if len(vals) > limit else "")


def _on_rows(arg, index: pd.Index, name: str):
    """``arg`` unchanged, or a pandas Series aligned on the rows ``index`` by its labels (a Series in
    another order than the data's rows is read by label, as pandas would; by position it would pair
    each value with another row)."""
    if not isinstance(arg, pd.Series) or arg.index.equals(index):
        return arg
    if len(arg) == len(index) and arg.index.is_unique and index.is_unique and arg.index.isin(index).all():
        return arg.reindex(index)
    extra = arg.index[~arg.index.isin(index)]
    raise DataError(
        f"`{name}` must be a Series on the data's rows (its index labels) or an array of one value per row; got a "
        f"Series of {len(arg)} values for {len(index)} rows"
        + (f", with labels not among the data's (first: {extra.tolist()[0]!r})" if len(extra) else "")
        + ("" if arg.index.is_unique else ", with repeated labels")
        + ". Pass `.to_numpy()` to match by position."
    )


def offset_values(offset, n: int, index: pd.Index | None = None) -> np.ndarray:
    """An offset given for ``n`` predicted rows: a number (the same for every row) or one per row (a
    Series by the labels of ``index``, the new data's rows)."""
    if index is not None:
        offset = _on_rows(offset, index, "offset")
    try:
        arr = np.asarray(offset, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"`offset` must be numeric; got {type(offset).__name__}.") from exc
    if arr.ndim == 0:
        return np.full(n, float(arr))
    if arr.shape != (n,):
        raise DataError(f"`offset` must be a number or one value per predicted row; got shape {arr.shape} "
                        f"for {n} rows.")
    return arr


def _require_columns(df: pd.DataFrame, cols: Iterable[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(
            f"`{missing[0]}` must be a column of {what}; got columns: "
            + ", ".join(map(str, df.columns[:30]))
            + "."
        )


@dataclass(frozen=True)
class DesignSpec:
    """Everything needed to rebuild the same ``exog`` and ``exog_vc`` columns on new data.

    Attributes
    ----------
    formula : str
        The formula as given.
    fixed_formula : str
        The right-hand side given to formulaic (random-effect terms removed, ``^`` inside
        ``I()`` translated to ``**``).
    response : str
        The response column (successes for ``cbind``).
    exog_names : tuple of str
    vc_terms : tuple of VCTerm
    fixed_columns : tuple of str
        Data columns the fixed part needs.
    offset : str, "array" or None
        Where the fit's offset came from: a column of the data (read again from new data), an
        array (new data must be given its own), or None (no offset); its offset terms are added
        (:attr:`offset_terms`).
    """

    formula: str
    fixed_formula: str
    response: str
    exog_names: tuple[str, ...]
    vc_terms: tuple[VCTerm, ...]
    fixed_columns: tuple[str, ...]
    _model_spec: Any = field(repr=False, compare=False, default=None)
    offset: str | None = None
    #: the expressions of its offset terms (``log(n)`` for ``offset(log(n))``, or an expression given as
    #: ``offset``), added to :attr:`offset`'s values, and formulaic's specs of them
    offset_terms: tuple[str, ...] = ()
    _offset_specs: tuple[Any, ...] = field(repr=False, compare=False, default=())
    #: the fitting data's dtype of each column the design reads (new data is brought to it)
    _dtypes: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def vcp_names(self) -> list[str]:
        return [t.name for t in self.vc_terms]

    @property
    def vc_names(self) -> list[str]:
        """The columns' names; a term whose names other terms also make (statsmodels' example
        ``{"a": "0 + C(Village)", "b": "0 + C(Village)*year_cen"}``) has them prefixed by its
        component's name: ``a:C(Village)[0]``."""
        seen = Counter(c for t in self.vc_terms for c in t.column_names)
        clash = {t.name for t in self.vc_terms if any(seen[c] > 1 for c in t.column_names)}
        return [f"{t.name}:{c}" if t.name in clash else c for t in self.vc_terms for c in t.column_names]

    @property
    def ident(self) -> np.ndarray:
        return np.repeat(
            np.arange(len(self.vc_terms), dtype=np.int64), [t.n_columns for t in self.vc_terms]
        )

    def exog_for(self, new_df: pd.DataFrame) -> np.ndarray:
        """Fixed-effect design ``X`` for ``new_df`` with the fitted columns.

        Categorical levels, contrasts and stateful transforms (``center``, ``scale``) are
        those learned from the fitting data; columns are first brought to the fitting data's kinds
        (:meth:`conform`). Rows with a missing value give NaN rows.

        Raises
        ------
        DataError
            If a needed column is missing or a categorical column has a level not seen
            in fitting.
        """
        _require_columns(new_df, self.fixed_columns, "the new data")
        new_df = self.conform(new_df, self.fixed_columns, strict=True)
        missing = new_df[list(self.fixed_columns)].isna().any(axis=1).to_numpy(dtype=bool)
        if missing.any():  # rows with a missing value predict NaN (formulaic would refuse a missing level)
            out = np.full((len(new_df), len(self.exog_names)), np.nan)
            if not missing.all():
                out[~missing] = self.exog_for(new_df.loc[~missing])
            return out
        with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
            warnings.simplefilter("always")
            try:
                mm = self._model_spec.get_model_matrix(
                    new_df, output="pandas", na_action="ignore", context=_SAFE_CONTEXT
                )
            except Exception as exc:
                raise DataError(f"the new data could not be encoded like the fitting data: {exc}") from exc
        for w in caught:
            if "categories outside" in str(w.message) or "not seen" in str(w.message):
                raise DataError(
                    "fixed-effect factors in new data must take levels seen in fitting; "
                    f"got {w.message}"
                )
        return np.asarray(mm.to_numpy(dtype=np.float64))

    def _fit_levels(self, col: str) -> pd.Index | None:
        """The levels a categorical column took in fitting (from the formulaic spec or the
        random-effect terms); None if unknown."""
        for t in self.vc_terms:
            if col in t.factors:
                return t._level_values[t.factors.index(col)]
        dtype = self._dtypes.get(col)
        if isinstance(dtype, pd.CategoricalDtype):
            return pd.Index(dtype.categories)
        enc = getattr(self._model_spec, "encoder_state", {}) or {}
        for key, (_, state) in enc.items():
            if key == col or key == f"C({col})":
                cats = state.get("categories") if isinstance(state, dict) else None
                if cats is not None:
                    return pd.Index(cats)
        return None

    def offset_for(self, new_df: pd.DataFrame, offset=None) -> np.ndarray | None:
        """The offset for the rows of ``new_df``: ``offset`` if given (a scalar or one value per
        row: the whole offset), else the fit's offset column and offset terms read from ``new_df``;
        None without an offset.

        Raises
        ------
        DataError
            When the model was fitted with an offset array and ``offset`` is not given (new rows
            have no such column), or the offset is not numeric or has the wrong length.
        """
        if offset is not None:
            return offset_values(offset, len(new_df), new_df.index)
        if self.offset is None and not self.offset_terms:
            return None
        if self.offset == "array":
            terms = (f", the whole offset: its terms {', '.join(f'offset({t})' for t in self.offset_terms)} included"
                     if self.offset_terms else "")
            raise DataError("`offset` must be given for new data: the model was fitted with an offset array "
                            f"(e.g. log exposure), which new rows do not have; pass predict(..., offset=...){terms}.")
        total = np.zeros(len(new_df))
        if self.offset is not None:
            _require_columns(new_df, [self.offset], "the new data (the model's offset)")
            s = new_df[self.offset]
            if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
                raise DataError(f"offset column `{self.offset}` must be numeric; got dtype {s.dtype}.")
            total += s.to_numpy(dtype=np.float64, na_value=np.nan)
        if self.offset_terms:
            cols = sorted({c for spec in self._offset_specs for c in spec.required_variables})
            _require_columns(new_df, cols, "the new data (the model's offset)")
            rows = self.conform(new_df, cols)
            for spec in self._offset_specs:
                total += _one_column(spec, rows)
        return total

    def conform(self, new_df: pd.DataFrame, columns: Iterable[str], strict: bool = False) -> pd.DataFrame:
        """``new_df`` with ``columns`` brought to the fitting data's kinds: a column that was
        categorical (strings, categories) gets the fitted levels matched by their text (so 95 in new
        data is the level "95"), a numeric one is converted to numbers.

        Raises
        ------
        DataError
            When a column that was numeric in fitting is not numeric in the new data, or (``strict``,
            the fixed effects) a categorical column has a level not seen in fitting.
        """
        out = None
        for col in columns:
            dtype = self._dtypes.get(col)
            if dtype is None or col not in new_df.columns:
                continue
            s = new_df[col]
            was_cat = isinstance(dtype, pd.CategoricalDtype) or not (
                pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))
            if was_cat:
                levels = self._fit_levels(col)
                if levels is None:
                    continue
                by_text = {str(v): v for v in levels}
                # (a value's own text where it names a fitted level, as 1.0 does for float levels; else its text
                # as a level's, 95.0 -> "95")
                own = s.astype(str).where(s.notna())
                text = own.where(own.isin(list(by_text)), _level_text(s))
                if strict:
                    unseen = list(pd.unique(s[text.notna() & ~text.isin(list(by_text))].dropna()))
                    if unseen:
                        raise DataError(
                            f"fixed-effect column `{col}` in the new data must take levels seen in fitting "
                            f"({_describe_values(levels)}); got {_describe_values(unseen)}."
                        )
                if s.dtype == dtype or len(by_text) != len(levels):
                    continue
                mapped = text.map(by_text)  # vectorised: the fitted level with the same text
                new = mapped.where(mapped.notna() | s.isna(), s.astype(object)).astype(object)
                if isinstance(dtype, pd.CategoricalDtype) and not (mapped.isna() & s.notna()).any():
                    # (with levels not seen in fitting the column stays plain: cast to the fitted categories they
                    # would become missing, unseen_levels could not name them, and pandas deprecates the cast)
                    new = new.astype(dtype)
            else:
                if (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)) and not isinstance(
                        s.dtype, pd.CategoricalDtype):
                    continue
                new = pd.to_numeric(s.astype(object), errors="coerce")
                bad = new.isna() & s.notna()
                if bad.any():
                    raise DataError(
                        f"column `{col}` in the new data must be numeric, as in fitting; got "
                        f"{_describe_values(pd.unique(s[bad])[:5])}."
                    )
            if out is None:
                out = new_df.copy()
            out[col] = new
        return new_df if out is None else out

    def exog_vc_for(self, new_df: pd.DataFrame) -> sp.csr_matrix:
        """Random-effect design ``Z`` for ``new_df``, same q columns in the same order.

        A row whose level was not seen in fitting (or is missing) gets no entry in that
        component's block, i.e. its random effect is 0 (population level). Use
        :meth:`unseen_levels` to report them.
        """
        cols = sorted({c for t in self.vc_terms for c in t.columns_used()})
        _require_columns(new_df, cols, "the new data")
        new_df = self.conform(new_df, cols)
        blocks = [t.matrix(new_df) for t in self.vc_terms]
        if not blocks:
            return sp.csr_matrix((len(new_df), 0), dtype=np.float64)
        return sp.hstack(blocks, format="csr", dtype=np.float64)

    def unseen_levels(self, new_df: pd.DataFrame) -> dict[str, list[str]]:
        """Per component name, the levels in ``new_df`` not seen in fitting.

        Only components with unseen levels appear; missing values are not reported.
        Components from general ``vc_formulas`` values (materialized by formulaic, e.g.
        ``"0 + C(g)*x"``) are not inspected: their unseen levels also give empty
        indicator entries in :meth:`exog_vc_for`, but are not listed here.
        """
        out = {}
        new_df = self.conform(new_df, sorted({f for t in self.vc_terms for f in t.factors}))
        for t in self.vc_terms:
            u = t.unseen(new_df) if all(f in new_df.columns for f in t.factors) else []
            if u:
                out[t.name] = u
        return out


@dataclass(frozen=True, eq=False)
class Design:
    """Matrices of one GLMM, ready for a model.

    Attributes
    ----------
    endog : ndarray (n,)
        Response (successes for binomial data).
    exog : ndarray (n, p)
        Fixed-effect design ``X``.
    exog_vc : scipy.sparse.csr_matrix (n, q)
        Random-effect design ``Z``.
    ident : ndarray of int64 (q,)
        Component index (0..k-1) of each column of ``exog_vc``.
    exog_names, vcp_names, vc_names : list of str
        Names of the p fixed effects, k variance components and q random effects.
    trials : ndarray (n,) or None
        Binomial trials.
    offset : ndarray (n,) or None
    n_dropped : int
        Rows dropped for missing values.
    rows : ndarray (n,) of int
        The positions in ``data`` of the rows kept (all of them unless some were dropped): two
        designs explain the same observations only if these, and the responses, are equal.
    notes : tuple of str
        The data warnings issued while building (also carried on every fit's ``warnings``).
    spec : DesignSpec
        Rebuilds the columns on new data.
    vc_terms : tuple of VCTerm
        Per component: ``name``, ``group``, ``slope``, ``levels``.
    """

    endog: np.ndarray
    exog: np.ndarray
    exog_vc: sp.csr_matrix
    ident: np.ndarray
    exog_names: list[str]
    vcp_names: list[str]
    vc_names: list[str]
    trials: np.ndarray | None
    offset: np.ndarray | None
    n_dropped: int
    spec: DesignSpec
    vc_terms: tuple[VCTerm, ...]
    notes: tuple[str, ...] = ()
    rows: np.ndarray | None = None

    @property
    def n_obs(self) -> int:
        return int(self.endog.shape[0])


def _extra_array(
    arg: str | Sequence[float] | np.ndarray | None, data: pd.DataFrame, name: str
) -> tuple[str | None, np.ndarray | None]:
    """Resolve a ``trials``/``offset`` argument to (column name or None, float array)."""
    if arg is None:
        return None, None
    if isinstance(arg, str):
        if arg not in data.columns:
            raise DataError(
                f"`{name}` must be a column of data; got {arg!r} (columns: "
                + ", ".join(map(str, data.columns[:30]))
                + ")."
            )
        s = data[arg]
        if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)) or isinstance(
            s.dtype, pd.CategoricalDtype
        ):
            raise DataError(f"`{name}` (`{arg}`) must be numeric; got dtype {s.dtype}.")
        return arg, s.to_numpy(dtype=np.float64, na_value=np.nan)
    arg = _on_rows(arg, data.index, name)
    try:
        arr = np.asarray(arg, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"`{name}` must be a column name or numeric array; got {type(arg).__name__}.") from exc
    if arr.shape != (len(data),):
        raise DataError(f"`{name}` must have shape ({len(data)},); got {arr.shape}.")
    return None, arr


def _column_levels(s: pd.Series) -> list:
    """A factor's levels as formulaic orders them: a categorical's categories, else the sorted distinct values
    (as Python scalars, for messages)."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        levels = list(s.cat.categories)
    else:
        levels = list(pd.unique(s.dropna()))
        try:
            levels = sorted(levels)
        except TypeError:
            pass
    return [v.item() if isinstance(v, np.generic) else v for v in levels]


def _shown(values, limit=12) -> str:
    return ", ".join(repr(v) for v in values[:limit]) + (", ..." if len(values) > limit else "")


def _check_factor_levels(formula: str, tokens: list[_Token], df: pd.DataFrame) -> None:
    """Raise :class:`FormulaError` where ``C(x, ...)`` names levels that do not fit the column ``x`` in the rows
    used (formulaic would build the model regardless):

    * ``levels=[...]`` must list every value of ``x`` and only values of ``x``: formulaic turns a value left
      out into a row without any level (it would be counted as the reference level, with only a warning;
      patsy refuses it), and a listed level without rows into a column of zeros;
    * the reference level of ``Treatment(reference=r)`` / ``contr.treatment(base=r)`` must be a level of ``x``,
      in the order ``levels=`` gives where it does (formulaic said only "Value `2` for
      `TreatmentContrasts.base` is not among the provided levels"). A number for a factor of text levels (a
      column of codes made categorical) is the usual slip: the message shows the quoted level, and R's
      position (``base=2``) gets the level it meant.
    """
    import ast

    for k, tok in enumerate(tokens[:-4]):
        if not (tok.text == "C" and tokens[k + 1].text == "(" and tokens[k + 2].kind in ("name", "backtick")
                and tokens[k + 3].text == ","):
            continue
        col = tokens[k + 2].column
        if col not in df.columns:
            continue
        close = _matching(tokens, k + 1)
        inner = tokens[k + 4:close]
        levels = _column_levels(df[col])
        given = next((i for i in range(len(inner) - 2) if inner[i].text == "levels" and inner[i + 1].text == "="
                      and inner[i + 2].text == "["), None)
        if given is not None:
            opening = inner[given + 2]
            closing = inner[_matching(inner, given + 2)]
            listed = ast.literal_eval(formula[opening.start:closing.end])
            unlisted = [v for v in levels if v not in listed]
            absent = [v for v in listed if v not in levels]
            if unlisted or absent:
                raise _err(f"`levels=` of C({col}, ...) must list every value of `{col}` and only its values (its "
                           f"values are {_shown(levels)}); "
                           + "; ".join(([f"not listed: {_shown(unlisted)}"] if unlisted else [])
                                       + ([f"not values of `{col}`: {_shown(absent)}"] if absent else [])),
                           formula, opening)
            levels = list(listed)  # (in the order given: R's position of a reference level counts in it)
        j = 0
        if inner and inner[0].text == "contr" and len(inner) > 2:
            j = 2
        if not (len(inner) > j + 1 and inner[j].text in ("Treatment", "treatment") and inner[j + 1].text == "("):
            continue
        j += 2
        if j + 1 < len(inner) and inner[j + 1].text == "=":
            j += 2
        if j + 1 >= len(inner) or inner[j].kind not in ("string", "number") or inner[j + 1].text != ")":
            continue
        value = ast.literal_eval(inner[j].text)
        if any(value == v for v in levels):
            continue
        if not isinstance(value, str) and str(value) in [str(v) for v in levels]:
            hint = f" (the levels are text: write {str(value)!r})"
        elif isinstance(value, int) and 1 <= value <= len(levels):
            hint = f" (it names a level, not a position: R's base={value} is {levels[value - 1]!r} here)"
        else:
            hint = ""
        raise _err(f"the reference level {inner[j].text} is not a level of `{col}`{hint}; its levels are "
                   f"{_shown(levels)}", formula, inner[j])


def _check_numeric_arguments(formula: str, tokens: Sequence[_Token], df: pd.DataFrame) -> None:
    """Raise :class:`FormulaError` where a text or categorical column is the argument of a numeric transform
    (``log(g)``, ``I(g * 2)``, ``poly(g, degree=2)``): numpy's message ("loop of ufunc does not support argument
    0 of type str") named neither the column nor the fix. A column inside ``C(...)`` within the transform is
    left to formulaic."""
    for t, names, _ in _frames(tokens):
        if t.kind == "string" and names and names[-1] == "Q":
            col = t.text[1:-1]
        elif t.kind in ("name", "backtick"):
            col = t.column
        else:
            continue
        if col not in df.columns or not _is_categorical_like(df[col]):
            continue
        inner = next((n for n in reversed(names) if n not in ("group", "Q")), None)
        if inner in _ARITHMETIC_CALLS:
            written = col if col.isidentifier() else f"`{col}`"
            values = _shown(_column_levels(df[col]), 5)
            raise _err(f"{inner}() needs numbers, but `{col}` is a factor (values {values}); use C({written}) for "
                       "its levels, or convert the column to numbers", formula, t)


def _level_text(s: pd.Series) -> pd.Series:
    """The text of each value of ``s``, as a level's: whole floats as integers (95.0 -> "95"; a year column
    becomes float when a merge brings missing values), missing values missing."""
    if pd.api.types.is_float_dtype(s) and not isinstance(s.dtype, pd.CategoricalDtype):
        v = s.to_numpy(dtype=float, na_value=np.nan)
        whole = np.isfinite(v) & (v == np.round(v))
        out = s.astype(str).astype(object)
        out[whole] = [str(int(x)) for x in v[whole]]
        return out.where(s.notna())
    return s.astype(str).where(s.notna())


def _is_number(text: str) -> bool:
    """Whether ``text`` reads as a number (a formula's literal)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_fixed_names(formula: str, fixed_formula: str, spec: Any, columns: Iterable[str]) -> None:
    """Raise :class:`FormulaError` where a data column's name collides with a column formulaic makes
    (a column ``Intercept``, or ``h[T.b]`` beside the factor ``h``: pandas would keep one of the two
    under that name) or with a literal (a column ``1`` reads as the intercept and would be left out)."""
    names = [str(c) for c in spec.column_names]
    seen: dict[str, list[str]] = {}
    for term, sl in spec.term_slices.items():
        for name in names[sl]:
            seen.setdefault(name, []).append(str(term))
    for name, terms in seen.items():
        if len(terms) > 1:
            raise FormulaError(
                f"fixed-effect columns must have distinct names; got {name!r} from the terms "
                f"{' and '.join(repr(t) for t in terms)}: a data column is named like a column the formula "
                "makes. Rename the data column.",
                formula,
            )
    cols = set(columns)
    # (numbers only: formulaic's required_variables lists `Sepal` for a backticked `Sepal.Length`, the
    # name of an attribute access, and nothing for Q('Sepal.Length'), though both read the column)
    unread = [c for c in _names(_tokenize(fixed_formula))
              if c in cols and _is_number(c) and c not in spec.required_variables]
    if unread:
        raise FormulaError(
            f"a column in the fixed effects must have a name the formula does not read as a literal; got "
            f"`{unread[0]}`, which formulaic reads as the number {unread[0]} (for `1`: the intercept), not as "
            "the column. Rename the data column.",
            formula,
        )


def build_design(
    formula: str,
    data: pd.DataFrame,
    vc_formulas: Mapping[str, str] | None = None,
    trials: str | Sequence[float] | np.ndarray | None = None,
    offset: str | Sequence[float] | np.ndarray | None = None,
) -> Design:
    """Build ``endog``, ``X``, sparse ``Z`` and ``ident`` from a formula.

    Parameters
    ----------
    formula : str
        ``"y ~ fixed + (1 | g) + (0 + x | g) + (1 | g:h)"``. The response is a column name
        or ``cbind(succ, fail)`` (trials = succ + fail) or ``cbind(succ, total - succ)``
        (trials = total). Random-effect terms are described in the module docstring;
        ``(1 + x | g)``, ``(x | g)`` and ``(x || g)`` all give the two independent
        components ``g`` and ``g:x``.
    data : pandas.DataFrame
    vc_formulas : dict of str to str, optional
        statsmodels-style components ``{name: "0 + C(g)"}``, appended after the
        formula's random-effect terms.
    trials : str or array, optional
        Binomial trials (column name or array of length ``len(data)``).
    offset : str or array, optional
        Offset of the linear predictor (column name or array).

    Returns
    -------
    Design

    Raises
    ------
    FormulaError
        Formula outside the safe grammar, unknown column, no ``~``.
    DataError
        Empty data, non-numeric response or slope, grouping factor with fewer than two
        levels, trials smaller than the response, non-finite fixed-effect values.

    Warns
    -----
    DataWarning
        When rows with missing values in a used column are dropped (once, from every
        matrix); ``Design.n_dropped`` records how many.
    """
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"`data` must be a pandas DataFrame; got {type(data).__name__}.")
    if len(data) == 0:
        raise DataError("`data` must have at least one row; got 0 rows.")
    if vc_formulas is not None and not isinstance(vc_formulas, Mapping):
        raise DataError(f"`vc_formulas` must be a dict of name -> formula; got {type(vc_formulas).__name__}.")
    data = data.rename(columns=str) if not all(isinstance(c, str) for c in data.columns) else data
    check_distinct_columns(data, "data")
    columns = list(data.columns)

    # --- parse (never evaluates anything)
    check_formula(formula, columns)
    tokens = _tokenize(formula)
    lhs, rhs, _ = _split_tilde(formula, tokens)
    response = _parse_response(formula, lhs)
    fixed_formula, bars, offset_texts = _split_rhs(formula, rhs)
    if isinstance(offset, str) and offset not in data.columns and not _is_col_text(offset):
        # an expression (offset="log(exposure)"): one more offset term, checked like the formula's
        check_formula(offset, columns, one_sided=True)
        offset_texts, offset = [*offset_texts, offset], None
    twice = [t for t in dict.fromkeys(offset_texts) if offset_texts.count(t) > 1]
    if twice:
        raise FormulaError(f"offset({twice[0]}) is given twice; offsets add up, so write it once (or "
                           f"offset(I(2 * {twice[0]})) for twice its values).", formula)
    vc_tokens = {}
    for key, text in (vc_formulas or {}).items():
        if not isinstance(text, str):
            raise FormulaError(f"`vc_formulas[{key!r}]` must be a str; got {type(text).__name__}.")
        if not text.strip():
            raise FormulaError(f"`vc_formulas[{key!r}]` must be a formula such as '0 + C(g)'; got an empty string.")
        check_formula(text, columns, one_sided=True)
        vc_tokens[key] = _tokenize(text)

    if response.failures is not None or response.total is not None:
        if trials is not None:
            raise DataError(
                f"`trials` must be None when the response is cbind(...); got {trials!r}."
            )
    trials_col, trials_arr = _extra_array(trials, data, "trials")
    offset_col, offset_arr = _extra_array(offset, data, "offset")

    # --- which columns are used, and drop rows with missing values once
    used: list[str] = []
    for t in tokens + [t for toks in vc_tokens.values() for t in toks] + [t for x in offset_texts for t in _tokenize(x)]:
        if _is_col(t) and t.column in data.columns and t.column not in used:
            used.append(t.column)
    for c in (trials_col, offset_col):
        if c is not None and c not in used:
            used.append(c)
    na = data[used].isna()
    bad = na.any(axis=1).to_numpy(dtype=bool).copy()
    extra_bad = []
    for name, arr, col in (("trials", trials_arr, trials_col), ("offset", offset_arr, offset_col)):
        if arr is not None and col is None:
            m = np.isnan(arr)
            if m.any():
                extra_bad.append(f"{name} ({int(m.sum())})")
                bad |= m
    n_dropped = int(bad.sum())
    notes: list[str] = []
    if n_dropped:
        per_col = na.sum()
        where = [f"{c} ({int(k)})" for c, k in per_col.items() if k] + extra_bad
        if n_dropped == len(data):
            raise DataError(
                "data must have at least one row without missing values in the used columns; "
                f"got 0 of {len(data)} rows (missing in: {', '.join(where)})."
            )
        notes.append(f"dropped {n_dropped} of {len(data)} rows with missing values "
                     f"(missing in: {', '.join(where)}).")
        warnings.warn(
            notes[-1],
            DataWarning,
            stacklevel=2,
        )
        keep = ~bad
        df = data.loc[keep].reset_index(drop=True)
        trials_arr = trials_arr[keep] if trials_arr is not None else None
        offset_arr = offset_arr[keep] if offset_arr is not None else None
    else:
        df = data.reset_index(drop=True)

    # categories without rows (declared but unused, or whose rows were dropped) would make all-zero
    # dummy columns: they are left out, as the grouping factors' unused levels are
    for c in used:
        if isinstance(df[c].dtype, pd.CategoricalDtype) and df[c].nunique(dropna=True) < len(df[c].cat.categories):
            df[c] = df[c].cat.remove_unused_categories()

    for bar in bars:
        if bar.correlated:
            cols = (["1"] if bar.intercept else ["0"]) + list(bar.slopes)
            group = ":".join(bar.factors)
            notes.append(
                f"({' + '.join(cols)} | {group}) is fitted as independent random effects, "
                + " + ".join(([f"(1 | {group})"] if bar.intercept else []) + [f"(0 + {s} | {group})" for s in bar.slopes])
                + ": the model has no correlations between them (lme4 would estimate them). Write "
                f"({' + '.join(cols)} || {group}) to say so.")
            warnings.warn(notes[-1], DataWarning, stacklevel=2)

    # --- response and trials
    endog = _numeric_column(df, response.successes, "response")
    if not np.all(np.isfinite(endog)):  # (before trials, which an infinite response would be blamed on)
        i = int(np.flatnonzero(~np.isfinite(endog))[0])
        row = int(np.flatnonzero(~bad)[i])  # (the data's row: rows with missing values were dropped before)
        raise DataError(f"the response `{response.successes}` must be finite; got {endog[i]:g} at row {row} "
                        f"({int((~np.isfinite(endog)).sum())} row(s) in all).")
    if response.failures is not None:
        failures = _numeric_column(df, response.failures, "failures")
        neg = np.flatnonzero(failures < 0)
        if neg.size:
            raise DataError(f"the failures `{response.failures}` in cbind(...) must be >= 0; got {failures[neg[0]]:g} "
                            f"at row {int(neg[0])} ({neg.size} row(s) in all).")
        trials_arr = endog + failures
        trials_col = response.failures
    elif response.total is not None:
        trials_arr = _numeric_column(df, response.total, "trials")
        trials_col = response.total
    if trials_arr is not None:
        label = f"`trials` (`{trials_col}`)" if trials_col else "`trials`"
        small = np.flatnonzero(trials_arr < endog)
        if small.size:
            raise DataError(
                f"{label} must be >= the response `{response.successes}` in every row; "
                f"got {small.size} rows where it is smaller (first: row {int(small[0])}, "
                f"trials {trials_arr[small[0]]:g} < {endog[small[0]]:g})."
            )
        if not np.all(np.isfinite(trials_arr)):
            raise DataError(f"{label} must be finite; got non-finite values.")

    # --- fixed part (formulaic; the text has passed the safe-grammar check)
    for col in _names(rhs):
        if col in df.columns and (pd.api.types.is_datetime64_any_dtype(df[col])
                                  or pd.api.types.is_timedelta64_dtype(df[col])):
            raise DataError(f"fixed-effect column `{col}` must be numeric or categorical; got dtype {df[col].dtype}. "
                            "Convert it, e.g. to days since a start or to the year as a factor.")
    _check_factor_levels(formula, rhs, df)
    _check_numeric_arguments(formula, rhs, df)
    # (non-finite values, log of a negative, ...: reported below as a DataError)
    mm = _formulaic_matrix(fixed_formula, df, "pandas", formula,
                           f"formula: could not build the fixed effects from {fixed_formula!r}",
                           ignore=(FutureWarning, RuntimeWarning), span=(rhs[0].start if rhs else len(formula), 1))
    _check_fixed_names(formula, fixed_formula, mm.model_spec, data.columns)
    for c in sorted(mm.model_spec.required_variables):
        if c in df.columns and not pd.api.types.is_numeric_dtype(df[c]) and df[c].nunique(dropna=True) == 1:
            notes.append(f"fixed-effect factor `{c}` has a single level ({df[c].dropna().iloc[0]!s}) in the rows "
                         "used: it adds no column (the intercept carries it).")
            warnings.warn(notes[-1], DataWarning, stacklevel=2)
        elif c in df.columns and df[c].dtype == object and df[c].nunique(dropna=True) > 10:
            as_num = pd.to_numeric(df[c], errors="coerce")
            if as_num.notna().all():
                notes.append(f"fixed-effect column `{c}` holds numbers stored as text (dtype object): it is a "
                             f"factor of {df[c].nunique()} levels here; convert it with pd.to_numeric to use it as a "
                             "number.")
                warnings.warn(notes[-1], DataWarning, stacklevel=2)
    exog = np.ascontiguousarray(mm.to_numpy(dtype=np.float64))
    caret = _writes_caret(formula)
    exog_names = [_integer_text(str(c), caret) for c in mm.columns]
    if exog.size and not np.all(np.isfinite(exog)):
        j = int(np.flatnonzero(~np.isfinite(exog).all(axis=0))[0])
        k = int((~np.isfinite(exog[:, j])).sum())
        raise DataError(
            f"fixed-effect column `{exog_names[j]}` must be finite; got {k} non-finite values."
        )

    # --- offset terms (lme4's offset(log(n)), or an expression given as `offset`), added to an offset column
    offset_specs = []
    for text in offset_texts:
        toks = _tokenize(text)
        _check_numeric_arguments(text, toks, df)
        factors = [c for c in _names(toks) if c in df.columns and _is_categorical_like(df[c])]
        if factors:
            raise DataError(f"the offset `{text}` must be numeric; `{factors[0]}` is a factor (values "
                            f"{_shown(_column_levels(df[factors[0]]), 5)}).")
        # (arithmetic at the top, 2 * expo, is R's arithmetic, as lme4 reads an offset; formulaic's "*" is an
        # interaction: evaluated inside I(...))
        top = any(not names and t.text in ("+", "-", "*", "/", "**", "^") for t, names, _ in _frames(toks))
        offset_specs.append(_one_column_spec(df, f"I({text})" if top else text, f"the offset `{text}`"))
        v = _one_column(offset_specs[-1], df)
        if not np.all(np.isfinite(v)):
            i = int(np.flatnonzero(~np.isfinite(v))[0])
            domain = (" (log and sqrt need values above 0, and log of 0 is -inf)"
                      if any(f in text for f in ("log", "sqrt")) else "")
            raise DataError(f"the offset `{text}` must be finite in every row; got {int((~np.isfinite(v)).sum())} rows "
                            f"where it is not, the first at row {int(np.flatnonzero(~bad)[i])} of the data (counted "
                            f"from 0){domain}.")
        offset_arr = v if offset_arr is None else offset_arr + v

    # --- random effects: formula terms first, then vc_formulas
    terms: list[VCTerm] = []
    for bar in bars:
        terms.extend(_bar_components(df, bar))
    n_bar_terms = len(terms)  # (statsmodels' vc_formulas may repeat a component: not checked)
    for key, text in (vc_formulas or {}).items():
        terms.append(_vc_formula_component(df, str(key), text))
        explicit = any(t.text == "1" for t in vc_tokens[key])  # ("1 + C(g)": an intercept asked for)
        if "Intercept" in terms[-1].column_names and len(terms[-1].column_names) > 1 and not explicit:
            # (statsmodels takes it too; its vc_formulas are usually written '0 + C(g)', one effect per column)
            notes.append(f"vc_formulas[{str(key)!r}] = {text!r} adds an intercept column (one random effect shared by "
                         f"every row) to its other columns, as formulas do; write '0 + {text.strip()}' for its "
                         "columns alone, or '1 + ...' to keep the intercept without this warning.")
            warnings.warn(notes[-1], DataWarning, stacklevel=2)
    names = [t.name for t in terms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FormulaError(
            f"variance component names must be unique; got {dup[0]!r} more than once (a random-effect term written "
            "twice, or a vc_formulas key that a formula term also makes).",
            formula,
        )
    same = {}
    for t in terms[:n_bar_terms]:  # (1 | g:h) and (1 | h:g): one component twice under two names
        if t.group is not None:
            key = (frozenset(t.factors), t.slope)
            if key in same:
                raise FormulaError(f"random-effect terms must differ; got {same[key]!r} and {t.name!r}, the same "
                                   "effects twice.", formula)
            same[key] = t.name
    blocks = [t.matrix(df) for t in terms]
    for i, j in itertools.combinations(range(n_bar_terms), 2):  # (log(w) and I(log(w)), a slope I(w**0) and 1)
        a, b = terms[i], terms[j]
        if (a.group is not None and set(a.factors) == set(b.factors) and blocks[i].shape == blocks[j].shape
                and (blocks[i] != blocks[j]).nnz == 0):
            raise FormulaError(f"random-effect terms must differ; got {a.name!r} and {b.name!r}, whose columns are "
                               "equal (the same effects twice).", formula)
    n = len(df)
    exog_vc = (
        sp.hstack(blocks, format="csr", dtype=np.float64)
        if blocks
        else sp.csr_matrix((n, 0), dtype=np.float64)
    )

    fixed_columns = tuple(sorted(mm.model_spec.required_variables))
    read = (set(fixed_columns) | {c for t in terms for c in t.columns_used()}
            | {c for spec_ in offset_specs for c in spec_.required_variables})
    spec = DesignSpec(
        formula=formula,
        fixed_formula=fixed_formula,
        response=response.successes,
        exog_names=tuple(exog_names),
        vc_terms=tuple(terms),
        fixed_columns=fixed_columns,
        _model_spec=mm.model_spec,
        offset=offset_col if offset_col is not None else ("array" if offset is not None else None),
        offset_terms=tuple(offset_texts),
        _offset_specs=tuple(offset_specs),
        _dtypes={c: df[c].dtype for c in read if c in df.columns},
    )
    return Design(
        endog=endog,
        exog=exog,
        exog_vc=exog_vc,
        ident=spec.ident,
        exog_names=exog_names,
        vcp_names=spec.vcp_names,
        vc_names=spec.vc_names,
        trials=None if trials_arr is None else np.asarray(trials_arr, dtype=np.float64),
        offset=None if offset_arr is None else np.asarray(offset_arr, dtype=np.float64),
        n_dropped=n_dropped,
        spec=spec,
        vc_terms=tuple(terms),
        notes=tuple(notes),
        rows=np.flatnonzero(~bad),
    )
