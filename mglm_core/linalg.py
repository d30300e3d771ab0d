r"""Sparse symmetric positive definite systems with a small dense border.

Every fit in mglm_core needs the same linear algebra on a matrix of the form

.. math::

    H = \begin{pmatrix} A & B \\ B^\top & C \end{pmatrix},

where :math:`A` (q x q) is the sparse block of the random effects
(:math:`Z^\top W Z` plus a diagonal prior precision), :math:`B` (q x m) couples
them to the m = p + k fixed effects and variance parameters, and :math:`C`
(m x m) is small and dense. With the Schur complement
:math:`S = C - B^\top A^{-1} B`:

* :math:`\log\det H = \log\det A + \log\det S`;
* :math:`H^{-1}` has border block :math:`S^{-1}`, cross block
  :math:`-A^{-1}BS^{-1}`, and random-effect diagonal
  :math:`\mathrm{diag}(A^{-1}) + \mathrm{rowsum}\big((A^{-1}B S^{-1}) \circ (A^{-1}B)\big)`.

:math:`A` is diagonal for a single random-effect term (each row of Z has one
nonzero per term), and the diagonal path costs O(q m). Crossed factors make A
a block matrix whose larger factor's block is diagonal while elimination fills
the rest in completely; then (:class:`SchurDenseLDL`) the diagonal part
:math:`P` (a maximal independent set of A's graph) is eliminated exactly and
the dense Schur complement :math:`S_D = A_{DD} - A_{DP} A_{PP}^{-1} A_{PD}` of
the remaining columns is factored by LAPACK. Where :math:`S_D` itself has a diagonal block
(nested factors: after the observation-level effects no two broods meet; crossed factors
beside observation-level effects; one factor beside them, or independent random slopes, where
it is diagonal), it is kept sparse and eliminated in turn
(:class:`NestedSchurLDL`, level by level down to a small dense block or a diagonal one).
Otherwise A is factored
by SuperLU with a fill-reducing symmetric ordering and no pivoting (an
:math:`LDL^\top` factorisation), and :math:`\mathrm{diag}(A^{-1})` comes from
the Takahashi recursion on the factor's sparsity pattern: no dense q x q
matrix is ever formed. Crossed factors whose dense Schur complement would exceed
:data:`DENSE_TAIL_MAX` columns (two factors of 50,000 levels) cannot be factored
at all; their block is solved by conjugate gradients
(:class:`~mglm_core.iterative.IterativeSPD`: solves only, an approximate
diagonal of the inverse, no log-determinant).
"""
from __future__ import annotations

import copy
import threading
from contextlib import contextmanager

import numpy as np
from scipy.linalg import lapack
from scipy.linalg.blas import dsyrk as syrk, dtrmm as trmm, ssyrk
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.sparse.csgraph import connected_components

from .iterative import IterativeSPD

__all__ = ["NotPositiveDefinite", "SparseLDL", "SchurDenseLDL", "NestedSchurLDL", "Symbolic", "factor_spd",
           "BorderedFactor", "single_threaded_blas"]

#: Dense blocks up to this size are faster on one BLAS thread (thread wake-ups cost more than they save).
BLAS_THREADS_FROM = 2000


