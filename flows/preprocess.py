from __future__ import annotations

from prefect import flow

from tasks.preprocess import preprocess_task
from trajfm.preflight import check_data_root


@flow(name="preprocess", log_prints=True, result_serializer="json", persist_result=False)  # docs/faults.md#security
def preprocess_flow(
    ingest_dir: str, data_root: str | None = None, params: dict | None = None,
    dask_address: str | None = None, n_workers: int = 2, engine: str = "vectorized",
) -> str:
    """Clean, split and resample per mover on Dask (a LocalCluster, or the scheduler at ``dask_address``).

    ``engine``: "vectorized" (default) or "movingpandas" (the reference implementation, slow)."""
    check_data_root(data_root)
    return preprocess_task(
        ingest_dir, data_root=data_root, params=params, dask_address=dask_address, n_workers=n_workers, engine=engine,
    )
