"""Metric helpers shared by the evaluation tasks: distance errors, ranks, histograms, JSD.

Everything is numpy float64; distances are great-circle metres (``trajfm.geo.haversine_m``),
times seconds. Functions take arrays and return plain Python floats (JSON-able), so a task can
put their results straight into its metrics dict.

Forecast errors have one function and one key scheme (``forecast_errors``), used by the pipeline's
evaluate stage, the evaluation suite, the model benchmark and the registry:

- ``ade_m@h``: average displacement error, the mean great-circle error in metres over steps 1..h;
- ``fde_m@h``: final displacement error, the mean error in metres at step h;
- ``ade_m`` / ``fde_m`` (no ``@``, ``whole_horizon=True``): the same over the whole forecast
  horizon (``ade_m`` is the registry's promotion metric, ``test_ade_m`` in MLflow);
- ``step_errors_m``: the mean error at each step 1..H, a list (the error-vs-horizon plot).

A caller puts its own prefix or suffix around a key (``cv_fde_m@5``, ``forecast.ade_m@10.model``).
MLflow metric names cannot hold ``@``: ``trajfm.mlflow_store.mlflow_metric_name`` writes it
``_at_`` at that boundary.
"""

from __future__ import annotations

import numpy as np

from trajfm.geo import displacement_m, haversine_m

NS_PER_S = 1_000_000_000
SUMMARY_STEPS = (1, 5, 10)  # forecast steps every summary reports (those within the horizon)


def distance_errors_m(pred_lon, pred_lat, true_lon, true_lat) -> np.ndarray:
    """Great-circle error in metres of each predicted point (any shape; degrees in)."""
    return haversine_m(pred_lon, pred_lat, true_lon, true_lat)


def horizon_errors(err: np.ndarray, horizons=SUMMARY_STEPS, whole_horizon: bool = False) -> dict[str, float]:
    """``ade_m@h`` and ``fde_m@h`` (module docstring) for each ``h`` of ``horizons`` within the
    horizon of ``err`` (N, H) metres; with ``whole_horizon`` first ``ade_m`` and ``fde_m`` over
    all H steps. Averaged in float64, window by window at each step."""
    out = {"ade_m": float(err.mean()), "fde_m": float(err[:, -1].mean())} if whole_horizon else {}
    for h in horizons:
        if h <= err.shape[1]:
            out[f"ade_m@{h}"] = float(err[:, :h].mean())
            out[f"fde_m@{h}"] = float(err[:, h - 1].mean())
    return out


def forecast_errors(
    pred_lon, pred_lat, true_lon, true_lat, horizons=SUMMARY_STEPS, whole_horizon: bool = False
) -> dict[str, float]:
    """Forecast errors in metres of (N, H) predicted fixes against the true ones (degrees):
    ``horizon_errors`` of their great-circle distances (keys in the module docstring)."""
    return horizon_errors(distance_errors_m(pred_lon, pred_lat, true_lon, true_lat), horizons, whole_horizon)


def step_errors_m(pred_lon, pred_lat, true_lon, true_lat) -> list[float]:
    """Mean great-circle error in metres at each step 1..H of (N, H) forecasts (degrees in)."""
    return [float(e) for e in distance_errors_m(pred_lon, pred_lat, true_lon, true_lat).mean(axis=0)]


def mae_rmse(err: np.ndarray) -> tuple[float, float]:
    """(mean absolute error, root mean square error) of non-negative errors; NaN-free input."""
    err = np.asarray(err, dtype=np.float64).ravel()
    if err.size == 0:
        raise ValueError("no errors to average")
    return float(np.abs(err).mean()), float(np.sqrt(np.square(err).mean()))


