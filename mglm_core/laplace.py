r"""The MAP / Laplace fit: the joint posterior mode and a Gaussian around it.

The mode of :math:`\log p(fe, vcp, vc \mid y)` is found by damped Newton steps
on the sparse Hessian (:mod:`mglm_core.newton`), in two stages from a
deterministic start (vcp = 0 and (fe, vc) from one IRLS step, :func:`irls_start`): first (fe, vc)
with the SDs held at 1, a concave problem, by chord steps on the IRLS step's factorisation
(Newton steps if those stall), then all parameters jointly. The posterior covariance
is the inverse negative Hessian at the mode: its (fe, vcp) block is formed
densely from the Schur complement, the random-effect variances come from the
sparse diagonal of the inverse; no dense (p + k + q)^2 matrix is formed.

The joint density has a degenerate mode where a component's random effects
are all 0 and its log-SD sits at :math:`-m_k\,vcp\_p^2` (:math:`m_k` random
effects in the component). A fit that lands there is flagged with a warning
naming the remedies.
"""
from __future__ import annotations

import time
import warnings

import numpy as np

from .errors import ConvergenceWarning
from .families import WorkingGaussian
from .linalg import BorderedFactor, NotPositiveDefinite, solve_only
from .newton import chord_ascent, newton_ascent
from .objectives import LogJoint
from .progress import Progress
from .results import BayesMixedGLMResults, FitDiagnostics

#: Stage 1 (a start) takes chord steps on the IRLS start's factorisation until their decrement is
#: below this (then the joint search from there needs as many Newton steps as from a Newton-converged
#: start: three on the benchmark designs, whose stage 1 took two or three factorisations).
_CHORD_STOP = 25.0
#: Stage 1 by Newton steps (where the chord steps stall) ends with a full Newton step, taken
#: without factoring at its end, once the Newton decrement is below this. The joint search
#: corrects what is left (its first step changes the log-SDs anyway): on the accuracy harness's 44
#: designs the modes agree with those from a start within 25 of stage 1's maximum to 1e-5 or
#: better (except where a component collapses and the search stops short of the degenerate mode),
#: and one factorisation is saved on most.
_START_STEP = 1000.0
#: Newton steps of the mode search from a decrement above this factor a dense Schur complement in
#: single precision (far from the mode a step needs no more; see :func:`~mglm_core.newton.newton_ascent`).
_SINGLE_ABOVE = 1.0
#: The mode search ends with a full step on the previous factorisation once the decrement is below
#: this: the mode is then within about its square of the optimum (machine precision), and the
#: covariance, from the Hessian one step of at most sqrt(1e-7) = 3e-4 posterior SDs earlier, is off
#: by a relative 3e-4 at most (the third derivatives are at most of order one in posterior-SD units).
_LAST_STEP = 1e-7

__all__ = ["fit_map", "degenerate_components", "scaling_transform", "working_model", "irls_start", "chord_start"]


def scaling_transform(X):
    """Return ``(X_scaled, M)``: the standardised design and the map ``beta = M @ beta_scaled``.

    Non-constant columns are standardised; they are centred only when X has an
    intercept column, whose coefficient then absorbs the centring.
    """
    p = X.shape[1]
    mn, sc = X.mean(0), X.std(0)
    const = np.flatnonzero(sc <= 1e-8)
    has_icpt = const.size > 0
    ixs = np.flatnonzero(sc > 1e-8)
    center = mn if has_icpt else np.zeros(p)
    Xs = X.copy()
    Xs[:, ixs] = (X[:, ixs] - center[ixs]) / sc[ixs]
    # X_s = X M with M below; beta = M beta_s
    M = np.eye(p)
    M[ixs, ixs] = 1.0 / sc[ixs]
    if has_icpt:
        i0 = const[0]
        M[i0, ixs] = -center[ixs] / sc[ixs] / X[0, i0]
    return Xs, M


