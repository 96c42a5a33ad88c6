from __future__ import annotations

from flows._params import documented
from flows._redact import flow
from tasks.ingest import ingest_task
from trajfm.data.catalog import embedded_files, expand_data
from trajfm.params import IngestOptions, as_dict
from trajfm.preflight import check_run


@flow(name="ingest", flow_run_name="ingest", log_prints=True)
@documented
def ingest_flow(
    sources: list[str] | None = None, data_root: str | None = None, params: IngestOptions | None = None
) -> str:
    """Read raw trajectory files into canonical points (default: the embedded tracktable-data AIS files).

    Args:
        params: Reader options for every file, e.g. {"format": "generic", "kind": "bus",
            "timezone": "Europe/London", "columns": {...}}.
    """
    # embedded:SUBSET (e.g. embedded:small) names bundled files, as in `trajfm evaluate --data`.
    # Only sources=None means the embedded data: an empty list or a folder without trajectory
    # files is an error before anything runs.
    files = [str(p) for p in embedded_files()] if sources is None else expand_data(sources)
    check_run(sources=sources, data_root=data_root, ingest_params=as_dict(params))
    return ingest_task(files, data_root=data_root, params=as_dict(params))
