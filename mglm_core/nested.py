r"""The integrated (nested) Laplace fit: random effects integrated out.

With :math:`x = (fe, vc)` the latent Gaussian field and :math:`\theta = vcp`,

.. math::

    \log \tilde p(\theta \mid y) = \log p(y, \hat x_\theta, \theta)
        - \tfrac12 \log\det H_\theta(\hat x_\theta) + \tfrac{p+q}{2}\log 2\pi + \text{const},

where :math:`\hat x_\theta` is the conditional mode (damped Newton, warm
started) and :math:`H_\theta` the negative Hessian there, factored sparsely
(:mod:`mglm_core.linalg`). This is the Laplace approximation of
:math:`\int p(y, x, \theta)\,dx`; it does not have the degenerate mode of the
joint density. Its gradient in :math:`\theta` is analytic
(:meth:`_Conditional.value_grad`: one selected inverse per point); its mode
:math:`\theta^*` is found by quasi-Newton steps (from the EM update of :math:`\theta = 0`, the
secants between the two gradients as the first, diagonal curvature; stopped at a
step below 1 % of the posterior SD; 10 % for the exact density's search where a grid follows), and the curvature
:math:`\Sigma = (-\nabla^2 \log\tilde p)^{-1}` there (differences of the
gradient) defines standardised coordinates :math:`\theta = \theta^* + \Sigma^{1/2} z`:

* the 2k axial points :math:`\pm\sqrt{k}` along the axes of z first, and along
  each axis a split normal whose two scales :math:`\sigma_\pm` come from the log
  density's drops at those points (INLA's skewness correction, :func:`_split_normal`).
  With one component whose scales are within 15 % of 1 there and within 10 % at the probe
  points :math:`z = \pm 3` (a heavy tail towards SD 0 shows only there), and whose fixed effects'
  conditional variances change less than 3-fold between the two points (a factor of two or three
  levels: the Intercept's variance grows with the SD, :func:`_moments_vary`), with four
  components whose scales are within 25 % of 1, or with more than four,
  these points are the design:
  the log-SD means and covariance are the split normals', and the points' weights
  :math:`1/2k \pm m_j/(2\sqrt k)` match each axis's mean (the symmetric rule, 1/2k,
  is exact for the mean and covariance of a Gaussian);
* otherwise (a skewed posterior: few levels, an SD near 0 or a large one; and always for
  two or three components, whose skewness can lie off the axes: sparse binary crossed
  designs looked Gaussian along both axes and had scales of 1.4-1.6 along a diagonal)
  a regular grid in z (step 1, 1.5, 1.5, 1.5 for k = 1, 2, 3, 4),
  explored outwards from the mode while the log density is within 6.5, 5, 4.5, 4
  of its maximum (one component: out to 30 posterior SDs, else 12; where a wide prior leaves a long
  tail towards SD 0, points spaced along that tail beyond, :func:`_prior_tail`) (the points just beyond,
  about half of a grid of two or three components and 1-3 % of its mass, are not solved when an
  extrapolation along an axis (from their own side of the mode where the density is lopsided) puts them below the
  region, :func:`_grid_points`: they take the extrapolated value and the nearest solved point's
  moments moved along its mode's first-order change), weights
  :math:`\propto \tilde p(\theta \mid y)\,e^{\epsilon(\theta)}`, between-point
  variances divided by the lattice's factor for a Gaussian (:func:`_lattice_factors`: 0.995 at
  step 1.5; a step of 2, corrected by 0.86, put a sparse binary crossed case's log-SD means 0.3
  SD off) and each log-SD's marginal tabulated from the log density interpolated between the
  points and integrated over the lattice's cells (:mod:`mglm_core.vcp_marginals`), moved and scaled to
  the grid's mean and SD (the grid follows skewed posteriors, which split normals describe only
  roughly: grouseticks' ``LOCATION``, with scales 0.75 and 1.32, gets an SD ratio of 0.69 from them;
  split normals with the grid's three moments had the marginals' interval ends up to 0.05 SDs off
  where these are within 0.03).

:math:`\epsilon(\theta)` is the second-order correction of the Laplace value
(:meth:`_Conditional.second_order`, Shun & McCullagh 1995): with observation-level
effects of Poisson counts the plain Laplace value is biased against large SDs
(grouseticks' ``INDEX``: 0.19 posterior SDs low; 0.02 with the correction).
The series is in the variances of the linear predictors; with few rows per effect
and a large SD (binary data, one or two children per mother: guImmun) it runs away.
When it varies by more than 3 over the mode and the axial points :math:`z = \pm 3`
(checked before the design is laid out), or the terms it leaves out for the effects of the
conditionally independent component (pairs of different rows of one effect,
:meth:`~mglm_core.quadrature.IndependentEffects.left_out_pairs`) vary by more than 0.5 there (a few
binary or low-count rows per effect: the series is unreliable before it runs away; binary groups of
four rows with an SD of 3 had the log-SD 0.18 posterior SDs low), or when an effect's exact one-dimensional conditional
posterior at the mode (and, where a log-SD's posterior SD is above 0.6, at the probe points too) has its
mean more than 0.35 conditional SDs from the Laplace mean (complete separation with a large SD: every outcome
of an effect at one boundary; :meth:`~mglm_core.quadrature.IndependentEffects.conditional_shift`; at the mode
alone, two groups of one binary row had their effects' posterior SDs 25 % short), or, where the correction varies by
more than 0.1 on data of up to 50,000 rows, when the exactly integrated density itself, evaluated at those points,
would move a log-SD's mean by more than 0.1 of its posterior SD or scale its SD by more than 10 % (:func:`_exact_departure`:
intercepts and slopes of groups of five Poisson rows, a sixth of them all zeros, 0.15), the fit switches
to :class:`~mglm_core.quadrature.NestedMarginal` (the effects of a component with one effect per
row integrated exactly by adaptive Gauss–Hermite quadrature, of several such components the one
whose effects' one-dimensional Laplace approximations are the least accurate at the mode
(:meth:`~mglm_core.quadrature.IndependentEffects.laplace_error`: communities with three binary rows
and an SD of 2 rather than their mothers with an SD of 0.5); where another component's effects pair
with that one's level by level (intercepts and slopes of one factor), both as one two-dimensional
block per level (:class:`~mglm_core.quadrature.EffectBlocks`: with the intercepts alone integrated,
binary slopes of groups of three rows had their log-SD 0.35 posterior SDs low), with a rule fine enough
for the largest SD the probe points reach (:meth:`~mglm_core.quadrature.NestedMarginal.use_nodes`),
the rest by Laplace, whose own second-order correction over the fixed effects and the other
components' effects, :meth:`~mglm_core.quadrature.NestedMarginal.second_order`, is added as a curve
along each axis fitted at the Laplace mode and one posterior SD either side (:meth:`_Conditional.outer_tilt`,
:func:`_outer_curve`: the series runs away at large SDs, the curve grows like a line there and levels
off towards SD 0, as the series does; crossed binary pairs had both log-SDs 0.1 SD low without it, and a
line made the left tails too light: log-SDs' posterior SDs 17-19 % short on binary slopes crossed
with 110 levels); gradient and curvature by differences of its difference to the Laplace value),
finds the mode again, and warns; the moments at every point
then come from that approximation (:meth:`~mglm_core.quadrature.NestedMarginal.moments`:
the mode of the fixed effects and of the other components' effects plus the first-order skewness
shift, :meth:`~mglm_core.quadrature.NestedMarginal.mean_shift`, from curves in the log-SDs fitted at the
same points (:func:`_shift_curve`: the shift falls by half towards small SDs; taken at the mode it
moved a fixed slope's mean 0.18 SD too far), the exact tilted
moments of the integrated effects moved along with them), as the conditional Gaussian's are biased
there (guImmun's kid2p: 0.11 SD; effects with two binary rows and an SD of 4: 0.3 SD; the items
crossed with binary pairs of rows, at their mode, 0.1-0.17 SD short).
Otherwise, at the points whose log density is within 1 of the top, the conditional
Gaussian is refined variationally (:func:`refine_conditional`: better means for
binary data); the other points are moved by the nearest refined point's changes of
the mean and the variances (the changes vary slowly with vcp: refining out to 2.5 below
the top moved no posterior mean or SD by more than 0.01 reference SDs on the accuracy
cases, and cost a quarter of the fit). The axial design is refined at the mode, and its
points take the mode's changes: to first order in z their mean is that of refining both
points, which cost 10-25 % of a single-component fit and moved no posterior mean or SD by
more than 0.025 reference SDs on the accuracy cases. On that route the effects of the conditionally independent
component whose conditional posterior is skewed take their exact one-dimensional variances and third moments (and,
at one boundary, means) given the rest, with the rest's uncertainty carried through (:class:`_SkewedEffects`).
With one component (or an observation-level one inside another), on either route, the fixed effects'
conditional covariance is then widened by the factor that the skewness and kurtosis of their exactly
integrated likelihood give at the mode of vcp (:func:`_fixed_effect_widening`,
:meth:`~mglm_core.quadrature.NestedMarginal.covariance_factor`): a few events leave the curvature at
the conditional mode too sharp (cbpp's period 4 and a slope under near-separation, 2.3 % and 2.7 %; a
slope beside a level without events 3.7 % short of importance sampling before, 0.5 % after).
Posterior means and variances of fe and vc are mixtures over the points of
the conditional Gaussian approximations:
:math:`\mathrm{E}x = \sum_t w_t \hat x_t`,
:math:`\mathrm{Var}\,x = \sum_t w_t (V_t + \hat x_t^2) - (\mathrm{E}x)^2`.
The log marginal likelihood is :math:`\log \int \tilde p(y, \theta)\,d\theta`
by the same rule.

A model without random effects (a GLM) has no :math:`\theta`: its fixed effects' posterior is integrated by
a product Gauss-Hermite rule (:mod:`mglm_core.fixed_quadrature`, up to four fixed effects and 4e6 rows
times nodes, where the rule resolves it), else the Laplace Gaussian at the mode is kept; ``diagnostics.message``
says which. Fixed effects separated by the outcomes are integrated along their direction
(:mod:`mglm_core.separated`).
"""
from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from . import fixed_quadrature
from .errors import ApproximationWarning, ConvergenceWarning, FitError
from .laplace import chord_start, conditional_fun
from .linalg import DENSE_TAIL_MAX, held_bytes, release
from .newton import NewtonResult, newton_ascent
from .objectives import LOG_2PI, LogJoint
from .progress import Progress
from .quadrature import IndependentEffects, NestedMarginal
from .results import BayesMixedGLMResults, FitDiagnostics, VcpGrid, split_normal
from .vcp_marginals import lattice_marginals

__all__ = ["fit_laplace"]

_STEP = {1: 1.0, 2: 1.5, 3: 1.5, 4: 1.5}
_STEP_OBSERVATION = 1.0  # ... with an observation-level component inside the groups' rule (_grid_step)
_DROP_K = {1: 6.5, 2: 5.0, 3: 4.5, 4: 4.0}
_GRID_MAX_K = 3  # up to this many components the grid unless near-Gaussian (one component)
_SKEWED_GRID_MAX_K = 4  # ... and up to this many the grid where an axis is skewed
_GRID_TOL = 1e-7  # inner Newton decrement at the integration points
_FREE_STEP = 3e-2  # ... where a last Newton step is taken on the previous factorisation (newton_ascent)
_SPREAD_MAX = 3.0  # largest range of the second-order correction over the probe points
_LEFT_OUT_MAX = 0.5  # ... and of the pairs of an effect's rows it leaves out (IndependentEffects.left_out_pairs)
_PROBE_Z = 3.0  # the probe points: the mode and z = +-_PROBE_Z along the axes
_SKEW_MAX = 1.15  # the axial design (split normals) when no axis's scale is beyond this factor of 1
_SKEW_FAR = 1.1  # ... and none measured at the probe points z = +-3 beyond this
_SKEW_MAX_4 = 1.25  # four components: the axial design when no scale is beyond this factor of 1 (draws of a
# Poisson model with scales 0.85-1.14 hold every bar with it)
_SHIFT_MAX = 0.35  # switch to the nested approximation when an effect's conditional mean is this far off
_WIDE_SD = 0.6  # ... judged at the probe points too where a log-SD's posterior SD is above this
_VAR_RATIO_MAX = 3.0  # the grid when a fixed effect's conditional variance changes this much over the axial points
_REFINE_DROP = 1.0  # refine the conditional Gaussians within this of the top log density
_PREDICT_MARGIN = 0.5  # grid points extrapolated this far below the region are not solved (_grid_points)
#: The grid is explored out to this many posterior SDs (at the mode's curvature) along each axis (grouseticks' BROOD
#: and LOCATION with fe_p = 100 reach 7.5 along a ridge still 4.7 below the top; 7 had cut it there), ...
_Z_MAX = 12.0
#: ... and with one component out to this many: with a wide prior on the log-SD (vcp_p = 10) and data that hardly
#: inform the SD (ten groups of binary rows without a group effect), the density towards SD 0 levels off into the
#: prior's own tail, 4 below its top 25 SDs (at the mode's curvature) away (the quadratic through the mode and its
#: two neighbours had put that side 7.7 below the top at z = -2, :func:`_extrapolate`, and the log-SD's posterior
#: mean was -5.0 where it is -9.0).
_Z_MAX_1 = 30.0
#: Grid points whose exact (nested) value, estimated from the start of their inner Newton iterations, is this far
#: below the largest value seen (a weight below 8 % of the largest) keep that estimate when the Newton decrement
#: there is below 0.1 e^(d/2), d how much further below they are (NestedMarginal._one_step): a third fewer
#: evaluations of the exact density on the grids with three or four components; on the 60 accuracy cases that
#: switch, no mean moved by more than 0.005 posterior SDs and no SD by more than 0.5 % (against solving every point).
_ONE_STEP_DROP = 2.5
_CHORD_STOP = 1e-1  # the first inner solve starts where chord steps on the IRLS factorisation get (laplace.chord_start)
_MODE_SD_TOL = 1e-2  # the mode search stops at a Newton step below this fraction of the log-SDs' posterior SDs
#: ... and the exact (nested) density's search where the design is the grid whatever the density's shape
#: (_always_grid: two or three components, or four under the exact integration): the mode is only the grid's
#: origin, and a regular grid integrates as well from a point a tenth of a posterior SD off it (an axial design
#: is centred at the mode, and its
#: split normals would read an offset of 0.1 SD as a skewness of 20 %). On the 60 accuracy cases that switch:
#: 0-11 of their 11-178 exact evaluations fewer, and no error or SD ratio against the references changed by more
#: than 0.02 (a log-SD's SD ratio of sparse crossed binary data, 0.994 to 0.974).
_GRID_MODE_SD_TOL = 1e-1
#: :func:`_fixed_effect_widening` builds the nested approximation for it, on a fit that does not use it, up to this
#: many rows: its rule's arrays are rows x nodes, and with this many rows the fixed effects' conditional posterior
#: is close to Gaussian unless their events are few (on the accuracy cases with a few hundred to 2000 rows the
#: widening was 0-3 % of an SD, 0.2 % on Contraception's 1934 rows).
WIDEN_ROWS_MAX = 50_000
#: The random effects' mixture over the grid (points x effects, for their intervals' quantiles) is kept up to this
#: many numbers (its quantiles then take about 0.1 s).
VC_MIXTURE_MAX = 200_000
#: The exactly integrated effects' third moments (their intervals' skew, :meth:`NestedMarginal.moments`) are made up
#: to this many rows: they cost a second rows x nodes product at each point (30 % of a fit of 1e5 Poisson rows in
#: groups of ten, whose effects' skew is small), and the skewed posteriors they serve are those of few rows
SKEW_ROWS_MAX = 50_000
_ALWAYS_GRID = range(2, _GRID_MAX_K + 1)  # the numbers of components whose design is always the grid (_design)


def _always_grid(cond, k):
    r"""Whether the design for ``k`` components is the grid whatever the density's shape (:func:`_design`):
    two or three components (:data:`_ALWAYS_GRID`), and up to :data:`_SKEWED_GRID_MAX_K` under the exact
    inner integration (``cond.correction == "nested"``). That integration takes over where a component has few
    observations per effect, where the log-SDs' posterior is skewed: the accuracy case with four components
    that switches went to the grid on its axial probes (scales 0.70-1.35, beyond :data:`_SKEW_MAX_4`), and
    deciding without them saves their eight exact solves (4 % of its time) for the same means and SDs."""
    return k in _ALWAYS_GRID or (cond.correction == "nested" and k <= _SKEWED_GRID_MAX_K)


