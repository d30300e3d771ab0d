"""mglm_core: fast, sparse Bayesian generalized linear mixed models.

Binomial (logit) and Poisson (log) GLMMs with independent Gaussian random
effects whose log standard deviations have Gaussian priors, fitted by the
posterior mode with a Laplace approximation (``fit_map``), mean-field
variational Bayes (``fit_vb``) or the integrated (nested) Laplace
approximation (``fit_laplace``). The API follows statsmodels'
``BayesMixedGLM``; see :mod:`mglm_core.model` for the model.
"""
from .errors import ApproximationWarning, ConvergenceWarning, DataError, DataWarning, FitError, FormulaError, MglmError
from .families import Binomial, Family, Poisson
from .model import BayesMixedGLM, BinomialBayesMixedGLM, MixedGLM, PoissonBayesMixedGLM
from .results import BayesMixedGLMResults
from .comparison import compare_models
from . import datasets, simulate  # noqa: F401  (submodules as attributes)
from . import allocator

allocator.settle()  # (the C allocator's thresholds as after any large array: see mglm_core.allocator)

__version__ = "0.1.0"

__all__ = [
    "BayesMixedGLM", "BinomialBayesMixedGLM", "PoissonBayesMixedGLM", "MixedGLM", "BayesMixedGLMResults",
    "compare_models",
    "Family", "Binomial", "Poisson",
    "MglmError", "DataError", "FormulaError", "FitError", "ConvergenceWarning", "ApproximationWarning",
    "DataWarning",
]
