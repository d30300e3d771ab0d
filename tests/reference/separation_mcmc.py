"""Reference posterior of cbpp with a separating predictor, by adaptive random-walk Metropolis (the numbers in
tests/core/test_separation.py::test_separated_fit_matches_mcmc_with_random_effects).

Model: incidence ~ Binomial(size, logit^-1(b0 + b1 x + exp(s) z[herd])), x = 1 for the rows with cases,
z ~ N(0, 1), s ~ N(0, 1), b ~ N(0, fe_p^2). Run: python tests/reference/separation_mcmc.py FE_P  (about 40 s).
Output of `python tests/reference/separation_mcmc.py 2` and `... 100` (300,000 steps, the first third dropped):
    fe_p 2: b0 -4.994 (SD 0.685), b1 3.482 (SD 0.668), s -0.228 (SD 0.263)
    quarters' b0 means: [-4.993, -4.998, -5.001, -4.983]
    fe_p 100: b0 -60.6 (SD 41.3), b1 59.04 (SD 41.3), s -0.233 (SD 0.267)
    quarters' b0 means: [-58.205, -61.105, -59.783, -63.325]
"""
import sys

import numpy as np
from scipy.special import log_expit

from mglm_core.datasets import load


def main(fe_p, steps=300_000, seed=0):
    cbpp = load("cbpp")
    y = cbpp.incidence.to_numpy(float)
    n = cbpp["size"].to_numpy(float)
    x = (y > 0).astype(float)
    herd = cbpp.herd.cat.codes.to_numpy()

    def logp(t):
        b0, b1, s, z = t[0], t[1], t[2], t[3:]
        eta = b0 + b1 * x + np.exp(s) * z[herd]
        return ((y * log_expit(eta) + (n - y) * log_expit(-eta)).sum() - 0.5 * (b0**2 + b1**2) / fe_p**2
                - 0.5 * s**2 - 0.5 * (z**2).sum())

    rng = np.random.default_rng(seed)
    d = 18
    t = np.zeros(d)
    t[0], t[1] = -2.5 * min(fe_p, 20.0), 2.0 * min(fe_p, 20.0)
    cur, cov, draws = logp(t), np.eye(d) * 0.1, []
    for it in range(steps):
        if it > 2000 and it % 5000 == 0:  # (adapted from the last 20,000 draws)
            cov = np.cov(np.array(draws[-20000:]).T) * 2.38**2 / d + 1e-6 * np.eye(d)
        prop = t + rng.multivariate_normal(np.zeros(d), cov)
        lq = logp(prop)
        if np.log(rng.random()) < lq - cur:
            t, cur = prop, lq
        draws.append(t.copy())
    S = np.array(draws[steps // 3:])
    print(f"fe_p {fe_p:g}: b0 {S[:, 0].mean():.4g} (SD {S[:, 0].std():.3g}), b1 {S[:, 1].mean():.4g} "
          f"(SD {S[:, 1].std():.3g}), s {S[:, 2].mean():.3g} (SD {S[:, 2].std():.3g})")
    print("quarters' b0 means:", [round(float(q[:, 0].mean()), 3) for q in np.array_split(S, 4)])


if __name__ == "__main__":
    main(float(sys.argv[1]))
