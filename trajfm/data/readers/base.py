"""What every reader returns, and the vectorized checks that turn text fields into valid fixes.

A reader never raises on bad content and never drops a row silently: each point it reads either
becomes a row of ``ReadResult.points`` (canonical columns, see ``trajfm.data.schema``) or a row of
``ReadResult.quarantine`` (``file, line, raw, reason, detail``) with a reason code from
``schema.REASONS``. ``rows_read == len(points) + len(quarantine)`` always holds.

Checks run on whole columns (numpy/pandas), never a Python call per point, so a reader handles
hundreds of thousands of fixes in well under a second of parsing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from trajfm.data.schema import MAX_TIME_AHEAD, MIN_TIME, REASONS

QUARANTINE_FILE_COLUMNS = ["file", "line", "raw", "reason", "detail"]
RAW_MAX_CHARS = 500  # raw text kept per quarantined row; enough to see what went wrong

_NAN_LITERALS = frozenset({"nan", "+nan", "-nan"})
# A timestamp must at least hold a date and an hour:minute; stops ISO-8601 fallback parsing from
# reading a stray number ("2020", a longitude shifted into the time column) as a year.
_DATETIME_SHAPE = re.compile(r"^\s*\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


@dataclass
class ReadResult:
    """One file read into canonical points plus the rows it rejected.

    ``points``: canonical columns (``schema.POINT_COLUMNS``, lon/lat WGS84 degrees, ``t``
    ``datetime64[ns, UTC]``) in file order, plus optional ``sog`` (knots) / ``cog`` (degrees).
    ``quarantine``: ``file, line (1-based), raw (<= 500 chars), reason, detail``.
    ``rows_read``: points met in the file, kept or not.
    """

    points: pd.DataFrame
    quarantine: pd.DataFrame
    rows_read: int
    path: Path
    format: str
    notes: list[str] = field(default_factory=list)

    @property
    def rows_kept(self) -> int:
        return int(len(self.points))

    @property
    def rows_quarantined(self) -> int:
        return int(len(self.quarantine))

    def quarantined_by_reason(self) -> dict[str, int]:
        if self.quarantine.empty:
            return {}
        counts = self.quarantine["reason"].value_counts()
        return {str(k): int(v) for k, v in sorted(counts.items())}

    def check_accounting(self) -> None:
        """Raise if a row went missing: rows read must equal rows kept plus rows quarantined."""
        if self.rows_read != self.rows_kept + self.rows_quarantined:
            raise AssertionError(
                f"{self.path}: rows_read {self.rows_read} != kept {self.rows_kept} "
                f"+ quarantined {self.rows_quarantined}"
            )


def empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "file": pd.Series(dtype="string"),
            "line": pd.Series(dtype="int64"),
            "raw": pd.Series(dtype="string"),
            "reason": pd.Series(dtype="string"),
            "detail": pd.Series(dtype="string"),
        }
    )


def quarantine_frame(file: str, line, raw, reason, detail) -> pd.DataFrame:
    """Build a quarantine table; ``raw`` is truncated to ``RAW_MAX_CHARS`` characters."""
    raw = [r if len(r) <= RAW_MAX_CHARS else r[:RAW_MAX_CHARS] for r in raw]
    unknown = set(reason) - set(REASONS)
    if unknown:
        raise ValueError(f"unknown quarantine reason codes {sorted(unknown)}")
    n = len(raw)
    return pd.DataFrame(
        {
            "file": pd.Series([file] * n, dtype="string"),
            "line": pd.Series(np.asarray(line, dtype=np.int64)),
            "raw": pd.Series(raw, dtype="string"),
            "reason": pd.Series(list(reason), dtype="string"),
            "detail": pd.Series(list(detail), dtype="string"),
        }
    )


def decode_lines(data: bytes) -> tuple[list[str], np.ndarray]:
    """Split file bytes into text lines (no line endings) and flag lines with non-UTF-8 bytes.

    Undecodable bytes become U+FFFD (``errors="replace"``) so the rest of the line can still be
    shown in the quarantine table; the returned boolean array marks those lines.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        lines, bad = [], []
        for chunk in data.split(b"\n"):
            try:
                lines.append(chunk.decode("utf-8"))
                bad.append(False)
            except UnicodeDecodeError:
                lines.append(chunk.decode("utf-8", errors="replace"))
                bad.append(True)
        if lines and lines[-1] == "" and not bad[-1]:
            lines.pop()
            bad.pop()
        return [ln.rstrip("\r") for ln in lines], np.asarray(bad, dtype=bool)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline ends the last line, it does not start a new one
    return [ln.rstrip("\r") for ln in lines], np.zeros(len(lines), dtype=bool)


def parse_time_utc(text: pd.Series, formats: tuple[str, ...]) -> pd.Series:
    """Parse timestamps to ``datetime64[us, UTC]`` (NaT where unparseable), vectorized.

    Tries each strict ``formats`` entry in turn on what is still unparsed (fast C path; the first
    on the text as is, later ones on stripped text), then ISO-8601 for the rest if it looks like a
    date and time. Naive times are taken as UTC; times with an offset are converted to UTC.
    Microsecond unit so that absurd years do not overflow; callers range-check before casting
    to nanoseconds.
    """
    text = pd.Series(text.to_numpy(dtype=object), dtype=object)
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us, UTC]")
    todo = np.ones(len(text), dtype=bool)
    candidates = [(fmt, i > 0) for i, fmt in enumerate(formats)] + [("ISO8601", True)]
    for fmt, strip in candidates:
        if not todo.any():
            break
        rest = text[todo]
        if strip:
            rest = rest.str.strip()
        if fmt == "ISO8601":
            rest = rest[rest.str.match(_DATETIME_SHAPE).fillna(False).astype(bool).to_numpy()]
        if len(rest):
            parsed = pd.to_datetime(rest, format=fmt, utc=True, errors="coerce")
            out[rest.index] = parsed.astype("datetime64[us, UTC]")
        todo = out.isna().to_numpy()
    return out


