"""Prefect tasks over ``trajfm.retrain``: find new files in the watched folder, read the current
champion's lineage (and download its checkpoint), record consumed files. None is cached: each
asks the file system or the registry what is true now."""

from __future__ import annotations

from dataclasses import asdict

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from tasks._common import RESULT_SERIALIZER, RETRIED
from trajfm.retrain import champion_lineage, missing_watch_dir, new_files, record_consumed


@task(name="find-new-files", **RETRIED)
def find_new_files_task(watch_dir: str, data_root: str | None = None, format: str | None = None) -> list[dict]:
    """Fingerprints of the files under ``watch_dir`` that no successful retraining consumed."""
    missing = missing_watch_dir(watch_dir)
    if missing:  # the shipped nightly schedule before anyone made the folder: nothing new, no failure
        get_run_logger().warning("retrain: %s", missing)
    files = [] if missing else new_files(watch_dir, data_root, format)
    get_run_logger().info("retrain: %d new file(s) under %s", len(files), watch_dir)
    empty = f"(nothing new: {watch_dir} does not exist)" if missing else "(nothing new)"
    rows = [{"file": f["path"], "size": f.get("size")} for f in files] or [{"file": empty, "size": 0}]
    create_table_artifact(rows, key="retrain-new-files", description=f"New files under {watch_dir}")
    return files


@task(name="champion-lineage", **RETRIED)
def champion_task(data_root: str | None = None, name: str = "trajfm") -> dict | None:
    """The champion to fine-tune from (checkpoint downloaded from the registry), or None."""
    lineage = champion_lineage(data_root, name)
    if lineage is None:
        get_run_logger().info("retrain: no champion of %s yet: training from scratch", name)
        return None
    out = {
        k: (str(v) if v is not None and k in ("checkpoint", "features_dir") else v) for k, v in asdict(lineage).items()
    }
    get_run_logger().info(
        "retrain: fine-tuning champion v%s (%s), evaluated on %s",
        lineage.version,
        lineage.checkpoint,
        lineage.features_dir,
    )
    return out


@task(name="record-consumed", result_serializer=RESULT_SERIALIZER)
def record_consumed_task(files: list[dict], data_root: str | None = None, run: dict | None = None) -> str:
    """Mark ``files`` consumed (after registration), so the next run does not read them again."""
    return str(record_consumed(files, data_root, run))
