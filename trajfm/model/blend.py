"""Forecast calibration that is part of the model: a per-step blend with constant velocity, and
a per-step Gaussian error for quantiles and regions.

Both live in the model's config (``GPTConfig.forecast_blend``, ``GPTConfig.forecast_sigma_m``),
so the checkpoint, the MLflow pyfunc, ``trajfm forecast`` and the Python API all give the same
forecasts; ``trajfm.evaluate.calibrate.calibrate_model`` fits them on the validation split.

- **Blend** (the never-worse rule): at forecast step h the position is
  ``w_h * model + (1 - w_h) * constant_velocity``, both as east/north metres in the tangent plane
  at the last context fix; ``w_h`` in [0, 1] is the weight on the validation split's grid with the
  lowest mean error at step h, so on that split the blend is never worse than constant velocity
  (``w_h = 0`` is constant velocity itself) nor than the model (``w_h = 1``). Times stay the
  model's. Steps past the fitted ones use the last weight. Deterministic point forecasts only
  ("mode" / "mean"); sampled paths are not blended.
- **Error model**: at step h the true fix is taken as isotropic Gaussian around the forecast,
  std ``sigma_h`` metres per axis. ``sigma_h`` is fitted so the 80% disc (radius
  ``sigma_h * sqrt(-2 ln 0.2)``) covers 80% of the validation windows at step h (a per-step scale
  of the radius, not the RMS: forecast errors have heavier tails than a Gaussian, and the RMS
  would make the 50% region too wide and the 90% one too narrow). Steps past the fitted ones grow
  linearly from the last: ``sigma_H * h / H``.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd

from trajfm.geo import displacement_m, offset_lonlat

BLEND_GRID = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))  # candidate model weights, steps of 0.05
SIGMA_LEVEL = 0.8  # the region the error scale is matched on
QUANTILE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def disc_radius_factor(level: float) -> float:
    """Radius of the ``level`` disc of an isotropic 2-D Gaussian, in units of its per-axis std:
    sqrt(-2 ln(1 - level)) (the radius is Rayleigh distributed)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return math.sqrt(-2.0 * math.log1p(-level))


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
    w = per_step(config.forecast_blend, model_lon.shape[1], grow=False)
    if w is None:
        return model_lon, model_lat
    cv_lon, cv_lat = cv_positions(prev_lon, prev_lat, last_lon, last_lat, model_lon.shape[1])
    return mix(w, last_lon, last_lat, model_lon, model_lat, cv_lon, cv_lat)


def fit_blend(last_lon, last_lat, model_lon, model_lat, cv_lon, cv_lat, true_lon, true_lat,
              grid=BLEND_GRID) -> tuple[float, ...]:
    """Per step, the weight of ``grid`` whose blend has the lowest mean great-circle error (m)
    against the truth (ties: the smaller weight, nearer constant velocity)."""
    from trajfm.geo import haversine_m

    H = model_lon.shape[1]
    best = np.zeros(H)
    score = np.full(H, np.inf)
    for w in sorted(grid):
        lon, lat = mix(np.full(H, w), last_lon, last_lat, model_lon, model_lat, cv_lon, cv_lat)
        err = haversine_m(lon, lat, true_lon, true_lat).mean(axis=0)
        better = err < score
        best[better], score[better] = w, err[better]
    return tuple(float(w) for w in best)


def fit_sigma(radius_m: np.ndarray, level: float = SIGMA_LEVEL) -> tuple[float, ...]:
    """Per step, the std (m per axis) whose ``level`` disc holds a ``level`` share of the errors
    ``radius_m`` (N, H) metres: their ``level`` quantile over the disc factor (floored at 1 cm)."""
    q = np.quantile(np.asarray(radius_m, np.float64), level, axis=0)
    return tuple(float(max(v / disc_radius_factor(level), 0.01)) for v in q)


def quantile_offsets_m(config, horizon: int, levels=QUANTILE_LEVELS) -> np.ndarray:
    """(horizon, len(levels)) per-axis quantile offsets in metres (sigma_h * Phi^-1(level)):
    east (or north) of the forecast, the ``level`` quantile of the true position lies this far."""
    sigma = per_step(config.forecast_sigma_m, horizon, grow=True)
    if sigma is None:
        raise ValueError("this model has no fitted error model (forecast_sigma_m): run trajfm.evaluate.calibrate")
    z = np.array([NormalDist().inv_cdf(p) for p in levels])
    return sigma[:, None] * z[None, :]


def region_radius_m(config, horizon: int, level: float) -> np.ndarray:
    """(horizon,) radius in metres of the disc around each step's forecast holding the true
    position with probability ``level`` (the model's calibrated error model)."""
    sigma = per_step(config.forecast_sigma_m, horizon, grow=True)
    if sigma is None:
        raise ValueError("this model has no fitted error model (forecast_sigma_m): run trajfm.evaluate.calibrate")
    return sigma * disc_radius_factor(level)


def add_quantiles(forecast: pd.DataFrame, config, levels=QUANTILE_LEVELS) -> pd.DataFrame:
    """``forecast`` (columns ``step`` 1..H, ``lon``, ``lat``; as from ``forecast_points``) with
    ``lon_q10 .. lon_q90`` and ``lat_q10 .. lat_q90`` (degrees: the per-axis quantiles of the true
    position) and ``radius_m_q50 / q80 / q90``-style columns ``radius_m_q<level>`` (metres: the
    disc around the forecast holding the truth with that probability) for each of ``levels``."""
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