def irls_start(model, reuse=None, with_factor=False):
    r"""Deterministic starting values ``(vc, fe)``: one IRLS step from the data.

    The working response and weights of the family at :math:`\mu_0 \approx y`
    (:meth:`~mglm_core.families.Binomial.working_response`) define a penalised weighted
    least-squares problem in (fe, vc) with the SDs at 1; its solution, one linear solve on the
    same sparse structure (the problem is quadratic: the Newton step from 0 lands on it), is where
    the Newton iterations start (as R's ``glm`` starts). Zeros when that system cannot be solved.
    ``with_factor``: also return the factorisation of the working problem's Hessian (None when
    it failed), ``(vc, fe, factor)``.
    """
    z, w = model.family.working_response(model.endog, model.trials)
    lj = LogJoint(model, rows=model.rows.with_response(z, w), family=WorkingGaussian())
    zeros_vc, zeros_fe = np.zeros(model.k_vc), np.zeros(model.k_fep)
    _, g_fe, _, g_vc, blocks = lj(zeros_fe, np.zeros(model.k_vcp), zeros_vc, hessian=True, with_vcp=False)
    factor = None
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            # (single precision where the factorisation is a dense Schur complement: only steps)
            factor = BorderedFactor(*blocks, model.symbolic if reuse is None else reuse, single=True)
            vc, fe = factor.solve(g_vc, g_fe)
    except NotPositiveDefinite:
        vc, fe = zeros_vc, zeros_fe
    if not (np.all(np.isfinite(vc)) and np.all(np.isfinite(fe))):
        vc, fe, factor = zeros_vc, zeros_fe, None
    return (vc, fe, factor) if with_factor else (vc, fe)


def chord_start(model, lj, stop, reuse=None, max_iter=30, progress=None):
    """The IRLS start (:func:`irls_start`) moved by chord steps on its working factorisation
    (:func:`~mglm_core.newton.chord_ascent`: a row pass each, no Hessian) towards the mode of
    (fe, vc) with the log-SDs at 0, until their decrement is below ``stop``:
    ``(vc, fe, steps, done)`` (``done`` False when the steps stalled or the start has no
    factorisation; the point is then the best reached)."""
    u0, b0, working = irls_start(model, reuse, with_factor=True)
    if working is None:
        return u0, b0, 0, False
    return chord_ascent(conditional_fun(lj, np.zeros(model.k_vcp)), working, u0, b0, stop=stop,
                        max_iter=max_iter, progress=progress)


def conditional_vcp_mode(model, vc, n_iter=30):
    r"""The log-SDs maximising the joint density given the random effects ``vc``.

    For component k with :math:`m_k` effects and :math:`s_k = \sum vc_j^2`, the
    maximiser of :math:`-\tfrac12 s_k e^{-2v} - m_k v - v^2/(2\,vcp\_p^2)` solves
    :math:`s_k e^{-2v} = m_k + v/vcp\_p^2`; Newton's method on this concave 1-D
    problem, started from :math:`\tfrac12\log(s_k/m_k)` (clipped to [-5, 5]).
    """
    s = np.bincount(model.ident, weights=vc**2, minlength=model.k_vcp)
    m = model.vc_count.astype(float)
    v = np.clip(0.5 * np.log(np.maximum(s, 1e-300) / np.maximum(m, 1.0)), -5.0, 5.0)
    for _ in range(n_iter):
        e = s * np.exp(-2.0 * v)
        g = e - m - v / model.vcp_p**2
        h = 2.0 * e + 1.0 / model.vcp_p**2
        step = np.clip(g / h, -1.0, 1.0)
        v = v + step
        if np.all(np.abs(step) < 1e-10):
            break
    return v


def working_model(model, scale_fe):
    """The model to optimise and the map ``M`` back to original fe (``beta = M @ beta_scaled``; None if unscaled)."""
    if scale_fe and model.k_fep:
        Xs, M = scaling_transform(model.exog)
        # (the same columns' span, so the same separation: the model's own search and warning, not a second)
        return model.with_exog(Xs, check_separation=False), M
    return model, None


