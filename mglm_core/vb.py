r"""Mean-field Gaussian variational Bayes.

Every parameter gets an independent Gaussian factor :math:`N(\mu, \sigma^2)`
and the ELBO of :mod:`mglm_core.objectives` is maximised. Expectations are
exact for Poisson and by 40-node Gauss--Hermite quadrature for the binomial
(see :mod:`mglm_core.families`).

Optimisation, each step costing one pass over the data's nonzeros (plus the
sparse factorisation of the random-effect block):

1. *Coordinate phase.* Alternate (a) damped Newton steps on the means with the
   SDs fixed (the Hessian in the means has the bordered sparse structure of the
   MAP fit) and (b) the fixed-point update of the SDs
   :math:`\sigma_j^{-2} = -\mathrm{E}_q\,\partial^2\log p/\partial\theta_j^2`,
   which is the stationarity condition :math:`\partial\,\mathrm{ELBO}/\partial\sigma_j = 0`,
   until the ELBO stops improving.
2. *Polish.* L-BFGS (limited memory: linear cost per iteration, no dense
   quasi-Newton matrix) on all means and log-SDs with the exact gradient,
   in coordinates scaled by the SDs of phase 1, to a small scaled gradient.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
from scipy.optimize import minimize

from .errors import ApproximationWarning, ConvergenceWarning, DataError, FitError
from .laplace import conditional_fun, conditional_vcp_mode, irls_start, working_model
from .linalg import BorderedFactor, solve_only
from .newton import newton_ascent
from .objectives import Elbo, LogJoint, VBPoint
from .progress import Progress
from .results import BayesMixedGLMResults, FitDiagnostics

__all__ = ["fit_vb"]


def _pack(pt):
    return np.concatenate([pt.fe_mean, pt.vcp_mean, pt.vc_mean,
                           np.log(pt.fe_sd), np.log(pt.vcp_sd), np.log(pt.vc_sd)])


def _unpack(x, p, k, q):
    n = p + k + q
    m, ls = x[:n], np.exp(x[n:])
    return VBPoint(m[:p], m[p:p + k], m[p + k:], ls[:p], ls[p:p + k], ls[p + k:])


def _with(pt, **kw):
    d = dict(fe_mean=pt.fe_mean, vcp_mean=pt.vcp_mean, vc_mean=pt.vc_mean, fe_sd=pt.fe_sd,
             vcp_sd=pt.vcp_sd, vc_sd=pt.vc_sd)
    d.update(kw)
    return VBPoint(**d)


def _start(model, mean, sd):
    p, k, q = model.k_fep, model.k_vcp, model.k_vc
    n = p + k + q
    if mean is None:
        lj = LogJoint(model)
        steps = solve_only(model.symbolic)
        st = newton_ascent(conditional_fun(lj, np.zeros(k)), *irls_start(model, steps), tol=1e-8, max_iter=50,
                           reuse=steps)
        mean = np.concatenate([st.b, np.zeros(k), st.u])
    mean = np.asarray(mean, dtype=float)
    if mean.shape != (n,):
        raise DataError(f"`mean` must have length {n} (fe, vcp, vc); got shape {mean.shape}.")
    if not np.all(np.isfinite(mean)):
        raise DataError(f"`mean` must be finite; got {int(np.sum(~np.isfinite(mean)))} NaN/inf value(s).")
    elbo = Elbo(model)
    given_sd = sd is not None
    if sd is None:
        sd = _curvature_sd(elbo, mean)
    sd = np.asarray(sd, dtype=float)
    if sd.shape != (n,):
        raise DataError(f"`sd` must be {n} positive values (fe, vcp, vc); got shape {sd.shape}.")
    bad = ~(sd > 0) | ~np.isfinite(sd)
    if np.any(bad):
        raise DataError(f"`sd` must be {n} positive finite values (fe, vcp, vc); got {int(np.sum(bad))} that are not.")
    pt = VBPoint(mean[:p], mean[p:p + k], mean[p + k:], sd[:p], sd[p:p + k], sd[p + k:])
    value = _value(elbo, pt)
    if given_sd or np.isfinite(value):
        return pt, value
    # The SDs at 1 (log-SD 0) can be far too wide for a random slope of a covariate on a large raw
    # scale (heights in the hundreds): exp(eta) then overflows. Start the log-SDs at their conditional
    # mode given the random effects instead, and narrow the SDs until the ELBO is finite.
    mean = mean.copy()
    mean[p:p + k] = conditional_vcp_mode(model, mean[p + k:])
    sd = _curvature_sd(elbo, mean)
    for _ in range(12):
        pt = VBPoint(mean[:p], mean[p:p + k], mean[p + k:], sd[:p], sd[p:p + k], sd[p + k:])
        value = _value(elbo, pt)
        if np.isfinite(value):
            return pt, value
        sd = sd * 0.1
    raise FitError("fit_vb could not find a starting point with a finite ELBO (the expected likelihood "
                   "overflows): check the scale of the covariates (center or scale them) or use fit_laplace().")


def _value(elbo, pt):
    """The ELBO at ``pt`` (inf or nan where the expected likelihood overflows, without a warning)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return elbo(pt, grad=False)[0]


