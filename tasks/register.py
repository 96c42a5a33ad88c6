"""Prefect task over ``trajfm.registry``: log the run to MLflow, register, move ``champion``."""

from __future__ import annotations

from dataclasses import asdict

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from tasks._common import RETRIES
from trajfm.registry.register import register_training


@task(name="register", retries=RETRIES, retry_delay_seconds=[5, 20])
def register_task(train_dir: str, features_dir: str, metrics: dict, data_root: str | None = None, name: str = "trajfm") -> dict:
    """Not cached: registration has a side effect in the registry that a cache would skip.
    The checkpoint stays in the train stage directory, so a failed attempt loses nothing."""
    result = register_training(train_dir, features_dir, metrics, root=data_root, name=name)
    get_run_logger().info(
        "registered %s version %s; champion=%s (promoted=%s)", name, result.version, result.champion_version, result.promoted,
    )
    if result.run_url:
        create_link_artifact(result.run_url, link_text="MLflow run", key="mlflow-run")
    create_markdown_artifact(
        f"**{name}** version **{result.version}** — {'promoted to' if result.promoted else 'did not beat'} `champion` "
        f"(test ADE {result.metric_value:.1f} m vs previous {result.previous_champion_metric})",
        key="registration",
    )
    return asdict(result)
