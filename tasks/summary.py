"""Prefect task over ``trajfm.summary``: the parent pipeline run's summary artifact, linking each
stage's flow run and artifacts (read back from the Prefect API)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks._common import RESULT_SERIALIZER
from trajfm.summary import pipeline_summary


def _ui_base() -> str:
    """The Prefect UI's address ('' with no UI configured: links are then relative to it)."""
    from prefect.settings import PREFECT_UI_URL

    return (PREFECT_UI_URL.value() or "").rstrip("/")


def stage_links(stage_runs: dict[str, str]) -> dict[str, list[tuple[str, str]]]:
    """Per stage: its flow run, then each artifact its tasks published (by key)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    base = _ui_base()
    links: dict[str, list[tuple[str, str]]] = {
        stage: [("flow run", f"{base}/runs/flow-run/{run_id}")] for stage, run_id in stage_runs.items()
    }
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(r) for r in stage_runs.values()])
            )
        )
    stage_of = {run_id: stage for stage, run_id in stage_runs.items()}
    for a in sorted(artifacts, key=lambda a: a.created or 0):
        stage = stage_of.get(str(a.flow_run_id))
        if stage and a.key:
            links[stage].append((a.key, f"{base}/artifacts/artifact/{a.id}"))
    return links


@task(name="pipeline-summary", result_serializer=RESULT_SERIALIZER)
def pipeline_summary_task(result: dict, stage_runs: dict[str, str]) -> str:
    """Publish the summary of a pipeline run as the markdown artifact ``pipeline-summary``."""
    text = pipeline_summary(result, stage_links(stage_runs))
    create_markdown_artifact(
        text, key="pipeline-summary", description="trajfm pipeline: rows, splits, metrics vs baselines, registry"
    )
    get_run_logger().info("pipeline summary published (artifact pipeline-summary)")
    return text
