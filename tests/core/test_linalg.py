"""The bordered sparse factorisation against dense linear algebra."""
import numpy as np
import pytest
import scipy.sparse as sp

from mglm_core.linalg import BorderedFactor, NotPositiveDefinite


def _problem(n, sizes, m, seed):
    rng = np.random.default_rng(seed)
    blocks = [sp.csr_matrix((np.ones(n), (np.arange(n), rng.integers(0, s, n))), shape=(n, s)) for s in sizes]
    Z = sp.hstack(blocks).tocsr()
    w = rng.uniform(0.1, 1.0, n)
    q = Z.shape[1]
    A = (Z.T @ sp.diags(w) @ Z + sp.diags(rng.uniform(0.5, 2, q))).tocsc()
    X = rng.normal(size=(n, m))
    B = Z.T @ (w[:, None] * X)
    C = X.T @ (w[:, None] * X) + np.eye(m)
    return A, np.asarray(B), C


@pytest.mark.parametrize("sizes", [(30,), (40, 15), (120, 80, 7)])
def test_bordered_factor_matches_dense(sizes):
    A, B, C = _problem(600, sizes, 3, seed=len(sizes))
    H = np.block([[A.toarray(), B], [B.T, C]])
    f = BorderedFactor(A, B, C)
    Hinv = np.linalg.inv(H)
    q = A.shape[0]
    assert f.A.is_diagonal == (len(sizes) == 1)
    assert f.logdet() == pytest.approx(np.linalg.slogdet(H)[1], rel=1e-10)
    np.testing.assert_allclose(f.sparse_diag_inverse(), np.diag(Hinv)[:q], rtol=1e-9)
    np.testing.assert_allclose(f.border_inverse(), Hinv[q:, q:], rtol=1e-9, atol=1e-14)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=q), rng.normal(size=3)
    x, y = f.solve(a, b)
    np.testing.assert_allclose(H @ np.concatenate([x, y]), np.concatenate([a, b]), atol=1e-9)


def test_indefinite_is_reported():
    A = sp.diags([1.0, 2.0]).tocsc()
    with pytest.raises(NotPositiveDefinite):
        BorderedFactor(A, np.array([[3.0], [3.0]]), np.array([[1.0]]))
    with pytest.raises(NotPositiveDefinite):
        BorderedFactor(sp.diags([1.0, -2.0]).tocsc(), np.zeros((2, 1)), np.eye(1))
    with pytest.raises(NotPositiveDefinite):  # a non-finite border is not a factorisation
        BorderedFactor(sp.diags([1.0, 2.0]).tocsc(), np.zeros((2, 2)), np.array([[np.inf, 0.0], [0.0, 1.0]]))


@pytest.mark.parametrize("sizes", [(60, 25), (120, 80, 7), (300, 40)])
def test_dense_schur_route_matches_dense(sizes):
    """Crossed factors take the exact elimination of the diagonal part onto a dense Schur
    complement; logdet, solves, the selected inverse and the pattern entries match dense algebra."""
    from mglm_core.linalg import SchurDenseLDL, factor_spd

    A, B, C = _problem(2000, sizes, 2, seed=7)
    f = factor_spd(A)
    assert isinstance(f, SchurDenseLDL)
    assert f.P.size == max(sizes)  # the factor with most levels is eliminated exactly
    Ad = A.toarray()
    Ainv = np.linalg.inv(Ad)
    assert f.logdet() == pytest.approx(np.linalg.slogdet(Ad)[1], rel=1e-11)
    np.testing.assert_allclose(f.diag_inverse(), np.diag(Ainv), rtol=1e-9)
    b = np.random.default_rng(2).normal(size=(A.shape[0], 12))
    np.testing.assert_allclose(Ad @ f.solve(b), b, atol=1e-9)  # more columns than the bincount loop takes
    np.testing.assert_allclose(Ad @ f.solve(b[:, :3]), b[:, :3], atol=1e-9)
    np.testing.assert_allclose(Ad @ f.solve(b[:, 0]), b[:, 0], atol=1e-9)
    r, c = A.nonzero()
    np.testing.assert_allclose(f.inverse_on_pattern(r, c), Ainv[r, c], rtol=1e-8, atol=1e-12)
    # another matrix with the same pattern, factored with the same analysis: the entries' lookup,
    # kept from the first request of the same arrays, gives this matrix's inverse
    A2 = A.copy()
    A2.data = A2.data * (1.0 + 0.5 * (np.arange(A2.nnz) % 3 == 0))
    A2 = (A2 + A2.T) * 0.5 + sp.eye(A2.shape[0]) * 5.0
    f2 = factor_spd(A2, f.symbolic)
    assert f2.symbolic is f.symbolic
    A2inv = np.linalg.inv(A2.toarray())
    np.testing.assert_allclose(f2.inverse_on_pattern(r, c), A2inv[r, c], rtol=1e-8, atol=1e-12)
    # the pattern's entries asked first, then the diagonal (the diagonal alone has a cheaper route
    # that the entries above reuse when asked second)
    np.testing.assert_allclose(f2.diag_inverse(), np.diag(A2inv), rtol=1e-9)
    H = np.block([[Ad, B], [B.T, C]])
    Hinv = np.linalg.inv(H)
    bf = BorderedFactor(A, B, C)
    assert bf.logdet() == pytest.approx(np.linalg.slogdet(H)[1], rel=1e-11)
    np.testing.assert_allclose(bf.sparse_diag_inverse(), np.diag(Hinv)[:A.shape[0]], rtol=1e-9)


