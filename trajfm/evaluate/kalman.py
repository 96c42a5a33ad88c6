"""Kalman filter baseline: constant velocity in a local tangent plane (metres), noise fitted on training windows.

The motion model and the measurement model come from Stone Soup (the library MovingPandas'
``KalmanSmoother`` uses): ``CombinedLinearGaussianTransitionModel([ConstantVelocity(q),
ConstantVelocity(q)])`` over the state ``[east_m, east_mps, north_m, north_mps]`` (Stone Soup's
order), and ``LinearGaussian(mapping=(0, 2), noise_covar=r I)`` for a fix. Stone Soup filters
one track at a time with Python objects per step, far too slow for thousands of windows, so the
filter here is the same predict/update written once over all windows with numpy, taking its
transition matrix ``F(dt)`` and process covariance ``Q(dt)`` from the Stone Soup model for every
distinct time gap; ``tests/test_kalman.py`` checks it equals Stone Soup's ``KalmanPredictor`` /
``KalmanUpdater`` step by step on real AIS windows.

Parameters (``KalmanParams``):

- ``q_m2_s3``: Stone Soup's ``noise_diff_coeff``, the white-noise acceleration spectral density
  per axis (m^2 / s^3): how fast the velocity may wander.
- ``r_m2``: the variance of one fix's position error per axis (m^2).

``fit_kalman`` chooses both on training windows (a coarse log grid, then finer ones around its
best point; no randomness: the same windows give the same parameters), by default for the lowest
error of its own ``horizon``-step forecasts (a filter tuned to forecast, the honest reference),
or by maximum likelihood of the innovations (``objective="likelihood"``). ``kalman_forecast``
filters each window's context and predicts ``horizon`` steps, each as long as the context's last
time gap (as constant velocity does), with the predicted covariance of the next fixes (state
covariance + ``r``): the baseline's own error model for the calibration tables.

Positions are east/north metres in the tangent plane at each window's last context fix
(``trajfm.geo.displacement_m``); forecasts go back to degrees with ``offset_lonlat``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import timedelta

import numpy as np

from trajfm.evaluate.baselines import forecastable
from trajfm.features.encode import NS_PER_S
from trajfm.features.windows import WindowSet
from trajfm.geo import displacement_m, offset_lonlat

PRIOR_SPEED_MPS = 50.0  # std of the first state's velocity: diffuse for ships, walkers and cars alike
FIT_MAX_WINDOWS = 2048  # training windows the likelihood is summed over (evenly spaced: deterministic)
Q_GRID_M2_S3 = tuple(10.0 ** np.arange(-6.0, 3.0))  # coarse grid, decades
R_GRID_M2 = tuple(10.0 ** np.arange(-2.0, 6.0))
REFINE_STEPS = 5  # then twice a finer grid around the optimum: +-1 step of the grid before, 5 points per axis


@dataclass(frozen=True)
class KalmanParams:
    """Noise of the constant-velocity Kalman filter (see the module docstring for units)."""

    q_m2_s3: float
    r_m2: float

    def to_dict(self) -> dict:
        return asdict(self)


def stonesoup_models(q_m2_s3: float, r_m2: float):
    """(transition model, measurement model) of Stone Soup for the state [e, ve, n, vn]."""
    from stonesoup.models.measurement.linear import LinearGaussian
    from stonesoup.models.transition.linear import CombinedLinearGaussianTransitionModel, ConstantVelocity

    transition = CombinedLinearGaussianTransitionModel([ConstantVelocity(q_m2_s3), ConstantVelocity(q_m2_s3)])
    measurement = LinearGaussian(ndim_state=4, mapping=(0, 2), noise_covar=np.eye(2) * r_m2)
    return transition, measurement


def _transition_matrices(dt_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F (..., 4, 4) and Q per unit q (..., 4, 4) for time gaps ``dt_s`` (...,) seconds, from Stone
    Soup's model evaluated once per distinct gap (Q is linear in q, so one model serves every q)."""
    transition, _ = stonesoup_models(1.0, 1.0)
    gaps, inverse = np.unique(np.round(np.asarray(dt_s, np.float64), 6), return_inverse=True)
    F = np.empty((len(gaps), 4, 4))
    Q = np.empty((len(gaps), 4, 4))
    for i, g in enumerate(gaps):
        interval = timedelta(seconds=float(g))
        F[i] = np.asarray(transition.matrix(time_interval=interval), np.float64)
        Q[i] = np.asarray(transition.covar(time_interval=interval), np.float64)
    shape = np.shape(dt_s)
    return F[inverse].reshape(*shape, 4, 4), Q[inverse].reshape(*shape, 4, 4)


_H = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0]])  # measurement mapping (0, 2): positions of the state


