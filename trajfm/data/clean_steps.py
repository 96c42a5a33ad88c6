"""The cleaning steps of ``trajfm.data.clean``, each on numpy arrays sorted by (trajectory, time):
speed outliers, gap and stop split (``split_vectorized``), generalization (``min_time_delta``),
the resampling grid (``time_grid``) and interpolation (``interpolate_at``).

``CODE`` numbers the reason codes while the arrays are built (0: the row is kept so far);
``Pieces`` is what a split step returns, in either engine (this one or ``trajfm.data.mpd_engine``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from trajfm.data.clean_params import NS_PER_S, PreprocessParams
from trajfm.data.stops import detect_stops
from trajfm.geo import haversine_m

CLEAN_REASONS = ("duplicate_fix", "duplicate_time", "speed_outlier", "stop", "generalized", "short_trajectory")
# Reason codes as small integers while the arrays are built (0: the row is kept so far).
REASON_LIST = ("", "missing_value", "nonfinite_coord", *CLEAN_REASONS, "unknown_kind")
CODE = {r: i for i, r in enumerate(REASON_LIST) if r}
SEARCH_WINDOW = 32  # fixes examined per pass while looking for the end of an outlier run


def _group_bounds(new_group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], len(new_group)) if len(starts) else starts.copy()
    return starts, ends


def concat_ranges(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(start[i], end[i])`` without a Python loop."""
    n = np.asarray(end, dtype=np.int64) - start
    total = int(n.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.cumsum(n) - n
    return np.arange(total, dtype=np.int64) - np.repeat(offsets - start, n)


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

    MovingPandas walks each track keeping an anchor (the last kept fix); a fix faster than
    ``v_max`` from the anchor is dropped. Between outliers the anchor simply follows the track, so
    a *run* of outliers can only start at a *flagged* step (previous fix -> fix faster than
    ``v_max``), and it ends at the first later fix reachable from the fix before the run. So:

    1. for every flagged step at once, find where a run starting there would end (searching
       ``SEARCH_WINDOW`` fixes at a time, all runs together);
    2. the runs that really happen are a chain per track: the first flagged step, then the first
       flagged step after the previous run's end, and so on (pointer chasing over flagged steps);
    3. the fixes inside those runs are the outliers.
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
    group = np.searchsorted(starts, flagged, side="right") - 1
    end = ends[group]
    anchor = flagged - 1
    vmax = v_max_mps[flagged]
    # 1. Where would a run starting at each flagged step end? (end of track: never reachable)
    close = end.copy()
    pos = flagged.copy()
    window = np.arange(SEARCH_WINDOW)
    open_runs = np.arange(len(flagged))
    while len(open_runs):
        cand = pos[open_runs, None] + window[None, :]
        valid = cand < end[open_runs, None]
        cand_c = np.minimum(cand, n - 1)
        a = anchor[open_runs, None]
        v = _speed_mps(lon[a], lat[a], t_ns[a], lon[cand_c], lat[cand_c], t_ns[cand_c])
        reachable = valid & (v <= vmax[open_runs, None])
        hit = reachable.any(axis=1)
        close[open_runs[hit]] = cand[hit, reachable[hit].argmax(axis=1)]
        pos[open_runs] += SEARCH_WINDOW
        open_runs = open_runs[~hit & (pos[open_runs] < end[open_runs])]
    # 2. The runs that happen: from each track's first flagged step, the next flagged after the end.
    nxt = np.searchsorted(flagged, close, side="right")
    nxt_ok = nxt < len(flagged)
    nxt_ok[nxt_ok] = flagged[nxt[nxt_ok]] < end[nxt_ok]
    first = np.r_[True, group[1:] != group[:-1]]
    happens = np.zeros(len(flagged), dtype=bool)
    cur = np.flatnonzero(first)
    while len(cur):
        happens[cur] = True
        cur = nxt[cur[nxt_ok[cur]]]
    # 3. Outliers: each run's fixes, with their speed from the fix before the run.
    k = np.flatnonzero(happens)
    rows = concat_ranges(flagged[k], close[k])
    a = np.repeat(anchor[k], close[k] - flagged[k])
    outlier[rows] = True
    speed[rows] = _speed_mps(lon[a], lat[a], t_ns[a], lon[rows], lat[rows], t_ns[rows])
    return outlier, speed


def time_grid(t_first: np.ndarray, t_last: np.ndarray, interval_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid times (int64 ns) at multiples of ``interval_ns`` inside each ``[t_first, t_last]``.

    Returns ``(piece, grid_t)``: the piece index of each grid time and the time, pieces in the
    order given, times increasing inside a piece.
    """
    g0 = -(-t_first // interval_ns) * interval_ns  # first grid time >= t_first
    g1 = (t_last // interval_ns) * interval_ns  # last grid time <= t_last
    n_grid = np.where(g1 >= g0, (g1 - g0) // interval_ns + 1, 0)
    piece = np.repeat(np.arange(len(t_first)), n_grid)
    first_out = np.cumsum(n_grid) - n_grid
    grid_t = g0[piece] + (np.arange(len(piece)) - first_out[piece]) * interval_ns[piece]
    return piece, grid_t


def interpolate_at(
    t_ns: np.ndarray,
    lon: np.ndarray,
    lat: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    piece: np.ndarray,
    grid_t: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """lon/lat of each piece at ``grid_t``, linear in time between the surrounding fixes.

    Piece ``p`` is rows ``start[p]:end[p]`` (two or more) of ``t_ns``, strictly increasing inside
    a piece; pieces do not overlap; each ``grid_t`` lies inside its piece's time span. Longitude
    is interpolated the short way across the antimeridian.
    """
    if len(piece) == 0:
        return np.zeros(0), np.zeros(0)
    # The fix at or before each grid time inside its own piece: one sort of fixes and grid times
    # by (piece, time), fixes first at equal times. (Laying pieces end to end on one int64 time
    # axis overflowed for sources spanning centuries of piece durations, e.g. 46 years of icebergs.)
    n_rows = end - start
    contiguous = bool((start[1:] == end[:-1]).all())
    rows = None if contiguous else concat_ranges(start, end)
    t_rows = t_ns[start[0] : end[-1]] if contiguous else t_ns[rows]
    row_piece = np.repeat(np.arange(len(start)), n_rows)
    n_fix = len(t_rows)
    flag = np.concatenate([np.zeros(n_fix, np.int8), np.ones(len(grid_t), np.int8)])
    order = np.lexsort((flag, np.concatenate([t_rows, grid_t]), np.concatenate([row_piece, piece])))
    fixes_so_far = np.cumsum(flag[order] == 0)
    at_grid = flag[order] == 1
    k = np.empty(len(grid_t), np.int64)
    k[order[at_grid] - n_fix] = fixes_so_far[at_grid] - 1
    # k is the fix at or before the grid time; at a piece's last fix, step back one.
    k = np.minimum(k, (np.cumsum(n_rows) - 2)[piece])
    i = k + start[0] if contiguous else rows[k]
    j = i + 1 if contiguous else rows[k + 1]
    t_i = t_ns[i]
    w = (grid_t - t_i) / (t_ns[j] - t_i)
    lon_i, lat_i = lon[i], lat[i]
    dlon = lon[j] - lon_i
    wrap = np.abs(dlon) > 180.0  # the short way across the antimeridian
    if wrap.any():
        dlon[wrap] -= np.copysign(360.0, dlon[wrap])
    out_lon = lon_i + w * dlon
    if wrap.any():
        out = np.abs(out_lon) > 180.0
        out_lon[out] -= np.copysign(360.0, out_lon[out])
    out_lat = lat_i + w * (lat[j] - lat_i)
    return out_lon, out_lat


def min_time_delta(t_ns: np.ndarray, start: np.ndarray, end: np.ndarray, tolerance_ns: np.ndarray) -> np.ndarray:
    """MovingPandas ``MinTimeDeltaGeneralizer`` on pieces ``start[p]:end[p]`` of sorted ``t_ns``.

    Keeps each piece's first fix, then each fix at least ``tolerance_ns[p]`` after the previous
    kept one, and the last fix. Returns the keep mask. One pass per kept fix of the longest
    piece, each pass over all pieces at once.
    """
    keep = np.zeros(len(t_ns), dtype=bool)
    if len(start) == 0:
        return keep
    n_rows = end - start
    piece_of_row = np.repeat(np.arange(len(start)), n_rows)
    span = t_ns[end - 1] - t_ns[start] + 1
    base = np.cumsum(span + tolerance_ns) - (span + tolerance_ns)
    rows = concat_ranges(start, end)
    v = np.empty(len(t_ns), dtype=np.int64)
    v[rows] = t_ns[rows] - t_ns[start][piece_of_row] + base[piece_of_row]
    # The next kept fix after a kept fix i is the first fix of its piece at >= t_i + tolerance.
    nxt = np.full(len(t_ns), -1, dtype=np.int64)
    nxt[rows] = rows[
        np.searchsorted(v[rows], v[rows] + tolerance_ns[piece_of_row], side="left").clip(max=len(rows) - 1)
    ]
    cur, stop = start.copy(), end.copy()
    while len(cur):
        keep[cur] = True
        cur_next = nxt[cur]
        alive = (cur_next > cur) & (cur_next < stop)
        cur, stop = cur_next[alive], stop[alive]
    keep[end - 1] = True
    return keep


@dataclass
class Pieces:
    """Where the speed, gap and stop steps put each fix (indices are rows of the sorted arrays).

    ``drop``: reason code per row (0: in a piece); ``notes``: ``(rows, details)`` pairs explaining
    dropped rows; ``rows``: rows in pieces, in order; piece ``p`` is ``rows[start[p]:end[p]]``,
    numbered ``k[p]`` within its trajectory; ``n_segments``: gap segments (before stops).
    """

    drop: np.ndarray
    rows: np.ndarray
    start: np.ndarray
    end: np.ndarray
    k: np.ndarray
    n_segments: int
    notes: list = field(default_factory=list)


def split_vectorized(t, lon, lat, codes, kinds, kind_params) -> Pieces:
    """Speed outliers, gap split and stop split on arrays sorted by (trajectory, time)."""
    n = len(t)
    drop = np.zeros(n, dtype=np.int8)
    notes: list = []
    new_traj = np.ones(n, dtype=bool)
    new_traj[1:] = codes[1:] != codes[:-1]
    v_max = per_row(kind_params, kinds, "v_max_mps")
    outlier, speed = speed_outliers(t, lon, lat, new_traj, v_max)
    if outlier.any():
        drop[outlier] = CODE["speed_outlier"]
        notes.append((np.flatnonzero(outlier), speed_notes(speed[outlier], v_max[outlier])))

    # Gap split: a new segment where the time since the previous kept fix exceeds max_gap_s.
    keep = np.flatnonzero(~outlier)
    tk, xk, yk, ck = t[keep], lon[keep], lat[keep], codes[keep]
    first_of_traj = np.ones(len(ck), dtype=bool)
    first_of_traj[1:] = ck[1:] != ck[:-1]
    max_gap_ns = np.round(per_row(kind_params, kinds[keep], "max_gap_s") * NS_PER_S).astype(np.int64)
    new_seg = first_of_traj.copy()
    new_seg[1:] |= (tk[1:] - tk[:-1]) > max_gap_ns[1:]
    seg_start, seg_end = _group_bounds(new_seg)
    seg_len = seg_end - seg_start
    # MovingPandas' splitters drop segments of 0 m: two or more fixes, all at one position.
    moves = _moves(xk, yk)
    still = _zero_length(xk, yk, seg_start, seg_end, moves) & (seg_len >= 2)
    seg_kind = kinds[keep][seg_start]

    # Stop split of the segments whose kind asks for it.
    stop_first = stop_last = np.zeros(0, np.int64)
    split = per_row(kind_params, seg_kind, "split_stops").astype(bool) & ~still & (seg_len >= 2)
    if split.any():
        stop_first, stop_last = detect_stops(
            tk,
            xk,
            yk,
            seg_start[split],
            seg_end[split],
            per_row(kind_params, seg_kind[split], "stop_max_diameter_m"),
            np.round(per_row(kind_params, seg_kind[split], "stop_min_duration_s") * NS_PER_S).astype(np.int64),
        )
    # Pieces of the segments: [start, first stop fix], [stop's last fix, next stop's first], ...
    p_start = np.sort(np.concatenate([seg_start, stop_last]))
    p_last = np.sort(np.concatenate([seg_end - 1, stop_first]))
    in_stop = np.zeros(len(keep), dtype=np.int64)
    np.add.at(in_stop, stop_first + 1, 1)
    np.add.at(in_stop, stop_last, -1)
    interior = np.cumsum(in_stop) > 0
    if interior.any():
        drop[keep[interior]] = CODE["stop"]
        notes.append((keep[interior], "inside a stop"))

    # Number pieces within each trajectory, then drop the 0 m ones (never the 1-fix ones: the
    # length filter reports those).
    piece_traj = ck[p_start]
    first_piece = np.ones(len(piece_traj), dtype=bool)
    first_piece[1:] = piece_traj[1:] != piece_traj[:-1]
    piece_no = np.arange(len(p_start))
    k = piece_no - np.maximum.accumulate(np.where(first_piece, piece_no, 0))
    zero = _zero_length(xk, yk, p_start, p_last + 1, moves) & (p_last > p_start)
    if zero.any():
        rows = keep[concat_ranges(p_start[zero], p_last[zero] + 1)]
        drop[rows] = CODE["short_trajectory"]
        notes.append((rows, "piece of 0 m: every fix at one position"))
    good = ~zero
    sizes = p_last[good] - p_start[good] + 1
    end = np.cumsum(sizes)
    return Pieces(
        drop=drop,
        rows=keep[concat_ranges(p_start[good], p_last[good] + 1)],
        start=end - sizes,
        end=end,
        k=k[good],
        n_segments=int(len(seg_start)),
        notes=notes,
    )


def _zero_length(x, y, start, end, moved_before=None) -> np.ndarray:
    """Per piece ``start:end`` of ``x, y``: True when every fix has the piece's first position.

    ``moved_before``: cumulative count of position changes (``_moves(x, y)``), to reuse.
    """
    if len(start) == 0:
        return np.zeros(0, dtype=bool)
    cs = _moves(x, y) if moved_before is None else moved_before
    return cs[end - 1] == cs[start]


def _moves(x, y) -> np.ndarray:
    """``cs[i]``: how many times the position changed between fix 0 and fix i."""
    step = np.zeros(len(x), dtype=np.int64)
    step[1:] = (x[1:] != x[:-1]) | (y[1:] != y[:-1])
    return np.cumsum(step)


def speed_notes(speed, v_max) -> list[str]:
    return [f"{v:.1f} m/s from the previous kept fix > v_max {vm:g} m/s" for v, vm in zip(speed, v_max)]


def per_row(kind_params: Mapping[int, PreprocessParams], kinds: np.ndarray, name: str) -> np.ndarray:
    """Parameter ``name`` of each row's mover kind (``kinds`` are category codes), as float64."""
    out = np.empty(len(kinds), dtype=np.float64)
    for code, p in kind_params.items():
        out[kinds == code] = float(getattr(p, name))
    return out
