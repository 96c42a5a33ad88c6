from __future__ import annotations

from flows._params import documented
from flows._redact import flow
from tasks.evaluate import evaluate_model_task, evaluate_task, report_task
from trajfm.evaluate.params import EvaluateParams
from trajfm.params import Split, as_dict


@flow(name="evaluate", flow_run_name="evaluate-{split}", log_prints=True)
@documented
def evaluate_flow(
    features_dir: str,
    train_dir: str,
    data_root: str | None = None,
    split: Split = "test",
    context_len: int = 20,
    horizon: int = 10,
) -> dict:
    """Forecast ADE/FDE in metres on a split, next to the constant-velocity baseline."""
    return evaluate_task(
        features_dir, train_dir, data_root=data_root, split=split, context_len=context_len, horizon=horizon
    )


@flow(name="evaluate-model", flow_run_name="evaluate-model", log_prints=True)
@documented
def evaluate_model_flow(
    model_uri: str,
    data: str | list[str],
    format: str | None = None,
    tasks: list[str] | None = None,
    data_root: str | None = None,
    out: str | None = None,
    params: EvaluateParams | None = None,
) -> dict:
    """Any model (models:/trajfm@champion, a model.pt, a train directory) on any data a reader
    accepts: every task next to the baselines (a table artifact), then the report (a markdown
    artifact with its plots, and the report directory logged to MLflow).

    Args:
        params: Per-task parameters, e.g. {"forecast": {"context_len": 12, "horizons": [1, 5]}}.
    """
    from pathlib import Path

    from trajfm.store import data_root as resolve_root
    from trajfm.store import stable_hash

    root = resolve_root(data_root)
    task_params = as_dict(params)
    if out is None:
        request = {"model": model_uri, "data": data, "format": format, "tasks": tasks}
        if task_params:  # the same request as before when no params are given
            request["params"] = task_params
        out = str(root / "evaluations" / stable_hash(request) / "results.json")
    result = evaluate_model_task(
        model_uri, data, out, format=format, tasks=tasks, data_root=str(root), params=task_params
    )
    report = report_task(out, str(Path(out).parent / "report"), data_root=str(root))
    print(f"results {out}; report {report['report']}")
    return {"results": out, "metrics": result["metrics"], **report}
