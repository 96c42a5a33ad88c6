"""Reader for the Porto taxi trips CSV (ECML/PKDD 2015 "Taxi Trajectory Prediction").

Columns (a header line, every field quoted)::

    "TRIP_ID","CALL_TYPE","ORIGIN_CALL","ORIGIN_STAND","TAXI_ID","TIMESTAMP","DAY_TYPE","MISSING_DATA","POLYLINE"
    "1372636858620000589","C","","","20000589","1372636858","A","False","[[-8.618643,41.141412],[-8.618499,41.141376]]"

One line per trip. ``POLYLINE`` is a JSON list of ``[lon, lat]`` pairs (**longitude first**), one
every 15 s; ``TIMESTAMP`` is the trip start in Unix seconds (UTC), so fix ``i`` is at
``TIMESTAMP + 15 * i`` s.

Canonical output: ``traj_id`` is ``"porto:<TRIP_ID>"`` (a TRIP_ID already embeds the taxi id),
``obj_id`` the ``TAXI_ID``, ``source`` ``"porto"``, ``kind`` ``"vehicle"``. CALL_TYPE, ORIGIN_*,
DAY_TYPE are not kept.

Rows: each POLYLINE point is one row read. A trip whose line cannot be split (wrong field count,
broken quotes, non-UTF-8 bytes), whose POLYLINE is not a JSON list, or whose POLYLINE is empty
counts as **one** row, quarantined (``parse_error``; empty: ``missing_value``). A point that is not
two numbers is ``parse_error``; an empty TAXI_ID/TRIP_ID is ``missing_value`` and a TIMESTAMP that
is not a whole number of seconds ``bad_time`` for every point of the trip.

``MISSING_DATA=True`` (the source says GPS points are missing from the trip): every point of the
trip is quarantined as ``source_flagged``. Kept, those points would carry wrong times: the
15-s schedule counts the missing points out, so every fix after the gap would be placed too
early. Quarantined, they stay inspectable, and the count is in the manifest. Anything other than
True/False there is ``parse_error``. A file without a MISSING_DATA column is read as all False.
"""

from __future__ import annotations

import json
from typing import Iterator

import numpy as np
import pandas as pd

from trajfm.data.readers.checks import split_checked, validate_fixes
from trajfm.data.readers.formats import Format
from trajfm.data.readers.lines import gc_paused, header_then_chunks, non_blank
from trajfm.data.readers.parsing import columns_of, split_fields
from trajfm.data.readers.result import ReadResult, empty_quarantine, quarantine_frame
from trajfm.data.readers.source_file import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_ROWS, SourceFile, SourceFormatError
from trajfm.data.schema import empty_points

FORMAT = "porto"
SOURCE = "porto"
EXTENSIONS = (".csv",)
REQUIRED = ("TRIP_ID", "TAXI_ID", "TIMESTAMP", "POLYLINE")
OPTIONAL = ("MISSING_DATA",)
SAMPLING_S = 15
NS_PER_S = 1_000_000_000
MAX_CHUNK_BYTES = 4 << 20  # ~4 MB of trips (~200k points) per chunk, whatever chunk_bytes says
MAX_EPOCH_S = 2**32  # year 2106: beyond it a TIMESTAMP is garbage (and ns arithmetic stays in int64)


def _header(line: str) -> list[str]:
    fields = split_fields([line])[0] or line.split(",")
    return [h.strip().strip('"').lstrip("\ufeff") for h in fields]


def _looks_like_porto(first_line: str) -> bool:
    header = _header(first_line)
    return all(c in header for c in REQUIRED)


def _polyline(text: str) -> tuple[np.ndarray | None, list | None, str | None]:
    """Parse one POLYLINE: ``(k x 2 float array, None, None)`` when every element is two numbers;
    ``(None, elements, None)`` when some are not (checked one by one); ``(None, None, why)`` when
    the text is not a JSON list."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return None, None, f"POLYLINE is not valid JSON ({exc.__class__.__name__}: {str(exc)[:80]})"
    if not isinstance(value, list):
        return None, None, f"POLYLINE is a JSON {type(value).__name__}, not a list of [lon, lat]"
    try:
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim == 2 and arr.shape[1] == 2 or arr.size == 0:
            return arr.reshape(-1, 2), None, None
    except (ValueError, TypeError):
        pass
    return None, value, None


def _is_pair(element) -> bool:
    return (
        isinstance(element, list)
        and len(element) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in element)
    )


class _Trips:
    """Per-point arrays of one chunk, built trip by trip (a Python loop over trips, not points)."""

    def __init__(self) -> None:
        self.trips: list[int] = []  # index (row of the chunk) of each trip with points
        self.lengths: list[int] = []  # its number of points
        self.lonlat: list[np.ndarray] = []
        self.bad_points: dict[tuple[int, int], str] = {}  # (trip, pos) -> raw text of a non-pair
        # trips counted as one rejected row
        self.row_trip: list[int] = []
        self.row_reason: list[str] = []
        self.row_detail: list[str] = []

    def reject_trip(self, i: int, reason: str, detail: str) -> None:
        self.row_trip.append(i)
        self.row_reason.append(reason)
        self.row_detail.append(detail)

    def add(self, i: int, arr: np.ndarray) -> None:
        self.trips.append(i)
        self.lengths.append(len(arr))
        self.lonlat.append(arr)

    def point_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(trip row, position in its POLYLINE) of every point."""
        lengths = np.asarray(self.lengths, dtype=np.int64)
        trip = np.repeat(np.asarray(self.trips, dtype=np.int64), lengths)
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)
        return trip, np.arange(len(trip), dtype=np.int64) - first


