"""Per-mover cleaning, splitting and resampling of canonical points, vectorized over a whole frame.

Steps, in order, with MovingPandas names and semantics (MovingPandas 0.23 is the reference; the
default ``engine="vectorized"`` is the fast path: numpy over all trajectories of a frame at once,
no Python loop per fix; ``engine="movingpandas"`` runs the same steps through MovingPandas itself,
see ``trajfm.data.mpd_engine``):

1. **Duplicates**: a fix with the same ``traj_id``, time and position as an earlier one is
   ``duplicate_fix``; of several fixes at the same time with different positions the first (in
   ``lon, lat`` order, so the choice is deterministic) is kept, the others are ``duplicate_time``.
2. **Speed outliers** (``OutlierCleaner(traj).clean(v_max=...)``): walking the track in time, a
   fix whose great-circle speed from the *previous kept* fix exceeds ``v_max_mps`` is dropped and
   the previous kept fix stays the reference, exactly as MovingPandas' loop does. Unlike
   MovingPandas, a track is never restored when it drops to one fix (the short filter removes it).
3. **Gap split** (``ObservationGapSplitter(traj).split(gap=...)``): a new segment starts where
   the time since the previous kept fix is greater than ``max_gap_s``. A segment of two or more
   fixes that never moves (0 m long) is ``short_trajectory``, as MovingPandas drops it.
4. **Stop split** (``StopSplitter(traj).split(max_diameter=, min_duration=)``, only for kinds
   with ``split_stops=True``): a stop is a run of fixes staying within
   ``stop_max_diameter_m`` metres for at least ``stop_min_duration_s`` (MovingPandas' measure,
   ``trajfm.data.stops``). The stop's first fix ends the segment before it, its last fix starts
   the next one, and the fixes in between are quarantined as ``stop``. Pieces of 0 m are
   ``short_trajectory``, as in MovingPandas.
5. **Minimum length**: a piece with fewer than ``min_points`` fixes, lasting less than
   ``min_duration_s``, or giving fewer than 2 resampled fixes is quarantined
   (``short_trajectory``) fix by fix.
6. **Generalization** (``MinTimeDeltaGeneralizer(traj).generalize(tolerance=...)``, only when
   ``generalize_s > 0``): of each kept piece, the first fix, every fix at least ``generalize_s``
   after the previous kept one, and the last fix are kept; the others are ``generalized``.
7. **Resampling** to ``interval_s``: fixes at every multiple of the interval since the Unix epoch
   inside the piece's time span, lon/lat interpolated linearly in time between the two
   surrounding fixes (over one step between fixes that is the local metric frame to well under
   a metre; longitude across the antimeridian the short way round); MovingPandas'
   ``get_position_at`` on the same time grid in the other engine.

Cost (one core, the real AIS + GeoLife set): steps 1-3, 5 and 7 run at about 1-2 million fixes
per second; the stop split, when switched on, at about 60 thousand (it measures undecided
windows exactly with shapely; still ~30x MovingPandas' detector).

Pieces are numbered per input trajectory in time order, counting every piece (gap segments, and
the pieces a stop split makes of them, kept or not): ``traj_id = f"{traj_id}_{k}"``. Without stop
splitting, ``k`` is MovingPandas' gap-segment index.

Accounting: ``rows_in == rows_kept + rows_quarantined`` where a kept row is an input fix inside an
output piece (after generalization); ``rows_out`` (resampled fixes) is counted separately.
Distances are haversine metres (``trajfm.geo``) except the stop measure (geodesic, as
MovingPandas); times are int64 nanoseconds until a difference is taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd

from trajfm.data import mpd_engine
from trajfm.data.clean_frames import (
    canonical_input,
    clean_quarantine_frame,
    content_order,
    empty_clean_quarantine,
    empty_counts,
    factorize_sorted,
    merge_counts,
    points_frame,
    time_ns,
)
from trajfm.data.clean_params import (
    FIELD_NAMES,
    KIND_DEFAULTS,
    NS_PER_S,
    ParamsLike,
    PreprocessParams,
    find_kind_params,
    normalize_params,
    params_to_json,
)
from trajfm.data.clean_steps import (
    CLEAN_REASONS,
    CODE,
    REASON_LIST,
    Pieces,
    concat_ranges,
    interpolate_at,
    min_time_delta,
    per_row,
    split_vectorized,
    time_grid,
)
from trajfm.data.sampling import effective_interval_ns, median_step_ns
from trajfm.data.schema import OPTIONAL_COLUMNS, POINT_COLUMNS, REASONS, empty_points, to_canonical
from trajfm.geo import haversine_m

ENGINES = ("vectorized", "movingpandas")
KNOWN_REASONS = dict(REASONS)

__all__ = [  # the cleaning API, wherever each part is defined
    "CLEAN_REASONS",
    "ENGINES",
    "FIELD_NAMES",
    "KIND_DEFAULTS",
    "KNOWN_REASONS",
    "ParamsLike",
    "PreprocessParams",
    "clean_partition",
    "empty_clean_quarantine",
    "empty_counts",
    "merge_counts",
    "normalize_params",
    "params_to_json",
    "resample_to_interval",
]


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
    Used by ``trajfm.forecaster.resample_points``.
    """
    seg, grid_t = time_grid(t_ns[seg_start], t_ns[seg_end - 1], interval_ns)
    out_lon, out_lat = interpolate_at(t_ns, lon, lat, seg_start, seg_end, seg, grid_t)
    return seg, grid_t, out_lon, out_lat