@dataclass(frozen=True)
class _OuterCorrection:
    """The nested approximation's outer second-order correction and skewness shift, fitted along
    the axes ``root`` around ``theta0`` (:meth:`_Conditional.outer_tilt`): the correction ``e0``
    there and its ``curves`` (:func:`_outer_curve`; its ``slope`` in vcp at ``theta0``), the shift
    ``s0`` (u_D then fe; None where not computed) and its curves ``shifts`` (:func:`_shift_curve`)."""

    theta0: np.ndarray
    e0: float
    slope: np.ndarray
    root: np.ndarray
    curves: list
    s0: np.ndarray | None
    shifts: list

    def z(self, vcp):
        """Coordinates of ``vcp`` along the axes."""
        return self._inverse @ (np.asarray(vcp, dtype=float) - self.theta0)

    def value(self, vcp):
        r"""The correction at ``vcp``: :math:`\epsilon(\theta^*) + \sum_i f_i(z_i)` (:func:`_outer_value`,
        over all axes in one array operation)."""
        line, A, beta = self._curve_arrays
        bz = beta * self.z(vcp)
        return self.e0 + float(np.sum(np.where(line, bz, A * (np.logaddexp(0.0, bz) - np.log(2.0)))))

    @functools.cached_property
    def _curve_arrays(self):
        """:attr:`curves` as arrays: whether a line, A (1 for a line), beta (the slope for a line)."""
        line = np.array([c[0] == "line" for c in self.curves], dtype=bool)
        A = np.array([1.0 if ln else c[0] for ln, c in zip(line, self.curves)], dtype=float)
        beta = np.array([c[1] for c in self.curves], dtype=float)
        return line, A, beta

    @functools.cached_property
    def _inverse(self):
        return np.linalg.inv(self.root)  # (k x k; a product per point instead of a solve)

    def shift(self, z):
        """The skewness shift at ``z`` (:func:`_shift_value` of every axis's curves, one array
        operation): ``s0`` plus the sum over the axes."""
        c, gamma, slope, ok = self._shift_arrays
        z = np.asarray(z, dtype=float)[:, None]
        return self.s0 + np.sum(np.where(ok, c * np.expm1(gamma * z), slope * z), axis=0)

    @functools.cached_property
    def _shift_arrays(self):
        """:attr:`shifts` stacked (axes x coordinates; zeros for an axis without a curve)."""
        n = self.s0.size
        out = [np.zeros((len(self.shifts), n)) for _ in range(3)] + [np.zeros((len(self.shifts), n), bool)]
        for i, curve in enumerate(self.shifts):
            if curve is not None:
                for a, part in zip(out, curve):
                    a[i] = part
        return tuple(out)


class _Conditional:
    r"""Inner Laplace approximations at given vcp.

    Each solve starts from the nearest solved point moved along the mode's first-order
    change, :math:`\hat x(\theta') \approx \hat x(\theta) + (d\hat x/d\theta)(\theta' - \theta)` with
    :math:`d\hat x/d\theta_k = H^{-1}\,\partial g/\partial\theta_k` and
    :math:`\partial g_{u_j}/\partial\theta_k = 2 u_j e^{-2\theta_k}` for the effects of component k
    (implicit differentiation of :math:`g(\hat x(\theta), \theta) = 0`): close points converge in one
    Newton step.
    """

    max_points = 256  # solved points kept for warm starts
    #: Bytes of dense factors (:func:`~mglm_core.linalg.held_bytes`) the solved points may hold together.
    #: Beyond it the older points' kept inverses are dropped, then the oldest points themselves (solved
    #: again, from a warm start, if asked for again): two crossed factors of 5,000 levels each hold
    #: 400 MB a point, and the 30 points of a fit held 12 GB.
    memory_max = 1 << 30

    def __init__(self, model, tol):
        self.model = model
        self.lj = LogJoint(model)
        self.tol = tol
        # the first inner solve (at vcp = 0) starts where chord steps on the IRLS factorisation get
        self.start = chord_start(model, self.lj, _CHORD_STOP)[:2]
        self.symbolic = model.symbolic  # pattern analysis reused by every inner fit
        self.n_inner = 0
        self.cache = {}
        self.cache_tol, self.forgotten = {}, {}  # the inner tolerance of each point solved, and of those forgotten
        self._admitted = 0  # what the factors held may come to, in bytes, at most (_bound_memory)
        self.points = []  # (theta, u, b, du/dtheta, db/dtheta)
        self.correction = None
        self.delta = {}  # at each solved vcp: the second-order correction, or the nested value
        self.nested_optimum = {}  # nested mode: NestedMarginal.last (its optimum) at each solved vcp
        self._starts = None  # ... those solved as (log-SDs, count, optima stacked) (_solved)
        self.outer = None  # nested mode: the outer Laplace's correction (outer_tilt, _OuterCorrection)
        self.anchor = None  # the log-SDs at which `independent` picks its component

    @staticmethod
    def _key(vcp):
        return tuple(round(v, 12) for v in np.asarray(vcp, dtype=float).tolist())

    @functools.cached_property
    def independent(self):
        """The :class:`~mglm_core.quadrature.IndependentEffects` of the model (None without a
        component with at most one effect per row): of several, the one whose effects' Laplace
        approximations are the least accurate at the solution for :attr:`anchor` (the mode of the
        log-SDs' Laplace density, once found), else the one with the most effects. Its rows in the
        data's order (the checks' sums do not need them by effect; :attr:`nested` sorts them)."""
        nr = self(self.anchor)[1] if self.anchor is not None else None
        if nr is None or nr.factor is None:
            return IndependentEffects.find(self.model, by_effect=False)
        eta = self.model.rows.linear_predictor(nr.b, nr.u)
        return IndependentEffects.find(self.model, eta=eta, vcp=np.asarray(self.anchor, dtype=float),
                                       by_effect=False)

    @functools.cached_property
    def nested(self):
        """The :class:`~mglm_core.quadrature.NestedMarginal` of the model (None without a component
        with one effect per row); built on first use, only for the fits that switch to it."""
        ie = self.independent
        if ie is None:
            return None
        nested = NestedMarginal.build(self.model, ie)
        # the integrated effects' skewness for their intervals, where the grid's mixture of the random effects is
        # likely kept (VC_MIXTURE_MAX: grids have up to a few tens of points), up to SKEW_ROWS_MAX rows
        nested.skew = self.model.k_vc * 20 <= VC_MIXTURE_MAX and self.model.endog.size <= SKEW_ROWS_MAX
        return nested

    def conditional_shift(self, vcp):
        """The largest distance, in conditional SDs, of a separated effect's exact conditional mean
        from its Laplace mean at ``vcp`` (:meth:`~mglm_core.quadrature.IndependentEffects.conditional_shift`
        over the :meth:`~mglm_core.quadrature.IndependentEffects.boundary_effects` of the conditionally
        independent component; 0 without any)."""
        ie = self.independent
        if ie is None:
            return 0.0
        effects = ie.boundary_effects(self.model)
        nr = self(vcp)[1]
        if effects.size == 0 or nr.factor is None:
            return 0.0
        eta = self.model.rows.linear_predictor(nr.b, nr.u)
        return float(np.max(ie.conditional_shift(self.model, eta, nr.u, np.exp(vcp[ie.component]), effects)[0]))

    def left_out(self, vcp):
        """:meth:`~mglm_core.quadrature.IndependentEffects.left_out_pairs` of the conditionally
        independent component at the solution for ``vcp`` (0 without one)."""
        ie = self.independent
        nr = self(vcp)[1]
        if ie is None or nr.factor is None:
            return 0.0
        eta = self.model.rows.linear_predictor(nr.b, nr.u)
        return ie.left_out_pairs(self.model, eta, np.exp(vcp[ie.component]))

    def __call__(self, vcp, tol=None):
        """``(log p~(vcp | y) + const, NewtonResult)`` at ``vcp``; ``tol`` overrides the inner
        tolerance for a point not solved yet."""
        return self._entry(vcp, tol)[:2]

    def _entry(self, vcp, tol=None):
        key = self._key(vcp)
        if key not in self.cache:
            # (a point forgotten by _bound_memory is solved again to the tolerance it was first solved to)
            tol = self.forgotten.pop(key, self.tol if tol is None else tol)
            self.cache[key] = self._solve(np.asarray(vcp, dtype=float), tol)
            self.cache_tol[key] = tol
            self._bound_memory(key, self.cache[key][1].factor)
        return self.cache[key]

    def _bound_memory(self, newest, factor):
        """Keep the dense factors of the solved points (the Laplace solutions', and the nested optima's)
        within :attr:`memory_max`, ``factor`` the one just solved at ``newest``: drop what the other points'
        factors keep for reuse, then forget the oldest points' factors, solutions first (never
        ``newest``'s). A forgotten solution is solved again where asked for again (:meth:`_entry`), a
        forgotten optimum's factor where its moments are (:meth:`nested_optimum_at`).

        The points are measured only once four times what their factors held when solved (a dense
        Schur factor and the inverses it keeps come to about three times the factor) may exceed the bound: a fit of
        small factors does not measure its hundreds of points at every solve."""
        self._admitted += 4 * held_bytes(factor)
        if self._admitted <= self.memory_max:
            return
        factors = self.solved_factors()
        held = {w: held_bytes(f) for w, f in factors.items()}
        self._admitted = 4 * sum(held.values())
        if sum(held.values()) <= self.memory_max:
            return
        for w, f in factors.items():
            if w[1] != newest:
                release(f)
                held[w] = held_bytes(f)
        total = sum(held.values())
        for (where, k_), size in held.items():
            if total <= self.memory_max:
                break
            if k_ == newest or not size:
                continue
            if where == "laplace":
                del self.cache[k_]
                self.forgotten[k_] = self.cache_tol.pop(k_)
            else:
                o = self.nested_optimum[k_]
                self.nested_optimum[k_] = (o[0], o[1], None, *o[3:])
            total -= size
        self._admitted = 4 * total

    def solved_factors(self):
        """The factorisations of the solved points, by ``("laplace", key)`` (the Laplace solutions') and
        ``("nested", key)`` (the nested optima's; None where :meth:`_bound_memory` forgot it)."""
        factors = {("laplace", k_): e[1].factor for k_, e in self.cache.items()}
        factors.update({("nested", k_): o[2] for k_, o in self.nested_optimum.items() if o is not None})
        return factors

    def nested_optimum_at(self, vcp):
        """The nested optimum at a solved ``vcp`` (None where it was not solved), its factorisation
        solved for again where :meth:`_bound_memory` forgot it (the value kept is the first one's)."""
        key = self._key(vcp)
        opt = self.nested_optimum.get(key)
        if opt is not None and opt[2] is None:
            value = self.delta.pop(key, None)
            self._nested_value(np.asarray(vcp, dtype=float))
            if value is not None:
                self.delta[key] = value
            opt = self.nested_optimum.get(key)
        return opt

    def value_grad(self, vcp):
        r"""The log density and its gradient in vcp.

        .. math::

            \frac{\partial \log\tilde p}{\partial\theta_k} = \sum_{j\in k}(\hat u_j^2 e^{-2\theta_k} - 1)
              - \frac{\theta_k}{vcp\_p^2} + e^{-2\theta_k}\sum_{j\in k}(H^{-1})_{jj}
              - \tfrac12 \sum_i w_i'\, v_i\, x_i^\top \frac{d\hat x}{d\theta_k},

        the explicit derivative of the log joint at the mode (the envelope theorem) and
        :math:`-\tfrac12\,\mathrm{tr}(H^{-1} dH/d\theta_k)`: the prior precision's change and the
        change of the weights :math:`w_i` along the mode's path (:math:`v_i = x_i^\top H^{-1} x_i`,
        :math:`w_i' = dw_i/d\eta_i`). Costs one selected inverse at the cached inner solution.
        """
        logp, nr, su, sb = self._entry(vcp)
        k = self.model.k_vcp
        if su is None:
            return logp, np.full(k, np.nan)
        m = self.model
        vcp = np.asarray(vcp, dtype=float)
        prec_k = np.exp(-2.0 * vcp)
        g = (np.bincount(m.ident, weights=nr.u**2, minlength=k) * prec_k - m.vc_count - vcp / m.vcp_p**2
             + prec_k * np.bincount(m.ident, weights=nr.factor.sparse_diag_inverse(), minlength=k))
        v = m.rows.latent_row_variances(nr.factor)
        xr, zr = m.rows.weight_derivative_sums(m.family, nr.b, nr.u, v)
        return logp, g - 0.5 * (xr @ sb + zr @ su)

    def em_point(self, vcp):
        r"""The EM update of the log-SDs from the conditional Gaussian at ``vcp``,
        :math:`\theta_k' = \tfrac12 \log\big(\sum_{j\in k} (\hat u_j^2 + (H^{-1})_{jj}) / m_k\big)`
        (the stationary point of the expected log prior of the effects, without the log-SD prior and
        the weights' change): a start for the search (None where the inner problem failed)."""
        nr = self(vcp)[1]
        m = self.model
        if nr.factor is None:
            return None
        s = np.bincount(m.ident, weights=nr.u**2 + nr.factor.sparse_diag_inverse(), minlength=m.k_vcp)
        with np.errstate(divide="ignore"):
            return 0.5 * np.log(s / np.maximum(m.vc_count, 1))

    def corrected(self, vcp, tol=None, floor=None):
        """``(log p~(vcp | y) + correction + const, NewtonResult)``: the Laplace value plus
        :meth:`second_order` (``self.correction == "second_order"``), or nothing (``None``); or
        ``(value, None)`` with the value of the nested approximation, the conditionally independent
        component integrated exactly (``"nested"``, :class:`~mglm_core.quadrature.NestedMarginal`; a point
        not solved yet whose value estimated from its start is below ``floor`` keeps that estimate,
        :meth:`~mglm_core.quadrature.NestedMarginal.log_marginal`)."""
        if self.correction == "nested":
            return self._nested_value(vcp, floor), None
        logp, nr = self(vcp, tol)
        if self.correction is None or not np.isfinite(logp):
            return logp, nr
        key = self._key(vcp)
        if key not in self.delta:
            self.delta[key] = self.second_order(np.asarray(vcp, dtype=float))
        return logp + self.delta[key], nr

    def _nested_value(self, vcp, floor=None):
        """The nested approximation's log density at ``vcp``, started from the points solved
        (:func:`_linear_start`; the Laplace mode's solution for the first)."""
        key = self._key(vcp)
        if key not in self.delta:
            vcp = np.asarray(vcp, dtype=float)
            keys, vectors = self._solved()
            near = None
            if keys.shape[0]:
                uD, fe, near = _linear_start(vcp, keys, vectors, self.nested.D.size)
            else:
                nr = self(vcp)[1]
                uD, fe = nr.u[self.nested.D], nr.b
            self.nested.start = None
            outer = self.outer.value(vcp) if self.outer is not None else 0.0  # (outer_tilt's correction)
            value = self.nested.log_marginal(vcp, uD, fe, floor=None if floor is None else floor - outer)
            if not np.isfinite(value) and near is not None:  # the extrapolated start failed: the nearest optimum's
                value = self.nested.log_marginal(vcp, *near)
            value += outer
            self.delta[key] = value
            self._remember(key, self.nested.last)
        return self.delta[key]

    def outer_tilt(self, theta0, root):
        r"""Fit the second-order correction of the nested approximation's outer Laplace
        (:meth:`~mglm_core.quadrature.NestedMarginal.second_order`, over the fixed effects and the
        other components' effects) as :math:`\epsilon(\theta^*) + \sum_i f_i(z_i)`, a curve along each
        axis (:func:`_outer_curve`, a line where none fits) through its values at ``theta0`` and at
        :math:`\theta^* \pm \mathrm{root}\, e_i` (one posterior SD along each axis), and the skewness
        shift (:meth:`~mglm_core.quadrature.NestedMarginal.mean_shift`) at the same points as curves
        per coordinate (:func:`_shift_curve`, read by :meth:`outer_shift`); add the correction to
        :meth:`corrected` from then on (call it after :meth:`use` has switched to the nested
        approximation and before any nested value is cached: its optima start those values' solves).

        The correction itself is a series that runs away at large SDs (binary pairs crossed with
        items: 0.2 at the mode, 1.1 and 5.4 at SDs of 8 and 11), where its curve grows only like a
        line; towards SD 0 it levels off, as the curve does (a line there made the log-SDs' left
        tails too light). Within two posterior SDs it matched importance sampling of the outer
        integral to 0.04 (the gap grew from 0.09 to 0.49 along the items' log-SD, which put that
        log-SD 0.12 posterior SD low without it).
        Nothing without other components (the outer Laplace is then over the fixed effects alone,
        informed by every row: the correction moved no posterior mean or SD of the accuracy cases by
        more than 0.007 reference SDs and cost up to 2.5 times the fit) or where the correction is not
        computed (effects with too many rows).
        """
        nested = self.nested
        if not nested.D.size:
            return
        theta0 = np.asarray(theta0, dtype=float)

        values = {}  # the nested values at the points, kept as those of corrected() once the correction is known

        def terms(th, start=None):  # (correction, shift) at th, (nan, None) where not computed
            value = -np.inf
            if start is not None:  # (the mode's nested optimum moved along its Laplace optimum's derivative)
                nested.start = None
                value = nested.log_marginal(th, *start)
            if not np.isfinite(value):
                nr = self(th, tol=_GRID_TOL)[1]  # (its optimum only starts the nested solve)
                if nr.factor is None:
                    return np.nan, None
                # (from the last point's nested optimum moved by the Laplace optima's change between
                # the two, NestedMarginal.start: two Newton evaluations instead of three from its
                # Laplace optimum; the optima then start the nested values' solves, _nested_value)
                value = nested.log_marginal(th, nr.u[nested.D], nr.b)
            if not np.isfinite(value):
                return np.nan, None
            self._remember(self._key(th), nested.last)
            values[self._key(th)] = value
            e, shift = nested.outer_terms(th)
            return (np.nan if e is None else e), (None if shift is None else np.concatenate(shift))

        nested.start = None
        e0, s0 = terms(theta0)
        if not np.isfinite(e0):
            return
        # the other points start from the mode's nested optimum moved by the Laplace optimum's derivative in
        # the log-SDs there (no Laplace solve at each)
        opt0, su0, sb0 = self.nested_optimum[self._key(theta0)], *self._entry(theta0)[2:]

        def start(th):
            if su0 is None:
                return None
            d = th - theta0
            return opt0[0] + su0[nested.D] @ d, opt0[1] + sb0 @ d

        dz = np.zeros(theta0.size)
        curves, shifts = [], []
        for i in range(theta0.size):
            th_lo, th_hi = theta0 - root[:, i], theta0 + root[:, i]
            (lo, s_lo), (hi, s_hi) = terms(th_lo, start(th_lo)), terms(th_hi, start(th_hi))
            lo, hi = lo - e0, hi - e0
            dz[i] = 0.5 * (hi - lo) if np.isfinite(lo) and np.isfinite(hi) else 0.0
            curve = _outer_curve(lo, hi)
            curves.append(("line", dz[i]) if curve is None else curve)
            shifts.append(None if s_lo is None or s_hi is None or s0 is None else _shift_curve(s_lo - s0, s_hi - s0))
        # z = root^-1 (theta - theta0): the slope in theta is root^-T times the slope in z
        self.outer = _OuterCorrection(theta0, e0, np.linalg.solve(root.T, dz), root, curves, s0, shifts)
        for key, value in values.items():  # (the values _nested_value would solve for again)
            self.delta[key] = value + self.outer.value(np.array(key))

    def axis_quadratic(self):
        r"""``(gradient, -Hessian)`` in vcp at :meth:`outer_tilt`'s centre :math:`\theta^*` from the
        corrected values there and at :math:`\theta^* \pm \mathrm{root}\, e_i`: central differences over one
        posterior SD, :math:`g_z = (f_+ - f_-)/2` and :math:`c_i = 2f_0 - f_+ - f_-` along each axis (none
        across), mapped by :math:`\mathrm{root}^{-1}`. A start for the search of the exact density's mode, whose
        first step then needs no difference stencil at :math:`\theta^*`; None without those points, or where a
        curvature is not positive."""
        o = self.outer
        if o is None:
            return None
        f = lambda th: self.delta.get(self._key(th), np.nan)  # noqa: E731
        f0 = f(o.theta0)
        lo = np.array([f(o.theta0 - o.root[:, i]) for i in range(o.theta0.size)])
        hi = np.array([f(o.theta0 + o.root[:, i]) for i in range(o.theta0.size)])
        c = 2.0 * f0 - lo - hi
        if not (np.isfinite(f0) and np.all(np.isfinite(c)) and np.all(c > 0.0)):
            return None
        inv = o._inverse
        return inv.T @ (0.5 * (hi - lo)), (inv.T * c) @ inv

    def outer_shift(self, vcp):
        """The skewness shift of (u_D, fe) at ``vcp`` from the curves :meth:`outer_tilt` fitted along the
        axes (``(shift_D, shift_fe)``), or None without them."""
        if self.outer is None or self.outer.s0 is None:
            return None
        s = self.outer.shift(self.outer.z(vcp))
        return s[:self.nested.D.size], s[self.nested.D.size:]

    def use(self, correction):
        """Switch the correction of :meth:`corrected` (``"second_order"``, ``"nested"`` or None)."""
        if correction != self.correction:
            self.correction, self.delta, self.nested_optimum = correction, {}, {}
            self._starts = None

    def _remember(self, key, optimum):
        """Record the nested optimum at ``key`` (None: not solved), also among :meth:`_solved`'s."""
        if key in self.nested_optimum:
            self._starts = None  # (replaced: made again from the dictionary on next use)
        self.nested_optimum[key] = optimum
        if optimum is not None:
            self._bound_memory(key, optimum[2])
        if optimum is not None and self._starts is not None:
            keys, n, vectors = self._starts
            if n == keys.shape[0]:
                keys, vectors = np.vstack([keys, np.empty_like(keys)]), np.vstack([vectors, np.empty_like(vectors)])
            keys[n] = key
            vectors[n, :optimum[0].size], vectors[n, optimum[0].size:] = optimum[0], optimum[1]
            self._starts = (keys, n + 1, vectors)

    def _solved(self):
        """The solved points' log-SDs (n x k) and their nested optima's ``(u_D, fe)`` stacked (n x dim), in
        the order solved (for :func:`_linear_start`; kept as they come, not rebuilt from
        :attr:`nested_optimum` per solve)."""
        if self._starts is None:
            items = [(k_, opt) for k_, opt in self.nested_optimum.items() if opt is not None]
            keys = np.array([k_ for k_, _ in items], dtype=float).reshape(len(items), self.model.k_vcp)
            dim = self.nested.D.size + self.model.k_fep
            vectors = np.array([np.concatenate(opt[:2]) for _, opt in items]).reshape(len(items), dim)
            room = max(16, len(items))
            self._starts = (np.vstack([keys, np.empty((room, keys.shape[1]))]), len(items),
                            np.vstack([vectors, np.empty((room, dim))]))
        keys, n, vectors = self._starts
        return keys[:n], vectors[:n]

    def _base_and_difference(self):
        """The part of :meth:`corrected` with an analytic gradient (:meth:`value_grad`, or None for
        the nested approximation) and the rest as a function of vcp (differenced)."""
        if self.correction == "nested":
            return None, lambda x: self.corrected(x)[0]
        return self.value_grad, lambda x: self.corrected(x)[0] - self(x)[0]

    def corrected_value_grad(self, vcp, h=1e-2):
        """:meth:`corrected` and its gradient: :meth:`value_grad` plus central differences of the
        correction (which has no closed-form derivative), or central differences of the nested value."""
        vcp = np.asarray(vcp, dtype=float)
        base, d = self._base_and_difference()
        f, g = base(vcp) if base is not None else (self.corrected(vcp)[0], np.zeros(vcp.size))
        if self.correction is None or not np.isfinite(f):
            return f, g
        E = h * np.eye(vcp.size)
        dg = np.array([(d(vcp + E[i]) - d(vcp - E[i])) / (2 * h) for i in range(vcp.size)])
        return self.corrected(vcp)[0], g + dg

    def corrected_hessian(self, vcp, h=1e-2):
        r"""The Hessian of :meth:`corrected`: differences of the analytic gradient of the Laplace
        value (if part of it) plus second differences of the rest, on the stencil of
        :meth:`corrected_value_grad` (whose points are cached) and the diagonal pairs
        :math:`\pm h(e_i + e_j)`."""
        vcp = np.asarray(vcp, dtype=float)
        base, d = self._base_and_difference()
        k = vcp.size
        H = _grad_hessian(base, vcp, None, h) if base is not None else np.zeros((k, k))
        if self.correction is None:
            return H
        E = h * np.eye(k)
        d0 = d(vcp)
        dp, dm = [d(vcp + E[i]) for i in range(k)], [d(vcp - E[i]) for i in range(k)]
        Hd = np.diag([(dp[i] - 2.0 * d0 + dm[i]) / h**2 for i in range(k)])
        for i in range(k):
            for j in range(i + 1, k):
                Hd[i, j] = Hd[j, i] = (d(vcp + E[i] + E[j]) - dp[i] - dp[j] + 2.0 * d0 - dm[i] - dm[j]
                                       + d(vcp - E[i] - E[j])) / (2.0 * h**2)
        return H + Hd

    def second_order(self, vcp):
        r"""The second-order correction of the Laplace value at ``vcp`` (Shun & McCullagh 1995).

        .. math::

            \epsilon = -\tfrac18 \sum_i w_i'' v_i^2 + \tfrac18\, t^\top H^{-1} t
              + \tfrac1{12} \sum_i w_i'^2 v_i^3, \qquad t = \sum_i w_i' v_i\, x_i,

        the :math:`O(1/n)` terms of :math:`\log\int e^{f}` beyond the Laplace value, for
        :math:`f` a sum of row terms :math:`\ell_i(x_i^\top x)` (:math:`w = -\ell''`); the last
        term keeps the pairs i = j of :math:`\sum_{ij} w_i' w_j' (x_i^\top H^{-1} x_j)^3`.
        """
        logp, nr, _, _ = self._entry(vcp)
        if nr.factor is None:
            return 0.0
        m = self.model
        v = m.rows.latent_row_variances(nr.factor)
        xr, zr, s4, s3 = m.rows.weight_derivative_sums(m.family, nr.b, nr.u, v, second_order=True)
        a, b = nr.factor.solve(zr, xr)
        return -s4 / 8.0 + float(zr @ a + xr @ b) / 8.0 + s3 / 12.0

    def _warm_start(self, vcp):
        if not self.points:
            return self.start
        th = np.array([pt[0] for pt in self.points])
        i = int(np.argmin(np.sum((th - vcp) ** 2, axis=1)))
        t0, u, b, su, sb = self.points[i]
        d = vcp - t0
        return u + su @ d, b + sb @ d

    def _solve(self, vcp, tol):
        u0, b0 = self._warm_start(vcp)
        try:
            nr = newton_ascent(conditional_fun(self.lj, vcp), u0, b0, tol=tol, max_iter=100,
                               reuse=self.symbolic, free_step=_FREE_STEP if tol >= _GRID_TOL else None)
        except FitError:  # (the density not finite at the start: an SD beyond floating point, e^-2vcp overflowing)
            return -np.inf, NewtonResult(u0, b0, -np.inf, np.inf, False, 0, None, message="not finite"), None, None
        self.n_inner += nr.n_iter
        if nr.factor is None or not np.isfinite(nr.value):
            return -np.inf, nr, None, None
        m = self.model
        logdet = nr.factor.logdet()
        if nr.lag is not None:
            # the factor is at x0 = x^ - dx: log det H(x^) ~ log det H(x0) + sum_i w_i' v_i d eta_i
            # (w' at the midpoint, v from x0's factor: an error of order dx^2, below _FREE_STEP)
            du, db = nr.lag
            xr, zr = m.rows.weight_derivative_sums(m.family, nr.b - 0.5 * db, nr.u - 0.5 * du,
                                                   m.rows.latent_row_variances(nr.factor))
            logdet += float(xr @ db + zr @ du)
        dg = np.zeros((m.k_vc, m.k_vcp))
        if m.k_vc:
            dg[np.arange(m.k_vc), m.ident] = 2.0 * nr.u * np.exp(-2.0 * vcp)[m.ident]
        su, sb = nr.factor.solve(dg, np.zeros((m.k_fep, m.k_vcp)))
        if nr.converged and len(self.points) < self.max_points:
            self.points.append((vcp.copy(), nr.u, nr.b, su, sb))
        logp = nr.value + 0.5 * (m.k_fep + m.k_vc) * LOG_2PI - 0.5 * logdet
        return logp, nr, su, sb


