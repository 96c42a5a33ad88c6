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

Times before the schema's floor (``schema.MIN_TIME``, 1990: GPS clock errors) are quarantined
(``bad_time``), except for kinds recorded before GPS (``EARLIEST_BY_KIND``: storms from 1850,
icebergs and drifters from 1970).

A timestamp column without a time zone is read as UTC (the contract's ``t`` is UTC); pass
``timezone=`` to read it as another zone's wall time.
"""

from __future__ import annotations

from typing import Iterator

from trajfm.data.readers import generic
from trajfm.data.readers.formats import Format
from trajfm.data.readers.result import ReadResult
from trajfm.data.readers.source_file import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_ROWS, SourceFile, SourceFormatError
from trajfm.data.readers.times import check_timezone

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


def iter_canonical(
    file: SourceFile,
    kind: str | None = None,
    source_tag: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    timezone: str | None = None,
) -> Iterator[ReadResult]:
    """Read canonical Parquet in batches of ``chunk_rows`` rows (see the module docstring)."""
    import numpy as np
    import pyarrow.parquet as pq

    check_timezone(timezone)
    names = parquet_columns(file)
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise SourceFormatError(
            str(file),
            None,
            f"not canonical Parquet: lacks column(s) {missing} (found {names[:12]}); "
            f"read it with format='generic' and columns= mapping",
        )
    mapping = {c: c for c in REQUIRED + OPTIONAL if c in names}
    if kind not in (None, ""):
        mapping.pop("kind")  # the given kind replaces every row's
    opts = {"kind": kind, "tag": source_tag or file.stem, "timezone": timezone or "UTC", "time_format": "auto"}
    wanted = list(mapping.values())
    first_row = 1
    with file.open() as f:
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=wanted):
            n = batch.num_rows
            if n == 0:
                continue
            # A kind / source column holding one value throughout the batch (the usual case) is
            # passed as that value: the same rows, without checking each row's text.
            batch_opts = dict(opts)
            batch_keys = list(mapping)
            for col, opt in (("kind", "kind"), ("source", "tag")):
                value = _constant(batch.column(batch.schema.get_field_index(col))) if col in mapping else None
                if value is not None:
                    batch_opts[opt] = value
                    batch_keys.remove(col)
            values = {k: generic.arrow_values(k, batch.column(batch.schema.get_field_index(k))) for k in batch_keys}
            line_nos = np.arange(first_row, first_row + n, dtype=np.int64)
            first_row += n
            kinds = values["kind"] if "kind" in values else [batch_opts["kind"]]
            parts = []
            groups = floor_groups(kinds)
            if "kind" not in values:  # one kind: one group of every row
                groups = [(groups[0][0], np.arange(n))]
            for floor, rows in groups:
                part = values if len(groups) == 1 else {k: _take(v, rows) for k, v in values.items()}
                part_lines = line_nos if len(groups) == 1 else line_nos[rows]

                def raw_of(idx, batch=batch, rows=rows):
                    picked = batch.take(np.asarray(rows[np.asarray(idx, dtype=np.int64)])).to_pylist()
                    return [",".join(f"{k}={v}" for k, v in row.items()) for row in picked]

                m = len(part_lines)
                reason = np.full(m, None, dtype=object)
                detail = np.full(m, None, dtype=object)
                chunk = generic.check_chunk(
                    file, part, part_lines, reason, detail, raw_of, {**batch_opts, "min_time": floor}
                )
                chunk.format = FORMAT
                parts.append(chunk)
            yield parts[0] if len(parts) == 1 else ReadResult.concat(parts, file.display(), FORMAT)


# Recordings older than the schema's GPS-era floor (schema.MIN_TIME, 1990: earlier GPS times are
# clock errors) are real for movers tracked by other means: best-track analyses of storms go back
# to 1851 (HURDAT2), icebergs and drifters to the first satellite trackers (1970s, scatterometers,
# Argos). For these kinds canonical Parquet is checked against this earlier floor instead.
EARLIEST_BY_KIND = {
    "storm": "1850-01-01",
    "ice": "1970-01-01",
    "drifter": "1970-01-01",
}


def floor_groups(kinds) -> list[tuple]:
    """Rows grouped by the earliest plausible time of their kind: ``[(floor, rows), ...]``
    (``floor`` ``None``: the schema's ``MIN_TIME``), rows in file order within a group."""
    import numpy as np
    import pandas as pd

    arr = pd.Series(np.asarray(kinds, dtype=object)).str.strip()
    floor_of = {k: EARLIEST_BY_KIND.get(k) for k in arr.dropna().unique()}
    distinct = sorted({v for v in floor_of.values() if v is not None})
    if not distinct:
        return [(None, np.arange(len(arr)))]
    groups = []
    code = arr.map(floor_of).to_numpy(dtype=object)
    for floor in [None, *distinct]:
        rows = np.flatnonzero(pd.isna(code)) if floor is None else np.flatnonzero(code == floor)
        if len(rows):
            groups.append((None if floor is None else pd.Timestamp(floor, tz="UTC"), rows))
    return groups


def _constant(column) -> str | None:
    """The single value of a text column when every row holds it (stripped, non-empty), else None."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count or not (
        pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_dictionary(column.type)
    ):
        return None
    distinct = pc.unique(column.dictionary_decode() if pa.types.is_dictionary(column.type) else column).to_pylist()
    if len(distinct) != 1 or not isinstance(distinct[0], str) or not distinct[0].strip():
        return None
    return distinct[0].strip()


def _take(values, rows):
    import numpy as np
    import pandas as pd

    if isinstance(values, pd.Series):
        return values.iloc[rows].reset_index(drop=True)
    return np.asarray(values)[rows]


CANONICAL = Format(
    name=FORMAT,
    iter_chunks=iter_canonical,
    extensions=EXTENSIONS,
    kind=None,
    options=("timezone",),
    detectable=True,
    description="Parquet with the data contract's columns (traj_id, obj_id, t, lon, lat, kind, source)",
)
