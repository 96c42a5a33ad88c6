"""Per-mover cleaning, splitting and resampling of canonical points, vectorized over a whole frame.

Steps, in order, with MovingPandas names and semantics (MovingPandas is the reference; this is
the fast path: numpy over all trajectories of a frame at once, no Python loop per point):

1. **Duplicates**: a fix with the same ``traj_id``, time and position as an earlier one is
   ``duplicate_fix``; of several fixes at the same time with different positions the first (in
   ``lon, lat`` order, so the choice is deterministic) is kept, the others are ``duplicate_time``.
2. **Speed outliers** (``OutlierCleaner(traj).clean(v_max=...)``): walking the track in time, a
   fix whose great-circle speed from the *previous kept* fix exceeds ``v_max_mps`` is dropped and
   the previous kept fix stays the reference, exactly as MovingPandas' loop does. Unlike
   MovingPandas, a track is never restored when it drops to one fix (the short filter removes it).
3. **Gap split** (``ObservationGapSplitter(traj).split(gap=...)``): a new segment starts where
   the time since the previous kept fix is greater than ``max_gap_s``; segment ``k`` (0-based,
   counting every segment of the track) becomes ``traj_id = f"{traj_id}_{k}"``.
4. **Minimum length**: a segment with fewer than ``min_points`` fixes, lasting less than
   ``min_duration_s``, or giving fewer than 2 resampled fixes is quarantined
   (``short_trajectory``) fix by fix.
5. **Resampling** to ``interval_s``: fixes at every multiple of the interval since the Unix epoch
   inside the segment's time span, lon/lat interpolated linearly in time between the two
   surrounding fixes (longitude across the antimeridian the short way round).

Accounting: ``rows_in == rows_kept + rows_quarantined`` where a kept row is an input fix inside an
output segment; ``rows_out`` (resampled fixes) is counted separately. Distances are haversine
metres (``trajfm.geo``), times int64 nanoseconds until a difference is taken.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Mapping, Union

import numpy as np
import pandas as pd

from trajfm.data.schema import OPTIONAL_COLUMNS, POINT_COLUMNS, empty_points, to_canonical
from trajfm.geo import haversine_m

NS_PER_S = 1_000_000_000
CLEAN_REASONS = ("duplicate_fix", "duplicate_time", "speed_outlier", "short_trajectory")
_SEARCH_WINDOW = 32  # fixes examined per pass while looking for the end of an outlier run


@dataclass(frozen=True)
class PreprocessParams:
    """Cleaning thresholds for one kind of mover.

    ``v_max_mps``: speed above which a fix is an outlier, metres per second.
    ``max_gap_s``: observation gap (seconds) above which a track is split.
    ``interval_s``: resampling interval, seconds.
    ``min_points``: fewest original fixes a segment needs to be kept.
    ``min_duration_s``: shortest segment duration kept, seconds.
    """

    v_max_mps: float = 30.0
    max_gap_s: float = 1800.0
    interval_s: float = 60.0
    min_points: int = 10
    min_duration_s: float = 600.0

    def __post_init__(self) -> None:
        for name in ("v_max_mps", "max_gap_s", "interval_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.min_points < 1 or self.min_duration_s < 0:
            raise ValueError(f"min_points must be >= 1 and min_duration_s >= 0, got {self}")
        if round(self.interval_s * NS_PER_S) < 1:
            raise ValueError(f"interval_s {self.interval_s} is below a nanosecond")

    @classmethod
    def for_kind(cls, kind: str, **overrides) -> "PreprocessParams":
        """Defaults for ``kind`` (see ``KIND_DEFAULTS``) with ``overrides`` applied."""
        if kind not in KIND_DEFAULTS:
            raise ValueError(f"no default preprocessing parameters for kind {kind!r}; known: {sorted(KIND_DEFAULTS)}")
        return replace(KIND_DEFAULTS[kind], **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


# Defaults per mover kind. Speeds are generous ceilings for the kind (a fix implying more is a
# position error); gaps and intervals follow each kind's usual sampling.
KIND_DEFAULTS: dict[str, PreprocessParams] = {
    # AIS: ~60-180 s reports; 30 m/s = 58 kn, above all but a few fast craft.
    "vessel": PreprocessParams(v_max_mps=30.0, max_gap_s=1800.0, interval_s=60.0, min_points=10, min_duration_s=600.0),
    # Phone GPS of people (GeoLife-like, 1-5 s): 50 m/s keeps trips on trains and highways.
    "person": PreprocessParams(v_max_mps=50.0, max_gap_s=300.0, interval_s=10.0, min_points=10, min_duration_s=120.0),
    # Cars and taxis (15-180 s fixes): 60 m/s = 216 km/h.
    "vehicle": PreprocessParams(v_max_mps=60.0, max_gap_s=600.0, interval_s=30.0, min_points=10, min_duration_s=300.0),
    # City buses (10-60 s AVL fixes): 35 m/s = 126 km/h.
    "bus": PreprocessParams(v_max_mps=35.0, max_gap_s=600.0, interval_s=30.0, min_points=10, min_duration_s=300.0),
    # GPS-tagged birds (minutes to hours between fixes): 40 m/s = 144 km/h ground speed.
    "bird": PreprocessParams(v_max_mps=40.0, max_gap_s=21600.0, interval_s=900.0, min_points=10, min_duration_s=3600.0),
    # ADS-B aircraft (1-60 s): 350 m/s covers jets with a strong tail wind.
    "aircraft": PreprocessParams(v_max_mps=350.0, max_gap_s=600.0, interval_s=30.0, min_points=10, min_duration_s=300.0),
}

ParamsLike = Union[None, PreprocessParams, Mapping[str, Union[PreprocessParams, Mapping, float, int]]]
_FIELD_NAMES = {f.name for f in fields(PreprocessParams)}


def normalize_params(params: ParamsLike = None) -> dict[str, PreprocessParams]:
    """Turn any accepted ``params`` into a table kind -> ``PreprocessParams``.

    - ``None``: ``KIND_DEFAULTS``.
    - a ``PreprocessParams``: used for every kind (key ``"*"``).
    - a mapping of field names to values (``{"interval_s": 30}``): overrides on every kind's
      defaults.
    - a mapping of kinds to ``PreprocessParams`` or to field overrides
      (``{"vessel": {"v_max_mps": 25}}``); kinds not named keep their defaults, unless a ``"*"``
      entry is given, which then applies to every kind not named.

    Normalizing a normalized table returns it unchanged.
    """
    if params is None:
        return dict(KIND_DEFAULTS)
    if isinstance(params, PreprocessParams):
        return {"*": params}
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be None, PreprocessParams or a mapping, got {type(params).__name__}")
    if params and set(params) <= _FIELD_NAMES:
        return {kind: replace(p, **params) for kind, p in KIND_DEFAULTS.items()}
    # With a "*" entry, kinds not named use it; otherwise they keep their defaults.
    table = {} if "*" in params else dict(KIND_DEFAULTS)
    for kind, value in params.items():
        if isinstance(value, PreprocessParams):
            table[kind] = value
        elif isinstance(value, Mapping):
            unknown = set(value) - _FIELD_NAMES
            if unknown:
                raise ValueError(
                    f"unknown parameter(s) {sorted(unknown)} for kind {kind!r}; known: {sorted(_FIELD_NAMES)}"
                )
            table[kind] = replace(KIND_DEFAULTS.get(kind, PreprocessParams()), **value)
        else:
            raise ValueError(f"params[{kind!r}] must be PreprocessParams or a mapping, got {value!r}")
    return table


def params_to_json(params: ParamsLike = None) -> dict[str, dict]:
    """JSON form of the normalized parameter table (manifests, cache keys)."""
    return {kind: p.to_dict() for kind, p in sorted(normalize_params(params).items())}


def params_for_kind(table: Mapping[str, PreprocessParams], kind: str) -> PreprocessParams:
    if kind in table:
        return table[kind]
    if "*" in table:
        return table["*"]
    raise ValueError(f"no preprocessing parameters for kind {kind!r}; pass params for it (known: {sorted(table)})")


# ----------------------------------------------------------------------------------------------
# Output frames


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


# ----------------------------------------------------------------------------------------------
# The steps, each on numpy arrays sorted by (trajectory, time)


def _group_bounds(new_group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], len(new_group))
    return starts, ends


def _speed_mps(lon1, lat1, t1, lon2, lat2, t2) -> np.ndarray:
    dt_s = (np.asarray(t2) - np.asarray(t1)) / NS_PER_S
    with np.errstate(divide="ignore", invalid="ignore"):
        return haversine_m(lon1, lat1, lon2, lat2) / dt_s


def speed_outliers(
    t_ns: np.ndarray, lon: np.ndarray, lat: np.ndarray, new_group: np.ndarray, v_max_mps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """MovingPandas ``OutlierCleaner`` semantics, vectorized across trajectories.

    Inputs are sorted by (trajectory, time) with strictly increasing time inside a trajectory;
    ``new_group`` marks each trajectory's first row; ``v_max_mps`` is per row. Returns
    ``(outlier, speed_mps)``: the rows dropped, and for them the speed from the previous kept fix.

    Each pass handles one *run* of outliers per trajectory: from the last kept fix (the anchor),
    the first fix whose step speed exceeds ``v_max`` starts a run; the run ends at the first
    later fix reachable from the anchor at no more than ``v_max`` (searched ``_SEARCH_WINDOW``
    fixes at a time). Fixes between the anchor and the run's end are outliers; the run's end
    becomes the anchor. Before the first run every step speed is below ``v_max``, so those fixes
    are kept exactly as MovingPandas' sequential loop keeps them. Passes = most runs in a track.
    """
    n = len(t_ns)
    outlier = np.zeros(n, dtype=bool)
    speed = np.full(n, np.nan)
    if n < 2:
        return outlier, speed
    step = np.zeros(n)
    step[1:] = _speed_mps(lon[:-1], lat[:-1], t_ns[:-1], lon[1:], lat[1:], t_ns[1:])
    step[new_group] = 0.0
    flagged = np.flatnonzero(step > v_max_mps)
    if len(flagged) == 0:
        return outlier, speed

    starts, ends = _group_bounds(new_group)
    vmax_g = v_max_mps[starts]
    anchor = starts.copy()  # last kept fix of each trajectory
    search_from = np.zeros(len(starts), dtype=np.int64)
    searching = np.zeros(len(starts), dtype=bool)
    active = (ends - starts) > 1
    window = np.arange(_SEARCH_WINDOW)

    while active.any():
        # Find each settled trajectory's next run start: first flagged step after its anchor.
        settled = np.flatnonzero(active & ~searching)
        if len(settled):
            pos = np.searchsorted(flagged, anchor[settled], side="right")
            nxt = np.where(pos < len(flagged), flagged[np.minimum(pos, len(flagged) - 1)], n)
            found = nxt < ends[settled]
            active[settled[~found]] = False
            g = settled[found]
            anchor[g] = nxt[found] - 1
            search_from[g] = nxt[found]
            searching[g] = True
        # Look for the end of each open run from its anchor, one window at a time.
        open_runs = np.flatnonzero(active & searching)
        if len(open_runs) == 0:
            continue
        cand = search_from[open_runs, None] + window[None, :]
        valid = cand < ends[open_runs, None]
        cand_c = np.minimum(cand, n - 1)
        a = anchor[open_runs, None]
        v = _speed_mps(lon[a], lat[a], t_ns[a], lon[cand_c], lat[cand_c], t_ns[cand_c])
        reachable = valid & (v <= vmax_g[open_runs, None])
        closes = reachable.any(axis=1)
        first = np.where(closes, reachable.argmax(axis=1), _SEARCH_WINDOW)
        drop = valid & (window[None, :] < first[:, None])
        outlier[cand[drop]] = True
        speed[cand[drop]] = v[drop]
        # Closed runs: the reachable fix is the new anchor. Open runs move on or end the track.
        g_closed = open_runs[closes]
        anchor[g_closed] = cand[closes, first[closes]]
        searching[g_closed] = False
        g_open = open_runs[~closes]
        search_from[g_open] += _SEARCH_WINDOW
        active[g_open[search_from[g_open] >= ends[g_open]]] = False
    return outlier, speed


def resample_to_interval(
    t_ns: np.ndarray,
    lon: np.ndarray,
    lat: np.ndarray,
    seg_start: np.ndarray,
    seg_end: np.ndarray,
    interval_ns: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Resample segments to fixes at multiples of their interval (ns since the epoch).

    Segment ``s`` is rows ``seg_start[s]:seg_end[s]`` of time-sorted ``t_ns`` (int64 UTC ns) and
    ``lon, lat`` (degrees). Returns ``(segment, t_ns, lon, lat)`` of the resampled fixes: every
    ``m * interval_ns[s]`` within the segment's [first, last] time, lon/lat linear in time.
    """
    t0, t1 = t_ns[seg_start], t_ns[seg_end - 1]
    g0 = -(-t0 // interval_ns) * interval_ns  # first grid time >= t0
    g1 = (t1 // interval_ns) * interval_ns  # last grid time <= t1
    n_grid = np.where(g1 >= g0, (g1 - g0) // interval_ns + 1, 0)
    seg = np.repeat(np.arange(len(seg_start)), n_grid)
    first_out = np.cumsum(n_grid) - n_grid
    grid_t = g0[seg] + (np.arange(len(seg)) - first_out[seg]) * interval_ns[seg]

    # Lay the segments end to end on one int64 axis ("virtual time", exact) so a single
    # searchsorted finds each grid time's bracketing fixes inside its own segment.
    base = np.cumsum(t1 - t0 + NS_PER_S) - (t1 - t0 + NS_PER_S)
    seg_of_row = np.repeat(np.arange(len(seg_start)), seg_end - seg_start)
    rows = np.concatenate([np.arange(s, e) for s, e in zip(seg_start, seg_end)]) if len(seg_start) else np.arange(0)
    v_rows = t_ns[rows] - t0[seg_of_row] + base[seg_of_row]
    v_grid = grid_t - t0[seg] + base[seg]
    k = np.searchsorted(v_rows, v_grid, side="right") - 1  # position in `rows` of the fix <= grid time
    first_row = np.cumsum(seg_end - seg_start) - (seg_end - seg_start)
    last_row = first_row + (seg_end - seg_start) - 1
    k = np.clip(k, first_row[seg], np.maximum(first_row[seg], last_row[seg] - 1))
    k_next = np.minimum(k + 1, last_row[seg])
    i, j = rows[k], rows[k_next]
    span = (t_ns[j] - t_ns[i]).astype(np.float64)
    w = np.divide((grid_t - t_ns[i]).astype(np.float64), span, out=np.zeros(len(seg)), where=span > 0)
    dlon = (lon[j] - lon[i] + 180.0) % 360.0 - 180.0  # the short way across the antimeridian
    out_lon = lon[i] + w * dlon
    out_lon = np.where(np.abs(out_lon) > 180.0, (out_lon + 180.0) % 360.0 - 180.0, out_lon)
    out_lat = lat[i] + w * (lat[j] - lat[i])
    return seg, grid_t, out_lon, out_lat


# ----------------------------------------------------------------------------------------------
# The partition function


def clean_partition(df: pd.DataFrame, params: ParamsLike = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Clean, split, filter and resample every trajectory in ``df`` (canonical points).

    ``df`` must hold whole trajectories (all fixes of a ``traj_id``); its row order does not
    matter (fixes are ordered by ``traj_id, t, lon, lat`` then the optional columns, so the
    result depends on the content only). ``params``: see ``normalize_params`` (per-kind
    defaults when ``None``).

    Returns ``(points, quarantine, counts)``:

    - ``points``: resampled canonical points (``POINT_COLUMNS`` only; sog/cog are not
      resampled), ``traj_id = f"{traj_id}_{k}"``, sorted by ``traj_id, t``.
    - ``quarantine``: rejected input rows with their columns plus ``reason`` (``duplicate_fix``,
      ``duplicate_time``, ``speed_outlier``, ``short_trajectory``; ``missing_value`` /
      ``nonfinite_coord`` for rows that are not valid fixes) and ``detail``, in sorted order.
    - ``counts``: ``rows_in, rows_kept, rows_quarantined, quarantined_by_reason, rows_out,
      n_trajectories`` (output segments), ``n_segments`` (before the length filter),
      ``n_input_trajectories``.
    """
    table = normalize_params(params)
    optional = [c for c in OPTIONAL_COLUMNS if c in df.columns]
    counts = empty_counts()
    if len(df) == 0:
        return to_canonical(empty_points()), empty_clean_quarantine(optional), counts

    df = _canonical_input(df[POINT_COLUMNS + optional])
    n = len(df)
    traj_codes, traj_names = pd.factorize(df["traj_id"], sort=True)
    t_all = df["t"].to_numpy(dtype="datetime64[ns]", na_value=np.datetime64("NaT")).view(np.int64)
    lon_all, lat_all = df["lon"].to_numpy(np.float64), df["lat"].to_numpy(np.float64)
    numeric_optional = [df[c].to_numpy(np.float64) for c in optional if c != "mode"]
    # Content order: trajectory, time, position, then the optional values (NaN last).
    order = np.lexsort([*reversed(numeric_optional), lat_all, lon_all, t_all, traj_codes])
    traj_codes, t_all, lon_all, lat_all = traj_codes[order], t_all[order], lon_all[order], lat_all[order]
    kind_codes = df["kind"].cat.codes.to_numpy()[order]
    kind_names = [str(k) for k in df["kind"].cat.categories]

    reason = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)

    # Rows that are not fixes at all (possible when the frame did not come from ingest).
    invalid_id = (traj_codes < 0) | (kind_codes < 0) | df["obj_id"].isna().to_numpy()[order]
    invalid_id |= t_all == np.iinfo(np.int64).min
    invalid_xy = ~(np.isfinite(lon_all) & np.isfinite(lat_all)) & ~invalid_id
    reason[invalid_id], detail[invalid_id] = "missing_value", "traj_id, obj_id, kind or t is missing"
    reason[invalid_xy], detail[invalid_xy] = "nonfinite_coord", "lon or lat is NaN or infinite"
    live = np.flatnonzero(~(invalid_id | invalid_xy))
    kind_params = {code: params_for_kind(table, kind_names[code]) for code in np.unique(kind_codes[live])}

    # 1. Duplicates: exact duplicates are adjacent after the sort; then same-time fixes are.
    dup_fix = np.zeros(len(live), dtype=bool)
    dup_fix[1:] = (
        (traj_codes[live[1:]] == traj_codes[live[:-1]])
        & (t_all[live[1:]] == t_all[live[:-1]])
        & (lon_all[live[1:]] == lon_all[live[:-1]])
        & (lat_all[live[1:]] == lat_all[live[:-1]])
    )
    reason[live[dup_fix]] = "duplicate_fix"
    detail[live[dup_fix]] = "same time and position as an earlier fix"
    live = live[~dup_fix]

    dup_time = np.zeros(len(live), dtype=bool)
    dup_time[1:] = (traj_codes[live[1:]] == traj_codes[live[:-1]]) & (t_all[live[1:]] == t_all[live[:-1]])
    if dup_time.any():
        # Distance to the fix kept for that instant: the first of the run of equal times.
        run_head = np.maximum.accumulate(np.where(dup_time, 0, np.arange(len(live))))
        rows, heads = live[dup_time], live[run_head[dup_time]]
        dist = haversine_m(lon_all[heads], lat_all[heads], lon_all[rows], lat_all[rows])
        reason[rows] = "duplicate_time"
        detail[rows] = [f"same time as a kept fix {d:.0f} m away" for d in dist]
    live = live[~dup_time]

    # 2. Speed outliers against the previous kept fix.
    t, lon, lat, codes, kinds = t_all[live], lon_all[live], lat_all[live], traj_codes[live], kind_codes[live]
    new_group = np.ones(len(live), dtype=bool)
    new_group[1:] = codes[1:] != codes[:-1]
    v_max = _per_row(kind_params, kinds, "v_max_mps")
    outlier, out_speed = speed_outliers(t, lon, lat, new_group, v_max)
    if outlier.any():
        reason[live[outlier]] = "speed_outlier"
        detail[live[outlier]] = [
            f"{v:.1f} m/s from the previous kept fix > v_max {vm:g} m/s"
            for v, vm in zip(out_speed[outlier], v_max[outlier])
        ]
    keep = ~outlier
    live, t, lon, lat, codes, kinds = live[keep], t[keep], lon[keep], lat[keep], codes[keep], kinds[keep]

    # 3. Gap split: a new segment where the time since the previous kept fix exceeds max_gap_s.
    new_group = np.ones(len(live), dtype=bool)
    new_group[1:] = codes[1:] != codes[:-1]
    max_gap_ns = np.round(_per_row(kind_params, kinds, "max_gap_s") * NS_PER_S).astype(np.int64)
    new_seg = new_group.copy()
    new_seg[1:] |= (t[1:] - t[:-1]) > max_gap_ns[1:]
    seg_start, seg_end = _group_bounds(new_seg)
    seg_index = np.cumsum(new_seg) - 1
    first_seg_of_traj = seg_index[np.flatnonzero(new_group)]
    traj_of_seg = np.cumsum(new_group)[seg_start] - 1
    k_of_seg = np.arange(len(seg_start)) - first_seg_of_traj[traj_of_seg]

    # 4. Minimum length (original fixes, duration, at least 2 resampled fixes).
    seg_kind = kinds[seg_start]
    min_points = _per_row(kind_params, seg_kind, "min_points")
    min_dur_ns = np.round(_per_row(kind_params, seg_kind, "min_duration_s") * NS_PER_S).astype(np.int64)
    interval_ns = np.round(_per_row(kind_params, seg_kind, "interval_s") * NS_PER_S).astype(np.int64)
    n_pts = seg_end - seg_start
    t_first, t_last = t[seg_start], t[seg_end - 1]
    n_grid = np.maximum(t_last // interval_ns - (-(-t_first // interval_ns)) + 1, 0)
    long_enough = (n_pts >= min_points) & (t_last - t_first >= min_dur_ns) & (n_grid >= 2)
    seg_traj = codes[seg_start]
    short = np.flatnonzero(~long_enough)
    if len(short):
        rows = live[np.repeat(~long_enough, n_pts)]
        reason[rows] = "short_trajectory"
        seg_detail = [
            f"segment {traj_names[c]}_{k}: {p} fixes over {d / NS_PER_S:.0f} s "
            f"(needs {mp:g} fixes, {md / NS_PER_S:g} s, 2 resampled fixes)"
            for c, k, p, d, mp, md in zip(
                seg_traj[short],
                k_of_seg[short],
                n_pts[short],
                (t_last - t_first)[short],
                min_points[short],
                min_dur_ns[short],
            )
        ]
        detail[rows] = np.repeat(np.asarray(seg_detail, dtype=object), n_pts[short])

    # 5. Resample the segments that pass.
    kept_seg = np.flatnonzero(long_enough)
    seg, grid_t, out_lon, out_lat = resample_to_interval(
        t, lon, lat, seg_start[kept_seg], seg_end[kept_seg], interval_ns[kept_seg]
    )
    head = order[live[seg_start[kept_seg]]]  # one input row of each kept segment, for its ids
    new_ids = pd.Series(
        [f"{traj_names[c]}_{k}" for c, k in zip(seg_traj[kept_seg], k_of_seg[kept_seg])], dtype="string"
    )
    points = pd.DataFrame(
        {
            "traj_id": new_ids.take(seg).reset_index(drop=True),
            "obj_id": df["obj_id"].take(head).reset_index(drop=True).take(seg).reset_index(drop=True),
            "t": pd.Series(grid_t.astype("datetime64[ns]")).dt.tz_localize("UTC"),
            "lon": out_lon,
            "lat": out_lat,
            "kind": _categorical_take(df["kind"], head[seg]),
            "source": _categorical_take(df["source"], head[seg]),
        }
    )
    # Sort by traj_id as text: "x_10" sorts before "x_2", unlike the segment order.
    points = points.sort_values(["traj_id", "t"], ignore_index=True)

    rejected = np.flatnonzero(~pd.isna(reason))
    quarantine = df.take(order[rejected]).reset_index(drop=True)
    quarantine["reason"] = pd.Series(reason[rejected], dtype="string")
    quarantine["detail"] = pd.Series(detail[rejected], dtype="string")

    by_reason = {r: 0 for r in CLEAN_REASONS}
    for r, c in quarantine["reason"].value_counts().items():
        by_reason[str(r)] = int(c)
    counts.update(
        rows_in=n,
        rows_kept=int(n_pts[kept_seg].sum()),
        rows_quarantined=int(len(rejected)),
        quarantined_by_reason=by_reason,
        rows_out=int(len(points)),
        n_trajectories=int(len(kept_seg)),
        n_segments=int(len(seg_start)),
        n_input_trajectories=int(len(traj_names)),
    )
    if counts["rows_in"] != counts["rows_kept"] + counts["rows_quarantined"]:
        raise AssertionError(f"clean lost rows: {counts}")
    return points, quarantine, counts


def _per_row(kind_params: Mapping[int, PreprocessParams], kinds: np.ndarray, name: str) -> np.ndarray:
    """Parameter ``name`` of each row's mover kind (``kinds`` are category codes), as float64."""
    out = np.empty(len(kinds), dtype=np.float64)
    for code, p in kind_params.items():
        out[kinds == code] = float(getattr(p, name))
    return out


def _categorical_take(column: pd.Series, rows: np.ndarray) -> pd.Categorical:
    """Rows of a categorical column, without going through strings; unused categories dropped."""
    codes = column.cat.codes.to_numpy()[rows]
    return pd.Categorical.from_codes(codes, categories=column.cat.categories).remove_unused_categories()


def _canonical_input(df: pd.DataFrame) -> pd.DataFrame:
    """``schema.to_canonical`` unless the frame already has the canonical dtypes (saves casts)."""
    expected = to_canonical(empty_points()).dtypes
    already = all(
        (str(df[c].dtype) == "category") if str(dtype) == "category" else df[c].dtype == dtype
        for c, dtype in expected.items()
    ) and all(df[c].dtype == "float64" for c in df.columns if c in OPTIONAL_COLUMNS and c != "mode")
    return df.reset_index(drop=True) if already and "mode" not in df.columns else to_canonical(df)
