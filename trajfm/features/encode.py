"""Per-point model inputs, and the inverse step from a predicted displacement back to a fix.

Feature vector of point i (``FEATURE_NAMES``), all computed in float64 then stored float32:

- ``dx_m, dy_m``: east/north metres from point i-1 to point i in the tangent plane at i-1
  (0 for the first point of a trajectory piece): region-agnostic motion, the tutorial's delta
  encoding, never raw degrees.
- ``log_dt_s``: ``log1p`` of the seconds since point i-1 (0 for the first point). Times stay
  int64 nanoseconds until this difference is taken, so nothing is quantized (the float32
  epoch-seconds trap of the tutorial's code).
- ``tod_sin, tod_cos, dow_sin, dow_cos``: time of day and day of week as cycles, in *local
  solar time* (UTC shifted by lon/15 hours): region-agnostic, needs no timezone database.

The model predicts the first three features of the next point (``TARGET_NAMES``).
"""

from __future__ import annotations

import numpy as np

from trajfm.geo import displacement_m, offset_lonlat

FEATURE_NAMES = ["dx_m", "dy_m", "log_dt_s", "tod_sin", "tod_cos", "dow_sin", "dow_cos"]
TARGET_NAMES = ["dx_m", "dy_m", "log_dt_s"]
N_FEATURES = len(FEATURE_NAMES)
N_TARGETS = len(TARGET_NAMES)

NS_PER_S = 1_000_000_000
DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
_EPOCH_DOW_OFFSET_S = 3 * DAY_S  # 1970-01-01 was a Thursday; shift so Monday 00:00 -> phase 0


def calendar_features(t_ns: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """(n, 4) time-of-day and day-of-week cycles in local solar time; ``t_ns`` int64 UTC ns."""
    t_ns = np.asarray(t_ns, dtype=np.int64)
    # Split seconds into whole days + remainder before going to float: exact for any epoch.
    solar_s = (t_ns // NS_PER_S) + np.round(np.asarray(lon, dtype=np.float64) / 15.0 * 3600.0).astype(np.int64)
    tod = (solar_s % 86_400).astype(np.float64) / DAY_S
    dow = ((solar_s + int(_EPOCH_DOW_OFFSET_S)) % int(WEEK_S)).astype(np.float64) / WEEK_S
    two_pi = 2.0 * np.pi
    return np.stack([np.sin(two_pi * tod), np.cos(two_pi * tod), np.sin(two_pi * dow), np.cos(two_pi * dow)], axis=-1)


def encode_points(lon: np.ndarray, lat: np.ndarray, t_ns: np.ndarray) -> np.ndarray:
    """(n, N_FEATURES) float32 features of one trajectory piece, ordered by time.

    ``lon, lat`` are WGS84 degrees (x first); ``t_ns`` is int64 nanoseconds since the epoch, UTC.
    """
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    t_ns = np.asarray(t_ns, dtype=np.int64)
    n = len(lon)
    out = np.zeros((n, N_FEATURES), dtype=np.float64)
    if n == 0:
        return out.astype(np.float32)
    east, north = displacement_m(lon[:-1], lat[:-1], lon[1:], lat[1:])
    dt_s = np.diff(t_ns).astype(np.float64) / NS_PER_S  # int64 difference first: exact
    out[1:, 0] = east
    out[1:, 1] = north
    out[1:, 2] = np.log1p(np.maximum(dt_s, 0.0))
    out[:, 3:] = calendar_features(t_ns, lon)
    return out.astype(np.float32)


def decode_step(
    lon: np.ndarray, lat: np.ndarray, t_ns: np.ndarray, dx_m: np.ndarray, dy_m: np.ndarray, log_dt_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply one predicted step to fixes: returns the next (lon, lat, t_ns).

    ``dx_m, dy_m`` are east/north metres, ``log_dt_s`` is ``log1p(seconds)``; the time gap is
    rounded to whole milliseconds and added to the int64 nanosecond clock.
    """
    lon2, lat2 = offset_lonlat(lon, lat, dx_m, dy_m)
    dt_s = np.expm1(np.clip(np.asarray(log_dt_s, dtype=np.float64), 0.0, 20.0))
    t2 = np.asarray(t_ns, dtype=np.int64) + np.round(dt_s * 1000.0).astype(np.int64) * 1_000_000
    return lon2, lat2, t2


def next_point_features(
    prev_lon: np.ndarray,
    prev_lat: np.ndarray,
    prev_t_ns: np.ndarray,
    lon: np.ndarray,
    lat: np.ndarray,
    t_ns: np.ndarray,
) -> np.ndarray:
    """(b, N_FEATURES) features of new points given their predecessors (batched rollout)."""
    east, north = displacement_m(prev_lon, prev_lat, lon, lat)
    dt_s = (np.asarray(t_ns, dtype=np.int64) - np.asarray(prev_t_ns, dtype=np.int64)).astype(np.float64) / NS_PER_S
    feats = np.concatenate(
        [np.stack([east, north, np.log1p(np.maximum(dt_s, 0.0))], axis=-1), calendar_features(t_ns, lon)], axis=-1
    )
    return feats.astype(np.float32)
