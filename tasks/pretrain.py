"""Prefect tasks over ``trajfm.features.shards``, ``trajfm.train.pretrain`` and ``trajfm.registry.pretrained``:
shards, streamed pre-training in a child process (torchrun when ``nproc > 1``), registration.

Pre-training runs as ``python -m trajfm.train.pretrain`` like ``tasks/train.py`` runs ``trajfm.train``:
a crash of the training process is an ordinary task failure, and the retry resumes from
``<root>/checkpoints/pretrain-<key>/last.pt`` (loader state included) because the key is the same.
"""

from __future__ import annotations

import json

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from tasks._common import REGISTRY_RETRIED, STAGE_TASK
from tasks.train import launch_command, supervise
from trajfm.store import read_manifest


@task(name="shards", **STAGE_TASK)
def shards_task(
    processed: list[list[str]],
    data_root: str | None = None,
    window_params: dict | None = None,
    max_windows: int = 4096,
    coarsen: list[int] | None = None,
) -> str:
    """Shard the processed points of every source (``[name, preprocess dir]`` pairs); return the stage dir."""
    from pathlib import Path

    from trajfm.features.shards import ShardParams, load_manifest, make_shards
    from trajfm.features.windows import WindowParams

    params = ShardParams(
        WindowParams(**{"split_by": "source", **(window_params or {})}), max_windows, tuple(coarsen or (1,))
    )
    out = make_shards([(name, str(Path(d) / "points.parquet")) for name, d in processed], data_root, params)
    m = load_manifest(out)
    rows = [
        {
            "source": s,
            "points_in": v["points_in"],
            "view_points": v["view_points"],
            "points_in_shards": v["points_in_shards"],
            "points_too_short": v["points_too_short"],
            **{f"windows_{k}": n for k, n in v["windows"].items()},
        }
        for s, v in m["sources"].items()
    ]
    create_table_artifact(
        rows, key="shards-accounting", description="view points = points in shards + points too short, per source"
    )
    get_run_logger().info(
        "shards: %d shards, windows %s, %s points in shards + %s too short",
        len(m["shards"]),
        m["windows"],
        m["points_in_shards"],
        m["points_too_short"],
    )
    return str(out)


def pretraining_command(
    shards_dir: str,
    data_root: str | None,
    preset: str,
    model_overrides: dict,
    train_overrides: dict,
    probabilities: dict | None,
    lineage: dict,
    nproc: int = 1,
    torchrun_args: list[str] | None = None,
) -> list[str]:
    """The child's command line: ``python -m trajfm.train.pretrain``, or torchrun with ``nproc`` processes
    per node (rendezvous on 127.0.0.1 for one node; ``torchrun_args`` for several)."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    args = [
        "-m",
        "trajfm.train.pretrain",
        "--shards-dir",
        str(shards_dir),
        "--preset",
        preset,
        "--model",
        json.dumps(model_overrides),
        "--train",
        json.dumps(train_overrides),
        "--probabilities",
        json.dumps(probabilities),
        "--lineage",
        json.dumps(lineage),
        "--report-progress",
    ]
    if data_root:
        args += ["--root", str(data_root)]
    return launch_command(args, nproc, torchrun_args)


@task(name="pretrain", **STAGE_TASK)
def pretrain_task(
    shards_dir: str,
    data_root: str | None = None,
    preset: str = "base-small",
    model_overrides: dict | None = None,
    train_overrides: dict | None = None,
    probabilities: dict | None = None,
    lineage: dict | None = None,
    nproc: int = 1,
    torchrun_args: list[str] | None = None,
) -> str:
    """Streamed pre-training of ``preset`` on the shards; a retry resumes mid-epoch."""
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, key="pretrain-progress", description=f"pre-training {preset}")
    cmd = pretraining_command(
        shards_dir,
        data_root,
        preset,
        model_overrides or {},
        train_overrides or {},
        probabilities,
        lineage or {},
        nproc,
        torchrun_args,
    )
    logger.info("pretrain: %s", " ".join(cmd))
    out = supervise(cmd, progress, logger)
    update_progress_artifact(progress, 100.0)
    logger.info("pretrain: %s", read_manifest(out).get("final", {}))
    return str(out)


@task(name="calibrate-base", **STAGE_TASK)
def calibrate_base_task(
    pretrain_dir: str, shards_dir: str, data_root: str | None = None, context_len: int = 20, horizon: int = 10
) -> str:
    """The pre-trained model with its never-worse blend and error radii, fitted on the shards'
    validation sample (``trajfm.evaluate.calibrate.calibrate_pretrained``)."""
    from trajfm.evaluate.calibrate import calibrate_pretrained

    out = calibrate_pretrained(pretrain_dir, shards_dir, root=data_root, context_len=context_len, horizon=horizon)
    info = read_manifest(out).get("calibration", {})
    get_run_logger().info("calibrate-base: blend %s on %s validation windows", info.get("blend"), info.get("n_windows"))
    return str(out)


@task(name="register-base", **REGISTRY_RETRIED)
def register_base_task(
    pretrain_dir: str,
    shards_dir: str,
    corpus_sha256: str,
    corpus_name: str = "",
    data_root: str | None = None,
    name: str = "trajfm-base",
    context_len: int = 20,
    horizon: int = 10,
) -> dict:
    """Evaluate on the shards' test sample, register ``name`` with the corpus hash as lineage.
    Not cached (a registry side effect; the registry answers a repeat with the same version)."""
    from trajfm.registry.pretrained import evaluate_pretrained, register_pretrained

    metrics = evaluate_pretrained(pretrain_dir, shards_dir, context_len, horizon)
    reg = register_pretrained(
        pretrain_dir, shards_dir, metrics, corpus_sha256, root=data_root, name=name, corpus_name=corpus_name
    )
    create_markdown_artifact(
        f"**{name}** version **{reg['version']}** ({reg['decision'] or 'reused'}); "
        f"`champion` is version {reg['champion_version']}.\n\n"
        f"test ADE {metrics['ade_m']:.1f} m (constant velocity {metrics['cv_ade_m']:.1f} m) "
        f"on {metrics['n_windows']} windows; "
        f"corpus sha256 `{corpus_sha256[:16]}`",
        key="registration-base",
    )
    get_run_logger().info("registered %s v%s: champion v%s", name, reg["version"], reg["champion_version"])
    return {**reg, "metrics": metrics}


@task(name="init-checkpoint", **REGISTRY_RETRIED)
def init_checkpoint_task(init: str, data_root: str | None = None) -> str:
    """The local checkpoint to fine-tune from: ``models:/trajfm-base@champion`` (downloaded once
    under the data root), ``models:/<name>/<version>``, or a ``.pt`` path; without the model's
    calibration (a registered trajfm-base carries its blend with constant velocity, which the
    fine-tuned model gets fitted again by the calibrate stage)."""
    from trajfm.evaluate.calibrate import uncalibrated_checkpoint
    from trajfm.registry.pretrained import resolve_init_checkpoint

    path = str(uncalibrated_checkpoint(resolve_init_checkpoint(init, data_root), data_root))
    get_run_logger().info("fine-tuning from %s (%s)", init, path)
    return path
