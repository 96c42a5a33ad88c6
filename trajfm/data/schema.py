"""The canonical point table every stage reads and writes (see DESIGN.md, "Data contract").

One row per fix, sorted by ``traj_id, t``. Coordinates are WGS84 degrees in ``lon, lat`` order
(x first, like GeoJSON); time is ``datetime64[ns, UTC]`` and is never converted to float seconds.
"""

from __future__ import annotations

import pandas as pd

POINT_COLUMNS = ["traj_id", "obj_id", "t", "lon", "lat", "kind", "source"]
OPTIONAL_COLUMNS = ["sog", "cog", "alt", "mode"]

# Reason codes written to quarantine tables. Stable strings: tests and dashboards key on them.
REASONS = {
    "parse_error": "a field could not be parsed (text in a number, wrong field count)",
    "missing_value": "an id, time or coordinate is empty",
    "nonfinite_coord": "lon or lat is NaN or infinite",
    "coord_out_of_range": "lat outside [-90, 90] or lon outside [-180, 180]",
    "null_island": "lon = lat = 0, a receiver's placeholder, not a position",
    "bad_time": "timestamp unparseable or outside the plausible range",
    "duplicate_fix": "same mover, same time, same position as an earlier fix",
    "duplicate_time": "same mover and time as an earlier fix, different position",
    "speed_outlier": "implied speed from the previous kept fix exceeds the mover kind's maximum",
    "short_trajectory": "segment shorter than the minimum length or duration after splitting",
    "stop": "inside a detected stop (between the stop's first and last fix), removed by the stop split",
    "generalized": "dropped by time generalization: less than generalize_s after the previous kept fix",
    "unknown_kind": "the mover kind has no preprocessing parameters (not a known kind, no '*' entry in params)",
    "source_flagged": "the source itself marks the record as incomplete (Porto MISSING_DATA=True: "
    "fixes are missing, so the times of the fixes after the gap cannot be known)",
}

MIN_TIME = pd.Timestamp("1990-01-01", tz="UTC")  # GPS fixes before this are clock errors
MAX_TIME_AHEAD = pd.Timedelta(days=2)  # fixes more than this in the future are clock errors


def normalize_kind(kind: str) -> str:
    """The canonical spelling of a mover kind: trimmed, lower case (``" Vessel"`` -> ``"vessel"``)."""
    return str(kind).strip().lower()


def normalize_kinds(kind: pd.Series) -> pd.Series:
    """A ``kind`` column with every value in its canonical spelling (:func:`normalize_kind`);
    returned as is when it already is (the usual case: only the categories are looked at)."""
    values = kind.cat.categories if isinstance(kind.dtype, pd.CategoricalDtype) else kind.dropna().unique()
    if all(isinstance(v, str) and v == normalize_kind(v) for v in values):
        return kind
    return kind.astype("string").str.strip().str.lower().astype("category")


def empty_points() -> pd.DataFrame:
    """A zero-row frame with the canonical dtypes."""
    return pd.DataFrame(
        {
            "traj_id": pd.Series(dtype="string"),
            "obj_id": pd.Series(dtype="string"),
            "t": pd.Series(dtype="datetime64[ns, UTC]"),
            "lon": pd.Series(dtype="float64"),
            "lat": pd.Series(dtype="float64"),
            "kind": pd.Series(dtype="category"),
            "source": pd.Series(dtype="category"),
        }
    )


def to_canonical(df: pd.DataFrame) -> pd.DataFrame:
    """Cast a frame holding the canonical columns to the canonical dtypes and order.

    Extra optional columns (sog, cog, alt, mode) are kept as float/strings after the canonical ones.
    """
    missing = [c for c in POINT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"points table lacks canonical columns {missing}")
    out = pd.DataFrame(
        {
            "traj_id": df["traj_id"].astype("string"),
            "obj_id": df["obj_id"].astype("string"),
            "t": pd.to_datetime(df["t"], utc=True).astype("datetime64[ns, UTC]"),
            "lon": df["lon"].astype("float64"),
            "lat": df["lat"].astype("float64"),
            "kind": df["kind"].astype("string").astype("category"),
            "source": df["source"].astype("string").astype("category"),
        }
    )
    for col in OPTIONAL_COLUMNS:
        if col in df.columns:
            out[col] = df[col].astype("string") if col == "mode" else df[col].astype("float64")
    return out.reset_index(drop=True)


def time_ns(t: pd.Series):
    """int64 nanoseconds since the epoch (UTC) of a datetime column, whatever its unit or zone.

    Exact: no float seconds on the way (the tutorial's float32 epoch-seconds trap).
    """
    import numpy as np

    if not isinstance(t.dtype, pd.DatetimeTZDtype):
        t = pd.to_datetime(t, utc=True)
    return t.dt.tz_convert("UTC").to_numpy(dtype="datetime64[ns]").view(np.int64)