def _local_metres(lon, lat, t_ns, ref_lon, ref_lat):
    """(N, K, 2) east/north metres of fixes from a reference fix (N,), and (N, K - 1) gaps in seconds."""
    e, n = displacement_m(ref_lon[:, None], ref_lat[:, None], lon, lat)
    dt = np.diff(np.asarray(t_ns, np.int64), axis=1).astype(np.float64) / NS_PER_S
    return np.stack([e, n], axis=-1), dt


def filter_tracks(z_m: np.ndarray, dt_s: np.ndarray, params: KalmanParams, F=None, Qu=None):
    """Filter (N, K, 2) east/north fixes (metres) with (N, K - 1) gaps (s), all windows at once.

    Returns (mean (N, 4), covariance (N, 4, 4)) of the state after the last fix, and the log
    likelihood (N,) of the innovations of fixes 2..K-1 (fix 0 sets the prior, fix 1 the velocity).
    ``F``, ``Qu``: precomputed ``_transition_matrices(dt_s)`` (the fit reuses them for every q).
    """
    N, K, _ = z_m.shape
    if F is None:
        F, Qu = _transition_matrices(dt_s)
    q, r = params.q_m2_s3, params.r_m2
    R = np.eye(2) * r
    m = np.zeros((N, 4))
    m[:, 0], m[:, 2] = z_m[:, 0, 0], z_m[:, 0, 1]
    P = np.zeros((N, 4, 4))
    P[:, 0, 0] = P[:, 2, 2] = r
    P[:, 1, 1] = P[:, 3, 3] = PRIOR_SPEED_MPS**2
    loglik = np.zeros(N)
    for k in range(1, K):
        Fk, Qk = F[:, k - 1], Qu[:, k - 1] * q
        m = np.einsum("nij,nj->ni", Fk, m)
        P = Fk @ P @ Fk.transpose(0, 2, 1) + Qk
        S = P[:, [0, 2]][:, :, [0, 2]] + R  # (N, 2, 2) innovation covariance
        v = z_m[:, k] - m[:, [0, 2]]  # innovation
        PHt = P[:, :, [0, 2]]  # (N, 4, 2) = P H^T
        S_inv = np.linalg.inv(S)
        G = PHt @ S_inv  # Kalman gain
        m = m + np.einsum("nij,nj->ni", G, v)
        P = P - G @ PHt.transpose(0, 2, 1)
        P = 0.5 * (P + P.transpose(0, 2, 1))
        if k >= 2:
            _, logdet = np.linalg.slogdet(S)
            loglik += -0.5 * (np.einsum("ni,nij,nj->n", v, S_inv, v) + logdet + 2 * np.log(2 * np.pi))
    return m, P, loglik


def predict_ahead(m: np.ndarray, P: np.ndarray, dt_s: np.ndarray, horizon: int, params: KalmanParams, F=None, Qu=None):
    """Means (N, horizon, 2) metres and covariances (N, horizon, 2, 2) m^2 of the next ``horizon``
    FIXES (state covariance + measurement noise), each step ``dt_s`` (N,) seconds long."""
    if F is None:
        F, Qu = _transition_matrices(dt_s)
    Q = Qu * params.q_m2_s3
    N = len(m)
    mean, cov = np.zeros((N, horizon, 2)), np.zeros((N, horizon, 2, 2))
    for h in range(horizon):
        m = np.einsum("nij,nj->ni", F, m)
        P = F @ P @ F.transpose(0, 2, 1) + Q
        mean[:, h] = m[:, [0, 2]]
        cov[:, h] = P[:, [0, 2]][:, :, [0, 2]] + np.eye(2) * params.r_m2
    return mean, cov


def _context(ws: WindowSet, sel: np.ndarray, context_len: int):
    c = context_len - 1
    ref_lon, ref_lat = ws.lon[sel, c].astype(np.float64), ws.lat[sel, c].astype(np.float64)
    z, dt = _local_metres(
        ws.lon[sel, :context_len], ws.lat[sel, :context_len], ws.t_ns[sel, :context_len], ref_lon, ref_lat
    )
    return ref_lon, ref_lat, z, dt


def kalman_forecast(ws: WindowSet, context_len: int, horizon: int, params: KalmanParams, with_cov: bool = False):
    """Kalman forecasts (lon, lat, t_ns) each (N, horizon) of the ``forecastable`` windows, like
    ``constant_velocity``; future times repeat the context's last gap (exact int64 ns). With
    ``with_cov`` also the (N, horizon, 2, 2) east/north covariance (m^2) of each forecast fix."""
    if context_len < 2:
        raise ValueError("the Kalman filter needs context_len >= 2 (a first velocity)")
    sel = forecastable(ws, context_len, horizon)
    ref_lon, ref_lat, z, dt = _context(ws, sel, context_len)
    m, P, _ = filter_tracks(z, dt, params)
    gap_ns = ws.t_ns[sel, context_len - 1] - ws.t_ns[sel, context_len - 2]
    mean, cov = predict_ahead(m, P, gap_ns.astype(np.float64) / NS_PER_S, horizon, params)
    lon, lat = offset_lonlat(ref_lon[:, None], ref_lat[:, None], mean[..., 0], mean[..., 1])
    t = ws.t_ns[sel, context_len - 1][:, None] + gap_ns[:, None] * np.arange(1, horizon + 1)
    return (lon, lat, t, cov) if with_cov else (lon, lat, t)


