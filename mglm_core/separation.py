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
:math:`C \ne \{0\}`, decided by one linear programme (Konis 2007): maximise
:math:`\sum_i s_i x_i^\top \beta` over :math:`C \cap [-1, 1]^p`, positive exactly when
:math:`C \ne \{0\}`. The equalities are solved first (:math:`\beta` in the null space of the other rows),
and with many rows the programme runs on a sample of them first: the cone of a sample holds the
cone of all rows, so a sample's :math:`\{0\}` (its rows of full rank) settles it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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
    """

    direction: np.ndarray
    columns: tuple
    strict_rows: int
    dimension: int = 1

    def message(self, family_name: str) -> str:
        """The warning for this separation, in plain words."""
        terms = ", ".join(f"{c} {v:+.3g}" for c, v in zip(self.columns, self.direction[self.direction != 0]))
        what = ("the outcomes (successes against failures)" if family_name == "binomial"
                else "the zero counts from the others")
        return (f"The fixed effects {', '.join(self.columns)} separate {what}: along the direction ({terms}) "
                f"the likelihood rises without bound ({self.strict_rows} rows rise, none falls), so only the prior "
                "(fe_p) keeps these coefficients finite. Their posterior along it is one-sided and far from Gaussian: "
                "fit_map's and fit_vb's Gaussian summaries of them are unreliable (fit_laplace integrates along it "
                "numerically), and their means, SDs and intervals reflect fe_p more than the data. Merge or drop the "
                "levels concerned, or choose fe_p as a deliberate, informative prior.")


def _signs(y, trials, family_name):
    """``(s, mixed)``: +1 / -1 for rows at the upper / lower boundary (0 elsewhere), and the other rows."""
    if family_name == "poisson":
        s = np.where(y <= 0, -1.0, 0.0)
    else:
        n = np.ones_like(y) if trials is None else trials
        s = np.where(y <= 0, -1.0, np.where(y >= n, 1.0, 0.0))
    return s, s == 0


def _cone_direction(A):
    r"""The maximiser of :math:`\sum_i a_i^\top \gamma` over :math:`\{A\gamma \ge 0\} \cap [-1, 1]^d`
    (None where the maximum is 0: the cone is :math:`\{0\}` if A has full column rank)."""
    d = A.shape[1]
    if A.shape[0] == 0:
        return None
    res = linprog(-A.sum(axis=0), A_ub=-A, b_ub=np.zeros(A.shape[0]), bounds=[(-1.0, 1.0)] * d,
                  method="highs")
    if res.status != 0 or -res.fun <= _TOL * max(1.0, float(np.abs(A).sum(axis=1).max())):
        return None
    return res.x


def _cutting_planes(rows, one, sample_rows, seed, rounds=20):
    r"""The cone's direction over the rows ``one`` (:func:`_cone_direction` of ``rows(one)``), from a sample
    of them first: a sample of full rank whose cone is :math:`\{0\}` settles it (the sample's cone holds all
    rows'); else the rows the sample's direction violates (or, for a sample short of rank, the rows outside
    its span: a rare covariate's) join it, and the programme runs again (a cutting-plane method). All rows
    at once after ``rounds``."""
    if one.size <= sample_rows:
        return _cone_direction(rows(one))
    idx = np.sort(np.random.default_rng(seed).choice(one, sample_rows, replace=False))
    for _ in range(rounds):
        A = rows(idx)
        gamma = _cone_direction(A)
        if gamma is None:
            rest = null_space(A.T @ A, rcond=1e-10)
            if rest.shape[1] == 0:
                return None
            far = one[np.abs(rows(one) @ rest).max(axis=1) > _TOL]
        else:
            v = rows(one) @ gamma
            if np.all(v >= -_TOL * max(1.0, float(np.abs(v).max()))):
                return gamma
            worst = np.argsort(v, kind="stable")[:sample_rows]
            far = one[worst[v[worst] < 0]]
        new = np.setdiff1d(far, idx)
        if new.size == 0:
            break
        if new.size > sample_rows:
            new = np.random.default_rng(seed).choice(new, sample_rows, replace=False)
        idx = np.union1d(idx, new)
    return _cone_direction(rows(one))


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
        Xm = X[mixed] / scale
        G = Xm.T @ Xm  # (p x p: the null space of the rows is that of their Gram matrix)
        N = null_space(G, rcond=1e-10)  # (G's singular values are the squares of the rows' : 1e-5 relative)
        if N.shape[1] == 0:
            return None
    else:
        N = np.eye(p)
    one = np.flatnonzero(~mixed)
    Xs = X / scale

    def rows(idx):
        return (Xs[idx] @ N) * s[idx, None]

    gamma = _cutting_planes(rows, one, sample_rows, seed)
    if gamma is None:
        return None
    beta = (N @ gamma) / scale
    beta /= np.abs(beta).max()
    beta[np.abs(beta) < _TOL ** 0.5] = 0.0
    # (a direction the programme's tolerances let through must hold on every row)
    eta = X @ beta
    size = float(np.abs(eta).max())
    if size == 0.0 or np.any(s[one] * eta[one] < -1e-6 * size) or np.any(np.abs(eta[mixed]) > 1e-6 * size):
        return None
    rises = s[one] * eta[one] > 1e-6 * size
    cols = tuple(str(names[j]) for j in np.flatnonzero(beta))
    # the cone's dimension: p less the rank of the rows held at zero along it (the rows with both outcomes and
    # the one-sided rows that do not rise; exact where the direction is inside the cone, as the programme's
    # maximiser of the rows' sum normally is)
    held = np.concatenate([np.flatnonzero(mixed), one[~rises]])
    rank = np.linalg.matrix_rank(Xs[held]) if held.size else 0
    return Separation(direction=beta, columns=cols, strict_rows=int(rises.sum()), dimension=max(1, p - rank))