class _Vectorized:
    split = staticmethod(split_vectorized)

    @staticmethod
    def generalize(t, lon, lat, start, end, tolerance_ns):
        return min_time_delta(t, start, end, tolerance_ns)

    @staticmethod
    def positions(t, lon, lat, start, end, piece, grid_t):
        return interpolate_at(t, lon, lat, start, end, piece, grid_t)


def _engine(name: str):
    if name == "vectorized":
        return _Vectorized
    if name == "movingpandas":
        return mpd_engine
    raise ValueError(f"engine must be one of {ENGINES}, got {name!r}")


# ----------------------------------------------------------------------------------------------
# The partition function


def clean_partition(
    df: pd.DataFrame,
    params: ParamsLike = None,
    engine: str = "vectorized",
    native_interval_s: Mapping[str, float] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Clean, split, filter and resample every trajectory in ``df`` (canonical points).

    ``df`` must hold whole trajectories (all fixes of a ``traj_id``); its row order does not
    matter (fixes are ordered by ``traj_id, t, lon, lat`` then the optional columns, so the
    result depends on the content only). ``params``: see ``normalize_params`` (per-kind
    defaults when ``None``). ``engine``: ``"vectorized"`` (numpy) or ``"movingpandas"`` (the
    same steps through MovingPandas; slow, for reference and parity checks).
    ``native_interval_s``: each source's native interval in seconds (``source`` -> s), which
    decides its resampling interval (``trajfm.data.sampling``); sources it does not name are
    measured on ``df`` (``sampling.source_native_interval_s``: exact when ``df`` holds the
    whole source; the preprocess stage passes the whole input's).

    Returns ``(points, quarantine, counts)``:

    - ``points``: resampled canonical points (``POINT_COLUMNS`` only; sog/cog are not
      resampled), ``traj_id = f"{traj_id}_{k}"``, sorted by ``traj_id, t``.
    - ``quarantine``: rejected input rows with their columns plus ``reason`` (``duplicate_fix``,
      ``duplicate_time``, ``speed_outlier``, ``stop``, ``generalized``, ``short_trajectory``;
      ``missing_value`` / ``nonfinite_coord`` for rows that are not valid fixes) and ``detail``,
      in sorted order.
    - ``counts``: ``rows_in, rows_kept, rows_quarantined, quarantined_by_reason, rows_out,
      n_trajectories`` (output pieces), ``n_segments`` (gap segments, before stops and the length
      filter), ``n_input_trajectories``.
    """
    table = normalize_params(params)
    impl = _engine(engine)
    optional = [c for c in OPTIONAL_COLUMNS if c in df.columns]
    counts = empty_counts()
    if len(df) == 0:
        return to_canonical(empty_points()), empty_clean_quarantine(optional), counts

    part = _sorted_fixes(df, optional, native_interval_s)
    _reject_invalid(part, table)  # rows that are not fixes, kinds without parameters
    _reject_duplicates(part)  # 1.
    pieces = _split(part, impl)  # 2-4. speed outliers, gap split, stop split (engine-specific)
    stats = _reject_short(part, pieces)  # 5.
    kept = _kept_in_output_order(part, pieces, stats)
    _generalize(part, kept, impl)  # 6.
    points = _resample(part, kept, impl)  # 7.
    quarantine = clean_quarantine_frame(part.df, part.row_of, part.reason, part.notes)
    counts.update(_counts(part, pieces, kept, points, quarantine))
    if counts["rows_in"] != counts["rows_kept"] + counts["rows_quarantined"]:
        raise AssertionError(f"clean lost rows: {counts}")
    return points, quarantine, counts


@dataclass
class _Partition:
    """What ``clean_partition`` carries from step to step.

    Rows are the input fixes sorted by content (``row_of``: the input row of each); ``reason`` is
    each row's reason code (0: kept so far) and ``notes`` holds ``(rows, detail or details)`` for
    every rejected row; ``live``: the rows still kept, in order; ``*_live``: their values.
    """

    df: pd.DataFrame
    row_of: np.ndarray
    traj: np.ndarray
    traj_names: list[str]
    t: np.ndarray
    lon: np.ndarray
    lat: np.ndarray
    kind: np.ndarray
    kind_names: list[str]
    src: np.ndarray
    src_native_ns: np.ndarray
    reason: np.ndarray
    notes: list = field(default_factory=list)
    live: np.ndarray | None = None
    kind_params: dict = field(default_factory=dict)
    t_live: np.ndarray | None = None
    lon_live: np.ndarray | None = None
    lat_live: np.ndarray | None = None
    traj_live: np.ndarray | None = None
    kind_live: np.ndarray | None = None


@dataclass
class _PieceStats:
    """Per piece of the split: its kind and trajectory codes, fixes, resampling interval (the
    kind's, and the one used), and whether it passes the length filter."""

    kind: np.ndarray
    traj: np.ndarray
    n_pts: np.ndarray
    interval_ns: np.ndarray
    kind_interval_ns: np.ndarray
    long_enough: np.ndarray


@dataclass
class _Kept:
    """The kept pieces in output order: ``sel`` are their rows of ``live``, piece ``p`` is
    ``sel[start[p]:end[p]]`` with times ``t`` and positions ``lon, lat`` (of those rows)."""

    pieces: np.ndarray
    new_ids: list[str]
    n_native_interval: int
    kind: np.ndarray
    interval_ns: np.ndarray
    sizes: np.ndarray
    start: np.ndarray
    end: np.ndarray
    sel: np.ndarray
    t: np.ndarray
    lon: np.ndarray
    lat: np.ndarray


def _sorted_fixes(df: pd.DataFrame, optional: list[str], native_interval_s) -> _Partition:
    """The partition's fixes as arrays sorted by (trajectory, time, lon, lat, optional values)."""
    df = canonical_input(df[POINT_COLUMNS + optional])
    n = len(df)
    traj_codes, traj_names = factorize_sorted(df["traj_id"])
    t_all = df["t"].array.asi8 if hasattr(df["t"].array, "asi8") else time_ns(df["t"])
    lon_all, lat_all = df["lon"].to_numpy(np.float64), df["lat"].to_numpy(np.float64)
    numeric_optional = [df[c].to_numpy(np.float64) for c in optional if c != "mode"]
    order = content_order(traj_codes, t_all, lon_all, lat_all, numeric_optional)
    if order is not None:
        traj_codes, t_all, lon_all, lat_all = traj_codes[order], t_all[order], lon_all[order], lat_all[order]
    kind_codes = df["kind"].cat.codes.to_numpy()
    kind_codes = kind_codes[order] if order is not None else kind_codes
    kind_names = [str(k) for k in df["kind"].cat.categories]
    row_of = order if order is not None else np.arange(n)
    src_codes = df["source"].cat.codes.to_numpy()
    src_codes = src_codes[order] if order is not None else src_codes
    src_native_ns = _source_native_ns(
        traj_codes, t_all, src_codes, [str(s) for s in df["source"].cat.categories], native_interval_s
    )
    return _Partition(
        df=df,
        row_of=row_of,
        traj=traj_codes,
        traj_names=traj_names,
        t=t_all,
        lon=lon_all,
        lat=lat_all,
        kind=kind_codes,
        kind_names=kind_names,
        src=src_codes,
        src_native_ns=src_native_ns,
        reason=np.zeros(n, dtype=np.int8),
    )


def _reject_invalid(part: _Partition, table: Mapping[str, PreprocessParams]) -> None:
    """Rows that are not fixes at all (possible when the frame did not come from ingest), and rows
    of a kind without parameters; sets ``live`` and ``kind_params`` (kind code -> parameters)."""
    reason, notes = part.reason, part.notes
    invalid_id = (part.traj < 0) | (part.kind < 0) | part.df["obj_id"].isna().to_numpy()[part.row_of]
    invalid_id |= part.t == np.iinfo(np.int64).min
    invalid_xy = ~(np.isfinite(part.lon) & np.isfinite(part.lat)) & ~invalid_id
    if invalid_id.any():
        reason[invalid_id] = CODE["missing_value"]
        notes.append((np.flatnonzero(invalid_id), "traj_id, obj_id, kind or t is missing"))
    if invalid_xy.any():
        reason[invalid_xy] = CODE["nonfinite_coord"]
        notes.append((np.flatnonzero(invalid_xy), "lon or lat is NaN or infinite"))
    live = np.flatnonzero(reason == 0)
    kind_codes, kind_names = part.kind, part.kind_names
    kind_params = {}
    for code in np.unique(kind_codes[live]):
        found = find_kind_params(table, kind_names[code])
        if found is not None:
            kind_params[code] = found
    unknown = ~np.isin(kind_codes[live], list(kind_params))
    if unknown.any():  # one odd row must not fail the stage: quarantined with its kind named
        rows = live[unknown]
        reason[rows] = CODE["unknown_kind"]
        known = ", ".join(sorted(k for k in table if k != "*"))
        detail = {
            c: f"kind {kind_names[c]!r} has no preprocessing parameters (known: {known}; or pass params for it)"
            for c in np.unique(kind_codes[rows])
        }
        notes.append((rows, [detail[c] for c in kind_codes[rows]]))
        live = live[~unknown]
    part.live, part.kind_params = live, kind_params


def _reject_duplicates(part: _Partition) -> None:
    """Step 1: exact duplicates are adjacent after the sort; then same-time fixes are."""
    live, reason, notes = part.live, part.reason, part.notes
    traj_codes, t_all, lon_all, lat_all = part.traj, part.t, part.lon, part.lat
    same_time = np.zeros(len(live), dtype=bool)
    same_time[1:] = (traj_codes[live[1:]] == traj_codes[live[:-1]]) & (t_all[live[1:]] == t_all[live[:-1]])
    if same_time.any():
        dup_fix = np.zeros(len(live), dtype=bool)
        dup_fix[1:] = (
            same_time[1:] & (lon_all[live[1:]] == lon_all[live[:-1]]) & (lat_all[live[1:]] == lat_all[live[:-1]])
        )
        if dup_fix.any():
            reason[live[dup_fix]] = CODE["duplicate_fix"]
            notes.append((live[dup_fix], "same time and position as an earlier fix"))
            live, same_time = live[~dup_fix], same_time[~dup_fix]
            same_time[0] = False
            same_time[1:] = (traj_codes[live[1:]] == traj_codes[live[:-1]]) & (t_all[live[1:]] == t_all[live[:-1]])
        if same_time.any():
            # Distance to the fix kept for that instant: the first of the run of equal times.
            run_head = np.maximum.accumulate(np.where(same_time, 0, np.arange(len(live))))
            rows, heads = live[same_time], live[run_head[same_time]]
            dist = haversine_m(lon_all[heads], lat_all[heads], lon_all[rows], lat_all[rows])
            reason[rows] = CODE["duplicate_time"]
            notes.append((rows, [f"same time as a kept fix {d:.0f} m away" for d in dist]))
            live = live[~same_time]
    part.live = live


def _split(part: _Partition, impl) -> Pieces:
    """Steps 2-4 on the live rows, by the engine: speed outliers, gap split, stop split."""
    live = part.live
    part.t_live, part.lon_live, part.lat_live = part.t[live], part.lon[live], part.lat[live]
    part.traj_live, part.kind_live = part.traj[live], part.kind[live]
    pieces = impl.split(part.t_live, part.lon_live, part.lat_live, part.traj_live, part.kind_live, part.kind_params)
    dropped = pieces.drop > 0
    part.reason[live[dropped]] = pieces.drop[dropped]
    part.notes.extend((live[rows], text) for rows, text in pieces.notes)
    return pieces


def _reject_short(part: _Partition, pieces: Pieces) -> _PieceStats:
    """Step 5, minimum length: original fixes, duration, at least 2 resampled fixes."""
    kind_params, t = part.kind_params, part.t_live
    prow = pieces.rows
    p_first, p_last = prow[pieces.start], prow[pieces.end - 1]
    p_kind, p_traj = part.kind_live[p_first], part.traj_live[p_first]
    min_points = per_row(kind_params, p_kind, "min_points")
    min_dur_ns = np.round(per_row(kind_params, p_kind, "min_duration_s") * NS_PER_S).astype(np.int64)
    interval_ns = np.round(per_row(kind_params, p_kind, "interval_s") * NS_PER_S).astype(np.int64)
    # Sampling rate is the data's: never interpolate a source much finer than its own fixes.
    p_src = part.src[part.live][p_first]
    native_ns = np.where(p_src >= 0, part.src_native_ns[np.maximum(p_src, 0)], 0)
    kind_interval_ns = interval_ns
    interval_ns = effective_interval_ns(interval_ns, native_ns, per_row(kind_params, p_kind, "upsample_tolerance"))
    n_pts = pieces.end - pieces.start
    t_first, t_last = t[p_first], t[p_last]
    n_grid = np.maximum(t_last // interval_ns - (-(-t_first // interval_ns)) + 1, 0)
    long_enough = (n_pts >= min_points) & (t_last - t_first >= min_dur_ns) & (n_grid >= 2)
    short = np.flatnonzero(~long_enough)
    if len(short):
        rows = part.live[prow[concat_ranges(pieces.start[short], pieces.end[short])]]
        part.reason[rows] = CODE["short_trajectory"]
        piece_detail = [
            f"segment {part.traj_names[c]}_{k}: {p} fixes over {d / NS_PER_S:.0f} s "
            f"(needs {mp:g} fixes, {md / NS_PER_S:g} s, 2 resampled fixes)"
            for c, k, p, d, mp, md in zip(
                p_traj[short],
                pieces.k[short],
                n_pts[short],
                (t_last - t_first)[short],
                min_points[short],
                min_dur_ns[short],
            )
        ]
        part.notes.append((rows, np.repeat(np.asarray(piece_detail, dtype=object), n_pts[short]).tolist()))
    return _PieceStats(p_kind, p_traj, n_pts, interval_ns, kind_interval_ns, long_enough)


def _kept_in_output_order(part: _Partition, pieces: Pieces, stats: _PieceStats) -> _Kept:
    """Kept pieces in output order: by their new traj_id as text ("x_10" sorts before "x_2")."""
    kept = np.flatnonzero(stats.long_enough)
    n_native_interval = int((stats.interval_ns[kept] != stats.kind_interval_ns[kept]).sum())
    new_ids = [f"{part.traj_names[c]}_{k}" for c, k in zip(stats.traj[kept], pieces.k[kept])]
    by_id = sorted(range(len(kept)), key=new_ids.__getitem__)
    kept = kept[by_id]
    new_ids = [new_ids[i] for i in by_id]
    k_rows = concat_ranges(pieces.start[kept], pieces.end[kept])
    sizes = stats.n_pts[kept]
    k_end = np.cumsum(sizes)
    k_start = k_end - sizes
    sel = pieces.rows[k_rows]  # rows of `live` in kept pieces, piece after piece in output order
    return _Kept(
        pieces=kept,
        new_ids=new_ids,
        n_native_interval=n_native_interval,
        kind=stats.kind[kept],
        interval_ns=stats.interval_ns[kept],
        sizes=sizes,
        start=k_start,
        end=k_end,
        sel=sel,
        t=part.t_live[sel],
        lon=part.lon_live[sel],
        lat=part.lat_live[sel],
    )


def _generalize(part: _Partition, kept: _Kept, impl) -> None:
    """Step 6, generalization, where asked for."""
    tol_ns = np.round(per_row(part.kind_params, kept.kind, "generalize_s") * NS_PER_S).astype(np.int64)
    if not (tol_ns > 0).any():
        return
    on = tol_ns > 0
    keep_fix = impl.generalize(kept.t, kept.lon, kept.lat, kept.start[on], kept.end[on], tol_ns[on])
    keep_fix |= np.repeat(~on, kept.sizes)
    if keep_fix.all():
        return
    rows = part.live[kept.sel[~keep_fix]]
    part.reason[rows] = CODE["generalized"]
    part.notes.append((rows, "less than generalize_s after the previous kept fix"))
    kept.sel, kept.t, kept.lon, kept.lat = kept.sel[keep_fix], kept.t[keep_fix], kept.lon[keep_fix], kept.lat[keep_fix]
    kept.sizes = np.add.reduceat(keep_fix.astype(np.int64), kept.start) if len(kept.start) else kept.sizes
    kept.end = np.cumsum(kept.sizes)
    kept.start = kept.end - kept.sizes


def _resample(part: _Partition, kept: _Kept, impl) -> pd.DataFrame:
    """Step 7: resample the kept pieces to their intervals."""
    piece, grid_t = time_grid(kept.t[kept.start], kept.t[kept.end - 1], kept.interval_ns)
    out_lon, out_lat = impl.positions(kept.t, kept.lon, kept.lat, kept.start, kept.end, piece, grid_t)
    head = part.row_of[part.live[kept.sel[kept.start]]] if len(kept.pieces) else np.zeros(0, np.int64)
    return points_frame(part.df, kept.new_ids, head, piece, grid_t, out_lon, out_lat)


def _counts(part: _Partition, pieces: Pieces, kept: _Kept, points: pd.DataFrame, quarantine: pd.DataFrame) -> dict:
    reason = part.reason
    by_reason = {r: 0 for r in CLEAN_REASONS}
    codes_present, n_present = np.unique(reason[reason > 0], return_counts=True)
    for code, c in zip(codes_present, n_present):
        by_reason[REASON_LIST[code]] = int(c)
    return dict(
        rows_in=len(reason),
        rows_kept=int(len(kept.sel)),
        rows_quarantined=int(len(quarantine)),
        quarantined_by_reason=by_reason,
        rows_out=int(len(points)),
        n_trajectories=int(len(kept.pieces)),
        n_segments=int(pieces.n_segments),
        n_input_trajectories=int(len(part.traj_names)),
        n_native_interval=kept.n_native_interval,
    )


def _source_native_ns(traj_codes, t_ns, src_codes, src_names, given) -> np.ndarray:
    """Native interval (int64 ns; 0: unknown) per source code: ``given`` seconds where named,
    else the median positive step of the source's trajectories in these (sorted) rows."""
    out = median_step_ns(traj_codes, t_ns, src_codes, len(src_names))
    for code, name in enumerate(src_names):
        if given is not None and name in given and given[name] is not None:
            out[code] = int(round(float(given[name]) * NS_PER_S))
    return out
