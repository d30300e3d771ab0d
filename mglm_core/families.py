r"""Response families: log-likelihood, its derivatives and Gaussian expectations.

Each family works on the linear predictor :math:`\eta_i` (offset included) and
provides, row by row,

* the log-likelihood :math:`\ell_i(\eta_i)` with all constants, so that
  marginal likelihoods of different models can be compared;
* the score :math:`\ell_i'(\eta_i)` and the working weight
  :math:`w_i = -\ell_i''(\eta_i)` used by Newton steps;
* for variational Bayes, the Gaussian expectation
  :math:`E_i = \mathrm{E}\,\ell_i(\eta)` with :math:`\eta \sim N(m_i, v_i)` and
  its derivatives :math:`\partial E_i/\partial m_i = \mathrm{E}\,\ell_i'` and
  :math:`\partial E_i/\partial v_i = \tfrac12 \mathrm{E}\,\ell_i''` (Bonnet and
  Price theorems), plus :math:`\mathrm{E}\,\ell_i''` for Newton steps on the
  variational means.

Binomial (logit link), :math:`y_i` successes out of :math:`n_i` trials:

.. math:: \ell_i = y_i\eta_i - n_i \log(1 + e^{\eta_i}) + \log\binom{n_i}{y_i}

The expectation has no closed form: Gauss--Hermite rules for narrow Gaussians
(sd <= 1), and for wide ones an exact kinked part plus Gauss--Legendre rules for
the smooth remainder on each side of 0 (``n_quad`` nodes per side, 24 by
default); about 1e-9 accurate throughout (see :meth:`Binomial.gaussian_expectation`).

Poisson (log link): :math:`\ell_i = y_i\eta_i - e^{\eta_i} - \log y_i!`, with the
closed form :math:`\mathrm{E}\,e^{\eta} = e^{m + v/2}`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit, gammaln, ndtr

__all__ = ["Family", "Binomial", "Poisson", "get_family"]


@functools.lru_cache(maxsize=None)
def _hermite_rule(k):
    """Gauss--Hermite nodes and weights for the standard normal (weights sum to 1); constants."""
    x, w = np.polynomial.hermite_e.hermegauss(k)
    w = w / w.sum()
    x.setflags(write=False)
    w.setflags(write=False)
    return x, w


@functools.lru_cache(maxsize=None)
def _legendre_rule(n):
    x, w = np.polynomial.legendre.leggauss(n)
    x.setflags(write=False)
    w.setflags(write=False)
    return x, w


def _softplus(eta):
    return np.logaddexp(0.0, eta)


@dataclass(frozen=True)
class Family:
    """Base class of the response families (see the module docstring)."""

    name = "family"
    link = "identity"
    #: The log-likelihood is :math:`y\eta - e^{\eta}` plus a base measure (Poisson): its only nonlinear term
    #: is :math:`e^{\eta}`, so rows sharing an effect with coefficient 1 enter that effect's integral through
    #: :math:`\sum_i y_i` and :math:`\sum_i e^{a_i}` alone (:class:`~mglm_core.quadrature.SeparableRows`).
    exp_linear = False

    def loglike(self, y, eta, trials):  # pragma: no cover - abstract
        raise NotImplementedError

    def score_weight(self, y, eta, trials):  # pragma: no cover - abstract
        raise NotImplementedError

    def gaussian_expectation(self, y, m, v, trials, const=True, value=True):  # pragma: no cover
        """``E l, dE/dm, dE/dv, E l''`` for ``eta ~ N(m, v)`` (``E l`` None without ``value``)."""
        raise NotImplementedError

    def log_base_measure(self, y, trials):
        """The part of ``loglike`` that does not depend on ``eta`` (row by row)."""
        return np.zeros_like(np.asarray(y, dtype=float))  # pragma: no cover - overridden

    def loglike_score_weight(self, y, eta, trials, const=True):
        """The summed ``loglike``, the score and the weight in one pass; ``const=False``
        leaves out :meth:`log_base_measure` (for callers that add it once)."""
        ll, score, weight = self.row_terms(y, eta, trials)
        if not const:
            ll = ll - self.log_base_measure(y, trials)
        return float(np.sum(ll)), score, weight

    def row_terms(self, y, eta, trials):
        """``(loglike, score, weight)`` element by element (any broadcastable shapes), in one pass
        where the family shares the transcendental functions (the quadrature's nodes)."""
        return (self.loglike(y, eta, trials),) + tuple(self.score_weight(y, eta, trials))

    def effect_terms(self, mu_exp, y, trials, rows, bound):
        r"""The quadrature's row terms from :math:`E = e^{\eta}` (rows x nodes) instead of
        :math:`\eta`: ``(N, score, weight)``, with N (effects x nodes) the sums over each effect's
        rows (``rows``, an :class:`~mglm_core.quadrature.EffectRows`) of the part of ``loglike`` that
        is neither linear in :math:`\eta` nor :meth:`log_base_measure`; ``bound`` bounds
        :math:`|\eta|`. None where the family has no such form (the caller then uses :meth:`row_terms`).
        ``mu_exp`` may be overwritten (it may be the weight returned)."""
        return None

    def effect_products(self, mu_exp, y, trials, rows, bound):
        r"""As :meth:`effect_terms` with :math:`e^{N}` in place of N (effects x nodes), where the family
        has it as a product that cannot underflow: the quadrature's weights then need no logarithm.
        None otherwise (the default)."""
        return None

    def weight_derivative(self, y, eta, trials):  # pragma: no cover - abstract
        r""":math:`dw_i/d\eta_i` of the weight :math:`w_i = -\ell_i''` (the integrated fit's gradient)."""
        raise NotImplementedError

    def weight_second_derivative(self, y, eta, trials):  # pragma: no cover - abstract
        r""":math:`d^2w_i/d\eta_i^2` (the integrated fit's second-order correction)."""
        raise NotImplementedError

    def weight_derivatives(self, y, score, weight, trials):  # pragma: no cover - abstract
        r""":math:`dw_i/d\eta_i` and :math:`d^2w_i/d\eta_i^2` from the rows' scores and weights at the same
        :math:`\eta` (:meth:`score_weight`'s), without another exponential."""
        raise NotImplementedError

    def mean(self, eta, trials=None):  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Binomial(Family):
    """Binomial family with the logit link (Bernoulli when ``trials`` is None)."""

    n_quad: int = 24
    name = "binomial"
    link = "logit"
    _nodes: np.ndarray = field(init=False, repr=False, compare=False)
    _weights: np.ndarray = field(init=False, repr=False, compare=False)
    _gh: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        x, w = _legendre_rule(self.n_quad)
        object.__setattr__(self, "_nodes", x)
        object.__setattr__(self, "_weights", w)
        object.__setattr__(self, "_gh", tuple(_hermite_rule(k) for k in (5, 6, 8, 12, 20)))

    def loglike(self, y, eta, trials):
        n = 1.0 if trials is None else trials
        ll = y * eta - n * _softplus(eta)
        if trials is not None:
            ll = ll + gammaln(n + 1) - gammaln(y + 1) - gammaln(n - y + 1)
        return ll

    def score_weight(self, y, eta, trials):
        n = 1.0 if trials is None else trials
        p = expit(eta)
        return y - n * p, n * p * (1.0 - p)

    def row_terms(self, y, eta, trials):
        r"""``(loglike, score, weight)`` element by element from one exponential: with
        :math:`t = e^{-|\eta|}` and :math:`r = 1/(1+t)`, :math:`\log(1+e^\eta) = \max(\eta, 0) + \log(1+t)`,
        :math:`p = r` for :math:`\eta \ge 0` and :math:`t r` otherwise, :math:`p(1-p) = t r^2`."""
        t = np.array(eta, dtype=float)  # (an array even for a scalar: the steps below are in place)
        np.abs(t, out=t)
        np.negative(t, out=t)
        np.exp(t, out=t)
        softplus = np.log1p(t)
        softplus += np.maximum(eta, 0.0)
        r = 1.0 / (1.0 + t)
        t *= r  # t r = min(p, 1 - p)
        p = np.where(eta >= 0.0, r, t)
        t *= r  # t r^2 = p (1 - p)
        if trials is None:  # (no multiplications by n = 1)
            return y * eta - softplus, y - p, t
        return y * eta - trials * softplus + self.log_base_measure(y, trials), y - trials * p, trials * t

    def effect_terms(self, mu_exp, y, trials, rows, bound):
        r"""``(N, score, weight)`` from :math:`E = e^{\eta}` (:meth:`Family.effect_terms`):
        :math:`q = 1/(1+E) = 1 - p`, :math:`p = Eq`, weight :math:`n\,pq`, and
        :math:`N_j = -\sum_{i \in j} n_i \log(1 + e^{\eta_i}) = \sum_{i\in j} n_i \log q_i`, the
        logarithm of products of the :math:`q_i` over runs of an effect's rows short enough
        (:math:`\log q_i \ge -(|\eta_i| + \log 2)`) not to underflow: one logarithm per run and
        node instead of one per row and node (no cancellation: :math:`p = Eq` is accurate for small
        p as :math:`q` is for small :math:`1 - p`). Trials that differ between rows take one
        logarithm per row."""
        q, p, w = self._complement(mu_exp)
        run = max(1, int(700.0 / (bound + 1.0)))
        if trials is None:
            return rows.sum_log(q, run), np.subtract(y, p, out=p), w
        n = trials.ravel()
        if n.size and np.all(n == n[0]):
            c = float(n[0])
            w *= c
            p *= c
            return c * rows.sum_log(q, run), np.subtract(y, p, out=p), w
        np.log(q, out=q)
        q *= trials
        w *= trials
        p *= trials
        return rows.sum(q), np.subtract(y, p, out=p), w

    def effect_products(self, mu_exp, y, trials, rows, bound):
        r""":math:`e^{N_j} = \prod_{i \in j} q_i` (:meth:`effect_terms`), the score and the weight, for
        Bernoulli rows whose effects' products cannot underflow (:math:`q_i \ge e^{-(|\eta_i| + \log 2)}`:
        at most :math:`700 / (\mathrm{bound} + 1)` rows per effect); else None."""
        if trials is not None or rows.most > int(700.0 / (bound + 1.0)):
            return None
        q, p, w = self._complement(mu_exp)
        return rows.prod(q), np.subtract(y, p, out=p), w

    @staticmethod
    def _complement(mu_exp):
        r""":math:`q = 1/(1+E)`, :math:`p = Eq` and :math:`pq` from :math:`E = e^\eta`, p in place of E (rows
        x nodes: each array not allocated is a pass over fresh memory saved, 10 ms of 45 at 12M entries)."""
        q = mu_exp + 1.0
        np.reciprocal(q, out=q)
        p = np.multiply(mu_exp, q, out=mu_exp)
        return q, p, p * q

    def working_response(self, y, trials):
        r"""IRLS start: :math:`p_0 = (y + 1/2)/(n + 1)`, response :math:`\operatorname{logit} p_0`,
        weight :math:`n p_0 (1 - p_0)`."""
        n = 1.0 if trials is None else trials
        p0 = (y + 0.5) / (n + 1.0)
        return np.log(p0 / (1.0 - p0)), n * p0 * (1.0 - p0)

    def log_base_measure(self, y, trials):
        r""":math:`\log\binom{n_i}{y_i}` (zero for Bernoulli rows)."""
        if trials is None:
            return np.zeros_like(np.asarray(y, dtype=float))
        return gammaln(trials + 1) - gammaln(y + 1) - gammaln(trials - y + 1)

    def loglike_score_weight(self, y, eta, trials, const=True):
        r"""The summed log-likelihood, the score and the weight from one exponential.

        With :math:`t = e^{-|\eta|}` and :math:`r = 1/(1+t)`:
        :math:`\log(1 + e^{\eta}) = (\eta + |\eta|)/2 + \log(1 + t)`,
        :math:`p - 1/2 = \operatorname{sign}(\eta)(r - 1/2)` and
        :math:`p(1-p) = t r^2` (no cancellation when :math:`|\eta|` is large).
        """
        n = 1.0 if trials is None else trials
        t = np.abs(eta)
        abs_eta = t.sum() if trials is None else trials @ t
        np.negative(t, out=t)
        np.exp(t, out=t)
        log1p_t = np.log1p(t)
        if trials is None:
            ll = float(y @ eta - 0.5 * (eta.sum() + abs_eta) - log1p_t.sum())
        else:
            ll = float(y @ eta - 0.5 * (trials @ eta + abs_eta) - trials @ log1p_t)
            if const:
                ll += float(np.sum(self.log_base_measure(y, trials)))
        r = t + 1.0
        np.reciprocal(r, out=r)
        w = np.multiply(t, r, out=t)
        w *= r
        r -= 0.5
        np.copysign(r, eta, out=r)  # p - 1/2
        if trials is None:
            score = np.subtract(y, r, out=r)
            score -= 0.5
        else:
            r += 0.5
            score = y - n * r
            w *= n
        return ll, score, w

    def mean(self, eta, trials=None):
        p = expit(eta)
        return p if trials is None else trials * p

    def weight_derivative(self, y, eta, trials):
        r""":math:`dw/d\eta = n\,p(1-p)(1-2p)` (:math:`w = -\ell''`)."""
        p = expit(eta)
        out = p * (1.0 - p) * (1.0 - 2.0 * p)
        return out if trials is None else trials * out

    def weight_second_derivative(self, y, eta, trials):
        r""":math:`d^2w/d\eta^2 = n\,p(1-p)(1-6p(1-p))`."""
        p = expit(eta)
        pq = p * (1.0 - p)
        out = pq * (1.0 - 6.0 * pq)
        return out if trials is None else trials * out

    def weight_derivatives(self, y, score, weight, trials):
        r"""With :math:`p = (y - s)/n` and :math:`w = n\,p(1-p)`: :math:`w(1 - 2p)` and :math:`w(1 - 6w/n)`."""
        n = 1.0 if trials is None else trials
        p = (y - score) / n
        return weight * (1.0 - 2.0 * p), weight * (1.0 - 6.0 * weight / n)

    def gaussian_expectation(self, y, m, v, trials, chunk=32768, const=True, value=True):
        r"""Return ``E l, dE/dm, dE/dv, E l''`` for ``eta ~ N(m, v)``; without ``value``, ``E l`` is None and
        the rules skip its logarithms (two fifths of their time: the variational refinement needs only
        the derivatives).

        The kinked parts have closed forms,
        :math:`\mathrm{E}\max(\eta, 0) = m\Phi(m/s) + s\phi(m/s)` and
        :math:`\mathrm{E}[\eta > 0] = \Phi(m/s)`; the remainders
        (:math:`\log(1 + e^{-|\eta|})`, :math:`\mp\operatorname{expit}(-|\eta|)`,
        :math:`p(1-p)`) are smooth on each side of 0 and decay like
        :math:`e^{-|\eta|}`, so they are integrated by Gauss--Legendre rules on
        :math:`[0, \min(40, m + 9s)]` and :math:`[\max(-40, m - 9s), 0]`
        clipped to :math:`m \pm 9s`. Rows with :math:`s \le 1` use Gauss--Hermite
        rules instead (5 nodes up to s = 0.2, 6 up to 0.3, 8 up to 0.5, 12 up to 0.75, 20 up to 1:
        error below about 6e-9, and cheaper).
        Accurate to about 1e-9 for any m and s (Gauss--Hermite alone on the
        softplus loses digits when s is large).
        """
        s = np.sqrt(np.maximum(v, 1e-24))
        tiers = [(s <= 0.2, lambda *a: self._hermite(*a, rule=0, value=value)),
                 ((s > 0.2) & (s <= 0.3), lambda *a: self._hermite(*a, rule=1, value=value)),
                 ((s > 0.3) & (s <= 0.5), lambda *a: self._hermite(*a, rule=2, value=value)),
                 ((s > 0.5) & (s <= 0.75), lambda *a: self._hermite(*a, rule=3, value=value)),
                 ((s > 0.75) & (s <= 1.0), lambda *a: self._hermite(*a, rule=4, value=value)),
                 (s > 1.0, lambda *a: self._split_legendre(*a, value=value))]
        out = None
        for mask, fn in tiers:
            if mask.all():
                out = list(fn(y, m, s, trials, chunk))
                break
        if out is None:
            out = [np.empty_like(m) if value or i else None for i in range(4)]
            for mask, fn in tiers:
                if mask.any():
                    t = None if trials is None else trials[mask]
                    for o, r in zip(out, fn(y[mask], m[mask], s[mask], t, chunk)):
                        if o is not None:
                            o[mask] = r
        if const and value and trials is not None:
            out[0] = out[0] + self.log_base_measure(y, trials)
        return tuple(out)

    def _hermite(self, y, m, s, trials, chunk, rule=4, value=True):
        r"""Gauss--Hermite rules for narrow Gaussians (nodes 5, 6, 8, 12, 20 for s up to 0.2, 0.3, 0.5, 0.75, 1).

        One exponential per node: with :math:`t = e^{-|\eta|}` and
        :math:`u = t/(1+t) = \operatorname{expit}(-|\eta|)`,
        :math:`\log(1+e^\eta) = (\eta + |\eta|)/2 + \log(1+t)`,
        :math:`p = 1/2 + \operatorname{sign}(\eta)(1/2 - u)` and :math:`p(1-p) = u - u^2`;
        the rule integrates :math:`\eta` exactly, so :math:`\mathrm{E}\,\eta = m`.
        Rows are taken in blocks of about 32k nodes, which stay in cache.
        """
        nodes, weights = self._gh[rule]
        n = 1.0 if trials is None else trials
        e_sp, e_p, e_pq = np.empty_like(m) if value else None, np.empty_like(m), np.empty_like(m)
        step = max(1, min(chunk, 32768 // nodes.size))
        for a in range(0, m.size, step):
            b = min(a + step, m.size)
            eta = m[a:b, None] + s[a:b, None] * nodes[None, :]
            buf = np.empty((3,) + eta.shape)
            np.abs(eta, out=buf[0])
            t = np.negative(buf[0], out=buf[1])
            np.exp(t, out=t)
            u = np.add(t, 1.0)
            np.divide(t, u, out=u)
            if value:
                np.log1p(t, out=t)
            np.multiply(u, u, out=buf[2])
            np.subtract(u, buf[2], out=buf[2])
            np.subtract(0.5, u, out=u)
            np.copysign(u, eta, out=u)  # (u is 0 where eta is)
            sums = (buf if value else buf[2:]) @ weights
            if value:
                e_sp[a:b] = 0.5 * (m[a:b] + sums[0]) + sums[1]
            e_pq[a:b] = sums[-1]
            e_p[a:b] = 0.5 + u @ weights
        return self._finish(y, m, n, trials, e_sp, e_p, e_pq)

    def _split_legendre(self, y, m, s, trials, chunk, value=True):
        n = 1.0 if trials is None else trials
        r = m / s
        cdf, pdf = ndtr(r), np.exp(-0.5 * r * r) / np.sqrt(2.0 * np.pi)
        e_sp = m * cdf + s * pdf if value else None
        e_p = cdf.copy()
        e_pq = np.zeros_like(m)
        for a in range(0, m.size, chunk):
            b = min(a + chunk, m.size)
            mm, ss = m[a:b, None], s[a:b, None]
            for side in (1.0, -1.0):
                if side > 0:
                    lo, hi = np.maximum(0.0, mm - 9 * ss), np.minimum(40.0, mm + 9 * ss)
                else:
                    lo, hi = np.maximum(-40.0, mm - 9 * ss), np.minimum(0.0, mm + 9 * ss)
                half = np.maximum(hi - lo, 0.0) * 0.5
                eta = lo + half * (self._nodes[None, :] + 1.0)
                z = (eta - mm) / ss
                wt = np.exp(-0.5 * z * z) * (self._weights[None, :] * (half / (ss * np.sqrt(2.0 * np.pi))))
                t = np.exp(-np.abs(eta))
                tail = t / (1.0 + t)  # expit(-|eta|)
                if value:
                    e_sp[a:b] += (np.log1p(t) * wt).sum(1)
                e_p[a:b] += (-side * tail * wt).sum(1)
                e_pq[a:b] += (tail * (1.0 - tail) * wt).sum(1)
        return self._finish(y, m, n, trials, e_sp, e_p, e_pq)

    @staticmethod
    def _finish(y, m, n, trials, e_sp, e_p, e_pq):
        e_ll = None if e_sp is None else y * m - n * e_sp
        d2 = -n * e_pq
        return e_ll, y - n * e_p, 0.5 * d2, d2


@dataclass(frozen=True)
class Poisson(Family):
    """Poisson family with the log link; an offset carries log exposure."""

    name = "poisson"
    link = "log"
    exp_linear = True

    def loglike(self, y, eta, trials=None):
        return y * eta - np.exp(eta) - gammaln(y + 1)

    def score_weight(self, y, eta, trials=None):
        mu = np.exp(eta)
        return y - mu, mu

    def row_terms(self, y, eta, trials=None):
        mu = np.exp(eta)
        return y * eta - mu - gammaln(y + 1), y - mu, mu

    def effect_terms(self, mu_exp, y, trials, rows, bound):
        r"""``(N, score, weight)`` from :math:`E = \mu` (:meth:`Family.effect_terms`):
        :math:`N_j = -\sum_{i \in j} \mu_i`, score :math:`y - \mu`, weight :math:`\mu`."""
        return -rows.sum(mu_exp), y - mu_exp, mu_exp

    def working_response(self, y, trials=None):
        r"""IRLS start: :math:`\mu_0 = y + 1/2`, response :math:`\log\mu_0`, weight :math:`\mu_0`."""
        mu0 = y + 0.5
        return np.log(mu0), mu0

    def log_base_measure(self, y, trials=None):
        r""":math:`-\log y_i!`."""
        return -gammaln(y + 1)

    def loglike_score_weight(self, y, eta, trials=None, const=True):
        mu = np.exp(eta)
        ll = float(y @ eta - mu.sum())
        if const:
            ll += float(np.sum(self.log_base_measure(y)))
        return ll, y - mu, mu

    def mean(self, eta, trials=None):
        return np.exp(eta)

    def weight_derivative(self, y, eta, trials=None):
        r""":math:`dw/d\eta = \mu` (:math:`w = -\ell'' = \mu`)."""
        return np.exp(eta)

    def weight_second_derivative(self, y, eta, trials=None):
        r""":math:`d^2w/d\eta^2 = \mu`."""
        return np.exp(eta)

    def weight_derivatives(self, y, score, weight, trials=None):
        r"""Both are :math:`\mu = w`."""
        return weight, weight

    def gaussian_expectation(self, y, m, v, trials=None, const=True, value=True):
        """Closed form: ``E exp(eta) = exp(m + v/2)``."""
        mu = np.exp(m + 0.5 * v)
        e_ll = None if not value else y * m - mu + (self.log_base_measure(y) if const else 0.0)
        return e_ll, y - mu, -0.5 * mu, -mu


@dataclass(frozen=True)
class WorkingGaussian(Family):
    r"""The weighted least-squares surrogate of one IRLS step (used for starting values).

    ``y`` carries the working response :math:`z_i` and ``trials`` the working weights
    :math:`w_i`: :math:`\ell_i = -\tfrac12 w_i (z_i - \eta_i)^2`.
    """

    name = "working"

    def loglike(self, y, eta, trials):
        return -0.5 * trials * (y - eta) ** 2

    def score_weight(self, y, eta, trials):
        return trials * (y - eta), trials

    def log_base_measure(self, y, trials):
        return np.zeros_like(y)

    def loglike_score_weight(self, y, eta, trials, const=True):
        r = y - eta
        return float(-0.5 * (trials * r) @ r), trials * r, trials


_STATSMODELS_NAMES = {"Binomial": "binomial", "Poisson": "poisson"}


def get_family(family) -> Family:
    """Return a :class:`Family` from a name, a Family, or a statsmodels family.

    statsmodels families are recognised by class name (``Binomial``,
    ``Poisson``) without importing statsmodels; their link must be the
    canonical one (logit, log).
    """
    from .errors import DataError

    if isinstance(family, Family):
        return family
    if isinstance(family, type):
        raise DataError(
            f"`family` must be an instance, not a class; got the class {family.__name__}"
            f" (write {family.__name__}() instead)."
        )
    if isinstance(family, str):
        key = family.strip().lower()
        if key in ("binomial", "bernoulli", "logit", "logistic"):
            return Binomial()
        if key == "poisson":
            return Poisson()
        raise DataError(f"`family` must be 'binomial' or 'poisson'; got {family!r}.")
    cls_name = type(family).__name__
    if cls_name in _STATSMODELS_NAMES:
        link = getattr(family, "link", None)
        link_name = type(link).__name__.lower() if link is not None else ""
        want = "logit" if cls_name == "Binomial" else "log"
        if link_name and link_name != want:
            raise DataError(
                f"`family` must use the {want} link; got {cls_name} with link {link_name}."
            )
        return get_family(_STATSMODELS_NAMES[cls_name])
    raise DataError(
        "`family` must be 'binomial', 'poisson', an mglm_core family or a statsmodels "
        f"Binomial/Poisson instance; got {family!r}."
    )
