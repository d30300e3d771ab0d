r"""Separation: fixed effects that the outcomes leave to the prior.

The likelihood of a logistic or log-linear model rises without bound along a direction
:math:`\beta \ne 0` of the fixed effects when every row's term is non-decreasing along it:

.. math::

    s_i\, x_i^\top \beta \ge 0 \ \text{(rows at one boundary)}, \qquad
    x_i^\top \beta = 0 \ \text{(the other rows)},

with :math:`s_i = +1` for a binomial row whose outcomes are all successes, :math:`-1` for one whose
outcomes are all failures or a Poisson row of count 0 (a Poisson row with a positive count, or a
binomial row with both outcomes, bounds its term on both sides). As :math:`X` has full column rank,
some row is then strict (complete or quasi-complete separation; Albert & Anderson 1984). The random
effects do not change the signs, so the fixed effects' posterior along :math:`\beta` is the prior's
tail times a likelihood that levels off: one-sided, far from Gaussian, with a mean and SD set by
``fe_p``. No Gaussian approximation at a mode describes it: :mod:`mglm_core.separated` integrates along it.

The directions satisfying the constraints form a polyhedral cone :math:`C`; separation is
:math:`C \ne \{0\}`. The equalities are solved first (:math:`\beta` in the null space of the other rows).
A cheap linear programme (Konis 2007: maximise :math:`\sum_i s_i x_i^\top \beta` over
:math:`C \cap [-1, 1]^p`, 0 exactly when :math:`C = \{0\}` for rows of full rank) rules separation out; else
Freund, Roundy & Todd's programme finds a direction inside :math:`C` and the rows zero on all of it, whence
the cone's dimension and span. With many rows the programmes run on a sample first: the cone of a sample
holds the cone of all rows, so a sample's :math:`\{0\}` settles it, and otherwise rows join the sample
until its direction holds on all of them (cutting planes).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.linalg import null_space
from scipy.optimize import linprog

__all__ = ["Separation", "find_separation"]

#: Rows of the linear programme before a sample is tried first.
SAMPLE_ROWS = 5000
_TOL = 1e-7  # (relative: directions and row terms below this are zero)


@dataclass(frozen=True)
class Separation:
    """A direction along which the likelihood rises without bound.

    Attributes
    ----------
    direction : ndarray (p,)
        :math:`\\beta` on the scale of the columns, largest entry 1 in absolute value.
    columns : tuple of str
        The fixed effects with a nonzero entry in ``direction``.
    strict_rows : int
        Rows whose term still rises along it (the others are unchanged).
    dimension : int
        The dimension of the cone of such directions (1: this direction alone; two levels of a factor
        without events each: 2).
    span : ndarray (p, dimension)
        An orthonormal basis of the cone's span on the scale of the columns, ``direction`` (normalised) first.
    """

    direction: np.ndarray
    columns: tuple
    strict_rows: int
    dimension: int
    span: np.ndarray

    def message(self, family_name: str) -> str:
        """The warning for this separation, in plain words."""
        terms = ", ".join(f"{c} {v:+.3g}" for c, v in zip(self.columns, self.direction[self.direction != 0]))
        what = ("the outcomes (successes against failures)" if family_name == "binomial"
                else "the zero counts from the others")
        cone = (f" (one of a cone of {self.dimension} independent such directions)" if self.dimension > 1 else "")
        return (f"The fixed effects {', '.join(self.columns)} separate {what}: along the direction ({terms}){cone} "
                f"the likelihood rises without bound ({self.strict_rows} rows rise, none falls), so only the prior "
                "(fe_p) keeps these coefficients finite. Their posterior along it is one-sided and far from Gaussian: "
                "fit_map's and fit_vb's Gaussian summaries of them are unreliable (fit_laplace integrates along it "
                "numerically), and their means, SDs and intervals reflect fe_p more than the data. Merge or drop the "
                "levels concerned, or choose fe_p as a deliberate, informative prior.")


def _null_space(A):
    """An orthonormal basis of the directions every row of ``A`` is zero on (of its Gram matrix, d x d: its
    singular values are the squares of the rows', so 1e-10 is 1e-5 relative); all of them without rows."""
    return null_space(A.T @ A, rcond=1e-10) if A.shape[0] else np.eye(A.shape[1])


def _signs(y, trials, family_name):
    """``(s, mixed)``: +1 / -1 for rows at the upper / lower boundary (0 elsewhere), and the rows whose term is
    bounded on both sides (a binomial row with both outcomes, a Poisson row with a positive count). A binomial
    row of no trials is neither: it adds nothing to the likelihood."""
    if family_name == "poisson":
        s = np.where(y <= 0, -1.0, 0.0)
        return s, s == 0
    n = np.ones_like(y) if trials is None else trials
    s = np.where(n <= 0, 0.0, np.where(y <= 0, -1.0, np.where(y >= n, 1.0, 0.0)))
    return s, (s == 0) & (n > 0)


def _cone_is_zero(A):
    r"""Whether the cone :math:`\{\gamma : A\gamma \ge 0\}` is :math:`\{0\}`, by the cheaper programme first:
    the maximum of :math:`\sum_i a_i^\top \gamma` over it and the box :math:`[-1, 1]^d` is 0 and A has full column
    rank (every direction of a larger cone is positive on some row). (Of d variables, not d + rows: at 5000 rows,
    a tenth of :func:`_relative_interior`'s time, and most models are not separated.)"""
    m, d = A.shape
    if m == 0 or np.linalg.matrix_rank(A) < d:
        return False
    res = linprog(-A.sum(axis=0), A_ub=-A, b_ub=np.zeros(m), bounds=[(-1.0, 1.0)] * d, method="highs")
    return res.status == 0 and -res.fun <= _TOL * max(1.0, float(np.abs(A).sum(axis=1).max()))


def _relative_interior(A):
    r"""A direction inside the cone :math:`\{\gamma : A\gamma \ge 0\}` and the rows that are positive somewhere on
    it, by Freund, Roundy & Todd's programme: maximise :math:`\sum_i \tau_i` over :math:`A\gamma \ge \tau`,
    :math:`0 \le \tau \le 1` (:math:`\gamma` free). The cone is closed under sums and scaling, so the optimum has
    :math:`\tau_i = 1` on every row positive somewhere and 0 on the rows zero on all of it; its :math:`\gamma` is
    positive on all the former, a direction of the relative interior (the sum of the rows, maximised over a box,
    gave a corner: an edge of a cone of more dimensions, along which rows positive elsewhere were zero).
    Returns ``(gamma, positive)``; ``gamma`` None where no row is positive anywhere."""
    m, d = A.shape
    if m == 0:
        return None, np.zeros(0, dtype=bool)
    c = np.concatenate([np.zeros(d), -np.ones(m)])
    A_ub = sp.hstack([sp.csr_matrix(-A), sp.eye(m, format="csr")], format="csr")
    res = linprog(c, A_ub=A_ub, b_ub=np.zeros(m), bounds=[(None, None)] * d + [(0.0, 1.0)] * m, method="highs")
    if res.status != 0:
        return None, np.zeros(m, dtype=bool)
    positive = res.x[d:] > 0.5
    return (res.x[:d] if positive.any() else None), positive


def _cone(rows, one, d, sample_rows, seed, rounds=20):
    r"""``(gamma, rows held)``: a direction of the relative interior of the cone over the one-sided rows ``one``
    (:func:`_relative_interior`) and those of them zero on all of it; ``(None, None)`` where the cone is
    :math:`\{0\}`. With more rows than ``sample_rows``, a sample first (its cone holds all rows'): a sample of full
    rank whose cone is :math:`\{0\}` settles it; else the rows the sample's direction violates or leaves at zero
    (or, for a sample short of rank, the rows outside its span: a rare covariate's) join it and the programme
    runs again (cutting planes), until its direction is positive on every row it leaves out. All rows after
    ``rounds``."""
    def settle(idx):
        A = rows(idx)
        if _cone_is_zero(A):
            return None, None
        gamma, positive = _relative_interior(A)
        return (None, None) if gamma is None else (gamma, idx[~positive])

    if one.size <= sample_rows:
        return settle(one)
    rng = np.random.default_rng(seed)
    # (a tenth of the sample first: its cone is {0} for most data without separation, at a tenth of the time)
    if _cone_is_zero(rows(np.sort(rng.choice(one, max(sample_rows // 10, 4 * d), replace=False)))):
        return None, None
    idx = np.sort(rng.choice(one, sample_rows, replace=False))
    A_one = None
    for _ in range(rounds):
        A = rows(idx)
        if _cone_is_zero(A):
            return None, None  # (the sample's cone holds all rows')
        gamma, positive = _relative_interior(A)
        if A_one is None:
            A_one = rows(one)
        if gamma is None:
            rest = _null_space(A)
            if rest.shape[1] == 0:
                return None, None
            far = one[np.abs(A_one @ rest).max(axis=1) > _TOL]
        else:
            v = A_one @ gamma
            tol = _TOL * max(1.0, float(np.abs(v).max()))
            # rows violated, or zero along gamma and perhaps positive elsewhere on the cone: not orthogonal to the
            # span the sample's cone can have (the null space of its rows held at zero), which holds the cone
            span = _null_space(A[~positive])
            maybe = np.abs(A_one @ span).max(axis=1) > tol if span.shape[1] else np.zeros(one.size, dtype=bool)
            bad = (v < -tol) | ((np.abs(v) <= tol) & maybe & ~np.isin(one, idx))
            if not bad.any():
                return gamma, idx[~positive]
            worst = np.flatnonzero(bad)[np.argsort(v[bad], kind="stable")[:sample_rows]]
            far = one[worst]
        new = np.setdiff1d(far, idx)
        if new.size == 0:
            break
        if new.size > sample_rows:
            new = rng.choice(new, sample_rows, replace=False)
        idx = np.union1d(idx, new)
    return settle(one)


def find_separation(X, y, trials, family_name, names, sample_rows=SAMPLE_ROWS, seed=0):
    """The :class:`Separation` of the fixed effects, or None (see the module docstring).

    Parameters
    ----------
    X : ndarray (n, p)
        Fixed-effects design, full column rank.
    y, trials : ndarray (n,)
        Response (successes) and binomial trials (None: Bernoulli, or the Poisson).
    family_name : {"binomial", "poisson"}
    names : sequence of str
        The fixed effects' names.
    """
    n, p = X.shape
    if p == 0 or n == 0:
        return None
    s, mixed = _signs(y, trials, family_name)
    scale = np.sqrt(np.einsum("ij,ij->j", X, X) / n)
    scale[scale == 0] = 1.0
    # beta = N gamma with N a basis of the null space of the rows with both outcomes (their equalities)
    if mixed.any():
        N = _null_space(X[mixed] / scale)
        if N.shape[1] == 0:
            return None
    else:
        N = np.eye(p)
    one = np.flatnonzero(s != 0)

    def rows(idx):
        return ((X[idx] / scale) @ N) * s[idx, None]

    gamma, held = _cone(rows, one, N.shape[1], sample_rows, seed)
    if gamma is None:
        return None
    Xs = X / scale  # (standardised columns, made only for a separated design)
    # small entries zeroed on the columns' standardised scale (on their own, a slope per unit of an income in
    # the tens of thousands was zeroed and the separation lost), then back to the columns' units
    b = N @ gamma
    b = b / np.abs(b).max()
    b[np.abs(b) < _TOL ** 0.5] = 0.0
    beta = b / scale
    beta /= np.abs(beta).max()
    # (a direction the programme's tolerances let through must hold on every row)
    eta = Xs @ b
    size = float(np.abs(eta).max())
    if size == 0.0 or np.any(s[one] * eta[one] < -1e-6 * size) or np.any(np.abs(eta[mixed]) > 1e-6 * size):
        return None
    rises = s[one] * eta[one] > 1e-6 * size
    cols = tuple(str(names[j]) for j in np.flatnonzero(beta))
    # the cone's dimension: less the rank of the rows zero on all of it (with both outcomes, or one-sided and held)
    zero = np.concatenate([np.flatnonzero(mixed), held])
    inside = _null_space(Xs[zero])  # (the span, standardised columns)
    dimension = max(1, inside.shape[1])
    # the span on the columns' scale (b -> b / scale), orthonormal, the direction first
    d_hat = beta / np.linalg.norm(beta)
    rest = inside / scale[:, None]
    rest = rest - np.outer(d_hat, d_hat @ rest)
    u = np.linalg.svd(rest, full_matrices=False)[0]  # (its leading columns: the span less the direction)
    span = np.column_stack([d_hat, u[:, :dimension - 1]]) if dimension > 1 else d_hat[:, None]
    return Separation(direction=beta, columns=cols, strict_rows=int(rises.sum()), dimension=dimension, span=span)
