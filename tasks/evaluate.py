"""Prefect task over ``trajfm.evaluate``: forecast error on the test split vs baselines."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from tasks._common import RETRIES, RETRY_DELAY_S, STAGE_CACHE
from trajfm.evaluate.run import metrics_table, run_evaluation


@task(name="evaluate", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S, cache_policy=STAGE_CACHE, persist_result=True)
def evaluate_task(
    features_dir: str, train_dir: str, data_root: str | None = None, split: str = "test",
    context_len: int = 20, horizon: int = 10,
) -> dict:
    metrics = run_evaluation(features_dir, train_dir, root=data_root, split=split, context_len=context_len, horizon=horizon)
    create_table_artifact(metrics_table(metrics), key="forecast-metrics", description=f"{split} split: model vs baselines (metres)")
    get_run_logger().info("evaluate: %s", metrics)
    return metrics