def refine_conditional(model, vcp, u, b, factor, max_iter=30, tol=1e-4, shift=None):
    r"""Gaussian variational refinement of the conditional posterior :math:`p(fe, vc \mid vcp, y)`.

    The Laplace approximation centres the conditional Gaussian at the mode; for
    binary or small-count data with few rows per group the mode is a poor
    estimate of the mean. The refinement finds the Gaussian
    :math:`N(\mu, \Sigma)` with :math:`\mu` solving
    :math:`\mathrm{E}\,\nabla \log p = 0` and
    :math:`\Sigma^{-1} = -\mathrm{E}\,\nabla^2 \log p` (expectations under the
    Gaussian itself: the stationarity conditions of the full-covariance
    Gaussian variational approximation), by fixed-point Newton steps from the
    Laplace solution. :math:`\Sigma^{-1}` keeps the bordered sparse structure;
    the row variances :math:`\mathrm{Var}\,\eta_i` come from the selected
    inverse (:meth:`~mglm_core.rowstats.RowData.latent_row_variances`); once a step's Newton
    decrement grows, each iteration uses the average of its row variances and the last ones (the
    undamped iteration can cycle between two sets of them).

    ``shift``, the refinement's change of (u, b) and of the row variances at a
    neighbouring point (both vary smoothly with vcp), starts the iterations from the
    Laplace solution moved by it; without one they start from the mean's first-order
    correction, :math:`\hat x - \tfrac12 H^{-1} \sum_i w_i' v_i x_i` (from
    :math:`\mathrm{E}\,\ell'(\eta_i) \approx \ell'(m_i) - \tfrac12 w_i'(m_i) v_i`), which halves
    the iterations.

    Returns ``(u, b, factor, converged, shift)`` with this point's ``shift``.
    """
    from .linalg import BorderedFactor, NotPositiveDefinite

    prec = np.exp(-2.0 * vcp)[model.ident] if model.k_vc else np.zeros(0)
    fe_prec = np.full(model.k_fep, 1.0 / model.fe_p**2)
    u0, b0, f0 = u, b, factor
    dv = 0.0
    if shift is not None:
        u, b, dv = u + shift[0], b + shift[1], shift[2]
    else:
        # from the mean's first-order correction, E l'(eta) ~ l'(m) - w'(m) v / 2 at the mode:
        # -H^-1 t / 2 with t = sum_i w_i' v_i x_i (half the iterations of a start at the mode)
        xr, zr = model.rows.weight_derivative_sums(model.family, b, u, model.rows.latent_row_variances(factor))
        du, db = factor.solve(-0.5 * zr, -0.5 * xr)
        u, b = u + du, b + db
    v_lap = v_used = None
    last, damped = np.inf, False
    for _ in range(max_iter):
        v = model.rows.latent_row_variances(factor)
        if v_lap is None:
            v_lap = v
            v = np.maximum(v + dv, 0.0)
        elif damped:  # the row variances averaged with the last ones used
            v = 0.5 * (v + v_used)
        v_used = v
        rs = model.rows.reduce(model.family, b, u, row_var=v, hessian=True, value=False)
        g_u = rs.z_score - u * prec
        g_b = rs.x_score - b * fe_prec
        A = model.rows.with_diagonal(rs.z_wz, prec) if model.k_vc else sp.csc_matrix((0, 0))
        try:
            factor = BorderedFactor(A, rs.z_wx, rs.x_wx + np.diag(fe_prec), reuse=factor)
        except NotPositiveDefinite:
            return u0, b0, f0, False, None
        du, db = factor.solve(g_u, g_b)
        u, b = u + du, b + db
        if not (np.all(np.isfinite(u)) and np.all(np.isfinite(b))):
            return u0, b0, f0, False, None
        decrement = float(g_u @ du + g_b @ db)
        if decrement < tol:
            return u, b, factor, True, (u - u0, b - b0, v - v_lap)
        # a decrement that grows: the iteration swings between two sets of row variances (Poisson
        # slopes on groups of three rows: the largest row variance 5.7, then 1.8, then 5.7, the
        # Intercept kept at its mode, 1.2 posterior SDs from the mean); damped, it converges in a few
        damped = damped or decrement > last
        last = decrement
    return u0, b0, f0, False, None


