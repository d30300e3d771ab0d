"""Gold-standard posteriors by long NUTS runs (pymc), stored as JSON summaries.

    python benchmarks/accuracy/make_reference.py [case ...] [--draws 2000 --tune 1500 --chains 4 --seed 1]

The sampler sees exactly the model of mglm_core (same design matrices, from the same formula
code): fe ~ N(0, fe_p^2), vcp ~ N(0, vcp_p^2), vc = exp(vcp[ident]) * z with z ~ N(0, 1)
(non-centred; centred with ``centred=True``, the same distribution), binomial-logit or Poisson-log
likelihood. pymc is a benchmark-only dependency (pip install pymc); it is never imported by the library.
Writes benchmarks/accuracy/reference/<case>.json with means, SDs, R-hat and ESS.

    python benchmarks/accuracy/make_reference.py --time-only [case ...]

times the same runs again on this machine without touching the summaries, into ``reference/nuts_timing.json``
(``{case: {"seconds", "machine", "date", "pymc", ...}}``; a reference run records its own time there too): the
report's speed table judges a fit against the NUTS run timed on the machine the report runs on when there is
one (a fit timed on one machine against a sampler timed on another says as much about the machines as the
methods).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from cases import BY_NAME, CASES  # noqa: E402


#: Above this condition number of the fixed-effect design the sampler draws its QR coordinates (``sample``).
QR_COND = 1e3


def sample(case, draws, tune, chains, seed=1, cores=2, centred=False):
    import arviz as az
    import pymc as pm
    import pytensor.sparse as ps
    import pytensor.tensor as pt

    model = case.model()
    X, Z, y = model.exog, model.exog_vc.tocsr(), model.endog
    # Fixed effects on their raw scale (a height in the hundreds of metres beside the intercept) are
    # correlated nearly +-1 a posteriori, which a diagonal mass matrix samples badly: there the sampler
    # draws w = A fe, X = sqrt(n) Q A (thin QR, Q w of unit-variance columns), flat in w with the
    # prior N(0, fe_p^2) on fe = A^-1 w as a potential: the same posterior (the map is linear).
    qr = bool(model.k_fep) and np.linalg.cond(X) > QR_COND
    with pm.Model():
        if qr:
            R = np.linalg.qr(X, mode="r")
            A = R / np.sqrt(X.shape[0])
            w = pm.Flat("w", shape=model.k_fep)
            fe = pm.Deterministic("fe", pt.dot(np.linalg.inv(A), w))
            pm.Potential("fe_prior", pm.logp(pm.Normal.dist(0.0, model.fe_p), fe).sum())
        else:
            fe = pm.Normal("fe", 0.0, model.fe_p, shape=model.k_fep)
        vcp = pm.Normal("vcp", 0.0, model.vcp_p, shape=model.k_vcp)
        if centred:  # (groups with many rows each: their effects are well identified, the non-centred
            # coordinates then correlate the Intercept with every z, and NUTS mixes slowly)
            vc = pm.Normal("vc", 0.0, pt.exp(vcp)[model.ident], shape=model.k_vc)
        else:
            z = pm.Normal("z", 0.0, 1.0, shape=model.k_vc)
            vc = pm.Deterministic("vc", pt.exp(vcp)[model.ident] * z)
        eta = pt.dot(X, fe) + ps.structured_dot(ps.as_sparse_variable(Z), vc[:, None])[:, 0]
        if model.offset is not None:
            eta = eta + model.offset
        if model.family.name == "binomial":
            n = np.ones_like(y) if model.trials is None else model.trials
            pm.Binomial("y", n=n.astype(int), logit_p=eta, observed=y.astype(int))
        else:
            pm.Poisson("y", mu=pt.exp(eta), observed=y.astype(int))
        t0 = time.perf_counter()
        idata = pm.sample(draws=draws, tune=tune, chains=chains, cores=cores, random_seed=seed, target_accept=0.95,
                          progressbar=False, compute_convergence_checks=False)
        seconds = time.perf_counter() - t0
    post = idata.posterior
    out = {"case": case.name, "formula": case.formula, "family": case.family, "fe_p": case.fe_p,
           "vcp_p": case.vcp_p, "draws": draws, "tune": tune, "chains": chains, "seconds": seconds,
           "fe_names": model.fep_names, "vcp_names": model.vcp_names, "vc_names": model.vc_names,
           "seed": seed, "fe_parametrisation": "qr" if qr else "direct",
           "vc_parametrisation": "centred" if centred else "non-centred",
           "command": (f"python benchmarks/accuracy/make_reference.py {case.name} --draws {draws} --tune {tune} "
                       f"--chains {chains} --seed {seed}")}
    for name in ("fe", "vcp", "vc"):
        arr = post[name].values.reshape(-1, post[name].shape[-1])
        out[f"{name}_mean"] = arr.mean(0).tolist()
        out[f"{name}_sd"] = arr.std(0, ddof=1).tolist()
        out[f"{name}_rhat_max"] = float(np.nanmax(az.rhat(post[name]).to_array().values))
        out[f"{name}_ess_min"] = float(np.nanmin(az.ess(post[name]).to_array().values))
        # (tail ESS, of the 5 % and 95 % quantiles: the effects' SDs of a barely informed component follow
        # the tail of its log-SD, which a bulk ESS in the thousands can leave estimated 45 % off)
        out[f"{name}_ess_tail_min"] = float(np.nanmin(az.ess(post[name], method="tail").to_array().values))
    return out


def machine() -> str:
    """The CPU (model name, family/model and BogoMIPS from ``/proc/cpuinfo``: virtual machines often show only
    "AMD EPYC") and the number of cores; the platform's processor where there is no ``/proc/cpuinfo``."""
    import os
    import platform

    try:
        info = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
        model = (f"{info['model name']} (family {info.get('cpu family', '?')} model {info.get('model', '?')}, "
                 f"{float(info.get('bogomips', 'nan')):.0f} BogoMIPS)")
    except (OSError, KeyError, ValueError):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def record_time(name, res, cores, source=None):
    """Add the run's seconds to ``reference/nuts_timing.json`` with this machine (``source``: how it was
    timed, when not by ``--time-only``)."""
    import pymc as pm

    path = HERE / "reference" / "nuts_timing.json"
    timing = json.loads(path.read_text()) if path.exists() else {}
    timing[name] = {"seconds": res["seconds"], "machine": machine(),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "pymc": pm.__version__,
                    "draws": res["draws"], "tune": res["tune"], "chains": res["chains"], "cores": cores}
    if source:
        timing[name]["source"] = source
    path.write_text(json.dumps(timing, indent=1, sort_keys=True) + "\n")


def time_only(names, draws, tune, chains, seed, cores):
    for name in names:
        res = sample(BY_NAME[name], draws, tune, chains, seed=seed, cores=cores)
        record_time(name, res, cores)
        print(name, f"{res['seconds']:.1f}s", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cases", nargs="*")
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--tune", type=int, default=1500)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--skip-existing", action="store_true")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--time-only", action="store_true", help="time the runs into reference/nuts_timing.json")
    args = ap.parse_args()
    names = args.cases or [c.name for c in CASES]
    if args.time_only:
        time_only(names, args.draws, args.tune, args.chains, args.seed, args.cores)
        return
    (HERE / "reference").mkdir(exist_ok=True)
    for name in names:
        path = HERE / "reference" / f"{name}.json"
        if args.skip_existing and path.exists():
            continue
        res = sample(BY_NAME[name], args.draws, args.tune, args.chains, seed=args.seed, cores=args.cores)
        path.write_text(json.dumps(res, indent=1) + "\n")
        record_time(name, res, args.cores, source="the reference run")
        print(name, f"{res['seconds']:.0f}s", "rhat", res["fe_rhat_max"], res["vcp_rhat_max"], res["vc_rhat_max"],
              flush=True)


if __name__ == "__main__":
    main()