def _curvature_sd(elbo, mean):
    """Curvature-based SDs at the means ``mean`` (a fixed SD would make exp(eta) overflow for
    covariates on a large raw scale)."""
    m = elbo.model
    p, k, q = m.k_fep, m.k_vcp, m.k_vc
    tiny = VBPoint(mean[:p], mean[p:p + k], mean[p + k:], np.full(p, 1e-8), np.full(k, 1e-8), np.full(q, 1e-8))
    return np.concatenate(elbo.fixed_point_sd(tiny, elbo(tiny, grad=False)[3]))


#: fit_vb warns where a fixed effect's SD is below this fraction of the SD that the joint curvature at its means
#: gives (:func:`_narrow_fixed_effects`).
NARROW_RATIO = 0.5


def _narrow_fixed_effects(model, pt):
    r"""``(ratio, index, vb_sd, joint_sd)`` of the fixed effect whose SD is the smallest fraction of the one the
    curvature of the joint posterior of (fe, vc) gives at the variational means (log-SDs held there), or None
    (no fixed or random effects, or no factorisation). The mean-field factorisation drops the correlation of the
    fixed effects with the random effects; the joint curvature keeps it: grouseticks' Intercept had a VB SD of
    0.020 where the curvature gives 0.16 and the integrated posterior 0.20."""
    if not (model.k_fep and model.k_vc) or getattr(model.symbolic, "route", None) == "iterative":
        return None
    try:
        _, _, _, A, B, C = conditional_fun(LogJoint(model), pt.vcp_mean)(pt.vc_mean, pt.fe_mean, True)
        joint = np.sqrt(np.diag(BorderedFactor(A, B, C, reuse=solve_only(model.symbolic)).border_inverse()))
    except (ArithmeticError, np.linalg.LinAlgError, ValueError):  # (a Hessian not positive definite there)
        return None
    ratio = pt.fe_sd / joint
    if not np.all(np.isfinite(ratio)):
        return None
    j = int(np.argmin(ratio))
    return float(ratio[j]), j, float(pt.fe_sd[j]), float(joint[j])


def _coordinate_phase(elbo, pt, value, tol, max_outer=100, progress=None):
    """Alternate Newton steps on the means and fixed-point SDs from ``pt``, whose ELBO is ``value``."""
    p = elbo.model.k_fep
    n_iter = 0
    for n_iter in range(1, max_outer + 1):
        sds = pt

        def fun(u, b, hessian):
            cand = _with(sds, fe_mean=b[:p], vcp_mean=b[p:], vc_mean=u)
            v, g, blocks, _ = elbo(cand, grad=True, hessian=hessian)
            A, B, C = blocks if hessian else (None, None, None)
            return v, g.vc_mean, np.concatenate([g.fe_mean, g.vcp_mean]), A, B, C

        nr = newton_ascent(fun, pt.vc_mean, np.concatenate([pt.fe_mean, pt.vcp_mean]), tol=tol, max_iter=5,
                           reuse=solve_only(elbo.model.symbolic))
        pt = _with(pt, fe_mean=nr.b[:p], vcp_mean=nr.b[p:], vc_mean=nr.u)
        new_value, _, _, rs = elbo(pt, grad=False)
        for _ in range(3):
            fe_sd, vcp_sd, vc_sd = elbo.fixed_point_sd(pt, rs)
            cand = _with(pt, fe_sd=fe_sd, vcp_sd=vcp_sd, vc_sd=vc_sd)
            cand_value, _, _, cand_rs = elbo(cand, grad=False)
            if not cand_value >= new_value - 1e-12 * abs(new_value):
                break
            pt, new_value, rs = cand, cand_value, cand_rs
        if not np.isfinite(new_value):
            break
        gain = new_value - value
        value = new_value
        if progress is not None:
            progress(n_iter, abs(gain) / max(1.0, abs(value)))
        # (relative to the ELBO, but at most 10 nats a row: with Poisson counts of 3e7 the ELBO is -5e8, and
        # 1e-9 of it, half a nat, stopped the ascent half a unit along the ridge of the Intercept and the effects)
        if gain < tol * max(1.0, min(abs(value), 10.0 * elbo.model.endog.size)):
            break
    return pt, value, n_iter