def test_indefinite_crossed_block_is_reported():
    from mglm_core.linalg import factor_spd

    A, _, _ = _problem(500, (30, 20), 1, seed=3)
    A = A - sp.eye(A.shape[0]) * 50.0
    with pytest.raises(NotPositiveDefinite):
        factor_spd(A)


def test_selected_inverse_when_superlu_drops_cancelled_fill(monkeypatch):
    """Fill that cancels exactly is not stored by SuperLU; the Takahashi recursion then
    restores the symbolic pattern (explicit zeros) and still matches the dense inverse."""
    import mglm_core.linalg as la

    n = 6
    A = np.eye(n) * 4.0
    A[0, 1:] = A[1:, 0] = 2.0
    A[1:, 1:] += 1.0 - np.eye(n - 1)  # each fill entry 1 - 2 * 2 / 4 is exactly 0
    calls = []
    closure = la._chordal_closure
    monkeypatch.setattr(la, "_chordal_closure", lambda L: (calls.append(1), closure(L))[1])
    f = la.SparseLDL(sp.csc_matrix(A))
    np.testing.assert_allclose(f.diag_inverse(), np.diag(np.linalg.inv(A)), rtol=1e-12)
    assert calls  # the fallback ran
    r, c = np.nonzero(A)
    np.testing.assert_allclose(f.inverse_on_pattern(r, c), np.linalg.inv(A)[r, c], rtol=1e-12, atol=1e-15)


def test_single_threaded_blas_nests_and_restores():
    """Small dense blocks run on one BLAS thread; nested (or concurrent) uses restore the
    original setting only when the last one ends; large blocks keep the threads."""
    from threadpoolctl import threadpool_info

    from mglm_core.linalg import single_threaded_blas

    def threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = threads()
    with single_threaded_blas(100):
        assert all(t == 1 for t in threads())
        with single_threaded_blas(50):
            assert all(t == 1 for t in threads())
        assert all(t == 1 for t in threads())
    assert threads() == before
    with single_threaded_blas(10_000):
        assert threads() == before


def test_inverse_on_pattern_with_explicit_zeros_in_A():
    """Entries of A's pattern that are exactly zero (rows with zero binomial trials) are not stored
    in SuperLU's L; the selected inverse still returns them (no IndexError, no wrong value)."""
    from mglm_core.linalg import SparseLDL

    n = 7
    A = np.eye(n) * 3.0
    for i, j in [(0, 3), (1, 4), (2, 5), (3, 6), (4, 6), (0, 5)]:
        A[i, j] = A[j, i] = 0.5
    S = sp.csc_matrix(A)
    S[1, 4] = S[4, 1] = 0.0  # explicit zeros kept in the pattern
    assert S.nnz == np.count_nonzero(A) and S[1, 4] == 0.0
    f = SparseLDL(S)
    C = S.tocsr()
    r, c = np.repeat(np.arange(n), np.diff(C.indptr)), C.indices  # the whole pattern, zeros included
    Ainv = np.linalg.inv(S.toarray())
    np.testing.assert_allclose(f.inverse_on_pattern(r, c), Ainv[r, c], rtol=1e-12, atol=1e-15)


