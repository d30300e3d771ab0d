r"""Exact one-dimensional integration of the random effects of one component.

Pick a component :math:`P` whose effects never share a row with another effect of
:math:`P` (an observation-level effect, a factor of a nested design: mothers within
communities, or one of two crossed factors; of several, the one whose effects' Laplace
approximations are the least accurate, :meth:`IndependentEffects.laplace_error`). Given the fixed effects and the other
random effects (:math:`a`), the effects of :math:`P` are independent, and the integral
over them is a product of one-dimensional integrals

.. math::

    I_j(a) = \int \exp h_j(u)\,du, \qquad
    h_j(u) = \sum_{i \in R_j} \ell_i(a_i + z_i u) - \frac{u^2}{2\sigma_P^2} - \tfrac12\log(2\pi\sigma_P^2),

over the rows :math:`R_j` of effect :math:`j`. The Laplace approximation replaces each
:math:`I_j` by :math:`\exp h_j(\hat u_j)\,\sqrt{2\pi / c_j}` (:math:`c_j = -h_j''(\hat u_j)`);
with few rows per effect and a large SD (binary data: one to three children per mother)
that is where it fails. :class:`NestedMarginal` computes each :math:`I_j` by adaptive
Gauss–Hermite quadrature around :math:`\hat u_j` with scale :math:`c_j^{-1/2}` (exact for a
Gaussian integrand) and applies the Laplace approximation over :math:`a` only, which is
informed by many rows. Where a second component's effects pair with P's level by level (intercepts
and slopes of one factor: ``(1 | g) + (0 + x | g)``), :class:`EffectBlocks` integrates both as one
two-dimensional block per level, by a product rule through each level's mode and curvature.

Poisson effects whose coefficient is 1 on every row (random intercepts) need no work per row and node:
:math:`\ell_i = y_i\eta_i - e^{\eta_i} - \log y_i!` with :math:`\eta_i = a_i + u`, so
:math:`h_j(u) = Y_j u - e^{u} \sum_{i \in j} e^{a_i} - u^2/(2\sigma_P^2) + \text{const}`
(:math:`Y_j = \sum_{i \in j} y_i`): the modes are Newton steps over the effects alone, and the rows'
scores and weights at the nodes, :math:`y_i - e^{a_i + u_{0j}} Q_{jk}` and :math:`e^{a_i + u_{0j}} Q_{jk}`
with :math:`Q_{jk} = e^{sc_j x_k}`, are kept by their parts (:class:`SeparableRows`).
"""
from __future__ import annotations

import copy
import functools

import numpy as np
import scipy.sparse as sp
from scipy.special import ndtr as _ndtr

from .linalg import pairs_within_rows

__all__ = ["EffectBlocks", "IndependentEffects", "NestedMarginal"]

#: Gauss–Hermite nodes per effect, for SDs of the component up to 4 (:meth:`NestedMarginal.use_nodes`), ...
NODES = 24
#: ... and at most this many for larger SDs.
NODES_MAX = 192
#: Gauss–Hermite nodes per effect for SDs (times the largest :math:`|z|`) up to :data:`NARROW_SD`: the spacing
#: near the rule's centre, :math:`\sigma_P |z| \pi/\sqrt K`, is then at most 1.8, closer than 24 nodes' 2.6 at 4
#: (12 nodes would be as far apart as those up to 2.8, where guImmun's log-SD posterior SD moved by 2.4 %).
NODES_NARROW = 12
NARROW_SD = 2.0
#: :meth:`NestedMarginal.check_rule` takes a finer rule where twice the nodes move the log density by more than this
RULE_ERROR_MAX = 0.05
#: :meth:`NestedMarginal.second_order` is skipped (None) beyond this many entries of the effects'
#: third-derivative tensors (effects x largest rows per effect cubed).
SECOND_ORDER_MAX = 4e6
#: Up to this many other random effects, (u_D, fe) is handled as one dense block. (Measured: with 107-109
#: other effects dense took 5-8 % less time than the sparse Schur route, with 110-120 the same within the
#: timings' noise, with 150-161 6-40 % more.)
DENSE_OTHER = 112
#: The quadrature's value moves by about this much as its nodes follow the modes: a Newton
#: decrement below it is as converged as the objective allows. At SDs of 5 and more the 24-node
#: rule's value is rough at the scale of 0.05-0.1 (a Poisson case stalled at 0.066 with SD 6.7): a
#: point accepted there is off by about that much, one left out (as not converged) loses all its
#: weight, which biased that case's SD posterior low (SD ratio 0.95 against NUTS; 1.01 accepted).
#: (:meth:`NestedMarginal.use_nodes` now takes a finer rule for such SDs; the tolerance stays for
#: points beyond the SDs it was chosen for.)
_STALL_TOL = 0.1
#: A point solved from its start alone (:meth:`NestedMarginal._one_step`) needs a Newton decrement below this
#: times :math:`e^{d/2}`, d how far its value is below the caller's floor.
_ONE_STEP_DECREMENT = 0.1
#: Gauss–Hermite nodes per axis of :class:`EffectBlocks`' product rule, up to SDs of 2, ...
NODES_BLOCK = 8
#: ... this many up to SDs of 4, growing as :math:`(s/4)^2` beyond (:meth:`EffectBlocks.hermite_rule`), ...
_NODES_BLOCK_4 = 10
#: ... at most this many beyond.
NODES_BLOCK_MAX = 32
#: The product rule drops the nodes whose weight is below exp(-_PRUNE) of the largest.
_PRUNE = 25.0
#: Blocks are integrated when their rows times the rule's nodes are at most this many.
BLOCK_WORK_MAX = 2e7
#: The inner modes' Newton stops after a step below this: Newton converges quadratically on these
#: log-concave integrands, so the mode is then within about its square (1e-8), and the adaptive rule
#: only needs its centre near the mode (1e-6, as before: a tenth more iterations, 2.5 % of the
#: four-component fit's time; on the 60 accuracy cases with the exact integration no mean or SD moved by
#: more than 0.003 reference SDs).
_MODE_STEP = 1e-4
#: Grid points (those :meth:`NestedMarginal.log_marginal` solves with a ``floor``) stop their Newton
#: iterations at a step whose decrement is below this, its value estimated (``newton_ascent``'s
#: ``estimate_below``): measured, the log density is then within 5e-4 of the converged one (the log
#: determinant's change; the grid's values need about 1e-3), for one evaluation fewer at a third of
#: the points solved by Newton.
_ESTIMATE_BELOW = 1e-5
#: The tilted moments of the optima (:meth:`NestedMarginal._tilted`: rows x d covariances and the effects'
#: means and variances, with ``skew`` a second rows x d array and the third moments) are kept with them while all
#: those kept hold at most this many numbers, 160 MB (beyond,
#: :meth:`NestedMarginal.moments` evaluates the rule again): a grid of 268 points of 2e4 rows, or 9 points of a
#: million rows, whose moments then cost no evaluation of the rule (one was 0.26 s there, 15 % of such a fit).
TILTED_KEEP_MAX = 2e7
#: The (never modified) empty sparse block of the dense layout.
_EMPTY = sp.csc_matrix((0, 0))
#: The rules take :math:`e^{\eta}` at the nodes as products of a factor per row and one per row and
#: node coordinate (:meth:`EffectBlocks.rule`) while :math:`|\eta|` is bounded by this (the factors'
#: products then stay finite); beyond, :math:`\eta` itself (:meth:`~mglm_core.families.Family.row_terms`).
_FACTOR_ETA_MAX = 600.0


class EffectRows:
    r"""The rows of the integrated component, sorted by effect, for sums and products over each
    effect's rows at every node (``reduceat`` over contiguous runs: no sparse product and, for
    products, one logarithm per run instead of one per row).

    Parameters
    ----------
    local : ndarray of int
        Each row's effect (0..m-1), non-decreasing.
    m : int
        The number of effects (an effect without rows sums to 0).
    """

    def __init__(self, local, m):
        local = np.asarray(local, dtype=np.int64)
        if local.size and np.any(np.diff(local) < 0):
            raise ValueError(f"`local` must be sorted by effect; got {local[:5].tolist()}...")
        sizes = np.bincount(local, minlength=m)
        first = np.cumsum(sizes) - sizes
        self.local, self.m = local, int(m)
        self.present = np.flatnonzero(sizes > 0)
        self.starts = first[self.present]
        self.rank = np.arange(local.size) - first[local]  # each row's place within its effect
        self.most = int(sizes.max()) if sizes.size else 0
        #: every effect has the same number of rows: sums and products over a reshaped view (2-3 times
        #: faster than reduceat for a few rows per effect)
        self.equal = bool(sizes.size and np.all(sizes == self.most))

    def _place(self, sums, empty=0.0):
        if self.present.size == self.m:
            return sums
        out = np.full((self.m,) + sums.shape[1:], empty)
        out[self.present] = sums
        return out

    def padded(self, X):
        r"""``X`` (rows x ...) laid out effect by effect (effects x most x ...): each effect's rows in slots
        0..most-1 and zeros after them; where every effect has the most rows, the rows themselves reshaped
        (a view: not to be written to)."""
        X = _dense(X)
        if self.equal:
            return X.reshape((self.m, self.most) + X.shape[1:])
        out = np.zeros((self.m, self.most) + X.shape[1:])
        out[self.local, self.rank] = X
        return out

    def prod(self, Q):
        r""":math:`\prod_{i \in j} Q_{ik}` (effects x nodes; 1 for an effect without rows)."""
        if self.equal:
            return Q.reshape(self.m, self.most, -1).prod(axis=1)
        return self._place(np.multiply.reduceat(Q, self.starts, axis=0), 1.0)

    def sum(self, X):
        r""":math:`\sum_{i \in j} X_{ik}` (effects x nodes)."""
        if self.equal:
            return X.reshape(self.m, self.most, -1).sum(axis=1)
        return self._place(np.add.reduceat(X, self.starts, axis=0))

    def max(self, x):
        r""":math:`\max_{i \in j} x_i` (effects; :math:`-\infty` for an effect without rows)."""
        if self.equal:
            return x.reshape(self.m, self.most).max(axis=1)
        return self._place(np.maximum.reduceat(x, self.starts), -np.inf)

    def weighted(self, X, P, *more):
        r""":math:`\sum_k X_{ik} P_{jk\cdot}` for every row i of effect j: ``X`` rows x nodes, ``P`` effects x
        nodes (rows out) or effects x nodes x d (rows x d out). Equal-sized effects: batched products over
        the reshaped rows, without gathering P to rows x nodes; :class:`SeparableRows` by their parts.
        With ``more`` arrays like ``X``, the list of their sums with the same ``P`` (one gather of P)."""
        if more:
            Xs, rows_P = (X,) + more, None
            if not self.equal and P.ndim == 2 and not all(isinstance(X_, SeparableRows) for X_ in Xs):
                rows_P = np.take(P, self.local, axis=0)
            return [self.weighted(X_, P) if rows_P is None or isinstance(X_, SeparableRows)
                    else np.einsum("ik,ik->i", X_, rows_P) for X_ in Xs]
        if isinstance(X, SeparableRows) and P.ndim == 2:
            return X.weighted(P)
        X = _dense(X)
        if self.equal:
            out = np.matmul(X.reshape(self.m, self.most, -1), P if P.ndim == 3 else P[:, :, None])
            return out.reshape(X.shape[0], -1) if P.ndim == 3 else out.reshape(X.shape[0])
        if P.ndim == 3:  # (np.take gathers rows of effects x nodes in half the time of P[self.local])
            return np.einsum("ik,ikd->id", X, np.take(P, self.local, axis=0))
        return np.einsum("ik,ik->i", X, np.take(P, self.local, axis=0))

    def scaled(self, X, P):
        r""":math:`X_{ik} P_{jk}` for every row i of effect j (rows x nodes; ``P`` effects x nodes)."""
        X = _dense(X)
        if self.equal:
            return (X.reshape(self.m, self.most, -1) * P[:, None, :]).reshape(X.shape)
        return X * np.take(P, self.local, axis=0)

    def sum_log(self, Q, run):
        r""":math:`\sum_{i \in j} \log Q_{ik}` as the logarithms of products over runs of at most
        ``run`` rows of an effect (positive ``Q``; the caller bounds ``run`` so that no product
        underflows or overflows)."""
        if run >= self.most:
            if self.equal:
                return np.log(Q.reshape(self.m, self.most, -1).prod(axis=1))
            return self._place(np.log(np.multiply.reduceat(Q, self.starts, axis=0)))
        key = self.local * (self.most // run + 1) + self.rank // run
        runs = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        logs = np.log(np.multiply.reduceat(Q, runs, axis=0))
        effect = self.local[runs]
        return self._place(np.add.reduceat(logs, np.flatnonzero(np.r_[True, effect[1:] != effect[:-1]]), axis=0))


def _dense(X):
    """``X`` as an array (a :class:`SeparableRows` expanded)."""
    return X.dense() if isinstance(X, SeparableRows) else X


class SeparableRows:
    r"""A rows x nodes array of the form :math:`X_{ik} = A_i + B_i\,Q_{jk}`, j the effect of row i, kept
    by its parts: the Poisson scores and weights at the nodes of effects whose coefficient is 1 on every
    row, :math:`e^{\eta_{ik}} = e^{c_i}\,e^{s_j x_k}` (:meth:`IndependentEffects.rule`). Sums over each
    effect's rows and node-weighted sums per row then cost rows + effects x nodes instead of rows x nodes
    (a million rows in effects of ten, 12 nodes: the rule's work per evaluation about 15 times smaller);
    anything else takes the expanded array (:meth:`dense`).

    Parameters
    ----------
    A, B : ndarray or float
        The rows' parts (rows; ``A`` may be a scalar).
    Q : ndarray
        Effects x nodes.
    local : ndarray of int
        Each row's effect.
    """

    __slots__ = ("A", "B", "Q", "local")

    def __init__(self, A, B, Q, local):
        self.A, self.B, self.Q, self.local = A, B, Q, local

    @property
    def shape(self):
        return (self.local.size, self.Q.shape[1])

    def dense(self):
        """The rows x nodes array."""
        return self[slice(None)]

    def __array__(self, dtype=None, copy=None):
        out = self.dense()
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, rows):
        """The expanded rows ``rows`` (an index array or a slice)."""
        A = self.A[rows][:, None] if np.ndim(self.A) else self.A
        return A + self.B[rows][:, None] * np.take(self.Q, self.local[rows], axis=0)

    def __neg__(self):
        return SeparableRows(-self.A, -self.B, self.Q, self.local)

    def __sub__(self, column):
        r""":math:`X_{ik} - v_i` for a column ``v`` (rows x 1)."""
        return SeparableRows(self.A - np.asarray(column)[:, 0], self.B, self.Q, self.local)

    def weighted(self, P):
        r""":math:`\sum_k X_{ik} P_{jk} = A_i \sum_k P_{jk} + B_i \sum_k P_{jk} Q_{jk}` (``P`` effects x nodes)."""
        out = self.B * np.einsum("jk,jk->j", P, self.Q)[self.local]
        return out + self.A * P.sum(axis=1)[self.local]

    def node_gram(self, group, Y, P):
        r""":math:`\sum_j \sum_k P_{jk}\, d_{jk} d_{jk}^\top` with :math:`d_{jk} = \sum_{i \in j} X_{ik} Y_i`
        (columns of ``Y``; ``P`` effects x nodes): with the effects' sums :math:`a_j = \sum A_i Y_i`,
        :math:`b_j = \sum B_i Y_i`, :math:`\bar Q_j = \sum_k P_{jk} Q_{jk}` and :math:`\tilde Q = Q - \bar Q`,
        :math:`d_{jk} = r_j + b_j \tilde Q_{jk}` (:math:`r_j = a_j + b_j \bar Q_j`), a sum of four
        p x p products over the effects; centred so that no difference of large terms is taken where
        :math:`r_j` vanishes (the scores' deviations from their tilted means)."""
        a, b = self._part_sums(group, Y)
        s0 = P.sum(axis=1)
        Qbar = np.einsum("jk,jk->j", P, self.Q) / s0
        Qt = self.Q - Qbar[:, None]
        t1 = np.einsum("jk,jk->j", P, Qt)
        t2 = np.einsum("jk,jk->j", P, Qt * Qt)
        r = b * Qbar[:, None] if a is None else a + b * Qbar[:, None]
        cross = (r * t1[:, None]).T @ b
        return (r * s0[:, None]).T @ r + cross + cross.T + (b * t2[:, None]).T @ b

    def effect_sums(self, group, Y):
        r""":math:`\sum_{i \in j} X_{ik} Y_{it}` (effects x nodes x columns of ``Y``, rows x t; ``group`` the
        effects x rows indicator matrix) from the effects' sums of :math:`A_i Y_i` and :math:`B_i Y_i`."""
        a, b = self._part_sums(group, Y)
        out = b[:, None, :] * self.Q[:, :, None]
        if a is not None:
            out += a[:, None, :]
        return out

    def _part_sums(self, group, Y):
        r"""The effects' sums :math:`a_j = \sum_{i \in j} A_i Y_i` (None where A is 0) and
        :math:`b_j = \sum_{i \in j} B_i Y_i` (effects x columns of ``Y``)."""
        b = group @ (self.B[:, None] * Y)
        if not (np.ndim(self.A) or self.A != 0.0):
            return None, b
        return group @ (np.broadcast_to(self.A, self.B.shape)[:, None] * Y), b


def _tilted_weights(lw, factor=None):
    r""":math:`\log \sum_k f_{jk} e^{lw_{jk}}` and the weights :math:`\pi_{jk} \propto f_{jk} e^{lw_{jk}}`
    (rows summing to 1) of a rule's log terms ``lw`` (effects x nodes, overwritten by :math:`\pi`) and
    its factors ``f`` (1 without ``factor``)."""
    top = lw.max(axis=1)
    lw -= top[:, None]
    pi = np.exp(lw, out=lw)
    if factor is not None:
        pi *= factor
    total = pi.sum(axis=1)
    pi /= total[:, None]
    return top + np.log(total), pi


def _effect_sums(local, m, y, *coefs):
    r"""The sums :math:`\sum_{i \in j} y_i c_i` of each coefficient vector over each effect's rows."""
    return [np.bincount(local, weights=y * c, minlength=m) for c in coefs]


def _sort_by_effect(local, m):
    """The stable permutation of the rows that sorts them by effect (``local``, in ``0..m-1``): a radix
    sort of 16-bit keys where the effects fit them, else the counting sort of scipy's CSR-to-CSC
    conversion (one entry per row, in the column of its effect). Both are linear; numpy's stable sort
    of 64-bit keys is a merge sort, 7 times the radix sort's time on a million rows."""
    if local.size and local.min() < 0:  # (not an effect: sorted first, as by numpy's stable sort)
        return np.argsort(local, kind="stable")
    if m <= np.iinfo(np.uint16).max + 1:
        return np.argsort(local.astype(np.uint16), kind="stable")
    n = local.size
    return sp.csr_matrix((np.arange(n), local, np.arange(n + 1)), shape=(n, m)).tocsc().data


