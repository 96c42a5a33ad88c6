"""Forecast calibration that is part of the model: a per-step blend with constant velocity, and
per-step radial error quantiles for quantiles, regions and scores.

Both live in the model's config (``GPTConfig.forecast_blend``, ``GPTConfig.forecast_radius_m``),
so the checkpoint, the MLflow pyfunc, ``trajfm forecast`` and the Python API all give the same
forecasts; ``trajfm.evaluate.calibrate.calibrate_model`` fits them on the validation split.

- **Blend** (the never-worse rule): at forecast step h the position is
  ``w_h * model + (1 - w_h) * constant_velocity``, both as east/north metres in the tangent plane
  at the last context fix; ``w_h`` in [0, 1] is the weight on the validation split's grid with the
  lowest mean error at step h, so on that split the blend is never worse than constant velocity
  (``w_h = 0`` is constant velocity itself) nor, where it keeps a weight, than the model
  (``w_h = 1``); and it falls back
  to ``w_h = 0`` unless its gain over constant velocity is clear on that split (mean per-window
  gain > ``MARGIN_Z`` standard errors), so a gain within the noise does not turn into a loss on
  new data. Times stay the model's. Steps past the fitted ones use the last weight. Deterministic point forecasts only
  ("mode" / "mean"); sampled paths are not blended.
- **Error model**: at step h the true fix lies at a distance from the forecast whose quantiles
  at ``RADIUS_LEVELS`` (5%, 10%, 20%, ..., 90%, 95%, 99%) are stored per step
  (``forecast_radius_m``, fitted as the empirical quantiles of the validation split's errors),
  in a direction uniform around the forecast. The ``level`` region is the disc of the
  ``level`` quantile radius (linear in level between stored ones), so every stored level is
  calibrated on validation, whatever the shape of the tails (a Gaussian fitted to the same errors
  covers 69% in its 50% disc and 84% in its 90% disc on AIS: errors are heavy tailed). Per-axis
  quantiles (for ``lon_q10 .. lat_q90`` columns) and the CRPS come from the distribution's
  east marginal, computed once per step from ``MARGINAL_SAMPLES`` deterministic draws. Steps past
  the fitted ones scale the last step's radii linearly: ``r_H * h / H``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from trajfm.geo import displacement_m, haversine_m, offset_lonlat
from trajfm.model.config import RADIUS_LEVELS

BLEND_GRID = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))  # candidate model weights, steps of 0.05
MARGIN_Z = 1.645  # a blend replaces constant velocity only when its validation gain is clear (one-sided 95%)
QUANTILE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MARGINAL_SAMPLES = 4096  # deterministic draws of the error distribution per step (per-axis quantiles, CRPS)
RADIUS_FLOOR_M = 0.01


def per_step(values: tuple | None, horizon: int, grow: bool) -> np.ndarray | None:
    """(horizon,) values for steps 1..horizon from the fitted ones: past them the last value
    (``grow=False``) or linear growth from it (``grow=True``: ``v_H * h / H``)."""
    if values is None:
        return None
    v = np.asarray(values, np.float64)
    H = len(v)
    if horizon <= H:
        return v[:horizon]
    h = np.arange(H + 1, horizon + 1)
    tail = v[-1] * h / H if grow else np.full(len(h), v[-1])
    return np.r_[v, tail]


def cv_positions(prev_lon, prev_lat, last_lon, last_lat, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, horizon) lon, lat of constant velocity from the last two fixes (N,) degrees: the same
    arithmetic as ``trajfm.evaluate.forecast.constant_velocity``."""
    east, north = displacement_m(prev_lon, prev_lat, last_lon, last_lat)
    lon, lat = np.asarray(last_lon, np.float64), np.asarray(last_lat, np.float64)
    out_lon, out_lat = np.zeros((len(lon), horizon)), np.zeros((len(lon), horizon))
    for h in range(horizon):
        lon, lat = offset_lonlat(lon, lat, east, north)
        out_lon[:, h], out_lat[:, h] = lon, lat
    return out_lon, out_lat


