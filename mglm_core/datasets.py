"""The bundled demo data sets (``demo_data/``), with R's factor level order.

See ``demo_data/README.md`` for sources, citations and canonical models.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .errors import DataError

__all__ = ["DATA_DIR", "available", "load"]

DATA_DIR = Path(__file__).resolve().parents[1] / "demo_data"


def available():
    """Names of the bundled data sets."""
    return sorted(p.stem for p in DATA_DIR.glob("*.csv"))


def load(name: str) -> pd.DataFrame:
    """Load a demo data set; factor columns become Categoricals in R's level order."""
    path = DATA_DIR / f"{name}.csv"
    if not path.exists():
        raise DataError(f"`name` must be one of {available()}; got {name!r}.")
    levels = json.loads((DATA_DIR / "factor_levels.json").read_text()).get(name, {})
    df = pd.read_csv(path, dtype={c: str for c in levels})  # codes such as "01" keep their leading zero
    for col, lv in levels.items():
        if col in df:
            df[col] = pd.Categorical(df[col].astype(str), categories=[str(v) for v in lv])
    return df