def _adaptive_rule(family, y, trials, a, z, local, group, u0, sc, prec, x, logw, rows=None, base=None, unit_z=False):
    r"""The Gauss–Hermite rule of each effect j centred at ``u0[j]`` with scale ``sc[j]``: nodes
    :math:`U_{jk} = u_{0j} + sc_j x_k`, the linear predictors :math:`a_i + z_i U_{jk}` of its rows
    (``local`` maps a row to its effect, ``group`` sums rows into effects; ``y`` and ``trials`` as
    columns), :math:`\log I_j` (without the prior's and the rule's constants) and the tilted
    weights :math:`\pi_{jk}` (rows summing to 1). ``logw`` are the rule's log weights plus
    :math:`x_k^2`. Returns ``(U, eta, log_I, pi, S, W)`` with the rows' scores and weights at the
    nodes (from the same pass as the log-likelihood, :meth:`~mglm_core.families.Family.row_terms`).
    With ``rows`` (:class:`EffectRows`, the rows sorted by effect) and ``base`` (each effect's sum of
    :meth:`~mglm_core.families.Family.log_base_measure`), the log-likelihood's sums come from
    :math:`e^{\eta}` (:meth:`~mglm_core.families.Family.effect_terms`) where the family allows and
    :math:`|\eta|` is within :data:`_FACTOR_ETA_MAX`, its linear part as
    :math:`\sum_i y_i c_i + x_k \sum_i y_i \alpha_i` (:math:`\eta_{ik} = c_i + \alpha_i x_k`), and
    ``eta`` is then a function that computes it (``unit_z``: every :math:`z_i` is 1)."""
    U = u0[:, None] + sc[:, None] * x
    lw = None
    if rows is not None:
        c = a + z * u0[local]
        alpha = z * sc[local]
        bound = float(np.max(np.abs(c)) + np.max(np.abs(alpha)) * np.max(np.abs(x)))
        if bound <= _FACTOR_ETA_MAX:
            # with z = 1 on every row (intercepts) alpha is each effect's scale: e^eta_ik = e^c_i e^(sc_j x_k),
            # exponentials of rows + effects x nodes
            if unit_z and rows.equal:  # (each effect's rows a run of equal length: no gather of effects x nodes)
                E = (np.exp(sc[:, None] * x)[:, None, :]
                     * np.exp(c).reshape(rows.m, rows.most)[:, :, None]).reshape(c.size, x.size)
            elif unit_z:
                E = np.take(np.exp(sc[:, None] * x), local, axis=0) * np.exp(c)[:, None]
            else:
                E = np.exp(c[:, None] + alpha[:, None] * x)
            terms = family.effect_terms(E, y, trials, rows, bound)
            if terms is not None:
                N, S, W = terms
                sc_y, sa_y = _effect_sums(local, u0.size, y.ravel(), c, alpha)
                lw = N + (sc_y + base)[:, None] + sa_y[:, None] * x - 0.5 * prec * U**2 + logw
                eta = functools.partial(_linear_nodes, c, (alpha,), (x,))
    if lw is None:
        eta = a[:, None] + z[:, None] * np.take(U, local, axis=0)
        ll, S, W = family.row_terms(y, eta, trials)
        lw = group @ ll - 0.5 * prec * U**2 + logw
    log_I, pi = _tilted_weights(lw)
    return U, eta, log_I, pi, S, W


def _widening_series(A, b):
    r"""The symmetric :math:`\Delta` of :meth:`NestedMarginal.covariance_factor` from the tensors ``A`` (``A[m]``:
    the derivative of the Hessian of F along :math:`z_m`) and ``b`` (:math:`\sum_m b_{\cdot\cdot mm}`):
    :math:`\tfrac12 (b + \sum_m t_m A_m + \sum_{lm} A_{m\cdot l} A_{m\cdot l}^\top)`, :math:`t_i = \sum_j a_{ijj}`."""
    t = np.einsum("jij->i", A)
    delta = 0.5 * (b + np.einsum("m,mij->ij", t, A) + np.einsum("mil,mjl->ij", A, A))
    return 0.5 * (delta + delta.T)


def _node_moments(pi, U, third=True):
    r"""``(mu, centred, tau, kappa)``: the effects' means, their nodes less the means, variances and (with ``third``,
    else None) third central moments under a rule's tilted weights ``pi`` at its nodes ``U`` (effects x nodes)."""
    mu = np.einsum("jk,jk->j", pi, U)
    centred = U - mu[:, None]
    tau = np.maximum(np.einsum("jk,jk->j", pi, centred**2), 0.0)
    return mu, centred, tau, (np.einsum("jk,jk->j", pi, centred**3) if third else None)


def _linear_nodes(c, coefs, nodes):
    r""":math:`\eta_{ik} = c_i + \sum_t \alpha_{ti} x_{tk}` (rows x nodes)."""
    eta = np.repeat(c[:, None], nodes[0].size, axis=1)
    for alpha, x in zip(coefs, nodes):
        eta += alpha[:, None] * x
    return eta


def _curvature(family, y, eta, trials, z, local, m, sd):
    r""":math:`c_j = \sum_{i \in j} z_i^2 w_i + 1/sd^2`: each effect's conditional curvature given the
    rest (``local`` maps a row to its effect, 0..m-1)."""
    _, w = family.score_weight(y, eta, trials)
    return np.bincount(local, weights=z**2 * w, minlength=m) + 1.0 / sd**2