class _BlasLimit:
    """Process-wide "one BLAS thread" while any fit with small dense blocks runs.

    Reference counted and locked, so that concurrent fits (dashboard sessions run fits in
    worker threads) restore the original setting only when the last of them ends. The BLAS
    libraries are looked up once (threadpoolctl's scan of the loaded libraries costs about 2 ms,
    as much as a small fit), on first use, when numpy's and scipy's are loaded.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._ctx = None
        self._controller = None

    def _limit(self):
        if self._controller is None:
            from threadpoolctl import ThreadpoolController

            self._controller = ThreadpoolController()
        return self._controller.limit(limits=1, user_api="blas")

    def __enter__(self):
        with self._lock:
            if self._depth == 0:
                try:
                    self._ctx = self._limit()
                except Exception:  # pragma: no cover - no controllable BLAS
                    self._ctx = None
            self._depth += 1

    def __exit__(self, *exc):
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._ctx is not None:
                self._ctx.restore_original_limits()
                self._ctx = None


_BLAS_LIMIT = _BlasLimit()


@contextmanager
def single_threaded_blas(dense_size: int):
    """Run the block on one BLAS thread if the largest dense block has fewer than
    :data:`BLAS_THREADS_FROM` rows (on a 2-core machine a 500 x 500 Cholesky is 4x faster so)."""
    if dense_size >= BLAS_THREADS_FROM:
        yield
        return
    with _BLAS_LIMIT:
        yield


class NotPositiveDefinite(ArithmeticError):
    """Raised when a matrix expected to be positive definite is not."""


class _NotChordal(Exception):
    """The stored pattern of L lacks a fill entry the Takahashi recursion needs."""


def _chordal_closure(L):
    r"""L (CSC, unit diagonal stored, sorted) with the pattern of the symbolic factor.

    Column j's entries below the diagonal, except the first (its parent p in the
    elimination tree), belong to column p as well; visiting the columns in order and
    merging them into the parent closes the pattern. Added entries are explicit zeros.
    """
    n = L.shape[0]
    rows, vals = [], []
    for j in range(n):
        a, b = L.indptr[j], L.indptr[j + 1]
        rows.append(L.indices[a:b])
        vals.append(L.data[a:b])
    for j in range(n):
        r = rows[j]
        below = r[r > j]
        if below.size > 1:
            p = below[0]
            merged = np.union1d(rows[p], below[1:])
            if merged.size != rows[p].size:
                v = np.zeros(merged.size)
                v[np.searchsorted(merged, rows[p])] = vals[p]
                rows[p], vals[p] = merged, v
    indptr = np.concatenate([[0], np.cumsum([r.size for r in rows])])
    return sp.csc_matrix((np.concatenate(vals), np.concatenate(rows), indptr), shape=L.shape)


class SparseLDL:
    """Factorisation :math:`P A P^\top = L D L^\top` of a sparse SPD matrix."""

    def __init__(self, A, diagonal=None):
        A = A if sp.isspmatrix_csc(A) else sp.csc_matrix(A)
        self.n = A.shape[0]
        diag = A.diagonal()
        if diagonal is None:
            diagonal = A.nnz == np.count_nonzero(diag) or (A - sp.diags(diag)).count_nonzero() == 0
        self.is_diagonal = diagonal
        if self.is_diagonal:
            if np.any(~(diag > 0)):
                raise NotPositiveDefinite("diagonal block has a non-positive entry")
            self.d = diag
            return
        try:
            lu = spla.splu(
                A,
                permc_spec="MMD_AT_PLUS_A",
                diag_pivot_thresh=0.0,
                options={"SymmetricMode": True},
            )
        except RuntimeError as exc:  # exactly singular
            raise NotPositiveDefinite(str(exc)) from exc
        if not np.array_equal(lu.perm_r, lu.perm_c):
            raise NotPositiveDefinite("symmetric factorisation needed pivoting")
        d = lu.U.diagonal()
        if np.any(~(d > 0)):
            raise NotPositiveDefinite("sparse block is not positive definite")
        self._lu = lu
        self.d = d
        self._perm = lu.perm_c

    def logdet(self) -> float:
        return float(np.sum(np.log(self.d)))

    def solve(self, b):
        if self.is_diagonal:
            return b / (self.d if b.ndim == 1 else self.d[:, None])
        return self._lu.solve(np.asarray(b, dtype=float))

    def diag_inverse(self) -> np.ndarray:
        r"""Diagonal of :math:`A^{-1}` by the Takahashi recursion.

        Columns are processed from last to first; the entries of
        :math:`\Sigma = A^{-1}` needed are those on the pattern of L. When the
        trailing columns of L are dense (crossed factors fill in that way), the
        trailing block of :math:`\Sigma` is computed at once by dense
        triangular solves; it has the size of that already dense part of L.
        """
        if self.is_diagonal:
            return 1.0 / self.d
        L = sp.csc_matrix(self._lu.L)
        L.sort_indices()
        try:
            return self._takahashi(L)
        except _NotChordal:
            # SuperLU leaves out fill entries that are numerically zero; restore them as explicit
            # zeros (the symbolic factor's pattern) and run the recursion again
            return self._takahashi(_chordal_closure(L))

    def _takahashi(self, L):
        n, d = self.n, self.d
        indptr, indices, data = L.indptr, L.indices, L.data
        below = np.diff(indptr) - 1  # entries below the diagonal (the unit diagonal is stored)
        dense_tail = below == (n - 1 - np.arange(n))
        j0 = n
        while j0 > 0 and dense_tail[j0 - 1]:
            j0 -= 1
        T = None
        if n - j0 >= 2:
            Lt = L[j0:, j0:].toarray()
            Linv = np.linalg.inv(Lt)  # unit lower triangular; scipy solve_triangular has a large fixed cost
            T = (Linv.T / d[j0:]) @ Linv
        rows = [None] * n
        vals = [None] * n
        sig_diag = np.empty(n)
        if T is not None:
            sig_diag[j0:] = np.diag(T)
        start = j0 - 1 if T is not None else n - 1
        for j in range(start, -1, -1):
            a, b = indptr[j], indptr[j + 1]
            idx = indices[a:b]
            keep = idx > j
            I, l = idx[keep], data[a:b][keep]
            if I.size == 0:
                sig_diag[j] = 1.0 / d[j]
                rows[j], vals[j] = I, np.empty(0)
                continue
            M = np.empty((I.size, I.size))
            n_sparse = int(np.searchsorted(I, j0)) if T is not None else I.size
            if n_sparse < I.size:
                Id = I[n_sparse:] - j0
                M[n_sparse:, n_sparse:] = T[np.ix_(Id, Id)]
            for a_ in range(n_sparse):
                k = I[a_]
                M[a_, a_] = sig_diag[k]
                rest = I[a_ + 1:]
                if rest.size:
                    pos = np.minimum(np.searchsorted(rows[k], rest), max(rows[k].size - 1, 0))
                    if rows[k].size == 0 or not np.array_equal(rows[k][pos], rest):
                        raise _NotChordal()
                    col = vals[k][pos]
                    M[a_ + 1:, a_] = col
                    M[a_, a_ + 1:] = col
            s_ = -M @ l
            rows[j], vals[j] = I, s_
            sig_diag[j] = 1.0 / d[j] - l @ s_
        self._selected = (rows, vals, T, j0, sig_diag)
        return sig_diag[self._perm]

    def inverse_on_pattern(self, a, b, keep_plan=False):
        r"""Entries :math:`(A^{-1})_{a_t b_t}` for index pairs on the sparsity pattern of A.

        Uses the Takahashi values (every pair on A's pattern lies on the filled
        pattern of L), so the cost is that of :meth:`diag_inverse`. ``keep_plan`` is accepted for
        the interface of :meth:`SchurDenseLDL.inverse_on_pattern`; nothing is kept here.
        """
        a, b = np.asarray(a), np.asarray(b)
        if self.is_diagonal:
            if np.any(a != b):
                raise ValueError("off-diagonal entries requested from a diagonal matrix")
            return 1.0 / self.d[a]
        if not hasattr(self, "_selected"):
            self.diag_inverse()
        iperm = self._perm  # original index i sits at permuted position perm[i]
        pa, pb = iperm[a], iperm[b]
        lo, hi = np.minimum(pa, pb), np.maximum(pa, pb)
        try:
            return self._lookup(lo, hi)
        except _NotChordal:
            # an entry of A's pattern that SuperLU did not store in L (an exact zero of A, or fill
            # that cancelled): add the requested entries to L's pattern, close it, and recompute
            L = sp.coo_matrix(self._lu.L)
            L = sp.csc_matrix((np.concatenate([L.data, np.zeros(lo.size)]),
                               (np.concatenate([L.row, hi]), np.concatenate([L.col, lo]))), shape=L.shape)
            L.sum_duplicates()  # keeps the added explicit zeros
            L.sort_indices()
            self._takahashi(_chordal_closure(L))
            return self._lookup(lo, hi)

    def _lookup(self, lo, hi):
        """Entries (lo, hi) (permuted, lo <= hi) of the selected inverse; _NotChordal if one is not stored."""
        rows, vals, T, j0, sig_diag = self._selected
        out = np.empty(lo.size)
        same = lo == hi
        out[same] = sig_diag[lo[same]]
        tail = ~same & (lo >= j0)
        if tail.any():
            out[tail] = T[lo[tail] - j0, hi[tail] - j0]
        rest = np.flatnonzero(~same & ~tail)
        if rest.size:
            keys, flat_vals = self._flat_selected()
            want = lo[rest].astype(np.int64) * self.n + hi[rest]
            pos = np.minimum(np.searchsorted(keys, want), max(keys.size - 1, 0))
            if keys.size == 0 or not np.array_equal(keys[pos], want):
                raise _NotChordal()
            out[rest] = flat_vals[pos]
        return out

    def _flat_selected(self):
        """The stored entries of the sparse part of the selected inverse as sorted keys
        ``column * n + row`` and their values (built once per Takahashi run)."""
        sel = self._selected
        cached = getattr(self, "_flat", None)
        if cached is None or cached[0] is not sel:
            rows, vals = sel[0], sel[1]
            cols = [j for j in range(self.n) if rows[j] is not None]
            lens = np.array([rows[j].size for j in cols], dtype=np.int64)
            col_of = np.repeat(np.array(cols, dtype=np.int64), lens)
            r = np.concatenate([rows[j] for j in cols]).astype(np.int64) if cols else np.zeros(0, np.int64)
            v = np.concatenate([vals[j] for j in cols]) if cols else np.zeros(0)
            self._flat = cached = (sel, col_of * self.n + r, v)  # columns ascending, rows sorted within
        return cached[1], cached[2]


DENSE_TAIL_MAX = 5000  # largest dense Schur complement (columns) factored by LAPACK
DENSE_SMALL = 1000  # up to this size the dense route is taken even for a sparse Schur complement
_SCHUR_PAIRS_MAX = 4_000_000  # pairs of entries within rows of N for the bincount route of S
DENSE_ALWAYS = 300  # up to this size the dense route is taken even for a diagonal Schur complement
#: A Schur complement of at least this many columns with a diagonal block (nested factors) is eliminated
#: level by level (:class:`NestedSchurLDL`); below it a dense factorisation costs less than the
#: extra level's assembly (65 columns: fit_laplace 53 -> 74 ms nested; 181: 162 -> 120 ms).
NESTED_FROM = 120
#: The nested route keeps the pairs of entries within rows of N (about 20 bytes each): at most this
#: many (observations beside two nested levels: n = 4e6 rows).
_NESTED_PAIRS_MAX = 16_000_000
#: A Schur complement beyond DENSE_TAIL_MAX columns with at least this many off-diagonal entries per
#: column (on average) is not factored: its blocks are solved by conjugate gradients (:mod:`.iterative`).
#: Such a complement of crossed factors is a random graph, which has no small separators: its sparse
#: factor fills in nearly completely (SuperLU did not finish in 300 s on 10,000 x 10,000 levels).
ITERATIVE_MIN_DEGREE = 2


def _independent_set(A):
    """A maximal independent set of the graph of A (columns with no off-diagonal entry between them).

    Deterministic and vectorised: in rounds, an undecided column joins the set when its key
    (number of neighbours, then index) is below every undecided neighbour's, and its neighbours
    are excluded. For crossed factors the levels of the factor with more levels (fewer
    neighbours each) are taken in the first round.
    """
    q = A.shape[0]
    coo = A.tocoo()
    off = coo.row != coo.col
    G = sp.csc_matrix((np.ones(int(off.sum()), dtype=np.int8), (coo.row[off], coo.col[off])), shape=A.shape)
    G.sum_duplicates()
    indptr, indices = G.indptr, G.indices
    deg = np.diff(indptr)
    key = deg.astype(np.int64) * q + np.arange(q)
    state = np.zeros(q, dtype=np.int8)  # 0 undecided, 1 in the set, 2 excluded
    has_nb = deg > 0
    starts = indptr[:-1][has_nb]
    big = np.iinfo(np.int64).max
    while True:
        und = state == 0
        if not und.any():
            break
        nk = np.where(state[indices] == 0, key[indices], big)
        min_nb = np.full(q, big)
        if starts.size:
            min_nb[has_nb] = np.minimum.reduceat(nk, starts)
        sel = und & (key < min_nb)
        state[sel] = 1
        nb = indices[np.repeat(sel, deg)]
        state[nb[state[nb] == 0]] = 2
    return np.flatnonzero(state == 1)


def class_adjacency(row, col, groups):
    """``(adj, sizes)``: ``adj[a, b]`` when an off-diagonal entry (row, col) of a symmetric pattern
    joins classes a and b (``groups`` per column, e.g. the variance component of each random
    effect); ``adj[c, c]`` is False exactly when no two columns of class c meet, which on the Gram
    pattern of Z means at most one nonzero of class c per row. ``sizes``: columns per class."""
    groups = np.asarray(groups)
    k = int(groups.max()) + 1 if groups.size else 0
    off = row != col
    pair = groups[row[off]].astype(np.int64) * k
    pair += groups[col[off]]
    adj = (np.bincount(pair, minlength=k * k) > 0).reshape(k, k)
    return adj, np.bincount(groups, minlength=k)


def _block_labels(A):
    """The diagonal block of each column of the symmetric matrix ``A`` (under a symmetric permutation): the
    connected components of its graph."""
    return connected_components(A, directed=False)[1]


#: A matrix too large for the dense Schur route whose graph falls apart into blocks of at most this many columns
#: (observation-level effects whose groups were integrated out: a dense block per group) is factored block by
#: block (:class:`BlockDenseLDL`).
BLOCK_MAX = 1000
#: ... and whose blocks hold at most this many entries in all (160 MB; the factor and the inverse as many again).
BLOCK_ENTRIES_MAX = 2e7


class _BlockPlan:
    """Where the columns of a block-diagonal pattern sit: blocks of equal size stacked as ``(blocks, s, s)``
    arrays (:class:`BlockDenseLDL`). ``sizes``: the distinct sizes; ``cols[t]``: the columns of the blocks of
    size ``sizes[t]`` (blocks x s); for every column its size class, stacked block and place in its block."""

    def __init__(self, labels):
        n = labels.size
        size_of = np.bincount(labels)
        order = np.argsort(labels, kind="stable")
        self.sizes = np.unique(size_of[labels])
        self.cols = []
        self.klass, self.block, self.within = (np.empty(n, dtype=np.int64) for _ in range(3))
        for t, s in enumerate(self.sizes):
            members = order[size_of[labels[order]] == s].reshape(-1, s)  # (columns of a block are adjacent)
            self.cols.append(members)
            self.klass[members] = t
            self.block[members] = np.arange(members.shape[0])[:, None]
            self.within[members] = np.arange(s)[None, :]


class BlockDenseLDL:
    r"""Factorisation of a sparse SPD matrix whose graph falls apart into small blocks: each block dense, by
    batched Cholesky factorisations of the blocks of one size; :math:`\log\det A = \sum_b \log\det A_b`, and the
    inverse is block-diagonal, :math:`(A^{-1})_b = A_b^{-1}` (formed on first use: solves and the selected
    inverse read it). SuperLU with the Takahashi recursion took 1.2 s a factorisation on 100 dense blocks of 60."""

    is_diagonal = False

    def __init__(self, A, symbolic):
        self.symbolic, self.n = symbolic, A.shape[0]
        plan = symbolic.blocks
        coo = A.tocoo()
        stacks = [np.zeros((c.shape[0], s, s)) for s, c in zip(plan.sizes, plan.cols)]
        for t, stack in enumerate(stacks):
            sel = plan.klass[coo.row] == t
            r, c = coo.row[sel], coo.col[sel]
            stack[plan.block[r], plan.within[r], plan.within[c]] = coo.data[sel]
        try:
            self._chol = [np.linalg.cholesky(stack) for stack in stacks]
        except np.linalg.LinAlgError as exc:
            raise NotPositiveDefinite("sparse block is not positive definite") from exc
        self._inv = None

    def logdet(self) -> float:
        return float(sum(2.0 * np.sum(np.log(np.diagonal(L, axis1=1, axis2=2))) for L in self._chol))

    def _inverses(self):
        if self._inv is None:  # (A_b^-1 = L_b^-T L_b^-1 from the factors)
            roots = [np.linalg.inv(L) for L in self._chol]
            self._inv = [np.swapaxes(R, 1, 2) @ R for R in roots]
        return self._inv

    def held_bytes(self) -> int:
        out = sum(a.nbytes for a in self._chol)
        return out + (sum(a.nbytes for a in self._inv) if self._inv is not None else 0)

    def release(self):
        self._inv = None

    def solve(self, b):
        b = np.asarray(b, dtype=float)
        vec = b.ndim == 1
        b2 = b[:, None] if vec else b
        out = np.empty_like(b2)
        for cols, inv in zip(self.symbolic.blocks.cols, self._inverses()):
            out[cols] = inv @ b2[cols]
        return out[:, 0] if vec else out

    def diag_inverse(self) -> np.ndarray:
        out = np.empty(self.n)
        for cols, inv in zip(self.symbolic.blocks.cols, self._inverses()):
            out[cols] = np.diagonal(inv, axis1=1, axis2=2)
        return out

    def inverse_on_pattern(self, a, b, keep_plan=False):
        """Entries :math:`(A^{-1})_{a_t b_t}` for index pairs within blocks (``keep_plan``: the interface's)."""
        plan = self.symbolic.blocks
        a, b = np.asarray(a), np.asarray(b)
        if np.any(plan.klass[a] != plan.klass[b]) or np.any(plan.block[a] != plan.block[b]):
            raise ValueError("entries requested off the sparsity pattern")
        out = np.empty(a.size)
        for t, inv in enumerate(self._inverses()):
            sel = plan.klass[a] == t
            out[sel] = inv[plan.block[a[sel]], plan.within[a[sel]], plan.within[b[sel]]]
        return out


def _independent_classes(row, col, groups):
    """Columns of the largest union of whole classes (``groups``, e.g. variance components)
    with no off-diagonal entry among them, chosen greedily by class size.

    For crossed factors this is the factor with the most levels (and any further factors
    that do not share rows with it), which the structural :func:`_independent_set` cannot
    always find when the factors' levels have similar numbers of neighbours.
    """
    groups = np.asarray(groups)
    adj, sizes = class_adjacency(row, col, groups)
    chosen = []
    for c in np.argsort(-sizes, kind="stable"):
        if not adj[c, c] and not adj[c, chosen].any():
            chosen.append(c)
    return np.flatnonzero(np.isin(groups, chosen))


def pairs_within_rows(indptr):
    """``(first, second, row)``: the positions, among a CSR matrix's entries, of every pair of entries
    in the same row (both orders, an entry with itself included), and the row of ``first``."""
    lens = np.diff(indptr)
    row = np.repeat(np.arange(lens.size), lens)  # the row of each entry
    n_partner = lens[row]
    first = np.repeat(np.arange(int(indptr[-1])), n_partner)
    offs = np.arange(first.size) - np.repeat(np.cumsum(n_partner) - n_partner, n_partner)
    second = np.repeat(indptr[row], n_partner) + offs
    return first, second, row[first]


def _potrf(S, overwrite=False, clean=True, what="sparse block"):
    """Lower Cholesky factor of a dense SPD matrix by LAPACK's potrf, called directly (scipy's
    ``cho_factor`` costs more than the factorisation itself for the small blocks of the fits).
    ``clean=False`` leaves the upper triangle as it was (nothing here reads it). A float32 matrix
    is factored in single precision."""
    potrf = lapack.spotrf if S.dtype == np.float32 else lapack.dpotrf
    L, info = potrf(S, lower=1, clean=int(clean), overwrite_a=int(overwrite))
    d = np.diag(L)
    if info != 0 or not np.all(np.isfinite(d) & (d > 0)):
        raise NotPositiveDefinite(f"{what} is not positive definite")
    return L


def _potrs(L, b):
    r"""Solve :math:`L L^\top x = b` for the factor of :func:`_potrf` (b a vector or columns; a
    single-precision factor solves in single precision and returns doubles)."""
    if L.dtype == np.float32:
        x, info = lapack.spotrs(L, np.asarray(b, dtype=np.float32), lower=1)
        x = x.astype(float)
    else:
        x, info = lapack.dpotrs(L, b, lower=1)
    if info != 0:  # pragma: no cover - only for malformed arguments
        raise ValueError(f"potrs failed (info = {info})")
    return x


def _potri(L):
    r"""The full symmetric inverse :math:`(L L^\top)^{-1}` from the factor of :func:`_potrf`."""
    inv, info = lapack.dpotri(L, lower=1)  # lower triangle of the inverse; the rest is L's
    if info != 0:
        raise NotPositiveDefinite("matrix is not positive definite")
    low = np.tril(inv)
    out = low + low.T
    out.flat[:: out.shape[0] + 1] = np.diagonal(low)
    return out


#: Up to this many entries (8 MB), a dense N is densified again for the selected inverse (BLAS
#: instead of sparse products; not kept between, for memory).
_KEEP_DENSE_N = 1_000_000


def _scaled_dense(N, root_d):
    r""":math:`N_s = \mathrm{diag}(d)^{-1/2} N` as a dense array (``root_d`` :math:`= \sqrt d`)."""
    out = N.toarray()
    out /= root_d[:, None]
    return out


class SchurDenseLDL:
    r"""Factorisation of a sparse SPD matrix whose block on ``P`` is diagonal and whose Schur
    complement on the rest ``D`` is dense.

    With :math:`A = \begin{pmatrix} \mathrm{diag}(d) & N \\ N^\top & A_{DD}\end{pmatrix}` and
    :math:`S = A_{DD} - N^\top \mathrm{diag}(d)^{-1} N = L L^\top`:
    :math:`\log\det A = \sum \log d + \log\det S`, and

    .. math::

        (A^{-1})_{DD} = S^{-1},\quad
        (A^{-1})_{PD} = -\mathrm{diag}(d)^{-1} N S^{-1},\quad
        \mathrm{diag}(A^{-1})_{P} = 1/d_i + n_i^\top S^{-1} n_i / d_i^2 .

    The selected inverse needs :math:`N S^{-1}` only on the pattern of N; it is formed in
    row blocks (memory bounded by about 4e6 doubles per block).

    ``single``: a dense S formed and factored in single precision (about half the time), for a
    matrix whose factorisation only gives steps towards a point (an approximate Hessian, a start):
    solves are then accurate to about :math:`10^{-7}\,\mathrm{cond}(S)`.
    """

    is_diagonal = False

    def __init__(self, A, symbolic, single=False):
        sym = symbolic
        d, N = self._eliminate(A, sym)
        P, D = sym.P, sym.D
        row_nnz = np.diff(N.indptr).astype(np.int64)
        self._dense_N = False  # (N dense and small enough to be densified again for the inverse)
        pairs = None
        if N.nnz and float(row_nnz @ row_nnz) * 20.0 >= float(P.size) * D.size**2:
            # N is dense enough for BLAS: S = A_DD - Ns' Ns with Ns = diag(d)^(-1/2) N
            root_d = np.sqrt(d)
            Ns = _scaled_dense(N, root_d)
            if single:
                Ns = Ns.astype(np.float32)
            elif Ns.size <= _KEEP_DENSE_N:  # the inverse densifies it again (not kept: memory)
                self._dense_N, self._root_d = True, root_d
            # lower triangle of -Ns' Ns (all potrf reads), Fortran-ordered: Ns.T is passed
            # as the Fortran view it is, so neither syrk nor the in-place Cholesky copies
            S = (ssyrk if single else syrk)(-1.0, Ns.T, trans=0, lower=1)
        elif (pairs := sym.schur_pairs()) is not None:
            # lower triangle of -N' diag(d)^-1 N from the pairs of entries within rows of N (one
            # weighted bincount; no sparse product): entry (a, b), a >= b, sits at b * |D| + a of a
            # C-ordered array, i.e. at (a, b) of its transpose, a Fortran-ordered view
            first, second, flat = pairs
            w = N.data[first] * N.data[second] / d[sym.N_row[first]]
            S = np.bincount(flat, weights=w, minlength=D.size * D.size)  # (int64 when N is empty)
            S = S.astype(float, copy=False).reshape(D.size, D.size).T
            np.negative(S, out=S)
        else:
            S = -(N.T @ sp.diags(1.0 / d) @ N).toarray(order="F")
        lower = sym.dd_r >= sym.dd_c
        S[sym.dd_r[lower], sym.dd_c[lower]] += A.data[sym.dd_src[lower]]
        self.S_chol = _potrf(S, overwrite=True, clean=False)  # lower Cholesky factor of S

    def _eliminate(self, A, sym):
        """Set up the elimination of P: its diagonal ``d`` (positive, else NotPositiveDefinite) and
        :math:`N = A_{PD}` (CSR), returned and kept."""
        self.symbolic = sym
        self.n = A.shape[0]
        self.P, self.D = sym.P, sym.D
        d = A.data[sym.diag_src]
        if np.any(~(d > 0)):
            raise NotPositiveDefinite("sparse block is not positive definite")
        self.dP = d
        self.N = sp.csr_matrix((A.data[sym.N_src], sym.N_indices, sym.N_indptr), shape=(sym.P.size, sym.D.size))
        self.pos, self.in_P = sym.pos, sym.in_P
        self._iP, self._iD = sym.slices  # (P and D, as slices where they are runs of columns)
        return d, self.N

    def logdet(self) -> float:
        return float(np.sum(np.log(self.dP)) + 2.0 * np.sum(np.log(np.diag(self.S_chol).astype(float))))

    def held_bytes(self) -> int:
        """Bytes of the dense arrays held: the Schur complement's factor and the inverses kept for reuse."""
        out = self.S_chol.nbytes
        sel, tri = getattr(self, "_sel", None), getattr(self, "_tri", None)
        out += sel[0].nbytes if sel is not None and sel[0] is not None else 0
        return out + (sum(a.nbytes for a in tri) if tri else 0)

    def release(self):
        """Drop the inverses kept for reuse (:meth:`_selected`, :meth:`_diag_dense`; made again on demand)."""
        for name in ("_sel", "_tri", "_diag"):
            self.__dict__.pop(name, None)

    def _chol64(self):
        """The Cholesky factor of S in double precision (a single-precision one converted)."""
        return self.S_chol if self.S_chol.dtype == float else self.S_chol.astype(float)

    def solve(self, b):
        b = np.asarray(b, dtype=float)
        vec = b.ndim == 1
        b2 = b[:, None] if vec else b
        dP = self.dP[:, None]
        y_P = b2[self._iP] / dP
        x_D = self._solve_S(b2[self._iD] - self._t_matvec(y_P))
        x_P = y_P - (self.N @ x_D) / dP
        out = np.empty_like(b2)
        out[self._iP], out[self._iD] = x_P, x_D
        return out[:, 0] if vec else out

    def _solve_S(self, rhs):
        """:math:`S^{-1}` rhs (columns) with the dense Cholesky factor."""
        return _potrs(self.S_chol, rhs)

    def _t_matvec(self, y):
        r""":math:`N^\top y`: by a sparse product, or for a vector or a few columns of a small N by
        bincounts over its entries (no transposed matrix is built)."""
        N, row, nD = self.N, self.symbolic.N_row, self.D.size
        if N.nnz > 50_000 or (y.ndim == 2 and y.shape[1] > 8):  # the transpose's fixed cost pays
            return np.asarray(N.T @ y)
        cols = y[:, None] if y.ndim == 1 else y
        out = np.empty((nD, cols.shape[1]))
        for j in range(cols.shape[1]):
            out[:, j] = np.bincount(N.indices, weights=N.data * cols[row, j], minlength=nD)
        return out[:, 0] if y.ndim == 1 else out

    def _diag_dense(self):
        r"""The diagonal of :math:`A^{-1}` where N is dense (densified again), by triangular BLAS alone:
        with :math:`L^{-1}` (trtri) and :math:`W = L^{-1} N_s^\top` (trmm; :math:`N_s =
        \mathrm{diag}(d)^{-1/2} N`), :math:`(S^{-1})_{jj} = \sum_i (L^{-1})_{ij}^2` and
        :math:`n_i^\top S^{-1} n_i / d_i = \|W_{:,i}\|^2` (about 60 % of the cost of :math:`S^{-1}`
        by potri and the product :math:`N S^{-1}`, which only the entries off the diagonal need).
        ``L^{-1}`` and ``W`` are kept for :meth:`_selected`."""
        Linv, info = lapack.dtrtri(self._chol64(), lower=1)
        if info != 0:  # pragma: no cover - S_chol has a positive diagonal
            raise NotPositiveDefinite("matrix is not positive definite")
        Linv = np.tril(Linv)  # (the upper triangle is the factor's untouched input)
        W = trmm(1.0, Linv, _scaled_dense(self.N, self._root_d).T, lower=1)
        self._tri = (Linv, W)
        diag = np.empty(self.n)
        diag[self.P] = (1.0 + np.einsum("ij,ij->j", W, W)) / self.dP
        diag[self.D] = np.einsum("ij,ij->j", Linv, Linv)
        return diag

    def _selected(self):
        if hasattr(self, "_sel"):
            return self._sel
        N, dP = self.N, self.dP
        tri = getattr(self, "_tri", None)
        if tri is not None:
            # from the diagonal's L^-1 and W = L^-1 Ns': S^-1 = L^-T L^-1 (lauum), Ns S^-1 = (L^-T W)'
            Linv, W = tri
            low, info = lapack.dlauum(Linv, lower=1)
            Sinv = low + low.T
            Sinv.flat[:: Sinv.shape[0] + 1] = np.diagonal(low)
            NSinv = trmm(1.0, Linv, W, lower=1, trans_a=1).T
        else:
            Sinv = _potri(self._chol64())
            NSinv = None
        quad = np.empty(self.P.size)
        on_N = np.empty(N.nnz)  # (N S^{-1}) on the pattern of N
        step = max(1, int(4e6 // max(self.D.size, 1)))
        for a in range(0, self.P.size, step):
            b = min(a + step, self.P.size)
            lo, hi = N.indptr[a], N.indptr[b]
            scale = None
            if NSinv is not None:
                M, scale = NSinv[a:b], self._root_d[a:b]
            elif self._dense_N:
                M, scale = _scaled_dense(self.N[a:b], self._root_d[a:b]) @ Sinv, self._root_d[a:b]
            else:
                M = (N if (a, b) == (0, self.P.size) else N[a:b]) @ Sinv
            rows = self.symbolic.N_row[lo:hi] - a
            vals = M[rows, N.indices[lo:hi]]
            if scale is not None:  # (Ns S^-1 -> N S^-1)
                vals *= scale[rows]
            on_N[lo:hi] = vals
            quad[a:b] = np.bincount(rows, weights=vals * N.data[lo:hi], minlength=b - a)
        self._tri = None
        diag = np.empty(self.n)
        diag[self.P] = (1.0 + quad / dP) / dP  # (not dP**2: it overflows at a collapsed SD, prec ~ e^400)
        diag[self.D] = np.diag(Sinv)
        self._sel = (Sinv, -on_N / np.repeat(dP, np.diff(N.indptr)), diag)
        return self._sel

    def diag_inverse(self) -> np.ndarray:
        if hasattr(self, "_sel"):
            return self._sel[2].copy()
        if self._dense_N:
            if getattr(self, "_diag", None) is None:
                self._diag = self._diag_dense()
            return self._diag.copy()
        return self._selected()[2].copy()

    def inverse_on_pattern(self, a, b, keep_plan=False):
        """Entries :math:`(A^{-1})_{a_t b_t}` for index pairs on the sparsity pattern of A.

        ``keep_plan``: the same (unchanging) arrays will be requested again with this pattern (the
        Gram pattern at every integration point): where each entry sits is kept on the pattern
        analysis, keyed by the arrays themselves."""
        Sinv, on_N, diag = self._selected()
        same, a_same, both_D, rD, cD, mixed, k = self._plan(a, b, keep_plan)
        out = np.empty(same.size)
        out[same] = diag[a_same]
        out[both_D] = Sinv[rD, cD]
        out[mixed] = on_N[k]
        return out

    def _plan(self, a, b, keep=False):
        """Where each requested entry sits (diagonal, dense Schur block, or on N's pattern); with
        ``keep``, kept on the pattern analysis for the same arrays requested again."""
        cache = self.symbolic.plans
        hit = cache.get((id(a), id(b)))
        if hit is not None and hit[0] is a and hit[1] is b:
            return hit[2]
        a_, b_ = np.asarray(a), np.asarray(b)
        same = a_ == b_
        pa, pb = self.in_P[a_], self.in_P[b_]
        both_D = ~same & ~pa & ~pb
        mixed = ~same & (pa != pb)
        if np.any(~same & pa & pb):
            raise ValueError("entries requested off the sparsity pattern")
        k = np.zeros(0, dtype=np.int64)
        if mixed.any():
            ip = np.where(pa, a_, b_)[mixed]
            jd = np.where(pa, b_, a_)[mixed]
            r, c = self.pos[ip], self.pos[jd]
            N = self.N
            k = _positions_in_rows(N, r, c)
            k = np.minimum(k, max(N.nnz - 1, 0))
            if N.nnz == 0 or np.any(k >= N.indptr[r + 1]) or np.any(N.indices[k] != c):
                raise ValueError("entries requested off the sparsity pattern")
        plan = (same, a_[same], both_D, self.pos[a_[both_D]], self.pos[b_[both_D]], mixed, k)
        if keep:
            if len(cache) >= 8:  # (a few fixed request patterns per pattern analysis: moments, skewness, Gram)
                cache.clear()
            cache[(id(a), id(b))] = (a, b, plan)
        return plan


class NestedSchurLDL(SchurDenseLDL):
    r"""Factorisation of a sparse SPD matrix whose block on ``P`` is diagonal and whose Schur
    complement :math:`S = A_{DD} - N^\top \mathrm{diag}(d)^{-1} N` on the rest is itself sparse with
    a diagonal block (nested factors; observation-level effects beside groups): :math:`S` is
    assembled on its pattern and factored by :func:`factor_spd` with the inner pattern analysis
    (``symbolic.inner``: diagonal, dense Schur, or nested again), so no level is densified.

    With :math:`\Sigma = S^{-1}` on S's pattern (the inner factor's selected inverse),
    :math:`\log\det A = \sum \log d + \log\det S`, and on A's pattern

    .. math::

        (A^{-1})_{DD} = \Sigma,\quad
        (A^{-1})_{PD} = -\mathrm{diag}(d)^{-1} N \Sigma,\quad
        \mathrm{diag}(A^{-1})_{P} = 1/d_i + n_i^\top \Sigma\, n_i / d_i^2,

    where :math:`(N\Sigma)_{ij} = \sum_k N_{ik} \Sigma_{kj}` over the entries k of row i of N,
    and j is in that row too (the entries requested lie on A's pattern): every :math:`\Sigma_{kj}`
    needed is on S's pattern, whose off-diagonal part is the pairs that meet in rows of N.
    """

    def __init__(self, A, symbolic, single=False):
        sym = symbolic
        d, N = self._eliminate(A, sym)
        first, second, _, _ = sym.s_pairs
        w = N.data[first] * N.data[second] / d[sym.N_row[first]]
        data = (np.bincount(sym.s_dd_pos, weights=A.data[sym.dd_src], minlength=sym.s_nnz)
                - np.bincount(sym.s_pair_pos, weights=w, minlength=sym.s_nnz))
        inner = sym.inner
        S = sp.csc_matrix((data, inner.indices, inner.indptr), shape=inner.shape)
        self.S_factor = factor_spd(S, inner)
        self._dense_N = False

    def logdet(self) -> float:
        return float(np.sum(np.log(self.dP)) + self.S_factor.logdet())

    def held_bytes(self) -> int:
        return held_bytes(self.S_factor)

    def release(self):
        self.__dict__.pop("_sel", None)
        release(self.S_factor)

    def _solve_S(self, rhs):
        return self.S_factor.solve(rhs).reshape(rhs.shape)

    def _selected(self):
        if hasattr(self, "_sel"):
            return self._sel
        N, dP, sym = self.N, self.dP, self.symbolic
        first, second, a, b = sym.s_pairs
        sig = self.S_factor.inverse_on_pattern(a, b, keep_plan=True)  # Sigma at the pairs within rows
        on_N = np.bincount(second, weights=N.data[first] * sig, minlength=N.nnz)  # (N Sigma) on N
        quad = np.bincount(sym.N_row, weights=on_N * N.data, minlength=self.P.size)
        diag = np.empty(self.n)
        diag[self.P] = (1.0 + quad / dP) / dP  # (not dP**2: it overflows at a collapsed SD)
        diag[self.D] = self.S_factor.diag_inverse()
        self._sel = (None, -on_N / np.repeat(dP, np.diff(N.indptr)), diag)
        return self._sel

    def diag_inverse(self) -> np.ndarray:
        return self._selected()[2].copy()

    def inverse_on_pattern(self, a, b, keep_plan=False):
        """Entries :math:`(A^{-1})_{a_t b_t}` for index pairs on the sparsity pattern of A (the
        pairs within D from the inner factor's selected inverse)."""
        _, on_N, diag = self._selected()
        same, a_same, both_D, rD, cD, mixed, k = self._plan(a, b, keep_plan)
        out = np.empty(same.size)
        out[same] = diag[a_same]
        if both_D.any():
            out[both_D] = self.S_factor.inverse_on_pattern(rD, cD, keep_plan=keep_plan)
        out[mixed] = on_N[k]
        return out


def _as_slice(idx):
    """``idx`` as a slice when it is a run of consecutive increasing integers, else itself."""
    if idx.size and int(idx[-1]) - int(idx[0]) + 1 == idx.size and np.all(np.diff(idx) == 1):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


def _positions_in_rows(M, r, c):
    """Positions in ``M.data`` of the entries (r, c) of a CSR matrix with sorted indices."""
    keys = np.repeat(np.arange(M.shape[0], dtype=np.int64), np.diff(M.indptr)) * M.shape[1] + M.indices
    return np.searchsorted(keys, r.astype(np.int64) * M.shape[1] + c)


class Symbolic:
    """The pattern-only part of :func:`factor_spd`: which route, and for the dense-Schur route
    the partition (P, D) and where N, diag(A_PP) and A_DD sit in A's data.

    Newton iterations keep the pattern of A, so this analysis is done once and reused
    (:meth:`matches` checks the pattern, O(nnz)).
    """

    def __init__(self, A, groups=None):
        self.shape = A.shape
        self.indptr, self.indices = A.indptr.copy(), A.indices.copy()
        self.plans = {}  # SchurDenseLDL._plan: where requested entries of the inverse sit
        self.groups = None if groups is None else np.asarray(groups)  # variance component of each column
        q = A.shape[0]
        col = np.repeat(np.arange(q), np.diff(A.indptr))
        row = A.indices
        self.route = "diagonal" if np.all(row == col) else "superlu"
        if self.route == "diagonal":
            return
        P = _independent_classes(row, col, groups) if groups is not None else _independent_set(A)
        in_P = np.zeros(q, dtype=bool)
        in_P[P] = True
        D = np.flatnonzero(~in_P)
        if D.size == 0:
            return
        P_row, P_col = in_P[row], in_P[col]  # (each entry's row and column in P)
        selN = P_row & ~P_col
        row_nnz = np.bincount(row[selN], minlength=q)[P].astype(np.int64)
        # off-diagonal fill of the Schur complement (at most sum over P rows of r (r - 1)): dense when it
        # fills a good part of S, when S is small and not (nearly) diagonal, or when S has at most
        # DENSE_ALWAYS columns; a larger diagonal S (random slopes on one factor, big nested designs)
        # is left to SuperLU
        fill = float(row_nnz @ (row_nnz - 1))
        self.P, self.D = P, D
        if (groups is not None and D.size >= NESTED_FROM
                and (inner := self._nested_inner(row, col, P, D, in_P, P_row, P_col, row_nnz))):
            # the Schur complement is itself sparse with a diagonal block (nested factors, or
            # observation-level effects beside groups): eliminated level by level (NestedSchurLDL)
            self.route, self.inner = "nested", inner
            return
        if D.size > DENSE_TAIL_MAX:
            # too large to factor densely; a Schur complement with many entries per column (crossed
            # factors: a random graph) fills its sparse factor in completely too: conjugate gradients;
            # unless it falls apart into small blocks (observation-level effects whose groups were
            # integrated out: a dense block per group), whose sparse factor fills only those blocks
            if fill >= ITERATIVE_MIN_DEGREE * D.size:
                labels = _block_labels(A)
                sizes = np.bincount(labels)
                if sizes.max() > min(BLOCK_MAX, DENSE_TAIL_MAX) or float(sizes @ sizes) > BLOCK_ENTRIES_MAX:
                    self.route = "iterative"
                else:
                    self.route, self.blocks = "blocks", _BlockPlan(labels)
            return
        if not (fill >= 0.05 * D.size**2 or (D.size <= DENSE_SMALL and fill >= D.size) or D.size <= DENSE_ALWAYS):
            return
        self.route = "schur"
        self._maps(row, col, P, D, in_P, P_row, P_col)

    def _maps(self, row, col, P, D, in_P, P_row, P_col):
        """Where diag(A_PP), N = A_PD and A_DD sit in A's data (the elimination of P); P and D
        also as slices where they are runs of columns (observation-level effects first: views
        instead of gathered copies in every solve, 1 ms per gather of 1e5 x 3 rows)."""
        q = in_P.size
        pos = np.empty(q, dtype=np.int64)
        pos[P], pos[D] = np.arange(P.size), np.arange(D.size)
        self.P, self.D, self.pos, self.in_P = P, D, pos, in_P
        self.slices = (_as_slice(P), _as_slice(D))
        seld = (row == col) & P_row
        self.diag_src = np.empty(P.size, dtype=np.int64)
        self.diag_src[pos[row[seld]]] = np.flatnonzero(seld)
        # N's entry (i, j) (rows P, columns D) is A's (P_i, D_j) = (D_j, P_i): taken from A's column
        # P_i, where (indices sorted) the entries are already in N's row-major order
        selT = ~P_row & P_col
        r, c, src = pos[col[selT]], pos[row[selT]], np.flatnonzero(selT)
        key = r.astype(np.int64) * D.size + c
        if key.size > 1 and np.any(key[1:] <= key[:-1]):  # (A's indices not sorted)
            order = np.argsort(key, kind="stable")
            r, c, src = r[order], c[order], src[order]
        self.N_indices = c.astype(np.int32)
        self.N_indptr = np.searchsorted(r, np.arange(P.size + 1)).astype(np.int32)
        self.N_src = src
        self.N_row = np.repeat(np.arange(P.size, dtype=np.int64), np.diff(self.N_indptr))
        selD = ~(P_row | P_col)
        self.dd_r, self.dd_c, self.dd_src = pos[row[selD]], pos[col[selD]], np.flatnonzero(selD)

    def _nested_inner(self, row, col, P, D, in_P, P_row, P_col, row_nnz):
        r"""The pattern analysis of the Schur complement :math:`S` on D when some variance component
        of D has a diagonal block in it and eliminating that block leaves a dense part at most half
        as large as D (else None): nested factors (a brood within one location: after the
        observations, no two broods meet), or observation-level effects beside nested groups.
        :math:`S`'s pattern is :math:`A_{DD}`'s and the pairs of columns of D that meet in a row of
        :math:`N = A_{PD}`. Sets the maps that assemble S's entries (:class:`NestedSchurLDL`)."""
        g = self.groups[D]
        if g.min() == g.max() and float(row_nnz @ (row_nnz - 1)) > 0:
            return None  # one class in D, two of its columns in a row of N (crossed factors): no block
        k = int(g.max()) + 1
        selN = P_row & ~P_col  # N's entries: rows of A in P, columns in D (A symmetric)
        pos = np.empty(in_P.size, dtype=np.int64)
        pos[D] = np.arange(D.size)
        per_row = np.bincount(row[selN] * k + g[pos[col[selN]]], minlength=int(row.max() + 1) * k)
        met = np.zeros(k, dtype=bool)
        met[np.flatnonzero(per_row > 1) % k] = True  # two columns of the class in one row of N
        selD = ~(P_row | P_col) & (row != col)
        adj = class_adjacency(pos[row[selD]], pos[col[selD]], g)[0] if selD.any() else np.zeros((k, k), bool)
        present = np.bincount(g, minlength=k) > 0
        if not np.any(present & ~met & ~np.diag(adj)) or float(row_nnz @ row_nnz) > _NESTED_PAIRS_MAX:
            return None
        self._maps(row, col, P, D, in_P, P_row, P_col)
        first, second, _ = pairs_within_rows(self.N_indptr)
        small = self.N_indices.size < 2**31  # (positions in N's data as int32: half the memory)
        first, second = (first.astype(np.int32), second.astype(np.int32)) if small else (first, second)
        a, b = self.N_indices[first], self.N_indices[second]  # (int32 columns of D)
        # S's pattern (CSC: column-major keys, both triangles) and where each term lands in its data
        keys = np.concatenate([self.dd_c.astype(np.int64) * D.size + self.dd_r, b.astype(np.int64) * D.size + a])
        s_keys = np.unique(keys)
        indptr = np.searchsorted(s_keys // D.size, np.arange(D.size + 1)).astype(np.int32)
        pattern = sp.csc_matrix((np.ones(s_keys.size), (s_keys % D.size).astype(np.int32), indptr),
                                shape=(D.size, D.size))
        inner = Symbolic(pattern, groups=g)
        if inner.route not in ("diagonal", "schur", "nested") or inner.dense_size > D.size // 2:
            return None
        pos_keys = np.searchsorted(s_keys, keys)
        if s_keys.size < 2**31:
            pos_keys = pos_keys.astype(np.int32)
        self.s_dd_pos, self.s_pair_pos = pos_keys[:self.dd_src.size], pos_keys[self.dd_src.size:]
        self.s_pairs, self.s_nnz = (first, second, a, b), s_keys.size
        return inner

    @property
    def dense_size(self) -> int:
        """Columns of the dense block this route factors by LAPACK (0 for none)."""
        if self.route == "schur":
            return int(self.D.size)
        return self.inner.dense_size if self.route == "nested" else 0

    def schur_pairs(self):
        r"""``(first, second, flat)`` for the lower triangle of :math:`N^\top \mathrm{diag}(d)^{-1} N`:
        the pairs of entries of one row of N whose columns are a >= b (positions in N's data) and
        the place ``b * |D| + a`` of their product in a C-ordered |D| x |D| array; None when
        there are more than :data:`_SCHUR_PAIRS_MAX` (then a sparse product is cheaper in memory).
        Built once, on first use."""
        if not hasattr(self, "_schur_pairs"):
            m = np.diff(self.N_indptr).astype(np.int64)
            total = int(m @ m)
            if total > _SCHUR_PAIRS_MAX:
                self._schur_pairs = None
            else:
                first, second, _ = pairs_within_rows(self.N_indptr)
                keep = second <= first  # column indices are sorted within rows: column a >= b
                first, second = first[keep], second[keep]
                nD = self.D.size
                flat = self.N_indices[second].astype(np.int64) * nD + self.N_indices[first]
                self._schur_pairs = (first, second, flat)
        return self._schur_pairs

    def matches(self, A) -> bool:
        return (A.shape == self.shape and A.indptr.size == self.indptr.size and A.indices.size == self.indices.size
                and np.array_equal(A.indptr, self.indptr) and np.array_equal(A.indices, self.indices))


#: Newton iterations on a dense Schur complement of at least this many columns solve by conjugate
#: gradients (:func:`solve_only`): from about this size they are faster than factoring (two crossed
#: factors of 1,000 levels, n = 1e5: fit_map 0.81 -> 0.39 s; of 4,000 levels, n = 2e5: 8.3 -> 3.1 s).
SOLVE_ITERATIVE_FROM = 1000


def solve_only(symbolic):
    """The pattern analysis to use where only solves are needed (Newton steps): an iterative copy of
    ``symbolic`` when its dense block (dense-Schur or nested route) has at least
    :data:`SOLVE_ITERATIVE_FROM` columns,
    else ``symbolic`` itself. Fits that report a covariance factor exactly at their end point."""
    if symbolic is None or symbolic.route not in ("schur", "nested") or symbolic.dense_size < SOLVE_ITERATIVE_FROM:
        return symbolic
    out = copy.copy(symbolic)
    out.route = "iterative"
    return out


def held_bytes(factor) -> int:
    """Bytes of the dense arrays a factorisation holds (0 for the routes without a dense block, or None)."""
    f = getattr(factor, "held_bytes", None)
    return int(f()) if f is not None else 0


def release(factor):
    """Drop the inverses a factorisation keeps for reuse (made again on demand; nothing for the
    routes without a dense block, or None)."""
    f = getattr(factor, "release", None)
    if f is not None:
        f()


def factor_spd(A, symbolic=None, single=False):
    """Factor a sparse SPD matrix by the cheapest exact route (diagonal, dense Schur, or SuperLU), or
    prepare it for conjugate-gradient solves when no factorisation fits (:class:`~.iterative.IterativeSPD`).

    ``symbolic`` is a :class:`Symbolic` (from an earlier factorisation's ``factor.symbolic``,
    or made once per model with the variance components as ``groups``); it is reused
    when A has the same pattern. ``single``: a dense Schur complement in single precision
    (:class:`SchurDenseLDL`; the other routes ignore it).
    """
    A = A if sp.isspmatrix_csc(A) else sp.csc_matrix(A)
    if not A.has_canonical_format:
        A.sum_duplicates()
    if symbolic is None or not symbolic.matches(A):
        symbolic = Symbolic(A)
    if symbolic.route == "schur":
        return SchurDenseLDL(A, symbolic, single=single)
    if symbolic.route == "nested":
        return NestedSchurLDL(A, symbolic)
    if symbolic.route == "iterative":
        return IterativeSPD(A, symbolic, not_pd=NotPositiveDefinite)
    if symbolic.route == "blocks":
        return BlockDenseLDL(A, symbolic)
    f = SparseLDL(A, diagonal=True if symbolic.route == "diagonal" else None)
    f.symbolic = symbolic
    return f


class BorderedFactor:
    """Factorisation of the bordered SPD matrix ``[[A, B], [B.T, C]]``.

    Parameters
    ----------
    A : sparse (q, q)
        Sparse SPD block.
    reuse : BorderedFactor or Symbolic, optional
        An earlier factorisation, or a pattern analysis, reused if A's pattern is the same.
    B : ndarray (q, m)
        Coupling block (dense; m is small).
    C : ndarray (m, m)
        Dense border block.
    single : bool
        Factor a dense Schur complement of A in single precision (:class:`SchurDenseLDL`): for
        matrices whose factorisation only gives steps (a start, chord steps).
    """

    def __init__(self, A, B, C, reuse=None, single=False):
        self.q = A.shape[0]
        self.m = C.shape[0]
        if isinstance(reuse, Symbolic) or reuse is None:
            sym = reuse
        else:
            sym = getattr(reuse.A, "symbolic", None) if reuse.A is not None else None
        self.A = factor_spd(A, sym, single=single) if self.q else None
        self.single = bool(single)
        B = np.asarray(B.toarray() if sp.issparse(B) else B, dtype=float).reshape(self.q, self.m)
        self.B = B
        self.AinvB = self.A.solve(B) if self.q and self.m else np.zeros((self.q, self.m))
        S = np.asarray(C, dtype=float) - B.T @ self.AinvB if self.q else np.asarray(C, dtype=float)
        S = 0.5 * (S + S.T)
        if self.m:
            self.S_chol = _potrf(S, what="Schur complement")  # lower Cholesky factor of S
        self.S = S
        self._linv_t = None  # L^-T (border_rows), made on first use

    def held_bytes(self) -> int:
        """Bytes of the dense arrays held: the sparse block's factor's (:func:`held_bytes`), the border's
        Schur complement and its factor, and the coupling block with its solve."""
        out = held_bytes(self.A) + self.B.nbytes + self.AinvB.nbytes + self.S.nbytes
        return out + (self.S_chol.nbytes if self.m else 0)

    def release(self):
        """Drop what the sparse block's factor keeps for reuse (:func:`release`)."""
        release(self.A)

    def logdet(self) -> float:
        out = self.A.logdet() if self.q else 0.0
        if self.m:
            out += 2.0 * float(np.sum(np.log(np.diag(self.S_chol))))
        return out

    def solve(self, a, b):
        """Solve ``H [x; y] = [a; b]``; returns ``(x, y)``."""
        Ainv_a = self.A.solve(a) if self.q else a
        if self.m:
            y = _potrs(self.S_chol, b - self.B.T @ Ainv_a)
            x = Ainv_a - self.AinvB @ y
        else:
            y = b
            x = Ainv_a
        return x, y

    def border_rows(self, Z, X) -> np.ndarray:
        r"""Rows :math:`w_i = (T^\top z_i - x_i)^\top L^{-\top}` (:math:`T = A^{-1}B`, :math:`S = LL^\top`)
        for the rows :math:`z_i` of the sparse ``Z`` (None without a sparse block) and :math:`x_i` of
        ``X``: :math:`w_i^\top w_j` is the border's part of :math:`(z_i, x_i)^\top H^{-1} (z_j, x_j)`.
        :math:`L^{-\top}` by LAPACK's trtri called directly, once per factor (scipy's solve_triangular
        and numpy's inv have fixed costs of several microseconds, more than the small border's
        inverse; S_chol's upper triangle is zero)."""
        if not self.m:
            return np.zeros((X.shape[0], 0))
        if self._linv_t is None:
            self._linv_t = lapack.dtrtri(self.S_chol, lower=1)[0].T
        return ((Z @ self.AinvB if Z is not None and self.q else 0.0) - X) @ self._linv_t

    def border_inverse(self) -> np.ndarray:
        """The border block of :math:`H^{-1}`, i.e. :math:`S^{-1}` (m x m)."""
        if not self.m:
            return np.zeros((0, 0))
        return _potri(self.S_chol)

    def sparse_diag_inverse(self) -> np.ndarray:
        """Diagonal of the random-effect block of :math:`H^{-1}`."""
        if not self.q:
            return np.zeros(0)
        out = self.A.diag_inverse()
        if self.m:
            T = self.AinvB @ self.border_inverse()
            out = out + np.einsum("ij,ij->i", T, self.AinvB)
        return out
