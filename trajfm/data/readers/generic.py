"""Reader for any CSV or Parquet table of fixes, given a column mapping.

``columns`` maps canonical names to the file's column names:

===============  ========  ==================================================================
key              needed    meaning
===============  ========  ==================================================================
``traj_id``      one of    the track id (``traj_id`` becomes ``"<file stem>:<value>"``)
``obj_id``       the two   the mover id (default: the track id; the track id defaults to it)
``t``            ``t`` or  the time: ISO 8601 text, epoch numbers, or a Parquet timestamp
``date, time``   both      a date column and a time-of-day column, joined with a space
``lon, lat``     yes       WGS84 degrees
``kind``         no        mover kind per row (default: the ``kind`` option, which is then
                           needed)
``source``       no        ``source`` tag per row (default: the ``source`` option, else the
                           file stem)
``sog``, ``cog``, no       optional canonical columns: knots, degrees, metres (numbers; text
``alt``, ``mode``          in them quarantines the row), transport mode (text)
===============  ========  ==================================================================

Options: ``time_format`` is ``"auto"`` (ISO 8601 / ``YYYY-MM-DD HH:MM:SS``), ``"epoch_s"``,
``"epoch_ms"``, ``"epoch_us"``, ``"epoch_ns"``, or a ``strftime`` pattern (``"%d/%m/%Y %H:%M"``).
``timezone`` (an IANA name, e.g. ``"Europe/London"``) is the zone of naive times (no UTC offset);
a time with an offset is converted with its own offset, so a file mixing both is read right.
Without ``timezone`` a naive time is **not guessed**: the row is quarantined (``bad_time``, detail
says to pass ``timezone=``); pass ``timezone="UTC"`` for naive UTC times. A local time that is
skipped or repeated at a daylight-saving change is quarantined too. Epoch numbers are UTC.
``delimiter`` (CSV, default ``,``).

CSV: the first non-blank line is the header (a column named in ``columns`` that appears twice in
it raises ``SourceFormatError``); each non-blank line after it is one row read; a line with a
different field count than the header is ``parse_error``; quoted fields may hold the delimiter but
not a line break: a record whose quoted field holds one (``"a<newline>b",...``) is quarantined
whole, every line of it ``parse_error`` (none of its lines becomes a point). Parquet: read in
batches of ``chunk_rows`` rows (memory: one row group); ``line`` in the quarantine is the 1-based
row number. A mapped column missing from the file, or holding lists or structs (not one value per
row), raises ``SourceFormatError`` naming the file (and the header line).
"""

from __future__ import annotations

import re
from typing import Iterator

import numpy as np
import pandas as pd

from trajfm.data.readers.checks import numeric_optional, split_checked, validate_fixes
from trajfm.data.readers.formats import Format
from trajfm.data.readers.lines import header_then_chunks, non_blank
from trajfm.data.readers.parsing import (
    columns_of,
    fast_fields,
    field_count_problems,
    flag_multiline_records,
    flag_undecodable,
    multiline_records,
    raw_lines,
    split_fields,
)
from trajfm.data.readers.result import ReadResult
from trajfm.data.readers.source_file import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_ROWS, SourceFile, SourceFormatError
from trajfm.data.readers.times import check_timezone, finest_times, parse_times, wall_time_to_utc

FORMAT = "generic"
CSV_EXTENSIONS = (".csv", ".tsv")
PARQUET_EXTENSIONS = (".parquet", ".pq")
EXTENSIONS = CSV_EXTENSIONS + PARQUET_EXTENSIONS
KEYS = ("traj_id", "obj_id", "t", "date", "time", "lon", "lat", "kind", "source", "sog", "cog", "alt", "mode")
NUMERIC_OPTIONAL = ("sog", "cog", "alt")
AUTO_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S")
EPOCH_NS = {"epoch_s": 1_000_000_000, "epoch_ms": 1_000_000, "epoch_us": 1_000, "epoch_ns": 1}
INT64_MAX = np.iinfo(np.int64).max
_NUMBER = re.compile(r"^\s*[-+]?\d+(?:\.\d*)?\s*$")


