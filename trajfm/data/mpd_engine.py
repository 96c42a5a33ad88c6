"""``engine="movingpandas"``: the cleaning steps of ``trajfm.data.clean`` run by MovingPandas 0.23.

The reference implementation, selectable wherever the vectorized engine is
(``clean_partition(df, engine="movingpandas")``, ``preprocess(..., engine="movingpandas")``).
Duplicates, the length filter and the output tables are shared with the vectorized engine; these
steps are MovingPandas' own calls, per trajectory, per mover kind (its parameters are scalars):

- speed outliers: ``OutlierCleaner(tc).clean(v_max=v_max_mps, units=("m", "s"))``;
- gap split: ``ObservationGapSplitter(tc).split(gap=max_gap_s)``;
- stop split (kinds with ``split_stops``): what ``StopSplitter._split_traj`` does, step by step
  (``TrajectoryStopDetector.get_stop_time_ranges``, ``StopSplitter.get_time_ranges_between_stops``,
  ``Trajectory.get_segment_between`` and the 0 m length filter of its collection split), so that
  pieces MovingPandas discards still count in the piece numbering ``k``;
- generalization: ``MinTimeDeltaGeneralizer(traj).generalize(tolerance=generalize_s)``;
- resampling: ``Trajectory.get_position_at(t, method="interpolated")`` at each grid time.

Known differences from the vectorized engine, all outside normal data: MovingPandas restores a
whole trajectory when outlier cleaning would leave fewer than 2 fixes; it measures speed with
geodesic rather than haversine distances (0.5 % apart at most); it interpolates longitude
straight through 0 degrees across the antimeridian; and its stop measure goes through GEOS's
convex hull, which can fail on many nearly collinear fixes (libgeos/geos#722), where the
vectorized engine keeps the true hull. It is slow: about 10-100 microseconds per fix per step.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from trajfm.data.clean_params import NS_PER_S
from trajfm.data.clean_steps import CODE, Pieces, speed_notes
from trajfm.geo import haversine_m

CRS = "EPSG:4326"


def _mpd():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optional-dependency notices on import
        import movingpandas

    return movingpandas


def _naive_utc(t_ns: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(np.asarray(t_ns, dtype=np.int64).view("datetime64[ns]"))


def _rows(traj) -> np.ndarray:
    return traj.df["row"].to_numpy(dtype=np.int64)


def split(t, lon, lat, codes, kinds, kind_params) -> Pieces:
    """Speed outliers, gap split and stop split through MovingPandas (see ``clean_steps.split_vectorized``)."""
    mpd = _mpd()
    n = len(t)
    drop = np.zeros(n, dtype=np.int8)
    notes: list = []
    pieces: list[tuple[int, int, np.ndarray]] = []  # (trajectory code, k, rows)
    n_segments = 0
    frame = pd.DataFrame({"traj": codes, "t": _naive_utc(t), "lon": lon, "lat": lat, "row": np.arange(n)})
    size = np.bincount(codes, minlength=int(codes.max()) + 1 if n else 0)
    single = size[codes] < 2
    for r in np.flatnonzero(single):  # MovingPandas takes no 1-fix trajectory: one piece of 1 fix
        pieces.append((int(codes[r]), 0, np.array([r])))
        n_segments += 1

    for kind, p in kind_params.items():
        sub = frame[(kinds == kind) & ~single]
        if sub.empty:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tc = mpd.TrajectoryCollection(sub, traj_id_col="traj", t="t", x="lon", y="lat", crs=CRS)
            cleaned = mpd.OutlierCleaner(tc).clean(v_max=p.v_max_mps, units=("m", "s"))
            gaps = mpd.ObservationGapSplitter(cleaned).split(gap=pd.Timedelta(seconds=p.max_gap_s))
        kept = np.concatenate([_rows(tr) for tr in cleaned]) if len(cleaned.trajectories) else np.zeros(0, np.int64)
        outlier = np.setdiff1d(sub["row"].to_numpy(), kept)
        if len(outlier):
            drop[outlier] = CODE["speed_outlier"]
            notes.append(
                (
                    outlier,
                    speed_notes(
                        _speed_from_previous_kept(t, lon, lat, codes, outlier, kept), np.full(len(outlier), p.v_max_mps)
                    ),
                )
            )

        by_traj: dict[int, dict[int, object]] = {}
        for g in gaps:
            code, i = str(g.id).rsplit("_", 1)
            by_traj.setdefault(int(code), {})[int(i)] = g
        in_segment = np.concatenate([_rows(g) for g in gaps]) if len(gaps.trajectories) else np.zeros(0, np.int64)
        lost = np.setdiff1d(kept, in_segment)  # gap segments MovingPandas dropped: 1 fix or 0 m
        if len(lost):
            drop[lost] = CODE["short_trajectory"]
            notes.append((lost, "gap segment dropped by ObservationGapSplitter: a single fix or 0 m long"))
        for code, segments in by_traj.items():
            k = 0
            for i in range(max(segments) + 1):
                if i not in segments:
                    k += 1  # a dropped gap segment still counts as one piece
                    continue
                if not p.split_stops:
                    pieces.append((code, k, _rows(segments[i])))
                    k += 1
                    continue
                k = _stop_pieces(mpd, segments[i], code, k, p, pieces, drop, notes)
        for tr in cleaned:  # gap segments, kept or dropped: one more than the gaps
            n_segments += 1 + int(
                (np.diff(tr.df.index.to_numpy()) > np.timedelta64(int(round(p.max_gap_s * NS_PER_S)), "ns")).sum()
            )

    pieces.sort(key=lambda item: (item[0], item[1]))
    sizes = np.array([len(r) for _, _, r in pieces], dtype=np.int64)
    end = np.cumsum(sizes)
    rows = np.concatenate([r for _, _, r in pieces]) if pieces else np.zeros(0, np.int64)
    return Pieces(
        drop=drop,
        rows=rows,
        start=end - sizes,
        end=end,
        k=np.array([k for _, k, _ in pieces], dtype=np.int64),
        n_segments=n_segments,
        notes=notes,
    )


def _stop_pieces(mpd, seg, code, k, p, pieces, drop, notes) -> int:
    """Split one gap segment at its stops as ``StopSplitter`` does; returns the next ``k``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stops = mpd.TrajectoryStopDetector(seg).get_stop_time_ranges(
            max_diameter=p.stop_max_diameter_m, min_duration=pd.Timedelta(seconds=p.stop_min_duration_s)
        )
        between = mpd.StopSplitter.get_time_ranges_between_stops(seg, stops)
    t_index = seg.df.index
    rows = _rows(seg)
    for stop in stops:
        inside = rows[(t_index > stop.t_0) & (t_index < stop.t_n)]
        if len(inside):
            drop[inside] = CODE["stop"]
            notes.append((inside, "inside a stop"))
    for j, tr in enumerate(between):
        part = rows[(t_index >= tr.t_0) & (t_index <= tr.t_n)]
        if len(part) >= 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                length = seg.get_segment_between(tr.t_0, tr.t_n).get_length()
            if not length > 0:  # StopSplitter's collection split keeps only pieces longer than 0 m
                drop[part] = CODE["short_trajectory"]
                notes.append((part, "piece of 0 m: every fix at one position"))
                continue
        pieces.append((code, k + j, part))
    return k + len(between)


