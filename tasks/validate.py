"""Prefect task over ``trajfm.quality``: Great Expectations gate on a stage's points."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks._common import RESULT_SERIALIZER, RETRIES, RETRY_DELAY_S, is_deterministic
from trajfm.quality.gate import ValidationFailed, gate, validate_points
from trajfm.quality.params import processed_gate_params
from trajfm.store import data_root as data_root_path
from trajfm.store import read_manifest


def _retry_unless_data_failed(task, task_run, state) -> bool:
    """Retry infrastructure hiccups, never a failed expectation or a missing file: the data will
    not change."""
    try:
        state.result()
    except ValidationFailed:
        return False
    except Exception as exc:
        return not is_deterministic(exc)
    return True


@task(
    name="validate",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_S,
    retry_condition_fn=_retry_unless_data_failed,
    result_serializer=RESULT_SERIALIZER,
)
def validate_task(stage_dir: str, stage: str, params: dict | None = None, data_root: str | None = None) -> dict:
    """Validate ``points.parquet`` of a stage; publish the report; raise if a critical check fails.

    Not cached: validation is the gate and is cheap next to what it protects.
    """
    points = pd.read_parquet(Path(stage_dir) / "points.parquet")
    if stage == "processed":
        kinds = sorted(points["kind"].astype(str).unique())
        params = processed_gate_params(read_manifest(stage_dir), kinds, overrides=params)
    # A file-mode GX context under the data root: suites, results and Data Docs persist there.
    report = validate_points(points, stage=stage, params=params or {}, context_root=data_root_path(data_root))
    create_markdown_artifact(
        report.to_markdown(), key=f"validation-{stage}", description=f"Great Expectations: {stage} points"
    )
    get_run_logger().info("validation %s: success=%s on %s rows", stage, report.success, report.n_rows)
    if report.data_docs:  # a file on the flow's machine: named, not linked (a browser elsewhere cannot open it)
        create_markdown_artifact(
            f"Great Expectations Data Docs of the {stage} gate are written under the data root, at\n\n"
            f"`{report.data_docs}`\n\nopen that file on the machine that ran the flow.",
            key=f"data-docs-{stage}",
            description="where the Great Expectations Data Docs are",
        )
    gate(report)  # raises ValidationFailed naming each failed critical expectation and its count
    return report.to_dict()