def fit_vb(model, mean=None, sd=None, *, scale_fe=False, tol=1e-9, max_iter=500, gtol=1e-5, callback=None):
    """Mean-field variational Bayes fit (statsmodels' ``fit_vb``).

    Parameters
    ----------
    model : BayesMixedGLM
    mean, sd : array_like, optional
        Starting means and SDs packed ``[fe, vcp, vc]`` (default: the
        conditional mode at SD 1, and the curvature SDs there).
    scale_fe : bool
        Fit with standardised fixed-effect columns and back-transform.
    tol : float
        Relative ELBO tolerance of the coordinate phase.
    max_iter : int
        Maximum iterations in all: the coordinate phase's (at most 100) and then the L-BFGS polish's.
        A fit stopped by it before the gradient tolerance is not converged (a ConvergenceWarning).
    gtol : float
        Convergence threshold on the largest entry of the scaled gradient: the
        gradient in each mean times its SD (so a unit is one posterior SD) and
        the gradient in each log-SD.
    callback : callable, optional
        ``callback(fraction, message)`` as the fit progresses (:mod:`mglm_core.progress`).

    Returns
    -------
    BayesMixedGLMResults
        ``diagnostics.objective`` and ``log_marginal_likelihood`` hold the ELBO,
        a lower bound on :math:`\\log p(y)`.
    """
    t0 = time.perf_counter()
    prog = Progress(callback)
    work, M = working_model(model, scale_fe)
    p, k, q = work.k_fep, work.k_vcp, work.k_vc
    elbo = Elbo(work)
    pt, value = _start(work, mean, sd)
    prog.report(0.05, "start")
    pt, value, n_outer = _coordinate_phase(elbo, pt, value, tol, max_outer=min(100, max_iter),
                                           progress=prog.stage(0.05, 0.7, "coordinate ascent", tol))
    polish_iter = max_iter - n_outer

    def neg(x):
        cand = _unpack(x, p, k, q)
        v, g, _, _ = elbo(cand, grad=True)
        if not np.isfinite(v):
            return np.inf, np.zeros_like(x)
        gm = np.concatenate([g.fe_mean, g.vcp_mean, g.vc_mean])
        gs = np.concatenate([g.fe_sd * cand.fe_sd, g.vcp_sd * cand.vcp_sd, g.vc_sd * cand.vc_sd])
        return -v, -np.concatenate([gm, gs])

    # Polish in coordinates scaled by the current SDs: z = (mu - mu0) / sd0, w = log(sd / sd0).
    # There a unit step is one posterior SD, so the gradient is scale-free and L-BFGS well conditioned.
    x0 = _pack(pt)
    n_par = p + k + q
    scale = np.concatenate([np.exp(x0[n_par:]), np.ones(n_par)])

    last_grad = {}

    def neg_scaled(z):
        f, g = neg(x0 + scale * z)
        last_grad["g"] = g * scale
        return f, last_grad["g"]

    f0, g0 = neg_scaled(np.zeros_like(x0))

    def from_start(z):
        # L-BFGS-B stops at a relative reduction of f below ftol: relative to -ELBO, 5e8 with Poisson counts of
        # 1e7, a gain of 0.5 nats was below it (the intercept and the effects half a unit apart along their ridge,
        # the SD four times too large). Relative to the start's value it is a gain that no longer counts.
        f, g = neg_scaled(z)
        return f - f0, g

    n_polish, message = 0, "coordinate phase reached the gradient tolerance"
    z, fval, grad = np.zeros_like(x0), f0, g0
    polish = prog.stage(0.7, 0.97, "L-BFGS polish", gtol)
    step = iter(range(1, polish_iter + 2))

    def polish_callback(intermediate_result):  # the last gradient evaluated is (nearly always) the iterate's
        polish(next(step), float(np.max(np.abs(last_grad["g"]))))

    if g0.size and np.max(np.abs(g0)) > gtol and polish_iter <= 0:
        message = f"the coordinate phase used all {max_iter} iterations (max_iter)"
    elif g0.size and np.max(np.abs(g0)) > gtol:
        opt = minimize(from_start, z, jac=True, method="L-BFGS-B",
                       callback=polish_callback if polish is not None else None,
                       options={"maxiter": polish_iter, "gtol": gtol, "ftol": 1e-15, "maxcor": 20})
        z, fval, grad, n_polish, message = opt.x, opt.fun + f0, opt.jac, opt.nit, str(opt.message)
    pt = _unpack(x0 + scale * z, p, k, q)
    max_grad = float(np.max(np.abs(grad))) if grad.size else 0.0
    # L-BFGS's line search fails ("ABNORMAL") where the ELBO cannot resolve the gain left, about
    # |g|^2 / 2 in these coordinates (Poisson counts of 2e4: terms of 2e5 a row round the sum at 1e-9, a
    # scaled gradient of 1.6e-4 is left): below a millionth of a nat, that is the optimum
    # (so, too, where it stops at a reduction of -ELBO below ftol: relative to the start's value, none it resolves)
    unresolved = "ABNORMAL" in message or "RELATIVE REDUCTION" in message
    converged = max_grad <= 10 * gtol or (unresolved and 0.5 * float(grad @ grad) < 1e-6)
    if converged and max_grad > 10 * gtol:
        message = (f"{message}; the gain left, about |scaled gradient|^2 / 2 = {0.5 * float(grad @ grad):.2g} nats, is "
                   "below what the ELBO resolves: converged")
    elif converged and max_grad > gtol:  # (L-BFGS stopped short of gtol, at its limit or line search, within 10 gtol)
        message = f"{message}; the largest scaled gradient entry {max_grad:.2g} is within 10 x gtol: converged"
    msgs = []
    if not converged:
        msgs.append(f"Variational Bayes did not converge: largest scaled gradient entry {max_grad:.3g} "
                    f"after {n_outer} coordinate and {n_polish} L-BFGS iterations ({message}).")
    notes = []
    narrow = _narrow_fixed_effects(work, pt) if converged else None
    if narrow is not None and narrow[0] < NARROW_RATIO:
        ratio, j, vb_sd, joint_sd = narrow
        name = model.fep_names[j] if M is None else f"the standardised {model.fep_names[j]}"
        notes.append(f"Variational Bayes' fixed-effect SDs are too narrow: {name}'s is {vb_sd:.3g}, {1 / ratio:.1f} "
                     f"times narrower than the joint curvature's {joint_sd:.3g} (the mean-field factorisation drops "
                     "the fixed effects' correlation with the random effects). Use fit_laplace() for intervals.")
    fe, fe_sd = pt.fe_mean, pt.fe_sd
    if M is not None:
        fe = M @ fe
        fe_sd = np.sqrt((M**2) @ (pt.fe_sd**2))
    prog.done()
    for msg in msgs:
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)
    for msg in notes:
        warnings.warn(msg, ApproximationWarning, stacklevel=3)
    diag = FitDiagnostics(
        converged=converged, n_iter=n_outer + n_polish, grad_norm=float(np.linalg.norm(grad)),
        seconds=time.perf_counter() - t0, objective=-fval, warnings=tuple(msgs + notes), message=message,
    )
    return BayesMixedGLMResults(
        model=model, method="vb", fe_mean=fe, fe_sd=fe_sd, vcp_mean=pt.vcp_mean, vcp_sd=pt.vcp_sd,
        vc_mean=pt.vc_mean, vc_sd=pt.vc_sd, diagnostics=diag, log_marginal_likelihood=-fval,
    )
