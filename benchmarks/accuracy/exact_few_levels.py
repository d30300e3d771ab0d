"""Exact posterior moments for a single factor of a few levels, by importance sampling (not MCMC).

    python benchmarks/accuracy/exact_few_levels.py CASE [--millions 4 --seeds 0 1]

For ``y ~ x + (1 | g)`` with K levels write :math:`c_g = \\text{Intercept} + u_g`. Given
:math:`(c, \\sigma)` the Intercept is Gaussian (prior :math:`N(0, fe_p^2)`, :math:`u_g \\sim N(0,
\\sigma^2)`), so it is integrated out analytically: :math:`c \\sim MVN(0, \\sigma^2 I + fe_p^2 J)`. The
remaining posterior of :math:`(c, \\text{slope}, \\log\\sigma)` is sampled by importance sampling, (c, slope)
from an equal mixture of multivariate t's around the likelihood's mode (df 4 at 1.5 times its Laplace
scale, df 2 at 4 times) and the log-SD from N(-0.5, 1.5^2); the Intercept's and the effects' moments
follow from the conditional Gaussian. With two or three levels NUTS gives these SDs only to 5-15 %
(its runs disagree that much); this gives them to about 0.1 % (the seeds' spread is stored). Writes
``reference/<case>.exact_is.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import optimize, stats

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from cases import BY_NAME  # noqa: E402

_BLOCK = 250_000


def moments(case, millions=4, seed=0):
    """Posterior means and SDs of fe, vcp and vc (and the importance weights' ESS) for one seed."""
    model = case.model()
    X, Z, y = model.exog, model.exog_vc.toarray(), model.endog
    K = Z.shape[1]
    if X.shape[1] != 2 or model.k_vcp != 1 or model.offset is not None:
        raise SystemExit(f"{case.name}: needs y ~ x + (1 | g) without an offset")
    fe_p2, vcp_p = model.fe_p**2, model.vcp_p
    trials = np.ones_like(y) if model.trials is None else model.trials
    A = np.column_stack([Z, X[:, 1]])  # eta = c_g + slope * x

    def loglik(theta):
        eta = theta @ A.T
        if model.family.name == "poisson":
            return (y * eta - np.exp(eta)).sum(-1)
        return (y * eta - trials * np.logaddexp(0.0, eta)).sum(-1)

    centre = optimize.minimize(lambda t: -(loglik(t[None])[0] - 0.5 * t[K] ** 2 / fe_p2 - 0.5 * t[:K] @ t[:K] / 9.0),
                               np.zeros(K + 1), method="BFGS")
    rng = np.random.default_rng(seed)
    narrow = stats.multivariate_t(loc=centre.x, shape=centre.hess_inv * 1.5**2, df=4)
    wide = stats.multivariate_t(loc=centre.x, shape=centre.hess_inv * 4.0**2, df=2)
    v_mu, v_sd = -0.5, 1.5
    total = total2 = 0.0
    sums, shift = None, None
    for _ in range(int(millions * 1_000_000 // _BLOCK)):
        th = np.where(rng.random(_BLOCK)[:, None] < 0.5, narrow.rvs(_BLOCK, random_state=rng),
                      wide.rvs(_BLOCK, random_state=rng))
        vcp = rng.normal(v_mu, v_sd, _BLOCK)
        s2 = np.exp(2.0 * vcp)
        c, slope = th[:, :K], th[:, K]
        sc = c.sum(axis=1)
        # MVN(c; 0, s2 I + f J): inverse (I - f / (s2 + K f) J) / s2, determinant s2^(K-1) (s2 + K f)
        quad = ((c**2).sum(axis=1) - fe_p2 / (s2 + K * fe_p2) * sc**2) / s2
        log_mvn = -0.5 * (K * np.log(2 * np.pi) + (K - 1) * np.log(s2) + np.log(s2 + K * fe_p2) + quad)
        log_w = (loglik(th) + log_mvn + stats.norm.logpdf(slope, 0.0, np.sqrt(fe_p2))
                 + stats.norm.logpdf(vcp, 0.0, vcp_p) - np.logaddexp(narrow.logpdf(th), wide.logpdf(th))
                 + np.log(2.0) - stats.norm.logpdf(vcp, v_mu, v_sd))
        v = 1.0 / (1.0 / fe_p2 + K / s2)  # the Intercept given (c, sigma): N(m, v)
        m = sc / s2 * v
        u = c - m[:, None]
        block = np.column_stack([m, v + m**2, slope, slope**2, vcp, vcp**2, u, u**2 + v[:, None]])
        shift = log_w.max() if shift is None else shift
        w = np.exp(log_w - shift)
        total, total2 = total + w.sum(), total2 + (w**2).sum()
        sums = w @ block if sums is None else sums + w @ block
    E = sums / total

    def sd(i):
        return float(np.sqrt(E[i + 1] - E[i] ** 2))

    u_mean, u_sq = E[6:6 + K], E[6 + K:6 + 2 * K]
    return {"fe_mean": [E[0], E[2]], "fe_sd": [sd(0), sd(2)], "vcp_mean": [E[4]], "vcp_sd": [sd(4)],
            "vc_mean": u_mean.tolist(), "vc_sd": np.sqrt(u_sq - u_mean**2).tolist(), "ess": total**2 / total2}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case")
    ap.add_argument("--millions", type=float, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    case = BY_NAME[args.case]
    runs = [moments(case, args.millions, s) for s in args.seeds]
    model = case.model()
    keys = ("fe_mean", "fe_sd", "vcp_mean", "vcp_sd", "vc_mean", "vc_sd")
    out = {"case": case.name, "formula": case.formula, "family": case.family, "fe_p": case.fe_p,
           "vcp_p": case.vcp_p, "method": "importance sampling, the Intercept integrated analytically",
           "samples_per_seed": int(args.millions * 1_000_000), "seeds": args.seeds,
           "ess_min": float(min(r["ess"] for r in runs)),
           "fe_names": model.fep_names, "vcp_names": model.vcp_names, "vc_names": model.vc_names,
           **{k: np.mean([r[k] for r in runs], axis=0).tolist() for k in keys},
           "spread": {k: np.ptp([r[k] for r in runs], axis=0).tolist() for k in keys},
           "command": (f"python benchmarks/accuracy/exact_few_levels.py {case.name} --millions {args.millions:g} "
                       f"--seeds {' '.join(map(str, args.seeds))}")}
    path = HERE / "reference" / f"{case.name}.exact_is.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: np.round(out[k], 4).tolist() for k in keys}), "ess", round(out["ess_min"]), "->", path)


if __name__ == "__main__":
    main()