def _numeric(text: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse text to float64: (values, empty, unparseable). ``nan`` text counts as parseable.

    ``pd.to_numeric`` runs on the whole column; only its NaN results are looked at again as text.
    """
    values = pd.to_numeric(pd.Series(text, dtype=object), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    empty = np.zeros(len(values), dtype=bool)
    unparseable = np.zeros(len(values), dtype=bool)
    for i in np.flatnonzero(np.isnan(values)):
        word = text[i].strip().lower() if isinstance(text[i], str) else ""
        empty[i] = word == ""
        unparseable[i] = word != "" and word not in _NAN_LITERALS
    return values, empty, unparseable


def _is_blank(text: np.ndarray) -> np.ndarray:
    return np.fromiter((not (isinstance(s, str) and s.strip()) for s in text), dtype=bool, count=len(text))


def validate_fixes(
    obj_id: ArrayLike,
    t_text: ArrayLike,
    lon_text: ArrayLike,
    lat_text: ArrayLike,
    time_formats: tuple[str, ...],
    pre_reason: np.ndarray | None = None,
    pre_detail: np.ndarray | None = None,
    obj_id_pattern: str | None = None,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Check and parse the text fields of n fixes at once (each argument: n strings).

    Returns ``(parsed, reason, detail)``: ``parsed`` has ``obj_id, t (datetime64[ns, UTC]), lon,
    lat`` (degrees) for every row (NaT/NaN where invalid); ``reason`` is an object array holding
    a ``schema.REASONS`` code for rejected rows and ``None`` for good ones; ``detail`` explains.

    The first failing check names the reason, in this order: ``pre_reason`` from the reader
    (field count, undecodable bytes), ``missing_value``, ``parse_error`` (text in a number or an
    id not matching ``obj_id_pattern``), ``bad_time`` (unparseable), ``nonfinite_coord``,
    ``coord_out_of_range`` (|lat| > 90 or |lon| > 180), ``null_island`` (lon = lat = 0),
    ``bad_time`` (before ``schema.MIN_TIME`` or more than ``schema.MAX_TIME_AHEAD`` from now).
    """
    n = len(obj_id)
    ids = np.asarray([s.strip() if isinstance(s, str) else "" for s in obj_id], dtype=object)
    t_text = np.asarray(t_text, dtype=object)
    reason = np.full(n, None, dtype=object) if pre_reason is None else np.asarray(pre_reason, dtype=object).copy()
    detail = np.full(n, None, dtype=object) if pre_detail is None else np.asarray(pre_detail, dtype=object).copy()

    def flag(mask: np.ndarray, code: str, text: str) -> None:
        new = mask & pd.isna(reason)
        if new.any():
            reason[new] = code
            detail[new] = text

    lon, lon_empty, lon_bad = _numeric(np.asarray(lon_text, dtype=object))
    lat, lat_empty, lat_bad = _numeric(np.asarray(lat_text, dtype=object))
    id_empty = ids == ""
    t = parse_time_utc(pd.Series(t_text, dtype=object), time_formats)
    t_nat = t.isna().to_numpy()
    t_empty = np.zeros(n, dtype=bool)
    t_empty[t_nat] = _is_blank(t_text[t_nat])

    flag(id_empty, "missing_value", "object id is empty")
    flag(t_empty, "missing_value", "timestamp is empty")
    flag(lon_empty, "missing_value", "lon is empty")
    flag(lat_empty, "missing_value", "lat is empty")
    flag(lon_bad, "parse_error", "lon is not a number")
    flag(lat_bad, "parse_error", "lat is not a number")
    if obj_id_pattern is not None:
        bad_id = ~pd.Series(ids, dtype=object).str.fullmatch(obj_id_pattern).fillna(False).astype(bool).to_numpy()
        flag(bad_id & ~id_empty, "parse_error", f"object id does not match {obj_id_pattern}")

    flag(t_nat & ~t_empty, "bad_time", "timestamp is not parseable")

    with np.errstate(invalid="ignore"):
        flag(~np.isfinite(lon) | ~np.isfinite(lat), "nonfinite_coord", "lon or lat is NaN or infinite")
        out_of_range = (np.abs(lat) > 90.0) | (np.abs(lon) > 180.0)
        flag(out_of_range, "coord_out_of_range", "lat outside [-90, 90] or lon outside [-180, 180]")
        flag((lon == 0.0) & (lat == 0.0), "null_island", "lon = lat = 0")

    latest = pd.Timestamp.now(tz="UTC") + MAX_TIME_AHEAD
    early = (t < MIN_TIME).to_numpy(dtype=bool, na_value=False)
    late = (t > latest).to_numpy(dtype=bool, na_value=False)
    flag(early, "bad_time", f"timestamp before {MIN_TIME.date()}")
    flag(late, "bad_time", f"timestamp more than {MAX_TIME_AHEAD} in the future")

    good = pd.isna(reason)
    t_ns = pd.Series(pd.NaT, index=t.index, dtype="datetime64[ns, UTC]")
    t_ns[good] = t[good].astype("datetime64[ns, UTC]")
    parsed = pd.DataFrame({"obj_id": ids, "t": t_ns, "lon": lon, "lat": lat})
    return parsed, reason, detail