def _speed_from_previous_kept(t, lon, lat, codes, outlier, kept) -> np.ndarray:
    """Speed (m/s) of each outlier from the last kept fix before it in its trajectory."""
    kept = np.sort(kept)
    prev = kept[np.clip(np.searchsorted(kept, outlier) - 1, 0, None)] if len(kept) else outlier
    prev = np.where(codes[prev] == codes[outlier], prev, outlier)
    with np.errstate(divide="ignore", invalid="ignore"):
        return haversine_m(lon[prev], lat[prev], lon[outlier], lat[outlier]) / ((t[outlier] - t[prev]) / NS_PER_S)


def _trajectory(mpd, t, lon, lat, start, end, traj_id):
    frame = pd.DataFrame({"t": _naive_utc(t[start:end]), "lon": lon[start:end], "lat": lat[start:end]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mpd.Trajectory(frame, traj_id, t="t", x="lon", y="lat", crs=CRS)


def generalize(t, lon, lat, start, end, tolerance_ns) -> np.ndarray:
    """``MinTimeDeltaGeneralizer`` on each piece ``start[p]:end[p]``; returns the keep mask."""
    mpd = _mpd()
    keep = np.zeros(len(t), dtype=bool)
    for p, (s, e) in enumerate(zip(start, end)):
        traj = _trajectory(mpd, t, lon, lat, s, e, p)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = mpd.MinTimeDeltaGeneralizer(traj).generalize(tolerance=pd.Timedelta(int(tolerance_ns[p]), unit="ns"))
        kept_t = out.df.index.to_numpy(dtype="datetime64[ns]").view(np.int64)
        keep[s:e] = np.isin(t[s:e], kept_t)
    return keep


def positions(t, lon, lat, start, end, piece, grid_t) -> tuple[np.ndarray, np.ndarray]:
    """``Trajectory.get_position_at(t)`` of each piece at its grid times (interpolated)."""
    mpd = _mpd()
    out_lon, out_lat = np.empty(len(piece)), np.empty(len(piece))
    bounds = np.searchsorted(piece, np.arange(len(start) + 1))
    for p, (s, e) in enumerate(zip(start, end)):
        traj = _trajectory(mpd, t, lon, lat, s, e, p)
        for i in range(bounds[p], bounds[p + 1]):
            pt = traj.get_position_at(pd.Timestamp(int(grid_t[i]), unit="ns"), method="interpolated")
            out_lon[i], out_lat[i] = pt.x, pt.y
    return out_lon, out_lat
