"""One description per flow parameter, shared by every flow that takes it (pipeline and retrain
take 15 of the same), turned into the ``Args:`` section Prefect reads for its run form.

``@documented`` completes a flow function's docstring: the ``Args:`` entries it already has win,
every other parameter gets its entry from ``DESCRIPTIONS``; a parameter with neither is an error
at import time, so no deployment form ever shows a field without a description.
"""

from __future__ import annotations

import inspect

from trajfm.params import DEFAULT_PRESET, KINDS, PRESETS

DESCRIPTIONS: dict[str, str] = {
    "sources": "Files, directories, globs or fsspec URLs to read; `embedded:SUBSET` (e.g. `embedded:small`) "
    "names bundled AIS data. Left out (null): every embedded tracktable-data AIS file. An empty list is an error.",
    "data_root": "Where every stage writes (a folder, s3:// or gs://). Null: $TRAJFM_HOME or ./.trajfm.",
    "preset": f"Model preset (trajfm/model/presets; `trajfm presets` describes each). Default {DEFAULT_PRESET}. "
    f"One of: {', '.join(PRESETS)}.",
    "epochs": "Training epochs (passes over the train split).",
    "batch_size": "Windows per optimizer step (the global batch, over all processes).",
    "ingest_params": "Reader options for every source file (format, kind, columns, timezone, ...).",
    "preprocess_params": "Cleaning thresholds: fields here apply to every mover kind; an entry per kind "
    f"({', '.join(KINDS)}) overrides that kind's defaults.",
    "window_params": "Windows and the chronological train/val/test split (window, stride, fractions).",
    "quality_params": "Overrides of the Great Expectations gates (speed limit, fractions, severities).",
    "train_overrides": "Training configuration overrides (learning rate, warmup, seed, device, ...); "
    "epochs and batch_size here win over the parameters of the same name.",
    "model_overrides": "Model configuration overrides on top of the preset (GPTConfig fields, e.g. dropout).",
    "dask_address": "Dask scheduler address for preprocessing (e.g. tcp://127.0.0.1:8786). Null: a local cluster.",
    "n_workers": "Workers of the local Dask cluster (ignored with dask_address).",
    "preprocess_engine": "Preprocessing implementation: vectorized (numpy, default) "
    "or movingpandas (the reference, slow).",
    "engine": "Preprocessing implementation: vectorized (numpy, default) or movingpandas (the reference, slow).",
    "context_len": "Evaluation: points of observed track before each forecast.",
    "horizon": "Evaluation: steps forecast ahead (at the resampling interval).",
    "model_name": "Registered model name in MLflow.",
    "name": "Registered model name in MLflow.",
    "nproc": "Training processes on this node; above 1, data-parallel under torchrun (one per GPU).",
    "torchrun_args": "torchrun launcher arguments for several nodes (replace --standalone), e.g. "
    '["--nnodes", "2", "--rdzv-endpoint", "head:29400"].',
    "format": "Force one reader for every file (tracktable, geolife, generic, ...). Null: detected per file.",
    "watch_dir": "Folder, glob or fsspec URL watched for new files; "
    "each file is read by one successful retraining only.",
    "split": "Evaluation split: train, val or test.",
    "ingest_dir": "An ingest stage directory (the output of the ingest flow).",
    "preprocess_dir": "A preprocess stage directory (the output of the preprocess flow).",
    "features_dir": "A features stage directory (the output of the features flow).",
    "train_dir": "A train stage directory (the output of the train flow).",
    "stage_dir": "The stage directory whose points.parquet is validated.",
    "stage": "Which gate: raw (after ingest) or processed (after preprocess).",
    "metrics": "The evaluate flow's metrics (ADE/FDE in metres, model and constant velocity).",
    "model_uri": "The model: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, "
    "a model.pt or a train stage directory.",
    "data": "Data to evaluate on: files, a folder, a glob, `embedded:SUBSET` or a preprocess stage directory.",
    "tasks": "Evaluation tasks to run "
    "(forecast, recovery, travel_time, next_location, generation, similarity). Null: all.",
    "init": "Fine-tune from this model instead of training the preset from scratch: models:/trajfm-base@champion, "
    "models:/NAME/VERSION or a .pt path. Null: train from scratch.",
    "out": "The results JSON file. Null: <data root>/evaluations/<hash of the request>/results.json "
    "(the report goes beside it).",
}


def documented(fn):
    """Complete ``fn.__doc__`` with an ``Args:`` entry for every parameter (see the module doc)."""
    from prefect.utilities.callables import parameter_docstrings

    doc = inspect.getdoc(fn) or ""
    given = {k: " ".join(v.split()) for k, v in parameter_docstrings(doc).items()}
    names = [p for p in inspect.signature(fn).parameters]
    missing = [p for p in names if p not in given and p not in DESCRIPTIONS]
    if missing:
        raise TypeError(f"flow {fn.__name__}: no description for parameter(s) {missing}")
    if "\nArgs:" in f"\n{doc}":
        summary, _, _ = f"\n{doc}".partition("\nArgs:")
        summary = summary.strip("\n")
    else:
        summary = doc
    entries = [f"{p}: {given.get(p) or DESCRIPTIONS[p]}" for p in names]
    args = "\n".join(f"    {e}" for e in entries)  # one line each: the form shows the text as written
    fn.__doc__ = f"{summary}\n\nArgs:\n{args}\n"
    return fn
