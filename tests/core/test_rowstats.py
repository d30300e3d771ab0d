"""Row sums over chunks (mglm_core.rowstats) against direct dense algebra."""
import numpy as np
import pytest
import scipy.sparse as sp

import mglm_core.rowstats as rowstats
from mglm_core.families import Binomial
from mglm_core.rowstats import RowData


def _factors(rng, n, sizes, values=False):
    """One nonzero per row and factor (random levels), with random values if asked."""
    blocks = []
    for s in sizes:
        v = rng.normal(size=n) if values else np.ones(n)
        blocks.append(sp.csr_matrix((v, (np.arange(n), rng.integers(0, s, n))), shape=(n, s)))
    return sp.hstack(blocks).tocsr()


def _designs():
    rng = np.random.default_rng(11)
    n = 700
    ragged = _factors(rng, n, (300, 60), values=True).tolil()
    ragged[::3, 300:] = 0.0  # a third of the rows without the second factor
    ragged[5, :] = 0.0  # and a row without any random effect
    ragged = ragged.tocsr()
    ragged.eliminate_zeros()
    return {
        "one factor": _factors(rng, n, (30,)),
        "two crossed factors": _factors(rng, n, (40, 25)),
        "two crossed factors of many levels": _factors(rng, n, (300, 200)),
        "three factors with values (slopes)": _factors(rng, n, (20, 20, 6), values=True),
        "rows of different lengths": ragged,
    }


@pytest.mark.parametrize("mark_max, threads", [(rowstats._MARK_MAX, 2), (0, 1)])
@pytest.mark.parametrize("name", list(_designs()))
def test_row_sums_match_dense_algebra(name, mark_max, threads, monkeypatch):
    """Score, X'WX, Z'WX and Z'WZ on the Gram pattern agree with dense products, for one and several
    nonzeros per row, rows of different lengths, by marking or (with ``_MARK_MAX`` at 0 and many
    levels) by sorting the pattern's keys, in one chunk and in several, summed on one thread or
    on the row-pass threads."""
    monkeypatch.setattr(rowstats, "_MARK_MAX", mark_max)
    monkeypatch.setattr(rowstats, "ROW_THREADS", threads)
    monkeypatch.setattr(rowstats, "_MIN_PARALLEL_CHUNK", 1)  # (small chunks on threads too)
    Z = _designs()[name]
    n, q = Z.shape
    rng = np.random.default_rng(3)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = rng.integers(0, 2, n).astype(float)
    fe, vc = np.array([-0.3, 0.5]), rng.normal(scale=0.5, size=q)
    eta = X @ fe + Z @ vc
    mu = 1.0 / (1.0 + np.exp(-eta))
    w = mu * (1.0 - mu)
    Zd = Z.toarray()
    for chunk_rows in (None, 128):
        rows = RowData(X, Z, y, chunk_rows=chunk_rows)
        rs = rows.reduce(Binomial(), fe, vc)
        np.testing.assert_allclose(rs.z_score, Zd.T @ (y - mu), atol=1e-10)
        np.testing.assert_allclose(rs.x_score, X.T @ (y - mu), atol=1e-10)
        np.testing.assert_allclose(rs.x_wx, X.T @ (w[:, None] * X), atol=1e-10)
        np.testing.assert_allclose(rs.z_wx, Zd.T @ (w[:, None] * X), atol=1e-10)
        gram = rows.gram(rs.z_wz).toarray()
        np.testing.assert_allclose(gram, Zd.T @ (w[:, None] * Zd), atol=1e-10)
        # the pattern is exactly Z'Z's, plus the whole diagonal
        expected = (np.abs(Zd).T @ np.abs(Zd) > 0) | np.eye(q, dtype=bool)
        np.testing.assert_array_equal(rows.hessian_pattern().toarray() != 0, expected)
        np.testing.assert_allclose(rows.linear_predictor(fe, vc), eta, atol=1e-12)


def test_threaded_row_sums_are_reproducible(monkeypatch):
    """Chunks summed on several threads add up in chunk order: repeated passes are bitwise equal,
    and equal to one thread's to rounding."""
    Z = _designs()["two crossed factors"]
    n = Z.shape[0]
    rng = np.random.default_rng(5)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = rng.integers(0, 2, n).astype(float)
    fe, vc = np.array([0.2, -0.4]), rng.normal(size=Z.shape[1])
    monkeypatch.setattr(rowstats, "ROW_THREADS", 2)
    monkeypatch.setattr(rowstats, "_MIN_PARALLEL_CHUNK", 1)
    rows = RowData(X, Z, y, chunk_rows=50)
    calls = []
    pool_map = rowstats._pool().map
    monkeypatch.setattr(rowstats._pool(), "map", lambda fn, it: calls.append(1) or pool_map(fn, it))
    first = rows.reduce(Binomial(), fe, vc)
    for _ in range(5):
        again = rows.reduce(Binomial(), fe, vc)
        assert again.loglike == first.loglike
        np.testing.assert_array_equal(again.z_wz, first.z_wz)
        np.testing.assert_array_equal(again.z_score, first.z_score)
    assert len(calls) == 6  # (the passes above ran on the threads)
    monkeypatch.setattr(rowstats, "ROW_THREADS", 1)
    serial = rows.reduce(Binomial(), fe, vc)
    assert serial.loglike == first.loglike
    np.testing.assert_array_equal(serial.z_wz, first.z_wz)


@pytest.mark.parametrize("distinct", [True, False])
def test_second_order_sums_over_pairs_of_identical_rows(distinct):
    """:math:`s_3 = \\sum_{i,j:\\,x_i = x_j} w_i' w_j' v_i^3` and :math:`s_4 = \\sum_i w_i'' v_i^2`
    against a double loop over the rows, with repeated design rows (a covariate of four values,
    ten groups) and with all rows distinct (a continuous covariate), in one chunk and in several;
    the row patterns partition the rows as the dense design rows do."""
    rng = np.random.default_rng(8)
    n = 300
    g = rng.integers(0, 10, n)
    x = rng.normal(size=n) if distinct else rng.integers(0, 4, n).astype(float)
    X = np.column_stack([np.ones(n), x])
    Z = sp.csr_matrix((np.ones(n), (np.arange(n), g)), shape=(n, 10))
    y = rng.integers(0, 2, n).astype(float)
    fe, vc = np.array([0.2, -0.4]), rng.normal(size=10)
    v = 0.1 + 0.03 * g + 0.02 * x**2  # a function of the design row, as x_i' H^-1 x_i is
    fam = Binomial()
    eta = X @ fe + Z @ vc
    d1, d2 = fam.weight_derivative(y, eta, None), fam.weight_second_derivative(y, eta, None)
    design = np.column_stack([x, g])
    same = np.all(design[:, None, :] == design[None, :, :], axis=2)
    s3 = float(np.sum(same * np.outer(d1, d1) * v[:, None] ** 3))
    for chunk_rows in (None, 64):
        rows = RowData(X, Z, y, chunk_rows=chunk_rows)
        pattern, n_pat = rows.row_patterns()
        assert np.array_equal(pattern[:, None] == pattern[None, :], same)
        assert (n_pat == n) == distinct
        xr, zr, s4_, s3_ = rows.weight_derivative_sums(fam, fe, vc, v, second_order=True)
        np.testing.assert_allclose(xr, X.T @ (d1 * v), rtol=1e-12)
        np.testing.assert_allclose(zr, Z.T @ (d1 * v), rtol=1e-12)
        assert s4_ == pytest.approx(float(d2 @ v**2), rel=1e-12)
        assert s3_ == pytest.approx(s3, rel=1e-12)
