"""Great Expectations suites for the canonical point table, kept as code.

Two stages:

* ``raw`` (after ingest): ids, time and coordinates present; ``lon`` in [-180, 180] and ``lat``
  in [-90, 90] degrees (WGS84); timestamps plausible (a warning, not a gate).
* ``processed`` (after cleaning, splitting, resampling): the raw checks plus, per trajectory,
  strictly increasing time, a speed between consecutive fixes of at most ``v_max_mps`` metres
  per second, and at least ``min_points`` fixes.

GX 1.x has no groupwise expectations, so the per-trajectory checks run on columns that
:func:`derive_columns` computes with pandas in the frame's own row order (never re-sorted, so a
disordered trajectory is caught rather than repaired):

============  ==============================================================================
``dt_s``      seconds since the previous fix of the same trajectory (null at its first fix)
``speed_mps`` great-circle metres / ``dt_s`` from the previous fix (null where ``dt_s <= 0``)
``traj_len``  number of fixes of the trajectory, on its first row only (null elsewhere), so
              that unexpected counts and ``mostly`` for the length check count trajectories
============  ==============================================================================

Every expectation carries ``meta = {"check": NAME, "severity": "critical" | "warning"}``; only
critical failures stop a pipeline (see :func:`trajfm.quality.gate.gate`). Both severities and
``mostly`` thresholds are parameters, keyed by check name (see :data:`DEFAULT_PARAMS`).
Great Expectations is imported inside the suite builders, so importing this module is cheap.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from trajfm.data.schema import MAX_TIME_AHEAD, MIN_TIME
from trajfm.geo import haversine_m

if TYPE_CHECKING:  # pragma: no cover - typing only
    import great_expectations as gx

STAGES = ("raw", "processed")
REQUIRED_COLUMNS = ["traj_id", "obj_id", "t", "lon", "lat"]

# Check names: the keys of params["mostly"] and params["severity"] and the ``check`` in meta.
RAW_CHECKS = ("not_null", "lon_range", "lat_range", "time_range")
PROCESSED_CHECKS = RAW_CHECKS + ("time_increasing", "speed", "traj_length")

DEFAULT_PARAMS: dict[str, Any] = {
    # Maximum plausible speed between consecutive fixes, metres per second. 100 m/s (360 km/h)
    # admits every surface mover; pass the kind's own limit (e.g. ~26 m/s for vessels).
    "v_max_mps": 100.0,
    # Minimum number of fixes per trajectory after processing.
    "min_points": 2,
    # Fraction of rows (for traj_length: of trajectories) that must meet each check.
    "mostly": {check: 1.0 for check in PROCESSED_CHECKS},
    # "critical" failures fail the gate; "warning" failures are only reported.
    "severity": {
        "not_null": "critical",
        "lon_range": "critical",
        "lat_range": "critical",
        "time_range": "warning",  # ingest quarantines bad clocks; reaching here is suspicious
        "time_increasing": "critical",
        "speed": "critical",
        "traj_length": "critical",
    },
}
SEVERITIES = ("critical", "warning")


def resolve_params(params: dict | None = None) -> dict:
    """Defaults overlaid with ``params``; ``mostly``/``severity`` may name only some checks.

    Keys other than those in :data:`DEFAULT_PARAMS` are ignored, so a stage can pass its whole
    parameter dict. Raises ``ValueError`` for an unknown check name or an out-of-range value.
    """
    out = copy.deepcopy(DEFAULT_PARAMS)
    params = dict(params or {})
    for key in ("v_max_mps", "min_points"):
        if params.get(key) is not None:
            out[key] = params[key]
    for key in ("mostly", "severity"):
        overrides = params.get(key) or {}
        unknown = sorted(set(overrides) - set(PROCESSED_CHECKS))
        if unknown:
            raise ValueError(f"params[{key!r}] names unknown checks {unknown}; known: {list(PROCESSED_CHECKS)}")
        out[key].update(overrides)

    out["v_max_mps"] = float(out["v_max_mps"])
    out["min_points"] = int(out["min_points"])
    if not out["v_max_mps"] > 0:
        raise ValueError(f"v_max_mps must be > 0 m/s, got {out['v_max_mps']}")
    if out["min_points"] < 1:
        raise ValueError(f"min_points must be >= 1, got {out['min_points']}")
    for check, mostly in out["mostly"].items():
        out["mostly"][check] = float(mostly)
        if not 0.0 <= out["mostly"][check] <= 1.0:
            raise ValueError(f"mostly[{check!r}] must be in [0, 1], got {mostly}")
    for check, severity in out["severity"].items():
        if severity not in SEVERITIES:
            raise ValueError(f"severity[{check!r}] must be one of {SEVERITIES}, got {severity!r}")
    return out


def derive_columns(
    df: pd.DataFrame,
    *,
    carry: pd.DataFrame | None = None,
    totals: dict | None = None,
    seen: set | None = None,
    extra: list[str] | tuple = (),
    summary: bool = False,
):
    """The frame GX validates: the required columns plus ``dt_s``, ``speed_mps``, ``traj_len``.

    Differences are taken between consecutive rows of a trajectory *in the given row order*.
    The index is reset to 0..n-1 so GX's unexpected row indices map back to row positions.
    Raises ``ValueError`` when a required column is missing. ``extra``: more columns of ``df``
    to keep (those it lacks are skipped).

    For a partition of a larger table (``trajfm.quality.partitioned``): ``carry`` holds, per
    ``traj_id`` (columns ``traj_id, t, lon, lat``), the fix that precedes this frame's first fix
    of that trajectory in the whole table; ``totals`` maps a ``traj_id`` to its row count in
    the whole table; ``seen`` names trajectories whose first row lies before this frame (their
    ``traj_len`` is reported there). ``summary=True`` also returns, per ``traj_id`` of this
    frame, its row ``count`` here and its last fix (``last_t, last_lon, last_lat``).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"points table lacks required columns {missing}")
    keep = REQUIRED_COLUMNS + [c for c in dict.fromkeys(extra) if c in df.columns and c not in REQUIRED_COLUMNS]
    out = df[keep].reset_index(drop=True)
    t = out["t"]
    if not isinstance(t.dtype, pd.DatetimeTZDtype):
        t = pd.to_datetime(t, utc=True, errors="coerce")
    lon = pd.to_numeric(out["lon"], errors="coerce").astype("float64")
    lat = pd.to_numeric(out["lat"], errors="coerce").astype("float64")
    key = out["traj_id"]

    n_carry = 0 if carry is None else len(carry)
    if n_carry:  # the preceding fixes go first, so the frame's first fix of each diffs against them
        before = lambda a, b: pd.concat([pd.Series(a).reset_index(drop=True), b], ignore_index=True)  # noqa: E731
        k_all = before(carry["traj_id"].astype(key.dtype), key)
        t_all = before(pd.to_datetime(carry["t"], utc=True).astype(t.dtype), t)
        lon_all, lat_all = before(carry["lon"].astype("float64"), lon), before(carry["lat"].astype("float64"), lat)
    else:
        k_all, t_all, lon_all, lat_all = key, t, lon, lat
    dt_s = t_all.groupby(k_all, sort=False).diff().dt.total_seconds()
    prev_lon = lon_all.groupby(k_all, sort=False).shift()
    prev_lat = lat_all.groupby(k_all, sort=False).shift()
    dist_m = pd.Series(haversine_m(prev_lon, prev_lat, lon_all, lat_all), index=k_all.index)
    speed_mps = (dist_m / dt_s).where(dt_s > 0)

    counts = key.value_counts(dropna=True)
    lengths = counts
    if totals:
        lengths = counts.astype("float64")
        lengths.update(pd.Series(totals, dtype="float64"))
    first_row = ~key.duplicated() & key.notna()
    if seen:
        first_row &= ~key.isin(list(seen))
    traj_len = key.map(lengths).astype("float64").where(first_row)

    out["dt_s"] = dt_s.iloc[n_carry:].to_numpy(dtype="float64")
    out["speed_mps"] = speed_mps.iloc[n_carry:].to_numpy(dtype="float64")
    out["traj_len"] = traj_len
    if not summary:
        return out
    last = pd.DataFrame({"traj_id": key, "last_t": t, "last_lon": lon, "last_lat": lat})
    last = last[key.notna()].drop_duplicates("traj_id", keep="last").reset_index(drop=True)
    last.insert(1, "count", last["traj_id"].map(counts).astype("int64"))
    return out, last


