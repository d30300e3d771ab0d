r"""A damped Newton ascent on the bordered sparse structure.

The objective is maximised over ``(u, b)``: ``u`` the q random effects (sparse
block of the negative Hessian) and ``b`` the few border parameters. Each
iteration solves :math:`H d = g` with :class:`~mglm_core.linalg.BorderedFactor`
(Levenberg damping :math:`H + \lambda I` when H is not positive definite),
then backtracks along ``d`` until the Armijo condition holds. Convergence is
declared when the Newton decrement :math:`g^\top H^{-1} g / 2` falls below
``tol`` (an estimate of the remaining gain in the objective) on an undamped
step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .errors import FitError
from .linalg import BorderedFactor, NotPositiveDefinite

__all__ = ["NewtonResult", "newton_ascent", "chord_ascent"]

#: Relative rounding of an objective summed over many rows (about 64 machine epsilons): a Newton
#: decrement below it times |value| is converged whatever the tolerance asked.
_ROUNDING = 64 * np.finfo(float).eps


@dataclass
class NewtonResult:
    """Final state of :func:`newton_ascent` with one log row per iteration."""

    u: np.ndarray
    b: np.ndarray
    value: float
    grad_norm: float
    converged: bool
    n_iter: int
    factor: BorderedFactor | None
    log: list = field(default_factory=list)
    message: str = ""
    #: ``(du, db)`` when the last step was taken without refactoring (``free_step``, ``estimate_below``): ``factor`` is
    #: then the factorisation at ``(u - du, b - db)``; None when it is at ``(u, b)``.
    lag: tuple | None = None


def _damped_factor(A, B, C, lam, reuse=None, single=False):
    if lam == 0.0:
        return BorderedFactor(A, B, C, reuse, single=single)
    q, m = A.shape[0], C.shape[0]
    scale_a = lam * (1.0 + np.abs(A.diagonal())) if q else np.zeros(0)
    scale_c = lam * (1.0 + np.abs(np.diag(C))) if m else np.zeros(0)
    return BorderedFactor(A + sp.diags(scale_a), B, C + np.diag(scale_c), reuse, single=single)


def newton_ascent(fun, u0, b0, *, tol=1e-10, max_iter=200, max_halvings=40, stop=None, reuse=None,
                  progress=None, free_step=None, stall_tol=None, single_above=None, first=None,
                  estimate_below=None):
    r"""Maximise ``fun`` by damped Newton steps.

    Parameters
    ----------
    fun : callable
        ``fun(u, b, hessian) -> (value, g_u, g_b, A, B, C)`` where ``(A, B, C)``
        are the blocks of the negative Hessian (None when ``hessian`` is False). Line searches
        call it with ``hessian=None`` and use the value alone (the rest may be None then).
    u0, b0 : ndarray
        Starting point.
    tol : float
        Threshold on the Newton decrement.
    stop : callable, optional
        ``stop(u, b) -> str or None``; a message ends the iterations early (not converged).
    reuse : BorderedFactor, optional
        A factorisation of an earlier problem with the same sparsity pattern (its pattern
        analysis is reused).
    progress : callable, optional
        ``progress(iteration, decrement)``, called once per iteration.
    free_step : float, optional
        With an undamped decrement below this, take the full Newton step and stop without
        factoring at the new point (the iterate is then within about ``decrement**2`` of the
        optimum; ``factor`` stays at the previous point, recorded in ``lag``).
    stall_tol : float, optional
        An objective known only to about this accuracy (a quadrature): when the line search finds
        no ascent along an undamped step whose decrement is below it, the point is accepted as
        converged (by default only below ``1e3 * tol``, machine precision).
    first : tuple, optional
        ``fun(u0, b0, True)`` when the caller has it already.
    estimate_below : float, optional
        With an undamped decrement :math:`\delta` below this, stop at the full Newton step without
        evaluating there: the value is estimated as the current one plus :math:`\delta/2` (an error of
        order :math:`\delta^{3/2}`) and ``factor`` stays at the previous point (``lag``), whose log
        determinant is off by order :math:`\delta^{1/2}` (about :math:`0.15\sqrt\delta` on the nested
        approximation's grids). For values wanted to about that accuracy only.
    single_above : float, optional
        Factor a dense Schur complement in single precision (:class:`~mglm_core.linalg.SchurDenseLDL`,
        about half the time) while the last decrement was above this (the first iteration counts as
        above): a step far from the optimum needs no more. A single-precision factorisation is never
        the one returned, nor the one a converged or last step is judged by: those are refactored
        in double precision.

    Returns
    -------
    NewtonResult
    """
    raw_fun = fun

    def fun(u_, b_, hessian):
        # Trial points may overflow (exp of a huge linear predictor); the line search rejects them.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return raw_fun(u_, b_, hessian)

    u, b = np.array(u0, dtype=float), np.array(b0, dtype=float)
    value, gu, gb, A, B, C = fun(u, b, True) if first is None else first
    if not np.isfinite(value):
        raise FitError("the objective is not finite at the starting point of the Newton iterations (the "
                       "likelihood overflows there): check the scale of the covariates (center or scale them).")
    lam = 0.0
    log = []
    converged = False
    factor = None
    lag = None
    message = "maximum number of iterations reached"
    it = 0
    last = np.inf  # the last decrement
    undamped_tried = False
    for it in range(1, max_iter + 1):
        single = single_above is not None and last > single_above
        while True:
            try:
                factor = _damped_factor(A, B, C, lam, factor if factor is not None else reuse, single)
                break
            except NotPositiveDefinite:
                lam = max(10.0 * lam, 1e-6)
                if lam > 1e12:
                    message = "could not make the Hessian positive definite"
                    return NewtonResult(u, b, value, float(np.sqrt(gu @ gu + gb @ gb)), False, it, None, log,
                                        message)
        du, db = factor.solve(gu, gb)
        with np.errstate(over="ignore", invalid="ignore"):  # (inf where an extreme SD overflows: not converged)
            decrement = float(gu @ du + gb @ db)
            grad_norm = float(np.sqrt(gu @ gu + gb @ gb))
        log.append({"iter": it, "value": value, "grad_norm": grad_norm, "decrement": decrement, "damping": lam})
        if progress is not None:
            progress(it, abs(decrement))
        if single and lam == 0.0 and 0.0 <= decrement < max(2.0 * tol, _ROUNDING * abs(value), free_step or 0.0):
            # close after all: judge (and keep) a double-precision factorisation
            factor = BorderedFactor(A, B, C, factor)
            du, db = factor.solve(gu, gb)
            decrement = float(gu @ du + gb @ db)
            log[-1]["decrement"] = decrement
        last = decrement
        if lam == 0.0 and 0.0 <= decrement < max(2.0 * tol, _ROUNDING * abs(value)):
            # (below the objective's rounding, a sum over many rows, no step can be judged)
            converged = True
            message = "Newton decrement below tolerance"
            break
        if estimate_below is not None and lam == 0.0 and 0.0 <= decrement < estimate_below:
            u, b, value = u + du, b + db, value + 0.5 * decrement
            converged, lag = True, (du, db)
            message = "Newton decrement below estimate_below: stopped at the full step, its value estimated"
            break
        if free_step is not None and lam == 0.0 and 0.0 <= decrement < free_step:
            vn, gun, gbn = fun(u + du, b + db, False)[:3]
            if np.isfinite(vn) and vn >= value:
                u, b, value, gu, gb = u + du, b + db, vn, gun, gbn
                converged, lag = True, (du, db)
                message = "Newton decrement below tolerance after a last step on the previous factorisation"
                break
        t = 1.0
        accepted = False
        full = None
        for _ in range(max_halvings):
            un, bn = u + t * du, b + t * db
            # The full step usually succeeds: evaluate it with the Hessian so it can be reused.
            full = fun(un, bn, True) if t == 1.0 else None
            vn = full[0] if full is not None else fun(un, bn, None)[0]
            # (a step whose gain is below the value's last digit leaves it equal: no ascent to accept, else
            # the iterations creep on at the objective's rounding until max_iter; Poisson counts of 2e4)
            if np.isfinite(vn) and vn >= value + 1e-4 * t * decrement and (vn > value or decrement <= 0.0):
                accepted = True
                break
            t *= 0.5
        if not accepted:
            if abs(decrement) < max(1e3 * tol, stall_tol or 0.0):
                if lam == 0.0:
                    converged = True
                    message = ("no further progress possible at machine precision" if abs(decrement) < 1e3 * tol
                               else "no further progress possible at the objective's accuracy")
                    break
                if not undamped_tried:  # damping left from far away: judge the undamped step once
                    lam, undamped_tried = 0.0, True
                    continue
            lam = max(10.0 * lam, 1e-6)
            if lam > 1e12:
                message = "line search failed"
                break
            continue
        u, b = un, bn
        undamped_tried = False
        value, gu, gb, A, B, C = full if (full is not None and t == 1.0) else fun(u, b, True)
        reason = stop(u, b) if stop is not None else None
        if reason:
            message = reason
            break
        lam = 0.0 if lam < 1e-5 else lam / 10.0
    if factor is None or not converged or factor.single:
        # A converged iteration ends with ``factor`` already the undamped factorisation at (u, b)
        # (in double precision unless it stalled on a single-precision one); otherwise the last
        # one may be damped or belong to the previous iterate.
        try:
            factor = BorderedFactor(A, B, C, factor if factor is not None else reuse)
        except NotPositiveDefinite:
            factor = None
            message += "; the Hessian at the final point is not negative definite"
    return NewtonResult(u, b, value, float(np.sqrt(gu @ gu + gb @ gb)), converged, it, factor, log, message, lag)


def chord_ascent(fun, factor, u0, b0, *, stop, max_iter=30, min_rate=0.5, progress=None):
    r"""Ascent steps on one fixed factorisation (the chord, or simplified Newton, method).

    Each step solves :math:`F d = g` with the same ``factor`` F of an approximate negative Hessian
    (for ``fit_map``, the IRLS start's working Hessian) and backtracks along d until the Armijo
    condition holds; no Hessian is evaluated or factored. Convergence is linear, at a rate set by
    how far F is from the Hessian, so this serves to bring a start within ``stop`` of a maximum
    cheaply, and leaves the rest to :func:`newton_ascent`.

    Parameters
    ----------
    fun : callable
        As for :func:`newton_ascent` (called with ``hessian=False``, and ``None`` in line searches).
    factor : BorderedFactor
        The fixed factorisation (positive definite).
    u0, b0 : ndarray
        Starting point.
    stop : float
        The last step is the one taken from a decrement :math:`g^\top F^{-1} g` below this.
    max_iter : int
        Steps at most.
    min_rate : float
        The steps stop (unfinished) when the decrement falls by less than this factor in a step:
        F is too far from the Hessian to be worth more steps.
    progress : callable, optional
        ``progress(iteration, decrement)``, once per step.

    Returns
    -------
    (u, b, n_steps, done): the last point, the steps taken, and whether the decrement fell below
    ``stop`` (otherwise the point is the best reached, possibly the start).
    """
    u, b = np.array(u0, dtype=float), np.array(b0, dtype=float)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        value, gu, gb = fun(u, b, False)[:3]
    if not np.isfinite(value):
        return u, b, 0, False
    last = np.inf
    for it in range(1, max_iter + 1):
        du, db = factor.solve(gu, gb)
        decrement = float(gu @ du + gb @ db)
        if progress is not None:
            progress(it, abs(decrement))
        if not (np.isfinite(decrement) and decrement >= 0.0) or decrement > min_rate * last:
            return u, b, it - 1, False
        t = 1.0
        for _ in range(30):
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                vn, gun, gbn = fun(u + t * du, b + t * db, False)[:3]
            if np.isfinite(vn) and vn >= value + 1e-4 * t * decrement:
                break
            t *= 0.5
        else:
            return u, b, it - 1, False
        u, b, value, gu, gb = u + t * du, b + t * db, vn, gun, gbn
        if decrement < stop:
            return u, b, it, True
        last = decrement
    return u, b, max_iter, False