def mape(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute percentage error (in %, not a fraction) of positive ``true`` values."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if (true <= 0).any():
        raise ValueError("MAPE needs positive true values")
    return float(100.0 * np.mean(np.abs(pred - true) / true))


def rank_metrics(ranks: np.ndarray, ks=(1, 5)) -> dict[str, float]:
    """``acc@k`` (share of ranks <= k) and ``mrr`` (mean of 1/rank) from 1-based ranks.

    A rank of ``np.inf`` (the truth is not among the candidates) counts as a miss and 0 in MRR.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no ranks")
    out = {f"acc@{k}": float((ranks <= k).mean()) for k in ks}
    out["mrr"] = float((1.0 / ranks).mean())
    return out


# --- motion statistics of tracks (generation realism) --------------------------------------


def step_lengths_m(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """(N, L-1) metres between consecutive points of (N, L) tracks."""
    return haversine_m(lon[:, :-1], lat[:, :-1], lon[:, 1:], lat[:, 1:])


def turn_angles_deg(lon: np.ndarray, lat: np.ndarray, min_step_m: float = 1.0) -> np.ndarray:
    """Absolute heading change in degrees [0, 180] at each interior point of (N, L) tracks.

    A turn next to a step shorter than ``min_step_m`` has no defined heading: NaN (callers drop it).
    """
    e, n = displacement_m(lon[:, :-1], lat[:, :-1], lon[:, 1:], lat[:, 1:])  # (N, L-1)
    heading = np.arctan2(e, n)
    turn = np.abs((np.diff(heading, axis=1) + np.pi) % (2 * np.pi) - np.pi)
    length = np.hypot(e, n)
    ok = (length[:, :-1] >= min_step_m) & (length[:, 1:] >= min_step_m)
    return np.where(ok, np.degrees(turn), np.nan)


def radius_of_gyration_m(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """(N,) root mean square distance in metres of each track's points from their centroid."""
    clon, clat = lon.mean(axis=1, keepdims=True), lat.mean(axis=1, keepdims=True)
    e, n = displacement_m(clon, clat, lon, lat)
    return np.sqrt((e**2 + n**2).mean(axis=1))


def motion_statistics(lon: np.ndarray, lat: np.ndarray, t_ns: np.ndarray) -> dict[str, np.ndarray]:
    """Flat samples of step length (m), speed (m/s), turn angle (deg), trip duration (s) and
    radius of gyration (m) of (N, L) tracks (all points real; times int64 ns, increasing)."""
    step = step_lengths_m(lon, lat)
    dt = np.diff(t_ns, axis=1).astype(np.float64) / NS_PER_S
    speed = step[dt > 0] / dt[dt > 0]
    turn = turn_angles_deg(lon, lat)
    return {
        "step_m": step.ravel(),
        "speed_mps": speed.ravel(),
        "turn_deg": turn[np.isfinite(turn)].ravel(),
        "duration_s": (t_ns[:, -1] - t_ns[:, 0]).astype(np.float64) / NS_PER_S,
        "gyration_m": radius_of_gyration_m(lon, lat),
    }


# Fixed bins (documented, the same for every dataset and model): log-spaced for the positive
# scales, which span walking to shipping, linear for turn angles. Values outside go to the end bins.
BINS: dict[str, np.ndarray] = {
    "step_m": np.geomspace(0.1, 1e5, 61),  # 10 bins per decade, 0.1 m .. 100 km
    "speed_mps": np.geomspace(0.01, 1e3, 51),  # 10 per decade, 1 cm/s .. 1 km/s
    "turn_deg": np.linspace(0.0, 180.0, 37),  # 5 degrees
    "duration_s": np.geomspace(1.0, 1e6, 61),  # 10 per decade, 1 s .. 11.6 days
    "gyration_m": np.geomspace(0.1, 1e6, 71),  # 10 per decade, 0.1 m .. 1000 km
}


def histogram(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Counts of ``values`` in ``bins`` (edges), values outside clipped into the end bins."""
    v = np.clip(np.asarray(values, np.float64), bins[0], bins[-1])
    return np.histogram(v, bins=bins)[0].astype(np.float64)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two histograms (normalized here)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if p.shape != q.shape or p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("JSD needs two non-empty histograms over the same bins")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(np.clip(0.5 * kl(p) + 0.5 * kl(q), 0.0, 1.0))


def distribution_jsd(generated: dict[str, np.ndarray], real: dict[str, np.ndarray]) -> dict[str, float]:
    """JSD per statistic of ``BINS`` between generated and real samples (``motion_statistics``);
    a statistic with no sample on either side is left out."""
    out = {}
    for name, bins in BINS.items():
        g, r = generated[name], real[name]
        if len(g) and len(r):
            out[name] = jensen_shannon(histogram(g, bins), histogram(r, bins))
    return out
