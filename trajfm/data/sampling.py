"""Sampling rate is a property of the data: the resampling rule and the coarser views of pre-training.

**The rule** (``trajfm.data.clean.clean_partition``, step 7): a source's *native interval* is the
median time between consecutive fixes of its trajectories (positive steps, over the whole source:
``source_native_interval_s``; the preprocess stage measures it over the whole ingest output, so
the result does not depend on partitioning). Every piece of a source is resampled at its kind's
``interval_s`` when the native interval is at most ``upsample_tolerance * interval_s``;
otherwise at the smallest whole multiple of ``interval_s`` at or above the native interval. So a
720 s AIS source gets a 720 s grid, not a 60 s one (which would make constant velocity exact on
11 of every 12 steps), hourly buffalo get 3600 s instead of the animal default of 600 s, and 2 s
GeoLife keeps the person default of 10 s (coarser than native: fine).

The default tolerance, ``DEFAULT_UPSAMPLE_TOLERANCE = 1.5``, keeps the demo identical: the five
embedded AIS files have native intervals of 70-80 s (medians; their tracks range from 62 s to
721 s), all within 1.5 x the vessel default of 60 s. Deciding per trajectory instead would move
740 of the demo's 2,354 pieces to coarser grids (measured in ``docs/corpus.md``). Pass
``upsample_tolerance: .inf`` for the old fixed grid, ``1.0`` never to go finer than native.

``NATIVE_RESAMPLING`` (``interval_s=1``, ``upsample_tolerance=1``) resamples each source at its
own native interval rounded up to a whole second: what pre-training uses before
``coarsen_views``.

**Coarser views** (``coarsen_views``): each trajectory at its native sampling and at
``m`` times it for each multiplier ``m`` of a corpus' ``coarsen``, as separate trajectories
``<traj_id>@x<m>`` (``m = 1`` keeps ``<traj_id>``). A view keeps every ``m``-th fix of its
trajectory (from the first), so it is never finer than the input and invents no position; a
view with fewer than ``min_points`` fixes is left out and counted. Accounting per multiplier:
``rows_in == rows_kept + rows_skipped + rows_in_short_views``.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

NS_PER_S = 1_000_000_000
DEFAULT_UPSAMPLE_TOLERANCE = 1.5
NATIVE_RESAMPLING = {"interval_s": 1.0, "upsample_tolerance": 1.0}
VIEW_SEPARATOR = "@x"


def median_step_ns(codes: np.ndarray, t_ns: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Median positive time step (int64 ns) within trajectories, per group.

    ``codes`` (trajectory), ``t_ns`` sorted by ``codes`` then time; ``group`` (e.g. the source
    code of each row, constant along a trajectory) in ``0..n_groups-1``. A group without a
    positive step gets 0.
    """
    out = np.zeros(int(n_groups), dtype=np.int64)
    if len(t_ns) < 2:
        return out
    dt = t_ns[1:] - t_ns[:-1]
    missing = np.iinfo(np.int64).min  # NaT
    ok = (codes[1:] == codes[:-1]) & (dt > 0) & (group[1:] >= 0) & (t_ns[:-1] != missing)
    dt, g = dt[ok], group[1:][ok]
    if not len(dt):
        return out
    order = np.lexsort((dt, g))
    dt, g = dt[order], g[order]
    present, head, k = np.unique(g, return_index=True, return_counts=True)
    lo = dt[head + (k - 1) // 2]
    hi = dt[head + k // 2]
    out[present] = lo + (hi - lo) // 2
    return out


def source_native_interval_s(points: pd.DataFrame) -> dict[str, float]:
    """Native interval of each source: median seconds between consecutive fixes of a trajectory
    (positive steps only), over all of the source's trajectories. Sources with no step are left out.

    ``points``: canonical points (at least ``traj_id, t, source``), any row order.
    """
    if len(points) == 0:
        return {}
    traj_codes, _ = pd.factorize(points["traj_id"], sort=False)
    src_codes, src_names = pd.factorize(points["source"], sort=True)
    t = points["t"]
    t_ns = t.array.asi8 if hasattr(t.array, "asi8") else pd.to_datetime(t, utc=True).array.asi8
    t_ns = np.asarray(t_ns, dtype=np.int64)
    order = np.lexsort((t_ns, traj_codes))
    med = median_step_ns(traj_codes[order], t_ns[order], src_codes[order], len(src_names))
    return {str(name): float(m) / NS_PER_S for name, m in zip(src_names, med) if m > 0}


def effective_interval_ns(kind_interval_ns: np.ndarray, native_ns: np.ndarray, tolerance: np.ndarray) -> np.ndarray:
    """The resampling interval of each piece under the rule (see the module docstring).

    ``kind_interval_ns`` where ``native_ns <= tolerance * kind_interval_ns`` (or the piece has no
    step), else ``ceil(native_ns / kind_interval_ns) * kind_interval_ns``.
    """
    kind_interval_ns = np.asarray(kind_interval_ns, dtype=np.int64)
    native_ns = np.asarray(native_ns, dtype=np.int64)
    tolerance = np.asarray(tolerance, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        coarser = (native_ns > 0) & (native_ns.astype(np.float64) > tolerance * kind_interval_ns.astype(np.float64))
    multiple = -(-native_ns // np.maximum(kind_interval_ns, 1))
    return np.where(coarser, multiple * kind_interval_ns, kind_interval_ns)


def native_interval_s(points: pd.DataFrame) -> pd.Series:
    """Median time between consecutive fixes of each trajectory, seconds (index: ``traj_id``).

    ``points``: canonical points; sorted by ``traj_id, t`` or not. A one-fix trajectory is NaN.
    """
    df = points[["traj_id", "t"]].sort_values(["traj_id", "t"], kind="stable")
    dt = df.groupby("traj_id", sort=True, observed=True)["t"].diff().dt.total_seconds()
    return dt.groupby(df["traj_id"], sort=True, observed=True).median()


def view_id(traj_id: str, multiplier: int) -> str:
    """``<traj_id>`` for ``m = 1``, ``<traj_id>@x<m>`` otherwise."""
    return str(traj_id) if int(multiplier) == 1 else f"{traj_id}{VIEW_SEPARATOR}{int(multiplier)}"


def coarsen_views(
    points: pd.DataFrame, multipliers: Iterable[int] = (1, 2, 4), min_points: int = 2
) -> tuple[pd.DataFrame, dict]:
    """Each trajectory at its native sampling times each multiplier, as separate trajectories.

    ``points``: canonical points (any extra columns are carried), typically the preprocess output
    at native resampling (``NATIVE_RESAMPLING``) or cleaned fixes. View ``m`` of a trajectory is
    its fixes ``0, m, 2m, ...`` in time order, ``traj_id`` ``<traj_id>@x<m>`` (``m = 1``: the
    trajectory itself). Views with fewer than ``min_points`` fixes are left out.

    Returns ``(views, counts)``: ``views`` sorted by ``traj_id, t`` with a ``multiplier`` column
    (int); ``counts[m]`` = ``{"rows_in", "rows_kept", "rows_skipped", "rows_in_short_views",
    "n_views", "n_short_views"}`` with ``rows_in == rows_kept + rows_skipped + rows_in_short_views``.
    """
    mults = [int(m) for m in multipliers]
    if not mults or any(m < 1 for m in mults) or len(set(mults)) != len(mults):
        raise ValueError(f"multipliers must be distinct whole numbers >= 1, got {list(multipliers)!r}")
    if int(min_points) < 1:
        raise ValueError(f"min_points must be >= 1, got {min_points!r}")
    df = points.sort_values(["traj_id", "t"], kind="stable").reset_index(drop=True)
    ids = df["traj_id"].astype("string").to_numpy(dtype=object)
    n = len(df)
    new_traj = np.ones(n, dtype=bool)
    if n:
        new_traj[1:] = ids[1:] != ids[:-1]
    group = np.cumsum(new_traj) - 1
    first = np.flatnonzero(new_traj)
    rank = np.arange(n) - first[group] if n else np.zeros(0, np.int64)
    frames, counts = [], {}
    for m in sorted(mults):
        on_stride = rank % m == 0
        per_view = np.bincount(group[on_stride], minlength=len(first)) if n else np.zeros(0, np.int64)
        long_enough = per_view >= int(min_points)
        keep = on_stride & long_enough[group] if n else on_stride
        view = df[keep].copy()
        view["traj_id"] = pd.array([view_id(t, m) for t in ids[keep]], dtype="string")
        view["multiplier"] = np.int64(m)
        frames.append(view)
        short_rows = int(per_view[~long_enough].sum())
        counts[m] = {
            "rows_in": int(n),
            "rows_kept": int(keep.sum()),
            "rows_skipped": int(n - on_stride.sum()),
            "rows_in_short_views": short_rows,
            "n_views": int(long_enough.sum()),
            "n_short_views": int((~long_enough).sum()),
        }
        c = counts[m]
        if c["rows_in"] != c["rows_kept"] + c["rows_skipped"] + c["rows_in_short_views"]:
            raise AssertionError(f"coarsen_views lost rows at x{m}: {c}")
    out = pd.concat(frames, ignore_index=True) if frames else df.assign(multiplier=np.int64(1))
    out = out.sort_values(["traj_id", "t"], kind="stable").reset_index(drop=True)
    for col in ("kind", "source"):
        if col in df and isinstance(df[col].dtype, pd.CategoricalDtype):
            out[col] = out[col].astype(df[col].dtype)
    return out, counts
