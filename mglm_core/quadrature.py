r"""Exact one-dimensional integration of the random effects of one component.

Pick the component :math:`P` whose effects never share a row with another effect of
:math:`P` (an observation-level effect, or the innermost factor of a nested design:
mothers within communities). Given the fixed effects and the other random effects
(:math:`a`), the effects of :math:`P` are independent, and the integral over them is a
product of one-dimensional integrals

.. math::

    I_j(a) = \int \exp h_j(u)\,du, \qquad
    h_j(u) = \sum_{i \in R_j} \ell_i(a_i + z_i u) - \frac{u^2}{2\sigma_P^2} - \tfrac12\log(2\pi\sigma_P^2),

over the rows :math:`R_j` of effect :math:`j`. The Laplace value of the whole integral
replaces each :math:`I_j` by its Laplace value
:math:`\hat I_j = \exp h_j(\hat u_j)\,\sqrt{2\pi / c_j}` at the joint mode
(:math:`c_j = -h_j''(\hat u_j)`). With few rows per effect (binary data: one to three
children per mother) that is where the Laplace approximation fails; the correction

.. math::

    \delta(\theta) = \sum_j \log I_j(\hat a) - \log \hat I_j(\hat a)

computes each :math:`I_j` by adaptive Gauss–Hermite quadrature around :math:`\hat u_j`
with scale :math:`c_j^{-1/2}` (exact for a Gaussian integrand, so :math:`\delta = 0`
when the Laplace value is exact). The other coordinates stay at their joint mode: they
are informed by many rows, where the Laplace approximation is accurate. Cost: a few
passes over the rows of :math:`P` per node, ``nodes`` passes in all.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import logsumexp

__all__ = ["IndependentEffects"]


class IndependentEffects:
    """The rows of one conditionally independent component and the correction :math:`\\delta`.

    Parameters
    ----------
    model : BayesMixedGLM
    component : int
        A component with at most one nonzero per row of ``exog_vc`` (see :meth:`find`).
    nodes : int
        Gauss–Hermite nodes per effect.
    """

    def __init__(self, model, component, nodes=24):
        Z = sp.csc_matrix(model.exog_vc)
        cols = np.flatnonzero(model.ident == component)
        Zc = Z[:, cols].tocoo()
        self.component = int(component)
        self.rows = Zc.row.astype(np.int64)
        self.effect = cols[Zc.col]  # global column of each row's effect
        self.local = Zc.col.astype(np.int64)  # 0..m-1
        self.z = Zc.data.astype(float)
        self.cols = cols
        self.y = model.endog[self.rows]
        self.trials = None if model.trials is None else model.trials[self.rows]
        x, w = np.polynomial.hermite.hermgauss(nodes)
        self.x, self.logw = x, np.log(w) + x**2

    @classmethod
    def find(cls, model, nodes=24):
        """The component with the most effects among those with at most one nonzero per row
        (None if there is none)."""
        if not model.k_vc:
            return None
        Z = sp.csr_matrix(model.exog_vc)
        Z.eliminate_zeros()
        best, best_m = None, 0
        for k in range(model.k_vcp):
            cols = np.flatnonzero(model.ident == k)
            per_row = np.diff(Z[:, cols].tocsr().indptr)
            if per_row.max(initial=0) <= 1 and cols.size > best_m:
                best, best_m = k, cols.size
        return None if best is None else cls(model, best, nodes)

    def correction(self, model, vcp, fe, vc):
        """:math:`\\delta(\\theta)` at the conditional mode ``(fe, vc)`` for log-SDs ``vcp``."""
        fam = model.family
        eta = model.rows.linear_predictor(fe, vc)[self.rows]
        u_hat = vc[self.effect]
        a = eta - self.z * u_hat
        m = self.cols.size
        prec = np.exp(-2.0 * vcp[self.component])
        _, w = fam.score_weight(self.y, eta, self.trials)
        c = np.bincount(self.local, weights=w * self.z**2, minlength=m) + prec
        s = np.sqrt(2.0 / c)
        u0 = vc[self.cols]
        h0 = np.bincount(self.local, weights=fam.loglike(self.y, eta, self.trials), minlength=m) - 0.5 * prec * u0**2
        H = np.empty((m, self.x.size))
        for k, xk in enumerate(self.x):
            uk = u0 + s * xk
            ll = fam.loglike(self.y, a + self.z * uk[self.local], self.trials)
            H[:, k] = np.bincount(self.local, weights=ll, minlength=m) - 0.5 * prec * uk**2
        log_exact = logsumexp(H + self.logw, axis=1) + np.log(s)
        log_laplace = h0 + 0.5 * np.log(np.pi)  # h(u0) + log sqrt(2 pi / c) = h(u0) + log(s sqrt(pi))
        return float(np.sum(log_exact - log_laplace - np.log(s)))