def _meta(check: str, params: dict) -> dict:
    return {"check": check, "severity": params["severity"][check]}


def _raw_expectations(params: dict) -> list:
    import great_expectations as gx

    e = gx.expectations
    mostly = params["mostly"]
    out = [
        e.ExpectColumnValuesToNotBeNull(column=col, mostly=mostly["not_null"], meta=_meta("not_null", params))
        for col in REQUIRED_COLUMNS
    ]
    out += [
        e.ExpectColumnValuesToBeBetween(
            column="lon", min_value=-180.0, max_value=180.0, mostly=mostly["lon_range"], meta=_meta("lon_range", params)
        ),
        e.ExpectColumnValuesToBeBetween(
            column="lat", min_value=-90.0, max_value=90.0, mostly=mostly["lat_range"], meta=_meta("lat_range", params)
        ),
        e.ExpectColumnValuesToBeBetween(
            column="t",
            min_value=MIN_TIME,
            # Fixed when the suite is built: a stored suite keeps the bound it was made with.
            max_value=pd.Timestamp.now(tz="UTC").floor("D") + MAX_TIME_AHEAD,
            mostly=mostly["time_range"],
            meta=_meta("time_range", params),
        ),
    ]
    return out


def raw_points_suite(params: dict | None = None, name: str = "trajfm_raw_points") -> "gx.ExpectationSuite":
    """Suite for ingested points: no nulls in ids/t/lon/lat, coordinates within WGS84 bounds."""
    import great_expectations as gx

    params = resolve_params(params)
    suite = gx.ExpectationSuite(name=name, meta={"stage": "raw", "params": jsonable(params)})
    for expectation in _raw_expectations(params):
        suite.add_expectation(expectation)
    return suite


