"""The checks every reader runs on its fields: numbers, ids, times, coordinates (``validate_fixes``),
then the split of checked rows into canonical points and quarantine rows (``split_checked``).

Checks run on whole columns (numpy/pandas), never a Python call per point, so a reader handles
hundreds of thousands of fixes in well under a second of parsing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from trajfm.data.readers.result import constant_category, empty_quarantine, quarantine_frame
from trajfm.data.readers.source_file import SourceFile
from trajfm.data.readers.times import finest_times, parse_times
from trajfm.data.schema import MAX_TIME_AHEAD, MIN_TIME

_NAN_LITERALS = frozenset({"nan", "+nan", "-nan"})


def _numeric(values: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse to float64: (values, empty, unparseable). ``nan`` text and float NaN are parseable
    (a non-finite coordinate, not a missing one); ``None`` and blank text are empty.

    ``pd.to_numeric`` runs on the whole column; only its NaN results are looked at again.
    """
    arr = np.asarray(values)
    if arr.dtype.kind in "fiu":
        n = len(arr)
        return arr.astype(np.float64), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    arr = np.asarray(values, dtype=object)
    out = pd.to_numeric(pd.Series(arr, dtype=object), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    empty = np.zeros(len(out), dtype=bool)
    unparseable = np.zeros(len(out), dtype=bool)
    for i in np.flatnonzero(np.isnan(out)):
        item = arr[i]
        if isinstance(item, str):
            word = item.strip().lower()
            empty[i] = word == ""
            unparseable[i] = word != "" and word not in _NAN_LITERALS
        elif isinstance(item, (float, np.floating)):
            pass  # a float NaN: a non-finite value, judged by the coordinate checks
        else:
            empty[i] = True
    return out, empty, unparseable


def numeric_optional(text: ArrayLike, name: str, reason: np.ndarray, detail: np.ndarray) -> np.ndarray:
    """Parse an optional numeric column (sog, alt, ...): empty -> NaN; text quarantines the row."""
    values, _empty, unparseable = _numeric(text)
    fresh = unparseable & pd.isna(reason)
    reason[fresh] = "parse_error"
    detail[fresh] = f"{name} is not a number"
    return values


def _is_blank(text: np.ndarray) -> np.ndarray:
    return np.fromiter((not (isinstance(s, str) and s.strip()) for s in text), dtype=bool, count=len(text))


def _strip_ids(obj_id: ArrayLike) -> np.ndarray:
    """Ids as stripped strings (``""`` for a missing one); each distinct id is stripped once."""
    values = np.asarray(obj_id, dtype=object)
    try:
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
    except TypeError:  # unhashable junk: strip one by one
        return np.asarray([s.strip() if isinstance(s, str) else "" for s in values], dtype=object)
    clean = np.asarray([u.strip() if isinstance(u, str) else "" for u in uniques] + [""], dtype=object)
    return clean[codes]  # code -1 (missing) takes the last entry, ""


def validate_fixes(
    obj_id: ArrayLike,
    t_text: ArrayLike,
    lon_text: ArrayLike,
    lat_text: ArrayLike,
    time_formats: tuple[str, ...] = (),
    pre_reason: np.ndarray | None = None,
    pre_detail: np.ndarray | None = None,
    obj_id_pattern: str | None = None,
    timezone: str | None = "UTC",
    t_parsed: pd.Series | None = None,
    t_detail: np.ndarray | None = None,
    min_time: pd.Timestamp | None = None,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Check and parse the fields of n fixes at once (each argument: n strings, or n numbers).

    Returns ``(parsed, reason, detail)``: ``parsed`` has ``obj_id, t (datetime64[ns, UTC]), lon,
    lat`` (degrees) for every row (NaT/NaN where invalid); ``reason`` is an object array holding
    a ``schema.REASONS`` code for rejected rows and ``None`` for good ones; ``detail`` explains.

    Times: ``t_text`` is parsed with ``parse_times(t_text, time_formats, timezone)`` unless the
    reader already parsed them: then ``t_parsed`` (UTC, NaT where unparseable) with ``t_detail``
    (why, per row, or ``None``) is used and ``t_text`` only tells empty from unparseable.

    The first failing check names the reason, in this order: ``pre_reason`` from the reader
    (field count, undecodable bytes), ``missing_value``, ``parse_error`` (text in a number or an
    id not matching ``obj_id_pattern``), ``bad_time`` (unparseable), ``nonfinite_coord``,
    ``coord_out_of_range`` (|lat| > 90 or |lon| > 180), ``null_island`` (lon = lat = 0),
    ``bad_time`` (before ``schema.MIN_TIME``, or ``min_time`` when given, or more than
    ``schema.MAX_TIME_AHEAD`` from now).
    """
    n = len(obj_id)
    ids = _strip_ids(obj_id)
    t_text = np.asarray(t_text, dtype=object)
    reason = np.full(n, None, dtype=object) if pre_reason is None else np.asarray(pre_reason, dtype=object).copy()
    detail = np.full(n, None, dtype=object) if pre_detail is None else np.asarray(pre_detail, dtype=object).copy()

    unset = pd.isna(reason)

    def flag(mask: np.ndarray, code: str, text) -> None:
        new = mask & unset
        if new.any():
            reason[new] = code
            detail[new] = text if isinstance(text, str) else np.asarray(text, dtype=object)[new]
            unset[new] = False

    lon, lon_empty, lon_bad = _numeric(lon_text)
    lat, lat_empty, lat_bad = _numeric(lat_text)
    id_empty = ids == ""
    t, t_why, t_nat, t_empty = _fix_times(t_text, time_formats, timezone, t_parsed, t_detail)

    flag(id_empty, "missing_value", "object id is empty")
    flag(t_empty, "missing_value", "timestamp is empty")
    flag(lon_empty, "missing_value", "lon is empty")
    flag(lat_empty, "missing_value", "lat is empty")
    flag(lon_bad, "parse_error", "lon is not a number")
    flag(lat_bad, "parse_error", "lat is not a number")
    if obj_id_pattern is not None:
        bad_id = ~pd.Series(ids, dtype=object).str.fullmatch(obj_id_pattern).fillna(False).astype(bool).to_numpy()
        flag(bad_id & ~id_empty, "parse_error", f"object id does not match {obj_id_pattern}")

    explained = t_nat & ~t_empty & ~pd.isna(t_why)
    flag(explained, "bad_time", t_why)
    flag(t_nat & ~t_empty, "bad_time", "timestamp is not parseable")

    with np.errstate(invalid="ignore"):
        flag(~np.isfinite(lon) | ~np.isfinite(lat), "nonfinite_coord", "lon or lat is NaN or infinite")
        out_of_range = (np.abs(lat) > 90.0) | (np.abs(lon) > 180.0)
        flag(out_of_range, "coord_out_of_range", "lat outside [-90, 90] or lon outside [-180, 180]")
        flag((lon == 0.0) & (lat == 0.0), "null_island", "lon = lat = 0")

    latest = pd.Timestamp.now(tz="UTC") + MAX_TIME_AHEAD
    floor = MIN_TIME if min_time is None else min_time
    early = (t < floor).to_numpy(dtype=bool, na_value=False)
    late = (t > latest).to_numpy(dtype=bool, na_value=False)
    flag(early, "bad_time", f"timestamp before {floor.date()}")
    flag(late, "bad_time", f"timestamp more than {MAX_TIME_AHEAD} in the future")

    return _parsed_frame(ids, t, lon, lat, good=unset), reason, detail


def _fix_times(t_text: np.ndarray, time_formats, timezone, t_parsed, t_detail):
    """``(t, why, nat, empty)`` for ``validate_fixes``: the times (parsed here unless the reader
    did), why a time was turned down (or ``None``), which are NaT, and which of those are empty."""
    n = len(t_text)
    if t_parsed is None:
        t, t_why = parse_times(t_text, time_formats, timezone)
    else:
        t = finest_times(pd.Series(t_parsed).reset_index(drop=True))
        t_why = np.full(n, None, dtype=object) if t_detail is None else np.asarray(t_detail, dtype=object)
    t_nat = t.isna().to_numpy()
    t_empty = np.zeros(n, dtype=bool)
    t_empty[t_nat] = _is_blank(t_text[t_nat]) & pd.isna(t_why[t_nat])
    return t, t_why, t_nat, t_empty


def _parsed_frame(ids, t: pd.Series, lon, lat, good: np.ndarray) -> pd.DataFrame:
    """``obj_id, t, lon, lat`` of every row; ``t`` is NaT in the rows that are not ``good``."""
    t_ns = pd.Series(pd.NaT, index=t.index, dtype="datetime64[ns, UTC]")
    if good.all():
        t_ns = t.astype("datetime64[ns, UTC]")
    else:
        t_ns[good] = t[good].astype("datetime64[ns, UTC]")
    return pd.DataFrame({"obj_id": ids, "t": t_ns, "lon": lon, "lat": lat})


def split_checked(
    source_file: SourceFile,
    parsed: pd.DataFrame,
    reason: np.ndarray,
    detail: np.ndarray,
    traj_id: ArrayLike,
    kind: "str | ArrayLike",
    source: "str | ArrayLike",
    line: np.ndarray,
    raw_of: "callable",
    optional: dict[str, np.ndarray] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Checked rows -> (canonical points of the good rows, quarantine of the others).

    ``traj_id`` (full ids), ``kind``/``source`` (a string for every row, or one per row) and
    ``optional`` columns are per input row. ``raw_of(rows)`` returns the raw text of the given row
    indices (called for rejected rows only). ``line`` is each row's 1-based line number.
    """
    good = pd.isna(reason)
    all_good = bool(good.all())
    n_kept = int(good.sum())

    def take(values):
        arr = (
            values
            if isinstance(values, (np.ndarray, pd.api.extensions.ExtensionArray))
            else np.asarray(values, dtype=object)
        )
        return arr if all_good else arr[good]

    def category(value) -> pd.Categorical:
        if isinstance(value, str):
            return constant_category(value, n_kept)
        return pd.Categorical(pd.array(take(np.asarray(value, dtype=object)), dtype="string"))

    columns = {
        "traj_id": pd.array(take(np.asarray(traj_id, dtype=object)), dtype="string"),
        "obj_id": pd.array(take(parsed["obj_id"].to_numpy(dtype=object)), dtype="string"),
        "t": take(parsed["t"].array),
        "lon": take(parsed["lon"].to_numpy()),
        "lat": take(parsed["lat"].to_numpy()),
        "kind": category(kind),
        "source": category(source),
    }
    for name, values in (optional or {}).items():
        if name == "mode":
            columns[name] = pd.array(take(np.asarray(values, dtype=object)), dtype="string")
        else:
            columns[name] = take(np.asarray(values, dtype=np.float64))
    points = pd.DataFrame(columns)
    if all_good:
        return points, empty_quarantine()
    bad = np.flatnonzero(~good)
    quarantine = quarantine_frame(str(source_file), line[bad], raw_of(bad), reason[bad], detail[bad])
    return points, quarantine