def test_newton_ascent_stops_at_the_accuracy_of_an_inexact_objective():
    """A gradient off by 0.03 towards one side of the optimum (as a quadrature's, whose nodes move
    with the point): at the optimum no step along it ascends. With the default tolerance the search ends unconverged; with
    ``stall_tol`` the point is accepted once the decrement is below it, within 0.03 of the optimum."""
    from mglm_core.newton import newton_ascent

    target = np.array([0.7, -1.2])

    def fun(u, b, hessian):
        x = np.concatenate([u, b])
        value = -0.5 * np.sum((x - target) ** 2)
        g = -(x - target) + np.where(x <= target, 0.03, -0.03)
        blocks = (sp.csc_matrix(np.eye(1)), np.zeros((1, 1)), np.eye(1)) if hessian else (None, None, None)
        return (value, g[:1], g[1:]) + blocks

    strict = newton_ascent(fun, np.zeros(1), np.zeros(1), tol=1e-9, max_iter=6, max_halvings=3)
    loose = newton_ascent(fun, np.zeros(1), np.zeros(1), tol=1e-9, max_iter=6, max_halvings=3, stall_tol=1e-2)
    assert not strict.converged
    assert loose.converged and "accuracy" in loose.message
    assert np.allclose(np.concatenate([loose.u, loose.b]), target, atol=0.031)


def test_newton_ascent_stops_at_the_objectives_rounding():
    """An objective of size 1e8 (a sum over many rows): a decrement below its rounding ends the
    search at once, instead of forty halvings that cannot see a gain (they were most of the
    integrated fit's time at n = 1e5)."""
    from mglm_core.newton import newton_ascent

    calls = []
    target = np.array([0.3, 0.8])

    def fun(u, b, hessian):
        calls.append(hessian)
        x = np.concatenate([u, b])
        # rounding of a long sum: jitter of 1e-8 on a value of 1e8
        value = 1e8 - 0.5 * np.sum((x - target) ** 2) + 1e-8 * np.sin(1e9 * x).sum()
        g = -(x - target) + 1e-5 * np.sin(1e7 * x)
        blocks = (sp.csc_matrix(np.eye(1)), np.zeros((1, 1)), np.eye(1)) if hessian else (None, None, None)
        return (value, g[:1], g[1:]) + blocks

    res = newton_ascent(fun, np.array([0.3 + 1e-5]), np.array([0.8]), tol=1e-14)
    assert res.converged and len(calls) <= 3
    assert np.allclose(np.concatenate([res.u, res.b]), target, atol=1e-4)


@pytest.mark.parametrize("pairs_max", [None, 0])
def test_sparse_schur_complement_routes_agree(monkeypatch, pairs_max):
    """A Schur complement too sparse for BLAS is assembled from the pairs of entries within rows of
    N (one bincount) or, past the pairs' memory cap, by a sparse product: both match dense algebra."""
    import mglm_core.linalg as la

    if pairs_max is not None:
        monkeypatch.setattr(la, "_SCHUR_PAIRS_MAX", pairs_max)
    A, _, _ = _problem(900, (400, 60, 9), 1, seed=11)
    f = la.factor_spd(A)
    assert isinstance(f, la.SchurDenseLDL) and not f._dense_N
    assert (f.symbolic.schur_pairs() is None) == (pairs_max == 0)
    Ad = A.toarray()
    assert f.logdet() == pytest.approx(np.linalg.slogdet(Ad)[1], rel=1e-11)
    np.testing.assert_allclose(f.diag_inverse(), np.diag(np.linalg.inv(Ad)), rtol=1e-9)


