"""Accuracy cases: data, model and priors, shared by the NUTS reference script and the report.

Each case is fitted under the model's exact priors (fe ~ N(0, fe_p^2), vcp ~ N(0, vcp_p^2),
vc_j ~ N(0, exp(vcp)^2)). Simulated cases are seeded; real ones come from demo_data/.
"""
from __future__ import annotations

from dataclasses import dataclass, field


import mglm_core as mg
from mglm_core.datasets import load
from mglm_core.simulate import simulate_glmm


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    formula: str
    family: str
    trials: str | None = None
    fe_p: float = 2.0
    vcp_p: float = 1.0
    data_fn: object = field(default=None, repr=False)
    slow: bool = False
    offset: str | None = None

    def data(self):
        return self.data_fn()

    def model(self, **kw):
        args = dict(data=self.data(), family=self.family, trials=self.trials, fe_p=self.fe_p, vcp_p=self.vcp_p,
                    offset=self.offset)
        args.update(kw)
        return mg.BayesMixedGLM.from_formula(self.formula, **args)


def _sim(**kw):
    return lambda: simulate_glmm(**kw).data


def _simulated(name, description, **sim):
    """A case on :func:`simulate_glmm`'s data: the formula (with the crossed factor ``h`` when
    ``n_groups2`` is given), family and trials column follow the simulation's arguments."""
    formula = "y ~ x + (1 | g)" + (" + (1 | h)" if sim.get("n_groups2") else "")
    return Case(name, description, formula, sim["family"], trials="n" if sim.get("trials") else None,
                data_fn=_sim(**sim))


def _four_components(seed=17):
    """Poisson counts with four variance components: intercepts and x-slopes of g (40 levels), and
    intercepts of two further crossed factors h (15) and s (10); SDs 0.6, 0.3, 0.4, 0.5."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = 800
    g, h, s = rng.integers(0, 40, n), rng.integers(0, 15, n), rng.integers(0, 10, n)
    x = rng.standard_normal(n)
    a, b, c, d = (rng.normal(0, sd, k) for sd, k in ((0.6, 40), (0.3, 40), (0.4, 15), (0.5, 10)))
    eta = 0.5 + 0.3 * x + a[g] + b[g] * x + c[h] + d[s]
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)).astype(float), "x": x, "g": [f"g{i:02d}" for i in g],
                         "h": [f"h{i:02d}" for i in h], "s": [f"s{i:02d}" for i in s]})


def _poisson_zero_groups(seed=48):
    """Poisson counts of 30 groups of 3 rows, SD 2.5 and a low baseline: about half the groups have
    only zeros (one-sided conditional posteriors)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(30), 3)
    x = rng.standard_normal(g.size)
    u = rng.normal(0, 2.5, 30)
    eta = -1.5 + 0.3 * x + u[g]
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)).astype(float), "x": x, "g": [f"g{i:02d}" for i in g]})


#: Contraception's fixed effects (age and age^2 on their raw scale).
_CONTRACEPTION = "use_01 ~ age + I(age^2) + urban + livch"


def _contraception():
    df = load("Contraception")
    return df


def _contraception_urban():
    """Contraception with urban residence as a 0/1 column (for district-level urban slopes)."""
    df = load("Contraception")
    df["urbanY"] = (df["urban"] == "Y").astype(float)
    return df


def _cbpp_observations():
    """cbpp with one level per row (observation-level effects: extra-binomial variation)."""
    df = load("cbpp")
    df["obs"] = [f"o{i:02d}" for i in range(len(df))]
    return df


def _poisson_offset(seed=104):
    """Poisson counts with exposure E ~ U(0.5, 5) (offset log E), 50 groups of 6 rows, SD 0.5."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(50), 6)
    x = rng.standard_normal(g.size)
    expo = rng.uniform(0.5, 5.0, g.size)
    u = rng.normal(0, 0.5, 50)
    eta = np.log(expo) - 0.3 + 0.4 * x + u[g]
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)).astype(float), "x": x, "logE": np.log(expo),
                         "g": [f"g{i:02d}" for i in g]})


def _binomial_varying_trials(seed=105):
    """Binomial with 1..20 trials per row (uniform), 25 groups of 6 rows, SD 0.8."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(25), 6)
    x = rng.standard_normal(g.size)
    n = rng.integers(1, 21, g.size)
    u = rng.normal(0, 0.8, 25)
    eta = -0.4 + 0.7 * x + u[g]
    y = rng.binomial(n, 1 / (1 + np.exp(-eta)))
    return pd.DataFrame({"y": y.astype(float), "n": n.astype(float), "x": x, "g": [f"g{i:02d}" for i in g]})


def _poisson_nested(seed=107):
    """Poisson, nested: 15 levels of a, 4 levels of b within each a (60 a:b cells), 5 rows per cell;
    SDs 0.7 (a) and 0.4 (a:b). b's labels repeat across a (b1..b4), so only a:b identifies a cell."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    a = np.repeat(np.arange(15), 20)
    b = np.tile(np.repeat(np.arange(4), 5), 15)
    x = rng.standard_normal(a.size)
    ua = rng.normal(0, 0.7, 15)
    uab = rng.normal(0, 0.4, (15, 4))
    eta = 0.3 + 0.3 * x + ua[a] + uab[a, b]
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)).astype(float), "x": x,
                         "a": [f"a{i:02d}" for i in a], "b": [f"b{i}" for i in b]})


def _binary_slopes(seed=108):
    """Binary, 60 groups of 10, independent intercepts (SD 0.8) and x-slopes (SD 0.6)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(60), 10)
    x = rng.standard_normal(g.size)
    u, v = rng.normal(0, 0.8, 60), rng.normal(0, 0.6, 60)
    eta = -0.2 + 0.8 * x + u[g] + v[g] * x
    y = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    return pd.DataFrame({"y": y.astype(float), "x": x, "g": [f"g{i:02d}" for i in g]})


def _slopes_with_crossed(seed, n_groups, rows, n_h, sds, fe, respond, labels=("g{:03d}", "h{:03d}"), **extra):
    """Intercepts and x-slopes of ``n_groups`` groups of ``rows`` rows and intercepts of a factor ``h`` of
    ``n_h`` levels drawn at random per row (SDs ``sds``, in that order), fixed effects ``fe`` (intercept, slope
    of x ~ N(0, 1)), the response drawn by ``respond(rng, eta)``; ``labels`` format the level codes and
    ``extra`` columns (trials) follow the response. (The draws come in one order for every case that uses it:
    h, x, the three effects, the response.)"""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), rows)
    h = rng.integers(0, n_h, g.size)
    x = rng.standard_normal(g.size)
    a, b, c = rng.normal(0, sds[0], n_groups), rng.normal(0, sds[1], n_groups), rng.normal(0, sds[2], n_h)
    eta = fe[0] + fe[1] * x + a[g] + b[g] * x + c[h]
    return pd.DataFrame({"y": respond(rng, eta), **extra, "x": x, "g": [labels[0].format(i) for i in g],
                         "h": [labels[1].format(i) for i in h]})


def _binomial(trials):
    """``respond`` for :func:`_slopes_with_crossed`: binomial counts of ``trials`` (as floats)."""
    import numpy as np

    return lambda rng, eta: rng.binomial(trials, 1 / (1 + np.exp(-eta))).astype(float)


def _binary_three_components(seed=114):
    """Binary, (1|g) + (0+x|g) + (1|h): 30 g-groups of 10 (SDs 0.9 / 0.5), h with 6 levels (SD 0.3)."""
    return _slopes_with_crossed(seed, 30, 10, 6, (0.9, 0.5, 0.3), (0.2, 0.7), _binomial(1), labels=("g{:02d}", "h{}"))


