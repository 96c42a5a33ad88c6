"""Limits and checks on one forecast request to the served model (``mlflow models serve``, the
pyfunc), before any rollout runs.

A rollout costs one model call per step for every trajectory, on the server's CPU, in a thread
that a timed-out request (MLflow answers 504 after ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``,
60 s) does not stop, and that a graceful shutdown waits for. So the work of one request is
bounded up front; each limit can be changed by an environment variable of the server process:

=============================  ===================================  =========
limit                          environment variable                 default
=============================  ===================================  =========
``params.horizon`` (steps)     ``TRAJFM_SERVE_MAX_HORIZON``         500
points in the request          ``TRAJFM_SERVE_MAX_POINTS``          100000
trajectories x horizon         ``TRAJFM_SERVE_MAX_FORECAST_STEPS``  20000
=============================  ===================================  =========

Points are checked too: ``traj_id`` present, ``t`` a date-time, ``lon`` in [-180, 180] and
``lat`` in [-90, 90] degrees, both finite, at least 2 points per trajectory. Any failure is a
``RequestError`` (a ``ValueError``) whose message says what to change; the pyfunc turns it into
an HTTP 400 whose top-level ``message`` carries it.

This module imports neither MLflow nor torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

DEFAULT_MAX_HORIZON = 500  # steps: a tiny CPU model takes ~8 ms a step for one trajectory
DEFAULT_MAX_POINTS = 100_000  # input rows
DEFAULT_MAX_FORECAST_STEPS = 20_000  # trajectories x horizon; tens of seconds on a busy CPU


class RequestError(ValueError):
    """A forecast request the served model refuses (HTTP 400), with the reason."""


@dataclass(frozen=True)
class Limits:
    max_horizon: int = DEFAULT_MAX_HORIZON
    max_points: int = DEFAULT_MAX_POINTS
    max_forecast_steps: int = DEFAULT_MAX_FORECAST_STEPS

    @classmethod
    def from_env(cls) -> "Limits":
        """The defaults, or ``TRAJFM_SERVE_MAX_*`` where set (positive integers)."""
        values = {}
        for field, var in (
            ("max_horizon", "TRAJFM_SERVE_MAX_HORIZON"),
            ("max_points", "TRAJFM_SERVE_MAX_POINTS"),
            ("max_forecast_steps", "TRAJFM_SERVE_MAX_FORECAST_STEPS"),
        ):
            text = os.environ.get(var)
            if text in (None, ""):
                continue
            try:
                values[field] = int(text)
            except ValueError:
                raise RequestError(f"server setting {var}={text!r} is not a whole number") from None
            if values[field] < 1:
                raise RequestError(f"server setting {var}={text!r} must be >= 1")
        return cls(**values)


def check_horizon(value, default: int, limits: Limits) -> int:
    """``params.horizon`` as a whole number of steps in [1, ``limits.max_horizon``]."""
    if value is None:
        return default
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating, str)):
        raise RequestError(f"params.horizon must be a whole number of steps, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise RequestError(f"params.horizon must be a whole number of steps, got {value!r}") from None
    if not np.isfinite(number) or not number.is_integer():
        raise RequestError(f"params.horizon must be a whole number of steps, got {value!r}")
    horizon = int(number)
    if not 1 <= horizon <= limits.max_horizon:
        raise RequestError(
            f"params.horizon must be between 1 and {limits.max_horizon} steps, got {horizon} "
            f"(server limit TRAJFM_SERVE_MAX_HORIZON)"
        )
    return horizon


def check_size(n: int, limits: Limits) -> None:
    """Refuse an empty request or one of more than ``limits.max_points`` points."""
    if n == 0:
        raise RequestError("the request holds no points")
    if n > limits.max_points:
        raise RequestError(
            f"the request holds {n} points; the limit is {limits.max_points} (server limit TRAJFM_SERVE_MAX_POINTS): "
            f"split it into several requests"
        )


def check_points(points: pd.DataFrame, horizon: int, limits: Limits) -> None:
    """Refuse a request that is too large or holds points that are not WGS84 fixes.

    ``points``: DataFrame[traj_id, t (datetime64, UTC), lon, lat (float64 degrees)], as the
    pyfunc's parser makes it.
    """
    check_size(len(points), limits)
    ids = points["traj_id"]
    if ids.isna().any() or (ids.astype("string").str.strip() == "").any():
        raise RequestError(
            f"{int(ids.isna().sum() + (ids.astype('string').str.strip() == '').sum())} points have no traj_id"
        )
    if points["t"].isna().any():
        rows = np.flatnonzero(points["t"].isna().to_numpy())
        raise RequestError(f"{len(rows)} points have no time t (rows {rows[:5].tolist()})")
    lon, lat = points["lon"].to_numpy(dtype=np.float64), points["lat"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(lon) | ~np.isfinite(lat) | (np.abs(lon) > 180.0) | (np.abs(lat) > 90.0)
    if bad.any():
        rows = np.flatnonzero(bad)
        first = rows[0]
        raise RequestError(
            f"{len(rows)} points are not WGS84 degrees (lon in [-180, 180], lat in [-90, 90], finite), "
            f"e.g. row {first}: lon {lon[first]}, lat {lat[first]} (rows {rows[:5].tolist()})"
        )
    sizes = ids.astype("string").value_counts()
    short = sizes.index[sizes < 2].tolist()
    if short:
        raise RequestError(f"{len(short)} trajectories have fewer than 2 points, e.g. {short[:5]}")
    steps = len(sizes) * horizon
    if steps > limits.max_forecast_steps:
        raise RequestError(
            f"{len(sizes)} trajectories x horizon {horizon} = {steps} forecast steps; the limit is "
            f"{limits.max_forecast_steps} (server limit TRAJFM_SERVE_MAX_FORECAST_STEPS): fewer trajectories per "
            f"request or a shorter horizon"
        )
