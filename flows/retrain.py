"""Scheduled retraining (the ``trajfm-retrain`` deployment runs it nightly): ingest only the files
of a watched folder that no successful retraining has read, fine-tune the current champion on
them, evaluate on the champion's own evaluation set, register, and move ``champion`` only if the
new version is better there.

Nothing new -> the run finishes at once with ``status == "nothing new"`` (no new version). No
champion yet -> the preset trains from scratch and is evaluated on the new data's test split.
The files are recorded as consumed (``trajfm.retrain`` ledger) only after registration, so a
run that fails anywhere sees the same files again next time.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.evaluate import evaluate_flow
from flows.features import features_flow
from flows.ingest import ingest_flow
from flows.preprocess import preprocess_flow
from flows.register import register_flow
from flows.train import train_flow
from flows.validate import validate_flow
from tasks.retrain import champion_task, find_new_files_task, record_consumed_task
from trajfm.store import read_manifest

NOTHING_NEW = "nothing new"


@flow(name="retrain", log_prints=True, result_serializer="json", persist_result=False)  # docs/faults.md#security
def retrain(
    watch_dir: str,
    format: str | None = None,
    data_root: str | None = None,
    preset: str = "tutorial",
    epochs: int = 2,
    batch_size: int = 128,
    ingest_params: dict | None = None,
    preprocess_params: dict | None = None,
    window_params: dict | None = None,
    quality_params: dict | None = None,
    train_overrides: dict | None = None,
    dask_address: str | None = None,
    n_workers: int = 2,
    context_len: int = 20,
    horizon: int = 10,
    model_name: str = "trajfm",
    nproc: int = 1,
) -> dict:
    """Retrain on the new files under ``watch_dir`` (a folder, glob or fsspec URL; ``format``
    forces a reader). ``preset`` is used only when there is no champion to fine-tune;
    ``context_len``/``horizon`` likewise (a champion keeps its evaluation settings)."""
    files = find_new_files_task(watch_dir, data_root=data_root, format=format)
    if not files:
        create_markdown_artifact(f"Nothing new under `{watch_dir}`: no training, no new version.", key="retrain-summary")
        return {"status": NOTHING_NEW, "watch_dir": watch_dir, "new_files": []}
    champion = champion_task(data_root, name=model_name)

    params = {**(ingest_params or {}), **({"format": format} if format else {})}
    ingest_dir = ingest_flow(sources=[f["path"] for f in files], data_root=data_root, params=params)
    validate_flow(ingest_dir, stage="raw", params=quality_params, data_root=data_root)
    processed_dir = preprocess_flow(ingest_dir, data_root=data_root, params=preprocess_params, dask_address=dask_address, n_workers=n_workers)
    validate_flow(processed_dir, stage="processed", params=quality_params, data_root=data_root)
    overrides = {"epochs": epochs, "batch_size": batch_size, **(train_overrides or {})}
    eval_dir, split = None, "test"
    if champion is not None:
        overrides["init_checkpoint"] = champion["checkpoint"]
        context_len, horizon, split = champion["context_len"], champion["horizon"], champion["split"]
        eval_dir = champion["features_dir"]
        if window_params is None and eval_dir is not None:  # the same feature config as the champion
            window_params = read_manifest(eval_dir).get("params")
    features_dir = features_flow(processed_dir, data_root=data_root, params=window_params)
    train_dir = train_flow(features_dir, data_root=data_root, preset=preset, train_overrides=overrides, nproc=nproc)
    eval_dir = eval_dir or features_dir  # the champion's evaluation set when it is under this root
    metrics = evaluate_flow(eval_dir, train_dir, data_root=data_root, split=split, context_len=context_len, horizon=horizon)
    registration = register_flow(train_dir, eval_dir, metrics, data_root=data_root, name=model_name)
    record_consumed_task(files, data_root=data_root, run={"version": registration["version"], "train_dir": train_dir})

    base = f"champion v{champion['version']}" if champion else f"`{preset}` from scratch"
    create_markdown_artifact(
        f"Retrained {base} on {len(files)} new file(s); registered **v{registration['version']}** "
        f"({split} ADE {metrics['ade_m']:.1f} m on `{eval_dir}`), champion is v{registration['champion_version']}.",
        key="retrain-summary",
    )
    return {
        "status": "registered",
        "watch_dir": watch_dir,
        "new_files": [f["path"] for f in files],
        "fine_tuned_from": champion["version"] if champion else None,
        "features_dir": features_dir,
        "eval_features_dir": eval_dir,
        "train_dir": train_dir,
        "metrics": metrics,
        "registration": registration,
    }