def check_mapping(columns: dict | None, kind: str | None, time_format: str) -> dict[str, str]:
    """Validate the column mapping and options; returns the mapping. Raises ``ValueError``."""
    if not columns:
        raise ValueError(
            "the generic reader needs columns= mapping canonical names to the file's columns, e.g. "
            "{'traj_id': 'trip_id', 't': 'timestamp', 'lon': 'longitude', 'lat': 'latitude'}"
        )
    if not isinstance(columns, dict):
        raise ValueError(f"columns must be a mapping, got {type(columns).__name__}")
    unknown = sorted(set(columns) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in columns=; known: {list(KEYS)}")
    bad = {k: v for k, v in columns.items() if not isinstance(v, str) or not v}
    if bad:
        raise ValueError(f"columns= values must be column names (non-empty strings), got {bad}")
    needed = [k for k in ("lon", "lat") if k not in columns]
    if "traj_id" not in columns and "obj_id" not in columns:
        needed.append("traj_id or obj_id")
    has_t = "t" in columns
    has_date_time = "date" in columns and "time" in columns
    if has_t == has_date_time:
        needed.append("t, or date and time" if not has_t else "t or (date and time), not both")
    elif not has_t and ("date" in columns) != ("time" in columns):
        needed.append("both date and time")
    if needed:
        raise ValueError(f"columns= lacks {needed}; given {columns}")
    if kind in (None, "") and "kind" not in columns:
        raise ValueError("the generic reader needs kind= (e.g. 'bus') or a kind column in columns=")
    if not (time_format in ("auto", "iso") or time_format in EPOCH_NS or "%" in time_format):
        raise ValueError(
            f"time_format must be 'auto', one of {sorted(EPOCH_NS)} or a strftime pattern, got {time_format!r}"
        )
    return dict(columns)


def iter_generic(
    file: SourceFile,
    kind: str | None = None,
    source_tag: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    columns: dict | None = None,
    timezone: str | None = None,
    time_format: str = "auto",
    delimiter: str | None = None,
) -> Iterator[ReadResult]:
    """Read a CSV or Parquet table of fixes chunk by chunk (see the module docstring)."""
    mapping = check_mapping(columns, kind, time_format)
    check_timezone(timezone)
    opts = {"kind": kind, "tag": source_tag or file.stem, "timezone": timezone, "time_format": time_format}
    if file.suffix in PARQUET_EXTENSIONS:
        yield from _iter_parquet(file, mapping, chunk_rows, opts)
    else:
        sep = delimiter or ("\t" if file.suffix == ".tsv" else ",")
        yield from _iter_csv(file, mapping, chunk_rows, chunk_bytes, sep, opts)


# ---------------------------------------------------------------------------------------------
# CSV


def _iter_csv(file, mapping, chunk_rows, chunk_bytes, delimiter, opts) -> Iterator[ReadResult]:
    header_line, chunks = header_then_chunks(file, chunk_rows, chunk_bytes)
    if header_line is None:
        return
    line_no, text, _bad_bytes = header_line
    fields = split_fields([text], delimiter)[0]
    if fields is None:
        raise SourceFormatError(str(file), line_no, f"header has unbalanced quotes: {text[:120]!r}")
    header = [h.strip().lstrip("\ufeff") for h in fields]
    missing = sorted({name for name in mapping.values() if name not in header})
    if missing:
        hint = ""
        if len(header) == 1:
            for d in (";", "\t", "|", ","):
                if d != delimiter and d in text:
                    hint = f"; the header splits on {d!r}, not {delimiter!r}: pass delimiter={d!r}"
                    break
        raise SourceFormatError(
            str(file), line_no, f"header lacks column(s) {missing} named in columns= (found {header[:12]}){hint}"
        )
    doubled = sorted({name for name in mapping.values() if header.count(name) > 1})
    if doubled:
        at = {name: [i + 1 for i, h in enumerate(header) if h == name] for name in doubled}
        raise SourceFormatError(
            str(file),
            line_no,
            f"header names column(s) {doubled} more than once (at field positions {at}); "
            f"rename the duplicates so columns= picks one unambiguously",
        )
    keys = list(mapping)
    n_fields = len(header)
    positions = [header.index(mapping[k]) for k in keys]
    numeric = tuple(header.index(mapping[k]) for k in ("lon", "lat") + NUMERIC_OPTIONAL if k in mapping)
    still_open = None  # a quoted field with a line break, open at the end of the previous chunk
    for chunk in chunks:
        fast = None if still_open else fast_fields(chunk, n_fields, positions, numeric=numeric, delimiter=delimiter)
        if fast is not None:
            values = [fast.columns[j] for j in positions]
            line_nos, raw_of = fast.line_numbers, fast.raw_of
            reason = np.full(len(line_nos), None, dtype=object)
            detail = np.full(len(line_nos), None, dtype=object)
        else:
            lines, line_nos, undecodable = non_blank(chunk)
            rows = split_fields(lines, delimiter)
            values, counts = columns_of(rows, n_fields, positions)
            reason, detail = field_count_problems(counts, n_fields)
            flag_undecodable(reason, detail, undecodable)
            in_record, first, still_open = multiline_records(lines, rows, line_nos, delimiter, carried=still_open)
            flag_multiline_records(reason, detail, in_record, first, line_nos)
            raw_of = raw_lines(lines)
        if len(line_nos):
            yield check_chunk(file, dict(zip(keys, values)), line_nos, reason, detail, raw_of, opts)


# ---------------------------------------------------------------------------------------------
# Parquet


def _iter_parquet(file, mapping, chunk_rows, opts) -> Iterator[ReadResult]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with file.open() as f:
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise SourceFormatError(str(file), None, f"not a readable Parquet file ({exc})") from None
        names = pf.schema_arrow.names
        missing = sorted({name for name in mapping.values() if name not in names})
        if missing:
            raise SourceFormatError(
                str(file), None, f"Parquet file lacks column(s) {missing} named in columns= (found {names[:12]})"
            )
        nested = {
            name: str(pf.schema_arrow.field(name).type)
            for name in dict.fromkeys(mapping.values())
            if pa.types.is_nested(pf.schema_arrow.field(name).type)
        }
        if nested:
            raise SourceFormatError(
                str(file),
                None,
                f"column(s) named in columns= hold lists or structs, not one value per row: {nested}; "
                f"flatten them first (one row per fix)",
            )
        t_field = pf.schema_arrow.field(mapping["t"]) if "t" in mapping else None
        if t_field is not None and _is_number_type(t_field.type) and opts["time_format"] not in EPOCH_NS:
            raise SourceFormatError(
                str(file),
                None,
                f"time column {mapping['t']!r} holds numbers ({t_field.type}); "
                f"pass time_format= one of {sorted(EPOCH_NS)}",
            )
        wanted = list(dict.fromkeys(mapping.values()))
        first_row = 1
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=wanted):
            n = batch.num_rows
            if n == 0:
                continue
            values = {
                k: arrow_values(k, batch.column(batch.schema.get_field_index(name))) for k, name in mapping.items()
            }
            line_nos = np.arange(first_row, first_row + n, dtype=np.int64)
            first_row += n

            def raw_of(rows, batch=batch):
                picked = batch.select(wanted).take(np.asarray(rows)).to_pylist()
                return [",".join(f"{k}={v}" for k, v in row.items()) for row in picked]

            reason = np.full(n, None, dtype=object)
            detail = np.full(n, None, dtype=object)
            yield check_chunk(file, values, line_nos, reason, detail, raw_of, opts)