def _poisson_observations(seed=508):
    """Overdispersed Poisson: 40 groups of 5 rows (SD 0.7) and an effect per row (SD 0.5)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(40), 5)
    x = rng.standard_normal(g.size)
    eta = 0.4 + 0.3 * x + rng.normal(0, 0.7, 40)[g] + rng.normal(0, 0.5, g.size)
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)).astype(float), "x": x, "g": [f"g{i:02d}" for i in g],
                         "obs": [f"o{i:03d}" for i in range(g.size)]})


def _binary_nested(seed=509):
    """Binary, nested: 10 levels of a (SD 1), 4 levels of b within each (SD 1.5), 5 rows per cell."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    a = np.repeat(np.arange(10), 20)
    b = np.tile(np.repeat(np.arange(4), 5), 10)
    x = rng.standard_normal(a.size)
    eta = -0.3 + 0.8 * x + rng.normal(0, 1.0, 10)[a] + rng.normal(0, 1.5, (10, 4))[a, b]
    y = (rng.random(a.size) < 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"y": y, "x": x, "a": [f"a{i:02d}" for i in a], "b": [f"b{i}" for i in b]})


def _two_levels(seed, n_inner, per_outer, max_rows, sds, fe, family, inner_name):
    """Two nested factors: ``n_inner`` inner levels (SD ``sds[1]``) with 1 to ``max_rows`` rows each
    (drawn one by one), ``per_outer`` of them in each outer level ``c`` (SD ``sds[0]``); binary or
    Poisson rows with fixed effects ``fe`` (Intercept, x)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = np.array([rng.integers(1, max_rows + 1) for _ in range(n_inner)])
    inner = np.repeat(np.arange(n_inner), n)
    outer = inner // per_outer
    n_outer = n_inner // per_outer
    x = rng.standard_normal(inner.size)
    eta = fe[0] + fe[1] * x + rng.normal(0, sds[0], n_outer)[outer] + rng.normal(0, sds[1], n_inner)[inner]
    if family == "poisson":
        y = rng.poisson(np.exp(eta)).astype(float)
    else:
        y = (rng.random(inner.size) < 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"y": y, "x": x, "c": [f"c{i:03d}" for i in outer],
                         inner_name: [f"{inner_name}{i:03d}" for i in inner]})


def _mothers(seed=603):
    """Binary, guImmun-like but with more communities: 150 communities (SD 0.8) of 3 mothers each
    (SD 2), 1-3 children per mother."""
    return _two_levels(seed, 450, 3, 3, (0.8, 2.0), (0.5, 0.6), "binomial", "m")


def _mothers_big_communities(seed=705):
    """Binary: 200 communities (SD 2) of 2 mothers (SD 0.5), 1-2 children each."""
    return _two_levels(seed, 400, 2, 2, (2.0, 0.5), (-0.5, 0.5), "binomial", "m")


def _observation_level(seed, n_groups, rows, sds, fe, group, digits):
    """Poisson: ``n_groups`` groups (column ``group``) of ``rows`` rows (SD ``sds[0]``) and
    observation-level effects (SD ``sds[1]``), fixed effects ``fe`` (Intercept, x)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), rows)
    x = rng.standard_normal(g.size)
    eta = fe[0] + fe[1] * x + rng.normal(0, sds[0], n_groups)[g] + rng.normal(0, sds[1], g.size)
    y = rng.poisson(np.exp(eta)).astype(float)
    return pd.DataFrame({"y": y, "x": x, group: [f"{group}{i:0{digits[0]}d}" for i in g],
                         "obs": [f"o{i:0{digits[1]}d}" for i in range(g.size)]})


def _poisson_obs_sites(seed=706):
    """Poisson: 150 sites (SD 0.8) of 4 rows, observation-level effects (SD 0.6), low counts."""
    return _observation_level(seed, 150, 4, (0.8, 0.6), (-0.3, 0.4), "s", (3, 4))


def _slopes_crossed(seed=707):
    """Binary: (1|g) + (0+x|g) + (1|h): 80 groups of 6 rows (SDs 1.2 / 0.6), h with 110 levels (SD 0.7)."""
    return _slopes_with_crossed(seed, 80, 6, 110, (1.2, 0.6, 0.7), (0.2, 0.5), _bernoulli,
                                labels=("g{:02d}", "h{:03d}"))


def _pois_nested_sites(seed=801):
    """Poisson, low counts: 100 communities (SD 1.5) of 3 sites (SD 0.3), 1-3 rows per site."""
    return _two_levels(seed, 300, 3, 3, (1.5, 0.3), (-0.8, 0.4), "poisson", "s")


def _subjects_items(seed=802):
    """Binary: 200 subjects of 3 rows (SD 1.5) crossed with 150 items (SD 1), about 4 rows per item."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    subj = np.repeat(np.arange(200), 3)
    item = rng.integers(0, 150, subj.size)
    x = rng.standard_normal(subj.size)
    eta = 0.3 + 0.5 * x + rng.normal(0, 1.5, 200)[subj] + rng.normal(0, 1.0, 150)[item]
    y = (rng.random(subj.size) < 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{i:03d}" for i in subj], "h": [f"h{i:03d}" for i in item]})


def _binomial_observations(seed=803):
    """Binomial with 5 trials: 40 groups of 5 rows (SD 0.8) and observation-level effects (SD 0.7)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(40), 5)
    x = rng.standard_normal(g.size)
    eta = -0.2 + 0.5 * x + rng.normal(0, 0.8, 40)[g] + rng.normal(0, 0.7, g.size)
    n = np.full(g.size, 5.0)
    y = rng.binomial(5, 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"y": y, "n": n, "x": x, "g": [f"g{i:02d}" for i in g],
                         "obs": [f"o{i:03d}" for i in range(g.size)]})


