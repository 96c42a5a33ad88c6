"""Prefect task over ``trajfm.data.preprocess``: Dask-parallel cleaning, splitting, resampling."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from tasks._common import STAGE_TASK
from trajfm.data.preprocess import preprocess
from trajfm.store import read_manifest


@task(name="preprocess", **STAGE_TASK)
def preprocess_task(
    ingest_dir: str,
    data_root: str | None = None,
    params: dict | None = None,
    dask_address: str | None = None,
    n_workers: int = 2,
    engine: str = "vectorized",
) -> str:
    """Clean per mover on a Dask cluster (LocalCluster, or ``dask_address``); return the stage dir.

    ``engine``: "vectorized" (default, numpy) or "movingpandas" (the reference implementation)."""
    out = preprocess(
        ingest_dir,
        root=data_root,
        params=params or None,
        dask_address=dask_address,
        n_workers=n_workers,
        engine=engine,
    )
    m = read_manifest(out)
    get_run_logger().info(
        "preprocess: %s in = %s kept + %s quarantined; %s resampled points in %s trajectories",
        m["rows_in"],
        m["rows_kept"],
        m["rows_quarantined"],
        m["rows_out"],
        m["n_trajectories"],
    )
    rows = [
        {"quantity": k, "value": int(m[k])}
        for k in ("rows_in", "rows_kept", "rows_quarantined", "rows_out", "n_trajectories")
    ]
    rows += [{"quantity": f"quarantined: {r}", "value": int(n)} for r, n in m.get("quarantined_by_reason", {}).items()]
    create_table_artifact(rows, key="preprocess-row-accounting", description="Rows in = kept + quarantined (by reason)")
    return str(out)
