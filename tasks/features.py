"""Prefect task over ``trajfm.features.windows``: windows, chronological split, train-only stats."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from tasks._common import STAGE_TASK
from trajfm.features.windows import WindowParams, make_features
from trajfm.store import read_manifest


@task(name="features", **STAGE_TASK)
def features_task(preprocess_dir: str, data_root: str | None = None, params: dict | None = None) -> str:
    out = make_features(preprocess_dir, root=data_root, params=WindowParams(**(params or {})))
    m = read_manifest(out)
    get_run_logger().info("features: windows %s, points %s", m["windows"], m["points"])
    create_table_artifact(
        [{"split": s, "windows": m["windows"][s], "points": m["points"][s]} for s in m["windows"]],
        key="features-splits",
        description="Chronological split (test = latest period of each source)",
    )
    return str(out)
