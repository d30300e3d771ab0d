r"""The posterior of a model without random effects (a Bayesian GLM) by Gauss–Hermite quadrature.

With no variance component there is nothing to integrate out, and the Laplace approximation of
:math:`p(fe \mid y)` is a Gaussian at the mode: with few rows its mean is the mode and its SDs the
curvature's, while the posterior is skewed (twenty binary rows and a slope: the slope's posterior mean
0.26 posterior SDs from the mode, its SD 11 % wider than the curvature says, and :math:`\log p(y)` 0.08
off). Such a model is the null that ``(1 | g)`` is compared against, so its evidence matters as much.

:func:`integrate` computes the posterior's mean, covariance and :math:`\log p(y)` by a product
Gauss–Hermite rule in the coordinates standardised at the mode, :math:`fe = \widehat{fe} + L z`
(:math:`LL^\top` the inverse curvature):

.. math::

    p(y) = \int e^{f(fe)}\,d fe = |L| \int e^{f(\widehat{fe} + Lz) + |z|^2/2}\, e^{-|z|^2/2}\,dz
         \approx |L| \sum_k w_k\, e^{f(\widehat{fe} + L z_k) + |z_k|^2/2},

:math:`f` the log joint density (the likelihood with its constants, and the fixed effects' Gaussian prior),
:math:`w_k` the products of the one-dimensional rule's weights for :math:`e^{-x^2/2}`; the same weights
times :math:`e^{f + |z|^2/2}` give the moments. The rule is exact for a Gaussian posterior and converges
fast for the smooth, log-concave ones of these families. Its cost is rows times nodes, so it runs for up to
:data:`NODES`'s numbers of fixed effects and :data:`WORK_MAX` products; beyond, the posterior is close to
its Laplace Gaussian (many rows per fixed effect) or too many dimensions for a product rule.
"""
from __future__ import annotations

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy.special import logsumexp

__all__ = ["integrate"]

#: Nodes per dimension of the product rule, by the number of fixed effects (none beyond four).
NODES = {1: 40, 2: 24, 3: 14, 4: 10}
#: Rows times nodes up to which the rule runs (about 0.1 s).
WORK_MAX = 4e6
#: Nodes whose rule weight is below exp(-PRUNE) of the largest are dropped.
PRUNE = 25.0
#: Rows times nodes per block of the evaluation (memory: 8 bytes each, a few arrays).
_BLOCK = 1_000_000
#: The rule with about two thirds of the nodes must agree within these (in posterior SDs, relative SD, log p(y))
#: for the result to be used: a posterior that the rule does not resolve keeps the Laplace Gaussian.
_AGREE = (0.01, 0.01, 0.005)


def _rule(p, K):
    """Nodes (N x p) and log weights of the pruned product rule of ``K`` nodes per dimension."""
    x, w = hermegauss(K)
    idx = np.stack(np.meshgrid(*[np.arange(K)] * p, indexing="ij"), axis=-1).reshape(-1, p)
    logw = np.sum(np.log(w)[idx], axis=1)
    keep = logw >= logw.max() - PRUNE
    return x[idx[keep]], logw[keep]


def _moments(model, mode, root, z, logw):
    """``(mean, cov, log_evidence)`` of the rule ``(z, logw)`` around ``mode`` with the root ``root``."""
    fam, X, y = model.family, model.exog, model.endog
    t = None if model.trials is None else model.trials[:, None]
    B = mode + z @ root.T  # nodes x p: the fixed effects at the nodes
    logf = np.empty(len(B))
    step = max(1, _BLOCK // max(y.size, 1))
    for a in range(0, len(B), step):
        eta = X @ B[a:a + step].T
        if model.offset is not None:
            eta += model.offset[:, None]
        logf[a:a + step] = np.sum(fam.loglike(y[:, None], eta, t), axis=0)
    p = mode.size
    logf += -0.5 * np.sum(B**2, axis=1) / model.fe_p**2 - 0.5 * p * np.log(2.0 * np.pi * model.fe_p**2)
    logv = logw + logf + 0.5 * np.sum(z**2, axis=1)
    if not np.all(np.isfinite(logv)):
        return None
    log_evidence = float(np.sum(np.log(np.abs(np.diag(root)))) + logsumexp(logv))
    omega = np.exp(logv - logv.max())
    omega /= omega.sum()
    mean = omega @ B
    dev = B - mean
    return mean, (dev * omega[:, None]).T @ dev, log_evidence


def integrate(model, mode, cov):
    r"""The fixed effects' posterior mean, covariance and :math:`\log p(y)` of ``model`` (no random effects)
    by the product rule around the posterior ``mode`` with the Laplace covariance ``cov``; None where the rule
    does not run (more fixed effects than :data:`NODES` covers, more work than :data:`WORK_MAX`) or does not
    resolve the posterior (the rule with two thirds of its nodes disagrees: :data:`_AGREE`)."""
    p = model.k_fep
    K = NODES.get(p)
    if K is None or model.k_vc:
        return None
    z, logw = _rule(p, K)
    if model.endog.size * len(z) > WORK_MAX:
        return None
    try:
        root = np.linalg.cholesky(0.5 * (cov + cov.T))
    except np.linalg.LinAlgError:
        return None
    fine = _moments(model, mode, root, z, logw)
    coarse = _moments(model, mode, root, *_rule(p, (2 * K) // 3))
    if fine is None or coarse is None:
        return None
    sd = np.sqrt(np.diag(fine[1]))
    if not (np.all(np.abs(fine[0] - coarse[0]) <= _AGREE[0] * sd)
            and np.all(np.abs(np.sqrt(np.diag(coarse[1])) / sd - 1.0) <= _AGREE[1])
            and abs(fine[2] - coarse[2]) <= _AGREE[2]):
        return None
    return fine
