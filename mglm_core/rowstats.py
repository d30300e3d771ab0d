r"""Per-row work as reductions over row chunks.

Everything the fitters need from the data is a sum over rows:

.. math::

    \sum_i \ell_i,\quad X^\top s,\quad Z^\top s,\quad X^\top W X,\quad Z^\top W X,
    \quad Z^\top W Z,\quad (Z\circ Z)^\top w,

where :math:`s_i` is the score and :math:`w_i` the weight of row i at the
current linear predictor (or their Gaussian expectations, for variational
Bayes). :class:`RowData` splits the rows into chunks and adds up per-chunk
results, so the same fitters run unchanged when the chunks live on other
machines (each chunk's contribution is computed from that chunk alone). On one
machine the chunks are summed on :data:`ROW_THREADS` threads (numpy's and scipy's
row kernels release the GIL); the partial sums are added in chunk order, so results do
not depend on which thread finished first.

:math:`Z^\top W Z` is assembled without sparse matrix-matrix products: the pairs
of nonzeros that share a row are listed once, with their position in the fixed
sparsity pattern of :math:`Z^\top Z`, as a sparse map :math:`M` (pattern entries
x rows, :math:`M_{e i} = z_{ia} z_{ib}` for the pair (a, b) of entry e), so that
each evaluation is one sparse matrix-vector product, :math:`Z^\top W Z = M w` on
the pattern; its transpose gives the row sums :math:`z_i^\top G z_i = (M^\top g)_i`
of a matrix G on the pattern (the row variances).
"""
from __future__ import annotations

import copy
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from .linalg import pairs_within_rows

__all__ = ["RowData", "RowSums"]

#: The Gram pattern is found by marking a q x q array when q^2 is at most this (or four times the
#: within-row pairs), by sorting otherwise.
_MARK_MAX = 4_000_000

#: Threads that sum the chunks of one row pass (the cores this process may use, at most 8).
ROW_THREADS = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
                         (os.cpu_count() or 1)))
#: Rows per chunk at least (below it a chunk's fixed costs dominate; fewer rows are one chunk).
_MIN_CHUNK = 16384
#: Chunks are summed on several threads only from this many rows each: smaller ones lose more to
#: the threads' contention (Python's lock, the allocator) than they gain (measured on 2 cores:
#: 16k-row chunks 30 % slower, 50k-row chunks of a light pass 10 % slower, 250k-row chunks 25 %
#: faster).
_MIN_PARALLEL_CHUNK = 65536

_POOL = None
_POOL_LOCK = threading.Lock()


def _marked_ranks(mark):
    """``(keys, rank)``: the positions of the marked entries of a flat q x q array, sorted, and
    each one's rank among them (``rank`` is read only at the marked positions; int32 below 2^31
    entries: the map's index type, and half the pages)."""
    keys = np.flatnonzero(mark)
    itype = np.int32 if keys.size < 2**31 else np.int64
    rank = np.empty(mark.size, dtype=itype)
    rank[keys] = np.arange(keys.size, dtype=itype)
    return keys, rank


