"""Prefect tasks over ``trajfm.evaluate``: the pipeline's evaluate stage (forecast error on the test
split vs the baseline), and any model on any data (``trajfm.evaluate.suite``) with its report."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from tasks._artifacts import embed_images, mlflow_run_url
from tasks._common import RETRIED, STAGE_TASK
from trajfm.evaluate.run import metrics_table, run_evaluation


@task(name="evaluate", **STAGE_TASK)
def evaluate_task(
    features_dir: str,
    train_dir: str,
    data_root: str | None = None,
    split: str = "test",
    context_len: int = 20,
    horizon: int = 10,
) -> dict:
    metrics = run_evaluation(
        features_dir, train_dir, root=data_root, split=split, context_len=context_len, horizon=horizon
    )
    create_table_artifact(
        metrics_table(metrics), key="forecast-metrics", description=f"{split} split: model vs baselines (metres)"
    )
    get_run_logger().info("evaluate: %s", metrics)
    return metrics


# --- any model on any data: trajfm.evaluate.suite + the report ---------------------------------


@task(name="evaluate-model", **RETRIED)
def evaluate_model_task(
    model_uri: str,
    data: str | list[str],
    out: str,
    format: str | None = None,
    tasks: list[str] | None = None,
    data_root: str | None = None,
    seed: int = 0,
    params: dict | None = None,
) -> dict:
    """Not cached: ``models:/trajfm@champion`` names a different model after a promotion. The
    stages underneath (ingest, preprocess, features) are cached by content in the data root."""
    from trajfm.evaluate.suite import evaluate_model, metrics_rows

    result = evaluate_model(
        model_uri, data, format=format, tasks=tasks, root=data_root, seed=seed, out=out, params=params
    )
    rows, cols, cells = metrics_rows(result["metrics"])
    table = [
        {"metric": r, **{c: (None if cells.get((r, c)) is None else round(cells[(r, c)], 4)) for c in cols}}
        for r in rows
    ]
    create_table_artifact(table, key="evaluation-metrics", description=f"{model_uri} on {data}: model vs baselines")
    acc = result["accounting"]
    get_run_logger().info(
        "evaluated %s: read %d = kept %d + quarantined %d; %d eval windows",
        model_uri,
        acc["ingest"]["rows_read"],
        acc["ingest"]["rows_kept"],
        acc["ingest"]["rows_quarantined"],
        result["split"]["eval_windows"],
    )
    return result


@task(name="report", **RETRIED)
def report_task(results: str, out_dir: str, data_root: str | None = None, log_to_mlflow: bool = True) -> dict:
    """Render report.md + PNGs, attach the markdown as an artifact, log the directory to MLflow."""
    import json
    from pathlib import Path

    from trajfm.evaluate.report import log_report, render_report

    report = render_report([results], out_dir)
    run_id = None
    if log_to_mlflow:
        metrics = json.loads(Path(results).read_text()).get("metrics", {})
        run_id = log_report(out_dir, data_root, run_name=f"report {Path(results).parent.name}", metrics=metrics)
    run_url = mlflow_run_url(run_id, data_root)
    # Plots inline (data URIs): the artifact renders in any browser, on any machine.
    text = embed_images(report.read_text(), out_dir, fallback_url=f"{run_url}/artifacts/report" if run_url else None)
    note = ["", "---"]
    if run_url:
        note.append(f"MLflow run: [{run_id}]({run_url}) (the report and its plots are its artifacts `report/`)")
    elif run_id:
        note.append(f"MLflow run `{run_id}` (artifacts `report/`); set MLFLOW_TRACKING_URI to a server for a link")
    create_markdown_artifact(
        text + "\n".join(note) + "\n", key="evaluation-report", description="trajfm evaluation report"
    )
    if run_url:
        create_link_artifact(run_url, link_text="MLflow run of the report", key="evaluation-report-mlflow")
    return {"report": str(report), "mlflow_run_id": run_id}
