from __future__ import annotations

from prefect import flow

from tasks.features import features_task


@flow(name="features", log_prints=True, result_serializer="json", persist_result=False)  # docs/faults.md#security
def features_flow(preprocess_dir: str, data_root: str | None = None, params: dict | None = None) -> str:
    """Windows, chronological train/val/test split, train-only normalization statistics."""
    return features_task(preprocess_dir, data_root=data_root, params=params)