def _refined_change(model, vcp, nr):
    """The changes of :func:`refine_conditional` at ``vcp`` from the Laplace solution ``nr``:
    ``((du, db, d row var), d vc var, d fe cov)``, or None where the refinement fails."""
    if nr.factor is None:
        return None
    _, _, factor, ok, shift = refine_conditional(model, vcp, nr.u, nr.b, nr.factor)
    if not ok:
        return None
    return (shift, factor.sparse_diag_inverse() - nr.factor.sparse_diag_inverse(),
            factor.border_inverse() - nr.factor.border_inverse())


def _linear_start(vcp, keys, vectors, n_D, reach=3.0):
    r"""A start for the nested optimum ``(u_D, fe)`` at ``vcp`` from the solved points, their log-SDs
    ``keys`` (n x k) and optima ``vectors`` (n x dim, ``u_D`` in the first ``n_D`` columns, then
    ``fe``): the nearest one's optimum moved along the affine fit, by least squares, of the optima of the
    points within ``reach`` times its distance (at most 2k + 1 of them),
    :math:`\hat a(\theta) \approx \hat a(\theta_0) + J^\top (\theta - \theta_0)`, in the directions
    their differences span (none: the nearest optimum itself). A grid point in line behind two solved
    ones, or a difference stencil's second point, then starts an error of order step² from its
    optimum instead of order step: the grids' Newton evaluations per point went from 2.5-3.1 to
    2.0-2.5 (the floor is two: a step and the check at its end). Returns ``(u_D, fe, nearest)``,
    ``nearest`` the nearest optimum (None when the start is that optimum). Directions whose singular
    value is below 1e-2 of the largest are left out (the optima are known to the inner tolerance only)."""
    d2 = np.sum((keys - vcp) ** 2, axis=1)
    order = np.argsort(d2, kind="stable")
    i0 = int(order[0])
    a0 = vectors[i0]
    uD0, fe0 = a0[:n_D], a0[n_D:]
    k = keys.shape[1]
    near = order[1:2 * k + 1]
    near = near[d2[near] <= reach**2 * max(d2[i0], 1e-300)]
    if not near.size or d2[i0] == 0.0:
        return uD0, fe0, None
    dtheta = keys[near] - keys[i0]
    da = vectors[near] - a0
    # minimum-norm least squares through the k x k normal matrix (np.linalg.lstsq's overhead was a
    # third of the solves' set-up)
    lam, V = np.linalg.eigh(dtheta.T @ dtheta)
    keep = lam > 1e-4 * lam[-1]
    w = (((vcp - keys[i0]) @ V[:, keep]) / lam[keep]) @ V[:, keep].T @ dtheta.T  # weights of the near points
    a = a0 + w @ da
    return a[:n_D], a[n_D:], (uD0, fe0)


def _outer_curve(lo, hi):
    r"""The curve :math:`f(z) = A\,(\log(1 + e^{\beta z}) - \log 2)` through :math:`f(-1) =` ``lo``,
    :math:`f(0) = 0` and :math:`f(1) =` ``hi``, as ``(A, beta)``; None where no such curve passes
    (``lo`` and ``hi`` of one sign: an extremum at 0) or it is a line to 0.1 %.

    Its slope at 0 is the central difference :math:`(hi - lo)/2`; on one side it levels off at
    :math:`-A \log 2`, on the other it grows like the line of slope :math:`hi - lo`. With
    :math:`x = |\beta|`, :math:`hi - lo = A\beta` and :math:`hi + lo = 2A \log\cosh(x/2)`, so
    :math:`x` solves :math:`2\log\cosh(x/2)/x = |hi + lo|/|hi - lo|` (increasing from 0 to 1).
    """
    from scipy.optimize import brentq

    if not (np.isfinite(lo) and np.isfinite(hi)) or hi == lo:
        return None
    rho = abs(hi + lo) / abs(hi - lo)

    def log_cosh_half(x):  # log cosh(x/2), x > 0
        return 0.5 * x + np.log1p(np.exp(-x)) - np.log(2.0)

    if rho < 1e-3 or rho >= 2.0 * log_cosh_half(60.0) / 60.0:
        return None
    x = brentq(lambda x_: 2.0 * log_cosh_half(x_) / x_ - rho, 1e-6, 60.0, xtol=1e-12)
    A = (hi + lo) / (2.0 * log_cosh_half(x))
    return A, (hi - lo) / A


def _outer_value(curves, z):
    r""":math:`\sum_i f_i(z_i)` for the per-axis curves of :func:`_outer_curve` (a line of slope ``s`` where
    ``("line", s)``)."""
    out = 0.0
    for (A, beta), zi in zip(curves, z):
        if A == "line":
            out += beta * zi
        else:
            out += A * (np.logaddexp(0.0, beta * zi) - np.log(2.0))
    return float(out)


def _shift_curve(lo, hi):
    r"""Per coordinate, :math:`g(z) = c\,(e^{\gamma z} - 1)` through :math:`g(-1) =` ``lo``, :math:`g(0) = 0`
    and :math:`g(1) =` ``hi`` (:math:`e^\gamma = hi / (-lo)`) where ``lo`` and ``hi`` have opposite signs
    and that ratio is within [1/4, 4] (a skewness shift that grows with an SD, levelling off towards
    SD 0), else the line of slope :math:`(hi - lo)/2`: ``(c, gamma, slope, exponential)`` (arrays)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = hi / -lo
        ok = (r >= 0.25) & (r <= 4.0) & (np.abs(np.log(np.where(r > 0, r, 1.0))) > 1e-6)
        gamma = np.where(ok, np.log(np.where(ok, r, 2.0)), 0.0)
        c = np.where(ok, hi / np.expm1(np.where(ok, gamma, 1.0)), 0.0)
    return c, gamma, 0.5 * (hi - lo), ok


def _shift_value(curve, z):
    """:func:`_shift_curve`'s curves at ``z``."""
    c, gamma, slope, ok = curve
    return np.where(ok, c * np.expm1(gamma * z), slope * z)


def _em_start(cond, bounds, k):
    r"""``(x0, -Hessian)`` to start the search for the mode of the log-SDs: the EM update
    :math:`\theta_1` of :math:`\theta_0 = 0` (:meth:`_Conditional.em_point`) and the secants
    :math:`-(g_{1i} - g_{0i})/\theta_{1i}` between their gradients as a diagonal curvature, which
    replaces the forward differences at the start (k inner solves fewer, and the first step starts
    near the mode); the EM point with forward differences there (None) when a component barely moved
    or its secant is not concave; ``(0, None)`` when a gradient is not finite."""
    x0 = np.zeros(k)
    cond(x0, tol=_GRID_TOL)  # a start's gradient is needed to a few digits only (for the secant)
    f0, g0 = cond.value_grad(x0)
    em = cond.em_point(x0) if np.isfinite(f0) and np.all(np.isfinite(g0)) else None
    if em is None or not np.all(np.isfinite(em)):
        return x0, None
    x1 = np.clip(em, *bounds)
    if np.any(np.abs(x1) < 1e-2):  # too close for a secant: the start is the EM point itself
        return x1, None
    f1, g1 = cond.value_grad(x1)
    if not (np.isfinite(f1) and np.all(np.isfinite(g1))):
        return x0, None
    c = -(g1 - g0) / x1
    if not np.all(c > 0):
        return x1, None
    return x1, np.diag(c)


def _grad_hessian(fg, x, g, h, forward=False):
    """Hessian by central differences of the analytic gradient ``fg(x)[1]`` (2k evaluations), or
    by forward differences from ``g`` = the gradient at x (k evaluations; an error of order h, for
    the search's curvature)."""
    k = x.size
    forward = forward and g is not None and np.all(np.isfinite(g))
    H = np.empty((k, k))
    for i in range(k):
        e = np.zeros(k)
        e[i] = h
        H[:, i] = (fg(x + e)[1] - g) / h if forward else (fg(x + e)[1] - fg(x - e)[1]) / (2 * h)
    return 0.5 * (H + H.T)


def _maximise_theta(fg, x0, bounds, h=1e-2, tol=1e-3, max_iter=50, progress=None, f=None, max_step=2.0,
                    neg_hessian=None, hessian=None, refresh_far=True, sd_tol=None, gradient0=None):
    """Quasi-Newton ascent on a low-dimensional, smooth log density with an analytic gradient.

    ``fg(x) -> (f, gradient)``; ``f(x)``, when given, is the value alone (for the line search).
    The Hessian starts from ``-neg_hessian`` if given, else from forward differences of the
    gradient, and is updated by BFGS, or recomputed by differences after a step that had to be
    clipped to ``max_step`` or was a gradient step where the model was not concave
    (``refresh_far``: far from the mode the start's curvature misleads);
    steps are projected on the box ``bounds``, with backtracking on f. At
    the end the Hessian is recomputed (it standardises the integration grid): by ``hessian(x)``
    if given, in one dimension by the last step's secant if that step was at most 5h long, else by
    forward differences of the gradient (an error of order h = 1e-2 in the
    curvature, a scale error of 0.5 % in the grid's coordinates, which the grid's weights, values of
    the density itself, absorb; central differences cost k more inner solves).
    The search stops when a Newton step is below ``tol`` in every coordinate, or, with ``sd_tol``,
    below that fraction of the posterior SDs that the current curvature implies (if larger).
    ``gradient0``, an estimate of the gradient at ``x0`` (with ``f``), takes the first step without
    ``fg(x0)``; the search only stops on gradients of ``fg``.
    Returns ``(x, f(x), gradient, -Hessian, converged, iterations)``.
    """
    lo, hi = bounds

    def safe(x_):
        f_, g_ = fg(x_)
        ok = np.isfinite(f_) and np.all(np.isfinite(g_))
        return (f_, g_) if ok else (-np.inf, np.zeros_like(x_))

    def value(x_):
        v = f(x_) if f is not None else fg(x_)[0]
        return v if np.isfinite(v) else -np.inf

    def curvature(x_, g_):
        H_ = hessian(x_) if hessian is not None else None
        return (H_ if H_ is not None and np.all(np.isfinite(H_))
                else _grad_hessian(safe, x_, g_, h, forward=True))

    def final_curvature(x_, g_, secant):
        # one dimension: the last step's secant, when at most a few h long, is the curvature at
        # a distance of half the step (as accurate as the forward difference, and free)
        if hessian is None and secant is not None and x_.size == 1:
            s_, y_ = secant
            if 0.0 < abs(s_[0]) <= 5.0 * h and s_[0] * y_[0] > 0.0:
                return np.array([[-y_[0] / s_[0]]])
        return curvature(x_, g_)

    x = np.clip(np.asarray(x0, dtype=float), lo, hi)
    rough = gradient0 is not None and f is not None and np.array_equal(x, x0)  # g an estimate
    f0, g = (value(x), np.asarray(gradient0, dtype=float)) if rough else safe(x)
    B = (-_grad_hessian(safe, x, g, h, forward=bool(np.isfinite(f0))) if neg_hessian is None
         else np.array(neg_hessian, dtype=float))
    converged = refreshed = False
    secant = None  # (step, gradient decrease) of the last accepted step
    it = 0
    for it in range(1, max_iter + 1):
        evals, evecs = np.linalg.eigh(0.5 * (B + B.T))
        step_tol = tol
        sds = None  # the posterior SDs the curvature implies (where concave)
        if np.all(evals > 1e-8):
            step = evecs @ ((evecs.T @ g) / evals)
            far = np.max(np.abs(step)) > max_step
            sds = np.sqrt(np.sum(evecs**2 / evals, axis=1))
            if sd_tol is not None:
                step_tol = np.maximum(tol, sd_tol * sds)
        else:  # not concave here: a gradient step
            step = g / max(1.0, np.abs(g).max())
            far = True
        # (scaled, not clipped coordinate by coordinate: a clipped step can point downhill, as (0.5, 0.5) did
        # for the Newton step (1.1, 3.8) on a ridge of two log-SDs, and the search stalled)
        step = step * min(1.0, max_step / max(float(np.max(np.abs(step))), 1e-300))
        if rough and (np.all(np.abs(step) < step_tol) or not np.isfinite(f0)):  # judged on fg's gradient
            f0, g = safe(x)
            rough = False
            continue
        if np.all(np.abs(step) < step_tol):
            converged = bool(np.isfinite(f0))
            break
        t = 1.0
        while True:
            xn = np.clip(x + t * step, lo, hi)
            if value(xn) >= f0 - 1e-12:
                fn, gn = safe(xn)  # a point whose gradient is not finite is rejected like a worse one
                if np.isfinite(fn):
                    break
            t *= 0.5
            if t < 1e-4:
                xn = None
                break
        if xn is None and rough:  # the estimate's step does not ascend: fg's gradient
            f0, g = safe(x)
            rough = False
            continue
        if xn is None:  # no ascent along the step: restart from a difference Hessian once, else stop
            if sds is not None and np.all(np.abs(step) <= _MODE_SD_TOL * sds):
                # a Newton step within a hundredth of the posterior SDs along which the density does not
                # rise: flat to the accuracy of its values (the exact inner integration's rule), at the mode
                converged = bool(np.isfinite(f0))
                break
            if refreshed:
                break
            B, refreshed = -curvature(x, g), True
            continue
        refreshed = False
        s_, y_ = xn - x, g - gn
        secant = (s_, y_)
        moved = np.max(np.abs(xn - x))
        if far and refresh_far:
            # the quadratic model asked for more than max_step, or was not concave: its curvature
            # is from far away
            B = -curvature(xn, gn)
        elif s_ @ y_ > 1e-10 and not rough:  # BFGS update of -Hessian (not from an estimated gradient)
            Bs = B @ s_
            B = B - np.outer(Bs, Bs) / (s_ @ Bs) + np.outer(y_, y_) / (s_ @ y_)
        x, f0, g, rough = xn, fn, gn, False
        if progress is not None:
            progress(it)
        if moved < tol and t == 1.0:
            converged = bool(np.isfinite(f0))
            break
    return x, f0, g, -final_curvature(x, g, secant), converged, it


#: On the Laplace route, the effects of the conditionally independent component whose conditional skewness at the mode
#: (:meth:`~mglm_core.quadrature.IndependentEffects.skewness`) is above this take their exact one-dimensional moments
#: (:class:`_SkewedEffects`): of groups of ten binary rows with an SD of 1.5, the one with all ones has 0.44 (its
#: interval's upper end had been 0.27 posterior SDs low and its SD 8 % short), those with 9, 8, 2 and 6 ones 0.37,
#: 0.29, 0.21 and 0.11; groups of a hundred rows have about a third of that.
SKEWED_EFFECT = 0.1
#: ... at most this many of them where other random effects share their rows (their covariance then takes solves).
SKEWED_SOLVES_MAX = 500


