"""One result type for every fitting method.

:class:`BayesMixedGLMResults` holds posterior means and SDs of ``fe``, ``vcp``
and ``vc``, the dense covariance of the (fe, vcp) block when the method gives
one, diagnostics, and (for the integrated Laplace fit) the posterior of the
log-SDs on a grid. Credible intervals are central 95 % intervals: Gaussian
for ``fe`` and ``vc``; for ``vcp`` they are read off the grid density when
there is one, otherwise Gaussian on the log-SD scale (log-normal on the SD).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import ndtr

from .checks import read_only_copy
from .design import offset_values
from .errors import DataError, DataWarning

__all__ = ["BayesMixedGLMResults", "FitDiagnostics", "VcpGrid"]

Z975 = 1.959963984540054


def split_normal(mean, var, third):
    r"""``(mode, s_minus, s_plus)`` of the split normals with the given means, variances and third central
    moments (arrays alike; the skewness clipped to the family's range, :math:`|\gamma| < 0.99`): with
    :math:`d = s_+ - s_-`, mean :math:`= \mathrm{mode} + \sqrt{2/\pi}\, d`, variance
    :math:`(1 - 2/\pi) d^2 + s_- s_+`, third moment :math:`\sqrt{2/\pi}\, d\,((4/\pi - 1) d^2 + s_- s_+)`. The
    ratio :math:`r = s_+/s_-` is found by bisection (the skewness grows with it); no skewness gives the Gaussian."""
    mean, var, third = np.broadcast_arrays(*(np.asarray(a, float) for a in (mean, var, third)))

    def moments(r):  # s_minus = 1, s_plus = r: (variance, skewness)
        d = r - 1.0
        v = (1.0 - 2.0 / np.pi) * d**2 + r
        return v, np.sqrt(2.0 / np.pi) * d * ((4.0 / np.pi - 1.0) * d**2 + r) / v**1.5

    with np.errstate(divide="ignore", invalid="ignore"):
        gamma = np.where(var > 0, third / np.where(var > 0, var, 1.0) ** 1.5, 0.0)
    gamma = np.clip(gamma, moments(1.0 / 8.0)[1], moments(8.0)[1])
    lo, hi = np.full(mean.shape, 1.0 / 8.0), np.full(mean.shape, 8.0)
    for _ in range(60):
        mid = np.sqrt(lo * hi)
        up = moments(mid)[1] < gamma
        lo, hi = np.where(up, mid, lo), np.where(up, hi, mid)
    r = np.sqrt(lo * hi)
    s_minus = np.sqrt(np.maximum(var, 0.0) / moments(r)[0])
    s_plus = r * s_minus
    return mean - np.sqrt(2.0 / np.pi) * (s_plus - s_minus), s_minus, s_plus


def _split_cdf(x, mode, s_minus, s_plus):
    """The split normals' distribution function at ``x`` (a scale of 0 on both sides: a point mass)."""
    total = s_minus + s_plus
    with np.errstate(divide="ignore", invalid="ignore"):
        left = 2.0 * s_minus / total * ndtr((x - mode) / s_minus)
        right = s_minus / total + 2.0 * s_plus / total * (ndtr((x - mode) / s_plus) - 0.5)
        return np.where(total > 0, np.where(x < mode, left, right), x >= mode)


def mixture_quantiles(w, means, sds, probs=(0.025, 0.975), iterations=48, third=None):
    r"""Quantiles of each column's mixture of Gaussians :math:`\sum_i w_i N(m_{ij}, s_{ij}^2)`, as an array
    ``(len(probs), columns)``, by bisection on the mixture's distribution function (an SD of 0 is a point mass).
    With ``third`` (the components' third central moments, as ``means``), each component is the split normal
    with its three moments (:func:`split_normal`): an effect integrated exactly whose conditional posterior is
    skewed (a group whose outcomes are all ones has a long upper tail).

    Where a posterior is a mixture over integration points whose means spread far (a separated fixed effect,
    integrated along its direction), mean :math:`\pm` 1.96 SD is no interval of it: cbpp's separating
    coefficient got [-22.8, 141.1], around 0, where its mixture puts no weight below 8.
    """
    w, means, sds = np.asarray(w, float), np.asarray(means, float), np.asarray(sds, float)
    if third is not None:
        mode, s_minus, s_plus = split_normal(means, sds**2, third)

        def cdf(x):
            return _split_cdf(x, mode, s_minus, s_plus)
        lo, hi = np.min(mode - 9.0 * s_minus, axis=0), np.max(mode + 9.0 * s_plus, axis=0)
    else:
        def cdf(x):
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(sds > 0, ndtr((x - means) / np.where(sds > 0, sds, 1.0)), x >= means)
        lo, hi = np.min(means - 9.0 * sds, axis=0), np.max(means + 9.0 * sds, axis=0)
    out = []
    for a in probs:
        left, right = lo.copy(), hi.copy()
        for _ in range(iterations):
            mid = 0.5 * (left + right)
            below = (w @ cdf(mid)) < a
            left, right = np.where(below, mid, left), np.where(below, right, mid)
        out.append(0.5 * (left + right))
    return np.array(out)


@dataclass(frozen=True)
class FitDiagnostics:
    """How a fit went.

    Attributes
    ----------
    converged : bool
    n_iter : int
        Outer iterations of the optimizer.
    grad_norm : float
        Euclidean norm of the objective's gradient at the end.
    seconds : float
        Wall time of the fit.
    objective : float
        Final objective: log joint density (map), ELBO (vb) or approximate log
        marginal likelihood (laplace).
    warnings : tuple of str
        Plain-language warnings (non-convergence, degenerate mode, ...).
    message : str
        The optimizer's stopping message.
    log : tuple of dict
        One row per iteration.
    """

    converged: bool
    n_iter: int
    grad_norm: float
    seconds: float
    objective: float
    warnings: tuple = ()
    message: str = ""
    log: tuple = ()


@dataclass(frozen=True)
class VcpGrid:
    """Posterior of each log-SD ``vcp_k`` tabulated on a grid (integrated Laplace).

    ``points[k]`` are log-SD values and ``density[k]`` the posterior density of
    ``vcp_k`` there (integrating to one over log-SD).
    """

    points: tuple
    density: tuple


def _interval_from_grid(x, dens, probs=(0.025, 0.5, 0.975)):
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(x))])
    cdf /= cdf[-1]
    return [float(np.interp(p, cdf, x)) for p in probs]


