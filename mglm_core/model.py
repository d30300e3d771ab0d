r"""The model: a frozen Bayesian mixed GLM problem.

.. math::

    y_i \mid fe, vc &\sim \text{Binomial}(n_i, \operatorname{logit}^{-1}\eta_i)
      \ \text{or}\ \text{Poisson}(e^{\eta_i}),\qquad
      \eta = X\,fe + Z\,vc + \text{offset},\\
    vc_j \mid vcp &\sim N(0, e^{2\,vcp_{ident_j}}),\qquad
    vcp_k \sim N(0, vcp\_p^2),\qquad fe_l \sim N(0, fe\_p^2).

``X`` is ``exog`` (n x p), ``Z`` is ``exog_vc`` (n x q, kept sparse), and
``ident`` assigns each column of Z to one of k variance components. The
parameter vector, as in statsmodels, is ``params = [fe, vcp, vc]``.

Three fits share one result type (:class:`~mglm_core.results.BayesMixedGLMResults`):

* :meth:`BayesMixedGLM.fit_map` -- the joint posterior mode and its Laplace
  (Gaussian) approximation, statsmodels' ``fit_map``;
* :meth:`BayesMixedGLM.fit_vb` -- mean-field Gaussian variational Bayes;
* :meth:`BayesMixedGLM.fit_laplace` -- the integrated (nested) Laplace
  approximation, which integrates the random effects out (recommended).
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd

from . import checks, laplace, nested, priors, separated, vb
from .design import build_design, offset_values
from .errors import DataWarning
from .families import get_family
from .linalg import Symbolic, single_threaded_blas
from .objectives import Elbo, LogJoint, VBPoint
from .rowstats import RowData
from .separation import find_separation

__all__ = ["BayesMixedGLM", "BinomialBayesMixedGLM", "PoissonBayesMixedGLM", "MixedGLM"]


class BayesMixedGLM:
    """Bayesian generalized linear mixed model with independent Gaussian random effects.

    Parameters
    ----------
    endog : array_like (n,)
        Response: 0/1 outcomes, successes (with ``trials``), or counts (Poisson).
    exog : array_like (n, p) or DataFrame
        Fixed-effects design; a DataFrame must have numeric columns (their names are used).
    exog_vc : array_like or scipy sparse (n, q)
        Random-effects design, kept sparse.
    ident : array_like (q,)
        Component label of each column of ``exog_vc``. Labels may be any hashable
        values; distinct labels are sorted (first-appearance order if they cannot be
        sorted) and become components ``0..k-1``. Labels that do not occur create
        no component.
    family : str, Family or statsmodels family instance
        ``"binomial"`` (logit) or ``"poisson"`` (log).
    vcp_p : float
        Prior SD of the log-SD parameters ``vcp`` (default 1).
    fe_p : float
        Prior SD of the fixed effects (default 2).
    fep_names, vcp_names, vc_names : list of str, optional
        Parameter names.
    trials : array_like (n,), optional
        Binomial trials; ``endog`` then counts successes.
    offset : array_like (n,), optional
        Added to the linear predictor (log exposure for Poisson).
    check_separation : bool
        Look for a direction of the fixed effects along which the likelihood rises without bound
        (:mod:`mglm_core.separation`; warned of, and integrated along by ``fit_laplace``). Default True.
    """

    def __init__(self, endog, exog, exog_vc=None, ident=None, family="binomial", vcp_p=1.0, fe_p=2.0,
                 fep_names=None, vcp_names=None, vc_names=None, *, trials=None, offset=None,
                 design=None, chunk_rows=None, check_separation=True):
        self.family = get_family(family)
        checks.check_aligned(endog=endog, exog=exog, exog_vc=exog_vc, trials=trials, offset=offset)
        self._endog_name = str(endog.name) if isinstance(endog, pd.Series) and endog.name is not None else None
        own = checks.read_only_copy  # (the model's own copies: the caller's arrays may change later)
        self.endog = own(checks.as_endog(endog))
        n = self.endog.size
        exog, self.fep_names = checks.as_exog(exog, n, fep_names)
        self.exog = own(exog)
        self.exog_vc = checks.as_exog_vc(exog_vc, n)
        ident, self.vcp_names = checks.as_ident(ident, self.exog_vc.shape[1], vcp_names)
        self.ident = own(ident)
        checks.check_components_nonzero(self.exog_vc, self.ident, self.vcp_names)
        self.trials = None if trials is None else own(checks.as_row_vector(trials, "trials", n))
        self.offset = None if offset is None else own(checks.as_row_vector(offset, "offset", n))
        notes = checks.check_family_data(self.family, self.endog, self.trials)
        # (a response all at one boundary has its own note, check_family_data's)
        separation = None if notes or not check_separation else find_separation(
            self.exog, self.endog, self.trials, self.family.name, self.fep_names)
        if separation is not None:
            notes = [*notes, separation.message(self.family.name)]
            warnings.warn(notes[-1], DataWarning, stacklevel=2)
        #: the fixed effects' direction that only the prior bounds (:mod:`mglm_core.separation`), or None
        self.separation = separation
        self.vcp_p = checks.check_prior_sd(vcp_p, "vcp_p")
        self.fe_p = checks.check_prior_sd(fe_p, "fe_p")
        self.k_fep, self.k_vc = self.exog.shape[1], self.exog_vc.shape[1]
        self.k_vcp = len(self.vcp_names)
        if vc_names is None:  # "<component>[<column>]": a DataFrame's column name, else counted within the component
            within = np.zeros(self.k_vc, dtype=object)
            for c in range(self.k_vcp):
                cols = np.flatnonzero(self.ident == c)
                within[cols] = np.arange(cols.size)
            if isinstance(exog_vc, pd.DataFrame) and exog_vc.shape[1] == self.k_vc:
                named = np.array([str(c) for c in exog_vc.columns], dtype=object)
                # (the columns' names where they are distinct within each component; else counted, as before)
                if all(len(set(named[self.ident == c])) == int(np.sum(self.ident == c)) for c in range(self.k_vcp)):
                    within = named
            vc_names = [f"{self.vcp_names[self.ident[j]]}[{within[j]}]" for j in range(self.k_vc)]
        self.vc_names = checks.as_names(vc_names, self.k_vc, "vc_names", "column of exog_vc")
        self.vc_count = np.bincount(self.ident, minlength=self.k_vcp).astype(float)
        self.design = design
        #: data warnings from building the model (also on every fit's ``warnings``)
        self.notes = tuple(getattr(design, "notes", ()) or ()) + tuple(notes)
        self.rows = RowData(self.exog, self.exog_vc, self.endog, self.trials, self.offset, chunk_rows)
        self._symbolic = None
        self._frozen = True

    def __setstate__(self, state):
        # (unpickled arrays come back writable: read-only again; a model pickled before separations were
        # looked for has none recorded)
        self.__dict__.update(state)
        for name in ("endog", "exog", "ident", "trials", "offset"):
            arr = self.__dict__.get(name)
            if isinstance(arr, np.ndarray):
                arr.flags.writeable = False
        self.__dict__.setdefault("separation", None)

    def __setattr__(self, name, value):
        # frozen once built: a changed prior or design would not reach the cached row data and pattern
        if getattr(self, "_frozen", False) and not name.startswith("_"):
            raise AttributeError(
                f"`{name}` of a {type(self).__name__} must not be changed after it is built; got an assignment. "
                "Build a new model (from_formula or the constructor with other arguments, or with_exog).")
        object.__setattr__(self, name, value)

    @property
    def exog_names(self):
        """The fixed effects' names (statsmodels' models carry them under this name; ``fep_names`` here)."""
        return list(self.fep_names)

    @property
    def endog_names(self):
        """The response's name: the formula's response column, a named Series' name, else ``"y"``."""
        spec = getattr(self.design, "spec", None)
        return getattr(spec, "response", None) or getattr(self, "_endog_name", None) or "y"

    def _blas(self):
        """BLAS threads for this model's fits: one unless a dense block is large."""
        sym = self.symbolic
        dense = sym.dense_size if sym is not None else 0
        return single_threaded_blas(max(dense, self.k_fep + self.k_vcp))

    @property
    def symbolic(self):
        """Pattern analysis of the random-effect block of the Hessian (computed once, reused by
        every factorisation; see :class:`mglm_core.linalg.Symbolic`)."""
        if self._symbolic is None and self.k_vc:
            self._symbolic = Symbolic(self.rows.hessian_pattern(), groups=self.ident)
        return self._symbolic

    # -- construction from formulas ---------------------------------------------------------
    @classmethod
    def from_formula(cls, formula, vc_formulas=None, data=None, family="binomial", vcp_p=1.0, fe_p=2.0,
                     vcp_names=None, vc_names=None, *, trials=None, offset=None, weights=None):
        """Build a model from a formula and a DataFrame.

        ``formula`` is ``"y ~ fixed terms"`` and may hold lme4-style independent
        random terms ``(1 | g)``, ``(0 + x | g)``, ``(1 | g:h)``; ``vc_formulas``
        is statsmodels' dict ``{component name: formula}`` (e.g.
        ``{"herd": "0 + C(herd)"}``). ``trials`` and ``offset`` may be column names.
        The design rebuilds the same columns for new data in ``predict``. ``weights`` (lme4's way of giving a
        proportion's trials) is refused with what to write instead.
        """
        if weights is not None:
            raise checks.DataError(
                "`weights` is not an argument of this model: a binomial proportion's number of trials is "
                "trials='n' with the count of successes as the response, or cbind(successes, failures) ~ ... "
                "(for lme4's glmer(p ~ ..., weights = n), add a column of successes, p * n, and write "
                "successes ~ ... with trials='n'); prior or case weights are not part of the model.")
        if data is None:
            if hasattr(vc_formulas, "columns"):
                raise checks.DataError(
                    "`data` must be a DataFrame; got None, and a DataFrame as `vc_formulas`: from_formula takes "
                    "statsmodels' order (formula, vc_formulas, data), so pass it as data=df.")
            raise checks.DataError("`data` must be a DataFrame; got None.")
        d = build_design(formula, data, vc_formulas=vc_formulas, trials=trials, offset=offset)
        return cls._make(d, family if family is not None else cls._default_family, vcp_p, fe_p, vcp_names, vc_names)

    @classmethod
    def _make(cls, d, family, vcp_p, fe_p, vcp_names=None, vc_names=None):
        # (names given as in statsmodels' from_formula replace the formula's, checked by the constructor)
        kwargs = dict(vcp_p=vcp_p, fe_p=fe_p, fep_names=d.exog_names,
                      vcp_names=d.vcp_names if vcp_names is None else vcp_names,
                      vc_names=d.vc_names if vc_names is None else vc_names, trials=d.trials, offset=d.offset,
                      design=d)
        if cls is BayesMixedGLM:
            return BayesMixedGLM(d.endog, d.exog, d.exog_vc, d.ident, family=family, **kwargs)
        return cls(d.endog, d.exog, d.exog_vc, d.ident, **kwargs)

    _default_family = "binomial"

    # -- parameter vector ---------------------------------------------------------------------
    @property
    def names(self):
        return self.fep_names + self.vcp_names + self.vc_names

    def _unpack(self, params):
        params = np.asarray(params, dtype=float)
        p, k = self.k_fep, self.k_vcp
        want = p + k + self.k_vc
        if params.shape != (want,):
            raise checks.DataError(f"`params` must have length {want} (fe, vcp, vc); got shape {params.shape}.")
        return params[:p], params[p:p + k], params[p + k:]

    def logposterior(self, params):
        """Log joint density :math:`\\log p(y, fe, vcp, vc)` (all constants included)."""
        fe, vcp, vc = self._unpack(params)
        return LogJoint(self)(fe, vcp, vc, hessian=False)[0]

    def logposterior_grad(self, params):
        """Gradient of :meth:`logposterior`, packed as ``[fe, vcp, vc]``."""
        fe, vcp, vc = self._unpack(params)
        _, g_fe, g_vcp, g_vc, _ = LogJoint(self)(fe, vcp, vc, hessian=False)
        return np.concatenate([g_fe, g_vcp, g_vc])

    def vb_elbo(self, vb_mean, vb_sd):
        """statsmodels' ``vb_elbo``: the mean-field evidence lower bound at the means ``vb_mean`` and SDs
        ``vb_sd`` (each packed ``[fe, vcp, vc]``), with its expectations exact (statsmodels integrates the
        binomial's by a 10-point rule) and all constants included."""
        return float(Elbo(self)(self._vb_point(vb_mean, vb_sd), grad=False)[0])

    def vb_elbo_grad(self, vb_mean, vb_sd):
        """statsmodels' ``vb_elbo_grad``: the gradients of :meth:`vb_elbo` with respect to the means and
        to the SDs, each packed ``[fe, vcp, vc]``."""
        g = Elbo(self)(self._vb_point(vb_mean, vb_sd))[1]
        return (np.concatenate([g.fe_mean, g.vcp_mean, g.vc_mean]),
                np.concatenate([g.fe_sd, g.vcp_sd, g.vc_sd]))

    def _vb_point(self, vb_mean, vb_sd):
        n = self.k_fep + self.k_vcp + self.k_vc
        mean, sd = (np.asarray(v, dtype=float).ravel() for v in (vb_mean, vb_sd))
        if mean.size != n or sd.size != n:
            raise checks.DataError(f"`vb_mean` and `vb_sd` must each have {n} entries (fe, vcp, vc); got "
                                   f"{mean.size} and {sd.size}.")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(sd)) and np.all(sd > 0)):
            raise checks.DataError("`vb_mean` must be finite and `vb_sd` finite and positive.")
        (fm, vm, cm), (fs, vs, cs) = self._unpack(mean), self._unpack(sd)
        return VBPoint(fe_mean=fm, vcp_mean=vm, vc_mean=cm, fe_sd=fs, vcp_sd=vs, vc_sd=cs)

    def predict(self, params, exog=None, linear=False, *, offset=None):
        r"""statsmodels' ``predict``: the mean (or linear predictor) of the fixed effects,
        :math:`g^{-1}(X\,fe + \text{offset})`, per trial for the binomial.

        ``params`` may be the full vector ``[fe, vcp, vc]`` or only its first p entries (fe).
        ``exog`` defaults to the model's design (and then includes the model's offset). New rows
        are read as by the results' ``predict``: a DataFrame (or dict of columns) goes through the
        formula of a model built from one, with the offset column read from it (``offset``
        overrides); otherwise it is the fixed-effects design, a DataFrame's columns taken by the
        names ``fep_names`` where it has them all. For predictions with random effects use the
        results' ``predict(random_effects=True)``.
        """
        params = np.asarray(params, dtype=float).ravel()
        if params.size < self.k_fep:
            raise checks.DataError(f"`params` must start with the {self.k_fep} fixed effects; got length "
                                   f"{params.size}.")
        fe = params[:self.k_fep]
        if exog is None:
            eta = self.exog @ fe + (self.offset if self.offset is not None else 0.0)
            if offset is not None:
                eta = eta - (self.offset if self.offset is not None else 0.0) + offset_values(offset, eta.size)
        else:
            X, o = self.new_rows(exog, offset)
            eta = X @ fe + (o if o is not None else 0.0)
        return eta if linear else self.family.mean(eta)

    def as_rows(self, exog):
        """New rows given as a dict of columns, or (a model built from a formula) as one row in a Series, as a
        DataFrame; anything else unchanged."""
        if isinstance(exog, dict) or (isinstance(exog, pd.Series) and self.design is not None):
            return pd.DataFrame(exog) if isinstance(exog, dict) else exog.to_frame().T.infer_objects()
        return exog

    def new_rows(self, exog, offset=None):
        """``(X, offset)``: the fixed-effects design of new rows and their offset (None without one).

        A DataFrame, a dict of columns or (one row) a Series goes through the formula of a model
        built from one (its transforms, the fitted levels, the offset column read from the rows
        unless ``offset`` is given). Otherwise ``exog`` is the fixed-effects design itself: a
        DataFrame's columns are taken by the names ``fep_names`` where it has them all (else in
        order), and must be numeric.

        Raises
        ------
        DataError
            For a design of the wrong width, a non-numeric column, or (formula models) missing
            columns or unseen levels of a fixed factor.
        """
        exog = self.as_rows(exog)
        if isinstance(exog, pd.DataFrame) and self.design is not None:
            spec = self.design.spec
            return spec.exog_for(exog), spec.offset_for(exog, offset)
        rows = exog.index if isinstance(exog, pd.DataFrame) else None  # (a Series offset by its labels)
        if isinstance(exog, pd.DataFrame):
            cols = self.fep_names if set(self.fep_names) <= set(map(str, exog.columns)) else list(exog.columns)
            exog = exog.rename(columns=str)[[str(c) for c in cols]]
            bad = [c for c in exog.columns if not pd.api.types.is_numeric_dtype(exog[c])]
            if bad:
                raise checks.DataError(f"`exog` column `{bad[0]}` must be numeric for a model built without a "
                                       f"formula; got dtype {exog[bad[0]].dtype}.")
        if np.iscomplexobj(exog):
            raise checks.DataError("`exog` must be real numbers; got complex values.")
        X = np.asarray(exog, dtype=float)
        if X.ndim == 1 and self.k_fep == 1:
            X = X[:, None]
        if X.ndim != 2 or X.shape[1] != self.k_fep:
            raise checks.DataError(f"`exog` must have {self.k_fep} columns; got shape {X.shape}.")
        return X, (None if offset is None else offset_values(offset, X.shape[0], rows))

    # -- fits ---------------------------------------------------------------------------------
    def fit_map(self, method=None, minim_opts=None, scale_fe=False, *, tol=1e-10, max_iter=200, rng=None,
                callback=None):
        """Posterior mode and its Laplace approximation (see :mod:`mglm_core.laplace`).

        The positional arguments are statsmodels' (``fit_map(method="BFGS", minim_opts=None,
        scale_fe=False)``) so that its code runs unchanged; ``method``, ``minim_opts`` and ``rng``
        are ignored (the optimizer is a deterministic sparse Newton method).
        """
        tol, max_iter = checks.check_nonnegative(tol, "tol"), checks.check_count(max_iter, "max_iter")
        with self._blas():
            return self._with_prior_pull(laplace.fit_map(self, scale_fe=scale_fe, tol=tol, max_iter=max_iter,
                                                         callback=checks.check_callback(callback)), scale_fe)

    fit = fit_map

    def fit_vb(self, mean=None, sd=None, fit_method=None, minim_opts=None, scale_fe=False, verbose=False, *,
               tol=1e-9, max_iter=500, rng=None, callback=None):
        """Mean-field variational Bayes (see :mod:`mglm_core.vb`).

        The positional arguments are statsmodels' (``fit_vb(mean=None, sd=None, fit_method="BFGS",
        minim_opts=None, scale_fe=False, verbose=False)``); ``fit_method``, ``minim_opts``,
        ``verbose`` and ``rng`` are ignored (deterministic start, Newton/fixed-point then L-BFGS).
        """
        tol, max_iter = checks.check_nonnegative(tol, "tol"), checks.check_count(max_iter, "max_iter")
        with self._blas():
            # (not judged by the prior's pull, _with_prior_pull: the mean-field SDs are too narrow to measure it by)
            return vb.fit_vb(self, mean=mean, sd=sd, scale_fe=scale_fe, tol=tol, max_iter=max_iter,
                             callback=checks.check_callback(callback))

    def fit_laplace(self, *, tol=1e-11, vcp_bounds=(-12.0, 8.0), refine=True, callback=None):
        """Integrated (nested) Laplace approximation (see :mod:`mglm_core.nested`).

        ``tol``: the inner Newton decrement; ``vcp_bounds``: the box ``(low, high)`` of log-SDs the
        mode is searched in; ``refine``: the conditional Gaussians refined variationally; ``callback``:
        ``f(fraction, message)`` as the fit progresses."""
        tol = checks.check_nonnegative(tol, "tol")
        try:
            lo, hi = (float(v) for v in vcp_bounds)
        except (TypeError, ValueError):
            raise checks.DataError(f"`vcp_bounds` must be two numbers (low, high); got {vcp_bounds!r}.") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise checks.DataError(f"`vcp_bounds` must be finite with low < high; got {vcp_bounds!r}.")
        callback = checks.check_callback(callback)
        with self._blas():
            if self.separation is not None:  # (the separating direction integrated numerically: mglm_core.separated)
                return separated.fit_laplace_separated(
                    self, self.separation, lambda m: nested.fit_laplace(m, tol=tol, vcp_bounds=(lo, hi),
                                                                        refine=bool(refine), quiet=True), callback)
            return self._with_prior_pull(nested.fit_laplace(self, tol=tol, vcp_bounds=(lo, hi), refine=bool(refine),
                                                            callback=callback))

    def _with_prior_pull(self, result, scale_fe=False):
        """``result`` with a warning (issued, and on its ``warnings``) where the fixed effects' prior moves an
        estimate by more than a posterior SD (:mod:`mglm_core.priors`; the prior on standardised columns with
        ``scale_fe``: not judged). Fits of separated data, whose prior identifies the separating direction, have
        their own warning (:mod:`mglm_core.separated`)."""
        msg = None if scale_fe else priors.prior_pull_message(result, self.fe_p)
        if msg is None:
            return result
        warnings.warn(msg, DataWarning, stacklevel=3)
        diagnostics = dataclasses.replace(result.diagnostics, warnings=(*result.diagnostics.warnings, msg))
        return dataclasses.replace(result, diagnostics=diagnostics)

    def with_exog(self, exog, *, check_separation=True):
        """A copy of the model with another fixed-effects design (same everything else; the names of
        the fixed effects kept where the number of columns is the same, else taken from ``exog``).
        ``check_separation``: as the constructor's (False for a design that spans the same columns, whose
        separation is this model's: the standardised design of ``scale_fe``)."""
        shape = np.shape(exog)
        same = len(shape) == 2 and shape[1] == self.k_fep and not hasattr(exog, "columns")
        return BayesMixedGLM(self.endog, exog, self.exog_vc, self.ident, family=self.family, vcp_p=self.vcp_p,
                             fe_p=self.fe_p, fep_names=self.fep_names if same else None, vcp_names=self.vcp_names,
                             vc_names=self.vc_names, trials=self.trials, offset=self.offset, design=self.design,
                             check_separation=check_separation)

    def __repr__(self):
        return (f"<{type(self).__name__} {self.family.name}: n={self.endog.size}, p={self.k_fep}, "
                f"k={self.k_vcp}, q={self.k_vc}>")