@dataclass(frozen=True)
class _SkewedEffects:
    r"""The skewed effects of the Laplace route and their exact moments at the integration points.

    Given the rest :math:`a` (fixed effects and the other components' effects) at a point's conditional solution,
    effect j's posterior is one-dimensional and skewed
    (:meth:`~mglm_core.quadrature.IndependentEffects.tilted_moments`: :math:`\mu_j, \tau_j, \kappa_j`). The rest's
    uncertainty is carried through as on the exact route (:meth:`~mglm_core.quadrature.NestedMarginal.moments`):
    :math:`\mathrm{Var}\,u_j = \tau_j + g_j^\top \Sigma_a g_j` and third central moment
    :math:`\kappa_j + 3\,g_j^\top \Sigma_a g2_j`, with :math:`g_j = \partial\mu_j/\partial a` and
    :math:`g2_j = \partial\tau_j/\partial a` (the rows' derivatives times their design over the rest) and
    :math:`\Sigma_a` the rest's covariance, the inverse of the negative Hessian on the rest's coordinates (its
    fixed-effect block where no other effect shares the rows, else by solves). The Laplace Gaussian's variance is the
    same sum with :math:`\tau_j = 1/c_j` and no third moment.

    The means stay the refined Gaussian's (:func:`refine_conditional`), except for effects whose outcomes all sit at
    one boundary where no other random effect shares their rows (``exact_mean``): there :math:`\mu_j`. On the
    accuracy cases :math:`\mu_j` for every skewed effect moved means by up to 0.05 reference SDs, mostly away from
    the references, and for the boundary effects of crossed designs by up to 0.02 away; an all-ones group of ten
    binary rows had its SD 8 % short without it (exact variances alone: 4 %), 1 % with it.
    """

    effects: np.ndarray  # local indices in the independent component
    cols: np.ndarray  # their columns of exog_vc
    exact_mean: np.ndarray  # (bool) those that take the exact mean
    G: sp.csr_matrix  # effects x their rows (tilted_moments' order): sums over each effect's rows
    X: np.ndarray  # the rows' fixed-effect design
    Z: sp.csr_matrix  # ... and their exog_vc without the component's columns (None where it has no entries)

    @property
    def shared(self):
        """Whether other random effects share the effects' rows (their moments then take solves)."""
        return self.Z is not None

    @classmethod
    def find(cls, cond, mode):
        """The effects whose conditional posterior at the Laplace solution for ``mode`` is skewed (beyond
        :data:`SKEWED_EFFECT`), or None: without a conditionally independent component or such effects, beyond
        :data:`SKEW_ROWS_MAX` rows, or with more than :data:`SKEWED_SOLVES_MAX` where other effects share their
        rows."""
        model, ie = cond.model, cond.independent
        nr = cond(mode)[1]
        if ie is None or nr.factor is None or model.endog.size > SKEW_ROWS_MAX:
            return None
        eta = model.rows.linear_predictor(nr.b, nr.u)
        effects = np.flatnonzero(ie.skewness(model, eta, np.exp(mode[ie.component])) > SKEWED_EFFECT)
        if effects.size == 0:
            return None
        sel, local = ie.rows_of(effects)
        rows = ie.rows[sel]
        Z = model.exog_vc[rows].tocsr()
        Z.data[np.isin(Z.indices, ie.cols)] = 0.0
        Z.eliminate_zeros()
        if Z.nnz and effects.size > SKEWED_SOLVES_MAX:
            return None
        exact_mean = np.isin(effects, ie.boundary_effects(model)) & (Z.nnz == 0)
        G = sp.csr_matrix((np.ones(rows.size), (local, np.arange(rows.size))), shape=(effects.size, rows.size))
        return cls(effects, ie.cols[effects], exact_mean, G, np.asarray(model.exog[rows], dtype=float),
                   Z if Z.nnz else None)

    def moments(self, cond, vcp, u, b, factor):
        """``(mean, var, third)`` of the effects at the log-SDs ``vcp``, the rest at ``(u, b)`` with the negative
        Hessian's factorisation ``factor`` (see the class)."""
        model, ie = cond.model, cond.independent
        eta = model.rows.linear_predictor(b, u)
        mu, tau, kappa, _, _, _, c, c2 = ie.tilted_moments(model, eta, u, np.exp(vcp[ie.component]), self.effects)
        G = self.G
        g, g2 = G @ (c[:, None] * self.X), G @ (c2[:, None] * self.X)
        if self.Z is None:
            cov = factor.border_inverse()
            quad, cross = np.einsum("ij,jk,ik->i", g, cov, g), np.einsum("ij,jk,ik->i", g, cov, g2)
        else:
            h, h2 = (G @ sp.diags(c) @ self.Z).toarray(), (G @ sp.diags(c2) @ self.Z).toarray()
            a_vc, a_fe = factor.solve(h.T, g.T)
            quad = np.einsum("ji,ij->i", a_vc, h) + np.einsum("ji,ij->i", a_fe, g)
            cross = np.einsum("ji,ij->i", a_vc, h2) + np.einsum("ji,ij->i", a_fe, g2)
        return mu, tau + quad, kappa + 3.0 * cross


#: The exact check (:func:`_exact_departure`) runs where the second-order correction varies by more than this over the
#: probe points (the Laplace approximation is not plainly good) ...
_DEPARTURE_SPREAD = 0.1
#: ... on data of at most this many rows (five exact evaluations of the density are then a few milliseconds each) ...
_DEPARTURE_ROWS_MAX = 50_000
#: ... and switches to the exact integration where that would move a log-SD's posterior mean by more than this many of
#: its posterior SDs, or scale its SD by more than this fraction
_DEPARTURE_MAX = 0.1


def _exact_departure(cond, probe, r=_PROBE_Z):
    r"""How far the corrected Laplace density of the log-SDs is from the nested approximation's (the conditionally
    independent component integrated exactly, :class:`~mglm_core.quadrature.NestedMarginal`), along the axes of the
    standardised coordinates z: ``(shift, ratio)``, the largest move of a log-SD's mean in its posterior SDs and the
    ratio of its SDs furthest from 1 that replacing one by the other would make.

    With :math:`d(z)` the corrected value less the nested one at the probe points ``probe`` (the mode, then
    :math:`z = \mp r` along each axis), :math:`d \approx b z + a z^2` per axis, and the nested density
    :math:`-\tfrac12 (1 + 2a) z^2 - b z` has mean :math:`-b / (1 + 2a)` and SD :math:`(1 + 2a)^{-1/2}`. The nested
    values are computed for this and forgotten (the corrected ones are kept); ``(nan, nan)`` where a value is not
    finite."""
    nested = cond.nested
    lap = np.array([cond.corrected(th)[0] for th in probe])
    saved = (cond.correction, cond.delta, cond.nested_optimum, cond._starts)
    rule = (nested.x, nested.logw, nested._rule_sd)
    cond.use("nested")
    try:
        _take_rule(cond, probe, probe[0])
        exact = np.array([cond.corrected(th, tol=_GRID_TOL)[0] for th in probe])
    finally:
        cond.correction, cond.delta, cond.nested_optimum, cond._starts = saved
        nested.x, nested.logw, nested._rule_sd = rule
    d = lap - exact
    if not np.all(np.isfinite(d)):  # (not measured where either density could not be evaluated)
        return np.nan, np.nan
    lo, hi = d[1::2] - d[0], d[2::2] - d[0]
    curve = 1.0 + (lo + hi) / r**2  # 1 + 2a
    if np.any(curve <= 0.0):  # (the nested density not concave along an axis: far wider)
        return np.inf, np.inf
    shift = np.abs((hi - lo) / (2.0 * r)) / curve
    ratio = curve**-0.5
    return float(np.max(shift)), float(ratio[np.argmax(np.abs(ratio - 1.0))])


def _take_rule(cond, near, at):
    """Give the nested approximation the rule fine enough for the SDs at the log-SDs ``near``
    (:meth:`~mglm_core.quadrature.NestedMarginal.use_nodes`), checked in the summed log integrals at ``at``, from the
    Laplace solution there (:meth:`~mglm_core.quadrature.NestedMarginal.check_rule`)."""
    cond.nested.use_nodes(np.exp(near))
    nr = cond(at)[1]
    if nr.factor is not None:
        cond.nested.check_rule(at, nr.u[cond.nested.D], nr.b)


def _fixed_effect_widening(cond, mode):
    r"""The fixed effects' covariance given the log-SDs relative to its Gaussian approximation, at the mode
    ``mode``: :meth:`~mglm_core.quadrature.NestedMarginal.covariance_factor` of the nested approximation
    there (solved again unless the fit took that route), for :func:`_widened` at every integration point;
    None without a conditionally independent component or with other components (the Laplace over the
    fixed effects is then over theirs too).

    Binary and low-count rows leave the fixed effects' conditional posterior skewed, and wider than the
    curvature at its mode: cbpp's period 4 by 2.3 % (eleven events), both given the log-SD's mode and
    against NUTS, where the conditional Gaussian, refined or not, had it 4.4 % short.
    """
    if cond.correction != "nested" and (cond.independent is None or cond.model.endog.size > WIDEN_ROWS_MAX):
        return None  # (not built for the fit: beyond WIDEN_ROWS_MAX rows the building is not worth it)
    nested = cond.nested
    if nested is None or nested.D.size or cond.model.k_fep == 0:
        return None
    opt = cond.nested_optimum_at(mode) if cond.correction == "nested" else None
    if opt is None:
        nr = cond(mode)[1]
        if nr.factor is None or _widening_negligible(nested, mode, nr.b, nr.factor.border_inverse()):
            return None
        if cond.correction != "nested":
            nested.use_nodes(np.exp(mode))
        nested.start = None
        if not np.isfinite(nested.log_marginal(mode, np.zeros(0), nr.b)):
            return None
        opt = nested.last
    elif _widening_negligible(nested, mode, opt[1], opt[2].border_inverse()):
        return None
    return nested.covariance_factor(mode, opt[1], opt[2].border_inverse())


#: The fixed effects' covariance is not widened where :meth:`~mglm_core.quadrature.NestedMarginal.widening_estimate`
#: is below this: the factor's deviation from the identity was at most 5.6 times the estimate on the accuracy
#: cases, so at most about 0.003 here (the SDs 0.17 % short at worst). Single-factor fits with tens of rows per
#: effect (the benchmark designs of 1e3-1e4 rows: 0.02-0.03 % in SD) are spared 2p + 1 Hessians of the
#: integrated density, 40 % of their time.
_WIDENING_NEGLIGIBLE = 6e-4


def _widening_negligible(nested, mode, fe, fe_cov):
    """Whether the widening of the fixed effects' covariance at ``(mode, fe)`` is estimated to be negligible."""
    estimate = nested.widening_estimate(mode, fe, fe_cov)
    return estimate is not None and estimate < _WIDENING_NEGLIGIBLE


def _widened(cov, factor):
    r""":math:`L\,\mathrm{factor}\,L^\top` for the root :math:`LL^\top` of ``cov``
    (:func:`_fixed_effect_widening`)."""
    root = np.linalg.cholesky(0.5 * (cov + cov.T))
    return root @ factor @ root.T


def _axial(k, r):
    r"""The 2k points :math:`\mp r\,e_j` along the axes of z, in that order."""
    return np.vstack([s * r * np.eye(k)[i] for i in range(k) for s in (-1, 1)])


_DIAGONAL_CURVATURE = ("The curvature of the log-SD posterior at its mode is not negative definite; "
                       "using a diagonal approximation.")


def _standardise(H, msgs):
    r"""``(root, log_jac)``: :math:`\theta = \theta^* + \mathrm{root}\, z` has unit curvature in z
    for the -Hessian ``H``; ``log_jac`` is :math:`\log|\det \mathrm{root}|`."""
    evals, evecs = np.linalg.eigh(0.5 * (H + H.T))
    if np.any(evals <= 0):
        msgs.append(_DIAGONAL_CURVATURE)
        evals = np.maximum(np.abs(evals), 1e-2)
    return evecs / np.sqrt(evals), -0.5 * float(np.sum(np.log(evals)))


def _design(cond, mode, H, k, msgs):
    """Integration points around ``mode`` in the coordinates standardised by ``H`` (-Hessian):
    ``(root, log_jac, zs, thetas, log_evidence_base, split)`` (module docstring), laid out on
    ``cond.corrected``. ``split`` (:func:`_split_normal`) is None for a grid."""
    root, log_jac = _standardise(H, msgs)
    f0 = cond.corrected(mode)[0]
    if k == 1 and np.isfinite(f0):
        root, log_jac = _measured_scale(cond, mode, root, f0)

    def scales(r):  # the split normals' scales from the drops at z = -+r along the axes
        zs_ = _axial(k, r)
        f_ = np.array([cond.corrected(mode + root @ z, tol=_GRID_TOL)[0] for z in zs_])
        return zs_, f_, _split_normal(f0, f_, k, r=r)

    # The axial points are the design where the density is close to Gaussian along every axis out
    # to z = +-3 (the probe points, grid points too) and at z = +-sqrt(k): a log-SD posterior with
    # a heavy tail towards SD 0 (few levels, binary data) looks Gaussian at sqrt(k) only.
    near_gaussian = False
    if not np.isfinite(f0):
        # the inner problem fails at the mode itself (an SD the data do not identify: every level
        # separated): a grid cannot start there; the axial points, flagged by the fit's warnings
        zs, _, split = scales(np.sqrt(k))
        return root, log_jac, zs, mode + zs @ root.T, None, split, np.full(len(zs), np.nan), np.zeros(len(zs))
    if k == 1:  # with two or three components, skewness off the axes goes unseen: the grid
        _, f_far, far = scales(_PROBE_Z)
        near_gaussian = np.all(np.isfinite(f_far)) and np.all(np.abs(np.log(far["sigma"])) <= np.log(_SKEW_FAR))
    if (k > _GRID_MAX_K or near_gaussian) and not _always_grid(cond, k):
        zs, f_axial, split = scales(np.sqrt(k))
        skew = np.max(np.abs(np.log(split["sigma"]))) if np.all(np.isfinite(f_axial)) else np.inf
        # four components: the grid where an axis is skewed beyond _SKEW_MAX_4 (binary slopes, intercepts
        # and two crossed factors, scales 0.70-1.35: split normals put the log-SDs' posterior SDs up to
        # 20 % short; the grid within 7 %); more: the axial points
        if (k > _SKEWED_GRID_MAX_K or (k > _GRID_MAX_K and skew <= np.log(_SKEW_MAX_4))
                or (skew <= np.log(_SKEW_MAX) and not _moments_vary(cond, mode + zs @ root.T)
                    and not _moments_curve(cond, mode, root))):
            return root, log_jac, zs, mode + zs @ root.T, None, split, np.full(len(zs), np.nan), np.zeros(len(zs))
    step = _grid_step(cond, k)
    # grid points need the log density to ~1e-4, not the 1e-11 of the mode search's differences
    pts, truncated = _grid_points(lambda z, floor: cond.corrected(mode + root @ z, tol=_GRID_TOL, floor=floor)[0],
                                  k, step)
    zs = np.array(list(pts.keys()), dtype=float) * step
    logp_grid = np.array([v for v, _ in pts.values()])
    predicted = np.array([pr for _, pr in pts.values()])
    # points whose inner problem failed (-inf) stay, to be counted in the fit's warning
    keep = (logp_grid > logp_grid.max() - _DROP_K[k] - 3) | ~np.isfinite(logp_grid)
    zs = zs[keep]
    predicted = np.where(predicted[keep], logp_grid[keep], np.nan)
    log_scale = np.zeros(len(zs))
    tail = _prior_tail(cond, mode, root, zs, logp_grid[keep], step)
    if truncated and tail is None:  # (where the prior's tail is integrated beyond the grid, the grid's edge is not one)
        msgs.append(f"The posterior of the log-SDs extends beyond the integration grid ({_Z_MAX_1 if k == 1 else _Z_MAX:g}"
                    " posterior SDs from its mode, at the mode's curvature): its mean and SD are truncated there. "
                    f"The prior on the log-SDs (vcp_p = {cond.model.vcp_p:g}) lets the data leave a long tail; a "
                    "smaller vcp_p bounds it.")
    if tail is not None:
        zs, predicted = np.vstack([zs, tail[0]]), np.concatenate([predicted, np.full(len(tail[0]), np.nan)])
        log_scale = np.concatenate([log_scale, tail[1]])
    return root, log_jac, zs, mode + zs @ root.T, k * np.log(step) + log_jac, None, predicted, log_scale


#: :func:`_measured_scale` rescales one log-SD's coordinate where the mean drop of the log density one step either side
#: of the mode is outside this range (a Gaussian's is 0.5)
_DROP_RANGE = (0.125, 2.0)


def _measured_scale(cond, mode, root, f0):
    r"""``(root, log_jac)`` of one component, rescaled where the log density's mean drop :math:`d` at
    :math:`z = \pm 1` is outside :data:`_DROP_RANGE`: by :math:`\sqrt{0.5/d}` (from 8 to 1/8 at most), so that a step
    of the grid is about a posterior SD. The mode's curvature comes from the search's secants; on the exact route
    it can be far from the density's (binary rows each with their own effect and an SD near 0.3: a curvature SD of
    2.0 for a posterior SD of 0.8, four grid points, and the fixed effects' SDs at 0.53 of NUTS's)."""
    drops = [f0 - cond.corrected(mode + root @ z, tol=_GRID_TOL)[0] for z in (np.array([-1.0]), np.array([1.0]))]
    d = float(np.mean(drops)) if np.all(np.isfinite(drops)) else np.nan
    if not np.isfinite(d) or _DROP_RANGE[0] <= d <= _DROP_RANGE[1]:
        return root, float(np.log(abs(root[0, 0])))
    root = root * float(np.clip(np.sqrt(0.5 / max(d, 1e-12)), 1.0 / 8.0, 8.0))
    return root, float(np.log(abs(root[0, 0])))


#: :func:`_prior_tail` integrates the tail towards SD 0 beyond the grid where it may add more than this fraction to
#: the log-SD's posterior variance, ...
_TAIL_VARIANCE = 0.01
#: ... out to where what lies beyond may add less than this fraction (not below this log-SD: e^-2vcp overflows
#: beyond -350), ...
_TAIL_BEYOND = 1e-3
_TAIL_LOWEST = -340.0
#: ... by this many points (twice as many where the tail is longer than this many grid steps).
_TAIL_POINTS = 24