def degenerate_components(model, vcp, vc, sd_floor=1e-4):
    """Indices of components sitting at the degenerate (collapsed) mode.

    A component counts as collapsed when its SD ``exp(vcp_k)`` is below
    ``sd_floor`` or its log-SD is below half the degenerate value
    :math:`-m_k\\,vcp\\_p^2`.
    """
    out = []
    for k in range(model.k_vcp):
        if np.exp(vcp[k]) < sd_floor or vcp[k] < -0.5 * model.vc_count[k] * model.vcp_p**2:
            out.append(k)
    return out


def _joint_fun(lj, p):
    def fun(u, b, hessian):
        value, g_fe, g_vcp, g_vc, blocks = lj(b[:p], b[p:], u, hessian=hessian)
        A, B, C = blocks if hessian else (None, None, None)
        return value, g_vc, np.concatenate([g_fe, g_vcp]), A, B, C
    return fun


def conditional_fun(lj, vcp):
    """Newton callback over (vc | fe) with ``vcp`` held fixed."""
    def fun(u, b, hessian):
        value, g_fe, _, g_vc, blocks = lj(b, vcp, u, hessian=hessian, with_vcp=False)
        A, B, C = blocks if hessian else (None, None, None)
        return value, g_vc, g_fe, A, B, C
    return fun


