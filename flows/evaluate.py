from __future__ import annotations

from prefect import flow

from tasks.evaluate import evaluate_task


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    features_dir: str, train_dir: str, data_root: str | None = None, split: str = "test",
    context_len: int = 20, horizon: int = 10,
) -> dict:
    """Forecast ADE/FDE in metres on a split, next to the constant-velocity baseline."""
    return evaluate_task(features_dir, train_dir, data_root=data_root, split=split, context_len=context_len, horizon=horizon)