def _level(name, component):
    """The level in a random effect's name: ``g[3]`` -> ``3``, ``a:C(v)[3]`` (a component's prefix) -> ``3``,
    ``g[h[10]:x]`` -> ``h[10]:x`` (the bracket that matches the last one: a level may hold brackets)."""
    if name.startswith(component + "[") and name.endswith("]"):
        return name[len(component) + 1:-1]  # (the level is all between: it may hold brackets, matched or not)
    if name.startswith(component + ":"):
        name = name[len(component) + 1:]
    if not name.endswith("]"):
        return name
    depth = 0
    for i in range(len(name) - 1, -1, -1):
        depth += {"]": 1, "[": -1}.get(name[i], 0)
        if depth == 0:
            return name[i + 1:-1]
    return name


class _FrozenDict(dict):
    """A dict that refuses changes (a result's ``extra``); it pickles and copies as a plain dict's contents."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("a result's `extra` must not be changed; got a change (results are records of the fit).")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse

    def __reduce__(self):
        return (_FrozenDict, (dict(self),))

    def __deepcopy__(self, memo):
        import copy

        return _FrozenDict({k: copy.deepcopy(v, memo) for k, v in self.items()})


@dataclass(frozen=True)
class BayesMixedGLMResults:
    """Posterior summaries of a fitted :class:`~mglm_core.model.BayesMixedGLM`.

    Attributes
    ----------
    model : BayesMixedGLM
    method : {"map", "vb", "laplace"}
    params : ndarray
        Posterior means (the mode for ``map``), packed ``[fe, vcp, vc]``.
    fe_mean, fe_sd, vcp_mean, vcp_sd, vc_mean, vc_sd : ndarray
    border_cov : ndarray or None
        Dense posterior covariance of ``[fe, vcp]`` (None for vb, which is diagonal).
    diagnostics : FitDiagnostics
    vcp_grid : VcpGrid or None
    log_marginal_likelihood : float or None
        Approximate :math:`\\log p(y)` (laplace), or the ELBO, a lower bound (vb).
    extra : dict
        Method-specific details. laplace: ``vcp_mode`` (mode of the log-SD posterior),
        ``vcp_points`` and ``weights`` (the integration design), ``correction_spread`` (range of the
        second-order correction over the probe points) and ``conditional_shift`` (largest distance of
        an effect's exact conditional mean from its Laplace mean, in conditional SDs; NaN when the
        correction's range had already decided); both decide
        the switch to exact inner integration. map: ``collapsed`` (components at the degenerate mode).
    """

    model: object
    method: str
    fe_mean: np.ndarray
    fe_sd: np.ndarray
    vcp_mean: np.ndarray
    vcp_sd: np.ndarray
    vc_mean: np.ndarray
    vc_sd: np.ndarray
    diagnostics: FitDiagnostics
    border_cov: np.ndarray | None = None
    vcp_grid: VcpGrid | None = None
    log_marginal_likelihood: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        # read-only copies: a result is a record of the fit (writing into fe_mean would silently
        # change fe_table, predict and params)
        for name in ("fe_mean", "fe_sd", "vcp_mean", "vcp_sd", "vc_mean", "vc_sd", "border_cov"):
            object.__setattr__(self, name, read_only_copy(getattr(self, name)))
        object.__setattr__(self, "extra", _FrozenDict({k: read_only_copy(v) for k, v in self.extra.items()}))
        if self.vcp_grid is not None:
            object.__setattr__(self, "vcp_grid", VcpGrid(tuple(read_only_copy(x) for x in self.vcp_grid.points),
                                                         tuple(read_only_copy(x) for x in self.vcp_grid.density)))

    def __setstate__(self, state):
        # (unpickled and deep-copied arrays come back writable: read-only again, as a fresh result's)
        self.__dict__.update(state)
        self.__post_init__()

    # -- statsmodels-compatible attributes ---------------------------------------------------
    @property
    def params(self):
        return np.concatenate([self.fe_mean, self.vcp_mean, self.vc_mean])

    @property
    def converged(self):
        return self.diagnostics.converged

    @property
    def warnings(self):
        """The fit's warnings, then the data warnings from building the model."""
        return tuple(self.diagnostics.warnings) + tuple(getattr(self.model, "notes", ()))

    @property
    def seconds(self):
        return self.diagnostics.seconds

    @property
    def n_iter(self):
        return self.diagnostics.n_iter

    @property
    def grad_norm(self):
        return self.diagnostics.grad_norm

    @property
    def elbo(self):
        return self.diagnostics.objective if self.method == "vb" else None

    @property
    def fe_names(self):
        return list(self.model.fep_names)

    @property
    def vcp_names(self):
        return list(self.model.vcp_names)

    @property
    def vc_names(self):
        return list(self.model.vc_names)

    def cov_params(self):
        """Posterior covariance of the fixed effects and log-SDs.

        Returns a DataFrame indexed by ``fe`` and ``vcp`` names: the dense block
        for map and laplace; for vb a Series of variances of every parameter
        (mean-field factors are independent). The random-effects block is never
        formed densely; their variances are ``vc_sd**2``.
        """
        names = self.fe_names + self.vcp_names
        if self.border_cov is None:
            var = np.concatenate([self.fe_sd, self.vcp_sd, self.vc_sd]) ** 2
            return pd.Series(var, index=names + self.vc_names)
        return pd.DataFrame(self.border_cov, index=names, columns=names)

    # -- tables --------------------------------------------------------------------------------
    def _vcp_quantiles(self, k):
        if self.vcp_grid is not None:
            return _interval_from_grid(self.vcp_grid.points[k], self.vcp_grid.density[k])
        m, s = self.vcp_mean[k], self.vcp_sd[k]
        return [m - Z975 * s, m, m + Z975 * s]

    def _interval(self, kind, mean, sd, idx=None):
        """``(lower, upper)`` of the 95 % intervals: of the mixture over integration points kept in
        ``extra[kind + "_mixture"]`` (weights, means, SDs) where there is one, else mean -+ 1.96 SD."""
        mix = self.extra.get(f"{kind}_mixture") if self.extra else None
        if mix is None:
            return mean - Z975 * sd, mean + Z975 * sd
        w, means, sds, *rest = mix  # (a fourth part: the components' third central moments)
        third = rest[0] if rest else None
        if idx is not None:
            means, sds = means[:, idx], sds[:, idx]
            third = None if third is None else third[:, idx]
        lower, upper = mixture_quantiles(w, means, sds, third=third)
        return lower, upper

    def fe_table(self):
        """Fixed effects: posterior mean, SD and 95 % credible interval: the quantiles of the mixture of
        conditional Gaussians over the integration points where the fit keeps one (fit_laplace's grid over the
        log-SDs, a separated direction's grid), else mean -+ 1.96 SD."""
        lower, upper = self._interval("fe", self.fe_mean, self.fe_sd)
        return pd.DataFrame(
            {"mean": self.fe_mean, "sd": self.fe_sd, "lower": lower, "upper": upper},
            index=pd.Index(self.fe_names, name="term"),
        )

    def vcp_table(self):
        """Log-SD parameters: mean, SD, 95 % interval; and the SD scale's median and interval."""
        q = np.array([self._vcp_quantiles(k) for k in range(self.model.k_vcp)]).reshape(-1, 3)
        return pd.DataFrame(
            {"mean": self.vcp_mean, "sd": self.vcp_sd, "lower": q[:, 0], "upper": q[:, 2],
             "sd_median": np.exp(q[:, 1]), "sd_lower": np.exp(q[:, 0]), "sd_upper": np.exp(q[:, 2])},
            index=pd.Index(self.vcp_names, name="component"),
        )

    def vcp_density(self, name, n=200):
        """Posterior density of a component's SD, :math:`\\sigma = e^{vcp}`, on a grid.

        Returns a DataFrame with columns ``sd`` and ``density`` (per unit of SD).
        """
        k = self._component_index(name, "name")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
            raise DataError(f"`n` must be an integer of at least 2 (grid points); got {n!r}.")
        if self.vcp_grid is not None:
            x, d = np.asarray(self.vcp_grid.points[k]), np.asarray(self.vcp_grid.density[k])
            grid = np.linspace(x[0], x[-1], n)
            # (a long tail towards SD 0, a wide prior's: half the points over the central 98 % and a margin, or the
            # points would spread over the tail and leave the peak a handful of them: cbpp at vcp_p = 10, six at
            # half its height)
            q_lo, _, q_hi = _interval_from_grid(x, d, (0.01, 0.5, 0.99))
            if n >= 8 and 0.0 < q_hi - q_lo < 0.25 * (x[-1] - x[0]):
                core = np.linspace(max(x[0], q_lo - 0.5 * (q_hi - q_lo)), min(x[-1], q_hi + 0.5 * (q_hi - q_lo)),
                                   n - n // 2)
                grid = np.union1d(np.linspace(x[0], x[-1], n // 2), core)
                # (n points: where the two parts share one, the union has fewer; spread them over its order)
                grid = np.interp(np.linspace(0.0, grid.size - 1.0, n), np.arange(grid.size), grid)
            dens = np.interp(grid, x, d)
        else:
            m, s = self.vcp_mean[k], max(self.vcp_sd[k], 1e-12)
            if not (np.isfinite(m) and np.isfinite(s)):
                raise DataError(f"the posterior of `{self.vcp_names[k]}` has no density: its log-SD's mean and SD "
                                f"are {m:g} and {s:g} (the fit's warnings say why); refit, e.g. with fit_laplace().")
            grid = np.linspace(m - 4.5 * s, m + 4.5 * s, n)
            dens = np.exp(-0.5 * ((grid - m) / s) ** 2) / (s * np.sqrt(2 * np.pi))
        sd = np.exp(grid)
        return pd.DataFrame({"sd": sd, "density": dens / sd})

    def _component_index(self, term, arg="term"):
        """The index of the component ``term`` (a name or index), for an argument called ``arg``."""
        if self.model.k_vcp == 0:
            raise DataError(f"`{arg}` must name a variance component, and this model has none; got {term!r}.")
        if isinstance(term, (int, np.integer)) and not isinstance(term, bool):
            if not 0 <= term < self.model.k_vcp:
                raise DataError(f"`{arg}` must be between 0 and {self.model.k_vcp - 1}; got {term}.")
            return int(term)
        if term in self.vcp_names:
            return self.vcp_names.index(term)
        raise DataError(f"`{arg}` must be one of {self.vcp_names} or an index; got {term!r}.")

    def random_effects(self, term=None, *, intervals=False):
        """Posterior means and SDs of the random effects.

        Parameters
        ----------
        term : str or int, optional
            A component name (``vcp_names``) or index; None for all.
        intervals : bool
            Add the 95 % intervals and the names of the term and level (``lower``, ``upper``,
            ``term``, ``level``); without, the columns are statsmodels' (numbers only, so that
            ``re.mean()`` or ``np.exp(re)`` work as there).

        Returns
        -------
        DataFrame indexed by ``vc_names`` with columns ``Mean`` and ``SD`` (and with
        ``intervals``, ``lower``, ``upper``, ``term`` and ``level``).
        """
        idx = np.arange(self.model.k_vc)
        if term is not None:
            idx = np.flatnonzero(self.model.ident == self._component_index(term))
        names = [self.vc_names[i] for i in idx]
        m, s = self.vc_mean[idx], self.vc_sd[idx]
        out = pd.DataFrame({"Mean": m, "SD": s}, index=pd.Index(names))
        if intervals:
            comps = [self.vcp_names[self.model.ident[i]] for i in idx]
            levels = [_level(n, c) for n, c in zip(names, comps)]
            lower, upper = self._interval("vc", m, s, idx)
            out = out.assign(lower=lower, upper=upper, term=comps, level=levels)
        return out

    def summary(self):
        """statsmodels' summary table with 95 % credible intervals (text, DataFrame, HTML)."""
        return Summary(self)

    # -- prediction ----------------------------------------------------------------------------
    def predict(self, exog=None, linear=False, *, exog_vc=None, random_effects=None, offset=None):
        r"""Predicted means (or linear predictors) at the posterior means.

        As in statsmodels, the default is the population-level prediction
        :math:`g^{-1}(X\,\overline{fe} + \text{offset})` (the fixed effects only), and the mean is
        per trial for the binomial (a probability). ``random_effects=True`` adds
        :math:`Z\,\overline{vc}` (the conditional prediction, lme4's default).

        Parameters
        ----------
        exog : DataFrame or array_like, optional
            New data. A DataFrame goes through the formula's transforms (models built with
            ``from_formula``), with its columns brought to the fitting data's kinds (a year
            fitted as the category "95" may be given as the number 95); levels of a grouping
            factor not seen in fitting get random effect 0 (the population level) and a
            DataWarning that lists them. An array is the fixed-effects design. None predicts
            for the fitting data.
        exog_vc : array_like or sparse, optional
            Random-effects design for an array ``exog`` (then random effects are included
            unless ``random_effects=False``).
        linear : bool
            Return the linear predictor instead of the mean.
        random_effects : bool, optional
            Include the random effects (conditional prediction) or not (population). Default:
            only when ``exog_vc`` is given.
        offset : float or array_like, optional
            Offset of the new rows (e.g. log exposure). By default the fitting data's offset for
            ``exog=None``, the offset column read from a new DataFrame, and 0 for an array
            ``exog``; a model fitted with an offset array needs it for a new DataFrame.
        """
        m = self.model
        exog = m.as_rows(exog)  # (a dict of columns, or one row as a Series: a DataFrame)
        include = (exog_vc is not None) if random_effects is None else bool(random_effects)
        if exog is None:
            if exog_vc is not None:
                raise DataError("`exog_vc` must come with `exog` (the new rows' fixed-effects design); got "
                                "exog_vc without exog.")
            vc = self.vc_mean if include else np.zeros_like(self.vc_mean)
            eta = m.rows.linear_predictor(self.fe_mean, vc)  # the fit's offset included
            if offset is not None:
                eta = eta - (m.offset if m.offset is not None else 0.0) + offset_values(offset, eta.size)
        else:
            formula = isinstance(exog, pd.DataFrame) and m.design is not None  # (else exog is the design itself)
            if formula and exog_vc is not None:
                raise DataError("`exog_vc` must be None for a DataFrame `exog`: the formula builds it; got "
                                "an exog_vc.")
            X, o = m.new_rows(exog, offset)  # (the fixed part and the offset as the model's predict reads them)
            eta = X @ self.fe_mean
            if formula and include and m.k_vc:
                spec = m.design.spec
                unseen = spec.unseen_levels(exog)
                unseen = {k: v for k, v in unseen.items() if len(v)}
                if unseen:
                    desc = "; ".join(f"{k}: {list(v)[:5]}" for k, v in unseen.items())
                    warnings.warn(f"levels not seen in fitting get random effect 0: {desc}", DataWarning,
                                  stacklevel=2)
                factors = sorted({f for t in spec.vc_terms for f in t.factors if f in exog.columns})
                missing = {f: int(exog[f].isna().sum()) for f in factors}
                missing = {f: k for f, k in missing.items() if k}
                if missing:
                    desc = "; ".join(f"`{f}`: {k} row(s)" for f, k in missing.items())
                    warnings.warn(f"rows with a missing grouping value get random effect 0 for it (the population "
                                  f"level): {desc}", DataWarning, stacklevel=2)
                eta = eta + spec.exog_vc_for(exog) @ self.vc_mean
            elif not formula and include:
                if exog_vc is None:
                    raise DataError("`exog_vc` must be given with an array `exog` for random_effects=True; "
                                    "got None.")
                import scipy.sparse as sp

                Zn = sp.csr_matrix(exog_vc)
                if Zn.shape != (X.shape[0], m.k_vc):
                    raise DataError(f"`exog_vc` must have shape ({X.shape[0]}, {m.k_vc}); got {Zn.shape}.")
                eta = eta + Zn @ self.vc_mean
            if o is not None:
                eta = eta + o
        missing = np.isnan(eta)
        if missing.any():  # (the fitting rows are complete: only new rows or a new offset have gaps)
            warnings.warn(f"{int(missing.sum())} of {missing.size} predictions are NaN, from missing values in "
                          "the new rows' columns (fixed effects, random slopes or offset; the first at row "
                          f"{int(np.flatnonzero(missing)[0])}).", DataWarning, stacklevel=2)
        return eta if linear else m.family.mean(eta)

    def __repr__(self):
        d = self.diagnostics
        return (f"<BayesMixedGLMResults method={self.method} converged={d.converged} "
                f"iterations={d.n_iter} seconds={d.seconds:.3g}>")


class Summary:
    """Summary of a fit: ``str()`` gives text, ``to_frame()`` a DataFrame, HTML in notebooks."""

    def __init__(self, res: BayesMixedGLMResults):
        self.res = res
        fe = res.fe_table()
        vc = res.vcp_table()
        df = pd.DataFrame({
            "Type": ["M"] * len(fe) + ["V"] * len(vc),
            "Post. Mean": np.concatenate([fe["mean"], vc["mean"]]),
            "Post. SD": np.concatenate([fe["sd"], vc["sd"]]),
            "2.5%": np.concatenate([fe["lower"], vc["lower"]]),
            "97.5%": np.concatenate([fe["upper"], vc["upper"]]),
            "SD": [np.nan] * len(fe) + list(vc["sd_median"]),
            "SD (LB)": [np.nan] * len(fe) + list(vc["sd_lower"]),
            "SD (UB)": [np.nan] * len(fe) + list(vc["sd_upper"]),
        }, index=list(fe.index) + list(vc.index))
        self.table = df

    def to_frame(self):
        return self.table.copy()

    def _header(self):
        r, m, d = self.res, self.res.model, self.res.diagnostics
        method = {"map": "posterior mode (Laplace)", "vb": "mean-field variational Bayes",
                  "laplace": "integrated Laplace"}[r.method]
        return [
            f"{m.family.name.capitalize()} Mixed GLM Results ({method})",
            f"n = {m.endog.size}, fixed effects = {m.k_fep}, variance components = {m.k_vcp}, "
            f"random effects = {m.k_vc}; priors: fe ~ N(0, {m.fe_p:g}^2), vcp ~ N(0, {m.vcp_p:g}^2)" + self._offset(),
            f"converged = {d.converged}, iterations = {d.n_iter}, seconds = {d.seconds:.3g}" + self._evidence(),
        ]

    def _offset(self):
        """The offset, where the model has one: its column and terms for a formula's model."""
        m = self.res.model
        if m.offset is None:
            return ""
        spec = getattr(getattr(m, "design", None), "spec", None)
        parts = ([] if spec is None or spec.offset in (None, "array") else [f"`{spec.offset}`"])
        parts += [f"offset({t})" for t in getattr(spec, "offset_terms", ())]
        return "; offset: " + (" + ".join(parts) if parts else "given as an array")

    def _evidence(self):
        """The log marginal likelihood (integrated Laplace) or the ELBO, its lower bound (VB), for the header."""
        value = self.res.log_marginal_likelihood
        label = {"laplace": "log marginal likelihood", "vb": "ELBO"}.get(self.res.method)
        return "" if value is None or label is None else f", {label} = {value:.4f}"

    def __str__(self):
        lines = self._header()
        body = self.table.to_string(float_format=lambda v: f"{v:.4f}", na_rep="")
        width = max(len(s) for s in body.splitlines())
        notes = ["Parameter types are mean structure (M) and variance structure (V).",
                 "Variance parameters are modeled as log standard deviations; SD columns are on the SD scale "
                 "(median and 95 % interval)."]
        notes += [f"Warning: {w}" for w in self.res.warnings]
        return "\n".join(["=" * width, *lines, "-" * width, body, "-" * width, *notes])

    __repr__ = __str__

    def _repr_html_(self):
        head = "<br>".join(self._header())
        warn = "".join(f"<p style='color:#a33'>Warning: {w}</p>" for w in self.res.warnings)
        return f"<div><p>{head}</p>{self.table.to_html(float_format=lambda v: f'{v:.4f}', na_rep='')}{warn}</div>"

    def as_text(self):
        return str(self)

    def as_html(self):
        return self._repr_html_()

    @property
    def tables(self):
        """The summary's tables, as statsmodels' ``summary().tables`` (DataFrames here): the fit's facts, then the
        parameters."""
        facts = pd.DataFrame({"": self._header()})
        return [facts, self.to_frame()]

    def as_latex(self):
        """The parameters' table as LaTeX (booktabs), with the fit's facts in its caption."""
        special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
        caption = "".join(special.get(ch, ch) for ch in "; ".join(self._header()))
        return self.table.to_latex(float_format=lambda v: f"{v:.4f}", na_rep="", caption=caption, escape=True)
