r"""How far the fixed effects' prior moves their posterior: a warning where it decides the answer.

statsmodels' default prior :math:`fe \sim N(0, fe\_p^2)` with :math:`fe\_p = 2` applies on the covariates' own
scale. With a covariate in the hundreds (a height in metres above the sea) the intercept the data want lies far
out in that prior's tail, and the posterior settles between the two: grouseticks' ``TICKS ~ YEAR + HEIGHT + ...``
gets an Intercept of 6.3 where lme4 (no prior) says 11.4. Nothing else in the fit looks wrong, so the fit says so.

With the posterior Gaussian, :math:`N(m, \Sigma)`, and the prior's precision :math:`P = fe\_p^{-2} I`, the
likelihood alone has precision :math:`\Lambda = \Sigma^{-1} - P` and centre
:math:`\hat\beta = \Lambda^{-1}\Sigma^{-1} m = m + \Lambda^{-1} P m`: the prior moves each fixed effect by
:math:`(\Lambda^{-1} P m)_i`, in posterior SDs :math:`(\Lambda^{-1} P m)_i / \sqrt{\Sigma_{ii}}`.
"""
from __future__ import annotations

import numpy as np

__all__ = ["PULL_MAX", "prior_pull", "prior_pull_message"]

#: A fit warns where the prior moves a fixed effect by more than this many posterior SDs.
PULL_MAX = 1.0


def prior_pull(fe_mean, fe_cov, fe_p):
    r"""``(pull, data_only)``: how far the prior :math:`N(0, fe\_p^2)` moves each fixed effect from where the
    likelihood alone would put it, in posterior SDs, and that place (module docstring: to first order, the
    variance components held where they are; grouseticks' Intercept, 5.0 by it, is 3.5 SDs from a refit with
    fe_p = 1000, whose LOCATION SD is smaller); None where the
    likelihood alone does not identify them (its precision :math:`\Sigma^{-1} - P` not positive definite:
    separation, a column the data do not inform) or the covariance is not available."""
    m = np.asarray(fe_mean, dtype=float)
    cov = np.asarray(fe_cov, dtype=float)
    if m.size == 0 or cov.shape != (m.size, m.size) or not np.all(np.isfinite(cov)) or not np.all(np.isfinite(m)):
        return None
    sd = np.sqrt(np.diag(cov))
    if not np.all(sd > 0):
        return None
    # in the posterior's own scale (covariates in the hundreds leave Sigma badly scaled)
    corr = cov / np.outer(sd, sd)
    try:
        prec = np.linalg.inv(corr)  # (D Sigma^-1 D with D = diag(sd))
    except np.linalg.LinAlgError:
        return None
    lam = prec - np.diag(sd**2) / float(fe_p) ** 2  # D (Sigma^-1 - P) D
    evals = np.linalg.eigvalsh(0.5 * (lam + lam.T))
    if evals.min() <= 1e-8 * max(evals.max(), 1.0):
        return None
    shift = np.linalg.solve(lam, (sd / float(fe_p) ** 2) * m)  # (Lambda^-1 P m) / sd
    return shift, m + shift * sd


def prior_pull_message(result, fe_p):
    """The warning for a fit whose prior moves a fixed effect by more than :data:`PULL_MAX` posterior SDs
    (:func:`prior_pull`), or None. ``result`` a :class:`~mglm_core.results.BayesMixedGLMResults`."""
    p = result.fe_mean.size
    cov = result.border_cov[:p, :p] if result.border_cov is not None else np.diag(result.fe_sd**2)
    out = prior_pull(result.fe_mean, cov, fe_p)
    if out is None:
        return None
    pull = out[0]
    far = [int(i) for i in np.argsort(-np.abs(pull)) if abs(pull[i]) > PULL_MAX][:3]
    if not far:
        return None
    names = result.model.fep_names
    said = ", ".join(f"{names[i]} by about {abs(pull[i]):.1f} posterior SDs (to {result.fe_mean[i]:.3g})" for i in far)
    return (f"The fixed effects' prior N(0, {float(fe_p):g}^2) moves {said} from where the data alone put them: "
            "it decides these estimates. It applies on the covariates' own scale; centre or scale large covariates, or give a wider "
            "fe_p (lme4's estimates have no prior) if that is not the prior you mean.")
