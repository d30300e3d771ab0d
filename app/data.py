"""Reading data into the dashboard: bundled demo data sets and uploaded files.

Everything here is a plain function of its arguments (no session state), so the
same code serves every browser session and the notebook.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


#: Uploads larger than this are refused with a message (stated in the UI).
MAX_UPLOAD_MB = 50
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024

#: A categorical column with more distinct values than this cannot be a fixed effect.
MAX_FIXED_LEVELS = 50


class DataInputError(ValueError):
    """Raised when a file cannot be turned into a usable table (message is shown to the user)."""


@dataclass(frozen=True)
class DemoSpec:
    """A bundled data set and the canonical model the dashboard fits on it first."""

    name: str
    file: str
    response: str
    family: str
    fixed: tuple[str, ...]
    groups: tuple[str, ...]
    trials: str | None = None
    description: str = ""
    categorical: tuple[str, ...] = field(default_factory=tuple)


DEMOS: dict[str, DemoSpec] = {
    d.name: d
    for d in [
        DemoSpec("cbpp", "cbpp.csv", "incidence", "binomial", ("period",), ("herd",), trials="size",
                 description="Contagious bovine pleuropneumonia: new cases out of herd size, 15 herds x 4 periods."),
        DemoSpec("cbpp_long", "cbpp_long.csv", "y", "binomial", ("period",), ("herd",),
                 description="cbpp with one 0/1 row per animal (842 rows)."),
        DemoSpec("grouseticks", "grouseticks.csv", "TICKS", "poisson", ("YEAR", "cHEIGHT"),
                 ("BROOD", "INDEX", "LOCATION"),
                 description="Ticks on red grouse chicks; INDEX is an observation-level effect."),
        DemoSpec("Salamanders", "Salamanders.csv", "count", "poisson", ("mined",), ("site",),
                 description="Salamander counts in streams near mountaintop-removal mining, 23 sites."),
        DemoSpec("Contraception", "Contraception.csv", "use_01", "binomial", ("age", "urban", "livch"),
                 ("district",), description="Contraceptive use in Bangladesh, 60 districts."),
        DemoSpec("VerbAgg", "VerbAgg.csv", "r2_01", "binomial", ("Anger", "Gender", "btype", "situ"),
                 ("id", "item"), description="Verbal aggression items: 316 people x 24 items (crossed)."),
        DemoSpec("guImmun", "guImmun.csv", "immun_01", "binomial",
                 ("kid2p", "mom25p", "ord", "ethn", "momEd", "husEd", "momWork", "rural", "pcInd81"), ("mom", "comm"),
                 description="Child immunisation in Guatemala: 2159 children of 1595 mothers in 161 communities "
                             "(mothers nested in communities; most have one child in the data)."),
    ]
}


def load_demo(name: str) -> pd.DataFrame:
    """Read a bundled data set, with R's factor columns as ordered pandas categoricals.

    Numeric-looking codes (``herd``, ``period``...) become categories, in R's level
    order, so the first level is the reference level as in lme4.
    """
    from app.adapter import load_dataset

    return load_dataset(Path(DEMOS[name].file).stem)


def _file_kind(path: str) -> str:
    """How a file is read, by its name: ``"parquet"``, ``"excel"`` or ``"csv"`` (text, the rest)."""
    suffix = Path(path or "").suffix.lower()
    return "parquet" if suffix in (".parquet", ".pq") else "excel" if suffix in (".xlsx", ".xls") else "csv"


def _n_numeric(df: pd.DataFrame) -> int:
    return sum(pd.api.types.is_numeric_dtype(df[c]) for c in df.columns)


def reader_call(path: str, df: pd.DataFrame | None = None) -> str:
    """The pandas call that reads ``path`` as :func:`read_upload` read it (for the reproducible script):
    Parquet, Excel, or CSV with the separator and decimal mark found (``df.attrs``)."""
    kind = _file_kind(path)
    if kind == "parquet":
        return f"pd.read_parquet({path!r})"
    if kind == "excel":
        return f"pd.read_excel({path!r})"
    options = (df.attrs.get("read_csv", {}) if df is not None else {})
    return f"pd.read_csv({path!r}" + "".join(f", {k}={v!r}" for k, v in options.items()) + ")"


def too_large_message(filename: str, size: int) -> str:
    """What an upload over the limit is told."""
    return f"The file {filename!r} is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_MB} MB."


def read_upload(filename: str, content: bytes) -> pd.DataFrame:
    """Turn uploaded bytes into a DataFrame, or raise DataInputError with a plain message.

    CSV (UTF-8, else Windows' cp1252 or Latin-1, with a note in ``df.attrs["note"]``), Parquet and Excel are read.
    """
    if content is None or len(content) == 0:
        raise DataInputError(f"The file {filename!r} is empty.")
    if len(content) > MAX_UPLOAD_BYTES:
        raise DataInputError(too_large_message(filename, len(content)))
    suffix = Path(filename or "").suffix.lower()
    try:
        kind = _file_kind(filename)
        if kind == "parquet":
            df = pd.read_parquet(io.BytesIO(content))
        elif kind == "excel":
            df = pd.read_excel(io.BytesIO(content))
        else:
            encoding = None
            try:
                text = content.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                # Windows' Excel writes CSV in cp1252 (Latin-1 with a few more signs in 0x80-0x9f): read so, said so
                encoding, bad = "cp1252", exc.start
                try:
                    text = content.decode(encoding)
                except UnicodeDecodeError:
                    encoding, text = "latin-1", content.decode("latin-1")
            if "\x00" in text:
                raise DataInputError(f"The file {filename!r} looks binary, not a CSV text file.")
            df = pd.read_csv(io.StringIO(text))
            first = text.split("\n", 1)[0]
            if df.shape[1] == 1:  # a semicolon- or tab-separated file read as one column
                for sep in (";", "\t", "|"):
                    if sep in first:
                        df = pd.read_csv(io.StringIO(text), sep=sep)
                        df.attrs["read_csv"] = {"sep": sep}
                        if sep != "|":  # decimal commas (-0,123), as spreadsheets write beside ';' or tabs
                            comma = pd.read_csv(io.StringIO(text), sep=sep, decimal=",")
                            if _n_numeric(comma) > _n_numeric(df):
                                df = comma
                                df.attrs["read_csv"] = {"sep": sep, "decimal": ","}
                        break
            if encoding is not None:
                df.attrs["read_csv"] = {**df.attrs.get("read_csv", {}), "encoding": encoding}
                df.attrs["note"] = (f"The file {filename!r} is not UTF-8 text (the byte at position {bad}); it was "
                                    f"read as {'Windows' if encoding == 'cp1252' else 'Latin-1'} text ({encoding}), "
                                    "as Excel on Windows writes CSV: check accented names in the tables.")
    except DataInputError:
        raise
    except ImportError as exc:
        raise DataInputError(f"Reading {suffix} files needs an extra package: {exc}.") from None
    except Exception as exc:  # pandas raises many types for malformed files
        raise DataInputError(f"Could not read {filename!r} as a table: {exc}".strip()) from None
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise DataInputError(f"The file {filename!r} has no data rows.")
    if df.shape[1] < 2:
        raise DataInputError(
            f"The file {filename!r} has only one column ({df.columns[0]!r}); a model needs a response "
            "and a grouping factor. Is the separator a comma?")
    df.columns = [str(c).strip() for c in df.columns]
    if len(set(df.columns)) != len(df.columns):
        raise DataInputError(f"The file {filename!r} has repeated column names.")
    # pandas renames a repeated header (a, a -> a, a.1): said so, as the reader's rename is not the file's name
    # (pandas numbers the repeats 1, 2, ...: a suffix up to the number of columns; `score.2020` is a name)
    names = set(df.columns)
    split = [(c, *c.rsplit(".", 1)) for c in df.columns if "." in c]
    renamed = [c for c, base, k in split if k.isdigit() and 0 < int(k) < len(names) and base in names]
    if renamed and kind != "parquet":  # (CSV and Excel headers are renamed by the reader)
        note = (f"The file {filename!r} repeats column names; the repeats were renamed "
                f"{', '.join(repr(c) for c in renamed[:5])}.")
        df.attrs["note"] = " ".join(filter(None, [df.attrs.get("note", ""), note]))
    return df


def is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def numeric_like(series: pd.Series) -> bool:
    """Whether a column can be treated as numeric: numbers, or text or categories whose values all
    read as finite numbers (R factors such as cbpp's ``period``, codes read as text). Booleans and
    columns without any value cannot."""
    if is_numeric(series):
        return True
    if pd.api.types.is_bool_dtype(series):
        return False
    values = pd.Series(pd.unique(series.dropna()), dtype=object)
    if values.empty or values.map(lambda v: isinstance(v, (bool, np.bool_))).any():
        return False
    parsed = pd.to_numeric(values.astype(str), errors="coerce")
    return bool(np.isfinite(parsed.to_numpy(dtype=float)).all())


def as_numeric(series: pd.Series) -> pd.Series:
    """The numbers of a :func:`numeric_like` column (text read as numbers; missing stays missing)."""
    if is_numeric(series):
        return series
    return pd.to_numeric(series.astype(str).where(series.notna()), errors="coerce")


def column_overview(df: pd.DataFrame, categorical: list[str], numeric: list[str] | None = None) -> pd.DataFrame:
    """One row per column: type as the model sees it, distinct values, missing values, an example.
    ``numeric``: the columns treated as numbers (default: numeric dtype and not in ``categorical``)."""
    rows = []
    for col in df.columns:
        s = df[col]
        treated = (col in numeric) if numeric is not None else (col not in categorical and is_numeric(s))
        kind = "numeric" if treated else "categorical"
        rows.append({
            "column": col,
            "dtype": str(s.dtype),
            "role": kind,
            "distinct": int(s.nunique(dropna=True)),
            "missing": int(s.isna().sum()),
            "example": str(s.dropna().iloc[0]) if s.notna().any() else "",
        })
    return pd.DataFrame(rows)


def default_categorical(df: pd.DataFrame) -> list[str]:
    """Columns that are categorical by dtype (text, category, boolean)."""
    return [c for c in df.columns if not is_numeric(df[c])]


def numeric_summary(values: np.ndarray) -> str:
    return f"min {np.nanmin(values):.3g}, max {np.nanmax(values):.3g}"
