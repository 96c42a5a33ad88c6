from __future__ import annotations

from prefect import flow

from tasks.train import train_task
from trajfm.preflight import check_run


@flow(name="train", log_prints=True, result_serializer="json", persist_result=False)  # docs/faults.md#security
def train_flow(
    features_dir: str, data_root: str | None = None, preset: str = "tutorial",
    model_overrides: dict | None = None, train_overrides: dict | None = None,
    nproc: int = 1, torchrun_args: list[str] | None = None,
) -> str:
    """Train a model preset on a features stage (GPU when present, CPU otherwise) in a child
    process; ``nproc > 1`` runs it data-parallel under torchrun (one process per GPU)."""
    check_run(data_root=data_root, preset=preset)
    return train_task(
        features_dir, data_root=data_root, preset=preset, model_overrides=model_overrides,
        train_overrides=train_overrides, nproc=nproc, torchrun_args=torchrun_args,
    )
