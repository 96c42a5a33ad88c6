"""Reader for GeoLife GPS trajectories (Microsoft Research Asia, 182 users, 2007-2012).

A GeoLife tree is ``Data/USER/Trajectory/YYYYMMDDhhmmss.plt``; each ``.plt`` file is one
trajectory: 6 header lines (``Geolife trajectory``, ``WGS 84``, ``Altitude is in Feet``,
``Reserved 3``, a display line, ``0``), then one fix per line::

    lat,lon,0,altitude_ft,days_since_1899-12-30,date,time
    39.984702,116.318417,0,492,39744.1201851852,2008-10-23,02:53:04

**Latitude comes first** in the file (canonical order is lon, lat). ``date`` + ``time`` are the
fix time in UTC (GMT, per the GeoLife user guide); the fractional-days column repeats it less
precisely and is ignored; the third field (always 0) is ignored.

Canonical output: ``obj_id`` is the user (the folder above ``Trajectory/``, else the parent
folder, else the file stem); ``traj_id`` is ``"geolife:<user>:<file stem>"``; ``source`` is
``"geolife"``; ``kind`` ``"person"``; ``alt`` is the altitude in **metres** (feet x 0.3048;
-777, GeoLife's "no altitude", becomes NaN; text in it quarantines the row).

Rows: every non-blank line after the header is one row read. The header is recognised by its
content, not counted blindly: it is the run of leading lines (at most 6) that are GeoLife header
lines (``Geolife trajectory``, ``WGS 84``, ``Altitude is in Feet``, ``Reserved N``, the 8-field
display line, ``0``); the first line that is not one of them starts the data, so a file that lost
a header line loses no fix (rows read = kept + quarantined still counts every line). A line with
other than 7 fields is ``parse_error``. A file whose first line is not ``Geolife trajectory``
raises ``SourceFormatError`` (its data might otherwise be mistaken for header lines); a file of the
header alone reads zero rows.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from trajfm.data.readers.checks import numeric_optional, split_checked, validate_fixes
from trajfm.data.readers.formats import Format
from trajfm.data.readers.lines import LineChunk, gc_paused, iter_line_chunks, non_blank
from trajfm.data.readers.parsing import (
    columns_of,
    fast_fields,
    field_count_problems,
    flag_undecodable,
    raw_lines,
    split_fields,
)
from trajfm.data.readers.result import ReadResult
from trajfm.data.readers.source_file import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_ROWS, SourceFile, SourceFormatError

FORMAT = "geolife"
SOURCE = "geolife"
EXTENSIONS = (".plt",)
HEADER_LINES = 6
FIRST_LINE = "geolife trajectory"
N_FIELDS = 7
LAT, LON, ALT_FT, DATE, TIME = 0, 1, 3, 5, 6  # field positions: latitude first
FEET_TO_M = 0.3048
ALT_MISSING_FT = -777.0
TIME_FORMATS = ("%Y-%m-%d %H:%M:%S",)


def user_of(file: SourceFile) -> str:
    """The GeoLife user id: the folder above ``Trajectory/``, else the parent folder, else the stem."""
    folders = [f for f in file.folders if f not in ("/", "")]
    if len(folders) >= 2 and folders[-1].lower() == "trajectory":
        return folders[-2]
    if folders and folders[-1].lower() != "trajectory":
        return folders[-1]
    return file.stem


def traj_id_of(file: SourceFile) -> str:
    return f"{SOURCE}:{user_of(file)}:{file.stem}"


def _looks_like_geolife(first_line: str) -> bool:
    return first_line.strip().lower().startswith(FIRST_LINE)


def is_header_line(text: str) -> bool:
    """True for a line of the GeoLife header (lines 2-6): ``WGS 84``, ``Altitude is in Feet``,
    ``Reserved 3``, the 8-field display line (``0,2,255,My Track,0,0,2,8421376``) or ``0``."""
    line = text.strip()
    low = line.lower()
    if low in ("wgs 84", "0") or low.startswith(("altitude is in", "reserved", FIRST_LINE)):
        return True
    # The display line: 8 fields and no time of day (a fix has 7 fields and an hh:mm:ss).
    return line.count(",") == 7 and ":" not in line


def header_length(lines: list[str]) -> int:
    """How many leading lines of the file (given its first lines) are the header: line 1, then
    each following line while it is a header line, at most ``HEADER_LINES`` in all."""
    n = 1
    while n < min(HEADER_LINES, len(lines)) and is_header_line(lines[n]):
        n += 1
    return n


def _data_chunks(file: SourceFile, chunk_rows: int, chunk_bytes: int) -> Iterator[LineChunk]:
    """The chunks of lines after the header (see ``header_length``), once line 1 is checked."""
    header = None
    for chunk in iter_line_chunks(file, chunk_rows, chunk_bytes):
        if header is None:
            first = chunk.first_line()
            if not _looks_like_geolife(first):
                raise SourceFormatError(
                    str(file),
                    1,
                    f"not a GeoLife .plt file: line 1 should be 'Geolife trajectory', found {first[:80]!r}",
                )
            # The header sits in the first chunk unless chunks are tiny: read the first lines apart.
            header = header_length(_first_lines(file, HEADER_LINES))
        skip = max(0, header + 1 - chunk.start)
        if skip >= len(chunk):
            continue
        if skip:
            chunk = chunk.tail(skip)
        yield chunk


def _first_lines(file: SourceFile, n: int) -> list[str]:
    """The first ``n`` lines of the file as text (a byte-order mark dropped)."""
    text = file.head(1 << 16).decode("utf-8", errors="replace").lstrip("\ufeff")
    return text.splitlines()[:n]


def iter_geolife(
    file: SourceFile,
    kind: str = "person",
    source_tag: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[ReadResult]:
    """Read one ``.plt`` file chunk by chunk into canonical points (lon/lat degrees, ``t`` UTC)."""
    user = user_of(file)
    traj_id = traj_id_of(file)
    tag = source_tag or SOURCE
    for chunk in _data_chunks(file, chunk_rows, chunk_bytes):
        wanted = [LAT, LON, ALT_FT, DATE, TIME]
        fast = fast_fields(chunk, N_FIELDS, wanted, numeric=(LAT, LON, ALT_FT))
        if fast is not None:
            lat, lon, alt_ft, date, time = (fast.columns[j] for j in wanted)
            line_nos, raw_of = fast.line_numbers, fast.raw_of
            reason = detail = None
        else:
            lines, line_nos, undecodable = non_blank(chunk)
            (lat, lon, alt_ft, date, time), counts = columns_of(split_fields(lines), N_FIELDS, wanted)
            reason, detail = field_count_problems(counts, N_FIELDS, "a GeoLife line has")
            flag_undecodable(reason, detail, undecodable)
            raw_of = raw_lines(lines)
        n = len(line_nos)
        if n == 0:
            continue
        with gc_paused():
            t_text = np.asarray([f"{d.strip()} {t.strip()}" for d, t in zip(date, time)], dtype=object)
        parsed, reason, detail = validate_fixes(
            np.full(n, user, dtype=object), t_text, lon, lat, TIME_FORMATS, pre_reason=reason, pre_detail=detail
        )
        alt = numeric_optional(alt_ft, "altitude", reason, detail)
        with np.errstate(invalid="ignore"):
            alt_m = np.where(alt == ALT_MISSING_FT, np.nan, alt * FEET_TO_M)
        points, quarantine = split_checked(
            file, parsed, reason, detail, np.full(n, traj_id, dtype=object), kind, tag, line_nos, raw_of, {"alt": alt_m}
        )
        yield ReadResult(points, quarantine, n, file.display(), FORMAT)


GEOLIFE = Format(
    name=FORMAT,
    iter_chunks=iter_geolife,
    extensions=EXTENSIONS,
    kind="person",
    default_source=lambda file: SOURCE,
    namespace=traj_id_of,
    description="GeoLife .plt: 6 header lines, then lat,lon,0,alt_ft,days,date,time (UTC)",
)
