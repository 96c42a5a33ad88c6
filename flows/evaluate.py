from __future__ import annotations

from prefect import flow

from tasks.evaluate import evaluate_model_task, evaluate_task, report_task


@flow(name="evaluate", log_prints=True, result_serializer="json", persist_result=False)  # docs/faults.md#security
def evaluate_flow(
    features_dir: str, train_dir: str, data_root: str | None = None, split: str = "test",
    context_len: int = 20, horizon: int = 10,
) -> dict:
    """Forecast ADE/FDE in metres on a split, next to the constant-velocity baseline."""
    return evaluate_task(features_dir, train_dir, data_root=data_root, split=split, context_len=context_len, horizon=horizon)


@flow(name="evaluate-model", log_prints=True, result_serializer="json", persist_result=False)  # docs/faults.md#security
def evaluate_model_flow(
    model_uri: str, data: str, format: str | None = None, tasks: list[str] | None = None,
    data_root: str | None = None, out: str | None = None,
) -> dict:
    """Any model (``models:/trajfm@champion``, a model.pt, a train directory) on any data a reader
    accepts: every task next to the baselines (a table artifact), then the report (a markdown
    artifact, and the report directory logged to MLflow). ``out``: the results JSON (default
    ``<data root>/evaluations/<hash of the request>/results.json``); the report goes beside it."""
    from pathlib import Path

    from trajfm.store import data_root as resolve_root, stable_hash

    root = resolve_root(data_root)
    if out is None:
        out = str(root / "evaluations" / stable_hash({"model": model_uri, "data": data, "format": format, "tasks": tasks}) / "results.json")
    result = evaluate_model_task(model_uri, data, out, format=format, tasks=tasks, data_root=str(root))
    report = report_task(out, str(Path(out).parent / "report"), data_root=str(root))
    print(f"results {out}; report {report['report']}")
    return {"results": out, "metrics": result["metrics"], **report}