def mix(weights: np.ndarray, last_lon, last_lat, a_lon, a_lat, b_lon, b_lat) -> tuple[np.ndarray, np.ndarray]:
    """(N, H) positions ``w * a + (1 - w) * b`` per step (``weights`` (H,)), in the tangent plane at
    the last fixes (N,); ``w = 1`` returns ``a`` and ``w = 0`` returns ``b`` exactly."""
    w = np.asarray(weights, np.float64)[None, :]
    lon0, lat0 = np.asarray(last_lon, np.float64)[:, None], np.asarray(last_lat, np.float64)[:, None]
    ae, an = displacement_m(lon0, lat0, a_lon, a_lat)
    be, bn = displacement_m(lon0, lat0, b_lon, b_lat)
    lon, lat = offset_lonlat(lon0, lat0, w * ae + (1 - w) * be, w * an + (1 - w) * bn)
    lon, lat = np.where(w == 1.0, a_lon, lon), np.where(w == 1.0, a_lat, lat)
    return np.where(w == 0.0, b_lon, lon), np.where(w == 0.0, b_lat, lat)


def apply_blend(config, prev_lon, prev_lat, last_lon, last_lat, model_lon, model_lat) -> tuple[np.ndarray, np.ndarray]:
    """The model's (N, H) forecast positions after the config's ``forecast_blend`` (unchanged
    when it has none)."""
    w = per_step(config.calibration.forecast_blend, model_lon.shape[1], grow=False)
    if w is None:
        return model_lon, model_lat
    cv_lon, cv_lat = cv_positions(prev_lon, prev_lat, last_lon, last_lat, model_lon.shape[1])
    return mix(w, last_lon, last_lat, model_lon, model_lat, cv_lon, cv_lat)


def fit_blend(
    last_lon,
    last_lat,
    model_lon,
    model_lat,
    cv_lon,
    cv_lat,
    true_lon,
    true_lat,
    grid=BLEND_GRID,
    margin_z: float = MARGIN_Z,
) -> tuple[float, ...]:
    """Per step, the weight of ``grid`` whose blend has the lowest mean great-circle error (m)
    against the truth (ties: the smaller weight, nearer constant velocity); then 0 (constant
    velocity itself) wherever that blend's gain over constant velocity is not clear: the mean
    per-window gain less ``margin_z`` standard errors is not above 0. A gain the validation split
    cannot tell from noise would not hold on new data, and constant velocity is the safe side."""
    H = model_lon.shape[1]
    best = np.zeros(H)
    score = np.full(H, np.inf)
    errors = {}
    for w in sorted(grid):
        lon, lat = mix(np.full(H, w), last_lon, last_lat, model_lon, model_lat, cv_lon, cv_lat)
        errors[w] = haversine_m(lon, lat, true_lon, true_lat)  # (N, H)
        err = errors[w].mean(axis=0)
        better = err < score
        best[better], score[better] = w, err[better]
    cv_err = haversine_m(cv_lon, cv_lat, true_lon, true_lat)
    for h in range(H):
        gain = cv_err[:, h] - errors[best[h]][:, h]  # per window, metres
        se = gain.std(ddof=1) / math.sqrt(len(gain)) if len(gain) > 1 else np.inf
        if not gain.mean() - margin_z * se > 0:
            best[h] = 0.0
    return tuple(float(w) for w in best)


def fit_radius(radius_m: np.ndarray) -> tuple[tuple[float, ...], ...]:
    """Per step, the quantiles at ``RADIUS_LEVELS`` of the distances ``radius_m`` (N, H) metres
    from forecast to truth (floored at 1 cm, made strictly increasing)."""
    q = np.quantile(np.asarray(radius_m, np.float64), RADIUS_LEVELS, axis=0).T  # (H, L)
    q = np.maximum.accumulate(np.maximum(q, RADIUS_FLOOR_M), axis=1)
    q = q + np.arange(q.shape[1]) * 1e-6  # strictly increasing: ties would make the inverse flat
    return tuple(tuple(float(v) for v in row) for row in q)