def _nonzero_pairs(Z, a, b):
    """For the pairs of rows ``(a[t], b[t])`` of the CSR matrix ``Z``, every pair of their nonzeros:
    ``(t, entry of row a[t], entry of row b[t])`` (positions among Z's entries)."""
    n_nz = np.diff(Z.indptr)
    na, nb = n_nz[a], n_nz[b]
    cnt = na * nb
    pair = np.repeat(np.arange(a.size), cnt)
    off = np.arange(pair.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    return pair, Z.indptr[a][pair] + off // nb[pair], Z.indptr[b][pair] + off % nb[pair]


def _entries(model):
    """The row and the component of each entry of ``exog_vc`` (canonical CSR: rows in order)."""
    Z = model.exog_vc
    return np.repeat(np.arange(Z.shape[0], dtype=np.int64), np.diff(Z.indptr)), model.ident[Z.indices]


def _one_per_row(row_of, comp, c):
    """Whether component ``c`` has at most one entry per row (of :func:`_entries`): two in a row
    repeat that row among its entries' sorted rows."""
    return not np.any(np.diff(row_of[comp == c]) == 0)


def _bordered(A, B, C):
    """The dense symmetric matrix ``[[A, B], [B^T, C]]`` (np.block's checks cost ten times the copy)."""
    n, p = B.shape
    full = np.empty((n + p, n + p))
    full[:n, :n], full[:n, n:], full[n:, :n], full[n:, n:] = A, B, B.T, C
    return full


def _grown_count(s, base, step):
    r"""Gauss–Hermite nodes for a component of scale ``s`` (its SD times its largest coefficient):
    ``base`` up to 4, beyond :math:`\mathrm{step}\,\lceil 3 (s/4)^2 \rceil` (at most :data:`NODES_MAX`), so that
    the nodes stay as far apart, relative to the likelihood's turn, as at 4."""
    return base if not s > 4.0 else int(min(NODES_MAX, step * np.ceil(3.0 * (s / 4.0) ** 2)))


def _inner_count(s):
    r""":class:`ObservationMarginal`'s Gauss–Hermite nodes at scale ``s``: :data:`INNER_NODES` up to 1, beyond
    :math:`\lceil \mathrm{INNER\_NODES}\, s^2 \rceil` (at most :data:`NODES_MAX`): the count grows with the scale
    in small steps, so that the rule's error stays small on both sides of each step (the log density sums it over
    every row)."""
    return INNER_NODES if not s > 1.0 else int(min(NODES_MAX, np.ceil(INNER_NODES * s * s)))


@functools.lru_cache(maxsize=64)
def _hermite_log_rule(nodes):
    r"""The physicists' Gauss-Hermite rule (weight :math:`e^{-x^2}`) for the adaptive quadrature:
    nodes and :math:`\log w + x^2` (read-only; computed once per size: numpy's ``hermgauss`` takes
    0.2 ms, a thirtieth of a small fit)."""
    x, w = np.polynomial.hermite.hermgauss(nodes)
    logw = np.log(w) + x**2
    x.flags.writeable = logw.flags.writeable = False
    return x, logw


class IndependentEffects:
    """The rows of one conditionally independent component and the Gauss–Hermite rule.

    Parameters
    ----------
    model : BayesMixedGLM
    component : int
        A component with at most one nonzero per row of ``exog_vc`` (see :meth:`find`).
    nodes : int
        Gauss–Hermite nodes per effect.
    by_effect : bool
        Sort the rows effect by effect (:class:`EffectRows`), as the exact integration
        (:meth:`rule`, :class:`NestedMarginal`) needs; without, the rows stay in the data's order, which
        is all the checks (:meth:`left_out_pairs`, :meth:`laplace_error`, :meth:`conditional_shift`,
        :meth:`boundary_effects`: sums over each effect's rows) need. A million rows of one factor:
        the sort and its gathers took 0.1 s, as much as four row passes.
    """

    def __init__(self, model, component, nodes=NODES, by_effect=True):
        Z = model.exog_vc  # canonical CSR without explicit zeros (checks.as_exog_vc)
        cols = np.flatnonzero(model.ident == component)
        row_of, comp = _entries(model)
        keep = comp == component
        local = np.empty(model.k_vc, dtype=np.int64)
        local[cols] = np.arange(cols.size)
        self.component = int(component)
        self.m = cols.size  # effects
        self.local = local[Z.indices[keep]]  # 0..m-1
        self.rows = row_of[keep]
        self.z = Z.data[keep].astype(float)
        # every row of the data, in its order (one entry per row): the rows' arrays are the model's
        self.every_row = not by_effect and self.rows.size == model.endog.size
        if by_effect:  # (effect by effect: EffectRows)
            order = _sort_by_effect(self.local, self.m)
            self.rows, self.local, self.z = self.rows[order], self.local[order], self.z[order]
        self.effect_rows = EffectRows(self.local, self.m) if by_effect else None
        self.cols = cols
        self.y = model.endog[self.in_data]
        self.trials = None if model.trials is None else model.trials[self.in_data]
        self.x, self.logw = _hermite_log_rule(nodes)
        self._alike = None  # each row's class of identical design rows within its effect (left_out_pairs)
        self.base = np.bincount(self.local, weights=model.family.log_base_measure(self.y, self.trials),
                                minlength=self.m)  # each effect's sum of the rows' log base measure
        self.unit_z = bool(np.all(self.z == 1.0))
        #: Poisson effects with coefficient 1 on every row, sorted by effect: an effect's rows enter its
        #: integral through :math:`\sum_i y_i` and :math:`\sum_i e^{a_i}` (:meth:`modes`, :meth:`rule`)
        self.separable = bool(self.unit_z and model.family.exp_linear and by_effect and self.m)
        self.y_sum = np.bincount(self.local, weights=self.y, minlength=self.m) if self.separable else None

    @property
    def in_data(self):
        """The index of the rows in the data's row arrays (all of them, as a view, where :attr:`every_row`)."""
        return slice(None) if self.every_row else self.rows

    def by_effect(self, model):
        """This component's :class:`IndependentEffects` with the rows sorted by effect (itself if they are)."""
        return self if self.effect_rows is not None else type(self)(model, self.component, self.x.size)

    #: Coordinates per effect (:class:`EffectBlocks`: one per component of the block).
    d = 1

    @property
    def components(self):
        """The components integrated exactly: this one."""
        return (self.component,)

    def precision(self, vcp):
        """The effects' prior precision :math:`e^{-2\\theta_P}` at log-SDs ``vcp``."""
        return np.exp(-2.0 * vcp[self.component])

    def log_normaliser(self, prec):
        r""":math:`-\tfrac m2 \log(2\pi/prec)`: the effects' prior's normalising constants."""
        return -0.5 * self.m * np.log(2.0 * np.pi * (1.0 / prec))

    def hermite_rule(self, sd):
        """The rule for SDs up to ``sd`` (a float, or the SD of every component):
        ``(nodes, log weights + nodes**2, nodes per axis)`` (:meth:`NestedMarginal.use_nodes`)."""
        sd = float(sd) if np.ndim(sd) == 0 else float(np.asarray(sd)[self.component])
        s = sd * float(np.max(np.abs(self.z), initial=1.0))
        k = NODES_NARROW if not s > NARROW_SD else _grown_count(s, NODES, 8)
        return _hermite_log_rule(k) + (k,)

    def modes(self, family, a, prec, u):
        """Modes and curvatures of the effects' one-dimensional integrands given the rows' offsets
        ``a``, from ``u`` (vectorised Newton)."""
        if self.separable and family.exp_linear:
            return self._separable_modes(a, prec, u)
        m = self.m
        u = u.copy()
        for _ in range(50):
            s, w = family.score_weight(self.y, a + self.z * u[self.local], self.trials)
            g = np.bincount(self.local, weights=self.z * s, minlength=m) - prec * u
            c = np.bincount(self.local, weights=self.z**2 * w, minlength=m) + prec
            step = np.minimum(np.maximum(g / c, -2.0), 2.0)  # (np.clip: twice the overhead)
            u += step
            if np.abs(step).max() < _MODE_STEP:  # (the curvatures before this step: it moved u by less than that)
                return u, c
        _, w = family.score_weight(self.y, a + self.z * u[self.local], self.trials)
        return u, np.bincount(self.local, weights=self.z**2 * w, minlength=m) + prec

    def _log_sum_exp(self, a):
        r""":math:`\log \sum_{i \in j} e^{a_i}` for every effect j (:math:`-\infty` without rows)."""
        top = self.effect_rows.max(a)
        with np.errstate(divide="ignore", invalid="ignore"):
            return top + np.log(np.bincount(self.local, weights=np.exp(a - top[self.local]), minlength=self.m))

    def _separable_modes(self, a, prec, u):
        r""":meth:`modes` for :attr:`separable` effects: :math:`h_j'(u) = Y_j - e^{u + L_j} - prec\,u` with
        :math:`Y_j = \sum_{i \in j} y_i`, :math:`L_j = \log \sum_{i \in j} e^{a_i}` (one pass over the rows,
        then Newton over the effects alone)."""
        lse = self._log_sum_exp(a)
        u = u.copy()
        for _ in range(50):
            e = np.exp(u + lse)
            c = e + prec
            step = np.minimum(np.maximum((self.y_sum - e - prec * u) / c, -2.0), 2.0)
            u += step
            if np.abs(step).max() < _MODE_STEP:
                return u, c
        return u, np.exp(u + lse) + prec

    def rule(self, family, y, trials, a, group, u0, c, prec, x, logw):
        r"""The adaptive rule at the modes ``u0`` with curvatures ``c`` (:func:`_adaptive_rule`):
        ``(U, log_scale, log_I, pi, S, W, eta)`` with :math:`\log sc_j`, the log of the scale of
        the effects' nodes."""
        sc = np.sqrt(2.0 / c)
        out = self._separable_rule(a, u0, sc, prec, x, logw) if self.separable and family.exp_linear else None
        if out is None:
            out = _adaptive_rule(family, y, trials, a, self.z, self.local, group, u0, sc, prec, x, logw,
                                 self.effect_rows, self.base, self.unit_z)
        U, eta, log_I, pi, S, W = out
        return U, np.log(sc), log_I, pi, S, W, eta

    def _separable_rule(self, a, u0, sc, prec, x, logw):
        r""":func:`_adaptive_rule` for :attr:`separable` effects: with :math:`c_i = a_i + u_{0j}` and
        :math:`Q_{jk} = e^{sc_j x_k}`, :math:`e^{\eta_{ik}} = e^{c_i} Q_{jk}`, so
        :math:`\log I_j` takes :math:`\sum_{i \in j} e^{c_i}` and the scores and weights are
        :class:`SeparableRows`. None where :math:`|\eta|` may exceed :data:`_FACTOR_ETA_MAX`."""
        local = self.local
        c = a + u0[local]
        if float(np.max(np.abs(c)) + np.max(sc) * np.max(np.abs(x))) > _FACTOR_ETA_MAX:
            return None
        step = sc[:, None] * x
        U = step + u0[:, None]
        Q = np.exp(step)
        ec = np.exp(c)
        lin = _effect_sums(local, self.m, self.y, c)[0] + self.base
        # (in place: effects x nodes temporaries are most of this rule's time)
        lw = np.multiply(U, U, out=step)
        lw *= -0.5 * prec
        lw -= np.bincount(local, weights=ec, minlength=self.m)[:, None] * Q
        lw += (self.y_sum * sc)[:, None] * x
        lw += lin[:, None]
        lw += logw
        log_I, pi = _tilted_weights(lw)
        eta = functools.partial(_linear_nodes, c, (sc[local],), (x,))
        return U, eta, log_I, pi, SeparableRows(self.y, -ec, Q, local), SeparableRows(0.0, ec, Q, local)

    @classmethod
    def find(cls, model, nodes=NODES, eta=None, vcp=None, by_effect=True):
        """Among the components with at most one nonzero per row (counting the nonzeros of each
        component in each row of ``exog_vc``; None if there is none): given a conditional mode
        (linear predictor ``eta`` at log-SDs ``vcp``), the one whose effects' Laplace approximations
        are the least accurate (:meth:`laplace_error`: the one to integrate exactly); otherwise the
        one with the most effects. ``by_effect`` as in the class."""
        if not model.k_vc:
            return None
        k = model.k_vcp
        row, comp = _entries(model)
        once = np.array([_one_per_row(row, comp, c) for c in range(k)], dtype=bool)
        sizes = np.bincount(model.ident, minlength=k)
        ok = np.flatnonzero(once & (sizes > 0))
        if ok.size == 0:
            return None
        if eta is None or ok.size == 1:
            return cls(model, int(ok[np.argmax(sizes[ok])]), nodes, by_effect)
        found = [cls(model, int(c), nodes, by_effect) for c in ok]
        errors = [ie.laplace_error(model, eta, np.exp(vcp[ie.component])) for ie in found]
        return found[int(np.argmax(errors))]

    def laplace_error(self, model, eta, sd):
        r"""How far the effects' one-dimensional Laplace approximations are from their integrals, at a
        conditional mode (linear predictor ``eta``, SD ``sd``): :math:`\sum_j |\epsilon_j|` with
        :math:`\epsilon_j = h_j^{(4)} / (8 c_j^2) + 5\,(h_j^{(3)})^2 / (24\, c_j^3)` the leading
        correction of :math:`\log I_j` (module docstring; :math:`h_j^{(3)} = -\sum_i w_i' z_i^3`,
        :math:`h_j^{(4)} = -\sum_i w_i'' z_i^4`). Large for effects with few binary or low-count rows
        and a large SD: of two nested factors, communities with three children and an SD of 2 (7.1)
        rather than their mothers with one or two children and an SD of 0.5 (2.0)."""
        fam, m = model.family, self.m
        er = eta[self.in_data]
        c = _curvature(fam, self.y, er, self.trials, self.z, self.local, m, sd)
        h3 = np.bincount(self.local, weights=fam.weight_derivative(self.y, er, self.trials) * self.z**3,
                         minlength=m)
        h4 = np.bincount(self.local, weights=fam.weight_second_derivative(self.y, er, self.trials) * self.z**4,
                         minlength=m)
        return float(np.sum(np.abs(-h4 / (8.0 * c**2) + 5.0 * h3**2 / (24.0 * c**3))))

    def boundary_effects(self, model):
        """The effects all of whose outcomes sit at one boundary of the family's support: all zeros,
        or (binomial) all at the trials: complete separation, a one-sided conditional posterior."""
        m = self.m
        at_zero = np.bincount(self.local, weights=(self.y > 0).astype(float), minlength=m) == 0
        if model.family.name != "binomial":
            return np.flatnonzero(at_zero)
        n = 1.0 if self.trials is None else self.trials
        at_top = np.bincount(self.local, weights=(self.y < n).astype(float), minlength=m) == 0
        return np.flatnonzero(at_zero | at_top)

    def skewness(self, model, eta, sd):
        r"""Each effect's conditional skewness given the rest at a conditional mode (linear predictor ``eta``,
        SD ``sd``) in its Laplace approximation's leading term, :math:`|h_j^{(3)}| / c_j^{3/2}` with
        :math:`h_j^{(3)} = -\sum_{i \in j} w_i' z_i^3` and :math:`c_j = \sum_{i \in j} z_i^2 w_i + 1/sd^2`: 0 for a
        Gaussian conditional posterior; 0.4 for a group of ten binary rows, all ones, with an SD of 1.5."""
        fam, er = model.family, eta[self.in_data]
        c = _curvature(fam, self.y, er, self.trials, self.z, self.local, self.m, sd)
        h3 = np.bincount(self.local, weights=fam.weight_derivative(self.y, er, self.trials) * self.z**3,
                         minlength=self.m)
        return np.abs(h3) / c**1.5

    def tilted_moments(self, model, eta, u, sd, effects, derivatives=True):
        r"""Exact conditional moments of some effects given the rest, by adaptive Gauss–Hermite quadrature.

        Given everything else at ``(eta, u)`` (the linear predictor and the random effects of a conditional
        solution, the component's at positions ``self.cols``), effect j has the one-dimensional posterior
        :math:`p_j(u) \propto \exp h_j(u)` (module docstring), whose rows' offsets are
        :math:`a_i = \eta_i - z_i u_j`. For the effects ``effects`` (local indices) returns
        ``(mu, tau, kappa, s, rows, local, c, c2)``: the mean, variance and third central moment of :math:`p_j`,
        the scale :math:`c_j^{-1/2}` of its Laplace approximation, the effects' rows (indices into the data's rows)
        with each one's effect (its position in ``effects``) and, for every such row i, the derivatives of the effect's mean and variance in its
        offset, :math:`c_i = \partial\mu_j/\partial a_i = \mathrm{Cov}_j(u, s_i)` and
        :math:`c2_i = \partial\tau_j/\partial a_i = \mathrm{Cov}_j((u - \mu_j)^2, s_i)` (:math:`s_i` the row's
        score at :math:`a_i + z_i u`). Costs the effects' rows times the rule's nodes (three times that with
        ``derivatives``; without, ``kappa``, ``c`` and ``c2`` are None)."""
        effects = np.asarray(effects, dtype=np.int64)
        sel, local = self.rows_of(effects)
        z, y = self.z[sel], self.y[sel]
        trials = None if self.trials is None else self.trials[sel]
        fam = model.family
        rows = self.rows[sel]
        eta_r = eta[rows]
        s = 1.0 / np.sqrt(_curvature(fam, y, eta_r, trials, z, local, effects.size, sd))
        u0 = u[self.cols[effects]]
        group = sp.csr_matrix((np.ones(sel.size), (local, np.arange(sel.size))), shape=(effects.size, sel.size))
        U, _, _, pi, S, _ = _adaptive_rule(fam, y[:, None], None if trials is None else trials[:, None],
                                           eta_r - z * u0[local], z, local, group, u0, np.sqrt(2.0) * s,
                                           1.0 / sd**2, self.x, self.logw)
        mu, centred, tau, kappa = _node_moments(pi, U, third=derivatives)
        if not derivatives:
            return mu, tau, None, s, rows, local, None, None
        P = np.take(pi, local, axis=0)  # rows x nodes
        c = np.einsum("ik,ik->i", P * np.take(centred, local, axis=0), S)
        c2 = np.einsum("ik,ik->i", P * np.take(centred**2 - tau[:, None], local, axis=0), S)
        return mu, tau, kappa, s, rows, local, c, c2

    def rows_of(self, effects):
        """``(positions, local)``: where the rows of the effects ``effects`` (local indices) sit among this
        component's rows, in their order, and each one's effect as its position in ``effects``
        (:meth:`tilted_moments`' order)."""
        keep = np.zeros(self.m, dtype=bool)
        keep[effects] = True
        sel = np.flatnonzero(keep[self.local])
        pos = np.full(self.m, -1, dtype=np.int64)
        pos[effects] = np.arange(len(effects))
        return sel, pos[self.local[sel]]

    def conditional_shift(self, model, eta, u, sd, effects=None):
        r"""How far effects' exact conditional posteriors are from their Laplace Gaussians.

        Given everything else at a conditional mode (linear predictor ``eta``, the component's effects
        ``u`` at positions ``self.cols``, SD ``sd``), effect j has the one-dimensional posterior
        :math:`\exp h_j(u)` (module docstring); its Laplace approximation is
        :math:`N(\hat u_j, c_j^{-1})`. Returns, for the effects ``effects`` (local indices; default
        all), the exact (Gauss–Hermite) mean's distance from :math:`\hat u_j` in units of
        :math:`c_j^{-1/2}` and the exact SD in the same units: (0, 1) for a Gaussian posterior. A
        binary or zero-count effect whose rows are all at one boundary (separation) with a large SD is
        far from it. Costs the effects' rows times the nodes (:meth:`tilted_moments`).
        """
        effects = np.arange(self.m) if effects is None else np.asarray(effects, dtype=np.int64)
        mu, tau, _, s, *_ = self.tilted_moments(model, eta, u, sd, effects, derivatives=False)
        return np.abs(mu - u[self.cols[effects]]) / s, np.sqrt(tau) / s

    def left_out_pairs(self, model, eta, sd):
        r"""The part of the second-order Laplace correction that the joint correction leaves out for
        this component's effects, at a conditional mode (linear predictor ``eta``, SD ``sd``).

        For one effect j with rows i, the correction of its one-dimensional integral has the term
        :math:`\tfrac1{12}\sum_{i,i'} w_i' w_{i'}' v_{ii'}^3` over *all pairs* of its rows
        (:math:`v_{ii'} = z_i z_{i'}/c_j` given everything else), while the joint correction
        (:meth:`~mglm_core.nested._Conditional.second_order`) keeps the pairs of identical design
        rows only. The pairs left out,

        .. math:: \tfrac1{12}\sum_j\Big[\big(\textstyle\sum_{i\in j} q_i\big)^2
                   - \sum_{\text{rows alike}}\big(\textstyle\sum q_i\big)^2\Big],\qquad
                   q_i = w_i' z_i^3 / c_j^{3/2},

        are small where effects are well informed; with a few binary or low-count rows per effect
        and a large SD they are not, and the series is then unreliable (binary groups of 4 rows with
        SD 3: the corrected Laplace density put the log-SD 0.18 posterior SDs low).
        """
        m = self.m
        fam = model.family
        score, w = fam.score_weight(self.y, eta[self.in_data], self.trials)
        w1 = fam.weight_derivatives(self.y, score, w, self.trials)[0]  # (from the same pass: no second exp)
        c = np.bincount(self.local, weights=w if self.unit_z else self.z**2 * w, minlength=m) + 1.0 / sd**2
        q = (w1 if self.unit_z else w1 * self.z**3) * (c**-1.5)[self.local]
        if self._alike is None:  # computed once: rows alike have the same z_i, so the same effect
            self._alike = model.rows.row_patterns()[0][self.in_data]
        return (float(np.sum(np.bincount(self.local, weights=q, minlength=m) ** 2))
                - float(np.sum(np.bincount(self._alike, weights=q) ** 2))) / 12.0


@functools.lru_cache(maxsize=64)
def _tensor_log_rule(nodes, d, prune=_PRUNE):
    r"""The product of ``d`` :func:`_hermite_log_rule` of ``nodes`` nodes (an int, or a tuple of ``d``
    counts: one per axis), without the nodes whose weight is below :math:`e^{-\mathrm{prune}}` of the
    largest (a Gaussian integrand loses less than their count times that): nodes (N x d) and
    :math:`\log w + |x|^2` (read-only)."""
    counts = (nodes,) * d if np.ndim(nodes) == 0 else tuple(nodes)
    rules = [_hermite_log_rule(k) for k in counts]
    grids = np.meshgrid(*[np.arange(k) for k in counts], indexing="ij")
    idx = np.stack([g.ravel() for g in grids], axis=1)
    total = sum(lw[idx[:, t]] - x[idx[:, t]] ** 2 for t, (x, lw) in enumerate(rules))
    keep = total >= total.max() - prune
    X = np.stack([x[idx[keep, t]] for t, (x, _) in enumerate(rules)], axis=1)
    out = total[keep] + np.sum(X**2, axis=1)
    X.flags.writeable = out.flags.writeable = False
    return X, out


class EffectBlocks:
    r"""The effects of two components that share their rows by level of one grouping factor
    (intercepts and slopes of g: ``(1 | g) + (0 + x | g)``), integrated as one block per level.

    Block :math:`j` holds one effect of each component, :math:`u_j \in \mathbb R^2`; row :math:`i` of
    block :math:`j` has the coefficients :math:`z_i \in \mathbb R^2` (its entries of ``exog_vc`` in
    those columns), no other row shares them, and given the rest the blocks are independent:

    .. math::

        I_j(a) = \int \exp\Big(\sum_{i \in R_j} \ell_i(a_i + z_i^\top u)
                 - \tfrac12 \sum_t prec_t\, u_t^2\Big)\,du
                 \prod_t \sqrt{prec_t / 2\pi}.

    The adaptive rule is the product Gauss–Hermite rule (pruned, :func:`_tensor_log_rule`) mapped
    through the mode :math:`\hat u_j` and the Cholesky factor of the curvature,
    :math:`C_j = \sum_{i \in R_j} w_i z_i z_i^\top + \mathrm{diag}(prec) = L_j L_j^\top`:
    :math:`u = \hat u_j + \sqrt2\,L_j^{-\top} x` (exact for a Gaussian integrand). With a few binary
    rows per level, intercepts and slopes are both far from Gaussian given the rest, and integrating
    one of them leaves the other to a Laplace approximation over three rows (300 levels of three
    binary rows: the slopes' log-SD 0.35 posterior SDs low). Same interface as
    :class:`IndependentEffects` for :class:`NestedMarginal`.

    Parameters
    ----------
    model : BayesMixedGLM
    components : (int, int)
        The components, each with at most one nonzero per row; the first names the blocks
        (:meth:`around` checks that they pair).
    nodes : int
        Gauss–Hermite nodes per axis.
    """

    #: Coordinates per block: intercept and slope (the closed-form 2 x 2 algebra of :meth:`modes` and :meth:`rule`).
    d = 2

    def __init__(self, model, components, nodes=NODES_BLOCK):
        Z = model.exog_vc  # canonical CSR without explicit zeros (checks.as_exog_vc)
        comps = [int(c) for c in components]
        row_of, comp = _entries(model)
        first = comp == comps[0]
        m = int(np.sum(model.ident == comps[0]))
        local0 = np.full(model.k_vc, -1, dtype=np.int64)
        local0[model.ident == comps[0]] = np.arange(m)
        block_of_row = np.full(Z.shape[0], -1, dtype=np.int64)
        block_of_row[row_of[first]] = local0[Z.indices[first]]
        in_set = np.isin(comp, comps)
        self.rows = np.unique(row_of[in_set])
        pos = np.full(Z.shape[0], -1, dtype=np.int64)
        pos[self.rows] = np.arange(self.rows.size)
        self.z = np.zeros((self.rows.size, self.d))
        self.cols = np.empty((m, self.d), dtype=np.int64)
        for t, c in enumerate(comps):
            sel = comp == c
            self.z[pos[row_of[sel]], t] = Z.data[sel]
            self.cols[block_of_row[row_of[sel]], t] = Z.indices[sel]
        self.cols = self.cols.ravel()  # block by block, its components in order (the order of moments' means)
        order = _sort_by_effect(block_of_row[self.rows], m)  # (block by block: EffectRows)
        self.rows, self.z = self.rows[order], self.z[order]
        self.local = block_of_row[self.rows]
        self.component, self._components = comps[0], tuple(comps)
        self.m = m
        self.y = model.endog[self.rows]
        self.trials = None if model.trials is None else model.trials[self.rows]
        self.x, self.logw = _tensor_log_rule(nodes, self.d)
        self.effect_rows = EffectRows(self.local, m)
        self.base = np.bincount(self.local, weights=model.family.log_base_measure(self.y, self.trials),
                                minlength=m)  # each block's sum of the rows' log base measure
        self._axes = None  # (x, each axis's node values and every node's index into them, whether a full product)

    @classmethod
    def around(cls, model, ie, nodes=NODES_BLOCK, max_work=BLOCK_WORK_MAX):
        """The blocks of ``ie``'s component and the first other component that pairs with it: at most
        one nonzero per row, only in rows of ``ie``'s effects, and its effects one to one with
        ``ie``'s (each in the rows of one of them; a row of ``ie`` may lack it: x = 0 there). None if
        no component pairs, or if the rows times the rule's nodes exceed ``max_work`` (memory:
        rows x nodes arrays)."""
        Z, ident = model.exog_vc, model.ident
        row_of, comp = _entries(model)
        c0 = ie.component
        col0 = np.full(Z.shape[0], -1, dtype=np.int64)
        col0[row_of[comp == c0]] = Z.indices[comp == c0]
        n_nodes = _tensor_log_rule(nodes, 2)[1].size
        for c in range(model.k_vcp):
            if c == c0 or np.sum(ident == c) != ie.m:
                continue
            if not _one_per_row(row_of, comp, c):
                continue
            sel = comp == c
            anchor = col0[row_of[sel]]
            if anchor.size == 0 or np.any(anchor < 0):  # a row of c without an effect of ie's component
                continue
            cols = Z.indices[sel].astype(np.int64)
            pairs = np.unique(cols * Z.shape[1] + anchor)  # the distinct (effect, anchor) pairs, as one key
            # one to one, and every effect of either component with rows
            if not (pairs.size == ie.m == np.unique(pairs // Z.shape[1]).size
                    == np.unique(pairs % Z.shape[1]).size):
                continue
            if ie.rows.size * n_nodes > max_work:
                return None
            return cls(model, (c0, c), nodes)
        return None

    @property
    def components(self):
        """The components integrated exactly, the blocks' first."""
        return self._components

    def precision(self, vcp):
        """The prior precisions of the block's coordinates at log-SDs ``vcp`` (d,)."""
        return np.exp(-2.0 * np.asarray(vcp, dtype=float)[list(self._components)])

    def log_normaliser(self, prec):
        r""":math:`-\tfrac m2 \sum_t \log(2\pi/prec_t)`."""
        return -0.5 * self.m * float(np.sum(np.log(2.0 * np.pi / prec)))

    def hermite_rule(self, sd):
        """As :meth:`IndependentEffects.hermite_rule`, per axis, each by its component's SD times its
        coefficients' root mean square (``sd`` a float, or the SD of every component):
        :data:`NODES_BLOCK` up to 2, 10 up to 4, growing as its square beyond (at most
        :data:`NODES_BLOCK_MAX`, and at most :data:`BLOCK_WORK_MAX` rows times nodes; the returned count
        is the larger axis's). Counted for the larger scale on both axes, the 20 accuracy cases with slopes
        had the same means and SDs to 0.001 reference SDs, at up to 1.4 times the nodes (binary slopes
        crossed, scales 1.99 and 2.16: 100 nodes instead of 80).
        Binary intercepts with SD 5 and slopes in groups of four rows: 14 nodes per axis put the
        Intercept's SD 5 % off the converged value, 18 (the rule there) 1.8 %, 24 and more within
        0.4 %; with SDs up to 4, 10 nodes are within 0.5 % of 24 (the slopes' largest coefficient,
        3.5, does not matter: the rows pin the slope, unlike the intercept of a group whose rows
        saturate). Growing as fast as 24 nodes at SD 5 put the uncentred slopes' fit at 0.95 s
        instead of 0.55 s for the same means and SDs (to 0.001 SD). Up to SD 2 (100 groups of four
        binary rows), 8 nodes put the conditional means and SDs within 0.7 % of a conditional SD of
        24 nodes' (10: 0.15 %), and moved the accuracy cases with blocks by at most 0.009 posterior
        SDs, for 64 nodes a block instead of 100 (15-25 % of those fits' time); at SDs 2.7-4 they
        were 3.5-9 % off, so the rule keeps 10 there."""
        sd = (np.full(self.d, float(sd)) if np.ndim(sd) == 0
              else np.asarray(sd, dtype=float)[list(self._components)])
        ks = [NODES_BLOCK if not s > 2.0 else _NODES_BLOCK_4 if not s > 4.0
              else int(min(NODES_BLOCK_MAX, 2 * np.ceil(_NODES_BLOCK_4 / 2 * (s / 4.0) ** 2)))
              for s in sd * np.sqrt(np.mean(self.z**2, axis=0))]  # (each axis by its own scale)
        while max(ks) > NODES_BLOCK and self.rows.size * _tensor_log_rule(tuple(ks), self.d)[1].size > BLOCK_WORK_MAX:
            ks[int(np.argmax(ks))] -= 2  # memory: the rows x nodes arrays stay within what :meth:`around` allowed
        return _tensor_log_rule(tuple(ks), self.d) + (max(ks),)

    def _curvatures(self, w, prec):
        """The blocks' curvatures as ``(C00, C01, C11)`` (each m)."""
        loc, m = self.local, self.m
        z00, z01, z11 = self._z_products
        return (np.bincount(loc, weights=z00 * w, minlength=m) + prec[0],
                np.bincount(loc, weights=z01 * w, minlength=m),
                np.bincount(loc, weights=z11 * w, minlength=m) + prec[1])

    @functools.cached_property
    def _z_products(self):
        """The rows' :math:`z_0^2, z_0 z_1, z_1^2`."""
        z0, z1 = self.z[:, 0], self.z[:, 1]
        return z0**2, z0 * z1, z1**2

    def modes(self, family, a, prec, u):
        """Modes (m x 2) and curvatures ``(C00, C01, C11)`` of the blocks' integrands given the rows'
        offsets ``a``, from ``u`` (vectorised Newton, 2 x 2 systems in closed form, steps of at most
        2 per coordinate)."""
        loc, m = self.local, self.m
        z0, z1 = self.z[:, 0], self.z[:, 1]
        u0, u1 = u[:, 0].copy(), u[:, 1].copy()  # (each coordinate's vector: no strided gathers or stacking)
        for _ in range(50):
            s, w = family.score_weight(self.y, a + z0 * u0[loc] + z1 * u1[loc], self.trials)
            g0 = np.bincount(loc, weights=z0 * s, minlength=m) - prec[0] * u0
            g1 = np.bincount(loc, weights=z1 * s, minlength=m) - prec[1] * u1
            c00, c01, c11 = self._curvatures(w, prec)
            det = c00 * c11 - c01**2
            d0, d1 = (c11 * g0 - c01 * g1) / det, (c00 * g1 - c01 * g0) / det
            largest = np.maximum(np.abs(d0), np.abs(d1))
            top = float(largest.max())
            if top > 2.0:  # (steps of at most 2 per coordinate)
                f = np.minimum(1.0, 2.0 / np.maximum(largest, 1e-300))
                d0 *= f
                d1 *= f
                top = 2.0
            u0 += d0
            u1 += d1
            if top < _MODE_STEP:  # (the curvatures before this step: it moved u by less than _MODE_STEP)
                return np.column_stack([u0, u1]), (c00, c01, c11)
        _, w = family.score_weight(self.y, a + z0 * u0[loc] + z1 * u1[loc], self.trials)
        return np.column_stack([u0, u1]), self._curvatures(w, prec)

    def _node_axes(self, x):
        """``(v0, i0, v1, i1, full, features)``: the values of the product rule ``x``'s two coordinates, each
        node's index into them, whether the nodes are the full product in its order (the first
        coordinate's index major), and the nodes' monomials :math:`1, x_0, x_1, x_0^2, x_0 x_1, x_1^2`
        (6 x nodes)."""
        if self._axes is None or self._axes[0] is not x:
            v0, i0 = np.unique(x[:, 0], return_inverse=True)
            v1, i1 = np.unique(x[:, 1], return_inverse=True)
            full = (i0.size == v0.size * v1.size and np.array_equal(i0, np.repeat(np.arange(v0.size), v1.size))
                    and np.array_equal(i1, np.tile(np.arange(v1.size), v0.size)))
            x0, x1 = x[:, 0], x[:, 1]
            features = np.stack([np.ones_like(x0), x0, x1, x0**2, x0 * x1, x1**2])
            self._axes = (x, v0, i0, v1, i1, full, features)
        return self._axes[1:]

    def rule(self, family, y, trials, a, group, u0, C, prec, x, logw):
        r"""The adaptive rule at the modes ``u0`` with curvatures ``C``: nodes
        :math:`U_{jk} = \hat u_j + \sqrt2 L_j^{-\top} x_k` (m x nodes x 2, as a function that makes them:
        only the moments need them; :math:`L_j` the Cholesky factor of :math:`C_j`, in closed form),
        :math:`\log|\det \sqrt2 L_j^{-\top}|`, :math:`\log I_j` (without the prior's constants), the tilted
        weights, and the rows' scores, weights and linear predictors at the nodes (rows x nodes), as
        :meth:`IndependentEffects.rule`."""
        c00, c01, c11 = C
        l00 = np.sqrt(c00)
        l10 = c01 / l00
        l11 = np.sqrt(c11 - l10**2)
        r2 = np.sqrt(2.0)
        s00, s01, s11 = r2 / l00, -r2 * l10 / (l00 * l11), r2 / l11  # sqrt2 L^-T
        m0, m1 = u0[:, 0], u0[:, 1]
        # U_jk = (m0_j + s00_j x_k0 + s01_j x_k1, m1_j + s11_j x_k1), made only where asked for (moments)
        U = _BlockNodes(m0, m1, s00, s01, s11, x, self)
        loc, z0, z1 = self.local, self.z[:, 0], self.z[:, 1]
        # eta_ik = a_i + z_i . U_jk = c_i + alpha_i x_k0 + beta_i x_k1: a row constant plus the rows'
        # multiples of the two node coordinates
        c = a + z0 * m0[loc] + z1 * m1[loc]
        alpha, beta = z0 * s00[loc], z0 * s01[loc] + z1 * s11[loc]
        v0, i0, v1, i1, full, features = self._node_axes(x)
        bound = float(np.max(np.abs(c)) + np.max(np.abs(alpha)) * np.max(np.abs(v0))
                      + np.max(np.abs(beta)) * np.max(np.abs(v1)))
        terms, product = None, False
        if bound <= _FACTOR_ETA_MAX:
            # e^eta_ik = e^(c_i + alpha_i x_k0) e^(beta_i x_k1): exponentials of rows x (nodes per axis)
            # only, the product rule's nodes taking each axis's values in a few columns
            A = np.exp(c[:, None] + alpha[:, None] * v0)
            B = np.exp(beta[:, None] * v1)
            E = np.einsum("ij,ik->ijk", A, B).reshape(A.shape[0], -1) if full else A[:, i0] * B[:, i1]
            # (e^N as products where the family has them: no logarithm of effects x nodes, about 6 ns each)
            terms = family.effect_products(E, y, trials, self.effect_rows, bound)
            product = terms is not None
            if not product:
                terms = family.effect_terms(E, y, trials, self.effect_rows, bound)
        p0, p1 = prec
        if terms is not None:
            N, S, W = terms
            sc_y, sa_y, sb_y = _effect_sums(loc, self.m, y.ravel(), c, alpha, beta)
            # the rows' linear part and the prior -prec_t U_t^2 / 2 are quadratics in the node x_k: each
            # effect's six coefficients times the nodes' monomials
            coef = np.column_stack([sc_y + self.base - 0.5 * (p0 * m0**2 + p1 * m1**2),
                                    sa_y - p0 * m0 * s00, sb_y - p0 * m0 * s01 - p1 * m1 * s11,
                                    -0.5 * p0 * s00**2, -p0 * s00 * s01, -0.5 * (p0 * s01**2 + p1 * s11**2)])
            eta = functools.partial(_linear_nodes, c, (alpha, beta), (x[:, 0], x[:, 1]))
            # (with e^N as products, pi_jk from e^N_jk e^(the quadratic - its largest): the node where the
            # quadratic is largest keeps at least e^N >= e^-700 (effect_products), so no effect's total underflows)
            lw = coef @ features + logw if product else N + coef @ features + logw
        else:
            eta = _linear_nodes(c, (alpha, beta), (x[:, 0], x[:, 1]))
            ll, S, W = family.row_terms(y, eta, trials)
            Un = U()
            lw = group @ ll - 0.5 * (p0 * Un[:, :, 0]**2 + p1 * Un[:, :, 1]**2) + logw
        log_I, pi = _tilted_weights(lw, N if product else None)
        log_scale = np.log(2.0) - np.log(l00) - np.log(l11)
        return U, log_scale, log_I, pi, S, W, eta


class _BlockNodes:
    r"""The blocks' nodes :math:`U_{jk} = \hat u_j + S_j x_k` by their parts, :math:`S_j = \sqrt2 L_j^{-\top}`
    (upper triangular: ``s00, s01, s11``), the rule's nodes ``x`` and its :class:`EffectBlocks`: called, it
    makes them (effects x nodes x 2); :meth:`tilted` gives their tilted moments without them."""

    __slots__ = ("m0", "m1", "s00", "s01", "s11", "x", "blocks")

    def __init__(self, m0, m1, s00, s01, s11, x, blocks):
        self.m0, self.m1, self.s00, self.s01, self.s11, self.x, self.blocks = m0, m1, s00, s01, s11, x, blocks

    def __call__(self):
        x = self.x
        U = np.empty((self.m0.size, x.shape[0], 2))
        U[:, :, 0] = self.m0[:, None] + self.s00[:, None] * x[:, 0] + self.s01[:, None] * x[:, 1]
        U[:, :, 1] = self.m1[:, None] + self.s11[:, None] * x[:, 1]
        return U

    def tilted(self, pi, dev):
        r"""``(mu, tau, c)`` of :meth:`NestedMarginal._tilted` from the tilted moments of the rule's nodes,
        :math:`\mathrm{E}_j x` and :math:`\mathrm{Cov}_j x` (one product of ``pi`` with the nodes' monomials):
        :math:`\mu_j = \hat u_j + S_j \mathrm{E}_j x`, the variances the diagonal of
        :math:`S_j \mathrm{Cov}_j(x) S_j^\top`, and :math:`c_i = S_j \sum_k \pi_{jk}\, dev_{ik}\, x_k`
        (:math:`\sum_k \pi_{jk}\, dev_{ik} = 0`: the constant part drops)."""
        blocks = self.blocks
        s00, s01, s11 = self.s00, self.s01, self.s11
        M = pi @ blocks._node_axes(self.x)[5].T  # E x^a: 1, x0, x1, x0^2, x0 x1, x1^2 (effects x 6)
        e0, e1 = M[:, 1], M[:, 2]
        v00, v01, v11 = M[:, 3] - e0**2, M[:, 4] - e0 * e1, M[:, 5] - e1**2
        mu = np.column_stack([self.m0 + s00 * e0 + s01 * e1, self.m1 + s11 * e1])
        tau = np.column_stack([s00**2 * v00 + 2.0 * s00 * s01 * v01 + s01**2 * v11, s11**2 * v11])
        # sum_k pi_jk dev_ik x_k (rows x 2) as one product with the nodes (an effects x nodes x 2 array of
        # pi x, its last axis of two, cost twice the rest)
        AB = blocks.effect_rows.scaled(dev, pi) @ self.x
        loc = blocks.local
        c = np.column_stack([s00[loc] * AB[:, 0] + s01[loc] * AB[:, 1], s11[loc] * AB[:, 1]])
        return mu.ravel(), np.maximum(tau, 0.0).ravel(), c

    def third(self, pi):
        r"""The effects' third central moments under the tilted weights ``pi`` (effects * 2, in ``ie.cols``'
        order), from the nodes' central moments: with :math:`a = x_0 - \mathrm{E}_j x_0` and
        :math:`b = x_1 - \mathrm{E}_j x_1` (effects x nodes), :math:`u_0 - \mu_0 = s_{00} a + s_{01} b` and
        :math:`u_1 - \mu_1 = s_{11} b`."""
        x0, x1 = self.x[:, 0], self.x[:, 1]
        a = x0[None, :] - (pi @ x0)[:, None]
        b = x1[None, :] - (pi @ x1)[:, None]
        pa, pb = pi * a, pi * b
        aaa, aab = np.einsum("jk,jk->j", pa, a * a), np.einsum("jk,jk->j", pa, a * b)
        abb, bbb = np.einsum("jk,jk->j", pb, a * b), np.einsum("jk,jk->j", pb, b * b)
        s00, s01, s11 = self.s00, self.s01, self.s11
        k0 = s00**3 * aaa + 3.0 * s00**2 * s01 * aab + 3.0 * s00 * s01**2 * abb + s01**3 * bbb
        return np.column_stack([k0, s11**3 * bbb]).ravel()


#: :class:`ObservationMarginal`'s Gauss–Hermite nodes per row and outer node up to a scale (SD times coefficient)
#: of 1, beyond :math:`\lceil 12 s^2 \rceil` (:func:`_inner_count`). The log density sums the rule's error over
#: every row, so that a row's error must stay far below the 1e-4 of one integral: twelve nodes put a row's
#: log-likelihood within 2e-6 of a fine grid at scale 1 (Poisson, counts 0-10; 1e-7 binomial, 1e-8 Bernoulli),
#: but 5e-4 at scale 2 and 1e-2 at 4 (Poisson counts of 0 and 1, the errors of one sign). Twelve nodes up to
#: scale 2.5 (where :data:`SPLIT_SCALE` then was) put the observation-level log-SD's mean 0.11 posterior SDs high
#: and its SD 11 % long on 10,000 Bernoulli rows with their own effects (SD 1.5) in 100 groups (SD 1), and the
#: fixed effects' SDs 10 % short on 20,000 rows in 200 groups; :math:`12 s^2` nodes keep a row within 2e-6 from
#: scale 1 to 4 (Poisson; 1e-7 binomial) and those fits within 0.001 posterior SDs of twice the nodes.
INNER_NODES = 12
#: ... and the inner modes' Newton stops at a step below this (the rule's centre needs no more).
_INNER_STEP = 1e-4
#: An observation-level component is integrated inside the rule of the component it is nested in
#: (:meth:`NestedMarginal._observation_pair`) when that one's effects have at most this many rows on average:
#: there the Laplace approximation over them fails (binary pairs: fixed effects 0.25 posterior SDs off, their
#: SDs 20 % long; now within 0.04 and 3 %), beyond it holds (observation-level effects in groups of five
#: binomial rows or more: every bar held either way, at 6-9 times the time this way). Bernoulli rows take it in
#: groups of any size: one binary outcome hardly informs its own effect, and the Laplace approximation over such
#: effects fails in any group (20 groups of eight binary rows, SDs 1 and 1.5: the observation-level log-SD 1.16
#: posterior SDs low, the fixed effects' SDs 0.4 of NUTS's; within 0.1 and 0.95-0.98 this way, at 1.6 times the
#: time; 100 groups of 20 rows: the fixed effects' SDs a third of this way's, at 2.8 times its time).
OBSERVATION_ROWS_MAX = 4
#: The step, in posterior SDs, of the central differences of :meth:`NestedMarginal.observation_shift`.
_SHIFT_STEP = 1.0
#: The step, in posterior SDs, of the differences of the Hessian in :meth:`NestedMarginal.covariance_factor`
#: (0.25-1.5 agreed to 0.002 of the SD ratio on the cases of its docstring).
_VARIANCE_STEP = 0.5
#: :meth:`NestedMarginal.covariance_factor` is not computed where the Hessian at the centre is this far from
#: the one inverted (in the standardised coordinates: about 1e-11 on the accuracy cases): the second differences
#: of step :data:`_VARIANCE_STEP` would carry errors up to 8 times this (0.1 % of the variance at this value).
_HESSIAN_NOISE_MAX = 1e-4
#: :meth:`NestedMarginal.widening_estimate` is computed for at most this many fixed effects (its tensors
#: take :math:`p^3` per row; beyond, the factor itself is computed).
_ESTIMATE_FE_MAX = 12
#: Bernoulli rows whose observation-level effect has a scale (SD times coefficient) of at least this take
#: :class:`ObservationMarginal`'s split rule (Gauss–Laguerre, :data:`SPLIT_NODES` nodes: log-likelihoods within
#: 2e-8 of a fine grid at scale 1.5, 2e-10 at 1.75, 1e-11 from 2 up, their weights within 3e-7 at 1.5; Gauss–Hermite
#: needs 24 nodes for 2e-9 at 1.5 and 3e-6 at 2.5, and 192 for 2e-5 at 9). 24 Laguerre nodes were 5e-7 off at 1.5,
#: 2e-5 at 1.25; 32 take 0.96 of the time of 12 Gauss–Hermite nodes and their inner Newton.
SPLIT_SCALE = 1.5
SPLIT_NODES = 32
_SPLIT_LOG_MIN = -600.0  # (a row log-likelihood below this: Gauss–Hermite, the split's M_0 near underflow)
_SQRT_1_2PI = 1.0 / np.sqrt(2.0 * np.pi)


class ObservationMarginal:
    r"""The row likelihood with an observation-level effect integrated out: a family whose row
    :math:`i` has

    .. math::

        \ell^*_i(\eta) = \log \int p(y_i \mid \eta + z_i \sigma t)\, \phi(t)\, dt,

    with :math:`z_i` the row's coefficient of the observation-level component (one effect per row,
    SD :math:`\sigma`). Score and weight are the tilted moments, :math:`\ell^{*\prime} = \mathrm{E}\,s` and
    :math:`-\ell^{*\prime\prime} = \mathrm{E}\,w - \mathrm{Var}\,s` (:math:`s, w` the family's at the nodes).
    With it the component the rows are nested in is integrated exactly as well (:class:`NestedMarginal`
    with ``inner``): binary rows each with their own effect nested in groups of two, where the Laplace
    approximation over those groups put the fixed effects 0.25 posterior SDs off.

    Two rules:

    * adaptive Gauss–Hermite in :math:`t` for every element of :math:`\eta` (its integrand's mode by
      Newton, the nodes scaled by its curvature; :data:`INNER_NODES`, more beyond scale 1);
    * for Bernoulli rows whose scale :math:`s = \sigma |z_i|` is at least :data:`SPLIT_SCALE`, where the
      integrand is a Gaussian cut by a logistic step of width :math:`1/s` and Gauss–Hermite needs
      192 nodes for :math:`10^{-5}` (at :math:`s = 9`), the split :math:`\mathrm{expit}(v) = H(v) + r(v)`,
      :math:`r(v) = -\mathrm{sign}(v)\,\mathrm{expit}(-|v|)`: with :math:`a = -\eta/s`, the moments
      :math:`M_n = \int t^n \phi(t)\, \mathrm{expit}(\eta + s t)\, dt` are

      .. math::

          M_0 = \Phi(-a) + C_0,\quad M_1 = \phi(a) + C_1,\quad M_2 = \Phi(-a) + a\phi(a) + C_2,\quad
          C_n = \int_0^\infty \frac{e^{-w}}{1 + e^{-w}}\,\big(g_n(-w) - g_n(w)\big)\, dw,

      :math:`g_n(v) = t_v^n \phi(t_v)/s`, :math:`t_v = (v - \eta)/s`, by Gauss–Laguerre (:data:`SPLIT_NODES`
      nodes: within :math:`2\cdot10^{-8}` of a fine grid from :math:`s = 1.5` up); then
      :math:`\ell^* = \log M_0`, :math:`\ell^{*\prime} = M_1/(s M_0)`,
      :math:`\ell^{*\prime\prime} = (M_2 - M_0)/(s^2 M_0) - \ell^{*\prime 2}` (integration by parts), and
      :math:`y = 0` or :math:`z_i < 0` by reflection.

    Parameters
    ----------
    family : Family
    z : ndarray
        The rows' coefficients (the rows as the caller passes them, sorted as ``y``).
    sd : float
    """

    #: (a mixture over the observation-level effect: not :math:`y\eta - e^{\eta}`, whatever the family)
    exp_linear = False

    def __init__(self, family, z, sd):
        self.family, self.z, self.sd = family, np.asarray(z, dtype=float), float(sd)
        self.name = family.name
        scale = self.sd * float(np.max(np.abs(self.z), initial=1.0))
        self.x, self.logw = _hermite_log_rule(_inner_count(scale))
        self._modes = {}  # the last inner modes t by the shape of eta: the next call's Newton starts there
        self._last = None  # (eta, terms): the rule's evaluation at an optimum, asked again for moments
        #: the split rule for Bernoulli rows (the family is the binomial's and trials are None at the call)
        self.split = family.name == "binomial" and self.sd * float(np.min(np.abs(self.z), initial=np.inf)) >= SPLIT_SCALE
        #: the split rule's fallback where a row's likelihood underflows: far beyond the posterior, a coarse rule
        #: serves (every row takes it at such a call, so that the finer rule would multiply its work)
        self._fallback = _hermite_log_rule(_grown_count(scale, INNER_NODES, INNER_NODES)) if self.split else None

    def log_base_measure(self, y, trials):
        return self.family.log_base_measure(y, trials)

    def effect_terms(self, mu_exp, y, trials, rows, bound):
        return None

    def effect_products(self, mu_exp, y, trials, rows, bound):
        return None

    def _terms(self, y, eta, trials, moments=False):
        """``(log-likelihood, score, weight)`` of the rows at ``eta`` (rows, or rows x nodes with ``y`` and
        ``trials`` as columns), with ``moments`` also the tilted mean and variance of ``t`` and its covariance
        with the row's score."""
        last = self._last
        if last is not None and last[0].shape == np.shape(eta) and np.array_equal(last[0], eta):
            return last[1] if moments else last[1][:3]
        if self.split and trials is None:
            out = self._split_terms(y, eta)
            bad = ~(out[0] > _SPLIT_LOG_MIN)  # (far beyond the likelihood's turn: M_0 underflows)
            if np.any(bad):
                gh = self._hermite_terms(y, eta, trials, self._fallback)
                out = tuple(np.where(bad, g, o) for g, o in zip(gh, out))
        else:
            out = self._hermite_terms(y, eta, trials)
        self._last = (np.array(eta, dtype=float), out)
        return out if moments else out[:3]

    def _scaled_z(self, eta):
        r""":math:`\sigma z_i` shaped to broadcast against ``eta`` (rows, or rows x nodes)."""
        return self.sd * (self.z if np.ndim(eta) == 1 else self.z[:, None])

    def _split_terms(self, y, eta):
        """:meth:`_terms` for Bernoulli rows by the split rule (the class's notes)."""
        sz = self._scaled_z(eta)
        s = np.abs(sz)
        flip = np.where(np.asarray(y) > 0.5, 1.0, -1.0)  # y = 0: expit(-eta - s t), reflected
        e = flip * np.asarray(eta, dtype=float)
        w, f = _split_rule()
        a = -e / s
        J0 = _ndtr(-a)
        J1 = _phi(a)
        s_ = s[..., None]
        tp = (w - e[..., None]) / s_
        tm = (-w - e[..., None]) / s_
        gp = _phi(tp) / s_ * f
        gm = _phi(tm) / s_ * f
        M0 = J0 + np.sum(gm - gp, axis=-1)
        M1 = J1 + np.sum(tm * gm - tp * gp, axis=-1)
        M2 = J0 + a * J1 + np.sum(tm * tm * gm - tp * tp * gp, axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            logl = np.log(M0)
            r1, r2 = M1 / M0, M2 / M0
        score = flip * r1 / s
        weight = np.maximum(score**2 - (r2 - 1.0) / s**2, 0.0)
        sign = np.sign(sz) * flip  # (the odd moments of the reflected t)
        var_t = np.maximum(r2 - r1**2, 0.0)
        return logl, score, weight, sign * r1, var_t, np.sign(sz) * (r2 - 1.0 - r1**2) / s

    def _hermite_terms(self, y, eta, trials, rule=None):
        """:meth:`_terms` by adaptive Gauss–Hermite (the class's notes; ``rule``, nodes and log weights, or
        :attr:`x` and :attr:`logw`)."""
        x, logw = (self.x, self.logw) if rule is None else rule
        fam = self.family
        sz = self._scaled_z(eta)
        last = self._modes.get(np.shape(eta))
        t = np.zeros(np.shape(eta)) if last is None else last.copy()
        lo, hi = np.full(t.shape, -np.inf), np.full(t.shape, np.inf)
        for _ in range(80):
            # the mode of l(eta + sz t) - t^2/2 (concave): Newton on its decreasing gradient g, kept within
            # the bracket of the points seen (g > 0 below the root, < 0 above), halving it where a step
            # leaves it (a saturating likelihood with a large SD: Newton alone cycled between both sides)
            sc, w = fam.score_weight(y, eta + sz * t, trials)
            g = sz * sc - t
            lo, hi = np.where(g > 0.0, np.maximum(lo, t), lo), np.where(g > 0.0, hi, np.minimum(hi, t))
            new = t + np.minimum(np.maximum(g / (sz**2 * w + 1.0), -2.0), 2.0)
            new = np.where(((new <= lo) | (new >= hi)) & np.isfinite(lo) & np.isfinite(hi), 0.5 * (lo + hi), new)
            step, t = new - t, new
            if np.abs(step).max(initial=0.0) < _INNER_STEP:
                break
        self._modes[np.shape(eta)] = t
        _, w = fam.score_weight(y, eta + sz * t, trials)
        tau = np.sqrt(2.0 / (sz**2 * w + 1.0))
        T = t[..., None] + tau[..., None] * x
        yy = np.asarray(y)[..., None]
        tt = None if trials is None else np.asarray(trials)[..., None]
        ll, S, W = fam.row_terms(yy, np.asarray(eta)[..., None] + sz[..., None] * T, tt)
        lg = ll - 0.5 * T**2 + logw
        top = lg.max(axis=-1)
        rho = np.exp(lg - top[..., None])
        total = rho.sum(axis=-1)
        rho /= total[..., None]
        logl = top + np.log(total) + np.log(tau) - 0.5 * np.log(2.0 * np.pi)
        Es = np.einsum("...k,...k->...", rho, S)
        var_s = np.einsum("...k,...k->...", rho, S * S) - Es**2
        m = np.einsum("...k,...k->...", rho, T)
        v = np.einsum("...k,...k->...", rho, T * T) - m**2
        c = np.einsum("...k,...k->...", rho, T * S) - m * Es
        # (E w - Var s >= 0 for the log-concave integral; the sum can dip below where the rule resolves a
        # saturating likelihood poorly: SDs of 30 and more)
        return logl, Es, np.maximum(np.einsum("...k,...k->...", rho, W) - var_s, 0.0), m, np.maximum(v, 0.0), c

    def row_terms(self, y, eta, trials):
        """``(log-likelihood, score, weight)`` of the integrated rows."""
        return self._terms(y, eta, trials)

    def loglike(self, y, eta, trials):
        return self._terms(y, eta, trials)[0]

    def score_weight(self, y, eta, trials):
        return self._terms(y, eta, trials)[1:3]

    def effect_moments(self, y, eta, trials):
        r"""The observation-level effects' tilted moments at ``eta``: ``(mean, variance, covariance with
        the row's score)`` of each row's effect :math:`u = \sigma t`."""
        m, v, c = self._terms(y, eta, trials, moments=True)[3:]
        return self.sd * m, self.sd**2 * v, self.sd * c


def _phi(x):
    """The standard normal density."""
    return _SQRT_1_2PI * np.exp(-0.5 * x * x)


@functools.lru_cache(maxsize=1)
def _split_rule():
    r"""Gauss–Laguerre nodes :math:`w_k` and weights :math:`\lambda_k / (1 + e^{-w_k})` of
    :class:`ObservationMarginal`'s split rule (read-only)."""
    w, lam = np.polynomial.laguerre.laggauss(SPLIT_NODES)
    f = lam / (1.0 + np.exp(-w))
    w.flags.writeable = f.flags.writeable = False
    return w, f


class NestedMarginal:
    r"""The log marginal density of the log-SDs with the component :math:`P` integrated exactly.

    Given :math:`a = (fe, u_D)` (the fixed effects and the other components), the effects of
    :math:`P` are independent and :math:`a` enters each one-dimensional integral :math:`I_j(a)`
    (module docstring) through the rows of :math:`j` (nested or crossed designs alike), and

    .. math::

        F(a) = \sum_j \log I_j(a) + \sum_{i \notin P} \ell_i + \log N(u_D \mid 0, \Sigma_D)
               + \log N(fe \mid 0, fe\_p^2 I)

    is maximised over :math:`a` by Newton steps on its exact derivatives (tilted moments of the
    quadrature: :math:`\partial \log I_j / \partial a_i = \mathrm{E}_j s_i`,
    :math:`-\partial^2 \log I_j / \partial a_i \partial a_k = \mathrm{E}_j w_i\,\delta_{ik}
    - \mathrm{Cov}_j(s_i, s_k)`); the Laplace approximation is then applied over :math:`a` only,
    which is informed by many rows:
    :math:`\log p(y, \theta) \approx F(\hat a) + \tfrac{\dim a}{2}\log 2\pi - \tfrac12\log\det(-\nabla^2 F)
    + \log p(\theta)`. This is adaptive Gauss–Hermite quadrature for the innermost level (as
    lme4's ``nAGQ``), with the other levels by Laplace.
    """

    def __init__(self, model, ie, Z, D, inner=None):
        self.model, self.ie = model, ie
        rows = ie.rows
        m = ie.m
        self.D = D
        #: The observation-level component integrated inside P's rule (:class:`ObservationMarginal`), or None;
        #: its effect and coefficient in each row of P.
        self.inner = inner
        if inner is not None:
            cols = np.flatnonzero(model.ident == inner)
            Zc = Z[rows][:, cols].tocsr()
            Zc.sort_indices()
            self._inner_cols = cols[Zc.indices]
            self._inner_z = Zc.data.astype(float)
        self.ZDp = Z[:, D][rows].tocsr() if D.size else sp.csr_matrix((rows.size, 0))  # other effects of P's rows
        self._zd_coo = self.ZDp.tocoo()
        outside = np.ones(model.endog.size, dtype=bool)
        outside[rows] = False
        rest = np.flatnonzero(outside)  # (np.setdiff1d hashes: 0.6 s for a million rows)
        self.ZDr = Z[:, D][rest].tocsr() if D.size else sp.csr_matrix((rest.size, 0))
        self.ZDpT, self.ZDrT = self.ZDp.T.tocsr(), self.ZDr.T.tocsr()  # (no transpose object per call)
        X = model.exog
        self.Xp, self.Xr = X[rows], X[rest]
        off = model.offset
        self.off_p = None if off is None else off[rows]
        self.off_r = None if off is None else off[rest]
        self.yr = model.endog[rest]
        self.tr = None if model.trials is None else model.trials[rest]
        self.uhat = np.zeros(m) if ie.d == 1 else np.zeros((m, ie.d))
        self._y = ie.y[:, None]
        self._tr = None if ie.trials is None else ie.trials[:, None]
        self.group = sp.csr_matrix((np.ones(rows.size), (ie.local, np.arange(rows.size))), shape=(m, rows.size))
        self._pairs = self._row_pairs(self.group, ie.logw.size)
        # the Hessian's covariance part from the pairs of rows of one effect (a rows x rows matrix, for
        # the Gram blocks of the other components), or with no other component from each effect's sums
        # over its rows at every node when those are fewer: rows x nodes x p instead of pairs x nodes
        # (binary groups of 10 rows, p = 2: the fit 60 -> 29 ms; pairs of rows with 30 fixed effects keep
        # the pairs, 2x faster there and without a rows x nodes x p temporary)
        n_pairs = 0 if self._pairs is None else self._pairs[0].size
        self.by_pairs = self._pairs is not None and (D.size > 0 or n_pairs < rows.size * model.k_fep)
        # few other effects (crossed items, communities): (u_D, fe) is one small dense block, with no
        # sparse products or sparse factorisation in the Newton iterations
        self.dense = self._pairs is not None and 0 < D.size <= DENSE_OTHER and rows.size * D.size <= 4e6
        if self.dense:
            self.ZDp_d, self.ZDr_d = self.ZDp.toarray(), self.ZDr.toarray()
        self.x, self.logw = ie.x, ie.logw  # the rule of _nodes (use_nodes; a point may take a finer one: rule_at)
        self._rule_sd = None  # the SDs use_nodes' rule was taken for (None: that rule at every point)
        self._reuse = None  # the last factorisation (its pattern analysis is reused)
        self.start = None  # (u_D, fe, their starts) of the last solution: warm start for the next
        self.last = None  # (u_D, fe, factor, the inner modes, the tilted moments or None) at the last optimum
        #: Keep the tilted moments of each optimum (:meth:`_tilted`) with it, for :meth:`moments` (the
        #: integration points'; fit_laplace sets it for the grid): no second evaluation of the rule.
        self.keep_tilted = False
        #: Whether the tilted moments carry what the effects' third central moments need (their intervals:
        #: ``kappa`` and ``c2`` of :meth:`_tilted`, a second rows x d array); set by the fit
        self.skew = False
        self._tilted_kept = 0  # how many numbers the kept tilted moments hold (_tilted_if_kept)
        self._stash = None  # (vcp, rule, u_D, fe, U, pi, S, W, eta, S - E s) of the last evaluation with the Hessian
        self._inner_family = None  # family_at's last ObservationMarginal

    @staticmethod
    def _row_pairs(group, n_nodes, max_work=1e7):
        r"""The pairs (i, i') of rows of P in the same effect (both orders, i = i' included) as the
        pattern of a rows x rows CSR matrix: ``(first, second, indices, indptr)``; None when
        :math:`\sum_j n_j^2` times the nodes exceeds ``max_work`` (effects with many rows)."""
        G = group.tocsr()
        G.sort_indices()
        n = np.diff(G.indptr)
        if float(n @ n) * n_nodes > max_work:
            return None
        first, second, _ = pairs_within_rows(G.indptr)
        first, second = G.indices[first], G.indices[second]  # rows of P
        order = np.lexsort((second, first))
        first, second = first[order], second[order]
        indptr = np.searchsorted(first, np.arange(G.shape[1] + 1))
        return first, second, second.astype(np.int32), indptr.astype(np.int32)

    @functools.cached_property
    def _pair_diagonal(self):
        """The positions of the pairs (i, i) in :meth:`_row_pairs`' order."""
        first, second = self._pairs[:2]
        return np.flatnonzero(first == second)

    @functools.cached_property
    def _pair_batches(self):
        r"""The rows of P laid out effect by effect, each effect's rows padded with zero rows to the
        most rows of any effect, so that the products :math:`\sum_k d_{ik} d_{i'k}` over the pairs
        of rows of an effect are one batched matrix product (effects x rows x nodes by its transpose)
        instead of two gathers of pairs x nodes and a sum: ``(slot, position, most, Xp_padded)``, each row's
        place in the padded (effects * most rows) layout (None where every effect has the most rows: the
        layout is then the rows' own), each pair's in the flattened effects x most rows x most rows products,
        the most rows, and the fixed effects' rows in the padded layout (effects x most x p, for W X block by
        block); None when the padding would more than double the products' work (effects of very unequal
        sizes)."""
        first, second = self._pairs[:2]
        rows = self.ie.effect_rows
        most = rows.most
        if most == 0 or rows.m * most**2 > 2 * first.size:
            return None
        slot = rows.local * most + rows.rank  # (the rows are sorted by effect)
        position = slot[first] * most + slot[second] % most
        # (equal-sized effects: every slot holds its own row, and the padded layout is the rows themselves)
        return (None if rows.equal else slot), position, most, rows.padded(self.Xp)

    @functools.cached_property
    def _pair_matrix(self):
        """The rows x rows CSR matrix on the pairs' pattern whose values :meth:`_hessian_pairs` sets."""
        first, _, indices, indptr = self._pairs
        n = self.ie.rows.size
        return sp.csr_matrix((np.zeros(first.size), indices, indptr), shape=(n, n))

    @classmethod
    def build(cls, model, ie, blocks=True):
        """The marginal for ``ie``'s component (``ie`` from :meth:`IndependentEffects.find`); with
        ``blocks``, as :class:`EffectBlocks` with another component that pairs with it, where one does."""
        Z = sp.csr_matrix(model.exog_vc)
        outer, inner = cls._observation_pair(model)
        if outer is not None:
            ie = IndependentEffects(model, outer, ie.x.size)
            return cls(model, ie, Z, np.flatnonzero(~np.isin(model.ident, (outer, inner))), inner)
        ie = (EffectBlocks.around(model, ie) if blocks else None) or ie.by_effect(model)
        return cls(model, ie, Z, np.flatnonzero(~np.isin(model.ident, ie.components)))

    @staticmethod
    def _observation_pair(model):
        """``(outer, inner)``: two components, each with at most one nonzero per row, the inner with one
        row per effect and every one of its rows in an effect of the outer, whose effects have at most
        :data:`OBSERVATION_ROWS_MAX` rows on average (observation-level effects nested in small groups) or
        whose inner rows are Bernoulli, and no other; else ``(None, None)``."""
        if model.k_vcp != 2 or not model.k_vc:
            return None, None
        row, comp = _entries(model)
        if not all(_one_per_row(row, comp, c) for c in range(2)):
            return None, None
        for inner in range(2):
            rows_in, rows_out = row[comp == inner], row[comp == 1 - inner]
            if rows_in.size == 0 or rows_in.size != np.sum(model.ident == inner):
                continue  # (not one row per effect)
            bernoulli = model.family.name == "binomial" and (model.trials is None or np.all(model.trials[rows_in] == 1))
            few = bernoulli or rows_out.size <= OBSERVATION_ROWS_MAX * np.sum(model.ident == 1 - inner)
            if few and np.all(np.isin(rows_in, rows_out)):
                return 1 - inner, inner
        return None, None

    @property
    def components(self):
        """The components integrated exactly: P's, and the observation-level one inside it."""
        return self.ie.components + (() if self.inner is None else (self.inner,))

    def family_at(self, vcp):
        """The rows' family at log-SDs ``vcp``: the model's, or with the observation-level effects
        integrated (:class:`ObservationMarginal`)."""
        if self.inner is None:
            return self.model.family
        sd = np.exp(float(np.asarray(vcp)[self.inner]))
        if self._inner_family is None or self._inner_family.sd != sd:  # (one per SD: its last terms kept)
            self._inner_family = ObservationMarginal(self.model.family, self._inner_z, sd)
        return self._inner_family

    def use_nodes(self, sd):
        r"""Take the Gauss–Hermite rule fine enough for SDs of the component up to ``sd``; returns its
        number of nodes.

        The rule's nodes are :math:`c_j^{-1/2}\sqrt2\,x_k` apart in :math:`u_j`, at most
        :math:`\sigma_P\sqrt2\,\pi/\sqrt{2K}` near its centre: with few rows the integrand is a prior of
        scale :math:`\sigma_P` times a likelihood that turns over within a unit or two of the linear
        predictor, which the nodes must resolve, or the value moves as the nodes slide past the turn
        (a rough log density and Hessian in :math:`a`). :data:`NODES` nodes keep that spacing within
        2.6 for :math:`\sigma_P |z| \le 4`; beyond, :math:`K = 24\,(\sigma_P |z| / 4)^2` keep it
        (at most :data:`NODES_MAX`). Up to :data:`NARROW_SD` :data:`NODES_NARROW` keep it within 1.8: with
        ten rows per effect (Poisson and binary, SDs of 0.8, :math:`10^4` effects) the fit was the same
        to :math:`10^{-4}` posterior SD at 0.4 times the time, and on the accuracy harness within 0.007
        (up to 2.8, as far apart as 24 at 4, guImmun's log-SD posterior SD moved by 2.4 %; 8 nodes
        moved the large fits by 0.008 SD). At SDs of 8.6 and 4.8 (binary pairs of rows crossed with 20
        items) 24 nodes put the log density 2.4 too high and the Intercept's conditional variance at
        3.0 instead of 1.46 (112 nodes: within 0.02 of 200 nodes).
        ``sd`` is a float or the SD of every component (:meth:`IndependentEffects.hermite_rule`,
        :meth:`EffectBlocks.hermite_rule`: per axis). A point whose SDs are larger still takes the
        rule for its own (:meth:`rule_at`).
        """
        sd = self._resolved_sd(sd)
        self.x, self.logw, k = self.ie.hermite_rule(sd)
        self._rule_sd = sd
        return k

    def _resolved_sd(self, sd):
        r"""The SDs the rule must resolve, from the components' SDs ``sd`` (a float; one SD per component;
        or points x components, whose largest is taken). With an observation-level component inside
        (:attr:`inner`), the groups' rows have its effects integrated: their likelihood turns over
        :math:`\sqrt{1 + \sigma_c^2/1.7^2}` times as slowly as one row's (a logistic of scale 1.7 convolved
        with :math:`N(0, \sigma_c^2)`), so the groups' SD is taken as :math:`\sigma_o / \sqrt{1 + \sigma_c^2/1.7^2}`
        (20 groups of two binary rows: 136 nodes for the groups' SD of 9.5 at the probe points, 4.5 times the
        work where the rows' SD was 1.5 and more)."""
        if np.ndim(sd) == 0:
            return sd
        sd = np.array(sd, dtype=float)
        if self.inner is not None:
            outer = self.ie.component
            sd[..., outer] = sd[..., outer] / np.sqrt(1.0 + (sd[..., self.inner] / 1.7) ** 2)
        return np.max(sd, axis=0) if sd.ndim == 2 else sd

    def check_rule(self, vcp, uD, fe, tol=None):
        r"""Take a rule of twice the nodes (per axis; up to :data:`NODES_MAX`, :data:`NODES_BLOCK_MAX` for blocks) while
        that moves the log density at ``vcp``, given ``(u_D, fe)``, by more than ``tol`` (:data:`RULE_ERROR_MAX`):
        :math:`\sum_j \log I_j` over P's effects under :meth:`rule_at`'s rule against the finer one. Returns the
        nodes per effect taken.

        :meth:`use_nodes` sizes the rule by the effects' SD alone, so that each integral is accurate to about
        :math:`10^{-4}`; the log density sums m of them, and its error grows with m while the log-SDs' posterior
        narrows as :math:`m^{-1/2}`. Poisson rows each with its own effect (SD 2, mean count 0.4, :math:`10^4` rows)
        had the twelve-node rule 0.9 below the 24-node one: the fixed effects' means came out 0.23 posterior SDs off and
        the log density jumped where :meth:`rule_at` changed rules inside the grid."""
        tol = RULE_ERROR_MAX if tol is None else tol
        rule = self.rule_at(vcp)
        vcp = np.asarray(vcp, dtype=float)
        prec, fam = self.ie.precision(vcp), self.family_at(vcp)
        coarse = float(np.sum(self._nodes(uD, fe, prec, rule, fam)[2]))
        while (finer := self._finer(rule)) is not None:
            fine = float(np.sum(self._nodes(uD, fe, prec, finer, fam)[2]))
            if np.isfinite(coarse) and abs(fine - coarse) <= tol:
                break
            self.x, self.logw = finer
            rule, coarse = finer, fine
        return rule[0].shape[0]

    def _finer(self, rule):
        """The rule of twice ``rule``'s nodes per axis (None at the largest, or for blocks beyond
        :data:`BLOCK_WORK_MAX` rows times nodes)."""
        x = rule[0]
        if x.ndim == 1:
            return None if x.size >= NODES_MAX else _hermite_log_rule(min(2 * x.size, NODES_MAX))
        ks = [np.unique(x[:, t]).size for t in range(x.shape[1])]
        if max(ks) >= NODES_BLOCK_MAX:
            return None
        finer = _tensor_log_rule(tuple(min(2 * k, NODES_BLOCK_MAX) for k in ks), x.shape[1])
        return None if self.ie.rows.size * finer[0].shape[0] > BLOCK_WORK_MAX else finer

    def rule_at(self, vcp):
        r"""``(nodes, log weights + nodes**2)`` of the rule at log-SDs ``vcp``: :meth:`use_nodes`' rule,
        or where the point's SDs exceed those it was taken for, the rule for the larger of the two
        (:math:`\max(sd, e^{vcp})` per component). The grid reaches SDs beyond the probe points that chose
        :meth:`use_nodes`' rule (the exact mode lies elsewhere): there the coarser rule's value is rough, Newton
        stalls and the point was left out, its weight lost (binary rows each with its own effect, nested in
        groups of two: a log-SD's mode at 1.46 and the grid out to 3.5 with a rule for SDs up to 4.6; four
        points left out put the fixed effects' SDs 14 % short)."""
        if self._rule_sd is None:
            return self.x, self.logw
        x, logw, _ = self.ie.hermite_rule(np.maximum(self._rule_sd, self._resolved_sd(np.exp(np.asarray(vcp, dtype=float)))))
        return (x, logw) if logw.size > self.logw.size else (self.x, self.logw)

    def _nodes(self, uD, fe, prec, rule, fam=None):
        r"""The adaptive Gauss–Hermite rule (``rule``, :meth:`rule_at`'s) of every effect of P given ``(u_D, fe)``: nodes
        ``U`` (effects x nodes; for blocks a :class:`_BlockNodes`, which makes them, effects x nodes x d),
        the log scales of the nodes (:meth:`IndependentEffects.rule`), :math:`\log I_j` (without the prior's
        and the rule's constants), the tilted weights ``pi`` (effects x nodes, rows summing to 1), the
        rows' scores ``S`` and weights ``W`` at the nodes and their linear predictors ``eta``
        (rows x nodes)."""
        ie, fam = self.ie, self.model.family if fam is None else fam
        a = self.Xp @ fe + self.ZDp @ uD
        if self.off_p is not None:
            a = a + self.off_p
        u0, c = ie.modes(fam, a, prec, self.uhat)
        self.uhat = u0
        return ie.rule(fam, self._y, self._tr, a, self.group, u0, c, prec, *rule)

    def moments(self, vcp, optimum=None):
        r"""Posterior moments given the log-SDs ``vcp`` at the optimum of :meth:`log_marginal` there
        (``optimum``, its :attr:`last`; by default the last one):
        ``(fe_mean, fe_cov, vc_mean, vc_var, dmu_dfe, dmu_dD, vc_third)``, the last the third central moments of
        the exactly integrated effects given :math:`\hat a` (0 for the others: Gaussian).

        The fixed effects and the other components :math:`a = (u_D, fe)`: the mode
        :math:`\hat a` and :math:`H^{-1}` (:math:`H = -\nabla^2 F(\hat a)`). The effects of P:
        the tilted moments of the quadrature at :math:`\hat a`,
        :math:`\mu_j = \sum_k \pi_{jk} u_{jk}` and :math:`\tau_j = \sum_k \pi_{jk} u_{jk}^2 - \mu_j^2`
        (exact given :math:`a`: no Gaussian assumed for :math:`u_j`, whose posterior is skewed with
        few binary rows), with the variance of :math:`a` carried through by the law of total
        variance, :math:`\mathrm{Var}\,u_j \approx \tau_j + g_j^\top H^{-1} g_j`,
        :math:`g_j = \partial\mu_j/\partial a = \sum_{i \in j} \mathrm{Cov}_j(u, s_i)\,(z_{Di}, x_i)`.
        Also returns :math:`\partial\mu_P/\partial fe` (effects x p) and
        :math:`\partial\mu_P/\partial u_D` (effects x q_D, sparse in the sparse layout; None without
        other components) for shifting the means (:meth:`mean_shift`).
        """
        optimum = self.last if optimum is None else optimum
        if optimum is None:
            return None
        model, ie = self.model, self.ie
        uD, fe, F, self.uhat, tilted = optimum  # (the inner modes' Newton then starts at their solution)
        vcp = np.asarray(vcp, dtype=float)
        nodes = None  # (the rule's evaluation at the optimum, where made here: _inner_moments takes it too)
        if tilted is None:
            nodes = self._nodes(uD, fe, ie.precision(vcp), self.rule_at(vcp), self.family_at(vcp))
            U, _, _, pi, S, _, _ = nodes
            tilted = self._tilted(U, pi, S - ie.effect_rows.weighted(S, pi)[:, None])
        mu, tau, c, kappa, c2 = tilted
        Gc_template, order, g_map, g_template, g_pairs = self._moment_layout
        vc_mean = np.empty(model.k_vc)
        vc_var = np.empty(model.k_vc)
        if self.dense:
            nD = self.D.size
            cov = F.border_inverse()  # of (u_D, fe)
        else:
            fe_cov = F.border_inverse()

        def derivatives(cv):
            r"""For the rows' covariances ``cv`` (:math:`c_i`: the derivatives of a moment of the effects in the
            rows' linear predictors), :math:`g_j = \sum_{i \in j} cv_i (z_{Di}, x_i)` by its parts: (g, None, None)
            in the dense layout, else (g_fe, g_D, g_D A^{-1} B - g_fe)."""
            Gc = copy.copy(Gc_template)  # (the fixed patterns with new values: no sparse products or format checks)
            Gc.data = np.ravel(cv)[order]
            if self.dense:
                return np.asarray(Gc @ self._layout_rows[2]), None, None  # (u_D, fe) columns in one product
            g_f = np.asarray(Gc @ self.Xp)
            g_D = None
            if self.D.size:
                g_D = copy.copy(g_template)
                g_D.data = g_map @ np.ravel(cv)
            return g_f, g_D, (g_D @ F.AinvB if self.D.size and F.m else 0.0) - g_f

        def carried(a, b):
            r""":math:`g_j^\top \mathrm{Cov}(a)\, h_j` for two :func:`derivatives` (the variance through a's
            uncertainty, or a covariance of two moments)."""
            if self.dense:
                return np.einsum("ij,ij->i", a[0] @ cov, b[0])
            out = np.zeros(mu.size)
            if self.D.size:
                out += self._quad_sparse(F.A, a[1], g_pairs, b[1])
            if F.m:
                out += np.einsum("ij,ij->i", a[2] @ fe_cov, b[2])
            return out

        first = derivatives(c)
        quad = carried(first, first)
        if self.dense:
            g_f, g_D = first[0][:, nD:], first[0][:, :nD]
        else:
            g_f, g_D = first[0], first[1]
        # the third central moments: the conditional ones given a, plus 3 Cov(mu_j(a), tau_j(a)) through a's
        # uncertainty, g_j' Cov(a) g2_j (an all-ones group: its effect's mean falls and its variance grows as the
        # Intercept rises, which takes back part of the conditional skewness)
        vc_third = np.zeros(model.k_vc)
        if kappa is not None:  # (blocks: the conditional third moments alone, no c2)
            vc_third[ie.cols] = kappa + (3.0 * carried(first, derivatives(c2)) if c2 is not None else 0.0)
        vc_mean[ie.cols], vc_var[ie.cols] = mu, tau + quad
        if model.k_fep and ie.d == 1:  # (not for blocks of several effects per row)
            ev = self._evaluation_at(vcp, uD, fe) if nodes is None else None  # (the optimum's, where kept)
            if ev is not None:
                U, pi, S, W, _, dev = ev
            else:
                if nodes is None:
                    nodes = self._nodes(uD, fe, ie.precision(vcp), self.rule_at(vcp), self.family_at(vcp))
                U, _, _, pi, S, W, _ = nodes
                dev = S - ie.effect_rows.weighted(S, pi)[:, None]
            vc_mean[ie.cols] += self._curvature_shift(U, pi, W, dev, cov[nD:, nD:] if self.dense else fe_cov)
        if self.dense:
            vc_mean[self.D], vc_var[self.D] = uD, np.diag(cov)[:nD]
            return fe.copy(), cov[nD:, nD:], vc_mean, vc_var, g_f, g_D, vc_third
        if self.D.size:
            vc_mean[self.D], vc_var[self.D] = uD, F.sparse_diag_inverse()
        if self.inner is not None:
            cols = self._inner_cols
            vc_mean[cols], vc_var[cols] = self._inner_moments(vcp, uD, fe, fe_cov, nodes)
        return fe.copy(), fe_cov, vc_mean, vc_var, g_f, g_D, vc_third

    def _curvature_shift(self, U, pi, W, dev, fe_cov):
        r"""The change of the effects' means through the curvature of their conditional means in the fixed
        effects, :math:`\tfrac12\,\mathrm{tr}(\nabla^2_{fe}\,\mu_j\;\mathrm{Cov}(fe))` (the second-order term
        of :math:`\mathrm{E}\,\mu_j(fe)` about the optimum; :meth:`moments` carries the first through
        ``dmu_dfe``), at one evaluation of the rule (its nodes ``U``, tilted weights ``pi``, the rows' weights ``W``
        and their scores' deviations from the tilted means ``dev``, :meth:`_nodes`).

        With :math:`F(u) = \sum_{i \in j} \ell_i(x_i^\top fe + z_i u)` the tilted log density's part in fe,
        :math:`\partial^2 \mu_j / \partial fe\,\partial fe^\top = \mathrm{Cov}_j(u, \nabla^2 F)
        + \mathrm{E}_j[(u - \mu_j)\, d\, d^\top]`, :math:`d = \nabla F - \mathrm{E}_j \nabla F
        = \sum_{i \in j} (s_i - \mathrm{E}_j s_i)\, x_i` (the joint third central moment of u and the
        scores), and :math:`\nabla^2 F = -\sum_{i \in j} w_i x_i x_i^\top`; so with :math:`C = \mathrm{Cov}(fe)
        = L L^\top` the shift is :math:`\tfrac12(\mathrm{E}_j[(u - \mu_j)\,\|L^\top d\|^2]
        - \sum_{i \in j} \mathrm{Cov}_j(u, w_i)\, x_i^\top C x_i)`. Three binary groups of 14 rows, two of them
        all zeros or all ones (an SD of 5, the Intercept's posterior SD 1.7): the middle group's effect, 0.2
        below its NUTS mean (0.11 posterior SDs) without it, is within 0.04 SDs. The other components' effects
        (:math:`u_D`) move the rows' linear predictors too and are left out of the term: on 40 binary subjects
        crossed with 5 items it was 0.008 posterior SDs over the fixed effects and would be 0.022 over both."""
        ie = self.ie
        evals, evecs = np.linalg.eigh(0.5 * (fe_cov + fe_cov.T))
        root = evecs * np.sqrt(np.maximum(evals, 0.0))  # (C = root root')
        weight = pi * _node_moments(pi, U, third=False)[1]
        d = self._effect_sums_x(dev) @ root  # effects x nodes x p
        spread = np.einsum("jk,jkp,jkp->j", weight, d, d)
        xr = np.asarray(self.Xp @ root)
        cw = ie.effect_rows.weighted(W, weight)  # (rows: Cov_j(u, w_i))
        spread -= self.group @ (cw * np.einsum("ip,ip->i", xr, xr))
        return 0.5 * spread

    def _inner_moments(self, vcp, uD, fe, fe_cov, nodes=None):
        r"""Means and variances of the observation-level effects (one per row of P, :attr:`inner`) at the
        optimum ``(u_D, fe)``: over P's nodes k of the row's effect j, the inner tilted moments
        :math:`m_{ik}, v_{ik}` mixed by :math:`\pi_{jk}`, :math:`\mu_i = \sum_k \pi_{jk} m_{ik}`,
        :math:`\tau_i = \sum_k \pi_{jk}(v_{ik} + m_{ik}^2) - \mu_i^2`, plus the fixed effects' variance carried
        through, :math:`g_i^\top \Sigma_{fe}\, g_i` with :math:`g_i = \partial\mu_i/\partial fe =
        \sum_{i' \in j} \mathrm{Cov}(u_i, s_{i'})\, x_{i'}` (over the nodes, and within the row's own inner
        integral for i' = i). ``nodes``: :meth:`_nodes` there, if made already."""
        ie = self.ie
        fam = self.family_at(vcp)
        stash = self._evaluation_at(vcp, uD, fe) if nodes is None else None
        if stash is not None:  # (the optimum's own evaluation: its inner terms are the family's last)
            pi, S, eta = stash[1], stash[2], stash[4]
        else:
            if nodes is None:
                nodes = self._nodes(uD, fe, ie.precision(vcp), self.rule_at(vcp), fam)
            _, _, _, pi, S, _, eta = nodes
        m, v, c = fam.effect_moments(self._y, eta, self._tr)
        P = np.take(pi, ie.local, axis=0)  # rows x nodes
        mu = np.einsum("ik,ik->i", P, m)
        tau = np.maximum(np.einsum("ik,ik->i", P, v + m**2) - mu**2, 0.0)
        dev = S - np.einsum("ik,ik->i", P, S)[:, None]
        g = (np.einsum("ik,ikp->ip", P * (m - mu[:, None]), np.take(self._effect_sums_x(dev), ie.local, axis=0))
             + np.einsum("ik,ik->i", P, c)[:, None] * self.Xp)
        return mu, tau + np.einsum("ip,pq,iq->i", g, fe_cov, g)

    def _effect_sums_x(self, dev):
        r""":math:`\sum_{i \in j} dev_{ik}\, x_i` for every effect j and node k (effects x nodes x p), one
        column of X at a time (the rows x nodes x p product took 4x the sums over effects)."""
        p = self.model.k_fep
        if not p:
            return np.zeros((self.ie.m, dev.shape[1], 0))
        if isinstance(dev, SeparableRows):
            return dev.effect_sums(self.group, self.Xp)
        return np.stack([G @ dev for G in self._group_x], axis=2)

    @functools.cached_property
    def _group_x(self):
        r"""The effects x rows matrices :math:`G_t`, :math:`(G_t)_{ji} = x_{it}` for the rows i of effect j (the
        pattern of :attr:`group`, one per column of X): :math:`G_t\,dev` sums :math:`dev_{ik} x_{it}` over each
        effect's rows without a rows x nodes product (a million rows by 12 nodes: 35 ms each)."""
        G = self.group
        return [sp.csr_matrix((self.Xp[G.indices, t], G.indices, G.indptr), shape=G.shape)
                for t in range(self.model.k_fep)]

    @functools.cached_property
    def _moment_layout(self):
        r"""The fixed patterns of :meth:`moments`: :math:`G_c` (effects * d x rows of P, the rows'
        :math:`c_i = \mathrm{Cov}_j(u, s_i)` placed at their effect's coordinates, row j * d + t as
        ``ie.cols``' order), as a CSR template and the order of ``c.ravel()`` in its values; and, with
        other components in the sparse layout, :math:`g_D = G_c Z_{Dp}` as a map ``M`` from
        ``c.ravel()`` to its values (``g_D.data = M c``), its CSR template and the pairs of its entries
        within a row with their columns (:meth:`_quad_sparse`). ``c`` may hold zeros: the patterns are
        structural (a pair of columns of one row of :math:`g_D` shares a row of P's effect, so it lies
        on the Gram pattern).
        """
        ie = self.ie
        n, d, m = ie.rows.size, ie.d, ie.m
        entry_row = np.repeat(np.arange(n), d)  # the row of P of each entry of c.ravel()
        coord = (ie.local[entry_row] * d + np.tile(np.arange(d), n)).astype(np.int64)
        order = np.lexsort((entry_row, coord))
        indptr = np.searchsorted(coord[order], np.arange(m * d + 1)).astype(np.int32)
        Gc = sp.csr_matrix((np.zeros(n * d), entry_row[order].astype(np.int32), indptr), shape=(m * d, n))
        if self.dense or not self.D.size:
            return Gc, order, None, None, None
        qD = self.D.size
        zr, zc, zv = self._zd_coo.row, self._zd_coo.col, self._zd_coo.data
        e = (np.repeat(zr, d) * d + np.tile(np.arange(d), zr.size)).astype(np.int64)  # entries of c.ravel()
        keys = coord[e] * qD + np.repeat(zc, d)
        uniq, pos = np.unique(keys, return_inverse=True)
        g_map = sp.csr_matrix((np.repeat(zv, d), (pos, e)), shape=(uniq.size, n * d))
        g_indptr = np.searchsorted(uniq // qD, np.arange(m * d + 1)).astype(np.int32)
        g_template = sp.csr_matrix((np.zeros(uniq.size), (uniq % qD).astype(np.int32), g_indptr), shape=(m * d, qD))
        first, second, row = pairs_within_rows(g_indptr)
        cols = g_template.indices
        return Gc, order, g_map, g_template, (first, second, row, cols[first], cols[second])

    def _evaluation_at(self, vcp, uD=None, fe=None):
        """``(U, pi, S, W, eta, S - E s)`` of the last evaluation with the Hessian if it was at
        ``(vcp, u_D, fe)`` under the current rule (a converged :meth:`log_marginal`'s optimum,
        normally; without ``u_D`` and ``fe``, wherever it was at ``vcp``), else None."""
        st = self._stash
        if st is None or st[1] is not self.rule_at(vcp)[1] or not np.array_equal(st[0], vcp):
            return None
        if uD is not None and not (np.array_equal(st[2], uD) and np.array_equal(st[3], fe)):
            return None
        return st[4:]

    def _tilted(self, U, pi, dev):
        r"""The tilted moments of the effects of P at one evaluation of the rule (``U``, ``pi`` and
        ``dev`` the rows' :math:`s_{ik} - \mathrm{E}_j s_i`): ``(mu, tau, c, kappa, c2)``, the means and variances
        :math:`\mu_j`, :math:`\tau_j` (effects, or effects * d in ``ie.cols``' order for blocks),
        :math:`c_i = \mathrm{Cov}_j(u, s_i)` (rows, rows x d for blocks), whence
        :math:`\partial\mu_j/\partial a = \sum_{i \in j} c_i\,(z_{Di}, x_i)` (:meth:`moments`), the third
        central moments :math:`\kappa_j = \sum_k \pi_{jk} (u_{jk} - \mu_j)^3` and
        :math:`c2_i = \mathrm{Cov}_j((u - \mu_j)^2, s_i)`, whence :math:`\partial\tau_j/\partial a` (the last two
        None without :attr:`skew`; ``c2`` None for blocks, whose third moments are the conditional ones alone)."""
        ie = self.ie
        if isinstance(U, _BlockNodes):  # (the block rule's nodes by their parts: moments without them)
            return (*U.tilted(pi, dev), U.third(pi) if self.skew else None, None)
        mu, centred, tau, kappa = _node_moments(pi, U, third=self.skew)
        c = ie.effect_rows.weighted(dev, pi * centred)
        if not self.skew:
            return mu, tau, c, None, None
        return mu, tau, c, kappa, ie.effect_rows.weighted(dev, pi * centred**2)

    @staticmethod
    def _quad_sparse(A, g, pairs, h=None):
        r""":math:`g_j^\top A^{-1} h_j` (``h`` defaults to ``g``) for the rows of the sparse ``g`` and ``h`` (of one
        pattern): from :math:`A^{-1}` on the pairs of columns that share a row (selected inverse, on A's pattern),
        else by solves in blocks. ``pairs``: ``(first, second, row, column of first, column of second)`` of the
        fixed pattern, both orders of every pair (:meth:`_moment_layout`), the same arrays at every call (the
        factor keeps where their entries sit)."""
        h = g if h is None else h
        first, second, row, col_first, col_second = pairs
        try:
            sig = A.inverse_on_pattern(col_first, col_second, keep_plan=True)
            return np.bincount(row, weights=g.data[first] * h.data[second] * sig, minlength=g.shape[0])
        except ValueError:
            out = np.empty(g.shape[0])
            step = max(1, int(2e6 // max(g.shape[1], 1)))
            for a in range(0, g.shape[0], step):
                gb, hb = g[a:a + step].toarray(), h[a:a + step].toarray()
                out[a:a + step] = np.einsum("ij,ji->i", gb, A.solve(hb.T))
            return out

    def objective(self, vcp):
        """``fun(u_D, fe, hessian)`` for :func:`~mglm_core.newton.newton_ascent` at log-SDs ``vcp``
        (``hessian=None``: the value alone)."""
        model, ie, fam = self.model, self.ie, self.model.family
        m, p = ie.m, model.k_fep
        prec_k = np.exp(-2.0 * vcp)
        prec = ie.precision(vcp)
        prec_D = prec_k[model.ident[self.D]]
        loc = ie.local

        rule = self.rule_at(vcp)
        fam_p = self.family_at(vcp)
        K = rule[1].size
        no_rows = np.zeros(0)

        def fun(uD, fe, hessian):
            self._stash = None  # (released before this evaluation's arrays are made)
            U, log_sc, logI, pi, S, W, eta = self._nodes(uD, fe, prec, rule, fam_p)
            value = float(np.sum(logI + log_sc) + ie.log_normaliser(prec))
            s_r = w_r = no_rows  # (every row in P's effects: no other rows' terms, whose products cost 50 us)
            if self.yr.size:
                eta_r = self.Xr @ fe + self.ZDr @ uD
                if self.off_r is not None:
                    eta_r = eta_r + self.off_r
                ll_r, s_r, w_r = fam.row_terms(self.yr, eta_r, self.tr)
                value += float(np.sum(ll_r))
            value += (-0.5 * float(prec_D @ uD**2) + 0.5 * float(np.sum(np.log(prec_D)))
                      - 0.5 * self.D.size * np.log(2.0 * np.pi))
            value += -0.5 * float(fe @ fe) / model.fe_p**2 - 0.5 * p * np.log(2.0 * np.pi * model.fe_p**2)
            value += -0.5 * float(vcp @ vcp) / model.vcp_p**2 - 0.5 * vcp.size * np.log(2.0 * np.pi * model.vcp_p**2)
            if hessian is None:  # the value alone (line searches)
                return value, None, None, None, None, None
            Es, Ew = ie.effect_rows.weighted(S, pi, W)
            g_fe = self.Xp.T @ Es - fe / model.fe_p**2
            # (the dense layout's dense copies: a sparse product's overhead is most of its time here)
            g_D = (self.ZDp_d.T @ Es if self.dense else self.ZDpT @ Es) - prec_D * uD
            if self.yr.size:
                g_fe += self.Xr.T @ s_r
                g_D += self.ZDr_d.T @ s_r if self.dense else self.ZDrT @ s_r
            if not hessian:
                return value, g_D, g_fe, None, None, None
            dev = S - Es[:, None]  # s_ik - E s_i
            # (the optimum's evaluation is the last one with the Hessian: log_marginal keeps its tilted
            # moments, _skewness its rule)
            self._stash = (vcp.copy(), rule[1], uD.copy(), fe.copy(), U, pi, S, W, eta, dev)
            if self.by_pairs:
                return (value, g_D, g_fe) + self._hessian_pairs(pi, dev, Ew, w_r, prec_D)
            C = (self.Xp * Ew[:, None]).T @ self.Xp + (self.Xr * w_r[:, None]).T @ self.Xr
            if isinstance(dev, SeparableRows) and not self.D.size:  # (no effects x nodes x p array)
                C -= dev.node_gram(self.group, self.Xp, pi)
            else:
                # d_jk = sqrt(pi_jk) sum over the rows i of j of x_i (s_ik - E s_i): (effects * nodes) x p
                sq = np.sqrt(pi)
                dw = self._effect_sums_x(dev)
                dw = (dw * sq[:, :, None]).reshape(m * K, p)
                C -= dw.T @ dw
            C += np.eye(p) / model.fe_p**2
            if self.D.size:
                # D-part of d_jk, sparse (effects * nodes) x q_D: A -= M'M, B -= M' d
                A = (self.ZDpT @ sp.diags(Ew) @ self.ZDp + self.ZDrT @ sp.diags(w_r) @ self.ZDr
                     + sp.diags(prec_D)).tocsc()
                B = self.ZDpT @ (self.Xp * Ew[:, None]) + self.ZDrT @ (self.Xr * w_r[:, None])
                zc = self._zd_coo
                row_jk = (loc[zc.row] * K)[:, None] + np.arange(K)
                vals = zc.data[:, None] * sq[loc[zc.row]] * dev[zc.row]
                M = sp.csr_matrix((vals.ravel(), (row_jk.ravel(), np.repeat(zc.col, K))), shape=(m * K, self.D.size))
                A = (A - M.T @ M).tocsc()
                B = B - M.T @ dw
            else:
                A, B = sp.csc_matrix((0, 0)), np.zeros((0, p))
            return value, g_D, g_fe, A, np.asarray(B), C

        return fun

    @functools.cached_property
    def _gram_map(self):
        r"""The sparse block's pattern and maps, so that :meth:`_hessian_pairs` assembles
        :math:`A = Z_{Dp}^\top W_p Z_{Dp} + Z_{Dr}^\top \mathrm{diag}(w_r) Z_{Dr} + \mathrm{diag}(prec_D)`
        as one sparse product per evaluation, ``data = M_p v + M_r w_r`` (``v`` the values of
        :math:`W_p` on the pairs of rows of an effect), instead of sparse matrix products (their index
        checks took half of a fit with four components): ``(M_p, M_r, diagonal positions, indices,
        indptr)`` of the CSC matrix (symmetric: its CSR arrays alike)."""
        q = self.D.size
        first, second = self._pairs[:2]
        Zp, Zr = self.ZDp, self.ZDr

        def expand(Z, a, b):  # (pair, column of row a, column of row b, coefficient) for pairs (a, b)
            pair, ea, eb = _nonzero_pairs(Z, a, b)
            return pair, Z.indices[ea].astype(np.int64), Z.indices[eb].astype(np.int64), Z.data[ea] * Z.data[eb]

        tp, cp, dp, vp = expand(Zp, first, second)
        rest = np.arange(Zr.shape[0])
        tr, cr, dr, vr = expand(Zr, rest, rest)
        diag = np.arange(q, dtype=np.int64)
        keys = np.concatenate([dp * q + cp, dr * q + cr, diag * q + diag])  # column-major: CSC order
        uniq, pos = np.unique(keys, return_inverse=True)
        pos_p, pos_r, pos_d = pos[:tp.size], pos[tp.size:tp.size + tr.size], pos[tp.size + tr.size:]
        M_p = sp.csr_matrix((vp, (pos_p, tp)), shape=(uniq.size, first.size))
        M_r = sp.csr_matrix((vr, (pos_r, tr)), shape=(uniq.size, rest.size))
        indices = (uniq % q).astype(np.int32)
        indptr = np.searchsorted(uniq // q, np.arange(q + 1)).astype(np.int32)
        return M_p, M_r, pos_d, indices, indptr

    def _hessian_pairs(self, pi, dev, Ew, w_r, prec_D):
        r"""The blocks ``(A, B, C)`` of :math:`-\nabla^2 F` over :math:`(u_D, fe)`: a weighted Gram
        matrix of the rows, :math:`\tilde X^\top W \tilde X` with :math:`\tilde X = (Z_D, X)`, whose
        weights on the rows of P are block diagonal by effect,
        :math:`W_{ii'} = \delta_{ii'}\,\mathrm{E}_j w_i - \mathrm{Cov}_j(s_i, s_{i'})`
        (i, i' rows of effect j), plus the priors' precisions."""
        first, second, indices, indptr = self._pairs
        model, p = self.model, self.model.k_fep
        batches = self._pair_batches
        m = self.ie.m
        if batches is None:
            sdev = self.ie.effect_rows.scaled(dev, np.sqrt(pi))
            vals = -np.einsum("tk,tk->t", sdev[first], sdev[second])
            diag = self._pair_diagonal
            vals[diag] += Ew[first[diag]]
            Wp = self._pair_matrix  # (its pattern fixed, only its values set: scipy's checks took 60 us)
            Wp.data = vals
            WX = Wp @ self.Xp
        else:  # (a third of the time of the gathers: binary slopes of 80 groups of six rows, 100 nodes)
            # each effect's block of W by one batched product over the rows padded to the most rows, and
            # W X block by block (equal-sized effects: the rows themselves, no padding)
            slot, position, most, Xp_padded = batches
            padded = self.ie.effect_rows.padded(dev) * np.sqrt(pi)[:, None, :]
            Ew_padded = self.ie.effect_rows.padded(Ew)
            blocks = np.matmul(padded, padded.transpose(0, 2, 1))
            np.negative(blocks, out=blocks)
            blocks.reshape(m, most * most)[:, ::most + 1] += Ew_padded
            vals = blocks.ravel()[position]
            WX = np.matmul(blocks, Xp_padded).reshape(m * most, p)
            if slot is not None:
                WX = WX[slot]
        WXr = self.Xr * w_r[:, None]
        C = self.Xp.T @ WX + np.eye(p) / model.fe_p**2
        if self.yr.size:
            C += self.Xr.T @ WXr
        if not self.D.size:
            return sp.csc_matrix((0, 0)), np.zeros((0, p)), C
        M_p, M_r, pos_d, indices, indptr = self._gram_map
        data = M_p @ vals
        data[pos_d] += prec_D
        if self.yr.size:
            data += M_r @ w_r
        if self.dense:  # (the pattern's values placed in the dense block: a fifth of the time of Z' W Z)
            q = self.D.size
            A = np.zeros(q * q)
            A[self._dense_positions] = data
            B = self.ZDp_d.T @ WX
            if self.yr.size:
                B += self.ZDr_d.T @ WXr
            return A.reshape(q, q), B, C
        B = self.ZDpT @ WX
        if self.yr.size:
            B = B + self.ZDrT @ WXr
        A = copy.copy(self._gram_template)  # (a new matrix on the shared, canonical pattern: no format checks)
        A.data = data
        return A, np.asarray(B), C

    @functools.cached_property
    def _gram_template(self):
        """The CSC matrix of :meth:`_gram_map`'s pattern, its canonical format established once."""
        _, _, _, indices, indptr = self._gram_map
        A = sp.csc_matrix((np.zeros(indices.size), indices, indptr), shape=(self.D.size, self.D.size))
        if not A.has_canonical_format:  # (sorted, without duplicates by construction)
            raise AssertionError("the Gram pattern must be canonical")
        return A

    @functools.cached_property
    def _dense_positions(self):
        """The flat positions in the dense q_D x q_D block of :meth:`_gram_map`'s pattern (CSC order)."""
        _, _, _, indices, indptr = self._gram_map
        q = self.D.size
        return indices.astype(np.int64) * q + np.repeat(np.arange(q), np.diff(indptr))

    def _as_border(self, fun):
        """``fun`` with (u_D, fe) as one dense border (no sparse block), for :attr:`dense`."""
        nD = self.D.size

        def fun_border(_, a, hessian):
            value, g_D, g_fe, A, B, C = fun(a[:nD], a[nD:], hessian)
            if hessian is None:
                return value, None, None, None, None, None
            if not hessian:
                return value, np.zeros(0), np.concatenate([g_D, g_fe]), None, None, None
            full = _bordered(A, B, C)
            return value, np.zeros(0), np.concatenate([g_D, g_fe]), _EMPTY, np.zeros((0, full.shape[0])), full

        return fun_border

    def _factor(self, A, B, C):
        """The factorisation of the Hessian blocks in the layout :meth:`log_marginal` uses."""
        from .linalg import BorderedFactor

        if self.dense:
            full = _bordered(A, B, C)
            return BorderedFactor(_EMPTY, np.zeros((0, full.shape[0])), full)
        return BorderedFactor(A, B, C)

    def _solve(self, F, rhs_D, rhs_fe):
        """``H^{-1} (rhs_D, rhs_fe)`` with the factor of either layout, as ``(x_D, x_fe)``."""
        if self.dense:
            x = F.solve(np.zeros(0), np.concatenate([rhs_D, rhs_fe]))[1]
            return x[:self.D.size], x[self.D.size:]
        return F.solve(rhs_D, rhs_fe)

    def log_marginal(self, vcp, uD, fe, tol=1e-7, floor=None):
        """:math:`\\log p(y, \\theta)` by the nested approximation, from the start ``(u_D, fe)``.

        With ``floor``, a point whose value estimated from the start alone falls below it is not
        solved further (:meth:`_one_step`)."""
        from .newton import newton_ascent

        uD0, fe0 = uD, fe
        vcp = np.asarray(vcp, dtype=float)
        if self.start is not None:  # the last solution moved along the joint mode's change
            uD, fe = self.start[0] + (uD - self.start[2]), self.start[1] + (fe - self.start[3])
        fun = self._as_border(self.objective(vcp)) if self.dense else self.objective(vcp)
        u, b = (np.zeros(0), np.concatenate([uD, fe])) if self.dense else (uD, fe)
        first = None
        if floor is not None:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                first = fun(u, b, True)
            value = self._one_step(vcp, u, b, first, floor, uD0, fe0)
            if value is not None:
                return value
        res = newton_ascent(fun, u, b, tol=tol, max_iter=6, max_halvings=3, reuse=None if self.dense else self._reuse,
                            stall_tol=_STALL_TOL, first=first,
                            estimate_below=None if floor is None else _ESTIMATE_BELOW)
        if self.dense and res.factor is not None:
            res.u, res.b = res.b[:self.D.size], res.b[self.D.size:]
        if res.factor is None or not np.isfinite(res.value) or not res.converged:
            # far out in the log-SDs (SDs of 10 and more) the quadrature loses accuracy and Newton
            # stalls there: such a point is left out (fit_laplace's warning counts them)
            self.last = None
            return -np.inf
        self._reuse = res.factor
        self.start = (res.u, res.b, uD0, fe0)
        # (a last step not evaluated, estimate_below: the moments of the point it left, as _one_step)
        tilted = self._tilted_if_kept(self._evaluation_at(vcp, res.u, res.b) if res.lag is None
                                      else self._evaluation_at(vcp))
        # (self.uhat: the inner modes of the last evaluation, the optimum's unless Newton stalled on a
        # rejected trial point; they only start the modes' Newton of moments and _skewness)
        self.last = (res.u, res.b, res.factor, self.uhat, tilted)
        dim = self.D.size + self.model.k_fep
        return res.value + 0.5 * dim * np.log(2.0 * np.pi) - 0.5 * res.factor.logdet()

    def _tilted_if_kept(self, stash):
        """The tilted moments of the evaluation ``stash`` (:meth:`_evaluation_at`'s; None: not made there) where
        :attr:`keep_tilted` and :data:`TILTED_KEEP_MAX` allow them to be kept with the optimum, else None."""
        size = (1 + self.skew) * self.ie.rows.size * self.ie.d + (2 + self.skew) * self.ie.m * self.ie.d
        if stash is None or not self.keep_tilted or self._tilted_kept + size > TILTED_KEEP_MAX:
            return None
        self._tilted_kept += size
        return self._tilted(stash[0], stash[1], stash[5])

    def _one_step(self, vcp, u, b, first, floor, uD0, fe0):
        r"""The value of a point of little weight from its start alone: with :math:`F`, its gradient
        :math:`g` and :math:`H = -\nabla^2 F` at the start :math:`a_0` (``first``, the objective's
        evaluation there) and the Newton decrement :math:`\delta = g^\top H^{-1} g`,
        :math:`F(\hat a) \approx F(a_0) + \delta/2` and :math:`\log\det H(\hat a) \approx
        \log\det H(a_0)` (errors of order :math:`\delta^{3/2}` and :math:`\delta^{1/2}`). Taken
        when the value so estimated is below ``floor`` (the caller's: far below the largest value seen,
        where an error of a few hundredths moves a negligible weight) by d and :math:`\delta` is below
        :data:`_ONE_STEP_DECREMENT` :math:`e^{d/2}`; otherwise None (the point is solved). The optimum kept is
        :math:`a_0 + H^{-1} g`, with the factorisation and the tilted moments at :math:`a_0`."""
        from .linalg import BorderedFactor, NotPositiveDefinite

        value, gu, gb, A, B, C = first
        if not np.isfinite(value):
            return None
        try:
            F = BorderedFactor(A, B, C, None if self.dense else self._reuse)
        except NotPositiveDefinite:
            return None
        du, db = F.solve(gu, gb)
        decrement = float(gu @ du + gb @ db)
        dim = self.D.size + self.model.k_fep
        estimate = value + 0.5 * decrement + 0.5 * dim * np.log(2.0 * np.pi) - 0.5 * F.logdet()
        if not (estimate < floor and 0.0 <= decrement < _ONE_STEP_DECREMENT * np.exp(0.5 * (floor - estimate))):
            return None
        tilted = self._tilted_if_kept(None if self._stash is None else self._stash[4:])
        u1, b1 = u + du, b + db
        if self.dense:
            u1, b1 = b1[:self.D.size], b1[self.D.size:]
        if not self.dense:
            self._reuse = F
        self.start = (u1, b1, uD0, fe0)
        self.last = (u1, b1, F, self.uhat, tilted)
        return estimate

    @functools.cached_property
    def _layout_rows(self):
        r"""The rows' coefficients of :math:`a` split as the factor's blocks: ``(Zs_p, Zs_r, Xb_p, Xb_r)``,
        the sparse block's (the other components' effects in the sparse layout; None in the dense
        layout) and the border's (the fixed effects, with the other components' effects in front in
        the dense layout), for the rows of P and the rest."""
        if self.dense:
            return None, None, np.hstack([self.ZDp_d, self.Xp]), np.hstack([self.ZDr_d, self.Xr])
        if not self.D.size:
            return None, None, self.Xp, self.Xr
        return self.ZDp, self.ZDr, self.Xp, self.Xr

    @staticmethod
    def _pair_covariances(F, Zs, Wb, first, second, nonzero):
        r""":math:`\tilde x_a^\top H^{-1} \tilde x_b` for the pairs of rows ``(first, second)``: the sparse
        block's part :math:`z_a^\top A^{-1} z_b` from A's selected inverse (the pairs' columns share a
        row of A: on its pattern), plus :math:`w_a^\top w_b` with ``Wb`` the rows'
        :meth:`~mglm_core.linalg.BorderedFactor.border_rows`. ``nonzero``: :func:`_nonzero_pairs` of the
        pairs with the two entries' columns (:meth:`_skewness_layout`; None without a sparse block), the same
        arrays at every call (the factor keeps where they sit)."""
        out = np.einsum("td,td->t", Wb[first], Wb[second]) if Wb.shape[1] else np.zeros(first.size)
        if nonzero is None:
            return out
        pair, ea, eb, col_a, col_b = nonzero
        sig = F.A.inverse_on_pattern(col_a, col_b, keep_plan=True)
        return out + np.bincount(pair, weights=Zs.data[ea] * Zs.data[eb] * sig, minlength=first.size)

    @functools.cached_property
    def _skewness_layout(self):
        """The fixed index arrays of :meth:`_skewness`: ``(both, first, second, nonzero_p, rest, nonzero_r)``,
        with each effect's rows in slots 0..n_max-1, the slot pairs that hold two rows, those pairs of rows
        of one effect, and :meth:`_pair_covariances`' ``nonzero`` for those
        pairs and for the rows outside P with themselves (None without a sparse block)."""
        ie = self.ie
        n_max = ie.effect_rows.most
        slot = ie.effect_rows.rank  # (the rows are sorted by effect)
        row_at = np.full((ie.m, n_max), -1, dtype=np.int64)
        row_at[ie.local, slot] = np.arange(ie.local.size)
        both = (row_at[:, :, None] >= 0) & (row_at[:, None, :] >= 0)
        first = np.broadcast_to(row_at[:, :, None], both.shape)[both]
        second = np.broadcast_to(row_at[:, None, :], both.shape)[both]
        Zs_p, Zs_r = self._layout_rows[:2]
        rest = np.arange(self.Xr.shape[0])

        def nonzero(Zs, a, b):
            if Zs is None or not Zs.nnz:
                return None
            pair, ea, eb = _nonzero_pairs(Zs, a, b)
            return pair, ea, eb, Zs.indices[ea], Zs.indices[eb]

        return both, first, second, nonzero(Zs_p, first, second), rest, nonzero(Zs_r, rest, rest)

    def _skewness(self, vcp, optimum, third=True):
        r"""The third- and fourth-order terms of the Laplace approximation over :math:`a = (u_D, fe)` at
        ``optimum`` (:meth:`second_order`): ``(q4, q33, t_A, t_B, x_A, x_B)`` with :math:`t` split as
        the factor's blocks (sparse block, border) and :math:`x = H^{-1} t`; ``q4`` and ``q33`` are None
        without ``third`` or beyond :data:`SECOND_ORDER_MAX` entries of the effects' third-derivative
        tensors.
        None beyond :data:`SECOND_ORDER_MAX` entries of their within-effect covariances."""
        ie, fam = self.ie, self.model.family
        m = ie.m
        n_max = ie.effect_rows.most
        if m * float(n_max) ** 2 > SECOND_ORDER_MAX or self.inner is not None:
            return None  # (with an observation-level component inside: the Laplace is over fe alone)
        third = third and m * float(n_max) ** 3 <= SECOND_ORDER_MAX
        uD, fe, F, self.uhat = optimum[:4]
        vcp = np.asarray(vcp, dtype=float)
        stash = self._evaluation_at(vcp, uD, fe)
        _, pi, S, W = (stash[:4] if stash is not None
                       else self._nodes(uD, fe, ie.precision(vcp), self.rule_at(vcp))[2:6])
        dw, d2w = fam.weight_derivatives(self._y, S, W, self._tr)  # (from the scores and weights: no exponentials)
        Zs_p, Zs_r, Xb_p, Xb_r = self._layout_rows
        sparse = Zs_p is not None

        # each effect's rows in slots 0..n_max-1 (padding: zero in V and in the centred moments)
        slot = ie.effect_rows.rank  # (the rows are sorted by effect)
        padded = ie.effect_rows.padded  # (rows x ... -> effects x n_max x ...)
        both, first, second, nonzero_p, rest, nonzero_r = self._skewness_layout
        V = np.zeros((m, n_max, n_max))  # within-effect covariances of the offsets
        V[both] = self._pair_covariances(F, Zs_p, F.border_rows(Zs_p, Xb_p), first, second, nonzero_p)

        P = pi[:, None, :]  # effects x 1 x nodes

        def centred(x):
            x = padded(x)
            mean = np.sum(P * x, axis=2)
            return x - mean[:, :, None], mean

        st, _ = centred(S)
        l2t, _ = centred(-W)
        l3t, a3 = centred(-dw)
        Ps = P * st
        Vd = np.einsum("jaa->ja", V)
        c23 = np.einsum("jak,jbk->jab", P * l2t, st)  # Cov(l''_a, s_b)
        r = np.einsum("jab,jbk->jak", V, st)  # sum_b V_ab s~_b at each node
        q = np.sum(st * r, axis=1)  # s~' V s~ at each node
        w = pi  # effects x nodes
        # tau_i = sum_kl g_ikl V_kl
        tau = (a3 * Vd + 2.0 * np.einsum("jab,jab->ja", c23, V) + np.einsum("jkb,jk->jb", c23, Vd)
               + np.sum(Ps * q[:, None, :], axis=2))
        q4 = q33 = None
        if third:
            # sum_iklm g_iklm V_ik V_lm
            _, a4 = centred(-d2w)
            c34 = np.einsum("jak,jbk->jab", P * l3t, st)  # Cov(l'''_a, s_b)
            c22 = np.einsum("jak,jbk->jab", P * l2t, l2t)  # Cov(l''_a, l''_b)
            C = np.einsum("jak,jbk->jab", Ps, st)  # Cov(s_a, s_b)
            CV = np.einsum("jab,jbc->jac", C, V)
            q4 = (np.sum(a4 * Vd**2, axis=1) + 4.0 * np.einsum("jab,ja,jab->j", c34, Vd, V)
                  + np.einsum("jab,ja,jb->j", c22, Vd, Vd) + 2.0 * np.einsum("jab,jab->j", c22, V**2)
                  + 2.0 * np.sum(w * np.sum(l2t * Vd[:, :, None], axis=1) * q, axis=1)
                  + 4.0 * np.sum(w * np.sum(l2t * r**2, axis=1), axis=1)
                  + np.sum(w * q**2, axis=1) - np.sum(w * q, axis=1) ** 2 - 2.0 * np.einsum("jac,jca->j", CV, CV))
            q4 = float(q4.sum())
            # each effect's third-derivative tensor, contracted with itself through V
            # g3_jabc = sum_k Ps_jak st_jbk st_jck + d_ab d_bc a3_ja + d_ab c23_jac + d_ac c23_jab + d_bc c23_jba
            # (batched matrix products: a three-operand einsum took 2 ms here)
            n_k = st.shape[2]
            g3 = np.matmul((Ps[:, :, None, :] * st[:, None, :, :]).reshape(m, n_max * n_max, n_k),
                           st.transpose(0, 2, 1)).reshape(m, n_max, n_max, n_max)
            for a_ in range(n_max):
                g3[:, a_, a_, a_] += a3[:, a_]
                g3[:, a_, a_, :] += c23[:, a_, :]
                g3[:, a_, :, a_] += c23[:, a_, :]
                g3[:, :, a_, a_] += c23[:, a_, :]
            # sum g3_jabc V_jai V_jbk V_jcl g3_jikl: g3 carried through V along each axis in turn
            Vt = V.transpose(0, 2, 1)
            T = np.matmul(g3.reshape(m, n_max * n_max, n_max), V).reshape(g3.shape)  # [j, a, b, l]
            T = np.matmul(Vt[:, None], T)  # [j, a, k, l]
            T = np.matmul(Vt, T.reshape(m, n_max, -1))  # [j, i, (k, l)]
            q33 = float(np.sum(T * g3.reshape(m, n_max, -1)))
        tau_rows = tau[ie.local, slot]
        t_B = Xb_p.T @ tau_rows
        t_A = Zs_p.T @ tau_rows if sparse else np.zeros(0)
        if Xb_r.shape[0]:  # rows outside P: the plain rows' terms
            eta_r = self.Xr @ fe + self.ZDr @ uD + (0.0 if self.off_r is None else self.off_r)
            v = self._pair_covariances(F, Zs_r, F.border_rows(Zs_r, Xb_r), rest, rest, nonzero_r)
            l3r = -fam.weight_derivative(self.yr, eta_r, self.tr)
            if q33 is not None:
                q4 += float(-fam.weight_second_derivative(self.yr, eta_r, self.tr) @ v**2)
                q33 += float(l3r**2 @ v**3)
            t_B = t_B + Xb_r.T @ (l3r * v)
            if sparse:
                t_A = t_A + Zs_r.T @ (l3r * v)
        x_A, x_B = F.solve(t_A, t_B)
        return q4, q33, t_A, t_B, x_A, x_B

    def second_order(self, vcp, optimum=None):
        r"""The second-order correction of the Laplace approximation over :math:`a = (u_D, fe)`
        at the optimum of :meth:`log_marginal` at ``vcp`` (None beyond :data:`SECOND_ORDER_MAX`
        entries of the effects' third-derivative tensors).

        :math:`F(a) = \sum_j g_j(o_j) + \sum_{i \notin P} \ell_i(o_i) + \text{quadratic}`, with
        :math:`o_j = \tilde X_j a` the offsets of the rows of effect j (:math:`\tilde x_i = (z_{Di}, x_i)`)
        and :math:`g_j = \log I_j`. As for the rows of the plain Laplace value (Shun & McCullagh 1995),

        .. math::

            \epsilon = \tfrac18 \sum_j \sum g^{(j)}_{iklm} V_{ik} V_{lm} + \tfrac18\, t^\top \Sigma t
              + \tfrac1{12} \sum_j \sum g^{(j)}_{ikl} g^{(j)}_{i'k'l'} V_{ii'} V_{kk'} V_{ll'},

        :math:`V = \tilde X \Sigma \tilde X^\top` within an effect (in the sparse layout from the
        selected inverse of the other components' block: the columns of two rows of one effect share
        a row of the Hessian), :math:`t = \sum_j \tilde X_j^\top \tau_j`,
        :math:`\tau_{j,i} = \sum_{kl} g^{(j)}_{ikl} V_{kl}` (the last term keeps the pairs of one
        effect). The derivatives of :math:`g_j` are tilted expectations and joint cumulants of the
        rows' derivatives of :math:`\ell` over the quadrature's nodes: with :math:`\Phi = \sum_i \ell_i`,
        whose derivatives are diagonal in the rows, :math:`\partial^3 g = \mathrm E\,\partial^3\Phi
        + 3\,\mathrm{Cov}(\partial^2\Phi, \partial\Phi) + \kappa_3(\partial\Phi)` (symmetrised) and
        :math:`\partial^4 g = \mathrm E\,\partial^4\Phi + 4\,\mathrm{Cov}(\partial^3\Phi, \partial\Phi)
        + 3\,\mathrm{Cov}(\partial^2\Phi, \partial^2\Phi) + 6\,\kappa_3(\partial^2\Phi, \partial\Phi, \partial\Phi)
        + \kappa_4(\partial\Phi)`.
        """
        return self.outer_terms(vcp, optimum)[0]

    def outer_terms(self, vcp, optimum=None):
        """:meth:`second_order` and :meth:`mean_shift` at the optimum of :meth:`log_marginal` at ``vcp``
        from one pass: ``(correction, (shift_D, shift_fe))``, either None where not computed."""
        optimum = self.last if optimum is None else optimum
        terms = None if optimum is None else self._skewness(vcp, optimum)
        if terms is None:
            return None, None
        q4, q33, t_A, t_B, x_A, x_B = terms
        shift = self._shift(x_A, x_B)
        if q33 is None:
            return None, shift
        return q4 / 8.0 + float(t_A @ x_A + t_B @ x_B) / 8.0 + q33 / 12.0, shift

    def _shift(self, x_A, x_B):
        r""":math:`\tfrac12 H^{-1} t` (``x`` in the factor's blocks) as ``(shift_D, shift_fe)``."""
        nD = self.D.size
        if self.dense:
            return 0.5 * x_B[:nD], 0.5 * x_B[nD:]
        return 0.5 * x_A if nD else np.zeros(0), 0.5 * x_B

    def observation_shift(self, vcp, fe, fe_cov, h=_SHIFT_STEP):
        r"""The fixed effects' posterior mean minus mode under :math:`\exp F` at ``vcp`` on the route with an
        observation-level component (:attr:`inner`; the Laplace then runs over the fixed effects alone),
        :math:`\tfrac12\,\Sigma t`, with :math:`t_r = \sum_{st} \partial^3_{rst} F\, \Sigma_{st}` from the
        gradient by central differences along the columns :math:`l_m` of a root of :math:`\Sigma`
        (``fe_cov``):

        .. math::

            t \approx \sum_m \frac{\nabla F(\hat a + h l_m) + \nabla F(\hat a - h l_m) - 2\nabla F(\hat a)}{h^2}.

        The family's third derivatives are not tabulated for the integrated rows (:meth:`_skewness`), and
        their fixed effects are skewed: eight groups of four binary rows, each with its own effect, had the
        slope's mean 0.14 posterior SD short of NUTS's at the mode. The step ``h`` (in posterior SDs)
        averages the third derivative over the bulk rather than taking it at the mode.
        """
        fun = self.objective(np.asarray(vcp, dtype=float))
        none = np.zeros(0)
        root = np.linalg.cholesky(0.5 * (fe_cov + fe_cov.T))
        g0 = fun(none, fe, False)[2]
        t = np.zeros_like(g0)
        for col in root.T:
            t += fun(none, fe + h * col, False)[2] + fun(none, fe - h * col, False)[2] - 2.0 * g0
        return 0.5 * fe_cov @ (t / h**2)

    def widening_estimate(self, vcp, fe, fe_cov):
        r"""A one-pass estimate of how far :meth:`covariance_factor` moves from the identity: the largest
        :math:`|\lambda(\Delta)|` of its series with the tensors of the rows' own likelihood along the
        effective design, with each effect at its conditional mode given ``fe`` and moving with it:
        :math:`\tilde x_i = L^\top (x_i - z_i \sum_{i' \in j} z_{i'} w_{i'} x_{i'} / c_j)` (rows of no
        effect: :math:`L^\top x_i`), :math:`a_{klm} = -\sum_i w'_i \tilde x_{ik} \tilde x_{il}
        \tilde x_{im}` and :math:`\sum_m b_{klmm} = -\sum_i w''_i \tilde x_{ik} \tilde x_{il}
        |\tilde x_i|^2`. It leaves out the terms of the effects' own curvature (their log-determinants):
        on the accuracy cases the factor's deviation was 0.17-5.6 times this estimate (the most on Poisson
        pairs with an SD of 1.8, where those terms weigh), on the benchmark designs 1.0-1.8 times. None where
        it does not apply: effects of two coordinates, an observation-level component inside the rule, other
        components, more than :data:`_ESTIMATE_FE_MAX` fixed effects (:math:`p^3` per row), or a ``fe_cov`` that
        is not positive definite."""
        ie, p = self.ie, fe.size
        if ie.d != 1 or self.inner is not None or self.D.size or not 0 < p <= _ESTIMATE_FE_MAX:
            return None
        family = self.model.family
        try:
            L = np.linalg.cholesky(0.5 * (fe_cov + fe_cov.T))
        except np.linalg.LinAlgError:
            return None
        a = self.Xp @ fe if self.off_p is None else self.Xp @ fe + self.off_p
        u, c = ie.modes(family, a, ie.precision(np.asarray(vcp, dtype=float)), np.zeros(ie.m))
        s, w = family.score_weight(ie.y, a + ie.z * u[ie.local], ie.trials)
        w1, w2 = family.weight_derivatives(ie.y, s, w, ie.trials)
        moved = (self.group @ ((ie.z * w)[:, None] * self.Xp)) / c[:, None]  # d(effect mode)/d fe, negated
        xt = [(self.Xp - ie.z[:, None] * moved[ie.local]) @ L]
        d1, d2 = [w1], [w2]
        if self.yr.size:
            ar = self.Xr @ fe if self.off_r is None else self.Xr @ fe + self.off_r
            sr, wr = family.score_weight(self.yr, ar, self.tr)
            w1r, w2r = family.weight_derivatives(self.yr, sr, wr, self.tr)
            xt.append(self.Xr @ L)
            d1.append(w1r)
            d2.append(w2r)
        xt, d1, d2 = np.vstack(xt), np.concatenate(d1), np.concatenate(d2)
        outer = (xt[:, :, None] * xt[:, None, :]).reshape(xt.shape[0], p * p)
        A = -((d1[:, None] * xt).T @ outer).reshape(p, p, p)  # A[m] = d/dz_m of the Hessian, as there
        b = -(((d2 * np.einsum("ij,ij->i", xt, xt))[:, None] * xt).T @ xt)
        evals = np.linalg.eigvalsh(_widening_series(A, b))
        return float(np.abs(evals).max()) if np.all(np.isfinite(evals)) else None

    def covariance_factor(self, vcp, fe, fe_cov, h=_VARIANCE_STEP):
        r"""The fixed effects' posterior covariance under :math:`\exp F` at ``vcp`` relative to the Laplace
        one, where the Laplace runs over the fixed effects alone (no other components, :attr:`D` empty):
        :math:`I + \Delta` in the coordinates :math:`z = L^{-1}(fe - \widehat{fe})`, :math:`LL^\top =
        \Sigma` (``fe_cov``), so that :math:`\mathrm{Cov}\,fe \approx L (I + \Delta) L^\top`.

        With :math:`F(z) = -\tfrac12 |z|^2 + \tfrac16 a_{ijk} z_i z_j z_k + \tfrac1{24} b_{ijkl} z_i z_j z_k z_l`
        and Isserlis' theorem, to the order of the mean shift :math:`\tfrac12 t` (:math:`t_i = \sum_j a_{ijj}`),

        .. math::

            \Delta_{ij} = \tfrac12 \sum_m b_{ijmm} + \tfrac12 \sum_m a_{ijm} t_m + \tfrac12 \sum_{lm} a_{ilm} a_{jlm}

        (in one dimension :math:`\sigma^2 (1 + b/2 + a^2)`). The tensors come from the Hessian of F at
        :math:`\pm h\,e_m` (2p evaluations): :math:`a_{\cdot\cdot m} = -(H_m^+ - H_m^-)/2h`,
        :math:`\sum_m b_{\cdot\cdot mm} = -\sum_m (H_m^+ + H_m^- - 2I)/h^2`. A few events per level leave
        the fixed effects skewed *and* wider than the curvature at the mode says: cbpp's period 4 (eleven
        events) 2.3 % and a slope under near-separation 2.7 %, as a Gauss-Hermite product rule of
        :math:`\exp F` finds; this gets both to 0.1 %. The eigenvalues of :math:`I + \Delta` are kept within
        [0.5, 2] (the series is for mild skewness). Returns None where :attr:`D` is not empty, and where the
        Hessian of F at the centre, evaluated again, differs from the one ``fe_cov`` inverts by more than
        :data:`_HESSIAN_NOISE_MAX` in z: the second differences (divided by :math:`h^2`) would then measure the
        rounding of the Hessians, not the curvature's change. Millions of trials per row do that (the nested
        Hessian is a difference of two terms of the order of the trials): at 1e8 trials the Hessians were 28 %
        apart, and the factor, clipped, put the Intercept's SD at 0.73 or 1.41 times the right one.
        """
        p = fe.size
        if self.D.size or p == 0:
            return None
        fun = self.objective(np.asarray(vcp, dtype=float))
        none = np.zeros(0)
        L = np.linalg.cholesky(0.5 * (fe_cov + fe_cov.T))
        centre = L.T @ fun(none, fe, True)[5] @ L  # (the -Hessian: I up to rounding)
        if not np.all(np.isfinite(centre)) or np.abs(centre - np.eye(p)).max() > _HESSIAN_NOISE_MAX:
            return None
        A = np.empty((p, p, p))  # A[m] = d/dz_m of the Hessian of F
        b = np.zeros((p, p))  # sum_m d^2/dz_m^2 of the Hessian of F
        for m in range(p):
            Hp, Hm = (L.T @ fun(none, fe + s * h * L[:, m], True)[5] @ L for s in (1.0, -1.0))
            A[m] = -(Hp - Hm) / (2.0 * h)
            b -= (Hp + Hm - 2.0 * np.eye(p)) / h**2
        evals, evecs = np.linalg.eigh(np.eye(p) + _widening_series(A, b))
        if not np.all(np.isfinite(evals)):
            return None
        return (evecs * np.clip(evals, 0.5, 2.0)) @ evecs.T

    def mean_shift(self, vcp, uD, fe):
        r"""Posterior mean minus mode of :math:`a = (u_D, fe)` under :math:`\exp F` at ``vcp`` (solved
        from ``(u_D, fe)``): ``(shift_D, shift_fe)``.

        To first order, :math:`\mathrm{E}\,a - \hat a = -\tfrac12\,\Sigma\,\nabla_a \log\det H(a)
        = \tfrac12\,\Sigma t` at the mode (:math:`H = -\nabla^2 F`, :math:`\Sigma = H^{-1}`;
        :math:`\partial_r \log\det H = -\mathrm{tr}(\Sigma\,\partial_r \nabla^2 F) = -t_r`, with
        :math:`t` of :meth:`second_order`): the skewness of the integrated likelihood. With binary
        rows the effects' posteriors are skewed away from 0 (a large item effect saturates its rows'
        probabilities): sparse binary crossed designs had their items' means 0.1-0.17 posterior SDs
        short of NUTS's at the mode. Zero where an effect's rows are too many for the within-effect
        covariances (:data:`SECOND_ORDER_MAX`; the skewness is then small).
        """
        nD, p = self.D.size, self.model.k_fep
        self.start = None  # solve from the given point (the optimum, normally), not the last one
        terms = None
        if np.isfinite(self.log_marginal(vcp, uD, fe)):
            if self.inner is not None:  # (the Laplace over the fixed effects alone: no third derivatives)
                return np.zeros(nD), self.observation_shift(vcp, self.last[1], self.last[2].border_inverse())
            terms = self._skewness(vcp, self.last, third=False)
        if terms is None:
            return np.zeros(nD), np.zeros(p)
        return self._shift(terms[4], terms[5])
