"""Baselines every task reports next to the model, on exactly the same windows.

- ``constant_velocity`` (forecast, generation): repeat the last step and time gap (defined
  here with ``forecastable``, the windows a forecast is scored on; ``trajfm.evaluate.forecast``
  re-exports both next to the model's rollout).
- ``linear_extrapolation`` (forecast): the least-squares velocity of the last fixes.
- ``kalman`` (forecast): a constant-velocity Kalman filter tuned on the fit windows
  (``trajfm.evaluate.kalman``).
- ``linear_interp`` (recovery): hidden points evenly on the straight line between the fixes
  around the gap (``trajfm.model.infill.linear_interpolation``).
- ``historical_speed`` (travel time): ``HistoricalSpeed``, the average speed of the training
  trips at the departure's hour of day.
- ``markov_h3`` (next location): ``MarkovChain``, first-order transitions between H3 cells.
- ``resampled_steps`` (generation): ``resampled_steps``, steps drawn at random from real ones.
- ``resampled_path`` (similarity): ``resampled_path_embedding``, a handcrafted vector of points
  along the track.

Baselines that learn get their data from ``split_for_fitting``: the training windows when the
caller has them, else the earlier half of the evaluation windows (then only the later half is
scored, by every predictor).
"""

from __future__ import annotations

import numpy as np

from trajfm.features.encode import NS_PER_S
from trajfm.features.windows import WindowSet
from trajfm.geo import displacement_m, haversine_m, offset_lonlat
from trajfm.model.infill import linear_interpolation

__all__ = [  # linear_interpolation lives with the code it is a baseline for
    "HistoricalSpeed",
    "MarkovChain",
    "constant_velocity",
    "h3_cells",
    "linear_extrapolation",
    "linear_interpolation",
    "local_hour",
    "path_length_m",
    "real_steps",
    "resampled_path_embedding",
    "resampled_steps",
    "split_for_fitting",
]


def forecastable(ws: WindowSet, context_len: int, horizon: int) -> np.ndarray:
    """Indices of windows with at least ``context_len + horizon`` real points."""
    if context_len < 1 or horizon < 1:
        raise ValueError(f"need context_len >= 1 and horizon >= 1, got {context_len}, {horizon}")
    return np.flatnonzero(ws.mask.sum(axis=1) >= context_len + horizon)


