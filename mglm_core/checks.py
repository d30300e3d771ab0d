"""Input checks for :class:`~mglm_core.model.BayesMixedGLM`.

Every check runs before any fitting and raises :class:`~mglm_core.errors.DataError`
with a message that names the argument or column and says what was expected.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import DataError, DataWarning

__all__ = ["as_endog", "as_exog", "as_exog_vc", "as_ident", "as_names", "as_row_vector", "check_aligned",
           "check_components_nonzero", "check_count", "check_family_data", "check_nonnegative", "check_positive",
           "read_only_copy"]


def _describe(values, limit=5):
    vals = list(values)[:limit]
    more = "" if len(values) <= limit else f", ... ({len(values)} in all)"
    return ", ".join(repr(v) for v in vals) + more


def as_row_vector(x, name, n=None) -> np.ndarray:
    """Return ``x`` as a finite float vector of length ``n``."""
    if isinstance(x, type):
        raise DataError(f"`{name}` must be data, not a class; got {x.__name__}.")
    if isinstance(x, pd.DataFrame):
        if x.shape[1] != 1:
            raise DataError(f"`{name}` must be one column; got a DataFrame with {x.shape[1]} columns.")
        x = x.iloc[:, 0]
    if np.iscomplexobj(x):  # (numpy would drop the imaginary part with only a ComplexWarning)
        raise DataError(f"`{name}` must be real numbers; got complex values.")
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise DataError(f"`{name}` must be numeric; got values of type {np.asarray(x).dtype}.") from None
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.ravel()
    if arr.ndim != 1:
        raise DataError(f"`{name}` must be one-dimensional; got shape {arr.shape}.")
    if n is not None and arr.shape[0] != n:
        raise DataError(f"`{name}` must have one entry per row of endog; got {arr.shape[0]} for {n} rows.")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"`{name}` must be finite; got {int(bad.sum())} NaN/inf value(s), the first at row {i}."
        )
    return arr


def read_only_copy(x):
    """A read-only copy of an array (other values unchanged): a model's data and a result's arrays, which
    later writes by the caller (or into them) would leave out of step with what was built or fitted from them."""
    if isinstance(x, tuple):  # (a mixture's parts: weights, means, SDs)
        return tuple(read_only_copy(v) for v in x)
    if not isinstance(x, np.ndarray):
        return x
    out = np.array(x)
    out.flags.writeable = False
    return out


def check_aligned(**arguments):
    """Raise DataError where pandas arguments (Series or DataFrames, given by name in order, the first the
    reference) carry row indexes that differ: rows are matched by position, as statsmodels requires, and
    a shuffled index would pair one row's response with another's covariates without any sign."""
    indexed = [(name, value.index) for name, value in arguments.items()
               if isinstance(value, (pd.Series, pd.DataFrame))]
    if len(indexed) < 2:
        return
    ref_name, ref = indexed[0]
    for name, index in indexed[1:]:
        if index.equals(ref):
            continue
        if len(index) != len(ref):  # (the row counts are checked, with their own message, where converted)
            continue
        pos = int(np.flatnonzero(index.to_numpy(dtype=object) != ref.to_numpy(dtype=object))[0])
        at, at_ref = (v.item() if isinstance(v, np.generic) else v for v in (index[pos], ref[pos]))
        raise DataError(
            f"`{name}` must have the same row index as `{ref_name}` (rows are matched by position); got indexes "
            f"that differ, first at position {pos}: {at!r} against {at_ref!r}. Reorder one like the "
            f"other (e.g. `{name}.loc[{ref_name}.index]`) or pass arrays.")


def as_endog(endog) -> np.ndarray:
    y = as_row_vector(endog, "endog")
    if y.size == 0:
        raise DataError("`endog` must have at least one row; got an empty array.")
    return y


def _as_array(value, name):
    """``np.asarray(value)`` with a ragged list (rows of different lengths) named as such."""
    try:
        return np.asarray(value)
    except ValueError as exc:
        raise DataError(f"`{name}` must be a rectangular array (rows of equal length); got a "
                        f"{type(value).__name__} of rows of different lengths.") from None


def check_distinct_columns(df, name):
    """Raise DataError where the DataFrame ``df`` (the argument ``name``) repeats a column name."""
    dup = df.columns[df.columns.duplicated()]
    if len(dup):
        raise DataError(f"`{name}` must have distinct column names; got {str(dup[0])!r} more than once.")


def as_exog(exog, n, names=None):
    """Return ``(X, names)``: a finite float matrix of full column rank."""
    if exog is None:
        return np.zeros((n, 0)), []
    if isinstance(exog, type):
        raise DataError(f"`exog` must be data, not a class; got {exog.__name__}.")
    if isinstance(exog, pd.Series):
        names = names or [str(exog.name) if exog.name is not None else "FE_1"]
        exog = exog.to_frame()
    if isinstance(exog, pd.DataFrame):
        check_distinct_columns(exog, "exog")
        for col in exog.columns:
            if not (pd.api.types.is_numeric_dtype(exog[col]) or pd.api.types.is_bool_dtype(exog[col])):
                raise DataError(
                    f"exog column `{col}` must be numeric; got dtype {exog[col].dtype}. "
                    "Use BayesMixedGLM.from_formula to encode categorical columns."
                )
        names = names or [str(c) for c in exog.columns]
        X = exog.to_numpy(dtype=float)
    else:
        if sp.issparse(exog):
            exog = exog.toarray()
        X = _as_array(exog, "exog")
        if X.dtype.kind not in "biuf":
            raise DataError(
                f"`exog` must be numeric; got dtype {X.dtype}. "
                "Use BayesMixedGLM.from_formula to encode categorical columns."
            )
        X = X.astype(float)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise DataError(f"`exog` must be two-dimensional; got shape {X.shape}.")
    if X.shape[0] != n:
        raise DataError(f"`exog` must have one row per entry of endog; got {X.shape[0]} rows for {n}.")
    p = X.shape[1]
    names = as_names(names if names is not None else [f"FE_{j + 1}" for j in range(p)], p, "fep_names",
                     "column of exog")
    for j in range(p):
        col = X[:, j]
        if not np.isfinite(col).all():
            nan = np.isnan(col)
            what = "all-NaN" if nan.all() else f"{int((~np.isfinite(col)).sum())} NaN/inf value(s)"
            raise DataError(f"exog column `{names[j]}` must be finite; got {what}.")
        if np.all(col == 0):
            raise DataError(f"exog column `{names[j]}` must not be all zero; it carries no information.")
    const = [names[j] for j in range(p) if np.ptp(X[:, j]) == 0]
    if len(const) > 1:
        raise DataError(
            f"exog must have at most one constant column (the intercept); got {len(const)}: {_describe(const)}."
        )
    if p:
        _check_rank(X, names)
    return X, names


def _check_rank(X, names):
    from scipy.linalg import qr

    scale = np.sqrt(np.einsum("ij,ij->j", X, X) / X.shape[0])  # (an axis-0 mean of X**2 is 10x slower)
    Xs = X / scale
    _, R, piv = qr(Xs, mode="economic", pivoting=True)
    d = np.abs(np.diag(R))
    tol = d.max() * max(X.shape) * 1e-10
    rank = int((d > tol).sum())
    if rank < X.shape[1]:
        dropped = [names[j] for j in piv[rank:]]
        raise DataError(
            f"exog must have full column rank; got rank {rank} for {X.shape[1]} columns. "
            f"These columns are linear combinations of the others: {_describe(dropped)}."
        )


def as_exog_vc(exog_vc, n):
    if exog_vc is None:
        return sp.csr_matrix((n, 0))
    if isinstance(exog_vc, type):
        raise DataError(f"`exog_vc` must be data, not a class; got {exog_vc.__name__}.")
    if isinstance(exog_vc, pd.DataFrame):
        exog_vc = exog_vc.to_numpy()
    if sp.issparse(exog_vc):
        if exog_vc.dtype.kind == "c":  # (the conversion would drop the imaginary part with only a ComplexWarning)
            raise DataError("`exog_vc` must be real numbers; got complex values.")
        Z = sp.csr_matrix(exog_vc, dtype=float)
    else:
        arr = _as_array(exog_vc, "exog_vc")
        if arr.dtype.kind not in "biuf":
            raise DataError(f"`exog_vc` must be numeric; got dtype {arr.dtype}.")
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise DataError(f"`exog_vc` must be two-dimensional; got shape {arr.shape}.")
        Z = sp.csr_matrix(arr.astype(float))
    if Z.shape[0] != n:
        raise DataError(f"`exog_vc` must have one row per entry of endog; got {Z.shape[0]} rows for {n}.")
    Z.sum_duplicates()
    if not np.isfinite(Z.data).all():
        raise DataError("`exog_vc` must be finite; got NaN/inf entries.")
    Z.eliminate_zeros()
    return Z


def check_components_nonzero(Z, ident, vcp_names):
    """Raise DataError where every column of a variance component is zero in ``Z`` (``exog_vc``): no row
    carries its effects, so the data say nothing of its SD and the fit would report the prior as its
    posterior (an all-zero slope column, a grouping factor missing from every kept row)."""
    if Z.shape[1] == 0:
        return
    used = np.bincount(ident[Z.indices], minlength=len(vcp_names)) if Z.nnz else np.zeros(len(vcp_names))
    empty = [vcp_names[c] for c in np.flatnonzero(used == 0)]
    if empty:
        raise DataError(
            f"every variance component must have a nonzero entry in `exog_vc`; got none in the columns of "
            f"{_describe(empty)}: no row carries those random effects (an all-zero slope?), so the data say "
            "nothing of their SD. Leave the component out.")


def as_ident(ident, q, vcp_names=None):
    """Map ``ident`` labels to component codes ``0..k-1``.

    Distinct labels are ordered by sorting when they are mutually comparable (so
    integer labels 0..k-1 keep their meaning), otherwise by first appearance.
    Labels that do not occur do not create components.
    """
    if q == 0:
        return np.zeros(0, dtype=np.int64), list(vcp_names or [])
    if ident is None:
        raise DataError(f"`ident` must be given when exog_vc has columns; got None for {q} columns.")
    if isinstance(ident, type):
        raise DataError(f"`ident` must be data, not a class; got {ident.__name__}.")
    if isinstance(ident, (list, tuple)) and any(isinstance(v, tuple) for v in ident):
        lab = np.empty(len(ident), dtype=object)  # tuples are labels, not rows of a 2-D array
        lab[:] = list(ident)
    else:
        lab = np.asarray(ident)
    if lab.ndim != 1:
        raise DataError(f"`ident` must be one-dimensional; got shape {lab.shape}.")
    if lab.shape[0] != q:
        raise DataError(f"`ident` must have one entry per column of exog_vc; got {lab.shape[0]} for {q} columns.")
    if lab.dtype.kind == "f" and not np.isfinite(lab).all():
        raise DataError("`ident` must not contain NaN.")
    missing = (sum(v is None or (isinstance(v, float) and not np.isfinite(v)) for v in lab)
               if lab.dtype == object else 0)
    if missing:
        raise DataError("`ident` must not contain None or NaN (a missing label is no component); got "
                        f"{missing} of them.")
    uniq_first = list(dict.fromkeys(lab.tolist()))
    try:
        uniq = sorted(uniq_first)
    except TypeError:
        uniq = uniq_first
    pos = {u: i for i, u in enumerate(uniq)}
    codes = np.fromiter((pos[v] for v in lab.tolist()), dtype=np.int64, count=q)
    k = len(uniq)
    if vcp_names is None:
        # (numbers, as statsmodels codes them; whole floats too, which pandas makes of integers with gaps: "VC_1",
        # not "0.0" in every message)
        if lab.dtype.kind in "iu" or (lab.dtype.kind == "f" and np.all(lab == np.round(lab))):
            vcp_names = [f"VC_{int(u) + 1}" for u in uniq]
        else:
            vcp_names = [str(u) for u in uniq]
    return codes, as_names(vcp_names, k, "vcp_names", "distinct ident label")


def as_names(names, count, what, per):
    """``names`` as a list of ``count`` distinct strings (``what`` names the argument, ``per`` what
    each name labels)."""
    if isinstance(names, str):
        raise DataError(f"`{what}` must be a list of names; got the string {names!r}.")
    names = [str(v) for v in names]
    if len(names) != count:
        raise DataError(f"`{what}` must have one name per {per}; got {len(names)} for {count}.")
    seen = set()
    dup = next((v for v in names if v in seen or seen.add(v)), None)
    if dup is not None:
        raise DataError(f"`{what}` must be distinct; got {dup!r} more than once.")
    return names


def _check_number(value, name, positive):
    what = "a positive" if positive else "a non-negative"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DataError(f"`{name}` must be {what} number; got {value!r}.") from None
    if not (np.isfinite(v) and (v > 0 if positive else v >= 0)):
        raise DataError(f"`{name}` must be {what} finite number; got {value!r}.")
    return v


def check_positive(value, name):
    """``value`` as a float, which must be finite and > 0."""
    return _check_number(value, name, positive=True)


def check_prior_sd(value, name):
    """A prior SD: positive, and within 1e-6 to 1e6 (beyond, its precision under- or overflows the
    objective's arithmetic)."""
    v = _check_number(value, name, positive=True)
    if not 1e-6 <= v <= 1e6:
        raise DataError(f"`{name}` must be a prior SD between 1e-6 and 1e6; got {value!r}.")
    return v


def check_callback(callback):
    """``callback``: None or a callable ``f(fraction, message)``."""
    if callback is not None and not callable(callback):
        raise DataError(f"`callback` must be a function f(fraction, message) or None; got {callback!r}.")
    if callback is not None:
        import inspect

        try:
            signature = inspect.signature(callback)
        except ValueError:  # (a builtin without a signature: taken as it is)
            signature = None
        if signature is not None:
            try:
                signature.bind(0.5, "message")
            except TypeError:
                raise DataError(f"`callback` must take two arguments, f(fraction, message); got {callback!r}, "
                                f"whose signature is {signature}.") from None
    return callback


def check_nonnegative(value, name):
    """``value`` as a float, which must be finite and >= 0."""
    return _check_number(value, name, positive=False)


def check_count(value, name, low=None):
    """An integer of at least ``low`` (an iteration limit, a number of groups), by default a positive one."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (1 if low is None else low):
        what = "a positive integer" if low is None else f"an integer >= {low}"
        raise DataError(f"`{name}` must be {what}; got {value!r}.")
    return int(value)


def check_family_data(family, y, trials) -> list[str]:
    """Family-specific checks on the response; returns the notes it also issued as warnings."""
    notes: list[str] = []
    if family.name == "binomial":
        if trials is None:
            bad = ~np.isin(y, (0.0, 1.0))
            if bad.any():
                vals = np.unique(y[bad])
                raise DataError(
                    "endog must be 0 or 1 for the binomial family without `trials`; "
                    f"got {_describe(vals.tolist())}. Give `trials` for successes out of n."
                )
        else:
            if np.any(trials < 0) or np.any(trials != np.round(trials)):
                raise DataError("`trials` must be non-negative integers.")
            if np.any(y < 0) or np.any(y != np.round(y)):
                raise DataError("endog must be non-negative integer success counts when `trials` is given.")
            over = y > trials
            if over.any():
                i = int(np.flatnonzero(over)[0])
                raise DataError(
                    f"endog (successes) must not exceed `trials`; got {y[i]:g} > {trials[i]:g} at row {i}"
                    f" ({int(over.sum())} row(s) in all)."
                )
        lo = y.sum() == 0
        hi = y.sum() == (trials.sum() if trials is not None else y.size)
        if lo or hi:
            notes.append(f"The response (endog) is {'all failures' if lo else 'all successes'}: the fixed-effect "
                         "intercept is identified only by its prior.")
            warnings.warn(notes[-1], DataWarning, stacklevel=4)
    elif family.name == "poisson":
        if trials is not None:
            raise DataError("`trials` must be None for the Poisson family; use `offset` for exposure.")
        if np.any(y < 0):
            raise DataError(f"endog must be non-negative counts for the Poisson family; got min {y.min():g}.")
        if np.any(y != np.round(y)):
            i = int(np.flatnonzero(y != np.round(y))[0])
            raise DataError(
                f"endog must be integer counts for the Poisson family; got {y[i]:g} at row {i}."
            )
        if y.size and not np.any(y):
            notes.append("The response (endog) is all zeros: the fixed-effect intercept is identified only by its "
                         "prior.")
            warnings.warn(notes[-1], DataWarning, stacklevel=4)
    return notes
