"""A Prefect flow that stores its parameters without the credentials of a URL in them.

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


def flow(**options):
    """``@flow(name=..., log_prints=...)`` as Prefect's, building a ``RedactingFlow``."""

    def decorate(fn) -> RedactingFlow:
        return RedactingFlow(fn=fn, **options)

    return decorate