def constant_velocity(ws: WindowSet, context_len: int, horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Baseline forecasts (lon, lat, t_ns) each (N, horizon) for the ``forecastable`` windows.

    Repeats the last displacement (east/north metres in the tangent plane at the previous fix)
    and the last time gap (exact int64 ns) of the context.
    """
    if context_len < 2:
        raise ValueError("constant velocity needs context_len >= 2 (a last displacement)")
    sel = forecastable(ws, context_len, horizon)
    a, b = context_len - 2, context_len - 1
    east, north = displacement_m(ws.lon[sel, a], ws.lat[sel, a], ws.lon[sel, b], ws.lat[sel, b])
    dt_ns = ws.t_ns[sel, b] - ws.t_ns[sel, a]
    lon, lat, t_ns = ws.lon[sel, b].astype(np.float64), ws.lat[sel, b].astype(np.float64), ws.t_ns[sel, b]
    out_lon, out_lat = np.zeros((len(sel), horizon)), np.zeros((len(sel), horizon))
    out_t = np.zeros((len(sel), horizon), dtype=np.int64)
    for h in range(horizon):
        lon, lat = offset_lonlat(lon, lat, east, north)
        t_ns = t_ns + dt_ns
        out_lon[:, h], out_lat[:, h], out_t[:, h] = lon, lat, t_ns
    return out_lon, out_lat, out_t


def split_for_fitting(ws: WindowSet, train_ws: WindowSet | None) -> tuple[WindowSet, WindowSet]:
    """(windows to fit baselines on, windows to score) from ``ws`` and optional ``train_ws``.

    Without ``train_ws``: the cut is the median window start time; windows that END at or before
    it fit, windows that START after it are scored (a window straddling the cut is dropped, so
    no point is in both halves).
    """
    if train_ws is not None:
        if len(train_ws) == 0:
            raise ValueError("train_ws is empty: the baselines have nothing to learn from")
        return train_ws, ws
    n = ws.mask.sum(axis=1)
    first = ws.t_ns[:, 0]
    last = ws.t_ns[np.arange(len(ws)), np.maximum(n - 1, 0)]
    cut = np.quantile(first, 0.5, method="lower")
    fit, score = np.flatnonzero(last <= cut), np.flatnonzero(first > cut)
    if len(fit) == 0 or len(score) == 0:
        raise ValueError(
            "cannot split the windows in time to fit the baselines (too few or all at once): pass train_ws"
        )
    return ws.subset(fit), ws.subset(score)


def local_hour(t_ns: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Hour of day 0..23 in local solar time (UTC + lon / 15 h), as the model's calendar features."""
    s = np.asarray(t_ns, np.int64) // NS_PER_S + np.round(np.asarray(lon, np.float64) / 15.0 * 3600).astype(np.int64)
    return (s % 86_400) // 3_600


# --- forecast ----------------------------------------------------------------------------------

LINEAR_FIT_POINTS = 5  # fixes the linear extrapolation fits


def linear_extrapolation(ws, context_len: int, horizon: int, fit_points: int = LINEAR_FIT_POINTS):
    """Baseline forecasts (lon, lat, t_ns) each (N, horizon) for the ``forecastable`` windows.

    Fits east and north (metres, tangent plane at the last context fix) as straight lines in time
    over the last ``fit_points`` context fixes (least squares), and moves along that velocity
    from the last fix; future times repeat the last time gap (exact int64 ns), as constant
    velocity does. With ``fit_points=2`` it is constant velocity. Less sensitive to GPS noise in
    one step than constant velocity; blind to turns, like it.
    """
    if context_len < 2 or fit_points < 2:
        raise ValueError("linear extrapolation needs context_len >= 2 and fit_points >= 2")
    k = min(fit_points, context_len)
    sel = forecastable(ws, context_len, horizon)
    b = context_len - 1
    cols = np.arange(context_len - k, context_len)
    lon0, lat0, t0 = ws.lon[sel, b].astype(np.float64), ws.lat[sel, b].astype(np.float64), ws.t_ns[sel, b]
    east, north = displacement_m(lon0[:, None], lat0[:, None], ws.lon[sel][:, cols], ws.lat[sel][:, cols])  # (N, k)
    t_s = (ws.t_ns[sel][:, cols] - t0[:, None]).astype(np.float64) / 1e9  # (N, k) seconds, <= 0, exact ints first
    tc = t_s - t_s.mean(axis=1, keepdims=True)
    denom = (tc**2).sum(axis=1)
    safe = np.where(denom > 0, denom, 1.0)
    v_east = np.where(denom > 0, (tc * (east - east.mean(axis=1, keepdims=True))).sum(axis=1) / safe, 0.0)  # m/s
    v_north = np.where(denom > 0, (tc * (north - north.mean(axis=1, keepdims=True))).sum(axis=1) / safe, 0.0)
    dt_ns = ws.t_ns[sel, b] - ws.t_ns[sel, b - 1]
    steps = np.arange(1, horizon + 1)
    ahead_s = (dt_ns[:, None] * steps).astype(np.float64) / 1e9  # (N, horizon)
    lon, lat = offset_lonlat(lon0[:, None], lat0[:, None], v_east[:, None] * ahead_s, v_north[:, None] * ahead_s)
    return lon, lat, t0[:, None] + dt_ns[:, None] * steps


# --- travel time -------------------------------------------------------------------------------


class HistoricalSpeed:
    """Travel time = distance / the historical average speed at the departure's local hour.

    ``fit(distance_m, duration_s, hour)``: per hour, speed = total distance / total duration of
    the training trips (a ratio of sums: long trips weigh more, zero-length ones do not break
    it); an hour with fewer than ``min_trips`` trips uses the all-hours speed.
    """

    def __init__(self, min_trips: int = 5):
        self.min_trips = min_trips
        self.speed_mps = np.zeros(24)
        self.global_mps = 0.0

    def fit(self, distance_m: np.ndarray, duration_s: np.ndarray, hour: np.ndarray) -> "HistoricalSpeed":
        distance_m, duration_s, hour = np.asarray(distance_m, float), np.asarray(duration_s, float), np.asarray(hour)
        ok = duration_s > 0
        if not ok.any() or distance_m[ok].sum() <= 0:
            raise ValueError("historical speed needs training trips that move and take time")
        self.global_mps = float(distance_m[ok].sum() / duration_s[ok].sum())
        self.speed_mps = np.full(24, self.global_mps)
        for h in range(24):
            sel = ok & (hour == h)
            if sel.sum() >= self.min_trips and distance_m[sel].sum() > 0:
                self.speed_mps[h] = distance_m[sel].sum() / duration_s[sel].sum()
        return self

    def predict(self, distance_m: np.ndarray, hour: np.ndarray) -> np.ndarray:
        """Seconds to cover ``distance_m`` departing at local ``hour``."""
        return np.asarray(distance_m, float) / self.speed_mps[np.asarray(hour, int)]


# --- next location -----------------------------------------------------------------------------


def h3_cells(lon: np.ndarray, lat: np.ndarray, resolution: int) -> np.ndarray:
    """int64 H3 cell ids (h3 v4, ``latlng_to_cell(lat, lng, res)``: latitude first) of degrees."""
    from h3.api import basic_int as h3

    lon, lat = np.asarray(lon, np.float64).ravel(), np.asarray(lat, np.float64).ravel()
    return np.fromiter((h3.latlng_to_cell(la, lo, resolution) for lo, la in zip(lon, lat)), np.uint64, len(lon)).astype(
        np.int64
    )


class MarkovChain:
    """First-order Markov chain over cells: the next cells of a cell ranked by transition count.

    ``fit`` counts transitions between consecutive cells (including staying in the same cell);
    ``rank_of`` gives the 1-based rank of the true next cell among the current cell's successors
    (count descending, ties by cell id: deterministic), ``inf`` when the chain never saw that
    transition. A cell never seen in training falls back to "stay in place": its only
    candidate is itself.
    """

    def __init__(self):
        self.next: dict[int, np.ndarray] = {}

    def fit(self, cur: np.ndarray, nxt: np.ndarray) -> "MarkovChain":
        pairs, counts = np.unique(np.stack([cur, nxt], axis=1), axis=0, return_counts=True)
        order = np.lexsort((pairs[:, 1], -counts, pairs[:, 0]))  # by current cell, count desc, next id
        pairs = pairs[order]
        bounds = np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0], True])
        self.next = {int(pairs[a, 0]): pairs[a:b, 1] for a, b in zip(bounds[:-1], bounds[1:])}
        return self

    def candidates(self, cell: int) -> np.ndarray:
        return self.next.get(int(cell), np.array([cell], np.int64))

    def rank_of(self, cur: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        ranks = np.full(len(cur), np.inf)
        for i, (c, n) in enumerate(zip(cur, nxt)):
            hit = np.flatnonzero(self.candidates(c) == n)
            if len(hit):
                ranks[i] = hit[0] + 1
        return ranks


# --- generation --------------------------------------------------------------------------------


def real_steps(ws: WindowSet) -> np.ndarray:
    """(S, 3) east m, north m, seconds of every step between consecutive real points of ``ws``."""
    both = ws.mask[:, 1:] & ws.mask[:, :-1]
    e, n = displacement_m(ws.lon[:, :-1], ws.lat[:, :-1], ws.lon[:, 1:], ws.lat[:, 1:])
    dt = np.diff(ws.t_ns, axis=1)
    return np.stack([e[both], n[both], dt[both].astype(np.float64) / NS_PER_S], axis=-1)


def resampled_steps(
    lon0: np.ndarray, lat0: np.ndarray, t0_ns: np.ndarray, steps: np.ndarray, horizon: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate (lon, lat, t_ns) each (N, horizon) from starts (N,) by drawing each step (east m,
    north m, seconds) at random from ``steps`` (S, 3): real step lengths and gaps, random turns."""
    if len(steps) == 0:
        raise ValueError("no real steps to resample")
    N = len(lon0)
    lon, lat, t = np.asarray(lon0, np.float64), np.asarray(lat0, np.float64), np.asarray(t0_ns, np.int64)
    out_lon, out_lat, out_t = np.zeros((N, horizon)), np.zeros((N, horizon)), np.zeros((N, horizon), np.int64)
    for h in range(horizon):
        s = steps[rng.integers(0, len(steps), N)]
        lon, lat = offset_lonlat(lon, lat, s[:, 0], s[:, 1])
        t = t + np.round(s[:, 2] * 1000).astype(np.int64) * 1_000_000
        out_lon[:, h], out_lat[:, h], out_t[:, h] = lon, lat, t
    return out_lon, out_lat, out_t


# --- similarity --------------------------------------------------------------------------------


def resampled_path_embedding(
    lon: np.ndarray, lat: np.ndarray, mask: np.ndarray, points: int = 8, origin: tuple[float, float] | None = None
) -> np.ndarray:
    """(N, 2 * points) handcrafted trajectory vectors: ``points`` positions evenly spaced along
    each track's length, as east/north metres from a common ``origin`` (lon, lat; default the
    mean of all real points). Tracks are (N, L) degrees with (N, L) real-point masks (prefixes)."""
    if origin is None:
        origin = (float(lon[mask].mean()), float(lat[mask].mean()))
    e, n = displacement_m(origin[0], origin[1], lon, lat)  # (N, L) metres
    out = np.zeros((len(lon), 2 * points))
    where = np.linspace(0.0, 1.0, points)
    for i in range(len(lon)):
        k = int(mask[i].sum())
        if k == 0:
            continue
        ei, ni = e[i, :k], n[i, :k]
        arc = np.r_[0.0, np.cumsum(np.hypot(np.diff(ei), np.diff(ni)))]
        s = arc / arc[-1] if arc[-1] > 0 else np.linspace(0.0, 1.0, k) if k > 1 else np.zeros(1)
        out[i, :points] = np.interp(where, s, ei) if k > 1 else ei[0]
        out[i, points:] = np.interp(where, s, ni) if k > 1 else ni[0]
    return out


def path_length_m(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """(N,) metres along (N, L) tracks (all points real)."""
    return haversine_m(lon[:, :-1], lat[:, :-1], lon[:, 1:], lat[:, 1:]).sum(axis=1)