def _pool() -> ThreadPoolExecutor:
    """The process's row-pass threads (created on first use). Tasks never wait on other tasks,
    so fits running concurrently (dashboard sessions) share it without deadlock."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=ROW_THREADS, thread_name_prefix="mglm-rows")
        return _POOL


@dataclass(frozen=True)
class RowSums:
    """Sums over rows at one point (fields as in the module docstring).

    ``x_wx``, ``z_wx`` and ``z_wz`` are None when the Hessian was not asked for; ``z_wz``
    holds the values of :math:`Z^\top W Z` on the Gram pattern (:meth:`RowData.gram` makes
    the matrix, :meth:`RowData.with_diagonal` the precision block).
    ``z2_w`` and ``x2_w`` are the diagonals :math:`(Z\\circ Z)^\\top w` and
    :math:`(X\\circ X)^\\top w`, computed for mean-field variances only (None otherwise).
    """

    loglike: float
    x_score: np.ndarray
    z_score: np.ndarray
    x2_w: np.ndarray | None
    z2_w: np.ndarray | None
    x_wx: np.ndarray | None = None
    z_wx: np.ndarray | None = None
    z_wz: np.ndarray | None = None


@dataclass(frozen=True)
class _Chunk:
    """One block of rows. ``XT`` is X transposed and contiguous (row sums over it
    are contiguous dot products); ``ZT`` the transpose of Z (a CSC view of its CSR arrays: its
    products scatter as fast as a CSR copy's gather, and cost no copy);
    ``gram_map`` (Gram pattern entries x rows) maps row weights to :math:`Z^\top W Z` on the
    pattern, ``row_map`` is its transpose (module docstring; ``gram_map`` is the view of
    ``row_map``'s arrays, as ``ZT``); ``ll_const`` memoises the eta-free part of the
    log-likelihood per family; ``cache`` holds what only some fits need (:attr:`Z2`), shared by
    the copies of :meth:`RowData.with_response`."""

    rows: slice
    XT: np.ndarray
    Z: sp.csr_matrix
    ZT: sp.csc_matrix
    y: np.ndarray
    trials: np.ndarray | None
    offset: np.ndarray | None
    gram_map: sp.csc_matrix
    row_map: sp.csr_matrix
    ll_const: dict
    cache: dict

    @property
    def X(self):
        return self.XT.T

    @property
    def Z2(self) -> sp.csr_matrix:
        """:math:`Z \\circ Z` (for mean-field variances; made on first use)."""
        z2 = self.cache.get("Z2")
        if z2 is None:
            z2 = self.cache["Z2"] = self.Z.multiply(self.Z).tocsr()
        return z2


class RowData:
    """Rows of a model split into chunks of at most ``chunk_rows`` rows.

    By default (``chunk_rows=None``) chunks are large enough that the per-chunk cost of the
    q- and Gram-sized sums stays below the per-row cost (at least twice those sizes and 16k
    rows), up to 256k rows, and, from twice :data:`_MIN_PARALLEL_CHUNK` rows, small enough that
    every row-pass thread gets one (:data:`ROW_THREADS`).
    """

    def __init__(self, X, Z, y, trials=None, offset=None, chunk_rows=None):
        self.n, self.p = X.shape
        self.q = Z.shape[1]
        Z = sp.csr_matrix(Z)
        self._build_gram_pattern(Z)
        if chunk_rows is None:
            chunk_rows = int(min(262144, max(_MIN_CHUNK, 2 * (self._gram_nnz + self.q * (self.p + 1)))))
            if ROW_THREADS > 1 and self.n >= 2 * _MIN_PARALLEL_CHUNK:
                chunk_rows = min(chunk_rows, max(_MIN_PARALLEL_CHUNK, -(-self.n // ROW_THREADS)))
        if chunk_rows < 1:
            raise ValueError(f"`chunk_rows` must be a positive integer; got {chunk_rows}.")
        self.chunk_rows = chunk_rows
        chunks = []
        for a in range(0, self.n, chunk_rows):
            b = min(a + chunk_rows, self.n)
            Zc = Z if (a, b) == (0, self.n) else Z[a:b]
            pairs = slice(int(self._pair_start[a]), int(self._pair_start[b]))
            row_map = sp.csr_matrix((self._pair_val[pairs], self._pair_pos[pairs],
                                     self._pair_start[a:b + 1] - self._pair_start[a]),
                                    shape=(b - a, self._gram_nnz))
            chunks.append(
                _Chunk(
                    rows=slice(a, b),
                    XT=np.ascontiguousarray(X[a:b].T),
                    Z=Zc,
                    ZT=Zc.T,
                    y=y[a:b],
                    trials=None if trials is None else trials[a:b],
                    offset=None if offset is None else offset[a:b],
                    gram_map=row_map.T,
                    row_map=row_map,
                    ll_const={},
                    cache={},
                )
            )
        self.chunks = tuple(chunks)
        del self._pair_val, self._pair_pos, self._pair_start  # now in the chunks' maps
        self._last_row_variances = None

    def __getstate__(self):
        """Pickled without the last factor's row variances (a weak reference: a cache only)."""
        state = self.__dict__.copy()
        state["_last_row_variances"] = None
        return state

    def _build_gram_pattern(self, Z):
        nnz_row = np.diff(Z.indptr)
        diag_keys = np.arange(self.q, dtype=np.int64) * (self.q + 1)  # every diagonal entry is in the pattern
        self._pair_start = np.concatenate([[0], np.cumsum(nnz_row.astype(np.int64) ** 2)])
        m = int(nnz_row[0]) if nnz_row.size else 0
        n_pairs = int(self._pair_start[-1])
        if nnz_row.size and m >= 1 and np.all(nnz_row == m) and (
                m == 1 or self.q * self.q <= max(_MARK_MAX, 4 * n_pairs)):
            # the same number of nonzeros in every row (one per grouping factor): pairs by reshaping
            uniq, pos, self._pair_val = self._uniform_positions(Z, m, diag_keys)
        else:
            first, second, row = pairs_within_rows(Z.indptr)
            self._pair_val = Z.data[first] * Z.data[second]
            uniq, pos = self._pattern_positions(Z, nnz_row, first, second, row, diag_keys)
        self._pair_pos = pos
        rows = uniq // self.q
        self._gram_indices = (uniq % self.q).astype(np.int32)
        self._gram_indptr = np.searchsorted(rows, np.arange(self.q + 1)).astype(np.int32)
        self._gram_rows = rows  # the row of each entry (the selected inverse asks for these at every point)
        self._gram_nnz = uniq.size
        self._gram_diag = np.searchsorted(uniq, diag_keys)

    def _uniform_positions(self, Z, m, diag_keys):
        """:meth:`_pattern_positions` for m nonzeros in every row (and a markable q x q array when
        m > 1), with the pairs' values: row i's pairs are the m x m block ``(a, b)`` of its entries,
        in the order of :func:`~mglm_core.linalg.pairs_within_rows`."""
        n, q = Z.shape[0], self.q
        ktype = np.int32 if q * q < 2**31 else np.int64  # (keys row * q + col)
        cols = Z.indices.reshape(n, m).astype(ktype, copy=False)
        vals = Z.data.reshape(n, m)
        pair_val = (vals[:, :, None] * vals[:, None, :]).ravel()
        if m == 1:  # a single grouping factor: the pattern is the diagonal
            return diag_keys, cols[:, 0].astype(np.int64), pair_val
        mark = np.zeros(q * q, dtype=bool)
        mark[diag_keys] = True
        off = []  # (a, b, keys of the pairs (a, b) and (b, a)) for the places a < b in a row
        for a in range(m):
            for b in range(a + 1, m):
                upper, lower = cols[:, a] * q + cols[:, b], cols[:, b] * q + cols[:, a]
                mark[upper] = mark[lower] = True
                off.append((a, b, upper, lower))
        keys, rank = _marked_ranks(mark)
        del mark
        diag_rank = rank[diag_keys]  # (q entries: the diagonal pairs gather from a small array)
        pos = np.empty((n, m, m), dtype=rank.dtype)
        for a in range(m):
            pos[:, a, a] = diag_rank[cols[:, a]]
        for a, b, upper, lower in off:
            pos[:, a, b] = rank[upper]
            pos[:, b, a] = rank[lower]
        return keys, pos.ravel(), pair_val

    def _pattern_positions(self, Z, nnz_row, first, second, row, diag_keys):
        """Sorted keys ``row * q + col`` of the Gram pattern and each pair's position in it.

        Only the pairs above the diagonal are looked at: within a row block of m nonzeros the pair
        (i, j) has its mirror (j, i) at the transposed place, and diagonal pairs go to the
        diagonal entries (all in the pattern). With q^2 small (at most ``_MARK_MAX`` or four
        times the pairs), the keys are marked in a q x q array and ranked in order of the marks,
        O(q^2 + pairs); otherwise they are sorted. ``(first, second, row)`` as from
        :func:`~mglm_core.linalg.pairs_within_rows`.
        """
        q = self.q
        start = Z.indptr[row]
        m = nnz_row[row].astype(np.int64)
        i, j = first - start, second - start  # places of the two nonzeros in their row
        upper = np.flatnonzero(i < j)
        a_up = Z.indices[first[upper]].astype(np.int64)
        b_up = Z.indices[second[upper]].astype(np.int64)
        diag = np.flatnonzero(i == j)
        mirror = self._pair_start[row[upper]] + j[upper] * m[upper] + i[upper]  # pair (j, i) of the row
        pos = np.empty(first.size, dtype=np.int64)
        if q * q <= max(_MARK_MAX, 4 * first.size):
            mark = np.zeros(q * q, dtype=bool)
            up_keys, low_keys = a_up * q + b_up, b_up * q + a_up
            mark[diag_keys] = mark[up_keys] = mark[low_keys] = True
            keys, rank = _marked_ranks(mark)
            del mark
            pos[diag] = rank[diag_keys[Z.indices[first[diag]]]]
            pos[upper] = rank[up_keys]
            pos[mirror] = rank[low_keys]
            return keys, pos
        uu, inv = np.unique(a_up * q + b_up, return_inverse=True)
        all_keys = np.concatenate([diag_keys, uu, (uu % q) * q + uu // q])
        order = np.argsort(all_keys, kind="stable")
        rank = np.empty(all_keys.size, dtype=np.int64)
        rank[order] = np.arange(all_keys.size)
        pos[diag] = rank[Z.indices[first[diag]]]
        pos[upper] = rank[q + inv]
        pos[mirror] = rank[q + uu.size + inv]
        return all_keys[order], pos

    def with_response(self, y, trials=None) -> "RowData":
        """The same design with another response (and trials); shares every design array."""
        out = copy.copy(self)
        out._last_row_variances = None
        out.chunks = tuple(replace(c, y=y[c.rows], trials=None if trials is None else trials[c.rows], ll_const={})
                           for c in self.chunks)
        return out

    def hessian_pattern(self) -> sp.csc_matrix:
        """The sparsity pattern of :math:`Z^\top W Z` and its diagonal (ones as values)."""
        return self.with_diagonal(np.ones(self._gram_nnz), 0.0)

    def with_diagonal(self, gram_data, diag) -> sp.csc_matrix:
        """The matrix with values ``gram_data`` on the Gram pattern plus ``diag(diag)``, as CSC
        (symmetric, so its CSR arrays are also its CSC arrays; the pattern holds the diagonal)."""
        data = np.array(gram_data, dtype=float)
        data[self._gram_diag] += diag
        return sp.csc_matrix((data, self._gram_indices, self._gram_indptr), shape=(self.q, self.q))

    def gram(self, data) -> sp.csr_matrix:
        """A matrix with the pattern of Z'Z and the given values."""
        return sp.csr_matrix((data, self._gram_indices, self._gram_indptr), shape=(self.q, self.q))

    def map_chunks(self, fn):
        """``[fn(chunk) for chunk in self.chunks]``, on the row-pass threads when there are
        several chunks of at least :data:`_MIN_PARALLEL_CHUNK` rows (in chunk order either way)."""
        if len(self.chunks) == 1 or ROW_THREADS == 1 or self.chunk_rows < _MIN_PARALLEL_CHUNK:
            return [fn(c) for c in self.chunks]
        return list(_pool().map(fn, self.chunks))

    def linear_predictor(self, fe, vc):
        """:math:`X\\,fe + Z\\,vc + \\text{offset}` for all rows."""
        return np.concatenate(self.map_chunks(lambda c: self._eta(c, fe, vc))) if self.n else np.zeros(0)

    @staticmethod
    def _eta(c, fe, vc):
        eta = fe @ c.XT if c.XT.shape[0] else np.zeros(c.y.size)
        if c.Z.shape[1]:
            eta = eta + c.Z @ vc
        if c.offset is not None:
            eta = eta + c.offset
        return eta

    def latent_row_variances(self, factor) -> np.ndarray:
        r"""Variances of :math:`\eta_i` under :math:`N(\mu, H^{-1})` over (vc, fe).

        With :math:`H` factored as a :class:`~mglm_core.linalg.BorderedFactor`
        (sparse block A for vc, border S for fe, :math:`T = A^{-1}B`):

        .. math:: v_i = z_i^\top A^{-1} z_i + (T^\top z_i - x_i)^\top S^{-1} (T^\top z_i - x_i),

        where :math:`z_i^\top A^{-1} z_i` needs :math:`A^{-1}` only on the pattern of
        :math:`Z^\top Z` (selected inverse). The last factor's are kept (read-only) for the next call.
        """
        cached = self._last_row_variances  # the last factor's (a point's second-order term and
        if cached is not None and cached[0]() is factor:  # its refinement ask for the same)
            return cached[1]
        sig = None
        if self.q:
            sig = factor.A.inverse_on_pattern(self._gram_rows, self._gram_indices, keep_plan=True)

        def chunk_variances(c):
            v = c.row_map @ sig if self.q else np.zeros(c.y.size)
            if factor.m:
                W = factor.border_rows(c.Z if self.q else None, c.X)
                v += np.einsum("ij,ij->i", W, W)
            return v

        out = np.concatenate(self.map_chunks(chunk_variances)) if self.n else np.zeros(0)
        out.flags.writeable = False
        self._last_row_variances = (weakref.ref(factor), out)
        return out

    def row_patterns(self):
        """``(pattern, count)``: an id per row, equal for rows with the same design row
        :math:`(x_i, z_i)` (two fixed random projections of the row, compared exactly), and the
        number of distinct rows. Computed once."""
        if getattr(self, "_patterns", None) is None:
            rng = np.random.default_rng(20261124)
            r, s = rng.standard_normal((2, self.p)), rng.standard_normal((2, self.q))
            keys = np.empty((2, self.n))  # (each projection contiguous: the sort reads it alone)
            for c in self.chunks:
                keys[:, c.rows] = r @ c.XT + ((c.Z @ s.T).T if self.q else 0.0)
            # ids of the distinct key pairs in sorted order: sorted by the first key alone (a quarter
            # of a two-key lexsort's time), the second deciding only within its runs of ties; a run
            # whose second keys differ (different rows with equal first projections: never seen)
            # is sorted by both keys
            order = np.argsort(keys[0])
            k0, k1 = keys[0, order], keys[1, order]
            tie0, diff1 = k0[1:] == k0[:-1], k1[1:] != k1[:-1]
            if np.any(tie0 & diff1):
                order = np.lexsort((keys[1], keys[0]))
                k0, k1 = keys[0, order], keys[1, order]
                tie0, diff1 = k0[1:] == k0[:-1], k1[1:] != k1[:-1]
            new_key = np.ones(self.n, dtype=bool)
            new_key[1:] = ~tie0 | diff1
            pattern = np.empty(self.n, dtype=np.int64)
            pattern[order] = np.cumsum(new_key) - 1
            self._patterns = (pattern, int(pattern.max()) + 1 if self.n else 0)
        return self._patterns

    def weight_derivative_sums(self, family, fe, vc, row_var, second_order=False):
        r"""``(X^T t, Z^T t)`` with :math:`t_i = w_i'(\eta_i)\, v_i` (``w'`` from
        :meth:`Family.weight_derivative`, ``v`` = ``row_var``): the third-order term of
        :math:`d \log\det H / d\eta`.

        With ``second_order``, also :math:`s_4 = \sum_i w_i'' v_i^2` and
        :math:`s_3 = \sum_{i,j:\,x_i = x_j} w_i' w_j' v_i^3` for the second-order Laplace correction
        (the pairs of identical design rows, for which :math:`x_i^\top H^{-1} x_j = v_i`: the same
        value whether rows are aggregated into trials or not): ``(X^T t, Z^T t, s_4, s_3)``."""
        if second_order:
            pattern, n_pat = self.row_patterns()
            distinct = n_pat == self.n  # no two rows alike: the pairs i = j alone, row by row

        def chunk_sums(c):
            eta = self._eta(c, fe, vc)
            v = row_var[c.rows]
            d1 = family.weight_derivative(c.y, eta, c.trials)
            r = d1 * v
            out = [c.XT @ r, c.ZT @ r]
            if second_order:
                out.append(float(family.weight_second_derivative(c.y, eta, c.trials) @ v**2))
                out.append(float((d1 * d1) @ v**3) if distinct else
                           np.bincount(pattern[c.rows], weights=d1, minlength=n_pat))
            return out

        parts = self.map_chunks(chunk_sums)
        xr, zr = sum(part[0] for part in parts), sum(part[1] for part in parts)
        if not second_order:
            return xr, zr
        s4 = float(sum(part[2] for part in parts))
        if distinct:
            return xr, zr, s4, float(sum(part[3] for part in parts))
        d1_pat = sum(part[3] for part in parts)
        v_pat = np.zeros(n_pat)
        v_pat[pattern] = row_var  # (the same for every row of a pattern)
        return xr, zr, s4, float((d1_pat * d1_pat) @ v_pat**3)

    def reduce(self, family, fe, vc, fe_var=None, vc_var=None, hessian=True, row_var=None, value=True) -> RowSums:
        """Sum the row statistics over all chunks.

        With ``fe_var``/``vc_var`` (variational variances) the row terms are
        Gaussian expectations over :math:`\\eta_i \\sim N(m_i, v_i)` with
        :math:`v_i = (X\\circ X)_i\\, fe\\_var + (Z\\circ Z)_i\\, vc\\_var`, or with
        ``row_var`` given, :math:`v_i` = ``row_var[i]``; the weight is then
        :math:`-\\mathrm{E}\\,\\ell_i''`. Without ``value``, those expectations skip the log-likelihood
        (its logarithms) and ``ll`` is nan.
        """
        p, q = self.p, self.q
        mean_field = row_var is None and fe_var is not None

        def chunk_sums(c):
            eta = self._eta(c, fe, vc)
            if family.name not in c.ll_const:  # eta-free part of the log-likelihood, summed once
                c.ll_const[family.name] = float(np.sum(family.log_base_measure(c.y, c.trials)))
            out = {"ll": c.ll_const[family.name]}
            if row_var is not None:
                ll_i, score, _, d2 = family.gaussian_expectation(c.y, eta, row_var[c.rows], c.trials,
                                                                 const=False, value=value)
                w = -d2
            elif fe_var is None:
                ll_i, score, w = family.loglike_score_weight(c.y, eta, c.trials, const=False)
            else:
                X2 = c.X**2
                v = X2 @ fe_var if p else np.zeros(eta.size)
                if q:
                    v = v + c.Z2 @ vc_var
                ll_i, score, _, d2 = family.gaussian_expectation(c.y, eta, v, c.trials, const=False)
                w = -d2
            out["ll"] += float(np.sum(ll_i)) if ll_i is not None else np.nan
            out["xs"] = c.XT @ score
            out["zs"] = c.ZT @ score
            if hessian:
                # W X by rows of XT (contiguous), Z'WX one column at a time (a product of Z' with an
                # (n, p) block is slower: it needs the block C-ordered, which takes strided writes)
                wxt = c.XT * w
                out["xwx"] = c.XT @ wxt.T
                zwx = np.empty((q, p))
                for j in range(p):
                    zwx[:, j] = c.ZT @ wxt[j]
                out["zwx"] = zwx
                out["zwz"] = c.gram_map @ w
            if mean_field:
                out["x2w"] = X2.T @ w if p else np.zeros(0)
                out["z2w"] = c.Z2.T @ w
            return out

        parts = self.map_chunks(chunk_sums)

        def total(key):
            acc = parts[0][key]
            for part in parts[1:]:
                acc = acc + part[key]
            return acc

        ll = float(sum(part["ll"] for part in parts))
        xs, zs = total("xs"), total("zs")
        x2w, z2w = (total("x2w"), total("z2w")) if mean_field else (None, None)
        xwx, zwx, zwz = (total("xwx"), total("zwx"), total("zwz")) if hessian else (None, None, None)
        return RowSums(
            loglike=ll,
            x_score=xs,
            z_score=zs,
            x2_w=x2w,
            z2_w=z2w,
            x_wx=xwx,
            z_wx=zwx,
            z_wz=zwz,
        )
