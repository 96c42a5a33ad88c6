"""The main job: ingest -> validate raw -> preprocess -> validate processed -> features -> train
-> calibrate -> evaluate -> register. Each stage is its own flow (a subflow here), so a run shows up in the
Prefect UI as the chain of stages, each with its tasks, retries, logs and artifacts, each run
named by its stage (``ingest``, ``validate-raw``, ``train-<preset>``, ...). The parent run ends
with the ``pipeline-summary`` markdown artifact: rows, splits, metrics vs constant velocity, the
registry's decision, and links to every stage's run and artifacts."""

from __future__ import annotations

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
from tasks.summary import pipeline_summary_task
from trajfm.params import (
    DEFAULT_PRESET,
    Engine,
    IngestOptions,
    PreprocessOptions,
    PresetName,
    QualityOptions,
    TrainOverrides,
    WindowOptions,
    as_dict,
)
from trajfm.preflight import check_run


@flow(name="pipeline", flow_run_name="pipeline-{preset}", log_prints=True)
@documented
def pipeline(
    sources: list[str] | None = None,
    data_root: str | None = None,
    preset: PresetName = DEFAULT_PRESET,
    epochs: int = 5,
    batch_size: int = 128,
    ingest_params: IngestOptions | None = None,
    preprocess_params: PreprocessOptions | None = None,
    window_params: WindowOptions | None = None,
    quality_params: QualityOptions | None = None,
    train_overrides: TrainOverrides | None = None,
    dask_address: str | None = None,
    n_workers: int = 2,
    preprocess_engine: Engine = "vectorized",
    context_len: int = 20,
    horizon: int = 10,
    model_name: str = "trajfm",
    nproc: int = 1,
    torchrun_args: list[str] | None = None,
    init: str | None = None,
) -> dict:
    """Run every stage on the sources: ingest, validate, preprocess (Dask), validate, features,
    train, evaluate, register (MLflow).

    Scale-out: dask_address runs preprocessing on an existing Dask scheduler; nproc > 1 trains
    data-parallel under torchrun (torchrun_args for several nodes).

    Fine-tuning: init="models:/trajfm-base@champion" (or models:/NAME/VERSION, or a .pt path)
    starts from those weights, their model config and normalization (preset is then a label)."""
    # Before any stage: refuse what cannot succeed (unknown preset, invalid model name, empty or
    # unreadable sources, a read-only data root) in one line.
    check_run(
        sources=sources, data_root=data_root, preset=preset, model_name=model_name, ingest_params=as_dict(ingest_params)
    )
    stage = StageRuns()
    data = _data_stages(
        stage,
        sources,
        data_root,
        ingest_params,
        preprocess_params,
        window_params,
        quality_params,
        dask_address,
        n_workers,
        preprocess_engine,
    )
    overrides = {"epochs": epochs, "batch_size": batch_size, **(as_dict(train_overrides) or {})}
    if init:
        overrides["init_checkpoint"] = init_checkpoint_task(init, data_root=data_root)
    models = _model_stages(
        stage,
        data["features_dir"],
        data_root,
        preset,
        overrides,
        nproc,
        torchrun_args,
        context_len,
        horizon,
        model_name,
    )
    result = {**data, **models}
    pipeline_summary_task(result, stage.runs)
    return result


class StageRuns:
    """Calls a stage's subflow and remembers its flow run id (stage -> id) for the summary's links."""

    def __init__(self):
        self.runs: dict[str, str] = {}

    def __call__(self, label, subflow, *args, **kwargs):
        state = subflow(*args, return_state=True, **kwargs)
        self.runs[label] = str(state.state_details.flow_run_id)
        return state.result()  # a failed stage fails the pipeline here, as a plain call would


def _data_stages(
    stage: StageRuns,
    sources,
    data_root,
    ingest_params,
    preprocess_params,
    window_params,
    quality_params,
    dask_address,
    n_workers,
    preprocess_engine,
) -> dict:
    """ingest -> validate raw -> preprocess -> validate processed -> features: the stage directories."""
    ingest_dir = stage("ingest", ingest_flow, sources=sources, data_root=data_root, params=ingest_params)
    raw = stage("validate-raw", validate_flow, ingest_dir, stage="raw", params=quality_params, data_root=data_root)
    processed_dir = stage(
        "preprocess",
        preprocess_flow,
        ingest_dir,
        data_root=data_root,
        params=preprocess_params,
        dask_address=dask_address,
        n_workers=n_workers,
        engine=preprocess_engine,
    )
    processed = stage(
        "validate-processed",
        validate_flow,
        processed_dir,
        stage="processed",
        params=quality_params,
        data_root=data_root,
    )
    features_dir = stage("features", features_flow, processed_dir, data_root=data_root, params=window_params)
    return {
        "ingest_dir": ingest_dir,
        "preprocess_dir": processed_dir,
        "features_dir": features_dir,
        "validation": {"raw": raw["success"], "processed": processed["success"]},
    }


def _model_stages(
    stage: StageRuns, features_dir, data_root, preset, overrides, nproc, torchrun_args, context_len, horizon, model_name
) -> dict:
    """train -> calibrate -> evaluate -> register: the model directories, metrics and registration."""
    train_dir = stage(
        "train",
        train_flow,
        features_dir,
        data_root=data_root,
        preset=preset,
        train_overrides=overrides,
        nproc=nproc,
        torchrun_args=torchrun_args,
    )
    # the registered model carries its never-worse-than-constant-velocity rule and error scale
    model_dir = stage(
        "calibrate",
        calibrate_flow,
        features_dir,
        train_dir,
        data_root=data_root,
        context_len=context_len,
        horizon=horizon,
    )
    metrics = stage(
        "evaluate",
        evaluate_flow,
        features_dir,
        model_dir,
        data_root=data_root,
        context_len=context_len,
        horizon=horizon,
    )
    registration = stage(
        "register", register_flow, model_dir, features_dir, metrics, data_root=data_root, name=model_name
    )
    return {"train_dir": train_dir, "model_dir": model_dir, "metrics": metrics, "registration": registration}
