"""Reader for MarineCadastre / NOAA AIS point CSV files (one fix per line, with a header).

Columns used (2015-2023 names; the 2024+ lowercase names are accepted too):

========================  ===============================  ==========================================
MarineCadastre            2024+                            canonical
========================  ===============================  ==========================================
``MMSI``                  ``mmsi``                         ``obj_id`` (digits only)
``BaseDateTime``          ``base_date_time``               ``t``, ISO time, UTC
``LON``                   ``longitude``                    ``lon``, WGS84 degrees
``LAT``                   ``latitude``                     ``lat``, WGS84 degrees
``SOG``                   ``sog``                          ``sog``, knots (102.3 = not available -> NaN)
``COG``                   ``cog``                          ``cog``, degrees clockwise from north
========================  ===============================  ==========================================

COG: the 2020 files store it as a signed 12-bit value of tenths, so courses from 204.8 to 409.5
appear as negative numbers (e.g. -49.6 is 360.0, AIS "not available"); the reader adds 409.6 to
negative values and sets courses outside [0, 360) to NaN. SOG/COG are optional: an empty field
is NaN, but text in them quarantines the row (``parse_error``) like text in a coordinate.

Every non-empty line after the header is one row read. A line with a different number of fields
than the header is ``parse_error``. ``traj_id`` is ``"<file stem>:<MMSI>"`` (the file has no track
ids: one vessel's fixes in one file form one track until preprocessing splits it at gaps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from trajfm.data.readers.checks import split_checked, validate_fixes
from trajfm.data.readers.formats import Format
from trajfm.data.readers.lines import header_then_chunks, non_blank
from trajfm.data.readers.parsing import columns_of, field_count_problems, flag_undecodable, raw_lines, split_fields
from trajfm.data.readers.result import ReadResult
from trajfm.data.readers.source_file import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_ROWS, SourceFile, SourceFormatError

FORMAT = "marinecadastre"
EXTENSIONS = (".csv",)
TIME_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S")
SOG_NOT_AVAILABLE_KN = 102.3
COG_WRAP_DEG = 409.6  # 2**12 tenths of a degree

# canonical name -> accepted header names, in order of preference
COLUMN_ALIASES = {
    "mmsi": ("MMSI", "mmsi"),
    "t": ("BaseDateTime", "base_date_time"),
    "lon": ("LON", "longitude"),
    "lat": ("LAT", "latitude"),
    "sog": ("SOG", "sog"),
    "cog": ("COG", "cog"),
}
REQUIRED = ("mmsi", "t", "lon", "lat")


def _split_header(line: str) -> list[str]:
    return [h.strip().strip('"') for h in line.split(",")]


def column_positions(header: list[str]) -> dict[str, int] | None:
    """Map canonical names to header positions; ``None`` if a required column is missing."""
    positions = {}
    for name, aliases in COLUMN_ALIASES.items():
        for alias in aliases:
            if alias in header:
                positions[name] = header.index(alias)
                break
    if any(name not in positions for name in REQUIRED):
        return None
    return positions


def looks_like_marinecadastre(first_line: str) -> bool:
    """True if a CSV header line names the MarineCadastre time, position and MMSI columns."""
    return column_positions(_split_header(first_line)) is not None


def iter_marinecadastre(
    file: SourceFile,
    kind: str = "vessel",
    source_tag: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[ReadResult]:
    """Read a MarineCadastre AIS CSV chunk by chunk into canonical points and quarantine.

    Adds ``sog`` (knots) and ``cog`` (degrees) columns. An empty file or a header-only file reads
    zero rows. A file whose first line is not a MarineCadastre header raises ``SourceFormatError``.
    """
    stem = file.stem
    tag = source_tag or stem
    header_line, chunks = header_then_chunks(file, chunk_rows, chunk_bytes)
    if header_line is None:
        return
    header = _split_header(header_line[1])
    pos = column_positions(header)
    if pos is None:
        raise SourceFormatError(
            str(file),
            header_line[0],
            f"not a MarineCadastre CSV: header lacks one of {[COLUMN_ALIASES[c][0] for c in REQUIRED]} "
            f"(found {header[:8]})",
        )
    n_fields = len(header)
    names = list(pos)
    for chunk in chunks:
        lines, line_nos, undecodable = non_blank(chunk)
        n = len(lines)
        if n == 0:
            continue
        columns, counts = columns_of(split_fields(lines), n_fields, [pos[c] for c in names])
        col = dict(zip(names, columns))
        reason, detail = field_count_problems(counts, n_fields)
        flag_undecodable(reason, detail, undecodable)
        empty = np.full(n, "", dtype=object)
        parsed, reason, detail = validate_fixes(
            col["mmsi"],
            col["t"],
            col["lon"],
            col["lat"],
            TIME_FORMATS,
            pre_reason=reason,
            pre_detail=detail,
            obj_id_pattern=r"\d+",
        )
        sog, cog = _optional_kinematics(
            pd.Series(col.get("sog", empty), dtype=object),
            pd.Series(col.get("cog", empty), dtype=object),
            reason,
            detail,
        )
        traj_id = (stem + ":" + parsed["obj_id"]).to_numpy(dtype=object)
        points, quarantine = split_checked(
            file, parsed, reason, detail, traj_id, kind, tag, line_nos, raw_lines(lines), {"sog": sog, "cog": cog}
        )
        yield ReadResult(points, quarantine, n, file.display(), FORMAT)


def read_marinecadastre(path: str | Path, kind: str = "vessel", **kwargs) -> ReadResult:
    """Read a MarineCadastre AIS CSV into canonical points (lon/lat degrees, ``t`` UTC) and quarantine.

    See ``iter_marinecadastre``; ``kwargs``: ``source``, ``chunk_rows``, ``chunk_bytes``.
    """
    return MARINECADASTRE.read(path, kind=kind, **kwargs)


def _optional_kinematics(sog_text: pd.Series, cog_text: pd.Series, reason: np.ndarray, detail: np.ndarray):
    """Parse SOG (knots) and COG (degrees); text quarantines the row, AIS sentinels become NaN."""
    out = []
    for name, text in (("sog", sog_text), ("cog", cog_text)):
        stripped = text.str.strip()
        empty = (stripped == "").to_numpy()
        values = pd.to_numeric(stripped, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        unparseable = np.isnan(values) & ~empty & ~stripped.str.lower().isin(("nan", "+nan", "-nan")).to_numpy()
        fresh = unparseable & pd.isna(reason)
        reason[fresh] = "parse_error"
        detail[fresh] = f"{name} is not a number"
        out.append(values)
    sog, cog = out
    with np.errstate(invalid="ignore"):
        sog = np.where((sog >= 0.0) & (sog < SOG_NOT_AVAILABLE_KN), sog, np.nan)
        cog = np.where(cog < 0.0, cog + COG_WRAP_DEG, cog)
        cog = np.where((cog >= 0.0) & (cog < 360.0), cog, np.nan)
    return sog, cog


MARINECADASTRE = Format(
    name=FORMAT,
    iter_chunks=iter_marinecadastre,
    extensions=EXTENSIONS,
    kind="vessel",
    sniff=looks_like_marinecadastre,
    description="MarineCadastre / NOAA AIS point CSV (BaseDateTime, LON, LAT, MMSI, SOG, COG, ...)",
)