def _fit_windows(ws: WindowSet, context_len: int, horizon: int, max_windows: int):
    sel = forecastable(ws, context_len, horizon)
    if len(sel) == 0:
        raise ValueError(f"no training window has {context_len + horizon} real points to fit the Kalman filter on")
    if len(sel) > max_windows:
        sel = sel[np.linspace(0, len(sel) - 1, max_windows).round().astype(int)]
    k = context_len + horizon  # the likelihood covers the context and the horizon: the filter is judged ahead too
    ref_lon, ref_lat = ws.lon[sel, 0].astype(np.float64), ws.lat[sel, 0].astype(np.float64)
    return _local_metres(ws.lon[sel, :k], ws.lat[sel, :k], ws.t_ns[sel, :k], ref_lon, ref_lat)


def kalman_loglik(z_m, dt_s, params: KalmanParams, F=None, Qu=None) -> float:
    """Mean innovation log likelihood per window (nats) of ``params`` on (N, K, 2) fixes."""
    return float(filter_tracks(z_m, dt_s, params, F, Qu)[2].mean())


def forecast_error_m(z_m, dt_s, context_len: int, params: KalmanParams, F=None, Qu=None, Fg=None, Qg=None) -> float:
    """Mean Euclidean error (m) over windows and steps of the filter's forecasts of fixes
    ``context_len..`` of (N, K, 2) tracks from their first ``context_len`` fixes (each step as
    long as the last context gap, as ``kalman_forecast``)."""
    C = context_len
    m, P, _ = filter_tracks(
        z_m[:, :C],
        dt_s[:, : C - 1],
        params,
        None if F is None else F[:, : C - 1],
        None if Qu is None else Qu[:, : C - 1],
    )
    mean, _ = predict_ahead(m, P, dt_s[:, C - 2], z_m.shape[1] - C, params, Fg, Qg)
    return float(np.linalg.norm(mean - z_m[:, C:], axis=-1).mean())


OBJECTIVES = ("forecast", "likelihood")


def fit_kalman(
    ws: WindowSet,
    context_len: int = 20,
    horizon: int = 10,
    max_windows: int = FIT_MAX_WINDOWS,
    objective: str = "forecast",
) -> KalmanParams:
    """``KalmanParams`` fitted on (up to ``max_windows`` of) the training windows ``ws`` that can
    be forecast (``context_len + horizon`` real points): with ``objective="forecast"`` (default:
    the tuned reference a forecaster is judged against) the lowest mean error of its
    ``horizon``-step forecasts from ``context_len`` fixes; with ``"likelihood"`` the maximum
    innovation likelihood over all ``context_len + horizon`` fixes (the textbook fit; it describes
    one-step innovations and can forecast worse than constant velocity, e.g. on GeoLife). Search:
    the best point of ``Q_GRID_M2_S3 x R_GRID_M2``, then twice the best of a ``REFINE_STEPS``-point
    log grid spanning one step of the previous grid either side of it (a quarter decade at the
    end). Deterministic."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    z, dt = _fit_windows(ws, context_len, horizon, max_windows)
    F, Qu = _transition_matrices(dt)
    if objective == "forecast":
        C = context_len
        ref = z[:, C - 1 : C]  # the plane's origin moved to the last context fix: as kalman_forecast
        z = z - ref
        Fg, Qg = _transition_matrices(dt[:, C - 2])

        def score(p):
            return -forecast_error_m(z, dt, C, p, F, Qu, Fg, Qg)
    else:

        def score(p):
            return kalman_loglik(z, dt, p, F, Qu)

    def best_of(qs, rs):
        scores = {(q, r): score(KalmanParams(q, r)) for q in qs for r in rs}
        return max(scores, key=lambda k: (scores[k], -k[0], -k[1]))  # ties: the smaller noise

    q, r = best_of(Q_GRID_M2_S3, R_GRID_M2)
    step = 1.0  # decades between grid points
    for _ in range(2):
        qs = 10.0 ** np.linspace(np.log10(q) - step, np.log10(q) + step, REFINE_STEPS)
        rs = 10.0 ** np.linspace(np.log10(r) - step, np.log10(r) + step, REFINE_STEPS)
        q, r = best_of(tuple(qs), tuple(rs))
        step = 2 * step / (REFINE_STEPS - 1)
    return KalmanParams(float(q), float(r))