def test_dense_schur_route_with_unsorted_indices():
    """The pattern analysis reads N off A's columns in order when their indices are sorted; a
    matrix whose indices are not sorted within columns gets the same factorisation."""
    from mglm_core.linalg import SchurDenseLDL, Symbolic

    A, _, _ = _problem(1500, (50, 20), 2, seed=4)
    rng = np.random.default_rng(0)
    indices, data = A.indices.copy(), A.data.copy()
    for j in range(A.shape[1]):  # shuffle the entries within every column
        a, b = A.indptr[j], A.indptr[j + 1]
        perm = a + rng.permutation(b - a)
        indices[a:b], data[a:b] = A.indices[perm], A.data[perm]
    shuffled = sp.csc_matrix((data, indices, A.indptr.copy()), shape=A.shape)
    assert not np.array_equal(shuffled.indices, A.indices)
    sym = Symbolic(shuffled)
    assert sym.route == "schur"
    f = SchurDenseLDL(shuffled, sym)
    Ainv = np.linalg.inv(A.toarray())
    np.testing.assert_allclose(f.diag_inverse(), np.diag(Ainv), rtol=1e-9)
    assert f.logdet() == pytest.approx(np.linalg.slogdet(A.toarray())[1], rel=1e-11)
    r, c = A.nonzero()
    np.testing.assert_allclose(f.inverse_on_pattern(r, c), Ainv[r, c], rtol=1e-8, atol=1e-12)


def _quartic(scale):
    """A smooth concave objective in (u, b) with its maximum at (1, -2) and curvature 1 + 3 x^2 in
    each coordinate (so a fixed Hessian is exact only at one point)."""
    target = np.array([1.0, -2.0])

    def fun(u, b, hessian):
        d = np.concatenate([u, b]) - target
        value = -np.sum(0.5 * d**2 + 0.25 * d**4) * scale
        g = -(d + d**3) * scale
        return value, g[:1], g[1:], None, None, None

    return fun, target


@pytest.mark.parametrize("curvature", [1.0, 1.5])
def test_chord_ascent_converges_on_a_fixed_factorisation(curvature):
    """Steps on one factorisation of an approximate Hessian (the IRLS start's in fit_map) reach a
    point whose gradient is within the stopping decrement, ascending at every step."""
    from mglm_core.newton import chord_ascent

    fun, target = _quartic(1.0)
    F = BorderedFactor(sp.csc_matrix(curvature * np.eye(1)), np.zeros((1, 1)), curvature * np.eye(1))
    seen = []
    u, b, steps, done = chord_ascent(fun, F, np.array([0.0]), np.array([-1.0]), stop=1e-8,
                                     progress=lambda it, dec: seen.append(dec))
    assert done and 2 <= steps < 30
    assert np.allclose(np.concatenate([u, b]), target, atol=1e-4)
    assert all(later < earlier for earlier, later in zip(seen, seen[1:]))


def test_chord_ascent_stops_when_its_factorisation_is_too_far_off():
    """A factorisation with 50 times the true curvature: steps 50 times too short, the decrement
    falls by 2 % a step; the steps stop unfinished (fit_map then takes Newton steps from there),
    at a point no worse than the start."""
    from mglm_core.newton import chord_ascent

    fun, target = _quartic(1.0)
    F = BorderedFactor(sp.csc_matrix(50.0 * np.eye(1)), np.zeros((1, 1)), 50.0 * np.eye(1))
    u0, b0 = np.array([0.5]), np.array([-1.5])
    u, b, steps, done = chord_ascent(fun, F, u0, b0, stop=1e-8)
    assert not done and steps <= 2
    assert fun(u, b, False)[0] >= fun(u0, b0, False)[0]


def test_single_precision_schur_factor_solves_to_single_precision():
    """A dense Schur complement factored in single precision (fit_map's start): solves accurate to
    about 1e-5 here, not 1e-9; logdet and the diagonal of the inverse still come out (from the
    single-precision factor converted), close to the double-precision values."""
    from mglm_core.linalg import SchurDenseLDL, factor_spd

    A, B, C = _problem(2000, (60, 25), 2, seed=7)
    single, double = factor_spd(A, single=True), factor_spd(A)
    assert isinstance(single, SchurDenseLDL) and single.S_chol.dtype == np.float32
    Ad = A.toarray()
    b = np.random.default_rng(1).normal(size=(A.shape[0], 3))
    x = single.solve(b)
    assert x.dtype == float
    rel = np.abs(Ad @ x - b).max() / np.abs(b).max()
    assert 1e-12 < rel < 1e-4
    assert np.abs(Ad @ double.solve(b) - b).max() / np.abs(b).max() < 1e-10
    assert single.logdet() == pytest.approx(double.logdet(), rel=1e-5)
    np.testing.assert_allclose(single.diag_inverse(), double.diag_inverse(), rtol=1e-4)
    bf = BorderedFactor(A, B, C, single=True)
    xa, xb = bf.solve(b[:, 0], np.ones(2))
    H = np.block([[Ad, B], [B.T, C]])
    np.testing.assert_allclose(H @ np.concatenate([xa, xb]), np.concatenate([b[:, 0], np.ones(2)]), atol=1e-4)