def _is_number_type(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def arrow_values(key: str, arr):
    """An Arrow column as what ``check_chunk`` takes: text (object, ``None`` for null), float64,
    or (times) a pandas datetime Series."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.cast(t.value_type)
        t = arr.type
    if key == "t" and pa.types.is_timestamp(t):
        return pd.Series(arr.to_pandas())
    if key in ("lon", "lat", "t") + NUMERIC_OPTIONAL and _is_number_type(t):
        if arr.null_count:
            return np.asarray(arr.to_pylist(), dtype=object)  # None marks a missing value
        values = arr.to_numpy(zero_copy_only=False)
        return values if key == "t" and values.dtype.kind in "iu" else values.astype(np.float64)
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        if pa.types.is_floating(t):
            # 1091.0 -> "1091": an integer id stored as float (pandas does this when ids have gaps)
            as_int = pc.cast(arr, pa.int64(), safe=False)
            whole = pc.fill_null(pc.equal(pc.cast(as_int, t), arr), False)
            arr = pc.if_else(whole, pc.cast(as_int, pa.string()), pc.cast(arr, pa.string()))
        else:
            arr = pc.cast(arr, pa.string())
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object)


# ---------------------------------------------------------------------------------------------
# One chunk of columns -> checked fixes


def _text(values) -> np.ndarray:
    """Values as stripped strings (``""`` for missing)."""
    arr = np.asarray(values, dtype=object)
    return np.asarray(
        [v.strip() if isinstance(v, str) else ("" if v is None or v != v else str(v)) for v in arr], dtype=object
    )


def _times(values, time_format: str, timezone: str | None) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Time column -> (UTC times, NaT where not usable; why, per row or None; text for blanks)."""
    if isinstance(values, pd.Series) and pd.api.types.is_datetime64_any_dtype(values.dtype):
        n = len(values)
        blank = np.where(values.isna().to_numpy(), "", "t").astype(object)
        detail = np.full(n, None, dtype=object)
        if values.dt.tz is not None:
            return finest_times(values.dt.tz_convert("UTC").reset_index(drop=True)), detail, blank
        wall = finest_times(values.dt.tz_localize("UTC").reset_index(drop=True))
        if timezone is None:
            detail[values.notna().to_numpy()] = "naive timestamp and no timezone given; pass timezone="
            return pd.Series(pd.NaT, index=wall.index, dtype="datetime64[ns, UTC]"), detail, blank
        if timezone.upper() == "UTC":
            return wall, detail, blank
        t, dst = wall_time_to_utc(wall, timezone)
        detail[dst] = f"local time in {timezone} is skipped or repeated at a DST change"
        return t, detail, blank
    if time_format in EPOCH_NS:
        return _epoch(values, time_format)
    text = _text(values)
    formats = AUTO_FORMATS if time_format in ("auto", "iso") else (time_format,)
    t, detail = parse_times(text, formats, timezone)
    if time_format in ("auto", "iso"):
        unparsed = t.isna().to_numpy() & pd.isna(detail)
        if unparsed.any():
            numeric = pd.Series(text[unparsed], dtype=object).str.match(_NUMBER).fillna(False).to_numpy(dtype=bool)
            rows = np.flatnonzero(unparsed)[numeric]
            detail[rows] = "a number, not a date-time: pass time_format='epoch_s' or 'epoch_ms'"
    return t, detail, text


def _epoch(values, time_format: str) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Epoch numbers (text or numeric) -> UTC times; exact for whole numbers."""
    per = EPOCH_NS[time_format]
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        text = np.full(len(arr), "n", dtype=object)
        nums = pd.Series(arr.astype(np.int64))
    elif arr.dtype.kind == "f":
        text = np.where(np.isnan(arr), "", "n").astype(object)  # NaN: no time given
        nums = pd.Series(arr.astype(np.float64))
    else:
        text = _text(values)
        nums = pd.to_numeric(pd.Series(text, dtype=object), errors="coerce")
    n = len(nums)
    detail = np.full(n, None, dtype=object)
    limit = INT64_MAX // per
    ns = np.zeros(n, dtype=np.int64)
    if pd.api.types.is_integer_dtype(nums.dtype):
        v = nums.to_numpy(dtype=np.int64)
        ok = np.abs(v) < limit
        ns[ok] = v[ok] * per
    else:
        v = nums.to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(v) & (np.abs(v) < limit)
        ns[ok] = np.round(v[ok] * per).astype(np.int64)
    blank = text == ""
    detail[~ok & ~blank] = f"not a number of {time_format[len('epoch_') :]} since 1970 in range"
    t = pd.Series(ns.view("datetime64[ns]")).dt.tz_localize("UTC")  # nanoseconds kept (epoch_ns)
    t[~ok] = pd.NaT
    return t, detail, text


def check_chunk(file: SourceFile, values: dict, line_nos, reason, detail, raw_of, opts) -> ReadResult:
    n = len(line_nos)
    traj_text = _text(values["traj_id"] if "traj_id" in values else values["obj_id"])
    obj_text = _text(values["obj_id"]) if "obj_id" in values else traj_text
    no_traj = (traj_text == "") & pd.isna(reason)
    reason[no_traj], detail[no_traj] = "missing_value", "trajectory id is empty"

    if "t" in values:
        t, t_detail, t_text = _times(values["t"], opts["time_format"], opts["timezone"])
    else:
        date, time = _text(values["date"]), _text(values["time"])
        joined = np.asarray([f"{d} {c}" if d and c else "" for d, c in zip(date, time)], dtype=object)
        t, t_detail, t_text = _times(joined, opts["time_format"], opts["timezone"])

    kind = opts["kind"]
    if "kind" in values:
        kinds = _text(values["kind"])
        if kind:
            kinds[kinds == ""] = kind
        else:
            no_kind = (kinds == "") & pd.isna(reason)
            reason[no_kind], detail[no_kind] = "missing_value", "kind is empty"
        kind = kinds
    source = opts["tag"]
    if "source" in values:
        sources = _text(values["source"])
        sources[sources == ""] = source
        source = sources

    parsed, reason, detail = validate_fixes(
        obj_text,
        t_text,
        values["lon"],
        values["lat"],
        pre_reason=reason,
        pre_detail=detail,
        t_parsed=t,
        t_detail=t_detail,
        min_time=opts.get("min_time"),
    )
    optional = {k: numeric_optional(values[k], k, reason, detail) for k in NUMERIC_OPTIONAL if k in values}
    if "mode" in values:
        optional["mode"] = _text(values["mode"])
    traj_id = (file.stem + ":" + pd.Series(traj_text, dtype=object)).to_numpy(dtype=object)
    points, quarantine = split_checked(file, parsed, reason, detail, traj_id, kind, source, line_nos, raw_of, optional)
    return ReadResult(points, quarantine, n, file.display(), FORMAT)


GENERIC = Format(
    name=FORMAT,
    iter_chunks=iter_generic,
    extensions=EXTENSIONS,
    kind=None,
    options=("columns", "timezone", "time_format", "delimiter"),
    detectable=False,
    description="any CSV/Parquet table of fixes with a column mapping (columns=, timezone=, time_format=)",
)
