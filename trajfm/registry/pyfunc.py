"""The served model: a TrajGPT checkpoint behind MLflow's pyfunc interface.

The same input and output as ``trajfm.load(uri).forecast`` (``trajfm.forecaster``): a points
DataFrame (JSON or CSV when served) with columns ``traj_id`` (string), ``t`` (ISO-8601 text, as
JSON and CSV deliver it; a naive time means UTC), ``lon, lat`` (WGS84 degrees, float64); other
columns are dropped by MLflow's schema enforcement. Each trajectory needs at least 2 points at the
model's cadence (else a clear error; param ``resample_s``: "model" or seconds resamples first).
Param ``horizon`` (int, default 10): steps to forecast. Output: ``traj_id, step`` (1..horizon),
``t`` (datetime64[ns, UTC]), ``lon, lat`` (degrees) and
the error radii ``radius_m_q10..radius_m_q90`` (metres; plus ``lon_q*/lat_q*`` for a mixture head).
Requests are bounded and checked before any rollout (``trajfm.registry.request``: horizon,
points, trajectories x horizon, WGS84 ranges); a refused one is HTTP 400 with the reason in
``message``.

The weights travel as the artifact ``checkpoint`` (a ``.pt`` written by
``trajfm.model.save_checkpoint``, loaded with ``weights_only=True``); the code travels with the
model too (``code_paths``: the ``trajfm`` package is copied into the model's ``code/`` folder,
which MLflow puts first on ``sys.path`` at load time), so the model's pip requirements name only
public packages. The model is logged from code (``pyfunc_code.py`` builds the ``TrajFMPyfunc``),
so no pickled object is stored.

This module imports MLflow (its class subclasses ``mlflow.pyfunc.PythonModel``); import it
only where MLflow is wanted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from trajfm.mlflow_store import CHECKPOINT_ARTIFACT

INPUT_COLUMNS = ["traj_id", "t", "lon", "lat"]
DEFAULT_HORIZON = 10


class TrajFMPyfunc(PythonModel):
    """Forecast the next ``horizon`` fixes of every trajectory in a points frame."""

    def __init__(self) -> None:
        self.model = None
        self.forecaster = None

    def load_context(self, context) -> None:
        from trajfm.forecaster import load

        self.forecaster = load(context.artifacts[CHECKPOINT_ARTIFACT])
        self.model = self.forecaster.model

    # The pd.DataFrame hint is one MLflow infers no schema from: the explicit signature (see
    # model_signature) stays in charge, and MLflow does not warn about missing hints.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """``model_input``: DataFrame[traj_id, t, lon, lat]; ``params``: {"horizon": int}."""
        if self.model is None:
            self.load_context(context)
        points, horizon = checked_request(model_input, params)
        resample = (params or {}).get("resample_s") or None  # "" (the default): refuse off-cadence input
        resample = resample if resample in (None, "model") else float(resample)
        return self.forecaster.forecast(points, horizon=horizon, resample_s=resample)


def checked_request(model_input, params: dict | None) -> tuple[pd.DataFrame, int]:
    """The request's points and horizon, checked against the serving limits
    (``trajfm.registry.request``); a bad request raises ``MlflowException`` with error code
    ``INVALID_PARAMETER_VALUE``, which the scoring server answers with HTTP 400 and the reason
    in the top-level ``message`` (any other exception gives a generic message there)."""
    from trajfm.registry.request import Limits, RequestError, check_horizon, check_points, check_size

    try:
        limits = Limits.from_env()
        horizon = check_horizon((params or {}).get("horizon"), DEFAULT_HORIZON, limits)
        check_size(len(model_input), limits)  # before parsing every row
        points = _points_frame(model_input)
        check_points(points, horizon, limits)
    except (RequestError, ValueError, TypeError) as exc:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        raise MlflowException(f"bad forecast request: {exc}", error_code=INVALID_PARAMETER_VALUE) from None
    return points, horizon


def _points_frame(model_input) -> pd.DataFrame:
    """A DataFrame[traj_id str, t datetime64[ns, UTC], lon, lat float64] from pyfunc input."""
    df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    if isinstance(df.columns, pd.RangeIndex) or all(isinstance(c, int) for c in df.columns):
        raise ValueError(f"input has no column names; need a header row / named columns {INPUT_COLUMNS}")
    missing = [c for c in INPUT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"input lacks columns {missing}; need {INPUT_COLUMNS}")
    t = df["t"].reset_index(drop=True)
    if isinstance(t.dtype, pd.DatetimeTZDtype):
        t = t.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(t):
        t = t.dt.tz_localize("UTC")  # naive datetimes mean UTC
    else:
        t = pd.to_datetime(t, utc=True, format="ISO8601")  # strings from JSON, or Timestamps
    return pd.DataFrame(
        {
            "traj_id": df["traj_id"].astype("string").to_numpy(),
            "t": t,
            "lon": pd.to_numeric(df["lon"]).to_numpy(dtype=np.float64),
            "lat": pd.to_numeric(df["lat"]).to_numpy(dtype=np.float64),
        }
    )


def example_points(n_traj: int = 2, n_points: int = 8, interval_s: float = 60.0) -> pd.DataFrame:
    """A small valid input (vessels off New York, ``interval_s`` seconds apart, 60 by default),
    ``t`` as ISO-8601 strings."""
    rows = []
    t0 = pd.Timestamp("2020-06-30T00:00:00Z")
    for k in range(n_traj):
        for i in range(n_points):
            rows.append(
                {
                    "traj_id": f"example-{k}",
                    "t": (t0 + pd.Timedelta(seconds=interval_s * i)).isoformat(),
                    "lon": -74.02 + 0.002 * i * interval_s / 60.0,
                    "lat": 40.60 + 0.001 * i * interval_s / 60.0 + 0.01 * k,
                }
            )
    return pd.DataFrame(rows)


def model_signature():
    """Input ``traj_id`` string, ``t`` string (ISO-8601), ``lon, lat`` double; output
    ``traj_id`` string, ``step`` long, ``t`` datetime, ``lon, lat`` double, the radii
    ``radius_m_q10..q90`` double; params ``horizon`` long = 10, ``resample_s`` string = ""
    ("" refuses input off the model's cadence, "model" or seconds resamples it).

    ``t`` is declared ``string`` (ISO-8601 text): that is what JSON and CSV serving deliver, and
    the one declaration under which CSV input parses (MLflow's CSV reader needs a concrete type
    per column: ``AnyType`` made every CSV request fail, and its ``datetime`` type cannot be read
    from CSV and rejects tz-aware values). In Python, pass ``t`` as text
    (``t.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")``) or use ``trajfm.load(uri).forecast``, which
    takes datetimes as they are.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    from trajfm.forecaster import radius_columns

    inputs = Schema(
        [
            ColSpec("string", "traj_id"),
            ColSpec("string", "t"),
            ColSpec("double", "lon"),
            ColSpec("double", "lat"),
        ]
    )
    outputs = Schema(
        [
            ColSpec("string", "traj_id"),
            ColSpec("long", "step"),
            ColSpec("datetime", "t"),
            ColSpec("double", "lon"),
            ColSpec("double", "lat"),
            *(ColSpec("double", name) for name in radius_columns()),
        ]
    )
    params = ParamSchema([ParamSpec("horizon", "long", DEFAULT_HORIZON), ParamSpec("resample_s", "string", "")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)
