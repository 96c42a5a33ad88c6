"""Timestamp text to UTC instants, vectorized: strict formats, ISO-8601, UTC offsets, wall-clock
times in a named timezone (DST gaps and repeats quarantined, never guessed)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

# A timestamp must at least hold a date and an hour:minute; stops ISO-8601 fallback parsing from
# reading a stray number ("2020", a longitude shifted into the time column) as a year.
_DATETIME_SHAPE = re.compile(r"^\s*\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
# A UTC offset (or Z) at the end of a timestamp: "…:45Z", "…:45+08:00", "…:45.123-0500".
_UTC_OFFSET = r"\d(?:\.\d+)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)\s*$"


_NS_FIRST = pd.Timestamp("1678-01-01", tz="UTC")  # datetime64[ns] holds 1677-09-21 .. 2262-04-11
_NS_LAST = pd.Timestamp("2262-01-01", tz="UTC")


def finest_times(t: pd.Series) -> pd.Series:
    """UTC times as ``datetime64[ns, UTC]`` when every one fits in nanoseconds (years 1678-2261),
    else ``datetime64[us, UTC]``: nanoseconds are kept (the contract's unit), an absurd year (a
    clock error, quarantined later as ``bad_time``) does not overflow."""
    t = pd.Series(t)
    if t.dt.tz is None:
        t = t.dt.tz_localize("UTC")
    valid = t.dropna()
    fits = valid.empty or (valid.min() >= _NS_FIRST and valid.max() < _NS_LAST)
    return t.astype("datetime64[ns, UTC]" if fits else "datetime64[us, UTC]")


def _put_times(out: pd.Series, index, parsed: pd.Series) -> pd.Series:
    """``out`` with ``parsed`` written at ``index``, in the finest unit that holds both."""
    parsed = finest_times(parsed)
    if out.dt.unit != parsed.dt.unit:
        out, parsed = out.astype("datetime64[us, UTC]"), parsed.astype("datetime64[us, UTC]")
    out[index] = parsed.array
    return out


def parse_time_utc(text: pd.Series, formats: tuple[str, ...]) -> pd.Series:
    """Parse timestamps to ``datetime64[ns, UTC]`` (NaT where unparseable), vectorized.

    Tries each strict ``formats`` entry in turn on what is still unparsed (fast C path; the first
    on the text as is, later ones on stripped text), then ISO-8601 for the rest if it looks like a
    date and time. Naive times are taken as UTC; times with an offset are converted to UTC.
    Nanoseconds are kept; only when a time lies outside what nanoseconds hold (an absurd year)
    is the unit microseconds (``finest_times``), so nothing overflows; callers range-check.
    """
    return _parse_time_utc(text, formats)[0]


def _parse_time_utc(text: ArrayLike, formats: tuple[str, ...]) -> tuple[pd.Series, np.ndarray]:
    """``parse_time_utc`` plus a mask of rows parsed by a strict format without ``%z`` (so
    certainly naive: no need to look for an offset in their text)."""
    arr = np.asarray(text, dtype=object)
    if formats and len(arr):
        # The common case: every row parses with the first format; one C call, no Series juggling.
        first = pd.to_datetime(arr, format=formats[0], utc=True, errors="coerce")
        if not first.isna().any():
            strict = "%z" not in formats[0] and "%Z" not in formats[0]
            return finest_times(pd.Series(first)), np.full(len(arr), strict, dtype=bool)
    text = pd.Series(arr, dtype=object)
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
    naive = np.zeros(len(text), dtype=bool)
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
            out = _put_times(out, rest.index, pd.Series(parsed, index=rest.index))
            if fmt != "ISO8601" and "%z" not in fmt and "%Z" not in fmt:
                naive[rest.index[parsed.notna().to_numpy()]] = True
        todo = out.isna().to_numpy()
    return out, naive


def has_utc_offset(text: ArrayLike) -> np.ndarray:
    """True where a timestamp text ends in a UTC offset or ``Z``."""
    s = pd.Series(np.asarray(text, dtype=object), dtype=object)
    return s.str.contains(_UTC_OFFSET, regex=True).fillna(False).to_numpy(dtype=bool)


def check_timezone(timezone: str | None) -> None:
    """Raise ``ValueError`` (not a deep zoneinfo error) for a timezone name that does not exist."""
    if timezone is None:
        return
    try:
        pd.Timestamp("2000-01-01").tz_localize(timezone)
    except Exception as exc:  # zoneinfo, pytz and dateutil raise different types
        raise ValueError(f"unknown timezone {timezone!r} (use an IANA name such as 'Europe/London')") from exc


def wall_time_to_utc(wall: pd.Series, timezone: str) -> tuple[pd.Series, np.ndarray]:
    """Wall-clock times in ``timezone`` (held as if UTC) -> UTC instants.

    Returns the UTC times and a mask of local times that do not exist (skipped at a DST change) or
    happen twice (repeated at a DST change): those are NaT, to be quarantined, never guessed.
    """
    naive = pd.DatetimeIndex(wall).tz_localize(None)
    local = naive.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
    dst = np.asarray(local.isna() & ~naive.isna(), dtype=bool)
    utc = finest_times(pd.Series(local.tz_convert("UTC"), index=wall.index))
    return utc, dst


def parse_times(
    text: ArrayLike, formats: tuple[str, ...], timezone: str | None = "UTC"
) -> tuple[pd.Series, np.ndarray]:
    """Parse timestamp text to ``datetime64[ns, UTC]`` (see ``parse_time_utc``); returns the times
    and a detail per row.

    Times with a UTC offset are converted with their own offset. Naive times are wall-clock
    times in ``timezone`` (``"UTC"``: already UTC); with ``timezone=None`` a naive time is not
    accepted (NaT, detail says to pass a timezone). ``detail`` is ``None`` except where a time
    was turned down for a reason other than "not parseable".
    """
    text = np.asarray(text, dtype=object)
    t, strict_naive = _parse_time_utc(text, formats)
    detail = np.full(len(text), None, dtype=object)
    if timezone in ("UTC", "utc", "Z") or not len(text):
        return t, detail
    naive = strict_naive.copy()
    unsure = t.notna().to_numpy() & ~strict_naive
    if unsure.any():
        naive[unsure] = ~has_utc_offset(text[unsure])
    if not naive.any():
        return t, detail
    if timezone is None:
        t[naive] = pd.NaT
        detail[naive] = "naive time (no UTC offset) and no timezone given; pass timezone="
        return t, detail
    if naive.all():
        t, dst = wall_time_to_utc(t, timezone)
    else:
        local, dst = wall_time_to_utc(t[naive], timezone)
        t = _put_times(t, t.index[naive], local)
    rows = np.flatnonzero(naive)[dst]
    detail[rows] = f"local time in {timezone} is skipped or repeated at a DST change"
    return t, detail
