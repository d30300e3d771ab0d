r"""Exact posterior moments for one grouping factor, ``y ~ x + (1 | g)``, by deterministic quadrature (not MCMC).

    python benchmarks/accuracy/exact_one_factor.py --seed 20261214 h08   (a held-out case, by its prefix)
    python benchmarks/accuracy/exact_one_factor.py sim_poisson_single       (a harness case, by its name)

Given the fixed effects :math:`b` and the log-SD :math:`v` the effects are independent, and each one's integral

.. math::

    I_j(b, v) = \int \prod_{i \in j} p(y_i \mid x_i^\top b + u)\, N(u; 0, e^{2v})\, du

is taken by adaptive Gauss–Hermite quadrature (:data:`NODES` nodes about its mode, scaled by its curvature:
each effect within 1e-7 of scipy's adaptive quadrature on Poisson pairs with an SD of 2.5, where 40 nodes were
1e-6 off on a pair of zero counts), with its tilted mean and second moment. The posterior of :math:`(b, v)`,
:math:`p(b, v \mid y) \propto \prod_j I_j(b, v)\, N(b; 0, fe_p^2 I)\, N(v; 0, vcp_p^2)`, is tabulated on a
regular grid in the coordinates standardised at its mode, extended until the density on every face of the grid is
below :math:`e^{-20}` of its top; the moments of :math:`b`, :math:`v` and of each effect (mixtures of the tilted
moments) are sums over the grid. It is run at two steps (0.3 and 0.45 standardised units) and the largest
difference of a mean or an SD between them, in posterior SDs, is stored as ``quadrature_error``.

NUTS cannot sample some of these posteriors: Poisson counts of one row per effect with an SD of 3 (counts from 0
to 184,022) left it at R-hat 1.95. This needs no mixing, only that the posterior of the two or three
:math:`(b, v)` be smooth on the grid's scale. Writes ``<store>/<case>.exact.json`` beside the NUTS reference
(``holdout.py`` judges by the exact one where it exists), or ``reference/<case>.exact.json`` for a harness case.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy import optimize
from scipy.special import expit, gammaln, logsumexp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

#: Gauss–Hermite nodes per effect (adaptive: about each effect's conditional mode).
NODES = 64
#: The grid is extended until its faces are this far (in log density) below its top.
EDGE_DROP = 20.0
#: Entries (grid points x rows x nodes) per batch.
_BATCH = 4_000_000


class OneFactor:
    """The per-effect integrals of ``y ~ x + (1 | g)`` (one component, a coefficient of 1 in every row)."""

    def __init__(self, model):
        Z = model.exog_vc.tocsr()
        if model.k_vcp != 1 or np.any(np.diff(Z.indptr) != 1) or np.any(Z.data != 1.0):
            raise SystemExit("needs one random intercept per row of a single factor: y ~ x + (1 | g)")
        order = np.argsort(Z.indices, kind="stable")
        self.g = Z.indices[order]
        self.m = Z.shape[1]
        self.starts = np.flatnonzero(np.r_[True, self.g[1:] != self.g[:-1]])
        if self.starts.size != self.m:
            raise SystemExit("every level of the factor needs a row")
        self.X = model.exog[order]
        self.y = model.endog[order]
        self.off = np.zeros(self.y.size) if model.offset is None else model.offset[order]
        self.poisson = model.family.name == "poisson"
        self.n = None if model.trials is None else model.trials[order]
        n = 1.0 if self.n is None else self.n
        self.const = -gammaln(self.y + 1) if self.poisson else gammaln(n + 1) - gammaln(self.y + 1) - gammaln(n - self.y + 1)
        self.G = sp.csr_matrix((np.ones(self.y.size), (self.g, np.arange(self.y.size))), shape=(self.m, self.y.size))
        self.fe_p, self.vcp_p = model.fe_p, model.vcp_p
        self.x, w = np.polynomial.hermite.hermgauss(NODES)
        self.logw = np.log(w) + self.x**2

    def _terms(self, eta):
        """Log-likelihood (without constants), score and weight of every row at ``eta`` (parameter rows x
        rows, or x nodes too)."""
        y = self.y if eta.ndim == 2 else self.y[:, None]
        if self.poisson:
            e = np.exp(np.minimum(eta, 700.0))
            return y * eta - e, y - e, e
        n = 1.0 if self.n is None else (self.n if eta.ndim == 2 else self.n[:, None])
        p = expit(eta)
        return y * eta - n * np.logaddexp(0.0, eta), y - n * p, n * p * (1.0 - p)

    def evaluate(self, b, v):
        """For parameter rows ``b`` (B x p) and ``v`` (B): the log posterior (unnormalised) and each effect's
        tilted mean and second moment (B x m)."""
        a = b @ self.X.T + self.off  # B x n
        prec = np.exp(-2.0 * v)[:, None]
        u = np.zeros((b.shape[0], self.m))
        for _ in range(200):
            _, s, w = self._terms(a + u[:, self.g])
            grad = (self.G @ s.T).T - prec * u
            curv = (self.G @ w.T).T + prec
            step = np.clip(grad / curv, -2.0, 2.0)
            u += step
            if np.abs(step).max() < 1e-10:
                break
        _, _, w = self._terms(a + u[:, self.g])
        sc = np.sqrt(2.0 / ((self.G @ w.T).T + prec))  # B x m
        U = u[:, :, None] + sc[:, :, None] * self.x  # B x m x K
        ll = self._terms(a[:, :, None] + U[:, self.g, :])[0] + self.const[:, None]  # B x n x K
        per = np.add.reduceat(ll, self.starts, axis=1)  # B x m x K
        lw = per - 0.5 * prec[:, :, None] * U**2 + self.logw
        log_i = logsumexp(lw, axis=2)
        pi = np.exp(lw - log_i[:, :, None])
        log_i += np.log(sc) + 0.5 * np.log(prec / (2.0 * np.pi))
        logp = log_i.sum(axis=1) - 0.5 * np.sum(b**2, axis=1) / self.fe_p**2 - 0.5 * v**2 / self.vcp_p**2
        return logp, np.einsum("bjk,bjk->bj", pi, U), np.einsum("bjk,bjk->bj", pi, U**2)

    def batches(self, theta):
        """:meth:`evaluate` over parameter rows ``theta`` (b then v) in batches."""
        size = max(1, int(_BATCH // (self.y.size * NODES)))
        for lo in range(0, len(theta), size):
            t = theta[lo:lo + size]
            yield self.evaluate(t[:, :-1], t[:, -1])


def _log_post(of, t):
    return float(of.evaluate(t[None, :-1], t[-1:])[0][0])


def _mode(of, p):
    """The posterior mode of (b, v) and the root of the inverse -Hessian there (central differences)."""
    best = optimize.minimize(lambda t: -_log_post(of, t), np.zeros(p + 1), method="BFGS", options={"gtol": 1e-7})
    t0, d = best.x, p + 1
    h = 1e-3
    H = np.empty((d, d))
    for i in range(d):
        for j in range(i, d):
            ei, ej = np.eye(d)[i] * h, np.eye(d)[j] * h
            H[i, j] = H[j, i] = -(_log_post(of, t0 + ei + ej) - _log_post(of, t0 + ei - ej)
                                  - _log_post(of, t0 - ei + ej) + _log_post(of, t0 - ei - ej)) / (4 * h * h)
    return t0, np.linalg.cholesky(np.linalg.inv(H))


def moments(of, centre, root, step):
    """Posterior means and SDs of b, v and the effects from the grid of ``step`` (standardised units)."""
    d = centre.size
    lo, hi = -np.full(d, 6.0), np.full(d, 6.0)
    while True:
        axes = [np.arange(lo[k], hi[k] + step / 2, step) for k in range(d)]
        Zg = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, d)
        theta = centre + Zg @ root.T
        logp, mu, m2 = (np.concatenate(parts) for parts in zip(*of.batches(theta)))
        top = logp.max()
        grown = False
        for k in range(d):
            for side, face in ((lo, axes[k][0]), (hi, axes[k][-1])):
                if np.max(logp[Zg[:, k] == face]) > top - EDGE_DROP:
                    side[k] += 2.0 if side is hi else -2.0
                    grown = True
        if not grown:
            break
    w = np.exp(logp - top)
    w /= w.sum()
    mean = w @ theta
    sd = np.sqrt(w @ (theta - mean) ** 2)
    vc_mean = w @ mu
    vc_sd = np.sqrt(np.maximum(w @ m2 - vc_mean**2, 0.0))
    return {"fe_mean": mean[:-1], "fe_sd": sd[:-1], "vcp_mean": mean[-1:], "vcp_sd": sd[-1:], "vc_mean": vc_mean,
            "vc_sd": vc_sd, "points": len(theta)}


def reference(case, steps=(0.3, 0.45)):
    """The exact reference of ``case`` (a dict in the NUTS references' layout)."""
    t0 = time.perf_counter()
    model = case.model()
    of = OneFactor(model)
    centre, root = _mode(of, model.k_fep)
    fine, coarse = (moments(of, centre, root, s) for s in steps)
    error = {part: float(max(np.max(np.abs(fine[f"{part}_{k}"] - coarse[f"{part}_{k}"]) / fine[f"{part}_sd"])
                             for k in ("mean", "sd")))
             for part in ("fe", "vcp", "vc")}
    return {
        "case": case.name, "formula": case.formula, "family": model.family.name, "fe_p": model.fe_p,
        "vcp_p": model.vcp_p, "method": "quadrature", "nodes": NODES, "steps": list(steps),
        "grid_points": fine["points"], "seconds": time.perf_counter() - t0,
        "command": "python benchmarks/accuracy/exact_one_factor.py " + " ".join(sys.argv[1:]),
        "fe_names": list(model.fep_names), "vcp_names": list(model.vcp_names), "vc_names": list(model.vc_names),
        **{k: np.asarray(v).tolist() for k, v in fine.items() if k != "points"},
        "quadrature_error": error,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", help="a harness case's name, or with --seed a held-out case's name or prefix (h08)")
    ap.add_argument("--seed", type=int, default=None, help="the held-out draw's seed")
    ap.add_argument("--n", type=int, default=16, help="the held-out draw's size")
    args = ap.parse_args()
    if args.seed is None:
        from cases import BY_NAME

        case, store = BY_NAME[args.case], HERE / "reference"
    else:
        import holdout

        case = next(c for c in holdout.draw_cases(args.n, args.seed) if c.name.startswith(args.case))
        store = HERE / ("holdout" if args.seed == holdout.SEED else f"holdout_{args.seed}")
    ref = reference(case)
    path = store / f"{case.name}.exact.json"
    path.write_text(json.dumps(ref, indent=1) + "\n")
    print(f"{case.name}: {ref['grid_points']} grid points, {ref['seconds']:.0f} s; fe {np.round(ref['fe_mean'], 3)} "
          f"({np.round(ref['fe_sd'], 3)}), vcp {np.round(ref['vcp_mean'], 3)} ({np.round(ref['vcp_sd'], 3)}); "
          f"quadrature error (SDs) {ref['quadrature_error']}; wrote {path}")


if __name__ == "__main__":
    main()