def _four_binary(seed=807):
    """Binary, four components: intercepts and x-slopes of 100 groups of 4 rows (SDs 1 / 0.5), crossed
    factors of 20 and 10 levels (SDs 0.6 / 0.4)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(100), 4)
    h, k = rng.integers(0, 20, g.size), rng.integers(0, 10, g.size)
    x = rng.standard_normal(g.size)
    eta = (0.0 + 0.5 * x + rng.normal(0, 1.0, 100)[g] + rng.normal(0, 0.5, 100)[g] * x + rng.normal(0, 0.6, 20)[h]
           + rng.normal(0, 0.4, 10)[k])
    y = (rng.random(g.size) < 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{i:03d}" for i in g], "h": [f"h{i:02d}" for i in h],
                         "k": [f"k{i}" for i in k]})

def _slopes(seed, n_groups, rows, family, sds, fe):
    """Intercepts and x-slopes of ``n_groups`` groups of ``rows`` rows (SDs ``sds``), fixed effects ``fe``."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), rows)
    x = rng.standard_normal(g.size)
    eta = fe[0] + fe[1] * x + rng.normal(0, sds[0], n_groups)[g] + rng.normal(0, sds[1], n_groups)[g] * x
    if family == "poisson":
        y = rng.poisson(np.exp(eta)).astype(float)
    else:
        y = (rng.random(g.size) < 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{i:03d}" for i in g]})

def _items_few_rows(seed=1001):
    """Binary: 60 groups of 8 rows (SD 0.5) crossed with 160 items of 3 rows (SD 2.5)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(60), 8)
    h = rng.permutation(np.repeat(np.arange(160), 3))
    x = rng.standard_normal(g.size)
    eta = 0.0 + 0.5 * x + rng.normal(0, 0.5, 60)[g] + rng.normal(0, 2.5, 160)[h]
    y = (rng.random(g.size) < 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{i:02d}" for i in g], "h": [f"h{i:03d}" for i in h]})


def _poisson_observations_big_groups(seed=1002):
    """Poisson: 60 groups of 5 rows (SD 2) and observation-level effects (SD 0.3)."""
    return _observation_level(seed, 60, 5, (2.0, 0.3), (-0.5, 0.3), "g", (2, 3))


def _poisson_rare_observations(seed=2601):
    """Poisson rare counts (intercept -3, 82 % zeros): 30 groups of 80 rows (SD 0.3) and observation-level
    effects (SD 2): 2400 effects, each poorly identified, whose Gauss-Hermite errors add up in the sum."""
    return _observation_level(seed, 30, 80, (0.3, 2.0), (-3.0, 0.5), "g", (2, 4))


def _binomial3_slopes_crossed(seed=1201):
    """Binomial with 3 trials: intercepts and x-slopes of 150 groups of 3 rows (SDs 1.5 / 0.9), h drawn
    from 60 levels (SD 0.6)."""
    return _slopes_with_crossed(seed, 150, 3, 60, (1.5, 0.9, 0.6), (-0.3, 0.4), _binomial(3),
                                labels=("g{:03d}", "h{:02d}"), n=3.0)


def _slopes_uncentred(seed=1202):
    """Binary intercepts and slopes of 200 groups of 3 rows (SDs 1.5 / 0.8) on x ~ U(0, 2), not centred:
    the two are correlated in the posterior."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(200), 3)
    x = rng.uniform(0, 2, g.size)
    eta = -0.5 + 0.5 * x + rng.normal(0, 1.5, 200)[g] + rng.normal(0, 0.8, 200)[g] * x
    y = (rng.random(g.size) < 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{i:03d}" for i in g]})


def _three_levels(seed=1003):
    """Binary, three nested factors: 10 a (SD 1) of 4 b (SD 0.8) of 4 c (SD 1.5), 2 rows per c."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    c = np.repeat(np.arange(160), 2)
    b = c // 4
    a = b // 4
    x = rng.standard_normal(c.size)
    eta = 0.2 + 0.5 * x + rng.normal(0, 1.0, 10)[a] + rng.normal(0, 0.8, 40)[b] + rng.normal(0, 1.5, 160)[c]
    y = (rng.random(c.size) < 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"y": y, "x": x, "a": [f"a{i}" for i in a], "b": [f"b{i:02d}" for i in b],
                         "c": [f"c{i:03d}" for i in c]})


def _labels(prefix, codes):
    return [f"{prefix}{k:03d}" for k in codes]


def _bernoulli(rng, eta):
    import numpy as np

    return (rng.random(eta.size) < 1 / (1 + np.exp(-eta))).astype(float)


def _crossed_three(seed=2001):
    """Binary rows (600) over three crossed factors of 50, 20 and 8 levels drawn at random; SDs 1, 0.6, 0.4."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = 600
    g, h, s = rng.integers(0, 50, n), rng.integers(0, 20, n), rng.integers(0, 8, n)
    x = rng.standard_normal(n)
    a, b, c = rng.normal(0, 1.0, 50), rng.normal(0, 0.6, 20), rng.normal(0, 0.4, 8)
    eta = -0.3 + 0.5 * x + a[g] + b[h] + c[s]
    return pd.DataFrame({"y": _bernoulli(rng, eta), "x": x, "g": _labels("g", g), "h": _labels("h", h),
                         "s": _labels("s", s)})


def _one_factor(seed, n_groups, rows, sd, fe, family):
    """One factor of ``n_groups`` levels of ``rows`` rows each (an array: unbalanced), SD ``sd``, fixed
    effects ``fe`` (intercept, slope of x ~ N(0, 1))."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), rows)
    x = rng.standard_normal(g.size)
    eta = fe[0] + fe[1] * x + rng.normal(0, sd, n_groups)[g]
    y = _bernoulli(rng, eta) if family == "binomial" else rng.poisson(np.exp(eta)).astype(float)
    return pd.DataFrame({"y": y, "x": x, "g": _labels("g", g)})


def _unbalanced(seed=2008):
    """80 groups of 1-30 binary rows (geometric sizes, mean about 8), SD 1.2."""
    import numpy as np

    sizes = np.minimum(np.random.default_rng(seed).geometric(0.12, 80), 30)
    return _one_factor(seed + 1, 80, sizes, 1.2, (-0.4, 0.7), "binomial")


def _binomial20_crossed(seed=2003):
    """Binomial with 20 trials, 25 groups of 6 rows crossed with 10 levels drawn at random, SDs 0.5 / 0.5."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(25), 6)
    h = rng.integers(0, 10, g.size)
    x = rng.standard_normal(g.size)
    a, b = rng.normal(0, 0.5, 25), rng.normal(0, 0.5, 10)
    p = 1 / (1 + np.exp(-(0.4 + 0.3 * x + a[g] + b[h])))
    return pd.DataFrame({"y": rng.binomial(20, p).astype(float), "n": 20.0, "x": x, "g": _labels("g", g),
                         "h": _labels("h", h)})


def _covariates(seed=2005):
    """Binary, 40 groups of 8 rows (SD 0.9), with x1 ~ N(0, 1), x2 ~ U(0, 10) on its raw scale and a
    three-level factor f."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(40), 8)
    n = g.size
    x1, x2, f = rng.standard_normal(n), rng.uniform(0, 10, n), rng.choice(["a", "b", "c"], n)
    u = rng.normal(0, 0.9, 40)
    eta = 0.5 + 0.6 * x1 - 0.15 * x2 + np.select([f == "b", f == "c"], [0.5, -0.7], 0.0) + u[g]
    return pd.DataFrame({"y": _bernoulli(rng, eta), "x1": x1, "x2": x2, "f": f, "g": _labels("g", g)})


def _poisson_slopes_crossed(seed=2006):
    """Poisson, intercepts and x-slopes of 60 groups of 4 rows (SDs 0.7 / 0.4), crossed with 30 levels
    drawn at random (SD 0.5)."""
    import numpy as np

    return _slopes_with_crossed(seed, 60, 4, 30, (0.7, 0.4, 0.5), (0.2, 0.3),
                                lambda rng, eta: rng.poisson(np.exp(eta)).astype(float))


def _poisson_offset_crossed(seed=2009):
    """Poisson with exposure E ~ U(0.5, 4) (offset log E), 40 groups of 5 rows crossed with 12 levels
    drawn at random; SDs 0.6 / 0.4."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(40), 5)
    h = rng.integers(0, 12, g.size)
    expo = rng.uniform(0.5, 4, g.size)
    x = rng.standard_normal(g.size)
    a, b = rng.normal(0, 0.6, 40), rng.normal(0, 0.4, 12)
    eta = np.log(expo) - 0.5 + 0.3 * x + a[g] + b[h]
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)).astype(float), "x": x, "logE": np.log(expo),
                         "g": _labels("g", g), "h": _labels("h", h)})


