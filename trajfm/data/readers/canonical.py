"""Reader for canonical Parquet: a table that already has the data contract's columns.

A Parquet file whose columns include ``traj_id, obj_id, t, lon, lat, kind, source`` (the
contract, ``trajfm.data.schema.POINT_COLUMNS``; ``t`` a timestamp, e.g. ``timestamp[ns, UTC]``)
is read with no column mapping: ``trajfm evaluate --data x.parquet`` and
``trajfm run ingest --sources '["x.parquet"]'`` detect it by its schema (see
``readers.detect_format``). The optional ``sog`` (knots), ``cog`` (degrees), ``alt`` (metres) and
``mode`` columns are kept when the file has them.

Each row keeps its own ``kind`` and ``source`` (a file may mix kinds, e.g. ``bus``, ``tram`` and
``trolleybus`` rows); ``kind=`` given to the reader replaces every row's kind, ``source=`` fills
empty ``source`` values only. ``traj_id`` becomes ``"<file stem>:<traj_id>"`` as in the generic
reader, so two files never share a trajectory. Rows are checked like every reader's (missing
ids, unparseable/naive times, non-finite or out-of-range coordinates, null island, times before
1970 or in the future): each row read is a point or a quarantine row with its reason.

A timestamp column without a time zone is read as UTC (the contract's ``t`` is UTC); pass
``timezone=`` to read it as another zone's wall time.
"""

from __future__ import annotations

from typing import Iterator

from trajfm.data.readers.base import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_ROWS, Format, ReadResult, SourceFile, SourceFormatError

FORMAT = "canonical"
EXTENSIONS = (".parquet", ".pq")
REQUIRED = ("traj_id", "obj_id", "t", "lon", "lat", "kind", "source")
OPTIONAL = ("sog", "cog", "alt", "mode")


def parquet_columns(file: "SourceFile | str") -> list[str]:
    """Column names of a Parquet file (reads the footer only). Raises ``SourceFormatError``
    when the file is not readable Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = SourceFile.of(file)
    with file.open() as f:
        try:
            return list(pq.ParquetFile(f).schema_arrow.names)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise SourceFormatError(str(file), None, f"not a readable Parquet file ({exc})") from None


def missing_columns(file: "SourceFile | str") -> list[str]:
    """Contract columns a Parquet file lacks (``[]``: it is canonical Parquet)."""
    names = set(parquet_columns(file))
    return [c for c in REQUIRED if c not in names]


def is_canonical(file: "SourceFile | str") -> bool:
    """True when ``file`` is Parquet with every contract column (``REQUIRED``)."""
    try:
        return not missing_columns(file)
    except SourceFormatError:
        return False


def iter_canonical(
    file: SourceFile,
    kind: str | None = None,
    source_tag: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    timezone: str | None = None,
) -> Iterator[ReadResult]:
    """Read canonical Parquet in batches of ``chunk_rows`` rows (see the module docstring)."""
    from trajfm.data.readers import generic

    names = parquet_columns(file)
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise SourceFormatError(
            str(file), None,
            f"not canonical Parquet: lacks column(s) {missing} (found {names[:12]}); "
            f"read it with format='generic' and columns= mapping",
        )
    mapping = {c: c for c in REQUIRED + OPTIONAL if c in names}
    if kind not in (None, ""):
        mapping.pop("kind")  # the given kind replaces every row's
    opts = {"kind": kind, "tag": source_tag or file.stem, "timezone": timezone or "UTC", "time_format": "auto"}
    for chunk in generic._iter_parquet(file, mapping, chunk_rows, opts):
        chunk.format = FORMAT
        yield chunk


CANONICAL = Format(
    name=FORMAT,
    iter_chunks=iter_canonical,
    extensions=EXTENSIONS,
    kind=None,
    options=("timezone",),
    detectable=True,
    description="Parquet with the data contract's columns (traj_id, obj_id, t, lon, lat, kind, source)",
)