def _nested_design(levels, seed, values=False):
    """Rows nested in a hierarchy: one effect per row (observation level) and then, for each level
    count in ``levels``, a factor whose levels each sit inside one level of the next; ``values``
    puts random values on the observation-level effects. Returns (Z, ident)."""
    rng = np.random.default_rng(seed)
    parent = [rng.integers(0, levels[i + 1], levels[i]) for i in range(len(levels) - 1)]
    n = 4 * levels[0]
    member = rng.integers(0, levels[0], n)
    blocks = [sp.csr_matrix((rng.normal(size=n) if values else np.ones(n), (np.arange(n), np.arange(n))))]
    for i, size in enumerate(levels):
        blocks.append(sp.csr_matrix((np.ones(n), (np.arange(n), member)), shape=(n, size)))
        if i < len(parent):
            member = parent[i][member]
    ident = np.concatenate([np.full(b.shape[1], j) for j, b in enumerate(blocks)])
    return sp.hstack(blocks).tocsr(), ident


@pytest.mark.parametrize("levels, values, depth", [((150,), False, 1), ((150, 12), False, 1), ((150, 12), True, 1),
                                                   ((400, 130, 6), False, 2)])
def test_nested_route_matches_dense(levels, values, depth):
    """Observation-level effects beside nested groups: after the observations, the groups' Schur
    complement has a diagonal block (no two broods meet), which is eliminated in turn (again when
    that leaves a large block), down to a small dense one, or is diagonal (one factor beside the
    observations: the classic overdispersed Poisson model); logdet, solves, the diagonal of the
    inverse and the entries on A's pattern match dense algebra, with the analysis reused by a
    second matrix of the same pattern and inside the bordered factorisation."""
    from mglm_core.linalg import NestedSchurLDL, Symbolic, factor_spd

    Z, ident = _nested_design(levels, seed=len(levels), values=values)
    rng = np.random.default_rng(4)
    n, q = Z.shape
    w = rng.uniform(0.1, 1.0, n)
    A = (Z.T @ sp.diags(w) @ Z + sp.diags(rng.uniform(0.5, 2, q))).tocsc()
    A.sum_duplicates()  # (canonical, as the fits' blocks are)
    sym = Symbolic(A, groups=ident)
    inner, d = sym, 0
    while inner.route == "nested":
        inner, d = inner.inner, d + 1
    assert d == depth and inner.route in ("schur", "diagonal") and sym.dense_size <= levels[-1]
    f = factor_spd(A, sym)
    assert isinstance(f, NestedSchurLDL) and f.P.size == n  # the observations eliminated first
    Ad = A.toarray()
    Ainv = np.linalg.inv(Ad)
    assert f.logdet() == pytest.approx(np.linalg.slogdet(Ad)[1], rel=1e-11)
    np.testing.assert_allclose(f.diag_inverse(), np.diag(Ainv), rtol=1e-9)
    b = rng.normal(size=(q, 12))
    for cols in (b, b[:, :3], b[:, 0]):
        np.testing.assert_allclose(Ad @ f.solve(cols), cols, atol=1e-9)
    r, c = A.nonzero()
    np.testing.assert_allclose(f.inverse_on_pattern(r, c, keep_plan=True), Ainv[r, c], rtol=1e-8, atol=1e-12)
    A2 = A.copy()
    A2.data = A2.data * (1.0 + 0.5 * (np.arange(A2.nnz) % 3 == 0))
    A2 = ((A2 + A2.T) * 0.5 + sp.eye(q) * 5.0).tocsc()
    f2 = factor_spd(A2, f.symbolic)
    A2inv = np.linalg.inv(A2.toarray())
    np.testing.assert_allclose(f2.inverse_on_pattern(r, c, keep_plan=True), A2inv[r, c], rtol=1e-8, atol=1e-12)
    X = rng.normal(size=(n, 2))
    B, C = np.asarray(Z.T @ (w[:, None] * X)), X.T @ (w[:, None] * X) + np.eye(2)
    H = np.block([[Ad, B], [B.T, C]])
    bf = BorderedFactor(A, B, C, sym)
    assert bf.logdet() == pytest.approx(np.linalg.slogdet(H)[1], rel=1e-11)
    np.testing.assert_allclose(bf.sparse_diag_inverse(), np.diag(np.linalg.inv(H))[:q], rtol=1e-9)


