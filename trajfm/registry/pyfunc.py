"""The served model: a TrajGPT checkpoint behind MLflow's pyfunc interface.

Input: a points DataFrame with columns ``traj_id`` (string), ``t`` (datetime, tz-aware or naive
meaning UTC, or ISO-8601 strings as JSON serving delivers them), ``lon, lat`` (WGS84 degrees,
float64); other columns are dropped by MLflow's schema enforcement. Each trajectory needs at
least 2 points. Param ``horizon`` (int, default 10): steps to forecast. Requests are bounded and
checked before any rollout (``trajfm.registry.request``: horizon, points, trajectories x
horizon, WGS84 ranges); a refused one is HTTP 400 with the reason in ``message``.
Output: ``traj_id, step`` (1..horizon), ``t`` (datetime64[ns, UTC]), ``lon, lat`` (degrees).

The weights travel as the artifact ``checkpoint`` (a ``.pt`` written by
``trajfm.model.save_checkpoint``, loaded with ``weights_only=True``); the code is the installed
``trajfm`` package, which is why it appears in the model's pip requirements. The model is logged
from code (``pyfunc_code.py`` builds the ``TrajFMPyfunc``), so no pickled object is stored.

This module imports MLflow (its class subclasses ``mlflow.pyfunc.PythonModel``); import it
only where MLflow is wanted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

INPUT_COLUMNS = ["traj_id", "t", "lon", "lat"]
DEFAULT_HORIZON = 10
CHECKPOINT_ARTIFACT = "checkpoint"


class TrajFMPyfunc(PythonModel):
    """Forecast the next ``horizon`` fixes of every trajectory in a points frame."""

    def __init__(self) -> None:
        self.model = None

    def load_context(self, context) -> None:
        from trajfm.model import load_model

        self.model = load_model(context.artifacts[CHECKPOINT_ARTIFACT], map_location="cpu")

    # The pd.DataFrame hint is one MLflow infers no schema from: the explicit signature (see
    # model_signature) stays in charge, and MLflow does not warn about missing hints.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """``model_input``: DataFrame[traj_id, t, lon, lat]; ``params``: {"horizon": int}."""
        from trajfm.evaluate.forecast import forecast_points

        if self.model is None:
            self.load_context(context)
        points, horizon = checked_request(model_input, params)
        return forecast_points(self.model, points, horizon)


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


def example_points(n_traj: int = 2, n_points: int = 8) -> pd.DataFrame:
    """A small valid input (vessels off New York, 60 s apart), ``t`` as ISO-8601 strings."""
    rows = []
    t0 = pd.Timestamp("2020-06-30T00:00:00Z")
    for k in range(n_traj):
        for i in range(n_points):
            rows.append(
                {
                    "traj_id": f"example-{k}",
                    "t": (t0 + pd.Timedelta(seconds=60 * i)).isoformat(),
                    "lon": -74.02 + 0.002 * i,
                    "lat": 40.60 + 0.001 * i + 0.01 * k,
                }
            )
    return pd.DataFrame(rows)


def model_signature():
    """Input ``traj_id`` string, ``t`` any (datetime or ISO string), ``lon, lat`` double; output
    ``traj_id`` string, ``step`` long, ``t`` datetime, ``lon, lat`` double; param ``horizon``
    long = 10.

    ``t`` is declared ``AnyType`` on purpose: MLflow's ``datetime`` column type rejects
    tz-aware datetimes (it casts to naive ``datetime64[ns]``) and, under pandas 3, string
    columns; ``string`` would reject datetimes. ``_points_frame`` parses either.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema(
        [
            ColSpec("string", "traj_id"),
            ColSpec(AnyType(), "t"),
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
        ]
    )
    params = ParamSchema([ParamSpec("horizon", "long", DEFAULT_HORIZON)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)
