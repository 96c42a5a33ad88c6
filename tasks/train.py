"""Prefect task over ``trajfm.train``: train a preset; resumes from its checkpoint on retry."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from tasks._common import RETRIES, RETRY_DELAY_S, STAGE_CACHE
from trajfm.store import read_manifest
from trajfm.train import run_training


@task(name="train", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=STAGE_CACHE, persist_result=True)
def train_task(
    features_dir: str, data_root: str | None = None, preset: str = "tutorial",
    model_overrides: dict | None = None, train_overrides: dict | None = None,
) -> str:
    """Train ``preset`` on the features; a retry resumes from the last checkpoint of the same run."""
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, key="train-progress", description=f"training {preset}")

    def on_epoch(record: dict, fraction: float) -> None:
        update_progress_artifact(progress, 100.0 * fraction)
        logger.info("epoch %s: train_loss %.4f val_loss %s", record.get("epoch"), record.get("train_loss", float("nan")), record.get("val_loss"))

    out = run_training(
        features_dir, root=data_root, preset=preset, model_overrides=model_overrides or {},
        train_overrides=train_overrides or {}, on_epoch=on_epoch,
    )
    update_progress_artifact(progress, 100.0)
    logger.info("train: %s", read_manifest(out).get("final", {}))
    return str(out)