def radius_table(values, horizon: int) -> np.ndarray:
    """(horizon, L) radius quantiles for steps 1..horizon from stored (H, L) ones (past H: the
    last row scaled by h / H)."""
    if values is None:
        raise ValueError("this model has no fitted error model (forecast_radius_m): run trajfm.evaluate.calibrate")
    t = np.asarray(values, np.float64)
    H = len(t)
    if horizon <= H:
        return t[:horizon]
    h = np.arange(H + 1, horizon + 1)
    return np.r_[t, t[-1][None, :] * (h / H)[:, None]]


def radius_at(table: np.ndarray, level) -> np.ndarray:
    """(H, ...) radius (m) at ``level`` (scalar or array in [0, 1)) of each step's radial
    distribution: linear in level between the stored quantiles (0 m at level 0), and beyond the
    last one along the last segment's slope."""
    lv = np.r_[0.0, RADIUS_LEVELS]
    level = np.asarray(level, np.float64)
    out = []
    for row in np.asarray(table, np.float64):
        r = np.r_[0.0, row]
        slope = (r[-1] - r[-2]) / (lv[-1] - lv[-2])
        out.append(np.where(level <= lv[-1], np.interp(level, lv, r), r[-1] + (level - lv[-1]) * slope))
    return np.stack(out)


def region_radius_m(config, horizon: int, level: float) -> np.ndarray:
    """(horizon,) radius in metres of the disc around each step's forecast holding the true
    position with probability ``level`` (the model's calibrated error model)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return radius_at(radius_table(config.calibration.forecast_radius_m, horizon), level)


def marginal_samples(table: np.ndarray, n: int = MARGINAL_SAMPLES) -> np.ndarray:
    """(H, n) sorted draws of the east (= north) error in metres of each step's distribution:
    stratified radius levels and golden-angle directions (deterministic, no seed needed)."""
    u = (np.arange(n) + 0.5) / n
    theta = np.arange(n) * math.pi * (3.0 - math.sqrt(5.0))  # golden angle: directions spread evenly
    r = radius_at(table, u)  # (H, n)
    return np.sort(r * np.cos(theta)[None, :], axis=1)


def quantile_offsets_m(config, horizon: int, levels=QUANTILE_LEVELS) -> np.ndarray:
    """(horizon, len(levels)) per-axis quantile offsets in metres: east (or north) of the
    forecast, the ``level`` quantile of the true position lies this far (negative: west/south)."""
    s = marginal_samples(radius_table(config.calibration.forecast_radius_m, horizon))
    return np.quantile(s, levels, axis=1).T


def add_quantiles(forecast: pd.DataFrame, config, levels=QUANTILE_LEVELS) -> pd.DataFrame:
    """``forecast`` (columns ``step`` 1..H, ``lon``, ``lat``; as from ``forecast_points``) with
    ``lon_q10 .. lon_q90`` and ``lat_q10 .. lat_q90`` (degrees: the per-axis quantiles of the true
    position) and ``radius_m_q10 .. radius_m_q90`` (metres: the disc around the forecast holding
    the truth with that probability) for each of ``levels``."""
    steps = forecast["step"].to_numpy(dtype=int)
    H = int(steps.max()) if len(steps) else 1
    off = quantile_offsets_m(config, H, levels)[steps - 1]  # (rows, levels) metres
    radius = np.stack([region_radius_m(config, H, p) for p in levels], axis=1)[steps - 1]
    lon, lat = forecast["lon"].to_numpy(np.float64), forecast["lat"].to_numpy(np.float64)
    out = forecast.copy()
    for j, p in enumerate(levels):
        tag = f"q{round(100 * p)}"
        out[f"lon_{tag}"] = offset_lonlat(lon, lat, off[:, j], 0.0)[0]
        out[f"lat_{tag}"] = offset_lonlat(lon, lat, 0.0, off[:, j])[1]
        out[f"radius_m_{tag}"] = radius[:, j]
    return out
