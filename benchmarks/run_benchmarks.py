"""Time mglm_core against statsmodels' BayesMixedGLM on the same simulated data, in one run.

Usage::

    python benchmarks/run_benchmarks.py                 # the default grid (see GRID below)
    python benchmarks/run_benchmarks.py --full          # n in 1e3..1e6 x q in 10..1e5, both families, 1 and 2 factors
    python benchmarks/run_benchmarks.py --budget 300    # statsmodels' time budget per fit (seconds)

Each fit runs in its own process (``benchmarks/_one.py``) so peak memory (max RSS) is per fit;
statsmodels is stopped at the budget and reported as "> budget". Results go to benchmarks/RESULTS.md.
Designs: intercept + one N(0,1) covariate, ``factors`` crossed random-intercept factors with q/factors
levels each, true SD 0.8 (``mglm_core.simulate.simulate_arrays``, seed 0).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
METHODS = ("map", "vb")

# (n, q, family, factors) -- the default grid: the bars' cells plus a spread of sizes.
GRID = [
    (1_000, 10, "binomial", 1), (1_000, 100, "poisson", 1),
    (10_000, 100, "binomial", 1), (10_000, 1_000, "poisson", 2),
    (100_000, 1_000, "binomial", 1), (100_000, 1_000, "poisson", 1),
    (100_000, 2_000, "binomial", 2), (100_000, 10_000, "poisson", 1),
    (1_000_000, 10_000, "binomial", 1), (1_000_000, 10_000, "poisson", 1),
    (1_000_000, 100_000, "binomial", 1), (1_000_000, 100_000, "poisson", 1),
]
# Not in the default grid: two crossed factors with 5,000 levels each. Rows assigned at random make the
# Schur complement of one factor dense (5,000 x 5,000), and the sparse LU of every Newton step then
# takes tens of seconds: minutes per fit (`--full` includes such cells).


def full_grid():
    out = []
    for n in (1_000, 10_000, 100_000, 1_000_000):
        for q in (10, 100, 1_000, 10_000, 100_000):
            if q > n // 2:
                continue
            for family in ("binomial", "poisson"):
                for factors in (1, 2):
                    out.append((n, q, family, factors))
    return out


def run_one(lib, method, n, q, family, factors, budget):
    cmd = [sys.executable, str(HERE / "_one.py"), lib, method, str(n), str(q), family, str(factors)]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired:
        return {"timeout": True, "seconds": time.perf_counter() - t0}
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt_time(r, budget):
    if r is None:
        return "not run"
    if r.get("timeout"):
        return f"> {budget:.0f}"
    if "error" in r:
        return "error"
    return f"{r['seconds']:.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--budget", type=float, default=120.0)
    ap.add_argument("--sm-max-q", type=int, default=10_000,
                    help="skip statsmodels above this q (its dense Hessian needs (p+k+q)^2 doubles)")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = ap.parse_args()
    grid = full_grid() if args.full else GRID
    rows = []
    for n, q, family, factors in grid:
        for method in METHODS:
            ours = run_one("mglm", method, n, q, family, factors, 3600)
            sm = None
            if q <= args.sm_max_q:
                sm = run_one("statsmodels", method, n, q, family, factors, args.budget)
            rows.append((n, q, family, factors, method, ours, sm))
            print(n, q, family, factors, method, fmt_time(ours, 0), fmt_time(sm, args.budget), flush=True)
    write(rows, args)


def write(rows, args):
    lines = [
        "# Benchmarks: mglm_core vs statsmodels BayesMixedGLM",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python benchmarks/run_benchmarks.py"
        f"{' --full' if args.full else ''} --budget {args.budget:.0f}` on {platform.machine()}, "
        f"Python {platform.python_version()}, 2 cores. Wall seconds of model construction plus the fit (imports and data simulation excluded, for "
        "both; a fit under 2 s is run three times on the same data and the fastest is shown, for both libraries), peak resident memory of the fitting process, and the largest absolute difference of fixed "
        "effects and log-SDs between the two libraries' same-named method. statsmodels is stopped at the "
        f"budget ({args.budget:.0f} s) and shown as \"> budget\"; ratios against a stopped run are lower bounds. "
        f"statsmodels is not run above q = {args.sm_max_q} (its dense (p+k+q)² Hessian alone would not fit the budget). "
        "Two crossed factors with thousands of randomly crossed levels each are left out of the default grid: "
        "the elimination of one factor makes the other's block dense, and the fit then takes minutes "
        "(see GRID in the script).",
        "",
        "| n | q | family | factors | method | mglm s | mglm MB | statsmodels s | statsmodels MB | ratio | max abs diff (fe, vcp) | mglm converged |",
        "|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for n, q, family, factors, method, ours, sm in rows:
        ratio, diff, sm_mb = "", "", ""
        if sm is not None and "seconds" in ours:
            if sm.get("timeout"):
                ratio = f"> {args.budget / ours['seconds']:.0f}×"
            elif "seconds" in sm and "fe" in sm:
                ratio = f"{sm['seconds'] / ours['seconds']:.0f}×"
                d_fe = np.max(np.abs(np.subtract(ours["fe"], sm["fe"])))
                d_vcp = np.max(np.abs(np.subtract(ours["vcp"], sm["vcp"])))
                diff = f"{d_fe:.1e}, {d_vcp:.1e}"
                sm_mb = f"{sm['peak_mb']:.0f}"
        lines.append(
            f"| {n:,} | {q:,} | {family} | {factors} | {method} | {fmt_time(ours, 0)} | "
            f"{ours.get('peak_mb', float('nan')):.0f} | {fmt_time(sm, args.budget)} | {sm_mb} | {ratio} | {diff} | "
            f"{ours.get('converged', '')} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
