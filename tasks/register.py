"""Prefect task over ``trajfm.registry``: log the run to MLflow, register, decide ``champion``/``challenger``."""

from __future__ import annotations

from dataclasses import asdict

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from tasks._common import REGISTRY_RETRIED
from trajfm.registry.register import register_training


def prefect_run_tags() -> dict:
    """Tags that link an MLflow run/version to the Prefect flow run that registered it: the
    register flow run, and the root run (the pipeline or retrain run) with its UI URL."""
    from prefect.runtime import flow_run

    tags = {
        "prefect.flow_run_id": flow_run.id,
        "prefect.flow_run_name": flow_run.name,
        "prefect.root_flow_run_id": flow_run.root_flow_run_id or flow_run.id,
    }
    ui = flow_run.ui_url  # None without a UI (e.g. the ephemeral API)
    if ui:
        tags["prefect.flow_run_url"] = str(ui).replace(str(flow_run.id), str(tags["prefect.root_flow_run_id"]))
    return {k: str(v) for k, v in tags.items() if v}


@task(name="register", **REGISTRY_RETRIED)
def register_task(
    train_dir: str, features_dir: str, metrics: dict, data_root: str | None = None, name: str = "trajfm"
) -> dict:
    """Not cached: registration has a side effect in the registry that a cache would skip (and
    the registry itself answers a repeat: the same lineage returns the existing version).
    MLflow unreachable: the attempt fails and is retried; the checkpoint stays in the train stage
    directory, so a failed attempt loses nothing."""
    result = register_training(
        train_dir, features_dir, metrics, root=data_root, name=name, extra_tags=prefect_run_tags()
    )
    what = "reused (same data, config and evaluation: no new version)" if result.reused else result.decision
    get_run_logger().info(
        "registered %s version %s: %s; champion=%s (%s)",
        name,
        result.version,
        what,
        result.champion_version,
        result.reason,
    )
    flag = ""
    if result.worse_than_constant_velocity:
        flag = (
            "\n\n**Warning: worse than constant velocity on its evaluation set** "
            "(tagged `trajfm.worse_than_constant_velocity`)."
        )
        get_run_logger().warning(
            "%s version %s is worse than constant velocity on its evaluation set: flagged", name, result.version
        )
    if result.run_url:
        create_link_artifact(result.run_url, link_text="MLflow run", key="mlflow-run")
    create_markdown_artifact(
        f"**{name}** version **{result.version}**: {what}; `champion` is version {result.champion_version}.\n\n"
        f"test ADE {result.metric_value:.1f} m; {result.reason}{flag}",
        key="registration",
    )
    return asdict(result)
