"""Prefect task over ``trajfm.registry``: log the run to MLflow, register, decide ``champion``/``challenger``."""

from __future__ import annotations

from dataclasses import asdict

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from tasks._common import RESULT_SERIALIZER, RETRIES, retry_unless_deterministic
from trajfm.registry.register import register_training


@task(
    name="register", retries=RETRIES, retry_delay_seconds=[5, 20],
    retry_condition_fn=retry_unless_deterministic, result_serializer=RESULT_SERIALIZER,
)
def register_task(train_dir: str, features_dir: str, metrics: dict, data_root: str | None = None, name: str = "trajfm") -> dict:
    """Not cached: registration has a side effect in the registry that a cache would skip (and
    the registry itself answers a repeat: the same lineage returns the existing version).
    MLflow unreachable: the attempt fails and is retried; the checkpoint stays in the train stage
    directory, so a failed attempt loses nothing."""
    result = register_training(train_dir, features_dir, metrics, root=data_root, name=name)
    what = "reused (same data, config and evaluation: no new version)" if result.reused else result.decision
    get_run_logger().info(
        "registered %s version %s: %s; champion=%s (%s)", name, result.version, what, result.champion_version, result.reason,
    )
    if result.run_url:
        create_link_artifact(result.run_url, link_text="MLflow run", key="mlflow-run")
    create_markdown_artifact(
        f"**{name}** version **{result.version}**: {what}; `champion` is version {result.champion_version}.\n\n"
        f"test ADE {result.metric_value:.1f} m; {result.reason}",
        key="registration",
    )
    return asdict(result)
