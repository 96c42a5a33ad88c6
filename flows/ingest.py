from __future__ import annotations

from prefect import flow

from tasks.ingest import ingest_task
from trajfm.data.catalog import embedded_files
from trajfm.preflight import check_run


@flow(name="ingest", log_prints=True, result_serializer="json", persist_result=False)  # docs/faults.md#security
def ingest_flow(sources: list[str] | None = None, data_root: str | None = None, params: dict | None = None) -> str:
    """Read raw trajectory files (default: the embedded tracktable-data AIS files).

    ``sources``: files, directories, globs or fsspec URLs. ``params``: reader options, e.g.
    ``{"format": "generic", "kind": "bus", "timezone": "Europe/London", "columns": {...}}``.
    Only ``sources=None`` means the embedded data: an empty list or a folder without trajectory
    files is an error before anything runs."""
    check_run(sources=sources, data_root=data_root, ingest_params=params)
    files = [str(p) for p in embedded_files()] if sources is None else sources
    return ingest_task(files, data_root=data_root, params=params)
