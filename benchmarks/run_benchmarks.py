"""Time mglm_core against statsmodels' BayesMixedGLM on the same simulated data, in one run.

Usage::

    python benchmarks/run_benchmarks.py                 # the default grid (see GRID below)
    python benchmarks/run_benchmarks.py --full          # n in 1e3..1e6 x q in 10..1e5, both families, 1 and 2 factors
    python benchmarks/run_benchmarks.py --budget 300    # statsmodels' time budget per fit (seconds)
    python benchmarks/run_benchmarks.py --bars          # only the issue's bar cells -> benchmarks/RESULTS_BARS.md
    python benchmarks/run_benchmarks.py --large-crossed # two crossed factors of 50,000 levels -> RESULTS_LARGE_CROSSED.md
    python benchmarks/run_benchmarks.py --laplace       # fit_laplace against both fit_maps -> RESULTS_LAPLACE.md

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
    (100_000, 1_000, "binomial", 2), (100_000, 1_000, "poisson", 2),
    (100_000, 10_000, "poisson", 1),
    (1_000_000, 10_000, "binomial", 1), (1_000_000, 10_000, "poisson", 1),
    (1_000_000, 100_000, "binomial", 1), (1_000_000, 100_000, "poisson", 1),
    (1_000_000, 100_000, "binomial", 2), (1_000_000, 100_000, "poisson", 2),
]


# The cells of the speed bar (n = 1e5, q = 1e3): statsmodels gets --bar-budget there.
BAR_CELLS = {(100_000, 1_000)}


def full_grid():
    """n in 1e3..1e6 x q in 10..1e5 (q <= n/2), both families, one factor and two crossed factors.

    Two crossed factors of more than DENSE_TAIL_MAX levels each (q = 1e5: 50,000 x 50,000 levels
    assigned at random) cannot be factored (a dense 50,000-square Schur complement, 20 GB): fit_map and
    fit_vb solve them by conjugate gradients (mglm_core.iterative), with approximate random-effect SDs.
    """
    out = []
    for n in (1_000, 10_000, 100_000, 1_000_000):
        for q in (10, 100, 1_000, 10_000, 100_000):
            if q > n // 2:
                continue
            for family in ("binomial", "poisson"):
                for factors in (1, 2):
                    out.append((n, q, family, factors))
    return out


def large_crossed_cells():
    """The cells of two crossed factors too large to factor (the conjugate-gradient route)."""
    from mglm_core.linalg import DENSE_TAIL_MAX

    return [c for c in full_grid() if c[3] == 2 and c[1] // 2 > DENSE_TAIL_MAX]


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


def fmt_time(r, budget=None):
    if r is None:
        return "not run"
    if r.get("timeout"):
        return f"> {r.get('budget', budget):.0f}"
    if "error" in r:
        return "error"
    return f"{r['seconds']:.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--bars", action="store_true",
                    help="only the cells of the issue's bars (n = 1e5, q = 1e3; n = 1e6, q = 1e4)")
    ap.add_argument("--large-crossed", action="store_true",
                    help="only two crossed factors too large to factor (n = 1e6, q = 1e5)")
    ap.add_argument("--budget", type=float, default=120.0)
    ap.add_argument("--sm-max-q", type=int, default=10_000,
                    help="skip statsmodels above this q (its dense Hessian needs (p+k+q)^2 doubles)")
    ap.add_argument("--bar-budget", type=float, default=300.0,
                    help="statsmodels' budget in the speed bar's cells (n = 1e5, q = 1e3)")
    ap.add_argument("--mglm-budget", type=float, default=900.0, help="mglm_core's budget per fit")
    ap.add_argument("--laplace", action="store_true",
                    help="time fit_laplace against our fit_map and statsmodels' fit_map on the same cells")
    ap.add_argument("--out", default=None,
                    help="output file (default benchmarks/RESULTS.md, or RESULTS_BARS.md with --bars)")
    args = ap.parse_args()
    if args.out is None:
        args.out = str(HERE / ("RESULTS_LAPLACE.md" if args.laplace else "RESULTS_BARS.md" if args.bars else
                               "RESULTS_LARGE_CROSSED.md" if args.large_crossed else "RESULTS.md"))
    grid = full_grid() if args.full else large_crossed_cells() if args.large_crossed else GRID
    if args.bars:
        grid = [c for c in grid if c[:2] in BAR_CELLS or c[:2] == (1_000_000, 10_000)]
    if args.laplace:
        return laplace_main(grid, args)
    rows = []
    for n, q, family, factors in grid:
        for method in METHODS:
            ours = run_one("mglm", method, n, q, family, factors, args.mglm_budget)
            sm = None
            budget = _sm_budget(n, q, args)
            if q <= args.sm_max_q:
                sm = run_one("statsmodels", method, n, q, family, factors, budget)
                if sm is not None:
                    sm["budget"] = budget
            rows.append((n, q, family, factors, method, ours, sm))
            print(n, q, family, factors, method, fmt_time(ours, args.mglm_budget), fmt_time(sm, budget), flush=True)
    write(rows, args)


def _sm_budget(n, q, args):
    """statsmodels' time budget in a cell: ``--bar-budget`` in the speed bar's cells, else ``--budget``."""
    return max(args.budget, args.bar_budget) if (n, q) in BAR_CELLS else args.budget


def laplace_main(grid, args):
    """fit_laplace, our fit_map and statsmodels' fit_map (the speed bar's comparator: fit_laplace at most
    5x its time) on each cell; statsmodels is not run above ``--sm-max-q``."""
    rows = []
    for n, q, family, factors in grid:
        ours = run_one("mglm", "laplace", n, q, family, factors, args.mglm_budget)
        our_map = run_one("mglm", "map", n, q, family, factors, args.mglm_budget)
        ours["budget"] = our_map["budget"] = args.mglm_budget
        sm = None
        if q <= args.sm_max_q:
            budget = _sm_budget(n, q, args)
            sm = run_one("statsmodels", "map", n, q, family, factors, budget)
            sm["budget"] = budget
        rows.append((n, q, family, factors, ours, our_map, sm))
        print(n, q, family, factors, "laplace", fmt_time(ours, args.mglm_budget), "map", fmt_time(our_map),
              "statsmodels map", fmt_time(sm), flush=True)
    write_laplace(rows, args)


def _times(ours, other):
    """fit_laplace's time as a multiple of ``other``'s ("< x" where ``other`` was stopped at its budget)."""
    if other is None or "seconds" not in ours or ours.get("timeout") or "error" in ours:
        return ""
    if other.get("timeout"):
        return f"< {ours['seconds'] / other['budget']:.2g}"
    if "seconds" in other:
        return f"{ours['seconds'] / other['seconds']:.2g}"
    return ""


def write_laplace(rows, args):
    lines = [
        "# Benchmarks: fit_laplace against fit_map (ours and statsmodels')",
        "",
        (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python benchmarks/run_benchmarks.py"
         f" --laplace{' --full' if args.full else ''} --budget {args.budget:.0f} --bar-budget {args.bar_budget:.0f}` "
         f"on {platform.machine()}, Python {platform.python_version()}, 2 cores. Designs, timing rule and budgets as in "
         "`RESULTS.md`: wall seconds of model construction plus the fit, the fastest of three under 2 s, each fit in "
         "its own process. \"× fit_map\" is fit_laplace's time as a multiple of the other fit's on the same data "
         "(the speed bar of the accurate posteriors: at most 5× fit_map); \"< x\" where statsmodels was stopped at "
         f"its budget ({args.budget:.0f} s; {args.bar_budget:.0f} s at n = 1e5, q = 1e3). statsmodels is not run "
         f"above q = {args.sm_max_q}. Our fit_map is a joint posterior mode that collapses (a variance component "
         "running to SD 0) on many small groups of binary or low-count rows; fit_laplace integrates the effects "
         "out and does not."),
        "",
        ("| n | q | family | factors | fit_laplace s | MB | our fit_map s | × our fit_map | statsmodels fit_map s | "
         "× statsmodels' fit_map | converged | integration |"),
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for n, q, family, factors, ours, our_map, sm in rows:
        lines.append(
            f"| {n:,} | {q:,} | {family} | {factors} | {fmt_time(ours, args.mglm_budget)} | "
            f"{ours.get('peak_mb', float('nan')):.0f} | {fmt_time(our_map, args.mglm_budget)} | "
            f"{_times(ours, our_map)} | {fmt_time(sm)} | {_times(ours, sm)} | {ours.get('converged', '')} | "
            f"{ours.get('message', '') or ours.get('error', '')} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")


def _ratio(ours, sm):
    """(text, value or lower bound, is_lower_bound) of statsmodels' time over ours."""
    if sm is None or "seconds" not in ours or ours.get("timeout") or "error" in ours:
        return "", None, False
    if sm.get("timeout"):
        v = sm["budget"] / ours["seconds"]
        return f"> {v:.0f}×", v, True
    if "seconds" in sm and "fe" in sm:
        v = sm["seconds"] / ours["seconds"]
        return f"{v:.0f}×", v, False
    return "", None, False


