r"""Matrix-free solves for random-effect blocks too large to factor: many crossed levels.

Two crossed factors with tens of thousands of levels each (students x items, raters x
targets) give a random-effect block :math:`A = Z^\top W Z + \mathrm{diag}(\text{prior precision})`
whose Cholesky factor fills in completely: after eliminating one factor exactly, the Schur
complement of the other is a dense :math:`m \times m` matrix (20 GB for m = 50,000), and a
general sparse factorisation fares no better. Such blocks are solved here by the
preconditioned conjugate gradient method: the levels of one factor (an independent set P of
A's graph, whose block is diagonal) are eliminated exactly and the Schur complement
:math:`S = A_{DD} - A_{DP} A_{PP}^{-1} A_{PD}` of the others is solved with its diagonal as the
preconditioner (Jacobi), never formed: every iteration is one product with the sparse blocks of A,
O(nnz(A)). For crossed random effects the preconditioned block :math:`M = D^{-1/2} A D^{-1/2} = I - F`
(D = diag(A)) is well conditioned except along a few directions (the levels of one factor shifted
against the other, determined only by the prior), which the method removes in a few extra
iterations; the reduction to S squares the spectrum of F and quarters the condition number.

What the fits need besides solves:

* :math:`\mathrm{diag}(A^{-1})` (posterior SDs of the random effects, in ``fit_map``): by the
  variances of Gaussian belief propagation on the graph of A (:func:`gabp_variances`), exact
  where that graph is a tree and close to exact where its cycles are long, as in crossed designs
  too large to factor (levels of tens of thousands, each crossing a few dozen levels of the
  other factor). Measured against the exact diagonal (dense Schur route, 3000 x 3000 levels,
  60,000 Poisson rows): median relative error of the variances 0.2 %, largest 3 % (SDs: half of
  that); on a far denser crossing (200 x 200 levels, 4,000 rows) largest 14 %.
* the log-determinant is *not* available: the integrated fit (``fit_laplace``) needs it exactly at
  every integration point and refuses such designs with a clear error; ``fit_map`` and
  ``fit_vb`` need only solves.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["IterativeSPD", "pcg", "gabp_variances"]

#: Relative residual (in the preconditioned norm) at which a solve stops.
RTOL = 1e-10
#: Iterations at most per solve (each one product with A).
MAX_ITER = 2000
#: Belief-propagation sweeps at most, and the change of the messages at which they stop.
GABP_MAX_ITER = 200
GABP_TOL = 1e-10


def pcg(matvec, b, dinv, rtol=RTOL, max_iter=MAX_ITER, not_pd=ArithmeticError):
    r"""Preconditioned conjugate gradients for :math:`A x = b`, column by column of ``b`` at once.

    Parameters
    ----------
    matvec : callable
        ``matvec(P) -> A @ P`` for a (q, c) array.
    b : ndarray (q,) or (q, c)
    dinv : ndarray (q,)
        The Jacobi preconditioner :math:`1 / \mathrm{diag}(A)`.
    rtol : float
        Stop a column when :math:`\|r\|_{D^{-1}} \le rtol\,\|b\|_{D^{-1}}`.
    not_pd : exception class
        Raised when a search direction has :math:`p^\top A p \le 0` (A is not positive definite).

    Returns
    -------
    (x, iterations, relative residual of the worst column)
    """
    vec = b.ndim == 1
    B = b[:, None] if vec else b
    X = np.zeros_like(B, dtype=float)
    R = np.array(B, dtype=float)
    Zp = dinv[:, None] * R
    P = Zp.copy()
    rz = np.einsum("ij,ij->j", R, Zp)
    target = rtol**2 * rz
    active = rz > 0
    it = 0
    while active.any() and it < max_iter:
        it += 1
        cols = slice(None) if active.all() else np.flatnonzero(active)  # (a view while all are active)
        Pa = P[:, cols]
        AP = matvec(Pa)
        pap = np.einsum("ij,ij->j", Pa, AP)
        if np.any(~(pap > 0)):
            raise not_pd("random-effect block is not positive definite")
        alpha = rz[cols] / pap
        X[:, cols] += Pa * alpha
        Ra = R[:, cols] - AP * alpha
        R[:, cols] = Ra
        Za = dinv[:, None] * Ra
        rz_new = np.einsum("ij,ij->j", Ra, Za)
        Za += Pa * (rz_new / rz[cols])
        P[:, cols] = Za
        rz[cols] = rz_new
        active[cols] = rz_new > target[cols]
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.sqrt(np.where(target > 0, rz / np.where(target > 0, target, 1.0), 0.0)) * rtol
    worst = float(np.max(rel)) if rel.size else 0.0
    return (X[:, 0] if vec else X), it, worst


class IterativeSPD:
    r"""A sparse SPD matrix "factored" for conjugate-gradient solves (see the module docstring).

    Offers the factorisation interface the Newton fits use (``solve``, ``diag_inverse``);
    ``logdet`` and ``inverse_on_pattern`` raise, as no exact value is available.
    """

    is_diagonal = False
    approximate = True

    def __init__(self, A, symbolic=None, not_pd=ArithmeticError):
        A = A if sp.isspmatrix_csc(A) else sp.csc_matrix(A)
        self.symbolic = symbolic
        self.n = A.shape[0]
        self._not_pd = not_pd
        d = A.diagonal()
        if np.any(~(d > 0)):
            raise not_pd("sparse block is not positive definite")
        self.d = d
        self._A = A.T  # CSR view of the symmetric A: fast products
        self.max_iter = MAX_ITER
        self.iterations = 0  # conjugate-gradient iterations so far (all solves)
        self.max_residual = 0.0  # worst relative residual of any solve
        P = getattr(symbolic, "P", None)
        D = getattr(symbolic, "D", None)
        self._reduced = P is not None and D is not None and P.size > 0 and D.size > 0
        if self._reduced:
            # P is an independent set of A's graph (its block is diagonal): conjugate gradients on the
            # Schur complement S = A_DD - N' diag(d_P)^-1 N of the rest (red-black reduction: for two
            # crossed factors the condition number is about a quarter of the full block's)
            self._P, self._D = P, D
            rowsP = self._A[P]
            self._N = rowsP[:, D]
            self._NT = self._N.T.tocsr()
            self._ADD = self._A[D][:, D]
            self._dP = d[P]
            self._dS = self._ADD.diagonal() - np.asarray(self._N.multiply(self._N).T @ (1.0 / self._dP)).ravel()
            if np.any(~(self._dS > 0)):
                raise not_pd("sparse block is not positive definite")

    def _matvec(self, X):
        return self._A @ X

    def _schur_matvec(self, X):
        return self._ADD @ X - self._NT @ ((self._N @ X) / self._dP[:, None])

    def solve(self, b):
        b = np.asarray(b, dtype=float)
        if not self._reduced:
            x, it, res = pcg(self._matvec, b, 1.0 / self.d, max_iter=self.max_iter, not_pd=self._not_pd)
        else:
            vec = b.ndim == 1
            b2 = b[:, None] if vec else b
            y_P = b2[self._P] / self._dP[:, None]
            x_D, it, res = pcg(self._schur_matvec, b2[self._D] - self._NT @ y_P, 1.0 / self._dS,
                               max_iter=self.max_iter, not_pd=self._not_pd)
            x = np.empty_like(b2)
            x[self._D] = x_D
            x[self._P] = y_P - (self._N @ x_D) / self._dP[:, None]
            x = x[:, 0] if vec else x
        self.iterations += it
        self.max_residual = max(self.max_residual, res)
        return x

    def logdet(self) -> float:
        raise NotImplementedError(
            "the log-determinant of this random-effect block is not available: it is too large to factor "
            "(many crossed levels) and is solved iteratively")

    def inverse_on_pattern(self, a, b, keep_plan=False):
        raise NotImplementedError(
            "entries of the inverse of this random-effect block are not available: it is too large to factor "
            "(many crossed levels) and is solved iteratively")

    def diag_inverse(self) -> np.ndarray:
        r"""Approximate diagonal of :math:`A^{-1}`: :func:`gabp_variances` (``diag_method`` says
        ``"belief propagation"``), or where its sweeps do not converge the first-order value
        :math:`1/(A_{ii} - \sum_j A_{ij}^2 / A_{jj})` (``diag_method = "first order"``)."""
        if not hasattr(self, "_diag"):
            var, ok = gabp_variances(self._A)
            self.diag_method = "belief propagation" if ok else "first order"
            self._diag = var
        return self._diag.copy()


def gabp_variances(A, max_iter=GABP_MAX_ITER, tol=GABP_TOL):
    r"""Variances of Gaussian belief propagation for the precision matrix A (sparse, symmetric).

    In the coordinates :math:`M = D^{-1/2} A D^{-1/2}` (unit diagonal, off-diagonal entries
    :math:`m_{ij}`), the precision that node j passes to node i is

    .. math::

        P_{j \to i} = 1 - \sum_{k \in N(j) \setminus i} \frac{m_{jk}^2}{P_{k \to j}},
        \qquad (A^{-1})_{ii} \approx \frac{1}{A_{ii}\,\big(1 - \sum_{j \in N(i)} m_{ij}^2 / P_{j \to i}\big)},

    iterated from :math:`P = 1` (all messages at once, O(nnz(A)) per sweep). The fixed point is
    exact on a tree; for a diagonally dominant A (random intercepts: :math:`A_{ii} = \sum_j |A_{ij}|`
    plus the prior precision) the sweeps converge. Returns ``(variances, converged)``; when they do
    not converge (or a precision turns non-positive), the variances of the first sweep (or 1/A_ii
    where those are not positive).
    """
    A = sp.csr_matrix(A)
    n = A.shape[0]
    d = A.diagonal()
    coo = A.tocoo()
    off = coo.row != coo.col
    r, c = coo.row[off].astype(np.int64), coo.col[off].astype(np.int64)
    m2 = coo.data[off] ** 2 / (d[r] * d[c])
    key = r * n + c
    order = np.argsort(key, kind="stable")
    rev = order[np.searchsorted(key[order], c * n + r)]  # the entry (j, i) of each (i, j)

    def variances(msg):
        return 1.0 / (d * (1.0 - np.bincount(r, weights=m2 / msg, minlength=n)))

    msg = np.ones(r.size)  # msg[e] for the entry e = (i, j): P_{j -> i}
    first = variances(msg)
    first = np.where(first > 0, first, 1.0 / d)  # (not diagonally dominant: the Jacobi value)
    for _ in range(max_iter):
        total = np.bincount(r, weights=m2 / msg, minlength=n)
        new = np.empty_like(msg)
        new[rev] = 1.0 - total[r] + m2 / msg  # P_{i -> j} sits at the entry (j, i)
        if not np.all(new > 0):
            return first, False
        change = float(np.max(np.abs(new - msg))) if msg.size else 0.0
        msg = new
        if change < tol:
            var = variances(msg)
            return (var, True) if np.all(var > 0) else (first, False)
    return first, False