def _prior_tail(cond, mode, root, zs, logd, step):
    r"""Points for the tails of the log-SDs' posterior towards SD 0 beyond the grid, where the prior is wide:
    ``(z, log_scale)``, their coordinates and the log of their weight per unit density relative to a grid point's
    (a grid point stands for a cell of :math:`\mathrm{step}^k |\det \mathrm{root}|`), or None where no tail matters.

    Towards SD 0 a component's random effects vanish and the likelihood levels off at that of the model without
    them, so beyond a point :math:`\theta_p` the log density along that log-SD is at most
    :math:`f_p - (\theta^2 - \theta_p^2)/(2\,vcp\_p^2)`, the prior's own decay (the likelihood only falls further).
    For each component c: from the grid's point of least :math:`\theta_c`, :math:`\theta_e` (value :math:`f_e`), a
    point :math:`\theta_p` one prior SD (at least two grid steps) further along :math:`\theta_c` is solved; with the
    log density linear between the two and that bound beyond, and the other log-SDs spread as at the mode (their
    conditional Gaussian given :math:`\theta_c`, of volume :math:`W_c`), the tail's share of :math:`\theta_c`'s
    posterior variance about the grid's mean is bounded. Where the bound exceeds :data:`_TAIL_VARIANCE`,
    :data:`_TAIL_POINTS` to twice as many evenly spaced points on the line from :math:`\theta_e` along
    :math:`\theta_c` cover the tail out to where what lies beyond may add under :data:`_TAIL_BEYOND` of the variance
    (not below a log-SD of -340, whose precision overflows), each standing for its spacing times :math:`W_c`. With a prior SD of at most 1 (the default) its
    decay keeps the tails negligible (not checked). With vcp_p = 5 cbpp's herd log-SD had its posterior SD 25 %
    short without it, 2 % with it (against a fine quadrature of the same density), and with vcp_p = 10, 64 % and
    4 %; an uninformed factor crossed with an informed one, vcp_p = 5: 42 % short without it."""
    finite = np.isfinite(logd)
    vp = float(cond.model.vcp_p)
    if not finite.any() or vp <= 1.0:
        return None
    k = mode.size
    top = float(logd[finite].max())
    theta = mode + zs[finite] @ root.T
    cell = step**k * abs(float(np.linalg.det(root)))
    w = np.exp(logd[finite] - top) * cell
    cov = root @ root.T  # (the log-SDs' covariance at the mode's curvature)
    prec = np.linalg.inv(cov)
    out_z, out_scale = [], []
    for c in range(k):
        others = [j for j in range(k) if j != c]
        # the other log-SDs' conditional spread given theta_c: (2 pi)^((k-1)/2) det(prec_others)^(-1/2)
        log_w = 0.5 * ((k - 1) * np.log(2.0 * np.pi) - np.linalg.slogdet(prec[np.ix_(others, others)])[1]) if others \
            else 0.0
        v = theta[:, c]
        mean = float(w @ v) / w.sum()
        var = float(w @ (v - mean) ** 2)
        edge = int(np.argmin(v))
        theta_e, f_e = theta[edge].copy(), float(logd[finite][edge]) - top
        theta_p = theta_e.copy()
        theta_p[c] -= max(vp, 2.0 * step * float(np.sqrt(cov[c, c])))
        if theta_p[c] < -340.0:
            continue
        f_p = cond.corrected(theta_p, tol=_GRID_TOL)[0] - top
        if not np.isfinite(f_p):
            continue
        e, q = float(theta_e[c]), float(theta_p[c])
        sd_c = float(np.sqrt(cov[c, c]))
        start = e - 0.5 * step * sd_c  # (about where the grid's cells end along theta_c)
        if start <= _TAIL_LOWEST:
            continue
        t = np.linspace(_TAIL_LOWEST, start, 4000)
        bound = np.where(t >= q, f_e + (f_p - f_e) * (e - t) / (e - q), f_p - (t**2 - q**2) / (2.0 * vp**2))
        share = np.cumsum(np.exp(bound + log_w) * (t - mean) ** 2) * (t[1] - t[0])  # (from the far end in)
        if share[-1] <= _TAIL_VARIANCE * var:
            continue
        # out to where what lies beyond may add under _TAIL_BEYOND of the variance (a level 16 below the top from
        # -100 to -340, vcp_p = 100, had held 60 % of it)
        end = float(t[min(int(np.searchsorted(share, _TAIL_BEYOND * var)), t.size - 2)])
        n_t = int(np.clip(np.ceil((start - end) / (2.0 * step * sd_c)), _TAIL_POINTS, 2 * _TAIL_POINTS))
        h = (start - end) / n_t
        points = np.repeat(theta_e[None, :], n_t, axis=0)
        points[:, c] = start - h * (np.arange(n_t) + 0.5)
        out_z.append(np.linalg.solve(root, (points - mode).T).T)
        out_scale.append(np.full(n_t, np.log(h) + log_w - np.log(cell)))
    if not out_z:
        return None
    return np.vstack(out_z), np.concatenate(out_scale)


def _runs_away(cond, mode, design, k):
    r"""Whether the corrected log density of ``design`` (:func:`_design`'s, ``k`` components) shows the
    second-order correction running away beyond the probe points that judged it: a point two or more
    posterior SDs from ``mode`` along an axis (:math:`\max_i |z_i| \ge 2`) above the mode, or on an axis
    of a grid a point above its neighbour towards the mode (on the accuracy cases such points are at
    least 1.08 below the mode, and each step outwards along an axis from z = 1 on falls by at least
    0.75). Intercepts of three groups of five binary rows with one event: the density rose by 1.3 from
    z = 4 to 5 (SD 70), and the effects' posterior SDs came out 1.7 times too large."""
    zs, thetas, split, predicted = design[2], design[3], design[5], design[6]
    if not len(zs):
        return False
    top = cond.corrected(mode)[0]
    if not np.isfinite(top):
        return False
    far = (np.max(np.abs(zs), axis=1) >= 2.0) & np.isnan(predicted)  # (the points solved)
    logd = np.array([cond.corrected(th)[0] if f else np.nan for th, f in zip(thetas, far)])
    if np.any(logd[np.isfinite(logd)] > top):
        return True
    if split is not None:  # the axial design: no two points in line
        return False
    idx = {tuple(np.round(z / _grid_step(cond, k)).astype(int)): i for i, z in enumerate(zs)}
    for key, i in idx.items():
        on = [d for d in range(k) if key[d]]
        if len(on) != 1 or abs(key[on[0]]) < 2 or not np.isfinite(logd[i]):
            continue
        inner = list(key)
        inner[on[0]] -= int(np.sign(key[on[0]]))
        j = idx.get(tuple(inner))
        if j is not None and np.isfinite(logd[j]) and logd[i] > logd[j]:
            return True
    return False


#: The grid where the axial design's two points miss a conditional variance's mean over the log-SDs by more than this
#: fraction (:func:`_moments_curve`).
_VAR_MIX_TOL = 0.03


def _conditional_variances(cond, th):
    """The fixed and random effects' conditional variances at ``th`` (the Laplace Gaussian's; None where the inner
    problem failed)."""
    nr = cond(th, tol=_GRID_TOL)[1]
    if nr.factor is None:
        return None
    return np.concatenate([np.diag(nr.factor.border_inverse())[:cond.model.k_fep], nr.factor.sparse_diag_inverse()])


def _moments_curve(cond, mode, root):
    r"""Whether the axial design's two points, at :math:`z = \pm 1` along an axis, miss the mean over the
    log-SDs of a fixed or random effect's conditional variance :math:`v(z)` by more than :data:`_VAR_MIX_TOL`:
    with :math:`\log v` the quadratic :math:`a + bz + cz^2` through the mode and the probe points
    :math:`z = \pm 3` (solved already, unless :func:`_measured_scale` changed the scale), :math:`\mathrm{E}\,v = e^{a + b^2/(2(1 - 2c))}/\sqrt{1 - 2c}` over
    :math:`z \sim N(0, 1)` against :math:`(v(-1) + v(1))/2`. Binary rows each with its own effect and an SD
    near 0.3 leave the log-SD's posterior close to its prior, and the fixed effects' variance grows like
    :math:`1 + 0.35\sigma^2` (the logistic's attenuation): 2.5-fold between the axial points but 36-fold between
    the probe points, and the two points put the fixed effects' SDs at 0.53 of NUTS's."""
    k = mode.size
    v0 = _conditional_variances(cond, mode)
    if v0 is None:
        return False
    for i in range(k):
        far = [_conditional_variances(cond, mode + root @ z) for z in _axial(k, _PROBE_Z)[2 * i:2 * i + 2]]
        if any(v is None for v in far):
            continue
        lo, mid, hi = (np.log(np.maximum(v, 1e-300)) for v in (far[0], v0, far[1]))
        b = (hi - lo) / (2.0 * _PROBE_Z)
        c = (0.5 * (hi + lo) - mid) / _PROBE_Z**2
        if np.any(c >= 0.25):  # (a variance growing that fast: no two points integrate it)
            return True
        mean = np.exp(mid + b**2 / (2.0 * (1.0 - 2.0 * c))) / np.sqrt(1.0 - 2.0 * c)
        two = 0.5 * (np.exp(mid - b + c) + np.exp(mid + b + c))
        if np.any(np.abs(two / mean - 1.0) > _VAR_MIX_TOL):
            return True
    return False


def _moments_vary(cond, thetas):
    r"""Whether a fixed or random effect's conditional variance changes by more than a factor
    :data:`_VAR_RATIO_MAX` between the points ``thetas`` (the axial design's): then the two points of
    a split normal cannot integrate it over the log-SDs, however Gaussian their density is. With a
    factor of two levels the Intercept's conditional variance grows like :math:`e^{2\theta}/2` until
    its prior caps it (12-fold between the axial points of a binary case); the two points put its
    posterior SD 3.6 % low, where the grid is within 0.1 % of importance sampling. The effect of a
    group without events is known only through its prior, its variance grows like :math:`e^{2\theta}`
    (four groups of five rows, one event: 30-fold between the points, and the effects' posterior SDs
    30 % short). On the accuracy cases that keep the axial design the factor is at most 2.2. Measured on the conditional Laplace
    Gaussians, also where the nested approximation gives the moments (an indicator of the variation,
    not the moments themselves)."""
    variances = [_conditional_variances(cond, th) for th in thetas]
    if any(v_ is None for v_ in variances):  # not measurable there: the design stays as the density's shape decided
        return False
    v = np.array(variances)
    return bool(np.any(v.max(axis=0) > _VAR_RATIO_MAX * np.maximum(v.min(axis=0), 1e-300)))


def _grid_step(cond, k):
    r"""The grid's step in z: :data:`_STEP`, or :data:`_STEP_OBSERVATION` where an observation-level component
    is integrated inside the groups' rule (:attr:`~mglm_core.quadrature.NestedMarginal.inner`). Those log-SD
    posteriors are skewed and correlated (binary rows, each with its own effect, in pairs), and a grid of step
    1.5 placed them by its orientation alone: 50 pairs had the groups' log-SD SD at 0.73 or 0.82 against NUTS's
    0.83 as the rule of the rows' integrals changed the Hessian at the mode by its 1e-3 errors; at step 1 both gave
    0.82-0.83 (35-47 points, each a few milliseconds on this route)."""
    nested = getattr(cond, "nested", None)  # (a caller's stand-in for _Conditional may have no nested marginal)
    if nested is not None and cond.correction == "nested" and nested.inner is not None:
        return _STEP_OBSERVATION
    return _STEP[k]


def _grid_points(logf, k, step):
    r"""Explore a regular grid in z outwards from 0 while within _DROP_K[k] of the maximum, by
    ``logf(z, floor)`` (a point whose value is estimated below ``floor``, _ONE_STEP_DROP below the largest
    value so far, may keep the estimate: :meth:`_Conditional.corrected`).

    Returns ``({index: (log density, predicted)}, truncated)``, ``truncated`` where a point at the grid's limit
    (:data:`_Z_MAX`, :data:`_Z_MAX_1`) was still within the region. A candidate beyond the region whose log density,
    extrapolated along an axis from the solved points in line with it on its side of the mode (:func:`_extrapolate`:
    the largest over the axes), is more than _PREDICT_MARGIN below the threshold is not solved: it keeps its
    estimated value (``predicted``) and is not explored further. Such points lie beyond the region's edge (about
    half of a grid's points for two or three components, carrying 1-3 % of its mass).
    """
    drop = _DROP_K[k]
    seen = {}
    frontier = [(0,) * k]
    best = -np.inf
    limit = _Z_MAX_1 if k == 1 else _Z_MAX
    truncated = False
    while frontier:
        nxt = []
        for idx in frontier:
            if idx in seen:
                continue
            pred = _extrapolate(seen, idx)
            if pred is not None and pred < best - drop - _PREDICT_MARGIN:
                seen[idx] = (pred, True)
                continue
            val = logf(np.array(idx, dtype=float) * step, best - _ONE_STEP_DROP)
            seen[idx] = (val, False)
            best = max(best, val)
            if val > best - drop and max(abs(i) for i in idx) * step >= limit:
                truncated = True
            if val > best - drop and max(abs(i) for i in idx) * step < limit:
                for d in range(k):
                    for s in (-1, 1):
                        nb = list(idx)
                        nb[d] += s
                        nb = tuple(nb)
                        if nb not in seen:
                            nxt.append(nb)
        frontier = nxt
    return seen, truncated


#: :func:`_extrapolate` reads an axis from each point's own side of the mode only where the log density one step
#: either side of the mode along it differs by more than this.
_LOPSIDED = 1.0


def _extrapolate(seen, idx):
    r"""The largest extrapolation to ``idx`` along an axis (None without any): quadratic from the
    three solved points in line with it, :math:`f_{i+1} = 3f_i - 3f_{i-1} + f_{i-2}`, plus the
    third difference :math:`f_{i+1} - 3f_i + 3f_{i-1} - f_{i-2}` of the parallel line through the
    centre where that line is solved (a skewness along the axis: exact for a cubic).

    Along an axis where the log density is lopsided (its values one step either side of the mode differ by more than
    :data:`_LOPSIDED`) only the points on ``idx``'s own side of the mode are read (a line through the mode reads the
    other side's shape: a log-SD posterior steep towards large SDs and levelling off towards SD 0 had the quadratic
    through the mode put points 1.5 below the top at 13.9 below, and the log-SD's mean 1.2 posterior SDs high):
    the quadratic three or more steps out, and two steps out the line through the two points towards the mode,
    :math:`f_{i+1} = 2f_i - f_{i-1}` (above a concave log density beyond them)."""
    out = None
    k = len(idx)
    for d in range(k):
        step = tuple(int(j == d) for j in range(k))
        up, down = seen.get(step), seen.get(tuple(-j for j in step))
        lopsided = up is None or down is None or not abs(up[0] - down[0]) <= _LOPSIDED
        for s in (-1, 1):
            own = idx[d] != 0 and s == np.sign(idx[d])
            if lopsided and not (own and abs(idx[d]) >= 3):
                line = _solved_line(seen, idx, d, s, (1, 2)) if own and abs(idx[d]) >= 2 else None
                if line is not None:
                    out = 2.0 * line[0] - line[1] if out is None else max(out, 2.0 * line[0] - line[1])
                continue
            line = _solved_line(seen, idx, d, s, (1, 2, 3))
            if line is None:
                continue
            pred = 3.0 * line[0] - 3.0 * line[1] + line[2]
            # (for a point on the axis, the centre line is its own line, unsolved at idx: no term)
            centre = tuple(i if j == d else 0 for j, i in enumerate(idx))
            third = _solved_line(seen, centre, d, s, (0, 1, 2, 3))
            if third is not None:
                pred += third[0] - 3.0 * third[1] + 3.0 * third[2] - third[3]
            out = pred if out is None else max(out, pred)
    return out


def _solved_line(seen, idx, d, s, steps):
    """The solved, finite log densities at ``idx - s * j * e_d`` for j in ``steps`` (None if any is not)."""
    vals = []
    for j in steps:
        nb = list(idx)
        nb[d] -= s * j
        v = seen.get(tuple(nb))
        if v is None or v[1] or not np.isfinite(v[0]):
            return None
        vals.append(v[0])
    return vals


