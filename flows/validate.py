from __future__ import annotations

from prefect import flow

from tasks.validate import validate_task


@flow(name="validate", log_prints=True, result_serializer="json", persist_result=False)  # docs/faults.md#security
def validate_flow(stage_dir: str, stage: str = "processed", params: dict | None = None, data_root: str | None = None) -> dict:
    """Great Expectations gate on a stage's points ("raw" after ingest, "processed" after preprocess)."""
    return validate_task(stage_dir, stage, params=params, data_root=data_root)