def iter_porto(
    file: SourceFile,
    kind: str = "vehicle",
    source_tag: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[ReadResult]:
    """Read a Porto trips CSV chunk by chunk (whole trips per chunk) into canonical points."""
    tag = source_tag or SOURCE
    # A line holds a whole trip (~50 points, parsed into Python lists): cap the text per chunk.
    header_line, chunks = header_then_chunks(file, chunk_rows, min(chunk_bytes, MAX_CHUNK_BYTES))
    if header_line is None:
        return
    header = _header(header_line[1])
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise SourceFormatError(
            str(file), header_line[0], f"not a Porto taxi CSV: header lacks {missing} (found {header[:10]})"
        )
    names = [c for c in REQUIRED + OPTIONAL if c in header]
    n_fields = len(header)
    for chunk in chunks:
        lines, line_nos, undecodable = non_blank(chunk)
        if lines:
            yield _read_trips(file, lines, line_nos, undecodable, header, names, n_fields, kind, tag)


def _parse_polylines(counts, undecodable, polylines, n_fields: int) -> _Trips:
    """Each line's POLYLINE parsed into a trip, or the whole line rejected (field count, bytes,
    JSON, an empty trip); a point that is not ``[lon, lat]`` is noted in ``bad_points``."""
    trips = _Trips()
    with gc_paused():
        for i, (count, bad_bytes, poly) in enumerate(zip(counts, undecodable, polylines)):
            if count != n_fields:
                why = "unbalanced quotes" if count < 0 else f"{count} fields, header has {n_fields}"
                trips.reject_trip(i, "parse_error", why + " (truncated or shifted line?)")
            elif bad_bytes:
                trips.reject_trip(i, "parse_error", "line has non-UTF-8 bytes")
            else:
                arr, elements, why = _polyline(poly)
                if why is not None:
                    trips.reject_trip(i, "parse_error", why)
                elif arr is not None and len(arr) == 0 or elements is not None and len(elements) == 0:
                    trips.reject_trip(i, "missing_value", "POLYLINE is empty: the trip has no fixes")
                elif arr is not None:
                    trips.add(i, arr)
                else:
                    pairs = np.full((len(elements), 2), np.nan)
                    for j, element in enumerate(elements):
                        if _is_pair(element):
                            pairs[j] = element
                        else:
                            trips.bad_points[(i, j)] = json.dumps(element)[:200]
                    trips.add(i, pairs)
    return trips


def _flag_trip_fields(col: dict, trip: np.ndarray, trip_id: np.ndarray, reason: np.ndarray, detail: np.ndarray) -> None:
    """Trip-level checks spread over the trip's points: MISSING_DATA, an empty TRIP_ID."""
    if "MISSING_DATA" in col:
        flag_text = pd.Series(col["MISSING_DATA"], dtype=object).str.strip().str.lower()
        flagged = (flag_text == "true").to_numpy()
        bad_flag = ~flag_text.isin(["true", "false"]).to_numpy()
        fresh = bad_flag[trip] & pd.isna(reason)
        reason[fresh], detail[fresh] = "parse_error", "MISSING_DATA is not True or False"
        fresh = flagged[trip] & pd.isna(reason)
        reason[fresh], detail[fresh] = "source_flagged", "MISSING_DATA=True: points are missing, later times unknown"
    empty_trip = (trip_id == "")[trip] & pd.isna(reason)
    reason[empty_trip], detail[empty_trip] = "missing_value", "TRIP_ID is empty"


def _point_times(start_s: np.ndarray, trip: np.ndarray, pos: np.ndarray) -> pd.Series:
    """Each point's time: its trip's start plus ``SAMPLING_S`` per point before it (NaT where the
    trip has no usable start)."""
    ok_start = ~np.isnan(start_s)
    t_ns = np.zeros(len(trip), dtype=np.int64)
    pt_ok = ok_start[trip]
    t_ns[pt_ok] = start_s[trip][pt_ok].astype(np.int64) * NS_PER_S + pos[pt_ok] * (SAMPLING_S * NS_PER_S)
    t = pd.Series(t_ns.view("datetime64[ns]")).dt.tz_localize("UTC")
    t[~pt_ok] = pd.NaT
    return t


def _read_trips(file, lines, line_nos, undecodable, header, names, n_fields, kind, tag) -> ReadResult:
    columns, counts = columns_of(split_fields(lines), n_fields, [header.index(c) for c in names])
    col = dict(zip(names, columns))
    trips = _parse_polylines(counts, undecodable, col["POLYLINE"], n_fields)

    n_points = sum(trips.lengths)
    rows_read = n_points + len(trips.row_trip)
    whole_rows = (
        quarantine_frame(
            str(file),
            line_nos[trips.row_trip],
            [lines[i] for i in trips.row_trip],
            trips.row_reason,
            trips.row_detail,
        )
        if trips.row_trip
        else empty_quarantine()
    )
    if n_points == 0:
        return ReadResult(empty_points(), whole_rows, rows_read, file.display(), FORMAT)

    trip, pos = trips.point_index()
    lonlat = np.concatenate(trips.lonlat)
    reason = np.full(n_points, None, dtype=object)
    detail = np.full(n_points, None, dtype=object)
    if trips.bad_points:
        lengths = np.asarray(trips.lengths, dtype=np.int64)
        start_of = dict(zip(trips.trips, (np.cumsum(lengths) - lengths).tolist()))
        for i, j in trips.bad_points:
            reason[start_of[i] + j], detail[start_of[i] + j] = "parse_error", "POLYLINE point is not [lon, lat] numbers"

    # Trip-level fields, spread over the trip's points.
    trip_id = np.asarray([s.strip() for s in col["TRIP_ID"]], dtype=object)
    stamp_text = col["TIMESTAMP"]
    start_s, start_detail = _start_seconds(stamp_text)
    _flag_trip_fields(col, trip, trip_id, reason, detail)
    t = _point_times(start_s, trip, pos)
    parsed, reason, detail = validate_fixes(
        col["TAXI_ID"][trip],
        stamp_text[trip],
        lonlat[:, 0],
        lonlat[:, 1],
        pre_reason=reason,
        pre_detail=detail,
        t_parsed=t,
        t_detail=start_detail[trip],
    )

    def raw_of(rows: np.ndarray) -> list[str]:
        out = []
        for r in rows:
            i, j = int(trip[r]), int(pos[r])
            point = trips.bad_points.get((i, j)) or f"[{lonlat[r, 0]!r},{lonlat[r, 1]!r}]"
            out.append(
                f"TRIP_ID={trip_id[i]} TAXI_ID={col['TAXI_ID'][i]} TIMESTAMP={stamp_text[i]} POLYLINE[{j}]={point}"
            )
        return out

    points, quarantine = split_checked(
        file,
        parsed,
        reason,
        detail,
        ("porto:" + pd.Series(trip_id[trip], dtype=object)).to_numpy(dtype=object),
        kind,
        tag,
        line_nos[trip],
        raw_of,
    )
    if len(whole_rows):
        quarantine = pd.concat([quarantine, whole_rows], ignore_index=True)
        quarantine = quarantine.sort_values("line", kind="stable", ignore_index=True)
    return ReadResult(points, quarantine, rows_read, file.display(), FORMAT)


def _start_seconds(text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TIMESTAMP text -> whole seconds (float, NaN where not usable) and why not (or None)."""
    stripped = pd.Series(text, dtype=object).str.strip()
    values = pd.to_numeric(stripped, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan).copy()
    detail = np.full(len(text), None, dtype=object)
    with np.errstate(invalid="ignore"):
        unusable = np.isnan(values) | (values != np.round(values)) | (np.abs(values) > MAX_EPOCH_S)
    blank = (stripped.fillna("") == "").to_numpy()
    detail[unusable & ~blank] = "TIMESTAMP is not a whole number of Unix seconds in range"
    values[unusable] = np.nan
    return values, detail


PORTO = Format(
    name=FORMAT,
    iter_chunks=iter_porto,
    extensions=EXTENSIONS,
    kind="vehicle",
    default_source=lambda file: SOURCE,
    sniff=_looks_like_porto,
    description="Porto taxi trips CSV (ECML/PKDD 2015): TRIP_ID, TAXI_ID, TIMESTAMP, POLYLINE, ...",
)
