from __future__ import annotations

from flows._redact import flow

from tasks.ingest import ingest_task
from trajfm.data.catalog import embedded_files


@flow(name="ingest", log_prints=True)
def ingest_flow(sources: list[str] | None = None, data_root: str | None = None, params: dict | None = None) -> str:
    """Read raw trajectory files (default: the embedded tracktable-data AIS files).

    ``sources``: files, directories, globs or fsspec URLs. ``params``: reader options, e.g.
    ``{"format": "generic", "kind": "bus", "timezone": "Europe/London", "columns": {...}}``."""
    files = sources or [str(p) for p in embedded_files()]
    return ingest_task(files, data_root=data_root, params=params)
