r"""Comparing models by their marginal likelihood.

For models :math:`M_1, \dots, M_K` fitted to the same outcomes :math:`y`, the log Bayes factor of
:math:`M_i` against :math:`M_j` is :math:`\log p(y \mid M_i) - \log p(y \mid M_j)`, and with equal
prior odds the posterior probability of :math:`M_i` among them is

.. math::

    P(M_i \mid y) = \frac{p(y \mid M_i)}{\sum_k p(y \mid M_k)}.

:math:`\log p(y \mid M)` is ``log_marginal_likelihood`` of an integrated fit
(:meth:`~mglm_core.model.BayesMixedGLM.fit_laplace`), which integrates over every parameter, the
log-SDs included; it depends on the priors (``fe_p``, ``vcp_p``): a wider prior costs a model more per
parameter. ``fit_vb``'s value is a lower bound (the ELBO) and ``fit_map`` has none, so neither is
compared.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import DataError

__all__ = ["compare_models", "bayes_factors", "outcomes"]


def outcomes(model) -> tuple:
    r"""What a model's :math:`p(y)` is a density of: ``(family, response, trials, rows)``, the trials of a
    Bernoulli response as ones (None for the Poisson) and ``rows`` the positions of the data's rows a
    formula kept (None for a model built from arrays). The offset is not among them: it is part of the
    model (a known term of the linear predictor), so a model with an exposure offset compares with one
    that estimates a coefficient for it."""
    trials = model.trials
    if model.family.name == "binomial" and trials is None:
        trials = np.ones_like(model.endog)
    design = getattr(model, "design", None)
    return model.family.name, model.endog, trials, getattr(design, "rows", None)


def _differs(a: tuple, b: tuple) -> str | None:
    """The first part in which two :func:`outcomes` differ (None if they are the same outcomes)."""
    if a[0] != b[0]:
        return f"family ({b[0]}, not {a[0]})"
    if a[1].shape != b[1].shape:
        return f"rows ({b[1].size}, not {a[1].size})"
    if a[3] is not None and b[3] is not None and not np.array_equal(a[3], b[3]):
        return "rows (the same number, but others of the data: their formulas drop different rows with missing values)"
    if not np.array_equal(a[1], b[1]):
        return "response"
    if (a[2] is None) != (b[2] is None) or (a[2] is not None and not np.array_equal(a[2], b[2])):
        return "trials"
    return None


def bayes_factors(log_ml) -> tuple[np.ndarray, np.ndarray]:
    r"""Log Bayes factors against the best, :math:`\log p(y \mid M_i) - \max_k \log p(y \mid M_k)`, and
    posterior probabilities with equal prior odds, of models with log marginal likelihoods ``log_ml``."""
    log_ml = np.asarray(log_ml, dtype=float)
    if log_ml.ndim != 1 or log_ml.size == 0 or not np.all(np.isfinite(log_ml)):
        raise DataError(f"`log_ml` must be a non-empty sequence of finite log marginal likelihoods; got {log_ml!r}.")
    log_bf = log_ml - log_ml.max()
    weights = np.exp(log_bf)
    return log_bf, weights / weights.sum()


def compare_models(results: Sequence | Mapping, names: Sequence[str] | None = None) -> pd.DataFrame:
    r"""Compare fits of the same outcomes by their log marginal likelihood (the integrated fits').

    Parameters
    ----------
    results : sequence or mapping of BayesMixedGLMResults
        Results of :meth:`~mglm_core.model.BayesMixedGLM.fit_laplace`, all of the same outcomes
        (:func:`outcomes`): the same family, response and trials, row by row (two formulas that drop
        different rows for missing values explain different data; offsets may differ, they are part of
        the models). A mapping's keys name the models.
    names : sequence of str, optional
        Names of the models of a sequence (default ``"model 1"``, ...).

    Returns
    -------
    DataFrame
        One row per model, best first, indexed by name: ``log_marginal_likelihood``
        (:math:`\log p(y \mid M)`), ``log_bayes_factor`` against the best (:math:`\le 0`; below -1,
        a factor of 2.7, the data favour the best, below -3 strongly), ``posterior_probability``
        with equal prior odds among the models given, and ``k_fe`` / ``k_vc`` (fixed effects and
        variance components).

    Raises
    ------
    DataError
        With fewer than two results, a result without a marginal likelihood (``fit_map``; ``fit_vb``,
        whose ELBO is only a lower bound), results of different outcomes, or names that are missing
        or repeated.
    """
    from .results import BayesMixedGLMResults

    if isinstance(results, BayesMixedGLMResults):
        raise DataError("`results` must be a sequence or mapping of fit results, at least two; got one result.")
    if isinstance(results, Mapping):
        if names is not None:
            raise DataError("`names` must be None when `results` is a mapping (its keys name the models); got both.")
        names, results = [str(k) for k in results], list(results.values())
    else:
        results = list(results)
        names = [f"model {i + 1}" for i in range(len(results))] if names is None else [str(n) for n in names]
    if len(names) != len(results):
        raise DataError(f"`names` must have one entry per result; got {len(names)} for {len(results)} results.")
    if len(set(names)) != len(names):
        raise DataError(f"`names` must be distinct; got {names}.")
    if len(results) < 2:
        raise DataError(f"`results` must hold at least two fits to compare; got {len(results)}.")
    for name, res in zip(names, results):
        if not isinstance(res, BayesMixedGLMResults):
            raise DataError(f"`results` must hold fit results (BayesMixedGLMResults); got a {type(res).__name__} "
                            f"as {name!r}.")
        if res.method != "laplace":
            why = "whose ELBO is only a lower bound of it" if res.method == "vb" else "which has none"
            raise DataError(f"`results` must be fit_laplace results (a log marginal likelihood each); got a fit_"
                            f"{res.method} result as {name!r}, {why}. Refit it with fit_laplace().")
        value = res.log_marginal_likelihood
        if value is None or not np.isfinite(value):
            raise DataError(f"`results` must have finite log marginal likelihoods; got {value} for {name!r}.")
    first = outcomes(results[0].model)
    for name, res in zip(names[1:], results[1:]):
        what = _differs(first, outcomes(res.model))
        if what is not None:
            raise DataError(
                f"`results` must be fits of the same outcomes (family, response and trials, row by row); got "
                f"{name!r} differing from {names[0]!r} in its {what}: their marginal likelihoods are of different "
                "data.")
    log_ml = np.array([float(r.log_marginal_likelihood) for r in results])
    log_bf, probability = bayes_factors(log_ml)
    table = pd.DataFrame({
        "log_marginal_likelihood": log_ml,
        "log_bayes_factor": log_bf,
        "posterior_probability": probability,
        "k_fe": [r.model.k_fep for r in results],
        "k_vc": [r.model.k_vcp for r in results],
    }, index=pd.Index(names, name="model"))
    return table.sort_values("log_marginal_likelihood", ascending=False, kind="stable")