class _OneFamilyGLM(BayesMixedGLM):
    """A model with its family fixed by the class, with statsmodels' signatures."""

    _default_family = "binomial"

    @classmethod
    def from_formula(cls, formula, vc_formulas=None, data=None, vcp_p=1.0, fe_p=2.0, vcp_names=None, vc_names=None,
                     *, trials=None, offset=None, weights=None):
        """statsmodels' signature: ``from_formula(formula, vc_formulas, data, vcp_p=1, fe_p=2, vcp_names=None,
        vc_names=None)``."""
        return BayesMixedGLM.from_formula.__func__(cls, formula, vc_formulas, data, cls._default_family, vcp_p,
                                                   fe_p, vcp_names, vc_names, trials=trials, offset=offset,
                                                   weights=weights)

    def __init__(self, endog, exog, exog_vc, ident, vcp_p=1.0, fe_p=2.0, fep_names=None, vcp_names=None,
                 vc_names=None, **kwargs):
        super().__init__(endog, exog, exog_vc, ident, family=self._default_family, vcp_p=vcp_p, fe_p=fe_p,
                         fep_names=fep_names, vcp_names=vcp_names, vc_names=vc_names, **kwargs)


class BinomialBayesMixedGLM(_OneFamilyGLM):
    """Binomial (logit) mixed GLM with statsmodels' signature."""

    _default_family = "binomial"


class PoissonBayesMixedGLM(_OneFamilyGLM):
    """Poisson (log) mixed GLM with statsmodels' signature."""

    _default_family = "poisson"


MixedGLM = BayesMixedGLM