def processed_suite(params: dict | None = None, name: str = "trajfm_processed_points") -> "gx.ExpectationSuite":
    """Suite for processed trajectories: the raw checks plus time order, speed and length.

    Validates a frame from :func:`derive_columns`. ``params``: ``v_max_mps`` (m/s),
    ``min_points`` (fixes), ``mostly`` and ``severity`` per check (see :data:`DEFAULT_PARAMS`).
    """
    import great_expectations as gx

    params = resolve_params(params)
    e = gx.expectations
    mostly = params["mostly"]
    suite = gx.ExpectationSuite(name=name, meta={"stage": "processed", "params": jsonable(params)})
    for expectation in _raw_expectations(params):
        suite.add_expectation(expectation)
    suite.add_expectation(
        e.ExpectColumnValuesToBeBetween(
            column="dt_s",
            min_value=0.0,
            strict_min=True,
            mostly=mostly["time_increasing"],
            meta=_meta("time_increasing", params),
        )
    )
    suite.add_expectation(
        e.ExpectColumnValuesToBeBetween(
            column="speed_mps",
            min_value=0.0,
            max_value=params["v_max_mps"],
            mostly=mostly["speed"],
            meta=_meta("speed", params),
        )
    )
    suite.add_expectation(
        e.ExpectColumnValuesToBeBetween(
            column="traj_len",
            min_value=float(params["min_points"]),
            mostly=mostly["traj_length"],
            meta=_meta("traj_length", params),
        )
    )
    return suite


def suite_for(stage: str, params: dict | None = None) -> "gx.ExpectationSuite":
    """The suite for ``stage`` ("raw" or "processed")."""
    if stage == "raw":
        return raw_points_suite(params)
    if stage == "processed":
        return processed_suite(params)
    raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")


def jsonable(obj: Any) -> Any:
    """Plain JSON types (numpy scalars and Timestamps become Python numbers and ISO strings)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (pd.Timestamp, pd.Timedelta)):
        return obj.isoformat()
    if obj is pd.NA or obj is pd.NaT:
        return None
    return obj
