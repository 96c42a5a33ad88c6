"""Between frames and the arrays the cleaning steps work on: the canonical input (dtypes, content
order, trajectory codes), the output points and quarantine tables, and the counts of a partition.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from trajfm.data.clean_steps import CLEAN_REASONS, REASON_LIST
from trajfm.data.schema import OPTIONAL_COLUMNS, empty_points, to_canonical


def empty_clean_quarantine(columns: list[str] | None = None) -> pd.DataFrame:
    """Zero-row quarantine of the clean step: the input columns plus ``reason, detail``."""
    base = to_canonical(empty_points())
    for col in columns or []:
        if col in OPTIONAL_COLUMNS and col not in base:
            base[col] = pd.Series(dtype="string" if col == "mode" else "float64")
    base["reason"] = pd.Series(dtype="string")
    base["detail"] = pd.Series(dtype="string")
    return base


def empty_counts() -> dict:
    return {
        "rows_in": 0,
        "rows_kept": 0,
        "rows_quarantined": 0,
        "quarantined_by_reason": {r: 0 for r in CLEAN_REASONS},
        "rows_out": 0,
        "n_trajectories": 0,
        "n_segments": 0,
        "n_input_trajectories": 0,
        "n_native_interval": 0,  # kept pieces resampled at their native interval, not the kind's
    }


def merge_counts(parts: list[dict]) -> dict:
    """Sum the counts of several ``clean_partition`` calls."""
    total = empty_counts()
    for c in parts:
        for key, value in c.items():
            if key == "quarantined_by_reason":
                for reason, n in value.items():
                    total[key][reason] = total[key].get(reason, 0) + int(n)
            else:
                total[key] += int(value)
    return total


def points_frame(df, new_ids, head, piece, grid_t, out_lon, out_lat) -> pd.DataFrame:
    """Resampled points; ``head`` is one input row of each kept piece (for its ids and kind)."""
    import pyarrow as pa

    take = pa.array(piece, type=pa.int64())
    traj = pa.array(new_ids, type=pa.large_string()).take(take)
    obj = arrow_strings(df["obj_id"]).take(pa.array(head, type=pa.int64())).take(take)
    return pd.DataFrame(
        {
            "traj_id": pd.arrays.ArrowStringArray(traj),
            "obj_id": pd.arrays.ArrowStringArray(obj),
            "t": pd.DatetimeIndex(grid_t.view("datetime64[ns]")).tz_localize("UTC"),
            "lon": out_lon,
            "lat": out_lat,
            "kind": _categorical_take(df["kind"], head, piece),
            "source": _categorical_take(df["source"], head, piece),
        }
    )


def clean_quarantine_frame(df, row_of, reason, notes) -> pd.DataFrame:
    rejected = np.flatnonzero(reason > 0)  # sorted rows, so the quarantine is in content order
    detail = np.empty(len(reason), dtype=object)
    for rows, text in notes:
        detail[rows] = text if isinstance(text, str) else np.asarray(text, dtype=object)
    quarantine = df.take(row_of[rejected]).reset_index(drop=True)
    quarantine["reason"] = pd.Series(np.asarray(REASON_LIST, dtype=object)[reason[rejected]], dtype="string")
    quarantine["detail"] = pd.Series(detail[rejected], dtype="string")
    return quarantine


def arrow_strings(column: pd.Series):
    """The pyarrow array behind a string column (no copy for Arrow-backed strings)."""
    import pyarrow as pa

    arr = pa.array(column.array) if not hasattr(column.array, "_pa_array") else column.array._pa_array
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def factorize_sorted(ids: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Codes of ``ids`` in sorted-name order (-1 for missing) and the sorted names.

    A column already sorted (as ingest writes it) is coded from its change points, with no hashing.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = arrow_strings(ids)
    if len(arr) > 1 and arr.null_count == 0:
        prev, nxt = arr.slice(0, len(arr) - 1), arr.slice(1)
        if pc.all(pc.less_equal(prev, nxt)).as_py():
            change = np.r_[True, pc.not_equal(prev, nxt).to_numpy(zero_copy_only=False)]
            names = pc.filter(arr, pa.array(change)).to_pylist()
            return np.cumsum(change) - 1, names
    codes, names = pd.factorize(ids, sort=True)
    return codes, [str(x) for x in names]


def content_order(codes, t, lon, lat, numeric_optional) -> np.ndarray | None:
    """Row order by (trajectory, time, lon, lat, optional values); None when already in it.

    The same order as one lexsort on every key, but only equal-time runs are sorted on the
    position and optional keys, and an input already sorted by (trajectory, time) costs one pass.
    """
    n = len(codes)
    same_traj = codes[1:] == codes[:-1]
    in_order = bool(((codes[1:] > codes[:-1]) | (same_traj & (t[1:] >= t[:-1]))).all())
    order = None if in_order else np.lexsort((t, codes))
    c = codes if order is None else codes[order]
    tt = t if order is None else t[order]
    tie = np.zeros(n, dtype=bool)
    tie[1:] = (c[1:] == c[:-1]) & (tt[1:] == tt[:-1])
    if not tie.any():
        return order
    order = np.arange(n) if order is None else order
    in_run = tie.copy()
    in_run[:-1] |= tie[1:]  # the first row of each run of equal times, too
    run_rows = np.flatnonzero(in_run)
    run_id = np.cumsum(~tie[run_rows])
    src = order[run_rows]
    keys = [k[src] for k in reversed(numeric_optional)] + [lat[src], lon[src], run_id]
    order[run_rows] = src[np.lexsort(keys)]
    return order


def time_ns(t: pd.Series) -> np.ndarray:
    return t.to_numpy(dtype="datetime64[ns]", na_value=np.datetime64("NaT")).view(np.int64)


def _categorical_take(column: pd.Series, head: np.ndarray, piece: np.ndarray) -> pd.Categorical:
    """``column[head[piece]]`` of a categorical column, through its codes; unused categories dropped."""
    codes = column.cat.codes.to_numpy()[head]
    used = np.zeros(len(column.cat.categories), dtype=bool)
    used[codes[codes >= 0]] = True
    remap = np.where(codes >= 0, (np.cumsum(used) - 1)[codes], -1)
    return pd.Categorical.from_codes(remap[piece], categories=column.cat.categories[used])


def canonical_input(df: pd.DataFrame) -> pd.DataFrame:
    """``schema.to_canonical`` unless the frame already has the canonical dtypes (saves casts)."""
    expected = to_canonical(empty_points()).dtypes
    already = all(
        (str(df[c].dtype) == "category") if str(dtype) == "category" else df[c].dtype == dtype
        for c, dtype in expected.items()
    ) and all(df[c].dtype == "float64" for c in df.columns if c in OPTIONAL_COLUMNS and c != "mode")
    return df.reset_index(drop=True) if already and "mode" not in df.columns else to_canonical(df)
