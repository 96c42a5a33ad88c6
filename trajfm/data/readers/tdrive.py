"""Reader for T-Drive taxi trajectories (Microsoft Research Asia, Beijing, Feb 2008).

One text file per taxi (``<taxi id>.txt``), no header, one fix per line::

    taxi_id,datetime,lon,lat
    1131,2008-02-02 13:30:45,116.51172,39.92123

Longitude comes first. ``datetime`` is Beijing local time (``Asia/Shanghai``, UTC+8, no daylight
saving since 1991) and is converted to UTC; pass ``timezone=`` for data recorded elsewhere.
A time written with a UTC offset is converted with its own offset.

Canonical output: ``obj_id`` is the line's taxi id, ``traj_id`` is ``"tdrive:<taxi id>"`` (one
taxi's fixes form one track until preprocessing splits it), ``source`` ``"tdrive"``, ``kind``
``"vehicle"``. Every non-blank line is one row read; a line with other than 4 fields is
``parse_error`` (a wrong delimiter shows up this way on every line).
"""

from __future__ import annotations

import re
from typing import Iterator

from trajfm.data.readers.checks import split_checked, validate_fixes
from trajfm.data.readers.formats import Format
from trajfm.data.readers.lines import iter_line_chunks, non_blank
from trajfm.data.readers.parsing import (
    columns_of,
    fast_fields,
    field_count_problems,
    flag_undecodable,
    raw_lines,
    split_fields,
)
from trajfm.data.readers.result import ReadResult
from trajfm.data.readers.source_file import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_ROWS, SourceFile
from trajfm.data.readers.times import check_timezone

FORMAT = "tdrive"
SOURCE = "tdrive"
EXTENSIONS = (".txt",)
N_FIELDS = 4
TIMEZONE = "Asia/Shanghai"
TIME_FORMATS = ("%Y-%m-%d %H:%M:%S",)
_LINE = re.compile(r"^\s*[^,]+,\s*\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\s*,[^,]*,[^,]*$")  # 4 fields, a time 2nd


def _looks_like_tdrive(first_line: str) -> bool:
    return bool(_LINE.match(first_line))


def iter_tdrive(
    file: SourceFile,
    kind: str = "vehicle",
    source_tag: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    timezone: str = TIMEZONE,
) -> Iterator[ReadResult]:
    """Read one T-Drive file chunk by chunk into canonical points (lon/lat degrees, ``t`` UTC)."""
    tag = source_tag or SOURCE
    check_timezone(timezone)
    for chunk in iter_line_chunks(file, chunk_rows, chunk_bytes):
        fast = fast_fields(chunk, N_FIELDS, [0, 1, 2, 3], numeric=(2, 3))
        if fast is not None:
            taxi, t_text, lon, lat = (fast.columns[j] for j in range(N_FIELDS))
            line_nos, raw_of = fast.line_numbers, fast.raw_of
            reason = detail = None
        else:
            lines, line_nos, undecodable = non_blank(chunk)
            (taxi, t_text, lon, lat), counts = columns_of(split_fields(lines), N_FIELDS, [0, 1, 2, 3])
            reason, detail = field_count_problems(counts, N_FIELDS, "a T-Drive line has")
            flag_undecodable(reason, detail, undecodable)
            raw_of = raw_lines(lines)
        n = len(line_nos)
        if n == 0:
            continue
        parsed, reason, detail = validate_fixes(
            taxi, t_text, lon, lat, TIME_FORMATS, pre_reason=reason, pre_detail=detail, timezone=timezone
        )
        traj_id = (SOURCE + ":" + parsed["obj_id"]).to_numpy(dtype=object)
        points, quarantine = split_checked(file, parsed, reason, detail, traj_id, kind, tag, line_nos, raw_of)
        yield ReadResult(points, quarantine, n, file.display(), FORMAT)


TDRIVE = Format(
    name=FORMAT,
    iter_chunks=iter_tdrive,
    extensions=EXTENSIONS,
    kind="vehicle",
    default_source=lambda file: SOURCE,
    sniff=_looks_like_tdrive,
    options=("timezone",),
    description="T-Drive text: taxi_id,YYYY-MM-DD HH:MM:SS (Beijing time),lon,lat per line",
)
