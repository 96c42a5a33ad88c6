"""Probabilistic forecasts scored: coverage of prediction regions and CRPS, in metres.

Every predictor states a distribution of the true fix at each step h around its forecast
(east/north metres): the model its calibrated radial quantiles ``forecast_radius_m``
(``trajfm.model.blend``: distance quantiles per step, uniform direction), constant velocity the
same kind of table fitted on the training split (``fit_radius`` on its training errors), the
Kalman filter its own predicted Gaussian covariance (state + fix noise, ``trajfm.evaluate.kalman``).

- ``coverage``: the share of windows whose true fix lies in the predictor's ``level`` region: the
  disc of the ``level`` quantile radius (``radial_scores``), or for a Gaussian the ellipse
  ``e^T C^-1 e <= -2 ln(1 - level)`` (``probabilistic_scores``). A calibrated predictor covers
  ``level`` of the windows.
- ``crps_gaussian``: the continuous ranked probability score of a Gaussian N(0, sigma^2) for an
  error ``e`` (closed form ``sigma [z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)]``, z = e / sigma),
  in metres; ``crps_m`` averages it over the east and north axes (each axis' marginal). A proper
  score: lower is better, and it rewards sharp regions only when they are right. For a point
  forecast with no spread it is the absolute error. For a distribution given by draws
  (``crps_samples``): ``E|X - y| - E|X - X'| / 2`` over the draws, exactly.
"""

from __future__ import annotations

import math

import numpy as np

from trajfm.geo import displacement_m

LEVELS = (0.5, 0.8, 0.9)


def error_vectors_m(lon, lat, true_lon, true_lat) -> np.ndarray:
    """(..., 2) east/north metres from each forecast to the true fix (tangent plane at the forecast)."""
    e, n = displacement_m(lon, lat, true_lon, true_lat)
    return np.stack([e, n], axis=-1)


def isotropic_cov(sigma_m: np.ndarray, n: int) -> np.ndarray:
    """(n, H, 2, 2) covariances sigma_h^2 I from per-step stds (H,) metres."""
    s2 = np.asarray(sigma_m, np.float64) ** 2
    return np.broadcast_to(s2[None, :, None, None] * np.eye(2), (n, len(s2), 2, 2))


def coverage(err_m: np.ndarray, cov_m2: np.ndarray, level: float) -> np.ndarray:
    """(H,) share of windows whose error (N, H, 2) metres lies in the ``level`` ellipse of
    ``cov_m2`` (N, H, 2, 2) m^2."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d2 = np.einsum("nhi,nhij,nhj->nh", err_m, np.linalg.inv(cov_m2), err_m)
    return (d2 <= -2.0 * math.log1p(-level)).mean(axis=0)


def _norm_cdf(z):
    from scipy.special import ndtr

    return ndtr(z)


def crps_gaussian(err: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """CRPS (same units as ``err``) of N(0, sigma^2) for observed errors ``err`` (broadcast)."""
    err, sigma = np.asarray(err, np.float64), np.asarray(sigma, np.float64)
    if np.any(sigma <= 0):
        raise ValueError("crps_gaussian needs sigma > 0")
    z = err / sigma
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return sigma * (z * (2 * _norm_cdf(z) - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


def crps_m(err_m: np.ndarray, cov_m2: np.ndarray) -> np.ndarray:
    """(H,) mean CRPS in metres over windows and the east/north axes of errors (N, H, 2) under
    Gaussians (N, H, 2, 2) (each axis scored on its marginal)."""
    sd = np.sqrt(np.stack([cov_m2[..., 0, 0], cov_m2[..., 1, 1]], axis=-1))
    return crps_gaussian(err_m, sd).mean(axis=(0, 2))


def probabilistic_scores(err_m: np.ndarray, cov_m2: np.ndarray, levels=LEVELS) -> dict:
    """``coverage`` per level (key ``"50"``, ...) and ``crps_m``, each a list over steps 1..H."""
    return {
        "coverage": {f"{round(100 * p)}": coverage(err_m, cov_m2, p).round(4).tolist() for p in levels},
        "crps_m": crps_m(err_m, cov_m2).round(2).tolist(),
    }


def crps_samples(sorted_draws: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N,) CRPS of the empirical distribution of ``sorted_draws`` (M,) (ascending) for
    observations ``y`` (N,): ``E|X - y| - E|X - X'| / 2``, in O(log M) per observation."""
    x = np.asarray(sorted_draws, np.float64)
    y = np.asarray(y, np.float64)
    M = len(x)
    csum = np.r_[0.0, np.cumsum(x)]
    k = np.searchsorted(x, y, side="right")  # draws <= y
    e_abs = (k * y - csum[k] + (csum[-1] - csum[k]) - (M - k) * y) / M
    i = np.arange(1, M + 1)
    spread = 2.0 * ((2 * i - M - 1) * x).sum() / M**2  # E|X - X'| from the sorted draws
    return e_abs - 0.5 * spread


def radial_scores(err_m: np.ndarray, table: np.ndarray, levels=LEVELS) -> dict:
    """``coverage`` per level and ``crps_m`` per step (lists over steps 1..H) of errors (N, H, 2)
    metres under radial-quantile error models ``table`` (H, len(RADIUS_LEVELS)) metres."""
    from trajfm.model.blend import marginal_samples, radius_at

    table = np.asarray(table, np.float64)
    dist = np.hypot(err_m[..., 0], err_m[..., 1])  # (N, H)
    coverage_by = {
        f"{round(100 * p)}": (dist <= radius_at(table, p)[None, :]).mean(axis=0).round(4).tolist() for p in levels
    }
    draws = marginal_samples(table)  # (H, M): the east (= north) marginal of each step
    crps = [float(np.mean([crps_samples(draws[h], err_m[:, h, a]).mean() for a in (0, 1)])) for h in range(len(table))]
    return {"coverage": coverage_by, "crps_m": np.round(crps, 2).tolist()}