def fit_laplace(model, *, tol=1e-11, vcp_bounds=(-12.0, 8.0), refine=True, callback=None, quiet=False):
    """Integrated nested Laplace fit (see the module docstring).

    Parameters
    ----------
    model : BayesMixedGLM
    tol : float
        Newton-decrement tolerance of the inner (conditional) problems.
    vcp_bounds : (float, float)
        Box for the search of the mode of :math:`\\tilde p(vcp \\mid y)`.
    refine : bool
        Replace each conditional Laplace Gaussian by its variational refinement
        (:func:`refine_conditional`): better means for binary and small-count data.
    callback : callable, optional
        ``callback(fraction, message)`` as the fit progresses (:mod:`mglm_core.progress`).
    quiet : bool
        Issue no warnings (they are on the result's ``warnings`` all the same): for the fits that are parts of
        another (:mod:`mglm_core.separated`), where catching them would swap the process's warning filters
        under the other threads' fits.

    Returns
    -------
    BayesMixedGLMResults
        With ``vcp_grid`` (the marginal posterior of each log-SD on a grid) and
        ``log_marginal_likelihood``.
    """
    t0 = time.perf_counter()
    if model.symbolic is not None and model.symbolic.route == "iterative":
        raise FitError(
            f"fit_laplace needs the exact log-determinant of the random-effect block at every integration point, "
            f"and this design's block cannot be factored: after eliminating {model.symbolic.P.size} levels exactly, "
            f"the other {model.symbolic.D.size} crossed levels would leave a dense {model.symbolic.D.size} x "
            f"{model.symbolic.D.size} matrix (more than {DENSE_TAIL_MAX}). Use fit_map() or fit_vb(), which solve "
            "it by conjugate gradients.")
    prog = Progress(callback)
    p, k, q = model.k_fep, model.k_vcp, model.k_vc
    cond = _Conditional(model, tol)
    msgs = []
    approximations = {_DIAGONAL_CURVATURE}  # messages of a converged fit's changed approximation
    if k == 0:
        logp, nr = cond(np.zeros(0))
        cov = nr.factor.border_inverse()
        vc_var = nr.factor.sparse_diag_inverse()
        mean = nr.b
        # a GLM: its posterior by quadrature (the Laplace Gaussian's mean is the mode; few rows skew it)
        exact = fixed_quadrature.integrate(model, nr.b, cov) if q == 0 and np.isfinite(logp) else None
        if exact is not None:
            mean, cov, logp = exact
        prog.done()
        diag = FitDiagnostics(True, nr.n_iter, nr.grad_norm, time.perf_counter() - t0, logp,
                              message="Gauss-Hermite quadrature of the fixed effects' posterior" if exact else "")
        return BayesMixedGLMResults(model, "laplace", mean, np.sqrt(np.diag(cov)), np.zeros(0), np.zeros(0),
                                    nr.u, np.sqrt(vc_var), diag, border_cov=cov, log_marginal_likelihood=logp)

    def logpost(theta):
        v = cond.corrected(theta)[0]
        return v if np.isfinite(v) else -1e300

    search = dict(progress=lambda it: prog.report(0.3 * (1.0 - 0.6**it),
                                                  f"mode of the log-SD posterior, iteration {it}"))
    # the mode of the plain Laplace density first (cond.correction is None), from the EM update of
    # the start with the secants between the two as the first (diagonal) curvature. (With several
    # components this was once rejected: it moved the mode's curvature by 0.5 %, enough, under the
    # 24-node rule then used at every SD, for a fragile grid point at large SDs to be solved rather
    # than dropped. With the rule refined for large SDs (NestedMarginal.use_nodes) it saved 4 % of
    # the accuracy cases' time with several components, up to 23 %, and moved no mean or SD by more
    # than 0.006 reference SDs.)
    x0, B0 = _em_start(cond, vcp_bounds, k)
    mode, _, grad, H, search_ok, n_outer = _maximise_theta(cond.value_grad, x0, vcp_bounds, neg_hessian=B0,
                                                           f=lambda th: cond(th)[0], sd_tol=_MODE_SD_TOL,
                                                           **search)
    # The second-order correction is a series in the row variances Var(eta_i): with few rows per
    # effect and a large SD (binary data, one or two rows per mother) it runs away. Its range over
    # the mode and the axial points z = +-3 (grid points) decides; beyond _SPREAD_MAX the exact
    # integration of the conditionally independent component takes its place, with its own mode.
    # So does the range of the within-effect pairs of rows the correction leaves out, beyond
    # _LEFT_OUT_MAX (a few binary or low-count rows per effect: the series is unreliable there
    # before it runs away).
    cond.use("second_order")
    cond.anchor = mode
    root = _standardise(H, [])[0]
    probe = [mode] + [mode + root @ z for z in _axial(k, _PROBE_Z)]
    eps = np.array([cond.corrected(th, tol=_GRID_TOL)[0] - cond(th, tol=_GRID_TOL)[0] for th in probe])
    spread = float(np.ptp(eps[np.isfinite(eps)])) if np.isfinite(eps).any() else np.inf
    left_out = np.nan  # nan: not measured
    if spread <= _SPREAD_MAX:
        lo = np.array([cond.left_out(th) for th in probe])
        left_out = float(np.ptp(lo[np.isfinite(lo)])) if np.isfinite(lo).any() else 0.0
    few = spread > _SPREAD_MAX or left_out > _LEFT_OUT_MAX
    # Complete separation (an effect whose outcomes are all 0, or all at the trials) with a large SD
    # leaves the correction tame but an effect's conditional posterior far from Gaussian: judged by
    # the exact one-dimensional conditionals of the independent component at the mode
    # ... at the mode, and where the log-SDs' posterior is wide (its SD above _WIDE_SD: a few levels) at the
    # probe points too: the integration then reaches SDs far from the mode's (two groups of one binary row:
    # a shift of 0.02 at the mode, SDs of 40 at z = 3; judged at the mode alone, their effects' posterior SDs
    # came out 25 % short)
    wide = bool(np.any(np.sqrt(np.sum(root**2, axis=1)) > _WIDE_SD))
    cond_shift = ((max(cond.conditional_shift(th) for th in probe) if wide else cond.conditional_shift(mode))
                  if spread <= _SPREAD_MAX else np.nan)  # nan: not measured
    separated = cond_shift > _SHIFT_MAX and cond.nested is not None
    # Where the correction varies but stays in range, the exact integration's density decides, on data small enough
    # for five evaluations of it (intercepts and slopes of 150 groups of five Poisson rows, SDs 2 and 1, a sixth of the
    # groups all zeros: the correction's range was 0.2, yet the exact density sat 0.14 posterior SDs from it along one
    # log-SD; against 12,000 centred NUTS draws a chain, the log-SDs' means 0.13 SDs off and the Intercept's 0.06, 0.01
    # after the switch)
    departure = (np.nan, np.nan)  # nan: not measured
    if (not separated and not few and cond.nested is not None and spread > _DEPARTURE_SPREAD
            and model.endog.size <= _DEPARTURE_ROWS_MAX):
        departure = _exact_departure(cond, probe)

    def switch(reason):
        """Replace the second-order correction by the exact integration of the conditionally independent
        component (the plain Laplace value without one), find the mode again and say why (``reason``)."""
        nonlocal mode, grad, H, search_ok, n_outer
        fallback = "nested" if cond.nested is not None else None
        cond.use(fallback)
        if fallback:  # a rule fine enough out to the probe points' largest SD of the component
            # (with an observation-level component inside, the rule for the SDs within a posterior SD of the mode:
            # the far probe points' were several times the work at every point, and each point beyond takes its own)
            near = probe if cond.nested.inner is None else [mode] + [mode + root @ z for z in _axial(k, 1.0)]
            _take_rule(cond, near, mode)
            cond.outer_tilt(mode, root)
        # (from the curvature and slope along the axes at outer_tilt's points where it ran: no difference
        # stencil at the start)
        start = cond.axis_quadratic() if fallback else None
        mode, _, grad, H, search_ok, n_more = _maximise_theta(
            cond.corrected_value_grad, mode, vcp_bounds, f=lambda th: cond.corrected(th)[0], max_step=0.5,
            neg_hessian=H if start is None else start[1], hessian=cond.corrected_hessian,
            sd_tol=_GRID_MODE_SD_TOL if _always_grid(cond, k) else _MODE_SD_TOL,
            gradient0=None if start is None else start[0], **search)
        # (to 1 % of the posterior SDs, as the first search: on the 60 accuracy cases that switch, 0-16 of their
        # 11-184 exact evaluations fewer, and no error or SD ratio against the references changed by more than 0.013;
        # to 10 % where a grid follows whatever the density's shape, _GRID_MODE_SD_TOL)
        n_outer += n_more
        exact = cond.nested.components if fallback else ()
        how = (f"the effects of {' and '.join(model.vcp_names[c] for c in exact)} were integrated exactly ("
               + ("adaptive Gauss-Hermite" if len(exact) == 1
                  else f"adaptive Gauss-Hermite, the {model.vcp_names[exact[1]]} effects within every node of the "
                  f"{model.vcp_names[exact[0]]} ones" if cond.nested.inner is not None
                  else f"as {len(exact)}-dimensional blocks per level, adaptive Gauss-Hermite")
               + ") and the rest by Laplace instead" if fallback else
               "no component has at most one effect per row, so the plain Laplace value was used; the "
               "posterior of the SDs is approximate (check against MCMC)")
        msg = f"{reason}; {how}."
        msgs.append(msg)
        approximations.add(msg)

    if separated:
        switch(f"The conditional posterior of an effect of {model.vcp_names[cond.independent.component]} is far from "
               f"Gaussian (its mean is {cond_shift:.2f} of its SD from the Laplace mean: all of the effect's outcomes "
               "at one boundary, with a large SD)")
    elif spread > _SPREAD_MAX:
        switch("Few observations per random effect for the variances involved: the second-order correction of "
               f"the Laplace approximation varies by {spread:.0f} log units within three posterior SDs of the mode, "
               "outside its range")
    elif few:
        switch("Few observations per random effect for the variances involved: the terms of the second-order "
               "correction of the Laplace approximation that it leaves out (pairs of observations of one "
               f"{model.vcp_names[cond.independent.component]} effect) vary by {left_out:.1f} log units within three "
               "posterior SDs of the mode, outside its range")
    elif departure[0] > _DEPARTURE_MAX or abs(departure[1] - 1.0) > _DEPARTURE_MAX:
        switch("The Laplace approximation's density of the log-SDs, corrected to second order, departs from the one "
               f"with the effects of {model.vcp_names[cond.independent.component]} integrated exactly (that would move "
               f"a log-SD's mean by {departure[0]:.2f} of its posterior SD, or scale its SD by {departure[1]:.2f})")
    if cond.correction == "nested":  # the integration points keep their tilted moments (NestedMarginal.moments)
        cond.nested.keep_tilted = True
    design = _design(cond, mode, H, k, msgs)
    if cond.correction == "second_order" and _runs_away(cond, mode, design, k):
        # the correction runs away beyond the probe points (intercepts of four groups of three binary rows
        # with one event: it climbed by 6.5 log units from z = 3 to 3.5 and put all the weight at SD 150)
        switch("Few observations per random effect for the variances involved: the second-order correction of "
               "the Laplace approximation makes the density of the SDs grow again far from its mode")
        if cond.correction == "nested":
            cond.nested.keep_tilted = True
        design = _design(cond, mode, H, k, msgs)
    root, log_jac, zs, thetas, log_evidence_base, split, predicted, log_scale = design
    at_bound = np.isclose(mode, vcp_bounds[0], atol=1e-3) | np.isclose(mode, vcp_bounds[1], atol=1e-3)
    if at_bound.any():
        names = ", ".join(model.vcp_names[j] for j in np.flatnonzero(at_bound))
        msgs.append(f"The posterior of the log-SD of {names} peaks at the search bound; its SD is "
                    "essentially unidentified by the data (the prior dominates).")

    # Log weights: the Laplace value plus its second-order correction at every point. Moments: the
    # conditional Gaussian refined where the log density is within _REFINE_DROP of its top (from the
    # highest point outwards); elsewhere (little mass) moved by the nearest refined point's changes.
    solved = np.isnan(predicted)
    logd = np.array([cond.corrected(th)[0] if s else pv for th, s, pv in zip(thetas, solved, predicted)])
    fe_shift = None
    if cond.correction == "nested":
        # fixed-effect means from the nested approximation (its mode plus the skewness shift, from the
        # curves outer_tilt fitted along the axes, else at the mode of vcp): the conditional
        # Gaussian's means are biased with few rows per effect
        cond.corrected(mode)
        opt = cond.nested_optimum.get(cond._key(mode))
        d_shift, fe_shift = (cond.outer_shift(mode) or
                             (cond.nested.mean_shift(mode, opt[0], opt[1]) if opt is not None
                              else (np.zeros(cond.nested.D.size), np.zeros(model.k_fep))))
    fe_factor = _fixed_effect_widening(cond, mode)
    # (on the Laplace route, skewed effects take their exact one-dimensional moments)
    skewed = _SkewedEffects.find(cond, mode) if fe_shift is None else None
    skew_changes = []  # (z, variance ratio to the Gaussian's, skewness) where the skewed effects' moments were computed
    on_grid = zs[log_scale == 0] if len(zs) else zs
    z_lo, z_hi = (on_grid.min(axis=0), on_grid.max(axis=0)) if len(on_grid) else (None, None)
    refine_at = logd > logd.max() - _REFINE_DROP if split is None else np.ones(len(thetas), bool)
    out = {}
    n_unrefined = 0
    changes = []  # (z, (du, db, d row var), d vc var, d fe cov) at the points refined so far
    if split is not None and refine and fe_shift is None:
        # the axial design: refined at the mode, whose changes move both points of each axis
        mode_change = _refined_change(model, mode, cond(mode)[1])
        if mode_change is not None:
            changes.append((np.zeros(k), *mode_change))
            refine_at = np.zeros(len(thetas), bool)
    by_density = np.flatnonzero(solved)[np.argsort(-logd[solved], kind="stable")]
    for i_, t_ in enumerate(by_density):
        th = thetas[t_]
        prog.report(0.35 + 0.63 * i_ / len(thetas), f"integration point {i_ + 1} of {len(thetas)}")
        logp, nr = cond.corrected(th)
        if fe_shift is not None:
            # nested mode: the moments of the nested approximation (fe with the inner component
            # integrated exactly, plus the skewness shift; the inner effects' tilted moments)
            opt = cond.nested_optimum_at(th)
            if opt is None:
                continue
            mom = cond.nested.moments(th, opt)
            fe_m, fe_cov, vc_m, vc_v, dmu_dfe, dmu_dD, vc_k = mom
            # (the shift's curves are fitted within a posterior SD of the mode and grow exponentially beyond: the
            # prior's tail points, _prior_tail, take them at the grid's edge; at a log-SD 14 SDs out the fixed
            # effects' shift had been 25, at 28 SDs 14563)
            z_shift = zs[t_] if not log_scale[t_] else np.clip(zs[t_], z_lo, z_hi)
            d_shift, fe_shift = cond.outer_shift(mode + root @ z_shift) or (d_shift, fe_shift)
            vc_m = vc_m.copy()
            vc_m[cond.nested.ie.cols] += dmu_dfe @ fe_shift + (dmu_dD @ d_shift if dmu_dD is not None else 0.0)
            vc_m[cond.nested.D] += d_shift
            if fe_factor is not None:
                widened = _widened(fe_cov, fe_factor)
                vc_v = vc_v.copy()  # (the effects' variances carry the fixed effects' through dmu_dfe)
                vc_v[cond.nested.ie.cols] += np.einsum("ij,ij->i", dmu_dfe @ (widened - fe_cov), dmu_dfe)
                fe_cov = widened
            out[t_] = (logp, fe_m + fe_shift, fe_cov, vc_m, vc_v, vc_k)
            continue
        if nr.factor is None:
            continue
        u, b, factor = nr.u, nr.b, nr.factor
        fe_cov, vc_var_t = factor.border_inverse(), factor.sparse_diag_inverse()
        near = _nearest(changes, zs[t_]) if refine and changes else None
        if refine and refine_at[t_]:
            u, b, factor, ok, shift = refine_conditional(model, th, u, b, factor,
                                                         shift=near[1] if near else None)
            n_unrefined += not ok
            if ok:
                fe_ref, vc_ref = factor.border_inverse(), factor.sparse_diag_inverse()
                changes.append((zs[t_], shift, vc_ref - vc_var_t, fe_ref - fe_cov))
                fe_cov, vc_var_t = fe_ref, vc_ref
        elif near is not None:
            _, (du, db, _), dvar, dcov = near
            u, b = u + du, b + db
            vc_var_t = np.maximum(vc_var_t + dvar, 0.5 * vc_var_t)
            fe_cov = fe_cov + dcov
        third = None
        if skewed is not None:
            cols = skewed.cols
            vc_var_t, third = vc_var_t.copy(), np.zeros(q)
            # (computed at every point where no other effect shares the rows; else where the conditional Gaussians are
            # refined, and elsewhere the nearest such point's ratio of variances and skewness)
            if not skewed.shared or refine_at[t_] or not skew_changes:
                mean_s, var_s, third_s = skewed.moments(cond, th, u, b, factor)
                base = vc_var_t[cols]
                skew_changes.append((zs[t_], var_s / base, third_s / base**1.5))
                u = u.copy()
                u[cols[skewed.exact_mean]] = mean_s[skewed.exact_mean]
            else:
                _, ratio, skew = _nearest(skew_changes, zs[t_])
                var_s, third_s = vc_var_t[cols] * ratio, skew * vc_var_t[cols] ** 1.5
            vc_var_t[cols], third[cols] = var_s, third_s
        out[t_] = (logp, b, fe_cov if fe_factor is None else _widened(fe_cov, fe_factor), u, vc_var_t, third)
    # points not solved (beyond the region's edge, their log density extrapolated): the moments of
    # the nearest solved point, the random and fixed effects moved along its mode's first-order change
    solved_used = np.array(list(out), dtype=int)
    for t_ in np.flatnonzero(~solved):
        if solved_used.size == 0:
            break
        near = int(solved_used[np.argmin(np.sum((zs[solved_used] - zs[t_]) ** 2, axis=1))])
        _, b, fe_cov, u, vc_var_t, vc_k = out[near]
        entry = cond._entry(thetas[near]) if fe_shift is None else None  # (a point solved: cached, or solved again)
        if entry is not None and entry[2] is not None:
            d = thetas[t_] - thetas[near]
            u, b = u + entry[2] @ d, b + entry[3] @ d
        out[t_] = (logd[t_], b, fe_cov, u, vc_var_t, vc_k)
    used = sorted(out)
    if not used:
        raise FitError(
            f"fit_laplace could not solve the inner problem at any of its {len(zs)} integration points over the "
            f"log-SDs (their posterior mode is at {np.round(mode, 2).tolist()}, with a flat curvature there): the "
            "data do not identify the random-effect SDs, typically because every group's outcomes sit at one "
            "boundary (complete separation). Use fit_map() or fit_vb(), a smaller vcp_p, or fewer random effects.")
    logps = [out[t_][0] for t_ in used]
    fe_m, fe_c, vc_m, vc_v = ([out[t_][j] for t_ in used] for j in (1, 2, 3, 4))
    vc_k = ([np.zeros(q) if out[t_][5] is None else out[t_][5] for t_ in used]
            if any(out[t_][5] is not None and np.any(out[t_][5]) for t_ in used) else None)
    thetas = thetas[used]
    if split is None:
        logw = np.array(logps) + log_scale[used]  # (the prior's tail: its points' spacing, _prior_tail)
        lmax = logw.max()
        w = np.exp(logw - lmax)
        log_ml = lmax + np.log(w.sum()) + log_evidence_base
        w /= w.sum()
    else:
        w = split["weights"][used]
        w /= w.sum()
        log_ml = logpost(mode) + 0.5 * k * LOG_2PI + log_jac + float(np.sum(np.log(split["scale"])))
    # between-point (co)variances of a regular grid are short by the lattice factor (exact for a
    # Gaussian, _lattice_factors); the split normals' weights need no such correction
    lattice_var, log_norm = _lattice_factors(_grid_step(cond, k)) if split is None else (1.0, 0.0)
    log_ml -= k * log_norm
    fe_m, fe_c = np.array(fe_m), np.array(fe_c)
    vc_m, vc_v = np.array(vc_m).reshape(len(w), q), np.array(vc_v).reshape(len(w), q)
    fe_mean = w @ fe_m
    vc_mean = w @ vc_m
    vc_var = w @ vc_v + (w @ vc_m**2 - vc_mean**2) / lattice_var
    vcp_mean = w @ thetas
    dfe = fe_m - fe_mean
    dth = thetas - vcp_mean
    cov = np.zeros((p + k, p + k))
    cov[:p, :p] = np.einsum("t,tij->ij", w, fe_c) + (dfe * w[:, None]).T @ dfe / lattice_var
    cov[p:, p:] = (dth * w[:, None]).T @ dth / lattice_var
    cov[:p, p:] = (dfe * w[:, None]).T @ dth / lattice_var
    cov[p:, :p] = cov[:p, p:].T
    if split is None:
        grid = _marginal_grid(thetas, w, root, k, np.diag(cov[p:, p:]), log_scale=log_scale[used], mode=mode,
                              step=_grid_step(cond, k), mean=vcp_mean)
    else:
        cov[p:, p:] = (root * split["var"]) @ root.T
        vcp_mean = mode + root @ split["mean"]
        grid = _split_normal_grid(mode, root, split)
    sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
    if n_unrefined:
        msgs.append(f"The variational refinement did not converge at {n_unrefined} integration point(s); "
                    "the Laplace Gaussian was kept there.")
    dropped = len(zs) - len(used)
    if dropped:
        msgs.append(f"The inner problem could not be solved at {dropped} of {len(zs)} integration points (at "
                    "extreme SDs); they were left out of the integration.")
    converged = search_ok and not at_bound.any()
    if not search_ok:
        msgs.append("The search for the mode of the log-SD posterior did not converge.")
    prog.done()
    for msg in dict.fromkeys(msgs) if not quiet else ():  # (a design laid out twice adds its messages twice)
        warnings.warn(msg, ApproximationWarning if msg in approximations else ConvergenceWarning, stacklevel=3)
    diag = FitDiagnostics(
        converged=converged, n_iter=int(n_outer), grad_norm=float(np.linalg.norm(grad)),
        seconds=time.perf_counter() - t0, objective=float(log_ml), warnings=tuple(msgs),
        message=f"{len(w)} integration points, {cond.n_inner} inner Newton iterations",
    )
    return BayesMixedGLMResults(
        model=model, method="laplace", fe_mean=fe_mean, fe_sd=sd[:p], vcp_mean=vcp_mean, vcp_sd=sd[p:],
        vc_mean=vc_mean, vc_sd=np.sqrt(np.maximum(vc_var, 0.0)), diagnostics=diag, border_cov=cov,
        vcp_grid=grid, log_marginal_likelihood=float(log_ml),
        extra={"vcp_mode": mode, "vcp_points": thetas, "weights": w, "correction_spread": spread,
               "left_out_spread": left_out, "conditional_shift": cond_shift,
               "outer_slope": None if cond.outer is None else cond.outer.slope,
               **({} if split is not None else
                  {"fe_mixture": _grid_mixture(w, fe_m, np.einsum("tii->ti", fe_c), fe_mean, lattice_var)}),
               **({} if split is not None or w.size * q > VC_MIXTURE_MAX else
                  {"vc_mixture": _grid_mixture(w, vc_m, vc_v, vc_mean, lattice_var)
                   + (() if vc_k is None else (np.array(vc_k),))})},
    )