def fit_map(model, *, scale_fe=False, tol=1e-10, max_iter=200, callback=None):
    """Posterior mode and Laplace approximation (statsmodels' ``fit_map``).

    Parameters
    ----------
    model : BayesMixedGLM
    scale_fe : bool
        Fit with standardised fixed-effect columns (the prior applies on that
        scale, as in statsmodels) and report results, covariance included, on
        the original scale.
    tol : float
        Newton-decrement tolerance.
    callback : callable, optional
        ``callback(fraction, message)`` as the fit progresses (:mod:`mglm_core.progress`).

    Returns
    -------
    BayesMixedGLMResults
    """
    t0 = time.perf_counter()
    prog = Progress(callback)
    work, M = working_model(model, scale_fe)
    lj = LogJoint(work)
    p, k, q = work.k_fep, work.k_vcp, work.k_vc
    # Stage 1 only supplies a start for the joint search: stop once within 1 of its maximum, or
    # after the first full step from within _START_STEP of it (its factorisation is not needed),
    # then move each log-SD to its conditional mode given those random effects.
    # Newton steps need solves only: by conjugate gradients where the exact factorisation is a large
    # dense one (linalg.solve_only); the covariance is then factored exactly at the mode
    steps = solve_only(work.symbolic)
    start_progress = prog.stage(0.0, 0.3, "start (log-SDs at 0)", max(tol, 1.0))
    # Most of stage 1 on the IRLS start's factorisation (chord steps: a row pass each, no Hessian);
    # Newton steps only if they stall (the working Hessian too far from the true one)
    u0, b0, n_iter, done = chord_start(work, lj, _CHORD_STOP, reuse=steps, max_iter=min(max_iter, 30),
                                       progress=start_progress)
    if not done:
        stage1 = newton_ascent(conditional_fun(lj, np.zeros(k)), u0, b0, tol=max(tol, 1.0), max_iter=max_iter,
                               reuse=steps, free_step=_START_STEP, progress=start_progress)
        u0, b0, n_iter = stage1.u, stage1.b, n_iter + stage1.n_iter
    vcp0 = conditional_vcp_mode(work, u0)
    jumped: set[int] = set()  # components moved to their degenerate mode

    def collapsing(u, b):
        new = set(degenerate_components(work, b[p:], u)) - jumped
        return "a variance component is collapsing" if new else None

    res = newton_ascent(_joint_fun(lj, p), u0, np.concatenate([b0, vcp0]), tol=tol,
                        max_iter=max_iter, stop=collapsing, reuse=steps, free_step=_LAST_STEP,
                        progress=prog.stage(0.3, 0.97, "posterior mode", tol), single_above=_SINGLE_ABOVE)
    n_iter += res.n_iter
    target = -work.vc_count * work.vcp_p**2  # the degenerate mode of each component's log-SD
    for _ in range(k):
        falling = sorted(set(degenerate_components(work, res.b[p:], res.u)) - jumped) if not res.converged else []
        if not (falling and np.all(target[falling] > -300.0)):
            break
        # The walk towards the degenerate mode is slow (the log-SD falls by O(1) per step); jump to it:
        # with a component's random effects at 0 its log-SD maximises -m_k vcp - vcp^2 / (2 vcp_p^2).
        # (Below -300 the mode is not representable: exp(-2 vcp) overflows; the fit stops where it is.)
        # Another component may start falling once one is there: the search stops again and it jumps too
        # (binary data over 40 x 30 crossed levels: the second walked down by one per step, 45 steps).
        u, b = res.u.copy(), res.b.copy()
        for j in falling:
            u[work.ident == j] = 0.0
            b[p + j] = target[j]
        jumped.update(falling)
        res = newton_ascent(_joint_fun(lj, p), u, b, tol=tol, max_iter=max_iter, stop=collapsing, reuse=steps)
        n_iter += res.n_iter
    fe, vcp, vc = res.b[:p], res.b[p:], res.u
    msgs = []
    if not res.converged:
        msgs.append(f"The posterior-mode search did not converge ({res.message}; |gradient| = "
                    f"{res.grad_norm:.3g}).")
    if steps is not work.symbolic and res.factor is not None:
        _, _, _, _, blocks = lj(res.b[:p], res.b[p:], res.u, hessian=True)
        try:
            res.factor = BorderedFactor(*blocks, work.symbolic)
        except NotPositiveDefinite:
            res.factor = None
    vc_sd_method = "exact"
    if res.factor is not None:
        cov = res.factor.border_inverse()
        vc_var = res.factor.sparse_diag_inverse()
        if getattr(res.factor.A, "approximate", False):
            # too many crossed levels to factor (mglm_core.iterative): conjugate-gradient solves,
            # fe and log-SD covariance exact, random-effect variances approximate
            vc_sd_method = res.factor.A.diag_method
            if res.factor.A.max_residual > 1e-6:
                msgs.append(f"The conjugate-gradient solves of the random-effect block stopped at a relative "
                            f"residual of {res.factor.A.max_residual:.1e} (after {res.factor.A.max_iter} iterations): the "
                            "results are approximate.")
    else:
        cov = np.full((p + k, p + k), np.nan)
        vc_var = np.full(q, np.nan)
        msgs.append("The Hessian at the final point is not negative definite: posterior SDs are unavailable.")
    collapsed = degenerate_components(work, vcp, vc)
    if collapsed:
        names = ", ".join(work.vcp_names[j] for j in collapsed)
        # (with a tight prior, vcp_p = 0.05, the degenerate point's SD is near 1, not 0)
        small = all(np.exp(vcp[j]) < 0.05 for j in collapsed)
        msgs.append(
            f"Degenerate mode: the variance component(s) {names} "
            + ("collapsed to SD ~ 0" if small else "sit at the degenerate point (random effects shrunk to 0, "
               "log-SD at -m vcp_p^2 for its m effects)")
            + " (the joint mode of random effects and their log-SD is degenerate). Use fit_laplace() (the "
            "integrated method)" + (" or a smaller vcp_p." if small else ".")
        )
    if M is not None:
        fe = M @ fe
        T = np.eye(p + k)
        T[:p, :p] = M
        cov = T @ cov @ T.T
    prog.done()
    for msg in msgs:
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)
    sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
    diag = FitDiagnostics(
        converged=res.converged, n_iter=n_iter, grad_norm=res.grad_norm,
        seconds=time.perf_counter() - t0, objective=res.value, warnings=tuple(msgs),
        message=res.message if vc_sd_method == "exact" else
        f"{res.message}; random-effect block solved by conjugate gradients, its SDs by {vc_sd_method}",
        log=tuple(res.log),
    )
    return BayesMixedGLMResults(
        model=model, method="map", fe_mean=fe, fe_sd=sd[:p], vcp_mean=vcp, vcp_sd=sd[p:], vc_mean=vc,
        vc_sd=np.sqrt(np.maximum(vc_var, 0.0)), diagnostics=diag, border_cov=cov,
        extra={"collapsed": tuple(collapsed), "vc_sd_method": vc_sd_method},
    )
