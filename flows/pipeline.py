"""The main job: ingest -> validate raw -> preprocess -> validate processed -> features -> train
-> evaluate -> register. Each stage is its own flow (a subflow here), so a run shows up in the
Prefect UI as the chain of stages, each with its tasks, retries, logs and artifacts."""

from __future__ import annotations

from prefect import flow

from flows.evaluate import evaluate_flow
from flows.features import features_flow
from flows.ingest import ingest_flow
from flows.preprocess import preprocess_flow
from flows.register import register_flow
from flows.train import train_flow
from flows.validate import validate_flow
from trajfm.preflight import check_run


@flow(name="pipeline", log_prints=True, result_serializer="json", persist_result=False)  # docs/faults.md#security
def pipeline(
    sources: list[str] | None = None,
    data_root: str | None = None,
    preset: str = "tutorial",
    epochs: int = 5,
    batch_size: int = 128,
    ingest_params: dict | None = None,
    preprocess_params: dict | None = None,
    window_params: dict | None = None,
    quality_params: dict | None = None,
    train_overrides: dict | None = None,
    dask_address: str | None = None,
    n_workers: int = 2,
    preprocess_engine: str = "vectorized",
    context_len: int = 20,
    horizon: int = 10,
    model_name: str = "trajfm",
    nproc: int = 1,
    torchrun_args: list[str] | None = None,
) -> dict:
    """Run every stage on ``sources`` (default: all embedded tracktable-data AIS files).

    Scale-out: ``dask_address`` runs preprocessing on an existing Dask scheduler; ``nproc > 1``
    trains data-parallel under torchrun (``torchrun_args`` for several nodes).

    Before any stage, ``trajfm.preflight.check_run`` refuses what cannot succeed (unknown preset,
    invalid model name, empty or unreadable sources, a read-only data root) in one line."""
    check_run(sources=sources, data_root=data_root, preset=preset, model_name=model_name, ingest_params=ingest_params)
    ingest_dir = ingest_flow(sources=sources, data_root=data_root, params=ingest_params)
    raw_report = validate_flow(ingest_dir, stage="raw", params=quality_params, data_root=data_root)
    processed_dir = preprocess_flow(
        ingest_dir, data_root=data_root, params=preprocess_params, dask_address=dask_address, n_workers=n_workers,
        engine=preprocess_engine,
    )
    processed_report = validate_flow(processed_dir, stage="processed", params=quality_params, data_root=data_root)
    features_dir = features_flow(processed_dir, data_root=data_root, params=window_params)
    train_dir = train_flow(
        features_dir, data_root=data_root, preset=preset, train_overrides={"epochs": epochs, "batch_size": batch_size, **(train_overrides or {})},
        nproc=nproc, torchrun_args=torchrun_args,
    )
    metrics = evaluate_flow(features_dir, train_dir, data_root=data_root, context_len=context_len, horizon=horizon)
    registration = register_flow(train_dir, features_dir, metrics, data_root=data_root, name=model_name)
    return {
        "ingest_dir": ingest_dir,
        "preprocess_dir": processed_dir,
        "features_dir": features_dir,
        "train_dir": train_dir,
        "validation": {"raw": raw_report["success"], "processed": processed_report["success"]},
        "metrics": metrics,
        "registration": registration,
    }