def _nearest(changes, z):
    """Of ``changes`` (tuples led by their point's coordinates), the one whose point is nearest ``z``."""
    return min(changes, key=lambda c_: float(np.sum((c_[0] - z) ** 2)))


def _grid_mixture(w, means, variances, mean, lattice_var):
    r"""A posterior as the grid's mixture ``(weights, means, SDs)`` (points x parameters), for its quantiles
    (:func:`~mglm_core.results.mixture_quantiles`): each point's conditional Gaussian, its mean moved from the
    mixture's mean ``mean`` by :math:`1/\sqrt{\text{lattice factor}}` (the mixture's variance is then the one
    reported, which corrects the regular grid's between-point variance). The random effects' may carry a fourth
    part, the points' third central moments (the exactly integrated effects': split normals instead)."""
    return w, mean + (means - mean) / np.sqrt(lattice_var), np.sqrt(np.maximum(variances, 0.0))


def _split_normal(f0, logd, k, r=None):
    r"""Skewness along the axes of z from the log densities ``logd`` at the 2k points
    :math:`\mp r\,e_j` (in that order; r defaults to :math:`\sqrt k`, the axial design's), ``f0`` at
    the mode.

    Along axis j the density is taken as a split normal with scales
    :math:`\sigma_\pm = r / \sqrt{2\,(f_0 - f(\pm r\,e_j))}` (INLA's skewness
    correction): mean :math:`m_j = \sqrt{2/\pi}\,(\sigma_+ - \sigma_-)`, second moment
    :math:`(\sigma_+^3 + \sigma_-^3)/(\sigma_+ + \sigma_-)`. Returns the means, variances,
    ``scale`` :math:`(\sigma_+ + \sigma_-)/2` (the normalising constant's factor) and point
    weights :math:`1/2k \pm m_j / (2\sqrt k)` (first moments matched along each axis, for
    :math:`r = \sqrt k`).
    """
    sq = np.sqrt(k)
    drop = np.asarray(f0 - logd, dtype=float)
    sig = np.clip((sq if r is None else r) / np.sqrt(2.0 * np.maximum(drop, 1e-12)), 0.3, 3.0)
    sig = np.where(np.isfinite(drop), sig, 1.0)  # a failed point says nothing about the shape
    s_minus, s_plus = sig[0::2], sig[1::2]
    mean = np.sqrt(2.0 / np.pi) * (s_plus - s_minus)
    var = (s_plus**3 + s_minus**3) / (s_plus + s_minus) - mean**2
    m = np.clip(mean / sq, -0.9 / k, 0.9 / k)
    weights = np.empty(2 * k)
    weights[0::2], weights[1::2] = 1.0 / (2 * k) - m / 2, 1.0 / (2 * k) + m / 2
    return {"mean": mean, "var": var, "scale": 0.5 * (s_plus + s_minus), "weights": weights, "sigma": sig,
            "s_minus": s_minus, "s_plus": s_plus}


def _split_normal_grid(mode, root, split, n=201, draws=20000):
    r"""Marginal density of each log-SD when :math:`z` has independent split-normal coordinates: a
    kernel estimate (a smoothed histogram) from ``draws`` deterministic, stratified draws of
    :math:`\theta = \theta^* + \mathrm{root}\, z`; with one component, the split normal's density itself
    (:math:`z = (\theta - \theta^*)/r` out to 5 scales on each side)."""
    from scipy.special import ndtri

    k = mode.size
    if k == 1:
        sm, sp_, r = float(split["s_minus"][0]), float(split["s_plus"][0]), float(root[0, 0])
        z = np.linspace(-5.0 * sm, 5.0 * sp_, n)
        z = z if r > 0 else z[::-1]  # increasing in theta
        d = np.exp(-0.5 * (z / np.where(z < 0, sm, sp_)) ** 2) * (2.0 / (np.sqrt(2 * np.pi) * (sm + sp_) * abs(r)))
        return VcpGrid((mode[0] + r * z,), (d,))
    u = (np.arange(draws) + 0.5) / draws
    rng = np.random.default_rng(20261124)
    z = np.empty((draws, k))
    for j, (sm, sp_) in enumerate(zip(split["s_minus"], split["s_plus"])):
        # inverse CDF of the split normal (stratified in u, then shuffled across axes)
        pm = sm / (sm + sp_)
        zj = np.where(u < pm, sm * ndtri(np.minimum(u / (2 * pm), 0.5)),
                      sp_ * ndtri(0.5 + np.maximum(u - pm, 0.0) / (2 * (1 - pm))))
        z[:, j] = rng.permutation(zj)
    theta = mode + z @ root.T
    pts, dens = [], []
    for i in range(k):
        x = theta[:, i]
        sd_i = x.std()
        g = np.linspace(x.min() - sd_i, x.max() + sd_i, n)
        # histogram on the grid's cells, smoothed by a Gaussian kernel (Silverman's bandwidth)
        counts = np.histogram(x, bins=n, range=(g[0] - 0.5 * (g[1] - g[0]), g[-1] + 0.5 * (g[1] - g[0])))[0]
        bw = 1.06 * sd_i * draws ** (-0.2) / (g[1] - g[0])  # in cells
        half = int(np.ceil(4 * bw))
        kern = np.exp(-0.5 * (np.arange(-half, half + 1) / bw) ** 2)
        d = np.convolve(counts.astype(float), kern, mode="same")
        d /= np.trapezoid(d, g)
        pts.append(g)
        dens.append(d)
    return VcpGrid(tuple(pts), tuple(dens))


def _lattice_factors(h, terms=3):
    r"""``(c, log_norm)`` of the regular grid of step h for a standard normal (Poisson summation):
    the grid's point masses have variance :math:`c` per axis and total mass :math:`e^{\mathrm{log\_norm}}`
    (times :math:`h^{-1}` per axis), with :math:`a_m = e^{-2\pi^2 m^2/h^2}`,

    .. math::

        c = \frac{1 + 2\sum_m (1 - 4\pi^2 m^2/h^2)\, a_m}{1 + 2\sum_m a_m}, \qquad
        \mathrm{log\_norm} = \log\Big(1 + 2\sum_m a_m\Big).

    h = 1: :math:`c = 1 - 2\cdot 10^{-7}`; h = 1.5: 0.995; h = 2: 0.860. Between-point variances
    are divided by c (exact for a Gaussian; for a function linear in z too).
    """
    m = np.arange(1, terms + 1)
    a = np.exp(-2.0 * np.pi**2 * m**2 / h**2)
    return float((1.0 + 2.0 * np.sum((1.0 - 4.0 * np.pi**2 * m**2 / h**2) * a)) / (1.0 + 2.0 * np.sum(a))), \
        float(np.log1p(2.0 * np.sum(a)))


def _marginal_grid(thetas, w, root, k, var=None, n=201, log_scale=None, mode=None, step=None, mean=None):
    """Marginal density of each log-SD on a fine grid.

    k = 1: the log density at the integration points interpolated by a cubic
    spline in z (the weights ``w`` less the points' ``log_scale``: the prior's tail points stand for more than a
    grid step, :func:`_prior_tail`; with their spacing in the spline the tail's density had been 3.6 times too
    high and an interval's end 3 SDs too far). k >= 2 with the lattice's ``mode`` and ``step``: the log density
    interpolated over the lattice and integrated on a finer one (:func:`~mglm_core.vcp_marginals.lattice_marginals`),
    moved and scaled to ``mean`` and ``var``. Otherwise (a caller without the lattice, or too few points on it): the
    split normal with the points' mean, variance (``var``, the grid's corrected for the lattice) and third moment
    (:func:`~mglm_core.results.split_normal`).
    """
    from scipy.interpolate import CubicSpline

    lattice = np.ones(len(w), bool) if log_scale is None else log_scale == 0  # (the prior's tail points are not)
    if k >= 2 and step is not None and mode is not None and np.count_nonzero(lattice & (w > 0)) >= 2:
        mean = w @ thetas if mean is None else mean
        var = w @ (thetas - mean) ** 2 if var is None else var
        lw = np.log(w[lattice & (w > 0)])
        tail = ~lattice & (w > 0)  # (a tail point's weight is its mass; a lattice point's, its cell's)
        pts, dens = lattice_marginals(thetas[lattice & (w > 0)], lw, mode, root, step, mean, var,
                                      tail=(thetas[tail], w[tail] / np.exp(lw.max())), n=n)
        return VcpGrid(points=pts, density=dens)
    pts, dens = [], []
    for j in range(k):
        x = thetas[:, j]
        if k == 1 and x.size >= 3:
            order = np.argsort(x)
            lw_all = np.log(np.maximum(w, 1e-300)) - (0.0 if log_scale is None else log_scale)
            xs, lw = x[order], lw_all[order]
            g = np.linspace(xs[0], xs[-1], n)
            if log_scale is not None and np.any(log_scale):  # (the grid's own range as finely as without a tail)
                core = x[log_scale == 0]
                g = np.union1d(g, np.linspace(core.min(), core.max(), n))
            d = np.exp(CubicSpline(xs, lw)(g) - lw.max())
        else:
            mean_j = float(w @ x)
            v = float(var[j]) if var is not None else float(w @ (x - mean_j) ** 2)
            # all points on one value of this log-SD (points dropped): a tenth of the curvature's SD
            v = max(v, 0.01 * float(np.sum(root[j] ** 2)))
            mode_j, sm, sp_ = (float(a) for a in split_normal(mean_j, v, float(w @ (x - mean_j) ** 3)))
            g = np.linspace(mode_j - 4.5 * sm, mode_j + 4.5 * sp_, n)
            d = np.exp(-0.5 * ((g - mode_j) / np.where(g < mode_j, sm, sp_)) ** 2)
        area = np.trapezoid(d, g)
        pts.append(g)
        dens.append(d / area)
    return VcpGrid(points=tuple(pts), density=tuple(dens))