def bar_lines(rows):
    """The issue's speed and memory bars, checked on the measured rows."""
    out = []
    for n, q, family, factors, method, ours, sm in rows:
        if (n, q) in BAR_CELLS:
            text, v, _ = _ratio(ours, sm)
            ok = v is not None and v >= 100
            out.append(f"- n = {n:,}, q = {q:,}, {family}, {factors} factor(s), {method}: {text or 'not measured'} "
                       f"(bar ≥ 100×): {'met' if ok else 'NOT met'}")
        if n == 1_000_000 and q == 10_000 and method == "map" and factors == 1 and "seconds" in ours:
            ok = not ours.get("timeout") and ours["seconds"] < 5 and ours.get("peak_mb", 1e9) < 2048
            out.append(f"- n = 1e6, q = 1e4, {family}, fit_map: {ours['seconds']:.2f} s, "
                       f"{ours.get('peak_mb', float('nan')):.0f} MB (bar < 5 s and < 2 GB): {'met' if ok else 'NOT met'}")
    return out


def write(rows, args):
    lines = [
        "# Benchmarks: mglm_core vs statsmodels BayesMixedGLM",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python benchmarks/run_benchmarks.py"
        f"{' --full' if args.full else ''}{' --bars' if args.bars else ''}"
        f"{' --large-crossed' if args.large_crossed else ''} --budget {args.budget:.0f} --bar-budget {args.bar_budget:.0f}` on "
        f"{platform.machine()}, Python {platform.python_version()}, 2 cores. Wall seconds of model construction "
        "plus the fit (imports and data simulation excluded, for both; a fit under 2 s is run three times on the "
        "same data and the fastest is shown, for both libraries), peak resident memory of the fitting process, "
        "and the largest absolute difference of fixed effects and log-SDs between the two libraries' same-named "
        f"method. statsmodels is stopped at its budget ({args.budget:.0f} s; {args.bar_budget:.0f} s in the bar's "
        "cells n = 1e5, q = 1e3) and shown as \"> budget\"; ratios against a stopped run are lower bounds. "
        f"statsmodels is not run above q = {args.sm_max_q} (its dense (p+k+q)² Hessian alone would not fit the "
        "budget). Designs: intercept + one N(0, 1) covariate, random intercepts of one factor or of two crossed "
        "factors (q/2 levels each, rows assigned at random), true SD 0.8. \"mglm converged\" is False where "
        "the joint posterior mode is degenerate (many small groups of binary or low counts: a variance "
        "component collapses towards SD 0, as statsmodels' does); the fit says so in a warning and the note "
        "column. Two crossed factors of 50,000 levels each cannot be factored: their random-effect block is solved "
        "by conjugate gradients and the random-effect SDs of fit_map are approximate (`mglm_core/iterative.py`).",
        "",
        "## Bars",
        "",
        *bar_lines(rows),
        "",
        "## All cells",
        "",
        "| n | q | family | factors | method | mglm s | mglm MB | statsmodels s | statsmodels MB | ratio | "
        "max abs diff (fe, vcp) | mglm converged | note |",
        "|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for n, q, family, factors, method, ours, sm in rows:
        ratio, _, _ = _ratio(ours, sm)
        diff, sm_mb = "", ""
        if sm is not None and "fe" in sm and "fe" in ours:
            d_fe = np.max(np.abs(np.subtract(ours["fe"], sm["fe"])))
            d_vcp = np.max(np.abs(np.subtract(ours["vcp"], sm["vcp"])))
            diff = f"{d_fe:.1e}, {d_vcp:.1e}"
            sm_mb = f"{sm['peak_mb']:.0f}"
        note = "" if ours.get("converged", True) else ours.get("message", "")
        lines.append(
            f"| {n:,} | {q:,} | {family} | {factors} | {method} | {fmt_time(ours, args.mglm_budget)} | "
            f"{ours.get('peak_mb', float('nan')):.0f} | {fmt_time(sm, args.budget)} | {sm_mb} | {ratio} | {diff} | "
            f"{ours.get('converged', '')} | {note} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
