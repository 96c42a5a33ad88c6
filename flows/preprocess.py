from __future__ import annotations

from flows._params import documented
from flows._redact import flow
from tasks.preprocess import preprocess_task
from trajfm.params import Engine, PreprocessOptions, as_dict
from trajfm.preflight import check_data_root


@flow(name="preprocess", flow_run_name="preprocess", log_prints=True)
@documented
def preprocess_flow(
    ingest_dir: str,
    data_root: str | None = None,
    params: PreprocessOptions | None = None,
    dask_address: str | None = None,
    n_workers: int = 2,
    engine: Engine = "vectorized",
) -> str:
    """Clean, split and resample per mover on Dask (a local cluster, or the scheduler at dask_address).

    Args:
        params: Cleaning thresholds: fields here apply to every mover kind; an entry per kind
            overrides that kind's defaults.
    """
    check_data_root(data_root)
    return preprocess_task(
        ingest_dir,
        data_root=data_root,
        params=as_dict(params),
        dask_address=dask_address,
        n_workers=n_workers,
        engine=engine,
    )