CASES = [
    Case("seed_example", "statsmodels' documented usage: cbpp_long, vc_formulas-equivalent (1|herd)",
         "y ~ period + (1 | herd)", "binomial", data_fn=lambda: load("cbpp_long")),
    Case("sim_binary_few_groups", "binary, 5 groups of 40, true SD 0.05 (near zero)",
         "y ~ x + (1 | g)", "binomial", data_fn=_sim(family="binomial", n_groups=5, group_size=40, sd=0.05, seed=11)),
    Case("sim_binary_many_groups", "binary, 100 groups of 8, true SD 1",
         "y ~ x + (1 | g)", "binomial", data_fn=_sim(family="binomial", n_groups=100, group_size=8, sd=1.0, seed=12)),
    Case("sim_binary_separation", "binary, 3 groups of 30, SD 3: one group all ones (complete separation)",
         "y ~ x + (1 | g)", "binomial", data_fn=_sim(family="binomial", n_groups=3, group_size=30, sd=3.0, seed=5)),
    Case("sim_binary_crossed", "binary, crossed 60 x 30 levels, SDs 0.8 / 0.5",
         "y ~ x + (1 | g) + (1 | h)", "binomial",
         data_fn=_sim(family="binomial", n_groups=60, group_size=20, n_groups2=30, sd=0.8, sd2=0.5, seed=13)),
    Case("sim_binary_crossed_sparse", "binary, 200 groups of 3 rows (SD 2.5) crossed with 20 items (SD 0.7)",
         "y ~ x + (1 | g) + (1 | h)", "binomial",
         data_fn=_sim(family="binomial", n_groups=200, group_size=3, n_groups2=20, sd=2.5, sd2=0.7, seed=21)),
    Case("sim_binary_crossed_pairs", "binary, 300 groups of 2 rows (SD 3) crossed with 20 items (SD 0.7)",
         "y ~ x + (1 | g) + (1 | h)", "binomial",
         data_fn=_sim(family="binomial", n_groups=300, group_size=2, n_groups2=20, sd=3.0, sd2=0.7, seed=22)),
    Case("sim_binary_crossed_small", "binary, 100 groups of 2 rows (SD 2.5) crossed with 20 items (SD 0.7)",
         "y ~ x + (1 | g) + (1 | h)", "binomial",
         data_fn=_sim(family="binomial", n_groups=100, group_size=2, n_groups2=20, sd=2.5, sd2=0.7, seed=3)),
    Case("sim_binary_crossed_small_b", "the same design, another draw (seed 2)",
         "y ~ x + (1 | g) + (1 | h)", "binomial",
         data_fn=_sim(family="binomial", n_groups=100, group_size=2, n_groups2=20, sd=2.5, sd2=0.7, seed=2)),
    Case("sim_binomial_trials", "binomial with 10 trials, 30 groups of 5, SD 0.7",
         "y ~ x + (1 | g)", "binomial", trials="n",
         data_fn=_sim(family="binomial", n_groups=30, group_size=5, sd=0.7, trials=10, seed=14)),
    Case("sim_binomial_trials_crossed", "binomial with 5 trials, 40 groups of 6 crossed with 10 levels, SDs 1 / 0.3",
         "y ~ x + (1 | g) + (1 | h)", "binomial", trials="n",
         data_fn=_sim(family="binomial", n_groups=40, group_size=6, n_groups2=10, sd=1.0, sd2=0.3, trials=5,
                      seed=33)),
    Case("sim_poisson_single", "Poisson, 40 groups of 10, SD 0.6",
         "y ~ x + (1 | g)", "poisson", data_fn=_sim(family="poisson", n_groups=40, group_size=10, sd=0.6, seed=15)),
    Case("sim_poisson_crossed", "Poisson, crossed 30 x 15, SDs 0.6 / 0.4",
         "y ~ x + (1 | g) + (1 | h)", "poisson",
         data_fn=_sim(family="poisson", n_groups=30, group_size=20, n_groups2=15, sd=0.6, sd2=0.4, seed=16)),
    Case("sim_poisson_crossed_zero", "Poisson, crossed 25 x 12, SDs 1.2 / 0.05 (near zero)",
         "y ~ x + (1 | g) + (1 | h)", "poisson",
         data_fn=_sim(family="poisson", n_groups=25, group_size=12, n_groups2=12, sd=1.2, sd2=0.05, seed=35)),
    Case("sim_poisson_zero_groups", "Poisson, 30 groups of 3 rows, SD 2.5, low baseline: 16 groups all zeros",
         "y ~ x + (1 | g)", "poisson", data_fn=_poisson_zero_groups),
    Case("sim_poisson_four", "Poisson, four components: intercepts and slopes of 40 groups, two crossed factors",
         "y ~ x + (1 | g) + (0 + x | g) + (1 | h) + (1 | s)", "poisson", data_fn=_four_components),
    Case("cbpp", "cbpp: incidence out of size, (1|herd)", "incidence ~ period + (1 | herd)", "binomial",
         trials="size", data_fn=lambda: load("cbpp")),
    Case("cbpp_observations", "cbpp with observation-level effects: (1|herd) + (1|obs)",
         "incidence ~ period + (1 | herd) + (1 | obs)", "binomial", trials="size", data_fn=_cbpp_observations),
    Case("Salamanders", "Salamanders: count ~ mined + (1|site)", "count ~ mined + (1 | site)", "poisson",
         data_fn=lambda: load("Salamanders")),
    Case("grouseticks", "grouseticks: three random intercepts, centred height",
         "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)", "poisson",
         data_fn=lambda: load("grouseticks")),
    Case("Contraception", "Contraception: raw-scale age^2, (1|district)",
         _CONTRACEPTION + " + (1 | district)", "binomial", data_fn=_contraception),
    Case("Contraception_slopes", "Contraception: independent district intercepts and urban slopes",
         "use_01 ~ age + I(age^2) + urbanY + livch + (1 | district) + (0 + urbanY | district)", "binomial",
         data_fn=_contraception_urban),
    Case("guImmun", "guImmun: binary, (1|mom) + (1|comm), 1595 mothers with 1-3 children",
         "immun_01 ~ kid2p + mom25p + ord + ethn + momEd + husEd + momWork + rural + pcInd81 + (1 | mom) + (1 | comm)",
         "binomial", data_fn=lambda: load("guImmun"), slow=True),
    Case("VerbAgg", "VerbAgg: crossed (1|id) + (1|item), n = 7584",
         "r2_01 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", "binomial",
         data_fn=lambda: load("VerbAgg"), slow=True),
    # -- a second set, first run as held-out cases (new draws and designs of the same kinds, and
    # kinds the first set lacked: an exposure offset, varying trials, nesting, slopes)
    Case("sim_binary_sd15", "binary, 20 groups of 15, SD 1.5",
         "y ~ x + (1 | g)", "binomial", data_fn=_sim(family="binomial", n_groups=20, group_size=15, sd=1.5, seed=101)),
    Case("sim_binary_three_levels", "binary, 3 groups of 50, SD 0.3",
         "y ~ x + (1 | g)", "binomial", data_fn=_sim(family="binomial", n_groups=3, group_size=50, sd=0.3, seed=102)),
    Case("sim_binary_pairs", "binary, 80 groups of 2 rows, SD 2",
         "y ~ x + (1 | g)", "binomial", data_fn=_sim(family="binomial", n_groups=80, group_size=2, sd=2.0, seed=110)),
    Case("sim_binary_60x10_sd2", "binary, 60 groups of 10, SD 2",
         "y ~ x + (1 | g)", "binomial",
         data_fn=_sim(family="binomial", n_groups=60, group_size=10, sd=2.0, fe={"Intercept": -0.5, "x": 0.5}, seed=1)),
    Case("sim_binary_200x10_sd15", "binary, 200 groups of 10, SD 1.5",
         "y ~ x + (1 | g)", "binomial",
         data_fn=_sim(family="binomial", n_groups=200, group_size=10, sd=1.5, fe={"Intercept": -0.5, "x": 0.5}, seed=1)),
    Case("sim_poisson_20x2_sd2", "Poisson, 20 groups of 2 rows, SD 2, intercept -1",
         "y ~ x + (1 | g)", "poisson",
         data_fn=_sim(family="poisson", n_groups=20, group_size=2, sd=2.0, fe={"Intercept": -1.0, "x": 0.5}, seed=1)),
    Case("sim_poisson_20x5_sd1", "Poisson, 20 groups of 5 rows, SD 1, intercept -1",
         "y ~ x + (1 | g)", "poisson",
         data_fn=_sim(family="poisson", n_groups=20, group_size=5, sd=1.0, fe={"Intercept": -1.0, "x": 0.5}, seed=1)),
    Case("sim_binary_groups4_sd3", "binary, 40 groups of 4 rows, SD 3",
         "y ~ x + (1 | g)", "binomial", data_fn=_sim(family="binomial", n_groups=40, group_size=4, sd=3.0, seed=111)),
    Case("sim_poisson_offset", "Poisson with an exposure offset log(E), E ~ U(0.5, 5), 50 groups of 6, SD 0.5",
         "y ~ x + (1 | g)", "poisson", offset="logE", data_fn=_poisson_offset),
    Case("sim_binomial_varying_trials", "binomial, 1-20 trials per row, 25 groups of 6, SD 0.8",
         "y ~ x + (1 | g)", "binomial", trials="n", data_fn=_binomial_varying_trials),
    Case("sim_poisson_crossed_20x10", "Poisson, crossed 20 (15 rows each) x 10 levels, SDs 1.0 / 0.2",
         "y ~ x + (1 | g) + (1 | h)", "poisson",
         data_fn=_sim(family="poisson", n_groups=20, group_size=15, n_groups2=10, sd=1.0, sd2=0.2, seed=106)),
    Case("sim_poisson_lowcount_crossed", "Poisson, intercept -1.5, 60 groups of 3 rows (SD 1.5) x 8 items (SD 0.6)",
         "y ~ x + (1 | g) + (1 | h)", "poisson",
         data_fn=_sim(family="poisson", n_groups=60, group_size=3, n_groups2=8, sd=1.5, sd2=0.6,
                      fe={"Intercept": -1.5, "x": 0.3}, seed=112)),
    Case("sim_binary_crossed_150x15", "binary, 150 groups of 3 rows (SD 2) crossed with 15 items (SD 0.5)",
         "y ~ x + (1 | g) + (1 | h)", "binomial",
         data_fn=_sim(family="binomial", n_groups=150, group_size=3, n_groups2=15, sd=2.0, sd2=0.5, seed=103)),
    Case("sim_poisson_nested", "Poisson, nested (1|a) + (1|a:b): 15 a x 4 b x 5 rows, SDs 0.7 / 0.4",
         "y ~ x + (1 | a) + (1 | a:b)", "poisson", data_fn=_poisson_nested),
    Case("sim_binary_slopes", "binary, (1|g) + (0+x|g), 60 groups of 10, SDs 0.8 / 0.6",
         "y ~ x + (1 | g) + (0 + x | g)", "binomial", data_fn=_binary_slopes),
    Case("sim_binary_three_components", "binary, (1|g) + (0+x|g) + (1|h): 30 groups of 10 (SDs 0.9 / 0.5), "
         "h with 6 levels (SD 0.3)", "y ~ x + (1 | g) + (0 + x | g) + (1 | h)", "binomial",
         data_fn=_binary_three_components),
    Case("grouseticks_two", "grouseticks without the observation level: (1|BROOD) + (1|LOCATION)",
         "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", "poisson", data_fn=lambda: load("grouseticks")),
    Case("cbpp_wide_priors", "cbpp (1|herd) with fe_p = 5, vcp_p = 2",
         "incidence ~ period + (1 | herd)", "binomial", trials="size", fe_p=5.0, vcp_p=2.0,
         data_fn=lambda: load("cbpp")),
    Case("Salamanders_cover", "Salamanders: count ~ mined + cover + (1|site)",
         "count ~ mined + cover + (1 | site)", "poisson", data_fn=lambda: load("Salamanders")),
    Case("Salamanders_spp_site", "Salamanders: count ~ mined + spp + (1|site) + (1|site:spp)",
         "count ~ mined + spp + (1 | site) + (1 | site:spp)", "poisson", data_fn=lambda: load("Salamanders")),
    # -- a third set, first run as held-out cases (new draws of the same kinds; the binary pairs with an
    # SD of 4 showed the 24-node rule's roughness at large SDs: Intercept SD ratio 1.12 before
    # NestedMarginal.use_nodes)
    _simulated("sim_binary_crossed_120x2", "binary, 120 groups of 2 rows (SD 2) crossed with 15 items (SD 0.5)",
               family="binomial", n_groups=120, group_size=2, n_groups2=15, sd=2.0, sd2=0.5, seed=301),
    _simulated("sim_binary_8x25", "binary, 8 groups of 25, SD 0.8",
               family="binomial", n_groups=8, group_size=25, sd=0.8, seed=302),
    _simulated("sim_binomial3_50x4", "binomial with 3 trials, 50 groups of 4, SD 1.2",
               family="binomial", n_groups=50, group_size=4, sd=1.2, trials=3, seed=303),
    _simulated("sim_poisson_15x4_sd15", "Poisson, 15 groups of 4 rows, SD 1.5",
               family="poisson", n_groups=15, group_size=4, sd=1.5, seed=304),
    _simulated("sim_poisson_crossed_40x6_low",
               "Poisson, intercept -1, 40 groups of 4 rows (SD 1) crossed with 6 levels (SD 0.5)",
               family="poisson", n_groups=40, group_size=4, n_groups2=6, sd=1.0, sd2=0.5,
               fe={"Intercept": -1.0, "x": 0.3}, seed=305),
    _simulated("sim_binary_4x60", "binary, 4 groups of 60, SD 1",
               family="binomial", n_groups=4, group_size=60, sd=1.0, seed=306),
    _simulated("sim_binary_crossed_80x4", "binary, 80 groups of 4 rows (SD 1.5) crossed with 10 items (SD 1)",
               family="binomial", n_groups=80, group_size=4, n_groups2=10, sd=1.5, sd2=1.0, seed=307),
    _simulated("sim_poisson_100x3_sd03", "Poisson, 100 groups of 3 rows, SD 0.3",
               family="poisson", n_groups=100, group_size=3, sd=0.3, seed=308),
    _simulated("sim_binary_50x6_sd01", "binary, 50 groups of 6, SD 0.1 (near zero)",
               family="binomial", n_groups=50, group_size=6, sd=0.1, seed=309),
    _simulated("sim_binomial4_crossed_20x8",
               "binomial with 4 trials, 20 groups of 8 crossed with 8 levels, SDs 0.5 / 0.5",
               family="binomial", n_groups=20, group_size=8, n_groups2=8, sd=0.5, sd2=0.5, trials=4, seed=310),
    _simulated("sim_binary_crossed_pairs_sd4", "binary, 150 groups of 2 rows (SD 4) crossed with 12 items (SD 1)",
               family="binomial", n_groups=150, group_size=2, n_groups2=12, sd=4.0, sd2=1.0, seed=311),
    _simulated("sim_poisson_6x10_sd2", "Poisson, 6 groups of 10, SD 2",
               family="poisson", n_groups=6, group_size=10, sd=2.0, seed=312),
    # -- a fourth set, first run as held-out cases after the outer correction (binary and Poisson pairs
    # crossed with items, SDs up to 5): every bar held
    _simulated("sim_binary_crossed_200x2_sd3", "binary, 200 groups of 2 rows (SD 3) crossed with 25 items (SD 0.8)",
               family="binomial", n_groups=200, group_size=2, n_groups2=25, sd=3.0, sd2=0.8, seed=401),
    _simulated("sim_binary_crossed_60x3", "binary, 60 groups of 3 rows (SD 2.5) crossed with 8 items (SD 1.2)",
               family="binomial", n_groups=60, group_size=3, n_groups2=8, sd=2.5, sd2=1.2, seed=402),
    _simulated("sim_poisson_crossed_50x2_low",
               "Poisson, intercept -1, 50 groups of 2 rows (SD 1.5) crossed with 10 items (SD 0.7)",
               family="poisson", n_groups=50, group_size=2, n_groups2=10, sd=1.5, sd2=0.7,
               fe={"Intercept": -1.0, "x": 0.3}, seed=403),
    _simulated("sim_binomial2_crossed_100x2",
               "binomial with 2 trials, 100 groups of 2 rows (SD 2) crossed with 15 items (SD 0.5)",
               family="binomial", n_groups=100, group_size=2, n_groups2=15, sd=2.0, sd2=0.5, trials=2, seed=404),
    _simulated("sim_binary_30x3_sd25", "binary, 30 groups of 3 rows, SD 2.5",
               family="binomial", n_groups=30, group_size=3, sd=2.5, seed=405),
    _simulated("sim_binary_crossed_40x5", "binary, 40 groups of 5 rows (SD 1) crossed with 20 items (SD 1)",
               family="binomial", n_groups=40, group_size=5, n_groups2=20, sd=1.0, sd2=1.0, seed=406),
    _simulated("sim_poisson_25x2_sd18", "Poisson, intercept 0, 25 groups of 2 rows, SD 1.8",
               family="poisson", n_groups=25, group_size=2, sd=1.8, fe={"Intercept": 0.0, "x": 0.3}, seed=407),
    _simulated("sim_binary_crossed_80x2_sd5", "binary, 80 groups of 2 rows (SD 5) crossed with 10 items (SD 0.5)",
               family="binomial", n_groups=80, group_size=2, n_groups2=10, sd=5.0, sd2=0.5, seed=408),
    _simulated("sim_binary_crossed_300x2_sd15", "binary, 300 groups of 2 rows (SD 1.5) crossed with 30 items (SD 0.3)",
               family="binomial", n_groups=300, group_size=2, n_groups2=30, sd=1.5, sd2=0.3, seed=409),
    # -- a fifth set, first run as held-out cases: new draws of the other kinds (nesting, slopes, three and
    # four components, all-zero groups, an offset, varying trials) and two new designs; every bar held
    Case("sim_poisson_nested_b", "Poisson, nested (1|a) + (1|a:b), another draw (seed 501)",
         "y ~ x + (1 | a) + (1 | a:b)", "poisson", data_fn=lambda: _poisson_nested(501)),
    Case("sim_binary_slopes_b", "binary, (1|g) + (0+x|g), another draw (seed 502)",
         "y ~ x + (1 | g) + (0 + x | g)", "binomial", data_fn=lambda: _binary_slopes(502)),
    Case("sim_binary_three_components_b", "binary, (1|g) + (0+x|g) + (1|h), another draw (seed 503)",
         "y ~ x + (1 | g) + (0 + x | g) + (1 | h)", "binomial", data_fn=lambda: _binary_three_components(503)),
    Case("sim_poisson_four_b", "Poisson, four components, another draw (seed 504)",
         "y ~ x + (1 | g) + (0 + x | g) + (1 | h) + (1 | s)", "poisson", data_fn=lambda: _four_components(504)),
    Case("sim_poisson_zero_groups_b", "Poisson, 30 groups of 3 rows, SD 2.5, low baseline, another draw (seed 505)",
         "y ~ x + (1 | g)", "poisson", data_fn=lambda: _poisson_zero_groups(505)),
    Case("sim_poisson_offset_b", "Poisson with an exposure offset, another draw (seed 506)",
         "y ~ x + (1 | g)", "poisson", offset="logE", data_fn=lambda: _poisson_offset(506)),
    Case("sim_binomial_varying_trials_b", "binomial, 1-20 trials per row, another draw (seed 507)",
         "y ~ x + (1 | g)", "binomial", trials="n", data_fn=lambda: _binomial_varying_trials(507)),
    Case("sim_poisson_observations", "Poisson, 40 groups of 5 rows (SD 0.7) and observation-level effects (SD 0.5)",
         "y ~ x + (1 | g) + (1 | obs)", "poisson", data_fn=_poisson_observations),
    Case("sim_binary_nested", "binary, nested (1|a) + (1|a:b): 10 a x 4 b x 5 rows, SDs 1.0 / 1.5",
         "y ~ x + (1 | a) + (1 | a:b)", "binomial", data_fn=_binary_nested),
    # -- a sixth set, first run as held-out cases: other models of the real data sets; every bar held
    Case("Contraception_district_urban", "Contraception: (1|district) + (1|district:urban), raw-scale age^2",
         _CONTRACEPTION + " + (1 | district) + (1 | district:urban)", "binomial", data_fn=_contraception),
    Case("grouseticks_location_obs", "grouseticks: (1|LOCATION) + (1|INDEX), observation level beside locations",
         "TICKS ~ YEAR + cHEIGHT + (1 | LOCATION) + (1 | INDEX)", "poisson", data_fn=lambda: load("grouseticks")),
    Case("cbpp_long_herd_period", "cbpp_long (binary rows): (1|herd) + (1|herd:period)",
         "y ~ period + (1 | herd) + (1 | herd:period)", "binomial", data_fn=lambda: load("cbpp_long")),
    # -- a seventh set, first run as held-out cases: more than 100 effects of the other component (the
    # nested approximation's sparse layout); every bar held, the two crossed ones with log-SDs 0.11-0.14
    # reference SDs off until the outer correction was extended to that layout
    _simulated("sim_binary_crossed_400x3_120", "binary, 400 groups of 3 rows (SD 2.5) crossed with 120 items (SD 0.8)",
               family="binomial", n_groups=400, group_size=3, n_groups2=120, sd=2.5, sd2=0.8, seed=601),
    _simulated("sim_binary_crossed_500x2_150", "binary, 500 groups of 2 rows (SD 3) crossed with 150 items (SD 0.7)",
               family="binomial", n_groups=500, group_size=2, n_groups2=150, sd=3.0, sd2=0.7, seed=602),
    Case("sim_binary_mothers_150", "binary, 450 mothers (SD 2) with 1-3 children in 150 communities (SD 0.8)",
         "y ~ x + (1 | c) + (1 | m)", "binomial", data_fn=_mothers),
    # -- an eighth set, first run as held-out cases: five held every bar; the communities with large SDs
    # over mothers with small ones missed four bars (the mothers were integrated exactly, the
    # communities by Laplace), the slopes crossed with 110 levels two (the outer correction's line
    # made the log-SDs' left tails too light, the skewness shift at the mode overshot)
    _simulated("sim_poisson_crossed_300x2_120", "Poisson, intercept -0.5, 300 groups of 2 rows (SD 1.5) crossed "
               "with 120 items (SD 0.6)", family="poisson", n_groups=300, group_size=2, n_groups2=120, sd=1.5,
               sd2=0.6, fe={"Intercept": -0.5, "x": 0.3}, seed=701),
    _simulated("sim_binomial3_crossed_300x2_110", "binomial with 3 trials, 300 groups of 2 rows (SD 2) crossed with "
               "110 items (SD 0.6)", family="binomial", n_groups=300, group_size=2, n_groups2=110, sd=2.0, sd2=0.6,
               trials=3, seed=702),
    _simulated("sim_binary_50x4_sd5", "binary, 50 groups of 4 rows, SD 5", family="binomial", n_groups=50,
               group_size=4, sd=5.0, seed=703),
    _simulated("sim_binary_crossed_250x2_sd4_40", "binary, 250 groups of 2 rows (SD 4) crossed with 40 items (SD 1.5)",
               family="binomial", n_groups=250, group_size=2, n_groups2=40, sd=4.0, sd2=1.5, seed=704),
    Case("sim_binary_mothers_big_communities", "binary, 200 communities (SD 2) of 2 mothers (SD 0.5) with 1-2 "
         "children", "y ~ x + (1 | c) + (1 | m)", "binomial", data_fn=_mothers_big_communities),
    Case("sim_poisson_obs_sites", "Poisson, 150 sites of 4 rows (SD 0.8) and observation-level effects (SD 0.6)",
         "y ~ x + (1 | s) + (1 | obs)", "poisson", data_fn=_poisson_obs_sites),
    Case("sim_binary_slopes_crossed", "binary, (1|g) + (0+x|g) + (1|h): 80 groups of 6 rows (SDs 1.2 / 0.6), h drawn "
         "from 110 levels (SD 0.7)", "y ~ x + (1 | g) + (0 + x | g) + (1 | h)", "binomial", data_fn=_slopes_crossed),
    # -- a ninth set, first run as held-out cases: five held every bar; four binary components missed the
    # log-SDs' SD bar (split normals on skewed axes; the grid now), and binary intercepts and slopes of
    # groups of three rows miss four bars still (both are integrated by Laplace given each other: see
    # the closing notes of the accuracy issue)
    Case("sim_poisson_nested_sites", "Poisson, low counts: 100 communities (SD 1.5) of 3 sites (SD 0.3), 1-3 rows "
         "per site", "y ~ x + (1 | c) + (1 | s)", "poisson", data_fn=_pois_nested_sites),
    Case("sim_binary_subjects_items", "binary, 200 subjects of 3 rows (SD 1.5) crossed with 150 items (SD 1)",
         "y ~ x + (1 | g) + (1 | h)", "binomial", data_fn=_subjects_items),
    Case("sim_binomial5_observations", "binomial with 5 trials, 40 groups of 5 rows (SD 0.8) and observation-level "
         "effects (SD 0.7)", "y ~ x + (1 | g) + (1 | obs)", "binomial", trials="n", data_fn=_binomial_observations),
    _simulated("sim_poisson_100x2_sd25_low", "Poisson, intercept -2, 100 groups of 2 rows, SD 2.5", family="poisson",
               n_groups=100, group_size=2, sd=2.5, fe={"Intercept": -2.0, "x": 0.3}, seed=804),
    _simulated("sim_binary_crossed_100x5_sd2_8", "binary, 100 groups of 5 rows (SD 2) crossed with 8 items (SD 1.5)",
               family="binomial", n_groups=100, group_size=5, n_groups2=8, sd=2.0, sd2=1.5, seed=805),
    Case("sim_binary_slopes_300x3", "binary, (1|g) + (0+x|g): 300 groups of 3 rows, SDs 1.5 / 0.8",
         "y ~ x + (1 | g) + (0 + x | g)", "binomial",
         data_fn=lambda: _slopes(806, 300, 3, "binomial", (1.5, 0.8), (0.1, 0.6))),
    Case("sim_binary_four_components", "binary, (1|g) + (0+x|g) + (1|h) + (1|k): 100 groups of 4 rows (SDs 1 / 0.5), "
         "h of 20 levels (SD 0.6), k of 10 (SD 0.4)", "y ~ x + (1 | g) + (0 + x | g) + (1 | h) + (1 | k)", "binomial",
         data_fn=_four_binary),
    # -- a tenth set, first run as held-out cases: three held every bar; the Poisson slopes had the
    # Intercept 1.2 posterior SDs off (the variational refinement cycled and the mode was kept; damped now)
    Case("sim_binary_slopes_150x6", "binary, (1|g) + (0+x|g): 150 groups of 6 rows, SDs 1.2 / 0.7",
         "y ~ x + (1 | g) + (0 + x | g)", "binomial",
         data_fn=lambda: _slopes(901, 150, 6, "binomial", (1.2, 0.7), (0.2, 0.5))),
    Case("sim_poisson_slopes_100x3", "Poisson, (1|g) + (0+x|g): 100 groups of 3 rows, SDs 0.8 / 0.5",
         "y ~ x + (1 | g) + (0 + x | g)", "poisson",
         data_fn=lambda: _slopes(902, 100, 3, "poisson", (0.8, 0.5), (0.3, 0.4))),
    Case("Salamanders_site_spp_crossed", "Salamanders: count ~ mined + (1|site) + (1|spp)",
         "count ~ mined + (1 | site) + (1 | spp)", "poisson", data_fn=lambda: load("Salamanders")),
    Case("Contraception_age_slopes", "Contraception: (1|district) + (0+age|district), raw-scale age^2",
         _CONTRACEPTION + " + (1 | district) + (0 + age | district)", "binomial", data_fn=_contraception),
    # -- an eleventh set, first run as held-out cases after the changes the tenth prompted: every bar held
    Case("sim_binary_items_few_rows", "binary, 60 groups of 8 rows (SD 0.5) crossed with 160 items of 3 rows "
         "(SD 2.5)", "y ~ x + (1 | g) + (1 | h)", "binomial", data_fn=_items_few_rows),
    Case("sim_poisson_observations_big_groups", "Poisson, 60 groups of 5 rows (SD 2) and observation-level effects "
         "(SD 0.3)", "y ~ x + (1 | g) + (1 | obs)", "poisson", data_fn=_poisson_observations_big_groups),
    Case("sim_binary_three_levels_nested", "binary, three nested factors: 10 a (SD 1) of 4 b (SD 0.8) of 4 c (SD 1.5), "
         "2 rows per c", "y ~ x + (1 | a) + (1 | b) + (1 | c)", "binomial", data_fn=_three_levels),
    _simulated("sim_binomial2_crossed_150x2_130", "binomial with 2 trials, 150 groups of 2 rows (SD 2) crossed with "
               "130 items (SD 0.8)", family="binomial", n_groups=150, group_size=2, n_groups2=130, sd=2.0, sd2=0.8,
               trials=2, seed=1004),
    # -- a twelfth set, first run as held-out cases after intercepts and slopes were integrated as 2-D
    # blocks per level (EffectBlocks): every bar held
    Case("sim_binary_slopes_250x2", "binary, (1|g) + (0+x|g): 250 groups of 2 rows, SDs 1.8 / 1",
         "y ~ x + (1 | g) + (0 + x | g)", "binomial",
         data_fn=lambda: _slopes(1203, 250, 2, "binomial", (1.8, 1.0), (0.2, 0.5))),
    Case("sim_poisson_slopes_200x2", "Poisson, (1|g) + (0+x|g): 200 groups of 2 rows, SDs 1.2 / 0.8, intercept -0.5",
         "y ~ x + (1 | g) + (0 + x | g)", "poisson",
         data_fn=lambda: _slopes(1204, 200, 2, "poisson", (1.2, 0.8), (-0.5, 0.3))),
    Case("sim_binomial3_slopes_crossed", "binomial with 3 trials, (1|g) + (0+x|g) + (1|h): 150 groups of 3 rows "
         "(SDs 1.5 / 0.9), h of 60 levels (SD 0.6)", "y ~ x + (1 | g) + (0 + x | g) + (1 | h)", "binomial",
         trials="n", data_fn=_binomial3_slopes_crossed),
    Case("sim_binary_slopes_uncentred", "binary, (1|g) + (0+x|g) with x ~ U(0, 2): 200 groups of 3 rows, SDs 1.5 / 0.8",
         "y ~ x + (1 | g) + (0 + x | g)", "binomial", data_fn=_slopes_uncentred),
    # -- a thirteenth set, first run as held-out cases after the blocks' rule went from 10 to 8 nodes
    # per axis up to SD 2 (EffectBlocks.hermite_rule): every bar held
    Case("sim_binary_slopes_120x5", "binary, (1|g) + (0+x|g): 120 groups of 5 rows, SDs 1.3 / 0.6",
         "y ~ x + (1 | g) + (0 + x | g)", "binomial",
         data_fn=lambda: _slopes(1301, 120, 5, "binomial", (1.3, 0.6), (0.1, 0.4))),
    Case("sim_binary_slopes_100x4_sd2", "binary, (1|g) + (0+x|g): 100 groups of 4 rows, SDs 2 / 0.7",
         "y ~ x + (1 | g) + (0 + x | g)", "binomial",
         data_fn=lambda: _slopes(1302, 100, 4, "binomial", (2.0, 0.7), (0.3, 0.5))),
    Case("sim_binary_slopes_crossed_b", "binary, (1|g) + (0+x|g) + (1|h): 80 groups of 6 rows (SDs 1.2 / 0.6), h "
         "drawn from 110 levels (SD 0.7), another draw (seed 1303)", "y ~ x + (1 | g) + (0 + x | g) + (1 | h)",
         "binomial", data_fn=lambda: _slopes_crossed(1303)),
    Case("sim_poisson_slopes_150x3_low", "Poisson, (1|g) + (0+x|g): 150 groups of 3 rows, SDs 1 / 0.6, intercept -0.7",
         "y ~ x + (1 | g) + (0 + x | g)", "poisson",
         data_fn=lambda: _slopes(1304, 150, 3, "poisson", (1.0, 0.6), (-0.7, 0.3))),
    # a fourteenth held-out set (each held every bar on its first run)
    Case("sim_binary_crossed_three", "binary, three crossed factors of 50, 20 and 8 levels over 600 rows, SDs 1 / "
         "0.6 / 0.4", "y ~ x + (1 | g) + (1 | h) + (1 | s)", "binomial", data_fn=_crossed_three),
    Case("sim_poisson_high_counts", "Poisson, counts near 20 (intercept 3), 30 groups of 4 rows, SD 0.3",
         "y ~ x + (1 | g)", "poisson", data_fn=lambda: _one_factor(2002, 30, 4, 0.3, (3.0, 0.2), "poisson")),
    Case("sim_binomial20_crossed", "binomial with 20 trials, 25 groups of 6 rows crossed with 10 levels, SDs 0.5 / 0.5",
         "y ~ x + (1 | g) + (1 | h)", "binomial", trials="n", data_fn=_binomial20_crossed),
    Case("sim_binary_rare_events", "binary rare events (intercept -3.5, 5 % ones), 100 groups of 10 rows, SD 1",
         "y ~ x + (1 | g)", "binomial", data_fn=lambda: _one_factor(2004, 100, 10, 1.0, (-3.5, 0.4), "binomial")),
    Case("sim_binary_covariates", "binary, x1 + raw-scale x2 in 0-10 + a three-level factor, 40 groups of 8, SD 0.9",
         "y ~ x1 + x2 + f + (1 | g)", "binomial", data_fn=_covariates),
    Case("sim_poisson_slopes_crossed", "Poisson, (1|g) + (0+x|g) + (1|h): 60 groups of 4 rows (SDs 0.7 / 0.4), h of "
         "30 levels (SD 0.5)", "y ~ x + (1 | g) + (0 + x | g) + (1 | h)", "poisson", data_fn=_poisson_slopes_crossed),
    Case("sim_binary_3x20_sd2", "binary, 3 groups of 20 rows, SD 2",
         "y ~ x + (1 | g)", "binomial", data_fn=lambda: _one_factor(2007, 3, 20, 2.0, (0.2, 0.5), "binomial")),
    Case("sim_binary_unbalanced", "binary, 80 groups of 1-30 rows (geometric sizes), SD 1.2",
         "y ~ x + (1 | g)", "binomial", data_fn=_unbalanced),
    Case("sim_poisson_offset_crossed", "Poisson with an exposure offset, 40 groups of 5 rows crossed with 12 levels, "
         "SDs 0.6 / 0.4", "y ~ x + (1 | g) + (1 | h)", "poisson", offset="logE", data_fn=_poisson_offset_crossed),
    Case("sim_binary_60x5_sd4", "binary, 60 groups of 5 rows, SD 4",
         "y ~ x + (1 | g)", "binomial", data_fn=lambda: _one_factor(2010, 60, 5, 4.0, (0.3, 0.5), "binomial")),
    # the data README's canonical model as written: HEIGHT on its raw scale (403-533 m) under the default
    # fe_p = 2, which the intercept (about 11 on this scale without a prior) is pulled against
    Case("grouseticks_raw_height", "grouseticks: the canonical model, HEIGHT in metres (raw scale), default priors",
         "TICKS ~ YEAR + HEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)", "poisson",
         data_fn=lambda: load("grouseticks")),
    # the nested route's quadrature judged by its summed error (NestedMarginal.check_rule refines 12 -> 24 nodes)
    Case("sim_poisson_rare_observations", "Poisson rare counts (82 % zeros), 30 groups of 80 rows (SD 0.3) and "
         "observation-level effects (SD 2)", "y ~ x + (1 | g) + (1 | obs)", "poisson",
         data_fn=_poisson_rare_observations),
]

#: Single factors of two levels, checked against importance sampling (exact_few_levels.py) instead of
#: NUTS: with two or three levels NUTS puts the Intercept's and the effects' SDs anywhere within 5-15 % from
#: run to run, R-hat and ESS notwithstanding (sim_binary_three_levels above is checked both ways).
FEW_LEVELS = [
    Case("few_binary_two_levels", "binary, a factor of 2 levels of 100 rows, SD 0.5",
         "y ~ x + (1 | g)", "binomial", data_fn=_sim(family="binomial", n_groups=2, group_size=100, sd=0.5,
                                                      seed=213)),
    Case("few_poisson_two_levels", "Poisson, a factor of 2 levels of 50 rows, SD 0.7",
         "y ~ x + (1 | g)", "poisson", data_fn=_sim(family="poisson", n_groups=2, group_size=50, sd=0.7, seed=222)),
    Case("few_binary_two_levels_small", "binary, a factor of 2 levels of 30 rows, SD 1.5 (one level without events)",
         "y ~ x + (1 | g)", "binomial", data_fn=_sim(family="binomial", n_groups=2, group_size=30, sd=1.5,
                                                      seed=223)),
]

BY_NAME = {c.name: c for c in CASES + FEW_LEVELS}
