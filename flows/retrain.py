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

from prefect.artifacts import create_markdown_artifact

from flows._params import documented
from flows._redact import flow
from flows.calibrate import calibrate_flow
from flows.evaluate import evaluate_flow
from flows.features import features_flow
from flows.ingest import ingest_flow
from flows.preprocess import preprocess_flow
from flows.register import register_flow
from flows.train import train_flow
from flows.validate import validate_flow
from tasks.pretrain import init_checkpoint_task
from tasks.retrain import champion_task, find_new_files_task, record_consumed_task
from trajfm.evaluate.calibrate import uncalibrated_checkpoint
from trajfm.params import (
    DEFAULT_PRESET,
    IngestOptions,
    PreprocessOptions,
    PresetName,
    QualityOptions,
    TrainOverrides,
    WindowOptions,
    as_dict,
)
from trajfm.store import read_manifest

NOTHING_NEW = "nothing new"


@flow(name="retrain", flow_run_name="retrain", log_prints=True)
@documented
def retrain(
    watch_dir: str,
    format: str | None = None,
    data_root: str | None = None,
    preset: PresetName = DEFAULT_PRESET,
    epochs: int = 2,
    batch_size: int = 128,
    ingest_params: IngestOptions | None = None,
    preprocess_params: PreprocessOptions | None = None,
    window_params: WindowOptions | None = None,
    quality_params: QualityOptions | None = None,
    train_overrides: TrainOverrides | None = None,
    dask_address: str | None = None,
    n_workers: int = 2,
    context_len: int = 20,
    horizon: int = 10,
    model_name: str = "trajfm",
    nproc: int = 1,
    init: str | None = None,
) -> dict:
    """Retrain on the new files under watch_dir.

    Args:
        preset: Model preset used only when there is no champion to fine-tune (then: training
            from scratch); a champion keeps its own.
        context_len: Evaluation context (points) when there is no champion; a champion keeps
            its evaluation settings.
        horizon: Evaluation horizon (steps) when there is no champion; a champion keeps its
            evaluation settings.
        window_params: Windows and split of the new data. Null: the champion's own feature
            settings (or the defaults without a champion).
        init: With no champion yet, this model (e.g. models:/trajfm-base@champion, models:/NAME/VERSION
            or a .pt path) is fine-tuned instead of training preset from scratch.
    """
    files = find_new_files_task(watch_dir, data_root=data_root, format=format)
    if not files:
        create_markdown_artifact(
            f"Nothing new under `{watch_dir}`: no training, no new version.", key="retrain-summary"
        )
        return {"status": NOTHING_NEW, "watch_dir": watch_dir, "new_files": []}
    champion = champion_task(data_root, name=model_name)

    params = {**(as_dict(ingest_params) or {}), **({"format": format} if format else {})}
    processed_dir = _ingest_and_clean(
        [f["path"] for f in files], data_root, params, preprocess_params, quality_params, dask_address, n_workers
    )
    overrides = {"epochs": epochs, "batch_size": batch_size, **(as_dict(train_overrides) or {})}
    context_len, horizon, split, eval_dir, window_params = _start_point(
        champion, init, overrides, data_root, context_len, horizon, window_params
    )
    features_dir = features_flow(processed_dir, data_root=data_root, params=window_params)
    train_dir = train_flow(features_dir, data_root=data_root, preset=preset, train_overrides=overrides, nproc=nproc)
    eval_dir = eval_dir or features_dir  # the champion's evaluation set when it is under this root
    # as the pipeline: the registered model carries its never-worse blend, fitted on the val split of
    # the evaluation features (the champion's when there is one: new files alone may hold no long window)
    model_dir = calibrate_flow(eval_dir, train_dir, data_root=data_root, context_len=context_len, horizon=horizon)
    metrics = evaluate_flow(
        eval_dir, model_dir, data_root=data_root, split=split, context_len=context_len, horizon=horizon
    )
    registration = register_flow(model_dir, eval_dir, metrics, data_root=data_root, name=model_name)
    record_consumed_task(files, data_root=data_root, run={"version": registration["version"], "train_dir": train_dir})

    base = f"champion v{champion['version']}" if champion else (f"`{init}`" if init else f"`{preset}` from scratch")
    _summary_artifact(base, files, registration, metrics, split, eval_dir)
    return {
        "status": "registered",
        "watch_dir": watch_dir,
        "new_files": [f["path"] for f in files],
        "fine_tuned_from": champion["version"] if champion else init,
        "features_dir": features_dir,
        "eval_features_dir": eval_dir,
        "train_dir": train_dir,
        "model_dir": model_dir,
        "metrics": metrics,
        "registration": registration,
    }


def _ingest_and_clean(sources, data_root, params, preprocess_params, quality_params, dask_address, n_workers) -> str:
    """Ingest the new files, gate them, preprocess on Dask and gate again: the processed stage."""
    ingest_dir = ingest_flow(sources=sources, data_root=data_root, params=params)
    validate_flow(ingest_dir, stage="raw", params=quality_params, data_root=data_root)
    processed_dir = preprocess_flow(
        ingest_dir, data_root=data_root, params=preprocess_params, dask_address=dask_address, n_workers=n_workers
    )
    validate_flow(processed_dir, stage="processed", params=quality_params, data_root=data_root)
    return processed_dir


def _summary_artifact(base: str, files: list, registration: dict, metrics: dict, split: str, eval_dir) -> None:
    create_markdown_artifact(
        f"Retrained {base} on {len(files)} new file(s); registered **v{registration['version']}** "
        f"({split} ADE {metrics['ade_m']:.1f} m on `{eval_dir}`), champion is v{registration['champion_version']}.",
        key="retrain-summary",
    )


def _start_point(champion, init, overrides: dict, data_root, context_len, horizon, window_params):
    """Fine-tune the champion's weights (its calibration is fitted again after training) on its own
    evaluation settings and features, else ``init``'s, else train the preset from scratch. Sets
    ``overrides["init_checkpoint"]``; returns (context_len, horizon, split, eval_dir, window_params)."""
    if champion is not None:
        overrides["init_checkpoint"] = str(uncalibrated_checkpoint(champion["checkpoint"], data_root))
        eval_dir = champion["features_dir"]
        if window_params is None and eval_dir is not None:  # the same feature config as the champion
            window_params = read_manifest(eval_dir).get("params")
        return champion["context_len"], champion["horizon"], champion["split"], eval_dir, window_params
    if init:
        overrides["init_checkpoint"] = init_checkpoint_task(init, data_root=data_root)
    return context_len, horizon, "test", None, window_params