def test_nested_route_only_where_a_block_of_the_schur_complement_is_diagonal():
    """Two crossed factors: the smaller one's levels meet through the rows of the larger one's, so
    its Schur complement is full: one dense elimination. Beside observation-level effects the
    same factors are eliminated in turn (no two levels of one factor meet in an observation),
    leaving the smaller factor dense; independent random slopes leave a diagonal one. A small Schur
    complement stays dense."""
    from mglm_core.linalg import NESTED_FROM, Symbolic

    rng = np.random.default_rng(9)
    n = 900
    a, b = rng.integers(0, 150, n), rng.integers(0, 90, n)
    crossed = [sp.csr_matrix((np.ones(n), (np.arange(n), a))), sp.csr_matrix((np.ones(n), (np.arange(n), b)))]
    Z = sp.hstack(crossed).tocsr()
    sym = Symbolic((Z.T @ Z + sp.eye(240)).tocsc(), groups=np.r_[np.zeros(150, int), np.ones(90, int)])
    assert sym.route == "schur" and sym.dense_size == 90
    Z_obs = sp.hstack([sp.identity(n, format="csr")] + crossed).tocsr()
    ident = np.r_[np.zeros(n, int), np.ones(150, int), np.full(90, 2)]
    sym_obs = Symbolic((Z_obs.T @ Z_obs + sp.eye(Z_obs.shape[1])).tocsc(), groups=ident)
    assert sym_obs.route == "nested" and sym_obs.inner.route == "schur" and sym_obs.dense_size == 90
    # independent random slopes beside intercepts: an intercept meets only its own slope, so the
    # slopes' Schur complement is diagonal
    g, x = rng.integers(0, 200, n), rng.normal(size=n)
    Zs = sp.hstack([sp.csr_matrix((np.ones(n), (np.arange(n), g)), shape=(n, 200)),
                    sp.csr_matrix((x, (np.arange(n), g)), shape=(n, 200))]).tocsr()
    sym_s = Symbolic((Zs.T @ Zs + sp.eye(400)).tocsc(), groups=np.r_[np.zeros(200, int), np.ones(200, int)])
    assert sym_s.route == "nested" and sym_s.inner.route == "diagonal" and sym_s.dense_size == 0
    small, ident_small = _nested_design((NESTED_FROM // 2, 5), seed=2)
    assert Symbolic((small.T @ small + sp.eye(small.shape[1])).tocsc(), groups=ident_small).route == "schur"


@pytest.mark.parametrize("seed", [1, 2])
def test_routes_on_random_designs_match_dense(seed, monkeypatch):
    """Random mixes of observation-level effects, crossed and nested factors and random slopes
    (some rows without a component), analysed with the variance components as groups and the nested
    route taken from 20 columns: whichever route is chosen, logdet, solves, the diagonal of the
    inverse and the entries on A's pattern match dense algebra."""
    import mglm_core.linalg as linalg
    from mglm_core.linalg import Symbolic, factor_spd

    monkeypatch.setattr(linalg, "NESTED_FROM", 20)
    rng = np.random.default_rng(seed)
    routes = set()
    for _ in range(25):
        n = int(rng.integers(100, 500))
        blocks, ident, prev = [], [], None
        for c in range(int(rng.integers(1, 5))):
            kind = rng.choice(["obs", "factor", "nested", "slope"])
            if kind == "obs":
                lev, size = np.arange(n), n
            elif kind == "nested" and prev is not None:
                size = max(2, prev[1] // int(rng.integers(2, 6)))
                lev = rng.integers(0, size, prev[1])[prev[0]]
            else:
                size = int(rng.integers(2, 200))
                lev = rng.integers(0, size, n)
            vals = (rng.normal(size=n) if kind == "slope" else np.ones(n)) * (rng.random(n) < 0.9)
            block = sp.csr_matrix((vals, (np.arange(n), lev)), shape=(n, size))
            block.eliminate_zeros()
            blocks.append(block)
            ident.append(np.full(size, c))
            prev = (lev, size)
        Z, ident = sp.hstack(blocks).tocsr(), np.concatenate(ident)
        used = np.asarray((Z != 0).sum(axis=0)).ravel() > 0
        Z, ident = Z[:, used], ident[used]
        q = Z.shape[1]
        A = (Z.T @ sp.diags(rng.uniform(0.05, 2.0, n)) @ Z + sp.diags(rng.uniform(0.1, 3.0, q))).tocsc()
        A.sum_duplicates()
        sym = Symbolic(A, groups=ident)
        routes.add(sym.route)
        f = factor_spd(A, sym)
        Ad = A.toarray()
        Ainv = np.linalg.inv(Ad)
        assert f.logdet() == pytest.approx(np.linalg.slogdet(Ad)[1], rel=1e-10)
        b = rng.normal(size=(q, 3))
        np.testing.assert_allclose(Ad @ f.solve(b), b, atol=1e-8)
        np.testing.assert_allclose(f.diag_inverse(), np.diag(Ainv), rtol=1e-8)
        r, c = A.nonzero()
        np.testing.assert_allclose(f.inverse_on_pattern(r, c), Ainv[r, c], rtol=1e-7, atol=1e-12 * np.abs(Ainv).max())
    assert "nested" in routes


def _block_diagonal_spd(rng, sizes):
    """A sparse SPD matrix of dense blocks of the given sizes, its columns shuffled, with the blocks."""
    blocks = []
    for s in sizes:
        M = rng.normal(size=(s, s))
        blocks.append(M @ M.T + s * np.eye(s))
    A = sp.block_diag(blocks, format="csc")
    perm = rng.permutation(A.shape[0])
    starts = np.cumsum([0] + list(sizes))
    where = np.argsort(perm)  # (each original column's place after the shuffle)
    return A[perm][:, perm].tocsc(), blocks, [where[starts[t]:starts[t + 1]] for t in range(len(sizes))]


def test_block_diagonal_route_matches_dense_algebra_block_by_block():
    """A matrix too large for the dense Schur route whose graph falls apart into small dense blocks (observation-level
    effects of groups integrated out) is factored block by block (it was left to conjugate gradients, which have
    no log-determinant, and then to SuperLU, 30 times slower): log-determinant, solves, the diagonal of the
    inverse and its entries within blocks as numpy's on each block."""
    from mglm_core.linalg import BlockDenseLDL, factor_spd

    rng = np.random.default_rng(3)
    sizes = [40] * 140 + [25] * 10 + [33]  # 5,883 columns, three sizes of block
    A, blocks, cols = _block_diagonal_spd(rng, sizes)
    f = factor_spd(A)
    assert isinstance(f, BlockDenseLDL) and f.symbolic.route == "blocks"
    np.testing.assert_allclose(f.logdet(), sum(np.linalg.slogdet(B)[1] for B in blocks), rtol=1e-12)
    b = rng.normal(size=(A.shape[0], 2))
    x = f.solve(b)
    np.testing.assert_allclose(A @ x, b, atol=1e-10)
    np.testing.assert_allclose(f.solve(b[:, 0]), x[:, 0])
    diag = f.diag_inverse()
    for t in (0, 139, 140, 150):
        inv = np.linalg.inv(blocks[t])
        np.testing.assert_allclose(diag[cols[t]], np.diag(inv), rtol=1e-12)
        a, c = np.meshgrid(cols[t], cols[t], indexing="ij")
        np.testing.assert_allclose(f.inverse_on_pattern(a.ravel(), c.ravel()), inv.ravel(), rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="off the sparsity pattern"):
        f.inverse_on_pattern(cols[0][:1], cols[1][:1])
    bad = A.tolil()
    bad[cols[4][0], cols[4][0]] = -1.0
    with pytest.raises(NotPositiveDefinite):
        factor_spd(bad.tocsc(), f.symbolic)
