"""The project's flow decorator: Prefect's, storing no pickle and no credentials.

Every flow's result is JSON and not persisted (``result_serializer="json"``,
``persist_result=False``: nothing under the data root is ever unpickled, docs/faults.md#security).

Prefect writes every flow run's parameters to its database (and shows them in the UI): a source
``s3://KEY:SECRET@bucket/ais/`` would sit there in clear. ``flow`` here is Prefect's decorator
with one change: the parameters Prefect serializes for the run record go through
``trajfm.store.redact`` (``s3://***@bucket/ais/``); the flow itself still gets the real values.
"""

from __future__ import annotations

from typing import Any

from prefect.flows import Flow

from trajfm.store import redact


class RedactingFlow(Flow):
    """``prefect.flows.Flow`` whose run record holds the parameters with URL credentials redacted."""

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        return redact(super().serialize_parameters(parameters))


# What every flow run stores: JSON results, not persisted (a flow's value is the stage directory
# its tasks already wrote).
FLOW_DEFAULTS: dict[str, Any] = {"result_serializer": "json", "persist_result": False}


def flow(**options):
    """``@flow(name=..., log_prints=...)`` as Prefect's, building a ``RedactingFlow`` with
    ``FLOW_DEFAULTS`` (an option given here wins)."""

    def decorate(fn) -> RedactingFlow:
        return RedactingFlow(fn=fn, **{**FLOW_DEFAULTS, **options})

    return decorate
