r"""The log joint density and the ELBO, with gradients and sparse Hessian blocks.

Notation (shared by the whole package): ``fe`` (p) fixed effects, ``vcp`` (k)
log standard deviations of the variance components, ``vc`` (q) random
effects; ``ident[j]`` is the component of random effect j and
:math:`m_k` the number of random effects in component k.

Log joint density (all constants included):

.. math::

    \log p(y, fe, vcp, vc) = \sum_i \ell_i(\eta_i)
      + \sum_j \log N(vc_j \mid 0, e^{2 vcp_{ident_j}})
      + \sum_k \log N(vcp_k \mid 0, vcp\_p^2)
      + \sum_l \log N(fe_l \mid 0, fe\_p^2),
    \qquad \eta = X fe + Z vc + \text{offset}.

Its negative Hessian, ordered ``[vc | fe, vcp]``, has the sparse block
:math:`A = Z^\top W Z + \mathrm{diag}(e^{-2 vcp_{ident}})`, the coupling
:math:`B = [Z^\top W X,\; G]` with :math:`G_{j,ident_j} = -2 vc_j e^{-2vcp_{ident_j}}`,
and the border :math:`C = \mathrm{diag}(X^\top W X + fe\_p^{-2} I,\;
2\sum_{j\in k} vc_j^2 e^{-2vcp_k} + vcp\_p^{-2})`.

The mean-field ELBO replaces every parameter by a Gaussian factor with mean
:math:`\mu` and SD :math:`\sigma`:

.. math::

    \mathrm{ELBO} = \sum_i \mathrm{E}\,\ell_i
      - \tfrac12\sum_k Q_k e_k - \sum_k m_k \mu_{vcp,k}
      - \tfrac12\sum_k \frac{\mu_{vcp,k}^2+\sigma_{vcp,k}^2}{vcp\_p^2}
      - \tfrac12\sum_l \frac{\mu_{fe,l}^2+\sigma_{fe,l}^2}{fe\_p^2}
      + \sum \log\sigma + \text{const},

with :math:`e_k = \mathrm{E}\,e^{-2 vcp_k} = e^{-2\mu_{vcp,k} + 2\sigma_{vcp,k}^2}` and
:math:`Q_k = \sum_{j \in k}(\mu_{vc,j}^2 + \sigma_{vc,j}^2)`. Its Hessian in the
means has the same blocks with :math:`e^{-2vcp}` replaced by :math:`e_k`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

LOG_2PI = np.log(2.0 * np.pi)

__all__ = ["LogJoint", "Elbo", "VBPoint"]


def _prior_constant(model):
    p, k, q = model.k_fep, model.k_vcp, model.k_vc
    return (-0.5 * q * LOG_2PI - 0.5 * k * (LOG_2PI + 2 * np.log(model.vcp_p))
            - 0.5 * p * (LOG_2PI + 2 * np.log(model.fe_p)))


def _blocks(model, rs, fe_prec_diag, vc_mean, prec_k, sumsq_k, with_vcp):
    """Negative-Hessian blocks shared by the joint density and the ELBO."""
    ident = model.ident
    p, k = model.k_fep, model.k_vcp
    A = model.rows.with_diagonal(rs.z_wz, prec_k[ident]) if model.k_vc else sp.csc_matrix((0, 0))
    C_fe = rs.x_wx + np.diag(fe_prec_diag)
    if not with_vcp:
        return A, rs.z_wx, C_fe
    G = np.zeros((model.k_vc, k))
    G[np.arange(model.k_vc), ident] = -2.0 * vc_mean * prec_k[ident]
    B = np.hstack([rs.z_wx, G])
    C = np.zeros((p + k, p + k))
    C[:p, :p] = C_fe
    C[p:, p:] = np.diag(2.0 * sumsq_k * prec_k + 1.0 / model.vcp_p**2)
    return A, B, C


class LogJoint:
    """The log joint density of a model (see the module docstring)."""

    def __init__(self, model, rows=None, family=None):
        self.model = model
        self.rows = model.rows if rows is None else rows
        self.family = model.family if family is None else family
        self.const = _prior_constant(model)

    def __call__(self, fe, vcp, vc, hessian=True, with_vcp=True):
        """Return ``(value, g_fe, g_vcp, g_vc, blocks)``; blocks ordered ``[vc | fe, (vcp)]``."""
        m = self.model
        rs = self.rows.reduce(self.family, fe, vc, hessian=hessian)
        with np.errstate(over="ignore"):
            prec_k = np.exp(-2.0 * vcp)
        prec = prec_k[m.ident]
        sumsq_k = np.bincount(m.ident, weights=vc**2, minlength=m.k_vcp)
        value = (rs.loglike - 0.5 * float(sumsq_k @ prec_k) - float(m.vc_count @ vcp)
                 - 0.5 * float(vcp @ vcp) / m.vcp_p**2 - 0.5 * float(fe @ fe) / m.fe_p**2 + self.const)
        g_fe = rs.x_score - fe / m.fe_p**2
        g_vc = rs.z_score - vc * prec
        g_vcp = sumsq_k * prec_k - m.vc_count - vcp / m.vcp_p**2
        blocks = None
        if hessian:
            blocks = _blocks(m, rs, np.full(m.k_fep, 1.0 / m.fe_p**2), vc, prec_k, sumsq_k, with_vcp)
        return value, g_fe, g_vcp, g_vc, blocks


@dataclass(frozen=True)
class VBPoint:
    """Means and SDs of the mean-field factors."""

    fe_mean: np.ndarray
    vcp_mean: np.ndarray
    vc_mean: np.ndarray
    fe_sd: np.ndarray
    vcp_sd: np.ndarray
    vc_sd: np.ndarray


class Elbo:
    """The mean-field ELBO of a model (see the module docstring)."""

    def __init__(self, model):
        self.model = model
        n_par = model.k_fep + model.k_vcp + model.k_vc
        self.const = _prior_constant(model) + 0.5 * n_par * (1.0 + LOG_2PI)

    def __call__(self, pt: VBPoint, grad=True, hessian=False):
        """Return ``(elbo, grads, blocks, rs)``.

        ``grads`` is a VBPoint of derivatives with respect to the means and SDs;
        ``blocks`` the negative Hessian in the means, ordered ``[vc | fe, vcp]``.
        """
        m = self.model
        rs = m.rows.reduce(m.family, pt.fe_mean, pt.vc_mean, pt.fe_sd**2, pt.vc_sd**2, hessian=hessian)
        e_k = np.exp(-2.0 * pt.vcp_mean + 2.0 * pt.vcp_sd**2)
        sumsq_k = np.bincount(m.ident, weights=pt.vc_mean**2 + pt.vc_sd**2, minlength=m.k_vcp)
        entropy = sum(float(np.sum(np.log(s))) for s in (pt.fe_sd, pt.vcp_sd, pt.vc_sd))
        value = (rs.loglike - 0.5 * float(sumsq_k @ e_k) - float(m.vc_count @ pt.vcp_mean)
                 - 0.5 * float(pt.vcp_mean @ pt.vcp_mean + pt.vcp_sd @ pt.vcp_sd) / m.vcp_p**2
                 - 0.5 * float(pt.fe_mean @ pt.fe_mean + pt.fe_sd @ pt.fe_sd) / m.fe_p**2
                 + entropy + self.const)
        grads = None
        if grad:
            e = e_k[m.ident]
            grads = VBPoint(
                fe_mean=rs.x_score - pt.fe_mean / m.fe_p**2,
                vcp_mean=sumsq_k * e_k - m.vc_count - pt.vcp_mean / m.vcp_p**2,
                vc_mean=rs.z_score - pt.vc_mean * e,
                fe_sd=-pt.fe_sd * rs.x2_w - pt.fe_sd / m.fe_p**2 + 1.0 / pt.fe_sd,
                vcp_sd=-2.0 * pt.vcp_sd * sumsq_k * e_k - pt.vcp_sd / m.vcp_p**2 + 1.0 / pt.vcp_sd,
                vc_sd=-pt.vc_sd * rs.z2_w - pt.vc_sd * e + 1.0 / pt.vc_sd,
            )
        blocks = None
        if hessian:
            blocks = _blocks(m, rs, np.full(m.k_fep, 1.0 / m.fe_p**2), pt.vc_mean, e_k, sumsq_k, True)
        return value, grads, blocks, rs

    def fixed_point_sd(self, pt: VBPoint, rs):
        """SDs solving :math:`\\partial\\,\\mathrm{ELBO}/\\partial\\sigma = 0` at the current weights.

        :math:`\\sigma_j^{-2} = -\\mathrm{E}\\,\\partial^2 \\log p / \\partial\\theta_j^2`.
        """
        m = self.model
        e_k = np.exp(-2.0 * pt.vcp_mean + 2.0 * pt.vcp_sd**2)
        sumsq_k = np.bincount(m.ident, weights=pt.vc_mean**2 + pt.vc_sd**2, minlength=m.k_vcp)
        return (
            1.0 / np.sqrt(rs.x2_w + 1.0 / m.fe_p**2),
            1.0 / np.sqrt(2.0 * sumsq_k * e_k + 1.0 / m.vcp_p**2),
            1.0 / np.sqrt(rs.z2_w + e_k[m.ident]),
        )
