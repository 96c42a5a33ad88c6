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

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from trajfm.data.readers.base import (
    ReadResult,
    decode_lines,
    empty_quarantine,
    quarantine_frame,
    validate_fixes,
)
from trajfm.data.schema import empty_points

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


def _split_fields(line: str) -> list[str] | None:
    """Split one CSV line; quoted fields (vessel names with commas) go through ``csv``."""
    if '"' not in line:
        return line.split(",")
    try:
        return next(csv.reader([line]))
    except (csv.Error, StopIteration):
        return None


def read_marinecadastre(path: str | Path, kind: str = "vessel") -> ReadResult:
    """Read a MarineCadastre AIS CSV into canonical points (lon/lat degrees, ``t`` UTC) and quarantine.

    Adds ``sog`` (knots) and ``cog`` (degrees) columns. An empty file or a header-only file reads
    zero rows. A file whose first line is not a MarineCadastre header raises ``ValueError``.
    """
    path = Path(path)
    source = path.stem
    lines, undecodable = decode_lines(path.read_bytes())
    header_at = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if header_at is None:
        return ReadResult(empty_points(), empty_quarantine(), 0, path, FORMAT)
    header = _split_header(lines[header_at])
    pos = column_positions(header)
    if pos is None:
        raise ValueError(
            f"{path}: not a MarineCadastre CSV: header lacks one of "
            f"{[COLUMN_ALIASES[c][0] for c in REQUIRED]} (found {header[:8]})"
        )

    line_nos, rows = [], []
    for i in range(header_at + 1, len(lines)):
        if lines[i].strip():
            line_nos.append(i + 1)
            rows.append(_split_fields(lines[i]))
    n = len(rows)
    if n == 0:
        return ReadResult(empty_points(), empty_quarantine(), 0, path, FORMAT)

    n_fields = len(header)
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)
    field_counts = np.asarray([-1 if r is None else len(r) for r in rows])
    wrong_count = field_counts != n_fields
    reason[wrong_count] = "parse_error"
    detail[wrong_count] = [
        "unbalanced quotes" if c < 0 else f"{c} fields, header has {n_fields}" for c in field_counts[wrong_count]
    ]
    bad_bytes = undecodable[np.asarray(line_nos) - 1]
    fresh = bad_bytes & pd.isna(reason)
    reason[fresh] = "parse_error"
    detail[fresh] = "line has non-UTF-8 bytes"

    def column(name: str) -> pd.Series:
        if name not in pos:
            return pd.Series([""] * n, dtype=object)
        j = pos[name]
        return pd.Series([r[j] if r is not None and len(r) == n_fields else "" for r in rows], dtype=object)

    parsed, reason, detail = validate_fixes(
        column("mmsi"),
        column("t"),
        column("lon"),
        column("lat"),
        TIME_FORMATS,
        pre_reason=reason,
        pre_detail=detail,
        obj_id_pattern=r"\d+",
    )
    sog, cog = _optional_kinematics(column("sog"), column("cog"), reason, detail)

    good = pd.isna(reason)
    kept = parsed.loc[good]
    points = pd.DataFrame(
        {
            "traj_id": (source + ":" + kept["obj_id"]).astype("string"),
            "obj_id": kept["obj_id"].astype("string"),
            "t": kept["t"],
            "lon": kept["lon"],
            "lat": kept["lat"],
            "kind": pd.Categorical([kind] * len(kept)),
            "source": pd.Categorical([source] * len(kept)),
            "sog": sog[good],
            "cog": cog[good],
        }
    ).reset_index(drop=True)
    bad = ~good
    raw = np.asarray(lines, dtype=object)[np.asarray(line_nos)[bad] - 1]
    quarantine = quarantine_frame(str(path), np.asarray(line_nos)[bad], list(raw), reason[bad], detail[bad])
    result = ReadResult(points, quarantine, n, path, FORMAT)
    result.check_accounting()
    return result


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
