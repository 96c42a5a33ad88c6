"""Prefect task over ``trajfm.data.ingest``: read raw files into canonical points."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from tasks._common import STAGE_TASK
from trajfm.data.ingest import ingest
from trajfm.store import read_manifest, redact_url


@task(name="ingest", **STAGE_TASK)
def ingest_task(sources: list[str], data_root: str | None = None, params: dict | None = None) -> str:
    """Read every source file; quarantine malformed records; return the stage directory.

    A source that cannot be read (I/O error, unreachable URL) fails the attempt and Prefect retries
    it; the stage directory appears only when every file was read (``StageWriter``), so a failed
    attempt leaves nothing behind. The error names the sources."""
    try:
        out = ingest([str(s) for s in sources], root=data_root, params=params or {})
    except Exception as exc:
        raise RuntimeError(
            f"ingest of {_describe(sources)} failed: {type(exc).__name__}: {redact_url(str(exc))}"
        ) from exc
    m = read_manifest(out)
    get_run_logger().info(
        "ingest: %s read = %s kept + %s quarantined (%s)",
        m["rows_read"],
        m["rows_kept"],
        m["rows_quarantined"],
        m.get("quarantined_by_reason", {}),
    )
    rows = [
        {"file": name, **{k: int(v) for k, v in counts.items() if isinstance(v, (int, float))}}
        for name, counts in m.get("per_file", {}).items()
    ]
    rows.append(
        {
            "file": "TOTAL",
            "rows_read": m["rows_read"],
            "rows_kept": m["rows_kept"],
            "rows_quarantined": m["rows_quarantined"],
        }
    )
    create_table_artifact(rows, key="ingest-row-accounting", description="Rows read = kept + quarantined, per file")
    return str(out)


def _describe(sources: list[str], show: int = 5) -> str:
    names = [redact_url(str(s)) for s in sources]  # no credentials of a URL in logs
    more = f" and {len(names) - show} more" if len(names) > show else ""
    return ", ".join(names[:show]) + more
