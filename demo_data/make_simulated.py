"""Write the simulated demo data sets and their true parameters (``python demo_data/make_simulated.py``)."""
import json
from pathlib import Path

from mglm_core.simulate import simulate_glmm

HERE = Path(__file__).resolve().parent
SETS = {
    "sim_binomial": dict(family="binomial", n_groups=40, group_size=25, sd=0.8, seed=1),
    "sim_poisson_crossed": dict(family="poisson", n_groups=30, group_size=20, n_groups2=15, sd=0.6, sd2=0.4,
                                seed=2),
}

if __name__ == "__main__":
    truth = {}
    for name, kw in SETS.items():
        sim = simulate_glmm(**kw)
        sim.data.to_csv(HERE / f"{name}.csv", index=False)
        truth[name] = {"call": kw, "formula": sim.formula, "family": sim.family, "fe": sim.fe, "sd": sim.sd}
    (HERE / "simulated_truth.json").write_text(json.dumps(truth, indent=1) + "\n")
