r"""The integrated fit of a model whose fixed effects are separated: the separating direction integrated
numerically, the rest by :func:`~mglm_core.nested.fit_laplace`.

Along a separating direction :math:`d` (:mod:`mglm_core.separation`) the likelihood rises to a plateau, so
the fixed effects' posterior along it is the prior's tail cut off on one side: one-sided, with a mean and SD
set by ``fe_p``. A Gaussian at its mode describes it badly (cbpp with a predictor that marks the herds with
cases, ``fe_p = 100``: the Laplace put the Intercept at -203 with SD 29, a long Metropolis run at -60.6 with SD
41.3; integrated along the direction, -60.7 with SD 41.8). With
:math:`\hat d = d / |d|` and :math:`Q` an orthonormal basis of its complement,

.. math::

    fe = t\,\hat d + Q c, \qquad t \sim N(0, fe\_p^2),\ c \sim N(0, fe\_p^2 I)

(the prior is rotation invariant), and

.. math::

    p(t \mid y) \propto N(t; 0, fe\_p^2)\; p(y \mid t), \qquad
    p(y \mid t) = \int p(y \mid t, c, vc)\, p(c)\, p(vc \mid vcp)\, p(vcp)\; dc\, dvc\, dvcp,

the second factor the log marginal likelihood of the model with design :math:`XQ` and offset
:math:`t\,X\hat d`, by the integrated fit. :math:`t` runs over a grid in units of ``fe_p``, refined where
neighbouring log densities differ by more than :data:`REFINE_STEP` (the likelihood's shoulder is narrow
against a wide prior); the posterior moments of every parameter are the mixture of the conditional fits'
over the grid's trapezoid weights, and :math:`\log p(y)` is the integral's logarithm.

Where the separating directions form a cone of two dimensions (:attr:`Separation.dimension`: a gap between the
classes of a covariate, two factor levels without events), :math:`t` runs over the cone's span, a grid of grids:
at each point of the first coordinate's grid, the second's, with the inner integral as the outer point's density
(a GLM with a gap: within 0.005 SD and 0.4 % of the SDs of the exact 2-D posterior, at 400 conditional fits;
along one direction with a Gaussian across, the Intercept's SD came out twice the exact). With more dimensions one
direction is integrated and the fit says that the others' Gaussians are unreliable.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
from scipy.linalg import null_space
from scipy.special import logsumexp

from .errors import ApproximationWarning, FitError
from .progress import Progress
from .results import BayesMixedGLMResults, FitDiagnostics, VcpGrid

__all__ = ["fit_laplace_separated"]

#: The first grid of t, in prior SDs.
START_Z = np.arange(-4.0, 4.5, 1.0)
#: Neighbouring points whose log densities differ by more than this get a point between them.
REFINE_STEP = 1.0
#: ... or are further apart than this many posterior SDs of t,
WIDTH_MAX = 0.35
#: ... where the interval carries more than this share of the mass.
MASS_MIN = 2e-3
#: The grid's ends are extended while within this of the largest log density.
KEEP_DROP = 12.0
#: At most this many conditional fits along one direction.
MAX_POINTS = 60
#: ... and this many points per axis of a cone of two dimensions (a grid of grids: up to its square).
MAX_POINTS_2D = 20
#: The grid reaches at most this many prior SDs out.
MAX_Z = 8.0


def _conditional(model, basis, span, t):
    """The model given :math:`t`: design :math:`XQ`, offset :math:`X V t` (plus the model's)."""
    from .model import BayesMixedGLM

    shift = model.exog @ (span @ t)
    offset = shift if model.offset is None else model.offset + shift
    # (arrays, data the model was built from: no notes to issue again; no warnings caught either, which would swap
    # the process's filters under other threads' fits)
    return BayesMixedGLM(model.endog, model.exog @ basis, model.exog_vc, model.ident, family=model.family,
                         vcp_p=model.vcp_p, fe_p=model.fe_p, vcp_names=model.vcp_names, vc_names=model.vc_names,
                         trials=model.trials, offset=offset, check_separation=False)


def _adaptive(solve, scale, max_points):
    """The adaptive grid in one coordinate t of the cone's span (module docstring): ``solve(t)`` is the log
    density at t (its prior included). Returns the points whose density is finite, sorted, and their log
    trapezoid weights (the log density plus the log of half of each neighbouring interval)."""
    lps = {}

    def ev(t):
        if t not in lps:
            lps[t] = solve(t)

    for z in START_Z:
        ev(float(z * scale))
    while len(lps) < max_points:
        ts = np.array(sorted(lps))
        lp = np.array([lps[t] for t in ts])
        top = lp.max()
        if not np.isfinite(top):
            break
        # (an interval is split where its trapezoid carries a share of the mass above MASS_MIN and its ends'
        # log densities differ by more than REFINE_STEP: the likelihood's shoulder, the prior's tail;
        # or it is wider than WIDTH_MAX posterior SDs of t (the points' spread adds about width^2 / 12 to the
        # variance: 4 % too wide an SD at half an SD; at 0.35 SD about 1 %, the GLM cases within 0.5 % of the exact
        # SD at 36-38 points, where 0.25 SD took 43-60)
        mass = np.diff(ts) * 0.5 * (np.exp(lp[:-1] - top) + np.exp(lp[1:] - top))
        share = mass / mass.sum()
        mid = 0.5 * (ts[:-1] + ts[1:])
        sd_t = np.sqrt(max(float(share @ (mid - share @ mid) ** 2), 0.0))
        new = []
        for a, b, la, lb, sh in zip(ts[:-1], ts[1:], lp[:-1], lp[1:], share):
            steep = not (np.isfinite(la) and np.isfinite(lb)) or abs(la - lb) > REFINE_STEP
            if sh > MASS_MIN and (steep or b - a > WIDTH_MAX * sd_t):
                new.append(0.5 * (a + b))
        for end, step in ((0, -1.0), (-1, 1.0)):  # (the grid's ends within reach of the top: one step further)
            if lp[end] > top - KEEP_DROP and abs(ts[end]) / scale < MAX_Z:
                new.append(float(ts[end] + step * scale))
        new = [t for t in new if t not in lps][:max_points - len(lps)]
        if not new:
            break
        for t in new:
            ev(t)
    ts = np.array(sorted(t for t in lps if np.isfinite(lps[t])))
    if ts.size == 0:
        return ts, np.zeros(0)
    lp = np.array([lps[t] for t in ts])
    # trapezoid weights: half of each neighbouring interval (a lone point: weight one)
    width = np.ones(1) if ts.size == 1 else 0.5 * (np.diff(ts, prepend=ts[0]) + np.diff(ts, append=ts[-1]))
    return ts, lp + np.log(width)


def _grid_of(points, k, n=201):
    """Each log-SD's density mixed over the conditional fits ``points`` (weight, result) on a common grid."""
    pts, dens = [], []
    for j in range(k):
        grids = [(w, r.vcp_grid.points[j], r.vcp_grid.density[j]) for w, r in points if r.vcp_grid is not None]
        if not grids:
            return None
        lo, hi = min(g[1][0] for g in grids), max(g[1][-1] for g in grids)
        x = np.linspace(lo, hi, n)
        d = sum(w * np.interp(x, g, dd, left=0.0, right=0.0) for w, g, dd in grids)
        pts.append(x)
        dens.append(d / np.trapezoid(d, x))
    return VcpGrid(points=tuple(pts), density=tuple(dens))


def fit_laplace_separated(model, separation, fit, callback=None):
    """:func:`~mglm_core.nested.fit_laplace` with the separating direction of ``separation`` integrated
    numerically (see the module docstring), over both directions of a cone of two dimensions; ``fit(model)``
    fits each conditional model, without issuing warnings (their messages are read off its result)."""
    t0 = time.perf_counter()
    prog = Progress(callback)
    p, k = model.k_fep, model.k_vcp
    dims = 2 if separation.dimension == 2 and p >= 2 else 1
    span = separation.span[:, :dims]
    basis = null_space(span.T)  # p x (p - dims), orthonormal
    scale = model.fe_p
    budget = MAX_POINTS if dims == 1 else MAX_POINTS_2D
    fits = {}  # t (tuple) -> (log density, result or None)

    def solve(t):
        t = tuple(float(v) for v in t)
        if t in fits:
            return fits[t][0]
        prog.report(0.95 * min(1.0, len(fits) / (budget if dims == 1 else budget**2 / 2)),
                    f"separated direction{'s' if dims > 1 else ''}, point {len(fits) + 1}")
        res, lp = None, -np.inf
        try:
            res = fit(_conditional(model, basis, span, np.array(t)))
            lml = res.log_marginal_likelihood
            if lml is not None and np.isfinite(lml):
                lp = (-0.5 * float(np.sum((np.array(t) / scale) ** 2)) - dims * np.log(scale * np.sqrt(2.0 * np.pi))
                      + float(lml))
        except (FitError, ValueError, FloatingPointError, np.linalg.LinAlgError):
            res = None
        fits[t] = (lp, res)
        return lp

    points = []  # (t, log weight)
    if dims == 1:
        ts, logw = _adaptive(lambda t: solve((t,)), scale, budget)
        points = [((t,), lw) for t, lw in zip(ts, logw)]
    else:
        inner = {}  # t1 -> the points of its inner grid

        def outer(t1):  # the log density of t1: the inner integral over t2
            ts2, logw2 = _adaptive(lambda t2: solve((t1, t2)), scale, budget)
            inner[t1] = [((t1, t2), lw) for t2, lw in zip(ts2, logw2)]
            return float(logsumexp(logw2)) if ts2.size else -np.inf

        ts1, logw1 = _adaptive(outer, scale, budget)
        for t1, lw1 in zip(ts1, logw1):
            lw_in = np.array([lw for _, lw in inner[t1]])
            # (the outer weight is the inner integral times the width: each inner point's share of it)
            points += [(t, lw1 - logsumexp(lw_in) + lw) for t, lw in inner[t1]]
    points = [(t, lw) for t, lw in points if fits[t][1] is not None]
    if not points:
        raise FitError("fit_laplace could not fit the model at any point along the separated direction of the "
                       f"fixed effects {', '.join(separation.columns)}; use fit_map() or fit_vb(), or a smaller fe_p.")
    logw = np.array([lw for _, lw in points])
    log_ml = float(logsumexp(logw))
    w = np.exp(logw - log_ml)
    ts = [np.array(t) for t, _ in points]
    results = [fits[t][1] for t, _ in points]
    # moments: fe = V t + Q c; the (fe, vcp) block's within-point covariances rotated, plus the between-points'
    T = np.zeros((p + k, (p - dims) + k))
    T[:p, :p - dims], T[p:, p - dims:] = basis, np.eye(k)
    means = np.array([np.concatenate([span @ t + basis @ r.fe_mean, r.vcp_mean]) for t, r in zip(ts, results)])
    mean = w @ means
    rotated = np.array([T @ (r.border_cov if r.border_cov is not None else
                              np.diag(np.concatenate([r.fe_sd, r.vcp_sd]) ** 2)) @ T.T for r in results])
    within = sum(wi * cov for wi, cov in zip(w, rotated))
    dev = means - mean
    cov = within + (dev * w[:, None]).T @ dev
    vc_m = np.array([r.vc_mean for r in results])
    vc_mean = w @ vc_m
    vc_var = w @ np.array([r.vc_sd ** 2 for r in results]) + w @ (vc_m - vc_mean) ** 2
    sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
    best = int(np.argmax(w))
    what = ("separating direction" if dims == 1 else "two separating directions")
    named = [model.fep_names[j] for j in np.flatnonzero(np.abs(span).max(axis=1) > 1e-8)]
    msgs = [(f"The fixed effects' {what} ({', '.join(named)}) "
             f"{'was' if dims == 1 else 'were'} integrated numerically over {len(points)} points, each an integrated "
             "Laplace fit of the rest.")]
    msgs += [m for m in dict.fromkeys(results[best].diagnostics.warnings) if m not in model.notes]
    if separation.dimension > dims:  # (the rest of the cone by the conditional fits' Gaussians)
        msgs.append(f"The fixed effects are separated along {separation.dimension} independent directions; {dims} "
                    f"{'was' if dims == 1 else 'were'} integrated numerically and the others are summarised by "
                    "Gaussians, which are unreliable there: merge or drop the levels concerned.")
    converged = all(r.converged for r in results)
    prog.done()
    for m in msgs:
        warnings.warn(m, ApproximationWarning, stacklevel=3)
    diag = FitDiagnostics(
        converged=converged, n_iter=int(sum(r.n_iter for r in results)), grad_norm=float(results[best].grad_norm),
        seconds=time.perf_counter() - t0, objective=log_ml, warnings=tuple(msgs),
        message=(f"{len(points)} points over the separated direction{'s' if dims > 1 else ''}; at the heaviest: "
                 f"{results[best].diagnostics.message}"))
    return BayesMixedGLMResults(
        model=model, method="laplace", fe_mean=mean[:p], fe_sd=sd[:p], vcp_mean=mean[p:], vcp_sd=sd[p:],
        vc_mean=vc_mean, vc_sd=np.sqrt(np.maximum(vc_var, 0.0)), diagnostics=diag, border_cov=cov,
        vcp_grid=_grid_of(list(zip(w, results)), k) if k else None, log_marginal_likelihood=log_ml,
        extra={"separation_points": np.array(ts), "separation_weights": w, "separation_span": span,
               # (the intervals are the mixture's quantiles: mean -+ 1.96 SD straddled 0 for a separating
               # coefficient whose mixture has no weight there)
               "fe_mixture": (w, means[:, :p], np.sqrt(np.maximum(np.einsum("tii->ti", rotated)[:, :p], 0.0))),
               "vc_mixture": (w, vc_m, np.array([r.vc_sd for r in results]))})
